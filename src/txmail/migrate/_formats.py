"""
The formats of the migration tools, as pure functions: no I/O, no Twisted.

* Modified UTF-7 mailbox names (RFC 3501 section 5.1.3), as IMAP servers
  send them and as Dovecot writes Maildir++ folder names on disk (unless
  its ``UTF8`` option is set).
* Dovecot's Maildir++ folder directories (``.Archive.2024`` for
  ``Archive/2024``; ``.`` and ``%`` inside a name written ``%2E`` and
  ``%25``, as txmail's own Maildir store writes them) and its
  ``subscriptions`` file (version 1: one name a line; version 2: a
  ``V<TAB>2`` header line and a blank one, then names with their hierarchy
  components separated by TABs, Dovecot's ``subscription-file.c``).
* The flag headers of mbox files: ``Status:`` (``R`` read, ``O`` old) and
  ``X-Status:`` (``A`` answered, ``F`` flagged, ``T`` draft, ``D``
  deleted), as mutt, Pine and Dovecot write them; ``X-Keywords:`` (names
  separated by blanks or commas); Thunderbird's ``X-Mozilla-Status:`` (hex
  bits: 1 read, 2 replied, 4 marked, 8 deleted) and ``X-Mozilla-Keys:``.
* The dates of the mbox ``From`` line (``asctime`` form, UTC) and of IMAP's
  INTERNALDATE (RFC 3501 section 9, ``date-time``).
* IMAP response data as imaplib hands it over, parsed into nested lists
  (RFC 3501 section 9: atoms, quoted strings, literals, parenthesised
  lists).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import email.utils
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from txmail.model import (
    ANSWERED,
    DELETED,
    DELIMITER,
    DRAFT,
    FLAGGED,
    INBOX,
    SEEN,
    SpecialUse,
    normalize_flags,
    normalize_mailbox_name,
)

__all__ = [
    "DEFAULT_ROLES",
    "FLAG_HEADERS",
    "decode_mutf7",
    "dir_name_for",
    "encode_mutf7",
    "flag_headers",
    "flags_from_headers",
    "folder_for_dir_name",
    "format_from_line_date",
    "format_subscriptions",
    "keywords_only",
    "parse_from_line_date",
    "parse_imap",
    "parse_internaldate",
    "parse_subscriptions",
    "safe_flags",
    "unescape_percent",
]

# -- modified UTF-7 (RFC 3501 section 5.1.3) ----------------------------------


def encode_mutf7(text: str) -> str:
    """*text* in modified UTF-7: printable ASCII as itself (``&`` as ``&-``), the rest base64 of UTF-16BE."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in text:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(text: str) -> str | None:
    """
    *text* decoded from modified UTF-7, or ``None`` when it is not valid
    modified UTF-7: a character outside printable ASCII, a shift sequence
    without its ``-``, bad base64, leftover bits, an odd number of octets, a
    lone surrogate, or printable ASCII encoded in base64 (which Dovecot
    refuses too).
    """
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            return None
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = text.find("-", i + 1)
        if end < 0:
            return None
        chunk = text[i + 1 : end]
        i = end + 1
        if not chunk:
            out.append("&")
            continue
        decoded = _decode_chunk(chunk)
        if decoded is None:
            return None
        out.append(decoded)
    return "".join(out)


def _decode_chunk(chunk: str) -> str | None:
    if not re.fullmatch(r"[A-Za-z0-9+,]+", chunk) or len(chunk) % 4 == 1:
        return None
    try:
        raw = base64.b64decode(chunk.replace(",", "/") + "=" * (-len(chunk) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) % 2 or base64.b64encode(raw).decode("ascii").rstrip("=") != chunk.replace(",", "/"):
        return None  # leftover bits that are not zero, or an odd octet
    try:
        decoded = raw.decode("utf-16-be")
    except UnicodeDecodeError:
        return None
    if any(0x20 <= ord(c) <= 0x7E for c in decoded):
        return None
    return decoded


# -- Dovecot's Maildir++ names --------------------------------------------------


def unescape_percent(part: str) -> str:
    """*part* with ``%2E`` and ``%25`` (either case) read as ``.`` and ``%``."""
    return re.sub(r"%(2[Ee5])", lambda m: chr(int(m.group(1), 16)), part)


def folder_for_dir_name(dir_name: str) -> tuple[str | None, bool]:
    """
    The mailbox name of a Maildir++ folder directory (``.Sent``,
    ``.Archive.2024``, ``.Entw&APw-rfe``) and whether its name was valid
    modified UTF-7.  A component that is not is taken as it is (Dovecot's
    ``UTF8`` option writes UTF-8 names; another program may have written
    anything).  ``None`` when the result is not a valid mailbox name.
    """
    if not dir_name.startswith(".") or dir_name in (".", ".."):
        return None, True
    parts = []
    valid = True
    for raw in dir_name[1:].split("."):
        decoded = decode_mutf7(raw)
        if decoded is None:
            valid = False
            decoded = raw
        part = unescape_percent(decoded)
        if not part or DELIMITER in part:
            return None, valid
        parts.append(part)
    try:
        name = normalize_mailbox_name(DELIMITER.join(parts))
    except ValueError:
        return None, valid
    return name, valid


def dir_name_for(name: str) -> str:
    """The Maildir++ directory of a mailbox other than INBOX, as Dovecot names it: ``.A.B``, modified UTF-7."""
    if name == INBOX:
        raise ValueError("INBOX is the Maildir's root")
    parts = [p.replace("%", "%25").replace(".", "%2E") for p in name.split(DELIMITER)]
    return "." + ".".join(encode_mutf7(p) for p in parts)


def _tab_unescape(text: str) -> str:
    mapping = {"1": "\x01", "t": "\t", "r": "\r", "n": "\n", "0": "\x00"}
    return re.sub(r"\x01(.)", lambda m: mapping.get(m.group(1), m.group(1)), text)


def _tab_escape(text: str) -> str:
    return text.replace("\x01", "\x011").replace("\t", "\x01t").replace("\r", "\x01r").replace("\n", "\x01n")


def parse_subscriptions(data: bytes, separator: str = ".") -> list[str]:
    """
    The mailbox names of a Dovecot ``subscriptions`` file (version 1 or 2),
    each component decoded from modified UTF-7 when it is valid, names that
    are not valid mailbox names left out.
    """
    text = data.decode("utf-8", "replace")
    version2 = text.startswith("V\t2\n\n")
    if version2:
        text = text[len("V\t2\n\n") :]
    names = []
    for line in text.split("\n"):
        if not line:
            continue
        if version2:
            parts = [_tab_unescape(p) for p in line.split("\t")]
        else:
            parts = line.split("/") if "/" in line else line.split(separator)
        decoded = [decode_mutf7(p) or p for p in parts]
        try:
            names.append(normalize_mailbox_name(DELIMITER.join(decoded)))
        except ValueError:
            continue
    return names


def format_subscriptions(names: Iterable[str]) -> bytes:
    """A version 2 ``subscriptions`` file of *names* (components in modified UTF-7, as Dovecot keeps them)."""
    lines = ["\t".join(_tab_escape(encode_mutf7(p)) for p in n.split(DELIMITER)) for n in names]
    return ("V\t2\n\n" + "".join(line + "\n" for line in lines)).encode("utf-8")


#: Names that have a special-use role in Dovecot's default configuration
#: (``15-mailboxes.conf``) and in common clients, for Maildir trees that
#: carry no record of roles.
DEFAULT_ROLES = {
    "Sent": SpecialUse.SENT,
    "Sent Messages": SpecialUse.SENT,
    "Sent Items": SpecialUse.SENT,
    "Drafts": SpecialUse.DRAFTS,
    "Trash": SpecialUse.TRASH,
    "Deleted Messages": SpecialUse.TRASH,
    "Deleted Items": SpecialUse.TRASH,
    "Junk": SpecialUse.JUNK,
    "Spam": SpecialUse.JUNK,
    "Archive": SpecialUse.ARCHIVE,
    "Archives": SpecialUse.ARCHIVE,
}


# -- flags ------------------------------------------------------------------


def safe_flags(flags: Iterable[str]) -> frozenset[str]:
    """
    *flags* as a store keeps them: system flags spelled canonically,
    ``\\Recent`` and unknown system flags dropped, and keywords that are
    not IMAP atoms left out rather than failing the whole message.
    """
    out: set[str] = set()
    for flag in flags:
        try:
            out |= normalize_flags([flag])
        except ValueError:
            continue
    return frozenset(out)


def keywords_only(flags: Iterable[str]) -> list[str]:
    """The keywords among *flags*, sorted."""
    return sorted(f for f in flags if not f.startswith("\\"))


#: The header fields that carry flags in mbox files: read, then removed from
#: the stored message.  ``X-UID``, ``X-IMAP`` and ``X-IMAPbase`` are Dovecot's
#: and UW-IMAP's bookkeeping, meaningless elsewhere.
FLAG_HEADERS = frozenset(
    {
        "status",
        "x-status",
        "x-keywords",
        "x-mozilla-status",
        "x-mozilla-status2",
        "x-mozilla-keys",
        "x-uid",
        "x-imap",
        "x-imapbase",
    }
)

_X_STATUS = {"A": ANSWERED, "F": FLAGGED, "T": DRAFT, "D": DELETED}
_MOZILLA_BITS = {0x1: SEEN, 0x2: ANSWERED, 0x4: FLAGGED, 0x8: DELETED}


def flags_from_headers(fields: Sequence[tuple[str, str]]) -> frozenset[str]:
    """The flags and keywords the flag fields of an mbox message give (*fields*: lower case name, value)."""
    flags: set[str] = set()
    for name, value in fields:
        value = value.strip()
        if name == "status" and "R" in value:
            flags.add(SEEN)
        elif name == "x-status":
            flags.update(_X_STATUS[c] for c in value if c in _X_STATUS)
        elif name in ("x-keywords", "x-mozilla-keys"):
            flags.update(w for w in re.split(r"[\s,]+", value) if w)
        elif name == "x-mozilla-status" and re.fullmatch(r"[0-9A-Fa-f]{1,8}", value):
            bits = int(value, 16)
            flags.update(flag for bit, flag in _MOZILLA_BITS.items() if bits & bit)
    return safe_flags(flags)


def flag_headers(flags: Iterable[str]) -> bytes:
    """The ``Status:``, ``X-Status:`` and ``X-Keywords:`` lines (LF ends) that record *flags* in an mbox."""
    flags = set(flags)
    lines = [b"Status: " + (b"RO" if SEEN in flags else b"O") + b"\n"]
    x_status = "".join(letter for letter, flag in sorted(_X_STATUS.items()) if flag in flags)
    if x_status:
        lines.append(f"X-Status: {x_status}\n".encode("ascii"))
    keywords = keywords_only(flags)
    if keywords:
        lines.append(("X-Keywords: " + " ".join(keywords) + "\n").encode("utf-8"))
    return b"".join(lines)


# -- dates ------------------------------------------------------------------

_MONTHS = {
    m: i
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), 1
    )
}
_FROM_DATE = re.compile(
    rb"(?:[A-Za-z]{3}),?\s+([A-Za-z]{3})\s+(\d{1,2})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?"
    rb"(?:\s+([A-Za-z]{1,5}|[+-]\d{4}))?\s+(\d{4})(?:\s+([+-]\d{4}))?"
)


def _offset(text: bytes | None) -> int:
    if text and text[:1] in (b"+", b"-") and text[1:].isdigit():
        sign = -1 if text[:1] == b"-" else 1
        return sign * (int(text[1:3]) * 3600 + int(text[3:5]) * 60)
    return 0


def parse_from_line_date(line: bytes) -> float | None:
    """
    The date of an mbox ``From`` line (``From sender Thu Jan  1 00:00:00 1970``,
    ``asctime`` form, UTC unless a numeric zone follows the time or the
    year), or ``None`` when it has none.
    """
    match = _FROM_DATE.search(line)
    if match is None:
        return None
    month = _MONTHS.get(match.group(1).decode("ascii").lower())
    if month is None:
        return None
    day, hour, minute = int(match.group(2)), int(match.group(3)), int(match.group(4))
    second = int(match.group(5) or 0)
    year = int(match.group(7))
    try:
        stamp = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    except (ValueError, OverflowError):
        return None
    if not (1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        return None
    return float(stamp - _offset(match.group(8) or match.group(6)))


def format_from_line_date(stamp: float) -> str:
    """*stamp* as the date of an mbox ``From`` line (``asctime`` form, UTC)."""
    return time.asctime(time.gmtime(int(stamp)))


def date_from_header(value: str) -> float | None:
    """A ``Date:`` field's value as epoch seconds, or ``None``."""
    try:
        parsed = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if parsed is None:
        return None
    try:
        return parsed.timestamp()
    except (OverflowError, OSError, ValueError):
        return None


_INTERNALDATE = re.compile(r"\s*(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-]\d{4})\s*")


def parse_internaldate(text: str) -> float | None:
    """An IMAP INTERNALDATE (``"17-Jul-1996 02:44:25 -0700"``) as epoch seconds, or ``None``."""
    match = _INTERNALDATE.fullmatch(text)
    if match is None:
        return None
    month = _MONTHS.get(match.group(2).lower())
    if month is None:
        return None
    day, year = int(match.group(1)), int(match.group(3))
    hour, minute, second = int(match.group(4)), int(match.group(5)), int(match.group(6))
    stamp = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    return float(stamp - _offset(match.group(7).encode("ascii")))


# -- IMAP response data -------------------------------------------------------

Item = bytes | None | list[Any]


def join_imaplib(parts: Iterable[Any]) -> list[bytes]:
    """
    imaplib's response data (bytes, and ``(prefix, literal)`` tuples) put
    back into whole responses, literals inline as on the wire: a new
    response starts with each piece that does not continue one (a piece
    after a literal starts with ``)`` or a blank).
    """
    out: list[bytes] = []
    for part in parts:
        if part is None:
            continue
        piece = part[0] + b"\r\n" + part[1] if isinstance(part, tuple) else part
        if out and piece[:1] in (b")", b" "):
            out[-1] += piece
        else:
            out.append(piece)
    return out


def parse_imap(data: bytes) -> list[Item]:
    """
    Parse IMAP response data into a list of items: ``bytes`` for atoms,
    quoted strings and literals, ``None`` for ``NIL``, lists for
    parenthesised lists.  An atom holding ``[...]`` (``BODY[HEADER]``)
    keeps its brackets' content, blanks and parentheses included.

    Raises:
        ValueError: the data does not parse.
    """
    items, _ = _parse_list(data, 0, top=True)
    return items


def _parse_list(data: bytes, pos: int, top: bool = False) -> tuple[list[Item], int]:
    items: list[Item] = []
    n = len(data)
    while pos < n:
        ch = data[pos : pos + 1]
        if ch in (b" ", b"\r", b"\n"):
            pos += 1
        elif ch == b"(":
            sub, pos = _parse_list(data, pos + 1)
            items.append(sub)
        elif ch == b")":
            if top:
                raise ValueError("unbalanced parenthesis")
            return items, pos + 1
        elif ch == b'"':
            value, pos = _parse_quoted(data, pos + 1)
            items.append(value)
        elif ch == b"{" or data.startswith(b"~{", pos):
            value, pos = _parse_literal(data, pos + (1 if ch == b"~" else 0))
            items.append(value)
        else:
            atom, pos = _parse_atom(data, pos)
            items.append(None if atom.upper() == b"NIL" else atom)
    if not top:
        raise ValueError("unterminated list")
    return items, pos


def _parse_quoted(data: bytes, pos: int) -> tuple[bytes, int]:
    out = bytearray()
    while pos < len(data):
        ch = data[pos]
        if ch == 0x5C and pos + 1 < len(data):
            out.append(data[pos + 1])
            pos += 2
        elif ch == 0x22:
            return bytes(out), pos + 1
        else:
            out.append(ch)
            pos += 1
    raise ValueError("unterminated quoted string")


def _parse_literal(data: bytes, pos: int) -> tuple[bytes, int]:
    end = data.find(b"}", pos)
    if end < 0:
        raise ValueError("bad literal")
    size_text = data[pos + 1 : end].rstrip(b"+")
    if not size_text.isdigit():
        raise ValueError("bad literal size")
    size = int(size_text)
    start = end + 1
    if data.startswith(b"\r\n", start):
        start += 2
    if start + size > len(data):
        raise ValueError("short literal")
    return data[start : start + size], start + size


def _parse_atom(data: bytes, pos: int) -> tuple[bytes, int]:
    start = pos
    depth = 0
    while pos < len(data):
        ch = data[pos : pos + 1]
        if ch == b"[":
            depth += 1
        elif ch == b"]" and depth:
            depth -= 1
        elif depth == 0 and ch in (b" ", b"(", b")", b"\r", b"\n"):
            break
        pos += 1
    return data[start:pos], pos


def pairs(items: list[Item]) -> dict[str, Item]:
    """A FETCH response's list of ``name value`` items as a dict by upper case name."""
    out: dict[str, Item] = {}
    for i in range(0, len(items) - 1, 2):
        key = items[i]
        if isinstance(key, bytes):
            out[key.decode("latin-1").upper()] = items[i + 1]
    return out
