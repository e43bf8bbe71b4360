"""
Store listeners (:class:`txmail.interfaces.IStoreChanges`, what IMAP NOTIFY
hears): the memory and Maildir stores tell every folder, subscription and
message change made through them, in order, and nothing once the listener
is removed.  :class:`StoreChangesMixin` holds what every store shows (the
PostgreSQL store passes it too, ``tests/pg/test_store_changes.py``).
"""

from __future__ import annotations

import shutil
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txmail.errors import NoSuchMailbox
from txmail.interfaces import IStoreChanges
from txmail.model import (
    INBOX,
    FlagMode,
    FlagsChanged,
    FolderCreated,
    FolderDeleted,
    FolderRenamed,
    MessagesAdded,
    MessagesChanged,
    MessagesExpunged,
    SubscriptionChanged,
)
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

Gen = Generator[Any, Any, None]

USER = "alice@example.test"
ONE = b"Subject: one\r\n\r\nfirst\r\n"


def kinds(changes: list[Any]) -> list[Any]:
    """The changes with a message change reduced to (name, its type)."""
    return [(c.name, type(c.change)) if isinstance(c, MessagesChanged) else c for c in changes]


class StoreChangesMixin:
    def provider(self) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def listen(self: Any) -> Any:
        """``(store, what its new listener heard, the listener's remover)``, once the listener is in place."""
        store = yield self.provider().store_for(USER)
        verifyObject(IStoreChanges, store)
        heard: list[Any] = []
        remove = store.add_store_listener(heard.append)
        yield self.listening(store)
        return store, heard, remove

    def listening(self, store: Any) -> Any:
        """A Deferred that fires once *store* tells its listeners (at once for the memory and Maildir stores)."""
        return defer.succeed(None)

    @defer.inlineCallbacks
    def test_folders_and_subscriptions(self: Any) -> Gen:
        """CREATE (with its parents), SUBSCRIBE, UNSUBSCRIBE, RENAME (children too), DELETE."""
        store, heard, _ = yield self.listen()
        yield store.create_mailbox("Work/2024")
        yield store.subscribe("Work")
        yield store.subscribe("Work")  # no change: not told
        yield store.unsubscribe("Work")
        yield store.rename_mailbox("Work", "Job")
        yield store.create_mailbox("Job/2024/Q1")
        yield store.delete_mailbox("Job/2024/Q1")
        yield store.delete_mailbox("Job/2024")
        self.assertEqual(
            heard,
            [
                FolderCreated("Work"),
                FolderCreated("Work/2024"),
                SubscriptionChanged("Work", True),
                SubscriptionChanged("Work", False),
                FolderRenamed("Work", "Job"),
                FolderRenamed("Work/2024", "Job/2024"),
                FolderCreated("Job/2024/Q1"),
                FolderDeleted("Job/2024/Q1"),
                FolderDeleted("Job/2024"),
            ],
        )

    @defer.inlineCallbacks
    def test_delete_keeps_parent(self: Any) -> Gen:
        """A deleted mailbox with children stays as a parent (RFC 3501 section 6.3.4)."""
        store, heard, _ = yield self.listen()
        yield store.create_mailbox("A/B")
        del heard[:]
        yield store.delete_mailbox("A")
        self.assertEqual(heard, [FolderDeleted("A", parent=True)])

    @defer.inlineCallbacks
    def test_messages_of_any_mailbox(self: Any) -> Gen:
        """Append, flags, expunge, copy in any mailbox: MessagesChanged with the mailbox."""
        store, heard, _ = yield self.listen()
        yield store.create_mailbox("Archive")
        inbox = yield store.get_mailbox(INBOX)
        archive = yield store.get_mailbox("Archive")
        del heard[:]
        uid = yield inbox.append(ONE)
        yield inbox.set_flags([uid], {"\\Deleted"}, FlagMode.ADD)
        yield inbox.copy([uid], archive)
        yield inbox.expunge()
        self.assertEqual(
            kinds(heard),
            [
                (INBOX, MessagesAdded),
                (INBOX, FlagsChanged),
                ("Archive", MessagesAdded),
                (INBOX, MessagesExpunged),
            ],
        )
        self.assertIs(heard[0].mailbox, inbox)
        status = yield heard[2].mailbox.status()
        self.assertEqual(status.messages, 1)

    @defer.inlineCallbacks
    def test_rename_inbox(self: Any) -> Gen:
        """Renaming INBOX makes a new mailbox and moves the messages (RFC 3501 section 6.3.5)."""
        store, heard, _ = yield self.listen()
        inbox = yield store.get_mailbox(INBOX)
        yield inbox.append(ONE)
        del heard[:]
        yield store.rename_mailbox(INBOX, "Old")
        self.assertEqual(heard[0], FolderCreated("Old"))
        self.assertEqual(kinds(heard[1:]), [("Old", MessagesAdded), (INBOX, MessagesExpunged)])

    @defer.inlineCallbacks
    def test_removed_listener_hears_nothing(self: Any) -> Gen:
        store, heard, remove = yield self.listen()
        remove()
        remove()  # a second call does nothing
        yield store.create_mailbox("Quiet")
        inbox = yield store.get_mailbox(INBOX)
        yield inbox.append(ONE)
        self.assertEqual(heard, [])
        self.assertEqual(store._store_listeners, {})

    @defer.inlineCallbacks
    def test_failing_listener_is_logged(self: Any) -> Gen:
        """A listener that raises does not fail the change, nor keep the others from hearing it."""
        store, heard, _ = yield self.listen()

        def broken(change: Any) -> None:
            raise RuntimeError("boom")

        store.add_store_listener(broken)
        store.add_store_listener(heard.append)
        yield store.create_mailbox("Still")
        self.assertEqual(heard, [FolderCreated("Still"), FolderCreated("Still")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class MemoryStoreChangesTests(StoreChangesMixin, TestCase):
    def provider(self) -> Any:
        return MemoryProvider()


class MaildirStoreChangesTests(StoreChangesMixin, TestCase):
    def provider(self) -> Any:
        return MaildirProvider(self.mktemp(), watch="off")

    @defer.inlineCallbacks
    def test_folder_removed_behind_our_back(self) -> Gen:
        """An open folder another program removed is deleted when the store finds out."""
        store, heard, _ = yield self.listen()
        yield store.create_mailbox("Gone")
        box = yield store.get_mailbox("Gone")
        del heard[:]
        shutil.rmtree(box.path)
        self.failureResultOf(box.refresh(), NoSuchMailbox)
        self.assertEqual(heard, [FolderDeleted("Gone")])
