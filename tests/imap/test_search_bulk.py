"""
SEARCH in bulk on the header columns (:func:`txmail.imap.columns.bulk_search`):
one text a field, searched with :meth:`str.find`, answers as the test of each
message's column tuple (:func:`txmail.imap.columns.values_predicate`) and as
:func:`txmail.imap.search.matches` on its metadata: on generated and hostile
messages (encoded-words, folding, repeated and missing fields, non-ASCII,
NUL and other odd characters, needles with them), with the index kept,
extended and made again as messages come and go; and through the server
(Maildir), against the message-by-message path and the metadata path.
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.imap import test_columns, test_search_columns
from tests.imap.test_server import USER, ServerTestCase
from tests.store.test_columns import generated_messages
from txmail import mime
from txmail.imap import columns
from txmail.imap.commands import selected, sort
from txmail.imap.responses import Done, SearchData
from txmail.imap.search import SearchContext, matches
from txmail.imap.view import SelectedView
from txmail.interfaces import HEADER_COLUMNS
from txmail.store.maildir import MaildirProvider

__all__: list[str] = []

_key = test_search_columns._key

#: Column tuples no parsed message gives, built by hand: NUL and a separator-like
#: octet in values, a name in a value's place, repeated fields, blank and empty values.
ODD_VALUES: list[tuple[str, ...]] = [
    ("subject", " a\x00b zebra\r\n", "from", " nul\x00@x.test\r\n"),
    ("subject", "\x00", "to", " x@y.test"),
    ("from", "subject", "to", " subject\r\n"),
    ("subject", " one\r\n", "to", "subject", "subject", " two\r\n", "subject", " =?utf-8?q?Dr=C3=A9i?=\r\n"),
    ("subject", "", "cc", "   \t\r\n", "cc", " (a.*b) [x] \\ $\r\n"),
    (),
    ("subject", " .*+?()[]{}|^$\\\r\n", "bcc", " Re: =?utf-8?b?w58=?= <ss@x.test>\r\n"),
    ("subject", " Stra\u00dfe\r\n", "from", " \u212a <k@x.test>\r\n", "from", " second@x.test\r\n"),
]

#: Needles with odd characters, NUL among them (searched message by message).
ODD_NEEDLES = [
    "\x00",
    "a\x00b",
    "b zebra",
    ".*",
    "(a.*b)",
    "\\",
    "$",
    " ",
    "",
    "ss",
    "stra\u00dfe",
    "dr\u00e9i",
    "k@x",
]


def _values() -> tuple[list[Any], list[tuple[str, ...]]]:
    messages = test_search_columns._messages()
    return messages, [values for _, _, _, values in messages]


class BulkTests(SynchronousTestCase):
    """bulk_search answers as the test of each tuple and as the metadata path."""

    def setUp(self) -> None:
        self.patch(columns, "_INDEXES", {})
        self.messages, self.values = _values()
        self.sctx = SearchContext(max_seq=len(self.values), max_uid=len(self.values))

    def check(self, line: str, values: list[tuple[str, ...]] | None = None) -> list[int] | None:
        """The bulk answer of *line*, checked against the test of each tuple (and the metadata)."""
        values = self.values if values is None else values
        key = _key(line)
        on_values = columns.values_predicate(key)
        if on_values is None:
            return None
        each = [i for i, v in enumerate(values) if on_values(v)]
        found = columns.bulk_search(key, values)
        if found is not None:
            self.assertEqual(found, each, line)
        if values is self.values:
            general = [
                i
                for i, (uid, info, md, _) in enumerate(self.messages)
                if matches(key, self.sctx, uid, info, md)
            ]
            self.assertEqual(each, general, line)
        return found

    def test_same_answers(self) -> None:
        """Every column key and string: the answers of each tuple's test, and of the metadata."""
        answered = found_some = 0
        for line in test_search_columns._lines():
            found = self.check(line)
            if found is not None:
                answered += 1
                found_some += 0 < len(found) < len(self.values)
        self.assertGreater(answered, 250)
        self.assertGreater(found_some, 100)

    def test_random_trees(self) -> None:
        """AND/OR/NOT of column keys: the same sets."""
        rng = random.Random(5)
        leaves = [
            line
            for line in test_search_columns._lines()
            if " " in line and not line.startswith(("OR", "NOT", "1:", "UID", "UNSEEN", "SEEN"))
        ]
        answered = 0
        for _ in range(200):
            a, b, c = (rng.choice(leaves) for _ in range(3))
            line = rng.choice(
                [f"OR {a} NOT {b}", f"{a} {b}", f"NOT OR {a} {b} {c}", f"OR OR {a} {b} {c}", f"{a} {b} {c}"]
            )
            answered += self.check(line) is not None
        self.assertGreater(answered, 100)

    def test_not_in_bulk(self) -> None:
        """SENTON and friends, and NUL in a needle, are left to the test of each tuple."""
        for line in ("SENTON 3-Jan-2024", "OR SUBJECT a SENTSINCE 1-Jan-2024", "NOT SENTBEFORE 1-Jan-2020"):
            self.assertIsNone(columns.bulk_search(_key(line), self.values), line)
        self.assertEqual(columns.bulk_search(_key("ALL"), self.values), list(range(len(self.values))))
        self.assertRaises(ValueError, columns.bulk_search, _key("TEXT x"), self.values)

    def test_odd_values_and_needles(self) -> None:
        """Hand-made tuples and needles with NUL, regex and blank characters: the same answers."""
        values = ODD_VALUES * 3
        some = 0
        for needle in ODD_NEEDLES:
            key = columns.search._str(needle)
            for field in ("SUBJECT", "FROM", "TO", "CC", "BCC", "HEADER Subject", "HEADER cc"):
                line = f"{field} {needle!r}"
                parsed = _key(f'{field} "x"')
                # The needle set directly (the parser takes no NUL in a quoted string).
                parsed = _with_needle(parsed, key)
                on_values = columns.values_predicate(parsed)
                assert on_values is not None
                each = [i for i, v in enumerate(values) if on_values(v)]
                found = columns.bulk_search(parsed, values)
                if "\x00" in needle:
                    self.assertIsNone(found, line)
                else:
                    self.assertEqual(found, each, line)
                    some += 0 < len(each) < len(values)
        self.assertGreater(some, 15)
        # A NUL in a value neither matches across it nor hides what follows it.
        self.assertEqual(columns.bulk_search(_key('SUBJECT "b zebra"'), ODD_VALUES), [0])
        self.assertEqual(columns.bulk_search(_key("SUBJECT two"), ODD_VALUES), [3])  # a repeated field
        self.assertEqual(columns.bulk_search(_key('SUBJECT ""'), ODD_VALUES), [0, 1, 3, 4, 6, 7])
        self.assertEqual(columns.bulk_search(_key("FROM second@x"), ODD_VALUES), [7])  # its text
        self.assertEqual(columns.bulk_search(_key('BCC "ss@x"'), ODD_VALUES), [6])

    def test_texts(self) -> None:
        """The texts indexed are those of _text, value by value, whatever the mix."""
        odd = [
            " Plain ASCII\r\n",
            "a\n\r\nb",
            "x\n\r",
            "\nabc",
            " folded\r\n over\r\n",
            "\r\n",
            "",
            "   \t",
            " caf\u00e9 \u212a\r\n",
            " =?utf-8?q?Dr=C3=A9i?=\r\n",
            " = ? not a word\r\n",
            " ends =\r\n",
            "?= starts\r\n",
            " Stra\u00dfe\r\n",
            "\u0130stanbul",
        ]
        rng = random.Random(9)
        raws = [v for _, _, _, values in self.messages for v in values[1::2]]
        samples = [odd, [*odd, " a\x00b\r\n"]]
        samples += [[rng.choice(odd + raws) for _ in range(rng.randrange(0, 40))] for _ in range(30)]
        for sample in samples:
            built = columns.FieldIndex.build("subject", [("subject", raw) for raw in sample])
            self.assertEqual(_occurrences(built.texts), [(i, columns._text(r)) for i, r in enumerate(sample)])

    def test_every_field(self) -> None:
        """The index of each column field holds the texts field_texts reads, tuple by tuple (odd tuples too)."""
        values = [
            *self.values,
            *ODD_VALUES * 3,
            (),
            ("x", "subject", "subject", " s\r\n", "subject", " t\r\n"),
        ]
        for name in HEADER_COLUMNS:
            expected = [(i, t) for i, v in enumerate(values) for t in columns.field_texts(v, name)]
            self.assertEqual(
                _occurrences(columns.FieldIndex.build(name, values).texts), sorted(expected), name
            )
        some = [(i, t) for i, v in enumerate(values) for t in columns.field_texts(v, "subject")]
        self.assertIn((len(values) - 1, "s"), some)
        self.assertIn((len(values) - 1, "t"), some)

    def test_index_kept_extended_rebuilt(self) -> None:
        """The same tuples: the same index; more after them: extended as if made afresh; others: made again."""
        values = self.values[:200]
        first = columns.field_index("from", values)
        first.addresses()
        self.assertIs(columns.field_index("from", list(values)), first)
        longer = self.values[:230]
        extended = columns.field_index("from", longer)
        self.assertIsNot(extended, first)
        fresh = columns.FieldIndex.build("from", longer)
        for a, b in ((extended.texts, fresh.texts), (extended.addresses(), fresh.addresses())):
            self.assertEqual(_occurrences(a), _occurrences(b))
        self.assertIn(
            (3, columns._text(" =?utf-8?q?Dr=C3=A9i?=\r\n")),
            _occurrences(columns.FieldIndex.build("subject", ODD_VALUES).texts),
        )
        self.assertGreater(len(extended.addresses().owners), len(first.addresses().owners))
        fewer = self.values[:50] + self.values[51:230]  # one expunged
        rebuilt = columns.field_index("from", fewer)
        self.assertIs(rebuilt.values, fewer)
        for line in ("FROM zebra", "FROM x.test", "FROM user@example.org", 'FROM "fake@x.test"'):
            for vals in (longer, fewer, values, self.values):
                self.check(line, vals)

    def test_ordered_values(self) -> None:
        """The tuples in the view's order; None when a message has none."""
        a, b, c = ("subject", " a"), ("subject", " b"), ()
        self.assertEqual(columns.ordered_values({1: a, 2: b, 5: c}, [1, 2, 5]), [a, b, c])
        self.assertEqual(columns.ordered_values({5: c, 1: a, 2: b}, [1, 2, 5]), [a, b, c])
        from array import array

        self.assertEqual(columns.ordered_values({1: a, 2: b}, array("I", [1, 2])), [a, b])
        self.assertIsNone(columns.ordered_values({1: a, 2: b}, [1, 2, 5]))
        self.assertIsNone(columns.ordered_values({1: a, 2: b, 7: c}, [1, 2, 5]))


def _occurrences(joined: Any) -> list[tuple[int, str]]:
    """The (message, text) of each text of a columns._Joined, sorted; its layout checked."""
    start, out = 0, []
    for end, owner in zip(joined.nexts, joined.owners, strict=True):
        assert joined.text[end - 1] == "\x00", (joined.text, end)
        out.append((owner, joined.text[start : end - 1]))
        start = end
    assert start == len(joined.text)
    return sorted(out)


def _with_needle(key: Any, needle: str) -> Any:
    """*key* (a leaf, or HEADER) with its string replaced by *needle*."""
    import dataclasses

    args = (*key.args[:-1], needle)
    return dataclasses.replace(key, args=args)


#: Searches compared through the server (words of generated_messages; odd characters).
SEARCHES = [
    b"UID SEARCH SUBJECT zebra",
    b"SEARCH SUBJECT zebra",
    b'UID SEARCH CHARSET UTF-8 SUBJECT "caf\xc3\xa9"',
    b"UID SEARCH SUBJECT STRASSE",
    b'UID SEARCH SUBJECT ""',
    b'UID SEARCH SUBJECT "re: ["',
    b"UID SEARCH NOT SUBJECT lunch",
    b"SEARCH OR SUBJECT lunch FROM carol",
    b"UID SEARCH FROM user@example.org",
    b'UID SEARCH CHARSET UTF-8 TO "andr\xc3\xa9"',
    b"UID SEARCH CC b@y.test BCC quokka",
    b"UID SEARCH HEADER Message-ID m1",
    b'UID SEARCH HEADER References ""',
    b"UID SEARCH NOT OR HEADER subject plans TO team",
    b"UID SEARCH RETURN (MIN MAX COUNT) SUBJECT e",
    b"UID SEARCH SUBJECT e SENTSINCE 2-Jan-2024",
]


class _Compared(ServerTestCase):
    """SEARCH answered in bulk, message by message and from the metadata, compared."""

    def count_bulk(self) -> None:
        self.patch(sort, "FACTS", sort.FactsCache())
        self.patch(columns, "_INDEXES", {})
        self.bulk_answers = 0
        original = columns.bulk_search

        def counted(key: Any, values: Any) -> Any:
            found = original(key, values)
            self.bulk_answers += found is not None
            return found

        self.patch(selected, "bulk_search", counted)

    def answers(self, proto: Any, transport: Any) -> list[bytes]:
        out = []
        for n, line in enumerate(SEARCHES):
            reply = self.send(proto, transport, b"b%d " % n + line + b"\r\n")
            self.assertTrue(reply.endswith(b" completed\r\n") and b"b%d OK" % n in reply, reply)
            out.append(reply)
        return out

    def compare(self, proto: Any, transport: Any) -> list[bytes]:
        """The answers in bulk, then each message tested, then from the metadata: all equal."""
        before = self.bulk_answers
        bulk = self.answers(proto, transport)
        self.assertGreater(self.bulk_answers - before, len(SEARCHES) // 2)
        with self.patch_path(selected, "bulk_search", lambda key, values: None):
            each = self.answers(proto, transport)
        with self.patch_path(selected, "has_columns", test_columns._hidden):
            metadata = self.answers(proto, transport)
        for line, a, b, c in zip(SEARCHES, bulk, each, metadata, strict=True):
            self.assertEqual(a, b, line)
            self.assertEqual(a, c, line)
        self.assertTrue(any(len(r.split(b"\r\n")[0].split()) > 3 for r in bulk))
        return bulk

    def patch_path(self, obj: Any, name: str, value: Any) -> Any:
        import contextlib

        @contextlib.contextmanager
        def patched() -> Any:
            old = getattr(obj, name)
            setattr(obj, name, value)
            try:
                yield
            finally:
                setattr(obj, name, old)

        return patched()


class ServerTests(_Compared):
    """Through the server, a Maildir mailbox: the answers of the per-message and metadata paths."""

    def setUp(self) -> None:
        super().setUp()
        self.count_bulk()
        self.root = tempfile.mkdtemp()
        self.addCleanup(test_columns._rmtree, self.root)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]
        store = self.successResultOf(self.stores.store_for(USER))
        self.mailbox = self.successResultOf(store.get_mailbox("INBOX"))
        self.bodies = generated_messages(120, seed=23) + test_search_columns.HOSTILE
        for body in self.bodies[:90]:
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))

    def test_same_answers(self) -> None:
        """Generated and hostile messages: the bulk answers are the per-message and metadata paths'."""
        proto, transport = self.login()
        self.compare(proto, transport)

    def test_appended_and_expunged(self) -> None:
        """Messages appended, then expunged, between searches: the index follows, answers unchanged."""
        proto, transport = self.login()
        self.compare(proto, transport)
        for body in self.bodies[90:]:
            self.successResultOf(self.mailbox.append(body, (), 1_600_000_000))
        self.send(proto, transport, b"n1 NOOP\r\n")
        self.compare(proto, transport)
        kept = columns._INDEXES["subject"]
        self.assertEqual(len(kept.values), len(self.bodies))
        self.send(proto, transport, b"e1 STORE 2,7:9,40 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertIn(b"e2 OK", self.send(proto, transport, b"e2 EXPUNGE\r\n"))
        after = self.compare(proto, transport)
        self.assertEqual(len(columns._INDEXES["subject"].values), len(self.bodies) - 5)
        self.assertNotEqual(after[0], b"")

    def test_expunged_by_another_session(self) -> None:
        """A message gone from the store but still in the view: skipped, as on the other paths."""
        proto, transport = self.login()
        hits = self.send(proto, transport, b"x1 UID SEARCH SUBJECT zebra\r\n").split(b"\r\n")[0].split()[2:]
        self.assertGreater(len(hits), 1)
        gone = int(hits[0])
        self._expunge(gone)
        # The view still holds it (told at the next command that may tell expunges).
        bulk = self.send(proto, transport, b"x2 UID SEARCH SUBJECT zebra\r\n")
        self.assertNotIn(b" %d " % gone, bulk.split(b"\r\n")[0] + b" ")
        with self.patch_path(selected, "bulk_search", lambda key, values: None):
            each = self.send(proto, transport, b"x2 UID SEARCH SUBJECT zebra\r\n")
        self.assertEqual(bulk, each)

    def _expunge(self, uid: int) -> None:
        from txmail.model import DELETED, FlagMode

        self.successResultOf(self.mailbox.set_flags([uid], {DELETED}, FlagMode.ADD))
        self.assertEqual(self.successResultOf(self.mailbox.expunge([uid])), [uid])

    def test_records_missing(self) -> None:
        """A columns file without some messages' records: they are made from the metadata; same answers."""
        import os

        proto, transport = self.login()
        self.compare(proto, transport)
        os.remove(os.path.join(self.mailbox.path, "txmail-columns"))
        self.mailbox._columns_read = None
        self.compare(proto, transport)


class FirstSyncTests(_Compared):
    """
    Files dropped into new/ by another program: the header FETCH of a
    client's first sync parses them (their columns written, and kept as
    written), the session ends, and a SEARCH on the next connection reads
    nothing of the columns file and answers as the other paths.
    """

    def setUp(self) -> None:
        super().setUp()
        self.count_bulk()
        self.root = tempfile.mkdtemp()
        self.addCleanup(test_columns._rmtree, self.root)
        first = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")
        store = self.successResultOf(first.store_for(USER))
        path = self.successResultOf(store.get_mailbox("INBOX")).path
        for i, body in enumerate(generated_messages(120, seed=23) + test_search_columns.HOSTILE):
            with open(os.path.join(path, "new", f"1700000000.M{i}P1.other"), "wb") as f:
                f.write(body)
        self.stores = MaildirProvider(self.root, hostname="test.host", clock=self.clock, watch="off")  # type: ignore[assignment]

    def test_search_after_first_sync(self) -> None:
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        from txmail.store import _maildir_columns

        proto, transport = self.login()
        out = self.send(
            proto,
            transport,
            b"f1 UID FETCH 1:* (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Subject Date)])\r\n",
        )
        self.assertTrue(out.endswith(b"f1 OK UID FETCH completed\r\n"), out[-200:])
        mailbox = proto.mailbox
        self.assertTrue(os.path.exists(os.path.join(mailbox.path, _maildir_columns.COLUMNS)))
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(mailbox._listeners)
        decoded: list[bytes] = []
        parse = _maildir_columns._parse
        self.patch(
            _maildir_columns, "_parse", lambda data, names: (decoded.append(data), parse(data, names))[1]
        )
        proto, transport = self.login()
        self.assertIs(proto.mailbox, mailbox)
        first = self.send(proto, transport, b"x1 " + SEARCHES[0] + b"\r\n")
        self.assertEqual([d for d in decoded if d], [])  # nothing of the file decoded
        self.assertEqual(self.bulk_answers, 1)
        self.assertEqual(first, self.compare(proto, transport)[0].replace(b"b0 ", b"x1 "))
        self.assertEqual([d for d in decoded if d], [])


class NoColumnsTests(SynchronousTestCase):
    """A message of the view without columns (gone from the store): each message tested, and it skipped."""

    def test_gone_message(self) -> None:
        self.patch(columns, "_INDEXES", {})
        ctx = test_columns.ColumnsContext()
        mailbox = ctx.mailbox = test_columns.ColumnsMailbox()
        ctx.session.view = SelectedView("INBOX", 7, mailbox.list_messages())
        original = mailbox.header_columns
        mailbox.header_columns = lambda uids: original([u for u in uids if u in mailbox.metadata])  # type: ignore[method-assign]
        del mailbox.metadata[2]  # expunged by another session: still in the view
        calls: list[Any] = []
        self.patch(selected, "bulk_search", lambda *args: calls.append(args))
        line = b"a1 UID SEARCH SUBJECT lunch\r\n"
        done = test_columns._run(selected.search(ctx, test_columns.command(line)))
        self.assertIsInstance(done, Done)
        self.assertEqual(calls, [])  # not in bulk
        self.assertEqual(ctx.emitted, [SearchData([1])])  # 1 and 2 match; 2 is gone

    def test_gone_from_the_listing(self) -> None:
        """Columns still given for a message the listing lacks (expunged meanwhile): found in bulk, skipped."""
        self.patch(columns, "_INDEXES", {})
        ctx = test_columns.ColumnsContext()
        mailbox = ctx.mailbox = test_columns.ColumnsMailbox()
        ctx.session.view = SelectedView("INBOX", 7, mailbox.list_messages())
        listing = mailbox.list_messages
        mailbox.list_messages = lambda uids=None: [i for i in listing(uids) if i.uid != 2]  # type: ignore[method-assign]
        calls: list[Any] = []
        original = selected.bulk_search
        self.patch(selected, "bulk_search", lambda *args: calls.append(args) or original(*args))
        done = test_columns._run(selected.search(ctx, test_columns.command(b"a1 SEARCH SUBJECT lunch\r\n")))
        self.assertIsInstance(done, Done)
        self.assertEqual(len(calls), 1)  # in bulk
        self.assertEqual(ctx.emitted, [SearchData([1])])


class HelperTests(SynchronousTestCase):
    """The helpers made faster for the search's every-message steps give the answers they gave."""

    def test_recent_count(self) -> None:
        """The view's \\Recent count, in C while its flags are unchanged, and after changes."""
        infos = test_columns.ColumnsMailbox().list_messages()
        view = SelectedView("INBOX", 7, infos, recent=[1, 2, 3])
        flags = view.flags
        self.assertEqual(flags.count_of({1, 2, 3, 9}), 3)
        self.assertEqual(view._recent_count(), 3)
        del flags[2]  # removed by this view (an expunge it was told of)
        flags[1] = frozenset({"\\Seen"})
        self.assertEqual(flags.count_of({1, 2, 3, 9}), sum(1 for u in (1, 2, 3, 9) if u in flags))
        self.assertEqual(flags.count_of({1, 2, 3, 9}), 2)

    def test_select_uids(self) -> None:
        """All the UIDs asked, as a list or an array: the keys; anything else: those present, ascending."""
        from array import array

        from txmail.store._base import select_uids

        present = {2: 0, 5: 0, 9: 0}
        self.assertEqual(select_uids([2, 5, 9], present), [2, 5, 9])
        self.assertEqual(select_uids(array("I", [2, 5, 9]), present), [2, 5, 9])
        self.assertEqual(select_uids([9, 5, 2], present), [2, 5, 9])
        self.assertEqual(select_uids([2, 5, 8], present), [2, 5])
        self.assertEqual(select_uids(array("I", [1, 2, 5]), present), [2, 5])
        self.assertEqual(select_uids([5, 5, 2], present), [2, 5])
        self.assertEqual(select_uids(range(1, 6), present), [2, 5])


class MaildirAnswerTests(SynchronousTestCase):
    """The Maildir store gives its last header_columns answer again only while nothing changed."""

    def test_answer_again(self) -> None:
        root = tempfile.mkdtemp()
        self.addCleanup(test_columns._rmtree, root)
        stores = MaildirProvider(root, hostname="test.host", watch="off")
        store = self.successResultOf(stores.store_for(USER))
        mailbox = self.successResultOf(store.get_mailbox("INBOX"))
        bodies = generated_messages(12, seed=4)
        uids = [self.successResultOf(mailbox.append(b, (), 1_600_000_000)) for b in bodies[:10]]
        made: list[int] = []
        records = mailbox._records

        def counted(*args: Any) -> Any:
            made.append(1)
            return records(*args)

        mailbox._records = counted  # type: ignore[method-assign]
        first = self.successResultOf(mailbox.header_columns(uids))
        self.assertEqual(len(made), 1)
        # What the first appended to the file is kept as written: the file is as kept.
        again = self.successResultOf(mailbox.header_columns(uids))
        self.assertEqual(len(made), 1)  # given again
        self.assertEqual(again, first)
        self.assertIsNot(again, first)
        again.clear()  # a copy: the caller may change it
        self.assertEqual(self.successResultOf(mailbox.header_columns(uids)), first)
        self.assertEqual(len(made), 1)
        # Fewer asked, a message added, one expunged, the file gone: answered afresh, rightly.
        self.assertEqual(
            self.successResultOf(mailbox.header_columns(uids[:4])), {u: first[u] for u in uids[:4]}
        )
        uids.append(self.successResultOf(mailbox.append(bodies[10], (), 1_600_000_000)))
        grown = self.successResultOf(mailbox.header_columns(uids))
        self.assertEqual(sorted(grown), uids)
        self.assertEqual({u: grown[u] for u in uids[:-1]}, first)
        expected = mime.header_columns(mime.parse_metadata(bodies[10]).headers, HEADER_COLUMNS)
        self.assertEqual(grown[uids[-1]], expected)
        from txmail.model import DELETED, FlagMode

        self.successResultOf(mailbox.set_flags([uids[3]], {DELETED}, FlagMode.ADD))
        self.successResultOf(mailbox.expunge([uids[3]]))
        self.assertEqual(
            self.successResultOf(mailbox.header_columns(uids)), {u: grown[u] for u in uids if u != uids[3]}
        )
        os.remove(os.path.join(mailbox.path, "txmail-columns"))
        self.assertEqual(
            self.successResultOf(mailbox.header_columns(uids)), {u: grown[u] for u in uids if u != uids[3]}
        )
