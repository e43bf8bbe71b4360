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

What a mailbox appends itself need not be read back either:
:func:`append_columns_at` tells where its block went (:class:`Appended`:
the file, as :attr:`Read.file` names it, and the octets it took), and
:func:`extend_read` adds such blocks to a :class:`Read` they follow
without a gap, giving what :func:`read_columns_since` would have read
(the records written, the same tuples).  A block that does not follow the
read (another writer's block between them, another file) is left out, and
read from the file next time.

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
    "Appended",
    "Read",
    "append_columns",
    "append_columns_at",
    "extend_read",
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


def _payload(names: tuple[str, ...], items: list[tuple[str, Values]]) -> bytes:
    bases = tuple(base for base, _ in items)
    values = tuple(value for _, value in items)
    return marshal.dumps((names, bases, values), 4)


def _payloads(names: tuple[str, ...], items: list[tuple[str, Values]]) -> list[bytes]:
    """
    The payloads of *items* as blocks of at most about :data:`BLOCK_TEXT`
    characters of values each (a message's header fields are at most
    :data:`txmail.mime.HEADER_COLLECT_LIMIT` octets, so every block stays
    far below :data:`MAX_BLOCK`).
    """
    out, start, size = [], 0, 0
    for i, (base, value) in enumerate(items):
        size += len(base) + sum(map(len, value))
        if size >= BLOCK_TEXT:
            out.append(_payload(names, items[start : i + 1]))
            start, size = i + 1, 0
    if start < len(items):
        out.append(_payload(names, items[start:]))
    return out


def _framed(payloads: list[bytes]) -> bytes:
    """The blocks of *payloads*, each behind its head."""
    return b"".join(_HEAD.pack(_MAGIC, len(payload), zlib.crc32(payload)) + payload for payload in payloads)


def _blocks(names: tuple[str, ...], items: list[tuple[str, Values]]) -> bytes:
    """*items* as blocks (see :func:`_payloads`)."""
    return _framed(_payloads(names, items))


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
    return not items or append_columns_at(path, names, items, filename) is not None


@dataclass(frozen=True, slots=True)
class Appended:
    """
    The records that :func:`append_columns_at` wrote, and where.

    Attributes:
        names: the field names written.
        file: the file written (as :attr:`Read.file`: device, inode, its first block's head).
        start: the octet where the records' blocks begin.
        end: the octet just past them.
        blocks: the records of each block, (bases, values), decoded from
            what was written (as reading the file would decode them).
        count: the records.
    """

    names: tuple[str, ...]
    file: tuple[int, int, bytes]
    start: int
    end: int
    blocks: list[tuple[tuple[str, ...], tuple[Values, ...]]]
    count: int


def append_columns_at(
    path: str, names: tuple[str, ...], items: list[tuple[str, Values]], filename: str = COLUMNS
) -> Appended | None:
    """
    Append the records *items* as :func:`append_columns` does; where they
    went (for :func:`extend_read`), or None when none were written whole.

    The records given back are decoded from the blocks written, not the
    objects of *items*: those a mailbox keeps for many searches are then
    made together, as by a read of the file (a pass over 100,000 records
    made while parsing, strewn over the heap among the parse's garbage,
    costs about twice as much), and hold no more than a read would.
    """
    if not items:
        return None
    payloads = _payloads(names, items)
    blob = _framed(payloads)
    try:
        fd = os.open(os.path.join(path, filename), os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            if os.write(fd, blob) != len(blob):
                return None
            # O_APPEND wrote the blob whole at the end of the file (one
            # write), and left the offset just past it.
            end = os.lseek(fd, 0, os.SEEK_CUR)
            st = os.fstat(fd)
            head = os.pread(fd, _HEAD.size, 0)
        finally:
            os.close(fd)
    except OSError:
        return None
    blocks = [marshal.loads(payload)[1:] for payload in payloads]
    return Appended(names, (st.st_dev, st.st_ino, head), end - len(blob), end, blocks, len(items))


def extend_read(read: Read | None, names: tuple[str, ...], appended: list[Appended]) -> Read | None:
    """
    *read* (of the columns written for *names*, or None: nothing read)
    with the blocks of *appended* (in any order) that follow it in its
    file, without a gap: what :func:`read_columns_since` would read of the
    file up to their end.  Without *read*, or after a read that found no
    file, a block that begins the file starts the chain.  A damaged read,
    and the blocks from the first that does not follow, are left as they
    are (the file is read next time).
    """
    if read is not None and (read.names != names or read.damaged):
        return read
    before = Read(names, None, 0, {}, 0, False) if read is None else read
    file, size, count = before.file, before.size, before.count
    chained: list[Appended] = []
    for block in sorted(appended, key=lambda block: block.start):
        if block.names != names:
            continue
        if file is None and size == 0 and block.start == 0:
            file = block.file  # the file made by this block (or empty before it)
        if block.file != file:
            continue  # another file's (one since replaced, or replacing it)
        if block.end <= size:
            continue  # read already
        if block.start != size:
            break
        chained.append(block)
        size, count = block.end, count + block.count
    if not chained:
        return read
    found = dict(before.found)
    for block in chained:
        for bases, values in block.blocks:
            found.update(zip(bases, values, strict=True))
    return Read(names, file, size, found, count, False)


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
