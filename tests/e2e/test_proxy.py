"""
End to end: the real service on loopback with PROXY protocol listeners
(``[server] proxy_protocol``), the clients playing a load balancer that
claims their address is 192.0.2.7 (or 192.0.2.66, on a blocklist).

SMTP writes the claimed address into ``Received:`` and the DNS blocklist
checks it; IMAP and POP3 refuse plaintext passwords to it under
``plaintext_auth = "loopback"`` while a ``LOCAL`` header (the balancer's
health check) keeps the real loopback address; STARTTLS works behind the
header; on implicit-TLS listeners the header comes before the handshake.
A client that is not a trusted balancer, or sends no header, is closed.
"""

from __future__ import annotations

import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import struct
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import maildir_files
from txmail.config import Settings
from txmail.resolver import StaticResolver
from txmail.service import MailServer, build_service

PASSWORD = "correct horse"
USER = "alice@example.test"
LOOPBACK = "tcp:0:interface=127.0.0.1"
TLS_LOOPBACK = "ssl:0:interface=127.0.0.1"


def proxy_v2(
    source: str, source_port: int = 56324, destination: str = "198.51.100.1", port: int = 25
) -> bytes:
    """A PROXY version 2 header (PROXY command, TCP over IPv4)."""
    return (
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
        + socket.inet_aton(source)
        + socket.inet_aton(destination)
        + struct.pack("!HH", source_port, port)
    )


#: A version 2 LOCAL header: the balancer's own connection (a health check).
PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"


def proxy_v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 198.51.100.1 56324 25\r\n".encode()


class ProxiedSMTP(smtplib.SMTP):
    """smtplib sending a PROXY header on its new connection before anything else."""

    header = b""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = super()._get_socket(host, port, timeout)
        sock.sendall(self.header)
        return sock


class ProxiedSMTPSSL(smtplib.SMTP_SSL):
    """smtplib over implicit TLS, the PROXY header sent in the clear before the handshake."""

    header = b""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock = socket.create_connection((host, port), timeout)
        sock.sendall(self.header)
        return self.context.wrap_socket(sock, server_hostname=self._host)


class ProxiedIMAP(imaplib.IMAP4):
    header = b""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = super()._create_socket(timeout)
        sock.sendall(self.header)
        return sock


class ProxiedPOP3(poplib.POP3):
    header = b""

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = super()._create_socket(timeout)
        sock.sendall(self.header)
        return sock


class ProxiedIMAPSSL(imaplib.IMAP4_SSL):
    header = b""

    def _create_socket(self, timeout: float | None) -> socket.socket:
        sock = imaplib.IMAP4._create_socket(self, timeout)
        sock.sendall(self.header)
        return self.ssl_context.wrap_socket(sock, server_hostname=self.host)


def with_header(cls: type, header: bytes) -> type:
    """*cls* sending *header* first."""
    return type(cls.__name__, (cls,), {"header": header})


def received_field(data: bytes) -> bytes:
    """Our Received: field, unfolded."""
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ")
    return next(line for line in head.split(b"\r\n") if line.startswith(b"Received: "))


def client_context(ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca)
    context.check_hostname = False
    return context


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (with a timeout)."""
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk


class ProxyTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def start(self, **overrides: Any) -> Any:
        """
        The service in a temporary directory, on loopback port 0 only (an
        empty list is no listener: ``Settings.validated``), its policies
        asking a StaticResolver; alice exists.
        """
        ca, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        self.ca = ca
        values: dict[str, Any] = {
            "data_dir": os.path.abspath(self.mktemp()),
            "hostname": "mx.example.test",
            "domains": ["example.test"],
            "smtp": [LOOPBACK],
            "submission": [],
            "threads": 4,
            "outbound_enabled": False,
            "tls_cert": cert,
            "tls_key": key,
        }
        values.update(overrides)
        self.dns = StaticResolver({("66.2.0.192.bl.test", "A"): ["127.0.0.2"]})
        settings = Settings.validated(**values)
        for description in (
            settings.smtp + settings.submission + settings.lmtp + settings.pop3 + settings.imap
        ):
            self.assertIn(description, (LOOPBACK, TLS_LOOPBACK))  # never a fixed port
        server: MailServer = build_service(settings, reactor=reactor, dns=self.dns)
        self.addCleanup(server.stopService)  # also when a listener fails to start: the thread pool runs
        server.startService()
        yield server.when_listening()
        server.directory.add_user(USER, PASSWORD)
        self.server = server
        return server

    def capture_logs(self) -> list[dict[str, Any]]:
        """The log events from now on (read them with :func:`log_text`)."""
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events

    def delivered(self) -> bytes:
        (path,) = maildir_files(self.server, USER)
        with open(path, "rb") as f:
            return f.read()


def log_text(events: list[dict[str, Any]]) -> str:
    return "\n".join(formatEvent(e) for e in events)


class SMTPTests(ProxyTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield self.start(policy={"policy": {"dnsbl": ["bl.test"]}}, proxy_protocol=[LOOPBACK])

    @defer.inlineCallbacks
    def test_received_names_the_claimed_client(self) -> Any:
        """A v2 header claiming 192.0.2.7, then SMTP: the Received: field names 192.0.2.7, not 127.0.0.1."""
        logs = self.capture_logs()

        def send() -> None:
            with with_header(ProxiedSMTP, proxy_v2("192.0.2.7"))(*self.server.address("mta")) as s:
                s.ehlo("client.test")
                s.sendmail("sender@remote.test", [USER], b"Subject: proxied\r\n\r\nHello\r\n")

        yield deferToThread(send)
        received = received_field(self.delivered())
        self.assertTrue(received.startswith(b"Received: from client.test ([192.0.2.7]) by mx.example.test"))
        self.assertNotIn(b"127.0.0.1", received)
        self.assertIn("192.0.2.7:56324", log_text(logs))
        # The policies asked about the claimed client: the blocklist and reverse DNS.
        asked = {q.name for q in self.dns.questions}
        self.assertIn("7.2.0.192.bl.test", asked)
        self.assertIn("7.2.0.192.in-addr.arpa", asked)

    @defer.inlineCallbacks
    def test_pipelined_after_the_header(self) -> Any:
        """A v1 header and the client's commands in one packet: the commands are answered."""

        def run() -> bytes:
            sock = socket.create_connection(self.server.address("mta"), timeout=10)
            with sock:
                sock.sendall(proxy_v1("192.0.2.7") + b"EHLO client.test\r\nQUIT\r\n")
                return read_all(sock)

        replies = yield deferToThread(run)
        self.assertTrue(replies.startswith(b"220 "))
        self.assertIn(b"250-mx.example.test", replies)
        self.assertTrue(replies.endswith(b"221 2.0.0 Bye\r\n") or b"\r\n221 " in replies, replies)

    @defer.inlineCallbacks
    def test_blocklist_sees_the_claimed_client(self) -> Any:
        """A header claiming a listed address: refused by the DNS blocklist like a direct connection from it."""

        def send() -> Any:
            try:
                with with_header(ProxiedSMTP, proxy_v2("192.0.2.66"))(*self.server.address("mta")) as s:
                    s.sendmail("sender@remote.test", [USER], b"Subject: spam\r\n\r\nx\r\n")
            except smtplib.SMTPException as e:
                return e
            return None

        error = yield deferToThread(send)
        self.assertIsInstance(error, smtplib.SMTPResponseException)
        self.assertEqual(error.smtp_code, 554)
        self.assertIn(b"192.0.2.66", error.smtp_error)
        self.assertEqual(maildir_files(self.server, USER), [])

    @defer.inlineCallbacks
    def test_no_header_closed(self) -> Any:
        """A client that speaks SMTP without a header gets no greeting and is closed, and it is logged."""
        logs = self.capture_logs()

        def run() -> bytes:
            sock = socket.create_connection(self.server.address("mta"), timeout=10)
            with sock:
                sock.sendall(b"EHLO client.test\r\n")
                return read_all(sock)

        self.assertEqual((yield deferToThread(run)), b"")
        self.assertIn("no PROXY header", log_text(logs))


class UntrustedTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_untrusted_balancer_closed(self) -> Any:
        """With 127.0.0.1 outside proxy_trusted, a valid header is not enough: closed, nothing delivered, logged."""
        logs = self.capture_logs()
        yield self.start(proxy_protocol=[LOOPBACK], proxy_trusted=["10.0.0.0/8"])

        def run() -> bytes:
            sock = socket.create_connection(self.server.address("mta"), timeout=10)
            with sock:
                sock.sendall(proxy_v2("192.0.2.7") + b"EHLO client.test\r\n")
                return read_all(sock)

        self.assertEqual((yield deferToThread(run)), b"")
        self.assertIn("127.0.0.1", log_text(logs))
        self.assertIn("not a trusted PROXY sender", log_text(logs))


class STARTTLSTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_starttls_behind_the_header(self) -> Any:
        """Submission behind a header: STARTTLS, AUTH and delivery work, and Received: names the client."""
        yield self.start(smtp=[], submission=[LOOPBACK], proxy_protocol=[LOOPBACK], plaintext_auth="never")

        def send() -> None:
            with with_header(ProxiedSMTP, proxy_v2("192.0.2.7", port=587))(
                *self.server.address("submission")
            ) as s:
                s.starttls(context=client_context(self.ca))
                s.login(USER, PASSWORD)
                s.sendmail(USER, [USER], b"Subject: tls\r\n\r\nx\r\n")

        yield deferToThread(send)
        received = received_field(self.delivered())
        self.assertIn(b"([192.0.2.7])", received)
        self.assertIn(b"with ESMTPSA", received)


class ImplicitTLSTests(ProxyTestCase):
    @defer.inlineCallbacks
    def test_smtps_header_before_handshake(self) -> Any:
        """An ssl: listener: the header in the clear, then the TLS handshake; Received: names the client."""
        yield self.start(smtp=[TLS_LOOPBACK], proxy_protocol=[TLS_LOOPBACK])

        def send() -> None:
            cls = with_header(ProxiedSMTPSSL, proxy_v2("192.0.2.7", port=465))
            with cls(*self.server.address("mta"), context=client_context(self.ca)) as s:
                s.sendmail("sender@remote.test", [USER], b"Subject: smtps\r\n\r\nx\r\n")

        yield deferToThread(send)
        received = received_field(self.delivered())
        self.assertIn(b"([192.0.2.7])", received)
        self.assertIn(b"with ESMTPS", received)

    @defer.inlineCallbacks
    def test_imaps_header_before_handshake(self) -> Any:
        """IMAPS behind a header: the handshake follows the header and the session works."""
        logs = self.capture_logs()
        yield self.start(imap=[TLS_LOOPBACK], proxy_protocol=[TLS_LOOPBACK])

        def run() -> str:
            host, port = self.server.address("imap")
            c = with_header(ProxiedIMAPSSL, proxy_v2("192.0.2.7", port=993))(
                host, port, ssl_context=client_context(self.ca)
            )
            try:
                return c.login(USER, PASSWORD)[0]
            finally:
                c.logout()

        self.assertEqual((yield deferToThread(run)), "OK")
        self.assertIn("IMAP connection from 192.0.2.7:56324", log_text(logs))

    @defer.inlineCallbacks
    def test_tls_without_header_closed(self) -> Any:
        """A TLS client that sends no header: its ClientHello is not a header, the connection is closed."""
        yield self.start(smtp=[TLS_LOOPBACK], proxy_protocol=[TLS_LOOPBACK])

        def run() -> Any:
            try:
                smtplib.SMTP_SSL(*self.server.address("mta"), context=client_context(self.ca), timeout=10)
            except (OSError, smtplib.SMTPException) as e:
                return e
            return None

        self.assertIsNotNone((yield deferToThread(run)))


class PlaintextAuthTests(ProxyTestCase):
    """``plaintext_auth = "loopback"``: the claimed address decides, not the balancer's."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        yield self.start(
            imap=[LOOPBACK], pop3=[LOOPBACK], proxy_protocol=[LOOPBACK], plaintext_auth="loopback"
        )

    def imap_login(self, header: bytes) -> Any:
        def run() -> Any:
            host, port = self.server.address("imap")
            c = with_header(ProxiedIMAP, header)(host, port, timeout=10)
            try:
                return c.capabilities, c.login(USER, PASSWORD)[0]
            except imaplib.IMAP4.error as e:
                return c.capabilities, str(e)
            finally:
                c.logout()

        return deferToThread(run)

    @defer.inlineCallbacks
    def test_imap_login_refused_to_a_remote_client(self) -> Any:
        """A header claiming 192.0.2.7: LOGINDISABLED, and LOGIN is refused."""
        capabilities, result = yield self.imap_login(proxy_v2("192.0.2.7", port=143))
        self.assertIn("LOGINDISABLED", capabilities)
        self.assertIn("PRIVACYREQUIRED", result)

    @defer.inlineCallbacks
    def test_imap_login_allowed_for_a_loopback_client(self) -> Any:
        """A header claiming 127.0.0.1 (or a LOCAL one: the real address stands): LOGIN works."""
        for header in (proxy_v1("127.0.0.1"), PROXY_V2_LOCAL):
            capabilities, result = yield self.imap_login(header)
            self.assertNotIn("LOGINDISABLED", capabilities)
            self.assertEqual(result, "OK")

    @defer.inlineCallbacks
    def test_pop3_user_refused_to_a_remote_client(self) -> Any:
        """POP3 behind a header claiming 192.0.2.7: USER/PASS refused; claiming loopback: accepted."""

        def run(header: bytes) -> Any:
            client = with_header(ProxiedPOP3, header)(*self.server.address("pop3"), timeout=10)
            try:
                client.user(USER)
                return client.pass_(PASSWORD)
            except poplib.error_proto as e:
                return e
            finally:
                client.close()

        refused = yield deferToThread(run, proxy_v2("192.0.2.7", port=110))
        self.assertIsInstance(refused, poplib.error_proto)
        accepted = yield deferToThread(run, proxy_v1("127.0.0.1"))
        self.assertTrue(accepted.startswith(b"+OK"), accepted)
