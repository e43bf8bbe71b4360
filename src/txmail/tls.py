"""
TLS contexts for the servers (pyOpenSSL through :mod:`twisted.internet.ssl`).
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from txmail.errors import ConfigError

__all__ = ["ReloadableServerTLS", "certificate_fingerprint", "server_context", "with_certificate"]


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


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    The server TLS context of every listener, whose certificate can be
    replaced while the server runs (a renewal by certbot, then ``SIGHUP``).

    Every TLS listener holds this one object: the STARTTLS/STLS of the
    SMTP, POP3 and IMAP factories (``tls_context``) and the implicit TLS of
    the ``ssl:`` endpoints.  Each new handshake asks it for a connection
    (:meth:`serverConnectionForTLS`), built from the context of the
    moment; :meth:`load` builds a new context from the files and swaps it
    in whole, so that handshakes that started keep theirs, and established
    sessions are not touched.

    Args:
        cert_path: the PEM certificate (chain) file.
        key_path: the PEM private key file.

    Raises:
        ConfigError: the files cannot be read or do not match.

    Attributes:
        cert_path, key_path: the files last loaded.
        options: the :class:`twisted.internet.ssl.CertificateOptions` in use.
    """

    def __init__(self, cert_path: str, key_path: str) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.options = server_context(cert_path, key_path)
        self.fingerprint = certificate_fingerprint(self.options)

    def load(self, cert_path: str | None = None, key_path: str | None = None) -> bool:
        """
        Read the certificate and key again (from new paths when given) and
        use them for new handshakes.  The files are read and checked before
        anything changes: on an error the current context stays.

        Returns:
            Whether the certificate changed (its SHA-256 fingerprint).

        Raises:
            ConfigError: the files cannot be read or do not match.
        """
        cert_path = cert_path or self.cert_path
        key_path = key_path or self.key_path
        options = server_context(cert_path, key_path)
        options.getContext()  # build it now: a bad key fails here, not in a handshake
        return self.use(options, cert_path, key_path)

    def use(self, options: ssl.CertificateOptions, cert_path: str, key_path: str) -> bool:
        """
        Use *options* (built by :func:`server_context` from *cert_path*
        and *key_path*) for new handshakes; whether the certificate changed.
        """
        fingerprint = certificate_fingerprint(options)
        changed = fingerprint != self.fingerprint
        self.options, self.fingerprint = options, fingerprint
        self.cert_path, self.key_path = cert_path, key_path
        return changed

    def install(self, endpoint: Any) -> bool:
        """
        Make the ``ssl:`` server *endpoint* (from
        :func:`twisted.internet.endpoints.serverFromString`) use this
        context, so that its certificate follows reloads too.  Its own
        context factory (built from the same files) is replaced; Twisted
        has no public way to give a parsed ``ssl:`` endpoint another one.
        Returns whether it was installed (``False``: not such an endpoint).
        """
        if not hasattr(endpoint, "_sslContextFactory"):
            return False
        endpoint._sslContextFactory = self
        return True

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        """A connection for one new handshake, from the current context."""
        return self.options.serverConnectionForTLS(protocol)

    def getContext(self) -> SSL.Context:
        """The current context (for code that asks the older interface)."""
        return self.options.getContext()


def certificate_fingerprint(options: ssl.CertificateOptions) -> str:
    """The SHA-256 fingerprint (hex) of the server certificate of *options*."""
    certificate = options.certificate
    if certificate is None:
        raise ConfigError("no server certificate")
    return str(certificate.digest("sha256").decode("ascii"))
