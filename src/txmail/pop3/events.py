"""
Events the POP3 server session hands to its application (the adapter).

Events are frozen dataclasses (h11, wsproto).  Those whose class attribute
``needs_decision`` is ``True`` pause the session:
:meth:`txmail.pop3.session.POP3Session.next_event` returns ``None`` until
the application calls ``accept(...)`` or ``reject(response)``:

=================  ==============================================================
event              ``accept(...)`` / ``reject(response)``
=================  ==============================================================
``PasswordCheck``  ``accept(canonical_user)`` once the password is right
                   (the session then asks for the maildrop with ``Login``), or
                   ``reject(AUTH_FAILED)``
``AuthStep``       ``accept(sasl_event)`` with the Challenge, Succeeded or
                   Failed the authenticator resolved, or ``reject(response)``
``Login``          ``accept(Maildrop(...))`` once the maildrop is locked and
                   listed (``+OK`` and TRANSACTION state), or
                   ``reject(IN_USE)`` / ``reject(SYS_TEMP)``
``Retrieve``       ``accept()`` queues the ``+OK`` line; the application then
                   writes the encoded message (see
                   :class:`txmail.pop3.session.MessageEncoder`) before any
                   further output; or ``reject(response)``
``StartTLS``       ``accept()`` queues ``+OK`` and drops the trailing data;
                   the application then starts the TLS handshake
``Update``         ``accept()`` (``+OK``, close) once the deletions are done,
                   or ``reject(response)`` (sent, then close)
=================  ==============================================================

``ConnectionClosing`` is information: send what is buffered, then close.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

# The events every session shares, documented in txmail._events.
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

__all__ = [
    "Login",
    "Maildrop",
    "Retrieve",
    "Update",
]


@dataclass(frozen=True)
class Maildrop:
    """
    The snapshot of a user's INBOX taken at login (RFC 1939 section 5: message
    numbers are fixed for the session).

    Attributes:
        uidvalidity: the INBOX's UIDVALIDITY, part of every UIDL value.
        messages: ``(uid, size)`` of each message in ascending UID order;
            message number *n* is ``messages[n - 1]``.
    """

    uidvalidity: int
    messages: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Login(Event):
    """
    *user* (canonical) proved who they are, by *mechanism* (``"USER"`` for
    USER/PASS, else the SASL mechanism): lock and list their maildrop.
    """

    needs_decision: ClassVar[bool] = True
    user: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class Retrieve(Event):
    """
    RETR (``body_lines`` is ``None``) or TOP (RFC 1939 section 7) of message
    *number*, which has *uid* and *size* octets in the store.
    """

    needs_decision: ClassVar[bool] = True
    number: int
    uid: int
    size: int
    body_lines: int | None = None


@dataclass(frozen=True, slots=True)
class Update(Event):
    """
    QUIT in TRANSACTION state: the UPDATE state (RFC 1939 section 6).

    Attributes:
        deleted: UIDs marked by DELE, to flag ``\\Deleted`` and expunge.
        seen: UIDs retrieved whole by RETR and not deleted, to flag ``\\Seen``.
    """

    needs_decision: ClassVar[bool] = True
    deleted: tuple[int, ...]
    seen: tuple[int, ...]
