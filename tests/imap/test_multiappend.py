"""
MULTIAPPEND (RFC 3502) through the IMAP adapter, on the memory store
(:class:`tests.imap.test_server.ServerTestCase`), and the NUL rule of
RFC 3501 section 4.3 for APPEND literals.
"""

from __future__ import annotations

from typing import Any

from tests.imap.test_server import ServerTestCase
from txmail.errors import StoreError
from txmail.imap.commands import capabilities
from txmail.imap.fragment import LineFragment, LiteralFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import Append, AppendMessage

__all__: list[str] = []

ONE = b"Subject: one more\r\n\r\nbody 1\r\n"
TWO = b"Subject: two more\r\n\r\nbody 2\r\n"


class ParseTests(ServerTestCase):
    def test_several_messages(self) -> None:
        """RFC 3502 section 6.3.11: append = "APPEND" SP mailbox 1*append-message."""
        cmd = parse_command(
            [
                LineFragment(b"a APPEND x (\\Seen) "),
                LiteralFragment(ONE),
                LineFragment(b' "01-Jan-2020 00:00:00 +0000" '),
                LiteralFragment(TWO, True),
                LineFragment(b" "),
                LiteralFragment(b"3"),
                LineFragment(b""),
            ]
        )
        args = cmd.args
        assert isinstance(args, Append)
        self.assertEqual(len(args.messages), 3)
        self.assertEqual(args.messages[0], AppendMessage(("\\Seen",), None, ONE))
        self.assertEqual(args.messages[1].literal, TWO)
        self.assertTrue(args.messages[1].binary)
        self.assertEqual(args.messages[1].date.year, 2020)  # type: ignore[union-attr]
        self.assertEqual(args.messages[2], AppendMessage((), None, b"3"))

    def test_nul_in_literal(self) -> None:
        """RFC 3501 section 4.3 (CHAR8 excludes NUL): a NUL in a plain literal is BAD; a literal8 may hold it."""
        with self.assertRaises(ParseError):
            parse_command([LineFragment(b"a APPEND x "), LiteralFragment(b"a\x00b"), LineFragment(b"")])
        cmd = parse_command(
            [LineFragment(b"a APPEND x "), LiteralFragment(b"a\x00b", True), LineFragment(b"")]
        )
        self.assertEqual(cmd.args.literal, b"a\x00b")  # type: ignore[union-attr]

    def test_missing_space(self) -> None:
        """RFC 3502 section 6.3.11: append-opts start with SP."""
        with self.assertRaises(ParseError):
            parse_command(
                [
                    LineFragment(b"a APPEND x "),
                    LiteralFragment(b"a"),
                    LineFragment(b"("),
                    LiteralFragment(b"b"),
                    LineFragment(b""),
                ]
            )


class MultiAppendTests(ServerTestCase):
    def test_advertised(self) -> None:
        """RFC 3502 section 3: the MULTIAPPEND capability."""
        self.assertIn("MULTIAPPEND", capabilities())

    def stored_uids(self) -> list[int]:
        return [m.uid for m in self.successResultOf(self.mailbox.list_messages())]

    def test_literal_plus(self) -> None:
        """RFC 3502 section 6.3.11 with LITERAL+ (RFC 7888): both appended, APPENDUID with a UID set."""
        proto, transport = self.login(select=None)
        out = self.send(
            proto,
            transport,
            b"p1 APPEND INBOX (\\Seen) {%d+}\r\n%s (\\Flagged) {%d+}\r\n%s\r\n"
            % (len(ONE), ONE, len(TWO), TWO),
        )
        self.assertEqual(out, b"p1 OK [APPENDUID %d 3:4] APPEND completed\r\n" % self.mailbox.uidvalidity)
        self.assertEqual(self.successResultOf(self.mailbox.read_message(3)), ONE)
        self.assertEqual(self.successResultOf(self.mailbox.read_message(4)), TWO)
        self.assertIn("\\Seen", self.flags(3))
        self.assertIn("\\Flagged", self.flags(4))

    def test_synchronizing(self) -> None:
        """RFC 3502 section 6.3.11: a continuation for each synchronizing literal; EXISTS for both."""
        proto, transport = self.login()
        self.assertEqual(
            self.send(proto, transport, b"p1 APPEND INBOX {%d}\r\n" % len(ONE)),
            b"+ Ready for literal data\r\n",
        )
        self.assertEqual(
            self.send(proto, transport, ONE + b" {%d}\r\n" % len(TWO)), b"+ Ready for literal data\r\n"
        )
        out = self.send(proto, transport, TWO + b"\r\n")
        self.assertEqual(
            out,
            b"* 4 EXISTS\r\n* 4 RECENT\r\np1 OK [APPENDUID %d 3:4] APPEND completed\r\n"
            % self.mailbox.uidvalidity,
        )

    def test_bad_flag_appends_nothing(self) -> None:
        """RFC 3502 section 6.3.11: all or none; a flag that cannot be set (\\Recent) in the second message appends neither."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"p1 APPEND INBOX {1+}\r\na (\\Recent) {1+}\r\nb\r\n")
        self.assertTrue(out.startswith(b"p1 BAD "), out)
        self.assertEqual(self.stored_uids(), [1, 2])

    def test_failure_takes_back(self) -> None:
        """
        RFC 3502 section 6.3.11: "If the server fails to append any message,
        none of the messages are appended": a store failure on the second
        message expunges the first again.
        """
        real = self.mailbox.append
        calls: list[int] = []

        def failing(message: bytes, *args: Any) -> Any:
            calls.append(1)
            if len(calls) == 2:
                raise StoreError("disk full")
            return real(message, *args)

        self.mailbox.append = failing  # type: ignore[method-assign]
        proto, transport = self.login(select=None)
        out = self.send(
            proto, transport, b"p1 APPEND INBOX {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(ONE), ONE, len(TWO), TWO)
        )
        self.assertTrue(out.startswith(b"p1 NO "), out)
        self.assertEqual(self.stored_uids(), [1, 2])
        self.flushLoggedErrors(StoreError)

    def test_missing_mailbox(self) -> None:
        """RFC 3502 section 6.3.11 / RFC 3501 section 6.3.11: NO [TRYCREATE], nothing appended."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"p1 APPEND Nowhere {1+}\r\na {1+}\r\nb\r\n")
        self.assertEqual(out, b"p1 NO [TRYCREATE] No such mailbox\r\n")

    def test_nul_refused(self) -> None:
        """RFC 3501 section 4.3: a NUL in a plain literal is BAD, nothing appended; in a literal8 it is kept."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"p1 APPEND INBOX {3+}\r\na\x00b\r\n")
        self.assertTrue(out.startswith(b"p1 BAD "), out)
        self.assertEqual(self.stored_uids(), [1, 2])
        out = self.send(proto, transport, b"p2 APPEND INBOX ~{3+}\r\na\x00b\r\n")
        self.assertTrue(out.startswith(b"p2 OK [APPENDUID "), out)
        self.assertEqual(self.successResultOf(self.mailbox.read_message(3)), b"a\x00b")
