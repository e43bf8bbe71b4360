"""
The first ``UID SEARCH SUBJECT`` of a big Maildir INBOX, in process: each step's CPU time.

Issue 12, section 4 (``imap_sync.py`` times such a first search in a fresh server, against
Dovecot).  The set-up of ``imap_columns.py``: ``imap_sync.make_mixed_workload(N, 2026)`` dropped
into ``new/`` of a Maildir under ``--root`` (made, and the header FETCH of ``imap_sync.py`` run
once, when the directory does not exist; kept and reused otherwise, so that runs of two trees
measure the same files), one IMAP connection driven through the protocol, the store doing its
file work inline.  Then ``--rounds`` times: what a server keeps from one search to the next (the
mailbox's columns as read, its last answer, the field indexes) dropped, the search run (its
"first" time: the columns file read, the index made), and run again (its "again" time).  Printed:
medians of the CPU and wall times, the garbage collector's time in the first search, and with
``--steps`` the CPU time of the steps of the first search (the columns file read, the columns
the store wrote added to those it keeps, the records looked up around them, the field index
made; their calls outside the first search not counted).  The answers of every run must be the same
(checked).

``--after-fetch`` runs each round as ``imap_sync.py``'s fill A meets the search in a fresh
server instead: the store's files of the INBOX removed (its index, metadata cache, columns and
header lines), then, on a new provider, a cold SELECT and the header FETCH (which parses every
message and writes its columns) on one connection, the header FETCH again on a second, and the
search (first and again) on a third, each connection closed before the next opens (the
mailbox's last listener gone, as when a client disconnects).  It also prints the CPU time of
the cold and warm header FETCH and the memory the mailbox keeps of its columns (the kept
read's dict, tuples and strings, after the searches).  Run from the repository::

    PYTHONPATH=src:. python benchmarks/imap_first_search.py --messages 100000 --root /tmp/first100k --steps
    PYTHONPATH=src:. python benchmarks/imap_first_search.py --messages 100000 --root /tmp/first100k --after-fetch --rounds 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import populate  # shared benchmark helpers
from imap_columns import Connection, selected_inbox
from imap_sync import FETCH_HEADERS, make_mixed_workload
from tests.imap.test_server import LOGIN, USER
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from txmail.config import load_config
from txmail.imap import columns
from txmail.service import tune_gc
from txmail.store import _maildir_columns, maildir

#: The CPU time of each step of the search being timed (the steps' calls outside it are not
#: counted): step name -> seconds; None while no search is timed.
_STEPS: list[dict[str, float] | None] = [None]


def _count(name: str, started: float) -> None:
    current = _STEPS[0]
    if current is not None:
        current[name] = current.get(name, 0.0) + time.process_time() - started


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        started = time.process_time()
        try:
            return fn(*args)
        finally:
            _count(name, started)

    return timed


def _timed_async(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(*args: Any) -> Any:
        started = time.process_time()
        try:
            return await fn(*args)
        finally:
            _count(name, started)

    return timed


#: The files the Maildir store writes in a folder of its own (removed for a cold round).
_STORE_FILES = ("txmail-index", "txmail-cache", "txmail-columns", "txmail-lines")


def _closed(conn: Connection) -> None:
    """The client disconnects (the session's listeners go)."""
    conn.proto.connectionLost(Failure(ConnectionDone()))


def _another(conn: Connection) -> Connection:
    """A new connection to the same server (provider) as *conn*, INBOX selected."""
    other = Connection(conn.proto.factory, conn.clock)
    other.run(LOGIN.split(b" ", 1)[1].rstrip(b"\r\n"))
    other.run(b"SELECT INBOX")
    return other


def _first_sync(root: str, timings: dict[str, list[float]]) -> Connection:
    """
    A cold start as imap_sync.py's fill A: the INBOX's store files removed, a new provider,
    SELECT and the header FETCH (cold), the header FETCH again on a new connection (warm);
    then a third connection, INBOX selected, returned.
    """
    folder = Path(root) / "example.test" / USER.split("@")[0]
    for path in folder.iterdir():
        if path.name in _STORE_FILES or path.name.startswith("txmail-records-"):
            path.unlink()
    conn = selected_inbox(root)
    for phase in ("(a) cold", "(a) warm"):
        started = time.process_time()
        conn.run(FETCH_HEADERS)
        timings.setdefault(phase, []).append(time.process_time() - started)
        _closed(conn)
        conn = _another(conn)
    return conn


def _kept_size(mailbox: Any) -> int:
    """Octets of the columns the mailbox keeps: the kept read's dict, its tuples and their strings."""
    read = mailbox._kept_columns() if hasattr(mailbox, "_kept_columns") else mailbox._columns_read
    if read is None:
        return 0
    seen: set[int] = set()
    total = sys.getsizeof(read.found)
    for base, values in read.found.items():
        total += sys.getsizeof(values)
        for text in (base, *values):
            if id(text) not in seen:
                seen.add(id(text))
                total += sys.getsizeof(text)
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--root", required=True, help="the Maildir root, made when missing and kept")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--command", default="UID SEARCH SUBJECT zebracorn")
    parser.add_argument("--steps", action="store_true", help="time the steps of each first search")
    parser.add_argument(
        "--after-fetch",
        action="store_true",
        help="each round from a cold start: SELECT, header FETCH cold and warm, then the search (see above)",
    )
    args = parser.parse_args(argv)
    tune_gc(load_config(None).gc_threshold)  # as twistd mailserver runs
    fresh = not Path(args.root).exists()
    if fresh:
        populate(
            Path(args.root) / "example.test" / USER.split("@")[0],
            make_mixed_workload(args.messages, 2026),
            None,
        )
    command = args.command.encode()
    if not args.after_fetch:
        conn = selected_inbox(args.root)
        if fresh:
            conn.run(FETCH_HEADERS)
        conn.run(command)  # the columns file complete
        mailbox = conn.proto.mailbox

    steps: dict[str, list[float]] = {}
    if args.steps:
        _maildir_columns.read_columns_since = _timed(  # type: ignore[assignment]
            "columns file read", _maildir_columns.read_columns_since
        )
        if hasattr(_maildir_columns, "extend_read"):
            _maildir_columns.extend_read = _timed(  # type: ignore[assignment]
                "columns written added to those kept", _maildir_columns.extend_read
            )
        records = maildir.MaildirMailbox._records
        maildir.MaildirMailbox._records = _timed_async("records (the read included)", records)  # type: ignore[method-assign]
        build = columns.FieldIndex.build.__func__  # type: ignore[attr-defined]
        columns.FieldIndex.build = classmethod(_timed("field index made", build))  # type: ignore[method-assign, assignment]
    collecting: list[float] = [0.0, 0.0]

    def collected(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collecting[1] = time.process_time()
        else:
            collecting[0] += time.process_time() - collecting[1]

    gc.callbacks.append(collected)
    first: list[tuple[float, float, float]] = []
    again: list[tuple[float, float, float]] = []
    answer = None
    timings: dict[str, list[float]] = {}
    kept: list[int] = []
    for _ in range(args.rounds):
        columns._INDEXES.clear()
        if args.after_fetch:
            conn = _first_sync(args.root, timings)
            mailbox = conn.proto.mailbox
        else:
            mailbox._columns_read = None
            mailbox._columns_written = []
            mailbox._columns_answer = None
        for out in (first, again):
            collecting[0] = 0.0
            _STEPS[0] = {} if out is first else None
            cpu, wall = time.process_time(), time.perf_counter()
            got = conn.run(command).rsplit(b"\r\n", 2)[0]
            out.append((time.process_time() - cpu, time.perf_counter() - wall, collecting[0]))
            for name, seconds in (_STEPS[0] or {}).items():
                steps.setdefault(name, []).append(seconds)
            _STEPS[0] = None
            if answer is not None and got != answer:
                raise RuntimeError("the answers differ")
            answer = got
        if args.after_fetch:
            kept.append(_kept_size(mailbox))
            _closed(conn)
    gc.callbacks.remove(collected)

    def median(rows: list[tuple[float, float, float]], k: int) -> float:
        return statistics.median(row[k] for row in rows)

    print(
        f"{args.messages} messages, {args.command}, medians of {args.rounds}: "
        f"first CPU {median(first, 0):.3f} s, wall {median(first, 1):.3f} s (collector {median(first, 2):.3f} s); "
        f"again CPU {median(again, 0):.3f} s, wall {median(again, 1):.3f} s"
    )
    for name, values in timings.items():
        print(f"  {name} header FETCH: {statistics.median(values):.3f} s CPU")
    if kept:
        print(f"  columns kept: {statistics.median(kept) / 2**20:.1f} MiB")
    for name, values in steps.items():
        # The first search's calls (a search again finds all kept); a round without the step: 0.
        values += [0.0] * (args.rounds - len(values))
        print(f"  {name} (first search): {statistics.median(values):.3f} s CPU")


if __name__ == "__main__":
    main()
