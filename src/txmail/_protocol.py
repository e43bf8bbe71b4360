"""
The Twisted plumbing shared by the server adapters
(:class:`txmail.smtp.server.SMTPServerProtocol`,
:class:`txmail.pop3.server.POP3ServerProtocol`,
:class:`txmail.imap.server.IMAPServerProtocol`): each moves bytes and time
between a transport and a sans-IO session built on
:class:`txmail._session.SessionCore`.

Implementation notes
--------------------
* ``dataReceived`` feeds the session and drains its events through the
  subclass's ``_handle``.  An event that needs a Deferred of ours leaves the
  session paused (:meth:`SessionProtocol._wait`); meanwhile the adapter stops
  reading from the transport (``pauseProducing``), so pipelined input is not
  buffered without bound, and resumes once the Deferred answered the
  session.  Replies therefore go out in command order (RFC 2920, RFC 2449).
* Back-pressure on replies: a reply gate is the transport's producer (a
  message or a long FETCH replaces it with its own while it streams); when
  the client stops reading and the write buffer fills, commands are no
  longer answered nor read until it drains (over TLS, reading goes on until
  ``MAX_UNREAD_INPUT`` octets wait, since the TLS layer also pauses the
  producer during its handshake).  Replies go straight to the socket on a
  plain TCP connection with nothing buffered (``_write_out``).
* One timer on the injected clock runs while we wait for the client and is
  stopped while we wait for a Deferred of our own; expiry lets the session
  answer and close.
* STARTTLS/STLS: the bytes the client pipelined after the command are logged
  by size and discarded before the handshake (RFC 3207 section 4.2, RFC 2595
  section 4; CVE-2011-0411).
* A bug in our own callbacks is logged and the paused session is rejected
  with a temporary failure, never with the exception's text.
* Metrics (:mod:`txmail.metrics`): the factory's ``metrics`` (a
  :class:`~txmail.metrics.ProtocolMetrics`, absent when metrics are off)
  counts the connection, times each command the session names to its
  ``command_observer`` until the session is ready for the next one, and
  counts logins by mechanism and TLS handshakes (``handshakeCompleted``;
  a connection lost before it counts as a failure).
* Graceful shutdown (:meth:`SessionProtocol.shut_down`, called for every
  connection in the factory's ``connections`` when the server stops): a
  session idle between commands gets the protocol's shutdown reply (SMTP
  ``421 4.3.2``, POP3 ``-ERR``, IMAP ``* BYE``) and is closed at once; one
  in the middle of a command (or, for SMTP, of a mail transaction) is
  closed the same way as soon as that ends.
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from twisted.internet import defer
from twisted.internet.abstract import FileDescriptor
from twisted.internet.interfaces import IHandshakeListener, IPushProducer, ITLSTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.tcp import Server as _TCPServer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail.auth import sasl
from txmail.metrics import NULL_PROTOCOL_METRICS

if TYPE_CHECKING:
    from txmail.auth.authenticator import Authenticator

_T = TypeVar("_T")

__all__ = ["SessionProtocol", "format_peer", "is_loopback", "make_id"]


def is_loopback(host: str) -> bool:
    """Whether *host* is an IP address on the loopback interface."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def format_peer(host: str, port: Any) -> str:
    """``host:port`` for logs, with brackets around an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def make_id(clock: Any) -> str:
    """A new id for a session or message: time-ordered (by *clock*), then random."""
    return f"{int(clock.seconds()):X}{secrets.token_hex(5).upper()}"


def _buffered(transport: Any) -> bool:
    """
    Whether a ``FileDescriptor`` transport holds bytes it has not written
    (its write buffers, not in Twisted's interfaces; when they are not
    there, say yes, so that the caller leaves writing to the transport).
    """
    temp = getattr(transport, "_tempDataLen", None)
    buffer = getattr(transport, "dataBuffer", None)
    offset = getattr(transport, "offset", None)
    if not isinstance(temp, int) or not isinstance(buffer, bytes) or not isinstance(offset, int):
        return True
    return temp > 0 or len(buffer) > offset


@implementer(IPushProducer)
class _ReplyGate:
    """
    A connection's producer while nothing else streams: the transport
    pauses it when the client stops reading replies and its write buffer is
    full, and resumes it once drained.  Meanwhile the protocol reads no
    more commands, so a client that pipelines without reading cannot make
    the server hold replies without bound.
    """

    def __init__(self, protocol: SessionProtocol) -> None:
        self.protocol = protocol
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True
        self.protocol._output_backed_up()

    def resumeProducing(self) -> None:
        self.paused = False
        self.protocol._output_drained()

    def stopProducing(self) -> None:
        self.paused = False


#: Replies queued in a session before they are handed to the transport in
#: the middle of a burst of pipelined commands (so that back-pressure can act).
FLUSH_EVERY = 256 * 1024
#: Input kept unread in a TLS session while its replies back up (see SessionProtocol._may_read).
MAX_UNREAD_INPUT = 256 * 1024


@implementer(IHandshakeListener)
class SessionProtocol(Protocol, ABC):
    """
    Base class of a server connection driving a sans-IO
    :class:`txmail._session.LineSession`.

    Subclasses must provide:

    * ``PROTOCOL_NAME`` (``"SMTP"``, ``"POP3"``...) and ``STARTTLS_COMMAND``
      (``"STARTTLS"``, ``"STLS"``...), used in log messages;
    * ``INTERNAL_ERROR_REPLY``: the temporary failure a paused session is
      rejected with after a bug in our callbacks (and when the authenticator
      fails); ``PASSWORD_FAILED_REPLY``: what a ``PasswordCheck`` that found
      no user is rejected with;
    * :meth:`_open_session`: build the session for a client at *host* (and
      log the connection);
    * :meth:`_handle`: act on one event of the session;
    * :meth:`_timer_delay`: seconds the client may stay silent right now.

    They may extend ``connectionLost`` (calling this one first) and override
    the hooks :meth:`_may_close`, :meth:`_closing`, :meth:`_timer_stopped` and
    :meth:`_session_timed_out`.

    The factory must have ``make_id()``, ``clock`` (an ``IReactorTime``),
    ``tls_context`` and ``implicit_tls``.

    Attributes:
        factory: the factory that built this connection.
        session_id: the id of this connection in logs.
        peer: the client's ``host:port``.
        session: the sans-IO session, from ``connectionMade`` on.
    """

    log = Logger()

    PROTOCOL_NAME: ClassVar[str]
    STARTTLS_COMMAND: ClassVar[str]
    INTERNAL_ERROR_REPLY: ClassVar[Any]
    PASSWORD_FAILED_REPLY: ClassVar[Any] = None
    #: The mechanism label of a login with a password command (POP3 USER/PASS, IMAP LOGIN).
    PASSWORD_MECHANISM: ClassVar[str] = "LOGIN"

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.session_id = factory.make_id()
        self.peer = ""
        self.session: Any = None
        self._timer: Any = None
        self._waits = 0  # Deferreds of ours that will answer the session
        self._processing = False
        self._reading_paused = False
        self._lost = False
        self._reply_gate = _ReplyGate(self)
        self._gate_registered = False
        #: The listener's counters (txmail.metrics); the no-op ones when metrics are off.
        self._metrics = getattr(factory, "metrics", NULL_PROTOCOL_METRICS)
        self._counted = False  # connectionMade counted this connection
        self._command: str | None = None  # the command being timed
        self._command_started = 0.0
        self._tls_pending = False  # a TLS handshake started and did not complete
        #: The server is stopping: close as soon as the session is idle.
        self.shutting_down = False

    @property
    def _waiting(self) -> bool:
        """A Deferred of ours will answer the session."""
        return self._waits > 0

    @property
    def _transport(self) -> Any:
        """The transport, typed loosely: it is also an IProducer and may be an ITLSTransport."""
        return self.transport

    # -- what subclasses provide -------------------------------------------------

    @abstractmethod
    def _open_session(self, host: str) -> Any:
        """Build (and log) the session for a client connected from *host*."""

    @abstractmethod
    def _handle(self, event: Any) -> None:
        """Act on one event of the session."""

    @abstractmethod
    def _timer_delay(self) -> float:
        """Seconds the client may stay silent in the session's current state."""

    def _may_close(self) -> bool:
        """The session closed: may the connection be dropped now?"""
        return True

    def _closing(self) -> None:
        """The connection is about to be dropped because the session closed."""

    def _timer_stopped(self) -> bool:
        """No timer runs now (by default: while a Deferred of ours is pending)."""
        return self._waiting

    def _idle(self) -> bool:
        """
        The session waits for the client's next command, in the middle of
        nothing: a graceful shutdown may close it now.
        """
        session = self.session
        return (
            session is not None
            and not self._waiting
            and not session.paused
            and session.buffered_input == 0
            and not session.closed
        )

    def _session_timed_out(self) -> None:
        """The client was silent too long: let the session answer and close."""
        assert self.session is not None
        self.session.timeout()
        self._process()

    # -- Twisted API --

    def connectionMade(self) -> None:
        # Replies are small and each answers a client waiting for it: send
        # them at once (no Nagle delay).  Measured ~8% more messages/s in
        # benchmarks/smtp_delivery.py.
        with contextlib.suppress(AttributeError, OSError):
            self._transport.setTcpNoDelay(True)
        peer = self._transport.getPeer()
        host = getattr(peer, "host", "")
        self.peer = format_peer(host, getattr(peer, "port", ""))
        self.session = self._open_session(host)
        metrics = self._metrics
        if metrics.enabled:
            self._counted = True
            metrics.connection_opened()
            self.session.command_observer = self._command_parsed
            self._tls_pending = bool(self.factory.implicit_tls)
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            connections.add(self)
        self._claim_producer()
        self._process()
        if getattr(self.factory, "draining", False):
            self.shut_down()  # accepted as the listener closed

    def dataReceived(self, data: bytes) -> None:
        if self.session is None or self._lost:
            return
        self.session.receive_data(data)
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timer()
        connections = getattr(self.factory, "connections", None)
        if connections is not None:
            connections.discard(self)
        if self.session is not None:
            self.session.connection_lost()
        if self._counted:
            self._counted = False
            self._command_done()
            if self._tls_pending:
                self._tls_pending = False
                self._metrics.tls(False)
            self._metrics.connection_closed()

    def handshakeCompleted(self) -> None:
        """The TLS handshake (STARTTLS or implicit TLS) succeeded (``IHandshakeListener``)."""
        if self._tls_pending:
            self._tls_pending = False
            self._metrics.tls(True)

    # -- metrics --

    def _command_parsed(self, name: str) -> None:
        """The session parsed command *name*: the previous one is done, time this one."""
        now = self._metrics.timer()
        if self._command is not None:
            self._metrics.command(self._command, now - self._command_started)
        self._command = name
        self._command_started = now

    def _command_done(self) -> None:
        """The session is ready for the next command: the one being timed is done."""
        if self._command is not None:
            name, self._command = self._command, None
            self._metrics.command(name, self._metrics.timer() - self._command_started)

    # -- graceful shutdown --

    def shut_down(self) -> None:
        """
        The server stops: answer the protocol's shutdown reply and close
        now if the session is idle, else as soon as the command (or SMTP
        transaction) in progress is over.
        """
        self.shutting_down = True
        self._shutdown_if_idle()

    def _shutdown_if_idle(self) -> None:
        session = self.session
        if session is None or self._lost or session.closed or not self._idle():
            return
        self.log.info(
            self.PROTOCOL_NAME + " connection from {peer} closed: the server stops",
            peer=self.peer,
            session_id=self.session_id,
        )
        session.shutdown()
        self._process()

    # -- helpers for _open_session --

    def _tls_available(self) -> bool:
        """STARTTLS/STLS can be offered: a context, no implicit TLS, a TLS-capable transport."""
        factory = self.factory
        return (
            factory.tls_context is not None
            and not factory.implicit_tls
            and ITLSTransport.providedBy(self._transport)
        )

    # -- the event loop --

    def _process(self) -> None:
        """Drain the session's events, write its output, manage timers and reading."""
        session = self.session
        if session is None or self._processing or self._lost:
            return
        self._processing = True
        try:
            while not self._waiting and not self._reply_gate.paused:
                event = session.next_event()
                if event is None:
                    break
                self._handle(event)
                if session.pending_output > FLUSH_EVERY:
                    self._flush()  # the transport may pause us: the loop then stops
        finally:
            self._processing = False
        self._flush()
        if session.closed and self._may_close():
            self._cancel_timer()
            if self._command is not None:
                self._command_done()
            self._closing()
            self._release_producer()  # TLS closes only once no producer is registered
            self._transport.loseConnection()
            return
        self._set_reading(self._may_read())
        if self._timer_stopped():
            self._cancel_timer()
        else:
            self._reset_timer()
        self._send_now()
        if self._command is not None and not self._waiting:
            self._command_done()
        if self.shutting_down:
            self._shutdown_if_idle()

    # -- back-pressure on replies --

    def _claim_producer(self) -> None:
        """Register the reply gate as the transport's producer (when nothing else is)."""
        if self._gate_registered or self._lost or (self.session is not None and self.session.closed):
            return
        with contextlib.suppress(AttributeError, RuntimeError):
            self._transport.registerProducer(self._reply_gate, True)
            self._gate_registered = True

    def _release_producer(self) -> None:
        """Unregister the reply gate, so that a message or a long response can stream with its own."""
        if not self._gate_registered:
            return
        self._gate_registered = False
        self._reply_gate.paused = False
        with contextlib.suppress(AttributeError, RuntimeError):
            self._transport.unregisterProducer()

    def _output_backed_up(self) -> None:
        """The client does not read its replies: answer (and read) no more commands."""
        self._set_reading(self._may_read())

    def _may_read(self) -> bool:
        """
        Whether to read from the transport now.  Not while a Deferred of
        ours will answer the session, nor while the client's replies back
        up -- except over TLS, whose layer also pauses us while its
        handshake is under way and must go on reading for it: there input
        is read until :data:`MAX_UNREAD_INPUT` octets wait in the session.
        """
        if self._waiting:
            return False
        if not self._reply_gate.paused:
            return True
        session = self.session
        return bool(session is not None and session.tls and session.buffered_input < MAX_UNREAD_INPUT)

    def _output_drained(self) -> None:
        """The transport wrote what it held: go on with the commands."""
        if not self._lost:
            self._process()

    def _send_now(self) -> None:
        """
        Hand what the transport buffered to the socket at once, instead of
        at the reactor's next turn: a plain TCP transport's
        ``IWriteDescriptor.doWrite`` (measured: ~8% more POP3 RETRs per second,
        one trip through the event loop less per reply).  Only while no
        producer is registered (a streamed message paces itself); TLS and
        other transports write when the reactor says.  An error is left for
        the reactor to find on its next turn, as it would have been.
        """
        transport = self._transport
        if (
            isinstance(transport, FileDescriptor)
            and transport.connected
            and not transport.disconnecting
            and transport.producer in (None, self._reply_gate)
            and not self._lost
            and _buffered(transport)
        ):
            transport.doWrite()

    def _flush(self) -> None:
        """Write what the session has to send."""
        if self.session is not None and not self._lost:
            out = self.session.data_to_send()
            if out:
                self._write_out(out)

    def _write_out(self, data: bytes) -> None:
        """
        Write *data* to the client.  On a plain TCP connection whose write
        buffer is empty (no TLS, no producer), the bytes go straight to the
        socket (``writeSomeData``), and only what the kernel did not take is
        buffered by the transport: a reply then costs one ``send`` instead
        of registering for writability, waiting for the reactor's next turn
        and unregistering (two ``epoll_ctl`` and an ``epoll_wait``).
        Measured: POP3 one-at-a-time RETR 1.46x -> 1.34x Dovecot's time.

        This reads attributes of Twisted's ``tcp.Server`` that are not in
        its interfaces (``dataBuffer``, ``offset``, ``_tempDataLen``); the
        exact type is checked and anything unexpected falls back to
        ``transport.write``, so other transports (TLS, tests'
        ``StringTransport``) are never touched.
        """
        t = self._transport
        if (
            type(t) is _TCPServer
            and not t.TLS
            and t.connected
            and not t.disconnecting
            and t.producer in (None, self._reply_gate)
            and not _buffered(t)
        ):
            sent = t.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    return
                data = data[sent:]
        t.write(data)

    def _set_reading(self, reading: bool) -> None:
        if reading == (not self._reading_paused):
            return
        self._reading_paused = not reading
        if reading:
            self._transport.resumeProducing()
        else:
            self._transport.pauseProducing()

    def _wait(self, d: defer.Deferred[Any]) -> None:
        """
        The session stays paused (no more events are handled) until *d* has
        fired -- and any Deferred that its callbacks wait for in turn (a
        policy asked after the router's check, say).
        """
        self._waits += 1

        def done(_: Any) -> None:
            self._waits -= 1
            if not self._waits and not self._lost:
                self._process()

        d.addBoth(done)

    def _answer(
        self, d: defer.Deferred[Any], ok: Callable[[Any], None], failed_reply: Any, what: str
    ) -> None:
        """Wait for *d*: ``ok(result)`` on success, else log and reject with *failed_reply*."""
        session = self.session
        assert session is not None

        def succeeded(result: Any) -> None:
            if not self._lost:
                ok(result)

        def failed(f: Failure) -> None:
            self.log.failure(
                "{what} failed for {peer}", failure=f, what=what, peer=self.peer, session_id=self.session_id
            )
            if not self._lost and session.paused:
                session.reject(failed_reply)

        d.addCallbacks(succeeded, failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    def _internal_error(self, f: Failure) -> None:
        """A bug in our own callbacks: log it, keep the connection's replies sane."""
        self.log.failure(
            "internal error in " + self.PROTOCOL_NAME + " session", failure=f, session_id=self.session_id
        )
        if self.session is not None and self.session.paused and not self._lost:
            with contextlib.suppress(RuntimeError, ValueError):
                self.session.reject(self.INTERNAL_ERROR_REPLY)

    def _store_call(
        self, operation: str, fn: Callable[..., defer.Deferred[_T]], *args: Any
    ) -> defer.Deferred[_T]:
        """
        ``fn(*args)``, a contract method that returns a Deferred, its time
        counted as the store's *operation* (``open``, ``list``, ``fetch``).
        """
        metrics = self._metrics
        if not metrics.enabled:
            return fn(*args)
        started = metrics.timer()

        def measured(result: _T) -> _T:
            metrics.store(operation, metrics.timer() - started)
            return result

        return fn(*args).addCallback(measured)

    # -- authentication --

    @property
    def _authenticator(self) -> Authenticator:
        """The factory's shared :class:`txmail.auth.authenticator.Authenticator`."""
        authenticator: Authenticator = self.factory.authenticator
        return authenticator

    def _check_password(self, event: Any) -> None:
        """A ``PasswordCheck`` event: ask the authenticator (which slows down failures)."""
        session = self.session
        assert session is not None
        d = self._authenticator.check_password(event.username, event.password, peer=self.peer)

        def checked(user: str | None) -> None:
            self._metrics.auth(self.PASSWORD_MECHANISM, user is not None)
            if user is None:
                session.reject(self.PASSWORD_FAILED_REPLY)
            else:
                self._logging_in(user, lambda: session.accept(user))

        self._answer(d, checked, self.INTERNAL_ERROR_REPLY, "password check")

    def _auth_step(self, event: Any) -> None:
        """An ``AuthStep`` event: the authenticator resolves the SASL server's request."""
        session = self.session
        assert session is not None
        d = self._authenticator.step(event.server, event.request, peer=self.peer)

        def stepped(result: sasl.SASLEvent) -> None:
            if isinstance(result, sasl.Succeeded):
                self._metrics.auth(event.mechanism, True)
                self._logging_in(result.username, lambda: session.accept(result))
            else:
                if isinstance(result, sasl.Failed):
                    self._metrics.auth(event.mechanism, False)
                session.accept(result)

        self._answer(d, stepped, self.INTERNAL_ERROR_REPLY, "authentication step")

    def _logging_in(self, user: str, accept: Callable[[], None]) -> None:
        """
        *user* proved who they are (a password or a SASL exchange):
        ``accept()`` answers the paused session with the success.  At once
        here; an adapter that needs something first (the IMAP one opens the
        user's store, so that a store it cannot open fails the LOGIN or
        AUTHENTICATE) overrides this, waits (:meth:`_answer`) and accepts or
        rejects the session itself.
        """
        accept()

    # -- STARTTLS / STLS --

    def _start_tls(self) -> None:
        """Accept the session's StartTLS event and start the handshake."""
        session = self.session
        assert session is not None
        discarded = len(session.trailing_data)
        if discarded:
            # RFC 3207 section 4.2, RFC 2595 section 4 / CVE-2011-0411: never run these.
            self.log.warn(
                "discarding {count} octets pipelined after " + self.STARTTLS_COMMAND + " from {peer}",
                count=discarded,
                peer=self.peer,
                session_id=self.session_id,
            )
        session.accept()
        self._flush()  # the positive reply goes out in the clear, before the handshake
        self._release_producer()  # registered again through the TLS layer
        self._tls_pending = self._counted
        self._transport.startTLS(self.factory.tls_context)
        self._claim_producer()

    # -- timeouts --

    def _reset_timer(self) -> None:
        """(Re)start the timer for :meth:`_timer_delay` seconds."""
        session = self.session
        if session is None or session.closed or self._lost:
            self._cancel_timer()
            return
        delay = self._timer_delay()
        if self._timer is not None and self._timer.active():
            # Moving a pending call later is cheap (no new heap entry).
            self._timer.reset(delay)
        else:
            self._timer = self.factory.clock.callLater(delay, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.session is None or self._lost:
            return
        self.log.info(
            self.PROTOCOL_NAME + " connection from {peer} timed out",
            peer=self.peer,
            session_id=self.session_id,
        )
        self._session_timed_out()
