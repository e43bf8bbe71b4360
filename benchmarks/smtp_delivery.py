"""
Durable SMTP delivery throughput: messages per second from SMTP into a Maildir ``new/``.

Measures, in one run and on one workload, several SMTP servers each listening on its own
loopback port and delivering into Maildirs on the same filesystem:

``postfix``
    Debian's Postfix (``smtpd`` -> ``cleanup`` -> queue -> ``virtual(8)`` -> Maildir),
    the private instance of ``/work/shared/bench/refstack.sh`` on 127.0.0.1:12525.
``aiosmtpd``
    ``benchmarks/aiosmtpd_maildir.py`` under ``/work/benchvenv`` (aiosmtpd; write to
    ``tmp/``, fsync, rename into ``new/``, fsync ``new/``, then 250).
``txmail``
    ``twistd -n mailserver`` from ``/work/txvenv`` (a non-editable install).

The clock starts just before the load generator opens its first connection and stops when
every message file is present (with at least ``--size`` bytes) in the recipients'
``new/`` or ``cur/`` directories, polled every ``--poll`` seconds (20 ms).  The load
generator is Postfix's ``smtp-source`` (default) or a threaded ``smtplib`` client
(``--load python``).  Results: a table on stdout and JSON in ``benchmarks/results/``.

Run as root (Postfix is started through refstack.sh and its Maildirs belong to ``mail``)::

    python3 benchmarks/smtp_delivery.py --servers postfix,aiosmtpd,txmail --runs 3

Each server's Maildirs are emptied and (unless ``--warmup 0``) a few warm-up messages are
delivered and waited for before the timed part; warm-up files are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import smtplib
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    HERE,
    HOST,
    PASSWORD,
    BenchError,
    add_txmail_users,
    filler_message,
    free_port,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    make_workdir,
    parse_servers,
    pid_from_file,
    print_failures,
    record_header,
    refstack,
    refstack_failed,
    run_script,
    start_twistd,
    stop_process,
    tail_of,
    tree_cpu,
    wait_for_port,
    write_results,
)

__all__ = [
    "AiosmtpdServer",
    "Plan",
    "PostfixServer",
    "Server",
    "TxmailServer",
    "main",
    "make_plan",
    "measure",
]

SENDER = f"sender@{DOMAIN}"


# --------------------------------------------------------------------------- workload plan

@dataclass(frozen=True)
class Share:
    """One slice of the workload: ``messages`` to ``user`` over ``sessions`` connections."""

    user: str
    sessions: int
    messages: int


@dataclass(frozen=True)
class Plan:
    """The whole workload; identical for every server."""

    shares: tuple[Share, ...]
    size: int
    reuse: bool

    @property
    def messages(self) -> int:
        """Total number of messages."""
        return sum(s.messages for s in self.shares)

    @property
    def users(self) -> list[str]:
        """Recipient local parts, in order."""
        return [s.user for s in self.shares]

    def recipients(self) -> list[str]:
        """One recipient address per message, round-robin over the shares (python loader)."""
        left = {s.user: s.messages for s in self.shares}
        out: list[str] = []
        while any(left.values()):
            for user in self.users:
                if left[user]:
                    left[user] -= 1
                    out.append(f"{user}@{DOMAIN}")
        return out


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def make_plan(messages: int, concurrency: int, size: int, users: int, reuse: bool) -> Plan:
    """Spread ``messages`` and ``concurrency`` connections over ``users`` recipients.

    One ``smtp-source`` process per recipient (it takes a single ``-t``), so at most
    ``concurrency`` recipients are used.
    """
    parts = max(1, min(users, concurrency, messages))
    sessions = _split(concurrency, parts)
    counts = _split(messages, parts)
    shares = tuple(Share(f"user{i + 1}", sessions[i], counts[i]) for i in range(parts))
    return Plan(shares, size, reuse)


# --------------------------------------------------------------------------- maildir polling

class MaildirCounter:
    """Counts complete message files in ``new/`` + ``cur/`` of a set of Maildirs.

    Each poll is one ``listdir`` per directory (cheap: the poller shares the CPUs with the
    servers); a file name is ``stat()``-ed once, the first time it is seen, and counts only
    if it has at least ``min_size`` bytes.  Files appear in ``new/`` by rename/link from
    ``tmp/``, so a visible file is complete.
    """

    def __init__(self, maildirs: Sequence[Path], min_size: int) -> None:
        self.dirs = [str(m / sub) for m in maildirs for sub in ("new", "cur")]
        self.min_size = min_size
        self.sizes: list[dict[str, int]] = [{} for _ in self.dirs]
        self.tally: list[tuple[int, int]] = [(0, 0) for _ in self.dirs]

    def count(self) -> tuple[int, int]:
        """Return (files with at least min_size bytes, undersized files)."""
        for i, d in enumerate(self.dirs):
            sizes = self.sizes[i]
            try:
                names = os.listdir(d)
            except FileNotFoundError:
                continue
            if len(names) == len(sizes) and sizes.keys() >= set(names):
                continue
            present = {n for n in names if not n.startswith(".")}
            for gone in sizes.keys() - present:
                del sizes[gone]
            for name in present - sizes.keys():
                try:
                    sizes[name] = os.lstat(os.path.join(d, name)).st_size
                except FileNotFoundError:
                    continue
            good = sum(1 for size in sizes.values() if size >= self.min_size)
            self.tally[i] = (good, len(sizes) - good)
        return sum(t[0] for t in self.tally), sum(t[1] for t in self.tally)


def clear_maildirs(maildirs: Sequence[Path]) -> None:
    """Delete every message file in tmp/, new/ and cur/ (directories stay)."""
    for m in maildirs:
        for sub in ("tmp", "new", "cur"):
            d = m / sub
            if not d.is_dir():
                continue
            for entry in os.scandir(d):
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)


# --------------------------------------------------------------------------- load generators

class LoadGenerator:
    """Started against a port; ``poll()`` tells whether it is done (raises on failure)."""

    def start(self, port: int, plan: Plan) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def poll(self) -> bool:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class SmtpSourceLoad(LoadGenerator):
    """Postfix's smtp-source, one process per recipient share."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.procs: list[tuple[subprocess.Popen[bytes], Path, list[str]]] = []

    def start(self, port: int, plan: Plan) -> None:
        """Spawn the smtp-source processes."""
        self.procs = []
        for i, share in enumerate(plan.shares):
            cmd = [self.binary, "-s", str(share.sessions), "-m", str(share.messages),
                   "-l", str(plan.size), "-f", SENDER, "-t", f"{share.user}@{DOMAIN}"]
            if plan.reuse:
                cmd.append("-d")
            cmd.append(f"{HOST}:{port}")
            err = self.workdir / f"smtp-source-{port}-{i}.err"
            with open(err, "wb") as fh:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=fh)
            self.procs.append((proc, err, cmd))

    def poll(self) -> bool:
        """True when every process has exited 0; BenchError if one failed."""
        done = True
        for proc, err, cmd in self.procs:
            rc = proc.poll()
            if rc is None:
                done = False
            elif rc != 0:
                text = err.read_text(errors="replace").strip()[-2000:]
                raise BenchError(f"{' '.join(cmd)} exited {rc}: {text}")
        return done

    def stop(self) -> None:
        """Terminate any process still running."""
        for proc, _, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def build_message(rcpt: str, size: int, seq: int) -> bytes:
    """Headers like smtp-source's plus a ``size``-byte body of 78-column lines."""
    return filler_message(SENDER, rcpt, size, seq)


class PythonLoad(LoadGenerator):
    """Threaded smtplib: ``concurrency`` threads pulling messages from a shared list."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, port: int, plan: Plan) -> None:
        """Start the sender threads."""
        recipients = plan.recipients()
        bodies = {r: build_message(r, plan.size, 0) for r in set(recipients)}
        lock = threading.Lock()
        todo = iter(recipients)
        self.errors = []

        def next_rcpt() -> str | None:
            with lock:
                return next(todo, None)

        def worker() -> None:
            client: smtplib.SMTP | None = None
            try:
                while not self.errors:
                    rcpt = next_rcpt()
                    if rcpt is None:
                        break
                    if client is None:
                        client = smtplib.SMTP(HOST, port, local_hostname="loadgen.test",
                                              timeout=120)
                    client.sendmail(SENDER, [rcpt], bodies[rcpt])
                    if not plan.reuse:
                        client.quit()
                        client = None
                if client is not None:
                    client.quit()
            except Exception as e:
                self.errors.append(f"{type(e).__name__}: {e}")

        sessions = sum(s.sessions for s in plan.shares)
        self.threads = [threading.Thread(target=worker, daemon=True) for _ in range(sessions)]
        for t in self.threads:
            t.start()

    def poll(self) -> bool:
        """True when all threads are done; BenchError on the first SMTP error."""
        if self.errors:
            raise BenchError(f"python load generator: {self.errors[0]}")
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        """Threads are daemons; ask them to stop and give them a moment."""
        self.errors.append("stopped")
        for t in self.threads:
            t.join(1)


# --------------------------------------------------------------------------- servers

class Server:
    """A server under test: set up once, started per run, stopped at the end."""

    name = "?"

    def setup(self) -> None:
        """One-time preparation (install, config)."""

    def start_run(self, run_dir: Path, users: list[str]) -> int:  # pragma: no cover
        """Start (or reset) for one measured run; return the SMTP port."""
        raise NotImplementedError

    def maildirs(self, users: list[str]) -> list[Path]:  # pragma: no cover
        """The recipients' Maildir roots (containing tmp/ new/ cur/)."""
        raise NotImplementedError

    def pids(self) -> list[int]:
        """Root processes of the running server (for CPU accounting)."""
        return []

    def end_run(self) -> None:
        """Stop what ``start_run`` started."""

    def teardown(self) -> None:
        """Stop everything ``setup`` started."""

    def info(self) -> dict[str, Any]:
        """Version and configuration details for the JSON record."""
        return {}

    def probe(self) -> tuple[int, str] | None:
        """(IMAP port, user) of a mailbox outside the plan to probe visibility with, or None."""
        return None


class PostfixServer(Server):
    """Debian Postfix via refstack.sh (started once; Maildirs cleared before every run)."""

    name = "postfix"

    def __init__(self, refstack: str) -> None:
        self.refstack = refstack
        self.ref_dir = Path(os.environ.get("REF_DIR", "/tmp/ref"))
        self.maildir_root = Path(os.environ.get("REF_MAILDIR", str(self.ref_dir / "maildir")))
        self.port = int(os.environ.get("REF_SMTP_PORT", "12525"))
        self.nusers = int(os.environ.get("REF_NUSERS", "10"))
        self.spool = self.ref_dir / "postfix" / "spool"
        self.started = False

    def _master_pid(self) -> int | None:
        return pid_from_file(self.spool / "pid" / "master.pid")

    def _pid_alive(self) -> bool:
        return self._master_pid() is not None

    def pids(self) -> list[int]:
        """The Postfix master (its children are smtpd, cleanup, qmgr, virtual, ...)."""
        pid = self._master_pid()
        return [] if pid is None else [pid]

    def setup(self) -> None:
        """``refstack.sh start`` (installs dovecot+postfix via apt if missing)."""
        was_running = self._pid_alive()
        res = refstack(self.refstack, "start", "postfix")
        if res.returncode != 0:
            raise refstack_failed(res)
        self.started = not was_running
        if was_running:
            log("postfix: was already running; it will be left running at the end")

    def _queue_files(self) -> int:
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            for _, _, files in os.walk(self.spool / sub):
                n += len(files)
        return n

    def start_run(self, run_dir: Path, users: list[str]) -> int:
        """Wait for an empty queue, then empty the recipients' Maildirs."""
        for user in users:
            if int(user.removeprefix("user")) > self.nusers:
                raise BenchError(f"postfix (refstack) only has user1..user{self.nusers}")
        deadline = time.monotonic() + 120
        while self._queue_files():
            if time.monotonic() > deadline:
                raise BenchError(f"postfix queue under {self.spool} does not drain")
            time.sleep(0.2)
        clear_maildirs(self.maildirs(users))
        wait_for_port(self.port, None, 10, "postfix")
        return self.port

    def maildirs(self, users: list[str]) -> list[Path]:
        """``$REF_MAILDIR/userN/Maildir``."""
        return [self.maildir_root / u / "Maildir" for u in users]

    def teardown(self) -> None:
        """``refstack.sh stop`` if this script started it."""
        if self.started:
            refstack(self.refstack, "stop", "postfix")

    def info(self) -> dict[str, Any]:
        """Postfix version and the durability-relevant settings."""
        out: dict[str, Any] = {"port": self.port, "maildir_root": str(self.maildir_root)}
        try:
            res = subprocess.run(["postconf", "-c", str(self.ref_dir / "postfix" / "etc"),
                                  "mail_version", "virtual_transport",
                                  "default_destination_concurrency_limit",
                                  "default_process_limit"],
                                 capture_output=True, text=True, timeout=10)
            out["postconf"] = res.stdout.strip().splitlines()
        except (OSError, subprocess.SubprocessError) as e:
            out["postconf"] = str(e)
        return out


class AiosmtpdServer(Server):
    """``benchmarks/aiosmtpd_maildir.py`` under the bench venv, fresh directory per run."""

    name = "aiosmtpd"

    def __init__(self, python: str) -> None:
        self.python = python
        self.proc: subprocess.Popen[bytes] | None = None
        self.root: Path | None = None

    def setup(self) -> None:
        """Check that aiosmtpd is importable in the bench venv."""
        res = subprocess.run([self.python, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"],
                             capture_output=True, text=True)
        if res.returncode != 0:
            raise BenchError(f"{self.python} cannot import aiosmtpd (pip install aiosmtpd "
                             f"into the bench venv):\n{res.stderr}")
        self.version = res.stdout.strip()

    def start_run(self, run_dir: Path, users: list[str]) -> int:
        """Start the server on a kernel-chosen port; read ``LISTENING <port>``."""
        self.root = run_dir / "aiosmtpd-maildirs"
        shutil.rmtree(self.root, ignore_errors=True)
        logfile = run_dir / "aiosmtpd.log"
        nusers = max(int(u.removeprefix("user")) for u in users)
        with open(logfile, "wb") as err:
            self.proc = subprocess.Popen(
                [self.python, str(HERE / "aiosmtpd_maildir.py"), "--root", str(self.root),
                 "--domain", DOMAIN, "--users", str(nusers), "--host", HOST, "--port", "0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "LISTENING":
            stop_process(self.proc)
            raise BenchError(f"aiosmtpd server did not start: {tail_of(logfile)}")
        port = int(line[1])
        wait_for_port(port, self.proc, 10, "aiosmtpd", logfile)
        return port

    def pids(self) -> list[int]:
        """The server process."""
        return [] if self.proc is None else [self.proc.pid]

    def maildirs(self, users: list[str]) -> list[Path]:
        """``ROOT/userN/Maildir``."""
        assert self.root is not None
        return [self.root / u / "Maildir" for u in users]

    def end_run(self) -> None:
        """Stop the server process."""
        stop_process(self.proc)
        self.proc = None

    teardown = end_run

    def info(self) -> dict[str, Any]:
        """aiosmtpd version."""
        return {"python": self.python, "aiosmtpd": getattr(self, "version", None)}


class TxmailServer(Server):
    """
    ``twistd -n mailserver --workers N`` from the txmail venv, fresh data directory per run:
    ``txmail`` is one process (``--workers 1``), ``txmail-wN`` N SMTP worker processes and
    the owner that delivers.
    """

    name = "txmail"

    def __init__(self, venv_bin: str, start_timeout: float, workers: int = 1,
                 config: str | None = None) -> None:
        self.workers = workers
        self.config = config
        if workers > 1:
            self.name = f"txmail-w{workers}"
        self.twistd = str(Path(venv_bin) / "twistd")
        self.txmail = str(Path(venv_bin) / "txmail")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.data: Path | None = None

    def start_run(self, run_dir: Path, users: list[str]) -> int:
        """Create the users with ``txmail user add``, then start twistd and wait for SMTP."""
        self.data = run_dir / "txmail-data"
        shutil.rmtree(self.data, ignore_errors=True)  # a reused --workdir starts empty too
        self.data.mkdir(parents=True)
        nusers = max(int(u.removeprefix("user")) for u in users)
        add_txmail_users(self.txmail, self.data,
                         [f"user{i}@{DOMAIN}" for i in range(1, nusers + 1)] + [f"probe@{DOMAIN}"],
                         run_dir)
        port = free_port()
        self.imap_port = free_port()
        self.proc = start_twistd(
            self.twistd, run_dir,
            ["--data-dir", str(self.data), "--domain", DOMAIN,
             "--smtp", f"tcp:{port}:interface={HOST}",
             "--submission", f"tcp:0:interface={HOST}", "--hostname", "bench.test",
             "--workers", str(self.workers), "--imap", f"tcp:{self.imap_port}:interface={HOST}",
             *(["--config", self.config] if self.config else [])],
            ports=[port, self.imap_port], start_timeout=self.start_timeout,
            logfile=run_dir / f"{self.name}-twistd.log", outfile=run_dir / f"{self.name}-twistd.out")
        if self.workers > 1:
            # The port accepts into its backlog at once: wait until every worker listens.
            deadline = time.monotonic() + self.start_timeout
            while len(self._children()) < self.workers or not _all_listening(
                    run_dir / f"{self.name}-twistd.log", self.workers):
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.name}: the workers did not start")
                time.sleep(0.1)
        return port

    def probe(self) -> tuple[int, str] | None:
        """The IMAP listener and the probe user (not among the measured recipients)."""
        return self.imap_port, f"probe@{DOMAIN}"

    def _children(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def pids(self) -> list[int]:
        """The server process and its SMTP workers."""
        return [] if self.proc is None else [self.proc.pid, *self._children()]

    def maildirs(self, users: list[str]) -> list[Path]:
        """``D/mail/example.test/userN``."""
        assert self.data is not None
        return [self.data / "mail" / DOMAIN / u for u in users]

    def end_run(self) -> None:
        """Stop twistd."""
        stop_process(self.proc, 20)
        self.proc = None

    teardown = end_run

    def info(self) -> dict[str, Any]:
        """Which twistd."""
        return {"twistd": self.twistd}


def _all_listening(logfile: Path, workers: int) -> bool:
    """Whether the owner's log shows every worker listening for SMTP."""
    try:
        text = logfile.read_text(errors="replace")
    except OSError:
        return False
    import re

    return all(re.search(rf"worker {n}: .*ListenerService#info\] mta listening", text)
               for n in range(1, workers + 1))


# --------------------------------------------------------------------------- measuring

@dataclass
class RunResult:
    """One timed run of one server."""

    server: str
    run: int
    messages: int
    seconds: float
    accepted_seconds: float | None
    msgs_per_sec: float
    warmup: int
    server_cpu: float
    load_cpu: float
    poller_cpu: float
    #: Seconds from a probe message's 250 to IMAP IDLE's EXISTS for it (p50, p99); None: not probed.
    visible_p50: float | None = None
    visible_p99: float | None = None


def _wait_delivered(counter: MaildirCounter, target: int, load: LoadGenerator,
                    started: float, timeout: float, poll: float, busy_poll: float,
                    what: str) -> tuple[float, float | None]:
    """Poll until ``target`` files are there; return (delivered_at, load_done_at).

    The load generator is checked every ``poll`` seconds.  While it runs, the Maildirs are
    listed only every ``busy_poll`` seconds (listing thousands of entries every 20 ms would
    take CPU from the servers on a small machine); once it is done, every ``poll`` seconds.
    A server that writes the file before its 250 reply is thus timed to when the client
    finished, at most one ``poll`` late; one that delivers after the 250 (Postfix) is timed
    to the last file, at most one ``poll`` late.
    """
    load_done: float | None = None
    last_change = time.monotonic()
    last_good = -1
    next_count = 0.0
    while True:
        now = time.monotonic()
        if load_done is None and load.poll():
            load_done = now
        if load_done is not None or now >= next_count:
            good, small = counter.count()
            now = time.monotonic()
            next_count = now + busy_poll
            if small:
                raise BenchError(f"{what}: {small} message file(s) smaller than "
                                 f"{counter.min_size} bytes in the Maildir")
            if good >= target:
                if good > target:
                    raise BenchError(f"{what}: {good} files but only {target} expected "
                                     "(stale files in the Maildir?)")
                return now, load_done
            if good != last_good:
                last_good, last_change = good, now
            if load_done is not None and now - last_change > 60:
                raise BenchError(f"{what}: all messages accepted but Maildir stuck at "
                                 f"{good}/{target} for 60s")
        if now - started > timeout:
            raise BenchError(f"{what}: only {last_good}/{target} message files after "
                             f"{timeout}s")
        time.sleep(poll)


class VisibilityProbe:
    """
    While the load runs: one message every ``interval`` seconds to the probe user over SMTP,
    and an IMAP IDLE on its INBOX; each message's delay is the time from its 250 to the
    ``* n EXISTS`` that announces it (negative: announced before the client had its 250).
    """

    def __init__(self, smtp_port: int, imap_port: int, user: str, interval: float = 0.1) -> None:
        self.smtp_port, self.imap_port, self.user, self.interval = smtp_port, imap_port, user, interval
        self.sent: list[float] = []
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.error: str | None = None

    def start(self) -> None:
        import imaplib

        imap = imaplib.IMAP4(HOST, self.imap_port)
        imap.login(self.user, PASSWORD)
        imap.select("INBOX")
        imap.send(b"P1 IDLE\r\n")
        if not imap.readline().startswith(b"+"):
            raise BenchError("probe: IDLE refused")
        self._imap = imap
        self._threads = [threading.Thread(target=self._watch, daemon=True),
                         threading.Thread(target=self._send, daemon=True)]
        for t in self._threads:
            t.start()

    def _watch(self) -> None:
        import re

        while not self._stop.is_set():
            try:
                line = self._imap.readline()
            except OSError:
                return
            if not line:
                return
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                self.seen.setdefault(int(m.group(1)), time.monotonic())

    def _send(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            try:
                with smtplib.SMTP(HOST, self.smtp_port, timeout=60) as s:
                    s.sendmail(f"probe@{DOMAIN}", [self.user],
                               f"Subject: probe {n}\r\n\r\nprobe\r\n".encode())
                self.sent.append(time.monotonic())
            except (OSError, smtplib.SMTPException) as e:
                self.error = str(e)
                return

    def stop(self) -> tuple[float, float] | None:
        """Stop; the p50 and p99 delays in seconds (None when nothing was measured)."""
        self._stop.set()
        for t in self._threads[1:]:
            t.join(60)
        time.sleep(0.5)  # the last announcements
        try:
            self._imap.send(b"DONE\r\n")
            self._imap.logout()
        except Exception:
            pass
        delays = sorted(self.seen[i] - t for i, t in enumerate(self.sent, 1) if i in self.seen)
        if self.error:
            log(f"probe: {self.error}")
        if len(delays) < len(self.sent):
            log(f"probe: {len(self.sent) - len(delays)} of {len(self.sent)} never announced")
        if not delays:
            return None
        return delays[len(delays) // 2], delays[min(len(delays) - 1, int(len(delays) * 0.99))]


def measure(server: Server, run: int, plan: Plan, warmup_plan: Plan | None,
            make_load: Callable[[], LoadGenerator], workdir: Path, timeout: float,
            poll: float, busy_poll: float) -> RunResult:
    """Start ``server``, warm it up, then time ``plan`` until all files are delivered."""
    run_dir = workdir / f"{server.name}-run{run}"
    run_dir.mkdir(parents=True, exist_ok=True)
    port = server.start_run(run_dir, plan.users)
    try:
        maildirs = server.maildirs(plan.users)
        counter = MaildirCounter(maildirs, plan.size)
        base = 0
        if warmup_plan is not None and warmup_plan.messages:
            log(f"{server.name} run {run}: warm-up {warmup_plan.messages} messages on port {port}")
            load = make_load()
            t0 = time.monotonic()
            load.start(port, warmup_plan)
            try:
                _wait_delivered(counter, warmup_plan.messages, load, t0, timeout, poll,
                                busy_poll, f"{server.name} warm-up")
                while not load.poll():
                    time.sleep(poll)
            finally:
                load.stop()
            base = warmup_plan.messages
        log(f"{server.name} run {run}: {plan.messages} messages x {plan.size} B, "
            f"{sum(s.sessions for s in plan.shares)} connections, port {port}")
        load = make_load()
        server_cpu0 = tree_cpu(server.pids())
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        probing = server.probe()
        probe = VisibilityProbe(port, *probing) if probing is not None else None
        load.start(port, plan)
        if probe is not None:
            probe.start()
        try:
            delivered, accepted = _wait_delivered(counter, base + plan.messages, load, started,
                                                  timeout, poll, busy_poll, server.name)
            while accepted is None:
                if load.poll():
                    accepted = time.monotonic()
                    break
                if time.monotonic() - delivered > 30:
                    raise BenchError(f"{server.name}: load generator still running 30s after "
                                     "every message was delivered")
                time.sleep(poll)
        finally:
            load.stop()
            visible = probe.stop() if probe is not None else None
        server_cpu = tree_cpu(server.pids()) - server_cpu0
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        kids_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        seconds = delivered - started
        result = RunResult(server.name, run, plan.messages, seconds,
                           None if accepted is None else accepted - started,
                           plan.messages / seconds, base, server_cpu,
                           # python load runs in this process: its CPU is in self_cpu
                           kids_cpu if isinstance(load, SmtpSourceLoad) else self_cpu,
                           self_cpu, *(visible or (None, None)))
        log(f"{server.name} run {run}: {seconds:.2f} s, {result.msgs_per_sec:.1f} msg/s "
            f"(last 250 after {result.accepted_seconds:.2f} s; CPU s: server "
            f"{server_cpu:.2f}, load generator {result.load_cpu:.2f}, poller {self_cpu:.2f})"
            + (f"; 250 to IMAP EXISTS p50 {visible[0] * 1000:.1f} ms, p99 {visible[1] * 1000:.1f} ms"
               if visible else ""))
        return result
    finally:
        server.end_run()


# --------------------------------------------------------------------------- reporting

def _median_ms(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known) * 1000, 1) if known else None


def summarize(results: list[RunResult], order: list[str]) -> list[dict[str, Any]]:
    """Median per server and ratio to Postfix's median msg/s."""
    rows: list[dict[str, Any]] = []
    for name in order:
        mine = [r for r in results if r.server == name]
        if not mine:
            continue
        rows.append({
            "server": name,
            "runs": len(mine),
            "messages": mine[0].messages,
            "seconds": statistics.median(r.seconds for r in mine),
            "accepted_seconds": statistics.median(
                r.accepted_seconds for r in mine if r.accepted_seconds is not None)
            if any(r.accepted_seconds is not None for r in mine) else None,
            "msgs_per_sec": statistics.median(r.msgs_per_sec for r in mine),
            "server_cpu": statistics.median(r.server_cpu for r in mine),
            "load_cpu": statistics.median(r.load_cpu for r in mine),
            "all_msgs_per_sec": [round(r.msgs_per_sec, 2) for r in mine],
            "visible_p50_ms": _median_ms([r.visible_p50 for r in mine]),
            "visible_p99_ms": _median_ms([r.visible_p99 for r in mine]),
        })
    ref = next((r["msgs_per_sec"] for r in rows if r["server"] == "postfix"), None)
    for row in rows:
        row["ratio_to_postfix"] = row["msgs_per_sec"] / ref if ref else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the medians."""
    head = f"{'server':<11} {'messages':>8} {'seconds':>9} {'msg/s':>9} {'vs postfix':>10} " \
           f"{'last 250 s':>10} {'server CPU s':>12} {'load CPU s':>10} {'runs':>4} " \
           f"{'250->IMAP p50/p99 ms':>20}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = f"{r['ratio_to_postfix']:.2f}x" if r["ratio_to_postfix"] else "-"
        acc = f"{r['accepted_seconds']:.2f}" if r["accepted_seconds"] is not None else "-"
        lines.append(f"{r['server']:<11} {r['messages']:>8} {r['seconds']:>9.2f} "
                     f"{r['msgs_per_sec']:>9.1f} {ratio:>10} {acc:>10} "
                     f"{r['server_cpu']:>12.2f} {r['load_cpu']:>10.2f} {r['runs']:>4} "
                     + (f"{r['visible_p50_ms']:>9.1f}/{r['visible_p99_ms']:<10.1f}"
                        if r.get("visible_p50_ms") is not None else f"{'-':>20}"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=5000, help="timed messages per run")
    p.add_argument("--concurrency", type=int, default=20, help="concurrent SMTP connections")
    p.add_argument("--size", type=int, default=10240,
                   help="message payload bytes (smtp-source -l); files must be at least this big")
    p.add_argument("--servers", default="postfix,aiosmtpd,txmail",
                   help="comma-separated: postfix, aiosmtpd, txmail (one process), "
                        "txmail-wN (N SMTP worker processes)")
    p.add_argument("--runs", type=int, default=1, help="runs per server; the median is reported")
    p.add_argument("--users", type=int, default=10,
                   help="spread recipients over user1..userN (one smtp-source per user)")
    p.add_argument("--load", choices=("smtp-source", "python"), default="smtp-source",
                   help="load generator: Postfix smtp-source or threaded smtplib")
    p.add_argument("--reuse", action="store_true",
                   help="send many messages per connection (smtp-source -d); "
                        "default is one message per connection")
    p.add_argument("--warmup", type=int, default=200,
                   help="untimed warm-up messages per server and run (0 = cold start)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per timed run")
    p.add_argument("--poll", type=float, default=0.02,
                   help="poll interval (load generator; Maildirs once it is done), seconds")
    p.add_argument("--busy-poll", type=float, default=0.5,
                   help="Maildir listing interval while the load generator still runs "
                        "(use 0.02 to list every 20 ms throughout)")
    p.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source",
                   help="smtp-source binary")
    p.add_argument("--refstack", default="/work/shared/bench/refstack.sh",
                   help="script that starts/stops the reference Postfix")
    p.add_argument("--bench-python", default="/work/benchvenv/bin/python",
                   help="python with aiosmtpd installed")
    p.add_argument("--txmail-bin", default="/work/txvenv/bin",
                   help="directory holding txmail's twistd and txmail scripts, from a "
                        "non-editable install (pip install .), so twistd finds the plugin")
    p.add_argument("--txmail-start-timeout", type=float, default=30,
                   help="seconds to wait for txmail's SMTP port")
    p.add_argument("--txmail-config", default=None,
                   help="a TOML configuration file for every txmail server (twistd mailserver "
                        "--config), to compare settings; its options come before the command line's")
    p.add_argument("--workdir", default=None,
                   help="scratch directory (default: a new /tmp/smtpbench-*, same filesystem "
                        "as the Postfix Maildirs)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    parse_servers(p, args, {"postfix", "aiosmtpd", "txmail", *(f"txmail-w{n}" for n in range(2, 17))})
    for name in ("messages", "concurrency", "size", "runs", "users"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any server failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    plan = make_plan(args.messages, args.concurrency, args.size, args.users, args.reuse)
    warmup_plan = (make_plan(args.warmup, args.concurrency, args.size, len(plan.shares),
                             args.reuse) if args.warmup else None)
    if warmup_plan is not None and warmup_plan.users != plan.users[:len(warmup_plan.users)]:
        raise AssertionError("warm-up must use the measured recipients")
    workdir = make_workdir(args.workdir, "smtpbench-")
    if args.load == "smtp-source":
        if not os.path.exists(args.smtp_source):
            raise SystemExit(f"{args.smtp_source} not found (it ships in Debian's postfix package)")

        def make_load() -> LoadGenerator:
            return SmtpSourceLoad(args.smtp_source, workdir)
    else:
        def make_load() -> LoadGenerator:
            return PythonLoad()

    servers: dict[str, Server] = {}
    for name in args.server_list:
        if name == "postfix":
            servers[name] = PostfixServer(args.refstack)
        elif name == "aiosmtpd":
            servers[name] = AiosmtpdServer(args.bench_python)
        else:
            workers = int(name.removeprefix("txmail-w")) if name.startswith("txmail-w") else 1
            servers[name] = TxmailServer(args.txmail_bin, args.txmail_start_timeout, workers,
                                         args.txmail_config)

    results: list[RunResult] = []
    failures: dict[str, str] = {}
    ready: list[Server] = []
    try:
        for server in servers.values():
            try:
                server.setup()
                ready.append(server)
            except BenchError as e:
                failures[server.name] = str(e)
                log(f"{server.name}: setup FAILED: {e}")
        for run in range(1, args.runs + 1):
            for server in ready:
                if server.name in failures:
                    continue
                try:
                    results.append(measure(server, run, plan, warmup_plan, make_load,
                                           workdir, args.timeout, args.poll, args.busy_poll))
                except BenchError as e:
                    failures[server.name] = str(e)
                    log(f"{server.name} run {run}: FAILED: {e}")
    finally:
        for server in servers.values():
            try:
                server.end_run()
                server.teardown()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results, args.server_list)
    print(f"\nDurable SMTP -> Maildir delivery: {args.messages} messages x {args.size} B, "
          f"{args.concurrency} connections ({'reused' if args.reuse else 'one message each'}), "
          f"recipients {', '.join(plan.users)}, load={args.load}, "
          f"median of {args.runs} run(s), {os.cpu_count()} CPUs shared with the load generator")
    print(format_table(rows))
    print_failures(failures)

    record = {
        **record_header("smtp_delivery", args),
        "plan": [dataclasses.asdict(s) for s in plan.shares],
        "machine": machine_info(),
        "servers": {name: s.info() for name, s in servers.items()},
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    write_results(record, "smtp_delivery", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
