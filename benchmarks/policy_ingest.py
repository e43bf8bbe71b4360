"""
The cost of the inbound mail checks and of DKIM signing: SMTP -> Maildir messages per second
with every check on against the same run with the checks off, and submission with DKIM
signing against submission without keys (issue 11).

Four modes, each a fresh ``twistd -n mailserver`` (from ``--txmail-bin``) with a TOML
configuration written by this script (domain ``example.test``, users ``user1..userN``,
the queue off, ``[outbound] resolvers`` pointed at the DNS server below):

``checks-off``
    ``[policy] enabled = false``: no iprev, SPF, DKIM, ARC or DMARC.  The rate limits and the
    Authentication-Results policy (which removes forged fields) still run.
``checks-on``
    the default ``[policy]`` with ``trusted_networks = []``, so the loopback client is checked
    like any other: iprev at connect, SPF of HELO and MAIL FROM, the message's two DKIM
    signatures (rsa-sha256 and ed25519-sha256), ARC (no ARC set on the message: the cheap
    path), DMARC (``p=reject``), and the Authentication-Results field.
``sign-off`` / ``sign-on``
    authenticated submission (AUTH PLAIN, ``user1@example.test``) to local recipients, without
    and with ``[[dkim.keys]]`` for example.test (rsa 2048 + ed25519, made with ``txmail dkim
    keygen``): every message gets two DKIM-Signature fields in ``sign-on``.

``checks-off`` also uses ``trusted_networks = []``, so that the limits treat the client the
same way in both ingest modes; the only difference is ``enabled``.

An authoritative DNS server (``benchmarks/_dns_server.py``, twisted.names, a process of its
own so that its CPU counts neither for txmail nor for the load generator) is started for
every run and publishes for the sending domain ``sender.bench``: SPF ``v=spf1 ip4:127.0.0.1
-all`` (also for the HELO name ``mail.sender.bench``), the two DKIM keys, DMARC ``p=reject``,
MX and A records, and ``1.0.0.127.in-addr.arpa PTR mail.sender.bench`` so that iprev passes.
txmail's resolver caches the answers for their TTL (3,600 s), so after the warm-up the checks
run on cached DNS: this measures the checks, not the network.

The load is the workload and clock of ``smtp_delivery.py`` (its ``measure``, Maildir counter
and plan are imported): ``--messages`` messages of ``--size`` body bytes (~10 KiB) over
``--concurrency`` connections, round-robin to ``user1..userN``; timed from the first
connection until every file is in the Maildirs.  The load generator is Python (threaded
``smtplib`` in this process, as ``smtp_delivery.py --load python``), since ``smtp-source``
cannot send a DKIM-signed message: the ingest modes both send the same bytes, signed once
before the runs with ``txmail.policy.dkim.sign`` and the published keys.  Ingest uses one
message per connection (``--reuse`` for many); submission keeps its connections (one AUTH
each; ``--sign-new-connection`` for one per message).

After each run a sample of the delivered files is checked, and the run fails loudly if they
do not show that the work was done: ``checks-on`` files must carry our
Authentication-Results with iprev, SPF (mailfrom and helo), DKIM (both algorithms) and DMARC
all ``pass``; ``checks-off`` files none of those; ``sign-on`` files two DKIM-Signature fields
that verify (``txmail.policy.dkim.verify`` against the published keys); ``sign-off`` files
none.

Each run also reports "other CPU": what the machine was busy (``/proc/stat``) during the timed
run beyond the server and this process, i.e. other people's work on a shared machine.

txmail and its dependencies are not imported here: key generation, signing and verification
run in the txmail venv's Python (:data:`_HELPER`, run with ``-c``, its job as JSON on stdin).

    python3 benchmarks/policy_ingest.py --runs 3

Results: a table on stdout and JSON in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import re
import shutil
import smtplib
import statistics
import subprocess
import sys
import threading
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
    machine_cpu,
    machine_info,
    make_parser,
    make_workdir,
    process_cpu,
    record_header,
    run_script,
    source_commit,
    start_twistd,
    stop_process,
    tail_of,
    twistd_env,
    txmail_version,
    wait_for_port,
    write_results,
)
from smtp_delivery import (  # the workload and clock of the SMTP delivery benchmark
    LoadGenerator,
    Plan,
    RunResult,
    Server,
    make_plan,
    measure,
)

__all__ = ["MODES", "SMTPLoad", "TxmailMode", "main"]

SENDER_DOMAIN = "sender.bench"
SENDER_HELO = f"mail.{SENDER_DOMAIN}"
SENDER = f"bench@{SENDER_DOMAIN}"
SUBMITTER = f"user1@{DOMAIN}"
HOSTNAME = f"mx.{DOMAIN}"  # also the authserv-id of the Authentication-Results field
TARGET = 0.75  # issue 11: the checks cost at most 25 % of the ingest throughput
DNS_TTL = 3600

#: (domain, selector, algorithm) of the DKIM keys made for every benchmark invocation.
KEYS = (
    (SENDER_DOMAIN, "rsa", "rsa-sha256"),
    (SENDER_DOMAIN, "ed", "ed25519-sha256"),
    (DOMAIN, "rsa2026", "rsa-sha256"),
    (DOMAIN, "ed2026", "ed25519-sha256"),
)


# --------------------------------------------------------------------------- txmail's Python

#: Run by the txmail venv's Python; a JSON job on stdin, the JSON answer on stdout.
_HELPER = r"""
import base64, json, sys
from txmail.dnsdata import Answer
from txmail.policy import dkim

job = json.load(sys.stdin)
op = job["op"]
if op == "generate":  # only when `txmail dkim keygen` is missing
    for k in job["keys"]:
        dkim.write_key(k["path"], dkim.generate_key(k["algorithm"], 2048)[0])
    out = None
elif op == "records":
    out = []
    for k in job["keys"]:
        with open(k["path"], "rb") as f:
            out.append(dkim.txt_record_for(f.read()))
elif op == "sign":
    keys = [dkim.load_signing_key(k["path"], k["domain"], k["selector"]) for k in job["keys"]]
    out = []
    for text in job["messages"]:
        message = base64.b64decode(text)
        out.append(base64.b64encode(dkim.sign(message, keys) + message).decode())
elif op == "verify":
    records = {name: Answer.of(value.encode()) for name, value in job["records"].items()}
    out = []
    for text in job["messages"]:
        message = base64.b64decode(text)
        answers = {n: records.get(n, Answer.of()) for n in dkim.key_queries(message)}
        out.append([[r.result, r.domain, r.algorithm, r.reason]
                    for r in dkim.verify(message, answers)])
json.dump(out, sys.stdout)
"""


def run_helper(python: str, job: dict[str, Any]) -> Any:
    """Run :data:`_HELPER` on ``job`` with txmail's Python; its JSON answer."""
    res = subprocess.run(
        [python, "-c", _HELPER], input=json.dumps(job), capture_output=True, text=True, timeout=300, cwd=HERE
    )
    if res.returncode != 0:
        raise BenchError(f"{python} (helper {job['op']}) exited {res.returncode}:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout)


@dataclass(frozen=True)
class DKIMKey:
    """A key file made for this benchmark and the TXT record that publishes it."""

    domain: str
    selector: str
    algorithm: str
    path: str
    record: str

    @property
    def name(self) -> str:
        """``selector._domainkey.domain``."""
        return f"{self.selector}._domainkey.{self.domain}"

    def job(self) -> dict[str, str]:
        """As the helper takes it."""
        return {
            "domain": self.domain,
            "selector": self.selector,
            "path": self.path,
            "algorithm": self.algorithm,
        }


def make_keys(venv_bin: Path, keydir: Path) -> tuple[list[DKIMKey], str]:
    """The :data:`KEYS`, with ``txmail dkim keygen`` if it exists, else the helper."""
    keydir.mkdir(parents=True, exist_ok=True)
    txmail = str(venv_bin / "txmail")
    python = str(venv_bin / "python")
    specs = [(d, s, a, str(keydir / f"{d}.{s}.key")) for d, s, a in KEYS]
    for *_, path in specs:
        Path(path).unlink(missing_ok=True)
    has_keygen = (
        subprocess.run([txmail, "dkim", "keygen", "--help"], capture_output=True, timeout=60).returncode == 0
    )
    if has_keygen:
        how = "txmail dkim keygen"
        for domain, selector, algorithm, path in specs:
            cmd = [
                txmail,
                "dkim",
                "keygen",
                "--selector",
                selector,
                "--algorithm",
                algorithm.split("-")[0],
                "--out",
                path,
                domain,
            ]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=keydir)
            if res.returncode != 0:
                raise BenchError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stderr}")
    else:
        how = "txmail.policy.dkim.generate_key/write_key"
        run_helper(python, {"op": "generate", "keys": [{"path": p, "algorithm": a} for _, _, a, p in specs]})
    records = run_helper(python, {"op": "records", "keys": [{"path": p} for *_, p in specs]})
    keys = [DKIMKey(d, s, a, p, r) for (d, s, a, p), r in zip(specs, records, strict=True)]
    return keys, how


def zone_records(keys: Sequence[DKIMKey]) -> list[list[Any]]:
    """What the DNS server publishes (see the module notes)."""
    spf = "v=spf1 ip4:127.0.0.1 -all"
    records: list[list[Any]] = [
        [SENDER_DOMAIN, "TXT", spf],
        [SENDER_DOMAIN, "MX", [10, SENDER_HELO]],
        [SENDER_DOMAIN, "A", HOST],
        [SENDER_HELO, "A", HOST],
        [SENDER_HELO, "TXT", spf],  # the HELO identity's SPF (RFC 7208 section 2.3)
        [f"_dmarc.{SENDER_DOMAIN}", "TXT", "v=DMARC1; p=reject"],
        ["1.0.0.127.in-addr.arpa", "PTR", SENDER_HELO],  # iprev (RFC 8601 section 3)
        [DOMAIN, "MX", [10, HOSTNAME]],
        [HOSTNAME, "A", HOST],
        [DOMAIN, "TXT", spf],
        [f"_dmarc.{DOMAIN}", "TXT", "v=DMARC1; p=reject"],
    ]
    records += [[k.name, "TXT", k.record] for k in keys]
    return records


class DNSProcess:
    """``_dns_server.py`` with txmail's Python, on a free loopback port (UDP and TCP)."""

    def __init__(self, python: str, zone: Path, run_dir: Path) -> None:
        self.stats_path = run_dir / "dns-stats.json"
        self.logfile = run_dir / "dns.log"
        with open(self.logfile, "wb") as err:
            self.proc = subprocess.Popen(
                [python, str(HERE / "_dns_server.py"), str(zone), "--stats", str(self.stats_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 2 or line[0] != "LISTENING":
            stop_process(self.proc)
            raise BenchError(f"DNS server did not start: {tail_of(self.logfile)}")
        self.port = int(line[1])
        wait_for_port(self.port, self.proc, 10, "DNS server (TCP)", self.logfile)

    def stop(self) -> dict[str, Any]:
        """Stop it; its query counts and CPU seconds."""
        cpu = process_cpu(self.proc.pid)
        stop_process(self.proc)
        try:
            stats: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            stats = {"queries": None}
        stats["cpu"] = cpu
        return stats


# --------------------------------------------------------------------------- the load


class SMTPLoad(LoadGenerator):
    """Threaded smtplib, one thread per connection, sending pre-made bytes per recipient.

    Like ``smtp_delivery.PythonLoad``, with the sender, the HELO name, AUTH and the message
    bytes chosen by the mode.
    """

    def __init__(
        self, bodies: dict[str, bytes], mail_from: str, helo: str, login: tuple[str, str] | None, reuse: bool
    ) -> None:
        self.bodies = bodies
        self.mail_from = mail_from
        self.helo = helo
        self.login = login
        self.reuse = reuse
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []
        self.machine_busy = 0.0  # CPU seconds the machine was busy from start() to stop()

    def start(self, port: int, plan: Plan) -> None:
        """Start one thread per connection of ``plan``."""
        self.machine_busy = -machine_cpu()
        todo = iter(plan.recipients())
        lock = threading.Lock()
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
                        client = smtplib.SMTP(HOST, port, local_hostname=self.helo, timeout=120)
                        if self.login is not None:
                            client.login(*self.login)
                    client.sendmail(self.mail_from, [rcpt], self.bodies[rcpt])
                    if not self.reuse:
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
        """True when every thread is done; BenchError on the first SMTP error."""
        if self.errors:
            raise BenchError(f"load generator: {self.errors[0]}")
        return not any(t.is_alive() for t in self.threads)

    def stop(self) -> None:
        """Ask the threads to stop and give them a moment."""
        self.machine_busy += machine_cpu()
        self.errors.append("stopped")
        for t in self.threads:
            t.join(1)


# --------------------------------------------------------------------------- the modes


@dataclass(frozen=True)
class Mode:
    """One configuration of the server and how it is loaded."""

    name: str
    role: str  # "smtp" (port 25 role, checked) or "submission" (AUTH, signed)
    policy: str  # the TOML tables [policy] / [dkim]
    description: str
    checks_off: frozenset[str] = frozenset()  # checks-on: checks switched off by --on-policy


def _dkim_tables(keys: Sequence[DKIMKey]) -> str:
    return "".join(
        f'\n[[dkim.keys]]\ndomain = "{k.domain}"\nselector = "{k.selector}"\nkey = "{k.path}"\n' for k in keys
    )


def make_modes(keys: Sequence[DKIMKey], on_policy: Sequence[str] = ()) -> dict[str, Mode]:
    """The four modes (see the module notes); ``on_policy``: more ``[policy]`` lines for checks-on."""
    ours = [k for k in keys if k.domain == DOMAIN]
    extra = "".join(line + "\n" for line in on_policy)
    off = frozenset(
        name
        for name in ("iprev", "spf", "dkim", "dmarc")
        if any(re.fullmatch(rf"\s*{name}\s*=\s*false\s*", line) for line in on_policy)
    )
    return {
        m.name: m
        for m in (
            Mode(
                "checks-off",
                "smtp",
                "[policy]\nenabled = false\ntrusted_networks = []\n",
                "[policy] enabled = false, trusted_networks = []",
            ),
            Mode(
                "checks-on",
                "smtp",
                "[policy]\ntrusted_networks = []\n" + extra,
                "[policy] trusted_networks = []: iprev, SPF, DKIM x2, ARC, DMARC"
                + "".join(f"; {line}" for line in on_policy),
                off,
            ),
            Mode("sign-off", "submission", "", "submission, no [dkim] keys"),
            Mode(
                "sign-on",
                "submission",
                _dkim_tables(ours),
                "submission, [[dkim.keys]] example.test rsa 2048 + ed25519",
            ),
        )
    }


MODES = ("checks-off", "checks-on", "sign-off", "sign-on")


class TxmailMode(Server):
    """One mode's twistd and its DNS server, both fresh for every run."""

    def __init__(
        self,
        mode: Mode,
        venv_bin: Path,
        env: dict[str, str] | None,
        zone: Path,
        users: int,
        start_timeout: float,
    ) -> None:
        self.mode = mode
        self.name = mode.name
        self.venv_bin = venv_bin
        self.env = env
        self.zone = zone
        self.users = users
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.dns: DNSProcess | None = None
        self.dns_stats: dict[str, Any] = {}
        self.data: Path | None = None
        self.config = ""

    def start_run(self, run_dir: Path, users: list[str]) -> int:
        """Users, DNS server, configuration, twistd; the port the load goes to."""
        self.data = run_dir / "data"
        shutil.rmtree(self.data, ignore_errors=True)
        self.data.mkdir(parents=True)
        count = max(self.users, *(int(u.removeprefix("user")) for u in users))
        add_txmail_users(
            str(self.venv_bin / "txmail"),
            self.data,
            [f"user{i}@{DOMAIN}" for i in range(1, count + 1)],
            run_dir,
        )
        self.dns = DNSProcess(str(self.venv_bin / "python"), self.zone, run_dir)
        smtp, submission = free_port(), free_port()
        self.config = (
            f'[server]\nhostname = "{HOSTNAME}"\ndata_dir = "{self.data}"\n'
            f'domains = ["{DOMAIN}"]\n\n'
            f'[smtp]\nlisten = ["tcp:{smtp}:interface={HOST}"]\n'
            f'submission = ["tcp:{submission}:interface={HOST}"]\n\n'
            f'[outbound]\nenabled = false\nresolvers = ["{HOST}:{self.dns.port}"]\n\n'
            f"{self.mode.policy}"
        )
        config = run_dir / "txmail.toml"
        config.write_text(self.config)
        self.proc = start_twistd(
            str(self.venv_bin / "twistd"),
            run_dir,
            ["--config", str(config)],
            ports=(smtp, submission),
            start_timeout=self.start_timeout,
            name=self.name,
            env=self.env,
        )
        return smtp if self.mode.role == "smtp" else submission

    def pids(self) -> list[int]:
        """twistd (the DNS server is not counted)."""
        return [] if self.proc is None else [self.proc.pid]

    def maildirs(self, users: list[str]) -> list[Path]:
        """``DATA/mail/example.test/userN``."""
        assert self.data is not None
        return [self.data / "mail" / DOMAIN / u for u in users]

    def end_run(self) -> None:
        """Stop twistd and the DNS server (keeping its query counts)."""
        stop_process(self.proc, 20)
        self.proc = None
        if self.dns is not None:
            self.dns_stats = self.dns.stop()
            self.dns = None

    teardown = end_run


# --------------------------------------------------------------------------- checks


def _header(data: bytes) -> list[str]:
    """The header fields, unfolded, one string each."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return re.sub(r"\r\n[ \t]+", " ", head).split("\r\n")


def _fields(data: bytes, name: str) -> list[str]:
    prefix = name.lower() + ":"
    return [f.split(":", 1)[1].strip() for f in _header(data) if f.lower().startswith(prefix)]


def _results(data: bytes) -> list[str] | None:
    """The resinfo parts (``method=result props``, comments removed) of our A-R field."""
    for value in _fields(data, "Authentication-Results"):
        parts = [p.strip() for p in re.sub(r"\([^()]*\)", "", value).split(";")]
        if parts[0].lower() == HOSTNAME:
            return parts[1:]
    return None


def _has(results: list[str], method_result: str, *props: str) -> bool:
    return any(r.split()[0:1] == [method_result] and all(p in r.split() for p in props) for r in results if r)


#: What every checked file of ``checks-on`` must show (RFC 8601 resinfo with properties).
REQUIRED_RESULTS = (
    ("iprev=pass",),
    ("spf=pass", f"smtp.mailfrom={SENDER}"),
    ("spf=pass", f"smtp.helo={SENDER_HELO}"),
    ("dkim=pass", f"header.d={SENDER_DOMAIN}", "header.a=rsa-sha256"),
    ("dkim=pass", f"header.d={SENDER_DOMAIN}", "header.a=ed25519-sha256"),
    ("dmarc=pass", f"header.from={SENDER_DOMAIN}"),
)


def sample_files(maildirs: Sequence[Path], count: int) -> list[Path]:
    """``count`` delivered files spread evenly over all of them (all with ``count`` 0)."""
    files = sorted(p for m in maildirs for sub in ("new", "cur") for p in (m / sub).glob("*") if p.is_file())
    if count <= 0 or count >= len(files):
        return files
    step = len(files) / count
    return [files[int(i * step)] for i in range(count)]


def check_delivered(
    mode: Mode, files: Sequence[Path], keys: Sequence[DKIMKey], python: str, verify: int
) -> dict[str, Any]:
    """Fail (BenchError) unless the files show the mode's work; a summary for the JSON."""
    if not files:
        raise BenchError(f"{mode.name}: no delivered file to check")
    seen: dict[str, Any] = {"files_checked": len(files)}
    for path in files:
        data = path.read_bytes()
        results = _results(data) or []
        signatures = _fields(data, "DKIM-Signature")
        if mode.name == "checks-on":
            required = [r for r in REQUIRED_RESULTS if r[0].split("=")[0] not in mode.checks_off]
            missing = [" ".join(r) for r in required if not _has(results, *r)]
            if missing:
                raise BenchError(
                    f"checks-on: {path.name} lacks {missing} in its Authentication-Results: {results}"
                )
        elif mode.name == "checks-off":
            done = [r for r in results if r.split("=")[0] in ("iprev", "spf", "dkim", "dmarc")]
            if done:
                raise BenchError(f"checks-off: {path.name} was checked anyway: {done}")
        elif mode.name == "sign-on":
            algorithms = sorted(
                re.search(r"\ba=([\w-]+)", s).group(1)  # type: ignore[union-attr]
                for s in signatures
                if re.search(rf"\bd={re.escape(DOMAIN)};", s)
            )
            if algorithms != ["ed25519-sha256", "rsa-sha256"] or len(signatures) != 2:
                raise BenchError(
                    f"sign-on: {path.name} has {len(signatures)} DKIM-Signature "
                    f"field(s) ({algorithms}), expected rsa-sha256 + ed25519-sha256"
                )
        elif signatures:
            raise BenchError(f"sign-off: {path.name} carries {len(signatures)} DKIM-Signature")
        seen.setdefault("example_results", results)
    if mode.name == "sign-on" and verify:
        chosen = files[:verify]
        verdicts = run_helper(
            python,
            {
                "op": "verify",
                "records": {k.name: k.record for k in keys},
                "messages": [base64.b64encode(p.read_bytes()).decode() for p in chosen],
            },
        )
        for path, verdict in zip(chosen, verdicts, strict=True):
            if len(verdict) != 2 or any(v[0] != "pass" for v in verdict):
                raise BenchError(f"sign-on: {path.name}'s signatures do not verify: {verdict}")
        seen["signatures_verified"] = len(chosen)
    return seen


# --------------------------------------------------------------------------- measuring


@dataclass
class ModeRun:
    """One timed run of one mode: smtp_delivery's figures plus DNS and the file check.

    ``other_cpu``: CPU seconds the machine was busy during the timed run beyond what the
    server and this process (load generator, poller) used: other people's work, and the
    kernel's work not charged to a process.
    """

    result: RunResult
    cpu_ms_per_msg: float
    other_cpu: float
    dns_queries: int | None
    dns_cpu: float
    check: dict[str, Any]


def run_mode(
    server: TxmailMode,
    run: int,
    plan: Plan,
    warmup_plan: Plan | None,
    make_load: Callable[[], SMTPLoad],
    workdir: Path,
    args: argparse.Namespace,
    keys: Sequence[DKIMKey],
) -> ModeRun:
    """``smtp_delivery.measure``, then the check of the delivered files."""
    made: list[SMTPLoad] = []

    def tracked() -> LoadGenerator:
        made.append(make_load())
        return made[-1]

    result = measure(
        server, run, plan, warmup_plan, tracked, workdir, args.timeout, args.poll, args.busy_poll
    )
    other_cpu = made[-1].machine_busy - result.server_cpu - result.load_cpu
    files = sample_files(server.maildirs(plan.users), args.check_sample)
    check = check_delivered(
        server.mode, files, keys, str(Path(args.txmail_bin) / "python"), args.verify_signatures
    )
    log(
        f"{server.name} run {run}: {check['files_checked']} delivered file(s) checked: ok; "
        f"DNS queries answered {server.dns_stats.get('queries')}"
    )
    if not args.keep:
        shutil.rmtree(workdir / f"{server.name}-run{run}", ignore_errors=True)
    if other_cpu > 0.1 * result.seconds:
        log(
            f"{server.name} run {run}: the machine was busy with other work too: "
            f"{other_cpu:.2f} CPU s during the {result.seconds:.2f} s run"
        )
    return ModeRun(
        result,
        1000 * result.server_cpu / result.messages,
        other_cpu,
        server.dns_stats.get("queries"),
        server.dns_stats.get("cpu", 0.0),
        check,
    )


def summarize(runs: list[ModeRun], order: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Medians per mode."""
    out: dict[str, dict[str, Any]] = {}
    for name in order:
        mine = [r for r in runs if r.result.server == name]
        if not mine:
            continue

        def med(get: Callable[[ModeRun], float | None], mine: list[ModeRun] = mine) -> float | None:
            values = [v for v in map(get, mine) if v is not None]
            return statistics.median(values) if values else None

        out[name] = {
            "runs": len(mine),
            "messages": mine[0].result.messages,
            "seconds": med(lambda r: r.result.seconds),
            "accepted_seconds": med(lambda r: r.result.accepted_seconds),
            "msgs_per_sec": med(lambda r: r.result.msgs_per_sec),
            "server_cpu": med(lambda r: r.result.server_cpu),
            "cpu_ms_per_msg": med(lambda r: r.cpu_ms_per_msg),
            "load_cpu": med(lambda r: r.result.load_cpu),
            "other_cpu": med(lambda r: r.other_cpu),
            "dns_queries": med(lambda r: r.dns_queries),
            "all_msgs_per_sec": [round(r.result.msgs_per_sec, 1) for r in mine],
        }
    return out


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """checks-on against checks-off, sign-on against sign-off."""
    out: dict[str, dict[str, Any]] = {}
    for on, off, key in (("checks-on", "checks-off", "checks"), ("sign-on", "sign-off", "signing")):
        if on in summary and off in summary:
            a, b = summary[on], summary[off]
            out[key] = {
                "throughput_ratio": a["msgs_per_sec"] / b["msgs_per_sec"],
                "cpu_ratio": a["cpu_ms_per_msg"] / b["cpu_ms_per_msg"],
                "extra_cpu_ms_per_msg": a["cpu_ms_per_msg"] - b["cpu_ms_per_msg"],
            }
    if "checks" in out:
        out["checks"]["target"] = TARGET
        out["checks"]["target_met"] = out["checks"]["throughput_ratio"] >= TARGET
    return out


def format_table(summary: dict[str, dict[str, Any]], modes: dict[str, Mode]) -> str:
    """Plain-text table of the medians."""
    head = (
        f"{'mode':<10} {'port':<10} {'messages':>8} {'seconds':>8} {'msg/s':>8} "
        f"{'last 250 s':>10} {'server CPU s':>12} {'CPU ms/msg':>10} {'load CPU s':>10} "
        f"{'other CPU s':>11} {'DNS queries':>11} {'runs':>4}  msg/s per run"
    )
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        acc = f"{r['accepted_seconds']:.2f}" if r["accepted_seconds"] is not None else "-"
        dnsq = f"{r['dns_queries']:.0f}" if r["dns_queries"] is not None else "-"
        lines.append(
            f"{name:<10} {modes[name].role:<10} {r['messages']:>8} {r['seconds']:>8.2f} "
            f"{r['msgs_per_sec']:>8.1f} {acc:>10} {r['server_cpu']:>12.2f} "
            f"{r['cpu_ms_per_msg']:>10.2f} {r['load_cpu']:>10.2f} {r['other_cpu']:>11.2f} "
            f"{dnsq:>11} {r['runs']:>4}  "
            f"{', '.join(str(x) for x in r['all_msgs_per_sec'])}"
        )
    return "\n".join(lines)


def format_ratios(found: dict[str, dict[str, Any]]) -> str:
    """One line per comparison."""
    lines = []
    if "checks" in found:
        c = found["checks"]
        lines.append(
            f"checks-on / checks-off: {c['throughput_ratio']:.3f} of the throughput "
            f"(target >= {TARGET}: {'met' if c['target_met'] else 'NOT met'}); "
            f"server CPU per message x{c['cpu_ratio']:.2f} (+{c['extra_cpu_ms_per_msg']:.2f} ms)"
        )
    if "signing" in found:
        s = found["signing"]
        lines.append(
            f"sign-on / sign-off:     {s['throughput_ratio']:.3f} of the throughput; "
            f"server CPU per message x{s['cpu_ratio']:.2f} (+{s['extra_cpu_ms_per_msg']:.2f} ms)"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=2000, help="timed messages per run and mode")
    p.add_argument("--concurrency", type=int, default=10, help="concurrent SMTP connections")
    p.add_argument("--size", type=int, default=10240, help="message body bytes")
    p.add_argument("--users", type=int, default=10, help="recipients user1..userN@example.test")
    p.add_argument("--runs", type=int, default=1, help="runs per mode, interleaved; the median is reported")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ", ".join(MODES))
    p.add_argument(
        "--warmup",
        type=int,
        default=200,
        help="untimed warm-up messages per mode and run (they also fill the DNS cache)",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="ingest: many messages per connection (default one per connection)",
    )
    p.add_argument(
        "--sign-new-connection",
        action="store_true",
        help="submission: one connection and AUTH per message (default: reused)",
    )
    p.add_argument(
        "--on-policy",
        action="append",
        default=[],
        metavar="LINE",
        help='a line added to checks-on\'s [policy] table, e.g. "dkim = false" (repeatable; '
        "to see what each check costs); the file check then skips the checks turned off",
    )
    p.add_argument("--check-sample", type=int, default=50, help="delivered files checked per run (0 = all)")
    p.add_argument(
        "--verify-signatures",
        type=int,
        default=5,
        help="sign-on: files whose DKIM signatures are verified per run",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds per timed run")
    p.add_argument("--poll", type=float, default=0.02, help="as smtp_delivery.py --poll")
    p.add_argument("--busy-poll", type=float, default=0.5, help="as smtp_delivery.py --busy-poll")
    p.add_argument(
        "--txmail-bin",
        default="/work/main/.venv/bin",
        help="directory holding txmail's twistd, txmail and python",
    )
    p.add_argument("--start-timeout", type=float, default=30, help="seconds to wait for ports")
    p.add_argument("--workdir", default=None, help="scratch directory (default a new /tmp dir)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and data")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(args.mode_list) - set(MODES)
    if unknown or not args.mode_list:
        p.error(f"unknown mode(s): {', '.join(sorted(unknown)) or '(none)'}")
    for name in ("messages", "concurrency", "size", "runs", "users"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if a mode failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    load_before = os.getloadavg()
    venv_bin = Path(args.txmail_bin)
    twistd = str(venv_bin / "twistd")
    env = twistd_env(twistd)
    workdir = make_workdir(args.workdir, "policybench-")
    plan = make_plan(args.messages, args.concurrency, args.size, args.users, False)
    warmup_plan = (
        make_plan(args.warmup, args.concurrency, args.size, len(plan.shares), False) if args.warmup else None
    )
    runs: list[ModeRun] = []
    failures: dict[str, str] = {}
    servers: dict[str, TxmailMode] = {}
    try:
        log(f"making DKIM keys in {workdir / 'keys'}")
        keys, keys_how = make_keys(venv_bin, workdir / "keys")
        zone = workdir / "zone.json"
        zone.write_text(json.dumps({"ttl": DNS_TTL, "records": zone_records(keys)}, indent=1))
        modes = make_modes(keys, args.on_policy)
        python = str(venv_bin / "python")
        rcpts = [f"{u}@{DOMAIN}" for u in plan.users]
        # The same signed bytes for both ingest modes, signed once, now.
        unsigned = [filler_message(SENDER, r, args.size, 0, subject="policy ingest") for r in rcpts]
        signed = run_helper(
            python,
            {
                "op": "sign",
                "keys": [k.job() for k in keys if k.domain == SENDER_DOMAIN],
                "messages": [base64.b64encode(m).decode() for m in unsigned],
            },
        )
        ingest = {r: base64.b64decode(m) for r, m in zip(rcpts, signed, strict=True)}
        submit = {r: filler_message(SUBMITTER, r, args.size, 0, subject="policy signing") for r in rcpts}

        def loader(mode: Mode) -> Callable[[], SMTPLoad]:
            if mode.role == "smtp":
                return lambda: SMTPLoad(ingest, SENDER, SENDER_HELO, None, args.reuse)
            return lambda: SMTPLoad(
                submit, SUBMITTER, f"client.{DOMAIN}", (SUBMITTER, PASSWORD), not args.sign_new_connection
            )

        for name in args.mode_list:
            servers[name] = TxmailMode(modes[name], venv_bin, env, zone, args.users, args.start_timeout)
        for run in range(1, args.runs + 1):
            for name, server in servers.items():
                if name in failures:
                    continue
                try:
                    runs.append(
                        run_mode(server, run, plan, warmup_plan, loader(server.mode), workdir, args, keys)
                    )
                except BenchError as e:
                    failures[name] = f"run {run}: {e}"
                    log(f"{name} run {run}: FAILED: {e}")
    except BenchError as e:
        failures["setup"] = str(e)
        log(f"setup FAILED: {e}")
        keys, keys_how, modes = [], "", {}
    finally:
        for server in servers.values():
            try:
                server.end_run()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    load_after = os.getloadavg()

    summary = summarize(runs, args.mode_list)
    found = ratios(summary)
    print(
        f"\nInbound checks and DKIM signing: {args.messages} messages x {args.size} B, "
        f"{args.concurrency} connections (ingest: "
        f"{'reused' if args.reuse else 'one message each'}; submission: "
        f"{'one message each' if args.sign_new_connection else 'reused'}), "
        f"recipients user1..user{len(plan.users)}, median of {args.runs} run(s), "
        f"{os.cpu_count()} CPUs shared with the load generator; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    if modes:
        print(format_table(summary, modes))
        print(format_ratios(found))
    for name, err in failures.items():
        print(f"\n{name}: FAILED\n{err}")

    record = {
        **record_header("policy_ingest", args),
        "machine": machine_info(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "txmail": {
            "twistd": twistd,
            "version": txmail_version(twistd),
            "source": source_commit(),
            "plugin_env": (env or {}).get("PYTHONPATH"),
        },
        "modes": {n: dataclasses.asdict(m) for n, m in modes.items()},
        "keys": {"made_with": keys_how, "keys": [{"name": k.name, "algorithm": k.algorithm} for k in keys]},
        "runs": [
            {
                **dataclasses.asdict(r.result),
                "cpu_ms_per_msg": r.cpu_ms_per_msg,
                "other_cpu": r.other_cpu,
                "dns_queries": r.dns_queries,
                "dns_cpu": r.dns_cpu,
                "check": r.check,
            }
            for r in runs
        ],
        "summary": summary,
        "ratios": found,
        "failures": failures,
    }
    write_results(record, "policy_ingest", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
