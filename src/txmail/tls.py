"""
TLS contexts for the servers (pyOpenSSL through :mod:`twisted.internet.ssl`).
"""

from __future__ import annotations

from twisted.internet import ssl

from txmail.errors import ConfigError

__all__ = ["server_context", "with_certificate"]


def server_context(cert_path: str, key_path: str) -> ssl.CertificateOptions:
    """
    Build a server TLS context from PEM files: *cert_path* holds the
    certificate followed by any intermediates, *key_path* the private key.
    TLS 1.2 is the minimum version.

    Raises:
        ConfigError: a file cannot be read or does not hold what it should.
    """
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
        private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
        chain = [c.original for c in _load_chain(cert_pem)[1:]]
    except OSError as e:
        raise ConfigError(f"cannot read TLS file: {e}") from None
    except Exception as e:  # OpenSSL errors: bad PEM, key mismatch
        raise ConfigError(f"invalid TLS certificate or key: {e}") from None
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


def _load_chain(pem: bytes) -> list[ssl.Certificate]:
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = [marker + p for p in pem.split(marker)[1:]]
    return [ssl.Certificate.loadPEM(p) for p in parts]


def with_certificate(endpoint: str, cert_path: str | None, key_path: str | None) -> str:
    """
    Complete an ``ssl:`` endpoint string with the configured certificate and
    key when it names none, so ``--submission ssl:465`` works with
    ``--tls-cert``/``--tls-key``.  Other endpoint strings are returned as
    they are.
    """
    if not endpoint.startswith("ssl:") or "privateKey=" in endpoint or cert_path is None:
        return endpoint

    def esc(path: str) -> str:
        return path.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")

    return f"{endpoint}:privateKey={esc(key_path or cert_path)}:certKey={esc(cert_path)}"
