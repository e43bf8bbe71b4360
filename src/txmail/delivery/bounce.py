"""
Delivery status notifications: bounces, delay warnings and success reports
(RFC 3464), and the RFC 3461 rules for when to send them.

Theory of operation
===================

:func:`make_dsn` writes one complete RFC 5322 message, CRLF line ends
throughout, addressed to the envelope sender of the original::

    From: Mail Delivery System <MAILER-DAEMON@reporting-mta>
    To: <sender>
    Subject: Delivery Status Notification (Failure | Delay | Success)
    Date, Message-ID
    Auto-Submitted: auto-replied                (RFC 3834 section 5)
    MIME-Version: 1.0
    Content-Type: multipart/report; report-type=delivery-status; boundary=...
                                                (RFC 6522)
    1. text/plain: a human-readable account, one line per recipient
    2. message/delivery-status (RFC 3464 section 2): the per-message fields
       (Reporting-MTA, Original-Envelope-Id, Arrival-Date), then one block
       per recipient (Original-Recipient, Final-Recipient, Action, Status,
       Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until),
       blocks separated by blank lines
    3. text/rfc822-headers: the original's header section (RFC 6522
       section 4), or with ``return_full`` (RFC 3461 RET=FULL) the whole
       original as message/rfc822

The subject names the worst outcome: any "failed" recipient makes it a
failure report, else any "delayed" a delay report, else a success report.

Encoding
========

* The message/delivery-status part is kept 7-bit: characters outside ASCII
  (an SMTPUTF8 address, a UTF-8 server reply) are written as RFC 6533
  ``\\x{HHHH}`` escapes, and a non-ASCII address uses the ``utf-8`` address
  type (RFC 6533 section 3) instead of ``rfc822``.
* Fields longer than 78 octets are folded at white space (RFC 5322 section
  2.2.3); a run of more than 900 octets without white space is broken, so
  no line reaches the 998-octet limit of RFC 5322 section 2.1.1.  CR and LF
  inside values (a multi-line SMTP reply) become spaces: nothing handed in
  can start a new header field.
* The text part is UTF-8, ``8bit`` only when it is not plain ASCII.  The
  returned original is copied as it is (8-bit octets included, line ends
  made CRLF) with ``Content-Transfer-Encoding: 8bit`` when needed.  An
  original with lines over 998 octets cannot be carried in message/rfc822
  untouched, so then only its header section is returned.
* Dates are RFC 5322 dates in UTC (``+0000``).

:func:`should_bounce` and :func:`notify_wants` tell the queue whether a DSN
is to be sent at all: never to the null reverse-path (RFC 5321 sections
4.5.5 and 6.1: no bounce for a bounce), and only for the events the
recipient's NOTIFY parameter asked for (RFC 3461 section 4.1).

This module is sans-IO: it imports nothing from Twisted and does no I/O.
"""

from __future__ import annotations

import re
import secrets
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime

__all__ = [
    "ACTIONS",
    "RecipientStatus",
    "format_date",
    "make_dsn",
    "notify_wants",
    "should_bounce",
]

#: The RFC 3464 section 2.3.3 action values.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

_STATUS_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_TYPED_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*\s*;")
_SMTP_REPLY_RE = re.compile(r"^[245]\d\d[ -]")
_LINE_END_RE = re.compile(rb"\r?\n")

#: Fold header fields at white space beyond this many octets.
_FOLD_AT = 78
#: Break a run without white space after this many octets (< 998).
_HARD_LIMIT = 900

_SUBJECTS = {
    "failed": "Delivery Status Notification (Failure)",
    "delayed": "Delivery Status Notification (Delay)",
    "success": "Delivery Status Notification (Success)",
}

# A few RFC 3463 codes, for the human-readable part when there is no reply.
_STATUS_TEXT = {
    "5.1.1": "no such mailbox",
    "5.1.2": "the destination domain does not exist or accepts no mail",
    "5.1.10": "the recipient's domain accepts no mail (null MX)",
    "4.4.1": "no answer from the receiving host",
    "4.4.2": "the connection was lost",
    "4.4.3": "the destination could not be looked up",
    "4.4.7": "the message has been waiting too long",
    "5.4.4": "no route to the destination",
    "5.4.7": "delivery time expired",
    "5.2.2": "mailbox full",
    "5.3.4": "message too big",
}
_CLASS_TEXT = {"2": "success", "4": "temporary failure", "5": "permanent failure"}


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """
    What to report about one recipient (an RFC 3464 per-recipient block).

    Attributes:
        recipient: the final recipient, a bare address (``rfc822;`` is
            added) or already typed (``rfc822;user@host``).
        action: one of :data:`ACTIONS`.
        status: the RFC 3463 enhanced status code, ``5.1.1`` etc.
        diagnostic: the remote reply, ``smtp; 550 5.1.1 no such user``; a
            bare SMTP reply gets ``smtp;``, any other bare text ``X-txmail;``.
        remote_mta: ``dns; mx.example.test`` (a bare name gets ``dns;``).
        original_recipient: the ORCPT value, ``rfc822;user@host``, decoded
            from xtext.
        last_attempt: seconds since the epoch of the last attempt.
        will_retry_until: for ``delayed``: when the queue gives up.
    """

    recipient: str
    action: str
    status: str
    diagnostic: str | None = None
    remote_mta: str | None = None
    original_recipient: str | None = None
    last_attempt: float | None = None
    will_retry_until: float | None = None


def should_bounce(sender: str) -> bool:
    """
    Whether a DSN may be sent to *sender* at all: not to the null
    reverse-path ``<>`` (RFC 5321 section 4.5.5: a DSN is itself sent from
    ``<>`` and must never cause another; section 6.1).
    """
    return sender.strip() not in ("", "<>")


def notify_wants(notify: str | None, action: str) -> bool:
    """
    Whether the NOTIFY parameter of a recipient (RFC 3461 section 4.1)
    asks for a DSN of this *action*.

    ``None`` (no NOTIFY given) means failures and delays are reported and
    successes are not.  ``NEVER`` means nothing.  Otherwise a comma list of
    ``SUCCESS`` (``delivered``, ``relayed``, ``expanded``: RFC 3461
    section 6.2), ``FAILURE`` (``failed``) and ``DELAY`` (``delayed``),
    any case.  Unknown keywords are ignored; ``NEVER`` combined with
    others (which RFC 3461 forbids) means nothing.
    """
    if action not in ACTIONS:
        raise ValueError(f"unknown DSN action {action!r}")
    if notify is None:
        return action in ("failed", "delayed")
    keywords = {k.strip().upper() for k in notify.split(",")}
    if "NEVER" in keywords:
        return False
    if action == "failed":
        return "FAILURE" in keywords
    if action == "delayed":
        return "DELAY" in keywords
    return "SUCCESS" in keywords


def format_date(timestamp: float) -> str:
    """An RFC 5322 section 3.3 date-time in UTC, ``Mon, 30 Nov 2026 06:44:35 +0000``."""
    return format_datetime(datetime.fromtimestamp(timestamp, UTC).replace(microsecond=0))


# -- field formatting ---------------------------------------------------------


def _one_line(value: str) -> str:
    """Collapse line ends and other control characters into single spaces."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", value).strip()


def _escape_unicode(value: str) -> str:
    """Write characters outside ASCII as RFC 6533 ``\\x{HHHH}`` escapes."""
    return "".join(c if ord(c) < 0x80 else f"\\x{{{ord(c):X}}}" for c in value)


def _address_field(value: str) -> str:
    """A typed address: ``rfc822;addr``, or ``utf-8;`` with escapes when not ASCII (RFC 6533)."""
    value = _one_line(value)
    if _TYPED_RE.match(value):
        addr_type, _, address = value.partition(";")
        addr_type, address = addr_type.strip(), address.strip()
    else:
        addr_type, address = "rfc822", value.strip("<>")
    if address.isascii():
        return f"{addr_type};{address}"
    # utf-8-addr-xtext: QCHAR or EmbeddedUnicodeChar; '+', '=', '\\' escaped too.
    escaped = "".join(
        c if 0x21 <= ord(c) <= 0x7E and c not in "+=\\" else f"\\x{{{ord(c):X}}}" for c in address
    )
    return f"utf-8;{escaped}"


def _typed(value: str, default_type: str) -> str:
    value = _one_line(value)
    if _TYPED_RE.match(value):
        kind, _, rest = value.partition(";")
        return f"{kind.strip()}; {rest.strip()}"
    return f"{default_type}; {value}"


def _fold(name: str, value: str) -> bytes:
    """
    One header field, folded (RFC 5322 section 2.2.3) at white space beyond
    78 octets, runs without white space broken at 900 octets, CRLF-ended.
    """
    words = value.split(" ")
    lines: list[str] = []
    current = f"{name}:"
    for word in words:
        if not word:
            continue
        while len(word.encode()) > _HARD_LIMIT:
            cut = _HARD_LIMIT
            while len(word[:cut].encode()) > _HARD_LIMIT:
                cut -= 1
            if current.strip():
                lines.append(current)
            lines.append(" " + word[:cut])
            current = ""
            word = word[cut:]
        candidate = f"{current} {word}"
        if len(candidate.encode()) > _FOLD_AT and current.strip() and current.strip() != f"{name}:":
            lines.append(current)
            current = f" {word}"
        else:
            current = candidate
    if current.strip():
        lines.append(current)
    return "".join(line + "\r\n" for line in lines).encode()


def _header_section(original: bytes) -> bytes:
    """The header section of *original* (without the blank line), CRLF-ended lines."""
    normalized = _LINE_END_RE.sub(b"\r\n", original)
    if normalized.startswith(b"\r\n"):
        return b""
    head, sep, _ = normalized.partition(b"\r\n\r\n")
    return head + b"\r\n" if sep else _ensure_crlf(head)


def _ensure_crlf(data: bytes) -> bytes:
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


def _cte(data: bytes) -> bytes:
    return b"7bit" if data.isascii() else b"8bit"


# -- the report ---------------------------------------------------------------


def _reason(rs: RecipientStatus) -> str:
    if rs.diagnostic:
        text = _one_line(rs.diagnostic)
        if _TYPED_RE.match(text):
            text = text.partition(";")[2].strip()
        return text
    described = _STATUS_TEXT.get(rs.status) or _CLASS_TEXT.get(rs.status[:1], "")
    return f"{rs.status} {described}".strip()


def _human_text(
    reporting_mta: str, recipients: Sequence[RecipientStatus], postmaster: str | None, returned: str
) -> str:
    groups: dict[str, list[RecipientStatus]] = {}
    for rs in recipients:
        groups.setdefault(rs.action, []).append(rs)
    paras = [f"This is the mail system at {reporting_mta}."]
    wrap = textwrap.TextWrapper(width=76, break_on_hyphens=False)
    intro = {
        "failed": "Your message could not be delivered to the following recipients. "
        "This is a permanent error; the mail system has given up:",
        "delayed": "Delivery of your message to the following recipients has been delayed. "
        "The mail system will keep trying; you do not need to send it again:",
        "delivered": "Your message was delivered to the following recipients:",
        "relayed": "Your message was passed on to the following recipients' systems, "
        "which will not report on it further:",
        "expanded": "Your message was delivered to the following recipients, "
        "which forward it to further addresses:",
    }
    wrapper = textwrap.TextWrapper(width=76, subsequent_indent="    ", break_on_hyphens=False)
    for action in ACTIONS:
        if action not in groups:
            continue
        lines = [*wrap.wrap(intro[action]), ""]
        for rs in groups[action]:
            address = _one_line(rs.recipient)
            if _TYPED_RE.match(address):
                address = address.partition(";")[2].strip()
            line = f"  <{address}>: {_reason(rs)}"
            if rs.remote_mta:
                host = _one_line(rs.remote_mta)
                host = host.partition(";")[2].strip() if _TYPED_RE.match(host) else host
                line += f" (from {host})"
            if action == "delayed" and rs.will_retry_until is not None:
                line += f"; retrying until {format_date(rs.will_retry_until)}"
            lines.extend(wrapper.wrap(line))
        paras.append("\r\n".join(lines))
    paras.append("\r\n".join(wrap.wrap(returned)))
    if postmaster:
        paras.append(
            "\r\n".join(wrap.wrap(f"For help, please contact the postmaster <{_one_line(postmaster)}>."))
        )
    return "\r\n\r\n".join(paras) + "\r\n"


def _status_part(
    reporting_mta: str, recipients: Sequence[RecipientStatus], envid: str | None, arrival: float | None
) -> bytes:
    out = [_fold("Reporting-MTA", f"dns; {reporting_mta}")]
    if envid is not None:
        out.append(_fold("Original-Envelope-Id", _escape_unicode(_one_line(envid))))
    if arrival is not None:
        out.append(_fold("Arrival-Date", format_date(arrival)))
    for rs in recipients:
        out.append(b"\r\n")
        if rs.original_recipient:
            out.append(_fold("Original-Recipient", _address_field(rs.original_recipient)))
        out.append(_fold("Final-Recipient", _address_field(rs.recipient)))
        out.append(_fold("Action", rs.action))
        out.append(_fold("Status", rs.status))
        if rs.remote_mta:
            out.append(_fold("Remote-MTA", _escape_unicode(_typed(rs.remote_mta, "dns"))))
        if rs.diagnostic:
            text = _one_line(rs.diagnostic)
            default = "smtp" if _SMTP_REPLY_RE.match(text) else "X-txmail"
            out.append(_fold("Diagnostic-Code", _escape_unicode(_typed(text, default))))
        if rs.last_attempt is not None:
            out.append(_fold("Last-Attempt-Date", format_date(rs.last_attempt)))
        if rs.will_retry_until is not None and rs.action == "delayed":
            out.append(_fold("Will-Retry-Until", format_date(rs.will_retry_until)))
    return b"".join(out)


def make_dsn(
    *,
    reporting_mta: str,
    sender: str,
    recipients: Sequence[RecipientStatus],
    original: bytes,
    return_full: bool = False,
    envid: str | None = None,
    arrival: float | None = None,
    now: float | None = None,
    postmaster: str | None = None,
) -> bytes:
    """
    A complete DSN message (RFC 3464) to *sender* about *recipients* of
    *original*.  See the module documentation for its layout.

    Args:
        reporting_mta: this server's host name (``Reporting-MTA: dns;``, and
            the domain of the From address and Message-ID).
        sender: the original's envelope sender (the DSN's recipient).
        recipients: one status per recipient to report on (at least one).
        original: the original message as queued.
        return_full: return the whole original (RET=FULL), not only its
            header section.
        envid: the ENVID of the original transaction (decoded from xtext).
        arrival: when the original arrived (``Arrival-Date``).
        now: the time of the report (``Date``); ``time.time()`` by default.
        postmaster: an address named in the text for help.

    Raises:
        ValueError: null sender (see :func:`should_bounce`), no recipients,
            an invalid action or status, or a reporting MTA name with white
            space or control characters.
    """
    if not should_bounce(sender):
        raise ValueError("no DSN to the null reverse-path (RFC 5321 section 6.1)")
    if not recipients:
        raise ValueError("a DSN needs at least one recipient")
    if not reporting_mta or re.search(r"[\s\x00-\x1f\x7f<>]", reporting_mta):
        raise ValueError(f"invalid reporting MTA name {reporting_mta!r}")
    for rs in recipients:
        if rs.action not in ACTIONS:
            raise ValueError(f"unknown DSN action {rs.action!r}")
        if not _STATUS_RE.match(rs.status):
            raise ValueError(f"invalid status code {rs.status!r}")
    now = time.time() if now is None else now
    sender_addr = _one_line(sender).strip().removeprefix("<").removesuffix(">")
    actions = {rs.action for rs in recipients}
    kind = "failed" if "failed" in actions else "delayed" if "delayed" in actions else "success"

    # The third part: the original, whole or its header section.
    normalized = _ensure_crlf(_LINE_END_RE.sub(b"\r\n", original))
    full_ok = all(len(line) <= 998 for line in normalized.split(b"\r\n"))
    if return_full and full_ok:
        third_type, third = b"message/rfc822", normalized
        returned = "Your original message is attached."
    else:
        third_type, third = b"text/rfc822-headers", _header_section(original)
        returned = "The header of your original message is attached."
        if return_full:
            returned += " (The message itself has lines too long to return.)"

    description = (b"Undelivered message" if kind == "failed" else b"Message") + (
        b"" if third_type == b"message/rfc822" else b" headers"
    )
    text = _human_text(reporting_mta, recipients, postmaster, returned).encode()
    status = _status_part(reporting_mta, recipients, envid, arrival)

    boundary = f"=_txmail_{secrets.token_hex(12)}".encode()
    while boundary in third or boundary in text or boundary in status:  # pragma: no cover
        boundary = f"=_txmail_{secrets.token_hex(12)}".encode()

    head = b"".join(
        [
            _fold("From", f"Mail Delivery System <MAILER-DAEMON@{reporting_mta}>"),
            _fold("To", f"<{sender_addr}>"),
            _fold("Subject", _SUBJECTS[kind]),
            _fold("Date", format_date(now)),
            _fold("Message-ID", f"<{int(now)}.{secrets.token_hex(8)}@{reporting_mta}>"),
            _fold("Auto-Submitted", "auto-replied"),
            _fold("MIME-Version", "1.0"),
            b"Content-Type: multipart/report; report-type=delivery-status;\r\n"
            b' boundary="' + boundary + b'"\r\n',
            _fold("Content-Transfer-Encoding", "8bit" if not (text + third).isascii() else "7bit"),
        ]
    )
    delimiter = b"--" + boundary + b"\r\n"
    parts = [
        head,
        b"\r\nThis is a MIME-encapsulated message.\r\n\r\n",
        delimiter,
        b"Content-Type: text/plain; charset=utf-8\r\n",
        b"Content-Description: Notification\r\n",
        b"Content-Transfer-Encoding: " + _cte(text) + b"\r\n\r\n",
        text,
        b"\r\n",
        delimiter,
        b"Content-Type: message/delivery-status\r\n",
        b"Content-Description: Delivery report\r\n\r\n",
        status,
        b"\r\n",
        delimiter,
        b"Content-Type: " + third_type + b"\r\n",
        b"Content-Description: " + description + b"\r\n",
        b"Content-Transfer-Encoding: " + _cte(third) + b"\r\n\r\n",
        third,
        b"\r\n",
        b"--" + boundary + b"--\r\n",
    ]
    return b"".join(parts)
