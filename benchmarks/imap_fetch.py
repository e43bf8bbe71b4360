"""
IMAP mailbox open and bulk FETCH: how long a client waits to open and download a big INBOX.

Measures, in one run and on the same messages, two IMAP servers each serving one user whose
INBOX (a Maildir) holds ``--messages`` (5,000) generated messages of ``--size`` (10,240) bytes:

``dovecot``
    Debian's Dovecot (``dovecot-imapd``), the private instance of
    ``/work/shared/bench/refstack.sh`` on 127.0.0.1:11143, Maildir
    ``/tmp/ref/maildir/user1/Maildir`` (owned by uid/gid 8).
``txmail``
    ``twistd -n mailserver --imap tcp:PORT:interface=127.0.0.1`` from ``/work/txvenv`` (a
    non-editable install), Maildir ``D/mail/example.test/user1``.

Each run starts from scratch: the messages (the same bytes as ``pop3_download.py``) are
written straight into each Maildir's ``new/`` and every index file is removed (Dovecot's
``dovecot*``; txmail gets a fresh data directory and a fresh twistd process).  Then, per
server, two connections, one after the other:

1. LOGIN, ``SELECT INBOX`` (**cold**: the server finds the files another program dropped into
   ``new/`` and builds its index), LOGOUT;
2. LOGIN, ``SELECT INBOX`` (**warm**: the index exists), ``UID FETCH 1:* (UID FLAGS
   RFC822.SIZE)``, ``UID FETCH 1:* (BODY.PEEK[])``, ``UID FETCH 1:* (ENVELOPE
   BODYSTRUCTURE)``, the same three FETCHes again (the server's caches now warm), then the
   server's memory (``VmRSS``/``VmHWM`` from ``/proc/PID/status``
   of the twistd process, or of Dovecot's ``imap`` process serving the connection), LOGOUT.

Each command is timed from sending it to its tagged reply.  The client is this script (a raw
socket with a buffered reader that skips literals, no ``imaplib``), which checks the counts
and sizes of every reply.  Results: a table on stdout and JSON in ``benchmarks/results/``.

Run as root (refstack.sh starts Dovecot; its Maildirs belong to ``mail``)::

    python3 benchmarks/imap_fetch.py --runs 3
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
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
    descendants,
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
    proc_memory,
    record_header,
    run_script,
    source_commit,
    start_twistd,
    stop_process,
    tree_cpu,
    txmail_version,
    write_results,
)

__all__ = [
    "DovecotImap",
    "ImapClient",
    "ImapServer",
    "RunResult",
    "TxmailImap",
    "main",
    "proc_memory",
    "run_once",
]

HOST = "127.0.0.1"

#: The timed phases, in the order they run, with the names used in the table and JSON.
PHASES = ("login", "select_cold", "select_warm", "fetch_flags", "fetch_body", "fetch_envelope",
          "again_flags", "again_body", "again_envelope")
FETCH_FLAGS = b"UID FETCH 1:* (UID FLAGS RFC822.SIZE)"
FETCH_BODY = b"UID FETCH 1:* (BODY.PEEK[])"
FETCH_ENVELOPE = b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE)"


# --------------------------------------------------------------------------- the client

class ImapError(BenchError):
    """The server answered something unexpected."""


@dataclass
class Reply:
    """A command's reply: the tagged line, the untagged responses, and its literals."""

    tagged: bytes
    untagged: list[bytes] = field(default_factory=list)
    fetches: int = 0
    literal_sizes: list[int] = field(default_factory=list)
    literal_digests: list[bytes] = field(default_factory=list)
    seconds: float = 0.0


class ImapClient:
    """Minimal IMAP4rev1 client on a raw socket (RFC 3501 section 7: responses, literals).

    A response line ending in ``{n}`` is followed by ``n`` bytes of literal and then the rest
    of the response; the reader skips (or hashes) literals without copying them into the
    response text, which keeps the client's CPU small next to the servers' on a 50 MB reply.
    """

    def __init__(self, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.received = 0
        self.counter = 0
        greeting = self._line()
        if not greeting.startswith(b"* OK"):
            raise ImapError(f"greeting: {greeting[:200]!r}")

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def _fill(self) -> None:
        if self.pos > 1 << 20:
            del self.buf[: self.pos]
            self.pos = 0
        chunk = self.sock.recv(1 << 18)
        if not chunk:
            raise ImapError("server closed the connection")
        self.received += len(chunk)
        self.buf += chunk

    def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n", self.pos)
            if i >= 0:
                out = bytes(self.buf[self.pos: i])
                self.pos = i + 2
                return out
            self._fill()

    def command(self, text: bytes, keep: bool = True, digest: bool = False) -> Reply:
        """Send ``text`` with a new tag; read up to the tagged reply, which must be OK.

        ``keep`` stores the untagged responses (literals replaced by ``{n}``); ``digest``
        stores each literal's SHA-1.
        """
        self.counter += 1
        tag = b"b%d" % self.counter
        t0 = time.perf_counter()
        self.sock.sendall(tag + b" " + text + b"\r\n")
        reply = Reply(b"")
        pieces: list[bytes] = []
        while True:
            line = self._line()
            if line.endswith(b"}"):
                j = line.rfind(b"{")
                n = int(line[j + 1: -1].rstrip(b"+"))
                while len(self.buf) - self.pos < n:
                    self._fill()
                if digest:
                    reply.literal_digests.append(
                        hashlib.sha1(memoryview(self.buf)[self.pos: self.pos + n]).digest())
                self.pos += n
                reply.literal_sizes.append(n)
                pieces.append(line)
                continue
            if pieces:
                pieces.append(line)
                line = b"".join(pieces)
                pieces = []
            if line.startswith(tag + b" "):
                reply.tagged = line
                reply.seconds = time.perf_counter() - t0
                if not line[len(tag) + 1:].startswith(b"OK"):
                    raise ImapError(f"{text[:60]!r}: {line[:300]!r}")
                return reply
            if line.startswith(b"* "):
                if b" FETCH (" in line[:40]:
                    reply.fetches += 1
                if keep:
                    reply.untagged.append(line)
            elif not line.startswith(b"+"):
                raise ImapError(f"{text[:60]!r}: unexpected line {line[:200]!r}")


def exists_of(reply: Reply) -> int:
    """The ``* n EXISTS`` of a SELECT reply (RFC 3501 section 7.3.1)."""
    for line in reply.untagged:
        parts = line.split()
        if len(parts) == 3 and parts[2].upper() == b"EXISTS":
            return int(parts[1])
    raise ImapError(f"SELECT without EXISTS: {reply.tagged!r}")


_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_UID = re.compile(rb"UID (\d+)")


def check_flags(reply: Reply, work: Workload) -> None:
    """Every message once, with a UID, and the sizes adding up to the workload's."""
    sizes = [int(m.group(1)) for m in map(_SIZE.search, reply.untagged) if m]
    uids = {m.group(1) for m in map(_UID.search, reply.untagged) if m}
    n = len(work.bodies)
    if reply.fetches != n or len(sizes) != n or len(uids) != n or sum(sizes) != work.total_bytes:
        raise ImapError(f"FETCH (UID FLAGS RFC822.SIZE): {reply.fetches} responses, "
                        f"{len(uids)} UIDs, {len(sizes)} sizes adding up to {sum(sizes)}; "
                        f"expected {n} / {work.total_bytes}")


def check_bodies(reply: Reply, work: Workload, verify: bool) -> None:
    """Every message once, each literal as long as a message (``verify``: the same bytes)."""
    n = len(work.bodies)
    got = sum(reply.literal_sizes)
    if reply.fetches != n or len(reply.literal_sizes) != n or got != work.total_bytes:
        raise ImapError(f"FETCH (BODY.PEEK[]): {reply.fetches} responses, "
                        f"{len(reply.literal_sizes)} literals, {got} bytes; expected {n} / "
                        f"{work.total_bytes}")
    if verify:
        want = sorted(d for _, d in work.expected.values())
        if sorted(reply.literal_digests) != want:
            raise ImapError("FETCH (BODY.PEEK[]): content differs from the generated messages")


def check_envelopes(reply: Reply, work: Workload) -> None:
    """Every message once with both an ENVELOPE and a BODYSTRUCTURE."""
    n = len(work.bodies)
    both = sum(1 for line in reply.untagged if b"ENVELOPE (" in line and b"BODYSTRUCTURE (" in line)
    if reply.fetches != n or both != n:
        raise ImapError(f"FETCH (ENVELOPE BODYSTRUCTURE): {reply.fetches} responses, {both} "
                        f"with both items; expected {n}")


# --------------------------------------------------------------------------- servers

class ImapServer:
    """An IMAP server under test: set up once, refilled (and maybe restarted) per run."""

    name = "?"
    port = 0

    def setup(self) -> None:
        """One-time preparation."""

    def fill(self, work: Workload, user: str, scratch: Path, run: int) -> None:  # pragma: no cover
        """Empty ``user``'s Maildir and index, drop the workload into ``new/``, be ready."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Root processes of the server (for CPU accounting)."""
        return []

    def session_memory(self) -> dict[str, int]:
        """Memory of the process serving the (one) open connection, kB."""
        return {}

    def end_run(self) -> None:
        """Stop what ``fill`` started."""

    def teardown(self) -> None:
        """Stop what ``setup`` started and remove the messages written."""

    def info(self) -> dict[str, Any]:
        """Version and configuration details for the JSON record."""
        return {}


class DovecotImap(RefDovecot, ImapServer):
    """Debian's Dovecot via refstack.sh; its user's Maildir and index files emptied per run."""

    name = "dovecot"

    def __init__(self, refstack: str, keep: bool) -> None:
        super().__init__(refstack, keep, "REF_IMAP_PORT", 11143)

    def setup(self) -> None:
        """``refstack.sh start`` (it also starts Postfix)."""
        self.start_refstack()

    def fill(self, work: Workload, user: str, scratch: Path, run: int) -> None:
        """Empty the Maildir and every ``dovecot*`` index file, refill ``new/``."""
        self.refill(work, user, "dovecot imap")

    def pids(self) -> list[int]:
        """The master: imap-login, auth and the per-connection imap are its children."""
        pid = self.master_pid()
        return [] if pid is None else [pid]

    def session_memory(self) -> dict[str, int]:
        """The ``imap`` process serving the connection (there is only one)."""
        pid = self.master_pid()
        imaps = [p for p, comm in descendants(pid) if comm == "imap"] if pid else []
        if len(imaps) != 1:
            log(f"dovecot: {len(imaps)} imap processes, expected 1; memory not measured")
            return {}
        return proc_memory(imaps[0])

class TxmailImap(ImapServer):
    """``twistd -n mailserver --imap ...``: a fresh data directory and process per run."""

    name = "txmail"

    def __init__(self, venv_bin: str, start_timeout: float) -> None:
        self.twistd = str(Path(venv_bin) / "twistd")
        self.txmail = str(Path(venv_bin) / "txmail")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.run_dir: Path | None = None

    def fill(self, work: Workload, user: str, scratch: Path, run: int) -> None:
        """``txmail user add``, drop the messages into ``new/``, start twistd, wait for IMAP."""
        self.run_dir = run_dir = scratch / f"txmail-run{run}"
        data = run_dir / "data"
        shutil.rmtree(run_dir, ignore_errors=True)
        data.mkdir(parents=True)
        add_txmail_users(self.txmail, data, [f"{user}@{DOMAIN}"], run_dir)
        populate(data / "mail" / DOMAIN / user, work, None)
        self.port = free_port()
        self.proc = start_twistd(
            self.twistd, run_dir,
            ["--data-dir", str(data), "--domain", DOMAIN,
             "--smtp", f"tcp:0:interface={HOST}", "--submission", f"tcp:0:interface={HOST}",
             "--imap", f"tcp:{self.port}:interface={HOST}"],
            ports=[self.port], start_timeout=self.start_timeout)

    def pids(self) -> list[int]:
        """The twistd process (all its threads)."""
        return [] if self.proc is None else [self.proc.pid]

    def session_memory(self) -> dict[str, int]:
        """The twistd process."""
        return {} if self.proc is None else proc_memory(self.proc.pid)

    def end_run(self) -> None:
        """Stop twistd."""
        stop_process(self.proc, 20)
        self.proc = None

    teardown = end_run

    def info(self) -> dict[str, Any]:
        """Which twistd, and txmail's version."""
        return {"twistd": self.twistd, "port": self.port, "version": txmail_version(self.twistd),
                "tree_at_run": source_commit()}  # the install may be older


# --------------------------------------------------------------------------- measuring

@dataclass
class RunResult:
    """One run against one server: seconds and server CPU per phase, memory in kB."""

    server: str
    run: int
    messages: int
    seconds: dict[str, float]
    server_cpu: dict[str, float]
    body_bytes: int
    wire_bytes: int
    client_cpu: float
    memory_after_cold: dict[str, int]
    memory_after: dict[str, int]


def _timed(server: ImapServer, cpu: dict[str, float], seconds: dict[str, float], name: str,
           client: ImapClient, text: bytes, **kw: Any) -> Reply:
    c0 = tree_cpu(server.pids())
    reply = client.command(text, **kw)
    cpu[name] = tree_cpu(server.pids()) - c0
    seconds[name] = reply.seconds
    return reply


def run_once(server: ImapServer, run: int, user: str, work: Workload, verify: bool,
             timeout: float) -> RunResult:
    """Cold SELECT on one connection; warm SELECT and the three FETCHes on a second."""
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    n = len(work.bodies)
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    login = f"LOGIN {user} {PASSWORD}".encode()

    client = ImapClient(server.port, timeout)
    try:
        _timed(server, cpu, seconds, "login", client, login)
        reply = _timed(server, cpu, seconds, "select_cold", client, b"SELECT INBOX")
        if exists_of(reply) != n:
            raise ImapError(f"cold SELECT: {exists_of(reply)} EXISTS, expected {n}")
        mem_cold = server.session_memory()
        client.command(b"LOGOUT")
    finally:
        client.close()
    time.sleep(0.2)  # Dovecot's imap process exits; only the next one is left

    client = ImapClient(server.port, timeout)
    try:
        client.command(login)
        reply = _timed(server, cpu, seconds, "select_warm", client, b"SELECT INBOX")
        if exists_of(reply) != n:
            raise ImapError(f"warm SELECT: {exists_of(reply)} EXISTS, expected {n}")
        reply = _timed(server, cpu, seconds, "fetch_flags", client, FETCH_FLAGS)
        check_flags(reply, work)
        reply = _timed(server, cpu, seconds, "fetch_body", client, FETCH_BODY, keep=False,
                       digest=verify)
        check_bodies(reply, work, verify)
        body_bytes = sum(reply.literal_sizes)
        reply = _timed(server, cpu, seconds, "fetch_envelope", client, FETCH_ENVELOPE)
        check_envelopes(reply, work)
        # The same three again: what a client re-reading the mailbox waits for once the
        # server's caches (Dovecot's dovecot.index.cache) hold what the first pass computed.
        check_flags(_timed(server, cpu, seconds, "again_flags", client, FETCH_FLAGS), work)
        check_bodies(_timed(server, cpu, seconds, "again_body", client, FETCH_BODY, keep=False,
                            digest=verify), work, verify)
        check_envelopes(_timed(server, cpu, seconds, "again_envelope", client, FETCH_ENVELOPE),
                        work)
        mem = server.session_memory()
        client.command(b"LOGOUT")
        wire = client.received
    finally:
        client.close()
    self1 = resource.getrusage(resource.RUSAGE_SELF)
    client_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
    result = RunResult(server.name, run, n, seconds, cpu, body_bytes, wire, client_cpu,
                       mem_cold, mem)
    log(f"{server.name} run {run}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items())
        + f"; RSS {mem.get('VmRSS', 0) / 1024:.0f} MB, HWM {mem.get('VmHWM', 0) / 1024:.0f} MB"
        + f"; server CPU {sum(cpu.values()):.2f}s, client {client_cpu:.2f}s")
    return result


# --------------------------------------------------------------------------- reporting

def summarize(results: list[RunResult], order: list[str]) -> list[dict[str, Any]]:
    """Medians per server; ratios of txmail's seconds to Dovecot's (>1 is slower)."""
    rows: list[dict[str, Any]] = []
    for name in order:
        mine = [r for r in results if r.server == name]
        if not mine:
            continue
        row: dict[str, Any] = {"server": name, "runs": len(mine), "messages": mine[0].messages}
        for p in PHASES:
            row[p] = statistics.median(r.seconds[p] for r in mine)
            row[p + "_cpu"] = statistics.median(r.server_cpu[p] for r in mine)
            row[p + "_all"] = [round(r.seconds[p], 4) for r in mine]
        row["body_mb_per_sec"] = mine[0].body_bytes / MB / row["fetch_body"]
        for key in ("VmRSS", "VmHWM", "Pss"):
            vals = [r.memory_after.get(key) for r in mine if r.memory_after.get(key)]
            row[key + "_kb"] = statistics.median(vals) if vals else None
        rows.append(row)
    ref = next((r for r in rows if r["server"] == "dovecot"), None)
    for row in rows:
        row["ratio_to_dovecot"] = ({p: row[p] / ref[p] for p in PHASES if ref[p]}
                                   if ref else None)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the medians, and txmail/dovecot ratios."""
    cols = [("login", "LOGIN"), ("select_cold", "SELECT cold"), ("select_warm", "SELECT warm"),
            ("fetch_flags", "FLAGS+SIZE"), ("fetch_body", "BODY[]"),
            ("fetch_envelope", "ENV+BODYSTR"), ("again_flags", "2nd FLAGS"),
            ("again_body", "2nd BODY[]"), ("again_envelope", "2nd ENV")]
    head = (f"{'server':<8} " + " ".join(f"{h:>11}" for _, h in cols)
            + f" {'BODY MB/s':>9} {'RSS MB':>7} {'HWM MB':>7} {'runs':>4}")
    lines = [head, "-" * len(head)]
    def mb(row: dict[str, Any], key: str) -> str:
        return f"{row[key] / 1024:.1f}" if row.get(key) else "-"

    for r in rows:
        lines.append(f"{r['server']:<8} " + " ".join(f"{r[k]:>10.3f}s" for k, _ in cols)
                     + f" {r['body_mb_per_sec']:>9.1f} {mb(r, 'VmRSS_kb'):>7} {mb(r, 'VmHWM_kb'):>7}"
                     f" {r['runs']:>4}")
    for r in rows:
        if r["server"] != "dovecot" and r["ratio_to_dovecot"]:
            ratios = r["ratio_to_dovecot"]
            lines.append(f"{r['server'] + '/dc':<8} " + " ".join(
                f"{ratios[k]:>10.2f}x" if k in ratios else f"{'-':>11}" for k, _ in cols))
    lines.append("server CPU s (median): " + "; ".join(
        f"{r['server']}: " + ", ".join(f"{k} {r[k + '_cpu']:.2f}" for k, _ in cols)
        for r in rows))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=5000, help="messages in the INBOX")
    p.add_argument("--size", type=int, default=10240, help="bytes per message (whole file)")
    p.add_argument("--servers", default="dovecot,txmail", help="comma-separated: dovecot, txmail")
    p.add_argument("--runs", type=int, default=1,
                   help="runs per server (median); each starts from freshly dropped files")
    p.add_argument("--verify", action="store_true",
                   help="also compare each fetched body's SHA-1 (costs client CPU)")
    p.add_argument("--user", default="user1", help="the refstack user whose Maildir is used")
    p.add_argument("--seed", type=int, default=1939, help="random seed of the message text")
    p.add_argument("--timeout", type=float, default=600, help="socket timeout, seconds")
    p.add_argument("--refstack", default="/work/shared/bench/refstack.sh",
                   help="script that starts the reference Dovecot")
    p.add_argument("--txmail-bin", default="/work/txvenv/bin",
                   help="directory holding txmail's twistd and txmail scripts, from a "
                        "non-editable install (pip install .), so twistd finds the plugin")
    p.add_argument("--txmail-start-timeout", type=float, default=30,
                   help="seconds to wait for txmail's IMAP port")
    p.add_argument("--workdir", default=None,
                   help="scratch directory (default: a new /tmp/imapbench-*)")
    p.add_argument("--keep", action="store_true",
                   help="keep the scratch directory and Dovecot's Maildir contents")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    parse_servers(p, args, {"dovecot", "txmail"})
    for name in ("messages", "size", "runs"):
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
    workdir = make_workdir(args.workdir, "imapbench-")
    servers: dict[str, ImapServer] = {}
    for name in args.server_list:
        servers[name] = (DovecotImap(args.refstack, args.keep) if name == "dovecot"
                         else TxmailImap(args.txmail_bin, args.txmail_start_timeout))
    results: list[RunResult] = []
    failures: dict[str, str] = {}
    try:
        for server in servers.values():
            try:
                server.setup()
            except BenchError as e:
                failures[server.name] = str(e)
                log(f"{server.name}: setup FAILED: {e}")
        for run in range(1, args.runs + 1):
            for server in servers.values():
                if server.name in failures:
                    continue
                try:
                    log(f"{server.name} run {run}: dropping {args.messages} files into new/")
                    server.fill(work, args.user, workdir, run)
                    os.sync()  # no write-back of the new files during the timed commands
                    results.append(run_once(server, run, args.user, work, args.verify,
                                            args.timeout))
                except (BenchError, OSError) as e:
                    failures[server.name] = f"run {run}: {type(e).__name__}: {e}"
                    log(f"{server.name} run {run}: FAILED: {e}")
                finally:
                    server.end_run()
    finally:
        for server in servers.values():
            try:
                server.teardown()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results, args.server_list)
    print(f"\nIMAP open + bulk FETCH: {args.messages} messages x {args.size} B "
          f"({work.total_bytes / MB:.1f} MB) dropped into new/, median of {args.runs} run(s), "
          f"{os.cpu_count()} CPUs shared with the client; seconds per command")
    print(format_table(rows))
    print_failures(failures)

    record = {
        **record_header("imap_fetch", args),
        "workload": {"messages": args.messages, "size": args.size,
                     "total_bytes": work.total_bytes},
        "machine": machine_info(),
        "servers": {name: s.info() for name, s in servers.items()},
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    write_results(record, "imap_fetch", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
