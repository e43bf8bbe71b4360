"""
The Twisted adapter of the IMAP server: moves bytes and time between a
transport and a :class:`txmail.imap.session.IMAPSession`, and runs the
handlers of the command layer (:mod:`txmail.imap.commands`) against the
user's :class:`txmail.interfaces.IMailStore`.  What a command means is
decided there; this module keeps bytes, batching, back-pressure and timers.

Implementation notes
--------------------
* Commands run one at a time, in order: an ``Execute`` event pauses the
  session until the command's ``run`` handler (from
  :data:`txmail.imap.commands.COMMANDS`, a coroutine run with
  ``Deferred.fromCoroutine``) has emitted its untagged responses and ended
  with ``Done`` or ``No``/``Bad``; then ``finish``.  Reading from the
  transport is paused meanwhile (:class:`txmail._protocol.SessionProtocol`).
* The protocol object is the handlers' ``ctx``
  (:class:`txmail.imap.commands.context.CommandContext`): ``emit`` renders
  typed responses with :func:`txmail.imap.serialize.render_all` into the
  session's output, ``drain``/``take_turn`` pace long responses,
  ``listen``/``selected``/``deselect`` tie the selected mailbox's listener
  to the view, ``copied`` tells the copy listeners.
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
* Long responses (FETCH, SEARCH over a big mailbox; ``streams=True`` in
  the table) are produced in batches of :data:`BATCH` messages, with a turn of the reactor between
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
* A login opens the user's store
  (:meth:`txmail.interfaces.IMailStoreProvider.store_for`)
  before its tagged OK, the session paused meanwhile; a store that cannot
  be opened fails the LOGIN or AUTHENTICATE with ``NO [UNAVAILABLE]``
  (RFC 5530) and the connection stays usable.
* On the first login of a user whose store holds only INBOX, the RFC 6154
  special-use mailboxes (Sent, Drafts, Trash, Junk, Archive) are created
  and subscribed.
* Updating searches (RFC 5267 section 4.3, :mod:`txmail.imap.contexts`):
  the selected mailbox's listener also hands each change to the session's
  contexts; an expunged result's ``REMOVEFROM`` is written at once (before
  the ``EXPUNGE``), and other changes are judged by a coroutine run here
  (awaiting the store's metadata or messages when the search needs them),
  then told with the view's updates, or at once during IDLE.
* Copy listeners (:mod:`txmail.imap.listeners`, ``copy_listeners=``) are
  told of each successful COPY/MOVE on the next turn of the reactor, after
  the tagged OK; the command never waits for them.
* COMPRESS=DEFLATE (RFC 4978, :mod:`txmail.imap.commands.compress`): the
  tagged OK goes out as it is, then each write batch is deflated (raw
  deflate, ``wbits=-15``) and ends with a ``Z_SYNC_FLUSH``, so the client
  can read every response at once.  Input is inflated in pieces of at
  most :data:`INFLATE_CHUNK` octets, and only while the session may read
  (not while a command runs or the client's replies back up): the rest
  stays compressed, so a decompression bomb costs CPU, not memory, and
  the framer's line and literal limits apply to the inflated octets.
  Input the client sent after COMPRESS before the OK is taken back from
  the session and inflated too.  Compression sits inside TLS (the
  transport encrypts what we deflate); a stream error closes the
  connection.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail._protocol import SessionProtocol, is_loopback, make_id
from txmail.auth import sasl
from txmail.imap import serialize
from txmail.imap.commands import COMMANDS, objectid
from txmail.imap.commands.context import SPECIAL_FOLDERS, ensure_special_folders
from txmail.imap.commands.imap4rev2 import utf8_names
from txmail.imap.commands.mailboxes import special_uses
from txmail.imap.commands.metadata import withheld_capabilities
from txmail.imap.commands.notify import NotifyState, command_names, new_message_fetches
from txmail.imap.commands.notify_metadata import own_names
from txmail.imap.commands.selected import BATCH
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
from txmail.imap.listeners import CopyListener, MessagesCopied
from txmail.imap.responses import CommandFailed, Response
from txmail.imap.session import IMAPLimits, IMAPSession
from txmail.imap.types import Command
from txmail.imap.view import SelectedView
from txmail.interfaces import IMailbox, IMailStore, IMailStoreProvider, IMetadataStore, IStoreChanges
from txmail.model import AnnotationsChanged, FolderChange, MailboxChange, MessagesAdded
from txmail.quota import Quotas

if TYPE_CHECKING:
    from txmail.auth.authenticator import Authenticator

__all__ = [
    "BATCH",
    "DEFAULT_IDLE_TIMEOUT",
    "INFLATE_CHUNK",
    "SPECIAL_FOLDERS",
    "IMAPFactory",
    "IMAPServerProtocol",
]

#: RFC 3501 section 5.4: an autologout timer of at least 30 minutes.
DEFAULT_IDLE_TIMEOUT = 1800.0
#: Seconds a client may stay silent before it logged in.
PREAUTH_TIMEOUT = 180.0
#: LOGIN/AUTHENTICATE when the user's store cannot be opened (RFC 5530 section 3).
STORE_UNAVAILABLE_REPLY = ("NO", "Mail store unavailable; try again later", "UNAVAILABLE")
#: COMPRESS (RFC 4978): octets of inflated input handed to the session at a time.
INFLATE_CHUNK = 64 * 1024


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
        self.store: IMailStore | None = None  # the user's, once logged in
        self.mailbox: IMailbox | None = None  # the selected one
        self._remove_listener: Callable[[], None] | None = None
        self._gate = _WriteGate()
        self._early_changes: list[MailboxChange] | None = None
        # NOTIFY (RFC 5465): the session's wishes, the store listener, a delivery running.
        self._notify: NotifyState | None = None
        self._remove_store_listener: Callable[[], None] | None = None
        self._remove_annotation_listener: Callable[[], None] | None = None
        self._delivering = False
        self._refreshing = False  # the updating searches are judging changes
        # COMPRESS=DEFLATE (RFC 4978): the streams, once active.
        self._compress_requested = False
        self._deflater: Any = None
        self._inflater: Any = None
        self._compressed_in = b""
        self._inflate_more = False
        self._inflating = False

    def _open_session(self, host: str) -> IMAPSession:
        factory = self.factory
        session = IMAPSession(
            tls_available=self._tls_available(),
            tls_active=factory.implicit_tls,
            plaintext_auth=factory.plaintext_auth,
            loopback=is_loopback(host) if host else False,
            limits=factory.limits,
            withheld=factory.withheld,
        )
        self.log.info("IMAP connection from {peer}", peer=self.peer, session_id=self.session_id)
        return session

    # -- Twisted API --

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self._gate.stopProducing()
        self._deselect()
        self.watch(None)
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
        self.watch(None)

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
        elif isinstance(event, IdleStarted):
            self._fetch_new_messages()
            self._deliver_notifications()
        elif isinstance(event, IdleDone):
            pass
        elif isinstance(event, ConnectionClosing):
            self.log.debug(
                "IMAP session of {peer} ends: {reason}",
                peer=self.peer,
                reason=event.reason,
                session_id=self.session_id,
            )

    # -- authentication --

    def _logging_in(self, user: str, accept: Callable[[], None]) -> None:
        """
        Open *user*'s store before the LOGIN or AUTHENTICATE succeeds: a
        store that cannot be opened is logged and fails the command with
        ``NO [UNAVAILABLE]`` (RFC 5530); the session waits meanwhile, so
        commands pipelined after the login run once the store is there.
        """
        d = self._store_call("open", self.factory.stores.store_for, user)

        def opened(store: IMailStore) -> None:
            self.store = store
            accept()

        self._answer(d, opened, STORE_UNAVAILABLE_REPLY, "opening the mail store of " + user)

    def _authenticated(self, event: Authenticated) -> None:
        self.log.info(
            "IMAP login of {user} from {peer} ({mechanism})",
            user=event.user,
            peer=self.peer,
            mechanism=event.mechanism,
            session_id=self.session_id,
        )
        # self.store was opened by _logging_in, before the tagged OK.
        # Capabilities the store does not back (METADATA); later sessions
        # of this factory start with them withheld (the provider's stores
        # are alike), so their LOGIN response code is right too.
        self.factory.withheld = objectid.withheld(self.factory.stores) | withheld_capabilities(self.store)
        if self.session is not None:
            self.session.withheld = self.factory.withheld
        assert self.store is not None  # opened by _logging_in
        d = defer.Deferred.fromCoroutine(ensure_special_folders(self.store))
        d.addErrback(
            lambda f: self.log.failure("creating special-use mailboxes failed", failure=f, user=event.user)
        )
        self._wait(d)

    # -- commands --

    def _execute(self, command: Command) -> None:
        session = self.session
        assert session is not None
        spec = COMMANDS[command.name]
        handler = spec.run
        assert handler is not None

        async def run() -> None:
            try:
                if spec.streams:
                    with self._streaming():
                        done = await handler(self, command)
                else:
                    done = await handler(self, command)
            except CommandFailed as e:
                if not self._lost:
                    await self._notifications_before_tagged()
                    session.finish(e.status, e.text, e.code)
                return
            if not self._lost:
                await self._notifications_before_tagged()
                session.finish("OK", done.text or f"{command.name} completed", done.code)
                self._fetch_new_messages()
                if self._compress_requested and self._deflater is None:
                    self._begin_compression()

        d = defer.Deferred.fromCoroutine(run())

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

    async def drain(self) -> None:
        """
        Write the batch just produced, once the transport has written the
        one before: the next batch is read and rendered while this one
        drains, and at most two batches are held at once.
        """
        await self._gate.wait()
        self._flush()

    async def take_turn(self) -> None:
        """
        Let the reactor run once between two batches of a long FETCH or
        SEARCH: a store that answers at once (small files read inline) would
        otherwise keep every other connection waiting until the whole
        mailbox was done.
        """
        d: defer.Deferred[None] = defer.Deferred()
        self.factory.clock.callLater(0, d.callback, None)
        await d

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
        elif isinstance(change, MessagesAdded) and self.mailbox is not None and view.shows_recent:
            mailbox = self.mailbox
            d = mailbox.claim_recent()

            def claimed(uids: list[int]) -> None:
                if session.view is view:
                    view.claimed_recent(uids)
                    self._told()

            d.addCallbacks(claimed, lambda f: self.log.failure("claim_recent failed", failure=f))
        if session.contexts:
            self._context_change(change)
        self._told()

    def _context_change(self, change: MailboxChange) -> None:
        """
        The updating searches (RFC 5267 section 4.3) hear *change* (queued,
        not applied by the view yet): expunged results leave at once
        (``REMOVEFROM`` while their numbers are still the client's); other
        changes are judged against the stored search programs, then told
        with the view's updates.
        """
        session = self.session
        assert session is not None and session.view is not None
        self.emit(*session.contexts.heard(change, session.view))
        mailbox = self.mailbox
        if session.contexts.pending and not self._refreshing and mailbox is not None:
            self._refreshing = True
            d = defer.Deferred.fromCoroutine(session.contexts.refresh(mailbox, session.view))
            d.addErrback(lambda f: self.log.failure("updating searches failed", failure=f))

            def done(_: object) -> None:
                self._refreshing = False
                if session.contexts.pending and session.view is not None and not self._lost:
                    self._context_change(MailboxChange())
                self._told()

            d.addBoth(done)

    def _told(self) -> None:
        session = self.session
        if session is None or self._lost:
            return
        if session.idling or (session.notify_selected is not None and session.between_commands):
            session.mailbox_changed()
            self._flush()
            self._fetch_new_messages()

    # -- what the command layer sees (txmail.imap.commands.context.CommandContext) --

    @property
    def quotas(self) -> Quotas | None:
        return self.factory.quotas

    async def user_store(self, user: str) -> IMailStore | None:
        """
        The store of *user* when that is a user's canonical name, else
        ``None``: another user's mail, for a URLAUTH-authorized URL (RFC 4467).
        """
        canonical = await self.factory.authenticator.directory.canonical_user(user)
        return (await self.factory.stores.store_for(user)) if canonical == user else None

    @property
    def server_names(self) -> frozenset[str]:
        """The host names an IMAP URL may give for this server: the factory's, and the address connected to."""
        host = getattr(self.transport.getHost(), "host", "") if self.transport is not None else ""
        local = {host, f"[{host}]"} if host else set()
        return self.factory.hostnames | {name.lower() for name in local}

    def emit(self, *responses: Response) -> None:
        """Queue untagged responses of the running command (written per batch by :meth:`drain`)."""
        session = self.session
        assert session is not None
        session.send(*serialize.render_all(responses, utf8_names=utf8_names(session.enabled)))

    def listen(self, mailbox: IMailbox) -> None:
        self.mailbox = mailbox
        # Changes made while the handler lists are kept and applied to the new view.
        self._early_changes = []
        self._remove_listener = mailbox.add_listener(self._changed)

    def selected(self, view: SelectedView) -> None:
        session = self.session
        assert session is not None
        session.select(view)
        early, self._early_changes = self._early_changes, None
        for change in early or ():
            view.queue(change)
            if view.read_only and isinstance(change, MessagesAdded):
                view.claimed_recent(info.uid for info in change.messages)

    def deselect(self) -> None:
        self._deselect()

    # -- NOTIFY (RFC 5465, txmail.imap.commands.notify) --

    def watch(self, state: NotifyState | None) -> None:
        """See :meth:`txmail.imap.commands.context.CommandContext.watch`."""
        self._notify = state
        session = self.session
        if session is not None:
            session.notify_selected = None if state is None else state.selected
            later = state is not None and state.fetch_from_store
            fetch = () if state is None or later else state.selected_fetch
            session.notify_fetch = frozenset(a.name for a in fetch)
            session.notify_fetch_later = later
            session.notify_flag_uid = state is not None and state.selected_flags
        # NOTIFY offers other mailboxes' events only for an IStoreChanges store (notify.supported_events).
        changes = IStoreChanges(self.store, None)
        wanted = state is not None and state.watches_other_mailboxes and changes is not None
        if changes is not None and wanted and self._remove_store_listener is None:
            self._remove_store_listener = changes.add_store_listener(self._store_changed)
        elif not wanted and self._remove_store_listener is not None:
            self._remove_store_listener()
            self._remove_store_listener = None
        # RFC 5465 sections 5.6 and 5.7: the store's annotation changes.
        annotations = IMetadataStore(self.store, None)
        metadata = state is not None and state.watches_metadata and annotations is not None
        if annotations is not None and metadata and self._remove_annotation_listener is None:
            self._remove_annotation_listener = annotations.add_annotation_listener(self._annotations_changed)
        elif not metadata and self._remove_annotation_listener is not None:
            self._remove_annotation_listener()
            self._remove_annotation_listener = None

    def _store_changed(self, change: FolderChange) -> None:
        """The store listener (must not raise or block): queue, and tell at once if the client may be told."""
        state, session = self._notify, self.session
        if state is None or session is None or self._lost:
            return
        selected = self.mailbox.name if self.mailbox is not None else None
        if state.heard(change, selected=selected, own=command_names(session.pending_command)):
            self._deliver_notifications()

    def _annotations_changed(self, change: AnnotationsChanged) -> None:
        """The annotation listener (must not raise or block): as :meth:`_store_changed`."""
        state, session = self._notify, self.session
        if state is None or session is None or self._lost:
            return
        if state.heard(change, own=own_names(session.pending_command)):
            self._deliver_notifications()

    def _deliver_notifications(self) -> None:
        """While idling or between commands (RFC 5465 section 1), write what waits now."""
        session, state = self.session, self._notify
        if session is None or state is None or self._lost or self._delivering:
            return
        if not state.pending or not (session.idling or session.between_commands):
            return
        if self._reply_gate.paused:
            # The client does not read: keep it queued (coalesced, bounded) until it does.
            return

        async def deliver() -> None:
            self._delivering = True
            try:
                responses = await state.responses(session)
            finally:
                self._delivering = False
            if self._lost or self.session is not session:
                return
            session.unsolicited(*serialize.render_all(responses, utf8_names=utf8_names(session.enabled)))
            self._flush()
            self._after_notifications(state)
            if state.pending:
                self._deliver_notifications()

        defer.ensureDeferred(deliver()).addErrback(
            lambda f: self.log.failure("NOTIFY delivery failed", failure=f, session_id=self.session_id)
        )

    async def _notifications_before_tagged(self) -> None:
        """What waits goes out before a command's tagged response (MessageNew's FETCH after its EXISTS)."""
        state, session = self._notify, self.session
        if state is None or session is None:
            return
        if session.notify_fetch_later:
            session.push_updates()
            while (
                (uids := session.take_new_messages())
                and session.view is not None
                and self.mailbox is not None
            ):
                view, mailbox = session.view, self.mailbox
                self.emit(*await new_message_fetches(view, mailbox, uids, state.selected_fetch))
                if self._lost or session.view is not view:
                    return
                session.push_updates()
        if not state.pending:
            return
        responses = await state.responses(session)
        if not self._lost:
            self.emit(*responses)
            self._after_notifications(state)

    def _output_drained(self) -> None:
        super()._output_drained()
        self._deliver_notifications()

    def _fetch_new_messages(self) -> None:
        """
        NOTIFY's MessageNew fetch attributes that need the store: read them
        for the messages the last EXISTS told of and write the FETCHes
        before anything else (the session waits meanwhile).
        """
        session, state = self.session, self._notify
        if session is None or state is None or not session.notify_fetch_later or self._lost:
            return
        uids = session.take_new_messages()
        view, mailbox = session.view, self.mailbox
        if not uids or view is None or mailbox is None:
            return

        async def fetch() -> None:
            responses = await new_message_fetches(view, mailbox, uids, state.selected_fetch)
            if not self._lost and session.view is view:
                session.unsolicited(*serialize.render_all(responses, utf8_names=utf8_names(session.enabled)))
                self._flush()

        d = defer.ensureDeferred(fetch())
        d.addErrback(
            lambda f: self.log.failure(
                "NOTIFY MessageNew fetch failed", failure=f, session_id=self.session_id
            )
        )
        self._wait(d)

    def _after_notifications(self, state: NotifyState) -> None:
        """After ``OK [NOTIFICATIONOVERFLOW]``: as after NOTIFY NONE (RFC 5465 section 5.8)."""
        if state.overflowed and self._notify is state:
            self.watch(None)

    # -- COMPRESS=DEFLATE (RFC 4978) --

    def start_compression(self) -> bool:
        """
        COMPRESS DEFLATE was accepted: compress once its tagged OK is out.
        ``False`` when compression is already active (``NO [COMPRESSIONACTIVE]``).
        """
        if self._compress_requested:
            return False
        self._compress_requested = True
        return True

    def _begin_compression(self) -> None:
        session = self.session
        assert session is not None
        # What the client sent after COMPRESS is compressed: inflate it first.
        self._compressed_in = session.take_buffered_input()
        self._flush()  # the tagged OK, uncompressed
        self._deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._inflater = zlib.decompressobj(-15)
        self.log.info("IMAP COMPRESS=DEFLATE for {peer}", peer=self.peer, session_id=self.session_id)

    def dataReceived(self, data: bytes) -> None:
        if self._inflater is None:
            super().dataReceived(data)
            return
        self._compressed_in += data
        self._inflate_input()

    def _inflate_input(self) -> None:
        """Inflate pending input in bounded pieces, while the session may read."""
        if self._inflating or self._inflater is None:
            return
        self._inflating = True
        try:
            while (self._compressed_in or self._inflate_more) and not self._lost and self._may_read():
                try:
                    out = self._inflater.decompress(self._compressed_in, INFLATE_CHUNK)
                except zlib.error:
                    self.log.warn(
                        "invalid deflate stream from {peer}", peer=self.peer, session_id=self.session_id
                    )
                    self._compressed_in = b""
                    self._inflate_more = False
                    self._transport.loseConnection()
                    return
                self._compressed_in = self._inflater.unconsumed_tail
                self._inflate_more = len(out) >= INFLATE_CHUNK
                if out:
                    super().dataReceived(out)
        finally:
            self._inflating = False

    def _process(self) -> None:
        super()._process()
        if self._compressed_in or self._inflate_more:
            self._inflate_input()

    def _write_out(self, data: bytes) -> None:
        if self._deflater is not None:
            data = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        super()._write_out(data)

    # -- copy listeners (txmail.imap.listeners) --

    def copied(self, target: IMailbox, pairs: list[tuple[int, int]], *, moved: bool) -> None:
        """Tell the copy listeners, on the next turn of the reactor (after the tagged OK)."""
        if (
            not self.factory.copy_listeners
            or self.session is None
            or self.mailbox is None
            or self.store is None
        ):
            return
        source: str = self.mailbox.name
        user = self.session.user or ""
        self.factory.clock.callLater(
            0, self._announce_copy, self.store, user, source, target, tuple(pairs), moved
        )

    def _announce_copy(
        self,
        store: IMailStore,
        user: str,
        source: str,
        target: IMailbox,
        pairs: tuple[tuple[int, int], ...],
        moved: bool,
    ) -> None:
        async def announce() -> None:
            roles = await special_uses(store, (source, target.name))
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

            def failed(f: Failure, listener: CopyListener) -> None:
                self.log.failure(
                    "IMAP copy listener {listener} failed for {user}",
                    failure=f,
                    listener=type(listener).__name__,
                    user=user,
                    session_id=self.session_id,
                )

            for listener in self.factory.copy_listeners:
                # Embedder code: it may return anything, or raise (logged either way).
                defer.maybeDeferred(listener.messages_copied, event).addErrback(failed, listener)

        defer.ensureDeferred(announce()).addErrback(
            lambda f: self.log.failure(
                "IMAP copy listeners not told for {user}", failure=f, user=user, session_id=self.session_id
            )
        )


class IMAPFactory(Factory[IMAPServerProtocol]):
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
        hostname: the server's name: an IMAP URL (CATENATE, RFC 4469) may
            name it, or the address the client connected to.
    """

    protocol = IMAPServerProtocol

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        stores: IMailStoreProvider,
        tls_context: Any = None,
        implicit_tls: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "loopback",
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        limits: IMAPLimits | None = None,
        clock: IReactorTime | None = None,
        copy_listeners: Sequence[CopyListener] = (),
        quotas: Quotas | None = None,
        hostname: str | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.copy_listeners = tuple(copy_listeners)
        self.quotas = quotas if quotas is not None and quotas.enabled else None
        self.hostnames = frozenset({hostname.lower()} if hostname else ())
        self.authenticator = authenticator
        self.stores = stores
        self.tls_context = tls_context
        #: The open connections (a graceful shutdown closes them).
        self.connections: set[IMAPServerProtocol] = set()
        #: The server is stopping: new connections are closed at once.
        self.draining = False
        self.implicit_tls = implicit_tls
        self.plaintext_auth = plaintext_auth
        self.idle_timeout = idle_timeout
        self.limits = limits or IMAPLimits()
        self.clock = clock
        #: Capabilities withheld from sessions (see ``IMAPSession.withheld``),
        #: from the provider (OBJECTID), and from the stores at login (METADATA).
        self.withheld: frozenset[str] = objectid.withheld(stores)

    def make_id(self) -> str:
        return make_id(self.clock)

    def buildProtocol(self, addr: Any) -> IMAPServerProtocol:
        return IMAPServerProtocol(self)
