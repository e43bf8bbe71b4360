"""Tests for txmail.smtp.codes: a Reply as text, one way and the other."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.smtp import codes
from txmail.smtp.codes import Reply


class ReplyTextTests(SynchronousTestCase):
    def test_as_text(self) -> None:
        """One line: the code, the enhanced code if any, the lines of the text joined with spaces."""
        self.assertEqual(Reply(550, "5.1.1", "No such user").as_text(), "550 5.1.1 No such user")
        self.assertEqual(Reply(250, "", "OK").as_text(), "250 OK")
        self.assertEqual(Reply(550, "5.7.1", "a\nb").as_text(), "550 5.7.1 a b")
        self.assertEqual(Reply(354, "", "").as_text(), "354")

    def test_from_text(self) -> None:
        """A well-formed one-line reply parses; anything else is None; a class mismatch drops the enhanced code."""
        self.assertEqual(Reply.from_text("550 5.1.1 No such user"), Reply(550, "5.1.1", "No such user"))
        self.assertEqual(Reply.from_text(" 451 try later \r\n"), Reply(451, "", "try later"))
        self.assertEqual(Reply.from_text("550 2.0.0 odd"), Reply(550, "", "odd"))
        for bad in ("", "hello", "999 x", "55 x", "550 5.1.1 a\n550 b"):
            self.assertIsNone(Reply.from_text(bad), bad)

    def test_round_trip(self) -> None:
        """from_text(as_text()) gives every one-line constant back."""
        for name in codes.__all__:
            reply = getattr(codes, name)
            if isinstance(reply, Reply) and "\n" not in reply.text:
                self.assertEqual(Reply.from_text(reply.as_text()), reply, name)

    def test_parse_default(self) -> None:
        """parse is from_text with a default for what does not parse."""
        self.assertIs(Reply.parse("nonsense", codes.LOCAL_ERROR), codes.LOCAL_ERROR)
        self.assertEqual(Reply.parse("250 2.0.0 OK", codes.LOCAL_ERROR), codes.OK)
