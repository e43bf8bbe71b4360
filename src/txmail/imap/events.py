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

from dataclasses import dataclass, field
from typing import Any, ClassVar

from txmail.imap.types import Command

__all__ = [
    "AuthStep",
    "Authenticated",
    "ConnectionClosing",
    "Event",
    "Execute",
    "IdleDone",
    "IdleStarted",
    "PasswordCheck",
    "StartTLS",
]


class Event:
    """Base class of the session's events."""

    __slots__ = ()
    needs_decision: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class PasswordCheck(Event):
    """LOGIN: check *password* for *username* (``authenticator.check_password``)."""

    needs_decision: ClassVar[bool] = True
    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class AuthStep(Event):
    """
    The SASL exchange of AUTHENTICATE needs the authenticator: call
    ``authenticator.step(server, request, peer=...)`` and pass the result to
    ``accept``.
    """

    needs_decision: ClassVar[bool] = True
    mechanism: str
    server: Any
    request: Any


@dataclass(frozen=True, slots=True)
class Execute(Event):
    """A command the application runs against the store."""

    needs_decision: ClassVar[bool] = True
    command: Command


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS was accepted by the session: ``accept()``, then start TLS."""

    needs_decision: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """*user* (canonical) logged in with *mechanism* (``"LOGIN"`` or a SASL mechanism)."""

    user: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class IdleStarted(Event):
    """IDLE began (RFC 2177): push mailbox changes as they happen."""


@dataclass(frozen=True, slots=True)
class IdleDone(Event):
    """IDLE ended with DONE."""


@dataclass(frozen=True, slots=True)
class ConnectionClosing(Event):
    """The session ended (``"logout"``, ``"timeout"``, ``"errors"``, ``"lost"``)."""

    reason: str
