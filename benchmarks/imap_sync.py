"""
IMAP first sync and search on a big mixed INBOX: what a mail client waits for, txmail against Dovecot.

Issue 12, section 4.  One user's INBOX (a Maildir) holds ``--messages`` generated messages of
mixed sizes (1 to 64 KiB, log-uniform; every fifth a multipart/mixed with a text part and a
base64 attachment), dropped into ``new/`` by "another program" (the files are written
straight into the Maildir, as ``imap_fetch.py`` does).  Servers, as in ``imap_fetch.py``:

``dovecot``
    Debian's Dovecot of ``/work/shared/bench/refstack.sh`` (127.0.0.1:11143).
``txmail``
    ``twistd -n mailserver --imap ...`` from ``--txmail-bin`` (a non-editable install).

Each command runs **on a fresh connection after LOGIN and SELECT INBOX** and is timed from
sending it to its tagged ``OK`` (the SELECT is not in the figure).  Two fills per run, each
from freshly dropped files and a fresh index (Dovecot: every ``dovecot*`` file removed;
txmail: a fresh data directory and process), so that each "cold" figure is the first time
the server answers that command for these messages:

* fill A: a first connection SELECTs (the server builds its index: ``select_cold``); then
  (a) ``UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject
  Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type
  Reply-To)])`` (Thunderbird's first sync) cold, then warm; ``UID SEARCH SUBJECT zebracorn``;
  ``UID SEARCH TEXT quokkaberry``; ``UID SORT (ARRIVAL)``, ``(DATE)``, ``(SUBJECT)`` and ``UID
  THREAD REFERENCES`` (RFC 5256; each answers every message once, checked);
  last, the QRESYNC resync (RFC 7162 section 3.2.5, ``qresync``): a client connection
  ``ENABLE QRESYNC`` + ``SELECT INBOX`` notes UIDVALIDITY and HIGHESTMODSEQ; another connection
  then sets ``\\Flagged`` on 1,000 UIDs spread over the mailbox (``UID STORE``) and expunges
  100 others (``UID STORE +FLAGS.SILENT (\\Deleted)``, ``UID EXPUNGE``); the timed command,
  on a fresh connection after LOGIN and ``ENABLE QRESYNC`` (no SELECT before it), is
  ``SELECT INBOX (QRESYNC (uidvalidity modseq))``, checked to report the 100 UIDs in
  ``VANISHED (EARLIER)`` and one FETCH per flagged message;
* fill B: a first connection SELECTs; then (b) ``UID FETCH 1:* (ENVELOPE BODYSTRUCTURE
  INTERNALDATE FLAGS RFC822.SIZE)`` cold, then warm.

``--qresync-only`` runs fill A with its cold SELECT and the QRESYNC phase alone (for the issue's
100,000-message figure without the rest); ``--structure-only`` runs fill B alone (its cold SELECT,
then (b) cold and warm).

Checked: every SELECT reports all messages; every FETCH answers one response per message;
each SEARCH finds exactly the messages generated with its word (1 in 50 subjects, 1 in 50
bodies).  The table gives medians over ``--runs`` and txmail / Dovecot (>1: txmail slower).

Run as root (refstack.sh starts Dovecot; its Maildirs belong to ``mail``)::

    python3 benchmarks/imap_sync.py --messages 100000 --runs 1
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import os
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import (  # shared benchmark helpers
    DOMAIN,
    MB,
    PASSWORD,
    BenchError,
    Workload,
    install_sigterm,
    log,
    machine_info,
    make_parser,
    make_workdir,
    parse_servers,
    print_failures,
    record_header,
    run_script,
    tree_cpu,
    write_results,
)
from imap_fetch import DovecotImap, ImapClient, ImapError, ImapServer, TxmailImap, exists_of

__all__ = ["PHASES", "main", "make_mixed_workload"]

#: (name, command) per timed phase, in the order they run; the fill each belongs to.
FETCH_HEADERS = (
    b"UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date "
    b"Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])"
)
FETCH_STRUCTURE = b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS RFC822.SIZE)"
SUBJECT_WORD = "zebracorn"
TEXT_WORD = "quokkaberry"
SEARCH_SUBJECT = b"UID SEARCH SUBJECT " + SUBJECT_WORD.encode()
SEARCH_TEXT = b"UID SEARCH TEXT " + TEXT_WORD.encode()
#: RFC 5256 (issue 12 section 4: at most 2x Dovecot), after the searches of fill A.
SORTS = (("sort_arrival", b"UID SORT (ARRIVAL) US-ASCII ALL"), ("sort_date", b"UID SORT (DATE) US-ASCII ALL"),
         ("sort_subject", b"UID SORT (SUBJECT) US-ASCII ALL"),
         ("thread_refs", b"UID THREAD REFERENCES US-ASCII ALL"))
#: RFC 7162 section 3.2.5 (issue 12 section 4: at most Dovecot's time), last of fill A.
QRESYNC_FLAGGED, QRESYNC_EXPUNGED = 1000, 100
PHASES = ("select_cold", "headers_cold", "headers_warm", "search_subject", "search_text",
          *(name for name, _ in SORTS), "qresync", "structure_cold", "structure_warm")
LABELS = {"select_cold": "SELECT cold", "headers_cold": "(a) cold", "headers_warm": "(a) warm",
          "search_subject": "(c) SUBJECT", "search_text": "(c) TEXT",
          "structure_cold": "(b) cold", "structure_warm": "(b) warm",
          "sort_arrival": "SORT ARRIVAL", "sort_date": "SORT DATE", "sort_subject": "SORT SUBJECT",
          "thread_refs": "THREAD REFS", "qresync": "QRESYNC"}

_WORDS = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "this", "are", "or", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "one", "all", "we", "their", "can", "been", "has", "more", "if", "will", "would", "who", "so", "no", "about", "out", "up", "what", "when", "into", "time", "only", "new", "some", "could", "these", "two", "may", "then", "do", "first", "any", "my", "now", "such", "like", "our", "over", "even", "most", "made", "after", "also", "did", "many", "before", "must", "through", "back", "years", "where", "much", "your", "way", "well", "down", "should", "because", "each", "just", "those", "people", "how", "too", "little", "state", "good", "very", "make", "world", "still", "own", "see", "work", "long", "here", "get", "both", "between", "life", "being", "under", "never", "day", "same", "another", "know", "while", "last", "might", "great", "old", "year", "off", "come", "since", "against", "go", "came", "right", "used", "take", "three", "invoice", "meeting", "report", "project", "budget", "release", "schedule", "review"]


@dataclass(frozen=True)
class MixedWorkload(Workload):
    """The generated messages, and which of them hold each search word (1-based positions)."""

    subject_hits: tuple[int, ...] = ()
    text_hits: tuple[int, ...] = ()


def _text(rng: random.Random, size: int) -> bytes:
    lines, length = [], 0
    while length < size:
        line = " ".join(rng.choice(_WORDS) for _ in range(rng.randrange(4, 13)))[:76].encode() + b"\r\n"
        lines.append(line)
        length += len(line)
    return b"".join(lines)


def _message(rng: random.Random, seq: int, when: float, size: int, subject_word: bool,
             text_word: bool) -> bytes:
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
    sender = f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}{rng.randrange(100)}@sender{seq % 53}.test"
    words = [rng.choice(_WORDS) for _ in range(rng.randrange(3, 9))]
    if subject_word:
        words.insert(rng.randrange(len(words) + 1), SUBJECT_WORD.capitalize())
    subject = " ".join(words)
    refs = "" if seq < 10 or rng.randrange(3) else (
        f"In-Reply-To: <{seq - rng.randrange(1, 10):06d}@sender.test>\r\n"
        f"References: <{seq - 10:06d}@sender.test> <{seq - rng.randrange(1, 10):06d}@sender.test>\r\n")
    cc = f"Cc: {rng.choice(_WORDS).title()} <{rng.choice(_WORDS)}@{DOMAIN}>\r\n" if seq % 4 == 0 else ""
    multipart = seq % 5 == 0
    head = (
        f"Return-Path: <{sender}>\r\n"
        f"Received: from mx.sender{seq % 53}.test (mx.sender{seq % 53}.test [192.0.2.{seq % 250 + 1}])\r\n"
        f"\tby mx.{DOMAIN} with ESMTPS id {seq:08X}; {date}\r\n"
        f"From: {sender.split('@')[0].replace('.', ' ').title()} <{sender}>\r\n"
        f"To: <user1@{DOMAIN}>\r\n{cc}"
        f"Subject: {subject}\r\n"
        f"Date: {date}\r\n"
        f"Message-ID: <{seq:06d}@sender.test>\r\n{refs}"
        "MIME-Version: 1.0\r\n"
    ).encode()
    budget = max(200, size - len(head) - 200)
    if not multipart:
        body = _text(rng, budget)
        if text_word:
            body = body[: len(body) // 2] + f"see {TEXT_WORD} here\r\n".encode() + body[len(body) // 2:]
        return head + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + body
    boundary = f"=_b{seq:06d}"
    text = _text(rng, min(2000, budget // 3))
    if text_word:
        text += f"note {TEXT_WORD}\r\n".encode()
    raw = rng.randbytes(max(60, (budget - len(text)) * 3 // 4))
    attachment = b"\r\n".join(base64.encodebytes(raw).splitlines()) + b"\r\n"
    return head + (
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"This is a multi-part message in MIME format.\r\n--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
    ).encode() + text + (
        f"--{boundary}\r\nContent-Type: application/pdf; name=\"doc{seq}.pdf\"\r\n"
        f"Content-Disposition: attachment; filename=\"doc{seq}.pdf\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode() + attachment + f"--{boundary}--\r\n".encode()


def make_mixed_workload(messages: int, seed: int) -> MixedWorkload:
    """``messages`` messages of 1-64 KiB (log-uniform), every fifth multipart; names sort by date."""
    rng = random.Random(seed)
    start = 1_763_900_000
    names, bodies, expected = [], [], {}
    subject_hits, text_hits = [], []
    for i in range(messages):
        when = start + i * 7
        size = int(math.exp(rng.uniform(math.log(1024), math.log(64 * 1024))))
        subj, text = rng.randrange(50) == 0, rng.randrange(50) == 0
        body = _message(rng, i, when, size, subj, text)
        names.append(f"{when}.M{i:06d}P4243Q{i}.bench.test,S={len(body)}")
        bodies.append(body)
        expected[b"<%06d@sender.test>" % i] = (len(body), hashlib.sha1(body).digest())
        if subj:
            subject_hits.append(i + 1)
        if text:
            text_hits.append(i + 1)
    return MixedWorkload(tuple(names), tuple(bodies), expected, tuple(subject_hits), tuple(text_hits))


# --------------------------------------------------------------------------- measuring

@dataclass
class RunResult:
    """One run against one server: seconds and server CPU per phase."""

    server: str
    run: int
    messages: int
    seconds: dict[str, float]
    server_cpu: dict[str, float]


class Session:
    """A fresh connection: LOGIN, SELECT INBOX (checked), then the caller's commands."""

    def __init__(self, server: ImapServer, user: str, n: int, timeout: float) -> None:
        self.server = server
        self.client = ImapClient(server.port, timeout)
        self.client.command(f"LOGIN {user} {PASSWORD}".encode())
        self.select = self.client.command(b"SELECT INBOX")
        if exists_of(self.select) != n:
            raise ImapError(f"SELECT: {exists_of(self.select)} EXISTS, expected {n}")

    def close(self) -> None:
        try:
            self.client.command(b"LOGOUT")
        finally:
            self.client.close()


def _uids_of_search(reply: Any) -> list[int]:
    for line in reply.untagged:
        if line.startswith(b"* SEARCH"):
            return [int(x) for x in line[8:].split()]
    return []


def _uid_set(uids: list[int]) -> bytes:
    return b",".join(b"%d" % u for u in uids)


def _expand_set(text: bytes) -> list[int]:
    out: list[int] = []
    for part in text.split(b","):
        lo, _, hi = part.partition(b":")
        a, b = int(lo), int(hi or lo)
        out.extend(range(min(a, b), max(a, b) + 1))
    return out


def _code_of(reply: Any, name: bytes) -> int:
    """The number of a ``* OK [NAME n]`` response code."""
    for line in reply.untagged:
        i = line.find(b"[" + name + b" ")
        if i >= 0:
            return int(line[i + len(name) + 2: line.index(b"]", i)])
    raise ImapError(f"SELECT without {name.decode()}")


def qresync_changes(n: int) -> tuple[list[int], list[int]]:
    """Positions (0-based) of the messages flagged and of those expunged: spread, disjoint."""
    flagged = [i * n // QRESYNC_FLAGGED for i in range(QRESYNC_FLAGGED)]
    taken = set(flagged)
    expunged = []
    for i in range(QRESYNC_EXPUNGED):
        k = (i * n // QRESYNC_EXPUNGED + n // (2 * QRESYNC_FLAGGED) + 1) % n
        while k in taken:
            k = (k + 1) % n
        taken.add(k)
        expunged.append(k)
    return flagged, sorted(expunged)


def run_qresync(server: ImapServer, user: str, n: int, timeout: float) -> tuple[float, float]:
    """The QRESYNC phase (see the module's docstring): seconds and server CPU of the resync."""
    client = ImapClient(server.port, timeout)
    try:
        client.command(f"LOGIN {user} {PASSWORD}".encode())
        client.command(b"ENABLE QRESYNC")
        select = client.command(b"SELECT INBOX")
        uidvalidity, modseq = _code_of(select, b"UIDVALIDITY"), _code_of(select, b"HIGHESTMODSEQ")
        client.command(b"LOGOUT")
    finally:
        client.close()
    session = Session(server, user, n, timeout)
    try:
        uids = _uids_of_search(session.client.command(b"UID SEARCH ALL"))
        if len(uids) != n:
            raise ImapError(f"UID SEARCH ALL: {len(uids)} UIDs, expected {n}")
        flagged_at, expunged_at = qresync_changes(n)
        flagged = [uids[k] for k in flagged_at]
        expunged = [uids[k] for k in expunged_at]
        for i in range(0, len(flagged), 200):
            session.client.command(b"UID STORE " + _uid_set(flagged[i: i + 200]) + b" +FLAGS.SILENT (\\Flagged)")
        session.client.command(b"UID STORE " + _uid_set(expunged) + b" +FLAGS.SILENT (\\Deleted)")
        session.client.command(b"UID EXPUNGE " + _uid_set(expunged))
    finally:
        session.close()
    time.sleep(0.2)
    client = ImapClient(server.port, timeout)
    try:
        client.command(f"LOGIN {user} {PASSWORD}".encode())
        client.command(b"ENABLE QRESYNC")
        c0 = tree_cpu(server.pids())
        reply = client.command(b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, modseq))
        cpu = tree_cpu(server.pids()) - c0
        vanished = [u for line in reply.untagged if line.startswith(b"* VANISHED (EARLIER) ")
                    for u in _expand_set(line[21:].strip())]
        if sorted(vanished) != expunged:
            raise ImapError(f"QRESYNC: {len(vanished)} UIDs VANISHED (EARLIER), expected {len(expunged)}")
        if reply.fetches != len(flagged) or exists_of(reply) != n - len(expunged):
            raise ImapError(f"QRESYNC: {reply.fetches} FETCH responses and {exists_of(reply)} EXISTS, "
                            f"expected {len(flagged)} and {n - len(expunged)}")
        client.command(b"LOGOUT")
    finally:
        client.close()
    return reply.seconds, cpu


def run_fill(server: ImapServer, user: str, work: MixedWorkload, phases: list[tuple[str, bytes]],
             timeout: float, seconds: dict[str, float], cpu: dict[str, float]) -> None:
    """After a fresh fill: a cold SELECT, then each phase on its own connection."""
    n = len(work.bodies)
    c0 = tree_cpu(server.pids())
    first = Session(server, user, n, timeout)
    if "select_cold" not in seconds:
        seconds["select_cold"] = first.select.seconds
        cpu["select_cold"] = tree_cpu(server.pids()) - c0
    first.close()
    time.sleep(0.2)  # Dovecot's imap process exits
    for name, command in phases:
        if name == "qresync":
            seconds[name], cpu[name] = run_qresync(server, user, n, timeout)
            time.sleep(0.2)
            continue
        session = Session(server, user, n, timeout)
        try:
            c0 = tree_cpu(server.pids())
            reply = session.client.command(command, keep=name.startswith(("search", "sort", "thread")))
            cpu[name] = tree_cpu(server.pids()) - c0
            seconds[name] = reply.seconds
            if name.startswith("search"):
                want = work.subject_hits if name == "search_subject" else work.text_hits
                got = _uids_of_search(reply)
                if len(got) != len(want):
                    raise ImapError(f"{command.decode()}: {len(got)} results, expected {len(want)}")
            elif name.startswith(("sort", "thread")):
                # Every message once (a THREAD line's numbers, parentheses aside).
                line = next((x for x in reply.untagged if x.startswith((b"* SORT", b"* THREAD"))), b"")
                got = len(line.replace(b"(", b" ").replace(b")", b" ").split()) - 2
                if got != n:
                    raise ImapError(f"{command.decode()}: {got} messages, expected {n}")
            elif reply.fetches != n:
                raise ImapError(f"{name}: {reply.fetches} FETCH responses, expected {n}")
        finally:
            session.close()
        time.sleep(0.2)


def run_once(server: ImapServer, run: int, user: str, work: MixedWorkload, workdir: Path,
             timeout: float, qresync_only: bool = False, structure_only: bool = False) -> RunResult:
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    fills: tuple[list[tuple[str, bytes]], ...] = (
        [("headers_cold", FETCH_HEADERS), ("headers_warm", FETCH_HEADERS),
         ("search_subject", SEARCH_SUBJECT), ("search_text", SEARCH_TEXT), *SORTS, ("qresync", b"")],
        [("structure_cold", FETCH_STRUCTURE), ("structure_warm", FETCH_STRUCTURE)],
    )
    labels = "AB"
    if qresync_only:
        fills = ([("qresync", b"")],)
    elif structure_only:
        fills, labels = (fills[1],), "B"
    for k, phases in enumerate(fills):
        log(f"{server.name} run {run} fill {labels[k]}: dropping {len(work.bodies)} files into new/")
        try:
            server.fill(work, user, workdir, run * 10 + k)
            os.sync()
            run_fill(server, user, work, phases, timeout, seconds, cpu)
        finally:
            server.end_run()
    log(f"{server.name} run {run}: " + ", ".join(f"{k} {v:.3f}s" for k, v in seconds.items()))
    return RunResult(server.name, run, len(work.bodies), seconds, cpu)


# --------------------------------------------------------------------------- reporting

def summarize(results: list[RunResult], order: list[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in order:
        mine = [r for r in results if r.server == name]
        if not mine:
            continue
        row: dict[str, Any] = {"server": name, "runs": len(mine), "messages": mine[0].messages}
        for p in _phases(results):
            row[p] = statistics.median(r.seconds[p] for r in mine)
            row[p + "_cpu"] = statistics.median(r.server_cpu[p] for r in mine)
            row[p + "_all"] = [round(r.seconds[p], 4) for r in mine]
        rows.append(row)
    ref = next((r for r in rows if r["server"] == "dovecot"), None)
    for row in rows:
        row["ratio_to_dovecot"] = {p: row[p] / ref[p] for p in _phases(results) if ref[p]} if ref else None
    return rows


def _phases(results: list[RunResult]) -> list[str]:
    """The phases that every run measured, in :data:`PHASES` order."""
    return [p for p in PHASES if all(p in r.seconds for r in results)]


def format_table(rows: list[dict[str, Any]]) -> str:
    phases = [p for p in PHASES if rows and all(p in r for r in rows)]
    head = f"{'server':<10} " + " ".join(f"{LABELS[p]:>12}" for p in phases) + f" {'runs':>4}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['server']:<10} " + " ".join(f"{r[p]:>11.3f}s" for p in phases)
                     + f" {r['runs']:>4}")
    for r in rows:
        if r["server"] != "dovecot" and r["ratio_to_dovecot"]:
            ratios = r["ratio_to_dovecot"]
            lines.append(f"{r['server'] + '/dc':<10} " + " ".join(
                f"{ratios[p]:>11.2f}x" if p in ratios else f"{'-':>12}" for p in phases))
    lines.append("server CPU s (median): " + "; ".join(
        f"{r['server']}: " + ", ".join(f"{LABELS[p]} {r[p + '_cpu']:.2f}" for p in phases)
        for r in rows))
    return "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str]) -> Any:
    p = make_parser(__doc__)
    p.add_argument("--messages", type=int, default=10000, help="messages in the INBOX")
    p.add_argument("--servers", default="dovecot,txmail", help="comma-separated: dovecot, txmail")
    p.add_argument("--runs", type=int, default=1, help="runs per server (median)")
    p.add_argument("--user", default="user1", help="the refstack user whose Maildir is used")
    p.add_argument("--seed", type=int, default=2026, help="random seed of the workload")
    p.add_argument("--timeout", type=float, default=900, help="socket timeout, seconds")
    p.add_argument("--refstack", default="/work/shared/bench/refstack.sh",
                   help="script that starts the reference Dovecot")
    p.add_argument("--txmail-bin", default="/work/txvenv/bin",
                   help="directory of txmail's twistd and txmail scripts (a non-editable install)")
    p.add_argument("--txmail-start-timeout", type=float, default=30,
                   help="seconds to wait for txmail's IMAP port")
    p.add_argument("--workdir", default=None, help="scratch directory (default: a new /tmp/imapsync-*)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--qresync-only", action="store_true",
                   help="only the cold SELECT and the QRESYNC phase (fill A alone)")
    p.add_argument("--structure-only", action="store_true",
                   help="only fill B: its cold SELECT and (b) cold and warm")
    p.add_argument("--json", default=None, help="result file (default benchmarks/results/...)")
    args = p.parse_args(argv)
    parse_servers(p, args, {"dovecot", "txmail"})
    if args.messages < 100 or args.runs < 1:
        p.error("--messages must be at least 100 and --runs at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    install_sigterm()
    log(f"generating {args.messages} mixed messages")
    work = make_mixed_workload(args.messages, args.seed)
    log(f"{work.total_bytes / MB:.0f} MB; {len(work.subject_hits)} subjects with {SUBJECT_WORD!r}, "
        f"{len(work.text_hits)} bodies with {TEXT_WORD!r}")
    workdir = make_workdir(args.workdir, "imapsync-")
    servers: dict[str, ImapServer] = {}
    for name in args.server_list:
        servers[name] = (DovecotImap(args.refstack, args.keep) if name == "dovecot"
                         else TxmailImap(args.txmail_bin, args.txmail_start_timeout))
    results: list[RunResult] = []
    failures: dict[str, str] = {}
    try:
        for server in servers.values():
            try:
                server.setup()
            except BenchError as e:
                failures[server.name] = str(e)
        for run in range(1, args.runs + 1):
            for server in servers.values():
                if server.name in failures:
                    continue
                try:
                    results.append(run_once(server, run, args.user, work, workdir, args.timeout,
                                               args.qresync_only, args.structure_only))
                except (BenchError, OSError) as e:
                    failures[server.name] = f"run {run}: {type(e).__name__}: {e}"
                    log(f"{server.name} run {run}: FAILED: {e}")
    finally:
        for server in servers.values():
            try:
                server.teardown()
            except Exception as e:
                log(f"{server.name}: error while stopping: {e}")
        if not args.keep and not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = summarize(results, args.server_list)
    print(f"\nIMAP first sync and search: {args.messages} mixed messages "
          f"({work.total_bytes / MB:.0f} MB, 1-64 KiB, a fifth multipart) dropped into new/, "
          f"median of {args.runs} run(s), each command on a fresh connection after SELECT; seconds")
    print(format_table(rows))
    print_failures(failures)
    record = {
        **record_header("imap_sync", args),
        "workload": {"messages": args.messages, "total_bytes": work.total_bytes,
                     "subject_hits": len(work.subject_hits), "text_hits": len(work.text_hits)},
        "machine": machine_info(),
        "servers": {name: s.info() for name, s in servers.items()},
        "runs": [dataclasses.asdict(r) for r in results],
        "summary": rows,
        "failures": failures,
    }
    write_results(record, "imap_sync", args.json)
    return 1 if failures else 0


if __name__ == "__main__":
    run_script(main)
