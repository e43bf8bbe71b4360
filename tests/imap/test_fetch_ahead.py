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
        for _ in range(100_000):
            if b"f1 OK" in transport.value():
                break
            self.clock.advance(0)  # the turns FETCH gives between batches
        else:
            self.fail(f"no answer: {transport.value()[-300:]!r}")
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
        """Each group of batches' structures and the next group's are asked for before the group is awaited, once each."""
        self.maildir(2)
        events: list[tuple[str, int]] = []
        mailbox = self.inbox()
        original = mailbox.derive_records
        mailbox.derive_records = lambda uids, fn: events.append(("ask", uids[0])) or original(uids, fn)
        take = selected.derived_structures
        self.patch(
            selected,
            "derived_structures",
            lambda box, records: events.append(("take", min(records))) or take(box, records),
        )
        self.fetch()
        # Asked DERIVE_BATCHES batches at a time, the next group before the current one is taken.
        per = 16 * selected.DERIVE_BATCHES
        firsts = [1 + per * k for k in range(-(-len(self.messages) // per))]
        self.assertGreater(len(firsts), 2)
        expected = [("ask", firsts[0])]
        for k, first in enumerate(firsts):
            if k + 1 < len(firsts):
                expected.append(("ask", firsts[k + 1]))
            expected.append(("take", first))
        self.assertEqual(events, expected)

    def test_parsed_by_workers(self) -> None:
        """With workers, the FETCH renders nothing in this process: the workers parse and render."""
        self.patch(io, "POOL_LEAST", 1)  # the last batch's few messages too
        self.maildir(2)
        self.patch(structures, "structures_of", lambda md: self.fail("rendered in the server process"))
        self.patch(io, "_parse_file", lambda *a: self.fail("parsed in the server process"))
        self.fetch()
        self.assertEqual(self.stores._pool().failures, 0)  # type: ignore[attr-defined]

    def test_ahead_error_taken(self) -> None:
        """What was asked ahead is taken with its error, asked once, and an error not taken is not reported."""
        ahead = selected._Ahead()
        calls: list[list[int]] = []

        def failing(uids: list[int]) -> Any:
            calls.append(uids)
            return defer.fail(ValueError("gone"))

        ahead.ask(failing, [1, 2])
        ahead.ask(failing, [1, 2])  # already asked
        self.assertEqual(calls, [[1, 2]])
        self.failureResultOf(defer.ensureDeferred(ahead.take([1, 2])), ValueError)
        self.assertIsNone(self.successResultOf(defer.ensureDeferred(ahead.take([1, 2]))))
        ahead.ask(lambda uids: defer.fail(ValueError("left")), [3])
        ahead.ask(lambda uids: {4: "md"}, [4])
        self.assertEqual(self.successResultOf(defer.ensureDeferred(ahead.take([4]))), {4: "md"})
        ahead.ask(lambda uids: defer.fail(ValueError("left")), [5])
        ahead.forget()
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(ValueError), [])
