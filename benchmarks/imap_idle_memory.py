"""
IMAP memory per idle connection: what N logged-in, quiet clients cost a server.

Opens ``--connections`` (1,000) IMAP connections to each server, one after the other, each
doing ``LOGIN`` (spread over ``user1..user10``, ``--users``) and then, with ``--mode idle``,
``SELECT INBOX`` (empty) and ``IDLE`` (RFC 2177); with ``--mode login`` (the default) nothing
more.  ``--mode select`` first drops ``--messages`` (5,000) messages of ``--size`` bytes into
the ``new/`` of one user's INBOX (``--select-user``, ``user10``: ``imap_fetch.py`` and
``imap_sync.py`` refill ``user1``'s) with ``_bench.populate`` as ``imap_fetch.py`` does, and
puts every connection on that one user: each does ``LOGIN``,
``SELECT INBOX`` of the same N-message mailbox and ``IDLE``, the case of issue 12 section 4.
All stay open while the server's memory is read, then all are closed.

``dovecot``
    Debian's Dovecot, the private instance of ``/work/shared/bench/refstack.sh`` on
    127.0.0.1:11143.  It forks one ``imap`` process per connection, so its memory is the sum
    over the master and **all** its descendants (``imap``, ``imap-login``, ``auth``,
    ``anvil``, ...) of ``Pss`` from ``/proc/PID/smaps_rollup`` (shared pages divided among the
    processes sharing them; also ``Rss``, which counts shared library pages once per process).
``txmail``
    ``twistd -n mailserver --imap tcp:PORT:interface=127.0.0.1`` from ``/work/txvenv``, a fresh
    data directory with users ``user1..userN``; one process: ``VmRSS`` of twistd (``Pss`` is
    the same number for a single process).

Before the N connections, one warm-up connection per user (the same commands, then LOGOUT)
loads whatever a server loads once; the baseline is read after it.  Memory per connection =
(memory with N connections open - baseline) / N.  The soft ``RLIMIT_NOFILE`` is raised for
this script (and the twistd it starts) to fit N sockets.  Results: a table on stdout and
JSON in ``benchmarks/results/``.

Run as root::

    python3 benchmarks/imap_idle_memory.py --connections 1000
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    PASSWORD,
    BenchError,
    Workload,
    add_txmail_users,
    descendants,
    free_port,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    make_workload,
    parse_servers,
    populate,
    print_failures,
    proc_memory,
    record_header,
    run_script,
    source_commit,
    start_twistd,
    stop_process,
    wait_for_port,
    write_results,
)
from imap_fetch import DovecotImap  # sibling script

__all__ = ["DovecotIdle", "TxmailIdle", "main", "open_connection", "server_memory"]

HOST = "127.0.0.1"


# --------------------------------------------------------------------------- the client


def _read_until(sock: socket.socket, buf: bytearray, marker: bytes) -> bytes:
    """Read until a line starting with ``marker``; return that line (buffer consumed)."""
    while True:
        for line in bytes(buf).split(b"\r\n")[:-1]:
            if line.startswith(marker):
                del buf[:]
                return line
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"server closed the connection waiting for {marker!r}")
        buf += chunk


def open_connection(port: int, user: str, mode: str, timeout: float) -> socket.socket:
    """Connect, LOGIN; with mode ``idle`` or ``select`` also SELECT INBOX and IDLE (RFC 2177)."""
    sock = socket.create_connection((HOST, port), timeout=timeout)
    buf = bytearray()
    try:
        _read_until(sock, buf, b"* OK")
        sock.sendall(f"a1 LOGIN {user} {PASSWORD}\r\n".encode())
        line = _read_until(sock, buf, b"a1 ")
        if not line.startswith(b"a1 OK"):
            raise BenchError(f"LOGIN {user}: {line[:200]!r}")
        if mode in ("idle", "select"):
            sock.sendall(b"a2 SELECT INBOX\r\n")
            line = _read_until(sock, buf, b"a2 ")
            if not line.startswith(b"a2 OK"):
                raise BenchError(f"SELECT: {line[:200]!r}")
            sock.sendall(b"a3 IDLE\r\n")
            _read_until(sock, buf, b"+")
    except BaseException:
        sock.close()
        raise
    return sock


def close_connection(sock: socket.socket, mode: str) -> None:
    """End IDLE and LOGOUT politely (the reply is not waited for), then close."""
    with contextlib.suppress(OSError):
        sock.sendall((b"DONE\r\n" if mode != "login" else b"") + b"z LOGOUT\r\n")
    sock.close()


# --------------------------------------------------------------------------- servers


class DovecotIdle(DovecotImap):
    """Dovecot via refstack.sh: memory of the master and every descendant."""

    def start(self, users: list[str], scratch: Path, work: Workload | None = None) -> None:
        """``refstack.sh start``; with ``work``, ``users[0]``'s INBOX emptied and refilled."""
        self.setup()
        if work is not None:
            self.refill(work, users[0], "dovecot imap")
        wait_for_port(self.port, None, 10, "dovecot imap")

    def memory(self) -> dict[str, Any]:
        """Sum of Pss and Rss (kB) over the process tree, and the process counts by name."""
        pid = self.master_pid()
        total = {"Pss": 0, "Rss": 0, "processes": 0}
        names: dict[str, int] = {}
        for p, comm in descendants(pid) if pid else []:
            mem = proc_memory(p)
            total["Pss"] += mem.get("Pss", 0)
            total["Rss"] += mem.get("VmRSS", 0)
            total["processes"] += 1
            names[comm] = names.get(comm, 0) + 1
        return {**total, "by_name": names}

    def stop(self) -> None:
        """Empty the INBOX refilled (if any); stop Dovecot/Postfix only if started here."""
        self.teardown()
        self.maildir = None


class TxmailIdle:
    """``twistd -n mailserver --imap ...`` in a fresh data directory with ``users``."""

    name = "txmail"

    def __init__(self, venv_bin: str, start_timeout: float) -> None:
        self.twistd = str(Path(venv_bin) / "twistd")
        self.txmail = str(Path(venv_bin) / "txmail")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, users: list[str], scratch: Path, work: Workload | None = None) -> None:
        """Add the users (``work`` into ``users[0]``'s ``new/``), start twistd, wait for IMAP."""
        run_dir = scratch / "txmail"
        data = run_dir / "data"
        shutil.rmtree(run_dir, ignore_errors=True)
        data.mkdir(parents=True)
        add_txmail_users(self.txmail, data, [f"{user}@{DOMAIN}" for user in users], run_dir)
        if work is not None:
            populate(data / "mail" / DOMAIN / users[0], work, None)
        self.port = free_port()
        self.proc = start_twistd(
            self.twistd,
            run_dir,
            [
                "--data-dir",
                str(data),
                "--domain",
                DOMAIN,
                "--smtp",
                f"tcp:0:interface={HOST}",
                "--submission",
                f"tcp:0:interface={HOST}",
                "--imap",
                f"tcp:{self.port}:interface={HOST}",
            ],
            ports=[self.port],
            start_timeout=self.start_timeout,
        )

    def memory(self) -> dict[str, Any]:
        """VmRSS, VmHWM and Pss of twistd (kB)."""
        mem = proc_memory(self.proc.pid) if self.proc else {}
        return {
            "Rss": mem.get("VmRSS", 0),
            "Pss": mem.get("Pss", 0),
            "VmHWM": mem.get("VmHWM", 0),
            "processes": 1,
        }

    def stop(self) -> None:
        """Stop twistd."""
        stop_process(self.proc, 20)
        self.proc = None

    def info(self) -> dict[str, Any]:
        """Which twistd."""
        return {"twistd": self.twistd, "port": self.port, "tree_at_run": source_commit()}


def server_memory(server: Any) -> dict[str, Any]:
    """The server's memory now (see the server classes)."""
    return server.memory()


# --------------------------------------------------------------------------- measuring


def measure(
    server: Any, n: int, users: list[str], mode: str, settle: float, timeout: float
) -> dict[str, Any]:
    """Warm up, read the baseline, open ``n`` connections, read again, close them all."""
    for user in users:
        close_connection(open_connection(server.port, user, mode, timeout), mode)
    time.sleep(settle)
    base = server_memory(server)
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            socks.append(open_connection(server.port, users[i % len(users)], mode, timeout))
        opened = time.monotonic() - t0
        time.sleep(settle)
        loaded = server_memory(server)
    finally:
        for sock in socks:
            close_connection(sock, mode)
    time.sleep(settle)
    after = server_memory(server)
    out = {
        "connections": n,
        "open_seconds": opened,
        "baseline": base,
        "loaded": loaded,
        "after_close": after,
        "rss_per_conn_kb": (loaded["Rss"] - base["Rss"]) / n,
        "pss_per_conn_kb": (loaded["Pss"] - base["Pss"]) / n,
    }
    log(
        f"{server.name}: {n} connections opened in {opened:.1f} s; per connection "
        f"Rss {out['rss_per_conn_kb']:.0f} kB, Pss {out['pss_per_conn_kb']:.0f} kB "
        f"(baseline Pss {base['Pss'] / 1024:.1f} MB, loaded {loaded['Pss'] / 1024:.1f} MB, "
        f"after close {after['Pss'] / 1024:.1f} MB; {loaded['processes']} processes)"
    )
    return out


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--connections", type=int, default=1000, help="idle connections per server")
    p.add_argument(
        "--mode",
        choices=("login", "idle", "select"),
        default="login",
        help="login: LOGIN then nothing; idle: LOGIN, SELECT INBOX (empty), IDLE; "
        "select: the same with --messages in user1's INBOX",
    )
    p.add_argument(
        "--messages", type=int, default=5000, help="--mode select: messages dropped into the INBOX"
    )
    p.add_argument("--size", type=int, default=2048, help="--mode select: bytes per message")
    p.add_argument("--seed", type=int, default=12, help="--mode select: workload seed")
    p.add_argument(
        "--users", type=int, default=10, help="connections spread over user1..userN (not with --mode select)"
    )
    p.add_argument(
        "--select-user", default="user10", help="--mode select: the one user, whose INBOX is filled"
    )
    p.add_argument("--servers", default="dovecot,txmail", help="comma-separated: dovecot, txmail")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before reading memory")
    p.add_argument("--timeout", type=float, default=60, help="socket timeout, seconds")
    p.add_argument(
        "--refstack",
        default="/work/shared/bench/refstack.sh",
        help="script that starts the reference Dovecot",
    )
    p.add_argument(
        "--txmail-bin",
        default="/work/txvenv/bin",
        help="directory holding txmail's twistd and txmail (non-editable install)",
    )
    p.add_argument("--txmail-start-timeout", type=float, default=30)
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    parse_servers(p, args, {"dovecot", "txmail"})
    if args.connections < 1 or args.users < 1:
        p.error("--connections and --users must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the measurement; exit status 1 if any server failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.connections + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        log(f"RLIMIT_NOFILE soft limit raised from {soft} to {new}")
    users = [args.select_user] if args.mode == "select" else [f"user{i}" for i in range(1, args.users + 1)]
    work = None
    if args.mode == "select":
        log(f"generating {args.messages} messages of {args.size} bytes")
        work = make_workload(args.messages, args.size, users[0], args.seed)
    scratch = Path(tempfile.mkdtemp(prefix="imapidle-"))
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    infos: dict[str, Any] = {}
    for name in args.server_list:
        server: Any = (
            DovecotIdle(args.refstack, False)
            if name == "dovecot"
            else TxmailIdle(args.txmail_bin, args.txmail_start_timeout)
        )
        try:
            server.start(users, scratch, work)
            results[name] = measure(server, args.connections, users, args.mode, args.settle, args.timeout)
        except (BenchError, OSError) as e:
            failures[name] = f"{type(e).__name__}: {e}"
            log(f"{name}: FAILED: {e}")
        finally:
            infos[name] = server.info()
            server.stop()
    shutil.rmtree(scratch, ignore_errors=True)

    inbox = f", INBOX of {args.messages} messages" if work is not None else ""
    print(
        f"\nIMAP memory per idle connection: {args.connections} connections, mode "
        f"{args.mode}, spread over {len(users)} users{inbox}"
    )
    head = (
        f"{'server':<8} {'Pss/conn kB':>11} {'Rss/conn kB':>11} {'baseline Pss MB':>15} "
        f"{'loaded Pss MB':>13} {'processes':>9} {'open s':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for name, r in results.items():
        print(
            f"{name:<8} {r['pss_per_conn_kb']:>11.1f} {r['rss_per_conn_kb']:>11.1f} "
            f"{r['baseline']['Pss'] / 1024:>15.1f} {r['loaded']['Pss'] / 1024:>13.1f} "
            f"{r['loaded']['processes']:>9} {r['open_seconds']:>7.1f}"
        )
    if "dovecot" in results and "txmail" in results:
        d, t = results["dovecot"], results["txmail"]
        print(
            f"txmail/dovecot: Pss {t['pss_per_conn_kb'] / d['pss_per_conn_kb']:.2f}x, "
            f"Rss {t['rss_per_conn_kb'] / d['rss_per_conn_kb']:.2f}x"
        )
    print_failures(failures)
    record = {
        **record_header("imap_idle_memory", args),
        "machine": machine_info(),
        "servers": infos,
        "results": results,
        "failures": failures,
    }
    write_results(record, "imap_idle_memory", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
