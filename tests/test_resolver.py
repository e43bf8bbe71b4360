"""
The policy checks' DNS resolver (:mod:`txmail.resolver`) against a DNS
server on loopback, and the sans-IO answer types (:mod:`txmail.dnsdata`).
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._dns import SERVFAIL, start_dns_server
from txmail.dnsdata import Answer, DictAnswers, DNSStatus, Question, Resolving, reverse_name, run_sync
from txmail.resolver import Resolver, StaticResolver, drive

RECORDS = {
    ("example.test", "TXT"): ["v=spf1 -all", ["v=DKIM1; k=rsa; ", "p=ABC"]],
    ("example.test", "A"): ["192.0.2.1"],
    ("example.test", "AAAA"): ["2001:db8::1"],
    ("example.test", "MX"): [(10, "mx.example.test")],
    ("1.2.0.192.in-addr.arpa", "PTR"): ["host.example.test"],
    ("long.test", "TXT"): ["x" * 600],
    ("broken.test", "TXT"): SERVFAIL,
}


class ResolverTests(TestCase):
    """Resolver answers every outcome and caches by TTL."""

    def setUp(self) -> None:
        self.host, self.port = start_dns_server(self, RECORDS)
        self.clock = task.Clock()
        self.resolver = Resolver([(self.host, self.port)], clock=self.clock, timeout=(1, 1))

    @defer.inlineCallbacks
    def test_record_types(self):
        """A, AAAA, MX, PTR and TXT come back as the plain values the checks use."""
        r = self.resolver
        a = yield r.lookup("example.test", "A")
        aaaa = yield r.lookup("example.test", "AAAA")
        mx = yield r.lookup("Example.Test.", "MX")
        ptr = yield r.lookup(reverse_name("192.0.2.1"), "PTR")
        self.assertEqual((a.status, a.records), (DNSStatus.OK, ("192.0.2.1",)))
        self.assertEqual(aaaa.records, ("2001:db8::1",))
        self.assertEqual(mx.records, ((10, "mx.example.test"),))
        self.assertEqual(ptr.records, ("host.example.test",))
        self.assertEqual(a.ttl, 60)

    @defer.inlineCallbacks
    def test_txt_strings_are_concatenated(self):
        """A TXT record's character-strings are joined with nothing between them (RFC 7208 section 3.3)."""
        txt = yield self.resolver.lookup("example.test", "TXT")
        self.assertEqual(sorted(txt.records), [b"v=DKIM1; k=rsa; p=ABC", b"v=spf1 -all"])
        long = yield self.resolver.lookup("long.test", "TXT")
        self.assertEqual(long.records, (b"x" * 600,))

    @defer.inlineCallbacks
    def test_negative_and_failed_answers(self):
        """NODATA, NXDOMAIN and SERVFAIL are told apart; none of them fails the Deferred."""
        nodata = yield self.resolver.lookup("example.test", "PTR")
        nxdomain = yield self.resolver.lookup("nowhere.test", "A")
        servfail = yield self.resolver.lookup("broken.test", "TXT")
        self.assertEqual(nodata.status, DNSStatus.NODATA)
        self.assertTrue(nodata.void)
        self.assertEqual(nxdomain.status, DNSStatus.NXDOMAIN)
        self.assertTrue(nxdomain.void)
        self.assertEqual(servfail.status, DNSStatus.ERROR)
        self.assertTrue(servfail.failed)
        self.assertIn("broken.test", servfail.error)

    @defer.inlineCallbacks
    def test_invalid_names_are_nxdomain_without_asking(self):
        """A name that cannot exist (empty label, label over 63 octets) is NXDOMAIN and never sent."""
        for name in ("a..b.test", "x" * 64 + ".test", "", "a b.test", ("y" * 60 + ".") * 5 + "test"):
            answer = yield self.resolver.lookup(name, "A")
            self.assertEqual(answer.status, DNSStatus.NXDOMAIN, name)
        self.assertEqual(self.dns_authority.queries, [])

    @defer.inlineCallbacks
    def test_cache_until_ttl(self):
        """An answer is served from the cache until its TTL passes, then asked again."""
        yield self.resolver.lookup("example.test", "A")
        yield self.resolver.lookup("EXAMPLE.test.", "A")
        self.assertEqual(self.dns_authority.queries.count(("example.test", "A")), 1)
        self.clock.advance(59)
        yield self.resolver.lookup("example.test", "A")
        self.assertEqual(self.dns_authority.queries.count(("example.test", "A")), 1)
        self.clock.advance(2)
        yield self.resolver.lookup("example.test", "A")
        self.assertEqual(self.dns_authority.queries.count(("example.test", "A")), 2)

    @defer.inlineCallbacks
    def test_cached_and_drive_from_cache(self):
        """cached() gives fresh answers only; a check whose answers are all cached fires at once."""
        question = Question("example.test", "MX")
        self.assertIsNone(self.resolver.cached(question))
        yield self.resolver.query(question)
        self.assertEqual(self.resolver.cached(question).records, ((10, "mx.example.test"),))

        def check() -> Resolving[int]:
            answer = yield question
            return len(answer.records)

        self.assertEqual(self.successResultOf(drive(check(), self.resolver)), 1)
        self.clock.advance(61)
        self.assertIsNone(self.resolver.cached(question))

    @defer.inlineCallbacks
    def test_errors_cached_briefly(self):
        """A failed lookup is kept for error_ttl seconds only."""
        yield self.resolver.lookup("broken.test", "TXT")
        yield self.resolver.lookup("broken.test", "TXT")
        first = len(self.dns_authority.queries)
        self.clock.advance(6)
        yield self.resolver.lookup("broken.test", "TXT")
        self.assertGreater(len(self.dns_authority.queries), first)

    @defer.inlineCallbacks
    def test_one_question_on_the_wire(self):
        """Callers asking the same question at once share one query."""
        answers = yield defer.gatherResults([self.resolver.lookup("example.test", "MX") for _ in range(5)])
        self.assertEqual({a.records for a in answers}, {((10, "mx.example.test"),)})
        self.assertEqual(self.dns_authority.queries.count(("example.test", "MX")), 1)
        self.assertEqual(self.resolver.queries, 1)

    @defer.inlineCallbacks
    def test_bounded_cache(self):
        """Past max_entries the oldest answers are dropped."""
        self.resolver.max_entries = 2
        for rdtype in ("A", "AAAA", "MX"):
            yield self.resolver.lookup("example.test", rdtype)
        yield self.resolver.lookup("example.test", "A")
        self.assertEqual(self.dns_authority.queries.count(("example.test", "A")), 2)

    @defer.inlineCallbacks
    def test_timeout_is_an_error(self):
        """A server that never answers gives an ERROR answer after the timeouts."""
        from twisted.internet import protocol, reactor

        silent = reactor.listenUDP(0, protocol.DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(silent.stopListening)
        resolver = Resolver([("127.0.0.1", silent.getHost().port)], timeout=(1,))
        answer = yield resolver.lookup("example.test", "A")
        self.assertEqual(answer.status, DNSStatus.ERROR)

    @defer.inlineCallbacks
    def test_drive_runs_a_check(self):
        """drive() answers a sans-IO check's questions in turn and fires with its result."""

        def check() -> Resolving[list[str]]:
            mx = yield Question("example.test", "MX")
            out = []
            for _, host in mx.records:
                a = yield Question(host, "A")
                out.append(a.status.value)
            txt = yield Question("example.test", "TXT")
            out.append(str(len(txt.records)))
            return out

        result = yield drive(check(), self.resolver)
        self.assertEqual(result, ["nxdomain", "2"])


class DictAnswersTests(SynchronousTestCase):
    """The dictionary answers used by sans-IO tests."""

    def test_outcomes(self):
        """Records, NODATA for a known name, NXDOMAIN for an unknown one, a set status."""
        answers = DictAnswers(
            {("a.test", "TXT"): ["v=spf1 -all"], ("a.test", "A"): [], ("b.test", "A"): DNSStatus.ERROR}
        )
        self.assertEqual(answers.answer(Question("A.test.", "TXT")).records, (b"v=spf1 -all",))
        self.assertEqual(answers.answer(Question("a.test", "A")).status, DNSStatus.NODATA)
        self.assertEqual(answers.answer(Question("a.test", "MX")).status, DNSStatus.NODATA)
        self.assertEqual(answers.answer(Question("c.test", "MX")).status, DNSStatus.NXDOMAIN)
        self.assertEqual(answers.answer(Question("b.test", "A")).status, DNSStatus.ERROR)
        self.assertEqual(len(answers.questions), 5)

    def test_run_sync_and_static_resolver(self):
        """run_sync and StaticResolver give the same answers from the same table."""

        def check() -> Resolving[tuple[Answer, ...]]:
            first = yield Question("x.test", "A")
            second = yield Question("x.test", "TXT")
            return first, second

        table = {("x.test", "A"): ["192.0.2.9"]}
        sync = run_sync(check(), DictAnswers(table))
        static = self.successResultOf(drive(check(), StaticResolver(table)))
        self.assertEqual(sync, static)
        self.assertEqual(sync[0].records, ("192.0.2.9",))
        self.assertEqual(sync[1].status, DNSStatus.NODATA)

    def test_reverse_name(self):
        """IPv4 and IPv6 reverse names (RFC 1035 section 3.5, RFC 3596 section 2.5)."""
        self.assertEqual(reverse_name("192.0.2.1"), "1.2.0.192.in-addr.arpa")
        self.assertTrue(reverse_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa"))
        self.assertRaises(ValueError, reverse_name, "not-an-ip")

    def test_unknown_type(self):
        """A question for a type the resolvers do not handle is refused."""
        self.assertRaises(ValueError, Question, "a.test", "SRV")
