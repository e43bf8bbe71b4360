"""
The cost of Sieve at delivery (issue 16): SMTP -> Maildir messages per second with a
realistic 30-rule script active for every recipient, against the same server with no
script.  The issue's target: the script costs at most 15% of throughput.

Two modes, each a fresh server process (``benchmarks/_sieve_server.py`` run with
``--python``: txmail's service, the Maildir store, SMTP on a loopback port, users
``user1..userN``), alternated run by run so that both see the same machine:

``no-script``
    every user's store provides ``ISieveScripts`` but has no active script (the router's
    look-up is paid, nothing runs).
``script``
    :data:`SCRIPT` active for every user: 30 rules of the kinds people write (file mailing
    lists by ``List-Id``, vendors by sender domain with a flag, tickets by a ``:matches``
    on the subject, spam by a relational test on a score header, size, a subaddress
    ``envelope`` test, a ``body :text`` test, ``exists``).  The benchmark's messages match
    none of them, so every rule is evaluated and the message is kept in the INBOX (the
    implicit keep): the most work a message costs, and the files land where the counter
    looks.

The load and the clock are those of ``smtp_delivery.py`` (its ``measure``, plan, Maildir
counter and load generators are imported): ``--messages`` messages of ``--size`` body
bytes over ``--concurrency`` connections, one message per connection, round-robin to
``user1..userN``; timed from the first connection until every file is in the Maildirs
(the server writes them before its 250).  Load: Postfix's ``smtp-source`` (default) or
threaded ``smtplib`` (``--load python``).

After each run the server log must be free of tracebacks and Sieve failures, and in
``script`` mode a control message with a matching ``List-Id`` must land in the
``Lists/dev`` folder (Maildir++ ``.Lists.dev``), showing that the script did run.

    PYTHONPATH=src:. python3 benchmarks/sieve_ingest.py --python /work/main/.venv/bin/python \\
        --messages 2000 --runs 3

Results: a table on stdout (msgs/s per mode, the cost in %) and JSON in
``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import smtplib
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    HERE,
    HOST,
    BenchError,
    free_port,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    make_workdir,
    record_header,
    run_script,
    stop_process,
    tail_of,
    wait_for_port,
    write_results,
)
from smtp_delivery import (  # the workload and clock of the SMTP delivery benchmark
    LoadGenerator,
    PythonLoad,
    RunResult,
    Server,
    SmtpSourceLoad,
    make_plan,
    measure,
)

__all__ = ["MODES", "SCRIPT", "SieveServer", "main"]

MODES = ("no-script", "script")

_LISTS = ("dev", "announce", "users", "security", "jobs", "python", "twisted", "debian", "linux", "rust")
_RULES = [
    *(
        f'if header :contains "List-Id" "<{name}.lists.example.org>" {{ fileinto :create "Lists/{name}"; stop; }}'
        for name in _LISTS
    ),
    *(
        f'if address :is :domain "from" "vendor{i}.example" {{ addflag "$Vendor"; fileinto :create "Vendors"; stop; }}'
        for i in range(10)
    ),
    *(
        f'if header :matches "subject" "*[ticket-{i}*]*" {{ fileinto :create "Tickets"; stop; }}'
        for i in range(5)
    ),
    'if anyof (header :contains "X-Spam-Flag" "YES", '
    'header :value "ge" :comparator "i;ascii-numeric" "X-Spam-Score" "5") { fileinto :create "Junk"; stop; }',
    'if size :over 5M { addflag "\\\\Flagged"; }',
    'if envelope :detail "to" "shop" { fileinto :create "Shopping"; stop; }',
    'if body :text :contains "unsubscribe from this list" { addflag "$Newsletter"; }',
    'if exists "X-Mailer-Daemon-Loop" { discard; stop; }',
]
#: The realistic 30-rule script of the ``script`` mode.
SCRIPT = (
    'require ["fileinto", "mailbox", "imap4flags", "relational", "comparator-i;ascii-numeric",\n'
    '         "envelope", "subaddress", "body"];\n' + "\n".join(_RULES) + "\n"
)
assert len(_RULES) == 30


class SieveServer(Server):
    """``_sieve_server.py`` in one mode, a fresh data directory per run."""

    def __init__(self, mode: str, python: str, start_timeout: float) -> None:
        self.name = mode
        self.mode = mode
        self.python = python
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.data: Path | None = None
        self.logfile: Path | None = None
        self.port: int | None = None

    def start_run(self, run_dir: Path, users: list[str]) -> int:
        """Start the server process; wait for ``LISTENING`` and the port."""
        self.data = run_dir / "data"
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        nusers = max(int(u.removeprefix("user")) for u in users)
        port = free_port()
        cmd = [
            self.python,
            str(HERE / "_sieve_server.py"),
            "--data-dir",
            str(self.data),
            "--port",
            str(port),
            "--domain",
            DOMAIN,
            "--users",
            str(nusers),
        ]
        if self.mode == "script":
            script = run_dir / "bench.sieve"
            script.write_text(SCRIPT)
            cmd += ["--script", str(script)]
        self.logfile = run_dir / "server.log"
        log(f"{self.name}: {' '.join(cmd)}")
        with open(self.logfile, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        wait_for_port(port, self.proc, self.start_timeout, self.name, self.logfile)
        self.port = port
        return port

    def _control(self) -> None:
        """Send one message the script files into Lists/dev and wait for it there."""
        assert self.data is not None and self.port is not None
        rcpt = f"user1@{DOMAIN}"
        data = (
            f"From: <sender@{DOMAIN}>\r\nTo: <{rcpt}>\r\nSubject: control\r\n"
            "List-Id: Dev <dev.lists.example.org>\r\n\r\ncontrol\r\n"
        ).encode()
        with smtplib.SMTP(HOST, self.port, timeout=30) as client:
            client.sendmail(f"sender@{DOMAIN}", [rcpt], data)
        folder = self.data / "mail" / DOMAIN / "user1" / ".Lists.dev"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any((folder / sub).is_dir() and os.listdir(folder / sub) for sub in ("new", "cur")):
                self.port = None
                return
            time.sleep(0.05)
        raise BenchError(f"{self.name}: the control message is not in {folder}: the script did not run")

    def pids(self) -> list[int]:
        """The server process."""
        return [] if self.proc is None else [self.proc.pid]

    def maildirs(self, users: list[str]) -> list[Path]:
        """``D/mail/example.test/userN`` (the INBOX of each user)."""
        assert self.data is not None
        return [self.data / "mail" / DOMAIN / u for u in users]

    def end_run(self) -> None:
        """Check the script ran (script mode), stop the server; fail on errors in its log."""
        if self.proc is not None and self.mode == "script" and self.port is not None:
            self._control()
        stop_process(self.proc, 20)
        self.proc = None
        if self.logfile is not None and self.logfile.exists():
            text = self.logfile.read_text(errors="replace")
            bad = [
                line
                for line in text.splitlines()
                if "Traceback" in line or ("sieve:" in line and "implicit keep" in line)
            ]
            if bad:
                raise BenchError(f"{self.name}: errors in the server log:\n{tail_of(self.logfile)}")

    teardown = end_run

    def info(self) -> dict[str, Any]:
        """Which Python and mode."""
        return {"python": self.python, "mode": self.mode}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=2000, help="timed messages per run")
    p.add_argument("--concurrency", type=int, default=10, help="concurrent SMTP connections")
    p.add_argument("--size", type=int, default=4096, help="message body bytes")
    p.add_argument("--users", type=int, default=10, help="recipients user1..userN")
    p.add_argument("--runs", type=int, default=3, help="runs per mode, alternated; medians reported")
    p.add_argument("--warmup", type=int, default=200, help="untimed warm-up messages per run")
    p.add_argument("--load", choices=("smtp-source", "python"), default="smtp-source")
    p.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    p.add_argument(
        "--python",
        default="/work/txvenv/bin/python",
        help="the Python that runs the server (txmail importable; PYTHONPATH is passed on)",
    )
    p.add_argument("--start-timeout", type=float, default=30)
    p.add_argument("--timeout", type=float, default=600, help="seconds per timed run")
    p.add_argument("--poll", type=float, default=0.02)
    p.add_argument("--busy-poll", type=float, default=0.5)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    for name in ("messages", "concurrency", "size", "runs", "users"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def summarize(results: list[RunResult]) -> dict[str, dict[str, Any]]:
    """Median msgs/s and server CPU per message of each mode."""
    out: dict[str, dict[str, Any]] = {}
    for mode in MODES:
        mine = [r for r in results if r.server == mode]
        if not mine:
            continue
        out[mode] = {
            "runs": len(mine),
            "messages": mine[0].messages,
            "msgs_per_sec": statistics.median(r.msgs_per_sec for r in mine),
            "all_msgs_per_sec": [round(r.msgs_per_sec, 1) for r in mine],
            "server_cpu_ms_per_msg": statistics.median(r.server_cpu / r.messages * 1000 for r in mine),
        }
    if len(out) == 2:
        base, script = out["no-script"], out["script"]
        out["cost"] = {
            "throughput_pct": 100.0 * (1 - script["msgs_per_sec"] / base["msgs_per_sec"]),
            "cpu_pct": 100.0 * (script["server_cpu_ms_per_msg"] / base["server_cpu_ms_per_msg"] - 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a mode failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    plan = make_plan(args.messages, args.concurrency, args.size, args.users, False)
    warmup = (
        make_plan(args.warmup, args.concurrency, args.size, len(plan.shares), False) if args.warmup else None
    )
    workdir = make_workdir(args.workdir, "sievebench-")
    if args.load == "smtp-source":
        if not os.path.exists(args.smtp_source):
            raise SystemExit(f"{args.smtp_source} not found (Debian's postfix package)")

        def make_load() -> LoadGenerator:
            return SmtpSourceLoad(args.smtp_source, workdir)
    else:

        def make_load() -> LoadGenerator:
            return PythonLoad()

    servers = {mode: SieveServer(mode, args.python, args.start_timeout) for mode in MODES}
    results: list[RunResult] = []
    failures: dict[str, str] = {}
    try:
        for run in range(1, args.runs + 1):
            order = MODES if run % 2 else tuple(reversed(MODES))
            for mode in order:
                if mode in failures:
                    continue
                try:
                    results.append(
                        measure(
                            servers[mode],
                            run,
                            plan,
                            warmup,
                            make_load,
                            workdir,
                            args.timeout,
                            args.poll,
                            args.busy_poll,
                        )
                    )
                except BenchError as e:
                    failures[mode] = str(e)
                    log(f"{mode} run {run}: FAILED: {e}")
    finally:
        for server in servers.values():
            try:
                server.end_run()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(results)
    print(
        f"\nSieve at delivery: {args.messages} messages x {args.size} B, {args.concurrency} "
        f"connections (one message each), recipients user1..user{len(plan.shares)}, "
        f"load={args.load}, median of {args.runs} run(s) per mode, {os.cpu_count()} CPUs "
        "shared with the load generator"
    )
    head = f"{'mode':<10} {'msg/s':>8} {'server CPU ms/msg':>18}  runs (msg/s)"
    print(head)
    print("-" * len(head))
    for mode in MODES:
        row = summary.get(mode)
        if row is not None:
            print(
                f"{mode:<10} {row['msgs_per_sec']:>8.1f} {row['server_cpu_ms_per_msg']:>18.2f}  "
                f"{row['all_msgs_per_sec']}"
            )
    if "cost" in summary:
        cost = summary["cost"]
        print(
            f"cost of the 30-rule script: {cost['throughput_pct']:.1f}% of throughput, "
            f"{cost['cpu_pct']:+.1f}% server CPU per message (target: at most 15%)"
        )
    for mode, error in failures.items():
        print(f"{mode}: FAILED: {error}")
    record = {
        **record_header("sieve_ingest", args),
        "script": SCRIPT,
        "machine": machine_info(),
        "host": HOST,
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": summary,
        "failures": failures,
    }
    write_results(record, "sieve_ingest", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
