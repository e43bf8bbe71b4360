"""
Typed IMAP responses: what a command handler of :mod:`txmail.imap.commands`
says, as frozen dataclasses; :func:`txmail.imap.serialize.render` is the one
place that turns them into IMAP syntax (RFC 3501 section 7).

A handler ends with a :class:`Done` (the tagged ``OK``) or raises a
:class:`CommandFailed` (:class:`No` or :class:`Bad`: the tagged ``NO`` /
``BAD``); the untagged responses before it are passed to
``ctx.emit(...)`` (:class:`txmail.imap.commands.context.CommandContext`).

Store errors become replies in one place,
:func:`txmail.imap.commands.context.store_op`; the text of an exception is
never sent to the client.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from txmail.imap.types import FetchAttribute
from txmail.model import MessageInfo, MessageMetadata

if TYPE_CHECKING:
    from txmail.imap.fetch import Structures

__all__ = [
    "Bad",
    "CapabilityData",
    "CommandFailed",
    "ContextUpdate",
    "Done",
    "ESearchData",
    "ESortData",
    "Enabled",
    "Exists",
    "Expunged",
    "FetchData",
    "FetchFlags",
    "FlagsData",
    "GenUrlAuthData",
    "IdData",
    "ListData",
    "MetadataData",
    "MetadataNames",
    "NamespaceData",
    "No",
    "NoUpdate",
    "QuotaData",
    "QuotaRootData",
    "Recent",
    "Response",
    "SearchData",
    "SortData",
    "StatusData",
    "ThreadData",
    "UntaggedOk",
    "UrlFetchData",
]


class Response:
    """Base class of the untagged responses."""

    __slots__ = ()


# -- the end of a command --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    """
    The tagged ``OK`` of a command: ``tag OK [code] text``; *text* ``None``
    means ``"<COMMAND> completed"``.
    """

    text: str | None = None
    code: str | None = None


class CommandFailed(Exception):
    """End the command with ``tag <status> [code] text`` (raised by a handler)."""

    status = "NO"

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(self.status, text, code)
        self.text = text
        self.code = code


class No(CommandFailed):
    """``tag NO [code] text``: the command was understood and failed (RFC 3501 section 7.1.2)."""

    status = "NO"


class Bad(CommandFailed):
    """``tag BAD [code] text``: a client error the parser could not see (RFC 3501 section 7.1.3)."""

    status = "BAD"


# -- untagged responses ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapabilityData(Response):
    """``* CAPABILITY ...`` (RFC 3501 section 7.2.1)."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class IdData(Response):
    """``* ID ("name" "txmail" ...)`` (RFC 2971 section 3.2): field, value, field, value..."""

    fields: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Enabled(Response):
    """``* ENABLED ...`` (RFC 5161 section 3.2)."""

    capabilities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NamespaceData(Response):
    """``* NAMESPACE`` (RFC 2342 section 5): ``(prefix, delimiter)`` pairs; empty is ``NIL``."""

    personal: tuple[tuple[str, str], ...] = ()
    other_users: tuple[tuple[str, str], ...] = ()
    shared: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ListData(Response):
    """
    ``* LIST (attributes) "/" name`` or ``* LSUB ...`` (RFC 3501 sections
    7.2.2 and 7.2.3), with RFC 5258 section 3.5 CHILDINFO when *childinfo*
    names the selection criteria.
    """

    name: str
    attributes: tuple[str, ...]
    verb: str = "LIST"
    childinfo: tuple[str, ...] = ()
    delimiter: str = "/"
    #: The RFC 5465 section 5.4 ``OLDNAME`` extended data item (a NOTIFY rename).
    oldname: str | None = None


@dataclass(frozen=True, slots=True)
class StatusData(Response):
    """
    ``* STATUS name (ITEM n ...)`` (RFC 3501 section 7.2.4); a ``str``
    value is an object id, written ``ITEM (id)`` (RFC 8474 section 4.3:
    ``MAILBOXID (id)``).
    """

    name: str
    items: tuple[tuple[str, int | str], ...]


@dataclass(frozen=True, slots=True)
class QuotaRootData(Response):
    """``* QUOTAROOT mailbox root ...`` (RFC 9208 section 5.2): no roots when nothing limits it."""

    mailbox: str
    roots: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QuotaData(Response):
    """``* QUOTA root (RESOURCE usage limit ...)`` (RFC 9208 section 5.1)."""

    root: str
    resources: tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class MetadataData(Response):
    """
    ``* METADATA mailbox (entry value ...)`` (RFC 5464 section 4.4.1):
    *mailbox* ``""`` for the server; a value ``None`` is ``NIL``.
    """

    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...]


@dataclass(frozen=True, slots=True)
class MetadataNames(Response):
    """
    ``* METADATA mailbox entry ...`` (RFC 5464 section 4.4.2): the entries
    that changed, without values (unsolicited; for RFC 5465 NOTIFY).
    """

    mailbox: str
    entries: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GenUrlAuthData(Response):
    """``* GENURLAUTH url ...`` (RFC 4467 section 7): the URLAUTH-authorized URLs, in order."""

    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UrlFetchData(Response):
    """``* URLFETCH url nstring`` (RFC 4467 section 7): the data, or ``None`` (NIL) when the URL gives none."""

    url: str
    data: bytes | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class FlagsData(Response):
    """
    ``* FLAGS (...)`` and ``* OK [PERMANENTFLAGS (...)]`` (RFC 3501 sections
    7.2.6 and 7.1): *permanent* ``None`` sends ``()``.
    """

    flags: tuple[str, ...]
    permanent: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Exists(Response):
    """``* n EXISTS`` (RFC 3501 section 7.3.1)."""

    count: int


@dataclass(frozen=True, slots=True)
class Recent(Response):
    """``* n RECENT`` (RFC 3501 section 7.3.2)."""

    count: int


@dataclass(frozen=True, slots=True)
class Expunged(Response):
    """``* n EXPUNGE`` for each number, in the order given (RFC 3501 section 7.4.1)."""

    numbers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Vanished(Response):
    """``* VANISHED [(EARLIER) ]uid-set`` (RFC 7162 section 3.2.10); nothing when *uids* is empty."""

    uids: tuple[int, ...]
    earlier: bool = False


@dataclass(frozen=True, slots=True)
class UntaggedOk(Response):
    """``* OK [code] text`` (RFC 3501 section 7.1.1)."""

    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class SearchData(Response):
    """``* SEARCH n ...`` (RFC 3501 section 7.2.5); ``(MODSEQ m)`` last with *modseq* (RFC 7162 section 3.1.6)."""

    numbers: Sequence[int]
    modseq: int | None = None


@dataclass(frozen=True, slots=True)
class ESearchData(Response):
    """``* ESEARCH (TAG "t") [UID] ...`` (RFC 4731 section 3.1)."""

    tag: str
    uid: bool
    numbers: Sequence[int]
    options: Sequence[str]
    #: ``MODSEQ m`` last (RFC 7162 section 3.1.10), when searched by MODSEQ.
    modseq: int | None = None
    #: RETURN (PARTIAL low:high): ``PARTIAL (low:high set)`` (RFC 5267 section 4.4).
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class SortData(Response):
    """``* SORT n ...`` in the sorted order (RFC 5256 section 4)."""

    numbers: Sequence[int]


@dataclass(frozen=True, slots=True)
class ESortData(Response):
    """
    ``* ESEARCH (TAG "t") [UID] ...`` answering ``SORT RETURN (...)`` (RFC
    5267 section 3.2): *numbers* in the sorted order; MIN and MAX are the
    first and last of that order, ALL keeps it.
    """

    tag: str
    uid: bool
    numbers: Sequence[int]
    options: Sequence[str]
    #: RETURN (PARTIAL low:high): that window of the sort order (RFC 5267 section 4.4).
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class ContextUpdate(Response):
    """
    ``* ESEARCH (TAG "t") [UID] REMOVEFROM (...) ADDTO (...)``: changes to
    the results of an updating search (RFC 5267 sections 4.3.2 to 4.3.4).
    *removed* and *added* are ``(context position, numbers)`` pairs, in
    the order the client applies them: position 0 for a SEARCH (the
    numbers in mailbox order), the position in the sort order for a SORT
    (each number at the next position).  Nothing is sent when both are empty.
    """

    tag: str
    uid: bool
    removed: tuple[tuple[int, tuple[int, ...]], ...] = ()
    added: tuple[tuple[int, tuple[int, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class NoUpdate(Response):
    """``* NO [NOUPDATE "tag"] text``: no updates for that searching command (RFC 5267 section 4.3.1)."""

    tag: str
    text: str = "Too many updating searches"


@dataclass(frozen=True, slots=True)
class ThreadData(Response):
    """
    ``* THREAD (...)...`` (RFC 5256 section 4): the threads as nested
    ``(number, children)`` tuples, ``number`` ``None`` for a dummy parent
    (:mod:`txmail.imap.thread`).
    """

    threads: Sequence[tuple[int | None, tuple[Any, ...]]]


# Not frozen: one is made per message of a FETCH, and a frozen dataclass
# takes 1.5 us to build against 0.25 us (treat it as frozen all the same).
@dataclass(slots=True)
class FetchData(Response):
    """
    ``* n FETCH (...)`` for one message (RFC 3501 section 7.4.2): the
    attributes asked and what was loaded for them (see
    :func:`txmail.imap.fetch.fetch_chunks` for the arguments).  Also the
    ``FETCH (FLAGS ...)`` of STORE (*items* holding FLAGS).
    """

    seq: int
    items: Sequence[FetchAttribute]
    info: MessageInfo
    metadata: MessageMetadata | tuple[str, str] | None = None
    message: bytes | None = None
    include_uid: bool = False
    include_flags: bool = False
    recent: bool = False


@dataclass(frozen=True, slots=True)
class FetchBatch(Response):
    """
    The ``* n FETCH (...)`` of a batch of messages of one FETCH command,
    asked the same *items*: each row holds what a :class:`FetchData` holds,
    ``(seq, info, metadata, message, include_flags, recent)`` (see
    :func:`txmail.imap.fetch.batch_chunks`).  One object for a batch, not
    one per message.
    """

    items: Sequence[FetchAttribute]
    include_uid: bool
    rows: Sequence[
        tuple[
            int, MessageInfo, MessageMetadata | tuple[str, str] | Structures | None, bytes | None, bool, bool
        ]
    ]


@dataclass(frozen=True, slots=True)
class FetchFlags(Response):
    """
    ``* n FETCH ([UID u] FLAGS (...))``: the flags a message has now
    (STORE, RFC 3501 section 6.4.6; a flag change told later); *flags* as
    shown, ``\\Recent`` included; *uid* ``None`` leaves UID out.  With
    CONDSTORE (RFC 7162 section 3.1.3) *modseq* adds ``MODSEQ (m)``, and
    *flags* ``None`` gives ``* n FETCH (UID u MODSEQ (m))`` (STORE .SILENT).
    """

    seq: int
    flags: tuple[str, ...] | None
    uid: int | None = None
    modseq: int | None = None
