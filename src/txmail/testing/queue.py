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

import dataclasses
import hashlib
import itertools
import os
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from zope.interface.verify import verifyObject

from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import DeliveryState, Envelope, MessageSource, QueueEntry, RecipientState
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
    assertIn: Any
    mktemp: Any

    def make_queue(self) -> IQueue | defer.Deferred[IQueue]:
        """Return a new, empty :class:`~txmail.interfaces.IQueue` (or a Deferred of one)."""
        raise NotImplementedError

    def reopen_queue(self, queue: IQueue) -> IQueue | defer.Deferred[IQueue]:
        """Return a queue on the same storage as *queue*, as after a restart (or a Deferred of one)."""
        return queue

    def other_claimer(self, queue: IQueue) -> IQueue | defer.Deferred[IQueue]:
        """
        Return a queue that claims entries besides *queue* (or a Deferred of
        one): *queue* itself for a queue one process works, a queue of
        another node on the same storage for a shared one.
        """
        return queue

    # -- helpers ------------------------------------------------------------

    @defer.inlineCallbacks
    def queue(self) -> Generator[Any, Any, IQueue]:
        """The queue under test, made on first use."""
        if not hasattr(self, "_queue"):
            # A backend author's hook: a queue, or a Deferred of one.
            self._queue: IQueue = yield defer.maybeDeferred(self.make_queue)
        return self._queue

    @defer.inlineCallbacks
    def reopen(self) -> Generator[Any, Any, IQueue]:
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

    def assertFields(self, state: RecipientState, expected: dict[str, Any]) -> None:
        """*state* (a recipient's) has every field of *expected* with its value (and maybe more)."""
        self.assertIsInstance(state, RecipientState)
        self.assertIsInstance(state.state, DeliveryState)
        self.assertEqual({key: getattr(state, key) for key in expected}, expected)

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
            queue.claim(None, 60),
            queue.release_claim("NOSUCHID"),
            queue.renew_claims(["NOSUCHID"], 60),
            queue.open_source("NOSUCHID"),
            queue.flush(),
            queue.release(None),
            queue.release("NOSUCHID"),
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
            self.assertEqual({r: s.state for r, s in entry.recipients.items()}, {BOB: "held", CAROL: "held"})
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
            assert message.local_path is not None
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
        assert message.local_path is not None
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
            yield self.assertFailure(
                queue.update_recipients(queue_id, {BOB: RecipientState(attempts=1)}), QueueError
            )
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
        yield self.assertFailure(
            queue.update_recipients(first, {BOB: RecipientState(attempts=1)}), QueueError
        )
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
        change = RecipientState(
            state=DeliveryState.DEFERRED,
            attempts=1,
            next_attempt=1_700_000_600.5,
            last_error="451 4.3.0 try later",
            host="mx.remote.test",
            dsn_sent=False,
        )
        self.assertIsNone((yield queue.update_recipients(queue_id, {BOB: change})))
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertEqual(entry.recipients[BOB], change)
            self.assertFields(
                entry.recipients[CAROL], {"state": "pending", "attempts": 0, "last_error": None}
            )
            (listed,) = yield (yield self.queue()).list_entries()
            self.assertEqual(listed.recipients, entry.recipients)
            yield self.reopen()

    @defer.inlineCallbacks
    def test_update_replaces_named(self) -> Gen:
        """An update sets the states of the recipients it names; the others keep theirs."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        deferred = RecipientState(DeliveryState.DEFERRED, attempts=1, next_attempt=10.0, host="mx")
        yield queue.update_recipients(queue_id, {BOB: deferred})
        again = dataclasses.replace(deferred, attempts=2, host=None)
        yield queue.update_recipients(queue_id, {BOB: again, CAROL: RecipientState(DeliveryState.DELIVERED)})
        queue = yield self.reopen()
        entry = yield queue.get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB], again)
        self.assertFields(entry.recipients[CAROL], {"state": "delivered", "attempts": 0})
        yield queue.update_recipients(queue_id, {CAROL: RecipientState(DeliveryState.FAILED, attempts=1)})
        entry = yield (yield self.reopen()).get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB], again)

    @defer.inlineCallbacks
    def test_every_field_kept(self) -> Gen:
        """Every field of a recipient state, each away from its default, survives a restart."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        full = RecipientState(
            state=DeliveryState.DELIVERED,
            attempts=3,
            next_attempt=1_700_000_900.25,
            last_error="451 4.4.1 no answer",
            last_attempt=1_700_000_800.5,
            host="mx.remote.test",
            reply="250 2.0.0 queued as 12345",
            status="2.0.0",
            dsn_sent=True,
            delay_notice_sent=True,
            success_action="relayed",
            success_sent=False,
        )
        yield queue.update_recipients(queue_id, {BOB: full})
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertEqual(entry.recipients[BOB], full)
            self.assertEqual(entry.recipients[CAROL], RecipientState(DeliveryState.PENDING))
            yield self.reopen()

    @defer.inlineCallbacks
    def test_every_state(self) -> Gen:
        """Each recipient state the queue defines is accepted and kept."""
        states = tuple(DeliveryState)
        recipients = tuple(f"r{n}@remote.test" for n in range(len(states)))
        queue_id = yield self.enqueue(
            recipients=recipients, envelope=Envelope("alice@example.test", recipients)
        )
        changes = {rcpt: RecipientState(state) for rcpt, state in zip(recipients, states, strict=True)}
        yield (yield self.queue()).update_recipients(queue_id, changes)
        entry = yield (yield self.reopen()).get_entry(queue_id)
        self.assertEqual(
            {r: s.state for r, s in entry.recipients.items()},
            dict(zip(recipients, states, strict=True)),
        )
        for s in entry.recipients.values():
            self.assertIsInstance(s.state, DeliveryState)

    @defer.inlineCallbacks
    def test_invalid_state(self) -> Gen:
        """An unknown recipient state fails with QueueError and changes nothing, not even the valid part."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        lost: Any = "lost"  # not a DeliveryState: what an untyped caller might pass
        changes = {
            BOB: RecipientState(DeliveryState.DEFERRED, attempts=1),
            CAROL: RecipientState(lost),
        }
        yield self.assertFailure(queue.update_recipients(queue_id, changes), QueueError)
        for _ in range(2):
            entry = yield (yield self.queue()).get_entry(queue_id)
            self.assertEqual(
                {r: (s.state, s.attempts) for r, s in entry.recipients.items()},
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
        yield queue.update_recipients(queue_id, {BOB: RecipientState(DeliveryState.DELIVERED)}, durable=False)
        entry = yield queue.get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB].state, "delivered")
        yield queue.update_recipients(queue_id, {CAROL: RecipientState(DeliveryState.DEFERRED, attempts=1)})
        entry = yield (yield self.reopen()).get_entry(queue_id)
        self.assertEqual(entry.recipients[BOB].state, "delivered")
        self.assertEqual((entry.recipients[CAROL].state, entry.recipients[CAROL].attempts), ("deferred", 1))

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

    # -- what a queue runner needs ---------------------------------------------

    @defer.inlineCallbacks
    def claimed(self, queue: IQueue, limit: int | None = None, lease: float = 3600) -> Any:
        """The queue ids :meth:`~txmail.interfaces.IQueue.claim` gives, in its order."""
        return [e.queue_id for e in (yield queue.claim(limit, lease))]

    @defer.inlineCallbacks
    def test_claim_gives_entries_once(self) -> Gen:
        """claim gives every unclaimed entry, oldest first, with its state; a second claim gets none."""
        queue = yield self.queue()
        ids = []
        for n in range(3):
            ids.append((yield self.enqueue(queued_message(n))))
        entries = yield queue.claim(None, 3600)
        self.assertEqual([e.queue_id for e in entries], ids)
        self.assertEqual(entries[0].envelope, ENVELOPE)
        self.assertEqual(entries[0].recipients[BOB].state, "pending")
        self.assertEqual(entries[0].size, len(queued_message(0)))
        self.assertEqual((yield self.claimed(queue)), [])
        other = yield defer.maybeDeferred(self.other_claimer, queue)
        self.assertEqual((yield self.claimed(other)), [])
        # Claims hide nothing from the listing.
        self.assertEqual((yield self.listed()), ids)

    @defer.inlineCallbacks
    def test_claim_limit(self) -> Gen:
        """claim takes at most *limit* entries, the oldest; the next claim takes the next ones."""
        queue = yield self.queue()
        ids = []
        for n in range(5):
            ids.append((yield self.enqueue(queued_message(n))))
        other = yield defer.maybeDeferred(self.other_claimer, queue)
        self.assertEqual((yield self.claimed(queue, 2)), ids[:2])
        self.assertEqual((yield self.claimed(other, 2)), ids[2:4])
        self.assertEqual((yield self.claimed(queue, 2)), ids[4:])
        self.assertEqual((yield self.claimed(other, 2)), [])

    @defer.inlineCallbacks
    def test_release_claim(self) -> Gen:
        """A released entry is claimable again, by anyone; releasing an unknown or unclaimed id is no error."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        self.assertEqual((yield self.claimed(queue)), [first, second])
        self.assertIsNone((yield queue.release_claim(second)))
        other = yield defer.maybeDeferred(self.other_claimer, queue)
        self.assertEqual((yield self.claimed(other)), [second])
        if other is not queue:
            # Another claimer's claim is not this one's to release.
            yield queue.release_claim(second)
            self.assertEqual((yield self.claimed(queue)), [])
        yield other.release_claim(second)
        yield queue.release_claim("NOSUCHID")
        self.assertEqual((yield self.claimed(queue)), [second])

    @defer.inlineCallbacks
    def test_renew_claims(self) -> Gen:
        """Renewed claims outlast their first lease; only the claimer's own live claims are renewed."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        deleted = yield self.enqueue(queued_message(3))
        self.assertEqual((yield self.claimed(queue, lease=0)), [first, second, deleted])
        yield queue.delete_entry(deleted)
        other = yield defer.maybeDeferred(self.other_claimer, queue)
        renewed = yield queue.renew_claims([first, deleted, "NOSUCHID"], 3600)
        self.assertEqual(renewed, [first])
        # The first is held again; the second's lease ran out.
        self.assertEqual((yield self.claimed(other)), [second])
        if other is not queue:
            # The second is the other claimer's now: not renewed for the first one.
            self.assertEqual((yield queue.renew_claims([second], 3600)), [])
        yield queue.release_claim(first)
        self.assertEqual((yield queue.renew_claims([first], 3600)), [])

    @defer.inlineCallbacks
    def test_expired_lease_claimable(self) -> Gen:
        """Once its lease has run out (its runner died), an entry is claimable again."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        self.assertEqual((yield self.claimed(queue, 1, lease=3600)), [first])
        self.assertEqual((yield self.claimed(queue, 1, lease=0)), [second])
        other = yield defer.maybeDeferred(self.other_claimer, queue)
        self.assertEqual((yield self.claimed(other)), [second])
        self.assertEqual((yield self.claimed(queue)), [])

    @defer.inlineCallbacks
    def test_claims_and_new_entries(self) -> Gen:
        """New entries are claimable while others are claimed; a deleted entry is never given."""
        queue = yield self.queue()
        first = yield self.enqueue(queued_message(1))
        self.assertEqual((yield self.claimed(queue)), [first])
        second = yield self.enqueue(queued_message(2))
        third = yield self.enqueue(queued_message(3))
        yield queue.delete_entry(second)
        self.assertEqual((yield self.claimed(queue)), [third])
        yield queue.delete_entry(first)
        yield queue.release_claim(first)
        yield queue.release_claim(third)
        self.assertEqual((yield self.claimed(queue)), [third])

    @defer.inlineCallbacks
    def test_claim_sees_updates(self) -> Gen:
        """A claimed entry carries the recipient states last written."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        change = RecipientState(DeliveryState.DEFERRED, attempts=2, host="mx")
        yield queue.update_recipients(queue_id, {BOB: change})
        (entry,) = yield queue.claim(None, 3600)
        self.assertEqual(entry.recipients[BOB], change)
        self.assertEqual(entry.recipients[CAROL].state, "pending")

    @defer.inlineCallbacks
    def test_open_source_bytes_exact(self) -> Gen:
        """open_source gives the message as a MessageSource: its size, its bytes exactly, each open anew."""
        queue = yield self.queue()
        body = bytes(b for b in range(256) if b not in b"\r\n") + b"\r\n.\r\n"
        data = queued_message(7) + body * 3000
        queue_id = yield self.enqueue(data)
        source = yield queue.open_source(queue_id)
        self.assertIsInstance(source, MessageSource)
        self.assertEqual(source.size, len(data))
        for _ in range(2):
            with source.open() as f:
                chunks = []
                while chunk := f.read(65536):
                    self.assertLessEqual(len(chunk), 65536)
                    chunks.append(chunk)
            self.assertEqual(b"".join(chunks), data)
        self.assertEqual(source.read(), data)
        yield self.assertFailure(queue.open_source("NOSUCHID"), QueueError)

    @defer.inlineCallbacks
    def test_open_source_large_stream(self) -> Gen:
        """A 3 MB message comes back through open_source exactly."""
        size = 3 * 1024 * 1024 + 5
        queue = yield self.queue()
        queue_id = yield queue.enqueue(ENVELOPE, pattern_source(size), [BOB])
        source = yield queue.open_source(queue_id)
        digest = hashlib.sha256()
        with source.open() as f:
            while chunk := f.read(100_000):
                digest.update(chunk)
        self.assertEqual(digest.hexdigest(), pattern_digest(size))

    @defer.inlineCallbacks
    def test_listener_told_of_new_entries(self) -> Gen:
        """A listener hears the id of each new entry, once it is durable."""
        queue = yield self.queue()
        heard: list[str] = []
        queue.add_listener(heard.append)
        first = yield self.enqueue(queued_message(1))
        second = yield self.enqueue(queued_message(2))
        self.assertEqual(heard, [first, second])
        self.assertEqual((yield queue.get_entry(first)).queue_id, first)

    @defer.inlineCallbacks
    def test_flush(self) -> Gen:
        """flush makes deferred recipients due now and counts them; others are left alone."""
        queue = yield self.queue()
        queue_id = yield self.enqueue()
        later = time.time() + 86400
        yield queue.update_recipients(
            queue_id,
            {
                BOB: RecipientState(DeliveryState.DEFERRED, attempts=1, next_attempt=later, host="mx"),
                CAROL: RecipientState(DeliveryState.DELIVERED),
            },
        )
        before = time.time()
        self.assertEqual((yield queue.flush()), 1)
        entry = yield (yield self.reopen()).get_entry(queue_id)
        bob = entry.recipients[BOB]
        self.assertFields(bob, {"state": "deferred", "attempts": 1, "host": "mx"})
        assert bob.next_attempt is not None
        self.assertLessEqual(bob.next_attempt, time.time() + 1)
        self.assertLessEqual(before - 1, bob.next_attempt)
        self.assertFields(entry.recipients[CAROL], {"state": "delivered", "next_attempt": None})
        # Still deferred (due now): counted again.
        self.assertEqual((yield (yield self.queue()).flush()), 1)

    @defer.inlineCallbacks
    def test_release_held(self) -> Gen:
        """release makes held recipients pending (one entry's, or all) and tells the listeners."""
        held = Envelope("alice@example.test", (BOB, CAROL), hold="milter: quarantined")
        first = yield self.enqueue(envelope=held)
        second = yield self.enqueue(envelope=held)
        plain = yield self.enqueue()
        queue = yield self.queue()
        heard: list[str] = []
        queue.add_listener(heard.append)
        self.assertEqual((yield queue.release(first)), 2)
        self.assertIn(first, heard)
        entry = yield (yield self.reopen()).get_entry(first)
        self.assertFields(entry.recipients[BOB], {"state": "pending", "next_attempt": None})
        self.assertEqual((yield (yield self.queue()).get_entry(second)).recipients[BOB].state, "held")
        self.assertEqual((yield (yield self.queue()).release(None)), 2)
        entry = yield (yield self.queue()).get_entry(second)
        self.assertEqual({s.state for s in entry.recipients.values()}, {"pending"})
        self.assertEqual((yield (yield self.queue()).release(None)), 0)
        self.assertEqual((yield (yield self.queue()).release(plain)), 0)
        yield self.assertFailure((yield self.queue()).release("NOSUCHID"), QueueError)
