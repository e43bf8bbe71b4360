"""
What a monitoring system and a load balancer ask a running server: the
Prometheus metrics (``/metrics``, :mod:`txmail.metrics`) and a health check
(``/health``), served on the ``[metrics] listen`` endpoints and on the
``[web] listen`` ones (``/health`` always there, ``/metrics`` with
``[metrics] on_web = true``).

:func:`install_monitoring` is the one call :func:`txmail.service.build_service`
makes: it gives every listener's factory, the router, the queue runner and
the policy engines the server's :class:`~txmail.metrics.Metrics`, and adds
the listeners of ``[metrics] listen``.

The health check (:class:`HealthCheck`) answers ``200`` with a small JSON
body when every check passes, ``503`` with the failing checks otherwise:

* ``listeners``: every listener of the server is listening (and, with
  SMTP workers, at least one worker runs);
* ``store``: the mail store can be reached (a Maildir root that exists
  and is writable, a PostgreSQL database that answers ``SELECT 1``, a
  provider's own ``health_check()``);
* ``queue``: the queue can be written (a file is created and removed in a
  file queue's directory; a PostgreSQL queue is its database).

Each check gets :data:`CHECK_TIMEOUT` seconds; one that takes longer fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from txmail.logs import json_observer_for
from txmail.metrics import WEB_PROTOCOL, Metrics, NullMetrics, bind_listener, make_metrics

__all__ = [
    "CHECK_TIMEOUT",
    "HealthCheck",
    "HealthResource",
    "MetricsResource",
    "install_monitoring",
    "monitoring_site",
]

#: Seconds one health check may take before it counts as failed.
CHECK_TIMEOUT = 5.0


class HealthCheck:
    """
    The checks of one server (see the module notes).

    Args:
        server: the :class:`txmail.service.MailServer`.
        clock: an ``IReactorTime`` for the checks' timeout.
        timeout: seconds each check may take.
    """

    log = Logger()

    def __init__(self, server: Any, clock: Any, timeout: float = CHECK_TIMEOUT) -> None:
        self.server = server
        self.clock = clock
        self.timeout = timeout

    def _run_blocking(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        run = getattr(self.server, "run_blocking", None)
        # Inline without a pool: the plain function's value or exception becomes the Deferred.
        return run(fn, *args) if run is not None else defer.maybeDeferred(fn, *args)

    def check_listeners(self) -> str | None:
        """``None`` when every listener is listening, else which one is not."""
        for listener in getattr(self.server, "listeners", ()):
            if listener.port is None:
                return f"{listener.role} listener on {listener.description} is not listening"
        return None

    def check_workers(self) -> str | None:
        """``None`` unless the server has SMTP workers and none of them runs (nothing accepts SMTP)."""
        workers = getattr(self.server, "workers", None)
        if workers is None or not workers.running:
            return None
        if not workers.processes:
            return "no SMTP worker process is running"
        return None

    def _database(self) -> Any:
        from txmail.pg.db import DatabaseService

        for child in self.server:
            if isinstance(child, DatabaseService):
                return child.database
        return None

    def _database_check(self) -> defer.Deferred[str | None]:
        database = self._database()
        if database is None:
            return defer.succeed("no database service")
        d: defer.Deferred[Any] = database.run(lambda conn: conn.execute("SELECT 1").fetchone())
        return d.addCallback(lambda _: None)

    def check_store(self) -> defer.Deferred[str | None]:
        """``None`` when the mail store can be reached, else why not."""
        stores = getattr(self.server, "stores", None)
        own = getattr(stores, "health_check", None)
        if callable(own):
            return defer.maybeDeferred(own)  # a provider's own check: a value or a Deferred of one
        if type(stores).__name__ == "PostgresProvider":
            return self._database_check()
        root = getattr(stores, "root", None)
        if isinstance(root, str):
            return self._run_blocking(_writable_dir, root, True)
        return defer.succeed(None)  # in memory: always there

    def check_queue(self) -> defer.Deferred[str | None]:
        """``None`` when the queue can be written, else why not."""
        queue = getattr(self.server, "queue", None)
        if type(queue).__name__ == "PostgresQueue":
            return self._database_check()
        directory = getattr(queue, "directory", None)
        if isinstance(directory, str):
            return self._run_blocking(_probe_write, directory)
        return defer.succeed(None)

    async def run(self) -> tuple[bool, dict[str, str]]:
        """Run every check: whether all passed, and each check's ``"ok"`` or failure."""
        results: dict[str, str] = {}
        results["listeners"] = self.check_listeners() or self.check_workers() or "ok"
        for name, check in (("store", self.check_store), ("queue", self.check_queue)):
            d = defer.maybeDeferred(check)  # a check that raises at once is reported like a failed one
            d.addTimeout(self.timeout, self.clock)
            try:
                problem = await d
            except defer.TimeoutError:
                problem = f"no answer within {self.timeout:g} seconds"
            except Exception as e:
                self.log.failure("health check {check} failed", failure=Failure(), check=name)
                problem = f"{type(e).__name__}: {e}"
            results[name] = problem or "ok"
        return all(v == "ok" for v in results.values()), results


def _writable_dir(path: str, create_parent: bool = False) -> str | None:
    """Whether *path* is a writable directory (when it does not exist yet: its parent, with *create_parent*)."""
    if not os.path.exists(path):
        if create_parent:
            return _writable_dir(os.path.dirname(os.path.abspath(path)))
        return f"{path} does not exist"
    if not os.path.isdir(path):
        return f"{path} is not a directory"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def _probe_write(directory: str) -> str | None:
    """Create and remove a file in *directory* (a ``.tmp`` name, which the file queue ignores and cleans)."""
    try:
        fd, name = tempfile.mkstemp(prefix=".health-", suffix=".tmp", dir=directory)
    except OSError as e:
        return f"cannot write in {directory}: {e.strerror}"
    os.close(fd)
    os.unlink(name)
    return None


def _send(request: Any, status: int, body: bytes, content_type: bytes) -> None:
    if request.finished or getattr(request, "_disconnected", False):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.write(body)
    request.finish()


class HealthResource(resource.Resource):
    """``GET /health``: ``200`` and ``{"status": "ok", "checks": {...}}``, or ``503`` and the failures."""

    isLeaf = True

    def __init__(self, check: HealthCheck) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in twisted.web
        self.check = check

    def render_GET(self, request: Any) -> Any:
        d = defer.Deferred.fromCoroutine(self.check.run())

        def answer(result: tuple[bool, dict[str, str]]) -> None:
            ok, checks = result
            body = json.dumps({"status": "ok" if ok else "failing", "checks": checks}).encode() + b"\n"
            _send(request, 200 if ok else 503, body, b"application/json")

        def failed(f: Failure) -> None:
            HealthCheck.log.failure("health check failed", failure=f)
            _send(request, 503, b'{"status": "failing"}\n', b"application/json")

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET

    render_HEAD = render_GET


class MetricsResource(resource.Resource):
    """``GET /metrics``: the server's metrics in the Prometheus text format."""

    isLeaf = True
    log = Logger()

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in twisted.web
        self.metrics = metrics

    def render_GET(self, request: Any) -> Any:
        d = self.metrics.refresh()

        def answer(_: Any) -> None:
            body, content_type = self.metrics.exposition()
            _send(request, 200, body, content_type.encode())

        def failed(f: Failure) -> None:
            self.log.failure("computing the metrics failed", failure=f)
            _send(request, 500, b"metrics unavailable\n", b"text/plain")

        d.addCallbacks(answer, failed)
        return server.NOT_DONE_YET


class _Root(resource.Resource):
    """The root of a metrics listener: ``/metrics`` and ``/health``, 404 elsewhere."""

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return resource.NoResource()

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain")
        return b"txmail: /metrics, /health\n"


class _MonitoringSite(server.Site):
    """A metrics listener's site: no access log lines (a scrape every few seconds would fill it)."""

    def log(self, request: Any) -> None:
        pass


def monitoring_site(metrics: Metrics | None, health: HealthCheck) -> server.Site:
    """The site of a ``[metrics] listen`` endpoint: ``/metrics`` (when *metrics*) and ``/health``."""
    root = _Root()  # type: ignore[no-untyped-call]  # untyped in twisted.web
    if metrics is not None:
        root.putChild(b"metrics", MetricsResource(metrics))
    root.putChild(b"health", HealthResource(health))
    site = _MonitoringSite(root, timeout=60.0)  # type: ignore[no-untyped-call]  # untyped in twisted.web
    site.displayTracebacks = False
    return site


def install_monitoring(
    server: Any, settings: Any, *, reactor: Any, listen: Callable[..., None]
) -> Metrics | NullMetrics:
    """
    Give *server* its metrics (``server.metrics``; :data:`~txmail.metrics.NULL_METRICS`
    without ``[metrics]``), its health check (``server.health``) and its
    JSON log observer (``server.log_observer``, ``[log] format = "json"``): bind
    the factories of its listeners so far, its router, queue runner and
    policy engines; add ``/health`` (and ``/metrics`` with ``on_web``) to
    its web site; listen on the ``[metrics] listen`` endpoints with
    *listen* ``(description, factory, role)``.

    Raises:
        ConfigError: metrics are configured but ``prometheus_client`` is not installed.
    """
    metrics = make_metrics(bool(settings.metrics_listen) or settings.metrics_on_web)
    server.metrics = metrics
    health = HealthCheck(server, reactor)
    server.health = health
    web_sites = set()
    for listener in server.listeners:
        bind_listener(metrics, listener.factory, listener.role)
        if listener.role == "web" and id(listener.factory) not in web_sites:
            web_sites.add(id(listener.factory))
            _mount(listener.factory, metrics, health, expose=settings.metrics_on_web)
    router = getattr(server, "router", None)
    if router is not None:
        router.metrics = metrics
    runner = getattr(server, "runner", None)
    if runner is not None:
        runner.metrics = metrics
        runner.router.metrics = metrics
    for engine in {id(e): e for e in _engines(server)}.values():
        engine.metrics = metrics
    if isinstance(metrics, Metrics):
        metrics.watch_queue(server.queue, reactor)

        def workers_metrics() -> defer.Deferred[list[bytes]]:
            # The SMTP workers' counts (txmail.workers), added at each scrape.
            workers = getattr(server, "workers", None)
            return workers.collect_metrics() if workers is not None else defer.succeed([])

        metrics.add_source(workers_metrics)
    if settings.metrics_listen:
        site = monitoring_site(metrics if isinstance(metrics, Metrics) else None, health)
        for description in settings.metrics_listen:
            listen(description, site, "metrics")
    server.log_observer = json_observer_for(settings)
    return metrics


def _engines(server: Any) -> list[Any]:
    """The policy engines of *server*'s SMTP listeners."""
    found = []
    for listener in server.listeners:
        engine = getattr(listener.factory, "policy", None)
        if engine is not None:
            found.append(engine)
    return found


def _mount(site: Any, metrics: Metrics | NullMetrics, health: HealthCheck, *, expose: bool) -> None:
    """Add ``/health`` (and ``/metrics`` when *expose*) to a web listener's site, and count its requests."""
    root = site.resource
    root.putChild(b"health", HealthResource(health))
    if not isinstance(metrics, Metrics):
        return
    if expose:
        root.putChild(b"metrics", MetricsResource(metrics))
    web = metrics.protocol(WEB_PROTOCOL, "web")
    endpoint = getattr(site, "endpoint", None)
    if endpoint is not None:
        endpoint.metrics = web  # password checks (Basic, the login forms)
    original_log = site.log
    original_build = site.buildProtocol

    def log(request: Any) -> None:
        metrics.http_request(request.code)
        original_log(request)

    def build(addr: Any) -> Any:
        channel = original_build(addr)
        if channel is None:
            return None
        web.connection_opened()
        lost = channel.connectionLost

        def connection_lost(reason: Any) -> Any:
            web.connection_closed()
            return lost(reason)

        channel.connectionLost = connection_lost
        return channel

    site.log = log
    site.buildProtocol = build
