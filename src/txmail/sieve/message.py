"""
The message and envelope a Sieve script looks at.

:class:`SieveMessage` is built from the octets of a message
(:meth:`SieveMessage.from_bytes`) with the standard library's ``email``
package: header fields raw and decoded (RFC 2047 encoded-words, as RFC 5228
section 2.7.2 asks of the ``header`` test), the body for the ``body`` test
(RFC 5173 ``:raw``, ``:content`` and ``:text``) and the size.  Nothing here
raises on a broken message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email
import email.errors
import email.header
import email.message
import email.policy
import html
import re
from collections.abc import Iterator

from txmail.mime import decode_charset

__all__ = ["Envelope", "SieveMessage", "decode_field", "split_header_section", "unfold", "unfold_text"]


@dataclasses.dataclass(frozen=True)
class Envelope:
    """
    The SMTP envelope (RFC 5228 section 5.4): *mail_from* (``""`` for the
    null sender ``<>``), *rcpt_to* (this recipient), and optionally the
    original recipient (*orig_to*, RFC 3461 ORCPT) and the authenticated
    submitter (*auth*), the ``orig_to`` and ``auth`` parts of Pigeonhole.
    """

    mail_from: str
    rcpt_to: str
    orig_to: str | None = None
    auth: str | None = None

    def part(self, name: str) -> str | None:
        """The envelope part *name* (``from``, ``to``, ``orig_to``, ``auth``), ``None`` when unknown."""
        return {
            "from": self.mail_from,
            "to": self.rcpt_to,
            "orig_to": self.orig_to if self.orig_to is not None else self.rcpt_to,
            "auth": self.auth,
        }.get(name.lower())


_FIELD = re.compile(rb"([^\x00-\x20\x7f:]+)[ \t]*:")


def split_header_section(data: bytes) -> tuple[list[tuple[str, str]], bytes]:
    """
    The header fields of *data* as ``(name, raw value)`` (latin-1 text, the
    value with its folding and without the line end), and the body (after the
    blank line).  A line that is not a field and not a continuation ends the
    header section, as does the blank line.
    """
    fields: list[tuple[str, str]] = []
    pos, n = 0, len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        line_end = n if end == -1 else end + 1
        line = data[pos:line_end]
        stripped = line.rstrip(b"\r\n")
        if not stripped:
            return fields, data[line_end:]
        if stripped[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + "\r\n" + stripped.decode("latin-1"))
        else:
            m = _FIELD.match(stripped)
            if m is None:
                return fields, data[pos:]
            fields.append((m.group(1).decode("latin-1"), stripped[m.end() :].decode("latin-1").lstrip(" \t")))
        pos = line_end
    return fields, b""


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def unfold_text(raw: str) -> str:
    """A raw (latin-1) field value unfolded, as UTF-8 where it is (RFC 6532), encoded-words left as they are."""
    value = unfold(raw)
    with contextlib.suppress(UnicodeError):
        value = value.encode("latin-1").decode("utf-8")
    return value


def decode_field(raw: str) -> str:
    """A raw (latin-1) field value unfolded, as UTF-8 where it is, with RFC 2047 encoded-words decoded."""
    value = unfold_text(raw)
    if "=?" not in value:
        return value.strip()
    try:
        return str(email.header.make_header(email.header.decode_header(value))).strip()
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return value.strip()


class SieveMessage:
    """A message as the tests see it; build it with :meth:`from_bytes`."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        fields, body = split_header_section(data)
        #: ``(name, raw value)`` in message order.
        self.fields: list[tuple[str, str]] = fields
        self.body = body
        self._parsed: email.message.Message | None = None
        self._index: dict[str, list[str]] | None = None  # fields by lower-cased name

    @classmethod
    def from_bytes(cls, data: bytes) -> SieveMessage:
        return cls(bytes(data))

    @property
    def size(self) -> int:
        """The size in octets (RFC 5228 section 5.9)."""
        return len(self.data)

    def raw_headers(self, name: str) -> list[str]:
        """The raw values of the fields called *name*, in order."""
        index = self._index
        if index is None:
            index = {}
            for n, v in self.fields:
                index.setdefault(n.lower(), []).append(v)
            self._index = index
        return list(index.get(name.lower(), ()))

    def headers(self, name: str) -> list[str]:
        """The decoded values of the fields called *name*, in order."""
        return [decode_field(v) for v in self.raw_headers(name)]

    def _message(self) -> email.message.Message:
        if self._parsed is None:
            ctype = next(iter(self.headers("content-type")), "").strip().lower()
            if ctype.startswith(("multipart/", "message/")):
                self._parsed = email.message_from_bytes(self.data, policy=email.policy.compat32)
            else:
                # One part: what the body tests need of it (its type, charset
                # and transfer encoding, the body as the bytes parser keeps
                # it) without parsing the whole message again.
                part = email.message.Message(policy=email.policy.compat32)
                for name in ("content-type", "content-transfer-encoding"):
                    for value in self.raw_headers(name)[:1]:
                        part[name] = unfold(value)
                part.set_payload(self.body.decode("ascii", errors="surrogateescape"))
                self._parsed = part
        return self._parsed

    def body_raw(self) -> str:
        """RFC 5173 ``:raw``: the undecoded body."""
        return self.body.decode("utf-8", errors="replace")

    def body_parts(self, types: list[str]) -> Iterator[str]:
        """
        RFC 5173 ``:content``: the decoded bodies of the parts whose type
        matches one of *types* (``""`` any, ``"text"`` a top-level type,
        ``"text/html"`` a full type).  Multipart containers are not matched
        unless asked for by type ``multipart``: then their prologue and
        epilogue are.
        """
        wanted = [t.lower().strip() for t in types]
        for part in self._message().walk():
            ctype = part.get_content_type().lower()
            main = ctype.split("/", 1)[0]
            if not any(w == "" or w in (ctype, main) for w in wanted):
                continue
            if part.is_multipart():
                yield (part.preamble or "") + (part.epilogue or "")
            elif part.get_content_type() == "message/rfc822" and isinstance(part.get_payload(), list):
                continue
            else:
                yield _decoded(part)

    def body_text(self) -> Iterator[str]:
        """RFC 5173 ``:text``: the text of the text parts (HTML reduced to its text)."""
        for part in self._message().walk():
            if part.is_multipart() or part.get_content_maintype() != "text":
                continue
            text = _decoded(part)
            if part.get_content_subtype() == "html":
                text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]*>", " ", text)))
            yield text


def _decoded(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return decode_charset(payload, part.get_content_charset() or "utf-8")
