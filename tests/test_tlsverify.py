"""Tests for :mod:`txmail.tlsverify`: TLSA usability, DANE matching and the WebPKI verdict."""

from __future__ import annotations

import hashlib
import os

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.trial.unittest import SynchronousTestCase

from tests._certs import make_certificate
from txmail.tlsverify import TLSA, CheckedTLS, dane_check, load_trust_root, usable_tlsa


def load(path: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def association(cert: x509.Certificate, selector: int, mtype: int) -> bytes:
    if selector == 0:
        data = cert.public_bytes(serialization.Encoding.DER)
    else:
        data = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return {0: data, 1: hashlib.sha256(data).digest(), 2: hashlib.sha512(data).digest()}[mtype]


class UsableTests(SynchronousTestCase):
    def test_only_dane_usages_with_known_parameters(self) -> None:
        """RFC 7672 section 3.1.3: PKIX-TA/EE, unknown selectors and bad digest lengths are unusable."""
        good = [TLSA(3, 1, 1, b"x" * 32), TLSA(2, 0, 2, b"y" * 64), TLSA(3, 0, 0, b"der")]
        bad = [
            TLSA(0, 1, 1, b"x" * 32),
            TLSA(1, 1, 1, b"x" * 32),
            TLSA(3, 2, 1, b"x" * 32),
            TLSA(3, 1, 3, b"x" * 32),
            TLSA(3, 1, 1, b"x" * 31),
            TLSA(3, 1, 2, b"x" * 32),
            TLSA(3, 0, 0, b""),
        ]
        self.assertEqual(usable_tlsa(good + bad), good)


class DANECheckTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        ca, cert, _ = make_certificate(directory, "mx.remote.test")
        self.ca, self.leaf = load(ca), load(cert)

    def test_dane_ee_every_selector_and_matching_type(self) -> None:
        """DANE-EE(3) matches the leaf certificate or its key, exactly or by SHA-256/SHA-512."""
        for selector in (0, 1):
            for mtype in (0, 1, 2):
                record = TLSA(3, selector, mtype, association(self.leaf, selector, mtype))
                self.assertIsNone(dane_check([self.leaf], [record], "mx.remote.test"))

    def test_dane_ee_ignores_the_name(self) -> None:
        """RFC 7672 section 3.1.1: a DANE-EE match needs no name match."""
        record = TLSA(3, 1, 1, association(self.leaf, 1, 1))
        self.assertIsNone(dane_check([self.leaf], [record], "other.host.test"))

    def test_mismatch(self) -> None:
        """A record matching nothing: validation-failure."""
        failure = dane_check([self.leaf], [TLSA(3, 1, 1, b"\0" * 32)], "mx.remote.test")
        assert failure is not None
        self.assertEqual(failure.result_type, "validation-failure")

    def test_dane_ee_does_not_match_the_issuer(self) -> None:
        """DANE-EE is about the leaf: a record of the CA does not make it pass."""
        record = TLSA(3, 1, 1, association(self.ca, 1, 1))
        self.assertIsNotNone(dane_check([self.leaf, self.ca], [record], "mx.remote.test"))

    def test_dane_ta_in_chain_with_name(self) -> None:
        """DANE-TA(2): the CA sent in the chain matches, the leaf chains to it and names the MX."""
        record = TLSA(2, 0, 1, association(self.ca, 0, 1))
        self.assertIsNone(dane_check([self.leaf, self.ca], [record], "mx.remote.test"))

    def test_dane_ta_checks_the_name(self) -> None:
        """RFC 7672 section 3.2.2: under DANE-TA the certificate must name the MX host."""
        record = TLSA(2, 1, 1, association(self.ca, 1, 1))
        failure = dane_check([self.leaf, self.ca], [record], "mx.elsewhere.test")
        assert failure is not None
        self.assertEqual(failure.result_type, "certificate-host-mismatch")

    def test_dane_ta_absent_from_chain(self) -> None:
        """The trust anchor must be in the chain the server sent."""
        record = TLSA(2, 0, 1, association(self.ca, 0, 1))
        self.assertIsNotNone(dane_check([self.leaf], [record], "mx.remote.test"))

    def test_dane_ta_of_another_ca(self) -> None:
        """A certificate in the chain that matches but did not sign the leaf does not count."""
        other_ca = load(make_certificate(os.path.abspath(self.mktemp()), "x.test")[0])
        record = TLSA(2, 0, 1, association(other_ca, 0, 1))
        self.assertIsNotNone(dane_check([self.leaf, other_ca], [record], "mx.remote.test"))

    def test_empty_chain(self) -> None:
        """No certificate at all fails."""
        self.assertIsNotNone(dane_check([], [TLSA(3, 1, 1, b"\0" * 32)], "mx.remote.test"))


class PKIXVerdictTests(SynchronousTestCase):
    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        ca, cert, _ = make_certificate(directory, "mx.remote.test")
        self.leaf = load(cert)
        with open(ca, "rb") as f:
            pem = f.read()
        self.roots = load_trust_root(pem)
        self.bundle = load_trust_root(pem + b"\n" + pem)

    def test_verdicts(self) -> None:
        """A good chain passes; OpenSSL's errors and a wrong name map to RFC 8460 result types."""
        checked = CheckedTLS("mx.remote.test", trust_roots=self.roots)
        self.assertIsNone(checked.check([self.leaf], None))
        self.assertEqual(checked.check([self.leaf], 10).result_type, "certificate-expired")  # type: ignore[union-attr]
        self.assertEqual(checked.check([self.leaf], 20).result_type, "certificate-not-trusted")  # type: ignore[union-attr]
        self.assertEqual(checked.check([self.leaf], 7).result_type, "validation-failure")  # type: ignore[union-attr]
        other = CheckedTLS("mx.other.test", trust_roots=self.roots)
        self.assertEqual(other.check([self.leaf], None).result_type, "certificate-host-mismatch")  # type: ignore[union-attr]
        self.assertIsNone(CheckedTLS("mx.other.test", mode="encrypt").check([self.leaf], 20))

    def test_unknown_mode(self) -> None:
        """A mode name typo is the caller's error."""
        self.assertRaises(ValueError, CheckedTLS, "mx.remote.test", mode="strict")

    def test_bundle_loading(self) -> None:
        """load_trust_root reads every certificate of a bundle."""
        self.assertEqual((len(self.roots), len(self.bundle)), (1, 2))
