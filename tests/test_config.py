"""Tests for txmail.config: TOML plus overrides into validated Settings."""

from __future__ import annotations

import os
from typing import get_args

from twisted.trial.unittest import SynchronousTestCase

from txmail.auth.sasl import PlaintextPolicy
from txmail.config import Settings, load_config, parse_host_port
from txmail.errors import ConfigError
from txmail.smtp.client import TLSPolicy


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
        """
        Overrides replace file values and None leaves them; an empty list
        is a value (no listener of that kind), not "not given": an embedder's
        or a test's ``{"submission": []}`` used to listen on the default
        127.0.0.1:2587 (the twistd plugin passes None for an option not given).
        """
        path = self.write(
            '[server]\nhostname = "a.test"\ndomains = ["a.test"]\n[smtp]\nlisten = ["tcp:25"]\n'
        )
        s = load_config(path, {"hostname": "b.test", "domains": None, "data_dir": None, "submission": []})
        self.assertEqual(s.hostname, "b.test")
        self.assertEqual(s.domains, ("a.test",))
        self.assertEqual(s.data_dir, Settings().data_dir)
        self.assertEqual((s.smtp, s.submission), (("tcp:25",), ()))
        self.assertEqual(load_config(path, {"smtp": (), "submission": None}).smtp, ())
        self.assertEqual(load_config(None, {"submission": None}).submission, Settings().submission)
        with self.assertRaisesRegex(ConfigError, "domains"):
            load_config(path, {"domains": []})

    def test_errors_name_the_problem(self) -> None:
        """Invalid files and values raise ConfigError saying which key and why."""
        cases = [
            ("[server]\nbogus = 1\n", "bogus"),
            ('[server]\nplaintext_auth = "sometimes"\n', "plaintext_auth"),
            ("[smtp]\nmax_recipients = 0\n", "max_recipients"),
            ("[smtp]\nlisten = [1]\n", "smtp"),
            ("[server]\ndomains = []\n", "domains"),
            ('[tls]\ncert = "/nonexistent.pem"\n', "together"),
            ('[tls]\ncert = "/nonexistent.pem"\nkey = "/nonexistent.key"\n', "does not exist"),
            ('[smtp]\nsubmission = ["ssl:465"]\n', "certificate"),
            ("not toml at all [", "not valid TOML"),
            ("x = 1\n", "must be a table"),
            ("[server]\ngc_threshold = [0]\n", "gc_threshold"),
            ("[server]\ngc_threshold = [1, 2, 3, 4]\n", "gc_threshold"),
            ('[server]\ngc_threshold = "700"\n', "gc_threshold"),
            ("[server]\nworkers = 0\n", "workers"),
            ('[server]\nworkers = "auto"\n', "workers"),
            ("[server]\nworkers = true\n", "workers"),
        ]
        for text, needle in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)

    def test_gc_threshold(self) -> None:
        """``[server] gc_threshold``: a default tuned for a server, a list of up to three, or ``[]``."""
        self.assertEqual(load_config(None).gc_threshold, (100_000, 50, 100))
        self.assertEqual(
            load_config(self.write("[server]\ngc_threshold = [5000, 20]\n")).gc_threshold, (5000, 20)
        )
        self.assertEqual(load_config(self.write("[server]\ngc_threshold = []\n")).gc_threshold, ())

    def test_workers(self) -> None:
        """``[server] workers``: unset (the plugin's number of CPUs), or a count; 1 is one process."""
        self.assertIsNone(load_config(None).workers)
        self.assertEqual(load_config(self.write("[server]\nworkers = 3\n")).workers, 3)
        self.assertEqual(load_config(None, {"workers": 1}).workers, 1)

    def test_missing_file(self) -> None:
        """A config path that does not exist is a ConfigError, not an OSError."""
        with self.assertRaises(ConfigError) as cm:
            load_config("/nonexistent/txmail.toml")
        self.assertIn("cannot read", str(cm.exception))


class OutboundConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """By default the queue runs: system resolvers, port 25, opportunistic TLS, 5 days."""
        s = load_config(None)
        self.assertTrue(s.outbound_enabled)
        self.assertEqual(s.resolvers, ())
        self.assertEqual(s.relay_port, 25)
        self.assertIsNone(s.smarthost)
        self.assertEqual(s.outbound_tls_policy, "opportunistic")
        self.assertEqual(s.give_up_after, 5 * 86400)
        self.assertEqual(s.delay_notice_after, 4 * 3600)

    def test_outbound_table(self) -> None:
        """Every [outbound] key reaches the settings; durations take units."""
        s = load_config(
            self.write(
                '[outbound]\nenabled = false\nresolvers = ["127.0.0.1:5353", "[::1]:53"]\nrelay_port = 2525\n'
                'smarthost = "relay.test:587"\nsmarthost_user = "me"\nsmarthost_password = "pw"\n'
                'tls_policy = "verify"\nretry_schedule = "1m,2m"\ngive_up_after = "2d"\n'
                'delay_notice_after = "never"\npoll_interval = 5\ntimeout = "1m"\n'
                '[outbound.tls_policies]\n"Bank.Test" = "verify"\n"old.test" = "none"\n'
            )
        )
        self.assertFalse(s.outbound_enabled)
        self.assertEqual(s.resolvers, ("127.0.0.1:5353", "[::1]:53"))
        self.assertEqual(s.relay_port, 2525)
        self.assertEqual(
            (s.smarthost, s.smarthost_user, s.smarthost_password), ("relay.test:587", "me", "pw")
        )
        self.assertNotIn("pw", repr(s))
        self.assertEqual(s.outbound_tls_policy, "verify")
        self.assertEqual(s.retry_schedule, "1m,2m")
        self.assertEqual(s.give_up_after, 2 * 86400)
        self.assertIsNone(s.delay_notice_after)
        self.assertEqual((s.queue_poll_interval, s.outbound_timeout), (5.0, 60.0))
        self.assertEqual(dict(s.outbound_tls_policies), {"bank.test": "verify", "old.test": "none"})

    def test_host_port(self) -> None:
        """HOST:PORT parsing, IPv6 in brackets, default ports."""
        self.assertEqual(parse_host_port("127.0.0.1:53"), ("127.0.0.1", 53))
        self.assertEqual(parse_host_port("[::1]:5353"), ("::1", 5353))
        self.assertEqual(parse_host_port("ns.test", 53), ("ns.test", 53))
        for bad in ("ns.test", ":53", "host:0", "host:x", "[::1]x"):
            self.assertRaises(ConfigError, parse_host_port, bad)

    def test_outbound_errors(self) -> None:
        """Bad outbound values name the key."""
        cases = [
            ('[outbound]\ntls_policy = "maybe"\n', "tls_policy"),
            ('[outbound]\nretry_schedule = "5x"\n', "retry_schedule"),
            ("[outbound]\nrelay_port = 70000\n", "relay_port"),
            ('[outbound]\nresolvers = ["a:b"]\n', "port"),
            ('[outbound]\nsmarthost_user = "me"\n', "together"),
            ('[outbound.tls_policies]\n"x.test" = "sometimes"\n', "x.test"),
            ('[outbound]\ngive_up_after = "soon"\n', "give_up_after"),
            ('[outbound]\nenabled = "yes"\n', "enabled"),
        ]
        for text, needle in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)

    def test_policies_typed(self) -> None:
        """
        ``plaintext_auth`` and the TLS policies take every value of their
        ``Literal`` type and nothing else; an error names the setting.
        """
        for value in get_args(PlaintextPolicy):
            self.assertEqual(
                load_config(self.write(f'[server]\nplaintext_auth = "{value}"\n')).plaintext_auth, value
            )
        for value in get_args(TLSPolicy):
            s = load_config(
                self.write(
                    f'[outbound]\ntls_policy = "{value}"\n[outbound.tls_policies]\n"x.test" = "{value}"\n'
                )
            )
            self.assertEqual((s.outbound_tls_policy, s.outbound_tls_policies), (value, (("x.test", value),)))
        cases = [
            ("[server]\nplaintext_auth = 1\n", "plaintext_auth"),
            ('[server]\nplaintext_auth = "Always"\n', "plaintext_auth"),
            ('[outbound]\ntls_policy = "VERIFY"\n', "tls_policy"),
            ('[outbound.tls_policies]\n"x.test" = "dane"\n', "[outbound.tls_policies] x.test"),
            ('[outbound.tls_policies]\n"x.test" = 1\n', "[outbound.tls_policies] x.test"),
        ]
        for text, needle in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)


class FilterConfigTests(SynchronousTestCase):
    """``[[milter]]`` and ``[rspamd]`` reach the settings, checked."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_milters_and_rspamd(self) -> None:
        """Two [[milter]] entries keep their order and keys; [rspamd] gives RspamdSettings; none by default."""
        s = load_config(
            self.write(
                '[[milter]]\naddress = "inet:127.0.0.1:8891"\nlisteners = ["submission"]\n'
                '[[milter]]\naddress = "unix:/run/rspamd/milter.sock"\ndefault_action = "accept"\n'
                "content_timeout = 60\n"
                '[rspamd]\nurl = "http://127.0.0.1:11333"\npassword = "pw"\nfail_action = "tempfail"\n'
                'timeout = "30s"\n'
            )
        )
        self.assertEqual(
            [m.address for m in s.milters], ["inet:127.0.0.1:8891", "unix:/run/rspamd/milter.sock"]
        )
        self.assertEqual(s.milters[0].listeners, ("submission",))
        self.assertEqual((s.milters[1].default_action, s.milters[1].content_timeout), ("accept", 60.0))
        assert s.rspamd is not None
        self.assertEqual(
            (s.rspamd.password, s.rspamd.fail_action, s.rspamd.timeout), ("pw", "tempfail", 30.0)
        )
        default = load_config(None)
        self.assertEqual((default.milters, default.rspamd), ((), None))

    def test_errors(self) -> None:
        """Bad entries raise ConfigError naming the problem."""
        cases = [
            ('[[milter]]\nlisteners = ["mta"]\n', "address is required"),
            ('[[milter]]\naddress = "inet:127.0.0.1"\n', "bad address"),
            ('[[milter]]\naddress = "inet:127.0.0.1:1"\nbogus = 1\n', "bogus"),
            ('[[milter]]\naddress = "inet:127.0.0.1:1"\ndefault_action = "shrug"\n', "default_action"),
            ('[rspamd]\nurl = "ftp://x"\n', "http://"),
            ('[rspamd]\nfail_action = "maybe"\n', "fail_action"),
            ("[rspamd]\nbogus = 1\n", "bogus"),
        ]
        for text, needle in cases:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)

    def test_validated_in_code(self) -> None:
        """Embedders pass the tables as mappings to Settings.validated."""
        s = Settings.validated(milters=[{"address": "inet:127.0.0.1:8891"}], rspamd={"learn": False})
        self.assertEqual(s.milters[0].listeners, ("mta", "submission"))
        assert s.rspamd is not None
        self.assertFalse(s.rspamd.learn)


class QuotaConfigTests(SynchronousTestCase):
    def test_quota_table(self) -> None:
        """[quota] storage and [quota.users] become sizes in octets (None: no limit)."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                '[quota]\nstorage = "1G"\n[quota.users]\n"Boss@Example.Test" = "10G"\n"x@example.test" = "none"\n'
            )
        s = load_config(path)
        self.assertEqual(s.quota_storage, 1024**3)
        self.assertEqual(s.quota_users, (("boss@example.test", 10 * 1024**3), ("x@example.test", None)))
        self.assertIsNone(load_config(None).quota_storage)
        with open(path, "w") as f:
            f.write('[quota]\nstorage = "lots"\n')
        with self.assertRaises(ConfigError) as cm:
            load_config(path)
        self.assertIn("quota storage", str(cm.exception))


class StoreConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_backend(self) -> None:
        """[store] backend chooses the mail store; Maildir by default."""
        self.assertEqual(load_config(None).store_backend, "maildir")
        self.assertEqual(load_config(self.write('[store]\nbackend = "memory"\n')).store_backend, "memory")
        self.assertEqual(load_config(self.write('[store]\nbackend = "maildir"\n')).store_backend, "maildir")
        self.assertEqual(Settings.validated(store_backend="memory").store_backend, "memory")

    def test_postgresql_needs_dsn(self) -> None:
        """The "postgresql" backend without a [postgresql] dsn is refused with a clear error."""
        with self.assertRaises(ConfigError) as cm:
            load_config(self.write('[store]\nbackend = "postgresql"\n'))
        self.assertEqual(
            str(cm.exception),
            '[store] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)',
        )

    def test_unknown_backends(self) -> None:
        """Any other value names the allowed ones; so do unknown keys of [store]."""
        for value in ('"mbox"', '""', "1", '["maildir"]', '"Maildir"'):
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(f"[store]\nbackend = {value}\n"))
            self.assertIn('[store] backend must be "maildir" or "memory"', str(cm.exception), value)
        with self.assertRaises(ConfigError) as cm:
            load_config(self.write('[store]\ndsn = "postgresql://db/mail"\n'))
        self.assertIn("unknown key 'dsn' in [store]", str(cm.exception))


class PostgresConfigTests(SynchronousTestCase):
    """[directory] backend and [postgresql]."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """The file directory by default; no DSN; a pool of 1 to 10 connections."""
        settings = load_config(None)
        self.assertEqual(settings.directory_backend, "file")
        self.assertEqual(
            (
                settings.postgresql_dsn,
                settings.postgresql_min_connections,
                settings.postgresql_max_connections,
            ),
            ("", 1, 10),
        )

    def test_postgresql_directory(self) -> None:
        """The keys are read; the DSN, which may hold a password, is not in the settings' repr."""
        settings = load_config(
            self.write(
                '[directory]\nbackend = "postgresql"\n\n'
                '[postgresql]\ndsn = "postgresql://txmail:s3cret@db/mail"\nmin_connections = 2\nmax_connections = 20\n'
            )
        )
        self.assertEqual(settings.directory_backend, "postgresql")
        self.assertEqual(settings.postgresql_dsn, "postgresql://txmail:s3cret@db/mail")
        self.assertEqual((settings.postgresql_min_connections, settings.postgresql_max_connections), (2, 20))
        self.assertNotIn("s3cret", repr(settings))

    def test_postgresql_needs_dsn(self) -> None:
        """backend = "postgresql" without a DSN (or with an empty one) is a clear error."""
        for text in (
            '[directory]\nbackend = "postgresql"\n',
            '[directory]\nbackend = "postgresql"\n[postgresql]\ndsn = " "\n',
        ):
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertEqual(
                str(cm.exception),
                '[directory] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)',
            )

    def test_invalid(self) -> None:
        """Unknown backends, bad pool bounds and unknown keys are refused."""
        cases = {
            '[directory]\nbackend = "ldap"\n': '[directory] backend must be "file" or "postgresql"',
            "[postgresql]\ndsn = 5\n": "[postgresql] dsn must be a string",
            "[postgresql]\nmax_connections = 0\n": "postgresql_max_connections must be a positive integer",
            "[postgresql]\nmin_connections = 5\nmax_connections = 2\n": "min_connections must not exceed max_connections",
            '[postgresql]\nhost = "db"\n': "unknown key 'host' in [postgresql]",
        }
        for text, message in cases.items():
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(message, str(cm.exception), text)

    def test_store_with_dsn(self) -> None:
        """With a DSN the PostgreSQL store is accepted."""
        settings = load_config(
            self.write('[store]\nbackend = "postgresql"\n[postgresql]\ndsn = "dbname=mail"\n')
        )
        self.assertEqual((settings.store_backend, settings.postgresql_dsn), ("postgresql", "dbname=mail"))


class QueueConfigTests(SynchronousTestCase):
    """[queue] backend and lease."""

    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults(self) -> None:
        """The file queue by default, with a lease of 15 minutes."""
        settings = load_config(None)
        self.assertEqual((settings.queue_backend, settings.queue_lease), ("file", 900.0))

    def test_maildrop_lease(self) -> None:
        """[store] maildrop_lease: two minutes by default, a positive duration."""
        self.assertEqual(load_config(None).store_maildrop_lease, 120.0)
        self.assertEqual(
            load_config(self.write('[store]\nmaildrop_lease = "30s"\n')).store_maildrop_lease, 30.0
        )
        self.assertEqual(
            load_config(self.write("[store]\nmaildrop_lease = 600\n")).store_maildrop_lease, 600.0
        )
        for text, message in {
            "[store]\nmaildrop_lease = 0\n": "[store] maildrop_lease must be positive",
            '[store]\nmaildrop_lease = "later"\n': "[store] maildrop_lease",
            "[store]\nmaildrop_lease = true\n": "[store] maildrop_lease must be a duration",
        }.items():
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(message, str(cm.exception))

    def test_postgresql_queue(self) -> None:
        """backend = "postgresql" with a DSN, and a lease as a duration."""
        settings = load_config(
            self.write('[queue]\nbackend = "postgresql"\nlease = "2m"\n[postgresql]\ndsn = "dbname=mail"\n')
        )
        self.assertEqual((settings.queue_backend, settings.queue_lease), ("postgresql", 120.0))
        self.assertEqual(load_config(self.write("[queue]\nlease = 45\n")).queue_lease, 45.0)

    def test_invalid(self) -> None:
        """No DSN, an unknown backend, a lease that is no positive duration: clear errors."""
        cases = {
            '[queue]\nbackend = "postgresql"\n': (
                '[queue] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)'
            ),
            '[queue]\nbackend = "redis"\n': '[queue] backend must be "file" or "postgresql", not \'redis\'',
            "[queue]\nlease = 0\n": "[queue] lease must be positive",
            '[queue]\nlease = "soon"\n': "[queue] lease",
            "[queue]\nclaims = 3\n": "unknown key 'claims' in [queue]",
        }
        for text, message in cases.items():
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(message, str(cm.exception), text)


class TransportSecurityConfigTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_defaults_and_tables(self) -> None:
        """MTA-STS is enforced by default, DANE and reports are off; [mta_sts] reaches the settings."""
        s = load_config(None)
        self.assertEqual((s.outbound_mta_sts, s.outbound_dane, s.outbound_tls_reports), (True, False, False))
        self.assertIsNone(s.mta_sts_mode)
        s = load_config(
            self.write(
                "[outbound]\nmta_sts = false\ndane = true\ntls_reports = true\n"
                '[mta_sts]\nmode = "enforce"\nmx = ["mx1.example.test", "*.example.test"]\nmax_age = 86400\n'
            )
        )
        self.assertEqual((s.outbound_mta_sts, s.outbound_dane, s.outbound_tls_reports), (False, True, True))
        self.assertEqual(
            (s.mta_sts_mode, s.mta_sts_mx, s.mta_sts_max_age),
            ("enforce", ("mx1.example.test", "*.example.test"), 86400),
        )

    def test_errors(self) -> None:
        """Bad values name the key."""
        for text, needle in [
            ('[outbound]\ndane = "yes"\n', "dane"),
            ('[mta_sts]\nmode = "strict"\n', "mode"),
            ('[mta_sts]\nmx = ["a b"]\n', "mx"),
            ("[mta_sts]\nmax_age = 31557601\n", "max_age"),
        ]:
            with self.assertRaises(ConfigError) as cm:
                load_config(self.write(text))
            self.assertIn(needle, str(cm.exception), text)
