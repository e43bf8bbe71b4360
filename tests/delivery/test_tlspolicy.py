"""Tests for :mod:`txmail.delivery.tlspolicy`: how DANE, MTA-STS and REQUIRETLS combine per MX host."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from txmail.delivery.mtasts import Lookup, parse_policy
from txmail.delivery.mx import Destination, LookupResult
from txmail.delivery.tlspolicy import HostPlan, TransportSecurity, failure_of
from txmail.smtp.client import TransactionResult
from txmail.smtp.codes import Reply
from txmail.tlsverify import TLSFailure

ENFORCE = Lookup(parse_policy("version: STSv1\nmode: enforce\nmx: mx.remote.test\nmax_age: 600\n"))
TESTING = Lookup(parse_policy("version: STSv1\nmode: testing\nmx: mx.remote.test\nmax_age: 600\n"))
NONE = Lookup(None)
MX = Destination("mx.remote.test", "192.0.2.1", 10, True, True)
OTHER = Destination("mx.other.test", "192.0.2.2", 20, True, True)
TLSA_OK = SimpleNamespace(usage=3, selector=1, mtype=1, cert=b"\xab" * 32)
TLSA_PKIX = SimpleNamespace(usage=1, selector=1, mtype=1, cert=b"\xab" * 32)


class Reports:
    def __init__(self) -> None:
        self.records: list[tuple[Any, ...]] = []

    def record(self, domain: str, ptype: str, strings: Any, mx: Any, failure: Any, **kw: Any) -> None:
        self.records.append((domain, ptype, mx, failure.result_type if failure else None))


class PlanTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.answers: dict[str, LookupResult] = {}
        self.reports = Reports()

    def lookup(self, name: str, rdtype: str) -> defer.Deferred[LookupResult]:
        return defer.succeed(self.answers.get(name, LookupResult("nxdomain")))

    def plan(self, sts: Lookup = NONE, dest: Destination = MX, dane: bool = True, **kw: Any) -> HostPlan:
        security = TransportSecurity(self.lookup, dane=dane, reports=self.reports, clock=task.Clock())
        kw.setdefault("default_policy", "opportunistic")
        return self.successResultOf(
            defer.Deferred.fromCoroutine(security.plan("remote.test", sts, dest, **kw))
        )

    def test_no_policy(self) -> None:
        """Without TLSA records or a policy the configured TLS policy applies, unchanged."""
        plan = self.plan()
        self.assertEqual((plan.tls_policy, plan.context, plan.policy_type), ("opportunistic", None, None))

    def test_dane_usable(self) -> None:
        """Secure usable TLSA records: STARTTLS required, a DANE check that fails closed."""
        self.answers["_25._tcp.mx.remote.test"] = LookupResult("ok", (TLSA_OK,), True)
        plan = self.plan(ENFORCE)
        assert plan.context is not None
        self.assertEqual((plan.tls_policy, plan.context.mode, plan.context.enforce), ("verify", "dane", True))
        self.assertEqual(plan.policy_type, "tlsa")  # DANE wins over MTA-STS

    def test_dane_insecure_or_off(self) -> None:
        """TLSA records without the AD bit, on an insecure host, or with DANE off are ignored."""
        self.answers["_25._tcp.mx.remote.test"] = LookupResult("ok", (TLSA_OK,), False)
        self.assertIsNone(self.plan().policy_type)
        self.answers["_25._tcp.mx.remote.test"] = LookupResult("ok", (TLSA_OK,), True)
        self.assertIsNone(
            self.plan(dest=Destination("mx.remote.test", "192.0.2.1", 10, True, False)).policy_type
        )
        self.assertIsNone(self.plan(dane=False).policy_type)

    def test_dane_unusable_records(self) -> None:
        """Only PKIX usages: TLS still required but not authenticated (RFC 7672 section 2.2), WebPKI for REQUIRETLS."""
        self.answers["_25._tcp.mx.remote.test"] = LookupResult("ok", (TLSA_PKIX,), True)
        plan = self.plan()
        assert plan.context is not None and plan.failure is not None
        self.assertEqual(
            (plan.tls_policy, plan.context.mode, plan.failure.result_type),
            ("verify", "encrypt", "tlsa-invalid"),
        )
        self.assertEqual(self.plan(require_tls=True).context.mode, "pkix")  # type: ignore[union-attr]

    def test_dane_lookup_failure(self) -> None:
        """A failed TLSA lookup refuses the host, unless TLS-Required: No."""
        self.answers["_25._tcp.mx.remote.test"] = LookupResult("temp", error="SERVFAIL")
        self.assertEqual(self.plan().refused.result_type, "dnssec-invalid")  # type: ignore[union-attr]
        relaxed = self.plan(ignore_policies=True)
        self.assertIsNone(relaxed.refused)
        self.assertEqual(relaxed.failure.result_type, "dnssec-invalid")  # type: ignore[union-attr]

    def test_sts_enforce(self) -> None:
        """Enforce: a listed MX needs WebPKI-valid TLS; an unlisted one is refused."""
        plan = self.plan(ENFORCE, dane=False)
        assert plan.context is not None
        self.assertEqual((plan.tls_policy, plan.context.mode, plan.context.enforce), ("verify", "pkix", True))
        self.assertEqual(self.plan(ENFORCE, OTHER).refused.result_type, "validation-failure")  # type: ignore[union-attr]

    def test_sts_testing(self) -> None:
        """Testing: the usual policy, the check made but not enforced; an unlisted MX is used and reported."""
        plan = self.plan(TESTING)
        assert plan.context is not None
        self.assertEqual((plan.tls_policy, plan.context.enforce), ("opportunistic", False))
        other = self.plan(TESTING, OTHER)
        self.assertIsNone(other.refused)
        self.assertEqual(other.failure.result_type, "validation-failure")  # type: ignore[union-attr]
        self.assertTrue(self.plan(TESTING, default_policy="verify").context.enforce)  # type: ignore[union-attr]

    def test_tls_required_no(self) -> None:
        """TLS-Required: No turns an enforce policy into a report-only one."""
        plan = self.plan(ENFORCE, OTHER, ignore_policies=True)
        self.assertIsNone(plan.refused)
        self.assertEqual(plan.tls_policy, "opportunistic")

    def test_requiretls_without_policy(self) -> None:
        """REQUIRETLS alone: STARTTLS with a WebPKI-valid certificate for the MX name."""
        plan = self.plan(require_tls=True)
        assert plan.context is not None
        self.assertEqual(
            (plan.tls_policy, plan.context.mode, plan.context.hostname), ("verify", "pkix", "mx.remote.test")
        )

    def test_contexts_are_shared(self) -> None:
        """One context per host and check, so kept connections can be reused."""
        security = TransportSecurity(self.lookup, clock=task.Clock())
        first = self.successResultOf(
            defer.Deferred.fromCoroutine(
                security.plan("remote.test", ENFORCE, MX, default_policy="opportunistic")
            )
        )
        second = self.successResultOf(
            defer.Deferred.fromCoroutine(
                security.plan("remote.test", ENFORCE, MX, default_policy="opportunistic")
            )
        )
        self.assertIs(first.context, second.context)


def result(error: str | None = None, tls: bool = True, greeted: bool = True) -> TransactionResult:
    return TransactionResult(
        greeting_reply=Reply(220, "", "hi") if greeted else None,
        per_recipient={},
        message_reply=None,
        error=error,
        temporary=True,
        tls=tls,
    )


class FailureOfTests(SynchronousTestCase):
    def test_outcomes(self) -> None:
        """Each way an attempt ends maps to a TLS-RPT outcome, or to none when nothing was learnt."""
        plan = HostPlan("verify", policy_type="sts")
        self.assertIsNone(failure_of(plan, result()))
        self.assertEqual(
            failure_of(
                plan, result("TLS required: remote server does not offer STARTTLS", tls=False)
            ).result_type,  # type: ignore[union-attr]
            "starttls-not-supported",
        )
        self.assertEqual(
            failure_of(plan, result("TLS failure: certificate-expired: old", tls=False)).result_type,  # type: ignore[union-attr]
            "certificate-expired",
        )
        self.assertEqual(
            failure_of(plan, result("TLS failure: [('SSL routines', '', 'bad')]", tls=False)).result_type,  # type: ignore[union-attr]
            "validation-failure",
        )
        self.assertIs(failure_of(plan, result("connection refused", tls=False, greeted=False)), False)
        refused = HostPlan("verify", refused=TLSFailure("dnssec-invalid", "x"), policy_type="tlsa")
        self.assertEqual(failure_of(refused, None).result_type, "dnssec-invalid")  # type: ignore[union-attr]

    def test_record_only_under_a_policy(self) -> None:
        """Attempts without a policy are not counted; those under one are."""
        reports = Reports()
        security = TransportSecurity(
            lambda n, t: defer.succeed(LookupResult("nxdomain")), reports=reports, clock=task.Clock()
        )
        security.record("remote.test", HostPlan("opportunistic"), MX, result())
        security.record("remote.test", HostPlan("verify", policy_type="sts"), MX, result())
        security.record(
            "remote.test",
            HostPlan("verify", policy_type="tlsa"),
            MX,
            result("TLS failure: validation-failure: no"),
        )
        self.assertEqual(
            reports.records,
            [
                ("remote.test", "sts", None, None),
                ("remote.test", "tlsa", "mx.remote.test", "validation-failure"),
            ],
        )
