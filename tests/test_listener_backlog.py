"""
The listeners' accept queue (found by ``benchmarks/load.py``: with
Twisted's default backlog of 50, 2,000 clients connecting to a busy server
overflowed it and waited for SYN retransmissions, up to 40 s to connect).
"""

from __future__ import annotations

from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase

from txmail.service import DEFAULT_BACKLOG, LISTENER_ROLES, ListenerService, with_default_backlog


class BacklogTests(SynchronousTestCase):
    def test_tcp_listener_gets_the_default_backlog(self) -> None:
        reactor = MemoryReactor()
        listener = ListenerService(reactor, "tcp:2525:interface=127.0.0.1", Factory(), "mta")
        listener.startService()
        ((port, _, backlog, interface),) = reactor.tcpServers
        self.assertEqual((port, backlog, interface), (2525, DEFAULT_BACKLOG, "127.0.0.1"))
        self.assertGreaterEqual(DEFAULT_BACKLOG, 1024)

    def test_explicit_backlog_kept(self) -> None:
        reactor = MemoryReactor()
        ListenerService(reactor, "tcp:143:backlog=7", Factory(), "imap").startService()
        self.assertEqual(reactor.tcpServers[0][2], 7)

    def test_descriptions(self) -> None:
        self.assertEqual(with_default_backlog("tcp:25"), f"tcp:25:backlog={DEFAULT_BACKLOG}")
        self.assertEqual(
            with_default_backlog("tcp6:25:interface=\\:\\:1"),
            f"tcp6:25:interface=\\:\\:1:backlog={DEFAULT_BACKLOG}",
        )
        self.assertEqual(
            with_default_backlog("ssl:993:privateKey=k.pem"),
            f"ssl:993:privateKey=k.pem:backlog={DEFAULT_BACKLOG}",
        )
        self.assertEqual(with_default_backlog("tcp:25:backlog=10"), "tcp:25:backlog=10")
        self.assertEqual(with_default_backlog("unix:/run/lmtp"), "unix:/run/lmtp")


class RoleTests(SynchronousTestCase):
    """A listener's role is one of ``LISTENER_ROLES`` (``MailServer.address(role)`` finds it by it)."""

    def test_roles(self) -> None:
        self.assertEqual(
            set(LISTENER_ROLES),
            {"mta", "submission", "lmtp", "pop3", "imap", "managesieve", "web", "autoconfig", "metrics"},
        )
        for role in LISTENER_ROLES:
            self.assertEqual(ListenerService(MemoryReactor(), "tcp:0", Factory(), role).role, role)  # type: ignore[arg-type]  # a str from the tuple

    def test_unknown_role_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            ListenerService(MemoryReactor(), "tcp:0", Factory(), "smtp")  # type: ignore[arg-type]  # the point of the test
        self.assertIn("'smtp'", str(caught.exception))
