"""
The blocking file work of the Maildir store.

Every function here runs in a worker thread (through the store's
``run_blocking``) and touches only the file system: it never reads or
changes a mailbox object.  Results go back to the reactor thread, which
updates the in-memory state and the index.

Line ends: a message is served with CRLF line ends (see
:mod:`txmail.store._crlf`).  Each message has two sizes: the size served
(its ``MessageInfo.size``) and the file's (*raw*), equal unless the file
holds bare LFs.  A file that came from another program is counted once
when it is taken in (:func:`file_sizes`: a ``W=`` in its name is trusted,
as Dovecot writes it, else the file is read through); the files txmail
writes are known when written.  Reading (:func:`open_file`,
:func:`read_file`) and parsing (:func:`read_metadata`) a file whose sizes
differ convert it on the way.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TypeVar

from txmail import mime
from txmail._fs import fsync_dir, fsync_file, write_file_durably
from txmail.errors import MailboxExists, NoSuchMailbox, NoSuchMessage
from txmail.interfaces import HEADER_COLUMNS
from txmail.model import MessageMetadata
from txmail.store import _maildir_columns as columns
from txmail.store._crlf import CHUNK, CRLFFile, bare_lf_count, count_file, to_crlf
from txmail.store._ids import is_object_id, new_mailbox_id
from txmail.store._maildir_format import (
    INDEX_VERSION,
    ParsedIndex,
    compact_expunge_log,
    file_name,
    folder_from_dir_name,
    index_add,
    index_header,
    name_sizes,
    parse_index,
    parse_keywords,
    split_file_name,
)
from txmail.store._parse_pool import (
    NotAMessageFile,
    ParsePool,
    function_name,
    open_message_fd,
    parse_file_metadata,
)

__all__ = [
    "CACHE",
    "DELETED_PREFIX",
    "INDEX",
    "KEYWORDS",
    "MAILBOX_ID",
    "Delivered",
    "Loaded",
    "NotAMessageFile",
    "Scan",
    "create_folders",
    "deliver_bytes",
    "deliver_file",
    "deliver_stream",
    "derive_records",
    "file_sizes",
    "folder_mailbox_id",
    "header_columns_of",
    "link_files",
    "list_folders",
    "make_user_dir",
    "open_file",
    "open_message_file",
    "pickup_files",
    "read_file",
    "read_folder",
    "read_metadata",
    "remove_folder",
    "rename_files",
    "rename_folders",
    "replace_file",
    "scan_folder",
    "unlink_files",
    "write_small",
]

INDEX = "txmail-index"
CACHE = "txmail-cache"
KEYWORDS = "dovecot-keywords"
#: The most of :data:`KEYWORDS` read (it names at most 26 keywords).
KEYWORDS_MAX = 64 * 1024
#: The folder's MAILBOXID (RFC 8474 section 4), one line; it moves with the
#: folder's directory when the mailbox is renamed.
MAILBOX_ID = "txmail-mailboxid"
#: Deleted folders are renamed to this prefix, then removed.
DELETED_PREFIX = "txmail-deleted-"
SUBS = ("new", "cur")

#: Compact the metadata cache on open when its dead records pass this.
CACHE_SLACK = 1 << 16


#: File system timestamps can be coarse (one second, two on FAT; a few
#: milliseconds on Linux file systems with nanosecond fields): a change made
#: in the same tick as a listing leaves the directory's mtime as it was.  A
#: listing taken less than this long after the directory's last change is
#: therefore followed by one more once this time has passed (Dovecot's
#: "dirty" Maildir check, MAILDIR_SYNC_SECS).
SETTLE_NS = 2_000_000_000


@dataclass(frozen=True)
class Stamp:
    """
    What a folder's listing is known to reflect: the mtimes (ns) of
    ``new/``, ``cur/`` and ``dovecot-keywords`` (0 when missing), and
    *verify_at*, the wall-clock time (ns) after which one more listing is
    owed (``None``: none is).  One is owed when the last listing ran within
    :data:`SETTLE_NS` of a directory's change, or when the store took in
    times left by its own writes (:meth:`absorb`): a change by another
    program in the same timestamp tick would otherwise stay unseen.
    """

    mtimes: tuple[int, ...]
    verify_at: int | None = None

    @classmethod
    def after_listing(cls, mtimes: tuple[int, ...], taken: int, settle_ns: int = SETTLE_NS) -> Stamp:
        """The stamp of a listing made at *taken* (ns) of directories with *mtimes*."""
        newest = max(mtimes)
        if taken - newest > settle_ns:
            return cls(mtimes)
        # A directory time in the future (a file server's clock ahead of
        # ours) counts from now: listed again every settle_ns meanwhile.
        return cls(mtimes, min(newest, taken) + settle_ns)

    def changed(self, current: tuple[int, ...], now: int, strict: bool) -> bool:
        """
        Whether a listing is due: a directory changed, or one is owed (at
        once when *strict*, else once *verify_at* has passed).
        """
        if current != self.mtimes:
            return True
        if self.verify_at is None:
            return False
        return strict or now >= self.verify_at

    def absorb(
        self, before: tuple[int, ...], after: tuple[int, ...], now: int, settle_ns: int = SETTLE_NS
    ) -> Stamp:
        """
        Take in the times left by the store's own change: a directory whose
        time was *before* the change (as this stamp has it) gets its time
        *after*; one that had changed already keeps its old time (a listing
        will be made).  Another program's change that landed during ours, or
        in the same tick, is caught by the one listing owed from then on.
        """
        mtimes = tuple(a if b == s else s for b, a, s in zip(before, after, self.mtimes, strict=True))
        if mtimes == self.mtimes:
            return self
        verify_at = self.verify_at
        if verify_at is None:
            verify_at = min(max(after), now) + settle_ns
        return Stamp(mtimes, verify_at)


@dataclass
class Scan:
    """
    What ``new/`` and ``cur/`` hold: base -> (sub-directory, file name), the
    keyword letters, and the :class:`Stamp` of the listing.
    """

    listing: dict[str, tuple[str, str]]
    keywords: dict[str, str] | None
    stamp: Stamp
    #: The entries left out for not being regular files: (sub-directory, name).
    ignored: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Changed:
    """
    The result of a change to a folder's message files, with the folder's
    :func:`dir_mtimes` just *before* and *after* it.
    """

    result: Any
    before: tuple[int, ...]
    after: tuple[int, ...]


@dataclass
class Loaded:
    """
    A folder as read on open: its index (``None`` when missing) and a scan.
    ``upgraded``: records of an older index were completed (the index is
    to be rewritten).
    """

    index: ParsedIndex | None
    scan: Scan
    upgraded: bool = False
    #: The folder's MAILBOXID (:func:`folder_mailbox_id`).
    mailbox_id: str = ""


@dataclass
class Delivered:
    """
    Where a new message file landed, and its metadata cache record.  *size*
    is the size served; *raw* the file's when it differs (bare LFs).
    """

    sub: str
    name: str
    size: int
    coff: int
    clen: int
    raw: int | None = None
    before: tuple[int, ...] = ()
    after: tuple[int, ...] = ()


def dir_mtimes(path: str) -> tuple[int, ...]:
    """
    The mtimes (ns) of a folder's ``new/``, ``cur/`` and ``dovecot-keywords``
    (0 for a missing one): three ``stat`` calls, a few microseconds, cheap
    enough for the reactor thread.
    """
    out = []
    for name in (*SUBS, KEYWORDS):
        try:
            out.append(os.stat(os.path.join(path, name)).st_mtime_ns)
        except OSError:
            out.append(0)
    return tuple(out)


def scan_folder(
    path: str,
    stamp: Stamp | None = None,
    settle_ns: int = SETTLE_NS,
    strict: bool = True,
    now: Callable[[], int] = time.time_ns,
) -> Scan | None:
    """
    List the message files of a folder.  With the *stamp* of an earlier
    listing, return ``None`` when no listing is due (:meth:`Stamp.changed`).
    *now* is the wall clock in nanoseconds.

    Only regular files are messages: symbolic links, FIFOs, directories,
    sockets and devices are left out (:attr:`Scan.ignored`), told apart by
    the type the directory entry carries (``DirEntry.is_file`` without
    following links: no ``stat`` where the file system gives the type, as
    Linux's local ones do).

    Raises:
        NoSuchMailbox: the folder is gone (removed by another program).
    """
    mtimes = dir_mtimes(path)
    if stamp is not None and not stamp.changed(mtimes, now(), strict):
        return None
    taken = now()
    if not os.path.isdir(os.path.join(path, "cur")):
        raise NoSuchMailbox(path)
    listing: dict[str, tuple[str, str]] = {}
    ignored: list[tuple[str, str]] = []
    for sub in SUBS:
        try:
            entries = os.scandir(os.path.join(path, sub))
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                name = entry.name
                if name[0] == ".":
                    continue
                try:
                    regular = entry.is_file(follow_symlinks=False)
                except OSError:
                    continue  # gone meanwhile (a file system without types in its entries)
                if regular:
                    listing[name.partition(":")[0]] = (sub, name)  # cur/ (listed last) wins over new/
                else:
                    ignored.append((sub, name))
    keywords = None
    try:
        # Written by other programs too (Dovecot): a regular file only, as
        # a message file (a FIFO would block the listing), and small.
        with open_message_file(os.path.join(path, KEYWORDS)) as f:
            keywords = parse_keywords(f.read(KEYWORDS_MAX))
    except FileNotFoundError:  # or not a regular file (NotAMessageFile)
        pass
    return Scan(listing, keywords, Stamp.after_listing(mtimes, taken, settle_ns), ignored)


@contextlib.contextmanager
def _open_cache(path: str) -> Iterator[BinaryIO | None]:
    """The folder's metadata cache opened for reading, or ``None`` if it is missing."""
    try:
        f = open(os.path.join(path, CACHE), "rb")  # noqa: SIM115 - closed below
    except OSError:
        yield None
        return
    with f:
        yield f


def _read_cache_record(f: BinaryIO, coff: int, clen: int, base: str) -> bytes | None:
    """The encoded metadata of a cache record, if it is intact and for *base*."""
    if coff < 0 or clen <= 0:
        return None
    f.seek(coff)
    return _check_record(f.read(clen), clen, base)


def _check_record(data: bytes, clen: int, base: str) -> bytes | None:
    """The encoded metadata of the record *data* read for *base*, or ``None`` when it is not intact."""
    head, sep, rest = data.partition(b"\n")
    if (
        len(data) != clen
        or not sep
        or head != base.encode("utf-8", "surrogateescape")
        or not rest.endswith(b"\n")
    ):
        return None
    return rest[:-1]


#: Cache records at most this far apart are read with one ``pread``.
SPAN_GAP = 1 << 14
#: The most octets of the cache read at once.
SPAN_MAX = 1 << 22


def _read_cache_records(fd: int, places: list[tuple[int, int, str]]) -> list[bytes | None]:
    """
    The encoded metadata of the records at (offset, length, base) each,
    *places* sorted by offset (see :func:`_read_cache_record`): records
    close to each other (those of one batch of messages usually follow
    each other) are read with one ``pread`` per span instead of a seek and
    a read each.
    """
    out: list[bytes | None] = []
    i, n = 0, len(places)
    while i < n:
        coff, clen, _ = places[i]
        if coff < 0 or clen <= 0:
            out.append(None)
            i += 1
            continue
        start, end, j = coff, coff + clen, i + 1
        while j < n:
            c, length, _ = places[j]
            if c < 0 or length <= 0 or c > end + SPAN_GAP or max(end, c + length) - start > SPAN_MAX:
                break
            end = max(end, c + length)
            j += 1
        try:
            blob = os.pread(fd, end - start, start)
        except OSError:
            blob = b""
        for c, length, b in places[i:j]:
            out.append(_check_record(blob[c - start : c - start + length], length, b))
        i = j
    return out


def _cache_record(base: str, encoded: bytes) -> bytes:
    return base.encode("utf-8", "surrogateescape") + b"\n" + encoded + b"\n"


def cache_append(path: str, base: str, encoded: bytes) -> tuple[int, int]:
    """
    Append a metadata record to the folder's cache; return its (offset,
    length).  See :func:`cache_append_many`.
    """
    return cache_append_many(path, [(base, encoded)])[0]


def cache_append_many(path: str, items: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    """
    Append metadata records, (base name, encoded metadata) each, to the
    folder's cache with one ``write``; return each record's (offset,
    length).  ``O_APPEND`` places concurrent writers' writes one after the
    other; the file position after the write gives the end of the last
    record.  A failure is not fatal: every record gets (-1, 0) and its
    message is parsed again when asked for.
    """
    records = [_cache_record(base, encoded) for base, encoded in items]
    blob = b"".join(records)
    failed = [(-1, 0)] * len(records)
    try:
        fd = os.open(os.path.join(path, CACHE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, blob)
            end = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
    except OSError:
        return failed
    if written != len(blob):
        return failed
    out = []
    offset = end - len(blob)
    for record in records:
        out.append((offset, len(record)))
        offset += len(record)
    return out


def _compact_cache(path: str, index: ParsedIndex) -> None:
    """Rewrite the cache with only live records, and the index to match."""
    cache_path = os.path.join(path, CACHE)
    tmp_cache = cache_path + ".tmp"
    with open(cache_path, "rb") as old, open(tmp_cache, "wb") as new:
        pos = 0
        for uid in sorted(index.records):
            rec = index.records[uid]
            data = _read_cache_record(old, rec.coff, rec.clen, rec.base)
            if data is None:
                rec.coff, rec.clen = -1, 0
                continue
            record = _cache_record(rec.base, data)
            new.write(record)
            rec.coff, rec.clen = pos, len(record)
            pos += len(record)
        new.flush()
        os.fsync(new.fileno())
    assert index.uidvalidity is not None
    lines = [index_header(index.uidvalidity, index.uidnext, index.modseq, index.recent)]
    # The expunge history (QRESYNC) is kept, merged.
    horizon = index.modseq if index.expunge_horizon is None else index.expunge_horizon
    index.expunged, history = compact_expunge_log(sorted(index.expunged, key=lambda e: e[0]), horizon)
    index.expunge_horizon = horizon
    lines.append(history)
    for uid in sorted(index.records):
        r = index.records[uid]
        lines.append(
            index_add(
                uid, r.modseq, r.size, r.date, r.coff, r.clen, r.base, r.flags, r.raw, r.save_date, r.email_id
            )
        )
    replace_file(os.path.join(path, INDEX), "".join(lines).encode("utf-8", "surrogateescape"))
    os.replace(tmp_cache, cache_path)
    index.lines = len(index.records)
    index.version = INDEX_VERSION


def file_sizes(full_path: str, name: str, st_size: int | None = None) -> tuple[int, int]:
    """
    The (served, raw) sizes of the message file at *full_path* named
    *name*: with CRLF line ends, and as stored.  A ``W=`` in the name gives
    the first, as Dovecot writes it; otherwise the file is read through
    and its bare LFs counted.

    Raises:
        OSError: ``FileNotFoundError`` when it was renamed or removed,
            :class:`NotAMessageFile` (one too) when it is not a regular file.
    """
    if st_size is None:
        st = os.lstat(full_path)
        if not stat.S_ISREG(st.st_mode):
            raise NotAMessageFile(full_path)
        st_size = st.st_size
    w = name_sizes(split_file_name(name)[0])[1]
    if w is not None and w >= st_size:
        return w, st_size
    fd, _ = open_message_fd(full_path)
    try:
        raw, bare = count_file(fd, st_size)
    finally:
        os.close(fd)
    return raw + bare, raw


def _complete_records(path: str, index: ParsedIndex, listing: dict[str, tuple[str, str]]) -> None:
    """
    Count the files of the records an older index left without their file
    size (once, then the index is rewritten).  A file with bare LFs loses
    its cached metadata, which was parsed with those line ends.
    """
    for rec in index.records.values():
        if rec.raw is not None:
            continue
        found = listing.get(rec.base)
        if found is None:
            continue  # gone: the scan's comparison expunges it
        try:
            size, raw = file_sizes(os.path.join(path, *found), found[1])
        except OSError:
            continue
        if size != raw:
            rec.coff, rec.clen = -1, 0
        rec.size, rec.raw = size, raw


def read_folder(path: str) -> Loaded:
    """
    Read what opening a folder needs: the index and the directory listing
    (no message file is read, except once after an upgrade: the files of
    records from a version 1 index are counted, see
    :func:`_complete_records`).  Compacts the metadata cache when most of
    it is dead records.

    Raises:
        NoSuchMailbox: the folder is not a Maildir.
    """
    if not os.path.isdir(os.path.join(path, "cur")):
        raise NoSuchMailbox(path)
    mailbox_id = folder_mailbox_id(path)
    index = None
    try:
        with open(os.path.join(path, INDEX), "rb") as f:
            index = parse_index(f.read())
    except FileNotFoundError:
        pass
    scan = scan_folder(path)
    assert scan is not None
    upgraded = False
    if index is not None and (
        index.version < INDEX_VERSION or any(r.raw is None for r in index.records.values())
    ):
        _complete_records(path, index, scan.listing)
        upgraded = True
    if index is not None and not index.damaged:
        try:
            cache_size = os.path.getsize(os.path.join(path, CACHE))
        except OSError:
            cache_size = 0
        live = sum(r.clen for r in index.records.values())
        if cache_size > 2 * live + CACHE_SLACK:
            _compact_cache(path, index)
    return Loaded(index, scan, upgraded, mailbox_id)


def folder_mailbox_id(path: str) -> str:
    """
    The MAILBOXID of the folder at *path*, from its :data:`MAILBOX_ID` file;
    a folder without one (new, made by another program, or from before
    OBJECTID) gets a new id, written there (synced) before it is used.  A
    file that does not hold a valid id is replaced (the mailbox cannot have
    used it).  Should the write fail, the id holds for this process only.
    """
    id_path = os.path.join(path, MAILBOX_ID)
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open(id_path, encoding="ascii") as f:
            found = f.read(300).strip()
        if is_object_id(found):
            return found
    mailbox_id = new_mailbox_id()
    with contextlib.suppress(OSError):
        write_file_durably(id_path, mailbox_id.encode("ascii") + b"\n")
    return mailbox_id


def _find(path: str, base: str) -> tuple[str, str] | None:
    """
    Find the current file of a message by its base name (after a rename):
    a regular file (see :func:`scan_folder`).
    """
    for sub in ("cur", "new"):
        try:
            entries = os.scandir(os.path.join(path, sub))
        except FileNotFoundError:
            continue
        with entries:
            for entry in entries:
                if split_file_name(entry.name)[0] == base:
                    with contextlib.suppress(OSError):
                        if entry.is_file(follow_symlinks=False):
                            return sub, entry.name
    return None


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def deliver_bytes(
    path: str, unique: str, data: bytes, letters: str | None, date: float, metadata: bytes | None
) -> Delivered:
    """
    Deliver *data* as a new message (Maildir delivery: write to ``tmp/``,
    fsync, rename into ``new/``, or ``cur/`` when it has flags).  The caller
    syncs the target directory.  *metadata* is the encoded metadata, or
    ``None`` to parse it here.  The octets are stored as given; bare LFs
    among them (an IMAP APPEND from a client that sends LF alone) are
    served as CRLF, and the name then carries ``W=``.
    """
    raw = len(data)
    bare = bare_lf_count(data)
    size = raw + bare
    base = f"{unique},S={raw},W={size}" if bare else f"{unique},S={raw}"
    tmp = os.path.join(path, "tmp", base)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    sub = "cur" if letters else "new"
    name = file_name(base, letters or None)
    try:
        os.utime(tmp, (date, date))
        before = dir_mtimes(path)
        os.rename(tmp, os.path.join(path, sub, name))
    except BaseException:
        _unlink_quietly(tmp)
        raise
    after = dir_mtimes(path)
    if metadata is None or bare:
        metadata = mime.encode_metadata(mime.parse_metadata(to_crlf(data) if bare else data))
    coff, clen = cache_append(path, base, metadata)
    return Delivered(sub, name, size, coff, clen, raw if bare else None, before, after)


def _copy_durably(src: str, tmp: str, dst: str, date: float | None, message_file: bool = False) -> None:
    """
    Copy the file *src* to *dst* through *tmp*, synced; a *message_file*
    (one of a folder's) is opened as every message file is
    (:func:`open_message_file`).

    Raises:
        NotAMessageFile: a *message_file* that is not a regular file.
    """
    with open_message_file(src) if message_file else open(src, "rb") as fin, open(tmp, "xb") as fout:
        try:
            shutil.copyfileobj(fin, fout, 1 << 20)
            fout.flush()
            os.fsync(fout.fileno())
        except BaseException:
            fout.close()
            _unlink_quietly(tmp)
            raise
    try:
        if date is not None:
            os.utime(tmp, (date, date))
        os.rename(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise


def deliver_file(
    path: str, unique: str, src: str, fsynced: bool, letters: str | None, date: float, metadata: bytes | None
) -> Delivered:
    """
    Deliver the message file *src*: hard-link it into ``new/`` (or ``cur/``)
    where possible, syncing the file itself when the caller had not; else
    copy it through ``tmp/``.  The caller syncs the target directory.  The
    file has CRLF line ends (the :class:`txmail.model.MessageSource`
    contract): it is not read to count them.
    """
    size = os.stat(src).st_size
    base = f"{unique},S={size}"
    sub = "cur" if letters else "new"
    name = file_name(base, letters or None)
    dst = os.path.join(path, sub, name)
    before = dir_mtimes(path)
    try:
        os.link(src, dst)
    except OSError:
        _copy_durably(src, os.path.join(path, "tmp", base), dst, date)
    else:
        if not fsynced:
            try:
                fsync_file(dst)
            except BaseException:
                _unlink_quietly(dst)
                raise
    after = dir_mtimes(path)
    if metadata is None:
        with open(dst, "rb") as f:
            metadata = mime.encode_metadata(mime.parse_metadata(f))
    coff, clen = cache_append(path, base, metadata)
    return Delivered(sub, name, size, coff, clen, None, before, after)


def deliver_stream(
    path: str,
    unique: str,
    opener: Callable[[], BinaryIO],
    letters: str | None,
    date: float,
    metadata: bytes | None,
) -> Delivered:
    """
    Deliver the message that ``opener()`` reads (a
    :class:`txmail.model.MessageSource` without a local file or data):
    streamed into ``tmp/`` in pieces, counting bare LFs on the way, then
    fsync and rename as :func:`deliver_bytes` does.  The caller syncs the
    target directory.
    """
    tmp = os.path.join(path, "tmp", unique)
    raw = bare = 0
    after_cr = False
    try:
        with opener() as src, open(tmp, "xb") as out:
            while chunk := src.read(CHUNK):
                out.write(chunk)
                raw += len(chunk)
                bare += bare_lf_count(chunk, after_cr)
                after_cr = chunk[-1] == 0x0D
            out.flush()
            os.fsync(out.fileno())
        os.utime(tmp, (date, date))
    except BaseException:
        _unlink_quietly(tmp)
        raise
    size = raw + bare
    base = f"{unique},S={raw},W={size}" if bare else f"{unique},S={raw}"
    sub = "cur" if letters else "new"
    name = file_name(base, letters or None)
    dst = os.path.join(path, sub, name)
    try:
        before = dir_mtimes(path)
        os.rename(tmp, dst)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    after = dir_mtimes(path)
    if metadata is None or bare:
        with open(dst, "rb") as f:
            metadata = mime.encode_metadata(mime.parse_metadata(CRLFFile(f, size) if bare else f))
    coff, clen = cache_append(path, base, metadata)
    return Delivered(sub, name, size, coff, clen, raw if bare else None, before, after)


def pickup_files(
    path: str, items: list[tuple[str, str]]
) -> list[tuple[str, str, int, int | None, float, int, int]]:
    """
    Take in messages another program put into the folder: the date (the
    file's mtime, as Dovecot uses) from ``stat``, the sizes from
    :func:`file_sizes` (the name's ``W=``, else a read through the file
    counting bare LFs: ~15 us for 10 KB from the page cache).  The messages
    are not parsed: their metadata is parsed and cached the first time it
    is asked for (:func:`read_metadata`).  Files that vanished meanwhile,
    and entries that are not regular files (any more: the listing left the
    others out), are left out.  Returns (sub, name, size, raw size or
    ``None`` when the same, date, cache offset, cache length) tuples; the
    offset is -1 (nothing cached yet).
    """
    out = []
    for sub, name in items:
        full = os.path.join(path, sub, name)
        try:
            if name_sizes(split_file_name(name)[0])[1] is not None:
                st = os.lstat(full)
                if not stat.S_ISREG(st.st_mode):
                    continue  # replaced since the listing: left out as gone
                size, raw = file_sizes(full, name, st.st_size)
            else:
                # To be read through anyway: opened first, then fstat (one
                # path lookup instead of two).
                fd, st = open_message_fd(full)
                try:
                    raw, bare = count_file(fd, st.st_size)
                finally:
                    os.close(fd)
                size = raw + bare
        except OSError:
            continue  # gone meanwhile (or not a regular file): tried again next time
        out.append((sub, name, size, None if raw == size else raw, st.st_mtime, -1, 0))
    return out


def rename_files(path: str, ops: list[tuple[str, str, str, str]]) -> Changed:
    """
    Rename message files for flag changes: (old sub, old name, new sub, new
    name) each.  A file renamed behind our back is found by its base name;
    ``None`` marks a file that is gone.  Returns the list of new places
    (:class:`Changed`).
    """
    before = dir_mtimes(path)
    out: list[tuple[str, str] | None] = []
    for old_sub, old_name, new_sub, new_name in ops:
        dst = os.path.join(path, new_sub, new_name)
        try:
            os.rename(os.path.join(path, old_sub, old_name), dst)
        except FileNotFoundError:
            found = _find(path, split_file_name(old_name)[0])
            if found is None:
                out.append(None)
                continue
            try:
                os.rename(os.path.join(path, *found), dst)
            except FileNotFoundError:
                out.append(None)
                continue
        out.append((new_sub, new_name))
    return Changed(out, before, dir_mtimes(path))


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def unlink_files(path: str, items: list[tuple[str, str]]) -> Changed:
    """Remove message files; one renamed behind our back is found by base name."""
    before = dir_mtimes(path)
    for sub, name in items:
        try:
            os.unlink(os.path.join(path, sub, name))
        except FileNotFoundError:
            found = _find(path, split_file_name(name)[0])
            if found is not None:
                _unlink_quietly(os.path.join(path, *found))
    return Changed(None, before, dir_mtimes(path))


def open_file(path: str, sub: str, name: str, size: int | None = None) -> BinaryIO:
    """
    Open a message file.  The open file keeps its content even when the
    message is renamed or removed later.  With *size* (the size served, for
    a file holding bare LFs) the content is converted to CRLF line ends on
    the way (:class:`txmail.store._crlf.CRLFFile`).

    Raises:
        NoSuchMessage: the file is gone.
    """
    f = _open_raw(path, sub, name)
    return f if size is None else CRLFFile(f, size)  # type: ignore[return-value]  # a CRLFFile is a readable binary file


def _open_raw(path: str, sub: str, name: str) -> BinaryIO:
    return _at_current_name(path, sub, name, _open_binary)


def _open_binary(path: str, sub: str, name: str) -> BinaryIO:
    return open_message_file(os.path.join(path, sub, name))


def open_message_file(full_path: str) -> BinaryIO:
    """
    The message file at *full_path* opened for reading, a buffered binary
    file (:func:`open_message_fd`: a regular file, not through a link).

    Raises:
        OSError: ``FileNotFoundError`` when it is gone,
            :class:`NotAMessageFile` (one too) when it is not a regular file.
    """
    fd, _ = open_message_fd(full_path)
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


_R = TypeVar("_R")


def _at_current_name(path: str, sub: str, name: str, fn: Callable[[str, str, str], _R]) -> _R:
    """
    ``fn(path, sub, name)`` on a message file, or on its current name when
    it was renamed (its flags changed) meanwhile.

    Raises:
        NoSuchMessage: the file is gone (*fn* raised ``FileNotFoundError``,
            as it does for an entry that is not a regular file,
            :class:`NotAMessageFile`).
    """
    try:
        return fn(path, sub, name)
    except FileNotFoundError:
        pass
    found = _find(path, split_file_name(name)[0])
    if found is not None:
        try:
            return fn(path, *found)
        except FileNotFoundError:
            pass
    raise NoSuchMessage(name)


def read_file(path: str, sub: str, name: str, convert: bool = False) -> bytes:
    """
    The whole content of a message file (see :func:`open_file`), with bare
    LFs turned into CRLF when *convert*.
    """
    with _open_raw(path, sub, name) as f:
        data = f.read()
    return to_crlf(data) if convert else data


def read_known_file(full_path: str, size: int) -> bytes:
    """
    The content of the file at *full_path*, expected to hold about *size*
    octets: one ``open``, as few ``read`` calls as the file needs, no
    buffered file object (the cheapest way to read a small file).

    Raises:
        OSError: ``FileNotFoundError`` when it was renamed or removed,
            :class:`NotAMessageFile` (one too) when it is not a regular file.
    """
    fd, st = open_message_fd(full_path)
    try:
        want = max(size, st.st_size, 4096) + 1
        data = os.read(fd, want)
        if len(data) < want:
            return data  # a short read of a regular file is its end
        chunks = [data]
        while data:
            data = os.read(fd, want)
            chunks.append(data)
        return b"".join(chunks)
    finally:
        os.close(fd)


#: Messages up to this size (as stored) are parsed for their header
#: fields alone when first asked for (see :func:`read_metadata`).
HEADER_ONLY_SIZE = 256 * 1024

#: What :func:`read_metadata` calls to get the function that completes the
#: header-only metadata of a message: (uid, header fields) -> a function
#: returning (envelope, body structure, lines), called in the reactor thread.
Completion = Callable[[int, tuple[tuple[str, str], ...]], Callable[[], tuple[Any, Any, int]]]


def read_metadata(
    path: str,
    reqs: list[tuple[int, int, int, str, str, str, bool]],
    complete: Completion | None = None,
    pool: ParsePool | None = None,
) -> tuple[dict[int, MessageMetadata], list[tuple[int, int, int]], columns.Appended | None]:
    """
    Read cached metadata for (uid, offset, length, base, sub, name,
    convert) each; a message whose record is missing or damaged is parsed
    again (with CRLF line ends when *convert*) and re-cached.  Returns the
    metadata by UID, the (uid, offset, length) of the new cache records,
    and the header columns appended for the messages parsed (where they
    went in the columns file: :func:`columns.append_columns_at`), if any.

    With *complete*, a message of at most :data:`HEADER_ONLY_SIZE` octets
    is parsed for its header fields alone (:func:`txmail.mime.parse_header_section`,
    a fifth of a whole parse) and cached so
    (:func:`txmail.mime.encode_header_metadata`); its envelope and body
    structure come from ``complete(uid, headers)`` when first used.
    Without it, header-only records are parsed again as a whole: by the
    worker processes of *pool* when given and at least :data:`POOL_LEAST`
    are (:mod:`txmail.store._parse_pool`; those it did not parse are parsed
    here, as every one without it).
    """
    out: dict[int, MessageMetadata] = {}
    parsed: list[tuple[int, str, bytes, tuple[str, ...]]] = []
    ordered = sorted(reqs, key=lambda r: r[1])
    metadata = _cached_metadata(path, ordered, complete)
    pooled = _pool_parse(path, ordered, metadata, pool) if complete is None else {}
    for i, (uid, _, _, base, sub, name, convert) in enumerate(ordered):
        md = metadata[i]
        if md is None:
            if i in pooled:
                md, encoded = pooled[i]
            else:
                try:
                    md, encoded = _parse_file(path, sub, name, convert, uid, complete)
                except NoSuchMessage:
                    continue
            parsed.append((uid, base, encoded, header_columns_of(md)))
        out[uid] = md
    return (out, *_keep_parsed(path, parsed))


def derive_records(
    path: str,
    reqs: list[tuple[int, int, int, str, str, str, bool]],
    derive: Callable[[MessageMetadata], Any],
    pool: ParsePool | None = None,
) -> tuple[dict[int, Any], list[tuple[int, int, int]], columns.Appended | None]:
    """
    ``derive(metadata)`` of each message of *reqs* (as :func:`read_metadata`
    takes them), by UID, with the (uid, offset, length) of the new cache
    records and the header columns appended, as :func:`read_metadata`
    returns them.  The metadata comes from the cache, or from a whole parse
    (cached, and its header columns appended, as :func:`read_metadata`
    does); with *pool*, at least :data:`POOL_LEAST` to parse and *derive*
    found by name (:func:`txmail.store._parse_pool.function_name`), the
    worker processes parse them and run *derive* too, so that none of that
    work is done in this process.  Messages gone are left out.
    """
    out: dict[int, Any] = {}
    parsed: list[tuple[int, str, bytes, tuple[str, ...]]] = []
    ordered = sorted(reqs, key=lambda r: r[1])
    metadata = _cached_metadata(path, ordered, None)
    answers: dict[int, list[Any]] = {}
    derive_name = None if pool is None else function_name(derive)
    if derive_name is not None:
        for i, answer in _pooled(path, ordered, metadata, pool, (_COLUMNS_OF, derive_name)).items():
            if type(answer[1]) is tuple and len(answer[1]) % 2 == 0:  # columns: (name, value, ...)
                answers[i] = answer
    for i, (uid, _, _, base, sub, name, convert) in enumerate(ordered):
        md = metadata[i]
        if md is not None:
            out[uid] = derive(md)
            continue
        answer = answers.get(i)
        if answer is not None:
            encoded, cols, out[uid] = answer
        else:
            try:
                md, encoded = _parse_file(path, sub, name, convert, uid, None)
            except NoSuchMessage:
                continue
            cols, out[uid] = header_columns_of(md), derive(md)
        parsed.append((uid, base, encoded, cols))
    return (out, *_keep_parsed(path, parsed))


def header_columns_of(md: MessageMetadata) -> tuple[str, ...]:
    """The header columns of a message (:data:`txmail.interfaces.HEADER_COLUMNS`) from its metadata."""
    return mime.header_columns(md.headers, HEADER_COLUMNS)


#: :func:`header_columns_of` by name, for the parse workers.
_COLUMNS_OF = f"{__name__}:header_columns_of"


def _cached_metadata(
    path: str, ordered: list[tuple[int, int, int, str, str, str, bool]], complete: Completion | None
) -> list[MessageMetadata | None]:
    """The cached metadata of each of *ordered* (in cache order), ``None`` where it needs a parse."""
    with _open_cache(path) as cache:
        if cache is None:
            records: list[bytes | None] = [None] * len(ordered)
        else:
            records = _read_cache_records(cache.fileno(), [(r[1], r[2], r[3]) for r in ordered])
    metadata: list[MessageMetadata | None] = [None] * len(ordered)
    for i, ((uid, *_), data) in enumerate(zip(ordered, records, strict=True)):
        if data is not None:
            with contextlib.suppress(ValueError):
                metadata[i] = mime.decode_metadata(data, _completion(complete, uid, data))
    return metadata


def _keep_parsed(
    path: str, parsed: list[tuple[int, str, bytes, tuple[str, ...]]]
) -> tuple[list[tuple[int, int, int]], columns.Appended | None]:
    """
    Cache the records of the messages just parsed, (uid, base, encoded
    record, header columns) each, and append their header columns: the
    (uid, offset, length) of the records and where the columns went.
    """
    if not parsed:
        return [], None
    # One write for every record of this batch (the first FETCH of a
    # mailbox of dropped-in files parses them all).
    places = cache_append_many(path, [(base, encoded) for _, base, encoded, _ in parsed])
    # Their header columns too, while the fields are in hand (IHeaderColumns).
    appended = columns.append_columns_at(path, HEADER_COLUMNS, [(base, cols) for _, base, _, cols in parsed])
    return [(uid, off, length) for (uid, *_), (off, length) in zip(parsed, places, strict=True)], appended


#: ``read_metadata`` asks its pool to parse when at least this many messages
#: need a whole parse (fewer are parsed inline: a round trip to the workers
#: costs about as much as a few parses).
POOL_LEAST = 64


def _pool_parse(
    path: str,
    ordered: list[tuple[int, int, int, str, str, str, bool]],
    metadata: list[MessageMetadata | None],
    pool: ParsePool | None,
) -> dict[int, tuple[MessageMetadata, bytes]]:
    """
    The metadata and encoded record that the workers of *pool* parsed, by
    index in *ordered*, of the messages lacking metadata.
    """
    out = {}
    for i, encoded in _pooled(path, ordered, metadata, pool).items():
        with contextlib.suppress(ValueError):  # not a record (never seen): parsed here again
            out[i] = (mime.decode_metadata(encoded), encoded)
    return out


def _pooled(
    path: str,
    ordered: list[tuple[int, int, int, str, str, str, bool]],
    metadata: list[MessageMetadata | None],
    pool: ParsePool | None,
    derive: tuple[str, ...] = (),
) -> dict[int, Any]:
    """
    What the workers of *pool* answered (:meth:`ParsePool.parse_deriving`
    with *derive*), by index in *ordered*, for the messages lacking
    metadata that they parsed; nothing when fewer than :data:`POOL_LEAST`
    lack it.
    """
    todo = [i for i, md in enumerate(metadata) if md is None]
    if pool is None or len(todo) < POOL_LEAST:
        return {}
    # The files' sizes from their names (S=), for the time the workers get.
    octets = sum(name_sizes(ordered[i][3])[0] or 0 for i in todo)
    items = [(ordered[i][4], ordered[i][5], ordered[i][6]) for i in todo]
    answers = pool.parse_deriving(path, items, derive, octets)
    return {i: answer for i, answer in zip(todo, answers, strict=True) if answer is not None}


def _completion(
    complete: Completion | None, uid: int, data: bytes
) -> Callable[[], tuple[Any, Any, int]] | None:
    """For a header-only record *data*, the function completing it (decoded lazily, headers first)."""
    if complete is None:
        return None

    def later() -> tuple[Any, Any, int]:
        # The header fields are decoded again only when the structures are
        # wanted: the record itself carries no function.
        return complete(uid, mime.decode_metadata(data, _never).headers)()

    return later


def _never() -> tuple[Any, Any, int]:  # pragma: no cover - only decodes the headers
    raise AssertionError("not called")


def _parse_file(
    path: str, sub: str, name: str, convert: bool, uid: int, complete: Completion | None
) -> tuple[MessageMetadata, bytes]:
    """
    Parse a message file: its header alone when *complete* is given and it
    is small, else whole, as the parse workers do
    (:func:`txmail.store._parse_pool.parse_file_metadata`).
    """
    if complete is not None:
        with _open_raw(path, sub, name) as f:
            data = f.read(HEADER_ONLY_SIZE + 1)
        if len(data) <= HEADER_ONLY_SIZE:
            if convert:
                data = to_crlf(data)
            header_size, headers = mime.parse_header_section(data)
            md = MessageMetadata.deferred(header_size, headers, complete(uid, headers))
            return md, mime.encode_header_metadata(header_size, headers)
    md = _at_current_name(path, sub, name, functools.partial(parse_file_metadata, convert=convert))
    return md, mime.encode_metadata(md)


def link_files(
    src_path: str,
    dst_path: str,
    items: list[tuple[str, str, str, str | None, float, int, int, int, int | None]],
) -> Changed:
    """
    Copy messages into another folder: hard links where possible, else
    durable copies.  Items are (sub, name, unique, target letters, date,
    cache offset, cache length, size served, raw size or ``None``); ``None``
    marks a source that is gone.  The metadata cache record and the sizes
    go along (a file with bare LFs gets ``W=`` in its new name).  All or
    nothing: on an error the files made so far are removed.  The caller
    syncs the target directories.  Returns the list (:class:`Changed`, with
    the target's times).
    """
    made: list[str] = []
    out: list[Delivered | None] = []
    before = dir_mtimes(dst_path)
    with _open_cache(src_path) as cache:
        try:
            _link_all(src_path, dst_path, items, cache, made, out)
        except BaseException:
            for p in made:
                _unlink_quietly(p)
            raise
    return Changed(out, before, dir_mtimes(dst_path))


def _link_all(
    src_path: str,
    dst_path: str,
    items: list[tuple[str, str, str, str | None, float, int, int, int, int | None]],
    cache: BinaryIO | None,
    made: list[str],
    out: list[Delivered | None],
) -> None:
    """
    The work of :func:`link_files`; records the files made in *made*.  A
    source that is not a regular file (replaced since it was listed) is
    gone, as a removed one is: a link to it (``link`` does not follow a
    symbolic link) is removed, and a copy reads only a regular file.
    """
    for sub, name, unique, letters, date, coff, clen, size, raw in items:
        src = os.path.join(src_path, sub, name)
        src_base = split_file_name(name)[0]
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            found = _find(src_path, src_base)
            if found is None:
                out.append(None)
                continue
            src = os.path.join(src_path, *found)
            st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode):
            out.append(None)
            continue
        base = f"{unique},S={st.st_size}" if raw is None else f"{unique},S={raw},W={size}"
        new_sub = "cur" if letters else "new"
        new_name = file_name(base, letters or None)
        dst = os.path.join(dst_path, new_sub, new_name)
        try:
            os.link(src, dst)
        except OSError:
            try:
                _copy_durably(src, os.path.join(dst_path, "tmp", base), dst, date, message_file=True)
            except NotAMessageFile:
                out.append(None)
                continue
        made.append(dst)
        if not stat.S_ISREG(os.lstat(dst).st_mode):
            # The source was replaced between the lstat and the link.
            made.pop()
            _unlink_quietly(dst)
            out.append(None)
            continue
        encoded = _read_cache_record(cache, coff, clen, src_base) if cache is not None else None
        if encoded is None:
            with open_message_file(dst) as f:
                encoded = mime.encode_metadata(mime.parse_metadata(f if raw is None else CRLFFile(f)))
        new_off, new_len = cache_append(dst_path, base, encoded)
        out.append(Delivered(new_sub, new_name, size, new_off, new_len, raw))


def replace_file(path: str, data: bytes) -> None:
    """Replace *path* atomically with *data*, synced (temp file and rename)."""
    write_file_durably(path, data, sync_dir=False)


def write_small(path: str, data: bytes) -> None:
    """Replace a small state file atomically (temp file and rename, not synced)."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# -- folders --------------------------------------------------------------


def list_folders(root: str) -> set[str]:
    """The names of the selectable Maildir++ folders below a user's directory."""
    out = set()
    for entry in os.listdir(root):
        name = folder_from_dir_name(entry)
        if name is not None and os.path.isdir(os.path.join(root, entry, "cur")):
            out.add(name)
    return out


def _make_maildir(path: str, uidvalidity: int, folder: bool) -> None:
    os.makedirs(path, exist_ok=True)
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    if folder:
        # Maildir++: marks a sub-folder (for delivery agents).
        with open(os.path.join(path, "maildirfolder"), "ab"):
            pass
    replace_file(os.path.join(path, INDEX), index_header(uidvalidity, 1, 1, 0).encode())


def create_folders(root: str, folders: list[tuple[str, int]], must_create: str | None) -> None:
    """
    Create Maildir++ folders (directory name, UIDVALIDITY) that do not exist.

    Raises:
        MailboxExists: the folder *must_create* (a directory name) exists.
    """
    for dir_name, uidvalidity in folders:
        path = os.path.join(root, dir_name)
        if os.path.isdir(os.path.join(path, "cur")):
            if dir_name == must_create:
                raise MailboxExists(dir_name)
            continue
        _make_maildir(path, uidvalidity, folder=True)
    fsync_dir(root)


def remove_folder(root: str, dir_name: str) -> None:
    """Remove a folder: renamed away first (atomic), then deleted."""
    trash = os.path.join(root, DELETED_PREFIX + secrets.token_hex(8))
    os.rename(os.path.join(root, dir_name), trash)
    fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)


def rename_folders(root: str, renames: list[tuple[str, str]], parents: list[tuple[str, int]]) -> None:
    """Rename folder directories (old, new), then create missing parents."""
    done = []
    try:
        for old, new in renames:
            if os.path.exists(os.path.join(root, new)):
                raise MailboxExists(new)
            os.rename(os.path.join(root, old), os.path.join(root, new))
            done.append((old, new))
    except BaseException:
        for old, new in reversed(done):
            os.rename(os.path.join(root, new), os.path.join(root, old))
        raise
    create_folders(root, parents, None)


def make_user_dir(root: str) -> None:
    """Create a user's INBOX Maildir (``tmp/ new/ cur/``) if missing."""
    for sub in ("tmp", "new", "cur"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
