"""
What Prometheus metrics cost on the SMTP hot path: txmail alone, without
Postfix or aiosmtpd peers (``smtp_delivery.py`` always starts them).

A server process (this script with ``--serve``) runs :func:`txmail.service.build_service`
with one SMTP listener on loopback, ``[server] workers = 1``, a Maildir
store, no outbound delivery, with or without ``[metrics] listen``.  A
threaded ``smtplib`` load generator sends ``--messages`` messages of
``--size`` octets over ``--concurrency`` connections (one transaction per
message, connections kept).  Reported per mode: messages per second and
the server's CPU time per message (user + system, from ``/proc``), the
median of ``--runs`` runs, modes interleaved so that a busy machine skews
both alike.  With metrics on, the test ends with a scrape of ``/metrics``
to check the counters moved.

    PYTHONPATH=src:. python benchmarks/metrics_overhead.py --messages 2000 --runs 3

``--micro`` measures instead the CPU time of one count (a command's
histogram observation, a connection's counters), on and off.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any

DOMAIN = "example.test"
USERS = [f"user{i}@{DOMAIN}" for i in range(10)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve(data_dir: str, smtp_port: int, metrics_port: int) -> None:
    """The server process: build the service, add the users, run the reactor."""
    from twisted.internet import reactor

    from txmail.config import load_config
    from txmail.service import build_service

    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "domains": [DOMAIN],
        "smtp": [f"tcp:{smtp_port}:interface=127.0.0.1"],
        "submission": [],
        "workers": 1,
        "outbound_enabled": False,
    }
    if metrics_port:
        overrides["metrics_listen"] = [f"tcp:{metrics_port}:interface=127.0.0.1"]
    server = build_service(load_config(None, overrides), reactor=reactor)
    for user in USERS:
        server.directory.add_user(user, "pass")
    server.startService()
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.run()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"port {port} did not open")


def load(port: int, messages: int, concurrency: int, size: int) -> None:
    body = b"Subject: bench\r\n\r\n" + (b"x" * 76 + b"\r\n") * max(1, size // 78)
    counter = iter(range(messages))
    lock = threading.Lock()

    def worker() -> None:
        with smtplib.SMTP("127.0.0.1", port) as s:
            s.ehlo("load.test")
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                s.sendmail("load@client.test", [USERS[n % len(USERS)]], body)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def run_once(metrics: bool, args: argparse.Namespace) -> tuple[float, float]:
    data_dir = tempfile.mkdtemp(prefix="txmail-metrics-bench-")
    smtp_port, metrics_port = free_port(), (free_port() if metrics else 0)
    env = dict(os.environ)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", data_dir, str(smtp_port), str(metrics_port)], env=env
    )
    try:
        wait_port(smtp_port)
        load(smtp_port, args.warmup, min(args.concurrency, args.warmup or 1), args.size)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        load(smtp_port, args.messages, args.concurrency, args.size)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - cpu0
        if metrics:
            text = (
                urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
            )
            line = next(x for x in text.splitlines() if x.startswith("txmail_messages_received_total{"))
            assert float(line.rsplit(" ", 1)[1]) == args.messages + args.warmup, line
        return args.messages / elapsed, cpu / args.messages * 1e6
    finally:
        proc.terminate()
        proc.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def micro() -> None:
    """The cost of one count, on and off (what a command, a connection adds)."""
    import timeit

    from txmail.metrics import NULL_PROTOCOL_METRICS, Metrics

    on = Metrics().protocol("smtp", "mta")
    n = 200_000
    for label, m in (("on ", on), ("off", NULL_PROTOCOL_METRICS)):
        # Process CPU time, not the wall clock: a busy machine preempts us.
        def cost(fn: Any) -> float:
            return timeit.Timer(fn, timer=time.process_time).timeit(n) / n * 1e6

        command = cost(lambda m=m: m.command("RCPT", 0.001))
        connection = cost(lambda m=m: (m.connection_opened(), m.connection_closed()))
        print(f"metrics {label}: {command:.2f} us CPU a command, {connection:.2f} us CPU a connection")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--micro", action="store_true", help="only the cost of one count (no server)")
    args = p.parse_args()
    if args.micro:
        micro()
        return
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for _ in range(args.runs):
        for metrics in (False, True):
            results[metrics].append(run_once(metrics, args))
    print(
        f"{args.messages} messages of {args.size} octets, {args.concurrency} connections, {args.runs} runs (median)"
    )
    base = None
    for metrics in (False, True):
        rate = statistics.median(r for r, _ in results[metrics])
        cpu = statistics.median(c for _, c in results[metrics])
        label = "metrics on " if metrics else "metrics off"
        extra = "" if base is None else f"  ({(cpu / base - 1) * 100:+.1f}% CPU per message)"
        print(f"{label}: {rate:7.0f} msg/s, {cpu:6.0f} us server CPU per message{extra}")
        base = base or cpu


if __name__ == "__main__":
    main()
