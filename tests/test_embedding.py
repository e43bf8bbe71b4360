"""
The embedding API: the public names of :mod:`txmail`, settings built in
code, and ``docs/examples/embedded_server.py`` run for real on loopback
(smtplib in, imaplib out) with its delivery hook rejecting and rewriting.
"""

from __future__ import annotations

import contextlib
import imaplib
import importlib.util
import os
import smtplib
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

import txmail
from txmail.config import Settings, load_config
from txmail.errors import ConfigError
from txmail.model import INBOX
from txmail.testing.directory import DirectoryConformanceMixin

EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "examples", "embedded_server.py"
)
PASSWORD = "correct horse"


def load_example() -> ModuleType:
    """Import the example by path, as its own module."""
    spec = importlib.util.spec_from_file_location("txmail_example_embedded_server", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses/zope need the module registered
    spec.loader.exec_module(module)
    return module


class PublicAPITests(SynchronousTestCase):
    def test_all_names_resolve(self) -> None:
        """Every name in txmail.__all__ resolves to the object its defining module exports."""
        self.assertEqual(set(txmail.__all__) - {"__version__"}, set(txmail._EXPORTS))
        for name, module in txmail._EXPORTS.items():
            defining = importlib.import_module(module)
            self.assertIn(name, defining.__all__, f"{module}.__all__ lacks {name}")
            self.assertIs(getattr(txmail, name), getattr(defining, name))
        self.assertEqual(set(dir(txmail)) >= set(txmail.__all__), True)

    def test_unknown_name(self) -> None:
        """An unknown attribute is an AttributeError, as for any module."""
        with self.assertRaises(AttributeError):
            txmail.NoSuchThing  # noqa: B018

    def test_settings_validated_normalises_like_load_config(self) -> None:
        """Settings.validated applies the checks and normalisation of load_config."""
        values = {"domains": ["Example.COM.", "other.test"], "imap": ["tcp:1143"], "threads": 3}
        self.assertEqual(Settings.validated(**values), load_config(None, values))
        self.assertEqual(Settings.validated(domains=["Example.COM"]).domains, ("example.com",))

    def test_settings_validated_refuses(self) -> None:
        """Invalid values raise ConfigError; unknown names TypeError, as the dataclass would."""
        with self.assertRaises(ConfigError):
            Settings.validated(domains=[])
        with self.assertRaises(ConfigError):
            Settings.validated(imap=["ssl:993"])  # no certificate
        with self.assertRaises(ConfigError):
            Settings.validated(plaintext_auth="sometimes")
        with self.assertRaises(TypeError):
            Settings.validated(domain="example.com")

    def test_settings_validated_empty_list_means_none(self) -> None:
        """An empty listener list turns a listener off (load_config overrides would ignore it)."""
        self.assertEqual(Settings.validated(submission=[]).submission, ())
        self.assertEqual(Settings.validated(submission=None).submission, Settings().submission)


class BuildServiceHookTests(SynchronousTestCase):
    def test_hooks_for_smtp_only(self) -> None:
        """build_service(delivery_hook=...) hooks the SMTP router; the queue runner's router has none."""
        from twisted.internet.task import Clock

        from txmail.delivery.hooks import hook_callable

        def hook(envelope: Any, message: Any) -> None:
            return None

        settings = Settings.validated(
            data_dir=os.path.abspath(self.mktemp()),
            domains=["example.test"],
            smtp=["tcp:0:interface=127.0.0.1"],
            submission=[],
            outbound_enabled=True,
        )
        server = txmail.build_service(
            settings, reactor=Clock(), stores=txmail.MemoryProvider(), delivery_hook=[hook]
        )
        self.assertEqual(server.router.hooks, (hook_callable(hook),))
        self.assertIs(server.listeners[0].factory.router, server.router)
        assert server.runner is not None
        self.assertEqual(server.runner.router.hooks, ())
        self.assertIs(server.runner.router.stores, server.stores)


def _close(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.logout()


class EmbeddedExampleTests(TestCase):
    """The example application, started on port 0 with the trial reactor."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.example = load_example()
        self.server = self.example.make_service(
            0,
            0,
            users={
                "alice@example.test": PASSWORD,
                "archive@example.test": PASSWORD,
                "bob@example.test": PASSWORD,
            },
            blocked=["bob@example.test"],
            archive="archive@example.test",
            data_dir=os.path.abspath(self.mktemp()),
            reactor=reactor,
        )
        self.server.startService()
        self.addCleanup(self.server.stopService)
        yield self.server.when_listening()

    def send(self, rcpts: list[str], body: bytes) -> defer.Deferred[Any]:
        def run() -> Any:
            with smtplib.SMTP(*self.server.address("mta"), timeout=20) as s:
                return s.sendmail("carol@remote.test", rcpts, body)

        return deferToThread(run)

    def fetch_all(self, user: str) -> defer.Deferred[list[bytes]]:
        def run() -> list[bytes]:
            client = imaplib.IMAP4(*self.server.address("imap"), timeout=20)
            try:
                client.login(user, PASSWORD)
                typ, data = client.select(INBOX)
                assert typ == "OK", data
                typ, data = client.fetch("1:*", "(BODY.PEEK[])") if int(data[0]) else ("OK", [])
                assert typ == "OK", data
                return [item[1] for item in data if isinstance(item, tuple)]
            finally:
                _close(client)

        return deferToThread(run)

    def test_parts(self) -> None:
        """The example wires its own directory, the memory store and its hook into the server."""
        from txmail.delivery.hooks import hook_callable

        self.assertIsInstance(self.server.directory, self.example.DictDirectory)
        self.assertIsInstance(self.server.stores, txmail.MemoryProvider)
        self.assertEqual(self.server.router.hooks, (hook_callable(self.server.hook),))
        self.assertEqual({lst.role for lst in self.server.listeners}, {"mta", "imap"})
        self.assertIsNone(self.server.runner)

    @defer.inlineCallbacks
    def test_send_and_read_back(self) -> Any:
        """SMTP in, IMAP out; the hook saw the message and copied it to the archive (a rewrite)."""
        refused = yield self.send(["alice@example.test"], b"Subject: hello\r\n\r\nHi Alice.\r\n")
        self.assertEqual(refused, {})
        (message,) = yield self.fetch_all("alice@example.test")
        self.assertIn(b"Subject: hello\r\n\r\nHi Alice.\r\n", message)
        self.assertIn(b"Received: from ", message)
        (archived,) = yield self.fetch_all("archive@example.test")
        self.assertEqual(archived, message)
        ((_, sender, rcpts),) = self.server.hook.seen
        self.assertEqual((sender, rcpts), ("carol@remote.test", ("alice@example.test",)))

    @defer.inlineCallbacks
    def test_hook_rejects_after_data(self) -> Any:
        """Mail for a blocked address gets the hook's 550 5.7.1 to DATA and is stored nowhere."""
        with self.assertRaises(smtplib.SMTPDataError) as caught:
            yield self.send(["alice@example.test", "bob@example.test"], b"Subject: no\r\n\r\nx\r\n")
        self.assertEqual(caught.exception.smtp_code, 550)
        self.assertEqual(caught.exception.smtp_error, b"5.7.1 Delivery to this address is not allowed")
        self.assertEqual(len(self.server.hook.seen), 1)
        for user in ("alice@example.test", "bob@example.test", "archive@example.test"):
            messages = yield self.fetch_all(user)
            self.assertEqual(messages, [], user)


class ExampleDirectoryConformanceTests(DirectoryConformanceMixin, TestCase):
    """The example's DictDirectory keeps the whole directory contract."""

    def make_directory(
        self, domains: Sequence[str], users: Mapping[str, str], aliases: Mapping[str, Sequence[str]]
    ) -> Any:
        return load_example().DictDirectory(domains, users, aliases)
