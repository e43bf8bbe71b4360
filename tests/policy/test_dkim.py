"""
DKIM signing and verification (txmail.policy.dkim): round trips for
rsa-sha256 and ed25519-sha256, canonicalization, every result of RFC 8601
section 2.7.1, key files, the RFC 8463 appendix A vectors, and
interoperability with independent implementations: Perl's Mail::DKIM (over
the tests' DNS server) and OpenDKIM (for Ed25519, which Debian's Mail::DKIM
does not implement).
"""

from __future__ import annotations

import base64
import importlib
import math
import os
import random
import re
import shutil
import stat
import sys
from typing import Any

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests._dns import start_dns_server
from txmail.dnsdata import Answer, DNSStatus
from txmail.policy import dkim
from txmail.policy.dkim import (
    DKIMResult,
    SigningKey,
    generate_key,
    key_queries,
    load_signing_key,
    sign,
    txt_record_for,
    verify,
    write_key,
)

__all__ = [
    "KeyFileTests",
    "MailDKIMInteropTests",
    "OpenDKIMInteropTests",
    "RFC8463Tests",
    "SignVerifyTests",
    "VerifyResultTests",
    "mail_dkim_available",
    "make_key",
]

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

#: 2024-01-01T00:00:00Z: the "now" of every signature and check here.
NOW = 1704067200

MESSAGE = (
    b"Return-Path: <alice@example.com>\r\n"
    b"Received: from client.example.com (client.example.com [192.0.2.1])\r\n"
    b"\tby mx.example.com with ESMTPS; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"From: Alice <alice@example.com>\r\n"
    b"To: Bob <bob@example.org>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <lunch.1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: something unsigned\r\n"
    b"\r\n"
    b"Shall we meet at noon?\r\n"
    b"\r\n"
    b"-- \r\n"
    b"Alice\r\n"
)

_KEYS: dict[str, tuple[SigningKey, str]] = {}


def make_key(algorithm: str, selector: str | None = None) -> tuple[SigningKey, str]:
    """A key of *algorithm* for example.com and its TXT record (made once per run: RSA takes a while)."""
    if algorithm not in _KEYS:
        content, record = generate_key(algorithm)
        if algorithm == "rsa-sha256":
            private = content
        else:
            private = base64.b64encode(
                serialization.load_pem_private_key(content, None).private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
            )
        _KEYS[algorithm] = (SigningKey("example.com", "x", algorithm, private), record)
    key, record = _KEYS[algorithm]
    selector = selector or ("rsa" if algorithm == "rsa-sha256" else "ed")
    return SigningKey(key.domain, selector, key.algorithm, key.private_key), record


def _short_rsa_pem(bits: int = 512) -> bytes:
    """An RSA key too short for DKIM (cryptography refuses to generate one, so build it from primes)."""
    rng = random.Random(8301)

    def prime(size: int) -> int:
        while True:
            n = rng.getrandbits(size) | (1 << (size - 1)) | 1
            if all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)):
                return n

    e = 65537
    while True:
        p, q = prime(bits // 2), prime(bits // 2)
        phi = (p - 1) * (q - 1)
        if p != q and math.gcd(e, phi) == 1 and (p * q).bit_length() == bits:
            break
    d = pow(e, -1, phi)
    numbers = rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), rsa.RSAPublicNumbers(e, p * q)
    )
    return numbers.private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _answers(*keys: tuple[SigningKey, str]) -> dict[str, Answer]:
    return {key.record_name: Answer.of(record.encode()) for key, record in keys}


def _signature_fields(signed: bytes) -> list[bytes]:
    """The DKIM-Signature fields at the top of *signed*, unfolded."""
    head = signed.split(b"\r\n\r\n", 1)[0]
    return [
        f.replace(b"\r\n", b"")
        for f in re.findall(rb"^DKIM-Signature:.*?(?=\r\n(?![ \t]))", head, re.M | re.S | re.I)
    ]


def _tag(field: bytes, tag: bytes) -> bytes:
    match = re.search(rb"[;:]\s*" + tag + rb"=([^;]*)", field)
    assert match is not None, (field, tag)
    return re.sub(rb"\s+", b"", match.group(1))


class KeyFileTests(SynchronousTestCase):
    """Key generation, key files and key records."""

    def test_generated_rsa_key_is_written_0600_and_its_record_verifies(self) -> None:
        """generate_key and write_key make an owner-only file whose TXT record verifies what it signs."""
        path = os.path.join(self.mktemp(), "rsa.pem")
        os.makedirs(os.path.dirname(path))
        content, record = generate_key("rsa-sha256", bits=1024)
        old = os.umask(0)  # the mode comes from the open() call, not from a umask or a later chmod
        try:
            write_key(path, content)
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(record.startswith("v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQ"))
        key = load_signing_key(path, "example.com", "sel")
        self.assertEqual((key.algorithm, key.bits), ("rsa-sha256", 1024))
        self.assertEqual(txt_record_for(key), record)
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        [result] = verify(signed, {"sel._domainkey.example.com": Answer.of(record.encode())}, now=NOW)
        self.assertEqual(result.result, "pass")

    def test_generated_ed25519_key_is_pkcs8_written_0600_and_its_record_verifies(self) -> None:
        """An Ed25519 key file is PEM PKCS#8, mode 0600, and its 32-byte p= record verifies."""
        path = os.path.join(self.mktemp(), "ed.pem")
        os.makedirs(os.path.dirname(path))
        content, record = generate_key("ed25519-sha256")
        write_key(path, content)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertTrue(content.startswith(b"-----BEGIN PRIVATE KEY-----"))
        self.assertRegex(record, r"^v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=$")
        key = load_signing_key(path, "example.com", "ed")
        self.assertEqual((key.algorithm, key.bits), ("ed25519-sha256", 256))
        self.assertEqual(txt_record_for(content), record)
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        [result] = verify(signed, {"ed._domainkey.example.com": Answer.of(record.encode())}, now=NOW)
        self.assertEqual(result.result, "pass")

    def test_write_key_refuses_an_existing_file_unless_asked(self) -> None:
        """write_key never clobbers a key by accident; with overwrite it replaces it, still mode 0600."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"old")
        os.chmod(path, 0o644)
        self.assertRaises(FileExistsError, write_key, path, b"new")
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"old")
        write_key(path, b"new", overwrite=True)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"new")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(os.path.dirname(os.path.abspath(path))) if ".tmp" in n], [])

    def test_short_rsa_key_is_refused_by_rfc_8301(self) -> None:
        """load_signing_key and generate_key refuse RSA keys under 1024 bits, saying why."""
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(_short_rsa_pem())
        error = self.assertRaises(ValueError, load_signing_key, path, "example.com", "short")
        self.assertIn("512 bits", str(error))
        self.assertIn("RFC 8301", str(error))
        self.assertRaises(ValueError, generate_key, "rsa-sha256", bits=768)
        self.assertRaises(ValueError, generate_key, "rsa-sha1")

    def test_key_file_formats(self) -> None:
        """PKCS#8 RSA and bare base64 Ed25519 key files load; garbage and encrypted keys are refused."""
        private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        pkcs8 = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        encrypted = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        cases = {"pkcs8": pkcs8, "bare": b"nWGxne/9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A=\n"}
        for name, content in cases.items():
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            key = load_signing_key(path, "example.com", name)
            self.assertEqual(key.algorithm, "rsa-sha256" if name == "pkcs8" else "ed25519-sha256")
        for content in (
            b"not a key",
            encrypted,
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ):
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(content)
            self.assertRaises(ValueError, load_signing_key, path, "example.com", "bad")

    def test_signing_key_hides_its_secret(self) -> None:
        """A SigningKey's repr leaves the private key out, and a bad key or algorithm is refused at once."""
        key, _ = make_key("ed25519-sha256")
        self.assertNotIn(key.private_key.decode(), repr(key))
        self.assertEqual(key.record_name, "ed._domainkey.example.com")
        self.assertRaises(ValueError, SigningKey, "example.com", "s", "rsa-sha1", key.private_key)
        self.assertRaises(ValueError, SigningKey, "example.com", "s", "ed25519-sha256", b"c2hvcnQ=")
        self.assertRaises(ValueError, SigningKey, "example.com", "s", "rsa-sha256", b"no PEM here")


class SignVerifyTests(SynchronousTestCase):
    """Signing, then verifying what was signed."""

    def test_rsa_round_trip(self) -> None:
        """An rsa-sha256 signature verifies, with the signature's tags in the result."""
        key, record = make_key("rsa-sha256")
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        self.assertEqual(key_queries(signed), ["rsa._domainkey.example.com"])
        [result] = verify(signed, _answers((key, record)), now=NOW)
        b = _tag(_signature_fields(signed)[0], b"b").decode()
        self.assertEqual(
            result,
            DKIMResult(
                "pass",
                "example.com",
                "rsa",
                "rsa-sha256",
                "@example.com",
                b[:8],
                key_bits=2048,
                testing=False,
            ),
        )

    def test_ed25519_round_trip(self) -> None:
        """An ed25519-sha256 signature (RFC 8463) verifies."""
        key, record = make_key("ed25519-sha256")
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        [result] = verify(signed, _answers((key, record)), now=NOW)
        self.assertEqual((result.result, result.algorithm, result.key_bits), ("pass", "ed25519-sha256", 256))

    def test_rsa_and_ed25519_at_once(self) -> None:
        """Two keys give two signatures (RFC 8463 section 4), in key order, sharing one body hash; both pass."""
        rsa_key, rsa_record = make_key("rsa-sha256")
        ed_key, ed_record = make_key("ed25519-sha256")
        header = sign(MESSAGE, [rsa_key, ed_key], now=NOW)
        self.assertTrue(header.endswith(b"\r\n"))
        self.assertNotIn(b"\n", header.replace(b"\r\n", b""))
        signed = header + MESSAGE
        fields = _signature_fields(signed)
        self.assertEqual([_tag(f, b"a") for f in fields], [b"rsa-sha256", b"ed25519-sha256"])
        self.assertEqual(_tag(fields[0], b"bh"), _tag(fields[1], b"bh"))
        self.assertEqual(key_queries(signed), ["rsa._domainkey.example.com", "ed._domainkey.example.com"])
        results = verify(signed, _answers((rsa_key, rsa_record), (ed_key, ed_record)), now=NOW)
        self.assertEqual([(r.result, r.selector) for r in results], [("pass", "rsa"), ("pass", "ed")])

    def test_default_header_list_and_oversigned_from(self) -> None:
        """h= lists the present default fields, From once more, never trace fields or unknown ones; t= is now."""
        key, _ = make_key("ed25519-sha256")
        [field] = _signature_fields(sign(MESSAGE, [key], now=NOW))
        self.assertEqual(_tag(field, b"h"), b"from:to:subject:date:message-id:mime-version:content-type:from")
        self.assertEqual(_tag(field, b"c"), b"relaxed/relaxed")
        self.assertEqual(_tag(field, b"t"), str(NOW).encode())
        message = MESSAGE.replace(
            b"Subject:", b"List-Unsubscribe: <https://example.com/u>\r\nCc: c@example.net\r\nSubject:"
        )
        [field] = _signature_fields(sign(message, [key], now=NOW))
        self.assertEqual(
            _tag(field, b"h"),
            b"from:to:list-unsubscribe:cc:subject:date:message-id:mime-version:content-type:from",
        )

    def test_adding_a_second_from_breaks_the_signature(self) -> None:
        """From is oversigned (RFC 6376 section 8.15): a From added after signing, anywhere, fails."""
        key, record = make_key("rsa-sha256")
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        for forged in (
            signed.replace(b"From: Alice", b"From: Mallory <m@example.net>\r\nFrom: Alice"),
            signed.replace(b"\r\n\r\nShall", b"\r\nFrom: Mallory <m@example.net>\r\n\r\nShall"),
        ):
            [result] = verify(forged, _answers((key, record)), now=NOW)
            self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))

    def test_relaxed_canonicalization_tolerates_whitespace_changes(self) -> None:
        """Refolded headers, changed spacing and trailing blank lines (RFC 6376 section 3.4.2 and 3.4.4) still pass."""
        key, record = make_key("ed25519-sha256")
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        changed = (
            signed.replace(b"Subject: Lunch on Friday", b"subject:   Lunch\r\n\ton  Friday  ")
            .replace(b"To: Bob <bob@example.org>", b"TO:Bob\t<bob@example.org>")
            .replace(b"Shall we meet at noon?", b"Shall  we meet\tat noon?   ")
            + b"\r\n\r\n\r\n"
        )
        [result] = verify(changed, _answers((key, record)), now=NOW)
        self.assertEqual(result.result, "pass")
        # Bare LF line ends are read as CRLF, as every verifier does.
        [result] = verify(signed.replace(b"\r\n", b"\n"), _answers((key, record)), now=NOW)
        self.assertEqual(result.result, "pass")

    def test_tampering_fails(self) -> None:
        """A changed body is a body hash mismatch; a changed signed header a bad signature: both fail."""
        key, record = make_key("rsa-sha256")
        signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
        cases = {
            signed.replace(b"noon", b"one"): "body hash mismatch",
            signed.replace(b"Lunch on Friday", b"Lunch on Monday"): "signature did not verify",
        }
        for message, reason in cases.items():
            [result] = verify(message, _answers((key, record)), now=NOW)
            self.assertEqual((result.result, result.reason), ("fail", reason))
        # An unsigned field may change.
        [result] = verify(signed.replace(b"something unsigned", b"other"), _answers((key, record)), now=NOW)
        self.assertEqual(result.result, "pass")

    def test_sign_refusals(self) -> None:
        """No keys sign nothing; a message without From or with a broken header section is refused."""
        key, _ = make_key("ed25519-sha256")
        self.assertEqual(sign(MESSAGE, []), b"")
        self.assertRaises(ValueError, sign, re.sub(rb"From: [^\r]*\r\n", b"", MESSAGE), [key])
        self.assertRaises(ValueError, sign, b"From: a@example.com\r\nnot a header\r\n\r\nbody\r\n", [key])

    def test_rsa_signatures_are_dkimpy_s_byte_for_byte(self) -> None:
        """RSA signing in OpenSSL gives exactly the bytes of dkimpy's RSASSA-PKCS1-v1_5 (it is deterministic)."""
        import hashlib

        from dkim.crypto import RSASSA_PKCS1_v1_5_sign, parse_pem_private_key

        key, _ = make_key("rsa-sha256")
        for data in (b"", b"header hash input"):
            ours = dkim._signature(key.algorithm, key._parsed, hashlib.sha256(data))
            theirs = bytes(
                RSASSA_PKCS1_v1_5_sign(hashlib.sha256(data), parse_pem_private_key(key.private_key))
            )
            self.assertEqual(ours, theirs)

    def test_dkimpy_verifies_our_signatures_and_we_verify_its(self) -> None:
        """dkimpy's own sign() and verify() agree with ours, both algorithms."""
        for algorithm in ("rsa-sha256", "ed25519-sha256"):
            key, record = make_key(algorithm)
            signed = sign(MESSAGE, [key], now=NOW) + MESSAGE
            records = {f"{key.record_name}.".encode(): record.encode()}
            self.assertTrue(
                dkimpy.verify(signed, dnsfunc=lambda name, timeout=5, records=records: records.get(name))
            )
            theirs = dkimpy.sign(
                MESSAGE,
                key.selector.encode(),
                b"example.com",
                key.private_key,
                signature_algorithm=algorithm.encode(),
                canonicalize=(b"relaxed", b"simple"),
            )
            [result] = verify(theirs + MESSAGE, _answers((key, record)))
            self.assertEqual(result.result, "pass", algorithm)


class VerifyResultTests(SynchronousTestCase):
    """Each RFC 8601 section 2.7.1 result, and the limits."""

    def setUp(self) -> None:
        self.key, self.record = make_key("rsa-sha256")
        self.signed = sign(MESSAGE, [self.key], now=NOW) + MESSAGE
        self.name = self.key.record_name

    def check(self, message: bytes, answer: Answer | str, now: int | None = NOW) -> DKIMResult:
        if isinstance(answer, str):
            answer = Answer.of(answer.encode())
        [result] = verify(message, {self.name: answer}, now=now)
        return result

    def test_unsigned_message_has_no_results(self) -> None:
        """A message without DKIM-Signature gives no names and no results (dkim=none)."""
        self.assertEqual(key_queries(MESSAGE), [])
        self.assertEqual(verify(MESSAGE, {}), [])

    def test_lookup_errors(self) -> None:
        """ERROR is temperror; NXDOMAIN and NODATA are permerror "no key" (RFC 6376 section 6.1.2)."""
        result = self.check(self.signed, Answer(DNSStatus.ERROR, error="SERVFAIL"))
        self.assertEqual((result.result, result.reason), ("temperror", "key lookup failed"))
        for status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA):
            result = self.check(self.signed, Answer(status))
            self.assertEqual((result.result, result.reason), ("permerror", "no key for signature"))

    def test_unusable_key_records_are_permerror(self) -> None:
        """A key record that does not parse, is revoked, of the wrong type, hash or service is permerror."""
        ed_record = make_key("ed25519-sha256")[1]
        public = self.record.split("p=", 1)[1]
        cases = {
            "v=DKIM1; k=rsa; p=bm90IGEga2V5": "RSA key does not parse",
            "v=DKIM1; k=rsa; p=!!!": "key p= is not base64",
            "v=DKIM1; k=rsa; p=": "key revoked (empty p=)",
            "v=DKIM1; k=rsa": "key record has no p= tag",
            "v=DKIM2; p=" + public: "key record is not v=DKIM1",
            "v=DKIM1; k": "key record syntax error",
            ed_record: "key type ed25519 does not match a=rsa-sha256",
            "v=DKIM1; k=dsa; p=" + public: "unknown key type (k=)",
            "v=DKIM1; h=sha1; p=" + public: "key does not allow this hash (h=)",
            "v=DKIM1; s=tlsrpt; p=" + public: "key is not for email (s=)",
        }
        for record, reason in cases.items():
            result = self.check(self.signed, record)
            self.assertEqual((result.result, result.reason), ("permerror", reason), record)

    def test_huge_rsa_keys_refused_unread(self) -> None:
        """
        A key of more than MAX_RSA_KEY_BITS bits is permerror before it is
        parsed (dkimpy's ASN.1 reader is quadratic in its length); one of
        that size is read (and fails to verify, as any other key would).
        """

        def record(bits: int) -> str:
            modulus = random.Random(bits).getrandbits(bits) | (1 << (bits - 1)) | 1
            key = rsa.RSAPublicNumbers(65537, modulus).public_key()
            der = key.public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()

        biggest = dkim.MAX_RSA_KEY_BITS
        result = self.check(self.signed, record(biggest))
        self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))
        for bits in (biggest + 8, 48_000 * 8):
            result = self.check(self.signed, record(bits))
            self.assertEqual(
                (result.result, result.reason), ("permerror", f"RSA key longer than {biggest} bits")
            )

    def test_first_usable_record_of_several_is_used(self) -> None:
        """With several TXT records at the name, the first usable key is used; no usable one is permerror."""
        result = self.check(self.signed, Answer.of(b"v=spf1 -all", self.record.encode()))
        self.assertEqual(result.result, "pass")
        result = self.check(self.signed, Answer.of(b"v=spf1 -all", b"hello"))
        self.assertEqual(result.result, "permerror")

    def test_testing_and_strict_key_flags(self) -> None:
        """t=y marks the result as testing (RFC 6376 section 3.6.1); t=s with i= in a subdomain is permerror."""
        result = self.check(self.signed, self.record + "; t=y")
        self.assertEqual((result.result, result.testing), ("pass", True))
        sub = self.signed.replace(b"DKIM-Signature: v=1;", b"DKIM-Signature: v=1; i=@sub.example.com;")
        result = self.check(sub, self.record + "; t=s")
        self.assertEqual((result.result, result.identity), ("permerror", "@sub.example.com"))

    def test_short_rsa_key_is_policy(self) -> None:
        """A valid signature made with a 512-bit RSA key is not accepted: policy (RFC 8301 section 3.2)."""
        short = SigningKey("example.com", "rsa", "rsa-sha256", _short_rsa_pem())
        signed = sign(MESSAGE, [short], now=NOW) + MESSAGE
        result = self.check(signed, txt_record_for(short))
        self.assertEqual(result.result, "policy")
        self.assertEqual(result.key_bits, 512)
        self.assertIn("512 bits", result.reason)

    def test_rsa_sha1_is_policy(self) -> None:
        """rsa-sha1 signatures are not accepted (RFC 8301 section 3.1): policy."""
        sha1 = self.signed.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1)
        result = self.check(sha1, self.record)
        self.assertEqual((result.result, result.algorithm), ("policy", "rsa-sha1"))

    def test_signature_times(self) -> None:
        """An expired x= fails, a t= in the future is policy, both beyond a small clock skew."""
        expiring = self.signed.replace(
            b"DKIM-Signature: v=1;", f"DKIM-Signature: v=1; x={NOW + 600};".encode()
        )
        result = self.check(expiring, self.record, now=NOW + 600 + dkim.CLOCK_SKEW + 1)
        self.assertEqual((result.result, result.reason), ("fail", "signature expired (x=)"))
        # Not yet expired: the (edited) signature is checked, and fails on its own.
        result = self.check(expiring, self.record, now=NOW + 60)
        self.assertEqual((result.result, result.reason), ("fail", "signature did not verify"))
        result = self.check(self.signed, self.record, now=NOW - dkim.CLOCK_SKEW - 1)
        self.assertEqual(result.result, "policy")
        self.assertEqual(self.check(self.signed, self.record, now=NOW - dkim.CLOCK_SKEW).result, "pass")

    def test_malformed_signatures_are_neutral(self) -> None:
        """Signature fields that cannot be used (RFC 6376 section 6.1.1) are neutral, with the reason."""
        unfolded = self.signed.replace(b"\r\n\t", b" ")
        field = _signature_fields(unfolded)[0]
        cases = [
            (b"v=1;", b"v=2;", "unsupported signature version (v=)"),
            (b"a=rsa-sha256;", b"a=rsa-sha512;", "unknown signature algorithm (a=)"),
            (b"c=relaxed/relaxed;", b"c=fancy;", "unknown canonicalization (c=)"),
            (b"s=rsa;", b"s=rsa; i=@example.net;", "i= is not within d= (RFC 6376 section 3.5)"),
            (b"h=from:", b"h=to:subject; z=", "From is not signed (RFC 6376 section 5.4)"),
            (b"bh=", b"xx=", "signature has no bh= tag"),
            (b"t=", b"x=1; t=", "x= is before t="),
            (b"v=1; a", b"v=1; v=1; a", "signature syntax error"),
            (b"; b=", b"; b=!!", "b= is not base64"),
        ]
        for old, new, reason in cases:
            broken = unfolded.replace(field, field.replace(old, new, 1), 1)
            self.assertNotEqual(broken, unfolded, old)
            result = self.check(broken, self.record)
            self.assertEqual((result.result, result.reason), ("neutral", reason), old)

    def test_body_length_tag(self) -> None:
        """l= (here from dkimpy, which signs at the current time) passes with a note when text was appended, and fails when l= exceeds the body."""
        signed = dkimpy.sign(MESSAGE, b"rsa", b"example.com", self.key.private_key, length=True) + MESSAGE
        self.assertEqual(self.check(signed, self.record, now=None).result, "pass")
        result = self.check(signed + b"Unsubscribe: https://list.example/\r\n", self.record, now=None)
        self.assertEqual(result.result, "pass")
        self.assertIn("unsigned content follows", result.reason)
        result = self.check(signed.replace(b"-- \r\nAlice\r\n", b""), self.record, now=None)
        self.assertEqual((result.result, result.reason), ("fail", "l= is longer than the body"))

    def test_only_the_first_signatures_are_checked(self) -> None:
        """key_queries and verify stop at limit signatures (topmost first); the others get no result."""
        keys = [make_key("ed25519-sha256", selector=f"s{i}") for i in range(7)]
        signed = sign(MESSAGE, [k for k, _ in keys], now=NOW) + MESSAGE
        names = [f"s{i}._domainkey.example.com" for i in range(7)]
        self.assertEqual(key_queries(signed), names[:5])
        self.assertEqual(key_queries(signed, limit=2), names[:2])
        self.assertEqual(key_queries(signed, limit=7), names)
        answers = _answers(*keys)
        self.assertEqual(
            [r.selector for r in verify(signed, answers, now=NOW)], ["s0", "s1", "s2", "s3", "s4"]
        )
        results = verify(signed, answers, now=NOW, limit=7)
        self.assertEqual([r.result for r in results], ["pass"] * 7)
        # Only the names key_queries gave are needed.
        self.assertEqual(len(verify(signed, {n: answers[n] for n in names[:5]}, now=NOW)), 5)

    def test_key_names_and_missing_answers(self) -> None:
        """Key names are lower-case, once each; an answer missing from keys is the caller's error."""
        key, record = make_key("rsa-sha256")
        upper = SigningKey("EXAMPLE.com", "Mixed", key.algorithm, key.private_key)
        signed = sign(MESSAGE, [upper, upper], now=NOW) + MESSAGE
        self.assertEqual(key_queries(signed), ["mixed._domainkey.example.com"])
        results = verify(signed, {"Mixed._domainkey.Example.COM.": Answer.of(record.encode())}, now=NOW)
        self.assertEqual([r.result for r in results], ["pass", "pass"])
        self.assertRaises(ValueError, verify, signed, {}, now=NOW)

    def test_header_b_tells_signatures_apart(self) -> None:
        """header_b is 8 characters, longer when another signature shares that start (RFC 6008 section 4)."""
        unfolded = self.signed.replace(b"\r\n\t", b" ")
        field = _signature_fields(unfolded)[0]
        b = _tag(field, b"b")
        compact = re.sub(rb"b=[^;]*$", b"b=" + b, field)
        twin = b[:11] + (b"A" if b[11:12] != b"A" else b"B") + b[12:]
        doubled = unfolded.replace(field, compact.replace(b"b=" + b, b"b=" + twin) + b"\r\n" + compact, 1)
        results = verify(doubled, {self.name: Answer.of(self.record.encode())}, now=NOW)
        self.assertEqual([r.header_b for r in results], [twin[:12].decode(), b[:12].decode()])
        self.assertEqual([r.result for r in results], ["fail", "pass"])
        self.assertEqual(self.check(self.signed, self.record).header_b, b[:8].decode())

    def test_malformed_header_section_is_permerror(self) -> None:
        """A header line that is not a field makes every signature permerror, without key lookups."""
        broken = self.signed.replace(b"X-Mailer:", b"X-Mailer", 1)
        self.assertEqual(key_queries(broken), [])
        [result] = verify(broken, {})
        self.assertEqual(result.result, "permerror")
        self.assertIn("malformed header section", result.reason)

    def test_import_error_names_the_extra(self) -> None:
        """Without dkimpy, importing txmail.policy.dkim says to install txmail[policy]."""
        hidden = ["dkim", *(name for name in sys.modules if name.startswith("dkim."))]
        saved = {name: sys.modules.get(name) for name in (*hidden, "txmail.policy.dkim")}

        def restore() -> None:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module

        self.addCleanup(restore)
        for name in hidden:  # the package and the submodules already imported
            sys.modules[name] = None  # type: ignore[assignment]
        sys.modules.pop("txmail.policy.dkim")
        error = self.assertRaises(ImportError, importlib.import_module, "txmail.policy.dkim")
        self.assertIn("pip install 'txmail[policy]'", str(error))


class RFC8463Tests(SynchronousTestCase):
    """RFC 8463 appendix A's example keys and signed message (tests/policy/data/rfc8463-*)."""

    def setUp(self) -> None:
        with open(os.path.join(DATA, "rfc8463-signed.eml"), "rb") as f:
            self.message = re.sub(rb"\r?\n", b"\r\n", f.read())
        self.keys = {}
        with open(os.path.join(DATA, "rfc8463-keys.txt"), encoding="ascii") as f:
            for line in f:
                name, record = line.strip().split(" ", 1)
                self.keys[name] = Answer.of(record.encode())

    def test_example_message_verifies(self) -> None:
        """Both signatures of appendix A.3 (ed25519-sha256 and rsa-sha256, simple/simple) pass."""
        self.assertEqual(sorted(key_queries(self.message)), sorted(self.keys))
        results = verify(self.message, self.keys)
        self.assertEqual(
            [(r.result, r.algorithm, r.selector, r.domain) for r in results],
            [
                ("pass", "ed25519-sha256", "brisbane", "football.example.com"),
                ("pass", "rsa-sha256", "test", "football.example.com"),
            ],
        )
        self.assertEqual([r.key_bits for r in results], [256, 1024])

    def test_example_keys_match_their_records_and_sign(self) -> None:
        """The appendix A.1 private keys load, give the A.2 records, and sign what A.2 verifies."""
        keys = []
        for filename, selector in (("rfc8463-ed25519.key", "brisbane"), ("rfc8463-rsa.key", "test")):
            key = load_signing_key(os.path.join(DATA, filename), "football.example.com", selector)
            self.assertEqual(txt_record_for(key).encode(), self.keys[key.record_name].records[0])
            keys.append(key)
        unsigned = self.message[self.message.index(b"From:") :]
        signed = sign(unsigned, keys) + unsigned
        self.assertEqual([r.result for r in verify(signed, self.keys)], ["pass", "pass"])


# --- interoperability ---------------------------------------------------------

_MAIL_DKIM_VERIFY = r"""
use strict; use warnings;
use Mail::DKIM::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($port, $file) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, retry => 2, udp_timeout => 5));
my $v = Mail::DKIM::Verifier->new();
open(my $fh, '<:raw', $file) or die "$file: $!";
$v->load($fh);
close($fh);
foreach my $sig ($v->signatures) {
    printf "signature %s %s %s\n", $sig->algorithm, $sig->domain, $sig->result_detail;
}
printf "result %s\n", $v->result_detail;
"""

_MAIL_DKIM_SIGN = r"""
use strict; use warnings;
use Mail::DKIM::Signer; use Mail::DKIM::TextWrap;
my ($keyfile, $domain, $selector, $algorithm, $file) = @ARGV;
my $s = Mail::DKIM::Signer->new(
    Algorithm => $algorithm, Method => 'relaxed', Domain => $domain,
    Selector => $selector, KeyFile => $keyfile);
open(my $fh, '<:raw', $file) or die "$file: $!";
$s->load($fh);
close($fh);
binmode STDOUT;
print $s->signature->as_string, "\015\012";
"""

_MAIL_DKIM_ARC_VERIFY = r"""
use strict; use warnings;
use Mail::DKIM::ARC::Verifier; use Mail::DKIM::DNS; use Net::DNS::Resolver;
my ($port, $file) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 1, retry => 2, udp_timeout => 5));
my $v = Mail::DKIM::ARC::Verifier->new();
open(my $fh, '<:raw', $file) or die "$file: $!";
$v->load($fh);
close($fh);
printf "result %s %s\n", $v->result, $v->result_detail;
"""

_MAIL_DKIM_ARC_SEAL = r"""
use strict; use warnings;
use Mail::DKIM::ARC::Signer; use Mail::DKIM::TextWrap;
my ($keyfile, $domain, $selector, $srvid, $file) = @ARGV;
my $s = Mail::DKIM::ARC::Signer->new(
    Algorithm => 'rsa-sha256', Chain => 'ar', Domain => $domain, SrvId => $srvid,
    Selector => $selector, KeyFile => $keyfile);
open(my $fh, '<:raw', $file) or die "$file: $!";
$s->load($fh);
close($fh);
die "not sealed: " . $s->result_detail . "\n" unless $s->result eq 'sealed';
binmode STDOUT;
print $s->as_string;
"""

_perl_checked: dict[str, str | None] = {}


@defer.inlineCallbacks
def mail_dkim_available(module: str = "Mail::DKIM::Verifier") -> Any:
    """``None`` when perl can load *module*, else why not (checked once per module)."""
    if module not in _perl_checked:
        perl = shutil.which("perl")
        if perl is None:
            _perl_checked[module] = "perl is not installed"
        else:
            _, err, code = yield getProcessOutputAndValue(perl, [f"-M{module}", "-e1"], env=dict(os.environ))
            _perl_checked[module] = None if code == 0 else f"perl cannot load {module}: {err.decode()[:200]}"
    return _perl_checked[module]


def _normalise(text: bytes) -> bytes:
    """CRLF line ends, whatever the tool wrote."""
    return re.sub(rb"\r?\n", b"\r\n", text)


class _ProcessTestCase(TestCase):
    timeout = 60

    def write(self, content: bytes, name: str = "message.eml") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(content)
        return path

    @defer.inlineCallbacks
    def run_tool(self, executable: str, args: list[str]) -> Any:
        out, err, code = yield getProcessOutputAndValue(executable, args, env=dict(os.environ))
        if code != 0:
            self.fail(f"{executable} {args[:1]} exited {code}: {err.decode(errors='replace')}")
        return out, err


class MailDKIMInteropTests(_ProcessTestCase):
    """
    Perl's Mail::DKIM (Debian's libmail-dkim-perl) and we verify each
    other's signatures and ARC seals; it reads keys from the tests' DNS
    server.  Debian bookworm's Mail::DKIM 1.20230212 has no Ed25519: the
    Ed25519 interop is OpenDKIMInteropTests'.
    """

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        missing = yield mail_dkim_available()
        if missing:
            raise SkipTest(f"{missing}: apt-get install libmail-dkim-perl libcryptx-perl libnet-dns-perl")
        self.perl = shutil.which("perl")
        self.key, self.record = make_key("rsa-sha256")
        self.arc_key, self.arc_record = make_key("rsa-sha256", selector="arc")
        self.host, self.port = start_dns_server(
            self,
            {
                (self.key.record_name, "TXT"): [self.record],
                (self.arc_key.record_name, "TXT"): [self.arc_record],
            },
        )
        self.keyfile = self.write(self.key.private_key, "rsa.pem")

    @defer.inlineCallbacks
    def perl_verify(self, message: bytes, script: str = _MAIL_DKIM_VERIFY) -> Any:
        out, _ = yield self.run_tool(self.perl, ["-e", script, str(self.port), self.write(message)])
        return out.decode()

    @defer.inlineCallbacks
    def test_mail_dkim_verifies_our_rsa_signature(self) -> Any:
        """Mail::DKIM::Verifier passes a message signed by sign() with rsa-sha256."""
        signed = sign(MESSAGE, [self.key]) + MESSAGE
        out = yield self.perl_verify(signed)
        self.assertIn("signature rsa-sha256 example.com pass", out)
        self.assertIn("result pass", out)
        tampered = yield self.perl_verify(signed.replace(b"noon", b"one"))
        self.assertIn("result fail", tampered)

    @defer.inlineCallbacks
    def test_we_verify_a_mail_dkim_rsa_signature(self) -> Any:
        """verify() passes a message signed by Mail::DKIM::Signer with rsa-sha256 (relaxed)."""
        out, _ = yield self.run_tool(
            self.perl,
            ["-e", _MAIL_DKIM_SIGN, self.keyfile, "example.com", "rsa", "rsa-sha256", self.write(MESSAGE)],
        )
        signed = _normalise(out) + MESSAGE
        [result] = verify(signed, _answers((self.key, self.record)))
        self.assertEqual(
            (result.result, result.algorithm, result.domain), ("pass", "rsa-sha256", "example.com")
        )

    @defer.inlineCallbacks
    def test_ed25519_if_mail_dkim_has_it(self) -> Any:
        """Mail::DKIM verifies our ed25519-sha256 signature, when its version implements RFC 8463."""
        missing = yield mail_dkim_available("Mail::DKIM::Algorithm::ed25519_sha256")
        if missing:
            raise SkipTest(
                "this Mail::DKIM has no ed25519-sha256 (no Mail::DKIM::Algorithm::ed25519_sha256; Debian "
                "bookworm's 1.20230212 has none): OpenDKIMInteropTests covers Ed25519"
            )
        key, record = make_key("ed25519-sha256")
        self.host, self.port = start_dns_server(self, {(key.record_name, "TXT"): [record]})
        out = yield self.perl_verify(sign(MESSAGE, [key]) + MESSAGE)
        self.assertIn("result pass", out)

    @defer.inlineCallbacks
    def test_arc_both_ways(self) -> Any:
        """We seal i=1, Mail::DKIM seals i=2 on top, and each validates the other's chain as pass."""
        from txmail.policy.arc import arc_key_queries, arc_seal, arc_verify

        missing = yield mail_dkim_available("Mail::DKIM::ARC::Signer")
        if missing:
            raise SkipTest(missing)
        ours = (
            arc_seal(
                MESSAGE,
                self.arc_key,
                authserv_id="mx.example.com",
                auth_results="spf=pass smtp.mailfrom=example.com; dkim=none; dmarc=pass header.from=example.com",
                chain_validation="none",
            )
            + MESSAGE
        )
        out = yield self.perl_verify(ours, _MAIL_DKIM_ARC_VERIFY)
        self.assertIn("result pass", out)
        # The next hop (a list) validates, records arc=pass, changes the message and seals with Mail::DKIM.
        forwarded = b"Authentication-Results: list.example.com; arc=pass; dkim=none\r\n" + ours.replace(
            b"Subject: Lunch", b"Subject: [team] Lunch"
        )
        seal, _ = yield self.run_tool(
            self.perl,
            [
                "-e",
                _MAIL_DKIM_ARC_SEAL,
                self.keyfile,
                "example.com",
                "rsa",
                "list.example.com",
                self.write(forwarded),
            ],
        )
        theirs = _normalise(seal) + forwarded
        # Both selectors publish the same test key.
        keys = {name: Answer.of(self.record.encode()) for name in arc_key_queries(theirs)}
        self.assertEqual(sorted(keys), [self.arc_key.record_name, self.key.record_name])
        result = arc_verify(theirs, keys)
        self.assertEqual((result.result, result.count, result.oldest_pass), ("pass", 2, 2))
        self.assertEqual([s.authserv_id for s in result.sets], ["mx.example.com", "list.example.com"])
        self.assertEqual(result.sets[0].result_of("dmarc"), "pass")
        out = yield self.perl_verify(theirs, _MAIL_DKIM_ARC_VERIFY)
        self.assertIn("result pass", out)


_OPENDKIM_SIGN = """\
Domain example.com
Selector {selector}
KeyFile {keyfile}
SignatureAlgorithm {algorithm}
Canonicalization relaxed/relaxed
Mode s
Syslog no
RequireSafeKeys no
"""

_OPENDKIM_VERIFY = """\
Mode v
Syslog no
RequireSafeKeys no
TestPublicKeys {keys}
"""


class OpenDKIMInteropTests(_ProcessTestCase):
    """
    OpenDKIM (Debian's opendkim, test mode ``-t``) and we verify each
    other's signatures, Ed25519 (which Debian's Mail::DKIM lacks) and RSA.
    OpenDKIM reads the keys from its TestPublicKeys file, not from DNS.
    """

    def setUp(self) -> None:
        self.opendkim = shutil.which("opendkim") or (
            "/usr/sbin/opendkim" if os.access("/usr/sbin/opendkim", os.X_OK) else None
        )
        if self.opendkim is None:
            raise SkipTest("opendkim is not installed: apt-get install opendkim")

    def pem(self, key: SigningKey) -> bytes:
        """The key as OpenDKIM reads it (PEM; PKCS#8 for Ed25519)."""
        if key.algorithm == "rsa-sha256":
            return key.private_key
        private = ed25519.Ed25519PrivateKey.from_private_bytes(base64.b64decode(key.private_key))
        return private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @defer.inlineCallbacks
    def opendkim_verify(self, message: bytes, key: SigningKey, record: str) -> Any:
        keys = self.write(f"{key.record_name} {record}\n".encode(), "keys.txt")
        conf = self.write(_OPENDKIM_VERIFY.format(keys=keys).encode(), "verify.conf")
        out, err = yield self.run_tool(self.opendkim, ["-x", conf, "-t", self.write(message)])
        return (out + err).decode()

    @defer.inlineCallbacks
    def check_opendkim_verifies_ours(self, algorithm: str) -> Any:
        key, record = make_key(algorithm)
        signed = sign(MESSAGE, [key]) + MESSAGE
        err = yield self.opendkim_verify(signed, key, record)
        self.assertRegex(err, rf"verification \(s={key.selector},? d=example.com.*\) succeeded")
        err = yield self.opendkim_verify(signed.replace(b"noon", b"one"), key, record)
        self.assertIn("failed", err)

    @defer.inlineCallbacks
    def check_we_verify_opendkim(self, algorithm: str) -> Any:
        key, record = make_key(algorithm)
        keyfile = self.write(self.pem(key), "key.pem")
        os.chmod(keyfile, 0o600)
        conf = self.write(
            _OPENDKIM_SIGN.format(selector=key.selector, keyfile=keyfile, algorithm=algorithm).encode(),
            "sign.conf",
        )
        out, _ = yield self.run_tool(self.opendkim, ["-x", conf, "-t", self.write(MESSAGE)])
        # Test mode prints "opendkim: <file>:" then the field it would add.
        field = _normalise(out.split(b"\n", 1)[1].rstrip(b"\r\n")) + b"\r\n"
        self.assertTrue(field.startswith(b"DKIM-Signature:"), out)
        [result] = verify(field + MESSAGE, _answers((key, record)))
        self.assertEqual((result.result, result.algorithm), ("pass", algorithm))

    def test_opendkim_verifies_our_ed25519_signature(self) -> Any:
        """OpenDKIM passes a message signed by sign() with ed25519-sha256, and fails it when changed."""
        return self.check_opendkim_verifies_ours("ed25519-sha256")

    def test_we_verify_an_opendkim_ed25519_signature(self) -> Any:
        """verify() passes a message OpenDKIM signed with ed25519-sha256."""
        return self.check_we_verify_opendkim("ed25519-sha256")

    def test_opendkim_verifies_our_rsa_signature(self) -> Any:
        """OpenDKIM passes a message signed by sign() with rsa-sha256."""
        return self.check_opendkim_verifies_ours("rsa-sha256")

    def test_we_verify_an_opendkim_rsa_signature(self) -> Any:
        """verify() passes a message OpenDKIM signed with rsa-sha256."""
        return self.check_we_verify_opendkim("rsa-sha256")


class RelaxedBodyTests(SynchronousTestCase):
    """The fast relaxed body canonicalization is dkimpy's, byte for byte."""

    def test_same_as_dkimpy(self) -> None:
        """On random bodies of spaces, tabs, CRLFs and text, the fast path gives dkimpy's result."""
        from dkim.canonicalization import Relaxed
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from txmail.policy.dkim import _relaxed_body

        pieces = st.sampled_from([b" ", b"  ", b"\t", b"\r\n", b"a", b"bc", b" \r\n", b"\r\n\r\n", b"."])

        @settings(max_examples=500, deadline=None)
        @given(st.lists(pieces, max_size=30).map(b"".join))
        def check(body: bytes) -> None:
            self.assertEqual(_relaxed_body(body), Relaxed.canonicalize_body(body))

        check()

    def test_headers_same_as_dkimpy(self) -> None:
        """On random header fields (folded, tabs, runs of spaces), the fast relaxed header path gives dkimpy's result."""
        from dkim.canonicalization import Relaxed
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from txmail.policy.dkim import _relaxed_headers

        pieces = st.sampled_from([b" ", b"  ", b"\t", b"\r\n ", b"\r\n\t", b"a", b"Bc", b":", b"\r"])
        value = st.lists(pieces, max_size=12).map(lambda p: b"".join(p) + b"\r\n")
        name = st.sampled_from([b"Subject", b"FROM", b"x-Y ", b"To"])

        @settings(max_examples=500, deadline=None)
        @given(st.lists(st.tuples(name, value), max_size=5))
        def check(headers: list[tuple[bytes, bytes]]) -> None:
            self.assertEqual(_relaxed_headers(headers), Relaxed.canonicalize_headers(headers))

        check()

    def test_b_removal_same_as_dkimpy(self) -> None:
        """Removing the b= value gives what dkimpy's RE_BTAG substitution gives, on random field values."""
        from dkim import RE_BTAG
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from txmail.policy.dkim import _without_b

        pieces = st.sampled_from(
            [b";", b" ", b"b", b"=", b"\r\n", b"\n", b"\t", b"A", b"h", b"x", b"+", b"/"]
        )

        @settings(max_examples=1000, deadline=None)
        @given(st.lists(pieces, max_size=40).map(b"".join))
        def check(value: bytes) -> None:
            self.assertEqual(_without_b(value), RE_BTAG.sub(b"\\1", value))

        check()

    def test_header_selection_same_as_dkimpy(self) -> None:
        """
        The fields an h= list selects (RFC 6376 section 5.4.2: bottom up,
        repeated names, absent names) are dkimpy's ``select_headers``'s.
        """
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from txmail.policy.dkim import _select_headers

        names = [b"from", b"to", b"subject", b"x-a"]
        field = st.tuples(st.sampled_from([*names, b"From", b"SUBJECT", b"X-A"]), st.binary(max_size=3))

        @settings(max_examples=1000, deadline=None)
        @given(st.lists(field, max_size=8), st.lists(st.sampled_from([*names, b"cc"]), max_size=10))
        def check(headers: list[tuple[bytes, bytes]], include: list[bytes]) -> None:
            self.assertEqual(_select_headers(headers, include), dkimpy.select_headers(headers, include))

        check()

    def test_header_fields_same_as_dkimpy(self) -> None:
        """Header fields, folded over any number of lines, are split as dkimpy's rfc822_parse splits them."""
        from hypothesis import given, settings
        from hypothesis import strategies as st

        from txmail.policy.dkim import _Message

        line = st.sampled_from([b"", b" a", b"b c", b"\td", b":"])
        folded = st.lists(line, min_size=1, max_size=6).map(lambda lines: b"\r\n ".join(lines) + b"\r\n")
        field = st.tuples(st.sampled_from([b"From", b"Subject", b"X-Long"]), folded)

        @settings(max_examples=500, deadline=None)
        @given(st.lists(field, max_size=6))
        def check(fields: list[tuple[bytes, bytes]]) -> None:
            message = b"".join(n + b":" + v for n, v in fields) + b"\r\nbody\r\n"
            expected = [(n, v) for n, v in dkimpy.rfc822_parse(message)[0]]
            self.assertEqual(_Message(message).headers, expected)

        check()
        many = b"X-Long: a\r\n" + b" b\r\n" * 50_000
        self.assertEqual(_Message(many + b"\r\n").headers, [(b"X-Long", many[len(b"X-Long:") :])])
