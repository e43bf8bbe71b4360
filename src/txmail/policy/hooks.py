"""
Policy hooks: code that the SMTP server asks at every stage of a session
(connect, HELO/EHLO, AUTH result, MAIL FROM, each RCPT TO, end of data),
and that decides to let it go on, refuse it, slow it down, add header
fields to the message, or file the message into another folder.

A policy is an object with one method per stage (subclass :class:`Policy`
and override the ones you need; each returns a :class:`Verdict`, ``None``
for "go on", or a Deferred of either)::

    from txmail.policy import Policy, Verdict

    class NoMailFromBadCorp(Policy):
        def on_mail(self, session):
            if session.transaction.mail_from.endswith("@bad.example"):
                return Verdict.reject("550 5.7.1 Not from you")
            return None

    build_service(settings, policies=[NoMailFromBadCorp()])

Theory of operation
-------------------
* The server holds a list of policies; at each stage it asks them **in
  order** and combines their verdicts (:meth:`Verdict.then`): the first
  refusal ends the stage (later policies are not asked) and is the reply;
  delays add up and are waited before the reply is sent (a tarpit); header
  fields accumulate in order; the last policy that names a folder wins.
  A verdict with ``final=True`` accepts the stage at once: later policies
  are not asked at that stage (an allowlist), except those marked
  ``always`` (the server's ``Authentication-Results`` policy, which must
  remove forged fields whatever other policies decided).
* Every method gets the :class:`SessionInfo` of the connection: who the
  client is (address, the forward-confirmed reverse DNS name, the name it
  greeted with, TLS, the authenticated user), the transaction in progress
  (:class:`TransactionInfo`: sender, accepted recipients, message id), and
  ``notes`` dictionaries that policies use to pass what they learnt to later
  stages (the SPF result found at MAIL, say, for DMARC at the end of data).
  Results meant for the ``Authentication-Results`` field go to
  :attr:`SessionInfo.auth_results` (the connection's, e.g. iprev) and
  :attr:`TransactionInfo.auth_results` (the message's: SPF, DKIM, DMARC).
* What a refusal means depends on the stage (the replies follow RFC 5321):

  ========== ==========================================================
  connect    ``421``: the reply, then the connection is closed.  ``554``:
             sent instead of the ``220`` greeting; every later command but
             QUIT gets ``503 5.5.1`` (RFC 5321 section 3.1).
  helo       the reply to EHLO/HELO; the client may greet again.
  auth       after a successful exchange: the reply instead of ``235``,
             and the client stays unauthenticated.  After a failed one,
             only a ``421`` changes the reply (and closes).
  mail       the reply to MAIL; no transaction starts.
  rcpt       the reply to RCPT; the recipient is not added.
  data       the reply to the final dot; nothing is delivered.
  ========== ==========================================================

  A ``421`` reply at any stage closes the connection after it is sent.
* ``on_rcpt`` is asked after the router's own check (local user, relay
  permission) and is told its outcome (:class:`RecipientInfo`): a policy may
  refuse a recipient the router accepted, and sees the ones it refused (to
  count them); for a refused one only a refusal of the policy's own
  replaces the router's reply.
* Header fields of verdicts given at connect, HELO and AUTH go into every
  message of the connection; those of MAIL, RCPT and data into the
  transaction's message.  They are added at the top of the message, below
  ``Return-Path:`` and above our ``Received:`` field.  A data-stage verdict
  may also edit the client's header section (:meth:`Verdict.edit_headers`,
  e.g. to remove forged ``Authentication-Results`` fields), replace the
  body (:meth:`Verdict.replace_body`), drop the message after accepting
  it (:meth:`Verdict.discard_message`), or put it on hold in the queue
  (:meth:`Verdict.hold_message`): what a milter may ask for.  A message
  both discarded and held is discarded.
* A policy that raises or whose Deferred fails is logged; the stage then
  fails temporarily (``421 4.3.0`` at connect, ``454 4.7.0`` at auth,
  ``451 4.3.0`` elsewhere), so a broken policy never lets mail through
  that it should have refused, and never loses mail the client was told
  was accepted.
* :meth:`Policy.on_close` is told when a connection ends (for counters).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from txmail.model import MessageSource, RecipientResult
from txmail.smtp.codes import Reply
from txmail.smtp.session import SessionRole

__all__ = [
    "MessageInfo",
    "Policy",
    "RecipientInfo",
    "SessionInfo",
    "Stage",
    "TransactionInfo",
    "Verdict",
    "header_field",
    "split_header",
]


class Stage(enum.Enum):
    """The points of an SMTP session where policies are asked."""

    CONNECT = "connect"
    HELO = "helo"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


_NOT_A_REPLY = Reply(599, "", "")
_FIELD_NAME = re.compile(rb"^[!-9;-~]+$")  # RFC 5322 section 3.6.8: printable US-ASCII but ":"


def _reply(reply: Reply | str) -> Reply:
    if isinstance(reply, Reply):
        parsed = reply
    else:
        parsed = Reply.parse(reply, _NOT_A_REPLY)
        if parsed is _NOT_A_REPLY:
            raise ValueError(f"not an SMTP reply: {reply!r}")
    if not 400 <= parsed.code < 600:
        raise ValueError(f"a refusal needs a 4xx or 5xx reply, not {parsed.code}")
    if any(c in parsed.text for c in "\r\n\x00"):
        raise ValueError("a reply text is one line")
    return parsed


def header_field(name: str, value: str | bytes) -> bytes:
    """
    One header field ``Name: value`` ending in CRLF.  *value* may be folded
    already (CRLF followed by a space or tab); any other CR or LF, or a NUL,
    is refused, so that nothing a policy copies from the network can end
    the header section or add a field of its own.

    Raises:
        ValueError: a bad name or value.
    """
    raw_name = name.encode("ascii", "strict") if isinstance(name, str) else name
    if not _FIELD_NAME.match(raw_name):
        raise ValueError(f"invalid header field name {name!r}")
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if b"\x00" in raw:
        raise ValueError("NUL in a header field value")
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if any(b"\r" in line for line in lines) or any(line[:1] not in (b" ", b"\t") for line in lines[1:]):
        raise ValueError("a header field value may only contain folding line breaks")
    return raw_name + b": " + b"\r\n".join(lines) + b"\r\n"


def split_header(message: bytes) -> int:
    """
    The length of the header section of *message* (each field with its
    CRLF; the empty line and the body follow).  A message without an empty
    line is all header.
    """
    if message.startswith(b"\r\n"):
        return 0
    end = message.find(b"\r\n\r\n")
    return len(message) if end < 0 else end + 2


@dataclass(frozen=True, slots=True)
class Verdict:
    """
    A policy's decision at one stage.  Build it with the class methods and
    combine several with :meth:`then`.

    Attributes:
        reply: the refusal (a 4xx/5xx :class:`~txmail.smtp.codes.Reply`), or
            ``None`` to go on.
        delay: seconds to wait before the reply is sent (a tarpit).
        headers: header fields to add to the message (CRLF-ended bytes).
        folder: the folder local recipients get the message in (e.g.
            ``"Junk"``), or ``None`` for their INBOX.
        edits: functions ``header_section -> header_section`` applied in
            order to the client's header section (data stage only).
        final: accept the stage now; later policies are not asked.
        body: the message's new body (what follows the empty line after
            the header section, CRLF line ends), or ``None`` to keep it
            (data stage only; a milter's "replace body").
        discard: accept the message (``250``) and deliver it to no one
            (data stage only; a milter's "discard").
        hold: put the message on hold instead of delivering it, with this
            reason: every recipient waits in the queue until ``txmail queue
            release`` (Postfix's hold queue; a milter's "quarantine").
    """

    reply: Reply | None = None
    delay: float = 0.0
    headers: tuple[bytes, ...] = ()
    folder: str | None = None
    edits: tuple[Callable[[bytes], bytes], ...] = ()
    final: bool = False
    body: bytes | None = None
    discard: bool = False
    hold: str | None = None

    def __post_init__(self) -> None:
        if self.reply is not None:
            object.__setattr__(self, "reply", _reply(self.reply))
        if self.delay < 0:
            raise ValueError("delay must not be negative")

    @classmethod
    def accept(cls, *, final: bool = False) -> Verdict:
        """Go on (with ``final=True``: and ask no later policy at this stage)."""
        return cls(final=final)

    @classmethod
    def reject(cls, reply: Reply | str = "550 5.7.1 Rejected by policy", *, delay: float = 0.0) -> Verdict:
        """
        Refuse with *reply*, a 4xx or 5xx reply with an RFC 3463 enhanced
        code (``"550 5.7.1 text"``); a ``421`` also closes the connection.

        Raises:
            ValueError: *reply* is not such a reply.
        """
        return cls(reply=_reply(reply), delay=delay)

    @classmethod
    def tarpit(cls, seconds: float) -> Verdict:
        """Go on, after *seconds*."""
        return cls(delay=seconds)

    @classmethod
    def add_header(cls, name: str, value: str | bytes) -> Verdict:
        """Go on, adding the header field *name*: *value* (see :func:`header_field`)."""
        return cls(headers=(header_field(name, value),))

    @classmethod
    def deliver_to(cls, folder: str) -> Verdict:
        """Go on; local recipients get the message in *folder* (created when missing)."""
        if not folder or any(c in folder for c in "\r\n\x00"):
            raise ValueError(f"invalid folder {folder!r}")
        return cls(folder=folder)

    @classmethod
    def edit_headers(cls, edit: Callable[[bytes], bytes]) -> Verdict:
        """
        Go on, passing the client's header section through *edit*, once the
        message has arrived (an edit given at an earlier stage waits for it).
        """
        return cls(edits=(edit,))

    @classmethod
    def replace_body(cls, body: bytes) -> Verdict:
        """
        Go on, with *body* as the message's new body (data stage only).
        Bare CR or LF line ends are made CRLF; a body that does not end
        with a line end gets one.
        """
        body = re.sub(rb"\r\n|\r|\n", b"\r\n", body)
        if body and not body.endswith(b"\r\n"):
            body += b"\r\n"
        return cls(body=body)

    @classmethod
    def discard_message(cls) -> Verdict:
        """Accept the message (``250``) and deliver it to no one (data stage only)."""
        return cls(discard=True)

    @classmethod
    def hold_message(cls, reason: str) -> Verdict:
        """
        Accept the message and put it on hold in the queue with *reason*
        (see :attr:`hold`); it is delivered once an administrator releases it.
        """
        reason = " ".join(reason.split()) or "held by policy"
        return cls(hold=reason)

    @property
    def refused(self) -> bool:
        return self.reply is not None

    def then(self, later: Verdict) -> Verdict:
        """This verdict followed by *later*'s (see the module notes)."""
        if self == ACCEPT:
            return later
        if later == ACCEPT:
            return self
        return Verdict(
            reply=later.reply,
            delay=self.delay + later.delay,
            headers=self.headers + later.headers,
            folder=later.folder if later.folder is not None else self.folder,
            edits=self.edits + later.edits,
            final=self.final or later.final,
            body=later.body if later.body is not None else self.body,
            discard=self.discard or later.discard,
            hold=later.hold if later.hold is not None else self.hold,
        )


#: The verdict of a stage no policy objected to.
ACCEPT = Verdict()


@dataclass
class TransactionInfo:
    """
    The mail transaction in progress, as policies see it.

    Attributes:
        mail_from: the reverse-path (``""`` for ``<>``).
        mail_params: the MAIL parameters (upper-cased keys).
        recipients: the recipients accepted so far, in order.
        message_id: the server's id of the message (set at DATA).
        auth_results: results for ``Authentication-Results``
            (:class:`txmail.policy.authres.AuthResult` objects, in order).
        notes: what policies keep for later stages of this transaction.
    """

    mail_from: str
    mail_params: dict[str, str | None] = field(default_factory=dict)
    recipients: list[str] = field(default_factory=list)
    message_id: str = ""
    auth_results: list[Any] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def sender_domain(self) -> str:
        """The domain of the reverse-path, lower-cased (``""`` for ``<>``)."""
        return self.mail_from.rpartition("@")[2].lower().rstrip(".") if "@" in self.mail_from else ""


@dataclass
class SessionInfo:
    """
    One SMTP connection, as policies see it.  The server keeps it up to
    date; policies read it and write only to ``notes`` and ``auth_results``.

    Attributes:
        role: ``"mta"`` (port 25) or ``"submission"``.
        session_id: the connection's id in the logs.
        hostname: our own name (the authserv-id of our results).
        client_address: the client's IP address (text), ``""`` if unknown.
        client_port: its port.
        client_name: the client's forward-confirmed reverse DNS name
            (RFC 8601 section 3 "iprev"), or ``None``.
        iprev: the iprev result (``pass``, ``fail``, ``temperror``,
            ``permerror``), or ``None`` when it was not looked up.
        trusted: the client is in the server's trusted networks
            (``[policy] trusted_networks``): the built-in inbound checks and
            limits let it through.
        tls: the connection runs TLS.
        helo: the name the client greeted with, or ``None``.
        authenticated_user: the user the client authenticated as, or ``None``.
        auth_mechanism: the SASL mechanism of the last AUTH exchange.
        auth_succeeded: the outcome of the last AUTH exchange (at the auth
            stage), or ``None`` before any.
        transaction: the :class:`TransactionInfo`, or ``None`` outside one.
        auth_results, notes: like :class:`TransactionInfo`'s, for the
            whole connection.
    """

    role: SessionRole
    session_id: str = ""
    hostname: str = ""
    client_address: str = ""
    client_port: int = 0
    client_name: str | None = None
    iprev: str | None = None
    trusted: bool = False
    tls: bool = False
    helo: str | None = None
    authenticated_user: str | None = None
    auth_mechanism: str = ""
    auth_succeeded: bool | None = None
    transaction: TransactionInfo | None = None
    auth_results: list[Any] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def loopback(self) -> bool:
        import ipaddress

        try:
            return ipaddress.ip_address(self.client_address).is_loopback
        except ValueError:
            return False


@dataclass(frozen=True)
class RecipientInfo:
    """
    One RCPT TO, as :meth:`Policy.on_rcpt` sees it.

    Attributes:
        address: the forward-path as given.
        params: its ESMTP parameters.
        result: the router's check (``result.ok``; else its refusal in
            ``result.reply``).
    """

    address: str
    params: dict[str, str | None]
    result: RecipientResult

    @property
    def accepted(self) -> bool:
        return self.result.ok

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower().rstrip(".")


@dataclass(frozen=True)
class MessageInfo:
    """
    The message at the end of data, as :meth:`Policy.on_data` sees it.

    Attributes:
        file: the :class:`~txmail.model.MessageSource` (read it, never
            change what it reads from); it starts with our ``Return-Path:``
            and ``Received:`` fields.
        size: octets the client sent.
        trace_length: octets of our own fields at the start of the file.
        prior: the verdict of the policies asked before this one at the
            end of data, when it edits the header section or replaces the
            body (else ``None``): :meth:`changed` applies it, so that a
            policy that must see the message as it will be delivered (DKIM
            signing after a milter's changes) can.
    """

    file: MessageSource
    size: int
    trace_length: int
    prior: Verdict | None = None

    @property
    def data(self) -> bytes | None:
        """The client's message in memory (messages up to 256 KiB), else ``None``."""
        data = self.file.data
        return None if data is None else data[self.trace_length :]

    def changed(self, data: bytes) -> bytes:
        """
        *data* (the client's message, from :attr:`data` or :meth:`read`) with
        the header edits and the new body of :attr:`prior` applied.
        """
        prior = self.prior
        if prior is None or (not prior.edits and prior.body is None):
            return data
        split = split_header(data)
        section = data[:split]
        for edit in prior.edits:
            section = edit(section)
        return section + (data[split:] if prior.body is None else b"\r\n" + prior.body)

    def open(self) -> BinaryIO:
        """The client's message as a binary file, past our own fields (blocking; the caller closes it)."""
        f = self.file.open()
        try:
            if f.seekable():
                f.seek(self.trace_length)
            else:
                left = self.trace_length
                while left > 0 and (skipped := f.read(left)):
                    left -= len(skipped)
        except BaseException:
            f.close()
            raise
        return f

    def read(self) -> bytes:
        """The client's message, read from the source when it is not in memory (blocking)."""
        data = self.data
        if data is not None:
            return data
        with self.open() as f:
            return f.read()


class Policy:
    """
    A policy that lets everything through: subclass it and override the
    stages you check.  Each ``on_*`` method returns a :class:`Verdict`,
    ``None`` (go on), or a Deferred of either.  ``roles`` limits the roles
    it is asked for (``{"mta"}``: port 25 only).
    """

    #: The session roles this policy is asked in.
    roles: frozenset[str] = frozenset({"mta", "submission"})
    #: Asked even after an earlier policy accepted the stage with
    #: ``final=True`` (never after a refusal).
    always: bool = False

    def on_connect(self, session: SessionInfo) -> Any:
        """A client connected (``session.client_address``, ``client_name``)."""
        return None

    def on_helo(self, session: SessionInfo, name: str) -> Any:
        """The client greeted with *name* (not yet in ``session.helo``)."""
        return None

    def on_auth(self, session: SessionInfo, username: str | None, succeeded: bool) -> Any:
        """An AUTH exchange ended; *username* is the authenticated user on success."""
        return None

    def on_mail(self, session: SessionInfo) -> Any:
        """MAIL FROM: ``session.transaction`` is the new transaction."""
        return None

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Any:
        """RCPT TO, after the router's check (see the module notes)."""
        return None

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        """The whole message arrived; nothing is delivered yet."""
        return None

    def on_close(self, session: SessionInfo) -> None:
        """The connection ended (no decision; for counters)."""
