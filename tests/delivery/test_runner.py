"""Tests for the queue runner, txmail.delivery.runner, with a fake SMTP client, resolver and router."""

from __future__ import annotations

import email
import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txmail.delivery.backoff import RetrySchedule
from txmail.delivery.mx import Destination, NoRoute, NullMX
from txmail.delivery.queue import SpoolQueue
from txmail.delivery.runner import QueueRunner, Smarthost, xtext_decode
from txmail.model import (
    DeliveryReport,
    DeliveryState,
    Envelope,
    MessageSource,
    RecipientResult,
    RecipientState,
)
from txmail.smtp.client import RelayRequest, TransactionResult
from txmail.smtp.codes import Reply

START = 1_700_000_000.0
MESSAGE = b"From: alice@example.test\r\nSubject: hello\r\nMessage-ID: <m1@example.test>\r\n\r\nbody\r\n"


def ok(code: int = 250, enhanced: str = "2.1.5", text: str = "OK") -> Reply:
    return Reply(code, enhanced, text)


def transaction(rcpt_replies: dict[str, Reply], message_reply: Reply | None = None) -> TransactionResult:
    """A result where the server answered RCPTs and (if any was accepted) the content."""
    if message_reply is None and any(r.is_positive for r in rcpt_replies.values()):
        message_reply = Reply(250, "2.0.0", "queued")
    return TransactionResult(
        greeting_reply=Reply(220, "", "hi"),
        per_recipient=rcpt_replies,
        message_reply=message_reply,
        error=None,
        temporary=False,
    )


def no_answer(error: str = "connection refused") -> TransactionResult:
    return TransactionResult(None, {}, None, error=error, temporary=True)


class FakeResolver:
    def __init__(self, table: dict[str, Any]) -> None:
        self.table = table
        self.asked: list[str] = []

    def resolve(self, domain: str) -> defer.Deferred[list[Destination]]:
        self.asked.append(domain)
        value = self.table.get(domain)
        if isinstance(value, Exception):
            return defer.fail(value)
        if value is None:
            return defer.fail(NoRoute(f"domain {domain} does not exist", temporary=False))
        return defer.succeed(value)


class FakeSMTP:
    """Stands in for deliver_once: ``behaviour(address, recipients) -> TransactionResult``."""

    def __init__(self, behaviour: Any) -> None:
        self.behaviour = behaviour
        self.calls: list[dict[str, Any]] = []

    def __call__(self, request: RelayRequest) -> defer.Deferred[TransactionResult]:
        data = request.message.read()  # type: ignore[union-attr]
        fields = {name: getattr(request, name) for name in RelayRequest.__dataclass_fields__}
        self.calls.append({**fields, "data": data})
        return defer.succeed(self.behaviour(request.host, [r for r, _ in request.recipients]))


class FakeRouter:
    def __init__(self) -> None:
        self.delivered: list[tuple[Envelope, bytes]] = []

    def deliver(self, envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
        with message.open() as f:
            self.delivered.append((envelope, f.read()))
        return defer.succeed(DeliveryReport(tuple(RecipientResult(r, ok=True) for r in envelope.rcpt_to)))


class RunnerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.dir = self.mktemp()
        self.queue = SpoolQueue(self.dir, now=self.clock.seconds)
        self.router = FakeRouter()
        self.resolver = FakeResolver(
            {
                "remote.test": [
                    Destination("mx1.remote.test", "192.0.2.1", 10),
                    Destination("mx2.remote.test", "192.0.2.2", 20),
                ],
                "other.test": [Destination("mx.other.test", "192.0.2.9", 10)],
                "nullmx.test": NullMX("nullmx.test accepts no mail (null MX, RFC 7505)"),
                "servfail.test": NoRoute("MX lookup for servfail.test failed", temporary=True),
            }
        )
        self.smtp = FakeSMTP(lambda host, rcpts: transaction({r: ok() for r in rcpts}))

    def runner(self, **kwargs: Any) -> QueueRunner:
        kwargs.setdefault("schedule", RetrySchedule(delays=(300, 600), then_every=3600, give_up_after=86400))
        return QueueRunner(
            self.queue,
            self.router,
            self.resolver,
            self.smtp,
            clock=self.clock,
            hostname="mx.example.test",
            is_local=lambda d: d == "example.test",
            relay_port=2525,
            **kwargs,
        )

    def enqueue(self, rcpts: list[str], sender: str = "alice@example.test", **env: Any) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        envelope = Envelope(mail_from=sender, rcpt_to=tuple(rcpts), received_at=self.clock.seconds(), **env)
        return self.successResultOf(
            self.queue.enqueue(envelope, MessageSource.from_file(path, len(MESSAGE)), rcpts)
        )

    def states(self, queue_id: str) -> dict[str, RecipientState]:
        return self.successResultOf(self.queue.get_entry(queue_id)).recipients

    def entries(self) -> list[Any]:
        return self.successResultOf(self.queue.list_entries())

    def pass_(self, runner: QueueRunner) -> None:
        self.successResultOf(runner.run_pass())


class DeliveryTests(RunnerTestCase):
    def test_groups_by_domain(self) -> None:
        """One transaction per domain carries all of its recipients; delivered entries are removed."""
        self.enqueue(["a@remote.test", "b@other.test", "c@REMOTE.test"])
        self.pass_(self.runner())
        calls = sorted((c["host"], tuple(r for r, _ in c["recipients"])) for c in self.smtp.calls)
        self.assertEqual(
            calls, [("192.0.2.1", ("a@remote.test", "c@REMOTE.test")), ("192.0.2.9", ("b@other.test",))]
        )
        call = self.smtp.calls[0]
        self.assertEqual(call["port"], 2525)
        self.assertEqual(call["hostname"], "mx.example.test")
        self.assertEqual(call["mail_from"], "alice@example.test")
        self.assertEqual(call["tls_hostname"], "mx1.remote.test")
        self.assertEqual(call["data"], MESSAGE)
        self.assertEqual(self.entries(), [])
        self.assertEqual(self.router.delivered, [])

    def test_next_mx_when_first_does_not_answer(self) -> None:
        """A host that does not answer passes the turn to the next MX (RFC 5321 section 5.1)."""
        self.smtp.behaviour = lambda host, rcpts: (
            no_answer() if host == "192.0.2.1" else transaction({r: ok() for r in rcpts})
        )
        self.enqueue(["a@remote.test"])
        self.pass_(self.runner())
        self.assertEqual([c["host"] for c in self.smtp.calls], ["192.0.2.1", "192.0.2.2"])
        self.assertEqual(self.entries(), [])

    def test_per_recipient_states_and_retry(self) -> None:
        """4xx defers on the schedule with last_error and host; the retry waits until it is due."""
        replies = {"a@remote.test": ok(), "b@remote.test": Reply(451, "4.2.0", "try later")}
        self.smtp.behaviour = lambda host, rcpts: transaction({r: replies[r] for r in rcpts})
        qid = self.enqueue(["a@remote.test", "b@remote.test"])
        runner = self.runner()
        self.pass_(runner)
        st = self.states(qid)
        self.assertEqual(st["a@remote.test"].state, "delivered")
        self.assertEqual(st["a@remote.test"].host, "mx1.remote.test")
        b = st["b@remote.test"]
        self.assertEqual(b.state, "deferred")
        self.assertEqual(b.attempts, 1)
        self.assertEqual(b.next_attempt, START + 300)
        self.assertEqual(b.last_error, "451 4.2.0 try later")
        self.assertEqual(b.host, "mx1.remote.test")

        self.clock.advance(299)
        self.pass_(runner)
        self.assertEqual(len(self.smtp.calls), 1)  # not due yet

        self.clock.advance(1)
        replies["b@remote.test"] = Reply(451, "4.2.0", "still later")
        self.pass_(runner)
        self.assertEqual([r for r, _ in self.smtp.calls[1]["recipients"]], ["b@remote.test"])
        b = self.states(qid)["b@remote.test"]
        self.assertEqual((b.attempts, b.next_attempt), (2, START + 300 + 600))

        self.clock.advance(600)
        replies["b@remote.test"] = ok()
        self.pass_(runner)
        self.assertEqual(self.entries(), [])
        self.assertEqual(self.router.delivered, [])

    def test_timer_and_new_entries(self) -> None:
        """The service makes a pass at start, on new entries and every poll_interval."""
        runner = self.runner(poll_interval=60)
        runner.startService()
        self.addCleanup(runner.stopService)
        self.clock.advance(0)
        self.enqueue(["a@remote.test"])
        self.clock.advance(0)
        self.assertEqual(len(self.smtp.calls), 1)
        self.assertEqual(self.entries(), [])

        self.smtp.behaviour = lambda host, rcpts: transaction({r: Reply(450, "4.2.1", "busy") for r in rcpts})
        qid = self.enqueue(["b@remote.test"])
        self.clock.advance(0)
        self.assertEqual(self.states(qid)["b@remote.test"].state, "deferred")
        self.smtp.behaviour = lambda host, rcpts: transaction({r: ok() for r in rcpts})
        self.clock.advance(300)  # due now; the next poll picks it up
        self.assertEqual(len(self.smtp.calls), 3)
        self.assertEqual(self.entries(), [])

    def test_local_retry_goes_through_router(self) -> None:
        """A queued local recipient (a failed local copy) is delivered again through the router."""
        qid = self.enqueue(["bob@example.test"])
        self.pass_(self.runner())
        self.assertEqual(self.smtp.calls, [])
        [(envelope, data)] = self.router.delivered
        self.assertEqual(envelope.rcpt_to, ("bob@example.test",))
        self.assertEqual(envelope.mail_from, "alice@example.test")
        self.assertEqual(data, MESSAGE)
        self.assertNotIn(qid, [e.queue_id for e in self.entries()])

    def test_dsn_parameters_passed_on(self) -> None:
        """NOTIFY/ORCPT and RET/ENVID go to the client (which sends them only to DSN servers)."""
        self.enqueue(
            ["a@remote.test"],
            mail_params={"RET": "HDRS", "ENVID": "QQ+2B1", "BODY": "8BITMIME"},
            rcpt_params=({"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;a@remote.test"},),
        )
        self.pass_(self.runner())
        call = self.smtp.calls[0]
        self.assertEqual(
            call["recipients"],
            [("a@remote.test", {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;a@remote.test"})],
        )
        self.assertEqual(call["mail_params"], {"RET": "HDRS", "ENVID": "QQ+2B1"})
        self.assertTrue(call["needs_8bit"])

    def test_smarthost(self) -> None:
        """With a smarthost no MX is looked up and the credentials go with the attempt."""
        self.enqueue(["a@remote.test"])
        self.pass_(self.runner(smarthost=Smarthost("relay.test", 587, "me", "pw")))
        self.assertEqual(self.resolver.asked, [])
        call = self.smtp.calls[0]
        self.assertEqual((call["host"], call["port"], call["auth"]), ("relay.test", 587, ("me", "pw")))

    def test_per_domain_tls_policy(self) -> None:
        """A per-domain TLS policy overrides the default."""
        self.enqueue(["a@remote.test", "b@other.test"])
        self.pass_(self.runner(tls_policy="opportunistic", domain_tls={"other.test": "verify"}))
        policies = {c["host"]: c["tls_policy"] for c in self.smtp.calls}
        self.assertEqual(policies, {"192.0.2.1": "opportunistic", "192.0.2.9": "verify"})


class ClaimTests(RunnerTestCase):
    """The runner works the entries it claims (IQueue.claim), a batch at a time, and releases them."""

    def test_batches_in_one_pass(self) -> None:
        """With claim_batch, one pass still works every entry, each once, and leaves none claimed."""
        replies = {"d@remote.test": Reply(451, "4.2.0", "try later")}
        self.smtp.behaviour = lambda host, rcpts: transaction({r: replies.get(r, ok()) for r in rcpts})
        ids = [self.enqueue([f"{c}@remote.test"]) for c in "abcde"]
        self.pass_(self.runner(claim_batch=2))
        self.assertEqual(
            sorted(r for c in self.smtp.calls for r, _ in c["recipients"]),
            [f"{c}@remote.test" for c in "abcde"],
        )
        self.assertEqual([e.queue_id for e in self.entries()], [ids[3]])
        # Released at the end of the pass: claimable again.
        self.assertEqual([e.queue_id for e in self.successResultOf(self.queue.claim(None, 60))], [ids[3]])

    def test_skips_entries_claimed_elsewhere(self) -> None:
        """An entry another runner holds is left alone until its claim is released."""
        first = self.enqueue(["a@remote.test"])
        self.clock.advance(1)  # the oldest entry is claimed first
        second = self.enqueue(["b@remote.test"])
        (held,) = self.successResultOf(self.queue.claim(1, 3600))
        self.assertEqual(held.queue_id, first)
        self.pass_(self.runner())
        self.assertEqual([r for c in self.smtp.calls for r, _ in c["recipients"]], ["b@remote.test"])
        self.assertEqual([e.queue_id for e in self.entries()], [first])
        self.successResultOf(self.queue.release_claim(first))
        self.pass_(self.runner())
        self.assertEqual(self.entries(), [])
        # The second entry went in the first pass alone: each recipient was sent once.
        self.assertEqual(
            [r for c in self.smtp.calls for r, _ in c["recipients"]], ["b@remote.test", "a@remote.test"]
        )
        self.assertNotEqual(first, second)

    def test_expired_claim_taken_over(self) -> None:
        """A claim whose lease ran out (its runner died) no longer keeps the entry from this runner."""
        self.enqueue(["a@remote.test"])
        self.successResultOf(self.queue.claim(None, 600))
        runner = self.runner()
        self.pass_(runner)
        self.assertEqual(self.smtp.calls, [])
        self.clock.advance(601)
        self.pass_(runner)
        self.assertEqual(len(self.smtp.calls), 1)
        self.assertEqual(self.entries(), [])


class SlowClaimTests(RunnerTestCase):
    """A delivery that takes longer than the lease: the runner keeps its claims alive meanwhile."""

    def test_claims_renewed_during_a_slow_delivery(self) -> None:
        """While a transaction hangs past the lease, nobody else can claim its entry; afterwards it is done."""
        pending: list[defer.Deferred[TransactionResult]] = []

        def slow(request: RelayRequest) -> defer.Deferred[TransactionResult]:
            d: defer.Deferred[TransactionResult] = defer.Deferred()
            pending.append(d)
            return d

        self.smtp = slow  # type: ignore[assignment]
        self.enqueue(["a@remote.test"])
        runner = self.runner(lease=60)
        d = runner.run_pass()
        self.assertEqual(len(pending), 1)
        for _ in range(10):  # ten minutes, ten leases
            self.clock.advance(60)
            self.assertEqual(self.successResultOf(self.queue.claim(None, 60)), [])
        pending[0].callback(transaction({"a@remote.test": ok()}))
        self.successResultOf(d)
        self.assertEqual(self.entries(), [])
        # The renewals stopped with the pass.
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HoldTests(RunnerTestCase):
    def test_held_entry_waits_until_released(self) -> None:
        """Held recipients are neither tried nor dropped nor bounced; once released they are delivered."""
        qid = self.enqueue(["a@remote.test", "b@example.test"], hold="milter: quarantine")
        runner = self.runner()
        self.pass_(runner)
        self.clock.advance(10 * 86400)  # past give_up_after: still no bounce
        self.pass_(runner)
        self.assertEqual(self.smtp.calls, [])
        self.assertEqual(self.router.delivered, [])
        self.assertEqual({st.state for st in self.states(qid).values()}, {"held"})
        self.successResultOf(self.queue.release(qid))
        self.pass_(runner)
        self.assertEqual(
            [tuple(r for r, _ in c["recipients"]) for c in self.smtp.calls], [("a@remote.test",)]
        )
        [(envelope, _)] = self.router.delivered
        self.assertEqual((envelope.rcpt_to, envelope.hold), (("b@example.test",), None))
        self.assertEqual(self.entries(), [])


class QuotaRetryTests(RunnerTestCase):
    """Local copies the queue retries through DeliveryRouter.redeliver: a full mailbox waits, one too small bounces."""

    def redeliver_with(self, reply: str, temporary: bool) -> None:
        def redeliver(envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
            self.redelivered.append(envelope.rcpt_to)
            return defer.succeed(
                DeliveryReport(
                    tuple(
                        RecipientResult(r, ok=False, temporary=temporary, reply=reply)
                        for r in envelope.rcpt_to
                    )
                )
            )

        self.redelivered: list[tuple[str, ...]] = []
        self.router.redeliver = redeliver  # type: ignore[attr-defined]

    def test_full_mailbox_deferred_with_its_status(self) -> None:
        self.redeliver_with("452 4.2.2 Mailbox full", True)
        qid = self.enqueue(["b@example.test"])
        self.pass_(self.runner())
        st = self.states(qid)["b@example.test"]
        self.assertEqual((st.state, st.status), ("deferred", "4.2.2"))
        self.assertEqual(self.redelivered, [("b@example.test",)])
        self.assertEqual(self.router.delivered, [])  # nothing went through deliver() (no new entry)

    def test_larger_than_quota_bounces_at_once(self) -> None:
        self.redeliver_with("552 5.2.2 Message is larger than the mailbox quota", False)
        qid = self.enqueue(["b@example.test"])
        self.pass_(self.runner())
        [(envelope, data)] = self.router.delivered  # the bounce, through deliver()
        self.assertEqual(envelope.mail_from, "")
        self.assertIn(b"5.2.2", data)
        self.assertEqual(self.entries(), [], qid)


class BounceTests(RunnerTestCase):
    def bounce(self) -> tuple[Envelope, email.message.Message]:
        [(envelope, data)] = self.router.delivered
        return envelope, email.message_from_bytes(data)

    def test_5xx_bounces_once(self) -> None:
        """A 5xx fails the recipient and one DSN goes to the sender from <>, through the router."""
        self.smtp.behaviour = lambda host, rcpts: transaction(
            {r: Reply(550, "5.1.1", "no such user") if r.startswith("x") else ok() for r in rcpts}
        )
        self.enqueue(["x@remote.test", "y@remote.test"])
        runner = self.runner()
        self.pass_(runner)
        envelope, msg = self.bounce()
        self.assertEqual(envelope.mail_from, "")
        self.assertEqual(envelope.rcpt_to, ("alice@example.test",))
        self.assertEqual(msg["To"], "<alice@example.test>")
        self.assertIn("Failure", msg["Subject"])
        report = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
        text = report.as_string()
        self.assertIn("Final-Recipient: rfc822;x@remote.test", text)
        self.assertIn("Status: 5.1.1", text)
        self.assertIn("Remote-MTA: dns; mx1.remote.test", text)
        self.assertIn("Diagnostic-Code: smtp; 550 5.1.1 no such user", text)
        self.assertNotIn("y@remote.test", text)
        self.assertEqual(self.entries(), [])
        self.pass_(runner)
        self.assertEqual(len(self.router.delivered), 1)

    def test_null_mx_and_nxdomain_fail_at_once(self) -> None:
        """Null MX (RFC 7505) and a domain that does not exist fail without an SMTP attempt."""
        self.enqueue(["a@nullmx.test", "b@nowhere.test"])
        self.pass_(self.runner())
        self.assertEqual(self.smtp.calls, [])
        _, msg = self.bounce()
        text = msg.as_string()
        self.assertIn("Status: 5.1.10", text)
        self.assertIn("Status: 5.1.2", text)

    def test_dns_failure_defers(self) -> None:
        """A temporary DNS failure defers (4.4.3), no bounce."""
        qid = self.enqueue(["a@servfail.test"])
        self.pass_(self.runner())
        st = self.states(qid)["a@servfail.test"]
        self.assertEqual((st.state, st.status), ("deferred", "4.4.3"))
        self.assertEqual(self.router.delivered, [])

    def test_null_sender_never_bounced(self) -> None:
        """A failure of a message from <> is not reported (RFC 5321 section 6.1); the entry goes."""
        self.smtp.behaviour = lambda host, rcpts: transaction({r: Reply(550, "5.1.1", "no") for r in rcpts})
        self.enqueue(["x@remote.test"], sender="")
        self.pass_(self.runner())
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.entries(), [])

    def test_notify_never(self) -> None:
        """NOTIFY=NEVER (RFC 3461 section 4.1) suppresses the bounce."""
        self.smtp.behaviour = lambda host, rcpts: transaction({r: Reply(550, "5.1.1", "no") for r in rcpts})
        self.enqueue(["x@remote.test"], rcpt_params=({"NOTIFY": "NEVER"},))
        self.pass_(self.runner())
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.entries(), [])

    def test_ret_full_and_envid(self) -> None:
        """RET=FULL returns the whole message; ENVID and ORCPT are quoted, decoded from xtext."""
        self.smtp.behaviour = lambda host, rcpts: transaction({r: Reply(550, "5.1.1", "no") for r in rcpts})
        self.enqueue(
            ["x@remote.test"],
            mail_params={"RET": "FULL", "ENVID": "env+2Bid"},
            rcpt_params=({"ORCPT": "rfc822;X+2Bo@remote.test"},),
        )
        self.pass_(self.runner())
        _, msg = self.bounce()
        text = msg.as_string()
        self.assertIn("Original-Envelope-Id: env+id", text)
        self.assertIn("Original-Recipient: rfc822;X+o@remote.test", text)
        self.assertIn("message/rfc822", text)
        self.assertIn("body", text)

    def test_expiry_bounces(self) -> None:
        """A temporary failure after the give-up time fails the recipient with 4.4.7 and bounces."""
        self.smtp.behaviour = lambda host, rcpts: no_answer()
        qid = self.enqueue(["a@remote.test"])
        runner = self.runner(
            schedule=RetrySchedule(delays=(100,), then_every=100, give_up_after=250, delay_notice_after=None)
        )
        self.pass_(runner)
        for _ in range(2):
            self.clock.advance(100)
            self.pass_(runner)
            self.assertEqual(self.states(qid)["a@remote.test"].state, "deferred")
        self.assertEqual(self.states(qid)["a@remote.test"].next_attempt, START + 250)
        self.clock.advance(50)
        self.pass_(runner)
        _, msg = self.bounce()
        self.assertIn("Status: 4.4.7", msg.as_string())
        self.assertIn("Action: failed", msg.as_string())
        self.assertEqual(self.entries(), [])

    def test_delay_notice_once(self) -> None:
        """After delay_notice_after a "delayed" DSN goes out, once."""
        self.smtp.behaviour = lambda host, rcpts: no_answer()
        qid = self.enqueue(["a@remote.test"])
        runner = self.runner(
            schedule=RetrySchedule(delays=(100,), then_every=100, give_up_after=1000, delay_notice_after=150)
        )
        self.pass_(runner)
        self.clock.advance(100)
        self.pass_(runner)
        self.assertEqual(self.router.delivered, [])
        self.clock.advance(100)
        self.pass_(runner)
        _, msg = self.bounce()
        self.assertIn("Delay", msg["Subject"])
        self.assertIn("Will-Retry-Until", msg.as_string())
        self.clock.advance(100)
        self.pass_(runner)
        self.assertEqual(len(self.router.delivered), 1)
        self.assertTrue(self.states(qid)["a@remote.test"].delay_notice_sent)


class RestartTests(RunnerTestCase):
    def test_restart_resumes_from_json(self) -> None:
        """A new queue and runner on the same directory continue: retry timing, no second bounce."""
        replies = {"a@remote.test": Reply(451, "4.2.0", "later"), "x@remote.test": Reply(550, "5.1.1", "no")}
        self.smtp.behaviour = lambda host, rcpts: transaction({r: replies[r] for r in rcpts})
        qid = self.enqueue(["a@remote.test", "x@remote.test"])
        self.pass_(self.runner())
        self.assertEqual(len(self.router.delivered), 1)

        # "Restart": fresh objects reading the same files.
        self.queue = SpoolQueue(self.dir, now=self.clock.seconds)
        st = self.states(qid)
        self.assertEqual(st["a@remote.test"].state, "deferred")
        self.assertEqual(st["x@remote.test"].dsn_sent, True)
        runner = self.runner()
        self.pass_(runner)
        self.assertEqual(len(self.smtp.calls), 1)  # not due yet
        self.clock.advance(300)
        replies["a@remote.test"] = ok()
        self.pass_(runner)
        self.assertEqual([r for r, _ in self.smtp.calls[1]["recipients"]], ["a@remote.test"])
        self.assertEqual(len(self.router.delivered), 1)
        self.assertEqual(self.entries(), [])

    def test_other_process_changes_are_seen(self) -> None:
        """flush and delete through another SpoolQueue (the CLI) reach the running runner's queue."""
        self.smtp.behaviour = lambda host, rcpts: no_answer()
        q1 = self.enqueue(["a@remote.test"])
        q2 = self.enqueue(["b@remote.test"])
        runner = self.runner()
        self.pass_(runner)
        cli_queue = SpoolQueue(self.dir, now=self.clock.seconds)
        self.successResultOf(cli_queue.delete_entry(q2))
        self.assertEqual(self.successResultOf(cli_queue.flush()), 1)
        self.smtp.behaviour = lambda host, rcpts: transaction({r: ok() for r in rcpts})
        self.pass_(runner)
        self.assertEqual([r for r, _ in self.smtp.calls[-1]["recipients"]], ["a@remote.test"])
        self.assertEqual(self.entries(), [])
        self.assertFalse(os.path.exists(os.path.join(self.dir, f"{q1}.json")))


class XtextTests(SynchronousTestCase):
    def test_decode(self) -> None:
        """RFC 3461 section 4 xtext: +XX hex escapes of UTF-8 octets."""
        self.assertEqual(xtext_decode("a+2Bb+3Dc"), "a+b=c")
        self.assertEqual(xtext_decode("plain"), "plain")
        self.assertEqual(xtext_decode("+C3+A9"), "é")


@dataclass(frozen=True, slots=True)
class DSNServerResult(TransactionResult):
    """A result from a server that advertised DSN (RFC 3461 section 3)."""

    dsn: bool = True


class SuccessNoticeTests(RunnerTestCase):
    """NOTIFY=SUCCESS (RFC 3461 sections 4.1 and 5.2): "relayed" and "delivered" notices."""

    def notices(self) -> list[tuple[Envelope, email.message.Message]]:
        return [(env, email.message_from_bytes(data)) for env, data in self.router.delivered]

    def test_relayed_notice_for_server_without_dsn(self) -> None:
        """A 2xx from a server without DSN: one "relayed" notice (section 5.2.2), then the entry goes."""
        self.enqueue(
            ["a@remote.test", "b@remote.test", "c@remote.test"],
            mail_params={"ENVID": "env+2Bid"},
            rcpt_params=(
                {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;A@remote.test"},
                {"NOTIFY": "success"},
                {"NOTIFY": "FAILURE"},
            ),
        )
        self.pass_(self.runner())
        [(envelope, msg)] = self.notices()
        self.assertEqual((envelope.mail_from, envelope.rcpt_to), ("", ("alice@example.test",)))
        self.assertEqual(msg["Subject"], "Delivery Status Notification (Success)")
        report = next(p for p in msg.walk() if p.get_content_type() == "message/delivery-status")
        text = report.as_string()
        self.assertEqual(text.count("Action: relayed"), 2)
        self.assertIn("Final-Recipient: rfc822;a@remote.test", text)
        self.assertIn("Original-Recipient: rfc822;A@remote.test", text)
        self.assertIn("Final-Recipient: rfc822;b@remote.test", text)
        self.assertNotIn("c@remote.test", text)  # NOTIFY=FAILURE only
        self.assertIn("Status: 2.0.0", text)
        self.assertIn("Remote-MTA: dns; mx1.remote.test", text)
        self.assertIn("Diagnostic-Code: smtp; 250 2.0.0 queued", text)
        self.assertIn("Original-Envelope-Id: env+id", text)
        self.assertNotIn("Action: failed", text)
        self.assertEqual(self.entries(), [])

    def test_no_notice_when_server_has_dsn(self) -> None:
        """A server that advertised DSN got the NOTIFY and reports itself (section 5.2.1): none from us."""
        self.smtp.behaviour = lambda host, rcpts: DSNServerResult(
            Reply(220, "", "hi"), {r: ok() for r in rcpts}, Reply(250, "2.0.0", "queued"), None, False
        )
        self.enqueue(["a@remote.test"], rcpt_params=({"NOTIFY": "SUCCESS"},))
        self.pass_(self.runner())
        self.assertEqual(self.smtp.calls[0]["recipients"], [("a@remote.test", {"NOTIFY": "SUCCESS"})])
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.entries(), [])

    def test_no_notice_without_success(self) -> None:
        """Without SUCCESS in NOTIFY (or with no NOTIFY at all) a delivery is not reported."""
        self.enqueue(["a@remote.test", "b@remote.test"], rcpt_params=({"NOTIFY": "DELAY"},))
        self.pass_(self.runner())
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.entries(), [])

    def test_null_sender_gets_no_notice(self) -> None:
        """Never a notice to <> (RFC 5321 section 6.1), even with NOTIFY=SUCCESS; the entry goes."""
        self.enqueue(["a@remote.test"], sender="", rcpt_params=({"NOTIFY": "SUCCESS"},))
        self.pass_(self.runner())
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.entries(), [])

    def test_local_delivery_is_delivered(self) -> None:
        """A queued local recipient delivered through the router: a "delivered" notice (section 5.2.3)."""
        self.enqueue(["bob@example.test"], rcpt_params=({"NOTIFY": "SUCCESS"},))
        self.pass_(self.runner())
        [(copy, _), (envelope, data)] = self.router.delivered
        self.assertEqual(copy.rcpt_to, ("bob@example.test",))
        self.assertEqual(envelope.mail_from, "")
        text = email.message_from_bytes(data).as_string()
        self.assertIn("Action: delivered", text)
        self.assertIn("Final-Recipient: rfc822;bob@example.test", text)
        self.assertIn("Status: 2.0.0", text)
        self.assertNotIn("Remote-MTA", text)
        self.assertEqual(self.entries(), [])

    def test_mixed_outcomes_two_notices(self) -> None:
        """A failure and a success in one entry: one failure report and one success report."""
        self.smtp.behaviour = lambda host, rcpts: transaction(
            {r: Reply(550, "5.1.1", "no such user") if r.startswith("x") else ok() for r in rcpts}
        )
        self.enqueue(
            ["x@remote.test", "y@remote.test"],
            rcpt_params=({"NOTIFY": "SUCCESS,FAILURE"}, {"NOTIFY": "SUCCESS,FAILURE"}),
        )
        self.pass_(self.runner())
        subjects = sorted(msg["Subject"] for _, msg in self.notices())
        self.assertEqual(
            subjects,
            ["Delivery Status Notification (Failure)", "Delivery Status Notification (Success)"],
        )
        success = next(m for _, m in self.notices() if "Success" in m["Subject"]).as_string()
        self.assertIn("Final-Recipient: rfc822;y@remote.test", success)
        self.assertNotIn("x@remote.test", success.split("text/rfc822-headers")[0])
        self.assertEqual(self.entries(), [])

    def test_deferred_then_delivered_reports_success(self) -> None:
        """After a 4xx the later 2xx is reported with the success reply, not the old error."""
        replies = {"a@remote.test": Reply(451, "4.2.0", "try later")}
        self.smtp.behaviour = lambda host, rcpts: transaction({r: replies[r] for r in rcpts})
        qid = self.enqueue(["a@remote.test"], rcpt_params=({"NOTIFY": "SUCCESS"},))
        runner = self.runner()
        self.pass_(runner)
        self.assertIsNone(self.states(qid)["a@remote.test"].success_sent)
        self.assertEqual(self.router.delivered, [])
        self.clock.advance(300)
        replies["a@remote.test"] = ok()
        self.pass_(runner)
        [(_, msg)] = self.notices()
        text = msg.as_string()
        self.assertIn("Action: relayed", text)
        self.assertIn("Status: 2.0.0", text)
        self.assertNotIn("try later", text)

    def test_recorded_flag_survives_restart(self) -> None:
        """success_sent is kept in the entry: a restart does not send the notice again."""
        qid = self.enqueue(["a@remote.test", "b@remote.test"], rcpt_params=({"NOTIFY": "SUCCESS"},))
        self.smtp.behaviour = lambda host, rcpts: transaction(
            {r: ok() if r.startswith("a") else Reply(451, "4.2.0", "later") for r in rcpts}
        )
        self.pass_(self.runner())
        self.assertEqual(len(self.router.delivered), 1)
        st = self.states(qid)["a@remote.test"]
        self.assertEqual((st.success_action, st.success_sent), ("relayed", True))

        self.queue = SpoolQueue(self.dir, now=self.clock.seconds)  # "restart"
        self.smtp.behaviour = lambda host, rcpts: transaction({r: ok() for r in rcpts})
        runner = self.runner()
        self.clock.advance(300)
        self.pass_(runner)
        self.assertEqual([r for r, _ in self.smtp.calls[-1]["recipients"]], ["b@remote.test"])
        self.assertEqual(len(self.router.delivered), 1)  # b did not ask; a was reported before
        self.assertEqual(self.entries(), [])

    def test_pending_notice_sent_after_restart(self) -> None:
        """A crash between delivery and notice: the next runner sends the notice, then deletes the entry."""
        qid = self.enqueue(["a@remote.test"], rcpt_params=({"NOTIFY": "SUCCESS"},))
        self.successResultOf(
            self.queue.update_recipients(
                qid,
                {
                    "a@remote.test": RecipientState(
                        state=DeliveryState.DELIVERED,
                        host="mx1.remote.test",
                        reply="250 2.0.0 queued",
                        status="2.0.0",
                        success_action="relayed",
                        success_sent=False,
                    )
                },
            )
        )
        self.queue = SpoolQueue(self.dir, now=self.clock.seconds)
        self.pass_(self.runner())
        self.assertEqual(self.smtp.calls, [])
        [(_, msg)] = self.notices()
        self.assertIn("Action: relayed", msg.as_string())
        self.assertEqual(self.entries(), [])
