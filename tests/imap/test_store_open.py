"""
Tests for the IMAP adapter when opening the user's store takes time or
fails (``IMailStoreProvider.store_for`` returns a Deferred): the login
answers once the store is open, pipelined commands wait and run in order,
and a store that cannot be opened fails LOGIN and AUTHENTICATE with ``NO
[UNAVAILABLE]`` (RFC 5530) without hurting the connection or its
neighbours.  StringTransport, a task.Clock and the memory store, as in
tests/imap/test_server.py.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer

from tests.imap import test_server
from tests.imap.test_server import LOGIN, PASSWORD, USER
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

AUTHENTICATE = b"a1 AUTHENTICATE PLAIN " + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b"\r\n"


class HeldProvider:
    """A provider whose store_for answers only when the test fires it (or fails it)."""

    def __init__(self, inner: MemoryProvider) -> None:
        self.inner = inner
        self.waiting: list[tuple[str, defer.Deferred[Any]]] = []

    def store_for(self, user: str) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append((user, d))
        return d

    def open_all(self) -> None:
        waiting, self.waiting = self.waiting, []
        for user, d in waiting:
            d.callback(self.successful(user))

    def fail_all(self, error: Exception) -> None:
        waiting, self.waiting = self.waiting, []
        for _, d in waiting:
            d.errback(error)

    def successful(self, user: str) -> Any:
        results: list[Any] = []
        self.inner.store_for(user).addCallback(results.append)
        return results[0]


class FailingProvider:
    """A provider whose stores cannot be opened while ``broken`` is set."""

    def __init__(self, inner: MemoryProvider) -> None:
        self.inner = inner
        self.broken = True

    def store_for(self, user: str) -> defer.Deferred[Any]:
        if self.broken:
            return defer.fail(OSError("store unreachable"))
        return self.inner.store_for(user)


class StoreOpeningTests(test_server.ServerTestCase):
    """The login waits for the store; commands sent meanwhile run after it, in order."""

    def setUp(self) -> None:
        super().setUp()
        self.held = HeldProvider(self.stores)

    def test_login_waits_for_the_store(self) -> None:
        """The tagged OK of LOGIN goes out once the store is open; a pipelined SELECT runs after it."""
        proto, transport = self.connect(stores=self.held)
        out = self.send(proto, transport, LOGIN + b"a2 SELECT INBOX\r\n")
        self.assertEqual(out, b"")
        self.assertEqual([user for user, _ in self.held.waiting], [USER])
        self.assertTrue(proto._waiting)
        self.assertEqual(transport.producerState, "paused")  # no more input read meanwhile
        self.held.open_all()
        out = transport.value()
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY "), out)
        self.assertLess(out.index(b"a1 OK"), out.index(b"* 2 EXISTS"))
        self.assertTrue(out.endswith(b"a2 OK [READ-WRITE] SELECT completed\r\n"), out)
        self.assertIs(proto.store, self.store)

    def test_authenticate_waits_for_the_store(self) -> None:
        """AUTHENTICATE PLAIN answers once the store is open."""
        proto, transport = self.connect(stores=self.held)
        out = self.send(proto, transport, AUTHENTICATE + b"a2 NOOP\r\n")
        self.assertEqual(out, b"")
        self.held.open_all()
        out = transport.value()
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY "), out)
        self.assertTrue(out.endswith(b"a2 OK NOOP completed\r\n"), out)
        self.assertIs(proto.store, self.store)

    def test_connection_lost_while_opening(self) -> None:
        """A client gone before its store opened: the store arrives, nothing is written or raised."""
        proto, transport = self.connect(stores=self.held)
        self.send(proto, transport, LOGIN)
        proto.connectionLost()
        transport.clear()
        self.held.open_all()
        self.assertEqual(transport.value(), b"")
        self.assertIsNone(proto.store)

    def test_late_failure(self) -> None:
        """A store that fails after a while: the LOGIN gets NO [UNAVAILABLE], the next command runs."""
        proto, transport = self.connect(stores=self.held)
        self.send(proto, transport, LOGIN + b"a2 CAPABILITY\r\n")
        self.held.fail_all(OSError("timed out"))
        out = transport.value()
        self.assertTrue(out.startswith(b"a1 NO [UNAVAILABLE] "), out)
        self.assertIn(b"a2 OK CAPABILITY completed\r\n", out)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertFalse(transport.disconnecting)


class StoreFailureTests(test_server.ServerTestCase):
    """A store that cannot be opened fails the login, is logged, and harms no one else."""

    def setUp(self) -> None:
        super().setUp()
        self.failing = FailingProvider(self.stores)

    def test_login(self) -> None:
        """LOGIN: a tagged NO [UNAVAILABLE]; the session stays unauthenticated and open; a retry works."""
        proto, transport = self.connect(stores=self.failing)
        out = self.send(proto, transport, LOGIN + b"a2 SELECT INBOX\r\n")
        self.assertEqual(
            out,
            b"a1 NO [UNAVAILABLE] Mail store unavailable; try again later\r\n"
            b"a2 BAD SELECT is not allowed now\r\n",
        )
        (logged,) = self.flushLoggedErrors(OSError)
        self.assertEqual(str(logged.value), "store unreachable")
        self.assertIsNone(proto.session.user)
        self.assertFalse(transport.disconnecting)
        self.failing.broken = False
        out = self.send(proto, transport, LOGIN.replace(b"a1", b"a3"))
        self.assertTrue(out.startswith(b"a3 OK [CAPABILITY "), out)

    def test_authenticate(self) -> None:
        """AUTHENTICATE: a tagged NO [UNAVAILABLE] too."""
        proto, transport = self.connect(stores=self.failing)
        out = self.send(proto, transport, AUTHENTICATE)
        self.assertEqual(out, b"a1 NO [UNAVAILABLE] Mail store unavailable; try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertIsNone(proto.session.user)
        self.assertFalse(transport.disconnecting)

    def test_neighbours(self) -> None:
        """Another connection of the same factory logs in and works while one's store fails."""
        proto, transport = self.connect(stores=self.failing)
        factory = proto.factory
        self.send(proto, transport, LOGIN)
        self.flushLoggedErrors(OSError)
        self.failing.broken = False
        other = factory.buildProtocol(None)
        other_transport = type(transport)(peerAddress=transport.getPeer())
        other.makeConnection(other_transport)
        out = self.send(other, other_transport, LOGIN + b"a2 SELECT INBOX\r\n")
        self.assertTrue(out.endswith(b"a2 OK [READ-WRITE] SELECT completed\r\n"), out)
        self.assertFalse(transport.disconnecting)
