"""
IMAP METADATA entries (RFC 5464, IMetadataStore) and URLAUTH access keys
(RFC 4467, IURLAuthKeys) in the PostgreSQL store: the contract the memory
and Maildir stores keep (tests/store/test_annotations.py,
tests/imap/test_urlauth.py), kept in the database and so shared by every
node and kept across restarts.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.pg._helpers import upgraded_database
from tests.pg.test_store import make
from tests.store import test_annotations
from txmail.interfaces import IURLAuthKeys

__all__: list[str] = []

USER = test_annotations.USER


class PostgresAnnotationsTests(test_annotations.AnnotationsMixin, TestCase):
    """The annotations contract on PostgreSQL."""

    def provider(self) -> Any:
        self.database = upgraded_database(self)
        return make(self.database)

    @defer.inlineCallbacks
    def test_other_node_and_restart(self) -> Any:
        """Another node (or a restarted one) reads the same entries; a user sees only their own."""
        yield self.store.set_annotations("Work", {"/private/comment": b"w", "/shared/bin": b"\x00\xff"})
        yield self.store.set_annotations("", {"/private/x": b"s"})
        other = yield make(self.database).store_for(USER)
        self.assertEqual(
            (yield other.get_annotations("Work")), {"/private/comment": b"w", "/shared/bin": b"\x00\xff"}
        )
        self.assertEqual((yield other.get_annotations("")), {"/private/x": b"s"})
        stranger = yield make(self.database).store_for("bob@example.test")
        self.assertEqual((yield stranger.get_annotations("")), {})
        self.assertEqual((yield stranger.annotation_count()), 0)


class PostgresURLAuthKeyTests(TestCase):
    """Access keys per mailbox and UIDVALIDITY, kept in the database."""

    def setUp(self) -> None:
        self.database = upgraded_database(self)

    @defer.inlineCallbacks
    def test_keys(self) -> Any:
        """Made on demand, per mailbox and UIDVALIDITY, reset one or all; the same on another node."""
        store = yield make(self.database).store_for(USER)
        yield store.create_mailbox("Drafts")
        self.assertTrue(IURLAuthKeys.providedBy(store))
        self.assertIsNone((yield store.urlauth_key("INBOX", 5)))
        key = yield store.urlauth_key("INBOX", 5, True)
        self.assertGreaterEqual(len(key), 16)  # RFC 4467 section 3: at least 128 bits
        self.assertEqual((yield store.urlauth_key("INBOX", 5, True)), key)
        self.assertIsNone((yield store.urlauth_key("INBOX", 6)))  # another UIDVALIDITY
        other = yield store.urlauth_key("Drafts", 5, True)
        self.assertNotEqual(other, key)
        elsewhere = yield make(self.database).store_for(USER)
        self.assertEqual((yield elsewhere.urlauth_key("Drafts", 5)), other)
        yield store.reset_urlauth_keys("Drafts")
        self.assertIsNone((yield elsewhere.urlauth_key("Drafts", 5)))
        self.assertEqual((yield store.urlauth_key("INBOX", 5)), key)
        yield store.reset_urlauth_keys()
        self.assertIsNone((yield store.urlauth_key("INBOX", 5)))
        self.assertIsNone((yield store.urlauth_key("Nope", 5, True)))  # no such mailbox: no key

    @defer.inlineCallbacks
    def test_key_goes_with_the_mailbox(self) -> Any:
        """A deleted mailbox's key goes with it: a new mailbox of that name starts without one."""
        store = yield make(self.database).store_for(USER)
        yield store.create_mailbox("Drafts")
        yield store.urlauth_key("Drafts", 5, True)
        yield store.delete_mailbox("Drafts")
        yield store.create_mailbox("Drafts")
        self.assertIsNone((yield store.urlauth_key("Drafts", 5)))
