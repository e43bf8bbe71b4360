"""
Tests for txmail.directory.MemoryDirectory: the same semantics as
FileDirectory (aliases, catch-alls, plus-addressing, credentials), no file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from txmail.auth.passwords import verify_password
from txmail.directory import InvalidAddress, MemoryDirectory
from txmail.errors import NoSuchUser, UserExists
from txmail.interfaces import IDirectory
from txmail.testing.directory import DirectoryConformanceMixin


class MemoryDirectoryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = MemoryDirectory(local_domains=["Example.TEST"])
        self.directory.add_user("Alice@example.test", "secret")
        self.directory.add_user("bob", "hunter2")  # the primary domain

    def resolve(self, address: str) -> list[str]:
        return self.successResultOf(self.directory.resolve_recipient(address))

    def test_interface(self) -> None:
        """MemoryDirectory provides IDirectory."""
        self.assertTrue(verifyObject(IDirectory, self.directory))

    def test_users(self) -> None:
        """Users are canonical (lower-case); a bare name lands in the primary domain."""
        self.assertEqual(self.directory.list_users(), ["alice@example.test", "bob@example.test"])
        self.assertEqual(self.resolve("ALICE@Example.Test"), ["alice@example.test"])
        self.assertEqual(self.successResultOf(self.directory.canonical_user("bob")), "bob@example.test")
        self.assertRaises(UserExists, self.directory.add_user, "alice@example.test", "x")
        self.assertRaises(InvalidAddress, self.directory.add_user, "a b@example.test", "x")

    def test_credentials(self) -> None:
        """The stored SCRAM verifier checks the password given to add_user."""
        creds = self.successResultOf(self.directory.get_credentials("alice@example.test"))
        self.assertTrue(verify_password(creds, "secret"))
        self.assertFalse(verify_password(creds, "wrong"))
        self.assertIsNone(self.successResultOf(self.directory.get_credentials("nobody@example.test")))
        self.directory.set_password("alice@example.test", "new")
        creds = self.successResultOf(self.directory.get_credentials("alice@example.test"))
        self.assertTrue(verify_password(creds, "new"))

    def test_plus_addressing(self) -> None:
        """user+tag@domain reaches user@domain."""
        self.assertEqual(self.resolve("alice+lists@example.test"), ["alice@example.test"])

    def test_aliases(self) -> None:
        """Aliases expand recursively, keep remote targets and drop duplicates."""
        self.directory.add_alias("team@example.test", ["alice@example.test", "bob@example.test"])
        self.directory.add_alias(
            "all@example.test", ["team@example.test", "carol@remote.test", "alice@example.test"]
        )
        self.assertEqual(
            self.resolve("all@example.test"), ["alice@example.test", "bob@example.test", "carol@remote.test"]
        )
        self.assertTrue(self.successResultOf(self.directory.owns_address("alice", "team@example.test")))
        self.directory.delete_alias("all@example.test")
        self.failureResultOf(self.directory.resolve_recipient("all@example.test"), NoSuchUser)

    def test_catch_all(self) -> None:
        """@domain gets unknown addresses, but does not let its target send as them."""
        self.failureResultOf(self.directory.resolve_recipient("whoever@example.test"), NoSuchUser)
        self.directory.add_alias("@example.test", ["bob@example.test"])
        self.assertEqual(self.resolve("whoever@example.test"), ["bob@example.test"])
        self.assertFalse(self.successResultOf(self.directory.owns_address("bob", "whoever@example.test")))

    def test_local_domains(self) -> None:
        """Configured domains and the domains of users are local."""
        self.assertTrue(self.directory.is_local_domain("EXAMPLE.test"))
        self.assertFalse(self.directory.is_local_domain("other.test"))
        self.directory.add_user("x@other.test", "pw")
        self.assertTrue(self.directory.is_local_domain("other.test"))

    def test_failed_change_keeps_state(self) -> None:
        """A change that raises leaves the directory as it was."""
        self.assertRaises(ValueError, self.directory.add_alias, "x@example.test", [])
        self.assertRaises(UserExists, self.directory.add_alias, "alice@example.test", ["bob@example.test"])
        self.assertEqual(self.directory.list_aliases(), {})
        self.directory.delete_user("bob@example.test")
        self.assertEqual(self.directory.list_users(), ["alice@example.test"])
        self.assertRaises(NoSuchUser, self.directory.delete_user, "bob@example.test")


class MemoryDirectoryConformanceTests(DirectoryConformanceMixin, TestCase):
    """MemoryDirectory keeps the whole directory contract."""

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> MemoryDirectory:
        directory = MemoryDirectory(local_domains=domains)
        for address, password in users.items():
            directory.add_user(address, password)
        for alias, targets in aliases.items():
            directory.add_alias(alias, targets)
        return directory
