"""
FETCH ``BODY.PEEK[HEADER.FIELDS (...)]`` from the store's header lines
(:class:`txmail.interfaces.IHeaderLines`, :func:`txmail.imap.columns.fetch_uses_lines`):
which FETCHes use them, and the responses compared with the metadata path
through the adapter (memory and Maildir stores) and end to end with imaplib.
"""

from __future__ import annotations

import imaplib
import os
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e import test_imap
from tests.imap.test_commands import command
from tests.imap.test_server import USER, ServerTestCase
from tests.store.test_columns import generated_messages
from txmail.imap import columns
from txmail.imap.commands import selected
from txmail.store import maildir
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

THUNDERBIRD = (
    b"BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References "
    b"Newsgroups In-Reply-To Content-Type Reply-To)]"
)
#: FETCHes compared on both paths (the first five use the lines).
COMPARED = (
    b"UID FETCH 1:* (UID RFC822.SIZE FLAGS " + THUNDERBIRD + b")",
    b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (subject)])",
    b"FETCH 2:5 (FLAGS BODY.PEEK[HEADER.FIELDS (FROM DATE)]<3.40>)",
    b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (List-Id Sender Importance References)] BODY.PEEK[TEXT])",
    b"FETCH 1:* (RFC822.SIZE BODY.PEEK[HEADER.FIELDS (Subject Message-ID)] INTERNALDATE)",
    b"FETCH 1:* (ENVELOPE BODY.PEEK[HEADER.FIELDS (Subject)])",
    b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject X-Spam)])",
    b"FETCH 1:* (BODY.PEEK[HEADER.FIELDS.NOT (Subject)])",
)


def _items(line: bytes) -> Any:
    return command(b"a1 " + line + b"\r\n").args.items  # type: ignore[union-attr]


def _never(mailbox: Any, items: Any) -> bool:
    return False


class FetchUsesLinesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.mailbox = self.successResultOf(
            self.successResultOf(MemoryProvider().store_for(USER)).get_mailbox("INBOX")
        )

    def test_lines_used(self) -> None:
        """HEADER.FIELDS of listed names, beside items that read no metadata."""
        for line in COMPARED[:5]:
            self.assertTrue(columns.fetch_uses_lines(self.mailbox, _items(line)), line)

    def test_metadata_kept(self) -> None:
        """ENVELOPE, a name not listed, HEADER.FIELDS.NOT, a part's header, or a store without lines."""
        for line in (*COMPARED[5:], b"FETCH 1 (BODY.PEEK[1.HEADER.FIELDS (Subject)] BODYSTRUCTURE)"):
            self.assertFalse(columns.fetch_uses_lines(self.mailbox, _items(line)), line)
        self.assertFalse(columns.fetch_uses_lines(object(), _items(COMPARED[0])))


class _ComparePaths:
    def answers(self, proto: Any, transport: Any) -> list[bytes]:
        out = []
        for n, line in enumerate(COMPARED):
            reply = self.send(proto, transport, b"c%d " % n + line + b"\r\n")  # type: ignore[attr-defined]
            self.assertIn(b"\r\nc%d OK " % n, b"\r\n" + reply)  # type: ignore[attr-defined]
            self.assertIn(b" FETCH (", reply)  # type: ignore[attr-defined]
            out.append(reply)
        return out

    def compare(self) -> list[bytes]:
        calls: list[int] = []
        original = self.mailbox.header_lines  # type: ignore[attr-defined]

        def header_lines(uids: Any) -> Any:
            calls.append(len(list(uids)))
            return original(uids)

        self.mailbox.header_lines = header_lines  # type: ignore[attr-defined]
        proto, transport = self.login()  # type: ignore[attr-defined]
        with_lines = self.answers(proto, transport)
        self.assertEqual(len(calls), 5)  # type: ignore[attr-defined]
        self.patch(selected, "fetch_uses_lines", _never)  # type: ignore[attr-defined]
        without = self.answers(proto, transport)
        for line, a, b in zip(COMPARED, with_lines, without, strict=True):
            self.assertEqual(a, b, line)  # type: ignore[attr-defined]
        return with_lines


class MemoryComparisonTests(_ComparePaths, ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        for body in generated_messages(40):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def test_same_responses(self) -> None:
        """Encoded, folded, repeated and missing fields: the same octets on both paths."""
        with_lines = self.compare()
        self.assertIn(b"Subject", with_lines[0])


class ChangedSinceTests(ServerTestCase):
    def test_changedsince_reads_metadata(self) -> None:
        """FETCH ... (CHANGEDSINCE n) answers from the metadata: it usually concerns a few of its targets."""
        for body in generated_messages(5):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))
        calls: list[Any] = []
        original = self.mailbox.header_lines
        self.mailbox.header_lines = lambda uids: calls.append(uids) or original(uids)  # type: ignore[attr-defined]
        proto, transport = self.login()
        reply = self.send(
            proto, transport, b"e1 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject)]) (CHANGEDSINCE 1)\r\n"
        )
        self.assertIn(b"e1 OK", reply)
        self.assertGreaterEqual(reply.count(b" FETCH ("), 5)
        self.assertEqual(calls, [])
        again = self.send(proto, transport, b"e2 FETCH 1:* (BODY.PEEK[HEADER.FIELDS (Subject)])\r\n")
        self.assertEqual(len(calls), 1)
        self.assertEqual(again.count(b" FETCH ("), reply.count(b" FETCH ("))


class MaildirComparisonTests(_ComparePaths, ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(maildir, "LINES_FEW", 0)  # the file, however few messages
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]
        self.mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX")
        )
        for body in generated_messages(40):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def test_same_responses(self) -> None:
        """The Maildir store's lines file gives the octets of its metadata; a second FETCH reads no metadata."""
        self.compare()
        self.assertTrue(os.path.exists(os.path.join(self.mailbox.path, "txmail-lines")))
        self.patch(selected, "fetch_uses_lines", columns.fetch_uses_lines)
        asked: list[Any] = []
        original = self.mailbox.get_metadata

        def get_metadata(uids: Any) -> Any:
            asked.append(uids)
            return original(uids)

        self.mailbox.get_metadata = get_metadata  # type: ignore[method-assign]
        proto, transport = self.login()
        reply = self.send(proto, transport, b"d1 " + COMPARED[0] + b"\r\n")
        self.assertEqual(reply.count(b" FETCH ("), 40)
        self.assertEqual(asked, [])


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class EndToEndTests(test_imap.IMAPTestCase):
    @defer.inlineCallbacks
    def test_imaplib(self) -> Any:
        """Thunderbird's first-sync FETCH over the real service (Maildir): the same with and without the lines."""
        self.patch(maildir, "LINES_FEW", 0)
        fetch = "(UID RFC822.SIZE " + THUNDERBIRD.decode() + ")"  # FLAGS: \\Recent differs

        def run(append: bool) -> Any:
            client = self.login()
            if append:
                for i, body in enumerate(generated_messages(30)):
                    test_imap.ok(
                        client.append("INBOX", None, imaplib.Time2Internaldate(1_700_000_000 + i), body)
                    )
            test_imap.ok(client.select("INBOX"))
            return test_imap.ok(client.uid("FETCH", "1:*", fetch))

        with_lines = yield deferToThread(run, True)
        self.assertEqual(len([x for x in with_lines if isinstance(x, tuple)]), 30)
        self.patch(selected, "fetch_uses_lines", _never)
        without = yield deferToThread(run, False)
        self.assertEqual(with_lines, without)
