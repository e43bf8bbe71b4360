"""
The POP3 maildrop lock on PostgreSQL (:mod:`txmail.pg.maildrop`, offered
by :class:`txmail.pg.store.PostgresProvider`), between two nodes: two
providers on separate :class:`~txmail.pg.db.Database` objects (each a
node's pool) on one database.  A lock held on one node is refused on the
other, released it is free, a node that stops renewing (a dead node) loses
it after the lease, and renewals keep it.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from tests.pg._helpers import upgraded_database
from txmail.errors import DatabaseError
from txmail.interfaces import IMaildropLock, IMaildropLocks

Gen = Generator[Any, Any, None]

USER = "alice@example.test"
OTHER = "bob@example.test"


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class TwoNodeLockTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.database = upgraded_database(self)

    def node(self, **options: Any) -> Any:
        """A node's provider: its own Database (pool and threads) on the shared database."""
        from txmail.pg.db import Database
        from txmail.pg.store import PostgresProvider

        database = Database(self.database.dsn, min_connections=0, max_connections=2, reactor=reactor)
        database.start()
        self.addCleanup(database.stop)
        provider = PostgresProvider(database, **options)
        self.addCleanup(provider.stop)  # no renewal outlives the test
        return provider

    def rows(self) -> list[tuple[str, str, str]]:
        return self.database.run_sync(
            lambda conn: conn.execute(
                "SELECT address, token, node FROM maildrop_locks ORDER BY address"
            ).fetchall()
        )

    def expires(self, *, at: bool = False) -> float:
        """Seconds until USER's lease ends, on the database's clock (*at*: when, since the epoch)."""
        column = "expires" if at else "expires - now()"
        return float(
            self.database.run_sync(
                lambda conn: conn.execute(
                    f"SELECT extract(epoch FROM {column}) FROM maildrop_locks WHERE address = %s", (USER,)
                ).fetchone()[0]
            )
        )

    @defer.inlineCallbacks
    def test_held_against_the_other_node(self) -> Gen:
        """Node A holds alice's maildrop: B is refused (and so is A's second session); bob is free."""
        a, b = self.node(), self.node()
        self.assertTrue(verifyObject(IMaildropLocks, a))
        lock = yield a.lock_maildrop(USER)
        self.assertTrue(verifyObject(IMaildropLock, lock))
        self.assertEqual(lock.user, USER)
        self.assertIsNone((yield b.lock_maildrop(USER)))
        self.assertIsNone((yield a.lock_maildrop(USER)))
        other = yield b.lock_maildrop(OTHER)
        self.assertIsNotNone(other)
        self.assertEqual(self.rows(), [(USER, lock.token, a.node), (OTHER, other.token, b.node)])
        self.assertGreater(self.expires(), 100)  # the default lease: two minutes
        yield lock.release()
        yield other.release()

    @defer.inlineCallbacks
    def test_released(self) -> Gen:
        """Released on A (its row deleted), the maildrop is B's; A releasing again leaves B's row alone."""
        a, b = self.node(), self.node()
        lock = yield a.lock_maildrop(USER)
        yield lock.release()
        self.assertEqual(self.rows(), [])
        taken = yield b.lock_maildrop(USER)
        self.assertIsNotNone(taken)
        yield lock.release()
        self.assertEqual(self.rows(), [(USER, taken.token, b.node)])
        yield taken.release()
        self.assertEqual(self.rows(), [])

    @defer.inlineCallbacks
    def test_dead_node_taken_over_after_the_lease(self) -> Gen:
        """
        A stops renewing without releasing (it died): B is refused until
        the lease has run out, then takes the maildrop over.  A's late
        release does not remove B's row.
        """
        a, b = self.node(lock_lease=3), self.node(lock_lease=3)
        lock = yield a.lock_maildrop(USER)
        lock.stop_renewing()
        self.assertIsNone((yield b.lock_maildrop(USER)))
        yield sleep(0.5)
        self.assertIsNone((yield b.lock_maildrop(USER)))
        yield sleep(2.8)
        taken = yield b.lock_maildrop(USER)
        self.assertIsNotNone(taken)
        self.assertEqual(self.rows(), [(USER, taken.token, b.node)])
        yield lock.release()
        self.assertEqual(self.rows(), [(USER, taken.token, b.node)])
        yield taken.release()

    @defer.inlineCallbacks
    def test_renewal_keeps_it(self) -> Gen:
        """A live holder renews every third of the lease: after more than two leases B is still refused."""
        a, b = self.node(lock_lease=3), self.node(lock_lease=3)
        lock = yield a.lock_maildrop(USER)
        yield sleep(7)
        self.assertIsNone((yield b.lock_maildrop(USER)))
        self.assertGreater(self.expires(), 1)
        yield lock.release()
        self.assertIsNotNone((yield b.lock_maildrop(USER)))

    @defer.inlineCallbacks
    def test_renewal_failure_is_logged(self) -> Gen:
        """
        A renewal that fails is logged and the renewals go on (the next one
        works); a renewal that finds its row taken over stops them.
        """
        clock = task.Clock()
        a = self.node(lock_lease=30, clock=clock)
        lock = yield a.lock_maildrop(USER)
        before = self.expires(at=True)
        patched = self.patch(a.database, "run", lambda fn, *args: defer.fail(DatabaseError("unreachable")))
        clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(DatabaseError)), 1)
        self.assertTrue(lock._renewal.running)
        self.assertEqual(self.expires(at=True), before)
        patched.restore()
        yield sleep(0.3)  # the database's clock moves on
        yield lock.renew()
        self.assertGreater(self.expires(at=True), before + 0.2)
        self.assertTrue(lock._renewal.running)
        # Taken over meanwhile (its lease ended): the renewal notices and stops.
        yield self.database.run(lambda conn: conn.execute("UPDATE maildrop_locks SET token = 'other'"))
        yield lock.renew()
        self.assertIsNone(lock._renewal)
        self.assertEqual(self.rows(), [(USER, "other", a.node)])
        yield lock.release()

    @defer.inlineCallbacks
    def test_stop_stops_renewals(self) -> Gen:
        """The provider's stop (the server stops) stops its locks' renewals."""
        a = self.node()
        lock = yield a.lock_maildrop(USER)
        self.assertTrue(lock._renewal.running)
        a.stop()
        self.assertIsNone(lock._renewal)
        yield lock.release()

    def test_unreachable(self) -> None:
        """A database that cannot be reached: lock_maildrop fails with DatabaseError (POP3: SYS/TEMP)."""
        from txmail.pg.db import Database
        from txmail.pg.store import PostgresProvider

        provider = PostgresProvider(Database(f"host={self.mktemp()} dbname=nothing", reactor=reactor))
        self.failureResultOf(provider.lock_maildrop(USER), DatabaseError)

    def test_lease_must_be_positive(self) -> None:
        from txmail.pg.store import PostgresProvider

        self.assertRaises(ValueError, PostgresProvider, self.database, lock_lease=0)
