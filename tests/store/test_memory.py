"""The memory store against the mailbox store conformance suite."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from txmail.model import INBOX
from txmail.store.memory import MemoryMailbox, MemoryProvider
from txmail.testing.store import (
    ExpungedEmailIdsConformanceMixin,
    MailStoreConformanceMixin,
    SieveScriptsConformanceMixin,
)


class MemoryStoreConformanceTests(
    ExpungedEmailIdsConformanceMixin, SieveScriptsConformanceMixin, MailStoreConformanceMixin, TestCase
):
    """The memory store keeps the whole mailbox contract."""

    def make_provider(self) -> MemoryProvider:
        return MemoryProvider()


class MemoryStoreTests(TestCase):
    """Behaviour particular to the memory store."""

    def test_same_objects(self) -> None:
        """The same user gets the same store, and a mailbox the same object, with fired Deferreds."""
        provider = MemoryProvider()
        store = self.successResultOf(provider.store_for("alice@example.test"))
        self.assertIs(self.successResultOf(provider.store_for("alice@example.test")), store)
        box = self.successResultOf(store.get_mailbox(INBOX))
        self.assertIsInstance(box, MemoryMailbox)
        self.assertIs(self.successResultOf(store.get_mailbox("inbox")), box)
        self.assertIsNot(self.successResultOf(provider.store_for("bob@example.test")), store)
