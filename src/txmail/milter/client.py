"""
Milters as txmail policy hooks: :class:`MilterPolicy` asks one milter at
every SMTP stage, over the sans-IO client of :mod:`txmail.milter.protocol`.

Theory of operation
-------------------
* **One milter connection per SMTP session**, opened when the session
  starts (at connect; later when an earlier policy kept the connect stage
  from us) and closed when it ends, as Postfix does (libmilter closes its
  end when the MTA's client leaves, so connections are not reused).
* **Stages.**  ``on_connect`` negotiates and sends SMFIC_CONNECT,
  ``on_helo`` SMFIC_HELO, ``on_mail`` SMFIC_MAIL (after SMFIC_ABORT when an
  earlier message was not finished), ``on_rcpt`` SMFIC_RCPT for each
  recipient the router accepted, ``on_data`` SMFIC_DATA, each header field,
  SMFIC_EOH, the body in chunks and SMFIC_BODYEOB.  Each stage sends its
  macros first (:func:`macros_for`).  Steps the milter asked to leave out or
  unanswered are left so.
* **Replies** become verdicts (the Postfix replies are kept word for word):

  ============ ==========================================================
  continue     go on
  accept       at connect or HELO: the milter is done with the session;
               later: done with this message
  reject       ``550 5.7.1 Command rejected``
  tempfail     ``451 4.7.1 Service unavailable - try again later``
  replycode    the milter's own reply when it is a 4xx/5xx reply
               (``%%`` read as ``%``; several lines joined), else the
               reject or tempfail reply above
  discard      at MAIL, RCPT or data: the message is accepted and
               delivered to no one (:meth:`Verdict.discard_message`)
  quarantine   :meth:`Verdict.hold_message` with the milter's reason
  add/insert/  :meth:`Verdict.edit_headers` (see :mod:`txmail.milter.edits`)
  chgheader
  replbody     :meth:`Verdict.replace_body` with the chunks joined
  shutdown     ``421 4.7.0 Server closing connection``
  ============ ==========================================================

  A refusal at connect is sent as the greeting: a 4xx becomes ``421`` (the
  connection closes), a 5xx ``554`` (every later command gets ``503``).  A
  refusal at connect or HELO ends the milter's session: every later stage
  gets the same reply (Postfix's REJECT_CON state).
* **Failures.**  A milter that cannot be reached within ``connect_timeout``,
  does not answer within ``command_timeout`` (``content_timeout`` for the
  message content; SMFIR_PROGRESS restarts the wait), breaks the protocol or
  closes the connection is dropped for the rest of the session, and
  ``default_action`` decides: ``"tempfail"`` (``451 4.7.1 Service
  unavailable - try again later`` at this stage and every later one),
  ``"reject"`` (``550 5.5.0 Service unavailable``) or ``"accept"`` (the
  milter is skipped).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

import txmail
from txmail.milter.edits import apply_header_edits, milter_field
from txmail.milter.protocol import (
    SMFIC_BODY,
    SMFIC_CONNECT,
    SMFIC_HELO,
    SMFIP_HDR_LEADSPC,
    AddHeader,
    ChangeHeader,
    Decision,
    InsertHeader,
    MilterClient,
    MilterProtocolError,
    Negotiated,
    Progress,
    Quarantine,
    ReplaceBody,
    body_chunks,
    header_fields,
)
from txmail.milter.settings import (
    DEFAULT_ACTIONS,
    ROLES,
    MilterSettings,
    check_address,
    parse_milters,
)
from txmail.policy.hooks import MessageInfo, Policy, RecipientInfo, SessionInfo, Stage, Verdict
from txmail.smtp.codes import Reply

__all__ = [
    "DEFAULT_ACTIONS",
    "ROLES",
    "MilterPolicy",
    "MilterSettings",
    "build_milter_policies",
    "macros_for",
    "milter_endpoint",
    "parse_milters",
]

# Postfix's replies (milter8.c), kept word for word.
REJECTED = Reply(550, "5.7.1", "Command rejected")
TEMPFAILED = Reply(451, "4.7.1", "Service unavailable - try again later")
UNAVAILABLE_REJECT = Reply(550, "5.5.0", "Service unavailable")
SHUTDOWN = Reply(421, "4.7.0", "Server closing connection")


def milter_endpoint(reactor: Any, address: str, timeout: float = 30.0) -> Any:
    """
    A client endpoint for a milter *address*: ``inet:host:port`` (a host
    name or an IP address, IPv6 in brackets), ``unix:/path``, or a Twisted
    client endpoint string (``tcp:host=127.0.0.1:port=8891``).
    """
    check_address(address)
    kind, _, rest = address.partition(":")
    if kind == "inet":
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        return HostnameEndpoint(reactor, host, int(port), timeout=timeout)
    if kind == "unix" and rest.startswith("/"):
        return UNIXClientEndpoint(reactor, rest, timeout=timeout)
    return clientFromString(reactor, address)


# --- macros -------------------------------------------------------------------


def _client_name(session: SessionInfo) -> str:
    return session.client_name or "unknown"


def macros_for(stage: str, session: SessionInfo, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """
    The macros sent before each stage's command, named and valued as
    Postfix sends them (its ``milter_*_macros`` defaults), from what the
    session knows.  ``{auth_*}`` are sent only for an authenticated client:
    milters (OpenDKIM among them) take their presence as "authenticated".
    ``{daemon_name}`` is the listener's role (``mta``, ``submission``,
    ``lmtp``), which OpenDKIM's ``MTA`` setting can match.
    """
    macros: dict[str, str] = {}
    if stage == "connect":
        address = session.client_address
        macros = {
            "j": session.hostname,
            "{daemon_name}": session.role,
            "v": f"txmail {txmail.__version__}",
            "{client_addr}": address,
            "{client_name}": _client_name(session),
            "{client_port}": str(session.client_port),
            "_": f"{_client_name(session)} [{address}]" if address else _client_name(session),
        }
    elif stage == "helo":
        version = getattr(session, "tls_version", None)
        cipher = getattr(session, "tls_cipher", None)
        if session.tls and version:
            macros["{tls_version}"] = str(version)
        if session.tls and cipher:
            macros["{cipher}"] = str(cipher)
    elif stage == "mail":
        tx = session.transaction
        if session.authenticated_user:
            macros["{auth_type}"] = session.auth_mechanism or "PLAIN"
            macros["{auth_authen}"] = session.authenticated_user
        if tx is not None:
            macros["{mail_addr}"] = tx.mail_from
            if tx.message_id:
                macros["i"] = tx.message_id
    elif stage in ("data", "eoh", "eom"):
        tx = session.transaction
        if tx is not None and tx.message_id:
            macros["i"] = tx.message_id
    if extra:
        macros.update(extra)
    return macros


def _esmtp_args(address: str, params: Mapping[str, str | None]) -> list[str]:
    """``["<address>", "KEY=value", "KEY"]`` as SMFIC_MAIL and SMFIC_RCPT carry them."""
    return [f"<{address}>"] + [key if value is None else f"{key}={value}" for key, value in params.items()]


def _connect_args(session: SessionInfo) -> tuple[str, str, int, str]:
    address = session.client_address
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (session.client_name or "localhost", "U", 0, "")
    family = "4" if ip.version == 4 else "6"
    return (session.client_name or f"[{address}]", family, session.client_port, address)


_REPLY_LINE = re.compile(r"^([45][0-9][0-9])([ -])(?:([245]\.[0-9]{1,3}\.[0-9]{1,3})(?: |$))?(.*)$")


def milter_reply(text: str, fallback: Reply) -> Reply:
    """
    The milter's SMFIR_REPLYCODE *text* as one reply: a 4xx or 5xx code
    (else *fallback*), its enhanced code when the class matches, the texts
    of every line joined by a space.  Sendmail reads the text as a format
    string, so milters double ``%``; as Postfix, ``%%`` reads as ``%``.
    """
    text = re.sub(r"%(.?)", r"\1", text)
    lines = [line for line in re.split(r"\r\n|\r|\n", text) if line]
    parsed = [_REPLY_LINE.match(line) for line in lines]
    if not parsed or not all(parsed):
        return fallback
    first = parsed[0]
    assert first is not None
    code = first.group(1)
    if any(m is not None and m.group(1) != code for m in parsed):
        return fallback
    enhanced = first.group(3) or ""
    if enhanced and enhanced[0] != code[0]:
        enhanced = ""
    words = " ".join((m.group(4) if m is not None else "").strip() for m in parsed).strip()
    if any(ord(c) < 32 or c == "\x7f" for c in words):
        return fallback
    try:
        return Reply(int(code), enhanced, words[:400] or fallback.text)
    except ValueError:
        return fallback


def _at_connect(reply: Reply) -> Reply:
    """A refusal as the greeting: 4xx becomes 421, 5xx 554 (RFC 5321 section 3.1)."""
    if reply.code in (421, 554):
        return reply
    return Reply(421 if reply.code < 500 else 554, reply.enhanced, reply.text)


def _refusal(stage: Stage, reply: Reply) -> Verdict:
    return Verdict.reject(_at_connect(reply) if stage is Stage.CONNECT else reply)


# --- the conversation with one milter for one SMTP session ------------------------


class MilterUnavailable(Exception):
    """The milter cannot be reached, timed out, broke the protocol or closed (text for logs)."""


class _MilterProtocol(Protocol):
    def __init__(self, conversation: _Conversation) -> None:
        self.conversation = conversation

    def dataReceived(self, data: bytes) -> None:
        self.conversation.received(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]  # Twisted's own default is connectionDone; None marks 'no reason given'
        self.conversation.lost(reason)


class _Factory(Factory):
    def __init__(self, conversation: _Conversation) -> None:
        self.conversation = conversation

    def buildProtocol(self, addr: Any) -> _MilterProtocol:
        return _MilterProtocol(self.conversation)


# Conversation states (Postfix's MILTER8_STAT_*).
_NEW = "new"  # not connected yet
_OPEN = "open"  # talking
_ACCEPTED = "accepted"  # done with the session: every stage goes on
_REFUSED = "refused"  # done with the session: every stage gets self.reply


class _Conversation:
    """One SMTP session's milter connection and its state."""

    def __init__(self, policy: MilterPolicy) -> None:
        self.policy = policy
        self.client = MilterClient()
        self.proto: _MilterProtocol | None = None
        self.state = _NEW
        self.reply: Reply | None = None
        #: the message in progress: None, "accepted" or "discarded"
        self.message: str | None = None
        self.transaction_open = False
        self.connect_sent = False
        self.broken: MilterUnavailable | None = None
        self._waiting: defer.Deferred[Any] | None = None
        self._timer: Any = None
        self._timeout = 0.0
        self._opening: defer.Deferred[None] | None = None

    @property
    def leading_space(self) -> bool:
        return bool(self.client.protocol & SMFIP_HDR_LEADSPC)

    # -- I/O --

    async def open(self) -> None:
        settings = self.policy.settings
        d = self.policy.endpoint.connect(_Factory(self))
        d.addTimeout(settings.connect_timeout, self.policy.clock)
        try:
            proto = await d
        except defer.TimeoutError:
            raise MilterUnavailable(f"connect timed out after {settings.connect_timeout}s") from None
        except Exception as e:
            raise MilterUnavailable(f"cannot connect: {e}") from None
        if self.broken is not None:
            raise self.broken
        self.proto = proto
        negotiated = await self.ask(self.client.negotiate(), settings.command_timeout)
        assert isinstance(negotiated, Negotiated)
        self.state = _OPEN

    def ask(self, sent: bool, timeout: float) -> defer.Deferred[Any]:
        """Write what the client queued; if a reply is awaited, a Deferred of it (a Decision)."""
        if self.broken is not None:
            return defer.fail(self.broken)
        data = self.client.data_to_send()
        if data and self.proto is not None and self.proto.transport is not None:
            self.proto.transport.write(data)
        if not sent:
            return defer.succeed(None)
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting = d
        self._timeout = timeout
        self._arm()
        return d

    def _arm(self) -> None:
        self._disarm()
        self._timer = self.policy.clock.callLater(self._timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        awaiting = self.client.awaiting
        what = awaiting.decode("ascii", "replace") if awaiting else "?"
        self.fail(MilterUnavailable(f"no reply to command {what!r} within {self._timeout}s"))

    def received(self, data: bytes) -> None:
        if self.broken is not None:
            return
        try:
            self.client.receive_data(data)
        except MilterProtocolError as e:
            self.fail(MilterUnavailable(f"protocol error: {e}"))
            return
        while (event := self.client.next_event()) is not None:
            if isinstance(event, Progress):
                if self._waiting is not None:
                    self._arm()  # SMFIR_PROGRESS: the milter is alive, wait again
                continue
            d, self._waiting = self._waiting, None
            self._disarm()
            if d is not None:
                d.callback(event)

    def lost(self, reason: Any) -> None:
        self.proto = None
        self.fail(MilterUnavailable("the milter closed the connection"))

    def fail(self, error: MilterUnavailable) -> None:
        if self.broken is not None:
            return
        self.broken = error
        self._disarm()
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.abortConnection()  # type: ignore[attr-defined]  # a TCP transport: ITCPTransport has it
        d, self._waiting = self._waiting, None
        if d is not None:
            d.errback(error)

    def close(self) -> None:
        """Say goodbye (SMFIC_QUIT) and close; nothing more is asked."""
        self._disarm()
        proto, self.proto = self.proto, None
        if proto is not None and proto.transport is not None and self.broken is None:
            self.client.quit()
            proto.transport.write(self.client.data_to_send())
            proto.transport.loseConnection()
        if self.broken is None:
            self.broken = MilterUnavailable("closed")
        d, self._waiting = self._waiting, None
        if d is not None:
            d.errback(self.broken)


def _read_message(message: MessageInfo, run_blocking: Callable[..., Any] | None) -> Any:
    data = message.data
    if data is not None:
        return defer.succeed(data)
    if run_blocking is None:
        return defer.succeed(message.read())
    return run_blocking(message.read)


def _split_message(data: bytes) -> tuple[bytes, bytes]:
    """(header section with each field's CRLF, body)."""
    if data.startswith(b"\r\n"):
        return b"", data[2:]
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return data, b""
    return data[: end + 2], data[end + 4 :]


class MilterPolicy(Policy):
    """
    One milter, asked at every SMTP stage (see the module notes).

    Args:
        settings: the milter's :class:`MilterSettings`.
        reactor: for connections (and the clock when *clock* is not given).
        clock: an ``IReactorTime`` for the timeouts.
        endpoint: the client endpoint to reach the milter; default from
            ``settings.address`` (:func:`milter_endpoint`).
        run_blocking: runs a blocking call off the reactor thread and
            returns a Deferred (reading a large message from its file);
            ``None`` reads in the reactor thread.
    """

    log = Logger()

    def __init__(
        self,
        settings: MilterSettings,
        *,
        reactor: Any = None,
        clock: Any = None,
        endpoint: Any = None,
        run_blocking: Callable[..., Any] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.settings = settings
        self.name = f"milter {settings.name}"
        self.roles = frozenset(settings.listeners)
        #: The longest a stage may wait on this milter: connecting, then the
        #: longest answer (the policy engine waits at least this long).
        self.stage_timeout = (
            settings.connect_timeout + max(settings.command_timeout, settings.content_timeout) + 10
        )
        self.clock = clock if clock is not None else reactor
        self.endpoint = (
            endpoint
            if endpoint is not None
            else milter_endpoint(reactor, settings.address, settings.connect_timeout)
        )
        self.run_blocking = run_blocking
        self._key = f"txmail.milter.{id(self)}"

    # -- the session's conversation --

    def _conversation(self, session: SessionInfo) -> _Conversation:
        conv = session.notes.get(self._key)
        if conv is None:
            conv = session.notes[self._key] = _Conversation(self)
        return conv

    def _unavailable(
        self, conv: _Conversation, session: SessionInfo, stage: Stage, error: Exception
    ) -> Verdict | None:
        """The default action after *error* (the milter is dropped for the session)."""
        self.log.warn(
            "milter {milter}: {error}; default action {action} for session {session_id}",
            milter=self.settings.name,
            error=str(error),
            action=self.settings.default_action,
            session_id=session.session_id,
        )
        if conv.broken is None:
            conv.fail(error if isinstance(error, MilterUnavailable) else MilterUnavailable(str(error)))
        if self.settings.default_action == "accept":
            conv.state = _ACCEPTED
            return None
        conv.state = _REFUSED
        conv.reply = TEMPFAILED if self.settings.default_action == "tempfail" else UNAVAILABLE_REJECT
        return _refusal(stage, conv.reply)

    async def _start(self, conv: _Conversation, session: SessionInfo) -> Decision | None:
        """Connect, negotiate and send SMFIC_CONNECT; raise MilterUnavailable on failure."""
        conv.state = _OPEN  # (refined below; keeps a second stage from starting again)
        await conv.open()
        hostname, family, port, address = _connect_args(session)
        conv.connect_sent = True
        sent = conv.client.connect(hostname, family, port, address, macros_for("connect", session))
        return await conv.ask(sent, self.settings.command_timeout)  # type: ignore[no-any-return]  # the conversation's answer is the milter reply, untyped

    def _session_done(self, conv: _Conversation, stage: Stage) -> tuple[bool, Verdict | None]:
        """Whether the milter is done with this session, and the stage's verdict if so."""
        if conv.state == _ACCEPTED:
            return True, None
        if conv.state == _REFUSED:
            assert conv.reply is not None
            return True, _refusal(stage, conv.reply)
        return False, None

    def _decided(
        self, conv: _Conversation, stage: Stage, decision: Decision | None
    ) -> tuple[bool, Verdict | None]:
        """
        A reply as ``(done, verdict)``: *done* when the stage (or the
        message, or the session) needs nothing more from the milter.
        """
        if decision is None or decision.action in ("continue", "skip"):
            return False, None
        action = decision.action
        session_level = decision.command in (SMFIC_CONNECT, SMFIC_HELO)
        if action == "accept":
            if session_level:
                conv.state = _ACCEPTED
                conv.close()
            else:
                conv.message = "accepted"
            return True, None
        if action == "discard":
            conv.message = "discarded"
            return True, (Verdict.discard_message() if stage is Stage.DATA else None)
        if action in ("shutdown", "connfail"):
            conv.state, conv.reply = _REFUSED, SHUTDOWN
            conv.close()
            return True, Verdict.reject(SHUTDOWN)
        if action == "reject":
            reply = REJECTED
        elif action == "tempfail":
            reply = TEMPFAILED
        else:
            fallback = TEMPFAILED if decision.text.startswith("4") else REJECTED
            reply = milter_reply(decision.text, fallback)
        if session_level:
            conv.state, conv.reply = _REFUSED, reply
            conv.close()
        return True, _refusal(stage, reply)

    async def _envelope(
        self, session: SessionInfo, stage: Stage, send: Callable[[_Conversation], bool]
    ) -> Verdict | None:
        conv = self._conversation(session)
        try:
            if conv.state == _NEW:
                decision = await self._start(conv, session)
                done, verdict = self._decided(conv, stage, decision)
                if stage is Stage.CONNECT or done:
                    return verdict
            done, verdict = self._session_done(conv, stage)
            if done:
                return verdict
            if stage in (Stage.RCPT,) and conv.message is not None:
                return None  # the milter is done with this message
            decision = await conv.ask(send(conv), self.settings.command_timeout)
        except MilterUnavailable as e:
            return self._unavailable(conv, session, stage, e)
        return self._decided(conv, stage, decision)[1]

    # -- the stages --

    def on_connect(self, session: SessionInfo) -> Any:
        return defer.Deferred.fromCoroutine(self._envelope(session, Stage.CONNECT, lambda conv: False))

    def on_helo(self, session: SessionInfo, name: str) -> Any:
        def send(conv: _Conversation) -> bool:
            if conv.transaction_open:
                conv.client.abort()  # HELO after MAIL ends the message (as Postfix does)
                conv.transaction_open = False
            conv.message = None
            return conv.client.helo(name, macros_for("helo", session))

        return defer.Deferred.fromCoroutine(self._envelope(session, Stage.HELO, send))

    def on_mail(self, session: SessionInfo) -> Any:
        tx = session.transaction
        if tx is None:
            return None

        def send(conv: _Conversation) -> bool:
            if conv.transaction_open:
                conv.client.abort()
            conv.message = None
            conv.transaction_open = True
            return conv.client.mail(_esmtp_args(tx.mail_from, tx.mail_params), macros_for("mail", session))

        return defer.Deferred.fromCoroutine(self._envelope(session, Stage.MAIL, send))

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Any:
        if not recipient.accepted:
            return None  # only recipients the router accepted (no SMFIP_RCPT_REJ)

        def send(conv: _Conversation) -> bool:
            macros = {"{rcpt_addr}": recipient.address}
            return conv.client.rcpt(_esmtp_args(recipient.address, recipient.params), macros)

        return defer.Deferred.fromCoroutine(self._envelope(session, Stage.RCPT, send))

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        return defer.Deferred.fromCoroutine(self._data(session, message))

    async def _data(self, session: SessionInfo, message: MessageInfo) -> Verdict | None:
        conv = self._conversation(session)
        stage = Stage.DATA
        try:
            if conv.state == _NEW:
                done, verdict = self._decided(conv, stage, await self._start(conv, session))
                if done:
                    return verdict
            done, verdict = self._session_done(conv, stage)
            if done:
                return verdict
            if conv.message == "discarded":
                return Verdict.discard_message()
            if conv.message == "accepted":
                return None
            client = conv.client
            settings = self.settings
            if not conv.transaction_open:
                # The MAIL stage was not ours (an earlier policy answered it): tell the milter now.
                tx = session.transaction
                conv.transaction_open = True
                mail_from = tx.mail_from if tx is not None else ""
                decision = await conv.ask(
                    client.mail(
                        _esmtp_args(mail_from, tx.mail_params if tx else {}), macros_for("mail", session)
                    ),
                    settings.command_timeout,
                )
                done, verdict = self._decided(conv, stage, decision)
                if done:
                    return verdict
                for rcpt in tx.recipients if tx is not None else ():
                    decision = await conv.ask(
                        client.rcpt([f"<{rcpt}>"], {"{rcpt_addr}": rcpt}), settings.command_timeout
                    )
                    done, verdict = self._decided(conv, stage, decision)
                    if done:
                        return verdict
            decision = await conv.ask(client.data(macros_for("data", session)), settings.command_timeout)
            done, verdict = self._decided(conv, stage, decision)
            if done:
                return verdict
            data = await _read_message(message, self.run_blocking)
            section, body = _split_message(data)
            eoh_macros = macros_for("eoh", session)
            for name, value in header_fields(section, leading_space=conv.leading_space):
                decision = await conv.ask(client.header(name, value, eoh_macros), settings.content_timeout)
                done, verdict = self._decided(conv, stage, decision)
                if done:
                    return verdict
            decision = await conv.ask(client.end_of_headers(eoh_macros), settings.content_timeout)
            done, verdict = self._decided(conv, stage, decision)
            if done:
                return verdict
            for chunk in body_chunks(body):
                decision = await conv.ask(client.body(chunk), settings.content_timeout)
                if decision is not None and decision.command == SMFIC_BODY and decision.action == "skip":
                    break
                done, verdict = self._decided(conv, stage, decision)
                if done:
                    return verdict
            decision = await conv.ask(
                client.end_of_message(macros_for("eom", session)), settings.content_timeout
            )
            conv.transaction_open = False
            return self._end_of_message(conv, stage, decision)
        except MilterUnavailable as e:
            return self._unavailable(conv, session, stage, e)

    def _end_of_message(self, conv: _Conversation, stage: Stage, decision: Decision) -> Verdict | None:
        conv.message = None
        if decision.action not in ("accept", "continue"):
            return self._decided(conv, stage, decision)[1]
        edits = [m for m in decision.modifications if isinstance(m, AddHeader | InsertHeader | ChangeHeader)]
        chunks = [m.chunk for m in decision.modifications if isinstance(m, ReplaceBody)]
        holds = [m.reason for m in decision.modifications if isinstance(m, Quarantine)]
        result = Verdict()
        if edits:
            leading_space = conv.leading_space
            try:
                for edit in edits:
                    milter_field(edit.name, edit.value, leading_space=leading_space)
            except (ValueError, UnicodeDecodeError) as e:
                raise MilterUnavailable(f"bad header field from the milter: {e}") from None
            result = result.then(
                Verdict.edit_headers(
                    lambda section: apply_header_edits(section, edits, leading_space=leading_space)
                )
            )
        if chunks:
            result = result.then(Verdict.replace_body(b"".join(chunks)))
        if holds:
            result = result.then(Verdict.hold_message(holds[-1] or "quarantined by milter"))
        return result if result != Verdict() else None

    def on_close(self, session: SessionInfo) -> None:
        conv = session.notes.pop(self._key, None)
        if conv is not None:
            conv.close()


def build_milter_policies(
    settings_list: Sequence[MilterSettings],
    *,
    reactor: Any = None,
    run_blocking: Callable[..., Any] | None = None,
) -> list[MilterPolicy]:
    """One :class:`MilterPolicy` per configured milter, in order."""
    return [MilterPolicy(s, reactor=reactor, run_blocking=run_blocking) for s in settings_list]
