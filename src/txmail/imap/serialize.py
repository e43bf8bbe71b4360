"""
Serialisation of IMAP responses (RFC 3501 section 7 and section 9).

Every function returns ``bytes`` ready for the wire.  The string functions
pick the representation:

* :func:`astring`: an atom when the text is a non-empty run of
  ``ASTRING-CHAR`` and is not ``NIL`` (which a client would read as nil);
  else :func:`string`.
* :func:`string`: a quoted string when the octets are 7-bit, hold no
  CR, LF or NUL and are at most :data:`MAX_QUOTED` long; else a
  synchronizing-form literal ``{n}\\r\\n...`` (a server's literals are never
  acknowledged, RFC 3501 section 4.3, so ``{n}`` is what it sends).
* :func:`nstring`: ``NIL`` for ``None``, else :func:`string`.

``str`` values are encoded as UTF-8 by default; the ENVELOPE and
BODYSTRUCTURE tuples of :mod:`txmail.mime` hold latin-1 decoded raw octets
and are encoded with latin-1 (:func:`envelope`, :func:`body_structure`),
so the client gets the message's octets back unchanged.

Typed responses
---------------
The command layer (:mod:`txmail.imap.commands`) says what to answer with
the dataclasses of :mod:`txmail.imap.responses`; :func:`render` turns one
into the pieces to write, with one function per response type (the table
:data:`_RENDERERS`).  A FETCH response is written by
:func:`txmail.imap.fetch.fetch_chunks`, this module's FETCH part (a module
of its own for its size and its measured hot paths).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import datetime
import functools
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from txmail.imap import responses as r
from txmail.imap.parser import ASTRING_CHARS, ATOM_CHARS, encode_mailbox_name
from txmail.imap.types import SequenceSet

__all__ = [
    "ESEARCH_OPTIONS",
    "MAX_QUOTED",
    "NIL",
    "astring",
    "atom",
    "body_structure",
    "context_update",
    "continuation",
    "date_time",
    "envelope",
    "esearch_response",
    "esort_response",
    "expunge",
    "fetch_flags",
    "flag_list",
    "flags_and_permanent",
    "is_message_rfc822",
    "mailbox",
    "metadata_value",
    "nstring",
    "number",
    "number_set",
    "paren_list",
    "render",
    "render_all",
    "search_response",
    "sequence_set",
    "sort_response",
    "string",
    "tagged",
    "thread_response",
    "untagged",
    "value",
]

NIL = b"NIL"

#: Longest text sent as a quoted string; longer text goes as a literal.
MAX_QUOTED = 1024

#: An octet a quoted string cannot hold: NUL, CR, LF and 8-bit (RFC 3501 section 9, QUOTED-CHAR).
_UNQUOTABLE = re.compile(rb"[^\x01-\x09\x0b\x0c\x0e-\x7f]")

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _octets(text: str | bytes, encoding: str) -> bytes:
    return text if isinstance(text, bytes) else text.encode(encoding)


def string(text: str | bytes, encoding: str = "utf-8") -> bytes:
    """``string = quoted / literal`` (RFC 3501 section 9)."""
    if (
        type(text) is str
        and text.isascii()
        and text.isprintable()
        and len(text) <= MAX_QUOTED
        and '"' not in text
        and "\\" not in text
    ):
        # The common case (ENVELOPE and BODYSTRUCTURE are full of these):
        # printable ASCII with nothing to escape, quoted as it is (3x faster
        # than the general path's regular expression).
        return b'"' + text.encode("ascii") + b'"'
    data = text if isinstance(text, bytes) else text.encode(encoding)
    if len(data) <= MAX_QUOTED and _UNQUOTABLE.search(data) is None:
        if b"\\" in data or b'"' in data:
            data = data.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        return b'"' + data + b'"'
    return b"{%d}\r\n" % len(data) + data


def astring(text: str | bytes, encoding: str = "utf-8") -> bytes:
    """``astring = 1*ASTRING-CHAR / string`` (RFC 3501 section 9)."""
    data = _octets(text, encoding)
    if data and data.upper() != NIL and all(b in ASTRING_CHARS for b in data):
        return data
    return string(data)


def atom(text: str) -> bytes:
    """
    ``atom = 1*ATOM-CHAR``.

    Raises:
        ValueError: *text* is not an atom (a programming error).
    """
    data = text.encode("ascii")
    if not data or not all(b in ATOM_CHARS for b in data):
        raise ValueError(f"not an atom: {text!r}")
    return data


def nstring(text: str | bytes | None, encoding: str = "utf-8") -> bytes:
    """``nstring = string / nil``."""
    return NIL if text is None else string(text, encoding)


def number(n: int) -> bytes:
    """``number = 1*DIGIT`` (``nz-number`` and ``number64`` alike)."""
    if n < 0:
        raise ValueError("IMAP numbers are unsigned")
    return b"%d" % n


#: Mailbox names go out as UTF-8, not modified UTF-7, while this is set
#: (RFC 6855 section 3, after ENABLE UTF8=ACCEPT): :func:`render` and
#: :func:`render_all` set it for one session's responses.
_utf8_names = False


def mailbox(name: str) -> bytes:
    """
    A mailbox name: modified UTF-7 (RFC 3501 section 5.1.3), then
    :func:`astring`; UTF-8 after ENABLE UTF8=ACCEPT (RFC 6855 section 3),
    quoted unless it needs a literal.
    """
    if not _utf8_names:
        return astring(encode_mailbox_name(name), "ascii")
    data = name.encode("utf-8")
    if data and data.upper() != NIL and all(b in ASTRING_CHARS for b in data):
        return data
    if len(data) <= MAX_QUOTED and not re.search(rb"[\x00\r\n]", data):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(data) + data


def flag_list(flags: Iterable[str]) -> bytes:
    """``flag-list = "(" [flag *(SP flag)] ")"``."""
    return b"(" + b" ".join(f.encode("ascii") for f in flags) + b")"


def sequence_set(seq: SequenceSet) -> bytes:
    """``sequence-set`` (RFC 3501 section 9)."""
    return str(seq).encode("ascii")


def number_set(numbers: Iterable[int]) -> bytes:
    """
    Ascending *numbers* as a compact ``sequence-set``: ``[1, 2, 3, 7]`` is
    ``1:3,7`` (UIDPLUS COPYUID, ESEARCH ALL).  Empty input gives ``b""``.
    """
    parts: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}:{prev}")
        start = prev = n
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}:{prev}")
    return ",".join(parts).encode("ascii")


def date_time(when: datetime.datetime) -> bytes:
    """``date-time`` as in INTERNALDATE: ``"17-Jul-1996 02:44:25 -0700"``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    offset = when.utcoffset() or datetime.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    minutes = abs(minutes)
    text = (
        f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}"
    )
    return b'"' + text.encode("ascii") + b'"'


@functools.lru_cache(maxsize=4096)
def _seconds_date_time(seconds: int) -> bytes:
    return date_time(datetime.datetime.fromtimestamp(seconds, datetime.UTC))


def timestamp_date_time(when: float) -> bytes:
    """
    :func:`date_time` of a POSIX timestamp, in UTC (INTERNALDATE, SAVEDATE),
    remembered by second: the messages of a mailbox often share their
    seconds (a batch delivered or dropped in at once), and a FETCH of every
    message's INTERNALDATE formats each second once.
    """
    return _seconds_date_time(math.floor(when))


def value(item: Any, encoding: str = "utf-8") -> bytes:
    """
    One value of a nested structure: ``None`` is ``NIL``, ``int`` a number,
    ``str``/``bytes`` a string, ``tuple``/``list`` a parenthesised list.
    """
    # Most frequent first: ENVELOPE and BODYSTRUCTURE are mostly strings and NIL.
    kind = type(item)
    if kind is str or kind is bytes:
        return string(item, encoding)
    if item is None:
        return NIL
    if kind is tuple or kind is list:
        return b"(" + b" ".join([value(i, encoding) for i in item]) + b")"
    if isinstance(item, bool):
        raise TypeError("no IMAP form for a bool")
    if isinstance(item, int):
        return number(item)
    if isinstance(item, str | bytes):
        return string(item, encoding)
    if isinstance(item, tuple | list):
        return paren_list(item, encoding)
    raise TypeError(f"no IMAP form for {type(item).__name__}")


def paren_list(items: Iterable[Any], encoding: str = "utf-8") -> bytes:
    """``"(" value *(SP value) ")"`` with :func:`value` for each item."""
    return b"(" + b" ".join(value(i, encoding) for i in items) + b")"


def is_message_rfc822(body: tuple[Any, ...]) -> bool:
    """Whether a non-multipart body structure is a ``MESSAGE/RFC822`` part."""
    return (
        len(body) > 9
        and isinstance(body[0], str)
        and isinstance(body[1], str)
        and (body[0].upper(), body[1].upper()) == ("MESSAGE", "RFC822")
    )


#: Rendered short strings and tuples of strings and NILs of ENVELOPE and
#: BODYSTRUCTURE (``"TEXT"``, ``("CHARSET" "utf-8")``, ``"7BIT"``, an
#: address...), by value: most of a body structure is a few dozen such
#: tokens, and senders recur.  Bounded: emptied when full (boundaries, file
#: names and message-ids are new with each message), so that the tokens in
#: use come back instead of missing for the rest of a long FETCH.
_TOKENS: dict[Any, bytes] = {}
_TOKENS_MAX = 4096
#: Strings at most this long are remembered in :data:`_TOKENS`.
_TOKEN_LEN = 40
#: The types of the members of a remembered tuple.
_STR_OR_NONE = frozenset({str, type(None)})


def _latin1(item: Any) -> bytes:
    """
    :func:`value` with latin-1 for the tuples of :mod:`txmail.mime`
    (ENVELOPE and BODYSTRUCTURE members), the same octets, faster: short
    strings and tuples of strings are rendered once and remembered.
    """
    kind = type(item)
    if kind is str:
        out = _TOKENS.get(item)
        if out is None:
            out = string(item, "latin-1")
            if len(item) <= _TOKEN_LEN:
                if len(_TOKENS) >= _TOKENS_MAX:
                    _TOKENS.clear()
                _TOKENS[item] = out
        return out
    if item is None:
        return NIL
    if kind is tuple:
        out = _TOKENS.get(item)
        if out is not None:
            return out
        out = b"(" + b" ".join(_members(item)) + b")"
        # Addresses (name, NIL, mailbox, host) recur from message to message.
        if len(item) <= 8 and _STR_OR_NONE.issuperset(map(type, item)):
            if len(_TOKENS) >= _TOKENS_MAX:
                _TOKENS.clear()
            _TOKENS[item] = out
        return out
    return value(item, "latin-1")


def _members(items: Iterable[Any]) -> list[bytes]:
    """
    :func:`_latin1` of each of *items*, without a call for a remembered
    string or tuple, NIL or a number.
    """
    tokens = _TOKENS
    return [
        NIL
        if x is None
        else (tokens.get(x) or _latin1(x))
        if type(x) is str or type(x) is tuple
        else b"%d" % x
        if type(x) is int and x >= 0
        else _latin1(x)
        for x in items
    ]


def _unique(item: Any) -> bytes:
    """:func:`_latin1` of a member that seldom recurs (a date, a subject, a message-id): not remembered."""
    if item is None:
        return NIL
    if type(item) is str:
        return string(item, "latin-1")
    return _latin1(item)


#: Rendered address lists of ENVELOPE (a sender's, the recipients'), by value: bounded.
_ADDRESS_LISTS: dict[tuple[Any, ...], bytes] = {}


def _plain_address(address: Any) -> bool:
    """Whether *address* is a tuple of strings and NILs."""
    return type(address) is tuple and _STR_OR_NONE.issuperset(map(type, address))


def _address_list(member: Any) -> bytes:
    """An ENVELOPE address list (``env-from`` and the others): ``"(" 1*address ")"``."""
    key = member if type(member) is tuple else tuple(member)
    out = _ADDRESS_LISTS.get(key)  # a list inside is refused (TypeError), as it always was
    if out is None:
        out = b"(" + b"".join([_latin1(a) for a in member]) + b")"
        # Only lists of addresses of strings and NILs: a key equal to another
        # of other types (1 and True) could render apart.
        if len(key) <= 8 and all(map(_plain_address, key)):
            if len(_ADDRESS_LISTS) >= _TOKENS_MAX:
                _ADDRESS_LISTS.clear()
            _ADDRESS_LISTS[key] = out
    return out


def envelope(env: tuple[Any, ...]) -> bytes:
    """
    ENVELOPE from :func:`txmail.mime.parse_metadata`'s tuple (latin-1 octets)::

        envelope = "(" env-date SP env-subject SP env-from SP env-sender SP
                   env-reply-to SP env-to SP env-cc SP env-bcc SP
                   env-in-reply-to SP env-message-id ")"
        env-from = "(" 1*address ")" / nil        ; likewise the other lists
        address  = "(" addr-name SP addr-adl SP addr-mailbox SP addr-host ")"

    The addresses of a list follow each other without a space, as
    ``1*address`` says (strict parsers such as imap-codec's refuse the
    space).  Address lists are rendered once and remembered (sender and
    reply-to default to from; senders and recipients recur).
    """
    if type(env) is tuple and len(env) == 10:
        date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = env
        first = _envelope_list(from_)
        # Inline for the common members (a string, NIL): no call.
        return b"(%s %s %s %s %s %s %s %s %s %s)" % (
            string(date, "latin-1") if type(date) is str else _unique(date),
            string(subject, "latin-1") if type(subject) is str else _unique(subject),
            first,
            first if sender is from_ else _envelope_list(sender),
            first if reply_to is from_ else _envelope_list(reply_to),
            NIL if to is None else _envelope_list(to),
            NIL if cc is None else _envelope_list(cc),
            NIL if bcc is None else _envelope_list(bcc),
            NIL if in_reply_to is None else _unique(in_reply_to),
            string(message_id, "latin-1") if type(message_id) is str else _unique(message_id),
        )
    out = []
    for i, member in enumerate(env):
        out.append(_envelope_list(member) if 2 <= i <= 7 else _latin1(member))
    return b"(" + b" ".join(out) + b")"


def _envelope_list(member: Any) -> bytes:
    """An address list member of ENVELOPE: a list of addresses, or NIL (or whatever else it holds)."""
    if member is None:
        return NIL
    if isinstance(member, tuple | list):
        return _address_list(member)
    return _latin1(member)


#: Body types that are not MESSAGE whatever their case (a shortcut of :func:`is_message_rfc822`).
_NOT_MESSAGE = frozenset({"TEXT", "APPLICATION", "IMAGE", "AUDIO", "VIDEO", "FONT", "MODEL"})


def body_structure(body: tuple[Any, ...]) -> bytes:
    """
    BODY / BODYSTRUCTURE from :mod:`txmail.mime`'s tuple (latin-1 octets)::

        body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        body-type-msg   = media-message SP body-fields SP envelope
                          SP body SP body-fld-lines

    As :func:`txmail.imap.body_structure`, except that the
    envelope of a MESSAGE/RFC822 part is written by :func:`envelope`.
    """
    if body and isinstance(body[0], tuple):
        count = 1
        while count < len(body) and isinstance(body[count], tuple):
            count += 1
        parts = b"".join([body_structure(p) for p in body[:count]])
        if count == len(body):
            return b"(" + parts + b")"
        return b"(" + parts + b" " + b" ".join(_members(body[count:])) + b")"
    if not body or (type(body[0]) is str and body[0] in _NOT_MESSAGE) or not is_message_rfc822(body):
        return b"(" + b" ".join(_members(body)) + b")"
    members = []
    for i, x in enumerate(body):
        if i == 7 and isinstance(x, tuple):
            members.append(envelope(x))
        elif i == 8 and isinstance(x, tuple):
            members.append(body_structure(x))
        else:
            members.append(_latin1(x))
    return b"(" + b" ".join(members) + b")"


def untagged(*words: bytes) -> bytes:
    """``"*" SP ... CRLF``; the words are joined with spaces."""
    return b"* " + b" ".join(words) + b"\r\n"


def tagged(tag: str, status: str, text: str, code: str | None = None) -> bytes:
    """``tag SP ("OK" / "NO" / "BAD") SP [resp-text-code SP] text CRLF``."""
    head = f"{tag} {status} "
    if code:
        head += f"[{code}] "
    return (head + _text(text)).encode("utf-8") + b"\r\n"


def continuation(text: str = "") -> bytes:
    """``continue-req = "+" SP (resp-text / base64) CRLF``."""
    return b"+ " + _text(text).encode("utf-8") + b"\r\n"


def _text(text: str) -> str:
    # text = 1*TEXT-CHAR: never let a CR or LF split the response.
    return text.replace("\r", " ").replace("\n", " ")


# -- typed responses (txmail.imap.responses) ---------------------------------------------

#: The RFC 4731 result options, in the order :func:`esearch_response` writes them.
ESEARCH_OPTIONS = ("MIN", "MAX", "ALL", "COUNT")


def search_response(numbers: Iterable[int]) -> bytes:
    """
    The untagged SEARCH response (RFC 3501 section 7.2.5), numbers in the
    order given: ``b"* SEARCH 2 3 6\\r\\n"``, or ``b"* SEARCH\\r\\n"`` for
    none.
    """
    return untagged(b"SEARCH", *(number(n) for n in numbers))


def esearch_response(
    tag: str,
    uid: bool,
    numbers: Iterable[int],
    options: Iterable[str],
    partial: tuple[int, int] | None = None,
) -> bytes:
    """
    The ESEARCH response of RFC 4731 section 3.1::

        esearch-response = "ESEARCH" [search-correlator] [SP "UID"] *(SP search-return-data)

    *options* are the RETURN options (``MIN``, ``MAX``, ``ALL``,
    ``COUNT``, and RFC 5267's ``PARTIAL`` with its range *partial*;
    ``CONTEXT`` and ``UPDATE`` ask for no data); no result option means
    ``ALL`` ("RETURN ()" is "RETURN (ALL)").  The results are written in
    the order MIN, MAX, ALL, PARTIAL, COUNT.  When nothing matched, MIN,
    MAX and ALL are left out ("the server MUST NOT include the MIN result
    option", likewise MAX and ALL) but the response is still sent, and
    COUNT is ``0``.  ALL is a compact sequence set (``2,10:11``).

    Raises:
        ValueError: an option that is not one of :data:`ESEARCH_OPTIONS`.
    """
    return _esearch(tag, uid, sorted(set(numbers)), options, partial, number_set)


def _esearch(
    tag: str,
    uid: bool,
    found: Sequence[int],
    options: Iterable[str],
    partial: tuple[int, int] | None,
    write_set: Callable[[Sequence[int]], bytes],
) -> bytes:
    """The ESEARCH response of *found* in its order (SEARCH's ascending, SORT's sorted); *write_set* writes ALL and PARTIAL."""
    wanted = _result_options(options)
    words = [b"ESEARCH", b"(TAG " + string(tag) + b")"]
    if uid:
        words.append(b"UID")
    if found and "MIN" in wanted:
        words += [b"MIN", number(found[0])]
    if found and "MAX" in wanted:
        words += [b"MAX", number(found[-1])]
    if found and "ALL" in wanted:
        words += [b"ALL", write_set(found)]
    if partial is not None and "PARTIAL" in wanted:
        words += [b"PARTIAL", _partial(partial, write_set(found[partial[0] - 1 : partial[1]]))]
    if "COUNT" in wanted:
        words += [b"COUNT", number(len(found))]
    return untagged(*words)


#: RETURN options that ask for no result data (RFC 5267 sections 4.2 and 4.3).
_NO_DATA_OPTIONS = frozenset({"CONTEXT", "UPDATE"})


def _result_options(options: Iterable[str]) -> set[str]:
    """The result options asked for, ``ALL`` when none (RFC 4731 section 3.1)."""
    wanted = {o.upper() for o in options} - _NO_DATA_OPTIONS
    unknown = wanted - set(ESEARCH_OPTIONS) - {"PARTIAL"}
    if unknown:
        raise ValueError(f"unknown ESEARCH option(s): {sorted(unknown)}")
    return wanted or {"ALL"}


def _partial(window: tuple[int, int], found: bytes) -> bytes:
    """``"(" partial-range SP partial-results ")"``, ``NIL`` for no results (RFC 5267 section 5)."""
    return b"(%d:%d %s)" % (window[0], window[1], found or b"NIL")


def sort_response(numbers: Iterable[int]) -> bytes:
    """``* SORT n ...`` in the order given, ``* SORT`` for none (RFC 5256 section 4)."""
    return untagged(b"SORT", *(number(n) for n in numbers))


def _ordered_set(numbers: Sequence[int]) -> bytes:
    """*numbers* as a ``sequence-set`` that keeps their order: only ascending runs become ranges."""
    parts: list[bytes] = []
    i, n = 0, len(numbers)
    while i < n:
        j = i
        while j + 1 < n and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(b"%d" % numbers[i] if i == j else b"%d:%d" % (numbers[i], numbers[j]))
        i = j + 1
    return b",".join(parts)


def esort_response(
    tag: str,
    uid: bool,
    numbers: Sequence[int],
    options: Iterable[str],
    partial: tuple[int, int] | None = None,
) -> bytes:
    """
    The ESEARCH response to ``SORT RETURN (...)`` (RFC 5267 section 3.2):
    MIN and MAX are the first and the last message in the sort order, ALL
    is every message in that order (ascending runs written ``n:m``),
    PARTIAL the window *partial* of that order (section 4.4), COUNT how
    many.  No result option means ALL; nothing found leaves out MIN, MAX
    and ALL.
    """
    return _esearch(tag, uid, numbers, options, partial, _ordered_set)


def context_update(resp: r.ContextUpdate) -> bytes:
    """
    ``* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)`` (RFC 5267
    section 5)::

        ret-data-addto = "ADDTO" SP "(" context-position SP sequence-set
                         *(SP context-position SP sequence-set) ")"

    and likewise ``ret-data-removefrom``; each set keeps the order given
    (ascending runs written ``n:m``).  ``b""`` when there is no change.
    """
    if not resp.removed and not resp.added:
        return b""
    words = [b"ESEARCH", b"(TAG " + string(resp.tag) + b")"]
    if resp.uid:
        words.append(b"UID")
    for name, pairs in ((b"REMOVEFROM", resp.removed), (b"ADDTO", resp.added)):
        if pairs:
            words += [name, b"(" + b" ".join(b"%d %s" % (p, _ordered_set(ns)) for p, ns in pairs) + b")"]
    return untagged(*words)


def thread_response(threads: Iterable[tuple[int | None, tuple[Any, ...]]]) -> bytes:
    """
    ``* THREAD`` and its thread lists (RFC 5256 section 4)::

        thread-list    = "(" (thread-members / thread-nested) ")"
        thread-members = nz-number *(SP nz-number) [SP thread-nested]
        thread-nested  = 2*thread-list

    A thread is ``(number, children)``, ``number`` ``None`` for a dummy
    parent.  A chain of single children is one list of numbers; two
    children or more are nested lists.  No recursion (a chain of replies
    can be thousands deep).
    """
    out = [b"* THREAD "]
    for root in threads:
        out.append(b"(")
        # A stack of what remains to write: a node, or the bytes ")".
        stack: list[Any] = [b")", root]
        first = True
        while stack:
            item = stack.pop()
            if isinstance(item, bytes):
                out.append(item)
                first = item == b"("
                continue
            num, children = item
            while True:
                if num is not None:
                    out.append(b"%d" % num if first else b" %d" % num)
                    first = False
                if len(children) == 1:
                    num, children = children[0]
                    continue
                break
            if children:
                if not first:
                    out.append(b" ")
                for child in reversed(children):
                    stack += [b")", child, b"("]
    if len(out) == 1:
        return b"* THREAD\r\n"
    out.append(b"\r\n")
    return b"".join(out)


def flags_and_permanent(flags: Iterable[str], permanent: Iterable[str] | None) -> bytes:
    """``* FLAGS (...)`` then ``* OK [PERMANENTFLAGS (...)]`` (RFC 3501 sections 7.2.6 and 7.1)."""
    kept = b"()" if permanent is None else flag_list(permanent)
    return b"* FLAGS " + flag_list(flags) + b"\r\n* OK [PERMANENTFLAGS " + kept + b"] Flags permitted\r\n"


def expunge(seq: int) -> bytes:
    """``* n EXPUNGE`` (RFC 3501 section 7.4.1)."""
    return b"* %d EXPUNGE\r\n" % seq


def vanished(uids: Iterable[int], *, earlier: bool = False) -> bytes:
    """``* VANISHED [(EARLIER) ]uid-set`` for ascending *uids* (RFC 7162 section 3.2.10)."""
    return b"* VANISHED %s%s\r\n" % (b"(EARLIER) " if earlier else b"", number_set(uids))


def fetch_flags(seq: int, flags: Iterable[str], uid: int | None = None, modseq: int | None = None) -> bytes:
    """``* n FETCH ([UID u ]FLAGS (...)[ MODSEQ (m)])`` (MODSEQ: RFC 7162 section 3.1.4.2)."""
    items = b"" if uid is None else b"UID %d " % uid
    tail = b"" if modseq is None else b" MODSEQ (%d)" % modseq
    return b"* %d FETCH (%sFLAGS %s%s)\r\n" % (seq, items, flag_list(flags), tail)


def fetch_uid(seq: int, uid: int) -> bytes:
    """``* n FETCH (UID u)``: NOTIFY's MessageNew asking for the UID alone (RFC 5465 section 5.2)."""
    return b"* %d FETCH (UID %d)\r\n" % (seq, uid)


def fetch_modseq(seq: int, uid: int, modseq: int) -> bytes:
    """``* n FETCH (UID u MODSEQ (m))``: a STORE .SILENT with CONDSTORE (RFC 7162 section 3.1.3)."""
    return b"* %d FETCH (UID %d MODSEQ (%d))\r\n" % (seq, uid, modseq)


def _namespace(spaces: tuple[tuple[str, str], ...]) -> bytes:
    if not spaces:
        return NIL
    return b"(" + b"".join(b"(" + string(p) + b" " + string(d) + b")" for p, d in spaces) + b")"


def _list_data(resp: r.ListData) -> bytes:
    line = (
        b"* "
        + resp.verb.encode("ascii")
        + b" ("
        + " ".join(resp.attributes).encode("ascii")
        + b") "
        + string(resp.delimiter)
        + b" "
        + mailbox(resp.name)
    )
    if resp.childinfo:
        line += b' ("CHILDINFO" ' + paren_list(resp.childinfo) + b")"
    if resp.oldname is not None:
        line += b' ("OLDNAME" (' + mailbox(resp.oldname) + b"))"
    return line + b"\r\n"


def _status_data(resp: r.StatusData) -> bytes:
    parts = b" ".join(
        b"%s (%s)" % (item.encode("ascii"), n.encode("ascii"))
        if isinstance(n, str)
        else b"%s %d" % (item.encode("ascii"), n)
        for item, n in resp.items
    )
    return b"* STATUS " + mailbox(resp.name) + b" (" + parts + b")\r\n"


def _untagged_ok(resp: r.UntaggedOk) -> bytes:
    code = b"" if resp.code is None else b"[" + resp.code.encode("ascii") + b"] "
    return b"* OK " + code + _text(resp.text).encode("utf-8") + b"\r\n"


def _with_modseq(line: bytes, form: bytes, modseq: int | None) -> bytes:
    """*line* with ``form % modseq`` before its CRLF (RFC 7162 sections 3.1.6 and 3.1.10), or as it is."""
    if modseq is None:
        return line
    return line[:-2] + form % modseq + b"\r\n"


def _fetch_data(resp: r.FetchData) -> list[bytes]:
    return _fetch.fetch_chunks(
        resp.seq,
        resp.items,
        resp.info,
        metadata=resp.metadata,
        message=resp.message,
        include_uid=resp.include_uid,
        include_flags=resp.include_flags,
        recent=resp.recent,
    )


def _fetch_batch(resp: r.FetchBatch) -> list[bytes]:
    return _fetch.batch_chunks(resp.items, resp.include_uid, resp.rows)


def metadata_value(value: bytes | None) -> bytes:
    """``value = nstring / literal8`` (RFC 5464 section 5): a literal8 when it holds a NUL."""
    if value is None:
        return NIL
    if b"\x00" in value:
        return b"~{%d}\r\n" % len(value) + value
    return string(value)


def _metadata_data(resp: r.MetadataData) -> bytes:
    pairs = b" ".join(astring(name) + b" " + metadata_value(value) for name, value in resp.entries)
    return untagged(b"METADATA", mailbox(resp.mailbox), b"(" + pairs + b")")


#: One function per response type: the response, as pieces to write in order.
_RENDERERS: dict[type, Any] = {
    r.FetchData: _fetch_data,
    r.FetchBatch: _fetch_batch,
    r.FetchFlags: lambda x: (
        fetch_modseq(x.seq, x.uid, x.modseq)
        if x.flags is None
        else fetch_flags(x.seq, x.flags, x.uid, x.modseq),
    ),
    r.Exists: lambda x: (b"* %d EXISTS\r\n" % x.count,),
    r.Recent: lambda x: (b"* %d RECENT\r\n" % x.count,),
    r.Expunged: lambda x: tuple(expunge(n) for n in x.numbers),
    r.Vanished: lambda x: (vanished(x.uids, earlier=x.earlier),) if x.uids else (),
    r.UntaggedOk: lambda x: (_untagged_ok(x),),
    r.FlagsData: lambda x: (flags_and_permanent(x.flags, x.permanent),),
    r.ListData: lambda x: (_list_data(x),),
    r.StatusData: lambda x: (_status_data(x),),
    r.QuotaRootData: lambda x: (
        untagged(b"QUOTAROOT", mailbox(x.mailbox), *(astring(root) for root in x.roots)),
    ),
    r.QuotaData: lambda x: (
        untagged(
            b"QUOTA",
            astring(x.root),
            b"("
            + b" ".join(b"%s %d %d" % (n.encode("ascii"), used, limit) for n, used, limit in x.resources)
            + b")",
        ),
    ),
    r.MetadataData: lambda x: (_metadata_data(x),),
    r.MetadataNames: lambda x: (untagged(b"METADATA", mailbox(x.mailbox), *(astring(n) for n in x.entries)),),
    r.GenUrlAuthData: lambda x: (untagged(b"GENURLAUTH", *(string(u) for u in x.urls)),),
    r.UrlFetchData: lambda x: (untagged(b"URLFETCH", astring(x.url), nstring(x.data)),),
    r.SearchData: lambda x: (_with_modseq(search_response(x.numbers), b" (MODSEQ %d)", x.modseq),),
    r.ESearchData: lambda x: (
        _with_modseq(
            esearch_response(x.tag, x.uid, x.numbers, x.options, x.partial), b" MODSEQ %d", x.modseq
        ),
    ),
    r.SortData: lambda x: (sort_response(x.numbers),),
    r.ESortData: lambda x: (esort_response(x.tag, x.uid, x.numbers, x.options, x.partial),),
    r.ContextUpdate: lambda x: (context_update(x),) if x.removed or x.added else (),
    r.NoUpdate: lambda x: (
        b"* NO [NOUPDATE " + string(x.tag) + b"] " + _text(x.text).encode("utf-8") + b"\r\n",
    ),
    r.ThreadData: lambda x: (thread_response(x.threads),),
    r.CapabilityData: lambda x: (untagged(b"CAPABILITY", *(c.encode("ascii") for c in x.capabilities)),),
    r.IdData: lambda x: (b"* ID " + paren_list(x.fields) + b"\r\n",),
    r.Enabled: lambda x: (untagged(b"ENABLED", *(c.encode("ascii") for c in x.capabilities)),),
    r.NamespaceData: lambda x: (
        untagged(b"NAMESPACE", _namespace(x.personal), _namespace(x.other_users), _namespace(x.shared)),
    ),
}


def render(response: r.Response, *, utf8_names: bool = False) -> list[bytes]:
    """
    The wire form of a typed response of :mod:`txmail.imap.responses`, as
    pieces to write one after the other (a FETCH literal's octets are a
    piece of their own, not copied).  *utf8_names*: mailbox names in UTF-8
    (RFC 6855 section 3), for a session that enabled UTF8=ACCEPT.

    Raises:
        TypeError: not a response type this module knows (a programming error).
    """
    return render_all((response,), utf8_names=utf8_names)


def render_all(responses: Iterable[r.Response], *, utf8_names: bool = False) -> list[bytes]:
    """:func:`render` of each of *responses*, the pieces in one list."""
    global _utf8_names
    out: list[bytes] = []
    renderers = _RENDERERS
    _utf8_names = utf8_names
    try:
        for response in responses:
            renderer = renderers.get(type(response))
            if renderer is None:
                raise TypeError(f"no IMAP form for {type(response).__name__}")
            out.extend(renderer(response))
    finally:
        _utf8_names = False
    return out


# fetch.py writes with this module's functions: imported last.
from txmail.imap import fetch as _fetch  # noqa: E402
