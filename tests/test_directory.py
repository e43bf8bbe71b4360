"""Tests for txmail.directory.FileDirectory: users, aliases, lookups and the shared JSON file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.testing import EventLoggingObserver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txmail.auth.passwords import ScramCredentials, verify_password
from txmail.directory import FileDirectory, InvalidAddress, normalize_address
from txmail.errors import DirectoryError, NoSuchUser, UserExists
from txmail.interfaces import IDirectory
from txmail.testing.directory import DirectoryConformanceMixin


class AddressTests(SynchronousTestCase):
    def test_normalize(self) -> None:
        """Addresses are lower-cased in both parts and lose a trailing dot on the domain."""
        self.assertEqual(normalize_address("Alice.Smith@Example.TEST."), "alice.smith@example.test")
        self.assertEqual(normalize_address(" bob+tag@example.test "), "bob+tag@example.test")

    def test_invalid(self) -> None:
        """Malformed addresses are refused with InvalidAddress (a ValueError)."""
        for bad in [
            "",
            "alice",
            "@example.test",
            "alice@",
            "a b@example.test",
            "a..b@example.test",
            ".a@example.test",
            "../../etc@example.test",
            "a/b@example.test",
            "alice@exa mple.test",
            "alice@-bad.test",
            "alice@example..test",
            "x" * 65 + "@example.test",
            "a\x00@example.test",
        ]:
            self.assertRaises(InvalidAddress, normalize_address, bad)
        self.assertTrue(issubclass(InvalidAddress, ValueError))


class FileDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.data_dir = self.mktemp()
        self.path = os.path.join(self.data_dir, "users.json")
        self.directory = self.make()

    def make(self) -> FileDirectory:
        return FileDirectory(self.path, local_domains=["Example.test"])

    def resolve(self, address: str) -> list[str]:
        return self.successResultOf(self.directory.resolve_recipient(address))

    def test_provides_interface(self) -> None:
        """FileDirectory provides IDirectory, even before the file exists."""
        self.assertFalse(os.path.exists(self.path))
        verifyObject(IDirectory, self.directory)
        self.assertEqual(self.directory.list_users(), [])

    def test_add_user_and_login(self) -> None:
        """An added user has verifiable credentials, by full address or by bare name in the primary domain."""
        self.assertEqual(self.directory.add_user("Alice@Example.TEST", "wonderland"), "alice@example.test")
        creds = self.successResultOf(self.directory.get_credentials("alice"))
        self.assertIsInstance(creds, ScramCredentials)
        self.assertTrue(verify_password(creds, "wonderland"))
        self.assertEqual(self.successResultOf(self.directory.get_credentials("ALICE@example.test")), creds)
        self.assertEqual(self.successResultOf(self.directory.canonical_user("Alice")), "alice@example.test")
        self.assertIsNone(self.successResultOf(self.directory.canonical_user("bob")))
        self.assertIsNone(self.successResultOf(self.directory.get_credentials("bob@example.test")))
        self.assertIsNone(self.successResultOf(self.directory.get_credentials("bad name")))

    def test_file_holds_no_password_and_is_private(self) -> None:
        """users.json holds a SCRAM verifier, never the password, and is readable by its owner only."""
        self.directory.add_user("alice@example.test", "wonderland-secret")
        with open(self.path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("wonderland", text)
        document = json.loads(text)
        self.assertEqual(
            set(document["users"]["alice@example.test"]["scram"]),
            {"salt", "iterations", "stored_key", "server_key"},
        )
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(self.data_dir) if ".tmp" in n], [])

    def test_duplicates_refused(self) -> None:
        """Adding an existing user (any case) or an alias over a user raises UserExists."""
        self.directory.add_user("alice@example.test", "pw")
        self.assertRaises(UserExists, self.directory.add_user, "ALICE@example.test", "pw2")
        self.assertRaises(UserExists, self.directory.add_alias, "alice@example.test", ["bob@example.test"])
        self.directory.add_alias("postmaster@example.test", ["alice@example.test"])
        self.assertRaises(UserExists, self.directory.add_user, "postmaster@example.test", "pw")
        self.assertRaises(UserExists, self.directory.add_alias, "Postmaster@example.test", ["x@example.test"])

    def test_set_password_and_delete(self) -> None:
        """set_password replaces the verifier; delete_user removes the user; unknown users raise NoSuchUser."""
        self.directory.add_user("alice@example.test", "old")
        self.directory.set_password("alice", "new")
        creds = self.successResultOf(self.directory.get_credentials("alice@example.test"))
        self.assertTrue(verify_password(creds, "new"))
        self.assertFalse(verify_password(creds, "old"))
        self.assertEqual(self.directory.delete_user("alice@example.test"), "alice@example.test")
        self.assertEqual(self.directory.list_users(), [])
        self.assertRaises(NoSuchUser, self.directory.delete_user, "alice@example.test")
        self.assertRaises(NoSuchUser, self.directory.set_password, "alice@example.test", "x")
        self.assertRaises(NoSuchUser, self.directory.delete_alias, "nobody@example.test")

    def test_bad_input_on_add(self) -> None:
        """A bad address or a prohibited password is refused and nothing is written."""
        self.assertRaises(InvalidAddress, self.directory.add_user, "not an address", "pw")
        self.assertRaises(ValueError, self.directory.add_user, "alice@example.test", "bell\x07")
        self.assertRaises(ValueError, self.directory.add_user, "alice@example.test", "")
        self.assertRaises(ValueError, self.directory.add_alias, "a@example.test", [])
        self.assertRaises(ValueError, self.directory.add_alias, "a@example.test", ["a@example.test"])
        self.assertFalse(os.path.exists(self.path))

    def test_local_domains(self) -> None:
        """Configured domains and the domains of users and aliases are local, case-insensitively."""
        self.assertTrue(self.directory.is_local_domain("EXAMPLE.test"))
        self.assertTrue(self.directory.is_local_domain("example.test."))
        self.assertFalse(self.directory.is_local_domain("other.test"))
        self.directory.add_user("carol@other.test", "pw")
        self.directory.add_alias("@third.test", ["carol@other.test"])
        self.assertTrue(self.directory.is_local_domain("Other.Test"))
        self.assertTrue(self.directory.is_local_domain("third.test"))
        self.assertFalse(self.directory.is_local_domain(""))

    def test_resolve_user_and_plus(self) -> None:
        """A user resolves to itself, case-insensitively and with a +tag; unknown addresses raise NoSuchUser."""
        self.directory.add_user("alice@example.test", "pw")
        self.assertEqual(self.resolve("Alice@EXAMPLE.test"), ["alice@example.test"])
        self.assertEqual(self.resolve("alice+lists@example.test"), ["alice@example.test"])
        for unknown in ["bob@example.test", "bob+alice@example.test", "alice@other.test", "garbage"]:
            self.failureResultOf(self.directory.resolve_recipient(unknown), NoSuchUser)

    def test_alias_expansion(self) -> None:
        """Aliases expand recursively to users and remote addresses, without duplicates."""
        self.directory.add_user("alice@example.test", "pw")
        self.directory.add_user("bob@example.test", "pw")
        self.directory.add_alias("team@example.test", ["alice@example.test", "staff@example.test"])
        self.directory.add_alias(
            "staff@example.test", ["Bob@example.test", "alice@example.test", "ext@remote.test"]
        )
        self.assertEqual(
            self.resolve("team@example.test"), ["alice@example.test", "bob@example.test", "ext@remote.test"]
        )
        self.assertEqual(
            self.resolve("team+x@example.test"), ["alice@example.test", "bob@example.test", "ext@remote.test"]
        )
        self.assertEqual(
            self.directory.list_aliases(),
            {
                "staff@example.test": ["bob@example.test", "alice@example.test", "ext@remote.test"],
                "team@example.test": ["alice@example.test", "staff@example.test"],
            },
        )

    def test_alias_loop(self) -> None:
        """An alias loop stops; the users reached are returned, a loop of aliases alone is NoSuchUser."""
        self.directory.add_user("alice@example.test", "pw")
        self.directory.add_alias("a@example.test", ["b@example.test"])
        self.directory.add_alias("b@example.test", ["a@example.test", "alice@example.test"])
        self.assertEqual(self.resolve("a@example.test"), ["alice@example.test"])
        self.directory.add_alias("x@example.test", ["y@example.test"])
        self.directory.add_alias("y@example.test", ["x@example.test"])
        self.failureResultOf(self.directory.resolve_recipient("x@example.test"), NoSuchUser)

    def test_dangling_target_skipped(self) -> None:
        """A local alias target that resolves to nobody is logged and left out."""
        logs = EventLoggingObserver.createWithCleanup(self, FileDirectory.log.observer)
        self.directory.add_user("alice@example.test", "pw")
        self.directory.add_alias("list@example.test", ["alice@example.test", "gone@example.test"])
        self.assertEqual(self.resolve("list@example.test"), ["alice@example.test"])
        self.assertTrue(any(e.get("target") == "gone@example.test" for e in logs))

    def test_catch_all(self) -> None:
        """@domain receives mail for unknown addresses of the domain but not for existing ones."""
        self.directory.add_user("alice@example.test", "pw")
        self.directory.add_user("bob@example.test", "pw")
        self.directory.add_alias("@example.test", ["alice@example.test"])
        self.assertEqual(self.resolve("anything@example.test"), ["alice@example.test"])
        self.assertEqual(self.resolve("whatever+x@example.test"), ["alice@example.test"])
        self.assertEqual(self.resolve("bob@example.test"), ["bob@example.test"])
        self.failureResultOf(self.directory.resolve_recipient("x@other.test"), NoSuchUser)
        self.assertIn("@example.test", self.directory.list_aliases())

    def test_owns_address(self) -> None:
        """A user owns their address, its +tags and aliases reaching them, not others or the catch-all."""
        self.directory.add_user("alice@example.test", "pw")
        self.directory.add_user("bob@example.test", "pw")
        self.directory.add_alias("sales@example.test", ["alice@example.test"])
        self.directory.add_alias("@example.test", ["alice@example.test"])

        def owns(user: str, address: str) -> bool:
            return self.successResultOf(self.directory.owns_address(user, address))

        self.assertTrue(owns("alice@example.test", "Alice@example.test"))
        self.assertTrue(owns("alice", "alice+x@example.test"))
        self.assertTrue(owns("alice@example.test", "sales@example.test"))
        self.assertFalse(owns("bob@example.test", "sales@example.test"))
        self.assertFalse(owns("alice@example.test", "bob@example.test"))
        self.assertFalse(owns("alice@example.test", "random@example.test"))
        self.assertFalse(owns("nobody@example.test", "nobody@example.test"))
        self.assertFalse(owns("alice@example.test", "alice@remote.test"))

    def test_reload_after_external_write(self) -> None:
        """A second instance (another process, like the CLI) sees changes on its next lookup."""
        server_view = self.make()
        self.assertIsNone(self.successResultOf(server_view.canonical_user("alice@example.test")))
        cli_view = self.make()
        cli_view.add_user("alice@example.test", "pw")
        self.assertEqual(
            self.successResultOf(server_view.canonical_user("alice@example.test")), "alice@example.test"
        )
        cli_view.add_alias("info@example.test", ["alice@example.test"])
        self.assertEqual(
            self.successResultOf(server_view.resolve_recipient("info@example.test")), ["alice@example.test"]
        )
        cli_view.delete_user("alice@example.test")
        self.assertEqual(server_view.list_users(), [])

    def test_recheck_interval(self) -> None:
        """With a recheck interval, another process's change is seen once the interval has passed."""
        now = [100.0]
        server_view = FileDirectory(
            self.path, local_domains=["example.test"], recheck_interval=1.0, monotonic=lambda: now[0]
        )
        self.assertIsNone(self.successResultOf(server_view.canonical_user("alice@example.test")))
        self.make().add_user("alice@example.test", "pw")
        now[0] += 0.5
        self.assertIsNone(self.successResultOf(server_view.canonical_user("alice@example.test")))
        now[0] += 0.6
        self.assertEqual(
            self.successResultOf(server_view.canonical_user("alice@example.test")), "alice@example.test"
        )
        server_view.add_user("bob@example.test", "pw")
        self.assertEqual(
            self.successResultOf(server_view.canonical_user("bob@example.test")), "bob@example.test"
        )

    def test_hand_written_file(self) -> None:
        """A hand-written file with mixed-case keys and bad entries loads what it can."""
        logs = EventLoggingObserver.createWithCleanup(self, FileDirectory.log.observer)
        os.makedirs(self.data_dir, exist_ok=True)
        good = self.make()
        good.add_user("alice@example.test", "pw")
        with open(self.path, encoding="utf-8") as f:
            document = json.load(f)
        document["users"]["Bob@Example.Test"] = {"scram": {"salt": "!!"}}
        document["users"]["not valid"] = {}
        document["aliases"]["Info@Example.Test"] = "alice@example.test"
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(document, f)
        directory = self.make()
        self.assertEqual(directory.list_users(), ["alice@example.test", "bob@example.test"])
        self.assertIsNone(self.successResultOf(directory.get_credentials("bob@example.test")))
        self.assertEqual(
            self.successResultOf(directory.resolve_recipient("info@example.test")), ["alice@example.test"]
        )
        self.assertGreaterEqual(len(logs), 2)
        directory.delete_user("bob@example.test")
        self.assertEqual(directory.list_users(), ["alice@example.test"])

    def test_corrupt_file(self) -> None:
        """A corrupt file refuses to load at start, and later keeps the last good users in use."""
        self.directory.add_user("alice@example.test", "pw")
        server_view = self.make()
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("{not json")
        self.assertRaises(DirectoryError, self.make)
        self.assertEqual(self.successResultOf(server_view.canonical_user("alice")), "alice@example.test")
        self.assertEqual(len(self.flushLoggedErrors(DirectoryError)), 1)
        # Unchanged bad file: not re-read (and not re-logged) on each lookup.
        self.successResultOf(server_view.canonical_user("alice"))
        self.assertEqual(len(self.flushLoggedErrors(DirectoryError)), 0)
        self.assertRaises(DirectoryError, server_view.add_user, "bob@example.test", "pw")
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("[]")
        self.assertRaises(DirectoryError, self.make)

    def test_changes_wait_for_the_lock(self) -> None:
        """A change waits while another process holds users.json.lock, then goes through."""
        import fcntl
        import threading

        self.directory.add_user("alice@example.test", "pw")
        fd = os.open(self.path + ".lock", os.O_RDWR)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX)
        worker = threading.Thread(target=self.directory.add_user, args=("bob@example.test", "pw"))
        worker.start()
        worker.join(0.3)
        self.assertTrue(worker.is_alive())
        self.assertEqual(self.make().list_users(), ["alice@example.test"])
        fcntl.flock(fd, fcntl.LOCK_UN)
        worker.join(10)
        self.assertFalse(worker.is_alive())
        self.assertEqual(self.make().list_users(), ["alice@example.test", "bob@example.test"])

    def test_primary_domain(self) -> None:
        """A bare login name uses the primary domain; without any domain it matches nobody."""
        directory = FileDirectory(self.path, local_domains=["a.test", "b.test"], primary_domain="B.test")
        directory.add_user("carol", "pw")
        self.assertEqual(directory.list_users(), ["carol@b.test"])
        self.assertEqual(self.successResultOf(directory.canonical_user("carol")), "carol@b.test")
        bare = FileDirectory(self.path, local_domains=[])
        self.assertIsNone(self.successResultOf(bare.canonical_user("carol")))
        self.assertRaises(InvalidAddress, bare.add_user, "dave", "pw")


def provision(directory: Any, users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]) -> Any:
    """Add *users* and *aliases* with the change methods of FileDirectory and MemoryDirectory."""
    for address, password in users.items():
        directory.add_user(address, password)
    for alias, targets in aliases.items():
        directory.add_alias(alias, targets)
    return directory


class FileDirectoryConformanceTests(DirectoryConformanceMixin, TestCase):
    """FileDirectory keeps the whole directory contract."""

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> FileDirectory:
        path = os.path.join(self.mktemp(), "users.json")
        return provision(FileDirectory(path, local_domains=domains), users, aliases)


class FileDirectoryReaderConformanceTests(DirectoryConformanceMixin, TestCase):
    """The contract again, from a FileDirectory that reads a file another one (the CLI) wrote."""

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> FileDirectory:
        path = os.path.join(self.mktemp(), "users.json")
        provision(FileDirectory(path, local_domains=domains), users, aliases)
        return FileDirectory(path, local_domains=domains, recheck_interval=1.0)
