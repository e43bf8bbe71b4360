"""
Prometheus metrics of one server (``[metrics]``, ``--metrics``; the
``prometheus_client`` library, ``pip install 'txmail[metrics]'``).

Theory of operation
-------------------
* One :class:`Metrics` per :class:`txmail.service.MailServer`, with a
  registry of its own (never ``prometheus_client``'s global one), so that
  several servers in one process (tests, :mod:`txmail.testing`) count
  apart.  Without ``[metrics]`` the server holds :data:`NULL_METRICS`,
  whose methods do nothing and which needs no library: the hot paths pay
  one attribute look-up and a call (a connection) or an ``is not None``
  test (a command).
* The shared places count, not each protocol:
  :class:`txmail._protocol.SessionProtocol` (connections, commands, logins,
  TLS handshakes, for SMTP, LMTP, POP3 and IMAP alike) through the
  :class:`ProtocolMetrics` its factory is given (:func:`bind_listener`);
  the sans-IO sessions name each command to
  ``SessionCore.command_observer``;
  :class:`txmail.delivery.router.DeliveryRouter` (local deliveries, store
  latency); :class:`txmail.delivery.runner.QueueRunner` (remote
  deliveries, deferrals, bounces); :class:`txmail.policy.engine.PolicyEngine`
  (policy rejections).
* Label values are bounded: commands outside a protocol's table, SASL
  mechanisms outside :data:`MECHANISMS` and HTTP codes become ``other`` or a
  class (``2xx``), so a hostile client cannot grow the label sets.
* The queue's gauges are computed at scrape time (:meth:`Metrics.refresh`)
  from the queue's listing, not kept up to date on every change.
* A command's latency runs from the moment its line was parsed to the
  moment the session is ready for the next one (its reply queued, any
  store or policy Deferred answered), as the adapter sees it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer

from txmail.errors import ConfigError

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from txmail.interfaces import IQueue
    from txmail.model import QueueEntry

__all__ = [
    "COMMAND_BUCKETS",
    "MECHANISMS",
    "NULL_METRICS",
    "NULL_PROTOCOL_METRICS",
    "WEB_PROTOCOL",
    "Metrics",
    "NullMetrics",
    "NullProtocolMetrics",
    "ProtocolMetrics",
    "bind_listener",
    "merge_expositions",
    "metrics_available",
    "policy_reason",
]

#: Histogram buckets (seconds) of command and store latencies: from half a
#: millisecond (a cached POP3 STAT) to half a minute (a policy's DNS lookups).
COMMAND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: The SASL mechanisms (and password commands) counted by name; others count as ``other``.
MECHANISMS = frozenset(
    {
        "PLAIN",
        "LOGIN",
        "CRAM-MD5",
        "SCRAM-SHA-1",
        "SCRAM-SHA-1-PLUS",
        "SCRAM-SHA-256",
        "SCRAM-SHA-256-PLUS",
        "XOAUTH2",
        "OAUTHBEARER",
        "EXTERNAL",
        "ANONYMOUS",
        "USER",  # POP3 USER/PASS
        "BASIC",  # HTTP Basic (the web endpoint)
        "PASSWORD",  # the web endpoint's and the webmail's login forms
    }
)

#: The protocol label of each listener role.
_ROLE_PROTOCOLS = {"mta": "smtp", "submission": "smtp", "lmtp": "lmtp", "pop3": "pop3", "imap": "imap"}
#: The protocol label of the web listeners (JMAP, the webmail).
WEB_PROTOCOL = "http"

#: The policy classes' rejection reasons (see :func:`policy_reason`).
_POLICY_REASONS = {
    "RateLimits": "limits",
    "DNSBL": "dnsbl",
    "Greylisting": "greylist",
    "RspamdPolicy": "rspamd",
    "MilterPolicy": "milter",
}


def metrics_available() -> bool:
    """Whether ``prometheus_client`` can be imported."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _require() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "metrics need the prometheus_client library: pip install 'txmail[metrics]'"
        ) from None
    return prometheus_client


def policy_reason(policy: Any, stage: str) -> str:
    """
    The ``reason`` label of a rejection by *policy* at *stage* (``"rcpt"``,
    ``"data"``...): ``spf`` or ``dmarc`` for the inbound authentication
    checks (SPF refuses at RCPT, DMARC at the end of data), ``dnsbl``,
    ``greylist``, ``limits``, ``rspamd``, ``milter`` for the built-in
    policies, else the policy's ``name`` (or class name) in lower case.
    """
    kind = type(policy).__name__
    if kind == "InboundAuthentication":
        return "spf" if stage in ("mail", "rcpt") else "dmarc"
    reason = _POLICY_REASONS.get(kind)
    if reason is not None:
        return reason
    name = getattr(policy, "name", None) or kind
    return re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")[:40] or "other"


def _known_commands(protocol: str) -> frozenset[str]:
    """The command names of *protocol* counted by name (the session's own table)."""
    if protocol in ("smtp", "lmtp"):
        from txmail.smtp import session as smtp_session

        return frozenset(smtp_session._HANDLERS) | {"end-of-data"}
    if protocol == "pop3":
        from txmail.pop3 import session as pop3_session

        return frozenset(pop3_session._HANDLERS)
    if protocol == "imap":
        from txmail.imap.commands import COMMANDS

        return frozenset(COMMANDS)
    return frozenset()


class NullProtocolMetrics:
    """What a listener counts when metrics are off: nothing."""

    enabled = False
    protocol = ""
    role = ""

    @staticmethod
    def timer() -> float:
        return 0.0

    def connection_opened(self) -> None:
        pass

    def connection_closed(self) -> None:
        pass

    def command(self, name: str, seconds: float) -> None:
        pass

    def auth(self, mechanism: str, ok: bool) -> None:
        pass

    def tls(self, ok: bool) -> None:
        pass

    def message_received(self) -> None:
        pass

    def store(self, operation: str, seconds: float) -> None:
        pass


NULL_PROTOCOL_METRICS = NullProtocolMetrics()


class NullMetrics:
    """A server's metrics when ``[metrics]`` is off: every method does nothing."""

    enabled = False
    registry: Any = None

    @staticmethod
    def timer() -> float:
        return 0.0

    def protocol(self, protocol: str, role: str) -> NullProtocolMetrics:
        return NULL_PROTOCOL_METRICS

    def delivered(self, destination: str, count: int = 1) -> None:
        pass

    def deferred(self, destination: str, count: int = 1) -> None:
        pass

    def bounced(self, destination: str, count: int = 1) -> None:
        pass

    def policy_rejected(self, stage: str, reason: str) -> None:
        pass

    def store(self, operation: str, seconds: float) -> None:
        pass

    def http_request(self, code: int) -> None:
        pass

    def watch_queue(self, queue: IQueue, clock: IReactorTime | None) -> None:
        pass

    def refresh(self) -> defer.Deferred[None]:
        return defer.succeed(None)


NULL_METRICS = NullMetrics()


class ProtocolMetrics:
    """
    The counters of one listener role (``mta``, ``submission``, ``lmtp``,
    ``pop3``, ``imap``), their label children bound once, so that counting
    is a method call and an increment.  Made by :meth:`Metrics.protocol`.
    """

    enabled = True

    def __init__(self, metrics: Metrics, protocol: str, role: str) -> None:
        self.protocol = protocol
        self.role = role
        self.timer = metrics.timer
        self._metrics = metrics
        self._connections = metrics.connections.labels(protocol, role)
        self._active = metrics.connections_active.labels(protocol, role)
        self._received = metrics.received.labels(protocol, role)
        self._tls = {
            True: metrics.tls_handshakes.labels(protocol, "success"),
            False: metrics.tls_handshakes.labels(protocol, "failure"),
        }
        self._known = _known_commands(protocol)
        self._commands: dict[str, Any] = {}
        self._auth: dict[tuple[str, bool], Any] = {}

    def connection_opened(self) -> None:
        self._connections.inc()
        self._active.inc()

    def connection_closed(self) -> None:
        self._active.dec()

    def command(self, name: str, seconds: float) -> None:
        """*name* (upper case) took *seconds*; names outside the protocol's table count as ``other``."""
        child = self._commands.get(name)
        if child is None:
            label = name if name in self._known else "other"
            child = self._commands[label] = self._metrics.command_duration.labels(self.protocol, label)
            if label == name:
                self._commands[name] = child
        child.observe(seconds)

    def auth(self, mechanism: str, ok: bool) -> None:
        key = (mechanism, ok)
        child = self._auth.get(key)
        if child is None:
            label = mechanism.upper() if mechanism.upper() in MECHANISMS else "other"
            child = self._metrics.auth.labels(self.protocol, label, "success" if ok else "failure")
            if label != "other":
                self._auth[key] = child
        child.inc()

    def tls(self, ok: bool) -> None:
        self._tls[ok].inc()

    def message_received(self) -> None:
        self._received.inc()

    def store(self, operation: str, seconds: float) -> None:
        self._metrics.store(operation, seconds)


class Metrics:
    """
    The metrics of one server, in a ``prometheus_client`` registry of its
    own (:attr:`registry`).  See ``docs/monitoring.rst`` for each
    metric's meaning.

    Args:
        registry: the ``CollectorRegistry`` to register in; a new one by default.
        timer: the clock of latencies (``time.perf_counter``).

    Raises:
        ConfigError: ``prometheus_client`` is not installed.
    """

    enabled = True

    def __init__(self, registry: Any = None, *, timer: Callable[[], float] = time.perf_counter) -> None:
        prom = _require()
        if registry is None:
            registry = prom.CollectorRegistry(auto_describe=True)
        self.registry = registry
        self.timer = timer
        self._protocols: dict[tuple[str, str], ProtocolMetrics] = {}
        self._queue: IQueue | None = None
        self._clock: IReactorTime | None = None
        self._sources: list[Callable[[], defer.Deferred[list[bytes]]]] = []
        self._collected: list[bytes] = []
        r = registry
        self.connections = prom.Counter(
            "txmail_connections", "Connections accepted.", ["protocol", "role"], registry=r
        )
        self.connections_active = prom.Gauge(
            "txmail_connections_active", "Connections open now.", ["protocol", "role"], registry=r
        )
        self.command_duration = prom.Histogram(
            "txmail_command_duration_seconds",
            "Time from a command's arrival to the session being ready for the next one.",
            ["protocol", "command"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.auth = prom.Counter(
            "txmail_auth_attempts",
            "Authentication attempts (password commands and SASL exchanges) by result.",
            ["protocol", "mechanism", "result"],
            registry=r,
        )
        self.tls_handshakes = prom.Counter(
            "txmail_tls_handshakes",
            "TLS handshakes (STARTTLS and implicit TLS) by result.",
            ["protocol", "result"],
            registry=r,
        )
        self.received = prom.Counter(
            "txmail_messages_received",
            "Messages accepted (250 to the end of data).",
            ["protocol", "role"],
            registry=r,
        )
        self._delivered = prom.Counter(
            "txmail_messages_delivered",
            "Copies delivered, per recipient: into a local mailbox or to a remote host.",
            ["destination"],
            registry=r,
        )
        self._deferred = prom.Counter(
            "txmail_messages_deferred",
            "Delivery attempts that failed temporarily, per recipient (tried again later).",
            ["destination"],
            registry=r,
        )
        self._bounced = prom.Counter(
            "txmail_messages_bounced",
            "Recipients that failed for good (permanent failure or expiry; a DSN is due).",
            ["destination"],
            registry=r,
        )
        self._policy = prom.Counter(
            "txmail_policy_rejections",
            "SMTP stages refused by a policy, by stage and reason.",
            ["stage", "reason"],
            registry=r,
        )
        self._store = prom.Histogram(
            "txmail_store_operation_duration_seconds",
            "Mail store operations: deliver (a copy into a mailbox), open (a user's store), "
            "list (a mailbox's listing), fetch (a message's content).",
            ["operation"],
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self._http = prom.Counter(
            "txmail_http_requests",
            "Requests answered by the web listeners, by status class.",
            ["code"],
            registry=r,
        )
        self.queue_entries = prom.Gauge(
            "txmail_queue_entries", "Messages in the outbound queue (computed at scrape time).", registry=r
        )
        self.queue_recipients = prom.Gauge(
            "txmail_queue_recipients",
            "Recipients in the outbound queue by state (computed at scrape time).",
            ["state"],
            registry=r,
        )
        self.queue_oldest = prom.Gauge(
            "txmail_queue_oldest_age_seconds",
            "Age of the oldest message in the outbound queue; 0 when it is empty (computed at scrape time).",
            registry=r,
        )
        self._delivered_children = {d: self._delivered.labels(d) for d in ("local", "remote")}

    # -- what the shared places call ------------------------------------------------

    def protocol(self, protocol: str, role: str) -> ProtocolMetrics:
        """The (shared) :class:`ProtocolMetrics` of *protocol* (``smtp``, ``imap``...) and listener *role*."""
        key = (protocol, role)
        found = self._protocols.get(key)
        if found is None:
            found = self._protocols[key] = ProtocolMetrics(self, protocol, role)
        return found

    def delivered(self, destination: str, count: int = 1) -> None:
        """*count* copies delivered (*destination*: ``local`` or ``remote``)."""
        self._delivered_children[destination].inc(count)

    def deferred(self, destination: str, count: int = 1) -> None:
        self._deferred.labels(destination).inc(count)

    def bounced(self, destination: str, count: int = 1) -> None:
        self._bounced.labels(destination).inc(count)

    def policy_rejected(self, stage: str, reason: str) -> None:
        self._policy.labels(stage, reason).inc()

    def store(self, operation: str, seconds: float) -> None:
        self._store.labels(operation).observe(seconds)

    def http_request(self, code: int) -> None:
        self._http.labels(f"{int(code) // 100}xx" if 100 <= int(code) < 600 else "other").inc()

    # -- the queue, at scrape time -------------------------------------------------------

    def watch_queue(self, queue: IQueue, clock: IReactorTime | None) -> None:
        """Compute the queue gauges from *queue* (``list_entries()``) at each :meth:`refresh`."""
        self._queue = queue
        self._clock = clock

    def add_source(self, source: Callable[[], defer.Deferred[list[bytes]]]) -> None:
        """
        Add the expositions *source* gives at each :meth:`refresh` (other
        processes' metrics in the text format: the SMTP workers',
        :meth:`txmail.workers.WorkerPool.collect_metrics`) to this
        registry's in :meth:`exposition`, sample by sample.
        """
        self._sources.append(source)

    def refresh(self) -> defer.Deferred[None]:
        """Bring the gauges computed at scrape time up to date (the queue's), and collect the sources."""
        steps: list[defer.Deferred[Any]] = []
        queue = self._queue
        if queue is not None:
            steps.append(queue.list_entries().addCallback(self._queue_listed))
        collected: list[bytes] = []
        for source in self._sources:
            # Another part's callable (the workers' collection): one that raises fails its step only.
            steps.append(defer.maybeDeferred(source).addCallback(collected.extend))
        self._collected = collected
        return defer.gatherResults(steps, consumeErrors=True).addCallback(lambda _: None)

    def _queue_listed(self, entries: Iterable[QueueEntry]) -> None:
        entries = list(entries)
        now = self._clock.seconds() if self._clock is not None else time.time()
        states: dict[str, int] = dict.fromkeys(("pending", "deferred", "held", "failed", "delivered"), 0)
        oldest = None
        for entry in entries:
            created = float(entry.created)
            oldest = created if oldest is None else min(oldest, created)
            for st in entry.recipients.values():
                if st.state in states:
                    states[st.state] += 1
        self.queue_entries.set(len(entries))
        self.queue_oldest.set(max(0.0, now - oldest) if oldest is not None else 0.0)
        for state, count in states.items():
            self.queue_recipients.labels(state).set(count)

    def exposition(self) -> tuple[bytes, str]:
        """
        The registry in the Prometheus text format (with the sources'
        samples added), and its content type; call :meth:`refresh` first.
        """
        prom = _require()
        own = prom.generate_latest(self.registry)
        if not self._collected:
            return own, prom.CONTENT_TYPE_LATEST
        return merge_expositions([own, *self._collected]), prom.CONTENT_TYPE_LATEST


def merge_expositions(texts: Iterable[bytes], *, keep_gauges: bool = True) -> bytes:
    """
    Several processes' expositions (Prometheus text format) as one: the
    samples of the same name and labels added up (counters, histograms,
    gauges such as open connections), ``_created`` timestamps the
    earliest.  Without *keep_gauges*, gauges are left out (what a process
    that ended leaves behind: its counts, not its current values).
    """
    prom = _require()
    from prometheus_client.core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode("utf-8")):
            if family.type == "gauge" and not keep_gauges:
                continue
            if family.name not in families:
                families[family.name] = family
                values[family.name] = {}
            found = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                if sample.name.endswith("_created"):
                    found[key] = min(found.get(key, sample.value), sample.value)
                else:
                    found[key] = found.get(key, 0.0) + sample.value

    class _Merged:
        def collect(self) -> Iterable[Any]:
            for name, family in families.items():
                metric = Metric(name, family.documentation, family.type, family.unit)
                for (sample_name, labels), value in values[name].items():
                    metric.add_sample(sample_name, dict(labels), value)
                yield metric

    registry = prom.CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return bytes(prom.generate_latest(registry))


def make_metrics(enabled: bool) -> Metrics | NullMetrics:
    """A new :class:`Metrics` when *enabled*, else :data:`NULL_METRICS`."""
    return Metrics() if enabled else NULL_METRICS


def bind_listener(metrics: Metrics | NullMetrics, factory: Any, role: str) -> None:
    """
    Give the factory of a listener of *role* its counters: a protocol
    factory (SMTP, LMTP, POP3, IMAP) gets ``factory.metrics`` (a
    :class:`ProtocolMetrics`), its policy engine the server's
    :class:`Metrics`.  Other roles (web, metrics) are left alone
    (:func:`txmail.monitoring.install_monitoring` counts the web listeners).
    """
    if not metrics.enabled:
        return
    protocol = _ROLE_PROTOCOLS.get(role)
    if protocol is None:
        return
    factory.metrics = metrics.protocol(protocol, role)
    engine = getattr(factory, "policy", None)
    if engine is not None:
        engine.metrics = metrics
