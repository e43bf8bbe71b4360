"""
Tests for the POP3 adapter when opening the user's store takes time or
fails (``IMailStoreProvider.store_for`` returns a Deferred): the login
answers once the maildrop is open, commands pipelined meanwhile run after
it in order, and a store that cannot be opened is logged and answered with
``-ERR [SYS/TEMP]`` (RFC 3206), the maildrop lock released, the
connection and its neighbours unharmed.  StringTransport, a task.Clock and
the memory store, as in tests/pop3/test_server.py.
"""

from __future__ import annotations

from tests.imap.test_store_open import FailingProvider, HeldProvider
from tests.pop3 import test_server
from tests.pop3.test_server import MESSAGES, PASSWORD, USER

__all__: list[str] = []

LOGIN = f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()
SIZES = sum(len(m) for m in MESSAGES)


class StoreOpeningTests(test_server.ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.held = HeldProvider(self.stores)

    def test_login_waits_for_the_store(self) -> None:
        """PASS is answered once the store is open; a pipelined STAT runs after it."""
        proto, transport = self.connect(stores=self.held)
        self.take(transport)
        proto.dataReceived(LOGIN + b"STAT\r\n")
        self.assertEqual(self.take(transport), b"+OK Send your password\r\n")
        self.assertEqual([user for user, _ in self.held.waiting], [USER])
        self.assertTrue(proto._waiting)
        self.held.open_all()
        self.assertEqual(
            self.take(transport),
            f"+OK Logged in, 2 messages ({SIZES} octets)\r\n+OK 2 {SIZES}\r\n".encode(),
        )
        self.assertTrue(self.locks.held(USER))

    def test_late_failure(self) -> None:
        """A store that fails after a while: -ERR [SYS/TEMP], the lock released, the client may go on."""
        proto, transport = self.connect(stores=self.held)
        self.take(transport)
        proto.dataReceived(LOGIN + b"CAPA\r\n")
        self.take(transport)
        self.held.fail_all(OSError("timed out"))
        out = self.take(transport)
        self.assertTrue(out.startswith(b"-ERR [SYS/TEMP] "), out)
        self.assertIn(b"+OK", out.split(b"\r\n", 1)[1])  # CAPA answered
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(self.locks.held(USER))
        self.assertFalse(transport.disconnecting)

    def test_connection_lost_while_opening(self) -> None:
        """A client gone before its store opened: nothing is written, the lock is released."""
        proto, transport = self.connect(stores=self.held)
        self.take(transport)
        proto.dataReceived(LOGIN)
        self.take(transport)
        proto.connectionLost()
        self.held.open_all()
        self.assertEqual(transport.value(), b"")
        self.assertFalse(self.locks.held(USER))


class StoreFailureTests(test_server.ServerTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.failing = FailingProvider(self.stores)

    def test_login(self) -> None:
        """-ERR [SYS/TEMP], logged; the lock is released and a later login works."""
        proto, transport = self.connect(stores=self.failing)
        self.take(transport)
        proto.dataReceived(LOGIN)
        self.assertEqual(
            self.take(transport),
            b"+OK Send your password\r\n-ERR [SYS/TEMP] Temporary server failure, try again later\r\n",
        )
        (logged,) = self.flushLoggedErrors(OSError)
        self.assertEqual(str(logged.value), "store unreachable")
        self.assertFalse(self.locks.held(USER))
        self.assertFalse(transport.disconnecting)
        self.failing.broken = False
        proto.dataReceived(LOGIN)
        self.assertEqual(
            self.take(transport),
            f"+OK Send your password\r\n+OK Logged in, 2 messages ({SIZES} octets)\r\n".encode(),
        )

    def test_neighbours(self) -> None:
        """Another connection logs in while one's store fails."""
        proto, transport = self.connect(stores=self.failing)
        self.take(transport)
        proto.dataReceived(LOGIN)
        self.flushLoggedErrors(OSError)
        self.failing.broken = False
        other, other_transport = self.connect(stores=self.failing)
        self.assertIn(b"+OK Logged in, 2 messages", self.login(other, other_transport))
        self.assertFalse(transport.disconnecting)
