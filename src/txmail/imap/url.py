"""
IMAP URLs (RFC 5092) naming a message or a part of one, as CATENATE (RFC
4469) and URLAUTH (RFC 4467) take them.

:func:`parse_url` reads an absolute URL (``imap://user;AUTH=*@host:port/
mailbox;UIDVALIDITY=n/;UID=n/;SECTION=s/;PARTIAL=o.l``), a network-path
reference (``//host/...``), an absolute-path reference (``/mailbox...``)
or a relative one (``;UID=n...`` or ``mailbox/;UID=n``), resolved against
a base mailbox (RFC 3986 section 5.2: the selected mailbox, as Dovecot
does for CATENATE) into an :class:`IMAPURL`.  Anything else raises
:class:`URLError`.

* Keywords (``;UID=``, ``;SECTION=``...) are case-insensitive, and appear
  in the order of RFC 5092's grammar (``imessagepart``): UIDVALIDITY right
  after the mailbox, then ``/;UID=``, ``/;SECTION=``, ``/;PARTIAL=``, then
  ``;EXPIRE=`` and ``;URLAUTH=`` (RFC 4467 section 7).
* Mailbox names, users and sections are percent-decoded UTF-8 (RFC 5092
  section 3.4 and 8); ``INBOX`` is matched case-insensitively.
* A section must be a ``section-spec`` of FETCH (RFC 3501), parsed by
  :func:`txmail.imap.parser.section_spec`.
* Search URLs (``?search``) and message lists name no single message and
  are refused; so are dot segments (``.``, ``..``) and octets outside the
  URL grammar.
* The length of a URL is bounded by :data:`MAX_URL`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import datetime
import re
import urllib.parse
from dataclasses import dataclass

from txmail import mime
from txmail.imap.parser import Cursor, ParseError, section_spec
from txmail.imap.types import Section
from txmail.model import INBOX

__all__ = ["IMAPURL", "MAX_URL", "URLError", "parse_url", "response_text", "url_part"]

#: Longest URL accepted (Dovecot's command lines bound them likewise).
MAX_URL = 8192

# RFC 3986 unreserved / pct-encoded / sub-delims, ":", "@", "/", ";", "=",
# "&", "?", plus "[" "]" for an IPv6 host: the octets a URL may hold.
_URL_CHARS = re.compile(r"[A-Za-z0-9\-._~%!$&'()*+,;=:@/?\[\]]*\Z")
_NUMBER = re.compile(r"[0-9]{1,10}\Z")
_PARTIAL = re.compile(r"([0-9]{1,10})(?:\.([0-9]{1,10}))?\Z")
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,=]*)(?::([0-9]{0,5}))?\Z")
_PARAM = re.compile(r"([A-Za-z]+)=(.*)\Z", re.DOTALL)
# RFC 4467 section 7: access = ("submit+" enc-user) / ("user+" enc-user) / "authuser" / "anonymous"
_ACCESS = re.compile(r"(?:(submit|user)\+(.+)|(authuser)|(anonymous))\Z", re.IGNORECASE)
_VERIFIER = re.compile(r":([A-Za-z0-9\-.]+):([0-9A-Fa-f]{32,})\Z")
_MAX_NUMBER = 2**32 - 1


class URLError(ValueError):
    """The text is not an IMAP URL naming a message (or part) that txmail can resolve."""


@dataclass(frozen=True, slots=True)
class IMAPURL:
    """
    An IMAP URL naming a message or a part of one (RFC 5092 ``imessagepart``).

    Attributes:
        host: the server named (``None`` for a path reference); ``port`` likewise.
        user: the user whose mailbox it is (``enc-user``), or ``None``.
        mailbox: the mailbox name, decoded.
        uidvalidity: the ``;UIDVALIDITY=`` it requires, or ``None``.
        uid: the message's UID.
        section: the ``;SECTION=`` as a FETCH section, or ``None`` (the whole message).
        partial: ``(offset, length or None)`` of ``;PARTIAL=``, or ``None``.
        expire: the ``;EXPIRE=`` time (RFC 4467), timezone-aware, or ``None``.
        access: the ``;URLAUTH=`` access identifier (RFC 4467), or ``None``.
        mechanism: the URLAUTH mechanism (upper-cased), or ``None``.
        token: the URLAUTH verifier (hexadecimal, lower-cased), or ``None``.
        rump: the URL up to the verifier (``...;URLAUTH=access``) as written
            after resolution: what the URLAUTH verifier signs (RFC 4467 section 2.1).
    """

    host: str | None
    port: int | None
    user: str | None
    mailbox: str
    uidvalidity: int | None
    uid: int
    section: Section | None = None
    partial: tuple[int, int | None] | None = None
    expire: datetime.datetime | None = None
    access: str | None = None
    mechanism: str | None = None
    token: str | None = None
    rump: str = ""


def _decode(text: str, what: str) -> str:
    try:
        value = urllib.parse.unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise URLError(f"{what} is not UTF-8") from None
    if not value or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise URLError(f"bad {what}")
    return value


def _number(text: str, what: str, *, nonzero: bool = True) -> int:
    if not _NUMBER.match(text):
        raise URLError(f"bad {what}")
    value = int(text)
    if value > _MAX_NUMBER or (nonzero and value == 0):
        raise URLError(f"bad {what}")
    return value


def _section(text: str) -> Section:
    """enc-section: a FETCH ``section-spec`` (RFC 5092 section 3, RFC 3501 section 9)."""
    decoded = _decode(text, "section")
    try:
        c = Cursor.of(decoded.encode("utf-8"))
        section = section_spec(c)
        c.end()
    except ParseError:
        raise URLError("bad section") from None
    return section


def _expire(text: str) -> datetime.datetime:
    """RFC 4467 section 7: expire = ";EXPIRE=" date-time (RFC 3339), with a time zone."""
    value = _decode(text, "expiration")
    try:
        when = datetime.datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        raise URLError("bad expiration") from None
    if when.tzinfo is None or "T" not in value.upper():
        raise URLError("bad expiration")
    return when


def _split_authority(rest: str) -> tuple[str, str]:
    """``iserver`` and what follows it (``""`` or ``/...``)."""
    slash = rest.find("/")
    return (rest, "") if slash < 0 else (rest[:slash], rest[slash:])


def _server(authority: str) -> tuple[str | None, str, int | None]:
    """iserver = [iuserinfo "@"] host [":" port]; iuserinfo = enc-user [iauth] / [enc-user] iauth"""
    user: str | None = None
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        name, _, auth = userinfo.partition(";")
        if auth and not auth.upper().startswith("AUTH="):
            raise URLError("bad user information")
        if name:
            user = _decode(name, "user")
        elif not auth:
            raise URLError("bad user information")
    m = _HOST.match(hostport)
    if m is None or not m.group(1):
        raise URLError("bad host")
    port = None
    if m.group(2):
        port = int(m.group(2))
        if not 0 < port < 65536:
            raise URLError("bad port")
    return user, _decode(m.group(1), "host").lower(), port


def _resolve(path: str, base: str | None) -> str:
    """
    A relative reference against the base mailbox (RFC 3986 section 5.2):
    ``;UID=...`` stays in the base mailbox, ``name/;UID=...`` replaces the
    base's last hierarchy level.  The result is an absolute path.
    """
    if base is None:
        raise URLError("a relative URL needs a selected mailbox")
    encoded = urllib.parse.quote(base, safe="/&=:@!$'()*+,-._~")
    if path.startswith(";"):
        if not path.upper().startswith(";UID="):
            raise URLError("a relative section needs a base message")
        return "/" + encoded + "/" + path
    return "/" + encoded[: encoded.rfind("/") + 1] + path


def parse_url(text: str, base_mailbox: str | None = None) -> IMAPURL:
    """
    Parse *text*, an IMAP URL or a reference relative to *base_mailbox*
    (the selected mailbox), naming one message or a part of one.

    Raises:
        URLError: anything else.
    """
    if len(text) > MAX_URL or not _URL_CHARS.match(text):
        raise URLError("bad URL")
    host: str | None = None
    port: int | None = None
    user: str | None = None
    prefix = ""
    if text[:7].lower() == "imap://":
        authority, path = _split_authority(text[7:])
        user, host, port = _server(authority)
        prefix = text[: 7 + len(authority)]
    elif text.startswith("//"):
        authority, path = _split_authority(text[2:])
        user, host, port = _server(authority)
        prefix = text[: 2 + len(authority)]
    elif text.startswith("/"):
        path = text
    elif ":" in text.split("/", 1)[0].split(";", 1)[0]:
        raise URLError("not an IMAP URL")  # another scheme
    else:
        path = _resolve(text, base_mailbox)
    if not path.startswith("/") or "?" in path:
        raise URLError("not a message URL")
    return _message_part(path[1:], host, port, user, prefix + path)


def _message_part(path: str, host: str | None, port: int | None, user: str | None, whole: str) -> IMAPURL:
    """
    imessagepart = imailbox-ref iuid [isection] [ipartial] [iurlauth]
    imailbox-ref = enc-mailbox [uidvalidity]
    """
    head, semi, params = path.partition(";")
    if not semi:
        raise URLError("no UID")
    slash_before = head.endswith("/")
    name = head[:-1] if slash_before else head
    if not name or any(seg in (".", "..") for seg in name.split("/")):
        raise URLError("bad mailbox")
    mailbox = _decode(name, "mailbox")
    if mailbox.upper() == INBOX:
        mailbox = INBOX
    fields: dict[str, str] = {}
    order = ("UIDVALIDITY", "UID", "SECTION", "PARTIAL", "EXPIRE", "URLAUTH")
    slashed = {"UID", "SECTION", "PARTIAL"}
    last = -1
    items = params.split(";")
    rump_end = len(whole)
    for i, item in enumerate(items):
        after_slash = slash_before
        slash_before = item.endswith("/") and i + 1 < len(items)
        if slash_before:
            item = item[:-1]
        m = _PARAM.match(item)
        if m is None:
            raise URLError("bad parameter")
        key = m.group(1).upper()
        if key not in order or order.index(key) <= last or after_slash != (key in slashed):
            raise URLError("bad parameter")
        last = order.index(key)
        value = m.group(2)
        if key == "URLAUTH":
            verifier = _VERIFIER.search(value)
            if verifier is not None:
                rump_end = len(whole) - len(verifier.group(0))
                fields["MECHANISM"] = verifier.group(1).upper()
                fields["TOKEN"] = verifier.group(2).lower()
                value = value[: verifier.start()]
        fields[key] = value
    if "UID" not in fields:
        raise URLError("no UID")
    partial = None
    if "PARTIAL" in fields:
        pm = _PARTIAL.match(fields["PARTIAL"])
        if pm is None:
            raise URLError("bad partial")
        offset = _number(pm.group(1), "partial", nonzero=False)
        length = _number(pm.group(2), "partial") if pm.group(2) is not None else None
        partial = (offset, length)
    access = None
    if "URLAUTH" in fields:
        am = _ACCESS.match(fields["URLAUTH"])
        if am is None:
            raise URLError("bad access identifier")
        if am.group(1):
            access = am.group(1).lower() + "+" + _decode(am.group(2), "user")
        else:
            access = (am.group(3) or am.group(4)).lower()
    return IMAPURL(
        host=host,
        port=port,
        user=user,
        mailbox=mailbox,
        uidvalidity=_number(fields["UIDVALIDITY"], "UIDVALIDITY") if "UIDVALIDITY" in fields else None,
        uid=_number(fields["UID"], "UID"),
        section=_section(fields["SECTION"]) if "SECTION" in fields else None,
        partial=partial,
        expire=_expire(fields["EXPIRE"]) if "EXPIRE" in fields else None,
        access=access,
        mechanism=fields.get("MECHANISM"),
        token=fields.get("TOKEN"),
        rump=whole[:rump_end],
    )


def response_text(url: str, limit: int = 200) -> str:
    """
    *url* as the ``url-resp-text`` of a ``BADURL`` response code (RFC 4469
    section 5, erratum 2002): TEXT-CHARs except ``]``, at most *limit* of
    them (replies never echo much input); ``-`` when nothing is left.
    """
    kept = "".join(ch for ch in url if 0x20 < ord(ch) < 0x7F and ch != "]")[:limit]
    return kept or "-"


def url_part(message: mime.ParsedMessage, url: IMAPURL) -> bytes:
    """
    What *url* names of *message*: ``BODY[section]<partial>`` as FETCH gives
    it (RFC 5092 ``isection``, ``ipartial``; a partial beyond the end is
    empty).  ``URLError`` when the section names a body part that does not exist.
    """
    data = message.data
    section = url.section
    if section is not None:
        if section.part and not _part_exists(message, section):
            raise URLError("no such body part")
        data = message.section(_section_text(section))
    if url.partial is not None:
        offset, length = url.partial
        data = data[offset:] if length is None else data[offset : offset + length]
    return bytes(data)


def _section_text(section: Section) -> str:
    """*section* as :func:`txmail.mime.extract_section` reads it (header names quoted)."""
    head = str(Section(section.part, section.text))
    if section.fields:
        names = " ".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in section.fields)
        head += " (" + names + ")"
    return head


def _part_exists(message: mime.ParsedMessage, section: Section) -> bool:
    """
    Whether the part numbers of *section* name a body part: one that
    exists has a ``MIME`` header or a body (a missing one gives neither).
    """
    parts = ".".join(str(p) for p in section.part)
    return bool(message.section(parts + ".MIME") or message.section(parts))
