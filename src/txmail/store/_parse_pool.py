"""
Whole-message parses in worker processes: the second core for a cold FETCH.

The first ``FETCH 1:* (ENVELOPE BODYSTRUCTURE ...)`` of a folder of
dropped-in files parses every message whole (:func:`txmail.mime.parse_metadata`),
which is most of its CPU; in one Python process it runs on one core at a
time, whatever the threads.  A :class:`ParsePool` hands batches of file
names to a few worker processes (``python -m txmail.store._parse_pool``),
each answering with the encoded metadata (:func:`txmail.mime.encode_metadata`)
of its messages and, when asked (:meth:`ParsePool.parse_deriving`), what
functions named by their module and name derive from it (the header
columns; IMAP's rendered ENVELOPE and BODYSTRUCTURE,
:meth:`txmail.interfaces.IRecordCache.derive_records`), while the server
writes the batch before and asks for the next.

Workers start when first needed, or ahead of the need
(:meth:`ParsePool.start`: the Maildir store starts them when a listing
takes in many files other programs dropped in); each imports, as it starts,
the modules of the functions it will run (given, or named by an earlier
batch), so that neither the start nor the imports fall in a FETCH.

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
import errno
import fcntl
import gc
import importlib
import marshal
import os
import select
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from txmail import mime
from txmail.model import MessageMetadata
from txmail.store._crlf import CRLFFile, to_crlf

__all__ = [
    "DEFAULT_TIMEOUT",
    "MESSAGE_OPEN_FLAGS",
    "MIN_SHARE",
    "OCTETS_A_SECOND",
    "NotAMessageFile",
    "ParsePool",
    "function_name",
    "named_function",
    "open_message_fd",
    "parse_file",
]

#: Seconds a worker may take to answer one batch before it is killed and
#: its messages parsed inline, besides :data:`OCTETS_A_SECOND` of its messages.
DEFAULT_TIMEOUT = 30.0
#: The slowest parse allowed for (a parse runs at about 100 MB/s): a batch of
#: large messages has more time.
OCTETS_A_SECOND = 4 << 20
#: A batch is split between at most ``len(items) // MIN_SHARE`` workers
#: (so a small one goes to one worker: a pipe round trip costs about a parse).
MIN_SHARE = 32

#: The worker processes' garbage collector thresholds (:func:`gc.set_threshold`).
WORKER_GC_THRESHOLD = (50_000, 20, 20)

#: Batches a worker takes at once (answered in turn).
DEPTH = 2

#: The octets a worker's answer pipe holds (Linux lets a process ask up to 1 MiB).
PIPE_SIZE = 1 << 20

_HEAD = struct.Struct(">I")
#: One (sub directory, file name, bare LFs to convert) of a batch.
Item = tuple[str, str, bool]


#: How a message file is opened: never through a symbolic link (``O_NOFOLLOW``:
#: one in ``new/`` or ``cur/`` would serve a file outside the Maildir), and
#: never waiting for a FIFO's writer (``O_NONBLOCK``, cleared once the file
#: is known to be a regular one); ``O_NOCTTY`` so that a terminal device
#: never becomes the server's controlling terminal.
MESSAGE_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)

#: What ``open`` fails with on an entry that is not a regular file:
#: a symbolic link under ``O_NOFOLLOW`` (``ELOOP``; ``EMLINK`` on FreeBSD,
#: ``EFTYPE`` on NetBSD), a socket (``ENXIO``).
_NOT_A_FILE_ERRNOS = frozenset(
    code
    for code in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", None), errno.ENXIO)
    if code is not None
)


class NotAMessageFile(FileNotFoundError):
    """
    An entry of ``new/`` or ``cur/`` that is not a regular file (a
    symbolic link, a FIFO, a directory, a socket, a device): only regular
    files are messages, so it is treated as a file that is gone (a
    ``FileNotFoundError``: every caller handling a message deleted by
    another program handles this one the same way).
    """

    def __init__(self, path: str) -> None:
        super().__init__(errno.ENOENT, "not a regular file", path)


def open_message_fd(full_path: str) -> tuple[int, os.stat_result]:
    """
    Open the message file at *full_path* for reading
    (:data:`MESSAGE_OPEN_FLAGS`): its descriptor, blocking as usual, and its
    ``fstat``.  The caller closes the descriptor.

    Raises:
        NotAMessageFile: it is not a regular file (checked on what was
            opened, so a file replaced after it was listed is caught too).
        OSError: ``FileNotFoundError`` when it was renamed or removed.
    """
    try:
        fd = os.open(full_path, MESSAGE_OPEN_FLAGS)
    except OSError as e:
        if e.errno in _NOT_A_FILE_ERRNOS:
            raise NotAMessageFile(full_path) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAMessageFile(full_path)
        # A regular file: reads as usual (O_NONBLOCK off: a network or FUSE
        # file system may honour it).  F_SETFL changes only the status flags.
        fcntl.fcntl(fd, fcntl.F_SETFL, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def parse_file(path: str, sub: str, name: str, convert: bool) -> bytes:
    """
    The encoded metadata of the message file ``path/sub/name``, parsed
    whole (with CRLF line ends when *convert*): what
    :func:`txmail.store._maildir_io.read_metadata` caches for it.
    """
    return mime.encode_metadata(parse_file_metadata(path, sub, name, convert))


#: A message file of at most this many octets is read with one system call
#: and parsed from its octets (a larger one is parsed as it is read).
WHOLE_READ = 1 << 20


def parse_file_metadata(path: str, sub: str, name: str, convert: bool) -> MessageMetadata:
    """The metadata of the message file ``path/sub/name``, parsed whole (see :func:`parse_file`)."""
    fd, st = open_message_fd(os.path.join(path, sub, name))
    try:
        size = st.st_size
        if size < WHOLE_READ:
            data = os.read(fd, size + 1)
            if len(data) == size:  # the whole file (one that grew meanwhile is read as a file)
                return mime.parse_metadata(to_crlf(data) if convert else data)
            os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(fd, "rb", closefd=False) as f:
            return mime.parse_metadata(CRLFFile(f) if convert else f)
    finally:
        os.close(fd)


#: A function of a message's metadata that a worker also runs, by its name
#: (:func:`function_name`): its answer goes back beside the encoded metadata.
Derive = Callable[[MessageMetadata], Any]


def function_name(fn: Callable[..., Any]) -> str | None:
    """
    ``"module:qualified name"`` of *fn* when a worker process finds the
    same function by it (a module-level function, or a method reached
    from one), else ``None``.
    """
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    name = f"{module}:{qualname}"
    try:
        found = named_function(name)
    except (ImportError, AttributeError, ValueError):
        return None
    return name if found is fn or found == fn else None


def named_function(name: str) -> Derive:
    """The function named *name* (``"module:qualified name"``)."""
    module, _, qualname = name.partition(":")
    if not qualname:
        raise ValueError(f"not a function name: {name!r}")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if not callable(found):
        raise ValueError(f"{name!r} is not a function")
    return typing.cast(Derive, found)


def parse_batch(path: str, items: Sequence[Item], derive: Sequence[str] = ()) -> list[Any]:
    """
    A worker's answer to a batch: each message's encoded metadata, or
    ``None`` when it failed; with *derive* (function names), each message's
    ``[encoded metadata, fn(metadata) for each fn]``.
    """
    fns = [named_function(name) for name in derive]
    out: list[Any] = []
    for sub, name, convert in items:
        try:
            md = parse_file_metadata(path, sub, name, convert)
            encoded = mime.encode_metadata(md)
            out.append([encoded, *(fn(md) for fn in fns)] if fns else encoded)
        except Exception:
            out.append(None)  # parsed inline by the caller, which sees the error itself
    return out


class WorkerFailed(Exception):
    """A worker died, hung or answered something other than a frame of its batch."""


class _Worker:
    """
    One worker process and its pipes.  Batches are answered in the order
    they were sent: a caller may send while another's batch is being
    parsed (it then waits for its turn to read), so the worker finds the
    next batch in its pipe the moment it answers one.
    """

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._in = self.process.stdin.fileno()
        self._out = self.process.stdout.fileno()
        # An answer in one write and one read: fewer turns of the GIL for
        # the waiting thread while the reactor thread works; a batch sent
        # ahead fits in the pipe while the worker is busy.
        for fd in (self._in, self._out):
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._sending = threading.Lock()
        self._turns = threading.Condition()
        self._sent = 0  # batches written
        self._answered = 0  # answers read
        self.broken = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def send(self, path: str, items: Sequence[Item], derive: Sequence[str] = ()) -> int:
        """Write a batch; returns its turn (for :meth:`receive`)."""
        payload = marshal.dumps((path, list(items), list(derive)))
        data = memoryview(_HEAD.pack(len(payload)) + payload)
        with self._sending:
            if self.broken:
                raise WorkerFailed(f"worker {self.pid} failed")
            try:
                while data:
                    data = data[os.write(self._in, data) :]
            except OSError as e:
                raise WorkerFailed(f"writing to worker {self.pid}: {e}") from e
            turn = self._sent
            self._sent += 1
        return turn

    def receive(self, turn: int, count: int, seconds: float, derived: int = 0) -> list[Any]:
        """
        The answer to the batch sent as *turn* (of *count* messages), read
        once the batches before it are answered, within *seconds* from then.
        """
        with self._turns:
            # The caller before reads within its own time, or fails the worker.
            while self._answered != turn and not self.broken:
                self._turns.wait(seconds)
            if self.broken:
                raise WorkerFailed(f"worker {self.pid} failed")
        try:
            answer = self._answer(count, time.monotonic() + seconds, derived)
        except OSError as e:  # its pipe closed under it
            self.fail()
            raise WorkerFailed(f"reading from worker {self.pid}: {e}") from e
        except WorkerFailed:
            self.fail()
            raise
        with self._turns:
            self._answered += 1
            self._turns.notify_all()
        return answer

    def fail(self) -> None:
        """Mark the worker failed: the callers waiting for their turn give up."""
        with self._turns:
            self.broken = True
            self._turns.notify_all()

    def _answer(self, count: int, deadline: float, derived: int) -> list[Any]:
        # Exactly one frame: the answer to a batch sent after may follow in the pipe.
        (size,) = _HEAD.unpack(self._read(_HEAD.size, deadline))
        body = self._read(size, deadline)
        try:
            answer = marshal.loads(body)
        except (ValueError, EOFError, TypeError) as e:
            raise WorkerFailed(f"worker {self.pid} answered nonsense") from e
        if not isinstance(answer, list) or len(answer) != count:
            raise WorkerFailed(f"worker {self.pid} answered {type(answer).__name__}")
        if not derived:
            return [a if isinstance(a, bytes) else None for a in answer]
        return [
            a if isinstance(a, list) and len(a) == derived + 1 and isinstance(a[0], bytes) else None
            for a in answer
        ]

    def _read(self, n: int, deadline: float) -> bytes:
        """Exactly *n* octets, by *deadline*."""
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
            chunk = os.read(self._out, n - got)
            if not chunk:
                raise WorkerFailed(f"worker {self.pid} ended")
            chunks.append(chunk)
            got += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

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


def _worker_argv(preload: Iterable[str] = ()) -> tuple[list[str], dict[str, str]]:
    """
    How a worker is started: this interpreter, with this process's
    ``txmail`` first on its path, importing the modules *preload* first.
    """
    import txmail

    top = os.path.dirname(os.path.dirname(os.path.abspath(txmail.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH", "")) if p)
    return [sys.executable, "-m", "txmail.store._parse_pool", *sorted(preload)], env


def _module_of(name: str) -> str:
    """The module of a function name of :func:`function_name`."""
    return name.partition(":")[0]


class ParsePool:
    """
    Up to *size* worker processes parsing messages whole, started when
    first needed; thread-safe.  A call shares its batch between the least
    busy workers (starting those missing); each worker takes up to
    :data:`DEPTH` batches at once, answered in turn, so that a thread
    asking for the next batch while the current one is parsed has it
    queued in the workers' pipes.  A thread finding every worker that full
    waits until one answers (at most *timeout*), then takes those with
    room; with none it gets ``None`` for everything (it parses inline).

    A worker imports the modules of the functions it will run when it
    starts, before it freezes what it holds for the garbage collector
    (:func:`gc.freeze`): those of *preload*, and those of every function
    a :meth:`parse_deriving` named before.  :meth:`start` starts the
    workers ahead of the first need.

    Args:
        size: the most workers.
        timeout: seconds a worker may take over one batch.
        preload: names of modules (or of functions, as
            :func:`function_name` gives them) for each worker to import
            when it starts.
    """

    def __init__(self, size: int, *, timeout: float = DEFAULT_TIMEOUT, preload: Iterable[str] = ()) -> None:
        if size < 1:
            raise ValueError(f"a parse pool needs at least one worker, not {size}")
        self.size = size
        self.timeout = timeout
        #: The modules a worker imports when it starts (a set replaced when it grows).
        self.preload = frozenset(_module_of(name) for name in preload)
        self._lock = threading.Condition()
        self._workers: list[_Worker] = []
        self._load: dict[_Worker, int] = {}  # batches sent and not yet answered
        self._starting = 0
        self._stopped = False
        #: Workers that failed (died, hung, answered nonsense) and were replaced.
        self.failures = 0

    def parse(self, path: str, items: Sequence[Item], octets: int = 0) -> list[bytes | None]:
        """
        The encoded metadata of each of *items* (files of the folder *path*,
        about *octets* in all), or ``None`` for those the workers did not
        parse; blocking.
        """
        return self.parse_deriving(path, items, (), octets)

    def parse_deriving(
        self, path: str, items: Sequence[Item], derive: Sequence[str], octets: int = 0
    ) -> list[Any]:
        """
        As :meth:`parse`, and with *derive* (names of :func:`function_name`:
        functions of the metadata, each answering what :mod:`marshal`
        carries), each message's ``[encoded metadata, fn(metadata) for
        each fn]`` or ``None``; blocking.
        """
        if not items:
            return []
        for name in derive:
            if _module_of(name) not in self.preload:
                with self._lock:  # for the workers started from now on
                    self.preload = self.preload | {_module_of(name)}
        workers = self._take(max(1, min(self.size, len(items) // MIN_SHARE)))
        if not workers:
            return [None] * len(items)
        step = -(-len(items) // len(workers))
        shares = [items[i : i + step] for i in range(0, len(items), step)]
        seconds = self.timeout + octets / OCTETS_A_SECOND
        turns: list[int | None] = []
        for worker, share in zip(workers, shares, strict=False):
            try:
                turns.append(worker.send(path, share, derive))
            except WorkerFailed:
                self._failed(worker)
                turns.append(None)
        for worker in workers[len(shares) :]:
            self._give_back(worker)
        out: list[Any] = []
        for worker, turn, share in zip(workers, turns, shares, strict=False):
            answer: list[Any] = [None] * len(share)
            if turn is not None:
                try:
                    answer = worker.receive(turn, len(share), seconds, len(derive))
                except WorkerFailed:
                    self._failed(worker)
                else:
                    self._give_back(worker)
            out.extend(answer)
        return out

    def start(self) -> None:
        """
        Start the workers missing now (without waiting for them to be
        ready), so that the first batch does not wait for their start and
        their imports; nothing once stopped.
        """
        with self._lock:
            if self._stopped:
                return
            start = self.size - len(self._workers) - self._starting
            self._starting += max(0, start)
        self._spawn(max(0, start), load=0)

    def pids(self) -> list[int]:
        """The process ids of the workers (for tests)."""
        with self._lock:
            return [w.pid for w in self._workers]

    def stop(self) -> None:
        """Stop every idle worker now and the busy ones when their batches end; no new ones start."""
        with self._lock:
            self._stopped = True
            self._lock.notify_all()  # callers waiting for room give up now
            idle = [w for w in self._workers if not self._load[w]]
            self._workers = [w for w in self._workers if self._load[w]]
            for worker in idle:
                del self._load[worker]
        for worker in idle:
            worker.close()

    def _take(self, want: int) -> list[_Worker]:
        """Up to *want* workers with room for a batch, least busy first, each counted as sent one."""
        deadline = time.monotonic() + self.timeout
        with self._lock:
            while True:
                if self._stopped:
                    return []
                room = sorted((w for w in self._workers if self._load[w] < DEPTH), key=self._load.__getitem__)
                start = max(0, min(want - len(room), self.size - len(self._workers) - self._starting))
                left = deadline - time.monotonic()
                if len(room) + start >= want or left <= 0:
                    break
                self._lock.wait(left)
            taken = room[:want]
            for worker in taken:
                self._load[worker] += 1
            self._starting += start
        return taken + self._spawn(start, load=1)

    def _spawn(self, count: int, load: int) -> list[_Worker]:
        """Start *count* workers (counted in ``_starting``), each with *load* batches counted."""
        started: list[_Worker] = []
        preload = self.preload  # replaced, never changed: safe to read in any thread
        try:
            for _ in range(count):
                argv, env = _worker_argv(preload)
                started.append(_Worker(argv, env))
        except OSError:
            pass
        finally:
            with self._lock:
                self._starting -= count
                stopped = self._stopped and not load
                for worker in started:
                    if stopped:
                        continue  # stopped meanwhile: closed below
                    self._workers.append(worker)
                    self._load[worker] = load
                self._lock.notify_all()
        if stopped:
            for worker in started:
                worker.close()
            return []
        return started

    def _give_back(self, worker: _Worker) -> None:
        """A batch of *worker* answered (or not sent)."""
        self._release(worker, failed=False)

    def _failed(self, worker: _Worker) -> None:
        """*worker* failed a batch: killed now, its other callers fail too, replaced by the next need."""
        worker.fail()
        with contextlib.suppress(OSError):
            worker.process.kill()
        self._release(worker, failed=True)

    def _release(self, worker: _Worker, failed: bool) -> None:
        with self._lock:
            if failed and worker in self._workers:
                self.failures += 1
                self._workers.remove(worker)
            self._load[worker] -= 1
            self._lock.notify_all()
            if self._load[worker]:
                return  # other callers still hold it; the last one closes it
            if worker in self._workers and not self._stopped:
                return
            if worker in self._workers:
                self._workers.remove(worker)
            del self._load[worker]
        worker.close(kill=failed)


def _serve(stdin: Any, stdout: Any) -> None:
    """A worker's loop: a batch in, its answer out, until the input ends."""
    while True:
        head = stdin.read(_HEAD.size)
        if len(head) < _HEAD.size:
            return
        (size,) = _HEAD.unpack(head)
        path, items, derive = marshal.loads(stdin.read(size))
        try:
            answer = parse_batch(path, items, derive)
        except Exception:  # a function not found: nothing of this batch (parsed by the caller)
            answer = [None] * len(items)
        try:
            payload = marshal.dumps(answer)
        except ValueError:  # a derived value marshal does not carry: the caller derives it
            payload = marshal.dumps([None] * len(items))
        stdout.write(_HEAD.pack(len(payload)) + payload)
        stdout.flush()


def _preload(modules: Sequence[str]) -> None:
    """Import *modules* (a worker's argv), each that can be: one that cannot fails only its batches."""
    for module in modules:
        with contextlib.suppress(Exception):
            importlib.import_module(module)


if __name__ == "__main__":  # pragma: no cover - run in the worker processes
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops its workers itself
    _preload(sys.argv[1:])
    # A parse makes many small tuples and keeps none: collections of the
    # young generation are rare here (a parse makes no reference cycles).
    gc.freeze()
    gc.set_threshold(*WORKER_GC_THRESHOLD)
    _serve(sys.stdin.buffer, sys.stdout.buffer)
