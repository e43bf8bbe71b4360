"""Tests for DMARC, txmail.policy.dmarc."""

from __future__ import annotations

import sys
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txmail.dnsdata import Answer, DictAnswers, DNSStatus, Question, run_sync
from txmail.policy import dmarc
from txmail.policy.authres import format_header
from txmail.policy.dmarc import (
    Alignment,
    DMARCRecord,
    DMARCResult,
    LookupStatus,
    MalformedRecord,
    MissingFrom,
    MultipleAuthors,
    MultipleFrom,
    NoAuthorDomain,
    Policy,
    PolicyLookup,
    bad_from_verdict,
    domain_exists,
    evaluate,
    fetch_policy,
    from_domain,
    organizational_domain,
    parse_record,
)


def lookup(table: dict[tuple[str, str], Any], domain: str) -> tuple[PolicyLookup, list[Question]]:
    """Run fetch_policy for *domain* on *table*; the lookup and the questions asked."""
    answers = DictAnswers(table)
    return run_sync(fetch_policy(domain), answers), answers.questions


def found(
    record: str, domain: str = "example.com", *, at_org: bool = False, author: str | None = None
) -> PolicyLookup:
    """A lookup that found *record* at *domain*."""
    author = author or domain
    return PolicyLookup(
        LookupStatus.FOUND,
        author,
        organizational_domain(author),
        parse_record(record.encode()),
        domain,
        at_org,
    )


class OrganizationalDomainTests(SynchronousTestCase):
    def test_public_suffix_list(self) -> None:
        """The organizational domain is the public suffix plus one label, private entries included."""
        cases = {
            "example.com": "example.com",
            "www.example.com": "example.com",
            "a.b.c.example.com": "example.com",
            "example.co.uk": "example.co.uk",
            "www.example.co.uk": "example.co.uk",
            # Private section: github.io is a public suffix.
            "foo.bar.github.io": "bar.github.io",
            "bar.github.io": "bar.github.io",
            # Wildcard and exception rules: *.ck, !www.ck.
            "a.b.ck": "a.b.ck",
            "x.www.ck": "www.ck",
            # An unknown TLD is a public suffix (the "*" rule).
            "a.b.example-unknown-tld": "b.example-unknown-tld",
            # An IDN given as A-labels.
            "mail.xn--bcher-kva.xn--p1ai": "xn--bcher-kva.xn--p1ai",
        }
        for domain, expected in cases.items():
            self.assertEqual(organizational_domain(domain), expected, domain)

    def test_public_suffix_is_its_own(self) -> None:
        """A domain that is itself a public suffix is its own organizational domain."""
        for suffix in ("com", "co.uk", "github.io", "uk"):
            self.assertEqual(organizational_domain(suffix), suffix)

    def test_case_and_final_dot(self) -> None:
        """Case does not matter and a final dot is ignored; the answer is lower case."""
        self.assertEqual(organizational_domain("WWW.Example.CO.UK."), "example.co.uk")

    def test_missing_package(self) -> None:
        """Without publicsuffixlist, an ImportError says to install txmail[policy]."""
        dmarc._psl.cache_clear()
        organizational_domain.cache_clear()
        self.addCleanup(organizational_domain.cache_clear)
        saved = sys.modules.get("publicsuffixlist")
        sys.modules["publicsuffixlist"] = None  # type: ignore[assignment]
        try:
            e = self.assertRaises(ImportError, organizational_domain, "example.com")
            self.assertIn("txmail[policy]", str(e))
        finally:
            if saved is not None:
                sys.modules["publicsuffixlist"] = saved
            else:
                del sys.modules["publicsuffixlist"]
            dmarc._psl.cache_clear()
        self.assertEqual(organizational_domain("www.example.com"), "example.com")

    def test_one_shared_list(self) -> None:
        """The list is built once and shared."""
        self.assertIs(dmarc._psl(), dmarc._psl())


class ParseRecordTests(SynchronousTestCase):
    def test_all_tags(self) -> None:
        """Every tag of RFC 7489 section 6.3, and RFC 9091's np, is read."""
        record = parse_record(
            b"v=DMARC1; p=reject; sp=quarantine; np=reject; adkim=s; aspf=s; pct=25; "
            b"rua=mailto:agg@example.com, mailto:agg@thirdparty.example!10m; ruf=mailto:f@example.com; "
            b"fo=1:d; rf=afrf; ri=3600"
        )
        self.assertEqual(
            record,
            DMARCRecord(
                policy=Policy.REJECT,
                subdomain_policy=Policy.QUARANTINE,
                nonexistent_policy=Policy.REJECT,
                adkim=Alignment.STRICT,
                aspf=Alignment.STRICT,
                pct=25,
                rua=("mailto:agg@example.com", "mailto:agg@thirdparty.example!10m"),
                ruf=("mailto:f@example.com",),
                fo=("1", "d"),
                rf=("afrf",),
                ri=3600,
            ),
        )

    def test_defaults(self) -> None:
        """A minimal record takes the defaults of section 6.3."""
        self.assertEqual(parse_record(b"v=DMARC1; p=none"), DMARCRecord(policy=Policy.NONE))
        record = parse_record(b"v=DMARC1;p=quarantine;")
        self.assertEqual((record.pct, record.adkim, record.aspf, record.ri), (100, "r", "r", 86400))
        self.assertIsNone(record.subdomain_policy)
        self.assertIsNone(record.nonexistent_policy)

    def test_whitespace_and_case(self) -> None:
        """Tag names and keyword values are case-insensitive; white space around them is allowed."""
        record = parse_record(b"  V = DMARC1 ;\tP = Reject ; SP=NONE; ADKIM = S ;")
        self.assertEqual((record.policy, record.subdomain_policy, record.adkim), ("reject", "none", "s"))

    def test_p_anywhere_after_v(self) -> None:
        """p need not be the second tag, only after v."""
        self.assertEqual(parse_record(b"v=DMARC1; rua=mailto:a@example.com; p=reject").policy, Policy.REJECT)

    def test_unknown_tags_ignored(self) -> None:
        """Unknown tags are ignored (section 6.3)."""
        record = parse_record(b"v=DMARC1; p=reject; t=y; psd=n; x_new=1")
        self.assertEqual(record.policy, Policy.REJECT)
        self.assertEqual(record.ignored, ())

    def test_not_dmarc(self) -> None:
        """A record that does not start with v=DMARC1 is not DMARC."""
        for txt in (
            b"v=spf1 -all",
            b"p=reject; v=DMARC1",
            b"v=DMARC2; p=reject",
            b"v=dmarc1; p=reject",
            b"v=DMARC1x; p=reject",
            b"",
        ):
            self.assertRaises(MalformedRecord, parse_record, txt)
            self.assertFalse(dmarc.is_dmarc_record(txt), txt)
        self.assertTrue(dmarc.is_dmarc_record(b"v=DMARC1"))

    def test_missing_policy(self) -> None:
        """Without a valid p (and without rua) the record is malformed."""
        for txt in (
            b"v=DMARC1",
            b"v=DMARC1; sp=reject",
            b"v=DMARC1; p=bogus",
            b"v=DMARC1; p=",
            b"v=DMARC1; p",
        ):
            self.assertRaises(MalformedRecord, parse_record, txt)

    def test_rua_makes_policy_none(self) -> None:
        """A record with an invalid or missing p, or invalid sp, but a valid rua is read as p=none."""
        for txt in (
            b"v=DMARC1; rua=mailto:r@example.com",
            b"v=DMARC1; p=bogus; rua=mailto:r@example.com",
            b"v=DMARC1; p=reject; sp=bogus; np=reject; rua=mailto:r@example.com",
        ):
            record = parse_record(txt)
            self.assertEqual(record.policy, Policy.NONE, txt)
            self.assertIsNone(record.subdomain_policy)
            self.assertIsNone(record.nonexistent_policy)
            self.assertTrue(record.policy_assumed)
            self.assertEqual(record.rua, ("mailto:r@example.com",))
        self.assertRaises(MalformedRecord, parse_record, b"v=DMARC1; p=bogus; rua=not a uri")
        self.assertRaises(MalformedRecord, parse_record, b"v=DMARC1; p=reject; sp=bogus")

    def test_invalid_values_take_defaults(self) -> None:
        """Invalid values of other tags are replaced by their defaults and named."""
        record = parse_record(
            b"v=DMARC1; p=reject; pct=101; adkim=x; aspf=; fo=2; ri=soon; np=maybe; ruf=nope; junk"
        )
        self.assertEqual(record.policy, Policy.REJECT)
        self.assertEqual(
            (record.pct, record.adkim, record.aspf, record.fo, record.ri), (100, "r", "r", ("0",), 86400)
        )
        self.assertIsNone(record.nonexistent_policy)
        self.assertEqual(sorted(record.ignored), ["adkim", "aspf", "fo", "junk", "np", "pct", "ri", "ruf"])
        self.assertEqual(parse_record(b"v=DMARC1; p=reject; pct=-1").pct, 100)
        self.assertEqual(parse_record(b"v=DMARC1; p=reject; pct=0").pct, 0)

    def test_duplicate_tags(self) -> None:
        """A tag given twice makes the record invalid (RFC 6376 section 3.2 tag lists)."""
        for txt in (
            b"v=DMARC1; p=none; p=reject",
            b"v=DMARC1; p=none; PCT=5; pct=5",
            b"v=DMARC1; v=DMARC1; p=none",
        ):
            self.assertRaises(MalformedRecord, parse_record, txt)


class FetchPolicyTests(SynchronousTestCase):
    def test_at_from_domain(self) -> None:
        """A record at _dmarc.<from domain> is used; the organizational domain is not asked."""
        result, questions = lookup(
            {("_dmarc.news.example.com", "TXT"): ["v=DMARC1; p=reject"]}, "News.Example.com"
        )
        self.assertEqual(result.status, LookupStatus.FOUND)
        self.assertEqual((result.domain, result.at_org_domain), ("news.example.com", False))
        self.assertEqual((result.from_domain, result.org_domain), ("news.example.com", "example.com"))
        assert result.record is not None
        self.assertEqual(result.record.policy, Policy.REJECT)
        self.assertEqual(questions, [Question("_dmarc.news.example.com", "TXT")])

    def test_org_domain_fallback(self) -> None:
        """Without a record at the from domain, the organizational domain's record is used."""
        result, questions = lookup(
            {("_dmarc.example.co.uk", "TXT"): ["v=DMARC1; p=quarantine"]}, "a.b.example.co.uk"
        )
        self.assertEqual(result.status, LookupStatus.FOUND)
        self.assertEqual((result.domain, result.at_org_domain), ("example.co.uk", True))
        self.assertEqual(
            questions, [Question("_dmarc.a.b.example.co.uk", "TXT"), Question("_dmarc.example.co.uk", "TXT")]
        )

    def test_private_suffix_fallback(self) -> None:
        """Under a private suffix (github.io) the fallback stops at the user's domain."""
        result, questions = lookup(
            {("_dmarc.github.io", "TXT"): ["v=DMARC1; p=reject"]}, "www.someone.github.io"
        )
        self.assertEqual(result.status, LookupStatus.NONE)
        self.assertEqual(questions[-1], Question("_dmarc.someone.github.io", "TXT"))

    def test_org_domain_asked_once(self) -> None:
        """When the from domain is its organizational domain, one question is asked."""
        result, questions = lookup({}, "example.com")
        self.assertEqual(result.status, LookupStatus.NONE)
        self.assertEqual(questions, [Question("_dmarc.example.com", "TXT")])

    def test_other_records_discarded(self) -> None:
        """TXT records that do not start with v=DMARC1 are discarded before counting."""
        result, _ = lookup(
            {
                ("_dmarc.example.com", "TXT"): [
                    "v=spf1 -all",
                    "google-site-verification=x",
                    "v=DMARC1; p=reject",
                ]
            },
            "example.com",
        )
        self.assertEqual(result.status, LookupStatus.FOUND)
        result, questions = lookup(
            {
                ("_dmarc.sub.example.com", "TXT"): ["v=spf1 -all"],
                ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none"],
            },
            "sub.example.com",
        )
        self.assertEqual((result.status, result.domain), (LookupStatus.FOUND, "example.com"))
        self.assertEqual(len(questions), 2)

    def test_multiple_records(self) -> None:
        """Several DMARC records mean no policy, with no fallback to the organizational domain."""
        result, questions = lookup(
            {
                ("_dmarc.sub.example.com", "TXT"): ["v=DMARC1; p=none", "v=DMARC1; p=reject"],
                ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject"],
            },
            "sub.example.com",
        )
        self.assertEqual((result.status, result.domain), (LookupStatus.MULTIPLE, "sub.example.com"))
        self.assertEqual(len(questions), 1)
        result, _ = lookup(
            {("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none", "v=DMARC1; p=none"]}, "x.example.com"
        )
        self.assertEqual((result.status, result.at_org_domain), (LookupStatus.MULTIPLE, True))

    def test_malformed_record(self) -> None:
        """A v=DMARC1 record that is not valid is MALFORMED, with no fallback."""
        result, questions = lookup(
            {
                ("_dmarc.sub.example.com", "TXT"): ["v=DMARC1; p=sometimes"],
                ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=reject"],
            },
            "sub.example.com",
        )
        self.assertEqual(result.status, LookupStatus.MALFORMED)
        self.assertIn("p=", result.error)
        self.assertEqual(len(questions), 1)

    def test_dns_failure(self) -> None:
        """A DNS failure at either name is a temporary error."""
        result, questions = lookup({("_dmarc.sub.example.com", "TXT"): DNSStatus.ERROR}, "sub.example.com")
        self.assertEqual(result.status, LookupStatus.TEMPERROR)
        self.assertEqual(len(questions), 1)
        result, _ = lookup(
            {("_dmarc.example.com", "TXT"): Answer(DNSStatus.ERROR, error="timeout")}, "sub.example.com"
        )
        self.assertEqual((result.status, result.error), (LookupStatus.TEMPERROR, "timeout"))

    def test_nxdomain_falls_back(self) -> None:
        """NXDOMAIN and NODATA at the from domain both fall back to the organizational domain."""
        for answer in (DNSStatus.NXDOMAIN, DNSStatus.NODATA):
            result, _ = lookup(
                {
                    ("_dmarc.sub.example.com", "TXT"): answer,
                    ("_dmarc.example.com", "TXT"): ["v=DMARC1; p=none"],
                },
                "sub.example.com",
            )
            self.assertEqual(result.status, LookupStatus.FOUND)


class AlignmentTests(SynchronousTestCase):
    #: (mode, author domain, authenticated domain, aligned)
    TABLE = [
        ("r", "example.com", "example.com", True),
        ("r", "news.example.com", "example.com", True),
        ("r", "example.com", "mail.example.com", True),
        ("r", "a.example.com", "b.example.com", True),
        ("r", "Example.COM", "example.com.", True),
        ("r", "example.com", "example.net", False),
        ("r", "example.com", "com", False),
        ("r", "example.co.uk", "other.co.uk", False),
        ("r", "example.co.uk", "co.uk", False),
        ("r", "a.someone.github.io", "someone.github.io", True),
        ("r", "someone.github.io", "other.github.io", False),
        ("r", "example.com", "", False),
        ("s", "example.com", "example.com", True),
        ("s", "example.com", "EXAMPLE.com.", True),
        ("s", "news.example.com", "example.com", False),
        ("s", "example.com", "mail.example.com", False),
    ]

    def test_spf_alignment(self) -> None:
        """An SPF pass counts when its domain is aligned in the record's aspf mode."""
        for mode, author, domain, aligned in self.TABLE:
            verdict = evaluate(
                author,
                found(f"v=DMARC1; p=reject; aspf={mode}", author.lower()),
                spf=("pass", domain),
                dkim=[],
                pct_roll=0,
            )
            self.assertEqual(verdict.spf_aligned, aligned, (mode, author, domain))
            self.assertEqual(verdict.result, "pass" if aligned else "fail")

    def test_dkim_alignment(self) -> None:
        """A DKIM pass counts when its d= domain is aligned in the record's adkim mode."""
        for mode, author, domain, aligned in self.TABLE:
            verdict = evaluate(
                author,
                found(f"v=DMARC1; p=reject; adkim={mode}", author.lower()),
                spf=None,
                dkim=[("pass", domain)],
                pct_roll=0,
            )
            self.assertEqual(verdict.dkim_aligned, aligned, (mode, author, domain))

    def test_modes_independent(self) -> None:
        """adkim and aspf are applied each to its own identifier."""
        record = found("v=DMARC1; p=reject; adkim=s; aspf=r", "example.com")
        relaxed_only = [("pass", "mail.example.com")]
        self.assertEqual(
            evaluate("example.com", record, spf=None, dkim=relaxed_only, pct_roll=0).result, DMARCResult.FAIL
        )
        self.assertEqual(
            evaluate("example.com", record, spf=("pass", "mail.example.com"), dkim=[], pct_roll=0).result,
            DMARCResult.PASS,
        )

    def test_only_pass_counts(self) -> None:
        """Aligned identifiers count only with a pass result; any one DKIM pass is enough."""
        record = found("v=DMARC1; p=reject", "example.com")
        for spf in (("fail", "example.com"), ("softfail", "example.com"), ("neutral", "example.com"), None):
            verdict = evaluate(
                "example.com",
                record,
                spf=spf,
                dkim=[("fail", "example.com"), ("temperror", "example.com"), ("pass", "other.example")],
                pct_roll=0,
            )
            self.assertEqual(verdict.result, DMARCResult.FAIL)
        verdict = evaluate(
            "example.com",
            record,
            spf=("fail", "example.com"),
            dkim=[("fail", "example.com"), ("PASS", "example.com")],
            pct_roll=0,
        )
        self.assertEqual((verdict.result, verdict.dkim_aligned, verdict.spf_aligned), ("pass", True, False))


class PolicyTests(SynchronousTestCase):
    def verdict(self, record: str, author: str = "example.com", **kwargs: Any) -> dmarc.DMARCVerdict:
        """The verdict on a failing message from *author* with *record* at example.com."""
        at_org = author != "example.com"
        return evaluate(
            author,
            found(record, "example.com", at_org=at_org, author=author),
            spf=("fail", author),
            dkim=[],
            pct_roll=kwargs.pop("pct_roll", 0),
            **kwargs,
        )

    def test_each_policy(self) -> None:
        """A failing message gets the requested policy as its disposition."""
        for p in ("none", "quarantine", "reject"):
            verdict = self.verdict(f"v=DMARC1; p={p}")
            self.assertEqual((verdict.result, verdict.disposition, verdict.policy), ("fail", p, p))

    def test_pass_is_delivered(self) -> None:
        """A passing message has disposition none whatever the policy."""
        verdict = evaluate(
            "example.com", found("v=DMARC1; p=reject"), spf=("pass", "example.com"), dkim=[], pct_roll=99
        )
        self.assertEqual((verdict.result, verdict.disposition, verdict.policy), ("pass", "none", "reject"))
        self.assertEqual(verdict.reason, "")

    def test_subdomain_policy(self) -> None:
        """sp applies to a subdomain whose record came from the organizational domain; p to the domain."""
        record = "v=DMARC1; p=reject; sp=quarantine"
        self.assertEqual(self.verdict(record, "news.example.com").disposition, Policy.QUARANTINE)
        self.assertEqual(self.verdict(record).disposition, Policy.REJECT)
        self.assertEqual(self.verdict("v=DMARC1; p=reject", "news.example.com").disposition, Policy.REJECT)

    def test_subdomain_own_record(self) -> None:
        """A subdomain with its own record gets that record's p, not its sp."""
        verdict = evaluate(
            "news.example.com",
            found("v=DMARC1; p=quarantine; sp=none", "news.example.com"),
            spf=None,
            dkim=[],
            pct_roll=0,
        )
        self.assertEqual(verdict.disposition, Policy.QUARANTINE)

    def test_nonexistent_policy(self) -> None:
        """np applies to a subdomain known not to exist; else sp, then p."""
        record = "v=DMARC1; p=none; sp=quarantine; np=reject"
        sub = "ghost.example.com"
        self.assertEqual(self.verdict(record, sub, from_domain_exists=False).disposition, Policy.REJECT)
        self.assertEqual(self.verdict(record, sub, from_domain_exists=True).disposition, Policy.QUARANTINE)
        self.assertEqual(self.verdict(record, sub, from_domain_exists=None).disposition, Policy.QUARANTINE)
        self.assertEqual(
            self.verdict("v=DMARC1; p=none; sp=quarantine", sub, from_domain_exists=False).disposition,
            Policy.QUARANTINE,
        )
        self.assertEqual(
            self.verdict("v=DMARC1; p=reject", sub, from_domain_exists=False).disposition, Policy.REJECT
        )
        # Not for the organizational domain itself (RFC 9091 section 3.2: subdomains only).
        self.assertEqual(self.verdict(record, from_domain_exists=False).disposition, Policy.NONE)

    def test_pct_sampling(self) -> None:
        """Inside the pct sample the policy is enacted; outside it drops one step (section 6.6.4)."""
        inside = self.verdict("v=DMARC1; p=reject; pct=50", pct_roll=49)
        self.assertEqual((inside.disposition, inside.sampled_out), (Policy.REJECT, False))
        outside = self.verdict("v=DMARC1; p=reject; pct=50", pct_roll=50)
        self.assertEqual((outside.disposition, outside.sampled_out), (Policy.QUARANTINE, True))
        self.assertEqual(outside.policy, Policy.REJECT)
        outside = self.verdict("v=DMARC1; p=quarantine; pct=50", pct_roll=99)
        self.assertEqual((outside.disposition, outside.sampled_out), (Policy.NONE, True))
        inside = self.verdict("v=DMARC1; p=quarantine; pct=50", pct_roll=0)
        self.assertEqual(inside.disposition, Policy.QUARANTINE)

    def test_pct_bounds(self) -> None:
        """pct=100 always enacts, pct=0 never does, and p=none is never sampled."""
        for roll in (0, 50, 99):
            self.assertEqual(self.verdict("v=DMARC1; p=reject", pct_roll=roll).disposition, Policy.REJECT)
            self.assertEqual(
                self.verdict("v=DMARC1; p=reject; pct=0", pct_roll=roll).disposition, "quarantine"
            )
            none = self.verdict("v=DMARC1; p=none; pct=0", pct_roll=roll)
            self.assertEqual((none.disposition, none.sampled_out), (Policy.NONE, False))

    def test_pct_roll_checked(self) -> None:
        """A pct_roll outside [0, 100) is a programming error."""
        for roll in (-1, 100, 1000):
            self.assertRaises(ValueError, self.verdict, "v=DMARC1; p=reject", pct_roll=roll)


class ResultTests(SynchronousTestCase):
    def evaluate(self, result: PolicyLookup) -> dmarc.DMARCVerdict:
        return evaluate("example.com", result, spf=("fail", "example.com"), dkim=[], pct_roll=0)

    def test_no_policy(self) -> None:
        """Without a record, or with several, the result is none and the message is delivered."""
        for status in (LookupStatus.NONE, LookupStatus.MULTIPLE):
            verdict = self.evaluate(PolicyLookup(status, "example.com", "example.com"))
            self.assertEqual((verdict.result, verdict.disposition), ("none", "none"))
            self.assertIsNone(verdict.policy)

    def test_temperror(self) -> None:
        """A DNS failure gives temperror, with no disposition."""
        result, _ = lookup({("_dmarc.example.com", "TXT"): DNSStatus.ERROR}, "example.com")
        verdict = self.evaluate(result)
        self.assertEqual((verdict.result, verdict.disposition), ("temperror", "none"))

    def test_permerror(self) -> None:
        """A malformed record gives permerror, with no disposition."""
        result, _ = lookup({("_dmarc.example.com", "TXT"): ["v=DMARC1; p=maybe"]}, "example.com")
        verdict = self.evaluate(result)
        self.assertEqual((verdict.result, verdict.disposition), ("permerror", "none"))
        self.assertIn("malformed", verdict.reason)

    def test_bad_from(self) -> None:
        """An unusable From gives permerror, rejected unless the caller asks otherwise."""
        error = MultipleFrom("2 From fields")
        verdict = bad_from_verdict(error)
        self.assertEqual((verdict.result, verdict.disposition), ("permerror", "reject"))
        self.assertEqual(bad_from_verdict(error, disposition=Policy.NONE).disposition, "none")
        self.assertIsNone(verdict.from_domain)

    def test_authentication_results(self) -> None:
        """The verdict gives its Authentication-Results entry: result, p/sp/dis, header.from, policy.dmarc."""
        verdict = evaluate(
            "news.example.com",
            found(
                "v=DMARC1; p=reject; sp=quarantine; pct=0",
                "example.com",
                at_org=True,
                author="news.example.com",
            ),
            spf=None,
            dkim=[],
            pct_roll=0,
        )
        self.assertEqual(
            verdict.properties, (("header", "from", "news.example.com"), ("policy", "dmarc", "quarantine"))
        )
        self.assertEqual(
            format_header("mx.example.org", [verdict.auth_result()]),
            b"Authentication-Results: mx.example.org; dmarc=fail\r\n"
            b"    (p=reject sp=quarantine dis=none) header.from=news.example.com\r\n"
            b"    policy.dmarc=quarantine\r\n",
        )
        none = self.evaluate(PolicyLookup(LookupStatus.NONE, "example.com", "example.com"))
        self.assertEqual(
            format_header("mx", [none.auth_result()]),
            b"Authentication-Results: mx; dmarc=none header.from=example.com\r\n",
        )


class FromDomainTests(SynchronousTestCase):
    def test_single_address(self) -> None:
        """The domain of the one From address, lower case, in its usual forms."""
        for header in (
            b"From: user@Example.COM\r\n",
            b'From: "Doe, John" <john@example.com>\r\nTo: x@y.example\r\n',
            b"From: John (comment) <john@example.com> (the boss)\r\n",
            b"from :john@example.com.\r\n",
            b"From:\r\n  John Doe\r\n  <john@example.com>\r\n",
            b"From: john@example.com\r\nSubject: x\r\n\r\nFrom: other@evil.example\r\n",
            b"Received: x\r\nFrom: <@route.example:john@example.com>\r\n",
            b"From: team: john@example.com;\r\n",
        ):
            self.assertEqual(from_domain(header), "example.com", header)

    def test_idn(self) -> None:
        """A U-label domain is converted to A-labels (section 6.6.1)."""
        self.assertEqual(from_domain("From: jörg@Bücher.example\r\n".encode()), "xn--bcher-kva.example")

    def test_no_from(self) -> None:
        """No From field at all is MissingFrom."""
        for header in (b"To: a@example.com\r\n", b"", b"Resent-From: a@example.com\r\n"):
            self.assertRaises(MissingFrom, from_domain, header)

    def test_multiple_from_fields(self) -> None:
        """Two From fields are MultipleFrom, even with the same address."""
        for header in (
            b"From: a@example.com\r\nFrom: a@example.com\r\n",
            b"From: a@example.com\r\nSubject: x\r\nFROM : b@evil.example\r\n",
        ):
            self.assertRaises(MultipleFrom, from_domain, header)

    def test_multiple_addresses(self) -> None:
        """Addresses in different domains are MultipleAuthors; in one domain they are that domain."""
        self.assertRaises(MultipleAuthors, from_domain, b"From: a@example.com, b@example.net\r\n")
        self.assertRaises(MultipleAuthors, from_domain, b"From: g: a@example.com;, b@evil.example\r\n")
        self.assertEqual(from_domain(b"From: a@example.com, B <b@EXAMPLE.com>\r\n"), "example.com")

    def test_no_domain(self) -> None:
        """A From without an address, or whose address has no usable domain, is NoAuthorDomain."""
        for header in (
            b"From: \r\n",
            b"From: undisclosed-recipients:;\r\n",
            b"From: John Doe\r\n",
            b"From: john@\r\n",
            b"From: john@[192.0.2.1]\r\n",
            b"From: john@exa_mple.com\r\n",
            b"From: john@-example.com\r\n",
            b"From: john@example..com\r\n",
            b"From: john@\xff\xfe.example\r\n",
            b"From: a@example.com, b@\r\n",
            b"From: a@" + "\u00e9".encode() * 200_000 + b".example\r\n",  # refused before IDNA
        ):
            self.assertRaises(NoAuthorDomain, from_domain, header)
        longest = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters: a domain name still
        self.assertEqual(from_domain(f"From: a@{longest}\r\n".encode()), longest)
        self.assertRaises(NoAuthorDomain, from_domain, f"From: a@{longest}b\r\n".encode())


class DomainExistsTests(SynchronousTestCase):
    def exists(self, table: dict[tuple[str, str], Any]) -> tuple[bool | None, list[Question]]:
        answers = DictAnswers(table)
        return run_sync(domain_exists("ghost.example.com"), answers), answers.questions

    def test_exists(self) -> None:
        """A record of A, AAAA or MX makes the domain exist; asking stops there."""
        result, questions = self.exists({("ghost.example.com", "A"): ["192.0.2.1"]})
        self.assertEqual((result, len(questions)), (True, 1))
        result, questions = self.exists({("ghost.example.com", "MX"): [(10, "mx.example.com")]})
        self.assertEqual((result, len(questions)), (True, 3))

    def test_does_not_exist(self) -> None:
        """NXDOMAIN or NODATA for all three types: the domain does not exist (RFC 9091 section 2)."""
        self.assertEqual(self.exists({})[0], False)
        self.assertEqual(self.exists({("ghost.example.com", "TXT"): ["x"]})[0], False)

    def test_unknown(self) -> None:
        """A DNS failure with no record found leaves it unknown."""
        self.assertIsNone(self.exists({("ghost.example.com", "AAAA"): DNSStatus.ERROR})[0])
        result, _ = self.exists(
            {("ghost.example.com", "A"): DNSStatus.ERROR, ("ghost.example.com", "MX"): [(0, "x")]}
        )
        self.assertTrue(result)
