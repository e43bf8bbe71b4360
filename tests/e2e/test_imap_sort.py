"""
End to end: SORT and THREAD (RFC 5256) on the real service (Maildir store)
through the stdlib's imaplib, which has ``sort()`` and ``thread()``.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.e2e import test_imap

__all__: list[str] = []

MESSAGES = [
    b"From: Carol <carol@x.test>\r\nSubject: Lunch\r\nDate: Tue, 2 Jan 2024 12:00:00 +0000\r\n"
    b"Message-ID: <lunch@x.test>\r\n\r\nnoon?\r\n",
    b"From: =?utf-8?q?Andr=C3=A9?= <andre@x.test>\r\nSubject: Re: [team] lunch\r\n"
    b"Date: Tue, 2 Jan 2024 13:00:00 +0100\r\nMessage-ID: <re1@x.test>\r\nIn-Reply-To: <lunch@x.test>\r\n\r\nyes\r\n",
    b"From: bob@x.test\r\nSubject: Budget\r\nDate: Mon, 1 Jan 2024 09:00:00 -0500\r\n"
    b"Message-ID: <budget@x.test>\r\n\r\nnumbers\r\n",
    b"From: Dan <dan@x.test>\r\nSubject: RE: Lunch (fwd)\r\nDate: Wed, 3 Jan 2024 08:00:00 +0000\r\n"
    b"Message-ID: <re2@x.test>\r\nReferences: <lunch@x.test> <re1@x.test>\r\n\r\nlate\r\n",
]


class SortE2ETests(test_imap.IMAPTestCase):
    @defer.inlineCallbacks
    def test_sort_and_thread_with_imaplib(self) -> Any:
        """RFC 5256 section 4: SORT, UID SORT, THREAD REFERENCES and ORDEREDSUBJECT."""

        def run() -> dict[str, Any]:
            client = self.login()
            for i, body in enumerate(MESSAGES):
                when = imaplib.Time2Internaldate(1_700_000_000 + i)
                test_imap.ok(client.append("INBOX", None, when, body))
            test_imap.ok(client.select("INBOX"))
            return {
                "caps": client.capabilities,
                "subject": test_imap.ok(client.sort("(SUBJECT)", "UTF-8", "ALL")),
                "date": test_imap.ok(client.sort("(REVERSE DATE)", "UTF-8", "ALL")),
                "from": test_imap.ok(client.sort("(DISPLAYFROM)", "UTF-8", "ALL")),
                "uid": test_imap.ok(
                    client.uid("SORT", "(REVERSE ARRIVAL)", "UTF-8", "OR BODY yes BODY late")
                ),
                "refs": test_imap.ok(client.thread("REFERENCES", "UTF-8", "ALL")),
                "ordered": test_imap.ok(client.thread("ORDEREDSUBJECT", "UTF-8", "ALL")),
            }

        got = yield deferToThread(run)
        for cap in ("SORT", "SORT=DISPLAY", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESORT"):
            self.assertIn(cap, got["caps"])
        # Base subjects "budget", "lunch" x3 (mailbox order among equals).
        self.assertEqual(got["subject"], [b"3 1 2 4"])
        # 4 (Jan 3 08:00Z), 1 (Jan 2 12:00Z), 2 (Jan 2 12:00Z: a tie, mailbox order), 3 (Jan 1 14:00Z).
        self.assertEqual(got["date"], [b"4 1 2 3"])
        # "André", "bob@x.test", "Carol", "Dan".
        self.assertEqual(got["from"], [b"2 3 1 4"])
        # "late", "yes": the UIDs of 4 and 2, latest arrival first.
        uids = got["uid"][0].split()
        self.assertEqual(len(uids), 2)
        self.assertGreater(int(uids[0]), int(uids[1]))
        self.assertEqual(got["refs"], [b"(3)(1 2 4)"])
        self.assertEqual(got["ordered"], [b"(3)(1 (2)(4))"])
