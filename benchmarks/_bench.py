"""
Shared helpers of the benchmark scripts in this directory (not a benchmark itself).

Theory of operation: every script starts servers as child processes (a txmail
``twistd -n mailserver`` from a non-editable install, or the reference Dovecot/Postfix of
``/work/shared/bench/refstack.sh``), waits for their loopback ports, drives a client
workload, reads CPU and memory of the server processes from ``/proc`` and writes a table on
stdout and a JSON record to ``benchmarks/results/``.  What the scripts do identically lives
here; what they measure, and how they print it, stays in each script.

Implementation notes:

* Progress goes to stderr (:func:`log`), results to stdout.
* CPU of a process tree is read from ``/proc/PID/stat`` (``utime stime cutime cstime``,
  proc(5)); a child's time moves into its parent's ``cutime``/``cstime`` when it is reaped, so
  the difference of two readings of :func:`tree_cpu` is what the tree used in between.
* Processes are only ever stopped by the ``Popen`` object (or PID file) of what a script
  started itself; refstack's Dovecot/Postfix are left running when they were running before.
* Scripts import this module from their own directory (``sys.path`` holds it when a script
  is run as ``python3 benchmarks/<name>.py``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DOMAIN",
    "HOST",
    "MB",
    "PASSWORD",
    "RESULTS_DIR",
    "BenchError",
    "RefDovecot",
    "Workload",
    "add_txmail_users",
    "clear_maildir",
    "descendants",
    "filler_message",
    "free_port",
    "generate_message",
    "install_sigterm",
    "log",
    "machine_cpu",
    "machine_info",
    "make_parser",
    "make_workdir",
    "make_workload",
    "now_iso",
    "parse_servers",
    "pid_from_file",
    "populate",
    "print_failures",
    "proc_memory",
    "process_cpu",
    "record_header",
    "refstack",
    "refstack_failed",
    "run_script",
    "source_commit",
    "start_twistd",
    "stop_process",
    "tail_of",
    "tree_cpu",
    "twistd_env",
    "txmail_version",
    "wait_for_port",
    "write_results",
]

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
HOST = "127.0.0.1"
DOMAIN = "example.test"
PASSWORD = "pass"
MB = 1_000_000


# --------------------------------------------------------------------------- output, errors

def log(message: str) -> None:
    """Progress output on stderr (stdout carries the result table)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """A server or load generator misbehaved; the message says how."""


def machine_info() -> dict[str, Any]:
    """CPU count and model, platform and Python version, for the JSON record."""
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform(),
                            "python": sys.version.split()[0]}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def source_commit() -> str:
    """``git describe --always --dirty`` of the tree this module is in (read-only)."""
    try:
        res = subprocess.run(["git", "-C", str(HERE), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or res.stderr.strip()[-200:]
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)


def write_results(record: dict[str, Any], benchmark: str, path: str | None) -> Path:
    """Write ``record`` as JSON to ``path`` or ``results/<benchmark>-<time>.json``; print where."""
    out = Path(path) if path else RESULTS_DIR / (
        benchmark + "-" + time.strftime("%Y%m%d-%H%M%S") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"\nJSON: {out}")
    return out


def record_header(benchmark: str, args: argparse.Namespace) -> dict[str, Any]:
    """The first fields of every JSON record: name, time, command line, options."""
    return {
        "benchmark": benchmark,
        "when": now_iso(),
        "command": [sys.executable, *sys.argv],
        "config": {k: v for k, v in vars(args).items() if k != "server_list"},
    }


def print_failures(failures: dict[str, str]) -> None:
    """``NAME: FAILED`` and the error, for each server that failed."""
    for name, err in failures.items():
        print(f"\n{name}: FAILED\n{err}")


def now_iso() -> str:
    """The current UTC time to the second, ISO 8601 (the record's ``when``)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- command line

def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def parse_servers(p: argparse.ArgumentParser, args: argparse.Namespace,
                  known: set[str]) -> None:
    """Set ``args.server_list`` from ``--servers``; ``p.error`` on an unknown name."""
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = set(args.server_list) - known
    if unknown or not args.server_list:
        p.error(f"unknown server(s): {', '.join(sorted(unknown)) or '(none)'}")


def install_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so ``finally`` blocks stop the servers."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)


def make_workdir(workdir: str | None, prefix: str) -> Path:
    """``workdir`` (created if missing) or a new ``/tmp/<prefix>*`` directory."""
    path = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=prefix))
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_script(main: Callable[[], int], what: str = "server") -> None:
    """``sys.exit(main())``; on Ctrl-C/SIGTERM say that everything was stopped, exit 130."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log(f"interrupted; every {what} this script started has been stopped")
        sys.exit(130)


# --------------------------------------------------------------------------- processes

def free_port() -> int:
    """A currently unused loopback TCP port."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def tail_of(path: Path | None, limit: int = 3000) -> str:
    """The last ``limit`` characters of a log file, or a note that it does not exist."""
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError as e:
        return f"({e.strerror}: {path})"


def wait_for_port(port: int, proc: subprocess.Popen[bytes] | None, timeout: float,
                  what: str, logfile: Path | None = None) -> None:
    """Wait until ``port`` accepts connections (and ``proc``, if given, stays alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"{what} exited with status {proc.returncode} before listening"
                             f"\n--- log tail ({logfile}) ---\n{tail_of(logfile)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on {HOST}:{port} within {timeout}s"
                     f"\n--- log tail ({logfile}) ---\n{tail_of(logfile)}")


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10) -> None:
    """SIGTERM the process we started, then SIGKILL if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def pid_from_file(path: Path) -> int | None:
    """The PID in a PID file if that process is alive, else None."""
    try:
        pid = int(path.read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


# --------------------------------------------------------------------------- txmail

def add_txmail_users(txmail: str, data: Path, addresses: Sequence[str], cwd: Path) -> None:
    """``txmail user add --data-dir DATA ADDRESS --password-stdin`` for each address."""
    for address in addresses:
        cmd = [txmail, "user", "add", "--data-dir", str(data), address, "--password-stdin"]
        res = subprocess.run(cmd, input=PASSWORD + "\n", capture_output=True, text=True,
                             cwd=cwd, timeout=120)
        if res.returncode != 0:
            raise BenchError(f"{' '.join(cmd)} exited {res.returncode}:\n"
                             f"{res.stdout}{res.stderr}"[-3000:])


def start_twistd(twistd: str, run_dir: Path, mailserver_args: Sequence[str], *,
                 ports: Sequence[int], start_timeout: float, name: str = "txmail",
                 logfile: Path | None = None, outfile: Path | None = None,
                 out_label: str = "--- twistd stdout/stderr ---",
                 env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``twistd -n ... mailserver ARGS`` in ``run_dir`` and wait for each of ``ports``.

    The twistd log goes to ``logfile`` (default ``run_dir/twistd.log``), its stdout/stderr
    to ``outfile`` (``run_dir/twistd.out``).  If a port does not open, the process is stopped
    and BenchError carries the tails of both files.  ``env`` replaces the environment
    (default: inherited; see :func:`twistd_env`).
    """
    logfile = logfile or run_dir / "twistd.log"
    outfile = outfile or run_dir / "twistd.out"
    cmd = [twistd, "-n", "--pidfile", str(run_dir / "twistd.pid"),
           "--logfile", str(logfile), "mailserver", *mailserver_args]
    log(f"{name}: " + " ".join(cmd))
    with open(outfile, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=run_dir, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT,
                                env=None if env is None else dict(env))
    for port in ports:
        try:
            wait_for_port(port, proc, start_timeout, f"{name} twistd", logfile)
        except BenchError as e:
            stop_process(proc, 20)
            raise BenchError(f"{e}\n{out_label}\n{tail_of(outfile)}") from None
    return proc


_FIND_PLUGIN = ("from twisted.application.service import IServiceMaker\n"
                "from twisted.plugin import getPlugins\n"
                "import twisted.plugins\n"
                "print(any(getattr(p, 'tapname', '') == 'mailserver'\n"
                "          for p in getPlugins(IServiceMaker, twisted.plugins)))")


def twistd_env(twistd: str) -> dict[str, str] | None:
    """The environment in which ``twistd`` finds the ``mailserver`` plugin.

    A non-editable install (``pip install .``) puts ``twisted/plugins/txmail_plugin.py`` in
    site-packages; an editable one (``pip install -e .``, e.g. ``/work/main/.venv``) does not,
    and its twistd only finds the plugin with the source tree's root on ``PYTHONPATH``.
    Returns ``None`` (inherit the environment) when twistd finds it as it is, else the
    environment with this checkout's root prepended to ``PYTHONPATH``; BenchError if neither
    works.
    """
    python = str(Path(twistd).parent / "python")
    root = str(HERE.parent)
    extended = dict(os.environ)
    extended["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH"))
                                             if p)
    for env in (None, extended):
        try:
            res = subprocess.run([python, "-c", _FIND_PLUGIN], capture_output=True, text=True,
                                 cwd=tempfile.gettempdir(), env=env, timeout=60)
        except (OSError, subprocess.SubprocessError) as e:
            raise BenchError(f"{python}: {e}") from None
        if res.stdout.strip() == "True":
            return env
    raise BenchError(f"{twistd} does not find the mailserver plugin, not even with "
                     f"PYTHONPATH={root}:\n{res.stderr[-2000:]}")


def txmail_version(twistd: str) -> str:
    """txmail's installed version, asked of the ``python`` next to ``twistd``."""
    python = Path(twistd).parent / "python"
    try:
        res = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                              "print(m.version('txmail'))"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or res.stderr.strip()[-300:]
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)


# --------------------------------------------------------------------------- refstack

def refstack(script: str, action: str, label: str) -> subprocess.CompletedProcess[str]:
    """Run ``refstack.sh start|stop`` (logged as ``label: script action``)."""
    log(f"{label}: {script} {action}")
    return subprocess.run([script, action], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)


def refstack_failed(res: subprocess.CompletedProcess[str]) -> BenchError:
    """The error for a failed ``refstack.sh start``."""
    return BenchError(f"refstack.sh start failed ({res.returncode}):\n"
                      f"{res.stdout}\n{res.stderr}")


class RefDovecot:
    """Debian's Dovecot of refstack.sh, serving one user's Maildir emptied and refilled.

    ``refstack.sh start`` also starts Postfix; :meth:`teardown` stops Dovecot and Postfix
    only if :meth:`start_refstack` found them not running (so a stack someone else started
    is left alone).  Paths, port and the Maildir owner come from the ``REF_*`` environment
    variables that refstack.sh uses too.
    """

    name = "dovecot"

    def __init__(self, refstack: str, keep: bool, port_env: str, port_default: int) -> None:
        self.refstack = refstack
        self.keep = keep
        self.ref_dir = Path(os.environ.get("REF_DIR", "/tmp/ref"))
        self.maildir_root = Path(os.environ.get("REF_MAILDIR", str(self.ref_dir / "maildir")))
        self.port = int(os.environ.get(port_env, str(port_default)))
        self.owner = (int(os.environ.get("REF_MAIL_UID", "8")),
                      int(os.environ.get("REF_MAIL_GID", "8")))
        self.maildir: Path | None = None
        self.started: list[str] = []

    def master_pid(self) -> int | None:
        """The Dovecot master's PID, if it runs."""
        return pid_from_file(self.ref_dir / "dovecot" / "run" / "master.pid")

    def postfix_pid(self) -> int | None:
        """The Postfix master's PID, if it runs."""
        return pid_from_file(self.ref_dir / "postfix" / "spool" / "pid" / "master.pid")

    def start_refstack(self) -> None:
        """``refstack.sh start``, remembering which of Dovecot/Postfix it started."""
        had_dovecot, had_postfix = self.master_pid(), self.postfix_pid()
        res = refstack(self.refstack, "start", "dovecot")
        if not had_dovecot and self.master_pid():
            self.started.append("dovecot")
        if not had_postfix and self.postfix_pid():
            self.started.append("postfix")
        if res.returncode != 0:
            raise refstack_failed(res)
        if had_dovecot:
            log("dovecot: was already running; it will be left running at the end")

    def refill(self, work: Workload, user: str, what: str) -> None:
        """Empty ``user``'s Maildir and ``dovecot*`` index files, drop ``work`` into ``new/``."""
        self.maildir = self.maildir_root / user / "Maildir"
        if not self.maildir.is_dir():
            raise BenchError(f"{self.maildir} does not exist (refstack has user1..userN)")
        clear_maildir(self.maildir, ["dovecot"])
        populate(self.maildir, work, self.owner)
        wait_for_port(self.port, None, 10, what)

    def teardown(self) -> None:
        """Empty the Maildir again; stop Dovecot / Postfix only if this script started them."""
        if self.maildir is not None and not self.keep:
            clear_maildir(self.maildir, ["dovecot"])
        if "postfix" in self.started:
            log("postfix: stopping (started by refstack.sh start)")
            subprocess.run(["postfix", "-c", str(self.ref_dir / "postfix" / "etc"), "stop"],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True)
        pid = self.master_pid()
        if "dovecot" in self.started and pid is not None:
            log(f"dovecot: stopping master pid {pid}")
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while self.master_pid() is not None and time.monotonic() < deadline:
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


# --------------------------------------------------------------------------- /proc

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds of the process plus its reaped children)."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                raw = fh.read()
        except OSError:
            continue
        fields = raw[raw.rindex(b")") + 2:].split()
        # fields[1]=ppid; fields[11..14]=utime stime cutime cstime (proc(5), 0-based from state)
        ticks = sum(int(x) for x in fields[11:15])
        table[int(entry)] = (int(fields[1]), ticks / _TICK)
    return table


def tree_cpu(roots: Sequence[int]) -> float:
    """CPU seconds used so far by ``roots`` and all their descendants (live or reaped).

    A child's time moves into its parent's cutime/cstime when the parent reaps it, so the
    difference of two readings is the CPU the tree used in between.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total = 0.0
    todo = [r for r in roots if r in table]
    seen: set[int] = set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def machine_cpu() -> float:
    """CPU seconds the whole machine has been busy (all CPUs), from ``/proc/stat``.

    user + nice + system + irq + softirq + steal of the ``cpu`` line (proc(5); guest time is
    already in user).  The difference of two readings, less what the processes a script knows
    about used, is what everything else on the machine took meanwhile.
    """
    with open("/proc/stat") as fh:
        fields = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / _TICK


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, with reaped children) of one process, 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(b")") + 2:].split()
    return sum(int(x) for x in fields[11:15]) / _TICK


def proc_memory(pid: int) -> dict[str, int]:
    """``VmRSS``/``VmHWM`` (kB) from ``/proc/PID/status`` and ``Pss`` from ``smaps_rollup``."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def descendants(root: int) -> list[tuple[int, str]]:
    """``(pid, comm)`` of every live descendant of ``root`` (and ``root`` itself)."""
    parent: dict[int, int] = {}
    comm: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        pid = int(entry.name)
        comm[pid] = stat[stat.index("(") + 1: stat.rindex(")")]
        parent[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in comm:
            out.append((pid, comm[pid]))
        todo.extend(p for p, pp in parent.items() if pp == pid)
    return out


# --------------------------------------------------------------------------- messages

def filler_message(sender: str, rcpt: str, size: int, seq: int,
                   subject: str | None = None) -> bytes:
    """Headers like smtp-source's plus a ``size``-byte body of 78-column lines."""
    now = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    subj = "" if subject is None else f"Subject: {subject}\r\n"
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nDate: {now}\r\n{subj}"
            f"Message-Id: <{seq}.{os.getpid()}@loadgen.test>\r\n\r\n").encode()
    line = b"X" * 78 + b"\r\n"
    body = (line * (size // len(line) + 1))[:size]
    if not body.endswith(b"\r\n"):
        body = body[:-2] + b"\r\n" if len(body) >= 2 else b"\r\n"
    return head + body


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


def generate_message(rng: random.Random, user: str, seq: int, size: int, when: float) -> bytes:
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
        body = generate_message(rng, user, i, size, when)
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
