"""
Tests of :mod:`txmail.delivery.sieve` and the router's Sieve path without
sockets: the vacation/duplicate state (expiry, bound, the file fallback and
the store hook), the compile cache (once per content, an edited include
picked up), the reply and notice helpers, ereject per recipient over LMTP,
and redirects with the null sender.
"""

from __future__ import annotations

import email
import json
import os
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txmail.delivery.queue import SpoolQueue
from txmail.delivery.router import DeliveryRouter
from txmail.delivery.sieve import (
    MAX_STATE_ENTRIES,
    SieveDelivery,
    SieveState,
    redirected_copy,
    reject_reply,
    rejection_notice,
    usable_flags,
)
from txmail.interfaces import ISieveState
from txmail.model import INBOX, Envelope, MessageSource
from txmail.sieve import Limits
from txmail.smtp.codes import Reply
from txmail.store.memory import MemoryProvider

from .test_router import DictDirectory

ALICE = "alice@example.test"
BOB = "bob@example.test"
MESSAGE = (
    b"Return-Path: <x@remote.test>\r\nFrom: x@remote.test\r\nTo: alice@example.test\r\n"
    b"Subject: hi\r\nMessage-ID: <m1@remote.test>\r\n\r\nHello.\r\n"
)


class StateTests(SynchronousTestCase):
    def test_vacation_period(self) -> None:
        """A reply recorded now counts for the period asked, then no longer."""
        state = SieveState(now=1000.0, limits=Limits())
        self.assertFalse(state.already_replied("x@remote.test", "h", 60))
        state.replied("X@remote.test", "h")
        self.assertTrue(state.already_replied("x@remote.test", "h", 60))
        self.assertFalse(state.already_replied("x@remote.test", "other handle", 60))
        later = SieveState.from_bytes(state.to_bytes(), now=1061.0, limits=Limits())
        self.assertFalse(later.already_replied("x@remote.test", "h", 60))
        self.assertTrue(later.already_replied("x@remote.test", "h", 86400))

    def test_duplicate_marks(self) -> None:
        """mark records an id; :last moves it to now, without :last the first time stays."""
        state = SieveState(now=100.0, limits=Limits())
        state.mark("<id>", "", 50, last=False)
        self.assertTrue(state.seen("<id>", "", 50))
        state.now = 140.0
        state.mark("<id>", "", 50, last=False)
        state.now = 160.0
        self.assertFalse(state.seen("<id>", "", 50))
        state.mark("<id>", "", 50, last=True)
        state.now = 200.0
        self.assertTrue(state.seen("<id>", "", 50))

    def test_expired_entries_dropped_and_bounded(self) -> None:
        """Saving drops entries older than any period can reach and keeps the newest MAX_STATE_ENTRIES."""
        limits = Limits()
        state = SieveState(now=0.0, limits=limits)
        state.mark("old", "", 10, last=False)
        state.now = limits.duplicate_max_seconds + 1.0
        for i in range(MAX_STATE_ENTRIES + 5):
            state.entries[f"v:{i}"] = state.now - 1 + i / 1e6
        saved = json.loads(state.to_bytes())["entries"]
        self.assertEqual(len(saved), MAX_STATE_ENTRIES)
        self.assertNotIn("v:0", saved)
        self.assertFalse(any(k.startswith("d:") for k in saved))

    def test_damaged_state_is_empty(self) -> None:
        """A damaged state file is read as empty rather than failing the delivery."""
        for data in (b"not json", b"[1, 2]", b'{"entries": {"a": "x"}}', None):
            self.assertEqual(SieveState.from_bytes(data, now=0.0, limits=Limits()).entries, {})


class HelperTests(SynchronousTestCase):
    def test_reject_reply(self) -> None:
        """ereject's reason becomes one printable ASCII line after 550 5.7.1."""
        self.assertEqual(reject_reply("no\r\nthanks"), Reply(550, "5.7.1", "no thanks"))
        self.assertEqual(reject_reply("caf\u00e9"), Reply(550, "5.7.1", "caf?"))
        self.assertEqual(reject_reply(""), Reply(550, "5.7.1", "Message rejected"))
        self.assertEqual(len(reject_reply("x" * 5000).text), 400)

    def test_usable_flags(self) -> None:
        """System flags are spelled canonically, invalid keywords and \\Recent dropped."""
        self.assertEqual(
            usable_flags(["\\flagged", "$Work", "bad(flag", "\\Recent", "$Work"]), ("\\Flagged", "$Work")
        )

    def test_redirected_copy(self) -> None:
        """The redirected copy has the mark on top and no Return-Path."""
        data = redirected_copy(MESSAGE, ALICE)
        self.assertTrue(data.startswith(b"X-Sieve-Redirected-From: <alice@example.test>\r\n"))
        self.assertNotIn(b"Return-Path", data)
        self.assertTrue(data.endswith(b"\r\n\r\nHello.\r\n"))

    def test_rejection_notice(self) -> None:
        """The rejection is an MDN: the reason, a disposition of deleted, the original header section."""
        data = rejection_notice(
            original=MESSAGE, sender="x@remote.test", recipient=ALICE, reason="No.", hostname="mx.test", now=0
        )
        parsed = email.message_from_bytes(data)
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        text, report, headers = parsed.get_payload()
        self.assertIn(b"No.", text.get_payload(decode=True))
        self.assertEqual(report.get_content_type(), "message/disposition-notification")
        self.assertIn(b"Disposition: automatic-action/MDN-sent-automatically; deleted", data)
        self.assertIn(b"Original-Message-ID: <m1@remote.test>", data)
        self.assertEqual(headers.get_content_type(), "text/rfc822-headers")
        self.assertEqual(parsed["In-Reply-To"], "<m1@remote.test>")


@implementer(ISieveState)
class StateStore:
    """Wraps a memory store and keeps the Sieve state blob itself (ISieveState)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.blob: bytes | None = None
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get_sieve_state(self) -> defer.Deferred[bytes | None]:
        return defer.succeed(self.blob)

    def put_sieve_state(self, data: bytes) -> defer.Deferred[None]:
        self.blob = data
        self.puts += 1
        return defer.succeed(None)


class HookProvider:
    """A provider whose stores keep the Sieve state through ISieveState."""

    def __init__(self, inner: MemoryProvider) -> None:
        self.inner = inner
        self.stores: dict[str, StateStore] = {}

    def store_for(self, user: str) -> Any:
        def wrap(store: Any) -> Any:
            if user not in self.stores:
                from zope.interface import directlyProvidedBy, directlyProvides

                wrapper = StateStore(store)
                directlyProvides(wrapper, directlyProvidedBy(wrapper), *_provided(store))
                self.stores[user] = wrapper
            return self.stores[user]

        return defer.maybeDeferred(self.inner.store_for, user).addCallback(wrap)


def _provided(obj: Any) -> list[Any]:
    from zope.interface import providedBy

    return list(providedBy(obj))


class RouterSieveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.directory = DictDirectory({"example.test"}, {ALICE, BOB}, {})
        self.memory = MemoryProvider()
        self.stores: Any = self.memory
        self.queue = SpoolQueue(self.mktemp())
        self.state_dir = self.mktemp()
        self.sieve = SieveDelivery(
            state_dir=self.state_dir,
            hostname="mx.example.test",
            clock=self.clock,
            is_local=self.directory.is_local_domain,
        )

    def router(self) -> DeliveryRouter:
        return DeliveryRouter(
            self.directory, self.stores, self.queue, hostname="mx.example.test", sieve=self.sieve
        )

    def activate(self, user: str, script: str, **others: str) -> Any:
        store = self.successResultOf(self.stores.store_for(user))
        for name, text in others.items():
            self.successResultOf(store.put_script(name, text.encode()))
        self.successResultOf(store.put_script("main", script.encode()))
        self.successResultOf(store.set_active("main"))
        return store

    def deliver(self, rcpts: tuple[str, ...], data: bytes = MESSAGE, **kw: Any) -> Any:
        envelope = Envelope(
            mail_from=kw.pop("mail_from", "x@remote.test"), rcpt_to=rcpts, message_id="m1", **kw
        )
        return self.successResultOf(self.router().deliver(envelope, MessageSource.from_bytes(data)))

    def inbox(self, user: str, name: str = INBOX) -> list[bytes]:
        store = self.successResultOf(self.memory.store_for(user))
        box = self.successResultOf(store.get_mailbox(name))
        infos = self.successResultOf(box.list_messages())
        return [self.successResultOf(box.read_message(i.uid)) for i in infos]

    def test_compiled_once(self) -> None:
        """Three messages, one compile; a changed script compiles again."""
        self.activate(
            ALICE,
            'require ["fileinto", "mailbox"];\nif header :is "subject" "hi" { fileinto :create "Hi"; }\n',
        )
        for _ in range(3):
            self.assertTrue(self.deliver((ALICE,)).all_ok)
        self.assertEqual(self.sieve.cache.compiles, 1)
        self.assertEqual(len(self.inbox(ALICE, "Hi")), 3)
        self.activate(ALICE, "keep;\n")
        self.deliver((ALICE,))
        self.assertEqual(self.sieve.cache.compiles, 2)

    def test_edited_include_is_picked_up(self) -> None:
        """The cached script is compiled again when a script it includes changes."""
        self.activate(
            ALICE,
            'require "include";\ninclude "rules";\n',
            rules='require ["fileinto", "mailbox"];\nfileinto :create "One";\n',
        )
        self.deliver((ALICE,))
        store = self.successResultOf(self.stores.store_for(ALICE))
        self.successResultOf(
            store.put_script("rules", b'require ["fileinto", "mailbox"];\nfileinto :create "Two";\n')
        )
        self.deliver((ALICE,))
        self.assertEqual(len(self.inbox(ALICE, "One")), 1)
        self.assertEqual(len(self.inbox(ALICE, "Two")), 1)

    def test_global_include(self) -> None:
        """
        ``include :global`` (RFC 6609 section 3.2) reads NAME.sieve from [sieve] global_dir; a
        changed file is picked up; a missing one, or a name reaching outside the directory, is a
        runtime error, so the message is kept in the INBOX.
        """
        global_dir = self.mktemp()
        os.makedirs(global_dir)
        self.sieve.global_dir = global_dir

        def write(text: str) -> None:
            with open(os.path.join(global_dir, "spam.sieve"), "w") as f:
                f.write(text)

        write('require ["fileinto", "mailbox"];\nfileinto :create "Junk";\n')
        self.activate(ALICE, 'require "include";\ninclude :global "spam";\n')
        self.deliver((ALICE,))
        self.assertEqual(len(self.inbox(ALICE, "Junk")), 1)
        write('require ["fileinto", "mailbox"];\nfileinto :create "Quarantine";\n')
        self.deliver((ALICE,))
        self.assertEqual(len(self.inbox(ALICE, "Quarantine")), 1)
        with open(os.path.join(os.path.dirname(global_dir), "outside.sieve"), "w") as f:
            f.write('require ["fileinto", "mailbox"];\nfileinto :create "Outside";\n')
        for name in ("missing", "../outside"):
            self.activate(ALICE, f'require "include";\ninclude :global "{name}";\n')
            self.deliver((ALICE,))
        self.assertEqual(len(self.inbox(ALICE)), 2)  # the implicit keep, twice
        self.flushLoggedErrors()

    def test_ereject_per_recipient_over_lmtp(self) -> None:
        """Over LMTP an ereject is the recipient's own 550 5.7.1; the other recipient is delivered."""
        self.activate(ALICE, 'require "ereject";\nereject "not today";\n')
        report = self.deliver((ALICE, BOB), protocol="LMTP")
        results = {r.recipient: r for r in report.results}
        self.assertFalse(results[ALICE].ok)
        self.assertFalse(results[ALICE].temporary)
        self.assertEqual(results[ALICE].reply, Reply(550, "5.7.1", "not today"))
        self.assertTrue(results[BOB].ok)
        self.assertEqual(self.inbox(ALICE), [])
        self.assertEqual(len(self.inbox(BOB)), 1)

    def test_ereject_on_queue_retry_sends_a_rejection(self) -> None:
        """A retry from the queue (the transaction is over): the ereject becomes a rejection message, queued."""
        self.activate(ALICE, 'require "ereject";\nereject "later no";\n')
        envelope = Envelope(mail_from="x@remote.test", rcpt_to=(ALICE,), message_id="m1")
        report = self.successResultOf(self.router().redeliver(envelope, MessageSource.from_bytes(MESSAGE)))
        self.assertTrue(report.all_ok)
        [entry] = self.successResultOf(self.queue.list_entries())
        self.assertEqual(entry.envelope.mail_from, "")
        self.assertEqual(list(entry.recipients), ["x@remote.test"])

    def test_reject_from_null_sender_is_discarded(self) -> None:
        """reject of a message from <>: no notice (RFC 5321 section 6.1), nothing stored."""
        self.activate(ALICE, 'require "reject";\nreject "no";\n')
        self.assertTrue(self.deliver((ALICE,), mail_from="").all_ok)
        self.assertEqual(self.inbox(ALICE), [])
        self.assertEqual(self.successResultOf(self.queue.list_entries()), [])

    def test_redirect_null_sender_keeps_null(self) -> None:
        """A redirected bounce keeps the null envelope sender."""
        self.activate(ALICE, 'redirect "a@remote.test";\n')
        self.assertTrue(self.deliver((ALICE,), mail_from="").all_ok)
        [entry] = self.successResultOf(self.queue.list_entries())
        self.assertEqual(entry.envelope.mail_from, "")
        self.assertEqual(list(entry.recipients), ["a@remote.test"])

    def test_vacation_state_in_a_file(self) -> None:
        """Without ISieveState the vacation state is a JSON file under the state directory."""
        self.activate(ALICE, 'require "vacation";\nvacation "away";\n')
        self.deliver((ALICE,))
        [name] = os.listdir(self.state_dir)
        self.assertEqual(name, "alice@example.test.json")
        self.assertEqual(len(self.successResultOf(self.queue.list_entries())), 1)
        self.deliver((ALICE,))
        self.assertEqual(len(self.successResultOf(self.queue.list_entries())), 1)

    def test_vacation_state_through_the_store(self) -> None:
        """A store with ISieveState keeps the state itself; no file is written."""
        self.stores = HookProvider(self.memory)
        self.activate(ALICE, 'require "vacation";\nvacation "away";\n')
        self.deliver((ALICE,))
        self.deliver((ALICE,))
        store = self.stores.stores[ALICE]
        self.assertEqual(store.puts, 1)
        self.assertIn(b"entries", store.blob)
        self.assertFalse(os.path.exists(self.state_dir))
        self.assertEqual(len(self.successResultOf(self.queue.list_entries())), 1)

    def test_unreadable_active_script_delivers_unfiltered(self) -> None:
        """A store failing to give the active script: logged, and the message goes to the INBOX."""
        store = self.activate(ALICE, "discard;\n")
        store.active_script = lambda: defer.fail(OSError("gone"))
        self.assertTrue(self.deliver((ALICE,)).all_ok)
        self.assertEqual(len(self.inbox(ALICE)), 1)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_store_unavailable_for_one_user(self) -> None:
        """
        A store that cannot be opened leaves its user out of the scripts
        (the ordinary delivery queues that copy); the others are filtered.
        """
        self.activate(ALICE, "discard;\n")
        self.activate(BOB, "discard;\n")
        memory = self.memory

        class Failing:
            def store_for(self, user: str) -> defer.Deferred[Any]:
                if user == BOB:
                    return defer.fail(OSError("unreachable"))
                return memory.store_for(user)

        self.stores = Failing()
        report = self.deliver((ALICE, BOB))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox(ALICE), [])  # discarded by her script
        (entry,) = self.successResultOf(self.queue.list_entries())
        self.assertEqual(list(entry.recipients), [BOB])
        self.flushLoggedErrors(OSError)

    def test_disabled(self) -> None:
        """A router without a SieveDelivery ignores active scripts."""
        self.activate(ALICE, "discard;\n")
        self.sieve = None  # type: ignore[assignment]
        self.deliver((ALICE,))
        self.assertEqual(len(self.inbox(ALICE)), 1)
