"""Tests for the delivery router: local mailboxes versus the queue."""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from txmail import mime
from txmail.delivery.queue import SpoolQueue
from txmail.delivery.router import DeliveryRouter, split_address
from txmail.errors import NoSuchUser
from txmail.interfaces import IDeliveryRouter, IDirectory, IInboxDelivery
from txmail.model import INBOX, Envelope, MessageSource, SpecialUse
from txmail.smtp.codes import Reply
from txmail.store.memory import MemoryProvider
from txmail.testing.sources import streamed_source


@implementer(IDirectory)
class DictDirectory:
    """A directory of fixed users and aliases for router tests."""

    def __init__(self, domains: set[str], users: set[str], aliases: dict[str, list[str]]) -> None:
        self.domains = domains
        self.users = users
        self.aliases = aliases

    def is_local_domain(self, domain: str) -> bool:
        return domain.lower() in self.domains

    def resolve_recipient(self, address: str) -> defer.Deferred[list[str]]:
        address = address.lower()
        if address in self.users:
            return defer.succeed([address])
        if address in self.aliases:
            return defer.succeed(self.aliases[address])
        return defer.fail(NoSuchUser(address))

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(username if username in self.users else None)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        return defer.succeed(user == address)


class BrokenProvider:
    """Wraps a provider; the stores of some users fail on append."""

    def __init__(self, inner: MemoryProvider, broken: set[str]) -> None:
        self.inner = inner
        self.broken = broken

    def store_for(self, user: str) -> Any:
        if user in self.broken:
            return defer.fail(OSError("disk on fire"))  # the contract: a failed Deferred
        return self.inner.store_for(user)


MESSAGE = b"Return-Path: <x@remote.test>\r\nSubject: hi\r\n\r\nHello.\r\n"


class RouterTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = DictDirectory(
            {"example.test"},
            {"alice@example.test", "bob@example.test"},
            {
                "team@example.test": ["alice@example.test", "bob@example.test"],
                "fwd@example.test": ["someone@remote.test"],
            },
        )
        self.stores = MemoryProvider()
        self.queue = SpoolQueue(self.mktemp())
        self.router = DeliveryRouter(self.directory, self.stores, self.queue)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        self.message = MessageSource.from_file(path, len(MESSAGE), fsynced=True)

    def inbox(self, user: str) -> list[bytes]:
        mailbox = self.successResultOf(self.successResultOf(self.stores.store_for(user)).get_mailbox(INBOX))
        infos = self.successResultOf(mailbox.list_messages())
        return [self.successResultOf(mailbox.read_message(i.uid)) for i in infos]

    def envelope(self, *rcpts: str, user: str | None = None) -> Envelope:
        return Envelope("x@remote.test", tuple(rcpts), authenticated_user=user, message_id="T1")


class RouterTests(RouterTestBase):
    def test_interface(self) -> None:
        """DeliveryRouter provides IDeliveryRouter."""
        verifyObject(IDeliveryRouter, self.router)

    def test_split_address(self) -> None:
        """Addresses split at the last @ with the domain lower-cased."""
        self.assertEqual(split_address('"a@b"@Example.TEST.'), ('"a@b"', "example.test"))
        self.assertEqual(split_address("postmaster"), ("postmaster", ""))

    def test_check_local_recipient(self) -> None:
        """Known local users are accepted and unknown ones get 550 5.1.1."""
        self.assertTrue(self.successResultOf(self.router.check_recipient("alice@EXAMPLE.test")).ok)
        res = self.successResultOf(self.router.check_recipient("nobody@example.test"))
        self.assertFalse(res.ok)
        self.assertEqual(res.reply, Reply(550, "5.1.1", "No such user here"))

    def test_no_relay_without_auth(self) -> None:
        """A non-local recipient is refused with 554 5.7.1 unless the client authenticated."""
        res = self.successResultOf(self.router.check_recipient("someone@remote.test"))
        self.assertFalse(res.ok)
        self.assertEqual(res.reply, Reply(554, "5.7.1", "Relay access denied"))
        res = self.successResultOf(self.router.check_recipient("someone@remote.test", "alice@example.test"))
        self.assertTrue(res.ok)

    def test_deliver_local_dedups_aliases(self) -> None:
        """Each local user gets exactly one copy, however many recipients reach them."""
        report = self.successResultOf(
            self.router.deliver(self.envelope("alice@example.test", "team@example.test"), self.message)
        )
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.assertEqual(self.inbox("bob@example.test"), [MESSAGE])

    def test_metadata_parsed_once(self) -> None:
        """The message is parsed once for all local copies."""
        calls = []
        real = mime.parse_metadata

        def counting(source: Any) -> Any:
            calls.append(source)
            return real(source)

        self.patch(mime, "parse_metadata", counting)
        self.successResultOf(self.router.deliver(self.envelope("team@example.test"), self.message))
        self.assertEqual(len(calls), 1)

    def test_streamed_source(self) -> None:
        """A source with neither a file nor its octets in memory reaches mailboxes and the queue exactly."""
        body = b"".join(b"line %06d\r\n" % i for i in range(30000))  # past INLINE_PARSE_LIMIT
        data = MESSAGE + body
        envelope = self.envelope("team@example.test", "someone@remote.test", user="alice@example.test")
        report = self.successResultOf(self.router.deliver(envelope, streamed_source(data)))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [data])
        self.assertEqual(self.inbox("bob@example.test"), [data])
        (entry,) = self.successResultOf(self.queue.list_entries())
        self.assertEqual(entry.recipients.keys(), {"someone@remote.test"})
        f = self.successResultOf(self.queue.open_entry_message(entry.queue_id))
        with f:
            self.assertEqual(f.read(), data)

    def test_in_memory_content_parsed_without_reading_the_file(self) -> None:
        """When the caller hands the content along, the router parses it without reading the file back."""
        from txmail.delivery import router as router_module

        def no_read(path: str) -> Any:
            raise AssertionError("file read back")

        self.patch(router_module, "_parse_source", no_read)
        message = MessageSource.from_file(self.message.local_path, self.message.size, data=MESSAGE)
        report = self.successResultOf(self.router.deliver(self.envelope("alice@example.test"), message))
        self.assertTrue(report.all_ok)
        mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for("alice@example.test")).get_mailbox(INBOX)
        )
        (uid,) = [i.uid for i in self.successResultOf(mailbox.list_messages())]
        metadata = self.successResultOf(mailbox.get_metadata([uid]))[uid]
        self.assertIn(("Subject", " hi\r\n"), [(n, v) for n, v in metadata.headers])

    def test_remote_recipients_queued(self) -> None:
        """Remote recipients and remote alias targets go into one queue entry."""
        report = self.successResultOf(
            self.router.deliver(
                self.envelope(
                    "someone@else.test", "fwd@example.test", "alice@example.test", user="alice@example.test"
                ),
                self.message,
            )
        )
        self.assertTrue(report.all_ok)
        entries = self.successResultOf(self.queue.list_entries())
        self.assertEqual(len(entries), 1)
        self.assertEqual(sorted(entries[0].recipients), ["someone@else.test", "someone@remote.test"])
        self.assertEqual(len(self.inbox("alice@example.test")), 1)

    def test_local_failure_does_not_lose_others(self) -> None:
        """A failing mailbox is queued for retry while the other users get their copy."""
        router = DeliveryRouter(self.directory, BrokenProvider(self.stores, {"bob@example.test"}), self.queue)
        report = self.successResultOf(router.deliver(self.envelope("team@example.test"), self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        entries = self.successResultOf(self.queue.list_entries())
        self.assertEqual([list(e.recipients) for e in entries], [["bob@example.test"]])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_postmaster_without_domain(self) -> None:
        """<Postmaster> with no domain means the primary domain's postmaster (RFC 5321 section 4.5.1)."""
        self.directory.aliases["postmaster@example.test"] = ["alice@example.test"]
        router = DeliveryRouter(self.directory, self.stores, self.queue, primary_domain="example.test")
        self.assertTrue(self.successResultOf(router.check_recipient("Postmaster")).ok)
        report = self.successResultOf(router.deliver(self.envelope("Postmaster"), self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])

    def test_unknown_recipient_at_delivery_fails_permanently(self) -> None:
        """A recipient that no longer resolves is reported failed, not temporary."""
        report = self.successResultOf(
            self.router.deliver(self.envelope("alice@example.test", "gone@example.test"), self.message)
        )
        self.assertFalse(report.all_ok)
        gone = report.results[1]
        self.assertEqual((gone.ok, gone.temporary), (False, False))
        self.assertTrue(report.results[0].ok)


class SuccessNoticeTests(SynchronousTestCase):
    """RFC 3461 NOTIFY=SUCCESS for mail delivered into a local mailbox straight from SMTP."""

    setUp = RouterTests.setUp
    inbox = RouterTests.inbox

    def envelope_with(
        self, sender: str, rcpts: dict[str, dict[str, str | None]], **params: str | None
    ) -> Envelope:
        return Envelope(
            sender,
            tuple(rcpts),
            mail_params=dict(params),
            rcpt_params=tuple(rcpts.values()),
            message_id="T2",
            received_at=1_700_000_000.0,
        )

    def test_delivered_notice_to_a_local_sender(self) -> None:
        """bob asked NOTIFY=SUCCESS for alice: bob gets one 'delivered' DSN; alice gets the message."""
        from email import message_from_bytes

        envelope = self.envelope_with(
            "bob@example.test",
            {"alice@example.test": {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;alice+x@example.test"}},
            ENVID="id+2B1",
        )
        report = self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        (notice,) = self.inbox("bob@example.test")
        parsed = message_from_bytes(notice)
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        status = notice.decode("utf-8", "replace")
        self.assertIn("Action: delivered", status)
        self.assertIn("Status: 2.0.0", status)
        self.assertIn("Original-Recipient: rfc822;alice+x@example.test", status)
        self.assertIn("Original-Envelope-Id: id+1", status)
        self.assertNotIn("Hello.", status)  # headers only, never the content

    def test_no_notice_without_success_or_for_null_sender(self) -> None:
        """No NOTIFY, NOTIFY=FAILURE, or the null sender: no notice."""
        for sender, notify in (("bob@example.test", None), ("bob@example.test", "FAILURE"), ("", "SUCCESS")):
            envelope = self.envelope_with(sender, {"alice@example.test": {"NOTIFY": notify}})
            self.assertTrue(self.successResultOf(self.router.deliver(envelope, self.message)).all_ok)
        self.assertEqual(self.inbox("bob@example.test"), [])
        self.assertEqual(len(self.inbox("alice@example.test")), 3)

    def test_queued_recipient_left_to_the_runner(self) -> None:
        """A remote recipient goes to the queue; its success notice is the queue runner's to send."""
        envelope = self.envelope_with("bob@example.test", {"someone@remote.test": {"NOTIFY": "SUCCESS"}})
        envelope = dataclasses.replace(envelope, authenticated_user="bob@example.test")
        self.assertTrue(self.successResultOf(self.router.deliver(envelope, self.message)).all_ok)
        self.assertEqual(self.inbox("bob@example.test"), [])


class HoldTests(RouterTestBase):
    """A message on hold (Envelope.hold) goes whole into the queue, every recipient held."""

    def test_every_copy_held(self) -> None:
        """Local users, alias targets and remote recipients are queued held; no mailbox gets a copy; unknown users still fail."""
        envelope = dataclasses.replace(
            self.envelope(
                "team@example.test", "fwd@example.test", "someone@else.test", "nobody@example.test"
            ),
            hold="milter: quarantine",
        )
        report = self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertEqual(
            [(r.recipient, r.ok) for r in report.results],
            [
                ("team@example.test", True),
                ("fwd@example.test", True),
                ("someone@else.test", True),
                ("nobody@example.test", False),
            ],
        )
        self.assertEqual(self.inbox("alice@example.test"), [])
        (entry,) = self.successResultOf(self.queue.list_entries())
        self.assertEqual(
            sorted(entry.recipients),
            ["alice@example.test", "bob@example.test", "someone@else.test", "someone@remote.test"],
        )
        self.assertEqual({st.state for st in entry.recipients.values()}, {"held"})
        self.assertEqual(entry.envelope.hold, "milter: quarantine")


class FolderTests(RouterTestBase):
    """A policy's folder choice (Envelope.folder) decides where local copies go."""

    def messages(self, user: str, name: str) -> list[bytes]:
        mailbox = self.successResultOf(self.successResultOf(self.stores.store_for(user)).get_mailbox(name))
        infos = self.successResultOf(mailbox.list_messages())
        return [self.successResultOf(mailbox.read_message(i.uid)) for i in infos]

    def test_junk_created_with_special_use(self) -> None:
        """Junk is created on first use with the \\Junk special use, and the copy lands there."""
        envelope = dataclasses.replace(self.envelope("alice@example.test"), folder="Junk")
        report = self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertTrue(report.all_ok)
        store = self.successResultOf(self.stores.store_for("alice@example.test"))
        self.assertEqual(self.successResultOf(store.special_use_mailbox(SpecialUse.JUNK)), "Junk")
        self.assertEqual(self.messages("alice@example.test", "Junk"), [MESSAGE])
        self.assertEqual(self.inbox("alice@example.test"), [])

    def test_junk_means_the_special_use_mailbox(self) -> None:
        """A user whose \\Junk mailbox has another name gets the message there."""
        store = self.successResultOf(self.stores.store_for("bob@example.test"))
        self.successResultOf(store.create_mailbox("Spam", SpecialUse.JUNK))
        envelope = dataclasses.replace(self.envelope("bob@example.test"), folder="junk")
        self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertEqual(self.messages("bob@example.test", "Spam"), [MESSAGE])

    def test_unusable_folder_falls_back_to_inbox(self) -> None:
        """A folder that cannot be created never loses the message: it goes to the INBOX."""
        envelope = dataclasses.replace(self.envelope("alice@example.test"), folder="a//b")
        report = self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.flushLoggedErrors()

    def test_folder_survives_the_queue(self) -> None:
        """A local copy queued for retry keeps its folder in the queue entry."""
        envelope = dataclasses.replace(self.envelope("alice@example.test"), folder="Junk")
        router = DeliveryRouter(
            self.directory, BrokenProvider(self.stores, {"alice@example.test"}), self.queue
        )
        self.successResultOf(router.deliver(envelope, self.message))
        self.flushLoggedErrors()
        (entry,) = self.successResultOf(self.queue.list_entries())
        self.assertEqual(entry.envelope.folder, "Junk")
        reloaded = SpoolQueue(self.queue.directory)
        (again,) = self.successResultOf(reloaded.list_entries())
        self.assertEqual(again.envelope.folder, "Junk")


class QuotaTests(RouterTestBase):
    """Storage quotas at RCPT and at delivery (txmail.quota)."""

    def setUp(self) -> None:
        super().setUp()
        from txmail.quota import Quotas

        # alice may keep two copies of MESSAGE; bob has no limit.
        self.limit = 2 * len(MESSAGE)
        self.router = DeliveryRouter(
            self.directory,
            self.stores,
            self.queue,
            quotas=Quotas.from_settings(self.limit, [("bob@example.test", None)]),
        )

    def deliver(self, *rcpts: str, protocol: str = "ESMTP") -> Any:
        envelope = dataclasses.replace(self.envelope(*rcpts), protocol=protocol)
        return self.successResultOf(self.router.deliver(envelope, self.message))

    def fill_alice(self) -> None:
        for _ in range(2):
            self.assertTrue(self.deliver("alice@example.test").all_ok)

    def test_store_usage(self) -> None:
        """The memory store counts every mailbox."""
        from txmail.quota import Usage

        self.fill_alice()
        store = self.successResultOf(self.stores.store_for("alice@example.test"))
        self.assertEqual(self.successResultOf(store.usage()), Usage(2 * len(MESSAGE), 2))

    def test_rcpt_refused_when_full(self) -> None:
        """A full mailbox is refused at RCPT with 452 4.2.2; others, and aliases of several users, are not."""
        self.fill_alice()
        result = self.successResultOf(self.router.check_recipient("alice@example.test"))
        self.assertEqual(
            (result.ok, result.temporary, result.reply), (False, True, Reply(452, "4.2.2", "Mailbox full"))
        )
        self.assertTrue(self.successResultOf(self.router.check_recipient("bob@example.test")).ok)
        self.assertTrue(self.successResultOf(self.router.check_recipient("team@example.test")).ok)

    def test_only_recipient_over_quota(self) -> None:
        """When the one copy does not fit, the report says 452 4.2.2 (temporary) and nothing is queued."""
        self.fill_alice()
        report = self.deliver("alice@example.test")
        (result,) = report.results
        self.assertEqual(
            (result.ok, result.temporary, result.reply), (False, True, Reply(452, "4.2.2", "Mailbox full"))
        )
        self.assertEqual(self.successResultOf(self.queue.list_entries()), [])
        self.assertEqual(len(self.inbox("alice@example.test")), 2)

    def test_message_larger_than_quota(self) -> None:
        """A message larger than the whole quota fails for good: 552 5.2.2."""
        from txmail.quota import Quotas

        self.router.quotas = Quotas(len(MESSAGE) - 1)
        (result,) = self.deliver("alice@example.test").results
        self.assertEqual((result.ok, result.temporary), (False, False))
        self.assertEqual((result.reply.code, result.reply.enhanced), (552, "5.2.2"), result.reply)

    def test_lmtp_each_recipient_its_own(self) -> None:
        """Over LMTP the full mailbox fails alone while the others are delivered."""
        self.fill_alice()
        report = self.deliver("alice@example.test", "bob@example.test", protocol="LMTP")
        self.assertEqual(
            [(r.recipient, r.ok, r.reply) for r in report.results],
            [
                ("alice@example.test", False, Reply(452, "4.2.2", "Mailbox full")),
                ("bob@example.test", True, Reply(250, "2.0.0", "OK")),
            ],
        )
        self.assertEqual(len(self.inbox("bob@example.test")), 1)
        self.assertEqual(self.successResultOf(self.queue.list_entries()), [])

    def test_smtp_partial_queues_the_full_one(self) -> None:
        """Over SMTP with another recipient delivered, the full mailbox's copy is queued (the 250 stands)."""
        self.fill_alice()
        report = self.deliver("alice@example.test", "bob@example.test")
        self.assertTrue(report.all_ok)
        (entry,) = self.successResultOf(self.queue.list_entries())
        self.assertEqual(list(entry.recipients), ["alice@example.test"])

    def test_redeliver_reports_instead_of_queueing(self) -> None:
        """redeliver() (the queue runner's) reports the quota failure rather than queueing a new entry."""
        self.fill_alice()
        envelope = self.envelope("alice@example.test")
        report = self.successResultOf(self.router.redeliver(envelope, self.message))
        (result,) = report.results
        self.assertEqual((result.ok, result.reply), (False, Reply(452, "4.2.2", "Mailbox full")))
        self.assertEqual(self.successResultOf(self.queue.list_entries()), [])
        # Room made (a message expunged): the retry goes in.
        mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for("alice@example.test")).get_mailbox(INBOX)
        )
        self.successResultOf(mailbox.set_flags([1], {"\\Deleted"}, "add"))
        self.successResultOf(mailbox.expunge([1]))
        self.assertTrue(self.successResultOf(self.router.redeliver(envelope, self.message)).all_ok)


@implementer(IInboxDelivery)
class AtOnceProvider:
    """
    A memory provider offering IInboxDelivery: each call recorded; the
    copies made with append, or the call failing when *fail* is set.
    """

    def __init__(self, inner: MemoryProvider) -> None:
        self.inner = inner
        self.calls: list[tuple[list[str], float | None]] = []
        self.fail = False

    def store_for(self, user: str) -> Any:
        return self.inner.store_for(user)

    @defer.inlineCallbacks
    def deliver_to_inboxes(
        self, users: list[str], message: MessageSource, internal_date: float | None = None
    ) -> Any:
        self.calls.append((list(users), internal_date))
        if self.fail:
            raise OSError("database gone")
        uids = {}
        for user in users:
            box = yield (yield self.inner.store_for(user)).get_mailbox(INBOX)
            uids[user] = yield box.append(message, (), internal_date)
        return uids


class InboxDeliveryTests(RouterTestBase):
    """A provider that delivers to several INBOXes at once (IInboxDelivery) gets the INBOX copies in one call."""

    def setUp(self) -> None:
        super().setUp()
        self.provider = AtOnceProvider(self.stores)
        self.router = DeliveryRouter(self.directory, self.provider, self.queue)

    def test_one_call_for_every_inbox(self) -> None:
        """The local users of one transaction (aliases expanded, each once) get their copies in one call."""
        envelope = dataclasses.replace(
            self.envelope("team@example.test", "alice@example.test"), received_at=1_700_000_000.0
        )
        report = self.successResultOf(self.router.deliver(envelope, self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(self.provider.calls, [(["alice@example.test", "bob@example.test"], 1_700_000_000.0)])
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.assertEqual(self.inbox("bob@example.test"), [MESSAGE])

    def test_failure_falls_back_to_one_by_one(self) -> None:
        """When the call fails (logged), every copy is made one by one: nothing is lost or doubled."""
        self.provider.fail = True
        report = self.successResultOf(self.router.deliver(self.envelope("team@example.test"), self.message))
        self.assertTrue(report.all_ok)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.assertEqual(self.inbox("bob@example.test"), [MESSAGE])

    def test_folder_and_quota_one_by_one(self) -> None:
        """A policy's folder goes one by one; so do users with a quota to check, the others at once."""
        from txmail.quota import Quotas

        envelope = dataclasses.replace(self.envelope("team@example.test"), folder="Junk")
        self.assertTrue(self.successResultOf(self.router.deliver(envelope, self.message)).all_ok)
        self.assertEqual(self.provider.calls, [])
        self.router.quotas = Quotas.from_settings(None, [("alice@example.test", 10 * len(MESSAGE))])
        self.assertTrue(
            self.successResultOf(self.router.deliver(self.envelope("team@example.test"), self.message)).all_ok
        )
        self.assertEqual(self.provider.calls, [(["bob@example.test"], None)])
        self.assertEqual(self.inbox("alice@example.test"), [MESSAGE])
        self.assertEqual(self.inbox("bob@example.test"), [MESSAGE])
