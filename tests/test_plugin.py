"""Tests for the twistd plugin and txmail.service wiring."""

from __future__ import annotations

import gc
import os

from twisted.application.service import IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin, getPlugins
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txmail.config import Settings, load_config
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

    def test_options_not_given_keep_file_and_defaults(self) -> None:
        """A repeatable option not given leaves the config file's value, or the default, in place."""
        config = self.mktemp()
        with open(config, "w") as f:
            f.write('[smtp]\nlisten = ["tcp:0:interface=127.0.0.1"]\n')
        options = _maker().options()  # type: ignore[attr-defined]
        options.parseOptions(["--config", config, "--data-dir", self.mktemp()])
        self.assertEqual(options.settings.smtp, ("tcp:0:interface=127.0.0.1",))
        self.assertEqual(options.settings.submission, ("tcp:2587:interface=127.0.0.1",))
        self.assertEqual(options.settings.domains, ("localhost",))
        self.assertIsNone(options.overrides["submission"])

    def test_options_override_defaults(self) -> None:
        """Command-line options become settings; repeatable options accumulate."""
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        data_dir = self.mktemp()
        options.parseOptions(
            [
                "--data-dir",
                data_dir,
                "--hostname",
                "mx.example.test",
                "--domain",
                "example.test",
                "--domain",
                "other.test",
                "--smtp",
                "tcp:0:interface=127.0.0.1",
                "--submission",
                "tcp:0:interface=127.0.0.1",
                "--submission",
                "tcp:0:interface=127.0.0.1",
                "--plaintext-auth",
                "never",
            ]
        )
        s = options.settings
        self.assertEqual(s.data_dir, data_dir)
        self.assertEqual(s.domains, ("example.test", "other.test"))
        self.assertEqual(len(s.submission), 2)
        self.assertEqual(s.plaintext_auth, "never")

    def test_outbound_options(self) -> None:
        """--resolver (repeatable), --relay-port and --smarthost become outbound settings."""
        options = _maker().options()  # type: ignore[attr-defined]
        options.parseOptions(
            [
                "--data-dir",
                self.mktemp(),
                "--resolver",
                "127.0.0.1:5353",
                "--resolver",
                "[::1]:53",
                "--relay-port",
                "2525",
                "--smarthost",
                "relay.test:587",
            ]
        )
        s = options.settings
        self.assertEqual(s.resolvers, ("127.0.0.1:5353", "[::1]:53"))
        self.assertEqual(s.relay_port, 2525)
        self.assertEqual(s.smarthost, "relay.test:587")
        options = _maker().options()  # type: ignore[attr-defined]
        self.assertRaises(usage.UsageError, options.parseOptions, ["--resolver", "nowhere:x"])
        options = _maker().options()  # type: ignore[attr-defined]
        self.assertRaises(usage.UsageError, options.parseOptions, ["--relay-port", "port"])

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

    def test_make_service_tunes_gc(self) -> None:
        """makeService sets the process's GC thresholds from ``[server] gc_threshold``; ``[]`` keeps them."""
        self.addCleanup(gc.set_threshold, *gc.get_threshold())
        gc.set_threshold(700, 10, 10)
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        options.parseOptions(["--data-dir", self.mktemp()])
        maker.makeService(options)  # type: ignore[attr-defined]
        self.assertEqual(gc.get_threshold(), (100_000, 50, 100))
        for text, expected in (("[12345, 7, 9]", (12345, 7, 9)), ("[]", (12345, 7, 9))):
            config = self.mktemp()
            with open(config, "w") as f:
                f.write(f"[server]\ngc_threshold = {text}\n")
            options = maker.options()  # type: ignore[attr-defined]
            options.parseOptions(["--config", config, "--data-dir", self.mktemp()])
            maker.makeService(options)  # type: ignore[attr-defined]
            self.assertEqual(gc.get_threshold(), expected)

    def test_workers_default_to_the_cpus(self) -> None:
        """``twistd mailserver`` receives SMTP in one worker per CPU unless told (``--workers``)."""
        maker = _maker()
        options = maker.options()  # type: ignore[attr-defined]
        options.parseOptions(["--data-dir", self.mktemp()])
        self.assertIsNone(options.settings.workers)
        service = maker.makeService(options)  # type: ignore[attr-defined]
        cpus = os.cpu_count() or 1
        self.assertEqual(service.settings.workers, cpus)
        if cpus > 1:
            self.assertEqual(service.workers.count, cpus)
        else:
            self.assertIsNone(service.workers)
        for value, expected in (("1", None), ("3", 3)):
            options = maker.options()  # type: ignore[attr-defined]
            options.parseOptions(["--data-dir", self.mktemp(), "--workers", value])
            service = maker.makeService(options)  # type: ignore[attr-defined]
            self.assertEqual(service.workers.count if service.workers else None, expected)
            # SMTP and submission are bound by this process and served by the workers; LMTP would stay.
            self.assertEqual(
                [(lst.role, lst.accept) for lst in service.listeners],
                [("mta", expected is None), ("submission", expected is None)],
            )
        options = maker.options()  # type: ignore[attr-defined]
        self.assertRaises(usage.UsageError, options.parseOptions, ["--workers", "0"])

    def test_embedder_objects_need_one_process(self) -> None:
        """build_service with the embedder's own SMTP-side objects refuses workers (they cannot cross)."""
        from txmail.errors import ConfigError

        settings = load_config(None, {"data_dir": self.mktemp(), "workers": 2})
        with self.assertRaises(ConfigError) as cm:
            build_service(settings, reactor=MemoryReactorClock(), policies=[object()])
        self.assertIn("policies", str(cm.exception))
        server = build_service(settings, reactor=MemoryReactorClock())
        self.assertEqual(server.workers.count, 2)
        # Delivery hooks are fine: the owner's router delivers, and runs them.
        hooked = build_service(
            settings, reactor=MemoryReactorClock(), delivery_hook=lambda envelope, message: None
        )
        self.assertIs(hooked.workers.router, hooked.router)
        self.assertEqual(len(hooked.router.hooks), 1)
        self.assertIsNone(
            build_service(Settings(data_dir=self.mktemp()), reactor=MemoryReactorClock()).workers
        )


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

    def test_queue_runner_wiring(self) -> None:
        """The queue runner is a child service with the outbound settings; disabled, there is none."""
        reactor = MemoryReactorClock()
        settings = load_config(
            None,
            {
                "data_dir": self.mktemp(),
                "relay_port": 2525,
                "smarthost": "relay.test:587",
                "smarthost_user": "me",
                "smarthost_password": "pw",
                "outbound_tls_policies": {"bank.test": "verify"},
            },
        )
        server = build_service(settings, reactor=reactor)
        runner = server.runner
        assert runner is not None
        self.assertIs(runner.parent, server)
        self.assertIs(runner.queue, server.queue)
        self.assertEqual(runner.relay_port, 2525)
        self.assertEqual((runner.smarthost.host, runner.smarthost.port), ("relay.test", 587))
        self.assertEqual(runner.smarthost.auth, ("me", "pw"))
        self.assertEqual(runner.domain_tls, {"bank.test": "verify"})
        server.startService()
        self.assertTrue(runner.running)
        server.stopService()
        self.assertFalse(runner.running)
        off = build_service(
            load_config(None, {"data_dir": self.mktemp(), "outbound_enabled": False}), reactor=reactor
        )
        self.assertIsNone(off.runner)

    def test_filters_wired(self) -> None:
        """[[milter]] and [rspamd] become policies after the inbound checks, before DKIM signing and
        Authentication-Results, in order; the rspamd learner follows IMAP copies."""
        from txmail.milter.client import MilterPolicy
        from txmail.policy.authentication import AuthenticationResultsHeader, DKIMSigner
        from txmail.policy.rspamd import RspamdLearner, RspamdPolicy

        reactor = MemoryReactorClock()
        key = self.mktemp()
        from txmail.cli import main as txmail_main

        with open(os.devnull, "w") as devnull:
            import contextlib

            with contextlib.redirect_stdout(devnull):
                txmail_main(
                    [
                        "dkim",
                        "keygen",
                        "example.test",
                        "--selector",
                        "s1",
                        "--algorithm",
                        "ed25519",
                        "--out",
                        key,
                    ]
                )
        settings = Settings.validated(
            data_dir=self.mktemp(),
            imap=["tcp:1143"],
            milters=[
                {"address": "inet:127.0.0.1:8891", "listeners": ["submission"], "content_timeout": 600},
                {"address": "inet:127.0.0.1:11332"},
            ],
            rspamd={"url": "http://127.0.0.1:11333"},
            policy={
                "dkim": {"sign": True, "keys": [{"domain": "example.test", "selector": "s1", "key": key}]}
            },
        )
        server = build_service(settings, reactor=reactor)
        kinds = [type(p) for p in server.policies]
        self.assertIs(kinds[-1], AuthenticationResultsHeader)
        filters = [p for p in server.policies if isinstance(p, MilterPolicy | RspamdPolicy)]
        self.assertEqual([type(p) for p in filters], [MilterPolicy, MilterPolicy, RspamdPolicy])
        self.assertEqual(
            [p.settings.address for p in filters[:2]], ["inet:127.0.0.1:8891", "inet:127.0.0.1:11332"]
        )
        self.assertLess(server.policies.index(filters[-1]), kinds.index(DKIMSigner))
        (imap,) = server.listeners_for("imap")
        (learner,) = imap.factory.copy_listeners
        self.assertIsInstance(learner, RspamdLearner)
        submission = server.listeners_for("submission")[0].factory.policy
        mta = server.listeners_for("mta")[0].factory.policy
        self.assertEqual(sum(isinstance(p, MilterPolicy) for p in submission.policies), 2)
        self.assertEqual(sum(isinstance(p, MilterPolicy) for p in mta.policies), 1)
        self.assertGreaterEqual(submission.timeout, 600)  # the first milter's content timeout
        self.assertGreaterEqual(mta.timeout, 300)  # the second's default content timeout
        self.assertLess(mta.timeout, 600)

    def test_stop_twice(self) -> None:
        """Stopping a started server twice is harmless (a test may stop it before its cleanup does)."""
        reactor = MemoryReactorClock()
        settings = load_config(None, {"data_dir": self.mktemp()})
        server = build_service(settings, reactor=reactor)
        server.startService()
        server.stopService()
        server.stopService()
        self.assertFalse(server.running)
