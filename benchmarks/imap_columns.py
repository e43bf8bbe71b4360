"""
IMAP SEARCH on a header key, SORT and THREAD of a big Maildir INBOX, in process: the metadata
path against the header columns (:class:`txmail.interfaces.IHeaderColumns`).

Issue 12, section 4 (no Dovecot here: ``imap_sync.py`` measures against it).  The INBOX holds
``imap_sync.make_mixed_workload(--messages, --seed)`` (20,000 and 2026 by default), dropped
into ``new/`` (``_bench.populate``).  One IMAP connection, driven through the server protocol
with a ``StringTransport`` and a ``Clock`` (the Maildir store doing its file work inline),
LOGINs, SELECTs INBOX and runs ``imap_sync.FETCH_HEADERS`` once (every message's metadata,
and its header columns, cached).  Then, for each path, each command (``UID SEARCH SUBJECT
zebracorn``, ``UID SORT (DATE) US-ASCII ALL``, ``UID SORT (SUBJECT) US-ASCII ALL``, ``UID
THREAD REFERENCES US-ASCII ALL``) runs ``--repeat`` times, each time with the process's SORT
facts cache (``sort.FACTS``) emptied, so that each run reads every message as a first SORT
does; the best time is kept (also shown: the first run's wall and CPU time, and the best CPU
time).  Then, as ``imap_sync.py`` runs them, the four in a row with the facts cache emptied
once before (SORT (SUBJECT) and THREAD then use what SORT (DATE) computed), the best of
``--repeat`` rounds:

``metadata``
    the mailbox's header columns hidden (``has_columns`` answers no): the path before them,
    ``get_metadata`` for every message.
``columns``
    the header columns read.

Both paths must give the same answers (checked).  Run from the repository::

    PYTHONPATH=src:. python benchmarks/imap_columns.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import populate  # shared benchmark helpers
from imap_sync import FETCH_HEADERS, SORTS, make_mixed_workload
from tests.imap.test_server import LOGIN, USER, FakeDirectory
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from txmail.auth.authenticator import Authenticator
from txmail.config import load_config
from txmail.imap.commands import selected, sort
from txmail.imap.server import IMAPFactory
from txmail.service import tune_gc
from txmail.store.maildir import MaildirProvider

COMMANDS = (
    ("search_subject", b"UID SEARCH SUBJECT zebracorn"),
    *(s for s in SORTS if s[0] != "sort_arrival"),
)


class Connection:
    """One IMAP connection to the protocol, commands run to their tagged reply."""

    def __init__(self, factory: IMAPFactory, clock: task.Clock) -> None:
        self.clock = clock
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
        self.proto.makeConnection(self.transport)
        self.n = 0

    def run(self, command: bytes) -> bytes:
        self.n += 1
        tag = b"t%d" % self.n
        self.transport.clear()
        self.proto.dataReceived(tag + b" " + command + b"\r\n")
        while b"\r\n" + tag + b" " not in b"\r\n" + self.transport.value():
            self.clock.advance(0)
        out = self.transport.value()
        if not out.split(b"\r\n" + tag + b" ", 1)[-1].startswith(b"OK") and not out.startswith(tag + b" OK"):
            raise RuntimeError(f"{command!r} failed: {out[-200:]!r}")
        return out


def selected_inbox(root: str) -> Connection:
    """An IMAP session on a Maildir provider on *root* (a real clock's time), INBOX selected."""
    clock = task.Clock()
    clock.advance(time.time())
    stores = MaildirProvider(root, hostname="bench.test", clock=clock, watch="off")
    factory = IMAPFactory(
        authenticator=Authenticator(FakeDirectory(), clock=clock),  # type: ignore[arg-type]
        stores=stores,
        clock=clock,
        plaintext_auth="loopback",
    )
    conn = Connection(factory, clock)
    conn.run(LOGIN.split(b" ", 1)[1].rstrip(b"\r\n"))
    conn.run(b"SELECT INBOX")
    return conn


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--paths", default="metadata,columns", help="the paths measured, in this order")
    args = parser.parse_args(argv)
    tune_gc(load_config(None).gc_threshold)  # as twistd mailserver runs

    root = tempfile.mkdtemp(prefix="imap-columns-")
    try:
        work = make_mixed_workload(args.messages, args.seed)
        inbox = Path(root) / "example.test" / USER.split("@")[0]
        populate(inbox, work, None)
        conn = selected_inbox(root)
        started = time.perf_counter()
        conn.run(FETCH_HEADERS)
        print(f"{args.messages} messages; header FETCH {time.perf_counter() - started:.2f} s")
        original = sort.has_columns
        answers: dict[str, bytes] = {}
        print(
            f"{'command':<16} {'path':<9} {'seconds':>8} {'us/message':>11}   (the first run, best CPU: us/message)"
        )
        for path in args.paths.split(","):
            has: Any = (lambda mailbox: False) if path == "metadata" else original
            selected.has_columns = has
            sort.has_columns = has
            for name, command in COMMANDS:
                best = float("inf")
                times = []
                for _ in range(args.repeat):
                    sort.FACTS._tables.clear()
                    started, cpu = time.perf_counter(), time.process_time()
                    out = conn.run(command)
                    times.append((time.perf_counter() - started, time.process_time() - cpu))
                    best = min(best, times[-1][0])
                untagged = out.rsplit(b"\r\n", 2)[0]  # the tagged reply (its tag) left out
                if not untagged.startswith((b"* SEARCH", b"* SORT", b"* THREAD")):
                    raise RuntimeError(f"{name}: unexpected answer {out[:200]!r}")
                previous = answers.setdefault(name, untagged)
                if previous != untagged:
                    raise RuntimeError(f"{name}: the {path} path answers differently")
                print(
                    f"{name:<16} {path:<9} {best:8.3f} {best / args.messages * 1e6:11.1f}"
                    f"   first {times[0][0] / args.messages * 1e6:.1f} (CPU {times[0][1] / args.messages * 1e6:.1f})"
                    f", best CPU {min(t for _, t in times) / args.messages * 1e6:.1f}"
                )
            # As imap_sync.py runs them: the facts of SORT (DATE) kept for SORT (SUBJECT) and THREAD.
            best_seq = [float("inf")] * len(COMMANDS)
            for _ in range(args.repeat):
                sort.FACTS._tables.clear()
                for i, (_, command) in enumerate(COMMANDS):
                    started = time.perf_counter()
                    conn.run(command)
                    best_seq[i] = min(best_seq[i], time.perf_counter() - started)
            print(
                f"{'  in sequence':<16} {path:<9} "
                + "  ".join(f"{n} {t:.3f}" for (n, _), t in zip(COMMANDS, best_seq, strict=True))
            )
        selected.has_columns = original
        sort.has_columns = original
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
