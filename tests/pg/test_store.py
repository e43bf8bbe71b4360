"""PostgresProvider: the mailbox store contract on PostgreSQL, bodies, several nodes and their notifications."""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import TestCase

from tests.pg._helpers import upgraded_database
from txmail.errors import NoSuchMailbox, SchemaTooOld
from txmail.model import (
    DELETED,
    INBOX,
    SEEN,
    FlagMode,
    FlagsChanged,
    MailboxDeleted,
    MessagesAdded,
    MessagesExpunged,
    MessageSource,
)
from txmail.testing.store import (
    ExpungedEmailIdsConformanceMixin,
    InboxDeliveryConformanceMixin,
    MailStoreConformanceMixin,
    SieveScriptsConformanceMixin,
    message,
)

Gen = Generator[Any, Any, None]
USER = "alice@example.test"


def make(database: Any) -> Any:
    from txmail.pg.store import PostgresProvider

    provider = PostgresProvider(database)
    provider.check_schema()
    return provider


class PostgresStoreConformanceTests(
    ExpungedEmailIdsConformanceMixin,
    InboxDeliveryConformanceMixin,
    SieveScriptsConformanceMixin,
    MailStoreConformanceMixin,
    TestCase,
):
    """The PostgreSQL store keeps the whole mailbox contract; a restart is a new provider on the same database."""

    def make_provider(self) -> Any:
        self.database = upgraded_database(self)
        return make(self.database)

    def reopen_provider(self, provider: Any) -> Any:
        return make(self.database)


class PostgresStoreOtherNodeConformanceTests(
    ExpungedEmailIdsConformanceMixin, SieveScriptsConformanceMixin, MailStoreConformanceMixin, TestCase
):
    """The contract again, each restart a provider on a second Database (another node)."""

    def make_provider(self) -> Any:
        self.database = upgraded_database(self)
        return make(self.database)

    def reopen_provider(self, provider: Any) -> Any:
        from txmail.pg.db import Database

        other = Database(
            self.database.dsn, min_connections=0, max_connections=2, reactor=self.database.reactor
        )
        other.start()
        self.addCleanup(other.stop)
        return make(other)


def other_node(database: Any, test: TestCase) -> Any:
    """A second :class:`~txmail.pg.db.Database` on the same database (another node), stopped at the end."""
    from txmail.pg.db import Database

    other = Database(database.dsn, min_connections=0, max_connections=2, reactor=database.reactor)
    other.start()
    test.addCleanup(other.stop)
    return other


def count(database: Any, sql: str, *args: Any) -> int:
    return int(database.run_sync(lambda conn: conn.execute(sql, args).fetchone()[0]))


class PostgresStoreTests(TestCase):
    """Behaviour particular to the PostgreSQL store: bodies, mailbox objects, several nodes."""

    def setUp(self) -> None:
        self.database = upgraded_database(self)
        self.provider = make(self.database)

    @defer.inlineCallbacks
    def inbox(self, provider: Any = None, user: str = USER) -> Any:
        store = yield (provider or self.provider).store_for(user)
        return (yield store.get_mailbox(INBOX))

    def test_schema_too_old(self) -> None:
        """A provider refuses a database whose schema is too old, naming the command that upgrades it."""
        from tests._postgres import fresh_database
        from txmail.pg.db import Database
        from txmail.pg.store import PostgresProvider

        provider = PostgresProvider(Database(fresh_database(self)))
        error = self.assertRaises(SchemaTooOld, provider.check_schema)
        self.assertIn("run `txmail db upgrade`", str(error))

    @defer.inlineCallbacks
    def test_one_object_per_mailbox(self) -> Gen:
        """The same user gets the same store, and a mailbox the same object while it is in use."""
        store = yield self.provider.store_for(USER)
        self.assertIs((yield self.provider.store_for(USER)), store)
        box = yield store.get_mailbox(INBOX)
        self.assertIs((yield store.get_mailbox("inbox")), box)
        self.assertIsNot((yield self.provider.store_for("bob@example.test")), store)

    @defer.inlineCallbacks
    def test_body_chunks_shared_by_copies(self) -> Gen:
        """
        A message is stored in 256 KiB chunks; a copy shares its body; the
        body goes with the last message that uses it, also when a mailbox
        is deleted.
        """
        from txmail.pg.bodies import CHUNK_SIZE

        data = message(1, b"x" * (2 * CHUNK_SIZE + 10) + b"\r\n")
        box = yield self.inbox()
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Copies")
        copies = yield store.get_mailbox("Copies")
        uid = yield box.append(data)
        self.assertEqual(count(self.database, "SELECT count(*) FROM body_chunks"), 3)
        self.assertEqual(count(self.database, "SELECT max(length(data)) FROM body_chunks"), CHUNK_SIZE)
        ((_, copied),) = yield box.copy([uid], copies)
        yield box.copy([uid], copies)
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 1)
        self.assertEqual((yield copies.read_message(copied)), data)
        yield box.set_flags([uid], [DELETED], FlagMode.ADD)
        yield box.expunge()
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 1)
        yield copies.set_flags([copied], [DELETED], FlagMode.ADD)
        yield copies.expunge()
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 1)
        yield store.delete_mailbox("Copies")
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 0)
        self.assertEqual(count(self.database, "SELECT count(*) FROM body_chunks"), 0)

    @defer.inlineCallbacks
    def test_deliver_to_inboxes_one_body(self) -> Gen:
        """
        deliver_to_inboxes stores the body once for every copy, in one
        transaction: the body stays while any copy uses it.
        """
        users = [USER, "bob@example.test", "carol@example.test"]
        data = message(1)
        uids = yield self.provider.deliver_to_inboxes(users, MessageSource.from_bytes(data))
        self.assertEqual(uids, dict.fromkeys(users, 1))
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 1)
        self.assertEqual(count(self.database, "SELECT count(DISTINCT body_id) FROM messages"), 1)
        self.assertEqual(count(self.database, "SELECT count(DISTINCT email_id) FROM messages"), 3)
        for user in users[:2]:
            box = yield self.inbox(user=user)
            yield box.set_flags([1], [DELETED], FlagMode.ADD)
            yield box.expunge()
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 1)
        self.assertEqual((yield (yield self.inbox(user=users[2])).read_message(1)), data)
        again = yield self.provider.deliver_to_inboxes(users, MessageSource.from_bytes(data))
        self.assertEqual(again, dict.fromkeys(users, 2))

    @defer.inlineCallbacks
    def test_deliver_to_inboxes_all_or_nothing(self) -> Gen:
        """A source that fails while it is read leaves no copy, no body and no UID taken."""
        box = yield self.inbox()

        class Broken(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                raise OSError("disk gone")

        source = MessageSource(size=10, opener=lambda: Broken())
        yield self.assertFailure(
            self.provider.deliver_to_inboxes([USER, "bob@example.test"], source), OSError
        )
        self.assertEqual(count(self.database, "SELECT count(*) FROM messages"), 0)
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 0)
        self.assertEqual((yield box.append(message(1))), 1)

    @defer.inlineCallbacks
    def test_deliver_to_inboxes_concurrently(self) -> Gen:
        """
        Deliveries to overlapping sets of INBOXes from two nodes at once
        (their rows locked in one order: no deadlock) give every INBOX
        distinct ascending UIDs.
        """
        other = make(other_node(self.database, self))
        users = [USER, "bob@example.test", "carol@example.test"]
        ds = []
        for i in range(10):
            for provider, chosen in ((self.provider, users), (other, users[::-1][: 2 + i % 2])):
                ds.append(provider.deliver_to_inboxes(chosen, MessageSource.from_bytes(message(i))))
        results = yield defer.gatherResults(ds, consumeErrors=True)
        for user in users:
            got = sorted(r[user] for r in results if user in r)
            self.assertEqual(got, list(range(1, len(got) + 1)))
            box = yield self.inbox(user=user)
            self.assertEqual([i.uid for i in (yield box.list_messages())], got)

    @defer.inlineCallbacks
    def test_append_to_mailbox_gone_elsewhere(self) -> Gen:
        """An append to a mailbox another node deleted fails with NoSuchMailbox and leaves no body behind."""
        other = make(other_node(self.database, self))
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Gone")
        gone = yield (yield other.store_for(USER)).get_mailbox("Gone")
        yield store.delete_mailbox("Gone")
        yield self.assertFailure(gone.append(message(1)), NoSuchMailbox)
        self.assertEqual(count(self.database, "SELECT count(*) FROM bodies"), 0)
        self.assertEqual(count(self.database, "SELECT count(*) FROM body_chunks"), 0)

    @defer.inlineCallbacks
    def test_usage(self) -> Gen:
        """usage counts the octets and messages of every mailbox of the user, no other user's."""
        box = yield self.inbox()
        yield box.append(message(1))
        yield (yield self.inbox(user="bob@example.test")).append(message(2))
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Other")
        yield box.copy([1], (yield store.get_mailbox("Other")))
        usage = yield store.usage()
        self.assertEqual((usage.octets, usage.messages), (2 * len(message(1)), 2))

    @defer.inlineCallbacks
    def test_concurrent_appends_on_two_nodes(self) -> Gen:
        """Two nodes appending to one mailbox at once get distinct, ascending UIDs and modseqs."""
        other = make(other_node(self.database, self))
        a = yield self.inbox()
        b = yield self.inbox(other)
        results = yield defer.gatherResults(
            [box.append(message(i)) for i in range(12) for box in (a, b)], consumeErrors=True
        )
        self.assertEqual(sorted(results), list(range(1, 25)))
        yield a.refresh()
        infos = yield a.list_messages()
        self.assertEqual([i.uid for i in infos], list(range(1, 25)))
        self.assertEqual(len({i.modseq for i in infos}), 24)
        self.assertEqual((yield a.status()).uidnext, 25)

    @defer.inlineCallbacks
    def test_refresh_sees_other_node(self) -> Gen:
        """refresh tells a mailbox's listeners what another node added, flagged and expunged."""
        other = make(other_node(self.database, self))
        a = yield self.inbox()
        b = yield self.inbox(other)
        events: list[Any] = []
        b.add_listener(events.append)
        uid = yield a.append(message(1))
        yield b.refresh()
        self.assertEqual([type(e) for e in events], [MessagesAdded])
        self.assertEqual(events[0].messages[0].uid, uid)
        yield a.set_flags([uid], [SEEN, DELETED], FlagMode.ADD)
        yield b.refresh()
        self.assertEqual(events[1].messages[0].flags, frozenset({SEEN, DELETED}))
        yield a.expunge()
        yield b.refresh()
        self.assertEqual([type(e) for e in events], [MessagesAdded, FlagsChanged, MessagesExpunged])
        self.assertEqual(events[2].uids, (uid,))
        self.assertEqual((yield b.status()), (yield a.status()))
        self.assertEqual((yield b.expunged_since(0)), [uid])

    @defer.inlineCallbacks
    def test_get_mailbox_refreshes(self) -> Gen:
        """Opening a mailbox again (SELECT, STATUS, a delivery) picks up another node's changes."""
        other = make(other_node(self.database, self))
        a = yield self.inbox()
        b = yield self.inbox(other)
        yield a.append(message(1))
        self.assertEqual((yield b.status()).messages, 0)
        again = yield (yield other.store_for(USER)).get_mailbox(INBOX)
        self.assertIs(again, b)
        self.assertEqual((yield b.status()).messages, 1)

    @defer.inlineCallbacks
    def test_deleted_and_renamed_elsewhere(self) -> Gen:
        """A mailbox another node deletes or renames is over for this node's object (MailboxDeleted)."""
        other = make(other_node(self.database, self))
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Gone")
        yield store.create_mailbox("Moved")
        other_store = yield other.store_for(USER)
        gone = yield other_store.get_mailbox("Gone")
        moved = yield other_store.get_mailbox("Moved")
        events: list[Any] = []
        gone.add_listener(events.append)
        moved.add_listener(events.append)
        yield store.delete_mailbox("Gone")
        yield store.rename_mailbox("Moved", "Here")
        yield other_store.refresh_open()
        self.assertEqual(events, [MailboxDeleted(), MailboxDeleted()])
        here = yield other_store.get_mailbox("Here")
        self.assertEqual(here.mailbox_id, moved.mailbox_id)

    @defer.inlineCallbacks
    def test_recent_across_nodes(self) -> Gen:
        """\\Recent is claimed once whichever node asks (the watermark is in the database)."""
        other = make(other_node(self.database, self))
        a = yield self.inbox()
        b = yield self.inbox(other)
        uids = []
        for i in range(3):
            uids.append((yield a.append(message(i))))
        self.assertEqual((yield b.claim_recent()), uids)
        self.assertEqual((yield a.claim_recent()), [])
        self.assertEqual((yield a.status()).recent, 0)


@defer.inlineCallbacks
def wait_for(reactor: Any, condition: Any, timeout: float = 1.0) -> Any:
    """Wait until *condition()* is true, at most *timeout* seconds; whether it became true."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            return False
        yield task.deferLater(reactor, 0.01, lambda: None)
    return True


class TwoListeningNodes:
    """Set-up of a TestCase: providers *a* and *b*, two nodes on one database, both listening."""

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        self.database = upgraded_database(self)  # type: ignore[arg-type]
        self.reactor = self.database.reactor
        self.a = self.started(make(self.database))
        self.b = self.started(make(other_node(self.database, self)))  # type: ignore[arg-type]
        yield self.a.listening()
        yield self.b.listening()

    def started(self, provider: Any) -> Any:
        provider.start()
        self.addCleanup(provider.stop)  # type: ignore[attr-defined]
        return provider


class PostgresStoreNotificationTests(TwoListeningNodes, TestCase):
    """Two nodes, each listening: a change committed on one reaches the other's listeners within a second."""

    @defer.inlineCallbacks
    def test_messages(self) -> Gen:
        """An append, a flag change and an expunge on A are told to B's listener, each within a second."""
        a = yield (yield self.a.store_for(USER)).get_mailbox(INBOX)
        b = yield (yield self.b.store_for(USER)).get_mailbox(INBOX)
        events: list[Any] = []
        b.add_listener(events.append)
        uid = yield a.append(message(1))
        self.assertTrue((yield wait_for(self.reactor, lambda: len(events) == 1)))
        self.assertIsInstance(events[0], MessagesAdded)
        self.assertEqual(events[0].messages[0].uid, uid)
        yield a.set_flags([uid], [DELETED], FlagMode.ADD)
        self.assertTrue((yield wait_for(self.reactor, lambda: len(events) == 2)))
        self.assertIsInstance(events[1], FlagsChanged)
        self.assertEqual(events[1].messages[0].flags, frozenset({DELETED}))
        yield a.expunge()
        self.assertTrue((yield wait_for(self.reactor, lambda: len(events) == 3)))
        self.assertIsInstance(events[2], MessagesExpunged)
        self.assertEqual(events[2].uids, (uid,))
        self.assertEqual((yield b.status()).highest_modseq, (yield a.status()).highest_modseq)

    @defer.inlineCallbacks
    def test_burst(self) -> Gen:
        """Twenty appends on A in a row reach B's listener, every UID once, in order, within a second."""
        a = yield (yield self.a.store_for(USER)).get_mailbox(INBOX)
        b = yield (yield self.b.store_for(USER)).get_mailbox(INBOX)
        events: list[Any] = []
        b.add_listener(events.append)
        uids = []
        for i in range(20):
            uids.append((yield a.append(message(i))))

        def told() -> list[int]:
            return [info.uid for e in events for info in e.messages]

        self.assertTrue((yield wait_for(self.reactor, lambda: len(told()) >= 20)))
        self.assertEqual(told(), uids)
        self.assertTrue(all(isinstance(e, MessagesAdded) for e in events))

    @defer.inlineCallbacks
    def test_deliver_to_inboxes_told(self) -> Gen:
        """A delivery to several INBOXes on A reaches B's listeners of each, within a second."""
        bob = "bob@example.test"
        events: list[Any] = []
        boxes = []  # kept: a store holds its mailbox objects weakly
        for user in (USER, bob):
            boxes.append((yield (yield self.b.store_for(user)).get_mailbox(INBOX)))
            boxes[-1].add_listener(events.append)
        uids = yield self.a.deliver_to_inboxes([USER, bob], MessageSource.from_bytes(message(1)))
        self.assertTrue((yield wait_for(self.reactor, lambda: len(events) == 2)))
        self.assertTrue(all(isinstance(e, MessagesAdded) for e in events))
        self.assertEqual(sorted(e.messages[0].uid for e in events), sorted(uids.values()))

    @defer.inlineCallbacks
    def test_own_changes_told_once(self) -> Gen:
        """A node's listener hears its own change once (its own notification is not read back)."""
        a = yield (yield self.a.store_for(USER)).get_mailbox(INBOX)
        events: list[Any] = []
        a.add_listener(events.append)
        yield a.append(message(1))
        yield task.deferLater(self.reactor, 0.3, lambda: None)
        self.assertEqual([type(e) for e in events], [MessagesAdded])

    @defer.inlineCallbacks
    def test_mailbox_deleted(self) -> Gen:
        """A mailbox deleted on A ends B's open object: its listener hears MailboxDeleted."""
        store_a = yield self.a.store_for(USER)
        yield store_a.create_mailbox("Old")
        b = yield (yield self.b.store_for(USER)).get_mailbox("Old")
        events: list[Any] = []
        b.add_listener(events.append)
        yield store_a.delete_mailbox("Old")
        self.assertTrue((yield wait_for(self.reactor, lambda: events == [MailboxDeleted()])))

    @defer.inlineCallbacks
    def test_reconnect(self) -> Gen:
        """
        When the listening connection is lost, it is made again and the open
        mailboxes are refreshed: a change made meanwhile is still told.
        """
        a = yield (yield self.a.store_for(USER)).get_mailbox(INBOX)
        b = yield (yield self.b.store_for(USER)).get_mailbox(INBOX)
        events: list[Any] = []
        b.add_listener(events.append)
        killed = count(
            self.database,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE query = 'LISTEN txmail_store' AND pid <> pg_backend_pid()",
        )
        self.assertEqual(killed, 2)
        uid = yield a.append(message(1))
        self.assertTrue((yield wait_for(self.reactor, lambda: len(events) == 1, timeout=5.0)))
        self.assertEqual(events[0].messages[0].uid, uid)

    def test_stop(self) -> None:
        """stop ends the listening thread; a stopped provider is not listening."""
        listener = self.a._listener
        thread = listener._thread
        self.a.stop()
        self.assertFalse(thread.is_alive())
        self.assertIsNone(self.a._listener)
        self.failureResultOf(self.a.listening(), RuntimeError)
