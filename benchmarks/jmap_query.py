"""
JMAP's mail list view, in process: ``Email/query`` (an INBOX's newest 50, ``collapseThreads``)
then ``Email/get`` of their header properties and previews, over a big Maildir INBOX.

Issue 14's figure: under 100 ms median in a 100,000-message mailbox.  The INBOX holds
``imap_sync.make_mixed_workload(--messages, --seed)`` (100,000 and 2026 by default), dropped
into ``new/`` (``_bench.populate``).  The methods of :mod:`txmail.jmap` are called directly
with a :class:`txmail.jmap.core.CallContext` over a :class:`txmail.store.maildir.MaildirProvider`
doing its file work inline (no HTTP: the endpoint's own cost is not measured).  Shown:

``first``
    the first call pair after the process opened the store: the INBOX's index read, its
    files named, every message's header columns read for its thread id.
``unchanged``
    ``--repeat`` pairs on an unchanged account (the query's ids kept per state).
``changed``
    ``--repeat`` pairs, each after a flag change made through the store (as an IMAP STORE
    would: a new state, so the listing, the EMAILID index and the query are computed again).

Each with its median and 99th percentile.  Run from the repository::

    PYTHONPATH=src:. python benchmarks/jmap_query.py --messages 100000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import populate  # shared benchmark helpers
from imap_sync import make_mixed_workload
from twisted.internet import defer, task

from txmail.config import load_config
from txmail.jmap.core import MAIL, CallContext, Registry
from txmail.jmap.mail import capabilities
from txmail.model import SEEN, FlagMode
from txmail.service import tune_gc
from txmail.store.maildir import MaildirProvider

USER = "user1@example.test"
PROPERTIES = ["threadId", "mailboxIds", "keywords", "from", "to", "subject", "receivedAt", "size", "preview"]


def _run(d: Any) -> Any:
    """The result of a Deferred or coroutine that fires at once (the store works inline)."""
    result: list[Any] = []
    defer.ensureDeferred(d).addBoth(result.append)
    if not result:
        raise RuntimeError("did not fire inline")
    if isinstance(result[0], Exception) or hasattr(result[0], "raiseException"):
        result[0].raiseException()
    return result[0]


def list_view(registry: Registry, context: CallContext, inbox_id: str) -> list[dict[str, Any]]:
    """The pair of calls a webmail's list view makes."""
    query = registry.method("Email/query")[1]  # type: ignore[index]
    get = registry.method("Email/get")[1]  # type: ignore[index]
    found = _run(
        query(
            context,
            {
                "accountId": "a",
                "filter": {"inMailbox": inbox_id},
                "sort": [{"property": "receivedAt", "isAscending": False}],
                "collapseThreads": True,
                "limit": 50,
            },
        )
    )
    got = _run(get(context, {"accountId": "a", "ids": found["ids"], "properties": PROPERTIES}))
    return got["list"]  # type: ignore[no-any-return]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args(argv)
    tune_gc(load_config(None).gc_threshold)  # as twistd mailserver runs

    root = tempfile.mkdtemp(prefix="jmap-query-")
    try:
        work = make_mixed_workload(args.messages, args.seed)
        populate(Path(root) / "example.test" / "user1", work, None)
        clock = task.Clock()
        clock.advance(time.time())
        provider = MaildirProvider(root, hostname="bench.test", clock=clock, watch="off")
        registry = Registry(capabilities())
        started = time.perf_counter()
        store = _run(provider.store_for(USER))
        inbox = _run(store.get_mailbox("INBOX"))
        _run(inbox.get_metadata(range(1, 2**31)))  # the delivery-time parse every message had
        print(f"{args.messages} messages; opened and parsed in {time.perf_counter() - started:.1f} s")
        context = CallContext(USER, "a", store, using=frozenset({MAIL}))
        started = time.perf_counter()
        first = list_view(registry, context, inbox.mailbox_id)
        print(f"first      {1000 * (time.perf_counter() - started):8.1f} ms  ({len(first)} Emails)")
        infos = _run(inbox.list_messages())
        for phase in ("unchanged", "changed"):
            times = []
            for i in range(args.repeat):
                if phase == "changed":
                    uid = infos[i % len(infos)].uid
                    _run(inbox.set_flags([uid], [SEEN], FlagMode.ADD if i % 2 == 0 else FlagMode.REMOVE))
                started = time.perf_counter()
                got = list_view(registry, context, inbox.mailbox_id)
                times.append(1000 * (time.perf_counter() - started))
                if [g["id"] for g in got] != [g["id"] for g in first]:
                    raise RuntimeError("the newest 50 changed")
            print(
                f"{phase:<10} {statistics.median(times):8.1f} ms median  "
                f"{percentile(times, 0.99):8.1f} ms p99  ({args.repeat} runs)"
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
