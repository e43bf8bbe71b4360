"""
A cold (b) in process, on the real reactor: ``imap_sync.FETCH_STRUCTURE`` (``UID FETCH 1:*
(ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS RFC822.SIZE)``) right after a SELECT of a Maildir INBOX
of ``imap_sync.make_mixed_workload(--messages, --seed)`` (20,000 and 2026 by default) dropped into
``new/`` (``_bench.populate``): issue 12, section 4.

One IMAP connection through the server protocol with a ``StringTransport``, the Maildir store
doing its file work in a thread pool of ``[server] threads`` threads as the server does, and
``--workers`` parse worker processes (``[store] parse_workers``; 0 parses in those threads; a
tree without the option, such as a checkout from before it, takes 0 alone).  Prints the FETCH's
wall time, this process's CPU time and the workers' (from ``/proc``), and a digest of the
answer (the same with any number of workers).  Run from the repository, one measurement a
process::

    PYTHONPATH=src:. python benchmarks/imap_fetch_cold.py --workers 2
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import inspect
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import populate  # shared benchmark helpers
from imap_sync import FETCH_STRUCTURE, make_mixed_workload
from tests.imap.test_server import LOGIN, USER, FakeDirectory
from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.python.threadpool import ThreadPool

from txmail.auth.authenticator import Authenticator
from txmail.config import load_config
from txmail.imap.server import IMAPFactory
from txmail.service import tune_gc
from txmail.store.maildir import MaildirProvider


def _children_cpu() -> float:
    """The CPU seconds of this process's child processes still running (the parse workers)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _tail(transport: StringTransport) -> bytes:
    """The last octets written (without copying the whole answer, as ``value()`` does)."""
    with transport.io.getbuffer() as view:
        return bytes(view[-65536:])


async def _run(proto: Any, transport: StringTransport, tag: bytes, command: bytes) -> bytes:
    transport.clear()
    proto.dataReceived(tag + b" " + command + b"\r\n")
    while b"\r\n" + tag + b" " not in b"\r\n" + _tail(transport):
        await task.deferLater(reactor, 0.005, lambda: None)
    # The tagged answer is in the tail: searched there, not in the whole answer
    # (at 20,000 messages a search of all of it cost a tenth of the CPU measured).
    if not re.search(rb"(^|\r\n)" + tag + rb" OK", _tail(transport)):
        raise RuntimeError(f"{command!r} failed: {_tail(transport)[-200:]!r}")
    return transport.value()


async def _measure(args: argparse.Namespace, root: str, pool: ThreadPool) -> None:
    def run_blocking(fn: Any, *a: Any) -> Any:
        return threads.deferToThreadPool(reactor, pool, fn, *a)

    options: dict[str, Any] = {"hostname": "bench.test", "run_blocking": run_blocking, "watch": "off"}
    parameters = inspect.signature(MaildirProvider).parameters
    if "parse_workers" in parameters:
        options["parse_workers"] = args.workers
    if "parse_preload" in parameters:  # as the server gives it
        options["parse_preload"] = ("txmail.imap.structures:record_of_metadata",)
    elif args.workers:
        raise SystemExit("this tree's Maildir store has no parse workers")
    stores = MaildirProvider(root, **options)
    factory = IMAPFactory(
        authenticator=Authenticator(FakeDirectory(), clock=reactor),  # type: ignore[arg-type]
        stores=stores,
        clock=reactor,
        plaintext_auth="loopback",
    )
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 4321))
    proto.makeConnection(transport)
    await _run(proto, transport, b"a1", LOGIN.split(b" ", 1)[1].rstrip(b"\r\n"))
    started = time.perf_counter()
    await _run(proto, transport, b"s1", b"SELECT INBOX")
    print(f"SELECT cold {time.perf_counter() - started:.2f} s", flush=True)
    workers = _children_cpu()
    profile = cProfile.Profile() if args.profile else None
    wall, cpu = time.perf_counter(), time.process_time()
    if profile is not None:
        profile.enable()
    out = await _run(proto, transport, b"f1", FETCH_STRUCTURE)
    if profile is not None:
        profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if profile is not None:
        profile.dump_stats(args.profile)
    workers = _children_cpu() - workers
    us = 1e6 / args.messages
    print(
        f"(b) cold, {args.workers} workers: wall {wall:.2f} s ({wall * us:.0f} us/message), "
        f"cpu {cpu:.2f} s ({cpu * us:.0f}), workers' cpu {workers:.2f} s ({workers * us:.0f})"
    )
    print(f"{out.count(b' FETCH (')} answers, sha1 {hashlib.sha1(out).hexdigest()}")
    if args.answer:
        with open(args.answer, "wb") as f:
            f.write(out)
    stop = getattr(stores, "stop", None)
    if stop is not None:
        stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--copy-of", help="a Maildir tree this script made before (--keep), copied instead of made again"
    )
    parser.add_argument("--answer", help="write the FETCH's answer to this file")
    parser.add_argument(
        "--profile", help="write a cProfile of the FETCH (the reactor thread only) to this file; slows it"
    )
    parser.add_argument("--keep", help="make the tree here too, and leave it, for --copy-of")
    args = parser.parse_args(argv)
    settings = load_config(None)
    tune_gc(settings.gc_threshold)  # as twistd mailserver runs
    root = tempfile.mkdtemp(prefix="imap-fetch-cold-")
    pool = ThreadPool(1, settings.threads)
    pool.start()
    failures: list[Any] = []
    try:
        if args.copy_of:
            shutil.copytree(args.copy_of, root, dirs_exist_ok=True)
            args.messages = len(os.listdir(Path(root) / "example.test" / USER.split("@")[0] / "new"))
        else:
            populate(
                Path(root) / "example.test" / USER.split("@")[0],
                make_mixed_workload(args.messages, args.seed),
                None,
            )
            if args.keep:
                shutil.copytree(root, args.keep)
        d = defer.ensureDeferred(_measure(args, root, pool))
        d.addErrback(failures.append)
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]
    finally:
        pool.stop()
        shutil.rmtree(root, ignore_errors=True)
    if failures:
        failures[0].raiseException()


if __name__ == "__main__":
    main()
