"""
What RFC 8621 section 4.1 makes of a message's octets: the parsed forms of
header fields (section 4.1.2), the ``EmailBodyPart`` tree (section 4.1.4)
with ``textBody``, ``htmlBody`` and ``attachments``, and body values.

Part ids are the IMAP section numbers (RFC 3501 section 6.4.5: ``1``,
``1.2``, ...), a part's blob id is the Email's id, ``_`` and its part id
with ``-`` for ``.`` (a JMAP ``Id`` holds no dots); an encapsulated message
(``message/rfc822``) is one part, not looked into.

Pure functions on bytes and :class:`txmail.model.MessageMetadata`: no I/O,
no Twisted.  Nothing here raises on bad input.
"""

from __future__ import annotations

import datetime
import email.utils
import re
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from txmail import mime
from txmail.imap.search import _decode_words
from txmail.imap.thread import message_ids

__all__ = [
    "ADDRESS_FIELDS",
    "FORMS",
    "Part",
    "body_value",
    "classify",
    "decode_raw",
    "header_value",
    "parse_message",
    "part_blob_id",
    "split_blob_id",
    "structure_parts",
    "utc_date",
]

_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")

#: The parsed forms of section 4.1.2 and the fields each is allowed for
#: (``None``: any field; a field not named here takes every form).
FORMS = ("Raw", "Text", "Addresses", "GroupedAddresses", "MessageIds", "Date", "URLs")
ADDRESS_FIELDS = frozenset(
    f.lower()
    for f in (
        "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Resent-From", "Resent-Sender",
        "Resent-Reply-To", "Resent-To", "Resent-Cc", "Resent-Bcc",
    )
)  # fmt: skip
_ALLOWED: dict[str, frozenset[str]] = {}
for _name in ("subject", "comments", "keywords", "list-id"):
    _ALLOWED[_name] = frozenset({"Raw", "Text"})
for _name in ADDRESS_FIELDS:
    _ALLOWED[_name] = frozenset({"Raw", "Addresses", "GroupedAddresses"})
for _name in ("date", "resent-date"):
    _ALLOWED[_name] = frozenset({"Raw", "Date"})
for _name in ("message-id", "in-reply-to", "references", "resent-message-id"):
    _ALLOWED[_name] = frozenset({"Raw", "MessageIds"})
for _name in ("list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive"):
    _ALLOWED[_name] = frozenset({"Raw", "URLs"})


def form_allowed(name: str, form: str) -> bool:
    """Whether the parsed *form* may be asked of field *name* (RFC 8621 section 4.1.2)."""
    allowed = _ALLOWED.get(name.lower())
    return form in FORMS and (allowed is None or form in allowed)


def decode_raw(value: str) -> str:
    """
    A raw header value (latin-1 decoded octets) as JMAP's ``asRaw``
    (section 4.1.2.1): without the field's final line end, the octets as
    UTF-8, bad ones replaced.
    """
    if value.endswith("\n"):
        value = value[:-2] if value.endswith("\r\n") else value[:-1]
    try:
        return value.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value


def _unfold(value: str) -> str:
    return _FOLD_RE.sub("", value).strip(" \t\r\n")


def as_text(value: str) -> str:
    """``asText`` (section 4.1.2.2): unfolded, encoded-words decoded, white space trimmed."""
    return _decode_words(_unfold(decode_raw(value))).strip()


def _address(entry: tuple[Any, ...]) -> dict[str, Any]:
    name, _adl, mailbox, host = entry
    text = _decode_words(decode_raw(name)).strip() if name else None
    address = mailbox if not host else f"{mailbox}@{host}"
    return {"name": text or None, "email": decode_raw(address or "")}


def as_grouped_addresses(value: str) -> list[dict[str, Any]]:
    """``asGroupedAddresses`` (section 4.1.2.4): consecutive addresses outside a group share a ``null`` group."""
    entries = mime._parse_addresses(mime._unfold(value)) or ()
    groups: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    in_group = False
    for entry in entries:
        if entry[3] is None and entry[0] is None and entry[1] is None:
            if entry[2] is not None:  # group start
                current = {"name": _decode_words(decode_raw(entry[2])).strip() or None, "addresses": []}
                groups.append(current)
                in_group = True
            else:  # group end
                current, in_group = None, False
            continue
        if current is None or (not in_group and current["name"] is not None):
            current = {"name": None, "addresses": []}
            groups.append(current)
        current["addresses"].append(_address(entry))
    return groups


def as_addresses(value: str) -> list[dict[str, Any]]:
    """``asAddresses`` (section 4.1.2.3): every address, groups flattened."""
    return [a for g in as_grouped_addresses(value) for a in g["addresses"]]


def as_message_ids(value: str) -> list[str] | None:
    """``asMessageIds`` (section 4.1.2.5): the ids without angle brackets, ``null`` when there are none."""
    ids = message_ids(value)
    return [decode_raw(i) for i in ids] or None


def _parse_date(value: str) -> datetime.datetime | None:
    try:
        parsed = email.utils.parsedate_to_datetime(_unfold(value))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


def as_date(value: str) -> str | None:
    """``asDate`` (section 4.1.2.6): RFC 3339 with the field's offset, ``null`` when it is not a date."""
    parsed = _parse_date(value)
    if parsed is None:
        return None
    text = parsed.replace(microsecond=0).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def sent_timestamp(value: str | None) -> float | None:
    """The epoch seconds of a ``Date:`` value, or ``None``."""
    if value is None:
        return None
    parsed = _parse_date(value)
    return None if parsed is None else parsed.timestamp()


def as_urls(value: str) -> list[str] | None:
    """``asURLs`` (section 4.1.2.7): the URLs in angle brackets, ``null`` when there are none."""
    urls = re.findall(r"<([^>]*)>", _unfold(decode_raw(value)))
    return [re.sub(r"\s+", "", u) for u in urls] or None


_PARSERS = {
    "Raw": decode_raw,
    "Text": as_text,
    "Addresses": as_addresses,
    "GroupedAddresses": as_grouped_addresses,
    "MessageIds": as_message_ids,
    "Date": as_date,
    "URLs": as_urls,
}


def header_value(fields: Iterable[tuple[str, str]], name: str, form: str, all: bool) -> Any:
    """
    A ``header:{name}[:as{form}][:all]`` property (section 4.1.3): the last
    field of that name (case-insensitive) in *form*, or ``null``; with *all*
    every one in order (``[]`` when there is none).
    """
    wanted = name.lower()
    parse = _PARSERS[form]
    values = [v for n, v in fields if n.strip(" \t").lower() == wanted]
    if all:
        return [parse(v) for v in values]
    return parse(values[-1]) if values else None


def utc_date(timestamp: float) -> str:
    """A ``UTCDate`` (RFC 8620 section 1.4): ``2014-10-30T06:12:00Z``."""
    # Within what a UTCDate can say (years 1970 to 9999): a file's time or a
    # client's receivedAt outside it is shown at the nearest end.
    seconds = min(max(timestamp, 0), _LAST_UTC_DATE) if timestamp == timestamp else 0  # NaN: 0
    when = datetime.datetime.fromtimestamp(int(seconds), datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


#: 9999-12-31T23:59:59Z.
_LAST_UTC_DATE = 253_402_300_799


def parse_utc_date(value: Any) -> float | None:
    """The epoch seconds of a ``UTCDate``/``Date`` string, or ``None`` when it is not one."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


# -- body parts (section 4.1.4) ------------------------------------------------------------


def part_blob_id(email_id: str, part_id: str) -> str:
    """The blob id of part *part_id* of an Email."""
    return f"{email_id}_{part_id.replace('.', '-')}"


def split_blob_id(blob_id: str) -> tuple[str, str | None]:
    """``(email id, part id or None)`` of a blob id this module gave out (a whole message's is its Email id)."""
    email_id, sep, part = blob_id.partition("_")
    return email_id, (part.replace("-", ".") if sep else None)


def _param(params: tuple[str, ...] | None, name: str) -> str | None:
    """A MIME parameter (RFC 2045; RFC 2231 encoded values decoded), by upper case name."""
    if not params:
        return None
    pairs = dict(zip(params[0::2], params[1::2], strict=False))
    if name + "*" in pairs:
        charset, _, rest = pairs[name + "*"].partition("'")
        _lang, _, encoded = rest.partition("'")
        return mime.decode_charset(urllib.parse.unquote_to_bytes(encoded), charset or "utf-8")
    value = pairs.get(name)
    if value is None:
        return None
    return _decode_words(decode_raw(mime._unquote(value)))


@dataclass(slots=True, eq=False)
class Part:
    """One ``EmailBodyPart``: its properties, and where its body is in the message."""

    part_id: str | None
    type: str
    fields: tuple[tuple[str, str], ...]
    charset: str | None = None
    disposition: str | None = None
    name: str | None = None
    cid: str | None = None
    language: list[str] | None = None
    location: str | None = None
    encoding: str = "7BIT"
    start: int = 0
    end: int = 0
    sub_parts: list[Part] = field(default_factory=list)

    def content(self, message: bytes) -> bytes:
        """The body, its transfer encoding undone."""
        return mime._decode_transfer(bytes(message[self.start : self.end]), self.encoding)

    def to_json(self, email_id: str, message: bytes, wanted: Iterable[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for prop in wanted:
            if prop == "partId":
                out[prop] = self.part_id
            elif prop == "blobId":
                out[prop] = None if self.part_id is None else part_blob_id(email_id, self.part_id)
            elif prop == "size":
                out[prop] = 0 if self.part_id is None else len(self.content(message))
            elif prop == "headers":
                out[prop] = [{"name": n, "value": decode_raw(v)} for n, v in self.fields]
            elif prop == "subParts":
                if self.part_id is None:
                    out[prop] = [p.to_json(email_id, message, wanted) for p in self.sub_parts]
            elif prop.startswith("header:"):
                out[prop] = header_property(self.fields, prop)
            else:
                out[prop] = getattr(self, prop)
        if self.part_id is None and "subParts" not in out:
            out["subParts"] = [p.to_json(email_id, message, wanted) for p in self.sub_parts]
        return out

    def leaves(self) -> Iterable[Part]:
        if self.part_id is not None:
            yield self
        for sub in self.sub_parts:
            yield from sub.leaves()


def header_property(fields: Iterable[tuple[str, str]], prop: str) -> Any:
    """The value of a ``header:...`` property already checked by :func:`parse_header_property`."""
    name, form, all_ = parse_header_property(prop) or ("", "Raw", False)
    return header_value(fields, name, form, all_)


def parse_header_property(prop: str) -> tuple[str, str, bool] | None:
    """``(field name, form, all)`` of ``header:Name[:asForm][:all]``, ``None`` when malformed or not allowed."""
    pieces = prop.split(":")
    if len(pieces) < 2 or pieces[0] != "header" or not pieces[1] or len(pieces) > 4:
        return None
    name = pieces[1]
    if not re.fullmatch(r"[\x21-\x39\x3b-\x7e]+", name):
        return None
    rest = pieces[2:]
    all_ = False
    if rest and rest[-1] == "all":
        all_ = True
        rest = rest[:-1]
    form = "Raw"
    if rest:
        if len(rest) != 1 or not rest[0].startswith("as"):
            return None
        form = rest[0][2:]
    if not form_allowed(name, form):
        return None
    return name, form, all_


def _part(node: Any, part_id: str | None) -> Part:
    typ, sub, params = node.ctype
    mime_type = f"{typ}/{sub}".lower()
    disposition = mime._disposition(node.fields)
    fields = node.fields
    cid = mime._field(fields, "content-id")
    location = mime._field(fields, "content-location")
    language = mime._language(fields)
    name = (_param(disposition[1], "FILENAME") if disposition else None) or _param(params, "NAME")
    charset = _param(params, "CHARSET")
    if charset is None and typ == "TEXT":
        charset = "us-ascii"
    return Part(
        part_id=part_id,
        type=mime_type,
        fields=tuple(fields),
        charset=charset,
        disposition=disposition[0].lower() if disposition else None,
        name=name,
        cid=mime._unfold(cid).strip("<>") if cid else None,
        language=list(language) if language else None,
        location=mime._unfold(location) if location else None,
        encoding=mime._encoding(fields),
        start=node.body_start,
        end=node.end,
    )


def parse_message(message: bytes) -> tuple[Part, tuple[tuple[str, str], ...]]:
    """The ``bodyStructure`` of *message* and its top-level header fields."""
    root = mime._parse(message)

    def build(node: Any, part_id: str) -> Part:
        if node.is_multipart:
            part = _part(node, None)
            part.sub_parts = [
                build(child, f"{part_id}.{i}" if part_id else str(i))
                for i, child in enumerate(node.children, 1)
            ]
            return part
        return _part(node, part_id or "1")

    top = build(root, "")
    # The top-level part's header fields are the message's; section 4.1.4
    # gives the body structure the MIME fields only... and every field is
    # what clients expect of "headers": keep all.
    return top, tuple(root.fields)


def structure_parts(structure: tuple[Any, ...], part_id: str = "") -> Part:
    """
    A :class:`Part` tree (types, dispositions and names only) from an IMAP
    BODYSTRUCTURE (:attr:`txmail.model.MessageMetadata.body_structure`):
    enough for :func:`classify` without reading the message.
    """
    if structure and isinstance(structure[0], tuple):
        children = []
        i = 0
        while i < len(structure) and isinstance(structure[i], tuple):
            children.append(structure_parts(structure[i], f"{part_id}.{i + 1}" if part_id else str(i + 1)))
            i += 1
        subtype = structure[i] if i < len(structure) and isinstance(structure[i], str) else "MIXED"
        return Part(None, f"multipart/{subtype}".lower(), (), sub_parts=children)
    try:
        typ, sub, params = str(structure[0]), str(structure[1]), structure[2]
    except (IndexError, TypeError):
        return Part(part_id or "1", "text/plain", ())
    extra = 1 if typ == "TEXT" else 3 if (typ, sub) == ("MESSAGE", "RFC822") else 0
    disposition = structure[8 + extra] if len(structure) > 8 + extra else None
    if not isinstance(disposition, tuple) or not disposition or not isinstance(disposition[0], str):
        disposition = None
    name = (_param(disposition[1], "FILENAME") if disposition else None) or _param(params, "NAME")
    return Part(
        part_id or "1",
        f"{typ}/{sub}".lower(),
        (),
        disposition=disposition[0].lower() if disposition else None,
        name=name,
    )


def _inline_media(mime_type: str) -> bool:
    return mime_type.startswith(("image/", "audio/", "video/"))


def classify(root: Part) -> tuple[list[Part], list[Part], list[Part]]:
    """``(textBody, htmlBody, attachments)``: the algorithm of RFC 8621 section 4.1.4."""
    text_body: list[Part] = []
    html_body: list[Part] = []
    attachments: list[Part] = []

    def walk(
        parts: list[Part],
        multipart: str,
        in_alternative: bool,
        html: list[Part] | None,
        text: list[Part] | None,
    ) -> None:
        text_length = len(text) if text is not None else -1
        html_length = len(html) if html is not None else -1
        for i, part in enumerate(parts):
            is_multipart = part.part_id is None
            inline = (
                part.disposition != "attachment"
                and (part.type in ("text/plain", "text/html") or _inline_media(part.type))
                and (i == 0 or (multipart != "related" and (_inline_media(part.type) or not part.name)))
            )
            if is_multipart:
                sub = part.type.split("/", 1)[1]
                walk(part.sub_parts, sub, in_alternative or sub == "alternative", html, text)
            elif inline:
                if multipart == "alternative":
                    if part.type == "text/plain" and text is not None:
                        text.append(part)
                    elif part.type == "text/html" and html is not None:
                        html.append(part)
                    else:
                        attachments.append(part)
                    continue
                if in_alternative:
                    if part.type == "text/plain":
                        html = None
                    if part.type == "text/html":
                        text = None
                if text is not None:
                    text.append(part)
                if html is not None:
                    html.append(part)
                if (text is None or html is None) and _inline_media(part.type):
                    attachments.append(part)
            else:
                attachments.append(part)
        if multipart == "alternative" and text is not None and html is not None:
            if text_length == len(text) and html_length != len(html):
                text.extend(html[html_length:])
            if html_length == len(html) and text_length != len(text):
                html.extend(text[text_length:])

    walk([root], "mixed", False, html_body, text_body)
    return text_body, html_body, attachments


def body_value(part: Part, message: bytes, max_bytes: int) -> dict[str, Any]:
    """An ``EmailBodyValue`` (section 4.1.4): the text of *part*, at most *max_bytes* UTF-8 octets (0: all)."""
    raw = part.content(message)
    problem = False
    codec = (part.charset or "utf-8").strip().strip('"')
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        text = mime.decode_charset(raw, codec if codec.lower() not in ("us-ascii", "ascii") else "utf-8")
        problem = True
    except (LookupError, UnicodeError, ValueError, TypeError):  # no text encoding Python has
        text = raw.decode("utf-8", "replace")
        problem = True
    else:
        cleaned = mime.without_lone_surrogates(text)  # utf-7, unicode-escape
        problem = cleaned is not text  # the same object when nothing was replaced
        text = cleaned
    text = text.replace("\r\n", "\n")
    truncated = False
    if max_bytes and len(text.encode("utf-8")) > max_bytes:
        cut = text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
        text, truncated = cut, True
    return {"value": text, "isEncodingProblem": problem, "isTruncated": truncated}
