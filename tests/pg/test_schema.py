"""The PostgreSQL schema: migrations, txmail db upgrade's idempotence and lock, the version check."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._postgres import fresh_database
from txmail.errors import SchemaTooOld

Gen = Generator[Any, Any, None]


def tables(conn: Any) -> list[str]:
    rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [r[0] for r in rows]


class MigrationFilesTests(SynchronousTestCase):
    """The package ships its migrations numbered from 1, each number once (a gap is allowed)."""

    def test_migrations(self) -> None:
        from txmail.pg.schema import LATEST_VERSION, migrations

        found = migrations()
        versions = [m.version for m in found]
        self.assertEqual(versions, sorted(set(versions)))
        self.assertEqual((versions[0], versions[-1]), (1, LATEST_VERSION))
        self.assertIn("sieve", [m.name for m in found])
        self.assertEqual(found[0].name, "directory")
        self.assertIn("CREATE TABLE users", found[0].sql)


class UpgradeTests(TestCase):
    """upgrade() creates the schema once, records it, and may run again or concurrently."""

    def setUp(self) -> None:
        from txmail.pg.db import Database

        self.database = Database(fresh_database(self))

    def test_upgrade_empty(self) -> None:
        """An empty database goes from 0 to the latest version and gets the directory's and the store's tables."""
        from txmail.pg.schema import LATEST_VERSION, current_version, upgrade

        self.assertEqual(self.database.run_sync(current_version), 0)
        self.assertEqual(self.database.run_sync(upgrade), (0, LATEST_VERSION))
        self.assertEqual(self.database.run_sync(current_version), LATEST_VERSION)
        found = set(self.database.run_sync(tables))
        directory = {"alias_targets", "aliases", "domains", "schema_version", "users"}
        store = {"mail_users", "mailboxes", "subscriptions", "bodies", "body_chunks", "messages", "expunged"}
        store |= {"maildrop_locks", "annotations", "urlauth_keys", "sieve_scripts"}
        queue = {"queue_entries", "queue_recipients", "queue_chunks", "mta_sts_policies"}
        self.assertEqual(found & (directory | store | queue), directory | store | queue)

    def test_upgrade_idempotent(self) -> None:
        """A second upgrade does nothing: same version, one schema_version row per migration."""
        from txmail.pg.schema import LATEST_VERSION, migrations, upgrade

        self.database.run_sync(upgrade)
        self.assertEqual(self.database.run_sync(upgrade), (LATEST_VERSION, LATEST_VERSION))
        rows = self.database.run_sync(
            lambda conn: conn.execute("SELECT version, name FROM schema_version ORDER BY version").fetchall()
        )
        self.assertEqual(rows, [(m.version, m.name) for m in migrations()])
        self.assertEqual(rows[:3], [(1, "directory"), (2, "store"), (3, "queue")])

    @defer.inlineCallbacks
    def test_concurrent_upgrades(self) -> Gen:
        """Upgrades started at once (two nodes) take turns under the advisory lock: one does the work."""
        from txmail.pg.schema import LATEST_VERSION, upgrade

        results = yield defer.gatherResults(
            [threads.deferToThread(self.database.run_sync, upgrade) for _ in range(3)], consumeErrors=True
        )
        self.assertEqual(sorted(results), [(0, LATEST_VERSION)] + [(LATEST_VERSION, LATEST_VERSION)] * 2)

    def test_failed_migration_rolls_back(self) -> None:
        """A migration that fails leaves the database as it was (one transaction)."""
        from txmail.pg import schema

        broken = schema.Migration(1, "directory", "CREATE TABLE half (x int); SELECT no_such_function();")
        self.patch(schema, "migrations", lambda: (broken,))
        import psycopg

        self.assertRaises(psycopg.errors.UndefinedFunction, self.database.run_sync, schema.upgrade)
        self.assertEqual(self.database.run_sync(tables), [])
        self.assertEqual(self.database.run_sync(schema.current_version), 0)


class GapTests(TestCase):
    """A migration numbered below the highest applied one (a branch merged late) is applied by the next upgrade."""

    def setUp(self) -> None:
        from txmail.pg.db import Database

        self.database = Database(fresh_database(self))

    def test_gap_filled_later(self) -> None:
        from txmail.pg import schema

        one = schema.Migration(1, "one", "CREATE TABLE one (x int)")
        two = schema.Migration(2, "two", "CREATE TABLE two (x int)")
        three = schema.Migration(3, "three", "CREATE TABLE three (x int)")
        self.patch(schema, "LATEST_VERSION", 3)
        self.patch(schema, "migrations", lambda: (one, three))
        self.assertEqual(self.database.run_sync(schema.upgrade), (0, 3))
        self.assertEqual(self.database.run_sync(schema.require_current), 3)
        self.patch(schema, "migrations", lambda: (one, two, three))
        self.assertRaises(SchemaTooOld, self.database.run_sync, schema.require_current)
        self.assertEqual(self.database.run_sync(schema.upgrade), (3, 3))
        self.assertEqual(self.database.run_sync(tables), ["one", "schema_version", "three", "two"])
        self.assertEqual(self.database.run_sync(schema.require_current), 3)


class RequireCurrentTests(TestCase):
    """The server's check: older schemas are refused with the command to run, newer ones accepted."""

    def setUp(self) -> None:
        from txmail.pg.db import Database

        self.database = Database(fresh_database(self))

    def test_empty_refused(self) -> None:
        from txmail.pg.schema import LATEST_VERSION, require_current

        error = self.assertRaises(SchemaTooOld, self.database.run_sync, require_current)
        self.assertEqual(
            str(error),
            f"the PostgreSQL schema is at version 0, this txmail needs {LATEST_VERSION}: "
            "run `txmail db upgrade` (with the same --config)",
        )

    def test_current_and_newer_accepted(self) -> None:
        from txmail.pg.schema import LATEST_VERSION, require_current, upgrade

        self.database.run_sync(upgrade)
        self.assertEqual(self.database.run_sync(require_current), LATEST_VERSION)
        self.database.run_sync(
            lambda conn: conn.execute("INSERT INTO schema_version (version, name) VALUES (99, 'future')")
        )
        self.assertEqual(self.database.run_sync(require_current), 99)
