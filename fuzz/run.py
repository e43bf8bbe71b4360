#!/usr/bin/env python3
"""
Mutation-based fuzzing of txmail's sans-IO entry points (not run in CI).

    PYTHONPATH=src python fuzz/run.py --target all --inputs 1000000

Every target (``fuzz/targets.py``) takes one input (bytes) and returns the
*features* of the run: a few hashable values that describe what happened
(reply codes and event kinds in order, parse error messages, the final
state).  An input is kept in the corpus when it shows a feature never seen
before; new inputs are mutations of corpus entries (bit flips, inserted
protocol words, duplicated or deleted lines, numbers replaced by boundary
values, splices of two entries).  This is the AFL idea with behaviour
instead of branch coverage as the signal: ``sys.settrace`` line coverage
costs 20-50x per input, which would bring a million inputs per target from
minutes to hours on a shared 2-core machine; reply codes and error messages
are a good proxy because every rule and state of these modules answers with
its own.

A target's *oracle* raises :class:`targets.OracleViolation`; any exception
that is not one of the target's documented exceptions is a crash.  Every
input also has a time budget: a run taking more than ``--slow-factor``
(100) times the running median, and confirmed on three re-runs, is a slow
input; one taking longer than ``--hang`` seconds of CPU is stopped by an alarm.
Each finding is saved once per distinct (kind, exception, location) in
``--findings DIR/<target>/`` as ``<id>.bin`` (the input) and ``<id>.txt``
(the traceback), and can be replayed with ``--replay FILE``.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import random
import re
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

import targets  # noqa: E402

#: Boundary values put in place of a run of digits.
INTERESTING_NUMBERS = (
    b"0",
    b"1",
    b"-1",
    b"00000000000000000001",
    b"127",
    b"255",
    b"65535",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775808",
    b"18446744073709551616",
    b"99999999999999999999999999999999999999",
)

_DIGITS = re.compile(rb"\d+")

#: Octets added to an input's length when its time is compared per octet.
COST_BASE = 256


class Hang(BaseException):
    """The per-input alarm fired (a BaseException, so the code under test cannot swallow it)."""


def _alarm(signum: int, frame: object) -> None:
    raise Hang()


class Mutator:
    """Byte- and line-level mutations, with a target's dictionary of protocol words."""

    def __init__(self, rng: random.Random, dictionary: Iterable[bytes], max_len: int) -> None:
        self.rng = rng
        self.dictionary = list(dictionary) or [b"\r\n"]
        self.max_len = max_len
        self.ops: list[Callable[[bytearray, list[bytes]], None]] = [
            self.flip_bit,
            self.set_byte,
            self.insert_bytes,
            self.delete_block,
            self.duplicate_block,
            self.insert_word,
            self.insert_word,
            self.insert_word,
            self.replace_number,
            self.replace_number,
            self.line_op,
            self.line_op,
            self.splice,
            self.truncate,
            self.repeat_word,
        ]

    def mutate(self, data: bytes, corpus: list[bytes]) -> bytes:
        buf = bytearray(data)
        rng = self.rng
        for _ in range(1 + int(rng.expovariate(0.7))):
            rng.choice(self.ops)(buf, corpus)
        if len(buf) > self.max_len:
            del buf[self.max_len :]
        return bytes(buf)

    def _pos(self, buf: bytearray) -> int:
        return self.rng.randint(0, len(buf))

    def flip_bit(self, buf: bytearray, corpus: list[bytes]) -> None:
        if buf:
            i = self.rng.randrange(len(buf))
            buf[i] ^= 1 << self.rng.randrange(8)

    def set_byte(self, buf: bytearray, corpus: list[bytes]) -> None:
        if buf:
            special = b'\x00\r\n "\\{}()[]<>:@.-+=,*%~\x7f\x80\xff'
            value = self.rng.choice(special) if self.rng.random() < 0.6 else self.rng.randrange(256)
            buf[self.rng.randrange(len(buf))] = value

    def insert_bytes(self, buf: bytearray, corpus: list[bytes]) -> None:
        n = self.rng.choice((1, 1, 2, 4, 16))
        pos = self._pos(buf)
        buf[pos:pos] = bytes(self.rng.randrange(256) for _ in range(n))

    def delete_block(self, buf: bytearray, corpus: list[bytes]) -> None:
        if buf:
            start = self.rng.randrange(len(buf))
            del buf[start : start + self.rng.choice((1, 2, 4, 16, 64))]

    def duplicate_block(self, buf: bytearray, corpus: list[bytes]) -> None:
        if buf:
            start = self.rng.randrange(len(buf))
            block = buf[start : start + self.rng.choice((1, 4, 16, 64, 256))]
            pos = self._pos(buf)
            buf[pos:pos] = block * self.rng.choice((1, 1, 2, 8))

    def insert_word(self, buf: bytearray, corpus: list[bytes]) -> None:
        word = self.rng.choice(self.dictionary)
        if self.rng.random() < 0.5 and b"\n" in buf:
            # At a line start, where commands begin.
            starts = [m.end() for m in re.finditer(rb"\n", buf)]
            pos = self.rng.choice(starts)
        else:
            pos = self._pos(buf)
        buf[pos:pos] = word

    def repeat_word(self, buf: bytearray, corpus: list[bytes]) -> None:
        word = self.rng.choice(self.dictionary)
        pos = self._pos(buf)
        buf[pos:pos] = word * self.rng.choice((2, 4, 16, 100))

    def replace_number(self, buf: bytearray, corpus: list[bytes]) -> None:
        numbers = list(_DIGITS.finditer(buf))
        if not numbers:
            return self.insert_word(buf, corpus)
        m = self.rng.choice(numbers)
        if self.rng.random() < 0.5:
            new = self.rng.choice(INTERESTING_NUMBERS)
        else:
            value = int(m.group()) + self.rng.choice((-2, -1, 1, 2, 10, 1000))
            new = str(value).encode("ascii")
        buf[m.start() : m.end()] = new

    def line_op(self, buf: bytearray, corpus: list[bytes]) -> None:
        lines = bytes(buf).split(b"\n")
        if len(lines) < 2:
            return self.insert_word(buf, corpus)
        i = self.rng.randrange(len(lines))
        j = self.rng.randrange(len(lines))
        op = self.rng.randrange(4)
        if op == 0:
            lines.insert(j, lines[i])
        elif op == 1:
            del lines[i]
        elif op == 2:
            lines[i], lines[j] = lines[j], lines[i]
        else:
            other = self.rng.choice(corpus).split(b"\n")
            lines.insert(j, self.rng.choice(other))
        buf[:] = b"\n".join(lines)

    def splice(self, buf: bytearray, corpus: list[bytes]) -> None:
        other = self.rng.choice(corpus)
        if other:
            cut = self._pos(buf)
            ocut = self.rng.randrange(len(other))
            buf[cut:] = other[ocut:]

    def truncate(self, buf: bytearray, corpus: list[bytes]) -> None:
        if buf:
            del buf[self.rng.randrange(len(buf)) :]


def _finding_key(kind: str, exc: BaseException | None) -> str:
    """Findings are told apart by kind, exception type and where it was raised in txmail."""
    if exc is None:
        return kind
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    for frame in reversed(frames):
        if "/txmail/" in frame.filename:
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            break
    message = exc.args[0] if isinstance(exc, targets.OracleViolation) else ""
    return f"{kind}|{type(exc).__name__}|{where}|{message[:80]}"


class Findings:
    def __init__(self, directory: Path, target: str) -> None:
        self.directory = directory / target
        self.seen: dict[str, int] = {}

    def record(self, kind: str, data: bytes, exc: BaseException | None, detail: str = "") -> bool:
        """Save one finding; ``True`` when it is a new one."""
        key = _finding_key(kind, exc)
        self.seen[key] = self.seen.get(key, 0) + 1
        if self.seen[key] > 1:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}"
        (self.directory / f"{name}.bin").write_bytes(data)
        text = f"{key}\n{detail}\n"
        if exc is not None:
            text += "".join(traceback.format_exception(exc))
        (self.directory / f"{name}.txt").write_text(text)
        print(f"  FINDING {kind}: {key}  -> {self.directory / name}.bin", flush=True)
        return True


def load_seeds(corpus_dir: Path, target: targets.Target) -> list[bytes]:
    seeds: list[bytes] = []
    directory = corpus_dir / target.name
    if directory.is_dir():
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                seeds.append(path.read_bytes()[: target.max_len])
    return seeds or [b""]


def fuzz_target(target: targets.Target, args: argparse.Namespace) -> dict[str, object]:
    rng = random.Random(f"{args.seed}:{target.name}")
    mutator = Mutator(rng, target.dictionary, target.max_len)
    findings = Findings(Path(args.findings), target.name)
    corpus_dir = Path(args.corpus)
    corpus = load_seeds(corpus_dir, target)
    save_dir = corpus_dir / target.name / "new"
    features: set[object] = set()
    timings: list[float] = []
    median = 0.0
    slow_checked: set[bytes] = set()
    hang = args.hang
    # CPU time, not wall time: on a shared machine a process may wait
    # seconds for a core, which says nothing about the input.  The thread's
    # clock: the process's stops advancing finely while ITIMER_PROF is armed
    # (Linux; measured: 99 % of 50 us runs read as 0).
    clock = time.thread_time

    def one(data: bytes) -> tuple[float, set[object] | None]:
        signal.setitimer(signal.ITIMER_PROF, hang)
        start = clock()
        try:
            found = target.run(data)
        except Hang as e:
            signal.setitimer(signal.ITIMER_PROF, 0)
            findings.record("hang", data, e, f"over {hang} s")
            return hang, None
        except targets.OracleViolation as e:
            signal.setitimer(signal.ITIMER_PROF, 0)
            findings.record("oracle", data, e)
            return clock() - start, None
        except Exception as e:
            signal.setitimer(signal.ITIMER_PROF, 0)
            if isinstance(e, target.allowed):
                return clock() - start, set()
            findings.record("crash", data, e)
            return clock() - start, None
        elapsed = clock() - start
        signal.setitimer(signal.ITIMER_PROF, 0)
        return elapsed, found

    # The cyclic GC runs between inputs, not inside one's timing: with a
    # large corpus a full collection takes tens of milliseconds, which would
    # make any input look slow.
    gc.disable()
    # The seeds first: they are the baseline of features.
    for data in corpus:
        _, found = one(data)
        if found:
            features.update(found)
    kept = 0
    done = len(corpus)
    start = time.monotonic()
    last_report = start
    n = args.inputs
    deadline = start + args.seconds if args.seconds else float("inf")
    while done < n:
        if not done & 255 and time.monotonic() > deadline:
            break
        if not done & 4095:
            gc.collect()
        parent = rng.choice(corpus)
        data = mutator.mutate(parent, corpus)
        elapsed, found = one(data)
        done += 1
        if found and not found <= features:
            features.update(found)
            corpus.append(data)
            kept += 1
            if args.save:
                save_dir.mkdir(parents=True, exist_ok=True)
                (save_dir / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
        # Time per octet of input and output (plus a constant for the
        # per-input setup): a long input or answer may take longer, but not
        # more than linearly so.
        work = len(data) + targets.last_output + COST_BASE
        targets.last_output = 0
        cost = elapsed / work
        timings.append(cost)
        if len(timings) >= 2048:
            median = statistics.median(timings)
            timings.clear()
        if (
            median
            and cost > args.slow_factor * median
            and elapsed > args.slow_floor
            and data not in slow_checked
        ):
            # Confirm on re-runs (the machine is shared: one run may just have been descheduled).
            slow_checked.add(data)
            again = min(one(data)[0] for _ in range(3))
            if again / work > args.slow_factor * median:
                findings.record(
                    "slow",
                    data,
                    None,
                    f"{again * 1e3:.2f} ms for {len(data)} octets in, {work - len(data) - COST_BASE} out; "
                    f"median {median * 1e9:.1f} ns per octet",
                )
        now = time.monotonic()
        if now - last_report >= args.report:
            last_report = now
            rate = done / (now - start)
            print(
                f"  {target.name}: {done:,} inputs, {rate:,.0f}/s, corpus {len(corpus)}, "
                f"features {len(features)}, findings {len(findings.seen)}",
                flush=True,
            )
    seconds = time.monotonic() - start
    gc.enable()
    return {
        "target": target.name,
        "inputs": done,
        "seconds": seconds,
        "rate": done / seconds if seconds else 0.0,
        "corpus": len(corpus),
        "features": len(features),
        "median_ns_per_octet": median * 1e9,
        "findings": dict(findings.seen),
    }


def replay(target: targets.Target, path: Path) -> int:
    data = path.read_bytes()
    start = time.thread_time()
    try:
        found = target.run(data)
    except Exception as e:
        if isinstance(e, target.allowed):
            print(f"allowed exception: {e!r}")
            return 0
        traceback.print_exc()
        return 1
    print(f"ok in {(time.thread_time() - start) * 1e3:.2f} ms of CPU; {len(found)} features")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="all", help=f"one of {', '.join(targets.TARGETS)} or all")
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (seeds included)")
    parser.add_argument(
        "--seconds", type=float, default=0, help="stop a target after this long (0: no limit)"
    )
    parser.add_argument("--seed", default="0", help="random seed (runs are reproducible)")
    parser.add_argument("--corpus", default=str(HERE / "corpus"), help="seeds in DIR/<target>/")
    parser.add_argument("--save", action="store_true", help="save interesting inputs in DIR/<target>/new/")
    parser.add_argument("--findings", default="fuzz-findings", help="where findings are saved")
    parser.add_argument("--slow-factor", type=float, default=100.0)
    parser.add_argument("--slow-floor", type=float, default=0.002, help="seconds; faster runs are never slow")
    parser.add_argument("--hang", type=float, default=5.0, help="seconds before an input counts as hung")
    parser.add_argument("--report", type=float, default=30.0, help="seconds between progress lines")
    parser.add_argument("--replay", type=Path, help="run one saved input (with --target NAME)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPROF, _alarm)
    names = list(targets.TARGETS) if args.target == "all" else args.target.split(",")
    for name in names:
        if name not in targets.TARGETS:
            parser.error(f"unknown target {name!r}")
    if args.replay:
        if len(names) != 1:
            parser.error("--replay needs one --target")
        return replay(targets.TARGETS[names[0]](), args.replay)
    results = []
    for name in names:
        print(f"{name}: fuzzing {args.inputs:,} inputs", flush=True)
        result = fuzz_target(targets.TARGETS[name](), args)
        results.append(result)
        print(
            f"{name}: {result['inputs']:,} inputs in {result['seconds']:.0f} s "
            f"({result['rate']:,.0f}/s), corpus {result['corpus']}, features {result['features']}, "
            f"median {result['median_ns_per_octet']:.0f} ns/octet, findings {len(result['findings'])}",  # type: ignore[arg-type]
            flush=True,
        )
        for key, count in result["findings"].items():  # type: ignore[attr-defined]
            print(f"    {count:>8} x {key}", flush=True)
    return 1 if any(r["findings"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
