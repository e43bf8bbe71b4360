"""
POP3 download throughput: one connection downloads a whole maildrop of small messages.

Measures, in one run and on the same messages, two POP3 servers each serving one user whose
Maildir holds ``--messages`` (5,000) generated messages of ``--size`` (10,240) bytes:

``dovecot``
    Debian's Dovecot (``dovecot-pop3d``), the private instance of
    ``/work/shared/bench/refstack.sh`` on 127.0.0.1:11110, Maildir
    ``/tmp/ref/maildir/user1/Maildir`` (owned by uid/gid 8).
``txmail``
    ``twistd -n mailserver --pop3 tcp:PORT:interface=127.0.0.1`` from ``/work/txvenv`` (a
    non-editable install), Maildir ``D/mail/example.test/user1``.

The same files are written straight into each Maildir's ``new/`` (both servers pick up mail
that another program dropped there), then one untimed warm-up session per server builds its
index, then ``--runs`` timed sessions per server, interleaved.  One session is: connect,
greeting, CAPA, USER/PASS, STAT, LIST, UIDL, RETR 1..N (nothing is deleted; ``--order
reverse`` or ``random`` retrieves in another order, where txmail's read-ahead of the next
message does not help), QUIT; the clock runs from ``connect()`` to the QUIT reply.  The client is this script (a raw socket, no
poplib), which checks every reply and every message's length and identity; RETRs are sent one
at a time (like poplib) unless ``--pipeline K`` keeps up to K in flight (RFC 2449 section
6.6, both servers advertise PIPELINING).  Results: a table on stdout and JSON in
``benchmarks/results/``.

Run as root (refstack.sh starts Dovecot; its Maildirs belong to ``mail``)::

    python3 benchmarks/pop3_download.py --runs 5
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    MB,
    PASSWORD,
    BenchError,
    RefDovecot,
    Workload,
    add_txmail_users,
    free_port,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    make_workdir,
    make_workload,
    parse_servers,
    populate,
    print_failures,
    record_header,
    run_script,
    start_twistd,
    stop_process,
    tree_cpu,
    txmail_version,
    write_results,
)

__all__ = [
    "DovecotServer",
    "Pop3Server",
    "SessionResult",
    "TxmailServer",
    "Workload",
    "download",
    "main",
    "make_workload",
]

HOST = "127.0.0.1"


# --------------------------------------------------------------------------- the client

class Pop3Error(BenchError):
    """The server answered something unexpected."""


class Reader:
    """Buffered reader of POP3 replies from a socket (RFC 1939 section 3)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.pos = 0
        self.received = 0

    def _fill(self) -> None:
        if self.pos > 1 << 20:  # keep the CRLF before pos: multiline() searches from there
            del self.buf[: self.pos - 2]
            self.pos = 2
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise Pop3Error("server closed the connection")
        self.received += len(chunk)
        self.buf += chunk

    def line(self) -> bytes:
        """One reply line without its CRLF."""
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                out = bytes(self.buf[self.pos: i])
                self.pos = i + 2
                return out
            self._fill()

    def status(self, what: str) -> bytes:
        """A single-line reply that must be ``+OK``; returns the text after it."""
        line = self.line()
        if not line.startswith(b"+OK"):
            raise Pop3Error(f"{what}: {line[:200]!r}")
        return line[4:]

    def multiline(self) -> bytes:
        """The lines of a multi-line reply after its status line, still dot-stuffed.

        Returns the bytes up to and including the CRLF before the terminating ``.`` line.
        The search starts at the status line's CRLF, so an empty reply (``.`` right after the
        status line) is found like any other.
        """
        start = self.pos
        scan = start - 2
        while True:
            i = self.buf.find(b"\r\n.\r\n", scan)
            if i >= 0:
                out = bytes(self.buf[start: i + 2])
                self.pos = i + 5
                return out
            scan = max(start - 2, len(self.buf) - 4)
            self._fill()
            shift = start - self.pos  # _fill may have dropped consumed bytes
            scan -= shift
            start -= shift


def unstuff(data: bytes) -> bytes:
    """Undo dot-stuffing (RFC 1939 section 3)."""
    if data.startswith(b".."):
        data = data[1:]
    return data.replace(b"\r\n..", b"\r\n.")


@dataclass
class SessionResult:
    """One POP3 session."""

    server: str
    run: int
    messages: int
    octets: int
    seconds: float
    login_seconds: float
    list_seconds: float
    retr_seconds: float
    msgs_per_sec: float
    mb_per_sec: float
    server_cpu: float
    client_cpu: float
    wire_bytes: int
    capabilities: list[str]


def retr_order(count: int, order: str, seed: int) -> list[int]:
    """The message numbers in the order the session retrieves them (``--order``)."""
    numbers = list(range(1, count + 1))
    if order == "reverse":
        numbers.reverse()
    elif order == "random":
        random.Random(seed).shuffle(numbers)
    return numbers


def download(port: int, user: str, work: Workload, pipeline: int, verify: bool,
             timeout: float, order: str = "sequential", seed: int = 0) -> dict[str, Any]:
    """One session: CAPA, USER/PASS, STAT, LIST, UIDL, RETR of every message, QUIT.

    The RETRs go in ``order`` (:func:`retr_order`); everything is checked.

    Every message must be one of the workload's (found by its Message-ID), each exactly once,
    with its length (and, with ``verify``, its SHA-1) after un-stuffing.
    """
    t0 = time.monotonic()
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        r = Reader(sock)
        r.status("greeting")
        sock.sendall(b"CAPA\r\n")
        r.status("CAPA")
        caps = [c.decode(errors="replace") for c in r.multiline().split(b"\r\n") if c]
        if pipeline > 1 and "PIPELINING" not in {c.split()[0].upper() for c in caps}:
            raise Pop3Error(f"--pipeline {pipeline} but the server does not advertise PIPELINING")
        sock.sendall(f"USER {user}\r\n".encode())
        r.status("USER")
        sock.sendall(f"PASS {PASSWORD}\r\n".encode())
        r.status("PASS")
        t_login = time.monotonic()
        sock.sendall(b"STAT\r\n")
        stat = r.status("STAT").split()
        count, octets = int(stat[0]), int(stat[1])
        if count != len(work.bodies) or octets != work.total_bytes:
            raise Pop3Error(f"STAT says {count} messages, {octets} octets; expected "
                            f"{len(work.bodies)}, {work.total_bytes} (stale Maildir?)")
        sock.sendall(b"LIST\r\n")
        r.status("LIST")
        sizes = [0] * (count + 1)
        for row in r.multiline().split(b"\r\n")[:-1]:
            num, size = row.split()
            sizes[int(num)] = int(size)
        sock.sendall(b"UIDL\r\n")
        r.status("UIDL")
        uidls = {row.split()[1] for row in r.multiline().split(b"\r\n")[:-1]}
        if len(uidls) != count or sum(sizes) != octets:
            raise Pop3Error(f"UIDL gave {len(uidls)} unique ids, LIST {sum(sizes)} octets, "
                            f"for {count} messages / {octets} octets")
        t_list = time.monotonic()
        seen: set[bytes] = set()
        sent = 0
        window = max(pipeline, 1)
        refill = max(window // 2, 1)
        got = 0
        numbers = retr_order(count, order, seed)
        for i in range(1, count + 1):
            if sent < i or (window > 1 and sent - i < refill and sent < count):
                upto = min(count, i + window - 1)
                sock.sendall(b"".join(b"RETR %d\r\n" % numbers[n - 1] for n in range(sent + 1, upto + 1)))
                sent = upto
            num = numbers[i - 1]
            r.status(f"RETR {num}")
            data = unstuff(r.multiline())
            got += len(data)
            start = data.find(b"\r\nMessage-ID: ")
            mid = data[start + 14: data.index(b"\r\n", start + 2)] if start >= 0 else b""
            want = work.expected.get(mid)
            if want is None or mid in seen:
                raise Pop3Error(f"RETR {num}: unknown or repeated message {mid[:100]!r}")
            if len(data) != want[0] or len(data) != sizes[num]:
                raise Pop3Error(f"RETR {num}: {len(data)} bytes, LIST said {sizes[num]}, "
                                f"generated {want[0]}")
            if verify and hashlib.sha1(data).digest() != want[1]:
                raise Pop3Error(f"RETR {num}: content differs from the generated message")
            seen.add(mid)
        t_retr = time.monotonic()
        sock.sendall(b"QUIT\r\n")
        r.status("QUIT")
        t_end = time.monotonic()
        if got != work.total_bytes:
            raise Pop3Error(f"downloaded {got} bytes, expected {work.total_bytes}")
        return {"messages": count, "octets": got, "seconds": t_end - t0,
                "login_seconds": t_login - t0, "list_seconds": t_list - t_login,
                "retr_seconds": t_retr - t_list, "wire_bytes": r.received,
                "capabilities": caps}
    finally:
        sock.close()


# --------------------------------------------------------------------------- servers

class Pop3Server:
    """A POP3 server under test: started and populated once, stopped at the end."""

    name = "?"
    port = 0

    def setup(self, work: Workload, user: str, scratch: Path) -> None:  # pragma: no cover
        """Start the server and put the workload into ``user``'s Maildir."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Root processes of the server (for CPU accounting)."""
        return []

    def teardown(self) -> None:
        """Stop what ``setup`` started and remove the messages it wrote."""

    def info(self) -> dict[str, Any]:
        """Version and configuration details for the JSON record."""
        return {}


class DovecotServer(RefDovecot, Pop3Server):
    """Debian's Dovecot via refstack.sh, its user's Maildir emptied and refilled."""

    name = "dovecot"

    def __init__(self, refstack: str, keep: bool) -> None:
        super().__init__(refstack, keep, "REF_POP3_PORT", 11110)

    def setup(self, work: Workload, user: str, scratch: Path) -> None:
        """``refstack.sh start`` (it also starts Postfix), then refill the Maildir."""
        self.start_refstack()
        self.refill(work, user, "dovecot pop3")

    def pids(self) -> list[int]:
        """The Dovecot master: pop3-login, auth and the per-session pop3 are its children."""
        pid = self.master_pid()
        return [] if pid is None else [pid]


class TxmailServer(Pop3Server):
    """``twistd -n mailserver --pop3 ...`` from the txmail venv, in a fresh data directory."""

    name = "txmail"

    def __init__(self, venv_bin: str, start_timeout: float) -> None:
        self.twistd = str(Path(venv_bin) / "twistd")
        self.txmail = str(Path(venv_bin) / "txmail")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.data: Path | None = None

    def setup(self, work: Workload, user: str, scratch: Path) -> None:
        """``txmail user add``, drop the messages into ``new/``, start twistd, wait for POP3."""
        run_dir = scratch / "txmail"
        self.data = run_dir / "data"
        shutil.rmtree(run_dir, ignore_errors=True)
        self.data.mkdir(parents=True)
        add_txmail_users(self.txmail, self.data, [f"{user}@{DOMAIN}"], run_dir)
        populate(self.data / "mail" / DOMAIN / user, work, None)
        self.port = free_port()
        self.proc = start_twistd(
            self.twistd, run_dir,
            ["--data-dir", str(self.data), "--domain", DOMAIN,
             "--smtp", f"tcp:0:interface={HOST}", "--submission", f"tcp:0:interface={HOST}",
             "--pop3", f"tcp:{self.port}:interface={HOST}"],
            ports=[self.port], start_timeout=self.start_timeout)

    def pids(self) -> list[int]:
        """The twistd process (all its threads)."""
        return [] if self.proc is None else [self.proc.pid]

    def teardown(self) -> None:
        """Stop twistd (its data directory goes with the scratch directory)."""
        stop_process(self.proc, 20)
        self.proc = None

    def info(self) -> dict[str, Any]:
        """Which twistd, and txmail's version."""
        return {"twistd": self.twistd, "port": self.port, "version": txmail_version(self.twistd)}


# --------------------------------------------------------------------------- measuring

def measure(server: Pop3Server, run: int, user: str, work: Workload, pipeline: int,
            verify: bool, timeout: float, order: str, seed: int) -> SessionResult:
    """One timed session against ``server``, with the CPU its process tree used."""
    cpu0 = tree_cpu(server.pids())
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    out = download(server.port, user, work, pipeline, verify, timeout, order, seed)
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    time.sleep(0.2)  # let Dovecot's per-session pop3 process exit and be reaped
    cpu = tree_cpu(server.pids()) - cpu0
    client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    seconds = out["seconds"]
    result = SessionResult(
        server.name, run, out["messages"], out["octets"], seconds, out["login_seconds"],
        out["list_seconds"], out["retr_seconds"], out["messages"] / seconds,
        out["octets"] / MB / seconds, cpu, client_cpu, out["wire_bytes"], out["capabilities"])
    log(f"{server.name} run {run}: {seconds:.3f} s ({out['login_seconds']:.3f} login, "
        f"{out['list_seconds']:.3f} STAT/LIST/UIDL, {out['retr_seconds']:.3f} RETR), "
        f"{result.msgs_per_sec:.0f} msg/s, {result.mb_per_sec:.1f} MB/s; CPU s: server "
        f"{cpu:.2f}, client {client_cpu:.2f}")
    return result


# --------------------------------------------------------------------------- reporting

def summarize(results: list[SessionResult], order: list[str]) -> list[dict[str, Any]]:
    """Median per server and ratio of seconds to Dovecot's (txmail/dovecot: >1 is slower)."""
    rows: list[dict[str, Any]] = []
    for name in order:
        mine = [r for r in results if r.server == name]
        if not mine:
            continue
        med = {k: statistics.median(getattr(r, k) for r in mine)
               for k in ("seconds", "login_seconds", "list_seconds", "retr_seconds",
                         "msgs_per_sec", "mb_per_sec", "server_cpu", "client_cpu")}
        rows.append({"server": name, "runs": len(mine), "messages": mine[0].messages,
                     "octets": mine[0].octets, **med,
                     "all_seconds": [round(r.seconds, 4) for r in mine]})
    ref = next((r["seconds"] for r in rows if r["server"] == "dovecot"), None)
    for row in rows:
        row["time_ratio_to_dovecot"] = row["seconds"] / ref if ref else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the medians."""
    head = (f"{'server':<8} {'messages':>8} {'seconds':>8} {'RETR s':>7} {'msg/s':>7} "
            f"{'MB/s':>6} {'time vs dovecot':>15} {'server CPU s':>12} {'client CPU s':>12} "
            f"{'runs':>4}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['time_ratio_to_dovecot']:.2f}x" if r["time_ratio_to_dovecot"] else "-"
        lines.append(f"{r['server']:<8} {r['messages']:>8} {r['seconds']:>8.3f} "
                     f"{r['retr_seconds']:>7.3f} {r['msgs_per_sec']:>7.0f} "
                     f"{r['mb_per_sec']:>6.1f} {ratio:>15} {r['server_cpu']:>12.2f} "
                     f"{r['client_cpu']:>12.2f} {r['runs']:>4}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=5000, help="messages in the maildrop")
    p.add_argument("--size", type=int, default=10240, help="bytes per message (whole file)")
    p.add_argument("--servers", default="dovecot,txmail", help="comma-separated: dovecot, txmail")
    p.add_argument("--runs", type=int, default=1, help="timed sessions per server (median)")
    p.add_argument("--pipeline", type=int, default=1,
                   help="RETR commands in flight (1 = one at a time, like poplib)")
    p.add_argument("--order", choices=("sequential", "reverse", "random"), default="sequential",
                   help="order of the RETRs: 1..N like every client (default), N..1, or "
                        "shuffled (seeded by --seed)")
    p.add_argument("--verify", action="store_true",
                   help="also compare each message's SHA-1 (default: Message-ID and length)")
    p.add_argument("--user", default="user1", help="the refstack user whose Maildir is used")
    p.add_argument("--seed", type=int, default=1939, help="random seed of the message text")
    p.add_argument("--timeout", type=float, default=300, help="socket timeout, seconds")
    p.add_argument("--refstack", default="/work/shared/bench/refstack.sh",
                   help="script that starts the reference Dovecot")
    p.add_argument("--txmail-bin", default="/work/txvenv/bin",
                   help="directory holding txmail's twistd and txmail scripts, from a "
                        "non-editable install (pip install .), so twistd finds the plugin")
    p.add_argument("--txmail-start-timeout", type=float, default=30,
                   help="seconds to wait for txmail's POP3 port")
    p.add_argument("--workdir", default=None,
                   help="scratch directory (default: a new /tmp/pop3bench-*)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory and Dovecot's Maildir contents")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    parse_servers(p, args, {"dovecot", "txmail"})
    for name in ("messages", "size", "runs", "pipeline"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.size < 1024:
        p.error("--size must be at least 1024 (the headers alone take ~600 bytes)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any server failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    log(f"generating {args.messages} messages of {args.size} bytes")
    work = make_workload(args.messages, args.size, args.user, args.seed)
    workdir = make_workdir(args.workdir, "pop3bench-")
    servers: dict[str, Pop3Server] = {}
    for name in args.server_list:
        servers[name] = (DovecotServer(args.refstack, args.keep) if name == "dovecot"
                         else TxmailServer(args.txmail_bin, args.txmail_start_timeout))
    results: list[SessionResult] = []
    warmups: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    try:
        ready: list[Pop3Server] = []
        for server in servers.values():
            try:
                server.setup(work, args.user, workdir)
                ready.append(server)
            except BenchError as e:
                failures[server.name] = str(e)
                log(f"{server.name}: setup FAILED: {e}")
        os.sync()  # the freshly written files are not written back during the timed runs
        for server in ready:
            try:
                log(f"{server.name}: untimed warm-up session (builds the index) on port "
                    f"{server.port}")
                out = download(server.port, args.user, work, args.pipeline, args.verify,
                               args.timeout)
                out.pop("capabilities")
                warmups[server.name] = out
                log(f"{server.name}: warm-up took {out['seconds']:.2f} s")
            except (BenchError, OSError) as e:
                failures[server.name] = f"warm-up: {type(e).__name__}: {e}"
                log(f"{server.name}: warm-up FAILED: {e}")
        os.sync()  # index files written by the warm-ups
        for run in range(1, args.runs + 1):
            for server in ready:
                if server.name in failures:
                    continue
                try:
                    results.append(measure(server, run, args.user, work, args.pipeline,
                                           args.verify, args.timeout, args.order,
                                           args.seed + run))
                except (BenchError, OSError) as e:
                    failures[server.name] = f"run {run}: {type(e).__name__}: {e}"
                    log(f"{server.name} run {run}: FAILED: {e}")
    finally:
        for server in servers.values():
            try:
                server.teardown()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results, args.server_list)
    print(f"\nPOP3 download over one connection: {args.messages} messages x {args.size} B "
          f"({work.total_bytes / MB:.1f} MB), USER/PASS, STAT, LIST, UIDL, RETR of each, no DELE; "
          f"RETR order {args.order}, pipeline={args.pipeline}, median of {args.runs} run(s), "
          f"{os.cpu_count()} CPUs shared with the client")
    print(format_table(rows))
    print_failures(failures)

    record = {
        **record_header("pop3_download", args),
        "workload": {"messages": args.messages, "size": args.size,
                     "total_bytes": work.total_bytes},
        "machine": machine_info(),
        "servers": {name: s.info() for name, s in servers.items()},
        "warmups": warmups,
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    write_results(record, "pop3_download", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
