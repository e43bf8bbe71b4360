"""
The Twisted adapter of the POP3 server: moves bytes and time between a
transport and a :class:`txmail.pop3.session.POP3Session`, and turns the
session's events into authenticator and mailbox calls.

Implementation notes
--------------------
* ``dataReceived`` feeds the session and drains its events.  An event that
  needs a Deferred (a password check, the maildrop, a message, the UPDATE
  state) leaves the session paused; the adapter stops reading from the
  transport meanwhile, so pipelined input is not buffered without bound.
* Exclusive access (RFC 1939 section 8): after a successful login the user's
  maildrop is locked in the factory's locks (one
  :class:`txmail.interfaces.IMaildropLocks` shared by every POP3 listener of
  a server, :func:`maildrop_locks_for`): the provider's own when it offers
  them (the PostgreSQL provider: a lock every node on the database
  respects), else an in-process :class:`MaildropLocks` (right for storage
  one process uses: Maildir, memory).  A second session gets
  ``-ERR [IN-USE]`` (RFC 2449 section 8.1.1).  The lock is released when the
  session ends, by QUIT or by losing the connection; a lock that arrives
  after the connection was lost is released at once.
* Taking the lock may wait (a database); a lock that cannot be taken (the
  database is unreachable) is logged and answered ``-ERR [SYS/TEMP]``
  (RFC 3206).  Then the store is opened (``store_for`` may fire later: the
  session waits); a store or maildrop that cannot be opened is logged and
  answered with ``-ERR [SYS/TEMP]``, the lock released.
* RETR and TOP stream the message from ``IMailbox.open_message`` with a
  pull producer (:class:`MessageProducer`) reading ``chunk_size`` octets at
  a time through :class:`txmail.pop3.session.MessageEncoder`, so a large
  message is never held whole in memory.  The reads are plain file reads on
  the reactor thread: a 64 KiB read from the page cache costs microseconds.
* A message of at most one chunk that the store has at hand
  (``IMailbox.read_message`` answering at once, as the Maildir and memory
  stores do for small messages) is answered whole, with the other replies
  of the turn.  After a RETR, once the turn's replies are written, the next
  message is read and encoded ahead (:meth:`POP3ServerProtocol._read_ahead`):
  clients retrieve in order, so the next RETR is answered without touching
  the store, and the work overlaps with the client taking in the previous
  message.  Only while the client goes in order: a RETR that does not
  follow the previous one reads nothing ahead.  At most one such message is held per session; it is dropped
  when the INBOX's listener reports it expunged, and not used by TOP.
* QUIT in TRANSACTION state: messages retrieved with RETR get ``\\Seen``,
  deleted ones get ``\\Deleted`` and are expunged by UID, only then.  A
  dropped connection changes nothing in the store.  IMAP sessions on the
  INBOX see the expunge through the mailbox's listeners.
* The idle timer (RFC 1939 section 3: at least 10 minutes) runs on the
  injected clock while waiting for the client, and is pushed back by every
  chunk written while a message streams; it is stopped while we wait for a
  Deferred of our own.  Expiry answers ``-ERR`` and closes without UPDATE.
* STLS: the bytes pipelined after the command are logged by size and
  discarded before the handshake (RFC 2595 section 4; CVE-2011-0411).
* Logs use structured fields (``peer``, ``session_id``, ``user``), never
  passwords or message content.  Failed logins are slowed down by the
  shared :class:`txmail.auth.authenticator.Authenticator`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.interfaces import IPullProducer, IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail._protocol import SessionProtocol, is_loopback, make_id
from txmail.auth import sasl
from txmail.errors import NoSuchMessage
from txmail.interfaces import IMailbox, IMaildropLock, IMaildropLocks, IMailStoreProvider
from txmail.model import FlagMode, MailboxChange, MailboxDeleted, MessagesExpunged
from txmail.pop3.events import (
    AuthStep,
    ConnectionClosing,
    Event,
    Login,
    Maildrop,
    PasswordCheck,
    Retrieve,
    StartTLS,
    Update,
)
from txmail.pop3.session import (
    AUTH_FAILED,
    IN_USE,
    NO_SUCH_MESSAGE,
    SYS_TEMP,
    MessageEncoder,
    POP3Session,
    Response,
)

if TYPE_CHECKING:
    from txmail.auth.authenticator import Authenticator

__all__ = ["MaildropLocks", "MessageProducer", "POP3Factory", "POP3ServerProtocol", "maildrop_locks_for"]

#: RFC 1939 section 3: "an inactivity autologout timer ... of at least 10 minutes".
DEFAULT_IDLE_TIMEOUT = 600.0
#: Octets read from the store per step of a RETR/TOP.
CHUNK_SIZE = 64 * 1024

_UPDATE_FAILED = Response(False, "Some deleted messages were not removed", "SYS/TEMP")


@implementer(IMaildropLocks)
class MaildropLocks:
    """
    Which users' maildrops a POP3 session of this process holds (RFC 1939
    section 8).  One instance is shared by every POP3 factory of a server
    whose store provider has no locks of its own (:func:`maildrop_locks_for`).
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def lock_maildrop(self, user: str) -> defer.Deferred[IMaildropLock | None]:
        """See :meth:`txmail.interfaces.IMaildropLocks.lock_maildrop` (answers at once)."""
        if not self.acquire(user):
            return defer.succeed(None)
        return defer.succeed(_HeldMaildrop(self, user))

    def acquire(self, user: str) -> bool:
        """Lock *user*'s maildrop; ``False`` when another session holds it."""
        if user in self._held:
            return False
        self._held.add(user)
        return True

    def release(self, user: str) -> None:
        """Unlock *user*'s maildrop (no error if it was not locked)."""
        self._held.discard(user)

    def held(self, user: str) -> bool:
        """Whether *user*'s maildrop is locked."""
        return user in self._held


@implementer(IMaildropLock)
class _HeldMaildrop:
    """A session's hold on a maildrop in :class:`MaildropLocks`."""

    def __init__(self, locks: MaildropLocks, user: str) -> None:
        self.locks = locks
        self.user = user
        self._released = False

    def release(self) -> defer.Deferred[None]:
        if not self._released:
            self._released = True
            self.locks.release(self.user)
        return defer.succeed(None)


def maildrop_locks_for(stores: IMailStoreProvider) -> IMaildropLocks:
    """
    The POP3 maildrop locks for a server on *stores*: the provider itself
    when it provides :class:`txmail.interfaces.IMaildropLocks` (its lock
    holds across processes), else a new in-process :class:`MaildropLocks`.
    """
    own = IMaildropLocks(stores, None)
    return own if own is not None else MaildropLocks()


@implementer(IPullProducer)
class MessageProducer:
    """
    Streams one message from a file to a consumer through a
    :class:`MessageEncoder`, one chunk per ``resumeProducing``.

    :attr:`deferred` fires with ``None`` once the terminator was written (the
    producer has unregistered itself), or with a failure when reading failed
    or the consumer stopped us.

    Args:
        file: the open message file (closed here when done).
        encoder: the RETR or TOP encoder.
        consumer: the transport.
        chunk_size: octets per read.
        on_progress: called after each chunk written (the idle timer).
    """

    def __init__(
        self,
        file: IO[bytes],
        encoder: MessageEncoder,
        consumer: Any,
        *,
        chunk_size: int = CHUNK_SIZE,
        on_progress: Any = None,
    ) -> None:
        self.file = file
        self.encoder = encoder
        self.consumer = consumer
        self.chunk_size = chunk_size
        self.on_progress = on_progress
        self.deferred: defer.Deferred[None] = defer.Deferred()
        self.finished = False

    def start(self) -> None:
        """Register with the consumer, which then pulls the chunks."""
        self.consumer.registerProducer(self, False)

    def resumeProducing(self) -> None:
        while not self.finished:
            at_end = False
            try:
                data = self.file.read(self.chunk_size)
                if data and len(data) < self.chunk_size:
                    # A short read of a regular file means the end is next:
                    # confirm it now so a small message goes out in one write.
                    more = self.file.read(self.chunk_size)
                    at_end = not more
                    data += more
            except OSError:
                self._finish(Failure())
                return
            out = self.encoder.feed(data) if data else b""
            if not data or at_end or self.encoder.done:
                self.consumer.write(out + self.encoder.finish())
                self.consumer.unregisterProducer()
                self._finish(None)
                return
            if out:
                self.consumer.write(out)
                if self.on_progress is not None:
                    self.on_progress()
                return

    def pauseProducing(self) -> None:  # pragma: no cover - pull producers are not paused
        pass

    def stopProducing(self) -> None:
        """The consumer is going away (or the session gave up): stop, close the file."""
        self._finish(Failure(defer.CancelledError("message streaming stopped")))

    def _finish(self, result: Failure | None) -> None:
        if self.finished:
            return
        self.finished = True
        with contextlib.suppress(OSError):
            self.file.close()
        if result is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(result)


class POP3ServerProtocol(SessionProtocol):
    """
    One POP3 server connection; see the module notes, and
    :class:`txmail._protocol.SessionProtocol` for the plumbing.
    """

    log = Logger()

    PROTOCOL_NAME = "POP3"
    PASSWORD_MECHANISM = "USER"
    STARTTLS_COMMAND = "STLS"
    INTERNAL_ERROR_REPLY = SYS_TEMP
    PASSWORD_FAILED_REPLY = AUTH_FAILED

    session: POP3Session | None

    def __init__(self, factory: POP3Factory) -> None:
        super().__init__(factory)
        self.factory: POP3Factory = factory
        self.user: str | None = None  # holds the maildrop lock when set
        self._lock: IMaildropLock | None = None  # the lock held
        self.mailbox: IMailbox | None = None  # the user's INBOX once logged in
        self.producer: MessageProducer | None = None
        #: The next message, read and encoded ahead of its RETR: (UID, response body).
        self._ahead: tuple[int, bytes] | None = None
        #: The message number to read ahead once this turn's replies are written.
        self._ahead_number: int | None = None
        #: The number of the last message retrieved with RETR (0: none yet).
        self._last_retr = 0
        self._remove_listener: Callable[[], None] | None = None

    def _open_session(self, host: str) -> POP3Session:
        factory = self.factory
        session = POP3Session(
            tls_available=self._tls_available(),
            tls_active=factory.implicit_tls,
            plaintext_auth=factory.plaintext_auth,
            loopback=is_loopback(host) if host else False,
        )
        self.log.info("POP3 connection from {peer}", peer=self.peer, session_id=self.session_id)
        return session

    # -- Twisted API --

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        if self.producer is not None:
            self.producer.stopProducing()
            self.producer = None
        self._release()
        self.log.info("POP3 connection from {peer} closed", peer=self.peer, session_id=self.session_id)

    # -- the event loop --

    def _may_close(self) -> bool:
        # Not while a Deferred of ours (the UPDATE state) will still answer.
        return not self._waiting

    def _closing(self) -> None:
        self._release()

    def _timer_stopped(self) -> bool:
        # A message being streamed keeps the idle timer running.
        return self._waiting and self.producer is None

    def _handle(self, event: Event) -> None:
        if isinstance(event, PasswordCheck):
            self._check_password(event)
        elif isinstance(event, AuthStep):
            self._auth_step(event)
        elif isinstance(event, Login):
            self._login(event)
        elif isinstance(event, Retrieve):
            self._retrieve(event)
        elif isinstance(event, StartTLS):
            self._start_tls()
        elif isinstance(event, Update):
            self._update(event)
        elif isinstance(event, ConnectionClosing):
            self.log.debug(
                "POP3 session of {peer} ends: {reason}",
                peer=self.peer,
                reason=event.reason,
                session_id=self.session_id,
            )

    # -- authentication --

    def _login(self, event: Login) -> None:
        session = self.session
        assert session is not None

        async def open_maildrop() -> tuple[IMailbox, Maildrop] | None:
            lock = await self.factory.locks.lock_maildrop(event.user)
            if lock is None:
                return None
            if self._lost:  # the client left while we waited for the lock
                self._release_lock(lock)
                return None
            self._lock = lock
            self.user = event.user
            store = await self._store_call("open", self.factory.stores.store_for, event.user)
            # get_mailbox of an open mailbox first picks up what other
            # programs changed (IMailStore.get_mailbox; cheap when nothing
            # did), so mail dropped into a Maildir meanwhile is listed.
            mailbox = await store.get_mailbox("INBOX")
            infos = await self._store_call("list", mailbox.list_messages)
            return mailbox, Maildrop(mailbox.uidvalidity, tuple((i.uid, i.size) for i in infos))

        def opened(result: tuple[IMailbox, Maildrop] | None) -> None:
            if result is None:
                self.log.info(
                    "POP3 maildrop of {user} is in use; refused {peer}",
                    user=event.user,
                    peer=self.peer,
                    session_id=self.session_id,
                )
                session.reject(IN_USE)
                return
            self.mailbox, maildrop = result
            self._remove_listener = result[0].add_listener(self._mailbox_changed)
            self.log.info(
                "POP3 login of {user} from {peer} ({mechanism}), {count} messages",
                user=event.user,
                peer=self.peer,
                mechanism=event.mechanism,
                count=len(maildrop.messages),
                session_id=self.session_id,
            )
            session.accept(maildrop)

        d = defer.ensureDeferred(open_maildrop())

        def release_on_failure(f: Failure) -> Failure:
            self._release()
            return f

        d.addErrback(release_on_failure)
        self._answer(d, opened, SYS_TEMP, "locking or opening the maildrop")

    def _release(self) -> None:
        self._ahead = None
        if self._remove_listener is not None:
            self._remove_listener()
            self._remove_listener = None
        lock, self._lock = self._lock, None
        self.user = None
        if lock is not None:
            self._release_lock(lock)

    def _release_lock(self, lock: IMaildropLock) -> None:
        """Give the maildrop lock up; a failure is logged (a shared lock's lease ends it)."""
        user: str = lock.user

        def failed(f: Failure) -> None:
            self.log.failure(
                "releasing the POP3 maildrop lock of {user} failed",
                failure=f,
                user=user,
                session_id=self.session_id,
            )

        lock.release().addErrback(failed)

    def _mailbox_changed(self, change: MailboxChange) -> None:
        """The INBOX changed elsewhere: a message read ahead and expunged meanwhile is dropped."""
        ahead = self._ahead
        if ahead is not None and (
            isinstance(change, MailboxDeleted)
            or (isinstance(change, MessagesExpunged) and ahead[0] in change.uids)
        ):
            self._ahead = None

    # -- RETR / TOP --

    def _retrieve(self, event: Retrieve) -> None:
        session = self.session
        assert session is not None and self.mailbox is not None
        chunk_size = self.factory.chunk_size
        if event.body_lines is None:
            if event.number == self._last_retr + 1:  # in order: the next RETR is likely next too
                self._ahead_number = event.number + 1
            self._last_retr = event.number
        if event.size <= chunk_size and self._answer_inline(event, chunk_size):
            return
        result: defer.Deferred[None] = defer.Deferred()
        opening = self._store_call("fetch", self.mailbox.open_message, event.uid)

        def opened(file: IO[bytes]) -> None:
            if self._lost:
                file.close()
                result.callback(None)
                return
            session.accept()
            self._flush()  # the +OK line goes first
            producer = MessageProducer(
                file,
                MessageEncoder(event.body_lines),
                self._transport,
                chunk_size=chunk_size,
                on_progress=self._reset_timer,
            )
            self.producer = producer
            self._reset_timer()

            def streamed(value: Any) -> Any:
                self.producer = None
                self._claim_producer()
                return value

            producer.deferred.addBoth(streamed)
            producer.deferred.chainDeferred(result)
            self._release_producer()  # the message streams with its own producer
            producer.start()

        def failed(f: Failure) -> None:
            if f.check(NoSuchMessage):
                response = NO_SUCH_MESSAGE
            else:
                self.log.failure(
                    "opening message {uid} of {user} failed",
                    failure=f,
                    uid=event.uid,
                    user=self.user,
                    session_id=self.session_id,
                )
                response = SYS_TEMP
            if not self._lost:
                session.reject(response)
            result.callback(None)

        opening.addCallbacks(opened, failed)
        opening.addErrback(lambda f: None if result.called else result.errback(f))

        def stream_failed(f: Failure) -> None:
            if not f.check(defer.CancelledError):
                self.log.failure(
                    "streaming message {uid} failed", failure=f, uid=event.uid, session_id=self.session_id
                )
            if not self._lost:
                # The response is broken mid-way: the client cannot recover.
                self._release_producer()
                self._transport.loseConnection()
                self._lost = True

        result.addErrback(stream_failed)
        self._wait(result)

    def _answer_inline(self, event: Retrieve, chunk_size: int) -> bool:
        """
        Answer RETR/TOP of a message of at most one chunk at once, when the
        store has it at hand (the Maildir store reads small files inline):
        ``+OK`` and the encoded message are queued in the session and go out
        with the other replies of this turn (pipelined RETRs in one write),
        no producer, no pause of the transport.  ``False`` leaves it to the streaming path (which
        also reports a missing message).  A RETR is answered from the
        read-ahead when it asks for the message read ahead (which
        :meth:`_retrieve` asks for when a RETR follows the previous one).
        """
        assert self.session is not None
        ahead, self._ahead = self._ahead, None
        if event.body_lines is None and ahead is not None and ahead[0] == event.uid:
            self.session.accept(ahead[1])
            return True
        body = self._encoded_at_hand(event.uid, event.body_lines, chunk_size)
        if body is None:
            return False
        self.session.accept(body)  # written with whatever else this turn answers
        return True

    def _encoded_at_hand(self, uid: int, body_lines: int | None, chunk_size: int) -> bytes | None:
        """
        Message *uid* encoded for RETR (or TOP *body_lines*), when the store
        has it at hand and it is at most *chunk_size* octets; else ``None``.
        """
        assert self.mailbox is not None
        reading = self._store_call("fetch", self.mailbox.read_message, uid)
        if not reading.called:
            # Not at hand: stream it instead (this read is abandoned).
            reading.addErrback(lambda f: None)
            reading.cancel()
            return None
        result: list[Any] = []
        reading.addBoth(result.append)
        data = result[0]
        if isinstance(data, Failure) or len(data) > chunk_size:
            return None
        encoder = MessageEncoder(body_lines)
        return encoder.feed(data) + encoder.finish()

    def _process(self) -> None:
        super()._process()
        number, self._ahead_number = self._ahead_number, None
        if number is not None:
            self._read_ahead(number)

    def _read_ahead(self, number: int) -> None:
        """
        Read and encode message *number* now, after this turn's replies went
        out: POP3 clients retrieve messages in order, so the next RETR is
        most likely for it, and its answer then needs no reading or encoding
        (done while the client takes in the previous message: on a
        multi-core machine the answer to a one-at-a-time RETR comes sooner).
        Only a message the store has at hand and of at most one chunk; one
        such message is held per session at most.
        """
        session = self.session
        if session is None or self._lost or self._waiting or self.mailbox is None:
            return
        info = session.message(number)
        chunk_size = self.factory.chunk_size
        if info is None or info[1] > chunk_size:
            return
        body = self._encoded_at_hand(info[0], None, chunk_size)
        if body is not None:
            self._ahead = (info[0], body)

    # -- UPDATE --

    def _update(self, event: Update) -> None:
        session = self.session
        assert session is not None
        mailbox = self.mailbox

        async def apply() -> None:
            if mailbox is None:
                return
            if event.seen:
                await mailbox.set_flags(event.seen, {"\\Seen"}, FlagMode.ADD)
            if event.deleted:
                await mailbox.set_flags(event.deleted, {"\\Deleted"}, FlagMode.ADD)
                await mailbox.expunge(event.deleted)

        def applied(_: Any) -> None:
            self.log.info(
                "POP3 session of {user} ended: {deleted} deleted, {seen} seen",
                user=self.user,
                deleted=len(event.deleted),
                seen=len(event.seen),
                session_id=self.session_id,
            )
            session.accept()

        self._answer(defer.ensureDeferred(apply()), applied, _UPDATE_FAILED, "the POP3 UPDATE state")

    # -- timeouts --

    def _timer_delay(self) -> float:
        return self.factory.idle_timeout

    def _session_timed_out(self) -> None:
        assert self.session is not None
        if self.producer is not None:
            # The client stopped reading a message: no reply can be framed now.
            producer, self.producer = self.producer, None
            self.session.connection_lost()
            self._transport.unregisterProducer()
            producer.stopProducing()
            self._release()
            self._release_producer()
            self._transport.loseConnection()
            return
        super()._session_timed_out()


class POP3Factory(Factory[POP3ServerProtocol]):
    """
    Builds :class:`POP3ServerProtocol` connections.

    Args:
        authenticator: the shared :class:`txmail.auth.authenticator.Authenticator`.
        stores: the :class:`txmail.interfaces.IMailStoreProvider`; each user's
            maildrop is their ``INBOX``.
        locks: the :class:`txmail.interfaces.IMaildropLocks` shared by all
            POP3 listeners of the server; by default
            :func:`maildrop_locks_for` *stores* (the provider's own locks,
            else a new :class:`MaildropLocks`).
        tls_context: a context factory for STLS, or ``None`` for no STLS.
        implicit_tls: the endpoint already runs TLS (port 995).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``.
        idle_timeout: seconds of client silence before closing (RFC 1939
            section 3: at least 600).
        clock: the ``IReactorTime`` for timeouts; the global reactor by default.
        chunk_size: octets read per step when streaming a message.
    """

    protocol = POP3ServerProtocol

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        stores: IMailStoreProvider,
        locks: IMaildropLocks | None = None,
        tls_context: Any = None,
        implicit_tls: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        clock: IReactorTime | None = None,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.authenticator = authenticator
        self.stores = stores
        self.locks: IMaildropLocks = locks if locks is not None else maildrop_locks_for(stores)
        self.tls_context = tls_context
        #: The open connections (a graceful shutdown closes them).
        self.connections: set[POP3ServerProtocol] = set()
        #: The server is stopping: new connections are closed at once.
        self.draining = False
        self.implicit_tls = implicit_tls
        self.plaintext_auth = plaintext_auth
        self.idle_timeout = idle_timeout
        self.clock: Any = clock
        self.chunk_size = chunk_size

    def make_id(self) -> str:
        """A new session id: time-ordered, then random."""
        return make_id(self.clock)

    def buildProtocol(self, addr: Any) -> POP3ServerProtocol:
        return POP3ServerProtocol(self)
