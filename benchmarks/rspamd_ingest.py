"""
The cost of scanning with rspamd: SMTP ingest into txmail with the rspamd policy on against
off, in the same run, and the latency it adds per message (issue 19).

One rspamd (Debian's 3.4, started as ``tests/_rspamd.py`` starts it for the tests: its own
configuration in a temporary directory, free loopback ports, the modules that query the
network off, Bayes on sqlite3) serves the whole invocation.  Each run starts a fresh txmail
server as a child process (this script with ``--serve``, in the txmail venv's Python:
``build_service`` with the SMTP listener on a free loopback port, users ``user1..user10``,
the queue off) either without policies of its own (``off``) or with
``RspamdPolicy(rspamd.url)`` (``on``; MTA role, the default 15 s timeout); the ``[rspamd]``
table is not read by ``txmail.config`` yet, hence the in-process build.  Runs alternate
``off``, ``on``, ``off``, ``on``... so that both modes see the same machine.

The load generator is threaded ``smtplib`` in this process: ``--messages`` messages over
``--concurrency`` connections kept open (one EHLO each, then MAIL, RCPT, DATA per message),
round-robin to ``user1..user10``.  Each message is a ~4 KB plain-text mail (different words,
Subject and Message-ID per message, a link; clean for rspamd: ``no action``).  Per message
the client sends the body, takes the time, sends the final ``.`` and takes the time again
when the ``250`` arrives: that difference is the latency reported (p50/p99), which holds the
server's whole end of data (the rspamd request and txmail's fsyncs) and nothing of the
upload.  Throughput is messages divided by the time from the first connection to the last
``250``.  Every ``250`` counts as delivered: txmail replies after the message is in the
Maildir (fsynced).

Notes: the client is 127.0.0.1, which rspamd treats as a local address (some rules, e.g.
``once_received``, skip local senders); the scan is otherwise the stock rule set of Debian's
package with the network modules off (no DNS lists, no fuzzy, no SPF/DKIM/DMARC: txmail does
those itself).  rspamd runs one normal worker (``count = 1``), so scans are serial there.

    .venv/bin/python benchmarks/rspamd_ingest.py --runs 2 --messages 2000 --concurrency 10

Results: a table on stdout and JSON in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests._rspamd
from _bench import (  # shared benchmark helpers
    BenchError,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    process_cpu,
    record_header,
    run_script,
    source_commit,
    stop_process,
    write_results,
)

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DOMAIN = "example.test"
USERS = [f"user{i}@{DOMAIN}" for i in range(1, 11)]
PASSWORD = "bench password"
WORDS = [
    "project",
    "meeting",
    "schedule",
    "budget",
    "review",
    "release",
    "notes",
    "friday",
    "lunch",
    "team",
    "report",
    "quarter",
    "customer",
    "feedback",
    "design",
    "document",
    "draft",
    "update",
    "agenda",
    "office",
    "travel",
    "plan",
    "invoice",
    "summary",
    "weekly",
    "status",
    "question",
    "answer",
    "idea",
    "proposal",
    "contract",
    "deadline",
    "morning",
]


# --------------------------------------------------------------------------- the server


def serve(config: dict[str, Any]) -> None:
    """Run txmail (``--serve``): print ``LISTENING port``, serve until SIGTERM."""
    from twisted.internet import reactor

    from txmail.config import load_config
    from txmail.policy.rspamd import RspamdPolicy
    from txmail.service import build_service

    settings = load_config(
        None,
        {
            "data_dir": config["data_dir"],
            "hostname": "mx.example.test",
            "domains": [DOMAIN],
            "smtp": ["tcp:0:interface=127.0.0.1"],
            "submission": [],
            "outbound_enabled": False,
        },
    )
    policies = [RspamdPolicy(config["rspamd_url"], reactor=reactor)] if config["rspamd_url"] else []
    server = build_service(settings, reactor=reactor, policies=policies)
    for user in USERS:
        server.directory.add_user(user, PASSWORD)
    server.startService()

    def listening(_: Any) -> None:
        print("LISTENING", server.address("mta")[1], flush=True)

    def failed(f: Any) -> None:
        print("FAILED", f.getErrorMessage(), flush=True)
        reactor.stop()

    server.when_listening().addCallbacks(listening, failed)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


class TxmailProcess:
    def __init__(self, python: str, run_dir: Path, rspamd_url: str | None) -> None:
        config = {"data_dir": str(run_dir / "data"), "rspamd_url": rspamd_url}
        self.log_path = run_dir / "server.log"
        with open(self.log_path, "wb") as err:
            self.proc = subprocess.Popen(
                [python, str(Path(__file__).resolve()), "--serve", json.dumps(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                cwd=run_dir,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "LISTENING":
            stop_process(self.proc)
            raise BenchError(f"txmail did not start: {line} {self.log_path.read_text()[-3000:]}")
        self.port = int(line[1])

    def stop(self) -> None:
        stop_process(self.proc)


# --------------------------------------------------------------------------- the load


def make_message(rng: random.Random, seq: int, rcpt: str) -> bytes:
    words = [rng.choice(WORDS) for _ in range(600)]
    lines = [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    body = "\r\n".join(lines[:25]) + "\r\n\r\nDetails: https://www.example.org/reports/" + str(seq)
    body += "\r\n\r\n" + "\r\n".join(lines[25:]) + "\r\n\r\n-- \r\nAlice\r\n"
    head = (
        f"From: Alice Example <alice@sender.example.org>\r\nTo: <{rcpt}>\r\n"
        f"Subject: {' '.join(rng.choice(WORDS) for _ in range(4))} {seq}\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        f"Message-ID: <bench.{seq}.{rng.randrange(1 << 30)}@sender.example.org>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    return (head + body).encode("ascii")


def load(port: int, messages: list[tuple[str, bytes]], concurrency: int) -> tuple[float, list[float]]:
    """Send *messages* over *concurrency* kept connections; (seconds, final-dot latencies)."""
    todo = iter(messages)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        mine: list[float] = []
        try:
            with smtplib.SMTP(
                "127.0.0.1", port, local_hostname="client.sender.example.org", timeout=120
            ) as smtp:
                smtp.ehlo()
                while not errors:
                    with lock:
                        item = next(todo, None)
                    if item is None:
                        break
                    rcpt, data = item
                    for command, expect in (
                        ("mail FROM:<alice@sender.example.org>", 250),
                        (f"rcpt TO:<{rcpt}>", 250),
                    ):
                        code, text = smtp.docmd(*command.split(" ", 1))
                        if code != expect:
                            raise BenchError(f"{command}: {code} {text!r}")
                    code, text = smtp.docmd("data")
                    if code != 354:
                        raise BenchError(f"DATA: {code} {text!r}")
                    smtp.send(data)
                    started = time.perf_counter()
                    smtp.send(b".\r\n")
                    code, text = smtp.getreply()
                    mine.append(time.perf_counter() - started)
                    if code != 250:
                        raise BenchError(f"final dot: {code} {text!r}")
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise BenchError(f"load generator: {errors[0]}")
    return elapsed, latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[k]


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=2000, help="timed messages per run")
    p.add_argument("--warmup", type=int, default=100, help="untimed messages per run first")
    p.add_argument("--concurrency", type=int, default=10, help="SMTP connections")
    p.add_argument("--runs", type=int, default=2, help="runs per mode (alternating off/on)")
    p.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"), help="txmail's Python")
    p.add_argument("--json", default=None, help="where to write the JSON record")
    p.add_argument("--serve", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve is not None:
        serve(json.loads(args.serve))
        return 0
    install_sigterm()
    from tests._rspamd import start_rspamd

    rspamd = start_rspamd(None)
    workdir = Path(tempfile.mkdtemp(prefix="rspamd-ingest-"))
    rng = random.Random(19)
    runs: list[dict[str, Any]] = []
    try:
        log(f"rspamd on {rspamd.url} ({rspamd.directory})")
        seq = 0
        for n in range(args.runs):
            for mode in ("off", "on"):
                run_dir = workdir / f"{mode}-{n}"
                run_dir.mkdir()
                server = TxmailProcess(args.python, run_dir, rspamd.url if mode == "on" else None)
                try:
                    batch = []
                    for _ in range(args.warmup + args.messages):
                        seq += 1
                        rcpt = USERS[seq % len(USERS)]
                        batch.append((rcpt, make_message(rng, seq, rcpt)))
                    load(server.port, batch[: args.warmup], args.concurrency)
                    cpu_before = process_cpu(server.proc.pid)
                    scanned_before = rspamd.stat()["scanned"]
                    elapsed, latencies = load(server.port, batch[args.warmup :], args.concurrency)
                    cpu = process_cpu(server.proc.pid) - cpu_before
                    stat = rspamd.stat()
                    scanned = stat["scanned"] - scanned_before
                finally:
                    server.stop()
                if mode == "on" and scanned < args.messages:
                    raise BenchError(f"rspamd scanned {scanned} of {args.messages} messages")
                if mode == "off" and scanned:
                    raise BenchError(f"rspamd scanned {scanned} messages with the policy off")
                run = {
                    "mode": mode,
                    "run": n,
                    "seconds": elapsed,
                    "msg_per_s": args.messages / elapsed,
                    "p50_ms": percentile(latencies, 50) * 1000,
                    "p99_ms": percentile(latencies, 99) * 1000,
                    "server_cpu_ms_per_msg": cpu / args.messages * 1000,
                    "rspamd_actions": stat["actions"],
                }
                runs.append(run)
                log(
                    f"{mode} run {n}: {run['msg_per_s']:.1f} msg/s, p50 {run['p50_ms']:.2f} ms, "
                    f"p99 {run['p99_ms']:.2f} ms, txmail CPU {run['server_cpu_ms_per_msg']:.2f} ms/msg"
                )
    finally:
        rspamd.stop()
        shutil.rmtree(rspamd.directory, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)

    summary = {}
    for mode in ("off", "on"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = {
            key: statistics.median(r[key] for r in mine)
            for key in ("msg_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_msg")
        }
    added = {f"added_{k}": summary["on"][k] - summary["off"][k] for k in ("p50_ms", "p99_ms")}
    print(f"\n{args.messages} messages over {args.concurrency} connections, median of {args.runs} runs\n")
    print("| rspamd | msg/s | final dot -> 250 p50 | p99 | txmail CPU ms/msg |")
    print("|---|---|---|---|---|")
    for mode in ("off", "on"):
        s = summary[mode]
        print(
            f"| {mode} | {s['msg_per_s']:.1f} | {s['p50_ms']:.2f} ms | {s['p99_ms']:.2f} ms "
            f"| {s['server_cpu_ms_per_msg']:.2f} |"
        )
    ratio = summary["on"]["msg_per_s"] / summary["off"]["msg_per_s"]
    print(
        f"\non/off = {ratio:.2f}; added latency p50 {added['added_p50_ms']:+.2f} ms, "
        f"p99 {added['added_p99_ms']:+.2f} ms"
    )
    record = record_header("rspamd_ingest", args)
    record.update(
        machine=machine_info(),
        source=source_commit(),
        rspamd=subprocess.run(["rspamd", "--version"], capture_output=True, text=True).stdout.strip(),
        runs=runs,
        summary=summary,
        ratio=ratio,
        **added,
    )
    write_results(record, "rspamd_ingest", args.json)
    return 0


if __name__ == "__main__":
    if "--serve" in sys.argv:
        main()
    else:
        run_script(main)
