"""
The contracts between txmail's layers, as zope.interface ``Interface``\\s.

One mailbox contract (:class:`IMailStore` and :class:`IMailbox`) serves SMTP
delivery, POP3 and IMAP alike, so it carries IMAP's semantics and the other
protocols use a subset.  A new backend (a database, a remote service)
implements :class:`IMailStoreProvider`, :class:`IMailStore` and
:class:`IMailbox` and proves itself by passing the conformance suite in
:mod:`txmail.testing.store` (:mod:`txmail.testing.queue` and
:mod:`txmail.testing.directory` do the same for :class:`IQueue` and
:class:`IDirectory`).

Conventions for every interface here:

* A method documented as returning ``Deferred[X]`` always returns a
  :class:`twisted.internet.defer.Deferred` (it may have fired already), so
  a networked backend can implement the same contract.  Failures are
  delivered as failed Deferreds carrying the exceptions of
  :mod:`txmail.errors`.
* Values crossing the interface are the dataclasses of :mod:`txmail.model`.
* Mailbox names use ``/`` as the hierarchy delimiter and are normalised with
  :func:`txmail.model.normalize_mailbox_name` (``INBOX`` is
  case-insensitive).  A backend never lets a name reach outside its user's
  store.
* Stores deal in UIDs only.  Message sequence numbers, and which session a
  message is ``\\Recent`` in, are protocol session state.

This module imports no protocol code.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from txmail.auth.passwords import ScramCredentials
    from txmail.delivery.hooks import HookResult
    from txmail.model import (
        AnnotationsChanged,
        DeliveryReport,
        Envelope,
        FlagMode,
        FolderChange,
        FolderInfo,
        MailboxChange,
        MailboxStatus,
        MessageInfo,
        MessageMetadata,
        MessageSource,
        QueueEntry,
        RecipientResult,
        RecipientState,
        SpecialUse,
    )
    from txmail.quota import Usage

__all__ = [
    "HEADER_COLUMNS",
    "HEADER_LINES",
    "IDeliveryHook",
    "IDeliveryRouter",
    "IDirectory",
    "IExpungeHistory",
    "IExpungedEmailIds",
    "IHeaderColumns",
    "IHeaderLines",
    "IInboxDelivery",
    "IMailStore",
    "IMailStoreProvider",
    "IMailbox",
    "IMaildropLock",
    "IMaildropLocks",
    "IMetadataStore",
    "IObjectIdProvider",
    "IObjectIds",
    "IQueue",
    "IRecordCache",
    "ISaveDates",
    "ISieveScripts",
    "ISieveState",
    "ISpool",
    "ISpooledMessage",
    "IStorageUsage",
    "IStoreChanges",
    "IURLAuthKeys",
]


class IMailStoreProvider(Interface):
    """
    Gives each local user their :class:`IMailStore`.

    The delivery router and the POP3/IMAP servers ask it for the store of a
    canonical user address (``alice@example.test``, as
    :meth:`IDirectory.resolve_recipient` returns it); the server builds the
    one ``[store] backend`` names (:func:`txmail.service.make_store_provider`).
    """

    def store_for(user: str) -> Deferred[IMailStore]:
        """
        Open the :class:`IMailStore` of *user* (``str``, a canonical
        address), creating the user's storage (with an ``INBOX``) on first
        use.  Two calls for the same user give stores that see each
        other's changes (in one process: the same object is fine).

        Returns:
            ``Deferred[IMailStore]``.  Opening never blocks the reactor: a
            store that must touch a disk or a database to open does it off
            the reactor thread (or asynchronously) and fires later.  A
            failure to open (the storage is unreachable) is a failed
            Deferred; the protocols log it and answer with a temporary
            error (IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``).
            An address the provider refuses to store (the Maildir
            provider: one that would reach outside its tree) fails with
            ``ValueError``.

        Coordination is the provider's job.  Several sessions, protocols and
        deliveries use one user's storage at once, and the contract holds
        for all of them together:

        * UIDs and modification sequences are allocated by the rules of
          :class:`IMailbox` (strictly ascending, never given twice within
          one UIDVALIDITY), whoever appends or changes a message;
        * the POP3 maildrop lock (RFC 1939 section 8) keeps a second POP3
          session out of a maildrop in use;
        * ``\\Recent`` (:meth:`IMailbox.claim_recent`) goes to exactly one
          session.

        A provider whose storage is shared by several processes (a
        database behind several servers) must coordinate these between the
        processes.  The Maildir provider
        (:class:`txmail.store.maildir.MaildirProvider`) coordinates them
        inside one process only (one store object per user, one mailbox
        object per mailbox, the POP3 locks of
        :class:`txmail.pop3.server.MaildropLocks`): one txmail process per
        Maildir tree.  A provider shared between processes offers its own
        POP3 lock by providing :class:`IMaildropLocks` too.
        """


class IMaildropLock(Interface):
    """
    A POP3 session's exclusive hold on one user's maildrop (RFC 1939
    section 8), from :meth:`IMaildropLocks.lock_maildrop`.
    """

    user = Attribute("The canonical address (str) whose maildrop is held.")

    def release() -> Deferred[None]:
        """
        Give the maildrop up (the session ended, by QUIT or a lost
        connection).  Releasing twice is harmless.

        Returns:
            ``Deferred[None]``; a failure (the storage is unreachable) is
            logged by the caller, and a lock that could not be released
            must not outlive its holder for long (a lease, say).
        """


class IMaildropLocks(Interface):
    """
    Optional, beside :class:`IMailStoreProvider`: the POP3 maildrop lock of
    a provider whose storage several processes share (RFC 1939 section 8:
    "exclusive-access lock on the maildrop").

    The POP3 server (:func:`txmail.pop3.server.maildrop_locks_for`) uses
    the provider's locks when the provider provides this interface, and
    otherwise its own in-process :class:`txmail.pop3.server.MaildropLocks`,
    which is right for storage that one process uses (the Maildir and
    memory providers do not provide it).
    """

    def lock_maildrop(user: str) -> Deferred[IMaildropLock | None]:
        """
        Lock the maildrop of *user* (``str``, a canonical address) for one
        POP3 session, against the sessions of this process and of every
        other process on the same storage.

        Returns:
            ``Deferred[IMaildropLock | None]``: the lock, or ``None`` when
            another session holds it (the client gets ``-ERR [IN-USE]``,
            RFC 2449 section 8.1.1).  A failure (the storage is
            unreachable) is a failed Deferred, answered ``-ERR [SYS/TEMP]``
            (RFC 3206); it must fire in bounded time.
        """


class IInboxDelivery(Interface):
    """
    Optional, beside :class:`IMailStoreProvider`: one message put into the
    INBOXes of several users at once, as the delivery router does for the
    local recipients of one SMTP transaction.

    A provider whose every operation is a round trip to a database (the
    PostgreSQL provider) stores the message's octets once, shared by every
    copy, and makes all the copies in one transaction, instead of one
    :meth:`IMailStore.get_mailbox` and :meth:`IMailbox.append` per
    recipient.  The router (:class:`txmail.delivery.router.DeliveryRouter`)
    uses it when the provider provides it and the copies go to INBOXes;
    the Maildir and memory providers do not need it.
    """

    def deliver_to_inboxes(
        users: Sequence[str], message: MessageSource, internal_date: float | None = None
    ) -> Deferred[dict[str, int]]:
        """
        Append *message* (a :class:`txmail.model.MessageSource`) to the
        INBOX of each of *users* (canonical addresses, ``str``, no two
        alike), with no flags and the given *internal_date* (seconds since
        the epoch; now when ``None``), creating a user's storage on first
        use as :meth:`IMailStoreProvider.store_for` does.  Each copy is
        what :meth:`IMailbox.append` would have made: the same octets,
        metadata and size, a new UID and modseq of its INBOX; the listeners
        of an INBOX in use are told (:class:`txmail.model.MessagesAdded`).

        All or nothing: when it fails, no copy was made.

        Returns:
            ``Deferred[dict[str, int]]``: each user's new UID.  Only once
            it fires are the copies durable (the promise
            :meth:`IMailbox.append` makes).
        """


class IMailStore(Interface):
    """
    One user's mailboxes: the folder tree and the entry point to each mailbox.

    Every store has an ``INBOX``, which cannot be deleted.
    """

    user = Attribute("The canonical address (str) of the user this store belongs to.")

    def list_mailboxes(pattern: str = "*") -> Deferred[list[FolderInfo]]:
        """
        List the mailboxes whose names match *pattern*.

        Args:
            pattern: an IMAP LIST pattern (``*`` matches anything, ``%``
                anything but ``/``), matched with
                :func:`txmail.model.match_mailbox_pattern`.

        Returns:
            ``Deferred[list[FolderInfo]]`` sorted by name, ``INBOX`` first.
            Parents that exist only because of their children are listed
            with ``selectable=False`` when they match.
        """

    def get_mailbox(name: str) -> Deferred[IMailbox]:
        """
        Open the mailbox *name*.

        Returns:
            ``Deferred[IMailbox]``.  Opening costs no more than reading the
            mailbox's index: a store must not read every message to open a
            mailbox.  Opening the same mailbox twice may return the same
            object; changes through one are visible through the other.

        Raises:
            NoSuchMailbox: it does not exist (or is not selectable).
            InvalidMailboxName: the name is not valid.
        """

    def create_mailbox(name: str, special_use: SpecialUse | None = None) -> Deferred[None]:
        """
        Create mailbox *name*, and any missing parents (RFC 3501 section 6.3.3).

        Args:
            name: the new mailbox's name.
            special_use: a :class:`txmail.model.SpecialUse` role, or ``None``.

        Returns:
            ``Deferred[None]``.

        Raises:
            MailboxExists: it exists already (``INBOX`` always does).
            InvalidMailboxName: the name is not valid.
        """

    def delete_mailbox(name: str) -> Deferred[None]:
        """
        Delete mailbox *name* and its messages (RFC 3501 section 6.3.4).

        A mailbox that has children is not removed: it becomes
        non-selectable (its messages are removed) and stays as a parent.
        Listeners of the deleted mailbox receive
        :class:`txmail.model.MailboxDeleted`.

        Returns:
            ``Deferred[None]``.

        Raises:
            NoSuchMailbox: it does not exist.
            InvalidMailboxName: ``INBOX`` or an invalid name.
            MailboxNotEmpty: it has children and is non-selectable already.
        """

    def rename_mailbox(old: str, new: str) -> Deferred[None]:
        """
        Rename mailbox *old*, and its children, to *new* (RFC 3501 section 6.3.5).

        Renaming ``INBOX`` moves all its messages into a new mailbox *new*
        and leaves ``INBOX`` empty (children of INBOX are not moved).  UIDs
        of a renamed mailbox need not be kept; the new mailbox may get a new
        UIDVALIDITY.  Missing parents of *new* are created.

        Returns:
            ``Deferred[None]``.

        Raises:
            NoSuchMailbox: *old* does not exist.
            MailboxExists: *new* exists.
            InvalidMailboxName: a name is not valid, or *new* is below *old*.
        """

    def subscribe(name: str) -> Deferred[None]:
        """
        Add *name* to the user's subscriptions (the name need not exist).

        Returns:
            ``Deferred[None]``.
        """

    def unsubscribe(name: str) -> Deferred[None]:
        """
        Remove *name* from the user's subscriptions.

        Returns:
            ``Deferred[None]``.

        Raises:
            NoSuchMailbox: *name* was not subscribed.
        """

    def subscriptions() -> Deferred[list[str]]:
        """
        Return ``Deferred[list[str]]``: the subscribed names, sorted.
        """

    def special_use_mailbox(role: SpecialUse | str) -> Deferred[str | None]:
        """
        Return ``Deferred[str | None]``: the name of the mailbox with the
        :class:`txmail.model.SpecialUse` *role*, or ``None``.
        """


class IStorageUsage(Interface):
    """
    A store that knows how much its user keeps (:mod:`txmail.quota`): stores
    that provide it, beside :class:`IMailStore`, get storage quotas; others
    have none.
    """

    def usage() -> Deferred[Usage]:
        """
        Return ``Deferred[txmail.quota.Usage]``: the octets (the sizes IMAP
        reports as RFC822.SIZE) and the number of messages over every mailbox
        of the user.  Cheap: kept up to date as messages come and go, not
        counted per call; changes made by other programs may take a few
        minutes to show.
        """


class IStoreChanges(Interface):
    """
    A store that tells listeners about every change of its user's folders
    (what IMAP NOTIFY, RFC 5465, reports for mailboxes other than the
    selected one).  Optional beside :class:`IMailStore`: the IMAP server
    offers NOTIFY's events for other mailboxes only for stores that provide
    it.  The memory and Maildir stores do, for the changes made through the
    store in this process (a delivery, another IMAP or POP3 session, the
    admin CLI); changes other programs make to a Maildir are told for the
    mailboxes that are watched (:meth:`IMailbox.add_listener`).  The
    PostgreSQL store does for the changes of every node on its database
    (:mod:`txmail.pg.store`).
    """

    def add_store_listener(listener: Callable[[FolderChange], object]) -> Callable[[], None]:
        """
        Call ``listener(change)`` with each :class:`txmail.model.FolderChange`
        of this store, after the change is made: :class:`txmail.model.MessagesChanged`
        for the messages of any mailbox (the events mailbox listeners get),
        :class:`txmail.model.FolderCreated`, :class:`txmail.model.FolderDeleted`,
        :class:`txmail.model.FolderRenamed` and
        :class:`txmail.model.SubscriptionChanged`.

        Listeners must not raise and must not block.  A store with no
        store listener does no work for them.

        Returns:
            a callable with no arguments that removes the listener (calling
            it again does nothing).
        """


class IExpungeHistory(Interface):
    """
    A mailbox that remembers which UIDs were expunged at which
    mod-sequence (what QRESYNC, RFC 7162 section 3.2, tells a client that
    resynchronises: ``VANISHED (EARLIER)``).  Optional beside
    :class:`IMailbox`: the IMAP server offers QRESYNC's vanished lists only
    for mailboxes that provide it.  The memory and Maildir stores do (the
    Maildir store keeps the history in its index, across restarts).
    """

    def expunged_since(modseq: int, uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        """
        Return ``Deferred[list[int]]``: the UIDs expunged after mod-sequence
        *modseq* (``int``), ascending, restricted to *uids* (an iterable of
        UIDs) when given.  A store whose history does not reach back to
        *modseq* (it keeps it in coarser steps, or lost part of it) answers
        with a superset: UIDs expunged earlier, never a UID still present
        or never given (RFC 7162 section 3.2.6 allows reporting messages
        expunged before *modseq*).
        """


class IExpungedEmailIds(Interface):
    """
    A mailbox that remembers the EMAILIDs (RFC 8474) of the messages it
    expunged, beside their UIDs (:class:`IExpungeHistory`), across restarts:
    JMAP's ``Email/changes`` (RFC 8620 section 5.2) names the Emails
    destroyed since a state with them, also when the process that gave the
    state is gone.  Optional: without it, an expunge that the JMAP server
    did not see answers ``cannotCalculateChanges`` (the client resyncs).
    The memory, Maildir and PostgreSQL stores provide it; each keeps the
    ids of at least the last 100,000 messages expunged from a mailbox.
    """

    def expunged_email_ids(uids: Iterable[int]) -> Deferred[dict[int, str]]:
        """
        Return ``Deferred[dict[int, str]]``: the EMAILID of each of *uids*
        that was expunged from this mailbox and is still remembered, by UID
        (a UID never expunged, or forgotten, is left out).
        """


#: The header fields :meth:`IHeaderColumns.header_columns` gives, in this
#: order (lower case): what SEARCH's header keys, SORT and THREAD read.
HEADER_COLUMNS = tuple(
    sys.intern(name)  # one object each: marshal writes each name once per block
    for name in ("subject", "date", "from", "to", "cc", "bcc", "message-id", "references", "in-reply-to")
)


class IHeaderColumns(Interface):
    """
    A mailbox that gives a few header fields of many messages at once,
    without a :class:`txmail.model.MessageMetadata` per message (IMAP
    SEARCH on header keys, SORT and THREAD of a big mailbox read them for
    every message).  Optional beside :class:`IMailbox`: the IMAP server
    reads :meth:`IMailbox.get_metadata` for a mailbox without it.  The
    memory and Maildir stores provide it (the Maildir store in its
    ``txmail-columns`` file).
    """

    def header_columns(uids: Iterable[int]) -> Deferred[dict[int, tuple[str, ...]]]:
        """
        Return ``Deferred[dict[int, tuple[str, ...]]]``: for each message
        of *uids* (an iterable of UIDs; those that do not exist are left
        out, as :meth:`IMailbox.get_metadata` does), the fields of
        ``MessageMetadata.headers`` whose name, blanks stripped and
        case-folded, is one of :data:`HEADER_COLUMNS`, in header order,
        each named by that lower case name, flattened into one tuple
        ``(name, raw value, name, raw value, ...)``
        (:func:`txmail.mime.header_columns`).
        """


#: The header fields :meth:`IHeaderLines.header_lines` gives (lower case):
#: those mail clients ask for in the ``BODY.PEEK[HEADER.FIELDS (...)]`` of
#: their first sync (Thunderbird's list, plus Sender, Importance and List-Id).
HEADER_LINES = tuple(
    sys.intern(name)
    for name in (
        "from", "to", "cc", "bcc", "subject", "date", "message-id", "priority", "x-priority",
        "references", "newsgroups", "in-reply-to", "content-type", "reply-to", "sender",
        "importance", "list-id",
    )
)  # fmt: skip


class IHeaderLines(Interface):
    """
    A mailbox that gives the lines of a few header fields of many messages
    at once, without a :class:`txmail.model.MessageMetadata` per message:
    IMAP answers ``BODY.PEEK[HEADER.FIELDS (...)]`` of names all in
    :data:`HEADER_LINES` from them (a client's first sync of a big mailbox
    asks that of every message).  Optional beside :class:`IMailbox`; the
    memory and Maildir stores provide it (the Maildir store in its
    ``txmail-lines`` file).
    """

    def header_lines(uids: Iterable[int]) -> Deferred[dict[int, tuple[str, str]]]:
        """
        Return ``Deferred[dict[int, tuple[str, str]]]``: for each message
        of *uids* (an iterable of UIDs; those that do not exist are left
        out, as :meth:`IMailbox.get_metadata` does), ``(keys, text)``
        (:func:`txmail.mime.header_lines`): the fields of
        ``MessageMetadata.headers`` whose name, blanks stripped and
        case-folded, is one of :data:`HEADER_LINES`, in header order, as
        one text of their lines (name, colon, raw value, each ending with a
        line end, CRLF added where a field had none), and their lower case
        names joined by spaces.
        """


class IRecordCache(Interface):
    """
    A mailbox that keeps, for a protocol, a record derived from each
    message (parts of its metadata rendered as the protocol writes them),
    so that it is derived once and not at each command: the IMAP server
    keeps its ENVELOPE, BODYSTRUCTURE and BODY texts this way, as Dovecot
    keeps them in its cache file.  Optional beside :class:`IMailbox`; the
    Maildir store provides it (a ``txmail-records-KIND`` file per folder).

    A record is a tuple of an even number of items, ``(name, value, name,
    value, ...)``, names ``str``, values ``str`` or ``bytes``, opaque to
    the store.  *kind* (letters, digits, ``-`` and ``.``) names what the
    protocol keeps, version included: a record kept for one kind is never
    given for another.  A record belongs to its message: it is gone when
    the message is expunged, and a copy does not carry it.
    """

    def cached_records(kind: str, uids: Iterable[int]) -> Deferred[dict[int, tuple[Any, ...]]]:
        """
        Return ``Deferred[dict[int, tuple]]``: the records of *kind* kept
        for the messages of *uids* (an iterable of UIDs); a message without
        one, or that does not exist, is left out.
        """

    def cache_records(kind: str, records: Mapping[int, tuple[Any, ...]]) -> Deferred[None]:
        """
        Keep *records* (``dict[int, tuple]``, UID to record) as the records
        of *kind* of those messages.  Returns ``Deferred[None]``.  Best
        effort: a store may drop some (a message expunged meanwhile, a disk
        that is full); it never fails for that.
        """

    def derive_records(
        uids: Iterable[int], derive: Callable[[MessageMetadata], Any]
    ) -> Deferred[dict[int, Any]]:
        """
        Return ``Deferred[dict[int, Any]]``: ``derive(metadata)`` of each
        message of *uids* (a message that does not exist is left out), as
        ``get_metadata`` would give its metadata and the protocol would then
        derive its record, but with the work where the store likes: the
        Maildir store has its parse worker processes parse the messages not
        cached and run *derive* too.  *derive* is a pure function whose
        answer :mod:`marshal` carries, found again by its module and
        qualified name when a module-level function (any other is run in
        this process).  Nothing is kept by this call (:meth:`cache_records`
        keeps records).
        """


class ISaveDates(Interface):
    """
    A mailbox that keeps when each message was saved into it (RFC 8514
    section 3, the IMAP SAVEDATE extension): every
    :class:`txmail.model.MessageInfo` it gives has ``save_date`` set, to the
    time the message was delivered, appended, copied or moved in, never
    changed while the message stays.  Optional beside :class:`IMailbox`:
    for a mailbox without it, IMAP answers ``SAVEDATE NIL`` and searches
    the internal date instead (RFC 8514 sections 4.2 and 4.3).  The memory
    and Maildir stores provide it (the Maildir store in its index).
    """


class IObjectIds(Interface):
    """
    A mailbox with the persistent object ids of RFC 8474 (IMAP OBJECTID):
    its own :attr:`mailbox_id`, and an ``email_id`` on every
    :class:`txmail.model.MessageInfo` it gives.  Optional beside
    :class:`IMailbox`.

    Ids are 1 to 255 characters of ``[A-Za-z0-9_-]`` (RFC 8474 section 3,
    and the ``Id`` of JMAP, RFC 8620 section 1.2, so that a JMAP server over
    the same store can use them as they are).  The mailbox id never changes
    while the mailbox exists, also across a rename (of the mailbox or a
    parent) and restarts, and is never given to another mailbox (a deleted
    and re-created name gets a new one).  A message keeps its email id
    across restarts, and :meth:`IMailbox.copy` and :meth:`IMailbox.move`
    give the new message the source's (RFC 8474 section 5.1).
    """

    mailbox_id = Attribute("The mailbox's MAILBOXID (str).")


class IObjectIdProvider(Interface):
    """
    A marker on an :class:`IMailStoreProvider` whose mailboxes all provide
    :class:`IObjectIds`.  The IMAP server advertises OBJECTID (RFC 8474)
    only for such a provider: its capability list is sent before the user,
    and so the store, is known.  The memory and Maildir providers are.
    """


class IMetadataStore(Interface):
    """
    A store that keeps RFC 5464 annotations (IMAP METADATA entries): per
    mailbox, and for the server (mailbox name ``""``) per user.  Optional
    beside :class:`IMailStore`: the IMAP server advertises METADATA only
    for stores that provide it.  The memory and Maildir stores do (Maildir
    keeps a file per mailbox, moved by RENAME and removed by DELETE).

    Entry names are lower case and already checked by the caller (RFC 5464
    section 3.2); values are octets.  Entries the server computes
    (``/private/specialuse``, ``/shared/admin``) are not stored here.
    """

    def get_annotations(mailbox: str) -> Deferred[dict[str, bytes]]:
        """
        Return ``Deferred[dict[str, bytes]]``: every entry of *mailbox*
        (``""``: the server's), by name.

        Raises:
            NoSuchMailbox: the mailbox does not exist.
            InvalidMailboxName: the name is not valid.
        """

    def set_annotations(mailbox: str, changes: Mapping[str, bytes | None]) -> Deferred[None]:
        """
        Set the entries of *changes* (``{name: bytes}``; ``None`` removes
        the entry) on *mailbox* (``""``: the server), all or none, durably;
        then tell the annotation listeners
        (:class:`txmail.model.AnnotationsChanged`, the names that changed).

        Returns:
            ``Deferred[None]``.

        Raises:
            NoSuchMailbox: the mailbox does not exist.
            InvalidMailboxName: the name is not valid.
        """

    def annotation_count() -> Deferred[int]:
        """
        Return ``Deferred[int]``: the number of entries the user keeps, over
        every mailbox and the server (for the per-user limit).
        """

    def add_annotation_listener(listener: Callable[[AnnotationsChanged], object]) -> Callable[[], None]:
        """
        Call ``listener(change)`` with a :class:`txmail.model.AnnotationsChanged`
        after each :meth:`set_annotations` that changed something.  Listeners
        must not raise and must not block.

        Returns:
            a callable with no arguments that removes the listener.
        """


class ISieveScripts(Interface):
    """
    A store that keeps its user's Sieve scripts (RFC 5228), at most one of
    them active: what ManageSieve (RFC 5804) edits and what the delivery
    router runs for each message to the user.  Optional beside
    :class:`IMailStore`: without it the user has no filters and ManageSieve
    refuses to log in.  The memory store keeps them in memory.

    Names are checked by the store with
    :func:`txmail.sieve.storage.check_script_name` (RFC 5804 section 1.6: 1
    to 128 Unicode characters, no control characters, no ``/``); contents
    are the script's octets, stored as given (the caller checks the script
    compiles before it stores it).  Every change is durable when its
    Deferred fires.
    """

    def list_scripts() -> Deferred[list[tuple[str, bool]]]:
        """
        Return ``Deferred[list[tuple[str, bool]]]``: each script's name and
        whether it is the active one, sorted by name (code point order).
        """

    def get_script(name: str) -> Deferred[bytes]:
        """
        Return ``Deferred[bytes]``: the script *name*.

        Raises:
            NoSuchScript: there is none of that name.
            InvalidScriptName: the name is not valid.
        """

    def put_script(name: str, content: bytes) -> Deferred[None]:
        """
        Store *content* as the script *name*, replacing one of that name
        (the active script stays active).

        Raises:
            InvalidScriptName: the name is not valid.
        """

    def delete_script(name: str) -> Deferred[None]:
        """
        Remove the script *name*.

        Raises:
            NoSuchScript: there is none of that name.
            ScriptActive: it is the active script.
        """

    def rename_script(old: str, new: str) -> Deferred[None]:
        """
        Give the script *old* the name *new*; it stays active if it was.

        Raises:
            NoSuchScript: there is no script *old*.
            ScriptExists: a script *new* exists.
            InvalidScriptName: a name is not valid.
        """

    def set_active(name: str | None) -> Deferred[None]:
        """
        Make the script *name* the active one (``None``: none is).

        Raises:
            NoSuchScript: there is none of that name.
        """

    def active_script() -> Deferred[tuple[str, bytes] | None]:
        """
        Return ``Deferred[tuple[str, bytes] | None]``: the active script's
        name and content, or ``None`` when no script is active.
        """


class ISieveState(Interface):
    """
    A store that keeps its user's Sieve vacation and duplicate state (RFC
    5230 section 4.1: whom a vacation reply went to and when; RFC 7352:
    which message ids were seen) as one opaque blob that
    :mod:`txmail.delivery.sieve` reads before a run and writes after it.
    Optional: without it the state is a file under the data directory.
    """

    def get_sieve_state() -> Deferred[bytes | None]:
        """Return ``Deferred[bytes | None]``: the blob last saved, or ``None``."""

    def put_sieve_state(data: bytes) -> Deferred[None]:
        """Replace the blob with *data* (at most a few megabytes), durable when the Deferred fires."""


class IURLAuthKeys(Interface):
    """
    A store that keeps its user's URLAUTH mailbox access keys (RFC 4467
    section 3): one secret random key per mailbox, with which the IMAP
    server signs and checks URLAUTH-authorized URLs (the ``INTERNAL``
    mechanism).  Optional beside :class:`IMailStore`: the IMAP server
    offers URLAUTH only with stores that provide it.  The memory store
    keeps the keys in memory, the Maildir store in a file of the user's
    directory (mode 0600), so they survive restarts.
    """

    def urlauth_key(mailbox: str, uidvalidity: int, create: bool = False) -> Deferred[bytes | None]:
        """
        Return ``Deferred[bytes | None]``: the access key of *mailbox*
        (``str``) while its UIDVALIDITY is *uidvalidity* (``int``; a key
        made for another UIDVALIDITY, e.g. of a deleted mailbox of the same
        name, is not given).  Without a key: a new random one when *create*
        is true (kept before the Deferred fires), else ``None``.
        """

    def reset_urlauth_keys(mailbox: str | None = None) -> Deferred[None]:
        """
        Return ``Deferred[None]``: forget the key of *mailbox*, or every key
        of the user when ``None`` (RFC 4467 section 6.2, RESETKEY); the URLs
        signed with them are no longer valid.
        """


class IMailbox(Interface):
    """
    One mailbox: messages with UIDs, flags, internal dates and sizes.

    Invariants every backend keeps (the conformance suite checks them):

    * UIDs are positive, strictly ascending in order of arrival, and never
      change or repeat while :attr:`uidvalidity` stays the same, also across
      restarts.  ``uidnext`` is greater than every UID ever given.
    * Each change (append, flag change, expunge) raises the mailbox's
      modification sequence; the changed message records it (RFC 7162).
    * :meth:`append` is atomic and durable: the message is never visible
      half-written, and it is on stable storage before the Deferred fires.
    * Parsed metadata is computed at most once per message and cached: when
      the message enters through the store, or (for a file another program
      dropped in) the first time it is asked for; :meth:`get_metadata`
      never re-parses per call.
    * Listeners see every change, made through this object or another
      session's, in the order made.
    """

    name = Attribute("The mailbox's canonical name (str).")
    uidvalidity = Attribute("The UIDVALIDITY (int, non-zero, 32-bit).")

    def status() -> Deferred[MailboxStatus]:
        """
        Return ``Deferred[MailboxStatus]`` with the current counters.
        """

    def list_messages(uids: Iterable[int] | None = None) -> Deferred[list[MessageInfo]]:
        """
        List messages cheaply: no message is read or parsed.

        Args:
            uids: an iterable of UIDs to restrict the listing to (UIDs that
                do not exist are left out silently), or ``None`` for all.

        Returns:
            ``Deferred[list[MessageInfo]]`` in ascending UID order.
        """

    def open_message(uid: int) -> Deferred[BinaryIO]:
        """
        Open a message for streaming.

        Returns:
            ``Deferred`` firing with a readable, seekable binary file object
            positioned at the start of the message.  The caller closes it.
            The content never changes while open, even if the message is
            expunged meanwhile.

        Raises:
            NoSuchMessage: no message has that UID.
        """

    def read_message(uid: int) -> Deferred[bytes]:
        """
        Return ``Deferred[bytes]``: the whole message.  For small messages;
        use :meth:`open_message` to stream large ones.

        Raises:
            NoSuchMessage: no message has that UID.
        """

    def get_metadata(uids: Iterable[int]) -> Deferred[dict[int, MessageMetadata]]:
        """
        Return the cached parsed metadata of many messages at once.

        Args:
            uids: an iterable of UIDs.

        Returns:
            ``Deferred[dict[int, MessageMetadata]]``; UIDs that do not exist
            are left out.
        """

    def append(
        message: MessageSource | bytes, flags: Iterable[str] = (), internal_date: float | None = None
    ) -> Deferred[int]:
        """
        Add a message to the mailbox (delivery, IMAP APPEND).

        Args:
            message: a :class:`txmail.model.MessageSource` (``bytes`` are
                a shorthand for :meth:`~txmail.model.MessageSource.from_bytes`).
                The store reads it through ``open()`` in pieces (never
                requiring a large message whole in memory), may take its
                ``data`` when there, and may hard-link or copy its
                ``local_path`` when it has one and the store can; it uses
                the source's ``metadata`` when given instead of parsing.
                The content is stored exactly as given (CRLF line ends
                expected); bare LFs in it are served as CRLF by
                ``read_message``, ``open_message``, ``get_metadata`` and
                ``MessageInfo.size``.
            flags: initial flags (normalised with
                :func:`txmail.model.normalize_flags`).
            internal_date: epoch seconds, default now.

        Returns:
            ``Deferred[int]``: the new message's UID, fired only once the
            message is durable (file and directory synced for a disk store).
            Listeners receive :class:`txmail.model.MessagesAdded`.
        """

    def set_flags(
        uids: Iterable[int], flags: Iterable[str], mode: FlagMode, unchanged_since: int | None = None
    ) -> Deferred[list[MessageInfo]]:
        """
        Change the flags of many messages at once (IMAP STORE).

        Args:
            uids: an iterable of UIDs; missing ones are ignored.
            flags: the flags to set, add or remove.
            mode: a :class:`txmail.model.FlagMode`.
            unchanged_since: if given, only messages whose modseq is at most
                this are changed (RFC 7162 UNCHANGEDSINCE).

        Returns:
            ``Deferred[list[MessageInfo]]``: the messages whose flags actually
            changed, with their new flags and modseq.  Listeners receive one
            :class:`txmail.model.FlagsChanged` with the same messages (none
            when nothing changed).
        """

    def copy(uids: Iterable[int], target: IMailbox) -> Deferred[list[tuple[int, int]]]:
        """
        Copy messages, with their flags and internal dates, into *target*.

        Args:
            uids: an iterable of UIDs; missing ones are ignored.
            target: another :class:`IMailbox` (possibly of the same store).

        Returns:
            ``Deferred[list[tuple[int, int]]]``: (source UID, new target UID)
            pairs in ascending source order (for UIDPLUS COPYUID).
        """

    def move(uids: Iterable[int], target: IMailbox) -> Deferred[list[tuple[int, int]]]:
        """
        Move messages into *target* (RFC 6851): copy then expunge from here.

        Returns:
            ``Deferred[list[tuple[int, int]]]`` as :meth:`copy`.  Listeners of
            this mailbox receive :class:`txmail.model.MessagesExpunged`.
        """

    def expunge(uids: Iterable[int] | None = None) -> Deferred[list[int]]:
        """
        Permanently remove messages flagged ``\\Deleted``.

        Args:
            uids: if given, only these UIDs are considered (UIDPLUS ``UID
                EXPUNGE``); messages without ``\\Deleted`` stay either way.

        Returns:
            ``Deferred[list[int]]``: the removed UIDs, ascending.  Listeners
            receive :class:`txmail.model.MessagesExpunged`.
        """

    def claim_recent() -> Deferred[list[int]]:
        """
        Claim the messages that arrived since the last claim (IMAP ``\\Recent``).

        RFC 3501 section 2.3.2 gives ``\\Recent`` to exactly one session, so
        this one piece of recent bookkeeping is shared: each UID is returned
        by exactly one call, across all sessions (and processes, for a
        backend shared between them).

        Returns:
            ``Deferred[list[int]]``: the claimed UIDs, ascending.
        """

    def refresh() -> Deferred[None]:
        """
        Pick up changes made behind the store's back (another program writing
        the same Maildir) and tell listeners about them, as if they had been
        made through this mailbox: new files as
        :class:`txmail.model.MessagesAdded`, changed flags as
        :class:`txmail.model.FlagsChanged`, vanished files as
        :class:`txmail.model.MessagesExpunged`.

        The protocols never call this themselves.  A store that can be
        changed from outside must pick such changes up on its own:

        * when :meth:`IMailStore.get_mailbox` is asked for a mailbox that is
          already open (IMAP SELECT, EXAMINE, STATUS, APPEND; the start of a
          POP3 session; a delivery), with a check cheap enough to run on
          every such call (the Maildir store compares directory times), so
          that the answer reflects the files as they are;
        * while the mailbox has listeners (a session has it selected), by
          watching it and turning what it finds into listener events within
          a few seconds (inotify or polling in the Maildir store), which
          IMAP sends at NOOP, CHECK and after each command, and at once
          during IDLE.

        A store nobody else writes (the memory store) does nothing here.
        See ``docs/guides/backend.rst``.

        Returns:
            ``Deferred[None]``, fired once the changes found are committed
            and told.
        """

    def add_listener(listener: Callable[[MailboxChange], object]) -> Callable[[], None]:
        """
        Call ``listener(change)`` with each :class:`txmail.model.MailboxChange`
        of this mailbox, from any session, after the change is made, and for
        changes made by other programs once the store finds them (see
        :meth:`refresh`; a store may watch a mailbox only while it has
        listeners).

        Listeners must not raise and must not block; they queue what they
        need and return.

        Returns:
            a callable with no arguments that removes the listener (calling
            it again does nothing).
        """


class IDirectory(Interface):
    """
    Who is local: domains, users, aliases and their credentials.
    """

    def is_local_domain(domain: str) -> bool:
        """
        Return ``True`` when mail for *domain* (``str``, compared
        case-insensitively) is delivered here.
        """

    def resolve_recipient(address: str) -> Deferred[list[str]]:
        """
        Resolve a local recipient address to the users who get the mail.

        Aliases are expanded (recursively, with a loop guard), plus
        addressing (``user+tag@domain``) resolves to ``user@domain``,
        domains compare case-insensitively, and duplicates are removed.

        Returns:
            ``Deferred[list[str]]``: canonical user addresses, non-empty.  An
            alias may also name non-local addresses; those are returned
            as they are and the router relays them.

        Raises:
            NoSuchUser: no user or alias answers to *address*.
        """

    def get_credentials(username: str) -> Deferred[ScramCredentials | None]:
        """
        Return ``Deferred[ScramCredentials | None]`` for a login name: the
        stored SCRAM-SHA-256 verifier (see :mod:`txmail.auth.passwords`),
        or ``None`` for an unknown user.  Login names are canonical user
        addresses; a name without ``@`` is looked up in the primary domain.
        """

    def canonical_user(username: str) -> Deferred[str | None]:
        """
        Return ``Deferred[str | None]``: the canonical address for a login
        name (a name without ``@`` is in the primary domain, as for
        :meth:`get_credentials`), or ``None`` if there is no such user.
        """

    def owns_address(user: str, address: str) -> Deferred[bool]:
        """
        Return ``Deferred[bool]``: whether *user* may use *address* as a
        sender (their own address, or an alias that resolves to them).
        """


class IDeliveryRouter(Interface):
    """
    Decides where each recipient's copy goes: a local mailbox or the queue.
    """

    def check_recipient(address: str, authenticated_user: str | None = None) -> Deferred[RecipientResult]:
        """
        Decide, at RCPT time, whether *address* is acceptable.

        Args:
            address: the forward-path as given (``local@domain``).
            authenticated_user: the SASL identity, or ``None``.

        Returns:
            ``Deferred[RecipientResult]``: ``ok`` to accept; otherwise
            ``reply`` holds the SMTP reply (a
            :class:`~txmail.smtp.codes.Reply`: ``550 5.1.1 ...``,
            ``554 5.7.1 ...``) and ``temporary`` its class.  Relaying to a
            non-local domain is allowed only for an authenticated user.
        """

    def deliver(envelope: Envelope, message: MessageSource) -> Deferred[DeliveryReport]:
        """
        Deliver a received message to every recipient of *envelope*.

        Args:
            envelope: a :class:`txmail.model.Envelope`.
            message: a :class:`txmail.model.MessageSource` of the message
                as received with the trace headers prepended.  When its
                ``fsynced`` is false, each destination (mailbox, queue) syncs
                the copy or link it keeps before reporting success.

        Returns:
            ``Deferred[DeliveryReport]``, fired once every successful
            recipient's copy is durable (in a mailbox or the queue).  A
            failure for one recipient does not stop the others.
        """


class IDeliveryHook(Interface):
    """
    Embedder code called for each message received over SMTP, before the
    router delivers it (see :mod:`txmail.delivery.hooks`).  A plain callable
    with the signature of :meth:`before_delivery` is accepted wherever a hook
    is.
    """

    def before_delivery(
        envelope: Envelope, message: MessageSource
    ) -> HookResult | Deferred[HookResult | None] | None:
        """
        Decide what becomes of one message.

        Args:
            envelope: the :class:`txmail.model.Envelope` (as rewritten by
                earlier hooks).
            message: the :class:`txmail.model.MessageSource`, trace
                headers included.  Read it (``data``, ``read()`` for a small
                message, ``open()`` to stream), never modify or remove what
                it reads from; the server removes that once delivery is over.

        Returns:
            a :class:`txmail.delivery.hooks.HookResult` (accept, reject,
            rewrite or consume), ``None`` (accept), or a ``Deferred`` of
            either.  An exception is a temporary failure (``451 4.3.0``).
        """


class IQueue(Interface):
    """
    The durable outbound spool for mail to non-local recipients.

    Each entry keeps a :class:`~txmail.model.RecipientState` per recipient
    (:attr:`txmail.model.QueueEntry.recipients`): ``pending`` when queued
    (``held`` when the envelope has a ``hold`` reason), then as the queue
    runner records its attempts with :meth:`update_recipients`,
    ``deferred`` (to be retried at ``next_attempt``), ``delivered`` or
    ``failed`` (:class:`~txmail.model.DeliveryState`).  Every method taking a
    queue id fails with :class:`~txmail.errors.QueueError` when no entry has
    that id.  The conformance suite :mod:`txmail.testing.queue` checks the
    contract.
    """

    def enqueue(envelope: Envelope, message: MessageSource, recipients: Sequence[str]) -> Deferred[str]:
        """
        Store *message* (a :class:`txmail.model.MessageSource`, read as
        :meth:`IMailbox.append` reads it: streamed, or its ``local_path``
        linked or copied) for *recipients* (the non-local subset of the
        envelope).  The queue keeps its own copy: the caller may remove the
        source's file once this fired.

        Returns:
            ``Deferred[str]``: the queue id, fired once the message and its
            envelope are durable.

        Raises:
            QueueError: *recipients* is empty.
        """

    def list_entries() -> Deferred[list[QueueEntry]]:
        """
        Return ``Deferred[list[QueueEntry]]``, oldest first.
        """

    def get_entry(queue_id: str) -> Deferred[QueueEntry]:
        """
        Return ``Deferred[QueueEntry]``.

        Raises:
            QueueError: no entry has that id.
        """

    def update_recipients(
        queue_id: str, changes: Mapping[str, RecipientState], *, durable: bool = True
    ) -> Deferred[None]:
        """
        Record what became of recipients: *changes* maps each recipient to
        its new :class:`~txmail.model.RecipientState` (the caller builds it
        from the one it read, e.g. with :func:`dataclasses.replace`);
        recipients not named keep theirs.  With *durable* true, fires once
        the entry, with every change made so far, is durable; with *durable*
        false the changes need only be seen by later calls until a durable
        update or a delete.

        Returns:
            ``Deferred[None]``.

        Raises:
            QueueError: no entry has that id, or a ``state`` is not a
                :class:`~txmail.model.DeliveryState`; then nothing is
                changed.
        """

    def open_entry_message(queue_id: str) -> Deferred[BinaryIO]:
        """
        Return ``Deferred`` firing with a readable binary file of the queued
        message, its bytes exactly as enqueued.  The caller closes it.

        Raises:
            QueueError: no entry has that id.
        """

    def delete_entry(queue_id: str) -> Deferred[None]:
        """
        Remove an entry and its message.  Returns ``Deferred[None]``.

        Raises:
            QueueError: no entry has that id.
        """

    def add_listener(listener: Callable[[str], object]) -> None:
        """
        Call ``listener(queue_id)`` in the reactor thread after each entry
        this queue object made (:meth:`enqueue`) or released
        (:meth:`release`) is durable, so that a queue runner tries new mail
        at once rather than at its next poll.  Entries made by other
        processes or nodes are found by polling (:meth:`claim`).
        """

    def claim(limit: int | None, lease_seconds: float) -> Deferred[list[QueueEntry]]:
        """
        Take entries to work on: up to *limit* (every one when ``None``)
        of the entries that nobody holds a claim on, oldest first, each
        claimed until *lease_seconds* from now, :meth:`release_claim` or
        :meth:`delete_entry`.  A claimed entry is given to no other
        :meth:`claim` (of this queue object, another one, or another node
        sharing the storage) until then; once its lease has run out (its
        runner died, or took too long) it is claimable again.  This is what
        keeps two queue runners from delivering one message twice.  The
        entries include those with nothing due; the runner decides what is
        due.

        Returns:
            ``Deferred[list[QueueEntry]]``.
        """

    def release_claim(queue_id: str) -> Deferred[None]:
        """
        Give up this queue object's claim on an entry (the runner is done
        with it for this pass).  A claim another claimer took since the
        lease ran out is left alone; an entry deleted meanwhile is no
        error.

        Returns:
            ``Deferred[None]``.
        """

    def renew_claims(queue_ids: Iterable[str], lease_seconds: float) -> Deferred[list[str]]:
        """
        Extend the claims this queue object holds on *queue_ids* to
        *lease_seconds* from now (a runner still working them keeps them,
        however long a delivery takes).  Entries deleted meanwhile, not
        claimed, or claimed by another claimer since the lease ran out are
        left alone.

        Returns:
            ``Deferred[list[str]]``: the ids whose claim was extended.
        """

    def open_source(queue_id: str) -> Deferred[MessageSource]:
        """
        The queued message as a :class:`txmail.model.MessageSource` (to hand
        back to the delivery router: a local copy retried), its bytes
        exactly as enqueued; its ``open()`` may block, as any source's.

        Returns:
            ``Deferred[MessageSource]``.

        Raises:
            QueueError: no entry has that id.
        """

    def flush() -> Deferred[int]:
        """
        Make every deferred recipient due now (``txmail queue flush``).

        Returns:
            ``Deferred[int]``: the number of recipients changed.
        """

    def release(queue_id: str | None = None) -> Deferred[int]:
        """
        Make the held recipients of *queue_id*, or of every entry when it
        is ``None``, ``pending`` (``txmail queue release``).

        Returns:
            ``Deferred[int]``: the number of recipients released.

        Raises:
            QueueError: no entry has that id.
        """


class ISpool(Interface):
    """
    Where the SMTP and LMTP servers write a message while its content
    arrives (DATA, BDAT), before it is handed to the delivery router as a
    :class:`txmail.model.MessageSource`.  The server knows nothing else of
    it: the local implementation
    (:class:`txmail.delivery.spool.LocalSpool`) writes files in a directory
    on the stores' file system, so that they can hard-link them.
    """

    def take() -> ISpooledMessage | Deferred[ISpooledMessage]:
        """
        Start a new message.

        Returns:
            an empty :class:`ISpooledMessage`, or a ``Deferred`` of one.

        Raises:
            OSError: none can be made (the server answers ``451 4.3.0``).
        """

    def close() -> None:
        """
        Release what was prepared ahead of need (the server's factory
        stops); :meth:`take` still works afterwards.
        """


class ISpooledMessage(Interface):
    """
    One message being written into an :class:`ISpool`.  Writes come from one
    thread at a time (the reactor's; a large message rewritten for the
    policies is written from a worker thread, while nothing else uses it).
    """

    size = Attribute("The octets written so far (``int``).")
    failed = Attribute("A write failed (``bool``): later writes are ignored and :meth:`finish` fails.")

    def write(data: bytes) -> None:
        """
        Append *data* (``bytes``).  Cheap (buffered), so it is called on the
        reactor thread for each piece received.

        Raises:
            OSError: the write failed; :attr:`failed` is then true.
        """

    def finish(fsync: bool = False) -> Deferred[MessageSource]:
        """
        No more writes: the message is complete.

        Args:
            fsync: make the octets durable before firing (the source's
                ``fsynced`` is then true).  Without it the destinations sync
                what they keep (a hard link shares the data).

        Returns:
            ``Deferred[MessageSource]`` of the content (with its ``data``
            when it was small enough to keep in memory), valid until
            :meth:`discard`.  Fails when writing or syncing failed.
        """

    def discard() -> None:
        """
        Remove the message, whether finished or not (the router has linked
        or copied what it keeps).  Calling it again does nothing.
        """
