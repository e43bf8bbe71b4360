"""
Small durable-file helpers shared by the disk-backed parts (queue, spool).

Every function here blocks; callers on the reactor thread run them through
their ``run_blocking`` callable.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer

__all__ = ["RunBlocking", "fsync_dir", "fsync_file", "link_or_copy", "run_inline", "write_file_durably"]

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
    tmp = f"{path}.tmp{os.getpid()}"
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
    tmp = f"{dst}.tmp"
    with open(src, "rb") as fin, open(tmp, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)
