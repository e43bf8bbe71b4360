"""
The sans-IO SMTP client session: one connection, one mail transaction to one
or more recipients (RFC 5321, with RFC 1870 SIZE, RFC 6152 8BITMIME,
RFC 2034 ENHANCEDSTATUSCODES, RFC 2920 PIPELINING, RFC 3207 STARTTLS,
RFC 3461 DSN, RFC 4954 AUTH and RFC 6531 SMTPUTF8).

Theory of operation
-------------------
The session has the same h11 shape as the server session::

    session = ClientSession("mx.example.test", "a@example.test", ["b@example.net"], message=data)
    session.receive_data(bytes_from_network)
    while (event := session.next_event()) is not None:
        ...                       # StartTLS, ReadyForData, TransactionDone
    transport.write(session.data_to_send())

* Every command we send is recorded in a queue of expected replies (one
  entry per command).  Each complete reply from the server is matched with
  the head of that queue, so pipelined commands (RFC 2920) and one-at-a-time
  commands are handled by the same code; only the number of commands in
  flight differs.
* The steps are: greeting (``220``), ``EHLO`` (``HELO`` when EHLO gets a 5xx,
  RFC 5321 section 4.1.4), ``STARTTLS`` per the TLS policy, ``AUTH`` when
  credentials were given, then ``MAIL``/``RCPT``/``DATA``, the content, and
  ``QUIT``.
* Three events reach the adapter: :class:`StartTLS` (start TLS on the
  transport, then call :meth:`ClientSession.tls_started`),
  :class:`ReadyForData` (only when the message is streamed: push it with
  :meth:`ClientSession.send_data` and end it with
  :meth:`ClientSession.end_data`), and :class:`TransactionDone`, which
  carries the :class:`TransactionResult` and is the last event (unless the
  session stays open for another transaction, below).  Once it was
  returned, :attr:`ClientSession.closed` is true and the adapter closes the
  connection after writing what is left.
* Connection reuse (``keep_open``): a transaction that ends with the
  connection usable leaves the session :attr:`ClientSession.idle` instead of
  sending QUIT; :meth:`ClientSession.next_transaction` sends ``RSET`` and,
  on its ``250``, the next MAIL/RCPT/DATA with the extensions already
  known; :meth:`ClientSession.quit` ends it.  A reused connection that dies
  before answering RSET (the server dropped it while idle), or refuses it,
  sets :attr:`ClientSession.stale`: the server saw nothing of that
  transaction.
* The session never raises because of what the server sent: malformed or
  over-long replies, replies nobody asked for, a ``421`` at any point, a
  lost connection or the adapter's timer all end in a temporary failure.

Policies
--------
* TLS (RFC 3207): ``"none"`` never starts TLS; ``"opportunistic"`` uses
  STARTTLS when offered and goes on in the clear when it is not offered or
  is refused (a failed *handshake* kills the connection: the queue decides
  whether to retry in the clear); ``"verify"`` requires TLS and fails the
  transaction temporarily ("TLS required") otherwise.  Certificate checks
  are the adapter's (the TLS context it passes to ``startTLS``).  After TLS
  every extension learnt before is forgotten and EHLO is sent again
  (RFC 3207 section 4.2); a reply that arrived behind the ``220`` in the same
  read is discarded (it was not protected by TLS).
* AUTH (RFC 4954): PLAIN (RFC 4616) with an initial response, else LOGIN;
  only over TLS unless ``allow_plaintext_auth`` (a smarthost on a trusted
  network).  Every authentication failure is *temporary*: like Postfix's
  ``smtp_sasl_auth_soft_bounce``, a wrong smarthost password is a
  configuration problem and must not bounce the mail.
* SIZE (RFC 1870 section 6): a message larger than the advertised limit is
  failed permanently before MAIL; ``SIZE=`` is sent when the size is known.
* 8BITMIME (RFC 6152) and SMTPUTF8 (RFC 6531 section 3.2): a message that
  needs one is failed permanently when the server does not advertise it (we
  do not downgrade); when advertised, ``BODY=8BITMIME`` / ``SMTPUTF8`` are
  added to MAIL.  A non-ASCII address needs SMTPUTF8 on its own.
* REQUIRETLS (RFC 8689 section 4.2.1): with ``require_tls`` the transaction
  needs TLS (the certificate check is the adapter's TLS context) and the
  server's ``REQUIRETLS`` EHLO keyword after STARTTLS; then ``REQUIRETLS``
  goes on MAIL.  A server without the keyword fails the transaction
  permanently with ``5.7.30`` (RFC 8689 section 5), reusable; without
  TLS it fails temporarily.
* DSN (RFC 3461): ``RET``/``ENVID`` on MAIL and ``NOTIFY``/``ORCPT`` on
  RCPT are sent only when the server advertises DSN (section 4: the client
  must not send them otherwise; the queue then generates the DSNs itself).
  ``ENVID`` and ``ORCPT`` values are xtext: see :func:`xtext`.
* PIPELINING (RFC 2920 section 3.1): MAIL, every RCPT and DATA go out in one
  write and every reply is checked.  When no recipient was accepted but the
  server still answered DATA with ``354``, a lone ``.`` ends the empty
  message, as section 3.1 says.  Without PIPELINING, DATA is sent only when
  some recipient was accepted.
* Content (RFC 5321 sections 2.3.8 and 4.5.2): :class:`DotStuffer` doubles
  every period at a line start and turns bare CR and bare LF into CRLF, so
  no ``<LF>.<LF>``-style sequence can leave us for a weaker server (SMTP
  smuggling); the message gets a final CRLF if it lacks one.
* Replies (RFC 5321 section 4.2.1): ``NNN-`` continuation lines and a final
  ``NNN `` (or a bare ``NNN``) line; all lines must carry the same code.  A
  reply line may be :data:`MAX_REPLY_LINE` octets long (RFC 5321 section
  4.5.3.1.5 asks for at least 512), a whole reply :data:`MAX_REPLY` octets.
  LF alone is accepted as a line end in replies (harmless, and seen in the
  wild).  An enhanced status code (RFC 3463) whose class matches the reply
  code is split off into :attr:`Reply.enhanced`.
* Timeouts (RFC 5321 section 4.5.3.2) are the adapter's timer: it calls
  :meth:`ClientSession.timeout`; :attr:`ClientSession.waiting_for` names
  what we wait for.  Once the server answered the content, the outcome is
  settled: a timeout or a lost connection while waiting for the ``QUIT``
  reply does not change it.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar, Literal, get_args

from txmail.smtp import grammar
from txmail.smtp.codes import Reply

__all__ = [
    "MAX_REPLY",
    "MAX_REPLY_LINE",
    "TLS_POLICIES",
    "ClientEvent",
    "ClientSession",
    "DotStuffer",
    "ReadyForData",
    "RelayRequest",
    "StartTLS",
    "TLSPolicy",
    "TransactionDone",
    "TransactionResult",
    "xtext",
]

#: Octets a reply line may hold, CRLF included (RFC 5321 section 4.5.3.1.5
#: requires at least 512; servers with long EHLO lines exist).
MAX_REPLY_LINE = 8192
#: Octets a whole (multi-line) reply may hold.
MAX_REPLY = 65536
#: A TLS policy (see the module docstring): no STARTTLS, STARTTLS when
#: offered, or STARTTLS with a verified certificate required.
TLSPolicy = Literal["none", "opportunistic", "verify"]
#: The values of :data:`TLSPolicy`.
TLS_POLICIES: tuple[TLSPolicy, ...] = get_args(TLSPolicy)

_MAIL_PARAMS = frozenset({"RET", "ENVID"})  # RFC 3461 section 4.3, 4.4
_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})  # RFC 3461 section 4.1, 4.2
_REPLY_LINE_RE = re.compile(rb"([2-5][0-9][0-9])([ -]|$)")
_ENHANCED_RE = re.compile(r"([245])\.[0-9]{1,3}\.[0-9]{1,3}(?= |$)")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_PARAM_VALUE_RE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # xtext-safe: printable ASCII, no "="


#: Encode a value as RFC 3461 xtext (for ``ENVID`` and ``ORCPT``).
xtext = grammar.xtext_encode


class DotStuffer:
    """
    Incremental DATA encoder (RFC 5321 section 4.5.2): feed the message in
    chunks of any size, then :meth:`finish`.

    Line ends are normalised to CRLF (a bare CR or bare LF becomes CRLF,
    RFC 5321 section 2.3.8), a period at the start of a line is doubled, and
    :meth:`finish` adds a final CRLF when the message lacks one, then the
    ``.<CRLF>`` end mark.
    """

    def __init__(self) -> None:
        self._line_start = True
        self._pending_cr = False

    def feed(self, chunk: bytes) -> bytes:
        """Encode the next piece of the message."""
        data = b"\r" + chunk if self._pending_cr else bytes(chunk)
        self._pending_cr = data.endswith(b"\r")
        if self._pending_cr:
            data = data[:-1]  # maybe the CR of a CRLF split across chunks
        if not data:
            return b""
        # Every line end becomes LF, then CRLF again: bare CR and LF are line ends.
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        data = data.replace(b"\n.", b"\n..")
        if self._line_start and data.startswith(b"."):
            data = b"." + data
        self._line_start = data.endswith(b"\n")
        return data.replace(b"\n", b"\r\n")

    def finish(self) -> bytes:
        """The rest: a final CRLF if needed, and the end-of-data mark."""
        out = b""
        if self._pending_cr:
            self._pending_cr = False
            self._line_start = True
            out = b"\r\n"
        if not self._line_start:
            out += b"\r\n"
        self._line_start = True
        return out + b".\r\n"


Recipient = str | tuple[str, Mapping[str, str]]


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class RelayRequest:
    """
    One delivery attempt of one message to one host: what the queue runner
    hands to :func:`txmail.smtp.relay.deliver_once` or
    :meth:`txmail.smtp.relay.ConnectionCache.deliver` (and an
    embedder's own ``deliver`` callable, :func:`txmail.service.build_service`).

    Attributes:
        host: an IP address (IPv6 with or without brackets) or a host name.
        port: the TCP port.
        hostname: our name for EHLO.
        mail_from: the reverse-path (``""`` for the null sender).
        recipients: addresses or ``(address, {"NOTIFY": ..., "ORCPT": ...})``.
        message: the message bytes, or a binary file read from its current
            position to its end.
        size: octets for SIZE; by default the bytes' length or the file's
            remaining length.
        needs_8bit, needs_smtputf8, mail_params, auth, allow_plaintext_auth:
            see :class:`~txmail.smtp.client.ClientSession`.
        tls_policy: ``"none"``, ``"opportunistic"`` or ``"verify"``.
        require_tls: the message was received with REQUIRETLS (RFC 8689):
            TLS and the next hop's REQUIRETLS keyword are required, and
            MAIL carries REQUIRETLS.
        tls_context_factory: the context for ``startTLS``; by default
            :func:`txmail.smtp.relay.client_tls_options` for the policy.
        tls_hostname: the name the certificate must hold in ``"verify"``
            mode (the MX host name); by default *host*.
        trust_root: the CA to trust in ``"verify"`` mode instead of the
            platform's (an ``IOpenSSLTrustRoot`` or ``ssl.Certificate``).
        timeout: seconds to wait for the connection and for each reply
            (RFC 5321 section 4.5.3.2 suggests 5 to 10 minutes).
        endpoint: connect with this ``IStreamClientEndpoint`` instead of
            one built for *host*.
    """

    host: str
    port: int = 25
    hostname: str
    mail_from: str
    recipients: Sequence[Recipient]
    message: bytes | IO[bytes]
    size: int | None = None
    needs_8bit: bool = False
    needs_smtputf8: bool = False
    mail_params: Mapping[str, str] | None = None
    tls_policy: TLSPolicy = "opportunistic"
    require_tls: bool = False
    tls_context_factory: Any = None
    tls_hostname: str | None = None
    trust_root: Any = None
    auth: tuple[str, str] | None = None
    allow_plaintext_auth: bool = False
    timeout: float = 300.0
    endpoint: Any = None

    def replace(self, **changes: Any) -> RelayRequest:
        """A copy with *changes*."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        # Never the password of *auth*, nor the whole message.
        auth = None if self.auth is None else (self.auth[0], "<redacted>")
        return (
            f"RelayRequest(host={self.host!r}, port={self.port}, mail_from={self.mail_from!r}, "
            f"recipients={list(self.recipients)!r}, tls_policy={self.tls_policy!r}, auth={auth!r})"
        )


@dataclass(frozen=True, slots=True)
class TransactionResult:
    """
    What became of one transaction.

    Attributes:
        greeting_reply: the server's greeting, or ``None`` (no connection, or
            no complete greeting).
        per_recipient: each recipient's RCPT reply, in recipient order;
            recipients never answered (the transaction failed before) are
            missing.  RCPT replies that followed a refused MAIL are ignored.
        message_reply: the reply that settled the content for every recipient
            whose RCPT was accepted: the reply after the final dot, or the
            reply to DATA when that was not ``354``.
        error: why the transaction did not deliver to every recipient, for
            logs and DSNs (never holds the password), or ``None``.
        temporary: *error* is a temporary failure (retry later).
        tls: the transaction ran over TLS.
        dsn: the server advertised DSN (RFC 3461), so NOTIFY went along with
            the message and the notices are its business from here on.
    """

    greeting_reply: Reply | None
    per_recipient: dict[str, Reply]
    message_reply: Reply | None
    error: str | None
    temporary: bool
    tls: bool = False
    dsn: bool = False

    def status(self, recipient: str) -> str:
        """
        ``"delivered"``, ``"temporary"`` or ``"permanent"`` for *recipient*:
        its own RCPT refusal if any, else the message reply, else the
        transaction's error.
        """
        rcpt = self.per_recipient.get(recipient)
        if rcpt is not None and not rcpt.is_positive:
            return "temporary" if rcpt.is_temporary else "permanent"
        if rcpt is not None and self.message_reply is not None:
            if 200 <= self.message_reply.code < 300:
                return "delivered"
            if not self.message_reply.is_temporary and self.message_reply.code >= 500:
                return "permanent"
            return "temporary"
        if self.error is not None and not self.temporary:
            return "permanent"
        return "temporary"

    def reply_for(self, recipient: str) -> Reply | None:
        """The server reply that decided *recipient*'s status, if a server reply did."""
        rcpt = self.per_recipient.get(recipient)
        if rcpt is not None and not rcpt.is_positive:
            return rcpt
        if rcpt is not None and self.message_reply is not None:
            return self.message_reply
        return None

    @property
    def delivered(self) -> list[str]:
        """The recipients the server took responsibility for."""
        return [r for r in self.per_recipient if self.status(r) == "delivered"]


class ClientEvent:
    """Base class of the client session's events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class StartTLS(ClientEvent):
    """The server answered STARTTLS with 220: start TLS, then call ``tls_started()``."""


@dataclass(frozen=True, slots=True)
class ReadyForData(ClientEvent):
    """The server answered DATA with 354: push the content with ``send_data`` and ``end_data``."""


@dataclass(frozen=True, slots=True)
class TransactionDone(ClientEvent):
    """
    A transaction ended: the session's last event, unless ``keep_open``
    left the connection :attr:`~ClientSession.idle` for another.
    """

    result: TransactionResult


class _BadReply(Exception):
    """The server sent something that is not a reply (internal)."""


def _describe(reply: Reply) -> str:
    words = " ".join(w for w in (str(reply.code), reply.enhanced, reply.text.replace("\n", " / ")) if w)
    return words


@dataclass
class _Recipient:
    address: str
    params: dict[str, str] = field(default_factory=dict)


class ClientSession:
    """
    A sans-IO SMTP client for one connection carrying one transaction, or
    several one after the other with ``keep_open``.

    Args:
        hostname: our name for EHLO/HELO (a domain, or an address literal
            such as ``[192.0.2.1]``).
        mail_from: the reverse-path, ``""`` for the null sender.
        recipients: addresses, or ``(address, params)`` pairs whose params
            (``NOTIFY``, ``ORCPT``) are sent when the server offers DSN.
            Duplicates are dropped.
        message: the whole message; when ``None`` the content is streamed
            after :class:`ReadyForData` with :meth:`send_data`/:meth:`end_data`.
        size: the message size in octets for SIZE (RFC 1870); defaults to
            ``len(message)``.
        needs_8bit: the content has 8-bit octets (RFC 6152).
        needs_smtputf8: the message needs SMTPUTF8 (RFC 6531); implied by a
            non-ASCII address.
        mail_params: DSN parameters for MAIL (``RET``, ``ENVID``), sent only
            when the server offers DSN.
        tls_policy: ``"none"``, ``"opportunistic"`` or ``"verify"``.
        tls_active: the connection already runs TLS (implicit TLS, port 465).
        auth: ``(username, password)`` to authenticate with, or ``None``.
        allow_plaintext_auth: authenticate without TLS too.
        require_tls: REQUIRETLS (RFC 8689; see the module notes).
        keep_open: after a transaction that leaves the connection usable (it
            was delivered, or refused by MAIL, RCPT, DATA or the content
            reply, or failed a SIZE/8BITMIME/SMTPUTF8 check before MAIL), go
            :attr:`idle` instead of sending QUIT; then
            :meth:`next_transaction` or :meth:`quit`.

    Raises:
        ValueError: a bad policy, address, or parameter (a caller's mistake,
            never the server's).

    Attributes:
        extensions: the EHLO keywords (upper case) and their parameters.
        tls: the connection runs TLS.
    """

    _PHASE_REPLIES: ClassVar[str] = "replies"
    _PHASE_TLS: ClassVar[str] = "tls"  # waiting for tls_started()
    _PHASE_DATA: ClassVar[str] = "data"  # waiting for send_data()/end_data()
    _PHASE_CLOSED: ClassVar[str] = "closed"
    _PHASE_IDLE: ClassVar[str] = "idle"  # keep_open: between transactions

    def __init__(
        self,
        hostname: str,
        mail_from: str,
        recipients: Sequence[str | tuple[str, Mapping[str, str]]],
        *,
        message: bytes | None = None,
        size: int | None = None,
        needs_8bit: bool = False,
        needs_smtputf8: bool = False,
        mail_params: Mapping[str, str] | None = None,
        tls_policy: TLSPolicy = "opportunistic",
        tls_active: bool = False,
        auth: tuple[str, str] | None = None,
        allow_plaintext_auth: bool = False,
        keep_open: bool = False,
        require_tls: bool = False,
    ) -> None:
        if tls_policy not in TLS_POLICIES:
            raise ValueError(f"unknown TLS policy {tls_policy!r}")
        _check_text("hostname", hostname, "\r\n\x00 <>", allow_empty=False)
        self.hostname = hostname
        self.tls_policy = tls_policy
        self.tls = tls_active
        self._auth = auth
        self._allow_plaintext_auth = allow_plaintext_auth
        self.keep_open = keep_open
        self.extensions: dict[str, str] = {}
        #: Transactions started on this connection (the first included).
        self.transactions = 0
        #: A transaction on a reused connection ended at its RSET: the
        #: connection died while idle (or was closed with 421), or the
        #: server refused RSET; the server saw nothing of the transaction
        #: (retry it on a new connection).
        self.stale = False

        self._inbuf = bytearray()
        self._out = bytearray()
        self._events: deque[ClientEvent] = deque()
        self._expect: deque[tuple[str, str]] = deque()
        self._phase = self._PHASE_REPLIES
        self._greeting: Reply | None = None
        self.result: TransactionResult | None = None
        self._set_transaction(
            mail_from, recipients, message, size, needs_8bit, needs_smtputf8, mail_params, require_tls
        )
        self._expect.append(("greeting", ""))

    def _set_transaction(
        self,
        mail_from: str,
        recipients: Sequence[str | tuple[str, Mapping[str, str]]],
        message: bytes | None,
        size: int | None,
        needs_8bit: bool,
        needs_smtputf8: bool,
        mail_params: Mapping[str, str] | None,
        require_tls: bool = False,
    ) -> None:
        """Check and take the next transaction's envelope and content; clear the last one's outcome."""
        self.require_tls = require_tls
        _check_address(mail_from)
        new_recipients: list[_Recipient] = []
        seen: set[str] = set()
        for item in recipients:
            address, params = (item, {}) if isinstance(item, str) else (item[0], dict(item[1]))
            _check_address(address)
            if not address:
                raise ValueError("empty recipient address")
            _check_params(params, _RCPT_PARAMS)
            if address not in seen:
                seen.add(address)
                new_recipients.append(_Recipient(address, {k.upper(): v for k, v in params.items()}))
        if not new_recipients:
            raise ValueError("no recipients")
        new_mail_params = {k.upper(): v for k, v in (mail_params or {}).items()}
        _check_params(new_mail_params, _MAIL_PARAMS)
        self.mail_from = mail_from
        self._recipients = new_recipients
        self._mail_params = new_mail_params
        self._message = message
        self.size = size if size is not None else (len(message) if message is not None else None)
        self.needs_8bit = needs_8bit
        addresses = [mail_from] + [r.address for r in self._recipients]
        self.needs_smtputf8 = needs_smtputf8 or not all(a.isascii() for a in addresses)
        self._stuffer = DotStuffer()
        self._pipelined = False
        self._decided = False  # the outcome is known; only QUIT's reply may still come
        self._finishing = False  # the outcome is known; idle once the replies still due arrived
        self._mail_reply: Reply | None = None
        self._per_recipient: dict[str, Reply] = {}
        self._message_reply: Reply | None = None
        self._error: str | None = None
        self._temporary = False
        self.transactions += 1

    # -- public API ------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """
        A ``keep_open`` session finished its transaction and waits, connected,
        for :meth:`next_transaction` or :meth:`quit`.
        """
        return self._phase == self._PHASE_IDLE

    def next_transaction(
        self,
        mail_from: str,
        recipients: Sequence[str | tuple[str, Mapping[str, str]]],
        *,
        message: bytes | None = None,
        size: int | None = None,
        needs_8bit: bool = False,
        needs_smtputf8: bool = False,
        mail_params: Mapping[str, str] | None = None,
        require_tls: bool = False,
    ) -> None:
        """
        Start another transaction on an :attr:`idle` connection (the
        arguments are the constructor's).  ``RSET`` goes first: it clears
        whatever a refused transaction left on the server and shows the
        connection is still alive (as Postfix does with a cached one); the
        transaction begins on its ``250``.

        Raises:
            RuntimeError: the session is not idle.
            ValueError: bad arguments (as for the constructor).
        """
        if self._phase != self._PHASE_IDLE:
            raise RuntimeError("next_transaction() on a session that is not idle")
        self._set_transaction(
            mail_from, recipients, message, size, needs_8bit, needs_smtputf8, mail_params, require_tls
        )
        self.stale = False
        self.result = None
        self._phase = self._PHASE_REPLIES
        self._command("RSET", "rset")

    def quit(self) -> None:
        """End an :attr:`idle` session: send ``QUIT``; the session closes on its reply (no event)."""
        if self._phase != self._PHASE_IDLE:
            raise RuntimeError("quit() on a session that is not idle")
        self._phase = self._PHASE_REPLIES
        self._command("QUIT", "quit")

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the server.  Nothing is parsed until :meth:`next_event`."""
        if self._phase in (self._PHASE_CLOSED, self._PHASE_TLS):
            # RFC 3207 section 4.2: nothing before the handshake is trusted.
            return
        self._inbuf += data

    def next_event(self) -> ClientEvent | None:
        """Parse what was received; return the next event or ``None`` (more input needed)."""
        while not self._events and self._phase == self._PHASE_REPLIES:
            try:
                reply = self._parse_reply()
            except _BadReply as e:
                self._protocol_error(str(e))
                break
            if reply is None:
                break
            self._on_reply(reply)
        if not self._events:
            return None
        return self._events.popleft()

    def data_to_send(self) -> bytes:
        """Return (and forget) the bytes to write to the server."""
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def closed(self) -> bool:
        """The session ended (:class:`TransactionDone` was queued)."""
        return self._phase == self._PHASE_CLOSED

    @property
    def waiting_for(self) -> str | None:
        """
        What the session waits for: the command whose reply is due
        (``"greeting"``, ``"EHLO"``, ``"RSET"``, ``"MAIL"``, ``"RCPT"``,
        ``"DATA"``, ``"end of data"``, ``"QUIT"``...), ``"TLS"`` or
        ``"data"`` (from the adapter), or ``None`` once closed or while idle.  RFC 5321 section 4.5.3.2 gives
        each its own timeout.
        """
        if self._phase in (self._PHASE_CLOSED, self._PHASE_IDLE):
            return None
        if self._phase == self._PHASE_TLS:
            return "TLS"
        if self._phase == self._PHASE_DATA:
            return "data"
        if not self._expect:
            return "nothing"
        tag = self._expect[0][0]
        return {
            "greeting": "greeting",
            "message": "end of data",
            "auth": "AUTH",
            "auth_login_user": "AUTH",
            "auth_login_pass": "AUTH",
            "ignore": "reply",
        }.get(tag, tag.upper())

    def tls_started(self) -> None:
        """
        The adapter started TLS after :class:`StartTLS`: forget what the
        server said in the clear and greet it again (RFC 3207 section 4.2).
        """
        if self._phase != self._PHASE_TLS:
            raise RuntimeError("tls_started() without a StartTLS event")
        self.tls = True
        self.extensions = {}
        self._inbuf.clear()
        self._phase = self._PHASE_REPLIES
        self._command(f"EHLO {self.hostname}", "ehlo")

    def send_data(self, chunk: bytes) -> None:
        """Stream the next piece of the message (after :class:`ReadyForData`)."""
        if self._phase == self._PHASE_CLOSED:
            return  # the connection ended meanwhile; TransactionDone says how
        if self._phase != self._PHASE_DATA:
            raise RuntimeError("send_data() outside the DATA phase")
        self._out += self._stuffer.feed(chunk)

    def end_data(self) -> None:
        """The message is complete: send the end-of-data mark and wait for the reply."""
        if self._phase == self._PHASE_CLOSED:
            return
        if self._phase != self._PHASE_DATA:
            raise RuntimeError("end_data() outside the DATA phase")
        self._out += self._stuffer.finish()
        self._phase = self._PHASE_REPLIES
        self._expect.append(("message", ""))

    def timeout(self) -> None:
        """The adapter's timer expired (RFC 5321 section 4.5.3.2): give up on the connection."""
        if self._phase == self._PHASE_CLOSED:
            return
        self._note_stale()
        self._set_error(f"timeout waiting for {self.waiting_for}", temporary=True)
        self._close()

    def connection_lost(self, description: str | None = None) -> None:
        """The connection ended (*description* says why, for the result)."""
        if self._phase == self._PHASE_CLOSED:
            return
        self._note_stale()
        self._set_error(
            description or f"connection lost while waiting for {self.waiting_for}", temporary=True
        )
        self._close()

    # -- reply parsing -----------------------------------------------------------

    def _parse_reply(self) -> Reply | None:
        """Take one complete reply from the input, or ``None``; raise _BadReply."""
        buf = self._inbuf
        pos = 0
        code = b""
        texts: list[str] = []
        while True:
            end = buf.find(b"\n", pos)
            if end < 0:
                if len(buf) - pos > MAX_REPLY_LINE:
                    raise _BadReply("reply line too long")
                if len(buf) > MAX_REPLY:
                    raise _BadReply("reply too long")
                return None
            if end + 1 - pos > MAX_REPLY_LINE:
                raise _BadReply("reply line too long")
            line = bytes(buf[pos:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            pos = end + 1
            m = _REPLY_LINE_RE.match(line)
            if m is None:
                raise _BadReply("malformed reply")
            if code and m.group(1) != code:
                raise _BadReply("reply lines with different codes")
            code = m.group(1)
            texts.append(_CONTROL_RE.sub("?", line[4:].decode("utf-8", errors="replace")))
            if m.group(2) != b"-":
                break
            if pos > MAX_REPLY:
                raise _BadReply("reply too long")
        del buf[:pos]
        number = int(code)
        enhanced = ""
        m2 = _ENHANCED_RE.match(texts[0])
        if m2 is not None and m2.group(1) == code[:1].decode():
            enhanced = m2.group(0)
            # RFC 2034 section 3: the code is repeated on every line.
            texts = [t[len(enhanced) + 1 :] if t.startswith(enhanced) else t for t in texts]
        return Reply(number, enhanced, "\n".join(texts))

    # -- the state machine ---------------------------------------------------------

    def _on_reply(self, reply: Reply) -> None:
        if not self._expect:
            self._protocol_error("unexpected reply " + _describe(reply))
            return
        if reply.code == 421 and self._expect[0][0] == "rset":
            self._note_stale()
        tag, arg = self._expect.popleft()
        if reply.code == 421 and tag != "quit":
            # RFC 5321 section 3.8: the server is closing; no QUIT, retry later.
            if tag == "greeting":
                self._greeting = reply
            elif tag == "rcpt" and self._mail_ok():
                self._per_recipient[arg] = reply
            elif tag in ("message", "data") and not self._decided:
                self._message_reply = reply
            self._set_error("server closing connection: " + _describe(reply), temporary=True)
            self._close()
            return
        getattr(self, "_on_" + tag)(reply, arg)

    def _on_ignore(self, reply: Reply, arg: str) -> None:
        self._maybe_idle()

    def _on_rset(self, reply: Reply, arg: str) -> None:
        if 200 <= reply.code < 300:
            self._start_transaction()
        else:
            # Not a connection to reuse (RFC 5321 section 4.5.1 requires RSET);
            # nothing of this transaction reached the server.
            self.stale = True
            self._fail("RSET refused: " + _describe(reply), reply, temporary=True)

    def _on_greeting(self, reply: Reply, arg: str) -> None:
        self._greeting = reply
        if reply.code == 220:
            self._command(f"EHLO {self.hostname}", "ehlo")
        elif reply.code >= 400:
            # RFC 5321 section 3.1: after a 554 greeting the client sends QUIT.
            self._fail("greeting refused: " + _describe(reply), reply)
        else:
            self._protocol_error("unexpected greeting " + _describe(reply))

    def _on_ehlo(self, reply: Reply, arg: str) -> None:
        if 200 <= reply.code < 300:
            self.extensions = _parse_extensions(reply.text)
            self._after_hello()
        elif reply.code >= 500:
            # RFC 5321 section 4.1.4: fall back to HELO.
            self._command(f"HELO {self.hostname}", "helo")
        elif reply.code >= 400:
            self._fail("EHLO refused: " + _describe(reply), reply)
        else:
            self._protocol_error("unexpected reply to EHLO " + _describe(reply))

    def _on_helo(self, reply: Reply, arg: str) -> None:
        if 200 <= reply.code < 300:
            self.extensions = {}
            self._after_hello()
        elif reply.code >= 400:
            self._fail("HELO refused: " + _describe(reply), reply)
        else:
            self._protocol_error("unexpected reply to HELO " + _describe(reply))

    def _after_hello(self) -> None:
        if not self.tls and self.tls_policy != "none":
            if "STARTTLS" in self.extensions:
                self._command("STARTTLS", "starttls")
                return
            if self.tls_policy == "verify" or self.require_tls:
                self._fail("TLS required: remote server does not offer STARTTLS", temporary=True)
                return
        self._after_tls()

    def _on_starttls(self, reply: Reply, arg: str) -> None:
        if reply.code == 220:
            self._phase = self._PHASE_TLS
            self._inbuf.clear()  # RFC 3207 section 4.2: never act on pre-TLS leftovers
            self._events.append(StartTLS())
        elif self.tls_policy == "verify" or self.require_tls:
            self._fail("TLS required: STARTTLS refused: " + _describe(reply), temporary=True)
        elif reply.code >= 400:
            self._after_tls()  # opportunistic: go on in the clear
        else:
            self._protocol_error("unexpected reply to STARTTLS " + _describe(reply))

    def _after_tls(self) -> None:
        if self._auth is not None:
            self._start_auth()
        else:
            self._start_transaction()

    # -- AUTH (RFC 4954) ---------------------------------------------------------

    def _start_auth(self) -> None:
        assert self._auth is not None
        if not self.tls and not self._allow_plaintext_auth:
            self._fail("authentication requires TLS, which the connection does not have", temporary=True)
            return
        if "AUTH" not in self.extensions:
            self._fail("remote server does not offer AUTH", temporary=True)
            return
        mechanisms = self.extensions["AUTH"].upper().split()
        username, password = self._auth
        if "PLAIN" in mechanisms:
            # RFC 4616 section 2: [authzid] NUL authcid NUL passwd.
            token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode()).decode()
            self._command(f"AUTH PLAIN {token}", "auth")
        elif "LOGIN" in mechanisms:
            self._command("AUTH LOGIN", "auth_login_user")
        else:
            self._fail("remote server offers no supported AUTH mechanism (PLAIN, LOGIN)", temporary=True)

    def _on_auth_login_user(self, reply: Reply, arg: str) -> None:
        if reply.code != 334:
            self._auth_failed(reply)
            return
        assert self._auth is not None
        self._command(base64.b64encode(self._auth[0].encode()).decode(), "auth_login_pass")

    def _on_auth_login_pass(self, reply: Reply, arg: str) -> None:
        if reply.code != 334:
            self._auth_failed(reply)
            return
        assert self._auth is not None
        self._command(base64.b64encode(self._auth[1].encode()).decode(), "auth")

    def _on_auth(self, reply: Reply, arg: str) -> None:
        if reply.code == 235:
            self._start_transaction()
        else:
            self._auth_failed(reply)

    def _auth_failed(self, reply: Reply) -> None:
        if reply.code == 334:
            # An unexpected challenge: cancel the exchange (RFC 4954 section 4).
            self._command("*", "ignore")
        self._fail("authentication failed: " + _describe(reply), temporary=True)

    # -- the mail transaction ------------------------------------------------------

    def _start_transaction(self) -> None:
        ext = self.extensions
        limit = _size_limit(ext)
        if limit is not None and self.size is not None and self.size > limit:
            # RFC 1870 section 6.
            self._fail(
                f"552 5.3.4 message size {self.size} exceeds the remote server's limit of {limit} octets",
                temporary=False,
                reusable=True,
            )
            return
        if self.needs_8bit and "8BITMIME" not in ext:
            self._fail(
                "554 5.6.3 remote server does not support 8BITMIME (RFC 6152)", temporary=False, reusable=True
            )
            return
        if self.needs_smtputf8 and "SMTPUTF8" not in ext:
            self._fail(
                "553 5.6.7 remote server does not support SMTPUTF8 (RFC 6531)", temporary=False, reusable=True
            )
            return
        if self.require_tls and not self.tls:
            self._fail("TLS required: REQUIRETLS message on a connection without TLS", temporary=True)
            return
        if self.require_tls and "REQUIRETLS" not in ext:
            # RFC 8689 section 4.2.1 step 4, and section 5's 5.7.30.
            self._fail(
                "550 5.7.30 REQUIRETLS support required: the remote server does not offer REQUIRETLS",
                temporary=False,
                reusable=True,
            )
            return
        dsn = "DSN" in ext
        mail = [f"MAIL FROM:<{self.mail_from}>"]
        if self.size is not None and "SIZE" in ext:
            mail.append(f"SIZE={self.size}")
        if self.needs_8bit:
            mail.append("BODY=8BITMIME")
        if self.needs_smtputf8:
            mail.append("SMTPUTF8")
        if self.require_tls:
            mail.append("REQUIRETLS")
        if dsn:
            mail.extend(f"{k}={v}" for k, v in self._mail_params.items())
        self._pipelined = "PIPELINING" in ext
        self._command(" ".join(mail), "mail")
        if self._pipelined:
            # RFC 2920 section 3.1: MAIL, RCPTs and DATA in one group.
            for i in range(len(self._recipients)):
                self._send_rcpt(i, dsn)
            self._command("DATA", "data")

    def _send_rcpt(self, index: int, dsn: bool) -> None:
        r = self._recipients[index]
        words = [f"RCPT TO:<{r.address}>"]
        if dsn:
            words.extend(f"{k}={v}" for k, v in r.params.items())
        self._command(" ".join(words), "rcpt", r.address)

    def _mail_ok(self) -> bool:
        return self._mail_reply is not None and 200 <= self._mail_reply.code < 300

    def _on_mail(self, reply: Reply, arg: str) -> None:
        self._mail_reply = reply
        if self._pipelined:
            return  # the RCPT and DATA replies follow in any case
        if self._mail_ok():
            self._send_rcpt(0, "DSN" in self.extensions)
        else:
            self._fail_mail()

    def _fail_mail(self) -> None:
        reply = self._mail_reply
        assert reply is not None
        if reply.code >= 400:
            self._fail("sender refused: " + _describe(reply), reply, reusable=True)
        else:
            self._protocol_error("unexpected reply to MAIL " + _describe(reply))

    def _on_rcpt(self, reply: Reply, arg: str) -> None:
        if not self._mail_ok():
            return  # after a refused MAIL, RCPT replies say nothing about the recipient
        if 300 <= reply.code < 400:
            self._protocol_error("unexpected reply to RCPT " + _describe(reply))
            return
        self._per_recipient[arg] = reply
        if self._pipelined:
            return
        done = len(self._per_recipient)
        if done < len(self._recipients):
            self._send_rcpt(done, "DSN" in self.extensions)
        elif self._accepted():
            self._command("DATA", "data")
        else:
            self._fail_no_recipients()

    def _accepted(self) -> bool:
        return any(200 <= r.code < 300 for r in self._per_recipient.values())

    def _fail_no_recipients(self) -> None:
        temporary = any(r.is_temporary for r in self._per_recipient.values())
        self._fail("all recipients were refused", temporary=temporary, reusable=True)

    def _on_data(self, reply: Reply, arg: str) -> None:
        if not (self._mail_ok() and self._accepted()):
            if reply.code == 354:
                # RFC 2920 section 3.1: DATA accepted anyway; send a single dot.
                self._out += b".\r\n"
                self._expect.append(("ignore", ""))
            if not self._mail_ok():
                self._fail_mail()
            else:
                self._fail_no_recipients()
            return
        if reply.code == 354:
            if self._message is not None:
                self._out += self._stuffer.feed(self._message)
                self._out += self._stuffer.finish()
                self._message = None
                self._expect.append(("message", ""))
            else:
                self._phase = self._PHASE_DATA
                self._events.append(ReadyForData())
        elif reply.code >= 400:
            self._message_reply = reply
            self._fail("DATA refused: " + _describe(reply), reply, reusable=True)
        else:
            self._protocol_error("unexpected reply to DATA " + _describe(reply))

    def _on_message(self, reply: Reply, arg: str) -> None:
        if 200 <= reply.code < 300:
            self._message_reply = reply
            self._decided = True
            self._finish(reusable=True)
        elif reply.code >= 400:
            self._message_reply = reply
            self._fail("message refused: " + _describe(reply), reply, reusable=True)
        else:
            self._protocol_error("unexpected reply to end of data " + _describe(reply))

    def _on_quit(self, reply: Reply, arg: str) -> None:
        self._close()

    # -- helpers -----------------------------------------------------------------

    def _command(self, line: str, tag: str, arg: str = "") -> None:
        self._out += line.encode("utf-8") + b"\r\n"
        self._expect.append((tag, arg))

    def _set_error(self, error: str, *, temporary: bool) -> None:
        """Record the failure unless the outcome was already settled."""
        if self._decided:
            return
        self._decided = True
        self._error = error
        self._temporary = temporary

    def _fail(
        self, error: str, reply: Reply | None = None, *, temporary: bool | None = None, reusable: bool = False
    ) -> None:
        """
        The transaction failed: end it (:meth:`_finish`).  *reusable*: the
        connection is still fit for another transaction (the failure was
        this transaction's, not the session's).
        """
        if temporary is None:
            temporary = reply is None or reply.code < 500
        self._set_error(error, temporary=temporary)
        self._finish(reusable=reusable)

    def _finish(self, *, reusable: bool) -> None:
        """
        The transaction's outcome is known: with ``keep_open`` and a
        connection fit for more, go idle once every reply still due has
        come; otherwise say QUIT politely and close on its reply.
        """
        if self.keep_open and reusable:
            self._finishing = True
            self._maybe_idle()
        else:
            self._command("QUIT", "quit")

    def _maybe_idle(self) -> None:
        if not self._finishing or self._expect or self._phase != self._PHASE_REPLIES:
            return
        self._finishing = False
        self._phase = self._PHASE_IDLE
        self._emit_result()

    def _note_stale(self) -> None:
        """The connection failed before the server answered a reused connection's RSET."""
        if self.transactions > 1 and self._expect and self._expect[0][0] == "rset":
            self.stale = True

    def _protocol_error(self, what: str) -> None:
        """The server broke the protocol: the stream cannot be trusted; close at once."""
        self._set_error("protocol error: " + what, temporary=True)
        self._close()

    def _close(self) -> None:
        if self._phase == self._PHASE_CLOSED:
            return
        self._phase = self._PHASE_CLOSED
        self._inbuf.clear()
        self._expect.clear()
        if self.result is None:  # a transaction is under way (none while idle or quitting)
            self._emit_result()

    def _emit_result(self) -> None:
        """The transaction ended: its result, as :attr:`result` and a :class:`TransactionDone`."""
        self.result = TransactionResult(
            greeting_reply=self._greeting,
            per_recipient=dict(self._per_recipient),
            message_reply=self._message_reply,
            error=self._error,
            temporary=self._temporary,
            tls=self.tls,
            dsn="DSN" in self.extensions,
        )
        self._events.append(TransactionDone(self.result))


def _parse_extensions(text: str) -> dict[str, str]:
    """The EHLO keywords (RFC 5321 section 4.1.1.1): every line after the first."""
    ext: dict[str, str] = {}
    for line in text.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            ext[keyword.upper()] = params.strip()
    return ext


def _size_limit(ext: Mapping[str, str]) -> int | None:
    """RFC 1870 section 4: ``SIZE n`` with n > 0 is a limit; ``SIZE`` or ``SIZE 0`` is none."""
    if "SIZE" not in ext:
        return None
    try:
        limit = int(ext["SIZE"].split()[0])
    except (ValueError, IndexError):
        return None
    return limit if limit > 0 else None


def _check_text(what: str, text: str, forbidden: str, *, allow_empty: bool = True) -> None:
    if not isinstance(text, str) or (not text and not allow_empty) or any(c in text for c in forbidden):
        raise ValueError(f"bad {what}: {text!r}")


def _check_address(address: str) -> None:
    """Refuse what could break out of ``<...>`` or the command line (a quoted local part may hold spaces)."""
    _check_text("address", address, "\r\n\x00<>")


def _check_params(params: Mapping[str, str], allowed: frozenset[str]) -> None:
    for key, value in params.items():
        if key.upper() not in allowed:
            raise ValueError(f"parameter {key!r} not supported (allowed: {', '.join(sorted(allowed))})")
        if not isinstance(value, str) or _PARAM_VALUE_RE.fullmatch(value) is None:
            raise ValueError(f"bad value for {key}: {value!r} (use xtext())")
