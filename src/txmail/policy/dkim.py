"""
DKIM signing and verification (RFC 6376, with RFC 8463's Ed25519 and
RFC 8301's algorithm and key-size rules), on dkimpy.

This module is sans-IO: it imports nothing from Twisted.  The server calls it
from its thread pool with the DNS answers already fetched:

1. :func:`key_queries` scans the header section (no cryptography) and gives
   the TXT names of the keys the first *limit* signatures need;
2. the server looks them up asynchronously with its own resolver
   (:class:`txmail.resolver.Resolver`), one :class:`~txmail.dnsdata.Answer`
   per name;
3. :func:`verify` checks those signatures against those answers only.

Signing is one call, :func:`sign`, with one :class:`SigningKey` per
algorithm (RFC 8463 section 4: a signer that wants Ed25519 also signs with
RSA, for the verifiers that do not know Ed25519 yet).

Implementation notes
--------------------
* dkimpy gives the building blocks: tag-list parsing, the "simple" and
  "relaxed" canonicalizations, header selection and hashing (including the
  removal of the ``b=`` value from the signature field), and RSA public
  keys and RSASSA-PKCS1-v1_5 verification; PyNaCl does Ed25519 (as in
  dkimpy).  RSA *signing* uses ``cryptography`` (a dependency of
  pyOpenSSL, so always there): the signature is the same, byte for byte,
  as dkimpy's pure-Python RSA makes, about five times faster.  dkimpy's own ``DKIM.sign``/``DKIM.verify`` are not
  used, because they read the clock (``t=``, ``x=``), look keys up
  themselves, report every failure as ``False`` (no temperror/permerror
  distinction) and parse the message once per signature.  Here the message
  is parsed once, its canonicalized body and body hash are computed once
  per canonicalization and shared by every signature and key (an RSA and an
  Ed25519 signature both hash the relaxed body with SHA-256).
* The header section is split from the body without copying the body line
  by line: the body is one slice of the message (converted to CRLF only if
  it holds bare LFs, as dkimpy's parser does).
* Only the first *limit* DKIM-Signature fields (topmost first) are checked:
  RFC 6376 section 6.1 lets a verifier limit the signatures it checks, and a
  message with hundreds of signatures must not cost hundreds of DNS queries
  and RSA operations.  Signatures past the limit get no result at all.

Results (RFC 8601 section 2.7.1 names)
--------------------------------------
=============  ===========================================================
``pass``       the signature verified.
``fail``       the body hash or the signature did not match, the signature
               expired (``x=``, RFC 6376 section 3.5), or ``l=`` is longer
               than the body.
``neutral``    the signature field is unusable: a tag-list syntax error, a
               required tag missing, ``v=`` not 1, an unknown algorithm or
               canonicalization, ``i=`` outside ``d=``, ``x=`` before
               ``t=``, or From not signed (RFC 6376 section 6.1.1's
               PERMFAIL cases for the signature itself; RFC 8601 uses
               ``neutral`` for "syntax errors").
``permerror``  no usable key: NXDOMAIN or NODATA (RFC 6376 section 6.1.2
               "PERMFAIL (no key for signature)"), a key record that does
               not parse, is revoked (empty ``p=``), is of another key type
               or hash (``k=``, ``h=``), or is not for email (``s=``).
``temperror``  the key lookup failed (the resolver's ``ERROR`` answer:
               SERVFAIL, timeout), RFC 6376 section 6.1.2 "TEMPFAIL (key
               unavailable)".
``policy``     a signature this verifier does not accept although it may be
               valid: ``rsa-sha1`` (RFC 8301 section 3.1), an RSA key shorter
               than 1024 bits (RFC 8301 section 3.2), a ``t=`` timestamp in
               the future (RFC 6376 section 3.5 lets verifiers ignore those).
=============  ===========================================================

A message with no DKIM-Signature field gets an empty list (``dkim=none``).
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import hashlib
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    import nacl.exceptions
    import nacl.signing
    from dkim.canonicalization import (
        CanonicalizationPolicy,
        InvalidCanonicalizationPolicyError,
        Relaxed,
        correct_empty_body,
        strip_trailing_lines,
    )
    from dkim.crypto import (
        UnparsableKeyError,
        parse_public_key,
    )
    from dkim.util import InvalidTagValueList, parse_tag_value
except ImportError as e:  # pragma: no cover - exercised by a test with the module hidden
    raise ImportError(
        f"DKIM and ARC need dkimpy and PyNaCl ({e}): install the policy extra, pip install 'txmail[policy]'"
    ) from e

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from txmail.dnsdata import Answer

__all__ = [
    "ALGORITHMS",
    "CLOCK_SKEW",
    "DEFAULT_LIMIT",
    "DEFAULT_SIGNED_HEADERS",
    "MAX_RSA_KEY_BITS",
    "MIN_RSA_BITS",
    "OVERSIGNED_HEADERS",
    "DKIMResult",
    "SigningKey",
    "generate_key",
    "key_queries",
    "load_signing_key",
    "sign",
    "txt_record_for",
    "verify",
    "write_key",
]

#: The signing algorithms (RFC 6376 section 3.3, RFC 8463 section 3).
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")

#: Signatures checked at most per message (see the module notes).
DEFAULT_LIMIT = 5

#: RFC 8301 section 3.2: "Verifiers MUST NOT consider signatures using RSA
#: keys of less than 1024 bits as valid signatures."  Signers are refused
#: such keys too.
MIN_RSA_BITS = 1024

#: Seconds of clock difference tolerated on ``t=`` and ``x=`` (OpenDKIM's
#: default ``ClockDrift``).
CLOCK_SKEW = 300

#: Header fields signed when present, in this order (RFC 6376 section 5.4.1's
#: list, plus List-Unsubscribe-Post, which RFC 8058 section 4 requires signed).
#: Trace fields (Return-Path, Received) and Bcc are never signed.
DEFAULT_SIGNED_HEADERS = (
    "from",
    "sender",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "to",
    "cc",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "content-id",
    "content-description",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-message-id",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
)

#: Fields listed in ``h=`` once more than they occur, so that adding one
#: after signing breaks the signature (RFC 6376 section 8.15).
OVERSIGNED_HEADERS = ("from",)

_SIGNATURE_FIELD = b"dkim-signature"
_FOLD = b"\r\n\t"
_LINE = 76
_WSP = re.compile(rb"\s+")
_HEADER_NAME = re.compile(rb"([\x21-\x39\x3b-\x7e]+):")
_DIGITS = re.compile(rb"\d{1,76}")
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


# --- signing keys -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningKey:
    """
    A private key and where its public half is published
    (``<selector>._domainkey.<domain>``, RFC 6376 section 3.6.2.1).

    Attributes:
        domain: the signing domain (``d=``).
        selector: the selector (``s=``).
        algorithm: ``"rsa-sha256"`` or ``"ed25519-sha256"``.
        private_key: the key as dkimpy takes it: for RSA, a PEM private key
            (PKCS#1 or PKCS#8); for Ed25519, the base64 of the 32-byte
            private key (RFC 8032 section 5.1.5's seed).  Left out of
            ``repr``.

    The key is parsed once, here (a :class:`ValueError` if it does not
    parse).  The RFC 8301 size floor is enforced by :func:`load_signing_key`
    and :func:`generate_key`, not here, so that tests can sign with short
    keys.
    """

    domain: str
    selector: str
    algorithm: str
    private_key: bytes = field(repr=False)
    _parsed: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(
                f"unsupported DKIM signing algorithm {self.algorithm!r}: use one of {ALGORITHMS}"
            )
        if not self.domain or not self.selector:
            raise ValueError("a signing key needs a domain and a selector")
        object.__setattr__(self, "_parsed", _parse_private_key(self.algorithm, self.private_key))

    @property
    def bits(self) -> int:
        """The key size in bits (256 for Ed25519)."""
        if self.algorithm == "ed25519-sha256":
            return 256
        return int(self._parsed.key_size)

    @property
    def record_name(self) -> str:
        """The DNS name of the public key: ``<selector>._domainkey.<domain>``."""
        return f"{self.selector}._domainkey.{self.domain}"


def _parse_private_key(algorithm: str, data: bytes) -> Any:
    try:
        if algorithm == "ed25519-sha256":
            seed = base64.b64decode(_WSP.sub(b"", data), validate=True)
            if len(seed) != 32:
                raise ValueError(f"an Ed25519 private key is 32 bytes, not {len(seed)}")
            return nacl.signing.SigningKey(seed)
        private = serialization.load_pem_private_key(data, password=None)
    except (binascii.Error, nacl.exceptions.ValueError, TypeError, ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"unusable {algorithm} private key: {e}") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError(f"unusable {algorithm} private key: not an RSA key")
    return private


def _from_pem(content: bytes) -> tuple[str, bytes, Any]:
    """``(algorithm, key as dkimpy takes it, cryptography private key)`` of a key file."""
    if b"-----BEGIN" not in content:
        # A bare base64 Ed25519 key (dkimpy's dknewkey writes these).
        try:
            seed = base64.b64decode(_WSP.sub(b"", content), validate=True)
        except binascii.Error:
            seed = b""
        if len(seed) != 32:
            raise ValueError(
                "not a key file: expected a PEM private key (RSA or Ed25519) or a base64 Ed25519 key"
            )
        private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        return "ed25519-sha256", base64.b64encode(seed), private
    try:
        loaded: Any = serialization.load_pem_private_key(content, password=None)
        private = loaded
    except TypeError:
        raise ValueError("the private key is encrypted: DKIM keys are read without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ValueError(f"not a usable PEM private key: {e}") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ValueError(
                f"RSA key of {private.key_size} bits: RFC 8301 section 3.2 requires at least "
                f"{MIN_RSA_BITS} bits (2048 recommended)"
            )
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        return "rsa-sha256", pem, private
    if isinstance(private, ed25519.Ed25519PrivateKey):
        seed = private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        return "ed25519-sha256", base64.b64encode(seed), private
    raise ValueError(f"unsupported key type {type(private).__name__}: DKIM uses RSA or Ed25519 keys")


def load_signing_key(path: str, domain: str, selector: str) -> SigningKey:
    """
    Read a private key file.

    The algorithm comes from the file: a PEM RSA key (PKCS#1 ``BEGIN RSA
    PRIVATE KEY`` or PKCS#8 ``BEGIN PRIVATE KEY``), a PEM PKCS#8 Ed25519 key
    (what :func:`generate_key` writes, ``openssl genpkey -algorithm
    ed25519``), or a bare base64 Ed25519 key (dkimpy's ``dknewkey``).

    Raises:
        OSError: the file cannot be read.
        ValueError: not a key, an encrypted key, or an RSA key under
            :data:`MIN_RSA_BITS` bits (RFC 8301 section 3.2).
    """
    with open(path, "rb") as f:
        content = f.read()
    algorithm, key, _ = _from_pem(content)
    return SigningKey(domain, selector, algorithm, key)


def _txt_record(private: Any) -> str:
    public = private.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        # RFC 8463 section 4: p= is the base64 of the bare 32-byte key.
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return "v=DKIM1; k=ed25519; p=" + base64.b64encode(raw).decode("ascii")
    # RFC 6376 section 3.6.1: p= is the base64 of the DER SubjectPublicKeyInfo.
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode("ascii")


def txt_record_for(key: SigningKey | bytes) -> str:
    """
    The DKIM key record (RFC 6376 section 3.6.1) to publish as TXT at
    ``<selector>._domainkey.<domain>`` for *key*: a :class:`SigningKey`, or
    the content of a key file.  DNS zone files split values longer than 255
    octets into several character-strings; they are joined again on lookup
    (RFC 6376 section 3.6.2.2).

    Raises:
        ValueError: *key* is not a usable key (see :func:`load_signing_key`).
    """
    if isinstance(key, SigningKey):
        if key.algorithm == "ed25519-sha256":
            return _txt_record(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(key._parsed)))
        return _txt_record(key._parsed)
    return _txt_record(_from_pem(key)[2])


def generate_key(algorithm: str, bits: int = 2048) -> tuple[bytes, str]:
    """
    A new key pair: ``(key file content, TXT record value)``.

    The file is PEM: PKCS#1 for RSA (as ``opendkim-genkey`` writes it), PKCS#8
    for Ed25519.  Write it with :func:`write_key`; publish the record with
    :attr:`SigningKey.record_name` as the name.

    Args:
        algorithm: ``"rsa-sha256"`` or ``"ed25519-sha256"``.
        bits: the RSA key size (ignored for Ed25519); at least
            :data:`MIN_RSA_BITS`.

    Raises:
        ValueError: an unknown algorithm or too few bits.
    """
    private: Any
    if algorithm == "ed25519-sha256":
        private = ed25519.Ed25519PrivateKey.generate()
        fmt = serialization.PrivateFormat.PKCS8
    elif algorithm == "rsa-sha256":
        if bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys have at least {MIN_RSA_BITS} bits (RFC 8301 section 3.2)")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        fmt = serialization.PrivateFormat.TraditionalOpenSSL
    else:
        raise ValueError(f"unsupported DKIM signing algorithm {algorithm!r}: use one of {ALGORITHMS}")
    content = private.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    return content, _txt_record(private)


def write_key(path: str, content: bytes, *, overwrite: bool = False) -> None:
    """
    Write a private key file readable by its owner only (mode 0600).

    The file is created with that mode (never chmod-ed afterwards, so the
    key is never readable by others, even for a moment) and fsync-ed.  With
    *overwrite*, an existing file is replaced atomically (a new file then a
    rename); without it, an existing file is an error.

    Raises:
        FileExistsError: *path* exists and *overwrite* is false.
        OSError: the file cannot be written.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    target = f"{path}.tmp{os.getpid()}" if overwrite else path
    fd = os.open(target, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(target, path)
    except BaseException:
        os.unlink(target)
        raise


# --- the message ------------------------------------------------------------


def _relaxed_headers(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    dkimpy's relaxed header canonicalization (RFC 6376 section 3.4.2), with
    a fast path for a field on one line without tabs or two spaces in a row
    (most fields): its value only loses the white space around it.
    """
    out = []
    slow = Relaxed.canonicalize_headers
    for name, value in headers:
        if (
            value.count(b"\n") == 1
            and value.endswith(b"\r\n")
            and not (b"\t" in value or b"  " in value or b"\r" in value[:-2])
        ):
            out.append((name.lower().rstrip(), value[:-2].strip() + b"\r\n"))
        else:
            out.extend(slow([(name, value)]))
    return out


class _FastPolicy:
    """A dkimpy canonicalization policy whose relaxed headers take :func:`_relaxed_headers`."""

    __slots__ = ("body_algorithm", "header_algorithm")

    def __init__(self, policy: Any) -> None:
        self.header_algorithm = policy.header_algorithm
        self.body_algorithm = policy.body_algorithm

    def canonicalize_headers(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        if self.header_algorithm is Relaxed:
            return _relaxed_headers(headers)
        return self.header_algorithm.canonicalize_headers(headers)  # type: ignore[no-any-return]  # dkimpy is untyped

    def canonicalize_body(self, body: bytes) -> bytes:
        return self.body_algorithm.canonicalize_body(body)  # type: ignore[no-any-return]  # dkimpy is untyped


_B_PREFIX = re.compile(rb"[;\s]b\s*=")
_B_VALUE = re.compile(rb"(?:\s*[A-Za-z0-9+/=])*")


def _without_b(value: bytes) -> bytes:
    """
    A signature field's value with the value of its ``b=`` tag removed
    (RFC 6376 section 3.7: "the value of the "b=" tag (including all
    surrounding whitespace) must be deleted"), exactly as dkimpy's
    ``RE_BTAG`` substitution does it (FWS and base64 characters up to the
    last of them, and a line end closing the field), four times faster.
    """
    out = []
    position = 0
    end = 0
    match = _B_PREFIX.search(value)
    while match is not None:
        found = _B_VALUE.match(value, match.end())
        assert found is not None  # the pattern matches the empty string
        end = found.end()
        if value[end:] in (b"\n", b"\r\n"):
            end = len(value)
        out.append(value[position : match.end()])
        position = end
        match = _B_PREFIX.search(value, end)
    out.append(value[position:])
    return b"".join(out)


def _select_headers(
    headers: Sequence[tuple[bytes, bytes]], include: Sequence[bytes]
) -> list[tuple[bytes, bytes]]:
    """
    The fields of *headers* that the (lower-case) names *include* sign, as
    dkimpy's ``select_headers`` picks them (RFC 6376 section 5.4.2: each
    name takes that name's next field from the bottom up; a name with none
    left takes nothing), in one pass over *headers*: dkimpy's scans the
    fields again for each name, so that a signature naming thousands of
    absent fields, on a message of thousands of fields, took seconds.
    """
    where: dict[bytes, list[int]] = {}
    for i, (name, _) in enumerate(headers):
        where.setdefault(name.lower(), []).append(i)
    out = []
    for name in include:
        found = where.get(name)
        if found:
            out.append(headers[found.pop()])
    return out


def _hash_headers(
    hasher: Any,
    policy: Any,
    headers: Sequence[tuple[bytes, bytes]],
    include: Sequence[bytes],
    field: tuple[bytes, bytes],
) -> None:
    """
    Hash the signed header fields, then the signature field without its
    ``b=`` value and without its final line end (RFC 6376 section 3.7),
    as dkimpy's ``hash_headers`` does, with the faster canonicalization and
    ``b=`` removal of this module.
    """
    fast = _FastPolicy(policy)
    signature = fast.canonicalize_headers([(field[0], _without_b(field[1]))])
    for name, value in [*_select_headers(headers, include), *((n, v.rstrip()) for n, v in signature)]:
        hasher.update(name)
        hasher.update(b":")
        hasher.update(value)


def _relaxed_body(body: bytes) -> bytes:
    """
    dkimpy's relaxed body canonicalization (RFC 6376 section 3.4.4), with a
    fast path: a body without tabs, without two spaces in a row and without
    a space before a line end is left as it is by the whitespace rules (its
    two regular-expression passes), so only the trailing empty lines go.
    """
    if b"\t" in body or b"  " in body or b" \r\n" in body:
        return Relaxed.canonicalize_body(body)  # type: ignore[no-any-return]  # dkimpy is untyped
    return correct_empty_body(strip_trailing_lines(body))  # type: ignore[no-any-return]  # dkimpy is untyped


class _Message:
    """
    A message parsed once: its header fields as dkimpy takes them
    (``[name, value]`` with the value as written after the colon, CRLF
    included), its body, and caches of their canonical forms.
    """

    __slots__ = ("_bodies", "_body_hashes", "_canonical_headers", "body", "error", "headers")

    def __init__(self, message: bytes, *, headers_only: bool = False) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        #: Why the header section stopped early (a malformed line), or "".
        self.error = ""
        self._canonical_headers: dict[bytes, list[tuple[bytes, bytes]]] = {}
        self._bodies: dict[bytes, bytes] = {}
        self._body_hashes: dict[tuple[bytes, str, int | None], bytes] = {}
        position = self._scan_headers(message)
        if headers_only or position < 0:
            self.body = b""
            return
        body = message[position:]
        # dkimpy's parser (like every verifier) reads bare LFs as line ends.
        if body.count(b"\n") != body.count(b"\r\n"):
            body = re.sub(rb"\r?\n", b"\r\n", body)
        self.body = body

    def _scan_headers(self, message: bytes) -> int:
        """Fill :attr:`headers`; the offset of the body (-1 if unknown)."""
        # Each field's lines as a list, joined at the end: a field folded over
        # many lines must cost its length, not its length squared.
        headers: list[tuple[bytes, list[bytes]]] = []
        position = 0
        number = 0
        while position < len(message):
            end = message.find(b"\n", position)
            following = len(message) if end < 0 else end + 1
            line = message[position : following if end < 0 else end]
            if line.endswith(b"\r"):
                line = line[:-1]
            number += 1
            if not line:
                self.headers = [(n, b"".join(v)) for n, v in headers]
                return following
            if line[:1] in (b" ", b"\t"):
                if not headers:
                    self.error = f"continuation line {number} before any header field"
                    break
                headers[-1][1].append(line + b"\r\n")
            else:
                match = _HEADER_NAME.match(line)
                if match is not None:
                    headers.append((match.group(1), [line[match.end() :] + b"\r\n"]))
                elif not (number == 1 and line.startswith(b"From ")):  # an mbox separator
                    self.error = f"header line {number} is not a header field"
                    break
            position = following
        self.headers = [(n, b"".join(v)) for n, v in headers]
        return -1 if self.error else len(message)

    def fields(self, name: bytes) -> list[tuple[bytes, bytes]]:
        """The header fields called *name* (lower-case), top first."""
        return [(n, v) for n, v in self.headers if n.lower() == name]

    def canonical_headers(self, policy: Any) -> list[tuple[bytes, bytes]]:
        algorithm = policy.header_algorithm
        cached = self._canonical_headers.get(algorithm.name)
        if cached is None:
            if algorithm is Relaxed:
                cached = _relaxed_headers(self.headers)
            else:
                cached = algorithm.canonicalize_headers(self.headers)
            self._canonical_headers[algorithm.name] = cached
        return cached

    def canonical_body(self, policy: Any) -> bytes:
        algorithm = policy.body_algorithm
        cached = self._bodies.get(algorithm.name)
        if cached is None:
            if algorithm is Relaxed:
                cached = _relaxed_body(self.body)
            else:
                cached = algorithm.canonicalize_body(self.body)
            self._bodies[algorithm.name] = cached
        return cached

    def body_hash(self, policy: Any, hash_name: str, length: int | None = None) -> bytes:
        """The digest of the canonical body (its first *length* octets if given)."""
        key = (policy.body_algorithm.name, hash_name, length)
        digest = self._body_hashes.get(key)
        if digest is None:
            body = self.canonical_body(policy)
            if length is None:
                digest = hashlib.new(hash_name, body).digest()
            else:
                digest = hashlib.new(hash_name, memoryview(body)[:length]).digest()
            self._body_hashes[key] = digest
        return digest


# --- signing ----------------------------------------------------------------


def _fold_tags(name: bytes, tags: Sequence[tuple[bytes, bytes]]) -> bytes:
    """
    ``Name: t=v; t=v;`` folded at tag boundaries (and inside ``h=`` after
    a colon) into lines of about :data:`_LINE` characters, ending with
    ``b=`` alone on a new line and no value: the caller hashes this text and
    appends the signature (RFC 6376 section 3.7: the ``b=`` value is
    replaced by nothing in the hash input).  Folding happens only where the
    grammar allows FWS, so the "relaxed" form of the field is the same
    before and after the value is added.
    """
    out = bytearray(name + b":")
    column = len(out)
    for tag, value in tags:
        if tag == b"h":
            # FWS is allowed around the colons of h= (RFC 6376 section 3.5).
            names = value.split(b":")
            pieces = [b"h=" + names[0]] + [b":" + n for n in names[1:]]
            pieces[-1] += b";"
            for i, piece in enumerate(pieces):
                separator = b"" if i else b" "
                if column + len(separator) + len(piece) > _LINE:
                    out += _FOLD
                    column = 1
                    separator = b""
                out += separator + piece
                column += len(separator) + len(piece)
            continue
        piece = tag + b"=" + value + b";"
        if column + 1 + len(piece) > _LINE:
            out += _FOLD + piece
            column = 1 + len(piece)
        else:
            out += b" " + piece
            column += 1 + len(piece)
    out += _FOLD + b"b="
    return bytes(out)


def _fold_b(value: bytes) -> bytes:
    """The ``b=`` value broken into lines (FWS is allowed inside, RFC 6376 section 3.5)."""
    width = _LINE - 3
    return _FOLD.join(value[i : i + width] for i in range(0, len(value), width))


def _signature(algorithm: str, parsed_key: Any, hasher: Any) -> bytes:
    if algorithm == "ed25519-sha256":
        # RFC 8463 section 3: Ed25519 (PureEdDSA) signs the SHA-256 hash.
        return bytes(parsed_key.sign(hasher.digest()).signature)
    # RSASSA-PKCS1-v1_5 (RFC 8017 section 8.2) over the SHA-256 hash, as
    # dkimpy's RSASSA_PKCS1_v1_5_sign computes it (the scheme is
    # deterministic: the same bytes), in OpenSSL: about five times faster
    # than dkimpy's pure-Python RSA for a 2048-bit key.
    return bytes(parsed_key.sign(hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())))


def _signed_field(
    name: bytes,
    tags: Sequence[tuple[bytes, bytes]],
    key: SigningKey,
    message: _Message,
    include: Sequence[bytes],
    *,
    prefix_fields: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """
    A signature header field (DKIM-Signature, ARC-Message-Signature,
    ARC-Seal), CRLF-ended: *prefix_fields* (already canonical) and the
    *include* fields of *message* are hashed, then the field itself without
    its ``b=`` value (RFC 6376 section 3.7), with relaxed canonicalization.
    """
    head = _fold_tags(name, tags)
    field_name, field_value = head.split(b":", 1)
    hasher = hashlib.sha256()
    for n, v in prefix_fields:
        hasher.update(n + b":" + v)
    _hash_headers(
        hasher, _RELAXED, message.canonical_headers(_RELAXED), list(include), (field_name, field_value)
    )
    b = base64.b64encode(_signature(key.algorithm, key._parsed, hasher))
    return head + _fold_b(b) + b"\r\n"


def _signed_names(message: _Message, names: Sequence[str], oversigned: Sequence[str]) -> list[bytes]:
    """
    The ``h=`` list: each of *names* as many times as it occurs in
    *message* (in the message's order, top first), then each *oversigned*
    name once more (RFC 6376 section 5.4.2 and 8.15).
    """
    wanted = {n.encode("ascii") for n in names}
    listed = [n.lower() for n, _ in message.headers if n.lower() in wanted]
    return listed + [n.encode("ascii") for n in oversigned]


def _now(now: float | None) -> int:
    return int(time.time() if now is None else now)


def _ascii_domain(domain: str) -> bytes:
    return domain.encode("ascii") if domain.isascii() else domain.encode("idna")


def sign(message: bytes, keys: Sequence[SigningKey], *, now: float | None = None) -> bytes:
    """
    The DKIM-Signature header fields to prepend to *message*, one per key,
    each CRLF-ended (RFC 6376 section 5).

    Every signature uses relaxed/relaxed canonicalization (RFC 6376 section
    3.4), covers the fields of :data:`DEFAULT_SIGNED_HEADERS` present in the
    message, lists From once more than it occurs (RFC 6376 section 8.15),
    and carries ``t=`` (*now*, seconds since the epoch; the clock when
    ``None``).  The body is canonicalized and hashed once for all keys.
    With an RSA and an Ed25519 key both signatures are made (RFC 8463
    section 4).  No keys: ``b""``.

    Args:
        message: the message, CRLF line ends, as it will be sent (trace
            fields such as Return-Path and Received may be present: they
            are not signed).

    Raises:
        ValueError: the message has no From field (RFC 6376 section 5.4:
            it MUST be signed) or its header section is malformed.
    """
    if not keys:
        return b""
    parsed = _Message(message)
    if parsed.error:
        raise ValueError(f"cannot sign: {parsed.error}")
    if not parsed.fields(b"from"):
        raise ValueError("cannot sign a message without a From header field (RFC 6376 section 5.4)")
    include = _signed_names(parsed, DEFAULT_SIGNED_HEADERS, OVERSIGNED_HEADERS)
    body_hash = base64.b64encode(parsed.body_hash(_RELAXED, "sha256"))
    timestamp = str(_now(now)).encode("ascii")
    out = []
    for key in keys:
        tags = [
            (b"v", b"1"),
            (b"a", key.algorithm.encode("ascii")),
            (b"c", b"relaxed/relaxed"),
            (b"d", _ascii_domain(key.domain)),
            (b"s", key.selector.encode("ascii")),
            (b"t", timestamp),
            (b"h", b":".join(include)),
            (b"bh", body_hash),
        ]
        out.append(_signed_field(b"DKIM-Signature", tags, key, parsed, include))
    return b"".join(out)


# --- verification -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DKIMResult:
    """
    The outcome of one DKIM signature.

    Attributes:
        result: ``pass``, ``fail``, ``neutral``, ``policy``, ``permerror``
            or ``temperror`` (RFC 8601 section 2.7.1; see the module notes).
        domain: the signing domain, ``d=`` (``header.d``).
        selector: ``s=`` (``header.s``).
        algorithm: ``a=`` (``header.a``).
        identity: the AUID, ``i=`` (``@`` and ``d=`` when absent,
            RFC 6376 section 3.5) (``header.i``).
        header_b: the start of ``b=``, at least 8 characters and as many
            more as needed to tell this signature from the message's other
            ones (``header.b``, RFC 6008 section 4).
        reason: why it did not pass (or a note on a pass), for
            Authentication-Results comments and logs.
        key_bits: the public key size, when the key was read.
        testing: the key record has ``t=y`` (RFC 6376 section 3.6.1: the
            domain is testing DKIM; do not treat the message differently
            from unsigned mail).
    """

    result: str
    domain: str = ""
    selector: str = ""
    algorithm: str = ""
    identity: str = ""
    header_b: str = ""
    reason: str = ""
    key_bits: int | None = None
    testing: bool = False


class _Outcome(Exception):
    """Raised inside a check to end it with a result and a reason."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(slots=True)
class _PublicKey:
    kind: str  # "rsa" or "ed25519"
    key: Any  # dkimpy's RSA dict, or a nacl VerifyKey
    bits: int
    hashes: frozenset[bytes] | None
    testing: bool
    strict: bool


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


@functools.lru_cache(maxsize=256)
def _tag_items(value: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """A signature field's tag-list as items, parsed once for key_queries and verify (InvalidTagValueList)."""
    return tuple(parse_tag_value(value).items())


def _tags(value: bytes) -> dict[bytes, bytes]:
    """A tag-list (RFC 6376 section 3.2), or an ``_Outcome`` (neutral)."""
    try:
        return dict(_tag_items(value))
    except InvalidTagValueList:
        raise _Outcome("neutral", "signature syntax error") from None


def _b64(value: bytes, tag: str) -> bytes:
    try:
        return base64.b64decode(_WSP.sub(b"", value), validate=True)
    except binascii.Error:
        raise _Outcome("neutral", f"{tag}= is not base64") from None


def _key_name(tags: Mapping[bytes, bytes]) -> str | None:
    selector, domain = tags.get(b"s"), tags.get(b"d")
    if not selector or not domain:
        return None
    return f"{_text(selector)}._domainkey.{_text(domain)}".lower().rstrip(".")


def _check_times(tags: Mapping[bytes, bytes], now: int) -> None:
    """``t=`` and ``x=`` (RFC 6376 section 3.5)."""
    t = tags.get(b"t")
    x = tags.get(b"x")
    for tag, value in ((b"t", t), (b"x", x)):
        if value is not None and not _DIGITS.fullmatch(value):
            raise _Outcome("neutral", f"{_text(tag)}= is not a number")
    if t is not None and x is not None and int(x) < int(t):
        # "the value of the "x=" tag MUST be greater than the value of the "t=" tag"
        raise _Outcome("neutral", "x= is before t=")
    if x is not None and now > int(x) + CLOCK_SKEW:
        raise _Outcome("fail", "signature expired (x=)")
    if t is not None and int(t) > now + CLOCK_SKEW:
        raise _Outcome("policy", "signature timestamp (t=) in the future")


def _check_dkim_tags(tags: Mapping[bytes, bytes], now: int) -> list[bytes]:
    """The checks of RFC 6376 section 6.1.1 on the signature field; the ``h=`` names."""
    for tag in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s"):
        if not tags.get(tag):
            raise _Outcome("neutral", f"signature has no {_text(tag)}= tag")
    if tags[b"v"] != b"1":
        raise _Outcome("neutral", "unsupported signature version (v=)")
    algorithm = tags[b"a"].lower()
    if algorithm == b"rsa-sha1":
        raise _Outcome("policy", "rsa-sha1 is not accepted (RFC 8301 section 3.1)")
    if algorithm.decode("ascii", "replace") not in ALGORITHMS:
        raise _Outcome("neutral", "unknown signature algorithm (a=)")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple").lower())
    except InvalidCanonicalizationPolicyError:
        raise _Outcome("neutral", "unknown canonicalization (c=)") from None
    query = tags.get(b"q")
    if query is not None and b"dns/txt" not in [q.strip().lower() for q in query.split(b":")]:
        raise _Outcome("neutral", "unsupported query method (q=)")
    _b64(tags[b"b"], "b")
    _b64(tags[b"bh"], "bh")
    domain = tags[b"d"].lower().rstrip(b".")
    identity = tags.get(b"i")
    if identity is not None:
        i_domain = identity.rpartition(b"@")[2].lower().rstrip(b".")
        if b"@" not in identity or not (i_domain == domain or i_domain.endswith(b"." + domain)):
            raise _Outcome("neutral", "i= is not within d= (RFC 6376 section 3.5)")
    length = tags.get(b"l")
    if length is not None and not _DIGITS.fullmatch(length):
        raise _Outcome("neutral", "l= is not a number")
    names = [n.strip().lower() for n in tags[b"h"].split(b":")]
    if b"from" not in names:
        raise _Outcome("neutral", "From is not signed (RFC 6376 section 5.4)")
    _check_times(tags, now)
    return names


#: The longest RSA key a key record may hold (RFC 8301 section 3.2: verifiers
#: take 1024 to 4096 bits; 8192-bit keys are published too).
MAX_RSA_KEY_BITS = 16384
#: The most octets of its ``p=`` read (the DER SubjectPublicKeyInfo: the
#: modulus and the exponent, with a few octets of framing each); a longer
#: one is refused unread.
MAX_RSA_KEY_OCTETS = MAX_RSA_KEY_BITS // 8 + 64


@functools.lru_cache(maxsize=1024)
def _parse_key_record(record: bytes) -> _PublicKey:
    """One TXT record as a DKIM key (RFC 6376 section 3.6.1), or an ``_Outcome``."""
    try:
        tags = parse_tag_value(record)
    except InvalidTagValueList:
        raise _Outcome("permerror", "key record syntax error") from None
    version = tags.get(b"v")
    if version is not None and version != b"DKIM1":
        raise _Outcome("permerror", "key record is not v=DKIM1")
    public = tags.get(b"p")
    if public is None:
        raise _Outcome("permerror", "key record has no p= tag")
    public = _WSP.sub(b"", public)
    if not public:
        # "An empty value means that this public key has been revoked."
        raise _Outcome("permerror", "key revoked (empty p=)")
    services = [s.strip() for s in tags.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        raise _Outcome("permerror", "key is not for email (s=)")
    hashes = tags.get(b"h")
    flags = [f.strip() for f in tags.get(b"t", b"").split(b":")]
    kind = tags.get(b"k", b"rsa").strip().lower()
    try:
        data = base64.b64decode(public, validate=True)
    except binascii.Error:
        raise _Outcome("permerror", "key p= is not base64") from None
    if kind == b"rsa":
        if len(data) > MAX_RSA_KEY_OCTETS:
            # dkimpy's ASN.1 reader takes time quadratic in the key's length:
            # a record of a huge key is refused unread.
            raise _Outcome("permerror", f"RSA key longer than {MAX_RSA_KEY_BITS} bits")
        try:
            key: Any = parse_public_key(data)
        except (UnparsableKeyError, AssertionError, IndexError, TypeError, ValueError):
            # dkimpy's ASN.1 reader asserts on some malformed input.
            raise _Outcome("permerror", "RSA key does not parse") from None
        modulus, exponent = int(key["modulus"]), int(key["publicExponent"])
        bits = modulus.bit_length()
        if bits > MAX_RSA_KEY_BITS:
            raise _Outcome("permerror", f"RSA key longer than {MAX_RSA_KEY_BITS} bits")
        try:
            # Verification through OpenSSL (``cryptography``): the same
            # RSASSA-PKCS1-v1_5 check as dkimpy's pure-Python one, faster.
            key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        except ValueError:
            raise _Outcome("permerror", "RSA key does not parse") from None
    elif kind == b"ed25519":
        # RFC 8463 section 4: the bare 32-byte public key.
        if len(data) != 32:
            raise _Outcome("permerror", "Ed25519 key is not 32 bytes")
        try:
            key = nacl.signing.VerifyKey(data)
        except nacl.exceptions.ValueError:
            raise _Outcome("permerror", "Ed25519 key does not parse") from None
        bits = 256
    else:
        raise _Outcome("permerror", "unknown key type (k=)")
    return _PublicKey(
        kind=kind.decode("ascii"),
        key=key,
        bits=bits,
        hashes=None if hashes is None else frozenset(h.strip().lower() for h in hashes.split(b":")),
        testing=b"y" in flags,
        strict=b"s" in flags,
    )


def _public_key(answer: Answer) -> _PublicKey:
    """The key in a TXT answer (RFC 6376 section 6.1.2), or an ``_Outcome``."""
    if answer.failed:
        raise _Outcome("temperror", "key lookup failed")
    if not answer.ok:
        raise _Outcome("permerror", "no key for signature")
    first: _Outcome | None = None
    # Several records: use the first that is a usable key (RFC 6376 section
    # 6.1.2 lets the verifier choose one).
    for record in answer.records:
        try:
            return _parse_key_record(record if isinstance(record, bytes) else str(record).encode())
        except _Outcome as outcome:
            first = first or outcome
    assert first is not None
    raise first


def _check_key(key: _PublicKey, algorithm: bytes, tags: Mapping[bytes, bytes]) -> None:
    """RFC 6376 section 6.1.2 steps 5-7 and RFC 8301 on a key for a signature."""
    kind, _, hash_name = algorithm.partition(b"-")
    if kind.decode("ascii") != key.kind:
        raise _Outcome("permerror", f"key type {key.kind} does not match a={_text(algorithm)}")
    if key.hashes is not None and hash_name not in key.hashes:
        raise _Outcome("permerror", "key does not allow this hash (h=)")
    if key.kind == "rsa" and key.bits < MIN_RSA_BITS:
        raise _Outcome("policy", f"RSA key of {key.bits} bits is too short (RFC 8301 section 3.2)")
    if key.strict and b"i" in tags:
        i_domain = tags[b"i"].rpartition(b"@")[2].lower().rstrip(b".")
        if i_domain != tags[b"d"].lower().rstrip(b"."):
            raise _Outcome("permerror", "key requires i= in exactly d= (t=s)")


def _verify_hash(key: _PublicKey, hasher: Any, signature: bytes) -> bool:
    if key.kind == "ed25519":
        try:
            key.key.verify(hasher.digest(), signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
            return False
        return True
    algorithm = _RSA_HASHES.get(hasher.name)
    if algorithm is None:
        return False
    try:
        key.key.verify(signature, hasher.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except (InvalidSignature, ValueError):
        return False
    return True


#: The hashes an RSA signature may use (rsa-sha1 is refused before this).
_RSA_HASHES = {"sha256": hashes.SHA256()}


def _check_signature(
    message: _Message,
    tags: Mapping[bytes, bytes],
    include: list[bytes],
    signature_field: tuple[bytes, bytes],
    key: _PublicKey,
    *,
    default_c: bytes = b"simple/simple",
) -> str:
    """
    The body hash, then the header hash and the signature (RFC 6376
    section 6.1.3).  A note on a pass ("" or about ``l=``), or an
    ``_Outcome`` (fail).
    """
    try:
        policy = CanonicalizationPolicy.from_c_value(tags.get(b"c", default_c).lower())
    except InvalidCanonicalizationPolicyError:
        raise _Outcome("neutral", "unknown canonicalization (c=)") from None
    hash_name = _text(tags[b"a"].lower().partition(b"-")[2])
    note = ""
    length: int | None = None
    if b"l" in tags:
        if not _DIGITS.fullmatch(tags[b"l"]):
            raise _Outcome("neutral", "l= is not a number")
        length = int(tags[b"l"])
        available = len(message.canonical_body(policy))
        if length > available:
            raise _Outcome("fail", "l= is longer than the body")
        if length < available:
            note = "l= covers part of the body; unsigned content follows"
    if message.body_hash(policy, hash_name, length) != _b64(tags[b"bh"], "bh"):
        raise _Outcome("fail", "body hash mismatch")
    hasher = hashlib.new(hash_name)
    # dkimpy's verifier adds one more "from" so that a From added above the
    # signed one breaks the signature even when the signer did not oversign
    # (dkimpy bug 644046; RFC 6376 section 8.15).
    if b"from" in include:
        include = [*include, b"from"]
    _hash_headers(hasher, policy, message.canonical_headers(policy), include, signature_field)
    if not _verify_hash(key, hasher, _b64(tags[b"b"], "b")):
        raise _Outcome("fail", "signature did not verify")
    return note


def _shared(a: bytes, b: bytes) -> int:
    """The length of the longest common prefix of *a* and *b*."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _header_b_prefixes(values: Sequence[bytes], count: int) -> list[str]:
    """
    For each of the first *count* ``b=`` values, its shortest prefix of 8 or
    more characters that no other value of *values* starts with (RFC 6008
    section 4).  The values are sorted once: the longest prefix a value
    shares with any other is the one it shares with a neighbour, so a
    message with thousands of (identical) signatures costs O(n log n).
    """
    ordered = sorted(values)
    out = []
    for value in values[:count]:
        i = bisect.bisect_left(ordered, value)
        shared = max(
            (_shared(value, ordered[j]) for j in (i - 1, i + 1) if 0 <= j < len(ordered)),
            default=0,
        )
        out.append(_text(value[: max(8, shared + 1)]))
    return out


def _b_value(field_value: bytes) -> bytes:
    match = re.search(rb"(?:^|;)\s*b\s*=([^;]*)", field_value)
    return _WSP.sub(b"", match.group(1)) if match else b""


#: Messages up to this size keep their parse for the next call on the same
#: bytes (key_queries, then verify: the server's two steps parse once).
_REUSE_LIMIT = 256 * 1024
_last_parse: tuple[bytes, _Message] | None = None


def _parsed(message: bytes) -> _Message:
    """*message* parsed, or its parse by the previous call on the very same bytes object."""
    global _last_parse
    last = _last_parse
    if last is not None and last[0] is message:
        return last[1]
    parsed = _Message(message)
    _last_parse = (message, parsed) if len(message) <= _REUSE_LIMIT else None
    return parsed


def key_queries(message: bytes, *, limit: int = DEFAULT_LIMIT) -> list[str]:
    """
    The TXT names (``<selector>._domainkey.<domain>``, lower-case, no final
    dot) of the keys the first *limit* DKIM-Signature fields need, each
    once, in order.  Cheap: the header section is scanned, nothing is
    hashed.  Signatures without ``s=`` or ``d=`` need no key (they are
    ``neutral``) but count towards *limit*, as in :func:`verify`.
    """
    parsed = _parsed(message)
    if parsed.error:
        return []  # verify() gives permerror without a key
    names: dict[str, None] = {}
    for _, value in parsed.fields(_SIGNATURE_FIELD)[:limit]:
        try:
            name = _key_name(dict(_tag_items(value)))
        except InvalidTagValueList:
            continue
        if name is not None:
            names[name] = None
    return list(names)


def _answers(keys: Mapping[str, Answer]) -> dict[str, Answer]:
    return {name.lower().rstrip("."): answer for name, answer in keys.items()}


def _answer_for(answers: Mapping[str, Answer], name: str) -> Answer:
    try:
        return answers[name]
    except KeyError:
        raise ValueError(
            f"no DNS answer for {name!r}: pass the answers for every name key_queries() gave"
        ) from None


def verify(
    message: bytes,
    keys: Mapping[str, Answer],
    *,
    limit: int = DEFAULT_LIMIT,
    now: float | None = None,
) -> list[DKIMResult]:
    """
    Verify the first *limit* DKIM-Signature fields of *message* (RFC 6376
    section 6), top first, with the key records in *keys*.  Signatures past
    *limit* are not checked and get no result.

    Args:
        message: the message as received (CRLF line ends).
        keys: the answer to each TXT name :func:`key_queries` gave (with the
            same *limit*); no other DNS is consulted.
        now: the time (seconds since the epoch) for ``t=``/``x=``; the
            clock when ``None``.

    Returns:
        One :class:`DKIMResult` per signature checked, in message order;
        ``[]`` when the message has no DKIM-Signature field.

    Raises:
        ValueError: a key name :func:`key_queries` gave has no answer in
            *keys*.
    """
    parsed = _parsed(message)
    fields = parsed.fields(_SIGNATURE_FIELD)
    if not fields:
        return []
    clock = _now(now)
    answers = _answers(keys)
    prefixes = _header_b_prefixes([_b_value(v) for _, v in fields], limit)
    return [
        _verify_one(parsed, field, header_b, answers, clock)
        for field, header_b in zip(fields[:limit], prefixes, strict=True)
    ]


def _verify_one(
    message: _Message,
    signature_field: tuple[bytes, bytes],
    header_b: str,
    answers: Mapping[str, Answer],
    now: int,
) -> DKIMResult:
    tags: Mapping[bytes, bytes] = {}
    key: _PublicKey | None = None

    def result(outcome: str, reason: str = "") -> DKIMResult:
        domain = _text(tags.get(b"d", b""))
        identity = tags.get(b"i")
        return DKIMResult(
            result=outcome,
            domain=domain,
            selector=_text(tags.get(b"s", b"")),
            algorithm=_text(tags.get(b"a", b"")),
            identity=_text(identity) if identity is not None else (f"@{domain}" if domain else ""),
            header_b=header_b,
            reason=reason,
            key_bits=key.bits if key is not None else None,
            testing=key.testing if key is not None else False,
        )

    try:
        tags = _tags(signature_field[1])
        name = _key_name(tags)
        if message.error:
            raise _Outcome("permerror", f"malformed header section: {message.error}")
        include = _check_dkim_tags(tags, now)
        assert name is not None
        key = _public_key(_answer_for(answers, name))
        _check_key(key, tags[b"a"].lower(), tags)
        note = _check_signature(message, tags, include, signature_field, key)
    except _Outcome as outcome:
        return result(outcome.result, outcome.reason)
    return result("pass", note)
