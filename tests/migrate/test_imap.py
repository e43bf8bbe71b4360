"""
Import from another IMAP server (txmail.migrate.imap): the source is an
in-process txmail server (txmail.testing.TestServer) on loopback, the client
runs in a thread as the admin command runs it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.migrate._stores import USER, fill, memory_store, snapshot
from txmail.migrate import IMAPSource, ImportState, MigrationError, import_imap, state_path
from txmail.migrate._store import wait
from txmail.model import INBOX, SpecialUse
from txmail.testing import TestServer

PASSWORD = "source secret"


class IMAPImportTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = TestServer()
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.server.add_user(USER, PASSWORD)
        self.source_store = yield self.server.stores.store_for(USER)
        fill(self.source_store)
        self.data_dir = os.path.abspath(self.mktemp())
        self.dest = memory_store()
        self.lines: list[str] = []

    def source(self, password: str = PASSWORD, port: int | None = None) -> IMAPSource:
        host, real_port = self.server.imap_address
        return IMAPSource(host, port or real_port, USER, password, security="none", timeout=10)

    def state(self) -> ImportState:
        return ImportState(state_path(self.data_dir, USER, self.source()))

    def run_import(self, max_messages: int | None = None, source: IMAPSource | None = None) -> Any:
        src = source or self.source()
        return threads.deferToThread(
            import_imap, self.dest, src, self.state(), report=self.lines.append, max_messages=max_messages
        )

    def append_source(self, folder: str, data: bytes, flags: Any = (), date: float = 1_700_000_000) -> None:
        box = wait(self.source_store.get_mailbox(folder))
        wait(box.append(data, flags, date))

    @defer.inlineCallbacks
    def test_copies_everything(self) -> Any:
        """Every folder, message, flag, keyword and internal date is copied; roles kept; the summary counts them."""
        summary = yield self.run_import()
        expected = snapshot(self.source_store, subscriptions=False)
        self.assertEqual(snapshot(self.dest, subscriptions=False), expected)
        self.assertEqual(summary.messages, 9)
        self.assertEqual(summary.skipped, 0)
        self.assertEqual(summary.folders, len(expected))
        self.assertEqual(summary.bytes, sum(m[3] for f in expected.values() for m in f["messages"]))
        self.assertEqual(wait(self.dest.special_use_mailbox(SpecialUse.SENT)), "Sent")
        self.assertIn("INBOX: copied 3 messages, 189 bytes", self.lines)

    @defer.inlineCallbacks
    def test_source_unchanged(self) -> Any:
        """The import changes nothing on the source: no \\Seen set, nothing expunged."""
        before = snapshot(self.source_store)
        yield self.run_import()
        self.assertEqual(snapshot(self.source_store), before)

    @defer.inlineCallbacks
    def test_second_run_copies_only_new(self) -> Any:
        """Run again: nothing is duplicated; a message added on the source since is the only one copied."""
        yield self.run_import()
        first = snapshot(self.dest)
        again = yield self.run_import()
        self.assertEqual((again.messages, again.duplicates), (0, 0))
        self.assertEqual(snapshot(self.dest), first)
        self.append_source(
            "Archive/2024", b"Subject: later\r\n\r\nnew\r\n", {"\\Flagged", "later"}, 1_700_000_000
        )
        third = yield self.run_import()
        self.assertEqual(third.messages, 1)
        box = wait(self.dest.get_mailbox("Archive/2024"))
        [_, new] = wait(box.list_messages())
        self.assertEqual(wait(box.read_message(new.uid)), b"Subject: later\r\n\r\nnew\r\n")
        self.assertEqual(new.flags, {"\\Flagged", "later"})
        self.assertEqual(new.internal_date, 1_700_000_000)

    @defer.inlineCallbacks
    def test_interrupted_run_resumes(self) -> Any:
        """A run stopped after 4 messages records them; the next goes on from there, nothing twice."""
        first = yield self.run_import(max_messages=4)
        self.assertEqual(first.messages, 4)
        self.assertTrue(any("stopped after 4 messages" in line for line in self.lines))
        with open(state_path(self.data_dir, USER, self.source())) as f:
            recorded = json.load(f)["folders"]
        self.assertEqual(recorded["INBOX"]["last_uid"], 3)
        rest = yield self.run_import()
        self.assertEqual(rest.messages, 5)
        self.assertEqual(rest.duplicates, 0)
        self.assertEqual(
            snapshot(self.dest, subscriptions=False), snapshot(self.source_store, subscriptions=False)
        )

    @defer.inlineCallbacks
    def test_killed_before_recording(self) -> Any:
        """A run killed after storing a message but before recording it: the next run does not store it twice."""
        yield self.run_import(max_messages=2)
        state = self.state()
        uidvalidity, last = state.get("INBOX")  # type: ignore[misc]
        state.set("INBOX", uidvalidity, last - 1)  # the second message stored, not recorded
        summary = yield self.run_import()
        self.assertEqual((summary.messages, summary.duplicates), (7, 1))
        self.assertEqual(
            snapshot(self.dest, subscriptions=False), snapshot(self.source_store, subscriptions=False)
        )

    def test_damaged_state_file(self) -> None:
        """A state file that is not what the import writes stops it with a clear error."""
        path = state_path(self.data_dir, USER, self.source())
        os.makedirs(os.path.dirname(path))
        for text in ("{not json", '{"folders": {"INBOX": {"last_uid": 3}}}', "[1]"):
            with open(path, "w") as f:
                f.write(text)
            with self.assertRaises(MigrationError) as caught:
                ImportState(path)
            self.assertIn(path, str(caught.exception))

    @defer.inlineCallbacks
    def test_uidvalidity_changed(self) -> Any:
        """A source folder re-created (new UIDVALIDITY) is copied again, without the messages already there."""
        yield self.run_import()
        wait(self.source_store.delete_mailbox("Drafts"))
        wait(self.source_store.create_mailbox("Drafts"))
        self.append_source("Drafts", b"Subject: draft\r\n\r\nnot yet\r\n", {"\\Draft"}, 1_600_000_300)
        self.append_source("Drafts", b"Subject: another\r\n\r\nx\r\n", (), 1_600_000_301)
        summary = yield self.run_import()
        self.assertEqual((summary.messages, summary.duplicates), (1, 1))
        box = wait(self.dest.get_mailbox("Drafts"))
        self.assertEqual(len(wait(box.list_messages())), 2)
        self.assertTrue(any("UIDVALIDITY changed" in line for line in self.lines))

    @defer.inlineCallbacks
    def test_lost_state_no_duplicates(self) -> Any:
        """Without its state file, a second run finds the messages already there by Message-ID, size and date."""
        yield self.run_import()
        os.unlink(state_path(self.data_dir, USER, self.source()))
        summary = yield self.run_import()
        self.assertEqual((summary.messages, summary.duplicates), (0, 9))
        self.assertEqual(
            snapshot(self.dest, subscriptions=False), snapshot(self.source_store, subscriptions=False)
        )

    @defer.inlineCallbacks
    def test_large_message_in_pieces(self) -> Any:
        """A message larger than a FETCH piece comes over in several partial FETCHes, whole and exact."""
        from txmail.migrate import imap

        self.patch(imap, "FETCH_CHUNK", 1000)
        big = b"Subject: big\r\n\r\n" + b"".join(b"line %05d\r\n" % i for i in range(1000))
        self.append_source(INBOX, big, {"\\Seen"}, 1_650_000_000)
        summary = yield self.run_import()
        self.assertEqual(summary.messages, 10)
        box = wait(self.dest.get_mailbox(INBOX))
        [last] = wait(box.list_messages())[-1:]
        self.assertEqual(wait(box.read_message(last.uid)), big)
        self.assertEqual((last.flags, last.internal_date), ({"\\Seen"}, 1_650_000_000))

    @defer.inlineCallbacks
    def test_duplicates_counted_per_copy(self) -> Any:
        """Two identical messages on the source and one already here: the second still comes in."""
        yield self.run_import()
        os.unlink(state_path(self.data_dir, USER, self.source()))
        self.append_source(
            "Sent", b"Subject: sent\r\nTo: x@example.test\r\n\r\nbody\r\n", {"\\Seen"}, 1_600_000_500
        )
        summary = yield self.run_import()
        self.assertEqual((summary.messages, summary.duplicates), (1, 9))
        self.assertEqual(len(wait(wait(self.dest.get_mailbox("Sent")).list_messages())), 2)

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        """A refused login is a MigrationError naming the login; nothing is imported."""
        with self.assertRaises(MigrationError) as caught:
            yield self.run_import(source=self.source(password="wrong"))
        self.assertIn(f"login as {USER} refused", str(caught.exception))
        self.assertEqual([f.name for f in wait(self.dest.list_mailboxes("*"))], [INBOX])

    @defer.inlineCallbacks
    def test_password_not_ascii(self) -> Any:
        """A password LOGIN cannot carry goes in AUTHENTICATE PLAIN (UTF-8)."""
        self.server.directory.set_password(USER, "mot de passe \u00e9t\u00e9")
        summary = yield self.run_import(source=self.source(password="mot de passe \u00e9t\u00e9"))
        self.assertEqual(summary.messages, 9)

    @defer.inlineCallbacks
    def test_unreachable(self) -> Any:
        """A server that cannot be reached is a MigrationError naming it."""
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaises(MigrationError) as caught:
            yield self.run_import(source=self.source(port=port))
        self.assertIn(f"cannot connect to 127.0.0.1:{port}", str(caught.exception))


class IMAPImportTLSTests(TestCase):
    """The import over STARTTLS and implicit TLS: certificates checked unless --insecure."""

    timeout = 60

    @defer.inlineCallbacks
    def start(self, **settings: Any) -> Any:
        self.ca, cert, key = make_certificate(self.mktemp(), "mx.example.test")
        server = TestServer(
            settings={"tls_cert": cert, "tls_key": key, "plaintext_auth": "never", **settings}
        )
        yield server.start()
        self.addCleanup(server.stop)
        server.add_user(USER, PASSWORD)
        store = yield server.stores.store_for(USER)
        wait(wait(store.get_mailbox(INBOX)).append(b"Subject: tls\r\n\r\nx\r\n", ("\\Seen",), 1_600_000_000))
        return server

    def run_import(self, server: Any, **options: Any) -> Any:
        host, port = server.imap_address
        source = IMAPSource(host, port, USER, PASSWORD, timeout=10, **options)
        state = ImportState(os.path.join(os.path.abspath(self.mktemp()), "state.json"))
        self.dest = memory_store()
        return threads.deferToThread(import_imap, self.dest, source, state)

    @defer.inlineCallbacks
    def test_starttls(self) -> Any:
        """STARTTLS with the server's CA: the login goes over TLS (the server refuses it in plain text)."""
        server = yield self.start()
        summary = yield self.run_import(server, security="starttls", cafile=self.ca)
        self.assertEqual(summary.messages, 1)
        with self.assertRaises(MigrationError) as caught:
            yield self.run_import(server, security="none")
        self.assertIn("refused", str(caught.exception))

    @defer.inlineCallbacks
    def test_untrusted_certificate(self) -> Any:
        """A certificate the system does not trust stops the import, naming --cafile and --insecure; --insecure goes on."""
        server = yield self.start()
        with self.assertRaises(MigrationError) as caught:
            yield self.run_import(server, security="starttls")
        self.assertIn("is not trusted", str(caught.exception))
        self.assertIn("--insecure", str(caught.exception))
        summary = yield self.run_import(server, security="starttls", insecure=True)
        self.assertEqual(summary.messages, 1)

    @defer.inlineCallbacks
    def test_implicit_tls(self) -> Any:
        server = yield self.start(imap=["ssl:0:interface=127.0.0.1"])
        summary = yield self.run_import(server, security="tls", cafile=self.ca)
        self.assertEqual(summary.messages, 1)
        self.assertEqual(
            snapshot(self.dest)[INBOX]["messages"][0][:3],
            (b"Subject: tls\r\n\r\nx\r\n", ["\\Seen"], 1_600_000_000),
        )


class FakeConnection:
    """Answers as imaplib hands a server's responses over, for shapes txmail's own server does not send."""

    def __init__(self, capabilities: tuple[str, ...] = ("IMAP4REV1", "NAMESPACE")) -> None:
        self.capabilities = capabilities
        self.lists: list[Any] = []
        self.fetches: list[Any] = []

    def namespace(self) -> Any:
        return "OK", [b'(("INBOX." ".")) NIL (("#shared." "."))']

    def list(self, directory: str, pattern: str) -> Any:
        return "OK", self.lists

    def uid(self, command: str, *args: str) -> Any:
        return "OK", self.fetches


class ServerShapesTests(TestCase):
    def test_courier_style_folders(self) -> None:
        """The prefix INBOX. goes, '.' becomes '/', shared and \\Noselect folders are left out, names not in modified UTF-7 kept as sent."""
        from txmail.migrate._store import Summary
        from txmail.migrate.imap import list_folders

        conn = FakeConnection()
        conn.lists = [
            b'(\\HasChildren) "." INBOX',
            b'(\\HasNoChildren \\Sent) "." "INBOX.Sent Items"',
            (b'(\\HasNoChildren) "." {18}', b"INBOX.Entw&APw-rfe"),
            b'(\\Noselect \\HasChildren) "." "INBOX.Archive"',
            b'(\\HasNoChildren \\Archive) "." "INBOX.Archive.2024"',
            b'(\\HasNoChildren) "." "#shared.team.Board"',
            b'(\\HasNoChildren) "." "INBOX.a/b"',
            b'(\\HasNoChildren) "." "INBOX.bad&Jjo"',
            b'(\\HasNoChildren) "." "INBOX..."',
        ]
        summary = Summary()
        folders = list_folders(conn, summary)  # type: ignore[arg-type]
        self.assertEqual(
            [(f.raw, f.name, f.role) for f in folders],
            [
                (b"INBOX", "INBOX", None),
                (b"INBOX.Archive.2024", "Archive/2024", SpecialUse.ARCHIVE),
                (b"INBOX.Entw&APw-rfe", "Entwürfe", None),
                (b"INBOX.Sent Items", "Sent Items", SpecialUse.SENT),
                (b"INBOX.a/b", "a_b", None),
                (b"INBOX.bad&Jjo", "bad&Jjo", None),
            ],
        )
        self.assertEqual(summary.skipped, 1)

    def test_split_fetch_responses(self) -> None:
        """FLAGS in another FETCH response than BODY[] still count; an unsolicited one for another message does not."""
        from txmail.migrate._store import Spool
        from txmail.migrate.imap import _fetch_message

        conn = FakeConnection()
        conn.fetches = [
            b"4 (UID 12 FLAGS (\\Deleted))",
            (b'3 (UID 9 INTERNALDATE "01-Jan-1970 00:01:00 +0000" BODY[]<0> {7}', b"S: x\n\r\n"),
            b")",
            b"3 (FLAGS (\\Seen \\Recent kw))",
        ]
        spool = Spool()
        self.addCleanup(spool.close)
        self.assertEqual(_fetch_message(conn, 9, spool), ({"\\Seen", "kw"}, 60.0))  # type: ignore[arg-type]
        self.assertEqual(spool.source().read(), b"S: x\r\n\r\n")

    def test_gone_and_empty(self) -> None:
        """No answer for the UID: gone (None); an answer without content: an error the import counts."""
        from txmail.migrate._store import Spool
        from txmail.migrate.imap import _fetch_message, _NoBody

        conn = FakeConnection()
        spool = Spool()
        conn.fetches = [b"4 (UID 12 FLAGS ())"]
        self.assertIsNone(_fetch_message(conn, 9, spool))  # type: ignore[arg-type]
        conn.fetches = [b"3 (UID 9 FLAGS () BODY[]<0> NIL)"]
        with self.assertRaises(_NoBody):
            _fetch_message(conn, 9, spool)  # type: ignore[arg-type]


class FromMaildirServerTests(TestCase):
    """
    The import from the real txmail service over its Maildir store, whose
    files another program wrote with LF line ends (as on a Dovecot server
    fed by Postfix): served, and so copied, with CRLF, in partial FETCHes
    whose offsets count the CRLFs.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_lf_files_in_pieces(self) -> Any:
        from tests.e2e._server import start_server
        from txmail.migrate import imap

        self.patch(imap, "FETCH_CHUNK", 700)
        server = yield start_server(self, imap=["tcp:0:interface=127.0.0.1"])
        server.directory.add_user(USER, PASSWORD)
        inbox = os.path.join(server.settings.data_dir, "mail", "example.test", "alice")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(inbox, sub), exist_ok=True)
        big = b"Subject: long\nMessage-ID: <big@x>\n\n" + b"".join(b"line %04d\n" % i for i in range(500))
        small = b"Subject: short\n\nhi\n"
        for name, data, flags in (("1700000000.A.host", big, ":2,S"), ("1700000001.B.host", small, ":2,Fa")):
            path = os.path.join(inbox, "cur", name + flags)
            with open(path, "wb") as f:
                f.write(data)
            os.utime(path, (1_700_000_000, 1_700_000_000))
        with open(os.path.join(inbox, "dovecot-keywords"), "wb") as f:
            f.write(b"0 $Label2\n")
        host, port = server.address("imap")
        source = IMAPSource(host, port, USER, PASSWORD, security="none", timeout=10)
        state = ImportState(os.path.join(os.path.abspath(self.mktemp()), "state.json"))
        dest = memory_store()
        summary = yield threads.deferToThread(import_imap, dest, source, state)
        self.assertEqual((summary.messages, summary.skipped), (2, 0))
        box = wait(dest.get_mailbox(INBOX))
        got = [(wait(box.read_message(m.uid)), m.flags, m.internal_date) for m in wait(box.list_messages())]
        self.assertEqual(
            got,
            [
                (big.replace(b"\n", b"\r\n"), {"\\Seen"}, 1_700_000_000),
                (small.replace(b"\n", b"\r\n"), {"\\Flagged", "$Label2"}, 1_700_000_000),
            ],
        )
        self.assertEqual(summary.bytes, len(big) + big.count(b"\n") + len(small) + small.count(b"\n"))
