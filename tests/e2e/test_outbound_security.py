"""
Outbound transport security end to end: MTA-STS, DANE, TLS-RPT and
REQUIRETLS between two txmail instances (or a hand-made SMTP server) on
loopback.

The fake DNS (``tests._dns``) points remote.test's MX ``mx.remote.test``
and the policy host ``mta-sts.remote.test`` at 127.0.0.1, publishes the
``_mta-sts`` and ``_smtp._tls`` TXT records and TLSA records, and sets the
AD bit where a test says the zone is signed.  Policies are served over
HTTPS on 127.0.0.1 (a small twisted.web site, or the remote txmail's own
``[mta_sts]`` resource) with a certificate from the tests' CA, which the
sender trusts (``ca_file``); the sender's policy fetcher is pointed at the
policy server's port (policies live on port 443 in real life).
"""

from __future__ import annotations

import email
import gzip
import hashlib
import json
import os
import smtplib
import ssl as stdlib_ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, protocol, reactor
from twisted.internet import ssl as twisted_ssl
from twisted.internet.threads import deferToThread
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from tests._certs import make_certificate
from tests._dns import SERVFAIL, start_dns_server
from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for
from txmail.model import RecipientState

PASSWORD = "correct horse"


class _Policy(resource.Resource):
    isLeaf = True

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.fetches = 0

    def render_GET(self, request: Any) -> bytes:
        self.fetches += 1
        request.setHeader(b"content-type", b"text/plain")
        return self.text.encode()


def policy(mode: str, *mx: str, max_age: int = 86400) -> str:
    return (
        "version: STSv1\r\nmode: "
        + mode
        + "\r\n"
        + "".join(f"mx: {m}\r\n" for m in mx)
        + f"max_age: {max_age}\r\n"
    )


def spki_sha256(cert_path: str) -> str:
    with open(cert_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


class PlainSMTP(LineReceiver):
    """A minimal SMTP server; with ``factory.tls`` it offers STARTTLS (but never REQUIRETLS)."""

    delimiter = b"\r\n"

    def connectionMade(self) -> None:
        self.in_data = False
        self.secure = False
        self.sendLine(b"220 plain.test ESMTP")

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
        verb = line[:8].upper()
        factory.commands.append(line)
        if verb.startswith(b"EHLO"):
            extra = b"\r\n250-STARTTLS" if factory.tls is not None and not self.secure else b""
            self.sendLine(b"250-plain.test" + extra + b"\r\n250 8BITMIME")
        elif verb == b"STARTTLS":
            self.sendLine(b"220 2.0.0 go ahead")
            self.transport.startTLS(factory.tls)
            self.secure = True
        elif verb.startswith(b"MAIL"):
            self.sendLine(b"250 2.1.0 OK")
        elif verb.startswith(b"RCPT"):
            self.sendLine(b"250 2.1.5 OK")
        elif verb.startswith(b"DATA"):
            self.in_data, self.lines = True, []
            self.sendLine(b"354 go ahead")
        elif verb.startswith(b"RSET"):
            self.sendLine(b"250 2.0.0 reset")
        elif verb.startswith(b"QUIT"):
            self.sendLine(b"221 2.0.0 bye")
            self.transport.loseConnection()
        else:
            self.sendLine(b"500 5.5.1 what?")


class SecurityCase(TestCase):
    timeout = 60

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        self.ca, self.cert, self.key = make_certificate(directory, "mx.remote.test", ("mta-sts.remote.test",))

    def serve_policy(self, text: str) -> int:
        """An HTTPS policy server on 127.0.0.1 with the test certificate; its port."""
        with open(self.cert, "rb") as f:
            cert = f.read()
        with open(self.key, "rb") as f:
            key = f.read()
        self.policy_resource = _Policy(text)
        root = resource.Resource()
        well_known = resource.Resource()
        root.putChild(b".well-known", well_known)
        well_known.putChild(b"mta-sts.txt", self.policy_resource)
        options = twisted_ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
        port = reactor.listenSSL(0, server.Site(root), options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def start_remote(self, tls: bool = True, **overrides: Any) -> Any:
        extra = {"tls_cert": self.cert, "tls_key": self.key} if tls else {}
        self.remote = yield start_server(
            self,
            hostname="mx.remote.test",
            domains=["remote.test"],
            outbound_enabled=False,
            **extra,
            **overrides,
        )
        self.remote.directory.add_user("someone@remote.test", PASSWORD)
        self.remote.directory.add_user("reports@remote.test", PASSWORD)
        return self.remote.address("mta")[1]

    def start_plain_remote(self, tls: bool) -> int:
        factory: Any = protocol.Factory.forProtocol(PlainSMTP)
        factory.messages, factory.commands = [], []
        factory.tls = None
        if tls:
            with open(self.cert, "rb") as f:
                cert = f.read()
            with open(self.key, "rb") as f:
                key = f.read()
            factory.tls = twisted_ssl.PrivateCertificate.loadPEM(cert + b"\n" + key).options()
        self.plain = factory
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def start_sender(
        self, records: dict[tuple[str, str], Any], relay_port: int, *, policy_port: int | None = None,
        secure: Any = frozenset(), **overrides: Any,
    ) -> Any:  # fmt: skip
        base = {
            ("remote.test", "MX"): [(10, "mx.remote.test")],
            ("mx.remote.test", "A"): ["127.0.0.1"],
            ("mta-sts.remote.test", "A"): ["127.0.0.1"],
        }
        base.update(records)
        dns_host, dns_port = start_dns_server(self, base, secure=secure)
        sender_cert = make_certificate(os.path.abspath(self.mktemp()), "mx.example.test")
        overrides.setdefault("outbound_ca_file", self.ca)
        self.sender = yield start_server(
            self,
            resolvers=[f"{dns_host}:{dns_port}"],
            relay_port=relay_port,
            outbound_enabled=True,
            tls_cert=sender_cert[1],
            tls_key=sender_cert[2],
            **overrides,
        )
        self.sender.directory.add_user("alice@example.test", PASSWORD)
        security = self.sender.runner.security
        if policy_port is not None:
            security.mta_sts.fetcher.port = policy_port
        return self.sender

    def submit(
        self, body: bytes = b"Subject: secret\r\n\r\nhush\r\n", *, requiretls: bool = False,
        rcpt: str = "someone@remote.test", ret_full: bool = False,
    ) -> defer.Deferred[Any]:  # fmt: skip
        address = self.sender.address("submission")

        def send() -> None:
            with smtplib.SMTP(*address) as s:
                s.starttls(context=stdlib_ssl._create_unverified_context())
                s.login("alice@example.test", PASSWORD)
                options = (["REQUIRETLS"] if requiretls else []) + (["RET=FULL"] if ret_full else [])
                s.sendmail("alice@example.test", [rcpt], body, mail_options=options)

        return deferToThread(send)

    def state(self, rcpt: str = "someone@remote.test") -> RecipientState:
        entries = self.successResultOf(self.sender.queue.list_entries())
        for entry in entries:
            if rcpt in entry.recipients:
                return entry.recipients[rcpt]
        return RecipientState()

    def queue_empty(self) -> bool:
        return self.successResultOf(self.sender.queue.list_entries()) == []

    @defer.inlineCallbacks
    def assert_deferred(self, *words: str) -> Any:
        yield wait_for(lambda: self.state().state == "deferred")
        st = self.state()
        for word in words:
            self.assertIn(word, st.last_error)
        self.assertTrue(st.status.startswith("4."), st.status)
        self.assertEqual(maildir_files(self.sender, "alice@example.test"), [])  # no bounce
        return st

    def received_over_tls(self, user: str = "someone@remote.test") -> email.message.Message:
        [path] = maildir_files(self.remote, user)
        with open(path, "rb") as f:
            msg = email.message_from_bytes(f.read())
        self.assertIn("with ESMTPS", " ".join(msg.get_all("Received")[0].split()))
        return msg

    def today(self) -> str:
        import datetime

        return datetime.datetime.fromtimestamp(reactor.seconds(), datetime.UTC).strftime("%Y-%m-%d")  # type: ignore[attr-defined]


class MTASTSTests(SecurityCase):
    """Policies of the recipient domain, fetched over HTTPS and enforced (RFC 8461)."""

    @defer.inlineCallbacks
    def test_enforce_delivers_over_verified_tls_and_caches(self) -> Any:
        """A valid enforce policy: delivered over TLS; the policy is cached on disk and counted a success."""
        port = yield self.start_remote()
        policy_port = self.serve_policy(policy("enforce", "mx.remote.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=20261207"]}, port, policy_port=policy_port
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        self.received_over_tls()
        with open(self.sender.settings.path("mta-sts.json")) as f:
            cached = json.load(f)
        self.assertEqual(cached["remote.test"]["id"], "20261207")
        self.assertIn("mode: enforce", cached["remote.test"]["text"])
        reports = self.sender.runner.security.reports
        self.assertEqual(reports.counts(self.today(), "remote.test"), (1, 0))
        # A second message uses the cached policy: no second fetch.
        yield self.submit()
        yield wait_for(lambda: len(maildir_files(self.remote, "someone@remote.test")) == 2)
        self.assertEqual(self.policy_resource.fetches, 1)

    @defer.inlineCallbacks
    def test_enforce_refuses_mx_without_starttls(self) -> Any:
        """Under enforce an MX that does not offer STARTTLS gets nothing: deferred, counted as starttls-not-supported."""
        port = self.start_plain_remote(tls=False)
        policy_port = self.serve_policy(policy("enforce", "mx.remote.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]}, port, policy_port=policy_port
        )
        yield self.submit()
        yield self.assert_deferred("STARTTLS")
        self.assertEqual(self.plain.messages, [])
        self.assertFalse(any(c.upper().startswith(b"MAIL") for c in self.plain.commands))
        reports = self.sender.runner.security.reports
        [entry] = reports.days[self.today()]["remote.test"].values()
        self.assertEqual(entry["type"], "sts")
        self.assertEqual(list(entry["failures"]), ["starttls-not-supported|127.0.0.1|mx.remote.test"])

    @defer.inlineCallbacks
    def test_testing_mode_delivers_without_starttls(self) -> Any:
        """Under testing the same MX gets the message in the clear, and the failure is still counted."""
        port = self.start_plain_remote(tls=False)
        policy_port = self.serve_policy(policy("testing", "mx.remote.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]}, port, policy_port=policy_port
        )
        yield self.submit()
        yield wait_for(lambda: self.plain.messages != [])
        yield wait_for(self.queue_empty)
        reports = self.sender.runner.security.reports
        self.assertEqual(reports.counts(self.today(), "remote.test"), (0, 1))

    @defer.inlineCallbacks
    def start_misnamed_remote(self, mode: str) -> Any:
        """A remote whose certificate (from a trusted CA) names another host, under a *mode* policy."""
        ca2, cert2, key2 = make_certificate(os.path.abspath(self.mktemp()), "mail.elsewhere.test")
        bundle = os.path.abspath(self.mktemp())
        with open(bundle, "wb") as out, open(self.ca, "rb") as a, open(ca2, "rb") as b:
            out.write(a.read() + b"\n" + b.read())
        policy_port = self.serve_policy(policy(mode, "mx.remote.test"))
        self.cert, self.key = cert2, key2
        port = yield self.start_remote()
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]},
            port,
            policy_port=policy_port,
            outbound_ca_file=bundle,
        )

    @defer.inlineCallbacks
    def test_enforce_refuses_certificate_for_another_name(self) -> Any:
        """Enforce: a trusted certificate that does not name the MX ends the connection before MAIL."""
        yield self.start_misnamed_remote("enforce")
        yield self.submit()
        yield self.assert_deferred("TLS failure", "certificate-host-mismatch")
        self.assertEqual(maildir_files(self.remote, "someone@remote.test"), [])

    @defer.inlineCallbacks
    def test_testing_mode_reports_certificate_for_another_name(self) -> Any:
        """Testing: the same certificate is accepted (TLS is used) and the mismatch is counted."""
        yield self.start_misnamed_remote("testing")
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        self.received_over_tls()
        [entry] = self.sender.runner.security.reports.days[self.today()]["remote.test"].values()
        self.assertEqual(list(entry["failures"]), ["certificate-host-mismatch|127.0.0.1|mx.remote.test"])
        self.assertEqual(entry["success"], 0)

    @defer.inlineCallbacks
    def test_mx_not_in_policy_refused(self) -> Any:
        """An MX host the enforce policy does not list is not even connected to."""
        port = self.start_plain_remote(tls=True)
        policy_port = self.serve_policy(policy("enforce", "*.elsewhere.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]}, port, policy_port=policy_port
        )
        yield self.submit()
        yield self.assert_deferred("does not match the MTA-STS policy")
        self.assertEqual(self.plain.commands, [])

    @defer.inlineCallbacks
    def test_policy_served_by_txmail(self) -> Any:
        """The remote's own ``[mta_sts]`` policy, served on its web listener, is fetched and enforced."""
        port = yield self.start_remote(
            web=["ssl:0:interface=127.0.0.1"], mta_sts_mode="enforce", mta_sts_mx=["mx.remote.test"]
        )
        _, web_port = self.remote.address("web")
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=abc"]}, port, policy_port=web_port
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        with open(self.sender.settings.path("mta-sts.json")) as f:
            cached = json.load(f)
        self.assertEqual(
            cached["remote.test"]["text"],
            "version: STSv1\r\nmode: enforce\r\nmx: mx.remote.test\r\nmax_age: 604800\r\n",
        )


class DANETests(SecurityCase):
    """TLSA records of the MX host, trusted only with the AD bit (RFC 7672)."""

    SECURE = ("remote.test", "mx.remote.test", "_25._tcp.mx.remote.test")

    @defer.inlineCallbacks
    def test_dane_ee_match_delivers(self) -> Any:
        """A DANE-EE(3) SPKI SHA-256 record matching the MX certificate: delivered over TLS."""
        port = yield self.start_remote()
        yield self.start_sender(
            {("_25._tcp.mx.remote.test", "TLSA"): [(3, 1, 1, spki_sha256(self.cert))]},
            port,
            secure=self.SECURE,
            outbound_dane=True,
            outbound_ca_file=None,  # DANE-EE needs no CA at all
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        self.received_over_tls()
        reports = self.sender.runner.security.reports
        [entry] = reports.days[self.today()]["remote.test"].values()
        self.assertEqual((entry["type"], entry["success"], entry["mx_host"]), ("tlsa", 1, "mx.remote.test"))

    @defer.inlineCallbacks
    def test_tlsa_mismatch_refused(self) -> Any:
        """A TLSA record that matches nothing: the connection is dropped after the handshake; deferred."""
        port = yield self.start_remote()
        yield self.start_sender(
            {("_25._tcp.mx.remote.test", "TLSA"): [(3, 1, 1, "00" * 32)]},
            port,
            secure=self.SECURE,
            outbound_dane=True,
        )
        yield self.submit()
        yield self.assert_deferred("TLS failure", "validation-failure")
        self.assertEqual(maildir_files(self.remote, "someone@remote.test"), [])

    @defer.inlineCallbacks
    def test_bogus_tlsa_lookup_defers(self) -> Any:
        """A TLSA lookup that fails under DNSSEC (SERVFAIL: bogus) means no delivery to that host."""
        port = yield self.start_remote()
        yield self.start_sender(
            {("_25._tcp.mx.remote.test", "TLSA"): SERVFAIL}, port, secure=self.SECURE, outbound_dane=True
        )
        yield self.submit()
        yield self.assert_deferred("dnssec-invalid")
        self.assertEqual(maildir_files(self.remote, "someone@remote.test"), [])

    @defer.inlineCallbacks
    def test_without_ad_bit_tlsa_ignored(self) -> Any:
        """The same mismatching TLSA record without the AD bit is ignored: delivered (opportunistic TLS)."""
        port = yield self.start_remote()
        yield self.start_sender(
            {("_25._tcp.mx.remote.test", "TLSA"): [(3, 1, 1, "00" * 32)]},
            port,
            outbound_dane=True,
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        self.received_over_tls()

    @defer.inlineCallbacks
    def test_dane_takes_precedence_over_mta_sts(self) -> Any:
        """With valid TLSA records an MTA-STS policy that would refuse the MX is not consulted for it."""
        port = yield self.start_remote()
        policy_port = self.serve_policy(policy("enforce", "*.elsewhere.test"))
        yield self.start_sender(
            {
                ("_25._tcp.mx.remote.test", "TLSA"): [(3, 1, 1, spki_sha256(self.cert))],
                ("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"],
            },
            port,
            policy_port=policy_port,
            secure=self.SECURE,
            outbound_dane=True,
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])


class TLSRPTTests(SecurityCase):
    """Daily reports (RFC 8460) to the rua of ``_smtp._tls``."""

    @defer.inlineCallbacks
    def test_report_sent_to_mailto_rua(self) -> Any:
        """A success and a refused MX give one report with the right counts, mailed to the rua."""
        port = yield self.start_remote()
        policy_port = self.serve_policy(policy("enforce", "mx.remote.test"))
        yield self.start_sender(
            {
                ("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"],
                ("_smtp._tls.remote.test", "TXT"): ["v=TLSRPTv1; rua=mailto:reports@remote.test"],
            },
            port,
            policy_port=policy_port,
        )
        yield self.submit()
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        yield wait_for(self.queue_empty)
        reports = self.sender.runner.security.reports
        # A failure too, counted as the runner would (an MX whose certificate names another host).
        from txmail.tlsverify import TLSFailure

        reports.record(
            "remote.test", "sts", ["version: STSv1"], None, TLSFailure("certificate-host-mismatch", "x"),
            receiving_mx="mx2.remote.test", address="192.0.2.7", now=reactor.seconds(),  # type: ignore[attr-defined]
        )  # fmt: skip
        sent = yield reports.send_reports(include_today=True)
        self.assertEqual(sent, [("remote.test", "mailto:reports@remote.test", True)])
        self.assertEqual(reports.days, {})
        yield wait_for(lambda: maildir_files(self.remote, "reports@remote.test") != [])
        [path] = maildir_files(self.remote, "reports@remote.test")
        with open(path, "rb") as f:
            msg = email.message_from_bytes(f.read())
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "tlsrpt")
        self.assertEqual(msg["TLS-Report-Domain"], "remote.test")
        self.assertEqual(msg["TLS-Report-Submitter"], "mx.example.test")
        self.assertTrue(
            " ".join(msg["Subject"].split()).startswith(
                "Report Domain: remote.test Submitter: mx.example.test Report-ID: <"
            )
        )
        [attachment] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        self.assertTrue(attachment.get_filename().startswith("mx.example.test!remote.test!"))
        report = json.loads(gzip.decompress(attachment.get_payload(decode=True)))
        policies = {tuple(p["policy"]["policy-string"])[:2]: p for p in report["policies"]}
        enforced = policies[("version: STSv1", "mode: enforce")]
        self.assertEqual(enforced["policy"]["policy-type"], "sts")
        self.assertEqual(enforced["policy"]["policy-domain"], "remote.test")
        self.assertEqual(
            enforced["summary"], {"total-successful-session-count": 1, "total-failure-session-count": 0}
        )
        [other] = [p for p in report["policies"] if p is not enforced]
        self.assertEqual(other["summary"]["total-failure-session-count"], 1)
        [detail] = other["failure-details"]
        self.assertEqual(detail["result-type"], "certificate-host-mismatch")
        self.assertEqual(detail["receiving-mx-hostname"], "mx2.remote.test")
        self.assertEqual(detail["receiving-ip"], "192.0.2.7")
        self.assertEqual(report["date-range"]["start-datetime"], self.today() + "T00:00:00Z")


class RequireTLSTests(SecurityCase):
    """REQUIRETLS (RFC 8689) from submission to the remote MX."""

    #: The names the fake resolver vouches for (AD bit), as a validating resolver would.
    SECURE = ("remote.test", "mx.remote.test", "_25._tcp.mx.remote.test")

    @defer.inlineCallbacks
    def test_requiretls_end_to_end(self) -> Any:
        """
        A REQUIRETLS message to an MX from a DNSSEC-validated lookup is relayed over verified TLS
        to a next hop that offers REQUIRETLS.
        """
        port = yield self.start_remote()
        yield self.start_sender({}, port, secure=self.SECURE, outbound_dane=True)
        yield self.submit(requiretls=True)
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        self.received_over_tls()

    @defer.inlineCallbacks
    def test_requiretls_to_an_mx_named_by_mta_sts(self) -> Any:
        """Without DNSSEC, an MX that the domain's MTA-STS policy names takes REQUIRETLS mail (RFC 8689 4.2.1)."""
        port = yield self.start_remote()
        policy_port = self.serve_policy(policy("testing", "mx.remote.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]}, port, policy_port=policy_port
        )
        yield self.submit(requiretls=True)
        yield wait_for(lambda: maildir_files(self.remote, "someone@remote.test") != [])
        self.received_over_tls()

    @defer.inlineCallbacks
    def test_requiretls_to_an_insecure_mx_bounces_5_7_30(self) -> Any:
        """
        An MX from an unvalidated lookup, with no MTA-STS policy naming it, is never contacted for
        a REQUIRETLS message (RFC 8689 section 4.2.1): the sender gets a 5.7.30 bounce.
        """
        port = self.start_plain_remote(tls=True)
        yield self.start_sender({}, port)
        yield self.submit(b"Subject: secret\r\n\r\nhush\r\n", requiretls=True)
        yield wait_for(lambda: maildir_files(self.sender, "alice@example.test") != [])
        self.assertEqual(self.plain.commands, [])  # not even connected to
        [path] = maildir_files(self.sender, "alice@example.test")
        with open(path, "rb") as f:
            text = f.read().decode()
        self.assertIn("Status: 5.7.30", text)
        self.assertIn("secured neither by DNSSEC nor by an MTA-STS policy", text)
        # Without REQUIRETLS the same MX is used as before.
        yield self.submit(b"Subject: open\r\n\r\nplain\r\n")
        yield wait_for(lambda: self.plain.messages != [])

    @defer.inlineCallbacks
    def test_hop_without_requiretls_bounces_5_7_30(self) -> Any:
        """A next hop with STARTTLS but without REQUIRETLS gets nothing; the sender gets a 5.7.30 bounce."""
        port = self.start_plain_remote(tls=True)
        yield self.start_sender({}, port, secure=self.SECURE, outbound_dane=True)
        yield self.submit(b"Subject: secret\r\n\r\nhush\r\n", requiretls=True, ret_full=True)
        yield wait_for(lambda: maildir_files(self.sender, "alice@example.test") != [])
        self.assertEqual(self.plain.messages, [])
        self.assertFalse(any(c.upper().startswith(b"MAIL") for c in self.plain.commands))
        [path] = maildir_files(self.sender, "alice@example.test")
        with open(path, "rb") as f:
            text = f.read().decode()
        self.assertIn("Status: 5.7.30", text)
        self.assertIn("Action: failed", text)
        self.assertIn("Subject: secret", text)  # the header comes back (RFC 8689 section 5)...
        self.assertNotIn("hush", text)  # ...never the body

    @defer.inlineCallbacks
    def test_requiretls_refused_without_tls(self) -> Any:
        """MAIL FROM with REQUIRETLS on a connection without TLS gets 530 5.7.10; EHLO does not offer it."""
        yield self.start_remote()
        address = self.remote.address("mta")

        def talk() -> tuple[Any, ...]:
            with smtplib.SMTP(*address) as s:
                s.ehlo("client.test")
                plain_offer = s.has_extn("requiretls")
                refused = s.mail("a@client.test", ["REQUIRETLS"])
                s.rset()
                s.starttls(context=stdlib_ssl._create_unverified_context())
                s.ehlo("client.test")
                tls_offer = s.has_extn("requiretls")
                accepted = s.mail("a@client.test", ["REQUIRETLS"])
                return plain_offer, refused, tls_offer, accepted

        plain_offer, refused, tls_offer, accepted = yield deferToThread(talk)
        self.assertFalse(plain_offer)
        self.assertEqual(refused[0], 530)
        self.assertIn(b"5.7.10", refused[1])
        self.assertTrue(tls_offer)
        self.assertEqual(accepted[0], 250)

    @defer.inlineCallbacks
    def test_tls_required_no_ignores_policy(self) -> Any:
        """``TLS-Required: No`` lets a message through to an MX an enforce policy would refuse."""
        port = self.start_plain_remote(tls=False)
        policy_port = self.serve_policy(policy("enforce", "mx.remote.test"))
        yield self.start_sender(
            {("_mta-sts.remote.test", "TXT"): ["v=STSv1; id=1"]}, port, policy_port=policy_port
        )
        yield self.submit(b"TLS-Required: No\r\nSubject: public\r\n\r\nnothing secret\r\n")
        yield wait_for(lambda: self.plain.messages != [])
        yield wait_for(self.queue_empty)
