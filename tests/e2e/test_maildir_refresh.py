"""
End to end (issue 12, section 0): files another program delivers into an
open mailbox's ``new/``, and flags it changes by renaming a file in
``cur/``, reach IMAP clients without a restart: NOOP, STATUS, SELECT and
IDLE show them (the store's cheap check on get_mailbox, and the watcher of
a selected mailbox: inotify here, polling elsewhere), and a POP3 session
counts them.  The real service, over imaplib, a raw socket and poplib.
"""

from __future__ import annotations

import contextlib
import imaplib
import os
import poplib
import re
import socket
import time
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e._server import start_server
from txmail.store import _maildir_watch

USER = "alice@example.test"
PASSWORD = "correct horse"
ENDPOINT = "tcp:0:interface=127.0.0.1"
#: How long a change may take to reach the client (the issue: "within a few seconds").
WITHIN = 5.0


def _message(n: int) -> bytes:
    return b"From: other@remote.test\r\nSubject: dropped %d\r\n\r\nbody %d\r\n" % (n, n)


def ok(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


def _close_imap(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()


class MaildirRefreshTests(TestCase):
    timeout = 60
    #: Seconds between SELECT/IDLE and the drop (past the watcher's first check).
    pause = 0.2

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield start_server(self, imap=[ENDPOINT], pop3=[ENDPOINT])
        self.server.directory.add_user(USER, PASSWORD)
        self.user_dir = os.path.join(self.server.settings.data_dir, "mail", "example.test", "alice")
        self.counter = 0

    def drop(self, folder: str = "", sub: str = "new", info: str = "") -> str:
        """Deliver as a Maildir program does: write into tmp/, rename into new/ (or cur/)."""
        self.counter += 1
        base = f"{1_700_000_000 + self.counter}.M{self.counter}P99.other.host"
        path = os.path.join(self.user_dir, folder)
        for d in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(path, d), exist_ok=True)
        tmp = os.path.join(path, "tmp", base)
        with open(tmp, "wb") as f:
            f.write(_message(self.counter))
        os.rename(tmp, os.path.join(path, sub, base + info))
        return base + info

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(*self.server.address("imap"), timeout=20)
        self.addCleanup(_close_imap, client)
        client.login(USER, PASSWORD)
        return client

    @defer.inlineCallbacks
    def test_noop_shows_exists(self) -> Any:
        """A file dropped into new/ of the selected INBOX: NOOP shows * n EXISTS."""

        def run() -> tuple[list[Any], float, list[Any]]:
            c = self.imap()
            exists = ok(c.select("INBOX"))
            c.response("EXISTS")  # imaplib keeps SELECT's
            time.sleep(self.pause)
            self.drop()
            start = time.monotonic()
            seen: list[Any] = []
            while time.monotonic() - start < WITHIN:
                ok(c.noop())
                _typ, data = c.response("EXISTS")
                if data != [None]:
                    seen = data
                    break
                time.sleep(0.05)
            took = time.monotonic() - start
            fetched = ok(c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
            c.logout()
            return [exists, seen], took, fetched

        (selected, seen), took, fetched = yield deferToThread(run)
        self.assertEqual(selected, [b"0"])
        self.assertIn(b"1", seen)
        self.assertLess(took, WITHIN)
        self.assertIn(b"Subject: dropped 1", fetched[0][1])

    @defer.inlineCallbacks
    def test_status_and_select_see_a_drop(self) -> Any:
        """STATUS of another (open) folder and a second session's SELECT count a dropped file at once."""

        def run() -> dict[str, Any]:
            c = self.imap()
            ok(c.create("Other"))
            out = {"before": ok(c.status("Other", "(MESSAGES UIDNEXT)"))}
            ok(c.select("INBOX"))  # INBOX open in the server, selected by this session
            self.drop(folder=".Other")
            out["after"] = ok(c.status("Other", "(MESSAGES UIDNEXT)"))
            self.drop()
            d = self.imap()
            out["select"] = ok(d.select("INBOX"))
            d.logout()
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertEqual(out["before"], [b"Other (MESSAGES 0 UIDNEXT 1)"])
        self.assertEqual(out["after"], [b"Other (MESSAGES 1 UIDNEXT 2)"])
        self.assertEqual(out["select"], [b"1"])

    @defer.inlineCallbacks
    def test_idle_sees_exists(self) -> Any:
        """An IDLE client hears of a dropped file within a few seconds, untold."""

        def run() -> tuple[list[bytes], float]:
            host, port = self.server.address("imap")
            with socket.create_connection((host, port), timeout=WITHIN) as s:
                f = s.makefile("rb")

                def send(line: bytes) -> None:
                    s.sendall(line + b"\r\n")

                def until(tag: bytes) -> list[bytes]:
                    lines = []
                    while True:
                        line = f.readline()
                        assert line, lines
                        lines.append(line)
                        if line.startswith(tag):
                            return lines

                f.readline()  # greeting
                send(b'a LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
                until(b"a ")
                send(b"b SELECT INBOX")
                until(b"b OK")
                send(b"c IDLE")
                until(b"+ ")
                time.sleep(self.pause)
                self.drop()
                start = time.monotonic()
                line = f.readline()  # the socket times out after WITHIN seconds
                took = time.monotonic() - start
                send(b"DONE")
                rest = until(b"c ")
                send(b"d LOGOUT")
                until(b"d ")
                return [line, *rest], took

        lines, took = yield deferToThread(run)
        self.assertEqual(lines[0], b"* 1 EXISTS\r\n")
        self.assertLess(took, WITHIN)
        self.assertEqual(lines[-1], b"c OK IDLE terminated\r\n")

    @defer.inlineCallbacks
    def test_flag_rename_shows_fetch_flags(self) -> Any:
        """A file renamed in cur/ with S added: NOOP shows * 1 FETCH (FLAGS (\\Seen))."""
        name = self.drop(sub="cur", info=":2,")

        def run() -> list[Any]:
            c = self.imap()
            ok(c.select("INBOX"))
            flags_before = ok(c.fetch("1", "(FLAGS)"))
            time.sleep(self.pause)
            cur = os.path.join(self.user_dir, "cur")
            os.rename(os.path.join(cur, name), os.path.join(cur, name + "S"))
            seen: list[Any] = []
            start = time.monotonic()
            while time.monotonic() - start < WITHIN:
                ok(c.noop())
                _typ, data = c.response("FETCH")
                if data != [None]:
                    seen = data
                    break
                time.sleep(0.05)
            c.logout()
            return [flags_before, seen]

        before, seen = yield deferToThread(run)
        self.assertEqual(before, [b"1 (FLAGS (\\Recent))"])
        self.assertEqual(len(seen), 1)
        self.assertTrue(re.fullmatch(rb"1 \(FLAGS \(\\Seen \\Recent\)( UID 1)?\)", seen[0]), seen)

    @defer.inlineCallbacks
    def test_pop3_stat_counts_a_drop(self) -> Any:
        """A POP3 session that starts after a drop into the open INBOX counts the file."""

        def stat() -> tuple[int, int]:
            p = poplib.POP3(*self.server.address("pop3"), timeout=20)
            try:
                p.user(USER)
                p.pass_(PASSWORD)
                result = p.stat()
                p.quit()
            finally:
                with contextlib.suppress(Exception):
                    p.close()
            return result

        def run() -> list[tuple[int, int]]:
            self.drop()
            first = stat()  # opens the INBOX in the server
            self.drop()
            self.drop()
            return [first, stat()]

        first, second = yield deferToThread(run)
        size = len(_message(1))
        self.assertEqual(first, (1, size))
        self.assertEqual(second, (3, 3 * size))


class PollingMaildirRefreshTests(MaildirRefreshTests):
    """The same where inotify is missing: selected mailboxes are polled every 2 s."""

    def setUp(self) -> Any:
        self.patch(_maildir_watch, "_LIBC", None)
        return super().setUp()
