"""
What every import and export shares: the summary they report, the
destination store seen synchronously, and the spooling of messages too
large to keep in memory.

The admin command builds the configured provider with its file and
database work done inline (:func:`txmail.service.make_store_provider`
without a server), so each Deferred of the store has fired when it is
returned: :func:`wait` takes its result.  The migration code therefore runs
as plain blocking code, in the admin command's process, or in a thread of a
test.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.python.failure import Failure

from txmail.errors import MailboxExists
from txmail.interfaces import IMailStore
from txmail.model import INBOX, MessageSource, SpecialUse, open_binary

__all__ = ["MigrationError", "Spool", "Summary", "Target", "copy_stream", "empty_dir", "wait"]

#: Messages up to this size are kept in memory on their way; larger ones
#: are spooled to a temporary file.
MEMORY_LIMIT = 1 << 20


class MigrationError(Exception):
    """An import or export cannot go on (the source is unreadable, the server refused the login...)."""


@dataclass
class Summary:
    """
    What an import or export did: the folders it went through, the messages
    and octets it copied, the messages it skipped (each with a reason in
    :attr:`problems`), and those it found already there (an IMAP import run
    again after a UIDVALIDITY change).
    """

    folders: int = 0
    messages: int = 0
    bytes: int = 0
    skipped: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.problems.append(reason)

    def line(self, verb: str) -> str:
        """The one summary line: ``imported 3 folders, 12 messages, 4567 bytes, 1 skipped``."""
        text = f"{verb} {self.folders} folders, {self.messages} messages, {self.bytes} bytes, {self.skipped} skipped"
        if self.duplicates:
            text += f", {self.duplicates} already there"
        return text


def wait(result: Any) -> Any:
    """The result of *result*, a Deferred that has fired (its failure raised), or *result* itself."""
    if not isinstance(result, defer.Deferred):
        return result
    results: list[Any] = []
    result.addBoth(results.append)
    if not results:
        raise MigrationError("the mail store did not answer inline")
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class Target:
    """
    One user's destination store: folders created on demand (with a
    special-use role when no other folder has it yet), messages appended
    with their flags and internal dates.
    """

    def __init__(self, store: IMailStore, summary: Summary) -> None:
        self.store = store
        self.summary = summary
        self._known: set[str] = {f.name for f in wait(store.list_mailboxes("*")) if f.selectable}
        self._boxes: dict[str, Any] = {}

    def folder(self, name: str, special_use: SpecialUse | None = None) -> Any:
        """The mailbox *name*, created when missing."""
        box = self._boxes.get(name)
        if box is not None:
            return box
        if name not in self._known:
            role = special_use
            if role is not None and wait(self.store.special_use_mailbox(role)) is not None:
                role = None  # the user has one already: keep it
            with contextlib.suppress(MailboxExists):
                wait(self.store.create_mailbox(name, special_use=role))
            self._known.add(name)
        box = self._boxes[name] = wait(self.store.get_mailbox(name))
        return box

    def exists(self, name: str) -> bool:
        return name == INBOX or name in self._known

    def append(self, box: Any, source: MessageSource, flags: frozenset[str], internal_date: float) -> int:
        uid = wait(box.append(source, flags, internal_date))
        self.summary.messages += 1
        self.summary.bytes += source.size
        return int(uid)

    def subscribe(self, names: list[str]) -> None:
        have = set(wait(self.store.subscriptions()))
        for name in names:
            if name not in have:
                wait(self.store.subscribe(name))


class Spool:
    """
    A message written piece by piece (CRLF line ends), held in memory up to
    :data:`MEMORY_LIMIT` octets and in a temporary file beyond, handed to a
    store as a :class:`txmail.model.MessageSource`.  :meth:`close` removes
    the file.
    """

    def __init__(self, directory: str | None = None) -> None:
        self._buffer = io.BytesIO()
        self._file: BinaryIO | None = None
        self._path: str | None = None
        self._directory = directory
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self._file is None and self.size > MEMORY_LIMIT:
            fd, self._path = tempfile.mkstemp(prefix="txmail-import-", dir=self._directory)
            self._file = os.fdopen(fd, "w+b")
            self._file.write(self._buffer.getvalue())
            self._buffer = io.BytesIO()
        if self._file is not None:
            self._file.write(data)
        else:
            self._buffer.write(data)

    def source(self) -> MessageSource:
        if self._file is None:
            return MessageSource.from_bytes(self._buffer.getvalue())
        self._file.flush()
        assert self._path is not None
        return MessageSource(self.size, functools.partial(open_binary, self._path))

    def head(self, size: int = 65536) -> bytes:
        """The first *size* octets written."""
        if self._file is None:
            return self._buffer.getvalue()[:size]
        assert self._path is not None
        with open(self._path, "rb") as f:
            return f.read(size)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)
            self._path = None


def copy_stream(read: Callable[[int], bytes], write: Callable[[bytes], Any], chunk: int = 1 << 17) -> int:
    """Copy from *read* to *write* a chunk at a time; the octets copied."""
    total = 0
    while True:
        data = read(chunk)
        if not data:
            return total
        write(data)
        total += len(data)


def empty_dir(root: str) -> None:
    """Make *root*, or check that it is empty: an export never writes over anything."""
    try:
        os.makedirs(root, exist_ok=True)
        if os.listdir(root):
            raise MigrationError(f"{root} is not empty: export into a new or empty directory")
    except OSError as e:
        raise MigrationError(f"cannot write {root}: {e.strerror or e}") from None
