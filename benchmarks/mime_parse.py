"""
The per-message CPU of a cold ``FETCH (ENVELOPE BODYSTRUCTURE ...)``: the parse of a message
file into its cached record (``_parse_pool.parse_file``: ``mime.parse_metadata`` and
``mime.encode_metadata``) and the rendering of its three texts (``structures.structures_of``),
single-part and multipart messages apart, for one or more checkouts of txmail compared.

The folder holds ``imap_sync.make_mixed_workload(--messages, --seed)`` (5,000 and 2026 by
default: 1-64 KiB, every fifth multipart/mixed with a text part and a base64 attachment).  Each
round runs every checkout once, in a fresh process (``PYTHONPATH=<checkout>/src``), one after the
other (interleaved: the machine's other work changes from minute to minute); the best of
``--rounds`` is reported, in CPU microseconds a message.  Every checkout must give the same
records and texts, octet for octet (checked by digest).  Run from the repository, with a
commit's ``src`` as the baseline (exported, so that no uncommitted change counts)::

    mkdir -p /tmp/base && git archive <commit> src | tar -x -C /tmp/base
    python benchmarks/mime_parse.py /tmp/base/src src --rounds 11
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(root: str, passes: int) -> None:
    """One checkout's measures of the messages of *root*, as JSON on stdout."""
    from txmail import mime
    from txmail.imap.structures import structures_of
    from txmail.store._parse_pool import parse_file

    with open(os.path.join(root, "kinds.json")) as f:
        kinds = json.load(f)
    groups = {"single": [n for n, k in kinds if not k], "multi": [n for n, k in kinds if k]}
    best: dict[str, float] = {}
    digest = hashlib.sha256()
    clock = time.process_time
    for p in range(passes):
        for kind, names in groups.items():
            t = clock()
            records = [parse_file(root, "new", name, False) for name in names]
            parse = clock() - t
            mds = [mime.decode_metadata(r) for r in records]
            for md in mds:  # the deferred structures loaded before the clock starts
                md.body_structure  # noqa: B018
            t = clock()
            texts = [structures_of(md) for md in mds]
            render = clock() - t
            for label, seconds in ((f"parse_file {kind}", parse), (f"structures_of {kind}", render)):
                us = seconds * 1e6 / len(names)
                best[label] = min(best.get(label, us), us)
            if p == 0:
                for r, s in zip(records, texts, strict=True):
                    digest.update(r)
                    digest.update(b"".join(s))
    json.dump({"best": best, "digest": digest.hexdigest()}, sys.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", nargs="*", help="the src directory of each checkout compared")
    parser.add_argument("--messages", type=int, default=5_000)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--passes", type=int, default=1, help="passes a process (its best counts)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.passes)
        return
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, os.path.abspath(args.src[0]))
    from _bench import populate
    from imap_sync import make_mixed_workload

    root = tempfile.mkdtemp(prefix="mime-parse-")
    try:
        work = make_mixed_workload(args.messages, args.seed)
        populate(Path(root), work, None)
        with open(os.path.join(root, "kinds.json"), "w") as f:
            json.dump([[name, i % 5 == 0] for i, name in enumerate(work.names)], f)
        best: dict[str, dict[str, float]] = {}
        digests: dict[str, str] = {}
        for n in range(args.rounds):
            for src in args.src:
                env = dict(os.environ, PYTHONPATH=f"{os.path.abspath(src)}{os.pathsep}{HERE}")
                out = subprocess.run(
                    [sys.executable, __file__, "--child", root, "--passes", str(args.passes)],
                    env=env,
                    check=True,
                    capture_output=True,
                ).stdout
                got = json.loads(out)
                digests[src] = got["digest"]
                mine = best.setdefault(src, {})
                for label, us in got["best"].items():
                    mine[label] = min(mine.get(label, us), us)
                shown = "  ".join(f"{label} {us:5.1f}" for label, us in got["best"].items())
                print(f"round {n + 1} {src}: {shown}", flush=True)
        print(f"best of {args.rounds} rounds, CPU us a message ({args.messages} messages):")
        labels = list(best[args.src[0]])
        print(f"{'':24}" + "".join(f"{src[-22:]:>24}" for src in args.src))
        for label in labels:
            print(f"{label:24}" + "".join(f"{best[src][label]:24.1f}" for src in args.src))
        if len(set(digests.values())) != 1:
            raise SystemExit(f"the checkouts' records or texts differ: {digests}")
        print("same records and texts in every checkout")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
