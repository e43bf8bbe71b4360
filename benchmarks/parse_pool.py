"""
A cold (b)'s parsing and rendering of every message, inline against a pool of parse worker
processes (:mod:`txmail.store._parse_pool`), in process: issue 12, section 4.

The folder holds ``imap_sync.make_mixed_workload(--messages, --seed)`` (20,000 and 2026 by
default), dropped into ``new/`` (``_bench.populate``).  For every message, batches of
``--batch`` (256, the FETCH's):

``inline``
    what the store and FETCH do in one process: ``encode_metadata(parse_metadata(file))`` (the
    cache record) and the rendering of its ENVELOPE, BODYSTRUCTURE and BODY
    (``structures.structures_of``).
``pool``
    the encoded metadata of a batch asked of ``--workers`` worker processes by a thread (as the
    store's ``run_blocking`` would), while the main thread decodes and renders the batch before
    (the next batch is asked for before the current one is rendered).

Both must give the same metadata and structures (checked).  Wall and CPU time (this process's, and the workers' from ``/proc``) of ``--repeat`` interleaved
rounds, and the best of each; the workers are started before timing.
Run from the repository::

    PYTHONPATH=src:. python benchmarks/parse_pool.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import populate  # shared benchmark helpers
from imap_sync import make_mixed_workload

from txmail import mime
from txmail.imap.structures import Structures, structures_of
from txmail.store._parse_pool import ParsePool, parse_file


def inline(path: str, names: list[str], batch: int) -> tuple[list[bytes], list[Structures]]:
    encoded, rendered = [], []
    for i in range(0, len(names), batch):
        for name in names[i : i + batch]:
            with open(os.path.join(path, "new", name), "rb") as f:
                md = mime.parse_metadata(f)
            encoded.append(mime.encode_metadata(md))
            rendered.append(structures_of(md))
    return encoded, rendered


def pooled(pool: ParsePool, path: str, names: list[str], batch: int) -> tuple[list[bytes], list[Structures]]:
    encoded: list[bytes] = []
    rendered: list[Structures] = []
    batches = [[("new", n, False) for n in names[i : i + batch]] for i in range(0, len(names), batch)]
    with ThreadPoolExecutor(1) as thread:
        ahead = thread.submit(pool.parse, path, batches[0])
        for k in range(len(batches)):
            got = ahead.result()
            if k + 1 < len(batches):
                ahead = thread.submit(pool.parse, path, batches[k + 1])
            for (sub, name, _), data in zip(batches[k], got, strict=True):
                data = data if data is not None else parse_file(path, sub, name, False)
                encoded.append(data)
                rendered.append(structures_of(mime.decode_metadata(data)))
    return encoded, rendered


def _cpu(pids: list[int]) -> float:
    """The CPU seconds the processes *pids* used so far (Linux ``/proc``)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _values(encoded: bytes) -> tuple[object, ...]:
    md = mime.decode_metadata(encoded)
    return md.header_size, tuple(md.headers), md.envelope, md.body_structure, md.lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    root = tempfile.mkdtemp(prefix="parse-pool-")
    pool = ParsePool(args.workers)
    try:
        work = make_mixed_workload(args.messages, args.seed)
        populate(Path(root), work, None)
        names = sorted(os.listdir(os.path.join(root, "new")))
        pool.parse(root, [("new", n, False) for n in names[: args.workers * 64]])  # started
        answers = {}
        best = {"inline": (float("inf"), 0.0, 0.0), "pool": (float("inf"), 0.0, 0.0)}
        us = 1e6 / args.messages
        # Interleaved rounds: the machine's other work changes from minute to minute.
        for n in range(args.repeat):
            for label, run in (
                ("inline", lambda: inline(root, names, args.batch)),
                ("pool", lambda: pooled(pool, root, names, args.batch)),
            ):
                pids = pool.pids()
                workers = _cpu(pids)
                wall, cpu = time.perf_counter(), time.process_time()
                answers[label] = run()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                workers = _cpu(pids) - workers
                best[label] = min(best[label], (wall, cpu, workers))
                print(
                    f"round {n + 1} {label:<7} wall {wall:6.2f} s ({wall * us:4.0f} us/message)"
                    f"  cpu {cpu:6.2f} s ({cpu * us:4.0f} us/message)"
                    f"  workers' cpu {workers:6.2f} s ({workers * us:4.0f} us/message)",
                    flush=True,
                )
        for label, (wall, cpu, workers) in best.items():
            print(
                f"best    {label:<7} wall {wall:6.2f} s ({wall * us:4.0f} us/message)"
                f"  cpu {cpu:6.2f} s ({cpu * us:4.0f} us/message)"
                f"  workers' cpu {workers:6.2f} s ({workers * us:4.0f} us/message)"
            )
        print(f"inline / pool wall: {best['inline'][0] / best['pool'][0]:.2f}x")
        # The records' octets may differ where marshal writes a reference to an object met
        # before (what a process shares differs): what they decode to may not.
        if [_values(e) for e in answers["inline"][0]] != [_values(e) for e in answers["pool"][0]] or (
            answers["inline"][1] != answers["pool"][1]
        ):
            raise SystemExit("the pool's answers differ from the inline parse's")
        print(f"{args.messages} messages, {args.workers} workers: same answers")
    finally:
        pool.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
