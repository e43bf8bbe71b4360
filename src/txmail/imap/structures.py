"""
ENVELOPE, BODYSTRUCTURE and BODY of many messages, rendered once and kept by the store.

A client's first sync of a big mailbox, or a client that lists one, asks
``FETCH 1:* (ENVELOPE BODYSTRUCTURE ...)`` (RFC 3501 section 6.4.5) of every
message.  Rendering those from each message's metadata is most of the work
of such a FETCH once the messages are parsed; a store that keeps records for
a protocol (:class:`txmail.interfaces.IRecordCache`) keeps the rendered
texts, so that each message's are rendered once, as Dovecot keeps
``imap.envelope`` and ``imap.bodystructure`` in its cache file.

A FETCH of at least :data:`MANY` messages whose items read nothing of the
metadata but these three (:func:`fetch_uses_structures`) reads the records
kept (:func:`cached_structures`), asks the store for the others batch by
batch (:func:`derive_structures`: the store renders them from their
metadata with :func:`record_of_metadata` where it likes, the Maildir store
in its parse worker processes, each batch asked for while the one before
is awaited), and hands those to the store every :data:`KEEP_EVERY`
messages (:func:`start_keeping`: the FETCH goes on meanwhile, and awaits
those keeps at its end) and at its end (:func:`keep_structures`).  The
records are of the kind :data:`KIND`, whose number
changes whenever this server's rendering of the three changes, so that a
record written by another version is never used.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from txmail.imap import serialize
from txmail.imap._awaiting import awaited as _awaited
from txmail.imap.fetch import Structures, basic_body_structure
from txmail.imap.types import FetchAttribute
from txmail.interfaces import IMailbox, IRecordCache
from txmail.model import MessageMetadata

__all__ = [
    "KEEP_EVERY",
    "KIND",
    "MANY",
    "cached_structures",
    "derive_structures",
    "derived_structures",
    "fetch_uses_structures",
    "keep_structures",
    "record_of",
    "record_of_metadata",
    "start_keeping",
    "structures_of",
]

#: The kind of the records (:class:`txmail.interfaces.IRecordCache`); its
#: number changes when :mod:`txmail.imap.serialize` renders them differently.
KIND = "imap-structures-1"
#: A FETCH of fewer messages renders from their metadata (the store's file
#: of records is read whole).
MANY = 1024

#: A FETCH hands the store the structures it rendered every this many
#: messages, and at its end.
KEEP_EVERY = 16384

#: The items written from :class:`Structures`.
_ITEMS = frozenset({"ENVELOPE", "BODYSTRUCTURE", "BODY"})
_NAMES = ("envelope", "bodystructure", "body")


def fetch_uses_structures(mailbox: IMailbox, items: Iterable[FetchAttribute], count: int) -> bool:
    """
    Whether a FETCH of *items* from *count* messages of *mailbox* is
    answered from kept structures: the mailbox keeps records, there are at
    least :data:`MANY` messages, and the items read nothing of the metadata
    but ENVELOPE, BODYSTRUCTURE and BODY (at least one of those).
    """
    if count < MANY or not IRecordCache.providedBy(mailbox):
        return False
    wanted = False
    for item in items:
        section = item.section
        if section is None:
            if item.name == "THREADID":
                return False
            wanted = wanted or item.name in _ITEMS
        elif not section.part and section.text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            return False  # read from the metadata (fetch.fetch_needs)
    return wanted


def structures_of(metadata: MessageMetadata) -> Structures:
    """A message's three texts, as :func:`txmail.imap.fetch.render_fetch` writes them."""
    body = metadata.body_structure
    return Structures(
        serialize.envelope(metadata.envelope),
        serialize.body_structure(body),
        serialize.body_structure(basic_body_structure(body)),
    )


def record_of(structures: Structures) -> tuple[str | bytes, ...]:
    """The record kept for *structures*: ``("envelope", octets, "bodystructure", octets, "body", octets)``."""
    return (_NAMES[0], structures.envelope, _NAMES[1], structures.body_structure, _NAMES[2], structures.body)


def record_of_metadata(metadata: MessageMetadata) -> tuple[str | bytes, ...]:
    """The record of a message's structures, from its metadata (run by the store's parse workers)."""
    return record_of(structures_of(metadata))


def _from_record(record: Any) -> Structures | None:
    """The structures of a record of :func:`record_of`; None for anything else."""
    if (
        type(record) is tuple
        and len(record) == 6
        and record[0::2] == _NAMES
        and type(record[1]) is bytes
        and type(record[3]) is bytes
        and type(record[5]) is bytes
    ):
        return Structures(record[1], record[3], record[5])
    return None


async def cached_structures(mailbox: IMailbox, uids: Iterable[int]) -> dict[int, Structures]:
    """The structures *mailbox* (an :class:`IRecordCache`) keeps of *uids*."""
    records = await _awaited(IRecordCache(mailbox).cached_records(KIND, uids))
    out = {}
    for uid, record in records.items():
        found = _from_record(record)
        if found is not None:
            out[uid] = found
    return out


def derive_structures(mailbox: IMailbox, uids: list[int]) -> Any:
    """
    Ask *mailbox* (an :class:`IRecordCache`) for the structure records of
    *uids* rendered from their metadata where it likes
    (:meth:`IRecordCache.derive_records`: the Maildir store's parse workers
    parse and render them): its Deferred, started now; see
    :func:`derived_structures`.
    """
    return IRecordCache(mailbox).derive_records(uids, record_of_metadata)


async def derived_structures(mailbox: IMailbox, records: dict[int, Any]) -> dict[int, Structures]:
    """
    The structures of the *records* that :func:`derive_structures` gave;
    one that is not such a record is rendered here from its metadata.
    """
    out = {}
    for uid, record in records.items():
        found = _from_record(record)
        if found is not None:
            out[uid] = found
    again = [uid for uid in records if uid not in out]
    if again:
        for uid, md in (await _awaited(mailbox.get_metadata(again))).items():
            out[uid] = structures_of(md)
    return out


async def keep_structures(mailbox: IMailbox, structures: dict[int, Structures]) -> None:
    """Have *mailbox* (an :class:`IRecordCache`) keep *structures*, rendered by this FETCH."""
    if structures:
        await _awaited(start_keeping(mailbox, structures))


def start_keeping(mailbox: IMailbox, structures: dict[int, Structures]) -> Any:
    """
    Ask *mailbox* (an :class:`IRecordCache`) to keep *structures*, as
    :func:`keep_structures`, without waiting: the store's answer (a
    Deferred started now), for the caller to await when it likes.
    """
    return IRecordCache(mailbox).cache_records(KIND, {uid: record_of(s) for uid, s in structures.items()})
