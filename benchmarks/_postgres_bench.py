"""
A throwaway PostgreSQL cluster for the benchmarks (not a benchmark itself).

Like ``tests/_postgres.py`` (``initdb`` in a temporary directory, ``postgres`` on a Unix
socket only, ``trust`` for the superuser ``txmail``, run as Debian's ``postgres`` user when
the script runs as root), with one difference that matters for the figures: **durability is
left at PostgreSQL's defaults** (``fsync = on``, ``synchronous_commit = on``,
``full_page_writes = on``), so a commit is on disk before txmail answers 250.  The tests turn
all three off; a benchmark of durable ingest must not.

Only the settings a private cluster needs are given: the socket directory, no TCP listener,
``max_connections`` (enough for four txmail processes' pools and the benchmark's own
connections).  Everything else (``shared_buffers`` 128 MB, ``wal_level``, checkpoints...) is
the default of the installed PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["BenchCluster", "bin_dir"]

SUPERUSER = "txmail"


def bin_dir() -> str | None:
    """The newest PostgreSQL's binaries (``/usr/lib/postgresql/N/bin``), or None."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    return os.path.dirname(found[-1]) if found else None


class BenchCluster:
    """``initdb`` + ``pg_ctl start`` in a new ``/tmp/pgbench-*`` directory; :meth:`stop` removes it."""

    def __init__(self, binaries: str | None = None, max_connections: int = 100) -> None:
        self.bin_dir = binaries or bin_dir()
        if self.bin_dir is None:
            raise RuntimeError("PostgreSQL is not installed (/usr/lib/postgresql/*/bin/initdb)")
        self.max_connections = max_connections
        # Short and under /tmp: a Unix socket path has at most 107 octets.
        self.directory = tempfile.mkdtemp(prefix="pgbench-", dir="/tmp")
        os.chmod(self.directory, 0o700)
        self.port = 5432
        self.running = False

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
        """The libpq connection string of ``dbname``."""
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def _command(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def _run(self, *args: str) -> None:
        res = subprocess.run(self._command(*args), capture_output=True, timeout=120, check=False)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode("utf-8", "replace")
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{out}\n{self.log()[-3000:]}")

    def log(self) -> str:
        """The server log so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """initdb (data files synced: ``--no-sync`` is not used) and start the server."""
        os.makedirs(self.socket_dir, mode=0o700)
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (self.directory, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        assert self.bin_dir is not None
        self._run(
            os.path.join(self.bin_dir, "initdb"),
            "-D",
            self.data_dir,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        )
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-p {self.port}",
                f"-c max_connections={self.max_connections}",
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
        self.running = True

    def postmaster_pid(self) -> int | None:
        """The postmaster's PID (first line of ``postmaster.pid``); backends are its children."""
        try:
            return int(Path(self.data_dir, "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def settings(self) -> dict[str, str]:
        """The durability-relevant settings as the running server reports them."""
        import psycopg

        names = (
            "server_version",
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
            "max_connections",
            "commit_delay",
        )
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]

    def execute(self, statement: str) -> None:
        """One statement in the ``postgres`` database, outside a transaction."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(statement.encode())

    def stop(self) -> None:
        """``pg_ctl stop -m fast`` and remove the directory."""
        try:
            if self.running and self.bin_dir is not None:
                subprocess.run(
                    self._command(
                        os.path.join(self.bin_dir, "pg_ctl"), "stop", "-D", self.data_dir, "-m", "fast", "-w"
                    ),
                    capture_output=True,
                    timeout=120,
                    check=False,
                )
        finally:
            self.running = False
            shutil.rmtree(self.directory, ignore_errors=True)
