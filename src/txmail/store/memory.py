"""
A mailbox store kept in memory, for tests and for embedding txmail.

It implements the whole mailbox contract of :mod:`txmail.interfaces`
(folders, flags, keywords, UIDs, modification sequences, listeners) and
passes the same conformance suite as the Maildir store, but keeps nothing
across restarts.  Every Deferred it returns has already fired.

Usage::

    provider = MemoryProvider()
    store = successResultOf(provider.store_for("alice@example.test"))
    inbox = successResultOf(store.get_mailbox("INBOX"))
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, BinaryIO

from twisted.internet import defer
from zope.interface import implementer

from txmail import mime
from txmail.errors import InvalidMailboxName, MailboxExists, MailboxNotEmpty, NoSuchMailbox, NoSuchMessage
from txmail.interfaces import (
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
from txmail.sieve.storage import ScriptTable
from txmail.store._annotations import AnnotationListeners, apply_changes
from txmail.store._base import (
    URLAUTH_KEY_SIZE,
    MailboxState,
    StoreListeners,
    check_name,
    columns_from_metadata,
    folder_infos,
    generic_copy,
    lines_from_metadata,
    next_uidvalidity,
    select_uids,
)
from txmail.store._crlf import bare_lf_count, to_crlf
from txmail.store._ids import new_mailbox_id

__all__ = ["MemoryMailbox", "MemoryProvider", "MemoryStore"]


def _guard(fn: Callable[..., Any]) -> Callable[..., defer.Deferred[Any]]:
    """Run *fn* and turn its result or exception into a fired Deferred."""

    def wrapper(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
        try:
            return defer.succeed(fn(*args, **kwargs))
        except Exception:
            return defer.fail()

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


@implementer(
    IMailbox, IExpungeHistory, IExpungedEmailIds, ISaveDates, IObjectIds, IHeaderColumns, IHeaderLines
)
class MemoryMailbox(MailboxState):
    """
    One mailbox of a :class:`MemoryStore`.

    Message bytes and their parsed metadata are kept in dictionaries by UID.
    """

    def __init__(self, store: MemoryStore, name: str, uidvalidity: int) -> None:
        self.store = store
        self.name = name
        self.uidvalidity = uidvalidity
        #: RFC 8474 section 4: kept by a rename (:meth:`_take_over`).
        self.mailbox_id = new_mailbox_id()
        self._init_state()
        self._data: dict[int, bytes] = {}
        self._meta: dict[int, MessageMetadata] = {}

    def _take_over(self, other: MemoryMailbox) -> None:
        """Adopt the messages, counters and MAILBOXID of *other* (a rename)."""
        self.uidvalidity = other.uidvalidity
        self.mailbox_id = other.mailbox_id
        self._infos = other._infos
        self._uidnext = other._uidnext
        self._modseq = other._modseq
        self._expunge_log = other._expunge_log
        self._expunge_horizon = other._expunge_horizon
        self._expunged_ids = other._expunged_ids
        self._recent = other._recent
        self._unseen = other._unseen
        self._size = other._size
        self._data = other._data
        self._meta = other._meta

    def _add_messages(
        self, items: list[tuple[bytes, MessageMetadata, frozenset[str], float, str | None]]
    ) -> list[MessageInfo]:
        """Add ``(data, metadata, flags, internal date, email id or None)`` each."""
        infos = self._add((flags, len(data), date, email_id) for data, _, flags, date, email_id in items)
        for info, (data, meta, _, _, _) in zip(infos, items, strict=True):
            self._data[info.uid] = data
            self._meta[info.uid] = meta
        if infos:
            self._notify(MessagesAdded(tuple(infos)))
        return infos

    def _drop(self, uids: Iterable[int]) -> list[int]:
        removed = self._remove(uids)
        for uid in removed:
            del self._data[uid]
            del self._meta[uid]
        if removed:
            self._notify(MessagesExpunged(tuple(removed), self._modseq))
        return removed

    @_guard
    def expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> list[int]:
        """See :meth:`txmail.interfaces.IExpungeHistory.expunged_since`."""
        self._check_alive()
        return self._expunged_since(modseq, uids)

    @_guard
    def expunged_email_ids(self, uids: Iterable[int]) -> dict[int, str]:
        """See :meth:`txmail.interfaces.IExpungedEmailIds.expunged_email_ids`."""
        self._check_alive()
        return self._expunged_email_ids(uids)

    def _get(self, uid: int) -> bytes:
        self._check_alive()
        data = self._data.get(uid)
        if data is None:
            raise NoSuchMessage(f"{self.name} uid {uid}")
        return data

    @_guard
    def open_message(self, uid: int) -> BinaryIO:
        """See :meth:`txmail.interfaces.IMailbox.open_message`."""
        return io.BytesIO(self._get(uid))

    @_guard
    def read_message(self, uid: int) -> bytes:
        """See :meth:`txmail.interfaces.IMailbox.read_message`."""
        return self._get(uid)

    @_guard
    def get_metadata(self, uids: Iterable[int]) -> dict[int, MessageMetadata]:
        """See :meth:`txmail.interfaces.IMailbox.get_metadata`."""
        self._check_alive()
        return {uid: self._meta[uid] for uid in select_uids(uids, self._infos)}

    def header_columns(self, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, ...]]]:
        """See :meth:`txmail.interfaces.IHeaderColumns.header_columns`: computed from :meth:`get_metadata`."""
        return columns_from_metadata(self, uids)

    def header_lines(self, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, str]]]:
        """See :meth:`txmail.interfaces.IHeaderLines.header_lines`: made from :meth:`get_metadata`."""
        return lines_from_metadata(self, uids)

    @_guard
    def append(
        self, message: bytes | MessageSource, flags: Iterable[str] = (), internal_date: float | None = None
    ) -> int:
        """See :meth:`txmail.interfaces.IMailbox.append`."""
        self._check_alive()
        normalized = normalize_flags(flags)
        metadata = None
        if isinstance(message, MessageSource):
            data = message.read()
            metadata = message.metadata
        else:
            data = bytes(message)
        if bare_lf_count(data):
            # Served with CRLF line ends, as the Maildir store serves a file
            # holding bare LFs (RFC 3501 section 2.3.4 sizes count CRLF).
            data = to_crlf(data)
            metadata = None
        if metadata is None:
            metadata = mime.parse_metadata(data)
        date = time.time() if internal_date is None else float(internal_date)
        (info,) = self._add_messages([(data, metadata, normalized, date, None)])
        return info.uid

    @_guard
    def set_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: FlagMode, unchanged_since: int | None = None
    ) -> list[MessageInfo]:
        """See :meth:`txmail.interfaces.IMailbox.set_flags`."""
        self._check_alive()
        changed = self._set(self._flag_changes(uids, flags, mode, unchanged_since))
        if changed:
            self._notify(FlagsChanged(tuple(changed)))
        return changed

    def copy(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """See :meth:`txmail.interfaces.IMailbox.copy`."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        selected = select_uids(uids, self._infos)
        if not isinstance(target, MemoryMailbox):
            return generic_copy(self, selected, target)
        if target._deleted:
            return defer.fail(NoSuchMailbox(target.name))
        # The copies keep the source's EMAILID (RFC 8474 section 5.1).
        items = [
            (self._data[u], self._meta[u], info.flags, info.internal_date, info.email_id)
            for u in selected
            for info in (self._infos[u],)
        ]
        infos = target._add_messages(items)
        return defer.succeed([(u, info.uid) for u, info in zip(selected, infos, strict=True)])

    def move(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """See :meth:`txmail.interfaces.IMailbox.move`."""

        def copied(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
            self._drop(src for src, _ in pairs)
            return pairs

        return self.copy(uids, target).addCallback(copied)

    @_guard
    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """See :meth:`txmail.interfaces.IMailbox.expunge`."""
        self._check_alive()
        return self._drop(self._deleted_uids(uids))

    @_guard
    def refresh(self) -> None:
        """Nothing changes behind a memory store's back."""
        self._check_alive()


@implementer(IMailStore, IStorageUsage, IStoreChanges, IMetadataStore, IURLAuthKeys, ISieveScripts)
class MemoryStore(StoreListeners):
    """One user's mailboxes, in memory.  Created by :class:`MemoryProvider`."""

    def __init__(self, user: str) -> None:
        self._init_store_listeners()
        self.user = user
        self._last_uidvalidity = 0
        self._boxes: dict[str, MemoryMailbox] = {}
        self._subscriptions: set[str] = set()
        self._roles: dict[str, SpecialUse] = {}
        # RFC 5464 annotations by mailbox name ("": the server's).
        self._annotations: dict[str, dict[str, bytes]] = {}
        self._annotation_listeners = AnnotationListeners()
        self._urlauth_keys: dict[str, tuple[int, bytes]] = {}  # name -> (uidvalidity, key)
        self._scripts = ScriptTable()
        self._new_box(INBOX)

    def _new_box(self, name: str) -> MemoryMailbox:
        self._last_uidvalidity = next_uidvalidity(self._last_uidvalidity)
        box = MemoryMailbox(self, name, self._last_uidvalidity)
        self._boxes[name] = box
        return box

    def _has_children(self, name: str) -> bool:
        prefix = name + DELIMITER
        return any(n.startswith(prefix) for n in self._boxes)

    def _create_parents(self, name: str) -> list[FolderCreated]:
        """Create the missing parents of *name*; the events telling it."""
        parts = name.split(DELIMITER)
        created = []
        for i in range(1, len(parts)):
            parent = DELIMITER.join(parts[:i])
            if parent not in self._boxes:
                self._new_box(parent)
                created.append(FolderCreated(parent))
        return created

    @_guard
    def usage(self) -> Usage:
        """See :meth:`txmail.interfaces.IStorageUsage.usage`."""
        return Usage(
            sum(box._size for box in self._boxes.values()),
            sum(len(box._infos) for box in self._boxes.values()),
        )

    @_guard
    def urlauth_key(self, mailbox: str, uidvalidity: int, create: bool = False) -> bytes | None:
        """See :meth:`txmail.interfaces.IURLAuthKeys.urlauth_key`."""
        kept = self._urlauth_keys.get(mailbox)
        if kept is not None and kept[0] == uidvalidity:
            return kept[1]
        if not create:
            return None
        key = os.urandom(URLAUTH_KEY_SIZE)
        self._urlauth_keys[mailbox] = (uidvalidity, key)
        return key

    @_guard
    def reset_urlauth_keys(self, mailbox: str | None = None) -> None:
        """See :meth:`txmail.interfaces.IURLAuthKeys.reset_urlauth_keys`."""
        if mailbox is None:
            self._urlauth_keys.clear()
        else:
            self._urlauth_keys.pop(mailbox, None)

    @_guard
    def list_mailboxes(self, pattern: str = "*") -> list[FolderInfo]:
        """See :meth:`txmail.interfaces.IMailStore.list_mailboxes`."""
        return folder_infos(self._boxes, pattern, self._subscriptions, self._roles)

    @_guard
    def get_mailbox(self, name: str) -> MemoryMailbox:
        """See :meth:`txmail.interfaces.IMailStore.get_mailbox`."""
        name = check_name(name)
        box = self._boxes.get(name)
        if box is None:
            raise NoSuchMailbox(name)
        return box

    @_guard
    def create_mailbox(self, name: str, special_use: SpecialUse | None = None) -> None:
        """See :meth:`txmail.interfaces.IMailStore.create_mailbox`."""
        name = check_name(name)
        role = None if special_use is None else SpecialUse(special_use)
        if name in self._boxes:
            raise MailboxExists(name)
        created = self._create_parents(name)
        self._new_box(name)
        if role is not None:
            self._roles = {n: r for n, r in self._roles.items() if r is not role}
            self._roles[name] = role
        if self._store_listeners:
            self._tell_store(*created, FolderCreated(name))

    @_guard
    def delete_mailbox(self, name: str) -> None:
        """See :meth:`txmail.interfaces.IMailStore.delete_mailbox`."""
        name = check_name(name)
        if name == INBOX:
            raise InvalidMailboxName("INBOX cannot be deleted")
        box = self._boxes.pop(name, None)
        if box is None:
            if self._has_children(name):
                raise MailboxNotEmpty(name)
            raise NoSuchMailbox(name)
        self._roles.pop(name, None)
        self._annotations.pop(name, None)
        box._mark_deleted()
        if self._store_listeners:
            self._tell_store(FolderDeleted(name, parent=self._has_children(name)))

    @_guard
    def rename_mailbox(self, old: str, new: str) -> None:
        """See :meth:`txmail.interfaces.IMailStore.rename_mailbox`."""
        old = check_name(old)
        new = check_name(new)
        if new == old or new.startswith(old + DELIMITER):
            if new == old:
                raise MailboxExists(new)
            raise InvalidMailboxName("cannot rename a mailbox below itself")
        if old not in self._boxes and not self._has_children(old):
            raise NoSuchMailbox(old)
        if old == INBOX:
            # RFC 3501 section 6.3.5: renaming INBOX moves its messages into
            # a new mailbox and leaves INBOX empty; its children stay.
            if new in self._boxes:
                raise MailboxExists(new)
            created = self._create_parents(new)
            target = self._new_box(new)
            if self._store_listeners:
                self._tell_store(*created, FolderCreated(new))
            inbox = self._boxes[INBOX]
            inbox.move(list(inbox._infos), target)
            # RFC 5464 section 4.1: INBOX keeps its annotations, the new
            # mailbox gets a copy.
            if INBOX in self._annotations:
                self._annotations[new] = dict(self._annotations[INBOX])
            return
        prefix = old + DELIMITER
        moving = sorted(n for n in self._boxes if n == old or n.startswith(prefix))
        renamed = {n: new + n[len(old) :] for n in moving}
        if new in self._boxes or any(t in self._boxes for t in renamed.values()):
            raise MailboxExists(new)
        created = self._create_parents(new)
        for name in moving:
            old_box = self._boxes.pop(name)
            box = MemoryMailbox(self, renamed[name], old_box.uidvalidity)
            box._take_over(old_box)
            self._boxes[box.name] = box
            old_box._mark_deleted()
            role = self._roles.pop(name, None)
            if role is not None:
                self._roles[box.name] = role
            annotations = self._annotations.pop(name, None)
            if annotations is not None:
                self._annotations[box.name] = annotations
        if self._store_listeners:
            self._tell_store(*created, *(FolderRenamed(n, renamed[n]) for n in moving))

    @_guard
    def subscribe(self, name: str) -> None:
        """See :meth:`txmail.interfaces.IMailStore.subscribe`."""
        name = check_name(name)
        if name not in self._subscriptions:
            self._subscriptions.add(name)
            if self._store_listeners:
                self._tell_store(SubscriptionChanged(name, True))

    @_guard
    def unsubscribe(self, name: str) -> None:
        """See :meth:`txmail.interfaces.IMailStore.unsubscribe`."""
        name = check_name(name)
        if name not in self._subscriptions:
            raise NoSuchMailbox(name)
        self._subscriptions.discard(name)
        if self._store_listeners:
            self._tell_store(SubscriptionChanged(name, False))

    @_guard
    def subscriptions(self) -> list[str]:
        """See :meth:`txmail.interfaces.IMailStore.subscriptions`."""
        return sorted(self._subscriptions)

    @_guard
    def special_use_mailbox(self, role: SpecialUse | str) -> str | None:
        """See :meth:`txmail.interfaces.IMailStore.special_use_mailbox`."""
        role = SpecialUse(role)
        for name, r in self._roles.items():
            if r is role:
                return name
        return None

    # -- RFC 5464 annotations (IMetadataStore) --------------------------------

    def _annotated(self, mailbox: str) -> str:
        if mailbox == "":
            return mailbox
        name = check_name(mailbox)
        if name not in self._boxes:
            raise NoSuchMailbox(name)
        return name

    @_guard
    def get_annotations(self, mailbox: str) -> dict[str, bytes]:
        """See :meth:`txmail.interfaces.IMetadataStore.get_annotations`."""
        return dict(self._annotations.get(self._annotated(mailbox), {}))

    @_guard
    def set_annotations(self, mailbox: str, changes: dict[str, bytes | None]) -> None:
        """See :meth:`txmail.interfaces.IMetadataStore.set_annotations`."""
        name = self._annotated(mailbox)
        entries, changed = apply_changes(self._annotations.get(name, {}), changes)
        if entries:
            self._annotations[name] = entries
        else:
            self._annotations.pop(name, None)
        if changed:
            self._annotation_listeners.notify(AnnotationsChanged(name, changed))

    @_guard
    def annotation_count(self) -> int:
        """See :meth:`txmail.interfaces.IMetadataStore.annotation_count`."""
        return sum(len(entries) for entries in self._annotations.values())

    def add_annotation_listener(self, listener: Callable[[Any], object]) -> Callable[[], None]:
        """See :meth:`txmail.interfaces.IMetadataStore.add_annotation_listener`."""
        return self._annotation_listeners.add(listener)

    # -- Sieve scripts (ISieveScripts) -----------------------------------------

    @_guard
    def list_scripts(self) -> list[tuple[str, bool]]:
        """See :meth:`txmail.interfaces.ISieveScripts.list_scripts`."""
        return self._scripts.list()

    @_guard
    def get_script(self, name: str) -> bytes:
        """See :meth:`txmail.interfaces.ISieveScripts.get_script`."""
        return self._scripts.get(name)

    @_guard
    def put_script(self, name: str, content: bytes) -> None:
        """See :meth:`txmail.interfaces.ISieveScripts.put_script`."""
        self._scripts.put(name, content)

    @_guard
    def delete_script(self, name: str) -> None:
        """See :meth:`txmail.interfaces.ISieveScripts.delete_script`."""
        self._scripts.delete(name)

    @_guard
    def rename_script(self, old: str, new: str) -> None:
        """See :meth:`txmail.interfaces.ISieveScripts.rename_script`."""
        self._scripts.rename(old, new)

    @_guard
    def set_active(self, name: str | None) -> None:
        """See :meth:`txmail.interfaces.ISieveScripts.set_active`."""
        self._scripts.set_active(name)

    @_guard
    def active_script(self) -> tuple[str, bytes] | None:
        """See :meth:`txmail.interfaces.ISieveScripts.active_script`."""
        return self._scripts.active_script()


@implementer(IMailStoreProvider, IObjectIdProvider)
class MemoryProvider:
    """Gives each user a :class:`MemoryStore`; the same user gets the same store."""

    def __init__(self) -> None:
        self._stores: dict[str, MemoryStore] = {}

    def store_for(self, user: str) -> defer.Deferred[IMailStore]:
        """See :meth:`txmail.interfaces.IMailStoreProvider.store_for` (fired already)."""
        store = self._stores.get(user)
        if store is None:
            store = self._stores[user] = MemoryStore(user)
        return defer.succeed(store)
