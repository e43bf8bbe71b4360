"""
End to end LMTP (RFC 2033): the real service with an LMTP listener on a
UNIX socket and on TCP, a client that reads one reply per recipient after
the data (Python's smtplib.LMTP reads only one), and the delivered mail
read back over IMAP.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import tempfile
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e._server import start_server

PASSWORD = "correct horse"


class LMTPClient:
    """A blocking LMTP client on a socket that reads replies one by one (multi-line aware)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def reply(self) -> tuple[int, list[bytes]]:
        lines = []
        while True:
            line = self.file.readline()
            if not line:
                raise ConnectionError("closed")
            lines.append(line.rstrip(b"\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), lines

    def command(self, line: bytes) -> tuple[int, list[bytes]]:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def lmtp_session(address: Any, family: int, rcpts: list[str], message: bytes) -> dict[str, Any]:
    """Greet, send one message to *rcpts*; what each step answered."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(address)
    client = LMTPClient(sock)
    try:
        out: dict[str, Any] = {"greeting": client.reply()}
        out["lhlo"] = client.command(b"LHLO mta.example.test")
        out["mail"] = client.command(b"MAIL FROM:<sender@remote.test>")
        out["rcpt"] = {r: client.command(f"RCPT TO:<{r}>".encode())[0] for r in rcpts}
        accepted = [r for r, code in out["rcpt"].items() if code == 250]
        out["data"] = client.command(b"DATA")
        sock.sendall(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        out["results"] = [client.reply() for _ in accepted]
        out["quit"] = client.command(b"QUIT")
        return out
    finally:
        client.close()


class LMTPTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        # A UNIX socket path must be short (108 octets): a fresh directory under /tmp.
        self.socket_dir = tempfile.mkdtemp(prefix="txmail-lmtp-")
        self.addCleanup(shutil.rmtree, self.socket_dir, True)
        self.socket_path = os.path.join(self.socket_dir, "lmtp")
        self.server = yield start_server(
            self,
            lmtp=[f"unix:{self.socket_path}", "tcp:0:interface=127.0.0.1"],
            imap=["tcp:0:interface=127.0.0.1"],
        )
        for user in ("alice@example.test", "bob@example.test"):
            self.server.directory.add_user(user, PASSWORD)

    def imap_messages(self, user: str) -> defer.Deferred[list[bytes]]:
        host, port = self.server.address("imap")

        def fetch() -> list[bytes]:
            imap = imaplib.IMAP4(host, port)
            try:
                imap.login(user, PASSWORD)
                imap.select("INBOX")
                _, data = imap.search(None, "ALL")
                out = []
                for number in data[0].split():
                    _, parts = imap.fetch(number, "(BODY.PEEK[])")
                    out.append(parts[0][1])
                return out
            finally:
                imap.logout()

        return deferToThread(fetch)

    @defer.inlineCallbacks
    def test_unix_socket_per_recipient_replies(self) -> Any:
        """Over the UNIX socket two users get the message (one reply each) and an unknown user is refused at RCPT."""
        message = b"From: sender@remote.test\r\nSubject: through LMTP\r\n\r\nHello.\r\n"
        out = yield deferToThread(
            lmtp_session,
            self.socket_path,
            socket.AF_UNIX,
            ["alice@example.test", "nobody@example.test", "bob@example.test"],
            message,
        )
        self.assertTrue(out["greeting"][1][0].endswith(b"LMTP txmail"))
        self.assertEqual(out["lhlo"][0], 250)
        self.assertEqual(
            out["rcpt"], {"alice@example.test": 250, "nobody@example.test": 550, "bob@example.test": 250}
        )
        self.assertEqual(out["data"][0], 354)
        codes = [code for code, _ in out["results"]]
        texts = [lines[0] for _, lines in out["results"]]
        self.assertEqual(codes, [250, 250])
        self.assertIn(b"<alice@example.test>", texts[0])
        self.assertIn(b"<bob@example.test>", texts[1])
        self.assertEqual(out["quit"][0], 221)
        for user in ("alice@example.test", "bob@example.test"):
            (fetched,) = yield self.imap_messages(user)
            self.assertIn(b"with LMTP id", fetched)
            self.assertTrue(fetched.endswith(b"Subject: through LMTP\r\n\r\nHello.\r\n"))

    @defer.inlineCallbacks
    def test_tcp_and_no_relaying(self) -> Any:
        """Over TCP LMTP works the same, and a recipient in another domain is refused (no relaying)."""
        address = self.server.address("lmtp", 1)
        out = yield deferToThread(
            lmtp_session,
            address,
            socket.AF_INET,
            ["bob@example.test", "someone@elsewhere.test"],
            b"Subject: tcp\r\n\r\nHi.\r\n",
        )
        self.assertEqual(out["rcpt"], {"bob@example.test": 250, "someone@elsewhere.test": 554})
        self.assertEqual([code for code, _ in out["results"]], [250])
        (fetched,) = yield self.imap_messages("bob@example.test")
        self.assertIn(b"Subject: tcp", fetched)
