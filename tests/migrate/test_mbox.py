"""Import of mbox files as mail programs write them (txmail.migrate.mbox)."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from tests.migrate._stores import maildir_store, memory_store
from txmail.migrate import MigrationError, import_mbox
from txmail.migrate._store import MEMORY_LIMIT, wait


def write(path: str, data: bytes) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def messages(store: object, name: str = "INBOX") -> list[tuple[bytes, frozenset[str], int]]:
    box = wait(store.get_mailbox(name))  # type: ignore[attr-defined]
    return [(wait(box.read_message(m.uid)), m.flags, int(m.internal_date)) for m in wait(box.list_messages())]


MUTT = (
    b"From alice@example.test Sat Sep 12 10:00:00 2020\n"
    b"From: alice@example.test\n"
    b"Subject: first\n"
    b"Status: RO\n"
    b"X-Status: AF\n"
    b"X-Keywords: work, $Label1\n"
    b"\n"
    b"Hello,\n"
    b">From the quoting\n"
    b">>From twice\n"
    b"\n"
    b"From bob@example.test Sun Sep 13 12:26:40 2020\n"
    b"Subject: second\n"
    b"X-Mozilla-Status: 0008\n"
    b"X-UID: 77\n"
    b"\n"
    b"body\n"
    b"\n"
)


class MboxImportTests(SynchronousTestCase):
    def test_flags_dates_quoting(self) -> None:
        """Flag fields become flags and keywords and are removed; dates from From lines; mboxrd unquoted; CRLF stored."""
        path = write(self.mktemp(), MUTT)
        store = memory_store()
        summary = import_mbox(store, path)
        self.assertEqual((summary.folders, summary.messages, summary.skipped), (1, 2, 0))
        self.assertEqual(
            messages(store),
            [
                (
                    b"From: alice@example.test\r\nSubject: first\r\n\r\nHello,\r\nFrom the quoting\r\n>From twice\r\n",
                    {"\\Seen", "\\Answered", "\\Flagged", "work", "$Label1"},
                    1_599_904_800,
                ),
                (b"Subject: second\r\n\r\nbody\r\n", {"\\Deleted"}, 1_600_000_000),
            ],
        )
        self.assertEqual(summary.bytes, sum(len(m[0]) for m in messages(store)))

    def test_into_folder(self) -> None:
        """--folder names the folder, created (with its parents) when missing."""
        path = write(self.mktemp(), MUTT)
        store = maildir_store(self.mktemp())
        import_mbox(store, path, "Old/Mail")
        self.assertEqual(len(messages(store, "Old/Mail")), 2)
        self.assertEqual(messages(store), [])

    def test_directory(self) -> None:
        """A directory: every .mbox file, Thunderbird's extensionless files and .sbd directories; not indexes nor links."""
        root = self.mktemp()
        write(os.path.join(root, "INBOX.mbox"), MUTT)
        write(os.path.join(root, "Lists.sbd", "twisted"), MUTT)
        write(os.path.join(root, "Lists.msf"), b"// index, not mail")
        write(os.path.join(root, "Lists"), b"")
        write(os.path.join(root, ".imap", "INBOX", "dovecot.index"), MUTT)  # Dovecot's indexes: not mail
        elsewhere = write(os.path.abspath(self.mktemp()), MUTT)
        os.symlink(elsewhere, os.path.join(root, "linked.mbox"))  # a link to a file elsewhere: left alone
        store = memory_store()
        summary = import_mbox(store, root, "Imported")
        self.assertEqual(summary.messages, 4)
        self.assertEqual(len(messages(store, "Imported/INBOX")), 2)
        self.assertEqual(len(messages(store, "Imported/Lists/twisted")), 2)

    def test_uw_imap_pseudo_message(self) -> None:
        """UW-IMAP's first 'FOLDER INTERNAL DATA' message (X-IMAP:) is not imported; Dovecot's X-IMAPbase, X-UID are dropped."""
        data = (
            b"From MAILER-DAEMON Sat Sep 12 10:00:00 2020\n"
            b"Subject: DON'T DELETE THIS MESSAGE -- FOLDER INTERNAL DATA\n"
            b"X-IMAP: 1234567890 0000000002\n\n"
            b"This text is part of the internal format of your mail folder.\n\n"
            b"From a@b Sat Sep 12 10:00:00 2020\n"
            b"X-IMAPbase: 1 2\nX-UID: 1\nSubject: real\n\nmail\n"
        )
        path = write(self.mktemp(), data)
        store = memory_store()
        summary = import_mbox(store, path)
        self.assertEqual((summary.messages, summary.skipped), (1, 0))
        self.assertEqual(messages(store)[0][0], b"Subject: real\r\n\r\nmail\r\n")

    def test_broken_from_line(self) -> None:
        """A From line without sender or date still starts a message; its date comes from Date:, else now."""
        data = (
            b"From \n"
            b"Date: Tue, 15 Nov 1994 08:12:31 +0000\n"
            b"Subject: no date\n\n"
            b"x\n\n"
            b"From garbage here\n"
            b"Subject: nothing\n\n"
            b"y\n"
        )
        path = write(self.mktemp(), data)
        store = memory_store()
        summary = import_mbox(store, path)
        self.assertEqual((summary.messages, summary.skipped), (2, 0))
        [first, second] = messages(store)
        self.assertEqual(first[2], 784887151)
        self.assertEqual(second[0], b"Subject: nothing\r\n\r\ny\r\n")
        self.assertGreater(second[2], 1_700_000_000)

    def test_not_an_mbox(self) -> None:
        """A file that does not start with a From line is reported and nothing is stored from it."""
        path = write(self.mktemp(), b"Subject: a lone message\n\nbody\nFrom x Sat Sep 12 10:00:00 2020\n")
        store = memory_store()
        summary = import_mbox(store, path)
        self.assertEqual((summary.messages, summary.skipped), (0, 1))
        self.assertIn("not an mbox file", summary.problems[0])

    def test_empty_message_and_bad_keyword(self) -> None:
        """An empty message is skipped and counted; a keyword that is no IMAP atom is dropped, not the message."""
        data = (
            b"From a Sat Sep 12 10:00:00 2020\n\nFrom b Sat Sep 12 10:00:00 2020\nX-Keywords: ok (bad)\n\nz\n"
        )
        path = write(self.mktemp(), data)
        store = memory_store()
        summary = import_mbox(store, path)
        self.assertEqual((summary.messages, summary.skipped), (1, 1))
        self.assertEqual(messages(store)[0][1], {"ok"})

    def test_missing_file(self) -> None:
        with self.assertRaises(MigrationError) as caught:
            import_mbox(memory_store(), os.path.abspath(self.mktemp()))
        self.assertIn("cannot read", str(caught.exception))

    def test_large_message_spooled(self) -> None:
        """A message larger than the memory limit goes through a temporary file, removed afterwards, and in whole."""
        import tempfile

        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        body = b"x" * 1000 + b"\n"
        count = MEMORY_LIMIT // len(body) + 10
        path = write(self.mktemp(), b"From a Sat Sep 12 10:00:00 2020\nSubject: big\n\n" + body * count)
        store = maildir_store(self.mktemp())
        from txmail.migrate.mbox import import_mbox as run

        run(store, path, spool_dir=spool)
        [(data, _, _)] = messages(store)
        self.assertEqual(data, b"Subject: big\r\n\r\n" + body.replace(b"\n", b"\r\n") * count)
        self.assertEqual(os.listdir(spool), [])
        self.assertTrue(tempfile.gettempdir())
