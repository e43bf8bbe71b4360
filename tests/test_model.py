"""Tests for the value helpers in txmail.model."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txmail.mime import parse_metadata
from txmail.model import (
    MessageSource,
    RecipientResult,
    as_source,
    match_mailbox_pattern,
    normalize_flags,
    normalize_mailbox_name,
)
from txmail.smtp.codes import Reply


class RecipientResultTests(SynchronousTestCase):
    def test_reply_typed(self) -> None:
        """The reply is a Reply; the text of earlier versions is parsed once, a malformed one is no reply."""
        reply = Reply(550, "5.1.1", "No such user here")
        self.assertIs(RecipientResult("a", ok=False, reply=reply).reply, reply)
        self.assertEqual(RecipientResult("a", ok=False, reply="550 5.1.1 No such user here").reply, reply)
        self.assertEqual(RecipientResult("a", ok=True, reply="250 OK").reply, Reply(250, "", "OK"))
        self.assertEqual(RecipientResult("a", ok=False, reply="550 4.1.1 x").reply, Reply(550, "", "x"))
        for text in ("", "no such user", "999 x", "550 5.1.1 a\n550 5.1.1 b"):
            self.assertIsNone(RecipientResult("a", ok=False, reply=text).reply, text)
        self.assertIsNone(RecipientResult("a", ok=True).reply)


class FlagTests(SynchronousTestCase):
    def test_system_flags_case_insensitive(self) -> None:
        """System flags in any case come out canonical; keywords keep their case."""
        self.assertEqual(
            normalize_flags(["\\seen", "\\DELETED", "$Forwarded", "Work"]),
            frozenset({"\\Seen", "\\Deleted", "$Forwarded", "Work"}),
        )

    def test_recent_and_unknown_system_flags_dropped(self) -> None:
        """\\Recent and unknown backslash flags are never stored."""
        self.assertEqual(normalize_flags(["\\Recent", "\\Bogus", "\\Answered"]), frozenset({"\\Answered"}))

    def test_bad_keywords_refused(self) -> None:
        """Keywords that are not IMAP atoms are refused."""
        for bad in ["", "a b", "a(b", 'a"b', "a]b", "a{b", "a%b", "a*b"]:
            self.assertRaises(ValueError, normalize_flags, [bad])


class MailboxNameTests(SynchronousTestCase):
    def test_inbox_case_insensitive(self) -> None:
        """INBOX in any case, also as a parent, is spelled INBOX."""
        self.assertEqual(normalize_mailbox_name("inbox"), "INBOX")
        self.assertEqual(normalize_mailbox_name("InBox/Sub"), "INBOX/Sub")
        self.assertEqual(normalize_mailbox_name("Inboxes"), "Inboxes")

    def test_delimiters_stripped(self) -> None:
        """Leading and trailing delimiters are removed."""
        self.assertEqual(normalize_mailbox_name("/a/b/"), "a/b")

    def test_escapes_refused(self) -> None:
        """Names that could reach outside the store are refused."""
        for bad in ["", "/", "..", "a/../b", "a//b", ".", "~bob", "a/~b", "a\x00b", "a\nb"]:
            self.assertRaises(ValueError, normalize_mailbox_name, bad)


class PatternTests(SynchronousTestCase):
    def test_wildcards(self) -> None:
        """* matches across levels, % within one level (RFC 3501 section 6.3.8)."""
        self.assertTrue(match_mailbox_pattern("*", "a/b/c"))
        self.assertTrue(match_mailbox_pattern("a/*", "a/b/c"))
        self.assertTrue(match_mailbox_pattern("%", "a"))
        self.assertFalse(match_mailbox_pattern("%", "a/b"))
        self.assertTrue(match_mailbox_pattern("a/%", "a/b"))
        self.assertFalse(match_mailbox_pattern("a/%", "a/b/c"))
        self.assertFalse(match_mailbox_pattern("b*", "a"))
        self.assertTrue(match_mailbox_pattern("a.b", "a.b"))
        self.assertFalse(match_mailbox_pattern("a.b", "axb"))

    def test_inbox_pattern_case_insensitive(self) -> None:
        """A pattern spelling INBOX in another case still matches INBOX."""
        self.assertTrue(match_mailbox_pattern("inbox", "INBOX"))
        self.assertTrue(match_mailbox_pattern("Inbox/%", "INBOX/x"))
        self.assertFalse(match_mailbox_pattern("inbox", "other"))


class PatternMatchPropertyTests(SynchronousTestCase):
    @settings(max_examples=3000, deadline=None)
    @given(
        st.text(alphabet=st.sampled_from(list("ab/*%")), max_size=8),
        st.text(alphabet=st.sampled_from(list("ab/")), max_size=8),
    )
    def test_same_as_a_regular_expression(self, pattern: str, name: str) -> None:
        """On small inputs the matcher agrees with the obvious regular expression (RFC 3501 section 6.3.8)."""
        regex = "".join({"*": ".*", "%": "[^/]*"}.get(c, re.escape(c)) for c in pattern)
        self.assertEqual(match_mailbox_pattern(pattern, name), bool(re.fullmatch(regex, name, re.DOTALL)))

    def test_no_catastrophic_backtracking(self) -> None:
        """A pattern of many wildcards against a long name is answered (a regex would backtrack for hours)."""
        self.assertFalse(match_mailbox_pattern("*a" * 2000 + "b", "a" * 500))
        self.assertTrue(match_mailbox_pattern("%a" * 200 + "%", "a" * 300))


class MessageSourceTests(SynchronousTestCase):
    """The message a store or queue is handed: where its octets are does not matter to it."""

    def test_from_bytes(self) -> None:
        """A source in memory: its data, size, a fresh reader each time, no file, not durable."""
        source = MessageSource.from_bytes(bytearray(b"Subject: a\r\n\r\nbody\r\n"))
        self.assertEqual(source.data, b"Subject: a\r\n\r\nbody\r\n")
        self.assertEqual(source.size, 20)
        self.assertIsNone(source.local_path)
        self.assertFalse(source.fsynced)
        with source.open() as f:
            self.assertEqual(f.read(7), b"Subject")
        with source.open() as f:
            self.assertEqual(f.read(), source.data)
        self.assertEqual(source.read(), source.data)

    def test_from_file(self) -> None:
        """A source of a local file names it, reads it, and keeps the caller's flags."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"on disk\r\n")
        source = MessageSource.from_file(path, 9, fsynced=True)
        self.assertEqual(source.local_path, path)
        self.assertTrue(source.fsynced)
        self.assertIsNone(source.data)
        self.assertEqual(source.read(), b"on disk\r\n")
        with source.open() as f:
            self.assertEqual(f.read(), b"on disk\r\n")

    def test_with_metadata(self) -> None:
        """with_metadata keeps everything else: file, data, durability."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"x\r\n")
        source = MessageSource.from_file(path, 3, fsynced=True, data=b"x\r\n")
        metadata = parse_metadata(b"x\r\n")
        parsed = source.with_metadata(metadata)
        self.assertIs(parsed.metadata, metadata)
        self.assertIsNone(source.metadata)
        self.assertEqual(
            (parsed.local_path, parsed.data, parsed.fsynced, parsed.size), (path, b"x\r\n", True, 3)
        )

    def test_as_source(self) -> None:
        """as_source keeps a source and turns bytes into one."""
        source = MessageSource.from_bytes(b"a")
        self.assertIs(as_source(source), source)
        self.assertEqual(as_source(b"b").data, b"b")
