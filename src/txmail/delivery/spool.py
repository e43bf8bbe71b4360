"""
The local spool (:class:`txmail.interfaces.ISpool`): the temporary files
that the SMTP and LMTP servers stream incoming messages into.

Implementation notes:

* One file per message in the spool directory (``smtp-*.msg``), on the
  same file system as the stores and the queue so that they can hard-link
  it (:attr:`txmail.model.MessageSource.local_path`).
* Writes are plain buffered writes on the reactor thread (a few kilobytes
  at a time into the page cache).  :meth:`SpooledFile.finish` closes the
  file (flushing the last buffered octets) and, only when asked, fsyncs it
  through ``run_blocking``; the SMTP server does not ask: every
  destination syncs what it keeps (a hard link shares the data) inside the
  thread-pool job that links it, so the client's ``250`` still means the
  message is durable in every mailbox or the queue.
* Messages up to :data:`KEEP_IN_MEMORY` octets are also kept in memory
  while they are written, so the router can parse them without reading
  the file back.
* Creating a file waits on the file system journal while other threads
  fsync (measured at about 1 ms on ext4 under delivery load), so a
  reserve of files is created ahead of need in the thread pool and the
  reactor thread just takes one (:meth:`LocalSpool.take`).
* At start-up the directory is emptied (:func:`clean_spool`): files there
  belong to messages that were never acknowledged, or were made ahead.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Any

from twisted.internet import defer
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail._fs import RunBlocking, fsync_file, run_inline
from txmail.interfaces import ISpool, ISpooledMessage
from txmail.model import MessageSource

__all__ = ["KEEP_IN_MEMORY", "LocalSpool", "SpooledFile", "clean_spool"]

#: Messages up to this size are also kept in memory while they are spooled,
#: so the router can parse them without reading the file back.
KEEP_IN_MEMORY = 256 * 1024


def clean_spool(directory: str) -> None:
    """
    Remove everything in the spool directory: at start-up, files there belong
    to messages that were never acknowledged (or were files made ahead).
    """
    for name in os.listdir(directory):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, name))


def _create_spool_files(directory: str, count: int) -> list[tuple[str, IO[bytes]]]:
    out: list[tuple[str, IO[bytes]]] = []
    for _ in range(count):
        fd, path = tempfile.mkstemp(dir=directory, prefix="smtp-", suffix=".msg")
        out.append((path, os.fdopen(fd, "wb")))
    return out


@implementer(ISpooledMessage)
class SpooledFile:
    """One message being written into a file of a :class:`LocalSpool`."""

    def __init__(self, path: str, file: IO[bytes], run_blocking: RunBlocking = run_inline) -> None:
        self.path = path
        self.file = file
        self.size = 0
        self.failed = False
        self._run = run_blocking
        self._chunks: list[bytes] | None = []

    def write(self, data: bytes) -> None:
        """See :meth:`txmail.interfaces.ISpooledMessage.write`."""
        if self.failed:
            return
        try:
            self.file.write(data)
        except OSError:
            self.failed = True
            raise
        self.size += len(data)
        if self._chunks is not None:
            if self.size <= KEEP_IN_MEMORY:
                self._chunks.append(data)
            else:
                self._chunks = None  # large: the file is the only copy

    def data(self) -> bytes | None:
        """The whole content when it was small enough to keep, else ``None``."""
        if self._chunks is None:
            return None
        if len(self._chunks) > 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0] if self._chunks else b""

    def finish(self, fsync: bool = False) -> defer.Deferred[MessageSource]:
        """See :meth:`txmail.interfaces.ISpooledMessage.finish`."""
        if self.failed:
            return defer.fail(OSError(f"writing {self.path} failed"))
        try:
            self.file.close()  # flushes the last buffered octets
        except OSError:
            self.failed = True
            return defer.fail()
        source = MessageSource.from_file(self.path, self.size, fsynced=fsync, data=self.data())
        if not fsync:
            return defer.succeed(source)
        return self._run(fsync_file, self.path).addCallback(lambda _: source)

    def discard(self) -> None:
        """See :meth:`txmail.interfaces.ISpooledMessage.discard`."""
        try:
            if not self.file.closed:
                self.file.close()
        except OSError:
            pass
        with contextlib.suppress(OSError):
            os.unlink(self.path)


@implementer(ISpool)
class LocalSpool:
    """
    Hands out new empty files in the spool directory for incoming messages,
    keeping a reserve made ahead of need in the thread pool (see the module
    notes).  When none is ready, :meth:`take` creates one itself.  Files
    left over from a previous run are never handed out: the directory is
    emptied by :func:`clean_spool` at start-up.

    Args:
        directory: the spool directory (same file system as the stores and
            the queue, so they can hard-link).
        run_blocking: runs the file creation and fsync off the reactor
            thread; inline by default.
        reserve: how many files to keep made ahead.
    """

    def __init__(self, directory: str, run_blocking: RunBlocking | None = None, reserve: int = 16) -> None:
        self.directory = directory
        self._run = run_blocking if run_blocking is not None else run_inline
        self.reserve = reserve
        self._ready: list[tuple[str, IO[bytes]]] = []
        self._refilling = False

    def take(self) -> SpooledFile:
        """A new empty spooled message (raises OSError if its file cannot be made)."""
        if self._ready:
            path, f = self._ready.pop()
        else:
            ((path, f),) = _create_spool_files(self.directory, 1)
        self._refill()
        return SpooledFile(path, f, self._run)

    def _refill(self) -> None:
        if self._refilling or len(self._ready) >= self.reserve // 2:
            return
        self._refilling = True

        def made(files: list[tuple[str, IO[bytes]]]) -> None:
            self._ready.extend(files)

        def done(result: Any) -> None:
            self._refilling = False
            if isinstance(result, Failure):
                # Not fatal: take() creates files itself and logs its errors.
                result.trap(OSError)

        d = self._run(_create_spool_files, self.directory, self.reserve - len(self._ready))
        d.addCallback(made)
        d.addBoth(done)

    def reserved(self) -> set[str]:
        """The paths of the files made ahead of need, not yet handed out."""
        return {path for path, _ in self._ready}

    def close(self) -> None:
        """Remove the files made ahead of need."""
        ready, self._ready = self._ready, []
        for path, f in ready:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(path)
