"""
Parsed IMAP commands as frozen dataclasses (RFC 3501 section 6 and the
extensions of issue 4).

A parsed command is a :class:`Command`: its tag, its upper-cased name as
written after the tag (``"FETCH"``, never ``"UID FETCH"``: the UID form is
the ``uid`` attribute of the arguments, so one state table entry covers
both) and a typed argument object (:class:`Select`, :class:`Fetch`...).
Commands without arguments (CAPABILITY, NOOP, LOGOUT, STARTTLS, CHECK,
CLOSE, IDLE, NAMESPACE, UNSELECT) have :data:`NO_ARGS`.

Mailbox names here are already decoded from modified UTF-7 (RFC 3501
section 5.1.3), and ``INBOX`` is spelled in upper case whatever the client
wrote (RFC 3501 section 5.1).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import bisect
import datetime
from dataclasses import dataclass, field

__all__ = [
    "NO_ARGS",
    "Append",
    "AppendMessage",
    "Authenticate",
    "CancelUpdate",
    "CatenatePart",
    "Command",
    "CommandArgs",
    "Compress",
    "Copy",
    "Create",
    "Delete",
    "Enable",
    "Examine",
    "Expunge",
    "Fetch",
    "FetchAttribute",
    "GenUrlAuth",
    "GetMetadata",
    "GetQuota",
    "GetQuotaRoot",
    "Id",
    "List",
    "Login",
    "Lsub",
    "Move",
    "NoArgs",
    "Notify",
    "NotifyGroup",
    "Rename",
    "Replace",
    "ResetKey",
    "Search",
    "SearchAnd",
    "SearchKey",
    "SearchNode",
    "SearchNot",
    "SearchOr",
    "Section",
    "Select",
    "SequenceSet",
    "SetMetadata",
    "Sort",
    "Status",
    "Store",
    "Subscribe",
    "Thread",
    "Unsubscribe",
    "UrlFetch",
]


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """
    A sequence set (RFC 3501 section 9, ``sequence-set``).

    ``ranges`` holds ``(first, last)`` pairs as written; ``None`` stands for
    ``*`` (the largest number in use).  ``2:4`` is ``(2, 4)``, ``7`` is
    ``(7, 7)``, ``5:*`` is ``(5, None)``.  Order and overlaps are kept;
    :meth:`expand` normalises.
    """

    ranges: tuple[tuple[int | None, int | None], ...]
    #: ``$``, the saved search result (RFC 5182 section 2.1; ``ranges`` is then empty).
    saved: bool = False
    # Merged spans by max_number (filled by spans(); not part of the value).
    _spans: dict[int, tuple[tuple[int, int], ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False, hash=False
    )

    def spans(self, max_number: int) -> tuple[tuple[int, int], ...]:
        """
        The set as sorted, disjoint ``(first, last)`` spans, given that ``*``
        is *max_number* (``4:2`` is ``2:4``, RFC 3501 section 9).  Computed
        once per set and *max_number*: a client may send thousands of
        overlapping ranges, and every question below costs no more than the
        spans it touches.
        """
        found = self._spans.get(max_number)
        if found is None:
            found = self._spans[max_number] = _merged_spans(self.ranges, max_number)
        return found

    def expand(self, max_number: int) -> list[int]:
        """
        The numbers in the set, sorted and without repeats, given that ``*``
        is *max_number*.  Numbers above *max_number* are left out (so an
        empty mailbox gives ``[]``).  RFC 3501 section 6.4.8 allows a UID
        range ``n:*`` to mean ``max:n`` when ``n`` is above the largest UID;
        that is the caller's concern (it knows whether these are UIDs).
        """
        out: list[int] = []
        for a, b in self.spans(max_number):
            out.extend(range(max(a, 1), min(b, max_number) + 1))
        return out

    def contains(self, number: int, max_number: int) -> bool:
        """Whether *number* is in the set, given that ``*`` is *max_number*."""
        spans = self.spans(max_number)
        i = bisect.bisect_right(spans, (number, _BIG)) - 1
        return i >= 0 and spans[i][0] <= number <= spans[i][1]

    def __str__(self) -> str:
        if self.saved:
            return "$"

        def one(n: int | None) -> str:
            return "*" if n is None else str(n)

        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


_BIG = 1 << 64


def _merged_spans(
    ranges: tuple[tuple[int | None, int | None], ...], max_number: int
) -> tuple[tuple[int, int], ...]:
    bounds = []
    for first, last in ranges:
        a = max_number if first is None else first
        b = max_number if last is None else last
        bounds.append((a, b) if a <= b else (b, a))
    bounds.sort()
    merged: list[list[int]] = []
    for a, b in bounds:
        if merged and a <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return tuple((a, b) for a, b in merged)


@dataclass(frozen=True, slots=True)
class Section:
    """
    A ``section`` of ``BODY[...]`` (RFC 3501 section 6.4.5).

    Attributes:
        part: the part numbers (``()`` for the whole message).
        text: ``None``, ``"HEADER"``, ``"HEADER.FIELDS"``,
            ``"HEADER.FIELDS.NOT"``, ``"TEXT"`` or ``"MIME"``.
        fields: the header field names of ``HEADER.FIELDS(.NOT)``, upper-cased.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        out = ".".join(str(p) for p in self.part)
        if self.text:
            out = f"{out}.{self.text}" if out else self.text
        if self.fields:
            out += " (" + " ".join(self.fields) + ")"
        return out


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """
    One ``fetch-att`` (RFC 3501 section 6.4.5).

    ``name`` is ``ENVELOPE``, ``FLAGS``, ``INTERNALDATE``, ``RFC822``,
    ``RFC822.HEADER``, ``RFC822.SIZE``, ``RFC822.TEXT``, ``BODY``,
    ``BODYSTRUCTURE`` or ``UID``.  For ``BODY[section]<partial>``, ``name``
    is ``BODY`` and ``section`` is not ``None``; ``partial`` is ``(offset,
    length)``; ``peek`` is set for ``BODY.PEEK``.
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


# -- search keys (RFC 3501 section 6.4.4) -----------------------------------


@dataclass(frozen=True, slots=True)
class SearchKey:
    """
    One search key that is not AND/OR/NOT.

    ``name`` is the upper-cased keyword (``"SEEN"``, ``"FROM"``, ``"HEADER"``,
    ``"LARGER"``, ``"UID"``...); a bare sequence set has the name
    ``"SEQUENCE"``.  ``args`` holds its arguments in order: ``str`` for
    strings and flags, ``int`` for sizes, :class:`datetime.date` for dates,
    :class:`SequenceSet` for sets.
    """

    name: str
    args: tuple[str | int | datetime.date | SequenceSet, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchAnd:
    """All of ``keys`` (a parenthesised list, or the top-level keys)."""

    keys: tuple[SearchNode, ...]


@dataclass(frozen=True, slots=True)
class SearchOr:
    """``OR left right``."""

    left: SearchNode
    right: SearchNode


@dataclass(frozen=True, slots=True)
class SearchNot:
    """``NOT key``."""

    key: SearchNode


SearchNode = SearchKey | SearchAnd | SearchOr | SearchNot


# -- command arguments -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoArgs:
    """The arguments of a command that takes none."""


NO_ARGS = NoArgs()


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTHENTICATE; ``initial_response`` (RFC 4959 SASL-IR) is the base64 text, ``""`` for ``=``."""

    mechanism: str
    initial_response: str | None = None


@dataclass(frozen=True, slots=True)
class Login:
    """LOGIN; the password is kept out of ``repr``."""

    userid: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class QresyncParam:
    """
    The ``QRESYNC (uidvalidity modseq [known-uids [(seqs uids)]])`` SELECT
    parameter (RFC 7162 section 3.2.5).
    """

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    #: The message sequence match data: (sequence numbers, UIDs).
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class Select:
    """
    SELECT; ``condstore`` for the ``(CONDSTORE)`` parameter (RFC 7162
    section 3.1.8), ``qresync`` for ``(QRESYNC (...))`` (section 3.2.5).
    """

    mailbox: str
    condstore: bool = False
    qresync: QresyncParam | None = None


@dataclass(frozen=True, slots=True)
class Examine:
    """EXAMINE; ``condstore`` and ``qresync`` as for :class:`Select`."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParam | None = None


@dataclass(frozen=True, slots=True)
class Create:
    """CREATE; ``special_use``: the ``USE`` attributes (RFC 6154 section 3), as sent."""

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete:
    """DELETE."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename:
    """RENAME."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class List:
    """
    LIST, with RFC 5258 LIST-EXTENDED options.

    ``patterns`` has one entry for the basic form.  ``selection_options``
    and ``return_options`` are upper-cased option names;
    ``status_items`` are the items of ``RETURN (STATUS (...))`` (RFC 5819),
    ``None`` when STATUS was not asked for.
    """

    reference: str
    patterns: tuple[str, ...]
    selection_options: tuple[str, ...] = ()
    return_options: tuple[str, ...] = ()
    status_items: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Lsub:
    """LSUB."""

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status:
    """STATUS; ``items`` are upper-cased (``MESSAGES``, ``APPENDLIMIT``...)."""

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GetQuota:
    """GETQUOTA (RFC 9208 section 4.2.1): a quota root's name."""

    root: str


@dataclass(frozen=True, slots=True)
class GetQuotaRoot:
    """GETQUOTAROOT (RFC 9208 section 4.2.2)."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class GetMetadata:
    """
    GETMETADATA (RFC 5464 section 4.2): the mailbox (``""``: the server),
    the entry names (checked and lower-cased, section 3.2), MAXSIZE
    (``None``: no limit) and DEPTH (``0``, ``1`` or ``None`` for infinity).
    """

    mailbox: str
    entries: tuple[str, ...]
    maxsize: int | None = None
    depth: int | None = 0


@dataclass(frozen=True, slots=True)
class SetMetadata:
    """
    SETMETADATA (RFC 5464 section 4.3): the mailbox (``""``: the server)
    and ``(entry, value)`` pairs in the order given, the value ``None``
    (NIL) to remove the entry.
    """

    mailbox: str
    entries: tuple[tuple[str, bytes | None], ...] = field(repr=False)


@dataclass(frozen=True, slots=True)
class CatenatePart:
    """
    One ``cat-part`` of a CATENATE append (RFC 4469 section 5): the octets
    of a ``TEXT`` literal (``binary`` for a literal8, or ``UTF8 (~{n})``,
    RFC 6855 section 4), or the ``URL`` as the client wrote it.
    """

    text: bytes | None = field(default=None, repr=False)
    url: str | None = None
    binary: bool = False


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """
    One message of a MULTIAPPEND (RFC 3502) after the first; fields as
    :class:`Append`'s.  ``catenate``: the parts of a CATENATE append (RFC
    4469), whose message is built by the handler (``literal`` is then ``b""``).
    """

    flags: tuple[str, ...]
    date: datetime.datetime | None
    literal: bytes = field(repr=False)
    binary: bool = False
    catenate: tuple[CatenatePart, ...] | None = None


@dataclass(frozen=True, slots=True)
class Append:
    """
    APPEND; ``binary`` when the message came as a literal8 (RFC 3516);
    ``more``: the further messages of a MULTIAPPEND (RFC 3502).
    """

    mailbox: str
    flags: tuple[str, ...]
    date: datetime.datetime | None
    literal: bytes = field(repr=False)
    binary: bool = False
    more: tuple[AppendMessage, ...] = ()
    catenate: tuple[CatenatePart, ...] | None = None

    @property
    def messages(self) -> tuple[AppendMessage, ...]:
        """Every message, in order (the first is this command's own fields)."""
        return (AppendMessage(self.flags, self.date, self.literal, self.binary, self.catenate), *self.more)


@dataclass(frozen=True, slots=True)
class GenUrlAuth:
    """GENURLAUTH (RFC 4467 section 6.1): ``(url rump, mechanism)`` pairs, mechanisms upper-cased."""

    requests: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ResetKey:
    """RESETKEY (RFC 4467 section 6.2): every key (``mailbox`` ``None``) or one mailbox's."""

    mailbox: str | None = None
    mechanisms: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class UrlFetch:
    """URLFETCH (RFC 4467 section 6.3): the URLs, as written."""

    urls: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Compress:
    """COMPRESS (RFC 4978): the algorithm, upper-cased."""

    algorithm: str


@dataclass(frozen=True, slots=True)
class Replace:
    """REPLACE or UID REPLACE (RFC 8508): message ``number`` (a UID for UID REPLACE) by ``message`` in ``mailbox``."""

    number: int
    mailbox: str
    message: AppendMessage
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Expunge:
    """EXPUNGE, or UID EXPUNGE (RFC 4315 section 2.1) with its ``uid_set``."""

    uid_set: SequenceSet | None = None

    @property
    def uid(self) -> bool:
        """Whether this is UID EXPUNGE."""
        return self.uid_set is not None


@dataclass(frozen=True, slots=True)
class Search:
    """
    SEARCH or UID SEARCH.  ``return_options`` are the RFC 4731 ESEARCH
    options (``MIN``, ``MAX``, ``ALL``, ``COUNT``) and RFC 5267's
    (``CONTEXT``, ``UPDATE``, ``PARTIAL``), ``None`` without RETURN;
    ``partial`` is PARTIAL's range, ``(low, high)`` with ``low <= high``.
    """

    charset: str | None
    key: SearchNode
    uid: bool = False
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Sort:
    """
    SORT or UID SORT (RFC 5256 section 4): ``criteria`` as ``(key,
    reverse)`` pairs, keys upper-cased (``ARRIVAL``... and RFC 5957's
    ``DISPLAYFROM``/``DISPLAYTO``); ``return_options`` the RFC 5267 ESORT
    options (and CONTEXT=SORT's, as for :class:`Search`), ``None`` without
    RETURN; ``partial`` is PARTIAL's range.
    """

    criteria: tuple[tuple[str, bool], ...]
    charset: str
    key: SearchNode
    uid: bool = False
    return_options: tuple[str, ...] | None = None
    partial: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class CancelUpdate:
    """CANCELUPDATE (RFC 5267 section 4.3.5): the tags of the updating searches to end."""

    tags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Thread:
    """THREAD or UID THREAD (RFC 5256 section 4): the algorithm upper-cased."""

    algorithm: str
    charset: str
    key: SearchNode
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Fetch:
    """FETCH or UID FETCH; macros are already expanded."""

    sequence_set: SequenceSet
    items: tuple[FetchAttribute, ...]
    uid: bool = False
    #: The ``(CHANGEDSINCE n)`` modifier (RFC 7162 section 3.1.4.1).
    changed_since: int | None = None
    #: The ``VANISHED`` modifier of UID FETCH (RFC 7162 section 3.2.6).
    vanished: bool = False


@dataclass(frozen=True, slots=True)
class Store:
    """
    STORE or UID STORE.  ``mode`` is ``"+"`` (add), ``"-"`` (remove) or
    ``""`` (replace); ``silent`` for ``.SILENT``.
    """

    sequence_set: SequenceSet
    mode: str
    silent: bool
    flags: tuple[str, ...]
    uid: bool = False
    #: The ``(UNCHANGEDSINCE n)`` modifier (RFC 7162 section 3.1.3).
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy:
    """COPY or UID COPY."""

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move:
    """MOVE or UID MOVE (RFC 6851)."""

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Id:
    """ID (RFC 2971): field/value pairs, or ``None`` for ``ID NIL``."""

    params: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable:
    """ENABLE (RFC 5161); capability names upper-cased."""

    capabilities: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NotifyGroup:
    """
    One ``event-group`` of NOTIFY SET (RFC 5465 section 8).

    Attributes:
        filter: ``SELECTED``, ``SELECTED-DELAYED``, ``INBOXES``,
            ``PERSONAL``, ``SUBSCRIBED``, ``SUBTREE`` or ``MAILBOXES``
            (upper-cased).
        mailboxes: the names of ``SUBTREE`` and ``MAILBOXES`` (decoded, as
            mailbox names are), else ``()``.
        events: the event names as spelled in RFC 5465 section 5
            (``MessageNew``...; an unknown ``event-ext`` upper-cased);
            ``()`` for ``NONE``.
        fetch: the fetch attributes of ``MessageNew``, ``()`` when none.
    """

    filter: str
    mailboxes: tuple[str, ...] = ()
    events: tuple[str, ...] = ()
    fetch: tuple[FetchAttribute, ...] = ()


@dataclass(frozen=True, slots=True)
class Notify:
    """NOTIFY (RFC 5465): ``groups`` is ``None`` for NOTIFY NONE; ``status`` for SET STATUS."""

    groups: tuple[NotifyGroup, ...] | None
    status: bool = False


CommandArgs = (
    NoArgs
    | Authenticate
    | Login
    | Select
    | Examine
    | Create
    | Delete
    | Rename
    | Subscribe
    | Unsubscribe
    | List
    | Lsub
    | GetQuota
    | GetQuotaRoot
    | GetMetadata
    | SetMetadata
    | Status
    | Append
    | Expunge
    | Search
    | Sort
    | Thread
    | Fetch
    | Store
    | Copy
    | Move
    | Id
    | Enable
    | Replace
    | Compress
    | Notify
    | CancelUpdate
    | GenUrlAuth
    | ResetKey
    | UrlFetch
)


@dataclass(frozen=True, slots=True)
class Command:
    """
    A parsed command: its tag, upper-cased name and arguments.

    ``invalid_name`` is set when a mailbox name of the command is a valid
    astring but not valid modified UTF-7 (RFC 3501 section 5.1.3): such a
    name is kept undecoded in the arguments and the command is answered
    NO, or for LIST and LSUB OK without those results (LIST drops the
    patterns that are not modified UTF-7 and is marked only when none is
    left or the reference is not).
    """

    tag: str
    name: str
    args: CommandArgs = NO_ARGS
    invalid_name: bool = False
