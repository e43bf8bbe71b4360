"""
The vacation auto-reply (RFC 5230, RFC 6131, RFC 3834): whether to answer,
and the reply.

:func:`refusal` gives the reason not to answer, or ``None``:

* never to the null sender, nor to ``MAILER-DAEMON``, ``LISTSERV``,
  ``majordomo``, ``owner-*`` or ``*-request`` (RFC 5230 section 4.6, RFC
  3834 section 2);
* never to the user's own address (section 4.5);
* never to automatic mail: ``Auto-Submitted`` other than ``no`` (RFC 3834
  section 5), list mail (``List-Id`` and the other ``List-*`` fields of RFC
  2369 and 2919) or ``Precedence: bulk``, ``list`` or ``junk``;
* only when one of the user's addresses is in ``To``, ``Cc``, ``Bcc``,
  ``Resent-To``, ``Resent-Cc`` or ``Resent-Bcc`` (section 4.5);
* at most once per sender and handle in the period (section 4.1), asked of
  the vacation tracker.

:func:`build_reply` makes the reply: ``Auto-Submitted: auto-replied``,
``In-Reply-To`` and ``References`` (section 5.8), the subject ``Auto:``
and the original's (section 5.4) unless ``:subject`` is given, and
the reason as ``text/plain; charset=utf-8`` (quoted-printable unless it is
short-lined ASCII) or, with ``:mime``, as the MIME
entity the script wrote.
"""

from __future__ import annotations

import email.header
import email.utils
import hashlib
import quopri
from collections.abc import Iterable

from txmail.sieve.message import SieveMessage, unfold_text

__all__ = ["build_reply", "default_handle", "refusal", "reply_subject"]

_SYSTEM_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo", "postmaster")
_RECIPIENT_FIELDS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_LIST_FIELDS = (
    "list-id",
    "list-help",
    "list-subscribe",
    "list-unsubscribe",
    "list-post",
    "list-owner",
    "list-archive",
)


def _normal(address: str) -> str:
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at:
        return address.strip().lower()
    return f"{local}@{domain.lower()}".lower()


def refusal(message: SieveMessage, sender: str, addresses: Iterable[str]) -> str | None:
    """Why no vacation reply may go to *sender* (the envelope sender), or ``None``."""
    if not sender:
        return "the envelope sender is null"
    local = sender.rpartition("@")[0].lower()
    if local in _SYSTEM_LOCALPARTS or local.startswith("owner-") or local.endswith("-request"):
        return f"the sender {sender} is a system or list address"
    mine = {_normal(a) for a in addresses if a}
    if _normal(sender) in mine:
        return "the sender is the user"
    for value in message.headers("auto-submitted"):
        if value.split(";", 1)[0].strip().lower() != "no":
            return f"the message is Auto-Submitted: {value}"
    for name in _LIST_FIELDS:
        if message.raw_headers(name):
            return f"the message is list mail ({name})"
    for value in message.headers("precedence"):
        if value.strip().lower() in ("bulk", "list", "junk"):
            return f"the message has Precedence: {value.strip()}"
    listed = {
        _normal(address)
        for name in _RECIPIENT_FIELDS
        for _, address in email.utils.getaddresses([unfold_text(v) for v in message.raw_headers(name)])
        if address
    }
    if not listed & mine:
        return "none of the user's addresses is in To, Cc, Bcc or Resent-*"
    return None


def default_handle(reason: str, subject: str | None, sender: str | None, mime: bool) -> str:
    """RFC 5230 section 4.2: the same arguments make the same handle."""
    text = "\0".join([reason, subject or "", sender or "", "mime" if mime else ""])
    return "vacation-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _encode(value: str) -> str:
    if value.isascii():
        return value
    return email.header.Header(value, "utf-8").encode()


def _encode_address(value: str) -> str:
    """A ``From`` value with a non-ASCII display name as encoded-words, the address left as it is."""
    if value.isascii():
        return value
    name, address = email.utils.parseaddr(value)
    if not address:
        return _encode(value)
    return email.utils.formataddr((name, address), charset="utf-8")


def _body(text: str) -> tuple[str, bytes]:
    """The transfer encoding and the octets of a text/plain body: 7bit when it can be, else quoted-printable."""
    if text.isascii() and all(len(line) <= 998 for line in text.split("\r\n")):
        return "7bit", text.encode("ascii")
    encoded = quopri.encodestring(text.replace("\r\n", "\n").encode("utf-8"))
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


def build_reply(
    message: SieveMessage,
    *,
    to: str,
    sender: str,
    subject: str,
    reason: str,
    mime: bool,
    now: float,
    message_id_domain: str,
) -> bytes:
    """The reply's octets: header section and body, CRLF line ends."""
    fields = [
        ("Date", email.utils.formatdate(now, localtime=False)),
        ("From", _encode_address(sender)),
        ("To", to),
        ("Subject", _encode(subject)),
        ("Message-ID", email.utils.make_msgid(domain=message_id_domain)),
        ("Auto-Submitted", "auto-replied"),
    ]
    original_id = next(iter(message.headers("message-id")), "").strip()
    if original_id:
        references = " ".join([*(r.strip() for r in message.headers("references")), original_id]).strip()
        fields.append(("In-Reply-To", original_id))
        fields.append(("References", references))
    fields.append(("MIME-Version", "1.0"))
    text = reason.replace("\r\n", "\n").replace("\n", "\r\n")
    if mime:
        # The reason is a MIME entity: its own header fields, a blank line, its body.
        if not text.startswith("\r\n") and "\r\n\r\n" not in text:
            text = "\r\n" + text
        head = "".join(f"{name}: {value}\r\n" for name, value in fields)
        return (head + text).encode("utf-8")
    if not text.endswith("\r\n"):
        text += "\r\n"
    encoding, body = _body(text)
    fields.append(("Content-Type", "text/plain; charset=utf-8"))
    fields.append(("Content-Transfer-Encoding", encoding))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields)
    return (head + "\r\n").encode("utf-8") + body


def reply_subject(message: SieveMessage, subject: str | None) -> str:
    """The ``:subject``, or ``Auto:`` and the original subject (RFC 5230 section 5.4)."""
    if subject is not None:
        return subject
    original = next(iter(message.headers("subject")), "")
    return f"Auto: {original}".strip() if original else "Auto: (no subject)"
