"""
The events every protocol session (SMTP, POP3, IMAP) hands to its
application alike: the base class, the authentication steps, STARTTLS,
being authenticated and closing.

:mod:`txmail.smtp.events`, :mod:`txmail.pop3.events` and
:mod:`txmail.imap.events` import them from here (the same classes, so an
adapter or a test may name them through any of the three) and add their own.
Events are frozen dataclasses (h11, wsproto); those whose class attribute
``needs_decision`` is ``True`` pause the session until the application
answers them (each protocol's module says with what).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from txmail.auth.passwords import Secret

__all__ = ["AuthStep", "Authenticated", "ConnectionClosing", "Event", "PasswordCheck", "StartTLS"]


class Event:
    """Base class of the sessions' events."""

    __slots__ = ()
    needs_decision: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class PasswordCheck(Event):
    """
    A user name and password to check (POP3 USER/PASS, RFC 1939 section 7;
    IMAP LOGIN, RFC 3501 section 6.2.3) with
    :meth:`txmail.auth.authenticator.Authenticator.check_password`; the
    session's ``accept(canonical_user)`` or ``reject(...)`` answers it.

    Attributes:
        username: the name the client gave.
        password: what it gave as the password (never in the ``repr``).
    """

    needs_decision: ClassVar[bool] = True
    username: str
    password: str | Secret[str] = field(repr=False)


@dataclass(frozen=True, eq=False, slots=True)
class AuthStep(Event):
    """
    The SASL exchange (SMTP AUTH, RFC 4954; POP3 AUTH, RFC 5034; IMAP
    AUTHENTICATE, RFC 3501 section 6.2.2) needs the authenticator (a
    password check or stored credentials): the application calls
    ``authenticator.step(server, request, peer=...)`` and passes the
    resulting ``Challenge``/``Succeeded``/``Failed`` to ``accept(...)``.

    Attributes:
        mechanism: the SASL mechanism name.
        server: the :class:`txmail.auth.sasl.SASLServer` of this exchange.
        request: the event it returned (``NeedPasswordCheck``,
            ``NeedCredentials``, ``Succeeded`` or ``Failed``).
    """

    needs_decision: ClassVar[bool] = True
    mechanism: str
    server: Any
    request: Any


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """
    The client asked for TLS (SMTP STARTTLS, RFC 3207; POP3 STLS, RFC 2595
    section 4; IMAP STARTTLS, RFC 3501 section 6.2.1): ``accept()`` queues
    the positive answer and drops what the client pipelined after the
    command; the application writes it and starts the handshake.
    """

    needs_decision: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """*user* (canonical, never a password here) logged in with *mechanism* (a SASL mechanism, or ``"LOGIN"``)."""

    user: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class ConnectionClosing(Event):
    """
    The session ended: send what is buffered, then close.

    Attributes:
        reason: why: ``"quit"`` or ``"logout"``, ``"errors"``, ``"timeout"``,
            ``"protocol"`` or ``"lost"``.
    """

    reason: str
