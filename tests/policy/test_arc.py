"""
ARC (txmail.policy.arc, RFC 8617): sealing, validating chains of one and
more sets, each structural rule of RFC 8617 section 5.2, trusted sealers,
and agreement with dkimpy's independent ARC validator.  Interoperability
with Mail::DKIM's ARC signer and verifier is in test_dkim's
MailDKIMInteropTests.test_arc_both_ways.
"""

from __future__ import annotations

import re

import dkim as dkimpy
from twisted.trial.unittest import SynchronousTestCase

from tests.policy.test_dkim import MESSAGE, NOW, make_key
from txmail.dnsdata import Answer, DNSStatus
from txmail.policy.arc import ARCResult, arc_key_queries, arc_seal, arc_verify
from txmail.policy.authres import AuthResult
from txmail.policy.dkim import SigningKey, sign

__all__ = ["ARCSealTests", "ARCStructureTests", "ARCVerifyTests"]

RESULTS = "spf=pass smtp.mailfrom=alice@example.com; dkim=pass header.d=example.com; dmarc=pass header.from=example.com"


def _keys() -> tuple[SigningKey, SigningKey, dict[str, Answer]]:
    """The first hop's (mx.example.org) and the list's (lists.example.net) sealing keys, and their records."""
    first, record = make_key("rsa-sha256")
    first = SigningKey("example.org", "arc1", first.algorithm, first.private_key)
    second = SigningKey("lists.example.net", "arc2", first.algorithm, first.private_key)
    answers = {k.record_name: Answer.of(record.encode()) for k in (first, second)}
    return first, second, answers


def _two_hops() -> tuple[bytes, dict[str, Answer]]:
    """A message sealed by example.org, then changed and sealed by a mailing list."""
    first, second, answers = _keys()
    hop1 = arc_seal(
        MESSAGE, first, authserv_id="mx.example.org", auth_results=RESULTS, chain_validation="none", now=NOW
    )
    # The list validates the chain as it arrives, then changes the message and seals it.
    validated = arc_verify(hop1 + MESSAGE, answers, now=NOW)
    changed = (hop1 + MESSAGE).replace(b"Subject: Lunch", b"Subject: [team] Lunch") + b"--\r\nteam list\r\n"
    hop2 = arc_seal(
        changed,
        second,
        authserv_id="lists.example.net",
        auth_results=[AuthResult("dkim", "fail", properties=(("header", "d", "example.com"),))],
        chain_validation=validated.result,
        now=NOW + 5,
    )
    return hop2 + changed, answers


def _dkimpy_arc(message: bytes, answers: dict[str, Answer]) -> bytes:
    """dkimpy's own verdict on the chain."""
    records = {f"{name}.".encode(): a.records[0] for name, a in answers.items()}
    return dkimpy.arc_verify(message, dnsfunc=lambda name, timeout=5: records.get(name))[0]


class ARCSealTests(SynchronousTestCase):
    """arc_seal: the three fields of a new set."""

    def test_first_set(self) -> None:
        """A message without a chain gets i=1, cv=none, and an AAR with the results and arc=none."""
        first, _, answers = _keys()
        fields = arc_seal(
            MESSAGE,
            first,
            authserv_id="mx.example.org",
            auth_results=RESULTS,
            chain_validation="none",
            now=NOW,
        )
        names = re.findall(rb"^([A-Za-z-]+):", fields, re.M)
        self.assertEqual(names, [b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results"])
        self.assertTrue(fields.endswith(b"\r\n"))
        self.assertNotIn(b"\n", fields.replace(b"\r\n", b""))
        unfolded = fields.replace(b"\r\n\t", b" ")
        self.assertIn(
            b"ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=arc1; t=1704067200; b=", unfolded
        )
        self.assertIn(
            b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass smtp.mailfrom=alice@example.com; "
            b"dkim=pass header.d=example.com; dmarc=pass header.from=example.com; arc=none\r\n",
            unfolded,
        )
        self.assertRegex(
            unfolded, rb"ARC-Message-Signature: i=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=arc1;"
        )
        self.assertIn(
            b"h=from:to:subject:date:message-id:mime-version:content-type:from;", re.sub(rb"\s", b"", fields)
        )
        sealed = fields + MESSAGE
        self.assertEqual(sorted(arc_key_queries(sealed)), ["arc1._domainkey.example.org"])
        result = arc_verify(sealed, answers, now=NOW)
        self.assertEqual((result.result, result.count, result.oldest_pass), ("pass", 1, 0))
        self.assertEqual(_dkimpy_arc(sealed, answers), b"pass")

    def test_signs_dkim_signatures_and_keeps_an_arc_result(self) -> None:
        """The AMS covers DKIM-Signature fields (RFC 8617 section 4.1.2); an arc= result given is not doubled."""
        first, _, _ = _keys()
        ed, _ = make_key("ed25519-sha256")
        signed = sign(MESSAGE, [ed], now=NOW) + MESSAGE
        fields = arc_seal(
            signed,
            first,
            authserv_id="mx.example.org",
            auth_results="arc=none; dkim=pass",
            chain_validation="none",
        )
        unfolded = fields.replace(b"\r\n\t", b" ")
        self.assertIn(b"h=dkim-signature:from:to:", re.sub(rb"\s", b"", fields))
        self.assertEqual(unfolded.count(b"arc=none"), 1)

    def test_results_text_is_written_as_given(self) -> None:
        """Text results keep their quoted strings and comments; lines break only between results."""
        first, _, answers = _keys()
        text = 'spf=pass smtp.mailfrom="odd;local"@example.com (one; comment); dkim=none'
        fields = arc_seal(
            MESSAGE, first, authserv_id="mx.example.org", auth_results=text, chain_validation="none"
        )
        self.assertIn(
            b"ARC-Authentication-Results: i=1; mx.example.org;\r\n"
            b'\tspf=pass smtp.mailfrom="odd;local"@example.com (one; comment);\r\n'
            b"\tdkim=none;\r\n\tarc=none\r\n",
            fields,
        )
        [arc_set] = arc_verify(fields + MESSAGE, answers).sets
        self.assertEqual([r.method for r in arc_set.results], ["spf", "dkim", "arc"])

    def test_results_as_authres_values(self) -> None:
        """AuthResult values are written by authres.format_header (quoting included), then arc= is added."""
        first, _, answers = _keys()
        results = [AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "odd;local@example.com"),))]
        fields = arc_seal(
            MESSAGE, first, authserv_id="mx.example.org", auth_results=results, chain_validation="none"
        )
        result = arc_verify(fields + MESSAGE, answers)
        self.assertEqual(result.result, "pass")
        [arc_set] = result.sets
        self.assertEqual([(r.method, r.result) for r in arc_set.results], [("spf", "pass"), ("arc", "none")])
        spf = arc_set.find("spf")
        assert spf is not None
        self.assertEqual(spf.properties, (("smtp", "mailfrom", "odd;local@example.com"),))

    def test_refusals(self) -> None:
        """Ed25519 keys, contradictory chain statuses and malformed results are refused."""
        first, _, _ = _keys()
        ed, _ = make_key("ed25519-sha256")
        args = {"authserv_id": "mx.example.org", "auth_results": RESULTS}
        self.assertRaises(ValueError, arc_seal, MESSAGE, ed, chain_validation="none", **args)
        self.assertRaises(ValueError, arc_seal, MESSAGE, first, chain_validation="pass", **args)
        self.assertRaises(ValueError, arc_seal, MESSAGE, first, chain_validation="maybe", **args)
        sealed = arc_seal(MESSAGE, first, chain_validation="none", **args) + MESSAGE
        self.assertRaises(ValueError, arc_seal, sealed, first, chain_validation="none", **args)
        for bad in (
            {"authserv_id": "mx example"},
            {"auth_results": "spf=pass\nX-Injected: 1"},
            {"auth_results": "spf"},
        ):
            self.assertRaises(
                ValueError, arc_seal, MESSAGE, first, chain_validation="none", **{**args, **bad}
            )

    def test_no_set_after_a_failed_chain_or_the_fiftieth(self) -> None:
        """Nothing is added when the newest seal says cv=fail (section 5.1 step 2) or 50 sets exist."""
        first, _, _ = _keys()
        failed = b"ARC-Seal: i=1; a=rsa-sha256; cv=fail; d=x.example; s=s; b=AAAA\r\n" + MESSAGE
        self.assertEqual(
            arc_seal(failed, first, authserv_id="a", auth_results="", chain_validation="fail"), b""
        )
        fifty = b"".join(
            b"ARC-Seal: i=%d; a=rsa-sha256; cv=pass; d=x.example; s=s; b=AAAA\r\n" % i for i in range(1, 51)
        )
        self.assertEqual(
            arc_seal(fifty + MESSAGE, first, authserv_id="a", auth_results="", chain_validation="pass"), b""
        )


class ARCVerifyTests(SynchronousTestCase):
    """arc_verify on chains that pass and chains that fail."""

    def test_two_hops_pass_with_oldest_pass(self) -> None:
        """A chain of two sets passes although the list changed the message; oldest-pass is 2."""
        message, answers = _two_hops()
        self.assertEqual(
            arc_key_queries(message), ["arc2._domainkey.lists.example.net", "arc1._domainkey.example.org"]
        )
        result = arc_verify(message, answers, now=NOW + 5)
        self.assertEqual((result.result, result.reason, result.count, result.oldest_pass), ("pass", "", 2, 2))
        self.assertEqual(result.sealers, ("example.org", "lists.example.net"))
        first, second = result.sets
        self.assertEqual(
            (first.instance, first.chain_validation, first.ams_valid, first.seal_valid),
            (1, "none", False, True),
        )
        self.assertEqual((second.instance, second.chain_validation, second.ams_valid), (2, "pass", True))
        self.assertEqual(first.authserv_id, "mx.example.org")
        self.assertEqual(first.payload, "mx.example.org; " + RESULTS + "; arc=none")
        self.assertEqual(
            (first.result_of("dmarc"), first.result_of("SPF"), first.result_of("iprev")),
            ("pass", "pass", None),
        )
        self.assertEqual(second.payload, "lists.example.net; dkim=fail header.d=example.com; arc=pass")
        self.assertEqual(_dkimpy_arc(message, answers), b"pass")

    def test_newest_trusted_sealer(self) -> None:
        """newest_trusted gives the newest set of a trusted sealer (RFC 8617 section 7.2.1), only on pass."""
        message, answers = _two_hops()
        result = arc_verify(message, answers, now=NOW + 5)
        trusted = result.newest_trusted(["Example.ORG."])
        assert trusted is not None
        self.assertEqual((trusted.instance, trusted.result_of("dmarc")), (1, "pass"))
        newest = result.newest_trusted(["example.org", "lists.example.net"])
        assert newest is not None
        self.assertEqual(newest.instance, 2)
        self.assertIsNone(result.newest_trusted(["sub.example.org", "example.net"]))
        failed = arc_verify(message.replace(b"noon", b"one"), answers, now=NOW + 5)
        self.assertIsNone(failed.newest_trusted(["example.org"]))

    def test_changes_after_the_newest_seal_fail(self) -> None:
        """A body change after the newest seal fails its AMS; an edited AAR fails the seals."""
        message, answers = _two_hops()
        result = arc_verify(message.replace(b"noon", b"one"), answers, now=NOW + 5)
        self.assertEqual(
            (result.result, result.reason), ("fail", "ARC-Message-Signature i=2: body hash mismatch")
        )
        self.assertIsNone(result.oldest_pass)
        forged = message.replace(b"dmarc=pass header.from", b"dmarc=fail header.from")
        result = arc_verify(forged, answers, now=NOW + 5)
        self.assertEqual((result.result, result.reason), ("fail", "ARC-Seal i=2: signature did not verify"))
        self.assertEqual(_dkimpy_arc(forged, answers), b"fail")

    def test_dns_problems_are_failures(self) -> None:
        """A failed or negative key lookup fails the chain: ARC errors are permanent (RFC 8617 section 5.2.1)."""
        message, answers = _two_hops()
        for status, reason in (
            (DNSStatus.ERROR, "key lookup failed"),
            (DNSStatus.NXDOMAIN, "no key for signature"),
        ):
            broken = {**answers, "arc1._domainkey.example.org": Answer(status)}
            result = arc_verify(message, broken, now=NOW + 5)
            self.assertEqual((result.result, result.reason), ("fail", f"ARC-Seal i=1: {reason}"))
        self.assertRaises(ValueError, arc_verify, message, {}, now=NOW + 5)

    def test_sealing_a_failed_chain(self) -> None:
        """A chain that failed is sealed with cv=fail over the new set only, and then validates as fail."""
        message, answers = _two_hops()
        first, _, _ = _keys()
        broken = message.replace(b"noon", b"one")
        status = arc_verify(broken, answers, now=NOW + 5).result
        fields = arc_seal(
            broken, first, authserv_id="mx.example.org", auth_results="", chain_validation=status
        )
        self.assertIn(b"ARC-Seal: i=3; a=rsa-sha256; cv=fail;", fields)
        self.assertIn(b"ARC-Authentication-Results: i=3; mx.example.org;\r\n\tarc=fail\r\n", fields)
        resealed = fields + broken
        self.assertEqual(arc_key_queries(resealed), [])
        self.assertEqual(arc_verify(resealed, {}), ARCResult("fail", "ARC-Seal i=3 reports cv=fail", 3))
        self.assertEqual(
            arc_seal(resealed, first, authserv_id="a", auth_results="", chain_validation="fail"), b""
        )

    def test_no_chain(self) -> None:
        """A message without ARC fields is none, with no key to look up."""
        self.assertEqual(arc_key_queries(MESSAGE), [])
        self.assertEqual(arc_verify(MESSAGE, {}), ARCResult("none"))


class ARCStructureTests(SynchronousTestCase):
    """RFC 8617 section 5.2 step 3: malformed chains fail without a key lookup."""

    def setUp(self) -> None:
        self.message, self.answers = _two_hops()

    def check(self, message: bytes, reason: str) -> None:
        self.assertEqual(arc_key_queries(message), [])
        result = arc_verify(message, {}, now=NOW + 5)
        self.assertEqual((result.result, result.reason, result.sets), ("fail", reason, ()))

    def field(self, name: bytes, instance: int) -> bytes:
        match = re.search(rb"^%s: i=%d;.*?\r\n(?![ \t])" % (name, instance), self.message, re.M | re.S)
        assert match is not None
        return match.group(0)

    def test_missing_and_duplicate_fields(self) -> None:
        """Each set has exactly one AAR, AMS and AS."""
        ams = self.field(b"ARC-Message-Signature", 1)
        reason = "ARC set 1 does not have exactly one of each ARC header field"
        self.check(self.message.replace(ams, b""), reason)
        self.check(self.message.replace(ams, ams + ams), reason)

    def test_instances(self) -> None:
        """Instances run from 1 without gaps, within 1-50."""
        first_set = b"".join(
            self.field(n, 1) for n in (b"ARC-Seal", b"ARC-Message-Signature", b"ARC-Authentication-Results")
        )
        self.check(
            self.message.replace(first_set, b""),
            "ARC set 1 does not have exactly one of each ARC header field",
        )
        zero = self.message.replace(b"ARC-Authentication-Results: i=1;", b"ARC-Authentication-Results: i=0;")
        self.check(zero, "ARC-Authentication-Results without a valid instance (i=1 to 50)")
        # Longer than any instance (int() refuses more than 4,300 digits): invalid, not an exception.
        for digits in (b"0001", b"9" * 4301):
            huge = self.message.replace(
                b"ARC-Authentication-Results: i=1;", b"ARC-Authentication-Results: i=" + digits + b";"
            )
            self.check(huge, "ARC-Authentication-Results without a valid instance (i=1 to 50)")
        self.check(
            b"ARC-Seal: i=51; cv=pass; a=rsa-sha256; d=x; s=y; b=AAAA\r\n" + self.message,
            "more than 50 ARC sets",
        )

    def test_chain_validation_values(self) -> None:
        """cv=none on instance 1, cv=pass above; a newest cv=fail ends the chain (steps 2 and 3C)."""
        self.check(self.message.replace(b"cv=none", b"cv=pass"), "ARC-Seal i=1 has cv=pass, not none")
        self.check(
            self.message.replace(b"i=2; a=rsa-sha256; cv=pass", b"i=2; a=rsa-sha256; cv=none"),
            "ARC-Seal i=2 has cv=none, not pass",
        )
        self.check(
            self.message.replace(b"i=2; a=rsa-sha256; cv=pass", b"i=2; a=rsa-sha256; cv=fail"),
            "ARC-Seal i=2 reports cv=fail",
        )

    def test_seal_with_h_tag(self) -> None:
        """An ARC-Seal with h= fails (RFC 8617 section 4.1.3)."""
        self.check(
            self.message.replace(b"ARC-Seal: i=1; a=rsa-sha256;", b"ARC-Seal: i=1; h=from; a=rsa-sha256;"),
            "ARC-Seal i=1 has an h= tag (RFC 8617 section 4.1.3)",
        )
