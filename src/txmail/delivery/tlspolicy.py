"""
Which TLS one delivery attempt needs: DANE (RFC 7672), MTA-STS (RFC 8461)
and REQUIRETLS (RFC 8689) combined into one :class:`HostPlan` per MX host,
and the outcome reported to TLS-RPT (RFC 8460).

Theory of operation
===================

:class:`TransportSecurity` is asked by the queue runner, once per
recipient domain (:meth:`~TransportSecurity.domain_policy`: the MTA-STS
policy) and once per MX host tried (:meth:`~TransportSecurity.plan`):

1. **DANE** (with ``dane`` on, and only for a host whose address records
   came with the AD bit, RFC 7672 section 2.2.2): the TLSA RRset of
   ``_25._tcp.<host>``.  Authenticated (AD) and holding usable records
   (DANE-TA, DANE-EE, section 3.1.3): STARTTLS is required and the
   certificate must match (fail closed: the attempt is deferred).
   Authenticated but none usable: STARTTLS is required, without
   authentication (section 2.2).  The lookup failed (SERVFAIL, which is
   also what a validating resolver makes of a bogus answer): the host is
   not used (section 2.2: "the SMTP client MUST NOT deliver").  An answer
   without the AD bit is ignored, as Postfix ignores it.  The MX RRset's own
   AD status (:attr:`Destination.mx_secure`) is not required: an insecure
   MX RRset only means the MX host name itself is not authenticated, and
   the host's own secure TLSA records still protect the connection to it.
2. **MTA-STS**, when DANE did not apply (RFC 8461 section 2: DANE takes
   precedence): ``enforce``: an MX host not matching the policy's ``mx``
   patterns is not used, and a matching one needs STARTTLS and a
   certificate valid (WebPKI) for its name; ``testing``: delivery goes on
   as without a policy, but the checks are made and reported.
3. **REQUIRETLS** (RFC 8689 section 4.2.1): the message needs STARTTLS and
   a certificate valid by DANE or WebPKI whatever the policies say; the
   SMTP client checks the next hop's REQUIRETLS keyword.
4. **TLS-Required: No** (RFC 8689 section 5, for a message without
   REQUIRETLS): DANE and MTA-STS failures are ignored; the checks are
   still made and reported.

A refused host is a temporary failure of that host: the runner tries the
next and defers the recipients if none is left, so mail is bounced only
when its queue lifetime ends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.logger import Logger

from txmail.delivery.mtasts import MTASTS, Lookup, Policy
from txmail.smtp.client import TLSPolicy
from txmail.tlsverify import TLSA, CheckedTLS, TLSFailure, usable_tlsa

__all__ = ["HostPlan", "TransportSecurity", "failure_of"]


@dataclass
class HostPlan:
    """
    How to talk to one MX host.

    Attributes:
        tls_policy: the SMTP client's policy (``"verify"``: STARTTLS required).
        context: the TLS connection creator (a :class:`CheckedTLS`) or
            ``None`` for the runner's default.
        refused: do not connect: why (a :class:`TLSFailure`).
        policy_type: ``"tlsa"``, ``"sts"`` or ``None`` (no policy, for TLS-RPT).
        policy_strings: the policy as TLS-RPT reports it.
        failure: a failure known before connecting, to report even though
            the host is used (MX not in a ``testing`` policy).
    """

    tls_policy: TLSPolicy
    context: CheckedTLS | None = None
    refused: TLSFailure | None = None
    policy_type: str | None = None
    policy_strings: list[str] = field(default_factory=list)
    failure: TLSFailure | None = None


def failure_of(plan: HostPlan, result: Any) -> TLSFailure | bool | None:
    """
    The TLS outcome of an attempt made under *plan*: ``None`` (TLS went as
    the policy wants), a :class:`TLSFailure`, or ``False`` when the attempt
    says nothing about TLS (no connection at all).
    """
    if plan.refused is not None:
        return plan.refused
    error = getattr(result, "error", None) or ""
    if "does not offer STARTTLS" in error or "STARTTLS refused" in error:
        return TLSFailure("starttls-not-supported", error)
    if error.startswith("TLS failure: "):
        kind, _, detail = error[len("TLS failure: ") :].partition(": ")
        if kind in _RESULT_TYPES:
            return TLSFailure(kind, detail)
        return TLSFailure("validation-failure", error)
    if not getattr(result, "tls", False):
        if result is not None and (result.greeting_reply is None):
            return False  # never got to talk
        if plan.policy_type is not None and plan.context is not None:
            return TLSFailure("starttls-not-supported", error or "no TLS")
        return False
    if plan.failure is not None:
        return plan.failure
    if plan.context is not None and plan.context.last_outcome is not None:
        return plan.context.last_outcome
    return None


_RESULT_TYPES = frozenset(
    {
        "starttls-not-supported",
        "certificate-host-mismatch",
        "certificate-expired",
        "certificate-not-trusted",
        "validation-failure",
        "tlsa-invalid",
        "dnssec-invalid",
        "dane-required",
        "sts-policy-fetch-error",
        "sts-policy-invalid",
        "sts-webpki-invalid",
    }
)


class TransportSecurity:
    """
    DANE, MTA-STS and REQUIRETLS for the queue runner (see the module notes).

    Args:
        lookup: ``lookup(name, rdtype) -> Deferred[LookupResult]`` (an
            :class:`txmail.delivery.mx.MXResolver`'s, with ``dnssec=True``
            for DANE).
        mta_sts: an :class:`~txmail.delivery.mtasts.MTASTS`, or ``None`` to
            ignore MTA-STS.
        dane: look up TLSA records.
        trust_roots: CA certificates for WebPKI checks instead of the system's.
        reports: a :class:`txmail.delivery.tlsrpt.TLSReports` to count
            outcomes in, or ``None``.
        clock: tells the time (the reports' day).
    """

    log = Logger()

    def __init__(
        self,
        lookup: Callable[[str, str], Any],
        *,
        mta_sts: MTASTS | None = None,
        dane: bool = False,
        trust_roots: Sequence[Any] | None = None,
        reports: Any = None,
        clock: Any = None,
    ) -> None:
        self.lookup = lookup
        self.mta_sts = mta_sts
        self.dane = dane
        self.trust_roots = trust_roots
        self.reports = reports
        self.clock = clock
        self._contexts: dict[tuple[Any, ...], CheckedTLS] = {}

    async def domain_policy(self, domain: str) -> Lookup:
        """The MTA-STS policy of *domain* (a failure to fetch it is reported here)."""
        if self.mta_sts is None:
            return Lookup(None)
        found = await self.mta_sts.policy_for(domain)
        if found.failure is not None and self.reports is not None and found.policy is None:
            self.reports.record(
                domain,
                "sts",
                [],
                None,
                TLSFailure(found.failure, found.detail),
                receiving_mx="",
                address="",
                now=self._now(),
            )
        return found

    def _context(self, host: str, mode: str, tlsa: Sequence[TLSA], enforce: bool) -> CheckedTLS:
        key = (host.lower(), mode, tuple(tlsa), enforce)
        ctx = self._contexts.get(key)
        if ctx is None:
            if len(self._contexts) > 1000:
                self._contexts.clear()
            ctx = self._contexts[key] = CheckedTLS(
                host, mode=mode, tlsa=tlsa, trust_roots=self.trust_roots, enforce=enforce
            )
        return ctx

    async def plan(
        self,
        domain: str,
        sts: Lookup,
        dest: Any,
        *,
        default_policy: TLSPolicy,
        require_tls: bool = False,
        ignore_policies: bool = False,
    ) -> HostPlan:
        """The :class:`HostPlan` for MX host *dest* (a :class:`~txmail.delivery.mx.Destination`)."""
        host = dest.host
        enforce = not ignore_policies or require_tls
        if self.dane and getattr(dest, "secure", False) and not host.startswith("["):
            answer = await self.lookup(f"_25._tcp.{host}", "TLSA")
            if answer.status == "temp":
                failure = TLSFailure("dnssec-invalid", f"TLSA lookup of {host} failed: {answer.error}")
                if enforce:
                    return HostPlan("verify", refused=failure, policy_type="tlsa")
                return HostPlan(default_policy, policy_type="tlsa", failure=failure)
            if answer.status == "ok" and answer.secure:
                records = [TLSA.from_rdata(r) for r in answer.records]
                usable = usable_tlsa(records)
                strings = [r.text for r in records]
                if usable:
                    ctx = self._context(host, "dane", usable, enforce)
                    return HostPlan(
                        "verify" if enforce else "opportunistic",
                        ctx,
                        policy_type="tlsa",
                        policy_strings=strings,
                    )
                # RFC 7672 section 2.2: TLS is still required, unauthenticated
                # (authenticated by WebPKI for a REQUIRETLS message, RFC 8689
                # section 4.2.1).
                ctx = self._context(host, "pkix" if require_tls else "encrypt", (), enforce)
                return HostPlan(
                    "verify" if enforce else "opportunistic",
                    ctx,
                    policy_type="tlsa",
                    policy_strings=strings,
                    failure=TLSFailure("tlsa-invalid", f"no usable TLSA record for {host}"),
                )
        policy: Policy | None = sts.policy
        if policy is not None and policy.mode in ("enforce", "testing"):
            strings = [line for line in policy.text.replace("\r\n", "\n").split("\n") if line.strip()]
            sts_enforce = policy.mode == "enforce" and enforce
            if not policy.matches(host):
                failure = TLSFailure(
                    "validation-failure", f"MX host {host} does not match the MTA-STS policy of {domain}"
                )
                if sts_enforce:
                    return HostPlan("verify", refused=failure, policy_type="sts", policy_strings=strings)
                if require_tls:
                    return HostPlan(
                        "verify",
                        self._context(host, "pkix", (), True),
                        policy_type="sts",
                        policy_strings=strings,
                        failure=failure,
                    )
                return HostPlan(default_policy, policy_type="sts", policy_strings=strings, failure=failure)
            if sts_enforce or require_tls:
                ctx = self._context(host, "pkix", (), True)
                return HostPlan("verify", ctx, policy_type="sts", policy_strings=strings)
            # testing (or TLS-Required: No): STARTTLS as usual; the check is
            # made, but only reported.  TLS stays off if it is configured off.
            if default_policy == "none":
                return HostPlan("none", policy_type="sts", policy_strings=strings)
            # A configured "verify" for the domain still fails closed.
            ctx = self._context(host, "pkix", (), default_policy == "verify")
            return HostPlan(default_policy, ctx, policy_type="sts", policy_strings=strings)
        if require_tls:
            return HostPlan("verify", self._context(host, "pkix", (), True))
        return HostPlan(default_policy)

    def record(self, domain: str, plan: HostPlan, dest: Any, result: Any) -> None:
        """Count the attempt's TLS outcome for TLS-RPT (only under a policy)."""
        if self.reports is None or plan.policy_type is None:
            return
        outcome = failure_of(plan, result)
        if outcome is False:
            return
        self.reports.record(
            domain,
            plan.policy_type,
            plan.policy_strings,
            dest.host if plan.policy_type == "tlsa" else None,
            outcome,
            receiving_mx=dest.host,
            address=dest.address,
            now=self._now(),
        )

    def _now(self) -> float:
        import time

        return self.clock.seconds() if self.clock is not None else time.time()
