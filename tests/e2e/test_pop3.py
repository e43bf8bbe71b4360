"""
End to end: mail delivered by SMTP (or appended to the store) is downloaded
with the stdlib's poplib from the real service on loopback: USER/PASS, AUTH
PLAIN, STLS, TOP, UIDL, DELE + QUIT, DELE + a dropped connection, IN-USE,
and a 50 MB message byte-exact.
"""

from __future__ import annotations

import base64
import contextlib
import poplib
import smtplib
import socket
import ssl
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import start_server
from txmail.errors import UserExists

USER = "alice@example.test"
PASSWORD = "correct horse"
POP3_ENDPOINT = "tcp:0:interface=127.0.0.1"


class POP3TestCase(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield self.start(pop3=[POP3_ENDPOINT])

    @defer.inlineCallbacks
    def start(self, **overrides: Any) -> Any:
        server = yield start_server(self, **overrides)
        with contextlib.suppress(UserExists):  # a restart on the same data directory
            server.directory.add_user(USER, PASSWORD)
        return server

    def pop(self, server: Any = None) -> poplib.POP3:
        client = poplib.POP3(*(server or self.server).address("pop3"), timeout=20)
        self.addCleanup(_close, client)
        return client

    def login(self, server: Any = None) -> poplib.POP3:
        client = self.pop(server)
        client.user(USER)
        client.pass_(PASSWORD)
        return client

    def send(self, *bodies: bytes) -> defer.Deferred[None]:
        def run() -> None:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                for body in bodies:
                    s.sendmail("sender@remote.test", [USER], body)

        return deferToThread(run)

    @defer.inlineCallbacks
    def append(self, data: bytes, server: Any = None) -> Any:
        inbox = yield (yield (server or self.server).stores.store_for(USER)).get_mailbox("INBOX")
        uid = yield inbox.append(data)
        return uid

    @defer.inlineCallbacks
    def inbox_uids(self) -> Any:
        inbox = yield (yield self.server.stores.store_for(USER)).get_mailbox("INBOX")
        infos = yield inbox.list_messages()
        return [i.uid for i in infos], [i.flags for i in infos]


def _close(client: poplib.POP3) -> None:
    with contextlib.suppress(OSError):
        client.close()


class DownloadTests(POP3TestCase):
    @defer.inlineCallbacks
    def test_user_pass_retr_of_smtp_mail(self) -> Any:
        """Mail received over SMTP is listed and retrieved with USER/PASS, dot-stuffing undone by poplib."""
        # smtplib dot-stuffs ".dot" on the way in; the store holds ".dot".
        yield self.send(b"Subject: one\r\n\r\nHello\r\n.dot\r\n", b"Subject: two\r\n\r\nBye\r\n")

        def run() -> tuple[Any, ...]:
            client = self.login()
            count, _ = client.stat()
            _, listing, _ = client.list()
            _, lines, _ = client.retr(1)
            client.quit()
            return count, listing, lines

        count, listing, lines = yield deferToThread(run)
        self.assertEqual(count, 2)
        self.assertEqual(len(listing), 2)
        self.assertEqual(lines[-2:], [b"Hello", b".dot"])
        self.assertTrue(lines[0].startswith(b"Return-Path: <sender@remote.test>"))

    @defer.inlineCallbacks
    def test_auth_plain(self) -> Any:
        """AUTH PLAIN with an initial response (RFC 5034) logs in, and CAPA advertises it."""
        yield self.append(b"Subject: x\r\n\r\nbody\r\n")

        def run() -> tuple[Any, ...]:
            client = self.pop()
            caps = client.capa()
            token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
            response = client._shortcmd("AUTH PLAIN " + token)  # poplib has no AUTH helper
            count = client.stat()[0]
            client.quit()
            return caps, response, count

        caps, response, count = yield deferToThread(run)
        self.assertIn("SASL", caps)
        self.assertIn("PLAIN", caps["SASL"])
        self.assertIn("USER", caps)
        self.assertTrue(response.startswith(b"+OK"))
        self.assertEqual(count, 1)

    @defer.inlineCallbacks
    def test_top_and_uidl(self) -> Any:
        """TOP gives the header and n body lines; UIDL values are stable across sessions and restarts."""
        yield self.append(b"Subject: top\r\n\r\nl1\r\nl2\r\nl3\r\n")
        yield self.append(b"Subject: second\r\n\r\nx\r\n")

        def run(server: Any) -> tuple[Any, ...]:
            client = self.login(server)
            _, top, _ = client.top(1, 2)
            _, uidls, _ = client.uidl()
            one = client.uidl(2)
            client.quit()
            return top, uidls, one

        top, uidls, one = yield deferToThread(run, self.server)
        self.assertEqual(top, [b"Subject: top", b"", b"l1", b"l2"])
        self.assertEqual(len(uidls), 2)
        self.assertEqual(len({u.split()[1] for u in uidls}), 2)
        self.assertEqual(one.split()[-1], uidls[1].split()[1])
        _, again, _ = yield deferToThread(run, self.server)
        self.assertEqual(again, uidls)
        # A new server on the same data directory (a fresh store reading the
        # Maildir and its index from disk, as after a restart) keeps them.
        data_dir = self.server.settings.data_dir
        restarted = yield self.start(pop3=[POP3_ENDPOINT], data_dir=data_dir)
        _, after, _ = yield deferToThread(run, restarted)
        self.assertEqual(after, uidls)


class DeletionTests(POP3TestCase):
    @defer.inlineCallbacks
    def test_dele_quit_removes(self) -> Any:
        """DELE + QUIT removes the message from the store and from the next session."""
        first = yield self.append(b"Subject: a\r\n\r\na\r\n")
        second = yield self.append(b"Subject: b\r\n\r\nb\r\n")

        def run() -> tuple[Any, ...]:
            client = self.login()
            client.dele(1)
            client.quit()
            client = self.login()
            _, lines, _ = client.retr(1)
            count = client.stat()[0]
            client.quit()
            return lines, count

        lines, count = yield deferToThread(run)
        self.assertEqual(count, 1)
        self.assertEqual(lines, [b"Subject: b", b"", b"b"])
        uids, _ = yield self.inbox_uids()
        self.assertEqual(uids, [second])
        self.assertNotIn(first, uids)

    @defer.inlineCallbacks
    def test_dele_then_dropped_connection(self) -> Any:
        """DELE followed by a dropped connection (no QUIT) deletes nothing and sets no flag."""
        yield self.append(b"Subject: a\r\n\r\na\r\n")
        _, flags_before = yield self.inbox_uids()

        def run() -> int:
            client = self.login()
            client.dele(1)
            client.sock.shutdown(socket.SHUT_RDWR)
            client.sock.close()
            # The server notices the close and releases the maildrop.
            deadline = time.monotonic() + 10
            while True:
                try:
                    client = self.login()
                    break
                except poplib.error_proto:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            count = client.stat()[0]
            client.quit()
            return count

        count = yield deferToThread(run)
        self.assertEqual(count, 1)
        _, flags_after = yield self.inbox_uids()
        self.assertEqual(flags_after, flags_before)

    @defer.inlineCallbacks
    def test_in_use(self) -> Any:
        """A second concurrent session for the same user gets -ERR [IN-USE]."""

        def run() -> bytes:
            first = self.login()
            second = self.pop()
            second.user(USER)
            try:
                second.pass_(PASSWORD)
            except poplib.error_proto as e:
                first.quit()
                return e.args[0]
            return b"no error"

        error = yield deferToThread(run)
        self.assertTrue(error.startswith(b"-ERR [IN-USE]"), error)


class TLSTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        ca, cert, key = make_certificate(self.mktemp())
        self.ca = ca
        self.server = yield start_server(
            self, pop3=[POP3_ENDPOINT], tls_cert=cert, tls_key=key, plaintext_auth="never"
        )
        self.server.directory.add_user(USER, PASSWORD)

    @defer.inlineCallbacks
    def test_stls_then_login(self) -> Any:
        """Without TLS USER is refused with [AUTH]; after stls() it works and CAPA drops STLS."""
        inbox = yield (yield self.server.stores.store_for(USER)).get_mailbox("INBOX")
        yield inbox.append(b"Subject: tls\r\n\r\nsecret\r\n")

        def run() -> tuple[Any, ...]:
            client = poplib.POP3(*self.server.address("pop3"), timeout=20)
            try:
                before = client.capa()
                try:
                    client.user(USER)
                    refused = b""
                except poplib.error_proto as e:
                    refused = e.args[0]
                context = ssl.create_default_context(cafile=self.ca)
                client.stls(context)
                after = client.capa()
                client.user(USER)
                client.pass_(PASSWORD)
                _, lines, _ = client.retr(1)
                client.quit()
            finally:
                client.close()
            return before, refused, after, lines

        before, refused, after, lines = yield deferToThread(run)
        self.assertIn("STLS", before)
        self.assertNotIn("USER", before)
        self.assertTrue(refused.startswith(b"-ERR [AUTH]"))
        self.assertNotIn("STLS", after)
        self.assertIn("USER", after)
        self.assertEqual(lines, [b"Subject: tls", b"", b"secret"])

    @defer.inlineCallbacks
    def test_stls_pipelined_commands_discarded(self) -> Any:
        """Commands sent in the clear after STLS, before the handshake, are never answered."""

        def run() -> bytes:
            sock = socket.create_connection(self.server.address("pop3"), timeout=20)
            try:
                f = sock.makefile("rb")
                f.readline()
                sock.sendall(b"STLS\r\nQUIT\r\n")
                self.assertEqual(f.readline(), b"+OK Begin TLS negotiation\r\n")
                context = ssl.create_default_context(cafile=self.ca)
                tls = context.wrap_socket(sock, server_hostname="localhost")
                tls.sendall(b"NOOP\r\n")
                return tls.recv(1000)
            finally:
                sock.close()

        answer = yield deferToThread(run)
        # QUIT was dropped: the first answer under TLS is to NOOP (wrong state in AUTHORIZATION).
        self.assertEqual(answer, b"-ERR Command not valid in this state\r\n")


class ImplicitTLSTests(TestCase):
    @defer.inlineCallbacks
    def test_pop3s_large_message(self) -> Any:
        """On an ssl: endpoint (port 995 style) a 2 MB message streams byte-exact through TLS."""
        ca, cert, key = make_certificate(self.mktemp())
        server = yield start_server(
            self, pop3=["ssl:0:interface=127.0.0.1"], tls_cert=cert, tls_key=key, plaintext_auth="never"
        )
        server.directory.add_user(USER, PASSWORD)
        message = b"Subject: big\r\n\r\n" + b".line of text\r\n" * (2 * 1024 * 1024 // 15)
        inbox = yield (yield server.stores.store_for(USER)).get_mailbox("INBOX")
        yield inbox.append(message)

        def run() -> tuple[Any, bytes]:
            context = ssl.create_default_context(cafile=ca)
            client = poplib.POP3_SSL(*server.address("pop3"), context=context, timeout=20)
            try:
                caps = client.capa()
                client.user(USER)
                client.pass_(PASSWORD)
                _, lines, _ = client.retr(1)
                client.quit()
            finally:
                client.close()
            return caps, b"\r\n".join(lines) + b"\r\n"

        caps, got = yield deferToThread(run)
        self.assertNotIn("STLS", caps)
        self.assertIn("USER", caps)
        self.assertEqual(got, message)


class LargeMessageTests(POP3TestCase):
    @defer.inlineCallbacks
    def test_50mb_message_byte_exact(self) -> Any:
        """A 50 MB message with dot-leading lines downloads byte-exact over poplib."""
        line = b"." + b"x" * 70 + b"\r\n" + b"y" * 100 + b"\r\n"
        body = line * (50 * 1024 * 1024 // len(line))
        message = b"Subject: big\r\n\r\n" + body
        yield self.append(message)

        def run() -> tuple[int, bool]:
            client = self.login()
            _, lines, octets = client.retr(1)
            client.quit()
            got = b"\r\n".join(lines) + b"\r\n"
            return octets, got == message

        octets, same = yield deferToThread(run)
        self.assertTrue(same)
        self.assertEqual(octets, len(message))
