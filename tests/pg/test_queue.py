"""PostgresQueue: the queue contract on PostgreSQL, its pieces, and claims between nodes."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.delivery.test_queue import UNTYPED_ENTRY, UNTYPED_STATES
from tests.pg._helpers import upgraded_database
from txmail.testing.queue import ENVELOPE, QueueConformanceMixin
from txmail.testing.sources import pattern_digest, pattern_source

Gen = Generator[Any, Any, None]


def make(database: Any, **options: Any) -> Any:
    from txmail.pg.queue import PostgresQueue

    queue = PostgresQueue(database, **options)
    queue.check_schema()
    return queue


def other_node(test: TestCase, database: Any) -> Any:
    """A second Database on the same PostgreSQL database: another node."""
    from txmail.pg.db import Database

    other = Database(database.dsn, min_connections=0, max_connections=2, reactor=database.reactor)
    other.start()
    test.addCleanup(other.stop)
    return other


class PostgresQueueConformanceTests(QueueConformanceMixin, TestCase):
    """PostgresQueue keeps the whole queue contract, its queries on the database's threads."""

    def make_queue(self) -> Any:
        return make(upgraded_database(self))

    def reopen_queue(self, queue: Any) -> Any:
        return make(queue.database)

    def other_claimer(self, queue: Any) -> Any:
        return make(other_node(self, queue.database))


class PostgresQueueInlineConformanceTests(QueueConformanceMixin, TestCase):
    """The contract again with the database not started (queries inline, as the txmail command runs them)."""

    def make_queue(self) -> Any:
        return make(upgraded_database(self, start=False))

    def reopen_queue(self, queue: Any) -> Any:
        return make(queue.database)

    def other_claimer(self, queue: Any) -> Any:
        from txmail.pg.db import Database

        return make(Database(queue.database.dsn, reactor=queue.database.reactor))


class PostgresQueueStorageTests(TestCase):
    """How the entries are stored: the message in pieces, claims in columns."""

    def setUp(self) -> None:
        self.database = upgraded_database(self)
        self.queue = make(self.database, node="node-a")

    def rows(self, sql: str, *args: Any) -> Any:
        return self.database.run_sync(lambda conn: conn.execute(sql, args).fetchall())

    @defer.inlineCallbacks
    def test_message_in_pieces(self) -> Gen:
        """A message is stored in pieces of CHUNK_SIZE octets (the last shorter), in order."""
        from txmail.pg.queue import CHUNK_SIZE

        size = 2 * CHUNK_SIZE + 1000
        queue_id = yield self.queue.enqueue(ENVELOPE, pattern_source(size), ["bob@remote.test"])
        pieces = self.rows(
            "SELECT position, length(data) FROM queue_chunks WHERE queue_id = %s ORDER BY position", queue_id
        )
        self.assertEqual(pieces, [(0, CHUNK_SIZE), (1, CHUNK_SIZE), (2, 1000)])
        f = yield self.queue.open_entry_message(queue_id)
        import hashlib

        digest = hashlib.sha256()
        try:
            while chunk := f.read(65536):
                digest.update(chunk)
        finally:
            f.close()
        self.assertEqual(digest.hexdigest(), pattern_digest(size))

    @defer.inlineCallbacks
    def test_untyped_fields_load(self) -> Gen:
        """
        ``fields`` as the runner wrote them before recipient states were
        typed (only the keys it had set) load as RecipientStates; a state
        written now is the same JSON with the defaults beyond the first four
        keys left out.
        """
        from psycopg.types.json import Jsonb

        from txmail.model import RecipientState

        queue_id = yield self.queue.enqueue(
            ENVELOPE, pattern_source(10), ["bob@remote.test", "carol@remote.test"]
        )
        old = json.loads(UNTYPED_ENTRY)["recipients"]["carol@remote.test"]
        self.database.run_sync(
            lambda conn: conn.execute(
                "UPDATE queue_recipients SET fields = %s WHERE queue_id = %s AND address = %s",
                (Jsonb(old), queue_id, "bob@remote.test"),
            )
        )
        entry = yield self.queue.get_entry(queue_id)
        bob = UNTYPED_STATES["carol@remote.test"]
        self.assertEqual(entry.recipients, {"bob@remote.test": bob, "carol@remote.test": RecipientState()})
        yield self.queue.update_recipients(queue_id, {"bob@remote.test": bob})
        self.assertEqual(
            self.rows("SELECT fields FROM queue_recipients WHERE queue_id = %s ORDER BY position", queue_id),
            [(old,), ({"state": "pending", "attempts": 0, "next_attempt": None, "last_error": None},)],
        )

    @defer.inlineCallbacks
    def test_delete_removes_everything(self) -> Gen:
        """Deleting an entry removes its recipients and pieces."""
        queue_id = yield self.queue.enqueue(ENVELOPE, pattern_source(1000), ["bob@remote.test"])
        yield self.queue.delete_entry(queue_id)
        for table in ("queue_entries", "queue_recipients", "queue_chunks"):
            self.assertEqual(self.rows(f"SELECT count(*) FROM {table}"), [(0,)])

    @defer.inlineCallbacks
    def test_claim_columns(self) -> Gen:
        """A claim records the node and the end of its lease; releasing clears both."""
        queue_id = yield self.queue.enqueue(ENVELOPE, pattern_source(100), ["bob@remote.test"])
        (before,) = self.rows("SELECT extract(epoch FROM clock_timestamp())::float8")[0]
        yield self.queue.claim(None, 600)
        ((node, until),) = self.rows("SELECT claimed_by, lease_until FROM queue_entries")
        self.assertEqual(node, "node-a")
        self.assertTrue(before + 599 <= until <= before + 660, until - before)
        yield self.queue.release_claim(queue_id)
        self.assertEqual(self.rows("SELECT claimed_by, lease_until FROM queue_entries"), [(None, None)])

    @defer.inlineCallbacks
    def test_concurrent_claims_disjoint(self) -> Gen:
        """Four nodes claiming at once, a few entries at a time, never get the same entry."""
        ids = []
        for n in range(40):
            ids.append((yield self.queue.enqueue(ENVELOPE, pattern_source(100 + n), ["bob@remote.test"])))
        queues = [make(other_node(self, self.database), node=f"node-{n}") for n in range(4)]
        got: list[str] = []
        while True:
            batches = yield defer.gatherResults([q.claim(3, 600) for q in queues])
            taken = [e.queue_id for batch in batches for e in batch]
            if not taken:
                break
            got.extend(taken)
        self.assertEqual(sorted(got), sorted(ids))
        self.assertEqual(len(got), len(set(got)))
