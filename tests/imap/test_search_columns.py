"""
SEARCH on the flat header columns (:func:`txmail.imap.columns.column_predicate`):
the compiled predicate answers as :func:`txmail.imap.search.matches` does
with each message's parsed metadata, on generated and hostile messages
(RFC 2047 encoded-words, folded, repeated and missing fields, non-ASCII,
addresses the envelope reads differently from the field's text); and the
Maildir store's columns file read again only for what was appended.
"""

from __future__ import annotations

import os
import random
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_commands import command
from tests.store.test_columns import generated_messages
from txmail import mime
from txmail.imap import columns
from txmail.imap.search import SearchContext, matches
from txmail.interfaces import HEADER_COLUMNS
from txmail.model import SEEN, MessageInfo
from txmail.store import _maildir_columns

__all__: list[str] = []

#: Messages the generated ones lack: charsets, octets, address forms, name-like values.
HOSTILE = [
    b'Subject: =?utf-8?b?U3RyYcOfZQ==?= plans\r\nFrom: "Doe, John" <john.doe@example.com>\r\n\r\n',
    "Subject: Stra\u00dfe \u00e9t\u00e9\r\nFrom: Kelvin \u212a <k@x.test>\r\n\r\n".encode(),
    b"Subject: caf\xe9 latin-1\r\nFrom: caf\xe9 <cafe@x.test>\r\n\r\n",
    b"Subject:\r\nFrom: john . doe @ example . org\r\nTo: <@route.test:user@host.test>\r\n\r\n",
    b"Subject:   spaced  \t\r\nTo: a@b.test, =?utf-8?q?Z=C3=BC?= <zu@x.test>\r\n\r\n",
    b"Subject: =?unknown-8bit?q?abc?= =?utf-8?q?bad=FF?=\r\nFrom: ZEBRA@Example.ORG\r\n\r\n",
    b"Subject: folded\r\n  over =?utf-8?q?two?=\r\n lines\r\nFrom: Long Name\r\n <long@x.test>\r\n\r\n",
    b"Subject: subject\r\nCc: subject <subject@x.test>\r\nCc: second <cc2@x.test>\r\n\r\n",
    b'From: "quoted \\"q\\" name" <"odd local"@x.test>\r\nBcc: (only a comment)\r\n\r\n',
    b"From: user@x.test (Zebra Person)\r\nTo: group: ;\r\nDate: Wed, 3 Jan 2024 08:00:00 +0000\r\n\r\n",
    b"From: =?utf-8?q?=3Cfake=40x=2Etest=3E?= <real@y.test>\r\nSubject: =?utf-8?q?a?= =?utf-8?q?b?=\r\n\r\n",
    b"FROM : spaced@x.test\r\nSubject : spaced name\r\n\r\n",
]

#: Strings searched for: words of the messages, address parts, case and charset variants.
STRINGS = [
    "",
    " ",
    "@",
    "zebra",
    "ZEBRA",
    "plans",
    "x.test",
    "user@example.org",
    "user@host.test",
    "carol@x",
    "andr\u00e9",
    "STRASSE",
    "stra\u00dfe",
    "\u00c9T\u00c9",
    "k@x",
    "kelvin k",
    "john.doe@example",
    "odd local@x",
    "fake@x.test",
    "real@y",
    "re: [team]",
    "fwd)",
    "=?",
    "caf\u00e9",
    "over two",
    "ab",
    "subject",
    "second",
    "spaced",
    "\ufffd",
]


def _key(line: str) -> Any:
    cmd = command(b"a1 SEARCH CHARSET UTF-8 " + line.encode() + b"\r\n")
    return cmd.args.key  # type: ignore[union-attr]


def _lines() -> list[str]:
    lines = []
    for s in STRINGS:
        quoted = f'"{s}"'
        lines += [f"{k} {quoted}" for k in ("SUBJECT", "FROM", "TO", "CC", "BCC")]
        lines += [f"HEADER {n} {quoted}" for n in ("Subject", "FROM", "to", "Message-ID", "references")]
    lines += [f"{k} 2-Jan-2024" for k in ("SENTBEFORE", "SENTON", "SENTSINCE")]
    lines += [
        "ALL",
        "NOT SUBJECT zebra",
        "OR SUBJECT zebra FROM zebra",
        "UNSEEN SUBJECT lunch",
        "SEEN NOT FROM x.test",
        'HEADER subject ""',
        'HEADER In-Reply-To ""',
        "OR HEADER date jan NOT SENTON 3-Jan-2024",
        "UID 2:40 SUBJECT e",
        "1:20 OR TO zebra CC zebra",
    ]
    return lines


def _messages() -> list[tuple[int, MessageInfo, Any, tuple[str, ...]]]:
    out = []
    for uid, message in enumerate(generated_messages(240, seed=11) + HOSTILE, 1):
        md = mime.parse_metadata(message)
        flags = frozenset({SEEN}) if uid % 3 == 0 else frozenset()
        info = MessageInfo(uid=uid, flags=flags, internal_date=1_700_000_000, size=len(message), modseq=1)
        out.append((uid, info, md, mime.header_columns(md.headers, HEADER_COLUMNS)))
    return out


class PredicateTests(SynchronousTestCase):
    """The predicate on the column tuples answers as ``matches`` on the metadata."""

    def setUp(self) -> None:
        self.messages = _messages()
        self.ctx = SearchContext(max_seq=len(self.messages), max_uid=len(self.messages))
        self.values_only = 0

    def answers(self, line: str) -> tuple[list[int], list[int]]:
        key = _key(line)
        self.assertTrue(columns.search_uses_columns(key), line)
        test = columns.column_predicate(key, self.ctx)
        fast = [uid for uid, info, _, values in self.messages if test(uid, info, values)]
        general = [uid for uid, info, md, _ in self.messages if matches(key, self.ctx, uid, info, md)]
        on_values = columns.values_predicate(key)
        if on_values is not None:
            self.values_only += 1
            self.assertEqual([uid for uid, _, _, values in self.messages if on_values(values)], fast, line)
        return fast, general

    def test_values_predicate(self) -> None:
        """
        A key of the columns alone has a test of the tuple alone (the same
        answers: checked in answers()); one reading flags, numbers or UIDs
        has none.
        """
        self.values_only = 0
        for line in _lines():
            self.answers(line)
        self.assertGreater(self.values_only, 50)
        for line in ("UNSEEN SUBJECT lunch", "UID 2:40 SUBJECT e", "OR SUBJECT a SEEN", "NOT 1:3"):
            self.assertIsNone(columns.values_predicate(_key(line)), line)
        for line in ("SUBJECT a", 'OR FROM a NOT HEADER Cc ""', "ALL SENTON 3-Jan-2024"):
            self.assertIsNotNone(columns.values_predicate(_key(line)), line)
        self.assertRaises(ValueError, columns.values_predicate, _key("TEXT x"))

    def test_same_answers(self) -> None:
        """Every key, every string: the same messages as the metadata path."""
        found_some = 0
        for line in _lines():
            fast, general = self.answers(line)
            self.assertEqual(fast, general, line)
            found_some += 0 < len(general) < len(self.messages)
        # The comparison means something: most searches find some messages, not all.
        self.assertGreater(found_some, 100)

    def test_random_trees(self) -> None:
        """Random AND/OR/NOT trees of column keys: the same answers."""
        rng = random.Random(3)
        leaves = [line for line in _lines() if " " in line and not line.startswith(("OR", "NOT", "1:"))]
        for _ in range(150):
            a, b, c = (rng.choice(leaves) for _ in range(3))
            line = rng.choice([f"OR {a} NOT {b}", f"{a} {b}", f"NOT OR {a} {b} {c}", f"OR OR {a} {b} {c}"])
            fast, general = self.answers(line)
            self.assertEqual(fast, general, line)

    def test_expected_messages(self) -> None:
        """Answers known by hand: decoding, case folding, envelope addresses, missing fields."""
        hostile = len(self.messages) - len(HOSTILE) + 1  # the UID of HOSTILE[0]

        def found(line: str) -> list[int]:
            fast, general = self.answers(line)
            self.assertEqual(fast, general, line)
            return [uid - hostile for uid in fast if uid >= hostile]

        self.assertEqual(found('SUBJECT "STRASSE"'), [0, 1])  # encoded-word; raw UTF-8; ß casefolds to ss
        self.assertEqual(found('SUBJECT "caf\u00e9"'), [2])  # latin-1 octets
        self.assertEqual(found('SUBJECT "over two lines"'), [6])  # unfolded, then decoded
        self.assertEqual(
            found('SUBJECT "ab"'), [5, 10]
        )  # an unknown charset read as latin-1; adjacent words joined
        self.assertEqual(found('FROM "kelvin k"'), [1])  # U+212A casefolds to k
        self.assertEqual(found('FROM "john.doe@example.org"'), [3])  # the envelope's, not the text
        self.assertEqual(found('FROM "fake@x.test"'), [10])  # the decoded display name
        self.assertEqual(found('FROM "real@y.test"'), [10])
        self.assertEqual(found('TO "user@host.test"'), [3])  # route dropped
        self.assertEqual(found('CC "cc2"'), [7])  # the second occurrence's text
        self.assertEqual(found('HEADER Subject "subject"'), [7])
        self.assertIn(7, found('HEADER Cc ""'))
        self.assertNotIn(7, found('HEADER Bcc ""'))  # missing: not even the empty string
        self.assertEqual(found('FROM "spaced@x"'), [11])  # "FROM :" is the From field

    def test_name_in_value_place(self) -> None:
        """A value spelled like a field name is not that field (names are at even places)."""
        ctx, info = self.ctx, self.messages[0][1]
        values = ("from", "subject", "to", " subject\r\n")
        self.assertFalse(columns.column_predicate(_key('SUBJECT ""'), ctx)(1, info, values))
        self.assertTrue(columns.column_predicate(_key("TO subject"), ctx)(1, info, values))
        self.assertTrue(columns.column_predicate(_key("FROM subject"), ctx)(1, info, values))
        repeated = ("subject", " one\r\n", "to", "subject", "subject", " two\r\n")
        test = columns.column_predicate(_key("SUBJECT two"), ctx)
        self.assertTrue(test(1, info, repeated))
        self.assertFalse(columns.column_predicate(_key("SUBJECT three"), ctx)(1, info, repeated))

    def test_other_keys_refused(self) -> None:
        """A key not answered by the columns is refused, not guessed."""
        for line in ("BODY x", "TEXT x", "HEADER X-Spam x", "THREADID T1"):
            self.assertRaises(ValueError, columns.column_predicate, _key(line), self.ctx)

    def test_field_texts(self) -> None:
        """Every occurrence, decoded and case-folded, in order."""
        values = ("subject", " One\r\n", "from", " a@x\r\n", "subject", " =?utf-8?q?Tw=C3=B6?=\r\n")
        self.assertEqual(columns.field_texts(values, "subject"), ["one", "tw\u00f6"])
        self.assertEqual(columns.field_texts(values, "from"), ["a@x"])
        self.assertEqual(columns.field_texts(values, "to"), [])


class ReadSinceTests(SynchronousTestCase):
    """The Maildir columns file: what was read is kept, and only appended blocks are read."""

    def setUp(self) -> None:
        self.path = tempfile.mkdtemp()
        self.addCleanup(_rmtree, self.path)

    def items(self, start: int, count: int) -> list[tuple[str, tuple[str, ...]]]:
        return [(f"b{i}", ("subject", f" s{i}\r\n")) for i in range(start, start + count)]

    def test_unchanged_file_kept(self) -> None:
        _maildir_columns.append_columns(self.path, HEADER_COLUMNS, self.items(0, 3))
        first = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        self.assertEqual((len(first.found), first.count, first.damaged), (3, 3, False))
        self.assertIs(_maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, first), first)

    def test_appended_blocks_read(self) -> None:
        """After appends, the records equal those of a whole read; the earlier result is unchanged."""
        read = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        self.assertEqual((read.found, read.count, read.damaged), ({}, 0, False))
        for start in (0, 3, 5):
            _maildir_columns.append_columns(self.path, HEADER_COLUMNS, self.items(start, start + 1))
            before = dict(read.found)
            previous, read = read, _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, read)
            self.assertEqual(previous.found, before)
            self.assertEqual(
                (read.found, read.count, read.damaged),
                _maildir_columns.read_columns(self.path, HEADER_COLUMNS),
            )

    def test_rewritten_file_read_whole(self) -> None:
        """A rewrite (another file renamed over it) is read whole, even when longer."""
        _maildir_columns.append_columns(self.path, HEADER_COLUMNS, self.items(0, 2))
        read = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        _maildir_columns.rewrite_columns(self.path, HEADER_COLUMNS, self.items(10, 5))
        again = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, read)
        self.assertEqual(sorted(again.found), [f"b{i}" for i in range(10, 15)])
        self.assertEqual(again.count, 5)

    def test_damage_read_again(self) -> None:
        """Damage found is reported, and the next read starts over."""
        _maildir_columns.append_columns(self.path, HEADER_COLUMNS, self.items(0, 2))
        with open(os.path.join(self.path, _maildir_columns.COLUMNS), "ab") as f:
            f.write(b"TXC1junk")
        read = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, None)
        self.assertEqual((len(read.found), read.damaged), (2, True))
        again = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, read)
        self.assertIsNot(again, read)
        self.assertEqual((len(again.found), again.damaged), (2, True))

    def test_other_names_read_whole(self) -> None:
        _maildir_columns.append_columns(self.path, HEADER_COLUMNS, self.items(0, 2))
        read = _maildir_columns.read_columns_since(self.path, ("subject",), None)
        self.assertEqual(read.found, {})
        again = _maildir_columns.read_columns_since(self.path, HEADER_COLUMNS, read)
        self.assertEqual(len(again.found), 2)

    def test_missing_file(self) -> None:
        read = _maildir_columns.read_columns_since(os.path.join(self.path, "gone"), HEADER_COLUMNS, None)
        self.assertEqual((read.found, read.count, read.damaged), ({}, 0, False))


def _rmtree(path: str) -> None:
    for root, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(root, name))
        for name in dirs:
            os.rmdir(os.path.join(root, name))
    os.rmdir(path)
