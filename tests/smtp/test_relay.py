"""
End to end: deliver_once against txmail's own SMTP server, and against a
tiny scripted server for replies ours never gives, all on 127.0.0.1.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, reactor, ssl, task
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase

from tests._certs import make_certificate
from tests.e2e._server import maildir_files, start_server
from txmail.smtp.client import TransactionResult
from txmail.smtp.relay import RelayRequest, client_endpoint, deliver_once

PASSWORD = "correct horse"
MESSAGE = b"Subject: relayed\r\n\r\nHello\r\n.dot line\r\n"


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class ScriptedServer(Protocol):
    """
    A fake SMTP server: ``answer(line)`` gives the reply bytes for each
    command line; content after a 354 is collected up to the end mark.
    """

    def __init__(self, factory: ScriptedFactory) -> None:
        self.factory = factory
        self.buffer = b""
        self.in_data = False

    def connectionMade(self) -> None:
        self.factory.connected.callback(self)
        if self.factory.greeting:
            self.transport.write(self.factory.greeting)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.in_data:
                end = self.buffer.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.factory.content.append(self.buffer[: end + 2])
                self.buffer = self.buffer[end + 5 :]
                self.in_data = False
                line = "<end of data>"
            else:
                if b"\r\n" not in self.buffer:
                    return
                raw, self.buffer = self.buffer.split(b"\r\n", 1)
                line = raw.decode()
            self.factory.lines.append(line)
            reply = self.factory.answer(line)
            if reply.startswith(b"354"):
                self.in_data = True
            self.transport.write(reply)  # type: ignore[union-attr]
            if line == "QUIT":
                self.transport.loseConnection()  # type: ignore[union-attr]


class ScriptedFactory(Factory):
    def __init__(self, answer: Callable[[str], bytes], greeting: bytes = b"220 fake.test ESMTP\r\n") -> None:
        self.answer = answer
        self.greeting = greeting
        self.lines: list[str] = []
        self.content: list[bytes] = []
        self.connected: defer.Deferred[ScriptedServer] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> ScriptedServer:
        return ScriptedServer(self)


class WatchedEndpoint:
    """Wraps an endpoint; ``connected`` fires once the client protocol's connectionMade ran."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.connected: defer.Deferred[Any] = defer.Deferred()

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        def made(protocol: Any) -> Any:
            self.connected.callback(protocol)
            return protocol

        return self.inner.connect(factory).addCallback(made)


class PlainServerTests(TestCase):
    """Against the real server without a certificate."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.host, self.port = self.server.address("mta")

    def deliver(self, **kwargs: Any) -> defer.Deferred[TransactionResult]:
        kwargs.setdefault("hostname", "client.test")
        kwargs.setdefault("mail_from", "sender@remote.test")
        kwargs.setdefault("recipients", ["alice@example.test"])
        kwargs.setdefault("message", MESSAGE)
        kwargs.setdefault("timeout", 30)
        return deliver_once(reactor, RelayRequest(host=self.host, port=self.port, **kwargs))

    @defer.inlineCallbacks
    def test_plain_delivery(self) -> Any:
        """A message for a local user and an unknown one: one lands in the Maildir, one is refused."""
        result = yield self.deliver(recipients=["alice@example.test", "nobody@example.test"])
        self.assertIsNone(result.error)
        self.assertFalse(result.tls)  # opportunistic: no STARTTLS offered, so in the clear
        self.assertEqual(result.status("alice@example.test"), "delivered")
        self.assertEqual(result.status("nobody@example.test"), "permanent")
        self.assertEqual(result.greeting_reply.code, 220)
        (path,) = maildir_files(self.server, "alice@example.test")
        data = read(path)
        self.assertTrue(data.startswith(b"Return-Path: <sender@remote.test>\r\n"))
        self.assertIn(b"from client.test", data)
        self.assertTrue(data.endswith(MESSAGE))

    @defer.inlineCallbacks
    def test_streamed_file(self) -> Any:
        """A file object is streamed in chunks; periods, bare LF and a missing final CRLF survive as they should."""
        body = b"".join(b".line %d\r\n" % i for i in range(20000)) + b"bare\nlf\n.x"
        message = b"Subject: big\r\n\r\n" + body
        result = yield self.deliver(message=io.BytesIO(message))
        self.assertEqual(result.delivered, ["alice@example.test"])
        (path,) = maildir_files(self.server, "alice@example.test")
        expected = message.replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n") + b"\r\n"
        self.assertTrue(read(path).endswith(expected))

    @defer.inlineCallbacks
    def test_verify_without_starttls_fails(self) -> Any:
        """Policy "verify" against a server without STARTTLS: temporary "TLS required", nothing delivered."""
        result = yield self.deliver(tls_policy="verify", tls_hostname="localhost")
        self.assertTrue(result.temporary)
        self.assertIn("TLS required", result.error)
        self.assertEqual(result.status("alice@example.test"), "temporary")
        self.assertEqual(maildir_files(self.server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_size_refused(self) -> Any:
        """Over the server's advertised SIZE: a permanent failure before MAIL."""
        limit = self.server.settings.max_message_size
        result = yield self.deliver(message=b"x" * 10, size=limit + 1)
        self.assertFalse(result.temporary)
        self.assertIn("5.3.4", result.error)
        self.assertEqual(result.per_recipient, {})


class TLSServerTests(TestCase):
    """Against the real server with a certificate for "localhost" from a test CA."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        self.server = yield start_server(self, tls_cert=cert, tls_key=key, plaintext_auth="never")
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.host, self.port = self.server.address("mta")
        self.trust_root = ssl.Certificate.loadPEM(read(self.ca))

    def deliver(self, port: int | None = None, **kwargs: Any) -> defer.Deferred[TransactionResult]:
        kwargs.setdefault("hostname", "client.test")
        kwargs.setdefault("mail_from", "sender@remote.test")
        kwargs.setdefault("recipients", ["alice@example.test"])
        kwargs.setdefault("message", MESSAGE)
        kwargs.setdefault("timeout", 30)
        return deliver_once(reactor, RelayRequest(host=self.host, port=port or self.port, **kwargs))

    def landed(self) -> bytes:
        (path,) = maildir_files(self.server, "alice@example.test")
        return read(path)

    @defer.inlineCallbacks
    def test_opportunistic_starttls(self) -> Any:
        """Opportunistic TLS uses STARTTLS without checking the certificate; the server logs ESMTPS."""
        result = yield self.deliver()
        self.assertIsNone(result.error)
        self.assertTrue(result.tls)
        self.assertEqual(result.delivered, ["alice@example.test"])
        self.assertIn(b"with ESMTPS", self.landed())

    @defer.inlineCallbacks
    def test_policy_none_stays_in_clear(self) -> Any:
        """Policy "none" ignores the offered STARTTLS."""
        result = yield self.deliver(tls_policy="none")
        self.assertFalse(result.tls)
        self.assertIn(b"with ESMTP ", self.landed())

    @defer.inlineCallbacks
    def test_verify_with_test_ca(self) -> Any:
        """Verify mode with the test CA as trust root and the certificate's name succeeds."""
        result = yield self.deliver(tls_policy="verify", tls_hostname="localhost", trust_root=self.trust_root)
        self.assertIsNone(result.error)
        self.assertTrue(result.tls)
        self.assertEqual(result.delivered, ["alice@example.test"])

    @defer.inlineCallbacks
    def test_verify_wrong_hostname_fails_closed(self) -> Any:
        """A certificate not naming the MX fails the handshake: temporary, nothing sent."""
        result = yield self.deliver(
            tls_policy="verify", tls_hostname="mx.wrong.test", trust_root=self.trust_root
        )
        self.assertTrue(result.temporary)
        self.assertIn("TLS failure", result.error)
        self.assertEqual(result.status("alice@example.test"), "temporary")
        self.assertEqual(maildir_files(self.server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_verify_untrusted_ca_fails_closed(self) -> Any:
        """Without the test CA (platform roots only) the chain does not verify."""
        other_ca, _, _ = make_certificate(os.path.abspath(self.mktemp()))
        trust = ssl.Certificate.loadPEM(read(other_ca))
        result = yield self.deliver(tls_policy="verify", tls_hostname="localhost", trust_root=trust)
        self.assertTrue(result.temporary)
        self.assertIn("TLS failure", result.error)
        self.assertEqual(maildir_files(self.server, "alice@example.test"), [])

    @defer.inlineCallbacks
    def test_auth_over_starttls_on_submission(self) -> Any:
        """AUTH PLAIN after STARTTLS on the submission port: the message is stored as ESMTPSA."""
        result = yield self.deliver(
            port=self.server.address("submission")[1],
            mail_from="alice@example.test",
            auth=("alice@example.test", PASSWORD),
        )
        self.assertIsNone(result.error)
        self.assertIn(b"ESMTPSA", self.landed())

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        """535 from the real server: a temporary failure whose text never holds the password."""
        result = yield self.deliver(
            port=self.server.address("submission")[1],
            mail_from="alice@example.test",
            auth=("alice@example.test", "wrong"),
        )
        self.assertTrue(result.temporary)
        self.assertIn("authentication failed: 535", result.error)
        self.assertNotIn("wrong", result.error.replace("authentication failed", ""))


class NetworkFailureTests(TestCase):
    @defer.inlineCallbacks
    def test_connection_refused(self) -> Any:
        """Nobody listening: a temporary result, not an errback."""
        port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")  # type: ignore[attr-defined]
        number = port.getHost().port
        yield port.stopListening()
        result = yield deliver_once(
            reactor,
            RelayRequest(
                host="127.0.0.1",
                port=number,
                hostname="c.test",
                mail_from="a@b.test",
                recipients=["c@d.test"],
                message=b"x",
            ),
        )
        self.assertTrue(result.temporary)
        self.assertIn("connection to 127.0.0.1 port", result.error)
        self.assertIsNone(result.greeting_reply)
        self.assertEqual(result.status("c@d.test"), "temporary")

    def test_endpoint_choice(self) -> None:
        """IPv4 and IPv6 literals (bracketed or not) get TCP4/TCP6 endpoints."""
        self.assertIsInstance(client_endpoint(reactor, "192.0.2.1", 25, 1), TCP4ClientEndpoint)
        for host in ("::1", "[2001:db8::1]"):
            self.assertIsInstance(client_endpoint(reactor, host, 25, 1), TCP6ClientEndpoint)


class ScriptedServerTests(TestCase):
    def listen(self, factory: ScriptedFactory) -> int:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    @defer.inlineCallbacks
    def test_per_recipient_replies(self) -> Any:
        """4xx and 5xx per recipient, DSN parameters passed since DSN is offered, the rest delivered."""

        def answer(line: str) -> bytes:
            if line.startswith("EHLO"):
                return b"250-fake.test\r\n250-PIPELINING\r\n250-DSN\r\n250 ENHANCEDSTATUSCODES\r\n"
            if line.startswith("RCPT TO:<later@"):
                return b"450 4.2.1 mailbox busy\r\n"
            if line.startswith("RCPT TO:<never@"):
                return b"550 5.1.1 no such user\r\n"
            if line == "DATA":
                return b"354 go\r\n"
            if line == "QUIT":
                return b"221 2.0.0 bye\r\n"
            return b"250 2.0.0 ok\r\n"

        factory = ScriptedFactory(answer)
        port = self.listen(factory)
        result = yield deliver_once(
            reactor,
            RelayRequest(
                host="127.0.0.1",
                port=port,
                hostname="c.test",
                mail_from="a@b.test",
                recipients=[("ok@fake.test", {"NOTIFY": "FAILURE"}), "later@fake.test", "never@fake.test"],
                mail_params={"RET": "HDRS"},
                message=MESSAGE,
                tls_policy="none",
            ),
        )
        self.assertEqual(
            [result.status(r) for r in ("ok@fake.test", "later@fake.test", "never@fake.test")],
            ["delivered", "temporary", "permanent"],
        )
        self.assertIn("MAIL FROM:<a@b.test> RET=HDRS", factory.lines)
        self.assertIn("RCPT TO:<ok@fake.test> NOTIFY=FAILURE", factory.lines)
        self.assertEqual(factory.content, [MESSAGE.replace(b"\r\n.", b"\r\n..")])
        self.assertEqual(factory.lines[-1], "QUIT")

    @defer.inlineCallbacks
    def test_421_greeting(self) -> Any:
        """A 421 greeting: temporary, the connection is closed without QUIT."""
        factory = ScriptedFactory(lambda line: b"500 what\r\n", greeting=b"421 4.3.2 busy\r\n")
        port = self.listen(factory)
        result = yield deliver_once(
            reactor,
            RelayRequest(
                host="127.0.0.1",
                port=port,
                hostname="c.test",
                mail_from="a@b.test",
                recipients=["c@d.test"],
                message=b"x",
            ),
        )
        self.assertTrue(result.temporary)
        self.assertIn("421 4.3.2 busy", result.error)
        self.assertEqual(factory.lines, [])

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A server that never greets: the per-command timeout on the clock gives a temporary result."""
        factory = ScriptedFactory(lambda line: b"250 ok\r\n", greeting=b"")
        port = self.listen(factory)
        clock = task.Clock()
        endpoint = WatchedEndpoint(TCP4ClientEndpoint(reactor, "127.0.0.1", port))
        d = deliver_once(
            reactor,
            RelayRequest(
                host="127.0.0.1",
                port=port,
                hostname="c.test",
                mail_from="a@b.test",
                recipients=["c@d.test"],
                message=b"x",
                timeout=60,
                endpoint=endpoint,
            ),
            clock=clock,
        )
        server = yield factory.connected
        yield endpoint.connected  # the client's connectionMade ran: its timer is set
        clock.advance(59)
        self.assertNoResult(d)
        clock.advance(1)
        result = yield d
        self.assertTrue(result.temporary)
        self.assertEqual(result.error, "timeout waiting for greeting")
        # the server side sees the connection go away
        lost: defer.Deferred[None] = defer.Deferred()
        server.connectionLost = lambda reason: lost.callback(None)  # type: ignore[method-assign]
        if server.transport.connected:  # type: ignore[union-attr]
            yield lost

    @defer.inlineCallbacks
    def test_ipv6_literal(self) -> Any:
        """A bracketed IPv6 literal connects over TCP6 (skipped when ::1 is unavailable)."""
        factory = ScriptedFactory(
            lambda line: {"DATA": b"354 go\r\n", "QUIT": b"221 bye\r\n"}.get(line, b"250 ok\r\n")
        )
        try:
            port = reactor.listenTCP(0, factory, interface="::1")  # type: ignore[attr-defined]
        except Exception as e:  # no IPv6 loopback on this host
            raise SkipTest(f"no IPv6 loopback: {e}") from None
        self.addCleanup(port.stopListening)
        result = yield deliver_once(
            reactor,
            RelayRequest(
                host="[::1]",
                port=port.getHost().port,
                hostname="c.test",
                mail_from="a@b.test",
                recipients=["c@d.test"],
                message=MESSAGE,
                timeout=30,
            ),
        )
        self.assertEqual(result.delivered, ["c@d.test"])
        self.assertEqual(factory.content, [MESSAGE.replace(b"\r\n.", b"\r\n..")])
