"""Tests for txmail.tls: server contexts and ssl: endpoint completion."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests._certs import make_certificate
from txmail.errors import ConfigError
from txmail.tls import server_context, with_certificate


class ServerContextTests(SynchronousTestCase):
    def test_good_pair(self) -> None:
        """A matching certificate and key give a usable OpenSSL context."""
        _, cert, key = make_certificate(self.mktemp())
        ctx = server_context(cert, key)
        self.assertIsNotNone(ctx.getContext())

    def test_bad_files_are_config_errors(self) -> None:
        """Missing files, garbage and a key of another certificate are ConfigErrors."""
        _, cert, key = make_certificate(self.mktemp())
        _, _, other_key = make_certificate(self.mktemp())
        garbage = self.mktemp()
        with open(garbage, "w") as f:
            f.write("not a pem file")
        for c, k in [("/nonexistent.pem", key), (cert, "/nonexistent.key"), (garbage, key), (cert, other_key)]:
            self.assertRaises(ConfigError, server_context, c, k)


class WithCertificateTests(SynchronousTestCase):
    def test_ssl_endpoint_completed(self) -> None:
        """An ssl: endpoint without a key gets the configured files, with : and = escaped."""
        self.assertEqual(
            with_certificate("ssl:465", "/etc/a:b/cert.pem", "/etc/k=ey.pem"),
            "ssl:465:privateKey=/etc/k\\=ey.pem:certKey=/etc/a\\:b/cert.pem",
        )

    def test_other_endpoints_untouched(self) -> None:
        """tcp: endpoints, ssl: endpoints naming their own key, and no certificate leave it as is."""
        self.assertEqual(with_certificate("tcp:587", "c", "k"), "tcp:587")
        self.assertEqual(with_certificate("ssl:465:privateKey=x", "c", "k"), "ssl:465:privateKey=x")
        self.assertEqual(with_certificate("ssl:465", None, None), "ssl:465")
