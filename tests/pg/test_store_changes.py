"""
Store listeners of the PostgreSQL store (:class:`txmail.interfaces.IStoreChanges`):
the conformance tests the memory and Maildir stores pass, the changes of
mailboxes this process does not have open, two nodes on one database, and
IMAP NOTIFY on top.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.imap import test_server
from tests.pg import test_store
from tests.pg._helpers import upgraded_database
from tests.store import test_store_changes
from txmail.errors import NoSuchMailbox
from txmail.model import (
    DELETED,
    INBOX,
    SEEN,
    FlagMode,
    FlagsChanged,
    FolderCreated,
    FolderDeleted,
    FolderRenamed,
    MessagesAdded,
    MessagesChanged,
    MessagesExpunged,
    MessageSource,
    SubscriptionChanged,
)
from txmail.testing.store import message

__all__: list[str] = []

Gen = Generator[Any, Any, None]
USER = "alice@example.test"
make = test_store.make
other_node = test_store.other_node
wait_for = test_store.wait_for


def told(heard: list[Any]) -> list[Any]:
    """Message changes as ``(mailbox name, type, UIDs)``, folder changes as they are."""
    out = []
    for change in heard:
        if not isinstance(change, MessagesChanged):
            out.append(change)
            continue
        inner = change.change
        uids = inner.uids if isinstance(inner, MessagesExpunged) else tuple(i.uid for i in inner.messages)
        out.append((change.name, type(inner), uids))
    return out


class PostgresStoreChangesTests(test_store_changes.StoreChangesMixin, TestCase):
    """What the memory and Maildir stores show, on PostgreSQL (one node)."""

    def provider(self) -> Any:
        return make(upgraded_database(self))

    def listening(self, store: Any) -> Any:
        return store.listeners_ready()


class FolderChangesTests(SynchronousTestCase):
    """_folder_changes: two readings of a folder tree, in an order a client can apply."""

    def changes(self, old: dict[int, str], new: dict[int, str], subs: tuple[Any, Any] = ((), ())) -> Any:
        from txmail.pg.store import _folder_changes

        return _folder_changes(old, new, frozenset(subs[0]), frozenset(subs[1]))

    def test_single_changes(self) -> None:
        """What one CREATE, DELETE, RENAME or (UN)SUBSCRIBE tells, as the memory store tells it."""
        self.assertEqual(
            self.changes({1: INBOX}, {1: INBOX, 2: "Work", 3: "Work/2024"}),
            [FolderCreated("Work"), FolderCreated("Work/2024")],
        )
        self.assertEqual(
            self.changes({1: INBOX, 2: "A", 3: "A/B"}, {1: INBOX, 3: "A/B"}), [FolderDeleted("A", True)]
        )
        self.assertEqual(self.changes({1: INBOX, 2: "A"}, {1: INBOX}), [FolderDeleted("A")])
        self.assertEqual(
            self.changes(
                {1: INBOX, 2: "Work", 3: "Work/2024"}, {1: INBOX, 2: "X/Job", 3: "X/Job/2024", 4: "X"}
            ),
            [FolderCreated("X"), FolderRenamed("Work", "X/Job"), FolderRenamed("Work/2024", "X/Job/2024")],
        )
        self.assertEqual(
            self.changes({1: INBOX}, {1: INBOX}, (("a", "b"), ("b", "c"))),
            [SubscriptionChanged("a", False), SubscriptionChanged("c", True)],
        )
        self.assertEqual(self.changes({1: INBOX, 2: "A"}, {1: INBOX, 2: "A"}, (("A",), ("A",))), [])

    def test_merged_changes_end_in_the_new_tree(self) -> None:
        """
        Several changes read at once: a name deleted and made again is
        deleted first; a name a rename frees and made again is made after
        the rename.
        """
        self.assertEqual(
            self.changes({1: INBOX, 2: "A"}, {1: INBOX, 3: "A"}), [FolderDeleted("A"), FolderCreated("A")]
        )
        self.assertEqual(
            self.changes({1: INBOX, 2: "A"}, {1: INBOX, 2: "B", 3: "A"}),
            [FolderRenamed("A", "B"), FolderCreated("A")],
        )
        self.assertEqual(
            self.changes({1: INBOX, 2: "A", 3: "B"}, {1: INBOX, 2: "B"}),
            [FolderDeleted("B"), FolderRenamed("A", "B")],
        )


class UnopenedMailboxTests(TestCase):
    """One node: the changes of mailboxes the process does not have open, and what they cost."""

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        self.database = upgraded_database(self)
        self.provider = make(self.database)
        self.store = yield self.provider.store_for(USER)

    @defer.inlineCallbacks
    def listen(self) -> Any:
        heard: list[Any] = []
        self.addCleanup(self.store.add_store_listener(heard.append))
        yield self.store.listeners_ready()
        return heard

    @defer.inlineCallbacks
    def test_delivery_to_unopened_inbox(self) -> Gen:
        """
        deliver_to_inboxes into an INBOX nobody has open: MessagesAdded
        with the UID, told before the delivery's result fires, and a
        mailbox whose counters are the ones the opened mailbox gives.
        """
        heard = yield self.listen()
        uids = yield self.provider.deliver_to_inboxes([USER, "bob@example.test"], message(1))
        self.assertEqual(told(heard), [(INBOX, MessagesAdded, (uids[USER],))])
        self.assertNotIn(heard[0].mailbox, list(self.store._boxes.values()))
        status = yield heard[0].mailbox.status()
        box = yield self.store.get_mailbox(INBOX)
        self.assertEqual(status, (yield box.status()))
        self.assertEqual(status.messages, 1)

    @defer.inlineCallbacks
    def test_unopened_status_is_the_opened_status(self) -> Gen:
        """
        The counters summed by the database (messages, \\Recent, unseen,
        UIDNEXT, UIDVALIDITY, HIGHESTMODSEQ, size) equal those of the
        mailbox loaded, on an empty mailbox and after appends, flags,
        claims and expunges.
        """
        from txmail.pg.store import _Unopened

        yield self.store.create_mailbox("Box")
        box = yield self.store.get_mailbox("Box")
        handle = _Unopened(self.store, box.box_id, "Box")
        states = []
        for step in range(6):
            if step == 1:
                for i in range(5):
                    yield box.append(message(i, b"x" * (i * 37) + b"\r\n"), [SEEN] if i % 2 else [])
            elif step == 2:
                yield box.claim_recent()
                yield box.append(message(9))
            elif step == 3:
                yield box.set_flags([2, 3], [DELETED], FlagMode.ADD)
                yield box.set_flags([1], [SEEN], FlagMode.ADD)
            elif step == 4:
                yield box.expunge()
            elif step == 5:
                yield box.set_flags([1, 4], [SEEN], FlagMode.REMOVE)
            del self.store._boxes[box.box_id]  # not open: summed by the database
            summed = yield handle.status()
            self.store._boxes[box.box_id] = box
            loaded = yield (yield make(self.database).store_for(USER)).get_mailbox("Box")
            self.assertEqual(summed, (yield loaded.status()), f"step {step}")
            self.assertEqual(summed, (yield box.status()), f"step {step}")
            states.append(summed)
        self.assertEqual([s.messages for s in states], [0, 5, 6, 6, 4, 4])
        self.assertEqual(states[2].recent, 1)
        self.assertEqual(states[5].unseen, 4)
        yield self.store.delete_mailbox("Box")
        yield self.assertFailure(handle.status(), NoSuchMailbox)

    @defer.inlineCallbacks
    def test_opened_and_closed(self) -> Gen:
        """
        Changes are told once each whether the mailbox is open, not open,
        or opened and dropped in between (its mark follows what was told).
        """
        yield self.store.create_mailbox("Box")
        other = yield (yield make(self.database).store_for(USER)).get_mailbox("Box")
        heard = yield self.listen()
        first = yield other.append(message(1))
        yield self.store._watch.sync_box(other.box_id)  # what a notification does
        box = yield self.store.get_mailbox("Box")  # opened: nothing told again
        second = yield other.append(message(2))
        yield box.refresh()
        yield other.set_flags([first], [SEEN], FlagMode.ADD)
        seen = told(heard)  # the events hold the mailbox object
        del heard[:]
        box_id = box.box_id
        del box
        gc.collect()
        self.assertNotIn(box_id, self.store._boxes)
        yield self.store._watch.sync_box(box_id)
        third = yield other.append(message(3))
        yield other.set_flags([second], [DELETED], FlagMode.ADD)
        yield other.expunge()
        yield self.store.get_mailbox("Box")  # opened after changes nobody told yet: told now
        yield self.store._watch.sync_all()  # in turn after that
        self.assertEqual(
            seen + told(heard),
            [
                ("Box", MessagesAdded, (first,)),
                ("Box", MessagesAdded, (second,)),
                ("Box", FlagsChanged, (first,)),
                ("Box", MessagesAdded, (third,)),
                ("Box", MessagesExpunged, (second,)),
            ],
        )

    @defer.inlineCallbacks
    def test_no_listener_no_work(self) -> Gen:
        """
        Without a store listener a store keeps nothing, and another node's
        change of a mailbox it does not have open, a folder change, and a
        subscription cost it no query; with one, they are read.
        """
        other = yield make(self.database).store_for(USER)
        queries: list[Any] = []
        original = self.database.run

        def counted(fn: Any, *args: Any) -> Any:
            queries.append(fn)
            return original(fn, *args)

        self.patch(self.database, "run", counted)
        inbox = yield other.get_mailbox(INBOX)
        yield inbox.append(message(1))

        def notify(kind: str, box_id: int | None) -> None:
            note = {"node": "elsewhere", "user": USER, "mailbox": box_id, "kind": kind}
            self.provider._notified(json.dumps(note))

        del queries[:]
        for kind, box_id in (("added", inbox.box_id), ("mailboxes", None), ("subscriptions", None)):
            notify(kind, box_id)
        self.assertIsNone(self.store._watch)
        self.assertEqual(queries, [])
        yield self.listen()
        del queries[:]
        notify("added", inbox.box_id)
        yield wait_for(self.database.reactor, lambda: len(queries) == 1)
        self.assertEqual(len(queries), 1)


class PostgresStoreChangesNodesTests(test_store.TwoListeningNodes, TestCase):
    """Two nodes, each listening: what A changes reaches a store listener on B within a second."""

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        yield test_store.TwoListeningNodes.setUp(self)
        self.store_a = yield self.a.store_for(USER)
        self.store_b = yield self.b.store_for(USER)
        self.heard: list[Any] = []
        self.addCleanup(self.store_b.add_store_listener(self.heard.append))
        yield self.store_b.listeners_ready()

    @defer.inlineCallbacks
    def hears(self, *expected: Any) -> Gen:
        """B's listener hears *expected* (as :func:`told` gives them) within a second, and nothing more."""
        count = len(expected)
        self.assertTrue(
            (yield wait_for(self.reactor, lambda: len(self.heard) >= count)), (told(self.heard), expected)
        )
        yield task.deferLater(self.reactor, 0.05, lambda: None)
        self.assertEqual(told(self.heard), list(expected))
        del self.heard[:]

    @defer.inlineCallbacks
    def test_messages(self) -> Gen:
        """A delivery, a flag change and an expunge on A, in a mailbox B does not have open."""
        uids = yield self.a.deliver_to_inboxes([USER], MessageSource.from_bytes(message(1)))
        uid = uids[USER]
        yield self.hears((INBOX, MessagesAdded, (uid,)))
        inbox = yield self.store_a.get_mailbox(INBOX)
        yield inbox.set_flags([uid], [DELETED], FlagMode.ADD)
        yield self.hears((INBOX, FlagsChanged, (uid,)))
        yield inbox.expunge()
        yield self.hears((INBOX, MessagesExpunged, (uid,)))
        yield inbox.append(message(2))
        self.assertTrue((yield wait_for(self.reactor, lambda: len(self.heard) == 1)))
        self.assertNotIn(INBOX, [box.name for box in self.store_b._boxes.values()])
        self.assertEqual((yield self.heard[0].mailbox.status()), (yield inbox.status()))

    @defer.inlineCallbacks
    def test_messages_of_an_open_mailbox(self) -> Gen:
        """The same of a mailbox B has open: told once, with B's mailbox object."""
        box_b = yield self.store_b.get_mailbox(INBOX)
        inbox = yield self.store_a.get_mailbox(INBOX)
        uid = yield inbox.append(message(1))
        yield self.hears((INBOX, MessagesAdded, (uid,)))
        yield inbox.set_flags([uid], [SEEN], FlagMode.ADD)
        yield self.hears((INBOX, FlagsChanged, (uid,)))
        yield inbox.copy([uid], inbox)
        yield self.hears((INBOX, MessagesAdded, (uid + 1,)))
        yield self.store_a.create_mailbox("Archive")
        archive = yield self.store_a.get_mailbox("Archive")
        yield inbox.move([uid], archive)
        yield self.hears(
            FolderCreated("Archive"), ("Archive", MessagesAdded, (1,)), (INBOX, MessagesExpunged, (uid,))
        )
        yield inbox.append(message(2))
        yield wait_for(self.reactor, lambda: len(self.heard) == 1)
        self.assertIs(self.heard[0].mailbox, box_b)

    @defer.inlineCallbacks
    def test_folders_and_subscriptions(self) -> Gen:
        """CREATE, RENAME, DELETE, SUBSCRIBE and UNSUBSCRIBE on A, each heard on B."""
        yield self.store_a.create_mailbox("Work/2024")
        yield self.hears(FolderCreated("Work"), FolderCreated("Work/2024"))
        yield self.store_a.subscribe("Work")
        yield self.hears(SubscriptionChanged("Work", True))
        yield self.store_a.rename_mailbox("Work", "Job")
        yield self.hears(FolderRenamed("Work", "Job"), FolderRenamed("Work/2024", "Job/2024"))
        yield self.store_a.delete_mailbox("Job")
        yield self.hears(FolderDeleted("Job", parent=True))
        yield self.store_a.unsubscribe("Work")
        yield self.hears(SubscriptionChanged("Work", False))

    @defer.inlineCallbacks
    def test_rename_inbox(self) -> Gen:
        """RENAME INBOX on A: the new mailbox, its messages and INBOX's expunge."""
        inbox = yield self.store_a.get_mailbox(INBOX)
        uid = yield inbox.append(message(1))
        yield self.hears((INBOX, MessagesAdded, (uid,)))
        yield self.store_a.rename_mailbox(INBOX, "Old")
        yield self.hears(
            (INBOX, MessagesExpunged, (uid,)), FolderCreated("Old"), ("Old", MessagesAdded, (1,))
        )

    @defer.inlineCallbacks
    def test_burst(self) -> Gen:
        """Twenty appends on A: every UID heard once, in order, within a second."""
        inbox = yield self.store_a.get_mailbox(INBOX)
        uids = []
        for i in range(20):
            uids.append((yield inbox.append(message(i))))

        def added() -> list[int]:
            return [uid for _, kind, got in told(self.heard) for uid in got if kind is MessagesAdded]

        self.assertTrue((yield wait_for(self.reactor, lambda: len(added()) >= 20)))
        self.assertEqual(added(), uids)

    @defer.inlineCallbacks
    def test_reconnect(self) -> Gen:
        """What A changes while B's listening connection is down is told once it is back."""
        inbox = yield self.store_a.get_mailbox(INBOX)
        killed = test_store.count(
            self.database,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query = 'LISTEN txmail_store' AND pid <> pg_backend_pid()",
        )
        self.assertEqual(killed, 2)
        uid = yield inbox.append(message(1))
        yield self.store_a.create_mailbox("Meanwhile")
        self.assertTrue((yield wait_for(self.reactor, lambda: len(self.heard) >= 2, timeout=5.0)))
        yield task.deferLater(self.reactor, 0.05, lambda: None)
        # In this order after the reconnection; a notification that beat the kill comes first.
        self.assertCountEqual(told(self.heard), [FolderCreated("Meanwhile"), (INBOX, MessagesAdded, (uid,))])

    @defer.inlineCallbacks
    def test_small_payloads(self) -> Gen:
        """The notifications name no mailbox: a long name does not come near PostgreSQL's 8000 bytes."""
        payloads: list[str] = []
        self.patch(self.b._listener, "deliver", payloads.append)
        name = "n" * 900 + "/" + "m" * 900
        yield self.store_a.create_mailbox(name)
        yield self.store_a.subscribe(name)
        yield self.store_a.rename_mailbox(name, name + "x")
        yield (yield self.store_a.get_mailbox(name + "x")).append(message(1))
        self.assertTrue((yield wait_for(self.reactor, lambda: len(payloads) >= 4)))
        self.assertTrue(all(len(p) < 200 for p in payloads), payloads)


class NotifyEndToEndTests(TestCase):
    """IMAP NOTIFY on the PostgreSQL store: a client on node B hears what node A delivers."""

    timeout = 30

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        from txmail.auth.authenticator import Authenticator
        from txmail.imap.server import IMAPFactory

        self.database = upgraded_database(self)
        self.reactor = self.database.reactor
        self.a = make(self.database)
        self.b = make(other_node(self.database, self))
        for provider in (self.a, self.b):
            provider.start()
            self.addCleanup(provider.stop)
            yield provider.listening()
        store_a = yield self.a.store_for(test_server.USER)
        yield store_a.create_mailbox("Sent")
        yield store_a.subscribe("INBOX")
        authenticator = Authenticator(test_server.FakeDirectory(), clock=self.reactor)
        factory = IMAPFactory(
            authenticator=authenticator, stores=self.b, clock=self.reactor, plaintext_auth="loopback"
        )
        self.proto = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=test_server.PEER)
        self.proto.makeConnection(self.transport)
        self.addCleanup(self.proto.connectionLost, Exception("done"))

    @defer.inlineCallbacks
    def send(self, line: bytes, tag: bytes) -> Gen:
        """Send *line*, wait for its tagged answer; everything written meanwhile."""
        self.transport.clear()
        self.proto.dataReceived(line)
        done = yield wait_for(
            self.reactor, lambda: b"\r\n" + tag + b" " in b"\r\n" + self.transport.value(), 5.0
        )
        self.assertTrue(done, self.transport.value())
        out = self.transport.value()
        self.transport.clear()
        return out

    @defer.inlineCallbacks
    def test_status_of_a_delivery_elsewhere(self) -> Gen:
        """
        ``NOTIFY SET (subscribed (MessageNew MessageExpunge))`` with Sent
        selected: a delivery into INBOX through node A is told as ``*
        STATUS INBOX`` between commands, within a second; a second one as
        well while idling.
        """
        out = yield self.send(test_server.LOGIN, b"a1")
        self.assertIn(b"a1 OK", out)
        out = yield self.send(b"s SELECT Sent\r\n", b"s")
        self.assertIn(b"s OK [READ-WRITE]", out)
        out = yield self.send(b"n NOTIFY SET (subscribed (MessageNew MessageExpunge))\r\n", b"n")
        self.assertEqual(out, b"n OK NOTIFY completed\r\n")
        store_b = yield self.b.store_for(test_server.USER)
        yield store_b.listeners_ready()
        inbox = yield (yield self.a.store_for(test_server.USER)).get_mailbox(INBOX)
        uidvalidity = inbox.uidvalidity
        yield self.a.deliver_to_inboxes([test_server.USER], MessageSource.from_bytes(message(1)))
        expected = b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n" % uidvalidity
        self.assertTrue(
            (yield wait_for(self.reactor, lambda: self.transport.value() == expected)), self.transport.value()
        )
        self.transport.clear()
        out = yield self.send(b"i IDLE\r\n", b"+")
        self.assertEqual(out, b"+ idling\r\n")
        yield self.a.deliver_to_inboxes([test_server.USER], MessageSource.from_bytes(message(2)))
        expected = b"* STATUS INBOX (MESSAGES 2 UIDNEXT 3 UIDVALIDITY %d UNSEEN 2)\r\n" % uidvalidity
        self.assertTrue(
            (yield wait_for(self.reactor, lambda: self.transport.value() == expected)), self.transport.value()
        )
        out = yield self.send(b"DONE\r\n", b"i")
        self.assertEqual(out, b"i OK IDLE terminated\r\n")
