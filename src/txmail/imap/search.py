"""
Evaluate a parsed IMAP SEARCH key tree against messages (RFC 3501 section
6.4.4) and format the answers: ``* SEARCH`` (RFC 3501 section 7.2.5) and
``* ESEARCH`` (RFC 4731).

Theory of operation
===================

The parser (:func:`txmail.imap.parser.search_key`) gives a tree of
:class:`~txmail.imap.types.SearchKey` leaves under
:class:`~txmail.imap.types.SearchAnd`, :class:`~txmail.imap.types.SearchOr`
and :class:`~txmail.imap.types.SearchNot`.  The session evaluates it one
message at a time:

1. :func:`search_needs` tells, once per command, what beyond the cheap
   :class:`~txmail.model.MessageInfo` the keys look at: the parsed
   :class:`~txmail.model.MessageMetadata` (header keys) and/or the message
   octets (``BODY``, ``TEXT``).  A search on flags, sizes, dates and
   numbers touches no message file.
2. A :class:`SearchContext` holds what is the same for every message of
   the command: the values of ``*`` and the session's ``\\Recent`` UIDs.
3. :func:`matches` evaluates the tree for one message.  Decoded header
   fields and body text are computed lazily, at most once per message,
   however many keys use them, and AND/OR short-circuit, so a cheap key
   written first spares the expensive ones.
4. :func:`format_search` or :func:`format_esearch` writes the result.

This module is sans-IO: it imports nothing from Twisted and does no I/O.

Matching rules and deviations
=============================

* Strings match as case-insensitive substrings (RFC 3501 section 6.4.4:
  "In all search keys that use strings, a message matches the key if the
  string is a substring of the field.  The matching is
  case-insensitive.").  Both sides are compared after
  :meth:`str.casefold`, so ``STRASSE`` finds ``Straße`` and ``ÉTÉ`` finds
  ``été``.  The search string is the client's text (the parser decoded it
  as UTF-8; ``CHARSET`` other than :data:`SUPPORTED_CHARSETS` is the
  session's ``NO [BADCHARSET]`` concern).  The empty string is a substring
  of everything.
* Header values are compared as decoded text: unfolded (RFC 5322 section
  2.2.3), raw octets read as UTF-8 when they are valid UTF-8 (RFC 6532)
  and as latin-1 otherwise, then RFC 2047 encoded-words decoded with
  :func:`email.header.decode_header`.  The chunks it returns are joined
  here rather than with :func:`email.header.make_header`, which refuses
  unknown charsets and bad octets and inserts spaces between chunks; a
  chunk in an unknown charset is read as latin-1, a bad octet becomes
  U+FFFD, and any other error falls back to the undecoded text.
* ``FROM``/``TO``/``CC``/``BCC``/``SUBJECT`` match against the whole decoded
  field value (display names, addresses and comments alike), as Dovecot
  does.  Every occurrence of a repeated field is searched.  A message
  without the field never matches, not even ``FROM ""``.
* ``FROM``/``TO``/``CC``/``BCC`` also match the addresses of the envelope
  structure (RFC 3501 section 6.4.4), written ``mailbox@host``: so
  ``From: <user (comment)@ (comment) example.org>`` matches
  ``FROM user@example.org``, which the field as written does not hold.
* ``HEADER field string``: the field name is case-insensitive; an empty
  string matches every message that has the field (RFC 3501 section
  6.4.4).
* ``BEFORE``/``ON``/``SINCE`` compare the date of the internal date, taken
  in UTC, "disregarding time and timezone" (RFC 3501 section 6.4.4).
  ``SENTBEFORE``/``SENTON``/``SENTSINCE`` use the first ``Date:`` field,
  parsed with :func:`email.utils.parsedate_to_datetime`, and its date in
  the field's own zone; a message whose ``Date:`` is missing or unparsable
  matches none of them (but does match ``NOT SENTON ...``).
* ``BODY`` searches the text of the body: the message is parsed once by
  :func:`txmail.mime.text_parts` (linear on any input, unlike the standard
  library's parser, which takes quadratic time on some hostile messages);
  every ``text/*`` leaf part is decoded (Content-Transfer-Encoding base64 /
  quoted-printable, then its charset, falling back to UTF-8 and then
  latin-1), and the header fields of an attached ``message/rfc822`` are
  searched as well, since they are part of the outer body.  Non-text leaf
  parts (images, PDFs...) are not searched, as in Dovecot.  Should the
  parser fail, the raw body octets (after
  :attr:`~txmail.model.MessageMetadata.header_size`, or after the first
  blank line) are searched as latin-1 text.  ``TEXT`` is the header
  fields of the message or ``BODY``.
* ``KEYWORD``/``UNKEYWORD`` compare keywords case-insensitively (flags are
  case-insensitive, RFC 9051 section 2.3.2).
* ``NEW`` is ``RECENT UNSEEN`` and ``OLD`` is ``NOT RECENT`` (RFC 3501
  section 6.4.4); ``\\Recent`` is session state, so the session passes
  its recent UIDs in the :class:`SearchContext`.
* Sequence sets: ``*`` is the highest message number for a bare set and
  the highest UID for ``UID`` (RFC 3501 section 9), and a range is used in
  either order (``5:*`` with 3 messages is ``3:5``, as RFC 3501 section
  6.4.8 describes for UIDs).
* ``SAVEDBEFORE``/``SAVEDON``/``SAVEDSINCE`` (RFC 8514 section 4.3)
  compare the date of the save date as ``BEFORE``/``ON``/``SINCE`` do the
  internal date's, and the internal date's for a message whose store keeps
  no save date; ``SAVEDATESUPPORTED`` matches the messages that have one
  (every message of a mailbox whose store keeps them, none otherwise).
* ``EMAILID`` and ``THREADID`` compare the RFC 8474 ids exactly (object
  ids are case-sensitive, RFC 8474 section 7); the THREADID is
  :func:`txmail.imap.thread.thread_id`'s, from the header fields.
* ``MODSEQ`` (RFC 7162 section 3.1.5) is evaluated if a key tree holds it
  (its last argument is the mod-sequence; a message matches when its
  modseq is at least that); the parser does not produce it yet.
"""

from __future__ import annotations

import contextlib
import datetime
import email
import email.header
import email.utils
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from txmail import mime
from txmail.imap import serialize
from txmail.imap.types import SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr, SequenceSet
from txmail.mime import parse_header_section, parse_metadata
from txmail.model import ANSWERED, DELETED, DRAFT, FLAGGED, SEEN, MessageInfo, MessageMetadata

__all__ = [
    "ESEARCH_OPTIONS",
    "SUPPORTED_CHARSETS",
    "SearchContext",
    "SearchNeeds",
    "format_esearch",
    "format_search",
    "matches",
    "search_needs",
]

#: The charsets SEARCH accepts; a NO [BADCHARSET] answer lists these
#: (RFC 3501 section 6.4.4: US-ASCII MUST be supported).
SUPPORTED_CHARSETS = ("US-ASCII", "UTF-8")

#: The RFC 4731 result options, in the order :func:`format_esearch` writes them.
ESEARCH_OPTIONS = serialize.ESEARCH_OPTIONS

#: Keys that read header fields.
_HEADER_KEYS = frozenset(
    {"BCC", "CC", "FROM", "HEADER", "SENTBEFORE", "SENTON", "SENTSINCE", "SUBJECT", "TO", "THREADID"}
)
#: Keys that read the message text.
_MESSAGE_KEYS = frozenset({"BODY", "TEXT"})

#: A key that tests one system flag: (flag, whether it must be set).
_FLAG_KEYS = {
    "ANSWERED": (ANSWERED, True),
    "DELETED": (DELETED, True),
    "DRAFT": (DRAFT, True),
    "FLAGGED": (FLAGGED, True),
    "SEEN": (SEEN, True),
    "UNANSWERED": (ANSWERED, False),
    "UNDELETED": (DELETED, False),
    "UNDRAFT": (DRAFT, False),
    "UNFLAGGED": (FLAGGED, False),
    "UNSEEN": (SEEN, False),
}

_FOLD_RE = re.compile(r"\r?\n(?=[ \t])")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")


# -- what a search needs ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchNeeds:
    """
    What :func:`matches` must be given besides the :class:`MessageInfo`.

    Attributes:
        metadata: a header key (FROM, TO, CC, BCC, SUBJECT, HEADER,
            SENTBEFORE, SENTON, SENTSINCE, THREADID) is somewhere in the tree.
        message: BODY or TEXT is somewhere in the tree.  Their header part
            uses the metadata when given, else parses the message.
    """

    metadata: bool
    message: bool


def leaves(key: SearchNode) -> Iterator[SearchKey]:
    """Every search key of the tree *key* (AND, OR and NOT looked through)."""
    stack = [key]
    while stack:
        node = stack.pop()
        if isinstance(node, SearchKey):
            yield node
        elif isinstance(node, SearchAnd):
            stack.extend(node.keys)
        elif isinstance(node, SearchOr):
            stack.extend((node.left, node.right))
        else:
            stack.append(node.key)


def search_needs(key: SearchNode) -> SearchNeeds:
    """What evaluating *key* reads beyond the :class:`MessageInfo`."""
    names = {leaf.name for leaf in leaves(key)}
    return SearchNeeds(metadata=bool(names & _HEADER_KEYS), message=bool(names & _MESSAGE_KEYS))


class SearchContext:
    """
    What is the same for every message of one SEARCH.

    Attributes:
        max_seq: the highest message sequence number (``*`` of a bare set).
        max_uid: the highest UID in the mailbox (``*`` of ``UID``).
        recent_uids: the UIDs that are ``\\Recent`` in this session.
    """

    __slots__ = ("max_seq", "max_uid", "recent_uids")

    def __init__(self, *, max_seq: int, max_uid: int, recent_uids: frozenset[int] = frozenset()) -> None:
        self.max_seq = max_seq
        self.max_uid = max_uid
        self.recent_uids = recent_uids

    def __repr__(self) -> str:
        return (
            f"SearchContext(max_seq={self.max_seq}, max_uid={self.max_uid}, recent={len(self.recent_uids)})"
        )


# -- decoding for comparison ------------------------------------------------------


def _bytes_text(data: bytes, charset: str | None = None) -> str:
    """*data* as text: in *charset* if it decodes cleanly, else UTF-8, else best effort."""
    candidates = [charset] if charset else []
    candidates.append("utf-8")
    for name in candidates:
        try:
            return data.decode(name)
        except (LookupError, UnicodeError):
            continue
    return mime.decode_charset(data, charset, "latin-1") if charset else data.decode("latin-1")


def _decode_words(text: str) -> str:
    """Decode the RFC 2047 encoded-words of *text* (see the module docstring)."""
    if "=?" not in text:
        return text
    try:
        out = []
        for chunk, charset in email.header.decode_header(text):
            if isinstance(chunk, str):
                out.append(chunk)
            elif charset is None:
                # decode_header turned the unencoded text into bytes this way.
                out.append(chunk.decode("raw-unicode-escape"))
            else:
                name = charset.split("*", 1)[0]  # RFC 2231 section 5: charset*language
                out.append(mime.decode_charset(chunk, name, "latin-1"))
        # raw-unicode-escape reads a written "\ud800" as a lone surrogate: replaced,
        # as JSON and IMAP output cannot carry it.
        return mime.without_lone_surrogates("".join(out))
    except Exception:
        return text


def _decode_field(raw: str) -> str:
    """A header field's raw value (latin-1 decoded octets) as text to compare."""
    if raw.isascii() and "=?" not in raw and "\n" not in raw.rstrip("\r\n"):
        # The common case, one line of ASCII: nothing to unfold, re-read or decode.
        return raw.strip(" \t\r\n")
    text = _FOLD_RE.sub("", raw).strip(" \t\r\n")
    with contextlib.suppress(UnicodeError):
        text = text.encode("latin-1").decode("utf-8")
    return _decode_words(text)


def _internal_date(info: MessageInfo) -> datetime.date:
    return datetime.datetime.fromtimestamp(info.internal_date, tz=datetime.UTC).date()


def _save_date(info: MessageInfo) -> datetime.date:
    """
    The date of the save date, in UTC; the internal date's when the store
    keeps none (RFC 8514 section 4.3: "the SAVEDBEFORE, SAVEDON, and
    SAVEDSINCE search keys MUST use the internal date attribute instead").
    """
    when = info.internal_date if info.save_date is None else info.save_date
    return datetime.datetime.fromtimestamp(when, datetime.UTC).date()


def _sent_date(value: str) -> datetime.date | None:
    try:
        return email.utils.parsedate_to_datetime(_FOLD_RE.sub("", value).strip()).date()
    except Exception:
        return None


def _raw_body(message: bytes, metadata: MessageMetadata | None) -> bytes:
    if metadata is not None:
        return message[metadata.header_size :]
    m = _BLANK_LINE_RE.search(message)
    return message[m.end() :] if m else b""


def _fields_text(fields: Sequence[tuple[str, str]]) -> str:
    return "".join(f"{name.strip()}: {_decode_field(value)}\n" for name, value in fields)


def _body_text(message: bytes, metadata: MessageMetadata | None) -> str:
    """
    The searchable text of the body: text parts decoded (transfer encoding,
    then charset), the headers of attached messages, non-text parts left
    out.  One linear parse (:func:`txmail.mime.text_parts`): the message
    comes from anyone, and the standard library's parser takes quadratic
    time on some hostile structures (folded parameter lists, deep nesting).
    """
    try:
        out: list[str] = []
        for kind, value in mime.text_parts(message):
            if kind == "fields":
                out.append(_fields_text(value))
            else:
                data, charset = value
                out.append(_bytes_text(data, charset))
        # The top-level header is not part of BODY (RFC 3501 section 6.4.4);
        # the walk starts below it.
        return "\n".join(out)
    except Exception:
        return _raw_body(message, metadata).decode("latin-1")


#: A header field name as written -> its comparison key (blanks before the
#: colon dropped, case-folded): the messages of a mailbox share a few dozen
#: spellings.  Bounded: names are the senders'.
_NAMES: dict[str, str] = {}


def _name_key(name: str) -> str:
    key = name.strip(" \t").casefold()
    if len(_NAMES) < 4096:
        _NAMES[name] = key
    return key


class _Facts:
    """One message's decoded, case-folded texts, each computed on first use."""

    __slots__ = ("_addresses", "_body", "_fields", "_header_text", "_sent", "message", "metadata")

    def __init__(self, metadata: MessageMetadata | None, message: bytes | None) -> None:
        self.metadata = metadata
        self.message = message
        self._fields: dict[str, list[str]] | None = None
        self._addresses: dict[str, list[str]] = {}
        self._sent: tuple[datetime.date | None] | None = None
        self._body: str | None = None
        self._header_text: str | None = None

    def need_metadata(self, key: str) -> MessageMetadata:
        if self.metadata is None:
            if self.message is None:
                raise ValueError(f"SEARCH {key} needs the message metadata or the message")
            self.metadata = parse_metadata(self.message)
        return self.metadata

    def need_message(self, key: str) -> bytes:
        if self.message is None:
            raise ValueError(f"SEARCH {key} needs the message")
        return self.message

    def field(self, key: str, name: str) -> list[str]:
        """The decoded, case-folded values of every field *name* (case-insensitive)."""
        if self._fields is None:
            self._fields = {}
        wanted = name.casefold()
        found = self._fields.get(wanted)
        if found is None:
            # Only the fields asked for are decoded (RFC 2047 decoding is the
            # costly part, and a search names one or two fields).
            found = self._fields[wanted] = [
                _decode_field(v).casefold()
                for n, v in self.need_metadata(key).headers
                if (_NAMES.get(n) or _name_key(n)) == wanted
            ]
        return found

    def addresses(self, key: str) -> list[str]:
        """The case-folded ``mailbox@host`` of each address of the envelope's *key* field."""
        found = self._addresses.get(key)
        if found is None:
            found = []
            for address in self.need_metadata(key).envelope[_ENVELOPE_INDEX[key]] or ():
                # (name, adl, mailbox, host); a group marker has no host.
                if len(address) == 4 and address[2] is not None and address[3] is not None:
                    found.append(f"{address[2]}@{address[3]}".casefold())
            self._addresses[key] = found
        return found

    def sent(self, key: str) -> datetime.date | None:
        if self._sent is None:
            date = None
            for n, v in self.need_metadata(key).headers:
                if n.strip(" \t").lower() == "date":
                    date = _sent_date(v)
                    break
            self._sent = (date,)
        return self._sent[0]

    def header_text(self, key: str) -> str:
        if self._header_text is None:
            if self.metadata is not None:
                fields = self.metadata.headers
            else:
                # TEXT reads the message anyway: its header fields alone,
                # not a whole parse (the body is walked by body()).
                fields = parse_header_section(self.need_message(key))[1]
            self._header_text = _fields_text(fields).casefold()
        return self._header_text

    def body(self, key: str) -> str:
        if self._body is None:
            self._body = _body_text(self.need_message(key), self.metadata).casefold()
        return self._body


# -- evaluation ----------------------------------------------------------------


#: The place of each address field in the ENVELOPE (RFC 3501 section 7.4.2).
_ENVELOPE_INDEX = {"FROM": 2, "TO": 5, "CC": 6, "BCC": 7}


def _has_keyword(info: MessageInfo, keyword: str) -> bool:
    wanted = keyword.casefold()
    return any(flag.casefold() == wanted for flag in info.flags)


def _leaf(key: SearchKey, ctx: SearchContext, seq: int, info: MessageInfo, facts: _Facts) -> bool:
    name, args = key.name, key.args
    flag = _FLAG_KEYS.get(name)
    if flag is not None:
        return (flag[0] in info.flags) == flag[1]
    if name == "ALL":
        return True
    if name == "SEQUENCE":
        return _set(args[0]).contains(seq, ctx.max_seq)
    if name == "UID":
        return _set(args[0]).contains(info.uid, ctx.max_uid)
    if name == "RECENT":
        return info.uid in ctx.recent_uids
    if name == "OLD":
        return info.uid not in ctx.recent_uids
    if name == "NEW":
        return info.uid in ctx.recent_uids and SEEN not in info.flags
    if name == "KEYWORD":
        return _has_keyword(info, _str(args[0]))
    if name == "UNKEYWORD":
        return not _has_keyword(info, _str(args[0]))
    if name == "LARGER":
        return info.size > _int(args[0])
    if name == "SMALLER":
        return info.size < _int(args[0])
    if name == "MODSEQ":
        return info.modseq >= _int(args[-1])
    if name in ("BEFORE", "ON", "SINCE"):
        return _compare_date(name, _internal_date(info), _date(args[0]))
    if name in ("SAVEDBEFORE", "SAVEDON", "SAVEDSINCE"):
        return _compare_date(name[5:], _save_date(info), _date(args[0]))
    if name == "SAVEDATESUPPORTED":
        return info.save_date is not None
    if name == "EMAILID":
        return info.email_id is not None and info.email_id == _str(args[0])
    if name == "THREADID":
        from txmail.imap.thread import thread_id  # thread.py imports this module

        return thread_id(facts.need_metadata(name).headers, info.email_id) == _str(args[0])
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = facts.sent(name)
        return sent is not None and _compare_date(name[4:], sent, _date(args[0]))
    if name == "SUBJECT":
        wanted = _str(args[0]).casefold()
        return any(wanted in value for value in facts.field(name, name))
    if name in _ENVELOPE_INDEX:
        # The field as written (display names, comments), or the addresses
        # of the envelope structure (RFC 3501 section 6.4.4).
        wanted = _str(args[0]).casefold()
        values = facts.field(name, name)
        if not values:
            return False
        return any(wanted in value for value in values) or any(wanted in a for a in facts.addresses(name))
    if name == "HEADER":
        wanted = _str(args[1]).casefold()
        return any(wanted in value for value in facts.field(name, _str(args[0])))
    if name == "BODY":
        return _str(args[0]).casefold() in facts.body(name)
    if name == "TEXT":
        wanted = _str(args[0]).casefold()
        facts.need_message(name)
        return wanted in facts.header_text(name) or wanted in facts.body(name)
    raise ValueError(f"unknown SEARCH key {name!r}")


def _compare_date(how: str, date: datetime.date, wanted: datetime.date) -> bool:
    if how == "BEFORE":
        return date < wanted
    if how == "ON":
        return date == wanted
    return date >= wanted  # SINCE: "within or later than" (RFC 3501 section 6.4.4)


def _set(arg: Any) -> SequenceSet:
    if not isinstance(arg, SequenceSet):
        raise TypeError(f"expected a sequence set, got {arg!r}")
    return arg


def _str(arg: Any) -> str:
    if not isinstance(arg, str):
        raise TypeError(f"expected a string, got {arg!r}")
    return arg


def _int(arg: Any) -> int:
    if not isinstance(arg, int):
        raise TypeError(f"expected a number, got {arg!r}")
    return arg


def _date(arg: Any) -> datetime.date:
    if not isinstance(arg, datetime.date):
        raise TypeError(f"expected a date, got {arg!r}")
    return arg.date() if isinstance(arg, datetime.datetime) else arg


def _eval(key: SearchNode, ctx: SearchContext, seq: int, info: MessageInfo, facts: _Facts) -> bool:
    if isinstance(key, SearchKey):
        return _leaf(key, ctx, seq, info, facts)
    if isinstance(key, SearchAnd):
        return all(_eval(k, ctx, seq, info, facts) for k in key.keys)
    if isinstance(key, SearchOr):
        return _eval(key.left, ctx, seq, info, facts) or _eval(key.right, ctx, seq, info, facts)
    if isinstance(key, SearchNot):
        return not _eval(key.key, ctx, seq, info, facts)
    raise TypeError(f"not a search key: {key!r}")


def matches(
    key: SearchNode,
    ctx: SearchContext,
    seq: int,
    info: MessageInfo,
    metadata: MessageMetadata | None = None,
    message: bytes | None = None,
) -> bool:
    """
    Whether message number *seq* (with *info*) satisfies *key*.

    Args:
        key: the parsed search key tree (``Search.key``).
        ctx: what is common to every message of this search.
        seq: the message's sequence number in the session.
        info: its listing.
        metadata: its parsed metadata; needed when
            :func:`search_needs` says ``metadata`` (or derived from
            *message* when that is given).
        message: its octets; needed when :func:`search_needs` says
            ``message``.

    Raises:
        ValueError: the tree reaches a key whose data was not given, or a
            key name this module does not know (programming errors).
    """
    return _eval(key, ctx, seq, info, _Facts(metadata, message))


# -- responses --------------------------------------------------------------------

# The SEARCH and ESEARCH responses are written by txmail.imap.serialize (the
# one module that writes IMAP syntax); these names stay for callers.
format_search = serialize.search_response
format_esearch = serialize.esearch_response
