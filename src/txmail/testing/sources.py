"""
Message sources for tests of stores and queues
(:class:`txmail.model.MessageSource` of every kind a backend must take).

* :func:`file_source`: a file on local disk (``local_path`` set), as the
  SMTP server hands messages over;
* :func:`streamed_source`: neither a local file nor the octets in memory,
  read only through ``open()``, a few kilobytes per read and not seekable
  (a database large object, say);
* :func:`pattern_source`: a large streamed message made on the fly, never
  held whole in memory, with :func:`pattern_digest` to check what was
  stored.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from txmail.model import MessageMetadata, MessageSource

__all__ = ["file_source", "pattern_digest", "pattern_source", "streamed_source"]


class _ChunkStream(io.RawIOBase):
    """A readable, non-seekable binary file of the pieces an iterator gives."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        super().__init__()
        self._pieces = pieces
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            piece = next(self._pieces, None)
            if piece is None:
                return 0
            self._pending = piece
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _streamed(size: int, pieces: Callable[[], Iterable[bytes]]) -> MessageSource:
    return MessageSource(size, lambda: _ChunkStream(iter(pieces())))  # type: ignore[arg-type,return-value]  # a _ChunkStream is a readable binary file


def file_source(
    path: str, data: bytes, *, fsynced: bool = True, metadata: MessageMetadata | None = None
) -> MessageSource:
    """*data* written to a new file *path* (fsynced when *fsynced*) and its source."""
    with open(path, "wb") as f:
        f.write(data)
        if fsynced:
            f.flush()
            os.fsync(f.fileno())
    return MessageSource.from_file(path, len(data), fsynced=fsynced, metadata=metadata)


def streamed_source(data: bytes, piece: int = 4096) -> MessageSource:
    """A source of *data* without ``local_path`` or ``data``: ``open()`` gives at most *piece* octets per read."""

    def pieces() -> Iterator[bytes]:
        for i in range(0, len(data), piece):
            yield data[i : i + piece]

    return _streamed(len(data), pieces)


def _pattern(size: int) -> Iterator[bytes]:
    """*size* octets of a message: a header, then numbered CRLF lines, made a line at a time."""
    head = b"From: big@remote.test\r\nTo: alice@example.test\r\nSubject: large\r\n\r\n"
    yield head[:size]
    left = size - len(head)
    n = 0
    while left > 0:
        line = b"%09d the quick brown fox jumps over the lazy dog\r\n" % n
        yield line[:left]
        left -= len(line)
        n += 1


def pattern_source(size: int) -> MessageSource:
    """A streamed message of *size* octets (at least 64), made piece by piece as it is read."""
    return _streamed(size, lambda: _pattern(size))


def pattern_digest(size: int) -> str:
    """The SHA-256 of :func:`pattern_source`'s *size* octets."""
    digest = hashlib.sha256()
    for piece in _pattern(size):
        digest.update(piece)
    return digest.hexdigest()
