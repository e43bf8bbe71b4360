"""
UTF8=ACCEPT (RFC 6855): after ``ENABLE UTF8=ACCEPT`` the session speaks
UTF-8.

* Quoted strings may hold UTF-8 (the parser accepts UTF-8 in them in
  every session; section 3).
* Mailbox names are UTF-8 both ways instead of modified UTF-7 (section 3):
  the parser takes them as they come (``parse_command(..., utf8=True)``),
  and :func:`txmail.imap.serialize.mailbox` writes them as UTF-8
  (``render_all(..., utf8_names=True)``, set by the session and the
  adapter from :attr:`IMAPSession.enabled`).
* ``SEARCH CHARSET`` is BAD, and SORT and THREAD with a charset other
  than UTF-8 are BAD (section 3 and its erratum 4029).
* APPEND takes ``UTF8 (~{n} ...)`` (section 4); its octets are stored as
  they are, as every APPEND's.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from txmail.imap.commands.registry import enableable, extension
from txmail.imap.responses import Response

__all__ = ["UTF8_ACCEPT"]

UTF8_ACCEPT = "UTF8=ACCEPT"

# RFC 6855 section 3: the capability.
extension(UTF8_ACCEPT)


@enableable(UTF8_ACCEPT)
def enable(session: Any) -> Sequence[Response]:
    """RFC 6855 section 3: ENABLE UTF8=ACCEPT; nothing is sent besides ENABLED."""
    session.enabled.add(UTF8_ACCEPT)
    return ()
