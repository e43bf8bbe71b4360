"""
Tests for the POP3 maildrop lock taken through
:class:`txmail.interfaces.IMaildropLocks` (RFC 1939 section 8): the
provider's own locks when it offers them (:func:`maildrop_locks_for`), a
lock that takes time, a lock refused (``-ERR [IN-USE]``), a lock that
cannot be taken (``-ERR [SYS/TEMP]``, RFC 3206), a lock released at QUIT
and at a lost connection, and one that arrives after the client left.
StringTransport, a task.Clock and the memory store, as in
tests/pop3/test_server.py.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.pop3 import test_server
from tests.pop3.test_server import MESSAGES, PASSWORD, USER
from txmail.errors import DatabaseError
from txmail.interfaces import IMaildropLock, IMaildropLocks
from txmail.pop3.server import MaildropLocks, POP3Factory, maildrop_locks_for
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

LOGIN = f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()
SIZES = sum(len(m) for m in MESSAGES)
LOGGED_IN = f"+OK Send your password\r\n+OK Logged in, 2 messages ({SIZES} octets)\r\n".encode()


@implementer(IMaildropLock)
class RecordedLock:
    def __init__(self, owner: HeldLocks, user: str) -> None:
        self.owner = owner
        self.user = user

    def release(self) -> defer.Deferred[None]:
        self.owner.released.append(self.user)
        if self.owner.release_error is not None:
            return defer.fail(self.owner.release_error)
        return defer.succeed(None)


@implementer(IMaildropLocks)
class HeldLocks:
    """Locks answered by the test: each request waits in :attr:`waiting`."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, defer.Deferred[Any]]] = []
        self.released: list[str] = []
        self.release_error: Exception | None = None

    def lock_maildrop(self, user: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((user, d))
        return d

    def grant(self) -> None:
        waiting, self.waiting = self.waiting, []
        for user, d in waiting:
            d.callback(RecordedLock(self, user))

    def refuse(self) -> None:
        waiting, self.waiting = self.waiting, []
        for _, d in waiting:
            d.callback(None)

    def fail(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, []
        for _, d in waiting:
            d.errback(error)


@implementer(IMaildropLocks)
class LockingProvider(MemoryProvider):
    """A memory provider that offers its own locks (as a shared store would)."""

    def __init__(self, locks: HeldLocks) -> None:
        super().__init__()
        self.locks = locks

    def lock_maildrop(self, user: str) -> defer.Deferred[Any]:
        return self.locks.lock_maildrop(user)


class MaildropLocksForTests(test_server.ServerTestCase):
    def test_in_process_default(self) -> None:
        """A provider without locks of its own gets a new in-process MaildropLocks, an IMaildropLocks."""
        locks = maildrop_locks_for(self.stores)
        self.assertIsInstance(locks, MaildropLocks)
        self.assertIsNot(locks, maildrop_locks_for(self.stores))
        self.assertTrue(verifyObject(IMaildropLocks, locks))
        factory = POP3Factory(authenticator=self.authenticator, stores=self.stores, clock=self.clock)
        self.assertIsInstance(factory.locks, MaildropLocks)

    def test_provider_locks(self) -> None:
        """A provider that offers IMaildropLocks is the factory's locks."""
        provider = LockingProvider(HeldLocks())
        self.assertIs(maildrop_locks_for(provider), provider)
        factory = POP3Factory(authenticator=self.authenticator, stores=provider, clock=self.clock)
        self.assertIs(factory.locks, provider)

    def test_in_process_lock_object(self) -> None:
        """MaildropLocks.lock_maildrop: a lock or None at once; releasing twice frees only once."""
        locks = MaildropLocks()
        lock = self.successResultOf(locks.lock_maildrop(USER))
        self.assertTrue(verifyObject(IMaildropLock, lock))
        self.assertEqual(lock.user, USER)
        self.assertIsNone(self.successResultOf(locks.lock_maildrop(USER)))
        self.successResultOf(lock.release())
        self.assertFalse(locks.held(USER))
        second = self.successResultOf(locks.lock_maildrop(USER))
        self.successResultOf(lock.release())  # the first holder again: harmless
        self.assertTrue(locks.held(USER))
        self.successResultOf(second.release())
        self.assertFalse(locks.held(USER))


class ProviderLockTests(test_server.ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.held = HeldLocks()
        self.provider = LockingProvider(self.held)
        # The provider's stores are the test's: the same INBOX.
        self.provider.store_for = self.stores.store_for  # type: ignore[method-assign]

    def connect_with_provider(self) -> Any:
        proto, transport = self.connect(stores=self.provider, locks=None)
        self.take(transport)
        return proto, transport

    def test_login_waits_for_the_lock(self) -> None:
        """PASS is answered once the provider's lock is granted; a pipelined STAT runs after it."""
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN + b"STAT\r\n")
        self.assertEqual(self.take(transport), b"+OK Send your password\r\n")
        self.assertEqual([user for user, _ in self.held.waiting], [USER])
        self.held.grant()
        self.assertEqual(
            self.take(transport), f"+OK Logged in, 2 messages ({SIZES} octets)\r\n+OK 2 {SIZES}\r\n".encode()
        )
        self.assertEqual(proto.user, USER)
        self.assertFalse(self.locks.held(USER))  # the in-process registry is not used
        proto.dataReceived(b"QUIT\r\n")
        self.assertEqual(self.held.released, [USER])

    def test_refused(self) -> None:
        """A lock held elsewhere: -ERR [IN-USE] (RFC 2449 section 8.1.1); the client may try again."""
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN)
        self.held.refuse()
        out = self.take(transport)
        self.assertTrue(out.startswith(b"+OK Send your password\r\n-ERR [IN-USE] "), out)
        self.assertIsNone(proto.user)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(LOGIN)
        self.held.grant()
        self.assertEqual(self.take(transport), LOGGED_IN)

    def test_failure(self) -> None:
        """A lock that cannot be taken: -ERR [SYS/TEMP] (RFC 3206), logged; the session goes on."""
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN + b"CAPA\r\n")
        self.take(transport)
        self.held.fail(DatabaseError("the database is unreachable"))
        out = self.take(transport)
        self.assertTrue(out.startswith(b"-ERR [SYS/TEMP] "), out)
        self.assertIn(b"+OK", out.split(b"\r\n", 1)[1])  # CAPA answered
        self.assertEqual(len(self.flushLoggedErrors(DatabaseError)), 1)
        self.assertEqual(self.held.released, [])
        self.assertFalse(transport.disconnecting)

    def test_released_when_the_connection_is_lost(self) -> None:
        """A lost connection releases the provider's lock; a failed release is logged only."""
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN)
        self.held.grant()
        self.assertEqual(self.take(transport), LOGGED_IN)
        self.assertEqual(self.held.released, [])
        self.held.release_error = DatabaseError("gone")
        proto.connectionLost()
        self.assertEqual(self.held.released, [USER])
        self.assertEqual(len(self.flushLoggedErrors(DatabaseError)), 1)

    def test_lock_after_the_client_left(self) -> None:
        """A lock granted after the connection was lost is released at once; nothing is written."""
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN)
        self.take(transport)
        proto.connectionLost()
        self.held.grant()
        self.assertEqual(self.held.released, [USER])
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(proto.user)

    def test_store_failure_releases(self) -> None:
        """The lock is taken but the store cannot be opened: -ERR [SYS/TEMP] and the lock is released."""

        def broken(user: str) -> defer.Deferred[Any]:
            return defer.fail(OSError("store unreachable"))

        self.provider.store_for = broken  # type: ignore[method-assign]
        proto, transport = self.connect_with_provider()
        proto.dataReceived(LOGIN)
        self.held.grant()
        self.assertTrue(
            self.take(transport).endswith(b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n")
        )
        self.assertEqual(self.held.released, [USER])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
