"""
Copy listeners of the IMAP server (txmail.imap.listeners): told of every
successful COPY and MOVE, after the command, with the messages readable
from the target mailbox; a failing listener does not fail the command.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from tests.imap.test_server import MESSAGES, ServerTestCase
from txmail.imap.listeners import MessagesCopied
from txmail.model import SpecialUse

__all__: list[str] = []


class Recorder:
    def __init__(self, result: Any = None) -> None:
        self.events: list[MessagesCopied] = []
        self.result = result

    def messages_copied(self, event: MessagesCopied) -> Any:
        self.events.append(event)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


class CopyListenerTests(ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.successResultOf(self.store.create_mailbox("Junk", SpecialUse.JUNK))
        self.successResultOf(self.store.create_mailbox("Saved"))

    def login_with(self, *listeners: Any) -> Any:
        proto, transport = self.connect(copy_listeners=list(listeners))
        self.send(proto, transport, b'a1 LOGIN alice@example.test "imap secret"\r\n')
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"s1 OK", out)
        return proto, transport

    def test_move_into_junk(self) -> None:
        """UID MOVE: one event after the OK, moved, with the \\Junk role and the message readable."""
        recorder = Recorder()
        proto, transport = self.login_with(recorder)
        out = self.send(proto, transport, b"m1 UID MOVE %d Junk\r\n" % self.uids[0])
        self.assertIn(b"m1 OK", out)
        self.assertEqual(recorder.events, [])  # not before the command's turn ended
        self.clock.advance(0)
        (event,) = recorder.events
        self.assertEqual(
            (event.user, event.source, event.target, event.moved),
            ("alice@example.test", "INBOX", "Junk", True),
        )
        self.assertIsNone(event.source_special_use)
        self.assertEqual(event.target_special_use, SpecialUse.JUNK)
        self.assertEqual([src for src, _ in event.uids], [self.uids[0]])
        self.assertEqual(self.successResultOf(event.read_message(event.uids[0][1])), MESSAGES[0])

    def test_copy_out_of_junk(self) -> None:
        """COPY from Junk into another folder: moved is false, the source role is \\Junk."""
        junk = self.successResultOf(self.store.get_mailbox("Junk"))
        self.successResultOf(junk.append(MESSAGES[1], (), 1_600_000_000))
        recorder = Recorder()
        proto, transport = self.login_with(recorder)
        self.send(proto, transport, b"s2 SELECT Junk\r\n")
        out = self.send(proto, transport, b"c1 COPY 1 Saved\r\n")
        self.assertIn(b"c1 OK [COPYUID", out)
        self.clock.advance(0)
        (event,) = recorder.events
        self.assertEqual((event.source, event.target, event.moved), ("Junk", "Saved", False))
        self.assertEqual((event.source_special_use, event.target_special_use), (SpecialUse.JUNK, None))
        self.assertEqual(self.successResultOf(event.read_message(event.uids[0][1])), MESSAGES[1])

    def test_nothing_copied(self) -> None:
        """A failed COPY (no such mailbox) tells no one."""
        recorder = Recorder()
        proto, transport = self.login_with(recorder)
        out = self.send(proto, transport, b"c1 COPY 1 Nowhere\r\n")
        self.assertIn(b"NO [TRYCREATE]", out)
        self.clock.advance(0)
        self.assertEqual(recorder.events, [])

    def test_failing_listener(self) -> None:
        """A listener that raises or fails is logged; the others are told, the command succeeded."""
        raising, failing, fine = (
            Recorder(RuntimeError("boom")),
            Recorder(defer.fail(ValueError("late"))),
            Recorder(),
        )
        proto, transport = self.login_with(raising, failing, fine)
        out = self.send(proto, transport, b"m1 MOVE 1:2 Saved\r\n")
        self.assertIn(b"m1 OK", out)
        self.clock.advance(0)
        self.assertEqual(len(fine.events), 1)
        self.assertEqual(len(fine.events[0].uids), 2)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError, ValueError)), 2)
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertIn(b"n1 OK", out)

    def test_no_listeners(self) -> None:
        """Without listeners nothing is scheduled."""
        proto, transport = self.login_with()
        self.send(proto, transport, b"m1 MOVE 1 Saved\r\n")
        self.assertEqual(
            self.clock.getDelayedCalls(),
            [c for c in self.clock.getDelayedCalls() if c.getTime() > self.clock.seconds()],
        )
