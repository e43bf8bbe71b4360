"""
The Twisted adapter of the SMTP client: delivery attempts to one server.

:func:`deliver_once` takes a :class:`RelayRequest` (one message for one
host: the envelope, the content, the TLS and authentication wanted),
connects, drives a sans-IO :class:`txmail.smtp.client.ClientSession` over
the connection and fires with its
:class:`~txmail.smtp.client.TransactionResult`.  It never errbacks for
network trouble: a refused connection, a timeout, a TLS failure or a lost
connection are temporary results, so the queue runner has one code path.
:class:`ConnectionCache` does the same but keeps each connection open for
the next message to the same destination (what the queue runner uses).

Implementation notes
--------------------
* Endpoint: an IPv4 literal uses ``TCP4ClientEndpoint``, an IPv6 literal
  (with or without brackets) ``TCP6ClientEndpoint``, a name
  ``HostnameEndpoint`` (both families, RFC 8305 "happy eyeballs").  MX
  lookup is the caller's job: pass the address or the MX name.
* TLS: on the session's ``StartTLS`` event the adapter calls
  ``transport.startTLS(context)`` and ``session.tls_started()``; the EHLO
  that follows is the first TLS record.  The context comes from
  *tls_context_factory*, or else from :func:`client_tls_options`: for
  ``"verify"`` :func:`twisted.internet.ssl.optionsForClientTLS`, which
  checks the chain (system roots, or *trust_root*) and the name
  (*tls_hostname*, default *host*) with service-identity, failing the
  handshake closed; for ``"opportunistic"`` an unverified context (RFC 7435
  opportunistic security: encryption without authentication beats
  cleartext).  A handshake failure loses the connection and gives a
  temporary result saying "TLS failure".
* Timeouts (RFC 5321 section 4.5.3.2): one per-command *timeout* on the
  injected *clock*.  It is restarted whenever bytes arrive or content is
  written, so a slow but moving transfer does not expire; the connection
  attempt has the same timeout.
* Content: bytes go to the session whole; a binary file object is streamed
  from its current position with :class:`twisted.protocols.basic.FileSender`
  (a pull producer: the file is read only as fast as the transport drains)
  through a consumer that dot-stuffs each chunk with the session.  File reads
  are plain blocking reads on the reactor thread, as in the server's spool.
* The password given in *auth* is never logged or put in a result.
* Reuse (:class:`ConnectionCache`): the session runs with ``keep_open``; when
  it goes idle the protocol tells the cache (``on_idle``) *before* firing the
  transaction's result, so whoever the result wakes can take the connection
  at once; ``on_lost`` removes a connection the server closed.  While idle
  no command timer runs (the cache's idle timer does).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from OpenSSL import SSL
from twisted.internet import defer, ssl
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    connectProtocol,
)
from twisted.internet.interfaces import (
    IConsumer,
    IProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail.smtp.client import (
    ClientSession,
    ReadyForData,
    RelayRequest,
    StartTLS,
    TLSPolicy,
    TransactionDone,
    TransactionResult,
)
from txmail.tlsverify import TLSPolicyError

__all__ = [
    "ConnectionCache",
    "RelayRequest",
    "SMTPClientProtocol",
    "client_endpoint",
    "client_tls_options",
    "deliver_once",
]

log = Logger()


def client_endpoint(reactor: Any, host: str, port: int, timeout: float) -> IStreamClientEndpoint:
    """A client endpoint for *host* (an IPv4 or IPv6 literal, bracketed or not, or a name)."""
    literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        return HostnameEndpoint(reactor, host.encode("idna"), port, timeout=timeout)
    if address.version == 6:
        return TCP6ClientEndpoint(reactor, literal, port, timeout=timeout)
    return TCP4ClientEndpoint(reactor, literal, port, timeout=timeout)


def client_tls_options(policy: TLSPolicy, hostname: str, trust_root: Any = None) -> Any:
    """
    The TLS context for *policy*: for ``"verify"`` one that checks the chain
    (against *trust_root*, e.g. ``ssl.Certificate.loadPEM(ca_pem)``, or the
    platform's roots) and that the certificate names *hostname*; otherwise
    one that encrypts without checking (opportunistic TLS, RFC 7435).
    """
    if policy == "verify":
        return ssl.optionsForClientTLS(hostname, trustRoot=trust_root)
    return ssl.CertificateOptions(verify=False)


@implementer(IConsumer)
class _StuffingConsumer:
    """The consumer FileSender writes to: chunks go through the session's dot-stuffer."""

    def __init__(self, protocol: SMTPClientProtocol) -> None:
        self.protocol = protocol

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.protocol.transport.registerProducer(producer, streaming)  # type: ignore[union-attr]  # connected: the protocol has its transport

    def unregisterProducer(self) -> None:
        with contextlib.suppress(Exception):
            self.protocol.transport.unregisterProducer()  # type: ignore[union-attr]  # connected: the protocol has its transport

    def write(self, data: bytes) -> None:
        self.protocol.content_written(data)


class SMTPClientProtocol(Protocol):
    """
    One client connection: bytes and time between the transport and a
    :class:`~txmail.smtp.client.ClientSession`.

    Args:
        session: the sans-IO session.
        message_file: the binary file to stream after ``ReadyForData``
            (``None`` when the session holds the message bytes).
        tls_context: what ``transport.startTLS`` gets.
        clock: the timer source.
        timeout: seconds without progress before giving up.
        finished: fired with the result, once.
    """

    def __init__(
        self,
        session: ClientSession,
        message_file: IO[bytes] | None,
        tls_context: Any,
        clock: IReactorTime,
        timeout: float,
        finished: defer.Deferred[TransactionResult],
    ) -> None:
        self.session = session
        self._file = message_file
        self._tls_context = tls_context
        self._clock = clock
        self._timeout = timeout
        self._finished = finished
        self._timer: Any = None
        self._sender: FileSender | None = None
        self._lost = False
        self._processing = False
        #: Called with this protocol when its ``keep_open`` session goes idle
        #: (before the transaction's result is fired), and when the
        #: connection is lost; set by :class:`ConnectionCache`.
        self.on_idle: Callable[[SMTPClientProtocol], None] | None = None
        self.on_lost: Callable[[SMTPClientProtocol], None] | None = None
        #: When the connection was made (``clock.seconds()``).
        self.connected_at = 0.0
        self._lost_waiters: list[defer.Deferred[None]] = []

    # -- Twisted API --

    def connectionMade(self) -> None:
        self.connected_at = self._clock.seconds()
        with contextlib.suppress(AttributeError, OSError):
            self.transport.setTcpNoDelay(True)  # type: ignore[union-attr]  # connected: the transport is set
        self._reset_timer()

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        self.session.receive_data(data)
        self._reset_timer()
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._cancel_timer()
        self._sender = None
        if reason.check(SSL.Error, TLSPolicyError) or type(reason.value).__name__ == "VerificationError":
            description = f"TLS failure: {reason.getErrorMessage()}"
        else:
            description = None  # the session names the step it was waiting for
        self.session.connection_lost(description)
        self._process()
        if self.on_lost is not None:
            self.on_lost(self)
        waiters, self._lost_waiters = self._lost_waiters, []
        for d in waiters:
            d.callback(None)

    # -- reuse (ConnectionCache) --

    def reuse(
        self,
        finished: defer.Deferred[TransactionResult],
        message_file: IO[bytes] | None,
        mail_from: str,
        recipients: Sequence[str | tuple[str, Mapping[str, str]]],
        **transaction: Any,
    ) -> None:
        """
        Run the next transaction on this idle connection (arguments as for
        :meth:`~txmail.smtp.client.ClientSession.next_transaction`);
        *finished* fires with its result.
        """
        self.session.next_transaction(mail_from, recipients, **transaction)
        self._finished = finished
        self._file = message_file
        self._reset_timer()
        self._process()

    def quit(self) -> None:
        """End an idle connection: QUIT, then close without waiting for the reply."""
        if self._lost or not self.session.idle:
            return
        self.session.quit()
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]  # connected: the transport is set

    def when_lost(self) -> defer.Deferred[None]:
        """A Deferred that fires once the connection is gone."""
        if self._lost:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._lost_waiters.append(d)
        return d

    # -- content streaming --

    def content_written(self, data: bytes) -> None:
        """FileSender produced a chunk: stuff it and send it."""
        self.session.send_data(data)
        self._flush()
        self._reset_timer()

    def _start_content(self) -> None:
        if self._file is None:
            # Caller's mistake guarded: nothing to stream means an empty message.
            self.session.end_data()
            return
        sender = self._sender = FileSender()
        d = sender.beginFileTransfer(self._file, _StuffingConsumer(self))

        def sent(_: Any) -> None:
            if self._sender is sender and not self._lost:
                self._sender = None
                self.session.end_data()
                self._reset_timer()
                self._process()

        def failed(f: Failure) -> None:
            # stopProducing (connection lost or session closed): the session
            # already knows what went wrong.
            if self._sender is sender:
                self._sender = None
                if not self._lost and not self.session.closed:
                    log.failure("reading the message to send failed", failure=f)
                    self.session.connection_lost("local error reading the message")
                    self._process()

        d.addCallbacks(sent, failed)

    # -- the event loop --

    def _process(self) -> None:
        if self._processing:
            return
        self._processing = True
        try:
            while (event := self.session.next_event()) is not None:
                if isinstance(event, StartTLS):
                    self._flush()
                    self.transport.startTLS(self._tls_context)  # type: ignore[union-attr]  # connected: the transport is set (and is an ITLSTransport)
                    self.session.tls_started()
                elif isinstance(event, ReadyForData):
                    self._start_content()
                elif isinstance(event, TransactionDone):
                    finished = self._finished
                    if self.session.idle:
                        self._cancel_timer()  # idle: the cache's timer, not a command's
                        if self.on_idle is not None:
                            self.on_idle(self)  # parked before the result goes out, so it can be reused
                    if not finished.called:
                        finished.callback(event.result)
        except Exception:
            log.failure("internal error in SMTP client")
            self.session.connection_lost("internal error in the SMTP client")
            while (event := self.session.next_event()) is not None:
                if isinstance(event, TransactionDone):
                    self._fire(event.result)
        finally:
            self._processing = False
        self._flush()
        if self.session.closed:
            self._cancel_timer()
            if self._sender is not None:
                sender, self._sender = self._sender, None
                with contextlib.suppress(Exception):
                    self.transport.unregisterProducer()  # type: ignore[union-attr]  # connected: the transport is set
                sender.stopProducing()
            if not self._lost:
                self.transport.loseConnection()  # type: ignore[union-attr]  # connected: the transport is set

    def _fire(self, result: TransactionResult) -> None:
        if not self._finished.called:
            self._finished.callback(result)

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and not self._lost:
            self.transport.write(out)  # type: ignore[union-attr]  # connected: the transport is set

    # -- timeouts (RFC 5321 section 4.5.3.2) --

    def _reset_timer(self) -> None:
        if self._lost or self.session.closed or self.session.idle:
            return
        if self._timer is not None and self._timer.active():
            self._timer.reset(self._timeout)
        else:
            self._timer = self._clock.callLater(self._timeout, self._timed_out)

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self._lost:
            return
        self.session.timeout()
        self._process()
        if not self._lost:
            self.transport.abortConnection()  # type: ignore[union-attr]  # connected: the transport is set (a TCP transport)


def _failed_result(error: str) -> TransactionResult:
    return TransactionResult(
        greeting_reply=None, per_recipient={}, message_reply=None, error=error, temporary=True, tls=False
    )


def deliver_once(
    reactor: Any, request: RelayRequest, *, clock: IReactorTime | None = None
) -> defer.Deferred[TransactionResult]:
    """
    Make one delivery attempt of *request*'s message to its host.

    Args:
        reactor: provides ``IReactorTCP`` (and ``IReactorTime`` unless
            *clock* is given).
        request: what to send where, and how (:class:`RelayRequest`).
        clock: the timer source, by default *reactor*.

    Returns:
        A Deferred firing with the :class:`TransactionResult`; it does not
        errback for network or protocol trouble.

    Raises:
        ValueError: bad arguments (see ClientSession).
    """
    _, finished = _connect(reactor, request, clock=clock)
    return finished


def _content(
    message: bytes | IO[bytes], size: int | None
) -> tuple[bytes | None, IO[bytes] | None, int | None]:
    """The message as (bytes, None, size) or (None, file, size), the size measured when not given."""
    if isinstance(message, bytes | bytearray | memoryview):
        return bytes(message), None, size
    if size is None:
        try:
            size = os.fstat(message.fileno()).st_size - message.tell()
        except (AttributeError, OSError, ValueError):
            position = message.tell()
            size = message.seek(0, os.SEEK_END) - position
            message.seek(position)
    return None, message, size


def _connect(
    reactor: Any,
    request: RelayRequest,
    *,
    clock: IReactorTime | None = None,
    keep_open: bool = False,
) -> tuple[SMTPClientProtocol, defer.Deferred[TransactionResult]]:
    """Connect and start the first transaction (see :func:`deliver_once`); the protocol and its result."""
    r = request
    host, port, timeout = r.host, r.port, r.timeout
    data, message_file, size = _content(r.message, r.size)
    session = ClientSession(
        r.hostname,
        r.mail_from,
        r.recipients,
        message=data,
        size=size,
        needs_8bit=r.needs_8bit,
        needs_smtputf8=r.needs_smtputf8,
        mail_params=r.mail_params,
        tls_policy=r.tls_policy,
        auth=r.auth,
        allow_plaintext_auth=r.allow_plaintext_auth,
        keep_open=keep_open,
        require_tls=r.require_tls,
    )
    tls_context_factory = r.tls_context_factory
    if tls_context_factory is None and r.tls_policy != "none":
        literal = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        tls_context_factory = client_tls_options(r.tls_policy, r.tls_hostname or literal, r.trust_root)
    clock = clock if clock is not None else reactor
    assert clock is not None
    endpoint = r.endpoint
    if endpoint is None:
        endpoint = client_endpoint(reactor, host, port, timeout)
    finished: defer.Deferred[TransactionResult] = defer.Deferred()
    protocol = SMTPClientProtocol(session, message_file, tls_context_factory, clock, timeout, finished)

    def connect_failed(f: Failure) -> None:
        if not finished.called:
            finished.callback(
                _failed_result(f"connection to {host} port {port} failed: {f.getErrorMessage()}")
            )

    connecting = connectProtocol(endpoint, protocol)
    connecting.addErrback(connect_failed)
    # The endpoint's own timeout covers the TCP handshake; this covers an
    # endpoint that has none.
    watchdog = clock.callLater(timeout, connecting.cancel)

    def stop_watchdog(result: Any) -> Any:
        if watchdog.active():
            watchdog.cancel()
        return result

    connecting.addBoth(stop_watchdog)
    return protocol, finished


class ConnectionCache:
    """
    Delivers like :func:`deliver_once`, but keeps each connection open after
    its transaction for the next one to the same destination, as Postfix's
    SMTP connection cache does: a burst of mail to one domain then costs one
    TCP connection, greeting, EHLO and TLS handshake instead of one per
    message.

    :meth:`deliver` takes the same :class:`RelayRequest` as
    :func:`deliver_once`.  Connections are found by everything that makes them differ
    (host, port, our name, TLS policy, name and trust root, credentials,
    endpoint).  A connection whose transaction left it usable (delivered, or
    refused by MAIL, RCPT or DATA) waits up to *idle_timeout* seconds; the
    next transaction starts with RSET (:meth:`ClientSession.next_transaction`).
    One that carried *max_transactions* transactions, or has been open
    *max_age* seconds, is closed instead.  If a reused connection turns out
    to have died while idle (no answer to RSET), the transaction is tried
    again at once on a new connection: the server saw nothing of it.

    Args:
        reactor: provides ``IReactorTCP`` (and ``IReactorTime`` unless
            *clock* is given).
        idle_timeout: seconds an unused connection is kept.
        max_transactions: transactions per connection at most.
        max_age: seconds a connection is reused for at most.
        clock: the timer source, by default *reactor*.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        idle_timeout: float = 5.0,
        max_transactions: int = 100,
        max_age: float = 300.0,
        clock: IReactorTime | None = None,
    ) -> None:
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_transactions = max_transactions
        self.max_age = max_age
        self.clock: Any = clock if clock is not None else reactor
        #: Connections opened (for logs and tests).
        self.connections = 0
        #: Transactions that ran on a connection opened for an earlier one.
        self.reused = 0
        self._idle: dict[tuple[Any, ...], list[tuple[SMTPClientProtocol, Any]]] = {}
        self._objects: dict[int, Any] = {}
        self._closed = False

    def deliver(self, request: RelayRequest) -> defer.Deferred[TransactionResult]:
        """One delivery attempt of *request* (as :func:`deliver_once`, on a kept connection where one is idle)."""
        r = request
        host, port = r.host, r.port
        key = (
            host,
            port,
            r.hostname,
            r.tls_policy,
            self._identity(r.tls_context_factory),
            r.tls_hostname,
            self._identity(r.trust_root),
            r.auth,
            r.allow_plaintext_auth,
            self._identity(r.endpoint),
        )

        def connect() -> defer.Deferred[TransactionResult]:
            keep = not self._closed
            protocol, finished = _connect(self.reactor, request, clock=self.clock, keep_open=keep)
            self.connections += 1
            if keep:
                protocol.on_idle = lambda p: self._park(key, p)
                protocol.on_lost = lambda p: self._remove(key, p)
            return finished

        protocol = self._take(key)
        if protocol is None:
            return connect()
        self.reused += 1
        data, message_file, measured = _content(r.message, r.size)
        finished: defer.Deferred[TransactionResult] = defer.Deferred()
        try:
            protocol.reuse(
                finished,
                message_file,
                r.mail_from,
                r.recipients,
                message=data,
                size=measured,
                needs_8bit=r.needs_8bit,
                needs_smtputf8=r.needs_smtputf8,
                mail_params=r.mail_params,
                require_tls=r.require_tls,
            )
        except Exception:
            self._park(key, protocol)  # a caller's mistake (bad address...): the connection is still good
            raise

        def stale(result: TransactionResult) -> Any:
            if protocol.session.stale:
                self.reused -= 1
                log.info(
                    "kept connection to {host} port {port} could not be reused ({error}); reconnecting",
                    host=host,
                    port=port,
                    error=result.error,
                )
                return connect()
            return result

        return finished.addCallback(stale)

    def close(self) -> defer.Deferred[None]:
        """Close every idle connection (QUIT) and keep no more; fires once they are gone."""
        self._closed = True
        waiting = []
        for entries in self._idle.values():
            for protocol, timer in entries:
                if timer.active():
                    timer.cancel()
                waiting.append(protocol.when_lost())
                protocol.quit()
        self._idle.clear()
        return defer.DeferredList(waiting).addCallback(lambda _: None)

    # -- the pool --

    def _identity(self, obj: Any) -> Any:
        """*obj* as part of a key: itself, or (unhashable, like a Certificate) its identity, kept alive."""
        if obj is None:
            return None
        try:
            hash(obj)
        except TypeError:
            self._objects[id(obj)] = obj  # so that its id is never another object's
            return ("id", id(obj))
        return obj

    def _take(self, key: tuple[Any, ...]) -> SMTPClientProtocol | None:
        entries = self._idle.get(key)
        while entries:
            protocol, timer = entries.pop()
            if timer.active():
                timer.cancel()
            if not entries:
                del self._idle[key]
            if protocol.session.idle:
                return protocol
        return None

    def _park(self, key: tuple[Any, ...], protocol: SMTPClientProtocol) -> None:
        """A connection finished a transaction and can take another: keep it for a while."""
        if (
            self._closed
            or protocol.session.transactions >= self.max_transactions
            or self.clock.seconds() - protocol.connected_at >= self.max_age
        ):
            # After the result is out: the QUIT goes with this turn's writes.
            self.clock.callLater(0, protocol.quit)
            return
        timer = self.clock.callLater(self.idle_timeout, self._expire, key, protocol)
        self._idle.setdefault(key, []).append((protocol, timer))

    def _expire(self, key: tuple[Any, ...], protocol: SMTPClientProtocol) -> None:
        self._remove(key, protocol)
        protocol.quit()

    def _remove(self, key: tuple[Any, ...], protocol: SMTPClientProtocol) -> None:
        """Stop keeping *protocol* (it expired, or the connection is gone)."""
        entries = self._idle.get(key)
        if not entries:
            return
        for i, (p, timer) in enumerate(entries):
            if p is protocol:
                if timer.active():
                    timer.cancel()
                del entries[i]
                break
        if not entries:
            del self._idle[key]
