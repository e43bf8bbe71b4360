"""
Tests for the read-ahead of a FETCH of whole messages
(:class:`txmail.imap.commands.selected._ReadAhead`): a store whose reads
are round trips (the PostgreSQL store) has several under way while the
FETCH writes the one before, within a count and an octet budget, and the
messages come out in order, a vanished one as ``None``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.imap import test_server
from txmail.errors import NoSuchMessage
from txmail.imap.commands.selected import READ_AHEAD, READ_AHEAD_OCTETS, _ReadAhead
from txmail.model import MessageInfo


def info(uid: int, size: int = 100) -> MessageInfo:
    return MessageInfo(uid, frozenset(), size, 0.0, uid)


class HeldMailbox:
    """read_message answers only when the test fires it; the reads asked, in order."""

    def __init__(self) -> None:
        self.asked: list[int] = []
        self.pending: dict[int, defer.Deferred[bytes]] = {}

    def read_message(self, uid: int) -> defer.Deferred[bytes]:
        self.asked.append(uid)
        d: defer.Deferred[bytes] = defer.Deferred()
        self.pending[uid] = d
        return d

    def answer(self, uid: int) -> None:
        self.pending.pop(uid).callback(b"message %d" % uid)


class ReadAheadTests(SynchronousTestCase):
    def read(self, reads: _ReadAhead, message: MessageInfo) -> defer.Deferred[Any]:
        return defer.ensureDeferred(reads.read(message))

    def test_window(self) -> None:
        """READ_AHEAD reads are under way at once; each one taken starts the next; results in order."""
        box = HeldMailbox()
        infos = [info(u) for u in range(1, 21)]
        reads = _ReadAhead(box, infos)
        self.assertEqual(box.asked, list(range(1, READ_AHEAD + 1)))
        got = []
        for message in infos:
            d = self.read(reads, message)
            self.assertNoResult(d)
            box.answer(message.uid)
            got.append(self.successResultOf(d))
            self.assertLessEqual(len(box.pending), READ_AHEAD)
        self.assertEqual(got, [b"message %d" % u for u in range(1, 21)])
        self.assertEqual(box.asked, list(range(1, 21)))

    def test_octet_budget(self) -> None:
        """Large messages are read ahead only within READ_AHEAD_OCTETS, and one at least."""
        box = HeldMailbox()
        big = READ_AHEAD_OCTETS // 2 + 1
        infos = [info(1, READ_AHEAD_OCTETS * 3), info(2, big), info(3, big), info(4, 10)]
        reads = _ReadAhead(box, infos)
        self.assertEqual(box.asked, [1])
        d = self.read(reads, infos[0])
        box.answer(1)
        self.successResultOf(d)
        self.assertEqual(box.asked, [1, 2])
        d = self.read(reads, infos[1])
        self.assertEqual(box.asked, [1, 2, 3, 4])

    def test_vanished_and_raised(self) -> None:
        """A message gone (NoSuchMessage) reads as None; another error is raised in its turn."""

        class Box:
            def read_message(self, uid: int) -> Any:
                if uid == 2:
                    return defer.fail(NoSuchMessage("gone"))
                if uid == 3:
                    raise OSError("disk")
                return defer.succeed(b"m%d" % uid)

        infos = [info(1), info(2), info(3)]
        reads = _ReadAhead(Box(), infos)
        self.assertEqual(self.successResultOf(self.read(reads, infos[0])), b"m1")
        self.assertIsNone(self.successResultOf(self.read(reads, infos[1])))
        self.failureResultOf(self.read(reads, infos[2]), OSError)

    def test_close_forgets_pending(self) -> None:
        """Reads not taken when the FETCH ends are dropped: their failures are not logged as unhandled."""
        box = HeldMailbox()
        reads = _ReadAhead(box, [info(u) for u in range(1, 5)])
        reads.close()
        for uid in list(box.pending):
            box.pending.pop(uid).errback(OSError("late failure"))
        self.assertEqual(self.flushLoggedErrors(OSError), [])


class FetchReadAheadTests(test_server.ServerTestCase):
    """FETCH of whole messages over the protocol, with a store that answers reads later."""

    def test_reads_under_way_together(self) -> None:
        """
        The messages of a FETCH BODY[] are asked for together (up to
        READ_AHEAD), and the answer is the same as when every read answers
        at once.
        """
        for n in range(10):
            self.uids.append(self.successResultOf(self.mailbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n)))
        proto, transport = self.login()
        command = b"f1 FETCH 1:* (UID BODY.PEEK[])\r\n"
        expected = self.send(proto, transport, command)
        self.assertTrue(expected.endswith(b"f1 OK FETCH completed\r\n"), expected)
        held = HeldMailbox()
        real = self.mailbox.read_message
        self.patch(self.mailbox, "read_message", held.read_message)
        transport.clear()
        proto.dataReceived(command)
        self.assertEqual(transport.value(), b"")
        # The first message awaited, and READ_AHEAD more asked ahead of it.
        self.assertEqual(held.asked, self.uids[: READ_AHEAD + 1])
        self.assertEqual(len(held.pending), READ_AHEAD + 1)
        while held.pending:
            uid = min(held.pending)
            held.pending.pop(uid).callback(self.successResultOf(real(uid)))
        self.assertEqual(held.asked, self.uids)
        self.assertEqual(transport.value(), expected)
