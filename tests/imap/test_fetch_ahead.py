"""
A FETCH rendering structures asks for the next batch's metadata before it
renders the current one (so that the Maildir store's parse workers parse it
meanwhile): the same answers with and without workers, and without asking
ahead, on dropped-in files (generated, hostile, bare-LF).
"""

from __future__ import annotations

import gc
import os
import tempfile
from typing import Any

from twisted.internet import defer

from tests.imap.test_server import USER, ServerTestCase
from tests.store import test_parse_pool
from txmail.imap import structures
from txmail.imap.commands import selected
from txmail.store import _maildir_io as io
from txmail.store import _parse_pool
from txmail.store.maildir import MaildirProvider

__all__: list[str] = []

FETCH = b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE INTERNALDATE FLAGS RFC822.SIZE)"


class FetchAheadTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(structures, "MANY", 1)
        self.patch(selected, "BATCH", 16)
        self.patch(io, "POOL_LEAST", 8)
        self.patch(_parse_pool, "MIN_SHARE", 4)
        self.messages = test_parse_pool.corpus()

    def maildir(self, workers: int) -> None:
        """A fresh Maildir of the messages as files dropped into ``new/``, its provider the server's."""
        root = tempfile.mkdtemp()
        self.addCleanup(test_parse_pool.shutil.rmtree, root, True)
        test_parse_pool.write_files(os.path.join(root, "example.test", USER.split("@")[0]), self.messages)
        self.stores = MaildirProvider(  # type: ignore[assignment]
            root, hostname="test.host", clock=self.clock, watch="off", parse_workers=workers
        )
        self.addCleanup(self.stores.stop)  # type: ignore[attr-defined]

    def inbox(self) -> Any:
        return self.successResultOf(self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX"))

    def fetch(self) -> bytes:
        proto, transport = self.login()
        transport.clear()
        proto.dataReceived(b"f1 " + FETCH + b"\r\n")
        while b"f1 OK" not in transport.value():
            self.clock.advance(0)  # the turns FETCH gives between batches
        out = transport.value()
        self.assertEqual(out.count(b" FETCH ("), len(self.messages))
        return out

    def test_same_answers(self) -> None:
        """With workers, without, and without asking ahead: the same octets."""
        self.maildir(0)
        expected = self.fetch()
        self.maildir(2)
        self.assertEqual(self.fetch(), expected)
        self.assertEqual(len(self.stores._pool().pids()), 2)  # type: ignore[attr-defined]
        self.maildir(0)
        self.patch(selected._Ahead, "ask", lambda *a: None)
        self.assertEqual(self.fetch(), expected)

    def test_asked_ahead(self) -> None:
        """The first batch renders before the next is asked for; then each next one before the current renders."""
        self.maildir(2)
        events: list[str] = []
        mailbox = self.inbox()
        original = mailbox.get_metadata
        mailbox.get_metadata = lambda uids: events.append("ask") or original(uids)
        render = selected.structures_of
        self.patch(selected, "structures_of", lambda md: events.append("render") or render(md))
        self.fetch()
        groups = [e for i, e in enumerate(events) if not i or e != "render" or events[i - 1] != "render"]
        batches = -(-len(self.messages) // 16)
        # Runs of renders shown once: the last batch's follows the one before without an ask.
        self.assertEqual(groups, ["ask", "render", "ask"] + ["ask", "render"] * (batches - 2))
        self.assertEqual(events.count("render"), len(self.messages))

    def test_ahead_error_taken(self) -> None:
        """What was asked ahead is taken with its error, and an error not taken is not reported."""
        ahead = selected._Ahead()
        ahead.ask(lambda uids: defer.fail(ValueError("gone")), [1, 2])
        self.assertEqual(ahead.uids, [1, 2])
        self.failureResultOf(defer.ensureDeferred(ahead.take()), ValueError)
        self.assertIsNone(ahead.uids)
        ahead.ask(lambda uids: defer.fail(ValueError("left")), [3])
        ahead.ask(lambda uids: {4: "md"}, [4])  # the one before forgotten
        self.assertEqual(self.successResultOf(defer.ensureDeferred(ahead.take())), {4: "md"})
        ahead.ask(lambda uids: defer.fail(ValueError("left")), [5])
        ahead.forget()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(ValueError), [])
