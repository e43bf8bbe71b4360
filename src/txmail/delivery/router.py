"""
The delivery router (:class:`txmail.interfaces.IDeliveryRouter`): decides,
for each recipient, between a local mailbox and the outbound queue.

Implementation notes:

* RCPT time: a recipient in a local domain must resolve in the directory
  (else ``550 5.1.1``); a recipient elsewhere is accepted only from an
  authenticated client (else ``554 5.7.1``: no open relay).  The SMTP grammar
  has already refused source routes, ``%``/``!`` hacks and IP literals that
  could smuggle a remote destination past this check; the router checks the
  domain after the last ``@`` only.
* After DATA: the message is parsed once (metadata shared by every local
  copy), each local user gets one copy in their INBOX (aliases expanded,
  duplicates removed), and remote addresses go to the queue in one entry.
  Copies are made in parallel; the report fires once each is durable.
* A local copy that fails is put in the queue for that user (a later run
  retries it), so one broken mailbox never loses the others' mail.  Only if
  that also fails does its recipient count as failed.
* Delivery hooks (:mod:`txmail.delivery.hooks`) run first, in order, before
  any copy is made: each may accept, reject (every recipient fails with its
  reply), rewrite the recipients (later hooks and the delivery see the new
  list; the report then has one result per new recipient) or consume the
  message (every recipient counts as delivered, nothing is stored here).  A
  hook that fails makes every recipient fail temporarily (``451 4.3.0``), so
  the client retries and nothing is lost or half-delivered.
  :meth:`DeliveryRouter.without_hooks` gives the same router without hooks,
  for mail the server itself re-delivers or writes (queue runner, DSNs).
* Forwarding (:mod:`txmail.delivery.forward`): addresses that a local
  alias sends to another domain are queued as their own entry, with the
  envelope sender rewritten by SRS and the message ARC-sealed, when the
  router has a :class:`~txmail.delivery.forward.Forwarding`.  An SRS address
  of ours that does not name a user (a bounce coming back) is accepted when
  its hash and age check out, and delivered to the original sender.
* The server's own notices (DSNs) are DKIM-signed with ``notice_signer``
  when there is one.
* Quotas (:mod:`txmail.quota`), when the router has limits and the store
  reports its usage: a recipient that names one local user whose mailbox is
  full is refused at RCPT (``452 4.2.2``).  After DATA, a copy that does not
  fit fails with ``452 4.2.2`` (``552 5.2.2`` when the message alone is
  larger than the limit) instead of being queued, when the message came
  over LMTP (each recipient has its own reply) or when every copy of the
  message failed that way (the client gets the reply); otherwise it is
  queued like any failed copy, so the other recipients' 250 stands, and
  the queue runner tries it again (:meth:`DeliveryRouter.redeliver`) until
  it fits, it is given up, or it can never fit (a bounce at once).
* Sieve (:mod:`txmail.delivery.sieve`), when the router has a
  :class:`~txmail.delivery.sieve.SieveDelivery`: a local user whose store
  has an active script gets what the script decides instead of the INBOX
  copy (:meth:`DeliveryRouter._deliver_filtered`): keep and fileinto (with
  flags, ``:create``, the header section editheader left), discard,
  redirect (queued as a new envelope, SRS sender), vacation replies and
  rejections (sent from ``<>`` through this router: local copies or the
  queue).  An ``ereject`` refuses the recipient in the transaction (``550
  5.7.1``, RFC 5429 section 2.1.1) when that reply can be the recipient's
  own: over LMTP, or over SMTP when every recipient of the message is
  refused that way; otherwise, and for ``reject``, the sender gets a
  rejection message.  Any failure of a filing action falls back to the
  INBOX.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import socket
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail import mime
from txmail._fs import RunBlocking, run_inline
from txmail.delivery.bounce import RecipientStatus, make_dsn, notify_wants, should_bounce
from txmail.delivery.hooks import DeliveryHook, HookAction, HookResult, hook_callables
from txmail.delivery.sieve import (
    Evaluation,
    SieveDelivery,
    SieveRejected,
    redirected_copy,
    reject_reply,
    rejection_notice,
    usable_flags,
)
from txmail.errors import MailboxExists, NoSuchMailbox, NoSuchUser
from txmail.interfaces import (
    IDeliveryRouter,
    IDirectory,
    IInboxDelivery,
    IMailbox,
    IMailStore,
    IMailStoreProvider,
    IQueue,
    IStorageUsage,
)
from txmail.metrics import NULL_METRICS
from txmail.model import (
    INBOX,
    DeliveryReport,
    Envelope,
    MessageMetadata,
    MessageSource,
    RecipientResult,
    SpecialUse,
)
from txmail.quota import FULL_REPLY, QuotaExceeded, Quotas, Usage
from txmail.sieve import Discard, FileInto, Keep, Redirect, Reject, SieveMessage, Vacation, rebuild_message
from txmail.smtp import codes
from txmail.smtp.codes import Reply
from txmail.smtp.grammar import xtext_decode

if TYPE_CHECKING:
    from txmail.delivery.forward import Forwarding
    from txmail.policy.authentication import MessageSigner

__all__ = ["HOOK_FAILED_REPLY", "INLINE_PARSE_LIMIT", "DeliveryRouter", "split_address"]

#: The result of every recipient when a delivery hook fails (RFC 3463
#: 4.3.0: other or undefined mail system status, temporary).
HOOK_FAILED_REPLY = codes.LOCAL_ERROR
#: A local recipient the directory does not know.
_NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
#: A remote recipient from a client that has not authenticated.
_RELAY_DENIED = Reply(554, "5.7.1", "Relay access denied")
#: A recipient without a domain.
_BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
#: A local copy that failed (the router queues no retry).
_LOCAL_DELIVERY_FAILED = Reply(451, "4.3.0", "Local delivery failed")
#: A recipient whose destinations did not all take the message, for no reason given.
_DELIVERY_FAILED = Reply(451, "4.3.0", "Delivery failed")

#: Messages up to this size are parsed on the calling thread; bigger ones
#: go through ``run_blocking``.
INLINE_PARSE_LIMIT = 256 * 1024


def split_address(address: str) -> tuple[str, str]:
    """Split at the last ``@``: ``(local part, lower-cased domain)``; domain ``""`` if none."""
    local, at, domain = address.rpartition("@")
    if not at:
        return address, ""
    return local, domain.lower().rstrip(".")


def stored_xtext(value: str) -> str:
    """A stored RFC 3461 xtext value (ENVID, ORCPT) as text; a value that is not xtext stays as it is."""
    decoded = xtext_decode(value)
    return value if decoded is None else decoded


@defer.inlineCallbacks
def deliver_notice(
    deliver: Callable[[Envelope, MessageSource], defer.Deferred[DeliveryReport]],
    sender: str,
    data: bytes,
    *,
    message_id: str,
    received_at: float,
    hostname: str,
    local: bool,
    sign: Callable[[bytes], defer.Deferred[bytes]] | None = None,
) -> Generator[Any, Any, bool]:
    """
    Deliver a delivery status notification (*data*, from
    :func:`txmail.delivery.bounce.make_dsn`) to *sender* from the null
    reverse-path through *deliver* (``deliver(envelope, message_source)``, a
    router's).  A local sender's copy gets ``Return-Path: <>`` (RFC 5321
    section 4.4: final delivery records the reverse-path).  The message is
    handed over from memory (:meth:`MessageSource.from_bytes`).  *sign*
    (``sign(data) -> Deferred[bytes]``, a
    :class:`~txmail.policy.authentication.MessageSigner`'s) gives header
    fields (a DKIM signature) to put on top.  Fires with whether every copy
    was delivered or queued.
    """
    if sign is not None:
        data = (yield sign(data)) + data
    if local:
        data = b"Return-Path: <>\r\n" + data
    envelope = Envelope(
        mail_from="",
        rcpt_to=(sender,),
        received_at=received_at,
        message_id=message_id,
        helo=hostname,
    )
    report = yield deliver(envelope, MessageSource.from_bytes(data))
    return all(r.ok for r in report.results)


def _parse_source(message: MessageSource) -> MessageMetadata:
    with message.open() as f:
        return mime.parse_metadata(f)


@implementer(IDeliveryRouter)
class DeliveryRouter:
    """
    Args:
        directory: who is local.
        stores: gives each local user's mailbox store.
        queue: where remote recipients (and failed local copies) go.
        run_blocking: runs CPU-heavy parsing off the reactor thread.
        primary_domain: the domain ``<Postmaster>`` (no domain) belongs to.
        hooks: delivery hooks (:mod:`txmail.delivery.hooks`) run in order
            on each message before it is delivered: one hook, a list, or
            ``None``.
        hostname: this server's name, the Reporting-MTA of the success
            notices it sends for local deliveries (RFC 3461 NOTIFY=SUCCESS);
            default the machine's name.
        forwarding: a :class:`txmail.delivery.forward.Forwarding` (SRS,
            ARC sealing) for mail that aliases forward elsewhere, or ``None``.
        notice_signer: a :class:`txmail.policy.authentication.MessageSigner`
            for the notices the server writes, or ``None``.
        sieve: a :class:`txmail.delivery.sieve.SieveDelivery` to run users'
            active Sieve scripts, or ``None`` (no filtering).

    Attributes:
        hooks: the hooks' functions, in order (a tuple).
        metrics: the server's :class:`txmail.metrics.Metrics` (local
            copies delivered, the store's delivery latency), or the no-op
            ones.
    """

    log = Logger()
    metrics: Any = NULL_METRICS

    def __init__(
        self,
        directory: IDirectory,
        stores: IMailStoreProvider,
        queue: IQueue,
        *,
        run_blocking: RunBlocking | None = None,
        primary_domain: str = "localhost",
        hooks: DeliveryHook | Sequence[DeliveryHook] | None = None,
        hostname: str | None = None,
        forwarding: Forwarding | None = None,
        notice_signer: MessageSigner | None = None,
        quotas: Quotas | None = None,
        sieve: SieveDelivery | None = None,
    ) -> None:
        self.sieve = sieve
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        self._requeue = True
        self.primary_domain = primary_domain
        self.hostname = hostname or socket.gethostname()
        self.directory = directory
        self.stores = stores
        self.queue = queue
        self._run = run_blocking or run_inline
        self.hooks = hook_callables(hooks)
        self.forwarding = forwarding
        self.notice_signer = notice_signer

    @property
    def sign_notice(self) -> Callable[[bytes], defer.Deferred[bytes]] | None:
        """``sign(data) -> Deferred[bytes]`` for the server's notices, or ``None``."""
        return self.notice_signer.sign if self.notice_signer is not None else None

    def without_hooks(self) -> DeliveryRouter:
        """This router (same directory, stores and queue) with no delivery hooks."""
        if not self.hooks:
            return self
        router = DeliveryRouter(
            self.directory,
            self.stores,
            self.queue,
            run_blocking=self._run,
            primary_domain=self.primary_domain,
            hostname=self.hostname,
            forwarding=self.forwarding,
            notice_signer=self.notice_signer,
            quotas=self.quotas,
            sieve=self.sieve,
        )
        router.metrics = self.metrics
        return router

    def redeliver(self, envelope: Envelope, message: MessageSource) -> defer.Deferred[DeliveryReport]:
        """
        Deliver a message the queue holds for local recipients (the queue
        runner's retry): no hooks, and a copy that fails is reported as
        failed (its reply, temporary or not) instead of being queued again.
        """
        router = copy.copy(self.without_hooks())
        router._requeue = False
        return router.deliver(envelope, message)

    @defer.inlineCallbacks
    def _usage(self, user: str) -> Generator[Any, Any, Usage | None]:
        """*user*'s :class:`~txmail.quota.Usage`, or ``None`` when the store keeps none."""
        store: IMailStore = yield self.stores.store_for(user)
        if not IStorageUsage.providedBy(store):
            return None
        usage: Usage = yield store.usage()
        return usage

    def _qualify(self, address: str) -> str:
        """
        RFC 5321 section 4.5.1: ``<Postmaster>`` without a domain MUST be
        accepted; it means the postmaster of the primary domain.
        """
        if address.lower() == "postmaster":
            return f"postmaster@{self.primary_domain}"
        return address

    def _is_local(self, domain: str) -> bool:
        return bool(domain) and bool(self.directory.is_local_domain(domain))

    @defer.inlineCallbacks
    def check_recipient(
        self, address: str, authenticated_user: str | None = None
    ) -> Generator[Any, Any, RecipientResult]:
        """See :meth:`txmail.interfaces.IDeliveryRouter.check_recipient`."""
        address = self._qualify(address)
        _, domain = split_address(address)
        if self._is_local(domain):
            try:
                resolved = yield self.directory.resolve_recipient(address)
            except NoSuchUser:
                if self._srs_original(address) is not None:
                    return RecipientResult(address, ok=True)
                return RecipientResult(address, ok=False, reply=_NO_SUCH_USER)
            if (
                self.quotas is not None
                and len(resolved) == 1
                and self._is_local(split_address(resolved[0])[1])
            ):
                user = resolved[0]
                usage = yield self._usage(user)
                if usage is None:
                    usage = Usage()
                if self.quotas.full(user, usage):
                    return RecipientResult(address, ok=False, temporary=True, reply=FULL_REPLY)
            return RecipientResult(address, ok=True)
        if authenticated_user is None:
            return RecipientResult(address, ok=False, reply=_RELAY_DENIED)
        if not domain:
            return RecipientResult(address, ok=False, reply=_BAD_RECIPIENT)
        return RecipientResult(address, ok=True)

    def _srs_original(self, address: str) -> str | None:
        """The original sender behind one of our SRS addresses (a returning bounce), or ``None``."""
        if self.forwarding is None:
            return None
        return self.forwarding.original(address)

    @defer.inlineCallbacks
    def _targets(self, envelope: Envelope) -> Any:
        """
        Map each recipient to (local users, remote addresses); also the set
        of remote addresses that a local alias forwards to.
        """
        targets: dict[str, tuple[list[str], list[str]]] = {}
        forwarded: set[str] = set()
        for rcpt in envelope.rcpt_to:
            local_users: list[str] = []
            remote: list[str] = []
            address = self._qualify(rcpt)
            _, domain = split_address(address)
            if self._is_local(domain):
                try:
                    resolved = yield self.directory.resolve_recipient(address)
                except NoSuchUser:
                    resolved = []
                    original = self._srs_original(address)
                    if original is not None:
                        remote.append(original)
                for addr in resolved:
                    if self._is_local(split_address(addr)[1]):
                        local_users.append(addr)
                    else:
                        remote.append(addr)
                        forwarded.add(addr)
            else:
                remote.append(rcpt)
            targets[rcpt] = (local_users, remote)
        return targets, forwarded

    @defer.inlineCallbacks
    def deliver(self, envelope: Envelope, message: MessageSource) -> Generator[Any, Any, DeliveryReport]:
        """
        See :meth:`txmail.interfaces.IDeliveryRouter.deliver`.  The hooks
        run first (see the module notes).
        """
        if self.hooks:
            outcome = yield self._run_hooks(envelope, message)
            if isinstance(outcome, DeliveryReport):
                return outcome
            envelope = outcome
        report: DeliveryReport = yield self._route(envelope, message)
        yield self._notify_success(envelope, message, report)
        return report

    @defer.inlineCallbacks
    def _notify_success(self, envelope: Envelope, message: MessageSource, report: DeliveryReport) -> Any:
        """
        RFC 3461 section 4.1: a "delivered" notice to the sender for each
        recipient that asked for NOTIFY=SUCCESS and was delivered into a
        local mailbox here (recipients that went to the queue get theirs
        from the queue runner).  Never for the null sender; a notice that
        cannot be sent is logged and changes nothing about the delivery.
        """
        if not should_bounce(envelope.mail_from):
            return
        params = dict(zip(envelope.rcpt_to, envelope.rcpt_params, strict=False))
        wanted = []
        for result in report.results:
            notify = (params.get(result.recipient) or {}).get("NOTIFY")
            if not result.ok or not notify_wants(notify, "delivered"):
                continue
            dests = [d for d in result.detail.split(",") if d]
            if not dests or not all(self._is_local(split_address(d)[1]) for d in dests):
                continue
            orcpt = (params.get(result.recipient) or {}).get("ORCPT")
            wanted.append(
                RecipientStatus(
                    recipient=result.recipient,
                    action="delivered",
                    status="2.0.0",
                    diagnostic="smtp; " + result.reply.as_text() if result.reply else None,
                    original_recipient=stored_xtext(orcpt) if orcpt else None,
                )
            )
        if not wanted:
            return
        try:
            original = message.data if message.data is not None else (yield self._run(message.read))
            envid = envelope.mail_params.get("ENVID")
            data = make_dsn(
                reporting_mta=self.hostname,
                sender=envelope.mail_from,
                recipients=wanted,
                original=original,
                envid=stored_xtext(envid) if envid else None,
                arrival=envelope.received_at or None,
            )
            sent = yield deliver_notice(
                self._route,
                envelope.mail_from,
                data,
                message_id=f"{envelope.message_id}.dsn",
                received_at=envelope.received_at,
                hostname=self.hostname,
                local=self._is_local(split_address(envelope.mail_from)[1]),
                sign=self.sign_notice,
            )
            self.log.info(
                "{message_id}: delivered notice for {rcpts} to <{sender}>: {outcome}",
                message_id=envelope.message_id,
                rcpts=", ".join(w.recipient for w in wanted),
                sender=envelope.mail_from,
                outcome="sent" if sent else "could not be sent",
            )
        except Exception:
            self.log.failure(
                "{message_id}: the delivered notice could not be made", message_id=envelope.message_id
            )

    @defer.inlineCallbacks
    def _run_hooks(self, envelope: Envelope, message: MessageSource) -> Any:
        """Run the hooks: the (possibly rewritten) envelope, or the final DeliveryReport."""
        original = envelope
        for hook in self.hooks:
            try:
                # A hook may answer with a plain value, a Deferred, or raise.
                result = yield defer.maybeDeferred(hook, envelope, message)
                if result is None:
                    result = HookResult.accept()
                if not isinstance(result, HookResult):
                    raise TypeError(f"delivery hook returned {result!r}, not a HookResult")
            except Exception:
                self.log.failure(
                    "delivery hook {hook} failed on {message_id}; refusing it temporarily",
                    failure=Failure(),
                    hook=getattr(hook, "__qualname__", repr(hook)),
                    message_id=envelope.message_id,
                )
                return _report_all(original, ok=False, temporary=True, reply=HOOK_FAILED_REPLY, detail="hook")
            if result.action is HookAction.REJECT:
                self.log.info(
                    "delivery hook rejected {message_id}: {reply}",
                    message_id=envelope.message_id,
                    reply=result.reply,
                )
                return _report_all(
                    original, ok=False, temporary=result.temporary, reply=result.smtp_reply, detail="hook"
                )
            if result.action is HookAction.CONSUME:
                self.log.info(
                    "delivery hook took {message_id}: {detail}",
                    message_id=envelope.message_id,
                    detail=result.detail,
                )
                return _report_all(original, ok=True, reply=codes.OK, detail=result.detail or "hook")
            if result.action is HookAction.REWRITE:
                self.log.info(
                    "delivery hook rewrote the recipients of {message_id}: {recipients}",
                    message_id=envelope.message_id,
                    recipients=", ".join(result.recipients),
                )
                envelope = _with_recipients(envelope, result.recipients)
        return envelope

    @defer.inlineCallbacks
    def _route(self, envelope: Envelope, message: MessageSource) -> Any:
        """Deliver to local mailboxes and the queue (no hooks)."""
        targets, forwarded = yield self._targets(envelope)
        users = list(dict.fromkeys(u for local, _ in targets.values() for u in local))
        remote = list(dict.fromkeys(r for _, rem in targets.values() for r in rem))
        if self.forwarding is None:
            forwarded = set()
        if envelope.hold is not None:
            # On hold: every copy (local ones too) waits in the queue until
            # an administrator releases it; forwarded copies go out as
            # ordinary relayed ones then.
            held = users + remote
            queued = bool(held) and (yield self._enqueue(envelope, message, held))
            return _report_targets(targets, dict.fromkeys(held, queued))
        onward = [r for r in remote if r in forwarded]
        remote = [r for r in remote if r not in forwarded]

        outcome: dict[str, bool] = {}
        failures: dict[str, tuple[Reply, bool]] = {}  # destination -> (reply, temporary)
        lmtp = envelope.protocol.upper().startswith("LMTP")
        scripted: dict[str, tuple[IMailStore, tuple[str, bytes]]] = {}
        if users and self.sieve is not None:
            scripted = yield self.sieve.active_scripts(self.stores, users)
        if users:
            if message.metadata is None:
                # Small messages parse in tens of microseconds: cheaper here
                # than a round trip through the thread pool, and it keeps
                # CPU work (and the GIL) off the worker threads, which then
                # only wait on the disk.
                if message.data is not None and len(message.data) <= INLINE_PARSE_LIMIT:
                    metadata = mime.parse_metadata(message.data)
                elif message.size <= INLINE_PARSE_LIMIT and message.local_path is not None:
                    metadata = _parse_source(message)
                else:
                    metadata = yield self._run(_parse_source, message)
                message = message.with_metadata(metadata)
            at_once = yield self._deliver_inboxes(envelope, message, [u for u in users if u not in scripted])
            evaluations: dict[str, Evaluation] = {}
            data = b""
            if scripted:
                data, evaluations = yield self._evaluate(envelope, message, targets, scripted)
            # RFC 5429 section 2.1.1: ereject in the transaction only where
            # the reply is this recipient's alone (see the module notes).
            at_protocol = self._requeue and (
                lmtp
                or (
                    len(evaluations) == len(users)
                    and not remote
                    and not onward
                    and all(e.ereject for e in evaluations.values())
                )
            )
            results = yield defer.DeferredList(
                [
                    defer.succeed(at_once[user])
                    if user in at_once
                    else self._deliver_filtered(envelope, message, data, evaluations[user], at_protocol)
                    if user in evaluations
                    else self._deliver_local(envelope, message, user)
                    for user in users
                ],
                consumeErrors=True,
            )
            retry: list[str] = []
            over: dict[str, QuotaExceeded] = {}
            for user, (ok, value) in zip(users, results, strict=True):
                if ok:
                    outcome[user] = True
                elif value.check(SieveRejected):
                    failures[user] = (value.value.reply, False)
                elif value.check(QuotaExceeded):
                    over[user] = value.value
                elif not self._requeue:
                    self.log.failure(
                        "local delivery to {user} failed",
                        failure=value,
                        user=user,
                        message_id=envelope.message_id,
                    )
                    failures[user] = (_LOCAL_DELIVERY_FAILED, True)
                else:
                    self.log.failure(
                        "local delivery to {user} failed; queueing it for retry",
                        failure=value,
                        user=user,
                        message_id=envelope.message_id,
                    )
                    retry.append(user)
            if over:
                # Each recipient its own reply (LMTP, the queue's retry), or
                # the client's reply when no copy went anywhere; else queue.
                alone = len(over) == len(users) and not remote and not onward
                for user, exceeded in over.items():
                    self.log.info(
                        "{message_id} for {user}: {reply}",
                        message_id=envelope.message_id,
                        user=user,
                        reply=exceeded.reply.as_text(),
                    )
                    if lmtp or alone or not self._requeue:
                        failures[user] = (exceeded.reply, not exceeded.permanent)
                    else:
                        retry.append(user)
            if retry:
                queued = yield self._enqueue(envelope, message, retry)
                for user in retry:
                    outcome[user] = queued
        if remote:
            queued = yield self._enqueue(envelope, message, remote)
            for addr in remote:
                outcome[addr] = queued
        if onward:
            queued = yield self._forward(envelope, message, onward)
            for addr in onward:
                outcome[addr] = queued

        return _report_targets(targets, outcome, failures)

    @defer.inlineCallbacks
    def _deliver_inboxes(self, envelope: Envelope, message: MessageSource, users: list[str]) -> Any:
        """
        The copies for *users* made at once by a provider that offers it
        (:class:`txmail.interfaces.IInboxDelivery`): those going to the
        INBOX with no quota to check (one user too: one round trip instead
        of several).  ``{user: UID}`` of the copies made; the other users (and all of
        them when it fails, logged) go one by one
        (:meth:`_deliver_local`).
        """
        folder = envelope.folder
        if not IInboxDelivery.providedBy(self.stores) or (folder is not None and folder.upper() != INBOX):
            return {}
        quotas = self.quotas
        wanted = [u for u in users if quotas is None or quotas.limit_for(u) is None]
        if not wanted:
            return {}
        metrics = self.metrics
        started = metrics.timer()
        try:
            uids = yield self.stores.deliver_to_inboxes(wanted, message, envelope.received_at or None)
            metrics.store("deliver", metrics.timer() - started)
        except Exception:
            self.log.failure(
                "{message_id}: delivering to {count} INBOXes at once failed; one at a time",
                failure=Failure(),
                message_id=envelope.message_id,
                count=len(wanted),
            )
            return {}
        for user, uid in uids.items():
            self._delivered(envelope, user, uid)
        return uids

    def _delivered(self, envelope: Envelope, user: str, uid: int) -> int:
        self.metrics.delivered("local")
        self.log.info(
            "delivered {message_id} to {user} uid {uid}",
            message_id=envelope.message_id,
            user=user,
            uid=uid,
            peer=envelope.peer,
        )
        return uid

    def _deliver_local(self, envelope: Envelope, message: MessageSource, user: str) -> defer.Deferred[int]:
        def got_mailbox(mailbox: IMailbox) -> defer.Deferred[int]:
            return mailbox.append(message, (), envelope.received_at or None)

        d: defer.Deferred[Any] = self.stores.store_for(user)
        if self.quotas is not None and self.quotas.limit_for(user) is not None:
            d.addCallback(self._check_quota, user, message.size)
        d.addCallback(self._mailbox_for, envelope.folder, user, envelope.message_id)
        metrics = self.metrics
        if metrics.enabled:

            def timed_append(mailbox: IMailbox) -> defer.Deferred[int]:
                started = metrics.timer()
                appended = got_mailbox(mailbox)

                def measured(uid: int) -> int:
                    metrics.store("deliver", metrics.timer() - started)
                    return uid

                return appended.addCallback(measured)

            d.addCallback(timed_append)
        else:
            d.addCallback(got_mailbox)
        d.addCallback(lambda uid: self._delivered(envelope, user, uid))
        return d

    # -- Sieve (txmail.delivery.sieve) ------------------------------------------

    @defer.inlineCallbacks
    def _evaluate(
        self,
        envelope: Envelope,
        message: MessageSource,
        targets: dict[str, tuple[list[str], list[str]]],
        scripted: dict[str, tuple[IMailStore, tuple[str, bytes]]],
    ) -> Any:
        """The message's octets and ``{user: Evaluation}`` of each user in *scripted* (run at once)."""
        assert self.sieve is not None
        if message.data is not None:
            data = message.data
        elif message.size <= INLINE_PARSE_LIMIT:
            data = message.read()
        else:
            data = yield self._run(message.read)
        parsed = SieveMessage.from_bytes(data)
        rcpt_of: dict[str, str] = {}
        for rcpt, (local, _) in targets.items():
            for user in local:
                rcpt_of.setdefault(user, self._qualify(rcpt))
        users = list(scripted)
        runs = [
            self.sieve.evaluate(
                user,
                store,
                active,
                message=lambda: defer.succeed(parsed),
                size=message.size,
                mail_from=envelope.mail_from,
                rcpt_to=rcpt_of.get(user, user),
                authenticated_user=envelope.authenticated_user,
                addresses=tuple(dict.fromkeys([user, rcpt_of.get(user, user)])),
            )
            for user, (store, active) in scripted.items()
        ]
        done = yield defer.gatherResults(runs, consumeErrors=True)
        return data, dict(zip(users, done, strict=True))

    @defer.inlineCallbacks
    def _deliver_filtered(
        self,
        envelope: Envelope,
        message: MessageSource,
        data: bytes,
        evaluation: Evaluation,
        at_protocol: bool,
    ) -> Any:
        """
        Carry out *evaluation*'s actions for its user (see the module
        notes); fires with the last UID stored (``0``: nothing stored), or
        fails with :class:`SieveRejected` or the error of the INBOX copy.
        """
        assert self.sieve is not None
        user, result = evaluation.user, evaluation.result
        store = evaluation.store
        assert store is not None  # SieveDelivery.evaluate gives every evaluation its store
        notices: list[tuple[str, bytes, str]] = []  # (to, message, kind), sent once the state is saved
        uid = 0
        kept = False  # a copy is in the default mailbox
        fallback = False  # an action failed: keep it in the default mailbox
        try:
            for action in result.deliveries:
                if isinstance(action, Keep):
                    uid = yield self._store_copy(
                        envelope, message, data, user, store, None, action.flags, action.headers, True
                    )
                    kept = True
                elif isinstance(action, FileInto):
                    try:
                        uid = yield self._store_copy(
                            envelope,
                            message,
                            data,
                            user,
                            store,
                            action.mailbox,
                            action.flags,
                            action.headers,
                            action.create,
                        )
                    except QuotaExceeded:
                        raise
                    except Exception as e:
                        self.log.warn(
                            "sieve: {message_id}: fileinto {mailbox} of {user} failed ({error}); keeping it",
                            message_id=envelope.message_id,
                            mailbox=action.mailbox,
                            user=user,
                            error=f"{type(e).__name__}: {e}",
                        )
                        fallback = True
                elif isinstance(action, Discard):
                    self.log.info(
                        "sieve: {message_id} for {user} discarded by {script}",
                        message_id=envelope.message_id,
                        user=user,
                        script=evaluation.script,
                    )
                elif isinstance(action, Redirect):
                    sent = yield self._redirect(envelope, data, user, action)
                    if not sent and not action.copy:
                        fallback = True
                elif isinstance(action, Reject):
                    if at_protocol and action.ereject:
                        self.log.info(
                            "sieve: {message_id} for {user} refused in the transaction by {script}",
                            message_id=envelope.message_id,
                            user=user,
                            script=evaluation.script,
                        )
                        raise SieveRejected(reject_reply(action.reason))
                    if not envelope.mail_from:
                        # RFC 5429 section 2.1.2 and RFC 5321 section 6.1:
                        # nothing goes back to the null sender.
                        self.log.info(
                            "sieve: {message_id} for {user} rejected; the sender is null, so discarded",
                            message_id=envelope.message_id,
                            user=user,
                        )
                        continue
                    notice = rejection_notice(
                        original=data,
                        sender=envelope.mail_from,
                        recipient=user,
                        reason=action.reason,
                        hostname=self.hostname,
                        now=self.sieve.now(),
                    )
                    notices.append((envelope.mail_from, notice, "rejection"))
                elif isinstance(action, Vacation):
                    notices.append((action.to, action.reply, "vacation"))
                    if evaluation.state is not None:
                        evaluation.state.replied(action.to, action.handle)
            if fallback and not kept:
                uid = yield self._store_copy(envelope, message, data, user, store, None, (), None, True)
            if evaluation.state is not None:
                for mark in result.duplicates:
                    evaluation.state.mark(mark.id, mark.handle, mark.seconds, mark.last)
                yield self.sieve.save_state(evaluation)
        finally:
            evaluation.done()
        for to, notice, kind in notices:
            yield self._send_sieve_notice(envelope, to, notice, kind, user)
        return uid

    @defer.inlineCallbacks
    def _store_copy(
        self,
        envelope: Envelope,
        message: MessageSource,
        data: bytes,
        user: str,
        store: IMailStore,
        folder: str | None,
        flags: Sequence[str],
        headers: Any,
        create: bool,
    ) -> Any:
        """
        Store one copy for *user*: in the default mailbox (*folder*
        ``None``: the INBOX or the policy's folder) or in *folder*
        (created first if *create*, else NoSuchMailbox), with *flags* and
        the header section *headers* (``None``: unchanged).
        """
        source = message if headers is None else MessageSource.from_bytes(rebuild_message(data, headers))
        if self.quotas is not None and self.quotas.limit_for(user) is not None:
            yield self._check_quota(store, user, source.size)
        if folder is None:
            mailbox = yield self._mailbox_for(store, envelope.folder, user, envelope.message_id)
        else:
            try:
                mailbox = yield store.get_mailbox(folder)
            except NoSuchMailbox:
                if not create:
                    raise
                with contextlib.suppress(MailboxExists):
                    yield store.create_mailbox(folder)
                mailbox = yield store.get_mailbox(folder)
        uid = yield mailbox.append(source, usable_flags(flags), envelope.received_at or None)
        return self._delivered(envelope, user, uid)

    @defer.inlineCallbacks
    def _redirect(self, envelope: Envelope, data: bytes, user: str, action: Redirect) -> Any:
        """
        Queue a redirected copy (RFC 5228 section 4.2) to *action*'s
        address: a new envelope with the original sender (SRS-rewritten
        when forwarding has SRS), the loop mark on top.  Whether it was queued.
        """
        sender = envelope.mail_from
        if self.forwarding is not None:
            sender = self.forwarding.sender(sender)
        copy_data = redirected_copy(rebuild_message(data, action.headers), user)
        redirected = Envelope(
            mail_from=sender,
            rcpt_to=(action.address,),
            helo=self.hostname,
            received_at=envelope.received_at,
            protocol=envelope.protocol,
            message_id=f"{envelope.message_id}.redirect",
        )
        queued = yield self._enqueue(redirected, MessageSource.from_bytes(copy_data), [action.address])
        self.log.info(
            "sieve: {message_id} for {user} redirected to <{address}> from <{sender}>: {outcome}",
            message_id=envelope.message_id,
            user=user,
            address=action.address,
            sender=sender,
            outcome="queued" if queued else "not queued",
        )
        return queued

    @defer.inlineCallbacks
    def _send_sieve_notice(self, envelope: Envelope, to: str, data: bytes, kind: str, user: str) -> Any:
        """Send a vacation reply or a rejection from ``<>`` (RFC 3834, RFC 5429); failures are logged."""
        try:
            sent = yield deliver_notice(
                self._route,
                to,
                data,
                message_id=f"{envelope.message_id}.{kind}",
                received_at=envelope.received_at,
                hostname=self.hostname,
                local=self._is_local(split_address(to)[1]),
                sign=self.sign_notice,
            )
        except Exception:
            self.log.failure(
                "sieve: the {kind} of {user} for {message_id} could not be sent",
                kind=kind,
                user=user,
                message_id=envelope.message_id,
            )
            return False
        self.log.info(
            "sieve: {kind} of {user} for {message_id} to <{to}>: {outcome}",
            kind=kind,
            user=user,
            message_id=envelope.message_id,
            to=to,
            outcome="sent" if sent else "could not be sent",
        )
        return sent

    @defer.inlineCallbacks
    def _check_quota(self, store: IMailStore, user: str, size: int) -> Generator[Any, Any, IMailStore]:
        """*store*, once *size* more octets are known to fit in *user*'s quota (else QuotaExceeded)."""
        assert self.quotas is not None
        if IStorageUsage.providedBy(store):
            self.quotas.check(user, (yield store.usage()), size)
        return store

    @defer.inlineCallbacks
    def _mailbox_for(
        self, store: IMailStore, folder: str | None, user: str, message_id: str
    ) -> Generator[Any, Any, IMailbox]:
        """
        The mailbox a local copy goes into: the INBOX, or the *folder* a
        policy chose.  ``Junk`` means the user's mailbox with the \\Junk
        special use (RFC 6154) when there is one.  A missing folder is
        created; when that fails the copy goes to the INBOX, so a policy's
        choice never loses mail.
        """
        mailbox: IMailbox
        if folder is None or folder.upper() == INBOX:
            mailbox = yield store.get_mailbox(INBOX)
            return mailbox
        junk = folder.lower() == "junk"
        try:
            if junk:
                name = yield store.special_use_mailbox(SpecialUse.JUNK)
                folder = name or folder
            try:
                mailbox = yield store.get_mailbox(folder)
            except NoSuchMailbox:
                with contextlib.suppress(MailboxExists):
                    yield store.create_mailbox(folder, SpecialUse.JUNK if junk else None)
                mailbox = yield store.get_mailbox(folder)
        except Exception:
            self.log.failure(
                "{message_id}: folder {folder} of {user} unusable; delivering to INBOX",
                failure=Failure(),
                message_id=message_id,
                folder=folder,
                user=user,
            )
            mailbox = yield store.get_mailbox(INBOX)
        return mailbox

    @defer.inlineCallbacks
    def _forward(self, envelope: Envelope, message: MessageSource, recipients: list[str]) -> Any:
        """Queue the copy an alias forwards elsewhere: SRS sender, ARC seal (see the module notes)."""
        forwarding = self.forwarding
        assert forwarding is not None  # _route forwards only with forwarding set
        sender = forwarding.sender(envelope.mail_from, authenticated=envelope.authenticated_user is not None)
        try:
            sealed = yield forwarding.seal(message)
        except Exception:
            self.log.failure(
                "sealing {message_id} failed; forwarding it unsealed", message_id=envelope.message_id
            )
            sealed = None
        queued = yield self._enqueue(
            dataclasses.replace(envelope, mail_from=sender), sealed or message, recipients
        )
        return queued

    @defer.inlineCallbacks
    def _enqueue(self, envelope: Envelope, message: MessageSource, recipients: list[str]) -> Any:
        try:
            yield self.queue.enqueue(envelope, message, recipients)
        except Exception:
            self.log.failure(
                "queueing {message_id} failed", failure=Failure(), message_id=envelope.message_id
            )
            return False
        return True


def _report_targets(
    targets: dict[str, tuple[list[str], list[str]]],
    outcome: dict[str, bool],
    failures: dict[str, tuple[Reply, bool]] | None = None,
) -> DeliveryReport:
    """
    The report of a delivery: a recipient succeeded when it has destinations
    (local users, remote addresses) and each of them is in *outcome* as done;
    a destination in *failures* gives its reply and whether it is temporary.
    """
    failures = failures or {}
    results_out = []
    for rcpt, (local, rem) in targets.items():
        dests = local + rem
        ok = bool(dests) and all(outcome.get(d, False) for d in dests)
        temporary = bool(dests) and not ok
        if ok:
            reply = codes.OK
        elif not dests:
            reply = _NO_SUCH_USER
        else:
            failed = [failures[d] for d in dests if d in failures]
            reply, temporary = failed[0] if failed else (_DELIVERY_FAILED, True)
        results_out.append(
            RecipientResult(rcpt, ok=ok, temporary=temporary, reply=reply, detail=",".join(dests))
        )
    return DeliveryReport(tuple(results_out))


def _report_all(
    envelope: Envelope, *, ok: bool, reply: Reply | None, temporary: bool = False, detail: str = ""
) -> DeliveryReport:
    """One and the same result for every recipient of *envelope*."""
    return DeliveryReport(
        tuple(
            RecipientResult(rcpt, ok=ok, temporary=temporary, reply=reply, detail=detail)
            for rcpt in envelope.rcpt_to
        )
    )


def _with_recipients(envelope: Envelope, recipients: tuple[str, ...]) -> Envelope:
    """*envelope* for *recipients*; kept addresses keep their ESMTP parameters."""
    params: dict[str, dict[str, str | None]] = {}
    for rcpt, p in zip(envelope.rcpt_to, envelope.rcpt_params, strict=False):
        params.setdefault(rcpt, p)
    rcpt_params = tuple(dict(params.get(r, {})) for r in recipients) if envelope.rcpt_params else ()
    return dataclasses.replace(envelope, rcpt_to=recipients, rcpt_params=rcpt_params)
