"""
An in-process txmail server for test suites, in the spirit of GreenMail.

:class:`TestServer` starts a complete server (SMTP on the MTA port,
submission, POP3 and IMAP) on ephemeral loopback ports, with an in-memory
mailbox store (:class:`txmail.store.memory.MemoryProvider`) and an in-memory
user directory (:class:`txmail.directory.MemoryDirectory`).  A test creates
users, talks to the server with any client (``smtplib``, ``imaplib``,
``poplib``, Twisted clients), inspects what was delivered
(:meth:`TestServer.messages_for`), waits for a delivery with a timeout
(:meth:`TestServer.wait_for_messages`) and stops the server cleanly.

Nothing leaves the machine: the outbound queue runner asks a
:class:`FakeResolver` for mail hosts and hands mail to an
:class:`OutboundCapture` instead of connecting anywhere, so a test asserts
what the server *would* have relayed, and can make the fake remote refuse
recipients (4xx/5xx) to exercise retries and bounces (RFC 3464 delivery
status notifications land in the sender's INBOX).

Two APIs
========

* **Deferred API** (:class:`TestServer`), for trial tests and Twisted
  programs: every method that waits returns a Deferred; the reactor is the
  caller's.  ::

      class MyTests(twisted.trial.unittest.TestCase):
          @defer.inlineCallbacks
          def setUp(self):
              self.server = TestServer()
              yield self.server.start()
              self.addCleanup(self.server.stop)
              self.server.add_user("alice@example.test", "secret")

* **Blocking API** (:class:`BlockingTestServer`, :func:`running_server`),
  for plain ``unittest``/pytest tests::

      with running_server() as server:
          server.add_user("alice@example.test", "secret")
          with smtplib.SMTP(*server.smtp_address) as s:
              s.sendmail("bob@else.test", ["alice@example.test"], b"Subject: hi\\r\\n\\r\\nhi\\r\\n")
          [message] = server.wait_for_messages("alice@example.test", 1, timeout=5)

  It runs the global Twisted reactor in a background daemon thread, started
  once per process (``installSignalHandlers=False``) on first use and
  stopped at interpreter exit; every call is handed to that thread with
  ``reactor.callFromThread`` and its result waited for.

  **One reactor per process.**  A Twisted reactor can run once, in one
  thread.  The blocking API therefore cannot be used where the reactor is
  already run by someone else on the calling thread (trial tests, code
  running in the reactor): it raises :class:`ReactorThreadError` instead of
  deadlocking.  Under trial, use :class:`TestServer`.  Likewise, once the
  blocking API has started the reactor in its thread, the same process
  cannot run the reactor itself (``reactor.run()``).

Conformance suites
==================

The submodules :mod:`txmail.testing.store`, :mod:`txmail.testing.queue`
and :mod:`txmail.testing.directory` hold the conformance suites of the
mailbox store, outbound queue and user directory contracts: mixins for a
trial ``TestCase`` that a backend, in this repository or outside it, runs
against itself (see the backend guide).  Importing :mod:`txmail.testing`
does not import them.

Implementation notes
====================

* The server is :func:`txmail.service.build_service` with settings built in
  code: every listener on ``tcp:0:interface=127.0.0.1``, ``plaintext_auth =
  "loopback"`` (so ``AUTH PLAIN``/``LOGIN`` work without TLS), outbound
  enabled with the fake resolver and capture.  The queue still lives on
  disk, in a temporary data directory removed by :meth:`TestServer.stop`.
* Waiting for mail uses the mailbox listener
  (:meth:`txmail.interfaces.IMailbox.add_listener`), not polling; the
  timeout is a ``callLater`` on the server's reactor and fails the wait with
  :class:`WaitTimeout`.
* A clean stop: :meth:`TestServer.stop` stops the listeners, the queue
  runner and the thread pool, and aborts every connection the server
  accepted that is still open, then waits until each has been lost, so trial
  finds no dirty reactor.  It does this by wrapping each listener factory's
  ``buildProtocol`` to remember the protocols it builds.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.python import threadable
from twisted.python.failure import Failure

from txmail.config import load_config
from txmail.delivery.mx import Destination, NoRoute, parse_domain_literal
from txmail.directory import MemoryDirectory
from txmail.errors import NoSuchUser
from txmail.interfaces import IMailbox
from txmail.model import INBOX, MailboxChange, MailboxStatus
from txmail.service import ListenerRole, MailServer, build_service
from txmail.smtp.client import RelayRequest, TransactionResult
from txmail.smtp.codes import Reply
from txmail.store.memory import MemoryProvider

__all__ = [
    "DEFAULT_DOMAIN",
    "BlockingTestServer",
    "CapturedMessage",
    "FakeResolver",
    "OutboundCapture",
    "ReactorThreadError",
    "TestServer",
    "WaitTimeout",
    "running_server",
]

DEFAULT_DOMAIN = "example.test"
# TEST-NET-1 (RFC 5737): documentation addresses, never routed.
_FAKE_ADDRESS = "192.0.2.1"
_LOOPBACK = "tcp:0:interface=127.0.0.1"
_ROLES: tuple[ListenerRole, ...] = ("mta", "submission", "pop3", "imap", "web", "managesieve")


class WaitTimeout(TimeoutError):
    """A wait (for messages, for outbound mail, for the reactor thread) ran out of time."""


class ReactorThreadError(RuntimeError):
    """The blocking API was used where it cannot work (see the module docstring)."""


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


# -- the fake outside world ---------------------------------------------------


class FakeResolver:
    """
    Answers the queue runner's mail host lookups without DNS.

    It has the interface of :class:`txmail.delivery.mx.MXResolver`:
    ``resolve(domain) -> Deferred[list[Destination]]``.

    Args:
        routes: ``{domain: [Destination, ...]}`` to start with.
        default_address: the address of the one fake host every other domain
            resolves to (``mx.<domain>``, preference 10); ``None`` makes other
            domains fail with a permanent :class:`~txmail.delivery.mx.NoRoute`
            (as NXDOMAIN would).

    Domain literals (``[192.0.2.7]``) route to their address, as in
    :class:`~txmail.delivery.mx.MXResolver`.

    Attributes:
        lookups: every domain asked for, in order.
    """

    def __init__(
        self,
        routes: Mapping[str, Sequence[Destination]] | None = None,
        *,
        default_address: str | None = _FAKE_ADDRESS,
    ) -> None:
        self.default_address = default_address
        self.lookups: list[str] = []
        self._routes: dict[str, list[Destination] | Exception] = {}
        for domain, destinations in (routes or {}).items():
            self.add_route(domain, *destinations)

    def add_route(self, domain: str, *destinations: Destination) -> None:
        """Make *domain* resolve to *destinations* (in this order)."""
        self._routes[domain.lower().rstrip(".")] = list(destinations)

    def add_failure(self, domain: str, error: Exception) -> None:
        """
        Make lookups of *domain* fail with *error*: for example
        ``NoRoute("no such domain", temporary=False)`` or
        ``NullMX("null MX")`` (RFC 7505).
        """
        self._routes[domain.lower().rstrip(".")] = error

    def resolve(self, domain: str) -> defer.Deferred[list[Destination]]:
        """See :meth:`txmail.delivery.mx.MXResolver.resolve`."""
        self.lookups.append(domain)
        key = domain.lower().rstrip(".")
        route = self._routes.get(key)
        if isinstance(route, Exception):
            return defer.fail(route)
        if route is not None:
            return defer.succeed(list(route))
        try:
            literal = parse_domain_literal(domain)
        except ValueError as e:
            return defer.fail(NoRoute(str(e), temporary=False))
        if literal is not None:
            return defer.succeed([Destination(domain, literal, 0)])
        if self.default_address is None:
            return defer.fail(NoRoute(f"{domain}: no route (FakeResolver)", temporary=False))
        return defer.succeed([Destination(f"mx.{key}", self.default_address, 10)])


@dataclass(frozen=True)
class CapturedMessage:
    """
    One transaction :class:`OutboundCapture` took part in.

    Attributes:
        host: the destination host name (the MX name, ``mx.<domain>`` with
            the default :class:`FakeResolver`).
        address: the IP address the server would have connected to.
        port: the TCP port.
        mail_from: the envelope sender (``""`` for a bounce).
        recipients: the recipients the fake remote accepted.
        rejected: the recipients it refused, with the reply each got.
        message: the message bytes as they would have been sent.
        mail_params: the MAIL parameters passed on (``RET``, ``ENVID``).
        helo: the name the server would have greeted with.
    """

    host: str
    address: str
    port: int
    mail_from: str
    recipients: tuple[str, ...]
    rejected: Mapping[str, Reply]
    message: bytes
    mail_params: Mapping[str, str] = field(default_factory=dict)
    helo: str = ""


class _Waiters:
    """Deferreds waiting for a count to be reached, with reactor timeouts."""

    def __init__(self) -> None:
        self._pending: list[tuple[defer.Deferred[Any], Callable[[], bool], Callable[[], Any]]] = []

    def add(
        self,
        clock: Any,
        ready: Callable[[], bool],
        value: Callable[[], Any],
        timeout: float,
        describe: Callable[[], str],
    ) -> defer.Deferred[Any]:
        if ready():
            return defer.succeed(value())
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self._forget(d))
        entry = (d, ready, value)
        self._pending.append(entry)

        def expired() -> None:
            if self._drop(d):
                d.errback(WaitTimeout(describe()))

        timer = clock.callLater(timeout, expired)
        d.addBoth(lambda r: (timer.cancel() if timer.active() else None, r)[1])
        return d

    def _forget(self, d: defer.Deferred[Any]) -> None:
        """A waiter was cancelled: stop checking it."""
        self._drop(d)

    def _drop(self, d: defer.Deferred[Any]) -> bool:
        for i, entry in enumerate(self._pending):
            if entry[0] is d:
                del self._pending[i]
                return True
        return False

    def check(self) -> None:
        for entry in list(self._pending):
            d, ready, value = entry
            if ready() and self._drop(d):
                d.callback(value())

    def fail_all(self, error: Exception) -> None:
        pending, self._pending = self._pending, []
        for d, _, _ in pending:
            d.errback(error)


class OutboundCapture:
    """
    Stands in for :func:`txmail.smtp.relay.deliver_once` (called with a
    :class:`~txmail.smtp.relay.RelayRequest`): records what the
    server would have relayed and answers like a remote server.

    By default every recipient is accepted (``250``).  :meth:`set_reply`
    makes the fake remote refuse a recipient at RCPT: a 5xx fails it and the
    sender gets a bounce (RFC 3464), a 4xx defers it for a retry (RFC 5321
    section 4.2.1).

    Args:
        clock: the reactor whose ``callLater`` times :meth:`wait_for`.

    Attributes:
        messages: the :class:`CapturedMessage` of each transaction in which
            at least one recipient was accepted (what remote servers got).
        attempts: every transaction, also those refused entirely.
    """

    def __init__(self, clock: Any = None) -> None:
        self.clock = clock
        self.messages: list[CapturedMessage] = []
        self.attempts: list[CapturedMessage] = []
        self._replies: dict[str, Reply] = {}
        self._waiters = _Waiters()

    def set_reply(
        self, recipient: str, code: int, text: str = "refused", enhanced: str | None = None
    ) -> None:
        """
        Answer RCPT for *recipient* (compared without regard to case) with
        *code* (4xx or 5xx) and *text*; *enhanced* defaults to ``4.0.0`` or
        ``5.0.0`` (RFC 3463).
        """
        if not 400 <= code <= 599:
            raise ValueError(f"set_reply wants a 4xx or 5xx code, not {code}")
        self._replies[recipient.lower()] = Reply(code, enhanced or f"{code // 100}.0.0", text)

    def clear_replies(self) -> None:
        """Accept every recipient again."""
        self._replies.clear()

    def __call__(self, request: RelayRequest) -> defer.Deferred[TransactionResult]:
        """What the queue runner calls for one delivery attempt (see :class:`~txmail.smtp.relay.RelayRequest`)."""
        message = request.message
        data = message if isinstance(message, bytes) else message.read()
        host, port, mail_params = request.host, request.port, request.mail_params
        recipients, tls_hostname = request.recipients, request.tls_hostname
        mail_from, hostname = request.mail_from, request.hostname
        per_recipient: dict[str, Reply] = {}
        accepted: list[str] = []
        rejected: dict[str, Reply] = {}
        for item in recipients:
            rcpt = item if isinstance(item, str) else item[0]
            reply = self._replies.get(rcpt.lower())
            if reply is None:
                per_recipient[rcpt] = Reply(250, "2.1.5", "OK")
                accepted.append(rcpt)
            else:
                per_recipient[rcpt] = rejected[rcpt] = reply
        captured = CapturedMessage(
            host=tls_hostname or host,
            address=host,
            port=port,
            mail_from=mail_from,
            recipients=tuple(accepted),
            rejected=rejected,
            message=data,
            mail_params=dict(mail_params or {}),
            helo=hostname,
        )
        self.attempts.append(captured)
        if accepted:
            self.messages.append(captured)
            result = TransactionResult(
                greeting_reply=Reply(220, "", "fake ESMTP"),
                per_recipient=per_recipient,
                message_reply=Reply(250, "2.0.0", "OK: captured"),
                error=None if not rejected else "some recipients refused",
                temporary=False,
            )
        else:
            result = TransactionResult(
                greeting_reply=Reply(220, "", "fake ESMTP"),
                per_recipient=per_recipient,
                message_reply=None,
                error="all recipients refused",
                temporary=all(r.is_temporary for r in rejected.values()),
            )
        self._waiters.check()
        return defer.succeed(result)

    def wait_for(self, count: int = 1, timeout: float = 5.0) -> defer.Deferred[list[CapturedMessage]]:
        """
        A Deferred firing with :attr:`messages` once it holds at least
        *count* entries; it fails with :class:`WaitTimeout` after *timeout*
        seconds on the clock.
        """
        return self._waiters.add(
            _reactor(self.clock),
            lambda: len(self.messages) >= count,
            lambda: list(self.messages),
            timeout,
            lambda: f"{len(self.messages)} of {count} outbound messages captured after {timeout}s",
        )


# -- the server (Deferred API) ------------------------------------------------


class TestServer:
    """
    A complete txmail server on loopback ephemeral ports, for tests.

    Args:
        domains: the local domains; the first is the primary one (login
            names without ``@`` are looked up there).
        hostname: the server's name (greetings, ``Received:``); default
            ``mx.<first domain>``.
        reactor: the reactor to run on; default the global one.
        resolver: the outbound resolver; default a new :class:`FakeResolver`.
        capture: the outbound delivery fake; default a new
            :class:`OutboundCapture`.
        data_dir: where the outbound queue lives; default a temporary
            directory removed by :meth:`stop`.
        settings: more :class:`txmail.config.Settings` attributes
            (``{"max_message_size": 1000}``); they override the defaults
            described in the module docstring.
        web: also start the JMAP endpoint (:mod:`txmail.web`, ``[web]
            listen``) on a loopback port: :attr:`web_address`.
        managesieve: also start ManageSieve (RFC 5804, ``[managesieve]
            listen``) on a loopback port: :attr:`managesieve_address`.

    Attributes:
        directory: the :class:`~txmail.directory.MemoryDirectory`.
        stores: the :class:`~txmail.store.memory.MemoryProvider`.
        resolver, capture: the fakes in use.
        service: the running :class:`~txmail.service.MailServer` (``None``
            when stopped).
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        domains: Iterable[str] = (DEFAULT_DOMAIN,),
        *,
        hostname: str | None = None,
        reactor: Any = None,
        resolver: Any = None,
        capture: OutboundCapture | None = None,
        data_dir: str | None = None,
        settings: Mapping[str, Any] | None = None,
        web: bool = False,
        managesieve: bool = False,
    ) -> None:
        self.domains = tuple(domains)
        if not self.domains:
            raise ValueError("TestServer needs at least one domain")
        self.hostname = hostname or f"mx.{self.domains[0]}"
        self.reactor = _reactor(reactor)
        self.directory = MemoryDirectory(local_domains=self.domains)
        self.stores = MemoryProvider()
        self.resolver = resolver if resolver is not None else FakeResolver()
        self.capture = capture if capture is not None else OutboundCapture(self.reactor)
        self.service: MailServer | None = None
        self._data_dir = data_dir
        self._own_data_dir: str | None = None
        self._overrides = dict(settings or {})
        self.web = web
        self.managesieve = managesieve
        self._addresses: dict[str, tuple[str, int]] = {}
        self._connections: dict[Any, list[defer.Deferred[None]]] = {}
        self._waiters = _Waiters()

    # -- life cycle --

    def start(self) -> defer.Deferred[TestServer]:
        """Start every listener; fires with this server once all listen."""
        if self.service is not None:
            return defer.fail(RuntimeError("TestServer is already started"))
        data_dir = self._data_dir
        if data_dir is None:
            data_dir = self._own_data_dir = tempfile.mkdtemp(prefix="txmail-testing-")
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "hostname": self.hostname,
            "domains": list(self.domains),
            "plaintext_auth": "loopback",
            "smtp": [_LOOPBACK],
            "submission": [_LOOPBACK],
            "pop3": [_LOOPBACK],
            "imap": [_LOOPBACK],
            "web": [_LOOPBACK] if self.web else [],
            "managesieve": [_LOOPBACK] if self.managesieve else [],
            "threads": 2,
            "outbound_enabled": True,
        }
        values.update(self._overrides)
        try:
            settings = load_config(None, values)
            service = build_service(
                settings,
                reactor=self.reactor,
                directory=self.directory,
                stores=self.stores,
                resolver=self.resolver,
                deliver=self.capture,
            )
            for listener in service.listeners:
                self._track(listener.factory)
            self.service = service
            service.startService()
        except Exception:
            failure = Failure()
            return self.stop().addCallback(lambda _: failure)

        def listening(_: Any) -> TestServer:
            for role in _ROLES:
                if service.listeners_for(role):
                    self._addresses[role] = service.address(role)
            return self

        def failed(f: Failure) -> Any:
            return self.stop().addCallback(lambda _: f)

        return service.when_listening().addCallbacks(listening, failed)

    def stop(self) -> defer.Deferred[None]:
        """
        Stop the server: listeners, queue runner, thread pool, and every
        connection still open (aborted); pending waits fail.  Fires once all
        is closed.  Stopping a stopped server does nothing.
        """
        service, self.service = self.service, None
        self._addresses = {}
        self._waiters.fail_all(RuntimeError("the TestServer was stopped"))
        waits: list[defer.Deferred[Any]] = []
        if service is not None and service.running:
            waits.append(defer.maybeDeferred(service.stopService))
        for proto in list(self._connections):
            lost: defer.Deferred[None] = defer.Deferred()
            self._connections[proto].append(lost)
            waits.append(lost)
            transport = getattr(proto, "transport", None) or getattr(
                getattr(proto, "_channel", None), "transport", None
            )
            if transport is not None:
                transport.abortConnection()
        d = defer.gatherResults(waits, consumeErrors=True)

        def cleanup(result: Any) -> Any:
            own, self._own_data_dir = self._own_data_dir, None
            if own is not None:
                shutil.rmtree(own, ignore_errors=True)
            return None if not isinstance(result, Failure) else result

        return d.addBoth(cleanup)

    def _track(self, factory: Any) -> None:
        """Remember the protocols *factory* builds until their connection is lost."""
        build = factory.buildProtocol
        connections = self._connections

        def buildProtocol(addr: Any) -> Any:
            proto = build(addr)
            if proto is None:
                return None
            connections[proto] = []
            lost = proto.connectionLost

            def connectionLost(reason: Any) -> Any:
                try:
                    return lost(reason)
                finally:
                    for d in connections.pop(proto, []):
                        d.callback(None)

            proto.connectionLost = connectionLost
            return proto

        factory.buildProtocol = buildProtocol

    # -- where --

    def address(self, role: ListenerRole) -> tuple[str, int]:
        """``(host, port)`` of the ``"mta"``, ``"submission"``, ``"pop3"``, ``"imap"`` or ``"web"`` listener."""
        try:
            return self._addresses[role]
        except KeyError:
            raise RuntimeError(f"no {role} listener: the TestServer is not running") from None

    @property
    def smtp_address(self) -> tuple[str, int]:
        """``(host, port)`` of SMTP for incoming mail (the MTA port; no AUTH needed for local users)."""
        return self.address("mta")

    @property
    def submission_address(self) -> tuple[str, int]:
        """``(host, port)`` of message submission (AUTH required, RFC 6409)."""
        return self.address("submission")

    @property
    def pop3_address(self) -> tuple[str, int]:
        """``(host, port)`` of POP3."""
        return self.address("pop3")

    @property
    def imap_address(self) -> tuple[str, int]:
        """``(host, port)`` of IMAP."""
        return self.address("imap")

    @property
    def web_address(self) -> tuple[str, int]:
        """``(host, port)`` of the JMAP endpoint (HTTP; started with ``web=True``): ``http://host:port/jmap/session``."""
        return self.address("web")

    @property
    def managesieve_address(self) -> tuple[str, int]:
        """``(host, port)`` of ManageSieve (started with ``managesieve=True``)."""
        return self.address("managesieve")

    # -- users --

    def add_user(self, address: str, password: str) -> str:
        """
        Create a user who can receive mail and log in (SMTP AUTH, POP3,
        IMAP) with *password*; return the canonical address.  A name
        without ``@`` is in the first domain.
        """
        return self.directory.add_user(address, password)

    def add_alias(self, alias: str, *targets: str) -> str:
        """
        Deliver mail for *alias* to *targets* (users, other aliases, remote
        addresses); ``@domain`` is a catch-all.  Return the canonical alias.
        """
        return self.directory.add_alias(alias, targets)

    # -- mail --

    async def _mailbox(self, address: str, mailbox: str) -> IMailbox:
        user = await self.directory.canonical_user(address)
        if user is None:
            raise NoSuchUser(f"{address} is not a user of this TestServer (add_user it first)")
        store = await self.stores.store_for(user)
        return await store.get_mailbox(mailbox)

    async def _read_all(self, box: IMailbox) -> list[bytes]:
        infos = await box.list_messages()
        return [await box.read_message(info.uid) for info in infos]

    def messages_for(self, address: str, mailbox: str = INBOX) -> defer.Deferred[list[bytes]]:
        """
        The messages in a user's *mailbox*, oldest first, as stored (with
        the trace headers the server added).  Fails with
        :class:`~txmail.errors.NoSuchUser` for an unknown user.
        """

        async def run() -> list[bytes]:
            return await self._read_all(await self._mailbox(address, mailbox))

        return defer.Deferred.fromCoroutine(run())

    def wait_for_messages(
        self, address: str, count: int = 1, timeout: float = 5.0, mailbox: str = INBOX
    ) -> defer.Deferred[list[bytes]]:
        """
        Fires with the messages of the user's *mailbox* (as
        :meth:`messages_for`) once it holds at least *count*; fails with
        :class:`WaitTimeout` after *timeout* seconds on the reactor clock.
        """

        async def run() -> list[bytes]:
            box = await self._mailbox(address, mailbox)
            have = [(await box.status()).messages]
            changed: defer.Deferred[Any] = self._waiters.add(
                self.reactor,
                lambda: have[0] >= count,
                lambda: None,
                timeout,
                lambda: f"{address} has {have[0]} of {count} messages in {mailbox} after {timeout}s",
            )

            def listener(change: MailboxChange) -> None:
                def counted(status: MailboxStatus) -> None:
                    have[0] = status.messages
                    self._waiters.check()

                box.status().addCallback(counted)

            remove = box.add_listener(listener)
            try:
                await changed
            finally:
                remove()
            return await self._read_all(box)

        return defer.Deferred.fromCoroutine(run())

    def wait_for_outbound(
        self, count: int = 1, timeout: float = 5.0
    ) -> defer.Deferred[list[CapturedMessage]]:
        """See :meth:`OutboundCapture.wait_for`."""
        return self.capture.wait_for(count, timeout)


# -- the blocking API ---------------------------------------------------------

_reactor_lock = threading.Lock()
_reactor_thread: threading.Thread | None = None
# Extra seconds a blocking call waits for the reactor thread beyond the
# reactor-side timeout of what it asked for.
_MARGIN = 10.0


def _stop_reactor_thread() -> None:
    from twisted.internet import reactor

    thread = _reactor_thread
    if thread is not None and thread.is_alive():
        with contextlib.suppress(Exception):
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]  # the global reactor is a full IReactorThreads
        thread.join(5)


def _background_reactor() -> Any:
    """
    The global reactor, running in this module's background thread (started
    on the first call).

    Raises:
        ReactorThreadError: called from the reactor's own thread, under
            trial, or after the reactor ran and stopped.
    """
    global _reactor_thread
    from twisted.internet import reactor

    with _reactor_lock:
        if _reactor_thread is not None and _reactor_thread.is_alive():
            if threading.current_thread() is _reactor_thread:
                raise ReactorThreadError("the blocking API cannot be called from the reactor thread")
            return reactor
        if reactor.running:
            if threadable.isInIOThread():
                raise ReactorThreadError(
                    "the blocking test server API cannot be used from the thread that runs the "
                    "reactor (a trial test, or code called by the reactor): it would deadlock; "
                    "use txmail.testing.TestServer, whose methods return Deferreds"
                )
            return reactor  # someone else's reactor thread: use it
        if "twisted.scripts.trial" in sys.modules:
            raise ReactorThreadError(
                "the blocking test server API cannot be used under trial, which runs the reactor "
                "itself (one reactor per process); use txmail.testing.TestServer"
            )
        if getattr(reactor, "_startedBefore", False):
            raise ReactorThreadError("the reactor has run and stopped in this process; it cannot restart")
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(
            target=reactor.run,
            kwargs={"installSignalHandlers": False},
            name="txmail-testing-reactor",
            daemon=True,
        )
        thread.start()
        if not started.wait(30):
            raise ReactorThreadError("the reactor thread did not start")
        _reactor_thread = thread
        atexit.register(_stop_reactor_thread)
    return reactor


def _call(reactor: Any, timeout: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` in the reactor thread; wait for its (Deferred) result."""
    results: queue.Queue[Any] = queue.Queue(maxsize=1)

    def run() -> None:
        defer.maybeDeferred(fn, *args, **kwargs).addBoth(results.put)

    reactor.callFromThread(run)
    try:
        result = results.get(timeout=timeout)
    except queue.Empty:
        raise WaitTimeout(f"no answer from the reactor thread within {timeout}s") from None
    if isinstance(result, Failure):
        result.raiseException()
    return result


class BlockingTestServer:
    """
    A :class:`TestServer` driven from ordinary (non-reactor) threads:
    every method blocks until done and returns plain values.  Usable as a
    context manager (starts on enter, stops on exit).  See the module
    docstring for the one-reactor-per-process constraint.

    Args:
        domains: as for :class:`TestServer`.
        **kwargs: as for :class:`TestServer` (but not ``reactor``).
        call_timeout: seconds to wait for start, stop and quick calls.
    """

    __test__ = False

    def __init__(
        self, domains: Iterable[str] = (DEFAULT_DOMAIN,), *, call_timeout: float = 30.0, **kwargs: Any
    ) -> None:
        if "reactor" in kwargs:
            raise TypeError("BlockingTestServer always uses the global reactor")
        self._domains = tuple(domains)
        self._kwargs = kwargs
        self.call_timeout = call_timeout
        self.server: TestServer | None = None
        self._reactor: Any = None

    def _call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        if self._reactor is None or self.server is None:
            raise RuntimeError("the BlockingTestServer is not running")
        return _call(self._reactor, timeout or self.call_timeout, fn, *args, **kwargs)

    def start(self) -> BlockingTestServer:
        """Start the reactor thread if needed, then the server."""
        if self.server is not None:
            raise RuntimeError("the BlockingTestServer is already started")
        reactor = _background_reactor()
        self._reactor = reactor
        self.server = _call(reactor, self.call_timeout, self._make_and_start)
        return self

    def _make_and_start(self) -> defer.Deferred[TestServer]:
        return TestServer(self._domains, **self._kwargs).start()

    def stop(self) -> None:
        """Stop the server (the reactor thread keeps running for the next one)."""
        server, self.server = self.server, None
        if server is not None:
            _call(self._reactor, self.call_timeout, server.stop)

    def __enter__(self) -> BlockingTestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _running(self) -> TestServer:
        if self.server is None:
            raise RuntimeError("the BlockingTestServer is not running")
        return self.server

    @property
    def smtp_address(self) -> tuple[str, int]:
        """See :attr:`TestServer.smtp_address`."""
        return self._running().smtp_address

    @property
    def submission_address(self) -> tuple[str, int]:
        """See :attr:`TestServer.submission_address`."""
        return self._running().submission_address

    @property
    def pop3_address(self) -> tuple[str, int]:
        """See :attr:`TestServer.pop3_address`."""
        return self._running().pop3_address

    @property
    def imap_address(self) -> tuple[str, int]:
        """See :attr:`TestServer.imap_address`."""
        return self._running().imap_address

    @property
    def web_address(self) -> tuple[str, int]:
        """See :attr:`TestServer.web_address`."""
        return self._running().web_address

    @property
    def capture(self) -> OutboundCapture:
        """The :class:`OutboundCapture` (read its lists; configure it with :meth:`set_outbound_reply`)."""
        return self._running().capture

    def add_user(self, address: str, password: str) -> str:
        """See :meth:`TestServer.add_user`."""
        user: str = self._call(self._running().add_user, address, password)
        return user

    def add_alias(self, alias: str, *targets: str) -> str:
        """See :meth:`TestServer.add_alias`."""
        target: str = self._call(self._running().add_alias, alias, *targets)
        return target

    def set_outbound_reply(self, recipient: str, code: int, text: str = "refused") -> None:
        """See :meth:`OutboundCapture.set_reply`."""
        self._call(self._running().capture.set_reply, recipient, code, text)

    def messages_for(self, address: str, mailbox: str = INBOX) -> list[bytes]:
        """See :meth:`TestServer.messages_for`."""
        found: list[bytes] = self._call(self._running().messages_for, address, mailbox)
        return found

    def wait_for_messages(
        self, address: str, count: int = 1, timeout: float = 5.0, mailbox: str = INBOX
    ) -> list[bytes]:
        """See :meth:`TestServer.wait_for_messages`; raises :class:`WaitTimeout`."""
        found: list[bytes] = self._call(
            self._running().wait_for_messages, address, count, timeout, mailbox, timeout=timeout + _MARGIN
        )
        return found

    def wait_for_outbound(self, count: int = 1, timeout: float = 5.0) -> list[CapturedMessage]:
        """See :meth:`OutboundCapture.wait_for`; raises :class:`WaitTimeout`."""
        captured: list[CapturedMessage] = self._call(
            self._running().wait_for_outbound, count, timeout, timeout=timeout + _MARGIN
        )
        return captured


@contextlib.contextmanager
def running_server(domains: Iterable[str] = (DEFAULT_DOMAIN,), **kwargs: Any) -> Iterator[BlockingTestServer]:
    """
    ``with running_server() as server:`` a started :class:`BlockingTestServer`,
    stopped when the block ends.  Arguments as for :class:`TestServer`.
    """
    server = BlockingTestServer(domains, **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()
