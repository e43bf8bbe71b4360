"""
The Twisted adapter of the IMAP server: moves bytes and time between a
transport and a :class:`txmail.imap.session.IMAPSession`, and runs the
session's commands against the user's :class:`txmail.interfaces.IMailStore`.

Implementation notes
--------------------
* Commands run one at a time, in order: an ``Execute`` event pauses the
  session until its handler (a coroutine here) has written the untagged
  responses and called ``finish``.  Reading from the transport is paused
  meanwhile (:class:`txmail._protocol.SessionProtocol`).
* Everything a command needs from storage goes through the shared mailbox
  contract; IMAP keeps only sequence numbers, ``\\Recent`` and what the
  client was told (:class:`txmail.imap.view.SelectedView`).
* The selected mailbox's listener queues every change (SMTP delivery,
  another session, POP3) in the view; the session tells the client when
  RFC 3501 section 7 allows it, or at once during IDLE (RFC 2177).  New
  messages are claimed for ``\\Recent`` by the first session that hears of
  them (:meth:`txmail.interfaces.IMailbox.claim_recent`); a read-only
  (EXAMINE) session shows the unclaimed ones as ``\\Recent`` and claims none
  (RFC 3501 section 6.3.2).
* Long responses (FETCH, SEARCH over a big mailbox) are produced in
  batches of :data:`BATCH` messages, with a turn of the reactor between
  two batches so that other connections are served meanwhile; a batch is handed to the transport
  once it has written the one before (:class:`_WriteGate`, a push producer
  the transport pauses), so the next batch is produced while one drains and
  memory stays bounded however large the mailbox.  SELECT and
  ``FETCH (UID FLAGS RFC822.SIZE)`` read only the store's index;
  ENVELOPE and BODYSTRUCTURE come from the cached metadata; only body
  sections read message files.
* Timers: 30 minutes of silence once logged in (RFC 3501 section 5.4,
  including IDLE), :data:`PREAUTH_TIMEOUT` before.  Failed logins are slowed
  down by the shared :class:`txmail.auth.authenticator.Authenticator`.
* STARTTLS: bytes pipelined after the command are logged by size and
  discarded before the handshake (CVE-2011-0411).
* On the first login of a user whose store holds only INBOX, the RFC 6154
  special-use mailboxes (Sent, Drafts, Trash, Junk, Archive) are created
  and subscribed.
* Copy listeners (:mod:`txmail.imap.listeners`, ``copy_listeners=``) are
  told of each successful COPY/MOVE on the next turn of the reactor, after
  the tagged OK; the command never waits for them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail._protocol import SessionProtocol, is_loopback, make_id
from txmail.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NoSuchMessage,
    StoreError,
)
from txmail.imap import serialize
from txmail.imap.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    Event,
    Execute,
    IdleDone,
    IdleStarted,
    PasswordCheck,
    StartTLS,
)
from txmail.imap.fetch import fetch_chunks, fetch_needs
from txmail.imap.listeners import CopyListener, MessagesCopied
from txmail.imap.search import (
    SUPPORTED_CHARSETS,
    SearchContext,
    format_esearch,
    format_search,
    matches,
    search_needs,
)
from txmail.imap.session import IMAPLimits, IMAPSession
from txmail.imap.types import (
    Append,
    Command,
    Copy,
    Create,
    Delete,
    Examine,
    Expunge,
    Fetch,
    List,
    Lsub,
    Move,
    Rename,
    Search,
    Select,
    Status,
    Store,
    Subscribe,
    Unsubscribe,
)
from txmail.imap.view import SelectedView, SequenceError
from txmail.interfaces import IMailStoreProvider, IStorageUsage
from txmail.model import (
    INBOX,
    FlagMode,
    FolderInfo,
    MailboxChange,
    MessageInfo,
    MessagesAdded,
    SpecialUse,
    match_mailbox_pattern,
    normalize_flags,
)
from txmail.quota import QuotaExceeded, Quotas

__all__ = ["DEFAULT_IDLE_TIMEOUT", "SPECIAL_FOLDERS", "IMAPFactory", "IMAPServerProtocol"]

#: RFC 3501 section 5.4: an autologout timer of at least 30 minutes.
DEFAULT_IDLE_TIMEOUT = 1800.0
#: Seconds a client may stay silent before it logged in.
PREAUTH_TIMEOUT = 180.0
#: Messages handled per step of FETCH and SEARCH.
BATCH = 256
#: RFC 6154 mailboxes made for a new user.
SPECIAL_FOLDERS = (
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)
_STORE_MODES = {"": FlagMode.REPLACE, "+": FlagMode.ADD, "-": FlagMode.REMOVE}


class _CommandFailed(Exception):
    """End the command with a tagged NO/BAD (raised inside a handler)."""

    def __init__(self, status: str, text: str, code: str | None = None) -> None:
        super().__init__(status, text, code)
        self.status = status
        self.text = text
        self.code = code


@implementer(IPushProducer)
class _WriteGate:
    """
    Registered with the transport as a streaming producer: the transport
    pauses it when its write buffer is full and resumes it once drained.
    :meth:`wait` gives a Deferred that fires when writing may go on.
    """

    def __init__(self) -> None:
        self.paused = False
        self._waiters: list[defer.Deferred[None]] = []

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    def wait(self) -> defer.Deferred[None]:
        if not self.paused:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append(d)
        return d


#: How store errors answer a command (RFC 5530 response codes).
_STORE_ERRORS: tuple[tuple[type[StoreError], str, str], ...] = (
    (NoSuchMailbox, "No such mailbox", "NONEXISTENT"),
    (MailboxExists, "Mailbox already exists", "ALREADYEXISTS"),
    (MailboxNotEmpty, "Mailbox has children and is not selectable", "CANNOT"),
    (InvalidMailboxName, "Invalid mailbox name", "CANNOT"),
)


async def _store_op(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a store method; its errors become the tagged NO of :data:`_STORE_ERRORS`."""
    try:
        return await defer.maybeDeferred(fn, *args)
    except StoreError as e:
        for cls, text, code in _STORE_ERRORS:
            if isinstance(e, cls):
                raise _CommandFailed("NO", text, code) from None
        raise


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class IMAPServerProtocol(SessionProtocol):
    """One IMAP connection."""

    log = Logger()

    PROTOCOL_NAME = "IMAP"
    STARTTLS_COMMAND = "STARTTLS"
    INTERNAL_ERROR_REPLY = ("NO", "Internal server error; try again later", "SERVERBUG")
    PASSWORD_FAILED_REPLY = None  # the session's NO [AUTHENTICATIONFAILED]

    session: IMAPSession | None

    def __init__(self, factory: IMAPFactory) -> None:
        super().__init__(factory)
        self.factory: IMAPFactory = factory
        self.store: Any = None
        self.mailbox: Any = None  # the selected IMailbox
        self._remove_listener: Callable[[], None] | None = None
        self._gate = _WriteGate()
        self._early_changes: list[MailboxChange] | None = None

    def _open_session(self, host: str) -> IMAPSession:
        factory = self.factory
        session = IMAPSession(
            tls_available=self._tls_available(),
            tls_active=factory.implicit_tls,
            plaintext_auth=factory.plaintext_auth,
            loopback=is_loopback(host) if host else False,
            limits=factory.limits,
        )
        self.log.info("IMAP connection from {peer}", peer=self.peer, session_id=self.session_id)
        return session

    # -- Twisted API --

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._gate.stopProducing()
        self._deselect()
        self.log.info("IMAP connection from {peer} closed", peer=self.peer, session_id=self.session_id)

    # -- the event loop --

    def _timer_delay(self) -> float:
        session = self.session
        if session is not None and session.user is None:
            return min(PREAUTH_TIMEOUT, self.factory.idle_timeout)
        return self.factory.idle_timeout

    def _may_close(self) -> bool:
        return not self._waiting

    def _closing(self) -> None:
        self._deselect()

    def _handle(self, event: Event) -> None:
        if isinstance(event, Execute):
            self._execute(event.command)
        elif isinstance(event, PasswordCheck):
            self._check_password(event)
        elif isinstance(event, AuthStep):
            self._auth_step(event)
        elif isinstance(event, Authenticated):
            self._authenticated(event)
        elif isinstance(event, StartTLS):
            self._start_tls()
        elif isinstance(event, IdleStarted | IdleDone):
            pass
        elif isinstance(event, ConnectionClosing):
            self.log.debug(
                "IMAP session of {peer} ends: {reason}",
                peer=self.peer,
                reason=event.reason,
                session_id=self.session_id,
            )

    # -- authentication --

    def _authenticated(self, event: Authenticated) -> None:
        self.log.info(
            "IMAP login of {user} from {peer} ({mechanism})",
            user=event.user,
            peer=self.peer,
            mechanism=event.mechanism,
            session_id=self.session_id,
        )
        self.store = self.factory.stores.store_for(event.user)
        d = defer.ensureDeferred(ensure_special_folders(self.store))
        d.addErrback(
            lambda f: self.log.failure("creating special-use mailboxes failed", failure=f, user=event.user)
        )
        self._wait(d)

    # -- commands --

    def _execute(self, command: Command) -> None:
        session = self.session
        assert session is not None
        handler = getattr(self, "_do_" + command.name.lower())

        async def run() -> None:
            try:
                text = await handler(command)
            except _CommandFailed as e:
                if not self._lost:
                    session.finish(e.status, e.text, e.code)
                return
            if self._lost:
                return
            if isinstance(text, tuple):
                session.finish("OK", text[1], text[0])
            else:
                session.finish("OK", text or f"{command.name} completed")

        d = defer.ensureDeferred(run())

        def failed(f: Failure) -> None:
            self.log.failure(
                "IMAP {command} failed for {user}",
                failure=f,
                command=command.name,
                user=session.user,
                session_id=self.session_id,
            )
            if not self._lost and session.paused:
                session.finish(*self.INTERNAL_ERROR_REPLY)

        d.addErrback(failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    def _send(self, *data: bytes) -> None:
        """Queue untagged responses of the running command (written per batch by :meth:`_drain`)."""
        assert self.session is not None
        self.session.send(*data)

    @contextlib.contextmanager
    def _streaming(self) -> Any:
        """
        While a long response (FETCH, SEARCH) is produced, the write gate is
        the transport's producer (instead of the connection's reply gate), so
        that the transport can pause the response between batches.
        """
        self._release_producer()
        registered = False
        with contextlib.suppress(AttributeError, RuntimeError):
            self._transport.registerProducer(self._gate, True)
            registered = True
        try:
            yield
        finally:
            if registered and not self._lost:
                with contextlib.suppress(AttributeError, RuntimeError):
                    self._transport.unregisterProducer()
            self._gate.resumeProducing()
            self._claim_producer()

    async def _drain(self) -> None:
        """
        Write the batch just produced, once the transport has written the
        one before: the next batch is read and rendered while this one
        drains, and at most two batches are held at once.
        """
        await self._gate.wait()
        self._flush()

    async def _take_turns(self) -> None:
        """
        Let the reactor run once between two batches of a long FETCH or
        SEARCH: a store that answers at once (small files read inline) would
        otherwise keep every other connection waiting until the whole
        mailbox was done.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self.factory.clock.callLater(0, d.callback, None)
        await d

    def _view(self) -> SelectedView:
        assert self.session is not None and self.session.view is not None
        return self.session.view

    # -- selection --

    def _deselect(self) -> None:
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        self.mailbox = None
        if self.session is not None:
            self.session.unselect()

    def _changed(self, change: MailboxChange) -> None:
        """The selected mailbox's listener (must not raise or block)."""
        session = self.session
        if session is None or self._lost:
            return
        if session.view is None:
            if self._early_changes is not None:
                self._early_changes.append(change)
            return
        view = session.view
        view.queue(change)
        if isinstance(change, MessagesAdded) and view.read_only:
            # RFC 3501 section 6.3.2: shown as \Recent, left for a
            # read-write session to claim.
            view.claimed_recent(info.uid for info in change.messages)
        elif isinstance(change, MessagesAdded) and self.mailbox is not None:
            mailbox = self.mailbox
            d = defer.maybeDeferred(mailbox.claim_recent)

            def claimed(uids: list[int]) -> None:
                if session.view is view:
                    view.claimed_recent(uids)
                    self._told()

            d.addCallbacks(claimed, lambda f: self.log.failure("claim_recent failed", failure=f))
        self._told()

    def _told(self) -> None:
        session = self.session
        if session is not None and session.idling and not self._lost:
            session.mailbox_changed()
            self._flush()

    async def _open(self, name: str) -> Any:
        return await _store_op(self.store.get_mailbox, name)

    async def _do_select(self, command: Command) -> tuple[str, str]:
        args = command.args
        assert isinstance(args, Select | Examine)
        read_only = isinstance(args, Examine)
        self._deselect()
        if command.invalid_name:
            # RFC 3501 section 6.3.1: a name that is not modified UTF-7 names
            # no mailbox; NO, and no mailbox is selected any more.
            raise _CommandFailed("NO", "Mailbox name is not valid modified UTF-7", "NONEXISTENT")
        mailbox = await self._open(args.mailbox)
        self.mailbox = mailbox
        # Changes made while we list are kept and applied to the new view.
        self._early_changes = []
        self._remove_listener = mailbox.add_listener(self._changed)
        if read_only:
            # RFC 3501 section 6.3.2: EXAMINE must not take \Recent away.
            # The view shows the messages no session has claimed yet (the
            # newest ones: claims go in UID order) without claiming them.
            before = await defer.maybeDeferred(mailbox.status)
            infos = await defer.maybeDeferred(mailbox.list_messages)
            recent = _unclaimed(infos, before)
            status = await defer.maybeDeferred(mailbox.status)
        else:
            infos = await defer.maybeDeferred(mailbox.list_messages)
            recent = await defer.maybeDeferred(mailbox.claim_recent)
            status = await defer.maybeDeferred(mailbox.status)
        view = SelectedView(mailbox.name, mailbox.uidvalidity, infos, read_only=read_only, recent=recent)
        session = self.session
        assert session is not None
        session.select(view)
        early, self._early_changes = self._early_changes, None
        for change in early or ():
            view.queue(change)
            if read_only and isinstance(change, MessagesAdded):
                view.claimed_recent(info.uid for info in change.messages)
        first_unseen = next((i + 1 for i, info in enumerate(infos) if "\\Seen" not in info.flags), None)
        out = [
            # RFC 3501 sections 6.3.1 and 7.2.6: with the keywords in use.
            view.flag_responses(),
            b"* %d EXISTS\r\n" % view.exists,
            b"* %d RECENT\r\n" % len(view.recent),
        ]
        if first_unseen is not None:
            out.append(b"* OK [UNSEEN %d] First unseen\r\n" % first_unseen)
        out.append(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % mailbox.uidvalidity)
        out.append(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % status.uidnext)
        self._send(b"".join(out))
        # Changes queued while listing that the listing does not hold yet
        # are told by finish(), before the tagged OK.
        return ("READ-ONLY" if read_only else "READ-WRITE", f"{command.name} completed")

    _do_examine = _do_select

    async def _do_close(self, command: Command) -> str:
        view = self._view()
        if not view.read_only and not view.deleted and self.mailbox is not None:
            # RFC 3501 section 6.4.2: expunge silently, no EXPUNGE responses.
            await defer.maybeDeferred(self.mailbox.expunge)
        self._deselect()
        return "CLOSE completed"

    async def _do_unselect(self, command: Command) -> str:
        self._deselect()
        return "UNSELECT completed"

    # -- mailbox management --

    async def _do_create(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Create)
        await _store_op(self.store.create_mailbox, args.mailbox)
        return "CREATE completed"

    async def _do_delete(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Delete)
        if args.mailbox == INBOX:
            raise _CommandFailed("NO", "INBOX cannot be deleted", "CANNOT")
        await _store_op(self.store.delete_mailbox, args.mailbox)
        return "DELETE completed"

    async def _do_rename(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Rename)
        await _store_op(self.store.rename_mailbox, args.old, args.new)
        return "RENAME completed"

    async def _do_subscribe(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Subscribe)
        await _store_op(self.store.subscribe, args.mailbox)
        return "SUBSCRIBE completed"

    async def _do_unsubscribe(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Unsubscribe)
        await _store_op(self.store.unsubscribe, args.mailbox)
        return "UNSUBSCRIBE completed"

    async def _do_list(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, List)
        if args.patterns == ("",) and not args.selection_options and not args.return_options:
            # RFC 3501 section 6.3.8: the delimiter and the root.
            self._send(b'* LIST (\\Noselect) "/" ""\r\n')
            return "LIST completed"
        folders: list[FolderInfo] = await defer.maybeDeferred(self.store.list_mailboxes, "*")
        subscribed = set(await defer.maybeDeferred(self.store.subscriptions))
        sel = set(args.selection_options)
        ret = set(args.return_options)
        patterns = [_join(args.reference, p) for p in args.patterns if p != ""]
        by_name = {f.name: f for f in folders}
        show_subscribed = "SUBSCRIBED" in sel or "SUBSCRIBED" in ret
        # The selection criteria (RFC 5258 section 3.1); RECURSIVEMATCH and
        # REMOTE select nothing themselves.
        criteria = tuple(
            dict.fromkeys(o for o in args.selection_options if o in ("SUBSCRIBED", "SPECIAL-USE"))
        )

        def selected(name: str) -> bool:
            if "SUBSCRIBED" in sel and name not in subscribed:
                return False
            if "SPECIAL-USE" in sel:
                folder = by_name.get(name)
                return folder is not None and folder.special_use is not None
            return True

        def matched(name: str) -> bool:
            return any(match_mailbox_pattern(p, name) for p in patterns)

        names = sorted(subscribed, key=_mailbox_order) if "SUBSCRIBED" in sel else [f.name for f in folders]
        chosen = [name for name in names if selected(name)]
        # Returned mailboxes, in order, with whether each gets CHILDINFO.
        entries = {name: False for name in chosen if matched(name)}
        if "RECURSIVEMATCH" in sel:
            # RFC 5258 section 3.5: a parent that matches the pattern gets
            # CHILDINFO (and is returned for it) when a descendant meets
            # the criteria but is not itself returned.
            for name in chosen:
                if name in entries:
                    continue
                parts = name.split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if matched(parent):
                        entries[parent] = True
            entries = dict(sorted(entries.items(), key=lambda item: _mailbox_order(item[0])))
        for name, childinfo in entries.items():
            folder = by_name.get(name)
            self._send(
                self._list_line(
                    b"LIST",
                    name,
                    folder,
                    name in subscribed and show_subscribed,
                    childinfo=criteria if childinfo else (),
                )
            )
            if args.status_items is not None and folder is not None and folder.selectable:
                await self._status_line(name, args.status_items)
        return "LIST completed"

    def _list_line(
        self,
        verb: bytes,
        name: str,
        folder: FolderInfo | None,
        subscribed: bool,
        childinfo: tuple[str, ...] = (),
    ) -> bytes:
        attrs: list[str] = []
        if folder is None:
            attrs.append("\\NonExistent")
        else:
            if not folder.selectable:
                attrs.append("\\Noselect")
            attrs.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
            if folder.special_use is not None:
                attrs.append(folder.special_use.value)
        if subscribed:
            attrs.append("\\Subscribed")
        line = b"* " + verb + b" (" + " ".join(attrs).encode("ascii") + b') "/" ' + serialize.mailbox(name)
        if childinfo:
            line += b' ("CHILDINFO" ' + serialize.paren_list(childinfo) + b")"
        return line + b"\r\n"

    async def _do_lsub(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Lsub)
        pattern = _join(args.reference, args.pattern)
        folders: list[FolderInfo] = await defer.maybeDeferred(self.store.list_mailboxes, "*")
        by_name = {f.name: f for f in folders}
        subscribed = set(await defer.maybeDeferred(self.store.subscriptions))
        found: dict[str, bool] = {}  # name -> selectable
        for name in subscribed:
            if match_mailbox_pattern(pattern, name):
                folder = by_name.get(name)
                found[name] = folder is not None and folder.selectable
                continue
            # RFC 3501 section 6.3.9: with "%", the parent of a subscribed
            # mailbox is returned, flagged \Noselect when it is not
            # subscribed itself.
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if parent not in subscribed and match_mailbox_pattern(pattern, parent):
                    found[parent] = False
        for name in sorted(found, key=_mailbox_order):
            attrs = b"" if found[name] else b"\\Noselect"
            self._send(b"* LSUB (" + attrs + b') "/" ' + serialize.mailbox(name) + b"\r\n")
        return "LSUB completed"

    async def _status_line(self, name: str, items: tuple[str, ...]) -> None:
        mailbox = await self._open(name)
        status = await defer.maybeDeferred(mailbox.status)
        values = {
            "MESSAGES": status.messages,
            "RECENT": status.recent,
            "UIDNEXT": status.uidnext,
            "UIDVALIDITY": status.uidvalidity,
            "UNSEEN": status.unseen,
            "SIZE": status.size,
            "APPENDLIMIT": self.factory.limits.max_literal,
        }
        parts = b" ".join(b"%s %d" % (item.encode("ascii"), values[item]) for item in items if item in values)
        self._send(b"* STATUS " + serialize.mailbox(name) + b" (" + parts + b")\r\n")

    async def _do_status(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Status)
        await self._status_line(args.mailbox, args.items)
        return "STATUS completed"

    async def _do_append(self, command: Command) -> tuple[str, str]:
        args = command.args
        assert isinstance(args, Append)
        try:
            flags = normalize_flags(args.flags)
        except ValueError:
            raise _CommandFailed("BAD", "Invalid flag") from None
        try:
            mailbox = await defer.maybeDeferred(self.store.get_mailbox, args.mailbox)
        except (NoSuchMailbox, InvalidMailboxName):
            # RFC 3501 section 6.3.11: TRYCREATE when the mailbox could be created.
            raise _CommandFailed("NO", "No such mailbox", "TRYCREATE") from None
        when = args.date.timestamp() if args.date is not None else None
        await self._check_quota(len(args.literal))
        uid = await defer.maybeDeferred(mailbox.append, args.literal, flags, when)
        return (f"APPENDUID {mailbox.uidvalidity} {uid}", "APPEND completed")

    async def _check_quota(self, size: int) -> None:
        """``NO [OVERQUOTA]`` unless *size* more octets fit in the user's quota (RFC 9208 section 4.3)."""
        quotas = self.factory.quotas
        if quotas is None or self.session is None or not IStorageUsage.providedBy(self.store):
            return
        user = self.session.user or ""
        try:
            quotas.check(user, await self.store.usage(), size)
        except QuotaExceeded:
            raise _CommandFailed("NO", "Quota exceeded", "OVERQUOTA") from None

    # -- selected state --

    def _targets(self, seqset: Any, uid: bool) -> list[tuple[int, int]]:
        try:
            return self._view().resolve(seqset, uid=uid)
        except SequenceError as e:
            raise _CommandFailed("BAD", str(e)) from None

    def _writable(self) -> None:
        if self._view().read_only:
            raise _CommandFailed("NO", "Mailbox is read-only", "READ-ONLY")

    async def _do_expunge(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Expunge)
        self._writable()
        uids = None
        if args.uid_set is not None:
            uids = [u for _, u in self._targets(args.uid_set, True)]
        removed = await defer.maybeDeferred(self.mailbox.expunge, uids)
        self._send(b"".join(self._view().expunged(removed)))
        return "EXPUNGE completed"

    async def _do_fetch(self, command: Command) -> str:
        with self._streaming():
            return await self._fetch(command)

    async def _fetch(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Fetch)
        view = self._view()
        mailbox = self.mailbox
        targets = self._targets(args.sequence_set, args.uid)
        needs = fetch_needs(args.items)
        mark_seen = needs.sets_seen and not view.read_only
        shows_flags = any(item.name == "FLAGS" for item in args.items)
        for n, batch in enumerate(_chunks(targets, BATCH)):
            if n:
                await self._take_turns()
            uids = [u for _, u in batch]
            infos = {i.uid: i for i in await defer.maybeDeferred(mailbox.list_messages, uids)}
            seen_now: set[int] = set()
            if mark_seen:
                unseen = [u for u in uids if u in infos and "\\Seen" not in infos[u].flags]
                if unseen:
                    changed = await defer.maybeDeferred(mailbox.set_flags, unseen, {"\\Seen"}, FlagMode.ADD)
                    for info in changed:
                        infos[info.uid] = info
                        seen_now.add(info.uid)
            metadata = await defer.maybeDeferred(mailbox.get_metadata, uids) if needs.metadata else {}
            for seq, uid in batch:
                info = infos.get(uid)
                if info is None:
                    continue  # expunged by someone else; told later
                message = None
                if needs.message:
                    message = await _read_message(mailbox, info)
                    if message is None:
                        continue
                if shows_flags or uid in seen_now:
                    view.flags[uid] = info.flags
                self._send(
                    *fetch_chunks(
                        seq,
                        args.items,
                        info,
                        metadata=metadata.get(uid),
                        message=message,
                        include_uid=args.uid,
                        include_flags=uid in seen_now,
                        recent=uid in view.recent,
                    )
                )
            await self._drain()
        return "FETCH completed" if not args.uid else "UID FETCH completed"

    async def _do_store(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Store)
        self._writable()
        view = self._view()
        targets = self._targets(args.sequence_set, args.uid)
        try:
            flags = normalize_flags(args.flags)
        except ValueError:
            raise _CommandFailed("BAD", "Invalid flag") from None
        changed = await defer.maybeDeferred(
            self.mailbox.set_flags, [u for _, u in targets], flags, _STORE_MODES[args.mode]
        )
        for info in changed:
            if info.uid in view.flags:
                view.flags[info.uid] = info.flags
        if changed and args.mode != "-":
            # RFC 3501 section 7.2.6: a keyword new to the mailbox is told first.
            told = view.new_flags(flags)
            if told:
                self._send(told)
        if not args.silent:
            # RFC 3501 section 6.4.6: the new flags of each message.
            out = [view.fetch_flags(seq, uid, with_uid=args.uid) for seq, uid in targets if uid in view.flags]
            self._send(b"".join(out))
        return "STORE completed"

    async def _target_mailbox(self, name: str) -> Any:
        try:
            return await defer.maybeDeferred(self.store.get_mailbox, name)
        except (NoSuchMailbox, InvalidMailboxName):
            # RFC 3501 section 6.4.7: TRYCREATE.
            raise _CommandFailed("NO", "No such mailbox", "TRYCREATE") from None

    async def _do_copy(self, command: Command) -> tuple[str, str] | str:
        args = command.args
        assert isinstance(args, Copy)
        targets = self._targets(args.sequence_set, args.uid)
        target = await self._target_mailbox(args.mailbox)
        if self.factory.quotas is not None:
            infos = await defer.maybeDeferred(self.mailbox.list_messages, [u for _, u in targets])
            await self._check_quota(sum(info.size for info in infos))
        pairs = await defer.maybeDeferred(self.mailbox.copy, [u for _, u in targets], target)
        if not pairs:
            return "COPY completed"
        self._copied(target, pairs, moved=False)
        return (_copyuid(target.uidvalidity, pairs), "COPY completed")

    async def _do_move(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Move)
        self._writable()
        targets = self._targets(args.sequence_set, args.uid)
        target = await self._target_mailbox(args.mailbox)
        pairs = await defer.maybeDeferred(self.mailbox.move, [u for _, u in targets], target)
        if pairs:
            # RFC 6851 section 4.3: COPYUID in an untagged OK before the EXPUNGEs.
            self._send(b"* OK [" + _copyuid(target.uidvalidity, pairs).encode("ascii") + b"] Moved\r\n")
            self._send(b"".join(self._view().expunged(sorted(src for src, _ in pairs))))
            self._copied(target, pairs, moved=True)
        return "MOVE completed"

    # -- copy listeners (txmail.imap.listeners) --

    def _copied(self, target: Any, pairs: list[tuple[int, int]], *, moved: bool) -> None:
        """Tell the copy listeners, on the next turn of the reactor (after the tagged OK)."""
        if not self.factory.copy_listeners or self.session is None:
            return
        source = self.mailbox.name
        user = self.session.user or ""
        self.factory.clock.callLater(
            0, self._announce_copy, self.store, user, source, target, tuple(pairs), moved
        )

    def _announce_copy(
        self, store: Any, user: str, source: str, target: Any, pairs: tuple[tuple[int, int], ...], moved: bool
    ) -> None:
        async def announce() -> None:
            roles = await _special_uses(store, (source, target.name))
            event = MessagesCopied(
                user=user,
                source=source,
                target=target.name,
                source_special_use=roles.get(source),
                target_special_use=roles.get(target.name),
                moved=moved,
                uids=pairs,
                target_mailbox=target,
                session_id=self.session_id,
            )
            for listener in self.factory.copy_listeners:
                defer.maybeDeferred(listener.messages_copied, event).addErrback(
                    lambda f, listener=listener: self.log.failure(
                        "IMAP copy listener {listener} failed for {user}",
                        failure=f,
                        listener=type(listener).__name__,
                        user=user,
                        session_id=self.session_id,
                    )
                )

        defer.ensureDeferred(announce()).addErrback(
            lambda f: self.log.failure(
                "IMAP copy listeners not told for {user}", failure=f, user=user, session_id=self.session_id
            )
        )

    async def _do_search(self, command: Command) -> str:
        with self._streaming():
            return await self._search(command)

    async def _search(self, command: Command) -> str:
        args = command.args
        assert isinstance(args, Search)
        if args.charset is not None and args.charset.upper() not in SUPPORTED_CHARSETS:
            raise _CommandFailed(
                "NO", "Unsupported charset", "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")"
            )
        view = self._view()
        mailbox = self.mailbox
        needs = search_needs(args.key)
        ctx = SearchContext(max_seq=view.exists, max_uid=view.max_uid, recent_uids=frozenset(view.recent))
        found: list[int] = []
        pairs = list(enumerate(view.uids, 1))
        for n, batch in enumerate(_chunks(pairs, BATCH * 4)):
            if n:
                await self._take_turns()
            uids = [u for _, u in batch]
            infos = {i.uid: i for i in await defer.maybeDeferred(mailbox.list_messages, uids)}
            metadata = await defer.maybeDeferred(mailbox.get_metadata, uids) if needs.metadata else {}
            for seq, uid in batch:
                info = infos.get(uid)
                if info is None:
                    continue
                message = None
                if needs.message:
                    message = await _read_message(mailbox, info)
                    if message is None:
                        continue
                if matches(args.key, ctx, seq, info, metadata.get(uid), message):
                    found.append(uid if args.uid else seq)
        if args.return_options is not None:
            self._send(format_esearch(command.tag, args.uid, found, args.return_options))
        else:
            self._send(format_search(found))
        return "SEARCH completed"


async def _read_message(mailbox: Any, info: MessageInfo) -> bytes | None:
    """
    The whole message, or ``None`` when it is gone.  A store that has it at
    hand answers at once (the Maildir store reads small files inline); the
    result is then taken without a trip through the event loop.
    """
    try:
        reading = defer.maybeDeferred(mailbox.read_message, info.uid)
        return _result_now(reading) if reading.called else await reading  # type: ignore[no-any-return]
    except NoSuchMessage:
        return None


def _result_now(d: defer.Deferred[Any]) -> Any:
    """The result of a Deferred that has fired, raising its failure (no trip through the event loop)."""
    out: list[Any] = []
    d.addBoth(out.append)
    result = out[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result


def _unclaimed(infos: list[MessageInfo], status: Any) -> list[int]:
    """
    The UIDs of *infos* that no session has claimed as ``\Recent``, from a
    *status* taken before the listing: the ``status.recent`` newest below
    its UIDNEXT, and every message that arrived since.
    """
    older = [info.uid for info in infos if info.uid < status.uidnext]
    newer = [info.uid for info in infos if info.uid >= status.uidnext]
    return older[max(0, len(older) - status.recent) :] + newer if status.recent else newer


def _copyuid(uidvalidity: int, pairs: list[tuple[int, int]]) -> str:
    """RFC 4315 section 3: ``COPYUID uidvalidity source-set dest-set`` in matching order."""
    src = ",".join(str(s) for s, _ in pairs)
    dst = ",".join(str(d) for _, d in pairs)
    if len(pairs) > 1:
        # Both sets ascending and contiguous where they can be written as ranges.
        src_compact = serialize.number_set(s for s, _ in pairs).decode("ascii")
        dst_compact = serialize.number_set(d for _, d in pairs).decode("ascii")
        if src_compact.count(",") == dst_compact.count(",") and _same_shape(pairs):
            src, dst = src_compact, dst_compact
    return f"COPYUID {uidvalidity} {src} {dst}"


def _same_shape(pairs: list[tuple[int, int]]) -> bool:
    """Runs of consecutive source UIDs map onto runs of consecutive target UIDs."""
    return all((b[0] - a[0] == 1) == (b[1] - a[1] == 1) for a, b in itertools.pairwise(pairs))


def _join(reference: str, pattern: str) -> str:
    """RFC 3501 section 6.3.8: the reference name and the pattern, with one delimiter between."""
    if not reference:
        return pattern
    if pattern.startswith("/"):
        return pattern.lstrip("/")
    return reference.rstrip("/") + "/" + pattern


def _mailbox_order(name: str) -> tuple[bool, str]:
    return (name != INBOX, name)


async def _special_uses(store: Any, names: tuple[str, ...]) -> dict[str, SpecialUse]:
    """The RFC 6154 role of each mailbox of *names* that has one."""
    roles: dict[str, SpecialUse] = {}
    for name in set(names):
        if "*" in name or "%" in name:
            continue  # a LIST pattern would match others
        for folder in await defer.maybeDeferred(store.list_mailboxes, name):
            if folder.name == name and folder.special_use is not None:
                roles[name] = folder.special_use
    return roles


async def ensure_special_folders(store: Any) -> None:
    """
    Give a new user the RFC 6154 special-use mailboxes: when the store holds
    only INBOX, create and subscribe Sent, Drafts, Trash, Junk and Archive.
    """
    folders = await defer.maybeDeferred(store.list_mailboxes, "*")
    if any(f.name != INBOX for f in folders):
        return
    for name, role in SPECIAL_FOLDERS:
        with contextlib.suppress(MailboxExists):
            await defer.maybeDeferred(store.create_mailbox, name, role)
        await defer.maybeDeferred(store.subscribe, name)
    await defer.maybeDeferred(store.subscribe, INBOX)


class IMAPFactory(Factory):
    """
    Builds :class:`IMAPServerProtocol` connections.

    Args:
        authenticator: the shared :class:`txmail.auth.authenticator.Authenticator`.
        stores: an :class:`txmail.interfaces.IMailStoreProvider`.
        tls_context: a TLS context factory for STARTTLS / implicit TLS, or ``None``.
        implicit_tls: the listener runs TLS from the first byte (port 993).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``.
        idle_timeout: seconds of silence before autologout (RFC 3501 section 5.4).
        limits: the sessions' :class:`txmail.imap.session.IMAPLimits`.
        clock: an ``IReactorTime`` for timers (tests pass a ``Clock``).
        copy_listeners: objects told of every successful COPY and MOVE
            (:mod:`txmail.imap.listeners`; a spam filter learns from them).
        quotas: the storage limits (:class:`txmail.quota.Quotas`): APPEND
            and COPY that do not fit get ``NO [OVERQUOTA]`` (RFC 9208
            section 4.3); MOVE within the user's mailboxes changes nothing.
    """

    protocol = IMAPServerProtocol  # type: ignore[assignment]

    def __init__(
        self,
        *,
        authenticator: Any,
        stores: IMailStoreProvider,
        tls_context: Any = None,
        implicit_tls: bool = False,
        plaintext_auth: str = "loopback",
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        limits: IMAPLimits | None = None,
        clock: IReactorTime | None = None,
        copy_listeners: Sequence[CopyListener] = (),
        quotas: Quotas | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor  # type: ignore[assignment]
        self.copy_listeners = tuple(copy_listeners)
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        self.authenticator = authenticator
        self.stores = stores
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.plaintext_auth = plaintext_auth
        self.idle_timeout = idle_timeout
        self.limits = limits or IMAPLimits()
        self.clock = clock

    def make_id(self) -> str:
        return make_id(self.clock)

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self)
