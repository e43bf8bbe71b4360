"""
Parse a stored message once: header fields, IMAP ENVELOPE and BODYSTRUCTURE,
and extract IMAP ``BODY[section]`` parts.

This module is pure: it imports nothing from Twisted and does no I/O other
than reading a file object it is handed.  Every entry point accepts any
octets (broken MIME, missing boundaries, 8-bit garbage, LF-only line ends,
no header/body separator) and gives an answer; none of them raises on bad
input.

Representation
==============

ENVELOPE and BODYSTRUCTURE are nested tuples of ``str | int | None |
tuple``, in exactly the order of the IMAP grammar (RFC 3501 section 9,
``envelope`` and ``body``), so that an IMAP serializer prints them
mechanically: ``str`` is a string (quoted or literal, the serializer
chooses), ``None`` is ``NIL``, ``int`` a number and ``tuple`` a
parenthesised list.

Every ``str`` in them (and in :attr:`MessageMetadata.headers`) is the raw
octets of the message decoded as **latin-1**: encode with ``latin-1`` to
get the original octets back.  Nothing is decoded further: RFC 2047
encoded-words stay as they are, which is what IMAP sends.

Envelope (RFC 3501 section 7.4.2)::

    (date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id)

* ``date``, ``subject``, ``in-reply-to``, ``message-id``: the first such
  header field's value, unfolded (RFC 5322 section 2.2.3) and stripped of
  surrounding white space; ``None`` when the field is absent, ``""`` when it
  is present but empty.
* the six address members: a tuple of addresses ``(name, adl, mailbox,
  host)`` or ``None`` when the field is absent or holds no address.
  ``sender`` and ``reply-to`` default to ``from`` (RFC 3501 section 7.4.2).
  A quoted display name is unquoted; a bare address followed by a comment
  (``user@host (Name)``) takes the comment as its name.  The local part
  keeps its quotes if it had them, so ``mailbox + "@" + host`` is a valid
  address.  An address without ``@`` gets host ``""`` (never ``None``,
  which would mark a group).  Group syntax (RFC 5322 section 3.4) becomes
  ``(None, None, group-name, None)`` ... members ...
  ``(None, None, None, None)``.

Body structure (RFC 3501 section 7.4.2, with extension data)::

    non-multipart: (type, subtype, params, id, description, encoding, size,
                    [lines]                      # TEXT/* only
                    [envelope, body, lines]      # MESSAGE/RFC822 only
                    md5, disposition, language, location)
    multipart:     (part1, part2, ..., subtype, params, disposition,
                    language, location)

* ``type``, ``subtype``, parameter names, the encoding and the disposition
  type are upper-cased (ASCII only), as in the RFC 3501 examples
  (``"TEXT" "PLAIN" ("CHARSET" "US-ASCII")``); parameter values keep their
  case (a boundary is case-sensitive).
* ``params`` is a flat tuple ``(name1, value1, name2, value2, ...)`` or
  ``None``.  RFC 2231 continuations (``name*0``, ``name*1*``...) are joined
  into one parameter (``name`` or, if encoded, ``name*`` whose value stays
  ``charset'lang'percent-encoded``).
* A missing or syntactically invalid Content-Type means ``TEXT/PLAIN
  ("CHARSET" "US-ASCII")`` (RFC 2045 section 5.2); inside a
  ``multipart/digest`` the default is ``MESSAGE/RFC822`` (RFC 2046 section
  5.1.5).  No charset is invented for a Content-Type that names no charset.
* ``encoding`` defaults to ``"7BIT"``.  ``disposition`` is ``(TYPE,
  params)`` or ``None``; ``language`` a tuple of tags or ``None``; ``id``,
  ``description``, ``md5``, ``location`` the unfolded raw values or ``None``.
* ``size`` is the octets of the part body as stored.  ``lines`` counts text
  lines of the body: every LF, plus one for a final line without a line
  end.  The line end before a boundary delimiter belongs to the delimiter
  (RFC 2046 section 5.1.1), not to the part.
* A multipart that yields no part (no ``boundary`` parameter, or no
  delimiter line found) is given one empty ``TEXT/PLAIN`` part, since IMAP
  cannot express a multipart without parts.  A ``MESSAGE/RFC822`` part is
  always parsed as a message, whatever its transfer encoding.  Only
  ``MESSAGE/RFC822`` (not ``MESSAGE/GLOBAL``) gets envelope and body
  fields, as in RFC 3501's grammar.

Headers
=======

:attr:`MessageMetadata.headers` holds ``(name, value)`` for each header
field of the top-level message, in order.  ``name`` is the octets before the
colon (including any white space before the colon, which obsolete syntax
allows), ``value`` everything after the colon up to and including the line
end of the field's last line, folding line ends kept.  So
``f"{name}:{value}".encode("latin-1")`` is exactly the field's octets.
Lines that are neither a field (``ftext`` name and a colon) nor a
continuation of one are left out, as is header text beyond
``HEADER_COLLECT_LIMIT`` octets.

Implementation notes
====================

One streaming scanner does the work for both :func:`parse_metadata` and
:func:`extract_section`.  It skips through the input with compiled patterns
(C speed), stopping only at line starts that matter: the blank line ending
a header section, and lines starting with a delimiter of an open multipart;
those lines are then examined one at a time.  It never holds more than a
chunk (1 MiB) of a file plus the header fields it keeps, and counts sizes,
line ends and offsets on the way, so nothing is read twice.  Limits against
hostile input: nesting depth ``MAX_DEPTH`` and ``MAX_PARTS`` parts in total
(beyond them the content is an opaque leaf body, as in Dovecot).

Octets held whole (``bytes``, and a file of at most a chunk, read whole in
reads of 64 KiB) take the same steps without the streaming reader's
bookkeeping (:class:`_BytesParser`): a header section is a slice of the
octets and LFs are counted where a count is needed.

Boundary lines are matched strictly: ``--boundary``, an optional ``--``,
then only white space (RFC 2046 section 5.1.1), innermost multipart first,
and an enclosing multipart's delimiter also ends the parts inside it.
Dovecot accepts any line that merely starts with the boundary; we follow
the RFC and Python's :mod:`email` instead, which keeps a boundary that is a
prefix of a nested one from cutting it.

Line counts (``lines``) include a last line without line end; Dovecot
counts LFs only, so for a part ``"a\r\nb"`` (whose final CRLF belongs to the
next delimiter) it says 1 where we say 2, the number of lines a reader sees.
"""

from __future__ import annotations

import binascii
import codecs
import functools
import html
import html.parser
import json
import marshal
import re
import struct
import sys
import typing
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from txmail.model import MessageMetadata

__all__ = [
    "EMPTY_BODY_STRUCTURE",
    "EMPTY_ENVELOPE",
    "HEADER_COLLECT_LIMIT",
    "MAX_DEPTH",
    "MAX_PARTS",
    "ParsedMessage",
    "Readable",
    "decode_metadata",
    "encode_header_metadata",
    "encode_metadata",
    "envelope",
    "extract_section",
    "field_addresses",
    "header_columns",
    "header_fields",
    "header_lines",
    "header_lines_fields",
    "parse_header_section",
    "parse_metadata",
    "preview",
    "text_parts",
]

#: Deepest nesting of multiparts and encapsulated messages that is parsed.
MAX_DEPTH = 50
#: Most body parts (multipart children and encapsulated messages) parsed.
MAX_PARTS = 10_000
#: Octets of one header section kept for its fields; the rest is only counted.
HEADER_COLLECT_LIMIT = 1 << 20

#: The envelope of a message with no header fields at all.
EMPTY_ENVELOPE: tuple[Any, ...] = (None,) * 10
#: What a multipart without parts shows as its single part (as Dovecot does).
EMPTY_BODY_STRUCTURE: tuple[Any, ...] = (
    "TEXT",
    "PLAIN",
    ("CHARSET", "US-ASCII"),
    None,
    None,
    "7BIT",
    0,
    0,
    None,
    None,
    None,
    None,
)

_CHUNK = 1 << 20  # octets read from a file at a time
_LINE = 1 << 16  # longest line fragment handled as one line

_HEADER, _BODY, _EPILOGUE, _DONE = range(4)  # node states
_LF = 0x0A

_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _upper(s: str) -> str:
    """ASCII-only upper case (``str.upper`` maps latin-1 ``ÿ`` outside latin-1)."""
    return s.upper() if s.isascii() else s.translate(_UPPER)


def _lower(s: str) -> str:
    """ASCII-only lower case."""
    # str.lower is the same on ASCII text and much faster than translate.
    return s.lower() if s.isascii() else s.translate(_LOWER)


# ---------------------------------------------------------------------------
# Reading


class Readable(typing.Protocol):
    """A binary file object as the parser reads one: ``read(size)`` until it gives ``b""``."""

    def read(self, size: int = ..., /) -> bytes: ...


class _Reader:
    """
    Octets from a ``bytes`` object or a binary file, consumed either one line
    at a time or skipped in bulk, keeping the counts the parser needs: the
    absolute position, the number of LFs consumed and the last three octets
    consumed.
    """

    def __init__(self, source: bytes | bytearray | memoryview | Readable, first: bytes = b"") -> None:
        self._file: Readable | None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._buf = bytes(source)
            self._file = None
            self._eof = True
        else:
            self._buf = first  # octets already read from the file
            self._file = source
            self._eof = False
        self._i = 0
        self._base = 0
        self.lf_total = 0
        self.tail = b""
        self.at_line_start = True

    @property
    def pos(self) -> int:
        return self._base + self._i

    def _fill(self) -> bool:
        """Read another chunk; return whether any octets came."""
        if self._eof or self._file is None:
            return False
        data = self._file.read(_CHUNK)
        if not data:
            self._eof = True
            return False
        self._base += self._i
        self._buf = self._buf[self._i :] + data
        self._i = 0
        return True

    def _consume(self, j: int) -> None:
        """Consume ``_buf[_i:j]``."""
        i = self._i
        if j <= i:
            return
        buf = self._buf
        self.lf_total += buf.count(b"\n", i, j)
        self.tail = (self.tail + buf[max(i, j - 3) : j])[-3:]
        self.at_line_start = buf[j - 1] == _LF
        self._i = j

    def next_line(self) -> tuple[bytes, bool] | None:
        """
        Consume and return the next line (with its line end) or, for a line
        longer than ``_LINE``, its next fragment; ``None`` at the end.  The
        flag says whether the fragment runs to a line end or to the end of
        the input.
        """
        while True:
            i = self._i
            j = self._buf.find(b"\n", i, i + _LINE)
            if j >= 0:
                end, complete = j + 1, True
                break
            if len(self._buf) - i >= _LINE:
                end, complete = i + _LINE, False
                break
            if not self._fill():
                if self._i >= len(self._buf):
                    return None
                end, complete = len(self._buf), True
                break
        frag = self._buf[self._i : end]
        self._consume(end)
        return frag, complete

    def skip_to(self, stops: _Stops | None, sink: typing.Callable[[bytes], None] | None = None) -> None:
        """
        Consume octets up to the next line start where *stops* matches (that
        line is left unconsumed), or to the end when *stops* is ``None`` or
        never matches.  Consumed octets go to *sink* when given.
        """
        while True:
            buf, i = self._buf, self._i
            if stops is None:
                if sink is not None:
                    sink(buf[i:])
                self._consume(len(buf))
                if not self._fill():
                    return
                continue
            if not self._eof and len(buf) - i < stops.keep and self._fill():
                continue
            if self.at_line_start and stops.at(buf, i):
                return
            # Candidates come from one generic pattern (a blank line, a line
            # starting with "--"); the boundaries are checked here, so no
            # pattern is compiled per boundary (each message has its own).
            found = cut = -1
            pos = i
            while True:
                m = stops.search.search(buf, pos)
                if m is None:
                    break
                start = m.start() + 1
                if not self._eof and len(buf) - start < stops.keep:
                    cut = start  # too few octets to tell: read on from there
                    break
                if stops.at(buf, start):
                    found = start
                    break
                pos = start
            if found >= 0:
                j = found
            elif cut >= 0:
                j = cut
            elif self._eof:
                j = len(buf)
            else:
                # A stop may begin in the last octets and end in the next chunk.
                j = max(i, len(buf) - stops.keep)
            if sink is not None and j > i:
                sink(buf[i:j])
            self._consume(j)
            if found >= 0 or (self._eof and j == len(buf)):
                return
            self._fill()


class _Stops(typing.NamedTuple):
    """
    The line starts where :meth:`_Reader.skip_to` stops: one starting with
    one of *prefixes* (``--boundary``), or in a header section a blank line.
    """

    prefixes: tuple[bytes, ...]
    header: bool
    search: re.Pattern[bytes]  # finds the LF before a candidate line start
    keep: int  # octets a stop may need beyond its LF

    def at(self, buf: bytes, i: int) -> bool:
        """Whether the line starting at *i* of *buf* is a stop."""
        if self.prefixes and buf.startswith(self.prefixes, i):
            return True
        return self.header and (buf.startswith(b"\n", i) or buf.startswith(b"\r\n", i))


# Every prefix is a boundary delimiter, which starts with "--" (RFC 2046
# section 5.1.1): these three patterns serve every message.
_BLANK_SEARCH = re.compile(rb"\n(?=\r?\n)")
_BLANK_OR_DASHES_SEARCH = re.compile(rb"\n(?=\r?\n|--)")
_DASHES_SEARCH = re.compile(rb"\n--")


def _stops(prefixes: tuple[bytes, ...], header: bool) -> _Stops | None:
    """
    Stops for a header section (a blank line, or a line starting with one of
    *prefixes*) or for a body (a line starting with one of *prefixes*; none
    when there are none).  Each prefix starts with ``--``.
    """
    if header:
        search = _BLANK_OR_DASHES_SEARCH if prefixes else _BLANK_SEARCH
    elif prefixes:
        search = _DASHES_SEARCH
    else:
        return None
    keep = max([len(p) for p in prefixes] + [2]) + 1
    return _Stops(prefixes, header, search, keep)


# ---------------------------------------------------------------------------
# Header fields

_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")


class _Fields(tuple[tuple[str, str], ...]):
    """
    The ``(name, raw value)`` pairs of a header section, in order, with a
    lookup by lower-case name built on first use (a message's structure
    and envelope look up some 18 fields: one pass instead of one each).
    """

    _by_name: dict[str, str] | None = None
    _ascii = False  # every name is ASCII

    def by_name(self) -> dict[str, str]:
        """Lower-case field name (trailing blanks dropped) -> its first raw value."""
        index = self._by_name
        if index is None:
            # Built from the last field back: the first of each name wins.
            # The names _parse_fields splits are ASCII: str.lower is ASCII
            # lower case on them.
            if self._ascii:
                index = {}
                for n, v in reversed(self):  # a loop costs less than a comprehension's call
                    index[n.rstrip(" \t").lower()] = v
            else:
                index = {_lower(n.rstrip(" \t")): v for n, v in reversed(self)}
            self._by_name = index
        return index


class _SplitFields(_Fields):
    """The fields :func:`_parse_fields` split: their names are printable ASCII (``_FIELD_RE``)."""

    _ascii = True


def _index(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """:meth:`_Fields.by_name` of *fields*."""
    if isinstance(fields, _Fields):
        index = fields._by_name
        return fields.by_name() if index is None else index
    return _Fields(fields).by_name()


# One field per match: a line starting with a name and a colon, then the
# continuation lines (starting with a space or a tab) that follow it.  Lines
# that are neither (nor continue a field) are never a match start: ``^``
# only matches at line starts and a name cannot start with white space.
_FIELD_RE = re.compile(r"^([\x21-\x39\x3b-\x7e]+[ \t]*):([^\n]*\n?(?:[ \t][^\n]*\n?)*)", re.M)


def _parse_fields(data: bytes) -> tuple[tuple[str, str], ...]:
    """Split a header section into ``(name, raw value)`` pairs (see module docstring)."""
    # Decoded once (latin-1 maps each octet to one character), split by one
    # pattern; tests.test_mime compares it with a line-by-line splitter.
    return _SplitFields(_FIELD_RE.findall(data.decode("latin-1")))


def _field(fields: Iterable[tuple[str, str]], name: str) -> str | None:
    """The first raw value of the field *name* (lower case), or ``None``."""
    if isinstance(fields, _Fields):
        index = fields._by_name
        return (fields.by_name() if index is None else index).get(name)
    for n, v in fields:
        if _lower(n.rstrip(" \t")) == name:
            return v
    return None


def _unfold(value: str) -> str:
    """Unfold (RFC 5322 section 2.2.3) and strip surrounding white space."""
    lfs = value.count("\n")
    if lfs == 0 or (lfs == 1 and value[-1] == "\n"):
        return value.strip(" \t\r\n")  # one line: nothing to unfold
    return _FOLD_RE.sub("", value).strip(" \t\r\n")


class _NameFilter(dict[str, bool]):
    """
    Raw field name -> whether a HEADER.FIELDS (``exclude``: .NOT) list keeps
    it, filled on first sight of each spelling: the messages of a mailbox
    share a few dozen spellings, so each is lower-cased once per command
    instead of once per field of every message.
    """

    __slots__ = ("exclude", "wanted")

    def __init__(self, wanted: frozenset[str], exclude: bool) -> None:
        super().__init__()
        self.wanted = wanted
        self.exclude = exclude

    def __missing__(self, raw: str) -> bool:
        key = raw.rstrip(" \t")
        keep = (_lower(key) in self.wanted) != self.exclude
        if len(self) < 4096:  # bounded: names are the sender's
            self[raw] = keep
        return keep


@functools.lru_cache(maxsize=64)
def _name_filter(names: tuple[str, ...], exclude: bool) -> _NameFilter:
    """The filter of a HEADER.FIELDS list (one per command, not per message)."""
    return _NameFilter(frozenset(_lower(n.strip()) for n in names), exclude)


def _format_fields(fields: Iterable[tuple[str, str]], names: Iterable[str], exclude: bool) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT of *fields*, ending with the blank line."""
    keep = _name_filter(names if type(names) is tuple else tuple(names), exclude)
    out = [f"{n}:{v}" if v.endswith("\n") else f"{n}:{v}\r\n" for n, v in fields if keep[n]]
    out.append("\r\n")
    return "".join(out).encode("latin-1")


# ---------------------------------------------------------------------------
# Structured MIME field values (RFC 2045 section 5.1, RFC 2183, RFC 2231)

_TSPECIALS = set('()<>@,;:\\"/[]?=')
_ATTRIBUTE_CHARS = {chr(c) for c in range(0x21, 0x7F)} - _TSPECIALS - {"*", "'", "%"}
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~\x80-\xff]+$")
_CONTINUATION_RE = re.compile(r"^(.+?)\*([0-9]{1,4})(\*?)$")


def _split_structured(value: str) -> list[str]:
    """
    Split a structured field value at ``;`` outside quoted strings, dropping
    comments; quoted strings are kept with their quotes.
    """
    if "(" not in value and "\\" not in value:
        # Without comments and escapes a quote always opens or closes a
        # quoted string: a ";" is outside them when every piece before it
        # holds an even number of quotes.
        pieces = value.split(";")
        if '"' not in value or not any(p.count('"') & 1 for p in pieces):
            return pieces
    segments: list[str] = []
    cur: list[str] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            j = i + 1
            while j < n and value[j] != '"':
                j += 2 if value[j] == "\\" else 1
            cur.append(value[i : j + 1])
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            while j < n and depth:
                if value[j] == "\\":
                    j += 1
                elif value[j] == "(":
                    depth += 1
                elif value[j] == ")":
                    depth -= 1
                j += 1
            cur.append(" ")
            i = j
        elif c == ";":
            segments.append("".join(cur))
            cur = []
            i += 1
        else:
            cur.append(c)
            i += 1
    segments.append("".join(cur))
    return segments


def _unquote(value: str) -> str:
    """The content of a quoted string (escapes resolved), or *value* stripped."""
    value = value.strip(" \t\r\n")
    if not value.startswith('"'):
        return value
    if "\\" not in value:
        end = value.find('"', 1)
        return value[1:end] if end >= 0 else value[1:]
    out = []
    i = 1
    while i < len(value) and value[i] != '"':
        if value[i] == "\\" and i + 1 < len(value):
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def _percent_encode(value: str) -> str:
    return "".join(
        c if c in _ATTRIBUTE_CHARS else "".join(f"%{b:02X}" for b in c.encode("latin-1")) for c in value
    )


def _parameters(segments: list[str]) -> tuple[str, ...]:
    """
    Parse ``name=value`` segments into a flat IMAP parameter list, names
    upper-cased, RFC 2231 continuations joined, first occurrence winning.
    """
    continued: dict[str, tuple[str, dict[int, tuple[str, bool]]]] = {}
    order: list[tuple[str, str] | str] = []
    for seg in segments:
        name, eq, raw = seg.partition("=")
        name = name.strip(" \t\r\n")
        if not eq or not name:
            continue
        value = _unquote(raw)
        m = _CONTINUATION_RE.match(name)
        if m is not None:
            base = m.group(1)
            key = _lower(base)
            if key not in continued:
                continued[key] = (base, {})
                order.append(key)
            continued[key][1].setdefault(int(m.group(2)), (value, bool(m.group(3))))
        else:
            order.append((name, value))
    out: list[str] = []
    seen: set[str] = set()
    for item in order:
        if isinstance(item, tuple):
            name, value = item
        else:
            base, segs = continued[item]
            ordered = [segs[k] for k in sorted(segs)]
            if ordered[0][1]:
                name = base + "*"
                value = "".join(v if enc else _percent_encode(v) for v, enc in ordered)
            else:
                name = base
                value = "".join(v for v, _ in ordered)
        name = _upper(name)
        if name in seen:
            continue
        seen.add(name)
        out += [name, value]
    return tuple(out)


def _content_type(
    fields: tuple[tuple[str, str], ...], digest_child: bool
) -> tuple[str, str, tuple[str, ...]]:
    """``(TYPE, SUBTYPE, params)`` of a part, with the RFC 2045/2046 defaults."""
    return _content_type_of(_field(fields, "content-type"), digest_child)


def _content_type_of(raw: str | None, digest_child: bool) -> tuple[str, str, tuple[str, ...]]:
    """:func:`_content_type` of a raw Content-Type value (``None``: absent)."""
    if raw is not None:
        parsed = _content_type_value(raw)
        if parsed is not None:
            return parsed
    if digest_child:
        return "MESSAGE", "RFC822", ()
    # RFC 2045 section 5.2: absent or syntactically invalid.
    return "TEXT", "PLAIN", ("CHARSET", "US-ASCII")


# The values of the MIME fields repeat from message to message (but for
# boundaries and file names): their parses (tuples of strings) are cached.
@functools.lru_cache(maxsize=512)
def _content_type_value(raw: str) -> tuple[str, str, tuple[str, ...]] | None:
    """``(TYPE, SUBTYPE, params)`` of a raw Content-Type value, ``None`` when invalid."""
    value = _unfold(raw)
    m = _SIMPLE_CONTENT_TYPE_RE.fullmatch(value)
    if m is not None:
        params = _simple_parameters(m.group(3))
        if params is not None:
            return m.group(1).upper(), m.group(2).upper(), params
    return _general_content_type(value)


def _general_content_type(value: str) -> tuple[str, str, tuple[str, ...]] | None:
    """:func:`_content_type_value` of an unfolded value, by the general code."""
    segments = _split_structured(value)
    typ, slash, sub = segments[0].partition("/")
    typ, sub = typ.strip(" \t\r\n"), sub.strip(" \t\r\n")
    if slash and _TOKEN_RE.match(typ) and _TOKEN_RE.match(sub):
        return _upper(typ), _upper(sub), _parameters(segments[1:])
    return None


# The common forms of Content-Type and Content-Disposition values, unfolded:
# ``type/subtype`` (or a disposition type) of ASCII token characters, then
# ``; name=token`` or ``; name="text"`` parameters whose names have no "*"
# (no RFC 2231 continuation) and whose quoted text holds no quote, backslash,
# ";", parenthesis or line end, and white space only around the ";"s.  Their
# parses need none of the general code's cases; anything else takes it.
_ASCII_TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+"
_PARAMETER = rf';[ \t]*([!#$%&\'+\-.0-9A-Z^_`a-z{{|}}~]+)=(?:"([^"\\;()\r\n]*)"|({_ASCII_TOKEN}))[ \t]*'
_PARAMETER_RE = re.compile(_PARAMETER)
_SIMPLE_PARAMETERS_RE = re.compile(rf"(?:{_PARAMETER})*(?:;[ \t]*)?")
_SIMPLE_CONTENT_TYPE_RE = re.compile(rf"({_ASCII_TOKEN})/({_ASCII_TOKEN})[ \t]*(.*)", re.DOTALL)
_SIMPLE_DISPOSITION_RE = re.compile(rf"({_ASCII_TOKEN})[ \t]*(.*)", re.DOTALL)


def _simple_parameters(text: str) -> tuple[str, ...] | None:
    """
    The parameters of *text* (what follows the type) as :func:`_parameters`
    gives them, when they are all of the common forms; else ``None``.
    """
    if not text:
        return ()
    if _SIMPLE_PARAMETERS_RE.fullmatch(text) is None:
        return None
    out: list[str] = []
    seen: set[str] = set()
    for name, quoted, token in _PARAMETER_RE.findall(text):
        name = name.upper()
        if name not in seen:
            seen.add(name)
            out += [name, token or quoted]
    return tuple(out)


def _disposition(fields: tuple[tuple[str, str], ...]) -> tuple[Any, ...] | None:
    """``(TYPE, params-or-None)`` from Content-Disposition (RFC 2183), or ``None``."""
    raw = _field(fields, "content-disposition")
    if raw is None:
        return None
    return _disposition_value(raw)


@functools.lru_cache(maxsize=512)
def _disposition_value(raw: str) -> tuple[Any, ...] | None:
    value = _unfold(raw)
    m = _SIMPLE_DISPOSITION_RE.fullmatch(value)
    if m is not None:
        params = _simple_parameters(m.group(2))
        if params is not None:
            return (m.group(1).upper(), params or None)
    return _general_disposition(value)


def _general_disposition(value: str) -> tuple[Any, ...] | None:
    """:func:`_disposition_value` of an unfolded value, by the general code."""
    segments = _split_structured(value)
    typ = segments[0].strip(" \t\r\n")
    if not typ:
        return None
    return (_upper(typ), _parameters(segments[1:]) or None)


def _language(fields: tuple[tuple[str, str], ...]) -> tuple[str, ...] | None:
    """Content-Language tags (RFC 3282), or ``None``."""
    return _language_of(_field(fields, "content-language"))


def _language_of(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    text = " ".join(_split_structured(_unfold(raw)))
    tags = tuple(t for t in re.split(r"[\s,]+", text) if t)
    return tags or None


def _encoding(fields: tuple[tuple[str, str], ...]) -> str:
    """Content-Transfer-Encoding upper-cased, ``7BIT`` by default (RFC 2045 section 6.1)."""
    raw = _field(fields, "content-transfer-encoding")
    if raw is None:
        return "7BIT"
    return _encoding_value(raw)


@functools.lru_cache(maxsize=512)
def _encoding_value(raw: str) -> str:
    words = " ".join(_split_structured(_unfold(raw))).split()
    return _upper(words[0]) if words else "7BIT"


# ---------------------------------------------------------------------------
# Addresses (RFC 5322 section 3.4, lenient) for the envelope


class _Tok(typing.NamedTuple):
    kind: str  # "atom", "qs", "dlit", "special", "comment"
    raw: str
    text: str
    space: bool  # white space (or a comment) came before it


_ADDR_SPECIALS = frozenset("<>@,;:.")
_ATOM_STOP = frozenset(' \t\r\n"([') | _ADDR_SPECIALS


def _address_tokens(s: str) -> list[_Tok]:
    toks: list[_Tok] = []
    i, n = 0, len(s)
    space = False
    while i < n:
        c = s[i]
        if c in " \t\r\n":
            space = True
            i += 1
        elif c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            j = i + 1
            text = []
            while j < n and s[j] != close:
                if s[j] == "\\" and j + 1 < n:
                    j += 1
                text.append(s[j])
                j += 1
            toks.append(_Tok("qs" if c == '"' else "dlit", s[i : j + 1], "".join(text), space))
            space = False
            i = j + 1
        elif c == "(":
            depth, j = 1, i + 1
            text = []
            while j < n:
                ch = s[j]
                if ch == "\\" and j + 1 < n:
                    text.append(s[j + 1])
                    j += 2
                    continue
                if ch == "(":
                    depth += 1
                elif ch == ")":
                    depth -= 1
                    if depth == 0:
                        j += 1
                        break
                text.append(ch)
                j += 1
            toks.append(_Tok("comment", s[i:j], " ".join("".join(text).split()), space))
            space = True
            i = j
        elif c in _ADDR_SPECIALS:
            toks.append(_Tok("special", c, c, space))
            space = False
            i += 1
        else:
            j = i
            while j < n and s[j] not in _ATOM_STOP:
                j += 1
            toks.append(_Tok("atom", s[i:j], s[i:j], space))
            space = False
            i = j
    return toks


def _phrase(toks: list[_Tok]) -> str | None:
    """A display name: words joined as written, quoted strings unquoted."""
    out: list[str] = []
    for t in toks:
        if t.kind == "comment":
            continue
        if out and t.space:
            out.append(" ")
        out.append(t.text if t.kind == "qs" else t.raw)
    return "".join(out) or None


def _raw_join(toks: list[_Tok]) -> str:
    return "".join(t.raw for t in toks if t.kind != "comment")


def _addr_spec(toks: list[_Tok], name: str | None, comments: list[str]) -> tuple[Any, ...] | None:
    """``(name, None, mailbox, host)`` from the tokens of an addr-spec."""
    words = [t for t in toks if t.kind != "comment"]
    if not words:
        return None
    at = next((k for k, t in enumerate(words) if t.raw == "@" and t.kind == "special"), None)
    if at is None:
        local, host = _raw_join(words), ""
    else:
        local, host = _raw_join(words[:at]), _raw_join(words[at + 1 :])
    if name is None:
        named = [c for c in comments if c]
        name = named[-1] if named else None
    return (name, None, local, host)


class _AddressParser:
    """A forgiving parser of ``address-list`` (RFC 5322 section 3.4)."""

    def __init__(self, value: str) -> None:
        self.toks = _address_tokens(value)
        self.out: list[tuple[Any, ...]] = []
        self._route_ends: list[int] | None = None

    def parse(self) -> tuple[tuple[Any, ...], ...] | None:
        i = 0
        while i < len(self.toks):
            j = self._address(i, in_group=False)
            i = j if j > i else i + 1
        return tuple(self.out) or None

    def _address(self, i: int, in_group: bool) -> int:
        toks, n = self.toks, len(self.toks)
        stops = "<,;" if in_group else "<,;:"
        words: list[_Tok] = []
        comments: list[str] = []
        while i < n:
            t = toks[i]
            if t.kind == "comment":
                comments.append(t.text)
            elif t.kind == "special" and t.raw in stops:
                break
            else:
                words.append(t)
            i += 1
        stop = toks[i].raw if i < n else ""
        if stop == "<":
            return self._angle(i + 1, _phrase(words), comments, in_group)
        if stop == ":":
            # group = display-name ":" [group-list] ";"
            self.out.append((None, None, _phrase(words) or "", None))
            i += 1
            while i < n and toks[i].raw != ";":
                j = self._address(i, in_group=True)
                i = j if j > i else i + 1
            self.out.append((None, None, None, None))
            return i + 1
        addr = _addr_spec(words, None, comments)
        if addr is not None:
            self.out.append(addr)
        if stop == ";" and in_group:
            return i  # the group consumes its ";"
        return i + 1

    def _route_end(self, i: int) -> int:
        """
        The index of the first ``:`` or ``>`` special at or after *i* (``n``
        if none), from a table built once: an obs-route may hold commas, so
        the search cannot stop at the next address, and repeating it for
        every ``<@`` of a hostile header would take quadratic time.
        """
        if self._route_ends is None:
            toks = self.toks
            ends = [len(toks)] * (len(toks) + 1)
            for j in range(len(toks) - 1, -1, -1):
                t = toks[j]
                ends[j] = j if t.kind == "special" and t.raw in ":>" else ends[j + 1]
            self._route_ends = ends
        return self._route_ends[i]

    def _angle(self, i: int, name: str | None, comments: list[str], in_group: bool) -> int:
        """angle-addr = "<" [obs-route] addr-spec ">" (RFC 5322 section 3.4, 4.4)."""
        toks, n = self.toks, len(self.toks)
        inner: list[_Tok] = []
        route: str | None = None
        while i < n and toks[i].kind == "comment":
            i += 1
        if i < n and toks[i].raw == "@" and toks[i].kind == "special":
            start = i
            i = self._route_end(i)
            if i < n and toks[i].raw == ":":
                route = _raw_join(toks[start:i])
                i += 1
            else:
                i = start
        while i < n and not (toks[i].kind == "special" and toks[i].raw in ">,;"):
            inner.append(toks[i])
            i += 1
        if i < n and toks[i].raw == ">":
            i += 1
        addr = _addr_spec(inner, name, [])
        if addr is None:
            addr = (name, None, "", "")
        # Anything up to the next "," is junk, except a comment that may name it.
        while i < n and toks[i].raw not in (",", ";"):
            if toks[i].kind == "comment":
                comments.append(toks[i].text)
            i += 1
        if addr[0] is None:
            named = [c for c in comments if c]
            if named:
                addr = (named[-1], *addr[1:])
        self.out.append((addr[0], route, addr[2], addr[3]))
        if i < n and toks[i].raw == ";" and in_group:
            return i
        return i + 1


# The common forms of one address, ``Name Words <local@host>``, ``<local@host>``
# and ``local@host``, in plain atoms (no quotes, comments, dots in the name,
# or white space inside the address); anything else takes the full parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_SIMPLE_ADDRESS_RE = re.compile(
    rf"(?:({_ATEXT}(?:[ \t]+{_ATEXT})*)?[ \t]*<({_DOT_ATOM})@({_DOT_ATOM})>|({_DOT_ATOM})@({_DOT_ATOM}))"
)
_BLANKS_RE = re.compile(r"[ \t]+")


def _simple_addresses(value: str) -> tuple[tuple[Any, ...], ...] | None:
    """
    The addresses of *value* (unfolded and stripped) when it is a list of
    the common forms (see ``_SIMPLE_ADDRESS_RE``), exactly as
    :class:`_AddressParser` gives them; ``None`` when it is anything else.
    """
    out: list[tuple[str | None, None, str, str]] = []
    match = _SIMPLE_ADDRESS_RE.fullmatch
    for piece in value.split(",") if "," in value else (value,):
        m = match(piece.strip(" \t"))
        if m is None:
            return None
        name, local, host, bare_local, bare_host = m.groups()
        if local is None:
            out.append((None, None, bare_local, bare_host))
        else:
            if name is not None and ("\t" in name or "  " in name):
                name = _BLANKS_RE.sub(" ", name)
            out.append((name, None, local, host))
    return tuple(out)


def _parse_addresses(value: str) -> tuple[tuple[Any, ...], ...] | None:
    """The addresses of an unfolded address field value (see module docstring)."""
    if value:
        simple = _simple_addresses(value)
        if simple is not None:
            return simple
    return _AddressParser(value).parse()


def header_columns(headers: Iterable[tuple[str, str]], names: tuple[str, ...]) -> tuple[str, ...]:
    """
    The fields of *headers* (``(name, raw value)`` pairs) whose name,
    blanks stripped and case-folded (as IMAP SEARCH compares names), is
    one of *names* (lower case), in order, each named by its member of
    *names*, flattened: ``(name, value, name, value, ...)`` (one tuple a
    message: a store loading many of them makes few objects).
    """
    where = {name: name for name in names}
    found: list[str] = []
    for name, value in headers:
        key = where.get(name.strip(" \t").casefold())
        if key is not None:
            found += (key, value)
    return tuple(found)


def header_lines(
    headers: Iterable[tuple[str, str]], names: frozenset[str] | tuple[str, ...]
) -> tuple[str, str]:
    """
    The fields of *headers* (``(name, raw value)`` pairs) whose name,
    blanks stripped and case-folded, is one of *names* (lower case), as
    ``(keys, text)``: *text* their lines in order, each exactly as
    ``BODY[HEADER.FIELDS (...)]`` writes it (:func:`header_fields`: name,
    colon, raw value, CRLF added where the value has no line end), *keys*
    their lower case names joined by single spaces (interned: messages
    with the same fields share one string).
    """
    keys: list[str] = []
    lines: list[str] = []
    for name, value in headers:
        key = name.strip(" \t").casefold()
        if key in names:
            keys.append(key)
            lines.append(f"{name}:{value}" if value.endswith("\n") else f"{name}:{value}\r\n")
    return sys.intern(" ".join(keys)), "".join(lines)


@functools.lru_cache(maxsize=256)
def _lines_plan(keys: str, names: tuple[str, ...]) -> tuple[bool, ...] | None:
    """
    For a record's *keys* and a HEADER.FIELDS list: ``None`` when every
    field of the record is asked for (its text is the answer), else which
    of its fields are.
    """
    wanted = frozenset(_lower(n.strip()) for n in names)
    keep = tuple(key in wanted for key in keys.split(" ")) if keys else ()
    return None if all(keep) else keep


def header_lines_fields(record: tuple[str, str], names: tuple[str, ...]) -> bytes:
    """
    ``BODY[HEADER.FIELDS (names)]`` from a :func:`header_lines` record,
    when every one of *names* (lower-cased) is among the names it was made
    for: the same octets as :func:`header_fields` of the message.
    """
    keys, text = record
    plan = _lines_plan(keys, names)
    if plan is None:
        return (text + "\r\n").encode("latin-1")
    # Every line of *text* ends with a line end, so the field pattern splits
    # it into the fields it was joined from.
    fields = _FIELD_RE.findall(text)
    out = [f"{n}:{v}" for (n, v), keep in zip(fields, plan, strict=True) if keep]
    out.append("\r\n")
    return "".join(out).encode("latin-1")


def envelope(fields: Iterable[tuple[str, str]]) -> tuple[Any, ...]:
    """The IMAP ENVELOPE (RFC 3501 section 7.4.2) of the header fields *fields* (``(name, raw value)`` pairs)."""
    return _envelope(_Fields(fields))


_BLANK_LINE_RE = re.compile(rb"\n\r?\n")


def field_addresses(header_section: bytes, name: str) -> list[tuple[Any, ...]]:
    """
    The addresses of each field called *name* (any case) of a header
    section, one tuple per occurrence, in order: each address as IMAP's
    ENVELOPE writes it (name, adl, mailbox, host; group markers have host
    ``None``).  Only the header fields are split, nothing else is parsed
    (DMARC's author domain needs no more).
    """
    wanted = _lower(name)
    if header_section.startswith((b"\r\n", b"\n")):
        return []
    end = _BLANK_LINE_RE.search(header_section)
    if end is not None:
        header_section = header_section[: end.start() + 1]
    return [
        _parse_addresses(_unfold(value)) or ()
        for field, value in _parse_fields(header_section)
        if _lower(field.rstrip(" \t")) == wanted
    ]


def _envelope(fields: tuple[tuple[str, str], ...]) -> tuple[Any, ...]:
    """The IMAP ENVELOPE (RFC 3501 section 7.4.2) of a header section."""
    get = _index(fields).get
    # No call for an absent field (most of them).
    date, subject, in_reply_to, message_id = [
        None if (raw := get(name)) is None else _unfold(raw) for name in _ENVELOPE_TEXTS
    ]
    from_, sender, reply_to, to, cc, bcc = [
        None if (raw := get(name)) is None else _parse_addresses(_unfold(raw)) for name in _ENVELOPE_LISTS
    ]
    return (date, subject, from_, sender or from_, reply_to or from_, to, cc, bcc, in_reply_to, message_id)


_ENVELOPE_TEXTS = ("date", "subject", "in-reply-to", "message-id")
_ENVELOPE_LISTS = ("from", "sender", "reply-to", "to", "cc", "bcc")


# ---------------------------------------------------------------------------
# The scanner


class _Node:
    """One entity: the message, a body part, or an encapsulated message."""

    __slots__ = (
        "body_start",
        "boundary",
        "children",
        "ctype",
        "depth",
        "digest_child",
        "end",
        "fields",
        "hbuf",
        "hlen",
        "lf_at_body",
        "lines",
        "message",
        "start",
        "state",
    )

    def __init__(self, start: int, depth: int, digest_child: bool = False) -> None:
        self.start = start
        self.body_start = start
        self.end = start
        self.state = _HEADER
        self.depth = depth
        self.digest_child = digest_child
        self.hbuf: list[bytes] = []
        self.hlen = 0
        self.fields: tuple[tuple[str, str], ...] = ()
        self.ctype: tuple[str, str, tuple[str, ...]] = ("TEXT", "PLAIN", ())
        self.lf_at_body = 0
        self.lines = 0
        self.children: list[_Node] = []
        self.message: _Node | None = None
        self.boundary = b""  # b"--" + boundary while the multipart scans for it

    def add_header(self, data: bytes) -> None:
        room = HEADER_COLLECT_LIMIT - self.hlen
        if room > 0:
            self.hbuf.append(data[:room])
        self.hlen += len(data)

    def finish_header(self, size: int) -> None:
        """Parse the first *size* octets of the collected header lines."""
        data = b"".join(self.hbuf)[:size]
        self.hbuf = []
        self.set_header(data)

    def set_header(self, data: bytes) -> None:
        """Parse the header section *data* (at most ``HEADER_COLLECT_LIMIT`` octets of it)."""
        self.fields = fields = _parse_fields(data)
        self.ctype = _content_type_of(_index(fields).get("content-type"), self.digest_child)

    @property
    def is_multipart(self) -> bool:
        return self.ctype[0] == "MULTIPART"

    @property
    def is_rfc822(self) -> bool:
        return self.ctype[:2] == ("MESSAGE", "RFC822")


class _Parser:
    """Drive a :class:`_Reader` through the MIME tree (RFC 2045, RFC 2046)."""

    def __init__(self, reader: _Reader) -> None:
        self.r = reader
        self.parts = 0
        self.root = _Node(0, 0)
        self.stack = [self.root]
        #: Set when what :meth:`_prefixes` gives may have changed (a boundary
        #: opened or closed, the part limit reached).  A boundary opened must
        #: set it; a prefix kept after its multipart closed would only add
        #: stops that :meth:`_delimiter` refuses, but is dropped too.
        self.delimiters_changed = False

    def _prefixes(self) -> tuple[bytes, ...]:
        """The line prefixes that may be delimiters of the open multiparts."""
        close_only = self.parts >= MAX_PARTS  # then only close delimiters count
        return tuple(
            [
                n.boundary + b"--" if close_only else n.boundary
                for n in self.stack
                if n.boundary and n.state == _BODY
            ]
        )

    def run(self) -> _Node:
        r = self.r
        stack = self.stack
        while True:
            top = stack[-1]
            header = top.state == _HEADER
            r.skip_to(_stops(self._prefixes(), header), top.add_header if header else None)
            pos, lf, tail, at_start = r.pos, r.lf_total, r.tail, r.at_line_start
            got = r.next_line()
            if got is None:
                break
            frag, complete = got
            if (
                at_start
                and complete
                and frag.startswith(b"--")
                and self._delimiter(frag, pos, lf, tail, r.pos)
            ):
                continue
            if header:
                if at_start and frag in (b"\r\n", b"\n"):
                    self._end_header(top, top.hlen, r.pos, r.lf_total)
                else:
                    top.add_header(frag)
        while stack:
            self._close(stack.pop(), r.pos, r.lf_total, r.tail, 0)
        return self.root

    def _finish_header(self, node: _Node, size: int) -> None:
        """Parse the first *size* octets of *node*'s header section."""
        node.finish_header(size)

    def _end_header(self, node: _Node, size: int, pos: int, lf: int) -> None:
        """
        The blank line ending *node*'s header section (of *size* octets) was
        just consumed: the body starts at *pos*, after *lf* LFs of the input.
        """
        node.body_start = pos
        node.lf_at_body = lf
        node.state = _BODY
        self._finish_header(node, size)
        if node.depth >= MAX_DEPTH or self.parts >= MAX_PARTS:
            return
        if node.is_multipart:
            boundary = dict(zip(node.ctype[2][::2], node.ctype[2][1::2], strict=False)).get("BOUNDARY")
            if boundary:
                node.boundary = b"--" + boundary.encode("latin-1")
                self.delimiters_changed = True
        elif node.is_rfc822:
            msg = _Node(pos, node.depth + 1)
            node.message = msg
            self.parts += 1
            self.stack.append(msg)
            if self.parts >= MAX_PARTS:
                self.delimiters_changed = True

    def _delimiter(self, frag: bytes, pos: int, lf: int, tail: bytes, after: int) -> bool:
        """
        If *frag* (a whole line starting at *pos* and ending before *after*)
        is a boundary delimiter of an open multipart, innermost first, act on
        it and return ``True`` (RFC 2046 section 5.1.1; an enclosing boundary
        also ends inner parts).
        """
        if frag.endswith(b"\r\n"):
            content = frag[:-2]
        elif frag.endswith(b"\n"):
            content = frag[:-1]
        else:
            content = frag
        stack = self.stack
        for k in range(len(stack) - 1, -1, -1):
            node = stack[k]
            if not node.boundary or node.state != _BODY or not content.startswith(node.boundary):
                continue
            rest = content[len(node.boundary) :]
            close = rest.startswith(b"--")
            if close:
                rest = rest[2:]
            if rest.strip(b" \t\r"):
                continue  # transport padding must be white space
            if not close and self.parts >= MAX_PARTS:
                return False  # defensive: _prefixes() lets only close delimiters through
            # The line end before the delimiter belongs to it, not to the part.
            eol = 2 if tail.endswith(b"\r\n") else 1 if tail.endswith(b"\n") else 0
            while len(stack) > k + 1:
                inner = stack.pop()
                if inner.boundary:
                    self.delimiters_changed = True
                self._close(inner, pos, lf, tail, eol)
            if close:
                node.state = _EPILOGUE
                self.delimiters_changed = True
            else:
                child = _Node(after, node.depth + 1, digest_child=node.ctype[1] == "DIGEST")
                node.children.append(child)
                self.parts += 1
                stack.append(child)
                if self.parts >= MAX_PARTS:
                    self.delimiters_changed = True
            return True
        return False

    def _close(self, node: _Node, pos: int, lf: int, tail: bytes, eol: int) -> None:
        """
        End *node* at *pos*, less the *eol* octets of the line end that
        belongs to a following delimiter; *lf* and *tail* describe the input
        before *pos*.
        """
        if node.state == _HEADER:
            ex = eol if pos > node.start else 0
            node.end = node.body_start = pos - ex
            self._finish_header(node, node.end - node.start)
            node.lines = 0
            if node.is_rfc822 and node.depth < MAX_DEPTH:
                node.message = _Node(node.end, node.depth + 1)
                node.message.state = _DONE
        else:
            ex = eol if pos > node.body_start else 0
            node.end = pos - ex
            if node.end > node.body_start:
                last = tail[-1 - ex]
                node.lines = lf - node.lf_at_body - (1 if ex else 0) + (0 if last == _LF else 1)
            else:
                node.lines = 0
        node.state = _DONE


class _BytesParser(_Parser):
    """
    :class:`_Parser` over octets held whole: the same steps, each taken
    with positions in the octets instead of a :class:`_Reader`'s
    bookkeeping (a header section is a slice, LFs are counted only where a
    count is needed).  ``tests.test_mime`` checks that it gives exactly what
    the streaming parser gives.
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(None)  # type: ignore[arg-type]  # no reader: run() is replaced
        self.data = data

    def _finish_header(self, node: _Node, size: int) -> None:
        start = node.start
        # _Node.set_header, one call less.
        node.fields = fields = _parse_fields(self.data[start : start + min(size, HEADER_COLLECT_LIMIT)])
        node.ctype = _content_type_of(fields.by_name().get("content-type"), node.digest_child)  # type: ignore[attr-defined]  # a _SplitFields

    def run(self) -> _Node:
        data = self.data
        n = len(data)
        stack = self.stack
        count = data.count
        startswith = data.startswith
        pos = 0
        lf = lf_pos = 0  # the LFs of data[:lf_pos]
        # The open delimiters change only with a delimiter or a header's end,
        # which say so (delimiters_changed).
        prefixes = self._prefixes()
        while True:
            top = stack[-1]
            header = top.state == _HEADER
            # _Reader.skip_to: on to the next line start that is a stop.
            if header:
                search = _BLANK_OR_DASHES_SEARCH if prefixes else _BLANK_SEARCH
            elif prefixes:
                search = _DASHES_SEARCH
            else:
                break  # nothing stops the rest of the input
            at_start = pos == 0 or data[pos - 1] == _LF
            if not (
                at_start
                and ((prefixes and startswith(prefixes, pos)) or (header and startswith(_BLANKS, pos)))
            ):
                found = n
                m = search.search(data, pos)
                while m is not None:
                    start = m.start() + 1
                    if (prefixes and startswith(prefixes, start)) or (header and startswith(_BLANKS, start)):
                        found = start
                        break
                    m = search.search(data, start)
                pos = found
                at_start = pos == 0 or data[pos - 1] == _LF
            # _Reader.next_line
            if pos >= n:
                break
            j = data.find(b"\n", pos, pos + _LINE)
            if j >= 0:
                end, complete = j + 1, True
            elif n - pos >= _LINE:
                end, complete = pos + _LINE, False
            else:
                end, complete = n, True
            if at_start and complete and startswith(b"--", pos):
                lf += count(b"\n", lf_pos, pos)
                lf_pos = pos
                if self._delimiter(data[pos:end], pos, lf, data[max(0, pos - 3) : pos], end):
                    pos = end
                    if self.delimiters_changed:
                        self.delimiters_changed = False
                        prefixes = self._prefixes()
                    continue
            if header and at_start and startswith(_BLANKS, pos):
                lf += count(b"\n", lf_pos, end)
                lf_pos = end
                self._end_header(top, pos - top.start, end, lf)
                if self.delimiters_changed:
                    self.delimiters_changed = False
                    prefixes = self._prefixes()
            pos = end
        lf += count(b"\n", lf_pos, n)
        tail = data[max(0, n - 3) :]
        while stack:
            self._close(stack.pop(), n, lf, tail, 0)
        return self.root


_BLANKS = (b"\n", b"\r\n")


def _parse(source: bytes | bytearray | memoryview | Readable) -> _Node:
    """
    The MIME tree of *source*: octets held whole, or a file object, read
    whole if it holds at most a chunk (in reads of ``_SMALL`` octets: a read
    takes memory for the size it asks first, and a read of a whole chunk
    costs more than the parse of a small message), else in chunks.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _BytesParser(bytes(source)).run()
    size = min(_SMALL, _CHUNK)
    pieces: list[bytes] = []
    total = 0
    while total <= _CHUNK:
        data = source.read(size)
        if not data:
            return _BytesParser(b"".join(pieces)).run()
        pieces.append(data)
        total += len(data)
    return _Parser(_Reader(source, b"".join(pieces))).run()


#: Octets of each read of a file before it is known to hold more than a chunk.
_SMALL = 1 << 16


# ---------------------------------------------------------------------------
# Body structure


def _body_structure(node: _Node) -> tuple[Any, ...]:
    """The BODYSTRUCTURE of *node* (RFC 3501 section 7.4.2, see module docstring)."""
    get = _index(node.fields).get
    typ, sub, params = node.ctype
    # No call for an absent field (most of them).
    ext = (
        None if (raw := get("content-disposition")) is None else _disposition_value(raw),
        None if (raw := get("content-language")) is None else _language_of(raw),
        None if (raw := get("content-location")) is None else _unfold(raw),
    )
    if typ == "MULTIPART":
        kids = [_body_structure(c) for c in node.children] or [EMPTY_BODY_STRUCTURE]
        return (*kids, sub, params or None, *ext)
    out: list[Any] = [
        typ,
        sub,
        params or None,
        None if (raw := get("content-id")) is None else _unfold(raw),
        None if (raw := get("content-description")) is None else _unfold(raw),
        "7BIT" if (raw := get("content-transfer-encoding")) is None else _encoding_value(raw),
        node.end - node.body_start,
    ]
    if typ == "TEXT":
        out.append(node.lines)
    elif node.is_rfc822:
        if node.message is not None:
            out += [_envelope(node.message.fields), _body_structure(node.message), node.lines]
        else:
            out += [EMPTY_ENVELOPE, EMPTY_BODY_STRUCTURE, node.lines]
    out.append(None if (raw := get("content-md5")) is None else _unfold(raw))
    out += ext
    return tuple(out)


def parse_metadata(source: bytes | Readable) -> MessageMetadata:
    """
    Parse a stored message once into its :class:`MessageMetadata`.

    Args:
        source: the message octets, or a binary file object read from its
            current position to its end: a message of at most 1 MiB is read
            whole (in reads of 64 KiB), a larger one in 1 MiB chunks, never
            held whole in memory.

    Returns:
        header size, header fields, ENVELOPE, BODYSTRUCTURE and body line
        count, as described in the module docstring.  Any input gives an
        answer; only an error reading the file propagates.
    """
    return _metadata(_parse(source))


def _metadata(root: _Node) -> MessageMetadata:
    """The :class:`MessageMetadata` of a parsed message."""
    return MessageMetadata(
        header_size=root.body_start - root.start,
        headers=root.fields,
        envelope=_envelope(root.fields),
        body_structure=_body_structure(root),
        lines=root.lines,
    )


def parse_header_section(data: bytes) -> tuple[int, tuple[tuple[str, str], ...]]:
    """
    The ``header_size`` and ``headers`` that :func:`parse_metadata` gives
    for the message *data*, without looking at its body (a client's first
    sync asks for header fields only): the header ends at the first empty
    line, or with the data.
    """
    if data[:1] == b"\n":
        return 1, _parse_fields(b"")
    if data[:2] == b"\r\n":
        return 2, _parse_fields(b"")
    m = _BLANK_LINE_RE.search(data)
    if m is None:
        size = lines_end = len(data)
    else:
        size, lines_end = m.end(), m.start() + 1
    return size, _parse_fields(data[: min(lines_end, HEADER_COLLECT_LIMIT)])


# ---------------------------------------------------------------------------
# Cache serialisation
#
# Format 2 (written): MAGIC, the CRC-32 of the rest, the length of the first
# part (4 octets each, little-endian), then two marshal dumps (version 4, a
# format every Python 3 since 3.4 reads): ``(header_size, headers)`` and
# ``(envelope, body_structure, lines)``.  Decoding checks the CRC, loads the
# first part and leaves the second to the first use of a structure
# (:meth:`MessageMetadata.deferred`): a client fetching header fields never
# pays for it.  ``marshal`` builds only plain values (and code objects,
# which we never call), much faster than JSON (~9 us against ~32 us for a
# typical message) and without turning lists back into tuples; the CRC
# turns a damaged record into a ``ValueError`` before anything is loaded.
#
# Format 1 (read only, the caches written before): ASCII JSON
# ``[1, header_size, headers, envelope, body_structure, lines]``.

_FORMAT = 1
_MAGIC = b"\x00M2"
_PREFIX = struct.Struct("<3sII")


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (recursing only into lists: one call per list, not per leaf)."""
    if type(value) is list:
        return tuple([_tuples(v) if type(v) is list else v for v in value])
    return value


def encode_metadata(md: MessageMetadata) -> bytes:
    """
    Serialise *md* compactly for a store's cache (format 2, see above); the
    inverse of :func:`decode_metadata`.
    """
    head = marshal.dumps((md.header_size, tuple(md.headers)), 4)
    rest = marshal.dumps((md.envelope, md.body_structure, md.lines), 4)
    crc = zlib.crc32(rest, zlib.crc32(head, zlib.crc32(struct.pack("<I", len(head)))))
    return _PREFIX.pack(_MAGIC, crc, len(head)) + head + rest


def encode_header_metadata(header_size: int, headers: tuple[tuple[str, str], ...]) -> bytes:
    """
    Serialise the header part alone (format 2 with an empty second part):
    :func:`decode_metadata` then needs a function that completes it.
    """
    head = marshal.dumps((header_size, tuple(headers)), 4)
    crc = zlib.crc32(head, zlib.crc32(struct.pack("<I", len(head))))
    return _PREFIX.pack(_MAGIC, crc, len(head)) + head


def _not_metadata(*_: Any) -> ValueError:
    return ValueError("not encoded message metadata")


def decode_metadata(
    data: bytes, complete: Callable[[], tuple[tuple[Any, ...], tuple[Any, ...], int]] | None = None
) -> MessageMetadata:
    """
    Rebuild the :class:`MessageMetadata` that :func:`encode_metadata` wrote
    (or the JSON of format 1), so ``decode_metadata(encode_metadata(m)) ==
    m``.  The envelope and body structure of format 2 are loaded on first
    use; those of a record of :func:`encode_header_metadata` are given by
    *complete* (see :meth:`MessageMetadata.deferred`).

    Raises:
        ValueError: *data* is not such a serialisation (a damaged cache;
            the store should parse the message again), or a header-only
            record and no *complete*.
    """
    if data[:3] != _MAGIC:
        return _decode_json(data)
    if len(data) < _PREFIX.size:
        raise _not_metadata()
    _, crc, head_len = _PREFIX.unpack_from(data)
    start = _PREFIX.size
    if head_len > len(data) - start or zlib.crc32(memoryview(data)[start - 4 :]) != crc:
        raise _not_metadata()
    try:
        # marshal reads bytes twice as fast as a memoryview.
        header_size, headers = marshal.loads(data[start : start + head_len])
    except (EOFError, ValueError, TypeError) as e:
        raise _not_metadata() from e
    if type(header_size) is not int or type(headers) is not tuple:
        raise _not_metadata()
    rest = data[start + head_len :]
    if not rest:
        if complete is None:
            raise ValueError("header fields only: the structures are not cached")
        return MessageMetadata.deferred(header_size, _Fields(headers), complete)

    def load() -> tuple[tuple[Any, ...], tuple[Any, ...], int]:
        # Checked by the CRC above: only a bug of ours could fail here.
        envelope, body_structure, lines = marshal.loads(rest)
        if type(envelope) is not tuple or type(body_structure) is not tuple or type(lines) is not int:
            raise _not_metadata()
        return envelope, body_structure, lines

    return MessageMetadata.deferred(header_size, _Fields(headers), load)


def _decode_json(data: bytes) -> MessageMetadata:
    """Decode format 1 (JSON), written by txmail before format 2."""
    try:
        fmt, header_size, headers, envelope, body_structure, lines = json.loads(data)
    except (TypeError, ValueError, RecursionError) as e:
        raise _not_metadata() from e
    if (
        fmt != _FORMAT
        or not isinstance(header_size, int)
        or not isinstance(lines, int)
        or not isinstance(headers, list)
        or not isinstance(envelope, list)
        or not isinstance(body_structure, list)
    ):
        raise _not_metadata()
    try:
        # The known shapes, converted by C loops: header fields are [name,
        # value] pairs; the envelope's members are strings, None or lists of
        # 4-member address lists.
        header_pairs = tuple(map(tuple, headers))
        env = tuple([tuple(map(tuple, m)) if type(m) is list else m for m in envelope])
    except TypeError as e:
        raise _not_metadata() from e
    return MessageMetadata(
        header_size=header_size,
        headers=header_pairs,
        envelope=env,
        body_structure=_tuples(body_structure),
        lines=lines,
    )


# ---------------------------------------------------------------------------
# Sections (RFC 3501 section 6.4.5)

_PART_RE = re.compile(r"^[1-9][0-9]{0,8}$")
# A quoted name may lack its closing quote (taken to the end): a regex that
# had to find it would rescan the rest of the list from every quote.
_NAME_RE = re.compile(r'"((?:[^"\\]|\\.)*)"?|([^\s"()]+)', re.DOTALL)
_TEXT_SPECS = frozenset({"", "HEADER", "TEXT", "MIME", "HEADER.FIELDS", "HEADER.FIELDS.NOT"})


def _parse_section(section: str) -> tuple[list[int], str, list[str]]:
    """
    Split a section spec into part numbers, the text specifier and header
    field names::

        section-spec    = section-msgtext / (section-part ["." section-text])
        section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
        section-part    = nz-number *("." nz-number)
        section-text    = section-msgtext / "MIME"

    Raises:
        ValueError: the spec does not follow that grammar.
    """
    head, paren, rest = section.strip().partition("(")
    names: list[str] = []
    if paren:
        rest = rest.rstrip()
        if not rest.endswith(")"):
            raise ValueError("unterminated header-list")
        for m in _NAME_RE.finditer(rest[:-1]):
            names.append(re.sub(r"\\(.)", r"\1", m.group(1)) if m.group(1) is not None else m.group(2))
        if not names:
            raise ValueError("empty header-list")
    words = head.strip().split(".") if head.strip() else []
    if "" in words:
        raise ValueError("empty section component")
    nums: list[int] = []
    i = 0
    while i < len(words) and _PART_RE.match(words[i]):
        nums.append(int(words[i]))
        i += 1
    text = _upper(".".join(words[i:]))
    if text not in _TEXT_SPECS or (text == "MIME" and not nums):
        raise ValueError("bad section-text")
    if text.startswith("HEADER.FIELDS") != bool(names):
        raise ValueError("header-list where none belongs, or missing")
    return nums, text, names


def _message_parts(msg: _Node) -> list[_Node]:
    """The numbered parts of a message: its parts if multipart, else its body as part 1."""
    return msg.children if msg.is_multipart else [msg]


def _subparts(part: _Node) -> list[_Node]:
    """
    The numbered parts below a body part: a multipart's parts, the parts of
    a MESSAGE/RFC822 part's message, or the part itself as its only part
    (as Dovecot answers ``1.1`` of a single-part message).
    """
    if part.is_multipart:
        return part.children
    if part.message is not None:
        return _message_parts(part.message)
    return [part]


def extract_section(message: bytes, section: str) -> bytes:
    """
    Return ``BODY[section]`` of *message* (RFC 3501 section 6.4.5),
    parsing it on demand.

    *section* is the text between the brackets, without any ``<partial>``:
    ``""`` (the whole message), ``HEADER``, ``TEXT``, ``HEADER.FIELDS (A
    B)``, ``HEADER.FIELDS.NOT (A B)``, or part numbers such as ``1.2``
    optionally followed by ``.MIME``, ``.HEADER``, ``.TEXT`` or
    ``.HEADER.FIELDS[.NOT] (...)``.  A non-multipart message's part 1 is its
    body; ``MIME`` is a part's own header section; ``HEADER``, ``TEXT`` and
    ``HEADER.FIELDS`` after part numbers apply to the message encapsulated
    in a MESSAGE/RFC822 part.  A part that does not exist, a specifier that
    does not apply, or a malformed *section* gives ``b""``.
    ``HEADER.FIELDS`` output ends with the blank line.
    """
    try:
        nums, text, names = _parse_section(section)
    except ValueError:
        return b""
    if not nums and text == "":
        return bytes(message)
    return _extract(message, _parse(message), nums, text, names)


class ParsedMessage:
    """
    A message whose ``BODY[section]`` parts are asked for several times (one
    FETCH naming many sections): it is parsed once, at the first section
    that needs the structure, instead of once per section.
    """

    def __init__(self, message: bytes) -> None:
        self.data = message
        self._root: _Node | None = None

    def section(self, section: str) -> bytes:
        """:func:`extract_section` of this message."""
        try:
            nums, text, names = _parse_section(section)
        except ValueError:
            return b""
        if not nums and text == "":
            return bytes(self.data)
        if self._root is None:
            self._root = _parse(self.data)
        return _extract(self.data, self._root, nums, text, names)


def _extract(message: bytes, root: _Node, nums: list[int], text: str, names: list[str]) -> bytes:
    msg: _Node | None = root
    if nums:
        node = root
        kids = _message_parts(root)
        for n in nums:
            if n > len(kids):
                return b""
            node = kids[n - 1]
            kids = _subparts(node)
        if text == "":
            return bytes(message[node.body_start : node.end])
        if text == "MIME":
            return bytes(message[node.start : node.body_start])
        msg = node.message if node.is_rfc822 else None
    if msg is None:
        return b""
    if text == "HEADER":
        return bytes(message[msg.start : msg.body_start])
    if text == "TEXT":
        return bytes(message[msg.body_start : msg.end])
    return _format_fields(msg.fields, names, exclude=text.endswith(".NOT"))


def text_parts(message: bytes) -> Iterator[tuple[str, Any]]:
    """
    The searchable pieces of *message* in order, from one linear parse:
    ``("fields", fields)`` for the header of each attached MESSAGE/RFC822
    (``(name, raw latin-1 value)`` pairs) and ``("text", (octets,
    charset))`` for each TEXT/* leaf, its transfer encoding (base64,
    quoted-printable) undone.  Non-text leaves are skipped (IMAP SEARCH BODY,
    RFC 3501 section 6.4.4, as Dovecot does).  Never raises on bad input.
    """
    root = _parse(message)

    def walk(node: _Node) -> Iterator[tuple[str, Any]]:
        if node.is_multipart:
            for child in node.children:
                yield from walk(child)
        elif node.message is not None:
            yield ("fields", node.message.fields)
            yield from walk(node.message)
        elif node.ctype[0] == "TEXT":
            body = bytes(message[node.body_start : node.end])
            params = node.ctype[2]
            charset = None
            for i in range(0, len(params) - 1, 2):
                if params[i] == "CHARSET":
                    charset = params[i + 1]
                    break
            yield ("text", (_decode_transfer(body, _encoding(node.fields)), charset))

    yield from walk(root)


def _decode_transfer(body: bytes, encoding: str) -> bytes:
    """Undo a Content-Transfer-Encoding (RFC 2045 section 6); anything else stays as it is."""
    try:
        if encoding == "BASE64":
            return binascii.a2b_base64(body)
        if encoding == "QUOTED-PRINTABLE":
            return binascii.a2b_qp(body)
    except (binascii.Error, ValueError):
        pass
    return body


def header_fields(md: MessageMetadata, names: Iterable[str], *, exclude: bool = False) -> bytes:
    """
    Answer ``BODY[HEADER.FIELDS (names)]`` (or ``.NOT`` with *exclude*) for
    the top-level message from its cached header fields.

    Field names match case-insensitively; the fields come out in message
    order with their original octets, a field that lacks a final line end
    gets CRLF, and the result ends with the blank line CRLF.
    """
    return _format_fields(md.headers, names, exclude)


# ---------------------------------------------------------------------------
# Preview text (IMAP PREVIEW, RFC 8970)

#: Most characters of a preview (RFC 8970 section 3.1: "MUST NOT exceed 256 characters").
PREVIEW_LENGTH = 256
#: Octets of a part's encoded body read for its preview: a preview needs the
#: start of the text only, so a huge part costs no more than a small one.
_PREVIEW_OCTETS = 64 * 1024
#: C0 and C1 controls (white space among them becomes a space first).
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f]")


class _HTMLText(html.parser.HTMLParser):
    """The character data of an HTML document, without script, style and head content."""

    _HIDDEN = frozenset({"script", "style", "head", "title", "template"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self._HIDDEN:
            self.hidden += 1
        elif tag in ("br", "p", "div", "li", "tr", "td", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.pieces.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._HIDDEN and self.hidden:
            self.hidden -= 1
        elif tag in ("p", "div", "li", "tr", "td", "h1", "h2", "h3", "h4", "h5", "h6"):
            self.pieces.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(data)


def _html_text(markup: str) -> str:
    parser = _HTMLText()
    try:
        parser.feed(markup)
        parser.close()
    except Exception:  # HTMLParser is lenient; never fail a FETCH on markup
        return html.unescape(re.sub(r"<[^>]*>", " ", markup))
    return "".join(parser.pieces)


def _charset(node: _Node) -> str | None:
    params = node.ctype[2]
    for i in range(0, len(params) - 1, 2):
        if params[i] == "CHARSET":
            return params[i + 1]
    return None


def _decode_text(body: bytes, charset: str | None) -> str:
    """*body* as text: its charset when Python knows it, else UTF-8; bad octets replaced."""
    codec = "utf-8"
    if charset:
        try:
            codec = codecs.lookup(charset.strip().strip('"')).name
        except (LookupError, ValueError):
            codec = "utf-8"
    if codec in ("ascii", "us-ascii"):
        codec = "utf-8"  # 8-bit octets in "US-ASCII" text are most often UTF-8
    return decode_charset(body, codec)


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def decode_charset(data: bytes, charset: str, fallback: str = "utf-8") -> str:
    """
    *data* decoded by *charset* (a name a message gave), bad octets
    replaced; by *fallback* (a text encoding) when that is no text encoding
    Python can decode with replacement.  Never raises: a sender's charset
    parameter can name any codec, and some raise whatever the errors
    handler (``idna``), or give lone surrogates (``utf-7``,
    ``unicode-escape``), which no UTF-8 output (JSON, IMAP) can carry:
    those become U+FFFD.
    """
    try:
        text = data.decode(charset, errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        text = data.decode(fallback, errors="replace")
    return without_lone_surrogates(text)


def without_lone_surrogates(text: str) -> str:
    """*text* with each lone surrogate (which UTF-8 cannot carry) replaced by U+FFFD; pairs joined."""
    if _LONE_SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _preview_part(root: _Node) -> _Node | None:
    """
    The part whose text is the preview: the first TEXT/PLAIN or TEXT/HTML
    leaf that is not an attachment, in message order, and within a
    MULTIPART/ALTERNATIVE the TEXT/PLAIN one before the TEXT/HTML one.
    Encapsulated messages (MESSAGE/RFC822 parts) are not looked into.
    """

    def usable(node: _Node) -> bool:
        if node.ctype[0] != "TEXT" or node.ctype[1] not in ("PLAIN", "HTML"):
            return False
        disposition = _disposition(node.fields)
        return disposition is None or disposition[0] != "ATTACHMENT"

    def find(node: _Node) -> _Node | None:
        if node.is_multipart:
            if node.ctype[1] == "ALTERNATIVE":
                found = [f for f in (find(c) for c in node.children) if f is not None]
                plain = [f for f in found if f.ctype[1] == "PLAIN"]
                return (plain or found or [None])[0]  # type: ignore[list-item]  # None: no part found
            for child in node.children:
                hit = find(child)
                if hit is not None:
                    return hit
            return None
        return node if usable(node) else None

    if root.is_rfc822 and root.message is not None:
        root = root.message
    return find(root)


def preview(message: bytes) -> str:
    """
    The preview of *message* (RFC 8970 section 3.1): at most
    :data:`PREVIEW_LENGTH` characters of its first text part (TEXT/PLAIN
    preferred to TEXT/HTML in a MULTIPART/ALTERNATIVE; HTML without its
    tags, script and style), transfer encoding and charset undone, controls
    dropped and white space collapsed to single spaces.  ``""`` when the
    message has no such text.  No heuristics for quoted replies or
    signatures.  Never raises on bad input; reads at most
    :data:`_PREVIEW_OCTETS` octets of the part's body.
    """
    part = _preview_part(_parse(message))
    if part is None:
        return ""
    body = bytes(message[part.body_start : min(part.end, part.body_start + _PREVIEW_OCTETS)])
    if part.end - part.body_start > _PREVIEW_OCTETS:
        cut = body.rfind(b"\n")
        if cut > 0:
            body = body[: cut + 1]  # whole lines: base64 and quoted-printable stay decodable
    text = _decode_text(_decode_transfer(body, _encoding(part.fields)), _charset(part))
    if part.ctype[1] == "HTML":
        text = _html_text(text)
    text = " ".join(_CONTROLS.sub(" ", text).split())
    return text[:PREVIEW_LENGTH].rstrip()
