"""
``txmail import`` and ``txmail export`` end to end (txmail.cli.main): the
real Maildir backend under a temporary data directory, exit statuses, the
summary line, and the errors an administrator meets.
"""

from __future__ import annotations

import io
import os
import sys
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests.migrate._stores import TOTAL_BYTES, USER, fill, maildir_store, snapshot
from txmail import cli
from txmail.testing import TestServer


class MigrateCommandTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.config = os.path.join(self.data_dir, "txmail.toml")
        with open(self.config, "w") as f:
            f.write(f'[server]\ndata_dir = "{self.data_dir}"\ndomains = ["example.test"]\n')
        self.assertEqual(
            self.txmail("user", "add", "-c", self.config, USER, "--password-stdin", stdin="pw\n"), 0
        )

    def txmail(self, *argv: str, stdin: str = "") -> int:
        """Run the command; its output in self.out and self.err."""
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr, sys.stdin
        sys.stdout, sys.stderr, sys.stdin = out, err, io.StringIO(stdin)
        try:
            return cli.main(list(argv))
        finally:
            sys.stdout, sys.stderr, sys.stdin = saved
            self.out, self.err = out.getvalue(), err.getvalue()

    def store(self) -> Any:
        return maildir_store(os.path.join(self.data_dir, "mail"))

    def test_export_then_import(self) -> None:
        """export maildir and export mbox of the user's store; import each into another user: the same mail."""
        fill(self.store())
        tree = os.path.abspath(self.mktemp())
        self.assertEqual(
            self.txmail("export", "maildir", "-c", self.config, "--user", USER, tree), 0, self.err
        )
        self.assertIn(f"exported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped", self.out)
        self.assertIn("Sent: 1 messages", self.out)
        mboxes = os.path.abspath(self.mktemp())
        self.assertEqual(self.txmail("export", "mbox", "--config", self.config, "--user", USER, mboxes), 0)
        self.assertTrue(
            self.out.endswith(f"exported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped\n")
        )

        other = "bob@example.test"
        self.txmail("user", "add", "-c", self.config, other, "--password-stdin", stdin="pw\n")
        self.assertEqual(
            self.txmail("import", "maildir", "-c", self.config, "--user", other, tree), 0, self.err
        )
        self.assertIn(f"imported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped", self.out)
        bob = maildir_store(os.path.join(self.data_dir, "mail"), other)
        self.assertEqual(snapshot(bob), snapshot(self.store()))

        carol = "carol@example.test"
        self.txmail("user", "add", "-c", self.config, carol, "--password-stdin", stdin="pw\n")
        self.assertEqual(
            self.txmail("import", "mbox", "-c", self.config, "--user", carol, mboxes), 0, self.err
        )
        self.assertEqual(
            snapshot(
                maildir_store(os.path.join(self.data_dir, "mail"), carol), roles=False, subscriptions=False
            ),
            snapshot(self.store(), roles=False, subscriptions=False),
        )

    def test_import_mbox_folder(self) -> None:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(b"From a Sat Sep 12 10:00:00 2020\nStatus: RO\nSubject: x\n\nhi\n")
        code = self.txmail("import", "mbox", "-c", self.config, "--user", USER, "--folder", "Old", path)
        self.assertEqual(code, 0, self.err)
        self.assertIn("imported 1 folders, 1 messages, 18 bytes, 0 skipped", self.out)
        [m] = snapshot(self.store())["Old"]["messages"]
        self.assertEqual(m[:3], (b"Subject: x\r\n\r\nhi\r\n", ["\\Seen"], 1_599_904_800))

    def test_skipped_messages_exit_1(self) -> None:
        """What could not be imported is said on stderr, counted in the summary, and the status is 1."""
        root = os.path.abspath(self.mktemp())
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(root, sub))
        with open(os.path.join(root, "cur", "ok:2,S"), "wb") as f:
            f.write(b"Subject: ok\n\nfine\n")
        with open(os.path.join(root, "cur", "junk:2,S"), "wb") as f:
            f.write(b"\x00\x01\x02 not mail")
        self.assertEqual(self.txmail("import", "maildir", "-c", self.config, "--user", USER, root), 1)
        self.assertIn("imported 1 folders, 1 messages, 21 bytes, 1 skipped", self.out)
        self.assertIn("txmail: warning: ", self.err)
        self.assertIn("junk:2,S: not a message", self.err)

    def test_unknown_user(self) -> None:
        tree = os.path.abspath(self.mktemp())
        for argv in (
            ("export", "maildir", "-c", self.config, "--user", "nobody@example.test", tree),
            ("import", "mbox", "-c", self.config, "--user", "nobody@example.test", tree),
        ):
            self.assertEqual(self.txmail(*argv), 1)
            self.assertEqual(self.err, "txmail: error: no user nobody@example.test\n")
        self.assertFalse(os.path.exists(tree))
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "mail", "example.test", "nobody")))

    def test_usage_errors(self) -> None:
        self.assertEqual(self.txmail("import", "mbox", "-c", self.config, "x"), 2)  # no --user
        self.assertEqual(self.txmail("import", "pst", "--user", USER, "x"), 2)
        self.assertEqual(self.txmail("import", "imap", "h", "--user", USER, "--max-messages", "0"), 2)

    def test_control_c(self) -> None:
        """Control-C during an import: one line on stderr, status 1, what was stored kept."""
        from txmail.migrate import mbox

        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(
                b"From a Sat Sep 12 10:00:00 2020\nSubject: 1\n\nx\n\nFrom a Sat Sep 12 10:00:00 2020\nSubject: 2\n\ny\n"
            )
        real = mbox.Target.append
        calls = []

        def append(target: Any, *args: Any) -> int:
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return real(target, *args)

        self.patch(mbox.Target, "append", append)
        self.assertEqual(self.txmail("import", "mbox", "-c", self.config, "--user", USER, path), 1)
        self.assertTrue(self.err.startswith("txmail: error: interrupted: what was copied is kept"), self.err)
        self.assertEqual(len(snapshot(self.store())["INBOX"]["messages"]), 1)

    def test_password_file_missing(self) -> None:
        """An unreadable --password-file is an error before any connection."""
        missing = os.path.abspath(self.mktemp())
        argv = [
            "import",
            "imap",
            "127.0.0.1:1",
            "-c",
            self.config,
            "--user",
            USER,
            "--password-file",
            missing,
        ]
        self.assertEqual(self.txmail(*argv), 1)
        self.assertEqual(self.err, f"txmail: error: cannot read {missing}: No such file or directory\n")

    def test_export_into_non_empty_directory(self) -> None:
        tree = os.path.abspath(self.mktemp())
        os.makedirs(tree)
        open(os.path.join(tree, "x"), "w").close()
        self.assertEqual(self.txmail("export", "mbox", "-c", self.config, "--user", USER, tree), 1)
        self.assertIn("is not empty", self.err)

    @defer.inlineCallbacks
    def test_import_imap(self) -> None:
        """import imap from a txmail server: copies all, a second run nothing; wrong password and no server: status 1."""
        server = TestServer()
        yield server.start()
        self.addCleanup(server.stop)
        server.add_user("old@example.test", "old secret")
        fill((yield server.stores.store_for("old@example.test")))
        host, port = server.imap_address
        argv = ["import", "imap", f"{host}:{port}", "-c", self.config, "--user", USER]
        argv += ["--login", "old@example.test", "--security", "none", "--password-stdin"]

        code = yield threads.deferToThread(self.txmail, *argv, stdin="old secret\n")
        self.assertEqual(code, 0, self.err)
        self.assertIn("INBOX: 3 messages to copy", self.out)
        self.assertIn(f"imported 10 folders, 9 messages, {TOTAL_BYTES} bytes, 0 skipped", self.out)
        state = os.path.join(self.data_dir, "migrate", USER, f"old@example.test@{host}:{port}.json")
        self.assertTrue(os.path.isfile(state))
        code = yield threads.deferToThread(self.txmail, *argv, stdin="old secret\n")
        self.assertEqual(code, 0, self.err)
        self.assertIn("imported 10 folders, 0 messages, 0 bytes, 0 skipped", self.out)
        self.assertEqual(len(snapshot(self.store())["INBOX"]["messages"]), 3)

        code = yield threads.deferToThread(self.txmail, *argv, stdin="wrong\n")
        self.assertEqual(code, 1)
        self.assertIn("txmail: error: login as old@example.test refused", self.err)

        password = os.path.join(self.data_dir, "pw")
        with open(password, "w") as f:
            f.write("old secret\n")
        yield server.stop()
        argv[argv.index("--password-stdin")] = "--password-file"
        argv.append(password)
        code = yield threads.deferToThread(self.txmail, *argv)
        self.assertEqual(code, 1)
        self.assertIn(f"txmail: error: cannot connect to {host}:{port}", self.err)

    @defer.inlineCallbacks
    def test_import_imap_tls_certificate_checked(self) -> None:
        """Implicit TLS to a plain-text port fails with one line, not a traceback."""
        server = TestServer()
        yield server.start()
        self.addCleanup(server.stop)
        host, port = server.imap_address
        argv = ["import", "imap", f"{host}:{port}", "-c", self.config, "--user", USER, "--security", "tls"]
        code = yield threads.deferToThread(self.txmail, *argv, "--password-stdin", stdin="x\n")
        self.assertEqual(code, 1)
        self.assertTrue(self.err.startswith(f"txmail: error: cannot connect to {host}:{port}"), self.err)
        self.assertEqual(self.err.count("\n"), 1)
