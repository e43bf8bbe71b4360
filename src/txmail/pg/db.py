"""
The connection to PostgreSQL every PostgreSQL backend shares: one
:class:`Database` per process, configured by ``[postgresql]``.

How it keeps the reactor free
-----------------------------
psycopg's synchronous API blocks, so every query runs in a thread:

* a ``psycopg_pool.ConnectionPool`` (``min_connections`` to
  ``max_connections`` connections, opened in the background when the
  service starts, so a database that is down at start-up is retried rather
  than fatal);
* a dedicated Twisted ``ThreadPool`` of ``max_connections`` threads: as
  many threads as connections, so a thread never waits for a connection
  another thread holds, and the server's general thread pool (file work,
  DNS) is never taken by slow queries;
* :meth:`Database.run` hands ``fn(conn, *args)`` to that thread pool
  (``deferToThreadPool``) and returns a Deferred of its result.  ``fn``
  runs in one transaction: committed when it returns, rolled back when it
  raises.

When the database has not been started (the ``txmail`` command, a test that
builds a directory before starting the server) :meth:`Database.run` works
inline instead, on a connection of its own, and returns a Deferred that has
already fired, like :meth:`txmail.service.ThreadPoolService.run_blocking`.

Connection failures come out as :class:`txmail.errors.DatabaseError`; errors
of ``fn`` itself (including txmail's own, such as
:class:`~txmail.errors.UserExists`) pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from txmail import _twisted
from txmail.errors import DatabaseError
from txmail.pg import require_psycopg

__all__ = ["Database", "DatabaseService", "database_from_settings"]

_T = TypeVar("_T")

#: Seconds to wait for a connection from the pool before giving up.
POOL_TIMEOUT = 30.0
#: Seconds to wait for a new connection (libpq's connect_timeout).
CONNECT_TIMEOUT = 10


class Database:
    """
    A PostgreSQL database reached through a connection pool and a thread pool.

    Args:
        dsn: a libpq connection string (``"host=/run/postgresql dbname=txmail"``
            or ``"postgresql://txmail@db.example/txmail"``).
        min_connections, max_connections: the pool's bounds.
        reactor: the reactor whose thread results are delivered in; the
            global one by default.

    Raises:
        ConfigError: psycopg or psycopg_pool is not installed.
    """

    log = Logger()

    def __init__(
        self, dsn: str, *, min_connections: int = 1, max_connections: int = 10, reactor: Any = None
    ) -> None:
        self._psycopg, self._psycopg_pool = require_psycopg()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.dsn = dsn
        self.min_connections = min_connections
        self.max_connections = max(max_connections, min_connections, 1)
        self.reactor = reactor
        self.threads = self._thread_pool()
        self.pool: Any = None

    def _thread_pool(self) -> ThreadPool:
        return ThreadPool(minthreads=0, maxthreads=self.max_connections, name="txmail-postgresql")

    @property
    def running(self) -> bool:
        """Whether :meth:`start` was called (and :meth:`stop` not since)."""
        return self.pool is not None

    def start(self) -> None:
        """Open the connection pool (in the background) and start the threads."""
        if self.pool is not None:
            return
        self.pool = self._psycopg_pool.ConnectionPool(
            self.dsn,
            min_size=self.min_connections,
            max_size=self.max_connections,
            kwargs={"connect_timeout": CONNECT_TIMEOUT},
            timeout=POOL_TIMEOUT,
            open=False,
            name="txmail",
        )
        self.pool.open(wait=False)
        if self.threads.joined:  # stopped before: a ThreadPool does not start twice
            self.threads = self._thread_pool()
        self.threads.start()

    def stop(self) -> None:
        """Stop the threads (waiting for the queries running) and close the pool."""
        pool, self.pool = self.pool, None
        if self.threads.started:
            self.threads.stop()
        if pool is not None:
            pool.close()

    def connect(self) -> Any:
        """
        A new connection of its own (not from the pool), for the admin
        command; the caller closes it.

        Raises:
            DatabaseError: the database cannot be reached.
        """
        try:
            return self._psycopg.connect(self.dsn, connect_timeout=CONNECT_TIMEOUT)
        except self._psycopg.OperationalError as e:
            raise DatabaseError(
                f"cannot connect to PostgreSQL ([postgresql] dsn): {_first_line(e)}"
            ) from None

    def run_sync(self, fn: Callable[..., _T], *args: Any) -> _T:
        """
        Run ``fn(conn, *args)`` in one transaction in the calling thread and
        return its result: on a pooled connection once started, else on a
        connection of its own.
        """
        try:
            if self.pool is not None:
                with self.pool.connection() as conn:
                    return fn(conn, *args)
            conn = self.connect()
            with conn:  # commits, or rolls back on an exception; then closes
                return fn(conn, *args)
        except self._psycopg_pool.PoolTimeout as e:
            raise DatabaseError(f"no PostgreSQL connection available: {_first_line(e)}") from None
        except self._psycopg.OperationalError as e:
            raise DatabaseError(f"PostgreSQL: {_first_line(e)}") from None

    def run(self, fn: Callable[..., _T], *args: Any) -> defer.Deferred[_T]:
        """
        Run ``fn(conn, *args)`` in one transaction on a thread of the
        database's pool; a Deferred of its result.  Inline (a Deferred that
        has fired) when the database is not started.
        """
        if self.pool is None:
            return defer.maybeDeferred(self.run_sync, fn, *args)
        return deferToThreadPool(self.reactor, self.threads, self.run_sync, fn, *args)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class DatabaseService(_twisted.Service):
    """
    Runs a :class:`Database` (its pool and threads) while the service runs,
    and the start/stop of what depends on it (``start()``/``stop()``
    methods, such as :class:`txmail.pg.directory.PostgresDirectory`'s
    domain refresh), after the database starts and before it stops.
    """

    def __init__(self, database: Database, dependents: Iterable[Any] = ()) -> None:
        self.database = database
        self.dependents = list(dependents)

    def startService(self) -> None:
        super().startService()
        self.database.start()
        for dependent in self.dependents:
            dependent.start()

    def stopService(self) -> None:
        super().stopService()
        for dependent in reversed(self.dependents):
            dependent.stop()
        self.database.stop()


def database_from_settings(settings: Any, *, reactor: Any = None) -> Database:
    """
    The :class:`Database` of ``[postgresql]`` in *settings*.

    Raises:
        ConfigError: no ``dsn`` is configured, or psycopg is not installed.
    """
    from txmail.errors import ConfigError

    if not settings.postgresql_dsn:
        raise ConfigError("PostgreSQL is configured but [postgresql] dsn is empty")
    return Database(
        settings.postgresql_dsn,
        min_connections=settings.postgresql_min_connections,
        max_connections=settings.postgresql_max_connections,
        reactor=reactor,
    )
