"""
BINARY (RFC 3516): FETCH ``BINARY[part]<partial>``, ``BINARY.PEEK`` and
``BINARY.SIZE`` (rendered by :mod:`txmail.imap.binary`), and APPEND with a
``literal8`` (``~{n}``, framed by :mod:`txmail.imap.fragment`).

* FETCH (:func:`txmail.imap.commands.selected.fetch`) calls
  :func:`require_decodable` for each message before emitting its
  response: a part whose Content-Transfer-Encoding cannot be undone fails
  the command with ``NO [UNKNOWN-CTE]`` (RFC 3516 section 4.2); the
  responses of the messages before it were sent.
* APPEND stores a literal8's octets as they are (RFC 3516 section 4.4
  allows storing binary content); a NUL in a plain literal is refused by
  the parser (RFC 3501 section 4.3).  ``BODY[]`` of such a message sends
  the octets in a plain literal (the deviation noted in
  :mod:`txmail.imap.fetch`); ``BINARY[]`` sends them as a literal8.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from txmail.imap.binary import UnknownCTE, check
from txmail.imap.commands.registry import extension
from txmail.imap.responses import No
from txmail.imap.types import FetchAttribute

__all__ = ["require_decodable"]


def require_decodable(message: bytes, items: Sequence[FetchAttribute]) -> None:
    """``NO [UNKNOWN-CTE]`` unless every BINARY item of *items* can be answered for *message*."""
    try:
        check(message, items)
    except UnknownCTE as e:
        raise No(str(e), "UNKNOWN-CTE") from None


extension("BINARY")
