"""
The start of a POP3 session picks up mail another program dropped into the
Maildir INBOX while the mailbox was already open in the server (the store's
cheap check when the maildrop is opened), and lists nothing new when
nothing changed.
"""

from __future__ import annotations

import os

from twisted.internet import task
from twisted.internet.testing import StringTransport

from tests.pop3.test_server import PASSWORD, PEER, USER, FakeDirectory, ServerTestCase
from txmail.auth.authenticator import Authenticator
from txmail.pop3.server import MaildropLocks
from txmail.store.maildir import MaildirProvider

MESSAGE = b"From: other@remote.test\r\nSubject: dropped\r\n\r\nbody\r\n"


class MaildirPOP3RefreshTests(ServerTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.root = self.mktemp()
        self.stores = MaildirProvider(self.root, hostname="mx.test", clock=self.clock, watch="poll")
        self.mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX")
        )
        self.successResultOf(self.mailbox.append(MESSAGE))
        self.inbox = os.path.join(self.root, "example.test", "alice")
        self.locks = MaildropLocks()
        self.authenticator = Authenticator(FakeDirectory(), clock=self.clock)  # type: ignore[arg-type]

    def drop(self, name: str) -> None:
        tmp = os.path.join(self.inbox, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(MESSAGE)
        os.rename(tmp, os.path.join(self.inbox, "new", name))

    def stat(self) -> bytes:
        proto, transport = self.connect(StringTransport(peerAddress=PEER))
        self.take(transport)
        proto.dataReceived(f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n".encode())
        return self.take(transport).split(b"\r\n")[2]

    def test_drop_counted_at_login(self) -> None:
        """STAT of a session that starts after a drop into the open INBOX counts it."""
        self.assertEqual(self.stat(), b"+OK 1 %d" % len(MESSAGE))
        self.drop("1700000000.M1P2Q3.other.host")
        self.drop("1700000001.M1P2Q4.other.host")
        self.assertEqual(self.stat(), b"+OK 3 %d" % (3 * len(MESSAGE)))

    def test_unchanged_maildrop_not_listed(self) -> None:
        """A session start over an unchanged Maildir lists no directory."""
        self.assertEqual(self.stat(), b"+OK 1 %d" % len(MESSAGE))
        self.mailbox._stamp = type(self.mailbox._stamp)(self.mailbox._stamp.mtimes)  # settled
        rescans = self.mailbox.rescans
        for _ in range(3):
            self.assertEqual(self.stat(), b"+OK 1 %d" % len(MESSAGE))
        self.assertEqual(self.mailbox.rescans, rescans)
        self.assertEqual(self.clock.getDelayedCalls(), [])
