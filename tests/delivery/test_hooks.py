"""Tests for delivery hooks: the HookResult values and the router running them."""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmail.delivery.hooks import HookAction, HookResult, hook_callable, hook_callables
from txmail.delivery.queue import SpoolQueue
from txmail.delivery.router import HOOK_FAILED_REPLY, DeliveryRouter
from txmail.interfaces import IDeliveryHook
from txmail.model import INBOX, DeliveryReport, Envelope, MessageSource
from txmail.smtp.codes import Reply
from txmail.smtp.server import reply_for_report
from txmail.store.memory import MemoryProvider

from .test_router import MESSAGE, DictDirectory


class HookResultTests(SynchronousTestCase):
    def test_accept(self) -> None:
        """accept() carries nothing but its action."""
        self.assertEqual(HookResult.accept(), HookResult(HookAction.ACCEPT))

    def test_reject_reply(self) -> None:
        """A rejection keeps a well-formed 4xx/5xx reply; 4xx is temporary."""
        r = HookResult.reject("550 5.7.1 Go away")
        self.assertEqual(r.reply, "550 5.7.1 Go away")
        self.assertFalse(r.temporary)
        self.assertTrue(HookResult.reject("451 4.7.1 Later").temporary)
        self.assertEqual(HookResult.reject().reply, "550 5.7.1 Message rejected")

    def test_reject_smtp_reply(self) -> None:
        """A rejection's reply is parsed once, into smtp_reply, the reply the router reports."""
        r = HookResult.reject(" 550 5.7.1 Go away \r\n")
        self.assertEqual(r.smtp_reply, Reply(550, "5.7.1", "Go away"))
        self.assertEqual(r.reply, "550 5.7.1 Go away")
        self.assertEqual(HookResult.reject("554 2.0.0 odd").smtp_reply, Reply(554, "", "odd"))
        self.assertIsNone(HookResult.accept().smtp_reply)

    def test_reject_bad_reply(self) -> None:
        """A 2xx, malformed or multi-line reply is refused at construction, never sent."""
        for bad in ("250 2.0.0 fine", "hello", "550 5.7.1 a\n550 b", "999 x", ""):
            self.assertRaises(ValueError, HookResult.reject, bad)

    def test_reject_mismatched_enhanced_code(self) -> None:
        """RFC 3463 section 2: an enhanced code of another class than the reply's is dropped."""
        self.assertEqual(HookResult.reject("550 4.7.1 Odd").reply, "550 Odd")

    def test_rewrite(self) -> None:
        """A rewrite keeps the order and drops duplicates."""
        r = HookResult.rewrite(["b@x.test", "a@x.test", "b@x.test"])
        self.assertEqual(r.recipients, ("b@x.test", "a@x.test"))

    def test_rewrite_invalid(self) -> None:
        """An empty list or a malformed address is refused."""
        for bad in ([], ["<a@x.test>"], ["a b@x.test"], ["nodomain"], ["a@x.test\r\nRCPT"], [1]):
            self.assertRaises(ValueError, HookResult.rewrite, bad)

    def test_consume_detail_one_line(self) -> None:
        """consume() takes a one-line detail."""
        self.assertEqual(HookResult.consume("sent to crm").detail, "sent to crm")
        self.assertRaises(ValueError, HookResult.consume, "a\r\nb")

    def test_hook_callable(self) -> None:
        """An IDeliveryHook gives its before_delivery; a callable itself; anything else is a TypeError."""
        hook = RecordingHook()

        def fn(envelope: Envelope, message: MessageSource) -> None:
            return None

        self.assertEqual(hook_callable(hook), hook.before_delivery)
        self.assertIs(hook_callable(fn), fn)
        self.assertRaises(TypeError, hook_callable, 42)
        self.assertEqual(hook_callables(None), ())
        self.assertEqual(hook_callables(fn), (fn,))
        self.assertEqual(hook_callables([fn, hook]), (fn, hook.before_delivery))


@implementer(IDeliveryHook)
class RecordingHook:
    """Records what it saw and answers with a fixed result."""

    def __init__(self, result: Any = None) -> None:
        self.result = result
        self.calls: list[tuple[Envelope, MessageSource]] = []

    def before_delivery(self, envelope: Envelope, message: MessageSource) -> Any:
        self.calls.append((envelope, message))
        return self.result


class RouterHookTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = DictDirectory(
            {"example.test"},
            {"alice@example.test", "bob@example.test", "archive@example.test"},
            {"team@example.test": ["alice@example.test", "bob@example.test"]},
        )
        self.stores = MemoryProvider()
        self.queue = SpoolQueue(self.mktemp())
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        self.message = MessageSource.from_file(path, len(MESSAGE), fsynced=True)

    def router(self, *hooks: Any) -> DeliveryRouter:
        return DeliveryRouter(self.directory, self.stores, self.queue, hooks=list(hooks))

    def deliver(self, router: DeliveryRouter, *rcpts: str, **kw: Any) -> DeliveryReport:
        envelope = Envelope("x@remote.test", tuple(rcpts), message_id="T1", **kw)
        report = self.successResultOf(router.deliver(envelope, self.message))
        self.assertIsInstance(report, DeliveryReport)
        return report

    def inbox(self, user: str) -> list[bytes]:
        mailbox = self.successResultOf(self.successResultOf(self.stores.store_for(user)).get_mailbox(INBOX))
        infos = self.successResultOf(mailbox.list_messages())
        return [self.successResultOf(mailbox.read_message(i.uid)) for i in infos]

    def queued(self) -> list[Any]:
        return self.successResultOf(self.queue.list_entries())

    def test_provider_verifies(self) -> None:
        """The test hook provides IDeliveryHook."""
        verifyObject(IDeliveryHook, RecordingHook())

    def test_accept(self) -> None:
        """Accepting hooks (None or accept()) see the envelope and message; delivery goes on."""
        first, second = RecordingHook(None), RecordingHook(HookResult.accept())
        report = self.deliver(self.router(first, second), "alice@example.test")
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.assertEqual(first.calls[0][0].rcpt_to, ("alice@example.test",))
        self.assertIs(first.calls[0][1], self.message)
        self.assertEqual(len(second.calls), 1)

    def test_reject(self) -> None:
        """A rejection delivers nothing; every recipient fails with its reply, which becomes the DATA reply."""
        later = RecordingHook()
        router = self.router(RecordingHook(HookResult.reject("550 5.7.1 Not wanted")), later)
        report = self.deliver(router, "alice@example.test", "someone@remote.test")
        self.assertEqual([r.recipient for r in report.results], ["alice@example.test", "someone@remote.test"])
        self.assertTrue(
            all(
                not r.ok and not r.temporary and r.reply == Reply(550, "5.7.1", "Not wanted")
                for r in report.results
            )
        )
        self.assertEqual(self.inbox("alice@example.test"), [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(later.calls, [], "a rejection ends the chain")
        self.assertEqual(reply_for_report(report, "T1").to_bytes(), b"550 5.7.1 Not wanted\r\n")

    def test_reject_temporary(self) -> None:
        """A 4xx rejection is a temporary failure and reaches the client as such."""
        report = self.deliver(
            self.router(RecordingHook(HookResult.reject("452 4.3.1 Full"))), "alice@example.test"
        )
        self.assertTrue(report.results[0].temporary)
        self.assertEqual(reply_for_report(report, "T1").to_bytes(), b"452 4.3.1 Full\r\n")

    def test_rewrite_redirect(self) -> None:
        """A rewrite replaces the recipients: alice's mail goes to bob only."""
        router = self.router(RecordingHook(HookResult.rewrite(["bob@example.test"])))
        report = self.deliver(router, "alice@example.test")
        self.assertTrue(report.all_ok)
        self.assertEqual([r.recipient for r in report.results], ["bob@example.test"])
        self.assertEqual(self.inbox("alice@example.test"), [])
        self.assertEqual(self.inbox("bob@example.test"), [MESSAGE])

    def test_rewrite_bcc_and_chain(self) -> None:
        """An added archive address gets a copy; the next hook sees the new list; kept addresses keep their params."""

        def add_archive(envelope: Envelope, message: MessageSource) -> HookResult:
            return HookResult.rewrite([*envelope.rcpt_to, "archive@example.test"])

        after = RecordingHook()
        report = self.deliver(
            self.router(add_archive, after), "team@example.test", rcpt_params=({"NOTIFY": "NEVER"},)
        )
        self.assertTrue(report.all_ok)
        for user in ("alice@example.test", "bob@example.test", "archive@example.test"):
            self.assertEqual(self.inbox(user), [MESSAGE])
        seen = after.calls[0][0]
        self.assertEqual(seen.rcpt_to, ("team@example.test", "archive@example.test"))
        self.assertEqual(seen.rcpt_params, ({"NOTIFY": "NEVER"}, {}))

    def test_rewrite_to_remote_is_queued(self) -> None:
        """A rewritten remote recipient is queued (hooks are trusted; no relay check)."""
        report = self.deliver(
            self.router(lambda e, m: HookResult.rewrite(["ext@remote.test"])), "alice@example.test"
        )
        self.assertTrue(report.all_ok)
        entries = self.queued()
        self.assertEqual(len(entries), 1)
        self.assertEqual(list(entries[0].recipients), ["ext@remote.test"])

    def test_consume(self) -> None:
        """A consumed message is stored nowhere here and every recipient counts as delivered."""
        later = RecordingHook()
        report = self.deliver(
            self.router(lambda e, m: HookResult.consume("to crm"), later), "alice@example.test"
        )
        self.assertTrue(report.all_ok)
        self.assertEqual(report.results[0].detail, "to crm")
        self.assertEqual(self.inbox("alice@example.test"), [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(later.calls, [])
        self.assertEqual(reply_for_report(report, "T1").code, 250)

    def test_raising_hook(self) -> None:
        """A hook that raises is logged; every recipient fails temporarily (451 4.3.0); nothing is delivered."""

        def broken(envelope: Envelope, message: MessageSource) -> HookResult:
            raise ZeroDivisionError("bug")

        # The first hook rewrote: the failure still covers the original recipients.
        report = self.deliver(
            self.router(lambda e, m: HookResult.rewrite(["bob@example.test"]), broken), "alice@example.test"
        )
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual([r.recipient for r in report.results], ["alice@example.test"])
        self.assertTrue(report.results[0].temporary)
        self.assertEqual(report.results[0].reply, HOOK_FAILED_REPLY)
        self.assertEqual(self.inbox("alice@example.test") + self.inbox("bob@example.test"), [])
        self.assertEqual(self.queued(), [])
        self.assertEqual(reply_for_report(report, "T1").to_bytes()[:10], b"451 4.3.0 ")

    def test_failed_deferred_and_wrong_type(self) -> None:
        """A failed Deferred, or a result that is not a HookResult, is a temporary failure too."""
        for hook, error in [
            (lambda e, m: defer.fail(KeyError("x")), KeyError),
            (lambda e, m: "yes", TypeError),
        ]:
            report = self.deliver(self.router(hook), "alice@example.test")
            self.assertEqual(len(self.flushLoggedErrors(error)), 1)
            self.assertTrue(report.results[0].temporary)
        self.assertEqual(self.inbox("alice@example.test"), [])

    def test_asynchronous_hook(self) -> None:
        """Delivery waits for a hook's Deferred."""
        pending: defer.Deferred[HookResult] = defer.Deferred()
        router = self.router(lambda e, m: pending)
        d = router.deliver(Envelope("x@remote.test", ("alice@example.test",), message_id="T1"), self.message)
        self.assertNoResult(d)
        self.assertEqual(self.inbox("alice@example.test"), [])
        pending.callback(HookResult.accept())
        self.assertTrue(self.successResultOf(d).all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])

    def test_without_hooks(self) -> None:
        """without_hooks() shares the parts and skips the hooks; a router without hooks is itself."""
        hook = RecordingHook(HookResult.reject())
        router = self.router(hook)
        plain = router.without_hooks()
        self.assertEqual(plain.hooks, ())
        self.assertIs(plain.stores, router.stores)
        self.assertIs(plain.queue, router.queue)
        self.assertIs(plain.without_hooks(), plain)
        self.assertTrue(self.deliver(plain, "alice@example.test").all_ok)
        self.assertEqual(hook.calls, [])
