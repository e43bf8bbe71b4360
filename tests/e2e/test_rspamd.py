"""
Spam filtering with a real rspamd (Debian's package, started on loopback by
:func:`tests._rspamd.start_rspamd`; skipped when it is not installed).
"""

from __future__ import annotations

import imaplib
import smtplib
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._rspamd import GTUBE, RspamdInstance, start_rspamd
from tests.e2e._server import maildir_files, start_server
from txmail.service import MailServer

CLEAN = (
    b"From: Alice <alice@example.org>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Message-ID: <clean-1@example.org>\r\n"
    b"Date: Mon, 1 Dec 2025 10:00:00 +0000\r\n"
    b"\r\n"
    b"Hello Bob, shall we have lunch on Friday and go through the project plan\r\n"
    b"for the next release? I booked a table at the usual place at noon.\r\n"
)


def gtube_message(subject: str = "Test") -> bytes:
    return (
        b"From: spammer@example.org\r\nTo: bob@example.test\r\nSubject: " + subject.encode() + b"\r\n"
        b"Message-ID: <gtube@example.org>\r\n\r\n" + GTUBE + b"\r\n"
    )


class RspamdHelperTests(TestCase):
    """tests/_rspamd.py starts an rspamd that answers over HTTP."""

    def test_gtube_and_clean(self) -> None:
        rspamd = start_rspamd(self)
        headers = {
            "IP": "192.0.2.7",
            "Hostname": "mx.example.org",
            "From": "alice@example.org",
            "Rcpt": "bob@example.test",
        }
        spam = rspamd.check(gtube_message(), headers)
        self.assertEqual(spam["action"], "reject", spam)
        clean = rspamd.check(CLEAN, headers)
        self.assertEqual(clean["action"], "no action", clean)
        self.assertLess(clean["score"], 6.0)
        stat = rspamd.stat()
        self.assertEqual(stat["scanned"], 2)

    def test_learn_and_milter(self) -> None:
        rspamd = start_rspamd(self, milter=True)
        assert rspamd.milter_port is not None
        socket.create_connection(("127.0.0.1", rspamd.milter_port), timeout=5).close()
        before = rspamd.stat()["learned"]
        self.assertTrue(rspamd.learn("spam", CLEAN)["success"])
        self.assertEqual(rspamd.stat()["learned"], before + 1)


PASSWORD = "rspamd e2e secret"


@defer.inlineCallbacks
def start_server_with_rspamd(test: TestCase, rspamd: RspamdInstance) -> Any:
    """
    The real txmail service built from an ``[rspamd]`` table as a
    configuration file gives it: SMTP on the MTA role scanned by rspamd, and
    IMAP whose moves into and out of Junk rspamd learns.
    """
    server: MailServer = yield start_server(
        test,
        config=(
            "[rspamd]\n"
            f'url = "{rspamd.url}"\ncontroller_url = "{rspamd.controller_url}"\n'
            f'password = "{rspamd.password}"\n'
        ),
        smtp=["tcp:0:interface=127.0.0.1"],
        imap=["tcp:0:interface=127.0.0.1"],
    )
    server.directory.add_user("bob@example.test", PASSWORD)
    return server, server.address("imap")[1]


def smtp_send(address: tuple[str, int], message: bytes) -> tuple[int, bytes]:
    """One message over SMTP; the reply to the final dot."""
    with smtplib.SMTP(*address, local_hostname="client.example.org", timeout=30) as smtp:
        smtp.ehlo()
        code, text = smtp.mail("alice@example.org")
        assert code == 250, (code, text)
        code, text = smtp.rcpt("bob@example.test")
        assert code == 250, (code, text)
        return smtp.data(message)


class RspamdEndToEndTests(TestCase):
    """txmail configured with ``[rspamd]``: its MTA role scanned and its IMAP moves learnt by a real rspamd."""

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.rspamd = start_rspamd(self)
        self.server, self.imap_port = yield start_server_with_rspamd(self, self.rspamd)
        self.smtp = self.server.address("mta")

    def imap(self, work: Any) -> defer.Deferred[Any]:
        def run() -> Any:
            imap = imaplib.IMAP4("127.0.0.1", self.imap_port)
            try:
                imap.login("bob@example.test", PASSWORD)
                return work(imap)
            finally:
                imap.logout()

        return deferToThread(run)

    @defer.inlineCallbacks
    def test_gtube_rejected(self) -> Any:
        """The GTUBE message is refused at the final dot with 554 5.7.1; nothing is delivered."""
        code, text = yield deferToThread(smtp_send, self.smtp, gtube_message())
        self.assertEqual(code, 554, text)
        self.assertTrue(text.startswith(b"5.7.1 "), text)
        self.assertEqual(maildir_files(self.server, "bob@example.test"), [])
        self.assertEqual(self.rspamd.stat()["actions"]["reject"], 1)

    @defer.inlineCallbacks
    def test_clean_delivered_with_score(self) -> Any:
        """A clean message reaches the INBOX with its X-Spam-Status and X-Spam-Score (read over IMAP)."""
        code, text = yield deferToThread(smtp_send, self.smtp, CLEAN)
        self.assertEqual(code, 250, text)

        def fetch(imap: imaplib.IMAP4) -> bytes:
            imap.select("INBOX")
            _, parts = imap.fetch("1", "(BODY.PEEK[])")
            return bytes(parts[0][1])

        message = yield self.imap(fetch)
        header = message.split(b"\r\n\r\n")[0]
        self.assertRegex(header, rb"\r\nX-Spam-Status: No, score=-?\d+\.\d\d required=15\.00\r\n")
        self.assertRegex(header, rb"\r\nX-Spam-Score: -?\d+\.\d\d\r\n")
        self.assertTrue(message.endswith(CLEAN.split(b"\r\n\r\n", 1)[1]))

    @defer.inlineCallbacks
    def test_move_into_junk_learns(self) -> Any:
        """IMAP MOVE into Junk makes rspamd learn the message as spam; moving it back, as ham."""
        code, _ = yield deferToThread(smtp_send, self.smtp, CLEAN)
        self.assertEqual(code, 250)
        before = self.rspamd.stat()
        imaplib.Commands.setdefault("MOVE", ("SELECTED",))

        def move(source: str, target: str) -> Any:
            def work(imap: imaplib.IMAP4) -> Any:
                imap.select(source)
                typ, data = imap._simple_command("MOVE", "1", target)
                assert typ == "OK", (typ, data)
                return imap._untagged_response(typ, data, "MOVE")

            return self.imap(work)

        yield move("INBOX", "Junk")
        yield self.wait_for_revision("BAYES_SPAM")
        yield move("Junk", "INBOX")
        yield self.wait_for_revision("BAYES_HAM")
        self.assertGreaterEqual(self.rspamd.stat()["learned"], before["learned"] + 2)

    @defer.inlineCallbacks
    def wait_for_revision(self, symbol: str, deadline: float = 20.0) -> Any:
        """
        Poll the controller's /stat until the *symbol* statfile has learnt a
        message (its revision grows; rspamd's "learned" counter alone also
        counts a learn whose commit failed and was tried again).
        """
        end = time.monotonic() + deadline
        while True:
            stat = yield deferToThread(self.rspamd.stat)
            if sum(s["revision"] for s in stat["statfiles"] if s["symbol"] == symbol) > 0:
                return stat
            if time.monotonic() > end:
                self.fail(f"rspamd did not learn {symbol}:\n{self.rspamd.log()[-3000:]}")
            yield task.deferLater(reactor, 0.1, lambda: None)
