"""
PREVIEW (RFC 8970): the text (:func:`txmail.mime.preview`) without
Twisted, the parser, and FETCH PREVIEW through the IMAP adapter on
StringTransport (:class:`tests.imap.test_server.ServerTestCase`).
"""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_parser import parse, parse_error
from tests.imap.test_server import ServerTestCase
from txmail import mime
from txmail.imap.commands import capabilities
from txmail.imap.types import FetchAttribute

__all__: list[str] = []

ALTERNATIVE = (
    b"Subject: alt\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n'
    b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>the <b>html</b> one</p>\r\n"
    b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nthe plain\r\n  one\r\n"
    b"--b--\r\n"
)
HTML_ONLY = (
    b"Subject: html\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n"
    b"<html><head><title>T</title><style>p {color: red}</style></head>"
    b"<body><script>var x = 1;</script><p>Hello&nbsp;<i>there</i> &amp; bye</p>"
    b"<!-- a comment --></body></html>\r\n"
)
BASE64_LATIN1 = (
    b"Subject: b64\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes("Grüße aus Köln".encode("latin-1")).replace(b"\n", b"\r\n")
)
QP_UTF8 = (
    b"Subject: qp\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 au lait, a very long line that is sof=\r\nt-broken here\r\n"
)
KOI8 = (
    b"Subject: koi8\r\nContent-Type: text/plain; charset=koi8-r\r\n\r\n"
    + "Привет, мир".encode("koi8-r")
    + b"\r\n"
)
MIXED_ATTACHMENT = (
    b'Subject: mixed\r\nContent-Type: multipart/mixed; boundary="m"\r\n\r\n'
    b"--m\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
    b"--m\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=a.txt\r\n\r\nattached\r\n"
    b"--m\r\nContent-Type: text/plain\r\n\r\nthe body text\r\n"
    b"--m--\r\n"
)
EMPTY_BODY = b"Subject: empty\r\n\r\n"
NO_TEXT = b"Subject: pic\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"


class PreviewTextTests(SynchronousTestCase):
    """RFC 8970 section 3.1: what the preview holds."""

    def test_alternative_prefers_plain(self) -> None:
        """The TEXT/PLAIN alternative, white space collapsed, even when the HTML comes first."""
        self.assertEqual(mime.preview(ALTERNATIVE), "the plain one")

    def test_html_only(self) -> None:
        """HTML without tags, head, style, script or comments; entities decoded."""
        self.assertEqual(mime.preview(HTML_ONLY), "Hello there & bye")

    def test_base64_latin1(self) -> None:
        """Transfer encoding (base64) and charset (ISO-8859-1) undone."""
        self.assertEqual(mime.preview(BASE64_LATIN1), "Grüße aus Köln")

    def test_quoted_printable(self) -> None:
        """Quoted-printable undone, soft line breaks joined."""
        self.assertEqual(mime.preview(QP_UTF8), "café au lait, a very long line that is soft-broken here")

    def test_koi8(self) -> None:
        """A non-UTF-8 charset (KOI8-R) becomes Unicode text."""
        self.assertEqual(mime.preview(KOI8), "Привет, мир")

    def test_skips_attachments(self) -> None:
        """Non-text parts and text attachments are not the preview."""
        self.assertEqual(mime.preview(MIXED_ATTACHMENT), "the body text")

    def test_no_text(self) -> None:
        """No text: the empty string (an empty body, a message with only an image, no octets at all)."""
        self.assertEqual(mime.preview(EMPTY_BODY), "")
        self.assertEqual(mime.preview(NO_TEXT), "")
        self.assertEqual(mime.preview(b""), "")

    def test_at_most_256_characters(self) -> None:
        """RFC 8970 section 3.1: no more than 256 characters (not octets)."""
        text = mime.preview(
            b"Subject: long\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + "é".encode() * 1000
        )
        self.assertEqual(text, "é" * 256)

    def test_controls_dropped(self) -> None:
        self.assertEqual(mime.preview(b"\r\na\x00b\x1bc\td\r\n"), "a b c d")

    def test_unknown_charset_and_bad_octets(self) -> None:
        """Never raises: an unknown charset reads as UTF-8, bad octets are replaced."""
        body = b"Content-Type: text/plain; charset=x-unknown\r\n\r\nok \xff\r\n"
        self.assertEqual(mime.preview(body), "ok \ufffd")

    def test_huge_part_is_bounded(self) -> None:
        """Only the start of a large base64 part is decoded."""
        payload = base64.encodebytes(b"word " * 200_000).replace(b"\n", b"\r\n")
        message = b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + payload
        self.assertEqual(mime.preview(message), ("word " * 52).strip()[:256])


class PreviewParserTests(SynchronousTestCase):
    def parse(self, line: bytes) -> tuple[FetchAttribute, ...]:
        return parse(self, line + b"\r\n").args.items  # type: ignore[union-attr]

    def test_preview_and_lazy(self) -> None:
        """RFC 8970 section 7: fetch-att =/ "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]."""
        self.assertEqual(self.parse(b"a FETCH 1 PREVIEW"), (FetchAttribute("PREVIEW"),))
        self.assertEqual(self.parse(b"a FETCH 1 (PREVIEW (LAZY))"), (FetchAttribute("PREVIEW"),))
        self.assertEqual(
            self.parse(b"a FETCH 1 (UID PREVIEW (lazy LAZY) FLAGS)"),
            (FetchAttribute("UID"), FetchAttribute("PREVIEW"), FetchAttribute("FLAGS")),
        )

    def test_bad_modifier(self) -> None:
        for line in (b"a FETCH 1 (PREVIEW (FUZZY))", b"a FETCH 1 (PREVIEW ())", b"a FETCH 1 PREVIEW (LAZY"):
            parse_error(self, line + b"\r\n")


class PreviewServerTests(ServerTestCase):
    def test_advertised(self) -> None:
        """RFC 8970 section 2: the PREVIEW capability."""
        self.assertIn("PREVIEW", capabilities())

    def test_fetch_preview(self) -> None:
        """RFC 8970 section 3.1: FETCH PREVIEW; it does not set \\Seen."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 1:2 (PREVIEW)\r\n")
        self.assertEqual(
            out,
            b'* 1 FETCH (PREVIEW "first body")\r\n* 2 FETCH (PREVIEW "second body")\r\nf1 OK FETCH completed\r\n',
        )
        self.assertNotIn("\\Seen", self.flags(self.uids[0]))

    def test_lazy(self) -> None:
        """RFC 8970 section 3.2: with LAZY the server may still give the preview (it is never NIL here)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 UID FETCH %d (PREVIEW (LAZY) PREVIEW)\r\n" % self.uids[1])
        self.assertEqual(
            out, b'* 2 FETCH (UID %d PREVIEW "second body")\r\nf1 OK UID FETCH completed\r\n' % self.uids[1]
        )

    def test_non_ascii_is_a_literal(self) -> None:
        """RFC 8970 section 3.1: UTF-8 text, sent as a literal (IMAP4rev1 quoted strings are 7-bit)."""
        self.successResultOf(self.mailbox.append(KOI8, (), 1_600_000_000))
        self.successResultOf(self.mailbox.append(EMPTY_BODY, (), 1_600_000_000))
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 3:4 PREVIEW\r\n")
        text = "Привет, мир".encode()
        self.assertEqual(
            out,
            b'* 3 FETCH (PREVIEW {%d}\r\n%s)\r\n* 4 FETCH (PREVIEW "")\r\nf1 OK FETCH completed\r\n'
            % (len(text), text),
        )
