"""
Small durable-file helpers shared by the disk-backed parts (queue, spool).

Every function here blocks; callers on the reactor thread run them through
their ``run_blocking`` callable.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO, TypeVar

from twisted.internet import defer

from txmail.model import MessageSource

__all__ = [
    "RunBlocking",
    "fsync_dir",
    "fsync_file",
    "link_or_copy",
    "run_inline",
    "store_source",
    "write_file_durably",
    "write_stream_durably",
]

T = TypeVar("T")

#: ``run_blocking(fn, *args)`` runs blocking work (often in a thread pool) and
#: returns a Deferred of its result.
RunBlocking = Callable[..., "defer.Deferred[Any]"]


def run_inline(fn: Callable[..., T], *args: Any) -> defer.Deferred[T]:
    """A ``run_blocking`` that runs *fn* at once in the calling thread."""
    return defer.maybeDeferred(fn, *args)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (new names, renames) to stable storage."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: str, data: bytes, *, sync_dir: bool = True) -> None:
    """
    Replace *path* with *data* atomically: write a temporary file beside it,
    fsync it, rename it over *path*, and (unless *sync_dir* is false) fsync
    the directory so the rename itself is durable.
    """
    # One temporary name per process and thread: two threads replacing one
    # file must not write into each other's temporary file.
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(path) or ".")


def fsync_file(path: str) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_or_copy(src: str, dst: str, *, src_fsynced: bool) -> None:
    """
    Make *dst* a durable copy of *src*: a hard link where possible (the data
    is shared; only the directory entry is new; the file is fsynced unless
    *src_fsynced* says it was already), else a byte copy that is fsynced.
    The caller fsyncs *dst*'s directory.
    """
    try:
        os.link(src, dst)
    except OSError:
        pass
    else:
        if not src_fsynced:
            try:
                fsync_file(dst)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(dst)
                raise
        return
    with open(src, "rb") as fin:
        write_stream_durably(fin, dst)


def write_stream_durably(source: BinaryIO, dst: str) -> int:
    """
    Make *dst* a durable copy of what *source* (a binary file object) reads
    from its position to its end: written in 1 MiB pieces to ``dst.tmp``,
    fsynced, renamed.  The caller fsyncs *dst*'s directory.  Returns the
    octets written.
    """
    tmp = f"{dst}.tmp"
    size = 0
    try:
        with open(tmp, "wb") as fout:
            while chunk := source.read(1 << 20):
                fout.write(chunk)
                size += len(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return size


def store_source(message: MessageSource, dst: str) -> None:
    """
    Make *dst* a durable copy of the :class:`txmail.model.MessageSource`
    *message*: :func:`link_or_copy` of its local file when it has one,
    else its octets streamed through :meth:`~txmail.model.MessageSource.open`.
    The caller fsyncs *dst*'s directory.
    """
    if message.local_path is not None:
        link_or_copy(message.local_path, dst, src_fsynced=message.fsynced)
        return
    with message.open() as f:
        write_stream_durably(f, dst)
