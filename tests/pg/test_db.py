"""txmail.pg.db: queries on the database's own threads, in transactions; inline when not started."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests._postgres import fresh_database, postgres_available
from txmail.config import Settings
from txmail.errors import ConfigError, DatabaseError

Gen = Generator[Any, Any, None]


def create_table(conn: Any) -> None:
    conn.execute("CREATE TABLE t (x integer)")


def insert(conn: Any, value: int, fail: bool = False) -> str:
    conn.execute("INSERT INTO t VALUES (%s)", (value,))
    if fail:
        raise ValueError("after the insert")
    return threading.current_thread().name


def values(conn: Any) -> list[int]:
    return [r[0] for r in conn.execute("SELECT x FROM t ORDER BY x")]


def restore_module(name: str, module: Any) -> None:
    if module is None:
        sys.modules.pop(name, None)
    else:
        sys.modules[name] = module


class DatabaseTests(TestCase):
    def setUp(self) -> None:
        from txmail.pg.db import Database

        self.database = Database(fresh_database(self), min_connections=1, max_connections=3, reactor=reactor)
        self.database.run_sync(create_table)

    @defer.inlineCallbacks
    def test_run_on_threads(self) -> Gen:
        """Started, run() works on the database's threads and commits; the threads are as many as connections."""
        self.database.start()
        self.addCleanup(self.database.stop)
        self.assertTrue(self.database.running)
        self.assertEqual(self.database.threads.max, 3)
        names = yield defer.gatherResults([self.database.run(insert, n) for n in range(6)])
        self.assertTrue(all("txmail-postgresql" in name for name in names), names)
        self.assertEqual((yield self.database.run(values)), list(range(6)))

    @defer.inlineCallbacks
    def test_run_rolls_back(self) -> Gen:
        """An exception of fn rolls its transaction back and fails the Deferred with it."""
        self.database.start()
        self.addCleanup(self.database.stop)
        yield self.assertFailure(self.database.run(insert, 1, True), ValueError)
        self.assertEqual((yield self.database.run(values)), [])

    def test_run_inline(self) -> None:
        """Not started, run() works in the calling thread and returns a Deferred that has fired."""
        self.assertFalse(self.database.running)
        name = self.successResultOf(self.database.run(insert, 7))
        self.assertEqual(name, threading.current_thread().name)
        self.assertEqual(self.successResultOf(self.database.run(values)), [7])
        self.failureResultOf(self.database.run(insert, 8, True), ValueError)
        self.assertEqual(self.database.run_sync(values), [7])

    @defer.inlineCallbacks
    def test_stop_twice_and_restart(self) -> Gen:
        """Stopping twice, or without starting, is harmless; a stopped database starts again."""
        self.database.stop()
        self.database.start()
        self.database.stop()
        self.database.stop()
        self.assertFalse(self.database.running)
        self.database.start()
        self.addCleanup(self.database.stop)
        self.assertIn("txmail-postgresql", (yield self.database.run(insert, 1)))

    def test_service_runs_dependents(self) -> None:
        """DatabaseService starts the database then its dependents, and stops them in reverse."""
        from txmail.pg.db import DatabaseService

        events: list[tuple[str, bool]] = []
        database = self.database

        class Dependent:
            def start(self) -> None:
                events.append(("start", database.running))

            def stop(self) -> None:
                events.append(("stop", database.running))

        service = DatabaseService(database, (Dependent(),))
        service.startService()
        self.assertTrue(self.database.running)
        service.stopService()
        self.assertFalse(self.database.running)
        self.assertEqual(events, [("start", True), ("stop", True)])


class UnreachableTests(SynchronousTestCase):
    """A database that cannot be reached is a DatabaseError with libpq's reason."""

    def setUp(self) -> None:
        reason = postgres_available()
        if reason is not None:
            raise SkipTest(reason)

    def test_unreachable(self) -> None:
        from txmail.pg.db import Database

        database = Database(f"host={os.path.abspath(self.mktemp())} dbname=txmail")
        error = self.assertRaises(DatabaseError, database.run_sync, values)
        self.assertIn("cannot connect to PostgreSQL ([postgresql] dsn)", str(error))
        self.failureResultOf(database.run(values), DatabaseError)


class SettingsTests(SynchronousTestCase):
    """database_from_settings and the missing-psycopg error."""

    def test_from_settings(self) -> None:
        reason = postgres_available()
        if reason is not None:
            raise SkipTest(reason)
        from txmail.pg.db import database_from_settings

        settings = Settings.validated(
            postgresql_dsn="dbname=mail", postgresql_min_connections=2, postgresql_max_connections=5
        )
        database = database_from_settings(settings)
        self.assertEqual(
            (database.dsn, database.min_connections, database.max_connections), ("dbname=mail", 2, 5)
        )
        self.assertEqual(database.threads.max, 5)
        error = self.assertRaises(ConfigError, database_from_settings, Settings.validated())
        self.assertIn("[postgresql] dsn is empty", str(error))

    def test_psycopg_missing(self) -> None:
        """Without psycopg, asking for PostgreSQL names the extra to install."""
        from txmail.pg import require_psycopg
        from txmail.pg.db import Database

        saved = sys.modules.pop("psycopg", None)
        sys.modules["psycopg"] = None  # type: ignore[assignment]  # import psycopg: ImportError
        self.addCleanup(restore_module, "psycopg", saved)
        error = self.assertRaises(ConfigError, require_psycopg)
        self.assertIn("pip install 'txmail[postgresql]'", str(error))
        self.assertIn("psycopg is not installed", str(error))
        self.assertRaises(ConfigError, Database, "dbname=mail")


class OptionalDependencyTests(SynchronousTestCase):
    """The embedded default works without psycopg; asking for PostgreSQL without it names the extra."""

    def test_default_without_psycopg(self) -> None:
        """With psycopg unimportable, the server modules load and the file directory's commands work."""
        import subprocess

        data_dir = os.path.abspath(self.mktemp())
        code = (
            "import sys\n"
            "sys.modules['psycopg'] = None\n"
            "sys.modules['psycopg_pool'] = None\n"
            "import txmail.service, txmail.pg, txmail.pg.directory\n"
            "from txmail import cli\n"
            f"status = cli.main(['user', 'add', 'alice@localhost', '--password-stdin', '--data-dir', {data_dir!r}])\n"
            f"status += cli.main(['user', 'list', '--data-dir', {data_dir!r}])\n"
            "sys.exit(status)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", code],
            input=b"pw\n",
            capture_output=True,
            timeout=120,
            env=os.environ.copy(),
        )
        self.assertEqual(result.returncode, 0, result.stderr.decode())
        self.assertEqual(result.stdout.decode().splitlines()[-1], "alice@localhost")

    def test_build_service_without_psycopg(self) -> None:
        """build_service on a PostgreSQL directory without psycopg: a ConfigError naming the extra."""
        from txmail.service import build_service

        saved = sys.modules.pop("psycopg", None)
        sys.modules["psycopg"] = None  # type: ignore[assignment]
        self.addCleanup(restore_module, "psycopg", saved)
        settings = Settings.validated(
            data_dir=os.path.abspath(self.mktemp()),
            directory_backend="postgresql",
            postgresql_dsn="dbname=mail",
        )
        error = self.assertRaises(ConfigError, build_service, settings)
        self.assertIn("pip install 'txmail[postgresql]'", str(error))
