"""
One SASL exchange inside a protocol session: what SMTP AUTH (RFC 4954),
POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501 section 6.2.2, SASL-IR
RFC 4959) have in common, so that the three sessions answer the same
client the same way.

A session makes a :class:`SASLExchange` for an offered mechanism and feeds
it the client's initial response (:meth:`~SASLExchange.start`), each
continuation line (:meth:`~SASLExchange.respond`) and the authenticator's
answers (:meth:`~SASLExchange.resolved`).  Each call returns one *outcome*
that says what to do, in the session's own words:

==================  ==================================================================
outcome             the session ...
==================  ==================================================================
:class:`Send`       writes the challenge (``334``, ``+``) with :func:`encode_challenge`
:class:`Ask`        emits the :class:`~txmail._events.AuthStep` and waits for ``accept``
:class:`Done`       logs *user* in (canonical, from the authenticator)
:class:`Refused`    answers that authentication failed (``535``, ``-ERR``, ``NO``)
:class:`Cancelled`  answers that the client cancelled (``501``, ``-ERR``, ``BAD``)
:class:`Malformed`  answers a syntax error (``501``, ``-ERR``, ``BAD``)
==================  ==================================================================

After :class:`Done`, :class:`Refused`, :class:`Cancelled` or
:class:`Malformed` the exchange is over (:attr:`SASLExchange.over`).
Every answer that is not a challenge goes through the authenticator, which
answers questions, canonicalises the user and delays failures.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass

from txmail._events import AuthStep
from txmail.auth import sasl
from txmail.auth.sasl import encode_challenge

__all__ = [
    "Ask",
    "Cancelled",
    "Done",
    "Malformed",
    "Outcome",
    "Refused",
    "SASLExchange",
    "Send",
    "encode_challenge",
]


@dataclass(frozen=True, slots=True)
class Send:
    """Send the challenge *data* (raw octets: base64 them with :func:`encode_challenge`)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ask:
    """Emit *step* and wait for the authenticator's answer (:meth:`SASLExchange.resolved`)."""

    step: AuthStep


@dataclass(frozen=True, slots=True)
class Done:
    """The client is *user* (canonical), by *mechanism*."""

    user: str
    mechanism: str


@dataclass(frozen=True, slots=True)
class Refused:
    """Wrong credentials (the authenticator has delayed the answer already)."""

    mechanism: str


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The client cancelled (``*``, RFC 4954 section 4, RFC 5034 section 4, RFC 3501 section 6.2.2)."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """
    The client's response was not a response: *what* says which
    (``"initial response"`` or ``"response"``) for the error text.
    """

    what: str


Outcome = Send | Ask | Done | Refused | Cancelled | Malformed


class SASLExchange:
    """
    One exchange of *mechanism*, with the :class:`txmail.auth.sasl.SASLServer`
    *server* (made by the session's SASL factory).
    """

    __slots__ = ("over", "server")

    def __init__(self, server: sasl.SASLServer) -> None:
        self.server = server
        #: Whether the exchange has ended (the session forgets it).
        self.over = False

    @property
    def mechanism(self) -> str:
        """The mechanism's name (upper case)."""
        return self.server.mechanism

    def start(self, initial_response: str | None) -> Outcome:
        """
        Begin with the command's initial response, if any: base64, ``=``
        (or nothing after the mechanism's space) for an empty one (RFC
        4954 section 4, RFC 4959 section 3), ``*`` to cancel.
        """
        initial: bytes | None = None
        if initial_response is not None:
            try:
                initial = sasl.decode_response(initial_response.encode("ascii"))
            except (sasl.SASLDecodeError, UnicodeEncodeError):
                return self._end(Malformed("initial response"))
            if initial is None:
                return self._end(Cancelled())
        return self._route(self.server.start(initial))

    def respond(self, line: bytes) -> Outcome:
        """One continuation line of the client (without its CRLF)."""
        try:
            data = sasl.decode_response(line)
        except sasl.SASLDecodeError:
            return self._end(Malformed("response"))
        if data is None:
            self.server.cancel()
            return self._end(Cancelled())
        return self._route(self.server.respond(data))

    def resolved(self, event: object) -> Outcome:
        """
        The authenticator's answer to an :class:`Ask` (``Challenge``,
        ``Succeeded`` or ``Failed``).

        Raises:
            TypeError: *event* is none of these (a bug in the application).
        """
        if isinstance(event, sasl.Challenge):
            return Send(event.data)
        if isinstance(event, sasl.Succeeded):
            return self._end(Done(event.username, self.mechanism))
        if isinstance(event, sasl.Failed):
            if event.reason == "cancelled":
                return self._end(Cancelled())
            return self._end(Refused(self.mechanism))
        raise TypeError(f"AuthStep must be answered with Challenge, Succeeded or Failed, not {event!r}")

    def abort(self) -> None:
        """End the exchange from the session's side (a line too long, the connection closing)."""
        if not self.over:
            self.server.cancel()
            self.over = True

    def _route(self, event: sasl.SASLEvent) -> Outcome:
        if isinstance(event, sasl.Challenge):
            return Send(event.data)
        return Ask(AuthStep(self.mechanism, self.server, event))

    def _end(self, outcome: Outcome) -> Outcome:
        self.over = True
        return outcome
