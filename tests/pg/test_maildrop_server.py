"""
End to end, two servers (nodes) in this process on one PostgreSQL
database, store and directory on it: POP3 on A holds the maildrop against
B (``-ERR [IN-USE]``, RFC 2449 section 8.1.1), and once A's session ends,
by QUIT or by a dropped connection, B logs in.
"""

from __future__ import annotations

import contextlib
import poplib
import time
from collections.abc import Generator
from typing import Any

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase

from tests.e2e._server import start_server
from tests.pg._helpers import upgraded_database

Gen = Generator[Any, Any, None]

USER = "alice@example.test"
PASSWORD = "lock secret"


class TwoServersPOP3LockTests(TestCase):
    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Gen:
        self.database = upgraded_database(self, start=False)
        self.servers = []
        for _ in range(2):
            server = yield start_server(
                self,
                pop3=["tcp:0:interface=127.0.0.1"],
                store_backend="postgresql",
                directory_backend="postgresql",
                postgresql_dsn=self.database.dsn,
                postgresql_max_connections=4,
            )
            self.servers.append(server)
        yield self.servers[0].directory.add_user(USER, PASSWORD)

    def login(self, server: Any) -> poplib.POP3:
        """A poplib client logged in on *server* (raises poplib.error_proto when refused)."""
        client = poplib.POP3(*server.address("pop3"), timeout=20)
        try:
            client.user(USER)
            client.pass_(PASSWORD)
        except BaseException:
            with contextlib.suppress(OSError):
                client.close()
            raise
        return client

    def refused(self, server: Any) -> bytes:
        """The reply to PASS on *server*, which must refuse it."""
        try:
            client = self.login(server)
        except poplib.error_proto as e:
            return e.args[0]
        client.quit()
        self.fail("the login was accepted")

    def locks(self) -> list[tuple[str, str]]:
        return self.database.run_sync(
            lambda conn: conn.execute("SELECT address, node FROM maildrop_locks").fetchall()
        )

    @defer.inlineCallbacks
    def released(self) -> Gen:
        """Wait (at most 10 s) for the lock row to go: the release runs after the session's end."""
        deadline = time.monotonic() + 10
        while self.locks():
            self.assertLess(time.monotonic(), deadline, "the maildrop lock was not released")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def test_held_against_the_other_node(self) -> Gen:
        """A holds alice's maildrop: B answers -ERR [IN-USE]; after A's QUIT, B logs in."""
        a, b = self.servers
        self.assertNotEqual(a.stores.node, b.stores.node)
        client_a = yield threads.deferToThread(self.login, a)
        self.assertEqual(self.locks(), [(USER, a.stores.node)])
        reply = yield threads.deferToThread(self.refused, b)
        self.assertTrue(reply.startswith(b"-ERR [IN-USE] "), reply)
        # The session on A is not disturbed by B's attempt.
        self.assertEqual((yield threads.deferToThread(client_a.stat)), (0, 0))
        yield threads.deferToThread(client_a.quit)
        yield self.released()
        client_b = yield threads.deferToThread(self.login, b)
        self.assertEqual(self.locks(), [(USER, b.stores.node)])
        reply = yield threads.deferToThread(self.refused, a)
        self.assertTrue(reply.startswith(b"-ERR [IN-USE] "), reply)
        yield threads.deferToThread(client_b.quit)
        yield self.released()

    @defer.inlineCallbacks
    def test_dropped_connection_releases(self) -> Gen:
        """A client that goes away without QUIT: the lock is released all the same."""
        a, b = self.servers
        client_a = yield threads.deferToThread(self.login, a)
        yield threads.deferToThread(client_a.close)
        yield self.released()
        client_b = yield threads.deferToThread(self.login, b)
        yield threads.deferToThread(client_b.quit)
        yield self.released()
