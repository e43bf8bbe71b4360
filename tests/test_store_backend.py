"""
Tests for choosing the mail store backend (``[store] backend``):
:func:`txmail.service.make_store_provider`, and :func:`build_service`
delivering into the configured store.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e._server import start_server
from txmail.config import Settings
from txmail.model import INBOX
from txmail.service import make_store_provider
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__: list[str] = []


class MakeStoreProviderTests(SynchronousTestCase):
    def test_maildir(self) -> None:
        """ "maildir": a Maildir provider under <data_dir>/mail, its file work through run_blocking."""
        calls: list[str] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(fn.__name__)
            return defer.maybeDeferred(fn, *args)

        data_dir = os.path.abspath(self.mktemp())
        settings = Settings.validated(data_dir=data_dir, hostname="mx.example.test")
        provider = make_store_provider(settings, run_blocking=run_blocking)
        self.assertIsInstance(provider, MaildirProvider)
        assert isinstance(provider, MaildirProvider)
        self.assertEqual(provider.root, os.path.join(data_dir, "mail"))
        self.assertEqual(provider.hostname, "mx.example.test")
        store = self.successResultOf(provider.store_for("alice@example.test"))
        self.assertEqual(calls, ["_open_user_dir"])
        self.assertTrue(os.path.isdir(os.path.join(data_dir, "mail", "example.test", "alice", "new")))
        self.assertEqual(store.user, "alice@example.test")

    def test_memory(self) -> None:
        """ "memory": a fresh memory provider each time (nothing is kept)."""
        settings = Settings.validated(data_dir=os.path.abspath(self.mktemp()), store_backend="memory")
        provider = make_store_provider(settings)
        self.assertIsInstance(provider, MemoryProvider)
        self.assertIsNot(make_store_provider(settings), provider)
        self.successResultOf(provider.store_for("alice@example.test"))
        self.assertFalse(os.path.exists(settings.path("mail")))


class BuildServiceBackendTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def test_memory_backend_delivers_into_memory(self) -> Any:
        """build_service with [store] backend = "memory": SMTP delivery lands in the memory store, no Maildir."""
        server = yield start_server(self, config='[store]\nbackend = "memory"\n')
        self.assertIsInstance(server.stores, MemoryProvider)
        self.assertIs(server.router.stores, server.stores)
        server.directory.add_user("alice@example.test", "secret")

        def send() -> Any:
            with smtplib.SMTP(*server.address("mta"), timeout=20) as s:
                return s.sendmail("bob@remote.test", ["alice@example.test"], b"Subject: hi\r\n\r\nHello\r\n")

        refused = yield deferToThread(send)
        self.assertEqual(refused, {})
        store = yield server.stores.store_for("alice@example.test")
        inbox = yield store.get_mailbox(INBOX)
        (info,) = yield inbox.list_messages()
        data = yield inbox.read_message(info.uid)
        self.assertTrue(data.endswith(b"Subject: hi\r\n\r\nHello\r\n"), data)
        self.assertFalse(os.path.exists(server.settings.path("mail")))

    @defer.inlineCallbacks
    def test_default_is_maildir(self) -> Any:
        """Without [store] the server keeps mail in Maildir under <data_dir>/mail, its file work in the pool."""
        server = yield start_server(self)
        self.assertIsInstance(server.stores, MaildirProvider)
        self.assertEqual(server.stores.root, server.settings.path("mail"))
        self.assertEqual(server.stores._run, server.run_blocking)
