"""ManageSieve wired into the server: the ``[managesieve]`` table, ``--managesieve``, and the listener build_service makes."""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_plugin import _maker
from txmail.config import load_config
from txmail.errors import ConfigError
from txmail.managesieve.server import ManageSieveFactory
from txmail.service import build_service


class ConfigTests(SynchronousTestCase):
    def load(self, text: str) -> object:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return load_config(path, {"data_dir": self.mktemp()})

    def test_defaults_off(self) -> None:
        """Without the table there is no ManageSieve listener; the limits have their defaults."""
        settings = load_config(None, {"data_dir": self.mktemp()})
        self.assertEqual(settings.managesieve, ())
        self.assertEqual(
            (
                settings.managesieve_idle_timeout,
                settings.managesieve_max_script_size,
                settings.managesieve_max_scripts,
                settings.managesieve_max_line,
            ),
            (1800.0, 1048576, 32, 8192),
        )

    def test_table(self) -> None:
        """Every [managesieve] key reaches its setting; durations may be strings."""
        settings = self.load(
            '[managesieve]\nlisten = ["tcp:4190"]\nidle_timeout = "5m"\nmax_script_size = 65536\n'
            "max_scripts = 5\nmax_line = 4096\n"
        )
        self.assertEqual(settings.managesieve, ("tcp:4190",))  # type: ignore[attr-defined]
        self.assertEqual(settings.managesieve_idle_timeout, 300.0)  # type: ignore[attr-defined]
        self.assertEqual(settings.managesieve_max_script_size, 65536)  # type: ignore[attr-defined]
        self.assertEqual(settings.managesieve_max_scripts, 5)  # type: ignore[attr-defined]
        self.assertEqual(settings.managesieve_max_line, 4096)  # type: ignore[attr-defined]

    def test_errors(self) -> None:
        """Bad values are refused with the key named; ssl: needs a certificate."""
        for text, message in (
            (
                "[managesieve]\nmax_scripts = 0\n",
                "[managesieve] max_scripts must be an integer of at least 1",
            ),
            ("[managesieve]\nmax_script_size = true\n", "[managesieve] max_script_size must be an integer"),
            ("[managesieve]\nmax_line = 10\n", "[managesieve] max_line must be an integer of at least 1024"),
            ("[managesieve]\nlisten = 4190\n", "[managesieve] listen must be a list of strings"),
            ("[managesieve]\nidle_timeout = -1\n", "[managesieve] idle_timeout must be positive"),
            ('[managesieve]\nlisten = ["ssl:4190"]\n', "needs a TLS certificate"),
            ("[managesieve]\nport = 4190\n", "unknown key 'port' in [managesieve]"),
            (
                '[server]\nplaintext_auth = "never"\n[managesieve]\nlisten = ["tcp:4190"]\n',
                "[managesieve] listen endpoint 'tcp:4190' could log nobody in",
            ),
        ):
            error = self.assertRaises(ConfigError, self.load, text)
            self.assertIn(message, str(error))


class ServiceTests(SynchronousTestCase):
    def test_listener(self) -> None:
        """build_service makes one ManageSieve listener per endpoint with the configured limits."""
        settings = load_config(
            None,
            {
                "data_dir": self.mktemp(),
                "managesieve": ["tcp:4190:interface=127.0.0.1"],
                "managesieve_max_scripts": 7,
                "managesieve_max_script_size": 4096,
                "managesieve_idle_timeout": 60,
                "plaintext_auth": "always",
            },
        )
        server = build_service(settings, reactor=MemoryReactorClock())
        (listener,) = server.listeners_for("managesieve")
        factory = listener.factory
        self.assertIsInstance(factory, ManageSieveFactory)
        self.assertEqual(
            (factory.max_scripts, factory.max_script_size, factory.idle_timeout, factory.plaintext_auth),
            (7, 4096, 60.0, "always"),
        )
        self.assertIs(factory.authenticator, server.authenticator)
        self.assertIs(factory.stores, server.stores)
        self.assertEqual(factory.run_blocking, server.run_blocking)


class PluginTests(SynchronousTestCase):
    def test_option(self) -> None:
        """--managesieve ENDPOINT (repeatable) becomes [managesieve] listen."""
        options = _maker().options()  # type: ignore[attr-defined]
        options.parseOptions(
            ["--data-dir", self.mktemp(), "--managesieve", "tcp:4190", "--managesieve", "tcp:4191"]
        )
        self.assertEqual(options.settings.managesieve, ("tcp:4190", "tcp:4191"))
