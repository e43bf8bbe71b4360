"""
Live change (issue 15) with the real server on 127.0.0.1 port 0 and
stdlib clients:

* a reload (``MailServer.reload``, what ``SIGHUP`` does) keeps open IMAP
  and SMTP sessions working, and applies the new configuration file to
  the next connections;
* a certificate replaced on disk is used by the next TLS handshakes
  (implicit TLS and STARTTLS/STLS), while a TLS session already open goes
  on with its own;
* users and aliases added to or removed from the users file are seen;
* a broken configuration file changes nothing and is logged; a key that
  cannot change live is reported as needing a restart;
* a graceful stop lets a DATA in progress finish with 250, answers idle
  sessions 421 / -ERR / BYE, and ends within ``shutdown_timeout``, also
  when a client never finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import ssl
import time
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import maildir_files
from txmail.config import load_config
from txmail.directory import FileDirectory
from txmail.service import MailServer, build_service

USER = "alice@example.test"
PASSWORD = "live secret"


def message(subject: str, to: str = USER) -> bytes:
    return f"From: <bob@remote.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\r\nbody\r\n".encode()


def no_verify() -> ssl.SSLContext:
    """A client context that accepts any certificate (the test compares fingerprints itself)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fingerprint(sock: Any) -> str:
    """The SHA-256 of the certificate the server showed on the TLS socket *sock*."""
    return hashlib.sha256(sock.getpeercert(binary_form=True)).hexdigest()


def file_fingerprint(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        pem = f.read().decode()
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


class LineClient:
    """A raw line client on a blocking socket (replies read one line at a time)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.file = self.sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, data: bytes) -> bytes:
        self.send(data)
        return self.reply()

    def reply(self) -> bytes:
        """One SMTP reply (its last line)."""
        while True:
            line = self.line()
            if len(line) < 4 or line[3:4] != b"-":
                return line

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


class LiveCase(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        self.config_path = os.path.abspath(self.mktemp())
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def write_config(self, text: str) -> None:
        with open(self.config_path + ".tmp", "w") as f:
            f.write(text)
        os.replace(self.config_path + ".tmp", self.config_path)

    @defer.inlineCallbacks
    def start(self, config: str = "", **overrides: Any) -> Any:
        """Start the server on the configuration file (*config*) and *overrides*; reloads read the file again."""
        values: dict[str, Any] = {
            "data_dir": self.data_dir,
            "hostname": "mx.example.test",
            "domains": ["example.test"],
            "smtp": ["tcp:0:interface=127.0.0.1"],
            "submission": ["tcp:0:interface=127.0.0.1"],
            "outbound_enabled": False,
        }
        values.update(overrides)
        self.write_config(config)
        server: MailServer = build_service(load_config(self.config_path, values), reactor=reactor)
        server.config_loader = lambda: load_config(self.config_path, values)
        server.startService()
        self.addCleanup(server.stopService)
        yield server.when_listening()
        return server

    def port(self, server: MailServer, role: str) -> int:
        return server.address(role)[1]

    def logged(self, fragment: str) -> list[str]:
        from twisted.logger import formatEvent

        return [text for text in (formatEvent(e) for e in self.events) if fragment in text]


class ReloadTests(LiveCase):
    @defer.inlineCallbacks
    def test_sessions_survive_a_reload(self) -> None:
        """An IMAP session and an SMTP transaction open across a reload go on; new sessions get the new limits."""
        server = yield self.start("[smtp]\nmax_message_size = 100000\n", imap=["tcp:0:interface=127.0.0.1"])
        server.directory.add_user(USER, PASSWORD)
        smtp_port, imap_port = self.port(server, "mta"), self.port(server, "imap")

        def open_sessions() -> tuple[Any, Any]:
            imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=20)
            imap.login(USER, PASSWORD)
            imap.select("INBOX")
            smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=20)
            smtp.ehlo()
            smtp.mail("bob@remote.test")
            smtp.rcpt(USER)
            return imap, smtp

        imap, smtp = yield deferToThread(open_sessions)
        self.addCleanup(lambda: [c.close() for c in (imap.sock, smtp.sock) if c is not None])
        self.write_config("[smtp]\nmax_message_size = 200000\n")
        report = yield server.reload()
        self.assertEqual(report.changed, ("[smtp] max_message_size",))
        self.assertEqual(report.errors, ())

        def go_on() -> tuple[Any, Any, Any]:
            code, _ = smtp.data(message("across a reload"))
            smtp.quit()
            imap.noop()
            status = imap.status("INBOX", "(MESSAGES)")
            imap.logout()
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as fresh:
                fresh.ehlo()
                size = fresh.esmtp_features["size"]
            return code, status, size

        code, status, size = yield deferToThread(go_on)
        self.assertEqual(code, 250)
        self.assertIn(b"MESSAGES 1", status[1][0])
        self.assertEqual(size, "200000")
        self.assertEqual(len(maildir_files(server, USER)), 1)

    @defer.inlineCallbacks
    def test_certificate_reload(self) -> None:
        """After the certificate files are replaced and reloaded, new handshakes (IMAP, SMTP, POP3, JMAP) show the new one; an open TLS session keeps working."""
        certs = os.path.abspath(self.mktemp())
        _, cert_a, key_a = make_certificate(os.path.join(certs, "a"))
        _, cert_b, key_b = make_certificate(os.path.join(certs, "b"))
        cert, key = os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem")
        shutil.copy(cert_a, cert)
        shutil.copy(key_a, key)
        server = yield self.start(
            f'[tls]\ncert = "{cert}"\nkey = "{key}"\n',
            imap=["ssl:0:interface=127.0.0.1"],
            pop3=["tcp:0:interface=127.0.0.1"],
            web=["ssl:0:interface=127.0.0.1"],
        )
        server.directory.add_user(USER, PASSWORD)
        smtp_port, imap_port, pop3_port, web_port = (
            self.port(server, r) for r in ("mta", "imap", "pop3", "web")
        )

        def seen() -> dict[str, str]:
            """The certificate each TLS listener shows to a new connection."""
            out = {}
            imap = imaplib.IMAP4_SSL("127.0.0.1", imap_port, ssl_context=no_verify(), timeout=20)
            out["imap"] = fingerprint(imap.sock)
            imap.logout()
            smtp = smtplib.SMTP("127.0.0.1", smtp_port, timeout=20)
            smtp.starttls(context=no_verify())
            out["smtp"] = fingerprint(smtp.sock)
            smtp.quit()
            pop = poplib.POP3("127.0.0.1", pop3_port, timeout=20)
            pop.stls(context=no_verify())
            out["pop3"] = fingerprint(pop.sock)
            pop.quit()
            with no_verify().wrap_socket(
                socket.create_connection(("127.0.0.1", web_port), timeout=20)
            ) as web:
                out["web"] = fingerprint(web)
            return out

        a, b = file_fingerprint(cert_a), file_fingerprint(cert_b)
        self.assertNotEqual(a, b)
        before = yield deferToThread(seen)
        self.assertEqual(before, {"imap": a, "smtp": a, "pop3": a, "web": a})

        def open_session() -> Any:
            imap = imaplib.IMAP4_SSL("127.0.0.1", imap_port, ssl_context=no_verify(), timeout=20)
            imap.login(USER, PASSWORD)
            return imap

        old = yield deferToThread(open_session)
        # What certbot's renewal does: new files in place, then the deploy hook reloads.
        shutil.copy(cert_b, cert + ".new")
        shutil.copy(key_b, key + ".new")
        os.replace(cert + ".new", cert)
        os.replace(key + ".new", key)
        report = yield server.reload()
        self.assertIn("tls", report.reloaded)
        after = yield deferToThread(seen)
        self.assertEqual(after, {"imap": b, "smtp": b, "pop3": b, "web": b})

        def still_works() -> tuple[str, str]:
            typ, _ = old.select("INBOX")
            result = (typ, fingerprint(old.sock))
            old.logout()
            return result

        typ, old_fingerprint = yield deferToThread(still_works)
        self.assertEqual((typ, old_fingerprint), ("OK", a))

    @defer.inlineCallbacks
    def test_bad_certificate_keeps_the_old_one(self) -> None:
        """A key that does not match the certificate fails the reload; handshakes go on with the old certificate."""
        certs = os.path.abspath(self.mktemp())
        _, cert_a, key_a = make_certificate(os.path.join(certs, "a"))
        _, _, key_b = make_certificate(os.path.join(certs, "b"))
        cert, key = os.path.join(certs, "cert.pem"), os.path.join(certs, "key.pem")
        shutil.copy(cert_a, cert)
        shutil.copy(key_a, key)
        server = yield self.start(f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
        shutil.copy(key_b, key)  # half a renewal: the key without its certificate
        report = yield server.reload()
        self.assertFalse(report.ok)
        self.assertIn("invalid TLS certificate or key", report.errors[0])
        self.assertTrue(self.logged("reload failed; the running configuration is kept"))

        def shown() -> str:
            smtp = smtplib.SMTP("127.0.0.1", self.port(server, "mta"), timeout=20)
            smtp.starttls(context=no_verify())
            found = fingerprint(smtp.sock)
            smtp.quit()
            return found

        self.assertEqual((yield deferToThread(shown)), file_fingerprint(cert_a))

    @defer.inlineCallbacks
    def test_users_and_aliases(self) -> None:
        """A user and an alias added to the users file work after a reload; a removed user can no longer log in."""
        server = yield self.start(imap=["tcp:0:interface=127.0.0.1"])
        server.directory.add_user(USER, PASSWORD)
        imap_port, smtp_port = self.port(server, "imap"), self.port(server, "mta")
        # Another process (the txmail CLI) changes the file.
        other = FileDirectory(server.settings.path("users.json"), local_domains=["example.test"])
        other.add_user("bob@example.test", "bob secret")
        other.add_alias("team@example.test", ["bob@example.test"])
        other.delete_user(USER)
        report = yield server.reload()
        self.assertIn("users", report.reloaded)

        def use() -> tuple[str, Any, str]:
            imap = imaplib.IMAP4("127.0.0.1", imap_port, timeout=20)
            typ, _ = imap.login("bob@example.test", "bob secret")
            imap.logout()
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=20) as smtp:
                refused = smtp.sendmail(
                    "carol@remote.test", ["team@example.test"], message("team", "team@example.test")
                )
            gone = imaplib.IMAP4("127.0.0.1", imap_port, timeout=20)
            try:
                gone.login(USER, PASSWORD)
                alice = "OK"
            except imaplib.IMAP4.error:
                alice = "NO"
            gone.logout()
            return typ, refused, alice

        typ, refused, alice = yield deferToThread(use)
        self.assertEqual((typ, refused, alice), ("OK", {}, "NO"))
        self.assertEqual(len(maildir_files(server, "bob@example.test")), 1)

    @defer.inlineCallbacks
    def test_broken_config_keeps_the_old_one(self) -> None:
        """A configuration file that does not parse, or does not validate, changes nothing and is logged."""
        server = yield self.start("[smtp]\nmax_recipients = 5\n")
        server.directory.add_user(USER, PASSWORD)
        for broken in ("[smtp\nmax_recipients = 7\n", "[smtp]\nmax_recipients = 7\nnot_a_key = 1\n"):
            self.write_config(broken)
            report = yield server.reload()
            self.assertFalse(report.ok)
            self.assertEqual((report.changed, report.needs_restart), ((), ()))
            self.assertEqual(server.settings.max_recipients, 5)
        self.assertEqual(
            len(self.logged("the configuration is invalid; the running configuration is kept")), 2
        )
        errors = [e for e in self.events if "invalid" in str(e.get("log_format", ""))]
        self.assertEqual({e["log_level"].name for e in errors}, {"error"})

        def rcpts() -> list[int]:
            with smtplib.SMTP("127.0.0.1", self.port(server, "mta"), timeout=20) as smtp:
                smtp.ehlo()
                smtp.mail("bob@remote.test")
                return [smtp.rcpt(f"alice+{n}@example.test")[0] for n in range(6)]

        codes = yield deferToThread(rcpts)
        self.assertEqual(codes, [250] * 5 + [452])  # the old limit of 5 still holds

    @defer.inlineCallbacks
    def test_restart_keys_are_reported(self) -> None:
        """Keys that cannot change live are logged as needing a restart and keep their running values."""
        server = yield self.start()
        port = self.port(server, "mta")
        self.write_config('[server]\nthreads = 3\n[store]\nbackend = "memory"\n[smtp]\nmax_recipients = 2\n')
        report = yield server.reload()
        self.assertEqual(report.changed, ("[smtp] max_recipients",))
        self.assertEqual(set(report.needs_restart), {"[server] threads", "[store] backend"})
        self.assertTrue(self.logged("needs a restart: [server] threads"))
        self.assertTrue(self.logged("needs a restart: [store] backend"))
        self.assertEqual((server.settings.threads, server.settings.store_backend), (8, "maildir"))
        self.assertEqual(server.settings.max_recipients, 2)
        # Reported again at the next reload until restarted.
        report = yield server.reload()
        self.assertEqual(set(report.needs_restart), {"[server] threads", "[store] backend"})
        self.assertEqual(report.changed, ())
        self.assertEqual(self.port(server, "mta"), port)

    @defer.inlineCallbacks
    def test_listen_change_is_reported(self) -> None:
        """A new listen endpoint is reported as needing a restart; the server stays as it was."""
        server = yield self.start()
        self.write_config('[imap]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
        report = yield server.reload()
        self.assertEqual(report.needs_restart, ("[imap] listen",))
        self.assertEqual(server.settings.imap, ())
        self.assertEqual(server.listeners_for("imap"), [])

    @defer.inlineCallbacks
    def test_policy_reload(self) -> None:
        """A [policy.limits] change applies to the next connections; the connection open before is left alone."""
        off = "spf = false\ndkim = false\narc = false\ndmarc = false\niprev = false\ntrusted_networks = []\n"
        server = yield self.start(f"[policy]\n{off}")
        port = self.port(server, "mta")
        first = yield deferToThread(LineClient, port)
        self.addCleanup(first.close)
        self.assertEqual((yield deferToThread(first.line))[:3], b"220")
        self.write_config(f"[policy]\n{off}[policy.limits]\nmax_connections_per_client = 1\n")
        report = yield server.reload()
        self.assertEqual(report.changed, ("[policy]/[dkim]/[srs]/[arc]",))
        self.assertIn("policy", report.reloaded)

        def connect_twice() -> tuple[bytes, bytes]:
            second, third = LineClient(port), LineClient(port)
            try:
                return second.line(), third.line()
            finally:
                second.close()
                third.close()

        second, third = yield deferToThread(connect_twice)
        self.assertEqual(second[:3], b"220")
        self.assertEqual(third[:9], b"421 4.7.0")
        self.assertEqual((yield deferToThread(first.command, b"NOOP\r\n"))[:3], b"250")


class GracefulStopTests(LiveCase):
    @defer.inlineCallbacks
    def test_stop_lets_data_finish(self) -> None:
        """At stop, a DATA in progress ends with 250 and is delivered; idle SMTP, POP3 and IMAP sessions get 421, -ERR and BYE."""
        server = yield self.start(
            "[server]\nshutdown_timeout = 20\n",
            imap=["tcp:0:interface=127.0.0.1"],
            pop3=["tcp:0:interface=127.0.0.1"],
        )
        server.directory.add_user(USER, PASSWORD)
        smtp_port, imap_port, pop3_port = (self.port(server, r) for r in ("mta", "imap", "pop3"))

        def open_sessions() -> tuple[LineClient, LineClient, LineClient, LineClient]:
            busy = LineClient(smtp_port)
            busy.reply()
            busy.command(b"EHLO c.test\r\n")
            busy.command(b"MAIL FROM:<bob@remote.test>\r\n")
            busy.command(b"RCPT TO:<" + USER.encode() + b">\r\n")
            assert busy.command(b"DATA\r\n")[:3] == b"354"
            busy.send(b"Subject: in flight\r\n\r\nfirst half\r\n")
            idle = LineClient(smtp_port)
            idle.reply()
            idle.command(b"EHLO c.test\r\n")
            imap = LineClient(imap_port)
            imap.line()
            assert b"OK" in imap.command(b"a LOGIN " + USER.encode() + b' "' + PASSWORD.encode() + b'"\r\n')
            pop = LineClient(pop3_port)
            pop.line()
            return busy, idle, imap, pop

        busy, idle, imap, pop = yield deferToThread(open_sessions)
        for c in (busy, idle, imap, pop):
            self.addCleanup(c.close)
        started = time.monotonic()
        stopped = server.stopService()

        def during_stop() -> dict[str, Any]:
            out: dict[str, Any] = {"idle": idle.line(), "imap": imap.line(), "pop": pop.line()}
            try:
                socket.create_connection(("127.0.0.1", smtp_port), timeout=5).close()
                out["new"] = "accepted"
            except OSError:
                out["new"] = "refused"
            busy.send(b"second half\r\n.\r\n")
            out["data"] = busy.reply()
            out["after"] = busy.line()
            return out

        out = yield deferToThread(during_stop)
        yield stopped
        elapsed = time.monotonic() - started
        self.assertEqual(out["idle"][:9], b"421 4.3.2")
        self.assertTrue(out["imap"].startswith(b"* BYE"), out["imap"])
        self.assertTrue(out["pop"].startswith(b"-ERR"), out["pop"])
        self.assertEqual(out["new"], "refused")
        self.assertEqual(out["data"][:3], b"250")
        self.assertEqual(out["after"][:9], b"421 4.3.2")
        self.assertLess(elapsed, 20)
        (path,) = maildir_files(server, USER)
        with open(path, "rb") as f:
            self.assertIn(b"second half", f.read())

    @defer.inlineCallbacks
    def test_stop_ends_at_the_timeout(self) -> None:
        """A client that never finishes its DATA is cut at shutdown_timeout, and nothing half-received is delivered."""
        server = yield self.start("[server]\nshutdown_timeout = 1\n")
        server.directory.add_user(USER, PASSWORD)

        def stall() -> LineClient:
            c = LineClient(self.port(server, "mta"))
            c.reply()
            c.command(b"EHLO c.test\r\n")
            c.command(b"MAIL FROM:<bob@remote.test>\r\n")
            c.command(b"RCPT TO:<" + USER.encode() + b">\r\n")
            c.command(b"DATA\r\n")
            c.send(b"Subject: never ends\r\n\r\n")
            return c

        client = yield deferToThread(stall)
        self.addCleanup(client.close)
        started = time.monotonic()
        yield server.stopService()
        elapsed = time.monotonic() - started
        self.assertGreaterEqual(elapsed, 0.9)
        self.assertLess(elapsed, 5)
        self.assertTrue(self.logged("1 connection(s) still busy after 1.0 s were cut"))

        def closed() -> bytes:
            try:
                return client.line()
            except OSError:
                return b""

        self.assertEqual((yield deferToThread(closed)), b"")
        self.assertEqual(maildir_files(server, USER), [])


class TwistdTests(TestCase):
    """A real ``twistd -n mailserver --workers 2``: SIGHUP reloads the owner and both workers; Control-C stops gracefully."""

    timeout = 300

    def test_sighup_reloads_owner_and_workers(self) -> Any:
        """After new certificate files and a changed config file, SIGHUP makes every worker serve the new ones."""
        from tests.e2e.test_workers import Node, wait_until

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        _, cert_a, key_a = make_certificate(os.path.join(workdir, "a"))
        _, cert_b, key_b = make_certificate(os.path.join(workdir, "b"))
        cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
        shutil.copy(cert_a, cert)
        shutil.copy(key_a, key)
        config = os.path.join(workdir, "txmail.toml")
        with open(config, "w") as f:
            f.write("[smtp]\nmax_message_size = 100000\n")
        node = Node(workdir, ("--config", config, "--tls-cert", cert, "--tls-key", key))
        self.addCleanup(lambda: deferToThread(node.stop))

        def seen(connections: int = 12) -> set[tuple[str, str]]:
            """(SIZE, certificate) of the SMTP sessions of *connections* connections (both workers serve some)."""
            out = set()
            for _ in range(connections):
                with smtplib.SMTP("127.0.0.1", node.smtp, timeout=30) as smtp:
                    smtp.starttls(context=no_verify())
                    smtp.ehlo()
                    out.add((smtp.esmtp_features["size"], fingerprint(smtp.sock)))
            return out

        def run() -> None:
            node.start()
            a, b = file_fingerprint(cert_a), file_fingerprint(cert_b)
            self.assertEqual(seen(), {("100000", a)})
            with open(config + ".new", "w") as f:
                f.write("[server]\nthreads = 3\n[smtp]\nmax_message_size = 200000\n")
            os.replace(config + ".new", config)
            shutil.copy(cert_b, cert)
            shutil.copy(key_b, key)
            assert node.proc is not None
            os.kill(node.proc.pid, signal.SIGHUP)
            # The owner and each worker log their own "reload done".
            wait_until(lambda: node.log_text().count("reload done") >= 3, 60, "the reload")
            log = node.log_text()
            self.assertEqual(len(re.findall(r"worker \d: txmail.lifecycle#info\] reload done", log)), 2)
            self.assertIn("needs a restart: [server] threads", log)
            self.assertEqual(seen(), {("200000", b)})
            self.assertEqual(node.proc.poll(), None)  # still running

        return deferToThread(run)

    def graceful_node(self, shutdown_timeout: int) -> Any:
        from tests.e2e.test_workers import Node

        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        config = os.path.join(workdir, "txmail.toml")
        with open(config, "w") as f:
            f.write(f"[server]\nshutdown_timeout = {shutdown_timeout}\n")
        node = Node(workdir, ("--config", config))
        node.add_user()
        self.addCleanup(lambda: deferToThread(node.stop))
        return node

    @staticmethod
    def in_data(port: int) -> LineClient:
        """An SMTP client in the middle of its message content."""
        from tests.e2e.test_workers import USER as NODE_USER

        client = LineClient(port)
        client.reply()
        client.command(b"EHLO c.test\r\n")
        client.command(b"MAIL FROM:<bob@remote.test>\r\n")
        client.command(b"RCPT TO:<" + NODE_USER.encode() + b">\r\n")
        assert client.command(b"DATA\r\n")[:3] == b"354"
        client.send(b"Message-ID: <graceful@example.test>\r\nSubject: in flight\r\n\r\nfirst half\r\n")
        return client

    def test_control_c_lets_data_finish(self) -> Any:
        """Control-C on ``twistd -n --workers 2``: an idle IMAP session gets BYE, a DATA in a worker ends with 250 and is delivered."""
        node = self.graceful_node(60)

        def run() -> None:
            node.start()
            assert node.proc is not None
            busy = self.in_data(node.smtp)
            imap = LineClient(node.imap)
            imap.line()
            started = time.monotonic()
            os.killpg(node.proc.pid, signal.SIGINT)
            self.assertTrue(imap.line().startswith(b"* BYE"))
            time.sleep(0.5)
            self.assertIsNone(node.proc.poll())  # waiting for the message
            busy.send(b"second half\r\n.\r\n")
            self.assertEqual(busy.reply()[:3], b"250")
            self.assertEqual(busy.line()[:9], b"421 4.3.2")
            node.proc.wait(timeout=60)
            self.assertLess(time.monotonic() - started, 30)
            self.assertEqual(node.message_ids()["graceful@example.test"], 1)
            busy.close()
            imap.close()

        return deferToThread(run)

    def test_second_control_c_forces(self) -> Any:
        """A second Control-C cuts a client that does not finish, long before shutdown_timeout; nothing half-received is kept."""
        node = self.graceful_node(120)

        def run() -> None:
            node.start()
            assert node.proc is not None
            busy = self.in_data(node.smtp)
            os.killpg(node.proc.pid, signal.SIGINT)
            time.sleep(1.5)
            self.assertIsNone(node.proc.poll())  # still waiting for the client
            started = time.monotonic()
            os.killpg(node.proc.pid, signal.SIGINT)
            node.proc.wait(timeout=60)
            self.assertLess(time.monotonic() - started, 20)
            try:
                rest = busy.line()
            except OSError:
                rest = b""
            self.assertEqual(rest, b"")
            busy.close()
            self.assertEqual(node.message_ids()["graceful@example.test"], 0)
            self.assertIn("cutting the open connections", node.log_text())

        return deferToThread(run)
