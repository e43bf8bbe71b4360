"""
The sans-IO plumbing shared by the server sessions:
:class:`SessionCore` (output, events, pausing) under all three, and
:class:`LineSession` (CRLF lines, SASL, STARTTLS) under the line-based ones,
:class:`txmail.smtp.session.ServerSession` and
:class:`txmail.pop3.session.POP3Session`.  The IMAP session
(:class:`txmail.imap.session.IMAPSession`) frames its own input (literals)
on :class:`SessionCore`.

Theory of operation
-------------------
Every session has the h11/h2 shape::

    transport.write(session.data_to_send())          # the greeting
    session.receive_data(bytes_from_network)
    while (event := session.next_event()) is not None:
        ...                                           # maybe session.accept(...)
    transport.write(session.data_to_send())

:class:`LineSession` owns what is the same in every protocol:

* the input buffer, cut into CRLF-terminated lines with a length cap: an
  over-long line is discarded up to its CRLF and answered, and the session
  goes on (RFC 5321 section 4.5.3.1.4, RFC 2449 section 4);
* the output buffer (:meth:`~LineSession.data_to_send`) and the event queue
  (:meth:`~LineSession.next_event`);
* pausing: an event whose ``needs_decision`` is true stops all parsing until
  the subclass's ``accept``/``reject`` takes it with :meth:`_take_pending`,
  so pipelined commands are answered in order (RFC 2920, RFC 2449);
* STARTTLS/STLS: after the command nothing more is parsed, and bytes the
  client pipelined behind it are kept in :attr:`~LineSession.trailing_data`
  for the adapter to log and drop (RFC 3207 section 4.2, RFC 2595 section 4;
  the command injection of CVE-2011-0411);
* counting protocol errors, closing past the limit;
* the SASL exchange (RFC 4954, RFC 5034): initial response, client
  responses, ``*`` to cancel, and the authenticator's verdicts.

What each protocol says, and which state it is in, stays in the subclass.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar

from txmail.auth import sasl
from txmail.auth.exchange import Ask, Cancelled, Done, Outcome, Refused, SASLExchange, Send

__all__ = ["MAX_AUTH_LINE", "LineSession", "SessionCore"]

#: RFC 4954 section 4: AUTH command and response lines may be up to 12288
#: octets (POP3 uses the same limit for RFC 5034 AUTH).
MAX_AUTH_LINE = 12288

#: The protocol's event type (its ``Event`` base class).
EventT = TypeVar("EventT")
#: The protocol's reply type (SMTP ``Reply``, POP3 ``Response``...).
ReplyT = TypeVar("ReplyT")


class SessionCore(Generic[EventT]):
    """
    What every sans-IO server session has, line-based or not (IMAP frames
    its own input): the output buffer, the event queue, pausing on an event
    that needs a decision, and the bytes received after STARTTLS.

    Subclasses set ``CLOSED_STATE`` (the value of ``state`` once the session
    ended) and ``state``, and write with :meth:`_write`.
    """

    CLOSED_STATE: ClassVar[Any]
    state: Any
    #: Called with each command's name (upper case) as it is parsed, or
    #: ``None``: the adapter times commands with it (:mod:`txmail.metrics`).
    command_observer: Callable[[str], None] | None = None

    def __init__(self) -> None:
        self._out: list[bytes] = []  # joined once by data_to_send
        self._out_size = 0
        self._events: deque[EventT] = deque()
        self._pending: EventT | None = None
        self._trailing = bytearray()

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the client."""
        out = b"".join(self._out)
        self._out.clear()
        self._out_size = 0
        return out

    @property
    def buffered_input(self) -> int:
        """Octets received and not yet parsed."""
        return 0

    @property
    def pending_output(self) -> int:
        """Octets queued for the client and not yet taken by :meth:`data_to_send`."""
        return self._out_size

    @property
    def paused(self) -> bool:
        """An event awaits an answer (``accept``/``reject``...)."""
        return self._pending is not None

    @property
    def closed(self) -> bool:
        """The session ended; close the connection after writing what is left."""
        return self.state is self.CLOSED_STATE

    @property
    def trailing_data(self) -> bytes:
        """
        Bytes received after STARTTLS/STLS and before the handshake.  The
        adapter must discard them (they are dropped by ``accept``).
        """
        return bytes(self._trailing)

    def _write(self, data: bytes) -> None:
        """Queue *data* for the client."""
        if data:
            self._out.append(data)
            self._out_size += len(data)

    def _emit(self, event: EventT) -> None:
        self._events.append(event)
        if event.needs_decision:  # type: ignore[attr-defined]  # every event type has needs_decision; EventT is unbound
            self._pending = event

    def _take_pending(self) -> EventT:
        """The pending event, now decided; raise RuntimeError when there is none."""
        event = self._pending
        if event is None:
            raise RuntimeError("no event is waiting for a decision")
        if event in self._events:
            raise RuntimeError("the pending event was not returned by next_event() yet")
        self._pending = None
        return event


class LineSession(SessionCore[EventT], ABC, Generic[EventT, ReplyT]):
    """
    Base class of a sans-IO server session reading CRLF-terminated command
    lines.

    Subclasses must provide these class attributes:

    * ``CLOSED_STATE``: the value of ``state`` once the session ended
      (nothing more is read);
    * ``AUTH_STATE``: the state inside a SASL exchange (lines are SASL
      responses), and ``AUTH_DONE_STATE``: the state an exchange that did not
      succeed returns to;
    * ``STARTTLS_EVENT``: the event class emitted by :meth:`_start_tls`;
    * ``CLOSING_EVENT``: the event class built with the close reason
      (``"quit"``, ``"errors"``, ``"timeout"``...) by :meth:`_close`;
    * the replies ``LINE_TOO_LONG_REPLY``, ``TOO_MANY_ERRORS_REPLY``,
      ``TIMEOUT_REPLY``, ``SHUTDOWN_REPLY``, ``UNKNOWN_COMMAND_REPLY`` (undecodable, control
      characters, or an unknown verb), ``AUTH_BAD_BASE64_REPLY``,
      ``AUTH_CANCELLED_REPLY`` and ``AUTH_FAILED_REPLY``;

    and these methods:

    * :meth:`_send` (queue one reply), :meth:`_challenge` (a SASL challenge);
    * :meth:`_command` (one command line, outside a SASL exchange);
    * :meth:`_auth_succeeded` (what a successful SASL exchange does);
    * :meth:`_max_line_length` and :meth:`_max_bad_commands` (the limits);
    * ``accept`` and ``reject`` (which begin with :meth:`_take_pending`),
      ``connection_lost``, and the greeting (sent from ``__init__`` after
      calling ``LineSession.__init__``).

    They must set ``self.state`` in ``__init__``.  They may extend
    :meth:`_step` (for non-line input such as message content) and
    :meth:`_close`.

    Args:
        tls_available: STARTTLS/STLS can be offered (a TLS context exists
            and the transport can start TLS).
        tls_active: the connection already runs TLS (implicit TLS).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``: whether
            passwords may be sent without TLS
            (:func:`txmail.auth.sasl.password_auth_allowed`).
        loopback: the client is on the loopback interface.
        sasl_factory: makes the :class:`txmail.auth.sasl.SASLServer` of an
            AUTH exchange (tests inject a fixed nonce).

    Raises:
        ValueError: *plaintext_auth* is not a known policy.

    Attributes:
        tls: the connection runs TLS.
        tls_available: STARTTLS/STLS may still be offered.
        plaintext_auth: the plaintext policy.
        loopback: the client is on the loopback interface.
        bad_commands: protocol errors so far.
    """

    CLOSED_STATE: ClassVar[Any]
    AUTH_STATE: ClassVar[Any]
    AUTH_DONE_STATE: ClassVar[Any]
    STARTTLS_EVENT: ClassVar[type[Any]]
    CLOSING_EVENT: ClassVar[type[Any]]
    LINE_TOO_LONG_REPLY: ClassVar[Any]
    TOO_MANY_ERRORS_REPLY: ClassVar[Any]
    TIMEOUT_REPLY: ClassVar[Any]
    SHUTDOWN_REPLY: ClassVar[Any]
    UNKNOWN_COMMAND_REPLY: ClassVar[Any]
    AUTH_BAD_BASE64_REPLY: ClassVar[Any]
    AUTH_CANCELLED_REPLY: ClassVar[Any]
    AUTH_FAILED_REPLY: ClassVar[Any]

    state: Any

    def __init__(
        self,
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        loopback: bool = False,
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
    ) -> None:
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        SessionCore.__init__(self)
        self.tls_available = tls_available and not tls_active
        self.tls = tls_active
        self.plaintext_auth = plaintext_auth
        self.loopback = loopback
        self._sasl_factory = sasl_factory
        self.bad_commands = 0
        self._inbuf = bytearray()
        self._scanned = 0  # octets of _inbuf known to hold no CRLF
        self._discarding_line = False
        self._sasl: SASLExchange | None = None

    # -- public API ------------------------------------------------------------

    @property
    def buffered_input(self) -> int:
        """Octets received and not yet parsed."""
        return len(self._inbuf)

    def receive_data(self, data: bytes) -> None:
        """
        Add bytes received from the client.  Nothing is parsed until
        :meth:`next_event` is called.
        """
        if self.state is self.CLOSED_STATE:
            return
        if isinstance(self._pending, self.STARTTLS_EVENT):
            # RFC 3207 section 4.2, RFC 2595 section 4: what follows
            # STARTTLS/STLS before the handshake is never a command.
            self._trailing += data
            return
        self._inbuf += data

    def next_event(self) -> EventT | None:
        """
        Parse what was received and return the next event, or ``None`` when
        more input (or a decision on the pending event) is needed.
        """
        while not self._events and self._pending is None and self.state is not self.CLOSED_STATE:
            if not self._step():
                break
        if not self._events:
            return None
        return self._events.popleft()

    def timeout(self) -> None:
        """The adapter's timer expired: answer ``TIMEOUT_REPLY`` and close."""
        if self.state is self.CLOSED_STATE:
            return
        self._pending = None
        self._close(self.TIMEOUT_REPLY, "timeout")

    def shutdown(self) -> None:
        """
        The server stops: answer ``SHUTDOWN_REPLY`` and close.  The adapter
        calls it between commands (RFC 5321 section 3.8: an SMTP server
        that must shut down answers 421 and closes).
        """
        if self.state is self.CLOSED_STATE:
            return
        self._pending = None
        self._close(self.SHUTDOWN_REPLY, "shutdown")

    # -- what subclasses provide -------------------------------------------------

    @abstractmethod
    def _send(self, reply: ReplyT) -> None:
        """Queue *reply* in the output buffer."""

    @abstractmethod
    def _challenge(self, data: bytes) -> None:
        """Queue a SASL challenge carrying *data* (base64-encoded on the wire)."""

    @abstractmethod
    def _command(self, line: bytes) -> None:
        """Handle one command line (without its CRLF)."""

    @abstractmethod
    def _auth_succeeded(self, username: str, mechanism: str) -> None:
        """A SASL exchange succeeded for the canonical *username*."""

    @abstractmethod
    def _max_line_length(self) -> int:
        """Octets a command line (other than AUTH) may hold, CRLF included."""

    @abstractmethod
    def _max_bad_commands(self) -> int:
        """Protocol errors tolerated before closing."""

    # -- output and events -------------------------------------------------------

    def _protocol_error(self, reply: ReplyT) -> None:
        """Answer a client error, counting it; too many close the session."""
        self.bad_commands += 1
        if self.bad_commands > self._max_bad_commands():
            self._close(self.TOO_MANY_ERRORS_REPLY, "errors")
        else:
            self._send(reply)

    def _close(self, reply: ReplyT, reason: str) -> None:
        """Send *reply* and end the session (nothing more is read)."""
        self._end_auth()
        self._send(reply)
        self.state = self.CLOSED_STATE
        self._inbuf.clear()
        self._emit(self.CLOSING_EVENT(reason))

    def _start_tls(self) -> None:
        """
        Emit ``STARTTLS_EVENT``; input already buffered behind the command
        becomes :attr:`trailing_data` (never parsed).
        """
        self._trailing[:] = self._inbuf
        self._inbuf.clear()
        self._scanned = 0
        self._emit(self.STARTTLS_EVENT())

    def _tls_accepted(self) -> None:
        """The STARTTLS event was accepted: drop what the client sent before TLS."""
        self._trailing.clear()
        self._inbuf.clear()
        self._scanned = 0
        self.tls = True
        self.tls_available = False

    # -- parsing -----------------------------------------------------------------

    def _step(self) -> bool:
        """Do one unit of work; ``False`` when more input is needed."""
        line = self._read_line()
        if line is None:
            return False
        if self.state is self.AUTH_STATE:
            self._auth_response(line)
        else:
            self._command(line)
        return True

    def _read_line(self) -> bytes | None:
        """
        Take one CRLF-terminated line from the input, without its CRLF.

        Over-long lines are discarded up to their CRLF and answered here; the
        caller then gets the next line.
        """
        limit = max(self._max_line_length(), MAX_AUTH_LINE)
        while True:
            idx = self._inbuf.find(b"\r\n", max(self._scanned - 1, 0))
            if idx < 0:
                if len(self._inbuf) > limit:
                    # Keep a final CR: it may start the CRLF.
                    keep = 1 if self._inbuf.endswith(b"\r") else 0
                    del self._inbuf[: len(self._inbuf) - keep]
                    self._discarding_line = True
                self._scanned = len(self._inbuf)
                return None
            line = bytes(self._inbuf[:idx])
            del self._inbuf[: idx + 2]
            self._scanned = 0
            if self._discarding_line or len(line) + 2 > limit:
                self._discarding_line = False
                self._line_too_long()
                if self.state is self.CLOSED_STATE:
                    return None
                continue
            return line

    def _line_too_long(self) -> None:
        if self.state is self.AUTH_STATE:
            self._end_auth()
        self._protocol_error(self.LINE_TOO_LONG_REPLY)

    def _split_command(self, line: bytes) -> tuple[str, str] | None:
        """
        Decode a command line into its upper-cased verb and the raw rest;
        answer (and return ``None`` for) a line that is not UTF-8, holds CR,
        LF or NUL, or is longer than :meth:`_max_line_length` (AUTH lines
        may hold :data:`MAX_AUTH_LINE` octets).
        """
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._protocol_error(self.UNKNOWN_COMMAND_REPLY)
            return None
        if "\r" in text or "\n" in text or "\x00" in text:
            self._protocol_error(self.UNKNOWN_COMMAND_REPLY)
            return None
        verb, _, arg = text.partition(" ")
        verb = verb.upper()
        if self.command_observer is not None:
            self.command_observer(verb)
        if len(line) + 2 > self._max_line_length() and verb != "AUTH":
            self._protocol_error(self.LINE_TOO_LONG_REPLY)
            return None
        return verb, arg

    # -- SASL (RFC 4954, RFC 5034) -------------------------------------------------

    def _start_sasl(self, mechanism: str, initial_response: str | None) -> None:
        """
        Begin a SASL exchange with *mechanism* (already checked to be
        offered), given the command's initial response if any.
        """
        exchange = SASLExchange(self._sasl_factory(mechanism))
        self._sasl = exchange
        self.state = self.AUTH_STATE
        self._sasl_outcome(exchange.start(initial_response))

    def _auth_response(self, line: bytes) -> None:
        """One client line inside a SASL exchange."""
        assert self._sasl is not None
        self._sasl_outcome(self._sasl.respond(line))

    def _authenticator_result(self, event: Any) -> None:
        """An event the authenticator resolved (``accept`` of ``AuthStep``)."""
        if self._sasl is None:
            raise RuntimeError("no SASL exchange is waiting for the authenticator")
        self._sasl_outcome(self._sasl.resolved(event))

    def _sasl_outcome(self, outcome: Outcome) -> None:
        """Do what the exchange says (:mod:`txmail.auth.exchange`)."""
        if isinstance(outcome, Send):
            self._challenge(outcome.data)
        elif isinstance(outcome, Ask):
            self._emit(outcome.step)  # type: ignore[arg-type]  # AuthStep is an event of every line protocol
        else:
            self._end_auth()
            if isinstance(outcome, Done):
                self._auth_succeeded(outcome.user, outcome.mechanism)
            elif isinstance(outcome, Refused):
                self._auth_failed(outcome.mechanism)
            elif isinstance(outcome, Cancelled):
                self._send(self.AUTH_CANCELLED_REPLY)
            else:
                self._protocol_error(self.AUTH_BAD_BASE64_REPLY)

    def _auth_failed(self, mechanism: str) -> None:
        """A SASL exchange failed (bad credentials): answer ``AUTH_FAILED_REPLY``."""
        self._protocol_error(self.AUTH_FAILED_REPLY)

    def _end_auth(self) -> None:
        """Forget the SASL exchange, if any, and leave ``AUTH_STATE``."""
        if self._sasl is not None:
            self._sasl.abort()
        self._sasl = None
        if self.state is self.AUTH_STATE:
            self.state = self.AUTH_DONE_STATE
