"""
The two ends of the SMTP workers' hand-over (:mod:`txmail.workers`) without
processes: a worker's :class:`~txmail.workers.WorkerRouter` and the
owner's answer to :class:`~txmail.workers.Deliver`, over a real AMP
connection on a loopback transport (:func:`twisted.test.iosim`).  The
processes themselves are tested end to end in ``tests/e2e/test_workers.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.protocols import amp
from twisted.python.failure import Failure
from twisted.test.iosim import connect, makeFakeClient, makeFakeServer
from twisted.trial.unittest import SynchronousTestCase

from txmail.mime import parse_metadata
from txmail.model import DeliveryReport, Envelope, MessageSource, RecipientResult
from txmail.quota import Usage
from txmail.smtp.codes import Reply
from txmail.smtp.server import reply_for_report
from txmail.workers import (
    AMP_VALUE_LIMIT,
    OWNER_FAILED_REPLY,
    Deliver,
    WorkerRouter,
    _OwnerAMP,
    _OwnerStores,
    envelope_from_json,
    envelope_to_json,
)

MESSAGE = b"From: a@remote.test\r\nSubject: hello\r\nMessage-ID: <m1@remote.test>\r\n\r\nbody\r\n"
ENVELOPE = Envelope(
    mail_from="a@remote.test",
    rcpt_to=("bob@example.test", "carol@example.test"),
    rcpt_params=({}, {"NOTIFY": "SUCCESS"}),
    helo="client.test",
    peer="192.0.2.1:4000",
    tls=True,
    received_at=1_700_000_000.5,
    protocol="ESMTPS",
    message_id="M1",
)


def spooled(test: SynchronousTestCase, data: bytes = MESSAGE) -> MessageSource:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return MessageSource.from_file(path, len(data))


class FakeRouter:
    """The owner's router: records what it was asked, answers *replies* per recipient."""

    def __init__(self) -> None:
        self.delivered: list[tuple[Envelope, bytes, Any]] = []
        self.fail: dict[str, tuple[bool, str | Reply | None]] = {}

    def deliver(self, envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
        with message.open() as f:
            self.delivered.append((envelope, f.read(), message.metadata))
        results = []
        for rcpt in envelope.rcpt_to:
            if rcpt in self.fail:
                temporary, reply = self.fail[rcpt]
                results.append(RecipientResult(rcpt, ok=False, temporary=temporary, reply=reply))
            else:
                results.append(RecipientResult(rcpt, ok=True, reply="250 2.0.0 OK", detail=rcpt))
        return defer.succeed(DeliveryReport(tuple(results)))

    def _usage(self, user: str) -> defer.Deferred[Usage | None]:
        return defer.succeed(Usage(octets=1234, messages=5) if user == "bob@example.test" else None)


class FakePool:
    def __init__(self, router: FakeRouter) -> None:
        self.router = router


class FakeChecker:
    directory = object()

    def __init__(self) -> None:
        self.checked: list[tuple[str, str | None]] = []

    def check_recipient(self, address: str, authenticated_user: str | None = None) -> Any:
        self.checked.append((address, authenticated_user))
        return defer.succeed(RecipientResult(address, ok=True))


class HandOverTests(SynchronousTestCase):
    """A worker's router and the owner, talking AMP."""

    def setUp(self) -> None:
        self.router = FakeRouter()
        owner = _OwnerAMP(FakePool(self.router), 1)  # type: ignore[arg-type]
        self.worker = amp.AMP()
        self.pump = connect(owner, makeFakeServer(owner), self.worker, makeFakeClient(self.worker))
        self.spool = self.mktemp()
        os.makedirs(self.spool)

        def hand_over(envelope: bytes, envelope_file: str, path: str, size: int, metadata: bytes) -> Any:
            return self.worker.callRemote(
                Deliver,
                envelope=envelope,
                envelope_file=envelope_file,
                path=path,
                size=size,
                metadata=metadata,
            )

        self.checker = FakeChecker()
        self.worker_router = WorkerRouter(self.checker, hand_over, self.spool)

    def deliver(self, envelope: Envelope = ENVELOPE, message: MessageSource | None = None) -> DeliveryReport:
        message = message or spooled(self)
        self.message_path = message.local_path or ""
        d = self.worker_router.deliver(envelope, message)
        self.pump.flush()
        return self.successResultOf(d)

    def test_owner_delivers_what_the_worker_spooled(self) -> None:
        """The owner's router gets the same envelope, the spooled octets, and the worker's parse."""
        report = self.deliver()
        [(envelope, data, metadata)] = self.router.delivered
        self.assertEqual(envelope, ENVELOPE)
        self.assertEqual(data, MESSAGE)
        self.assertEqual(metadata, parse_metadata(MESSAGE))
        self.assertTrue(report.all_ok)
        self.assertEqual(reply_for_report(report, "M1").code, 250)
        self.assertEqual([r.detail for r in report.results], ["bob@example.test", "carol@example.test"])

    def test_the_owners_failures_are_the_reply(self) -> None:
        """Per-recipient results cross intact: a temporary failure for one makes the final reply 451."""
        self.router.fail["carol@example.test"] = (True, "452 4.2.2 Mailbox full")
        report = self.deliver()
        self.assertEqual(
            [(r.recipient, r.ok, r.temporary, r.reply) for r in report.results],
            [
                ("bob@example.test", True, False, Reply(250, "2.0.0", "OK")),
                ("carol@example.test", False, True, Reply(452, "4.2.2", "Mailbox full")),
            ],
        )
        self.assertEqual(reply_for_report(report, "M1").code, 451)

    def test_typed_replies_cross_intact(self) -> None:
        """A Reply (multi-line, or without an enhanced code) and no reply at all cross as they are."""
        multi = Reply(550, "5.7.1", "Rejected\nsee https://example.test/why")
        self.router.fail["bob@example.test"] = (False, multi)
        self.router.fail["carol@example.test"] = (True, None)
        report = self.deliver()
        self.assertEqual([r.reply for r in report.results], [multi, None])
        self.assertEqual(reply_for_report(report, "M1").code, 451)

    def test_owner_gone_is_451(self) -> None:
        """The owner died before answering: 451 for every recipient, never 250."""
        d = self.worker_router.deliver(ENVELOPE, spooled(self))
        self.worker.connectionLost(Failure(ConnectionLost()))  # before the pump carries the answer
        report = self.successResultOf(d)
        self.assertEqual(
            {(r.ok, r.temporary, r.reply) for r in report.results}, {(False, True, OWNER_FAILED_REPLY)}
        )
        self.assertEqual(reply_for_report(report, "M1").code, 451)
        self.flushLoggedErrors(ConnectionLost)

    def test_large_envelope_goes_by_file(self) -> None:
        """An envelope larger than one AMP value is handed over in a file, removed afterwards."""
        rcpts = tuple(f"user{n:05d}-{'x' * 40}@example.test" for n in range(2000))
        envelope = Envelope(mail_from="a@remote.test", rcpt_to=rcpts, message_id="BIG")
        self.assertGreater(len(envelope_to_json(envelope)), AMP_VALUE_LIMIT)
        report = self.deliver(envelope)
        self.assertEqual(len(report.results), 2000)
        self.assertEqual(self.router.delivered[0][0], envelope)
        self.assertEqual([r.recipient for r in report.results], list(rcpts))  # the report too came by file
        self.assertEqual(os.listdir(self.spool), [])
        self.assertEqual(
            [n for n in os.listdir(os.path.dirname(self.message_path)) if n.endswith(".report")], []
        )

    def test_large_message_parsed_by_the_owner(self) -> None:
        """A message too large for the worker to parse goes without metadata (the owner parses it)."""
        from txmail.workers import PARSE_LIMIT

        big = MESSAGE + b"x" * PARSE_LIMIT + b"\r\n"
        self.deliver(message=spooled(self, big))
        [(_, data, metadata)] = self.router.delivered
        self.assertEqual((len(data), metadata), (len(big), None))

    def test_recipients_checked_by_the_checker(self) -> None:
        self.assertIs(self.worker_router.directory, self.checker.directory)
        result = self.successResultOf(
            self.worker_router.check_recipient("bob@example.test", "alice@example.test")
        )
        self.assertTrue(result.ok)
        self.assertEqual(self.checker.checked, [("bob@example.test", "alice@example.test")])

    def test_storage_usage_asked_of_the_owner(self) -> None:
        """A worker's quota check reads the owner's usage (None: the store keeps none)."""
        stores = _OwnerStores(self.worker)
        store = self.successResultOf(stores.store_for("bob@example.test"))
        d = store.usage()
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), Usage(octets=1234, messages=5))
        d = self.successResultOf(stores.store_for("nobody@example.test")).usage()
        self.pump.flush()
        self.assertIsNone(self.successResultOf(d))


class RestartDelayTests(SynchronousTestCase):
    def test_backoff(self) -> None:
        """A worker dying young waits longer each time (up to a minute); one that ran a while, the first delay."""
        from txmail.workers import MAX_RESTART_DELAY, YOUNG, next_delay

        delays = []
        last = 0.0
        for _ in range(10):
            last = next_delay(last, 0.5, 1.0)
            delays.append(last)
        self.assertEqual(delays, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0])
        self.assertEqual(MAX_RESTART_DELAY, 60.0)
        self.assertEqual(next_delay(60.0, YOUNG, 1.0), 1.0)
        self.assertEqual(next_delay(0.0, YOUNG + 100, 0.25), 0.25)


class EnvelopeTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        self.assertEqual(envelope_from_json(envelope_to_json(ENVELOPE)), ENVELOPE)
        held = Envelope(mail_from="", rcpt_to=("b@example.test",), hold="quarantine", folder="Junk")
        self.assertEqual(envelope_from_json(envelope_to_json(held)), held)
        self.assertEqual(json.loads(envelope_to_json(ENVELOPE))["rcpt_to"], list(ENVELOPE.rcpt_to))
