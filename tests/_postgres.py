"""
A throwaway PostgreSQL cluster for tests (Debian's ``postgresql`` package,
15 here)::

    dsn = fresh_database(self)          # in a test or setUp: a new empty database

The first call in a test process runs ``initdb`` in a temporary directory
and starts ``postgres`` on it; the cluster serves every test of the process
and is stopped (and its directory removed) when the process exits.  Each
call of :func:`fresh_database` creates a new database (``CREATE DATABASE``
from ``template0``) and drops it when the test ends, so tests never see
each other's rows.

* The server listens on a Unix socket in its own temporary directory only
  (``listen_addresses = ''``): no TCP port is taken, so the processes of
  ``trial -j2`` (each with its own cluster) cannot collide, nor collide
  with anything else on the machine.
* ``fsync``, ``synchronous_commit`` and ``full_page_writes`` are off: the
  data is thrown away anyway.
* Authentication is ``trust`` for the superuser ``txmail`` (the socket
  directory is mode 0700).
* PostgreSQL refuses to run as root: as root (CI), ``initdb`` and
  ``postgres`` run as Debian's ``postgres`` system user (``runuser -u
  postgres --``), the temporary directory chowned to it.

Without the binaries (``/usr/lib/postgresql/*/bin``; Debian package
``postgresql``), without the ``postgres`` user when running as root, or
without psycopg (``txmail[postgresql]``), the test is skipped
(:class:`~twisted.trial.unittest.SkipTest`) with the reason.
"""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

from twisted.trial.unittest import SkipTest

__all__ = ["PostgresCluster", "cluster", "fresh_database", "postgres_available"]

_SUPERUSER = "txmail"
_counter = itertools.count(1)


def _bin_dir() -> str | None:
    """The newest PostgreSQL's binaries, or ``None``."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


def postgres_available() -> str | None:
    """``None`` when a cluster can be started here, else the reason it cannot."""
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as e:
        return f"psycopg is not installed ({e.name}; pip install 'txmail[postgresql]')"
    if _bin_dir() is None:
        return "PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb; Debian package postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root and runuser (util-linux) is missing"
    return None


@dataclass
class PostgresCluster:
    """A running throwaway cluster (see the module notes)."""

    directory: str
    bin_dir: str
    port: int = 5432

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.directory, "socket")

    @property
    def data_dir(self) -> str:
        return os.path.join(self.directory, "data")

    @property
    def log_path(self) -> str:
        return os.path.join(self.directory, "postgres.log")

    def dsn(self, dbname: str = "postgres") -> str:
        """The libpq connection string of *dbname*."""
        return f"host={self.socket_dir} port={self.port} user={_SUPERUSER} dbname={dbname}"

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def _command(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        result = subprocess.run(self._command(*args), capture_output=True, timeout=120, check=False)
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{output}\n{self.log()}")

    def start(self) -> None:
        os.makedirs(self.socket_dir, mode=0o700)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            os.path.join(self.bin_dir, "initdb"),
            "-D",
            self.data_dir,
            "-U",
            _SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-p {self.port}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                "-c max_connections=100",
                "-c shared_buffers=16MB",
            ]
        )
        self._run(
            os.path.join(self.bin_dir, "pg_ctl"),
            "start",
            "-w",
            "-t",
            "60",
            "-D",
            self.data_dir,
            "-l",
            self.log_path,
            "-o",
            options,
        )

    def stop(self) -> None:
        try:
            subprocess.run(
                self._command(
                    os.path.join(self.bin_dir, "pg_ctl"), "stop", "-D", self.data_dir, "-m", "immediate", "-w"
                ),
                capture_output=True,
                timeout=60,
                check=False,
            )
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def execute(self, statement: str) -> None:
        """Run one statement in the ``postgres`` database, outside a transaction."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement.encode("utf-8"))


_cluster: PostgresCluster | None = None
_failure: str | None = None


def cluster() -> PostgresCluster:
    """This process's cluster, started on first use (SkipTest when it cannot be)."""
    global _cluster, _failure
    reason = postgres_available()
    if reason is not None:
        raise SkipTest(reason)
    if _failure is not None:
        raise RuntimeError(_failure)
    if _cluster is None:
        bin_dir = _bin_dir()
        assert bin_dir is not None
        # Short and under /tmp: a Unix socket path has at most 107 octets.
        directory = tempfile.mkdtemp(prefix="txmail-pg-", dir="/tmp")
        os.chmod(directory, 0o700)
        candidate = PostgresCluster(directory, bin_dir)
        try:
            candidate.start()
        except Exception as e:
            candidate.stop()
            _failure = f"the test PostgreSQL cluster did not start: {e}"
            raise
        atexit.register(candidate.stop)
        _cluster = candidate
    return _cluster


def fresh_database(test: Any) -> str:
    """
    Create an empty database for *test*, dropped when it ends; its DSN.

    Raises:
        SkipTest: PostgreSQL or psycopg is not available here.
    """
    server = cluster()
    name = f"test_{os.getpid()}_{next(_counter)}"
    server.execute(f"CREATE DATABASE {name} TEMPLATE template0")
    test.addCleanup(server.execute, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    return server.dsn(name)
