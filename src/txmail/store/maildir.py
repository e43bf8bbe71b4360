"""
The Maildir mailbox store: txmail's default, on disk, interoperable with
Dovecot, mutt and other Maildir tools.

Layout
======

``alice@Example.Test`` lives in ``<root>/example.test/alice/``.  That
directory is the INBOX Maildir (``tmp/ new/ cur/``); other mailboxes are
Maildir++ folders beside them (``.Sent/``, ``.Archive.2024/`` for
``Archive/2024``; see :mod:`txmail.store._maildir_format` for names, file
names and flag letters).  Beside the messages of each folder:

* ``txmail-index``: an append-only log of UIDs, flags, sizes (served
  and on disk), internal dates, modseqs, save dates (RFC 8514) and EMAILIDs
  (RFC 8474), with UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and the
  ``\\Recent`` watermark.  It is rewritten (temp
  file and rename) when it holds more than twice as many records as live
  messages.
* ``txmail-cache``: parsed metadata (:func:`txmail.mime.encode_metadata`),
  one record per message appended at delivery; the index holds each
  record's offset, so opening a mailbox reads neither the cache nor any
  message.  Dead records are dropped when the mailbox is next opened.  A
  file another program dropped in gets a record of its header fields alone
  when first asked for, and a whole one when its envelope or body
  structure is first used (:meth:`MaildirMailbox.get_metadata`).
* ``txmail-columns``: the few raw header fields SEARCH, SORT and THREAD
  read (:class:`txmail.interfaces.IHeaderColumns`), blocks of records keyed
  by base file name, appended when a message is first parsed or first asked
  for, read whole in one go (:mod:`txmail.store._maildir_columns`).
* ``txmail-lines``: the lines of the header fields mail clients fetch on
  their first sync (:class:`txmail.interfaces.IHeaderLines`), in the same
  format, written and read alike.
* ``txmail-records-KIND``: what a protocol keeps of each message
  (:class:`txmail.interfaces.IRecordCache`; IMAP's rendered ENVELOPE and
  BODYSTRUCTURE), in the same format, appended when first derived.
* ``dovecot-keywords``: keyword letters, as Dovecot keeps them.
* ``txmail-mailboxid``: the folder's MAILBOXID (RFC 8474), written when
  the folder is first opened; it moves with the directory on a rename.

In the user's directory: ``subscriptions`` (one name per line),
``txmail-special-use.json`` (mailbox name -> RFC 6154 attribute) and
``txmail-uidvalidity`` (the last UIDVALIDITY given, so a re-created name
gets a new one).  Sieve scripts (:class:`txmail.interfaces.ISieveScripts`)
are where Dovecot keeps them: ``sieve/NAME.sieve``, the active one linked
from ``.dovecot.sieve`` (see :mod:`txmail.store._maildir_sieve`).

Theory of operation
===================

* All in-memory state (the message table, locations, keyword letters)
  belongs to the reactor thread, and so do the writes of the index log and
  of the two tiny state files ``dovecot-keywords`` and
  ``txmail-uidvalidity``: short unbuffered writes, never synced, so that
  their order is the order of the changes.  All other file work (writing
  and syncing messages, directory syncs, renames, unlinks, listings,
  reading messages and the metadata cache, parsing, index rewrites) runs
  through ``run_blocking``, in :mod:`txmail.store._maildir_io`, which never
  touches a mailbox object.  The index is not synced (Dovecot's
  ``fsync=optimized`` trade-off): a crash can lose its last records, and
  the next open rebuilds them from the files, where a message whose record
  was lost gets the next free UID.
* ``append``: the message is written to ``tmp/``, synced, renamed into
  ``new/`` (``cur/`` with its flag letters when it has flags) and the
  directory synced; only then, in the reactor thread, is the UID assigned,
  the index record written, listeners told and the Deferred fired.
  Appends run concurrently; directory syncs of one directory are shared
  (group commit, :class:`_DirSync`).  A ``MessageSource`` with a local
  file is hard-linked; one with neither a file nor its data in memory is
  streamed into ``tmp/``.
* Flag changes, expunges, copies/moves out, and rescans (``refresh``) of
  one mailbox run one at a time (``_serial``), each doing its file work
  first and then committing to memory and index, so memory always mirrors
  disk.  Appends are not serialised; a rescan ignores files of appends in
  flight (``_pending``) and judges only messages known when it began.
* Files added, renamed or removed by other programs are picked up on open
  and on :meth:`MaildirMailbox.refresh`: new files get UIDs in file name
  order (metadata parsed then), vanished ones are expunged, changed flag
  letters become flag changes.  Opening takes the index in, and open and
  rescan compare the known messages with the listing, :data:`BATCH`
  messages per reactor turn, so a mailbox of 100,000 messages does not
  stop other connections for long (measured: the longest pause while one
  opens after a restart went from ~340 ms to ~80 ms, the rest being the
  garbage collector); what the comparison finds is committed at the end.
* Only regular files are messages.  A listing leaves out the entries of
  ``new/`` and ``cur/`` that are not (a symbolic link, to a file outside
  the Maildir or dangling, a FIFO, a directory, a socket, a device; told
  by the type in the directory entry, no ``stat``), logging each once; a
  message file is opened without following a link and without waiting for
  a FIFO's writer, and one found not to be a regular file when opened
  (replaced after it was listed) is a message another program deleted
  (``NoSuchMessage``, expunged by the next listing), never served
  (:func:`txmail.store._parse_pool.open_message_fd`).
* Line ends: IMAP and POP3 send messages with CRLF, and IMAP's sizes
  count it (RFC 3501 sections 2.3.4 and 7.4.2), but most Maildir writers
  (Postfix's ``local``/``virtual``, Dovecot's LDA, procmail, mutt) store
  LF alone.  A file with bare LFs is served converted, as Dovecot does:
  ``read_message``, ``open_message`` (converted chunk by chunk, see
  :mod:`txmail.store._crlf`), metadata parsed on the converted form, and
  ``MessageInfo.size`` the converted size; the file stays as it is.  A
  file another program put there is counted once when it is taken in (a
  read through it, unless its name carries Dovecot's ``W=``, the size with
  CRLF); the index keeps both sizes, so it is never counted again.  Files
  txmail writes are CRLF (SMTP, LMTP, a ``MessageSource``'s local file) and are neither
  counted nor converted; bytes appended with bare LFs are stored as given
  and named with ``W=`` too, and a copy carries the sizes along.
* Keywords beyond the 26 letters Maildir offers are kept in the index
  only (another Maildir tool does not see them).
* One txmail process per Maildir tree: ``claim_recent`` and UIDs are
  coordinated inside the process (same user -> same store object, same
  mailbox -> same mailbox object), not between processes.
* ``MaildirProvider.store_for`` opens a user's store once: the INBOX is
  created when missing and the user's files (subscriptions, special-use
  roles, the last UIDVALIDITY) are read through ``run_blocking``; calls made
  meanwhile wait for that open, later ones get the store at once.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import operator
import os
import re
import shutil
import socket
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from io import BytesIO
from typing import Any, BinaryIO, NamedTuple, TypeVar, cast

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail import mime
from txmail._fs import RunBlocking, fsync_dir, run_inline
from txmail.errors import InvalidMailboxName, MailboxExists, MailboxNotEmpty, NoSuchMailbox, NoSuchMessage
from txmail.interfaces import (
    HEADER_COLUMNS,
    HEADER_LINES,
    IExpungedEmailIds,
    IExpungeHistory,
    IHeaderColumns,
    IHeaderLines,
    IMailbox,
    IMailStore,
    IMailStoreProvider,
    IMetadataStore,
    IObjectIdProvider,
    IObjectIds,
    IRecordCache,
    ISaveDates,
    ISieveScripts,
    IStorageUsage,
    IStoreChanges,
    IURLAuthKeys,
)
from txmail.model import (
    DELIMITER,
    INBOX,
    AnnotationsChanged,
    FlagMode,
    FlagsChanged,
    FolderCreated,
    FolderDeleted,
    FolderInfo,
    FolderRenamed,
    MessageInfo,
    MessageMetadata,
    MessagesAdded,
    MessagesExpunged,
    MessageSource,
    SpecialUse,
    SubscriptionChanged,
    normalize_flags,
)
from txmail.quota import Usage
from txmail.store import _annotations
from txmail.store import _maildir_columns as columns
from txmail.store import _maildir_io as io
from txmail.store import _maildir_sieve as sieve_files
from txmail.store._base import (
    URLAUTH_KEY_SIZE,
    MailboxState,
    StoreListeners,
    check_name,
    folder_infos,
    generic_copy,
    next_uidvalidity,
    select_uids,
    trim_expunged_ids,
)
from txmail.store._crlf import CRLFFile, to_crlf
from txmail.store._ids import derived_email_id
from txmail.store._maildir_format import (
    KEYWORD_LETTERS,
    SYSTEM_LETTERS,
    compact_expunge_log,
    file_name,
    flags_from_letters,
    folder_dir_name,
    format_keywords,
    index_add,
    index_expunge,
    index_flags,
    index_header,
    index_meta,
    index_recent,
    letters_for,
    split_file_name,
)
from txmail.store._maildir_watch import POLL_INTERVAL, FolderWatcher
from txmail.store._parse_pool import ParsePool
from txmail.store._usage import tree_usage

T = TypeVar("T")
#: What :func:`io.read_metadata` takes of a message: (uid, cache offset, cache length, base, sub, name, convert).
_MetadataRequest = tuple[int, int, int, str, str, str, bool]

__all__ = ["MaildirMailbox", "MaildirProvider", "MaildirStore"]

SUBSCRIPTIONS = "subscriptions"
SPECIAL_USE = "txmail-special-use.json"
UIDVALIDITY = "txmail-uidvalidity"
#: The URLAUTH mailbox access keys (RFC 4467): ``{name: [uidvalidity, hex key]}``, mode 0600.
URLAUTH_KEYS = "txmail-urlauth-keys.json"

#: The index is rewritten when it holds more records than
#: ``2 * messages + INDEX_SLACK``.
INDEX_SLACK = 100
#: read_message reads files up to this size on the calling (reactor) thread.
INLINE_READ_SIZE = 256 * 1024
#: Messages taken in per reactor turn when a mailbox is opened or rescanned:
#: between batches the reactor serves other connections (a 100,000-message
#: mailbox would otherwise hold it for about half a second).
BATCH = 4096
#: Seconds after an envelope or body structure was last asked of a message
#: parsed for its header alone during which get_metadata parses new
#: messages whole (a client fetching structures wants them all).
STRUCTURES_WINDOW = 60.0
#: While the store's own deliveries into a mailbox are in flight, the
#: change check of ``get_mailbox`` looks at the directories at most this
#: often (ns): their times change with each of ours, which would make
#: every delivery list the folder while others overlap it.
IN_FLIGHT_CHECK_NS = 1_000_000_000
#: Messages whose header columns are filled from the metadata cache at once.
COLUMNS_FILL = 1024
#: Blocks of header columns written (see MaildirMailbox._columns_appended)
#: after which they are added to those kept rather than listed.
COLUMNS_WRITTEN = 256
#: ``header_lines`` of fewer messages than this (and than a quarter of the
#: folder) reads their metadata, not the whole ``txmail-lines`` file.
LINES_FEW = 2048
_LINE_NAMES = frozenset(HEADER_LINES)


#: What :meth:`MaildirMailbox.cached_records` accepts as a kind (it names a file).
_KIND_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,63}")


def _records_file(kind: str) -> str:
    """The file of the records of *kind* (:class:`IRecordCache`)."""
    if not isinstance(kind, str) or _KIND_RE.fullmatch(kind) is None:
        raise ValueError(f"not a record kind: {kind!r}")
    return "txmail-records-" + kind


def _lines_of(md: MessageMetadata) -> tuple[str, str]:
    """A message's :class:`IHeaderLines` record."""
    return mime.header_lines(md.headers, _LINE_NAMES)


def _nothing() -> None:
    """A no-op for ``run_blocking``: its round trip gives the reactor a turn."""


def _check_path_part(part: str, what: str) -> None:
    if not part or "/" in part or "\0" in part or part.startswith(".") or part in ("..", "."):
        raise ValueError(f"unsafe {what} {part!r} for a Maildir path")


def _sanitize_host(host: str) -> str:
    """A host name fit for Maildir file names (the Maildir spec escapes / and :)."""
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054") or "localhost"


class _UserFiles(NamedTuple):
    """What opening a user's Maildir++ tree reads (:func:`_open_user_dir`)."""

    subscriptions: list[str]
    roles: dict[str, SpecialUse]
    #: The special-use file could not be read whole (``roles`` holds what could).
    roles_damaged: bool
    last_uidvalidity: int
    #: Directories of folder deletions a crash interrupted.
    interrupted: list[str]


def _read_lines(path: str) -> list[str]:
    """The non-empty lines of the file at *path* (none when it is missing)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip("\r\n") for line in f if line.strip()]
    except FileNotFoundError:
        return []


def _open_user_dir(root: str) -> _UserFiles:
    """
    Create the user's INBOX Maildir at *root* when missing and read the
    user's own files (blocking: run through ``run_blocking``).
    """
    io.make_user_dir(root)
    roles: dict[str, SpecialUse] = {}
    damaged = False
    try:
        with open(os.path.join(root, SPECIAL_USE), "rb") as f:
            for name, value in json.load(f).items():
                roles[name] = SpecialUse(value)
    except FileNotFoundError:
        pass
    except (ValueError, AttributeError, TypeError):
        damaged = True
    lines = _read_lines(os.path.join(root, UIDVALIDITY))
    return _UserFiles(
        subscriptions=_read_lines(os.path.join(root, SUBSCRIPTIONS)),
        roles=roles,
        roles_damaged=damaged,
        last_uidvalidity=int(lines[0]) if lines and lines[0].isdigit() else 0,
        interrupted=[os.path.join(root, e) for e in os.listdir(root) if e.startswith(io.DELETED_PREFIX)],
    )


class _DirSync:
    """
    Group commit of directory syncs: each :meth:`sync` fires after an fsync
    of the directory that *started* after the call, and callers that arrive
    while one fsync runs share the next one.
    """

    def __init__(self, path: str, run: RunBlocking) -> None:
        self.path = path
        self._run = run
        self._running = False
        self._waiting: list[defer.Deferred[None]] = []

    def sync(self) -> defer.Deferred[None]:
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        if not self._running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self._waiting = self._waiting, []
        self._running = True

        def done(result: Any) -> None:
            self._running = False
            for d in batch:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    d.callback(None)
            if self._waiting and not self._running:
                self._start()

        self._run(fsync_dir, self.path).addBoth(done)


_base_of = operator.attrgetter("base")


class _Loc:
    """
    Where a message's file is, and where its metadata is cached.  *raw* is
    the file's size when it holds bare LFs (served converted to CRLF, see
    :mod:`txmail.store._crlf`), else ``None`` (served as it is).
    """

    __slots__ = ("base", "clen", "coff", "name", "raw", "sub")

    def __init__(self, base: str, sub: str, name: str, coff: int, clen: int, raw: int | None = None) -> None:
        self.base = base
        self.sub = sub
        self.name = name
        self.coff = coff
        self.clen = clen
        self.raw = raw


_DIGITS = re.compile(r"(\d+)")


def arrival_key(name: str) -> tuple[Any, ...]:
    """
    The order new files get their UIDs in: their names compared with each
    run of digits as a number, so that ``1700000000.M99999P1Q9.host``
    comes before ``1700000000.M100000P1Q10.host`` (Maildir names start
    with the delivery time; plain string order would put a later
    microsecond or counter with one more digit first).
    """
    return tuple(int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name)))


@implementer(
    IMailbox,
    IExpungeHistory,
    IExpungedEmailIds,
    ISaveDates,
    IObjectIds,
    IHeaderColumns,
    IHeaderLines,
    IRecordCache,
)
class MaildirMailbox(MailboxState):
    """
    One Maildir folder.  Get it from :meth:`MaildirStore.get_mailbox`; the
    store gives the same object to every caller.
    """

    log = Logger()

    def __init__(self, store: MaildirStore, name: str, path: str) -> None:
        self.store = store
        self.name = name
        self.path = path
        self.uidvalidity = 0
        #: RFC 8474 section 4: from the folder's ``txmail-mailboxid`` (set on open).
        self.mailbox_id = ""
        self._provider = store._provider
        self._run = store._provider._run
        self._locs: dict[int, _Loc] = {}
        self._by_base: dict[str, int] = {}
        self._letter_kw: dict[str, str] = {}
        self._kw_letter: dict[str, str] = {}
        self._pending: set[str] = set()
        #: When refresh_if_changed last looked at the directories (ns).
        self._checked_at = 0
        self._serial = defer.DeferredLock()
        self._index_path = os.path.join(path, io.INDEX)
        self._index_lines = 0
        self._index_buffer: list[str] | None = None
        self._index_drop = False
        self._compacting = False
        self._stamp: io.Stamp | None = None
        #: When a structure was last asked of a header-only parse (time.monotonic()).
        self._structures_at = -STRUCTURES_WINDOW
        #: The columns file as last read, to read only what was appended since
        #: (kept while the mailbox has listeners, sessions that have it
        #: selected, or it is the provider's last mailbox to read its columns).
        self._columns_read: columns.Read | None = None
        #: The header columns this mailbox appended to the file since
        #: (kept as _columns_read is, added to it when next used: see
        #: _columns_appended).
        self._columns_written: list[columns.Appended] = []
        #: The last answer of header_columns: (the read it came from, the
        #: _Loc of each message asked, the answer), given again (a copy)
        #: while both are the same objects (see header_columns).
        self._columns_answer: tuple[columns.Read, list[_Loc], dict[int, columns.Values]] | None = None
        #: The header lines and the records of a kind as last read (kept by
        #: the provider's last mailbox to read them: see _keep_last).
        self._lines_read: columns.Read | None = None
        self._records_read: columns.Read | None = None
        #: Listings of the directories made (opening, rescans): for tests and statistics.
        self.rescans = 0
        #: The entries of new/ and cur/ the last listing left out (not regular
        #: files), logged once each (:meth:`_log_ignored`).
        self._ignored: set[tuple[str, str]] = set()
        self._init_state()

    # -- opening ----------------------------------------------------------

    def _setup(self, loaded: io.Loaded) -> defer.Deferred[MaildirMailbox]:
        """Build the state from an index and a scan (reactor thread)."""
        parsed = loaded.index
        self.mailbox_id = loaded.mailbox_id
        rewrite = parsed is None or parsed.damaged or loaded.upgraded
        if parsed is None or parsed.uidvalidity is None:
            # Without the index the old UIDs are unknown, so the files get
            # new ones: a new UIDVALIDITY is required (RFC 3501 2.3.1.1).
            self.uidvalidity = self.store._alloc_uidvalidity()
        else:
            self.uidvalidity = parsed.uidvalidity
        if parsed is not None:
            self._init_state(parsed.uidnext, parsed.modseq, parsed.recent)
            self._index_lines = parsed.lines
            # The expunge history (QRESYNC): complete after the index's
            # marker, or, without one, only from now on.
            self._expunge_log = sorted(parsed.expunged, key=lambda e: e[0])
            horizon = parsed.expunge_horizon
            self._expunge_horizon = parsed.modseq if horizon is None else horizon
            self._expunged_ids = parsed.expunged_ids
            trim_expunged_ids(self._expunged_ids)
            records = parsed.records
            insert, locs, by_base = self._insert, self._locs, self._by_base

            def take(uids: list[int]) -> None:
                for uid in uids:
                    rec = records[uid]
                    size, raw = rec.size, rec.raw
                    insert(
                        MessageInfo(uid, rec.flags, size, rec.date, rec.modseq, rec.save_date, rec.email_id)
                    )
                    locs[uid] = _Loc(rec.base, "", "", rec.coff, rec.clen, None if raw == size else raw)
                    by_base[rec.base] = uid

            d = self._in_batches(sorted(records), take)
        else:
            d = defer.succeed(None)
        if rewrite:
            self._index_drop = True  # the whole index is written below
        d.addCallback(lambda _: self._reconcile(loaded.scan, self._uidnext))

        def finish(_: Any) -> Any:
            if rewrite:
                self._index_drop = False
                return self._compact()
            return None

        d2: defer.Deferred[Any] = d.addCallback(finish)
        return d2.addCallback(lambda _: self)

    def _in_batches(self, items: list[Any], work: Callable[[list[Any]], None]) -> defer.Deferred[None]:
        """
        Call *work* on successive slices of *items*, :data:`BATCH` at a time,
        giving the reactor a turn between slices (a no-op trip through
        ``run_blocking``; with an inline ``run_blocking`` all runs at once).
        """
        if len(items) <= BATCH:
            work(items)
            return defer.succeed(None)

        async def run() -> None:
            for start in range(0, len(items), BATCH):
                if start:
                    await self._run(_nothing)
                work(items[start : start + BATCH])

        return defer.ensureDeferred(run())

    # -- index ------------------------------------------------------------

    def _write_index(self, text: str) -> None:
        """Append records to the index (reactor thread; short, unsynced)."""
        if self._index_drop:
            return
        self._index_lines += text.count("\n")
        if self._index_buffer is not None:
            # A rewrite is under way: keep the records for the new file, and
            # append them to the current one too, which stays the index
            # until the rewrite is renamed over it (a crash or a reader
            # meanwhile must not miss them).  One written just after the
            # rename lands in the new file and is replayed there again:
            # harmless, a record sets or removes one message's state.
            self._index_buffer.append(text)
        try:
            with open(self._index_path, "ab") as f:
                f.write(text.encode("utf-8", "surrogateescape"))
        except OSError:
            self.log.failure("writing the index of {mailbox} failed", mailbox=self.path)
        if not self._compacting and self._index_lines > 2 * len(self._infos) + INDEX_SLACK:
            self._compact()

    def _compact(self) -> defer.Deferred[None]:
        """Rewrite the index from the live state; records meanwhile are kept."""
        if self._compacting:
            return defer.succeed(None)
        self._compacting = True
        lines = [index_header(self.uidvalidity, self._uidnext, self._modseq, self._recent)]
        # The expunge history (QRESYNC), merged so that it stays small.
        self._expunge_log, history = compact_expunge_log(
            self._expunge_log, self._expunge_horizon, ids=self._expunged_ids
        )
        lines.append(history)
        for uid, info in self._infos.items():
            loc = self._locs[uid]
            lines.append(
                index_add(
                    uid,
                    info.modseq,
                    info.size,
                    info.internal_date,
                    loc.coff,
                    loc.clen,
                    loc.base,
                    info.flags,
                    loc.raw,
                    info.save_date,
                    info.email_id,
                )
            )
        data = "".join(lines).encode("utf-8", "surrogateescape")
        self._index_buffer = []
        self._index_lines = len(self._infos) + history.count("\n")

        def done(result: Any) -> None:
            if isinstance(result, Failure):
                self.log.failure("rewriting the index of {mailbox} failed", result, mailbox=self.path)
            buffered, self._index_buffer = self._index_buffer or [], None
            self._compacting = False
            if buffered:
                self._index_lines -= sum(t.count("\n") for t in buffered)
                self._write_index("".join(buffered))

        d = self._run(io.replace_file, self._index_path, data)
        d.addBoth(done)
        return d

    def expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IExpungeHistory.expunged_since`."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        return defer.succeed(self._expunged_since(modseq, uids))

    def expunged_email_ids(self, uids: Iterable[int]) -> defer.Deferred[dict[int, str]]:
        """See :meth:`txmail.interfaces.IExpungedEmailIds.expunged_email_ids`: kept in the index's ``X`` records."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        return defer.succeed(self._expunged_email_ids(uids))

    def _persist_recent(self, watermark: int) -> None:
        self._write_index(index_recent(watermark))

    # -- keywords -----------------------------------------------------------

    def _set_keywords(self, keywords: dict[str, str] | None) -> None:
        if not keywords:
            return
        merged = dict(self._letter_kw)
        merged.update(keywords)
        self._letter_kw = merged
        self._kw_letter = {kw: letter for letter, kw in merged.items()}

    def _letters(self, flags: Iterable[str], keep: str = "") -> str:
        """
        The file name letters of *flags*; keywords new to this folder get
        the next free letter (``dovecot-keywords`` rewritten), as long as
        letters remain.
        """
        added = False
        for flag in sorted(flags):
            if flag in SYSTEM_LETTERS or flag in self._kw_letter:
                continue
            free = [c for c in KEYWORD_LETTERS if c not in self._letter_kw]
            if not free:
                continue  # kept in the index only
            self._letter_kw[free[0]] = flag
            self._kw_letter[flag] = free[0]
            added = True
        if added:
            before = io.dir_mtimes(self.path)
            try:
                io.write_small(os.path.join(self.path, io.KEYWORDS), format_keywords(self._letter_kw))
            except OSError:
                self.log.failure("writing keywords of {mailbox} failed", mailbox=self.path)
            self._absorb(before, io.dir_mtimes(self.path))
        return letters_for(flags, self._kw_letter, keep)

    def _representable(self, flags: frozenset[str]) -> frozenset[str]:
        return frozenset(f for f in flags if f in SYSTEM_LETTERS or f in self._kw_letter)

    # -- commits (reactor thread) -------------------------------------------

    def _commit_added(
        self,
        entries: list[tuple[frozenset[str], float, str, str, int, int, int, int | None]],
        email_ids: list[str] | None = None,
    ) -> list[MessageInfo]:
        """
        Give files that are durable UIDs: (flags, date, sub, name, size,
        coff, clen, raw) each; *size* is the size served, *raw* the file's
        when it holds bare LFs, else ``None``.  Each gets the save date now
        and the EMAILID of *email_ids* (a copy's source's), else one derived
        from its base name (so that a file's id can be derived again should
        the index be lost).
        """
        bases = [split_file_name(entry[3])[0] for entry in entries]
        ids = email_ids or [derived_email_id(base) for base in bases]
        infos = self._add(
            (flags, size, date, email_id)
            for (flags, date, _, _, size, _, _, _), email_id in zip(entries, ids, strict=True)
        )
        lines = []
        # While the whole index is to be written afresh (the first open of a
        # folder without one), records appended now would be dropped.
        write = not self._index_drop
        for info, base, (_, _, sub, name, _, coff, clen, raw) in zip(infos, bases, entries, strict=True):
            self._locs[info.uid] = _Loc(base, sub, name, coff, clen, raw)
            self._by_base[base] = info.uid
            if write:
                lines.append(
                    index_add(
                        info.uid,
                        info.modseq,
                        info.size,
                        info.internal_date,
                        coff,
                        clen,
                        base,
                        info.flags,
                        raw,
                        info.save_date,
                        info.email_id,
                    )
                )
        if infos:
            self._write_index("".join(lines))
            self._notify(MessagesAdded(tuple(infos)))
        return infos

    def _commit_flags(self, changes: list[tuple[int, frozenset[str]]]) -> list[MessageInfo]:
        changed = self._set(changes)
        if changed:
            self._write_index("".join(index_flags(i.uid, i.modseq, i.flags) for i in changed))
            self._notify(FlagsChanged(tuple(changed)))
        return changed

    def _commit_expunge(self, uids: Iterable[int]) -> list[int]:
        removed = self._remove(uids)
        for uid in removed:
            loc = self._locs.pop(uid)
            if self._by_base.get(loc.base) == uid:
                del self._by_base[loc.base]
        if removed:
            self._write_index(index_expunge(self._modseq, removed, self._expunged_ids))
            self._notify(MessagesExpunged(tuple(removed), self._modseq))
        return removed

    # -- reconciling with the directory -------------------------------------

    def _reconcile(self, scan: io.Scan | None, known_below: int) -> defer.Deferred[None]:
        """
        Bring the state in line with a directory scan: messages known when
        the scan began (UIDs below *known_below*) whose file is gone are
        expunged, changed flag letters become flag changes, files nobody
        knows get UIDs.
        """
        if scan is None:
            return defer.succeed(None)  # nothing changed on disk
        self.rescans += 1
        self._stamp = scan.stamp
        self._set_keywords(scan.keywords)
        self._log_ignored(scan.ignored)
        listing = scan.listing
        vanished: list[int] = []
        changes: list[tuple[int, frozenset[str]]] = []
        infos = self._infos
        # Memos: a mailbox has few distinct flag sets and letter strings.
        by_letters: dict[str | None, frozenset[str]] = {}
        hidden: dict[frozenset[str], frozenset[str]] = {}

        def check(batch: list[tuple[int, _Loc]]) -> None:
            for uid, loc in batch:
                found = listing.get(loc.base)
                if found is None:
                    vanished.append(uid)
                    continue
                sub, name = found
                if sub == loc.sub and name == loc.name:
                    continue
                loc.sub, loc.name = found
                letters = split_file_name(name)[1]
                on_disk = by_letters.get(letters)
                if on_disk is None:
                    on_disk = by_letters[letters] = flags_from_letters(letters, self._letter_kw)
                old = infos[uid].flags
                kept = hidden.get(old)
                if kept is None:
                    kept = hidden[old] = old - self._representable(old)
                new = on_disk | kept if kept else on_disk
                if new != old:
                    changes.append((uid, new))

        # The messages known when the scan began (UIDs ascend in _locs);
        # appends committed between batches come after them.
        known = list(itertools.takewhile(lambda item: item[0] < known_below, self._locs.items()))
        d = self._in_batches(known, check)
        d.addCallback(lambda _: self._reconciled(listing, vanished, changes, len(known) - len(vanished)))
        return d

    def _log_ignored(self, ignored: list[tuple[str, str]]) -> None:
        """
        Log the entries a listing left out for not being regular files
        (:func:`io.scan_folder`), each once while it stays there.
        """
        if not ignored and not self._ignored:
            return
        current = set(ignored)
        for sub, name in sorted(current - self._ignored):
            self.log.warn(
                "ignoring {entry} in {mailbox}: not a regular file",
                entry=os.path.join(sub, name),
                mailbox=self.path,
            )
        self._ignored = current

    def _reconciled(
        self,
        listing: dict[str, tuple[str, str]],
        vanished: list[int],
        changes: list[tuple[int, frozenset[str]]],
        found: int,
    ) -> defer.Deferred[None]:
        """
        Commit what :meth:`_reconcile` found, then take in the files nobody
        knows; there are none when the *found* known messages (each its own
        file) account for the whole listing.
        """
        if vanished:
            self._commit_expunge(vanished)
        if changes:
            self._commit_flags(changes)
        if found == len(listing):
            return defer.succeed(None)
        unknown = sorted(
            ((sub, name) for base, (sub, name) in listing.items() if base not in self._by_base),
            key=lambda item: arrival_key(item[1]),
        )
        unknown = [item for item in unknown if item[1].split(",", 1)[0].split(":", 1)[0] not in self._pending]
        if not unknown:
            return defer.succeed(None)

        def picked(found: list[tuple[str, str, int, int | None, float, int, int]]) -> None:
            if len(found) >= io.POOL_LEAST:
                # Files dropped in by other programs, not parsed yet: the FETCH
                # that usually follows a SELECT finds the workers started.
                self._provider._start_workers()
            entries = []
            for sub, name, size, raw, date, coff, clen in found:
                base, letters = split_file_name(name)
                if base in self._by_base:
                    continue
                flags = flags_from_letters(letters, self._letter_kw)
                entries.append((flags, date, sub, name, size, coff, clen, raw))
            self._commit_added(entries)

        return self._run(io.pickup_files, self.path, unknown).addCallback(picked)

    def refresh(self) -> defer.Deferred[None]:
        """
        See :meth:`txmail.interfaces.IMailbox.refresh`: the directories are
        listed again unless their times are those of the last listing and
        that listing owes no other (:class:`txmail.store._maildir_io.Stamp`).
        Always thorough; :meth:`refresh_if_changed` is the cheap check.
        """
        return self._serial.run(self._refresh_job, True)

    def refresh_if_changed(self) -> defer.Deferred[None]:
        """
        The cheap change check, run when an open mailbox is asked for again
        (:meth:`MaildirStore.get_mailbox`: IMAP SELECT, EXAMINE, STATUS,
        APPEND, a POP3 login, a delivery) and by the watcher of a mailbox
        with listeners.  Three ``stat`` calls in the calling thread; the
        directories are listed (in ``run_blocking``) only when one changed,
        or when a listing is owed and its time has come (a change in the
        same timestamp tick as the last listing or as our own write is
        seen within :data:`txmail.store._maildir_io.SETTLE_NS`, as in
        Dovecot).  The store's own writes do not count as changes; while
        some are in flight the directories are looked at only every
        :data:`IN_FLIGHT_CHECK_NS`.
        """
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        stamp = self._stamp
        if stamp is not None:
            now = self._provider._now()
            if self._pending and now - self._checked_at < IN_FLIGHT_CHECK_NS:
                # Our own deliveries are in flight: the directories changed
                # by them, and they take their times in as they commit (a
                # listing now would be of our own files).  Another program's
                # change waits at most IN_FLIGHT_CHECK_NS for a check.
                return defer.succeed(None)
            self._checked_at = now
            try:
                current = io.dir_mtimes(self.path)
            except Exception:
                return defer.fail()
            if not stamp.changed(current, now, strict=False):
                return defer.succeed(None)
        return self._serial.run(self._refresh_job, False)

    def _refresh_job(self, strict: bool) -> defer.Deferred[None]:
        self._check_alive()
        known_below = self._uidnext
        d = self._run(
            io.scan_folder, self.path, self._stamp, self._provider._settle_ns, strict, self._provider._now
        )
        d.addCallbacks(self._reconcile, self._vanished, callbackArgs=(known_below,))  # type: ignore[arg-type]  # Deferred's stubs cannot express callbackArgs
        return d

    def _vanished(self, f: Failure) -> Failure:
        """The folder was removed behind our back: the mailbox is deleted."""
        if f.check(NoSuchMailbox) and not self._deleted:
            if self.store._boxes.get(self.name) is self:
                del self.store._boxes[self.name]
            self._mark_deleted()
            if self.store._store_listeners:
                self.store._tell_store(FolderDeleted(self.name))
            return Failure(NoSuchMailbox(self.name))
        return f

    def _absorb(self, before: tuple[int, ...], after: tuple[int, ...]) -> None:
        """Take in the directory times our own change left (reactor thread)."""
        if self._stamp is not None and before and after:
            provider = self._provider
            self._stamp = self._stamp.absorb(before, after, provider._now(), provider._settle_ns)

    def _verify_due_in(self) -> float | None:
        """Seconds until the listing the last one owes is due, or ``None`` when none is owed."""
        stamp = self._stamp
        if stamp is None or stamp.verify_at is None:
            return None
        return max(0.0, (stamp.verify_at - self._provider._now()) / 1e9)

    # -- watching -------------------------------------------------------------

    def add_listener(self, listener: Callable[[Any], object]) -> Callable[[], None]:
        """
        See :meth:`txmail.interfaces.IMailbox.add_listener`.  While the
        mailbox has listeners, its directories are watched for other
        programs' changes (:mod:`txmail.store._maildir_watch`).
        """
        remove = super().add_listener(listener)
        if not self._deleted:
            self._provider._watch(self)

        def remove_and_unwatch() -> None:
            remove()
            if not self._listeners:
                self._provider._unwatch(self)
                self._forget_columns()

        return remove_and_unwatch

    def _mark_deleted(self) -> None:
        super()._mark_deleted()
        self._provider._unwatch(self)

    # -- reading --------------------------------------------------------------

    def _loc(self, uid: int) -> _Loc:
        self._check_alive()
        loc = self._locs.get(uid)
        if loc is None:
            raise NoSuchMessage(f"{self.name} uid {uid}")
        return loc

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        """See :meth:`txmail.interfaces.IMailbox.open_message`."""
        try:
            loc = self._loc(uid)
        except Exception:
            return defer.fail()
        # Opening a file whose name we know costs microseconds: do it here.
        # Only when it was renamed behind our back does finding it take a
        # directory scan, which goes to the thread pool.  A file with bare
        # LFs is converted as it is read: a small one at once (a BytesIO of
        # the converted octets costs a third of a converting wrapper), a
        # large one chunk by chunk.
        path = os.path.join(self.path, loc.sub, loc.name)
        size = None if loc.raw is None else self._infos[uid].size
        try:
            if size is not None and size <= INLINE_READ_SIZE:
                return defer.succeed(BytesIO(to_crlf(io.read_known_file(path, loc.raw or 0))))
            f = io.open_message_file(path)  # the caller closes it
        except FileNotFoundError:  # or not a regular file (io.NotAMessageFile): as gone
            return self._run(io.open_file, self.path, loc.sub, loc.name, size)
        except OSError:
            return defer.fail()
        opened: BinaryIO = f if size is None else cast(BinaryIO, CRLFFile(f, size))
        return defer.succeed(opened)

    def read_message(self, uid: int) -> defer.Deferred[bytes]:
        """See :meth:`txmail.interfaces.IMailbox.read_message`."""
        try:
            loc = self._loc(uid)
        except Exception:
            return defer.fail()
        # A small file whose name we know is read here: an open and a read
        # from the page cache cost microseconds, less than a trip to the
        # thread pool.  Larger files, and one renamed behind our back, are
        # read in the thread pool.
        info = self._infos.get(uid)
        raw = loc.raw
        if info is not None and info.size <= INLINE_READ_SIZE:
            try:
                data = io.read_known_file(
                    os.path.join(self.path, loc.sub, loc.name), info.size if raw is None else raw
                )
            except FileNotFoundError:  # or not a regular file (io.NotAMessageFile)
                pass
            except OSError:
                return defer.fail()
            else:
                # A file with bare LFs is served with CRLF line ends.
                return defer.succeed(data if raw is None else to_crlf(data))
        return self._run(io.read_file, self.path, loc.sub, loc.name, raw is not None)

    def get_metadata(self, uids: Iterable[int]) -> defer.Deferred[dict[int, MessageMetadata]]:
        """See :meth:`txmail.interfaces.IMailbox.get_metadata`."""

        def read(reqs: list[_MetadataRequest]) -> defer.Deferred[Any]:
            # Parse new messages for their header alone, unless the structures
            # were asked of this mailbox lately (then whole, in the thread pool).
            recent = time.monotonic() - self._structures_at < STRUCTURES_WINDOW
            complete = None if recent else self._completion
            pool = None if complete is not None or len(reqs) < io.POOL_LEAST else self._provider._pool()
            return self._run(io.read_metadata, self.path, reqs, complete, pool)

        return self._metadata_job(uids, read)

    def derive_records(
        self, uids: Iterable[int], derive: Callable[[MessageMetadata], Any]
    ) -> defer.Deferred[dict[int, Any]]:
        """
        See :meth:`txmail.interfaces.IRecordCache.derive_records`: from the
        metadata cache, the others parsed whole and cached as
        :meth:`get_metadata` does; at least :data:`io.POOL_LEAST` of those
        by the parse worker processes, which run *derive* too when it is
        found by name (:func:`io.derive_records`).
        """

        def make(reqs: list[_MetadataRequest]) -> defer.Deferred[Any]:
            self._structures_at = time.monotonic()  # whole parses are wanted
            pool = None if len(reqs) < io.POOL_LEAST else self._provider._pool()
            return self._run(io.derive_records, self.path, reqs, derive, pool)

        return self._metadata_job(uids, make)

    def _metadata_job(
        self, uids: Iterable[int], job: Callable[[list[_MetadataRequest]], defer.Deferred[Any]]
    ) -> defer.Deferred[dict[int, Any]]:
        """
        ``job(requests)`` of the messages of *uids* that exist, run unless
        there are none: :func:`io.read_metadata`'s or
        :func:`io.derive_records`'s answer, its cache records indexed.
        """
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        reqs = []
        for uid in select_uids(uids, self._infos):
            loc = self._locs[uid]
            reqs.append((uid, loc.coff, loc.clen, loc.base, loc.sub, loc.name, loc.raw is not None))
        if not reqs:
            return defer.succeed({})
        return job(reqs).addCallback(self._parsed, reqs)

    def _parsed(
        self,
        result: tuple[dict[int, T], list[tuple[int, int, int]], columns.Appended | None],
        reqs: list[_MetadataRequest],
    ) -> dict[int, T]:
        """What :func:`io.read_metadata` or :func:`io.derive_records` found, its cache records indexed."""
        found, updates, appended = result
        self._columns_appended(appended)
        lines = []
        for uid, coff, clen in updates:
            loc = self._locs.get(uid)
            if loc is not None and coff >= 0:
                loc.coff, loc.clen = coff, clen
                lines.append(index_meta(uid, coff, clen))
        if lines:
            self._write_index("".join(lines))
        return {uid: found[uid] for uid, *_ in reqs if uid in found}

    def header_columns(self, uids: Iterable[int]) -> defer.Deferred[dict[int, columns.Values]]:
        """
        See :meth:`txmail.interfaces.IHeaderColumns.header_columns`: read
        from the folder's ``txmail-columns`` file
        (:mod:`txmail.store._maildir_columns`; what was read before is
        kept, and only the records appended since are read); the messages it has no
        record of are read from the metadata cache (:meth:`get_metadata`,
        :data:`COLUMNS_FILL` at a time) and their records appended.
        """
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        present = select_uids(uids, self._infos)
        if not present:
            return defer.succeed({})
        return defer.ensureDeferred(self._header_columns(present, list(map(self._locs.__getitem__, present))))

    def _with_bases(
        self,
        uids: Iterable[int],
        then: Callable[[list[tuple[int, str]]], defer.Deferred[dict[int, columns.Values]]],
    ) -> defer.Deferred[dict[int, columns.Values]]:
        """``then([(uid, base), ...])`` of those of *uids* that exist; ``{}`` when none do."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        wanted = [(uid, self._locs[uid].base) for uid in select_uids(uids, self._infos)]
        if not wanted:
            return defer.succeed({})
        return then(wanted)

    async def _header_columns(self, uids: list[int], locs: list[_Loc]) -> dict[int, columns.Values]:
        """
        The answer for *uids* (their *locs*): the last one again when the
        columns file is as it was read then and the same messages are asked
        (the same :class:`_Loc` objects: the same files), as by a SEARCH or
        SORT repeated on an unchanged mailbox; else :meth:`_records`.
        """
        last = self._columns_answer
        if last is not None:
            read = await self._run(
                columns.read_columns_since, self.path, HEADER_COLUMNS, self._kept_columns()
            )
            self._keep_columns(read)
            if last[0] is read and last[1] == locs:  # compared by identity, in C
                return dict(last[2])
        out = await self._records(
            list(zip(uids, map(_base_of, locs), strict=True)),
            HEADER_COLUMNS,
            columns.COLUMNS,
            lambda md: mime.header_columns(md.headers, HEADER_COLUMNS),
        )
        read = self._kept_columns()
        self._columns_answer = None if read is None or len(out) != len(uids) else (read, locs, out)
        return dict(out) if self._columns_answer is not None else out

    def header_lines(self, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, str]]]:
        """
        See :meth:`txmail.interfaces.IHeaderLines.header_lines`: for many
        messages (at least :data:`LINES_FEW` and a quarter of the folder)
        read from the folder's ``txmail-lines`` file as
        :meth:`header_columns` reads its file, else made from
        :meth:`get_metadata`.
        """
        return self._with_bases(uids, self._header_lines)  # type: ignore[return-value]  # LINES records are (keys, text)

    def _header_lines(self, wanted: list[tuple[int, str]]) -> defer.Deferred[dict[int, columns.Values]]:
        if len(wanted) < LINES_FEW or len(wanted) < len(self._locs) // 4:
            return self.get_metadata([uid for uid, _ in wanted]).addCallback(
                lambda found: {uid: _lines_of(md) for uid, md in found.items()}
            )
        return defer.ensureDeferred(self._records(wanted, HEADER_LINES, columns.LINES, _lines_of))

    async def _records(
        self,
        wanted: list[tuple[int, str]],
        names: tuple[str, ...],
        filename: str,
        make: Callable[[MessageMetadata], columns.Values],
    ) -> dict[int, columns.Values]:
        """
        The records of *wanted* ((uid, base) each) in the columns-format
        file *filename* (:mod:`txmail.store._maildir_columns`); those it
        lacks are made from the metadata cache (:meth:`get_metadata`,
        :data:`COLUMNS_FILL` at a time, ``make(metadata)``) and appended.
        """
        if filename == columns.COLUMNS:
            # Kept as read: SEARCH and SORT read it whole at each command.
            read = await self._run(columns.read_columns_since, self.path, names, self._kept_columns())
            self._keep_columns(read)
            known, records, damaged = read.found, read.count, read.damaged
        else:
            # Kept by the provider's last reader alone: a client's first sync
            # fetches them again on its next connection (see _keep_last).
            read = await self._run(columns.read_columns_since, self.path, names, self._lines_read, filename)
            self._keep_last("_lines_read", read)
            known, records, damaged = read.found, read.count, read.damaged
        out: dict[int, columns.Values] = {}
        missing = []
        for uid, base in wanted:
            found = known.get(base)
            if found is None:
                missing.append(uid)
            else:
                out[uid] = found
        new: list[tuple[str, columns.Values]] = []
        for start in range(0, len(missing), COLUMNS_FILL):
            metadata = await self.get_metadata(missing[start : start + COLUMNS_FILL])
            for uid, md in metadata.items():
                values = out[uid] = make(md)
                loc = self._locs.get(uid)
                if loc is not None:
                    new.append((loc.base, values))
        if damaged or records + len(new) > 2 * len(self._locs) + columns.SLACK:
            # Damage (the records after it are lost) or mostly stale records: one live block.
            live = {loc.base for loc in self._locs.values()}
            keep = [(base, values) for base, values in known.items() if base in live]
            keep.extend(new)
            await self._run(columns.rewrite_columns, self.path, names, keep, filename)
        elif new and filename == columns.COLUMNS:
            self._columns_appended(await self._run(columns.append_columns_at, self.path, names, new))
        elif new:
            appended = await self._run(columns.append_columns_at, self.path, names, new, filename)
            if appended is not None and self._lines_read is read:
                # Kept as if read, while this mailbox is still their last reader:
                # a first sync repeated on the next connection reads none of them.
                self._lines_read = columns.extend_read(read, names, [appended])
        return out

    def _keep_columns(self, read: columns.Read) -> None:
        """
        Keep *read* for the next SEARCH, SORT or THREAD: while a session has
        the mailbox selected, and after that until another mailbox of the
        provider reads or writes its columns (a client that searches on a
        new connection each time finds them still decoded).  So at most one
        mailbox that nobody has selected keeps its columns (tens of MB for
        a big mailbox: 70 MiB at 100,000 messages of imap_sync.py's mix,
        benchmarks/imap_first_search.py --after-fetch).
        """
        self._columns_read = read
        self._claim_columns()

    def _kept_columns(self) -> columns.Read | None:
        """The columns kept (see :meth:`_keep_columns`), with those written since added."""
        if self._columns_written:
            # The provider's slot was claimed when they were written.
            self._columns_read = columns.extend_read(
                self._columns_read, HEADER_COLUMNS, self._columns_written
            )
            self._columns_written = []
        return self._columns_read

    def _columns_appended(self, appended: columns.Appended | None) -> None:
        """
        Keep the columns this mailbox just *appended* (where
        :func:`columns.append_columns_at` wrote them) as if read: added to
        those kept (:func:`columns.extend_read`, when next used) when they
        follow them in the file, or, when nothing is kept, kept alone when
        they begin the file (the first parse of a folder's messages, as the
        first FETCH of a mailbox of dropped-in files does).  So the first
        SEARCH, SORT or THREAD after the FETCH that parsed the messages,
        on the same connection or the next, reads nothing of the file;
        the mailbox keeps them as it keeps what it reads.  Else the file
        is read next time, as before.
        """
        if appended is None or self._deleted:
            return
        kept = self._columns_read
        if kept is None and not self._columns_written:
            if appended.start:
                return  # records not read before them: the next reader reads the file
        elif kept is not None and kept.file is not None and kept.file != appended.file:
            return  # another file (rewritten since): read next time
        self._columns_written.append(appended)
        if len(self._columns_written) >= COLUMNS_WRITTEN:
            self._kept_columns()
        else:
            self._claim_columns()

    def _claim_columns(self) -> None:
        """Make this mailbox the provider's last to keep its columns (the previous one forgets them)."""
        provider = self._provider
        previous, provider._columns_last = provider._columns_last, self
        if previous is not None and previous is not self:
            previous._forget_columns()

    def _keep_last(self, slot: str, read: columns.Read) -> None:
        """
        Keep *read* (the header lines or the records of a kind) in *slot*
        until another mailbox of the provider reads its own: so at most one
        mailbox keeps them (some hundred octets a message), and a FETCH of
        a first sync that a client repeats on a new connection reads only
        the records appended since (the header lines that the first one
        made and appended are kept as if read: see :meth:`_records`).
        """
        setattr(self, slot, read)
        last = self._provider._last_readers
        previous, last[slot] = last.get(slot), self
        if previous is not None and previous is not self:
            setattr(previous, slot, None)

    def cached_records(self, kind: str, uids: Iterable[int]) -> defer.Deferred[dict[int, columns.Values]]:
        """
        See :meth:`txmail.interfaces.IRecordCache.cached_records`: read from
        the folder's ``txmail-records-KIND`` file as :meth:`header_lines`
        reads its file (the read kept by the provider's last reader).
        """
        filename = _records_file(kind)
        return self._with_bases(
            uids, lambda wanted: defer.ensureDeferred(self._cached(kind, filename, wanted))
        )

    async def _read_records(self, kind: str, filename: str) -> columns.Read:
        read: columns.Read = await self._run(
            columns.read_columns_since, self.path, (kind,), self._records_read, filename
        )
        self._keep_last("_records_read", read)
        return read

    async def _cached(
        self, kind: str, filename: str, wanted: list[tuple[int, str]]
    ) -> dict[int, columns.Values]:
        known = (await self._read_records(kind, filename)).found
        return {uid: found for uid, base in wanted if (found := known.get(base)) is not None}

    def cache_records(self, kind: str, records: Mapping[int, columns.Values]) -> defer.Deferred[None]:
        """
        See :meth:`txmail.interfaces.IRecordCache.cache_records`: appended
        to the folder's ``txmail-records-KIND`` file, which is written again
        with the live records alone when damaged or mostly stale (as
        ``txmail-columns``).  A deleted mailbox keeps nothing.
        """
        filename = _records_file(kind)
        if self._deleted or not records:
            return defer.succeed(None)
        return defer.ensureDeferred(self._cache_records(kind, filename, records))

    async def _cache_records(self, kind: str, filename: str, records: Mapping[int, columns.Values]) -> None:
        new = [
            (loc.base, record) for uid, record in records.items() if (loc := self._locs.get(uid)) is not None
        ]
        if not new:
            return
        read = await self._read_records(kind, filename)
        if read.damaged or read.count + len(new) > 2 * len(self._locs) + columns.SLACK:
            live = {loc.base for loc in self._locs.values()}.difference(base for base, _ in new)
            keep = [(base, values) for base, values in read.found.items() if base in live]
            keep.extend(new)
            await self._run(columns.rewrite_columns, self.path, (kind,), keep, filename)
            return
        appended = await self._run(columns.append_columns_at, self.path, (kind,), new, filename)
        if appended is not None and self._records_read is read:
            # Kept as if read, while this mailbox is still their last reader: the
            # next call (a FETCH keeps its records every KEEP_EVERY messages) and
            # the next FETCH read none of them back.
            self._records_read = columns.extend_read(read, (kind,), [appended])

    def _forget_columns(self) -> None:
        """Drop the columns kept, unless a session has the mailbox selected or it read them last."""
        if not self._listeners and self._provider._columns_last is not self:
            self._columns_read = None
            self._columns_written = []
            self._columns_answer = None

    def _completion(
        self, uid: int, headers: tuple[tuple[str, str], ...]
    ) -> Callable[[], tuple[Any, Any, int]]:
        """The function completing header-only metadata (see :func:`io.read_metadata`); any thread."""
        return lambda: self._complete_metadata(uid, headers)

    def _complete_metadata(self, uid: int, headers: tuple[tuple[str, str], ...]) -> tuple[Any, Any, int]:
        """
        The envelope, body structure and line count of a message whose
        header alone was parsed, when first used (reactor thread): from
        its cache record if another copy of its metadata completed it
        already, else parsed from the file (at most
        :data:`io.HEADER_ONLY_SIZE` octets, read here as ``read_message``
        reads small files) and cached.  A message gone meanwhile gets the
        envelope of its header fields and an empty structure.
        """
        self._structures_at = time.monotonic()
        loc = self._locs.get(uid)
        if loc is not None:
            try:
                md = self._cached_full(loc) or self._parse_and_cache(uid, loc)
            except Exception:
                self.log.failure("parsing {mailbox} uid {uid} failed", mailbox=self.path, uid=uid)
            else:
                return md.envelope, md.body_structure, md.lines
        text = "".join(f"{n}:{v}" if v.endswith("\n") else f"{n}:{v}\r\n" for n, v in headers) + "\r\n"
        md = mime.parse_metadata(text.encode("latin-1"))
        return md.envelope, md.body_structure, 0

    def _cached_full(self, loc: _Loc) -> MessageMetadata | None:
        """The whole metadata of *loc*'s cache record, or ``None`` when it holds the header only."""
        if loc.coff < 0:
            return None
        with contextlib.suppress(OSError, ValueError):
            with open(os.path.join(self.path, io.CACHE), "rb") as f:
                (data,) = io._read_cache_records(f.fileno(), [(loc.coff, loc.clen, loc.base)])
            if data is not None:
                return mime.decode_metadata(data)
        return None

    def _parse_and_cache(self, uid: int, loc: _Loc) -> MessageMetadata:
        data = io.read_file(self.path, loc.sub, loc.name, loc.raw is not None)
        md = mime.parse_metadata(data)
        coff, clen = io.cache_append(self.path, loc.base, mime.encode_metadata(md))
        if coff >= 0:
            loc.coff, loc.clen = coff, clen
            self._write_index(index_meta(uid, coff, clen))
        return md

    # -- appending --------------------------------------------------------------

    def append(
        self, message: bytes | MessageSource, flags: Iterable[str] = (), internal_date: float | None = None
    ) -> defer.Deferred[int]:
        """See :meth:`txmail.interfaces.IMailbox.append`."""
        try:
            self._check_alive()
            normalized = normalize_flags(flags)
            date = time.time() if internal_date is None else float(internal_date)
            letters = self._letters(normalized) or None
            unique = self._provider._unique()
            if isinstance(message, MessageSource):
                encoded = None if message.metadata is None else mime.encode_metadata(message.metadata)
                job: tuple[Any, ...]
                if message.local_path is not None:
                    job = (
                        io.deliver_file,
                        self.path,
                        unique,
                        message.local_path,
                        message.fsynced,
                        letters,
                        date,
                        encoded,
                    )
                elif message.data is not None:
                    job = (io.deliver_bytes, self.path, unique, message.data, letters, date, encoded)
                else:
                    job = (io.deliver_stream, self.path, unique, message.opener, letters, date, encoded)
            else:
                job = (io.deliver_bytes, self.path, unique, bytes(message), letters, date, None)
        except Exception:
            return defer.fail()
        self._pending.add(unique)
        d = self._run(*job)

        def synced(delivered: io.Delivered) -> Any:
            target = os.path.join(self.path, delivered.sub)
            d2 = self._provider._sync_dir(target)
            d2.addCallback(lambda _: delivered)
            d2.addErrback(self._undo_delivery, delivered)
            return d2

        def commit(delivered: io.Delivered) -> int:
            self._pending.discard(unique)
            if self._deleted:
                self._run(io.unlink_files, self.path, [(delivered.sub, delivered.name)])
                raise NoSuchMailbox(self.name)
            self._absorb(delivered.before, delivered.after)
            (info,) = self._commit_added(
                [
                    (
                        normalized,
                        date,
                        delivered.sub,
                        delivered.name,
                        delivered.size,
                        delivered.coff,
                        delivered.clen,
                        delivered.raw,
                    )
                ]
            )
            return info.uid

        def failed(f: Failure) -> Failure:
            self._pending.discard(unique)
            return f

        d.addCallback(synced)
        d.addCallbacks(commit, failed)
        return d

    def _undo_delivery(self, f: Failure, delivered: io.Delivered) -> Failure:
        """The directory sync failed: remove the file so it is not delivered later."""
        self._run(io.unlink_files, self.path, [(delivered.sub, delivered.name)])
        return f

    # -- flags ------------------------------------------------------------------

    def set_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: FlagMode, unchanged_since: int | None = None
    ) -> defer.Deferred[list[MessageInfo]]:
        """See :meth:`txmail.interfaces.IMailbox.set_flags`."""
        try:
            self._check_alive()
            wanted = normalize_flags(flags)
            mode = FlagMode(mode)
        except Exception:
            return defer.fail()
        if uids is not None and not isinstance(uids, range | set | frozenset):
            uids = list(uids)
        return self._serial.run(self._set_flags_job, uids, wanted, mode, unchanged_since)

    def _set_flags_job(
        self, uids: Iterable[int], flags: frozenset[str], mode: FlagMode, unchanged_since: int | None
    ) -> Any:
        self._check_alive()
        changes = self._flag_changes(uids, flags, mode, unchanged_since)
        if not changes:
            return []
        ops = []
        op_uids = []
        for uid, new in changes:
            loc = self._locs[uid]
            base, old_letters = split_file_name(loc.name)
            letters = self._letters(new, old_letters or "")
            if loc.sub == "new" and not letters:
                continue  # still without flags: stays in new/
            name = file_name(base, letters)
            if (loc.sub, loc.name) != ("cur", name):
                ops.append((loc.sub, loc.name, "cur", name))
                op_uids.append(uid)
        if not ops:
            return self._commit_flags(changes)

        def renamed(changed: io.Changed) -> list[MessageInfo]:
            self._absorb(changed.before, changed.after)
            results: list[tuple[str, str] | None] = changed.result
            gone = set()
            for uid, result in zip(op_uids, results, strict=True):
                if result is None:
                    gone.add(uid)  # removed behind our back; refresh expunges it
                else:
                    loc = self._locs.get(uid)
                    if loc is not None:
                        loc.sub, loc.name = result
            return self._commit_flags([c for c in changes if c[0] not in gone])

        return self._run(io.rename_files, self.path, ops).addCallback(renamed)

    # -- expunge, copy, move --------------------------------------------------

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IMailbox.expunge`."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        if uids is not None and not isinstance(uids, range | set | frozenset):
            uids = list(uids)
        return self._serial.run(self._expunge_job, uids)

    def _expunge_job(self, uids: Iterable[int] | None) -> Any:
        self._check_alive()
        return self._remove_files(self._deleted_uids(uids))

    def _remove_files(self, uids: list[int]) -> defer.Deferred[list[int]]:
        """Unlink the files of *uids*, then expunge them (under ``_serial``)."""
        if not uids:
            return defer.succeed([])
        items = [(self._locs[u].sub, self._locs[u].name) for u in uids]
        d = self._run(io.unlink_files, self.path, items)

        def unlinked(changed: io.Changed) -> list[int]:
            self._absorb(changed.before, changed.after)
            return self._commit_expunge(uids)

        return d.addCallback(unlinked)

    def copy(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """See :meth:`txmail.interfaces.IMailbox.copy`."""
        return self._copy_or_move(uids, target, move=False)

    def move(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """See :meth:`txmail.interfaces.IMailbox.move`."""
        return self._copy_or_move(uids, target, move=True)

    def _copy_or_move(
        self, uids: Iterable[int], target: IMailbox, move: bool
    ) -> defer.Deferred[list[tuple[int, int]]]:
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        if uids is not None and not isinstance(uids, range | set | frozenset):
            uids = list(uids)
        if isinstance(target, MaildirMailbox):
            return self._serial.run(self._link_job, uids, target, move)

        # Another backend: through the interface.
        d = generic_copy(self, select_uids(uids, self._infos), target)
        if move:

            def remove(pairs: list[tuple[int, int]]) -> Any:
                src = [s for s, _ in pairs]
                return self._serial.run(self._remove_live, src).addCallback(lambda _: pairs)

            d.addCallback(remove)
        return d

    def _remove_live(self, uids: list[int]) -> defer.Deferred[list[int]]:
        return self._remove_files([u for u in uids if u in self._infos])

    def _link_job(self, uids: Iterable[int], target: MaildirMailbox, move: bool) -> Any:
        self._check_alive()
        target._check_alive()
        selected = select_uids(uids, self._infos)
        if not selected:
            return []
        items = []
        uniques = []
        for uid in selected:
            info = self._infos[uid]
            loc = self._locs[uid]
            unique = self._provider._unique()
            uniques.append(unique)
            letters = target._letters(info.flags) or None
            items.append(
                (
                    loc.sub,
                    loc.name,
                    unique,
                    letters,
                    info.internal_date,
                    loc.coff,
                    loc.clen,
                    info.size,
                    loc.raw,
                )
            )
        target._pending.update(uniques)

        def linked(changed: io.Changed) -> Any:
            target._absorb(changed.before, changed.after)
            results: list[io.Delivered | None] = changed.result
            subs = {r.sub for r in results if r is not None}
            syncs = [self._provider._sync_dir(os.path.join(target.path, sub)) for sub in sorted(subs)]
            d = defer.gatherResults(syncs, consumeErrors=True)
            d.addCallback(lambda _: results)
            return d

        def commit(results: list[io.Delivered | None]) -> Any:
            target._pending.difference_update(uniques)
            if target._deleted:
                raise NoSuchMailbox(target.name)
            entries = []
            sources = []
            email_ids = []
            for uid, r in zip(selected, results, strict=True):
                if r is None or uid not in self._infos:
                    continue
                info = self._infos[uid]
                entries.append((info.flags, info.internal_date, r.sub, r.name, r.size, r.coff, r.clen, r.raw))
                sources.append(uid)
                # RFC 8474 section 5.1: the copy keeps the source's EMAILID.
                email_ids.append(info.email_id or derived_email_id(self._locs[uid].base))
            infos = target._commit_added(entries, email_ids)
            pairs = [(src, info.uid) for src, info in zip(sources, infos, strict=True)]
            if move and pairs:
                return self._remove_files(sources).addCallback(lambda _: pairs)
            return pairs

        def failed(f: Failure) -> Failure:
            target._pending.difference_update(uniques)
            if f.check(defer.FirstError):
                first: Failure = f.value.subFailure  # type: ignore[union-attr]  # checked: a FirstError
                return first
            return f

        d = self._run(io.link_files, self.path, target.path, items)
        d.addCallback(linked)
        d.addCallbacks(commit, failed)
        return d


#: Seconds a scan of the folders that are not open stays good for usage().
USAGE_RESCAN = 300.0


@implementer(IMailStore, IStorageUsage, IStoreChanges, IMetadataStore, IURLAuthKeys, ISieveScripts)
class MaildirStore(StoreListeners):
    """
    One user's Maildir++ tree.  Get it from :meth:`MaildirProvider.store_for`.

    Folder operations (create, delete, rename, opening a mailbox, the
    subscription and special-use files) run one at a time (``_lock``).
    """

    log = Logger()

    def __init__(self, provider: MaildirProvider, user: str, root: str, files: _UserFiles) -> None:
        self._init_store_listeners()
        self._provider = provider
        self.user = user
        self.root = root
        self._run = provider._run
        self._lock = defer.DeferredLock()
        self._sieve_lock = defer.DeferredLock()  # Sieve scripts (ISieveScripts): one change at a time
        self._boxes: dict[str, MaildirMailbox] = {}
        self._usage_scan: dict[str, Usage] | None = None  # {folder path: Usage} (usage())
        self._usage_scan_at = 0.0
        # RFC 5464 annotations: listeners, and the user's count (None: count again).
        self._annotation_listeners = _annotations.AnnotationListeners()
        self._annotation_total: int | None = None
        # The storage was created and its files read by the provider
        # (_open_user_dir, in run_blocking; IMailStoreProvider.store_for).
        self._subscriptions = set(files.subscriptions)
        self._roles: dict[str, SpecialUse] = dict(files.roles)
        if files.roles_damaged:
            self.log.warn("ignoring a damaged {file}", file=os.path.join(root, SPECIAL_USE))
        self._last_uidvalidity = files.last_uidvalidity
        for path in files.interrupted:
            # A deletion interrupted by a crash: finish it.
            self._run(shutil.rmtree, path, True)

    def _alloc_uidvalidity(self) -> int:
        """A new UIDVALIDITY, larger than any this store gave before."""
        self._last_uidvalidity = next_uidvalidity(self._last_uidvalidity)
        try:
            io.write_small(os.path.join(self.root, UIDVALIDITY), b"%d\n" % self._last_uidvalidity)
        except OSError:
            self.log.failure("writing {file} failed", file=os.path.join(self.root, UIDVALIDITY))
        return self._last_uidvalidity

    def _path(self, name: str) -> str:
        return self.root if name == INBOX else os.path.join(self.root, folder_dir_name(name))

    def _write_roles(self) -> defer.Deferred[None]:
        data = json.dumps({n: r.value for n, r in sorted(self._roles.items())}, indent=1).encode()
        return self._run(io.replace_file, os.path.join(self.root, SPECIAL_USE), data)

    def _write_subscriptions(self) -> defer.Deferred[None]:
        data = "".join(f"{n}\n" for n in sorted(self._subscriptions)).encode("utf-8")
        return self._run(io.replace_file, os.path.join(self.root, SUBSCRIPTIONS), data)

    @staticmethod
    def _locked(fn: Callable[..., Generator[Any, Any, Any]]) -> Callable[..., defer.Deferred[Any]]:
        """Run an inlineCallbacks method under the store lock."""
        inner = defer.inlineCallbacks(fn)

        def wrapper(self: MaildirStore, *args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return self._lock.run(inner, self, *args, **kwargs)

        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    # -- URLAUTH access keys (RFC 4467) -------------------------------------------

    def _read_urlauth_keys(self) -> dict[str, tuple[int, bytes]]:
        try:
            with open(os.path.join(self.root, URLAUTH_KEYS), "rb") as f:
                raw = json.load(f)
            return {str(n): (int(v[0]), bytes.fromhex(v[1])) for n, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, AttributeError, TypeError, IndexError, KeyError):
            # Damaged: no key is valid, so no URL signed before is (none is
            # accepted wrongly); GENURLAUTH makes new ones.
            self.log.warn("ignoring a damaged {file}", file=os.path.join(self.root, URLAUTH_KEYS))
            return {}

    def _write_urlauth_keys(self, keys: dict[str, tuple[int, bytes]]) -> defer.Deferred[None]:
        data = json.dumps({n: [v, k.hex()] for n, (v, k) in sorted(keys.items())}, indent=1).encode()
        return self._run(_write_secret, os.path.join(self.root, URLAUTH_KEYS), data)

    @_locked
    def urlauth_key(
        self, mailbox: str, uidvalidity: int, create: bool = False
    ) -> Generator[Any, Any, bytes | None]:
        """See :meth:`txmail.interfaces.IURLAuthKeys.urlauth_key`."""
        keys = yield self._run(self._read_urlauth_keys)
        kept = keys.get(mailbox)
        if kept is not None and kept[0] == uidvalidity:
            key: bytes = kept[1]
            return key
        if not create:
            return None
        key = os.urandom(URLAUTH_KEY_SIZE)
        keys[mailbox] = (uidvalidity, key)
        yield self._write_urlauth_keys(keys)
        return key

    @_locked
    def reset_urlauth_keys(self, mailbox: str | None = None) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IURLAuthKeys.reset_urlauth_keys`."""
        keys = yield self._run(self._read_urlauth_keys)
        if mailbox is None:
            changed = bool(keys)
            keys = {}
        else:
            changed = keys.pop(mailbox, None) is not None
        if changed:
            yield self._write_urlauth_keys(keys)

    # -- Sieve scripts (ISieveScripts; txmail.store._maildir_sieve) ------------

    def _sieve(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """Run the blocking script operation *fn* on this user's directory, one at a time."""
        return self._sieve_lock.run(self._run, fn, self.root, *args)

    def list_scripts(self) -> defer.Deferred[list[tuple[str, bool]]]:
        """See :meth:`txmail.interfaces.ISieveScripts.list_scripts`."""
        return self._sieve(sieve_files.list_scripts)

    def get_script(self, name: str) -> defer.Deferred[bytes]:
        """See :meth:`txmail.interfaces.ISieveScripts.get_script`."""
        return self._sieve(sieve_files.get_script, name)

    def put_script(self, name: str, content: bytes) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.put_script`."""
        return self._sieve(sieve_files.put_script, name, bytes(content))

    def delete_script(self, name: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.delete_script`."""
        return self._sieve(sieve_files.delete_script, name)

    def rename_script(self, old: str, new: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.rename_script`."""
        return self._sieve(sieve_files.rename_script, old, new)

    def set_active(self, name: str | None) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.set_active`."""
        return self._sieve(sieve_files.set_active, name)

    def active_script(self) -> defer.Deferred[tuple[str, bytes] | None]:
        """See :meth:`txmail.interfaces.ISieveScripts.active_script`."""
        return self._sieve(sieve_files.active_script)

    # -- mailboxes ------------------------------------------------------------

    def get_mailbox(self, name: str) -> defer.Deferred[IMailbox]:
        """See :meth:`txmail.interfaces.IMailStore.get_mailbox`."""
        try:
            name = check_name(name)
        except InvalidMailboxName:
            return defer.fail()
        box = self._boxes.get(name)
        if box is not None:
            # Pick up other programs' changes (cheap when there are none).
            found = box

            def failed(f: Failure) -> Any:
                if f.check(NoSuchMailbox):
                    return f  # removed behind our back
                self.log.failure("checking {mailbox} for changes failed", f, mailbox=found.path)
                return None

            d = box.refresh_if_changed()
            return d.addErrback(failed).addCallback(lambda _: found)
        return self._lock.run(self._open, name)

    def _open(self, name: str) -> defer.Deferred[IMailbox]:
        """Open a mailbox (under the store lock)."""
        box = self._boxes.get(name)
        if box is not None:
            return defer.succeed(box)
        path = self._path(name)

        def loaded(result: io.Loaded) -> defer.Deferred[MaildirMailbox]:
            mailbox = MaildirMailbox(self, name, path)
            return mailbox._setup(result)

        def ready(mailbox: MaildirMailbox) -> MaildirMailbox:
            self._boxes[name] = mailbox
            return mailbox

        def missing(f: Failure) -> Failure:
            f.trap(NoSuchMailbox)
            raise NoSuchMailbox(name)

        d: defer.Deferred[Any] = self._run(io.read_folder, path)
        d.addErrback(missing)
        d.addCallback(loaded)
        return d.addCallback(ready)

    def usage(self) -> defer.Deferred[Usage]:
        """
        See :meth:`txmail.interfaces.IStorageUsage.usage`: the open mailboxes
        count live; the others from a scan of their directories, made again
        when older than :data:`USAGE_RESCAN` seconds (other programs' changes).
        """
        now = time.monotonic()
        if self._usage_scan is not None and now - self._usage_scan_at < USAGE_RESCAN:
            return defer.succeed(self._combined_usage(self._usage_scan))

        def scan() -> dict[str, Usage]:
            names = {INBOX, *io.list_folders(self.root)}
            return tree_usage(self.root, {name: self._path(name) for name in names})

        def scanned(result: dict[str, Usage]) -> Usage:
            self._usage_scan, self._usage_scan_at = result, time.monotonic()
            return self._combined_usage(result)

        return self._run(scan).addCallback(scanned)

    def _combined_usage(self, scan: dict[str, Usage]) -> Usage:
        live = {box.path: box for box in self._boxes.values() if not box._deleted}
        octets = count = 0
        for path, found in scan.items():
            box = live.pop(path, None)
            octets += found.octets if box is None else box._size
            count += found.messages if box is None else len(box._infos)
        for box in live.values():  # opened after the scan
            octets += box._size
            count += len(box._infos)
        return Usage(octets, count)

    def list_mailboxes(self, pattern: str = "*") -> defer.Deferred[list[FolderInfo]]:
        """See :meth:`txmail.interfaces.IMailStore.list_mailboxes`."""
        d = self._run(io.list_folders, self.root)
        d.addCallback(lambda names: folder_infos(names, pattern, self._subscriptions, self._roles))
        return d

    @staticmethod
    def _check_not_reserved(*names: str) -> None:
        """
        Refuse mailbox names whose folder (or a parent's) would be a
        directory Dovecot's Sieve files take (``.dovecot.sieve``:
        ``dovecot/sieve``; :data:`txmail.store._maildir_sieve.RESERVED_DIRS`).
        """
        for name in names:
            parts = name.split(DELIMITER)
            for i in range(1, len(parts) + 1):
                prefix = DELIMITER.join(parts[:i])
                if prefix != INBOX and folder_dir_name(prefix) in sieve_files.RESERVED_DIRS:
                    raise InvalidMailboxName(f"{prefix!r} is reserved for the Sieve scripts")

    def _missing_parents(self, name: str, existing: set[str]) -> list[str]:
        parts = name.split(DELIMITER)
        parents = [DELIMITER.join(parts[:i]) for i in range(1, len(parts))]
        return [p for p in parents if p != INBOX and p not in existing]

    @_locked
    def create_mailbox(self, name: str, special_use: SpecialUse | None = None) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMailStore.create_mailbox`."""
        name = check_name(name)
        role = None if special_use is None else SpecialUse(special_use)
        if name == INBOX:
            raise MailboxExists(name)
        self._check_not_reserved(name)
        existing = yield self._run(io.list_folders, self.root)
        if name in existing:
            raise MailboxExists(name)
        yield self._create(name, existing)
        if role is not None:
            self._roles = {n: r for n, r in self._roles.items() if r is not role}
            self._roles[name] = role
            yield self._write_roles()

    def _create(self, name: str, existing: set[str]) -> defer.Deferred[None]:
        """Create *name* and its missing parents (under the store lock)."""
        todo = [*self._missing_parents(name, existing), name]
        folders = [(folder_dir_name(n), self._alloc_uidvalidity()) for n in todo]
        d = self._run(io.create_folders, self.root, folders, folder_dir_name(name))

        def created(result: None) -> None:
            if self._store_listeners:
                self._tell_store(*(FolderCreated(n) for n in todo))
            return result

        return d.addCallback(created)

    @defer.inlineCallbacks
    def _with_serials(self, names: list[str], fn: Callable[[], Any]) -> Generator[Any, Any, Any]:
        """Run *fn* while no job of the open mailboxes *names* runs."""
        boxes = [self._boxes[n] for n in sorted(names) if n in self._boxes]
        for box in boxes:
            yield box._serial.acquire()
        try:
            return (yield fn())
        finally:
            for box in boxes:
                box._serial.release()

    @_locked
    def delete_mailbox(self, name: str) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMailStore.delete_mailbox`."""
        name = check_name(name)
        if name == INBOX:
            raise InvalidMailboxName("INBOX cannot be deleted")
        existing = yield self._run(io.list_folders, self.root)
        if name not in existing:
            if any(n.startswith(name + DELIMITER) for n in existing):
                raise MailboxNotEmpty(name)
            raise NoSuchMailbox(name)
        # RFC 3501 section 6.3.4: with children the name stays as a
        # non-selectable parent, which Maildir++ expresses by the children's
        # directories alone.
        yield self._with_serials(
            [name], lambda: self._run(io.remove_folder, self.root, folder_dir_name(name))
        )
        box = self._boxes.pop(name, None)
        if box is not None:
            box._mark_deleted()
        if self._store_listeners:
            parent = any(n.startswith(name + DELIMITER) for n in existing)
            self._tell_store(FolderDeleted(name, parent=parent))
        self._annotation_total = None  # the folder's annotations went with it
        if self._roles.pop(name, None) is not None:
            yield self._write_roles()

    @_locked
    def rename_mailbox(self, old: str, new: str) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMailStore.rename_mailbox`."""
        old = check_name(old)
        new = check_name(new)
        if new == old:
            raise MailboxExists(new)
        if new.startswith(old + DELIMITER):
            raise InvalidMailboxName("cannot rename a mailbox below itself")
        self._check_not_reserved(new)
        existing = yield self._run(io.list_folders, self.root)
        if new == INBOX or new in existing:
            raise MailboxExists(new)
        if old == INBOX:
            # RFC 3501 section 6.3.5: the messages move to a new mailbox,
            # INBOX stays (empty), its children stay where they are.
            yield self._create(new, existing)
            inbox = yield self._open(INBOX)
            target = yield self._open(new)
            yield inbox.move(list(inbox._infos), target)
            # RFC 5464 section 4.1: INBOX keeps its annotations, the new
            # mailbox gets a copy.
            entries = yield self._read_annotations(INBOX)
            if entries:
                yield self._run(_annotations.write_annotations, self._path(new), entries)
                self._annotation_total = None
            return
        prefix = old + DELIMITER
        moving = sorted(n for n in existing if n == old or n.startswith(prefix))
        if not moving:
            raise NoSuchMailbox(old)
        renamed = {n: new + n[len(old) :] for n in moving}
        self._check_not_reserved(*renamed.values())
        if any(t in existing for t in renamed.values()):
            raise MailboxExists(new)
        parents = [
            (folder_dir_name(p), self._alloc_uidvalidity())
            for p in self._missing_parents(new, existing)
            if p not in renamed.values()
        ]
        dirs = [(folder_dir_name(n), folder_dir_name(renamed[n])) for n in moving]
        yield self._with_serials(moving, lambda: self._run(io.rename_folders, self.root, dirs, parents))
        for n in moving:
            box = self._boxes.pop(n, None)
            if box is not None:
                box._mark_deleted()
        if self._store_listeners:
            made = [
                FolderCreated(n) for n in self._missing_parents(new, existing) if n not in renamed.values()
            ]
            self._tell_store(*made, *(FolderRenamed(n, renamed[n]) for n in moving))
        # The annotations files moved with the directories.
        moved_roles = {renamed[n]: r for n, r in self._roles.items() if n in renamed}
        if moved_roles:
            self._roles = {n: r for n, r in self._roles.items() if n not in renamed}
            self._roles.update(moved_roles)
            yield self._write_roles()

    # -- subscriptions and roles ----------------------------------------------

    @_locked
    def subscribe(self, name: str) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMailStore.subscribe`."""
        name = check_name(name)
        if name not in self._subscriptions:
            self._subscriptions.add(name)
            yield self._write_subscriptions()
            if self._store_listeners:
                self._tell_store(SubscriptionChanged(name, True))

    @_locked
    def unsubscribe(self, name: str) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMailStore.unsubscribe`."""
        name = check_name(name)
        if name not in self._subscriptions:
            raise NoSuchMailbox(name)
        self._subscriptions.discard(name)
        yield self._write_subscriptions()
        if self._store_listeners:
            self._tell_store(SubscriptionChanged(name, False))

    def subscriptions(self) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IMailStore.subscriptions`."""
        return defer.succeed(sorted(self._subscriptions))

    def special_use_mailbox(self, role: SpecialUse | str) -> defer.Deferred[str | None]:
        """See :meth:`txmail.interfaces.IMailStore.special_use_mailbox`."""
        try:
            role = SpecialUse(role)
        except ValueError:
            return defer.fail()
        for name, r in sorted(self._roles.items()):
            if r is role:
                return defer.succeed(name)
        return defer.succeed(None)

    # -- RFC 5464 annotations (IMetadataStore) --------------------------------

    def _read_annotations(self, mailbox: str) -> defer.Deferred[dict[str, bytes]]:
        """The annotations of *mailbox* (``""``: the server's), under the store lock."""
        server = mailbox == ""
        path = self.root if server else self._path(mailbox)

        def read(result: tuple[dict[str, bytes], bool]) -> dict[str, bytes]:
            entries, damaged = result
            if damaged:
                self.log.warn(
                    "set aside a damaged annotations file of {mailbox!r} in {root}",
                    mailbox=mailbox,
                    root=self.root,
                )
            return entries

        def missing(f: Failure) -> Failure:
            f.trap(NoSuchMailbox)
            raise NoSuchMailbox(mailbox)

        d: defer.Deferred[Any] = self._run(_annotations.read_annotations, path, server)
        return d.addCallbacks(read, missing)

    def get_annotations(self, mailbox: str) -> defer.Deferred[dict[str, bytes]]:
        """See :meth:`txmail.interfaces.IMetadataStore.get_annotations`."""
        try:
            name = "" if mailbox == "" else check_name(mailbox)
        except InvalidMailboxName:
            return defer.fail()
        return self._lock.run(self._read_annotations, name)

    @_locked
    def set_annotations(self, mailbox: str, changes: dict[str, bytes | None]) -> Generator[Any, Any, None]:
        """See :meth:`txmail.interfaces.IMetadataStore.set_annotations`."""
        name = "" if mailbox == "" else check_name(mailbox)
        old = yield self._read_annotations(name)
        entries, changed = _annotations.apply_changes(old, changes)
        if not changed:
            return
        path = self.root if name == "" else self._path(name)
        yield self._run(_annotations.write_annotations, path, entries, name == "")
        if self._annotation_total is not None:
            self._annotation_total += len(entries) - len(old)
        self._annotation_listeners.notify(AnnotationsChanged(name, changed))

    @_locked
    def annotation_count(self) -> Generator[Any, Any, int]:
        """See :meth:`txmail.interfaces.IMetadataStore.annotation_count`."""
        if self._annotation_total is None:
            names = yield self._run(io.list_folders, self.root)
            total = 0
            for name in ["", INBOX, *sorted(names)]:
                with contextlib.suppress(NoSuchMailbox):  # removed meanwhile by another program
                    total += len((yield self._read_annotations(name)))
            self._annotation_total = total
        return self._annotation_total

    def add_annotation_listener(self, listener: Callable[[Any], object]) -> Callable[[], None]:
        """See :meth:`txmail.interfaces.IMetadataStore.add_annotation_listener`."""
        return self._annotation_listeners.add(listener)


def _write_secret(path: str, data: bytes) -> None:
    """Replace *path* with *data* atomically and durably, readable by its owner only (mode 0600)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


@implementer(IMailStoreProvider, IObjectIdProvider)
class MaildirProvider:
    """
    Maildir stores below *root*: ``alice@Example.Test`` in
    ``<root>/example.test/alice/``.

    Args:
        root: the directory holding every user's mail.
        run_blocking: ``run_blocking(fn, *args) -> Deferred`` runs blocking
            file work (a thread pool in the server); by default it runs
            inline and returns a fired Deferred.
        hostname: the host name in new message file names (default: this
            machine's).
        clock: the reactor that runs the watchers (``IReactorTime``; inotify
            also needs ``IReactorFDSet``); the global reactor by default.
        watch: how mailboxes with listeners are watched for other programs'
            changes: ``"auto"`` (inotify on Linux, else polling),
            ``"inotify"``, ``"poll"``, or ``"off"`` (only the checks when a
            mailbox is asked for again, and :meth:`MaildirMailbox.refresh`).
        poll_interval: seconds between two checks of a watched mailbox when
            polling.
        settle: seconds after a directory's change during which a listing
            may miss a change made in the same timestamp tick (see
            :data:`txmail.store._maildir_io.SETTLE_NS`).
        parse_workers: the most worker processes parsing messages whole
            for a :meth:`MaildirMailbox.get_metadata` of many messages
            (:mod:`txmail.store._parse_pool`), started when first needed
            and stopped by :meth:`stop`; 0 (the default) parses them in
            the ``run_blocking`` thread.  Their wait is ``run_blocking``'s:
            give the workers to a provider whose ``run_blocking`` is a
            thread pool.  They are started ahead of that need when a
            listing takes in at least :data:`io.POOL_LEAST` files that
            other programs dropped in.
        parse_preload: modules (or functions, ``"module:name"``) the
            workers import when they start, those of the functions that
            :meth:`MaildirMailbox.derive_records` will be asked to run
            (the server names IMAP's,
            :func:`txmail.imap.structures.record_of_metadata`); a
            function asked for before is imported by the workers started
            after it anyway.
    """

    log = Logger()

    def __init__(
        self,
        root: str,
        *,
        run_blocking: RunBlocking | None = None,
        hostname: str | None = None,
        clock: IReactorTime | None = None,
        watch: str = "auto",
        poll_interval: float = POLL_INTERVAL,
        settle: float = io.SETTLE_NS / 1e9,
        parse_workers: int = 0,
        parse_preload: Sequence[str] = (),
    ) -> None:
        if watch not in ("auto", "inotify", "poll", "off"):
            raise ValueError(f"unknown watch mode {watch!r}")
        if parse_workers < 0:
            raise ValueError(f"parse_workers must be at least 0, not {parse_workers}")
        self.parse_workers = parse_workers
        self.parse_preload = tuple(parse_preload)
        self._parse_pool: ParsePool | None = None
        self.root = root
        self._run: RunBlocking = run_blocking or run_inline
        self.hostname = _sanitize_host(hostname or socket.gethostname())
        self._stores: dict[str, MaildirStore] = {}
        #: First opens of a user's store under way: {user dir: callers waiting}.
        self._opening: dict[str, list[defer.Deferred[IMailStore]]] = {}
        self._syncs: dict[str, _DirSync] = {}
        self._counter = 0
        self._clock = clock
        self._watch_mode = watch
        self._poll_interval = poll_interval
        self._settle_ns = int(settle * 1e9)
        self._watcher: FolderWatcher | None = None
        #: The mailbox that read its header columns last (it keeps them; see _keep_columns).
        self._columns_last: MaildirMailbox | None = None
        #: The mailbox that read its header lines last, and its records of a
        #: kind, by the attribute keeping them (see MaildirMailbox._keep_last).
        self._last_readers: dict[str, MaildirMailbox] = {}
        #: The wall clock in nanoseconds (the directory times' scale); tests replace it.
        self._now: Callable[[], int] = time.time_ns

    def _pool(self) -> ParsePool | None:
        """The parse worker pool (made when first asked for), or ``None`` without workers."""
        if self._parse_pool is None and self.parse_workers:
            self._parse_pool = ParsePool(self.parse_workers, preload=(io.__name__, *self.parse_preload))
        return self._parse_pool

    def _start_workers(self) -> None:
        """Start the parse workers not running (in ``run_blocking``: a start forks), without waiting."""
        pool = self._pool()
        if pool is not None:
            self._run(pool.start).addErrback(
                lambda f: self.log.failure("starting the parse workers failed", f)
            )

    def stop(self) -> None:
        """
        Stop the parse worker processes (those busy when their batch ends);
        a later need starts new ones.  The server calls it when it stops.
        """
        pool, self._parse_pool = self._parse_pool, None
        if pool is not None:
            pool.stop()

    def _watch(self, box: MaildirMailbox) -> None:
        """Watch *box* for other programs' changes while it has listeners."""
        if self._watch_mode == "off":
            return
        if self._watcher is None:
            clock = self._clock
            if clock is None:
                from twisted.internet import reactor as clock
            self._watcher = FolderWatcher(
                clock,  # type: ignore[arg-type]  # the global reactor provides IReactorTime
                mode="auto" if self._watch_mode == "inotify" else self._watch_mode,
                poll_interval=self._poll_interval,
            )
        self._watcher.start(box)

    def _unwatch(self, box: MaildirMailbox) -> None:
        if self._watcher is not None:
            self._watcher.stop(box)

    def user_dir(self, user: str) -> str:
        """
        The directory of *user*'s INBOX.

        Raises:
            ValueError: the address has no ``@``, or a part that could
                reach outside *root* (``/``, NUL, a leading ``.``, empty).
        """
        local, at, domain = user.rpartition("@")
        if not at:
            raise ValueError(f"not a user address: {user!r}")
        domain = domain.lower()
        _check_path_part(local, "local part")
        _check_path_part(domain, "domain")
        return os.path.join(self.root, domain, local)

    def store_for(self, user: str) -> defer.Deferred[IMailStore]:
        """
        See :meth:`txmail.interfaces.IMailStoreProvider.store_for`.

        The first open of a user creates their INBOX when missing and reads
        their files through ``run_blocking``; later calls answer with the
        same store at once.  Calls made while that first open runs wait for
        it and get the same store (one open per user at a time).  An unsafe
        address fails with ``ValueError`` (:meth:`user_dir`).
        """
        try:
            path = self.user_dir(user)
        except ValueError:
            return defer.fail()
        store = self._stores.get(path)
        if store is not None:
            return defer.succeed(store)
        d: defer.Deferred[IMailStore] = defer.Deferred()
        waiting = self._opening.get(path)
        if waiting is not None:
            waiting.append(d)
            return d
        self._opening[path] = [d]
        opened = self._run(_open_user_dir, path)
        opened.addCallback(lambda files: MaildirStore(self, user, path, files))
        opened.addBoth(self._opened, path)
        return d

    def _opened(self, result: MaildirStore | Failure, path: str) -> None:
        """The first open of the store at *path* ended: answer everyone waiting for it."""
        waiting = self._opening.pop(path)
        if isinstance(result, MaildirStore):
            self._stores[path] = result
            for d in waiting:
                d.callback(result)
        else:
            for d in waiting:
                d.errback(result)

    def _unique(self) -> str:
        """The unique part of a new Maildir file name (before ``,S=``)."""
        self._counter += 1
        now = time.time()
        secs = int(now)
        usec = int((now - secs) * 1_000_000)
        return f"{secs}.M{usec}P{os.getpid()}Q{self._counter}.{self.hostname}"

    def _sync_dir(self, path: str) -> defer.Deferred[None]:
        sync = self._syncs.get(path)
        if sync is None:
            sync = self._syncs[path] = _DirSync(path, self._run)
        return sync.sync()
