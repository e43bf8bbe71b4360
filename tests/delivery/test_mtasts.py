"""Tests for :mod:`txmail.delivery.mtasts`: parsing, matching, the cache, fetching and serving."""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet import ssl as twisted_ssl
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server
from twisted.web.test.requesthelper import DummyRequest

from tests._certs import make_certificate
from txmail.delivery.mtasts import (
    MTASTS,
    CachedPolicy,
    Policy,
    PolicyCache,
    PolicyError,
    PolicyFetcher,
    PolicyResource,
    mx_matches,
    parse_policy,
    parse_txt,
    policy_id,
    policy_text,
)
from txmail.tlsverify import load_trust_root

GOOD = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.backup.test\r\nmax_age: 86400\r\n"


class ParseTests(SynchronousTestCase):
    def test_txt_records(self) -> None:
        """RFC 8461 section 3.1: exactly one v=STSv1 record with a 1-32 alphanumeric id."""
        self.assertEqual(parse_txt([b"v=STSv1; id=20160831085700Z;"]), "20160831085700Z")
        self.assertEqual(parse_txt(["v=spf1 -all", "v=STSv1;id=abc"]), "abc")
        self.assertIsNone(parse_txt([b"v=STSv1; id=a", b"v=STSv1; id=b"]))  # two: none
        self.assertIsNone(parse_txt([b"v=STSv1;"]))
        self.assertIsNone(parse_txt([b"v=STSv1; id=" + b"a" * 33]))
        self.assertIsNone(parse_txt([b"v=STSv1; id=a-b"]))
        self.assertIsNone(parse_txt([b"v=STSv10; id=a"]))
        self.assertIsNone(parse_txt([]))

    def test_policy(self) -> None:
        """Section 3.2: the fields, LF or CRLF lines, unknown keys ignored."""
        policy = parse_policy(GOOD.replace("\r\n", "\n") + "extension: ignored\n")
        self.assertEqual(
            (policy.mode, policy.mx, policy.max_age),
            ("enforce", ("mail.example.test", "*.backup.test"), 86400),
        )
        self.assertEqual(parse_policy("version: STSv1\nmode: none\nmax_age: 0\n").mx, ())

    def test_bad_policies(self) -> None:
        """Wrong version, mode or max_age, no mx, or a line without a colon: PolicyError."""
        for text in (
            GOOD.replace("STSv1", "STSv2"),
            GOOD.replace("enforce", "strict"),
            GOOD.replace("86400", "31557601"),
            GOOD.replace("86400", "-1"),
            "version: STSv1\nmode: testing\nmax_age: 5\n",
            GOOD + "garbage\n",
        ):
            self.assertRaises(PolicyError, parse_policy, text)

    def test_mx_patterns(self) -> None:
        """Section 4.1: exact names, and ``*.`` for exactly one leftmost label, without case."""
        for pattern, host, expected in [
            ("mail.example.test", "MAIL.example.test.", True),
            ("mail.example.test", "mail2.example.test", False),
            ("*.example.test", "mx.example.test", True),
            ("*.example.test", "example.test", False),
            ("*.example.test", "a.b.example.test", False),
            ("*.example.test", ".example.test", False),
        ]:
            self.assertEqual(mx_matches(pattern, host), expected, (pattern, host))
        self.assertTrue(parse_policy(GOOD).matches("mx1.backup.test"))

    def test_our_policy_text_and_id(self) -> None:
        """The served text parses back; its id changes with the text."""
        text = policy_text("testing", ["mx.example.test"], 604800)
        self.assertEqual(parse_policy(text).mx, ("mx.example.test",))
        self.assertNotEqual(policy_id(text), policy_id(text.replace("testing", "enforce")))
        self.assertIsNotNone(parse_txt([f"v=STSv1; id={policy_id(text)}"]))


class CacheTests(SynchronousTestCase):
    def test_survives_restart(self) -> None:
        """Policies are written to the file and read back by a new cache."""
        path = os.path.join(self.mktemp() + "-cache.json")
        PolicyCache(path).put("Example.test", CachedPolicy(parse_policy(GOOD), "id1", 1000.0))
        again = PolicyCache(path).get("example.test")
        assert again is not None
        self.assertEqual((again.policy_id, again.fetched_at, again.expires_at), ("id1", 1000.0, 87400.0))

    def test_damaged_file(self) -> None:
        """An unreadable file starts an empty cache."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("{not json")
        self.assertIsNone(PolicyCache(path).get("example.test"))

    def test_bounded(self) -> None:
        """At most max_entries domains; the oldest fetch goes first."""
        cache = PolicyCache(None, max_entries=2)
        for i, domain in enumerate(["a.test", "b.test", "c.test"]):
            cache.put(domain, CachedPolicy(parse_policy(GOOD), "x", float(i)))
        self.assertEqual(
            [cache.get(d) is not None for d in ("a.test", "b.test", "c.test")], [False, True, True]
        )


class FakeFetcher:
    def __init__(self) -> None:
        self.texts: dict[str, Any] = {}
        self.fetches: list[str] = []

    def fetch(self, domain: str) -> defer.Deferred[str]:
        self.fetches.append(domain)
        value = self.texts[domain]
        if isinstance(value, Exception):
            return defer.fail(value)
        return defer.succeed(value)


class ManagerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.txt: dict[str, Any] = {"_mta-sts.example.test": [b"v=STSv1; id=one"]}
        self.fetcher = FakeFetcher()
        self.fetcher.texts["example.test"] = GOOD
        self.path = self.mktemp()
        self.sts = MTASTS(self.lookup, self.fetcher, PolicyCache(self.path), self.clock)

    def lookup(self, name: str) -> defer.Deferred[Any]:
        return defer.succeed(self.txt.get(name))

    def policy(self) -> Any:
        return self.successResultOf(self.sts.policy_for("example.test"))

    def test_fetch_then_cache(self) -> None:
        """The first lookup fetches; the next ones use the cache while the id stays."""
        self.assertEqual(self.policy().policy.mode, "enforce")
        self.clock.advance(3600)
        self.assertEqual(self.policy().policy.mode, "enforce")
        self.assertEqual(self.fetcher.fetches, ["example.test"])
        with open(self.path) as f:
            self.assertEqual(json.load(f)["example.test"]["id"], "one")

    def test_new_id_fetches_again(self) -> None:
        """A changed TXT id means a new policy (RFC 8461 section 3.1)."""
        self.policy()
        self.txt["_mta-sts.example.test"] = [b"v=STSv1; id=two"]
        self.fetcher.texts["example.test"] = GOOD.replace("enforce", "testing")
        self.assertEqual(self.policy().policy.mode, "testing")
        self.assertEqual(len(self.fetcher.fetches), 2)

    def test_refresh_before_expiry(self) -> None:
        """Past half its max_age a policy is fetched again; a failed refresh keeps it."""
        self.policy()
        self.clock.advance(86400 / 2 + 1)
        self.fetcher.texts["example.test"] = PolicyError("HTTP status 500", "sts-policy-fetch-error")
        found = self.policy()
        self.assertEqual((found.policy.mode, found.failure), ("enforce", "sts-policy-fetch-error"))
        self.assertEqual(len(self.fetcher.fetches), 2)

    def test_txt_removed_cached_policy_stays_until_expiry(self) -> None:
        """Section 5.1: without the TXT record the cached policy holds until max_age, then none."""
        self.policy()
        del self.txt["_mta-sts.example.test"]
        self.clock.advance(86000)
        self.assertEqual(self.policy().policy.mode, "enforce")
        self.clock.advance(401)
        self.assertIsNone(self.policy().policy)

    def test_failures_without_cache(self) -> None:
        """Section 5: no policy when the fetch fails and nothing is cached; the failure is named."""
        self.fetcher.texts["example.test"] = PolicyError("HTTP status 404", "sts-policy-fetch-error")
        self.assertEqual((self.policy().policy, self.policy().failure), (None, "sts-policy-fetch-error"))
        self.fetcher.texts["example.test"] = "version: STSv9\n"
        self.assertEqual(self.policy().failure, "sts-policy-invalid")
        self.fetcher.texts["example.test"] = ConnectionRefusedError()
        self.assertEqual(self.policy().failure, "sts-policy-fetch-error")

    def test_concurrent_lookups_share_one_fetch(self) -> None:
        """Askers of the same domain at the same time wait for one lookup."""
        waiting: defer.Deferred[Any] = defer.Deferred()
        self.sts.lookup_txt = lambda name: waiting
        first, second = self.sts.policy_for("example.test"), self.sts.policy_for("EXAMPLE.test")
        waiting.callback([b"v=STSv1; id=one"])
        self.assertIs(self.successResultOf(first), self.successResultOf(second))
        self.assertEqual(self.fetcher.fetches, ["example.test"])


class _Text(resource.Resource):
    isLeaf = True

    def __init__(
        self, body: bytes, code: int = 200, ctype: bytes = b"text/plain", hang: bool = False
    ) -> None:
        super().__init__()
        self.body, self.code, self.ctype, self.hang = body, code, ctype, hang

    def render_GET(self, request: Any) -> Any:
        if self.hang:
            return server.NOT_DONE_YET
        request.setResponseCode(self.code)
        if self.code == 301:
            request.setHeader(b"location", b"https://elsewhere.test/")
        request.setHeader(b"content-type", self.ctype)
        return self.body


class FetcherTests(TestCase):
    """The HTTPS fetch against a loopback server with the test certificate."""

    timeout = 30

    def serve(self, leaf: resource.Resource, cert_name: str = "mta-sts.example.test") -> PolicyFetcher:
        ca, cert, key = make_certificate(os.path.abspath(self.mktemp()), cert_name)
        with open(cert, "rb") as f, open(key, "rb") as g:
            options = twisted_ssl.PrivateCertificate.loadPEM(f.read() + b"\n" + g.read()).options()
        root = resource.Resource()
        well_known = resource.Resource()
        root.putChild(b".well-known", well_known)
        well_known.putChild(b"mta-sts.txt", leaf)
        site = server.Site(root)
        port = reactor.listenSSL(0, site, options, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        self.asked: list[str] = []

        def resolve_host(name: str) -> defer.Deferred[str]:
            self.asked.append(name)
            return defer.succeed("127.0.0.1")

        with open(ca, "rb") as f:
            roots = load_trust_root(f.read())
        return PolicyFetcher(reactor, resolve_host, trust_roots=roots, port=port.getHost().port, timeout=2)

    @defer.inlineCallbacks
    def test_fetch(self) -> Any:
        """The policy is fetched from mta-sts.<domain>, resolved through the hook, the name checked."""
        fetcher = self.serve(_Text(GOOD.encode()))
        text = yield fetcher.fetch("example.test")
        self.assertEqual(text, GOOD)
        self.assertEqual(self.asked, ["mta-sts.example.test"])

    @defer.inlineCallbacks
    def test_redirect_not_followed(self) -> Any:
        """Section 3.3: a 3xx is a failure, never followed."""
        fetcher = self.serve(_Text(b"moved elsewhere" * 100, code=301))
        error = yield self.assertFailure(fetcher.fetch("example.test"), PolicyError)
        self.assertIn("301", str(error))

    @defer.inlineCallbacks
    def test_size_limit(self) -> Any:
        """A body over the limit is refused."""
        fetcher = self.serve(_Text(GOOD.encode() + b"#" * 70000))
        fetcher.max_size = 65536
        yield self.assertFailure(fetcher.fetch("example.test"), PolicyError)

    @defer.inlineCallbacks
    def test_content_type(self) -> Any:
        """Section 3.3: the policy is text/plain."""
        fetcher = self.serve(_Text(GOOD.encode(), ctype=b"text/html"))
        yield self.assertFailure(fetcher.fetch("example.test"), PolicyError)

    @defer.inlineCallbacks
    def test_wrong_certificate_name(self) -> Any:
        """A certificate for another name fails the fetch; MTASTS calls it sts-webpki-invalid."""
        fetcher = self.serve(_Text(GOOD.encode()), cert_name="www.example.test")
        sts = MTASTS(lambda name: defer.succeed([b"v=STSv1; id=1"]), fetcher, PolicyCache(None), reactor)
        found = yield sts.policy_for("example.test")
        self.assertEqual((found.policy, found.failure), (None, "sts-webpki-invalid"))

    @defer.inlineCallbacks
    def test_timeout(self) -> Any:
        """A server that never answers: the fetch gives up after its timeout."""
        fetcher = self.serve(_Text(b"", hang=True))
        fetcher.timeout = 0.5
        error = yield self.assertFailure(fetcher.fetch("example.test"), PolicyError)
        self.assertEqual(error.kind, "sts-policy-fetch-error")


class ServeTests(SynchronousTestCase):
    def request(self, host: bytes) -> DummyRequest:
        req = DummyRequest([b""])
        req.requestHeaders.setRawHeaders(b"host", [host])
        return req

    def test_policy_for_our_hosts_only(self) -> None:
        """The policy is served as text/plain to mta-sts.<our domain> (any port); 404 for other hosts."""
        text = policy_text("enforce", ["mx.example.test"], 86400)
        res = PolicyResource(text, ["example.test"])
        req = self.request(b"MTA-STS.example.test:8443")
        self.assertEqual(res.render_GET(req), text.encode())
        self.assertEqual(req.responseHeaders.getRawHeaders(b"content-type"), [b"text/plain; charset=utf-8"])
        req = self.request(b"mta-sts.other.test")
        res.render_GET(req)
        self.assertEqual(req.responseCode, 404)
        self.assertIsInstance(Policy, type)
