"""
Several nodes on one PostgreSQL queue: queue runners on separate
:class:`~txmail.pg.db.Database` objects (each a node's pool) deliver every
message exactly once between them, and the entries a dead node had claimed
are delivered by another once their lease has run out.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.delivery.test_runner import FakeResolver, FakeRouter, ok, transaction
from tests.pg._helpers import upgraded_database
from txmail.delivery.backoff import RetrySchedule
from txmail.delivery.mx import Destination
from txmail.delivery.runner import QueueRunner
from txmail.model import Envelope, MessageSource
from txmail.smtp.client import RelayRequest

Gen = Generator[Any, Any, None]

_SUBJECT_RE = re.compile(rb"^Subject: message (\d+)\r$", re.MULTILINE)


def message(n: int) -> bytes:
    return b"From: alice@example.test\r\nSubject: message %d\r\n\r\nbody %d\r\n" % (n, n)


class RemoteMX:
    """A fake remote MX (in place of deliver_once): counts every message it accepts, per node."""

    def __init__(self) -> None:
        self.received: Counter[int] = Counter()
        self.by_node: dict[str, set[int]] = {}
        self.when: dict[int, float] = {}

    def for_node(self, node: str) -> Any:
        def deliver(request: RelayRequest) -> defer.Deferred[Any]:
            match = _SUBJECT_RE.search(request.message.read())  # type: ignore[union-attr]
            assert match is not None
            n = int(match.group(1))
            self.received[n] += 1
            self.by_node.setdefault(node, set()).add(n)
            self.when.setdefault(n, time.time())
            rcpts = [r for r, _ in request.recipients]
            # An SMTP transaction takes a little while: the other node gets its turn meanwhile.
            return task.deferLater(reactor, 0.01, transaction, {r: ok() for r in rcpts})

        return deliver


class TwoNodeTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.database = upgraded_database(self)
        self.mx = RemoteMX()
        self.resolver = FakeResolver({"remote.test": [Destination("mx.remote.test", "192.0.2.1", 10)]})

    def node(self, name: str) -> Any:
        """A node's queue: its own Database (pool and threads) on the shared database."""
        from txmail.pg.db import Database
        from txmail.pg.queue import PostgresQueue

        database = Database(self.database.dsn, min_connections=0, max_connections=4, reactor=reactor)
        database.start()
        self.addCleanup(database.stop)
        return PostgresQueue(database, node=name)

    def runner(self, queue: Any, name: str, **options: Any) -> QueueRunner:
        options.setdefault("claim_batch", 10)
        options.setdefault("lease", 60)
        options.setdefault("poll_interval", 0.2)
        runner = QueueRunner(
            queue,
            FakeRouter(),
            self.resolver,
            self.mx.for_node(name),
            clock=reactor,
            hostname=f"{name}.example.test",
            schedule=RetrySchedule(delays=(300,), then_every=3600, give_up_after=86400),
            relay_port=2525,
            concurrency=5,
            **options,
        )
        return runner

    def start(self, runner: QueueRunner) -> None:
        runner.startService()
        self.addCleanup(runner.stopService)

    @defer.inlineCallbacks
    def fill(self, queue: Any, count: int) -> Any:
        ids = []
        for n in range(count):
            envelope = Envelope("alice@example.test", (f"bob{n}@remote.test",))
            ids.append(
                (yield queue.enqueue(envelope, MessageSource.from_bytes(message(n)), envelope.rcpt_to))
            )
        return ids

    @defer.inlineCallbacks
    def wait_until(self, predicate: Any, limit: float = 60.0) -> Any:
        deadline = time.time() + limit
        while not (yield defer.maybeDeferred(predicate)):
            if time.time() > deadline:
                self.fail("timed out")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def queue_empty(self) -> Any:
        return not (yield self.node_a.list_entries())

    @defer.inlineCallbacks
    def test_two_runners_deliver_each_once(self) -> Gen:
        """Two runners on two nodes deliver 200 messages, each exactly once, and both take part."""
        self.node_a, node_b = self.node("node-a"), self.node("node-b")
        yield self.fill(self.node_a, 200)
        self.start(self.runner(self.node_a, "node-a"))
        self.start(self.runner(node_b, "node-b"))
        yield self.wait_until(self.queue_empty)
        self.assertEqual(sorted(self.mx.received), list(range(200)))
        self.assertEqual(set(self.mx.received.values()), {1})
        self.assertTrue(self.mx.by_node.get("node-a"), self.mx.by_node.keys())
        self.assertTrue(self.mx.by_node.get("node-b"), self.mx.by_node.keys())
        self.assertFalse(self.mx.by_node["node-a"] & self.mx.by_node["node-b"])

    @defer.inlineCallbacks
    def test_dead_node_claims_expire(self) -> Gen:
        """The entries a node claimed before it died are delivered by another once their lease ends."""
        self.node_a, dead = self.node("node-a"), self.node("dead")
        yield self.fill(self.node_a, 60)
        # The dead node claimed 20 entries (the oldest) and stopped there: never released.
        lease = 2.0
        claimed_at = time.time()
        taken = yield dead.claim(20, lease)
        self.assertEqual(len(taken), 20)
        self.start(self.runner(self.node_a, "node-a"))
        yield self.wait_until(lambda: self.node_a.list_entries().addCallback(lambda left: len(left) <= 20))
        left = yield self.node_a.list_entries()
        if time.time() < claimed_at + lease - 0.1:
            # Not yet expired: exactly the dead node's entries wait.
            self.assertEqual(sorted(e.queue_id for e in left), sorted(e.queue_id for e in taken))
            self.assertEqual(sorted(self.mx.received), list(range(20, 60)))
        yield self.wait_until(self.queue_empty)
        self.assertEqual(sorted(self.mx.received), list(range(60)))
        self.assertEqual(set(self.mx.received.values()), {1})
        self.assertEqual(set(self.mx.by_node), {"node-a"})
        for n in range(20):
            self.assertGreaterEqual(self.mx.when[n], claimed_at + lease - 0.05)
