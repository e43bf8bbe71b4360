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
``--steps`` the CPU time of the steps of the first search (the columns file read, the records
looked up around it, the field index made).  The answers of every run must be the same
(checked).  Run from the repository::

    PYTHONPATH=src:. python benchmarks/imap_first_search.py --messages 100000 --root /tmp/first100k --steps
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
from imap_columns import selected_inbox
from imap_sync import FETCH_HEADERS, make_mixed_workload
from tests.imap.test_server import USER

from txmail.config import load_config
from txmail.imap import columns
from txmail.service import tune_gc
from txmail.store import _maildir_columns, maildir


def _timed(steps: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any) -> Any:
        started = time.process_time()
        try:
            return fn(*args)
        finally:
            steps.setdefault(name, []).append(time.process_time() - started)

    return timed


def _timed_async(steps: dict[str, list[float]], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    async def timed(*args: Any) -> Any:
        started = time.process_time()
        try:
            return await fn(*args)
        finally:
            steps.setdefault(name, []).append(time.process_time() - started)

    return timed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--root", required=True, help="the Maildir root, made when missing and kept")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--command", default="UID SEARCH SUBJECT zebracorn")
    parser.add_argument("--steps", action="store_true", help="time the steps of each first search")
    args = parser.parse_args(argv)
    tune_gc(load_config(None).gc_threshold)  # as twistd mailserver runs
    fresh = not Path(args.root).exists()
    if fresh:
        populate(
            Path(args.root) / "example.test" / USER.split("@")[0],
            make_mixed_workload(args.messages, 2026),
            None,
        )
    conn = selected_inbox(args.root)
    if fresh:
        conn.run(FETCH_HEADERS)
    command = args.command.encode()
    conn.run(command)  # the columns file complete
    mailbox = conn.proto.mailbox

    steps: dict[str, list[float]] = {}
    if args.steps:
        _maildir_columns.read_columns_since = _timed(  # type: ignore[assignment]
            steps, "columns file read", _maildir_columns.read_columns_since
        )
        records = maildir.MaildirMailbox._records
        maildir.MaildirMailbox._records = _timed_async(steps, "records (the read included)", records)  # type: ignore[method-assign]
        build = columns.FieldIndex.build.__func__  # type: ignore[attr-defined]
        columns.FieldIndex.build = classmethod(_timed(steps, "field index made", build))  # type: ignore[method-assign, assignment]
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
    for _ in range(args.rounds):
        mailbox._columns_read = None
        mailbox._columns_answer = None
        columns._INDEXES.clear()
        for out in (first, again):
            collecting[0] = 0.0
            cpu, wall = time.process_time(), time.perf_counter()
            got = conn.run(command).rsplit(b"\r\n", 2)[0]
            out.append((time.process_time() - cpu, time.perf_counter() - wall, collecting[0]))
            if answer is not None and got != answer:
                raise RuntimeError("the answers differ")
            answer = got
    gc.callbacks.remove(collected)

    def median(rows: list[tuple[float, float, float]], k: int) -> float:
        return statistics.median(row[k] for row in rows)

    print(
        f"{args.messages} messages, {args.command}, medians of {args.rounds}: "
        f"first CPU {median(first, 0):.3f} s, wall {median(first, 1):.3f} s (collector {median(first, 2):.3f} s); "
        f"again CPU {median(again, 0):.3f} s, wall {median(again, 1):.3f} s"
    )
    for name, values in steps.items():
        # The first search's calls: the largest of each round's (a search again finds all kept).
        print(f"  {name}: {statistics.median(sorted(values)[-args.rounds :]):.3f} s CPU")


if __name__ == "__main__":
    main()
