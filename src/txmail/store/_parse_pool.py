"""
Whole-message parses in worker processes: the second core for a cold FETCH.

The first ``FETCH 1:* (ENVELOPE BODYSTRUCTURE ...)`` of a folder of
dropped-in files parses every message whole (:func:`txmail.mime.parse_metadata`),
which is most of its CPU; in one Python process it runs on one core at a
time, whatever the threads.  A :class:`ParsePool` hands batches of file
names to a few worker processes (``python -m txmail.store._parse_pool``),
each answering with the encoded metadata (:func:`txmail.mime.encode_metadata`)
of its messages, while the reactor thread renders the batch before.

A worker runs exactly what the store runs inline (:func:`parse_file`), so
its answer is the octets an inline parse would have cached.  Anything else
(a file gone or renamed, a parse error, a worker that died, hung, or
answered nonsense) is ``None``, and the caller parses that message inline
as before: the pool can make a parse faster, never change or lose one.  A
worker that failed is killed; the next batch starts a new one.

Blocking: :meth:`ParsePool.parse` waits for the workers, so it is called
from the store's ``run_blocking`` threads, never the reactor's.  Frames on
the pipes are a 4-octet big-endian length and a :mod:`marshal` payload.
No Twisted.
"""

from __future__ import annotations

import contextlib
import fcntl
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from txmail import mime
from txmail.store._crlf import CRLFFile

__all__ = ["DEFAULT_TIMEOUT", "MIN_SHARE", "OCTETS_A_SECOND", "ParsePool", "parse_file"]

#: Seconds a worker may take to answer one batch before it is killed and
#: its messages parsed inline, besides :data:`OCTETS_A_SECOND` of its messages.
DEFAULT_TIMEOUT = 30.0
#: The slowest parse allowed for (a parse runs at about 100 MB/s): a batch of
#: large messages has more time.
OCTETS_A_SECOND = 4 << 20
#: A batch is split between at most ``len(items) // MIN_SHARE`` workers
#: (so a small one goes to one worker: a pipe round trip costs about a parse).
MIN_SHARE = 32

#: The octets a worker's answer pipe holds (Linux lets a process ask up to 1 MiB).
PIPE_SIZE = 1 << 20

_HEAD = struct.Struct(">I")
#: One (sub directory, file name, bare LFs to convert) of a batch.
Item = tuple[str, str, bool]


def parse_file(path: str, sub: str, name: str, convert: bool) -> bytes:
    """
    The encoded metadata of the message file ``path/sub/name``, parsed
    whole (with CRLF line ends when *convert*): what
    :func:`txmail.store._maildir_io.read_metadata` caches for it.
    """
    with open(os.path.join(path, sub, name), "rb") as f:
        md = mime.parse_metadata(CRLFFile(f) if convert else f)
    return mime.encode_metadata(md)


def parse_batch(path: str, items: Sequence[Item]) -> list[bytes | None]:
    """A worker's answer to a batch: each message's encoded metadata, or ``None`` when it failed."""
    out: list[bytes | None] = []
    for sub, name, convert in items:
        try:
            out.append(parse_file(path, sub, name, convert))
        except Exception:
            out.append(None)  # parsed inline by the caller, which sees the error itself
    return out


class WorkerFailed(Exception):
    """A worker died, hung or answered something other than a frame of its batch."""


class _Worker:
    """One worker process and its pipes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        # An answer in one write and one read: fewer turns of the GIL for
        # the waiting thread while the reactor thread renders.
        with contextlib.suppress(OSError, AttributeError):
            fcntl.fcntl(self._out, fcntl.F_SETPIPE_SZ, PIPE_SIZE)

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, path: str, items: Sequence[Item]) -> None:
        payload = marshal.dumps((path, list(items)))
        data = memoryview(_HEAD.pack(len(payload)) + payload)
        try:
            while data:
                data = data[os.write(self._in, data) :]
        except OSError as e:
            raise WorkerFailed(f"writing to worker {self.pid}: {e}") from e

    def receive(self, count: int, deadline: float) -> list[bytes | None]:
        data = self._read(_HEAD.size, deadline, PIPE_SIZE)
        size = _HEAD.unpack_from(data)[0]
        body = data[_HEAD.size :]
        if len(body) < size:
            body += self._read(size - len(body), deadline)
        elif len(body) > size:
            raise WorkerFailed(f"worker {self.pid} answered more than asked")
        try:
            answer = marshal.loads(body)
        except (ValueError, EOFError, TypeError) as e:
            raise WorkerFailed(f"worker {self.pid} answered nonsense") from e
        if not isinstance(answer, list) or len(answer) != count:
            raise WorkerFailed(f"worker {self.pid} answered {type(answer).__name__}")
        return [a if isinstance(a, bytes) else None for a in answer]

    def _read(self, n: int, deadline: float, most: int = 0) -> bytes:
        """At least *n* octets (and at most *most*, when larger), by *deadline*."""
        chunks: list[bytes] = []
        poller = select.poll()
        poller.register(self._out, select.POLLIN)
        got = 0
        while got < n:
            # Past the deadline, what is there already is still taken (another
            # worker's wait may have used the time).
            left = max(0.0, deadline - time.monotonic())
            if not poller.poll(left * 1000):
                raise WorkerFailed(f"worker {self.pid} did not answer in time")
            chunk = os.read(self._out, max(n, most) - got)
            if not chunk:
                raise WorkerFailed(f"worker {self.pid} ended")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self, kill: bool = False) -> None:
        """Stop the worker: its input closed (it ends), killed when *kill* or when it lingers."""
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        if kill:
            self.process.kill()
        try:
            self.process.wait(1.0)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _worker_argv() -> tuple[list[str], dict[str, str]]:
    """How a worker is started: this interpreter, with this process's ``txmail`` first on its path."""
    import txmail

    top = os.path.dirname(os.path.dirname(os.path.abspath(txmail.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "txmail.store._parse_pool"], env


class ParsePool:
    """
    Up to *size* worker processes parsing messages whole, started when
    first needed; thread-safe.  A call takes the idle workers (starting
    those missing), so two threads never share one; a thread that finds
    none idle gets ``None`` for everything (it parses inline).

    Args:
        size: the most workers.
        timeout: seconds a worker may take over one batch.
    """

    def __init__(self, size: int, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        if size < 1:
            raise ValueError(f"a parse pool needs at least one worker, not {size}")
        self.size = size
        self.timeout = timeout
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy = 0
        self._stopped = False
        #: Workers that failed (died, hung, answered nonsense) and were replaced.
        self.failures = 0

    def parse(self, path: str, items: Sequence[Item], octets: int = 0) -> list[bytes | None]:
        """
        The encoded metadata of each of *items* (files of the folder *path*,
        about *octets* in all), or ``None`` for those the workers did not
        parse; blocking.
        """
        if not items:
            return []
        workers = self._take(max(1, min(self.size, len(items) // MIN_SHARE)))
        if not workers:
            return [None] * len(items)
        step = -(-len(items) // len(workers))
        shares = [items[i : i + step] for i in range(0, len(items), step)]
        deadline = time.monotonic() + self.timeout + octets / OCTETS_A_SECOND
        sent: list[_Worker | None] = []
        for worker, share in zip(workers, shares, strict=False):
            try:
                worker.send(path, share)
            except WorkerFailed:
                self._failed(worker)
                sent.append(None)
            else:
                sent.append(worker)
        for worker in workers[len(shares) :]:
            self._give_back(worker)
        out: list[bytes | None] = []
        for sent_to, share in zip(sent, shares, strict=True):
            answer: list[bytes | None] = [None] * len(share)
            if sent_to is not None:
                try:
                    answer = sent_to.receive(len(share), deadline)
                except WorkerFailed:
                    self._failed(sent_to)
                else:
                    self._give_back(sent_to)
            out.extend(answer)
        return out

    def pids(self) -> list[int]:
        """The process ids of the idle workers (for tests)."""
        with self._lock:
            return [w.pid for w in self._idle]

    def stop(self) -> None:
        """Stop every idle worker now and the busy ones when their batch ends; no new ones start."""
        with self._lock:
            self._stopped = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()

    def _take(self, want: int) -> list[_Worker]:
        with self._lock:
            if self._stopped:
                return []
            taken = self._idle[:want]
            del self._idle[:want]
            alive = self._busy + len(self._idle) + len(taken)
            start = max(0, min(want - len(taken), self.size - alive))
            self._busy += len(taken) + start  # the new ones reserved before they start
        for n in range(start):
            try:
                argv, env = _worker_argv()
                taken.append(_Worker(argv, env))
            except OSError:
                with self._lock:
                    self._busy -= start - n
                break
        return taken

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            self._busy -= 1
            if not self._stopped:
                self._idle.append(worker)
                return
        worker.close()

    def _failed(self, worker: _Worker) -> None:
        with self._lock:
            self._busy -= 1
            self.failures += 1
        worker.close(kill=True)


def _serve(stdin: Any, stdout: Any) -> None:
    """A worker's loop: a batch in, its answer out, until the input ends."""
    while True:
        head = stdin.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        (size,) = _HEAD.unpack(head)
        path, items = marshal.loads(stdin.read(size))
        payload = marshal.dumps(parse_batch(path, items))
        stdout.write(_HEAD.pack(len(payload)) + payload)
        stdout.flush()


if __name__ == "__main__":  # pragma: no cover - run in the worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself
    _serve(sys.stdin.buffer, sys.stdout.buffer)
