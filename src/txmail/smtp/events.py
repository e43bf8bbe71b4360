"""
Events the SMTP server session hands to its application (the adapter).

Events are frozen dataclasses, named as nouns or in the past tense (h11,
wsproto).  Some need a decision: after returning one of those,
:meth:`txmail.smtp.session.ServerSession.next_event` returns ``None``
until the application calls ``accept(...)`` or ``reject(reply)``.  Their
class attribute ``needs_decision`` is ``True``:

===================  ==============================================================
event                ``accept(...)`` / ``reject(reply)``
===================  ==============================================================
``MailFrom``         ``accept()`` 250 2.1.0, or the application's refusal
``RcptTo``           ``accept()`` 250 2.1.5, or the router's refusal
``DataStart``        ``accept()`` opens the content (354 for DATA), or refuse it
``DataComplete``     ``accept(reply)`` with the queued-as reply, or the failure
``AuthStep``         ``accept(sasl_event)`` with what the authenticator resolved,
                     or ``reject(reply)`` when it failed unexpectedly
``StartTLS``         ``accept()`` sends 220 and resets the session, or refuse
``ClientConnected``  ``accept()`` sends the 220 greeting, or ``reject(reply)``
                     (``421``: close; ``554``: refuse all but QUIT)
``HeloReceived``     ``accept()`` answers the greeting, or refuse it
``AuthFinished``     ``accept()`` sends 235 (or 535 for a failed exchange), or
                     ``reject(reply)`` instead
===================  ==============================================================

The last three are emitted only at the stages the session was asked to
check (its ``checks`` argument: policies, :mod:`txmail.policy.hooks`).

The others (``Greeted``, ``DataChunk``, ``DataAborted``, ``Authenticated``,
``ConnectionClosing``) are information: the session
has already answered.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
    StartTLS as StartTLS,
)
from txmail.smtp.codes import Reply

__all__ = [
    "AuthFinished",
    "ClientConnected",
    "DataAborted",
    "DataChunk",
    "DataComplete",
    "DataStart",
    "Greeted",
    "HeloReceived",
    "MailFrom",
    "RcptTo",
]


@dataclass(frozen=True, slots=True)
class ClientConnected(Event):
    """
    A client connected and the session waits to greet it (only with the
    ``connect`` check): ``accept()`` sends the 220 greeting; ``reject(reply)``
    sends *reply* instead -- a ``421`` closes, a ``554`` leaves the session
    answering ``503`` to everything but QUIT (RFC 5321 section 3.1).
    """

    needs_decision: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class HeloReceived(Event):
    """
    EHLO/HELO with a valid name, before it is answered (only with the
    ``helo`` check): ``accept()`` answers it (and ``Greeted`` follows);
    ``reject(reply)`` refuses it and the client may greet again.
    """

    needs_decision: ClassVar[bool] = True
    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class AuthFinished(Event):
    """
    An AUTH exchange ended (only with the ``auth`` check), before its
    reply.  ``accept()`` gives the usual reply (235 and ``Authenticated``
    on success, 535 on failure); ``reject(reply)`` sends *reply* instead
    and the client is not authenticated.

    Attributes:
        mechanism: the SASL mechanism.
        username: the canonical user on success, else ``None``.
        succeeded: whether the credentials were good.
    """

    needs_decision: ClassVar[bool] = True
    mechanism: str
    username: str | None
    succeeded: bool


@dataclass(frozen=True, slots=True)
class Greeted(Event):
    """The client said EHLO (``extended``) or HELO with *name*."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    """
    MAIL FROM was valid and allowed; the application decides.

    Attributes:
        address: the reverse-path, ``""`` for ``<>``.
        params: ESMTP parameters, upper-cased keys (SIZE, BODY, SMTPUTF8,
            RET, ENVID, AUTH...).
    """

    needs_decision: ClassVar[bool] = True
    address: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    """
    RCPT TO was valid and allowed by the session's own checks; the
    application (the router's ``check_recipient``) decides.

    Attributes:
        address: the forward-path, normalised (source route dropped, quoting
            only where needed).
        params: ESMTP parameters (NOTIFY, ORCPT...).
    """

    needs_decision: ClassVar[bool] = True
    address: str
    params: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DataStart(Event):
    """
    Message content is about to start (DATA, or the first BDAT chunk).

    The application prepares somewhere to put the content; ``accept()``
    lets it flow (the 354 reply for DATA).

    Attributes:
        chunking: ``True`` for BDAT, ``False`` for DATA.
    """

    needs_decision: ClassVar[bool] = True
    chunking: bool


@dataclass(frozen=True, slots=True)
class DataChunk(Event):
    """A piece of message content, dot-unstuffed (never the whole message at once)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class DataComplete(Event):
    """
    The message content ended and was within limits; the application delivers
    it and answers with ``accept(reply)`` or ``reject(reply)``.

    Attributes:
        size: octets of content received (after dot-unstuffing).
    """

    needs_decision: ClassVar[bool] = True
    size: int


@dataclass(frozen=True, slots=True)
class DataAborted(Event):
    """
    The content seen since ``DataStart`` will not be delivered: the
    application discards it.  The session answers the client itself (at the
    end of the data for limits, at once for RSET).

    Attributes:
        reply: the reply the client gets (or got) for it.
    """

    reply: Reply
