"""
Greylisting (:mod:`txmail.policy.greylist`): the triplet's life on a
task.Clock, per-domain settings, the saved table, and the 451 on the wire
through the real SMTP adapter.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.smtp.test_server import BODY, ServerTestCase
from txmail.model import RecipientResult
from txmail.policy.config import DomainPolicy, PolicyConfig
from txmail.policy.dnsbl import ALLOWLISTED
from txmail.policy.greylist import GREYLISTED_REPLY, Greylisting, triplet
from txmail.policy.hooks import RecipientInfo, SessionInfo, TransactionInfo, Verdict

DELAY = 300.0
WINDOW = 4 * 3600.0
EXPIRE = 36 * 86400.0

#: Greylisting on for every domain.
CONFIG = PolicyConfig(defaults=DomainPolicy(greylisting=True))
GREYLISTED = Verdict(reply=GREYLISTED_REPLY)


def session(address: str = "192.0.2.7", sender: str = "sender@remote.test", **kwargs: Any) -> SessionInfo:
    return SessionInfo(role="mta", client_address=address, transaction=TransactionInfo(sender), **kwargs)


def rcpt(address: str = "alice@example.test", ok: bool = True) -> RecipientInfo:
    return RecipientInfo(address, {}, RecipientResult(address, ok=ok))


class GreylistTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def make(self, config: PolicyConfig = CONFIG, **kwargs: Any) -> Greylisting:
        return Greylisting(config, clock=self.clock, **kwargs)


class TripletTests(GreylistTestCase):
    """The triplet's life: first sight, early retry, pass, expiry."""

    def test_triplet(self) -> None:
        """The triplet is the client's /24 or /64 and both addresses lower-cased."""
        self.assertEqual(
            triplet("192.0.2.7", "Sender@Remote.TEST", "Alice@Example.Test"),
            ("192.0.2.0/24", "sender@remote.test", "alice@example.test"),
        )
        self.assertEqual(triplet("2001:db8:0:1:2::3", "", "a@b")[0], "2001:db8:0:1::/64")

    def test_first_sight(self) -> None:
        """A triplet not seen before gets 451 4.7.1."""
        policy = self.make()
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)
        self.assertEqual(str(GREYLISTED_REPLY.code) + " " + GREYLISTED_REPLY.enhanced, "451 4.7.1")

    def test_early_retry_keeps_first_sight(self) -> None:
        """A retry before the delay gets 451 again, and the delay still counts from the first sight."""
        policy = self.make()
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(DELAY - 1)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)
        self.clock.advance(1)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))

    def test_pass_after_delay_then_remembered(self) -> None:
        """A retry after the delay passes, and the triplet keeps passing without delay."""
        policy = self.make(auto_allowlist=False)
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(DELAY + 60)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))
        self.clock.advance(1)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))
        # Another recipient from the same client and sender is a new triplet.
        self.assertEqual(policy.on_rcpt(session(), rcpt("bob@example.test")), GREYLISTED)

    def test_window_expiry_starts_over(self) -> None:
        """A retry after the window is a first sight again."""
        policy = self.make()
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(WINDOW + 1)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)
        self.clock.advance(DELAY - 1)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)
        self.clock.advance(1)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))

    def test_passed_triplet_expires(self) -> None:
        """A passed triplet is remembered for the expiry period from its last pass, then greylisted again."""
        policy = self.make()
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(DELAY)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))
        self.clock.advance(EXPIRE - 1)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))  # refreshed here
        self.clock.advance(EXPIRE - 1)
        self.assertIsNone(policy.on_rcpt(session(), rcpt()))
        self.clock.advance(EXPIRE + 1)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)

    def test_network_grouping(self) -> None:
        """A retry from another address of the same /24 (or IPv6 /64) passes; another network does not."""
        policy = self.make(auto_allowlist=False)
        policy.on_rcpt(session("192.0.2.7"), rcpt())
        policy.on_rcpt(session("2001:db8:0:1::25"), rcpt())
        self.clock.advance(DELAY)
        self.assertEqual(policy.on_rcpt(session("192.0.3.7"), rcpt()), GREYLISTED)
        self.assertIsNone(policy.on_rcpt(session("192.0.2.200"), rcpt()))
        self.assertIsNone(policy.on_rcpt(session("2001:db8:0:1:ffff::26"), rcpt()))
        self.assertEqual(policy.on_rcpt(session("2001:db8:0:2::25"), rcpt()), GREYLISTED)

    def test_case_insensitive(self) -> None:
        """The retry may spell the addresses in another case."""
        policy = self.make()
        policy.on_rcpt(session(sender="Sender@Remote.Test"), rcpt("ALICE@example.test"))
        self.clock.advance(DELAY)
        self.assertIsNone(policy.on_rcpt(session(sender="sender@remote.test"), rcpt("alice@EXAMPLE.test")))

    def test_null_sender_greylisted(self) -> None:
        """The null reverse-path is greylisted like any other sender, and passes on retry."""
        policy = self.make()
        self.assertEqual(policy.on_rcpt(session(sender=""), rcpt()), GREYLISTED)
        self.clock.advance(DELAY)
        self.assertIsNone(policy.on_rcpt(session(sender=""), rcpt()))

    def test_auto_allowlist(self) -> None:
        """After a pass, new triplets from the same network pass at once (unless auto_allowlist is off)."""
        for auto, expected in ((True, None), (False, GREYLISTED)):
            policy = self.make(auto_allowlist=auto)
            policy.on_rcpt(session(), rcpt())
            self.clock.advance(DELAY)
            policy.on_rcpt(session(), rcpt())
            self.assertEqual(
                policy.on_rcpt(session("192.0.2.9", "other@else.test"), rcpt("bob@example.test")), expected
            )
            self.assertEqual(policy.on_rcpt(session("198.51.100.1"), rcpt()), GREYLISTED)
            self.assertEqual(len(policy.passed), 1)  # an allowlisted network's triplets are not kept

    def test_bounded(self) -> None:
        """The tables keep at most max_entries entries, dropping the oldest."""
        policy = self.make(max_entries=3)
        for i in range(10):
            policy.on_rcpt(session(), rcpt(f"u{i}@example.test"))
        self.assertEqual(
            [key[2] for key in policy.pending], ["u7@example.test", "u8@example.test", "u9@example.test"]
        )


class ExemptionTests(GreylistTestCase):
    """Who is not greylisted."""

    def test_domain_switch(self) -> None:
        """Only recipients whose domain has greylisting on are greylisted."""
        config = PolicyConfig(domains=(("example.test", DomainPolicy(greylisting=True)),))
        policy = self.make(config)
        self.assertIsNone(policy.on_rcpt(session(), rcpt("bob@other.test")))
        self.assertEqual(policy.on_rcpt(session(), rcpt("alice@Example.Test")), GREYLISTED)
        off = PolicyConfig(
            defaults=DomainPolicy(greylisting=True),
            domains=(("other.test", DomainPolicy(greylisting=False)),),
        )
        self.assertIsNone(self.make(off).on_rcpt(session(), rcpt("bob@other.test")))

    def test_trusted_allowlisted_and_refused(self) -> None:
        """Trusted clients, DNS-allowlisted clients and recipients the router refused are let be."""
        policy = self.make()
        self.assertIsNone(policy.on_rcpt(session(trusted=True), rcpt()))
        allowlisted = session()
        allowlisted.notes[ALLOWLISTED] = "wl.test"
        self.assertIsNone(policy.on_rcpt(allowlisted, rcpt()))
        self.assertIsNone(policy.on_rcpt(session(), rcpt("nobody@example.test", ok=False)))
        self.assertEqual(len(policy.pending), 0)


class PersistenceTests(GreylistTestCase):
    """The table survives a restart through its JSON file."""

    def setUp(self) -> None:
        super().setUp()
        self.path = os.path.join(os.path.abspath(self.mktemp()), "greylist.json")
        os.makedirs(os.path.dirname(self.path))

    def test_across_instances(self) -> None:
        """A second instance loading the file knows passed and pending triplets (with their first sight)."""
        first = self.make(path=self.path, auto_allowlist=False)
        first.on_rcpt(session(), rcpt())
        self.clock.advance(DELAY)
        first.on_rcpt(session(), rcpt())  # passes
        first.on_rcpt(session(), rcpt("bob@example.test"))  # first sight
        first.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        second = self.make(path=self.path, auto_allowlist=False)
        self.assertIsNone(second.on_rcpt(session(), rcpt()))
        self.assertEqual(second.on_rcpt(session(), rcpt("bob@example.test")), GREYLISTED)
        self.clock.advance(DELAY)
        self.assertIsNone(second.on_rcpt(session(), rcpt("bob@example.test")))

    def test_saved_at_most_every_interval(self) -> None:
        """A change is saved after save_interval, and nothing is written while nothing changed."""
        policy = self.make(path=self.path, save_interval=60)
        policy.on_rcpt(session(), rcpt())
        policy.on_rcpt(session(), rcpt("bob@example.test"))
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(60)
        with open(self.path) as f:
            saved = json.load(f)
        self.assertEqual(len(saved["pending"]), 2)
        os.remove(self.path)
        self.clock.advance(600)
        policy.stop()
        self.assertFalse(os.path.exists(self.path))
        self.assertEqual([n for n in os.listdir(os.path.dirname(self.path))], [])

    def test_expired_entries_not_saved(self) -> None:
        """Entries past their time are dropped before saving."""
        policy = self.make(path=self.path)
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(WINDOW + 1)
        policy.on_rcpt(session(), rcpt("bob@example.test"))
        policy.stop()
        with open(self.path) as f:
            saved = json.load(f)
        self.assertEqual([entry[2] for entry in saved["pending"]], ["bob@example.test"])

    def test_corrupt_file_ignored(self) -> None:
        """A file that is not a greylisting table is logged and ignored; the next save replaces it."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        for content in ("{not json", '{"version": 1, "pending": [["a", 1]]}', '{"version": 99}', "\xff"):
            with open(self.path, "w", encoding="latin-1") as f:
                f.write(content)
            policy = self.make(path=self.path)
            self.assertEqual(len(policy.pending) + len(policy.passed), 0)
        self.assertEqual(len([e for e in observer if e.get("path") == self.path and "error" in e]), 4)
        policy.on_rcpt(session(), rcpt())
        policy.stop()
        with open(self.path) as f:
            self.assertEqual(len(json.load(f)["pending"]), 1)

    def test_missing_file(self) -> None:
        """A missing file is an empty table."""
        policy = self.make(path=self.path)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)

    def test_unwritable_directory(self) -> None:
        """A failed save is logged and tried again later; the policy goes on working."""
        policy = self.make(path=os.path.join(self.path, "missing-dir", "greylist.json"))
        policy.on_rcpt(session(), rcpt())
        self.clock.advance(60)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertEqual(policy.on_rcpt(session(), rcpt()), GREYLISTED)
        policy.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class AdapterTests(ServerTestCase):
    """Greylisting on the wire through the real adapter."""

    def test_451_then_pass(self) -> None:
        """The first attempt gets 451 4.7.1 at RCPT; the same message after the delay is delivered."""
        policy = Greylisting(CONFIG, clock=self.clock)
        send = b"EHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
        proto, transport = self.connect(policies=[policy])
        proto.dataReceived(send + b"DATA\r\n")
        lines = self.take(transport)
        self.assertIn(b"451 4.7.1 Greylisted, please try again later", lines)
        self.assertEqual(lines[-1][:3], b"554")  # DATA: no valid recipients
        proto.connectionLost(None)
        self.clock.advance(DELAY)
        proto, transport = self.connect(policies=[policy])
        proto.dataReceived(send + b"DATA\r\n" + BODY)
        self.assertEqual(
            self.final_codes(self.take(transport)), [b"220", b"250", b"250", b"250", b"354", b"250"]
        )
        self.assertEqual(len(self.router.delivered), 1)
