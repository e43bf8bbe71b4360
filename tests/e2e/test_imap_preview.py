"""
End to end with Python's imaplib against a real server on the Maildir
store (issue 12 section 3): STATUS=SIZE (RFC 8438) and PREVIEW (RFC 8970).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.e2e.test_imap import IMAPTestCase, ok

__all__: list[str] = []

MESSAGE = (
    b"From: bob@remote.test\r\nTo: alice@example.test\r\nSubject: hello\r\n"
    b"Content-Type: text/html; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"<p>Gr=FC=DFe,   <b>Alice</b></p>\r\n"
)


class PreviewAndSizeTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_preview_and_status_size(self) -> Any:
        """RFC 8970 section 3.1 (a UTF-8 literal) and RFC 8438 section 3 through imaplib."""

        def run() -> tuple[Any, Any, Any]:
            client = self.login()
            ok(client.append("INBOX", "", None, MESSAGE))
            status = ok(client.status("INBOX", "(MESSAGES SIZE)"))
            ok(client.select("INBOX"))
            fetched = ok(client.fetch("1", "(RFC822.SIZE PREVIEW)"))
            return client.capabilities, status, fetched

        capabilities, status, fetched = yield deferToThread(run)
        self.assertIn("PREVIEW", capabilities)
        self.assertIn("STATUS=SIZE", capabilities)
        self.assertEqual(status, [b"INBOX (MESSAGES 1 SIZE %d)" % len(MESSAGE)])
        self.assertEqual(fetched[0][0], b"1 (RFC822.SIZE %d PREVIEW {14}" % len(MESSAGE))
        self.assertEqual(fetched[0][1].decode("utf-8"), "Grüße, Alice")


class UTF8AcceptTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_imaplib_utf8(self) -> Any:
        """RFC 6855 section 3 through imaplib's enable("UTF8=ACCEPT"): UTF-8 mailbox names both ways."""

        def run() -> Any:
            client = self.login()
            ok(client.enable("UTF8=ACCEPT"))  # imaplib checks the ENABLED response and switches to UTF-8
            ok(client.create('"Entwürfe"'))
            return ok(client.list('""', '"Entw*"'))

        listed = yield deferToThread(run)
        self.assertEqual(listed, ['(\\HasNoChildren) "/" "Entwürfe"'.encode()])
