"""Tests for the durable outbound spool, txmail.delivery.queue."""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txmail.delivery.queue import SpoolQueue
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import Envelope, MessageFile


def make_message(test: SynchronousTestCase, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> MessageFile:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return MessageFile(path, len(data), fsynced=True)


ENVELOPE = Envelope(
    mail_from="alice@example.test",
    rcpt_to=("bob@remote.test", "carol@remote.test"),
    rcpt_params=({}, {"NOTIFY": "FAILURE"}),
    helo="client.test",
    authenticated_user="alice@example.test",
    message_id="M1",
)


class SpoolQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.queue = SpoolQueue(self.dir, now=lambda: 1700000000.0)

    def test_interface(self) -> None:
        """SpoolQueue provides IQueue."""
        verifyObject(IQueue, self.queue)

    def test_enqueue_is_durable_and_survives_restart(self) -> None:
        """An enqueued message and its envelope are on disk and reload with every field."""
        msg = make_message(self)
        qid = self.successResultOf(
            self.queue.enqueue(ENVELOPE, msg, ["bob@remote.test", "carol@remote.test"])
        )
        self.assertTrue(os.path.exists(os.path.join(self.dir, f"{qid}.msg")))
        reloaded = SpoolQueue(self.dir)
        entry = self.successResultOf(reloaded.get_entry(qid))
        self.assertEqual(entry.envelope, ENVELOPE)
        self.assertEqual(entry.size, msg.size)
        self.assertEqual(sorted(entry.recipients), ["bob@remote.test", "carol@remote.test"])
        self.assertEqual({r["state"] for r in entry.recipients.values()}, {"pending"})
        f = self.successResultOf(reloaded.open_entry_message(qid))
        with f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody\r\n")

    def test_hard_link_when_fsynced(self) -> None:
        """A fsynced message file is hard-linked into the queue, not copied."""
        msg = make_message(self)
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, msg, ["bob@remote.test"]))
        self.assertEqual(os.stat(msg.path).st_ino, os.stat(os.path.join(self.dir, f"{qid}.msg")).st_ino)

    def test_list_and_delete(self) -> None:
        """Entries are listed oldest first and deleting removes both files."""
        q1 = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        q2 = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        ids = [e.queue_id for e in self.successResultOf(self.queue.list_entries())]
        self.assertEqual(sorted(ids), sorted([q1, q2]))
        self.successResultOf(self.queue.delete_entry(q1))
        self.assertEqual([e.queue_id for e in self.successResultOf(self.queue.list_entries())], [q2])
        self.assertFalse(any(n.startswith(q1) for n in os.listdir(self.dir)))
        self.failureResultOf(self.queue.delete_entry(q1), QueueError)
        self.failureResultOf(self.queue.get_entry(q1), QueueError)

    def test_half_written_entry_removed_at_start(self) -> None:
        """A message file without its envelope (a crash before 250) is removed on load."""
        with open(os.path.join(self.dir, "ABC.msg"), "wb") as f:
            f.write(b"partial")
        with open(os.path.join(self.dir, "ABD.json.tmp123"), "wb") as f:
            f.write(b"{")
        SpoolQueue(self.dir)
        self.assertEqual(os.listdir(self.dir), [])

    def test_corrupt_entry_is_skipped_not_fatal(self) -> None:
        """An unreadable envelope file is logged and skipped; the others load."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        with open(os.path.join(self.dir, "BAD.json"), "w") as f:
            f.write("{not json")
        with open(os.path.join(self.dir, "BAD.msg"), "w") as f:
            f.write("x")
        reloaded = SpoolQueue(self.dir)
        self.assertEqual([e.queue_id for e in self.successResultOf(reloaded.list_entries())], [qid])
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_update_recipients_persists(self) -> None:
        """Recipient state changes are written and reload; unknown states are refused."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        self.successResultOf(
            self.queue.update_recipients(
                qid, {"bob@remote.test": {"state": "deferred", "attempts": 1, "last_error": "451 busy"}}
            )
        )
        with open(os.path.join(self.dir, f"{qid}.json")) as f:
            doc = json.load(f)
        self.assertEqual(doc["recipients"]["bob@remote.test"]["state"], "deferred")
        entry = self.successResultOf(SpoolQueue(self.dir).get_entry(qid))
        self.assertEqual(entry.recipients["bob@remote.test"]["last_error"], "451 busy")
        self.failureResultOf(
            self.queue.update_recipients(qid, {"bob@remote.test": {"state": "lost"}}), QueueError
        )

    def test_update_in_memory_only(self) -> None:
        """durable=False merges in memory and writes nothing; the next durable update writes both."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        path = os.path.join(self.dir, f"{qid}.json")
        with open(path, "rb") as f:
            before = f.read()
        self.successResultOf(
            self.queue.update_recipients(qid, {"bob@remote.test": {"state": "delivered"}}, durable=False)
        )
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        entry = self.successResultOf(self.queue.get_entry(qid))
        self.assertEqual(entry.recipients["bob@remote.test"]["state"], "delivered")
        self.successResultOf(self.queue.update_recipients(qid, {"bob@remote.test": {"attempts": 1}}))
        reloaded = self.successResultOf(SpoolQueue(self.dir).get_entry(qid))
        self.assertEqual(reloaded.recipients["bob@remote.test"]["state"], "delivered")
        self.assertEqual(reloaded.recipients["bob@remote.test"]["attempts"], 1)

    def test_enqueue_needs_recipients(self) -> None:
        """Enqueueing for nobody is an error, not an empty entry."""
        self.failureResultOf(self.queue.enqueue(ENVELOPE, make_message(self), []), QueueError)
        self.assertEqual(os.listdir(self.dir), [])


class HoldTests(SynchronousTestCase):
    """A message with a hold reason waits with every recipient ``held`` until released."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.queue = SpoolQueue(self.dir, now=lambda: 1700000000.0)
        self.woken: list[str] = []
        self.queue.add_listener(self.woken.append)

    def test_held_then_released(self) -> None:
        """Held recipients survive a restart with the reason; release makes them pending and wakes the runner."""
        envelope = Envelope("a@x.test", ("b@remote.test",), hold="milter: quarantined")
        qid = self.successResultOf(self.queue.enqueue(envelope, make_message(self), ["b@remote.test"]))
        reloaded = SpoolQueue(self.dir)
        entry = self.successResultOf(reloaded.get_entry(qid))
        self.assertEqual(entry.envelope.hold, "milter: quarantined")
        self.assertEqual(entry.recipients["b@remote.test"]["state"], "held")
        reloaded.add_listener(self.woken.append)
        self.woken.clear()
        self.assertEqual(self.successResultOf(reloaded.release(qid)), 1)
        self.assertEqual(self.woken, [qid])
        again = SpoolQueue(self.dir)
        self.assertEqual(
            self.successResultOf(again.get_entry(qid)).recipients["b@remote.test"]["state"], "pending"
        )
        self.assertEqual(self.successResultOf(again.release(qid)), 0)

    def test_release_all_and_unknown(self) -> None:
        """release() without an id releases every held entry; an unknown id is a QueueError."""
        held = Envelope("a@x.test", ("b@remote.test",), hold="x")
        self.successResultOf(self.queue.enqueue(held, make_message(self), ["b@remote.test", "c@remote.test"]))
        self.successResultOf(self.queue.enqueue(held, make_message(self), ["d@remote.test"]))
        self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["e@remote.test"]))
        self.assertEqual(self.successResultOf(self.queue.release()), 3)
        self.failureResultOf(self.queue.release("NOPE"), QueueError)
