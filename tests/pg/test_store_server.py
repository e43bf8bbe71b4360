"""
The server on the PostgreSQL store: ``[store] backend = "postgresql"``
wired by :func:`txmail.service.make_store_provider`, and end to end a
message sent over SMTP fetched over IMAP and retrieved over POP3.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import smtplib
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests._postgres import fresh_database
from tests.e2e._server import start_server
from tests.pg._helpers import upgraded_database
from txmail.config import Settings
from txmail.errors import SchemaTooOld
from txmail.model import INBOX

Gen = Generator[Any, Any, None]

USER = "alice@example.test"
PASSWORD = "store secret"
MESSAGE = (
    b"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: on postgresql\r\n\r\n"
    + b"a line of the body\r\n" * 2000
)


def config(dsn: str) -> str:
    return f'[store]\nbackend = "postgresql"\n\n[postgresql]\ndsn = "{dsn}"\nmax_connections = 4\n'


class MakeStoreProviderTests(TestCase):
    """make_store_provider for "postgresql"."""

    def settings(self, dsn: str) -> Settings:
        return Settings.validated(
            data_dir=os.path.abspath(self.mktemp()), store_backend="postgresql", postgresql_dsn=dsn
        )

    def test_without_server(self) -> None:
        """Without a server (the admin command): a provider on a database of its own, answering inline."""
        from txmail.pg.store import PostgresProvider
        from txmail.service import make_store_provider

        database = upgraded_database(self, start=False)
        provider = make_store_provider(self.settings(database.dsn))
        self.assertIsInstance(provider, PostgresProvider)
        self.assertFalse(provider.database.running)
        store = self.successResultOf(provider.store_for(USER))
        self.assertEqual([f.name for f in self.successResultOf(store.list_mailboxes())], [INBOX])

    def test_maildrop_lease(self) -> None:
        """[store] maildrop_lease is the lease of the provider's POP3 maildrop locks."""
        from txmail.service import make_store_provider

        database = upgraded_database(self, start=False)
        settings = Settings.validated(
            data_dir=os.path.abspath(self.mktemp()),
            store_backend="postgresql",
            postgresql_dsn=database.dsn,
            store_maildrop_lease=30.0,
        )
        provider = make_store_provider(settings)
        self.assertEqual(provider.maildrop_locks.lease, 30.0)
        self.assertEqual(make_store_provider(self.settings(database.dsn)).maildrop_locks.lease, 120.0)

    def test_old_schema(self) -> None:
        """An old schema is refused when the provider is made, with the command that upgrades it."""
        from txmail.service import make_store_provider

        error = self.assertRaises(SchemaTooOld, make_store_provider, self.settings(fresh_database(self)))
        self.assertIn("run `txmail db upgrade`", str(error))

    def test_user_add_creates_inbox(self) -> None:
        """``txmail user add`` with the PostgreSQL store makes the user's INBOX in the database."""
        import io
        import sys

        from txmail import cli

        database = upgraded_database(self, start=False)
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write('[server]\ndomains = ["example.test"]\n\n' + config(database.dsn))
        out = io.StringIO()
        saved = sys.stdin
        sys.stdin = io.StringIO("pw\n")
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                status = cli.main(
                    [
                        "user",
                        "add",
                        "alice",
                        "--password-stdin",
                        "--config",
                        path,
                        "--data-dir",
                        self.mktemp(),
                    ]
                )
        finally:
            sys.stdin = saved
        self.assertEqual((status, out.getvalue()), (0, "added user alice@example.test\n"))
        rows = database.run_sync(lambda conn: conn.execute("SELECT owner, name FROM mailboxes").fetchall())
        self.assertEqual(rows, [(USER, INBOX)])


class PostgresStoreServerTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def test_smtp_imap_pop3(self) -> Gen:
        """
        The server delivers SMTP mail into the PostgreSQL store (on the
        shared database, whose service starts the provider's
        notifications); IMAP FETCHes it and POP3 RETRieves it byte for byte.
        """
        from txmail.pg.db import DatabaseService
        from txmail.pg.store import PostgresProvider

        database = upgraded_database(self, start=False)
        server = yield start_server(
            self,
            config=config(database.dsn),
            imap=["tcp:0:interface=127.0.0.1"],
            pop3=["tcp:0:interface=127.0.0.1"],
        )
        self.assertIsInstance(server.stores, PostgresProvider)
        (database_service,) = [child for child in server if isinstance(child, DatabaseService)]
        self.assertIs(server.stores.database, database_service.database)
        self.assertEqual(database_service.dependents, [server.stores])
        yield server.stores.listening()
        server.directory.add_user(USER, PASSWORD)

        def send() -> Any:
            with smtplib.SMTP(*server.address("mta"), timeout=20) as client:
                return client.sendmail("sender@remote.test", [USER], MESSAGE)

        self.assertEqual((yield threads.deferToThread(send)), {})
        self.assertFalse(os.path.exists(server.settings.path("mail")))

        def imap() -> Any:
            client = imaplib.IMAP4(*server.address("imap"), timeout=20)
            try:
                client.login(USER, PASSWORD)
                selected = client.select("INBOX")
                status, data = client.uid("FETCH", "1", "(RFC822)")
                return selected, status, data[0][1]
            finally:
                with contextlib.suppress(imaplib.IMAP4.error, OSError):
                    client.logout()

        selected, status, fetched = yield threads.deferToThread(imap)
        self.assertEqual(selected, ("OK", [b"1"]))
        self.assertEqual(status, "OK")
        self.assertTrue(fetched.endswith(MESSAGE), fetched[:200])

        def pop() -> Any:
            client = poplib.POP3(*server.address("pop3"), timeout=20)
            try:
                client.user(USER)
                client.pass_(PASSWORD)
                return client.retr(1)
            finally:
                with contextlib.suppress(poplib.error_proto, OSError):
                    client.quit()

        _, lines, _ = yield threads.deferToThread(pop)
        self.assertEqual(b"\r\n".join(lines) + b"\r\n", fetched)
