"""
COMPRESS=DEFLATE (RFC 4978) through the IMAP adapter: on StringTransport
(:class:`tests.imap.test_server.ServerTestCase`), and end to end with
Python's imaplib over a socket wrapped in zlib.
"""

from __future__ import annotations

import imaplib
import io
import ssl
import zlib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests._certs import make_certificate
from tests.e2e.test_imap import PASSWORD, USER, IMAPTestCase, ok
from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities
from txmail.imap.server import INFLATE_CHUNK

__all__: list[str] = []


class Client:
    """The client's ends of the two raw deflate streams (RFC 4978 section 3)."""

    def __init__(self) -> None:
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.inflater = zlib.decompressobj(-15)

    def pack(self, data: bytes) -> bytes:
        return self.deflater.compress(data) + self.deflater.flush(zlib.Z_SYNC_FLUSH)

    def unpack(self, data: bytes) -> bytes:
        return self.inflater.decompress(data)


class CompressTests(ServerTestCase):
    def compressed(self) -> tuple[Any, Any, Client]:
        proto, transport = self.login()
        out = self.send(proto, transport, b"z1 COMPRESS DEFLATE\r\n")
        self.assertEqual(out, b"z1 OK DEFLATE active\r\n")
        return proto, transport, Client()

    def test_advertised(self) -> None:
        """RFC 4978 section 3: the COMPRESS=DEFLATE capability."""
        self.assertIn("COMPRESS=DEFLATE", capabilities())

    def test_both_directions(self) -> None:
        """RFC 4978 section 3: after the tagged OK, commands and responses are raw deflate, sync-flushed."""
        proto, transport, client = self.compressed()
        out = self.send(proto, transport, client.pack(b"n1 NOOP\r\n"))
        self.assertEqual(client.unpack(out), b"n1 OK NOOP completed\r\n")
        out = self.send(proto, transport, client.pack(b"f1 UID FETCH 1 BODY.PEEK[]\r\n"))
        self.assertIn(b"first body", client.unpack(out))

    def test_second_compress(self) -> None:
        """RFC 4978 section 3: COMPRESS while active is NO [COMPRESSIONACTIVE] (sent compressed)."""
        proto, transport, client = self.compressed()
        out = self.send(proto, transport, client.pack(b"z2 COMPRESS DEFLATE\r\n"))
        self.assertEqual(client.unpack(out), b"z2 NO [COMPRESSIONACTIVE] Compression is already active\r\n")

    def test_unknown_algorithm(self) -> None:
        """RFC 4978 section 3: an unknown algorithm is BAD; nothing changes."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"z1 COMPRESS LZMA\r\n")
        self.assertEqual(out, b"z1 BAD Unknown compression algorithm\r\n")
        self.assertEqual(self.send(proto, transport, b"n1 NOOP\r\n"), b"n1 OK NOOP completed\r\n")

    def test_not_before_login(self) -> None:
        """RFC 4978 section 4: command-auth, so not in the not-authenticated state."""
        proto, transport = self.connect()
        out = self.send(proto, transport, b"z1 COMPRESS DEFLATE\r\n")
        self.assertTrue(out.startswith(b"z1 BAD "), out)

    def test_pipelined_after_compress(self) -> None:
        """RFC 4978 section 3: what the client sent right after COMPRESS is already compressed."""
        proto, transport = self.login()
        client = Client()
        out = self.send(proto, transport, b"z1 COMPRESS DEFLATE\r\n" + client.pack(b"n1 NOOP\r\n"))
        self.assertTrue(out.startswith(b"z1 OK DEFLATE active\r\n"), out)
        self.assertEqual(client.unpack(out[len(b"z1 OK DEFLATE active\r\n") :]), b"n1 OK NOOP completed\r\n")

    def test_literal_in_pieces(self) -> None:
        """RFC 4978 with RFC 7888: an APPEND whose literal inflates to more than one piece."""
        proto, transport, client = self.compressed()
        body = b"Subject: big\r\n\r\n" + b"x" * (3 * INFLATE_CHUNK) + b"\r\n"
        out = self.send(proto, transport, client.pack(b"a1 APPEND INBOX {%d+}\r\n%s\r\n" % (len(body), body)))
        self.assertIn(b"a1 OK [APPENDUID ", client.unpack(out))
        self.assertEqual(self.successResultOf(self.mailbox.read_message(3)), body)

    def test_bomb_bounded(self) -> None:
        """
        RFC 4978 section 6 (security): a line that inflates to far more than
        the line limit is refused by the framer, and the input is inflated
        in bounded pieces (no buffer of the whole).
        """
        proto, transport, client = self.compressed()
        bomb = client.pack(b"x1 NOOP " + b"A" * (8 * 1024 * 1024) + b"\r\nn1 NOOP\r\n")
        self.assertLess(len(bomb), 64 * 1024)
        out = client.unpack(self.send(proto, transport, bomb))
        self.assertIn(b"BAD", out)
        self.assertTrue(out.endswith(b"n1 OK NOOP completed\r\n"), out[-200:])
        self.assertLess(proto.session.buffered_input, 2 * INFLATE_CHUNK)

    def test_invalid_stream_closes(self) -> None:
        """RFC 4978 section 3: input that is not a deflate stream ends the connection."""
        proto, transport, _ = self.compressed()
        self.send(proto, transport, b"\xff\xff\xff\xff garbage")
        self.assertTrue(transport.disconnecting)


class DeflateSocket:
    """A socket whose traffic is raw deflate, for imaplib after COMPRESS (RFC 4978 section 3)."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.client = Client()
        self.pending = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)  # shutdown, close...

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.client.pack(data))

    def recv(self, n: int) -> bytes:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                return b""
            self.pending = self.client.unpack(data)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def makefile(self) -> io.BufferedReader:
        sock = self

        class Raw(io.RawIOBase):
            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                data = sock.recv(len(b))
                b[: len(data)] = data
                return len(data)

        return io.BufferedReader(Raw())


class EndToEndTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_imaplib(self) -> Any:
        """RFC 4978: imaplib logs in, compresses, appends and fetches over a real socket."""
        message = b"Subject: zipped\r\n\r\n" + b"hello " * 1000 + b"\r\n"

        if "COMPRESS" not in imaplib.Commands:  # imaplib does not know the command
            imaplib.Commands["COMPRESS"] = ("AUTH", "SELECTED")
            self.addCleanup(imaplib.Commands.pop, "COMPRESS")

        def run() -> Any:
            client = self.login()
            ok(client._simple_command("COMPRESS", "DEFLATE"))
            wrapped = DeflateSocket(client.sock)
            client.sock = wrapped  # type: ignore[assignment]
            client.file = wrapped.makefile()
            ok(client.append("INBOX", "", None, message))  # type: ignore[arg-type]
            ok(client.select("INBOX"))
            data = ok(client.fetch("1", "(BODY.PEEK[])"))
            client.logout()
            return data[0][1]

        fetched = yield deferToThread(run)
        self.assertEqual(fetched, message)


class TLSEndToEndTests(IMAPTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(self.mktemp(), "mx.example.test")
        self.server = yield self.start(imap=["ssl:0:interface=127.0.0.1"], tls_cert=cert, tls_key=key)

    @defer.inlineCallbacks
    def test_compress_inside_tls(self) -> Any:
        """RFC 4978 section 3 (with TLS): over IMAPS the deflate streams run inside the TLS layer."""
        if "COMPRESS" not in imaplib.Commands:
            imaplib.Commands["COMPRESS"] = ("AUTH", "SELECTED")
            self.addCleanup(imaplib.Commands.pop, "COMPRESS")

        def run() -> Any:
            context = ssl.create_default_context(cafile=self.ca)
            context.check_hostname = False
            _, port = self.server.address("imap")
            client = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context)
            try:
                ok(client.login(USER, PASSWORD))
                ok(client._simple_command("COMPRESS", "DEFLATE"))
                wrapped = DeflateSocket(client.sock)
                client.sock = wrapped  # type: ignore[assignment]
                client.file = wrapped.makefile()
                return ok(client.select("INBOX")), client._simple_command("COMPRESS", "DEFLATE")
            finally:
                client.logout()

        selected, again = yield deferToThread(run)
        self.assertEqual(selected, [b"0"])
        self.assertEqual(again, ("NO", [b"[COMPRESSIONACTIVE] Compression is already active"]))
