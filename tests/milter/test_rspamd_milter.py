"""
rspamd's proxy worker in milter mode (Debian's ``rspamd`` package, started
by :func:`tests._rspamd.start_rspamd`) as a milter behind txmail's MTA
port: a message carrying the GTUBE line is refused with rspamd's own 5xx
reply at the end of data and never delivered; a clean message is delivered.
"""

from __future__ import annotations

import smtplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._rspamd import GTUBE, start_rspamd
from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for

CLEAN = (
    b"From: Carol <carol@remote.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: lunch\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
    b"Message-ID: <rspamd-clean-1@remote.test>\r\n"
    b"\r\n"
    b"Shall we have lunch on Tuesday?\r\n"
)
SPAM = (
    CLEAN.replace(b"Subject: lunch", b"Subject: test")
    .replace(b"clean-1", b"gtube-1")
    .replace(b"Shall we have lunch on Tuesday?\r\n", b"This is the GTUBE test.\r\n\r\n" + GTUBE + b"\r\n")
)


class RspamdMilterTests(TestCase):
    timeout = 180

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        rspamd = start_rspamd(self, milter=True)
        self.server = yield start_server(
            self,
            config=(  # the [[milter]] table of a configuration file
                f'[[milter]]\naddress = "inet:127.0.0.1:{rspamd.milter_port}"\n'
                'name = "rspamd"\ncontent_timeout = 60\n'
            ),
            threads=2,
        )
        self.server.directory.add_user("bob@example.test", "secret")

    def send(self, message: bytes) -> Any:
        def run() -> Any:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                s.ehlo("mail.remote.test")
                try:
                    s.sendmail("carol@remote.test", ["bob@example.test"], message)
                except smtplib.SMTPDataError as e:
                    return e.smtp_code, e.smtp_error
                return 250, b""

        return deferToThread(run)

    @defer.inlineCallbacks
    def test_gtube_rejected(self) -> Any:
        """The GTUBE message gets rspamd's 5xx at the end of data; nothing is delivered."""
        code, text = yield self.send(SPAM)
        self.assertEqual((code, text), (554, b"5.7.1 Gtube pattern"))  # rspamd's SMFIR_REPLYCODE
        self.assertEqual(maildir_files(self.server, "bob@example.test"), [])

    @defer.inlineCallbacks
    def test_clean_message_delivered(self) -> Any:
        code, text = yield self.send(CLEAN)
        self.assertEqual(code, 250, text)
        yield wait_for(lambda: maildir_files(self.server, "bob@example.test") != [])
        [path] = maildir_files(self.server, "bob@example.test")
        with open(path, "rb") as f:
            self.assertIn(b"Shall we have lunch on Tuesday?", f.read())
