"""
The owner's side of the SMTP workers (:mod:`txmail.workers`) without
processes: what a worker's :class:`~txmail.delivery.queue.QueueWriter`
writes, the owner's :meth:`~txmail.delivery.queue.SpoolQueue.adopt` and
``claim_entry``, :meth:`~txmail.delivery.runner.QueueRunner.deliver_fresh`,
and the worker's :class:`~txmail.workers.WorkerRouter`.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.delivery.test_runner import MESSAGE, RunnerTestCase
from txmail.delivery.queue import QueueWriter, SpoolQueue
from txmail.errors import QueueError
from txmail.mime import decode_metadata, encode_metadata, parse_metadata
from txmail.model import DeliveryReport, Envelope, MessageSource, RecipientResult
from txmail.smtp.server import reply_for_report
from txmail.workers import OWNER_FAILED_REPLY, WorkerRouter


def source(test: SynchronousTestCase, data: bytes = MESSAGE) -> MessageSource:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return MessageSource.from_file(path, len(data))


class WriterCase(RunnerTestCase):
    """The runner fixtures, and entries written as a worker writes them."""

    def write(self, rcpts: list[str], **env: Any) -> str:
        writer = QueueWriter(self.dir, now=self.clock.seconds)
        envelope = Envelope(mail_from="carol@remote.test", rcpt_to=tuple(rcpts), message_id="W1", **env)
        return self.successResultOf(writer.enqueue(envelope, source(self), rcpts))


class WriterTests(WriterCase):
    """A worker's QueueWriter writes entries the owner's SpoolQueue adopts, one by one."""

    def test_written_entry_is_the_queues_format(self) -> None:
        """The files are the queue's own: a queue opened on the directory reads the entry back."""
        queue_id = self.write(["bob@example.test", "dave@remote.test"])
        self.assertEqual(sorted(os.listdir(self.dir)), sorted([f"{queue_id}.json", f"{queue_id}.msg"]))
        entry = self.successResultOf(SpoolQueue(self.dir).get_entry(queue_id))
        self.assertEqual(entry.envelope.message_id, "W1")
        self.assertEqual({r: s["state"] for r, s in entry.recipients.items()},
                         {"bob@example.test": "pending", "dave@remote.test": "pending"})  # fmt: skip
        self.assertEqual(entry.size, len(MESSAGE))

    def test_hold(self) -> None:
        """An envelope on hold is written with every recipient held, as the queue's enqueue does."""
        queue_id = self.write(["bob@example.test"], hold="quarantine")
        entry = self.successResultOf(SpoolQueue(self.dir).get_entry(queue_id))
        self.assertEqual(entry.recipients["bob@example.test"]["state"], "held")

    def test_no_recipients(self) -> None:
        writer = QueueWriter(self.dir)
        envelope = Envelope(mail_from="a@b.test", rcpt_to=())
        self.failureResultOf(writer.enqueue(envelope, source(self), []), QueueError)
        self.assertEqual(os.listdir(self.dir), [])

    def test_adopt_then_claim(self) -> None:
        """The owner's queue learns of the entry by adopt, without a rescan; one claim at a time."""
        queue_id = self.write(["bob@example.test"])
        self.assertEqual(self.entries(), [])
        self.assertTrue(self.successResultOf(self.queue.adopt(queue_id)))
        [entry] = self.entries()
        self.assertEqual(entry.queue_id, queue_id)
        self.assertTrue(self.successResultOf(self.queue.adopt(queue_id)))  # twice: the same
        self.assertEqual(self.entries(), [entry])
        self.assertEqual(self.successResultOf(self.queue.claim_entry(queue_id, 60)).queue_id, queue_id)
        self.assertIsNone(self.successResultOf(self.queue.claim_entry(queue_id, 60)))
        self.assertEqual(self.successResultOf(self.queue.claim(None, 60)), [])  # a pass does not get it
        self.clock.advance(61)  # the lease ran out
        self.assertIsNotNone(self.successResultOf(self.queue.claim_entry(queue_id, 60)))

    def test_adopt_of_an_entry_worked_to_its_end(self) -> None:
        """An entry this queue has deleted (a pass delivered it first) is not adopted again."""
        queue_id = self.write(["bob@example.test"])
        self.assertEqual([e.queue_id for e in self.successResultOf(self.queue.claim(None, 60))], [queue_id])
        self.successResultOf(self.queue.delete_entry(queue_id))
        self.assertFalse(self.successResultOf(self.queue.adopt(queue_id)))
        self.assertEqual(self.entries(), [])

    def test_rescan_leaves_new_entries_to_their_writer_a_while(self) -> None:
        """With adopt_grace, a pass does not take what a worker has just queued (the worker hands it over)."""
        queue = SpoolQueue(self.dir, adopt_grace=3600)
        queue_id = self.write(["bob@example.test"])
        self.assertEqual(self.successResultOf(queue.claim(None, 60)), [])
        self.assertTrue(self.successResultOf(queue.adopt(queue_id)))
        self.assertEqual([e.queue_id for e in self.successResultOf(queue.list_entries())], [queue_id])
        # Without (the default), a rescan takes it in at once.
        self.assertEqual([e.queue_id for e in self.successResultOf(self.queue.claim(None, 60))], [queue_id])

    def test_adopt_refuses_what_is_not_an_entry(self) -> None:
        self.failureResultOf(self.queue.adopt("../../etc/passwd"), QueueError)
        self.failureResultOf(self.queue.adopt("ABCDEF0123456789AB"), QueueError)
        self.assertIsNone(self.successResultOf(self.queue.claim_entry("ABCDEF0123456789AB", 60)))


class RaceTests(WriterCase):
    """Directory reads that began before an entry was deleted do not bring it back."""

    def later(self) -> tuple[Any, Any]:
        pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((fn, args, d))
            return d

        return run_blocking, pending

    def test_adopt_read_while_a_pass_deletes(self) -> None:
        """A pass worked the entry to its end while the adoption read it: adopt is False, no ghost."""
        run_blocking, pending = self.later()
        queue = SpoolQueue(self.dir, run_blocking=run_blocking, now=self.clock.seconds)
        queue_id = self.write(["bob@example.test"])
        adopted = queue.adopt(queue_id)  # the worker's hand-over: its read waits
        fn, args, read = pending.pop(0)
        reading = fn(*args)  # the entry is there when it is read...
        claimed = queue.claim(None, 60)
        fn, args, d = pending.pop(0)
        d.callback(fn(*args))  # ... a pass's rescan finds it too...
        self.assertEqual([e.queue_id for e in self.successResultOf(claimed)], [queue_id])
        deleted = queue.delete_entry(queue_id)  # ... delivers it and deletes it
        read.callback(reading)
        self.assertFalse(self.successResultOf(adopted))
        fn, args, d = pending.pop(0)
        d.callback(fn(*args))
        self.successResultOf(deleted)
        self.assertEqual(self.successResultOf(queue.list_entries()), [])
        self.assertIsNone(self.successResultOf(queue.claim_entry(queue_id, 60)))

    def test_deleted_during_a_rescan_stays_deleted(self) -> None:
        pending: list[tuple[Any, tuple[Any, ...], defer.Deferred[Any]]] = []

        def later(fn: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append((fn, args, d))
            return d

        def run_next() -> None:
            fn, args, d = pending.pop(0)
            d.callback(fn(*args))

        queue = SpoolQueue(self.dir, run_blocking=later, now=self.clock.seconds)
        queue_id = self.write(["bob@example.test"])
        rescan = queue.rescan()  # its directory read waits
        adopted = queue.adopt(queue_id)
        scan, args, scanned = pending.pop(0)
        reading = scan(*args)  # the rescan reads the directory: the entry is there...
        run_next()  # (the adoption reads the entry)
        self.successResultOf(adopted)
        self.assertIsNotNone(self.successResultOf(queue.claim_entry(queue_id, 60)))
        deleted = queue.delete_entry(queue_id)  # delivered: the files go (in a thread, later)
        scanned.callback(reading)  # ... and that reading is applied only now
        self.successResultOf(rescan)
        run_next()  # the files are removed
        self.successResultOf(deleted)
        self.assertEqual(self.successResultOf(queue.list_entries()), [])
        claimed = queue.claim(None, 60)  # a pass: nothing to work
        run_next()
        self.assertEqual(self.successResultOf(claimed), [])
        self.assertEqual(os.listdir(self.dir), [])


class DeliverFreshTests(WriterCase):
    """QueueRunner.deliver_fresh: the local copies at once, remote ones left to a pass."""

    def test_local_only_entry_delivered_and_removed(self) -> None:
        runner = self.runner()
        queue_id = self.write(["bob@example.test", "eve@example.test"])
        self.successResultOf(runner.deliver_fresh(queue_id))
        [(envelope, data)] = self.router.delivered
        self.assertEqual(envelope.rcpt_to, ("bob@example.test", "eve@example.test"))
        self.assertEqual(envelope.message_id, "W1")
        self.assertEqual(data, MESSAGE)
        self.assertEqual(os.listdir(self.dir), [])
        self.assertEqual(self.smtp.calls, [])

    def test_remote_recipients_wait_for_a_pass(self) -> None:
        """deliver_fresh sends nothing remote (a worker's 250 must not wait for a remote host)."""
        runner = self.runner()
        queue_id = self.write(["bob@example.test", "dave@remote.test"])
        self.successResultOf(runner.deliver_fresh(queue_id))
        self.assertEqual([e.rcpt_to for e, _ in self.router.delivered], [("bob@example.test",)])
        self.assertEqual(self.smtp.calls, [])
        # The local outcome is on disk: a restarted owner would not deliver it again.
        states = SpoolQueue(self.dir).get_entry(queue_id)
        recipients = self.successResultOf(states).recipients
        self.assertEqual(recipients["bob@example.test"]["state"], "delivered")
        self.assertEqual(recipients["dave@remote.test"]["state"], "pending")
        self.pass_(runner)
        self.assertEqual([c["recipients"] for c in self.smtp.calls], [[("dave@remote.test", {})]])
        self.assertEqual(len(self.router.delivered), 1)
        self.assertEqual(os.listdir(self.dir), [])

    def test_failed_local_copy_is_deferred_in_the_queue(self) -> None:
        """A local copy that fails is recorded as deferred: still 'taken' (the worker answers 250)."""

        def refuse(envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
            return defer.succeed(
                DeliveryReport(
                    tuple(
                        RecipientResult(r, ok=False, temporary=True, reply="452 4.2.2 Mailbox full")
                        for r in envelope.rcpt_to
                    )
                )
            )

        self.router.deliver = refuse  # type: ignore[method-assign]
        runner = self.runner()
        queue_id = self.write(["bob@example.test"])
        self.successResultOf(runner.deliver_fresh(queue_id))
        state = self.states(queue_id)["bob@example.test"]
        self.assertEqual(state["state"], "deferred")
        self.assertIn("452", state["last_error"] or state.get("reply", ""))

    def test_entry_a_pass_holds_is_awaited(self) -> None:
        """When a pass found the entry first (a rescan), deliver_fresh fires once the pass delivered it."""
        slow: list[defer.Deferred[DeliveryReport]] = []

        def held(envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
            d: defer.Deferred[DeliveryReport] = defer.Deferred()
            slow.append(d)
            return d.addCallback(
                lambda _: DeliveryReport(tuple(RecipientResult(r, ok=True) for r in envelope.rcpt_to))
            )

        self.router.deliver = held  # type: ignore[method-assign]
        runner = self.runner()
        queue_id = self.write(["bob@example.test"])
        passing = runner.run_pass()  # the rescan at the start of the pass finds the entry
        self.assertEqual(len(slow), 1)
        fresh = runner.deliver_fresh(queue_id)
        self.assertNoResult(fresh)
        slow[0].callback(None)
        self.successResultOf(fresh)
        self.successResultOf(passing)
        self.assertEqual(len(slow), 1)  # delivered once
        self.assertEqual(os.listdir(self.dir), [])

    def test_handed_entry_and_metadata_are_used(self) -> None:
        """Given the entry's octets and the parsed message, the owner reads no file and parses nothing."""
        writer = QueueWriter(self.dir, now=self.clock.seconds)
        envelope = Envelope(mail_from="carol@remote.test", rcpt_to=("bob@example.test",), message_id="W2")
        written = self.successResultOf(writer.write(envelope, source(self), ["bob@example.test"]))
        os.unlink(os.path.join(self.dir, f"{written.entry.queue_id}.json"))  # a read would fail
        metadata = parse_metadata(MESSAGE)
        runner = self.runner()
        self.successResultOf(
            runner.deliver_fresh(
                written.entry.queue_id,
                written.data,
                written.stamp,
                decode_metadata(encode_metadata(metadata)),
            )
        )
        [(envelope, data)] = self.router.delivered
        self.assertEqual((envelope.message_id, data), ("W2", MESSAGE))
        self.assertEqual(self.router.metadata, [metadata])

    def test_missing_entry(self) -> None:
        self.failureResultOf(self.runner().deliver_fresh("ABCDEF0123456789AB"), QueueError)


class FakeChecker:
    directory = object()

    def __init__(self) -> None:
        self.checked: list[tuple[str, str | None]] = []

    def _qualify(self, address: str) -> str:
        return "postmaster@example.test" if address.lower() == "postmaster" else address

    def check_recipient(self, address: str, authenticated_user: str | None = None) -> Any:
        self.checked.append((address, authenticated_user))
        return defer.succeed(RecipientResult(address, ok=True))


class WorkerRouterTests(SynchronousTestCase):
    """The worker's router: queue durably, hand over, and only then 250."""

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.handed: list[tuple[str, defer.Deferred[Any]]] = []
        self.details: list[tuple[bytes, int, bytes]] = []

        def hand_over(queue_id: str, entry: bytes, stamp: int, metadata: bytes) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            self.handed.append((queue_id, d))
            self.details.append((entry, stamp, metadata))
            return d

        self.checker = FakeChecker()
        self.router = WorkerRouter(self.checker, QueueWriter(self.dir), hand_over)
        self.envelope = Envelope(mail_from="a@remote.test", rcpt_to=("Postmaster", "bob@example.test"))

    def test_recipients_checked_by_the_checker(self) -> None:
        self.assertIs(self.router.directory, self.checker.directory)
        result = self.successResultOf(self.router.check_recipient("bob@example.test", "alice@example.test"))
        self.assertTrue(result.ok)
        self.assertEqual(self.checker.checked, [("bob@example.test", "alice@example.test")])

    def test_250_only_once_the_owner_took_it(self) -> None:
        d = self.router.deliver(self.envelope, source(self))
        [(queue_id, answer)] = self.handed
        self.assertNoResult(d)  # queued, but the owner has not answered yet
        entry = self.successResultOf(SpoolQueue(self.dir).get_entry(queue_id))
        self.assertEqual(sorted(entry.recipients), ["bob@example.test", "postmaster@example.test"])
        # The entry as written and the parsed message go along: the owner reads and parses nothing.
        [(data, stamp, metadata)] = self.details
        path = os.path.join(self.dir, f"{queue_id}.json")
        with open(path, "rb") as f:
            self.assertEqual(data, f.read())
        self.assertEqual(stamp, os.stat(path).st_mtime_ns)
        self.assertEqual(decode_metadata(metadata), parse_metadata(MESSAGE))
        answer.callback({})
        report = self.successResultOf(d)
        self.assertTrue(report.all_ok)
        self.assertEqual([r.recipient for r in report.results], ["Postmaster", "bob@example.test"])
        self.assertEqual(reply_for_report(report, "M").code, 250)

    def test_owner_gone_is_451(self) -> None:
        """The owner died before answering: 451 (the queued copy is the next owner's to deliver)."""
        from twisted.internet.error import ConnectionLost

        d = self.router.deliver(self.envelope, source(self))
        [(_, answer)] = self.handed
        answer.errback(ConnectionLost())
        report = self.successResultOf(d)
        self.assertFalse(report.all_ok)
        self.assertEqual({(r.reply, r.temporary) for r in report.results}, {(OWNER_FAILED_REPLY, True)})
        self.assertEqual(reply_for_report(report, "M").code, 451)
        self.flushLoggedErrors(ConnectionLost)

    def test_queue_failure_is_451_and_nothing_handed(self) -> None:
        router = WorkerRouter(self.checker, QueueWriter(os.path.join(self.dir, "missing")), self.fail)
        report = self.successResultOf(router.deliver(self.envelope, source(self)))
        self.assertFalse(report.all_ok)
        self.assertEqual(report.results[0].reply, OWNER_FAILED_REPLY)
        self.flushLoggedErrors()
