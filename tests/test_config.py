"""Tests for txmail.config: TOML plus overrides into validated Settings."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from txmail.config import Settings, load_config
from txmail.errors import ConfigError


class LoadConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults_are_the_embedded_server(self) -> None:
        """With no file and no overrides the settings describe the embedded default."""
        s = load_config(None)
        self.assertEqual(s.data_dir, "./txmail-data")
        self.assertEqual(s.domains, ("localhost",))
        self.assertEqual(s.smtp, ("tcp:2525:interface=127.0.0.1",))
        self.assertEqual(s.submission, ("tcp:2587:interface=127.0.0.1",))
        self.assertEqual(s.plaintext_auth, "loopback")
        self.assertFalse(s.tls_enabled)
        self.assertEqual(s.max_recipients, 100)

    def test_file_values(self) -> None:
        """Keys from every table of the TOML file reach the settings."""
        path = self.write(
            '[server]\nhostname = "mx.example.test"\ndomains = ["Example.Test", "other.test"]\n'
            'data_dir = "/srv/mail"\nplaintext_auth = "never"\n'
            '[smtp]\nlisten = ["tcp:25"]\nsubmission = "tcp:587"\nmax_recipients = 7\n'
            "command_timeout = 30\n"
        )
        s = load_config(path)
        self.assertEqual(s.hostname, "mx.example.test")
        self.assertEqual(s.domains, ("example.test", "other.test"))
        self.assertEqual(s.primary_domain, "example.test")
        self.assertEqual(s.data_dir, "/srv/mail")
        self.assertEqual(s.smtp, ("tcp:25",))
        self.assertEqual(s.submission, ("tcp:587",))
        self.assertEqual(s.max_recipients, 7)
        self.assertEqual(s.command_timeout, 30.0)
        self.assertEqual(s.path("users.json"), os.path.join("/srv/mail", "users.json"))

    def test_overrides_win_and_none_is_ignored(self) -> None:
        """Command-line overrides replace file values; None and empty lists leave them."""
        path = self.write('[server]\nhostname = "a.test"\ndomains = ["a.test"]\n')
        s = load_config(path, {"hostname": "b.test", "domains": [], "data_dir": None})
        self.assertEqual(s.hostname, "b.test")
        self.assertEqual(s.domains, ("a.test",))
        self.assertEqual(s.data_dir, Settings().data_dir)

    def test_errors_name_the_problem(self) -> None:
        """Invalid files and values raise ConfigError saying which key and why."""
        cases = [
            ("[server]\nbogus = 1\n", "bogus"),
            ("[server]\nplaintext_auth = \"sometimes\"\n", "plaintext_auth"),
            ("[smtp]\nmax_recipients = 0\n", "max_recipients"),
            ("[smtp]\nlisten = [1]\n", "smtp"),
            ("[server]\ndomains = []\n", "domains"),
            ('[tls]\ncert = "/nonexistent.pem"\n', "together"),
            ('[tls]\ncert = "/nonexistent.pem"\nkey = "/nonexistent.key"\n', "does not exist"),
            ('[smtp]\nsubmission = ["ssl:465"]\n', "certificate"),
            ("not toml at all [", "not valid TOML"),
            ("x = 1\n", "must be a table"),
        ]
        for text, needle in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)

    def test_missing_file(self) -> None:
        """A config path that does not exist is a ConfigError, not an OSError."""
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/txmail.toml")
        self.assertIn("cannot read", str(cm.exception))
