"""Tests for the twistd plugin and txmail.service wiring."""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txmail.config import load_config
from txmail.service import MailServer, build_service


def _maker() -> object:
    import twisted.plugins

    for plugin in getPlugins(IServiceMaker, twisted.plugins):
        if getattr(plugin, "tapname", None) == "mailserver":
            return plugin
    raise AssertionError("mailserver plugin not found")


class PluginTests(SynchronousTestCase):
    def test_plugin_is_discoverable(self) -> None:
        """twistd finds a 'mailserver' IServiceMaker plugin."""
        maker = _maker()
        self.assertTrue(IPlugin.providedBy(maker))
        self.assertTrue(IServiceMaker.providedBy(maker))

    def test_options_override_defaults(self) -> None:
        """Command-line options become settings; repeatable options accumulate."""
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        data_dir = self.mktemp()
        options.parseOptions(
            [
                "--data-dir", data_dir,
                "--hostname", "mx.example.test",
                "--domain", "example.test",
                "--domain", "other.test",
                "--smtp", "tcp:0:interface=127.0.0.1",
                "--submission", "tcp:0:interface=127.0.0.1",
                "--submission", "tcp:0:interface=127.0.0.1",
                "--plaintext-auth", "never",
            ]
        )
        s = options.settings
        self.assertEqual(s.data_dir, data_dir)
        self.assertEqual(s.domains, ("example.test", "other.test"))
        self.assertEqual(len(s.submission), 2)
        self.assertEqual(s.plaintext_auth, "never")

    def test_bad_options_are_usage_errors(self) -> None:
        """Invalid values are reported as usage errors, not tracebacks."""
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        self.assertRaises(usage.UsageError, options.parseOptions, ["--plaintext-auth", "maybe"])
        options = maker.options()  # type: ignore[attr-defined]
        self.assertRaises(usage.UsageError, options.parseOptions, ["--tls-cert", "/nonexistent"])

    def test_make_service(self) -> None:
        """makeService gives a MailServer with the data directory created."""
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        data_dir = self.mktemp()
        options.parseOptions(["--data-dir", data_dir])
        service = maker.makeService(options)  # type: ignore[attr-defined]
        self.assertIsInstance(service, MailServer)
        self.assertTrue(os.path.isdir(data_dir))


class BuildServiceTests(SynchronousTestCase):
    def test_listens_on_configured_endpoints(self) -> None:
        """Each configured endpoint is listened on, with its role, when the service starts."""
        reactor = MemoryReactorClock()
        settings = load_config(
            None,
            {
                "data_dir": self.mktemp(),
                "smtp": ["tcp:2525:interface=127.0.0.1"],
                "submission": ["tcp:2587:interface=127.0.0.1", "tcp:2588"],
            },
        )
        server = build_service(settings, reactor=reactor)
        server.startService()
        self.addCleanup(server.stopService)
        ports = sorted((p[0], p[3]) for p in reactor.tcpServers)
        self.assertEqual(ports, [(2525, "127.0.0.1"), (2587, "127.0.0.1"), (2588, "")])
        self.assertEqual([lst.role for lst in server.listeners], ["mta", "submission", "submission"])
        self.assertTrue(os.path.isdir(os.path.join(settings.data_dir, "spool")))
        self.assertTrue(os.path.isdir(os.path.join(settings.data_dir, "queue")))

    def test_stop_twice(self) -> None:
        """Stopping a started server twice is harmless (a test may stop it before its cleanup does)."""
        reactor = MemoryReactorClock()
        settings = load_config(None, {"data_dir": self.mktemp()})
        server = build_service(settings, reactor=reactor)
        server.startService()
        server.stopService()
        server.stopService()
        self.assertFalse(server.running)
