"""
End to end mail authentication: two txmail instances on loopback and a
DNS server the test runs, publishing SPF, DKIM keys and DMARC policies.

The sender (``sender.test``, signing with rsa-sha256 and ed25519-sha256)
relays to the receiver (``receiver.test``), whose MX checks every message:
the receiver's copy records ``spf=pass``, ``dkim=pass`` and ``dmarc=pass``.
A forged From under ``p=reject`` is refused.  The receiver forwards
``fwd@receiver.test`` back to ``carol@sender.test`` with SRS and an ARC
seal; the sender's MX then sees SPF pass for the SRS sender and the
receiver's results in the ARC chain (the receiver is a trusted sealer).
Neither instance trusts 127.0.0.1 (``trusted_networks = []``), so loopback
clients are checked like any other.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._dns import start_dns_server
from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for
from txmail.policy import dkim

PASSWORD = "correct horse"
SENDER_RSA, SENDER_RSA_RECORD = dkim.generate_key("rsa-sha256", 2048)
SENDER_ED, SENDER_ED_RECORD = dkim.generate_key("ed25519-sha256")
RECEIVER_RSA, RECEIVER_RSA_RECORD = dkim.generate_key("rsa-sha256", 2048)

MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@receiver.test>\r\n"
    b"Subject: signed and sealed\r\n"
    b"Message-ID: <e2e-1@sender.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def header(data: bytes) -> bytes:
    """The header section, unfolded."""
    return data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")


def results_of(data: bytes, authserv_id: bytes) -> bytes:
    """The first Authentication-Results field written by *authserv_id*, unfolded."""
    for line in header(data).split(b"\r\n"):
        if line.lower().startswith(b"authentication-results: " + authserv_id.lower() + b";"):
            return line
    raise AssertionError(f"no Authentication-Results from {authserv_id!r} in {header(data)!r}")


class MailAuthenticationTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        keys = os.path.abspath(self.mktemp())
        os.makedirs(keys)
        paths = {}
        for name, content in (("s-rsa", SENDER_RSA), ("s-ed", SENDER_ED), ("r-rsa", RECEIVER_RSA)):
            paths[name] = os.path.join(keys, name + ".key")
            dkim.write_key(paths[name], content)
        zone = {
            ("sender.test", "MX"): [(10, "mx.sender.test")],
            ("mx.sender.test", "A"): ["127.0.0.1"],
            ("receiver.test", "MX"): [(10, "mx.receiver.test")],
            ("mx.receiver.test", "A"): ["127.0.0.1"],
            ("1.0.0.127.in-addr.arpa", "PTR"): ["mx.sender.test"],
            ("sender.test", "TXT"): ["v=spf1 mx -all"],
            ("receiver.test", "TXT"): ["v=spf1 ip4:127.0.0.1 -all"],
            ("rsa._domainkey.sender.test", "TXT"): [SENDER_RSA_RECORD],
            ("ed._domainkey.sender.test", "TXT"): [SENDER_ED_RECORD],
            ("arc._domainkey.receiver.test", "TXT"): [RECEIVER_RSA_RECORD],
            ("_dmarc.sender.test", "TXT"): ["v=DMARC1; p=reject"],
            ("_dmarc.receiver.test", "TXT"): ["v=DMARC1; p=reject"],
        }
        dns_host, dns_port = start_dns_server(self, zone)
        resolvers = [f"{dns_host}:{dns_port}"]
        self.receiver = yield start_server(
            self,
            hostname="mx.receiver.test",
            domains=["receiver.test"],
            resolvers=resolvers,
            outbound_enabled=True,
            policy={
                "policy": {"trusted_networks": [], "arc_trusted_sealers": ["sender.test"]},
                "dkim": {"keys": [{"domain": "receiver.test", "selector": "arc", "key": paths["r-rsa"]}]},
                "srs": {"secrets": ["receiver's own secret"]},
            },
        )
        self.receiver.directory.add_user("bob@receiver.test", PASSWORD)
        self.receiver.directory.add_alias("fwd@receiver.test", ["carol@sender.test"])
        self.sender = yield start_server(
            self,
            hostname="mx.sender.test",
            domains=["sender.test"],
            resolvers=resolvers,
            outbound_enabled=True,
            policy={
                "policy": {"trusted_networks": [], "arc_trusted_sealers": ["receiver.test"]},
                "dkim": {
                    "keys": [
                        {"domain": "sender.test", "selector": "rsa", "key": paths["s-rsa"]},
                        {"domain": "sender.test", "selector": "ed", "key": paths["s-ed"]},
                    ]
                },
            },
        )
        self.sender.directory.add_user("alice@sender.test", PASSWORD)
        self.sender.directory.add_user("carol@sender.test", PASSWORD)
        # Each relays to the other's port 25 listener (both are 127.0.0.1 in the zone).
        self.sender.runner.relay_port = self.receiver.address("mta")[1]
        self.receiver.runner.relay_port = self.sender.address("mta")[1]

    def submit(self, rcpts: list[str], body: bytes) -> defer.Deferred[Any]:
        address = self.sender.address("submission")

        def send() -> None:
            with smtplib.SMTP(*address) as s:
                s.ehlo("client.test")
                s.login("alice@sender.test", PASSWORD)
                s.sendmail("alice@sender.test", rcpts, body)

        return deferToThread(send)

    @defer.inlineCallbacks
    def test_signed_mail_passes_at_the_remote_mx(self) -> Any:
        """Mail submitted to the sender reaches the receiver with spf=pass, dkim=pass (both keys) and dmarc=pass."""
        yield self.submit(["bob@receiver.test"], MESSAGE)
        yield wait_for(lambda: maildir_files(self.receiver, "bob@receiver.test") != [])
        [path] = maildir_files(self.receiver, "bob@receiver.test")
        data = read(path)
        results = results_of(data, b"mx.receiver.test")
        for expected in (
            b"iprev=pass",
            b"spf=pass",
            b"smtp.mailfrom=alice@sender.test",
            b"dkim=pass",
            b"header.a=rsa-sha256",
            b"header.a=ed25519-sha256",
            b"dmarc=pass",
            b"header.from=sender.test",
        ):
            self.assertIn(expected, results)
        self.assertEqual(header(data).count(b"DKIM-Signature:"), 2)
        self.assertTrue(data.endswith(b"Hello Bob.\r\n"))

    @defer.inlineCallbacks
    def test_forged_from_rejected(self) -> Any:
        """A message claiming to be from sender.test, sent from elsewhere, is refused under p=reject."""
        address = self.receiver.address("mta")
        forged = MESSAGE.replace(b"Subject: signed", b"Subject: forged")

        def send() -> Any:
            with smtplib.SMTP(*address) as s:
                s.ehlo("spoofer.test")
                try:
                    s.sendmail("anyone@spoofer.test", ["bob@receiver.test"], forged)
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error
            return None

        refusal = yield deferToThread(send)
        self.assertEqual(refusal, (550, b"5.7.1 Email rejected per DMARC policy for sender.test"))
        self.assertEqual(maildir_files(self.receiver, "bob@receiver.test"), [])

    @defer.inlineCallbacks
    def test_forwarded_mail_keeps_its_results(self) -> Any:
        """Forwarded back through an alias, the message passes SPF by SRS and carries the receiver's ARC results."""
        yield self.submit(["fwd@receiver.test"], MESSAGE.replace(b"bob@receiver.test", b"fwd@receiver.test"))
        yield wait_for(lambda: maildir_files(self.sender, "carol@sender.test") != [])
        [path] = maildir_files(self.sender, "carol@sender.test")
        data = read(path)
        top = header(data)
        return_path = top.split(b"\r\n")[0]
        self.assertTrue(return_path.startswith(b"Return-Path: <SRS0="), return_path)
        self.assertTrue(return_path.endswith(b"=sender.test=alice@receiver.test>"), return_path)
        results = results_of(data, b"mx.sender.test")
        self.assertIn(b"spf=pass", results)
        self.assertIn(b"smtp.mailfrom=SRS0=", results)
        self.assertIn(b"arc=pass", results)
        self.assertIn(b"dkim=pass", results)
        self.assertIn(b"dmarc=pass", results)
        self.assertIn(b"ARC-Seal: i=1;", top)
        aar = [line for line in top.split(b"\r\n") if line.startswith(b"ARC-Authentication-Results:")]
        self.assertEqual(len(aar), 1)
        self.assertIn(b"mx.receiver.test", aar[0])
        self.assertIn(b"dmarc=pass", aar[0])

    @defer.inlineCallbacks
    def test_bounce_is_signed(self) -> Any:
        """A bounce the sender writes for a refused recipient is DKIM-signed with its domain's keys."""
        yield self.submit(
            ["nobody@receiver.test"], MESSAGE.replace(b"bob@receiver.test", b"nobody@receiver.test")
        )
        yield wait_for(lambda: maildir_files(self.sender, "alice@sender.test") != [])
        [path] = maildir_files(self.sender, "alice@sender.test")
        data = read(path)
        top = header(data)
        self.assertIn(b"From: Mail Delivery System <MAILER-DAEMON@mx.sender.test>", top)
        signatures = [line for line in top.split(b"\r\n") if line.startswith(b"DKIM-Signature:")]
        self.assertEqual(len(signatures), 2)
        self.assertTrue(all(b"d=sender.test;" in line for line in signatures), signatures)
        from txmail.dnsdata import DictAnswers, Question

        names = {
            "rsa._domainkey.sender.test": SENDER_RSA_RECORD,
            "ed._domainkey.sender.test": SENDER_ED_RECORD,
        }
        answers = {n: DictAnswers({(n, "TXT"): [r]}).answer(Question(n, "TXT")) for n, r in names.items()}
        signed = data.split(b"\r\n", 1)[1]  # without the Return-Path of final delivery
        self.assertEqual(sorted(r.result for r in dkim.verify(signed, answers)), ["pass", "pass"])
