"""
One user's mail as JMAP sees it (RFC 8621), and the state strings of its
data types (RFC 8620 section 5.1), built from the mailbox contract.

Ids
===

* A Mailbox's id is the store's MAILBOXID (:class:`txmail.interfaces.IObjectIds`),
  which a rename keeps.  A name that exists only as the parent of others
  (IMAP ``\\Noselect``) has no mailbox object: its id is ``N`` and a hash of
  its name.
* An Email's id is the EMAILID: one JMAP Email is every message with that
  EMAILID in the user's mailboxes (a copy or move keeps it), and its
  ``mailboxIds`` are their mailboxes.
* A Thread's id is the message's THREADID (RFC 8474 section 5.2,
  :func:`txmail.imap.thread.thread_id`): the hash of the first message id
  of its ``References`` (else ``In-Reply-To``, else its own ``Message-ID``).
  Every reply naming the same first message is in the same thread; the id
  depends on the message's own header fields only, so it never changes
  (RFC 8621 section 4.1.1: ``threadId`` is immutable), survives restarts,
  and equals what IMAP OBJECTID gives.  A reply whose ``References`` lost
  the thread's first message starts a thread of its own.

States
======

A state string encodes, for each selectable mailbox, its id, UIDVALIDITY,
UIDNEXT, HIGHESTMODSEQ and message count (Email and Thread), or its id, a
hash of its name, parent, role and subscription, HIGHESTMODSEQ and message
count (Mailbox); compressed, in base64url.  Since modification sequences are
kept by the store, ``/changes`` is computed from the store alone, after a
restart as before:

* a message whose modseq is above the state's is new in its mailbox when
  its UID is at least the state's UIDNEXT, else changed (its flags);
* the UIDs expunged since (:class:`txmail.interfaces.IExpungeHistory`) are
  the copies removed.  Their EMAILIDs come from the UID to EMAILID map this
  module keeps for each mailbox it has listed (in memory, for the life of
  the process), else from the store, which remembers the EMAILIDs of the
  messages it expunged (:class:`txmail.interfaces.IExpungedEmailIds`: the
  memory, Maildir and PostgreSQL stores, across restarts and nodes).  A
  removed UID that neither knows (a store without that interface, or one
  that forgot it) cannot be named, and the answer is
  ``cannotCalculateChanges``; so it is for a mailbox deleted, or given a
  new UIDVALIDITY, with messages the map does not know.  Flag changes,
  deliveries, expunges, copies and moves are exact across restarts, since
  they are read from the store's modseqs and expunge history.
* ``maxChanges`` is kept by advancing whole mailboxes in id order, or, when
  the first one alone has more changes, that mailbox up to the highest
  modseq that keeps the answer within it: the new state is one of those
  intermediate states, and ``hasMoreChanges`` is true.

An Email existed at the old state when one of its copies did (present now
with a UID below that mailbox's old UIDNEXT, or removed since): it is then
updated (or destroyed when no copy is left), else created.

Caching
=======

Per store (in memory, for the life of the process):

* each mailbox's listing (:meth:`txmail.interfaces.IMailbox.list_messages`),
  kept while its UIDVALIDITY, HIGHESTMODSEQ, UIDNEXT and message count are
  the same;
* the view (:class:`MailView`: the EMAILID index, the Emails by date, the
  mailbox counts), kept while no mailbox changed, and otherwise patched
  with the changes of the mailboxes that changed (their messages with a
  higher modseq and their UIDs expunged since, :meth:`MailView.updated`),
  so that the cost of a call follows the changes, not the size of the
  mailboxes; it is built anew only when the folders changed;
* thread ids, header columns and previews by EMAILID: a message never
  changes, so they are computed once.

This module is sans-IO apart from the Deferreds the store returns.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import weakref
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from txmail import mime
from txmail.errors import NoSuchMailbox
from txmail.imap.thread import thread_id
from txmail.interfaces import (
    HEADER_COLUMNS,
    IExpungedEmailIds,
    IExpungeHistory,
    IHeaderColumns,
    IMailbox,
    IMailStore,
)
from txmail.jmap.core import MethodError
from txmail.model import DELIMITER, DRAFT, INBOX, SEEN, FolderInfo, MailboxStatus, MessageInfo, SpecialUse

__all__ = [
    "ROLES",
    "BoxView",
    "EmailChanges",
    "MailView",
    "cannot_calculate",
    "decode_state",
    "email_changes",
    "encode_state",
    "mail_view",
    "parent_name",
    "placeholder_id",
]

#: RFC 8621 section 2 roles (the IANA registry's names) of the special-use attributes (RFC 6154).
ROLES = {
    SpecialUse.SENT: "sent",
    SpecialUse.DRAFTS: "drafts",
    SpecialUse.TRASH: "trash",
    SpecialUse.JUNK: "junk",
    SpecialUse.ARCHIVE: "archive",
}


def placeholder_id(name: str) -> str:
    """The id of a non-selectable parent name: ``N`` and 96 bits of its BLAKE2b hash."""
    return "N" + hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()


def parent_name(name: str) -> str | None:
    """The name of *name*'s parent, ``None`` at the top."""
    head, sep, _ = name.rpartition(DELIMITER)
    return head if sep else None


def encode_state(kind: str, entries: list[list[Any]]) -> str:
    """A state string: *kind* (one letter) and the compressed JSON of *entries*, in base64url."""
    raw = zlib.compress(json.dumps(entries, separators=(",", ":")).encode("utf-8"), 9)
    return kind + base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


#: The most octets a state string's JSON may hold once inflated: this
#: server's states hold about 60 octets a mailbox (some 17,000 mailboxes in
#: 1 MiB).  A client's string that inflates to more (a "zip bomb", or
#: entries made up by the thousand, each looked at) is refused unread.
STATE_INFLATED_MAX = 1 << 20


def decode_state(kind: str, state: Any) -> list[list[Any]] | None:
    """The entries of a state string of *kind*, or ``None`` when it is not one (any input)."""
    if not isinstance(state, str) or not state.startswith(kind) or len(state) > 1_000_000:
        return None
    try:
        text = state[1:]
        inflate = zlib.decompressobj()
        raw = inflate.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), STATE_INFLATED_MAX)
        if not inflate.eof or inflate.unconsumed_tail:
            return None  # more than STATE_INFLATED_MAX, or cut short
        entries = json.loads(raw)
    except (ValueError, zlib.error, UnicodeError, RecursionError):
        return None
    if not isinstance(entries, list) or not all(isinstance(e, list) and e for e in entries):
        return None
    return entries


@dataclass(slots=True)
class BoxView:
    """One mailbox of a :class:`MailView`: a folder, its mailbox object (``None`` when not selectable) and listing."""

    id: str
    folder: FolderInfo
    mailbox: IMailbox | None = None
    status: MailboxStatus | None = None
    infos: list[MessageInfo] = field(default_factory=list)

    @property
    def opened(self) -> IMailbox:
        """The mailbox object, of a selectable mailbox (every box an Email is in is one)."""
        if self.mailbox is None:
            raise NoSuchMailbox(self.folder.name)
        return self.mailbox

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def role(self) -> str | None:
        """The JMAP role (RFC 8621 section 2): ``inbox`` or a special use's."""
        if self.folder.name == INBOX:
            return "inbox"
        return None if self.folder.special_use is None else ROLES.get(self.folder.special_use)

    def props_hash(self, parent_id: str | None) -> str:
        """A short hash of the properties a Mailbox/changes reports besides its counts."""
        text = "\0".join((self.name, parent_id or "", self.role or "", "1" if self.folder.subscribed else ""))
        return hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()

    def email_entry(self) -> list[Any]:
        status = self.status
        assert status is not None
        return [self.id, status.uidvalidity, status.uidnext, status.highest_modseq, status.messages]


class _UserCache:
    """What is kept for one store between calls (see the module docstring)."""

    def __init__(self) -> None:
        #: (mailbox id, uidvalidity) -> uid -> email id, of every message ever listed.
        self.uid_maps: dict[tuple[str, int], dict[int, str]] = {}
        #: email id -> thread id (immutable).
        self.threads: dict[str, str] = {}
        #: email id -> the header columns (immutable: a message never changes).
        self.columns: dict[str, tuple[str, ...]] = {}
        #: email id -> preview (immutable).
        self.previews: dict[str, str] = {}
        self.view: MailView | None = None
        self.view_key: tuple[Any, ...] | None = None


_CACHES: weakref.WeakKeyDictionary[IMailStore, _UserCache] = weakref.WeakKeyDictionary()


def _cache_for(store: IMailStore) -> _UserCache:
    cache = _CACHES.get(store)
    if cache is None:
        cache = _CACHES[store] = _UserCache()
    return cache


class MailView:
    """
    A consistent view of one user's mailboxes: their folders, listings and
    the EMAILID index (:attr:`emails`, EMAILID -> its copies as
    ``(BoxView, MessageInfo)`` in mailbox order).
    """

    def __init__(
        self,
        store: IMailStore,
        cache: _UserCache,
        boxes: list[BoxView],
        emails: dict[str, list[tuple[BoxView, MessageInfo]]] | None = None,
        order: list[tuple[float, str]] | None = None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.boxes: dict[str, BoxView] = {b.id: b for b in boxes}
        self.by_name: dict[str, BoxView] = {b.name: b for b in boxes}
        if emails is None:
            emails = {}
            for box in boxes:
                for info in box.infos:
                    eid = info.email_id or f"{box.id}-{info.uid}"
                    copies = emails.get(eid)
                    if copies is None:
                        emails[eid] = [(box, info)]
                    else:
                        copies.append((box, info))
        self.emails = emails
        if order is None:
            order = [(copies[0][1].internal_date, eid) for eid, copies in emails.items()]
            order.sort()
        #: Every EMAILID with its internal date, oldest first.
        self.order = order
        self._by_date: list[str] | None = None
        self._counts: dict[str, tuple[int, int, int, int]] | None = None
        self._threads: dict[str, list[str]] | None = None
        self._aggregate: _Counts | None = None
        #: The view whose counts this one's derive from, and the Emails changed since.
        self._parent: MailView | None = None
        self._affected: set[str] = set()
        #: Email/query results of this view, by query (see :mod:`txmail.jmap.query`).
        self.queries: dict[str, list[str]] = {}

    def updated(
        self,
        boxes: list[BoxView],
        deltas: dict[str, tuple[list[MessageInfo], list[int]]],
        removed: Iterable[BoxView] = (),
    ) -> MailView:
        """
        This view after the changes *deltas* (mailbox id -> the messages
        new or changed, the UIDs expunged; every message of a mailbox new
        since) and the mailboxes *removed* (this view's, deleted since): the
        index copied and patched, at the cost of the changes (and of a copy
        of the index, done in C) rather than of every message.  The
        mailboxes this view and *boxes* share must have the same names (the
        order of an Email's copies follows the names).
        """
        emails = self.emails.copy()
        order = self.order.copy()
        position = {b.id: i for i, b in enumerate(boxes)}
        by_id = {b.id: b for b in boxes}
        removals: list[tuple[str, int, str | None]] = []
        for box_id, (_, expunged) in deltas.items():
            status = by_id[box_id].status
            assert status is not None
            uid_map = self.cache.uid_maps.get((box_id, status.uidvalidity), {})
            removals += [(box_id, uid, uid_map.get(uid)) for uid in expunged]
        for old_box in removed:
            removals += [(old_box.id, i.uid, i.email_id or f"{old_box.id}-{i.uid}") for i in old_box.infos]
        for box_id, uid, eid in removals:
            copies = emails.get(eid) if eid is not None else None
            if not copies:
                continue
            kept = [c for c in copies if not (c[0].id == box_id and c[1].uid == uid)]
            if kept:
                emails[eid] = kept  # type: ignore[index]  # eid is a str: only messages with an email id are indexed
            else:
                del emails[eid]  # type: ignore[arg-type]  # eid is a str: only messages with an email id are indexed
                key = (copies[0][1].internal_date, eid)
                at = bisect.bisect_left(order, key)
                if at < len(order) and order[at] == key:
                    del order[at]
        for box_id, (touched, _) in deltas.items():
            box = by_id[box_id]
            for info in touched:
                eid = info.email_id or f"{box_id}-{info.uid}"
                copies = emails.get(eid)
                if copies is None:
                    emails[eid] = [(box, info)]
                    bisect.insort(order, (info.internal_date, eid))
                    continue
                kept = [c for c in copies if not (c[0].id == box_id and c[1].uid == info.uid)]
                kept.append((box, info))
                kept.sort(key=lambda c: (position.get(c[0].id, 0), c[1].uid))
                emails[eid] = kept
        view = MailView(self.store, self.cache, boxes, emails, order)
        affected = {i.email_id or f"{b}-{i.uid}" for b, (touched, _) in deltas.items() for i in touched}
        affected.update(eid for _, _, eid in removals if eid is not None)
        if self._aggregate is not None:
            view._parent, view._affected = self, affected
        elif self._parent is not None:
            view._parent, view._affected = self._parent, self._affected | affected
        return view

    # -- ids and names -------------------------------------------------------

    def parent_id(self, box: BoxView) -> str | None:
        parent = parent_name(box.name)
        if parent is None:
            return None
        found = self.by_name.get(parent)
        return found.id if found is not None else placeholder_id(parent)

    def email_state(self) -> str:
        return encode_state("e", [b.email_entry() for b in self.boxes.values() if b.status is not None])

    async def mailbox_counts(self) -> dict[str, tuple[int, int, int, int]]:
        """
        Each mailbox's ``totalEmails``, ``unreadEmails``, ``totalThreads``
        and ``unreadThreads`` (RFC 8621 section 2): an Email is unread
        without ``$seen`` and ``$draft``; a Thread is unread in a mailbox
        holding one of its Emails when one of its Emails outside the trash
        (or in it, for the trash itself) is unread.  Computed once a view:
        from the counts of the view it was patched from and the Emails that
        changed since, when that view had them (:class:`_Counts`), else
        from every Email.
        """
        if self._counts is not None:
            return self._counts
        trash = next((b.id for b in self.boxes.values() if b.role == "trash"), None)
        parent, affected = self._parent, self._affected
        self._parent, self._affected = None, set()
        if parent is not None and parent._aggregate is not None and parent._aggregate.trash == trash:
            await self.thread_ids([e for e in affected if e in self.emails])
            aggregate = parent._aggregate.copy()
            for eid in affected:
                if eid in parent.emails:
                    aggregate.remove(*parent._contribution(eid))
                if eid in self.emails:
                    aggregate.add(*self._contribution(eid))
        else:
            await self.thread_ids()
            aggregate = _Counts(trash)
            for eid in self.emails:
                aggregate.add(*self._contribution(eid))
        self._aggregate = aggregate
        self._counts = {box_id: aggregate.counts(box_id) for box_id in self.boxes}
        return self._counts

    def _contribution(self, eid: str) -> tuple[frozenset[str], bool, str]:
        """What an Email adds to the counts: its mailboxes, whether it is unread, its thread."""
        return (
            frozenset(box.id for box, _ in self.emails[eid]),
            self.is_unread(eid),
            self.cache.threads[eid],
        )

    async def mailbox_state(self) -> str:
        """The Mailbox state: each mailbox's id, a hash of its other properties, and its counts."""
        counts = await self.mailbox_counts()
        return encode_state(
            "m", [[b.id, b.props_hash(self.parent_id(b)), *counts[b.id]] for b in self.boxes.values()]
        )

    # -- emails ------------------------------------------------------------

    def keywords(self, email_id: str) -> frozenset[str]:
        """The IMAP flags of an Email: the union of its copies' flags."""
        copies = self.emails.get(email_id, ())
        if len(copies) == 1:
            return copies[0][1].flags
        out: set[str] = set()
        for _, info in copies:
            out |= info.flags
        return frozenset(out)

    def received_at(self, email_id: str) -> float:
        """The internal date of the Email's first copy."""
        return self.emails[email_id][0][1].internal_date

    def by_date(self) -> list[str]:
        """Every EMAILID, newest first (internal date, then EMAILID descending); computed once a view."""
        if self._by_date is None:
            self._by_date = [eid for _, eid in reversed(self.order)]
        return self._by_date

    async def columns(self, email_ids: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """The header columns (:data:`txmail.interfaces.HEADER_COLUMNS`) of Emails, read once and kept."""
        known = self.cache.columns
        wanted: dict[str, dict[int, str]] = {}
        out: dict[str, tuple[str, ...]] = {}
        for eid in email_ids:
            cols = known.get(eid)
            if cols is not None:
                out[eid] = cols
                continue
            copies = self.emails.get(eid)
            if copies:
                box, info = copies[0]
                wanted.setdefault(box.id, {})[info.uid] = eid
        for box_id, uids in wanted.items():
            box = self.boxes[box_id]
            columns = IHeaderColumns(box.mailbox, None)
            if columns is not None:
                found = await columns.header_columns(list(uids))
            else:
                metadata = await box.opened.get_metadata(list(uids))
                found = {u: mime.header_columns(md.headers, HEADER_COLUMNS) for u, md in metadata.items()}
            for uid, cols in found.items():
                eid = uids[uid]
                known[eid] = out[eid] = cols
        return out

    async def thread_ids(self, email_ids: Iterable[str] | None = None) -> dict[str, str]:
        """The thread id of each Email of *email_ids* (every one for ``None``)."""
        ids = list(self.emails) if email_ids is None else [e for e in email_ids if e in self.emails]
        threads = self.cache.threads
        missing = [e for e in ids if e not in threads]
        if missing:
            columns = await self.columns(missing)
            for eid in missing:
                cols = columns.get(eid, ())
                pairs = list(zip(cols[0::2], cols[1::2], strict=True))
                threads[eid] = thread_id(pairs, eid) or ("T" + eid[1:])
        return {e: threads[e] for e in ids if e in threads}

    async def threads(self) -> dict[str, list[str]]:
        """Thread id -> its EMAILIDs, oldest first (internal date, then id); computed once a view."""
        if self._threads is None:
            await self.thread_ids([eid for _, eid in self.order if eid not in self.cache.threads])
            known = self.cache.threads
            out: dict[str, list[str]] = {}
            for _, eid in self.order:
                out.setdefault(known[eid], []).append(eid)
            self._threads = out
        return self._threads

    def uid_map(self, box_id: str, uidvalidity: int) -> dict[int, str] | None:
        return self.cache.uid_maps.get((box_id, uidvalidity))

    def is_unread(self, email_id: str) -> bool:
        """Neither ``$seen`` nor ``$draft`` (RFC 8621 section 2, ``unreadEmails``)."""
        flags = self.keywords(email_id)
        return SEEN not in flags and DRAFT not in flags


async def mail_view(store: IMailStore) -> MailView:
    """
    The current :class:`MailView` of *store*: one ``list_mailboxes`` and one
    ``status`` a mailbox, and a ``list_messages`` of each mailbox that
    changed; the view before patched with what changed when the folders are
    the same (:meth:`MailView.updated`), built anew otherwise.  Every Email
    of the view has its thread id.
    """
    cache = _cache_for(store)
    # The view to patch, taken before the first wait: a call that overtakes
    # this one may replace cache.view meanwhile, and the changes computed
    # here are those since *base*.
    base, base_key = cache.view, cache.view_key
    kept: dict[str, tuple[Any, list[MessageInfo]]] = {}
    if base is not None and base_key is not None:
        for item in base_key:
            if not isinstance(item, FolderInfo):
                kept[item[1]] = (item[2], base.boxes[item[1]].infos)
    folders = await store.list_mailboxes("*")
    boxes: list[BoxView] = []
    key: list[Any] = []
    deltas: dict[str, tuple[list[MessageInfo], list[int]]] = {}
    complete = True  # every changed mailbox has its delta
    for folder in folders:
        if not folder.selectable:
            boxes.append(BoxView(placeholder_id(folder.name), folder))
            key.append(folder)
            continue
        try:
            mailbox = await store.get_mailbox(folder.name)
            status = await mailbox.status()
        except NoSuchMailbox:  # deleted meanwhile
            continue
        box_id = getattr(mailbox, "mailbox_id", None) or placeholder_id(folder.name)
        box_key = (status.uidvalidity, status.highest_modseq, status.messages, status.uidnext)
        before = kept.get(box_id)
        if before is not None and before[0] == box_key:
            infos = before[1]
        else:
            try:
                infos = await mailbox.list_messages()
                history = IExpungeHistory(mailbox, None)
                if before is not None and before[0][0] == status.uidvalidity and history is not None:
                    since = before[0][1]
                    touched = [i for i in infos if i.modseq > since]
                    deltas[box_id] = (touched, await history.expunged_since(since))
                elif before is None and base is not None:
                    touched = infos  # a mailbox new since the base view: every message is new
                    deltas[box_id] = (touched, [])
                else:
                    touched = infos
                    complete = False
            except NoSuchMailbox:
                continue
            uid_map = cache.uid_maps.setdefault((box_id, status.uidvalidity), {})
            for info in touched:
                if info.email_id is not None:
                    uid_map[info.uid] = info.email_id
        boxes.append(BoxView(box_id, folder, mailbox, status, infos))
        key.append((folder, box_id, box_key))
    view_key = tuple(key)
    if base is not None and base_key == view_key:
        # The same mailboxes, unchanged: keep the index and its sorted order.
        for box in boxes:
            base.boxes[box.id].mailbox = box.mailbox
        return base
    # Mailboxes created, deleted, (un)subscribed are patched in; a rename
    # changes the order of the copies: the view is built anew.
    same_names = base is not None and all(
        base.boxes[b.id].name == b.name for b in boxes if b.id in base.boxes
    )
    if base is not None and complete and same_names:
        live = {b.id for b in boxes}
        removed = [b for b in base.boxes.values() if b.id not in live and b.status is not None]
        view = base.updated(boxes, deltas, removed)
        new = [i.email_id for touched, _ in deltas.values() for i in touched if i.email_id]
    else:
        view = MailView(store, cache, boxes)
        new = None
    await view.thread_ids(new)
    cache.view, cache.view_key = view, view_key
    return view


class _Counts:
    """
    The mailbox counts of a view, kept so that one Email's change updates
    them (:meth:`remove` its old contribution, :meth:`add` its new one)
    instead of counting every Email again.
    """

    def __init__(self, trash: str | None) -> None:
        self.trash = trash
        self.total: dict[str, int] = {}
        self.unread: dict[str, int] = {}
        #: mailbox -> thread -> its Emails in the mailbox.
        self.in_box: dict[str, dict[str, int]] = {}
        #: thread -> mailbox -> its Emails in the mailbox.
        self.boxes_of: dict[str, dict[str, int]] = {}
        #: thread -> its unread Emails with a copy outside the trash / in the trash.
        self.unread_out: dict[str, int] = {}
        self.unread_trash: dict[str, int] = {}
        #: mailbox -> its unread threads.
        self.unread_threads: dict[str, int] = {}
        self._copied: set[int] = set()

    def copy(self) -> _Counts:
        """A copy sharing the per-mailbox and per-thread tables until they are changed."""
        out = _Counts.__new__(_Counts)
        out.trash = self.trash
        out.total = dict(self.total)
        out.unread = dict(self.unread)
        out.in_box = dict(self.in_box)
        out.boxes_of = dict(self.boxes_of)
        out.unread_out = dict(self.unread_out)
        out.unread_trash = dict(self.unread_trash)
        out.unread_threads = dict(self.unread_threads)
        out._copied = set()
        return out

    def _own(self, table: dict[str, dict[str, int]], key: str) -> dict[str, int]:
        """*table*[*key*], copied first if it may be shared with the counts this copy was made from."""
        inner = table.get(key)
        if inner is None:
            inner = table[key] = {}
            self._copied.add(id(inner))
        elif id(inner) not in self._copied:
            inner = table[key] = dict(inner)
            self._copied.add(id(inner))
        return inner

    def _unread_for(self, box_id: str) -> dict[str, int]:
        return self.unread_trash if box_id == self.trash else self.unread_out

    @staticmethod
    def _bump(table: dict[str, int], key: str, step: int) -> int:
        value = table.get(key, 0) + step
        if value:
            table[key] = value
        else:
            table.pop(key, None)
        return value

    def _thread_unread(self, tid: str, trash: bool, step: int) -> None:
        table = self.unread_trash if trash else self.unread_out
        value = self._bump(table, tid, step)
        if (step > 0 and value == 1) or (step < 0 and value == 0):
            for box_id in self.boxes_of.get(tid, ()):
                if (box_id == self.trash) == trash:
                    self._bump(self.unread_threads, box_id, 1 if step > 0 else -1)

    def _presence(self, box_id: str, tid: str, step: int) -> None:
        value = self._bump(self._own(self.in_box, box_id), tid, step)
        self._bump(self._own(self.boxes_of, tid), box_id, step)
        if ((step > 0 and value == 1) or (step < 0 and value == 0)) and self._unread_for(box_id).get(tid):
            self._bump(self.unread_threads, box_id, 1 if step > 0 else -1)

    def add(self, boxes: frozenset[str], unread: bool, tid: str) -> None:
        """Count an Email in *boxes*."""
        if unread:
            if any(b != self.trash for b in boxes):
                self._thread_unread(tid, False, 1)
            if self.trash in boxes:
                self._thread_unread(tid, True, 1)
        for box_id in boxes:
            self._bump(self.total, box_id, 1)
            if unread:
                self._bump(self.unread, box_id, 1)
            self._presence(box_id, tid, 1)

    def remove(self, boxes: frozenset[str], unread: bool, tid: str) -> None:
        """Count an Email no more (the reverse of :meth:`add`)."""
        for box_id in boxes:
            self._bump(self.total, box_id, -1)
            if unread:
                self._bump(self.unread, box_id, -1)
            self._presence(box_id, tid, -1)
        if unread:
            if any(b != self.trash for b in boxes):
                self._thread_unread(tid, False, -1)
            if self.trash in boxes:
                self._thread_unread(tid, True, -1)

    def counts(self, box_id: str) -> tuple[int, int, int, int]:
        """``(totalEmails, unreadEmails, totalThreads, unreadThreads)`` of a mailbox."""
        return (
            self.total.get(box_id, 0),
            self.unread.get(box_id, 0),
            len(self.in_box.get(box_id, ())),
            self.unread_threads.get(box_id, 0),
        )


def cannot_calculate(description: str) -> MethodError:
    """The ``cannotCalculateChanges`` method error (RFC 8620 section 5.2)."""
    return MethodError("cannotCalculateChanges", description)


@dataclass(slots=True)
class _Delta:
    """What changed in one mailbox since a state's entry."""

    box_id: str
    touched: set[str]
    gone: set[str]
    entry: list[Any] | None  # the entry after these changes; None: the mailbox is gone


@dataclass(slots=True)
class EmailChanges:
    """The answer of an ``Email/changes`` (and the base of ``Thread/changes``)."""

    created: list[str]
    updated: list[str]
    destroyed: list[str]
    new_state: str
    has_more: bool
    existed: Any = None


def _entries(kind: str, state: Any, argument: str = "sinceState") -> list[list[Any]]:
    if not isinstance(state, str):
        raise MethodError("invalidArguments", f"{argument} must be a state string", arguments=[argument])
    entries = decode_state(kind, state)
    if entries is None or not all(_is_email_entry(e) for e in entries):
        raise cannot_calculate("the state is not one this server gave")
    return entries


def _is_email_entry(entry: list[Any]) -> bool:
    """Whether *entry* has the shape of :meth:`BoxView.email_entry` (a client may send any JSON)."""
    return (
        len(entry) >= 5
        and isinstance(entry[0], str)
        and all(type(n) is int and 0 <= n < 1 << 64 for n in entry[1:5])
    )


async def _box_delta(view: MailView, old: list[Any], cut: int | None = None) -> _Delta:
    """The changes of the mailbox of *old* (an email state entry) up to modseq *cut* (now when ``None``)."""
    try:
        box_id, uidvalidity, uidnext, modseq, count = old[:5]
        uidvalidity, uidnext, modseq, count = int(uidvalidity), int(uidnext), int(modseq), int(count)
    except (TypeError, ValueError) as e:
        raise cannot_calculate("the state is not one this server gave") from e
    box = view.boxes.get(box_id) if isinstance(box_id, str) else None
    uid_map = view.uid_map(box_id, uidvalidity) if isinstance(box_id, str) else None
    if box is None or box.status is None or box.status.uidvalidity != uidvalidity:
        # The mailbox is gone (or was emptied by a new UIDVALIDITY).
        if count == 0:
            gone: set[str] = set()
        elif uid_map is None:
            raise cannot_calculate("a mailbox with messages was deleted")
        else:
            gone = {eid for uid, eid in uid_map.items() if uid < uidnext}
        entry = None if box is None or box.status is None else box.email_entry()
        touched = (
            {info.email_id for info in box.infos if info.email_id} if box is not None and entry else set()
        )
        return _Delta(box_id, touched, gone, entry)
    status = box.status
    if cut is None:
        cut = status.highest_modseq
    if modseq == cut:
        return _Delta(box_id, set(), set(), old if cut != status.highest_modseq else box.email_entry())
    touched = {info.email_id for info in box.infos if modseq < info.modseq <= cut and info.email_id}
    gone = set()
    # Email states are given for the mailboxes of stores with an expunge history (every store's).
    history = IExpungeHistory(box.mailbox)
    expunged = set(await history.expunged_since(modseq)) if modseq < status.highest_modseq else set()
    if cut != status.highest_modseq:
        expunged -= set(await history.expunged_since(cut))
    unknown = []
    for uid in expunged:
        if uid >= uidnext:
            continue  # came and went after the state
        eid = None if uid_map is None else uid_map.get(uid)
        if eid is None:
            unknown.append(uid)
        else:
            gone.add(eid)
    if unknown:
        # Expunged before this process listed them: the store remembers their EMAILIDs.
        remembered: dict[int, str] = {}
        ids = IExpungedEmailIds(box.mailbox, None)
        if ids is not None:
            remembered = await ids.expunged_email_ids(unknown)
        if len(remembered) != len(unknown):
            raise cannot_calculate("a message expunged since is not remembered by the store")
        gone.update(remembered.values())
    if cut == status.highest_modseq:
        entry = box.email_entry()
    else:
        later = [i.uid for i in box.infos if i.modseq > cut and i.uid >= uidnext]
        entry = [box_id, uidvalidity, min(later, default=status.uidnext), cut, max(count, 1)]
    return _Delta(box_id, touched, gone, entry)


def _existed_test(view: MailView, base: dict[str, list[Any]], gone: set[str]) -> Any:
    """``existed(email_id)``: whether the Email existed at the state of *base* (entries by mailbox id)."""

    def existed(eid: str) -> bool:
        if eid in gone:
            return True
        for box, info in view.emails.get(eid, ()):
            old = base.get(box.id)
            status = view.boxes[box.id].status
            if old is not None and status is not None and old[1] == status.uidvalidity and info.uid < old[2]:
                return True
        return False

    return existed


async def email_changes(view: MailView, since: Any, max_changes: int | None) -> EmailChanges:
    """
    ``Email/changes`` (RFC 8620 section 5.2) of *view* since the email state
    *since*: at most *max_changes* ids, by whole mailboxes in id order, or
    by modification sequence within the first one when it alone has more.
    """
    entries = _entries("e", since)
    base = {e[0]: e for e in entries if isinstance(e[0], str) and len(e) >= 5}
    if len(base) != len(entries):
        raise cannot_calculate("the state is not one this server gave")
    deltas = [await _box_delta(view, old) for old in base.values()]
    deltas += [
        _Delta(b.id, {i.email_id for i in b.infos if i.email_id}, set(), b.email_entry())
        for b in view.boxes.values()
        if b.status is not None and b.id not in base
    ]
    deltas = [d for d in deltas if d.touched or d.gone or d.entry != base.get(d.box_id)]
    deltas.sort(key=lambda d: d.box_id)
    chosen: list[_Delta] = []
    ids: set[str] = set()
    has_more = False
    for delta in deltas:
        more = ids | delta.touched | delta.gone
        if max_changes is not None and len(more) > max_changes:
            has_more = True
            if not chosen and delta.box_id in base and delta.entry is not None:
                partial = await _partial_delta(view, base[delta.box_id], max_changes)
                if partial is None:
                    raise cannot_calculate("more changes at one modification sequence than maxChanges")
                chosen.append(partial)
            break
        chosen.append(delta)
        ids = more
    new_entries = dict(base)
    for delta in chosen:
        if delta.entry is None:
            new_entries.pop(delta.box_id, None)
        else:
            new_entries[delta.box_id] = delta.entry
    gone = set().union(*(d.gone for d in chosen)) if chosen else set()
    touched = set().union(*(d.touched for d in chosen)) if chosen else set()
    existed = _existed_test(view, base, gone)
    created: list[str] = []
    updated: list[str] = []
    destroyed: list[str] = []
    for eid in sorted(touched | gone):
        present = eid in view.emails
        if existed(eid):
            (updated if present else destroyed).append(eid)
        elif present:
            created.append(eid)
    new_state = view.email_state() if not has_more else encode_state("e", list(new_entries.values()))
    return EmailChanges(created, updated, destroyed, new_state, has_more, existed)


async def _partial_delta(view: MailView, old: list[Any], max_changes: int) -> _Delta | None:
    """The changes of one mailbox up to the highest modseq that keeps them within *max_changes*."""
    box = view.boxes[old[0]]
    modseqs = sorted(i.modseq for i in box.infos if i.modseq > int(old[3]))
    k = min(max_changes, len(modseqs))
    while k > 0:
        delta = await _box_delta(view, old, modseqs[k - 1])
        if len(delta.touched | delta.gone) <= max_changes:
            return delta
        k //= 2
    return None
