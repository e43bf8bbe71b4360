"""
SORT and THREAD (RFC 5256), SORT=DISPLAY (RFC 5957) and ESORT (RFC 5267
section 3).

Both commands search like SEARCH (:mod:`txmail.imap.search`, the same
keys, CHARSET ``US-ASCII`` or ``UTF-8``), in batches with ``await
ctx.take_turn()`` between two, and compute each matching message's sort
keys once, from the store's index (:class:`~txmail.model.MessageInfo`:
internal date, size) and its cached metadata (header fields; the
envelope's addresses only for the address keys).  The sort is then one
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
3.2) whose MIN, MAX and ALL follow the sort order.  CONTEXT=SEARCH and
CONTEXT=SORT (PARTIAL, UPDATE, CANCELUPDATE and the live ADDTO/REMOVEFROM
updates) are not offered.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from txmail.imap import thread
from txmail.imap.commands.context import CommandContext, call
from txmail.imap.commands.registry import SELECTED, command, extension
from txmail.imap.commands.selected import BATCH, _read_message
from txmail.imap.responses import Bad, Done, ESortData, No, SortData, ThreadData
from txmail.imap.search import SUPPORTED_CHARSETS, SearchContext, matches, search_needs
from txmail.imap.search import _decode_field as decode_field
from txmail.imap.types import Command, SearchKey, SearchNode, Sort, Thread
from txmail.model import MessageInfo, MessageMetadata

__all__ = ["THREAD_ALGORITHMS", "sort_keys"]

#: The envelope position of each address sort key's field (RFC 3501 section 7.4.2).
_ENVELOPE_FIELD = {"FROM": 2, "TO": 5, "CC": 6, "DISPLAYFROM": 2, "DISPLAYTO": 5}


def _first_address(md: MessageMetadata, key: str) -> tuple[Any, ...] | None:
    """The first address (not a group marker) of the key's field, or ``None``."""
    addresses = md.envelope[_ENVELOPE_FIELD[key]] if md.envelope else None
    for address in addresses or ():
        if address[3] is not None:  # group markers have no host
            return address  # type: ignore[no-any-return]
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


def _fields(md: MessageMetadata | None) -> dict[str, str]:
    """
    The first raw value of each of :data:`_FIELDS` that the message has:
    one pass over its header fields (a store's cached records are plain
    tuples, so a lookup per field would walk them once each).
    """
    if md is None:
        return _NO_FIELDS
    found: dict[str, str] = {}
    wanted = _FIELDS
    for name, value in md.headers:
        key = name.lower()
        if key not in wanted:
            if key[-1:] not in (" ", "\t"):
                continue
            key = key.rstrip(" \t")
            if key not in wanted:
                continue
        if key not in found:
            found[key] = value
    return found


def _date(info: MessageInfo, fields: dict[str, str]) -> float:
    """RFC 5256 section 2.2: the sent date, else the internal date."""
    sent = thread.sent_date(fields.get("date"))
    return float(info.internal_date) if sent is None else sent


def _subject(fields: dict[str, str]) -> bytes:
    return thread.casemap(thread.base_subject(fields.get("subject"))[0])


_KEYS: dict[str, Callable[[MessageInfo, MessageMetadata | None, dict[str, str]], Any]] = {
    "ARRIVAL": lambda info, md, fields: info.internal_date,
    "SIZE": lambda info, md, fields: info.size,
    "DATE": lambda info, md, fields: _date(info, fields),
    "SUBJECT": lambda info, md, fields: _subject(fields),
    "FROM": lambda info, md, fields: _mailbox_key(md, "FROM"),
    "TO": lambda info, md, fields: _mailbox_key(md, "TO"),
    "CC": lambda info, md, fields: _mailbox_key(md, "CC"),
    "DISPLAYFROM": lambda info, md, fields: _display_key(md, "DISPLAYFROM"),
    "DISPLAYTO": lambda info, md, fields: _display_key(md, "DISPLAYTO"),
}
#: Keys that the store's index alone answers.
_INDEX_KEYS = frozenset({"ARRIVAL", "SIZE"})
#: Keys read from header fields (the others from the index or the envelope).
_FIELD_KEYS = frozenset({"DATE", "SUBJECT"})

#: RFC 5256 section 3, in the order advertised.
THREAD_ALGORITHMS = ("ORDEREDSUBJECT", "REFERENCES")
_ALGORITHMS = {"ORDEREDSUBJECT": thread.ordered_subject, "REFERENCES": thread.references}


def sort_keys(
    criteria: tuple[tuple[str, bool], ...], info: MessageInfo, md: MessageMetadata | None
) -> tuple[Any, ...]:
    """One message's value for each of *criteria* (``(key, reverse)`` pairs), in order."""
    fields = _fields(md) if any(key in _FIELD_KEYS for key, _ in criteria) else _NO_FIELDS
    return tuple(_KEYS[key](info, md, fields) for key, _ in criteria)


def _check_charset(charset: str) -> None:
    if charset.upper() not in SUPPORTED_CHARSETS:
        raise No("Unsupported charset", "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")")


async def _each_match(
    ctx: CommandContext,
    key: SearchNode,
    want_metadata: bool,
    record: Callable[[int, int, MessageInfo, Any], None],
) -> None:
    """Call *record* ``(seq, uid, info, metadata)`` for each message matching *key*, in mailbox order."""
    view = ctx.session.view
    assert view is not None
    mailbox = ctx.mailbox
    needs = search_needs(key)
    with_metadata = want_metadata or needs.metadata
    match_all = isinstance(key, SearchKey) and key.name == "ALL"
    sctx = SearchContext(max_seq=view.exists, max_uid=view.max_uid, recent_uids=frozenset(view.recent))
    uids = view.uids
    step = BATCH * 4
    for start in range(0, len(uids), step):
        if start:
            await ctx.take_turn()
        batch = uids[start : start + step]
        infos = {i.uid: i for i in await call(mailbox.list_messages, batch)}
        metadata = await call(mailbox.get_metadata, batch) if with_metadata else {}
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
            record(seq, uid, info, md)


@command("SORT", states=SELECTED, capability="SORT", on_messages=True, withholds_expunge=True, streams=True)
async def sort(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 5256 section 4 (SORT, UID SORT); RFC 5267 section 3.2 (SORT RETURN)."""
    args = cmd.args
    assert isinstance(args, Sort)
    _check_charset(args.charset)
    criteria = args.criteria
    found: list[tuple[tuple[Any, ...], int]] = []

    def record(seq: int, uid: int, info: MessageInfo, md: Any) -> None:
        found.append((sort_keys(criteria, info, md), uid if args.uid else seq))

    await _each_match(ctx, args.key, any(key not in _INDEX_KEYS for key, _ in criteria), record)
    # One stable sort per criterion, the last first; ties keep mailbox order.
    for i in range(len(criteria) - 1, -1, -1):
        found.sort(key=lambda item, i=i: item[0][i], reverse=criteria[i][1])  # type: ignore[misc]
    numbers = [n for _, n in found]
    if args.return_options is not None:
        ctx.emit(ESortData(cmd.tag, args.uid, numbers, args.return_options))
    else:
        ctx.emit(SortData(numbers))
    return Done("UID SORT completed" if args.uid else "SORT completed")


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
    with_ids = args.algorithm == "REFERENCES"
    found: list[thread.ThreadMessage] = []

    def record(seq: int, uid: int, info: MessageInfo, md: Any) -> None:
        fields = _fields(md)
        base, reply = thread.base_subject(fields.get("subject"))
        msg = thread.ThreadMessage(
            uid if args.uid else seq, seq, _date(info, fields), thread.casemap(base), reply
        )
        if with_ids:
            own = thread.message_ids(fields.get("message-id"))
            msg.message_id = own[0] if own else None
            parents = thread.message_ids(fields.get("references"))
            if not parents:
                parents = thread.message_ids(fields.get("in-reply-to"))[:1]
            msg.parents = parents
        found.append(msg)

    await _each_match(ctx, args.key, True, record)
    ctx.emit(ThreadData(_ALGORITHMS[args.algorithm](found)))
    return Done("UID THREAD completed" if args.uid else "THREAD completed")


# After THREAD=ORDEREDSUBJECT (the THREAD command's capability).
extension("THREAD=REFERENCES", "SORT=DISPLAY", "ESORT")
