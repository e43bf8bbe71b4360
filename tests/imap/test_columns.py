"""
SEARCH on header keys, SORT and THREAD from the store's header columns
(:mod:`txmail.imap.columns`): which searches use them, the handlers without
Twisted, and the answers compared with the metadata path through the adapter
(memory and Maildir stores) and end to end with imaplib.
"""

from __future__ import annotations

import asyncio
import imaplib
import os
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.e2e import test_imap
from tests.imap.test_commands import FakeContext, command
from tests.imap.test_server import USER, ServerTestCase
from tests.store.test_columns import generated_messages
from txmail import mime
from txmail.imap import columns
from txmail.imap.commands import selected, sort
from txmail.imap.responses import Done, SearchData, SortData, ThreadData
from txmail.imap.view import SelectedView
from txmail.interfaces import HEADER_COLUMNS, IHeaderColumns
from txmail.model import MessageInfo
from txmail.store.maildir import MaildirProvider

__all__: list[str] = []


def _key(line: bytes) -> Any:
    cmd = command(b"a1 SEARCH " + line + b"\r\n")
    return cmd.args.key  # type: ignore[union-attr]


class SearchUsesColumnsTests(SynchronousTestCase):
    def test_column_keys(self) -> None:
        """Keys answered by the columns, alone or with keys that read no header."""
        for line in (
            b"SUBJECT x",
            b"FROM x TO y CC z BCC w",
            b"OR SENTBEFORE 1-Jan-2024 SENTSINCE 2-Jan-2024 NOT SENTON 3-Jan-2024",
            b"HEADER Subject x",
            b"HEADER MESSAGE-ID x HEADER references y HEADER In-Reply-To z HEADER date w",
            b"UNSEEN LARGER 10 SUBJECT x",
            b"ALL",
        ):
            self.assertTrue(columns.search_uses_columns(_key(line)), line)

    def test_other_keys(self) -> None:
        """HEADER of another field, THREADID, TEXT and BODY keep the metadata path."""
        for line in (
            b"HEADER X-Spam x",
            b"HEADER Sender x",
            b'HEADER "Subject " x',
            b"SUBJECT x TEXT y",
            b"OR SUBJECT x BODY y",
            b"NOT THREADID T1",
        ):
            self.assertFalse(columns.search_uses_columns(_key(line)), line)

    def test_every_sort_key_answered(self) -> None:
        """SORT reads the columns for any criteria: every sort key must be answered by them."""
        self.assertLessEqual(set(sort._KEYS), columns.COLUMN_SORT_KEYS)

    def test_stand_in(self) -> None:
        """ColumnHeaders: the pairs as given, and the envelope of the address fields."""
        headers = mime.header_columns(
            (("From", " Carol <carol@x.test>\r\n"), ("To", " a@x, (c) b@y\r\n"), ("Subject", " hi\r\n")),
            HEADER_COLUMNS,
        )
        md = columns.ColumnHeaders(headers)
        self.assertEqual(md.fields, headers)
        self.assertEqual(
            tuple(md.headers),
            (("from", " Carol <carol@x.test>\r\n"), ("to", " a@x, (c) b@y\r\n"), ("subject", " hi\r\n")),
        )
        self.assertEqual(md.envelope[2], (("Carol", None, "carol", "x.test"),))
        self.assertEqual([a[2:] for a in md.envelope[5]], [("a", "x"), ("b", "y")])
        self.assertIsNone(md.envelope[6])
        self.assertIn("ColumnHeaders", repr(md))


class DecodeFieldTests(SynchronousTestCase):
    def test_fast_path_same_text(self) -> None:
        """SEARCH's shortcut for one-line ASCII values gives the text of the whole decoding."""
        import contextlib
        import random

        from txmail.imap import search

        def slow(raw: str) -> str:
            text = search._FOLD_RE.sub("", raw).strip(" \t\r\n")
            with contextlib.suppress(UnicodeError):
                text = text.encode("latin-1").decode("utf-8")
            return search._decode_words(text)

        rng = random.Random(5)
        pieces = ["a", " ", "\t", "\r", "\n", "\r\n ", "=?", "?=", "\xc3\xa9", "b", "=?utf-8?q?x?="]
        for _ in range(20000):
            raw = "".join(rng.choice(pieces) for _ in range(rng.randrange(8)))
            self.assertEqual(search._decode_field(raw), slow(raw), repr(raw))


MESSAGES = [
    b"From: Carol <carol@x.test>\r\nSubject: Lunch zebra\r\nDate: Tue, 2 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <lunch@x.test>\r\n\r\nnoon?\r\n",
    b"From: =?utf-8?q?Andr=C3=A9?= <andre@x.test>\r\nSubject: Re: lunch\r\n"
    b"Date: Tue, 2 Jan 2024 13:00:00 +0100\r\nMessage-ID: <re1@x.test>\r\nIn-Reply-To: <lunch@x.test>\r\n\r\nyes\r\n",
    b"From: bob@x.test\r\nSubject: Budget\r\nDate: Mon, 1 Jan 2024 09:00:00 -0500\r\n\r\nnumbers\r\n",
]


@implementer(IHeaderColumns)
class ColumnsMailbox:
    """A mailbox answering at once, with header columns; its metadata must not be read."""

    name = "INBOX"
    uidvalidity = 7

    def __init__(self) -> None:
        self.metadata = {uid: mime.parse_metadata(m) for uid, m in enumerate(MESSAGES, 1)}
        self.asked: list[list[int]] = []

    def list_messages(self, uids: Any = None) -> list[MessageInfo]:
        wanted = set(self.metadata) if uids is None else set(uids)
        return [
            MessageInfo(uid=u, flags=frozenset(), internal_date=1_700_000_000 + u, size=100, modseq=1)
            for u in sorted(wanted & set(self.metadata))
        ]

    def get_metadata(self, uids: Any) -> Any:
        raise AssertionError("the metadata was read")

    def header_columns(self, uids: Any) -> dict[int, Any]:
        self.asked.append(list(uids))
        return {u: mime.header_columns(self.metadata[u].headers, HEADER_COLUMNS) for u in uids}


class ColumnsContext(FakeContext):
    async def take_turn(self) -> None:
        pass


def _run(coro: Any) -> Any:
    return asyncio.new_event_loop().run_until_complete(coro)


class HandlerTests(SynchronousTestCase):
    """The handlers read the columns, not the metadata, of a mailbox that gives them."""

    def setUp(self) -> None:
        self.patch(sort, "FACTS", sort.FactsCache())
        self.ctx = ColumnsContext()
        self.ctx.mailbox = ColumnsMailbox()
        self.ctx.session.view = SelectedView("INBOX", 7, self.ctx.mailbox.list_messages())

    def run_command(self, handler: Any, line: bytes) -> Any:
        done = _run(handler(self.ctx, command(line + b"\r\n")))
        self.assertIsInstance(done, Done)
        return self.ctx.emitted

    def test_search_subject(self) -> None:
        emitted = self.run_command(selected.search, b"a1 UID SEARCH SUBJECT lunch")
        self.assertEqual(emitted, [SearchData([1, 2])])
        self.assertEqual(self.ctx.mailbox.asked, [[1, 2, 3]])

    def test_search_from_envelope_address(self) -> None:
        """FROM matches the envelope's mailbox@host and the decoded field (RFC 3501 section 6.4.4)."""
        emitted = self.run_command(
            selected.search, b'a1 SEARCH CHARSET UTF-8 OR FROM "andr\xc3\xa9" FROM bob@x.test'
        )
        self.assertEqual(emitted, [SearchData([2, 3])])

    def test_sort_and_thread(self) -> None:
        emitted = self.run_command(sort.sort, b"a1 SORT (DATE) UTF-8 ALL")
        self.assertEqual(emitted, [SortData([3, 1, 2])])
        emitted = self.run_command(sort.sort, b"a2 SORT (DISPLAYFROM) UTF-8 SUBJECT lunch")
        self.assertEqual(emitted[-1], SortData([2, 1]))
        emitted = self.run_command(sort.thread_, b"a3 THREAD REFERENCES UTF-8 ALL")
        self.assertIsInstance(emitted[-1], ThreadData)
        # Facts kept by THREAD's first SORT: the second SORT asked for the address keys only.
        self.assertEqual(self.ctx.mailbox.asked, [[1, 2, 3], [1, 2, 3]])


#: Commands compared between the two paths (the search words of generated_messages).
COMPARED = [
    *(
        b"UID SEARCH " + key
        for key in (
            b"SUBJECT zebra",
            b'CHARSET UTF-8 SUBJECT "caf\xc3\xa9"',
            b"SUBJECT STRASSE",
            b'SUBJECT ""',
            b"SUBJECT second",
            b"NOT SUBJECT lunch",
            b"FROM carol",
            b'FROM ""',
            b"FROM user@example.org",
            b'CHARSET UTF-8 TO "andr\xc3\xa9"',
            b"CC b@y.test",
            b"BCC quokka",
            b"OR FROM second TO team",
            b"HEADER subject plans",
            b"HEADER MESSAGE-ID m1",
            b'HEADER References ""',
            b"HEADER in-reply-to x.test",
            b"SENTBEFORE 2-Jan-2024",
            b"SENTON 2-Jan-2024",
            b"NOT SENTON 1-Jan-2024",
            b"SENTSINCE 3-Jan-2024",
            b"UNSEEN SUBJECT budget",
        )
    ),
    *(
        b"UID SORT (" + criteria + b") UTF-8 ALL"
        for criteria in (
            b"DATE",
            b"SUBJECT",
            b"FROM",
            b"TO",
            b"CC",
            b"DISPLAYFROM",
            b"DISPLAYTO",
            b"REVERSE DATE SUBJECT",
            b"ARRIVAL",
        )
    ),
    b"UID SORT (SUBJECT) UTF-8 FROM carol",
    b"UID THREAD REFERENCES UTF-8 ALL",
    b"UID THREAD ORDEREDSUBJECT UTF-8 ALL",
    b"UID THREAD REFERENCES UTF-8 SUBJECT lunch",
]


#: Run in a row, the facts each computed kept for the next (SORT (DATE) keeps the date alone).
SEQUENCE = [
    b"UID SORT (DATE) UTF-8 ALL",
    b"UID SORT (REVERSE DATE) UTF-8 ALL",
    b"UID THREAD ORDEREDSUBJECT UTF-8 ALL",
    b"UID SORT (DATE) UTF-8 ALL",
    b"UID SORT (SUBJECT) UTF-8 ALL",
    b"UID THREAD REFERENCES UTF-8 ALL",
    b"UID SORT (DATE) UTF-8 ALL",
    b"UID SORT (DATE FROM) UTF-8 ALL",
    b"UID SORT (SUBJECT DATE) UTF-8 SUBJECT lunch",
]


def _hidden(mailbox: Any) -> bool:
    return False


class _ComparePaths:
    """The answers with the columns equal those without (the metadata path)."""

    def answers(
        self, proto: Any, transport: Any, lines: list[bytes] = COMPARED, fresh: bool = True
    ) -> list[bytes]:
        out = []
        sort.FACTS._tables.clear()
        for n, line in enumerate(lines):
            if fresh:
                sort.FACTS._tables.clear()
            reply = self.send(proto, transport, b"c%d " % n + line + b"\r\n")  # type: ignore[attr-defined]
            self.assertTrue(
                (b"\r\n" + reply).endswith(b"\r\nc%d OK %s completed\r\n" % (n, line.split()[1]))
                or reply.endswith(b"c%d OK UID %s completed\r\n" % (n, line.split()[1])),
                reply,
            )  # type: ignore[attr-defined]
            out.append(reply)
        return out

    def compare(self) -> None:
        proto, transport = self.login()  # type: ignore[attr-defined]
        with_columns = self.answers(proto, transport)
        self.patch(selected, "has_columns", _hidden)  # type: ignore[attr-defined]
        self.patch(sort, "has_columns", _hidden)  # type: ignore[attr-defined]
        without = self.answers(proto, transport)
        for line, a, b in zip(COMPARED, with_columns, without, strict=True):
            self.assertEqual(a, b, line)  # type: ignore[attr-defined]
        # Some searches find some messages, not all: the comparison means something.
        hits = [a for a in with_columns if a.startswith(b"* SEARCH ")]
        self.assertTrue(any(len(a.split()) > 3 for a in hits))

    def compare_sequence(self) -> None:
        """:data:`SEQUENCE` in a row on the columns answers as each alone on the metadata path."""
        proto, transport = self.login()  # type: ignore[attr-defined]
        self.answers(proto, transport, SEQUENCE[:1])
        kept = {type(f) for _, _, t in sort.FACTS._tables.values() for f in t.values()}
        self.assertEqual(kept, {sort.DateFacts})  # type: ignore[attr-defined]
        in_a_row = self.answers(proto, transport, SEQUENCE, fresh=False)
        self.patch(selected, "has_columns", _hidden)  # type: ignore[attr-defined]
        self.patch(sort, "has_columns", _hidden)  # type: ignore[attr-defined]
        alone = self.answers(proto, transport, SEQUENCE)
        for line, a, b in zip(SEQUENCE, in_a_row, alone, strict=True):
            self.assertEqual(a, b, line)  # type: ignore[attr-defined]


class MemoryComparisonTests(_ComparePaths, ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(sort, "FACTS", sort.FactsCache())
        for body in generated_messages(80):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def test_same_answers(self) -> None:
        """Encoded, folded, repeated and missing fields: the same answers on both paths."""
        calls: list[int] = []
        original = self.mailbox.header_columns

        def header_columns(uids: Any) -> Any:
            calls.append(1)
            return original(uids)

        self.mailbox.header_columns = header_columns  # type: ignore[method-assign]
        self.compare()
        self.assertTrue(calls)

    def test_same_answers_in_a_row(self) -> None:
        """SORT (DATE), then other SORTs and THREADs using its facts: the answers of the metadata path."""
        self.compare_sequence()


class MaildirComparisonTests(_ComparePaths, ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.patch(sort, "FACTS", sort.FactsCache())
        self.root = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.root)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]
        store = self.successResultOf(self.stores.store_for(USER))
        self.mailbox = self.successResultOf(store.get_mailbox("INBOX"))
        for body in generated_messages(80):
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def test_same_answers(self) -> None:
        """The Maildir store's columns file gives the answers of its metadata."""
        self.compare()
        self.assertTrue(os.path.exists(os.path.join(self.mailbox.path, "txmail-columns")))

    def test_same_answers_in_a_row(self) -> None:
        """SORT (DATE), then other SORTs and THREADs using its facts: the answers of the metadata path."""
        self.compare_sequence()

    def test_damaged_file(self) -> None:
        """A damaged columns file: the same answers (the records are filled from the metadata)."""
        proto, transport = self.login()
        self.send(proto, transport, b"f1 UID SEARCH SUBJECT zebra\r\n")
        path = os.path.join(self.mailbox.path, "txmail-columns")
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) // 3)
            f.write(b"\0" * 64)
        self.compare()


def _rmtree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


class EndToEndTests(test_imap.IMAPTestCase):
    @defer.inlineCallbacks
    def test_imaplib(self) -> Any:
        """SEARCH SUBJECT/FROM, SORT and THREAD over the real service (Maildir), with and without the columns."""

        def run() -> list[Any]:
            client = self.login()
            for i, body in enumerate(generated_messages(30)):
                test_imap.ok(client.append("INBOX", None, imaplib.Time2Internaldate(1_700_000_000 + i), body))
            test_imap.ok(client.select("INBOX"))
            return [
                test_imap.ok(client.uid("SEARCH", "SUBJECT", "zebra")),
                test_imap.ok(client.uid("SEARCH", "FROM", "user@example.org")),
                test_imap.ok(client.uid("SEARCH", "SENTSINCE", "2-Jan-2024")),
                test_imap.ok(client.uid("SORT", "(DATE)", "UTF-8", "ALL")),
                test_imap.ok(client.uid("SORT", "(DISPLAYFROM SUBJECT)", "UTF-8", "ALL")),
                test_imap.ok(client.uid("THREAD", "REFERENCES", "UTF-8", "ALL")),
            ]

        self.patch(sort, "FACTS", sort.FactsCache())
        with_columns = yield deferToThread(run)
        self.assertTrue(with_columns[0][0])
        self.patch(selected, "has_columns", _hidden)
        self.patch(sort, "has_columns", _hidden)
        self.patch(sort, "FACTS", sort.FactsCache())

        def again() -> list[Any]:
            client = self.login()
            test_imap.ok(client.select("INBOX"))
            return [
                test_imap.ok(client.uid("SEARCH", "SUBJECT", "zebra")),
                test_imap.ok(client.uid("SEARCH", "FROM", "user@example.org")),
                test_imap.ok(client.uid("SEARCH", "SENTSINCE", "2-Jan-2024")),
                test_imap.ok(client.uid("SORT", "(DATE)", "UTF-8", "ALL")),
                test_imap.ok(client.uid("SORT", "(DISPLAYFROM SUBJECT)", "UTF-8", "ALL")),
                test_imap.ok(client.uid("THREAD", "REFERENCES", "UTF-8", "ALL")),
            ]

        without = yield deferToThread(again)
        self.assertEqual(with_columns, without)
