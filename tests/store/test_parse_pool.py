"""
The Maildir store's parse worker processes (:mod:`txmail.store._parse_pool`):
their records are those of the inline parse on generated and hostile
messages (bare-LF files too); a worker that dies or hangs loses no message
and is replaced; the store with workers gives the metadata of the store
without, and stops them.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import random
import shutil
import signal
import struct
import tempfile
import termios
import threading
import time
from typing import Any

from twisted.application.service import MultiService
from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests.test_mime import FRAGMENTS, _workload_messages
from txmail import mime
from txmail.config import ConfigError, Settings, load_config
from txmail.errors import NoSuchMessage
from txmail.imap.structures import record_of, record_of_metadata, structures_of
from txmail.model import MessageMetadata
from txmail.service import make_store_provider
from txmail.store import _maildir_io as io
from txmail.store import _parse_pool
from txmail.store._crlf import to_crlf
from txmail.store._parse_pool import ParsePool
from txmail.store.maildir import MaildirProvider

from .test_columns import generated_messages

USER = "alice@example.test"


def hostile_messages(count: int, seed: int = 5) -> list[bytes]:
    """MIME-like fragments in random orders, and a few odd shapes (empty, no body, NULs, deep nesting)."""
    rng = random.Random(seed)
    out = [
        b"",
        b"Subject: no body",
        b"\r\n\r\n",
        b"\x00\xff" * 300,
        b"From: " + b"a" * 20_000 + b"\r\n\r\nx",
        b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(60)),
    ]
    while len(out) < count:
        pieces = [
            rng.choice(FRAGMENTS) if rng.random() < 0.8 else rng.randbytes(rng.randrange(20))
            for _ in range(rng.randrange(60))
        ]
        out.append(b"".join(pieces))
    return out


def corpus() -> list[bytes]:
    """Generated, benchmark-shaped and hostile messages (every fourth of the generated ones with bare LFs)."""
    generated = generated_messages(60) + _workload_messages()[:60]
    bare = [m.replace(b"\r\n", b"\n") for m in generated[::4]]
    return generated + bare + hostile_messages(80)


def values(md: MessageMetadata) -> tuple[Any, ...]:
    """Everything a message's metadata tells, and the IMAP structures rendered from it."""
    return (md.header_size, tuple(md.headers), md.envelope, md.body_structure, md.lines, structures_of(md))


def write_files(root: str, messages: list[bytes]) -> list[tuple[str, str, bool]]:
    """The messages as files of ``root/new`` (fixed times); a file holding bare LFs is to be converted."""
    os.makedirs(os.path.join(root, "new"), exist_ok=True)
    items = []
    for i, data in enumerate(messages):
        name = f"{1_700_000_000 + i}.M{i}P1Q{i}.test,S={len(data)}"
        with open(os.path.join(root, "new", name), "wb") as f:
            f.write(data)
        os.utime(os.path.join(root, "new", name), (1_700_000_000 + i, 1_700_000_000 + i))
        items.append(("new", name, to_crlf(data) != data))
    return items


class _Tree:
    def tree(self) -> str:
        root = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, root, True)  # type: ignore[attr-defined]
        return root

    def pool(self, size: int = 2, preload: tuple[str, ...] = ()) -> ParsePool:
        pool = ParsePool(size, preload=preload)
        self.addCleanup(pool.stop)  # type: ignore[attr-defined]
        return pool

    def probe(self) -> str:
        """
        The name of a function the workers can run, telling whether IMAP's
        rendering was imported before it (a module of its own, on the
        workers' path from now on).
        """
        where = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, where, True)  # type: ignore[attr-defined]
        with open(os.path.join(where, "txmail_probe.py"), "w") as f:
            f.write(
                "import sys\n\ndef imap_loaded(md):\n    return 'txmail.imap.structures' in sys.modules\n"
            )
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (where, path) if p)
        self.addCleanup(  # type: ignore[attr-defined]
            lambda: os.environ.pop("PYTHONPATH") if path is None else os.environ.update(PYTHONPATH=path)
        )
        return "txmail_probe:imap_loaded"


def _counting(fn: Any, seen: list[Any]) -> Any:
    """*fn*, noting the first argument of each call in *seen*."""

    def counted(source: Any, *args: Any) -> Any:
        seen.append(source)
        return fn(source, *args)

    return counted


def _readable(fd: int) -> int:
    """The octets waiting in the pipe *fd*."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]  # type: ignore[no-any-return]


def _argv_tail(pid: int) -> list[bytes]:
    """The arguments of worker *pid* after its module's name, once it runs it (a fork execs a moment later)."""
    deadline = time.monotonic() + 30
    while True:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")[:-1]
        if b"txmail.store._parse_pool" in argv or time.monotonic() > deadline:
            return argv[argv.index(b"txmail.store._parse_pool") + 1 :]
        time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class ParsePoolTests(_Tree, SynchronousTestCase):
    def setUp(self) -> None:
        self.root = self.tree()
        self.messages = corpus()
        self.items = write_files(self.root, self.messages)

    def check(
        self, answers: list[bytes | None], items: list[tuple[str, str, bool]], *, whole: bool = True
    ) -> None:
        """Every answer decodes to what the inline parse of its file (CRLF line ends) gives."""
        self.assertEqual(len(answers), len(items))
        if whole:
            self.assertNotIn(None, answers)
        for answer, (sub, name, convert) in zip(answers, items, strict=True):
            if answer is None:
                continue
            with open(os.path.join(self.root, sub, name), "rb") as f:
                data = f.read()
            inline = mime.parse_metadata(to_crlf(data) if convert else data)
            md, encoded = io._parse_file(self.root, sub, name, convert, 0, None)
            self.assertEqual(values(mime.decode_metadata(answer)), values(inline), name)
            self.assertEqual(values(mime.decode_metadata(answer)), values(md), name)
            self.assertEqual(values(mime.decode_metadata(answer)), values(mime.decode_metadata(encoded)))

    def test_same_as_inline(self) -> None:
        """The workers' records decode to the inline parse's metadata, bare-LF files converted."""
        self.assertTrue(any(convert for _, _, convert in self.items))
        pool = self.pool()
        answers = pool.parse(self.root, self.items)
        self.check(answers, self.items)
        self.assertEqual(len(pool.pids()), 2)  # the batch was shared
        self.assertEqual(pool.parse(self.root, []), [])

    def test_wrong_answer_noticed(self) -> None:
        """The comparison above fails on a record of another message (it would catch a wrong worker)."""
        answers = self.pool().parse(self.root, self.items)
        answers[0], answers[1] = answers[1], answers[0]
        with self.assertRaises(self.failureException):
            self.check(answers, self.items)

    def test_missing_file(self) -> None:
        """A file gone is ``None`` (parsed inline by the caller, which finds it renamed or reports it gone)."""
        items = [*self.items[:3], ("new", "nothing-here,S=1", False)]
        answers = self.pool(1).parse(self.root, items)
        self.assertIsNone(answers[3])
        self.check(answers[:3], items[:3])

    def test_inline_parse_follows_a_rename(self) -> None:
        """
        The inline parse of a file whose flags changed since its name was
        taken parses it at its new name, whole or header first; one gone
        is NoSuchMessage.
        """
        sub, name, convert = self.items[0]
        expected = values(mime.parse_metadata(to_crlf(self.messages[0]) if convert else self.messages[0]))
        os.makedirs(os.path.join(self.root, "cur"))
        os.rename(os.path.join(self.root, sub, name), os.path.join(self.root, "cur", name + ":2,S"))
        md, encoded = io._parse_file(self.root, sub, name, convert, 0, None)
        self.assertEqual(values(md), expected)
        self.assertEqual(values(mime.decode_metadata(encoded)), expected)
        self.patch(io, "HEADER_ONLY_SIZE", 10)  # too big for the header alone: parsed whole
        md, _ = io._parse_file(self.root, sub, name, convert, 0, lambda *a: self.fail("header only"))
        self.assertEqual(values(md), expected)
        os.unlink(os.path.join(self.root, "cur", name + ":2,S"))
        for complete in (None, lambda *a: self.fail("header only")):
            with self.assertRaises(NoSuchMessage):
                io._parse_file(self.root, sub, name, convert, 0, complete)

    def test_killed_worker(self) -> None:
        """A killed worker's messages are ``None`` (never wrong); the next batch starts a new worker."""
        pool = self.pool()
        self.check(pool.parse(self.root, self.items), self.items)
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGKILL)
        answers = pool.parse(self.root, self.items)
        self.check(answers, self.items, whole=False)
        self.assertIn(None, answers)
        self.assertEqual(pool.failures, 1)
        self.check(pool.parse(self.root, self.items), self.items)
        self.assertNotIn(victim, pool.pids())
        self.assertEqual(len(pool.pids()), 2)

    def test_hung_worker(self) -> None:
        """A worker that does not answer in time is killed, its messages ``None``; the others are answered."""
        pool = self.pool()
        pool.parse(self.root, self.items)  # started (in less than the default time)
        pool.timeout = 1.0
        victim = pool.pids()[0]
        os.kill(victim, signal.SIGSTOP)
        started = time.monotonic()
        answers = pool.parse(self.root, self.items)
        self.assertLess(time.monotonic() - started, 20)
        self.check(answers, self.items, whole=False)
        self.assertEqual(answers.count(None), len(self.items) // 2)
        self.assertEqual(pool.failures, 1)
        self.assertFalse(_alive(victim))
        # The replacement worker starts a new interpreter: on a loaded machine that alone can
        # take longer than the 1 s used above, so it is given the default time again.
        pool.timeout = _parse_pool.DEFAULT_TIMEOUT
        self.check(pool.parse(self.root, self.items), self.items)

    def test_large_batch_waited_for(self) -> None:
        """A batch of more octets is given more time: OCTETS_A_SECOND of them a second."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:40])  # started (in less than the default time)
        pool.timeout = 0.1
        os.kill(pool.pids()[0], signal.SIGSTOP)
        started = time.monotonic()
        self.assertEqual(pool.parse(self.root, self.items[:40], _parse_pool.OCTETS_A_SECOND), [None] * 40)
        self.assertGreaterEqual(time.monotonic() - started, 1.0)

    def test_nonsense_answer(self) -> None:
        """A worker answering something else than its batch's list is dropped."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:40])
        (worker,) = pool._workers
        worker.process.stdin.close()  # type: ignore[union-attr]
        worker.process.wait()
        self.assertEqual(pool.parse(self.root, self.items[:40]), [None] * 40)
        self.assertEqual(pool.failures, 1)

    def test_stop(self) -> None:
        """Stopped, the workers end and a parse gets nothing (its caller parses inline)."""
        pool = self.pool()
        pool.parse(self.root, self.items)
        pids = pool.pids()
        pool.stop()
        self.assertEqual([p for p in pids if _alive(p)], [])
        self.assertEqual(pool.parse(self.root, self.items[:5]), [None] * 5)

    def test_bad_size(self) -> None:
        with self.assertRaises(ValueError):
            ParsePool(0)

    def test_deriving(self) -> None:
        """With functions named, each answer is the record and what each function gives of the metadata."""
        names = (io._COLUMNS_OF, _parse_pool.function_name(record_of_metadata))
        self.assertEqual(names[1], "txmail.imap.structures:record_of_metadata")
        answers = self.pool().parse_deriving(self.root, self.items, names)  # type: ignore[arg-type]
        self.assertNotIn(None, answers)
        self.check([a[0] for a in answers], self.items)
        for (_, cols, record), (sub, name, convert) in zip(answers, self.items, strict=True):
            md, _ = io._parse_file(self.root, sub, name, convert, 0, None)
            self.assertEqual(cols, io.header_columns_of(md), name)
            self.assertEqual(record, record_of(structures_of(md)), name)

    def test_deriving_fails_whole_batch(self) -> None:
        """A function a worker cannot find, or whose answers marshal cannot carry: nothing (parsed inline), no worker lost."""
        pool = self.pool(1)
        for names in (("txmail.mime:no_such_function",), ("builtins:type",)):
            self.assertEqual(pool.parse_deriving(self.root, self.items[:5], names), [None] * 5)
        self.assertEqual(pool.failures, 0)
        self.check(pool.parse(self.root, self.items[:5]), self.items[:5])

    def test_function_names(self) -> None:
        """Only a function found again by its module and name is named (a worker runs it by that name)."""
        self.assertEqual(_parse_pool.function_name(mime.parse_metadata), "txmail.mime:parse_metadata")
        self.assertEqual(_parse_pool.named_function("txmail.mime:parse_metadata"), mime.parse_metadata)
        self.assertIsNone(_parse_pool.function_name(lambda md: md))

        def inner(md: Any) -> Any:
            return md

        self.assertIsNone(_parse_pool.function_name(inner))
        self.assertIsNone(_parse_pool.function_name(self.check))  # a bound method
        for bad in ("txmail.mime", "txmail.mime:nothing", "no.such.module:f", "txmail.mime:CHUNK_SIZE_NOT"):
            with self.assertRaises((ValueError, ImportError, AttributeError)):
                _parse_pool.named_function(bad)

    def test_busy_workers_waited_for(self) -> None:
        """A call finding the workers busy queues its batch behind (no inline parse), and no third worker starts."""
        pool = self.pool(2)
        pool.parse(self.root, self.items)  # started
        held = pool._take(2)  # another caller's batches
        self.assertEqual(sorted(pool._load.values()), [1, 1])
        self.check(pool.parse(self.root, self.items), self.items)
        self.assertEqual(sorted(pool._load.values()), [1, 1])
        for worker in held:
            pool._give_back(worker)
        self.assertEqual(len(pool.pids()), 2)
        self.assertEqual(pool.failures, 0)

    def test_batches_queued_answered_in_turn(self) -> None:
        """Batches of several callers queued on one worker: each caller gets its own batch's answers."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:5])  # started
        parts = [self.items[i::3] for i in range(3)]
        answers: dict[int, Any] = {}
        threads = [
            threading.Thread(target=lambda k=k: answers.__setitem__(k, pool.parse(self.root, parts[k])))
            for k in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for k in range(3):
            self.check(answers[k], parts[k])
        self.assertEqual(len(pool.pids()), 1)
        self.assertEqual(pool.failures, 0)
        self.assertEqual(pool._load, {pool._workers[0]: 0})

    def test_answers_waiting_in_the_pipe(self) -> None:
        """Two answers waiting in a worker's pipe at once: each caller reads exactly its own frame."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:5])  # started
        (worker,) = set(pool._take(1) + pool._take(1))
        shares = [self.items[:40], self.items[40:90]]
        turns = [worker.send(self.root, share) for share in shares]
        expected = sum(4 + len(marshal.dumps(_parse_pool.parse_batch(self.root, share))) for share in shares)
        deadline = time.monotonic() + 30
        while _readable(worker.process.stdout.fileno()) < expected and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.01)
        self.assertEqual(_readable(worker.process.stdout.fileno()), expected)  # type: ignore[union-attr]
        for turn, share in zip(turns, shares, strict=True):
            self.check(worker.receive(turn, len(share), 5.0), share)
            pool._give_back(worker)
        self.assertEqual(pool.failures, 0)

    def test_killed_with_batches_queued(self) -> None:
        """A worker killed with two batches queued: both callers get nothing (parsed inline), one failure."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:5])  # started
        (worker,) = set(pool._take(1) + pool._take(1))  # two holders
        first, second = worker.send(self.root, self.items), worker.send(self.root, self.items[:7])
        os.kill(worker.pid, signal.SIGKILL)
        for turn, count in ((first, len(self.items)), (second, 7)):
            with self.assertRaises(_parse_pool.WorkerFailed):
                worker.receive(turn, count, 5.0)
            pool._failed(worker)
        self.assertEqual(pool.failures, 1)
        self.assertEqual((pool._workers, pool._load), ([], {}))
        self.check(pool.parse(self.root, self.items), self.items)

    def test_preload(self) -> None:
        """A worker imports the modules it is given before its first batch, and only those."""
        probe = self.probe()
        without = self.pool(1).parse_deriving(self.root, self.items[:5], [probe])
        self.assertEqual([a[1] for a in without], [False] * 5)
        pool = self.pool(1, preload=("txmail.imap.structures:record_of_metadata", "txmail.no_such_module"))
        self.assertEqual(pool.preload, {"txmail.imap.structures", "txmail.no_such_module"})
        answers = pool.parse_deriving(self.root, self.items[:5], [probe])
        self.assertEqual([a[1] for a in answers], [True] * 5)  # a module not found is left out
        self.check([a[0] for a in answers], self.items[:5])
        self.assertEqual(pool.failures, 0)

    def test_derived_modules_preloaded(self) -> None:
        """The module of a function asked for is imported by the workers started after."""
        self.patch(_parse_pool, "MIN_SHARE", 1000)  # one worker for a batch
        pool = self.pool(2)
        name = _parse_pool.function_name(record_of_metadata)
        assert name is not None
        pool.parse(self.root, self.items[:5])
        [first] = pool.pids()
        self.assertEqual(pool.preload, set())
        pool.parse_deriving(self.root, self.items[:5], [name])
        self.assertEqual(pool.pids(), [first])
        self.assertEqual(pool.preload, {"txmail.imap.structures"})
        pool.start()  # the second worker
        [second] = set(pool.pids()) - {first}
        self.assertEqual(_argv_tail(second), [b"txmail.imap.structures"])
        self.assertEqual(_argv_tail(first), [])

    def test_start(self) -> None:
        """start() starts the missing workers without a batch; the batches go to them; none once stopped."""
        pool = self.pool(2)
        pool.start()
        pids = pool.pids()
        self.assertEqual(len(pids), 2)
        self.assertEqual(sorted(pool._load.values()), [0, 0])
        pool.start()
        self.assertEqual(pool.pids(), pids)
        self.check(pool.parse(self.root, self.items), self.items)
        self.assertEqual(pool.pids(), pids)
        pool.stop()
        self.assertEqual(pool.pids(), [])
        for pid in pids:
            self.assertFalse(_alive(pid))
        pool.start()
        self.assertEqual(pool.pids(), [])

    def test_stop_ends_the_wait(self) -> None:
        """A caller waiting for room when the pool stops gets nothing at once, not after the timeout."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:5])
        held = pool._take(1) + pool._take(1)
        got: list[Any] = []
        thread = threading.Thread(target=lambda: got.append(pool.parse(self.root, self.items[:5])))
        thread.start()
        time.sleep(0.2)  # waiting for room
        started = time.monotonic()
        pool.stop()
        thread.join(10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual(got, [[None] * 5])
        for worker in held:
            pool._give_back(worker)
        self.assertEqual(pool.pids(), [])

    def test_busy_workers_not_waited_for_past_timeout(self) -> None:
        """Workers full (DEPTH batches each) past the timeout: the call gets nothing and its caller parses inline."""
        pool = self.pool(1)
        pool.parse(self.root, self.items[:5])
        pool.timeout = 0.2
        held = [w for _ in range(_parse_pool.DEPTH) for w in pool._take(1)]  # by other callers
        self.assertEqual(len(set(held)), 1)
        started = time.monotonic()
        self.assertEqual(pool.parse(self.root, self.items[:5]), [None] * 5)
        self.assertGreaterEqual(time.monotonic() - started, 0.2)
        for worker in held:
            pool._give_back(worker)
        self.check(pool.parse(self.root, self.items[:5]), self.items[:5])

    def test_read_as_file(self) -> None:
        """Files larger than WHOLE_READ are parsed as they are read: the same records as those read whole."""
        whole = _parse_pool.parse_batch(self.root, self.items)
        self.patch(_parse_pool, "WHOLE_READ", 64)
        self.patch(mime, "parse_metadata", _counting(mime.parse_metadata, counted := []))
        self.assertEqual(_parse_pool.parse_batch(self.root, self.items), whole)
        self.assertTrue(any(not isinstance(source, bytes) for source in counted))
        self.check(whole, self.items)

    def test_worker_batch(self) -> None:
        """What a worker answers for a batch, computed here: a message that fails is ``None``."""
        answers = _parse_pool.parse_batch(self.root, [self.items[0], ("cur", "gone", False)])
        self.assertIsNone(answers[1])
        self.check(answers[:1], self.items[:1])

    def test_not_regular_files(self) -> None:
        """
        The workers answer ``None`` for an entry that is not a regular file
        (a link to a file outside the Maildir, a dangling one, a link to
        /dev/zero, a FIFO, a directory), parse the messages beside them,
        and are not held up: a FIFO opened for reading would wait for a
        writer for ever (here the pool's timeout would end the wait, the
        worker killed).
        """
        outside = os.path.join(self.tree(), "outside")
        with open(outside, "wb") as f:
            f.write(b"Subject: outside the Maildir\r\n\r\nTOP SECRET\r\n")
        new = os.path.join(self.root, "new")
        os.symlink(outside, os.path.join(new, "1.link"))
        os.symlink(os.path.join(new, "nothing-here"), os.path.join(new, "2.dangling"))
        os.symlink("/dev/zero", os.path.join(new, "3.zero"))
        os.mkfifo(os.path.join(new, "4.fifo"))
        self.addCleanup(_release_fifo, os.path.join(new, "4.fifo"))
        os.mkdir(os.path.join(new, "5.dir"))
        bad = [("new", name, False) for name in ("1.link", "2.dangling", "3.zero", "4.fifo", "5.dir")]
        items = [*self.items[:2], *bad, *self.items[2:4]]
        pool = self.pool(1)
        pool.timeout = 10.0  # a worker blocked on the FIFO is killed after it (and the answer fails)
        answers = pool.parse(self.root, items)
        self.assertEqual(answers[2:7], [None] * 5)
        self.check(answers[:2] + answers[7:], items[:2] + items[7:])
        self.assertEqual(pool.failures, 0)


def _release_fifo(path: str) -> None:
    """Let a reader blocked opening the FIFO *path* go (an open for writing, closed: it reads EOF)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return
    os.close(fd)


class MaildirWorkersTests(_Tree, SynchronousTestCase):
    """The store with workers against the store without, each on its own copy of the same files."""

    def setUp(self) -> None:
        self.patch(io, "POOL_LEAST", 8)
        self.messages = corpus()

    def mailbox(self, workers: int) -> tuple[MaildirProvider, Any]:
        root = self.tree()
        inbox = os.path.join(root, "example.test", "alice")
        write_files(inbox, self.messages)
        provider = MaildirProvider(
            root, hostname="test.host", clock=task.Clock(), watch="off", parse_workers=workers
        )
        self.addCleanup(provider.stop)
        store = self.successResultOf(provider.store_for(USER))
        box = self.successResultOf(store.get_mailbox("INBOX"))
        box._structures_at = time.monotonic()  # structures asked lately: new messages parsed whole
        return provider, box

    def metadata(self, box: Any) -> dict[int, tuple[Any, ...]]:
        uids = [i.uid for i in self.successResultOf(box.list_messages())]
        found = self.successResultOf(box.get_metadata(uids))
        self.assertEqual(len(found), len(self.messages))
        return {uid: values(md) for uid, md in found.items()}

    def test_same_metadata(self) -> None:
        """The same metadata by UID, from the parse and then from the cache records written."""
        _, inline = self.mailbox(0)
        provider, pooled = self.mailbox(2)
        expected = self.metadata(inline)
        self.assertEqual(self.metadata(pooled), expected)
        self.assertEqual(len(provider._pool().pids()), 2)  # type: ignore[union-attr]
        self.assertIsNone(self.mailbox(0)[0]._pool())
        # Read back from the records the workers' answers were cached as.
        provider.stop()
        store = self.successResultOf(
            MaildirProvider(
                os.path.dirname(os.path.dirname(pooled.path)),
                hostname="test.host",
                clock=task.Clock(),
                watch="off",
            ).store_for(USER)
        )
        again = self.successResultOf(store.get_mailbox("INBOX"))
        self.patch(_parse_pool.ParsePool, "parse", lambda *a: self.fail("parsed again"))
        self.assertEqual(self.metadata(again), expected)

    def test_killed_workers(self) -> None:
        """Workers killed between two requests: the metadata is still whole and right, and new ones start."""
        _, inline = self.mailbox(0)
        expected = self.metadata(inline)
        provider, pooled = self.mailbox(2)
        pool = provider._pool()
        assert pool is not None
        pool.parse(pooled.path, [("new", "none", False)] * 80)  # the workers started
        pids = pool.pids()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(self.metadata(pooled), expected)
        self.assertEqual(pool.failures, 2)
        self.assertEqual(provider._pool(), pool)

    def test_small_requests_inline(self) -> None:
        """Fewer than POOL_LEAST messages to parse: no worker."""
        self.patch(io, "POOL_LEAST", 10_000)
        provider, pooled = self.mailbox(2)
        self.metadata(pooled)
        self.assertEqual(provider._pool().pids(), [])  # type: ignore[union-attr]

    def test_stop(self) -> None:
        """stop() ends the workers; a later need starts new ones."""
        provider, pooled = self.mailbox(2)
        self.metadata(pooled)
        pids = provider._pool().pids()  # type: ignore[union-attr]
        provider.stop()
        self.assertEqual([p for p in pids if _alive(p)], [])
        self.assertEqual(provider._pool().pids(), [])  # type: ignore[union-attr]

    def test_bad_count(self) -> None:
        with self.assertRaises(ValueError):
            MaildirProvider(self.tree(), parse_workers=-1)

    def records(self, box: Any, derive: Any = record_of_metadata) -> dict[int, Any]:
        uids = [i.uid for i in self.successResultOf(box.list_messages())]
        found = self.successResultOf(box.derive_records(uids, derive))
        self.assertEqual(sorted(found), uids)
        return found

    def test_derive_records(self) -> None:
        """derive_records: the workers' records are those rendered here; cached, then read back without a parse."""
        _, inline = self.mailbox(0)
        expected = {uid: record_of(v[-1]) for uid, v in self.metadata(inline).items()}
        provider, pooled = self.mailbox(2)
        self.patch(io, "_parse_file", lambda *a: self.fail("parsed in the server process"))
        self.assertEqual(self.records(pooled), expected)
        self.assertEqual(len(provider._pool().pids()), 2)  # type: ignore[union-attr]
        uids = sorted(expected)
        # The header columns appended with the metadata are those of the inline parse.
        self.assertEqual(
            self.successResultOf(pooled.header_columns(uids)),
            self.successResultOf(inline.header_columns(uids)),
        )
        # The metadata cached: read back, none parsed again.
        self.patch(_parse_pool.ParsePool, "parse_deriving", lambda *a: self.fail("parsed again"))
        self.assertEqual(self.records(pooled), expected)
        self.assertEqual({uid: record_of(v[-1]) for uid, v in self.metadata(pooled).items()}, expected)

    def test_derive_records_inline(self) -> None:
        """Without workers, or with a function the workers cannot name, the records are made here."""
        _, inline = self.mailbox(0)
        expected = {uid: record_of(v[-1]) for uid, v in self.metadata(inline).items()}
        _, fresh = self.mailbox(0)
        self.assertEqual(self.records(fresh), expected)
        _, pooled = self.mailbox(2)
        self.patch(_parse_pool.ParsePool, "parse_deriving", lambda *a: self.fail("asked the workers"))
        self.assertEqual(self.records(pooled, lambda md: record_of_metadata(md)), expected)

    def test_workers_started_by_a_listing(self) -> None:
        """A listing taking in at least POOL_LEAST dropped-in files starts the workers, before any parse."""
        self.patch(io, "POOL_LEAST", len(self.messages))
        provider, _ = self.mailbox(2)
        self.assertEqual(len(provider._pool().pids()), 2)  # type: ignore[union-attr]
        self.patch(io, "POOL_LEAST", len(self.messages) + 1)
        provider, _ = self.mailbox(2)
        self.assertIsNone(provider._parse_pool)
        provider, _ = self.mailbox(0)  # no workers: none started
        self.assertIsNone(provider._pool())

    def test_derive_records_after_header_only(self) -> None:
        """Messages whose header alone was parsed and cached are parsed whole for their records."""
        _, inline = self.mailbox(0)
        expected = {uid: record_of(v[-1]) for uid, v in self.metadata(inline).items()}
        _, pooled = self.mailbox(2)
        pooled._structures_at = 0.0  # structures not asked lately: header-only records for small messages
        uids = sorted(expected)
        self.successResultOf(pooled.get_metadata(uids))
        self.assertEqual(self.records(pooled), expected)


class SettingsTests(SynchronousTestCase):
    def test_parse_workers(self) -> None:
        """``[store] parse_workers``: the CPUs by default, 0 allowed, anything else but an integer refused."""
        self.assertEqual(load_config(None).store_parse_workers, os.cpu_count() or 1)
        self.assertEqual(Settings.validated(store_parse_workers=0).store_parse_workers, 0)
        self.assertEqual(Settings.validated(store_parse_workers=3).store_parse_workers, 3)
        for bad in (-1, True, "2", 1.5):
            with self.assertRaises(ConfigError):
                Settings.validated(store_parse_workers=bad)

    def test_server_provider(self) -> None:
        """The server's Maildir provider has the workers and stops them with it; the admin command's has none."""
        settings = Settings.validated(data_dir=os.path.abspath(self.mktemp()), store_parse_workers=3)
        self.assertEqual(make_store_provider(settings).parse_workers, 0)  # type: ignore[attr-defined]
        server = MultiService()
        provider = make_store_provider(settings, server=server)
        assert isinstance(provider, MaildirProvider)
        self.assertEqual(provider.parse_workers, 3)
        pool = provider._pool()
        assert pool is not None
        stopped: list[bool] = []
        self.patch(pool, "stop", lambda: stopped.append(True))
        server.startService()
        self.assertEqual(stopped, [])
        server.stopService()
        self.assertEqual(stopped, [True])
        self.assertIsNone(provider._parse_pool)

    def test_server_provider_preloads_imap(self) -> None:
        """With an IMAP listener, the server's workers import IMAP's rendering as they start; without, not."""
        from txmail import service

        self.assertEqual(_parse_pool.function_name(record_of_metadata), service._IMAP_STRUCTURES)
        data = os.path.abspath(self.mktemp())
        with_imap = Settings.validated(data_dir=data, imap=["tcp:0"])
        provider = make_store_provider(with_imap, server=MultiService())
        assert isinstance(provider, MaildirProvider)
        self.assertEqual(provider.parse_preload, (service._IMAP_STRUCTURES,))
        pool = provider._pool()
        assert pool is not None
        self.assertEqual(pool.preload, {"txmail.imap.structures", "txmail.store._maildir_io"})
        without = Settings.validated(data_dir=data, imap=[])
        provider = make_store_provider(without, server=MultiService())
        self.assertEqual(provider.parse_preload, ())  # type: ignore[attr-defined]
