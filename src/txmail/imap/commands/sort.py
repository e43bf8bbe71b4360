"""
SORT and THREAD (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267
section 3).

Both commands search like SEARCH (:mod:`txmail.imap.search`, the same
keys, CHARSET ``US-ASCII`` or ``UTF-8``), in batches with ``await
ctx.take_turn()`` between two, and compute each matching message's sort
keys once, from the store's index (:class:`~txmail.model.MessageInfo`:
internal date, size) and its cached metadata (header fields; the
envelope's addresses only for the address keys), kept by UID in a cache
of the process (:data:`FACTS`); a SORT computes the sort keys alone
(:class:`SortFacts`: the message ids of THREAD are parsed from the raw
fields it keeps when first needed), and one whose only header key is
DATE, reading the store's header columns, the sent date alone
(:class:`DateFacts`: the rest is computed from the message's columns,
kept meanwhile, when a SUBJECT key or THREAD first needs it).  The sort is then one
stable ``list.sort`` per criterion, the last first, so that REVERSE
reverses one criterion only and ties keep the mailbox order (RFC 5256
section 3: "sorted according to the order in which they appear in the
mailbox").

Sort keys (RFC 5256 section 3, RFC 5957 section 3), strings compared with
``i;ascii-casemap`` (:func:`txmail.imap.thread.casemap`):

* ``ARRIVAL``: the internal date; ``SIZE``: RFC822.SIZE.
* ``DATE``: the sent date (``Date:`` in UTC), else the internal date.
* ``SUBJECT``: the base subject (:func:`txmail.imap.thread.base_subject`).
* ``FROM``, ``TO``, ``CC``: the ``addr-mailbox`` (local part) of the first
  address of the field, the empty string without one.
* ``DISPLAYFROM``, ``DISPLAYTO``: the first address's display name, RFC
  2047 decoded; without one, ``mailbox@host`` (or the mailbox alone).

``SORT RETURN (...)`` answers with an ESEARCH response (RFC 5267 section
3.2) whose MIN, MAX, ALL and PARTIAL follow the sort order; with ``RETURN
(UPDATE)`` the results are kept up to date (CONTEXT=SORT, RFC 5267 section
4: :mod:`txmail.imap.contexts`).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from txmail.imap import contexts, thread
from txmail.imap.columns import (
    ColumnHeaders,
    has_columns,
    read_column_values,
    read_columns,
    search_uses_columns,
)
from txmail.imap.commands import searchres
from txmail.imap.commands.context import CommandContext, call, selected_mailbox
from txmail.imap.commands.registry import SELECTED, command, extension
from txmail.imap.commands.selected import BATCH, _read_message
from txmail.imap.responses import Bad, Done, ESortData, No, SortData, ThreadData
from txmail.imap.search import SUPPORTED_CHARSETS, SearchContext, matches, search_needs
from txmail.imap.search import _decode_field as decode_field
from txmail.imap.types import Command, SearchKey, SearchNode, Sort, Thread
from txmail.interfaces import IMailbox
from txmail.model import MessageInfo, MessageMetadata

__all__ = [
    "FACTS",
    "THREAD_ALGORITHMS",
    "DateFacts",
    "FactsCache",
    "MessageFacts",
    "SortFacts",
    "message_facts",
    "sort_facts",
    "sort_keys",
]

#: The envelope position of each address sort key's field (RFC 3501 section 7.4.2).
_ENVELOPE_FIELD = {"FROM": 2, "TO": 5, "CC": 6, "DISPLAYFROM": 2, "DISPLAYTO": 5}


def _first_address(md: MessageMetadata, key: str) -> tuple[Any, ...] | None:
    """The first address (not a group marker) of the key's field, or ``None``."""
    addresses = md.envelope[_ENVELOPE_FIELD[key]] if md.envelope else None
    for address in addresses or ():
        if address[3] is not None:  # group markers have no host
            return address  # type: ignore[no-any-return]  # an ENVELOPE address is a tuple of str or None
    return None


def _mailbox_key(md: MessageMetadata | None, key: str) -> bytes:
    address = _first_address(md, key) if md is not None else None
    return thread.casemap(address[2] or "") if address is not None else b""


def _display_key(md: MessageMetadata | None, key: str) -> bytes:
    """RFC 5957 section 3: the display name, else ``mailbox@host``, else the mailbox, else ``""``."""
    address = _first_address(md, key) if md is not None else None
    if address is None:
        return b""
    name, _, mailbox, host = address
    if name:
        text = decode_field(name)
        if text:
            return thread.casemap(text)
    if mailbox and host:
        return thread.casemap(f"{mailbox}@{host}")
    return thread.casemap(mailbox or "")


#: The header fields SORT and THREAD read (lower case).
_FIELDS = frozenset({"subject", "date", "message-id", "references", "in-reply-to"})
_NO_FIELDS: dict[str, str] = {}
#: Each header field name seen (as spelt) -> its key in :data:`_FIELDS`, or ``""``: one dict
#: lookup per field of a message instead of a ``lower()`` (bounded: cleared when full).
_FIELD_KEYS: dict[str, str] = {}
_FIELD_KEYS_LIMIT = 4096


def _field_key(name: str) -> str:
    """The key of :data:`_FIELDS` that header field *name* is (case and trailing blanks aside), or ``""``."""
    key = name.lower()
    if key not in _FIELDS:
        key = key.rstrip(" \t")
        if key not in _FIELDS:
            key = ""
    if len(_FIELD_KEYS) >= _FIELD_KEYS_LIMIT:
        _FIELD_KEYS.clear()
    _FIELD_KEYS[name] = key
    return key


def _fields(md: MessageMetadata | None) -> dict[str, str]:
    """
    The first raw value of each of :data:`_FIELDS` that the message has:
    one pass over its header fields (a store's cached records are plain
    tuples, so a lookup per field would walk them once each).
    """
    if md is None:
        return _NO_FIELDS
    found: dict[str, str] = {}
    keys = _FIELD_KEYS
    for name, value in md.headers:
        key = keys.get(name)
        if key is None:
            key = _field_key(name)
        if key and key not in found:
            found[key] = value
    return found


def _column_fields(columns: tuple[str, ...]) -> dict[str, str]:
    """
    :func:`_fields` of a message's header columns (the store's flat tuple,
    :class:`~txmail.imap.columns.ColumnHeaders`), walked directly: their
    names are already the lower case ones of
    :data:`~txmail.interfaces.HEADER_COLUMNS`.
    """
    found: dict[str, str] = {}
    pairs = iter(columns)
    for name, value in zip(pairs, pairs, strict=True):
        if name in _FIELDS and name not in found:
            found[name] = value
    return found


def _date(info: MessageInfo, raw: str | None) -> float:
    """RFC 5256 section 2.2: the sent date (*raw*: the ``Date:`` field), else the internal date."""
    sent = thread.sent_date(raw)
    return float(info.internal_date) if sent is None else sent


def _column_date(info: MessageInfo, columns: tuple[str, ...]) -> float:
    """
    :func:`_date` of a message's header columns (the flat tuple): its first
    ``date`` field, found by ``tuple.index`` without walking the others (a
    name is at an even position; a value spelt ``date`` is skipped).
    """
    try:
        i = columns.index("date")
        while i & 1:
            i = columns.index("date", i + 1)
    except ValueError:
        return float(info.internal_date)
    sent = thread.sent_date(columns[i + 1])
    return float(info.internal_date) if sent is None else sent


class MessageFacts(NamedTuple):
    """What SORT (DATE, SUBJECT) and THREAD know of a message, from its header fields."""

    #: The sent date, else the internal date (RFC 5256 section 2.2).
    date: float
    #: The base subject as an ``i;ascii-casemap`` key (section 2.1).
    subject: bytes
    #: The subject marked a reply or forward.
    reply: bool
    #: The first valid ``Message-ID``.
    message_id: str | None
    #: ``References``, else the first ``In-Reply-To`` id.
    parents: tuple[str, ...]


def message_facts(info: MessageInfo, md: MessageMetadata | None) -> MessageFacts:
    """:class:`MessageFacts` of a message, from its listing and metadata."""
    return sort_facts(info, md).complete()


class DateFacts(NamedTuple):
    """
    What SORT (DATE) computes of a message read from the store's header
    columns: the sent date, and the columns the other facts come from
    (completed to :class:`SortFacts` without reading them again when a
    SUBJECT key or THREAD needs them).
    """

    #: The sent date, else the internal date (RFC 5256 section 2.2).
    date: float
    #: The message's header columns, the store's flat tuple.
    columns: tuple[str, ...]

    def sort_facts(self) -> SortFacts:
        """The message's :class:`SortFacts`."""
        return _sort_facts(self.date, _column_fields(self.columns))

    def complete(self) -> MessageFacts:
        """The message's :class:`MessageFacts`."""
        return self.sort_facts().complete()


class SortFacts(NamedTuple):
    """
    What SORT (DATE, SUBJECT) computes of a message: the facts it sorts
    by, and the raw fields the message ids come from (completed to
    :class:`MessageFacts` without metadata when a THREAD needs them).
    """

    #: The sent date, else the internal date (RFC 5256 section 2.2).
    date: float
    #: The base subject as an ``i;ascii-casemap`` key (section 2.1).
    subject: bytes
    #: The subject marked a reply or forward.
    reply: bool
    #: The raw ``Message-ID``, ``References`` and ``In-Reply-To`` fields.
    message_id: str | None
    references: str | None
    in_reply_to: str | None

    def complete(self) -> MessageFacts:
        """The message's :class:`MessageFacts`."""
        own = thread.message_ids(self.message_id)
        parents = thread.message_ids(self.references)
        if not parents:
            parents = thread.message_ids(self.in_reply_to)[:1]
        return MessageFacts(self.date, self.subject, self.reply, own[0] if own else None, tuple(parents))


#: What :data:`FACTS` keeps of a message.
Facts = MessageFacts | SortFacts | DateFacts


def sort_facts(info: MessageInfo, md: Any) -> SortFacts:
    """:class:`SortFacts` of a message, from its listing and metadata (or header columns)."""
    fields = _column_fields(md.fields) if type(md) is ColumnHeaders else _fields(md)
    return _sort_facts(_date(info, fields.get("date")), fields)


def _sort_facts(date: float, fields: dict[str, str]) -> SortFacts:
    """:class:`SortFacts` of a message of sent date *date* and first fields *fields* (:func:`_fields`)."""
    get = fields.get
    base, reply = thread.base_subject(get("subject"))
    return SortFacts(
        date,
        thread.casemap(base),
        reply,
        get("message-id"),
        get("references"),
        get("in-reply-to"),
    )


class FactsCache:
    """
    :class:`MessageFacts` (or, until a THREAD needs the message ids,
    :class:`SortFacts`) by UID for the mailboxes sorted or threaded
    lately, so that the next SORT or THREAD of a mailbox reads no metadata
    for the messages it has seen (a message's header fields and internal
    date never change while its UID names it, RFC 3501 section 2.3.1.1; a
    new UIDVALIDITY starts afresh).  The least recently used mailboxes are
    forgotten beyond *limit* messages in all; a table holding many
    expunged UIDs is trimmed when used.
    """

    def __init__(self, limit: int = 250_000) -> None:
        self.limit = limit
        self._tables: OrderedDict[int, tuple[weakref.ref[Any], int, dict[int, Facts]]] = OrderedDict()

    def table(self, mailbox: IMailbox, uids: Sequence[int]) -> dict[int, Facts]:
        """The facts known for *mailbox* (whose messages are now *uids*), to read and fill."""
        key = id(mailbox)
        entry = self._tables.pop(key, None)
        uidvalidity = mailbox.uidvalidity
        if entry is None or entry[0]() is not mailbox or entry[1] != uidvalidity:
            try:
                ref = weakref.ref(mailbox)
            except TypeError:
                return {}  # not cacheable: a table for this command only
            entry = (ref, uidvalidity, {})
        table = entry[2]
        if len(table) > 2 * len(uids) + 1024:
            table = {uid: table[uid] for uid in uids if uid in table}
            entry = (entry[0], entry[1], table)
        self._tables[key] = entry
        total = sum(len(t) for _, _, t in self._tables.values())
        while total > self.limit and len(self._tables) > 1:
            _, (_, _, dropped) = self._tables.popitem(last=False)
            total -= len(dropped)
        return table


#: The cache of this process.
FACTS = FactsCache()

#: What :func:`_each_match` computes of each message: nothing, the sent date (on the header
#: columns), the sort keys, everything.
NO_FACTS, DATE_FACTS, SORT_FACTS, ALL_FACTS = 0, 1, 2, 3


def _new_facts(
    want: int, info: MessageInfo, md: MessageMetadata | ColumnHeaders | tuple[str, ...] | None
) -> Facts:
    """
    The facts :func:`_each_match` computes of a message :data:`FACTS` does
    not know, from its metadata, its :class:`ColumnHeaders` or the store's
    flat tuple of its header columns (:func:`~txmail.imap.columns.read_column_values`).
    """
    if type(md) is tuple and want == DATE_FACTS:  # the usual case first
        return DateFacts(_column_date(info, md), md)
    columns = md if type(md) is tuple else md.fields if type(md) is ColumnHeaders else None
    if columns is None:
        return message_facts(info, md) if want == ALL_FACTS else sort_facts(info, md)  # type: ignore[arg-type]  # without columns, md is the message's metadata
    if want == DATE_FACTS:
        return DateFacts(_column_date(info, columns), columns)
    fields = _column_fields(columns)
    facts = _sort_facts(_date(info, fields.get("date")), fields)
    return facts.complete() if want == ALL_FACTS else facts


#: Each key's value of a message: ``(info, metadata or header columns, facts) -> key``.
_KEYS: dict[str, Callable[[MessageInfo, Any, Any], Any]] = {
    "ARRIVAL": lambda info, md, facts: info.internal_date,
    "SIZE": lambda info, md, facts: info.size,
    "DATE": lambda info, md, facts: facts.date,
    "SUBJECT": lambda info, md, facts: facts.subject,
    "FROM": lambda info, md, facts: _mailbox_key(md, "FROM"),
    "TO": lambda info, md, facts: _mailbox_key(md, "TO"),
    "CC": lambda info, md, facts: _mailbox_key(md, "CC"),
    "DISPLAYFROM": lambda info, md, facts: _display_key(md, "DISPLAYFROM"),
    "DISPLAYTO": lambda info, md, facts: _display_key(md, "DISPLAYTO"),
}
#: Keys that the store's index alone answers.
_INDEX_KEYS = frozenset({"ARRIVAL", "SIZE"})
#: Keys read from :class:`SortFacts` or :class:`MessageFacts`.
_FACT_KEYS = frozenset({"DATE", "SUBJECT"})

#: RFC 5256 section 3, in the order advertised.
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_ALGORITHMS = {"ORDEREDSUBJECT": thread.ordered_subject, "REFERENCES": thread.references}


def sort_keys(
    criteria: tuple[tuple[str, bool], ...],
    info: MessageInfo,
    md: MessageMetadata | None,
    facts: Facts | None = None,
) -> tuple[Any, ...]:
    """
    One message's value for each of *criteria* (``(key, reverse)`` pairs),
    in order; *facts* computed from *md* when not given.
    """
    if facts is None and any(key in _FACT_KEYS for key, _ in criteria):
        facts = message_facts(info, md)
    return tuple(_KEYS[key](info, md, facts) for key, _ in criteria)


def _check_charset(charset: str) -> None:
    if charset.upper() not in SUPPORTED_CHARSETS:
        raise No("Unsupported charset", "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")")


async def _each_match(
    ctx: CommandContext,
    key: SearchNode,
    want_metadata: bool,
    want_facts: int,
    record: Callable[[int, int, MessageInfo, Any, Any], None],
) -> None:
    """
    Call *record* ``(seq, uid, info, metadata, facts)`` for each message
    matching *key*, in mailbox order: *metadata* when *want_metadata* (or
    the search needs it; else whatever the facts were computed from, the
    store's flat tuple of header columns on the columns path); *facts* when *want_facts* (from :data:`FACTS`,
    the metadata read only for the messages it does not know), a
    :class:`MessageFacts` when it is :data:`ALL_FACTS`, else (SORT)
    whatever :data:`FACTS` knows (a :class:`DateFacts` completed for
    :data:`SORT_FACTS`) or a :class:`SortFacts` (a :class:`DateFacts`
    for :data:`DATE_FACTS` on the header columns).
    """
    view = ctx.session.view
    assert view is not None
    key = searchres.replace_saved(key, view)  # RFC 5182 section 2.1: $ in the keys
    mailbox = selected_mailbox(ctx)
    needs = search_needs(key)
    with_metadata = want_metadata or needs.metadata
    match_all = isinstance(key, SearchKey) and key.name == "ALL"
    sctx = SearchContext(max_seq=view.exists, max_uid=view.max_uid, recent_uids=frozenset(view.recent))
    uids = view.uids
    known = FACTS.table(mailbox, uids) if want_facts else {}
    # The header columns of the store stand in for the metadata when they answer everything.
    by_columns = (
        has_columns(mailbox)
        and not needs.message
        and (not needs.metadata or search_uses_columns(key))
        and (with_metadata or bool(want_facts))
    )
    column_md: dict[int, Any] = {}
    if by_columns and with_metadata:
        column_md = await read_columns(mailbox, uids)
    elif by_columns:
        wanted = [u for u in uids if u not in known]
        column_md = await read_column_values(mailbox, wanted) if wanted else {}
    step = BATCH * 4
    for start in range(0, len(uids), step):
        if start:
            await ctx.take_turn()
        batch = uids[start : start + step]
        infos = {i.uid: i for i in await call(mailbox.list_messages, batch)}
        if by_columns:
            metadata = column_md
        else:
            wanted = batch if with_metadata else [u for u in batch if want_facts and u not in known]
            metadata = await call(mailbox.get_metadata, wanted) if wanted else {}
        for seq, uid in enumerate(batch, start + 1):
            info = infos.get(uid)
            if info is None:
                continue
            md = metadata.get(uid)
            if not match_all:
                message = None
                if needs.message:
                    message = await _read_message(mailbox, info)
                    if message is None:
                        continue
                if not matches(key, sctx, seq, info, md, message):
                    continue
            facts: Facts | None = None
            if want_facts:
                facts = known.get(uid)
                if facts is None:
                    facts = known[uid] = _new_facts(want_facts, info, md)
                elif want_facts == ALL_FACTS and type(facts) is not MessageFacts:
                    facts = known[uid] = facts.complete()  # type: ignore[union-attr]  # not MessageFacts: has complete()
                elif want_facts == SORT_FACTS and type(facts) is DateFacts:
                    facts = known[uid] = facts.sort_facts()
            record(seq, uid, info, md, facts)


@command("SORT", states=SELECTED, capability="SORT", on_messages=True, withholds_expunge=True, streams=True)
async def sort(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 5256 section 4 (SORT, UID SORT); RFC 5267 section 3.2 (SORT RETURN)."""
    args = cmd.args
    assert isinstance(args, Sort)
    _check_charset(args.charset)
    criteria = args.criteria
    # (key, ..., number, uid) a message: sort_keys, the getters looked up once, in one tuple.
    found: list[tuple[Any, ...]] = []
    getters = [_KEYS[key] for key, _ in criteria]
    get, alone = getters[0], len(getters) == 1

    def record(seq: int, uid: int, info: MessageInfo, md: Any, facts: Facts | None) -> None:
        number = uid if args.uid else seq
        if alone:
            found.append((get(info, md, facts), number, uid))
        else:
            found.append((*[g(info, md, facts) for g in getters], number, uid))

    keys = {key for key, _ in criteria}
    view = ctx.session.view
    assert view is not None
    search_key = searchres.replace_saved(args.key, view)  # RFC 5182 section 2.1: $ in the keys
    live = contexts.begin(  # RFC 5267 section 4.3
        ctx,
        cmd.tag,
        args.uid,
        search_key,
        args.return_options,
        lambda info, md: _ordered(criteria, sort_keys(criteria, info, md)),
        metadata=bool(keys - _INDEX_KEYS),
    )
    fact_keys = keys & _FACT_KEYS
    want_facts = (DATE_FACTS if fact_keys == {"DATE"} else SORT_FACTS) if fact_keys else NO_FACTS
    await _each_match(ctx, search_key, bool(keys - _INDEX_KEYS - _FACT_KEYS), want_facts, record)
    # One stable sort per criterion, the last first; ties keep mailbox order.
    for i in range(len(criteria) - 1, -1, -1):
        found.sort(key=itemgetter(i), reverse=criteria[i][1])
    numbers = [item[-2] for item in found]
    if args.return_options is not None:
        ctx.emit(ESortData(cmd.tag, args.uid, numbers, args.return_options, args.partial))
    else:
        ctx.emit(SortData(numbers))
    if live is not None:
        contexts.opened(ctx, live, [(*_ordered(criteria, item[:-2]), item[-1]) for item in found])
    return Done("UID SORT completed" if args.uid else "SORT completed")


def _ordered(criteria: tuple[tuple[str, bool], ...], keys: tuple[Any, ...]) -> tuple[Any, ...]:
    """*keys* compared as SORT orders them: each reversed criterion's key in reverse."""
    return tuple(
        contexts.Reverse(k) if reverse else k for k, (_, reverse) in zip(keys, criteria, strict=True)
    )


@command(
    "THREAD",
    states=SELECTED,
    capability="THREAD=ORDEREDSUBJECT",
    on_messages=True,
    withholds_expunge=True,
    streams=True,
)
async def thread_(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 5256 sections 3 and 4 (THREAD, UID THREAD): ORDEREDSUBJECT and REFERENCES."""
    args = cmd.args
    assert isinstance(args, Thread)
    if args.algorithm not in THREAD_ALGORITHMS:
        raise Bad("Unknown threading algorithm")
    _check_charset(args.charset)
    found: list[thread.ThreadMessage] = []

    def record(seq: int, uid: int, info: MessageInfo, md: Any, facts: Facts | None) -> None:
        assert isinstance(facts, MessageFacts)
        found.append(thread.ThreadMessage(uid if args.uid else seq, seq, *facts))

    await _each_match(ctx, args.key, False, ALL_FACTS, record)
    ctx.emit(ThreadData(_ALGORITHMS[args.algorithm](found)))
    return Done("UID THREAD completed" if args.uid else "THREAD completed")


# After THREAD=ORDEREDSUBJECT (the THREAD command's capability).
extension("THREAD=REFERENCES", "SORT=DISPLAY", "ESORT")
