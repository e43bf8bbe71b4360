"""
Events the IMAP server session hands to its application (the adapter).

Events are frozen dataclasses (h11, wsproto).  Those whose class attribute
``needs_decision`` is ``True`` pause the session:
:meth:`txmail.imap.session.IMAPSession.next_event` returns ``None`` until
the application answers:

=================  ==============================================================
event              answer
=================  ==============================================================
``PasswordCheck``  ``accept(canonical_user)`` once the LOGIN password is right,
                   or ``reject()`` (``NO [AUTHENTICATIONFAILED]``)
``AuthStep``       ``accept(sasl_event)`` with the Challenge, Succeeded or
                   Failed the authenticator resolved
``Execute``        the application runs the command, writes its untagged
                   responses with ``send(...)`` and ends it with
                   ``finish(status, text, code)``
``StartTLS``       ``accept()`` queues the tagged OK and drops what the
                   client pipelined; the application then starts TLS
=================  ==============================================================

``reject((status, text, code))`` answers any pending event with a tagged
response (the adapter's answer to a bug or an unavailable store).

``Authenticated``, ``IdleStarted``, ``IdleDone`` and ``ConnectionClosing``
are information.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# The events every session shares, documented in txmail._events.
from txmail._events import (
    Authenticated as Authenticated,
)
from txmail._events import (
    AuthStep as AuthStep,
)
from txmail._events import (
    ConnectionClosing as ConnectionClosing,
)
from txmail._events import (
    Event as Event,
)
from txmail._events import (
    PasswordCheck as PasswordCheck,
)
from txmail._events import (
    StartTLS as StartTLS,
)
from txmail.imap.types import Command

__all__ = [
    "Execute",
    "IdleDone",
    "IdleStarted",
]


@dataclass(frozen=True, slots=True)
class Execute(Event):
    """A command the application runs against the store."""

    needs_decision: ClassVar[bool] = True
    command: Command


@dataclass(frozen=True, slots=True)
class IdleStarted(Event):
    """IDLE began (RFC 2177): push mailbox changes as they happen."""


@dataclass(frozen=True, slots=True)
class IdleDone(Event):
    """IDLE ended with DONE."""
