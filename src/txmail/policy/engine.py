"""
Runs the policies of one SMTP listener (see :mod:`txmail.policy.hooks`):
asks them in order at each stage, combines their verdicts, turns a broken
policy into a temporary failure, and waits out a tarpit's delay.

The SMTP adapter (:mod:`txmail.smtp.server`) holds one
:class:`PolicyEngine` per listener (its role picks the policies that
apply) and asks it only at the stages some policy checks
(:meth:`PolicyEngine.checks`), so a server without policies pays nothing.

At connect, when the engine has a resolver, the client's reverse DNS is
looked up and forward-confirmed first (:mod:`txmail.policy.iprev`): the
policies then see ``client_name`` and ``iprev``, and the iprev result is
among the connection's ``auth_results``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmail.metrics import NULL_METRICS, policy_reason
from txmail.policy.hooks import ACCEPT, Policy, SessionInfo, Stage, Verdict
from txmail.policy.iprev import check_iprev
from txmail.resolver import drive
from txmail.smtp.codes import Reply
from txmail.smtp.session import SessionRole

__all__ = ["FAILURE_REPLIES", "PolicyEngine", "result_now"]

#: What a stage answers when a policy fails (RFC 3463: 4.3.0 other mail
#: system status, 4.7.0 other security status).
FAILURE_REPLIES = {
    Stage.CONNECT: Reply(421, "4.3.0", "Service temporarily unavailable, try again later"),
    Stage.AUTH: Reply(454, "4.7.0", "Temporary authentication failure"),
}
_DEFAULT_FAILURE = Reply(451, "4.3.0", "Requested action aborted: local error in processing")
#: The verdict of a policy that failed, per stage (one object each: the metrics tell it apart).
_FAILED = {stage: Verdict(reply=FAILURE_REPLIES.get(stage, _DEFAULT_FAILURE)) for stage in Stage}

_METHODS = {
    Stage.CONNECT: "on_connect",
    Stage.HELO: "on_helo",
    Stage.AUTH: "on_auth",
    Stage.MAIL: "on_mail",
    Stage.RCPT: "on_rcpt",
    Stage.DATA: "on_data",
}


def _implements(policy: Any, method: str) -> bool:
    """Whether *policy* has its own *method* (not :class:`Policy`'s do-nothing one)."""
    if isinstance(policy, Policy):
        return getattr(type(policy), method) is not getattr(Policy, method)
    return callable(getattr(policy, method, None))


def result_now(d: defer.Deferred[Any]) -> Any:
    """
    The result of *d* if it has fired already (a value or a Failure, which
    is then handled), else *d* itself, still usable: a policy that answers
    from caches in a coroutine costs no trip through the coroutine machinery.
    """
    box: list[Any] = []

    def grab(result: Any) -> Any:
        box.append(result)
        return result

    d.addBoth(grab)
    if not box:
        return d
    if isinstance(box[0], Failure):
        d.addErrback(lambda _: None)  # handled by the caller
    return box[0]


def _record_iprev(session: SessionInfo, result: Any) -> None:
    """Put an :class:`~txmail.policy.iprev.IprevResult` into *session* (name, result, auth_results)."""
    from txmail.policy.authres import AuthResult

    session.client_name = result.name
    session.iprev = result.result
    session.auth_results.append(
        AuthResult("iprev", result.result, properties=(("policy", "iprev", session.client_address),))
    )


def _name(policy: Any) -> str:
    return getattr(policy, "name", None) or type(policy).__name__


class PolicyEngine:
    """
    The policies of one listener.

    Args:
        policies: policy objects (:class:`txmail.policy.hooks.Policy`
            subclasses, or objects with some of its methods), in order.
        role: the listener's role; policies whose ``roles`` leave it out are
            not asked.
        clock: an ``IReactorTime`` for tarpit delays.
        resolver: for the reverse DNS at connect (``query(question) ->
            Deferred[Answer]``, :class:`txmail.resolver.Resolver`); ``None``
            looks nothing up.
        trusted_networks: clients in these networks are marked
            ``trusted`` in their :class:`~txmail.policy.hooks.SessionInfo`
            (and their reverse DNS is not looked up).
        timeout: seconds a stage may take (DNS lookups of slow servers add
            up); past it the stage fails temporarily, as if a policy had
            failed.  The client's own timeouts do not run meanwhile.  A
            policy that may need longer (a milter with long content
            timeouts) says so with a ``stage_timeout`` attribute, and the
            longest of those is the timeout when it is longer.
    """

    log = Logger()
    #: The server's :class:`txmail.metrics.Metrics` (rejections by stage and
    #: reason), or the no-op ones.
    metrics: Any = NULL_METRICS

    def __init__(
        self,
        policies: Sequence[Any],
        *,
        role: SessionRole,
        clock: Any,
        resolver: Any = None,
        trusted_networks: Sequence[str] = (),
        timeout: float = 120.0,
    ) -> None:
        self.role = role
        self.policies = tuple(p for p in policies if role in getattr(p, "roles", (role,)))
        self.timeout = max([timeout, *(getattr(p, "stage_timeout", 0.0) for p in self.policies)])
        self.trusted_networks = tuple(ipaddress.ip_network(n, strict=False) for n in trusted_networks)
        self._trusted: dict[str, bool] = {}  # address -> is_trusted, for the addresses seen lately
        self.clock = clock
        self.resolver = resolver
        self._calls: dict[Stage, tuple[tuple[Any, Callable[..., Any]], ...]] = {
            stage: tuple((p, getattr(p, method)) for p in self.policies if _implements(p, method))
            for stage, method in _METHODS.items()
        }
        self._closers = tuple(p.on_close for p in self.policies if _implements(p, "on_close"))

    def checks(self, stage: Stage) -> bool:
        """Whether any policy is asked at *stage* (at connect: also when reverse DNS is looked up)."""
        if stage is Stage.CONNECT and self.resolver is not None:
            return True
        return bool(self._calls[stage])

    @property
    def active(self) -> bool:
        """Whether the engine does anything at all."""
        return any(self.checks(stage) for stage in Stage) or bool(self._closers)

    def run(self, stage: Stage, session: SessionInfo, *args: Any) -> defer.Deferred[Verdict]:
        """
        Ask the policies of *stage* in order; fires with the combined
        verdict once its delay has passed.  Never fails.
        """
        verdict = self.decide(stage, session, *args)
        return verdict if isinstance(verdict, defer.Deferred) else defer.succeed(verdict)

    def decide(self, stage: Stage, session: SessionInfo, *args: Any) -> Verdict | defer.Deferred[Verdict]:
        """
        :meth:`run`, but the combined verdict itself when every policy
        answered at once and there is no delay (most stages, most of the
        time): policies are run in a plain loop, and the first one that
        answers later (or a reverse DNS lookup the cache cannot answer)
        switches to a coroutine.
        """
        if (
            stage is Stage.CONNECT
            and self.resolver is not None
            and session.client_address
            and not session.trusted
        ):
            found = result_now(drive(check_iprev(session.client_address), self.resolver))
            if isinstance(found, defer.Deferred):
                return self._limited(
                    stage, session, self._run(stage, session, args, 0, ACCEPT, reverse_dns=found)
                )
            if isinstance(found, Failure):
                self.log.failure("reverse DNS of {peer} failed", failure=found, peer=session.client_address)
            else:
                _record_iprev(session, found)
        verdict = ACCEPT
        calls = self._calls[stage]
        for index, (policy, method) in enumerate(calls):
            if verdict.final and not getattr(policy, "always", False):
                continue
            try:
                result = method(session, *_with_prior(stage, args, verdict))
            except Exception:
                result = self._failed(stage, policy, session)
            if isinstance(result, defer.Deferred):
                result = result_now(result)
                if isinstance(result, defer.Deferred):
                    return self._limited(
                        stage, session, self._run(stage, session, args, index, verdict, pending=result)
                    )
                if isinstance(result, Failure):
                    result = self._failed(stage, policy, session, result)
            verdict, refused = self._combine(stage, policy, session, verdict, result)
            if refused:
                break
        if verdict.delay > 0:
            return task.deferLater(self.clock, verdict.delay, lambda: verdict)
        return verdict

    async def _run(
        self,
        stage: Stage,
        session: SessionInfo,
        args: tuple[Any, ...],
        start: int,
        verdict: Verdict,
        *,
        pending: defer.Deferred[Any] | None = None,
        reverse_dns: defer.Deferred[Any] | None = None,
    ) -> Verdict:
        """
        The rest of :meth:`run` from the policy at *start*, whose answer may
        be *pending*, after the reverse DNS check *reverse_dns* if given.
        """
        if reverse_dns is not None:
            await self._reverse_dns(session, reverse_dns)
        for policy, method in self._calls[stage][start:]:
            if verdict.final and not getattr(policy, "always", False) and pending is None:
                continue
            try:
                if pending is not None:
                    result, pending = await pending, None
                else:
                    result = await defer.maybeDeferred(method, session, *_with_prior(stage, args, verdict))
            except defer.CancelledError:
                raise  # the stage timed out (_limited)
            except Exception:
                result = self._failed(stage, policy, session)
            verdict, refused = self._combine(stage, policy, session, verdict, result)
            if refused:
                break
        if verdict.delay > 0:
            await task.deferLater(self.clock, verdict.delay, lambda: None)
        return verdict

    def _limited(self, stage: Stage, session: SessionInfo, coroutine: Any) -> defer.Deferred[Verdict]:
        """Run *coroutine*; past :attr:`timeout` seconds, the stage's temporary failure."""
        d = defer.Deferred.fromCoroutine(coroutine)
        d.addTimeout(self.timeout, self.clock)

        def timed_out(f: Failure) -> Verdict:
            f.trap(defer.TimeoutError)
            self.log.warn(
                "policies at {stage} for {peer} took more than {timeout} seconds",
                stage=stage.value,
                peer=session.client_address,
                timeout=self.timeout,
                session_id=session.session_id,
            )
            self.metrics.policy_rejected(stage.value, "timeout")
            return Verdict(reply=FAILURE_REPLIES.get(stage, _DEFAULT_FAILURE))

        return d.addErrback(timed_out)

    def _failed(
        self, stage: Stage, policy: Any, session: SessionInfo, failure: Failure | None = None
    ) -> Verdict:
        """Log *failure* (default: the exception being handled); the stage's temporary failure."""
        self.log.failure(
            "policy {policy} failed at {stage} for {peer}",
            failure=failure if failure is not None else Failure(),
            policy=_name(policy),
            stage=stage.value,
            peer=session.client_address,
            session_id=session.session_id,
        )
        return _FAILED[stage]

    def _combine(
        self, stage: Stage, policy: Any, session: SessionInfo, verdict: Verdict, result: Any
    ) -> tuple[Verdict, bool]:
        """*verdict* followed by one policy's *result*, and whether the stage is refused."""
        if result is None:
            return verdict, False
        if not isinstance(result, Verdict):
            try:
                raise TypeError(f"{_name(policy)}.{_METHODS[stage]} returned {result!r}, not a Verdict")
            except TypeError:
                result = self._failed(stage, policy, session)
        verdict = verdict.then(result)
        if verdict.reply is not None:
            if self.metrics.enabled:
                reason = "error" if result is _FAILED[stage] else policy_reason(policy, stage.value)
                self.metrics.policy_rejected(stage.value, reason)
            self.log.info(
                "policy {policy} refused {stage} from {peer}: {code} {enhanced} {text}",
                policy=_name(policy),
                stage=stage.value,
                peer=session.client_address,
                code=verdict.reply.code,
                enhanced=verdict.reply.enhanced,
                text=verdict.reply.text,
                session_id=session.session_id,
            )
            return verdict, True
        return verdict, False

    def is_trusted(self, address: str) -> bool:
        """Whether *address* is in the trusted networks (an IPv4-mapped IPv6 address counts as IPv4)."""
        known = self._trusted.get(address)
        if known is None:
            if len(self._trusted) >= 4096:
                self._trusted.clear()
            known = self._trusted[address] = self._in_trusted_networks(address)
        return known

    def _in_trusted_networks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip.version == n.version and ip in n for n in self.trusted_networks)

    async def _reverse_dns(self, session: SessionInfo, pending: defer.Deferred[Any]) -> None:
        """Wait for the reverse DNS check *pending* and record its result in *session*."""
        try:
            result = await pending
        except defer.CancelledError:
            raise
        except Exception:
            self.log.failure("reverse DNS of {peer} failed", failure=Failure(), peer=session.client_address)
            return
        _record_iprev(session, result)

    def closed(self, session: SessionInfo) -> None:
        """Tell the policies that the connection of *session* ended."""
        for close in self._closers:
            try:
                close(session)
            except Exception:
                self.log.failure("policy on_close failed", failure=Failure(), session_id=session.session_id)


def _with_prior(stage: Stage, args: tuple[Any, ...], verdict: Verdict) -> tuple[Any, ...]:
    """
    The arguments of a data-stage policy: the message with the header edits
    and new body of the policies before it (:attr:`MessageInfo.prior`).
    """
    if stage is not Stage.DATA or (not verdict.edits and verdict.body is None):
        return args
    return (dataclasses.replace(args[0], prior=verdict), *args[1:])
