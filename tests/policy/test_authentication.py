"""
SPF, DKIM, ARC and DMARC as policy hooks, the Authentication-Results field
and DKIM signing, through the real SMTP adapter on StringTransport with
answers from a dictionary resolver.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet.testing import StringTransport

from tests._dkim import load_key
from tests.smtp.test_server import FakeDirectory, ServerTestCase, plain
from txmail.auth.authenticator import Authenticator
from txmail.dnsdata import DictAnswers, DNSStatus, Question
from txmail.policy import arc, dkim
from txmail.policy.authentication import AuthenticationResultsHeader, DKIMSigner, InboundAuthentication
from txmail.policy.config import DomainPolicy, PolicyConfig
from txmail.resolver import StaticResolver

ED_PRIVATE, ED_RECORD = dkim.generate_key("ed25519-sha256")
SEALER_PRIVATE, SEALER_RECORD = dkim.generate_key("rsa-sha256", 1024)

MESSAGE = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <1@remote.test>\r\n"
    b"\r\n"
    b"Hello there.\r\n"
)


def zone(**extra: Any) -> dict[tuple[str, str], Any]:
    """remote.test publishes SPF for 192.0.2.7, an Ed25519 DKIM key and DMARC p=reject."""
    records: dict[tuple[str, str], Any] = {
        ("remote.test", "TXT"): ["v=spf1 ip4:192.0.2.7 -all"],
        ("client.test", "TXT"): ["v=spf1 ip4:192.0.2.7 -all"],
        ("ed._domainkey.remote.test", "TXT"): [ED_RECORD],
        ("_dmarc.remote.test", "TXT"): ["v=DMARC1; p=reject"],
        ("seal._domainkey.forwarder.test", "TXT"): [SEALER_RECORD],
    }
    records.update(extra)
    return records


def signed(message: bytes = MESSAGE) -> bytes:
    key = load_key("remote.test", "ed", ED_PRIVATE)
    return dkim.sign(message, [key], now=1_700_000_000) + message


def stuffed(message: bytes) -> bytes:
    return message.replace(b"\r\n.", b"\r\n..") + b".\r\n"


class InboundTests(ServerTestCase):
    """The inbound checks record their results and enforce DMARC."""

    def setUp(self) -> None:
        super().setUp()
        self.resolver = StaticResolver(zone())
        self.config = PolicyConfig()

    def policies(self, config: PolicyConfig | None = None) -> list[Any]:
        from txmail._fs import run_inline

        return [
            InboundAuthentication(
                config or self.config,
                resolver=self.resolver,
                run_blocking=run_inline,
                hostname="mx.example.test",
            ),
            AuthenticationResultsHeader("mx.example.test"),
        ]

    def send(
        self,
        message: bytes,
        *,
        sender: str = "sender@remote.test",
        config: PolicyConfig | None = None,
        **kw: Any,
    ) -> tuple[Any, StringTransport, list[bytes]]:
        proto, transport = self.connect(policies=self.policies(config), **kw)
        proto.dataReceived(
            f"EHLO client.test\r\nMAIL FROM:<{sender}>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n".encode()
        )
        proto.dataReceived(stuffed(message))
        return proto, transport, self.take(transport)

    def delivered_header(self) -> bytes:
        _, data, _ = self.router.delivered[0]
        return data.split(b"\r\n\r\n", 1)[0]

    def authentication_results(self) -> bytes:
        header = self.delivered_header()
        start = header.index(b"Authentication-Results:")
        end = header.index(b"\r\nReceived:", start)
        return header[start:end].replace(b"\r\n", b"")

    def test_all_pass(self) -> None:
        """SPF, DKIM and DMARC pass and are recorded in one Authentication-Results field above Received."""
        _, _, lines = self.send(signed())
        self.assertEqual(self.final_codes(lines)[-1], b"250")
        header = self.delivered_header()
        self.assertEqual(header.count(b"Authentication-Results:"), 1)
        results = self.authentication_results()
        self.assertTrue(results.startswith(b"Authentication-Results: mx.example.test;"), results)
        for expected in (
            b"spf=pass",
            b"smtp.mailfrom=sender@remote.test",
            b"smtp.helo=client.test",
            b"dkim=pass",
            b"header.d=remote.test",
            b"header.s=ed",
            b"dmarc=pass",
            b"header.from=remote.test",
        ):
            self.assertIn(expected, results)
        self.assertIsNone(self.router.delivered[0][0].folder)

    def test_spf_fail_recorded_or_refused(self) -> None:
        """An SPF fail is recorded; with spf_reject_fail on for the domain, RCPT gets 550 5.7.23."""
        self.resolver.add("remote.test", "TXT", ["v=spf1 -all exp=why.remote.test"])
        self.resolver.add("why.remote.test", "TXT", ["Not our server: %{i}"])
        self.resolver.add("_dmarc.remote.test", "TXT", ["v=DMARC1; p=none"])
        self.send(MESSAGE)
        self.assertIn(b"spf=fail", self.authentication_results())
        strict = dataclasses.replace(
            self.config, domains=(("example.test", DomainPolicy(spf_reject_fail=True)),)
        )
        _, _, lines = self.send(MESSAGE, config=strict)
        self.assertIn(b"550 5.7.23 SPF validation failed: Not our server: 192.0.2.7", lines)
        self.assertEqual(len(self.router.delivered), 1)

    def test_dmarc_reject(self) -> None:
        """An unsigned message failing SPF from a p=reject domain is refused at the end of data."""
        self.resolver.add("remote.test", "TXT", ["v=spf1 -all"])
        _, _, lines = self.send(MESSAGE)
        self.assertEqual(lines[-1], b"550 5.7.1 Email rejected per DMARC policy for remote.test")
        self.assertEqual(self.router.delivered, [])

    def test_dmarc_quarantine(self) -> None:
        """A failing message from a p=quarantine domain goes to the Junk folder."""
        self.resolver.add("remote.test", "TXT", ["v=spf1 -all"])
        self.resolver.add("_dmarc.remote.test", "TXT", ["v=DMARC1; p=quarantine"])
        _, _, lines = self.send(MESSAGE)
        self.assertEqual(self.final_codes(lines)[-1], b"250")
        self.assertEqual(self.router.delivered[0][0].folder, "Junk")
        self.assertIn(b"dmarc=fail", self.authentication_results())

    def test_dmarc_not_enforced_for_domain(self) -> None:
        """With dmarc_enforce off for the recipient's domain the failure is recorded only."""
        self.resolver.add("remote.test", "TXT", ["v=spf1 -all"])
        relaxed = dataclasses.replace(
            self.config, domains=(("example.test", DomainPolicy(dmarc_enforce=False)),)
        )
        _, _, lines = self.send(MESSAGE, config=relaxed)
        self.assertEqual(self.final_codes(lines)[-1], b"250")
        self.assertIn(b"dmarc=fail", self.authentication_results())

    def test_forged_from_with_valid_spf(self) -> None:
        """A From domain the sender does not control fails DMARC even though SPF passes for the envelope."""
        forged = MESSAGE.replace(b"From: Sender <sender@remote.test>", b"From: Bank <ceo@bank.test>")
        self.resolver.add("_dmarc.bank.test", "TXT", ["v=DMARC1; p=reject"])
        _, _, lines = self.send(forged)
        self.assertEqual(lines[-1], b"550 5.7.1 Email rejected per DMARC policy for bank.test")

    def test_multiple_from_refused(self) -> None:
        """A message with two From fields is refused (RFC 7489 section 6.6.1)."""
        double = b"From: a@remote.test\r\n" + MESSAGE
        _, _, lines = self.send(double)
        self.assertTrue(lines[-1].startswith(b"550 5.7.1"), lines[-1])

    def test_temperror_is_recorded(self) -> None:
        """A failed DNS lookup is a temperror, not a failure that rejects."""
        self.resolver.add("_dmarc.remote.test", "TXT", DNSStatus.ERROR)
        self.resolver.add("remote.test", "TXT", DNSStatus.ERROR)
        _, _, lines = self.send(MESSAGE)
        self.assertEqual(self.final_codes(lines)[-1], b"250")
        results = self.authentication_results()
        self.assertIn(b"spf=temperror", results)
        self.assertIn(b"dmarc=temperror", results)

    def test_forged_results_removed(self) -> None:
        """The client's Authentication-Results claiming our authserv-id are removed; others are kept."""
        forged = (
            b"Authentication-Results: MX.example.test; dkim=pass header.d=bank.test\r\n"
            b"Authentication-Results: other.test; spf=pass\r\n" + MESSAGE
        )
        self.send(forged)
        header = self.delivered_header()
        self.assertNotIn(b"header.d=bank.test", header)
        self.assertIn(b"Authentication-Results: other.test; spf=pass\r\n", header)
        self.assertEqual(header.count(b"Authentication-Results: mx.example.test"), 1)

    def test_trusted_client_is_not_checked(self) -> None:
        """A trusted client is not checked: no DNS question, no results, forged fields still removed."""
        forged = b"Authentication-Results: mx.example.test; dkim=pass\r\n" + MESSAGE
        self.send(forged, trusted_networks=["192.0.2.0/24"])
        self.assertEqual(self.resolver.questions, [])
        self.assertNotIn(b"Authentication-Results", self.delivered_header())

    def test_dkim_tampered(self) -> None:
        """A signed message changed in transit has dkim=fail; DMARC then rests on SPF."""
        tampered = signed().replace(b"Hello there.", b"Hello there!")
        self.send(tampered)
        results = self.authentication_results()
        self.assertIn(b"dkim=fail", results)
        self.assertIn(b"dmarc=pass", results)  # SPF aligned

    def seal(self, message: bytes, results: str) -> bytes:
        key = load_key("forwarder.test", "seal", SEALER_PRIVATE)
        return (
            arc.arc_seal(
                message, key, authserv_id="forwarder.test", auth_results=results, chain_validation="none"
            )
            + message
        )

    def test_trusted_arc_sealer_overrides_dmarc(self) -> None:
        """A forwarded message failing DMARC is accepted when a trusted ARC sealer recorded dmarc=pass."""
        # The forwarder changed the body (a list footer): the DKIM signature breaks.
        forwarded = signed().replace(b"Hello there.\r\n", b"Hello there.\r\n-- \r\nlist footer\r\n")
        sealed = self.seal(
            forwarded,
            "spf=pass smtp.mailfrom=remote.test; dkim=pass header.d=remote.test; dmarc=pass header.from=remote.test",
        )
        self.resolver.add(
            "remote.test", "TXT", ["v=spf1 -all"]
        )  # the forwarder's address is not remote.test's
        _, _, lines = self.send(sealed)
        self.assertEqual(lines[-1], b"550 5.7.1 Email rejected per DMARC policy for remote.test")
        self.router.delivered.clear()
        trusting = dataclasses.replace(self.config, arc_trusted_sealers=("forwarder.test",))
        _, _, lines = self.send(sealed, config=trusting)
        self.assertEqual(self.final_codes(lines)[-1], b"250")
        results = self.authentication_results()
        self.assertIn(b"arc=pass", results)
        self.assertIn(b"dmarc=fail", results)
        self.assertIn(b"trusted ARC sealer forwarder.test", results)


class SignerTests(ServerTestCase):
    """DKIM signing of submitted mail."""

    def test_submission_signed(self) -> None:
        """Mail from an authenticated submission client is signed with its author domain's key and verifies."""
        from txmail._fs import run_inline

        key = load_key("example.test", "ed", ED_PRIVATE)
        directory = FakeDirectory()
        proto, transport = self.connect(
            role="submission",
            policies=[DKIMSigner([key], run_blocking=run_inline, clock=self.clock)],
            authenticator=Authenticator(directory, clock=self.clock),
            directory=directory,
            plaintext_auth="always",
        )
        message = MESSAGE.replace(b"sender@remote.test", b"alice@example.test")
        proto.dataReceived(
            b"EHLO c.test\r\nAUTH PLAIN " + plain("alice@example.test", "secret") + b"\r\n"
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\n" + stuffed(message)
        )
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"250")
        _, data, _ = self.router.delivered[0]
        client_part = data[data.index(b"DKIM-Signature:") :]
        # Our Received field sits between the signature and the message: DKIM does not sign it.
        name = "ed._domainkey.example.test"
        answers = {name: DictAnswers({(name, "TXT"): [ED_RECORD]}).answer(Question(name, "TXT"))}
        (result,) = dkim.verify(client_part, answers, now=self.clock.seconds())
        self.assertEqual((result.result, result.domain), ("pass", "example.test"))

    def test_signature_covers_earlier_policies_changes(self) -> None:
        """A milter-like policy before the signer edits the Subject and replaces the body: the signature verifies on what is delivered."""
        from txmail._fs import run_inline
        from txmail.policy.hooks import Policy, Verdict

        class Disclaimer(Policy):
            def on_data(self, session: Any, message: Any) -> Verdict:
                return Verdict.edit_headers(lambda s: s.replace(b"Subject: ", b"Subject: [ext] ")).then(
                    Verdict.replace_body(b"Hello there.\r\n-- \r\nSent from txmail\r\n")
                )

        key = load_key("example.test", "ed", ED_PRIVATE)
        directory = FakeDirectory()
        proto, transport = self.connect(
            role="submission",
            policies=[Disclaimer(), DKIMSigner([key], run_blocking=run_inline, clock=self.clock)],
            authenticator=Authenticator(directory, clock=self.clock),
            directory=directory,
            plaintext_auth="always",
        )
        message = MESSAGE.replace(b"sender@remote.test", b"alice@example.test")
        proto.dataReceived(
            b"EHLO c.test\r\nAUTH PLAIN " + plain("alice@example.test", "secret") + b"\r\n"
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\n" + stuffed(message)
        )
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"250")
        _, data, _ = self.router.delivered[0]
        self.assertIn(b"Subject: [ext] ", data)
        self.assertTrue(data.endswith(b"-- \r\nSent from txmail\r\n"))
        client_part = data[data.index(b"DKIM-Signature:") :]
        name = "ed._domainkey.example.test"
        answers = {name: DictAnswers({(name, "TXT"): [ED_RECORD]}).answer(Question(name, "TXT"))}
        (result,) = dkim.verify(client_part, answers, now=self.clock.seconds())
        self.assertEqual(result.result, "pass")

    def test_other_domains_and_unauthenticated_not_signed(self) -> None:
        """Mail from a domain without keys, or from an untrusted port-25 client, is not signed."""
        from txmail._fs import run_inline

        key = load_key("example.test", "ed", ED_PRIVATE)
        signer = DKIMSigner([key], run_blocking=run_inline, clock=self.clock)
        proto, _ = self.connect(policies=[signer])
        message = MESSAGE.replace(b"sender@remote.test", b"alice@example.test")
        proto.dataReceived(
            b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            + stuffed(message)
        )
        self.assertNotIn(b"DKIM-Signature", self.router.delivered[0][1])
        proto, _ = self.connect(policies=[signer], trusted_networks=["192.0.2.0/24"])
        proto.dataReceived(
            b"EHLO c.test\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
            + stuffed(MESSAGE)
        )
        self.assertNotIn(b"DKIM-Signature", self.router.delivered[1][1])
        proto.dataReceived(
            b"MAIL FROM:<x@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + stuffed(message)
        )
        self.assertIn(b"DKIM-Signature", self.router.delivered[2][1])


class ResultsHeaderTests(ServerTestCase):
    """The Authentication-Results policy copies a message only when it has to."""

    def verdict(self, data: bytes | None, results: list[Any]) -> Any:
        from txmail.model import MessageSource
        from txmail.policy.hooks import MessageInfo, SessionInfo

        session = SessionInfo(role="mta", auth_results=results)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        message = MessageInfo(MessageSource.from_file(path, len(MESSAGE), data=data), len(MESSAGE), 0)
        return AuthenticationResultsHeader("mx.example.test").on_data(session, message)

    def test_nothing_to_do(self) -> None:
        """No results and no Authentication-Results field in the message: an empty verdict (no copy)."""
        verdict = self.verdict(MESSAGE, [])
        self.assertEqual((verdict.edits, verdict.headers), ((), ()))

    def test_edit_when_a_field_is_there_or_unknown(self) -> None:
        """A message carrying the field, or too large to be in memory, is edited."""
        self.assertEqual(len(self.verdict(b"Authentication-Results: x; none\r\n" + MESSAGE, []).edits), 1)
        self.assertEqual(len(self.verdict(None, []).edits), 1)

    def test_results_added(self) -> None:
        """Recorded results become one field."""
        from txmail.policy.authres import AuthResult

        verdict = self.verdict(MESSAGE, [AuthResult("iprev", "pass")])
        self.assertEqual(verdict.headers, (b"Authentication-Results: mx.example.test; iprev=pass\r\n",))
