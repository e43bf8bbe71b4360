"""
End to end observability: the real server with ``[metrics] listen`` on
127.0.0.1 port 0, a web listener with ``on_web``, POP3 and IMAP; mail sent
with smtplib to a local and a remote recipient (the remote MX defers, then
refuses: a bounce), logins with imaplib and poplib (one failing); the
metrics scraped over HTTP and parsed with prometheus_client's parser; the
JSON log lines followed by the message's queue id; ``/health`` answering
200, then 503 once the queue directory is gone.
"""

from __future__ import annotations

import base64
import imaplib
import io
import json
import os
import poplib
import re
import smtplib
import socket
import ssl
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers

from tests._certs import make_certificate
from tests._dns import start_dns_server
from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for
from txmail.logs import JSONLogObserver

PASSWORD = "correct horse"
LOCAL = "http://127.0.0.1"


class DeferThenRefuse(LineReceiver):
    """A minimal remote MX: RCPT gets 451 the first time, 550 after that."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.sendLine(b"220 mx.far.test ESMTP")

    def lineReceived(self, line: bytes) -> None:
        factory: Any = self.factory
        verb = line[:4].upper()
        if verb == b"EHLO":
            self.sendLine(b"250-mx.far.test\r\n250 8BITMIME")
        elif verb == b"MAIL":
            self.sendLine(b"250 2.1.0 OK")
        elif verb == b"RCPT":
            factory.rcpts += 1
            if factory.rcpts == 1:
                self.sendLine(b"451 4.3.2 try again later")
            else:
                self.sendLine(b"550 5.1.1 no such user here")
        elif verb == b"RSET":
            self.sendLine(b"250 2.0.0 reset")
        elif verb == b"QUIT":
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"503 5.5.1 not now")


def families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The samples of an exposition, keyed by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class ObservabilityTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        factory = protocol.Factory.forProtocol(DeferThenRefuse)
        factory.rcpts = 0  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        dns_host, dns_port = start_dns_server(
            self, {("far.test", "MX"): [(5, "mx.far.test")], ("mx.far.test", "A"): ["127.0.0.1"]}
        )
        self.log = io.StringIO()
        observer = JSONLogObserver(self.log)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        self.server = yield start_server(
            self,
            resolvers=[f"{dns_host}:{dns_port}"],
            relay_port=port.getHost().port,
            retry_schedule="1h",
            outbound_enabled=True,
            pop3=["tcp:0:interface=127.0.0.1"],
            imap=["tcp:0:interface=127.0.0.1"],
            web=["tcp:0:interface=127.0.0.1"],
            metrics_listen=["tcp:0:interface=127.0.0.1"],
            metrics_on_web=True,
            log_format="json",
        )
        self.server.directory.add_user("alice@example.test", PASSWORD)
        self.server.directory.add_user("bob@example.test", PASSWORD)
        self.agent = Agent(reactor)

    @defer.inlineCallbacks
    def get(self, role: str, path: str, headers: Any = None) -> Any:
        host, port = self.server.address(role)
        response = yield self.agent.request(b"GET", f"http://{host}:{port}{path}".encode(), headers)
        body = yield readBody(response)
        return response.code, response.headers, body

    def states(self) -> list[str]:
        entries = self.successResultOf(self.server.queue.list_entries())
        return [st.state for e in entries for st in e.recipients.values()]

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    @defer.inlineCallbacks
    def test_counters_logs_and_health(self) -> Any:
        """Mail, logins and a bounce move the scraped counters; the JSON lines follow the queue id."""
        address = self.server.address("submission")

        def submit() -> str:
            with smtplib.SMTP(*address) as s:
                s.ehlo("client.test")
                s.login("alice@example.test", PASSWORD)
                s.mail("alice@example.test")
                s.rcpt("bob@example.test")
                s.rcpt("carol@far.test")
                code, reply = s.data(b"Subject: trail\r\n\r\nfollow me\r\n")
                assert code == 250, (code, reply)
                return re.search(rb"queued as (\S+)", reply).group(1).decode()  # type: ignore[union-attr]

        queue_id = yield deferToThread(submit)
        yield wait_for(lambda: self.states() == ["deferred"])
        self.server.queue.flush()
        self.server.runner.wake()
        yield wait_for(
            lambda: self.states() == [] and len(maildir_files(self.server, "alice@example.test")) == 1
        )

        def logins() -> None:
            imap = imaplib.IMAP4(*self.server.address("imap"))
            imap.login("bob@example.test", PASSWORD)
            imap.select("INBOX")
            imap.logout()
            pop = poplib.POP3(*self.server.address("pop3"))
            pop.user("bob@example.test")
            try:
                pop.pass_("wrong")
            except poplib.error_proto:
                pass
            else:
                raise AssertionError("a wrong POP3 password was accepted")
            pop.quit()

        yield deferToThread(logins)
        wrong = base64.b64encode(b"bob@example.test:wrong")
        code, _, _ = yield self.get("web", "/jmap/session", Headers({b"authorization": [b"Basic " + wrong]}))
        self.assertEqual(code, 401)

        code, headers, body = yield self.get("metrics", "/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain"))
        samples = families(body.decode())
        self.assertEqual(
            value(samples, "txmail_messages_received_total", protocol="smtp", role="submission"), 1
        )
        # bob's copy and alice's bounce went into local mailboxes; carol's failed for good.
        self.assertEqual(value(samples, "txmail_messages_delivered_total", destination="local"), 2)
        self.assertEqual(value(samples, "txmail_messages_deferred_total", destination="remote"), 1)
        self.assertEqual(value(samples, "txmail_messages_bounced_total", destination="remote"), 1)
        self.assertEqual(value(samples, "txmail_queue_entries"), 0)
        self.assertEqual(value(samples, "txmail_queue_oldest_age_seconds"), 0)
        auth = "txmail_auth_attempts_total"
        self.assertEqual(value(samples, auth, protocol="smtp", mechanism="PLAIN", result="success"), 1)
        self.assertEqual(value(samples, auth, protocol="imap", mechanism="LOGIN", result="success"), 1)
        self.assertEqual(value(samples, auth, protocol="pop3", mechanism="USER", result="failure"), 1)
        self.assertEqual(value(samples, auth, protocol="http", mechanism="BASIC", result="failure"), 1)
        self.assertEqual(value(samples, "txmail_connections_total", protocol="http", role="web"), 1)
        self.assertEqual(value(samples, "txmail_http_requests_total", code="4xx"), 1)
        self.assertEqual(value(samples, "txmail_connections_total", protocol="smtp", role="submission"), 1)
        self.assertEqual(value(samples, "txmail_connections_total", protocol="imap", role="imap"), 1)
        self.assertEqual(value(samples, "txmail_connections_total", protocol="pop3", role="pop3"), 1)
        self.assertEqual(value(samples, "txmail_connections_active", protocol="smtp", role="submission"), 0)
        count = "txmail_command_duration_seconds_count"
        self.assertEqual(value(samples, count, protocol="smtp", command="RCPT"), 2)
        self.assertEqual(value(samples, count, protocol="smtp", command="end-of-data"), 1)
        self.assertEqual(value(samples, count, protocol="imap", command="SELECT"), 1)
        self.assertEqual(value(samples, count, protocol="pop3", command="PASS"), 1)
        self.assertGreater(
            value(samples, "txmail_store_operation_duration_seconds_count", operation="deliver"), 0
        )

        # The same metrics at /metrics on the web listener, and requests counted there.
        code, _, body = yield self.get("web", "/metrics")
        self.assertEqual(code, 200)
        self.assertIn(b"txmail_messages_received_total", body)

        # The JSON lines: the SMTP server's, the router's and the runner's carry the queue id.
        lines = [line for line in self.json_lines() if line.get("queue_id") == queue_id]
        systems = {line["system"].rsplit(".", 1)[0] for line in lines}
        self.assertTrue(
            {"txmail.smtp.server", "txmail.delivery.router", "txmail.delivery.runner"} <= systems, systems
        )
        texts = [line["text"] for line in lines]
        self.assertTrue(any("bob@example.test" in t and "delivered" in t for t in texts), texts)
        self.assertTrue(any("carol@far.test" in t and "451" in t for t in texts), texts)
        self.assertTrue(any("carol@far.test" in t and "550" in t for t in texts), texts)
        self.assertTrue(any("failed notice" in t and "sent" in t for t in texts), texts)
        smtp_line = next(line for line in lines if line["system"].startswith("txmail.smtp.server"))
        self.assertTrue(smtp_line["client"].startswith("127.0.0.1:"))
        self.assertEqual(smtp_line["level"], "info")
        self.assertEqual(smtp_line["protocol"], "smtp")
        self.assertRegex(smtp_line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        # The client address follows the message to its delivery lines.
        delivered = next(t for t in lines if "bob@example.test" in t["text"] and "delivered" in t["text"])
        self.assertEqual(delivered["client"], smtp_line["client"])
        for line in self.json_lines():
            self.assertNotIn(PASSWORD, json.dumps(line))

        # Health: 200 on both listeners, 503 naming the queue once its directory is gone.
        for role in ("metrics", "web"):
            code, _, body = yield self.get(role, "/health")
            self.assertEqual(code, 200, body)
            self.assertEqual(json.loads(body)["status"], "ok")
        queue_dir = self.server.settings.path("queue")
        os.rename(queue_dir, queue_dir + ".away")
        self.addCleanup(os.rename, queue_dir + ".away", queue_dir)
        code, _, body = yield self.get("metrics", "/health")
        self.assertEqual(code, 503)
        answer = json.loads(body)
        self.assertEqual(answer["status"], "failing")
        self.assertNotEqual(answer["checks"]["queue"], "ok")
        self.assertEqual(answer["checks"]["store"], "ok")
        self.assertEqual(answer["checks"]["listeners"], "ok")

    @defer.inlineCallbacks
    def test_health_fails_when_a_listener_stops(self) -> Any:
        """A listener that stopped listening makes /health answer 503 naming it."""
        [imap] = self.server.listeners_for("imap")
        yield imap.stopService()
        code, _, body = yield self.get("metrics", "/health")
        self.assertEqual(code, 503)
        self.assertIn("imap listener", json.loads(body)["checks"]["listeners"])
        code, _, _ = yield self.get("metrics", "/nothing")
        self.assertEqual(code, 404)


class TLSMetricsTests(TestCase):
    """Real TLS handshakes (STARTTLS and implicit TLS) are counted, and one cut short as a failure."""

    timeout = 60

    @defer.inlineCallbacks
    def test_handshakes(self) -> Any:
        """IMAP STARTTLS and submission on ssl: succeed; a plain client on the ssl: port fails."""
        ca, cert, key = make_certificate(os.path.abspath(self.mktemp()), "mx.example.test")
        server = yield start_server(
            self,
            tls_cert=cert,
            tls_key=key,
            submission=["ssl:0:interface=127.0.0.1"],
            imap=["tcp:0:interface=127.0.0.1"],
            metrics_listen=["tcp:0:interface=127.0.0.1"],
        )
        server.directory.add_user("alice@example.test", PASSWORD)

        def clients() -> None:
            context = ssl.create_default_context(cafile=ca)
            context.check_hostname = False
            imap = imaplib.IMAP4(*server.address("imap"))
            imap.starttls(context)
            imap.login("alice@example.test", PASSWORD)
            imap.logout()
            with smtplib.SMTP_SSL(*server.address("submission"), context=context) as s:
                s.login("alice@example.test", PASSWORD)
            with socket.create_connection(server.address("submission")) as plain:
                plain.sendall(b"EHLO not-tls\r\n")
                plain.shutdown(socket.SHUT_WR)
                plain.recv(100)

        yield deferToThread(clients)
        host, port = server.address("metrics")

        @defer.inlineCallbacks
        def handshakes() -> Any:
            response = yield Agent(reactor).request(b"GET", f"http://{host}:{port}/metrics".encode())
            samples = families((yield readBody(response)).decode())
            return {
                (protocol, result): value(
                    samples, "txmail_tls_handshakes_total", protocol=protocol, result=result
                )
                for protocol in ("imap", "smtp")
                for result in ("success", "failure")
            }

        expected = {
            ("imap", "success"): 1,
            ("imap", "failure"): 0,
            ("smtp", "success"): 1,
            ("smtp", "failure"): 1,
        }
        for _ in range(100):  # the server may see the plain client's close a moment after it left
            found = yield handshakes()
            if found == expected:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(found, expected)
