"""Tests for the POP3 settings, the ``--pop3`` twistd option and the service wiring."""

from __future__ import annotations

import os

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txmail.config import load_config
from txmail.errors import ConfigError
from txmail.pop3.server import POP3Factory
from txmail.service import build_service


def _options() -> usage.Options:
    import twisted.plugins

    for plugin in getPlugins(IServiceMaker, twisted.plugins):
        if getattr(plugin, "tapname", None) == "mailserver":
            return plugin.options()  # type: ignore[attr-defined,no-any-return]
    raise AssertionError("mailserver plugin not found")


class POP3SettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """By default there is no POP3 listener and the idle timeout is 600 seconds."""
        settings = load_config(None)
        self.assertEqual(settings.pop3, ())
        self.assertEqual(settings.pop3_idle_timeout, 600.0)

    def test_toml(self) -> None:
        """[pop3] listen and idle_timeout are read from the TOML file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[pop3]\nlisten = ["tcp:1110"]\nidle_timeout = 900\n')
        settings = load_config(path)
        self.assertEqual(settings.pop3, ("tcp:1110",))
        self.assertEqual(settings.pop3_idle_timeout, 900.0)

    def test_invalid(self) -> None:
        """A non-positive idle timeout and an ssl: endpoint without a certificate are refused."""
        self.assertRaises(ConfigError, load_config, None, {"pop3_idle_timeout": 0})
        self.assertRaises(ConfigError, load_config, None, {"pop3": ["ssl:995"]})

    def test_plugin_option(self) -> None:
        """--pop3 is repeatable and becomes the pop3 setting."""
        options = _options()
        options.parseOptions(["--data-dir", self.mktemp(), "--pop3", "tcp:1110", "--pop3", "tcp:1111"])
        self.assertEqual(options.settings.pop3, ("tcp:1110", "tcp:1111"))  # type: ignore[attr-defined]


class POP3ServiceTests(SynchronousTestCase):
    def test_pop3_listeners_share_locks(self) -> None:
        """Each POP3 endpoint gets a listener with role pop3; all share one lock registry."""
        reactor = MemoryReactorClock()
        settings = load_config(
            None,
            {
                "data_dir": os.path.abspath(self.mktemp()),
                "pop3": ["tcp:1110:interface=127.0.0.1", "tcp:1111"],
                "pop3_idle_timeout": 120,
            },
        )
        server = build_service(settings, reactor=reactor)
        server.startService()
        self.addCleanup(server.stopService)
        listeners = server.listeners_for("pop3")
        self.assertEqual(len(listeners), 2)
        factories = [lst.factory for lst in listeners]
        self.assertTrue(all(isinstance(f, POP3Factory) for f in factories))
        self.assertIs(factories[0].locks, factories[1].locks)  # type: ignore[attr-defined]
        self.assertEqual(factories[0].idle_timeout, 120.0)  # type: ignore[attr-defined]
        self.assertIs(factories[0].authenticator, server.authenticator)  # type: ignore[attr-defined]
        ports = sorted(p[0] for p in reactor.tcpServers)
        self.assertIn(1110, ports)
        self.assertIn(1111, ports)
