"""
Tests of txmail.testing from trial: the Deferred API of TestServer (SMTP in,
IMAP/POP3 out, outbound capture and bounces, waits and their timeouts, a
clean stop), the fakes on their own, and the pytest suite of the blocking
API run in a subprocess.
"""

from __future__ import annotations

import email
import imaplib
import importlib.util
import os
import poplib
import smtplib
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import defer, reactor, task, tcp
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txmail.delivery.mx import Destination, NoRoute
from txmail.errors import NoSuchUser
from txmail.smtp.relay import RelayRequest
from txmail.testing import (
    BlockingTestServer,
    FakeResolver,
    OutboundCapture,
    ReactorThreadError,
    TestServer,
    WaitTimeout,
)

ALICE = "alice@example.test"
PASSWORD = "correct horse"
PYTEST_CASES = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "pytest_cases", "test_testing_pytest.py"
)


def message(subject: str, to: str = ALICE, sender: str = "bob@remote.test") -> bytes:
    return f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello {subject}\r\n".encode()


class ServerTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = TestServer()
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.server.add_user(ALICE, PASSWORD)

    def send(self, rcpts: list[str], body: bytes, sender: str = "bob@remote.test") -> defer.Deferred[Any]:
        address = self.server.smtp_address

        def run() -> Any:
            with smtplib.SMTP(*address, timeout=20) as s:
                return s.sendmail(sender, rcpts, body)

        return deferToThread(run)

    def submit(self, rcpts: list[str], body: bytes) -> defer.Deferred[Any]:
        address = self.server.submission_address

        def run() -> Any:
            with smtplib.SMTP(*address, timeout=20) as s:
                s.login(ALICE, PASSWORD)
                return s.sendmail(ALICE, rcpts, body)

        return deferToThread(run)

    def test_addresses(self) -> None:
        """Every protocol listens on its own loopback port."""
        addresses = [
            self.server.smtp_address,
            self.server.submission_address,
            self.server.pop3_address,
            self.server.imap_address,
        ]
        self.assertEqual({host for host, _ in addresses}, {"127.0.0.1"})
        self.assertEqual(len({port for _, port in addresses}), 4)
        self.assertNotIn(0, [port for _, port in addresses])

    @defer.inlineCallbacks
    def test_smtp_delivery(self) -> Any:
        """Mail sent over SMTP is waited for, then read back from the store."""
        waiting = self.server.wait_for_messages(ALICE, 1, timeout=10)
        refused = yield self.send([ALICE], message("first"))
        self.assertEqual(refused, {})
        [raw] = yield waiting
        parsed = email.message_from_bytes(raw)
        self.assertEqual(parsed["Subject"], "first")
        self.assertIn(b"Hello first", raw)
        self.assertIsNotNone(parsed["Received"])  # trace header added (RFC 5321 section 4.4)
        stored = yield self.server.messages_for("Alice@Example.TEST")
        self.assertEqual(stored, [raw])

    @defer.inlineCallbacks
    def test_alias_and_plus_addressing(self) -> Any:
        """An alias and a +tag address both reach the user; the wait counts both."""
        self.server.add_alias("info@example.test", ALICE)
        yield self.send(["info@example.test"], message("via alias"))
        yield self.send(["alice+tag@example.test"], message("via plus"))
        got = yield self.server.wait_for_messages(ALICE, 2, timeout=10)
        subjects = sorted(email.message_from_bytes(m)["Subject"] for m in got)
        self.assertEqual(subjects, ["via alias", "via plus"])

    @defer.inlineCallbacks
    def test_unknown_recipient_refused(self) -> Any:
        """The MTA refuses a recipient nobody answers to (550, RFC 5321 section 4.2.2)."""
        failure = yield self.assertFailure(
            self.send(["nobody@example.test"], message("x")), smtplib.SMTPRecipientsRefused
        )
        self.assertEqual(failure.recipients["nobody@example.test"][0], 550)

    @defer.inlineCallbacks
    def test_imap_and_pop3_login(self) -> Any:
        """The user created with add_user logs in over IMAP and POP3 and sees the message."""
        yield self.send([ALICE], message("over imap"))
        yield self.server.wait_for_messages(ALICE, 1, timeout=10)
        imap_address, pop3_address = self.server.imap_address, self.server.pop3_address

        def read_imap() -> bytes:
            client = imaplib.IMAP4(*imap_address, timeout=20)
            try:
                client.login(ALICE, PASSWORD)
                client.select("INBOX")
                _, data = client.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
                return data[0][1]
            finally:
                client.logout()

        def read_pop3() -> tuple[int, bytes]:
            client = poplib.POP3(*pop3_address, timeout=20)
            try:
                client.user(ALICE)
                client.pass_(PASSWORD)
                count, _ = client.stat()
                _, lines, _ = client.retr(1)
                return count, b"\r\n".join(lines)
            finally:
                client.quit()

        header = yield deferToThread(read_imap)
        self.assertEqual(header.strip(), b"Subject: over imap")
        count, body = yield deferToThread(read_pop3)
        self.assertEqual(count, 1)
        self.assertIn(b"Subject: over imap", body)

    @defer.inlineCallbacks
    def test_wrong_password_refused(self) -> Any:
        """A wrong password does not log in (IMAP NO)."""
        address = self.server.imap_address

        def login() -> None:
            client = imaplib.IMAP4(*address, timeout=20)
            try:
                client.login(ALICE, "wrong")
            finally:
                client.shutdown()

        yield self.assertFailure(deferToThread(login), imaplib.IMAP4.error)

    @defer.inlineCallbacks
    def test_outbound_capture(self) -> Any:
        """Submitted mail for a remote domain is captured, never sent anywhere."""
        yield self.submit(["carol@remote.test"], message("outbound", to="carol@remote.test", sender=ALICE))
        [captured] = yield self.server.wait_for_outbound(1, timeout=10)
        self.assertEqual(captured.mail_from, ALICE)
        self.assertEqual(captured.recipients, ("carol@remote.test",))
        self.assertEqual(captured.host, "mx.remote.test")
        self.assertEqual(captured.address, "192.0.2.1")
        self.assertEqual(captured.port, 25)
        self.assertEqual(captured.helo, "mx.example.test")
        self.assertEqual(email.message_from_bytes(captured.message)["Subject"], "outbound")
        self.assertEqual(self.server.resolver.lookups, ["remote.test"])
        mine = yield self.server.messages_for(ALICE)
        self.assertEqual(mine, [])

    @defer.inlineCallbacks
    def test_permanent_refusal_bounces(self) -> Any:
        """A 5xx from the fake remote fails the recipient and a DSN reaches the sender's INBOX."""
        self.server.capture.set_reply("carol@remote.test", 550, "no such user here", "5.1.1")
        yield self.submit(["carol@remote.test"], message("doomed", to="carol@remote.test", sender=ALICE))
        [bounce] = yield self.server.wait_for_messages(ALICE, 1, timeout=10)
        parsed = email.message_from_bytes(bounce)
        # RFC 3464 section 2: multipart/report; report-type=delivery-status.
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        self.assertEqual(parsed.get_param("report-type"), "delivery-status")
        self.assertIn(b"carol@remote.test", bounce)
        self.assertIn(b"5.1.1", bounce)
        self.assertEqual(self.server.capture.messages, [])
        [attempt] = self.server.capture.attempts
        self.assertEqual(attempt.recipients, ())
        self.assertEqual(attempt.rejected["carol@remote.test"].code, 550)

    @defer.inlineCallbacks
    def test_wait_timeout(self) -> Any:
        """A wait that is not satisfied in time fails with WaitTimeout saying how far it got."""
        error = yield self.assertFailure(self.server.wait_for_messages(ALICE, 1, timeout=0.01), WaitTimeout)
        self.assertIn("0 of 1", str(error))
        self.assertIn(ALICE, str(error))

    @defer.inlineCallbacks
    def test_unknown_user(self) -> Any:
        """Asking for the mail of somebody who is not a user is an error, not an empty list."""
        yield self.assertFailure(self.server.messages_for("nobody@example.test"), NoSuchUser)
        yield self.assertFailure(self.server.wait_for_messages("nobody@example.test"), NoSuchUser)

    def test_blocking_api_refused_under_trial(self) -> None:
        """The blocking API says it cannot run inside the reactor thread instead of deadlocking."""
        error = self.assertRaises(ReactorThreadError, BlockingTestServer().start)
        self.assertIn("TestServer", str(error))


class StopTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_stop_closes_everything(self) -> Any:
        """
        stop() closes the listeners and the connections clients left open,
        fails pending waits, removes its data directory, and leaves the
        reactor as it found it.
        """
        readers, writers = set(reactor.getReaders()), set(reactor.getWriters())
        server = TestServer()
        yield server.start()
        data_dir = server.service.settings.data_dir
        server.add_user(ALICE, PASSWORD)
        address = server.imap_address

        def connect() -> tuple[socket.socket, bytes]:
            sock = socket.create_connection(address, timeout=20)
            return sock, sock.recv(1024)  # the greeting: the server has the connection

        sock, greeting = yield deferToThread(connect)
        self.addCleanup(sock.close)
        self.assertTrue(greeting.startswith(b"* OK"))
        waiting = server.wait_for_messages(ALICE, 1, timeout=30)
        yield server.stop()
        yield self.assertFailure(waiting, RuntimeError)
        # Nothing of ours is left (the reactor may have added its own wakers).
        left = (set(reactor.getReaders()) - readers) | (set(reactor.getWriters()) - writers)
        self.assertEqual([s for s in left if isinstance(s, (tcp.Port, tcp.Connection))], [])
        self.assertFalse(os.path.exists(data_dir))
        self.assertRaises(RuntimeError, lambda: server.imap_address)

        def closed() -> bytes:
            """What the server sent before it closed the connection."""
            data = b""
            try:
                while chunk := sock.recv(1024):
                    data += chunk
            except ConnectionResetError:  # aborted: a TCP reset
                pass
            return data

        # The server closed it (an idle session gets its BYE first: a graceful stop).
        self.assertIn((yield deferToThread(closed)), (b"", b"* BYE Server shutting down\r\n"))
        yield server.stop()  # again: nothing to do

    @defer.inlineCallbacks
    def test_settings_and_domains(self) -> Any:
        """Domains, hostname and further settings are configurable; start twice is refused."""
        server = TestServer(
            ["one.test", "two.test"], hostname="mail.one.test", settings={"max_recipients": 3}
        )
        yield server.start()
        self.addCleanup(server.stop)
        settings = server.service.settings
        self.assertEqual(settings.domains, ("one.test", "two.test"))
        self.assertEqual(settings.hostname, "mail.one.test")
        self.assertEqual(settings.max_recipients, 3)
        self.assertEqual(server.add_user("x", PASSWORD), "x@one.test")
        yield self.assertFailure(server.start(), RuntimeError)

    @defer.inlineCallbacks
    def test_listeners_turned_off(self) -> Any:
        """
        ``settings={"smtp": [], "submission": []}`` starts neither: they used
        to listen on the defaults, 127.0.0.1:2525 and 2587, so two such test
        servers (or one beside a running server) collided.
        """
        servers = [TestServer(settings={"smtp": [], "submission": [], "lmtp": ["tcp:0:interface=127.0.0.1"]})]
        servers.append(TestServer(settings=dict(servers[0]._overrides)))
        for server in servers:
            yield server.start()
            self.addCleanup(server.stop)
            self.assertEqual((server.service.settings.smtp, server.service.settings.submission), ((), ()))
            self.assertRaises(RuntimeError, server.address, "mta")
            self.assertRaises(RuntimeError, server.address, "submission")


class FakeTests(SynchronousTestCase):
    def test_resolver_default(self) -> None:
        """Any domain resolves to one fake host, mx.<domain>; lookups are recorded."""
        resolver = FakeResolver()
        [dest] = self.successResultOf(resolver.resolve("Remote.TEST."))
        self.assertEqual(dest, Destination("mx.remote.test", "192.0.2.1", 10))
        self.assertEqual(resolver.lookups, ["Remote.TEST."])

    def test_resolver_routes_and_failures(self) -> None:
        """Configured routes, failures, literals, and no default."""
        dests = [Destination("a.test", "192.0.2.7", 5), Destination("b.test", "192.0.2.8", 10)]
        resolver = FakeResolver({"routed.test": dests}, default_address=None)
        resolver.add_failure("broken.test", NoRoute("SERVFAIL", temporary=True))
        self.assertEqual(self.successResultOf(resolver.resolve("routed.test")), dests)
        self.assertTrue(self.failureResultOf(resolver.resolve("broken.test"), NoRoute).value.temporary)
        self.assertFalse(self.failureResultOf(resolver.resolve("else.test"), NoRoute).value.temporary)
        [literal] = self.successResultOf(resolver.resolve("[192.0.2.9]"))
        self.assertEqual(literal.address, "192.0.2.9")

    def test_capture_replies(self) -> None:
        """Accepted recipients are delivered; refused ones answer as configured (RFC 5321 section 4.2.1)."""
        capture = OutboundCapture(task.Clock())
        capture.set_reply("Temp@remote.test", 451, "later")
        capture.set_reply("perm@remote.test", 550, "gone")
        result = self.successResultOf(
            capture(
                RelayRequest(
                    host="192.0.2.1",
                    port=25,
                    hostname="mx.example.test",
                    mail_from="a@example.test",
                    recipients=[
                        "ok@remote.test",
                        ("temp@remote.test", {"NOTIFY": "FAILURE"}),
                        "perm@remote.test",
                    ],
                    message=b"Subject: x\r\n\r\nx\r\n",
                )
            )
        )
        self.assertEqual(result.status("ok@remote.test"), "delivered")
        self.assertEqual(result.status("temp@remote.test"), "temporary")
        self.assertEqual(result.status("perm@remote.test"), "permanent")
        [captured] = capture.messages
        self.assertEqual(captured.recipients, ("ok@remote.test",))
        self.assertEqual(sorted(captured.rejected), ["perm@remote.test", "temp@remote.test"])
        self.assertRaises(ValueError, capture.set_reply, "x@remote.test", 250)

    def test_capture_wait(self) -> None:
        """wait_for fires when enough messages are captured, or times out on its clock."""
        clock = task.Clock()
        capture = OutboundCapture(clock)
        late = capture.wait_for(1, timeout=5)
        clock.advance(5)
        self.assertIn("0 of 1", str(self.failureResultOf(late, WaitTimeout).value))
        waiting = capture.wait_for(1, timeout=5)
        self.assertNoResult(waiting)
        capture(
            RelayRequest(
                host="192.0.2.1", hostname="h", mail_from="", recipients=["x@r.test"], message=b"m\r\n"
            )
        )
        [captured] = self.successResultOf(waiting)
        self.assertEqual(captured.message, b"m\r\n")
        self.assertEqual(clock.getDelayedCalls(), [])


class PytestTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def test_blocking_api_under_pytest(self) -> Any:
        """The pytest suite of the blocking API passes (run in a subprocess: one reactor per process)."""
        if importlib.util.find_spec("pytest") is None:
            raise SkipTest("pytest is not installed (pip install txmail[test])")

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "pytest", PYTEST_CASES, "-q", "-p", "no:cacheprovider"],
                capture_output=True,
                text=True,
                timeout=150,
                cwd=os.path.dirname(PYTEST_CASES),
            )

        done = yield deferToThread(run)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("passed", done.stdout)
        self.assertNotIn("failed", done.stdout)
