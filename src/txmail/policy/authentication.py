"""
Mail authentication as policy hooks: the inbound checks of the MTA role
(SPF, DKIM, ARC, DMARC), the ``Authentication-Results`` field that records
them, and DKIM signing of outgoing mail.

Theory of operation
-------------------
:class:`InboundAuthentication` (MTA role, port 25; never on submission;
trusted clients skip it):

* at MAIL: SPF (RFC 7208) of the MAIL FROM identity (for the null sender,
  the HELO identity, section 2.4) and, once per connection, of the HELO
  name when it is a domain (section 2.3); both go into the results
  (``smtp.mailfrom``/``smtp.helo``, RFC 8601 section 2.7.2);
* at RCPT: with ``spf_reject_fail`` on for the recipient's domain, an SPF
  ``fail`` refuses it with ``550 5.7.23`` (RFC 7372 section 3.2) and the
  domain's explanation when it gave one;
* at the end of data: every DKIM signature (RFC 6376, RFC 8463) up to
  ``dkim_max_signatures``, the ARC chain (RFC 8617), then DMARC (RFC 7489)
  on the SPF and DKIM results.  The key and policy records are looked up
  with the server's resolver; the cryptography runs in the thread pool.
  DMARC's ``reject`` becomes ``550 5.7.1`` and ``quarantine`` delivery into
  the Junk folder, when ``dmarc_enforce`` is on for any recipient's domain
  (mail to a domain that enforces is protected even when it shares the
  transaction with one that does not).  When DMARC fails but the ARC chain
  passes and its newest set from a configured trusted sealer recorded
  ``dmarc=pass``, the policy is not applied
  (RFC 8617 section 7.2.1; RFC 7489 section 7.2.1.1's "trusted_forwarder"
  local policy override) and the result says so.

:class:`AuthenticationResultsHeader` (both roles, asked last): removes the
client's ``Authentication-Results`` fields that claim our authserv-id
(RFC 8601 section 5) and adds one field with every result the other
policies recorded (the connection's, e.g. iprev, then the message's).

:class:`DKIMSigner` signs mail sent by authenticated submission clients
and by trusted clients (a local application relaying through port 25) with
the keys of the author domain (the From field's, or of its nearest parent
domain with keys), as :func:`txmail.policy.dkim.sign` makes them: every
key of that domain configured to sign, so RSA and Ed25519 at once
(:class:`MessageSigner`, which also signs the server's own notices).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmail.dnsdata import Answer, Question
from txmail.policy import authres, dmarc, spf
from txmail.policy.authres import AuthResult
from txmail.policy.config import PolicyConfig
from txmail.policy.hooks import MessageInfo, Policy, RecipientInfo, SessionInfo, Verdict
from txmail.resolver import drive

__all__ = [
    "AuthenticationResultsHeader",
    "DKIMSigner",
    "InboundAuthentication",
    "MessageSigner",
    "split_header",
]

_SPF_FAIL_REPLY = "550 5.7.23 SPF validation failed"

#: Messages up to this size are verified (DKIM, ARC) on the reactor thread:
#: a 10 KB message with two signatures takes about 0.5 ms, less than the
#: round trip through the thread pool and the wait for the GIL it costs
#: (measured with benchmarks/policy_ingest.py).  Larger ones go to the pool.
INLINE_VERIFY_LIMIT = 64 * 1024
_DMARC_REJECT_REPLY = "550 5.7.1 Email rejected per DMARC policy for {domain}"


def split_header(message: bytes) -> bytes:
    """The header section of *message* (each field with its CRLF), without the empty line and body."""
    if message.startswith(b"\r\n"):
        return b""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _message_bytes(message: MessageInfo, run_blocking: Callable[..., Any]) -> defer.Deferred[bytes]:
    data = message.data
    if data is not None:
        return defer.succeed(data)
    return run_blocking(message.read)  # type: ignore[no-any-return]  # run_blocking is typed Any -> Deferred[Any]


async def _lookups(resolver: Any, names: Sequence[str]) -> dict[str, Answer]:
    """The TXT answers for *names*: from the resolver's cache when it has them, else asked in parallel."""
    cached = getattr(resolver, "cached", None)
    answers: dict[str, Answer] = {}
    missing = []
    for name in names:
        answer = cached(Question(name, "TXT")) if cached is not None else None
        if answer is None:
            missing.append(name)
        else:
            answers[name] = answer
    if missing:
        fetched = await defer.gatherResults([resolver.lookup(name, "TXT") for name in missing])
        answers.update(zip(missing, fetched, strict=True))
    return answers


def _spf_result(outcome: spf.SPFOutcome, ptype_property: str, value: str) -> AuthResult:
    return AuthResult(
        "spf",
        outcome.result.value,
        properties=(("smtp", ptype_property, value),),
        comment=outcome.reason or None,
    )


class InboundAuthentication(Policy):
    """
    SPF, DKIM, ARC and DMARC on mail arriving on port 25 (see the module notes).

    Args:
        config: the :class:`~txmail.policy.config.PolicyConfig`.
        resolver: the server's DNS resolver (``lookup(name, rdtype)``,
            ``query(question)``).
        run_blocking: runs the cryptography off the reactor thread.
        hostname: our name (the SPF ``%{r}`` macro).
        rng: draws DMARC's ``pct`` roll.
    """

    log = Logger()
    roles = frozenset({"mta"})

    def __init__(
        self,
        config: PolicyConfig,
        *,
        resolver: Any,
        run_blocking: Callable[..., defer.Deferred[Any]],
        hostname: str = "",
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.resolver = resolver
        self.run_blocking = run_blocking
        self.hostname = hostname
        self.rng = rng or random.Random()

    # -- SPF -----------------------------------------------------------------

    async def _on_mail(self, session: SessionInfo) -> None:
        tx = session.transaction
        assert tx is not None
        helo = session.helo or ""
        ip = session.client_address
        helo_is_domain = "." in helo and not helo.startswith("[")
        if helo_is_domain and session.notes.get("spf_helo_checked") != helo:
            session.notes["spf_helo_checked"] = helo
            outcome = await drive(spf.check_helo(ip, helo, receiver=self.hostname), self.resolver)
            session.notes["spf_helo"] = outcome
        helo_outcome = session.notes.get("spf_helo")
        if tx.mail_from:
            outcome = await drive(
                spf.check_mail_from(ip, tx.mail_from, helo, receiver=self.hostname), self.resolver
            )
            tx.notes["spf"] = (outcome, outcome.domain)
            tx.auth_results.append(_spf_result(outcome, "mailfrom", tx.mail_from))
        elif helo_outcome is not None:
            # RFC 7489 section 3.1.2 / RFC 7208 section 2.4: the HELO identity stands in.
            tx.notes["spf"] = (helo_outcome, helo)
        if helo_outcome is not None:
            tx.auth_results.append(_spf_result(helo_outcome, "helo", helo))

    def on_mail(self, session: SessionInfo) -> Any:
        if session.trusted or not self.config.spf or not session.client_address:
            return None
        return defer.Deferred.fromCoroutine(self._on_mail(session))

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Any:
        tx = session.transaction
        if session.trusted or tx is None or not recipient.accepted:
            return None
        found = tx.notes.get("spf")
        if found is None or found[0].result is not spf.SPFResult.FAIL:
            return None
        if not self.config.for_domain(recipient.domain).spf_reject_fail:
            return None
        outcome = found[0]
        reply = _SPF_FAIL_REPLY
        if outcome.explanation:
            reply += ": " + outcome.explanation[:200]
        return Verdict.reject(reply)

    # -- end of data: DKIM, ARC, DMARC ---------------------------------------

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        config = self.config
        if session.trusted or not (config.dkim or config.arc or config.dmarc):
            return None
        return defer.Deferred.fromCoroutine(self._on_data(session, message))

    async def _on_data(self, session: SessionInfo, message: MessageInfo) -> Verdict:
        tx = session.transaction
        assert tx is not None
        config = self.config
        data = await _message_bytes(message, self.run_blocking)
        dkim_results: list[Any] = []
        if config.dkim:
            dkim_results = await self._dkim(data, tx.auth_results)
        arc_result = None
        if config.arc:
            arc_result = await self._arc(data, tx.auth_results)
        if not config.dmarc:
            return Verdict.accept()
        return await self._dmarc(session, data, dkim_results, arc_result)

    async def _dkim(self, data: bytes, results: list[AuthResult]) -> list[Any]:
        from txmail.policy import dkim

        limit = self.config.dkim_max_signatures
        checked: list[Any] = []
        if limit and b"dkim-signature" in split_header(data).lower():
            names = dkim.key_queries(data, limit=limit)
            answers = await _lookups(self.resolver, names)
            verify = functools.partial(dkim.verify, limit=limit)
            if len(data) <= INLINE_VERIFY_LIMIT:
                checked = verify(data, answers)
            else:
                checked = await self.run_blocking(verify, data, answers)
        if not checked:
            results.append(AuthResult("dkim", "none"))
        for r in checked:
            props = [("header", "d", r.domain), ("header", "s", r.selector)] if r.domain else []
            if r.identity:
                props.append(("header", "i", r.identity))
            if r.algorithm:
                props.append(("header", "a", r.algorithm))
            if r.header_b:
                props.append(("header", "b", r.header_b))
            results.append(
                AuthResult(
                    "dkim",
                    r.result,
                    reason=r.reason or None if r.result != "pass" else None,
                    properties=tuple(props),
                )
            )
        return checked

    async def _arc(self, data: bytes, results: list[AuthResult]) -> Any:
        from txmail.policy import arc

        if b"arc-seal" not in split_header(data).lower():
            return None
        names = arc.arc_key_queries(data)
        answers = await _lookups(self.resolver, names)
        if len(data) <= INLINE_VERIFY_LIMIT:
            verdict = arc.arc_verify(data, answers)
        else:
            verdict = await self.run_blocking(arc.arc_verify, data, answers)
        props: tuple[tuple[str, str, str], ...] = ()
        if verdict.oldest_pass is not None:
            props = (("header", "oldest-pass", str(verdict.oldest_pass)),)
        if verdict.result != "none":
            results.append(AuthResult("arc", verdict.result, reason=verdict.reason or None, properties=props))
        return verdict

    async def _dmarc(
        self, session: SessionInfo, data: bytes, dkim_results: list[Any], arc_result: Any
    ) -> Verdict:
        tx = session.transaction
        assert tx is not None
        try:
            author = dmarc.from_domain(split_header(data))
        except dmarc.FromDomainError as error:
            # RFC 7489 section 6.6.1: several authors cannot be evaluated; a
            # message with several From fields is a spoofing tool: refused.
            disposition = (
                dmarc.Policy.REJECT
                if isinstance(error, dmarc.MultipleFrom | dmarc.MultipleAuthors)
                else dmarc.Policy.NONE
            )
            verdict = dmarc.bad_from_verdict(error, disposition=disposition)
        else:
            lookup = await drive(dmarc.fetch_policy(author), self.resolver)
            exists = None
            if (
                lookup.at_org_domain
                and lookup.record is not None
                and lookup.record.nonexistent_policy is not None
            ):
                exists = await drive(dmarc.domain_exists(author), self.resolver)
            spf_found = tx.notes.get("spf")
            verdict = dmarc.evaluate(
                author,
                lookup,
                spf=(spf_found[0].result.value, spf_found[1]) if spf_found else None,
                dkim=[(r.result, r.domain) for r in dkim_results],
                pct_roll=self.rng.randrange(100),
                from_domain_exists=exists,
            )
        result = verdict.auth_result()
        disposition = verdict.disposition
        if verdict.result is dmarc.DMARCResult.FAIL and disposition is not dmarc.Policy.NONE:
            sealer = self._trusted_arc_pass(arc_result, verdict.from_domain)
            if sealer is not None:
                disposition = dmarc.Policy.NONE
                result = AuthResult(
                    result.method,
                    result.result,
                    reason=f"policy overridden: trusted ARC sealer {sealer}",
                    properties=result.properties,
                    comment=result.comment,
                )
        tx.auth_results.append(result)
        tx.notes["dmarc"] = verdict
        enforce = any(self.config.for_domain(r.rpartition("@")[2]).dmarc_enforce for r in tx.recipients)
        if not enforce or disposition is dmarc.Policy.NONE:
            return Verdict.accept()
        self.log.info(
            "DMARC {disposition} for {domain} from {peer}: {reason}",
            disposition=str(disposition),
            domain=verdict.from_domain,
            peer=session.client_address,
            reason=verdict.reason,
            session_id=session.session_id,
        )
        if disposition is dmarc.Policy.REJECT:
            return Verdict.reject(
                _DMARC_REJECT_REPLY.format(domain=verdict.from_domain or "the author domain")
            )
        return Verdict.deliver_to(self.config.dmarc_quarantine_folder)

    def _trusted_arc_pass(self, arc_result: Any, author: str | None) -> str | None:
        """The trusted sealer whose recorded results pass DMARC for *author*, or ``None``."""
        if arc_result is None or not self.config.arc_trusted_sealers or author is None:
            return None
        arc_set = arc_result.newest_trusted(self.config.arc_trusted_sealers)
        if arc_set is None:
            return None
        if arc_set.result_of("dmarc") == "pass":
            return str(arc_set.domain)
        return None


class AuthenticationResultsHeader(Policy):
    """
    Removes forged ``Authentication-Results`` fields and adds ours (see the
    module notes).  Ask it after every policy that records results.

    Args:
        authserv_id: our authserv-id (RFC 8601 section 2.5), usually the hostname.
    """

    roles = frozenset({"mta", "submission"})
    always = True  # forged fields go whatever other policies decided (RFC 8601 section 5)

    def __init__(self, authserv_id: str) -> None:
        self.authserv_id = authserv_id

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Verdict:
        authserv_id = self.authserv_id
        verdict = Verdict()
        data = message.data
        # Editing means copying the message: only when a field may need removing
        # (always for a large message, whose header is not in memory).
        if data is None or b"authentication-results" in split_header(data).lower():
            verdict = Verdict.edit_headers(lambda section: authres.remove_forged(section, authserv_id))
        results = list(session.auth_results)
        if session.transaction is not None:
            results += session.transaction.auth_results
        if not results:
            return verdict
        return verdict.then(Verdict(headers=(authres.format_header(authserv_id, results),)))


class MessageSigner:
    """
    DKIM-signs messages with the keys of their author domain (the From
    field's), falling back to its parent domains (``mx.example.com`` uses
    ``example.com``'s keys: a relaxed DMARC alignment).

    Args:
        keys: :class:`~txmail.policy.dkim.SigningKey` objects.
        run_blocking: runs the signing off the reactor thread.
        clock: for ``t=``.
    """

    log = Logger()

    def __init__(
        self, keys: Sequence[Any], *, run_blocking: Callable[..., defer.Deferred[Any]], clock: Any
    ) -> None:
        by_domain: dict[str, list[Any]] = {}
        for key in keys:
            by_domain.setdefault(key.domain.lower().rstrip("."), []).append(key)
        self.keys = {d: tuple(k) for d, k in by_domain.items()}
        self.run_blocking = run_blocking
        self.clock = clock

    def keys_for(self, domain: str) -> tuple[Any, ...]:
        """The keys of *domain* or of its nearest parent that has some."""
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels) - 1):
            keys = self.keys.get(".".join(labels[i:]))
            if keys:
                return keys
        return ()

    @defer.inlineCallbacks
    def sign(self, data: bytes) -> Any:
        """Fires with the DKIM-Signature fields for *data* (``b""`` when there is no key or no From)."""
        from txmail.policy import dkim, dmarc

        try:
            author = dmarc.from_domain(split_header(data))
        except dmarc.FromDomainError:
            return b""
        keys = self.keys_for(author)
        if not keys:
            return b""
        try:
            fields = yield self.run_blocking(
                functools.partial(dkim.sign, now=self.clock.seconds()), data, keys
            )
        except ValueError as e:
            self.log.info("not signing a message from {domain}: {error}", domain=author, error=str(e))
            return b""
        return fields


class DKIMSigner(Policy):
    """
    DKIM-signs mail from authenticated submission clients and trusted
    clients with the author domain's keys (see the module notes).

    Args:
        keys: :class:`~txmail.policy.dkim.SigningKey` objects; those of one
            domain sign together.
        run_blocking: runs the signing off the reactor thread.
        clock: for ``t=``.
    """

    log = Logger()
    roles = frozenset({"mta", "submission"})

    def __init__(
        self, keys: Sequence[Any], *, run_blocking: Callable[..., defer.Deferred[Any]], clock: Any
    ) -> None:
        self.signer = MessageSigner(keys, run_blocking=run_blocking, clock=clock)
        self.run_blocking = run_blocking

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        if not (session.trusted or (session.role == "submission" and session.authenticated_user)):
            return None
        return defer.Deferred.fromCoroutine(self._sign(message))

    async def _sign(self, message: MessageInfo) -> Verdict:
        # What will be delivered: the earlier policies' edits and new body
        # (a milter's) applied, so that the signature survives them.
        data = message.changed(await _message_bytes(message, self.run_blocking))
        fields = await self.signer.sign(data)
        return Verdict(headers=(fields,)) if fields else Verdict.accept()
