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
greeting, CAPA, USER/PASS, STAT, LIST, UIDL, RETR 1..N (nothing is deleted), QUIT; the clock
runs from ``connect()`` to the QUIT reply.  The client is this script (a raw socket, no
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
import datetime
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smtp_delivery import (  # sibling script: shared process helpers
    BenchError,
    _machine,
    free_port,
    log,
    stop_process,
    tail_of,
    tree_cpu,
    wait_for_port,
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

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"
DOMAIN = "example.test"
PASSWORD = "pass"
MB = 1_000_000


# --------------------------------------------------------------------------- workload

@dataclass(frozen=True)
class Workload:
    """The generated messages: file names, and per Message-ID the length and SHA-1."""

    names: tuple[str, ...]
    bodies: tuple[bytes, ...]
    expected: dict[bytes, tuple[int, bytes]]

    @property
    def total_bytes(self) -> int:
        """Sum of the message sizes (what STAT must report)."""
        return sum(len(b) for b in self.bodies)


_WORD_TEXT = ("the of and to in is that for it as was with be by on not he this are or his from at "
          "which but have an they you were her she there one all we their can been has more "
          "if will would who so no about out up what when into time only new some could these "
          "two may then do first any my now such like our over man me even most made after "
          "also did many before must through back years where much your way well down should "
          "because each just those people how too little state good very make world still own "
          "see men work long here get both between life being under never day same another "
          "know while last might us great old year off come since against go came right used "
          "take three mailbox server message download queue header maildir index")
_WORDS = _WORD_TEXT.split()


def build_message(rng: random.Random, user: str, seq: int, size: int, when: float) -> bytes:
    """One realistic CRLF message of exactly ``size`` bytes (headers + text/plain body).

    Trace and MIME headers as an MTA and a mail user agent write them; the body is lines of
    words up to 76 columns, about one line in 40 starting with a ``.`` so that the servers'
    dot-stuffing (RFC 1939 section 3) is exercised.
    """
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    sender = f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}{rng.randrange(100)}@sender{seq % 37}.test"
    subject = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(3, 9))).capitalize()
    head = (
        f"Return-Path: <{sender}>\r\n"
        f"Delivered-To: {user}@{DOMAIN}\r\n"
        f"Received: from mx.sender{seq % 37}.test (mx.sender{seq % 37}.test [192.0.2.{seq % 250 + 1}])\r\n"
        f"\tby mx.{DOMAIN} with ESMTPS id {seq:08X}\r\n\tfor <{user}@{DOMAIN}>; {date}\r\n"
        f"Received: from [198.51.100.{seq % 200 + 1}] by mail.sender{seq % 37}.test with ESMTPSA;"
        f" {date}\r\n"
        f"From: {sender.split('@')[0].replace('.', ' ').title()} <{sender}>\r\n"
        f"To: <{user}@{DOMAIN}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{seq:06d}.{int(when)}@sender{seq % 37}.test>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8; format=flowed\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "\r\n"
    ).encode()
    lines: list[bytes] = []
    length = len(head)
    while length < size:
        words: list[str] = []
        width = rng.randrange(20, 77)
        while sum(len(w) + 1 for w in words) < width:
            words.append(rng.choice(_WORDS))
        text = " ".join(words)[:76]
        if rng.randrange(40) == 0:
            text = "." + text[:75]
        line = text.encode() + b"\r\n"
        lines.append(line)
        length += len(line)
    msg = (head + b"".join(lines))[: size - 2].rstrip(b"\r")
    msg = msg + b"x" * (size - 2 - len(msg)) + b"\r\n"  # cut the last line, keep CRLF
    if len(msg) != size:
        raise AssertionError(f"generated {len(msg)} bytes, wanted {size}")
    return msg


def make_workload(messages: int, size: int, user: str, seed: int) -> Workload:
    """``messages`` messages, Maildir file names sorting in delivery order."""
    rng = random.Random(seed)
    start = 1_763_900_000  # a fixed time, so that the workload is the same every run
    names, bodies, expected = [], [], {}
    for i in range(messages):
        when = start + i * 7
        body = build_message(rng, user, i, size, when)
        mid = body[body.index(b"Message-ID: ") + 12: body.index(b">\r\n", body.index(b"Message-ID: ")) + 1]
        names.append(f"{when}.M{i:06d}P4242Q{i}.bench.test,S={len(body)}")
        bodies.append(body)
        expected[mid] = (len(body), hashlib.sha1(body).digest())
    if len(expected) != messages:
        raise AssertionError("Message-IDs are not unique")
    return Workload(tuple(names), tuple(bodies), expected)


def populate(maildir: Path, work: Workload, owner: tuple[int, int] | None) -> None:
    """Write every message into ``maildir/new`` (via ``tmp/`` and rename, as Maildir wants)."""
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(maildir / sub, *owner)
    for name, body in zip(work.names, work.bodies, strict=True):
        tmp = maildir / "tmp" / name
        with open(tmp, "wb") as fh:
            fh.write(body)
        if owner is not None:
            os.chown(tmp, *owner)
        os.rename(tmp, maildir / "new" / name)


def clear_maildir(maildir: Path, prefixes: Sequence[str]) -> None:
    """Delete the message files in tmp/ new/ cur/ and the index files named ``prefixes*``."""
    for sub in ("tmp", "new", "cur"):
        d = maildir / sub
        if d.is_dir():
            for entry in os.scandir(d):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
    if maildir.is_dir():
        for entry in os.scandir(maildir):
            if entry.is_file(follow_symlinks=False) and entry.name.startswith(tuple(prefixes)):
                os.unlink(entry.path)


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


def download(port: int, user: str, work: Workload, pipeline: int, verify: bool,
             timeout: float) -> dict[str, Any]:
    """One session: CAPA, USER/PASS, STAT, LIST, UIDL, RETR 1..N, QUIT; checks everything.

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
        for num in range(1, count + 1):
            if sent < num or (window > 1 and sent - num < refill and sent < count):
                upto = min(count, num + window - 1)
                sock.sendall(b"".join(b"RETR %d\r\n" % n for n in range(sent + 1, upto + 1)))
                sent = upto
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


class DovecotServer(Pop3Server):
    """Debian's Dovecot via refstack.sh, its user's Maildir emptied and refilled."""

    name = "dovecot"

    def __init__(self, refstack: str, keep: bool) -> None:
        self.refstack = refstack
        self.keep = keep
        self.ref_dir = Path(os.environ.get("REF_DIR", "/tmp/ref"))
        self.maildir_root = Path(os.environ.get("REF_MAILDIR", str(self.ref_dir / "maildir")))
        self.port = int(os.environ.get("REF_POP3_PORT", "11110"))
        self.owner = (int(os.environ.get("REF_MAIL_UID", "8")),
                      int(os.environ.get("REF_MAIL_GID", "8")))
        self.maildir: Path | None = None
        self.started: list[str] = []

    def _pid(self, path: Path) -> int | None:
        try:
            pid = int(path.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def _dovecot_pid(self) -> int | None:
        return self._pid(self.ref_dir / "dovecot" / "run" / "master.pid")

    def _postfix_pid(self) -> int | None:
        return self._pid(self.ref_dir / "postfix" / "spool" / "pid" / "master.pid")

    def setup(self, work: Workload, user: str, scratch: Path) -> None:
        """``refstack.sh start`` (it also starts Postfix), then refill the Maildir."""
        had_dovecot, had_postfix = self._dovecot_pid(), self._postfix_pid()
        log(f"dovecot: {self.refstack} start")
        res = subprocess.run([self.refstack, "start"], stdin=subprocess.DEVNULL,
                             capture_output=True, text=True)
        if not had_dovecot and self._dovecot_pid():
            self.started.append("dovecot")
        if not had_postfix and self._postfix_pid():
            self.started.append("postfix")
        if res.returncode != 0:
            raise BenchError(f"refstack.sh start failed ({res.returncode}):\n"
                             f"{res.stdout}\n{res.stderr}")
        if had_dovecot:
            log("dovecot: was already running; it will be left running at the end")
        self.maildir = self.maildir_root / user / "Maildir"
        if not self.maildir.is_dir():
            raise BenchError(f"{self.maildir} does not exist (refstack has user1..userN)")
        clear_maildir(self.maildir, ["dovecot"])
        populate(self.maildir, work, self.owner)
        wait_for_port(self.port, None, 10, "dovecot pop3")

    def pids(self) -> list[int]:
        """The Dovecot master: pop3-login, auth and the per-session pop3 are its children."""
        pid = self._dovecot_pid()
        return [] if pid is None else [pid]

    def teardown(self) -> None:
        """Empty the Maildir again; stop Dovecot / Postfix only if this script started them."""
        if self.maildir is not None and not self.keep:
            clear_maildir(self.maildir, ["dovecot"])
        if "postfix" in self.started:
            log("postfix: stopping (started by refstack.sh start)")
            subprocess.run(["postfix", "-c", str(self.ref_dir / "postfix" / "etc"), "stop"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        pid = self._dovecot_pid()
        if "dovecot" in self.started and pid is not None:
            log(f"dovecot: stopping master pid {pid}")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self._dovecot_pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)
        self.started = []

    def info(self) -> dict[str, Any]:
        """Dovecot version."""
        out: dict[str, Any] = {"port": self.port, "maildir": str(self.maildir)}
        try:
            res = subprocess.run(["dovecot", "--version"], capture_output=True, text=True,
                                 timeout=10)
            out["version"] = res.stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            out["version"] = str(e)
        return out


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
        cmd = [self.txmail, "user", "add", "--data-dir", str(self.data), f"{user}@{DOMAIN}",
               "--password-stdin"]
        res = subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True,
                             cwd=run_dir, timeout=120)
        if res.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {res.returncode}:\n"
                             f"{res.stdout}{res.stderr}"[-3000:])
        populate(self.data / "mail" / DOMAIN / user, work, None)
        self.port = free_port()
        logfile = run_dir / "twistd.log"
        cmd = [self.twistd, "-n", "--pidfile", str(run_dir / "twistd.pid"),
               "--logfile", str(logfile), "mailserver", "--data-dir", str(self.data),
               "--domain", DOMAIN, "--smtp", f"tcp:0:interface={HOST}",
               "--submission", f"tcp:0:interface={HOST}",
               "--pop3", f"tcp:{self.port}:interface={HOST}"]
        log("txmail: " + " ".join(cmd))
        with open(run_dir / "twistd.out", "wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.port, self.proc, self.start_timeout, "txmail twistd", logfile)
        except BenchError as e:
            raise BenchError(f"{e}\n--- twistd stdout/stderr ---\n"
                             f"{tail_of(run_dir / 'twistd.out')}") from None

    def pids(self) -> list[int]:
        """The twistd process (all its threads)."""
        return [] if self.proc is None else [self.proc.pid]

    def teardown(self) -> None:
        """Stop twistd (its data directory goes with the scratch directory)."""
        stop_process(self.proc, 20)
        self.proc = None

    def info(self) -> dict[str, Any]:
        """Which twistd, and txmail's version."""
        out: dict[str, Any] = {"twistd": self.twistd, "port": self.port}
        python = Path(self.twistd).parent / "python"
        try:
            res = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                                  "print(m.version('txmail'))"],
                                 capture_output=True, text=True, timeout=30)
            out["version"] = res.stdout.strip() or res.stderr.strip()[-300:]
        except (OSError, subprocess.SubprocessError) as e:
            out["version"] = str(e)
        return out


# --------------------------------------------------------------------------- measuring

def measure(server: Pop3Server, run: int, user: str, work: Workload, pipeline: int,
            verify: bool, timeout: float) -> SessionResult:
    """One timed session against ``server``, with the CPU its process tree used."""
    cpu0 = tree_cpu(server.pids())
    self0 = resource.getrusage(resource.RUSAGE_SELF)
    out = download(server.port, user, work, pipeline, verify, timeout)
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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--messages", type=int, default=5000, help="messages in the maildrop")
    p.add_argument("--size", type=int, default=10240, help="bytes per message (whole file)")
    p.add_argument("--servers", default="dovecot,txmail", help="comma-separated: dovecot, txmail")
    p.add_argument("--runs", type=int, default=1, help="timed sessions per server (median)")
    p.add_argument("--pipeline", type=int, default=1,
                   help="RETR commands in flight (1 = one at a time, like poplib)")
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
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - {"dovecot", "txmail"}
    if unknown or not args.server_list:
        p.error(f"unknown server(s): {', '.join(sorted(unknown)) or '(none)'}")
    for name in ("messages", "size", "runs", "pipeline"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.size < 1024:
        p.error("--size must be at least 1024 (the headers alone take ~600 bytes)")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any server failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    log(f"generating {args.messages} messages of {args.size} bytes")
    work = make_workload(args.messages, args.size, args.user, args.seed)
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="pop3bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
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
                                           args.verify, args.timeout))
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
          f"({work.total_bytes / MB:.1f} MB), USER/PASS, STAT, LIST, UIDL, RETR 1..N, no DELE; "
          f"pipeline={args.pipeline}, median of {args.runs} run(s), {os.cpu_count()} CPUs "
          "shared with the client")
    print(format_table(rows))
    for name, err in failures.items():
        print(f"\n{name}: FAILED\n{err}")

    record = {
        "benchmark": "pop3_download",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "config": {k: v for k, v in vars(args).items() if k != "server_list"},
        "workload": {"messages": args.messages, "size": args.size,
                     "total_bytes": work.total_bytes},
        "machine": _machine(),
        "servers": {name: s.info() for name, s in servers.items()},
        "warmups": warmups,
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    out = Path(args.json) if args.json else RESULTS_DIR / (
        "pop3_download-" + time.strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nJSON: {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; every server this script started has been stopped")
        sys.exit(130)
