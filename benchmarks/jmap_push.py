"""
From SMTP's 250 to the JMAP push event in a connected web client (issue 14's second figure),
with IMAP IDLE of the same server as the reference in the same run.

A txmail ``twistd -n mailserver`` (Maildir, its default store, ``--web`` on loopback, SMTP
and IMAP, one process: ``--workers 1``) is started; one client opens the JMAP event source of
RFC 8620 section 7.3 (``types=Email``, what a web client such as txmail's webmail listens to),
another selects INBOX and IDLEs over IMAP.  Then ``--messages`` messages are sent over SMTP,
one at a time (``--pause`` seconds apart), and for each the time from the 250 reply to

``push``
    the next ``state`` event naming a new ``Email`` state, read by the event-source client;
``idle``
    the untagged ``EXISTS`` on the IDLE connection

is recorded; printed are their median, 90th and 99th percentiles and maximum in
milliseconds.  Both clients run in threads of this process on loopback; both clocks start
at the same 250, and a figure can be negative: the server tells a delivery's listeners as it
commits it, before it writes the 250.  Before each message the events left over from the
one before (a session claiming ``\Recent`` changes the state too) are read and dropped.

Run from the repository (a non-editable install's twistd, or this checkout's venv)::

    PYTHONPATH=src:. python benchmarks/jmap_push.py --messages 200 --txmail-bin .venv/bin
"""

from __future__ import annotations

import base64
import http.client
import imaplib
import json
import queue
import select
import smtplib
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    HOST,
    PASSWORD,
    BenchError,
    add_txmail_users,
    free_port,
    log,
    make_parser,
    make_workdir,
    record_header,
    run_script,
    start_twistd,
    stop_process,
    twistd_env,
    write_results,
)

USER = f"user1@{DOMAIN}"


def percentiles(values: list[float]) -> dict[str, float]:
    """Median, p90, p99 and the maximum of *values* (seconds), in milliseconds."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    return {
        "p50": statistics.median(ordered) * 1000,
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ordered[-1] * 1000,
    }


class EventSource(threading.Thread):
    """Reads the JMAP event source; puts (arrival time, new Email state) on :attr:`states`."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.states: queue.Queue[tuple[float, str]] = queue.Queue()
        self.auth = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.connected = threading.Event()

    def session_url(self) -> str:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
        conn.request("GET", "/jmap/session", headers={"Authorization": self.auth})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET /jmap/session: {response.status} {response.read()[:300]!r}")
        session = json.loads(response.read())
        conn.close()
        template: str = session["eventSourceUrl"]
        return template.replace("{types}", "Email").replace("{closeafter}", "no").replace("{ping}", "300")

    def run(self) -> None:
        url = self.session_url()
        path = url.split(f"{HOST}:{self.port}", 1)[-1] if "://" in url else url
        conn = http.client.HTTPConnection(HOST, self.port, timeout=600)
        conn.request("GET", path, headers={"Authorization": self.auth, "Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"GET {path}: {response.status}")
        self.connected.set()
        event, data = "", []
        while True:
            line = response.fp.readline()
            if not line:
                return
            now = time.monotonic()
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith("event:"):
                event = text[6:].strip()
            elif text.startswith("data:"):
                data.append(text[5:].strip())
            elif not text and data:
                if event == "state":
                    change = json.loads("\n".join(data))
                    for account in change.get("changed", {}).values():
                        if "Email" in account:
                            self.states.put((now, account["Email"]))
                event, data = "", []


class Idle:
    """An IMAP connection in IDLE on INBOX."""

    def __init__(self, port: int) -> None:
        self.imap = imaplib.IMAP4(HOST, port)
        self.imap.login(USER, PASSWORD)
        self.imap.select("INBOX")
        self.imap.send(b"i1 IDLE\r\n")
        if not self.imap.readline().startswith(b"+"):
            raise BenchError("IDLE was not accepted")

    def wait_exists(self, timeout: float) -> float:
        """The arrival time of the next ``* n EXISTS``."""
        deadline = time.monotonic() + timeout
        sock = self.imap.socket()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError("no EXISTS within the timeout")
            ready, _, _ = select.select([sock], [], [], left)
            if ready:
                line = self.imap.readline()
                now = time.monotonic()
                if line.rstrip().endswith(b"EXISTS"):
                    return now


def main() -> int:
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=200, help="messages sent, one at a time")
    p.add_argument("--pause", type=float, default=0.2, help="seconds between two messages")
    p.add_argument(
        "--txmail-bin",
        default=str(Path(sys.executable).parent),
        help="the bin directory holding twistd and txmail",
    )
    p.add_argument("--workdir", help="keep the server's files here")
    p.add_argument("--results", help="where to write the JSON record")
    p.add_argument("--start-timeout", type=float, default=60)
    args = p.parse_args()
    run_dir = make_workdir(args.workdir, "jmap-push-")
    twistd = str(Path(args.txmail_bin) / "twistd")
    data = run_dir / "data"
    add_txmail_users(str(Path(args.txmail_bin) / "txmail"), data, [USER], run_dir)
    smtp, imap, web, submission = free_port(), free_port(), free_port(), free_port()
    endpoint = f"interface={HOST}"
    proc = start_twistd(
        twistd,
        run_dir,
        [
            "--data-dir",
            str(data),
            "--domain",
            DOMAIN,
            "--workers",
            "1",
            "--smtp",
            f"tcp:{smtp}:{endpoint}",
            "--submission",
            f"tcp:{submission}:{endpoint}",
            "--imap",
            f"tcp:{imap}:{endpoint}",
            "--web",
            f"tcp:{web}:{endpoint}",
        ],
        ports=(smtp, imap, web),
        start_timeout=args.start_timeout,
        env=twistd_env(twistd),
    )
    try:
        source = EventSource(web)
        source.start()
        if not source.connected.wait(30):
            raise BenchError("the event source did not connect")
        first = source.states.get(timeout=10)  # the state on connect
        log(f"event source connected (state {first[1]})")
        idle = Idle(imap)
        push: list[float] = []
        exists: list[float] = []
        with smtplib.SMTP(HOST, smtp, timeout=30) as client:
            for n in range(args.messages):
                # Events the last message caused after its first (the IDLE session
                # claiming \Recent changes the state too) are not this message's.
                time.sleep(args.pause)
                while not source.states.empty():
                    source.states.get()
                message = f"Subject: push {n}\r\nFrom: bob@remote.test\r\n\r\nbody {n}\r\n".encode()
                client.sendmail("bob@remote.test", [USER], message)
                accepted = time.monotonic()
                exists.append(idle.wait_exists(10) - accepted)
                # The first event after the drain: it may have come before the 250 did
                # (the server tells its listeners as it commits, then answers).
                arrived, _ = source.states.get(timeout=10)
                push.append(arrived - accepted)
        idle.imap.send(b"DONE\r\n")
    finally:
        stop_process(proc, 20)
    figures = {"push": percentiles(push), "idle": percentiles(exists)}
    print(f"{args.messages} messages, 250 -> event (ms):")
    print(f"{'':8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}")
    for name, f in figures.items():
        print(f"{name:8}{f['p50']:8.1f}{f['p90']:8.1f}{f['p99']:8.1f}{f['max']:8.1f}")
    record = record_header("jmap_push", args)
    record["figures_ms"] = figures
    path = write_results(record, "jmap_push", args.results)
    log(f"results: {path}")
    return 0


if __name__ == "__main__":
    run_script(main)
