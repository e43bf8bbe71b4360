"""
txmail on PostgreSQL: durable SMTP ingest and bulk IMAP FETCH against Maildir, and scaling.

Issue 13, section 5.  In one run, on one workload, with a throwaway PostgreSQL cluster this
script starts itself (default durability: ``fsync``, ``synchronous_commit`` and
``full_page_writes`` on; see ``_postgres_bench.py``):

``maildir``
    one ``twistd -n mailserver --config FILE`` with the embedded defaults (``[store]
    backend = "maildir"``, users in ``users.json``, file queue).
``postgresql``
    one such process with ``[store]``, ``[directory]`` and ``[queue] backend =
    "postgresql"`` on a fresh database (``txmail db upgrade``, ``txmail user add`` through
    the CLI).
``pg-xN`` (``--procs``, default 1,2,4)
    N such processes on one fresh database, all behind **one** SMTP port: the script opens N
    listening sockets with ``SO_REUSEPORT`` on the same 127.0.0.1 port and hands one to each
    process as an inherited descriptor (systemd socket activation: ``LISTEN_FDS=1``,
    ``LISTEN_PID``, ``LISTEN_FDNAMES``, fd 3; txmail's listener is ``systemd:domain=INET:index=0``, an ordinary
    Twisted endpoint).  The kernel spreads the connections over the N sockets.

For each: SMTP durable ingest of ``--messages`` messages (Postfix's ``smtp-source``, the load
generator of ``smtp_delivery.py``), the clock stopping when every message is committed
(Maildir: files in ``new/``; PostgreSQL: ``SELECT count(*) FROM messages``).  For
``maildir`` and ``postgresql`` then ``UID FETCH 1:* (BODY.PEEK[])`` of every recipient's
INBOX (the raw-socket client of ``imap_fetch.py``), twice.  Results: a table on stdout and
JSON in ``benchmarks/results/``::

    /work/main/.venv/bin/python benchmarks/pg_scale.py --messages 3000 --runs 3  # needs psycopg
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    HOST,
    MB,
    PASSWORD,
    BenchError,
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
    stop_process,
    tail_of,
    tree_cpu,
    wait_for_port,
    write_results,
)
from _postgres_bench import BenchCluster
from imap_fetch import ImapClient, ImapError, exists_of
from smtp_delivery import (
    LoadGenerator,
    MaildirCounter,
    Plan,
    PythonLoad,
    SmtpSourceLoad,
    _wait_delivered,
    make_plan,
)

__all__ = ["main"]

ROOT = Path(__file__).resolve().parent.parent
CLI = "import sys; from txmail.cli import main; sys.exit(main())"
FETCH_BODY = b"UID FETCH 1:* (BODY.PEEK[])"


# --------------------------------------------------------------------------- txmail nodes


def node_config(name: str, data_dir: Path, smtp: str, ports: dict[str, int], dsn: str | None) -> str:
    """The TOML of one process; PostgreSQL backends when ``dsn`` is given."""

    def listen(port: int) -> str:
        return f'["tcp:{port}:interface={HOST}"]'

    pg = (
        ""
        if dsn is None
        else (
            '[store]\nbackend = "postgresql"\n\n[directory]\nbackend = "postgresql"\n\n'
            f'[queue]\nbackend = "postgresql"\n\n[postgresql]\ndsn = "{dsn}"\n'
        )
    )
    return (
        f'[server]\nhostname = "{name}.bench.test"\ndata_dir = "{data_dir}"\n'
        f'domains = ["{DOMAIN}"]\n\n'
        f'[smtp]\nlisten = ["{smtp}"]\nsubmission = {listen(ports["submission"])}\n\n'
        f"[imap]\nlisten = {listen(ports['imap'])}\n\n"
        f"[pop3]\nlisten = {listen(ports['pop3'])}\n\n{pg}"
    )


class Node:
    """One ``twistd -n mailserver --config FILE`` process, optionally on an inherited socket."""

    def __init__(
        self,
        name: str,
        run_dir: Path,
        python: str,
        env: dict[str, str],
        dsn: str | None,
        listen_fd: int | None,
        smtp_port: int,
    ) -> None:
        self.name = name
        self.dir = run_dir / name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.data = self.dir / "data"
        self.python, self.env, self.listen_fd = python, env, listen_fd
        self.ports = {role: free_port() for role in ("submission", "imap", "pop3")}
        self.smtp_port = smtp_port
        smtp = "systemd:domain=INET:index=0" if listen_fd is not None else f"tcp:{smtp_port}:interface={HOST}"
        self.config = self.dir / "txmail.toml"
        self.config.write_text(node_config(name, self.data, smtp, self.ports, dsn))
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str = "") -> str:
        """``txmail ARGS --config FILE`` (the real command line); its output."""
        cmd = [self.python, "-c", CLI, *args, "--config", str(self.config)]
        res = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, cwd=self.dir, env=self.env, timeout=120
        )
        if res.returncode != 0:
            raise BenchError(
                f"txmail {' '.join(args)} exited {res.returncode}:\n{res.stdout}{res.stderr}"[-3000:]
            )
        return res.stdout

    def start(self, timeout: float) -> None:
        """Start twistd; wait for its own submission and IMAP ports (the SMTP one may be shared)."""
        twistd = [
            self.python,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()",
            "-n",
            "--pidfile",
            str(self.dir / "twistd.pid"),
            "--logfile",
            str(self.dir / "twistd.log"),
            "mailserver",
            "--config",
            str(self.config),
        ]
        pass_fds: tuple[int, ...] = ()
        if self.listen_fd is not None:
            # systemd's protocol (sd_listen_fds(3)): the socket is fd 3, LISTEN_FDS=1 and
            # LISTEN_PID the server's own PID, which only the exec'ing shell knows.
            fd = self.listen_fd
            # Twisted also wants LISTEN_FDNAMES (one name per descriptor).
            move = "" if fd == 3 else f" 3<&{fd} {fd}<&-"
            twistd = [
                "sh",
                "-c",
                f'export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=smtp; exec "$@"{move}',
                "sh",
                *twistd,
            ]
            pass_fds = (fd,)
        log(
            f"{self.name}: twistd mailserver --config {self.config}"
            + (
                f" (SMTP on inherited SO_REUSEPORT socket, port {self.smtp_port})"
                if self.listen_fd is not None
                else f" (SMTP port {self.smtp_port})"
            )
        )
        with open(self.dir / "twistd.out", "wb") as out:
            self.proc = subprocess.Popen(
                twistd,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                pass_fds=pass_fds,
            )
        ports = [self.ports["submission"], self.ports["imap"]]
        if self.listen_fd is None:
            ports.append(self.smtp_port)
        for port in ports:
            try:
                wait_for_port(port, self.proc, timeout, f"{self.name} twistd", self.dir / "twistd.log")
            except BenchError as e:
                self.stop()
                raise BenchError(f"{e}\n--- twistd.out ---\n{tail_of(self.dir / 'twistd.out')}") from None

    def stop(self) -> None:
        """SIGTERM (then SIGKILL) the process this object started."""
        stop_process(self.proc, 20)
        self.proc = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid


def reuseport_sockets(count: int, backlog: int) -> tuple[int, list[socket.socket]]:
    """``count`` listening sockets with SO_REUSEPORT on one free loopback port."""
    port = free_port()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((HOST, port))
            s.listen(backlog)
            s.set_inheritable(True)
    except OSError:
        for s in socks:
            s.close()
        raise
    return port, socks


# --------------------------------------------------------------------------- counting


class PgCounter:
    """Committed messages: ``SELECT count(*) FROM messages`` (and how many are too small).

    Same interface as ``smtp_delivery.MaildirCounter`` (``count()``, ``min_size``), so the
    same waiting loop times both.  A row is visible only once its transaction committed.
    """

    def __init__(self, dsn: str, min_size: int) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)
        self.min_size = min_size

    def count(self) -> tuple[int, int]:
        row = self.conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE size < %s) FROM messages", (self.min_size,)
        ).fetchone()
        assert row is not None
        good, small = int(row[0]), int(row[1])
        return good - small, small

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- one setup


@dataclass
class Result:
    """One timed ingest (and, for maildir/postgresql, the FETCHes)."""

    setup: str
    run: int
    processes: int
    messages: int
    seconds: float
    accepted_seconds: float | None
    msgs_per_sec: float
    txmail_cpu: float
    txmail_cpu_each: list[float]
    postgres_cpu: float
    load_cpu: float
    poller_cpu: float
    machine_busy_cores: float
    fetch: dict[str, Any] = field(default_factory=dict)


def imap_fetch_all(
    port: int, users: list[str], min_size: int, timeout: float, cpu_pids: list[int]
) -> dict[str, Any]:
    """Per recipient: LOGIN, SELECT, ``UID FETCH 1:* (BODY.PEEK[])`` twice; sums."""
    out: dict[str, Any] = {
        "select": 0.0,
        "first": 0.0,
        "again": 0.0,
        "messages": 0,
        "bytes": 0,
        "server_cpu_first": 0.0,
        "server_cpu_again": 0.0,
    }
    for user in users:
        client = ImapClient(port, timeout)
        try:
            client.command(f"LOGIN {user}@{DOMAIN} {PASSWORD}".encode())
            reply = client.command(b"SELECT INBOX")
            out["select"] += reply.seconds
            n = exists_of(reply)
            for key in ("first", "again"):
                c0 = tree_cpu(cpu_pids)
                reply = client.command(FETCH_BODY, keep=False)
                out[f"server_cpu_{key}"] += tree_cpu(cpu_pids) - c0
                out[key] += reply.seconds
                if (
                    reply.fetches != n
                    or len(reply.literal_sizes) != n
                    or (n and min(reply.literal_sizes) < min_size)
                ):
                    raise ImapError(
                        f"{user}: FETCH BODY.PEEK[]: {reply.fetches} responses, "
                        f"{len(reply.literal_sizes)} literals for {n} messages "
                        f"(smallest {min(reply.literal_sizes, default=0)} B)"
                    )
            out["messages"] += n
            out["bytes"] += sum(reply.literal_sizes)
            client.command(b"LOGOUT")
        finally:
            client.close()
    return out


def run_setup(
    setup: str,
    procs: int,
    run: int,
    args: argparse.Namespace,
    plan: Plan,
    warmup_plan: Plan | None,
    cluster: BenchCluster,
    workdir: Path,
    env: dict[str, str],
    make_load: Any,
) -> Result:
    """Start ``procs`` processes (Maildir when ``setup == "maildir"``), warm up, time, fetch."""
    run_dir = workdir / f"{setup}-run{run}"
    run_dir.mkdir(parents=True, exist_ok=True)
    pg = setup != "maildir"
    dbname = f"bench_{setup.replace('-', '_')}_{run}"
    dsn = cluster.dsn(dbname) if pg else None
    reuse = setup.startswith("pg-x")
    nodes: list[Node] = []
    socks: list[socket.socket] = []
    counter: Any = None
    users = [f"{u}@{DOMAIN}" for u in plan.users]
    try:
        if pg:
            cluster.execute(f"CREATE DATABASE {dbname} TEMPLATE template0")
        if reuse:
            port, socks = reuseport_sockets(procs, 50)  # 50: Twisted's default backlog
        else:
            port = free_port()
        for i in range(procs):
            nodes.append(
                Node(
                    f"node{i + 1}", run_dir, args.python, env, dsn, socks[i].fileno() if reuse else None, port
                )
            )
        if pg:
            nodes[0].cli("db", "upgrade")
        for address in users:
            nodes[0].cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")
        for node in nodes:
            node.start(args.start_timeout)
        if pg:
            assert dsn is not None
            counter = PgCounter(dsn, plan.size)
        else:
            counter = MaildirCounter([nodes[0].data / "mail" / DOMAIN / u for u in plan.users], plan.size)
        base = 0
        if warmup_plan is not None:
            log(f"{setup} run {run}: warm-up {warmup_plan.messages} messages on port {port}")
            load = make_load()
            t0 = time.monotonic()
            load.start(port, warmup_plan)
            try:
                _wait_delivered(
                    counter,
                    warmup_plan.messages,
                    load,
                    t0,
                    args.timeout,
                    args.poll,
                    args.busy_poll,
                    f"{setup} warm-up",
                )
                while not load.poll():
                    time.sleep(args.poll)
            finally:
                load.stop()
            base = warmup_plan.messages
        log(
            f"{setup} run {run}: {plan.messages} messages x {plan.size} B, "
            f"{sum(s.sessions for s in plan.shares)} connections, {procs} process(es), "
            f"port {port}"
        )
        pids = [n.pid for n in nodes if n.pid is not None]
        pg_pid = cluster.postmaster_pid()
        load = make_load()
        each0 = [process_cpu(p) for p in pids]
        tx0 = tree_cpu(pids)
        pg0 = tree_cpu([pg_pid]) if pg_pid else 0.0
        m0 = machine_cpu()
        self0 = resource.getrusage(resource.RUSAGE_SELF)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        load.start(port, plan)
        try:
            delivered, accepted = _wait_delivered(
                counter, base + plan.messages, load, started, args.timeout, args.poll, args.busy_poll, setup
            )
            while accepted is None:
                if load.poll():
                    accepted = time.monotonic()
                    break
                if time.monotonic() - delivered > 30:
                    raise BenchError(
                        f"{setup}: load generator still running 30s after every message was committed"
                    )
                time.sleep(args.poll)
        finally:
            load.stop()
        seconds = delivered - started
        tx = tree_cpu(pids) - tx0
        each = [round(process_cpu(p) - c, 2) for p, c in zip(pids, each0, strict=True)]
        pgc = (tree_cpu([pg_pid]) - pg0) if pg_pid else 0.0
        busy = (machine_cpu() - m0) / max(time.monotonic() - started, 1e-9)
        self1 = resource.getrusage(resource.RUSAGE_SELF)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        self_cpu = (self1.ru_utime + self1.ru_stime) - (self0.ru_utime + self0.ru_stime)
        kids_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        result = Result(
            setup,
            run,
            procs,
            plan.messages,
            seconds,
            None if accepted is None else accepted - started,
            plan.messages / seconds,
            tx,
            each,
            pgc,
            kids_cpu if isinstance(load, SmtpSourceLoad) else self_cpu,
            self_cpu,
            busy,
        )
        log(
            f"{setup} run {run}: {seconds:.2f} s, {result.msgs_per_sec:.1f} msg/s (last 250 "
            f"after {result.accepted_seconds:.2f} s; CPU s: txmail {tx:.2f} {each}, "
            f"postgres {pgc:.2f}, load {result.load_cpu:.2f}, poller {self_cpu:.2f}; "
            f"machine {busy:.2f} cores busy)"
        )
        if setup in ("maildir", "postgresql") and not args.no_fetch:
            result.fetch = imap_fetch_all(nodes[0].ports["imap"], plan.users, plan.size, args.timeout, pids)
            f = result.fetch
            log(
                f"{setup} run {run}: UID FETCH 1:* BODY.PEEK[] over {len(plan.users)} "
                f"INBOXes, {f['messages']} messages, {f['bytes'] / MB:.1f} MB: first "
                f"{f['first']:.3f} s, again {f['again']:.3f} s (server CPU "
                f"{f['server_cpu_first']:.2f} / {f['server_cpu_again']:.2f} s)"
            )
        return result
    finally:
        if counter is not None and isinstance(counter, PgCounter):
            counter.close()
        for node in nodes:
            node.stop()
        for s in socks:
            s.close()
        if pg:
            try:
                cluster.execute(f"DROP DATABASE IF EXISTS {dbname} WITH (FORCE)")
            except Exception as e:  # reported; the run goes on
                log(f"{setup}: DROP DATABASE {dbname}: {e}")


# --------------------------------------------------------------------------- reporting


def summarize(results: list[Result], order: list[str]) -> list[dict[str, Any]]:
    """Medians per setup; ingest ratio to maildir and to pg-x1."""
    rows: list[dict[str, Any]] = []
    for name in order:
        mine = [r for r in results if r.setup == name]
        if not mine:
            continue
        row: dict[str, Any] = {
            "setup": name,
            "processes": mine[0].processes,
            "runs": len(mine),
            "messages": mine[0].messages,
            "seconds": statistics.median(r.seconds for r in mine),
            "msgs_per_sec": statistics.median(r.msgs_per_sec for r in mine),
            "all_msgs_per_sec": [round(r.msgs_per_sec, 1) for r in mine],
            "txmail_cpu": statistics.median(r.txmail_cpu for r in mine),
            "postgres_cpu": statistics.median(r.postgres_cpu for r in mine),
            "load_cpu": statistics.median(r.load_cpu for r in mine),
            "machine_busy_cores": statistics.median(r.machine_busy_cores for r in mine),
        }
        fetches = [r.fetch for r in mine if r.fetch]
        if fetches:
            row["fetch_first"] = statistics.median(f["first"] for f in fetches)
            row["fetch_again"] = statistics.median(f["again"] for f in fetches)
            row["all_fetch_first"] = [round(f["first"], 3) for f in fetches]
            row["all_fetch_again"] = [round(f["again"], 3) for f in fetches]
            row["fetch_bytes"] = fetches[0]["bytes"]
            row["fetch_server_cpu_first"] = statistics.median(f["server_cpu_first"] for f in fetches)
        rows.append(row)
    by = {r["setup"]: r for r in rows}
    for row in rows:
        md, x1 = by.get("maildir"), by.get("pg-x1")
        row["vs_maildir"] = row["msgs_per_sec"] / md["msgs_per_sec"] if md else None
        row["vs_pg_x1"] = (
            row["msgs_per_sec"] / x1["msgs_per_sec"] if x1 and row["setup"].startswith("pg-x") else None
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the medians."""
    head = (
        f"{'setup':<11} {'procs':>5} {'msg/s':>8} {'vs maildir':>10} {'vs x1':>6} "
        f"{'txmail CPU':>10} {'pg CPU':>7} {'busy cores':>10} {'FETCH s':>8} "
        f"{'again s':>8}  runs (msg/s)"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        vm = f"{r['vs_maildir']:.2f}x" if r["vs_maildir"] else "-"
        vx = f"{r['vs_pg_x1']:.2f}x" if r["vs_pg_x1"] else "-"
        f1 = f"{r['fetch_first']:.3f}" if "fetch_first" in r else "-"
        f2 = f"{r['fetch_again']:.3f}" if "fetch_again" in r else "-"
        lines.append(
            f"{r['setup']:<11} {r['processes']:>5} {r['msgs_per_sec']:>8.1f} {vm:>10} "
            f"{vx:>6} {r['txmail_cpu']:>10.2f} {r['postgres_cpu']:>7.2f} "
            f"{r['machine_busy_cores']:>10.2f} {f1:>8} {f2:>8}  "
            f"{r['all_msgs_per_sec']}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options."""
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=3000, help="timed messages per run")
    p.add_argument("--concurrency", type=int, default=20, help="concurrent SMTP connections")
    p.add_argument("--size", type=int, default=10240, help="message payload bytes")
    p.add_argument("--users", type=int, default=10, help="recipients user1..userN")
    p.add_argument("--runs", type=int, default=1, help="runs of every setup (interleaved)")
    p.add_argument(
        "--setups",
        default="maildir,postgresql",
        help="comma-separated: maildir, postgresql (one process each)",
    )
    p.add_argument(
        "--procs",
        default="1,2,4",
        help="process counts for the PostgreSQL scaling setups pg-xN ('' for none)",
    )
    p.add_argument("--load", choices=("smtp-source", "python"), default="smtp-source")
    p.add_argument("--reuse", action="store_true", help="many messages per connection (smtp-source -d)")
    p.add_argument("--warmup", type=int, default=200, help="untimed warm-up messages (0: none)")
    p.add_argument("--no-fetch", action="store_true", help="skip the IMAP FETCH part")
    p.add_argument("--timeout", type=float, default=600, help="seconds per timed part")
    p.add_argument("--poll", type=float, default=0.02, help="poll interval once the load is done")
    p.add_argument(
        "--busy-poll", type=float, default=0.5, help="count interval while the load generator runs"
    )
    p.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    p.add_argument(
        "--python",
        default="/work/main/.venv/bin/python",
        help="python with Twisted and psycopg; txmail comes from --pythonpath",
    )
    p.add_argument(
        "--pythonpath",
        default=f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        help="PYTHONPATH for txmail and its twisted/plugins (this checkout)",
    )
    p.add_argument("--pg-bin", default=None, help="PostgreSQL binaries (default: newest)")
    p.add_argument("--start-timeout", type=float, default=60)
    p.add_argument("--workdir", default=None)
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    args.setup_list = [s.strip() for s in args.setups.split(",") if s.strip()]
    if set(args.setup_list) - {"maildir", "postgresql"}:
        p.error("--setups: maildir, postgresql")
    args.proc_list = [int(x) for x in args.procs.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; exit status 1 if any setup failed."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    plan = make_plan(args.messages, args.concurrency, args.size, args.users, args.reuse)
    warmup_plan = (
        make_plan(args.warmup, args.concurrency, args.size, len(plan.shares), args.reuse)
        if args.warmup
        else None
    )
    workdir = make_workdir(args.workdir, "pgscale-")
    env = dict(os.environ, PYTHONPATH=args.pythonpath)
    if args.load == "smtp-source":
        if not os.path.exists(args.smtp_source):
            raise SystemExit(f"{args.smtp_source} not found (Debian's postfix package)")

        def make_load() -> LoadGenerator:
            return SmtpSourceLoad(args.smtp_source, workdir)
    else:

        def make_load() -> LoadGenerator:
            return PythonLoad()

    setups = [(s, 1) for s in args.setup_list] + [(f"pg-x{n}", n) for n in args.proc_list]
    order = [s for s, _ in setups]
    results: list[Result] = []
    failures: dict[str, str] = {}
    cluster = BenchCluster(args.pg_bin)
    pg_settings: dict[str, str] = {}
    try:
        log(f"postgresql: initdb + start in {cluster.directory}")
        cluster.start()
        pg_settings = cluster.settings()
        log(f"postgresql: {pg_settings}")
        if pg_settings.get("fsync") != "on" or pg_settings.get("synchronous_commit") != "on":
            raise SystemExit(f"durability is not on: {pg_settings}")
        for run in range(1, args.runs + 1):
            for setup, procs in setups:
                if setup in failures:
                    continue
                try:
                    results.append(
                        run_setup(
                            setup, procs, run, args, plan, warmup_plan, cluster, workdir, env, make_load
                        )
                    )
                except (BenchError, OSError) as e:
                    failures[setup] = str(e)
                    log(f"{setup} run {run}: FAILED: {e}")
    finally:
        cluster.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results, order)
    print(
        f"\nDurable SMTP ingest, Maildir vs PostgreSQL, and 1..N processes on one database: "
        f"{args.messages} messages x {args.size} B, {args.concurrency} connections "
        f"({'reused' if args.reuse else 'one message each'}), {len(plan.users)} recipients, "
        f"load={args.load}, median of {args.runs} run(s), {os.cpu_count()} CPUs shared by "
        "txmail, PostgreSQL and the load generator"
    )
    print(format_table(rows))
    for name, err in failures.items():
        print(f"\n{name}: FAILED\n{err}")
    record = {
        **record_header("pg_scale", args),
        "machine": machine_info(),
        "postgresql": pg_settings,
        "tree": source_commit(),
        "plan": [dataclasses.asdict(s) for s in plan.shares],
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    write_results(record, "pg_scale", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
