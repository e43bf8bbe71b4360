"""
Unit tests of the metrics (:mod:`txmail.metrics`): the protocol adapters
driven on StringTransport with a task.Clock count connections, commands,
logins and TLS handshakes into a registry of their own; the router, the
queue runner's counting and the policy engine count deliveries and
rejections; the no-op metrics cost nothing and need no library.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txmail.auth.authenticator import Authenticator
from txmail.auth.passwords import make_credentials
from txmail.config import load_config
from txmail.delivery.router import DeliveryRouter
from txmail.delivery.runner import QueueRunner
from txmail.errors import ConfigError
from txmail.metrics import (
    NULL_METRICS,
    NULL_PROTOCOL_METRICS,
    Metrics,
    bind_listener,
    metrics_available,
    policy_reason,
)
from txmail.model import DeliveryState, Envelope, MessageSource, QueueEntry, RecipientState
from txmail.policy.engine import PolicyEngine
from txmail.policy.hooks import Policy, SessionInfo, Stage, Verdict
from txmail.pop3.server import MaildropLocks, POP3Factory
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"
PASSWORD = "pop secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
PEER = IPv4Address("TCP", "127.0.0.1", 4321)


class FakeDirectory:
    """One user, alice, for the Authenticator and the router."""

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == USER else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(USER if username == USER else None)


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    """The value of sample *name* with *labels* in *metrics*' registry (0 when absent)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


class FakeTimer:
    """A latency clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class POP3MetricsTests(SynchronousTestCase):
    """A POP3 connection on StringTransport counts into the registry its factory was bound to."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.stores = MemoryProvider()
        mailbox = self.successResultOf(self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX"))
        self.successResultOf(mailbox.append(b"Subject: one\r\n\r\nbody\r\n"))
        self.timer = FakeTimer()
        self.metrics = Metrics(timer=self.timer)
        self.factory = POP3Factory(
            authenticator=Authenticator(FakeDirectory(), clock=self.clock),  # type: ignore[arg-type]
            stores=self.stores,
            locks=MaildropLocks(),
            clock=self.clock,
            plaintext_auth="loopback",
        )
        bind_listener(self.metrics, self.factory, "pop3")

    def connect(self) -> tuple[Any, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def test_connection_counted_and_active(self) -> None:
        """A connection counts once in the total and in the active gauge until it is lost."""
        proto, _ = self.connect()
        self.assertEqual(sample(self.metrics, "txmail_connections_total", protocol="pop3", role="pop3"), 1)
        self.assertEqual(sample(self.metrics, "txmail_connections_active", protocol="pop3", role="pop3"), 1)
        proto.connectionLost(None)
        self.assertEqual(sample(self.metrics, "txmail_connections_active", protocol="pop3", role="pop3"), 0)
        self.assertEqual(sample(self.metrics, "txmail_connections_total", protocol="pop3", role="pop3"), 1)

    def test_login_success_and_failure(self) -> None:
        """A wrong PASS counts as a USER failure, the right one as a success."""
        proto, transport = self.connect()
        proto.dataReceived(f"USER {USER}\r\nPASS wrong\r\n".encode())
        self.clock.advance(10)  # the authenticator's failure delay
        self.assertIn(b"-ERR", transport.value())
        proto.dataReceived(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        self.clock.advance(10)
        self.assertIn(b"+OK Logged in", transport.value())
        auth = {"protocol": "pop3", "mechanism": "USER"}
        self.assertEqual(sample(self.metrics, "txmail_auth_attempts_total", result="failure", **auth), 1)
        self.assertEqual(sample(self.metrics, "txmail_auth_attempts_total", result="success", **auth), 1)
        # The maildrop was opened and listed through the store.
        self.assertEqual(
            sample(self.metrics, "txmail_store_operation_duration_seconds_count", operation="open"), 1
        )
        self.assertEqual(
            sample(self.metrics, "txmail_store_operation_duration_seconds_count", operation="list"), 1
        )

    def test_command_latency(self) -> None:
        """Each command is timed from its parsing until the session waits for the next one; unknown verbs are 'other'."""
        proto, _ = self.connect()
        proto.dataReceived(b"CAPA\r\n")
        self.timer.now += 0.5
        proto.dataReceived(b"FOO bar\r\nXYZZY\r\n")
        count = "txmail_command_duration_seconds_count"
        self.assertEqual(sample(self.metrics, count, protocol="pop3", command="CAPA"), 1)
        # CAPA was answered at once: the half second passed while the client was silent.
        self.assertEqual(
            sample(self.metrics, "txmail_command_duration_seconds_sum", protocol="pop3", command="CAPA"), 0
        )
        self.assertEqual(sample(self.metrics, count, protocol="pop3", command="other"), 2)
        self.assertIsNone(
            self.metrics.registry.get_sample_value(count, {"protocol": "pop3", "command": "FOO"})
        )

    def test_command_waiting_for_the_store(self) -> None:
        """A command answered by a later Deferred is timed until that answer."""
        proto, _ = self.connect()
        proto.dataReceived(f"USER {USER}\r\n".encode())
        proto.dataReceived(b"PASS wrong\r\n")  # the authenticator delays a failure on the clock
        self.timer.now += 2.0
        self.clock.advance(10)
        self.assertEqual(
            sample(self.metrics, "txmail_command_duration_seconds_sum", protocol="pop3", command="PASS"), 2.0
        )

    def test_stls_handshake(self) -> None:
        """STLS followed by a completed handshake counts a success; a connection lost during one counts a failure."""
        from tests.pop3.test_server import TLSStringTransport

        self.factory.tls_context = object()
        for complete in (True, False):
            proto = self.factory.buildProtocol(None)
            transport = TLSStringTransport(peerAddress=PEER)
            proto.makeConnection(transport)
            proto.dataReceived(b"STLS\r\n")
            self.assertEqual(len(transport.tls_contexts), 1)
            if complete:
                proto.handshakeCompleted()
            proto.connectionLost(None)
        self.assertEqual(
            sample(self.metrics, "txmail_tls_handshakes_total", protocol="pop3", result="success"), 1
        )
        self.assertEqual(
            sample(self.metrics, "txmail_tls_handshakes_total", protocol="pop3", result="failure"), 1
        )


class SMTPMetricsTests(SynchronousTestCase):
    """An SMTP connection counts its commands, the end of data and the message received."""

    def test_message_received(self) -> None:
        """A message accepted with 250 counts as received, DATA and its end as commands."""
        from txmail.smtp.server import SMTPFactory

        class Router:
            def check_recipient(self, address: str, authenticated_user: str | None = None) -> Any:
                from txmail.model import RecipientResult

                return defer.succeed(RecipientResult(address, True, "250 2.1.5 OK"))

            def deliver(self, envelope: Envelope, message: MessageSource) -> Any:
                from txmail.model import DeliveryReport, RecipientResult

                return defer.succeed(
                    DeliveryReport(tuple(RecipientResult(r, True, "250 OK") for r in envelope.rcpt_to))
                )

        metrics = Metrics()
        spool = self.mktemp()
        os.makedirs(spool)
        factory = SMTPFactory(
            hostname="mx.example.test",
            router=Router(),  # type: ignore[arg-type]
            spool_dir=spool,
            clock=task.Clock(),
        )
        bind_listener(metrics, factory, "mta")
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        proto.dataReceived(
            b"EHLO client.test\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
        )
        proto.dataReceived(b"Subject: hi\r\n\r\nhello\r\n.\r\nQUIT\r\n")
        self.assertIn(b"250 2.0.0", transport.value())
        self.assertEqual(sample(metrics, "txmail_messages_received_total", protocol="smtp", role="mta"), 1)
        count = "txmail_command_duration_seconds_count"
        for command in ("EHLO", "MAIL", "RCPT", "DATA", "end-of-data", "QUIT"):
            self.assertEqual(sample(metrics, count, protocol="smtp", command=command), 1, command)


class DeliveryMetricsTests(SynchronousTestCase):
    """The router counts local copies; the queue runner counts remote outcomes."""

    def test_router_counts_local_copies(self) -> None:
        """A message for two local users counts two local deliveries and two store deliver timings."""

        class Directory:
            def is_local_domain(self, domain: str) -> bool:
                return True

            def resolve_recipient(self, address: str) -> Any:
                return defer.succeed([address.lower()])

        metrics = Metrics()
        router = DeliveryRouter(Directory(), MemoryProvider(), queue=None)  # type: ignore[arg-type]
        router.metrics = metrics
        envelope = Envelope(mail_from="x@example.org", rcpt_to=("a@example.test", "b@example.test"))
        report = self.successResultOf(
            router.deliver(envelope, MessageSource.from_bytes(b"Subject: x\r\n\r\nx\r\n"))
        )
        self.assertTrue(all(r.ok for r in report.results))
        self.assertEqual(sample(metrics, "txmail_messages_delivered_total", destination="local"), 2)
        self.assertGreaterEqual(
            sample(metrics, "txmail_store_operation_duration_seconds_count", operation="deliver"), 1
        )
        # The router without hooks (the queue runner's) counts into the same metrics.
        self.assertIs(router.without_hooks().metrics, metrics)

    def test_runner_counts_outcomes(self) -> None:
        """Delivered, deferred and failed remote recipients count as delivered, deferred and bounced."""
        metrics = Metrics()
        runner = QueueRunner.__new__(QueueRunner)
        runner.metrics = metrics
        runner._count(
            {
                "a@remote.test": RecipientState(DeliveryState.DELIVERED),
                "b@remote.test": RecipientState(DeliveryState.DEFERRED),
                "c@remote.test": RecipientState(DeliveryState.FAILED),
                "d@remote.test": RecipientState(DeliveryState.FAILED),
            },
            local=False,
        )
        runner._count(
            {
                "e@example.test": RecipientState(DeliveryState.DELIVERED),
                "f@example.test": RecipientState(DeliveryState.DEFERRED),
            },
            local=True,
        )
        self.assertEqual(sample(metrics, "txmail_messages_delivered_total", destination="remote"), 1)
        self.assertEqual(sample(metrics, "txmail_messages_deferred_total", destination="remote"), 1)
        self.assertEqual(sample(metrics, "txmail_messages_bounced_total", destination="remote"), 2)
        self.assertEqual(sample(metrics, "txmail_messages_deferred_total", destination="local"), 1)
        # A local copy delivered was counted by the router, not again here.
        self.assertEqual(sample(metrics, "txmail_messages_delivered_total", destination="local"), 0)

    def test_queue_gauges_at_scrape_time(self) -> None:
        """refresh() computes the queue's size, recipients by state and oldest entry's age."""

        class Queue:
            def list_entries(self) -> Any:
                env = Envelope(mail_from="", rcpt_to=())
                return defer.succeed(
                    [
                        QueueEntry(
                            "A", env, {"x@r.test": RecipientState(DeliveryState.DEFERRED)}, 10, 1000.0
                        ),
                        QueueEntry(
                            "B",
                            env,
                            {
                                "y@r.test": RecipientState(DeliveryState.PENDING),
                                "z@r.test": RecipientState(DeliveryState.HELD),
                            },
                            10,
                            1900.0,
                        ),
                    ]
                )

        clock = task.Clock()
        clock.advance(2000)
        metrics = Metrics()
        metrics.watch_queue(Queue(), clock)
        self.successResultOf(metrics.refresh())
        self.assertEqual(sample(metrics, "txmail_queue_entries"), 2)
        self.assertEqual(sample(metrics, "txmail_queue_oldest_age_seconds"), 1000)
        self.assertEqual(sample(metrics, "txmail_queue_recipients", state="deferred"), 1)
        self.assertEqual(sample(metrics, "txmail_queue_recipients", state="pending"), 1)
        self.assertEqual(sample(metrics, "txmail_queue_recipients", state="held"), 1)
        body, content_type = metrics.exposition()
        self.assertTrue(content_type.startswith("text/plain"))
        names = {f.name for f in text_string_to_metric_families(body.decode())}
        self.assertIn("txmail_queue_entries", names)


class PolicyMetricsTests(SynchronousTestCase):
    """Policy rejections count by stage and reason."""

    def test_rejection_by_reason(self) -> None:
        """A refusing policy counts under its reason; the built-in classes have fixed reasons."""

        class Greylisting(Policy):
            def on_rcpt(self, session: SessionInfo, recipient: Any) -> Verdict:
                return Verdict.reject("451 4.7.1 Greylisted, try again later")

        metrics = Metrics()
        engine = PolicyEngine([Greylisting()], role="mta", clock=task.Clock())
        engine.metrics = metrics
        verdict = engine.decide(Stage.RCPT, SessionInfo(role="mta"), "bob@example.test")
        self.assertIsNotNone(verdict.reply)  # type: ignore[union-attr]
        self.assertEqual(
            sample(metrics, "txmail_policy_rejections_total", stage="rcpt", reason="greylist"), 1
        )

    def test_broken_policy_is_error(self) -> None:
        """A policy that raises refuses the stage temporarily and counts as 'error'."""

        class Broken(Policy):
            def on_mail(self, session: SessionInfo, sender: Any) -> Verdict:
                raise RuntimeError("bug")

        metrics = Metrics()
        engine = PolicyEngine([Broken()], role="mta", clock=task.Clock())
        engine.metrics = metrics
        verdict = engine.decide(Stage.MAIL, SessionInfo(role="mta"), "a@example.org")
        self.assertEqual(verdict.reply.code, 451)  # type: ignore[union-attr]
        self.assertEqual(sample(metrics, "txmail_policy_rejections_total", stage="mail", reason="error"), 1)
        self.flushLoggedErrors(RuntimeError)

    def test_reasons(self) -> None:
        """SPF refuses at RCPT and DMARC at DATA; an embedder's policy is named after itself."""
        inbound = type("InboundAuthentication", (), {})()
        self.assertEqual(policy_reason(inbound, "rcpt"), "spf")
        self.assertEqual(policy_reason(inbound, "data"), "dmarc")
        custom = type("NotFromYou", (), {"name": "Not From You!"})()
        self.assertEqual(policy_reason(custom, "mail"), "not_from_you")


class BoundedLabelTests(SynchronousTestCase):
    """Labels a client chooses stay bounded."""

    def test_unknown_mechanism_is_other(self) -> None:
        """A SASL mechanism outside the known set counts as 'other'."""
        metrics = Metrics()
        imap = metrics.protocol("imap", "imap")
        imap.auth("X-MADE-UP-1", False)
        imap.auth("X-MADE-UP-2", False)
        imap.auth("plain", True)
        auth = "txmail_auth_attempts_total"
        self.assertEqual(sample(metrics, auth, protocol="imap", mechanism="other", result="failure"), 2)
        self.assertEqual(sample(metrics, auth, protocol="imap", mechanism="PLAIN", result="success"), 1)

    def test_registries_are_separate(self) -> None:
        """Two Metrics never share a registry, nor use the global one."""
        from prometheus_client import REGISTRY

        one, two = Metrics(), Metrics()
        one.protocol("imap", "imap").connection_opened()
        self.assertEqual(sample(one, "txmail_connections_total", protocol="imap", role="imap"), 1)
        self.assertEqual(sample(two, "txmail_connections_total", protocol="imap", role="imap"), 0)
        self.assertIsNone(
            REGISTRY.get_sample_value("txmail_connections_total", {"protocol": "imap", "role": "imap"})
        )
        self.assertIsInstance(one.registry, CollectorRegistry)


class NullMetricsTests(SynchronousTestCase):
    """Metrics off: nothing is counted and the library is not needed."""

    def test_null_does_nothing(self) -> None:
        """The no-op metrics accept every call and bind nothing."""
        factory = type("F", (), {})()
        bind_listener(NULL_METRICS, factory, "imap")
        self.assertFalse(hasattr(factory, "metrics"))
        NULL_PROTOCOL_METRICS.command("FETCH", 1.0)
        NULL_METRICS.delivered("local")
        self.assertIsNone(self.successResultOf(NULL_METRICS.refresh()))

    def test_config_without_library(self) -> None:
        """Without prometheus_client, [metrics] listen is a ConfigError naming txmail[metrics]."""
        import sys

        self.assertTrue(metrics_available())
        saved = sys.modules.pop("prometheus_client", None)
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        try:
            with self.assertRaises(ConfigError) as raised:
                load_config(None, {"metrics_listen": ["tcp:0:interface=127.0.0.1"]})
            self.assertIn("txmail[metrics]", str(raised.exception))
            self.assertFalse(metrics_available())
        finally:
            if saved is not None:
                sys.modules["prometheus_client"] = saved
        # Without [metrics] the same settings load fine.
        self.assertEqual(load_config(None, {}).metrics_listen, ())

    def test_on_web_needs_web(self) -> None:
        """[metrics] on_web without a [web] listener is refused."""
        with self.assertRaises(ConfigError):
            load_config(None, {"metrics_on_web": True})


class MergeTests(SynchronousTestCase):
    """Other processes' expositions add up with the server's own."""

    def test_sources_added_sample_by_sample(self) -> None:
        """A source's counters, histograms and gauges are added to the same series of the registry."""
        owner, worker = Metrics(), Metrics()
        owner.protocol("smtp", "lmtp").connection_opened()
        worker.protocol("smtp", "lmtp").connection_opened()
        worker.protocol("smtp", "mta").connection_opened()
        worker.protocol("smtp", "mta").command("RCPT", 0.002)
        worker_text = worker.exposition()[0]
        owner.add_source(lambda: defer.succeed([worker_text, worker_text]))
        self.successResultOf(owner.refresh())
        merged = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(owner.exposition()[0].decode())
            for s in f.samples
        }
        self.assertEqual(merged[("txmail_connections_total", (("protocol", "smtp"), ("role", "lmtp")))], 3)
        self.assertEqual(merged[("txmail_connections_total", (("protocol", "smtp"), ("role", "mta")))], 2)
        self.assertEqual(merged[("txmail_connections_active", (("protocol", "smtp"), ("role", "mta")))], 2)
        rcpt = (("command", "RCPT"), ("protocol", "smtp"))
        self.assertEqual(merged[("txmail_command_duration_seconds_count", rcpt)], 2)
        self.assertEqual(
            merged[("txmail_command_duration_seconds_bucket", (*rcpt[:1], ("le", "0.0025"), rcpt[1]))], 2
        )

    def test_retired_keep_counts_only(self) -> None:
        """Without gauges, what an ended process leaves is its counts."""
        from txmail.metrics import merge_expositions

        worker = Metrics()
        worker.protocol("pop3", "pop3").connection_opened()
        text = merge_expositions([worker.exposition()[0]], keep_gauges=False).decode()
        self.assertIn('txmail_connections_total{protocol="pop3",role="pop3"} 1.0', text)
        self.assertNotIn("txmail_connections_active", text)
        self.assertNotIn("txmail_queue_entries", text)

    def test_worker_pool_collects_and_retires(self) -> None:
        """The pool asks each worker for its metrics in pieces and keeps an ended worker's counts."""
        from txmail.workers import AMP_VALUE_LIMIT, CollectMetrics, WorkerPool, _WorkerAMP

        worker = _WorkerAMP(lambda: None)
        worker.metrics = Metrics()
        for n in range(2000):  # a large exposition: more than one AMP value
            worker.metrics.policy_rejected("rcpt", f"policy_{n}")
        full = worker.metrics.exposition()[0]
        self.assertGreater(len(full), AMP_VALUE_LIMIT)

        class Control:
            def callRemote(self, command: Any, **kwargs: Any) -> defer.Deferred[Any]:
                assert command is CollectMetrics
                return defer.succeed(worker.collect_metrics(**kwargs))

        pool = WorkerPool.__new__(WorkerPool)
        pool.reactor = task.Clock()
        pool._controls = {1: Control()}
        pool.processes = {1: object()}
        pool._last_metrics = {}
        pool._retired_metrics = b""
        [text] = self.successResultOf(pool.collect_metrics())
        self.assertEqual(text, full)
        del pool.processes[1]
        pool._retire_metrics(1)
        [retired] = self.successResultOf(pool.collect_metrics())
        self.assertIn(b'txmail_policy_rejections_total{reason="policy_1999",stage="rcpt"} 1.0', retired)


class HealthCheckTests(SynchronousTestCase):
    """The health checks, on a stand-in server."""

    def server(self, root: str, queue_dir: str) -> Any:
        class Listener:
            role, description, port = "imap", "tcp:143", object()

        class Server(list):  # iterates as a MultiService does: no children
            listeners = [Listener()]
            stores = type("Stores", (), {"root": root})()
            queue = type("Queue", (), {"directory": queue_dir})()
            workers = None

        return Server()

    def test_ok_and_failing(self) -> None:
        """Writable directories pass; a store root that is a file fails the store check."""
        from txmail.monitoring import HealthCheck

        base = self.mktemp()
        os.makedirs(os.path.join(base, "mail"))
        os.makedirs(os.path.join(base, "queue"))
        check = HealthCheck(
            self.server(os.path.join(base, "mail"), os.path.join(base, "queue")), task.Clock()
        )
        ok, results = self.successResultOf(defer.Deferred.fromCoroutine(check.run()))
        self.assertTrue(ok)
        self.assertEqual(results, {"listeners": "ok", "store": "ok", "queue": "ok"})
        self.assertEqual(os.listdir(os.path.join(base, "queue")), [])  # the probe file is gone
        with open(os.path.join(base, "file"), "w"):
            pass
        check = HealthCheck(
            self.server(os.path.join(base, "file"), os.path.join(base, "nowhere")), task.Clock()
        )
        ok, results = self.successResultOf(defer.Deferred.fromCoroutine(check.run()))
        self.assertFalse(ok)
        self.assertIn("is not a directory", results["store"])
        self.assertIn("cannot write", results["queue"])

    def test_check_that_hangs(self) -> None:
        """A check that does not answer in time fails with the timeout."""
        from txmail.monitoring import HealthCheck

        clock = task.Clock()
        base = self.mktemp()
        os.makedirs(base)
        server = self.server(base, base)
        server.stores = type("Stores", (), {"health_check": lambda self: defer.Deferred()})()
        d = defer.Deferred.fromCoroutine(HealthCheck(server, clock, timeout=2.0).run())
        self.assertNoResult(d)
        clock.advance(2.0)
        ok, results = self.successResultOf(d)
        self.assertFalse(ok)
        self.assertEqual(results["store"], "no answer within 2 seconds")
