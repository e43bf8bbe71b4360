"""
Spam filtering with a real rspamd (Debian's package, started on loopback by
:func:`tests._rspamd.start_rspamd`; skipped when it is not installed).
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

from tests._rspamd import GTUBE, start_rspamd

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
