"""
Plain data types that cross the interfaces in :mod:`txmail.interfaces`.

These are frozen dataclasses with no behaviour beyond validation, so that
every backend and every protocol speaks the same values.  Nothing here
imports Twisted, and nothing does I/O except reading a
:class:`MessageSource` (which its callers run where they may block).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, BinaryIO, Literal

from txmail.smtp.codes import Reply

__all__ = [
    "ANSWERED",
    "DELETED",
    "DELIMITER",
    "DRAFT",
    "FLAGGED",
    "INBOX",
    "SEEN",
    "SOURCE_CHUNK",
    "SYSTEM_FLAGS",
    "AnnotationsChanged",
    "DeliveryReport",
    "DeliveryState",
    "Envelope",
    "FlagMode",
    "FlagsChanged",
    "FolderChange",
    "FolderCreated",
    "FolderDeleted",
    "FolderInfo",
    "FolderRenamed",
    "MailboxChange",
    "MailboxDeleted",
    "MailboxStatus",
    "MessageInfo",
    "MessageMetadata",
    "MessageSource",
    "MessagesAdded",
    "MessagesChanged",
    "MessagesExpunged",
    "QueueEntry",
    "RecipientResult",
    "RecipientState",
    "SpecialUse",
    "SubscriptionChanged",
    "as_source",
    "match_mailbox_pattern",
    "normalize_flags",
    "normalize_mailbox_name",
    "open_binary",
]

#: The name of every user's inbox.  It is case-insensitive (RFC 3501
#: section 5.1); stores always report it spelled ``INBOX``.
INBOX = "INBOX"

#: The hierarchy delimiter of mailbox names, as IMAP clients see it.
DELIMITER = "/"

SEEN = "\\Seen"
ANSWERED = "\\Answered"
FLAGGED = "\\Flagged"
DELETED = "\\Deleted"
DRAFT = "\\Draft"

#: The system flags a store keeps (RFC 3501 section 2.3.2).  ``\\Recent``
#: is not among them: it is session state, see
#: :meth:`txmail.interfaces.IMailbox.claim_recent`.
SYSTEM_FLAGS = frozenset({SEEN, ANSWERED, FLAGGED, DELETED, DRAFT})

_SYSTEM_BY_LOWER = {f.lower(): f for f in SYSTEM_FLAGS}
_KEYWORD_RE = re.compile(r"^[!#$&'+-\[^-z|}~]+$")  # IMAP atom without ()]{ %*"\


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """
    Return *flags* with system flags spelled canonically.

    System flags are case-insensitive (``\\seen`` is ``\\Seen``); keywords
    keep their case.  ``\\Recent`` and unknown backslash flags are dropped,
    since no store may keep them.

    Raises:
        ValueError: a keyword contains characters an IMAP atom cannot hold.
    """
    out = set()
    for flag in flags:
        if flag.startswith("\\"):
            canonical = _SYSTEM_BY_LOWER.get(flag.lower())
            if canonical is not None:
                out.add(canonical)
            continue
        if not flag or not _KEYWORD_RE.match(flag):
            raise ValueError(f"invalid keyword {flag!r}")
        out.add(flag)
    return frozenset(out)


class FlagMode(Enum):
    """How :meth:`txmail.interfaces.IMailbox.set_flags` combines flags."""

    REPLACE = "replace"
    ADD = "add"
    REMOVE = "remove"


class SpecialUse(Enum):
    """Special-use mailbox roles (RFC 6154); the value is the IMAP attribute."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    JUNK = "\\Junk"
    ARCHIVE = "\\Archive"


def normalize_mailbox_name(name: str) -> str:
    """
    Return the canonical form of a mailbox name, or raise ``ValueError``.

    ``INBOX`` is matched case-insensitively and returned as ``INBOX`` (also as
    the first component of a hierarchical name, ``inbox/x`` becomes
    ``INBOX/x``).  Leading and trailing delimiters are removed.  A name with
    an empty component (``a//b``), a ``.`` or ``..`` component, a NUL,
    CR or LF, or a component starting with ``~`` is refused: no name can
    reach outside its user's store.
    """
    if not isinstance(name, str):
        raise ValueError("mailbox name must be str")
    stripped = name.strip(DELIMITER)
    if not stripped:
        raise ValueError("empty mailbox name")
    parts = stripped.split(DELIMITER)
    for part in parts:
        if part in ("", ".", "..") or part.startswith("~"):
            raise ValueError(f"invalid mailbox name component {part!r}")
        if any(c in part for c in "\x00\r\n") or any(ord(c) < 0x20 for c in part):
            raise ValueError("control character in mailbox name")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    return DELIMITER.join(parts)


def match_mailbox_pattern(pattern: str, name: str) -> bool:
    """
    Match *name* against an IMAP LIST pattern (RFC 3501 section 6.3.8).

    ``*`` matches anything, ``%`` anything but the hierarchy delimiter.
    ``INBOX`` is matched case-insensitively.

    The match walks the pattern as a set of positions, one character of
    *name* at a time: time grows with ``len(pattern) * len(name)`` whatever
    the wildcards (a backtracking regular expression takes exponential time
    on patterns such as ``*a*a*a*a*a*b``, which any client can send).
    """
    if _wildcard_match(pattern, name):
        return True
    # INBOX is case-insensitive, also as the first hierarchy component.
    head, sep, tail = name.partition(DELIMITER)
    if head == INBOX and pattern[: len(INBOX)].upper() == INBOX:
        return _wildcard_match(pattern[len(INBOX) :], sep + tail)
    return False


def _wildcard_match(pattern: str, name: str) -> bool:
    """*name* matches *pattern* (``*``, ``%`` wildcards), by simulating the pattern's automaton."""

    def closure(positions: set[int]) -> set[int]:
        # A wildcard may match nothing: its position reaches the next one.
        out = set()
        stack = list(positions)
        while stack:
            i = stack.pop()
            if i in out:
                continue
            out.add(i)
            if i < len(pattern) and pattern[i] in "*%":
                stack.append(i + 1)
        return out

    current = closure({0})
    for ch in name:
        following = set()
        for i in current:
            if i == len(pattern):
                continue
            wanted = pattern[i]
            if wanted == "*" or (wanted == "%" and ch != DELIMITER):
                following.add(i)
            elif wanted == ch:
                following.add(i + 1)
        if not following:
            return False
        current = closure(following)
    return len(pattern) in current


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """
    The cheap listing of one message, as :meth:`IMailbox.list_messages` gives it.

    Attributes:
        uid: never changes or repeats within the mailbox's UIDVALIDITY.
        flags: system flags (canonical spelling) and keywords.
        size: the size in octets of the stored message (CRLF line ends).
        internal_date: seconds since the epoch (UTC) when it arrived.
        modseq: the mailbox modification sequence of this message's last
            change (RFC 7162), strictly increasing within the mailbox.
        save_date: seconds since the epoch (UTC) when the message was saved
            into this mailbox (delivery, append, copy, move; RFC 8514
            section 3), or ``None`` from a store that does not keep it
            (see :class:`txmail.interfaces.ISaveDates`).
        email_id: the message's RFC 8474 EMAILID (1 to 255 characters of
            ``[A-Za-z0-9_-]``), kept by a copy or move, or ``None`` from a
            store that does not keep one (see
            :class:`txmail.interfaces.IObjectIds`).
    """

    uid: int
    flags: frozenset[str]
    size: int
    internal_date: float
    modseq: int
    save_date: float | None = None
    email_id: str | None = None


@dataclass(frozen=True, slots=True)
class MailboxStatus:
    """
    Counters of a mailbox (IMAP STATUS, SELECT, POP3 STAT).

    ``recent`` counts messages no session has yet claimed with
    :meth:`IMailbox.claim_recent`.
    """

    messages: int
    recent: int
    unseen: int
    uidnext: int
    uidvalidity: int
    highest_modseq: int
    size: int


@dataclass(frozen=True, slots=True)
class FolderInfo:
    """
    One mailbox in a user's store, as :meth:`IMailStore.list_mailboxes` gives it.

    Attributes:
        name: canonical name with ``/`` as the hierarchy delimiter.
        special_use: its RFC 6154 role, if any.
        subscribed: whether the user subscribed to it.
        has_children: whether any mailbox exists below it.
        selectable: ``False`` for a name that exists only as a parent of
            others (IMAP ``\\Noselect``).
    """

    name: str
    special_use: SpecialUse | None = None
    subscribed: bool = False
    has_children: bool = False
    selectable: bool = True


class MessageMetadata:
    """
    Parsed facts about a message, computed once (at delivery or append) and
    cached by the store.  Produced by :func:`txmail.mime.parse_metadata`.

    Attributes:
        header_size: octets of the header section, including the blank line.
        headers: the header fields as ``(name, raw value)`` pairs in order;
            values are ``str`` decoded as latin-1 from the raw octets with
            folding kept, so they round-trip to the original bytes.
        envelope: the IMAP ENVELOPE structure (RFC 3501 section 7.4.2) as
            nested tuples of ``str | None``; see :mod:`txmail.mime`.
        body_structure: the IMAP BODYSTRUCTURE, with extension data, as
            nested tuples; see :mod:`txmail.mime`.
        lines: the number of lines of the body (for text parts).

    Immutable, compared and hashed by these five values, like a frozen
    dataclass.  A store may build one with :meth:`deferred`: the last three
    are then computed by a function on first use (a cache record decoded in
    two steps, so that a client asking for header fields only does not pay
    for the structures; or a body parsed only when first needed).
    """

    __slots__ = ("_body_structure", "_complete", "_envelope", "_lines", "header_size", "headers")

    header_size: int
    headers: tuple[tuple[str, str], ...]
    _envelope: tuple[Any, ...]
    _body_structure: tuple[Any, ...]
    _lines: int
    _complete: Callable[[], tuple[tuple[Any, ...], tuple[Any, ...], int]] | None

    def __init__(
        self,
        header_size: int,
        headers: tuple[tuple[str, str], ...],
        envelope: tuple[Any, ...],
        body_structure: tuple[Any, ...],
        lines: int = 0,
    ) -> None:
        _set = object.__setattr__
        _set(self, "header_size", header_size)
        _set(self, "headers", headers)
        _set(self, "_envelope", envelope)
        _set(self, "_body_structure", body_structure)
        _set(self, "_lines", lines)
        _set(self, "_complete", None)

    @classmethod
    def deferred(
        cls,
        header_size: int,
        headers: tuple[tuple[str, str], ...],
        complete: Callable[[], tuple[tuple[Any, ...], tuple[Any, ...], int]],
    ) -> MessageMetadata:
        """
        Metadata whose envelope, body structure and line count are
        ``complete()``'s ``(envelope, body_structure, lines)``, called once,
        on first use of any of them.
        """
        md = cls(header_size, headers, (), (), 0)
        object.__setattr__(md, "_complete", complete)
        return md

    def _completed(self) -> None:
        complete = self._complete
        if complete is not None:
            envelope, body_structure, lines = complete()
            _set = object.__setattr__
            _set(self, "_envelope", envelope)
            _set(self, "_body_structure", body_structure)
            _set(self, "_lines", lines)
            _set(self, "_complete", None)

    @property
    def is_complete(self) -> bool:
        """Whether the envelope, body structure and line count are at hand (no call pending)."""
        return self._complete is None

    @property
    def envelope(self) -> tuple[Any, ...]:
        if self._complete is not None:
            self._completed()
        return self._envelope

    @property
    def body_structure(self) -> tuple[Any, ...]:
        if self._complete is not None:
            self._completed()
        return self._body_structure

    @property
    def lines(self) -> int:
        if self._complete is not None:
            self._completed()
        return self._lines

    def _values(self) -> tuple[Any, ...]:
        return (self.header_size, self.headers, self.envelope, self.body_structure, self.lines)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"cannot assign to field {name!r}: MessageMetadata is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}: MessageMetadata is immutable")

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, MessageMetadata)
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        return (
            f"MessageMetadata(header_size={self.header_size!r}, headers={self.headers!r}, "
            f"envelope={self.envelope!r}, body_structure={self.body_structure!r}, lines={self.lines!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (MessageMetadata, self._values())


#: Octets :meth:`MessageSource.open`'s readers take at a time when they stream.
SOURCE_CHUNK = 1 << 20


def open_binary(path: str) -> BinaryIO:
    """*path* opened for reading in binary mode."""
    return open(path, "rb")


@dataclass(frozen=True, slots=True)
class MessageSource:
    """
    A complete message handed to a store (:meth:`txmail.interfaces.IMailbox.append`)
    or to the queue (:meth:`txmail.interfaces.IQueue.enqueue`): its octets,
    with CRLF line ends, exactly as they are to be stored, wherever they are.

    A consumer reads it with :meth:`open` (in pieces of at most
    :data:`SOURCE_CHUNK`: never the whole of a large message in memory),
    or takes :attr:`data` when it is there.  A store that understands
    local files may instead hard-link or copy :attr:`local_path` (zero-copy
    delivery); one that does not simply streams.  Nobody modifies or
    removes what a source reads from: the caller owns it and keeps it until
    the store or queue has answered.

    Make one with :meth:`from_bytes` (octets in memory), :meth:`from_file`
    (a file on local disk), or directly with any *opener* (a function
    giving a new readable binary file object positioned at the start of
    the message, each time it is called: a database large object, a
    socket already buffered to disk...).

    Attributes:
        size: the message's size in octets.
        opener: ``opener()`` gives a new readable binary file object of
            the message, positioned at its start (the caller closes it).
            It may block: callers on the reactor thread run it through
            their ``run_blocking``.
        metadata: the parsed :class:`MessageMetadata`, when the caller has
            it already (one parse for many recipients); otherwise the store
            parses.
        fsynced: the caller already made these octets durable (a store
            that links :attr:`local_path` then syncs only the directory).
        data: the same octets in memory, when the caller has them (small
            messages), so that parsing need not read them back.
        local_path: a file on local disk holding exactly these octets,
            which a store may hard-link or copy (never modify or remove),
            or ``None``.
    """

    size: int
    opener: Callable[[], BinaryIO] = field(repr=False, compare=False)
    metadata: MessageMetadata | None = field(default=None, repr=False)
    fsynced: bool = False
    data: bytes | None = field(default=None, repr=False)
    local_path: str | None = None

    @classmethod
    def from_bytes(cls, data: bytes, *, metadata: MessageMetadata | None = None) -> MessageSource:
        """A source of *data* in memory (never durable on its own: ``fsynced`` is false)."""
        data = bytes(data)
        return cls(len(data), functools.partial(io.BytesIO, data), metadata, False, data)

    @classmethod
    def from_file(
        cls,
        path: str,
        size: int,
        *,
        metadata: MessageMetadata | None = None,
        fsynced: bool = False,
        data: bytes | None = None,
    ) -> MessageSource:
        """
        A source of the file *path* on local disk (of *size* octets), which
        stores may hard-link: :attr:`local_path` is *path*.  *data* is its
        content when the caller still has it in memory.
        """
        return cls(size, functools.partial(open_binary, path), metadata, fsynced, data, path)

    def open(self) -> BinaryIO:
        """A new readable binary file object of the message, at its start (blocking; the caller closes it)."""
        return self.opener()

    def read(self) -> bytes:
        """The whole message: :attr:`data` when held, else read through :meth:`open` (blocking; small messages)."""
        if self.data is not None:
            return self.data
        with self.open() as f:
            return f.read()

    def with_metadata(self, metadata: MessageMetadata) -> MessageSource:
        """This source with *metadata* (parsed once by the caller for every copy)."""
        return dataclasses.replace(self, metadata=metadata)


def as_source(message: bytes | MessageSource) -> MessageSource:
    """*message* as a :class:`MessageSource` (``bytes`` are a shorthand for :meth:`MessageSource.from_bytes`)."""
    if isinstance(message, MessageSource):
        return message
    return MessageSource.from_bytes(bytes(message))


class MailboxChange:
    """Base class of the change events a mailbox gives its listeners."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class MessagesAdded(MailboxChange):
    """New messages (delivered, appended, copied or moved in, picked up from ``new/``)."""

    messages: tuple[MessageInfo, ...]


@dataclass(frozen=True, slots=True)
class FlagsChanged(MailboxChange):
    """Flags of these messages changed; each info holds the new flags and modseq."""

    messages: tuple[MessageInfo, ...]


@dataclass(frozen=True, slots=True)
class MessagesExpunged(MailboxChange):
    """These UIDs were removed (expunged, or moved out)."""

    uids: tuple[int, ...]
    highest_modseq: int = 0


@dataclass(frozen=True, slots=True)
class MailboxDeleted(MailboxChange):
    """The mailbox itself was deleted or renamed away; sessions must deselect it."""


class FolderChange:
    """
    Base class of the change events a store gives its store listeners
    (:class:`txmail.interfaces.IStoreChanges`): one user's folder tree,
    subscriptions, and the messages of any of their mailboxes.
    """

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class MessagesChanged(FolderChange):
    """
    *change* (a :class:`MailboxChange` other than :class:`MailboxDeleted`)
    happened in the mailbox *name*; *mailbox* is its
    :class:`txmail.interfaces.IMailbox` (for its counters).
    """

    name: str
    change: MailboxChange
    mailbox: object = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class FolderCreated(FolderChange):
    """The mailbox *name* was created (or its parent was, on the way)."""

    name: str


@dataclass(frozen=True, slots=True)
class FolderDeleted(FolderChange):
    """
    The mailbox *name* was deleted; *parent*: it stays as a non-selectable
    parent of its children (RFC 3501 section 6.3.4).
    """

    name: str
    parent: bool = False


@dataclass(frozen=True, slots=True)
class FolderRenamed(FolderChange):
    """The mailbox *old* is now called *new* (one event per renamed mailbox, children included)."""

    old: str
    new: str


@dataclass(frozen=True, slots=True)
class SubscriptionChanged(FolderChange):
    """*name* was subscribed (*subscribed*) or unsubscribed."""

    name: str
    subscribed: bool


@dataclass(frozen=True, slots=True)
class AnnotationsChanged:
    """
    RFC 5464 annotations (METADATA entries) of a mailbox, or of the server
    when *mailbox* is ``""``, were set or removed: the entry names, lower
    case (what :meth:`txmail.interfaces.IMetadataStore.add_annotation_listener`
    listeners get; RFC 5465 NOTIFY's MailboxMetadataChange and
    ServerMetadataChange events).
    """

    mailbox: str
    entries: tuple[str, ...]


@dataclass(frozen=True)
class Envelope:
    """
    The SMTP envelope of one transaction (RFC 5321 section 2.3.1).

    Attributes:
        mail_from: the reverse-path, ``""`` for the null sender ``<>``.
        rcpt_to: forward-paths in the order received, as given.
        mail_params: ESMTP parameters of MAIL (upper-cased keys).
        rcpt_params: ESMTP parameters per recipient, parallel to ``rcpt_to``.
        helo: the name the client gave in EHLO/HELO.
        peer: the client's address as ``"ip:port"``.
        authenticated_user: the SASL identity, if the client authenticated.
        tls: whether the transaction ran under TLS.
        received_at: seconds since the epoch when DATA completed.
        protocol: ``SMTP``/``ESMTP``/``ESMTPS``/``ESMTPSA``... for ``Received:``.
        message_id: a server-assigned id for logs and trace headers.
        folder: the folder local recipients get the message in (a policy's
            choice, such as ``"Junk"``); ``None`` for their INBOX.
        hold: why the message is on hold (a policy's or milter's
            quarantine): every recipient waits in the queue, in the state
            ``held``, until an administrator releases it; ``None`` normally.
    """

    mail_from: str
    rcpt_to: tuple[str, ...]
    mail_params: dict[str, str | None] = field(default_factory=dict)
    rcpt_params: tuple[dict[str, str | None], ...] = ()
    helo: str = ""
    peer: str = ""
    authenticated_user: str | None = None
    tls: bool = False
    received_at: float = 0.0
    protocol: str = "ESMTP"
    message_id: str = ""
    folder: str | None = None
    hold: str | None = None


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """
    What became of one recipient of a delivery.

    Attributes:
        recipient: the address as the client gave it.
        ok: delivered to a mailbox or queued durably.
        temporary: when not ok, whether the failure is temporary (4xx).
        reply: the :class:`~txmail.smtp.codes.Reply` that says what became
            of it, or ``None`` (the SMTP server then sends its own).  A
            ``str`` given here (``"550 5.1.1 No such user"``, as routers
            written for earlier versions give it) is parsed once, with
            :meth:`Reply.from_text <txmail.smtp.codes.Reply.from_text>`:
            one that is not a well-formed reply becomes ``None``.
        detail: for local deliveries the mailbox owners and UIDs, for
            queued ones the queue id.
    """

    recipient: str
    ok: bool
    temporary: bool = False
    reply: Reply | None = None
    detail: str = ""

    def __post_init__(self) -> None:
        reply: object = self.reply
        if isinstance(reply, str):
            object.__setattr__(self, "reply", Reply.from_text(reply) if reply else None)


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """The results of :meth:`IDeliveryRouter.deliver`, one per recipient."""

    results: tuple[RecipientResult, ...]

    @property
    def all_ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def any_ok(self) -> bool:
        return any(r.ok for r in self.results)


class DeliveryState(StrEnum):
    """
    Where a queued recipient stands (:attr:`RecipientState.state`); the
    values are the strings the queues store.
    """

    #: Queued, never tried.
    PENDING = "pending"
    #: Tried, to be tried again at :attr:`RecipientState.next_attempt`.
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    FAILED = "failed"
    #: Quarantined (the envelope's ``hold``) until released.
    HELD = "held"


@dataclass(frozen=True, slots=True)
class RecipientState:
    """
    What became of one recipient of a :class:`QueueEntry` so far, as the
    queue runner (:mod:`txmail.delivery.runner`) records it with
    :meth:`txmail.interfaces.IQueue.update_recipients`.

    Attributes:
        state: where it stands.
        attempts: how many delivery attempts were made.
        next_attempt: when a ``deferred`` recipient is due (seconds since
            the epoch), else ``None``.
        last_error: the text of the last failure, if any.
        last_attempt: when it was last tried (seconds since the epoch).
        host: the remote MTA last tried (``None`` for local delivery).
        reply: the reply text of a successful delivery.
        status: the RFC 3463 status code of the last attempt.
        dsn_sent: a ``failed`` recipient's failure notice was handled.
        delay_notice_sent: a ``deferred`` recipient's delay notice was handled.
        success_action: ``delivered`` or ``relayed`` when the recipient's
            NOTIFY wants a success notice (RFC 3461 section 5.2).
        success_sent: ``None`` when no success notice is wanted, else
            whether it was handled.
    """

    state: DeliveryState = DeliveryState.PENDING
    attempts: int = 0
    next_attempt: float | None = None
    last_error: str | None = None
    last_attempt: float | None = None
    host: str | None = None
    reply: str | None = None
    status: str | None = None
    dsn_sent: bool = False
    delay_notice_sent: bool = False
    success_action: Literal["delivered", "relayed"] | None = None
    success_sent: bool | None = None


@dataclass(frozen=True)
class QueueEntry:
    """
    One message in the outbound queue.

    Attributes:
        queue_id: the id the queue gave it.
        envelope: the envelope it was accepted with.
        recipients: per recipient its :class:`RecipientState`.
        size: the message size in octets.
        created: seconds since the epoch when it was queued.
    """

    queue_id: str
    envelope: Envelope
    recipients: dict[str, RecipientState]
    size: int
    created: float
