"""PostgresDirectory: the directory contract on PostgreSQL, its changes, several nodes, the domain list."""

from __future__ import annotations

from collections.abc import Generator, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.pg._helpers import upgraded_database
from txmail.auth.passwords import ScramCredentials, verify_password
from txmail.directory import InvalidAddress
from txmail.errors import NoSuchUser, SchemaTooOld, UserExists
from txmail.testing.directory import DirectoryConformanceMixin

Gen = Generator[Any, Any, None]


def make(database: Any, domains: Sequence[str] = ("example.test",)) -> Any:
    from txmail.pg.directory import PostgresDirectory

    directory = PostgresDirectory(database, local_domains=domains)
    directory.check_schema()
    return directory


@defer.inlineCallbacks
def provision(directory: Any, users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]) -> Any:
    for address, password in users.items():
        yield directory.add_user(address, password)
    for alias, targets in aliases.items():
        yield directory.add_alias(alias, targets)
    return directory


class PostgresDirectoryConformanceTests(DirectoryConformanceMixin, TestCase):
    """PostgresDirectory keeps the whole directory contract, its queries on the database's threads."""

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> Any:
        return provision(make(upgraded_database(self), domains), users, aliases)


class PostgresDirectoryOtherNodeConformanceTests(DirectoryConformanceMixin, TestCase):
    """The contract again, from a second directory on the same database (another node) that only reads."""

    @defer.inlineCallbacks
    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> Any:
        database = upgraded_database(self)
        yield provision(make(database, domains), users, aliases)
        from txmail.pg.db import Database

        other = Database(database.dsn, min_connections=0, max_connections=2, reactor=database.reactor)
        other.start()
        self.addCleanup(other.stop)
        return make(other, domains)


class PostgresDirectoryChangeTests(TestCase):
    """The change methods: results and errors as FileDirectory's, seen by every node."""

    def setUp(self) -> None:
        self.database = upgraded_database(self)
        self.directory = make(self.database)

    @defer.inlineCallbacks
    def test_add_user_canonical(self) -> Gen:
        """add_user stores the canonical address (bare names in the primary domain) and a working verifier."""
        self.assertEqual((yield self.directory.add_user("Alice@EXAMPLE.test", "pw")), "alice@example.test")
        self.assertEqual((yield self.directory.add_user("bob", "pw2")), "bob@example.test")
        self.assertEqual((yield self.directory.list_users()), ["alice@example.test", "bob@example.test"])
        creds = yield self.directory.get_credentials("bob")
        self.assertIsInstance(creds, ScramCredentials)
        self.assertTrue(verify_password(creds, "pw2"))

    @defer.inlineCallbacks
    def test_add_user_errors(self) -> Gen:
        """A second user or alias of an address is refused; bad addresses and passwords too."""
        yield self.directory.add_user("alice@example.test", "pw")
        yield self.directory.add_alias("info@example.test", ["alice@example.test"])
        failure = yield self.assertFailure(self.directory.add_user("ALICE@example.test", "x"), UserExists)
        self.assertEqual(str(failure), "user alice@example.test exists")
        failure = yield self.assertFailure(self.directory.add_user("info@example.test", "x"), UserExists)
        self.assertEqual(str(failure), "an alias info@example.test exists")
        failure = yield self.assertFailure(
            self.directory.add_alias("alice@example.test", ["x@remote.test"]), UserExists
        )
        self.assertEqual(str(failure), "a user alice@example.test exists")
        yield self.assertFailure(self.directory.add_alias("info@example.test", ["x@remote.test"]), UserExists)
        yield self.assertFailure(self.directory.add_user("not an address", "x"), InvalidAddress)
        yield self.assertFailure(self.directory.add_user("carol@example.test", ""), ValueError)
        yield self.assertFailure(self.directory.add_alias("a@example.test", []), ValueError)
        yield self.assertFailure(self.directory.add_alias("a@example.test", ["a@example.test"]), ValueError)
        self.assertEqual((yield self.directory.list_users()), ["alice@example.test"])
        self.assertEqual((yield self.directory.list_aliases()), {"info@example.test": ["alice@example.test"]})

    @defer.inlineCallbacks
    def test_set_password(self) -> Gen:
        """set_password replaces the verifier; an unknown user fails with NoSuchUser."""
        yield self.directory.add_user("alice@example.test", "old")
        self.assertEqual((yield self.directory.set_password("alice", "new")), "alice@example.test")
        creds = yield self.directory.get_credentials("alice@example.test")
        self.assertTrue(verify_password(creds, "new"))
        self.assertFalse(verify_password(creds, "old"))
        failure = yield self.assertFailure(self.directory.set_password("nobody", "x"), NoSuchUser)
        self.assertEqual(str(failure), "no user nobody@example.test")

    @defer.inlineCallbacks
    def test_delete_user_and_alias(self) -> Gen:
        """Deleted users and aliases stop resolving; deleting them again fails with NoSuchUser."""
        yield self.directory.add_user("alice@example.test", "pw")
        yield self.directory.add_alias("@example.test", ["alice@example.test"])
        self.assertEqual(
            (yield self.directory.resolve_recipient("anyone@example.test")), ["alice@example.test"]
        )
        self.assertEqual((yield self.directory.delete_alias("@EXAMPLE.test")), "@example.test")
        yield self.assertFailure(self.directory.resolve_recipient("anyone@example.test"), NoSuchUser)
        yield self.assertFailure(self.directory.delete_alias("@example.test"), NoSuchUser)
        self.assertEqual((yield self.directory.delete_user("alice")), "alice@example.test")
        yield self.assertFailure(self.directory.resolve_recipient("alice@example.test"), NoSuchUser)
        self.assertIsNone((yield self.directory.get_credentials("alice")))
        yield self.assertFailure(self.directory.delete_user("alice"), NoSuchUser)

    @defer.inlineCallbacks
    def test_alias_targets_in_order(self) -> Gen:
        """An alias keeps its targets in the order given, without duplicates."""
        targets = ["z@remote.test", "a@remote.test", "Z@REMOTE.test", "m@remote.test"]
        yield self.directory.add_alias("list@example.test", targets)
        self.assertEqual(
            (yield self.directory.list_aliases()),
            {"list@example.test": ["z@remote.test", "a@remote.test", "m@remote.test"]},
        )
        self.assertEqual(
            (yield self.directory.resolve_recipient("list@example.test")),
            ["z@remote.test", "a@remote.test", "m@remote.test"],
        )

    @defer.inlineCallbacks
    def test_domains_follow_users(self) -> Gen:
        """A user's domain is local while a user or alias of it exists, at once for the node that changed it."""
        self.assertFalse(self.directory.is_local_domain("other.test"))
        yield self.directory.add_user("carol@other.test", "pw")
        self.assertTrue(self.directory.is_local_domain("Other.Test"))
        yield self.directory.add_alias("@other.test", ["carol@other.test"])
        yield self.directory.delete_user("carol@other.test")
        self.assertTrue(self.directory.is_local_domain("other.test"))
        yield self.directory.delete_alias("@other.test")
        self.assertFalse(self.directory.is_local_domain("other.test"))
        self.assertTrue(self.directory.is_local_domain("example.test"))  # configured

    @defer.inlineCallbacks
    def test_other_node_sees_changes(self) -> Gen:
        """Users another node adds resolve and log in at once; their domain becomes local at the next refresh."""
        other = make(self.database)
        yield self.directory.add_user("dave@new.test", "pw")
        self.assertEqual((yield other.resolve_recipient("dave@new.test")), ["dave@new.test"])
        self.assertTrue(verify_password((yield other.get_credentials("dave@new.test")), "pw"))
        self.assertFalse(other.is_local_domain("new.test"))
        yield other.refresh()
        self.assertTrue(other.is_local_domain("new.test"))

    @defer.inlineCallbacks
    def test_refresh_loop(self) -> Gen:
        """While started, the directory re-reads the domain list every refresh_interval seconds."""
        from twisted.internet import task

        from txmail.pg.directory import PostgresDirectory

        clock = task.Clock()
        other = PostgresDirectory(
            self.database, local_domains=["example.test"], refresh_interval=5.0, clock=clock
        )
        other.start()
        self.addCleanup(other.stop)
        yield self.directory.add_user("erin@later.test", "pw")
        clock.advance(4.9)
        self.assertFalse(other.is_local_domain("later.test"))
        clock.advance(0.1)  # a re-read starts; it ends on the database's threads
        for _ in range(500):
            if other.is_local_domain("later.test"):
                break
            yield task.deferLater(self.database.reactor, 0.01, lambda: None)
        self.assertTrue(other.is_local_domain("later.test"))
        other.stop()
        self.assertEqual(clock.getDelayedCalls(), [])

    @defer.inlineCallbacks
    def test_recipient_answers_remembered(self) -> Gen:
        """
        resolve_recipient answers (no such user too) are remembered for
        recipient_ttl seconds: a second lookup within them does not ask the
        database; a change through the same directory counts at once, one
        made on another node once they are over; 0 remembers nothing.
        """
        from twisted.internet import task

        from txmail.pg.directory import PostgresDirectory

        clock = task.Clock()
        node = PostgresDirectory(self.database, local_domains=["example.test"], clock=clock)
        node.check_schema()
        yield self.assertFailure(node.resolve_recipient("alice@example.test"), NoSuchUser)
        yield self.directory.add_user("alice@example.test", "pw")  # on another node
        yield self.assertFailure(node.resolve_recipient("alice@example.test"), NoSuchUser)
        clock.advance(2.0)
        self.assertEqual((yield node.resolve_recipient("alice@example.test")), ["alice@example.test"])
        asked = []
        real_run = node.db.run
        self.patch(node.db, "run", lambda fn, *a: asked.append(fn) or real_run(fn, *a))
        self.assertEqual((yield node.resolve_recipient("alice@example.test")), ["alice@example.test"])
        self.assertEqual(asked, [])
        yield self.assertFailure(node.resolve_recipient("bob@example.test"), NoSuchUser)
        yield node.add_alias("bob@example.test", ["alice@example.test"])  # through this node: at once
        self.assertEqual((yield node.resolve_recipient("bob@example.test")), ["alice@example.test"])
        strict = PostgresDirectory(
            self.database, local_domains=["example.test"], recipient_ttl=0, clock=clock
        )
        strict.check_schema()
        yield self.assertFailure(strict.resolve_recipient("carol@example.test"), NoSuchUser)
        yield self.directory.add_user("carol@example.test", "pw")
        self.assertEqual((yield strict.resolve_recipient("carol@example.test")), ["carol@example.test"])

    @defer.inlineCallbacks
    def test_reload(self) -> Gen:
        """reload() (a server reload) forgets the remembered recipients and re-reads the domains at once."""
        from twisted.internet import task

        from txmail.pg.directory import PostgresDirectory

        clock = task.Clock()
        node = PostgresDirectory(self.database, local_domains=["example.test"], clock=clock)
        node.check_schema()
        yield self.assertFailure(node.resolve_recipient("frank@new.test"), NoSuchUser)
        yield self.directory.add_user("frank@new.test", "pw")  # on another node
        yield self.assertFailure(node.resolve_recipient("frank@new.test"), NoSuchUser)  # remembered
        self.assertFalse(node.is_local_domain("new.test"))
        yield node.reload()
        self.assertTrue(node.is_local_domain("new.test"))
        self.assertEqual((yield node.resolve_recipient("frank@new.test")), ["frank@new.test"])

    @defer.inlineCallbacks
    def test_invalid_stored_credentials(self) -> Gen:
        """A user whose stored verifier is broken gets mail but cannot log in."""
        yield self.directory.add_user("alice@example.test", "pw")
        yield self.database.run(lambda conn: conn.execute("UPDATE users SET scram = '{\"salt\": 1}'::jsonb"))
        self.assertIsNone((yield self.directory.get_credentials("alice")))
        self.assertEqual((yield self.directory.canonical_user("alice")), "alice@example.test")
        self.assertEqual(
            (yield self.directory.resolve_recipient("alice@example.test")), ["alice@example.test"]
        )
        self.flushLoggedErrors()

    def test_no_documents(self) -> None:
        """The file directory's document edits are not a way to change it."""
        self.assertFalse(hasattr(self.directory, "_mutate"))


class PostgresDirectorySchemaTests(TestCase):
    """A directory refuses a database whose schema is too old."""

    def test_schema_too_old(self) -> None:
        from tests._postgres import fresh_database
        from txmail.pg.db import Database
        from txmail.pg.directory import PostgresDirectory

        directory = PostgresDirectory(Database(fresh_database(self)), local_domains=["example.test"])
        error = self.assertRaises(SchemaTooOld, directory.check_schema)
        self.assertIn("run `txmail db upgrade`", str(error))
        self.assertIn("version 0", str(error))
