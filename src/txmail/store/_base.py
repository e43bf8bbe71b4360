"""
State and behaviour shared by the memory and Maildir mailbox stores.

:class:`MailboxState` keeps one mailbox's message table in memory (UID to
:class:`~txmail.model.MessageInfo`), its counters (UIDNEXT, the highest
modification sequence, the ``\\Recent`` watermark, unseen count and total
size), and its listeners.  The backends call its ``_add``/``_set``/
``_remove`` methods from the reactor thread once a change is durable, then
``_notify``.  Everything here is synchronous and does no I/O.

Modification sequences (RFC 7162 section 3.1.1): a new mailbox starts with
HIGHESTMODSEQ 1; every message added or whose flags change gets a fresh
modseq of its own (so a message's modseq identifies its last change), and
each expunge raises HIGHESTMODSEQ by one.
"""

from __future__ import annotations

import itertools
import time
from array import array
from collections.abc import Callable, Generator, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmail import mime
from txmail.errors import InvalidMailboxName, NoSuchMailbox
from txmail.interfaces import HEADER_COLUMNS, HEADER_LINES, IMailbox
from txmail.model import (
    DELETED,
    DELIMITER,
    INBOX,
    SEEN,
    FlagMode,
    FolderChange,
    FolderInfo,
    MailboxChange,
    MailboxDeleted,
    MailboxStatus,
    MessageInfo,
    MessagesChanged,
    SpecialUse,
    match_mailbox_pattern,
    normalize_flags,
    normalize_mailbox_name,
)
from txmail.store._ids import new_email_id

__all__ = [
    "EXPUNGED_IDS_KEPT",
    "URLAUTH_KEY_SIZE",
    "Listener",
    "MailboxState",
    "StoreListeners",
    "check_name",
    "columns_from_metadata",
    "folder_infos",
    "generic_copy",
    "lines_from_metadata",
    "next_uidvalidity",
    "select_uids",
    "trim_expunged_ids",
]

Listener = Callable[[MailboxChange], object]

#: Octets of a URLAUTH mailbox access key (RFC 4467 section 3: at least 128 bits).
URLAUTH_KEY_SIZE = 32

#: Largest UIDVALIDITY (a 32-bit non-zero number, RFC 3501 section 9).
MAX_UIDVALIDITY = 0xFFFFFFFF

#: The EMAILIDs of at most this many expunged messages are kept per mailbox
#: (:class:`txmail.interfaces.IExpungedEmailIds`): 2.5 MB at most in memory.
EXPUNGED_IDS_KEPT = 100_000


def trim_expunged_ids(ids: dict[int, str], limit: int = EXPUNGED_IDS_KEPT) -> None:
    """Forget the oldest entries of *ids* (UID -> EMAILID, oldest first) beyond *limit*."""
    excess = len(ids) - limit
    if excess > 0:
        for uid in list(itertools.islice(ids, excess)):
            del ids[uid]


def check_name(name: str) -> str:
    """
    Normalise a mailbox name, raising :class:`InvalidMailboxName` instead of
    ``ValueError``.
    """
    try:
        return normalize_mailbox_name(name)
    except ValueError as e:
        raise InvalidMailboxName(str(e)) from None


def next_uidvalidity(last: int) -> int:
    """
    A fresh UIDVALIDITY: the current time, or one more than *last* when the
    clock has not moved past it (RFC 3501 section 2.3.1.1: a re-created name
    must not get an old value back).  Stays within 32 bits.
    """
    value = max(int(time.time()), last + 1)
    if value > MAX_UIDVALIDITY:  # pragma: no cover - far future
        value = 1
    return value


def columns_from_metadata(
    mailbox: IMailbox, uids: Iterable[int]
) -> defer.Deferred[dict[int, tuple[str, ...]]]:
    """:meth:`~txmail.interfaces.IHeaderColumns.header_columns` made from *mailbox*'s ``get_metadata``."""
    return mailbox.get_metadata(uids).addCallback(
        lambda found: {uid: mime.header_columns(md.headers, HEADER_COLUMNS) for uid, md in found.items()}
    )


_LINE_NAMES = frozenset(HEADER_LINES)


def lines_from_metadata(mailbox: IMailbox, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, str]]]:
    """:meth:`~txmail.interfaces.IHeaderLines.header_lines` made from *mailbox*'s ``get_metadata``."""
    return mailbox.get_metadata(uids).addCallback(
        lambda found: {uid: mime.header_lines(md.headers, _LINE_NAMES) for uid, md in found.items()}
    )


def select_uids(uids: Iterable[int] | None, present: dict[int, Any]) -> list[int]:
    """
    The UIDs of *uids* that are keys of *present*, ascending (*present* is
    kept in ascending UID order); all of them for ``None``.  A ``range`` or a
    set is tested by membership, so ``range(1, 2**32)`` costs no more than
    the mailbox's size.
    """
    if uids is None:
        return list(present)
    if isinstance(uids, list | array) and len(uids) == len(present):
        # All of them, as a session asks (its view's UIDs): compared in C.
        keys = list(present)
        if keys == (uids if isinstance(uids, list) else uids.tolist()):
            return keys
    if not isinstance(uids, range | set | frozenset):
        uids = set(uids)
    if len(uids) < len(present) // 4:
        return sorted(u for u in uids if u in present)
    return list(filter(uids.__contains__, present))  # in C


def folder_infos(
    selectable: Iterable[str],
    pattern: str,
    subscribed: set[str],
    roles: dict[str, SpecialUse],
) -> list[FolderInfo]:
    """
    Build the LIST answer from the set of selectable mailbox names.

    Parents that exist only because of their children are included with
    ``selectable=False``; ``INBOX`` is always selectable and comes first.
    """
    names = set(selectable)
    names.add(INBOX)
    every = set(names)
    for name in names:
        parts = name.split(DELIMITER)
        for i in range(1, len(parts)):
            every.add(DELIMITER.join(parts[:i]))
    parents = set()
    for name in every:
        head, sep, _ = name.rpartition(DELIMITER)
        if sep:
            parents.add(head)
    out = [
        FolderInfo(
            name=name,
            special_use=roles.get(name),
            subscribed=name in subscribed,
            has_children=name in parents,
            selectable=name in names,
        )
        for name in every
        if match_mailbox_pattern(pattern, name)
    ]
    out.sort(key=lambda f: (f.name != INBOX, f.name))
    return out


class StoreListeners:
    """
    The store listeners of :class:`txmail.interfaces.IStoreChanges`, for a
    store class to inherit: it calls :meth:`_tell_store` after each folder
    or subscription change, and its mailboxes (:meth:`MailboxState._notify`)
    after each message change, only when a listener is registered.
    """

    log = Logger()

    _store_listeners: dict[int, Callable[[FolderChange], object]]
    _store_listener_token: int

    def _init_store_listeners(self) -> None:
        self._store_listeners = {}
        self._store_listener_token = 0

    def add_store_listener(self, listener: Callable[[FolderChange], object]) -> Callable[[], None]:
        """See :meth:`txmail.interfaces.IStoreChanges.add_store_listener`."""
        self._store_listener_token += 1
        token = self._store_listener_token
        self._store_listeners[token] = listener

        def remove() -> None:
            self._store_listeners.pop(token, None)

        return remove

    def _tell_store(self, *changes: FolderChange) -> None:
        """Tell every store listener about *changes*; a failing listener is logged, not fatal."""
        for listener in list(self._store_listeners.values()):
            for change in changes:
                try:
                    listener(change)
                except Exception:
                    self.log.failure("store listener failed")


class MailboxState:
    """
    The in-memory message table and counters of one mailbox.

    Subclasses set ``self.name`` and ``self.uidvalidity`` and call
    :meth:`_init_state`.  ``self._infos`` maps UID to ``MessageInfo`` in
    ascending UID order (UIDs are only ever added above the highest).
    """

    log = Logger()

    name: str
    uidvalidity: int

    def _init_state(self, uidnext: int = 1, highest_modseq: int = 1, recent: int = 0) -> None:
        self._infos: dict[int, MessageInfo] = {}
        self._uidnext = max(1, uidnext)
        self._modseq = max(1, highest_modseq)
        self._recent = recent
        self._unseen = 0
        self._size = 0
        self._listeners: dict[int, Listener] = {}
        self._listener_token = 0
        self._deleted = False
        #: The expunge history (RFC 7162 section 3.2): ``(modseq, uids)``
        #: per expunge, ascending modseq; complete after ``_expunge_horizon``
        #: (before it, :meth:`_expunged_since` answers with every UID gone).
        self._expunge_log: list[tuple[int, tuple[int, ...]]] = []
        self._expunge_horizon = 0
        #: The EMAILIDs of the messages expunged (:class:`IExpungedEmailIds`),
        #: by UID, oldest first, at most :data:`EXPUNGED_IDS_KEPT`.
        self._expunged_ids: dict[int, str] = {}

    # -- checks ---------------------------------------------------------

    def _check_alive(self) -> None:
        if self._deleted:
            raise NoSuchMailbox(self.name)

    def _alive_or_fail(self) -> defer.Deferred[Any] | None:
        """``None``, or a failed Deferred when the mailbox was deleted."""
        if self._deleted:
            return defer.fail(NoSuchMailbox(self.name))
        return None

    # -- state changes (reactor thread, once durable) ---------------------

    def _next_modseq(self) -> int:
        self._modseq += 1
        return self._modseq

    def _add(self, entries: Iterable[tuple[frozenset[str], int, float, str | None]]) -> list[MessageInfo]:
        """
        Give each ``(flags, size, internal_date, email_id)`` the next UID, a
        modseq, the save date now (RFC 8514 section 3) and its email id (a
        new one for ``None``; a copy keeps the source's, RFC 8474 section 5.1).
        """
        added = []
        now = time.time()
        for flags, size, internal_date, email_id in entries:
            uid = self._uidnext
            self._uidnext += 1
            info = MessageInfo(
                uid, flags, size, internal_date, self._next_modseq(), now, email_id or new_email_id()
            )
            self._infos[uid] = info
            self._count(info, 1)
            added.append(info)
        return added

    def _insert(self, info: MessageInfo) -> None:
        """Put back a message read from persistent state (UID given)."""
        self._infos[info.uid] = info
        self._count(info, 1)
        if info.uid >= self._uidnext:
            self._uidnext = info.uid + 1
        if info.modseq > self._modseq:
            self._modseq = info.modseq

    def _count(self, info: MessageInfo, sign: int) -> None:
        self._size += sign * info.size
        if SEEN not in info.flags:
            self._unseen += sign

    def _set(self, changes: Iterable[tuple[int, frozenset[str]]]) -> list[MessageInfo]:
        """Set new flags on messages, each with a fresh modseq."""
        changed = []
        for uid, flags in changes:
            old = self._infos.get(uid)
            if old is None or old.flags == flags:
                continue
            info = MessageInfo(
                uid, flags, old.size, old.internal_date, self._next_modseq(), old.save_date, old.email_id
            )
            self._count(old, -1)
            self._infos[uid] = info
            self._count(info, 1)
            changed.append(info)
        return changed

    def _remove(self, uids: Iterable[int]) -> list[int]:
        """Remove messages; raises HIGHESTMODSEQ once if any was removed."""
        removed = []
        ids = self._expunged_ids
        for uid in sorted(uids):
            info = self._infos.pop(uid, None)
            if info is not None:
                self._count(info, -1)
                removed.append(uid)
                if info.email_id is not None:
                    ids[uid] = info.email_id
        if removed:
            self._expunge_log.append((self._next_modseq(), tuple(removed)))
            trim_expunged_ids(ids)
        return removed

    def _expunged_email_ids(self, uids: Iterable[int]) -> dict[int, str]:
        """See :meth:`txmail.interfaces.IExpungedEmailIds.expunged_email_ids`."""
        ids = self._expunged_ids
        return {uid: ids[uid] for uid in uids if uid in ids}

    def _expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> list[int]:
        """
        See :meth:`txmail.interfaces.IExpungeHistory.expunged_since`: from
        the log, or, for a *modseq* before the history's horizon, every UID
        below UIDNEXT that is not present (a superset, RFC 7162 section
        3.2.6).
        """
        wanted = None if uids is None else {u for u in uids if 0 < u < self._uidnext}
        if modseq < self._expunge_horizon:
            if wanted is None:
                return [u for u in range(1, self._uidnext) if u not in self._infos]
            return sorted(u for u in wanted if u not in self._infos)
        found: set[int] = set()
        # The log is in ascending modseq: walk back from the newest entry.
        for entry_modseq, removed in reversed(self._expunge_log):
            if entry_modseq <= modseq:
                break
            found.update(removed)
        if wanted is not None:
            found &= wanted
        return sorted(found)

    def _flag_changes(
        self,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: FlagMode,
        unchanged_since: int | None,
        skip: set[int] | frozenset[int] = frozenset(),
    ) -> list[tuple[int, frozenset[str]]]:
        """Compute ``(uid, new flags)`` for the messages a STORE would change."""
        wanted = normalize_flags(flags)
        mode = FlagMode(mode)
        out = []
        for uid in select_uids(uids, self._infos):
            if uid in skip:
                continue
            info = self._infos[uid]
            if unchanged_since is not None and info.modseq > unchanged_since:
                continue
            if mode is FlagMode.REPLACE:
                new = wanted
            elif mode is FlagMode.ADD:
                new = info.flags | wanted
            else:
                new = info.flags - wanted
            if new != info.flags:
                out.append((uid, new))
        return out

    def _deleted_uids(
        self, uids: Iterable[int] | None, skip: set[int] | frozenset[int] = frozenset()
    ) -> list[int]:
        return [
            uid
            for uid in select_uids(uids, self._infos)
            if DELETED in self._infos[uid].flags and uid not in skip
        ]

    def _notify(self, change: MailboxChange) -> None:
        """
        Tell every listener about *change*; a failing listener is logged,
        not fatal.  Then the store's listeners (:class:`StoreListeners`),
        if it has any, hear it as :class:`~txmail.model.MessagesChanged`.
        """
        for listener in list(self._listeners.values()):
            try:
                listener(change)
            except Exception:
                self.log.failure("mailbox listener failed for {mailbox}", mailbox=self.name)
        self._tell_store_listeners(change)

    def _tell_store_listeners(self, change: MailboxChange) -> None:
        """
        Pass *change* on to the store's listeners as
        :class:`~txmail.model.MessagesChanged` (a hook: the PostgreSQL
        store tells them from what it read instead).
        """
        store: Any = getattr(self, "store", None)
        if getattr(store, "_store_listeners", None) and not isinstance(change, MailboxDeleted):
            store._tell_store(MessagesChanged(self.name, change, self))

    def _mark_deleted(self) -> None:
        """The mailbox is gone: tell listeners and refuse further use."""
        if self._deleted:
            return
        self._deleted = True
        self._notify(MailboxDeleted())
        self._listeners.clear()

    def _persist_recent(self, watermark: int) -> None:
        """Hook: make the claim watermark durable (disk stores)."""

    # -- IMailbox methods that only read state ----------------------------

    def _status(self) -> MailboxStatus:
        recent = 0
        if self._infos and next(iter(self._infos)) > self._recent:
            recent = len(self._infos)  # nothing claimed yet: no walk over every message
        else:
            for uid in reversed(self._infos):
                if uid <= self._recent:
                    break
                recent += 1
        return MailboxStatus(
            messages=len(self._infos),
            recent=recent,
            unseen=self._unseen,
            uidnext=self._uidnext,
            uidvalidity=self.uidvalidity,
            highest_modseq=self._modseq,
            size=self._size,
        )

    def status(self) -> defer.Deferred[MailboxStatus]:
        """See :meth:`txmail.interfaces.IMailbox.status`."""
        return self._alive_or_fail() or defer.succeed(self._status())

    def list_messages(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[MessageInfo]]:
        """See :meth:`txmail.interfaces.IMailbox.list_messages`."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        if uids is None:
            return defer.succeed(list(self._infos.values()))
        infos = self._infos
        return defer.succeed([infos[u] for u in select_uids(uids, infos)])

    def claim_recent(self) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IMailbox.claim_recent`."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        claimed = []
        for uid in reversed(self._infos):
            if uid <= self._recent:
                break
            claimed.append(uid)
        claimed.reverse()
        if claimed:
            self._recent = claimed[-1]
            self._persist_recent(self._recent)
        return defer.succeed(claimed)

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """See :meth:`txmail.interfaces.IMailbox.add_listener`."""
        self._listener_token += 1
        token = self._listener_token
        self._listeners[token] = listener

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove


@defer.inlineCallbacks
def generic_copy(
    source: IMailbox, uids: list[int], target: IMailbox
) -> Generator[Any, Any, list[tuple[int, int]]]:
    """
    Copy messages between mailboxes of any two backends through the
    :class:`~txmail.interfaces.IMailbox` interface: read each message and
    append it to *target* with its flags and internal date.

    Returns ``Deferred[list[tuple[int, int]]]`` of (source, target) UIDs.
    """
    infos = yield source.list_messages(uids)
    pairs: list[tuple[int, int]] = []
    for info in infos:
        data = yield source.read_message(info.uid)
        new_uid = yield target.append(data, info.flags, info.internal_date)
        pairs.append((info.uid, new_uid))
    return pairs
