"""
The user directory conformance suite.

Every implementation of :class:`txmail.interfaces.IDirectory` proves itself
by running these tests: combine :class:`DirectoryConformanceMixin` with
``twisted.trial.unittest.TestCase`` and implement
:meth:`~DirectoryConformanceMixin.make_directory`, which provisions the
domains, users (with their passwords) and aliases the tests expect::

    from twisted.trial.unittest import TestCase

    from txmail.testing.directory import DirectoryConformanceMixin

    class MyDirectoryTests(DirectoryConformanceMixin, TestCase):
        def make_directory(self, domains, users, aliases):
            directory = MyDirectory(primary_domain=domains[0], local_domains=domains)
            for address, password in users.items():
                directory.add_user(address, password)
            for alias, targets in aliases.items():
                directory.add_alias(alias, targets)
            return directory

The hook may return a Deferred (a directory provisioned in a database); a
directory that holds resources releases them with ``self.addCleanup``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from txmail.auth.passwords import ScramCredentials, verify_password
from txmail.errors import NoSuchUser
from txmail.interfaces import IDirectory

__all__ = ["ALIASES", "DOMAINS", "USERS", "DirectoryConformanceMixin"]

Gen = Generator[Any, Any, None]

#: The local domains; the first is the primary domain (of login names without ``@``).
DOMAINS: tuple[str, ...] = ("example.test", "other.test")

#: The users and their passwords.
USERS: Mapping[str, str] = {
    "alice@example.test": "alice-secret",
    "bob@example.test": "bob-secret",
    "carol@other.test": "carol-secret",
}

#: The aliases and their targets: nested, remote targets, a duplicate, a loop.
ALIASES: Mapping[str, Sequence[str]] = {
    "postmaster@example.test": ["alice@example.test"],
    "team@example.test": ["alice@example.test", "staff@example.test"],
    "staff@example.test": ["bob@example.test", "alice@example.test", "partner@remote.test"],
    "loop-a@example.test": ["loop-b@example.test"],
    "loop-b@example.test": ["loop-a@example.test", "carol@other.test"],
    "forward@other.test": ["dave@remote.test"],
}

ALICE = "alice@example.test"
BOB = "bob@example.test"
CAROL = "carol@other.test"


class DirectoryConformanceMixin:
    """
    Behaviour every user directory must show (mix into a trial ``TestCase``).

    Subclasses implement :meth:`make_directory`.
    """

    # Provided by TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIs: Any
    assertIsNone: Any
    assertIsInstance: Any
    assertFailure: Any

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> IDirectory | defer.Deferred[IDirectory]:
        """
        Return a new :class:`~txmail.interfaces.IDirectory` (or a Deferred of
        one) that holds exactly what it is given.

        Args:
            domains: the local domains, lower-case; the first is the
                primary domain.
            users: each user's canonical address and password.
            aliases: each alias address and its targets (users, other
                aliases, or addresses in other domains).
        """
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------

    @defer.inlineCallbacks
    def directory(self) -> Generator[Any, Any, IDirectory]:
        """The directory under test, provisioned with :data:`DOMAINS`, :data:`USERS` and :data:`ALIASES`."""
        if not hasattr(self, "_directory"):
            # A backend author's hook: a directory, or a Deferred of one.
            self._directory: IDirectory = yield defer.maybeDeferred(
                self.make_directory, DOMAINS, dict(USERS), {k: list(v) for k, v in ALIASES.items()}
            )
        return self._directory

    @defer.inlineCallbacks
    def resolved(self, address: str) -> Any:
        """The recipients *address* resolves to, sorted; duplicates would show."""
        return sorted((yield (yield self.directory()).resolve_recipient(address)))

    @defer.inlineCallbacks
    def owns(self, user: str, address: str) -> Any:
        return (yield (yield self.directory()).owns_address(user, address))

    # -- the interface ------------------------------------------------------

    @defer.inlineCallbacks
    def test_interface(self) -> Gen:
        """The directory provides IDirectory fully."""
        self.assertTrue(verifyObject(IDirectory, (yield self.directory())))

    @defer.inlineCallbacks
    def test_methods_return_deferreds(self) -> Gen:
        """Every lookup but is_local_domain returns a Deferred, also when it fails."""
        directory = yield self.directory()
        calls = [
            directory.resolve_recipient(ALICE),
            directory.resolve_recipient("nobody@example.test"),
            directory.get_credentials(ALICE),
            directory.get_credentials("nobody@example.test"),
            directory.canonical_user(ALICE),
            directory.canonical_user("nobody"),
            directory.owns_address(ALICE, ALICE),
            directory.owns_address(ALICE, BOB),
        ]
        for d in calls:
            self.assertIsInstance(d, defer.Deferred)
            with contextlib.suppress(NoSuchUser):
                yield d
        self.assertIs(directory.is_local_domain("example.test"), True)
        self.assertIs(directory.is_local_domain("remote.test"), False)

    # -- domains --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_local_domains(self) -> Gen:
        """Each provisioned domain is local, whatever its case; other domains are not."""
        directory = yield self.directory()
        for domain in ("example.test", "other.test", "EXAMPLE.TEST", "Other.Test"):
            self.assertTrue(directory.is_local_domain(domain), domain)
        for domain in ("remote.test", "sub.example.test", "example.testing", "test"):
            self.assertFalse(directory.is_local_domain(domain), domain)

    # -- resolve_recipient ----------------------------------------------------

    @defer.inlineCallbacks
    def test_resolve_user(self) -> Gen:
        """A user resolves to its canonical address, in every local domain, the domain in any case."""
        self.assertEqual((yield self.resolved(ALICE)), [ALICE])
        self.assertEqual((yield self.resolved("alice@EXAMPLE.Test")), [ALICE])
        self.assertEqual((yield self.resolved(CAROL)), [CAROL])
        self.assertEqual((yield self.resolved("carol@OTHER.TEST")), [CAROL])

    @defer.inlineCallbacks
    def test_resolve_subaddress(self) -> Gen:
        """user+tag@domain reaches user@domain; alias+tag@domain reaches the alias's users."""
        self.assertEqual((yield self.resolved("alice+lists@example.test")), [ALICE])
        self.assertEqual((yield self.resolved("bob+x@Example.Test")), [BOB])
        self.assertEqual((yield self.resolved("postmaster+daily@example.test")), [ALICE])

    @defer.inlineCallbacks
    def test_resolve_unknown(self) -> Gen:
        """An address no user or alias answers to fails with NoSuchUser."""
        directory = yield self.directory()
        for address in (
            "nobody@example.test",
            "nobody+alice@example.test",
            "alice@other.test",
            "carol@example.test",
            "alice@remote.test",
        ):
            yield self.assertFailure(directory.resolve_recipient(address), NoSuchUser)

    @defer.inlineCallbacks
    def test_resolve_alias(self) -> Gen:
        """An alias resolves to its users."""
        self.assertEqual((yield self.resolved("postmaster@example.test")), [ALICE])
        self.assertEqual((yield self.resolved("postmaster@EXAMPLE.test")), [ALICE])

    @defer.inlineCallbacks
    def test_resolve_nested_alias(self) -> Gen:
        """Aliases expand recursively, keep remote targets as they are, and name each user once."""
        expected = [ALICE, BOB, "partner@remote.test"]
        self.assertEqual((yield self.resolved("team@example.test")), expected)
        self.assertEqual((yield self.resolved("staff@example.test")), expected)
        self.assertEqual((yield self.resolved("team@Example.Test")), expected)

    @defer.inlineCallbacks
    def test_resolve_remote_only(self) -> Gen:
        """An alias to a remote address alone resolves to that address, for the router to relay."""
        self.assertEqual((yield self.resolved("forward@other.test")), ["dave@remote.test"])

    @defer.inlineCallbacks
    def test_resolve_alias_loop(self) -> Gen:
        """An alias loop ends: the users it reaches are returned once."""
        self.assertEqual((yield self.resolved("loop-a@example.test")), [CAROL])
        self.assertEqual((yield self.resolved("loop-b@example.test")), [CAROL])

    # -- credentials ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_credentials(self) -> Gen:
        """Each user's stored SCRAM verifier checks its password and no other."""
        directory = yield self.directory()
        for user, password in USERS.items():
            creds = yield directory.get_credentials(user)
            self.assertIsInstance(creds, ScramCredentials)
            self.assertTrue(verify_password(creds, password), user)
            self.assertFalse(verify_password(creds, password + "x"), user)
            for other, other_password in USERS.items():
                if other != user:
                    self.assertFalse(verify_password(creds, other_password), (user, other))

    @defer.inlineCallbacks
    def test_credentials_login_names(self) -> Gen:
        """A login name without @ is a user of the primary domain; the domain compares in any case."""
        directory = yield self.directory()
        for name in ("alice", "alice@EXAMPLE.TEST"):
            creds = yield directory.get_credentials(name)
            self.assertIsInstance(creds, ScramCredentials, name)
            self.assertTrue(verify_password(creds, "alice-secret"))
        self.assertIsNone((yield directory.get_credentials("carol")))

    @defer.inlineCallbacks
    def test_credentials_unknown(self) -> Gen:
        """Unknown users, aliases and addresses of other domains have no credentials."""
        directory = yield self.directory()
        for name in ("nobody@example.test", "nobody", "postmaster@example.test", "alice@remote.test", ""):
            self.assertIsNone((yield directory.get_credentials(name)), name)

    # -- canonical_user ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_canonical_user(self) -> Gen:
        """A login name gives the user's canonical address: any case of domain, bare names in the primary domain."""
        directory = yield self.directory()
        self.assertEqual((yield directory.canonical_user(ALICE)), ALICE)
        self.assertEqual((yield directory.canonical_user("alice@Example.TEST")), ALICE)
        self.assertEqual((yield directory.canonical_user("alice")), ALICE)
        self.assertEqual((yield directory.canonical_user("bob")), BOB)
        self.assertEqual((yield directory.canonical_user(CAROL)), CAROL)

    @defer.inlineCallbacks
    def test_canonical_user_unknown(self) -> Gen:
        """Names of no user (unknown, aliases, users of other domains by bare name) give None."""
        directory = yield self.directory()
        for name in (
            "nobody@example.test",
            "nobody",
            "carol",
            "postmaster@example.test",
            "alice@remote.test",
            "",
        ):
            self.assertIsNone((yield directory.canonical_user(name)), name)

    # -- owns_address ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_owns_own_address(self) -> Gen:
        """A user owns their own address, the domain in any case."""
        self.assertTrue((yield self.owns(ALICE, ALICE)))
        self.assertTrue((yield self.owns(ALICE, "alice@EXAMPLE.TEST")))
        self.assertTrue((yield self.owns(CAROL, CAROL)))

    @defer.inlineCallbacks
    def test_owns_aliases(self) -> Gen:
        """A user owns the aliases that resolve to them, directly or through other aliases."""
        self.assertTrue((yield self.owns(ALICE, "postmaster@example.test")))
        self.assertTrue((yield self.owns(ALICE, "team@example.test")))
        self.assertTrue((yield self.owns(BOB, "team@example.test")))
        self.assertTrue((yield self.owns(BOB, "staff@example.test")))
        self.assertTrue((yield self.owns(CAROL, "loop-a@example.test")))

    @defer.inlineCallbacks
    def test_owns_not(self) -> Gen:
        """Nobody owns another user's address, an alias that does not reach them, or a remote one."""
        self.assertFalse((yield self.owns(ALICE, BOB)))
        self.assertFalse((yield self.owns(BOB, ALICE)))
        self.assertFalse((yield self.owns(BOB, "postmaster@example.test")))
        self.assertFalse((yield self.owns(ALICE, "loop-a@example.test")))
        self.assertFalse((yield self.owns(ALICE, "nobody@example.test")))
        self.assertFalse((yield self.owns(ALICE, "alice@remote.test")))
        self.assertFalse((yield self.owns(ALICE, "forward@other.test")))
        self.assertFalse((yield self.owns("nobody@example.test", "nobody@example.test")))
        self.assertFalse((yield self.owns("nobody@example.test", "postmaster@example.test")))
