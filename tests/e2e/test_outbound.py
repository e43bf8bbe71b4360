"""
End to end outbound delivery: two txmail instances on loopback and a fake DNS.

The sending server (domain example.test) asks a DNS server the test runs on
127.0.0.1 (``resolvers``), which points remote.test's MX at 127.0.0.1, and
connects to the second instance's SMTP listener (``relay_port``).  A user
submits with AUTH; the message lands in the remote Maildir, or, when the
remote refuses the recipient (5xx), a bounce lands in the sender's INBOX.
"""

from __future__ import annotations

import email
import json
import os
import smtplib
import subprocess
import sys
from typing import Any

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests._dns import start_dns_server
from tests.e2e._server import maildir_files, start_server
from txmail.model import RecipientState

PASSWORD = "correct horse"


@defer.inlineCallbacks
def wait_for(predicate: Any, timeout: float = 15.0) -> Any:
    """Poll *predicate* on the reactor until it is true (or fail after *timeout* seconds)."""
    waited = 0.0
    while not predicate():
        if waited >= timeout:
            raise AssertionError("condition not met in time")
        yield task.deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


class FlakySMTP(LineReceiver):
    """A minimal SMTP server: RCPT gets 451 while ``factory.refuse`` is positive, then 250."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.in_data = False
        factory: Any = self.factory
        factory.connections = getattr(factory, "connections", 0) + 1
        self.sendLine(b"220 flaky.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        factory: Any = self.factory
        if self.in_data:
            if line == b".":
                self.in_data = False
                factory.messages.append(b"\r\n".join(self.lines))
                self.sendLine(b"250 2.0.0 accepted")
            else:
                self.lines.append(line)
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-flaky.test\r\n250 8BITMIME")
        elif verb == b"MAIL":
            self.sendLine(b"250 2.1.0 OK")
        elif verb == b"RCPT":
            if factory.refuse > 0:
                factory.refuse -= 1
                self.sendLine(b"451 4.3.2 try again later")
            else:
                self.sendLine(b"250 2.1.5 OK")
        elif verb == b"DATA":
            self.in_data, self.lines = True, []
            self.sendLine(b"354 go ahead")
        elif verb == b"RSET":
            self.sendLine(b"250 2.0.0 reset")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"500 5.5.1 what?")


class OutboundTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.remote = yield start_server(
            self, hostname="mx.remote.test", domains=["remote.test"], outbound_enabled=False
        )
        self.remote.directory.add_user("someone@remote.test", PASSWORD)
        _, remote_port = self.remote.address("mta")
        dns_host, dns_port = start_dns_server(
            self,
            {
                ("remote.test", "MX"): [(10, "mx.remote.test")],
                ("mx.remote.test", "A"): ["127.0.0.1"],
            },
        )
        self.sender = yield start_server(
            self, resolvers=[f"{dns_host}:{dns_port}"], relay_port=remote_port, outbound_enabled=True
        )
        self.sender.directory.add_user("alice@example.test", PASSWORD)

    def submit(self, rcpts: list[str], body: bytes) -> defer.Deferred[Any]:
        address = self.sender.address("submission")

        def send() -> None:
            with smtplib.SMTP(*address) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", rcpts, body)

        return deferToThread(send)

    def queue_empty(self) -> bool:
        return self.successResultOf(self.sender.queue.list_entries()) == []

    @defer.inlineCallbacks
    def test_relay_to_remote_mx(self) -> Any:
        """Submitted mail for remote.test is looked up, relayed and lands in the remote Maildir."""
        yield self.submit(["someone@remote.test"], b"Subject: over there\r\n\r\nhello remote\r\n")
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        [path] = maildir_files(self.remote, "someone@remote.test")
        with open(path, "rb") as f:
            data = f.read()
        self.assertTrue(data.startswith(b"Return-Path: <alice@example.test>\r\n"))
        self.assertIn(b"by mx.remote.test", data)
        self.assertIn(b"by mx.example.test", data)  # the sender's own trace header travelled along
        self.assertTrue(data.endswith(b"Subject: over there\r\n\r\nhello remote\r\n"))
        self.assertEqual(maildir_files(self.sender, "alice@example.test"), [])
        self.assertIn(("remote.test", "MX"), self.dns_authority.queries)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_remote_5xx_bounces_to_sender_inbox(self) -> Any:
        """A recipient the remote refuses (550) fails; a DSN arrives in the sender's INBOX."""
        yield self.submit(["nobody@remote.test", "someone@remote.test"], b"Subject: partly\r\n\r\nhello\r\n")
        yield wait_for(lambda: maildir_files(self.sender, "alice@example.test") != [])
        yield wait_for(self.queue_empty)
        self.assertEqual(len(maildir_files(self.remote, "someone@remote.test")), 1)
        [path] = maildir_files(self.sender, "alice@example.test")
        with open(path, "rb") as f:
            msg = email.message_from_bytes(f.read())
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mx.example.test>")
        self.assertEqual(msg["Return-Path"], "<>")  # RFC 5321 section 4.4, the null reverse-path
        self.assertIn("Failure", msg["Subject"])
        self.assertEqual(msg.get_content_type(), "multipart/report")
        text = msg.as_string()
        self.assertIn("Final-Recipient: rfc822;nobody@remote.test", text)
        self.assertIn("Action: failed", text)
        self.assertIn("Status: 5.1.1", text)
        self.assertIn("Remote-MTA: dns; mx.remote.test", text)
        self.assertNotIn("rfc822;someone@remote.test", text)
        self.assertIn("Subject: partly", text)  # the original's header section


class TLSVerifyTests(TestCase):
    """
    STARTTLS with certificate verification to a remote txmail instance.

    The fake DNS points remote.test's MX ``mx.remote.test`` at 127.0.0.1;
    the runner connects to the address and checks the certificate against
    the MX host name (``tls_hostname`` = the MX name, RFC 7672 section 3.2.2
    style name checks by service-identity), not against 127.0.0.1 (which
    the test certificates also carry).  ``verify`` fails closed: a
    certificate that does not verify stops the transaction before MAIL, so
    nothing is sent in the clear and the recipient is deferred.
    """

    timeout = 60

    @defer.inlineCallbacks
    def start(self, cert_name: str = "mx.remote.test", trust: str = "same", **sender: Any) -> Any:
        """
        A remote with a certificate for *cert_name* from a fresh CA, and a
        sender trusting that CA (*trust* ``"same"``) or another one
        (``"other"``); *sender* are the sender's Settings overrides.
        """
        ca, cert, key = make_certificate(os.path.abspath(self.mktemp()), cert_name)
        if trust == "other":
            ca = make_certificate(os.path.abspath(self.mktemp()), cert_name)[0]
        self.remote = yield start_server(
            self,
            hostname="mx.remote.test",
            domains=["remote.test"],
            outbound_enabled=False,
            tls_cert=cert,
            tls_key=key,
        )
        self.remote.directory.add_user("someone@remote.test", PASSWORD)
        _, remote_port = self.remote.address("mta")
        dns_host, dns_port = start_dns_server(
            self,
            {("remote.test", "MX"): [(10, "mx.remote.test")], ("mx.remote.test", "A"): ["127.0.0.1"]},
        )
        sender.setdefault("outbound_tls_policy", "verify")
        self.sender = yield start_server(
            self,
            resolvers=[f"{dns_host}:{dns_port}"],
            relay_port=remote_port,
            outbound_enabled=True,
            outbound_ca_file=ca,
            **sender,
        )
        self.sender.directory.add_user("alice@example.test", PASSWORD)

    def submit(self) -> defer.Deferred[Any]:
        address = self.sender.address("submission")

        def send() -> None:
            with smtplib.SMTP(*address) as s:
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["someone@remote.test"], b"Subject: secret\r\n\r\nhush\r\n")

        return deferToThread(send)

    def recipient_state(self) -> RecipientState | None:
        entries = self.successResultOf(self.sender.queue.list_entries())
        return entries[0].recipients["someone@remote.test"] if entries else None

    def queue_empty(self) -> bool:
        return self.successResultOf(self.sender.queue.list_entries()) == []

    @defer.inlineCallbacks
    def assert_fails_closed(self) -> Any:
        yield self.submit()
        yield wait_for(lambda: getattr(self.recipient_state(), "state", None) == "deferred")
        st = self.recipient_state()
        assert st is not None
        self.assertEqual(st.attempts, 1)
        self.assertIn("TLS", st.last_error)
        self.assertTrue(st.status.startswith("4."), st.status)
        # Nothing went over in the clear: the remote has no message at all.
        self.assertEqual(maildir_files(self.remote, "someone@remote.test"), [])
        self.assertEqual(maildir_files(self.remote, "someone@remote.test", "tmp"), [])
        self.assertEqual(maildir_files(self.sender, "alice@example.test"), [])  # no bounce yet
        return st

    @defer.inlineCallbacks
    def test_verify_delivers_over_starttls(self) -> Any:
        """A certificate for the MX name from the trusted CA: delivered, the remote says ESMTPS."""
        yield self.start()
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        [path] = maildir_files(self.remote, "someone@remote.test")
        with open(path, "rb") as f:
            msg = email.message_from_bytes(f.read())
        received = " ".join(msg.get_all("Received")[0].split())
        self.assertIn("by mx.remote.test", received)
        self.assertIn("with ESMTPS", received)  # RFC 3848: ESMTP over TLS
        self.assertEqual(msg["Subject"], "secret")

    @defer.inlineCallbacks
    def test_untrusted_ca_fails_closed(self) -> Any:
        """A certificate from a CA the sender does not trust: deferred with a TLS error, nothing sent."""
        yield self.start(trust="other")
        st = yield self.assert_fails_closed()
        self.assertEqual(st.host, "mx.remote.test")

    @defer.inlineCallbacks
    def test_wrong_name_fails_closed_per_domain_policy(self) -> Any:
        """A per-domain ``verify`` (default opportunistic) refuses a certificate for another name."""
        yield self.start(
            cert_name="mail.elsewhere.test",
            outbound_tls_policy="opportunistic",
            outbound_tls_policies={"remote.test": "verify"},
        )
        yield self.assert_fails_closed()

    @defer.inlineCallbacks
    def test_opportunistic_accepts_unverified(self) -> Any:
        """The contrast: ``opportunistic`` takes the same unverifiable certificate and still uses TLS."""
        yield self.start(cert_name="mail.elsewhere.test", trust="other", outbound_tls_policy="opportunistic")
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        [path] = maildir_files(self.remote, "someone@remote.test")
        with open(path, "rb") as f:
            msg = email.message_from_bytes(f.read())
        self.assertIn("with ESMTPS", " ".join(msg.get_all("Received")[0].split()))


class RetryTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        factory = self.smtp = protocol.Factory.forProtocol(FlakySMTP)
        factory.refuse, factory.messages = 1, []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        dns_host, dns_port = start_dns_server(
            self, {("flaky.test", "MX"): [(5, "mx.flaky.test")], ("mx.flaky.test", "A"): ["127.0.0.1"]}
        )
        self.overrides = {
            "resolvers": [f"{dns_host}:{dns_port}"],
            "relay_port": port.getHost().port,
            "retry_schedule": "1h",
            "outbound_enabled": True,
        }
        self.sender = yield start_server(self, **self.overrides)
        self.sender.directory.add_user("alice@example.test", PASSWORD)

    def states(self) -> list[str]:
        entries = self.successResultOf(self.sender.queue.list_entries())
        return [st.state for e in entries for st in e.recipients.values()]

    @defer.inlineCallbacks
    def submit(self) -> Any:
        address = self.sender.address("submission")

        def send() -> None:
            with smtplib.SMTP(*address) as s:
                s.login("alice@example.test", PASSWORD)
                s.sendmail("alice@example.test", ["bob@flaky.test"], b"Subject: retry\r\n\r\nagain\r\n")

        yield deferToThread(send)

    @defer.inlineCallbacks
    def test_4xx_then_2xx(self) -> Any:
        """A 451 defers the recipient (last_error kept); after a flush the retry delivers it."""
        yield self.submit()
        yield wait_for(lambda: self.states() == ["deferred"])
        [entry] = self.successResultOf(self.sender.queue.list_entries())
        st = entry.recipients["bob@flaky.test"]
        self.assertEqual(st.last_error, "451 4.3.2 try again later")
        self.assertEqual(st.host, "mx.flaky.test")
        self.assertEqual(self.smtp.messages, [])  # type: ignore[attr-defined]
        self.sender.queue.flush()
        self.sender.runner.wake()
        yield wait_for(lambda: self.states() == [])
        [message] = self.smtp.messages  # type: ignore[attr-defined]
        self.assertIn(b"Subject: retry", message)
        self.assertEqual(maildir_files(self.sender, "alice@example.test"), [])  # no bounce, no delay notice

    @defer.inlineCallbacks
    def test_connection_kept_for_the_next_message(self) -> Any:
        """Messages queued one after the other to one MX share a connection (RSET between); stop sends QUIT."""
        self.smtp.refuse = 0  # type: ignore[attr-defined]
        for i in range(3):
            yield self.submit()
            yield wait_for(lambda n=i + 1: self.states() == [] and len(self.smtp.messages) == n)  # type: ignore[attr-defined]
        self.assertEqual(self.smtp.connections, 1)  # type: ignore[attr-defined]
        runner = self.sender.runner
        self.assertEqual((runner.connections.connections, runner.connections.reused), (1, 2))
        yield runner.stopService()
        self.assertEqual(runner.connections._idle, {})

    @defer.inlineCallbacks
    def test_restart_resumes(self) -> Any:
        """A deferred entry survives a stop; a new server on the same data directory delivers it."""
        yield self.submit()
        yield wait_for(lambda: self.states() == ["deferred"])
        yield self.sender.stopService()
        [name] = [n for n in os.listdir(self.sender.settings.path("queue")) if n.endswith(".json")]
        path = os.path.join(self.sender.settings.path("queue"), name)
        with open(path) as f:
            doc = json.load(f)
        doc["recipients"]["bob@flaky.test"]["next_attempt"] = 0  # due at once after the restart
        with open(path, "w") as f:
            json.dump(doc, f)
        again = yield start_server(self, data_dir=self.sender.settings.data_dir, **self.overrides)
        self.sender = again
        yield wait_for(lambda: self.states() == [])
        self.assertEqual(len(self.smtp.messages), 1)  # type: ignore[attr-defined]


class KillRestartTests(TestCase):
    """``twistd mailserver`` killed with SIGKILL while mail waits in its queue loses nothing."""

    timeout = 120

    @defer.inlineCallbacks
    def test_kill_9_then_restart_delivers(self) -> Any:
        from tests.e2e.test_twistd_acceptance import CLI, TWISTD, free_port, plugin_env, wait_for_port

        factory: Any = protocol.Factory.forProtocol(FlakySMTP)
        factory.refuse, factory.messages = 10**6, []
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        dns_host, dns_port = start_dns_server(
            self, {("flaky.test", "MX"): [(5, "mx.flaky.test")], ("mx.flaky.test", "A"): ["127.0.0.1"]}
        )
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        data_dir = os.path.join(workdir, "data")
        config = os.path.join(workdir, "txmail.toml")
        with open(config, "w") as f:
            f.write('[outbound]\nretry_schedule = "1s"\npoll_interval = 0.2\n')
        submission = free_port()
        procs: list[subprocess.Popen[bytes]] = []

        def start() -> None:
            proc = subprocess.Popen(
                [
                    sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile", os.path.join(workdir, "log"),
                    "mailserver", "--config", config, "--data-dir", data_dir, "--domain", "example.test",
                    "--hostname", "mx.example.test", "--smtp", "tcp:0:interface=127.0.0.1",
                    "--submission", f"tcp:{submission}:interface=127.0.0.1",
                    "--resolver", f"{dns_host}:{dns_port}", "--relay-port", str(port.getHost().port),
                ],
                cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=plugin_env(),
            )  # fmt: skip
            procs.append(proc)
            wait_for_port(submission, proc)

        def stop_all() -> None:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=30)

        self.addCleanup(lambda: deferToThread(stop_all))

        def first_run() -> None:
            add = subprocess.run(
                [sys.executable, "-c", CLI, "user", "add", "--data-dir", data_dir, "alice@example.test",
                 "--password-stdin"],
                input=(PASSWORD + "\n").encode(), capture_output=True, timeout=60, cwd=workdir,
            )  # fmt: skip
            assert add.returncode == 0, add.stderr
            start()
            with smtplib.SMTP("127.0.0.1", submission) as s:
                s.login("alice@example.test", PASSWORD)
                s.sendmail(
                    "alice@example.test", ["bob@flaky.test"], b"Subject: survive\r\n\r\nstill here\r\n"
                )

        yield deferToThread(first_run)
        yield wait_for(lambda: factory.refuse < 10**6 - 1, timeout=30)  # refused at least twice: deferred
        procs[0].kill()  # SIGKILL: no shutdown code runs
        yield deferToThread(procs[0].wait, 30)
        queue_dir = os.path.join(data_dir, "queue")
        self.assertEqual(len([n for n in os.listdir(queue_dir) if n.endswith(".json")]), 1)
        self.assertEqual(factory.messages, [])

        factory.refuse = 0
        yield deferToThread(start)
        yield wait_for(lambda: factory.messages != [], timeout=30)
        yield wait_for(lambda: not any(n.endswith(".json") for n in os.listdir(queue_dir)), timeout=30)
        [message] = factory.messages
        self.assertIn(b"Subject: survive", message)
        self.assertIn(b"still here", message)
