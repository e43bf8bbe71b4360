"""
Header lines (:class:`txmail.interfaces.IHeaderLines`): ``BODY[HEADER.FIELDS
(...)]`` from a store's lines records is the same octets as from the
message's metadata; the memory and Maildir stores give the records of each
message's metadata; the Maildir store's ``txmail-lines`` file is written
when records are first asked for, survives restarts, and damaged records fall back
to the metadata cache.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmail import mime
from txmail.interfaces import HEADER_LINES, IHeaderLines
from txmail.store import _maildir_columns as columns
from txmail.store import maildir
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

from . import test_columns
from .test_columns import _StoreColumnsMixin, generated_messages

USER = "alice@example.test"
NAMES = frozenset(HEADER_LINES)
#: Thunderbird's first-sync list, upper-cased as the IMAP parser gives it.
THUNDERBIRD = tuple(
    n.upper()
    for n in [
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Priority",
        "X-Priority",
        "References",
        "Newsgroups",
        "In-Reply-To",
        "Content-Type",
        "Reply-To",
    ]
)


class _Md:
    def __init__(self, headers: Any) -> None:
        self.headers = headers


def _odd_headers(rng: random.Random) -> bytes:
    """A header section mixing the listed fields with others, odd spellings and line ends."""
    fields = [
        "From: a@x.test\r\n",
        "FROM : b@x.test\r\n",
        "to:c@x.test\n",
        "Subject: one\r\n two\r\n\tthree\r\n",
        "subject\t: again\n",
        "Sender: s@x.test\r\n",
        "List-Id: <list.x.test>\r\n",
        "Importance: high\r\n",
        "X-Priority: 1\r\n",
        "Received: from a by b\r\n ; now\r\n",
        "X-Other: value\r\n",
        "Content-Type: text/plain;\r\n charset=utf-8\r\n",
        "Date: Tue, 2 Jan 2024 12:00:00 +0000\r",
        "Reply-To: r@x.test\r\n",
        "Cc: =?utf-8?q?caf=C3=A9?= <c@x.test>\r\n",
        "Message-ID: <m@x.test>\r\n",
    ]
    rng.shuffle(fields)
    chosen = fields[: rng.randrange(0, len(fields) + 1)]
    last = "Newsgroups: comp.mail" if rng.random() < 0.3 else ""
    return "".join(chosen).encode("latin-1") + last.encode() + (b"" if last else b"\r\n")


class HeaderLinesFunctionTests(SynchronousTestCase):
    def test_same_octets_as_header_fields(self) -> None:
        """For any list of names among HEADER_LINES: exactly header_fields' octets."""
        rng = random.Random(12)
        lists = [
            THUNDERBIRD,
            ("SUBJECT",),
            ("FROM", "DATE"),
            ("LIST-ID", "SENDER", "IMPORTANCE"),
            tuple(n.upper() for n in HEADER_LINES),
            (),
        ]
        for _ in range(300):
            md = _Md(mime._parse_fields(_odd_headers(rng)))
            record = mime.header_lines(md.headers, NAMES)
            for names in [*lists, tuple(rng.sample(HEADER_LINES, rng.randrange(1, 6)))]:
                self.assertEqual(
                    mime.header_lines_fields(record, names),
                    mime.header_fields(md, names),
                    (md.headers, names),
                )

    def test_record(self) -> None:
        """Only the listed fields, in order, named by lower-case keys; every line ends with a line end."""
        headers = mime._parse_fields(b"Received: x\r\nSUBJECT : hi\r\nFrom: a@x\nDate: d")
        keys, text = mime.header_lines(headers, NAMES)
        self.assertEqual(keys, "subject from date")
        self.assertEqual(text, "SUBJECT : hi\r\nFrom: a@x\nDate: d\r\n")
        self.assertEqual(mime.header_lines((), NAMES), ("", ""))
        self.assertEqual(mime.header_lines_fields(("", ""), ("FROM",)), b"\r\n")

    def test_generated_messages(self) -> None:
        """The store test messages (encoded, folded, repeated and missing fields) too."""
        for body in generated_messages(80):
            md = mime.parse_metadata(body)
            record = mime.header_lines(md.headers, NAMES)
            for names in (THUNDERBIRD, ("SUBJECT", "FROM"), ("REFERENCES",)):
                self.assertEqual(mime.header_lines_fields(record, names), mime.header_fields(md, names))


class _StoreLinesMixin:
    make_provider = _StoreColumnsMixin.make_provider
    fill = _StoreColumnsMixin.fill

    @defer.inlineCallbacks
    def test_lines_equal_metadata(self) -> Any:
        """Each message's record is header_lines of its metadata; unknown UIDs are left out."""
        yield self.fill(generated_messages(40))
        self.assertTrue(IHeaderLines.providedBy(self.mailbox))
        metadata = yield self.mailbox.get_metadata(self.uids)
        found = yield self.mailbox.header_lines([*self.uids, 999])
        self.assertEqual(found, {uid: mime.header_lines(md.headers, NAMES) for uid, md in metadata.items()})
        empty = yield self.mailbox.header_lines([])
        self.assertEqual(empty, {})


class MemoryLinesTests(_StoreLinesMixin, TestCase):
    def make_provider(self) -> Any:
        return MemoryProvider()


class MaildirLinesTests(_StoreLinesMixin, TestCase):
    def setUp(self) -> None:
        # Every call reads the file (not the metadata of a few messages).
        self.patch(maildir, "LINES_FEW", 0)

    def make_provider(self) -> Any:
        self.root = self.mktemp()
        return MaildirProvider(self.root, hostname="test.host", clock=task.Clock(), watch="poll")

    spy = test_columns.MaildirColumnsTests.spy  # the module, not the class: trial would run it here too

    @defer.inlineCallbacks
    def reopened_mailbox(self) -> Any:
        provider = MaildirProvider(self.root, hostname="test.host", clock=task.Clock(), watch="poll")
        store = yield provider.store_for(USER)
        mailbox = yield store.get_mailbox("INBOX")
        return mailbox

    @defer.inlineCallbacks
    def dropped_in(self, count: int) -> Any:
        """A mailbox (of a new provider) of *count* files another program dropped in: (mailbox, UIDs)."""
        yield self.fill([])
        for i, body in enumerate(generated_messages(count)):
            with open(os.path.join(self.mailbox.path, "new", f"1700000000.M{i}P1.other"), "wb") as f:
                f.write(body)
        mailbox = yield self.reopened_mailbox()
        return mailbox, [info.uid for info in (yield mailbox.list_messages())]

    @defer.inlineCallbacks
    def test_file_written_then_read_after_restart(self) -> Any:
        """Dropped-in files: the first call makes the records from their metadata; after a restart it reads the file."""
        mailbox, uids = yield self.dropped_in(6)
        asked = self.spy(mailbox)
        first = yield mailbox.header_lines(uids)
        self.assertEqual(sum(map(len, asked)), 6)
        _, records, damaged = columns.read_columns(mailbox.path, HEADER_LINES, columns.LINES)
        self.assertEqual((records, damaged), (6, False))
        metadata = yield mailbox.get_metadata(uids)
        self.assertEqual(first, {uid: mime.header_lines(md.headers, NAMES) for uid, md in metadata.items()})
        mailbox = yield self.reopened_mailbox()
        asked = self.spy(mailbox)
        found = yield mailbox.header_lines(uids)
        self.assertEqual((found, asked), (first, []))
        self.assertEqual(columns.read_columns(mailbox.path, HEADER_LINES, columns.LINES)[1], 6)

    @defer.inlineCallbacks
    def test_damaged_file_falls_back(self) -> Any:
        """A damaged file: the records are made again from the metadata, and the file rewritten."""
        yield self.fill(generated_messages(12))
        metadata = yield self.mailbox.get_metadata(self.uids)
        want = {uid: mime.header_lines(md.headers, NAMES) for uid, md in metadata.items()}
        first = yield self.mailbox.header_lines(self.uids)
        self.assertEqual(first, want)
        path = os.path.join(self.mailbox.path, columns.LINES)
        with open(path, "r+b") as f:
            f.seek(20)
            f.write(b"\xff\xfe")
        mailbox = yield self.reopened_mailbox()
        asked = self.spy(mailbox)
        found = yield mailbox.header_lines(self.uids)
        self.assertEqual(found, want)
        self.assertEqual(sum(map(len, asked)), 12)
        self.assertEqual(columns.read_columns(mailbox.path, HEADER_LINES, columns.LINES)[1:], (12, False))

    @defer.inlineCallbacks
    def test_read_kept_by_last_reader(self) -> Any:
        """
        The header lines as read are kept by the provider's last mailbox to
        read its own (selected or not): a repeated first sync reads only
        what was appended since, and another mailbox's read drops them.
        """
        yield self.fill(generated_messages(6))
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Other")
        other = yield store.get_mailbox("Other")
        yield other.append(generated_messages(1)[0])
        first = yield self.mailbox.header_lines(self.uids)  # the file written
        first = yield self.mailbox.header_lines(self.uids)
        read = self.mailbox._lines_read
        self.assertEqual(len(read.found), 6)
        parsed: list[Any] = []
        self.patch(columns, "_parse", lambda *a, _parse=columns._parse: parsed.append(a) or _parse(*a))
        again = yield self.mailbox.header_lines(self.uids)
        self.assertEqual((again, parsed), (first, []))
        self.assertIs(self.mailbox._lines_read, read)  # the file unchanged: nothing read
        uid = yield self.mailbox.append(generated_messages(7)[6])
        grown = yield self.mailbox.header_lines([*self.uids, uid])  # its record made and appended
        self.assertEqual({u: grown[u] for u in self.uids}, first)
        self.assertEqual(len(self.mailbox._lines_read.found), 7)  # kept as appended
        again = yield self.mailbox.header_lines([*self.uids, uid])
        self.assertEqual((again, parsed), (grown, []))
        self.assertEqual(len(self.mailbox._lines_read.found), 7)
        # Another writer's block: the next read decodes it alone, not the whole file.
        other_uid = yield self.mailbox.append(generated_messages(8)[7])
        record = mime.header_lines((yield self.mailbox.get_metadata([other_uid]))[other_uid].headers, NAMES)
        block = [(self.mailbox._locs[other_uid].base, record)]
        columns.append_columns(self.mailbox.path, HEADER_LINES, block, columns.LINES)
        again = yield self.mailbox.header_lines([*self.uids, uid, other_uid])
        self.assertEqual(again, {**grown, other_uid: record})
        (appended,) = parsed
        self.assertEqual(appended[0], columns._blocks(HEADER_LINES, block))
        yield other.header_lines([1])  # another mailbox reads: it keeps its own, this one forgets
        self.assertIsNone(self.mailbox._lines_read)
        self.assertIsNotNone(other._lines_read)

    @defer.inlineCallbacks
    def test_written_kept_as_read(self) -> Any:
        """
        The records a first sync makes and appends are kept as if read: the
        same FETCH on the next connection reads nothing of the file (unless
        another mailbox read its own since).
        """
        mailbox, uids = yield self.dropped_in(9)
        first = yield mailbox.header_lines(uids)
        metadata = yield mailbox.get_metadata(uids)
        self.assertEqual(first, {uid: mime.header_lines(md.headers, NAMES) for uid, md in metadata.items()})
        parsed: list[Any] = []
        self.patch(columns, "_parse", lambda *a, _parse=columns._parse: parsed.append(a) or _parse(*a))
        again = yield mailbox.header_lines(uids)
        self.assertEqual((again, parsed), (first, []))
        read = mailbox._lines_read
        self.assertEqual((read.count, read.damaged), (9, False))
        self.assertEqual(read.size, os.path.getsize(os.path.join(mailbox.path, columns.LINES)))

    @defer.inlineCallbacks
    def test_few_messages_read_metadata(self) -> Any:
        """Asked for fewer than LINES_FEW messages, the store makes the records from their metadata."""
        self.patch(maildir, "LINES_FEW", 5)
        yield self.fill(generated_messages(8))
        asked = self.spy(self.mailbox)
        found = yield self.mailbox.header_lines(self.uids[:3])
        self.assertEqual(asked, [self.uids[:3]])
        self.assertFalse(os.path.exists(os.path.join(self.mailbox.path, columns.LINES)))
        metadata = yield self.mailbox.get_metadata(self.uids[:3])
        self.assertEqual(found, {uid: mime.header_lines(md.headers, NAMES) for uid, md in metadata.items()})
