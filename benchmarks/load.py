"""
Load test: thousands of concurrent SMTP, POP3 and IMAP connections against one txmail server.

Starts ``twistd -n mailserver`` (from this checkout: the ``python`` running this script, with
``src/`` and the checkout on ``PYTHONPATH``) on free loopback ports with a temporary Maildir
data directory and ``--users`` IMAP/SMTP users plus one POP3 user per POP3 client (POP3 locks
its maildrop, RFC 1939 section 8: two sessions of one user would be refused by design, which is
not what this measures).  Then runs the client, an asyncio program, in a **separate process**
(this same file with ``--client``), so that its CPU is not the server's.

The client opens ``--connections`` (2,000) concurrent clients, started evenly over ``--ramp``
seconds, and keeps them all busy for ``--hold`` seconds.  Each client is one of:

``smtp``   connect, EHLO, MAIL, RCPT (a random user), DATA with a ``--size`` message, QUIT;
           then the next connection.
``pop3``   USER/PASS, STAT, RETR 1 (when the maildrop is not empty), QUIT; again.
``imap``   LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), FETCH of the last message's BODY.PEEK[],
           LOGOUT; again.
``idle``   LOGIN, SELECT INBOX, IDLE, and stays in IDLE for the whole run; every ``* N EXISTS``
           is new mail seen (its latency is measured from the ``250`` of the first SMTP message
           to that user not yet seen).  An IDLE client that saw no new mail while mail was
           delivered to its user is an error (``idle-missed-mail``).

The shares are ``--mix smtp:pop3:imap:idle`` (default ``30:15:25:30``).  Between commands a
client waits ``--think`` seconds (default 0.2 s), so that the connections stay open as real
clients' do instead of all hammering at once.  Client sockets time out after ``--timeout``
seconds per reply.

Every client must be served: a refused, reset or timed-out connection, or a reply that is not
the expected one, is counted by type and printed, and the exit status is 1.  Printed: messages
per second (SMTP messages accepted with ``250`` during the hold), operations per second and
p50/p99 latency per operation type, and the server's peak RSS, sampled from ``/proc`` every
0.5 s (twistd and its worker processes: each one's ``VmHWM`` and the peak of their sum).

The soft ``RLIMIT_NOFILE`` is raised to fit the connections (client and server side, both
processes inherit it), up to the hard limit, which is raised too when running as root; the
script says so, and warns when it cannot.

    python benchmarks/load.py --connections 2000 --hold 60

Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HOST = "127.0.0.1"
DOMAIN = "example.test"
PASSWORD = "load-pass"


def log(message: str) -> None:
    print(f"[load {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- server side


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE to *needed* (hard too, as root); return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            log(f"RLIMIT_NOFILE raised from {soft}/{hard} to {needed}/{needed}")
            return needed
        except (ValueError, OSError) as e:
            log(f"WARNING: cannot raise the hard RLIMIT_NOFILE {hard} to {needed} ({e}); using {hard}")
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log(f"RLIMIT_NOFILE soft limit raised from {soft} to {needed}")
    return needed


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


_ADD_USERS = """
import sys
from txmail.cli import USERS_FILE, _create_storage
from txmail.config import load_config
from txmail.directory import FileDirectory
import os
data, password, *addresses = sys.argv[1:]
settings = load_config(None, {"data_dir": data, "domains": (%r,)})
directory = FileDirectory(os.path.join(data, USERS_FILE), local_domains=settings.domains,
                          primary_domain=settings.primary_domain)
for address in addresses:
    directory.add_user(address, password)
    _create_storage(settings, address)
"""


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def add_users(data: Path, addresses: list[str]) -> None:
    start = time.monotonic()
    for i in range(0, len(addresses), 200):
        subprocess.run(
            [sys.executable, "-c", _ADD_USERS % DOMAIN, str(data), PASSWORD, *addresses[i : i + 200]],
            check=True,
            env=server_env(),
            timeout=600,
        )
    log(f"{len(addresses)} users added in {time.monotonic() - start:.1f} s")


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"twistd exited with status {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"twistd did not listen on {port} within {timeout} s")


def tree(root: int) -> list[int]:
    """*root* and its descendants (from /proc/*/stat)."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                children[int(fields[1])].append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of *pid* (proc(5)), 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def listen_overflows() -> int | None:
    """The kernel's ListenOverflows counter (/proc/net/netstat): SYNs dropped on a full accept queue."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return None


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in kB, or zeros when the process is gone."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # runs the finally clauses (the server is stopped)


def run_server_and_client(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    shares = [int(x) for x in args.mix.split(":")]
    if len(shares) != 4 or sum(shares) <= 0:
        raise SystemExit("--mix needs four numbers smtp:pop3:imap:idle")
    kinds = plan(args.connections, shares)
    pop3_clients = kinds.count("pop3")
    needed = 2 * args.connections + 1024
    limit = raise_fd_limit(needed)
    if limit < needed:
        log(f"WARNING: {limit} file descriptors may not be enough for {args.connections} connections")

    work = Path(tempfile.mkdtemp(prefix="txmail-load-"))
    data = work / "data"
    data.mkdir()
    users = [f"user{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    pop_users = [f"pop{i}@{DOMAIN}" for i in range(1, pop3_clients + 1)]
    add_users(data, users + pop_users)
    ports = {name: free_port() for name in ("smtp", "pop3", "imap")}
    backlog = f":backlog={args.backlog}" if args.backlog else ""
    cmd = [
        str(Path(sys.executable).parent / "twistd"),
        "--logfile",
        str(work / "twistd.log"),
        "-n",
        "--pidfile",
        str(work / "twistd.pid"),
        "mailserver",
        "--data-dir",
        str(data),
        "--domain",
        DOMAIN,
        "--hostname",
        "load.test",
        "--smtp",
        f"tcp:{ports['smtp']}:interface={HOST}{backlog}",
        "--submission",
        f"tcp:0:interface={HOST}",
        "--pop3",
        f"tcp:{ports['pop3']}:interface={HOST}{backlog}",
        "--imap",
        f"tcp:{ports['imap']}:interface={HOST}{backlog}",
    ]
    if args.workers is not None:
        cmd += ["--workers", str(args.workers)]
    log("server: " + " ".join(cmd))
    with open(work / "twistd.out", "wb") as out:
        server = subprocess.Popen(
            cmd, cwd=work, env=server_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    client: subprocess.Popen[bytes] | None = None
    try:
        for port in ports.values():
            wait_for_port(port, server, 60)
        time.sleep(1)  # the SMTP workers start after the main process listens
        config = {
            "ports": ports,
            "users": users,
            "pop_users": pop_users,
            "kinds": kinds,
            "hold": args.hold,
            "ramp": args.ramp,
            "think": args.think,
            "timeout": args.timeout,
            "size": args.size,
            "seed": args.seed,
            "prefill": args.prefill,
        }
        (work / "client.json").write_text(json.dumps(config))
        # The result goes to a file: a pipe would fill up (and block the client) before it ends.
        client = subprocess.Popen([sys.executable, __file__, "--client", str(work / "client.json")])
        peak_sum = 0
        peaks: dict[int, int] = {}
        cpu: dict[int, float] = {}
        overflows = listen_overflows()
        started = time.monotonic()
        cpu_start = {pid: cpu_seconds(pid) for pid in tree(server.pid)}
        client_cpu = 0.0
        while client.poll() is None:
            pids = tree(server.pid)
            total = 0
            for pid in pids:
                rss, hwm = memory_kb(pid)
                total += rss
                peaks[pid] = max(peaks.get(pid, 0), hwm)
                cpu[pid] = cpu_seconds(pid) or cpu.get(pid, 0.0)
            peak_sum = max(peak_sum, total)
            client_cpu = cpu_seconds(client.pid) or client_cpu
            time.sleep(0.5)
        wall = time.monotonic() - started
        result: dict[str, Any] = {"loadavg": os.getloadavg(), "client_cpu": client_cpu / wall}
        result["server_cpu"] = [
            (cpu[pid] - cpu_start.get(pid, 0.0)) / wall for pid in sorted(cpu, key=lambda p: -cpu[p])
        ]
        if overflows is not None:
            result["listen_overflows"] = (listen_overflows() or 0) - overflows
        try:
            result.update(json.loads((work / "client.json.result").read_text()))
        except (OSError, ValueError):
            result["errors"] = {f"client exited with status {client.returncode}, no result": 1}
        if server.poll() is not None:
            result.setdefault("errors", {})["server-exited"] = 1
    finally:
        if client is not None and client.poll() is None:
            client.terminate()
            client.wait()
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    report(args, result, peak_sum, peaks, work)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        log(f"kept {work}")
    return 1 if result.get("errors") else 0


def plan(connections: int, shares: list[int]) -> list[str]:
    """The kind of each client, in an interleaved order (the ramp mixes them)."""
    names = ("smtp", "pop3", "imap", "idle")
    total = sum(shares)
    counts = [connections * s // total for s in shares]
    counts[0] += connections - sum(counts)
    kinds = [name for name, n in zip(names, counts, strict=True) for _ in range(n)]
    random.Random(0).shuffle(kinds)
    return kinds


def report(
    args: argparse.Namespace, result: dict[str, Any], peak_sum: int, peaks: dict[int, int], work: Path
) -> None:
    hold = result.get("hold_seconds") or args.hold
    print(
        f"txmail load: {args.connections} concurrent clients (mix smtp:pop3:imap:idle = {args.mix}), "
        f"ramp {args.ramp:g} s, hold {hold:.0f} s, think {args.think:g} s"
    )
    print(
        f"  clients started: {result.get('started', 0)}, peak open connections: {result.get('peak_open', 0)}"
    )
    messages = result.get("messages", 0)
    print(f"  SMTP messages accepted during the hold: {messages} ({messages / hold:.1f} messages/s)")
    print(
        f"  IDLE clients that saw new mail: {result.get('idle_notified', 0)} of {result.get('idle_clients', 0)}"
    )
    print(f"  {'operation':<16}{'count':>9}{'per s':>9}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    for op, values in sorted(result.get("latency", {}).items()):
        values.sort()
        p50 = values[len(values) // 2] * 1e3
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1e3
        print(
            f"  {op:<16}{len(values):>9}{len(values) / hold:>9.1f}{p50:>10.1f}{p99:>10.1f}{values[-1] * 1e3:>10.1f}"
        )
    print(
        f"  server peak RSS: {peak_sum / 1024:.1f} MiB (sum over {len(peaks)} processes, sampled every 0.5 s); "
        f"VmHWM per process: "
        + ", ".join(f"{kb / 1024:.1f} MiB" for kb in sorted(peaks.values(), reverse=True))
    )
    print(
        "  server CPU (share of one core, each process, over the client's run): "
        + ", ".join(f"{c:.0%}" for c in result.get("server_cpu", []))
    )
    if "client_cpu" in result:
        load = ", ".join(f"{x:.1f}" for x in result["loadavg"])
        print(
            f"  load client CPU: {result['client_cpu']:.0%} of one core; machine load average at the end: {load} "
            f"({os.cpu_count()} CPUs)"
        )
    if "listen_overflows" in result:
        print(f"  kernel ListenOverflows during the run (whole machine): {result['listen_overflows']}")
    errors = result.get("errors", {})
    if errors:
        print("  ERRORS:")
        for kind, count in sorted(errors.items(), key=lambda kv: -kv[1]):
            print(f"    {count:>7} x {kind}")
        for example in result.get("error_examples", [])[:10]:
            print(f"      e.g. {example}")
    else:
        print("  errors: none (every client was served)")


# --------------------------------------------------------------------------- client side


class ProtocolError(Exception):
    """The server answered something other than what the exchange expects."""


class Client:
    """The asyncio load generator (runs in its own process)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.c = config
        self.rng = random.Random(config["seed"])
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.error_examples: list[str] = []
        self.messages = 0
        self.open = 0
        self.peak_open = 0
        self.started = 0
        self.measuring = False
        self.stop = False
        self.delivered: dict[str, list[float]] = defaultdict(list)  # user -> 250 times (during the run)
        self.idle_clients = 0
        self.idle_notified = 0
        self.pop_users = list(config["pop_users"])
        self.message = self._message(config["size"])

    @staticmethod
    def _message(size: int) -> bytes:
        line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
        body = line * max(1, size // len(line))
        return (
            b"From: load@"
            + DOMAIN.encode()
            + b"\r\nTo: x@"
            + DOMAIN.encode()
            + b"\r\nSubject: load\r\n\r\n"
            + body
        )

    def error(self, kind: str, detail: str) -> None:
        self.errors[kind] += 1
        if len(self.error_examples) < 20:
            self.error_examples.append(f"{kind}: {detail[:200]}")

    def record(self, op: str, seconds: float) -> None:
        if self.measuring:
            self.latency[op].append(seconds)

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, limit=1 << 20), self.c["timeout"]
        )
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        return reader, writer

    def close(self, writer: asyncio.StreamWriter) -> None:
        self.open -= 1
        writer.close()

    async def line(self, reader: asyncio.StreamReader) -> bytes:
        data = await asyncio.wait_for(reader.readline(), self.c["timeout"])
        if not data:
            raise ConnectionResetError("connection closed by the server")
        return data

    async def think(self) -> None:
        if self.c["think"]:
            await asyncio.sleep(self.rng.uniform(0.5, 1.5) * self.c["think"])

    # -- SMTP --

    async def smtp_reply(self, reader: asyncio.StreamReader, expect: bytes) -> bytes:
        while True:
            line = await self.line(reader)
            if line[3:4] != b"-":
                if not line.startswith(expect):
                    raise ProtocolError(f"SMTP expected {expect!r}, got {line[:80]!r}")
                return line

    async def smtp_session(self, user: str | None = None) -> None:
        start = time.monotonic()
        reader, writer = await self.connect(self.c["ports"]["smtp"])
        try:
            await self.smtp_reply(reader, b"220")
            self.record("smtp.connect", time.monotonic() - start)
            t = time.monotonic()
            writer.write(b"EHLO load.client\r\n")
            await self.smtp_reply(reader, b"250")
            self.record("smtp.ehlo", time.monotonic() - t)
            await self.think()
            rcpt = user or self.rng.choice(self.c["users"] + self.pop_users)
            t = time.monotonic()
            writer.write(b"MAIL FROM:<load@" + DOMAIN.encode() + b">\r\n")
            await self.smtp_reply(reader, b"250")
            writer.write(b"RCPT TO:<" + rcpt.encode() + b">\r\n")
            await self.smtp_reply(reader, b"250")
            writer.write(b"DATA\r\n")
            await self.smtp_reply(reader, b"354")
            writer.write(self.message + b".\r\n")
            await self.smtp_reply(reader, b"250")
            done = time.monotonic()
            self.record("smtp.message", done - t)
            self.delivered[rcpt].append(done)
            if self.measuring:
                self.messages += 1
            writer.write(b"QUIT\r\n")
            await self.smtp_reply(reader, b"221")
        finally:
            self.close(writer)

    # -- POP3 --

    async def pop3_ok(self, reader: asyncio.StreamReader) -> bytes:
        line = await self.line(reader)
        if not line.startswith(b"+OK"):
            raise ProtocolError(f"POP3 expected +OK, got {line[:80]!r}")
        return line

    async def pop3_session(self, user: str) -> None:
        start = time.monotonic()
        reader, writer = await self.connect(self.c["ports"]["pop3"])
        try:
            await self.pop3_ok(reader)
            self.record("pop3.connect", time.monotonic() - start)
            t = time.monotonic()
            writer.write(b"USER " + user.encode() + b"\r\n")
            await self.pop3_ok(reader)
            writer.write(b"PASS " + PASSWORD.encode() + b"\r\n")
            await self.pop3_ok(reader)
            self.record("pop3.login", time.monotonic() - t)
            await self.think()
            t = time.monotonic()
            writer.write(b"STAT\r\n")
            count = int((await self.pop3_ok(reader)).split()[1])
            self.record("pop3.stat", time.monotonic() - t)
            if count:
                await self.think()
                t = time.monotonic()
                writer.write(b"RETR 1\r\n")
                await self.pop3_ok(reader)
                while (await self.line(reader)) != b".\r\n":
                    pass
                self.record("pop3.retr", time.monotonic() - t)
            writer.write(b"QUIT\r\n")
            await self.pop3_ok(reader)
        finally:
            self.close(writer)

    # -- IMAP --

    async def imap_command(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tag: str, command: bytes
    ) -> list[bytes]:
        writer.write(tag.encode() + b" " + command + b"\r\n")
        lines = []
        prefix = tag.encode() + b" "
        while True:
            line = await self.line(reader)
            if line.endswith(b"}\r\n") and b"{" in line:
                size = int(line[line.rindex(b"{") + 1 : -3].rstrip(b"+"))
                await asyncio.wait_for(reader.readexactly(size), self.c["timeout"])
                continue
            if line.startswith(prefix):
                if not line.startswith(prefix + b"OK"):
                    raise ProtocolError(f"IMAP {command[:20]!r} answered {line[:80]!r}")
                return lines
            lines.append(line)

    async def imap_login(self, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
        start = time.monotonic()
        reader, writer = await self.connect(self.c["ports"]["imap"])
        try:
            greeting = await self.line(reader)
            if not greeting.startswith(b"* OK"):
                raise ProtocolError(f"IMAP greeting {greeting[:80]!r}")
            self.record("imap.connect", time.monotonic() - start)
            t = time.monotonic()
            await self.imap_command(
                reader, writer, "a1", b"LOGIN " + user.encode() + b" " + PASSWORD.encode()
            )
            self.record("imap.login", time.monotonic() - t)
            await self.think()
            t = time.monotonic()
            lines = await self.imap_command(reader, writer, "a2", b"SELECT INBOX")
            self.record("imap.select", time.monotonic() - t)
        except BaseException:
            self.close(writer)
            raise
        exists = 0
        for line in lines:
            words = line.split()
            if len(words) >= 3 and words[2] == b"EXISTS":
                exists = int(words[1])
        return reader, writer, exists

    async def imap_session(self, user: str) -> None:
        reader, writer, exists = await self.imap_login(user)
        try:
            await self.think()
            t = time.monotonic()
            await self.imap_command(reader, writer, "a3", b"FETCH 1:* (FLAGS)" if exists else b"NOOP")
            self.record("imap.fetch-flags", time.monotonic() - t)
            if exists:
                await self.think()
                t = time.monotonic()
                await self.imap_command(reader, writer, "a4", b"FETCH %d BODY.PEEK[]" % exists)
                self.record("imap.fetch-body", time.monotonic() - t)
            await self.imap_command(reader, writer, "a5", b"LOGOUT")
        finally:
            self.close(writer)

    async def idle_session(self, user: str) -> None:
        reader, writer, exists = await self.imap_login(user)
        self.idle_clients += 1
        try:
            writer.write(b"a3 IDLE\r\n")
            line = await self.line(reader)
            if not line.startswith(b"+"):
                raise ProtocolError(f"IDLE answered {line[:80]!r}")
            since = time.monotonic()
            seen = len([x for x in self.delivered[user] if x <= since])
            notified = False
            while not self.stop:
                try:
                    line = await asyncio.wait_for(reader.readline(), 1.0)
                except TimeoutError:
                    continue
                if not line:
                    raise ConnectionResetError("connection closed by the server during IDLE")
                words = line.split()
                if len(words) >= 3 and words[2] == b"EXISTS":
                    count = int(words[1])
                    now = time.monotonic()
                    times = self.delivered[user]
                    if count > exists and seen < len(times):
                        self.record("idle.new-mail", now - times[seen])
                    seen += max(0, count - exists)
                    exists = count
                    notified = True
            if notified:
                self.idle_notified += 1
            elif any(t > since + 5 for t in self.delivered[user]):
                self.error("idle-missed-mail", f"{user}: mail delivered after IDLE started, no EXISTS")
            writer.write(b"DONE\r\n")
            while not (await self.line(reader)).startswith(b"a3 "):
                pass
            await self.imap_command(reader, writer, "a4", b"LOGOUT")
        finally:
            self.close(writer)

    # -- the run --

    async def worker(self, index: int, kind: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self.started += 1
        pop_user = self.pop_users[index % len(self.pop_users)] if self.pop_users else ""
        user = self.c["users"][index % len(self.c["users"])]
        while not self.stop:
            try:
                if kind == "smtp":
                    await self.smtp_session()
                elif kind == "pop3":
                    await self.pop3_session(pop_user)
                elif kind == "imap":
                    await self.imap_session(user)
                else:
                    await self.idle_session(user)
                    return
            except ProtocolError as e:
                self.error(f"{kind}: unexpected reply", str(e))
            except TimeoutError as e:
                self.error(f"{kind}: timeout", repr(e))
            except ConnectionRefusedError as e:
                self.error(f"{kind}: connection refused", repr(e))
            except ConnectionResetError as e:
                self.error(f"{kind}: connection reset", repr(e))
            except asyncio.IncompleteReadError as e:
                self.error(f"{kind}: connection closed", repr(e))
            except OSError as e:
                self.error(f"{kind}: {type(e).__name__} errno {e.errno}", repr(e))
            if kind == "idle":
                return
            await self.think()

    async def prefill(self) -> None:
        """A few messages for every user first, so that POP3 RETR and IMAP FETCH have something."""
        users = self.c["users"] + self.pop_users
        sem = asyncio.Semaphore(50)

        async def one(user: str) -> None:
            async with sem:
                for _ in range(self.c["prefill"]):
                    await self.smtp_session(user)

        await asyncio.gather(*(one(u) for u in users))

    async def run(self) -> dict[str, Any]:
        think = self.c["think"]
        self.c["think"] = 0
        t = time.monotonic()
        await self.prefill()
        print(
            f"[load client] prefilled {len(self.delivered)} users in {time.monotonic() - t:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        self.delivered.clear()
        self.c["think"] = think
        kinds = self.c["kinds"]
        ramp = self.c["ramp"]
        tasks = []
        pop3_index = 0
        for i, kind in enumerate(kinds):
            # Each POP3 client has a user of its own (the maildrop lock); the others share.
            index = pop3_index if kind == "pop3" else i
            pop3_index += kind == "pop3"
            tasks.append(asyncio.ensure_future(self.worker(index, kind, ramp * i / len(kinds))))
        await asyncio.sleep(ramp)
        print(f"[load client] ramp done: {self.open} connections open", file=sys.stderr, flush=True)
        self.measuring = True
        hold_start = time.monotonic()
        while time.monotonic() - hold_start < self.c["hold"]:
            await asyncio.sleep(min(5.0, self.c["hold"]))
            print(
                f"[load client] {time.monotonic() - hold_start:.0f} s: {self.open} open, "
                f"{self.messages} messages, {sum(self.errors.values())} errors",
                file=sys.stderr,
                flush=True,
            )
        hold = time.monotonic() - hold_start
        self.measuring = False
        self.stop = True
        # Every client finishes the session it is in; one still at it after a reply timeout is stuck.
        _, stuck = await asyncio.wait(tasks, timeout=self.c["timeout"] + 10)
        for task in stuck:
            task.cancel()
        if stuck:
            self.errors["client stuck after the hold"] += len(stuck)
        return {
            "latency": self.latency,
            "errors": dict(self.errors),
            "error_examples": self.error_examples,
            "messages": self.messages,
            "hold_seconds": hold,
            "started": self.started,
            "peak_open": self.peak_open,
            "idle_clients": self.idle_clients,
            "idle_notified": self.idle_notified,
        }


def client_main(path: str) -> int:
    config = json.loads(Path(path).read_text())
    result = asyncio.run(Client(config).run())
    Path(path + ".result").write_text(json.dumps(result))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=2000, help="concurrent clients (default 2000)")
    p.add_argument("--hold", type=float, default=60.0, help="seconds at full load (default 60)")
    p.add_argument("--ramp", type=float, default=20.0, help="seconds to start every client (default 20)")
    p.add_argument("--think", type=float, default=0.2, help="mean pause between commands (default 0.2 s)")
    p.add_argument("--mix", default="30:15:25:30", help="shares smtp:pop3:imap:idle (default 30:15:25:30)")
    p.add_argument("--users", type=int, default=50, help="IMAP/SMTP users (POP3 clients get one each)")
    p.add_argument("--size", type=int, default=4096, help="message size in octets (default 4096)")
    p.add_argument("--prefill", type=int, default=2, help="messages per user before the run (default 2)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for one reply (default 60)")
    p.add_argument("--workers", type=int, default=None, help="twistd mailserver --workers (default: its own)")
    p.add_argument(
        "--backlog", type=int, default=0, help="listen backlog in the endpoint strings (default: txmail's)"
    )
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", action="store_true", help="keep the temporary data directory and logs")
    p.add_argument("--client", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.client:
        return client_main(args.client)
    return run_server_and_client(args)


if __name__ == "__main__":
    sys.exit(main())
