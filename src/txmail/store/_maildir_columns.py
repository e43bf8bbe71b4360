"""
The Maildir store's header columns file, ``txmail-columns`` (see
:class:`txmail.interfaces.IHeaderColumns`): a few raw header fields of
every message of a folder, read for all of them with one read and a few
``marshal.loads``, instead of one metadata cache record per message.

Format
======

A sequence of blocks, each appended with one ``write`` (``O_APPEND``, so
that concurrent writers' blocks follow each other)::

    b"TXC1" | length (4 octets, little-endian) | CRC-32 of the payload (4) | payload

The payload is ``marshal.dumps((names, bases, values), 4)``: the field
names of the block (:data:`txmail.interfaces.HEADER_COLUMNS` when it was
written), the messages' base file names (the part before ``:2,``, as the
metadata cache keys its records) and, for each, its fields of those
names, in header order, flattened: ``(name, raw value, name, raw value,
...)`` (:func:`txmail.mime.header_columns`; one tuple a message, so that
loading 20,000 records makes 20,000 containers for the garbage collector
to track, not seven times as many).

A record is keyed by the message file's base name, which names one
message for good (a Maildir file's content never changes): records of
expunged messages are never looked up, a new UIDVALIDITY or a rebuilt
index finds the same files under the same names, and a message renamed
for its flags keeps its base.  A later block's record for a base wins.
Blocks written with other field names are skipped.

Reading stops at the first damaged block (bad magic, a length past the
end of the file, a bad CRC, a payload of the wrong shape): its records and
the following ones are treated as missing, and the caller (the mailbox)
rewrites the file with what was read.  Missing records are filled from
the metadata cache, never guessed.  The file is rewritten (temporary file
and rename) when it holds more than twice as many records as the folder
has messages (plus :data:`SLACK`).

A mailbox keeps what it last read (:class:`Read`) and gives it back to
:func:`read_columns_since`, which reads only what was appended to the same
file since, or nothing when the file is as it was (a SEARCH or SORT of a
big mailbox would otherwise decode the whole file each time).  The file
changes only by appends (the same file, longer) and by a rewrite (a new
file renamed over it: another inode, another first block); and should a
kept record outlive its file, it is still right, since a base names one
message content for good.

The header lines file ``txmail-lines`` (:data:`LINES`,
:class:`txmail.interfaces.IHeaderLines`) has the same format, with
:data:`txmail.interfaces.HEADER_LINES` as its names and ``(keys, text)``
records; each function takes the file's name.

Every function here runs in a worker thread and touches only the file
system, like :mod:`txmail.store._maildir_io`.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COLUMNS",
    "LINES",
    "SLACK",
    "Read",
    "append_columns",
    "read_columns",
    "read_columns_since",
    "rewrite_columns",
]

COLUMNS = "txmail-columns"
#: The header lines file (:class:`txmail.interfaces.IHeaderLines`): the same
#: format, each record ``(keys, text)`` (:func:`txmail.mime.header_lines`).
LINES = "txmail-lines"
#: A rewrite is due when the file holds more records than ``2 * messages + SLACK``.
SLACK = 1024
#: The largest block read (a block claiming more is damage).
MAX_BLOCK = 1 << 28
#: Characters of values (and base names) after which a block is closed.
BLOCK_TEXT = 1 << 23

_MAGIC = b"TXC1"
_HEAD = struct.Struct("<4sII")

#: One message's columns: name, raw value, name, raw value... of its column fields.
Values = tuple[str, ...]


def _block(names: tuple[str, ...], items: list[tuple[str, Values]]) -> bytes:
    bases = tuple(base for base, _ in items)
    values = tuple(value for _, value in items)
    payload = marshal.dumps((names, bases, values), 4)
    return _HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _blocks(names: tuple[str, ...], items: list[tuple[str, Values]]) -> bytes:
    """
    *items* as blocks of at most about :data:`BLOCK_TEXT` characters of
    values each (a message's header fields are at most
    :data:`txmail.mime.HEADER_COLLECT_LIMIT` octets, so every block stays
    far below :data:`MAX_BLOCK`).
    """
    out, start, size = [], 0, 0
    for i, (base, value) in enumerate(items):
        size += len(base) + sum(map(len, value))
        if size >= BLOCK_TEXT:
            out.append(_block(names, items[start : i + 1]))
            start, size = i + 1, 0
    if start < len(items):
        out.append(_block(names, items[start:]))
    return b"".join(out)


def _valid(payload: Any) -> bool:
    """Whether a decoded payload has the shape :func:`_block` writes (each record a tuple of pairs)."""
    if type(payload) is not tuple or len(payload) != 3:
        return False
    _, bases, values = payload
    if type(bases) is not tuple or type(values) is not tuple or len(bases) != len(values):
        return False
    # Checked with maps in C: a block holds some thousands of records.
    if not set(map(type, bases)) <= {str} or not set(map(type, values)) <= {tuple}:
        return False
    return not any(map((1).__and__, map(len, values)))


def read_columns(
    path: str, names: tuple[str, ...], filename: str = COLUMNS
) -> tuple[dict[str, Values], int, bool]:
    """
    The records of the folder's columns file written for *names*: (base ->
    values, the number of records in the file, whether damage was found).
    A missing file has no records and no damage.
    """
    read = read_columns_since(path, names, None, filename)
    return read.found, read.count, read.damaged


@dataclass(frozen=True, slots=True)
class Read:
    """
    What :func:`read_columns_since` found (its ``found`` is shared by the
    reads that follow: never changed).

    Attributes:
        names: the field names read.
        file: the file read: (device, inode, its first block's head), or None.
        size: the octets read, up to the end of the last whole block.
        found: base -> values.
        count: the records read.
        damaged: whether damage was found (at *size*).
    """

    names: tuple[str, ...]
    file: tuple[int, int, bytes] | None
    size: int
    found: dict[str, Values]
    count: int
    damaged: bool


def read_columns_since(
    path: str, names: tuple[str, ...], previous: Read | None, filename: str = COLUMNS
) -> Read:
    """
    The records of the folder's columns file written for *names*, as
    :func:`read_columns`; what *previous* read of the same file is kept,
    and only the blocks appended since are read.
    """
    try:
        with open(os.path.join(path, filename), "rb") as f:
            st = os.fstat(f.fileno())
            file = (st.st_dev, st.st_ino, f.read(_HEAD.size))
            if (
                previous is not None
                and previous.file == file
                and previous.names == names
                and not previous.damaged
                and previous.size <= st.st_size
            ):
                if previous.size == st.st_size:
                    return previous
                f.seek(previous.size)
                data = f.read()
                found, count, used, damaged = _parse(data, names)
                found = {**previous.found, **found} if found else previous.found
                return Read(names, file, previous.size + used, found, previous.count + count, damaged)
            data = file[2] + f.read()
    except FileNotFoundError:
        return Read(names, None, 0, {}, 0, False)
    except OSError:
        return Read(names, None, 0, {}, 0, True)
    found, count, used, damaged = _parse(data, names)
    return Read(names, file, used, found, count, damaged)


def _parse(data: bytes, names: tuple[str, ...]) -> tuple[dict[str, Values], int, int, bool]:
    """The blocks of *data*: (base -> values, records, octets of the whole blocks, damaged)."""
    found: dict[str, Values] = {}
    count, pos, end = 0, 0, len(data)
    view = memoryview(data)
    while pos < end:
        if end - pos < _HEAD.size:
            return found, count, pos, True
        magic, length, crc = _HEAD.unpack_from(data, pos)
        start = pos + _HEAD.size
        if magic != _MAGIC or length > MAX_BLOCK or start + length > end:
            return found, count, pos, True
        payload = view[start : start + length]
        if zlib.crc32(payload) != crc:
            return found, count, pos, True
        try:
            decoded = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            return found, count, pos, True
        if type(decoded) is tuple and len(decoded) == 3 and decoded[0] == names:
            if not _valid(decoded):
                return found, count, pos, True
            found.update(zip(decoded[1], decoded[2], strict=True))
            count += len(decoded[1])
        pos = start + length
    return found, count, pos, False


def append_columns(
    path: str, names: tuple[str, ...], items: list[tuple[str, Values]], filename: str = COLUMNS
) -> bool:
    """
    Append the records *items* ((base, values) each) as one block with one
    ``write``; whether it was written whole (a failure only costs their
    being filled again from the metadata cache next time).
    """
    if not items:
        return True
    blob = _blocks(names, items)
    try:
        fd = os.open(os.path.join(path, filename), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, blob)
        finally:
            os.close(fd)
    except OSError:
        return False
    return written == len(blob)


def rewrite_columns(
    path: str, names: tuple[str, ...], items: list[tuple[str, Values]], filename: str = COLUMNS
) -> bool:
    """
    Replace the columns file with one holding *items* alone (temporary
    file, sync, rename); whether it was replaced.
    """
    target = os.path.join(path, filename)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            if items:
                f.write(_blocks(names, items))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True
