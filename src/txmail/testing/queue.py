"""
The outbound queue conformance suite.

Every implementation of :class:`txmail.interfaces.IQueue` proves itself by
running these tests: combine :class:`QueueConformanceMixin` with
``twisted.trial.unittest.TestCase`` and implement
:meth:`~QueueConformanceMixin.make_queue` (and, for a persistent queue,
:meth:`~QueueConformanceMixin.reopen_queue`)::

    from twisted.trial.unittest import TestCase

    from txmail.testing.queue import QueueConformanceMixin

    class MyQueueTests(QueueConformanceMixin, TestCase):
        def make_queue(self):
            return MyQueue(self.mktemp())

        def reopen_queue(self, queue):
            return MyQueue(queue.directory)

Both hooks may return a Deferred (a queue that opens a database
connection); a queue that holds resources releases them with
``self.addCleanup`` in :meth:`~QueueConformanceMixin.make_queue`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from txmail.delivery.queue import RECIPIENT_STATES
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import Envelope, MessageSource, QueueEntry
from txmail.testing.sources import file_source, pattern_digest, pattern_source, streamed_source

__all__ = ["ENVELOPE", "QueueConformanceMixin", "queued_message"]

Gen = Generator[Any, Any, None]

BOB = "bob@remote.test"
CAROL = "carol@remote.test"

#: An envelope with every field set to something other than its default.
ENVELOPE = Envelope(
    mail_from="alice@example.test",
    rcpt_to=(BOB, CAROL),
    mail_params={"BODY": "8BITMIME", "SMTPUTF8": None},
    rcpt_params=({}, {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;carol@remote.test"}),
    helo="client.example.test",
    peer="192.0.2.10:40000",
    authenticated_user="alice@example.test",
    tls=True,
    received_at=1_700_000_000.25,
    protocol="ESMTPSA",
    message_id="Q1",
    folder="Sent",
)


def queued_message(n: int = 1) -> bytes:
    """A small message, distinct per *n*."""
    return b"From: alice@example.test\r\nTo: bob@remote.test\r\nSubject: queued %d\r\n\r\nHello.\r\n" % n


class QueueConformanceMixin:
    """
    Behaviour every outbound queue must show (mix into a trial ``TestCase``).

    Subclasses implement :meth:`make_queue`; a persistent queue also
    implements :meth:`reopen_queue`.
    """

    # Provided by TestCase.
    assertEqual: Any
    assertNotEqual: Any
    assertTrue: Any
    assertIsInstance: Any
    assertIsNone: Any
    assertLessEqual: Any
    assertFailure: Any
    mktemp: Any

    def make_queue(self) -> Any:
        """Return a new, empty :class:`~txmail.interfaces.IQueue` (or a Deferred of one)."""
        raise NotImplementedError

    def reopen_queue(self, queue: Any) -> Any:
        """Return a queue on the same storage as *queue*, as after a restart (or a Deferred of one)."""
        return queue

    # -- helpers ------------------------------------------------------------

    @defer.inlineCallbacks
    def queue(self) -> Any:
        """The queue under test, made on first use."""
        if not hasattr(self, "_queue"):
            self._queue = yield defer.maybeDeferred(self.make_queue)
        return self._queue

    @defer.inlineCallbacks
    def reopen(self) -> Any:
        """Restart the queue under test and return the new one."""
        self._queue = yield defer.maybeDeferred(self.reopen_queue, (yield self.queue()))
        return self._queue

    def message_file(self, data: bytes, *, fsynced: bool = True) -> MessageSource:
        """The message as the SMTP server hands it over: a source of a local file the caller owns."""
        return file_source(self.mktemp(), data, fsynced=fsynced)

    @defer.inlineCallbacks
    def enqueue(
        self,
        data: bytes | None = None,
        recipients: tuple[str, ...] = (BOB, CAROL),
        envelope: Envelope = ENVELOPE,
    ) -> Any:
        """Queue *data* (default :func:`queued_message`) and return the queue id."""
        queue = yield self.queue()
        message = self.message_file(queued_message() if data is None else data)
        return (yield queue.enqueue(envelope, message, list(recipients)))

    @defer.inlineCallbacks
    def read(self, queue_id: str) -> Any:
        """The bytes of a queued message, read in pieces."""
        f = yield (yield self.queue()).open_entry_message(queue_id)
        chunks = []
        try:
            while chunk := f.read(65536):
                chunks.append(chunk)
        finally:
            f.close()
        return b"".join(chunks)

    def assertFields(self, state: dict[str, Any], expected: dict[str, Any]) -> None:
        """*state* (a recipient's) has every field of *expected* with its value (and maybe more)."""
        self.assertEqual({key: state.get(key) for key in expected}, expected)

    @defer.inlineCallbacks
    def listed(self) -> Any:
        """The queue ids of :meth:`~txmail.interfaces.IQueue.list_entries`, in its order."""
        return [e.queue_id for e in (yield (yield self.queue()).list_entries())]

    # -- the interface ------------------------------------------------------

    @defer.inlineCallbacks
    def test_interface(self) -> Gen:
        """The queue provides IQueue fully."""
        self.assertTrue(verifyObject(IQueue, (yield self.queue())))

    @defer.inlineCallbacks
    def test_methods_return_deferreds(self) -> Gen:
        """Every method returns a Deferred, also when it fails."""
        queue = yield self.queue()
        calls = [
            queue.enqueue(ENVELOPE, self.message_file(queued_message()), [BOB]),
            queue.enqueue(ENVELOPE, self.message_file(queued_message()), []),
            queue.list_entries(),
            queue.get_entry("NOSUCHID"),
            queue.open_entry_message("NOSUCHID"),
            queue.delete_entry("NOSUCHID"),
            queue.update_recipients("NOSUCHID", {}),
        ]
        for d in calls:
            self.assertIsInstance(d, defer.Deferred)
            try:
                result = yield d
            except QueueError:
                continue
            if hasattr(result, "close"):
                result.close()

    # -- enqueue, get, open ---------------------------------------------------

    @defer.inlineCallbacks
    def test_enqueue_and_get(self) -> Gen:
        """An entry keeps the envelope, size, time and recipients it was queued with."""
        queue = yield self.queue()
        data = queued_message(3)
        before = time.time()
        queue_id = yield self.enqueue(data, (CAROL, BOB))
        after = time.time()
        self.assertIsInstance(queue_id, str)
        self.assertTrue(queue_id)
        entry = yield queue.get_entry(queue_id)
        self.assertIsInstance(entry, QueueEntry)
        self.assertEqual(entry.queue_id, queue_id)
        self.assertEqual(entry.envelope, ENVELOPE)
        self.assertEqual(entry.size, len(data))
        self.assertLessEqual(before - 1, entry.created)
        self.assertLessEqual(entry.created, after + 1)
        self.assertEqual(sorted(entry.recipients), [BOB, CAROL])
        self.assertEqual((yield self.listed()), [queue_id])

    @defer.inlineCallbacks
    def test_new_recipients_pending(self) -> Gen:
        """A new entry's recipients are pending, never tried, with no retry time or error yet."""
        queue = yield self.queue()
        entry = yield queue.get_entry((yield self.enqueue()))
        self.assertEqual(sorted(entry.recipients), [BOB, CAROL])
        for state in entry.recipients.values():
            self.assertFields(
                state, {"state": "pending", "attempts": 0, "next_attempt": None, "last_error": None}
            )

    @defer.inlineCallbacks
    def test_held_recipients(self) -> Gen:
        """An envelope with a hold reason queues every recipient held, also after a restart."""
        held = Envelope("alice@example.test", (BOB, CAROL), hold="milter: quarantined")
        queue_id = yield self.enqueue(envelope=held)
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertEqual(entry.envelope.hold, "milter: quarantined")
            self.assertEqual(
                {r: s["state"] for r, s in entry.recipients.items()}, {BOB: "held", CAROL: "held"}
            )
            yield self.reopen()

    @defer.inlineCallbacks
    def test_enqueue_needs_recipients(self) -> Gen:
        """Enqueueing for no recipient fails with QueueError and queues nothing."""
        queue = yield self.queue()
        yield self.assertFailure(queue.enqueue(ENVELOPE, self.message_file(queued_message()), []), QueueError)
        self.assertEqual((yield self.listed()), [])
        yield self.reopen()
        self.assertEqual((yield self.listed()), [])

    @defer.inlineCallbacks
    def test_message_bytes_exact(self) -> Gen:
        """The queued message reads back byte for byte, 8-bit, NUL and all, whether fsynced or not."""
        queue = yield self.queue()
        body = bytes(b for b in range(256) if b not in b"\r\n") + b"\r\n.\r\n..dot\r\nFrom here\r\n"
        data = queued_message(1) + body + "Grüße, 日本\r\n".encode() + b" trailing space \r\n"
        ids = []
        for fsynced in (True, False):
            message = self.message_file(data, fsynced=fsynced)
            ids.append((yield queue.enqueue(ENVELOPE, message, [BOB])))
            with open(message.local_path, "rb") as f:
                self.assertEqual(f.read(), data)
        for queue_id in ids:
            self.assertEqual((yield self.read(queue_id)), data)
            self.assertEqual((yield queue.get_entry(queue_id)).size, len(data))

    @defer.inlineCallbacks
    def test_message_outlives_callers_file(self) -> Gen:
        """The queue keeps its own copy: removing the caller's file loses nothing."""
        queue = yield self.queue()
        data = queued_message(5)
        message = self.message_file(data)
        queue_id = yield queue.enqueue(ENVELOPE, message, [BOB])
        os.unlink(message.local_path)
        self.assertEqual((yield self.read(queue_id)), data)
        yield self.reopen()
        self.assertEqual((yield self.read(queue_id)), data)

    @defer.inlineCallbacks
    def test_every_kind_of_source(self) -> Gen:
        """A source in memory, a local file and a source that only streams are each queued exactly."""
        queue = yield self.queue()
        body = b"8-bit \xe9\xff NUL \x00\r\n.\r\n" * 500
        datas = [queued_message(n) + body for n in range(3)]
        sources = [
            MessageSource.from_bytes(datas[0]),
            self.message_file(datas[1], fsynced=False),
            streamed_source(datas[2], piece=1000),
        ]
        ids = []
        for source in sources:
            ids.append((yield queue.enqueue(ENVELOPE, source, [BOB])))
        yield self.reopen()
        queue = yield self.queue()
        for queue_id, data in zip(ids, datas, strict=True):
            self.assertEqual((yield self.read(queue_id)), data)
            self.assertEqual((yield queue.get_entry(queue_id)).size, len(data))

    @defer.inlineCallbacks
    def test_large_stream(self) -> Gen:
        """A 5 MB source that only streams (made as it is read) is queued whole and reads back exactly."""
        size = 5 * 1024 * 1024 + 17
        queue = yield self.queue()
        queue_id = yield queue.enqueue(ENVELOPE, pattern_source(size), [BOB])
        self.assertEqual((yield queue.get_entry(queue_id)).size, size)
        f = yield queue.open_entry_message(queue_id)
        digest = hashlib.sha256()
        read = 0
        try:
            while chunk := f.read(65536):
                digest.update(chunk)
                read += len(chunk)
        finally:
            f.close()
        self.assertEqual(read, size)
        self.assertEqual(digest.hexdigest(), pattern_digest(size))

    @defer.inlineCallbacks
    def test_large_message_streams(self) -> Gen:
        """A message of over 1 MB reads back whole, in pieces."""
        data = queued_message() + b"".join(
            b"%07d 0123456789abcdefghijklmnopqrstuvwxyz\r\n" % i for i in range(22000)
        )
        queue_id = yield self.enqueue(data)
        self.assertEqual((yield self.read(queue_id)), data)

    @defer.inlineCallbacks
    def test_entries_are_distinct(self) -> Gen:
        """Each enqueue makes a new entry with its own id and message."""
        ids = []
        for n in range(5):
            ids.append((yield self.enqueue(queued_message(n))))
        self.assertEqual(len(set(ids)), 5)
        self.assertEqual(sorted((yield self.listed())), sorted(ids))
        for n, queue_id in enumerate(ids):
            self.assertEqual((yield self.read(queue_id)), queued_message(n))

    # -- listing ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_list_oldest_first(self) -> Gen:
        """list_entries gives every entry, oldest first, also after a restart."""
        ids = []
        for n in range(6):
            ids.append((yield self.enqueue(queued_message(n))))
        for _ in range(2):
            entries = yield (yield self.queue()).list_entries()
            self.assertEqual(sorted(e.queue_id for e in entries), sorted(ids))
            created = [e.created for e in entries]
            self.assertEqual(created, sorted(created))
            # Entries queued at different times are listed in the order they were queued.
            order = {queue_id: n for n, queue_id in enumerate(ids)}
            for earlier, later in itertools.pairwise(entries):
                if earlier.created != later.created:
                    self.assertTrue(order[earlier.queue_id] < order[later.queue_id])
            yield self.reopen()

    @defer.inlineCallbacks
    def test_list_empty(self) -> Gen:
        """A new queue lists nothing."""
        self.assertEqual((yield (yield self.queue()).list_entries()), [])

    # -- unknown ids and delete ---------------------------------------------------

    @defer.inlineCallbacks
    def test_unknown_id(self) -> Gen:
        """Every method taking a queue id fails with QueueError for an id no entry has."""
        queue = yield self.queue()
        yield self.enqueue()
        for queue_id in ("NOSUCHID", "", "../x"):
            yield self.assertFailure(queue.get_entry(queue_id), QueueError)
            yield self.assertFailure(queue.open_entry_message(queue_id), QueueError)
            yield self.assertFailure(queue.delete_entry(queue_id), QueueError)
            yield self.assertFailure(queue.update_recipients(queue_id, {BOB: {"attempts": 1}}), QueueError)
        self.assertEqual(len((yield self.listed())), 1)

    @defer.inlineCallbacks
    def test_delete(self) -> Gen:
        """A deleted entry is gone for every method; the others stay."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        self.assertIsNone((yield queue.delete_entry(first)))
        self.assertEqual((yield self.listed()), [second])
        yield self.assertFailure(queue.get_entry(first), QueueError)
        yield self.assertFailure(queue.open_entry_message(first), QueueError)
        yield self.assertFailure(queue.update_recipients(first, {BOB: {"attempts": 1}}), QueueError)
        yield self.assertFailure(queue.delete_entry(first), QueueError)
        self.assertEqual((yield self.read(second)), queued_message(2))

    @defer.inlineCallbacks
    def test_deleted_gone_after_reopen(self) -> Gen:
        """A deleted entry does not come back after a restart."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        yield queue.delete_entry(first)
        queue = yield self.reopen()
        self.assertEqual((yield self.listed()), [second])
        yield self.assertFailure(queue.get_entry(first), QueueError)
        yield self.assertFailure(queue.open_entry_message(first), QueueError)
        yield self.assertFailure(queue.delete_entry(first), QueueError)
        yield queue.delete_entry(second)
        yield self.reopen()
        self.assertEqual((yield self.listed()), [])

    # -- recipient states and retries -------------------------------------------

    @defer.inlineCallbacks
    def test_update_recipients(self) -> Gen:
        """A retry scheduled for one recipient is kept with the runner's own fields; the other is untouched."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        change = {
            "state": "deferred",
            "attempts": 1,
            "next_attempt": 1_700_000_600.5,
            "last_error": "451 4.3.0 try later",
            "host": "mx.remote.test",
            "dsn_sent": False,
        }
        self.assertIsNone((yield queue.update_recipients(queue_id, {BOB: change})))
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertFields(entry.recipients[BOB], change)
            self.assertFields(
                entry.recipients[CAROL], {"state": "pending", "attempts": 0, "last_error": None}
            )
            (listed,) = yield (yield self.queue()).list_entries()
            self.assertEqual(listed.recipients, entry.recipients)
            yield self.reopen()

    @defer.inlineCallbacks
    def test_update_merges(self) -> Gen:
        """An update changes only the fields it names; later updates build on earlier ones."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        yield queue.update_recipients(
            queue_id, {BOB: {"state": "deferred", "attempts": 1, "next_attempt": 10.0}}
        )
        yield queue.update_recipients(queue_id, {BOB: {"attempts": 2}, CAROL: {"state": "delivered"}})
        queue = yield self.reopen()
        entry = yield queue.get_entry(queue_id)
        self.assertFields(
            entry.recipients[BOB],
            {"state": "deferred", "attempts": 2, "next_attempt": 10.0, "last_error": None},
        )
        self.assertFields(entry.recipients[CAROL], {"state": "delivered", "attempts": 0})

    @defer.inlineCallbacks
    def test_every_state(self) -> Gen:
        """Each recipient state the queue defines is accepted and kept."""
        recipients = tuple(f"r{n}@remote.test" for n in range(len(RECIPIENT_STATES)))
        queue_id = yield self.enqueue(
            recipients=recipients, envelope=Envelope("alice@example.test", recipients)
        )
        changes = {rcpt: {"state": state} for rcpt, state in zip(recipients, RECIPIENT_STATES, strict=True)}
        yield (yield self.queue()).update_recipients(queue_id, changes)
        entry = yield (yield self.reopen()).get_entry(queue_id)
        self.assertEqual(
            {r: s["state"] for r, s in entry.recipients.items()},
            dict(zip(recipients, RECIPIENT_STATES, strict=True)),
        )

    @defer.inlineCallbacks
    def test_invalid_state(self) -> Gen:
        """An unknown recipient state fails with QueueError and changes nothing, not even the valid part."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        changes = {BOB: {"state": "deferred", "attempts": 1}, CAROL: {"state": "lost"}}
        yield self.assertFailure(queue.update_recipients(queue_id, changes), QueueError)
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertEqual(
                {r: (s["state"], s["attempts"]) for r, s in entry.recipients.items()},
                {
                    BOB: ("pending", 0),
                    CAROL: ("pending", 0),
                },
            )
            yield self.reopen()

    @defer.inlineCallbacks
    def test_update_not_durable(self) -> Gen:
        """Changes made with durable=False are seen at once and made durable by the next durable update."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        yield queue.update_recipients(queue_id, {BOB: {"state": "delivered"}}, durable=False)
        entry = yield queue.get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB]["state"], "delivered")
        yield queue.update_recipients(queue_id, {CAROL: {"state": "deferred", "attempts": 1}})
        entry = yield (yield self.reopen()).get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB]["state"], "delivered")
        self.assertEqual(
            (entry.recipients[CAROL]["state"], entry.recipients[CAROL]["attempts"]), ("deferred", 1)
        )

    # -- restarts ---------------------------------------------------------------

    @defer.inlineCallbacks
    def test_survives_reopen(self) -> Gen:
        """Entries, envelopes, recipients and messages survive a restart unchanged."""
        ids = []
        for n in range(3):
            ids.append((yield self.enqueue(queued_message(n))))
        before = yield (yield self.queue()).list_entries()
        queue = yield self.reopen()
        after = yield queue.list_entries()
        self.assertEqual(
            [(e.queue_id, e.envelope, e.recipients, e.size, e.created) for e in after],
            [(e.queue_id, e.envelope, e.recipients, e.size, e.created) for e in before],
        )
        for n, queue_id in enumerate(ids):
            self.assertEqual((yield self.read(queue_id)), queued_message(n))
        again = yield self.enqueue(queued_message(9))
        self.assertNotEqual(again, ids[0])
        self.assertEqual(len(set((yield self.listed()))), 4)
