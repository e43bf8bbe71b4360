"""
Storage usage for quotas (:class:`txmail.interfaces.IStorageUsage`): what
the memory and Maildir stores report, across folders, copies, expunges and
files other programs drop in.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from txmail.interfaces import IStorageUsage
from txmail.model import INBOX
from txmail.quota import Usage
from txmail.store import maildir
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"
ONE = b"Subject: one\r\n\r\nfirst\r\n"
TWO = b"Subject: two\r\n\r\nthe second message\r\n"


class UsageMixin:
    """The same behaviour from every store."""

    def provider(self) -> Any:
        raise NotImplementedError

    def test_counts_every_folder(self: Any) -> None:
        """Appends, copies and expunges in every folder change the usage."""
        store = self.successResultOf(self.provider().store_for(USER))
        verifyObject(IStorageUsage, store)
        self.assertEqual(self.successResultOf(store.usage()), Usage(0, 0))
        inbox = self.successResultOf(store.get_mailbox(INBOX))
        uid = self.successResultOf(inbox.append(ONE))
        self.successResultOf(inbox.append(TWO))
        self.successResultOf(store.create_mailbox("Archive"))
        archive = self.successResultOf(store.get_mailbox("Archive"))
        self.successResultOf(inbox.copy([uid], archive))
        self.assertEqual(self.successResultOf(store.usage()), Usage(2 * len(ONE) + len(TWO), 3))
        self.successResultOf(inbox.move([uid], archive))
        self.assertEqual(self.successResultOf(store.usage()), Usage(2 * len(ONE) + len(TWO), 3))
        self.successResultOf(archive.set_flags([1, 2], {"\\Deleted"}, "add"))
        self.successResultOf(archive.expunge())
        self.assertEqual(self.successResultOf(store.usage()), Usage(len(TWO), 1))


class MemoryUsageTests(UsageMixin, TestCase):
    def provider(self) -> Any:
        return MemoryProvider()


class MaildirUsageTests(UsageMixin, TestCase):
    def setUp(self) -> None:
        self.root = self.mktemp()

    def provider(self) -> Any:
        return MaildirProvider(self.root, hostname="mx.test", watch="off")

    def drop(self, folder: str, sub: str, name: str, data: bytes) -> None:
        path = os.path.join(self.root, "example.test", "alice", folder, sub, name)
        with open(path, "wb") as f:
            f.write(data)

    def test_folders_not_open_are_scanned(self) -> None:
        """A fresh process counts folders it never opened from their file names (,W= before ,S=), else their size."""
        store = self.successResultOf(self.provider().store_for(USER))
        self.successResultOf(store.create_mailbox("Archive"))
        self.drop("", "new", "1.M1P1.other,S=100,W=104", b"x" * 100)  # Dovecot: W= is the CRLF size
        self.drop(".Archive", "cur", "2.M2P2.other,S=50:2,S", b"y" * 50)
        self.drop(".Archive", "cur", "3.M3P3.other:2,", b"z" * 7)  # no size in the name: stat
        self.drop(".Archive", "tmp", "4.M4P4.other", b"not delivered yet")
        fresh = self.successResultOf(self.provider().store_for(USER))
        self.assertEqual(self.successResultOf(fresh.usage()), Usage(104 + 50 + 7, 3))

    def test_only_regular_files_counted(self) -> None:
        """
        Entries the store does not serve (a symbolic link, dangling or to a
        file outside the Maildir, a FIFO, a directory) are not counted; the
        size of a message without one in its name is its own, not a link's target's.
        """
        store = self.successResultOf(self.provider().store_for(USER))
        self.successResultOf(store.create_mailbox("Archive"))
        outside = os.path.abspath(self.mktemp())
        with open(outside, "wb") as f:
            f.write(b"o" * 5000)
        self.drop(".Archive", "cur", "1.M1P1.other:2,S", b"r" * 11)
        cur = os.path.join(self.root, "example.test", "alice", ".Archive", "cur")
        os.symlink(outside, os.path.join(cur, "2.M2P2.other:2,S"))
        os.symlink(outside + ".gone", os.path.join(cur, "3.M3P3.other,S=9:2,S"))
        os.mkfifo(os.path.join(cur, "4.M4P4.other:2,"))
        os.mkdir(os.path.join(cur, "5.M5P5.other,S=77:2,"))
        fresh = self.successResultOf(self.provider().store_for(USER))
        self.assertEqual(self.successResultOf(fresh.usage()), Usage(11, 1))

    def test_open_mailbox_counts_live_and_scan_is_redone(self, clock: Any = None) -> None:
        """An open mailbox counts live; a closed folder's scan is taken again once it is USAGE_RESCAN seconds old."""
        store = self.successResultOf(self.provider().store_for(USER))
        self.successResultOf(store.create_mailbox("Archive"))
        inbox = self.successResultOf(store.get_mailbox(INBOX))
        self.assertEqual(self.successResultOf(store.usage()), Usage(0, 0))
        self.successResultOf(inbox.append(ONE))
        self.drop(".Archive", "new", "9.M9P9.other,S=40", b"a" * 40)  # another program, folder not open
        self.assertEqual(self.successResultOf(store.usage()), Usage(len(ONE), 1))  # the scan is fresh
        now = [1000.0]
        self.patch(maildir.time, "monotonic", lambda: now[0])
        store._usage_scan_at = now[0]
        now[0] += maildir.USAGE_RESCAN + 1
        self.assertEqual(self.successResultOf(store.usage()), Usage(len(ONE) + 40, 2))
