"""
Outbound relay throughput: messages per second from authenticated submission on one txmail
instance, through its on-disk queue and an SMTP relay, into the Maildirs of a second one.

Set-up per run (both are ``twistd -n mailserver`` from ``/work/txvenv``, a non-editable
install; fresh data directories; queue on disk under the sender's data directory):

``sender``
    domain ``example.test``, user ``sender@example.test``; submission on a loopback port;
    ``--resolver`` pointed at a DNS responder this script runs on 127.0.0.1 (a thread
    answering from a small table: ``remote.test MX 10 mx.remote.test``,
    ``mx.remote.test A 127.0.0.1``, NODATA for AAAA); ``--relay-port`` the remote's SMTP
    port.  Outbound TLS policy ``opportunistic`` (the remote offers no STARTTLS unless
    ``--tls``).
``remote``
    domain ``remote.test``, users ``user1..userN@remote.test``, SMTP on a loopback port;
    outbound disabled.

Load: ``--concurrency`` Python threads, each with its own submission connection (one AUTH
per connection; ``--new-connection`` opens one per message), pulling from a shared list of
``--messages`` messages of ``--size`` body bytes to ``userK@remote.test`` round-robin.

Timed from just before the first connection to (a) the last 250 from submission, (b) the
last message file present in the remote Maildirs (``new/``), which gives the throughput,
and (c) the sender's queue directory holding no entry (``*.json``).  A few warm-up messages
go through first (not timed).  A bounce in the sender's INBOX or a stuck queue fails the
run.

    python3 benchmarks/relay_throughput.py --runs 3

Results: a table on stdout and JSON in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import smtplib
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
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
    process_cpu,
    record_header,
    run_script,
    start_twistd,
    stop_process,
    tail_of,
    write_results,
)

__all__ = ["DNSResponder", "TxmailInstance", "main", "measure"]

SENDER_DOMAIN = "example.test"
REMOTE_DOMAIN = "remote.test"
MX_NAME = "mx.remote.test"
SENDER = f"sender@{SENDER_DOMAIN}"


# --------------------------------------------------------------------------- fake DNS

_TYPES = {1: "A", 15: "MX", 28: "AAAA"}


def _encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\x00"


class DNSResponder:
    """
    A stdlib-only authoritative DNS responder on 127.0.0.1 (UDP, port 0), in a thread.

    ``records`` maps ``(name, type)`` to answers: ``MX`` ``(preference, exchange)``, ``A``
    address strings.  A name present with another type answers NODATA, an unknown name
    NXDOMAIN (RFC 1035 section 4.1.1 header, 4.1.2 question, 4.1.3 answers with a
    compression pointer to the question name).  Any EDNS OPT record in the query is ignored
    (the answer carries none, which RFC 6891 section 7 allows).
    """

    def __init__(self, records: dict[tuple[str, str], list[Any]]) -> None:
        self.records = {(n.lower().rstrip("."), t): v for (n, t), v in records.items()}
        self.names = {n for n, _ in self.records}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.queries = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def start(self) -> DNSResponder:
        """Answer queries until ``stop()``."""
        self.thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._stop = True
        self.sock.close()
        self.thread.join(2)

    def _serve(self) -> None:
        self.sock.settimeout(0.5)
        while not self._stop:
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                reply = self.answer(packet)
            except (ValueError, IndexError, struct.error):
                continue
            self.queries += 1
            try:
                self.sock.sendto(reply, peer)
            except OSError:
                return

    def answer(self, packet: bytes) -> bytes:
        """The response to one query packet."""
        qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
        if qdcount != 1:
            raise ValueError("one question expected")
        pos, labels = 12, []
        while packet[pos]:
            length = packet[pos]
            labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii"))
            pos += 1 + length
        pos += 1
        qtype, _qclass = struct.unpack("!HH", packet[pos : pos + 4])
        question = packet[12 : pos + 4]
        name = ".".join(labels).lower()
        rtype = _TYPES.get(qtype)
        values = self.records.get((name, rtype or ""), [])
        rcode = 0 if (values or name in self.names) else 3  # NOERROR / NXDOMAIN
        answers = b""
        for value in values:
            if rtype == "MX":
                rdata = struct.pack("!H", value[0]) + _encode_name(value[1])
            else:
                rdata = socket.inet_aton(value)
            answers += struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata
        out_flags = 0x8400 | (flags & 0x7900) | rcode  # QR, AA; opcode and RD copied
        header = struct.pack("!HHHHHH", qid, out_flags, 1, len(values), 0, 0)
        return header + question + answers


# --------------------------------------------------------------------------- processes


class TxmailInstance:
    """One ``twistd -n mailserver`` with its own data directory."""

    def __init__(self, name: str, venv_bin: str, run_dir: Path, start_timeout: float) -> None:
        self.name = name
        self.twistd = str(Path(venv_bin) / "twistd")
        self.txmail = str(Path(venv_bin) / "txmail")
        self.dir = run_dir / name
        self.data = self.dir / "data"
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.smtp_port = free_port()
        self.submission_port = free_port()

    def add_users(self, addresses: list[str]) -> None:
        """``txmail user add`` for each address (before the server starts)."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.data.mkdir(parents=True)
        add_txmail_users(self.txmail, self.data, addresses, self.dir)

    def start(self, domain: str, hostname: str, config: str, extra: list[str]) -> None:
        """Write the config file, start twistd and wait for both ports."""
        config_path = self.dir / "txmail.toml"
        config_path.write_text(config)
        self.proc = start_twistd(
            self.twistd,
            self.dir,
            [
                "--config",
                str(config_path),
                "--data-dir",
                str(self.data),
                "--domain",
                domain,
                "--hostname",
                hostname,
                "--smtp",
                f"tcp:{self.smtp_port}:interface={HOST}",
                "--submission",
                f"tcp:{self.submission_port}:interface={HOST}",
                *extra,
            ],
            ports=(self.smtp_port, self.submission_port),
            start_timeout=self.start_timeout,
            name=self.name,
            out_label="--- twistd stdout ---",
        )

    def cpu(self) -> float:
        """CPU seconds used so far by the twistd process."""
        return 0.0 if self.proc is None else process_cpu(self.proc.pid)

    def stop(self) -> None:
        """Stop twistd."""
        stop_process(self.proc, 20)
        self.proc = None

    def maildir_new(self, address: str) -> Path:
        """``DATA/mail/DOMAIN/LOCAL/new``."""
        local, domain = address.split("@")
        return self.data / "mail" / domain / local / "new"

    def queue_entries(self) -> int:
        """Entries (``*.json``) in the on-disk queue."""
        try:
            return sum(1 for n in os.listdir(self.data / "queue") if n.endswith(".json"))
        except FileNotFoundError:
            return 0


def count_files(dirs: list[Path]) -> int:
    """Message files in the given ``new/`` directories."""
    total = 0
    for d in dirs:
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for n in os.listdir(d) if not n.startswith("."))
    return total


# --------------------------------------------------------------------------- load


def build_message(rcpt: str, size: int, seq: int) -> bytes:
    """Headers plus a ``size``-byte body of 78-column lines."""
    return filler_message(SENDER, rcpt, size, seq, subject=f"relay {seq}")


class SubmissionLoad:
    """``concurrency`` threads submitting with AUTH PLAIN over their own connections."""

    def __init__(self, port: int, recipients: list[str], size: int, concurrency: int, reuse: bool) -> None:
        self.port = port
        self.todo = list(enumerate(recipients))
        self.size = size
        self.reuse = reuse
        self.lock = threading.Lock()
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._worker, daemon=True)
            for _ in range(min(concurrency, len(recipients)))
        ]

    def _next(self) -> tuple[int, str] | None:
        with self.lock:
            return self.todo.pop() if self.todo else None

    def _worker(self) -> None:
        client: smtplib.SMTP | None = None
        try:
            while not self.errors:
                item = self._next()
                if item is None:
                    break
                if client is None:
                    client = smtplib.SMTP(HOST, self.port, local_hostname="loadgen.test", timeout=120)
                    client.login(SENDER, PASSWORD)
                seq, rcpt = item
                client.sendmail(SENDER, [rcpt], build_message(rcpt, self.size, seq))
                if not self.reuse:
                    client.quit()
                    client = None
            if client is not None:
                client.quit()
        except Exception as e:
            self.errors.append(f"{type(e).__name__}: {e}")

    def start(self) -> None:
        """Start the threads."""
        for t in self.threads:
            t.start()

    def done(self) -> bool:
        """True when every thread has finished; BenchError on the first SMTP error."""
        if self.errors:
            raise BenchError(f"submission: {self.errors[0]}")
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        """Ask the threads to stop."""
        self.errors.append("stopped")
        for t in self.threads:
            t.join(1)


# --------------------------------------------------------------------------- measuring


@dataclass
class RunResult:
    """One timed run."""

    run: int
    messages: int
    accepted_seconds: float
    delivered_seconds: float
    queue_empty_seconds: float
    msgs_per_sec: float
    sender_cpu: float
    remote_cpu: float
    dns_queries: int


def _drive(
    load: SubmissionLoad,
    sender: TxmailInstance,
    remote: TxmailInstance,
    new_dirs: list[Path],
    target: int,
    started: float,
    timeout: float,
    poll: float,
) -> tuple[float, float, float]:
    """Wait for (last 250, all files in the remote Maildirs, empty sender queue)."""
    accepted = delivered = drained = None
    last_count, last_change = -1, started
    while accepted is None or delivered is None or drained is None:
        now = time.monotonic()
        if accepted is None and load.done():
            accepted = now
        if delivered is None:
            count = count_files(new_dirs)
            if count > target:
                raise BenchError(f"{count} files in the remote Maildirs, {target} expected")
            if count == target:
                delivered = now
            elif count != last_count:
                last_count, last_change = count, now
            elif accepted is not None and now - last_change > 60:
                raise BenchError(
                    f"remote Maildirs stuck at {count}/{target} for 60 s "
                    f"(sender queue: {sender.queue_entries()} entries)"
                )
        if accepted is not None and drained is None and sender.queue_entries() == 0:
            drained = now
        for inst in (sender, remote):
            if inst.proc is not None and inst.proc.poll() is not None:
                raise BenchError(
                    f"{inst.name} exited with status {inst.proc.returncode}"
                    f"\n{tail_of(inst.dir / 'twistd.log')}"
                )
        if now - started > timeout:
            raise BenchError(
                f"timed out after {timeout} s: {last_count}/{target} delivered, "
                f"{sender.queue_entries()} queue entries"
            )
        time.sleep(poll)
    return accepted, delivered, drained


def measure(run: int, args: argparse.Namespace, workdir: Path) -> RunResult:
    """Start both instances and the DNS responder, warm up, then time one batch."""
    run_dir = workdir / f"run{run}"
    users = [f"user{i}@{REMOTE_DOMAIN}" for i in range(1, args.users + 1)]
    remote = TxmailInstance("remote", args.txmail_bin, run_dir, args.start_timeout)
    sender = TxmailInstance("sender", args.txmail_bin, run_dir, args.start_timeout)
    dns = DNSResponder(
        {
            (REMOTE_DOMAIN, "MX"): [(10, MX_NAME)],
            (MX_NAME, "A"): [HOST],
        }
    ).start()
    try:
        remote.add_users(users)
        remote_tls: list[str] = []
        if args.tls:
            cert = shutil.which("openssl")
            if cert is None:
                raise BenchError("--tls needs the openssl command")
            key_path, cert_path = remote.dir / "key.pem", remote.dir / "cert.pem"
            subprocess.run(
                [
                    "openssl",
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    f"/CN={MX_NAME}",
                    "-keyout",
                    str(key_path),
                    "-out",
                    str(cert_path),
                ],
                check=True,
                capture_output=True,
                timeout=60,
            )
            remote_tls = ["--tls-cert", str(cert_path), "--tls-key", str(key_path)]
        remote.start(REMOTE_DOMAIN, MX_NAME, "[outbound]\nenabled = false\n", remote_tls)
        sender.add_users([SENDER])
        sender.start(
            SENDER_DOMAIN,
            "mx.example.test",
            f'[outbound]\npoll_interval = {args.queue_poll}\ntls_policy = "opportunistic"\n',
            ["--resolver", f"{HOST}:{dns.port}", "--relay-port", str(remote.smtp_port)],
        )
        new_dirs = [remote.maildir_new(u) for u in users]
        base = 0
        if args.warmup:
            log(f"run {run}: warm-up {args.warmup} messages")
            rcpts = [users[i % len(users)] for i in range(args.warmup)]
            load = SubmissionLoad(
                sender.submission_port, rcpts, args.size, args.concurrency, not args.new_connection
            )
            t0 = time.monotonic()
            load.start()
            try:
                _drive(load, sender, remote, new_dirs, args.warmup, t0, args.timeout, args.poll)
            finally:
                load.stop()
            base = args.warmup
        rcpts = [users[i % len(users)] for i in range(args.messages)]
        log(
            f"run {run}: {args.messages} messages x {args.size} B over {args.concurrency} "
            f"submission connections ({'one per message' if args.new_connection else 'reused'})"
        )
        load = SubmissionLoad(
            sender.submission_port, rcpts, args.size, args.concurrency, not args.new_connection
        )
        cpu0 = sender.cpu(), remote.cpu()
        queries0 = dns.queries
        started = time.monotonic()
        load.start()
        try:
            accepted, delivered, drained = _drive(
                load, sender, remote, new_dirs, base + args.messages, started, args.timeout, args.poll
            )
        finally:
            load.stop()
        cpu1 = sender.cpu(), remote.cpu()
        bounces = count_files([sender.maildir_new(SENDER)])
        if bounces:
            raise BenchError(f"{bounces} bounce(s) in {SENDER}'s INBOX")
        seconds = delivered - started
        result = RunResult(
            run,
            args.messages,
            accepted - started,
            seconds,
            drained - started,
            args.messages / seconds,
            cpu1[0] - cpu0[0],
            cpu1[1] - cpu0[1],
            dns.queries - queries0,
        )
        log(
            f"run {run}: {result.msgs_per_sec:.1f} msg/s; last 250 after "
            f"{result.accepted_seconds:.2f} s, last file after {seconds:.2f} s, queue empty "
            f"after {result.queue_empty_seconds:.2f} s; CPU s sender {result.sender_cpu:.2f}, "
            f"remote {result.remote_cpu:.2f}"
        )
        return result
    finally:
        sender.stop()
        remote.stop()
        dns.stop()


# --------------------------------------------------------------------------- reporting


def summarize(results: list[RunResult]) -> dict[str, Any]:
    """Medians over the runs."""

    def med(field: str) -> float:
        return statistics.median(getattr(r, field) for r in results)

    return {
        "runs": len(results),
        "messages": results[0].messages,
        "accepted_seconds": med("accepted_seconds"),
        "delivered_seconds": med("delivered_seconds"),
        "queue_empty_seconds": med("queue_empty_seconds"),
        "msgs_per_sec": med("msgs_per_sec"),
        "sender_cpu": med("sender_cpu"),
        "remote_cpu": med("remote_cpu"),
        "all_msgs_per_sec": [round(r.msgs_per_sec, 2) for r in results],
    }


def format_table(results: list[RunResult], summary: dict[str, Any]) -> str:
    """Plain-text table: each run and the median."""
    head = (
        f"{'run':<6} {'messages':>8} {'last 250 s':>10} {'delivered s':>11} "
        f"{'queue empty s':>13} {'msg/s':>8} {'sender CPU s':>12} {'remote CPU s':>12}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.run:<6} {r.messages:>8} {r.accepted_seconds:>10.2f} "
            f"{r.delivered_seconds:>11.2f} {r.queue_empty_seconds:>13.2f} "
            f"{r.msgs_per_sec:>8.1f} {r.sender_cpu:>12.2f} {r.remote_cpu:>12.2f}"
        )
    if results:
        s = summary
        lines.append(
            f"{'median':<6} {s['messages']:>8} {s['accepted_seconds']:>10.2f} "
            f"{s['delivered_seconds']:>11.2f} {s['queue_empty_seconds']:>13.2f} "
            f"{s['msgs_per_sec']:>8.1f} {s['sender_cpu']:>12.2f} "
            f"{s['remote_cpu']:>12.2f}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=2000, help="timed messages per run")
    p.add_argument("--size", type=int, default=10240, help="message body bytes")
    p.add_argument("--concurrency", type=int, default=10, help="submission connections")
    p.add_argument(
        "--new-connection",
        action="store_true",
        help="one submission connection (and AUTH) per message; default: reuse",
    )
    p.add_argument("--users", type=int, default=10, help="recipients user1..userN@remote.test")
    p.add_argument("--runs", type=int, default=1, help="runs; the median is reported")
    p.add_argument("--warmup", type=int, default=20, help="untimed warm-up messages per run")
    p.add_argument(
        "--tls",
        action="store_true",
        help="give the remote a self-signed certificate (opportunistic STARTTLS)",
    )
    p.add_argument(
        "--queue-poll",
        type=float,
        default=30,
        help="the sender's [outbound] poll_interval (new mail wakes the runner anyway)",
    )
    p.add_argument("--timeout", type=float, default=600, help="seconds per timed run")
    p.add_argument("--poll", type=float, default=0.05, help="progress poll interval, seconds")
    p.add_argument(
        "--txmail-bin",
        default="/work/txvenv/bin",
        help="directory with twistd and txmail from a non-editable install",
    )
    p.add_argument("--start-timeout", type=float, default=30, help="seconds to wait for ports")
    p.add_argument("--workdir", default=None, help="scratch directory (default a new /tmp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    for name in ("messages", "size", "concurrency", "users", "runs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a run failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    workdir = make_workdir(args.workdir, "relaybench-")
    results: list[RunResult] = []
    failure: str | None = None
    try:
        for run in range(1, args.runs + 1):
            try:
                results.append(measure(run, args, workdir))
            except BenchError as e:
                failure = f"run {run}: {e}"
                log(f"FAILED: {failure}")
                break
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    summary = summarize(results) if results else {}
    print(
        f"\ntxmail relay: submission -> on-disk queue -> SMTP -> remote Maildir; "
        f"{args.messages} messages x {args.size} B to {args.users} users, "
        f"{args.concurrency} submission connections "
        f"({'one per message' if args.new_connection else 'reused'}), "
        f"{'STARTTLS' if args.tls else 'no TLS'}, {os.cpu_count()} CPUs shared with the "
        f"load generator"
    )
    print(format_table(results, summary))
    if failure:
        print(f"\nFAILED: {failure}")
    record = {
        **record_header("relay_throughput", args),
        "machine": machine_info(),
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": summary,
        "failure": failure,
    }
    write_results(record, "relay_throughput", args.json)
    return 1 if failure else 0


if __name__ == "__main__":
    run_script(main, "process")
