"""
The sans-IO SMTP server session (RFC 5321, with RFC 1870 SIZE, RFC 6152
8BITMIME, RFC 2034 ENHANCEDSTATUSCODES, RFC 2920 PIPELINING, RFC 3030
CHUNKING, RFC 3207 STARTTLS, RFC 4954 AUTH and RFC 6531 SMTPUTF8).

Theory of operation
-------------------
The session has the h11/h2 shape::

    session = ServerSession("mx.example.test")
    transport.write(session.data_to_send())          # the 220 greeting
    session.receive_data(bytes_from_network)
    while (event := session.next_event()) is not None:
        ...                                           # maybe session.accept()
    transport.write(session.data_to_send())

* The session answers on its own where it can (syntax, sequence, limits)
  and queues those replies in an output buffer (:meth:`data_to_send`).
* Events that need the application (``MailFrom``, ``RcptTo``,
  ``DataStart``, ``DataComplete``, ``AuthStep``, ``StartTLS``; see
  :mod:`txmail.smtp.events`) **pause** the session: :meth:`next_event`
  returns ``None`` and nothing more is parsed until :meth:`accept` or
  :meth:`reject` is called.  Input received meanwhile is only buffered.
  That is what makes RFC 2920 pipelining and Deferred-returning checks
  safe: replies go out in command order, and no command runs before the
  previous one was decided.
* :class:`ServerSession` holds what lasts for the connection (greeting
  name, TLS, authenticated user, error count);
  :class:`MailTransaction` what lasts for one mail transaction (the
  envelope, aiosmtpd's ``Envelope``).  RSET, EHLO/HELO, the end of the
  data and STARTTLS drop the transaction.
* Which command is allowed in which state is data (:data:`ALLOWED_STATES`,
  :data:`SEQUENCE_REPLIES`); a missing entry is ``503 5.5.1``.
* Message content is handed over in :class:`~txmail.smtp.events.DataChunk`
  pieces as it arrives and is never accumulated here.

Invariants and policies
-----------------------
* Every buffer is bounded: a command line may hold at most
  ``max_line_length`` octets including CRLF (RFC 5321 section 4.5.3.1.4);
  a longer one gets ``500 5.5.2``, is discarded up to its CRLF, and the
  session goes on.  AUTH lines may hold :data:`MAX_AUTH_LINE` octets
  (RFC 4954 section 4).  While paused, the adapter stops reading from the
  network, so the input buffer holds at most what was already read.
* Only CRLF ends a command line.  A command line containing a bare CR or LF
  is a syntax error (RFC 5321 section 2.3.8).
* DATA framing is in :mod:`txmail.smtp.dotstuff`: only ``<CRLF>.<CRLF>``
  ends the data (no SMTP smuggling), and a message with bare CR or LF is
  read to its end and then refused with ``550 5.6.0``.
* Text lines longer than 1000 octets inside the message are **accepted**:
  RFC 5321 section 4.5.3.1 asks receivers to use "implementation techniques
  that impose no limits on the length of these objects" where possible, and
  real mail has long lines (Postfix and Exim accept them too).  Nothing is
  buffered per line, so this costs no memory.
* NUL octets inside the message are **accepted** and kept as they came,
  as Postfix does by default (its ``message_reject_characters`` and
  ``message_strip_characters`` are empty): RFC 5322 forbids them in a
  message, but rejecting mail that other servers pass on would bounce it
  for nothing.  IMAP sends such a message's octets as stored (``BINARY[]``
  in a literal8; see :mod:`txmail.imap.fetch`), POP3 as stored.  In
  command lines a NUL is a syntax error.
* Size (RFC 1870): ``SIZE=`` over the limit is refused at MAIL with
  ``552 5.3.4``; the content is counted as it streams (after
  dot-unstuffing), and once over the limit it is read to its end and
  refused with ``552 5.3.4``; the application is told at once with
  :class:`~txmail.smtp.events.DataAborted` so it can drop what it stored.
* Recipients beyond ``max_recipients`` get ``452 4.5.3`` (RFC 5321 section
  4.5.3.1.10); the ones accepted before keep the transaction going.
* Sender-specified routing (``%``, ``!``, ``@`` in the local part) and
  address literals in forward-paths are refused with ``553 5.7.1`` unless
  the client authenticated: our router never interprets them, and refusing
  them here means no later component can be tricked into relaying.  A
  source route (``<@a:u@d>``) is dropped by the grammar and ``u@d`` is
  checked like any address.
* BDAT (RFC 3030): a chunk is always read by its declared size, even when
  the command is refused, so the chunk's octets are never taken for
  commands.  Once a chunk failed, the rest of the transaction's chunks are
  read and refused, up to ``BDAT ... LAST``.  A BDAT whose size cannot be
  read loses the framing, so the session answers ``421`` and closes.
* STARTTLS (RFC 3207): after the command nothing more is parsed; bytes the
  client pipelined behind it are kept in :attr:`ServerSession.trailing_data`
  and dropped by :meth:`accept` (the STARTTLS command injection of
  CVE-2011-0411).  After TLS the session starts over: the client must EHLO
  again, and any authentication and transaction are forgotten.
* MAIL before EHLO/HELO is tolerated on a fresh connection: RFC 5321
  section 4.1.4 makes greeting the client's MUST, nothing depends on it, and
  Postfix does the same by default.  After STARTTLS it is required.
* Protocol errors (unknown command, syntax, sequence, failed AUTH, long
  lines, malformed parameter values) are counted; past ``max_bad_commands``
  the session answers ``421 4.7.0`` and closes.
* DSN (RFC 3461) is advertised and its parameters are checked here and
  kept, normalised, in the transaction (and so in the ``Envelope`` the
  router gets): ``RET`` and ``NOTIFY`` upper-cased (NOTIFY without
  repeats, in the client's order), ``ENVID`` and ``ORCPT`` exactly as
  given, still xtext-encoded.  Acting on them (notices, bounces, passing
  them on) is the queue runner's business.  A malformed value is
  ``501 5.5.4`` with a text naming the parameter; a repeated parameter is
  ``501 5.5.4`` too (RFC 3461 section 4: each "MAY appear only once").
  The decoded ENVID and ORCPT address must be printable US-ASCII (RFC 3461
  sections 4.2 and 4.4), so an encoded CR LF can never reach a bounce's
  header fields.
* Submission sender ownership is the application's check (it needs the
  directory, a Deferred): :meth:`ServerSession.sender_login_check` says
  which user must own the reverse-path of a ``MailFrom``, and the
  application rejects it with :data:`SENDER_NOT_OWNED` otherwise.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from txmail._session import MAX_AUTH_LINE, LineSession
from txmail.auth import sasl
from txmail.smtp import codes, grammar
from txmail.smtp.codes import Reply
from txmail.smtp.dotstuff import DataDecoder, LineEndingChecker
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
from txmail.smtp.grammar import (
    GrammarError,
    Mailbox,
    ParamSyntaxError,
    bdat_argument,
    helo_name,
    mail_from_argument,
    rcpt_to_argument,
)

__all__ = [
    "ALLOWED_STATES",
    "CHECKS",
    "DSN_NOTIFY_KEYWORDS",
    "MAX_AUTH_LINE",
    "MAX_ENVID_LENGTH",
    "SENDER_NOT_OWNED",
    "SEQUENCE_REPLIES",
    "SESSION_ROLES",
    "USE_LHLO",
    "MailTransaction",
    "SMTPLimits",
    "ServerSession",
    "SessionRole",
    "State",
]

#: The optional pause points (:class:`ServerSession`'s ``checks``): at
#: connect (``ClientConnected``), EHLO/HELO (``HeloReceived``) and the end
#: of an AUTH exchange (``AuthFinished``).  MAIL, RCPT and DATA always pause.
CHECKS = frozenset({"connect", "helo", "auth"})

#: ``mta``: port 25, anyone may send to local recipients.  ``submission``:
#: port 587/465, AUTH is required before MAIL (RFC 6409 section 4.3).
#: ``lmtp``: LMTP (RFC 2033) for an MTA in front of us: LHLO instead of
#: EHLO/HELO, and one reply per recipient at the end of the data.
SessionRole = Literal["mta", "submission", "lmtp"]
#: The values of :data:`SessionRole`.
SESSION_ROLES: tuple[SessionRole, ...] = get_args(SessionRole)

#: The reply to EHLO/HELO on an LMTP connection (RFC 2033 section 4.1: the
#: client greets with LHLO; SMTP's greetings are not LMTP commands).
USE_LHLO = Reply(500, "5.5.1", "This is LMTP: use LHLO")


@dataclass(frozen=True)
class SMTPLimits:
    """
    Limits of one SMTP server (RFC 5321 section 4.5.3).

    Attributes:
        max_message_size: octets of message content (as the client sent it,
            without our trace fields); advertised as ``SIZE``.
        max_recipients: RCPTs per transaction (the RFC's minimum is 100).
        max_line_length: octets of a command line including CRLF.
        command_timeout: seconds to wait for the next command (RFC 5321
            section 4.5.3.2.7 suggests 5 minutes).
        data_timeout: seconds to wait for more message content.
        max_bad_commands: protocol errors tolerated before ``421``.
    """

    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    max_line_length: int = 1000
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    max_bad_commands: int = 20


class State(enum.Enum):
    """Where the session is in the protocol (RFC 5321 section 4.1.4)."""

    #: Greeting sent, no EHLO/HELO yet.
    CONNECTED = "connected"
    #: EHLO/HELO done, no transaction.
    GREETED = "greeted"
    #: MAIL accepted, no recipient yet.
    MAIL = "mail"
    #: At least one recipient accepted.
    RCPT = "rcpt"
    #: Reading DATA content up to ``<CRLF>.<CRLF>``.
    DATA = "data"
    #: Reading the octets of one BDAT chunk.
    BDAT = "bdat"
    #: Between BDAT chunks of one transaction (no ``LAST`` yet).
    CHUNKING = "chunking"
    #: Inside an AUTH exchange: lines are SASL responses.
    AUTH = "auth"
    #: QUIT, 421, or a fatal error: nothing more is read.
    CLOSED = "closed"


_COMMAND_STATES = frozenset({State.CONNECTED, State.GREETED, State.MAIL, State.RCPT, State.CHUNKING})

#: The state table: in which states each command is allowed.  A command in
#: any other state gets :data:`SEQUENCE_REPLIES` or ``503 5.5.1``.
ALLOWED_STATES: dict[str, frozenset[State]] = {
    "EHLO": _COMMAND_STATES,
    "HELO": _COMMAND_STATES,
    "LHLO": _COMMAND_STATES,
    # MAIL before EHLO/HELO is tolerated (the client's MUST, not ours; Postfix's
    # default smtpd_helo_required=no), except after STARTTLS: see _do_mail.
    "MAIL": frozenset({State.CONNECTED, State.GREETED}),
    "RCPT": frozenset({State.MAIL, State.RCPT}),
    "DATA": frozenset({State.RCPT}),
    "BDAT": frozenset({State.RCPT, State.CHUNKING}),
    "RSET": _COMMAND_STATES,
    "NOOP": _COMMAND_STATES,
    "QUIT": _COMMAND_STATES,
    "HELP": _COMMAND_STATES,
    "VRFY": _COMMAND_STATES,
    "EXPN": _COMMAND_STATES,
    "STARTTLS": frozenset({State.GREETED}),
    "AUTH": frozenset({State.GREETED}),
}

#: Replies for specific out-of-sequence commands (default ``503 5.5.1``).
SEQUENCE_REPLIES: dict[tuple[str, State], Reply] = {
    ("STARTTLS", State.CONNECTED): codes.NEED_HELO,
    ("AUTH", State.CONNECTED): codes.NEED_HELO,
    ("MAIL", State.MAIL): codes.NESTED_MAIL,
    ("MAIL", State.RCPT): codes.NESTED_MAIL,
    ("MAIL", State.CHUNKING): codes.NESTED_MAIL,
    # RFC 5321 section 3.3: DATA with no accepted recipient: 503 or 554.
    ("DATA", State.MAIL): codes.NO_VALID_RECIPIENTS,
    ("BDAT", State.MAIL): codes.NO_VALID_RECIPIENTS,
}

_MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "AUTH", "RET", "ENVID", "REQUIRETLS"})
#: RFC 8689 section 4.1: REQUIRETLS only on a connection protected by TLS.
_REQUIRETLS_NEEDS_TLS = Reply(530, "5.7.10", "REQUIRETLS needs a TLS connection: use STARTTLS first")
_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})
_BODY_TYPES = frozenset({"7BIT", "8BITMIME"})

#: RFC 3461 section 4.1: ``NOTIFY=NEVER``, or a list of these.
DSN_NOTIFY_KEYWORDS = ("SUCCESS", "FAILURE", "DELAY")
#: RFC 3461 section 4.4: an ENVID is at most 100 characters.
MAX_ENVID_LENGTH = 100

#: Postfix's ``reject_sender_login_mismatch`` reply: an authenticated
#: submission client gave a reverse-path it does not own (issue 5).  RFC
#: 3463 section 3.8: X.7.1 "delivery not authorized".
SENDER_NOT_OWNED = Reply(553, "5.7.1", "Sender address rejected: not owned by user")

_BAD_RET = codes.PARAM_SYNTAX_ERROR.with_text("Bad RET parameter: expected RET=FULL or RET=HDRS")
_BAD_ENVID = codes.PARAM_SYNTAX_ERROR.with_text(
    f"Bad ENVID parameter: expected xtext of at most {MAX_ENVID_LENGTH} characters"
)
_BAD_NOTIFY = codes.PARAM_SYNTAX_ERROR.with_text(
    "Bad NOTIFY parameter: expected NEVER or a list of SUCCESS, FAILURE, DELAY"
)
_BAD_ORCPT = codes.PARAM_SYNTAX_ERROR.with_text("Bad ORCPT parameter: expected addr-type;xtext")

#: atext (RFC 5322 section 3.2.3), for the ORCPT addr-type (an atom).
_ATEXT = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~")


def _printable_xtext(text: str) -> bool:
    """Non-empty xtext whose decoded value is printable US-ASCII (32-126)."""
    decoded = grammar.xtext_decode(text)
    return decoded is not None and decoded != "" and all(32 <= ord(c) <= 126 for c in decoded)


def _duplicate_reply(error: ParamSyntaxError) -> Reply:
    """501 5.5.4 naming a repeated parameter, else the generic 501 5.5.4."""
    # The grammar's message is "repeated parameter KEY" with KEY a checked
    # esmtp-keyword (letters, digits, "-"), so it is safe to echo.
    prefix = "repeated parameter "
    message = str(error)
    if message.startswith(prefix):
        return codes.PARAM_SYNTAX_ERROR.with_text(f"Duplicate {message[len(prefix) :]} parameter")
    return codes.PARAM_SYNTAX_ERROR


@dataclass
class MailTransaction:
    """
    The envelope of the mail transaction in progress (RFC 5321 section 3.3).

    Attributes:
        mail_from: the reverse-path, ``""`` for ``<>``.
        mail_params: MAIL parameters, upper-cased keys.  The DSN parameters
            (RFC 3461) are checked and normalised: ``RET`` is ``FULL`` or
            ``HDRS``; ``ENVID`` is the xtext as given.
        smtputf8: the client gave ``SMTPUTF8`` (RFC 6531).
        rcpt_to: accepted forward-paths in order.
        rcpt_params: the parameters of each accepted recipient: ``NOTIFY``
            is ``NEVER`` or a comma list of ``SUCCESS``/``FAILURE``/``DELAY``
            (upper case, no repeats); ``ORCPT`` is ``addr-type;xtext`` as given.
        chunking: the content comes by BDAT (RFC 3030).
        data_started: the application accepted ``DataStart``.
        size: octets of content received so far.
        failure: once set, the content is read to its end and refused with
            this reply.
    """

    mail_from: str
    mail_params: dict[str, str | None] = field(default_factory=dict)
    smtputf8: bool = False
    rcpt_to: list[str] = field(default_factory=list)
    rcpt_params: list[dict[str, str | None]] = field(default_factory=list)
    chunking: bool = False
    data_started: bool = False
    size: int = 0
    failure: Reply | None = None


@dataclass
class _Chunk:
    """The BDAT chunk being read."""

    remaining: int
    last: bool
    #: The chunk is read and thrown away, then answered with this reply.
    discard_reply: Reply | None = None
    #: The BDAT command itself was out of sequence (counted as an error).
    out_of_sequence: bool = False


class ServerSession(LineSession[Event, Reply]):
    """
    One SMTP server connection, without I/O.  The line, event and SASL
    plumbing is :class:`txmail._session.LineSession`'s.

    Args:
        hostname: our name, in the greeting and EHLO reply.
        role: ``"mta"`` or ``"submission"`` (AUTH required before MAIL).
        limits: the :class:`SMTPLimits`.
        tls_available: STARTTLS can be offered (a TLS context exists and the
            transport can start TLS).
        tls_active: the connection already runs TLS (implicit TLS, port 465).
        auth_enabled: AUTH may be offered at all (an authenticator exists).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``: whether
            password mechanisms may run without TLS
            (:func:`txmail.auth.sasl.available_mechanisms`).
        loopback: the client is on the loopback interface.
        sasl_factory: makes the :class:`txmail.auth.sasl.SASLServer` of an
            exchange (tests inject a fixed nonce); default the class itself.
        checks: the optional stages (:data:`CHECKS`) the application
            decides on (policies, :mod:`txmail.policy.hooks`): the session
            then pauses on ``ClientConnected`` (no greeting until accepted),
            ``HeloReceived`` and ``AuthFinished``.

    Attributes:
        state: the :class:`State`.
        helo: the name the client gave in EHLO/HELO, or ``None``.
        extended: the client greeted with EHLO.
        tls: the connection runs TLS.
        authenticated_user: the canonical user the client authenticated as.
        transaction: the :class:`MailTransaction` in progress, or ``None``.
        bad_commands: protocol errors so far.
        tls_restarted: STARTTLS succeeded; EHLO/HELO is now required before MAIL.
        refused: the connection was refused with a ``554`` greeting: every
            command but QUIT gets ``503`` (RFC 5321 section 3.1).
    """

    CLOSED_STATE = State.CLOSED
    AUTH_STATE = State.AUTH
    AUTH_DONE_STATE = State.GREETED
    STARTTLS_EVENT = StartTLS
    CLOSING_EVENT = ConnectionClosing
    LINE_TOO_LONG_REPLY = codes.LINE_TOO_LONG
    TOO_MANY_ERRORS_REPLY = codes.TOO_MANY_ERRORS
    TIMEOUT_REPLY = codes.TIMEOUT
    SHUTDOWN_REPLY = codes.SHUTTING_DOWN
    UNKNOWN_COMMAND_REPLY = codes.SYNTAX_ERROR
    AUTH_BAD_BASE64_REPLY = codes.AUTH_BAD_BASE64
    AUTH_CANCELLED_REPLY = codes.AUTH_CANCELLED
    AUTH_FAILED_REPLY = codes.AUTH_FAILED

    def __init__(
        self,
        hostname: str,
        *,
        role: SessionRole = "mta",
        limits: SMTPLimits | None = None,
        tls_available: bool = False,
        tls_active: bool = False,
        auth_enabled: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        loopback: bool = False,
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
        checks: frozenset[str] = frozenset(),
    ) -> None:
        if role not in SESSION_ROLES:
            raise ValueError(f"unknown role {role!r}")
        if not checks <= CHECKS:
            raise ValueError(f"unknown checks {sorted(checks - CHECKS)}")
        super().__init__(
            tls_available=tls_available,
            tls_active=tls_active,
            plaintext_auth=plaintext_auth,
            loopback=loopback,
            sasl_factory=sasl_factory,
        )
        self.hostname = hostname
        self.role = role
        self.limits = limits if limits is not None else SMTPLimits()
        self.auth_enabled = auth_enabled

        self.state = State.CONNECTED
        self.helo: str | None = None
        self.extended = False
        self.authenticated_user: str | None = None
        self.transaction: MailTransaction | None = None
        self.tls_restarted = False
        self.checks = checks
        self.refused = False

        self._decoder: DataDecoder | None = None
        self._chunk: _Chunk | None = None
        self._checker: LineEndingChecker | None = None
        self._resume_state = State.CONNECTED  # where a BDAT chunk returns to

        if "connect" in checks:
            self._emit(ClientConnected())
        else:
            self._send(self._greeting())

    # -- public API ----------------------------------------------------------

    def _greeting(self) -> Reply:
        return Reply(220, "", f"{self.hostname} {'LMTP' if self.role == 'lmtp' else 'ESMTP'} txmail")

    @property
    def in_data(self) -> bool:
        """Message content is being read (the data timeout applies)."""
        return self.state in (State.DATA, State.BDAT)

    @property
    def protocol(self) -> str:
        """
        The ``with`` keyword of our ``Received:`` field (RFC 3848, RFC 6531
        section 3.7.3): SMTP, ESMTP, ESMTPS, ESMTPA, ESMTPSA, UTF8SMTP...
        """
        if self.role == "lmtp":
            base = "LMTP"
        elif not self.extended:
            return "SMTP"
        else:
            base = "UTF8SMTP" if self.transaction is not None and self.transaction.smtputf8 else "ESMTP"
        return base + ("S" if self.tls else "") + ("A" if self.authenticated_user else "")

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered right now (none once authenticated)."""
        if not self.auth_enabled or self.authenticated_user is not None:
            return ()
        return sasl.available_mechanisms(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )

    def sender_login_check(self, address: str) -> str | None:
        """
        The user who must own *address* (a ``MailFrom`` reverse-path) for
        MAIL to be accepted, or ``None`` when no check applies.

        Only on the submission role, for an authenticated user (issue 5:
        Postfix's ``reject_sender_login_mismatch``).  The null reverse-path
        ``<>`` is not checked: Postfix skips it too, and a client may send
        notifications (RFC 3464 DSNs, RFC 8098 MDNs) with it.  The port 25
        role is never checked.  The application asks the directory
        (``IDirectory.owns_address``) and rejects with
        :data:`SENDER_NOT_OWNED` when the answer is no.
        """
        if self.role != "submission" or self.authenticated_user is None or not address:
            return None
        return self.authenticated_user

    def accept(self, result: Any = None) -> None:
        """
        Answer the pending event positively.

        Args:
            result: for ``DataComplete``, the reply to send (default
                ``250 2.0.0 OK``) -- on an LMTP session, a sequence of
                replies, one per accepted recipient in order (RFC 2033
                section 4.2), or one reply for them all; for ``AuthStep``, the ``Challenge``,
                ``Succeeded`` or ``Failed`` the authenticator returned;
                unused otherwise.

        Raises:
            RuntimeError: no event is pending (the caller's mistake).
        """
        event = self._take_pending()
        if isinstance(event, MailFrom):
            self.transaction = MailTransaction(
                mail_from=event.address,
                mail_params=dict(event.params),
                smtputf8="SMTPUTF8" in event.params,
            )
            self.state = State.MAIL
            self._send(codes.SENDER_OK)
        elif isinstance(event, RcptTo):
            tx = self._tx()
            tx.rcpt_to.append(event.address)
            tx.rcpt_params.append(dict(event.params))
            self.state = State.RCPT
            self._send(codes.RECIPIENT_OK)
        elif isinstance(event, DataStart):
            self._tx().data_started = True
            if not event.chunking:
                self.state = State.DATA
                self._decoder = DataDecoder()
                self._send(codes.START_MAIL_INPUT)
        elif isinstance(event, DataComplete):
            self._end_transaction(result if isinstance(result, Reply | tuple | list) else codes.OK)
        elif isinstance(event, AuthStep):
            self._authenticator_result(result)
        elif isinstance(event, StartTLS):
            self._send(codes.READY_TO_START_TLS)
            self._reset_for_tls()
        elif isinstance(event, ClientConnected):
            self._send(self._greeting())
        elif isinstance(event, HeloReceived):
            self._finish_greeting(event.name, event.extended)
        elif isinstance(event, AuthFinished):
            if event.succeeded and event.username is not None:
                self._authenticated(event.username, event.mechanism)
            else:
                super()._auth_failed(event.mechanism)
        else:  # pragma: no cover - every pausing event is handled above
            raise RuntimeError(f"cannot accept {event!r}")

    def reject(self, reply: Reply) -> None:
        """
        Answer the pending event with *reply* (a 4xx or 5xx).  A ``421``
        closes the session after it is sent, whatever the event.

        Raises:
            RuntimeError: no event is pending.
            ValueError: *reply* is positive.
        """
        if reply.is_positive:
            raise ValueError("reject() needs a 4xx or 5xx reply")
        event = self._take_pending()
        if reply.code == 421:
            self._close(reply, "policy")
            return
        if isinstance(event, MailFrom | RcptTo | HeloReceived):
            self._send(reply)
        elif isinstance(event, ClientConnected):
            # RFC 5321 section 3.1: a 554 greeting, then 503 until QUIT.
            self.refused = True
            self._send(reply)
        elif isinstance(event, AuthFinished):
            if event.succeeded:
                self._send(reply)
            else:
                self._protocol_error(reply)
        elif isinstance(event, DataStart):
            if event.chunking:
                # The chunk's octets follow the command: read them, then refuse.
                tx = self._tx()
                tx.failure = reply
                assert self._chunk is not None
                self._chunk.discard_reply = reply
            else:
                self._send(reply)
        elif isinstance(event, DataComplete):
            self._end_transaction(reply)
        elif isinstance(event, AuthStep):
            self._end_auth()
            self._send(reply)
        elif isinstance(event, StartTLS):
            # The pipelined bytes were sent against RFC 3207; they stay dropped.
            self._trailing.clear()
            self._send(reply)
        else:  # pragma: no cover
            raise RuntimeError(f"cannot reject {event!r}")

    def connection_lost(self) -> None:
        """The connection went away; the session ends without a reply."""
        if self.state is not State.CLOSED:
            self._abort_data(codes.LOCAL_ERROR)
            self._pending = None
            self.state = State.CLOSED

    # -- output and events ---------------------------------------------------

    def _send(self, reply: Reply) -> None:
        self._write(reply.to_bytes())

    def _tx(self) -> MailTransaction:
        assert self.transaction is not None
        return self.transaction

    def _challenge(self, data: bytes) -> None:
        self._send(Reply(334, "", sasl.encode_challenge(data).decode("ascii")))

    def _max_line_length(self) -> int:
        return self.limits.max_line_length

    def _max_bad_commands(self) -> int:
        return self.limits.max_bad_commands

    def _close(self, reply: Reply, reason: str) -> None:
        self._abort_data(reply)
        super()._close(reply, reason)

    def _abort_data(self, reply: Reply) -> None:
        """Tell the application to drop content it was given, if any."""
        tx = self.transaction
        if tx is not None and tx.data_started and tx.failure is None:
            tx.failure = reply
            self._emit(DataAborted(reply))

    def _reset_transaction(self, reply: Reply) -> None:
        self._abort_data(reply)
        self.transaction = None
        self._decoder = None
        self._chunk = None
        self._checker = None
        if self.state is not State.CLOSED:
            self.state = State.GREETED if self.helo is not None else State.CONNECTED

    def _end_transaction(self, reply: Reply | Sequence[Reply]) -> None:
        """
        End the transaction with *reply*.  On LMTP the end of the data is
        answered once per accepted recipient (RFC 2033 section 4.2): *reply*
        is then sent that many times, or is the sequence of those replies.

        Raises:
            ValueError: a sequence of replies whose length is not the
                number of recipients (the caller's mistake).
        """
        tx = self.transaction
        count = len(tx.rcpt_to) if self.role == "lmtp" and tx is not None and tx.rcpt_to else 1
        replies = [reply] * count if isinstance(reply, Reply) else list(reply)
        if len(replies) != count:
            raise ValueError(f"{len(replies)} replies for {count} recipient(s)")
        self.transaction = None
        self._reset_transaction(replies[0])
        for r in replies:
            self._send(r)

    def _reset_for_tls(self) -> None:
        """RFC 3207 section 4.2: forget everything the client said before TLS."""
        self._tls_accepted()
        self._reset_transaction(codes.OK)
        self.helo = None
        self.extended = False
        self.authenticated_user = None
        self.tls_restarted = True
        self.state = State.CONNECTED

    # -- parsing -------------------------------------------------------------

    def _step(self) -> bool:
        """Do one unit of work; ``False`` when more input is needed."""
        if self.state is State.DATA:
            return self._step_data()
        if self.state is State.BDAT:
            return self._step_bdat()
        return super()._step()

    def _command(self, line: bytes) -> None:
        split = self._split_command(line)
        if split is None:
            return
        verb, arg = split
        arg = arg.strip(" ")
        if (verb == "LHLO") != (self.role == "lmtp") and verb in ("LHLO", "EHLO", "HELO"):
            # LHLO only on LMTP, EHLO/HELO never there (RFC 2033 section 4.1).
            self._protocol_error(USE_LHLO if self.role == "lmtp" else codes.SYNTAX_ERROR)
            return
        if self.refused and verb != "QUIT":
            # RFC 5321 section 3.1: after a 554 greeting, "the server ...
            # SHOULD respond to any intervening commands with 503".
            self._protocol_error(codes.BAD_SEQUENCE)
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._protocol_error(codes.SYNTAX_ERROR)
            return
        if verb == "BDAT":
            # The chunk must be consumed even when the command is refused.
            self._do_bdat(arg)
            return
        if self.state not in ALLOWED_STATES[verb]:
            self._protocol_error(SEQUENCE_REPLIES.get((verb, self.state), codes.BAD_SEQUENCE))
            return
        handler(self, arg)

    # -- commands --------------------------------------------------------------

    def _do_ehlo(self, arg: str) -> None:
        self._greet(arg, extended=True)

    def _do_lhlo(self, arg: str) -> None:
        self._greet(arg, extended=True)

    def _do_helo(self, arg: str) -> None:
        self._greet(arg, extended=False)

    def _greet(self, arg: str, *, extended: bool) -> None:
        try:
            name = helo_name(arg)
        except GrammarError:
            self._protocol_error(codes.PARAM_SYNTAX_ERROR.with_text("Syntax: EHLO hostname"))
            return
        if "helo" in self.checks:
            self._emit(HeloReceived(name, extended))
            return
        self._finish_greeting(name, extended)

    def _finish_greeting(self, name: str, extended: bool) -> None:
        # RFC 5321 section 4.1.4: EHLO/HELO in a transaction acts as RSET.
        self._reset_transaction(codes.OK)
        self.helo = name
        self.extended = extended
        self.state = State.GREETED
        self._emit(Greeted(name, extended))
        if not extended:
            self._send(Reply(250, "", self.hostname))
            return
        lines = [
            self.hostname,
            "PIPELINING",
            f"SIZE {self.limits.max_message_size}",
            "8BITMIME",
            "ENHANCEDSTATUSCODES",
            "SMTPUTF8",
            "CHUNKING",
        ]
        if self.role != "lmtp":
            # RFC 2033 section 4.3 leaves DSN to the LMTP server; Dovecot does
            # not offer it either, and the delivering MTA keeps the envelope.
            lines.append("DSN")
        if self.tls_available and not self.tls:
            lines.append("STARTTLS")
        if self.tls:
            # RFC 8689 section 3: offered only over TLS (MAIL ... REQUIRETLS
            # is refused without it, below).
            lines.append("REQUIRETLS")
        mechanisms = self.mechanisms()
        if mechanisms:
            lines.append("AUTH " + " ".join(mechanisms))
        self._send(Reply(250, "", "\n".join(lines)))

    def _do_mail(self, arg: str) -> None:
        if self.helo is None and self.tls_restarted:
            # RFC 3207 section 4.2: after TLS the client starts over with EHLO.
            self._protocol_error(codes.NEED_HELO)
            return
        if self.role == "submission" and self.authenticated_user is None:
            # RFC 6409 section 4.3 / RFC 4954 section 6.
            self._send(codes.AUTH_REQUIRED)
            return
        try:
            path, params = mail_from_argument(arg)
        except ParamSyntaxError as e:
            self._protocol_error(_duplicate_reply(e))
            return
        except GrammarError:
            self._protocol_error(codes.BAD_SENDER_SYNTAX)
            return
        refusal = self._check_mail_params(params)
        if refusal is not None:
            self._refuse_params(refusal)
            return
        if path is not None and not path.is_ascii and "SMTPUTF8" not in params:
            self._send(codes.SMTPUTF8_REQUIRED)
            return
        self._emit(MailFrom("" if path is None else str(path), params))

    def _refuse_params(self, refusal: Reply) -> None:
        """Send a parameter refusal; a malformed value (501) counts as a protocol error."""
        if refusal.code == 501:
            self._protocol_error(refusal)
        else:
            self._send(refusal)

    def _check_mail_params(self, params: dict[str, str | None]) -> Reply | None:
        """Check MAIL parameters and normalise *params* in place; a refusal or ``None``."""
        for key, value in params.items():
            if key not in _MAIL_PARAMS:
                return codes.PARAM_NOT_RECOGNIZED
            if key == "SIZE":
                # RFC 1870 section 6: size-value = 1*20DIGIT.
                if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
                    return codes.PARAM_SYNTAX_ERROR
                if int(value) > self.limits.max_message_size:
                    return codes.MESSAGE_TOO_BIG
            elif key == "BODY":
                body = (value or "").upper()
                if body == "BINARYMIME":
                    # RFC 3030 section 3: we do not offer BINARYMIME.
                    return codes.BODY_NOT_SUPPORTED
                if body not in _BODY_TYPES:
                    return codes.PARAM_SYNTAX_ERROR
            elif key == "SMTPUTF8":
                if value is not None:
                    return codes.PARAM_SYNTAX_ERROR
            elif key == "REQUIRETLS":
                # RFC 8689 section 3: a keyword without a value.
                if value is not None:
                    return codes.PARAM_SYNTAX_ERROR
                if not self.tls:
                    return _REQUIRETLS_NEEDS_TLS
            elif key == "RET":
                # RFC 3461 section 4.3: ret-value = "FULL" / "HDRS"
                ret = (value or "").upper()
                if ret not in ("FULL", "HDRS"):
                    return _BAD_RET
                params[key] = ret
            elif key == "ENVID":
                # RFC 3461 section 4.4: envid-parameter = "ENVID=" xtext, at
                # most 100 characters, printable US-ASCII once decoded.
                if value is None or len(value) > MAX_ENVID_LENGTH or not _printable_xtext(value):
                    return _BAD_ENVID
            elif value is None and key == "AUTH":
                return codes.PARAM_SYNTAX_ERROR
        if "BODY" in params:
            params["BODY"] = (params["BODY"] or "").upper()
        # AUTH=<mailbox> (RFC 4954 section 5) is accepted and ignored.
        return None

    def _check_rcpt_params(self, params: dict[str, str | None]) -> Reply | None:
        """Check RCPT parameters (RFC 3461) and normalise *params* in place."""
        if any(key not in _RCPT_PARAMS for key in params):
            return codes.PARAM_NOT_RECOGNIZED
        for key, value in params.items():
            if key == "NOTIFY":
                # RFC 3461 section 4.1:
                #   notify-esmtp-value = "NEVER" / 1#notify-list-element
                #   notify-list-element = "SUCCESS" / "FAILURE" / "DELAY"
                # "NEVER" MUST appear by itself.
                words = (value or "").upper().split(",")
                if words == ["NEVER"]:
                    params[key] = "NEVER"
                elif words and all(w in DSN_NOTIFY_KEYWORDS for w in words):
                    params[key] = ",".join(dict.fromkeys(words))
                else:
                    return _BAD_NOTIFY
            elif key == "ORCPT":
                # RFC 3461 section 4.2:
                #   orcpt-parameter = "ORCPT=" original-recipient-address
                #   original-recipient-address = addr-type ";" xtext
                #   addr-type = atom
                # and the decoded address is printable US-ASCII.
                addr_type, semicolon, address = (value or "").partition(";")
                if (
                    not semicolon
                    or not addr_type
                    or not all(c in _ATEXT for c in addr_type)
                    or not _printable_xtext(address)
                ):
                    return _BAD_ORCPT
        return None

    def _do_rcpt(self, arg: str) -> None:
        tx = self._tx()
        if len(tx.rcpt_to) >= self.limits.max_recipients:
            self._send(codes.TOO_MANY_RECIPIENTS)
            return
        try:
            path, params = rcpt_to_argument(arg)
        except ParamSyntaxError as e:
            self._protocol_error(_duplicate_reply(e))
            return
        except GrammarError:
            self._protocol_error(codes.BAD_RECIPIENT_SYNTAX)
            return
        refusal = self._check_rcpt_params(params)
        if refusal is not None:
            self._refuse_params(refusal)
            return
        refusal = self._recipient_policy(path, tx)
        if refusal is not None:
            self._send(refusal)
            return
        self._emit(RcptTo(str(path), params))

    def _recipient_policy(self, path: Mailbox, tx: MailTransaction) -> Reply | None:
        if not path.is_ascii and not tx.smtputf8:
            return codes.SMTPUTF8_REQUIRED
        if self.authenticated_user is None:
            if path.has_routing_characters():
                return codes.ROUTING_NOT_ACCEPTED
            if path.is_address_literal:
                return codes.ADDRESS_LITERAL_NOT_ACCEPTED
        return None

    def _do_data(self, arg: str) -> None:
        tx = self._tx()
        if arg:
            self._protocol_error(codes.PARAM_SYNTAX_ERROR)
            return
        if tx.chunking:
            # RFC 3030 section 2: DATA and BDAT cannot be mixed.
            self._protocol_error(codes.BAD_SEQUENCE)
            return
        tx.size = 0
        self._emit(DataStart(chunking=False))

    def _do_bdat(self, arg: str) -> None:
        try:
            size, last = bdat_argument(arg)
        except GrammarError:
            self._close(codes.BDAT_SYNTAX_CLOSING, "protocol")
            return
        chunk = _Chunk(size, last)
        tx = self.transaction
        if self.state not in ALLOWED_STATES["BDAT"]:
            chunk.discard_reply = SEQUENCE_REPLIES.get(("BDAT", self.state), codes.BAD_SEQUENCE)
            chunk.out_of_sequence = True
            self.bad_commands += 1
        elif tx is not None and tx.failure is not None:
            chunk.discard_reply = tx.failure
        elif tx is not None and tx.size + size > self.limits.max_message_size:
            chunk.discard_reply = codes.MESSAGE_TOO_BIG
            self._abort_data(codes.MESSAGE_TOO_BIG)
            tx.failure = codes.MESSAGE_TOO_BIG
        self._chunk = chunk
        self._resume_state = self.state
        self.state = State.BDAT
        if chunk.discard_reply is None and tx is not None and not tx.data_started:
            tx.chunking = True
            self._checker = LineEndingChecker()
            self._emit(DataStart(chunking=True))

    def _do_rset(self, arg: str) -> None:
        self._reset_transaction(codes.OK)
        self._send(codes.OK)

    def _do_noop(self, arg: str) -> None:
        self._send(codes.OK)

    def _do_quit(self, arg: str) -> None:
        self._close(codes.BYE, "quit")

    def _do_help(self, arg: str) -> None:
        self._send(codes.HELP)

    def _do_vrfy(self, arg: str) -> None:
        # RFC 5321 section 3.5.3; no answer tells whether a user exists.
        if not arg:
            self._protocol_error(codes.PARAM_SYNTAX_ERROR)
            return
        self._send(codes.VRFY_CANNOT_VERIFY)

    def _do_expn(self, arg: str) -> None:
        self._send(codes.EXPN_NOT_AVAILABLE)

    def _do_starttls(self, arg: str) -> None:
        if arg:
            # RFC 3207 section 4: "501 Syntax error (no parameters allowed)".
            self._protocol_error(codes.PARAM_SYNTAX_ERROR)
            return
        if self.tls:
            self._protocol_error(codes.ALREADY_TLS)
            return
        if not self.tls_available:
            self._protocol_error(codes.NOT_IMPLEMENTED)
            return
        self._start_tls()

    # -- AUTH (RFC 4954) -------------------------------------------------------

    def _do_auth(self, arg: str) -> None:
        if not self.auth_enabled:
            self._protocol_error(codes.NOT_IMPLEMENTED)
            return
        if self.authenticated_user is not None:
            self._protocol_error(codes.ALREADY_AUTHENTICATED)
            return
        words = arg.split(" ")
        if not 1 <= len(words) <= 2 or not words[0]:
            self._protocol_error(codes.PARAM_SYNTAX_ERROR)
            return
        mechanism = words[0].upper()
        if mechanism not in sasl.MECHANISMS:
            self._protocol_error(codes.AUTH_UNKNOWN_MECHANISM)
            return
        if mechanism not in self.mechanisms():
            # RFC 4954 section 6: 538 when the mechanism needs encryption.
            self._protocol_error(codes.AUTH_ENCRYPTION_REQUIRED)
            return
        self._start_sasl(mechanism, words[1] if len(words) == 2 else None)

    def _auth_succeeded(self, username: str, mechanism: str) -> None:
        if "auth" in self.checks:
            self._emit(AuthFinished(mechanism, username, True))
            return
        self._authenticated(username, mechanism)

    def _auth_failed(self, mechanism: str) -> None:
        if "auth" in self.checks:
            self._emit(AuthFinished(mechanism, None, False))
            return
        super()._auth_failed(mechanism)

    def _authenticated(self, username: str, mechanism: str) -> None:
        self.authenticated_user = username
        self._send(codes.AUTH_SUCCEEDED)
        self._emit(Authenticated(username, mechanism))

    # -- message content -------------------------------------------------------

    def _step_data(self) -> bool:
        if not self._inbuf:
            return False
        tx = self._tx()
        assert self._decoder is not None
        content, rest = self._decoder.feed(bytes(self._inbuf))
        self._inbuf.clear()
        if self._decoder.bare_line_ending:
            self._abort_data(codes.BARE_LINE_ENDING)
        if content and tx.failure is None:
            if tx.size + len(content) > self.limits.max_message_size:
                self._abort_data(codes.MESSAGE_TOO_BIG)
            else:
                tx.size += len(content)
                self._emit(DataChunk(content))
        if rest is None:
            return bool(content)
        self._inbuf += rest
        self._scanned = 0
        self._decoder = None
        if tx.failure is not None:
            self._end_transaction(tx.failure)
        else:
            self.state = State.RCPT
            self._emit(DataComplete(tx.size))
        return True

    def _step_bdat(self) -> bool:
        chunk = self._chunk
        assert chunk is not None
        if chunk.remaining:
            if not self._inbuf:
                return False
            piece = bytes(self._inbuf[: chunk.remaining])
            del self._inbuf[: len(piece)]
            chunk.remaining -= len(piece)
            tx = self.transaction
            if chunk.discard_reply is None and tx is not None and tx.failure is None:
                assert self._checker is not None
                self._checker.feed(piece)
                if self._checker.bare_line_ending:
                    self._abort_data(codes.BARE_LINE_ENDING)
                else:
                    tx.size += len(piece)
                    self._emit(DataChunk(piece))
            if chunk.remaining:
                return True
        self._finish_chunk(chunk)
        return True

    def _finish_chunk(self, chunk: _Chunk) -> None:
        self._chunk = None
        self.state = self._resume_state
        tx = self.transaction
        if chunk.out_of_sequence or tx is None:
            # Refused by the state table: the transaction (if any) is untouched.
            if self.bad_commands > self.limits.max_bad_commands:
                self._close(codes.TOO_MANY_ERRORS, "errors")
            else:
                self._send(chunk.discard_reply or codes.BAD_SEQUENCE)
            return
        tx.chunking = True
        self.state = State.CHUNKING
        if chunk.discard_reply is None and tx.failure is None:
            assert self._checker is not None
            if chunk.last:
                self._checker.finish()
            if self._checker.bare_line_ending:
                self._abort_data(codes.BARE_LINE_ENDING)
        reply = chunk.discard_reply or tx.failure
        if reply is not None:
            if chunk.last:
                self._end_transaction(reply)
            else:
                self._send(reply)
        elif chunk.last:
            self._emit(DataComplete(tx.size))
        else:
            self._send(codes.OK.with_text(f"{tx.size} octets received"))


_HANDLERS: dict[str, Callable[[ServerSession, str], None]] = {
    "EHLO": ServerSession._do_ehlo,
    "HELO": ServerSession._do_helo,
    "LHLO": ServerSession._do_lhlo,
    "MAIL": ServerSession._do_mail,
    "RCPT": ServerSession._do_rcpt,
    "DATA": ServerSession._do_data,
    "BDAT": ServerSession._do_bdat,
    "RSET": ServerSession._do_rset,
    "NOOP": ServerSession._do_noop,
    "QUIT": ServerSession._do_quit,
    "HELP": ServerSession._do_help,
    "VRFY": ServerSession._do_vrfy,
    "EXPN": ServerSession._do_expn,
    "STARTTLS": ServerSession._do_starttls,
    "AUTH": ServerSession._do_auth,
}
