"""
The PostgreSQL store's expunge history (QRESYNC, RFC 7162 section 3.2) is
kept for the last ``expunge_history`` modseqs of each mailbox: exact after
the horizon, a superset before it (section 3.2.6), and a node whose view
of a mailbox is older than the horizon still learns every expunge.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.pg import test_store
from tests.pg._helpers import upgraded_database
from txmail.model import DELETED, INBOX, FlagMode, MessagesExpunged
from txmail.testing.store import message

__all__: list[str] = []

Gen = Generator[Any, Any, None]
USER = "alice@example.test"
HISTORY = 10


def rows(database: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return database.run_sync(lambda conn: conn.execute(sql, args).fetchall())  # type: ignore[no-any-return]


class ExpungeHistoryTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        from txmail.pg.store import PostgresProvider

        self.database = upgraded_database(self)
        self.provider = PostgresProvider(self.database, expunge_history=HISTORY)
        self.store = yield self.provider.store_for(USER)
        self.box = yield self.store.get_mailbox(INBOX)
        self.uids = []
        for i in range(30):
            self.uids.append((yield self.box.append(message(i))))

    @defer.inlineCallbacks
    def expunge(self, box: Any, uids: list[int]) -> Gen:
        """Expunge *uids* one at a time; ``{uid: the modseq of its expunge}``."""
        at = {}
        for uid in uids:
            yield box.set_flags([uid], [DELETED], FlagMode.ADD)
            yield box.expunge()
            at[uid] = (yield box.status()).highest_modseq
        return at

    @defer.inlineCallbacks
    def test_rule(self) -> Gen:
        """
        After each expunge the table keeps the expunges of the last
        ``expunge_history`` modseqs and, under UID 0, the horizon: the
        modseq after which the history is complete.
        """
        at = yield self.expunge(self.box, self.uids[:12])
        highest = (yield self.box.status()).highest_modseq
        horizon = highest - HISTORY  # the last expunge's modseq less the history
        kept = rows(self.database, "SELECT uid, modseq FROM expunged WHERE uid > 0 ORDER BY uid")
        self.assertEqual(kept, sorted((uid, m) for uid, m in at.items() if m > horizon))
        self.assertEqual(len(kept), 5)  # one expunge every 2 modseqs (a flag, an expunge)
        self.assertEqual(rows(self.database, "SELECT modseq FROM expunged WHERE uid = 0"), [(horizon,)])

    @defer.inlineCallbacks
    def test_expunged_since(self) -> Gen:
        """
        Exact from the horizon on; before it every UID gone below UIDNEXT
        (a superset, never a UID present), as the memory store answers past
        its own horizon; restricted to the UIDs asked, UID 0 never.
        """
        at = yield self.expunge(self.box, self.uids[:12])
        (horizon,) = rows(self.database, "SELECT modseq FROM expunged WHERE uid = 0")[0]
        present = [i.uid for i in (yield self.box.list_messages())]
        gone = sorted(at)
        for since in (0, 5, horizon - 1, horizon, horizon + 1, max(at.values()) - 3, max(at.values())):
            got = yield self.box.expunged_since(since)
            if since >= horizon:
                self.assertEqual(got, sorted(uid for uid, m in at.items() if m > since), since)
            else:
                self.assertEqual(got, gone, since)
            self.assertFalse(set(got) & set(present))
            asked = [0, gone[0], gone[-1], present[0], 10_000]
            restricted = yield self.box.expunged_since(since, asked)
            self.assertEqual(restricted, [uid for uid in got if uid in asked], since)

    @defer.inlineCallbacks
    def test_other_node_behind_the_horizon(self) -> Gen:
        """
        A node whose mailbox object (or store listener) last looked before
        the horizon learns every expunge all the same: the mailbox exactly
        the UIDs it had, the listener every UID gone below its mark.
        """
        from txmail.pg.store import PostgresProvider

        other = PostgresProvider(test_store.other_node(self.database, self), expunge_history=HISTORY)
        other_store = yield other.store_for(USER)
        behind = yield other_store.get_mailbox(INBOX)
        events: list[Any] = []
        behind.add_listener(events.append)
        yield self.store.create_mailbox("Watched")
        yield self.box.copy(self.uids[:6], (yield self.store.get_mailbox("Watched")))
        heard: list[Any] = []
        self.addCleanup(other_store.add_store_listener(heard.append))
        yield other_store.listeners_ready()
        yield self.expunge(self.box, self.uids[:12])
        watched = yield self.store.get_mailbox("Watched")
        yield self.expunge(watched, [2, 4])
        for i in range(HISTORY):
            yield watched.set_flags([5], [DELETED], FlagMode.REMOVE if i % 2 else FlagMode.ADD)
        yield self.expunge(watched, [1])
        self.assertEqual(
            rows(self.database, "SELECT uid FROM expunged WHERE mailbox = %s ORDER BY uid", watched.box_id),
            [(0,), (1,)],
        )
        yield behind.refresh()
        self.assertEqual([type(e) for e in events], [MessagesExpunged])
        self.assertEqual(events[0].uids, tuple(self.uids[:12]))
        self.assertEqual((yield behind.list_messages()), (yield self.box.list_messages()))
        del heard[:]
        yield other_store._watch.sync_box(watched.box_id)
        expunges = [c.change for c in heard if isinstance(c.change, MessagesExpunged)]
        self.assertEqual([e.uids for e in expunges], [(1, 2, 4)])
