"""
Header columns (:class:`txmail.interfaces.IHeaderColumns`): the memory and
Maildir stores give exactly the fields of each message's metadata; the
Maildir store's ``txmail-columns`` file survives restarts, and damaged,
foreign or stale records fall back to the metadata cache.
"""

from __future__ import annotations

import os
import random
from typing import Any

from twisted.internet import defer, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmail import mime
from txmail.interfaces import HEADER_COLUMNS, IHeaderColumns
from txmail.store import _maildir_columns as columns
from txmail.store import maildir
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__ = ["generated_messages"]

USER = "alice@example.test"

_WORDS = ["zebra", "quokka", "Straße", "été", "lunch", "budget"]
_SUBJECTS = [
    "Subject: {w} plans\r\n",
    "Subject: =?utf-8?q?{q}_caf=C3=A9?=\r\n",
    "Subject: =?iso-8859-1?b?w6l06Q==?= {w}\r\n",
    "Subject: Re: [team] Fwd: {w}\r\n (fwd)\r\n",
    "SUBJECT : {w}\r\nSubject: second {w}\r\n",
    "subject:{w}\r\n",
    "X-Subject: not {w}\r\n",
    "",
]
_ADDRESSES = [
    "{f}: Carol <carol@x.test>\r\n",
    "{f}: =?utf-8?q?Andr=C3=A9?= <andre@x.test>\r\n",
    "{f}: <user (comment)@ (more) example.org>\r\n",
    "{f}: team: a@x.test, Bob <b@y.test>;, c@z.test\r\n",
    "{f}: dave@x.test (Dave {w})\r\n",
    "{f}: first@x.test\r\n{f}: second {w} <second@x.test>\r\n",
    "{f}: undisclosed-recipients:;\r\n",
    "{f}: \r\n",
    "",
]
_DATES = [
    "Date: Tue, 2 Jan 2024 12:00:00 +0000\r\n",
    "Date: Mon, 1 Jan 2024 23:30:00 -0500\r\n",
    "Date: 3 Jan 2024 01:00 +0100\r\n",
    "Date: not a date\r\n",
    "Date: Wed, 3 Jan 2024\r\n 08:00:00 +0000\r\nDate: Thu, 4 Jan 2024 08:00:00 +0000\r\n",
    "",
]


def generated_messages(count: int, seed: int = 7) -> list[bytes]:
    """*count* messages whose header fields mix encoded, folded, repeated and missing fields."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        w = rng.choice(_WORDS)
        q = w.encode("utf-8").hex("=").upper()
        q = "=" + q
        lines = [rng.choice(_SUBJECTS).format(w=w, q=q), rng.choice(_DATES)]
        for field in ("From", "To", "Cc", "Bcc"):
            lines.append(rng.choice(_ADDRESSES).format(f=rng.choice([field, field.upper()]), w=w))
        mid = f"<m{i}@x.test>"
        if rng.random() < 0.9:
            lines.append(f"Message-ID: {mid}\r\n")
        if i and rng.random() < 0.5:
            parents = " ".join(f"<m{rng.randrange(i)}@x.test>" for _ in range(rng.randrange(1, 4)))
            lines.append(
                f"References: {parents}\r\n" if rng.random() < 0.7 else f"References:\r\n {parents}\r\n"
            )
        if i and rng.random() < 0.3:
            lines.append(f"In-Reply-To: <m{rng.randrange(i)}@x.test>\r\n")
        rng.shuffle(lines)
        out.append(("".join(lines) + "\r\nbody " + w + "\r\n").encode("utf-8"))
    return out


def _expected(md: Any) -> tuple[str, ...]:
    """The columns of a message from its metadata, computed independently of mime.header_columns."""
    return tuple(
        x
        for n, v in md.headers
        if n.strip(" \t").lower() in HEADER_COLUMNS
        for x in (n.strip(" \t").lower(), v)
    )


class HeaderColumnsFunctionTests(SynchronousTestCase):
    def test_fields_in_order_every_occurrence(self) -> None:
        """Every occurrence, in header order, named in lower case; other fields left out."""
        headers = (
            ("Received", " x\r\n"),
            ("SUBJECT ", " one\r\n"),
            ("From", " a@x\r\n"),
            ("X-Subject", " no\r\n"),
            ("subject", " two\r\n folded\r\n"),
            ("In-Reply-To", " <p@x>\r\n"),
        )
        self.assertEqual(
            mime.header_columns(headers, HEADER_COLUMNS),
            (
                *("subject", " one\r\n"),
                *("from", " a@x\r\n"),
                *("subject", " two\r\n folded\r\n"),
                *("in-reply-to", " <p@x>\r\n"),
            ),
        )
        self.assertEqual(mime.header_columns((), HEADER_COLUMNS), ())

    def test_names_are_the_constants(self) -> None:
        """The names given are HEADER_COLUMNS' own objects (marshal writes each once per block)."""
        (name, _) = mime.header_columns((("Message-ID", " <a@b>\r\n"),), HEADER_COLUMNS)
        self.assertIs(name, HEADER_COLUMNS[HEADER_COLUMNS.index("message-id")])


class _StoreColumnsMixin:
    """header_columns gives each message's fields as its metadata holds them."""

    def make_provider(self) -> Any:
        raise NotImplementedError

    @defer.inlineCallbacks
    def fill(self, messages: list[bytes]) -> Any:
        self.provider = self.make_provider()
        store = yield self.provider.store_for(USER)
        self.mailbox = yield store.get_mailbox("INBOX")
        self.uids = []
        for body in messages:
            uid = yield self.mailbox.append(body)
            self.uids.append(uid)

    @defer.inlineCallbacks
    def test_columns_equal_metadata(self) -> Any:
        """Encoded, folded, repeated and missing fields: exactly the metadata's values."""
        yield self.fill(generated_messages(60))
        self.assertTrue(IHeaderColumns.providedBy(self.mailbox))
        metadata = yield self.mailbox.get_metadata(self.uids)
        found = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})
        self.assertTrue(any(v[::2].count("subject") > 1 for v in found.values()))

    @defer.inlineCallbacks
    def test_unknown_uids_left_out(self) -> Any:
        """UIDs that do not exist (or were expunged) are left out, as get_metadata does."""
        yield self.fill(generated_messages(3))
        yield self.mailbox.set_flags([self.uids[1]], {"\\Deleted"}, self._add())
        yield self.mailbox.expunge()
        found = yield self.mailbox.header_columns([*self.uids, 999])
        self.assertEqual(sorted(found), [self.uids[0], self.uids[2]])
        empty = yield self.mailbox.header_columns([])
        self.assertEqual(empty, {})

    def _add(self) -> Any:
        from txmail.model import FlagMode

        return FlagMode.ADD


class MemoryColumnsTests(_StoreColumnsMixin, TestCase):
    def make_provider(self) -> Any:
        return MemoryProvider()


class MaildirColumnsTests(_StoreColumnsMixin, TestCase):
    def make_provider(self) -> Any:
        self.root = self.mktemp()
        return MaildirProvider(self.root, hostname="test.host", clock=task.Clock(), watch="poll")

    def reopen(self) -> Any:
        """The store of a new provider on the same directory (a restart)."""
        return MaildirProvider(self.root, hostname="test.host", clock=task.Clock(), watch="poll")

    @property
    def path(self) -> str:
        return self.mailbox.path  # type: ignore[no-any-return]

    def spy(self, mailbox: Any) -> list[list[int]]:
        asked: list[list[int]] = []
        original = mailbox.get_metadata

        def get_metadata(uids: Any) -> Any:
            asked.append(list(uids))
            return original(uids)

        mailbox.get_metadata = get_metadata
        return asked

    @defer.inlineCallbacks
    def reopened_mailbox(self) -> Any:
        store = yield self.reopen().store_for(USER)
        mailbox = yield store.get_mailbox("INBOX")
        return mailbox

    @defer.inlineCallbacks
    def test_file_survives_restart(self) -> Any:
        """The first call fills the file from the metadata; after a restart it reads no metadata."""
        yield self.fill(generated_messages(20))
        asked = self.spy(self.mailbox)
        first = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(sum(map(len, asked)), 20)
        self.assertTrue(os.path.exists(os.path.join(self.path, columns.COLUMNS)))
        again = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(again, first)
        self.assertEqual(sum(map(len, asked)), 20)
        mailbox = yield self.reopened_mailbox()
        asked = self.spy(mailbox)
        after = yield mailbox.header_columns(self.uids)
        self.assertEqual(after, first)
        self.assertEqual(asked, [])

    @defer.inlineCallbacks
    def test_read_kept_while_selected_or_last(self) -> Any:
        """
        The columns as read are kept while the mailbox has listeners
        (selected) or is the provider's last mailbox to read them; reading
        another mailbox's drops those of one nobody has selected.
        """
        yield self.fill(generated_messages(6))
        store = yield self.provider.store_for(USER)
        yield store.create_mailbox("Other")
        other = yield store.get_mailbox("Other")
        yield other.append(generated_messages(1)[0])
        yield self.mailbox.header_columns(self.uids)  # the file written
        remove = self.mailbox.add_listener(lambda change: None)
        first = yield self.mailbox.header_columns(self.uids)
        read = self.mailbox._columns_read
        self.assertEqual(len(read.found), 6)
        again = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(again, first)
        self.assertIs(self.mailbox._columns_read, read)  # the file unchanged: nothing read
        yield other.header_columns([1])  # another mailbox reads: this one is selected, it keeps them
        self.assertIs(self.mailbox._columns_read, read)
        remove()  # nobody has it selected, and it did not read last
        self.assertIsNone(self.mailbox._columns_read)
        self.assertIsNotNone(other._columns_read)  # the last to read keeps them, selected or not
        yield self.mailbox.header_columns(self.uids)
        self.assertIsNone(other._columns_read)
        self.assertIsNotNone(self.mailbox._columns_read)

    @defer.inlineCallbacks
    def test_parse_writes_columns(self) -> Any:
        """A file another program dropped in gets its columns when its metadata is first parsed."""
        yield self.fill([])
        for i, body in enumerate(generated_messages(5)):
            with open(os.path.join(self.path, "new", f"1700000000.M{i}P1.other"), "wb") as f:
                f.write(body)
        mailbox = yield self.reopened_mailbox()
        uids = [info.uid for info in (yield mailbox.list_messages())]
        metadata = yield mailbox.get_metadata(uids)
        _, records, damaged = columns.read_columns(mailbox.path, HEADER_COLUMNS)
        self.assertEqual((records, damaged), (5, False))
        asked = self.spy(mailbox)
        found = yield mailbox.header_columns(uids)
        self.assertEqual(asked, [])
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})

    @defer.inlineCallbacks
    def dropped_in(self, count: int, seed: int = 7) -> Any:
        """A mailbox (of a new provider) of *count* more files another program dropped in, not yet parsed."""
        if not hasattr(self, "provider"):
            yield self.fill([])
        path = self.path
        for i, body in enumerate(generated_messages(count, seed)):
            with open(os.path.join(path, "new", f"1700000000.M{seed}_{i}P1.other"), "wb") as f:
                f.write(body)
        mailbox = yield self.reopened_mailbox()
        uids = [info.uid for info in (yield mailbox.list_messages())]
        return mailbox, uids

    def decoded(self) -> list[int]:
        """The records decoded from columns files from now on: one number a read that found blocks."""
        counts: list[int] = []
        original = columns._parse

        def counted(data: bytes, names: tuple[str, ...]) -> Any:
            found = original(data, names)
            if data:
                counts.append(found[1])
            return found

        self.patch(columns, "_parse", counted)
        return counts

    @defer.inlineCallbacks
    def test_written_kept_as_read(self) -> Any:
        """
        The columns written when the messages are first parsed (a first
        FETCH) are kept as read, after the session ends too (the provider's
        last mailbox to keep its columns): the next header_columns reads
        nothing of the file, and answers as the metadata.
        """
        self.patch(maildir, "COLUMNS_WRITTEN", 2)  # two blocks listed are added to those kept
        mailbox, uids = yield self.dropped_in(30)
        remove = mailbox.add_listener(lambda change: None)
        metadata = yield mailbox.get_metadata(uids[:10])
        metadata.update((yield mailbox.get_metadata(uids[10:20])))
        self.assertEqual((mailbox._columns_read.count, mailbox._columns_written), (20, []))
        metadata.update((yield mailbox.get_metadata(uids[20:])))
        self.assertEqual(len(mailbox._columns_written), 1)
        self.assertIs(mailbox._provider._columns_last, mailbox)
        remove()
        decoded = self.decoded()
        asked = self.spy(mailbox)
        found = yield mailbox.header_columns(uids)
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})
        self.assertEqual((decoded, asked), ([], []))
        read = mailbox._columns_read
        self.assertEqual((read.count, read.damaged), (30, False))
        self.assertEqual(read.size, os.path.getsize(os.path.join(mailbox.path, columns.COLUMNS)))
        # Another mailbox reads its columns: this one, not selected, forgets them.
        store = yield mailbox._provider.store_for(USER)
        yield store.create_mailbox("Other")
        other = yield store.get_mailbox("Other")
        yield other.header_columns([])
        yield other.append(generated_messages(1)[0])
        yield other.header_columns([1])
        self.assertEqual((mailbox._columns_read, mailbox._columns_written), (None, []))
        again = yield mailbox.header_columns(uids)
        self.assertEqual(again, found)
        self.assertEqual(decoded, [30])  # read from the file

    @defer.inlineCallbacks
    def test_written_after_records_not_read(self) -> Any:
        """Columns appended to a file whose earlier records were never read: not kept; the file is read."""
        yield self.fill(generated_messages(4))
        yield self.mailbox.header_columns(self.uids)  # the file holds their records
        mailbox, uids = yield self.dropped_in(5)
        metadata = yield mailbox.get_metadata(uids)
        self.assertEqual((mailbox._columns_read, mailbox._columns_written), (None, []))
        decoded = self.decoded()
        found = yield mailbox.header_columns(uids)
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})
        self.assertEqual(decoded, [9])

    @defer.inlineCallbacks
    def test_written_then_changes(self) -> Any:
        """
        Kept as written, then another writer's block, messages appended,
        expunged, the file compacted and damaged: every answer is the
        metadata's, and only what the mailbox did not write itself is read.
        """
        from txmail.model import FlagMode

        self.patch(columns, "SLACK", 0)
        mailbox, uids = yield self.dropped_in(12)
        metadata = yield mailbox.get_metadata(uids)
        want = {uid: _expected(md) for uid, md in metadata.items()}
        decoded = self.decoded()

        @defer.inlineCallbacks
        def check() -> Any:
            found = yield mailbox.header_columns(sorted(want))
            self.assertEqual(found, want)

        yield check()
        self.assertEqual(decoded, [])
        # Another writer's block (a record of no message here), then ours after it: read since.
        columns.append_columns(mailbox.path, HEADER_COLUMNS, [("elsewhere", ("subject", " x"))])
        for body in generated_messages(3, seed=11):
            uid = yield mailbox.append(body)
            want[uid] = _expected((yield mailbox.get_metadata([uid]))[uid])
        yield check()
        self.assertEqual(decoded, [1])  # the other writer's block alone
        yield check()
        self.assertEqual(decoded, [1])
        # Most messages expunged: the file is rewritten with the live records, answers unchanged.
        gone = sorted(want)[:10]
        yield mailbox.set_flags(gone, {"\\Deleted"}, FlagMode.ADD)
        yield mailbox.expunge()
        for uid in gone:
            del want[uid]
        more = yield mailbox.append(generated_messages(1, seed=12)[0])
        want[more] = _expected((yield mailbox.get_metadata([more]))[more])
        yield check()
        self.assertEqual(columns.read_columns(mailbox.path, HEADER_COLUMNS)[1:], (len(want), False))
        yield check()
        # Damage after what is kept: found at the next read, repaired, answers unchanged.
        with open(os.path.join(mailbox.path, columns.COLUMNS), "ab") as f:
            f.write(b"TXC1\xff\xff\xff\x0fnot a block")
        yield check()
        self.assertEqual(columns.read_columns(mailbox.path, HEADER_COLUMNS)[1:], (len(want), False))
        yield check()

    @defer.inlineCallbacks
    def check_damage(self, damage: Any) -> Any:
        """After *damage* (a function of the file's path), the answers are right and the file repaired."""
        yield self.fill(generated_messages(30))
        metadata = yield self.mailbox.get_metadata(self.uids)
        want = {uid: _expected(md) for uid, md in metadata.items()}
        for start in (0, 10, 20):  # three blocks
            yield self.mailbox.header_columns(self.uids[start : start + 10])
        damage(os.path.join(self.path, columns.COLUMNS))
        mailbox = yield self.reopened_mailbox()
        found = yield mailbox.header_columns(self.uids)
        self.assertEqual(found, want)
        _, records, damaged = columns.read_columns(mailbox.path, HEADER_COLUMNS)
        self.assertFalse(damaged)
        self.assertEqual(records, 30)
        asked = self.spy(mailbox)
        again = yield mailbox.header_columns(self.uids)
        self.assertEqual((again, asked), (want, []))

    def test_bad_crc(self) -> Any:
        """A changed octet in a block: its records and the later ones are filled from the metadata."""

        def damage(path: str) -> None:
            with open(path, "r+b") as f:
                data = bytearray(f.read())
                data[len(data) // 2] ^= 0x55
                f.seek(0)
                f.write(data)

        return self.check_damage(damage)

    def test_truncated(self) -> Any:
        """A block cut short (a crash in a write)."""

        def damage(path: str) -> None:
            os.truncate(path, os.path.getsize(path) - 7)

        return self.check_damage(damage)

    def test_garbage_appended(self) -> Any:
        """Octets that are no block after the last one."""

        def damage(path: str) -> None:
            with open(path, "ab") as f:
                f.write(b"TXC1\xff\xff\xff\x0fnot a block")

        return self.check_damage(damage)

    def test_missing_file(self) -> Any:
        """A removed file is filled again."""
        return self.check_damage(os.unlink)

    def test_wrong_shape_payload(self) -> Any:
        """A block whose CRC holds but whose payload is not records is damage, not an answer."""
        import marshal
        import struct
        import zlib

        def damage(path: str) -> None:
            payload = marshal.dumps((HEADER_COLUMNS, ("a", "b"), (("x",),)), 4)
            with open(path, "r+b") as f:
                f.seek(0)
                f.write(struct.pack("<4sII", b"TXC1", len(payload), zlib.crc32(payload)) + payload)
                f.truncate()

        return self.check_damage(damage)

    @defer.inlineCallbacks
    def test_foreign_fields_skipped(self) -> Any:
        """A block written for other field names (another version) is skipped, not misread."""
        yield self.fill(generated_messages(4))
        metadata = yield self.mailbox.get_metadata(self.uids)
        bases = [self.mailbox._locs[uid].base for uid in self.uids]
        columns.append_columns(self.path, ("subject",), [(b, ("subject", " wrong")) for b in bases])
        found = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})

    @defer.inlineCallbacks
    def test_stale_records_compacted(self) -> Any:
        """When most records are of expunged messages the file is rewritten with the live ones."""
        from txmail.model import FlagMode

        self.patch(columns, "SLACK", 0)
        yield self.fill(generated_messages(12))
        yield self.mailbox.header_columns(self.uids)
        self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS)[1], 12)
        yield self.mailbox.set_flags(self.uids[:10], {"\\Deleted"}, FlagMode.ADD)
        yield self.mailbox.expunge()
        found = yield self.mailbox.header_columns(self.uids)
        self.assertEqual(sorted(found), self.uids[10:])
        known, records, damaged = columns.read_columns(self.path, HEADER_COLUMNS)
        self.assertEqual((records, damaged), (2, False))
        self.assertEqual(sorted(known), sorted(self.mailbox._locs[uid].base for uid in self.uids[10:]))

    @defer.inlineCallbacks
    def test_new_uidvalidity(self) -> Any:
        """The index lost (new UIDVALIDITY, new UIDs): the records still name their files."""
        yield self.fill(generated_messages(8))
        first = yield self.mailbox.header_columns(self.uids)
        old = {self.mailbox._locs[uid].base: v for uid, v in first.items()}
        os.unlink(os.path.join(self.path, "txmail-index"))
        mailbox = yield self.reopened_mailbox()
        uids = [info.uid for info in (yield mailbox.list_messages())]
        metadata = yield mailbox.get_metadata(uids)
        found = yield mailbox.header_columns(uids)
        self.assertEqual(found, {uid: _expected(md) for uid, md in metadata.items()})
        self.assertEqual({mailbox._locs[uid].base: v for uid, v in found.items()}, old)


class ColumnsFileTests(SynchronousTestCase):
    """The file format alone (txmail.store._maildir_columns)."""

    def setUp(self) -> None:
        self.path = self.mktemp()
        os.mkdir(self.path)

    def test_blocks_bounded(self) -> None:
        """Records are written in blocks of bounded size; all are read back, the later record winning."""
        self.patch(columns, "BLOCK_TEXT", 100)
        items = [(f"b{i}", ("subject", " " + "x" * (i * 10))) for i in range(30)]
        self.assertTrue(columns.append_columns(self.path, HEADER_COLUMNS, items))
        self.assertTrue(columns.append_columns(self.path, HEADER_COLUMNS, [("b3", ("date", " now"))]))
        with open(os.path.join(self.path, columns.COLUMNS), "rb") as f:
            self.assertGreater(f.read().count(b"TXC1"), 10)
        found, records, damaged = columns.read_columns(self.path, HEADER_COLUMNS)
        self.assertEqual((records, damaged), (31, False))
        self.assertEqual(found["b29"], items[29][1])
        self.assertEqual(found["b3"], ("date", " now"))

    def test_oversized_length_is_damage(self) -> None:
        """A block claiming more than MAX_BLOCK octets is damage; the records before it are kept."""
        columns.append_columns(self.path, HEADER_COLUMNS, [("a", ())])
        with open(os.path.join(self.path, columns.COLUMNS), "ab") as f:
            f.write(b"TXC1" + (columns.MAX_BLOCK + 1).to_bytes(4, "little") + b"\0\0\0\0")
        self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS), ({"a": ()}, 1, True))

    def test_wrong_shapes_are_damage(self) -> None:
        """A block whose CRC holds but whose records are not (base, pairs of strings) is damage."""
        import marshal
        import struct
        import zlib

        good = (("a", ("subject", " x")), ("b", ()))
        columns.append_columns(self.path, HEADER_COLUMNS, list(good))
        for bases, values in (
            (("c",), (("subject",),)),  # an odd number of strings
            ((3,), (("subject", " y"),)),  # a base that is not a string
            (("c",), (["subject", " y"],)),  # a record that is not a tuple
            (("c", "d"), (("subject", " y"), ("a", "b", "c"))),
        ):
            payload = marshal.dumps((HEADER_COLUMNS, bases, values), 4)
            block = struct.pack("<4sII", b"TXC1", len(payload), zlib.crc32(payload)) + payload
            path = os.path.join(self.path, columns.COLUMNS)
            with open(path, "rb") as f:
                whole = f.read()
            with open(path, "ab") as f:
                f.write(block)
            self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS), (dict(good), 2, True), values)
            with open(path, "wb") as f:
                f.write(whole)
        self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS), (dict(good), 2, False))

    def test_rewrite(self) -> None:
        """A rewrite leaves the records given, nothing else, and no temporary file."""
        columns.append_columns(self.path, HEADER_COLUMNS, [("a", ()), ("b", ())])
        self.assertTrue(columns.rewrite_columns(self.path, HEADER_COLUMNS, [("b", ("cc", " x"))]))
        self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS), ({"b": ("cc", " x")}, 1, False))
        self.assertEqual(os.listdir(self.path), [columns.COLUMNS])
        self.assertTrue(columns.rewrite_columns(self.path, HEADER_COLUMNS, []))
        self.assertEqual(columns.read_columns(self.path, HEADER_COLUMNS), ({}, 0, False))

    def test_unwritable(self) -> None:
        """A folder that cannot be written: the appends and rewrites say so, nothing raises."""
        missing = os.path.join(self.path, "gone")
        self.assertFalse(columns.append_columns(missing, HEADER_COLUMNS, [("a", ())]))
        self.assertIsNone(columns.append_columns_at(missing, HEADER_COLUMNS, [("a", ())]))
        self.assertFalse(columns.rewrite_columns(missing, HEADER_COLUMNS, [("a", ())]))
        self.assertEqual(columns.read_columns(missing, HEADER_COLUMNS), ({}, 0, False))

    def items(self, start: int, stop: int) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"b{i}", ("subject", f" s{i}\r\n", "from", f" f{i}@x.test\r\n")) for i in range(start, stop)]

    def assert_as_read(self, read: Any) -> None:
        """*read* is what reading the whole file gives (and what reading since it adds nothing to)."""
        whole = columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        self.assertEqual(
            (read.names, read.file, read.size, read.found, read.count, read.damaged),
            (whole.names, whole.file, whole.size, whole.found, whole.count, whole.damaged),
        )
        self.assertIs(columns.read_columns_since(self.path, HEADER_COLUMNS, read), read)

    def test_appended_where(self) -> None:
        """append_columns_at tells the file and the octets its blocks took, and the records."""
        self.patch(columns, "BLOCK_TEXT", 100)
        self.assertIsNone(columns.append_columns_at(self.path, HEADER_COLUMNS, []))
        first = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(0, 20))
        assert first is not None
        size = os.path.getsize(os.path.join(self.path, columns.COLUMNS))
        self.assertEqual((first.start, first.end, first.names), (0, size, HEADER_COLUMNS))
        self.assertEqual(
            [pair for bases, values in first.blocks for pair in zip(bases, values, strict=True)],
            self.items(0, 20),
        )
        self.assertEqual((len(first.blocks), first.count), (5, 20))  # BLOCK_TEXT: several blocks
        second = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(20, 21))
        assert second is not None
        self.assertEqual((second.start, second.file), (size, first.file))
        self.assertEqual(second.end, os.path.getsize(os.path.join(self.path, columns.COLUMNS)))
        self.assertEqual(first.file, columns.read_columns_since(self.path, HEADER_COLUMNS, None).file)

    def test_extend_read(self) -> None:
        """Blocks appended after a read, in any order: what reading the file again gives."""
        self.patch(columns, "BLOCK_TEXT", 100)
        one = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(0, 5))
        assert one is not None
        read = columns.extend_read(None, HEADER_COLUMNS, [one])  # the file begun by it
        self.assert_as_read(read)
        later = [
            columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(i, i + 3)) for i in (5, 8, 11)
        ]
        self.assertNotIn(None, later)
        extended = columns.extend_read(read, HEADER_COLUMNS, [later[2], later[0], later[1]])  # type: ignore[list-item]
        self.assert_as_read(extended)
        assert extended is not None and read is not None
        self.assertEqual(len(read.found), 5)  # the read extended is left as it was
        # Blocks read already are skipped; nothing new: the read itself.
        self.assertIs(columns.extend_read(extended, HEADER_COLUMNS, [one, *later]), extended)  # type: ignore[list-item]
        # After a read that found no file, the block that makes it starts the chain.
        os.unlink(os.path.join(self.path, columns.COLUMNS))
        nothing = columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        made = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(0, 2))
        assert made is not None
        self.assert_as_read(columns.extend_read(nothing, HEADER_COLUMNS, [made]))

    def test_extend_read_left_alone(self) -> None:
        """
        A block after another writer's, one of another file, of other
        names, or after a damaged read is not added: the file is read
        next time, and gives every record.
        """
        columns.append_columns(self.path, HEADER_COLUMNS, self.items(0, 2))
        read = columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        # Without a read, a block that does not begin the file: nothing known.
        other = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(2, 3))
        assert other is not None
        self.assertIsNone(columns.extend_read(None, HEADER_COLUMNS, [other]))
        # A gap: another writer's block between the read and ours.
        mine = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(3, 4))
        assert mine is not None
        self.assertIs(columns.extend_read(read, HEADER_COLUMNS, [mine]), read)
        # Up to the gap only.
        before = columns.extend_read(read, HEADER_COLUMNS, [mine, other])
        self.assert_as_read(before)
        # Other field names: not these records.
        foreign = columns.append_columns_at(self.path, ("subject",), [("b9", ("subject", " x"))])
        assert foreign is not None and before is not None
        self.assertIs(columns.extend_read(before, HEADER_COLUMNS, [foreign]), before)
        self.assertEqual(columns.read_columns_since(self.path, HEADER_COLUMNS, before).found, before.found)
        # The file rewritten: a block of the old file, or of the new one after a read of the old.
        columns.rewrite_columns(self.path, HEADER_COLUMNS, self.items(0, 1))
        self.assertIs(columns.extend_read(before, HEADER_COLUMNS, [mine]), before)
        new = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(5, 6))
        assert new is not None
        self.assertIs(columns.extend_read(before, HEADER_COLUMNS, [new]), before)
        self.assertEqual(
            sorted(columns.read_columns_since(self.path, HEADER_COLUMNS, before).found), ["b0", "b5"]
        )
        # A damaged read.
        with open(os.path.join(self.path, columns.COLUMNS), "ab") as f:
            f.write(b"garbage")
        damaged = columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        self.assertTrue(damaged.damaged)
        late = columns.append_columns_at(self.path, HEADER_COLUMNS, self.items(7, 8))
        assert late is not None
        self.assertIs(columns.extend_read(damaged, HEADER_COLUMNS, [late]), damaged)


class MaildirThreadedColumnsTests(MaildirColumnsTests):
    """The same, with the file work in real threads."""

    def make_provider(self) -> Any:
        self.root = self.mktemp()
        return MaildirProvider(
            self.root, hostname="test.host", run_blocking=deferToThread, clock=task.Clock(), watch="poll"
        )

    def reopen(self) -> Any:
        return MaildirProvider(
            self.root, hostname="test.host", run_blocking=deferToThread, clock=task.Clock(), watch="poll"
        )
