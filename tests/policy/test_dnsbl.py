"""
DNS allowlists and blocklists (:mod:`txmail.policy.dnsbl`): query names,
what counts as a listing, the policy with a dictionary resolver, the
resolver's cache against the tests' DNS server, and end to end: a real
SMTP listener on loopback asking that DNS server, driven by smtplib.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._dns import SERVFAIL, start_dns_server
from tests.smtp.test_server import FakeRouter, ServerTestCase
from txmail.dnsdata import Answer, DNSStatus
from txmail.policy.config import parse_dns_list
from txmail.policy.dnsbl import ALLOWLISTED, DNSBL, listed, query_name, reversed_address
from txmail.policy.hooks import SessionInfo, TransactionInfo, Verdict
from txmail.resolver import Resolver, StaticResolver
from txmail.smtp.server import SMTPFactory

BL = parse_dns_list("bl.test=127.0.0.[2..11]")
BL2 = parse_dns_list("bl2.test")
WL = parse_dns_list("wl.test=127.0.[0..255].[1..3]")
DBL = parse_dns_list("dbl.test=127.0.1.[2..99]")


def session(address: str = "192.0.2.99", sender: str = "someone@spam.test", **kwargs: Any) -> SessionInfo:
    return SessionInfo(
        role="mta", session_id="s1", client_address=address, transaction=TransactionInfo(sender), **kwargs
    )


class QueryNameTests(SynchronousTestCase):
    """Client addresses become RFC 5782 section 2.4 query names."""

    def test_ipv4(self) -> None:
        """An IPv4 address is looked up with its octets reversed."""
        self.assertEqual(query_name("192.0.2.99", "bl.test"), "99.2.0.192.bl.test")

    def test_ipv6(self) -> None:
        """An IPv6 address is looked up with its 32 nibbles reversed (RFC 5782 section 2.4's example)."""
        self.assertEqual(
            query_name("2001:db8:1:2:3:4:567:89ab", "bl.test"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.test",
        )

    def test_ipv4_mapped(self) -> None:
        """An IPv4-mapped IPv6 client is looked up as IPv4."""
        self.assertEqual(reversed_address("::ffff:192.0.2.99"), "99.2.0.192")

    def test_not_an_address(self) -> None:
        """Text that is not an address is refused."""
        self.assertRaises(ValueError, reversed_address, "mx.example")


class ListedTests(SynchronousTestCase):
    """Which answers are listings."""

    def test_pattern(self) -> None:
        """Only answers matching the list's pattern count."""
        self.assertEqual(listed(BL, Answer.of("127.0.0.2")), ("127.0.0.2",))
        self.assertEqual(listed(BL, Answer.of("127.0.0.12")), ())
        self.assertEqual(listed(BL, Answer.of("127.0.0.12", "127.0.0.4")), ("127.0.0.4",))

    def test_spamhaus_error_codes(self) -> None:
        """127.255.255.254 ("query refused") is no listing, with a pattern or without."""
        self.assertEqual(listed(BL, Answer.of("127.255.255.254")), ())
        self.assertEqual(listed(BL2, Answer.of("127.255.255.254")), ())
        self.assertEqual(listed(BL2, Answer.of("127.0.0.2")), ("127.0.0.2",))

    def test_outside_loopback(self) -> None:
        """An answer outside 127.0.0.0/8 is never a listing (RFC 5782 section 2.1), even without a pattern."""
        self.assertEqual(listed(BL2, Answer.of("192.0.2.1")), ())
        self.assertEqual(listed(parse_dns_list("any.test=192.0.2.1"), Answer.of("192.0.2.1")), ())

    def test_negative_answers(self) -> None:
        """NXDOMAIN, NODATA and errors are not listings."""
        for status in (DNSStatus.NXDOMAIN, DNSStatus.NODATA, DNSStatus.ERROR):
            self.assertEqual(listed(BL2, Answer(status)), ())


class ManualResolver:
    """Answers only when the test says so; records what was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, defer.Deferred[Answer]]] = []

    def lookup(self, name: str, rdtype: str) -> defer.Deferred[Answer]:
        d: defer.Deferred[Answer] = defer.Deferred()
        self.asked.append((name, rdtype, d))
        return d


class BrokenResolver:
    """A resolver that raises."""

    def lookup(self, name: str, rdtype: str) -> Any:
        raise RuntimeError("resolver bug")


class ClientCheckTests(SynchronousTestCase):
    """The client's address at connect."""

    def setUp(self) -> None:
        self.resolver = StaticResolver()
        self.observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)

    def check(self, policy: DNSBL, s: SessionInfo | None = None) -> Any:
        return self.successResultOf(defer.maybeDeferred(policy.on_connect, s or session()))

    def test_not_listed(self) -> None:
        """A client no list names goes on (NXDOMAIN everywhere)."""
        policy = DNSBL(resolver=self.resolver, blocklists=[BL, BL2], allowlists=[WL])
        self.assertIsNone(self.check(policy))
        self.assertEqual(
            [q.name for q in self.resolver.questions],
            ["99.2.0.192.wl.test", "99.2.0.192.bl.test", "99.2.0.192.bl2.test"],
        )

    def test_listed_reply(self) -> None:
        """A listing refuses with 554 5.7.1 naming the client and the zone; the TXT reason is logged."""
        self.resolver.add("99.2.0.192.bl.test", "A", ["127.0.0.2"])
        self.resolver.add("99.2.0.192.bl.test", "TXT", ["Listed, see https://bl.test/lookup?192.0.2.99"])
        policy = DNSBL(resolver=self.resolver, blocklists=[BL])
        verdict = self.check(policy)
        self.assertEqual(
            verdict, Verdict.reject("554 5.7.1 Service unavailable; client [192.0.2.99] listed at bl.test")
        )
        [event] = [e for e in self.observer if e.get("zone") == "bl.test"]
        self.assertEqual(event["reason"], "Listed, see https://bl.test/lookup?192.0.2.99")
        self.assertEqual(event["answers"], "127.0.0.2")
        self.assertEqual(event["peer"], "192.0.2.99")

    def test_ipv6_client(self) -> None:
        """An IPv6 client is looked up by nibbles and named in brackets."""
        name = query_name("2001:db8::7", "bl2.test")
        self.resolver.add(name, "A", ["127.0.0.2"])
        policy = DNSBL(resolver=self.resolver, blocklists=[BL2])
        verdict = self.check(policy, session("2001:db8::7"))
        self.assertEqual(verdict.reply.text, "Service unavailable; client [2001:db8::7] listed at bl2.test")

    def test_first_zone_in_order(self) -> None:
        """When several lists name the client, the reply names the first configured one."""
        for zone in ("bl.test", "bl2.test"):
            self.resolver.add(f"99.2.0.192.{zone}", "A", ["127.0.0.2"])
        verdict = self.check(DNSBL(resolver=self.resolver, blocklists=[BL2, BL]))
        self.assertTrue(verdict.reply.text.endswith("listed at bl2.test"))
        verdict = self.check(DNSBL(resolver=self.resolver, blocklists=[BL, BL2]))
        self.assertTrue(verdict.reply.text.endswith("listed at bl.test"))

    def test_pattern_filters(self) -> None:
        """An answer outside the pattern or a "query refused" code is no listing, and is logged."""
        self.resolver.add("99.2.0.192.bl.test", "A", ["127.0.0.99"])
        self.resolver.add("99.2.0.192.bl2.test", "A", ["127.255.255.254"])
        self.assertIsNone(self.check(DNSBL(resolver=self.resolver, blocklists=[BL, BL2])))
        warned = [e for e in self.observer if e.get("zone") == "bl2.test"]
        self.assertEqual(warned[0]["answers"], "127.255.255.254")
        self.assertEqual(warned[0]["log_level"].name, "warn")

    def test_allowlist_wins(self) -> None:
        """An allowlisted client is accepted whatever the blocklists say, and the session notes say where."""
        self.resolver.add("99.2.0.192.wl.test", "A", ["127.0.10.2"])
        self.resolver.add("99.2.0.192.bl.test", "A", ["127.0.0.2"])
        self.resolver.add("spam.test.dbl.test", "A", ["127.0.1.2"])
        policy = DNSBL(resolver=self.resolver, blocklists=[BL], allowlists=[WL], domain_blocklists=[DBL])
        s = session()
        self.assertEqual(self.check(policy, s), Verdict.accept())
        self.assertEqual(s.notes[ALLOWLISTED], "wl.test")
        asked = len(self.resolver.questions)
        self.assertIsNone(self.successResultOf(defer.maybeDeferred(policy.on_mail, s)))
        self.assertEqual(len(self.resolver.questions), asked)

    def test_allowlist_pattern(self) -> None:
        """An allowlist answer outside its pattern does not allowlist."""
        self.resolver.add("99.2.0.192.wl.test", "A", ["127.0.10.9"])
        self.resolver.add("99.2.0.192.bl.test", "A", ["127.0.0.2"])
        s = session()
        verdict = self.check(DNSBL(resolver=self.resolver, blocklists=[BL], allowlists=[WL]), s)
        self.assertTrue(verdict.refused)
        self.assertNotIn(ALLOWLISTED, s.notes)

    def test_lookups_in_parallel(self) -> None:
        """Every zone is asked before any answer has come."""
        resolver = ManualResolver()
        policy = DNSBL(resolver=resolver, blocklists=[BL, BL2], allowlists=[WL])
        d = policy.on_connect(session())
        self.assertEqual(
            [(name, rdtype) for name, rdtype, _ in resolver.asked],
            [("99.2.0.192.wl.test", "A"), ("99.2.0.192.bl.test", "A"), ("99.2.0.192.bl2.test", "A")],
        )
        for _, _, answer in reversed(resolver.asked):
            answer.callback(Answer(DNSStatus.NXDOMAIN))
        self.assertIsNone(self.successResultOf(d))

    def test_dns_errors_are_not_listings(self) -> None:
        """A failed lookup (SERVFAIL, or a resolver that raises) is logged and the client goes on."""
        self.resolver.add("99.2.0.192.bl.test", "A", DNSStatus.ERROR)
        self.assertIsNone(self.check(DNSBL(resolver=self.resolver, blocklists=[BL])))
        self.assertTrue(any(e.get("error") == "configured failure" for e in self.observer))
        self.assertIsNone(self.check(DNSBL(resolver=BrokenResolver(), blocklists=[BL], allowlists=[WL])))
        self.assertEqual(len([e for e in self.observer if "resolver bug" in e.get("error", "")]), 2)

    def test_trusted_and_unknown_clients(self) -> None:
        """Trusted clients and clients without an IP address are not looked up."""
        policy = DNSBL(resolver=self.resolver, blocklists=[BL])
        self.assertIsNone(policy.on_connect(session(trusted=True)))
        self.assertIsNone(policy.on_connect(session("")))
        self.assertEqual(self.resolver.questions, [])


class DomainCheckTests(SynchronousTestCase):
    """The sender's domain at MAIL."""

    def setUp(self) -> None:
        self.resolver = StaticResolver({("spam.test.dbl.test", "A"): ["127.0.1.2"]})
        self.policy = DNSBL(resolver=self.resolver, blocklists=[], domain_blocklists=[DBL])

    def mail(self, sender: str, **kwargs: Any) -> Any:
        return self.successResultOf(
            defer.maybeDeferred(self.policy.on_mail, session(sender=sender, **kwargs))
        )

    def test_listed_domain(self) -> None:
        """A listed sender domain is refused with 554 5.7.1 naming it and the zone."""
        self.assertEqual(
            self.mail("Someone@Spam.Test"),
            Verdict.reject("554 5.7.1 Sender address rejected: domain spam.test listed at dbl.test"),
        )

    def test_unlisted_and_outside_pattern(self) -> None:
        """An unlisted domain, or an answer outside the pattern, goes on."""
        self.resolver.add("odd.test.dbl.test", "A", ["127.0.1.255"])
        self.assertIsNone(self.mail("a@good.test"))
        self.assertIsNone(self.mail("a@odd.test"))

    def test_skipped(self) -> None:
        """The null sender, address literals and trusted clients are not looked up."""
        self.assertIsNone(self.mail(""))
        self.assertIsNone(self.mail("a@[192.0.2.1]"))
        self.assertIsNone(self.mail("a@spam.test", trusted=True))
        self.assertEqual(self.resolver.questions, [])

    def test_error_tolerated(self) -> None:
        """A failed domain lookup lets the sender through."""
        self.resolver.add("broken.test.dbl.test", "A", DNSStatus.ERROR)
        self.assertIsNone(self.mail("a@broken.test"))


class AdapterTests(ServerTestCase):
    """The verdicts on the wire through the real adapter."""

    def test_listed_client_gets_554_greeting(self) -> None:
        """A listed client is greeted with the 554 and every command but QUIT gets 503."""
        resolver = StaticResolver({("7.2.0.192.bl.test", "A"): ["127.0.0.2"]})
        proto, transport = self.connect(policies=[DNSBL(resolver=resolver, blocklists=[BL])])
        proto.dataReceived(b"EHLO c.test\r\n")
        self.assertEqual(
            self.take(transport),
            [
                b"554 5.7.1 Service unavailable; client [192.0.2.7] listed at bl.test",
                b"503 5.5.1 Bad sequence of commands",
            ],
        )

    def test_submission_not_checked(self) -> None:
        """The policy is not asked on the submission role."""
        from tests.smtp.test_server import FakeDirectory
        from txmail.auth.authenticator import Authenticator

        resolver = StaticResolver({("7.2.0.192.bl.test", "A"): ["127.0.0.2"]})
        _, transport = self.connect(
            policies=[DNSBL(resolver=resolver, blocklists=[BL])],
            role="submission",
            authenticator=Authenticator(FakeDirectory(), clock=self.clock),
        )
        self.assertEqual(transport.value(), b"220 mx.example.test ESMTP txmail\r\n")
        self.assertEqual(resolver.questions, [])


RECORDS = {
    ("1.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("1.0.0.127.bl.test", "TXT"): ["Listed: https://bl.test/q?127.0.0.1"],
    ("1.0.0.127.wl.test", "A"): ["127.0.10.2"],
    ("2.0.0.127.bl.test", "A"): ["127.0.0.4"],
    ("spam.test.dbl.test", "A"): ["127.0.1.2"],
    ("broken.test.dbl.test", "A"): SERVFAIL,
}


class CacheTests(TestCase):
    """The resolver's cache spares the DNS a second lookup of the same client."""

    @defer.inlineCallbacks
    def test_second_connection_asks_nothing(self) -> Any:
        """A second connection from a listed address is refused again without a new query."""
        host, port = start_dns_server(self, RECORDS)
        resolver = Resolver([(host, port)], clock=task.Clock(), timeout=(2, 2))
        policy = DNSBL(resolver=resolver, blocklists=[BL], allowlists=[parse_dns_list("other.test")])
        first = yield policy.on_connect(session("127.0.0.1"))
        queries = list(self.dns_authority.queries)  # type: ignore[attr-defined]
        self.assertEqual(
            sorted(queries),
            [("1.0.0.127.bl.test", "A"), ("1.0.0.127.bl.test", "TXT"), ("1.0.0.127.other.test", "A")],
        )
        second = yield policy.on_connect(session("127.0.0.1"))
        self.assertEqual(first, second)
        self.assertTrue(second.refused)
        self.assertEqual(self.dns_authority.queries, queries)  # type: ignore[attr-defined]
        self.assertEqual(resolver.queries, 3)


class EndToEndTests(TestCase):
    """A real SMTP listener on loopback whose DNSBL policy asks the tests' DNS server."""

    timeout = 30

    def listen(self, **lists: Any) -> tuple[str, int]:
        host, port = start_dns_server(self, RECORDS)
        resolver = Resolver([(host, port)], timeout=(2, 2))
        spool = os.path.abspath(self.mktemp())
        os.makedirs(spool)
        self.router = FakeRouter()
        factory = SMTPFactory(
            hostname="mx.example.test",
            router=self.router,
            spool_dir=spool,
            policies=[DNSBL(resolver=resolver, **lists)],
            trusted_networks=(),  # loopback is checked like any client
        )
        self.protocols: list[Any] = []
        build = factory.buildProtocol

        def build_and_keep(addr: Any) -> Any:
            proto = build(addr)
            self.protocols.append(proto)
            return proto

        factory.buildProtocol = build_and_keep  # type: ignore[method-assign]
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(self._closed)
        self.addCleanup(listening.stopListening)
        return "127.0.0.1", listening.getHost().port

    @defer.inlineCallbacks
    def _closed(self) -> Any:
        """Wait until the server side of every connection is gone (no timers left behind)."""
        for proto in self.protocols:
            if not proto._lost and proto.transport is not None:
                proto.transport.abortConnection()
        for _ in range(200):
            if all(proto._lost for proto in self.protocols):
                return
            yield task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("server connections still open")

    @defer.inlineCallbacks
    def test_listed_client_refused(self) -> Any:
        """smtplib is refused at the greeting with 554 5.7.1 naming the zone."""
        address = self.listen(blocklists=[BL])

        def connect() -> None:
            smtplib.SMTP(*address, timeout=10)

        error = yield self.assertFailure(deferToThread(connect), smtplib.SMTPConnectError)
        self.assertEqual(error.smtp_code, 554)
        self.assertEqual(error.smtp_error, b"5.7.1 Service unavailable; client [127.0.0.1] listed at bl.test")

    @defer.inlineCallbacks
    def test_allowlisted_client_delivers(self) -> Any:
        """An allowlisted client delivers even from a blocklisted address and a listed sender domain."""
        address = self.listen(blocklists=[BL], allowlists=[WL], domain_blocklists=[DBL])

        def send() -> None:
            with smtplib.SMTP(*address, timeout=10) as s:
                s.sendmail("a@spam.test", ["alice@example.test"], b"Subject: hi\r\n\r\nHello\r\n")

        yield deferToThread(send)
        self.assertEqual(len(self.router.delivered), 1)

    @defer.inlineCallbacks
    def test_listed_sender_domain_refused(self) -> Any:
        """MAIL from a listed domain is refused; a domain whose lookup fails is let through."""
        address = self.listen(blocklists=[parse_dns_list("empty.test")], domain_blocklists=[DBL])

        def send() -> list[Any]:
            results = []
            with smtplib.SMTP(*address, timeout=10) as s:
                try:
                    s.sendmail("a@spam.test", ["alice@example.test"], b"Subject: hi\r\n\r\nHello\r\n")
                except smtplib.SMTPSenderRefused as e:
                    results.append((e.smtp_code, e.smtp_error))
                s.sendmail("a@broken.test", ["alice@example.test"], b"Subject: hi\r\n\r\nHello\r\n")
            return results

        results = yield deferToThread(send)
        self.assertEqual(
            results, [(554, b"5.7.1 Sender address rejected: domain spam.test listed at dbl.test")]
        )
        self.assertEqual([e.mail_from for e, _, _ in self.router.delivered], ["a@broken.test"])
