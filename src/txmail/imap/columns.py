"""
SEARCH, SORT and THREAD from a store's header columns
(:class:`txmail.interfaces.IHeaderColumns`) instead of each message's
:class:`~txmail.model.MessageMetadata`.

A mailbox that provides the interface gives the raw values of the header
fields of :data:`~txmail.interfaces.HEADER_COLUMNS` for every message at
once; :class:`ColumnHeaders` stands in for the metadata where
:mod:`txmail.imap.search` and :mod:`txmail.imap.commands.sort` read it:

* ``headers``: the ``(name, raw value)`` pairs of those fields, every
  occurrence of each (SEARCH matches every occurrence, SORT and THREAD
  read the first), in header order, named in lower case: an iterable made
  afresh at each use from the store's flat tuple (no pair is kept).
* ``envelope``: the ENVELOPE built from them as the store builds it
  (:func:`txmail.mime.envelope`, the first occurrence of each field), so
  its From, To, Cc and Bcc addresses (positions 2, 5, 6, 7: SEARCH FROM/TO/
  CC/BCC, RFC 3501 section 6.4.4; SORT FROM/TO/CC/DISPLAYFROM/DISPLAYTO)
  are the message's.  Its Sender and Reply-To are not the message's (those
  fields are not columns): nothing reading a stand-in looks at them.

The answers are those of the metadata path: the same values go through the
same code.  A search reads the columns only when every key that reads the
header is answered by them (:func:`search_uses_columns`); anything else
(``HEADER`` of another field, ``THREADID``, ``TEXT``, ``BODY``) keeps the
metadata path.

SEARCH does not build a :class:`ColumnHeaders` for every message: it reads
the flat tuples (:func:`read_column_values`) and turns the key tree once
into a predicate (:func:`column_predicate`) that tests them directly, so
the work per message is finding the field in the tuple and the substring
test.  The predicate's answers are :func:`txmail.imap.search.matches`'s:

* a field's text is :func:`txmail.imap.search._decode_field`'s, case-folded;
  a value of one line of ASCII without ``=?`` (what that function returns
  stripped, untouched) is lowered instead, which for ASCII is the same as
  :meth:`str.casefold`; any other value goes through that function;
* every occurrence of the field is tested, and a message without it never
  matches (RFC 3501 section 6.4.4);
* ``FROM``/``TO``/``CC``/``BCC`` test the field's text and, when it does
  not match, the addresses of the envelope built from the columns, as
  :class:`ColumnHeaders` gives them (of the field's first occurrence: that
  one field is parsed, by the envelope's own parser);
* ``SENTBEFORE``/``SENTON``/``SENTSINCE`` read the first ``Date:``;
* the keys that read no header field (flags, sizes, dates, numbers) are
  evaluated by :mod:`txmail.imap.search` itself.

A key of the columns alone on a mailbox whose every message has them is
answered in bulk instead (:func:`bulk_search`): for each field it reads, a
:class:`FieldIndex` holds the texts above of every message joined into one
string, searched with :meth:`str.find` (the same texts, so the same
answers), and kept from one search to the next (extended when messages
were appended).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate
from typing import Any

from txmail import mime
from txmail.imap import search
from txmail.imap._awaiting import awaited as _awaited
from txmail.imap.search import SearchContext, leaves
from txmail.imap.types import FetchAttribute, SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr
from txmail.interfaces import HEADER_COLUMNS, HEADER_LINES, IHeaderColumns, IHeaderLines, IMailbox
from txmail.model import MessageInfo

__all__ = [
    "COLUMN_SORT_KEYS",
    "ColumnHeaders",
    "FieldIndex",
    "bulk_search",
    "column_predicate",
    "fetch_uses_lines",
    "field_index",
    "has_columns",
    "ordered_values",
    "read_column_values",
    "read_columns",
    "read_lines",
    "search_uses_columns",
    "values_predicate",
]


#: SEARCH keys answered by the columns (besides those reading no header).
_COLUMN_KEYS = frozenset({"BCC", "CC", "FROM", "SENTBEFORE", "SENTON", "SENTSINCE", "SUBJECT", "TO"})
#: SEARCH keys that read header fields or the message (see search._HEADER_KEYS, _MESSAGE_KEYS).
_HEADER_KEYS = frozenset({"HEADER", "THREADID", "BODY", "TEXT"}) | _COLUMN_KEYS
#: SORT keys answered by the columns: all of them (SORT reads the columns
#: whatever its criteria; a test checks that every key of the sort module is here).
COLUMN_SORT_KEYS = frozenset(
    {"ARRIVAL", "SIZE", "DATE", "SUBJECT", "FROM", "TO", "CC", "DISPLAYFROM", "DISPLAYTO"}
)

_NAMES = frozenset(HEADER_COLUMNS)


def has_columns(mailbox: IMailbox) -> bool:
    """Whether *mailbox* gives header columns."""
    return IHeaderColumns.providedBy(mailbox)


def search_uses_columns(key: SearchNode) -> bool:
    """
    Whether the header keys of *key* are all answered by the columns (and
    it reads no message text): ``SUBJECT``, ``FROM``, ``TO``, ``CC``,
    ``BCC``, ``SENTBEFORE``, ``SENTON``, ``SENTSINCE``, and ``HEADER`` of
    a field of :data:`~txmail.interfaces.HEADER_COLUMNS` (its name
    compared case-folded, as SEARCH does).
    """
    for leaf in leaves(key):
        name = leaf.name
        if name in _COLUMN_KEYS or name not in _HEADER_KEYS:
            continue
        if name == "HEADER" and isinstance(leaf.args[0], str) and leaf.args[0].casefold() in _NAMES:
            continue
        return False
    return True


class ColumnHeaders:
    """A message's header columns, read as :class:`~txmail.model.MessageMetadata` is by SEARCH and SORT."""

    __slots__ = ("_envelope", "fields")

    def __init__(self, fields: tuple[str, ...]) -> None:
        #: ``(name, raw value, name, raw value, ...)``, as the store gives them.
        self.fields = fields
        self._envelope: tuple[Any, ...] | None = None

    @property
    def headers(self) -> Iterable[tuple[str, str]]:
        """The ``(name, raw value)`` pairs, in order (an iterator, to be used once)."""
        pairs = iter(self.fields)
        return zip(pairs, pairs, strict=True)

    @property
    def envelope(self) -> tuple[Any, ...]:
        """The ENVELOPE of the columns (its addresses only are the message's; see the module docstring)."""
        if self._envelope is None:
            self._envelope = mime.envelope(tuple(self.headers))
        return self._envelope

    def __repr__(self) -> str:
        return f"ColumnHeaders({self.fields!r})"


async def read_columns(mailbox: IMailbox, uids: Iterable[int]) -> dict[int, ColumnHeaders]:
    """The :class:`ColumnHeaders` of the messages *uids* of *mailbox* (an :class:`IHeaderColumns`)."""
    values = await read_column_values(mailbox, uids)
    return {uid: ColumnHeaders(fields) for uid, fields in values.items()}


async def read_column_values(mailbox: IMailbox, uids: Iterable[int]) -> dict[int, tuple[str, ...]]:
    """The flat column tuples of the messages *uids* of *mailbox* (an :class:`IHeaderColumns`)."""
    return await _awaited(IHeaderColumns(mailbox).header_columns(uids))


# -- SEARCH on the flat tuples --------------------------------------------------

#: A compiled search: (sequence number, listing, column tuple) -> whether it matches.
Predicate = Callable[[int, MessageInfo, tuple[str, ...]], bool]
#: A compiled search that reads the column tuple alone.
ValuesPredicate = Callable[[tuple[str, ...]], bool]


def _text(raw: str) -> str:
    """
    A raw value as SEARCH compares it: ``_decode_field(raw).casefold()``,
    without the call for one line of ASCII without encoded-words (stripped
    and lowered: :meth:`str.casefold` of ASCII text is :meth:`str.lower`).
    """
    if raw.isascii() and "=?" not in raw and "\n" not in raw.rstrip("\r\n"):
        return raw.strip(" \t\r\n").lower()
    return search._decode_field(raw).casefold()


def field_texts(values: tuple[str, ...], name: str) -> list[str]:
    """
    The texts (:func:`_text`) of every field *name* (lower case) of a
    column tuple, in order.  Most messages have a field once or not at
    all: two scans in C find it then.
    """
    count = values.count(name)
    if count == 1:
        i = values.index(name)
        # A value equal to the name is not the field (names are at even places).
        return [] if i & 1 else [_text(values[i + 1])]
    if not count:
        return []
    return [_text(values[i + 1]) for i in range(0, len(values), 2) if values[i] == name]


def _sent(values: tuple[str, ...]) -> Any:
    """The date of the first ``Date:`` (as ``_Facts.sent``), or None."""
    for i in range(0, len(values), 2):
        if values[i] == "date":
            return search._sent_date(values[i + 1])
    return None


def _substring(name: str, wanted: str) -> ValuesPredicate:
    """SUBJECT and HEADER: *wanted* is in the text of some field *name*."""

    def test(values: tuple[str, ...]) -> bool:
        if values.count(name) == 1:  # field_texts and _text, inline: the common case
            i = values.index(name)
            if i & 1:
                return False
            raw = values[i + 1]
            if raw.isascii() and "=?" not in raw and "\n" not in raw.rstrip("\r\n"):
                return wanted in raw.strip(" \t\r\n").lower()
            return wanted in search._decode_field(raw).casefold()
        return any(wanted in text for text in field_texts(values, name))

    return test


def _address(key: str, wanted: str) -> ValuesPredicate:
    """FROM/TO/CC/BCC: the field's text, else the envelope's addresses (RFC 3501 section 6.4.4)."""
    name = key.lower()
    # Whether the addresses of a first value match: senders recur, so each
    # value is parsed once a search (at most _MEMO of them kept).
    memo: dict[str, bool] = {}

    def test(values: tuple[str, ...]) -> bool:
        texts = field_texts(values, name)
        if not texts:
            return False
        if any(wanted in text for text in texts):
            return True
        raw = next(values[i + 1] for i in range(0, len(values), 2) if values[i] == name)
        if raw.isascii() and "=?" not in raw and _literal_addresses(texts[0]):
            return False  # its addresses are in its text, which does not match
        hit = memo.get(raw)
        if hit is None:
            hit = any(wanted in a for a in _addresses(raw))
            if len(memo) < _MEMO:
                memo[raw] = hit
        return hit

    return test


#: The most address field values whose answer one search keeps.
_MEMO = 1 << 16


def _literal_addresses(text: str) -> bool:
    """
    Whether the addresses of a field whose text is *text* (the value of
    one line of ASCII, unfolded and stripped, lowered) are written in it
    as ``mailbox@host``: the value is a list of the common forms that
    :func:`txmail.mime.envelope` reads with its own pattern
    (``mime._simple_addresses``, whose classes are the same in either
    case), each holding its address as written.
    """
    match = mime._SIMPLE_ADDRESS_RE.fullmatch
    return all(match(piece.strip(" \t")) for piece in (text.split(",") if "," in text else (text,)))


def _addresses(raw: str) -> list[str]:
    """
    The case-folded ``mailbox@host`` of each address of an address field's
    raw value, as the envelope of :class:`ColumnHeaders` gives them
    (``_Facts.addresses``): :func:`txmail.mime.envelope` parses the first
    occurrence of the field alone, so that one is parsed here, the rest of
    the envelope left unbuilt.
    """
    found = []
    for address in mime._parse_addresses(mime._unfold(raw)) or ():
        # (name, adl, mailbox, host); a group marker has no host.
        if len(address) == 4 and address[2] is not None and address[3] is not None:
            found.append(f"{address[2]}@{address[3]}".casefold())
    return found


def _sent_key(key: SearchKey) -> ValuesPredicate:
    how, wanted = key.name[4:], search._date(key.args[0])

    def test(values: tuple[str, ...]) -> bool:
        sent = _sent(values)
        return sent is not None and search._compare_date(how, sent, wanted)

    return test


def _other(key: SearchKey, ctx: SearchContext) -> Predicate:
    """A key reading no header field: :mod:`txmail.imap.search`'s own evaluation."""
    facts = search._Facts(None, None)

    def test(seq: int, info: MessageInfo, values: tuple[str, ...]) -> bool:
        return search._leaf(key, ctx, seq, info, facts)

    return test


def _values_leaf(key: SearchKey) -> ValuesPredicate | None:
    """The test of a key that reads the columns alone, or None."""
    name = key.name
    if name == "SUBJECT":
        return _substring("subject", search._str(key.args[0]).casefold())
    if name == "HEADER":
        return _substring(search._str(key.args[0]).casefold(), search._str(key.args[1]).casefold())
    if name in search._ENVELOPE_INDEX:
        return _address(name, search._str(key.args[0]).casefold())
    if name in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        return _sent_key(key)
    if name == "ALL":
        return lambda values: True
    return None


def _compile_leaf(key: SearchKey, ctx: SearchContext) -> Predicate:
    on_values = _values_leaf(key)
    if on_values is not None:
        return lambda seq, info, values: on_values(values)
    if key.name in _HEADER_KEYS:
        raise ValueError(f"SEARCH {key.name} is not answered by the header columns")
    return _other(key, ctx)


def _compile(key: SearchNode, ctx: SearchContext) -> Predicate:
    if isinstance(key, SearchKey):
        return _compile_leaf(key, ctx)
    if isinstance(key, SearchAnd):
        parts = tuple(_compile(k, ctx) for k in key.keys)
        if len(parts) == 1:
            return parts[0]
        return lambda seq, info, values: all(p(seq, info, values) for p in parts)
    if isinstance(key, SearchOr):
        left, right = _compile(key.left, ctx), _compile(key.right, ctx)
        return lambda seq, info, values: left(seq, info, values) or right(seq, info, values)
    if isinstance(key, SearchNot):
        inner = _compile(key.key, ctx)
        return lambda seq, info, values: not inner(seq, info, values)
    raise TypeError(f"not a search key: {key!r}")


def _compile_values(key: SearchNode) -> ValuesPredicate | None:
    if isinstance(key, SearchKey):
        return _values_leaf(key)
    if isinstance(key, SearchAnd):
        parts = tuple(_compile_values(k) for k in key.keys)
        if any(p is None for p in parts):
            return None
        if len(parts) == 1:
            return parts[0]
        return lambda values: all(p(values) for p in parts)  # type: ignore[misc]  # a closure over the parts: the lambda is the Predicate
    if isinstance(key, SearchOr):
        left, right = _compile_values(key.left), _compile_values(key.right)
        if left is None or right is None:
            return None
        return lambda values: left(values) or right(values)
    if isinstance(key, SearchNot):
        inner = _compile_values(key.key)
        if inner is None:
            return None
        return lambda values: not inner(values)
    raise TypeError(f"not a search key: {key!r}")


def column_predicate(key: SearchNode, ctx: SearchContext) -> Predicate:
    """
    *key* (for which :func:`search_uses_columns` holds) turned once into a
    function of (sequence number, listing, column tuple) answering as
    :func:`txmail.imap.search.matches` does with the message's metadata.

    Raises:
        ValueError: a key of *key* is not answered by the columns.
    """
    if not search_uses_columns(key):
        raise ValueError("the search reads more than the header columns")
    return _compile(key, ctx)


def values_predicate(key: SearchNode) -> ValuesPredicate | None:
    """
    :func:`column_predicate` of a key that reads nothing but the header
    columns (no flags, sizes, dates, numbers or UIDs: ``SUBJECT x``, ``OR
    FROM a TO b``), as a function of the column tuple alone, so that a
    search tests every message without its listing and lists only those
    that match; None for another key.

    Raises:
        ValueError: a key of *key* is not answered by the columns.
    """
    if not search_uses_columns(key):
        raise ValueError("the search reads more than the header columns")
    return _compile_values(key)


# -- SEARCH in bulk: one text a field, searched in C ------------------------------

#: What separates the texts of a :class:`_Joined`: a needle holding it is
#: searched message by message instead (no text boundary is crossed then).
_SEP = "\x00"
#: The fields with a kept :class:`FieldIndex` (one each: the last mailbox
#: searched on that field; some MB for 100,000 messages).
_INDEXES: dict[str, FieldIndex] = {}


class _Joined:
    """
    Texts joined by :data:`_SEP` into one string, each followed by it, and
    for each the message it belongs to: a substring search is then one
    :meth:`str.find` a match, in C, whatever the number of messages.
    """

    __slots__ = ("nexts", "owners", "text")

    def __init__(self, texts: list[str], owners: list[int]) -> None:
        self.text = _SEP.join(texts) + _SEP if texts else ""
        #: The offset just past each text's separator (where the next begins).
        self.nexts = array("q", accumulate(map((1).__add__, map(len, texts))))
        #: The message (its place in the searched sequence) of each text.
        self.owners = array("q", owners)

    def then(self, tail: _Joined, shift: int) -> _Joined:
        """These texts followed by *tail*'s, whose owners are *shift* places further."""
        joined = _Joined([], [])
        offset = len(self.text)
        joined.text = self.text + tail.text
        joined.nexts = self.nexts + array("q", map(offset.__add__, tail.nexts))
        joined.owners = self.owners + array("q", map(shift.__add__, tail.owners))
        return joined

    def find(self, needle: str) -> set[int]:
        """The messages with a text holding *needle* (not empty, without :data:`_SEP`)."""
        text, nexts, owners = self.text, self.nexts, self.owners
        found: set[int] = set()
        at = text.find(needle)
        while at >= 0:
            k = bisect_right(nexts, at)  # the text the match is in: it never crosses a separator
            found.add(owners[k])
            at = text.find(needle, nexts[k])
        return found


class FieldIndex:
    """
    The texts (:func:`_text`) of every occurrence of one column field of a
    sequence of column tuples, joined (:class:`_Joined`); for an address
    field, also the addresses :func:`_address` parses, made at first use.
    """

    __slots__ = ("_addresses", "name", "texts", "values")

    def __init__(self, name: str, values: list[tuple[str, ...]], texts: _Joined) -> None:
        self.name = name
        #: The column tuples indexed, in order (compared with those of the next search).
        self.values = values
        self.texts = texts
        self._addresses: _Joined | None = None

    @classmethod
    def build(cls, name: str, values: list[tuple[str, ...]]) -> FieldIndex:
        """
        The index of field *name* (lower case) of *values*: each message's
        texts as :func:`field_texts` makes them (inline for a field found
        once, as :func:`_substring` tests it).
        """
        texts: list[str] = []
        owners: list[int] = []
        add_text, add_owner = texts.append, owners.append
        decode = search._decode_field
        for i, fields in enumerate(values):
            if fields.count(name) == 1:
                j = fields.index(name)
                if j & 1:
                    continue  # a value spelled like the name: not the field
                raw = fields[j + 1]
                if raw.isascii() and "=?" not in raw and "\n" not in raw.rstrip("\r\n"):
                    add_text(raw.strip(" \t\r\n").lower())  # _text, inline
                else:
                    add_text(decode(raw).casefold())
                add_owner(i)
            elif fields:
                for text in field_texts(fields, name):
                    add_text(text)
                    add_owner(i)
        return cls(name, values, _Joined(texts, owners))

    def extended(self, values: list[tuple[str, ...]]) -> FieldIndex:
        """The index of *values*, which begin with this index's (messages appended)."""
        done = len(self.values)
        tail = FieldIndex.build(self.name, values[done:])
        index = FieldIndex(self.name, values, self.texts.then(tail.texts, done))
        if self._addresses is not None:
            index._addresses = self._addresses.then(tail.addresses(), done)
        return index

    def addresses(self) -> _Joined:
        """
        The case-folded addresses (:func:`_addresses`) of the first
        occurrence of the field, of the messages whose addresses
        :func:`_address` reads beside the field's text: those not written
        literally in it.
        """
        if self._addresses is None:
            name = self.name
            texts: list[str] = []
            owners: list[int] = []
            # Senders recur: each value's addresses parsed once (at most _MEMO kept).
            parsed: dict[str, list[str]] = {}
            for i, fields in enumerate(self.values):
                if fields.count(name) == 1:
                    j = fields.index(name)
                    if j & 1:
                        continue
                    raw = fields[j + 1]
                    if raw.isascii() and "=?" not in raw and _literal_addresses(_text(raw)):
                        continue
                else:
                    found = field_texts(fields, name)
                    if not found:
                        continue
                    raw = next(fields[j + 1] for j in range(0, len(fields), 2) if fields[j] == name)
                    if raw.isascii() and "=?" not in raw and _literal_addresses(found[0]):
                        continue
                addresses = parsed.get(raw)
                if addresses is None:
                    addresses = _addresses(raw)
                    if len(parsed) < _MEMO:
                        parsed[raw] = addresses
                for address in addresses:
                    texts.append(address)
                    owners.append(i)
            self._addresses = _Joined(texts, owners)
        return self._addresses

    def find(self, needle: str, with_addresses: bool) -> set[int] | None:
        """
        The places of the messages where some occurrence of the field holds
        *needle* (case-folded; with *with_addresses*, or some address of
        its first occurrence: FROM/TO/CC/BCC); None for a needle holding
        :data:`_SEP`.
        """
        if _SEP in needle:
            return None
        if not needle:  # every message with the field, and no other (RFC 3501 section 6.4.4)
            return set(self.texts.owners)
        found = self.texts.find(needle)
        if with_addresses:
            found |= self.addresses().find(needle)
        return found


def field_index(name: str, values: list[tuple[str, ...]]) -> FieldIndex:
    """
    The :class:`FieldIndex` of field *name* of *values*: the one kept for
    *name* when it indexed the same tuples (compared in C, by identity
    first), extended when *values* only adds messages after them, else
    made afresh and kept in its place.
    """
    index = _INDEXES.get(name)
    if index is not None:
        done = index.values
        if done == values:
            return index
        if len(values) > len(done) and values[: len(done)] == done:
            index = _INDEXES[name] = index.extended(values)
            return index
    index = _INDEXES[name] = FieldIndex.build(name, values)
    return index


def ordered_values(
    column_values: dict[int, tuple[str, ...]], uids: Sequence[int]
) -> list[tuple[str, ...]] | None:
    """
    The column tuples of *uids* in their order, from a store's answer
    (:func:`read_column_values`); None when some have none (the store lacks
    a record, or the message is gone).
    """
    if len(column_values) != len(uids):
        return None
    if list(column_values) == (uids if isinstance(uids, list) else list(uids)):
        return list(column_values.values())
    values = list(map(column_values.get, uids))
    return None if None in values else values  # type: ignore[return-value]  # no None left once checked


def bulk_search(key: SearchNode, values: list[tuple[str, ...]]) -> list[int] | None:
    """
    The places (0-based, ascending) in *values* of the column tuples that
    *key* matches, found with one :class:`FieldIndex` a field (kept from
    one search to the next): the answers of :func:`values_predicate`'s
    test, without Python work for each message; None when *key* has a key
    this does not answer (``SENTBEFORE``, ``SENTON``, ``SENTSINCE``, a
    string holding NUL), to be tested message by message.

    Raises:
        ValueError: a key of *key* is not answered by the columns.
    """
    if not search_uses_columns(key):
        raise ValueError("the search reads more than the header columns")
    found = _bulk(key, values)
    return None if found is None else sorted(found)


def _bulk(key: SearchNode, values: list[tuple[str, ...]]) -> set[int] | None:
    if isinstance(key, SearchKey):
        name = key.name
        if name == "SUBJECT":
            return field_index("subject", values).find(search._str(key.args[0]).casefold(), False)
        if name == "HEADER":
            field = search._str(key.args[0]).casefold()
            return field_index(field, values).find(search._str(key.args[1]).casefold(), False)
        if name in search._ENVELOPE_INDEX:
            return field_index(name.lower(), values).find(search._str(key.args[0]).casefold(), True)
        if name == "ALL":
            return set(range(len(values)))
        return None
    if isinstance(key, SearchAnd):
        found: set[int] | None = None
        for part in key.keys:
            got = _bulk(part, values)
            if got is None:
                return None
            found = got if found is None else found & got
        return set(range(len(values))) if found is None else found
    if isinstance(key, SearchOr):
        left, right = _bulk(key.left, values), _bulk(key.right, values)
        return None if left is None or right is None else left | right
    if isinstance(key, SearchNot):
        inner = _bulk(key.key, values)
        return None if inner is None else set(range(len(values))).difference(inner)
    raise TypeError(f"not a search key: {key!r}")


# -- FETCH BODY.PEEK[HEADER.FIELDS (...)] from header lines (IHeaderLines) ------------

_LINE_NAMES = frozenset(HEADER_LINES)
#: Metadata items that a FETCH may ask beside HEADER.FIELDS without
#: needing the metadata (see :func:`txmail.imap.fetch.fetch_needs`).
_METADATA_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "THREADID"})


def fetch_uses_lines(mailbox: IMailbox, items: Iterable[FetchAttribute]) -> bool:
    """
    Whether a FETCH of *items* from *mailbox* is answered from its header
    lines (:class:`txmail.interfaces.IHeaderLines`) instead of its
    metadata: the mailbox gives them, and everything *items* reads from the
    metadata is a top-level ``HEADER.FIELDS`` (not ``.NOT``) of names all
    in :data:`~txmail.interfaces.HEADER_LINES` (what a client's first sync
    asks of every message).
    """
    if not IHeaderLines.providedBy(mailbox):
        return False
    for item in items:
        section = item.section
        if section is None:
            if item.name in _METADATA_ITEMS:
                return False
        elif section.text == "HEADER.FIELDS" and not section.part:
            if not all(name.strip().lower() in _LINE_NAMES for name in section.fields):
                return False
        elif section.text == "HEADER.FIELDS.NOT" and not section.part:
            return False
    return True


async def read_lines(mailbox: IMailbox, uids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """The header lines records of *uids* of *mailbox* (an :class:`IHeaderLines`)."""
    return await _awaited(IHeaderLines(mailbox).header_lines(uids))
