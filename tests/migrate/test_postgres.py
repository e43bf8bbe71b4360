"""
``txmail import`` and ``txmail export`` on the PostgreSQL store: the same
commands, through the other backend (skipped where PostgreSQL or psycopg is
not installed).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

from twisted.trial.unittest import TestCase

from tests._postgres import fresh_database
from tests.migrate._stores import TOTAL_BYTES, USER, fill, memory_store, snapshot
from txmail import cli
from txmail.migrate import export_maildir, import_maildir, import_mbox


class PostgresMigrationTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        dsn = fresh_database(self)
        self.data_dir = os.path.abspath(self.mktemp())
        self.config = os.path.abspath(self.mktemp())
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(
                f'[server]\ndata_dir = "{self.data_dir}"\ndomains = ["example.test"]\n\n'
                '[directory]\nbackend = "postgresql"\n\n[store]\nbackend = "postgresql"\n\n'
                f'[postgresql]\ndsn = "{dsn}"\nmax_connections = 4\n'
            )
        self.assertEqual(self.txmail("db", "upgrade")[0], 0)
        self.assertEqual(self.txmail("user", "add", USER, "--password-stdin", stdin="pw\n")[0], 0)

    def txmail(self, *argv: str, stdin: str = "") -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdin
        sys.stdin = io.StringIO(stdin)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                status = cli.main([*argv, "-c", self.config])
        finally:
            sys.stdin = saved
        return status, out.getvalue(), err.getvalue()

    def test_maildir_into_postgresql_and_back(self) -> None:
        """A Maildir tree imported into the PostgreSQL store and exported again: the same mail, roles, subscriptions."""
        source = memory_store()
        fill(source)
        tree = os.path.abspath(self.mktemp())
        export_maildir(source, tree)
        status, out, err = self.txmail("import", "maildir", "--user", USER, tree)
        self.assertEqual(status, 0, err)
        self.assertIn(f"imported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped", out)

        again = os.path.abspath(self.mktemp())
        status, out, err = self.txmail("export", "maildir", "--user", USER, again)
        self.assertEqual(status, 0, err)
        self.assertIn(f"exported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped", out)
        back = memory_store()
        import_maildir(back, again)
        self.assertEqual(snapshot(back), snapshot(source))

    def test_mbox_export(self) -> None:
        """export mbox reads the PostgreSQL store: its files import back to the same mail."""
        source = memory_store()
        fill(source)
        tree = os.path.abspath(self.mktemp())
        export_maildir(source, tree)
        self.txmail("import", "maildir", "--user", USER, tree)
        mboxes = os.path.abspath(self.mktemp())
        status, _, err = self.txmail("export", "mbox", "--user", USER, mboxes)
        self.assertEqual(status, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(mboxes, "Archive", "2024.mbox")))
        back = memory_store()
        import_mbox(back, mboxes)
        self.assertEqual(
            snapshot(back, roles=False, subscriptions=False),
            snapshot(source, roles=False, subscriptions=False),
        )
