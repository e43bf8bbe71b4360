"""
The IMAP4rev1 command grammar (RFC 3501 section 9, with the extensions of
issue 4: IDLE RFC 2177, UIDPLUS RFC 4315, MOVE RFC 6851, NAMESPACE RFC
2342, ID RFC 2971, UNSELECT RFC 3691, ENABLE RFC 5161, LITERAL+ RFC 7888,
LIST-EXTENDED RFC 5258, LIST-STATUS RFC 5819, ESEARCH RFC 4731, SASL-IR RFC
4959, APPENDLIMIT RFC 7889, literal8 RFC 3516).

Input is what :class:`txmail.imap.fragment.CommandFramer` produced for one
command: line pieces and literals.  :func:`parse_command` gives a
:class:`txmail.imap.types.Command` or raises :class:`ParseError`, whose tag
and text make the ``tag BAD text`` answer.  No other exception leaves this
module, whatever the input (tested with hypothesis).

Each rule is a function named after its ABNF rule, taking a
:class:`Cursor` and consuming exactly that rule; the rule is quoted in its
docstring (imap-codec style).

Implementation notes and deviations:

* Keywords (command names, fetch attributes, search keys...) are
  case-insensitive (RFC 3501 section 9, note 3) and upper-cased.
* Quoted strings and literals used as strings may hold UTF-8 (RFC 9051
  section 4.3 allows it in quoted strings); text that is not valid UTF-8
  is refused with BAD, except APPEND's message literal, which is octets.
* Nesting of parenthesised search keys and NOT/OR chains is bounded by
  :data:`MAX_DEPTH`, so hostile input cannot exhaust the stack.
* Numbers are 32-bit unsigned (RFC 3501 section 9, ``number``).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Sequence

from txmail.imap.fragment import Fragment, LineFragment, LiteralFragment
from txmail.imap.types import (
    NO_ARGS,
    Append,
    AppendMessage,
    Authenticate,
    CancelUpdate,
    CatenatePart,
    Command,
    CommandArgs,
    Compress,
    Copy,
    Create,
    Delete,
    Enable,
    Examine,
    Expunge,
    Fetch,
    FetchAttribute,
    GenUrlAuth,
    GetMetadata,
    GetQuota,
    GetQuotaRoot,
    Id,
    List,
    Login,
    Lsub,
    Move,
    Notify,
    NotifyGroup,
    QresyncParam,
    Rename,
    Replace,
    ResetKey,
    Search,
    SearchAnd,
    SearchKey,
    SearchNode,
    SearchNot,
    SearchOr,
    Section,
    Select,
    SequenceSet,
    SetMetadata,
    Sort,
    Status,
    Store,
    Subscribe,
    Thread,
    Unsubscribe,
    UrlFetch,
)

__all__ = [
    "ASTRING_CHARS",
    "ATOM_CHARS",
    "COMMANDS",
    "FETCH_MACROS",
    "LIST_RETURN_OPTIONS",
    "LIST_SELECTION_OPTIONS",
    "MAX_CATENATE_PARTS",
    "MAX_DEPTH",
    "MAX_ENTRY_NAME",
    "MAX_METADATA_ENTRIES",
    "MAX_TAG",
    "MAX_URLAUTH_ITEMS",
    "NOTIFY_EVENTS",
    "SAVED_RESULT",
    "SEARCH_RETURN_OPTIONS",
    "SORT_KEYS",
    "SORT_RETURN_OPTIONS",
    "STATUS_ITEMS",
    "UID_COMMANDS",
    "Cursor",
    "ParseError",
    "astring",
    "atom",
    "date",
    "date_time",
    "decode_mailbox_name",
    "encode_mailbox_name",
    "fetch_att",
    "flag",
    "flag_list",
    "list_mailbox",
    "literal",
    "mailbox",
    "metadata_entry",
    "nstring",
    "number",
    "parse_command",
    "quoted",
    "search_key",
    "section_spec",
    "sequence_set",
    "sequence_set_or_saved",
    "string",
    "tag",
]

#: Deepest nesting of parentheses / NOT / OR in one command.
MAX_DEPTH = 32

#: Longest tag echoed in a reply.
MAX_TAG = 64

#: Longest RFC 5464 entry name, in octets (a literal could otherwise make one
#: as long as a message).
MAX_ENTRY_NAME = 1024

#: Most entries one GETMETADATA asks for, or one SETMETADATA sets (literals
#: could otherwise pack millions into one command).
MAX_METADATA_ENTRIES = 1000

_MAX_NUMBER = 2**32 - 1

_ATOM_SPECIALS = frozenset(b'(){ %*"\\]')
#: ATOM-CHAR = <any CHAR except atom-specials>
ATOM_CHARS = frozenset(c for c in range(0x21, 0x7F) if c not in _ATOM_SPECIALS)
#: ASTRING-CHAR = ATOM-CHAR / resp-specials
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
_TAG_CHARS = ASTRING_CHARS - {ord("+")}
#: list-char = ATOM-CHAR / list-wildcards / resp-specials
_LIST_CHARS = ASTRING_CHARS | {ord("%"), ord("*")}
_DIGITS = frozenset(b"0123456789")

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")

#: STATUS items (RFC 3501 section 6.3.10, RFC 7889 APPENDLIMIT, RFC 8438 SIZE).
STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "RECENT",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "APPENDLIMIT",
        "SIZE",
        "DELETED",
        "DELETED-STORAGE",
        "HIGHESTMODSEQ",  # RFC 7162 section 3.1.7
        "MAILBOXID",  # RFC 8474 section 4
    }
)


#: LIST selection options (RFC 5258 section 3.1, RFC 6154 section 5.1).
LIST_SELECTION_OPTIONS = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
#: The selection options RECURSIVEMATCH can modify (RFC 5258 section 3.1).
_LIST_BASE_OPTIONS = frozenset({"SUBSCRIBED", "SPECIAL-USE"})
#: LIST return options (RFC 5258 section 3.2, RFC 5819 STATUS, RFC 6154 SPECIAL-USE).
LIST_RETURN_OPTIONS = frozenset({"SUBSCRIBED", "CHILDREN", "STATUS", "SPECIAL-USE"})


class ParseError(Exception):
    """
    The command does not match the grammar: answer ``tag BAD text``
    (``* BAD text`` when ``tag`` is ``None``).  ``text`` never holds input.
    """

    def __init__(self, tag: str | None, text: str) -> None:
        super().__init__(tag, text)
        self.tag = tag
        self.text = text


class Cursor:
    """A position in one command's fragments; each rule function consumes one rule."""

    def __init__(self, fragments: Sequence[Fragment]) -> None:
        self.fragments = list(fragments) or [LineFragment(b"")]
        if not isinstance(self.fragments[0], LineFragment):
            self.fragments.insert(0, LineFragment(b""))
        self.index = 0
        self.line = self.fragments[0].data
        self.pos = 0
        self.depth = 0
        self.tag: str | None = None
        #: A mailbox name was a valid astring but not modified UTF-7.
        self.invalid_name = False
        #: The session enabled UTF8=ACCEPT (RFC 6855): names are UTF-8.
        self.utf8 = False
        #: Names are UTF-8 without the rest of UTF8=ACCEPT (IMAP4rev2, RFC 9051 section 5.1).
        self.utf8_names = False

    @classmethod
    def of(cls, data: bytes) -> Cursor:
        """A cursor over one line without literals (for tests and tools)."""
        return cls([LineFragment(data)])

    def fail(self, what: str) -> ParseError:
        return ParseError(self.tag, what)

    def peek(self) -> int:
        """The next octet of the current line piece, ``-1`` at its end."""
        return self.line[self.pos] if self.pos < len(self.line) else -1

    def at_literal(self) -> bool:
        return (
            self.pos >= len(self.line)
            and self.index + 1 < len(self.fragments)
            and isinstance(self.fragments[self.index + 1], LiteralFragment)
        )

    def take_literal(self) -> LiteralFragment:
        frag = self.fragments[self.index + 1]
        assert isinstance(frag, LiteralFragment)
        self.index += 2
        if self.index < len(self.fragments) and isinstance(self.fragments[self.index], LineFragment):
            self.line = self.fragments[self.index].data
        else:
            self.index = len(self.fragments) - 1
            self.line = b""
        self.pos = 0
        return frag

    def at_end(self) -> bool:
        return self.pos >= len(self.line) and self.index + 1 >= len(self.fragments)

    def end(self) -> None:
        if not self.at_end():
            raise self.fail("Unexpected text at end of command")

    def expect(self, text: bytes) -> None:
        if self.line[self.pos : self.pos + len(text)].upper() != text.upper():
            raise self.fail(f"Expected {text.decode('ascii')!r}")
        self.pos += len(text)

    def accept(self, text: bytes) -> bool:
        if self.line[self.pos : self.pos + len(text)].upper() == text.upper():
            self.pos += len(text)
            return True
        return False

    def sp(self) -> None:
        """SP = %x20"""
        if self.peek() != 0x20:
            raise self.fail("Expected a space")
        self.pos += 1

    def take_while(self, chars: frozenset[int]) -> bytes:
        start = self.pos
        line = self.line
        while self.pos < len(line) and line[self.pos] in chars:
            self.pos += 1
        return line[start : self.pos]

    def keyword(self) -> str:
        """An upper-cased run of letters, digits, ``.`` and ``-`` (a keyword of the grammar)."""
        word = self.take_while(_KEYWORD_CHARS)
        if not word:
            raise self.fail("Expected a keyword")
        return word.decode("ascii").upper()

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail("Too deeply nested")

    def leave(self) -> None:
        self.depth -= 1


_KEYWORD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")


def _utf8(c: Cursor, data: bytes) -> str:
    if 0 in data:
        raise c.fail("NUL in string")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise c.fail("String is not UTF-8") from None


# -- basic rules -------------------------------------------------------------


def tag(c: Cursor) -> str:
    """
    tag = 1*<any ASTRING-CHAR except "+">
    """
    word = c.take_while(_TAG_CHARS)
    if not word:
        raise c.fail("Missing tag")
    if len(word) > MAX_TAG:
        # Not echoed: the BAD goes out untagged (as txmail.imap.fragment does).
        raise c.fail("Tag too long")
    c.tag = word.decode("ascii")
    return c.tag


def atom(c: Cursor) -> str:
    """
    atom = 1*ATOM-CHAR
    """
    word = c.take_while(ATOM_CHARS)
    if not word:
        raise c.fail("Expected an atom")
    return word.decode("ascii")


def number(c: Cursor, nonzero: bool = False) -> int:
    """
    number = 1*DIGIT  ; unsigned 32-bit integer
    nz-number = digit-nz *DIGIT  (when *nonzero*)
    """
    digits = c.take_while(_DIGITS)
    if not digits or len(digits) > 10:
        raise c.fail("Expected a number")
    value = int(digits)
    if value > _MAX_NUMBER or (nonzero and value == 0):
        raise c.fail("Number out of range")
    return value


def quoted(c: Cursor) -> str:
    """
    quoted = DQUOTE *QUOTED-CHAR DQUOTE
    QUOTED-CHAR = <any TEXT-CHAR except quoted-specials> / "\\" quoted-specials
    """
    if c.peek() != 0x22:
        raise c.fail("Expected a quoted string")
    c.pos += 1
    out = bytearray()
    line = c.line
    while True:
        if c.pos >= len(line):
            raise c.fail("Unterminated quoted string")
        ch = line[c.pos]
        if ch == 0x22:
            c.pos += 1
            return _utf8(c, bytes(out))
        if ch == 0x5C:
            nxt = line[c.pos + 1] if c.pos + 1 < len(line) else -1
            if nxt not in (0x22, 0x5C):
                raise c.fail("Bad escape in quoted string")
            out.append(nxt)
            c.pos += 2
            continue
        if ch in (0x0D, 0x0A, 0):
            raise c.fail("Bad character in quoted string")
        out.append(ch)
        c.pos += 1


def literal(c: Cursor) -> bytes:
    """
    literal = "{" number ["+"] "}" CRLF *CHAR8  ; the framer took the marker out
    """
    if not c.at_literal():
        raise c.fail("Expected a literal")
    return c.take_literal().data


def string(c: Cursor) -> str:
    """
    string = quoted / literal
    """
    if c.at_literal():
        return _utf8(c, literal(c))
    return quoted(c)


def astring(c: Cursor) -> str:
    """
    astring = 1*ASTRING-CHAR / string
    """
    if c.at_literal() or c.peek() == 0x22:
        return string(c)
    word = c.take_while(ASTRING_CHARS)
    if not word:
        raise c.fail("Expected a string")
    return word.decode("ascii")


def nstring(c: Cursor) -> str | None:
    """
    nstring = string / nil
    nil = "NIL"
    """
    if c.at_literal() or c.peek() == 0x22:
        return string(c)
    c.expect(b"NIL")
    return None


# -- mailbox names (RFC 3501 section 5.1 and 5.1.3) --------------------------

_PRINTABLE_ASCII = re.compile(r"[ -~]*")
_B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,"
_B64_INDEX = {ch: i for i, ch in enumerate(_B64)}


def decode_mailbox_name(name: str) -> str:
    """
    Decode a mailbox name from modified UTF-7 (RFC 3501 section 5.1.3).

    Strict: ``&`` must start a shift (``&-`` is ``&``), the base64 must be
    modified base64 of UTF-16 with zero padding bits, and a shift must not
    encode printable ASCII.

    Raises:
        ValueError: *name* is not valid modified UTF-7.
    """
    if "&" not in name:
        if _PRINTABLE_ASCII.fullmatch(name) is None:
            # Controls too: they must be encoded like any character outside 0x20-0x7E.
            raise ValueError("octet outside printable ASCII")
        return name
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if not " " <= ch <= "~":
            raise ValueError("octet outside printable ASCII")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated shift")
        encoded = name[i + 1 : end]
        i = end + 1
        if not encoded:
            out.append("&")
            continue
        bits = 0
        nbits = 0
        units = bytearray()
        for b in encoded.encode("ascii"):
            if b not in _B64_INDEX:
                raise ValueError("bad modified base64")
            bits = (bits << 6) | _B64_INDEX[b]
            nbits += 6
            if nbits >= 8:
                nbits -= 8
                units.append((bits >> nbits) & 0xFF)
        if nbits >= 6 or bits & ((1 << nbits) - 1) or len(units) % 2:
            raise ValueError("bad modified base64 padding")
        text = units.decode("utf-16-be")  # raises UnicodeDecodeError (a ValueError)
        if any(" " <= t <= "~" for t in text):
            raise ValueError("printable ASCII inside a shift")
        out.append(text)
    return "".join(out)


def encode_mailbox_name(name: str) -> str:
    """Encode a mailbox name in modified UTF-7 (RFC 3501 section 5.1.3)."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if not pending:
            return
        data = "".join(pending).encode("utf-16-be", "surrogatepass")
        bits = 0
        nbits = 0
        chars = []
        for b in data:
            bits = (bits << 8) | b
            nbits += 8
            while nbits >= 6:
                nbits -= 6
                chars.append(_B64[(bits >> nbits) & 0x3F])
        if nbits:
            chars.append(_B64[(bits << (6 - nbits)) & 0x3F])
        out.append("&" + bytes(chars).decode("ascii") + "-")
        pending.clear()

    for ch in name:
        if " " <= ch <= "~":
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def _decode_name(c: Cursor, raw: str) -> str:
    """
    *raw* decoded from modified UTF-7; when it is not valid modified UTF-7
    the command is still well-formed (the grammar only asks for an
    astring): *raw* is returned and the cursor's ``invalid_name`` set, and
    the command is answered NO (RFC 3501 section 6.3.1) or, for LIST, OK
    without results.  After ENABLE UTF8=ACCEPT the name is UTF-8 as it
    came (RFC 6855 section 3).
    """
    if c.utf8 or c.utf8_names:
        return raw
    try:
        return decode_mailbox_name(raw)
    except ValueError:
        c.invalid_name = True
        return raw


def mailbox(c: Cursor) -> str:
    """
    mailbox = "INBOX" / astring
        ; INBOX is case-insensitive.  All case variants of INBOX (e.g.,
        ; "iNbOx") MUST be interpreted as INBOX not as an astring.

    The name is decoded from modified UTF-7 (RFC 3501 section 5.1.3).
    """
    name = astring(c)
    if name.upper() == "INBOX":
        return "INBOX"
    return _decode_name(c, name)


def list_mailbox(c: Cursor) -> str:
    """
    list-mailbox = 1*list-char / string
    list-char = ATOM-CHAR / list-wildcards / resp-specials
    """
    if c.at_literal() or c.peek() == 0x22:
        name = string(c)
    else:
        word = c.take_while(_LIST_CHARS)
        if not word:
            raise c.fail("Expected a mailbox pattern")
        name = word.decode("ascii")
    return _decode_name(c, name)


# -- flags -------------------------------------------------------------------


def flag(c: Cursor) -> str:
    """
    flag = "\\Answered" / "\\Flagged" / "\\Deleted" / "\\Seen" / "\\Draft" /
           flag-keyword / flag-extension
    flag-keyword = atom
    flag-extension = "\\" atom

    System flags are spelled canonically (``\\seen`` gives ``\\Seen``).
    ``\\Recent`` cannot be set by a client and is refused.
    """
    if c.peek() == 0x5C:
        c.pos += 1
        name = "\\" + atom(c)
        canonical = _SYSTEM_FLAGS.get(name.upper(), name)
        if canonical == "\\Recent":
            raise c.fail("\\Recent cannot be set")
        return canonical
    return atom(c)


_SYSTEM_FLAGS = {
    f.upper(): f for f in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}


def flag_list(c: Cursor) -> tuple[str, ...]:
    """
    flag-list = "(" [flag *(SP flag)] ")"
    """
    c.expect(b"(")
    flags: list[str] = []
    if not c.accept(b")"):
        flags.append(flag(c))
        while not c.accept(b")"):
            c.sp()
            flags.append(flag(c))
    return tuple(flags)


# -- sequence sets -------------------------------------------------------------


def _seq_number(c: Cursor) -> int | None:
    """seq-number = nz-number / "*" """
    if c.accept(b"*"):
        return None
    return number(c, nonzero=True)


def sequence_set(c: Cursor) -> SequenceSet:
    """
    sequence-set = (seq-number / seq-range) *("," sequence-set)
    seq-range = seq-number ":" seq-number
    seq-number = nz-number / "*"
    """
    ranges: list[tuple[int | None, int | None]] = []
    while True:
        first = _seq_number(c)
        last = _seq_number(c) if c.accept(b":") else first
        ranges.append((first, last))
        if not c.accept(b","):
            return SequenceSet(tuple(ranges))


#: ``$`` (RFC 5182 section 2.1).
SAVED_RESULT = SequenceSet((), saved=True)


def sequence_set_or_saved(c: Cursor) -> SequenceSet:
    """
    sequence-set =/ seq-last-command ; seq-last-command = "$"  (RFC 5182 section 4)

    ``$`` stands alone: ``1,$`` is BAD.
    """
    if c.accept(b"$"):
        return SAVED_RESULT
    return sequence_set(c)


# -- dates -------------------------------------------------------------------


def _month(c: Cursor) -> int:
    word = c.line[c.pos : c.pos + 3].decode("latin-1").upper()
    if word not in _MONTHS:
        raise c.fail("Bad month")
    c.pos += 3
    return _MONTHS.index(word) + 1


def _digits(c: Cursor, n: int) -> int:
    text = c.line[c.pos : c.pos + n]
    if len(text) != n or any(ch not in _DIGITS for ch in text):
        raise c.fail("Bad date")
    c.pos += n
    return int(text)


def date(c: Cursor) -> datetime.date:
    """
    date = date-text / DQUOTE date-text DQUOTE
    date-text = date-day "-" date-month "-" date-year
    date-day = 1*2DIGIT
    """
    q = c.accept(b'"')
    day = _digits(c, 2) if c.line[c.pos + 1 : c.pos + 2] in _DIGIT_BYTES else _digits(c, 1)
    c.expect(b"-")
    month = _month(c)
    c.expect(b"-")
    year = _digits(c, 4)
    if q:
        c.expect(b'"')
    try:
        return datetime.date(year, month, day)
    except ValueError:
        raise c.fail("Bad date") from None


_DIGIT_BYTES = frozenset(bytes([d]) for d in b"0123456789")


def date_time(c: Cursor) -> datetime.datetime:
    """
    date-time = DQUOTE date-day-fixed "-" date-month "-" date-year
                SP time SP zone DQUOTE
    date-day-fixed = (SP DIGIT) / 2DIGIT
    time = 2DIGIT ":" 2DIGIT ":" 2DIGIT
    zone = ("+" / "-") 4DIGIT
    """
    c.expect(b'"')
    day = _digits(c, 1) if c.accept(b" ") else _digits(c, 2)
    c.expect(b"-")
    month = _month(c)
    c.expect(b"-")
    year = _digits(c, 4)
    c.sp()
    hour = _digits(c, 2)
    c.expect(b":")
    minute = _digits(c, 2)
    c.expect(b":")
    second = _digits(c, 2)
    c.sp()
    sign = c.peek()
    if sign not in (0x2B, 0x2D):
        raise c.fail("Bad zone")
    c.pos += 1
    zh = _digits(c, 2)
    zm = _digits(c, 2)
    c.expect(b'"')
    offset = datetime.timedelta(hours=zh, minutes=zm) * (1 if sign == 0x2B else -1)
    try:
        return datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone(offset))
    except ValueError:
        raise c.fail("Bad date-time") from None


# -- FETCH -------------------------------------------------------------------

_SIMPLE_FETCH = frozenset(
    {
        "MODSEQ",  # RFC 7162 section 3.1.4.2
        "SAVEDATE",  # RFC 8514 section 4.2
        "EMAILID",  # RFC 8474 section 5.1
        "THREADID",  # RFC 8474 section 5.2
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
    }
)

#: RFC 3501 section 6.4.5: the macros.
FETCH_MACROS: dict[str, tuple[FetchAttribute, ...]] = {
    "ALL": tuple(FetchAttribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE")),
    "FAST": tuple(FetchAttribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE")),
    "FULL": tuple(FetchAttribute(n) for n in ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY")),
}


def _header_list(c: Cursor) -> tuple[str, ...]:
    """header-list = "(" header-fld-name *(SP header-fld-name) ")" ; header-fld-name = astring"""
    c.expect(b"(")
    names = [astring(c).upper()]
    while not c.accept(b")"):
        c.sp()
        names.append(astring(c).upper())
    return tuple(names)


def section_spec(c: Cursor) -> Section:
    """
    section-spec = section-msgtext / (section-part ["." section-text])
    section-msgtext = "HEADER" / "HEADER.FIELDS" [".NOT"] SP header-list / "TEXT"
    section-part = nz-number *("." nz-number)
    section-text = section-msgtext / "MIME"
    """
    parts: list[int] = []
    while c.peek() in _DIGITS:
        parts.append(number(c, nonzero=True))
        if not c.accept(b"."):
            return Section(tuple(parts))
    if parts and c.peek() == -1:
        raise c.fail("Bad section")
    word = c.keyword()
    if word in ("HEADER", "TEXT") or (word == "MIME" and parts):
        return Section(tuple(parts), word)
    if word in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        c.sp()
        return Section(tuple(parts), word, _header_list(c))
    raise c.fail("Bad section")


def _section(c: Cursor) -> Section:
    """section = "[" [section-spec] "]" """
    c.expect(b"[")
    if c.accept(b"]"):
        return Section()
    spec = section_spec(c)
    c.expect(b"]")
    return spec


def fetch_att(c: Cursor) -> FetchAttribute:
    """
    fetch-att = "ENVELOPE" / "FLAGS" / "INTERNALDATE" /
                "RFC822" [".HEADER" / ".SIZE" / ".TEXT"] /
                "BODY" ["STRUCTURE"] / "UID" /
                "BODY" section ["<" number "." nz-number ">"] /
                "BODY.PEEK" section ["<" number "." nz-number ">"]
    """
    name = c.keyword()
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        return _binary_att(c, name)
    if name == "PREVIEW":
        return _preview_att(c)
    if c.peek() == ord("["):
        if name not in ("BODY", "BODY.PEEK"):
            raise c.fail("Bad fetch attribute")
        section = _section(c)
        return FetchAttribute("BODY", section, _partial(c), name == "BODY.PEEK")
    if name not in _SIMPLE_FETCH:
        raise c.fail("Bad fetch attribute")
    return FetchAttribute(name)


def _preview_att(c: Cursor) -> FetchAttribute:
    """
    fetch-att   =/ "PREVIEW" [SP "(" preview-mod *(SP preview-mod) ")"]
    preview-mod =  "LAZY"                                  ; RFC 8970 section 7

    ``LAZY`` changes nothing here: the preview is always computed, which
    RFC 8970 section 3.2 allows.
    """
    if c.accept(b" ("):
        while True:
            if c.keyword() != "LAZY":
                raise c.fail("Unknown PREVIEW modifier")
            if c.accept(b")"):
                break
            c.sp()
    return FetchAttribute("PREVIEW")


def _binary_att(c: Cursor, name: str) -> FetchAttribute:
    """
    fetch-att =/ "BINARY" [".PEEK"] section-binary [partial] /
                 "BINARY.SIZE" section-binary              ; RFC 3516 section 4.2
    section-binary = "[" [section-part] "]"
    partial = "<" number "." nz-number ">"

    ``BINARY.SIZE`` is a peek: it does not set ``\\Seen``.
    """
    c.expect(b"[")
    parts: list[int] = []
    if not c.accept(b"]"):
        parts.append(number(c, nonzero=True))
        while c.accept(b"."):
            parts.append(number(c, nonzero=True))
        c.expect(b"]")
    section = Section(tuple(parts))
    if name == "BINARY.SIZE":
        return FetchAttribute(name, section, None, True)
    return FetchAttribute("BINARY", section, _partial(c), name == "BINARY.PEEK")


def _partial(c: Cursor) -> tuple[int, int] | None:
    """[partial]: partial = "<" number "." nz-number ">" (RFC 3501 section 9)"""
    if not c.accept(b"<"):
        return None
    offset = number(c)
    c.expect(b".")
    length = number(c, nonzero=True)
    c.expect(b">")
    return offset, length


def _fetch_items(c: Cursor) -> tuple[FetchAttribute, ...]:
    """("ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")")"""
    if c.accept(b"("):
        items = [fetch_att(c)]
        while not c.accept(b")"):
            c.sp()
            items.append(fetch_att(c))
        return tuple(items)
    start = c.pos
    word = c.keyword()
    if word in FETCH_MACROS and c.peek() != ord("["):
        return FETCH_MACROS[word]
    c.pos = start
    return (fetch_att(c),)


# -- SEARCH ------------------------------------------------------------------

_SEARCH_FLAGS = frozenset(
    {
        "ALL",
        "ANSWERED",
        "DELETED",
        "DRAFT",
        "FLAGGED",
        "NEW",
        "OLD",
        "RECENT",
        "SAVEDATESUPPORTED",  # RFC 8514 section 4.3
        "SEEN",
        "UNANSWERED",
        "UNDELETED",
        "UNDRAFT",
        "UNFLAGGED",
        "UNSEEN",
    }
)
_SEARCH_STRING = frozenset({"BCC", "BODY", "CC", "FROM", "SUBJECT", "TEXT", "TO"})
_SEARCH_DATE = frozenset(
    {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE", "SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"}
)
#: RFC 8474 section 6: ``"EMAILID" SP objectid / "THREADID" SP objectid``.
_SEARCH_OBJECTID = frozenset({"EMAILID", "THREADID"})


def search_key(c: Cursor) -> SearchNode:
    """
    search-key = "ALL" / "ANSWERED" / "BCC" SP astring /
                 "BEFORE" SP date / "BODY" SP astring /
                 "CC" SP astring / "DELETED" / "FLAGGED" /
                 "FROM" SP astring / "KEYWORD" SP flag-keyword /
                 "NEW" / "OLD" / "ON" SP date / "RECENT" / "SEEN" /
                 "SINCE" SP date / "SUBJECT" SP astring /
                 "TEXT" SP astring / "TO" SP astring /
                 "UNANSWERED" / "UNDELETED" / "UNFLAGGED" /
                 "UNKEYWORD" SP flag-keyword / "UNSEEN" /
                   ; Above this line were in [IMAP2]
                 "DRAFT" / "HEADER" SP header-fld-name SP astring /
                 "LARGER" SP number / "NOT" SP search-key /
                 "OR" SP search-key SP search-key /
                 "SENTBEFORE" SP date / "SENTON" SP date /
                 "SENTSINCE" SP date / "SMALLER" SP number /
                 "UID" SP sequence-set / "UNDRAFT" / sequence-set /
                 "(" search-key *(SP search-key) ")"
    """
    c.enter()
    try:
        ch = c.peek()
        if ch in _DIGITS or ch == ord("*") or ch == ord("$"):
            return SearchKey("SEQUENCE", (sequence_set_or_saved(c),))
        if c.accept(b"("):
            keys = [search_key(c)]
            while not c.accept(b")"):
                c.sp()
                keys.append(search_key(c))
            return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
        word = c.keyword()
        if word in _SEARCH_FLAGS:
            return SearchKey(word)
        c.sp()
        if word in _SEARCH_STRING:
            return SearchKey(word, (astring(c),))
        if word in _SEARCH_DATE:
            return SearchKey(word, (date(c),))
        if word in ("KEYWORD", "UNKEYWORD"):
            return SearchKey(word, (atom(c),))
        if word == "HEADER":
            name = astring(c)
            c.sp()
            return SearchKey(word, (name, astring(c)))
        if word in ("LARGER", "SMALLER"):
            return SearchKey(word, (number(c),))
        if word == "UID":
            return SearchKey(word, (sequence_set_or_saved(c),))
        if word == "MODSEQ":
            return _search_modseq(c)
        if word in _SEARCH_OBJECTID:
            return SearchKey(word, (objectid(c),))
        if word == "NOT":
            return SearchNot(search_key(c))
        if word == "OR":
            left = search_key(c)
            c.sp()
            return SearchOr(left, search_key(c))
        raise c.fail("Unknown search key")
    finally:
        c.leave()


#: objectid = 1*255(ALPHA / DIGIT / "_" / "-")  (RFC 8474 section 7)
_OBJECTID_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def objectid(c: Cursor) -> str:
    """``objectid = 1*255(ALPHA / DIGIT / "_" / "-")`` (RFC 8474 section 7); case-sensitive."""
    text = c.take_while(_OBJECTID_CHARS)
    if not text or len(text) > 255:
        raise c.fail("Expected an object id")
    return text.decode("ascii")


def mod_sequence_value(c: Cursor, nonzero: bool = True) -> int:
    """
    mod-sequence-value  = 1*DIGIT  ; 1 <= n <= 9,223,372,036,854,775,807 (RFC 7162 section 7)
    mod-sequence-valzer = "0" / mod-sequence-value  (when not *nonzero*)
    """
    digits = c.take_while(_DIGITS)
    if not digits or len(digits) > 19:
        raise c.fail("Expected a mod-sequence")
    value = int(digits)
    if value > 2**63 - 1 or (nonzero and value == 0):
        raise c.fail("Mod-sequence out of range")
    return value


def _search_modseq(c: Cursor) -> SearchKey:
    """
    search-modsequence = "MODSEQ" [search-modseq-ext] SP mod-sequence-valzer
    search-modseq-ext  = SP entry-name SP entry-type-req   (RFC 7162 section 7)
    entry-type-req     = "priv" / "shared" / "all"

    Flags have no private or shared mod-sequences of their own here: the
    entry is checked and dropped.
    """
    if c.peek() == 0x22:
        quoted(c)
        c.sp()
        if c.keyword() not in ("PRIV", "SHARED", "ALL"):
            raise c.fail("Expected priv, shared or all")
        c.sp()
    return SearchKey("MODSEQ", (mod_sequence_value(c, nonzero=False),))


def _modifiers(c: Cursor, names: tuple[str, ...]) -> dict[str, int]:
    """
    A parenthesised list of ``NAME mod-sequence-valzer`` modifiers
    (``(CHANGEDSINCE n)``, ``(UNCHANGEDSINCE n)``; RFC 7162 section 7), each
    of *names* at most once.
    """
    c.expect(b"(")
    found: dict[str, int] = {}
    while True:
        word = c.keyword()
        if word not in names or word in found:
            raise c.fail("Unknown or repeated modifier")
        c.sp()
        found[word] = mod_sequence_value(c, nonzero=word != "UNCHANGEDSINCE")
        if c.accept(b")"):
            return found
        c.sp()


def _paren_words(c: Cursor) -> tuple[str, ...]:
    """ "(" [keyword *(SP keyword)] ")" , upper-cased"""
    c.expect(b"(")
    words: list[str] = []
    if not c.accept(b")"):
        words.append(c.keyword())
        while not c.accept(b")"):
            c.sp()
            words.append(c.keyword())
    return tuple(words)


#: RFC 4731 section 3.1 and RFC 5267 section 4 (CONTEXT=SEARCH, CONTEXT=SORT): the search return options.
#: RFC 4731 section 3.1, RFC 5267 section 5, and RFC 5182's SAVE (SEARCH only).
SEARCH_RETURN_OPTIONS = frozenset({"MIN", "MAX", "ALL", "COUNT", "CONTEXT", "UPDATE", "PARTIAL", "SAVE"})


def _return_options(
    c: Cursor, allowed: frozenset[str] = SEARCH_RETURN_OPTIONS
) -> tuple[tuple[str, ...], tuple[int, int] | None]:
    """
    "(" [search-return-opt *(SP search-return-opt)] ")", upper-cased, and PARTIAL's range::

        search-return-opt =/ modifier-context / modifier-partial / modifier-update
        modifier-partial  = "PARTIAL" SP partial-range
        partial-range     = nz-number ":" nz-number   ; 500:400 is 400:500

    (RFC 4731 section 3.1, RFC 5267 section 5).  An unknown or repeated
    option, a repeated PARTIAL or UPDATE, and PARTIAL with ALL (section
    4.4) are BAD.
    """
    c.expect(b"(")
    words: list[str] = []
    partial = None
    while not c.accept(b")"):
        if words:
            c.sp()
        word = c.keyword()
        if word not in allowed:
            raise c.fail("Unknown search return option")
        if word in words and word in ("PARTIAL", "UPDATE"):
            raise c.fail(f"Repeated {word}")
        words.append(word)
        if word == "PARTIAL":
            c.sp()
            low = number(c, nonzero=True)
            c.expect(b":")
            high = number(c, nonzero=True)
            partial = (min(low, high), max(low, high))
    if partial is not None and "ALL" in words:
        raise c.fail("PARTIAL conflicts with ALL")
    return tuple(words), partial


def _search(c: Cursor, uid: bool) -> Search:
    """
    search = "SEARCH" [search-return-opts] [SP "CHARSET" SP astring] 1*(SP search-key)
    search-return-opts = SP "RETURN" SP "(" [search-return-opt *(SP search-return-opt)] ")"
    """
    c.sp()
    options = partial = None
    start = c.pos
    if c.accept(b"RETURN ("):
        c.pos -= 1
        options, partial = _return_options(c)
        c.sp()
        start = c.pos
    charset = None
    if c.accept(b"CHARSET "):
        if c.utf8:  # RFC 6855 section 3: "it SHOULD reject the command with a BAD response"
            raise c.fail("SEARCH CHARSET is not allowed after ENABLE UTF8=ACCEPT")
        charset = astring(c).upper()
        c.sp()
    else:
        c.pos = start
    keys = [search_key(c)]
    while not c.at_end():
        c.sp()
        keys.append(search_key(c))
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(charset, key, uid, options, partial)


# -- SORT and THREAD (RFC 5256, RFC 5957, RFC 5267) ---------------------------

#: RFC 5256 section 4 sort-key, and RFC 5957's DISPLAYFROM / DISPLAYTO.
SORT_KEYS = frozenset({"ARRIVAL", "CC", "DATE", "FROM", "SIZE", "SUBJECT", "TO", "DISPLAYFROM", "DISPLAYTO"})
#: RFC 5267 sections 3.2 and 4: the ESORT and CONTEXT=SORT return options.
SORT_RETURN_OPTIONS = SEARCH_RETURN_OPTIONS - {"SAVE"}


def _search_program(c: Cursor) -> tuple[str, SearchNode]:
    """search-charset 1*(SP search-key), the charset upper-cased (RFC 5256 section 4)."""
    charset = astring(c).upper()
    if c.utf8 and charset != "UTF-8":  # RFC 6855 section 3 (erratum 4029): BAD
        raise c.fail("Only UTF-8 is allowed after ENABLE UTF8=ACCEPT")
    keys = []
    while not c.at_end():
        c.sp()
        keys.append(search_key(c))
    if not keys:
        raise c.fail("Missing search key")
    return charset, keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))


def _sort(c: Cursor, uid: bool) -> Sort:
    """
    sort = ["UID" SP] "SORT" [SP sort-return-opts] SP sort-criteria SP search-charset 1*(SP search-key)
    sort-criteria = "(" sort-criterion *(SP sort-criterion) ")"
    sort-criterion = ["REVERSE" SP] sort-key
    sort-return-opts = "RETURN" SP "(" [sort-return-opt *(SP sort-return-opt)] ")"
    (RFC 5256 section 4, RFC 5957 section 4, RFC 5267 section 3.2)
    """
    c.sp()
    options = partial = None
    if c.accept(b"RETURN "):
        options, partial = _return_options(c, SORT_RETURN_OPTIONS)
        c.sp()
    c.expect(b"(")
    criteria: list[tuple[str, bool]] = []
    while True:
        word = c.keyword()
        reverse = word == "REVERSE"
        if reverse:
            c.sp()
            word = c.keyword()
        if word not in SORT_KEYS:
            raise c.fail("Unknown sort key")
        criteria.append((word, reverse))
        if c.accept(b")"):
            break
        c.sp()
    c.sp()
    charset, key = _search_program(c)
    return Sort(tuple(criteria), charset, key, uid, options, partial)


def _thread(c: Cursor, uid: bool) -> Thread:
    """thread = ["UID" SP] "THREAD" SP thread-alg SP search-charset 1*(SP search-key) (RFC 5256 section 4)"""
    c.sp()
    algorithm = atom(c).upper()
    c.sp()
    charset, key = _search_program(c)
    return Thread(algorithm, charset, key, uid)


# -- the commands --------------------------------------------------------------


def _no_args(c: Cursor, uid: bool) -> CommandArgs:
    return NO_ARGS


def _one_mailbox(cls: Callable[[str], CommandArgs]) -> Callable[[Cursor, bool], CommandArgs]:
    def parse(c: Cursor, uid: bool) -> CommandArgs:
        c.sp()
        return cls(mailbox(c))

    return parse


def _create(c: Cursor, uid: bool) -> Create:
    """
    create = "CREATE" SP mailbox [create-params]               ; RFC 4466 section 2.2
    create-params = SP "(" create-param *(SP create-param) ")"
    create-param =/ "USE" SP "(" [use-attr *(SP use-attr)] ")"  ; RFC 6154 section 6
    use-attr = "\\All" / "\\Archive" / ... / use-attr-ext ; use-attr-ext = "\\" atom
    """
    c.sp()
    box = mailbox(c)
    if c.at_end():
        return Create(box)
    c.sp()
    c.expect(b"(")
    uses: list[str] = []
    while True:
        if c.keyword() != "USE":
            raise c.fail("Unknown CREATE parameter")
        c.sp()
        c.expect(b"(")
        if not c.accept(b")"):
            c.expect(b"\\")
            uses.append("\\" + atom(c))
            while not c.accept(b")"):
                c.sp()
                c.expect(b"\\")
                uses.append("\\" + atom(c))
        if c.accept(b")"):
            return Create(box, tuple(uses))
        c.sp()


def _authenticate(c: Cursor, uid: bool) -> Authenticate:
    """authenticate = "AUTHENTICATE" SP auth-type [SP (base64 / "=")]  ; RFC 4959"""
    c.sp()
    mech = atom(c).upper()
    if c.at_end():
        return Authenticate(mech)
    c.sp()
    if c.accept(b"="):
        return Authenticate(mech, "")
    data = c.take_while(_BASE64_CHARS)
    if not data:
        raise c.fail("Bad initial response")
    return Authenticate(mech, data.decode("ascii"))


_BASE64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


def _login(c: Cursor, uid: bool) -> Login:
    """login = "LOGIN" SP userid SP password ; userid = astring ; password = astring"""
    c.sp()
    user = astring(c)
    c.sp()
    return Login(user, astring(c))


def _rename(c: Cursor, uid: bool) -> Rename:
    """rename = "RENAME" SP mailbox SP mailbox"""
    c.sp()
    old = mailbox(c)
    c.sp()
    return Rename(old, mailbox(c))


def _list(c: Cursor, uid: bool) -> List:
    """
    list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    list-select-opts = "(" [list-select-option *(SP list-select-option)] ")"
    mbox-or-pat = list-mailbox / patterns
    patterns = "(" list-mailbox *(SP list-mailbox) ")"
    list-return-opts = "RETURN" SP "(" [return-option *(SP return-option)] ")"
    """
    c.sp()
    selection: tuple[str, ...] = ()
    if c.peek() == ord("("):
        selection = _paren_words(c)
        _check_selection(c, selection)
        c.sp()
    ref = mailbox(c)
    bad_ref = c.invalid_name
    c.sp()
    patterns: list[str] = []
    grouped = c.accept(b"(")
    while True:
        c.invalid_name = False
        pattern = list_mailbox(c)
        if not c.invalid_name and not bad_ref:
            # A pattern that is not modified UTF-7 matches nothing.
            patterns.append(pattern)
        if not grouped or c.accept(b")"):
            break
        c.sp()
    c.invalid_name = not patterns
    returns: list[str] = []
    status_items = None
    if not c.at_end():
        c.sp()
        c.expect(b"RETURN (")
        if not c.accept(b")"):
            while True:
                word = c.keyword()
                if word not in LIST_RETURN_OPTIONS:
                    # RFC 5258 section 3: unknown return options get BAD.
                    raise c.fail("Unknown LIST return option")
                returns.append(word)
                if word == "STATUS":  # RFC 5819
                    c.sp()
                    status_items = _status_items(c)
                if c.accept(b")"):
                    break
                c.sp()
    return List(ref, tuple(patterns), selection, tuple(returns), status_items)


def _check_selection(c: Cursor, options: tuple[str, ...]) -> None:
    """
    RFC 5258 section 3: an unknown selection option gets BAD, and so does
    RECURSIVEMATCH without a selection option it could modify (alone or
    with REMOTE only).
    """
    for option in options:
        if option not in LIST_SELECTION_OPTIONS:
            raise c.fail("Unknown LIST selection option")
    if "RECURSIVEMATCH" in options and not any(o in _LIST_BASE_OPTIONS for o in options):
        raise c.fail("RECURSIVEMATCH needs another selection option")


def _lsub(c: Cursor, uid: bool) -> Lsub:
    """lsub = "LSUB" SP mailbox SP list-mailbox"""
    c.sp()
    ref = mailbox(c)
    c.sp()
    return Lsub(ref, list_mailbox(c))


def _status_items(c: Cursor) -> tuple[str, ...]:
    """ "(" status-att *(SP status-att) ")" """
    items = _paren_words(c)
    if not items or any(i not in STATUS_ITEMS for i in items):
        raise c.fail("Bad status item")
    return items


def _status(c: Cursor, uid: bool) -> Status:
    """status = "STATUS" SP mailbox SP "(" status-att *(SP status-att) ")" """
    c.sp()
    box = mailbox(c)
    c.sp()
    return Status(box, _status_items(c))


def _append(c: Cursor, uid: bool) -> Append:
    """
    append = "APPEND" SP mailbox 1*append-message       ; RFC 3502 section 6.3.11
    append-message = append-opts SP append-data
    append-opts = [SP flag-list] [SP date-time]
    append-data = literal / literal8                    ; RFC 3516 section 4.2

    A NUL octet in a plain literal (not a literal8) is refused: RFC 3501
    section 4.3 (``CHAR8`` excludes it); binary content needs a literal8.
    """
    c.sp()
    box = mailbox(c)
    first = _append_message(c)
    more: list[AppendMessage] = []
    while not c.at_end():
        more.append(_append_message(c))
    return Append(box, first.flags, first.date, first.literal, first.binary, tuple(more), first.catenate)


#: ``cat-part`` items of one CATENATE append (RFC 4469): each URL costs a message read.
MAX_CATENATE_PARTS = 100


def _append_message(c: Cursor) -> AppendMessage:
    """
    append-message = append-opts SP append-data  (RFC 3502 section 6.3.11)
    append-data =/ "CATENATE" SP "(" cat-part *(SP cat-part) ")"  ; RFC 4469 section 5
    """
    c.sp()
    flags: tuple[str, ...] = ()
    when = None
    if c.peek() == ord("("):
        flags = flag_list(c)
        c.sp()
    if c.peek() == 0x22:
        when = date_time(c)
        c.sp()
    if c.accept(b"CATENATE ("):
        return AppendMessage(flags, when, b"", False, _cat_parts(c))
    data, binary = _append_data(c)
    return AppendMessage(flags, when, data, binary)


def _append_data(c: Cursor, utf8: bool = True) -> tuple[bytes, bool]:
    """
    append-data = literal / literal8 / "UTF8" SP "(" literal8 ")"  ; RFC 3516, RFC 6855 section 4

    The octets and whether they came as a literal8 (*utf8*: the ``UTF8`` form is allowed).
    """
    if utf8 and c.accept(b"UTF8 ("):
        # RFC 6855 section 4: append-data =/ "UTF8" SP "(" literal8 ")"
        if not c.at_literal():
            raise c.fail("Expected a literal8")
        frag = c.take_literal()
        if not frag.binary:
            raise c.fail("UTF8 needs a literal8 (~{n})")
        c.expect(b")")
        return frag.data, frag.binary
    if not c.at_literal():
        raise c.fail("Expected a literal")
    frag = c.take_literal()
    if not frag.binary and b"\x00" in frag.data:
        raise c.fail("NUL in a literal: send binary content as a literal8 (~{n})")
    return frag.data, frag.binary


def _cat_parts(c: Cursor) -> tuple[CatenatePart, ...]:
    """
    cat-part *(SP cat-part) ")"                 ; after "CATENATE (" (RFC 4469 section 5)
    cat-part = text-literal / url
    text-literal = "TEXT" SP literal            ; a literal8 too (RFC 3516)
    url = "URL" SP astring
    cat-part =/ "UTF8" SP "(" literal8 ")"      ; RFC 6855 section 4

    At most :data:`MAX_CATENATE_PARTS` parts.
    """
    parts: list[CatenatePart] = []
    while True:
        if len(parts) >= MAX_CATENATE_PARTS:
            raise c.fail("Too many CATENATE parts")
        if c.accept(b"URL "):
            parts.append(CatenatePart(url=astring(c)))
        elif c.accept(b"TEXT "):
            data, binary = _append_data(c, utf8=False)
            parts.append(CatenatePart(text=data, binary=binary))
        elif c.peek() == ord("U") or c.peek() == ord("u"):
            data, binary = _append_data(c)  # "UTF8 (" literal8 ")"
            parts.append(CatenatePart(text=data, binary=binary))
        else:
            raise c.fail("Expected TEXT or URL")
        if c.accept(b")"):
            return tuple(parts)
        c.sp()


def _compress(c: Cursor, uid: bool) -> Compress:
    """compress = "COMPRESS" SP algorithm ; algorithm = "DEFLATE" / atom  (RFC 4978 section 4)"""
    c.sp()
    return Compress(atom(c).upper())


def _replace(c: Cursor, uid: bool) -> Replace:
    """
    replace = "REPLACE" SP seq-number SP mailbox append-message  ; RFC 8508 section 6
    uid-replace = "UID" SP replace                               ; seq-number is a UID
    """
    c.sp()
    n = number(c, nonzero=True)
    c.sp()
    box = mailbox(c)
    return Replace(n, box, _append_message(c), uid)


def _expunge(c: Cursor, uid: bool) -> Expunge:
    """expunge = "EXPUNGE" ; uid-expunge = "UID" SP "EXPUNGE" SP sequence-set (RFC 4315)"""
    if not uid:
        return Expunge()
    c.sp()
    return Expunge(sequence_set_or_saved(c))


def _fetch(c: Cursor, uid: bool) -> Fetch:
    """
    fetch = "FETCH" SP sequence-set SP ("ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")")
            [fetch-modifiers]
    fetch-modifiers = SP "(" "CHANGEDSINCE" SP mod-sequence-value ")"  ; RFC 7162 section 7
    """
    c.sp()
    seq = sequence_set_or_saved(c)
    c.sp()
    items = _fetch_items(c)
    changed_since = None
    vanished = False
    if not c.at_end():
        c.sp()
        changed_since, vanished = _fetch_modifiers(c, uid)
    return Fetch(seq, items, uid, changed_since, vanished)


def _fetch_modifiers(c: Cursor, uid: bool) -> tuple[int, bool]:
    """
    fetch-modifiers = SP "(" fetch-modifier *(SP fetch-modifier) ")"
    fetch-modifier  = "CHANGEDSINCE" SP mod-sequence-value / "VANISHED"  ; RFC 7162 sections 3.2.6, 7
    VANISHED only in UID FETCH and with CHANGEDSINCE (section 3.2.6).
    """
    c.expect(b"(")
    changed_since: int | None = None
    vanished = False
    while True:
        word = c.keyword()
        if word == "CHANGEDSINCE" and changed_since is None:
            c.sp()
            changed_since = mod_sequence_value(c)
        elif word == "VANISHED" and not vanished and uid:
            vanished = True
        else:
            raise c.fail("Unknown or repeated FETCH modifier")
        if c.accept(b")"):
            break
        c.sp()
    if changed_since is None:
        raise c.fail("VANISHED needs CHANGEDSINCE")
    return changed_since, vanished


def _store(c: Cursor, uid: bool) -> Store:
    """
    store = "STORE" SP sequence-set SP store-att-flags
    store-att-flags = (["+" / "-"] "FLAGS" [".SILENT"]) SP (flag-list / (flag *(SP flag)))
    """
    c.sp()
    seq = sequence_set_or_saved(c)
    c.sp()
    unchanged_since = None
    if c.peek() == ord("("):
        # store-modifiers = SP "(" "UNCHANGEDSINCE" SP mod-sequence-valzer ")" (RFC 7162 section 7)
        unchanged_since = _modifiers(c, ("UNCHANGEDSINCE",))["UNCHANGEDSINCE"]
        c.sp()
    mode = ""
    if c.peek() in (0x2B, 0x2D):
        mode = chr(c.peek())
        c.pos += 1
    word = c.keyword()
    if word not in ("FLAGS", "FLAGS.SILENT"):
        raise c.fail("Expected FLAGS")
    c.sp()
    if c.peek() == ord("("):
        flags = flag_list(c)
    else:
        flags_l = [flag(c)]
        while not c.at_end():
            c.sp()
            flags_l.append(flag(c))
        flags = tuple(flags_l)
    return Store(seq, mode, word == "FLAGS.SILENT", flags, uid, unchanged_since)


def _copy_like(cls: type[Copy] | type[Move]) -> Callable[[Cursor, bool], CommandArgs]:
    def parse(c: Cursor, uid: bool) -> CommandArgs:
        """copy = "COPY" SP sequence-set SP mailbox ; move = "MOVE" SP sequence-set SP mailbox"""
        c.sp()
        seq = sequence_set_or_saved(c)
        c.sp()
        return cls(seq, mailbox(c), uid)

    return parse


def _id(c: Cursor, uid: bool) -> Id:
    """
    id = "ID" SP id-params-list
    id-params-list = "(" *(string SP nstring) ")" / nil   ; RFC 2971 section 4
    """
    c.sp()
    if c.accept(b"NIL"):
        return Id(None)
    c.expect(b"(")
    params: list[tuple[str, str | None]] = []
    while not c.accept(b")"):
        if params:
            c.sp()
        key = string(c)
        c.sp()
        params.append((key, nstring(c)))
        if len(params) > 30:  # RFC 2971 section 3.3: at most 30 pairs
            raise c.fail("Too many ID fields")
    return Id(tuple(params))


def _enable(c: Cursor, uid: bool) -> Enable:
    """enable = "ENABLE" 1*(SP capability) ; capability = atom"""
    caps = []
    while not c.at_end():
        c.sp()
        caps.append(atom(c).upper())
    if not caps:
        raise c.fail("ENABLE needs a capability")
    return Enable(tuple(caps))


def _qresync_param(c: Cursor) -> QresyncParam:
    """
    select-param =/ "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids]
                    [SP seq-match-data] ")"                        ; RFC 7162 section 7
    seq-match-data = "(" known-sequence-set SP known-uid-set ")"
    """
    c.expect(b"(")
    uidvalidity = number(c, nonzero=True)
    c.sp()
    modseq = mod_sequence_value(c)
    known = match = None
    if c.accept(b" "):
        if c.accept(b"("):
            seqs = sequence_set(c)
            c.sp()
            match = (seqs, sequence_set(c))
            c.expect(b")")
        else:
            known = sequence_set(c)
            if c.accept(b" "):
                c.expect(b"(")
                seqs = sequence_set(c)
                c.sp()
                match = (seqs, sequence_set(c))
                c.expect(b")")
    c.expect(b")")
    return QresyncParam(uidvalidity, modseq, known, match)


def _select_like(cls: type[Select] | type[Examine]) -> Callable[[Cursor, bool], CommandArgs]:
    def parse(c: Cursor, uid: bool) -> CommandArgs:
        """
        select = "SELECT" SP mailbox [select-params] ; examine likewise
        select-params = SP "(" select-param *(SP select-param) ")"  ; RFC 4466 section 2.1
        select-param =/ condstore-param ; condstore-param = "CONDSTORE"  (RFC 7162 section 7)
        """
        c.sp()
        box = mailbox(c)
        condstore = False
        qresync = None
        if not c.at_end():
            c.sp()
            c.expect(b"(")
            while True:
                word = c.keyword()
                if word == "CONDSTORE" and not condstore:
                    condstore = True
                elif word == "QRESYNC" and qresync is None:
                    c.sp()
                    qresync = _qresync_param(c)
                else:
                    raise c.fail("Unknown SELECT parameter")
                if c.accept(b")"):
                    break
                c.sp()
        return cls(box, condstore, qresync)

    return parse


def _getquota(c: Cursor, uid: bool) -> GetQuota:
    """getquota = "GETQUOTA" SP quota-root-name ; quota-root-name = astring (RFC 9208 section 9)"""
    c.sp()
    return GetQuota(astring(c))


#: RFC 5465 section 5: the events, by upper-cased name.
NOTIFY_EVENTS = {
    name.upper(): name
    for name in (
        "MessageNew",
        "MessageExpunge",
        "FlagChange",
        "AnnotationChange",
        "MailboxName",
        "SubscriptionChange",
        "MailboxMetadataChange",
        "ServerMetadataChange",
    )
}

_NOTIFY_FILTERS = frozenset(
    {"SELECTED", "SELECTED-DELAYED", "INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"}
)


def _notify(c: Cursor, uid: bool) -> Notify:
    """
    notify           = "NOTIFY" SP (notify-set / notify-none)  ; RFC 5465 section 8
    notify-none      = "NONE"
    notify-set       = "SET" [status-indicator] SP event-groups
    status-indicator = SP "STATUS"
    event-groups     = event-group *(SP event-group)

    Only the grammar: what the events mean together (MessageNew with
    MessageExpunge...) is checked by the handler
    (:mod:`txmail.imap.commands.notify`).
    """
    c.sp()
    word = c.keyword()
    if word == "NONE":
        return Notify(None)
    if word != "SET":
        raise c.fail("Expected SET or NONE")
    c.sp()
    status = c.accept(b"STATUS ")
    groups = [_event_group(c)]
    while c.accept(b" "):
        groups.append(_event_group(c))
    return Notify(tuple(groups), status)


def _event_group(c: Cursor) -> NotifyGroup:
    """
    event-group = "(" filter-mailboxes SP events ")"
    filter-mailboxes-other = "inboxes" / "personal" / "subscribed" /
                  ( "subtree" SP one-or-more-mailbox ) /
                  ( "mailboxes" SP one-or-more-mailbox )
    one-or-more-mailbox = mailbox / "(" mailbox *(SP mailbox) ")"
    events = ( "(" event *(SP event) ")" ) / "NONE"
    """
    c.expect(b"(")
    name = c.keyword()
    if name not in _NOTIFY_FILTERS:
        raise c.fail("Bad NOTIFY mailbox filter")
    boxes: list[str] = []
    if name in ("SUBTREE", "MAILBOXES"):
        c.sp()
        if c.accept(b"("):
            boxes.append(mailbox(c))
            while not c.accept(b")"):
                c.sp()
                boxes.append(mailbox(c))
        else:
            boxes.append(mailbox(c))
    c.sp()
    events: list[str] = []
    fetch: tuple[FetchAttribute, ...] = ()
    if not c.accept(b"("):
        if c.keyword() != "NONE":
            raise c.fail("Expected NOTIFY events")
    else:
        while True:
            event = _notify_event(c)
            events.append(event)
            if event == "MessageNew" and c.accept(b" ("):
                items = [fetch_att(c)]
                while not c.accept(b")"):
                    c.sp()
                    items.append(fetch_att(c))
                fetch = tuple(items)
            if c.accept(b")"):
                break
            c.sp()
    c.expect(b")")
    return NotifyGroup(name, tuple(boxes), tuple(events), fetch)


def _notify_event(c: Cursor) -> str:
    """
    event = message-event / mailbox-event / user-event / event-ext
    event-ext = atom

    The RFC 5465 names are given their RFC spelling; another atom is
    kept upper-cased (an event we do not support: ``NO [BADEVENT]``).
    """
    word = atom(c).upper()
    return NOTIFY_EVENTS.get(word, word)


# -- METADATA (RFC 5464) ------------------------------------------------------

#: The scopes an entry name starts with (RFC 5464 section 3.2).
_ENTRY_SCOPES = ("private", "shared")


def metadata_entry(c: Cursor, setting: bool = False) -> str:
    """
    entry = astring  ; slash-separated path to entry, MUST NOT contain "*" or "%"

    RFC 5464 section 3.2: ASCII without controls, ``/`` separated, no two
    consecutive ``/``, no trailing ``/``, first component ``private`` or
    ``shared``; case-insensitive (returned lower-cased).  An entry to set
    (*setting*) has at least 2 components, 4 under ``vendor``; one to get
    may be ``/private`` or ``/shared`` alone (with DEPTH).  Longer than
    :data:`MAX_ENTRY_NAME`, or more than :data:`MAX_METADATA_ENTRIES` in
    one command: BAD too.
    """
    name = astring(c)
    if len(name) > MAX_ENTRY_NAME:
        raise c.fail("Entry name too long")
    if not name.isascii() or any(ch < " " or ch in "*%\x7f" for ch in name):
        raise c.fail("Invalid character in entry name")
    if not name.startswith("/") or "//" in name or name.endswith("/"):
        raise c.fail("Invalid entry name")
    parts = name.lower().split("/")[1:]
    if parts[0] not in _ENTRY_SCOPES:
        raise c.fail("Entry names begin with /private or /shared")
    if setting and (len(parts) < 2 or (parts[1] == "vendor" and len(parts) < 4)):
        raise c.fail("Entry name has too few components")
    return name.lower()


def _metadata_entries(c: Cursor) -> tuple[str, ...]:
    """entries = entry / "(" entry *(SP entry) ")"  (RFC 5464 section 5); repeats dropped"""
    if not c.accept(b"("):
        return (metadata_entry(c),)
    names = [metadata_entry(c)]
    while not c.accept(b")"):
        if len(names) >= MAX_METADATA_ENTRIES:
            raise c.fail("Too many entries in one command")
        c.sp()
        names.append(metadata_entry(c))
    return tuple(dict.fromkeys(names))


def _getmetadata(c: Cursor, uid: bool) -> GetMetadata:
    """
    getmetadata = "GETMETADATA" [SP getmetadata-options] SP mailbox SP entries
    getmetadata-options = "(" getmetadata-option *(SP getmetadata-option) ")"
    maxsize-opt = "MAXSIZE" SP number
    scope-opt = "DEPTH" SP ("0" / "1" / "infinity")      (RFC 5464 section 5)

    An unknown or repeated option is BAD.
    """
    c.sp()
    maxsize: int | None = None
    depth: int | None = 0
    if c.accept(b"("):
        seen: set[str] = set()
        while True:
            word = c.keyword()
            if word in seen or word not in ("MAXSIZE", "DEPTH"):
                raise c.fail("Unknown or repeated GETMETADATA option")
            seen.add(word)
            c.sp()
            if word == "MAXSIZE":
                maxsize = number(c)
            else:
                value = c.keyword()
                if value not in ("0", "1", "INFINITY"):
                    raise c.fail("DEPTH is 0, 1 or infinity")
                depth = None if value == "INFINITY" else int(value)
            if c.accept(b")"):
                break
            c.sp()
        c.sp()
    box = mailbox(c)
    c.sp()
    return GetMetadata(box, _metadata_entries(c), maxsize, depth)


def _metadata_value(c: Cursor) -> bytes | None:
    """
    value = nstring / literal8  (RFC 5464 section 5); a NUL needs a literal8
    (RFC 3501 section 4.3), as in APPEND.
    """
    if c.at_literal():
        frag = c.take_literal()
        if not frag.binary and b"\x00" in frag.data:
            raise c.fail("NUL in a literal: send binary values as a literal8 (~{n})")
        return frag.data
    if c.peek() == 0x22:
        return quoted(c).encode("utf-8")
    c.expect(b"NIL")
    return None


def _setmetadata(c: Cursor, uid: bool) -> SetMetadata:
    """
    setmetadata = "SETMETADATA" SP mailbox SP entry-values
    entry-values = "(" entry-value *(SP entry-value) ")"
    entry-value = entry SP value                       (RFC 5464 section 5)
    """
    c.sp()
    box = mailbox(c)
    c.sp()
    c.expect(b"(")
    pairs: list[tuple[str, bytes | None]] = []
    while True:
        name = metadata_entry(c, setting=True)
        c.sp()
        pairs.append((name, _metadata_value(c)))
        if c.accept(b")"):
            return SetMetadata(box, tuple(pairs))
        if len(pairs) >= MAX_METADATA_ENTRIES:
            raise c.fail("Too many entries in one command")
        c.sp()


#: URLs of one GENURLAUTH or URLFETCH (RFC 4467): each is a store lookup.
MAX_URLAUTH_ITEMS = 100

_MECHANISM_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


def _mechanism(c: Cursor) -> str:
    """mechanism = "INTERNAL" / 1*(ALPHA / DIGIT / "-" / ".")  (RFC 4467 section 9), upper-cased"""
    word = c.take_while(_MECHANISM_CHARS)
    if not word:
        raise c.fail("Expected a URLAUTH mechanism")
    return word.decode("ascii").upper()


def _genurlauth(c: Cursor, uid: bool) -> GenUrlAuth:
    """genurlauth = "GENURLAUTH" 1*(SP url-rump SP mechanism) ; url-rump = astring  (RFC 4467 section 9)"""
    requests: list[tuple[str, str]] = []
    while True:
        if len(requests) >= MAX_URLAUTH_ITEMS:
            raise c.fail("Too many URLs")
        c.sp()
        rump = astring(c)
        c.sp()
        requests.append((rump, _mechanism(c)))
        if c.at_end():
            return GenUrlAuth(tuple(requests))


def _resetkey(c: Cursor, uid: bool) -> ResetKey:
    """resetkey = "RESETKEY" [SP mailbox *(SP mechanism)]  (RFC 4467 section 9)"""
    if c.at_end():
        return ResetKey()
    c.sp()
    box = mailbox(c)
    mechanisms: list[str] = []
    while not c.at_end():
        if len(mechanisms) >= MAX_URLAUTH_ITEMS:
            raise c.fail("Too many mechanisms")
        c.sp()
        mechanisms.append(_mechanism(c))
    return ResetKey(box, tuple(mechanisms))


def _urlfetch(c: Cursor, uid: bool) -> UrlFetch:
    """urlfetch = "URLFETCH" 1*(SP url-full) ; url-full = astring  (RFC 4467 section 9)"""
    urls: list[str] = []
    while True:
        if len(urls) >= MAX_URLAUTH_ITEMS:
            raise c.fail("Too many URLs")
        c.sp()
        urls.append(astring(c))
        if c.at_end():
            return UrlFetch(tuple(urls))


def _cancelupdate(c: Cursor, uid: bool) -> CancelUpdate:
    """command-select =/ "CANCELUPDATE" 1*(SP quoted) (RFC 5267 section 5)"""
    tags = []
    while not c.at_end():
        c.sp()
        tags.append(quoted(c))
    if not tags:
        raise c.fail("Missing tag")
    return CancelUpdate(tuple(tags))


_Parser = Callable[[Cursor, bool], CommandArgs]

#: Command name -> argument parser.  RFC 3501 section 6 and the extensions.
COMMANDS: dict[str, _Parser] = {
    "CAPABILITY": _no_args,
    "NOOP": _no_args,
    "LOGOUT": _no_args,
    "STARTTLS": _no_args,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "SELECT": _select_like(Select),
    "EXAMINE": _select_like(Examine),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _no_args,
    "CLOSE": _no_args,
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy_like(Copy),
    "MOVE": _copy_like(Move),
    "IDLE": _no_args,
    "NAMESPACE": _no_args,
    "ID": _id,
    "UNSELECT": _no_args,
    "ENABLE": _enable,
    "GETQUOTA": _getquota,
    "GETQUOTAROOT": _one_mailbox(GetQuotaRoot),
    "GETMETADATA": _getmetadata,
    "SETMETADATA": _setmetadata,
    "REPLACE": _replace,
    "COMPRESS": _compress,
    "SORT": _sort,
    "THREAD": _thread,
    "NOTIFY": _notify,
    "GENURLAUTH": _genurlauth,
    "RESETKEY": _resetkey,
    "URLFETCH": _urlfetch,
    "CANCELUPDATE": _cancelupdate,
}

#: Commands that may follow ``UID`` (RFC 3501 section 6.4.8, RFC 4315, RFC 6851).
UID_COMMANDS = frozenset({"FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE", "SORT", "THREAD", "REPLACE"})


def parse_command(fragments: Sequence[Fragment], *, utf8: bool = False, utf8_names: bool = False) -> Command:
    """
    Parse one command framed by :class:`txmail.imap.fragment.CommandFramer`.

    ABNF (RFC 3501 section 9)::

        command = tag SP (command-any / command-auth / command-nonauth /
                  command-select) CRLF
        uid = "UID" SP (copy / fetch / search / store)

    *utf8*: the session enabled UTF8=ACCEPT (RFC 6855): mailbox names are
    UTF-8 rather than modified UTF-7, and SEARCH CHARSET is BAD.
    *utf8_names*: the session enabled IMAP4rev2 (RFC 9051 section 5.1):
    mailbox names are UTF-8, and nothing else changes.

    Raises:
        ParseError: the command does not match the grammar.
    """
    c = Cursor(fragments)
    c.utf8 = utf8
    c.utf8_names = utf8_names
    tag(c)
    c.sp()
    name = c.keyword()
    uid = False
    if name == "UID":
        uid = True
        c.sp()
        name = c.keyword()
        if name not in UID_COMMANDS:
            raise c.fail("Bad UID command")
    parse = COMMANDS.get(name)
    if parse is None:
        raise c.fail("Unknown command")
    args = parse(c, uid)
    c.end()
    assert c.tag is not None
    return Command(c.tag, name, args, invalid_name=c.invalid_name)
