"""
Settings to running services: one :class:`MailServer` (a ``MultiService``)
holding the shared parts (directory, stores, queue, router, authenticator,
thread pool) and one listening service per configured endpoint.

``twistd mailserver`` (see ``twisted/plugins/txmail_plugin.py``) and embedders
both call :func:`build_service`.

With ``[outbound] enabled`` (the default) a
:class:`txmail.delivery.runner.QueueRunner` child service works the queue:
MX lookups through :class:`txmail.delivery.mx.MXResolver` on the thread pool
(the ``resolvers`` setting, else the system's), SMTP through a
:class:`txmail.smtp.relay.ConnectionCache` (connections kept open for the
next message to the same host, QUIT when the runner stops), notices back
through the router.

Every SMTP listener asks the policies of :func:`txmail.policy.builtin.build_policies`
(limits, blocklists, greylisting, SPF/DKIM/ARC/DMARC, DKIM signing,
Authentication-Results; configured by ``[policy]``, ``[dkim]``...) with the
embedder's own (``policies=``) among them, and one caching DNS resolver
(:class:`txmail.resolver.Resolver`, the ``resolvers`` setting) serves them.
"""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, get_args

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txmail import _twisted
from txmail.auth.authenticator import Authenticator
from txmail.config import Settings, parse_host_port
from txmail.delivery.backoff import parse_schedule
from txmail.delivery.hooks import DeliveryHook
from txmail.delivery.mx import MXResolver
from txmail.delivery.queue import SpoolQueue
from txmail.delivery.router import DeliveryRouter
from txmail.delivery.runner import QueueRunner, Smarthost
from txmail.delivery.sieve import make_sieve
from txmail.delivery.spool import clean_spool
from txmail.directory import FileDirectory
from txmail.errors import ConfigError
from txmail.imap.server import IMAPFactory
from txmail.imap.session import IMAPLimits
from txmail.imap.structures import record_of_metadata
from txmail.interfaces import IDeliveryRouter, IDirectory, IMailStoreProvider, IQueue
from txmail.milter.client import build_milter_policies
from txmail.policy.authentication import MessageSigner
from txmail.policy.builtin import build_forwarding, build_policies, signing_keys
from txmail.pop3.server import POP3Factory, maildrop_locks_for
from txmail.proxywrap import ProxySettings, listen_proxied
from txmail.quota import Quotas
from txmail.resolver import Resolver
from txmail.smtp.server import SMTPFactory, SMTPLimits
from txmail.smtp.session import SessionRole
from txmail.tls import ReloadableServerTLS, with_certificate

if TYPE_CHECKING:
    from txmail.managesieve.server import ManageSieveFactory
    from txmail.pg.db import DatabaseService
    from txmail.workers import WorkerPool

__all__ = [
    "DEFAULT_BACKLOG",
    "LISTENER_ROLES",
    "ListenerRole",
    "ListenerService",
    "MailServer",
    "PolicyService",
    "ThreadPoolService",
    "build_service",
    "make_directory",
    "make_queue",
    "make_store_provider",
    "postgresql_service",
    "tune_gc",
    "with_default_backlog",
]


#: What a listener serves (``MailServer.address(role)``, log lines, metrics
#: labels): the SMTP session roles, then the other protocols' listeners.
ListenerRole = Literal[SessionRole, "pop3", "imap", "managesieve", "web", "autoconfig", "metrics"]
#: The values of :data:`ListenerRole`.
LISTENER_ROLES: tuple[str, ...] = tuple(
    value for arg in get_args(ListenerRole) for value in (get_args(arg) or (arg,))
)


#: The function an IMAP FETCH has the Maildir parse workers run, by the
#: name they find it by (:func:`txmail.store._parse_pool.function_name`).
_IMAP_STRUCTURES = f"{record_of_metadata.__module__}:{record_of_metadata.__qualname__}"


class ThreadPoolService(_twisted.Service):
    """Runs a bounded thread pool for blocking work while the service runs."""

    def __init__(self, reactor: Any, size: int) -> None:
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=1, maxthreads=size, name="txmail")

    def run_blocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run ``fn(*args)`` in the pool; a Deferred of its result."""
        if not self.pool.started:
            # Not running (a CLI, a test before start): do the work inline.
            return defer.maybeDeferred(fn, *args)
        return deferToThreadPool(self.reactor, self.pool, fn, *args)

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        if self.pool.started:  # stopping twice is harmless
            self.pool.stop()


class StopService(_twisted.Service):
    """Calls *stop* when the server stops (a store provider's helpers: the Maildir parse workers)."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self.stop = stop

    def stopService(self) -> None:
        super().stopService()
        self.stop()


class PolicyService(_twisted.Service):
    """Stops the policies that keep state (``stop()``: greylisting saves its table)."""

    log = Logger()

    def __init__(self, policies: Sequence[Any]) -> None:
        self.policies = tuple(policies)

    def stopService(self) -> None:
        super().stopService()
        for policy in self.policies:
            stop = getattr(policy, "stop", None)
            if callable(stop):
                try:
                    stop()
                except Exception:
                    self.log.failure("stopping policy {policy} failed", policy=type(policy).__name__)


#: The accept queue of a TCP or TLS listener (the ``listen(2)`` backlog)
#: unless its endpoint string gives ``backlog=``.  Twisted's default, 50,
#: overflows when hundreds of clients connect while the reactor is busy
#: (``benchmarks/load.py``: 2,000 clients); the kernel then drops their SYNs
#: and they retry only after 1, 3, 7, 15... seconds.  The kernel caps it at
#: ``net.core.somaxconn`` (4096 on Linux since 5.4).
DEFAULT_BACKLOG = 1024


def with_default_backlog(description: str) -> str:
    """*description* with ``backlog=DEFAULT_BACKLOG`` added when it is ``tcp:``/``tcp6:``/``ssl:`` without one."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6", "ssl") or any(p.startswith("backlog=") for p in parts[1:]):
        return description
    return f"{description}:backlog={DEFAULT_BACKLOG}"


class ListenerService(_twisted.Service):
    """
    Listens on one endpoint while running, and tells where.

    Binding errors are raised from ``startService``/``privilegedStartService``
    so that twistd refuses to start rather than running half-deaf.

    With *proxy* (``[server] proxy_protocol``), each connection starts with
    a PROXY protocol header from a trusted load balancer
    (:func:`txmail.proxywrap.listen_proxied`).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        description: str,
        factory: IProtocolFactory,
        role: ListenerRole,
        proxy: ProxySettings | None = None,
        accept: bool = True,
        tls: ReloadableServerTLS | None = None,
    ) -> None:
        if role not in LISTENER_ROLES:
            raise ValueError(f"unknown listener role {role!r} (one of {', '.join(LISTENER_ROLES)})")
        self.reactor = reactor
        #: The server's reloadable TLS context: an ``ssl:`` endpoint
        #: handshakes with it (a reload changes its certificate), or ``None``.
        self.tls = tls
        self.description = description
        self.factory = factory
        self.role = role
        #: False: the socket is bound and listening, but connections are
        #: accepted by the SMTP worker processes it is handed to (:mod:`txmail.workers`).
        self.accept = accept
        #: Connections start with a PROXY header (``[server] proxy_protocol``), or ``None``.
        self.proxy = proxy
        self.port: IListeningPort | None = None
        self._listening: defer.Deferred[IListeningPort] | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listening is not None:
            return
        description = with_default_backlog(self.description)

        def endpoint(reactor: Any) -> Any:
            made = serverFromString(reactor, description)
            if self.tls is not None:
                self.tls.install(made)
            return made

        if self.proxy is None:
            d = endpoint(self.reactor).listen(self.factory)
        else:
            d = listen_proxied(self.reactor, endpoint, self.factory, self.proxy)
        failures: list[Any] = []

        def listening(port: IListeningPort) -> IListeningPort:
            self.port = port
            if not self.accept:
                port.stopReading()  # type: ignore[attr-defined]  # a TCP port (IListeningPort does not name stopReading)
            host = port.getHost()
            where = getattr(host, "name", None) if not hasattr(host, "port") else f"{host.host}:{host.port}"  # type: ignore[attr-defined]  # an IPv4Address/IPv6Address: checked by hasattr
            self.log.info(
                "{role} listening on {where}{proxy}{workers}",
                role=self.role,
                where=where,
                proxy=" (PROXY protocol)" if self.proxy is not None else "",
                workers="" if self.accept else " (connections served by the SMTP workers)",
            )
            return port

        d.addCallback(listening)

        def failed(f: Failure) -> Failure:
            failures.append(f)
            return f

        d.addErrback(failed)
        self._listening = d
        if failures:
            self._listening = None
            failures[0].raiseException()

    def when_listening(self) -> defer.Deferred[IListeningPort]:
        """A Deferred that fires with the listening port."""
        if self._listening is None:
            return defer.fail(RuntimeError("not started"))
        d: defer.Deferred[IListeningPort] = defer.Deferred()

        def fire(port: IListeningPort) -> IListeningPort:
            d.callback(port)
            return port

        self._listening.addCallback(fire)
        return d

    def stopService(self) -> Any:
        super().stopService()
        port, self.port, self._listening = self.port, None, None
        if port is not None:
            return port.stopListening()
        return None


class MailServer(_twisted.MultiService):
    """
    A complete txmail server: the shared parts and its listeners.

    Attributes:
        settings: the :class:`txmail.config.Settings` it runs with.
        directory, stores, queue, router, authenticator: the shared parts.
        dns: the policies' DNS resolver.
        policies: the policies every SMTP listener asks, in order.
        runner: the :class:`~txmail.delivery.runner.QueueRunner`, or
            ``None`` when outbound delivery is disabled.
        listeners: the :class:`ListenerService` of each endpoint.
    """

    directory: IDirectory
    stores: IMailStoreProvider
    queue: IQueue
    router: DeliveryRouter
    authenticator: Authenticator
    run_blocking: Callable[..., defer.Deferred[Any]]
    runner: QueueRunner | None = None
    #: The :class:`txmail.workers.WorkerPool` (``[server] workers`` above 1), or ``None``.
    workers: WorkerPool | None = None
    dns: Any = None
    policies: Sequence[Any] = ()
    #: The :class:`txmail.metrics.Metrics` (``[metrics]``), or the no-op ones
    #: (:func:`txmail.monitoring.install_monitoring`).
    metrics: Any = None
    #: The :class:`txmail.monitoring.HealthCheck` of ``/health``.
    health: Any = None
    #: The log observer twistd logs with instead of its own (``[log] format
    #: = "json"``: a :class:`txmail.logs.JSONLogObserver`), or ``None``.
    log_observer: Any = None

    #: Reads the configuration again for :meth:`reload` (``twistd mailserver``
    #: sets it: the ``--config`` file with the command line's overrides), or ``None``.
    config_loader: Callable[[], Settings] | None = None
    #: The reloadable TLS context of every listener (``[tls]``), or ``None``.
    tls: ReloadableServerTLS | None = None

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.listeners: list[ListenerService] = []
        self._stopping: defer.Deferred[None] | None = None

    def reload(self, settings: Settings | None = None) -> defer.Deferred[Any]:
        """
        Apply *settings* (default: :attr:`config_loader`'s, else the current
        ones) without dropping a connection, and read the TLS certificate,
        the users and the DKIM keys again (``SIGHUP`` under twistd).  See
        :mod:`txmail.lifecycle`.

        Returns:
            A Deferred of a :class:`txmail.lifecycle.ReloadReport`: what
            changed, what needs a restart, errors (then nothing changed).
        """
        from txmail.lifecycle import reload_server

        return reload_server(self, settings)

    def startService(self) -> None:
        self._stopping = None
        super().startService()

    def stopService(self) -> defer.Deferred[None]:
        """
        Stop gracefully: no new connections, the open ones finish what they
        are doing (up to ``[server] shutdown_timeout``), then everything
        stops (:func:`txmail.lifecycle.stop_gracefully`).
        """
        if self._stopping is None:
            from txmail.lifecycle import stop_gracefully

            self._stopping = stop_gracefully(self)
        return self._stopping

    def setServiceParent(self, parent: Any) -> Any:
        """
        Join *parent*; when it is twistd's application and this server has
        a :attr:`log_observer`, twistd logs with that observer (it asks
        the application's ``ILogObserver`` component once the service is
        made, before it starts logging).
        """
        if self.log_observer is not None and hasattr(parent, "setComponent"):
            from twisted.logger import ILogObserver

            parent.setComponent(ILogObserver, self.log_observer)
        return super().setServiceParent(parent)

    def listeners_for(self, role: ListenerRole) -> list[ListenerService]:
        return [lst for lst in self.listeners if lst.role == role]

    def when_listening(self) -> defer.Deferred[list[IListeningPort]]:
        """Fires once every listener is listening."""
        return defer.gatherResults([lst.when_listening() for lst in self.listeners])

    def address(self, role: ListenerRole, index: int = 0) -> tuple[str, int]:
        """The (host, port) a running listener of *role* is bound to."""
        port = self.listeners_for(role)[index].port
        if port is None:
            raise RuntimeError(f"{role} listener {index} is not listening")
        host: Any = port.getHost()
        if not hasattr(host, "port"):
            raise RuntimeError(f"{role} listener {index} is not on TCP: {host}")
        return host.host, host.port


def _build_runner(
    settings: Settings,
    reactor: Any,
    queue: IQueue,
    router: DeliveryRouter,
    directory: IDirectory,
    run_blocking: Callable[..., defer.Deferred[Any]],
    resolver: Any = None,
    deliver: Callable[..., defer.Deferred[Any]] | None = None,
) -> QueueRunner:
    """The queue runner for *settings* (see :mod:`txmail.delivery.runner`)."""
    from txmail.smtp.relay import ConnectionCache

    if resolver is None:
        nameservers = [parse_host_port(r, 53) for r in settings.resolvers] or None
        resolver = MXResolver(nameservers, run_blocking=run_blocking, dnssec=settings.outbound_dane)
    connections = None
    if deliver is None:
        # One connection per destination carries a burst of messages (RSET between them).
        connections = ConnectionCache(reactor)
        deliver = connections.deliver
    smarthost = None
    if settings.smarthost:
        host, port = parse_host_port(settings.smarthost, 25)
        smarthost = Smarthost(host, port, settings.smarthost_user, settings.smarthost_password)
    trust_root = None
    if settings.outbound_ca_file:
        from twisted.internet import ssl

        with open(settings.outbound_ca_file, "rb") as f:
            trust_root = ssl.Certificate.loadPEM(f.read())
    schedule = parse_schedule(
        settings.retry_schedule,
        give_up_after=settings.give_up_after,
        delay_notice_after=settings.delay_notice_after,
    )
    return QueueRunner(
        queue,
        router,
        resolver,
        deliver,
        clock=reactor,
        hostname=settings.hostname,
        is_local=lambda domain: bool(directory.is_local_domain(domain)),
        schedule=schedule,
        relay_port=settings.relay_port,
        smarthost=smarthost,
        tls_policy=settings.outbound_tls_policy,
        domain_tls=dict(settings.outbound_tls_policies),
        trust_root=trust_root,
        poll_interval=settings.queue_poll_interval,
        timeout=settings.outbound_timeout,
        postmaster=f"postmaster@{settings.primary_domain}",
        connections=connections,
        # A shared queue is claimed a batch at a time, so that the nodes share it out.
        claim_batch=None if settings.queue_backend == "file" else 50,
        lease=settings.queue_lease,
        security=_transport_security(settings, reactor, resolver, router, directory, queue),
    )


def _transport_security(
    settings: Settings,
    reactor: Any,
    resolver: Any,
    router: DeliveryRouter,
    directory: IDirectory,
    queue: IQueue,
) -> Any:
    """DANE, MTA-STS and TLS-RPT for the runner (:mod:`txmail.delivery.tlspolicy`), if *resolver* can look up records."""
    from txmail.delivery.tlsrpt import build_transport_security

    return build_transport_security(settings, reactor, resolver, router, directory, queue)


def tune_gc(threshold: Sequence[int]) -> None:
    """
    Set the process's garbage-collection thresholds (``[server]
    gc_threshold``; an empty sequence leaves Python's).

    Python collects its youngest generation after every 700 new container
    objects by default, and promotes what is alive then towards the oldest
    generation, whose collections walk every object of the process.  A mail
    server holds every open mailbox's state (a few objects a message) and
    makes and drops many short-lived tuples per message it serves: with the
    default a large FETCH, SEARCH or SORT spent about a third of its time in
    the collector (``benchmarks/README.md``, "Garbage collection").  Objects
    are still freed by reference counting at once; only reference cycles
    wait longer for the collector.
    """
    if threshold:
        gc.set_threshold(*threshold)


def make_store_provider(
    settings: Settings,
    *,
    run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    server: service.MultiService | None = None,
    reactor: Any = None,
) -> IMailStoreProvider:
    """
    The mail store provider ``[store] backend`` names in *settings*: the
    server's (:func:`build_service`) and the admin command's
    (:mod:`txmail.cli`).

    * ``"maildir"``: a :class:`txmail.store.maildir.MaildirProvider` under
      ``<data_dir>/mail``, its file work done by *run_blocking* (default:
      inline, in the calling thread); with *server*, ``[store]
      parse_workers`` processes parse new messages, stopped with it;
    * ``"memory"``: a :class:`txmail.store.memory.MemoryProvider`; the mail
      is lost when the process ends;
    * ``"postgresql"``: a :class:`txmail.pg.store.PostgresProvider` on the
      ``[postgresql]`` database: with *server*, the shared one of
      :func:`postgresql_service`, which also starts and stops the
      provider's change notifications; without (the admin command), a
      database of its own whose queries run inline.  The schema is
      checked here.

    The backend modules are imported here, when one is chosen.

    Raises:
        SchemaTooOld: the database needs ``txmail db upgrade``.
    """
    backend = settings.store_backend
    if backend == "memory":
        from txmail.store.memory import MemoryProvider

        return MemoryProvider()
    if backend == "maildir":
        from txmail.store.maildir import MaildirProvider

        # Parse worker processes for the server's (their waits in its thread pool), stopped with it.
        workers = settings.store_parse_workers if server is not None else 0
        maildir = MaildirProvider(
            settings.path("mail"),
            run_blocking=run_blocking,
            hostname=settings.hostname,
            parse_workers=workers,
            # What an IMAP FETCH has the workers render (imported as they start).
            parse_preload=(_IMAP_STRUCTURES,) if settings.imap else (),
        )
        if server is not None:
            StopService(maildir.stop).setServiceParent(server)
        return maildir
    if backend == "postgresql":
        from txmail.pg.db import database_from_settings
        from txmail.pg.store import PostgresProvider

        if server is None:
            provider = PostgresProvider(
                database_from_settings(settings, reactor=reactor), lock_lease=settings.store_maildrop_lease
            )
            provider.check_schema()
            return provider
        database_service = postgresql_service(settings, server, reactor=reactor)
        provider = PostgresProvider(database_service.database, lock_lease=settings.store_maildrop_lease)
        provider.check_schema()
        database_service.dependents.append(provider)
        return provider
    raise ConfigError(f"unknown [store] backend {backend!r}")


def postgresql_service(settings: Settings, server: service.MultiService, *, reactor: Any) -> DatabaseService:
    """
    The :class:`txmail.pg.db.DatabaseService` of *server*: one
    ``[postgresql]`` pool per process, made (and added to *server*) the
    first time a PostgreSQL backend asks, shared by the next ones.

    Raises:
        ConfigError: no ``[postgresql] dsn``, or psycopg is not installed.
    """
    from txmail.pg.db import DatabaseService, database_from_settings

    for child in server:
        if isinstance(child, DatabaseService):
            return child
    database_service = DatabaseService(database_from_settings(settings, reactor=reactor))
    database_service.setServiceParent(server)
    return database_service


def make_directory(settings: Settings, server: service.MultiService, *, reactor: Any) -> IDirectory:
    """
    The user directory ``[directory] backend`` names in *settings*:

    * ``"file"``: a :class:`txmail.directory.FileDirectory` on
      ``<data_dir>/users.json``;
    * ``"postgresql"``: a :class:`txmail.pg.directory.PostgresDirectory`
      on the ``[postgresql]`` database, whose pool (and the directory's
      domain refresh) the :class:`txmail.pg.db.DatabaseService` child of
      *server* runs (:func:`postgresql_service`).  The schema is checked here, before anything listens.

    Raises:
        ConfigError: psycopg is not installed.
        SchemaTooOld: the database needs ``txmail db upgrade``.
        DatabaseError: the database cannot be reached.
    """
    if settings.directory_backend == "postgresql":
        from txmail.pg.directory import PostgresDirectory

        database_service = postgresql_service(settings, server, reactor=reactor)
        pg_directory = PostgresDirectory(
            database_service.database, local_domains=settings.domains, primary_domain=settings.primary_domain
        )
        pg_directory.check_schema()
        database_service.dependents.append(pg_directory)
        return pg_directory
    return FileDirectory(
        settings.path("users.json"),
        local_domains=settings.domains,
        primary_domain=settings.primary_domain,
        recheck_interval=1.0,
    )


def make_queue(
    settings: Settings,
    server: service.MultiService,
    *,
    reactor: Any,
    run_blocking: Callable[..., defer.Deferred[Any]],
) -> IQueue:
    """
    The outbound queue ``[queue] backend`` names in *settings*:

    * ``"file"``: a :class:`txmail.delivery.queue.SpoolQueue` in
      ``<data_dir>/queue``;
    * ``"postgresql"``: a :class:`txmail.pg.queue.PostgresQueue` on the
      ``[postgresql]`` database (:func:`postgresql_service`), shared by the
      queue runners of every node.  The schema is checked here.

    Raises:
        ConfigError: psycopg is not installed.
        SchemaTooOld: the database needs ``txmail db upgrade``.
        DatabaseError: the database cannot be reached.
    """
    if settings.queue_backend == "postgresql":
        from txmail.pg.queue import PostgresQueue

        database_service = postgresql_service(settings, server, reactor=reactor)
        pg_queue = PostgresQueue(database_service.database)
        pg_queue.check_schema()
        return pg_queue
    return SpoolQueue(settings.path("queue"), run_blocking=run_blocking)


def make_router(
    settings: Settings,
    directory: IDirectory,
    stores: IMailStoreProvider,
    queue: IQueue,
    *,
    reactor: Any,
    run_blocking: Callable[..., defer.Deferred[Any]],
    keys: Sequence[Any],
    hooks: DeliveryHook | Sequence[DeliveryHook] | None = None,
) -> DeliveryRouter:
    """The delivery router of *settings* (quotas, forwarding with SRS and ARC, signed notices)."""
    policy = settings.policy
    local_domain = directory.is_local_domain
    return DeliveryRouter(
        directory,
        stores,
        queue,
        run_blocking=run_blocking,
        primary_domain=settings.primary_domain,
        hooks=hooks,
        hostname=settings.hostname,
        quotas=Quotas.from_settings(settings.quota_storage, settings.quota_users),
        forwarding=build_forwarding(
            policy,
            keys=keys,
            primary_domain=settings.primary_domain,
            authserv_id=policy.authserv_id or settings.hostname,
            is_local=lambda domain: bool(local_domain(domain)),
            run_blocking=run_blocking,
            clock=reactor,
        ),
        notice_signer=MessageSigner(keys, run_blocking=run_blocking, clock=reactor) if keys else None,
        sieve=make_sieve(settings, directory, run_blocking=run_blocking, reactor=reactor),
    )


def smtp_policies(
    settings: Settings,
    server: service.MultiService,
    *,
    reactor: Any,
    run_blocking: Callable[..., defer.Deferred[Any]],
    dns: Any,
    keys: Sequence[Any],
    extra: Sequence[Any] = (),
    greylist_path: str | None = None,
) -> tuple[list[Any], list[Any]]:
    """
    The policies every SMTP listener of *server* asks
    (:func:`txmail.policy.builtin.build_policies` with the content filters:
    milters in their configured order, then rspamd), and the IMAP copy
    listeners (rspamd's learner, which follows moves into and out of
    Junk).  A :class:`PolicyService` child of *server* stops them.
    *greylist_path* defaults to ``<data_dir>/greylist.json``.
    """
    filters: list[Any] = build_milter_policies(settings.milters, reactor=reactor, run_blocking=run_blocking)
    copy_listeners: list[Any] = []
    if settings.rspamd is not None:
        from txmail.policy.rspamd import build_rspamd  # twisted.web: only when configured

        rspamd_policy, rspamd_learner = build_rspamd(settings.rspamd, reactor=reactor)
        filters.append(rspamd_policy)
        if rspamd_learner is not None:
            copy_listeners.append(rspamd_learner)
    policies = build_policies(
        settings.policy,
        hostname=settings.hostname,
        resolver=dns,
        run_blocking=run_blocking,
        clock=reactor,
        greylist_path=greylist_path or settings.path("greylist.json"),
        extra=extra,
        keys=keys,
        filters=filters,
    )
    PolicyService([*policies, *copy_listeners]).setServiceParent(server)
    return policies, copy_listeners


def smtp_limits(settings: Settings) -> SMTPLimits:
    """The SMTP session limits of *settings*."""
    return SMTPLimits(
        max_message_size=settings.max_message_size,
        max_recipients=settings.max_recipients,
        command_timeout=settings.command_timeout,
        data_timeout=settings.data_timeout,
    )


def imap_limits(settings: Settings) -> IMAPLimits:
    """The IMAP session limits of *settings*."""
    return IMAPLimits(
        max_line=settings.imap_max_line,
        max_literal=settings.imap_max_literal,
        metadata_max_size=settings.imap_metadata_max_size,
        metadata_max_entries=settings.imap_metadata_max_entries,
        metadata_admin=settings.imap_admin,
        metadata_comment=settings.imap_comment,
    )


def smtp_factory(
    settings: Settings,
    role: SessionRole,
    description: str,
    *,
    router: IDeliveryRouter,
    authenticator: Authenticator,
    directory: IDirectory,
    spool_dir: str,
    tls: Any,
    policies: Sequence[Any],
    dns: Any,
    reactor: Any,
    run_blocking: Callable[..., defer.Deferred[Any]],
) -> SMTPFactory:
    """The SMTP factory of one listener of *role* (``mta``, ``submission`` or ``lmtp``) on *description*."""
    # LMTP (RFC 2033) serves an MTA in front of us on a local socket: no AUTH,
    # no relaying (the router refuses remote recipients without AUTH).
    return SMTPFactory(
        role=role,
        hostname=settings.hostname,
        router=router,
        authenticator=authenticator if role != "lmtp" else None,
        directory=directory,
        spool_dir=spool_dir,
        tls_context=tls,
        implicit_tls=description.startswith("ssl:"),
        plaintext_auth=settings.plaintext_auth,
        limits=smtp_limits(settings),
        clock=reactor,
        run_blocking=run_blocking,
        policies=policies,
        resolver=dns if settings.policy.enabled and settings.policy.iprev else None,
        trusted_networks=settings.policy.trusted_networks,
    )


def managesieve_factory(
    settings: Settings,
    description: str,
    *,
    authenticator: Authenticator,
    stores: IMailStoreProvider,
    tls: Any,
    reactor: Any,
    run_blocking: Callable[..., defer.Deferred[Any]],
) -> ManageSieveFactory:
    """The ManageSieve factory (RFC 5804) of the ``[managesieve]`` listener on *description*."""
    from txmail.managesieve.server import ManageSieveFactory

    return ManageSieveFactory(
        authenticator=authenticator,
        stores=stores,
        tls_context=tls,
        implicit_tls=description.startswith("ssl:"),
        plaintext_auth=settings.plaintext_auth,
        idle_timeout=settings.managesieve_idle_timeout,
        max_script_size=settings.managesieve_max_script_size,
        max_scripts=settings.managesieve_max_scripts,
        max_line_length=settings.managesieve_max_line,
        run_blocking=run_blocking,
        clock=reactor,
    )


def build_service(
    settings: Settings,
    *,
    reactor: Any = None,
    directory: IDirectory | None = None,
    stores: IMailStoreProvider | None = None,
    resolver: Any = None,
    deliver: Callable[..., defer.Deferred[Any]] | None = None,
    delivery_hook: DeliveryHook | Sequence[DeliveryHook] | None = None,
    policies: Sequence[Any] = (),
    dns: Any = None,
) -> MailServer:
    """
    Build a :class:`MailServer` from *settings*.

    Args:
        settings: validated settings (:func:`txmail.config.load_config`).
        reactor: the reactor to use; the global one by default.
        directory: a user directory; default the one ``[directory] backend``
            names (:func:`make_directory`: a :class:`FileDirectory` in the
            data directory unless configured otherwise).
        stores: a mailbox store provider; default the one ``[store]
            backend`` names (:func:`make_store_provider`: Maildir under
            ``<data_dir>/mail`` unless configured otherwise).
        resolver: what the queue runner asks for a domain's mail hosts (an
            object with ``resolve(domain) -> Deferred[list[Destination]]``,
            like :class:`txmail.delivery.mx.MXResolver`); default dnspython
            with the settings' resolvers.
        deliver: what the queue runner calls to hand mail to a remote host:
            ``deliver(request) -> Deferred[TransactionResult]`` for a
            :class:`txmail.smtp.relay.RelayRequest` (as
            :func:`txmail.smtp.relay.deliver_once` with the reactor bound);
            default SMTP over a connection cache.
        delivery_hook: a delivery hook, or a list of them run in order, for
            each message received over SMTP before it is delivered (see
            :mod:`txmail.delivery.hooks`).  The queue runner's redeliveries
            and the server's own notices do not pass through them.
        policies: policy hooks (:mod:`txmail.policy.hooks`) asked at every
            SMTP stage, after the server's own checks and before the
            ``Authentication-Results`` field is written
            (:func:`txmail.policy.builtin.build_policies`).
        dns: the resolver of the policy checks (``query(question) ->
            Deferred[Answer]`` and ``lookup(name, rdtype)``, as
            :class:`txmail.resolver.StaticResolver` has them); default a :class:`txmail.resolver.Resolver`
            asking the settings' resolvers, else the system's.

    Raises:
        ConfigError: a DKIM signing key cannot be loaded, or PostgreSQL is
            configured without psycopg installed.
        SchemaTooOld: the PostgreSQL schema needs ``txmail db upgrade``.
        DatabaseError: the PostgreSQL database cannot be reached.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    workers = settings.workers or 1
    if workers > 1:
        # The workers build their SMTP side from the settings alone (the
        # delivery hooks run in this process: its router delivers).
        given = [
            name for name, value in (("directory", directory), ("policies", policies), ("dns", dns)) if value
        ]
        if given:
            raise ConfigError(
                f"[server] workers = {workers} cannot run the {', '.join(given)} given to build_service "
                "in the SMTP worker processes: use workers = 1"
            )
    server = MailServer(settings)
    os.makedirs(settings.data_dir, exist_ok=True)
    spool_dir = settings.path("spool")
    os.makedirs(spool_dir, exist_ok=True)
    clean_spool(spool_dir)

    pool = ThreadPoolService(reactor, settings.threads)
    pool.setServiceParent(server)
    run_blocking = pool.run_blocking
    server.run_blocking = run_blocking

    if directory is None:
        directory = make_directory(settings, server, reactor=reactor)
    if stores is None:
        stores = make_store_provider(settings, run_blocking=run_blocking, server=server, reactor=reactor)
    queue = make_queue(settings, server, reactor=reactor, run_blocking=run_blocking)
    keys = signing_keys(settings.policy)
    router = make_router(
        settings,
        directory,
        stores,
        queue,
        reactor=reactor,
        run_blocking=run_blocking,
        keys=keys,
        hooks=delivery_hook,
    )
    quotas = Quotas.from_settings(settings.quota_storage, settings.quota_users)
    authenticator = Authenticator(directory, clock=reactor, run_blocking=run_blocking)
    # One context for every listener, whose certificate a reload replaces.
    tls = (
        ReloadableServerTLS(settings.tls_cert, settings.tls_key)
        if settings.tls_cert and settings.tls_key
        else None
    )

    server.directory = directory
    server.stores = stores
    server.queue = queue
    server.router = router
    server.authenticator = authenticator
    if settings.outbound_enabled:
        server.runner = _build_runner(
            settings,
            reactor,
            queue,
            router.without_hooks(),
            directory,
            run_blocking,
            resolver=resolver,
            deliver=deliver,
        )
        server.runner.setServiceParent(server)

    if dns is None:
        nameservers = [parse_host_port(r, 53) for r in settings.resolvers] or None
        dns = Resolver(nameservers, reactor=reactor)
    server.dns = dns
    server.policies, copy_listeners = smtp_policies(
        settings, server, reactor=reactor, run_blocking=run_blocking, dns=dns, keys=keys, extra=policies
    )

    proxy = ProxySettings.from_strings(settings.proxy_trusted, settings.proxy_timeout)

    def proxied(description: str) -> ProxySettings | None:
        """The PROXY settings of the listener on *description*, if it is one (``[server] proxy_protocol``)."""
        return proxy if description in settings.proxy_protocol else None

    def listen(description: str, factory: Any, role: ListenerRole, *, accept: bool = True) -> None:
        """A listener of *role* on *description* (its certificate and PROXY settings), started with the server."""
        listener = ListenerService(
            reactor,
            with_certificate(description, settings.tls_cert, settings.tls_key),
            factory,
            role,
            proxy=proxied(description),
            accept=accept,
            tls=tls if "privateKey=" not in description else None,
        )
        listener.setServiceParent(server)
        server.listeners.append(listener)

    handed = workers > 1
    smtp_listeners: tuple[tuple[SessionRole, tuple[str, ...]], ...] = (
        ("mta", settings.smtp),
        ("submission", settings.submission),
        ("lmtp", settings.lmtp),
    )
    for role, endpoints in smtp_listeners:
        for description in endpoints:
            factory = smtp_factory(
                settings,
                role,
                description,
                router=router,
                authenticator=authenticator,
                directory=directory,
                spool_dir=spool_dir,
                tls=tls,
                policies=server.policies,
                dns=dns,
                reactor=reactor,
                run_blocking=run_blocking,
            )
            # SMTP and submission connections go to the workers (LMTP stays here).
            listen(description, factory, role, accept=not (handed and role != "lmtp"))
    # One lock registry for every POP3 listener: exclusive access per user
    # holds across ports (RFC 1939 section 8), and across processes when the
    # provider offers its own locks (IMaildropLocks: the PostgreSQL store).
    pop3_locks = maildrop_locks_for(stores)
    for description in settings.pop3:
        pop3_factory = POP3Factory(
            authenticator=authenticator,
            stores=stores,
            locks=pop3_locks,
            tls_context=tls,
            implicit_tls=description.startswith("ssl:"),
            plaintext_auth=settings.plaintext_auth,
            idle_timeout=settings.pop3_idle_timeout,
            clock=reactor,
        )
        listen(description, pop3_factory, "pop3")
    limits = imap_limits(settings)
    for description in settings.imap:
        imap_factory = IMAPFactory(
            authenticator=authenticator,
            stores=stores,
            tls_context=tls,
            implicit_tls=description.startswith("ssl:"),
            plaintext_auth=settings.plaintext_auth,
            idle_timeout=settings.imap_idle_timeout,
            limits=limits,
            clock=reactor,
            copy_listeners=copy_listeners,
            quotas=quotas,
            hostname=settings.hostname,
        )
        listen(description, imap_factory, "imap")
    for description in settings.managesieve:
        sieve_factory = managesieve_factory(
            settings,
            description,
            authenticator=authenticator,
            stores=stores,
            tls=tls,
            reactor=reactor,
            run_blocking=run_blocking,
        )
        listen(description, sieve_factory, "managesieve")
    if settings.web:
        from txmail.web.service import web_site  # twisted.web: only when configured

        site = web_site(settings, server, reactor=reactor)
        from txmail.delivery.mtasts import mount as mount_mta_sts

        mount_mta_sts(site, settings)  # [mta_sts]: /.well-known/mta-sts.txt
        for description in settings.web:
            listen(description, site, "web")
    if settings.autoconfig_listen:
        from txmail.web.autoconfig import autoconfig_site  # twisted.web: only when configured

        autoconfig = autoconfig_site(server)
        for description in settings.autoconfig_listen:
            listen(description, autoconfig, "autoconfig")
    # Metrics, /health and JSON logs ([metrics], [log]): after the other
    # listeners (it binds their factories), before the workers are given them.
    from txmail.monitoring import install_monitoring

    install_monitoring(server, settings, reactor=reactor, listen=listen)
    if workers > 1:
        from txmail.workers import WorkerPool

        # After the listeners: they are listening by the time it starts.
        server.workers = WorkerPool(
            reactor,
            settings,
            workers,
            server.listeners,
            router,
            # The workers stop gracefully too: SIGKILL only after their shutdown_timeout.
            stop_timeout=settings.shutdown_timeout + 5.0,
        )
        server.workers.setServiceParent(server)
    _reloadable(server, reactor=reactor, tls=tls, dns=dns, extra_policies=policies, run_blocking=run_blocking)
    return server


def _reloadable(
    server: Any, *, reactor: Any, tls: Any, dns: Any, extra_policies: Sequence[Any], run_blocking: Any
) -> None:
    """What a reload (:func:`txmail.lifecycle.apply_settings`) works on, kept on *server*."""
    from txmail.lifecycle import key_files_digest

    server.reactor = reactor
    server.tls = tls
    server.dns = dns
    server.extra_policies = tuple(extra_policies)
    server.run_blocking = run_blocking
    server.key_digest = key_files_digest(server.settings)
    server.routers = [r for r in (server.router, getattr(server.runner, "router", None)) if r is not None]
