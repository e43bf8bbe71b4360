"""
The queue runner: works the outbound spool until every recipient is
delivered or has failed (and its sender has been told).

Theory of operation
===================

:class:`QueueRunner` is a :class:`twisted.application.service.Service`.
It works any :class:`~txmail.interfaces.IQueue` through that interface
alone.  While it runs, it makes a *pass* over the queue at start, every
``poll_interval`` seconds, and at once when the queue reports a new entry
(:meth:`~txmail.interfaces.IQueue.add_listener`).  Passes never overlap: a
wake-up during a pass makes another pass follow it.

One pass:

1. The runner claims entries (:meth:`~txmail.interfaces.IQueue.claim`),
   ``claim_batch`` at a time (all at once by default), each for ``lease``
   seconds, until none is left unclaimed; it holds its claims until the
   pass ends (renewing them every third of a lease meanwhile), then
   releases them.  Runners of other nodes sharing the queue
   (PostgreSQL) are given other entries, so no entry is worked by two at
   once; the claims of a runner that died run out with their lease and
   another node's runner takes the entries.  (The file queue picks up
   changes other processes made, ``txmail queue flush|delete``, at the
   first claim of a pass.)
2. For each entry (up to ``concurrency`` at a time), the *due* recipients
   are those ``pending`` and those ``deferred`` whose ``next_attempt`` has
   come.  They are grouped by domain (the part after the last ``@``,
   lower-cased), and each group is one SMTP transaction (RFC 5321 section
   3.3 allows many RCPTs per transaction; one per domain is what the
   domain's MX hosts can take together).
3. A group for a local domain (a local copy that failed earlier and was
   queued by the router) goes back through the router.  For a remote
   domain: the smarthost if one is configured, else the MX hosts
   (:class:`~txmail.delivery.mx.MXResolver`, RFC 5321 section 5.1).  Each
   destination is tried in turn until one *answers*: a destination that
   gives no greeting, refuses the connection or fails before any RCPT reply
   (a 421, a TLS failure) passes the turn to the next; RFC 5321 section 5.1
   asks the client to try the other addresses before deferring.
4. Per recipient, the outcome (RFC 5321 section 4.2.1): a 2xx makes it
   ``delivered``; a 5xx, a null MX (RFC 7505) or a domain that does not
   exist makes it ``failed``; anything else defers it on the
   :class:`~txmail.delivery.backoff.RetrySchedule`, counted from the entry's
   ``created`` time; a temporary failure after expiry fails it (status
   ``4.4.7``, RFC 3463: delivery time expired).  Every attempt is logged
   with the recipient, the host tried and its reply, and the same is kept in
   the recipient's state (``host``, ``reply``, ``status``, ``last_error``).
5. Notices (RFC 3464 via :func:`~txmail.delivery.bounce.make_dsn`), sent as
   one message per entry and kind through the router from the null sender
   ``<>``: failed recipients whose NOTIFY (RFC 3461 section 4.1) wants
   failures, and deferred ones due a delay notice.  Never to a null sender
   (RFC 5321 section 6.1).  RET=FULL returns the whole message and ENVID is
   quoted (RFC 3461 sections 4.3, 4.4); ORCPT becomes Original-Recipient.
   ``dsn_sent`` / ``delay_notice_sent`` are written after the notice is
   handed to the router, so a crash in between sends it twice at worst.
   Success notices (NOTIFY=SUCCESS) follow RFC 3461 section 5.2: a
   recipient relayed to a server that advertised DSN gets none from us (the
   NOTIFY went along with it, section 5.2.1: the notification is that
   server's job now); relayed to one that did not, a ``relayed`` notice
   (section 5.2.2); delivered through the router, a ``delivered`` one
   (section 5.2.3).  When a recipient wanting one is delivered its state
   records ``success_action`` and ``success_sent: false``; the flag turns
   true once the notice is handed to the router (or when the sender is null).
6. An entry with no recipient pending or deferred, every failure notified
   and every wanted success notice sent is deleted.

Restart safety: all of the above lives in the entry's recipient states
(written durably by :meth:`~txmail.interfaces.IQueue.update_recipients`
after each transaction), so a new runner resumes from it.  The runner
keeps its own copy of the states of the entries it works, updated with
what it writes: it never relies on the queue changing an entry it
returned.  A crash during a transaction leaves the recipients as they were: they are tried again, so a
message may be sent twice but is never lost.

Transport security: with a *security* object
(:class:`~txmail.delivery.tlspolicy.TransportSecurity`) the MTA-STS policy
of the domain is looked up before its hosts are tried, and each host gets
a :class:`~txmail.delivery.tlspolicy.HostPlan` (DANE, MTA-STS, REQUIRETLS):
a host the plan refuses is skipped like one that does not answer (so the
recipients are deferred, not bounced, when none is left); each attempt's
TLS outcome is counted for TLS-RPT.  A message received with REQUIRETLS
(RFC 8689, ``REQUIRETLS`` in the envelope's MAIL parameters) goes only
to an MX host whose lookup was DNSSEC-validated (``[outbound] dane``) or
that the domain's MTA-STS policy names (section 4.2.1), over a verified TLS
connection, to a next hop that offers REQUIRETLS: when every host fails
one of these its recipients fail with ``5.7.30``; a message whose
header says ``TLS-Required: No`` has DANE and MTA-STS failures ignored.

DSN parameters: ``NOTIFY``/``ORCPT`` of each recipient and ``RET``/
``ENVID`` of the envelope are passed on to servers that advertise DSN (the
SMTP client decides, RFC 3461 section 4); values are as received (xtext)
and are decoded for the notices we write ourselves.  Whether the server
advertised DSN is read from the result's ``dsn`` attribute; a result
without one counts as a server without DSN (a ``relayed`` notice: at worst
the sender hears of a success twice, never not at all).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmail import _twisted
from txmail.delivery.backoff import RetrySchedule
from txmail.delivery.bounce import RecipientStatus, make_dsn, notify_wants, should_bounce
from txmail.delivery.mx import Destination, NoRoute, NullMX
from txmail.delivery.router import deliver_notice, split_address, stored_xtext
from txmail.errors import QueueError
from txmail.interfaces import IDeliveryRouter, IQueue
from txmail.metrics import NULL_METRICS
from txmail.model import DeliveryState, Envelope, QueueEntry, RecipientState
from txmail.smtp.client import RelayRequest, TLSPolicy

__all__ = ["QueueRunner", "Smarthost", "xtext_decode"]

_PARAM_OK_RE = re.compile(r"^[\x21-\x3c\x3e-\x7e]+$")
_ENHANCED_RE = re.compile(r"\b([245]\.\d{1,3}\.\d{1,3})\b")
_TLS_REQUIRED_NO_RE = re.compile(rb"(?im)^TLS-Required[ \t]*:[ \t]*No[ \t]*\r?$")
#: Octets of a queued message read to find its header's TLS-Required field.
_HEADER_PEEK = 65536

#: An entry with a recipient in one of these states stays in the queue.
_KEPT = (DeliveryState.PENDING, DeliveryState.DEFERRED, DeliveryState.HELD)


#: A stored RFC 3461 xtext value as text (see :func:`txmail.delivery.router.stored_xtext`).
xtext_decode = stored_xtext


@dataclass(frozen=True)
class Smarthost:
    """Send everything through one host (with AUTH when credentials are given)."""

    host: str
    port: int = 25
    username: str | None = None
    password: str | None = None

    @property
    def auth(self) -> tuple[str, str] | None:
        if self.username is None or self.password is None:
            return None
        return (self.username, self.password)


class QueueRunner(_twisted.Service):
    """
    Works an :class:`~txmail.interfaces.IQueue`.  See the module
    documentation.

    Args:
        queue: the queue.
        router: an ``IDeliveryRouter``; notices and local retries go through
            its ``deliver``.
        resolver: has ``resolve(domain) -> Deferred[list[Destination]]``.
        deliver: ``deliver(request) -> Deferred[TransactionResult]`` for a
            :class:`txmail.smtp.relay.RelayRequest`, e.g. a
            :class:`txmail.smtp.relay.ConnectionCache`'s ``deliver`` or
            :func:`functools.partial` of :func:`txmail.smtp.relay.deliver_once`
            with the reactor.
        clock: the timer source.
        hostname: our name (EHLO, Reporting-MTA).
        is_local: whether a domain is ours (its recipients go to the router).
        schedule: the retry policy.
        relay_port: the port of remote MX hosts (25; tests use others).
        smarthost: send everything there instead of to the MX hosts.
        tls_policy: ``none | opportunistic | verify`` for remote hosts.
        domain_tls: per-domain TLS policy overriding *tls_policy*.
        trust_root: CA for ``verify`` instead of the platform's.
        poll_interval: seconds between passes.
        timeout: seconds per SMTP command (RFC 5321 section 4.5.3.2).
        concurrency: entries worked at the same time.
        postmaster: the address named in notices for help.
        connections: what *deliver* keeps open between transactions (a
            :class:`txmail.smtp.relay.ConnectionCache`): its ``close()`` is
            called when the runner stops, after the transactions in flight.
        claim_batch: entries claimed at a time (``None``: every unclaimed
            one at once); runners sharing a queue share its entries out in
            batches.
        lease: seconds an entry stays claimed unless renewed (the runner
            renews its claims every third of it while a pass runs); a
            runner that dies leaves its entries to the others for that
            long.
        security: a :class:`~txmail.delivery.tlspolicy.TransportSecurity`
            (DANE, MTA-STS, TLS-RPT), or ``None``.
    """

    log = Logger()
    #: The server's :class:`txmail.metrics.Metrics` (remote deliveries,
    #: deferrals, bounces), or the no-op ones.
    metrics: Any = NULL_METRICS

    def __init__(
        self,
        queue: IQueue,
        router: IDeliveryRouter,
        resolver: Any,
        deliver: Callable[..., defer.Deferred[Any]],
        *,
        clock: IReactorTime,
        hostname: str,
        is_local: Callable[[str], bool] = lambda domain: False,
        schedule: RetrySchedule | None = None,
        relay_port: int = 25,
        smarthost: Smarthost | None = None,
        tls_policy: TLSPolicy = "opportunistic",
        domain_tls: Mapping[str, TLSPolicy] | None = None,
        trust_root: Any = None,
        poll_interval: float = 30.0,
        timeout: float = 300.0,
        concurrency: int = 10,
        postmaster: str | None = None,
        connections: Any = None,
        claim_batch: int | None = None,
        lease: float = 900.0,
        security: Any = None,
    ) -> None:
        self.queue = queue
        self.router = router
        self.resolver = resolver
        self.deliver = deliver
        self.clock = clock
        self.hostname = hostname
        self.is_local = is_local
        self.schedule = schedule or RetrySchedule()
        self.relay_port = relay_port
        self.smarthost = smarthost
        self.tls_policy = tls_policy
        self.domain_tls = {k.lower().rstrip("."): v for k, v in (domain_tls or {}).items()}
        self.trust_root = trust_root
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.postmaster = postmaster
        self.connections = connections
        self.claim_batch = claim_batch
        self.lease = lease
        self.security = security
        self._limit = defer.DeferredSemaphore(concurrency)
        self._loop: task.LoopingCall | None = None
        self._wakeup: Any = None
        self._pass: defer.Deferred[None] | None = None
        self._again = False
        self._stopping = False
        queue.add_listener(self._new_entry)

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        loop = self._loop = task.LoopingCall(self.run_pass)
        loop.clock = self.clock
        loop.start(self.poll_interval, now=False).addErrback(
            lambda f: self.log.failure("queue runner loop stopped", failure=f)
        )
        reports = getattr(self.security, "reports", None)
        if reports is not None:
            reports.start()  # TLS-RPT: the daily reports
        self.wake()  # the first pass, as soon as the reactor runs

    def stopService(self) -> Any:
        super().stopService()
        self._stopping = True  # the pass in flight ends after its batch
        reports = getattr(self.security, "reports", None)
        if reports is not None:
            reports.stop()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        self._again = False
        if self._pass is not None:
            # Let the transactions in flight finish (their results are recorded).
            d: defer.Deferred[None] = defer.Deferred()
            self._pass.addBoth(_fire_then_pass, d)
            return d.addCallback(lambda _: self._close_connections())
        return self._close_connections()

    def _close_connections(self) -> Any:
        """QUIT the connections kept open between transactions (when *deliver* keeps any)."""
        if self.connections is None:
            return None
        return self.connections.close()

    def _new_entry(self, queue_id: str) -> None:
        self.wake()

    def wake(self) -> None:
        """Make a pass soon (new mail, or ``flush``)."""
        if not self.running:
            return
        if self._pass is not None:
            self._again = True
            return
        if self._wakeup is None or not self._wakeup.active():
            self._wakeup = self.clock.callLater(0, self.run_pass)

    # -- a pass -------------------------------------------------------------

    def run_pass(self) -> defer.Deferred[None]:
        """
        Work every due recipient once.  Fires when done (never errbacks); if
        a pass is already running, fires when it and the one it is asked to
        make after it are done.
        """
        if self._pass is not None:
            self._again = True
            d: defer.Deferred[None] = defer.Deferred()
            self._pass.addBoth(_fire_then_pass, d)
            return d
        current = self._pass = defer.Deferred.fromCoroutine(self._run_pass())

        def finished(result: Any) -> None:
            if isinstance(result, Failure):
                self.log.failure("queue pass failed", failure=result)
            self._pass = None
            if self._again and self.running:
                self._again = False
                self.wake()

        current.addBoth(finished)
        return current

    async def _run_pass(self) -> None:
        claimed: list[str] = []
        # Keep the claims alive while the pass runs, however long a delivery takes.
        renewal = task.LoopingCall(self._renew, claimed)
        renewal.clock = self.clock
        renewal.start(self.lease / 3, now=False).addErrback(
            lambda f: self.log.failure("renewing queue claims stopped", failure=f)
        )
        try:
            while True:
                entries = await self.queue.claim(self.claim_batch, self.lease)
                if not entries:
                    break
                claimed.extend(entry.queue_id for entry in entries)
                work = [self._limit.run(self._work_entry, entry) for entry in entries]
                await defer.DeferredList(work, consumeErrors=False)
                if self.claim_batch is None or self._stopping:
                    break
        finally:
            if renewal.running:
                renewal.stop()
            for queue_id in claimed:
                try:
                    await self.queue.release_claim(queue_id)
                except Exception:
                    self.log.failure("releasing the claim on {queue_id} failed", queue_id=queue_id)

    def _renew(self, claimed: list[str]) -> defer.Deferred[Any] | None:
        if not claimed:
            return None
        d: defer.Deferred[Any] = self.queue.renew_claims(list(claimed), self.lease)
        return d.addErrback(lambda f: self.log.failure("renewing queue claims failed", failure=f))

    async def _update(
        self, entry: QueueEntry, changes: dict[str, RecipientState], *, durable: bool = True
    ) -> None:
        """Record *changes* in the queue and in the runner's copy of *entry*'s states."""
        await self.queue.update_recipients(entry.queue_id, changes, durable=durable)
        entry.recipients.update(changes)

    def _now(self) -> float:
        return self.clock.seconds()

    def _work_entry(self, entry: QueueEntry) -> defer.Deferred[None]:
        # The runner's own copy of the states: updated by _update alone.
        entry = dataclasses.replace(entry, recipients=dict(entry.recipients))
        d = defer.Deferred.fromCoroutine(self._work(entry))

        def failed(f: Failure) -> None:
            if f.check(QueueError):  # deleted meanwhile (txmail queue delete)
                self.log.info(
                    "queue entry {queue_id} went away: {error}",
                    queue_id=entry.queue_id,
                    message_id=entry.envelope.message_id,
                    error=f.value,
                )
                return
            self.log.failure(
                "working queue entry {queue_id} failed",
                failure=f,
                queue_id=entry.queue_id,
                message_id=entry.envelope.message_id,
            )

        return d.addErrback(failed)

    async def _work(self, entry: QueueEntry) -> None:
        now = self._now()
        due = [
            rcpt
            for rcpt, st in entry.recipients.items()
            if st.state is DeliveryState.PENDING
            or (st.state is DeliveryState.DEFERRED and (st.next_attempt or 0) <= now)
        ]
        groups: dict[str, list[str]] = {}
        for rcpt in due:
            groups.setdefault(split_address(rcpt)[1], []).append(rcpt)
        for n, (domain, rcpts) in enumerate(groups.items(), 1):
            if self.is_local(domain):
                changes = await self._deliver_local(entry, rcpts)
            else:
                changes = await self._deliver_remote(entry, domain, rcpts)
            self._count(changes, local=self.is_local(domain))
            # Each domain's results are on disk before the next domain is
            # tried; the last ones are written below only if the entry stays
            # (a delivered entry is deleted at once: one write less per
            # message; a crash meanwhile sends it again, never loses it).
            await self._update(entry, changes, durable=n < len(groups))
        await self._notify(entry)
        if not any(st.state in _KEPT for st in entry.recipients.values()) and all(
            (st.dsn_sent or st.state is not DeliveryState.FAILED)
            and (st.success_sent is not False or st.state is not DeliveryState.DELIVERED)
            for st in entry.recipients.values()
        ):
            await self.queue.delete_entry(entry.queue_id)
            self.log.info(
                "queue entry {queue_id} done", queue_id=entry.queue_id, message_id=entry.envelope.message_id
            )
        elif groups:
            await self._update(entry, {})

    def _count(self, changes: Mapping[str, RecipientState], *, local: bool) -> None:
        """
        Count the outcomes of one domain's attempt (:mod:`txmail.metrics`):
        a local copy delivered was counted by the router already.
        """
        metrics = self.metrics
        if not metrics.enabled:
            return
        destination = "local" if local else "remote"
        states = [st.state for st in changes.values()]
        if not local and states.count(DeliveryState.DELIVERED):
            metrics.delivered(destination, states.count(DeliveryState.DELIVERED))
        if states.count(DeliveryState.DEFERRED):
            metrics.deferred(destination, states.count(DeliveryState.DEFERRED))
        if states.count(DeliveryState.FAILED):
            metrics.bounced(destination, states.count(DeliveryState.FAILED))

    # -- parameters -----------------------------------------------------------

    def _rcpt_params(self, entry: QueueEntry, rcpt: str) -> dict[str, str]:
        env = entry.envelope
        for i, original in enumerate(env.rcpt_to):
            if original.lower() == rcpt.lower() and i < len(env.rcpt_params):
                return {k.upper(): v for k, v in env.rcpt_params[i].items() if v is not None}
        return {}

    @staticmethod
    def _dsn_params(params: Mapping[str, str], keys: Sequence[str]) -> dict[str, str]:
        return {k: v for k, v in params.items() if k in keys and isinstance(v, str) and _PARAM_OK_RE.match(v)}

    def _policy(self, domain: str) -> TLSPolicy:
        return self.domain_tls.get(domain, self.tls_policy)

    # -- local --------------------------------------------------------------

    async def _deliver_local(self, entry: QueueEntry, rcpts: list[str]) -> dict[str, RecipientState]:
        env = entry.envelope
        envelope = Envelope(
            mail_from=env.mail_from,
            rcpt_to=tuple(rcpts),
            mail_params=dict(env.mail_params),
            helo=env.helo,
            peer=env.peer,
            authenticated_user=env.authenticated_user,
            tls=env.tls,
            received_at=env.received_at,
            protocol=env.protocol,
            message_id=env.message_id,
            folder=env.folder,
        )
        message = await self.queue.open_source(entry.queue_id)
        now = self._now()
        # A router that can (DeliveryRouter.redeliver) reports a failed copy
        # instead of queueing it again, so its attempts count here.
        deliver = getattr(self.router, "redeliver", self.router.deliver)
        # Per recipient: ok, the reply as text, temporary, the reply's enhanced code.
        results: dict[str, tuple[bool, str, bool, str]]
        try:
            report = await deliver(envelope, message)
        except Exception as e:
            self.log.failure(
                "local redelivery of {queue_id} failed",
                queue_id=entry.queue_id,
                message_id=entry.envelope.message_id,
            )
            results = {r: (False, f"local delivery failed: {e}", True, "") for r in rcpts}
        else:
            results = {
                r.recipient: (
                    r.ok,
                    r.reply.as_text() if r.reply is not None else "",
                    r.temporary,
                    r.reply.enhanced if r.reply is not None else "",
                )
                for r in report.results
            }
        changes: dict[str, RecipientState] = {}
        for rcpt in rcpts:
            ok, reply, temporary, enhanced = results.get(rcpt, (False, "local delivery failed", True, ""))
            st = entry.recipients[rcpt]
            attempts = st.attempts + 1
            self.log.info(
                "{queue_id} to <{rcpt}> via local delivery: {reply}",
                queue_id=entry.queue_id,
                message_id=entry.envelope.message_id,
                rcpt=rcpt,
                reply=reply,
            )
            if ok:
                delivered = dataclasses.replace(
                    st,
                    state=DeliveryState.DELIVERED,
                    attempts=attempts,
                    last_attempt=now,
                    next_attempt=None,
                    reply=reply,
                    status="2.0.0",
                )
                changes[rcpt] = self._wanting_success(delivered, entry, rcpt, "delivered")
            elif temporary:
                changes[rcpt] = self._temporary(
                    entry, st, attempts, now, reply, None, enhanced or _status_of(reply, "temporary")
                )
            else:
                changes[rcpt] = self._failed(
                    st, attempts, now, reply, None, enhanced or _status_of(reply, "permanent")
                )
        return changes

    # -- remote -------------------------------------------------------------

    def _not_used(self, queue_id: str, domain: str, dest: Destination, error: str) -> None:
        """Log that MX host *dest* of *domain* was passed over for *error* (REQUIRETLS, a TLS policy)."""
        self.log.info(
            "{queue_id} for {domain}: {host} [{address}] not used: {error}",
            queue_id=queue_id,
            domain=domain,
            host=dest.host,
            address=dest.address,
            error=error,
        )

    async def _destinations(self, domain: str) -> list[tuple[Destination, int]]:
        if self.smarthost is not None:
            return [(Destination(self.smarthost.host, self.smarthost.host, 0), self.smarthost.port)]
        found = await self.resolver.resolve(domain)
        return [(dest, self.relay_port) for dest in found]

    async def _deliver_remote(
        self, entry: QueueEntry, domain: str, rcpts: list[str]
    ) -> dict[str, RecipientState]:
        now = self._now()
        changes: dict[str, RecipientState] = {}
        attempts = {r: entry.recipients[r].attempts + 1 for r in rcpts}
        try:
            destinations = await self._destinations(domain)
        except (NullMX, NoRoute) as e:
            status = e.status
            for rcpt in rcpts:
                self.log.info(
                    "{queue_id} to <{rcpt}>: no route: {error}",
                    queue_id=entry.queue_id,
                    message_id=entry.envelope.message_id,
                    rcpt=rcpt,
                    error=str(e),
                )
                if e.temporary:
                    changes[rcpt] = self._temporary(
                        entry, entry.recipients[rcpt], attempts[rcpt], now, str(e), None, status
                    )
                else:
                    changes[rcpt] = self._failed(
                        entry.recipients[rcpt], attempts[rcpt], now, str(e), None, status
                    )
            return changes

        env = entry.envelope
        recipients = [(r, self._dsn_params(self._rcpt_params(entry, r), ("NOTIFY", "ORCPT"))) for r in rcpts]
        mail_params = self._dsn_params(
            {k.upper(): v for k, v in env.mail_params.items() if v}, ("RET", "ENVID")
        )
        body = (env.mail_params.get("BODY") or "").upper()
        last_error = "no mail exchanger to try"
        last_host: str | None = None
        last_address = ""
        result: Any = None
        # RFC 8689: REQUIRETLS is kept in the envelope's MAIL parameters.
        require_tls = "REQUIRETLS" in env.mail_params
        security = self.security if self.smarthost is None else None
        sts: Any = None
        ignore_policies = False
        if security is not None:
            sts = await security.domain_policy(domain)
            if not require_tls:
                ignore_policies = await self._tls_required_no(entry)
        missing_requiretls = 0
        for dest, port in destinations:
            tls_policy = self._policy(domain)
            context = None
            plan = None
            if require_tls and self.smarthost is None and not _mx_secured(dest, sts):
                # RFC 8689 section 4.2.1: the MX host must come from a
                # DNSSEC-validated lookup or match the domain's MTA-STS policy.
                missing_requiretls += 1
                last_host, last_address = dest.host, f"{dest.address}:{port}"
                last_error = (
                    f"REQUIRETLS: the MX host {dest.host} of {domain} is secured neither by DNSSEC"
                    " nor by an MTA-STS policy"
                )
                self._not_used(entry.queue_id, domain, dest, last_error)
                continue
            if security is not None:
                plan = await security.plan(
                    domain,
                    sts,
                    dest,
                    default_policy=tls_policy,
                    require_tls=require_tls,
                    ignore_policies=ignore_policies,
                )
                if plan.refused is not None:
                    security.record(domain, plan, dest, None)
                    last_host, last_address = dest.host, f"{dest.address}:{port}"
                    last_error = f"TLS policy refuses {dest.host}: {plan.refused}"
                    self._not_used(entry.queue_id, domain, dest, last_error)
                    continue
                tls_policy, context = plan.tls_policy, plan.context
            elif require_tls:
                tls_policy = "verify"  # RFC 8689 section 4.2.1: a WebPKI-valid certificate
            f = await self.queue.open_entry_message(entry.queue_id)
            try:
                result = await self.deliver(
                    RelayRequest(
                        host=dest.address,
                        port=port,
                        hostname=self.hostname,
                        mail_from=env.mail_from,
                        recipients=recipients,
                        message=f,
                        size=entry.size,
                        needs_8bit=body == "8BITMIME",
                        needs_smtputf8="SMTPUTF8" in env.mail_params,
                        mail_params=mail_params,
                        tls_policy=tls_policy,
                        tls_context_factory=context,
                        require_tls=require_tls,
                        tls_hostname=dest.host,
                        trust_root=self.trust_root,
                        auth=self.smarthost.auth if self.smarthost else None,
                        allow_plaintext_auth=self.smarthost is not None,
                        timeout=self.timeout,
                    )
                )
            finally:
                f.close()
            last_host, last_address = dest.host, f"{dest.address}:{port}"
            if security is not None and plan is not None:
                security.record(domain, plan, dest, result)
            if require_tls and not result.temporary and "5.7.30" in (result.error or ""):
                # RFC 8689 section 5: only when no next hop offers REQUIRETLS.
                missing_requiretls += 1
                last_error = result.error
                result = None
                continue
            if result.per_recipient or result.message_reply is not None or not result.temporary:
                break  # it answered: its word decides
            last_error = result.error or "no answer"
            self.log.info(
                "{queue_id} for {domain}: {host} [{address}] port {port}: {error}; trying the next host",
                queue_id=entry.queue_id,
                message_id=entry.envelope.message_id,
                domain=domain,
                host=dest.host,
                address=dest.address,
                port=port,
                error=last_error,
            )
            result = None

        for rcpt in rcpts:
            if result is None and missing_requiretls and missing_requiretls == len(destinations):
                self.log.info(
                    "{queue_id} to <{rcpt}>: no mail exchanger can take it with REQUIRETLS",
                    queue_id=entry.queue_id,
                    rcpt=rcpt,
                )
                changes[rcpt] = self._failed(
                    entry.recipients[rcpt], attempts[rcpt], now, last_error, last_host, "5.7.30"
                )
                continue
            if result is None:
                self.log.info(
                    "{queue_id} to <{rcpt}>: every host failed: {error}",
                    queue_id=entry.queue_id,
                    message_id=entry.envelope.message_id,
                    rcpt=rcpt,
                    error=last_error,
                )
                changes[rcpt] = self._temporary(
                    entry, entry.recipients[rcpt], attempts[rcpt], now, last_error, last_host, "4.4.1"
                )
                continue
            status = result.status(rcpt)
            reply = result.reply_for(rcpt)
            text = reply.as_text() if reply is not None else (result.error or "no reply")
            code = (reply.enhanced if reply is not None and reply.enhanced else None) or _status_of(
                text, status
            )
            self.log.info(
                "{queue_id} to <{rcpt}> via {host} [{address}]: {status}: {reply}",
                queue_id=entry.queue_id,
                message_id=entry.envelope.message_id,
                rcpt=rcpt,
                host=last_host,
                address=last_address,
                status=status,
                reply=text,
            )
            if status == "delivered":
                changes[rcpt] = dataclasses.replace(
                    entry.recipients[rcpt],
                    state=DeliveryState.DELIVERED,
                    attempts=attempts[rcpt],
                    last_attempt=now,
                    host=last_host,
                    reply=text,
                    status=code,
                    next_attempt=None,
                )
                # RFC 3461 section 5.2.1: a server that advertised DSN got the
                # NOTIFY and reports success itself; section 5.2.2: for one that
                # did not, our responsibility ends here ("relayed").
                if not result.dsn:
                    changes[rcpt] = self._wanting_success(changes[rcpt], entry, rcpt, "relayed")
            elif status == "permanent":
                changes[rcpt] = self._failed(
                    entry.recipients[rcpt], attempts[rcpt], now, text, last_host, code
                )
            else:
                changes[rcpt] = self._temporary(
                    entry, entry.recipients[rcpt], attempts[rcpt], now, text, last_host, code
                )
        return changes

    async def _tls_required_no(self, entry: QueueEntry) -> bool:
        """Whether the message's header says ``TLS-Required: No`` (RFC 8689 section 5)."""
        f = await self.queue.open_entry_message(entry.queue_id)
        try:
            head = f.read(_HEADER_PEEK)
        finally:
            f.close()
        end = head.find(b"\r\n\r\n")
        if end < 0:
            end = head.find(b"\n\n")
        header = head if end < 0 else head[:end]
        return _TLS_REQUIRED_NO_RE.search(header) is not None

    def _wanting_success(
        self, st: RecipientState, entry: QueueEntry, rcpt: str, action: Literal["delivered", "relayed"]
    ) -> RecipientState:
        """*st* asking for a success notice of *action*, if the recipient's NOTIFY wants one."""
        if not notify_wants(self._notify_param(entry, rcpt), action):
            return st
        return dataclasses.replace(st, success_action=action, success_sent=False)

    @staticmethod
    def _failed(
        st: RecipientState, attempts: int, now: float, error: str, host: str | None, status: str
    ) -> RecipientState:
        # 4.4.7 (RFC 3463): delivery time expired.
        status = status if status.startswith("5") or status == "4.4.7" else "5.0.0"
        failed = _attempted(st, DeliveryState.FAILED, attempts, now, None, error, host, status)
        return dataclasses.replace(failed, dsn_sent=False)

    def _temporary(
        self,
        entry: QueueEntry,
        st: RecipientState,
        attempts: int,
        now: float,
        error: str,
        host: str | None,
        status: str,
    ) -> RecipientState:
        nxt = self.schedule.next_attempt(entry.created, attempts, now)
        if nxt is None:
            return self._failed(st, attempts, now, f"{error} (gave up: delivery time expired)", host, "4.4.7")
        status = status if status.startswith("4") else "4.0.0"
        return _attempted(st, DeliveryState.DEFERRED, attempts, now, nxt, error, host, status)

    # -- notices ------------------------------------------------------------

    async def _notify(self, entry: QueueEntry) -> None:
        env = entry.envelope
        now = self._now()
        failed = [
            r for r, st in entry.recipients.items() if st.state is DeliveryState.FAILED and not st.dsn_sent
        ]
        delayed = [
            r
            for r, st in entry.recipients.items()
            if st.state is DeliveryState.DEFERRED
            and self.schedule.should_send_delay_notice(entry.created, now, st.delay_notice_sent)
        ]
        if failed:
            wanted = [r for r in failed if notify_wants(self._notify_param(entry, r), "failed")]
            if wanted and should_bounce(env.mail_from):
                await self._send_notice(entry, wanted, "failed", now)
            elif wanted:
                self.log.info(
                    "{queue_id}: no bounce for {count} failed recipient(s): null sender",
                    queue_id=entry.queue_id,
                    message_id=entry.envelope.message_id,
                    count=len(wanted),
                )
            await self._update(
                entry, {r: dataclasses.replace(entry.recipients[r], dsn_sent=True) for r in failed}
            )
        if delayed:
            wanted = [r for r in delayed if notify_wants(self._notify_param(entry, r), "delayed")]
            if wanted and should_bounce(env.mail_from):
                await self._send_notice(entry, wanted, "delayed", now)
            await self._update(
                entry, {r: dataclasses.replace(entry.recipients[r], delay_notice_sent=True) for r in delayed}
            )
        # RFC 3461 section 4.1 NOTIFY=SUCCESS: the wish was recorded when the
        # recipient was delivered (_wanting_success), with the action to report.
        succeeded = [
            r
            for r, st in entry.recipients.items()
            if st.state is DeliveryState.DELIVERED and st.success_sent is False
        ]
        if succeeded:
            if should_bounce(env.mail_from):
                await self._send_notice(entry, succeeded, "success", now)
            await self._update(
                entry, {r: dataclasses.replace(entry.recipients[r], success_sent=True) for r in succeeded}
            )

    def _notify_param(self, entry: QueueEntry, rcpt: str) -> str | None:
        return self._rcpt_params(entry, rcpt).get("NOTIFY")

    async def _send_notice(self, entry: QueueEntry, rcpts: list[str], kind: str, now: float) -> None:
        """
        One DSN about *rcpts* to the envelope sender, through the router.
        *kind* is ``failed``, ``delayed`` or ``success`` (each recipient's
        action is then its ``success_action``: ``delivered`` or ``relayed``).
        """
        env = entry.envelope
        statuses = []
        for rcpt in rcpts:
            st = entry.recipients[rcpt]
            orcpt = self._rcpt_params(entry, rcpt).get("ORCPT")
            action = (st.success_action or "delivered") if kind == "success" else kind
            status = st.status or {"failed": "5.0.0", "delayed": "4.0.0"}.get(kind, "2.0.0")
            if kind == "success" and not status.startswith("2"):
                status = "2.0.0"  # RFC 3464 section 2.3.4: a 2.X.X status for delivered/relayed
            statuses.append(
                RecipientStatus(
                    recipient=rcpt,
                    action=action,
                    status=status,
                    diagnostic=st.reply if kind == "success" else st.last_error,
                    remote_mta=st.host,
                    original_recipient=xtext_decode(orcpt) if orcpt else None,
                    last_attempt=st.last_attempt,
                    will_retry_until=self.schedule.expires_at(entry.created) if action == "delayed" else None,
                )
            )
        f = await self.queue.open_entry_message(entry.queue_id)
        try:
            original = f.read()
        finally:
            f.close()
        ret = (env.mail_params.get("RET") or "").upper()
        envid = env.mail_params.get("ENVID")
        data = make_dsn(
            reporting_mta=self.hostname,
            sender=env.mail_from,
            recipients=statuses,
            original=original,
            # RFC 8689 section 5: a notice about a REQUIRETLS message, which
            # goes out without that protection, returns only the header.
            return_full=ret == "FULL" and "REQUIRETLS" not in env.mail_params,
            envid=xtext_decode(envid) if envid else None,
            arrival=env.received_at or entry.created,
            now=now,
            postmaster=self.postmaster,
        )
        ok = await deliver_notice(
            self.router.deliver,
            env.mail_from,
            data,
            message_id=f"{entry.queue_id}.dsn",
            received_at=now,
            hostname=self.hostname,
            local=self.is_local(split_address(env.mail_from)[1]),
            sign=getattr(self.router, "sign_notice", None),
        )
        self.log.info(
            "{queue_id}: {action} notice for {rcpts} to <{sender}>: {outcome}",
            queue_id=entry.queue_id,
            message_id=entry.envelope.message_id,
            action=kind,
            rcpts=", ".join(rcpts),
            sender=env.mail_from,
            outcome="sent" if ok else "could not be sent",
        )


def _attempted(
    st: RecipientState,
    state: DeliveryState,
    attempts: int,
    now: float,
    next_attempt: float | None,
    error: str,
    host: str | None,
    status: str,
) -> RecipientState:
    """*st* after an attempt at *now* that failed with *error* (at *host*) and left it in *state*."""
    return dataclasses.replace(
        st,
        state=state,
        attempts=attempts,
        last_attempt=now,
        next_attempt=next_attempt,
        last_error=error,
        host=host,
        status=status,
    )


def _status_of(text: str, status: str) -> str:
    """An RFC 3463 code for a reply without one: from its text, else from its class."""
    m = _ENHANCED_RE.search(text)
    if m:
        return m.group(1)
    return {"delivered": "2.0.0", "permanent": "5.0.0"}.get(status, "4.0.0")


def _fire_then_pass(result: Any, d: defer.Deferred[None]) -> Any:
    """Fire *d* with ``None``, then pass *result* on unchanged (an ``addBoth`` callback)."""
    d.callback(None)
    return result


def _mx_secured(dest: Any, sts: Any) -> bool:
    """
    Whether MX host *dest* (a :class:`~txmail.delivery.mx.Destination`) is
    one a REQUIRETLS message may go to (RFC 8689 section 4.2.1): its MX
    lookup was DNSSEC-validated (with ``[outbound] dane``, whose validating
    resolver is trusted for the AD bit), or the domain's MTA-STS policy
    (*sts*, a :class:`~txmail.delivery.mtasts.Lookup` or ``None``) names it.
    """
    if getattr(dest, "mx_secure", False):
        return True
    policy = getattr(sts, "policy", None)
    return policy is not None and policy.mode in ("enforce", "testing") and bool(policy.matches(dest.host))
