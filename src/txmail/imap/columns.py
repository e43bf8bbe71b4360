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

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from txmail import mime
from txmail.imap.search import leaves
from txmail.imap.types import FetchAttribute, SearchNode
from txmail.interfaces import HEADER_COLUMNS, HEADER_LINES, IHeaderColumns, IHeaderLines

__all__ = [
    "COLUMN_SORT_KEYS",
    "ColumnHeaders",
    "fetch_uses_lines",
    "has_columns",
    "read_columns",
    "read_lines",
    "search_uses_columns",
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


def has_columns(mailbox: Any) -> bool:
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


async def read_columns(mailbox: Any, uids: Iterable[int]) -> dict[int, ColumnHeaders]:
    """The :class:`ColumnHeaders` of the messages *uids* of *mailbox* (an :class:`IHeaderColumns`)."""
    result = mailbox.header_columns(uids)
    if hasattr(result, "__await__"):
        result = await result
    return {uid: ColumnHeaders(values) for uid, values in result.items()}


# -- FETCH BODY.PEEK[HEADER.FIELDS (...)] from header lines (IHeaderLines) ------------

_LINE_NAMES = frozenset(HEADER_LINES)
#: Metadata items that a FETCH may ask beside HEADER.FIELDS without
#: needing the metadata (see :func:`txmail.imap.fetch.fetch_needs`).
_METADATA_ITEMS = frozenset({"ENVELOPE", "BODY", "BODYSTRUCTURE", "THREADID"})


def fetch_uses_lines(mailbox: Any, items: Iterable[FetchAttribute]) -> bool:
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


async def read_lines(mailbox: Any, uids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """The header lines records of *uids* of *mailbox* (an :class:`IHeaderLines`)."""
    result = mailbox.header_lines(uids)
    if hasattr(result, "__await__"):
        result = await result
    return result  # type: ignore[no-any-return]
