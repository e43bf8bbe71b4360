"""
Forwarding through aliases to other domains (:mod:`txmail.delivery.forward`):
SRS senders, ARC seals, bounces coming back to SRS addresses, and DKIM
signatures on the server's own notices.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests._dkim import load_key
from tests.delivery.test_router import DictDirectory
from txmail._fs import run_inline
from txmail.delivery.forward import Forwarding, own_results
from txmail.delivery.queue import SpoolQueue
from txmail.delivery.router import DeliveryRouter
from txmail.dnsdata import DictAnswers, Question
from txmail.model import INBOX, Envelope, MessageSource
from txmail.policy import arc, dkim
from txmail.policy.authentication import MessageSigner
from txmail.policy.srs import SRS
from txmail.store.memory import MemoryProvider

RSA_PRIVATE, RSA_RECORD = dkim.generate_key("rsa-sha256", 1024)
NOW = 1_700_000_000.0

MESSAGE = (
    b"Return-Path: <sender@remote.test>\r\n"
    b"Authentication-Results: mx.example.test; spf=pass smtp.mailfrom=sender@remote.test;\r\n"
    b"\tdmarc=pass header.from=remote.test\r\n"
    b"Received: from client.test ([192.0.2.7]) by mx.example.test (txmail) with ESMTP id T1\r\n"
    b"From: sender@remote.test\r\n"
    b"To: fwd@example.test\r\n"
    b"Subject: forwarded\r\n"
    b"\r\n"
    b"Body.\r\n"
)


class ForwardingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.directory = DictDirectory(
            {"example.test"},
            {"alice@example.test", "bob@example.test"},
            {"fwd@example.test": ["someone@far.test", "alice@example.test"]},
        )
        self.stores = MemoryProvider()
        self.queue = SpoolQueue(self.mktemp())
        self.srs = SRS([b"a secret of sixteen+"], "example.test")
        self.key = load_key("example.test", "arc", RSA_PRIVATE)
        self.forwarding = Forwarding(
            srs=self.srs,
            seal_key=self.key,
            authserv_id="mx.example.test",
            is_local=self.directory.is_local_domain,
            run_blocking=run_inline,
            clock=self.clock,
        )
        self.router = DeliveryRouter(
            self.directory, self.stores, self.queue, forwarding=self.forwarding, hostname="mx.example.test"
        )

    def message(self, data: bytes = MESSAGE) -> MessageSource:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return MessageSource.from_file(path, len(data), fsynced=True)

    def entries(self) -> list[tuple[Any, bytes]]:
        out = []
        for entry in self.successResultOf(self.queue.list_entries()):
            with open(self.queue.message_path(entry.queue_id), "rb") as f:
                out.append((entry, f.read()))
        return out

    def test_alias_forward_is_rewritten_and_sealed(self) -> None:
        """The forwarded copy gets an SRS sender and an ARC set that verifies; the local copy is untouched."""
        envelope = Envelope("sender@remote.test", ("fwd@example.test",), message_id="T1")
        report = self.successResultOf(self.router.deliver(envelope, self.message()))
        self.assertTrue(report.all_ok)
        ((entry, data),) = self.entries()
        self.assertEqual(list(entry.recipients), ["someone@far.test"])
        self.assertTrue(entry.envelope.mail_from.startswith("SRS0="), entry.envelope.mail_from)
        self.assertTrue(entry.envelope.mail_from.endswith("=remote.test=sender@example.test"))
        self.assertEqual(self.srs.reverse(entry.envelope.mail_from, NOW), "sender@remote.test")
        self.assertTrue(data.startswith(b"ARC-Seal: i=1;"), data[:60])
        self.assertTrue(data.endswith(MESSAGE))
        name = "arc._domainkey.example.test"
        answers = {name: DictAnswers({(name, "TXT"): [RSA_RECORD]}).answer(Question(name, "TXT"))}
        verdict = arc.arc_verify(data, answers, now=NOW)
        self.assertEqual(verdict.result, "pass")
        (arc_set,) = verdict.sets
        self.assertEqual(arc_set.result_of("dmarc"), "pass")
        self.assertEqual(arc_set.result_of("arc"), "none")
        mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for("alice@example.test")).get_mailbox(INBOX)
        )
        (info,) = self.successResultOf(mailbox.list_messages())
        self.assertEqual(self.successResultOf(mailbox.read_message(info.uid)), MESSAGE)

    def test_not_rewritten(self) -> None:
        """The null sender, a local sender and an authenticated user's mail keep their sender."""
        for sender, user in (("", None), ("bob@example.test", None), ("me@remote.test", "bob@example.test")):
            envelope = Envelope(sender, ("fwd@example.test",), authenticated_user=user, message_id="T")
            self.successResultOf(self.router.deliver(envelope, self.message()))
        senders = sorted(e.envelope.mail_from for e, _ in self.entries())
        self.assertEqual(senders, ["", "bob@example.test", "me@remote.test"])

    def test_direct_remote_recipient_not_forwarded(self) -> None:
        """A remote recipient an authenticated user wrote to is relayed as is: no SRS, no seal."""
        envelope = Envelope("bob@example.test", ("x@far.test",), authenticated_user="bob@example.test")
        self.successResultOf(self.router.deliver(envelope, self.message()))
        ((entry, data),) = self.entries()
        self.assertEqual(entry.envelope.mail_from, "bob@example.test")
        self.assertEqual(data, MESSAGE)

    def test_without_our_results_not_sealed(self) -> None:
        """A message without our Authentication-Results (a trusted client's) is rewritten but not sealed."""
        plain = MESSAGE.replace(
            b"Authentication-Results: mx.example.test;", b"Authentication-Results: other.test;"
        )
        envelope = Envelope("sender@remote.test", ("fwd@example.test",))
        self.successResultOf(self.router.deliver(envelope, self.message(plain)))
        ((entry, data),) = self.entries()
        self.assertTrue(entry.envelope.mail_from.startswith("SRS0="))
        self.assertEqual(data, plain)

    def test_bounce_to_srs_address(self) -> None:
        """A bounce to one of our SRS addresses is accepted without AUTH and queued for the original sender."""
        address = self.srs.forward("sender@remote.test", NOW)
        self.assertTrue(self.successResultOf(self.router.check_recipient(address)).ok)
        envelope = Envelope("", (address,))
        report = self.successResultOf(self.router.deliver(envelope, self.message()))
        self.assertTrue(report.all_ok)
        ((entry, _),) = self.entries()
        self.assertEqual(list(entry.recipients), ["sender@remote.test"])
        self.assertEqual(entry.envelope.mail_from, "")

    def test_bad_srs_address_refused(self) -> None:
        """An SRS address with a wrong hash, or too old, is an unknown user."""
        address = self.srs.forward("sender@remote.test", NOW)
        local, _, domain = address.partition("@")
        tampered = local.replace("=remote.test=", "=evil.test=") + "@" + domain
        result = self.successResultOf(self.router.check_recipient(tampered))
        self.assertEqual((result.reply.code, result.reply.enhanced), (550, "5.1.1"))
        self.clock.advance(30 * 86400)
        self.assertFalse(self.successResultOf(self.router.check_recipient(address)).ok)

    def test_own_results(self) -> None:
        """own_results finds our field by authserv-id, unfolded, and ignores others'."""
        self.assertEqual(
            own_results(MESSAGE, "MX.example.test"),
            "spf=pass smtp.mailfrom=sender@remote.test; dmarc=pass header.from=remote.test",
        )
        self.assertIsNone(own_results(MESSAGE, "other.test"))


class NoticeSigningTests(SynchronousTestCase):
    def test_success_notice_signed(self) -> None:
        """The server's own DSN is DKIM-signed with the key of its From domain's parent and verifies."""
        clock = task.Clock()
        clock.advance(NOW)
        directory = DictDirectory({"example.test"}, {"alice@example.test", "bob@example.test"}, {})
        stores = MemoryProvider()
        key = load_key("example.test", "sel", RSA_PRIVATE)
        router = DeliveryRouter(
            directory,
            stores,
            SpoolQueue(self.mktemp()),
            hostname="mx.example.test",
            notice_signer=MessageSigner([key], run_blocking=run_inline, clock=clock),
        )
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(MESSAGE)
        envelope = Envelope(
            "bob@example.test", ("alice@example.test",), rcpt_params=({"NOTIFY": "SUCCESS"},), message_id="T"
        )
        self.successResultOf(router.deliver(envelope, MessageSource.from_file(path, len(MESSAGE))))
        mailbox = self.successResultOf(
            self.successResultOf(stores.store_for("bob@example.test")).get_mailbox(INBOX)
        )
        (info,) = self.successResultOf(mailbox.list_messages())
        notice = self.successResultOf(mailbox.read_message(info.uid))
        self.assertTrue(notice.startswith(b"Return-Path: <>\r\nDKIM-Signature:"), notice[:80])
        signed = notice[len(b"Return-Path: <>\r\n") :]
        name = "sel._domainkey.example.test"
        answers = {name: DictAnswers({(name, "TXT"): [RSA_RECORD]}).answer(Question(name, "TXT"))}
        (result,) = dkim.verify(signed, answers, now=NOW)
        self.assertEqual((result.result, result.domain), ("pass", "example.test"))
