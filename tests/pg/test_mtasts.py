"""The MTA-STS policy cache in PostgreSQL: shared by nodes, read back after a restart."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from tests._postgres import fresh_database
from txmail.delivery.mtasts import MTASTS, CachedPolicy, parse_policy

POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 86400\r\n"


class PostgresPolicyCacheTests(TestCase):
    def setUp(self) -> None:
        from txmail.pg.db import Database
        from txmail.pg.schema import upgrade

        dsn = fresh_database(self)
        self.databases = []
        for _ in range(2):  # two nodes
            database = Database(dsn)
            database.start()
            self.addCleanup(database.stop)
            self.databases.append(database)
        self.databases[0].run_sync(upgrade)

    @defer.inlineCallbacks
    def test_put_get_and_replace(self) -> Any:
        """A policy one node stores is read by the other; a newer one replaces it."""
        from txmail.pg.mtasts import PostgresPolicyCache

        one, two = (PostgresPolicyCache(d) for d in self.databases)
        self.assertIsNone((yield two.get("remote.test")))
        yield one.put("Remote.test", CachedPolicy(parse_policy(POLICY), "id1", 1000.0))
        got = yield two.get("remote.test")
        self.assertEqual((got.policy_id, got.fetched_at, got.policy.mx), ("id1", 1000.0, ("mx.remote.test",)))
        yield two.put(
            "remote.test", CachedPolicy(parse_policy(POLICY.replace("enforce", "testing")), "id2", 2000.0)
        )
        got = yield one.get("remote.test")
        self.assertEqual((got.policy_id, got.policy.mode), ("id2", "testing"))

    @defer.inlineCallbacks
    def test_manager_uses_it(self) -> Any:
        """MTASTS fetches once; a second node's manager finds the policy in the database."""
        from txmail.pg.mtasts import PostgresPolicyCache

        fetches = []

        class Fetcher:
            def fetch(self, domain: str) -> defer.Deferred[str]:
                fetches.append(domain)
                return defer.succeed(POLICY)

        clock = task.Clock()
        clock.advance(1_000_000)

        def txt(name: str) -> defer.Deferred[list[bytes]]:
            return defer.succeed([b"v=STSv1; id=abc"])

        for database in self.databases:
            manager = MTASTS(txt, Fetcher(), PostgresPolicyCache(database), clock)
            found = yield manager.policy_for("remote.test")
            self.assertEqual(found.policy.mode, "enforce")
        self.assertEqual(fetches, ["remote.test"])
