"""Tests for RFC 5321 section 5.1 routing, txmail.delivery.mx, against a real DNS server on loopback."""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import TestCase

from tests._dns import SERVFAIL, start_dns_server
from txmail.delivery.mx import Destination, MXResolver, NoRoute, NullMX, parse_domain_literal

RECORDS: dict[tuple[str, str], Any] = {
    # preference order, one host with both families
    ("example.test", "MX"): [(20, "mx2.example.test"), (10, "mx1.example.test")],
    ("mx1.example.test", "A"): ["127.0.0.1"],
    ("mx1.example.test", "AAAA"): ["::1"],
    ("mx2.example.test", "A"): ["127.0.0.2", "127.0.0.3"],
    # equal preferences
    ("equal.test", "MX"): [(10, "a.equal.test"), (10, "b.equal.test")],
    ("a.equal.test", "A"): ["127.0.1.1"],
    ("b.equal.test", "A"): ["127.0.1.2"],
    # no MX: the domain's own addresses
    ("implicit.test", "A"): ["127.0.2.1"],
    ("implicit.test", "AAAA"): ["2001:db8::2"],
    # null MX (RFC 7505)
    ("nullmx.test", "MX"): [(0, ".")],
    ("nullmx.test", "A"): ["127.0.3.1"],
    # an exchange without addresses is skipped
    ("skip.test", "MX"): [(5, "gone.skip.test"), (10, "noaddr.skip.test"), (20, "ok.skip.test")],
    ("noaddr.skip.test", "TXT"): [],
    ("ok.skip.test", "A"): ["127.0.4.1"],
    # nothing left at all: permanent
    ("deadend.test", "MX"): [(10, "noaddr.skip.test")],
    # no MX and no address: permanent
    ("empty.test", "TXT"): [],
    # lookups that fail
    ("servfail.test", "MX"): SERVFAIL,
    ("halfbroken.test", "MX"): [(10, "broken.halfbroken.test"), (20, "noaddr.skip.test")],
    ("broken.halfbroken.test", "A"): SERVFAIL,
    ("broken.halfbroken.test", "AAAA"): SERVFAIL,
    ("recovers.test", "MX"): [(10, "broken.halfbroken.test"), (20, "ok.skip.test")],
    # CNAME to an exchange, same address twice
    ("alias.test", "MX"): [(10, "mx.alias.test"), (20, "mx1.example.test")],
    ("mx.alias.test", "CNAME"): ["mx1.example.test"],
}


class _Silent(DatagramProtocol):
    """Receives queries and never answers."""

    def __init__(self) -> None:
        self.received = 0

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.received += 1


class MXResolverTests(TestCase):
    def setUp(self) -> None:
        self.server = start_dns_server(self, RECORDS)
        self.calls = 0

    def run_blocking(self, fn: Any, *args: Any) -> defer.Deferred[Any]:
        self.calls += 1
        return threads.deferToThread(fn, *args)

    def resolver(self, seed: int = 0, timeout: float = 2.0) -> MXResolver:
        return MXResolver(
            [self.server], run_blocking=self.run_blocking, timeout=timeout, rng=random.Random(seed)
        )

    @defer.inlineCallbacks
    def test_preference_order_and_ipv6_first(self) -> Any:
        """MX records come lowest preference first; each host's IPv6 addresses precede its IPv4 ones."""
        result = yield self.resolver().resolve("example.test")
        self.assertEqual(
            result,
            [
                Destination("mx1.example.test", "::1", 10),
                Destination("mx1.example.test", "127.0.0.1", 10),
                Destination("mx2.example.test", "127.0.0.2", 20),
                Destination("mx2.example.test", "127.0.0.3", 20),
            ],
        )
        # MX, then AAAA and A for each of the two hosts, all through run_blocking.
        self.assertEqual(self.calls, 5)
        self.assertIn(("mx1.example.test", "AAAA"), self.dns_authority.queries)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_answers_cached_for_their_ttl(self) -> Any:
        """A second resolve of the same domain asks the DNS server nothing (60 s TTLs)."""
        resolver = self.resolver()
        first = yield resolver.resolve("example.test")
        asked = len(self.dns_authority.queries)  # type: ignore[attr-defined]
        second = yield resolver.resolve("example.test")
        self.assertEqual(second, first)
        self.assertEqual(len(self.dns_authority.queries), asked)  # type: ignore[attr-defined]

    @defer.inlineCallbacks
    def test_trailing_dot_and_case(self) -> Any:
        """A trailing dot and upper case in the domain change nothing."""
        result = yield self.resolver().resolve("Example.TEST.")
        self.assertEqual(result[0].host, "mx1.example.test")
        self.assertEqual(len(result), 4)

    @defer.inlineCallbacks
    def test_equal_preference_shuffled(self) -> Any:
        """Equal preferences are shuffled with the rng: a seed is reproducible, and both orders occur."""
        orders = set()
        for seed in range(12):
            result = yield self.resolver(seed).resolve("equal.test")
            again = yield self.resolver(seed).resolve("equal.test")
            self.assertEqual(result, again)
            self.assertEqual({d.preference for d in result}, {10})
            orders.add(tuple(d.host for d in result))
            if len(orders) == 2:
                break
        self.assertEqual(orders, {("a.equal.test", "b.equal.test"), ("b.equal.test", "a.equal.test")})

    @defer.inlineCallbacks
    def test_implicit_mx(self) -> Any:
        """Without MX records the domain itself is the host, preference 0 (RFC 5321 section 5.1)."""
        result = yield self.resolver().resolve("implicit.test")
        self.assertEqual(
            result,
            [Destination("implicit.test", "2001:db8::2", 0), Destination("implicit.test", "127.0.2.1", 0)],
        )

    @defer.inlineCallbacks
    def test_null_mx(self) -> Any:
        """'MX 0 .' fails at once and permanently, although the domain has an A record (RFC 7505)."""
        d = self.resolver().resolve("nullmx.test")
        failure = yield self.assertFailure(d, NullMX)
        self.assertFalse(failure.temporary)
        self.assertEqual(failure.status, "5.1.10")
        self.assertEqual(self.calls, 1)  # no address lookups

    @defer.inlineCallbacks
    def test_exchange_without_address_skipped(self) -> Any:
        """Exchanges that do not exist or have no address are skipped."""
        result = yield self.resolver().resolve("skip.test")
        self.assertEqual(result, [Destination("ok.skip.test", "127.0.4.1", 20)])

    @defer.inlineCallbacks
    def test_cname_exchange_and_duplicate_address(self) -> Any:
        """An exchange behind a CNAME resolves; an address already listed is not repeated."""
        result = yield self.resolver().resolve("alias.test")
        self.assertEqual(
            result,
            [Destination("mx.alias.test", "::1", 10), Destination("mx.alias.test", "127.0.0.1", 10)],
        )

    @defer.inlineCallbacks
    def test_no_address_at_all_is_permanent(self) -> Any:
        """MX hosts without addresses, or no MX and no address: permanent NoRoute."""
        for domain in ("deadend.test", "empty.test"):
            failure = yield self.assertFailure(self.resolver().resolve(domain), NoRoute)
            self.assertFalse(failure.temporary, domain)

    @defer.inlineCallbacks
    def test_nxdomain_is_permanent(self) -> Any:
        """A domain that does not exist: permanent NoRoute."""
        failure = yield self.assertFailure(self.resolver().resolve("nosuch.test"), NoRoute)
        self.assertFalse(failure.temporary)
        self.assertEqual(failure.status, "5.1.2")
        self.assertIn("does not exist", str(failure))

    @defer.inlineCallbacks
    def test_servfail_is_temporary(self) -> Any:
        """SERVFAIL on the MX lookup is temporary; it never falls back to the A record."""
        failure = yield self.assertFailure(self.resolver().resolve("servfail.test"), NoRoute)
        self.assertTrue(failure.temporary)
        self.assertEqual(failure.status, "4.4.3")
        self.assertIn("MX lookup for servfail.test failed", str(failure))
        self.assertEqual(self.calls, 1)

    @defer.inlineCallbacks
    def test_failed_host_lookup_makes_it_temporary(self) -> Any:
        """When nothing is left and some host lookup failed, NoRoute is temporary."""
        failure = yield self.assertFailure(self.resolver().resolve("halfbroken.test"), NoRoute)
        self.assertTrue(failure.temporary)
        self.assertIn("broken.halfbroken.test failed", str(failure))

    @defer.inlineCallbacks
    def test_failed_host_lookup_skipped_when_others_work(self) -> Any:
        """A host whose lookups fail is skipped when another host has addresses."""
        result = yield self.resolver().resolve("recovers.test")
        self.assertEqual(result, [Destination("ok.skip.test", "127.0.4.1", 20)])

    @defer.inlineCallbacks
    def test_server_not_answering_is_temporary(self) -> Any:
        """A nameserver that never answers: temporary NoRoute after the timeout."""
        silent = _Silent()
        port = reactor.listenUDP(0, silent, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        resolver = MXResolver([("127.0.0.1", port.getHost().port)], timeout=0.2)
        failure = yield self.assertFailure(resolver.resolve("example.test"), NoRoute)
        self.assertTrue(failure.temporary)
        self.assertGreaterEqual(silent.received, 1)

    @defer.inlineCallbacks
    def test_run_blocking_failure_propagates(self) -> Any:
        """If run_blocking itself fails, that failure reaches the caller unwrapped."""

        def broken(fn: Any, *args: Any) -> defer.Deferred[Any]:
            if args[1] == "MX":
                return threads.deferToThread(fn, *args)
            return defer.fail(RuntimeError("pool stopped"))

        resolver = MXResolver([self.server], run_blocking=broken, timeout=2.0)
        yield self.assertFailure(resolver.resolve("example.test"), RuntimeError)

    @defer.inlineCallbacks
    def test_domain_literals(self) -> Any:
        """Address literals route to that address without DNS (RFC 5321 section 4.1.3)."""
        resolver = self.resolver()
        v4 = yield resolver.resolve("[192.0.2.1]")
        self.assertEqual(v4, [Destination("[192.0.2.1]", "192.0.2.1", 0)])
        v6 = yield resolver.resolve("[IPv6:2001:DB8::1]")
        self.assertEqual(v6, [Destination("[IPv6:2001:DB8::1]", "2001:db8::1", 0)])
        for bad in ("[300.1.2.3]", "[2001:db8::1]", "[IPv6:1.2.3.4]", "[x:y]"):
            failure = yield self.assertFailure(resolver.resolve(bad), NoRoute)
            self.assertFalse(failure.temporary, bad)
        self.assertEqual(self.calls, 0)

    @defer.inlineCallbacks
    def test_invalid_domain(self) -> Any:
        """A name DNS cannot hold is a permanent NoRoute."""
        for bad in ("", ".", "a" * 64 + ".test", "a..b"):
            failure = yield self.assertFailure(self.resolver().resolve(bad), NoRoute)
            self.assertFalse(failure.temporary, bad)
        self.assertEqual(self.calls, 0)


class ParseDomainLiteralTests(TestCase):
    def test_parse(self) -> None:
        """Literals give their address; other names give None; malformed literals raise."""
        self.assertEqual(parse_domain_literal("[10.0.0.1]"), "10.0.0.1")
        self.assertEqual(parse_domain_literal("[ipv6:::1]"), "::1")
        self.assertIsNone(parse_domain_literal("example.test"))
        self.assertRaises(ValueError, parse_domain_literal, "[10.0.0]")


class DNSSECTests(TestCase):
    """``dnssec=True``: the AD bit of each answer is kept (RFC 7672 section 2.2)."""

    def resolver(self, secure: Any) -> MXResolver:
        server = start_dns_server(
            self,
            {
                ("signed.test", "MX"): [(10, "mx.signed.test")],
                ("mx.signed.test", "A"): ["127.0.0.1"],
                ("_25._tcp.mx.signed.test", "TLSA"): [(3, 1, 1, "ab" * 32)],
                ("_25._tcp.broken.signed.test", "TLSA"): SERVFAIL,
            },
            secure=secure,
        )
        return MXResolver([server], timeout=2.0, dnssec=True)

    @defer.inlineCallbacks
    def test_ad_bit_kept(self) -> Any:
        """Authenticated MX and address answers mark the destination secure; TLSA records come with their status."""
        resolver = self.resolver({"signed.test", "mx.signed.test", "_25._tcp.mx.signed.test"})
        [dest] = yield resolver.resolve("signed.test")
        self.assertEqual((dest.mx_secure, dest.secure), (True, True))
        answer = yield resolver.lookup("_25._tcp.mx.signed.test", "TLSA")
        self.assertEqual((answer.status, answer.secure), ("ok", True))
        [record] = answer.records
        self.assertEqual((record.usage, record.selector, record.mtype, record.cert), (3, 1, 1, b"\xab" * 32))
        failed = yield resolver.lookup("_25._tcp.broken.signed.test", "TLSA")
        self.assertEqual(failed.status, "temp")

    @defer.inlineCallbacks
    def test_insecure_answers(self) -> Any:
        """Without the AD bit nothing is secure (and equality of destinations ignores the flags)."""
        resolver = self.resolver(frozenset())
        [dest] = yield resolver.resolve("signed.test")
        self.assertEqual((dest.mx_secure, dest.secure), (False, False))
        self.assertEqual(dest, Destination("mx.signed.test", "127.0.0.1", 10, True, True))
        answer = yield resolver.lookup("_25._tcp.mx.signed.test", "TLSA")
        self.assertEqual((answer.status, answer.secure), ("ok", False))
        missing = yield resolver.lookup("_25._tcp.nothing.signed.test", "TLSA")
        self.assertEqual(missing.status, "nxdomain")
