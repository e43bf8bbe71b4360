"""
Checking the certificate of a remote SMTP server: WebPKI (PKIX, as MTA-STS
and REQUIRETLS ask) and DANE (RFC 7672, TLSA records), with the outcome
kept for TLS reports (RFC 8460).

Theory of operation
-------------------
:class:`CheckedTLS` is an ``IOpenSSLClientConnectionCreator`` for
``transport.startTLS``.  Its context asks for the server's certificate
but never fails the handshake inside OpenSSL: the verify callback only
records the first chain error (against the system roots, or the
configured CA), and once the handshake is done (``SSL_CB_HANDSHAKE_DONE``,
before any SMTP command goes over the new TLS layer: the client only writes
EHLO after :meth:`~txmail.smtp.client.ClientSession.tls_started`, which the
TLS layer sends after the handshake) one verdict is reached:

* ``mode="dane"``: the usable TLSA records (usages DANE-TA(2) and
  DANE-EE(3), RFC 7672 section 3.1) decide.  DANE-EE matches the leaf
  certificate or its public key; its names and dates are not checked
  (RFC 7672 section 3.1.1).  DANE-TA matches a certificate of the chain the
  server sent (RFC 7672 section 3.1.2 requires it to send the trust
  anchor), and the leaf must chain to it and name the MX host (section
  3.2.2).  A DANE-TA record given as a bare public key that no certificate
  of the chain carries cannot match (deviation: such trust anchors are
  rare, and Postfix needs the certificate in the chain too).
* ``mode="pkix"``: the chain must verify to a trusted root and the leaf
  must name the host (service-identity, RFC 6125).
* ``mode="encrypt"``: anything goes (TLSA records exist but none is
  usable: RFC 7672 section 2.2 still requires TLS).

The verdict is :attr:`CheckedTLS.last_outcome` (``None`` when passed, else
a :class:`TLSFailure` with an RFC 8460 section 4.3 result type).  When
*enforce* is set a failure aborts the connection with
:class:`TLSPolicyError`, which the SMTP client reports as a temporary
"TLS failure"; otherwise the connection goes on (MTA-STS ``testing``
mode, RFC 8461 section 5) and only the report hears of it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = [
    "DANE_EE",
    "DANE_TA",
    "TLSA",
    "CheckedTLS",
    "TLSFailure",
    "TLSPolicyError",
    "dane_check",
    "load_trust_root",
    "usable_tlsa",
]

#: TLSA certificate usages (RFC 6698 section 2.1.1).
PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3

# OpenSSL verify error numbers that have their own RFC 8460 result type.
_X509_V_ERR_CERT_HAS_EXPIRED = 10
_X509_V_ERR_CERT_NOT_YET_VALID = 9
_UNTRUSTED = frozenset({18, 19, 20, 21, 2, 27})  # self-signed, no issuer, untrusted
#: OpenSSL's texts for the verify errors seen most (x509_txt.c).
_VERIFY_ERRORS = {
    2: "unable to get issuer certificate",
    7: "certificate signature failure",
    18: "self-signed certificate",
    19: "self-signed certificate in certificate chain",
    20: "unable to get local issuer certificate",
    21: "unable to verify the first certificate",
    24: "invalid CA certificate",
    27: "certificate not trusted",
}


@dataclass(frozen=True, slots=True)
class TLSA:
    """One TLSA record (RFC 6698 section 2.1)."""

    usage: int
    selector: int
    mtype: int
    data: bytes

    @classmethod
    def from_rdata(cls, rdata: Any) -> TLSA:
        """From a dnspython TLSA rdata."""
        return cls(int(rdata.usage), int(rdata.selector), int(rdata.mtype), bytes(rdata.cert))

    @property
    def text(self) -> str:
        """Presentation form (for logs and TLS reports)."""
        return f"{self.usage} {self.selector} {self.mtype} {self.data.hex()}"


def usable_tlsa(records: Iterable[TLSA]) -> list[TLSA]:
    """
    The records an SMTP client may use (RFC 7672 section 3.1.3): usages
    DANE-TA(2) and DANE-EE(3) only (PKIX-TA(0) and PKIX-EE(1) are
    "unusable"), selectors 0 and 1, matching types 0, 1 and 2 with data of
    the right length.
    """
    usable = []
    for r in records:
        if r.usage not in (DANE_TA, DANE_EE) or r.selector not in (0, 1):
            continue
        if (r.mtype == 1 and len(r.data) != 32) or (r.mtype == 2 and len(r.data) != 64):
            continue
        if r.mtype not in (0, 1, 2) or not r.data:
            continue
        usable.append(r)
    return usable


@dataclass(frozen=True, slots=True)
class TLSFailure:
    """
    Why a certificate did not pass: *result_type* is an RFC 8460 section
    4.3 result type (``certificate-host-mismatch``, ``validation-failure``...),
    *detail* a sentence for logs and ``failure-reason-code``.
    """

    result_type: str
    detail: str

    def __str__(self) -> str:
        return f"{self.result_type}: {self.detail}"


class TLSPolicyError(Exception):
    """A certificate failed the check a policy (MTA-STS, DANE, REQUIRETLS) required."""

    def __init__(self, failure: TLSFailure) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _association(cert: x509.Certificate, selector: int) -> bytes:
    if selector == 0:
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _matches(record: TLSA, cert: x509.Certificate) -> bool:
    data = _association(cert, record.selector)
    if record.mtype == 1:
        data = hashlib.sha256(data).digest()
    elif record.mtype == 2:
        data = hashlib.sha512(data).digest()
    return data == record.data


def _names_host(cert: x509.Certificate, hostname: str) -> bool:
    from service_identity import VerificationError
    from service_identity.cryptography import verify_certificate_hostname
    from service_identity.exceptions import CertificateError

    try:
        verify_certificate_hostname(cert, hostname)
    except (VerificationError, CertificateError):
        return False
    return True


def dane_check(
    chain: Sequence[x509.Certificate], records: Sequence[TLSA], hostname: str
) -> TLSFailure | None:
    """
    Check the chain the server sent (leaf first) against the usable TLSA
    *records* of *hostname* (RFC 7672 section 3.1); ``None`` when one
    matches, else the failure.
    """
    if not chain:
        return TLSFailure("validation-failure", "the server sent no certificate")
    leaf = chain[0]
    for record in records:
        if record.usage == DANE_EE and _matches(record, leaf):
            return None  # RFC 7672 section 3.1.1: no name or date checks
    name_problem = False
    for record in records:
        if record.usage != DANE_TA:
            continue
        for anchor in chain:
            if not _matches(record, anchor):
                continue
            if not _chains_to(leaf, chain[1:], anchor):
                continue
            if not _names_host(leaf, hostname):
                name_problem = True
                continue
            return None
    if name_problem:
        return TLSFailure(
            "certificate-host-mismatch",
            f"the certificate (DANE-TA) does not name {hostname} (RFC 7672 section 3.2.2)",
        )
    return TLSFailure("validation-failure", f"no TLSA record of {hostname} matches the certificate chain")


def _chains_to(leaf: x509.Certificate, others: Sequence[x509.Certificate], anchor: x509.Certificate) -> bool:
    """Whether *leaf* verifies (signatures, dates) up to *anchor* through *others*."""
    if leaf == anchor:
        return True
    store = crypto.X509Store()
    store.add_cert(crypto.X509.from_cryptography(anchor))
    store.set_flags(crypto.X509StoreFlags.PARTIAL_CHAIN)
    intermediates = [crypto.X509.from_cryptography(c) for c in others if c != anchor]
    try:
        crypto.X509StoreContext(
            store, crypto.X509.from_cryptography(leaf), chain=intermediates
        ).verify_certificate()
    except crypto.X509StoreContextError:
        return False
    return True


def load_trust_root(pem: bytes) -> list[crypto.X509]:
    """Every certificate of a PEM file (a CA bundle)."""
    marker = b"-----BEGIN CERTIFICATE-----"
    return [crypto.load_certificate(crypto.FILETYPE_PEM, marker + part) for part in pem.split(marker)[1:]]


@implementer(IOpenSSLClientConnectionCreator)
class CheckedTLS:
    """
    The TLS client side for one MX host under a policy (see the module notes).

    Args:
        hostname: the MX host name: SNI, and the name the certificate must
            hold (PKIX, DANE-TA).
        mode: ``"pkix"``, ``"dane"`` or ``"encrypt"``.
        tlsa: the usable TLSA records (``"dane"``).
        trust_roots: CA certificates (``OpenSSL.crypto.X509``) to trust
            instead of the system's (``[outbound] ca_file``; the tests' CA).
        enforce: abort the connection when the check fails.

    Attributes:
        last_outcome: the verdict of the latest handshake: ``None`` (passed,
            or no handshake yet: see :attr:`handshakes`) or a :class:`TLSFailure`.
        handshakes: handshakes completed.
    """

    def __init__(
        self,
        hostname: str,
        *,
        mode: str = "pkix",
        tlsa: Sequence[TLSA] = (),
        trust_roots: Sequence[crypto.X509] | None = None,
        enforce: bool = True,
    ) -> None:
        if mode not in ("pkix", "dane", "encrypt"):
            raise ValueError(f"unknown mode {mode!r}")
        self.hostname = hostname.rstrip(".").lower()
        self.mode = mode
        self.tlsa = tuple(tlsa)
        self.enforce = enforce
        self.last_outcome: TLSFailure | None = None
        self.handshakes = 0
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_options(SSL.OP_NO_COMPRESSION)
        if trust_roots is None:
            ctx.set_default_verify_paths()
        else:
            store = ctx.get_cert_store()
            assert store is not None
            for cert in trust_roots:
                store.add_cert(cert)
        ctx.set_verify(SSL.VERIFY_PEER, self._verify)
        ctx.set_info_callback(self._info)
        self._ctx = ctx

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:  # noqa: N803 - Twisted API
        connection = SSL.Connection(self._ctx, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(self.hostname.encode("idna"))
        tlsProtocol._txmail_chain_errno = None
        tlsProtocol._txmail_checked = False
        return connection

    def _verify(self, connection: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        transport = connection.get_app_data()
        if not ok and getattr(transport, "_txmail_chain_errno", None) is None:
            transport._txmail_chain_errno = errno
        return True  # decided at the end of the handshake

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        transport = connection.get_app_data()
        if getattr(transport, "_txmail_checked", True):
            return
        transport._txmail_checked = True
        chain = [c.to_cryptography() for c in (connection.get_peer_cert_chain() or [])]
        failure = self.check(chain, getattr(transport, "_txmail_chain_errno", None))
        self.last_outcome = failure
        self.handshakes += 1
        if failure is not None and self.enforce:
            transport.failVerification(Failure(TLSPolicyError(failure)))

    def check(self, chain: Sequence[x509.Certificate], chain_errno: int | None) -> TLSFailure | None:
        """The verdict on a handshake's chain (leaf first); *chain_errno* the first OpenSSL chain error."""
        if self.mode == "encrypt":
            return None
        if self.mode == "dane":
            return dane_check(chain, self.tlsa, self.hostname)
        if not chain:
            return TLSFailure("validation-failure", "the server sent no certificate")
        if chain_errno is not None:
            if chain_errno in (_X509_V_ERR_CERT_HAS_EXPIRED, _X509_V_ERR_CERT_NOT_YET_VALID):
                return TLSFailure("certificate-expired", "the certificate has expired or is not valid yet")
            text = _VERIFY_ERRORS.get(chain_errno, f"OpenSSL verify error {chain_errno}")
            kind = "certificate-not-trusted" if chain_errno in _UNTRUSTED else "validation-failure"
            return TLSFailure(kind, f"certificate verification failed: {text}")
        if not _names_host(chain[0], self.hostname):
            return TLSFailure("certificate-host-mismatch", f"the certificate does not name {self.hostname}")
        return None
