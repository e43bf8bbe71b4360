"""
Tests for the durable outbound spool, txmail.delivery.queue: the queue
conformance suite (:mod:`txmail.testing.queue`), plus the spool's files
and its own methods (release).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from txmail.delivery.queue import SpoolQueue
from txmail.errors import QueueError
from txmail.model import DeliveryState, Envelope, MessageSource, RecipientState
from txmail.testing.queue import QueueConformanceMixin


def make_message(test: SynchronousTestCase, data: bytes = b"Subject: x\r\n\r\nbody\r\n") -> MessageSource:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return MessageSource.from_file(path, len(data), fsynced=True)


ENVELOPE = Envelope(
    mail_from="alice@example.test",
    rcpt_to=("bob@remote.test", "carol@remote.test"),
    rcpt_params=({}, {"NOTIFY": "FAILURE"}),
    helo="client.test",
    authenticated_user="alice@example.test",
    message_id="M1",
)


#: A queue entry as the file queue wrote it before recipient states were
#: typed: each state holds the fields the runner had set (and one it never
#: knew, ``x_custom``).
UNTYPED_ENTRY = (
    b'{"created": 1700000000.0, "envelope": {"authenticated_user": null, "folder": null,'
    b' "helo": "", "hold": null, "mail_from": "alice@example.test", "mail_params": {},'
    b' "message_id": "", "peer": "", "protocol": "ESMTP", "rcpt_params": [], "rcpt_to":'
    b' ["bob@remote.test", "carol@remote.test", "dave@remote.test"], "received_at": 0.0,'
    b' "tls": false}, "queue_id": "6553F10063FBC49834", "recipients": {"bob@remote.test":'
    b' {"attempts": 2, "delay_notice_sent": true, "host": "mx1.remote.test", "last_attempt":'
    b' 1700000300.0, "last_error": "451 4.2.0 try later", "next_attempt": 1700000900.0,'
    b' "state": "deferred", "status": "4.2.0"}, "carol@remote.test": {"attempts": 1, "host":'
    b' "mx1.remote.test", "last_attempt": 1700000300.0, "last_error": null, "next_attempt":'
    b' null, "reply": "250 2.0.0 queued as 1", "state": "delivered", "status": "2.0.0",'
    b' "success_action": "relayed", "success_sent": false}, "dave@remote.test": {"attempts": 1,'
    b' "dsn_sent": true, "host": "mx1.remote.test", "last_attempt": 1700000300.0, "last_error":'
    b' "550 5.1.1 no such user", "next_attempt": null, "state": "failed", "status": "5.1.1",'
    b' "x_custom": 7}}, "size": 5, "version": 1}'
)

#: The states of :data:`UNTYPED_ENTRY`, loaded.
UNTYPED_STATES = {
    "bob@remote.test": RecipientState(
        DeliveryState.DEFERRED,
        attempts=2,
        next_attempt=1700000900.0,
        last_error="451 4.2.0 try later",
        last_attempt=1700000300.0,
        host="mx1.remote.test",
        status="4.2.0",
        delay_notice_sent=True,
    ),
    "carol@remote.test": RecipientState(
        DeliveryState.DELIVERED,
        attempts=1,
        last_attempt=1700000300.0,
        host="mx1.remote.test",
        reply="250 2.0.0 queued as 1",
        status="2.0.0",
        success_action="relayed",
        success_sent=False,
    ),
    "dave@remote.test": RecipientState(
        DeliveryState.FAILED,
        attempts=1,
        last_error="550 5.1.1 no such user",
        last_attempt=1700000300.0,
        host="mx1.remote.test",
        status="5.1.1",
        dsn_sent=True,
    ),
}


class SpoolQueueConformanceTests(QueueConformanceMixin, TestCase):
    """The spool directory queue keeps the whole queue contract."""

    def make_queue(self) -> SpoolQueue:
        return SpoolQueue(self.mktemp())

    def reopen_queue(self, queue: Any) -> SpoolQueue:
        return SpoolQueue(queue.directory)


class SpoolQueueThreadedConformanceTests(QueueConformanceMixin, TestCase):
    """The conformance suite again, with file work in real threads (as the server runs it)."""

    def make_queue(self) -> SpoolQueue:
        return SpoolQueue(self.mktemp(), run_blocking=deferToThread)

    def reopen_queue(self, queue: Any) -> SpoolQueue:
        return SpoolQueue(queue.directory, run_blocking=deferToThread)


class SpoolQueueTests(SynchronousTestCase):
    """The spool's files: one .msg and one .json per entry."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        self.queue = SpoolQueue(self.dir, now=lambda: 1700000000.0)

    def test_entry_files(self) -> None:
        """An entry is its message in <id>.msg and its envelope in <id>.json, the two files alone."""
        qid = self.successResultOf(
            self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test", "carol@remote.test"])
        )
        with open(os.path.join(self.dir, f"{qid}.msg"), "rb") as f:
            self.assertEqual(f.read(), b"Subject: x\r\n\r\nbody\r\n")
        with open(os.path.join(self.dir, f"{qid}.json")) as f:
            doc = json.load(f)
        self.assertEqual((doc["version"], doc["queue_id"], doc["created"]), (1, qid, 1700000000.0))
        self.assertEqual(sorted(os.listdir(self.dir)), [f"{qid}.json", f"{qid}.msg"])

    def test_hard_link_when_fsynced(self) -> None:
        """A fsynced message file is hard-linked into the queue, not copied."""
        msg = make_message(self)
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, msg, ["bob@remote.test"]))
        self.assertEqual(os.stat(msg.local_path).st_ino, os.stat(os.path.join(self.dir, f"{qid}.msg")).st_ino)

    def test_delete_removes_files(self) -> None:
        """Deleting an entry removes both its files and leaves the other entry's."""
        q1 = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        q2 = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        self.successResultOf(self.queue.delete_entry(q1))
        self.assertFalse(any(n.startswith(q1) for n in os.listdir(self.dir)))
        self.assertEqual(sorted(os.listdir(self.dir)), [f"{q2}.json", f"{q2}.msg"])

    def test_updates_of_one_entry_written_in_order(self) -> None:
        """
        Two updates of one entry made before the first is on disk: the file
        ends with the later state, whatever order the blocking pool would
        finish them in (two threads writing one entry at once raced on one
        temporary file and could leave the earlier state last).
        """
        pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((fn, args, d))
            return d

        def run(index: int) -> None:
            fn, args, d = pending.pop(index)
            d.callback(fn(*args))

        queue = SpoolQueue(self.mktemp(), run_blocking=run_blocking)
        enqueued = queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"])
        while pending:
            run(0)
        qid = self.successResultOf(enqueued)
        first = queue.update_recipients(qid, {"bob@remote.test": RecipientState(DeliveryState.DEFERRED, 1)})
        second = queue.update_recipients(qid, {"bob@remote.test": RecipientState(DeliveryState.DELIVERED, 2)})
        # Whatever is ready runs last first, as a busy pool may.
        while pending:
            run(-1)
        self.successResultOf(first)
        self.successResultOf(second)
        with open(os.path.join(queue.directory, f"{qid}.json")) as f:
            bob = json.load(f)["recipients"]["bob@remote.test"]
        self.assertEqual((bob["state"], bob["attempts"]), ("delivered", 2))
        self.assertEqual(sorted(os.listdir(queue.directory)), [f"{qid}.json", f"{qid}.msg"])

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

    def test_update_recipients_written(self) -> None:
        """Recipient state changes are written to the entry's .json file; refused ones are not."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        path = os.path.join(self.dir, f"{qid}.json")
        self.successResultOf(
            self.queue.update_recipients(
                qid,
                {
                    "bob@remote.test": RecipientState(
                        DeliveryState.DEFERRED, attempts=1, last_error="451 busy"
                    )
                },
            )
        )
        with open(path) as f:
            doc = json.load(f)
        # The fields at their defaults beyond the first four are left out, as before they were typed.
        self.assertEqual(
            doc["recipients"]["bob@remote.test"],
            {"state": "deferred", "attempts": 1, "next_attempt": None, "last_error": "451 busy"},
        )
        lost: Any = "lost"
        self.failureResultOf(
            self.queue.update_recipients(qid, {"bob@remote.test": RecipientState(lost)}), QueueError
        )
        with open(path) as f:
            self.assertEqual(json.load(f), doc)

    def test_update_in_memory_only(self) -> None:
        """durable=False merges in memory and writes nothing; the next durable update writes both."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        path = os.path.join(self.dir, f"{qid}.json")
        with open(path, "rb") as f:
            before = f.read()
        delivered = RecipientState(DeliveryState.DELIVERED)
        self.successResultOf(self.queue.update_recipients(qid, {"bob@remote.test": delivered}, durable=False))
        with open(path, "rb") as f:
            self.assertEqual(f.read(), before)
        entry = self.successResultOf(self.queue.get_entry(qid))
        self.assertEqual(entry.recipients["bob@remote.test"].state, "delivered")
        self.successResultOf(
            self.queue.update_recipients(qid, {"bob@remote.test": RecipientState(DeliveryState.DELIVERED, 1)})
        )
        with open(path) as f:
            written = json.load(f)["recipients"]["bob@remote.test"]
        self.assertEqual((written["state"], written["attempts"]), ("delivered", 1))

    def test_loads_untyped_states(self) -> None:
        """
        An entry written before recipient states were typed (fields as the
        runner kept them, only those it had set) loads as RecipientStates,
        an unknown field dropped; written again, it keeps the same JSON.
        """
        os.makedirs(self.dir, exist_ok=True)
        with open(os.path.join(self.dir, "6553F10063FBC49834.json"), "wb") as f:
            f.write(UNTYPED_ENTRY)
        with open(os.path.join(self.dir, "6553F10063FBC49834.msg"), "wb") as f:
            f.write(b"hello")
        queue = SpoolQueue(self.dir)
        entry = self.successResultOf(queue.get_entry("6553F10063FBC49834"))
        self.assertEqual(entry.recipients, UNTYPED_STATES)
        # Written again (an update of another recipient), the states keep their JSON.
        bob = dataclasses.replace(entry.recipients["bob@remote.test"], attempts=3)
        self.successResultOf(queue.update_recipients("6553F10063FBC49834", {"bob@remote.test": bob}))
        with open(os.path.join(self.dir, "6553F10063FBC49834.json"), "rb") as f:
            written = json.load(f)
        expected = json.loads(UNTYPED_ENTRY)
        expected["recipients"]["bob@remote.test"]["attempts"] = 3
        del expected["recipients"]["dave@remote.test"]["x_custom"]
        self.assertEqual(written, expected)

    def test_unknown_state_skipped(self) -> None:
        """An entry file with a recipient state this version does not know is logged and skipped."""
        qid = self.successResultOf(self.queue.enqueue(ENVELOPE, make_message(self), ["bob@remote.test"]))
        path = os.path.join(self.dir, f"{qid}.json")
        with open(path) as f:
            doc = json.load(f)
        doc["recipients"]["bob@remote.test"]["state"] = "lost"
        with open(path, "w") as f:
            json.dump(doc, f)
        self.assertEqual(self.successResultOf(SpoolQueue(self.dir).list_entries()), [])

    def test_enqueue_needs_recipients(self) -> None:
        """Enqueueing for nobody writes no file."""
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
        self.assertEqual(entry.recipients["b@remote.test"].state, "held")
        reloaded.add_listener(self.woken.append)
        self.woken.clear()
        self.assertEqual(self.successResultOf(reloaded.release(qid)), 1)
        self.assertEqual(self.woken, [qid])
        again = SpoolQueue(self.dir)
        self.assertEqual(
            self.successResultOf(again.get_entry(qid)).recipients["b@remote.test"].state, "pending"
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
