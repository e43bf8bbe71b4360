"""
Store listeners (:class:`txmail.interfaces.IStoreChanges`, what IMAP NOTIFY
hears): the memory and Maildir stores tell every folder, subscription and
message change made through them, in order, and nothing once the listener
is removed.
"""

from __future__ import annotations

import shutil
from typing import Any

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

USER = "alice@example.test"
ONE = b"Subject: one\r\n\r\nfirst\r\n"


def kinds(changes: list[Any]) -> list[Any]:
    """The changes with a message change reduced to (name, its type)."""
    return [(c.name, type(c.change)) if isinstance(c, MessagesChanged) else c for c in changes]


class StoreChangesMixin:
    def provider(self) -> Any:
        raise NotImplementedError

    def listen(self: Any) -> tuple[Any, list[Any], Any]:
        store = self.successResultOf(self.provider().store_for(USER))
        verifyObject(IStoreChanges, store)
        heard: list[Any] = []
        remove = store.add_store_listener(heard.append)
        return store, heard, remove

    def test_folders_and_subscriptions(self: Any) -> None:
        """CREATE (with its parents), SUBSCRIBE, UNSUBSCRIBE, RENAME (children too), DELETE."""
        store, heard, _ = self.listen()
        self.successResultOf(store.create_mailbox("Work/2024"))
        self.successResultOf(store.subscribe("Work"))
        self.successResultOf(store.subscribe("Work"))  # no change: not told
        self.successResultOf(store.unsubscribe("Work"))
        self.successResultOf(store.rename_mailbox("Work", "Job"))
        self.successResultOf(store.create_mailbox("Job/2024/Q1"))
        self.successResultOf(store.delete_mailbox("Job/2024/Q1"))
        self.successResultOf(store.delete_mailbox("Job/2024"))
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

    def test_delete_keeps_parent(self: Any) -> None:
        """A deleted mailbox with children stays as a parent (RFC 3501 section 6.3.4)."""
        store, heard, _ = self.listen()
        self.successResultOf(store.create_mailbox("A/B"))
        del heard[:]
        self.successResultOf(store.delete_mailbox("A"))
        self.assertEqual(heard, [FolderDeleted("A", parent=True)])

    def test_messages_of_any_mailbox(self: Any) -> None:
        """Append, flags, expunge, copy in any mailbox: MessagesChanged with the mailbox."""
        store, heard, _ = self.listen()
        self.successResultOf(store.create_mailbox("Archive"))
        inbox = self.successResultOf(store.get_mailbox(INBOX))
        archive = self.successResultOf(store.get_mailbox("Archive"))
        del heard[:]
        uid = self.successResultOf(inbox.append(ONE))
        self.successResultOf(inbox.set_flags([uid], {"\\Deleted"}, FlagMode.ADD))
        self.successResultOf(inbox.copy([uid], archive))
        self.successResultOf(inbox.expunge())
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
        status = self.successResultOf(heard[2].mailbox.status())
        self.assertEqual(status.messages, 1)

    def test_rename_inbox(self: Any) -> None:
        """Renaming INBOX makes a new mailbox and moves the messages (RFC 3501 section 6.3.5)."""
        store, heard, _ = self.listen()
        inbox = self.successResultOf(store.get_mailbox(INBOX))
        self.successResultOf(inbox.append(ONE))
        del heard[:]
        self.successResultOf(store.rename_mailbox(INBOX, "Old"))
        self.assertEqual(heard[0], FolderCreated("Old"))
        self.assertEqual(kinds(heard[1:]), [("Old", MessagesAdded), (INBOX, MessagesExpunged)])

    def test_removed_listener_hears_nothing(self: Any) -> None:
        store, heard, remove = self.listen()
        remove()
        remove()  # a second call does nothing
        self.successResultOf(store.create_mailbox("Quiet"))
        inbox = self.successResultOf(store.get_mailbox(INBOX))
        self.successResultOf(inbox.append(ONE))
        self.assertEqual(heard, [])
        self.assertEqual(store._store_listeners, {})

    def test_failing_listener_is_logged(self: Any) -> None:
        """A listener that raises does not fail the change, nor keep the others from hearing it."""
        store, heard, _ = self.listen()

        def broken(change: Any) -> None:
            raise RuntimeError("boom")

        store.add_store_listener(broken)
        store.add_store_listener(heard.append)
        self.successResultOf(store.create_mailbox("Still"))
        self.assertEqual(heard, [FolderCreated("Still"), FolderCreated("Still")])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class MemoryStoreChangesTests(StoreChangesMixin, TestCase):
    def provider(self) -> Any:
        return MemoryProvider()


class MaildirStoreChangesTests(StoreChangesMixin, TestCase):
    def provider(self) -> Any:
        return MaildirProvider(self.mktemp(), watch="off")

    def test_folder_removed_behind_our_back(self) -> None:
        """An open folder another program removed is deleted when the store finds out."""
        store, heard, _ = self.listen()
        self.successResultOf(store.create_mailbox("Gone"))
        box = self.successResultOf(store.get_mailbox("Gone"))
        del heard[:]
        shutil.rmtree(box.path)
        self.failureResultOf(box.refresh(), NoSuchMailbox)
        self.assertEqual(heard, [FolderDeleted("Gone")])
