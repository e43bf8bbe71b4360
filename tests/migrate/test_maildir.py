"""Import of a Maildir tree written by hand as Dovecot lays it out (txmail.migrate.maildir)."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.migrate._stores import maildir_store, memory_store, snapshot, tree_files
from txmail.migrate import MigrationError, import_maildir
from txmail.migrate._store import wait
from txmail.model import SpecialUse


def write(root: str, rel: str, data: bytes, mtime: float | None = None) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def maildir(root: str, folder: str = "") -> str:
    path = os.path.join(root, folder) if folder else root
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return path


def messages(store: object, name: str) -> list[tuple[bytes, frozenset[str], int]]:
    box = wait(store.get_mailbox(name))  # type: ignore[attr-defined]
    return [(wait(box.read_message(m.uid)), m.flags, int(m.internal_date)) for m in wait(box.list_messages())]


class DovecotTreeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = os.path.abspath(self.mktemp())
        maildir(self.root)
        # INBOX: one seen and answered with two keywords, one new (no flags), LF line ends as Dovecot's LDA writes
        write(self.root, "dovecot-keywords", b"0 $Label1\n1 Work\n2 bad\\keyword\n")
        write(
            self.root,
            "cur/1700000000.M1P1.host,S=30,W=32:2,RSab",
            b"Subject: a\nFrom: x@y\n\nbody\n",
            1_700_000_000,
        )
        write(self.root, "new/1700000100.M2P1.host,S=20", b"Subject: b\n\nnew one\n", 1_700_000_100)
        write(self.root, "tmp/1700000200.M3P1.host", b"Subject: half written\n")
        write(self.root, "dovecot-uidlist", b"3 V1 N3\n")
        # .Sub.Folder: a child whose parent has no directory; .Sent guesses its role; modified UTF-7
        maildir(self.root, ".Sub.Folder")
        write(self.root, ".Sub.Folder/maildirfolder", b"")
        write(
            self.root, ".Sub.Folder/cur/1600000000.M4P1.host:2,FT", b"Subject: c\r\n\r\nx\r\n", 1_600_000_000
        )
        maildir(self.root, ".Sent")
        write(self.root, ".Sent/cur/1600000001.M5P1.host:2,S", b"Subject: d\n\nsent\n", 1_600_000_001)
        maildir(self.root, ".Entw&APw-rfe")
        write(self.root, ".Entw&APw-rfe/dovecot-keywords", b"0 Privat\n")
        write(self.root, ".Entw&APw-rfe/cur/1600000002.M6P1.host:2,Da", b"Subject: e\n\n\n", 1_600_000_002)
        write(self.root, "subscriptions", b"V\t2\n\nSent\nSub\tFolder\nEntw&APw-rfe\n")

    def test_import(self) -> None:
        """Folders, flags and keywords (dovecot-keywords letters), new/ unseen, mtimes, CRLF served, subscriptions."""
        before = tree_files(self.root)
        store = maildir_store(self.mktemp())
        summary = import_maildir(store, self.root)
        self.assertEqual((summary.folders, summary.messages, summary.skipped), (4, 5, 0))
        self.assertEqual(
            messages(store, "INBOX"),
            [
                (
                    b"Subject: a\r\nFrom: x@y\r\n\r\nbody\r\n",
                    {"\\Answered", "\\Seen", "$Label1", "Work"},
                    1_700_000_000,
                ),
                (b"Subject: b\r\n\r\nnew one\r\n", frozenset(), 1_700_000_100),
            ],
        )
        self.assertEqual(
            messages(store, "Sub/Folder"),
            [(b"Subject: c\r\n\r\nx\r\n", {"\\Flagged", "\\Deleted"}, 1_600_000_000)],
        )
        self.assertEqual(
            messages(store, "Entwürfe"), [(b"Subject: e\r\n\r\n\r\n", {"\\Draft", "Privat"}, 1_600_000_002)]
        )
        self.assertEqual(wait(store.special_use_mailbox(SpecialUse.SENT)), "Sent")
        self.assertEqual(wait(store.subscriptions()), ["Entwürfe", "Sent", "Sub/Folder"])
        infos = {f.name: f for f in wait(store.list_mailboxes("*"))}
        self.assertEqual(sorted(infos), ["Entwürfe", "INBOX", "Sent", "Sub", "Sub/Folder"])
        # sizes are those of the CRLF form the store serves
        box = wait(store.get_mailbox("INBOX"))
        self.assertEqual(
            [m.size for m in wait(box.list_messages())],
            [len(b"Subject: a\r\nFrom: x@y\r\n\r\nbody\r\n"), len(b"Subject: b\r\n\r\nnew one\r\n")],
        )
        # the tree is untouched, tmp/ included
        self.assertEqual(tree_files(self.root), before)
        self.assertEqual(
            int(os.stat(os.path.join(self.root, "cur/1700000000.M1P1.host,S=30,W=32:2,RSab")).st_mtime),
            1_700_000_000,
        )

    def test_role_kept_for_existing(self) -> None:
        """A role the user gave another folder already is not taken away."""
        store = memory_store()
        wait(store.create_mailbox("Sent Items", special_use=SpecialUse.SENT))
        import_maildir(store, self.root)
        self.assertEqual(wait(store.special_use_mailbox(SpecialUse.SENT)), "Sent Items")

    def test_old_subscriptions_file(self) -> None:
        """Version 1 of the subscriptions file: one name a line, '.' as the separator."""
        write(self.root, "subscriptions", b"Sent\nSub.Folder\n")
        store = memory_store()
        import_maildir(store, self.root)
        self.assertEqual(wait(store.subscriptions()), ["Sent", "Sub/Folder"])

    def test_hostile_files(self) -> None:
        """A file that is not a message, an empty one, a directory and a symbolic link in cur/ are skipped and reported."""
        write(self.root, "cur/junk:2,S", b"\x89PNG\r\n\x1a\n\x00\x00binary")
        write(self.root, "cur/empty:2,", b"")
        secret = write(os.path.abspath(self.mktemp()), "secret", b"Subject: private\n\nnot theirs\n")
        os.symlink(secret, os.path.join(self.root, "cur", "link:2,S"))
        os.makedirs(os.path.join(self.root, "cur", "adir"))
        store = memory_store()
        summary = import_maildir(store, self.root)
        self.assertEqual((summary.messages, summary.skipped), (5, 4))
        text = "\n".join(summary.problems)
        self.assertIn("junk:2,S: not a message", text)
        self.assertIn("empty:2,: empty", text)
        self.assertIn("adir: not a regular file", text)
        self.assertIn("link:2,S: a symbolic link", text)

    def test_linked_folder(self) -> None:
        """A folder that is a symbolic link to a Maildir elsewhere is not followed."""
        elsewhere = maildir(os.path.abspath(self.mktemp()))
        write(elsewhere, "cur/1:2,S", b"Subject: elsewhere\n\nx\n")
        os.symlink(elsewhere, os.path.join(self.root, ".Linked"))
        store = memory_store()
        summary = import_maildir(store, self.root)
        self.assertNotIn("Linked", [f.name for f in wait(store.list_mailboxes("*"))])
        self.assertIn("a symbolic link, not followed", summary.problems[0])
        self.assertEqual(len(messages(store, "INBOX")), 2)

    def test_folder_name_not_modified_utf7(self) -> None:
        """A folder name that is not valid modified UTF-7 is taken as written; one that is no valid name is skipped."""
        maildir(self.root, ".Caf\u00e9 & Bar")  # UTF-8, as Dovecot's UTF8 option writes it
        write(self.root, ".Caf\u00e9 & Bar/cur/1:2,S", b"Subject: f\n\nx\n")
        maildir(self.root, ".bad&Jjo")  # a shift sequence without its end
        write(self.root, ".bad&Jjo/new/2", b"Subject: g\n\nx\n")
        maildir(self.root, ".a..b")  # an empty component
        write(self.root, ".a..b/new/3", b"Subject: h\n\nx\n")
        store = memory_store()
        summary = import_maildir(store, self.root)
        self.assertEqual(len(messages(store, "Caf\u00e9 & Bar")), 1)
        self.assertEqual(len(messages(store, "bad&Jjo")), 1)
        self.assertEqual(summary.skipped, 1)
        self.assertIn(".a..b", summary.problems[0])

    def test_not_a_maildir(self) -> None:
        """A directory with no Maildir in it, or no directory, is a MigrationError."""
        with self.assertRaises(MigrationError):
            import_maildir(memory_store(), self.mktemp())
        empty = self.mktemp()
        os.makedirs(empty)
        with self.assertRaises(MigrationError) as caught:
            import_maildir(memory_store(), empty)
        self.assertIn("not a Maildir", str(caught.exception))

    def test_large_message_streamed(self) -> None:
        """A message of several MiB with bare LFs goes in whole, converted, without the tree changing."""
        body = b"".join(b"line %07d of a long message\n" % i for i in range(200_000))
        write(self.root, "cur/big:2,S", b"Subject: big\n\n" + body, 1_650_000_000)
        store = maildir_store(self.mktemp())
        import_maildir(store, self.root)
        box = wait(store.get_mailbox("INBOX"))
        big = [m for m in wait(box.list_messages()) if m.internal_date == 1_650_000_000]
        self.assertEqual(len(big), 1)
        expected = (b"Subject: big\n\n" + body).replace(b"\n", b"\r\n")
        self.assertEqual(big[0].size, len(expected))
        self.assertEqual(wait(box.read_message(big[0].uid)), expected)
        self.assertEqual(snapshot(store)["INBOX"]["messages"][-1][0], expected)
