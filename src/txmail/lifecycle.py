"""
Live change: reloading a running server (``SIGHUP``) and stopping it
gracefully.

Reload (:func:`reload_server`, :meth:`txmail.service.MailServer.reload`)
-------------------------------------------------------------------------
* The configuration file is read again and validated whole
  (:func:`txmail.config.load_config`, through the server's
  ``config_loader``); an invalid file is logged and changes nothing -- the
  running configuration stays entirely, certificates and users included.
* What is built from files is built again *before* anything changes: the
  TLS context (certificate and key), the DKIM signing keys and the
  policies.  An error there also leaves everything as it was.  Then the new
  parts are swapped in, each in one assignment, from the reactor thread:
  a connection that is open keeps what it started with (its TLS session,
  the policy engine its SMTP session asks), the next one gets the new.
* Live (:data:`LIVE_KEYS`): the TLS certificate and key files (re-read on
  every reload, so a renewed certificate at the same path is picked up),
  ``[server] plaintext_auth`` and ``shutdown_timeout``, additional local
  ``domains``, the SMTP/POP3/IMAP limits and timeouts, ``[policy]``,
  ``[dkim]``, ``[srs]``, ``[arc]``, ``[[milter]]``, ``[rspamd]`` and
  ``[quota]``.  The users and aliases (the ``users.json`` file, or the
  PostgreSQL directory's cache) are re-read on every reload.
* Everything else (listeners, backends, paths, workers, threads, hostname,
  outbound delivery...) takes effect at the next start: each such key that
  changed is logged as ``needs a restart: <key>`` and listed in the
  :class:`ReloadReport`; the server keeps running with its old value (and
  reports it again at the next reload until restarted).
* With SMTP worker processes (:mod:`txmail.workers`) the owner sends the
  settings it now runs with to every worker, which applies them the same
  way; the reload's Deferred fires once all have answered.
* Policies that keep counters (connection and rate limits) start from zero
  when their configuration or a DKIM key changed; greylisting saves its
  table first and the new policy reads it back.  A reload that changes no
  policy setting keeps the running policies as they are.

Graceful shutdown (:func:`stop_gracefully`)
-------------------------------------------
1. Every listener stops accepting.  Worker processes are told to stop (they
   do the same with their connections).
2. Each SMTP, POP3 and IMAP connection is asked to shut down
   (:meth:`txmail._protocol.SessionProtocol.shut_down`): an idle session
   gets the protocol's reply (SMTP ``421 4.3.2``, POP3 ``-ERR``, IMAP ``*
   BYE``) and is closed; one in the middle of a command or an SMTP
   transaction (a DATA in progress) finishes it first -- mail is answered
   250 only once it is durable, so nothing accepted is lost.
3. The queue runner's deliveries in flight finish, then the rest of the
   server stops.
4. After ``[server] shutdown_timeout`` seconds (or a second Control-C or
   SIGTERM under ``twistd``; the owner then sends the SMTP workers
   ``SIGQUIT``), whatever is left is cut: connections are aborted, and a
   delivery in flight stays in the queue for the next start.
"""

from __future__ import annotations

import dataclasses
import hashlib
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmail.config import _KEYS, Settings
from txmail.errors import ConfigError

__all__ = [
    "LIVE_KEYS",
    "ReloadReport",
    "config_key",
    "install_signal_handlers",
    "key_files_digest",
    "reload_server",
    "settings_changes",
    "stop_gracefully",
]

log = Logger(namespace="txmail.lifecycle")

#: The settings a reload applies to the running server (see the module notes).
LIVE_KEYS = frozenset(
    {
        "tls_cert",
        "tls_key",
        "domains",
        "plaintext_auth",
        "shutdown_timeout",
        "max_message_size",
        "max_recipients",
        "command_timeout",
        "data_timeout",
        "pop3_idle_timeout",
        "imap_idle_timeout",
        "imap_max_line",
        "imap_max_literal",
        "imap_admin",
        "imap_comment",
        "imap_metadata_max_size",
        "imap_metadata_max_entries",
        "policy",
        "milters",
        "rspamd",
        "quota_storage",
        "quota_users",
    }
)

#: Settings attributes kept whole in TOML tables of their own.
_TABLES = {
    "policy": "[policy]/[dkim]/[srs]/[arc]",
    "milters": "[[milter]]",
    "rspamd": "[rspamd]",
}
_POLICY_KEYS = ("policy", "milters", "rspamd")


def config_key(attr: str) -> str:
    """The configuration file's name of the :class:`Settings` attribute *attr* (``"[smtp] listen"``)."""
    if attr in _TABLES:
        return _TABLES[attr]
    for (table, key), name in _KEYS.items():
        if name == attr:
            return f"[{table}] {key}"
    return attr


@dataclass(frozen=True)
class ReloadReport:
    """
    What a reload did.

    Attributes:
        changed: the configuration keys whose new values are in use.
        needs_restart: the keys that changed but take effect at the next
            start (the server keeps their old values).
        reloaded: what was read again from its files: ``"tls"`` (the
            certificate, when it is a new one), ``"users"``, ``"policy"``.
        errors: why something was not reloaded (an invalid configuration
            file: then nothing changed).
    """

    changed: tuple[str, ...] = ()
    needs_restart: tuple[str, ...] = ()
    reloaded: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """The reload went through without an error."""
        return not self.errors

    def merged(self, other: ReloadReport) -> ReloadReport:
        """This report with *other*'s (a worker's) errors added."""
        return dataclasses.replace(
            self, errors=self.errors + tuple(e for e in other.errors if e not in self.errors)
        )

    def to_dict(self) -> dict[str, Any]:
        """The report as a dict of lists (JSON, from a worker to the owner)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReloadReport:
        """The inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) for k, v in data.items()})


def settings_changes(old: Settings, new: Settings) -> tuple[list[str], list[str]]:
    """
    The :class:`Settings` attributes that differ between *old* and *new*:
    ``(live, restart)``, those applied by a reload and those that need a
    restart.  Turning TLS on or off, and changing the primary (first)
    domain, need a restart.
    """
    live: list[str] = []
    restart: list[str] = []
    for f in dataclasses.fields(Settings):
        name = f.name
        if getattr(old, name) == getattr(new, name):
            continue
        if (
            name not in LIVE_KEYS
            or (name in ("tls_cert", "tls_key") and (old.tls_cert is None) != (new.tls_cert is None))
            or (name == "domains" and old.primary_domain != new.primary_domain)
        ):
            restart.append(name)
        else:
            live.append(name)
    return live, restart


def key_files_digest(settings: Settings) -> str:
    """A digest of the DKIM key files' contents (a rotated key at the same path is a change)."""
    h = hashlib.sha256()
    for entry in settings.policy.dkim_keys:
        try:
            with open(entry.key, "rb") as f:
                h.update(f.read())
        except OSError:
            h.update(b"-")
    return h.hexdigest()


def reload_server(server: Any, settings: Settings | None = None) -> defer.Deferred[ReloadReport]:
    """
    Reload *server* (a :class:`txmail.service.MailServer`) from *settings*,
    or from its ``config_loader`` (the configuration file read again), or
    else from the settings it runs with (the certificate, users and key
    files are still read again).  See the module notes.

    Returns:
        A Deferred of the :class:`ReloadReport` (it never fails: errors are
        in the report and in the log), fired once the SMTP worker processes
        have reloaded too.
    """
    if settings is None:
        loader: Callable[[], Settings] | None = getattr(server, "config_loader", None)
        if loader is not None:
            try:
                settings = loader()
            except ConfigError as e:
                log.error(
                    "reload: the configuration is invalid; the running configuration is kept: {error}",
                    error=str(e),
                )
                return defer.succeed(ReloadReport(errors=(str(e),)))
        else:
            settings = server.settings
    try:
        report = apply_settings(server, settings)
    except ConfigError as e:
        log.error("reload failed; the running configuration is kept: {error}", error=str(e))
        return defer.succeed(ReloadReport(errors=(str(e),)))
    except Exception as e:
        log.failure("reload failed; the running configuration is kept")
        return defer.succeed(ReloadReport(errors=(f"{type(e).__name__}: {e}",)))
    workers = getattr(server, "workers", None)
    if workers is None or not hasattr(workers, "reload"):
        return defer.succeed(report)
    d: defer.Deferred[Sequence[ReloadReport]] = workers.reload(server.settings)

    def merge(reports: Sequence[ReloadReport]) -> ReloadReport:
        out = report
        for other in reports:
            out = out.merged(other)
        return out

    return d.addCallback(merge)


def apply_settings(target: Any, settings: Settings) -> ReloadReport:
    """
    Apply *settings* to *target*: a :class:`txmail.service.MailServer`, or a
    worker's service, with the attributes ``build_service`` and
    ``run_worker`` give them (``settings``, ``tls``, ``directory``,
    ``listeners``, ``routers``, ``reactor``, ``run_blocking``, ``dns``,
    ``extra_policies``, ``greylist_path``).  Everything that can fail is
    built before anything changes.

    Raises:
        ConfigError: a certificate, key or policy cannot be loaded (nothing changed).
    """
    from txmail.service import PolicyService, imap_limits, smtp_limits, smtp_policies
    from txmail.tls import server_context

    old: Settings = target.settings
    live, restart = settings_changes(old, settings)
    # What runs: the new values of the live keys, the old ones of the others.
    running = dataclasses.replace(settings, **{name: getattr(old, name) for name in restart})
    reloaded: list[str] = []

    # 1. Build (may fail; nothing changed yet).
    tls = getattr(target, "tls", None)
    new_tls = None
    if tls is not None and running.tls_cert and running.tls_key:
        new_tls = server_context(running.tls_cert, running.tls_key)
        new_tls.getContext()
    policy_digest = key_files_digest(running)
    rebuild_policies = any(name in live for name in _POLICY_KEYS) or policy_digest != getattr(
        target, "key_digest", policy_digest
    )
    old_services = [c for c in target if isinstance(c, PolicyService)]
    keys = None
    if rebuild_policies or "quota_storage" in live or "quota_users" in live:
        from txmail.policy.builtin import signing_keys
        from txmail.service import make_router

        keys = signing_keys(running.policy)
        # The parts of the router that follow the settings (SRS, ARC, signed notices, quotas).
        new_router = make_router(
            running,
            target.directory,
            None,  # type: ignore[arg-type]  # only its settings-dependent parts are taken; the running router keeps its stores
            None,  # type: ignore[arg-type]  # and its queue
            reactor=target.reactor,
            run_blocking=target.run_blocking,
            keys=keys,
        )
    else:
        new_router = None
    new_policies = copy_listeners = None
    if rebuild_policies:
        for service in old_services:
            for policy in service.policies:
                save = getattr(policy, "save", None)
                if callable(save):  # greylisting: the new policy reads the table back
                    save()
        new_policies, copy_listeners = smtp_policies(
            running,
            target,
            reactor=target.reactor,
            run_blocking=target.run_blocking,
            dns=target.dns,
            keys=keys or (),
            extra=getattr(target, "extra_policies", ()),
            greylist_path=getattr(target, "greylist_path", None),
        )

    # 2. Swap (nothing below fails on a valid configuration).
    if new_tls is not None and tls is not None and tls.use(new_tls, running.tls_cert, running.tls_key):
        reloaded.append("tls")
    if new_policies is not None:
        for service in old_services:
            service.disownServiceParent()  # type: ignore[no-untyped-call]  # stopped: greylisting saves
        target.key_digest = policy_digest
        target.policies = new_policies
        reloaded.append("policy")
    if new_router is not None:
        for router in getattr(target, "routers", ()):
            router.forwarding = new_router.forwarding
            router.notice_signer = new_router.notice_signer
            if hasattr(router, "quotas"):
                router.quotas = new_router.quotas
    from txmail.quota import Quotas

    quotas = Quotas.from_settings(running.quota_storage, running.quota_users)
    for listener in getattr(target, "listeners", ()):
        _update_factory(
            listener.factory,
            running,
            smtp_limits=smtp_limits(running),
            imap_limits=imap_limits(running),
            policies=new_policies,
            copy_listeners=copy_listeners,
            quotas=quotas,
            dns=target.dns,
        )
    directory = target.directory
    if "domains" in live and hasattr(directory, "_set_domains"):
        directory._set_domains(running.domains, running.primary_domain)
    reload_directory = getattr(directory, "reload", None)
    if callable(reload_directory):
        try:
            result = reload_directory()
            if isinstance(result, defer.Deferred):
                result.addErrback(lambda f: log.failure("reload: re-reading the directory failed", f))
            reloaded.append("users")
        except Exception as e:
            log.error("reload: the users were not reloaded (the previous ones stay): {error}", error=str(e))
    target.settings = running

    changed = tuple(config_key(name) for name in live)
    needs_restart = tuple(dict.fromkeys(config_key(name) for name in restart))
    for key in changed:
        log.info("reload: {key} changed", key=key)
    for key in needs_restart:
        log.warn("reload: needs a restart: {key} (its running value is kept until then)", key=key)
    log.info(
        "reload done: {count} key(s) changed, {restart} need(s) a restart, reloaded: {reloaded}",
        count=len(changed),
        restart=len(needs_restart),
        reloaded=", ".join(reloaded) or "nothing",
    )
    return ReloadReport(changed=changed, needs_restart=needs_restart, reloaded=tuple(reloaded))


def _update_factory(
    factory: Any,
    settings: Settings,
    *,
    smtp_limits: Any,
    imap_limits: Any,
    policies: Sequence[Any] | None,
    copy_listeners: Sequence[Any] | None,
    quotas: Any,
    dns: Any,
) -> None:
    """Give one listener's factory the live settings (the next connections use them)."""
    from txmail.imap.server import IMAPFactory
    from txmail.pop3.server import POP3Factory
    from txmail.smtp.server import SMTPFactory

    if isinstance(factory, SMTPFactory):
        factory.limits = smtp_limits
        if factory.authenticator is not None:
            factory.plaintext_auth = settings.plaintext_auth
        if policies is not None:
            factory.set_policies(
                policies,
                resolver=dns if settings.policy.enabled and settings.policy.iprev else None,
                trusted_networks=settings.policy.trusted_networks,
            )
    elif isinstance(factory, POP3Factory):
        factory.plaintext_auth = settings.plaintext_auth
        factory.idle_timeout = settings.pop3_idle_timeout
    elif isinstance(factory, IMAPFactory):
        factory.plaintext_auth = settings.plaintext_auth
        factory.idle_timeout = settings.imap_idle_timeout
        factory.limits = imap_limits
        factory.quotas = quotas if quotas.enabled else None
        if copy_listeners is not None:
            factory.copy_listeners = tuple(copy_listeners)


# -- graceful shutdown ---------------------------------------------------------


def _connections(listeners: Iterable[Any]) -> list[Any]:
    out = []
    for listener in listeners:
        connections = getattr(listener.factory, "connections", None)
        if connections:
            out.extend(connections)
    return out


class _Stop:
    """One graceful stop in progress: its deadline, and what waits for it (see :func:`stop_gracefully`)."""

    def __init__(self, reactor: Any, timeout: float) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.deadline = reactor.seconds() + timeout
        self.forced = False
        self._waiters: list[tuple[defer.Deferred[bool], Any]] = []

    def race(self, d: defer.Deferred[Any]) -> defer.Deferred[bool]:
        """Fires with ``True`` when *d* fires, or ``False`` at the deadline or when forced, whichever first."""
        out: defer.Deferred[bool] = defer.Deferred()

        def fire(result: bool) -> None:
            if not out.called:
                if timer.active():
                    timer.cancel()
                out.callback(result)

        timer = self.reactor.callLater(max(0.0, self.deadline - self.reactor.seconds()), fire, False)
        self._waiters.append((out, fire))
        if self.forced:
            fire(False)
        d.addBoth(lambda _: fire(True))
        return out

    def wait_for(self, done: Callable[[], bool], interval: float = 0.05) -> defer.Deferred[bool]:
        """Fires with ``True`` once ``done()`` is true (checked every *interval* s), else as :meth:`race`."""
        polled: defer.Deferred[None] = defer.Deferred()
        pending: list[Any] = []

        def check() -> None:
            pending.clear()
            if polled.called or self.forced:
                return
            if done():
                polled.callback(None)
            elif self.reactor.seconds() < self.deadline:
                pending.append(self.reactor.callLater(interval, check))

        def finished(result: bool) -> bool:
            for call in pending:
                if call.active():
                    call.cancel()
            pending.clear()
            return result

        out = self.race(polled)
        check()
        return out.addCallback(finished)

    def force(self) -> None:
        """Stop waiting now (a second Control-C)."""
        self.forced = True
        for _, fire in list(self._waiters):
            fire(False)


def drain(listeners: Sequence[Any], stop: _Stop) -> defer.Deferred[int]:
    """
    Stop every listener of *listeners* accepting, ask their connections to
    shut down, and wait until they are gone (or *stop*'s deadline): then
    abort what is left.  Fires with the number of connections aborted.
    """
    # IService.stopService answers with a Deferred or None.
    stopping = [defer.maybeDeferred(listener.stopService) for listener in listeners if listener.running]
    for listener in listeners:
        if hasattr(listener.factory, "draining"):
            listener.factory.draining = True
    for connection in _connections(listeners):
        connection.shut_down()
    d = defer.DeferredList(stopping, consumeErrors=True)
    d.addCallback(lambda _: stop.wait_for(lambda: not _connections(listeners)))

    def cut(_: Any) -> int:
        left = _connections(listeners)
        for connection in left:
            transport = connection.transport
            abort = getattr(transport, "abortConnection", None)
            if callable(abort):
                abort()
            elif transport is not None:
                transport.loseConnection()
        if left:
            log.warn(
                "graceful stop: {count} connection(s) still busy after {timeout} s were cut",
                count=len(left),
                timeout=stop.timeout,
            )
        return len(left)

    return d.addCallback(cut)


def stop_gracefully(server: Any, timeout: float | None = None) -> defer.Deferred[None]:
    """
    Stop *server* (a :class:`twisted.application.service.MultiService` with
    ``listeners``, ``reactor`` and ``settings``; its ``workers`` when there
    are SMTP worker processes) as the module notes say, within *timeout*
    seconds (default ``[server] shutdown_timeout``).  The stop can be cut
    short with ``server.force_stop()``.
    """
    from twisted.application.service import Service

    reactor = server.reactor
    if timeout is None:
        timeout = server.settings.shutdown_timeout
    stop = _Stop(reactor, timeout)
    workers = getattr(server, "workers", None)

    def force() -> None:
        stop.force()
        if workers is not None and hasattr(workers, "force"):
            workers.force()

    server.force_stop = force
    log.info("stopping: no new connections; waiting up to {timeout} s for those open", timeout=timeout)
    _signals_force(server, force)
    if getattr(server, "force_requested", False):
        stop.force()
    early: list[defer.Deferred[Any]] = []
    if workers is not None and workers.running:
        early.append(defer.maybeDeferred(workers.stopService))
    drained: defer.Deferred[Any] = drain(server.listeners, stop)
    if early:
        # The workers' sessions hand their last messages to this process's
        # router: the stores and the thread pool stop only after them.
        workers_ended: defer.Deferred[Any] = stop.race(defer.DeferredList(early, consumeErrors=True))
        drained = defer.gatherResults([drained, workers_ended])

    def rest(_: Any) -> defer.Deferred[Any]:
        # The other children (queue runner, policies, stores, thread pool),
        # in reverse order, as MultiService stops them; already stopped ones skipped.
        Service.stopService(server)
        deferreds = list(early)
        for child in reversed(list(server)):
            if child.running:
                deferreds.append(defer.maybeDeferred(child.stopService))
        return stop.race(defer.DeferredList(deferreds, consumeErrors=True))

    def done(finished: bool) -> None:
        if stop.forced:
            log.warn("graceful stop cut short")
        elif not finished:
            log.warn("graceful stop: gave up waiting after {timeout} s", timeout=timeout)
        log.info("stopped")

    return drained.addCallback(rest).addCallback(done)


# -- signals -------------------------------------------------------------------


def install_signal_handlers(server: Any, reactor: Any) -> None:
    """
    For ``twistd mailserver``: ``SIGHUP`` reloads *server* (its Deferred's
    report is logged), and once it stops, a second ``SIGINT`` or
    ``SIGTERM`` cuts the graceful stop short.  Call it once the reactor
    runs (it installs its own handlers when it starts).
    """
    server.signals = True

    def hangup(signum: int, frame: Any) -> None:
        reactor.callFromThread(_reload_logged, server)

    signal.signal(signal.SIGHUP, hangup)


def _reload_logged(server: Any) -> None:
    log.info("SIGHUP: reloading")
    server.reload()


def _signals_force(server: Any, force: Callable[[], None]) -> None:
    """Under twistd: a second Control-C (or SIGTERM) while stopping forces the stop."""
    if not getattr(server, "signals", False):
        return
    reactor = server.reactor

    def again(signum: int, frame: Any) -> None:
        log.warn("stopping: signal {signum} again; cutting the open connections", signum=signum)
        reactor.callFromThread(force)

    try:
        signal.signal(signal.SIGINT, again)
        signal.signal(signal.SIGTERM, again)
    except ValueError:  # not the main thread
        pass
