"""
Tests for the local spool, txmail.delivery.spool: the files incoming
messages are written to, what finishing one gives (a MessageSource), when
it is fsynced, discarding, the reserve of files made ahead, and cleaning
the directory at start-up.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmail import _fs
from txmail.delivery import spool as spool_module
from txmail.delivery.spool import KEEP_IN_MEMORY, LocalSpool, SpooledFile, clean_spool
from txmail.interfaces import ISpool, ISpooledMessage
from txmail.model import MessageSource


class Recorder:
    """A ``run_blocking`` that runs inline and remembers what it ran."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def __call__(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        self.calls.append(fn)
        return defer.maybeDeferred(fn, *args)


class BrokenFile:
    """A file whose writes fail (a full disk)."""

    closed = False

    def write(self, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        self.closed = True


class LocalSpoolTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.run = Recorder()
        self.spool = LocalSpool(self.dir, self.run, reserve=4)
        self.addCleanup(self.spool.close)
        self.fsyncs: list[int] = []
        real = os.fsync

        def counting_fsync(fd: int) -> None:
            self.fsyncs.append(fd)
            real(fd)

        self.patch(os, "fsync", counting_fsync)

    def files(self) -> list[str]:
        """The spool's files, less the empty ones made ahead of need."""
        reserved = self.spool.reserved()
        return sorted(n for n in os.listdir(self.dir) if os.path.join(self.dir, n) not in reserved)

    def test_interfaces(self) -> None:
        """The spool and its messages provide ISpool and ISpooledMessage."""
        self.assertTrue(verifyObject(ISpool, self.spool))
        self.assertTrue(verifyObject(ISpooledMessage, self.spool.take()))

    def test_finish_gives_a_local_source(self) -> None:
        """A finished message is a MessageSource of its file: path, size, data in memory, not fsynced."""
        message = self.spool.take()
        message.write(b"Subject: a\r\n")
        message.write(b"\r\nbody\r\n")
        source = self.successResultOf(message.finish())
        self.assertIsInstance(source, MessageSource)
        data = b"Subject: a\r\n\r\nbody\r\n"
        self.assertEqual(source.size, len(data))
        self.assertEqual(message.size, len(data))
        self.assertEqual(source.data, data)
        self.assertFalse(source.fsynced)
        self.assertEqual(os.path.dirname(source.local_path or ""), self.dir)
        with open(source.local_path or "", "rb") as f:
            self.assertEqual(f.read(), data)
        with source.open() as f:
            self.assertEqual(f.read(), data)
        self.assertEqual(self.files(), [os.path.basename(source.local_path or "")])

    def test_no_fsync_unless_asked(self) -> None:
        """Without fsync=True nothing is synced (the destinations sync what they keep)."""
        message = self.spool.take()
        message.write(b"x\r\n")
        self.successResultOf(message.finish(False))
        self.assertEqual(self.fsyncs, [])
        self.assertNotIn(_fs.fsync_file, self.run.calls)

    def test_fsync_when_asked(self) -> None:
        """With fsync=True the file is fsynced once, through run_blocking, and the source says so."""
        message = self.spool.take()
        message.write(b"x\r\n")
        source = self.successResultOf(message.finish(True))
        self.assertEqual(len(self.fsyncs), 1)
        self.assertIn(_fs.fsync_file, self.run.calls)
        self.assertTrue(source.fsynced)

    def test_fsync_failure_fails_finish(self) -> None:
        """An fsync that fails fails finish(fsync=True)."""

        def failing(fd: int) -> None:
            raise OSError(5, "I/O error")

        self.patch(os, "fsync", failing)
        message = self.spool.take()
        message.write(b"x\r\n")
        self.failureResultOf(message.finish(True), OSError)

    def test_large_message_not_in_memory(self) -> None:
        """Past KEEP_IN_MEMORY the file is the only copy: the source has no data."""
        message = self.spool.take()
        line = b"y" * 998 + b"\r\n"
        count = KEEP_IN_MEMORY // len(line) + 2
        for _ in range(count):
            message.write(line)
        source = self.successResultOf(message.finish())
        self.assertIsNone(source.data)
        self.assertEqual(source.size, count * len(line))
        self.assertEqual(source.read(), line * count)

    def test_discard_removes_the_file(self) -> None:
        """discard removes the message's file, before or after finish; again does nothing."""
        unfinished = self.spool.take()
        unfinished.write(b"half")
        finished = self.spool.take()
        finished.write(b"whole\r\n")
        source = self.successResultOf(finished.finish())
        self.assertEqual(len(self.files()), 2)
        unfinished.discard()
        finished.discard()
        finished.discard()
        self.assertEqual(self.files(), [])
        self.assertFalse(os.path.exists(source.local_path or ""))

    def test_write_failure(self) -> None:
        """A failing write raises, marks the message failed, later writes are ignored, finish fails."""
        path = os.path.join(self.dir, "broken.msg")
        open(path, "wb").close()
        message = SpooledFile(path, BrokenFile())  # type: ignore[arg-type]
        self.assertRaises(OSError, message.write, b"x")
        self.assertTrue(message.failed)
        message.write(b"ignored")
        self.assertEqual(message.size, 0)
        self.failureResultOf(message.finish(), OSError)
        message.discard()
        self.assertFalse(os.path.exists(path))

    def test_reserve_made_ahead(self) -> None:
        """Taking a file makes a reserve through run_blocking; later takes use it; close removes it."""
        first = self.spool.take()
        self.assertEqual(self.run.calls, [spool_module._create_spool_files])
        reserved = self.spool.reserved()
        self.assertEqual(len(reserved), 4)
        second = self.spool.take()
        self.assertIn(second.path, reserved)
        self.assertEqual(len(self.run.calls), 1)  # still half full: no refill yet
        first.discard()
        second.discard()
        self.spool.close()
        self.assertEqual(os.listdir(self.dir), [])
        third = self.spool.take()  # still usable after close
        third.write(b"z")
        self.assertEqual(self.successResultOf(third.finish()).read(), b"z")
        third.discard()

    def test_take_fails_without_directory(self) -> None:
        """take raises OSError when no file can be made."""
        spool = LocalSpool(os.path.join(self.dir, "missing"), self.run)
        self.assertRaises(OSError, spool.take)

    def test_clean_spool(self) -> None:
        """clean_spool empties the directory at start-up (unacknowledged messages, old reserve)."""
        left = self.spool.take()
        left.write(b"never acknowledged")
        self.assertGreater(len(os.listdir(self.dir)), 1)
        clean_spool(self.dir)
        self.assertEqual(os.listdir(self.dir), [])
