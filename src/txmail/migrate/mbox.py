"""
mbox files in and out of a user's store.

The format (https://www.loc.gov/preservation/digital/formats/fdd/fdd000383.shtml,
and ``mbox(5)`` of mutt and qmail): messages one after the other, each
starting with a ``From sender date`` line at the start of the file or after
a blank line, with LF line ends.  mboxrd quotes a line of a message that
starts with any number of ``>`` and ``From`` by putting one more ``>``
before it; mboxo quotes only ``From`` lines.  The reader here undoes the
quoting of mboxrd (one ``>`` removed from each ``>From``, ``>>From``...
line), which also reads mboxo right except for lines that were ``>From``
already; the writer quotes as mboxrd.

Flags live in header fields (:data:`txmail.migrate._formats.FLAG_HEADERS`):
read on import and removed from the stored message, written on export.
The internal date is the date of the ``From`` line (else the ``Date:``
field, else now).  Messages are stored with CRLF line ends, as the stores
expect, and written with LF ones; a message larger than
:data:`txmail.migrate._store.MEMORY_LIMIT` goes through a temporary file.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from txmail.errors import InvalidMailboxName
from txmail.interfaces import IMailStore
from txmail.migrate._formats import (
    FLAG_HEADERS,
    date_from_header,
    flag_headers,
    flags_from_headers,
    format_from_line_date,
    parse_from_line_date,
    unescape_percent,
)
from txmail.migrate._store import MigrationError, Spool, Summary, Target, empty_dir, wait
from txmail.model import DELIMITER, INBOX, normalize_mailbox_name

__all__ = ["export_mbox", "import_mbox", "mbox_files", "read_mbox"]

_QUOTED_FROM = re.compile(rb"^>+From ")
_NEEDS_QUOTE = re.compile(rb"^>*From ")
_FIELD = re.compile(rb"^([!-9;-~]+)[ \t]*:")
#: A header section longer than this is taken as body (a file that is not mail).
_MAX_HEADER = 1 << 20


class MboxMessage:
    """One message read from an mbox: its content (a :class:`Spool`), flags, date and position."""

    def __init__(
        self, number: int, spool: Spool, flags: frozenset[str], date: float | None, internal: bool = False
    ) -> None:
        self.number = number
        self.spool = spool
        self.flags = flags
        self.date = date
        #: UW-IMAP's (and Pine's) first message of a folder, "DON'T DELETE
        #: THIS MESSAGE -- FOLDER INTERNAL DATA", marked by ``X-IMAP:``: not mail.
        self.internal = internal


def _content(line: bytes) -> tuple[bytes, bool]:
    """A line without its line end, and whether it had one."""
    if line.endswith(b"\r\n"):
        return line[:-2], True
    if line.endswith(b"\n"):
        return line[:-1], True
    return line, False


class _Reader:
    """Turns the lines of one message into a spool, the flag fields taken out (the state of :func:`read_mbox`)."""

    def __init__(self, number: int, from_line: bytes, spool_dir: str | None) -> None:
        self.number = number
        self.date = parse_from_line_date(from_line)
        self.spool = Spool(spool_dir)
        self.header: list[bytes] | None = []
        self.header_size = 0
        self.flag_fields: list[tuple[str, str]] = []
        self.date_field: str | None = None

    def line(self, line: bytes) -> None:
        if _QUOTED_FROM.match(line):
            line = line[1:]
        if self.header is None:
            self._write(line)
            return
        content, _ = _content(line)
        if content == b"" or self.header_size > _MAX_HEADER:
            self.end_header()
            self._write(line)
            return
        self.header.append(line)
        self.header_size += len(line)

    def end_header(self) -> None:
        if self.header is None:
            return
        fields: list[list[bytes]] = []
        for line in self.header:
            if line[:1] in (b" ", b"\t") and fields:
                fields[-1].append(line)
            else:
                fields.append([line])
        for lines in fields:
            match = _FIELD.match(lines[0])
            name = match.group(1).decode("ascii").lower() if match else ""
            if name in FLAG_HEADERS:
                value = b"".join(_content(x)[0] for x in lines)[match.end() if match else 0 :]
                self.flag_fields.append((name, value.decode("latin-1")))
                continue
            if name == "date" and match:
                self.date_field = b"".join(_content(x)[0] for x in lines)[match.end() :].decode("latin-1")
            for line in lines:
                self._write(line)
        self.header = None

    def _write(self, line: bytes) -> None:
        content, ended = _content(line)
        self.spool.write(content + b"\r\n" if ended else content)

    def finish(self) -> MboxMessage:
        self.end_header()
        date = self.date
        if date is None and self.date_field is not None:
            date = date_from_header(self.date_field)
        internal = self.number == 1 and any(name == "x-imap" for name, _ in self.flag_fields)
        return MboxMessage(self.number, self.spool, flags_from_headers(self.flag_fields), date, internal)


def read_mbox(f: BinaryIO, spool_dir: str | None = None) -> Iterator[MboxMessage]:
    """
    The messages of the mbox file *f*, one at a time: the caller uses each
    one's spool before asking for the next (the reader closes it then).

    Raises:
        MigrationError: the file does not start with a ``From`` line.
    """
    current: _Reader | None = None
    pending: bytes | None = None  # a blank line: the separator, if a From line follows
    previous_blank = True
    number = 0
    try:
        for line in f:
            is_blank = _content(line)[0] == b""
            if line.startswith(b"From ") and previous_blank:
                if current is not None:
                    yield current.finish()
                    current.spool.close()
                number += 1
                current = _Reader(number, line, spool_dir)
                pending = None
                previous_blank = False
                continue
            if current is None:
                if is_blank:
                    continue
                raise MigrationError("not an mbox file: it does not start with a 'From ' line")
            if pending is not None:
                current.line(pending)
                pending = None
            if is_blank and current.header is None:
                pending = line
            else:
                current.line(line)
            previous_blank = is_blank
        if current is not None:
            yield current.finish()
    finally:
        if current is not None:
            current.spool.close()


def mbox_files(root: str) -> Iterator[tuple[str, str]]:
    """
    The mbox files under the directory *root* with the folder name each one
    is for: ``Archive/2024.mbox`` (as :func:`export_mbox` writes them, ``%2E``
    and ``%25`` read as ``.`` and ``%``) or
    Thunderbird's ``Archive.sbd/2024`` is ``Archive/2024``; a file without
    the ``.mbox`` suffix counts when it starts with ``From``.
    """
    for directory, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # Dovecot's .imap/ indexes
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.startswith(".") or os.path.islink(path) or not os.path.isfile(path):
                continue  # hidden, a link (to files elsewhere), or no file
            if name.endswith(".mbox"):
                name = name[: -len(".mbox")]
            elif not _starts_with_from(path):
                continue
            rel = os.path.relpath(os.path.join(directory, name), root)
            parts = [
                unescape_percent(p[: -len(".sbd")] if p.endswith(".sbd") else p) for p in rel.split(os.sep)
            ]
            yield path, DELIMITER.join(parts)


def _starts_with_from(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(5) == b"From "
    except OSError:
        return False


def import_mbox(
    store: IMailStore,
    path: str,
    folder: str | None = None,
    *,
    report: Callable[[str], Any] = lambda line: None,
    spool_dir: str | None = None,
) -> Summary:
    """
    Import the mbox file *path* into *folder* (default ``INBOX``), created
    if missing; or, when *path* is a directory, every mbox file under it
    (:func:`mbox_files`) into the folder its path names, below *folder* when
    given.  A message that cannot be stored is skipped and counted; the
    files are only read.

    Raises:
        MigrationError: *path* cannot be read, or a folder name is not valid.
    """
    summary = Summary()
    target = Target(store, summary)
    if os.path.isdir(path):
        for file_path, name in mbox_files(path):
            name = f"{folder}{DELIMITER}{name}" if folder else name
            _import_file(target, file_path, name, report, spool_dir)
    else:
        _import_file(target, path, folder or INBOX, report, spool_dir)
    return summary


def _import_file(
    target: Target, path: str, folder: str, report: Callable[[str], Any], spool_dir: str | None
) -> None:
    summary = target.summary
    try:
        folder = normalize_mailbox_name(folder)
    except ValueError as e:
        summary.skip(f"{path}: {folder!r} is not a valid folder name ({e})")
        report(f"{folder}: skipped {path}: not a valid folder name")
        return
    before = summary.messages, summary.skipped
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below, after the generator
    except OSError as e:
        raise MigrationError(f"cannot read {path}: {e.strerror or e}") from None
    with f:
        try:
            box = target.folder(folder)
        except (InvalidMailboxName, ValueError) as e:
            summary.skip(f"{path}: the folder {folder!r} cannot be created here: {e}")
            return
        summary.folders += 1
        try:
            for message in read_mbox(f, spool_dir):
                _store(target, box, message, path)
        except MigrationError as e:
            summary.skip(f"{path}: {e}")
    report(
        f"{folder}: {summary.messages - before[0]} messages from {path}"
        + (f", {summary.skipped - before[1]} skipped" if summary.skipped > before[1] else "")
    )


def _store(target: Target, box: Any, message: MboxMessage, path: str) -> None:
    if message.internal:
        return
    if message.spool.size <= 1024 and not message.spool.head().strip():
        target.summary.skip(f"{path}: message {message.number} is empty")
        return
    date = message.date if message.date is not None else time.time()
    try:
        target.append(box, message.spool.source(), message.flags, date)
    except (ValueError, OSError, InvalidMailboxName) as e:
        target.summary.skip(f"{path}: message {message.number} not stored: {e}")


# -- export -----------------------------------------------------------------


def _lines(read: Callable[[int], bytes], chunk: int = 1 << 17) -> Iterator[bytes]:
    """The lines (ends kept) of what *read* gives."""
    rest = b""
    while True:
        data = read(chunk)
        if not data:
            break
        data = rest + data
        lines = data.split(b"\n")
        rest = lines.pop()
        for line in lines:
            yield line + b"\n"
    if rest:
        yield rest


def _sender(headers: Any) -> str:
    for name, value in headers:
        if name.lower() == "return-path":
            address: str = value.strip().strip("<>").strip()
            if address and " " not in address:
                return address
    return "MAILER-DAEMON"


def write_message(out: BinaryIO, f: BinaryIO, flags: frozenset[str], date: float, sender: str) -> int:
    """Write one message (from *f*, CRLF line ends) to the mbox *out*, quoted as mboxrd; the octets written."""
    written = out.write(f"From {sender} {format_from_line_date(date)}\n".encode("latin-1", "replace"))
    in_header = True
    skipping = False
    last = b"\n"
    for line in _lines(f.read):
        content, ended = _content(line)
        if in_header:
            if content == b"":
                written += out.write(flag_headers(flags))
                in_header = False
            elif line[:1] in (b" ", b"\t") and skipping:
                continue
            else:
                match = _FIELD.match(content)
                skipping = bool(match) and match.group(1).decode("ascii").lower() in FLAG_HEADERS  # type: ignore[union-attr]  # bool(match) guards the None case
                if skipping:
                    continue
        if _NEEDS_QUOTE.match(content):
            content = b">" + content
        last = content + b"\n" if ended else content
        written += out.write(last)
    if in_header:
        if not last.endswith(b"\n"):
            written += out.write(b"\n")
        written += out.write(flag_headers(flags))
        last = b"\n"
    if not last.endswith(b"\n"):
        written += out.write(b"\n")
    return written + out.write(b"\n")


def _file_part(part: str) -> str:
    """A folder name component as a file name: ``%`` as ``%25``, a leading ``.`` (a hidden file) as ``%2E``."""
    part = part.replace("%", "%25")
    return "%2E" + part[1:] if part.startswith(".") else part


def mbox_path(root: str, name: str) -> str:
    """
    Where :func:`export_mbox` writes the folder *name*: ``Archive/2024`` is
    ``ROOT/Archive/2024.mbox`` (:func:`_file_part` escapes).
    """
    return os.path.join(root, *(_file_part(p) for p in name.split(DELIMITER))) + ".mbox"


def export_mbox(store: IMailStore, root: str, *, report: Callable[[str], Any] = lambda line: None) -> Summary:
    """
    Write every selectable folder of *store* to an mbox file under the
    directory *root* (created; it must be empty if it exists): ``INBOX.mbox``,
    ``Archive/2024.mbox``..., flags in ``Status:``, ``X-Status:`` and
    ``X-Keywords:``, internal dates in the ``From`` lines.

    Raises:
        MigrationError: *root* is not an empty directory, or cannot be written.
    """
    empty_dir(root)
    summary = Summary()
    for info in wait(store.list_mailboxes("*")):
        if not info.selectable:
            continue
        box = wait(store.get_mailbox(info.name))
        path = mbox_path(root, info.name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        count = 0
        with open(path, "wb") as out:
            messages = wait(box.list_messages())
            for start in range(0, len(messages), _BATCH):
                count += _write_batch(out, box, info.name, messages[start : start + _BATCH], summary)
        summary.folders += 1
        report(f"{info.name}: {count} messages to {path}")
    return summary


#: Messages whose metadata (for the ``From`` line's sender) is read at once.
_BATCH = 500


def _write_batch(out: BinaryIO, box: Any, name: str, messages: list[Any], summary: Summary) -> int:
    """Write *messages* of *box* to *out*; how many were written."""
    metadata = wait(box.get_metadata([m.uid for m in messages]))
    count = 0
    for message in messages:
        md = metadata.get(message.uid)
        sender = _sender(md.headers) if md is not None else "MAILER-DAEMON"
        try:
            f = wait(box.open_message(message.uid))
        except Exception as e:  # expunged meanwhile, unreadable: counted
            summary.skip(f"{name}: message {message.uid} not readable: {e}")
            continue
        with f:
            write_message(out, f, message.flags, message.internal_date, sender)
        summary.messages += 1
        summary.bytes += message.size
        count += 1
    return count
