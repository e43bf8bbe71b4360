"""
End to end: the real service on loopback, driven by smtplib and raw sockets.

A user receives mail over SMTP into their Maildir; submission requires AUTH and
then relays (into the queue); STARTTLS, limits and smuggling defences hold on
a real socket.
"""

from __future__ import annotations

import os
import smtplib
import socket
import ssl
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import maildir_files, start_server

PASSWORD = "correct horse"


def _recv_until(sock: socket.socket, count: int, timeout: float = 10.0) -> list[bytes]:
    """Read until *count* complete SMTP replies (final lines) have arrived."""
    sock.settimeout(timeout)
    buf = b""
    replies: list[bytes] = []
    while len(replies) < count:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if (len(line) >= 4 and line[3:4] == b" ") or len(line) < 4:
                replies.append(line)
    return replies


class ReceiveTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.server.directory.add_user("bob@example.test", PASSWORD)
        self.mta = self.server.address("mta")
        self.submission = self.server.address("submission")

    def test_delivery_lands_in_maildir_new(self) -> Any:
        """A message sent to a local user is a file in their Maildir new/ with trace headers."""

        def send() -> None:
            with smtplib.SMTP(*self.mta) as s:
                s.sendmail(
                    "sender@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nHello\r\n..dot\r\n"
                )

        d = deferToThread(send)

        def check(_: Any) -> None:
            files = maildir_files(self.server, "alice@example.test")
            self.assertEqual(len(files), 1)
            with open(files[0], "rb") as f:
                data = f.read()
            self.assertTrue(data.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: from "))
            self.assertIn(b"by mx.example.test", data)
            self.assertTrue(data.endswith(b"Subject: hi\r\n\r\nHello\r\n..dot\r\n"))
            self.assertEqual(maildir_files(self.server, "alice@example.test", "tmp"), [])

        return d.addCallback(check)

    def test_relay_refused_on_mta(self) -> Any:
        """Port 25 refuses non-local recipients with 554 5.7.1, whatever the address trick."""
        tricks = [
            "victim@remote.test",
            "@example.test:victim@remote.test",
            "victim%remote.test@example.test",
            "remote.test!victim@example.test",
            '"victim@remote.test"@example.test',
            "victim@[127.0.0.1]",
        ]

        def probe() -> list[int]:
            codes = []
            with smtplib.SMTP(*self.mta) as s:
                s.ehlo("client.test")
                for rcpt in tricks:
                    s.mail("sender@remote.test")
                    code, _ = s.rcpt(rcpt)
                    codes.append(code)
                    s.rset()
            return codes

        def check(codes: list[int]) -> None:
            for rcpt, code in zip(tricks, codes, strict=True):
                self.assertGreaterEqual(code, 500, rcpt)
            self.assertEqual(codes[0], 554)
            self.assertEqual(self.successResultOf(self.server.queue.list_entries()), [])

        return deferToThread(probe).addCallback(check)

    def test_unknown_local_user(self) -> Any:
        """An unknown local recipient gets 550 and nothing is stored."""

        def probe() -> int:
            with smtplib.SMTP(*self.mta) as s:
                s.mail("sender@remote.test")
                return s.rcpt("nobody@example.test")[0]

        return deferToThread(probe).addCallback(self.assertEqual, 550)

    def test_submission_requires_auth(self) -> Any:
        """MAIL before AUTH on submission gets 530 5.7.0."""

        def probe() -> tuple[int, bytes]:
            with smtplib.SMTP(*self.submission) as s:
                s.ehlo("client.test")
                return s.mail("alice@example.test")

        def check(reply: tuple[int, bytes]) -> None:
            self.assertEqual(reply[0], 530)
            self.assertIn(b"5.7.0", reply[1])

        return deferToThread(probe).addCallback(check)

    def test_submission_auth_then_relay_queues(self) -> Any:
        """An authenticated user relays to a remote address: it waits in the queue, local copies land."""
        from twisted.logger import formatEvent, globalLogPublisher

        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def send() -> None:
            with smtplib.SMTP(*self.submission) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                s.sendmail(
                    "alice@example.test",
                    ["friend@remote.test", "bob@example.test"],
                    b"Subject: out\r\n\r\nbye\r\n",
                )

        d = deferToThread(send)

        def check(_: Any) -> None:
            entries = self.successResultOf(self.server.queue.list_entries())
            self.assertEqual(len(entries), 1)
            self.assertEqual(list(entries[0].recipients), ["friend@remote.test"])
            self.assertEqual(entries[0].envelope.authenticated_user, "alice@example.test")
            self.assertEqual(len(maildir_files(self.server, "bob@example.test")), 1)
            # Logged: who authenticated; never the password.
            text = "\n".join(formatEvent(e) + repr(e) for e in events)
            self.assertIn("alice@example.test", text)
            self.assertNotIn(PASSWORD, text)
            import base64

            plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode()).decode()
            self.assertNotIn(plain, text)

        return d.addCallback(check)

    def test_submission_dsn_parameters_are_queued(self) -> Any:
        """DSN is advertised; RET/ENVID/NOTIFY/ORCPT given with smtplib reach the queued envelope, normalised."""

        def send() -> bool:
            with smtplib.SMTP(*self.submission) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                offered = s.has_extn("dsn")
                s.mail("alice@example.test", options=["ret=hdrs", "ENVID=Q+2B1"])
                s.rcpt(
                    "friend@remote.test",
                    options=["NOTIFY=failure,delay", "ORCPT=rfc822;Friend+40remote.test"],
                )
                s.rcpt("other@remote.test")
                code, _ = s.data(b"Subject: dsn\r\n\r\nbody\r\n")
                self.assertEqual(code, 250)
                code, text = s.rcpt("x@remote.test", options=["NOTIFY=NEVER,SUCCESS"])
                self.assertEqual(code, 503)  # no MAIL any more: the transaction ended
                s.mail("alice@example.test")
                code, text = s.rcpt("x@remote.test", options=["NOTIFY=NEVER,SUCCESS"])
                self.assertEqual((code, text[:5]), (501, b"5.5.4"))
                return offered

        def check(offered: bool) -> None:
            self.assertTrue(offered)
            entries = self.successResultOf(self.server.queue.list_entries())
            self.assertEqual(len(entries), 1)
            envelope = entries[0].envelope
            self.assertEqual(envelope.mail_params, {"RET": "HDRS", "ENVID": "Q+2B1"})
            self.assertEqual(envelope.rcpt_to, ("friend@remote.test", "other@remote.test"))
            self.assertEqual(
                list(envelope.rcpt_params),
                [{"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;Friend+40remote.test"}, {}],
            )

        return deferToThread(send).addCallback(check)

    def test_submission_sender_must_be_owned(self) -> Any:
        """An authenticated user may send as herself or her alias, not as someone else (553 5.7.1)."""
        self.server.directory.add_alias("team@example.test", ["alice@example.test"])

        def send() -> tuple[int, bytes]:
            with smtplib.SMTP(*self.submission) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                try:
                    s.sendmail("bob@example.test", ["friend@remote.test"], b"Subject: forged\r\n\r\nx\r\n")
                except smtplib.SMTPSenderRefused as e:
                    refused = (e.smtp_code, e.smtp_error)
                else:  # pragma: no cover - the assertion below reports it
                    refused = (250, b"")
                s.sendmail("alice@example.test", ["friend@remote.test"], b"Subject: own\r\n\r\nx\r\n")
                s.sendmail("team@example.test", ["friend@remote.test"], b"Subject: alias\r\n\r\nx\r\n")
                s.sendmail("<>", ["friend@remote.test"], b"Subject: null\r\n\r\nx\r\n")
            return refused

        def check(refused: tuple[int, bytes]) -> None:
            self.assertEqual(refused, (553, b"5.7.1 Sender address rejected: not owned by user"))
            entries = self.successResultOf(self.server.queue.list_entries())
            self.assertEqual(
                sorted(e.envelope.mail_from for e in entries), ["", "alice@example.test", "team@example.test"]
            )

        return deferToThread(send).addCallback(check)

    def test_mta_sender_not_checked(self) -> Any:
        """Port 25 takes any sender address for a local recipient (the ownership rule is submission's)."""

        def send() -> None:
            with smtplib.SMTP(*self.mta) as s:
                s.sendmail("bob@example.test", ["alice@example.test"], b"Subject: hi\r\n\r\nx\r\n")

        def check(_: Any) -> None:
            self.assertEqual(len(maildir_files(self.server, "alice@example.test")), 1)

        return deferToThread(send).addCallback(check)

    def test_wrong_password(self) -> Any:
        """A wrong password gets 535 and does not authenticate."""

        def probe() -> Any:
            with smtplib.SMTP(*self.submission) as s:
                s.ehlo("client.test")
                try:
                    s.login("alice@example.test", "wrong")
                except smtplib.SMTPAuthenticationError as e:
                    return e.smtp_code
            return None

        return deferToThread(probe).addCallback(self.assertEqual, 535)

    def test_pipelining(self) -> Any:
        """A whole pipelined transaction in one write gets every reply in order."""

        def probe() -> list[bytes]:
            with socket.create_connection(self.mta) as sock:
                _recv_until(sock, 1)
                sock.sendall(b"EHLO client.test\r\n")
                _recv_until(sock, 1)
                sock.sendall(
                    b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
                    b"RCPT TO:<nobody@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
                )
                replies = _recv_until(sock, 5)
                sock.sendall(b"Subject: p\r\n\r\npipelined\r\n.\r\nQUIT\r\n")
                replies += _recv_until(sock, 2)
                return replies

        def check(replies: list[bytes]) -> None:
            codes = [r[:3] for r in replies]
            self.assertEqual(codes, [b"250", b"250", b"550", b"250", b"354", b"250", b"221"])
            self.assertEqual(len(maildir_files(self.server, "alice@example.test")), 1)
            self.assertEqual(len(maildir_files(self.server, "bob@example.test")), 1)

        return deferToThread(probe).addCallback(check)

    def test_twenty_megabyte_message(self) -> Any:
        """A 20 MB message arrives byte-exact."""
        line = b"x" * 998 + b"\r\n"
        body = b"Subject: big\r\n\r\n" + line * (20 * 1024 * 1024 // len(line))

        def send() -> None:
            with smtplib.SMTP(*self.mta) as s:
                s.sendmail("a@remote.test", ["alice@example.test"], body)

        def check(_: Any) -> None:
            (path,) = maildir_files(self.server, "alice@example.test")
            with open(path, "rb") as f:
                data = f.read()
            self.assertTrue(data.endswith(body))
            self.assertLess(len(data) - len(body), 1000)

        return deferToThread(send).addCallback(check)

    def test_long_line_gets_500_and_connection_survives(self) -> Any:
        """A command line over 1000 octets gets 500 5.5.2 and the session goes on."""

        def probe() -> list[bytes]:
            with socket.create_connection(self.mta) as sock:
                _recv_until(sock, 1)
                sock.sendall(b"EHLO " + b"a" * 2000 + b"\r\n")
                first = _recv_until(sock, 1)
                sock.sendall(b"NOOP\r\n")
                return first + _recv_until(sock, 1)

        def check(replies: list[bytes]) -> None:
            self.assertTrue(replies[0].startswith(b"500 5.5.2"), replies)
            self.assertTrue(replies[1].startswith(b"250"), replies)

        return deferToThread(probe).addCallback(check)

    def test_smuggling_bare_lf_dot_does_not_end_data(self) -> Any:
        """Only CRLF.CRLF ends DATA: a smuggled second message is never a transaction of its own."""
        smuggled = (
            b"Subject: outer\r\n\r\nbody\n.\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
        )

        def probe() -> list[bytes]:
            with socket.create_connection(self.mta) as sock:
                _recv_until(sock, 1)
                sock.sendall(
                    b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
                )
                replies = _recv_until(sock, 4)
                sock.sendall(smuggled)
                replies += _recv_until(sock, 1)
                sock.sendall(b"QUIT\r\n")
                replies += _recv_until(sock, 1)
                return replies

        def check(replies: list[bytes]) -> None:
            self.assertEqual([r[:3] for r in replies[:3]], [b"250", b"250", b"250"])
            self.assertEqual(replies[3][:3], b"354")
            self.assertEqual(maildir_files(self.server, "bob@example.test"), [])
            self.assertEqual(replies[-1][:3], b"221")

        return deferToThread(probe).addCallback(check)

    def test_recipient_limit(self) -> Any:
        """Recipients beyond the limit get 452 4.5.3; the accepted ones still get the message."""

        def probe() -> list[int]:
            with smtplib.SMTP(*self.mta) as s:
                s.ehlo("c")
                s.mail("a@remote.test")
                codes = [s.rcpt("alice@example.test")[0] for _ in range(101)]
                s.data(b"Subject: many\r\n\r\nx\r\n")
                return codes

        def check(codes: list[int]) -> None:
            self.assertEqual(codes[:100], [250] * 100)
            self.assertEqual(codes[100], 452)
            self.assertEqual(len(maildir_files(self.server, "alice@example.test")), 1)

        return deferToThread(probe).addCallback(check)


class SuccessNoticeTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.server.directory.add_user("bob@example.test", PASSWORD)

    @defer.inlineCallbacks
    def test_notify_success_for_local_delivery(self) -> Any:
        """RFC 3461: RCPT NOTIFY=SUCCESS to a local user gives the (local) sender a 'delivered' DSN."""

        def send() -> None:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                s.ehlo()
                s.mail("bob@example.test", options=["ENVID=trip-42"])
                s.rcpt("alice@example.test", options=["NOTIFY=SUCCESS"])
                s.data(b"Subject: ping\r\n\r\nHello\r\n")

        yield deferToThread(send)
        self.assertEqual(len(maildir_files(self.server, "alice@example.test")), 1)
        (notice,) = maildir_files(self.server, "bob@example.test")
        with open(notice, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <>\r\n"), data[:200])
        self.assertIn(b"multipart/report", data)
        self.assertIn(b"Action: delivered", data)
        self.assertIn(b"Original-Envelope-Id: trip-42", data)
        self.assertIn(b"Final-Recipient: rfc822;alice@example.test", data)


class LimitsTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, max_message_size=10000)
        self.server.directory.add_user("alice@example.test", PASSWORD)

    def test_size_limit_enforced_while_streaming(self) -> Any:
        """A message over the size limit gets 552 and is not stored; the session continues."""

        def probe() -> tuple[int, int]:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                s.ehlo("c")
                s.mail("a@remote.test")
                s.rcpt("alice@example.test")
                code, _ = s.data(b"Subject: big\r\n\r\n" + b"y" * 20000 + b"\r\n")
                return code, s.noop()[0]

        def check(codes: tuple[int, int]) -> None:
            self.assertEqual(codes, (552, 250))
            self.assertEqual(maildir_files(self.server, "alice@example.test"), [])
            # Only the empty files made ahead of need remain: nothing of the
            # refused message is left behind.
            spool = os.path.join(self.server.settings.data_dir, "spool")
            sizes = [os.path.getsize(os.path.join(spool, n)) for n in os.listdir(spool)]
            self.assertEqual([s for s in sizes if s], [])

        return deferToThread(probe).addCallback(check)

    def test_size_declared_too_big(self) -> Any:
        """MAIL FROM with SIZE over the limit is refused at once with 552."""

        def probe() -> int:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                s.ehlo("c")
                return s.mail("a@remote.test", ["SIZE=20000"])[0]

        return deferToThread(probe).addCallback(self.assertEqual, 552)


class TLSTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        self.server = yield start_server(
            self,
            tls_cert=cert,
            tls_key=key,
            plaintext_auth="never",
            submission=["tcp:0:interface=127.0.0.1", "ssl:0:interface=127.0.0.1"],
        )
        self.server.directory.add_user("alice@example.test", PASSWORD)

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.ca)
        ctx.check_hostname = False
        return ctx

    def test_starttls_then_auth(self) -> Any:
        """With plaintext auth off, AUTH is offered only after STARTTLS, and then works."""

        def probe() -> tuple[bool, bool, bool]:
            with smtplib.SMTP(*self.server.address("submission")) as s:
                s.ehlo("c")
                before = s.has_extn("auth")
                starttls = s.has_extn("starttls")
                s.starttls(context=self.client_context())
                s.ehlo("c")
                after = s.has_extn("auth")
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["alice@example.test"], b"Subject: tls\r\n\r\nx\r\n")
            return before, starttls, after

        def check(flags: tuple[bool, bool, bool]) -> None:
            self.assertEqual(flags, (False, True, True))
            (path,) = maildir_files(self.server, "alice@example.test")
            with open(path, "rb") as f:
                self.assertIn(b"ESMTPSA", f.read())

        return deferToThread(probe).addCallback(check)

    def test_implicit_tls_submission(self) -> Any:
        """An ssl: submission endpoint speaks TLS from the first byte, with AUTH offered at once."""

        def probe() -> tuple[bool, bool]:
            host, port = self.server.address("submission", 1)
            with smtplib.SMTP_SSL(host, port, context=self.client_context()) as s:
                s.ehlo("c")
                offered = (s.has_extn("auth"), s.has_extn("starttls"))
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["alice@example.test"], b"Subject: 465\r\n\r\nx\r\n")
            return offered

        def check(offered: tuple[bool, bool]) -> None:
            self.assertEqual(offered, (True, False))
            (path,) = maildir_files(self.server, "alice@example.test")
            with open(path, "rb") as f:
                self.assertIn(b"ESMTPSA", f.read())

        return deferToThread(probe).addCallback(check)

    def test_starttls_injection_discarded(self) -> Any:
        """Commands pipelined after STARTTLS in the same packet are never executed."""

        def probe() -> list[bytes]:
            raw = socket.create_connection(self.server.address("mta"))
            _recv_until(raw, 1)
            raw.sendall(b"EHLO c\r\n")
            _recv_until(raw, 1)
            raw.sendall(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\n")
            first = _recv_until(raw, 1)
            tls = self.client_context().wrap_socket(raw, server_hostname="localhost")
            # The injected MAIL must not be answered inside TLS; a fresh
            # MAIL without EHLO gets 503 (state was reset), not 250.
            tls.sendall(b"NOOP\r\nMAIL FROM:<a@remote.test>\r\n")
            replies = first + _recv_until(tls, 2)
            tls.close()
            return replies

        def check(replies: list[bytes]) -> None:
            self.assertEqual(replies[0][:3], b"220")
            self.assertEqual(replies[1][:3], b"250")  # NOOP, not a reply to the injected MAIL
            self.assertEqual(replies[2][:3], b"503")

        return deferToThread(probe).addCallback(check)


def _scram_client_login(sock: socket.socket, username: str, password: str) -> list[bytes]:
    """Run AUTH SCRAM-SHA-256 (RFC 5802, RFC 7677) as a client over *sock*; return the replies."""
    import base64
    import hashlib
    import hmac
    import secrets

    nonce = base64.b64encode(secrets.token_bytes(18)).decode()
    first_bare = f"n={username},r={nonce}"
    sock.sendall(b"AUTH SCRAM-SHA-256 " + base64.b64encode(("n,," + first_bare).encode()) + b"\r\n")
    (reply,) = _recv_until(sock, 1)
    replies = [reply]
    server_first = base64.b64decode(reply[4:]).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{without_proof},p={base64.b64encode(proof).decode()}"
    sock.sendall(base64.b64encode(final.encode()) + b"\r\n")
    (reply,) = _recv_until(sock, 1)
    replies.append(reply)
    if reply.startswith(b"334 "):
        server_final = base64.b64decode(reply[4:]).decode()
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        expected = base64.b64encode(hmac.digest(server_key, auth_message, "sha256")).decode()
        assert server_final == f"v={expected}", server_final
        sock.sendall(b"\r\n")
        replies += _recv_until(sock, 1)
    return replies


class ScramTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self)
        self.server.directory.add_user("alice@example.test", PASSWORD)

    def test_scram_sha_256_login(self) -> Any:
        """A SCRAM-SHA-256 client authenticates on submission and verifies the server's signature."""

        def probe() -> list[bytes]:
            with socket.create_connection(self.server.address("submission")) as sock:
                _recv_until(sock, 1)
                sock.sendall(b"EHLO c\r\n")
                _recv_until(sock, 1)
                return _scram_client_login(sock, "alice@example.test", PASSWORD)

        def check(replies: list[bytes]) -> None:
            self.assertEqual([r[:3] for r in replies], [b"334", b"334", b"235"])

        return deferToThread(probe).addCallback(check)

    def test_scram_wrong_password(self) -> Any:
        """A SCRAM client with the wrong password gets 535."""

        def probe() -> list[bytes]:
            with socket.create_connection(self.server.address("submission")) as sock:
                _recv_until(sock, 1)
                sock.sendall(b"EHLO c\r\n")
                _recv_until(sock, 1)
                return _scram_client_login(sock, "alice@example.test", "wrong")

        def check(replies: list[bytes]) -> None:
            self.assertEqual(replies[-1][:3], b"535")

        return deferToThread(probe).addCallback(check)
