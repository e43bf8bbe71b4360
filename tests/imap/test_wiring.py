"""Tests for the IMAP settings, the ``--imap`` twistd option and the service wiring."""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.pop3.test_wiring import _options
from txmail.config import load_config
from txmail.errors import ConfigError
from txmail.imap.server import IMAPFactory
from txmail.service import build_service


class IMAPSettingsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """No IMAP listener by default; 30 minutes idle (RFC 3501 section 5.4), 64 KiB lines (a maximal RFC 2971 ID fits), 50 MB literals."""
        settings = load_config(None)
        self.assertEqual(settings.imap, ())
        self.assertEqual(settings.imap_idle_timeout, 1800.0)
        self.assertEqual(settings.imap_max_line, 65536)
        self.assertEqual(settings.imap_max_literal, 50 * 1024 * 1024)

    def test_toml(self) -> None:
        """[imap] listen, idle_timeout, max_line and max_literal are read from the TOML file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[imap]\nlisten = ["tcp:1143"]\nidle_timeout = 2000\nmax_line = 16384\nmax_literal = 1000000\n'
            )
        settings = load_config(path)
        self.assertEqual(settings.imap, ("tcp:1143",))
        self.assertEqual(settings.imap_idle_timeout, 2000.0)
        self.assertEqual(settings.imap_max_line, 16384)
        self.assertEqual(settings.imap_max_literal, 1000000)

    def test_invalid(self) -> None:
        """Bad timeouts and limits, and ssl: without a certificate, are refused with a clear error."""
        self.assertRaises(ConfigError, load_config, None, {"imap_idle_timeout": -1})
        self.assertRaises(ConfigError, load_config, None, {"imap_max_literal": 0})
        self.assertRaises(ConfigError, load_config, None, {"imap_max_line": 100})
        self.assertRaises(ConfigError, load_config, None, {"imap": ["ssl:993"]})

    def test_plugin_option(self) -> None:
        """--imap is repeatable and becomes the imap setting."""
        options = _options()
        options.parseOptions(["--data-dir", self.mktemp(), "--imap", "tcp:1143", "--imap", "tcp:1144"])
        self.assertEqual(options.settings.imap, ("tcp:1143", "tcp:1144"))  # type: ignore[attr-defined]


class IMAPServiceTests(SynchronousTestCase):
    def test_imap_listeners(self) -> None:
        """Each IMAP endpoint gets a listener with role imap, sharing the server's authenticator and stores."""
        reactor = MemoryReactorClock()
        settings = load_config(
            None,
            {
                "data_dir": os.path.abspath(self.mktemp()),
                "imap": ["tcp:1143:interface=127.0.0.1"],
                "imap_idle_timeout": 3600,
                "imap_max_literal": 1000,
            },
        )
        server = build_service(settings, reactor=reactor)
        server.startService()
        self.addCleanup(server.stopService)
        (listener,) = server.listeners_for("imap")
        factory = listener.factory
        self.assertIsInstance(factory, IMAPFactory)
        self.assertEqual(factory.idle_timeout, 3600.0)  # type: ignore[attr-defined]
        self.assertEqual(factory.limits.max_literal, 1000)  # type: ignore[attr-defined]
        self.assertIs(factory.authenticator, server.authenticator)  # type: ignore[attr-defined]
        self.assertIs(factory.stores, server.stores)  # type: ignore[attr-defined]
        self.assertIn(1143, [p[0] for p in reactor.tcpServers])
