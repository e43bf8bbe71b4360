"""
End to end, over a socket to a real server on the Maildir store (issue 12
section 3): CREATE-SPECIAL-USE (RFC 6154), MULTIAPPEND (RFC 3502), BINARY
(RFC 3516) and REPLACE (RFC 8508), spoken line by line with LITERAL+.
COMPRESS=DEFLATE (RFC 4978) has its own in tests/imap/test_compress.py.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.e2e.test_imap import PASSWORD, USER, IMAPTestCase, RawClient

__all__: list[str] = []

PAYLOAD = bytes(range(256)) * 4
ATTACHED = (
    b"Subject: binary\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
    b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PAYLOAD).replace(b"\n", b"\r\n")
)
DRAFT = b"Subject: draft v1\r\n\r\nfirst\r\n"
EDITED = b"Subject: draft v2\r\n\r\nsecond\r\n"


def literal(data: bytes) -> bytes:
    return b"{%d+}\r\n%s" % (len(data), data)


class ExtensionTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_extensions_on_maildir(self) -> Any:
        """RFC 6154 section 3, RFC 3502, RFC 3516 section 4.2, RFC 8508 section 3 against the Maildir store."""

        def run() -> dict[str, list[bytes]]:
            raw = RawClient(self.server.address("imap"))
            out: dict[str, list[bytes]] = {}
            try:
                raw.command(b"l1", b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
                out["create"] = raw.command(b"c1", b"CREATE Spam2 (USE (\\Sent))")
                out["create_new"] = raw.command(b"c2", b"CREATE Work (USE ())")
                out["multi"] = raw.command(
                    b"a1", b"APPEND Work (\\Seen) " + literal(ATTACHED) + b" " + literal(DRAFT)
                )
                raw.command(b"s1", b"SELECT Work")
                out["size"] = raw.command(b"f1", b"UID FETCH 1 BINARY.SIZE[1]")
                out["replace"] = raw.command(b"r1", b"UID REPLACE 2 Work (\\Draft) " + literal(EDITED))
                out["after"] = raw.command(b"f2", b"UID FETCH 1:* (FLAGS RFC822.SIZE)")
                out["nul"] = raw.command(b"a2", b"APPEND Work {3+}\r\na\x00b")
            finally:
                raw.close()
            return out

        out = yield deferToThread(run)
        # The default folders (Sent...) were made at login: \Sent is taken.
        self.assertTrue(out["create"][-1].startswith(b"c1 NO [USEATTR] "), out["create"])
        # RFC 8474 section 4.1: CREATE tells the new mailbox's MAILBOXID.
        (created,) = out["create_new"]
        self.assertRegex(created, rb"^c2 OK \[MAILBOXID \(F[0-9a-f]{24}\)\] CREATE completed\r\n$")
        self.assertRegex(out["multi"][-1], rb"^a1 OK \[APPENDUID \d+ 1:2\] ")
        self.assertIn(b"* 1 FETCH (UID 1 BINARY.SIZE[1] %d)\r\n" % len(PAYLOAD), out["size"])
        self.assertRegex(b"".join(out["replace"]), rb"\* OK \[APPENDUID \d+ 3\] [^\r]*\r\n\* 2 EXPUNGE\r\n")
        self.assertTrue(out["replace"][-1].startswith(b"r1 OK "), out["replace"])
        fetched = b"".join(out["after"])
        self.assertIn(b"UID 3 FLAGS (\\Draft \\Recent) RFC822.SIZE %d" % len(EDITED), fetched)
        self.assertNotIn(b"UID 2 ", fetched)
        self.assertTrue(out["nul"][-1].startswith(b"a2 BAD "), out["nul"])
