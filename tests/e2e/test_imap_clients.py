"""
End to end: IMAP clients nobody here wrote, against the real service on loopback.

Theory of operation
-------------------
Each test starts the service with an IMAP listener on 127.0.0.1 port 0
(``tests.e2e._server.start_server``), adds one user, delivers mail over SMTP
to the MTA port and then lets a third-party client work on the mailbox:

* ``imapclient`` (PyPI, a test dependency) parses every response with its own
  grammar: ENVELOPE and BODYSTRUCTURE become objects, so a syntax slip in our
  serializer (RFC 3501 section 7.4.2) fails the parse or the assertions.  It
  also drives LIST with SPECIAL-USE (RFC 6154), APPEND with flags and an
  internal date, COPY, MOVE (RFC 6851), EXPUNGE, IDLE (RFC 2177) and STATUS.
* ``mbsync`` (Debian's isync) syncs the whole folder tree down to a Maildir
  and, after local changes, back up: new folder (CREATE), new message
  (APPEND), a flag changed locally (STORE \\Seen).
* ``offlineimap`` (Debian's offlineimap3) syncs the tree down to a Maildir.

The Debian clients run as subprocesses with a generated configuration in a
temporary directory, a 60 s timeout and their verbose/debug output captured;
that output is printed in every assertion message.  A test whose client is not
installed is skipped and says which package provides it (``.ci/run`` installs
them best-effort).  Plaintext LOGIN on loopback is allowed by txmail's default
plaintext policy, so no TLS is set up.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import email.header
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests.e2e._server import start_server

try:
    import imapclient
    from imapclient.imapclient import (
        ARCHIVE,
        DELETED,
        DRAFT,
        DRAFTS,
        FLAGGED,
        JUNK,
        RECENT,
        SEEN,
        SENT,
        TRASH,
    )
except ImportError:  # pragma: no cover - imapclient is in the test extra
    imapclient = None

__all__ = ["IMAPClientLibraryTests", "MbsyncTests", "OfflineIMAPTests"]

USER = "alice@example.test"
PASSWORD = "correct-horse-battery"
ENDPOINT = "tcp:0:interface=127.0.0.1"
SUBPROCESS_TIMEOUT = 60

#: "Grüße aus Köln: report €5" as an RFC 2047 encoded-word (B encoding, UTF-8).
UNICODE_SUBJECT = "Grüße aus Köln: report €5"
ENCODED_SUBJECT = email.header.Header(UNICODE_SUBJECT, "utf-8").encode()
ATTACHMENT = bytes(range(256)) * 4
BOUNDARY = "=-=-boundary-42-=-="


def simple_message(subject: str, body: str = "Hello\r\n") -> bytes:
    """A one-part text/plain message from bob to alice."""
    return (
        f"From: Bob <bob@remote.test>\r\nTo: Alice <{USER}>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}"
    ).encode()


def multipart_message() -> bytes:
    """multipart/mixed: a text/plain part and a base64 application/octet-stream attachment."""
    encoded = base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n")
    return (
        "From: =?utf-8?q?J=C3=BCrgen?= <juergen@remote.test>\r\n"
        f"To: Alice <{USER}>\r\n"
        "Cc: carol@remote.test\r\n"
        f"Subject: {ENCODED_SUBJECT}\r\n"
        "Date: Tue, 03 Mar 2026 10:20:30 +0100\r\n"
        "Message-ID: <multi.1@remote.test>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{BOUNDARY}"\r\n'
        "\r\n"
        "This is a multi-part message in MIME format.\r\n"
        f"--{BOUNDARY}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
        "Hallo Alice,\r\nanbei die Datei.\r\n"
        f"--{BOUNDARY}\r\n"
        'Content-Type: application/octet-stream; name="data.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="data.bin"\r\n'
        "\r\n"
        f"{encoded}"
        f"--{BOUNDARY}--\r\n"
    ).encode()


class _ClientTestCase(TestCase):
    """Start the service with IMAP on loopback and one user; helpers for SMTP and imaplib."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, imap=[ENDPOINT])
        self.server.directory.add_user(USER, PASSWORD)
        self.host, self.port = self.server.address("imap")

    def deliver(self, *bodies: bytes) -> None:
        """Send *bodies* to the user over SMTP (blocking: call it in a thread)."""
        with smtplib.SMTP(*self.server.address("mta"), timeout=20) as s:
            for body in bodies:
                s.sendmail("bob@remote.test", [USER], body)

    def imaplib_client(self) -> imaplib.IMAP4:
        """A logged-in imaplib client (blocking), logged out at cleanup."""
        client = imaplib.IMAP4(self.host, self.port, timeout=20)
        self.addCleanup(_shutdown, client)
        _ok(client.login(USER, PASSWORD))
        return client

    def in_thread(self, f: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return deferToThread(f, *args)


def _shutdown(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()


def _ok(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def _client_env(home: str) -> dict[str, str]:
    """
    The environment of a Debian client program: our HOME, and none of the
    Python variables of the test run (trial -j sets PYTHONPATH, which would
    make Debian's python3 load this interpreter's extension modules).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["HOME"] = home
    return env


def _run(argv: list[str], cwd: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a client with a timeout; its exit status and combined output (for assertion messages)."""
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=SUBPROCESS_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return -1, f"TIMEOUT after {SUBPROCESS_TIMEOUT}s\n" + out.decode(errors="replace")
    output = "--- stdout ---\n" + proc.stdout.decode(errors="replace")
    output += "\n--- stderr ---\n" + proc.stderr.decode(errors="replace")
    return proc.returncode, output


def _maildir_messages(folder: str) -> list[str]:
    """Paths of the message files in a Maildir folder (new/ and cur/)."""
    out = []
    for sub in ("new", "cur"):
        path = os.path.join(folder, sub)
        if os.path.isdir(path):
            out.extend(os.path.join(path, n) for n in sorted(os.listdir(path)))
    return out


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _new_maildir(path: str) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)


class IMAPClientLibraryTests(_ClientTestCase):
    """imapclient (PyPI) parses our responses with its own grammar."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if imapclient is None:
            raise SkipTest("imapclient is not installed: pip install imapclient (the 'test' extra)")
        yield super().setUp()

    def client(self) -> Any:
        """A logged-in imapclient.IMAPClient (blocking), logged out at cleanup."""
        c = imapclient.IMAPClient(self.host, port=self.port, ssl=False, timeout=20)
        # LOGOUT waits for the server's answer: not in the reactor thread.
        self.addCleanup(deferToThread, _logout, c)
        c.login(USER, PASSWORD)
        return c

    @defer.inlineCallbacks
    def test_special_use_folders(self) -> Any:
        """A new user's LIST shows INBOX and the five RFC 6154 special-use folders with their flags."""

        def run() -> Any:
            c = self.client()
            return c.capabilities(), c.list_folders(), c.find_special_folder(SENT)

        capabilities, folders, sent = yield self.in_thread(run)
        for cap in (b"IMAP4REV1", b"IDLE", b"MOVE", b"UIDPLUS", b"SPECIAL-USE"):
            self.assertIn(cap, capabilities)
        by_name = {name: (flags, delimiter) for flags, delimiter, name in folders}
        self.assertEqual(set(by_name), {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"})
        for name, flag in [
            ("Sent", SENT),
            ("Drafts", DRAFTS),
            ("Trash", TRASH),
            ("Junk", JUNK),
            ("Archive", ARCHIVE),
        ]:
            self.assertIn(flag, by_name[name][0], name)
        self.assertEqual({d for _, d in by_name.values()}, {b"/"})
        self.assertEqual(sent, "Sent")

    @defer.inlineCallbacks
    def test_fetch_envelope_and_bodystructure(self) -> Any:
        """
        SEARCH SUBJECT matches the decoded RFC 2047 subject; imapclient parses
        ENVELOPE (RFC 3501 section 7.4.2) and a multipart BODYSTRUCTURE with
        an attachment; BODY.PEEK[] returns the stored bytes and sets no \\Seen.
        """
        raw = multipart_message()
        yield self.in_thread(self.deliver, simple_message("plain one"), raw, simple_message("plain two"))

        def run() -> dict[str, Any]:
            c = self.client()
            out: dict[str, Any] = {"select": c.select_folder("INBOX")}
            out["search"] = c.search(["SUBJECT", "report"])
            out["search_utf8"] = c.search(["SUBJECT", "Köln"], charset="UTF-8")
            uid = out["search"][0] if out["search"] else 2
            out["fetch"] = c.fetch(
                [uid], ["ENVELOPE", "BODYSTRUCTURE", "BODY.PEEK[]", "FLAGS", "RFC822.SIZE"]
            )
            out["flags_after"] = c.get_flags([uid])
            return out

        out = yield self.in_thread(run)
        self.assertEqual(out["select"][b"EXISTS"], 3)
        self.assertEqual(out["search"], [2])
        self.assertEqual(out["search_utf8"], [2])
        data = out["fetch"][2]
        envelope = data[b"ENVELOPE"]
        # imapclient converts the Date: field to a naive datetime in local time.
        self.assertEqual(
            envelope.date.astimezone(datetime.UTC),
            datetime.datetime(2026, 3, 3, 9, 20, 30, tzinfo=datetime.UTC),
        )
        # ENVELOPE carries the subject as it is in the header: still encoded.
        subject = envelope.subject.decode()
        decoded = str(email.header.make_header(email.header.decode_header(subject)))
        self.assertEqual(decoded, UNICODE_SUBJECT)
        (sender,) = envelope.from_
        self.assertEqual((sender.mailbox, sender.host), (b"juergen", b"remote.test"))
        self.assertEqual(sender.name, b"=?utf-8?q?J=C3=BCrgen?=")
        # RFC 3501: sender and reply-to default to from.
        self.assertEqual(envelope.sender, envelope.from_)
        self.assertEqual(envelope.reply_to, envelope.from_)
        (to,) = envelope.to
        self.assertEqual((to.name, to.mailbox, to.host), (b"Alice", b"alice", b"example.test"))
        (cc,) = envelope.cc
        self.assertEqual((cc.name, cc.mailbox, cc.host), (None, b"carol", b"remote.test"))
        self.assertIsNone(envelope.bcc)
        self.assertIsNone(envelope.in_reply_to)
        self.assertEqual(envelope.message_id, b"<multi.1@remote.test>")

        structure = data[b"BODYSTRUCTURE"]
        self.assertTrue(structure.is_multipart)
        parts, subtype = structure[0], structure[1]
        self.assertEqual(subtype.upper(), b"MIXED")
        self.assertEqual(len(parts), 2)
        text, attachment = parts
        self.assertEqual((text[0].upper(), text[1].upper()), (b"TEXT", b"PLAIN"))
        self.assertEqual([v.upper() for v in text[2]], [b"CHARSET", b"UTF-8"])
        self.assertEqual(text[5].upper(), b"8BIT")
        # RFC 2046 section 5.1.1: the CRLF before a boundary delimiter belongs to the delimiter.
        self.assertEqual(text[6], len(b"Hallo Alice,\r\nanbei die Datei."))
        self.assertEqual(text[7], 2)  # body-fld-lines for text/*
        self.assertEqual((attachment[0].upper(), attachment[1].upper()), (b"APPLICATION", b"OCTET-STREAM"))
        self.assertEqual(attachment[2][0].upper(), b"NAME")
        self.assertEqual(attachment[2][1], b"data.bin")
        self.assertEqual(attachment[5].upper(), b"BASE64")
        # Extension data of a single part: md5, disposition, language, location.
        disposition = attachment[8]
        self.assertEqual(disposition[0].upper(), b"ATTACHMENT")
        self.assertEqual([v.lower() for v in disposition[1]], [b"filename", b"data.bin"])
        # Multipart extension data: the boundary parameter.
        params = structure[2]
        self.assertEqual(params[0].upper(), b"BOUNDARY")
        self.assertEqual(params[1], BOUNDARY.encode())

        body = data[b"BODY[]"]
        self.assertTrue(body.endswith(raw[raw.index(b"From: =?utf-8") :]), body[:300])
        self.assertEqual(data[b"RFC822.SIZE"], len(body))
        self.assertNotIn(b"\\Seen", data[b"FLAGS"])
        self.assertNotIn(b"\\Seen", out["flags_after"][2])

    @defer.inlineCallbacks
    def test_flags_append_copy_move_expunge_status(self) -> Any:
        """add_flags, APPEND with flags and internal date, COPY, MOVE, EXPUNGE and STATUS as imapclient sees them."""
        yield self.in_thread(
            self.deliver, simple_message("one"), simple_message("two"), simple_message("three")
        )
        when = datetime.datetime(
            2025, 12, 24, 18, 30, 0, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        )

        def run() -> dict[str, Any]:
            c = self.client()
            out: dict[str, Any] = {}
            c.select_folder("INBOX")
            out["add_flags"] = c.add_flags([1], [FLAGGED, b"$Label1"])
            out["flags"] = c.get_flags([1, 2])
            out["append"] = c.append("Drafts", simple_message("draft"), flags=[DRAFT, SEEN], msg_time=when)
            out["copy"] = c.copy([1, 2], "Archive")
            out["move"] = c.move([3], "Trash")
            out["after_move"] = c.search("ALL")
            c.set_flags([2], [DELETED])
            out["expunge"] = c.expunge()
            out["after_expunge"] = c.search("ALL")
            out["inbox_status"] = c.folder_status("INBOX", ["MESSAGES", "UIDNEXT", "UNSEEN"])
            out["archive_status"] = c.folder_status("Archive")
            out["trash_status"] = c.folder_status("Trash", ["MESSAGES"])
            c.select_folder("Drafts", readonly=True)
            out["draft"] = c.fetch(
                c.search("ALL"), ["FLAGS", "INTERNALDATE", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"]
            )
            c.select_folder("Archive", readonly=True)
            out["archive"] = c.fetch(c.search("ALL"), ["FLAGS", "ENVELOPE"])
            return out

        out = yield self.in_thread(run)
        self.assertIn(FLAGGED, out["add_flags"][1])
        self.assertIn(b"$Label1", out["add_flags"][1])
        self.assertEqual(set(out["flags"][1]) - {RECENT}, {FLAGGED, b"$Label1"})
        self.assertEqual(set(out["flags"][2]) - {RECENT}, set())
        self.assertRegex(out["append"], rb"^\[APPENDUID \d+ 1\]")
        # imaplib (under imapclient) hands back the untagged data of a UID command, not the
        # tagged COPYUID text, so the copy shows in STATUS below.
        self.assertEqual(out["after_move"], [1, 2])
        self.assertEqual(out["after_expunge"], [1])
        self.assertIn((2, b"EXPUNGE"), out["expunge"][1])
        self.assertEqual(out["inbox_status"], {b"MESSAGES": 1, b"UIDNEXT": 4, b"UNSEEN": 1})
        self.assertEqual(out["archive_status"][b"MESSAGES"], 2)
        self.assertEqual(out["archive_status"][b"UIDNEXT"], 3)
        self.assertIn(b"UIDVALIDITY", out["archive_status"])
        self.assertEqual(out["trash_status"], {b"MESSAGES": 1})
        (draft,) = out["draft"].values()
        self.assertEqual(set(draft[b"FLAGS"]) - {RECENT}, {DRAFT, SEEN})
        # imapclient gives INTERNALDATE as a naive datetime in local time.
        internal = draft[b"INTERNALDATE"]
        if internal.tzinfo is None:
            internal = internal.astimezone()
        self.assertEqual(internal, when)
        self.assertEqual(draft[b"BODY[HEADER.FIELDS (SUBJECT)]"], b"Subject: draft\r\n\r\n")
        archived = sorted(out["archive"].values(), key=lambda d: d[b"ENVELOPE"].subject)
        self.assertEqual([d[b"ENVELOPE"].subject for d in archived], [b"one", b"two"])
        self.assertIn(FLAGGED, archived[0][b"FLAGS"])  # COPY keeps flags (RFC 3501 6.4.7)

    @defer.inlineCallbacks
    def test_idle_sees_smtp_delivery(self) -> Any:
        """IDLE (RFC 2177): a message delivered over SMTP meanwhile is pushed as EXISTS."""
        yield self.in_thread(self.deliver, simple_message("before"))

        def run() -> dict[str, Any]:
            c = self.client()
            out: dict[str, Any] = {"select": c.select_folder("INBOX")}
            c.idle()
            self.deliver(simple_message("during idle"))
            responses: list[Any] = []
            # idle_check returns as soon as something arrives; EXISTS and RECENT may come apart.
            for _ in range(5):
                responses.extend(c.idle_check(timeout=10))
                if any(r[1:2] == (b"EXISTS",) for r in responses):
                    break
            out["responses"] = responses
            out["done"] = c.idle_done()
            out["search"] = c.search(["SUBJECT", "during idle"])
            return out

        out = yield self.in_thread(run)
        self.assertEqual(out["select"][b"EXISTS"], 1)
        self.assertIn((2, b"EXISTS"), out["responses"])
        self.assertEqual(out["search"], [2])


def _logout(c: Any) -> None:
    with contextlib.suppress(Exception):
        c.logout()


def _mbsync_version(mbsync: str) -> tuple[int, ...]:
    out = subprocess.run([mbsync, "--version"], capture_output=True, timeout=SUBPROCESS_TIMEOUT).stdout
    m = re.search(rb"(\d+)\.(\d+)(?:\.(\d+))?", out)
    if m is None:
        return (0,)
    return tuple(int(g) for g in m.groups() if g is not None)


class MbsyncTests(_ClientTestCase):
    """Debian's mbsync (isync) syncs the folder tree down to a Maildir and local changes back up."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        mbsync = shutil.which("mbsync")
        if mbsync is None:
            raise SkipTest("mbsync is not installed: apt-get install isync")
        self.mbsync: str = mbsync
        yield super().setUp()
        self.home = os.path.abspath(self.mktemp())
        self.maildir = os.path.join(self.home, "Mail")
        os.makedirs(self.maildir)
        self.rc = os.path.join(self.home, "mbsyncrc")
        # isync 1.5 renamed SSLType to TLSType (the old name is still read, with a warning).
        version = _mbsync_version(self.mbsync)
        tls_key = "TLSType" if version >= (1, 5) else "SSLType"
        # Far/Near appeared in isync 1.4 (Master/Slave before it).
        far, near = ("Far", "Near") if version >= (1, 4) else ("Master", "Slave")
        _write_private(
            self.rc,
            "\n".join(
                [
                    "IMAPAccount txmail",
                    f"Host {self.host}",
                    f"Port {self.port}",
                    f'User "{USER}"',
                    f'Pass "{PASSWORD}"',
                    f"{tls_key} None",
                    "AuthMechs LOGIN",
                    "Timeout 20",
                    "",
                    "IMAPStore remote",
                    "Account txmail",
                    "",
                    "MaildirStore local",
                    f"Path {self.maildir}/",
                    f"Inbox {self.maildir}/INBOX",
                    "SubFolders Verbatim",
                    "",
                    "Channel txmail",
                    f"{far} :remote:",
                    f"{near} :local:",
                    "Patterns *",
                    "Create Both",
                    "SyncState *",
                    "",
                ]
            ),
        )

    def sync(self) -> tuple[int, str]:
        """Run ``mbsync -V -D... -a`` once (blocking); its status and output."""
        # -Dn: network (protocol) trace, so a failure shows the IMAP exchange.
        return _run(
            [self.mbsync, "-c", self.rc, "-V", "-Dn", "-a"],
            cwd=self.home,
            env=_client_env(self.home),
        )

    def setup_server_tree(self) -> None:
        """INBOX with three messages over SMTP; Projects/2026 made by CREATE holding one."""
        self.deliver(simple_message("inbox one"), simple_message("inbox two"), simple_message("inbox three"))
        c = self.imaplib_client()
        _ok(c.create("Projects/2026"))
        _ok(c.append("Projects/2026", None, None, simple_message("project plan")))
        _ok(c.select("INBOX"))
        _ok(c.store("1", "+FLAGS", "(\\Flagged)"))
        c.logout()

    @defer.inlineCallbacks
    def test_sync_down_then_up(self) -> Any:
        """
        (a) The server's folder tree and messages arrive in the local Maildir;
        (b) a local new folder, a new message and a locally set \\Seen flag
        reach the server on the next run.
        """
        yield self.in_thread(self.setup_server_tree)
        status, output = yield self.in_thread(self.sync)
        self.assertEqual(status, 0, output)

        inbox = os.path.join(self.maildir, "INBOX")
        project = os.path.join(self.maildir, "Projects", "2026")
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertTrue(os.path.isdir(os.path.join(self.maildir, name, "cur")), name + "\n" + output)
        inbox_files = _maildir_messages(inbox)
        self.assertEqual(len(inbox_files), 3, output)
        subjects = sorted(re.search(rb"Subject: (.*)\r?\n", _read(p)).group(1) for p in inbox_files)
        self.assertEqual(subjects, [b"inbox one", b"inbox three", b"inbox two"], output)
        # The server's \Flagged became the Maildir F flag (info ":2,F").
        flagged = [p for p in inbox_files if re.search(r":2,[A-Z]*F", p)]
        self.assertEqual(len(flagged), 1, output)
        self.assertIn(b"Subject: inbox one", _read(flagged[0]), output)
        project_files = _maildir_messages(project)
        self.assertEqual(len(project_files), 1, output)
        # mbsync stores LF line ends and adds its own X-TUID: header while it syncs.
        local_copy = re.sub(rb"(?m)^X-TUID: .*\n", b"", _read(project_files[0]))
        self.assertEqual(local_copy, simple_message("project plan").replace(b"\r\n", b"\n"), output)

        # (b) local changes: a \Seen flag, a new message in INBOX, a new folder with a message.
        target = next(p for p in inbox_files if b"Subject: inbox two" in _read(p))
        base = os.path.basename(target).split(":2,")[0]
        flags = os.path.basename(target).split(":2,")[1] if ":2," in target else ""
        os.rename(target, os.path.join(inbox, "cur", base + ":2," + "".join(sorted(set(flags + "S")))))
        with open(os.path.join(inbox, "new", "1700000000.local1.testhost"), "wb") as f:
            f.write(simple_message("written locally").replace(b"\r\n", b"\n"))
        local_folder = os.path.join(self.maildir, "Local Notes")
        _new_maildir(local_folder)
        with open(os.path.join(local_folder, "new", "1700000001.local2.testhost"), "wb") as f:
            f.write(simple_message("note to self").replace(b"\r\n", b"\n"))

        status, output = yield self.in_thread(self.sync)
        self.assertEqual(status, 0, output)

        def check() -> dict[str, Any]:
            c = self.imaplib_client()
            out: dict[str, Any] = {"list": _ok(c.list())}
            _ok(c.select("INBOX", readonly=True))
            out["all"] = _ok(c.search(None, "ALL"))
            out["seen"] = _ok(c.search(None, "SEEN"))
            out["seen_subject"] = _ok(c.fetch(out["seen"][0] or b"1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
            out["local"] = _ok(c.search(None, "SUBJECT", '"written locally"'))
            _ok(c.select('"Local Notes"', readonly=True))
            out["notes"] = _ok(c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
            return out

        out = yield self.in_thread(check)
        self.assertIn(b'"Local Notes"', b"\n".join(out["list"]), output)
        self.assertEqual(len(out["all"][0].split()), 4, output)
        self.assertEqual(len(out["seen"][0].split()), 1, output)
        self.assertEqual(out["seen_subject"][0][1], b"Subject: inbox two\r\n\r\n", output)
        self.assertEqual(len(out["local"][0].split()), 1, output)
        self.assertEqual(out["notes"][0][1], b"Subject: note to self\r\n\r\n", output)
        # A third run finds nothing to do and changes nothing locally.
        before = sorted(os.path.basename(p) for p in _maildir_messages(inbox))
        status, output = yield self.in_thread(self.sync)
        self.assertEqual(status, 0, output)
        self.assertEqual(sorted(os.path.basename(p) for p in _maildir_messages(inbox)), before, output)


class OfflineIMAPTests(_ClientTestCase):
    """Debian's offlineimap (offlineimap3) syncs the folder tree down to a Maildir."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        offlineimap = shutil.which("offlineimap")
        if offlineimap is None:
            raise SkipTest("offlineimap is not installed: apt-get install offlineimap3")
        self.offlineimap: str = offlineimap
        yield super().setUp()
        self.home = os.path.abspath(self.mktemp())
        self.maildir = os.path.join(self.home, "Mail")
        os.makedirs(self.maildir)
        self.rc = os.path.join(self.home, "offlineimaprc")
        _write_private(
            self.rc,
            "\n".join(
                [
                    "[general]",
                    "accounts = txmail",
                    f"metadata = {self.home}/metadata",
                    "",
                    "[Account txmail]",
                    "localrepository = local",
                    "remoterepository = remote",
                    "",
                    "[Repository local]",
                    "type = Maildir",
                    f"localfolders = {self.maildir}",
                    "",
                    "[Repository remote]",
                    "type = IMAP",
                    f"remotehost = {self.host}",
                    f"remoteport = {self.port}",
                    f"remoteuser = {USER}",
                    f"remotepass = {PASSWORD}",
                    "ssl = no",
                    "starttls = no",
                    "auth_mechanisms = LOGIN",
                    "maxconnections = 1",
                    "",
                ]
            ),
        )

    def sync(self) -> tuple[int, str]:
        """One sync run (``-o``) with the IMAP protocol trace (``-d imap``); status and output."""
        return _run(
            [self.offlineimap, "-c", self.rc, "-o", "-u", "basic", "-d", "imap"],
            cwd=self.home,
            env=_client_env(self.home),
        )

    def setup_server_tree(self) -> None:
        self.deliver(simple_message("inbox one"), multipart_message(), simple_message("inbox three"))
        c = self.imaplib_client()
        _ok(c.create("Projects/2026"))
        _ok(c.append("Projects/2026", "(\\Seen)", None, simple_message("project plan")))
        c.logout()

    @defer.inlineCallbacks
    def test_sync_down(self) -> Any:
        """Every folder and message on the server arrives in the local Maildir, flags included."""
        yield self.in_thread(self.setup_server_tree)
        status, output = yield self.in_thread(self.sync)
        self.assertEqual(status, 0, output[-20000:])
        self.assertNotIn("ERROR", output, output[-20000:])
        inbox_files = _maildir_messages(os.path.join(self.maildir, "INBOX"))
        self.assertEqual(len(inbox_files), 3, output[-20000:])
        bodies = [_read(p) for p in inbox_files]
        multipart = multipart_message()
        self.assertEqual(
            sum(
                1
                for b in bodies
                if b.replace(b"\r\n", b"\n").endswith(
                    multipart[multipart.index(b"From:") :].replace(b"\r\n", b"\n")
                )
            ),
            1,
            output[-20000:],
        )
        for name in ("Sent", "Drafts", "Trash", "Junk", "Archive"):
            self.assertTrue(
                os.path.isdir(os.path.join(self.maildir, name, "cur")), name + "\n" + output[-20000:]
            )
        # offlineimap's default separator for local folders is "." (Projects.2026).
        project = [p for p in os.listdir(self.maildir) if p.startswith("Projects") and "2026" in p]
        self.assertEqual(len(project), 1, os.listdir(self.maildir))
        (plan,) = _maildir_messages(os.path.join(self.maildir, project[0]))
        self.assertTrue(plan.endswith("S"), plan)  # \Seen became the Maildir S flag
        self.assertIn(b"Subject: project plan", _read(plan))
        # A second run finds everything in place and changes nothing locally.
        before = sorted(os.path.relpath(p, self.maildir) for p in _all_messages(self.maildir))
        status, output = yield self.in_thread(self.sync)
        self.assertEqual(status, 0, output[-20000:])
        after = sorted(os.path.relpath(p, self.maildir) for p in _all_messages(self.maildir))
        self.assertEqual(after, before, output[-20000:])


def _all_messages(root: str) -> list[str]:
    """Message files in every Maildir folder under *root*."""
    out = []
    for folder, dirs, _ in os.walk(root):
        if "cur" in dirs and "new" in dirs:
            out.extend(_maildir_messages(folder))
    return out
