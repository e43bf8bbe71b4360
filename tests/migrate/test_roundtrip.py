"""
Round trips: a store with folders (odd names, an empty one, special-use
roles, subscriptions), flags, keywords, internal dates and a message with
bare LF line ends, exported and imported into a fresh store of the other
kind, is the same.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from tests.migrate._stores import fill, maildir_store, memory_store, snapshot, tree_files
from txmail.migrate import export_maildir, export_mbox, import_maildir, import_mbox
from txmail.migrate._store import wait


class MaildirRoundTripTests(SynchronousTestCase):
    def test_memory_to_maildir_store(self) -> None:
        """Memory store -> Maildir tree -> the Maildir store: folders, roles, subscriptions, messages the same."""
        source = memory_store()
        fill(source)
        tree = self.mktemp()
        out = export_maildir(source, tree)
        self.assertEqual((out.messages, out.skipped), (9, 0))
        dest = maildir_store(self.mktemp())
        back = import_maildir(dest, tree)
        self.assertEqual((back.messages, back.bytes, back.skipped), (9, out.bytes, 0))
        self.assertEqual(snapshot(dest), snapshot(source))

    def test_maildir_store_to_memory(self) -> None:
        """The other way: the Maildir store (where the LF message stays LF on disk) -> tree -> memory."""
        source = maildir_store(self.mktemp())
        fill(source)
        tree = self.mktemp()
        export_maildir(source, tree)
        dest = memory_store()
        import_maildir(dest, tree)
        self.assertEqual(snapshot(dest), snapshot(source))

    def test_tree_layout(self) -> None:
        """The tree is Dovecot's: .Folder.Sub in modified UTF-7, cur/ with :2, letters, dovecot-keywords, mtimes."""
        source = memory_store()
        fill(source)
        tree = self.mktemp()
        export_maildir(source, tree)
        files = tree_files(tree)
        self.assertIn(".Entw&APw-rfe &- Notizen/maildirfolder", files)
        self.assertIn(".&ZeVnLIqe-.&Tgs-/maildirfolder", files)
        self.assertIn(".v1%2E2 100%25/maildirfolder", files)
        self.assertTrue(os.path.isdir(os.path.join(tree, ".Empty", "cur")))
        [flagged] = [n for n in files if n.startswith("cur/1600000100.")]
        self.assertTrue(flagged.endswith(":2,FSab"), flagged)
        self.assertEqual(files["dovecot-keywords"], b"0 $Label1\n1 project-x\n")
        self.assertEqual(int(os.stat(os.path.join(tree, flagged)).st_mtime), 1_600_000_100)
        self.assertTrue(files["subscriptions"].startswith(b"V\t2\n\n"))
        self.assertIn(b"&ZeVnLIqe-\t&Tgs-\n", files["subscriptions"])
        self.assertEqual(
            json.loads(files["txmail-special-use.json"]), {"Drafts": "\\Drafts", "Sent": "\\Sent"}
        )
        # served octets: CRLF, also for the message the store holds with bare LFs
        [lf] = [n for n in files if n.startswith("cur/1600000200.")]
        self.assertEqual(files[lf], b"Subject: lf\r\nX-Thing: y\r\n\r\nline one\r\nline two\r\n")
        # Dovecot trusts S= (the file's size) and W= (with CRLF): both right for every file
        for rel, content in files.items():
            if "/cur/" in f"/{rel}":
                sizes = dict(part.split("=") for part in rel.split(":2,")[0].split(",")[1:])
                self.assertEqual((int(sizes["S"]), int(sizes["W"])), (len(content), len(content)), rel)

    def test_export_refuses_non_empty_directory(self) -> None:
        """Export never writes into a directory that holds something."""
        from txmail.migrate import MigrationError

        tree = self.mktemp()
        os.makedirs(tree)
        with open(os.path.join(tree, "precious"), "w") as f:
            f.write("keep")
        with self.assertRaises(MigrationError):
            export_maildir(memory_store(), tree)
        with self.assertRaises(MigrationError):
            export_mbox(memory_store(), tree)
        self.assertEqual(os.listdir(tree), ["precious"])


class MboxRoundTripTests(SynchronousTestCase):
    def test_memory_to_maildir_store(self) -> None:
        """Store -> mbox files -> a fresh store: every folder (the empty one too), message, flag, keyword, date."""
        source = memory_store()
        fill(source)
        tree = self.mktemp()
        out = export_mbox(source, tree)
        self.assertEqual((out.messages, out.skipped), (9, 0))
        self.assertTrue(os.path.isfile(os.path.join(tree, "日本語", "下.mbox")))
        self.assertEqual(os.path.getsize(os.path.join(tree, "Empty.mbox")), 0)
        dest = maildir_store(self.mktemp())
        back = import_mbox(dest, tree)
        self.assertEqual((back.messages, back.bytes, back.skipped), (9, out.bytes, 0))
        self.assertEqual(
            snapshot(dest, roles=False, subscriptions=False),
            snapshot(source, roles=False, subscriptions=False),
        )

    def test_hidden_and_percent_names(self) -> None:
        """Names that would be hidden files (a leading '.') or hold '%' survive: %2E and %25 in the file names."""
        source = memory_store()
        for name in (".hidden/child", "50%25 off", "a.b"):
            wait(source.create_mailbox(name))
            wait(wait(source.get_mailbox(name)).append(b"Subject: x\r\n\r\ny\r\n", (), 1_600_000_000))
        tree = self.mktemp()
        export_mbox(source, tree)
        self.assertTrue(os.path.isfile(os.path.join(tree, "%2Ehidden", "child.mbox")))
        self.assertTrue(os.path.isfile(os.path.join(tree, "50%2525 off.mbox")))
        dest = memory_store()
        import_mbox(dest, tree)
        self.assertEqual(snapshot(dest, roles=False), snapshot(source, roles=False))
        maildir_tree = self.mktemp()
        export_maildir(source, maildir_tree)
        again = memory_store()
        import_maildir(again, maildir_tree)
        self.assertEqual(snapshot(again, roles=False), snapshot(source, roles=False))

    def test_quoting(self) -> None:
        """From lines are quoted as mboxrd (one more '>') and unquoted on the way back."""
        source = memory_store()
        box = wait(source.get_mailbox("INBOX"))
        data = b"Subject: q\r\n\r\nFrom here\r\n>From there\r\n>>From everywhere\r\nFrom\r\n"
        wait(box.append(data, (), 1_600_000_000))
        tree = self.mktemp()
        export_mbox(source, tree)
        with open(os.path.join(tree, "INBOX.mbox"), "rb") as f:
            text = f.read()
        self.assertIn(b"\n>From here\n>>From there\n>>>From everywhere\nFrom\n", text)
        self.assertTrue(text.startswith(b"From MAILER-DAEMON Sun Sep 13 12:26:40 2020\n"))
        dest = memory_store()
        import_mbox(dest, tree)
        [m] = wait(wait(dest.get_mailbox("INBOX")).list_messages())
        self.assertEqual(wait(wait(dest.get_mailbox("INBOX")).read_message(m.uid)), data)

    def test_status_field_replaced(self) -> None:
        """A stored message's own Status: field is replaced by the one of its flags (mbox keeps flags there)."""
        source = memory_store()
        box = wait(source.get_mailbox("INBOX"))
        wait(
            box.append(
                b"Subject: s\r\nStatus: RO\r\nX-Keywords: old\r\n\r\nx\r\n", ("\\Flagged",), 1_600_000_000
            )
        )
        tree = self.mktemp()
        export_mbox(source, tree)
        with open(os.path.join(tree, "INBOX.mbox"), "rb") as f:
            text = f.read()
        self.assertEqual(text.count(b"Status:"), 2)  # Status: O and X-Status: F
        self.assertIn(b"Status: O\nX-Status: F\n\nx\n", text)
        self.assertNotIn(b"old", text)
