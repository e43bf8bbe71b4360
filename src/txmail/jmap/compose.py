"""
New Emails: the message of an ``Email/set`` create (RFC 8621 section 4.6)
and ``Email/import`` (section 4.8), appended to their mailboxes as IMAP
APPEND would, with their keywords as flags.

A created Email is an RFC 5322 message built with the standard library's
:mod:`email` package (CRLF line ends, RFC 2047 encoded-words for
non-ASCII header text, quoted-printable or base64 bodies as it chooses):

* header fields from ``headers`` (raw values), ``header:Name`` and
  ``header:Name:asForm`` properties, and the convenience properties
  (``from``, ``to``, ``subject``, ``sentAt``, ``messageId``...); a
  ``Date`` (``sentAt`` or now) and a ``Message-ID`` are added when missing,
  and ``MIME-Version: 1.0``;
* the body from ``bodyStructure``, or from ``textBody``/``htmlBody``
  (``multipart/alternative`` when both) and ``attachments``
  (``multipart/mixed`` around them); a text part's content is its
  ``bodyValues`` entry, any other's the octets of its ``blobId`` (an
  upload, read through ``context.blobs``, or a blob of this account's
  Emails);
* the first mailbox gets the message, the others a copy (so all keep one
  EMAILID).

This module is sans-IO apart from the Deferreds the store and the blob
store return.
"""

from __future__ import annotations

import datetime
import email.errors
import email.headerregistry
import email.message
import email.policy
import email.utils
import secrets
import time
from typing import Any

from txmail.errors import NoSuchMailbox
from txmail.jmap import body as bodies
from txmail.jmap.common import resolve_id
from txmail.jmap.core import CallContext, set_error
from txmail.jmap.state import MailView, mail_view
from txmail.model import MessageSource

__all__ = ["blob_bytes", "create_email", "import_email"]

_POLICY = email.policy.SMTP.clone(max_line_length=78)
_ADDRESS_PROPS = {
    "from": "From",
    "to": "To",
    "cc": "Cc",
    "bcc": "Bcc",
    "replyTo": "Reply-To",
    "sender": "Sender",
}
_ID_PROPS = {"messageId": "Message-ID", "inReplyTo": "In-Reply-To", "references": "References"}
_CREATE_PROPS = frozenset(
    ("mailboxIds", "keywords", "receivedAt", "headers", "subject", "sentAt", "bodyStructure", "textBody",
     "htmlBody", "attachments", "bodyValues", *_ADDRESS_PROPS, *_ID_PROPS)
)  # fmt: skip


class _Invalid(Exception):
    """A property that cannot be made into a message: ``invalidProperties``."""

    def __init__(self, prop: str, description: str) -> None:
        super().__init__(description)
        self.prop = prop
        self.description = description


async def blob_bytes(context: CallContext, blob_id: Any) -> bytes | None:
    """The octets of *blob_id*: an upload (``context.blobs``), else a blob of this account's Emails."""
    if not isinstance(blob_id, str):
        return None
    if context.blobs is not None:
        data = await context.blobs.get(context.account_id, blob_id)
        if data is not None:
            return bytes(data)
    from txmail.jmap.email import blob

    return await blob(context, blob_id)


def _mailboxes(context: CallContext, view: MailView, value: Any) -> list[str]:
    if not isinstance(value, dict) or not value or not all(v is True for v in value.values()):
        raise _Invalid("mailboxIds", "mailboxIds must map at least one mailbox id to true")
    out = []
    for box_id in value:
        box_id = resolve_id(context, box_id)
        box = view.boxes.get(box_id) if isinstance(box_id, str) else None
        if box is None or box.status is None:
            raise _Invalid("mailboxIds", f"no such mailbox {box_id}")
        out.append(box_id)
    return out


def _flags(value: Any) -> list[str]:
    from txmail.jmap.email import keyword_to_flag

    if value is None:
        return []
    if not isinstance(value, dict) or not all(v is True for v in value.values()):
        raise _Invalid("keywords", "keywords must map keywords to true")
    try:
        return [keyword_to_flag(k) for k in value]
    except ValueError:
        raise _Invalid("keywords", "not a valid keyword") from None


def _address_list(prop: str, value: Any) -> list[email.headerregistry.Address]:
    if not isinstance(value, list):
        raise _Invalid(prop, "must be a list of EmailAddress objects")
    out = []
    for item in value:
        if not isinstance(item, dict) or not isinstance(item.get("email"), str):
            raise _Invalid(prop, "an EmailAddress needs an email")
        name = item.get("name") or ""
        if not isinstance(name, str) or any(c in name + item["email"] for c in "\r\n"):
            raise _Invalid(prop, "bad EmailAddress")
        try:
            out.append(email.headerregistry.Address(display_name=name, addr_spec=item["email"]))
        except (ValueError, IndexError, email.errors.HeaderParseError):
            raise _Invalid(prop, f"not an address: {item['email']}") from None
    return out


def _set_headers(message: email.message.EmailMessage, props: dict[str, Any]) -> None:
    """The top-level header fields of a created Email."""
    headers = props.get("headers") or []
    if not isinstance(headers, list):
        raise _Invalid("headers", "headers must be a list of EmailHeader objects")
    for header in headers:
        if (
            not isinstance(header, dict)
            or not isinstance(header.get("name"), str)
            or not isinstance(header.get("value"), str)
            or not header["name"]
            or any(c in header["name"] for c in ": \r\n")
        ):
            raise _Invalid("headers", "bad EmailHeader")
        if header["name"].lower().startswith("content-"):
            raise _Invalid("headers", "Content-* fields belong to body parts")
        message[header["name"]] = header["value"].strip()
    for prop, name in _ADDRESS_PROPS.items():
        if props.get(prop) is not None:
            addresses = _address_list(prop, props[prop])
            if addresses:
                message[name] = addresses
    if props.get("subject") is not None:
        if not isinstance(props["subject"], str) or any(c in props["subject"] for c in "\r\n"):
            raise _Invalid("subject", "the subject must be a line of text")
        message["Subject"] = props["subject"]
    for prop, name in _ID_PROPS.items():
        value = props.get(prop)
        if value is None:
            continue
        if not isinstance(value, list) or not all(
            isinstance(v, str) and v and "<" not in v and ">" not in v and " " not in v for v in value
        ):
            raise _Invalid(prop, "must be a list of message ids without angle brackets")
        if value:
            message[name] = " ".join(f"<{v}>" for v in value)
    for prop, value in props.items():
        if not prop.startswith("header:"):
            continue
        parsed = bodies.parse_header_property(prop)
        if (
            parsed is None
            or parsed[2]
            or parsed[1] not in ("Raw", "Text", "Addresses", "MessageIds", "Date", "URLs")
        ):
            raise _Invalid(prop, "not a header property that can be set")
        name, form, _ = parsed
        if value is None:
            continue
        if form == "Addresses":
            message[name] = _address_list(prop, value)
        elif form == "MessageIds":
            message[name] = " ".join(f"<{v}>" for v in value or [])
        elif form == "URLs":
            message[name] = ", ".join(f"<{v}>" for v in value or [])
        elif form == "Date":
            when = bodies.parse_utc_date(value)
            if when is None:
                raise _Invalid(prop, "not a date")
            message[name] = email.utils.formatdate(when, localtime=False)
        elif not isinstance(value, str) or "\r" in value or "\n" in value:
            raise _Invalid(prop, "must be a line of text")
        else:
            message[name] = value.strip() if form == "Raw" else value
    sent = props.get("sentAt")
    if sent is not None:
        when = bodies.parse_utc_date(sent)
        if when is None:
            raise _Invalid("sentAt", "not a date")
        del message["Date"]
        message["Date"] = email.utils.format_datetime(
            datetime.datetime.fromisoformat(sent.replace("Z", "+00:00"))
        )
    if "Date" not in message:
        message["Date"] = email.utils.formatdate(time.time(), localtime=False)
    if "Message-ID" not in message:
        domain = "txmail.invalid"
        for field in ("From", "Sender"):
            if field in message:
                named: Any = getattr(message[field], "addresses", ())
                if named and named[0].domain:
                    domain = named[0].domain
                    break
        message["Message-ID"] = f"<{secrets.token_hex(12)}@{domain}>"
    message["MIME-Version"] = "1.0"


async def _leaf(
    context: CallContext, spec: dict[str, Any], values: dict[str, Any], where: str
) -> email.message.MIMEPart:
    """One body part of a create: a text from ``bodyValues`` (``partId``) or a blob (``blobId``)."""
    if not isinstance(spec, dict):
        raise _Invalid(where, "a body part must be an object")
    mime_type = spec.get("type") or ("text/plain" if "partId" in spec else "application/octet-stream")
    if not isinstance(mime_type, str) or mime_type.count("/") != 1:
        raise _Invalid(where, "bad type")
    maintype, subtype = mime_type.lower().split("/")
    part = email.message.MIMEPart(policy=_POLICY)
    disposition = spec.get("disposition")
    name = spec.get("name")
    cid = spec.get("cid")
    if "partId" in spec:
        value = values.get(spec["partId"]) if isinstance(spec["partId"], str) else None
        if not isinstance(value, dict) or not isinstance(value.get("value"), str):
            raise _Invalid(where, f"no bodyValues entry for part {spec['partId']}")
        if value.get("isTruncated") or value.get("isEncodingProblem"):
            raise _Invalid(
                "bodyValues", "a body value to store may not be truncated or have an encoding problem"
            )
        if maintype != "text":
            raise _Invalid(where, "a part from bodyValues is text")
        part.set_content(
            value["value"].replace("\r\n", "\n").replace("\n", "\r\n"), subtype=subtype, charset="utf-8"
        )
    elif "blobId" in spec:
        data = await blob_bytes(context, resolve_id(context, spec["blobId"]))
        if data is None:
            raise _Invalid(where, f"no blob {spec['blobId']}")
        if maintype == "text":
            charset = spec.get("charset") or "utf-8"
            try:
                text = data.decode(charset)
            except (LookupError, UnicodeDecodeError):
                part.set_content(data, maintype, subtype)
            else:
                part.set_content(text, subtype=subtype, charset="utf-8")
        elif maintype == "multipart":
            raise _Invalid(where, "a blob is not a multipart")
        else:
            part.set_content(data, maintype, subtype)
    else:
        raise _Invalid(where, "a body part needs a partId or a blobId")
    if disposition is not None or name is not None:
        kind = disposition if isinstance(disposition, str) and disposition else "attachment"
        del part["Content-Disposition"]
        if isinstance(name, str) and name:
            part.add_header("Content-Disposition", kind, filename=name)
            part.set_param("name", name)
        else:
            part.add_header("Content-Disposition", kind)
    if isinstance(cid, str) and cid:
        part["Content-ID"] = f"<{cid}>"
    for key, header in (("language", "Content-Language"), ("location", "Content-Location")):
        value = spec.get(key)
        if isinstance(value, list):
            part[header] = ", ".join(str(v) for v in value)
        elif isinstance(value, str):
            part[header] = value
    return part


def _multipart(subtype: str, parts: list[email.message.MIMEPart]) -> email.message.MIMEPart:
    container = email.message.MIMEPart(policy=_POLICY)
    container["Content-Type"] = f"multipart/{subtype}"
    for part in parts:
        container.attach(part)
    return container


async def _structure(
    context: CallContext, spec: Any, values: dict[str, Any], depth: int = 0
) -> email.message.MIMEPart:
    if not isinstance(spec, dict) or depth > 20:
        raise _Invalid("bodyStructure", "a body part must be an object")
    mime_type = spec.get("type")
    if isinstance(mime_type, str) and mime_type.lower().startswith("multipart/"):
        sub = spec.get("subParts")
        if not isinstance(sub, list) or not sub:
            raise _Invalid("bodyStructure", "a multipart needs subParts")
        return _multipart(
            mime_type.split("/", 1)[1].lower(), [await _structure(context, s, values, depth + 1) for s in sub]
        )
    return await _leaf(context, spec, values, "bodyStructure")


async def _body(context: CallContext, props: dict[str, Any]) -> email.message.MIMEPart:
    values = props.get("bodyValues") or {}
    if not isinstance(values, dict):
        raise _Invalid("bodyValues", "bodyValues must map part ids to EmailBodyValue objects")
    if props.get("bodyStructure") is not None:
        if any(props.get(p) is not None for p in ("textBody", "htmlBody", "attachments")):
            raise _Invalid("bodyStructure", "bodyStructure or textBody/htmlBody/attachments, not both")
        return await _structure(context, props["bodyStructure"], values)
    parts: list[email.message.MIMEPart] = []
    for prop in ("textBody", "htmlBody"):
        value = props.get(prop)
        if value is None:
            continue
        if not isinstance(value, list) or len(value) != 1:
            raise _Invalid(prop, f"{prop} must hold one part")
        wanted = "text/plain" if prop == "textBody" else "text/html"
        spec = dict(value[0]) if isinstance(value[0], dict) else value[0]
        if isinstance(spec, dict):
            spec.setdefault("type", wanted)
            if spec["type"] != wanted:
                raise _Invalid(prop, f"{prop} is {wanted}")
        parts.append(await _leaf(context, spec, values, prop))
    if not parts:
        text = email.message.MIMEPart(policy=_POLICY)
        text.set_content("", charset="utf-8")
        parts.append(text)
    root = parts[0] if len(parts) == 1 else _multipart("alternative", parts)
    attachments = props.get("attachments") or []
    if not isinstance(attachments, list):
        raise _Invalid("attachments", "attachments must be a list of parts")
    if attachments:
        extra = [await _leaf(context, spec, values, "attachments") for spec in attachments]
        root = _multipart("mixed", [root, *extra])
    return root


async def build_message(context: CallContext, props: dict[str, Any]) -> bytes:
    """
    The octets of the message of an ``Email/set`` create; :class:`_Invalid`
    on bad input, including what the standard library's message refuses
    as it is built (a line end in a header value, a second ``Subject``
    through ``header:Subject``, a value of another JSON type).
    """
    try:
        message = email.message.EmailMessage(policy=_POLICY)
        _set_headers(message, props)
        root = await _body(context, props)
        for name, value in root.items():
            message[name] = value
        message.set_payload(root.get_payload())
        return message.as_bytes(policy=_POLICY)
    except (ValueError, TypeError, email.errors.MessageError) as e:
        raise _Invalid("headers", f"cannot be written: {e}") from None


async def _store(
    context: CallContext,
    view: MailView,
    data: bytes,
    box_ids: list[str],
    flags: list[str],
    when: float | None,
) -> dict[str, Any]:
    """Append *data* to the first mailbox and copy it to the others; the created Email's server-set properties."""
    first = view.boxes[box_ids[0]].opened
    uid = await first.append(MessageSource.from_bytes(data), flags, when)
    for box_id in box_ids[1:]:
        await first.copy([uid], view.boxes[box_id].opened)
    (info,) = await first.list_messages([uid])
    view = await mail_view(context.store)
    eid = info.email_id
    assert eid is not None  # JMAP serves stores whose mailboxes provide IObjectIds
    threads = await view.thread_ids([eid])
    return {"id": eid, "blobId": eid, "threadId": threads.get(eid), "size": info.size}


def _received_at(props: dict[str, Any]) -> float | None:
    """A create's or import's ``receivedAt`` as epoch seconds (``None``: now)."""
    if props.get("receivedAt") is None:
        return None
    when = bodies.parse_utc_date(props["receivedAt"])
    if when is None:
        raise _Invalid("receivedAt", "not a UTCDate")
    return when


async def create_email(context: CallContext, view: MailView, props: dict[str, Any]) -> dict[str, Any]:
    """One ``Email/set`` create: the created Email's id, blobId, threadId and size, or a SetError."""
    unknown = sorted(p for p in props if p not in _CREATE_PROPS and not p.startswith("header:"))
    if unknown:
        return set_error("invalidProperties", "cannot be set on a new Email", properties=unknown)
    try:
        box_ids = _mailboxes(context, view, props.get("mailboxIds"))
        flags = _flags(props.get("keywords"))
        when = _received_at(props)
        data = await build_message(context, props)
    except _Invalid as e:
        return set_error("invalidProperties", e.description, properties=[e.prop])
    if len(data) > context.limits.max_size_upload:
        return set_error("tooLarge", f"the message is larger than {context.limits.max_size_upload} octets")
    try:
        return await _store(context, view, data, box_ids, flags, when)
    except NoSuchMailbox:
        return set_error("invalidProperties", "a mailbox went away", properties=["mailboxIds"])


async def import_email(context: CallContext, view: MailView, props: Any) -> dict[str, Any]:
    """One ``Email/import`` (section 4.8): the Email's id, blobId, threadId and size, or a SetError."""
    if not isinstance(props, dict):
        return set_error("invalidProperties", "an EmailImport object is needed")
    unknown = sorted(set(props) - {"blobId", "mailboxIds", "keywords", "receivedAt"})
    if unknown:
        return set_error("invalidProperties", "not an EmailImport property", properties=unknown)
    try:
        box_ids = _mailboxes(context, view, props.get("mailboxIds"))
        flags = _flags(props.get("keywords"))
        when = _received_at(props)
    except _Invalid as e:
        return set_error("invalidProperties", e.description, properties=[e.prop])
    data = await blob_bytes(context, resolve_id(context, props.get("blobId")))
    if data is None:
        return set_error("blobNotFound", "no such blob", notFound=[props.get("blobId")])
    if b"\r\n" not in data and b"\n" in data:
        data = data.replace(b"\n", b"\r\n")
    try:
        return await _store(context, view, data, box_ids, flags, when)
    except NoSuchMailbox:
        return set_error("invalidProperties", "a mailbox went away", properties=["mailboxIds"])
