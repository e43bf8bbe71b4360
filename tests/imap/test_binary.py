"""
BINARY (RFC 3516): FETCH BINARY, BINARY.PEEK and BINARY.SIZE, and APPEND
with a literal8, through the IMAP adapter on the memory store
(:class:`tests.imap.test_server.ServerTestCase`), and the decoding of
:mod:`txmail.imap.binary`.
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_server import ServerTestCase
from txmail import mime
from txmail.imap.binary import UnknownCTE, decoded_part
from txmail.imap.commands import capabilities
from txmail.imap.fragment import LineFragment
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import FetchAttribute, Section

__all__: list[str] = []

PAYLOAD = bytes(range(256))
MIXED = (
    b"Subject: parts\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 =\r\nau lait\r\n"
    b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
    + b"--b\r\nContent-Type: application/x-odd\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
    b"--b--\r\n"
)


class DecodeTests(SynchronousTestCase):
    def test_parts(self) -> None:
        """RFC 3516 section 4.2: the part's Content-Transfer-Encoding is undone (RFC 2045 section 6)."""
        parsed = mime.ParsedMessage(MIXED)
        self.assertEqual(decoded_part(parsed, (1,)), "café au lait".encode())
        self.assertEqual(decoded_part(parsed, (2,)), PAYLOAD)
        self.assertEqual(decoded_part(parsed, (4,)), b"plain")
        self.assertEqual(decoded_part(parsed, ()), MIXED)
        self.assertEqual(decoded_part(parsed, (9,)), b"")
        self.assertRaises(UnknownCTE, decoded_part, parsed, (3,))

    def test_single_part(self) -> None:
        """RFC 3516 section 4.2: part 1 of a single-part message is its body, decoded by its header's encoding."""
        message = b"Subject: x\r\nContent-Transfer-Encoding: BASE64\r\n\r\naGVs\r\nbG8=\r\n"
        self.assertEqual(decoded_part(mime.ParsedMessage(message), (1,)), b"hello")


class ParseTests(SynchronousTestCase):
    def test_items(self) -> None:
        """RFC 3516 section 6: "BINARY" [".PEEK"] section-binary [partial] / "BINARY.SIZE" section-binary."""
        cmd = parse_command([LineFragment(b"a FETCH 1 (BINARY[1.2] BINARY.PEEK[]<3.4> BINARY.SIZE[2])")])
        self.assertEqual(
            cmd.args.items,  # type: ignore[union-attr]
            (
                FetchAttribute("BINARY", Section((1, 2))),
                FetchAttribute("BINARY", Section(), (3, 4), True),
                FetchAttribute("BINARY.SIZE", Section((2,)), None, True),
            ),
        )

    def test_bad(self) -> None:
        """RFC 3516 section 6: section-binary holds part numbers only; BINARY.SIZE takes no partial."""
        for line in (
            b"a FETCH 1 BINARY[TEXT]",
            b"a FETCH 1 BINARY[0]",
            b"a FETCH 1 BINARY.SIZE[1]<0.1>",
            b"a FETCH 1 BINARY",
        ):
            self.assertRaises(ParseError, parse_command, [LineFragment(line)])


class FetchBinaryTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.uid = self.successResultOf(self.mailbox.append(MIXED, (), 1_600_000_000))

    def test_advertised(self) -> None:
        """RFC 3516 section 3: the BINARY capability."""
        self.assertIn("BINARY", capabilities())

    def test_fetch_base64_part(self) -> None:
        """RFC 3516 section 4.2: BINARY.PEEK of a base64 part holding NULs comes as a literal8, \\Seen unchanged."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 3 (BINARY.PEEK[2] BINARY.SIZE[2])\r\n")
        self.assertEqual(
            out,
            b"* 3 FETCH (BINARY[2] ~{256}\r\n"
            + PAYLOAD
            + b" BINARY.SIZE[2] 256)\r\nf1 OK FETCH completed\r\n",
        )
        self.assertNotIn("\\Seen", self.flags(self.uid))

    def test_fetch_sets_seen(self) -> None:
        """RFC 3516 section 4.2: BINARY (not PEEK) sets \\Seen as BODY does; no NUL: a plain literal."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 UID FETCH %d BINARY[1]<0.4>\r\n" % self.uid)
        self.assertEqual(
            out,
            b"* 3 FETCH (UID 3 BINARY[1]<0> {4}\r\ncaf\xc3 FLAGS (\\Seen \\Recent))\r\nf1 OK UID FETCH completed\r\n",
        )
        self.assertIn("\\Seen", self.flags(self.uid))

    def test_unknown_cte(self) -> None:
        """RFC 3516 section 4.2: an encoding the server cannot undo fails the FETCH with NO [UNKNOWN-CTE]."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 3 BINARY.PEEK[3]\r\n")
        self.assertTrue(out.startswith(b"f1 NO [UNKNOWN-CTE] "), out)
        out = self.send(proto, transport, b"f2 FETCH 3 BINARY.SIZE[3]\r\n")
        self.assertTrue(out.startswith(b"f2 NO [UNKNOWN-CTE] "), out)

    def test_append_literal8_then_fetch(self) -> None:
        """
        RFC 3516 section 4.4: APPEND with a literal8 stores binary content;
        BINARY[] gives it back as a literal8, BINARY.SIZE[] its size.
        """
        proto, transport = self.login()
        message = b"Subject: bin\r\n\r\n\x00\x01\x02\r\n"
        out = self.send(proto, transport, b"a1 APPEND INBOX ~{%d}\r\n" % len(message))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = self.send(proto, transport, message + b"\r\n")
        self.assertTrue(
            out.endswith(b"a1 OK [APPENDUID %d 4] APPEND completed\r\n" % self.mailbox.uidvalidity), out
        )
        out = self.send(proto, transport, b"f1 UID FETCH 4 (BINARY.PEEK[] BINARY.SIZE[])\r\n")
        self.assertEqual(
            out,
            b"* 4 FETCH (UID 4 BINARY[] ~{%d}\r\n%s BINARY.SIZE[] %d)\r\nf1 OK UID FETCH completed\r\n"
            % (len(message), message, len(message)),
        )
