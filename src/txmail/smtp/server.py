"""
The Twisted adapter of the SMTP server: moves bytes and time between a
transport and a :class:`txmail.smtp.session.ServerSession`, and turns the
session's events into router, authenticator and spool calls.

Implementation notes
--------------------
* ``dataReceived`` feeds the session and drains its events.  An event that
  needs a Deferred (RCPT check, delivery, AUTH) leaves the session paused;
  the adapter then stops reading from the transport (``pauseProducing``)
  so pipelined input is not buffered without bound, and resumes once the
  Deferred answered the session.  Replies therefore go out in command
  order (RFC 2920).
* Message content is streamed into a spooled message of the factory's
  :class:`txmail.interfaces.ISpool` (:mod:`txmail.delivery.spool`: a
  temporary file), after a ``Return-Path:`` field and our ``Received:``
  field (RFC 5321 section 4.4; the ``with`` keyword per RFC 3848).  The
  size limit counts the client's content only.  The server never sees
  where the octets are: it hands the router the
  :class:`txmail.model.MessageSource` the spool gives at the end.
* After the final dot: the spooled message is finished (not fsynced: each
  destination syncs what it keeps), then ``router.deliver``; the client
  gets ``250`` only after the router's Deferred fired, i.e. once every
  copy is durable.  Reply policy (RFC 5321 has one reply for all
  recipients after DATA):

  - every recipient ok: ``250 2.0.0 OK: queued as <id>``;
  - else, if any failure is temporary: ``451 4.3.0`` -- the client retries
    the whole message, so recipients that did get it may get it twice
    (duplicates are better than loss);
  - else (only permanent failures): ``554 5.0.0``;
  - except that when every recipient failed with one and the same reply of
    that class (a delivery hook's ``550 5.7.1 ...``), that reply is sent.

  The router already queues a failed local copy for retry, so it reports a
  failure only when even that failed.  An exception from the router (or
  the spool) is logged and answered ``451 4.3.0``, never with its text.
  The spooled message is discarded afterwards in every case: the router has
  hard-linked or copied what it keeps.
* MAIL on the submission role with an authenticated user: the reverse-path
  must be one the user owns (their address or an alias of theirs,
  ``IDirectory.owns_address``), else ``553 5.7.1`` (issue 5; Postfix's
  ``reject_sender_login_mismatch``).  :meth:`ServerSession.sender_login_check`
  says when the check applies (never for ``<>``, never on port 25).  The
  directory comes from the factory's ``directory`` argument, else the
  router's or the authenticator's ``directory`` attribute; a submission
  factory with AUTH and no directory is refused at construction, so the
  check cannot be skipped by mistake.  A failing lookup is ``451 4.3.0``.
* DSN parameters (RFC 3461) reach the ``Envelope`` as the session
  normalised them (``mail_params``, ``rcpt_params``).
* Timeouts use the injected clock: ``command_timeout`` while waiting for a
  command, ``data_timeout`` while reading content (RFC 5321 section
  4.5.3.2), none while we ourselves are waiting for a Deferred.  Expiry
  answers ``421 4.4.2`` and closes.
* STARTTLS: the bytes the client pipelined after the command are logged by
  size and discarded before the handshake (RFC 3207 section 4.2;
  CVE-2011-0411).
* Logs use structured fields (``peer``, ``session_id``, ``message_id``,
  ``user``), never passwords or message content.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmail._fs import RunBlocking, run_inline
from txmail._protocol import SessionProtocol, is_loopback, make_id
from txmail.auth import sasl
from txmail.delivery.spool import LocalSpool
from txmail.interfaces import IDeliveryRouter, IDirectory, ISpool, ISpooledMessage
from txmail.model import DeliveryReport, Envelope, MessageSource, RecipientResult
from txmail.policy.engine import PolicyEngine
from txmail.policy.hooks import (
    MessageInfo,
    RecipientInfo,
    SessionInfo,
    Stage,
    TransactionInfo,
    Verdict,
    split_header,
)
from txmail.smtp import codes
from txmail.smtp.codes import Reply
from txmail.smtp.events import (
    Authenticated,
    AuthFinished,
    AuthStep,
    ClientConnected,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    DataStart,
    Event,
    Greeted,
    HeloReceived,
    MailFrom,
    RcptTo,
    StartTLS,
)
from txmail.smtp.session import SENDER_NOT_OWNED, SESSION_ROLES, ServerSession, SessionRole, SMTPLimits

if TYPE_CHECKING:
    from txmail.auth.authenticator import Authenticator

__all__ = [
    "SMTPFactory",
    "SMTPLimits",
    "SMTPServerProtocol",
    "lmtp_replies",
    "received_header",
    "reply_for_report",
]


def received_header(
    *,
    helo: str,
    peer_ip: str,
    hostname: str,
    protocol: str,
    message_id: str,
    recipients: tuple[str, ...] | list[str],
    when: float,
) -> bytes:
    """
    Build our ``Received:`` trace field (RFC 5321 section 4.4, RFC 5322
    section 3.6.7), folded, ending in CRLF::

        Received: from <helo> ([<ip>])
        \tby <hostname> (txmail) with <protocol> id <id>
        \tfor <rcpt>; <date>

    ``for`` is given only for a single recipient, so one copy does not tell
    who else got the message.
    """
    literal = peer_ip
    if peer_ip:
        try:
            addr = ipaddress.ip_address(peer_ip)
        except ValueError:
            literal = "[unknown]"
        else:
            literal = f"[IPv6:{addr}]" if addr.version == 6 else f"[{addr}]"
    else:
        literal = "[unknown]"
    date = format_datetime(datetime.fromtimestamp(when, UTC))
    lines = [
        f"Received: from {helo or 'unknown'} ({literal})",
        f"\tby {hostname} (txmail) with {protocol} id {message_id}",
    ]
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>; {date}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{date}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def reply_for_report(report: DeliveryReport, message_id: str) -> Reply:
    """The reply to the final dot for a :class:`DeliveryReport` (see the module notes)."""
    if report.all_ok:
        return codes.OK.with_text(f"OK: queued as {message_id}")
    failed: list[RecipientResult] = [r for r in report.results if not r.ok]
    temporary = any(r.temporary for r in failed)
    default = codes.LOCAL_ERROR if temporary else codes.TRANSACTION_FAILED
    if len(failed) == len(report.results) and len({r.reply for r in failed}) == 1:
        # Every recipient failed for one reason (a delivery hook's rejection,
        # say): that reply, if it is one of the right class.
        reply = failed[0].reply
        if reply is not None and reply.code // 100 == default.code // 100:
            return reply
    return default


def lmtp_replies(report: DeliveryReport, recipients: Sequence[str], message_id: str) -> list[Reply]:
    """
    The LMTP replies to the end of the data (RFC 2033 section 4.2): one per
    accepted recipient, in the order of the RCPT commands (a recipient
    given twice gets its result twice), each naming its recipient.  A
    recipient the router has no result for fails temporarily.
    """
    results: dict[str, RecipientResult] = {}
    for result in report.results:
        results.setdefault(result.recipient, result)
    replies = []
    for rcpt in recipients:
        found = results.get(rcpt)
        if found is not None and found.ok:
            replies.append(codes.OK.with_text(f"<{rcpt}> delivered as {message_id}"))
            continue
        temporary = found is None or found.temporary
        default = codes.LOCAL_ERROR if temporary else codes.TRANSACTION_FAILED
        reply = (found.reply if found is not None else None) or default
        if reply.is_positive or reply.code // 100 != default.code // 100:
            reply = default
        replies.append(reply.with_text(f"<{rcpt}> {reply.text}"))
    return replies


def rewrite_message(
    data: bytes,
    return_path: int,
    trace_length: int,
    headers: bytes,
    edits: tuple[Any, ...],
    body: bytes | None = None,
) -> bytes:
    """
    A spooled message (``Return-Path:``, ``Received:``, the client's
    message) with policy *headers* inserted below ``Return-Path:``, *edits*
    applied to the client's header section, and its body replaced by *body*
    when that is not ``None``.
    """
    client = data[trace_length:]
    if edits or body is not None:
        split = split_header(client)
        section = client[:split]
        for edit in edits:
            section = edit(section)
        client = section + (client[split:] if body is None else b"\r\n" + body)
    return data[:return_path] + headers + data[return_path:trace_length] + client


#: A header section longer than this is not read whole for edits (the
#: message keeps its fields as they are).
MAX_EDITED_HEADER = 1024 * 1024


def _read_up_to(f: Any, n: int) -> bytes:
    """Up to *n* octets of *f*, fewer only at its end (a stream may give less per read)."""
    pieces = []
    while n > 0 and (piece := f.read(n)):
        pieces.append(piece)
        n -= len(piece)
    return b"".join(pieces)


def _rewrite_file(
    source: MessageSource,
    target: ISpooledMessage,
    return_path: int,
    trace_length: int,
    headers: bytes,
    edits: tuple[Any, ...],
    body: bytes | None = None,
) -> None:
    """:func:`rewrite_message` from a source streamed into a spooled message (blocking)."""
    with source.open() as f:
        head = _read_up_to(f, trace_length + MAX_EDITED_HEADER)
        client = head[trace_length:]
        rework = bool(edits) or body is not None
        split = split_header(client) if rework else 0
        if rework and split == len(client) and len(head) == trace_length + MAX_EDITED_HEADER:
            edits, split = (), 0  # a header section this long is left alone
            if body is not None:
                raise ValueError("header section too long to replace the body")
        section = client[:split]
        for edit in edits:
            section = edit(section)
        rest = client[split:] if body is None else b"\r\n" + body
        for piece in (head[:return_path], headers, head[return_path:trace_length], section, rest):
            target.write(piece)
        while body is None and (chunk := f.read(1024 * 1024)):
            target.write(chunk)


@dataclasses.dataclass
class _Received:
    """
    A message received and spooled: its source, which starts with our
    ``Return-Path:`` field (``return_path`` octets) and our ``Received:``
    field (up to ``trace_length`` octets) before the client's message, and
    the spooled message to discard once delivery is over.
    """

    spooled: ISpooledMessage
    source: MessageSource
    return_path: int
    trace_length: int

    def discard(self) -> None:
        self.spooled.discard()


class SMTPServerProtocol(SessionProtocol):
    """
    One SMTP server connection.  Built by :class:`SMTPFactory`; its
    behaviour is described in the module notes, the plumbing in
    :class:`txmail._protocol.SessionProtocol`.
    """

    log = Logger()

    PROTOCOL_NAME = "SMTP"
    STARTTLS_COMMAND = "STARTTLS"
    INTERNAL_ERROR_REPLY = codes.LOCAL_ERROR

    session: ServerSession | None

    def __init__(self, factory: SMTPFactory) -> None:
        super().__init__(factory)
        self.factory: SMTPFactory = factory
        self.peer_ip = ""
        #: The message being received, and the lengths of our own fields at its start.
        self._spool: ISpooledMessage | None = None
        self._return_path = 0
        self._trace_length = 0
        self._message_id = ""
        self._started_at = 0.0
        #: What the policies see of this connection (see txmail.policy.hooks).
        self.info = SessionInfo(role=factory.role, session_id=self.session_id, hostname=factory.hostname)
        # Accepted verdicts: of connect/HELO/AUTH (every message), of MAIL/RCPT (this transaction).
        self._conn_verdict = Verdict()
        self._tx_verdict = Verdict()
        #: The factory's policy engine when the client connected: the whole
        #: session asks this one, even when a reload replaces the factory's.
        self.policy_engine = factory.policy

    def _open_session(self, host: str) -> ServerSession:
        self.peer_ip = host
        factory = self.factory
        info = self.info
        info.client_address = host
        info.client_port = int(getattr(self._transport.getPeer(), "port", 0) or 0)
        info.tls = factory.implicit_tls
        engine = self.policy_engine
        info.trusted = engine is not None and engine.is_trusted(host)
        checks = frozenset(
            name
            for stage, name in ((Stage.CONNECT, "connect"), (Stage.HELO, "helo"), (Stage.AUTH, "auth"))
            if engine is not None and engine.checks(stage)
        )
        session = ServerSession(
            factory.hostname,
            role=factory.role,
            limits=factory.limits,
            tls_available=self._tls_available(),
            tls_active=factory.implicit_tls,
            auth_enabled=factory.authenticator is not None,
            plaintext_auth=factory.plaintext_auth,
            loopback=is_loopback(host) if host else False,
            checks=checks,
        )
        self.log.info(
            "SMTP connection from {peer} ({role})",
            peer=self.peer,
            role=factory.role,
            session_id=self.session_id,
        )
        return session

    def _idle(self) -> bool:
        # A mail transaction is finished before a graceful shutdown closes the session.
        session = self.session
        return super()._idle() and session is not None and session.transaction is None

    # -- Twisted API --

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        # A message being delivered owns its file until delivery ends.
        self._discard_spool()
        if self.policy_engine is not None:
            self.policy_engine.closed(self.info)

    # -- the event loop --

    def _handle(self, event: Event) -> None:
        assert self.session is not None
        if isinstance(event, Greeted):
            self.info.helo = event.name
            self.log.debug(
                "{peer} greeted as {helo}", peer=self.peer, helo=event.name, session_id=self.session_id
            )
        elif isinstance(event, ClientConnected):
            self._policy(Stage.CONNECT, (), self._connection_decided)
        elif isinstance(event, HeloReceived):
            self._policy(Stage.HELO, (event.name,), self._connection_decided)
        elif isinstance(event, AuthFinished):
            self._auth_finished(event)
        elif isinstance(event, MailFrom):
            self._check_sender(event)
        elif isinstance(event, RcptTo):
            self._check_recipient(event)
        elif isinstance(event, DataStart):
            self._start_data(event)
        elif isinstance(event, DataChunk):
            self._write(event.data)
        elif isinstance(event, DataAborted):
            self._discard_spool()
            self.log.info(
                "message {message_id} from {peer} refused: {code} {enhanced}",
                message_id=self._message_id,
                peer=self.peer,
                code=event.reply.code,
                enhanced=event.reply.enhanced,
                session_id=self.session_id,
            )
        elif isinstance(event, DataComplete):
            if self._counted:
                # Time the end of data to the final reply like a command (txmail.metrics).
                self._command_parsed("end-of-data")
            self._deliver(event)
        elif isinstance(event, AuthStep):
            self._auth_step(event)
        elif isinstance(event, Authenticated):
            self.info.authenticated_user = event.user
            self.log.info(
                "{peer} authenticated as {user} ({mechanism})",
                peer=self.peer,
                user=event.user,
                mechanism=event.mechanism,
                session_id=self.session_id,
            )
        elif isinstance(event, StartTLS):
            self._start_tls()
            # RFC 3207 section 4.2: what the client said before TLS is forgotten.
            info = self.info
            info.tls = True
            info.helo = info.authenticated_user = info.transaction = None
        elif isinstance(event, ConnectionClosing) and event.reason != "quit":
            self.log.info(
                "closing SMTP connection from {peer}: {reason}",
                peer=self.peer,
                reason=event.reason,
                session_id=self.session_id,
            )

    # -- policies (txmail.policy.hooks) --

    def _policy(self, stage: Stage, args: tuple[Any, ...], decided: Any, abandoned: Any = None) -> None:
        """
        Ask the policies of *stage*; ``decided(verdict)`` answers the
        session (``abandoned()`` is called instead once the client is gone).
        """
        engine = self.policy_engine
        assert engine is not None
        d = engine.decide(stage, self.info, *args)
        if isinstance(d, Verdict):
            # Decided at once (most stages, most of the time): no Deferred round.
            decided(d)
            return

        def ran(verdict: Verdict) -> None:
            if not self._lost:
                decided(verdict)
            elif abandoned is not None:
                abandoned()

        d.addCallback(ran)
        d.addErrback(self._internal_error)
        self._wait(d)

    def _connection_decided(self, verdict: Verdict) -> None:
        """The verdict at connect or HELO: refuse, or go on keeping its headers for every message."""
        session = self.session
        assert session is not None
        if verdict.reply is not None:
            session.reject(verdict.reply)
            return
        self._conn_verdict = self._conn_verdict.then(verdict)
        session.accept()

    def _auth_finished(self, event: AuthFinished) -> None:
        session = self.session
        assert session is not None
        self.info.auth_mechanism = event.mechanism
        self.info.auth_succeeded = event.succeeded

        def decided(verdict: Verdict) -> None:
            reply = verdict.reply
            if reply is not None and (event.succeeded or reply.code == 421):
                session.reject(reply)
                return
            if event.succeeded:
                self._conn_verdict = self._conn_verdict.then(verdict)
            session.accept()

        self._policy(Stage.AUTH, (event.username, event.succeeded), decided)

    def _mail_policy(self, event: MailFrom) -> None:
        """A new transaction: ask the MAIL policies, then answer MAIL."""
        session = self.session
        assert session is not None
        tx = TransactionInfo(event.address, dict(event.params))
        self.info.transaction = tx
        self._tx_verdict = Verdict()

        def accept() -> None:
            session.accept()
            if session.transaction is not None:
                tx.recipients = session.transaction.rcpt_to  # the session's own list, kept current

        engine = self.policy_engine
        if engine is None or not engine.checks(Stage.MAIL):
            accept()
            return

        def decided(verdict: Verdict) -> None:
            if verdict.reply is not None:
                self.info.transaction = None
                session.reject(verdict.reply)
                return
            self._tx_verdict = verdict
            accept()

        self._policy(Stage.MAIL, (), decided)

    # -- sender --

    def _check_sender(self, event: MailFrom) -> None:
        session = self.session
        assert session is not None
        user = session.sender_login_check(event.address)
        if user is None:
            self._mail_policy(event)
            return
        directory = self.factory.directory
        assert directory is not None  # SMTPFactory refuses submission+AUTH without one
        d = directory.owns_address(user, event.address)

        def checked(owned: bool) -> None:
            if owned:
                self._mail_policy(event)
                return
            self.log.info(
                "{peer}: {user} may not send as <{sender}>",
                peer=self.peer,
                user=user,
                sender=event.address,
                session_id=self.session_id,
            )
            session.reject(SENDER_NOT_OWNED)

        self._answer(d, checked, codes.LOCAL_ERROR, "sender ownership check")

    # -- recipients --

    def _check_recipient(self, event: RcptTo) -> None:
        session = self.session
        assert session is not None
        d = self.factory.router.check_recipient(event.address, authenticated_user=session.authenticated_user)

        def checked(result: RecipientResult) -> None:
            reply = None
            if not result.ok:
                default = (
                    Reply(450, "4.1.1", "Recipient temporarily unavailable")
                    if result.temporary
                    else Reply(550, "5.1.1", "Recipient rejected")
                )
                reply = result.reply or default
                if reply.is_positive:
                    reply = default
            engine = self.policy_engine
            if engine is None or not engine.checks(Stage.RCPT):
                if reply is None:
                    session.accept()
                else:
                    session.reject(reply)
                return

            def decided(verdict: Verdict) -> None:
                if verdict.reply is not None:
                    session.reject(verdict.reply)
                elif reply is not None:
                    session.reject(reply)
                else:
                    self._tx_verdict = self._tx_verdict.then(verdict)
                    session.accept()

            recipient = RecipientInfo(event.address, dict(event.params), result)
            self._policy(Stage.RCPT, (recipient,), decided)

        def failed(f: Failure) -> None:
            self.log.failure(
                "recipient check failed for {recipient} from {peer}",
                failure=f,
                recipient=event.address,
                peer=self.peer,
                session_id=self.session_id,
            )
            session.reject(codes.LOCAL_ERROR)

        d.addCallbacks(checked, failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    # -- message content --

    def _start_data(self, event: DataStart) -> None:
        session = self.session
        assert session is not None and session.transaction is not None
        tx = session.transaction
        self._message_id = self.factory.make_id()
        if self.info.transaction is not None:
            self.info.transaction.message_id = self._message_id
        self._started_at = self.factory.clock.seconds()
        return_path = f"Return-Path: <{tx.mail_from}>\r\n".encode()
        header = return_path + received_header(
            helo=session.helo or "",
            peer_ip=self.peer_ip,
            hostname=self.factory.hostname,
            protocol=session.protocol,
            message_id=self._message_id,
            recipients=tx.rcpt_to,
            when=self._started_at,
        )

        # ISpool.take answers with a spooled message or a Deferred of one, or raises.
        d = defer.maybeDeferred(self.factory.spool.take)

        def created(spooled: ISpooledMessage) -> None:
            if self._lost:
                spooled.discard()
                return
            self._spool = spooled
            self._write(header)
            self._return_path = len(return_path)
            self._trace_length = len(header)
            session.accept()

        def failed(f: Failure) -> None:
            self.log.failure(
                "cannot start a message in the spool",
                failure=f,
                session_id=self.session_id,
            )
            session.reject(codes.LOCAL_ERROR)

        d.addCallbacks(created, failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    def _write(self, data: bytes) -> None:
        spool = self._spool
        if spool is None or spool.failed:
            return
        try:
            spool.write(data)
        except OSError:
            self.log.failure(
                "writing message {message_id} to the spool failed",
                message_id=self._message_id,
                session_id=self.session_id,
            )

    def _discard_spool(self) -> None:
        if self._spool is not None:
            self._spool.discard()
            self._spool = None

    def _deliver(self, event: DataComplete) -> None:
        session = self.session
        assert session is not None and session.transaction is not None
        tx = session.transaction
        spooled, self._spool = self._spool, None
        message_id = self._message_id
        if spooled is None or spooled.failed:
            if spooled is not None:
                spooled.discard()
            session.reject(codes.LOCAL_ERROR)
            return
        envelope = Envelope(
            mail_from=tx.mail_from,
            rcpt_to=tuple(tx.rcpt_to),
            mail_params=dict(tx.mail_params),
            rcpt_params=tuple(dict(p) for p in tx.rcpt_params),
            helo=session.helo or "",
            peer=self.peer,
            authenticated_user=session.authenticated_user,
            tls=session.tls,
            received_at=self.factory.clock.seconds(),
            protocol=session.protocol,
            message_id=message_id,
        )
        return_path, trace_length = self._return_path, self._trace_length
        # Not fsynced here: every destination syncs what it keeps (see _route).
        d = spooled.finish(False)

        def finished(source: MessageSource) -> None:
            received = _Received(spooled, source, return_path, trace_length)
            if self._lost:
                received.discard()
                return
            self._data_policy(received, envelope, event.size)

        def failed(f: Failure) -> None:
            spooled.discard()
            self.log.failure(
                "writing message {message_id} to the spool failed",
                failure=f,
                message_id=message_id,
                session_id=self.session_id,
            )
            if not self._lost:
                session.reject(codes.LOCAL_ERROR)

        d.addCallbacks(finished, failed)
        d.addErrback(self._internal_error)
        if not d.called:
            self._wait(d)

    def _data_policy(self, received: _Received, envelope: Envelope, size: int) -> None:
        """Ask the policies of the end of data, then finish the message."""
        session = self.session
        assert session is not None
        message_id = envelope.message_id
        verdict = self._conn_verdict.then(self._tx_verdict)
        engine = self.policy_engine
        if engine is None or not engine.checks(Stage.DATA):
            self._finish_message(received, envelope, verdict)
            return

        def decided(data_verdict: Verdict) -> None:
            if data_verdict.reply is not None:
                received.discard()
                self.log.info(
                    "message {message_id} from {peer} refused by policy: {code} {enhanced}",
                    message_id=message_id,
                    peer=self.peer,
                    code=data_verdict.reply.code,
                    enhanced=data_verdict.reply.enhanced,
                    session_id=self.session_id,
                )
                session.reject(data_verdict.reply)
                return
            self._finish_message(received, envelope, verdict.then(data_verdict))

        message = MessageInfo(received.source, size, received.trace_length)
        self._policy(Stage.DATA, (message,), decided, abandoned=received.discard)

    def _finish_message(self, received: _Received, envelope: Envelope, verdict: Verdict) -> None:
        """
        Apply the policies' headers, edits, body, folder and hold to the
        message, then deliver it (or, when a policy discards it, accept it
        and drop it).
        """
        if verdict.discard:
            self._discard(received, envelope)
            return
        if verdict.folder is not None or verdict.hold is not None:
            envelope = dataclasses.replace(
                envelope,
                folder=verdict.folder if verdict.folder is not None else envelope.folder,
                hold=verdict.hold,
            )
        if not verdict.headers and not verdict.edits and verdict.body is None:
            self._route(received, envelope)
            return
        d = self._rewrite(received, b"".join(verdict.headers), verdict.edits, verdict.body)

        def failed(f: Failure) -> None:
            self.log.failure(
                "rewriting message {message_id} for the policies failed",
                failure=f,
                message_id=envelope.message_id,
            )
            received.discard()
            if not self._lost:
                assert self.session is not None
                self.session.reject(codes.LOCAL_ERROR)

        d.addCallbacks(lambda new: self._route(new, envelope), failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    def _discard(self, received: _Received, envelope: Envelope) -> None:
        """A policy discarded the message: ``250`` (one per recipient in LMTP), nothing delivered."""
        received.discard()
        session = self.session
        assert session is not None
        self.log.info(
            "message {message_id} from {peer} <{sender}> discarded by policy",
            message_id=envelope.message_id,
            peer=self.peer,
            sender=envelope.mail_from,
            session_id=self.session_id,
        )
        reply = codes.OK.with_text(f"OK: queued as {envelope.message_id}")
        if session.role == "lmtp":
            session.accept([reply.with_text(f"<{rcpt}> {reply.text}") for rcpt in envelope.rcpt_to])
        else:
            session.accept(reply)

    @defer.inlineCallbacks
    def _rewrite(
        self, received: _Received, headers: bytes, edits: tuple[Any, ...], body: bytes | None = None
    ) -> Any:
        """
        *received*'s message with *headers* added and *edits* applied, as a
        new spooled message (the old one is discarded): a message kept in
        memory is rewritten on the reactor thread (a few kilobytes into the
        page cache), a large one is streamed into the new one in the thread
        pool.
        """
        source = received.source
        new: ISpooledMessage = yield self.factory.spool.take()  # a spooled message or a Deferred of one
        try:
            if source.data is not None:
                new.write(
                    rewrite_message(
                        source.data, received.return_path, received.trace_length, headers, edits, body
                    )
                )
            else:
                yield self.factory.run_blocking(
                    _rewrite_file,
                    source,
                    new,
                    received.return_path,
                    received.trace_length,
                    headers,
                    edits,
                    body,
                )
            rewritten = yield new.finish(False)
        except BaseException:
            new.discard()
            raise
        received.discard()
        return _Received(new, rewritten, received.return_path, received.trace_length + len(headers))

    def _route(self, received: _Received, envelope: Envelope) -> None:
        """Hand the message to the router; answer the final dot once every copy is durable."""
        session = self.session
        assert session is not None
        message_id = envelope.message_id
        # Not fsynced here: every destination syncs what it keeps (a hard
        # link shares the data), inside the same thread-pool job that links
        # it, which saves a round trip per message.  The router fires only
        # once each copy is durable, and only then do we reply 250.
        d = self.factory.router.deliver(envelope, received.source)

        def delivered(report: DeliveryReport) -> None:
            reply = reply_for_report(report, message_id)
            self.log.info(
                "message {message_id} from {peer} <{sender}> for {count} recipient(s), {size} octets: {code}",
                message_id=message_id,
                peer=self.peer,
                sender=envelope.mail_from,
                count=len(envelope.rcpt_to),
                size=received.source.size,
                code=reply.code,
                user=envelope.authenticated_user,
                session_id=self.session_id,
            )
            if any(r.ok for r in report.results):
                self._metrics.message_received()
            if self._lost:
                return
            if session.role == "lmtp":
                session.accept(lmtp_replies(report, envelope.rcpt_to, message_id))
            elif reply.is_positive:
                session.accept(reply)
            else:
                session.reject(reply)

        def failed(f: Failure) -> None:
            self.log.failure(
                "delivering message {message_id} failed",
                failure=f,
                message_id=message_id,
                session_id=self.session_id,
            )
            if not self._lost:
                session.reject(codes.LOCAL_ERROR)

        d.addCallbacks(delivered, failed)
        d.addErrback(self._internal_error)

        def remove_spool(result: Any) -> Any:
            received.discard()
            return result

        d.addBoth(remove_spool)
        self._wait(d)

    # -- AUTH --

    def _auth_step(self, event: AuthStep) -> None:
        session = self.session
        authenticator = self.factory.authenticator
        assert session is not None and authenticator is not None
        d = authenticator.step(event.server, event.request, peer=self.peer)

        def stepped(result: sasl.SASLEvent) -> None:
            if isinstance(result, sasl.Succeeded | sasl.Failed):
                self._metrics.auth(event.mechanism, isinstance(result, sasl.Succeeded))
            if not self._lost:
                session.accept(result)

        def failed(f: Failure) -> None:
            self.log.failure("authentication step failed for {peer}", failure=f, peer=self.peer)
            if not self._lost:
                session.reject(codes.AUTH_TEMPORARY_FAILURE)

        d.addCallbacks(stepped, failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    # -- timeouts --

    def _timer_delay(self) -> float:
        assert self.session is not None
        limits = self.factory.limits
        return limits.data_timeout if self.session.in_data else limits.command_timeout


class SMTPFactory(Factory[SMTPServerProtocol]):
    """
    Builds :class:`SMTPServerProtocol` connections.

    Args:
        role: ``"mta"`` (port 25: local recipients from anyone; the router
            refuses relaying) or ``"submission"`` (AUTH required before
            MAIL; authenticated users may send anywhere).
        hostname: our name, in the greeting, EHLO and ``Received:``.
        router: the :class:`txmail.interfaces.IDeliveryRouter`.
        authenticator: a :class:`txmail.auth.authenticator.Authenticator`,
            or ``None`` for no AUTH.
        spool: the :class:`txmail.interfaces.ISpool` incoming content is
            written to while it arrives.
        spool_dir: instead of *spool*: a directory for a
            :class:`txmail.delivery.spool.LocalSpool` of this factory's
            own (same file system as the stores and queue, so they can
            hard-link).
        tls_context: a context factory (``twisted.internet.ssl``) for
            STARTTLS, or ``None`` for no STARTTLS.
        implicit_tls: the endpoint already runs TLS (port 465): STARTTLS is
            not offered and the session counts as TLS.
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``:
            whether AUTH is offered without TLS.
        limits: :class:`SMTPLimits`.
        clock: the ``IReactorTime`` for timeouts and dates; the global
            reactor by default.
        run_blocking: ``run_blocking(fn, *args) -> Deferred`` for file
            work (rewriting large messages, the *spool_dir* spool's);
            ``None`` runs inline.
        directory: the :class:`txmail.interfaces.IDirectory` that says which
            sender addresses an authenticated user owns (submission role);
            by default the ``directory`` attribute of *router* or of
            *authenticator*.
        policies: policy hooks (:mod:`txmail.policy.hooks`) asked in order
            at each stage of every session; those whose ``roles`` leave out
            *role* are not asked.
        resolver: a DNS resolver (:class:`txmail.resolver.Resolver`) for the
            client's reverse DNS, looked up at connect when there are
            policies; ``None`` looks nothing up.
        trusted_networks: networks (``"192.0.2.0/24"``) whose clients the
            policies see as ``trusted`` (the server's own checks let them
            through, like Postfix's ``mynetworks``).

    Raises:
        ValueError: unknown role or plaintext policy, a submission
            factory with an authenticator but no directory to check
            senders against, or not exactly one of *spool* and
            *spool_dir*.
    """

    protocol = SMTPServerProtocol

    def __init__(
        self,
        *,
        role: SessionRole = "mta",
        hostname: str,
        router: IDeliveryRouter,
        authenticator: Authenticator | None = None,
        spool: ISpool | None = None,
        spool_dir: str | None = None,
        tls_context: Any = None,
        implicit_tls: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        limits: SMTPLimits | None = None,
        clock: IReactorTime | None = None,
        run_blocking: RunBlocking | None = None,
        directory: IDirectory | None = None,
        policies: Sequence[Any] = (),
        resolver: Any = None,
        trusted_networks: Sequence[str] = (),
    ) -> None:
        if role not in SESSION_ROLES:
            raise ValueError(f"unknown role {role!r}")
        if (spool is None) == (spool_dir is None):
            raise ValueError("give either a spool or a spool_dir")
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        if directory is None:
            directory = getattr(router, "directory", None) or getattr(authenticator, "directory", None)
        if role == "submission" and authenticator is not None and not hasattr(directory, "owns_address"):
            raise ValueError("a submission factory with AUTH needs a directory with owns_address")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.role = role
        self.hostname = hostname
        self.router = router
        self.authenticator = authenticator
        self.directory = directory
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.plaintext_auth = plaintext_auth
        self.limits = limits if limits is not None else SMTPLimits()
        self.clock: Any = clock
        self.run_blocking: RunBlocking = run_blocking if run_blocking is not None else run_inline
        #: Where incoming messages are written (:class:`txmail.interfaces.ISpool`).
        self.spool: ISpool = spool if spool is not None else LocalSpool(str(spool_dir), self.run_blocking)
        engine = (
            PolicyEngine(
                policies, role=role, clock=self.clock, resolver=resolver, trusted_networks=trusted_networks
            )
            if policies
            else None
        )
        #: The :class:`~txmail.policy.engine.PolicyEngine`, or ``None`` without policies.
        self.policy = engine if engine is not None and engine.active else None
        self.resolver = resolver
        self.trusted_networks = tuple(trusted_networks)
        #: The open connections (a graceful shutdown closes them).
        self.connections: set[SMTPServerProtocol] = set()
        #: The server is stopping: new connections are closed at once.
        self.draining = False

    def set_policies(
        self, policies: Sequence[Any], *, resolver: Any = None, trusted_networks: Sequence[str] = ()
    ) -> None:
        """
        Ask *policies* (with *resolver* and *trusted_networks*, as the
        constructor's) from the next connection on (a reload); the open
        sessions keep the engine they started with.
        """
        self.resolver = resolver
        self.trusted_networks = tuple(trusted_networks)
        engine = (
            PolicyEngine(
                policies,
                role=self.role,
                clock=self.clock,
                resolver=self.resolver,
                trusted_networks=self.trusted_networks,
            )
            if policies
            else None
        )
        self.policy = engine if engine is not None and engine.active else None

    def stopFactory(self) -> None:
        self.spool.close()

    def make_id(self) -> str:
        """A new id for a session or message: time-ordered, then random."""
        return make_id(self.clock)

    def buildProtocol(self, addr: Any) -> SMTPServerProtocol:
        return SMTPServerProtocol(self)
