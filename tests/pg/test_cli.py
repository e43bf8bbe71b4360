"""
The txmail command and the server on a PostgreSQL directory: ``txmail db
upgrade|status``, the user and alias commands, and end to end a user added
with the command logging in over IMAP and getting mail over SMTP.
"""

from __future__ import annotations

import contextlib
import imaplib
import io
import os
import smtplib
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests._postgres import fresh_database
from tests.e2e._server import maildir_files, start_server
from txmail import cli
from txmail.errors import SchemaTooOld

Gen = Generator[Any, Any, None]


class PostgresCommandTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dsn = fresh_database(self)
        self.data_dir = os.path.abspath(self.mktemp())
        self.config = self.write_config(
            f'[server]\ndomains = ["example.test"]\n\n[directory]\nbackend = "postgresql"\n\n'
            f'[postgresql]\ndsn = "{self.dsn}"\nmax_connections = 4\n'
        )

    def write_config(self, text: str) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def txmail(self, *argv: str, stdin: str = "", data_dir: bool = True) -> tuple[int, str, str]:
        """Run the command with --config (and --data-dir); (status, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        options = ["--config", self.config] + (["--data-dir", self.data_dir] if data_dir else [])
        saved = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli.main([*argv, *options])
        finally:
            sys.stdin = saved
        return status, out.getvalue(), err.getvalue()

    def test_db_upgrade_and_status(self) -> None:
        """db status says an upgrade is needed (exit 1); db upgrade creates the schema, then has nothing to do."""
        from txmail.pg.schema import LATEST_VERSION

        status, out, _ = self.txmail("db", "status")
        self.assertEqual(
            (status, out),
            (1, f"schema version 0; this txmail needs {LATEST_VERSION}: run `txmail db upgrade`\n"),
        )
        status, out, _ = self.txmail("db", "upgrade")
        self.assertEqual(
            (status, out), (0, f"upgraded the PostgreSQL schema from version 0 to {LATEST_VERSION}\n")
        )
        status, out, _ = self.txmail("db", "upgrade")
        self.assertEqual(
            (status, out), (0, f"the PostgreSQL schema is up to date (version {LATEST_VERSION})\n")
        )
        status, out, _ = self.txmail("db", "status")
        self.assertEqual(status, 0)
        self.assertIn("up to date", out)

    def test_user_commands_need_upgrade(self) -> None:
        """Before db upgrade, the user commands refuse with the command to run."""
        status, _, err = self.txmail("user", "add", "alice", "--password-stdin", stdin="pw\n")
        self.assertEqual(status, 1)
        self.assertIn("run `txmail db upgrade`", err)

    def test_users_and_aliases(self) -> None:
        """user and alias add/list/passwd/del work on the database; users.json is never written."""
        self.txmail("db", "upgrade")
        self.assertEqual(
            self.txmail("user", "add", "alice", "--password-stdin", stdin="pw\n"),
            (0, "added user alice@example.test\n", ""),
        )
        self.assertEqual(
            self.txmail("user", "add", "bob@example.test", "--password-stdin", stdin="pw\n")[0], 0
        )
        status, _, err = self.txmail("user", "add", "alice@example.test", "--password-stdin", stdin="pw\n")
        self.assertEqual((status, err), (1, "txmail: error: user alice@example.test exists\n"))
        self.assertEqual(self.txmail("user", "list")[1], "alice@example.test\nbob@example.test\n")
        self.assertEqual(
            self.txmail("alias", "add", "@example.test", "alice@example.test", "out@remote.test")[1],
            "added alias @example.test -> alice@example.test, out@remote.test\n",
        )
        self.assertEqual(
            self.txmail("alias", "list")[1], "@example.test -> alice@example.test, out@remote.test\n"
        )
        self.assertEqual(
            self.txmail("user", "passwd", "bob", "--password-stdin", stdin="new\n"),
            (0, "changed the password of bob@example.test\n", ""),
        )
        status, _, err = self.txmail("user", "passwd", "nobody", "--password-stdin", stdin="x\n")
        self.assertEqual((status, err), (1, "txmail: error: no user nobody\n"))
        self.assertEqual(self.txmail("alias", "del", "@example.test")[1], "deleted alias @example.test\n")
        self.assertEqual(self.txmail("user", "del", "bob")[0], 0)
        self.assertEqual(self.txmail("user", "list")[1], "alice@example.test\n")
        status, out, _ = self.txmail("check-config", data_dir=False)
        self.assertEqual(status, 0)
        self.assertIn("  directory:      postgresql\n  users:          1\n", out)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "users.json")))
        # The mailbox was created as for the file directory.
        self.assertTrue(os.path.isdir(os.path.join(self.data_dir, "mail", "example.test", "alice")))

    def test_no_dsn(self) -> None:
        """db commands without a [postgresql] dsn say what is missing."""
        self.config = self.write_config('[server]\ndomains = ["example.test"]\n')
        status, _, err = self.txmail("db", "upgrade")
        self.assertEqual(
            (status, err),
            (1, "txmail: error: config error: PostgreSQL is configured but [postgresql] dsn is empty\n"),
        )

    def test_unreachable(self) -> None:
        """An unreachable database is one clear error line."""
        missing = os.path.abspath(self.mktemp())
        self.config = self.write_config(f'[postgresql]\ndsn = "host={missing} dbname=txmail"\n')
        status, _, err = self.txmail("db", "status")
        self.assertEqual(status, 1)
        self.assertTrue(
            err.startswith("txmail: error: cannot connect to PostgreSQL ([postgresql] dsn): "), err
        )
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_end_to_end(self) -> Gen:
        """
        A user added with the command on a database upgraded with the
        command logs in over IMAP, and gets mail sent over SMTP to an alias
        (resolved in the database) in their INBOX.
        """
        self.assertEqual(self.txmail("db", "upgrade")[0], 0)
        self.assertEqual(self.txmail("user", "add", "alice", "--password-stdin", stdin="imap secret\n")[0], 0)
        self.assertEqual(self.txmail("alias", "add", "info@example.test", "alice@example.test")[0], 0)
        with open(self.config, encoding="utf-8") as f:
            config = f.read()
        server = yield start_server(
            self, config=config, data_dir=self.data_dir, imap=["tcp:0:interface=127.0.0.1"]
        )
        self.assertEqual(type(server.directory).__name__, "PostgresDirectory")
        from txmail.pg.db import DatabaseService

        (database_service,) = [child for child in server if isinstance(child, DatabaseService)]
        self.assertIs(database_service.database, server.directory.db)
        self.assertTrue(database_service.database.running)
        self.assertEqual(database_service.dependents, [server.directory])

        smtp_host, smtp_port = server.address("mta")

        def send() -> Any:
            with smtplib.SMTP(smtp_host, smtp_port, timeout=20) as client:
                client.sendmail(
                    "sender@remote.test",
                    ["info@example.test"],
                    b"From: sender@remote.test\r\nTo: info@example.test\r\nSubject: hi\r\n\r\nhello\r\n",
                )

        yield threads.deferToThread(send)
        self.assertEqual(len(maildir_files(server, "alice@example.test")), 1)

        imap_host, imap_port = server.address("imap")

        def login(password: str) -> Any:
            client = imaplib.IMAP4(imap_host, imap_port, timeout=20)
            try:
                client.login("alice@example.test", password)
                return client.select("INBOX")
            except imaplib.IMAP4.error as e:
                return str(e)
            finally:
                with contextlib.suppress(imaplib.IMAP4.error, OSError):
                    client.logout()

        self.assertEqual((yield threads.deferToThread(login, "imap secret")), ("OK", [b"1"]))
        self.assertIn("AUTHENTICATIONFAILED", (yield threads.deferToThread(login, "wrong")))

        def refused() -> Any:
            with smtplib.SMTP(smtp_host, smtp_port, timeout=20) as client:
                client.mail("sender@remote.test")
                return client.rcpt("nobody@example.test")[0]

        self.assertEqual((yield threads.deferToThread(refused)), 550)

    @defer.inlineCallbacks
    def test_server_refuses_old_schema(self) -> Gen:
        """The server does not start on a database whose schema is older than its code's."""
        with open(self.config, encoding="utf-8") as f:
            config = f.read()
        failure = yield self.assertFailure(start_server(self, config=config), SchemaTooOld)
        self.assertIn("run `txmail db upgrade`", str(failure))

    def test_twistd_refuses_old_schema(self) -> None:
        """twistd mailserver exits with the message (no traceback) when the schema needs an upgrade."""
        import gc
        import importlib.util

        self.addCleanup(gc.set_threshold, *gc.get_threshold())  # makeService tunes the collector
        path = os.path.join(
            os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
            "twisted",
            "plugins",
            "txmail_plugin.py",
        )
        spec = importlib.util.spec_from_file_location("_txmail_plugin_for_pg", path)
        assert spec is not None and spec.loader is not None
        plugin = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(plugin)
        options = plugin.Options()
        options.parseOptions(
            ["--config", self.config, "--data-dir", self.data_dir, "--smtp", "tcp:0:interface=127.0.0.1"]
        )
        with self.assertRaises(SystemExit) as cm:
            plugin.serviceMaker.makeService(options)
        self.assertIn("txmail: the PostgreSQL schema is at version 0", str(cm.exception.code))
        self.assertIn("run `txmail db upgrade`", str(cm.exception.code))
