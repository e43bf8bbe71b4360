"""
Connection and rate limits and the harvesting tarpit
(:mod:`txmail.policy.limits`): the policy on its own with a task.Clock, and
through the real SMTP adapter on StringTransport.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from tests.smtp.test_server import ServerTestCase
from txmail.model import RecipientResult
from txmail.policy.config import Limits
from txmail.policy.hooks import RecipientInfo, SessionInfo, TransactionInfo, Verdict
from txmail.policy.limits import (
    MESSAGE_RATE_REPLY,
    RECIPIENT_RATE_REPLY,
    TOO_MANY_CONNECTIONS_REPLY,
    TOO_MANY_ERRORS_REPLY,
    RateLimits,
    client_network,
)

_ids = itertools.count()


def session(address: str = "192.0.2.7", *, user: str | None = None, trusted: bool = False) -> SessionInfo:
    return SessionInfo(
        role="mta",
        session_id=f"s{next(_ids)}",
        client_address=address,
        authenticated_user=user,
        trusted=trusted,
        transaction=TransactionInfo("sender@remote.test"),
    )


def rcpt(address: str = "alice@example.test", ok: bool = True) -> RecipientInfo:
    reply = "" if ok else "550 5.1.1 No such user"
    return RecipientInfo(address, {}, RecipientResult(address, ok=ok, reply=reply))


def limits(**kwargs: Any) -> Limits:
    values = {
        "max_connections": 0,
        "max_connections_per_client": 0,
        "rcpt_errors_before_tarpit": 0,
        "rcpt_errors_before_disconnect": 0,
    }
    values.update(kwargs)
    return Limits(**values)


#: Every limit off (Limits() has connection and harvesting limits on by default).
NO_LIMITS = limits()


class ClientNetworkTests(SynchronousTestCase):
    """Clients are counted per IPv4 address and per IPv6 /64."""

    def test_networks(self) -> None:
        """IPv4 stays whole, IPv6 becomes its /64, IPv4-mapped IPv6 is IPv4, other text is kept."""
        self.assertEqual(client_network("192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_network("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64")
        self.assertEqual(client_network("::ffff:192.0.2.7"), "192.0.2.7")
        self.assertEqual(client_network("192.0.2.7", ipv4_prefix=24), "192.0.2.0/24")
        self.assertEqual(client_network(""), "")


class ConnectionLimitTests(SynchronousTestCase):
    """Concurrent connections, in total and per client, counted exactly once."""

    def setUp(self) -> None:
        self.clock = task.Clock()

    def connect(
        self, policy: RateLimits, address: str = "192.0.2.7", **kwargs: Any
    ) -> tuple[SessionInfo, Any]:
        s = session(address, **kwargs)
        return s, policy.on_connect(s)

    def test_total_limit_boundary(self) -> None:
        """max_connections connections are let in; the next gets 421 4.7.0, and a close makes room."""
        policy = RateLimits(limits(max_connections=3), clock=self.clock)
        opened = [self.connect(policy, f"192.0.2.{i}") for i in range(3)]
        self.assertEqual([v for _, v in opened], [None, None, None])
        refused, verdict = self.connect(policy, "198.51.100.1")
        self.assertEqual(verdict, Verdict(reply=TOO_MANY_CONNECTIONS_REPLY))
        self.assertEqual(verdict.reply.code, 421)
        policy.on_close(refused)
        self.assertEqual(policy.connections, 3)
        policy.on_close(opened[0][0])
        self.assertEqual(policy.connections, 2)
        self.assertIsNone(self.connect(policy, "198.51.100.1")[1])

    def test_per_client_limit_boundary(self) -> None:
        """A client gets max_connections_per_client connections; another client is not affected."""
        policy = RateLimits(limits(max_connections_per_client=2), clock=self.clock)
        self.assertIsNone(self.connect(policy)[1])
        self.assertIsNone(self.connect(policy)[1])
        self.assertEqual(self.connect(policy)[1], Verdict(reply=TOO_MANY_CONNECTIONS_REPLY))
        self.assertIsNone(self.connect(policy, "192.0.2.8")[1])
        self.assertEqual(policy.connections_from("192.0.2.7"), 2)
        self.assertEqual(policy.connections_from("192.0.2.8"), 1)

    def test_ipv6_counted_per_64(self) -> None:
        """Two addresses of one IPv6 /64 share a count; the next /64 has its own."""
        policy = RateLimits(limits(max_connections_per_client=1), clock=self.clock)
        self.assertIsNone(self.connect(policy, "2001:db8:1:2::1")[1])
        self.assertEqual(
            self.connect(policy, "2001:db8:1:2:ffff::9")[1], Verdict(reply=TOO_MANY_CONNECTIONS_REPLY)
        )
        self.assertIsNone(self.connect(policy, "2001:db8:1:3::1")[1])
        self.assertIsNone(self.connect(policy, "192.0.2.1")[1])
        self.assertIsNone(self.connect(policy, "192.0.2.2")[1])

    def test_close_gives_back_exactly_once(self) -> None:
        """A close gives back what its connect took: nothing for a refused one, once however often it is told."""
        policy = RateLimits(limits(max_connections_per_client=1), clock=self.clock)
        accepted, _ = self.connect(policy)
        refused, verdict = self.connect(policy)
        self.assertTrue(verdict.refused)
        policy.on_close(refused)
        policy.on_close(refused)
        self.assertEqual(policy.connections_from("192.0.2.7"), 1)
        policy.on_close(accepted)
        policy.on_close(accepted)
        self.assertEqual((policy.connections, policy.connections_from("192.0.2.7")), (0, 0))
        self.assertEqual(policy._per_client, {})

    def test_closed_before_asked(self) -> None:
        """A connection that ended before its connect stage reached the policy is never counted."""
        policy = RateLimits(limits(max_connections=5), clock=self.clock)
        s = session()
        policy.on_close(s)
        self.assertIsNone(policy.on_connect(s))
        self.assertEqual(policy.connections, 0)

    def test_unlimited(self) -> None:
        """0 means no connection limit."""
        policy = RateLimits(NO_LIMITS, clock=self.clock)
        for _ in range(500):
            self.assertIsNone(self.connect(policy)[1])
        self.assertEqual(policy.connections, 500)

    def test_trusted_exempt(self) -> None:
        """Trusted clients are neither refused nor counted."""
        policy = RateLimits(limits(max_connections=1, max_connections_per_client=1), clock=self.clock)
        sessions = [self.connect(policy, trusted=True) for _ in range(3)]
        self.assertEqual([v for _, v in sessions], [None, None, None])
        self.assertEqual(policy.connections, 0)
        for s, _ in sessions:
            policy.on_close(s)
        self.assertEqual(policy.connections, 0)
        self.assertIsNone(self.connect(policy)[1])


class RateTests(SynchronousTestCase):
    """Hourly message and recipient rates per client and per user."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)

    def test_messages_per_client_boundary_and_window(self) -> None:
        """The limit's worth of MAILs pass, the next gets 451 4.7.1 until the hour (to the minute) is over."""
        policy = RateLimits(limits(messages_per_hour_per_client=3), clock=self.clock)
        s = session()
        for _ in range(3):
            self.assertIsNone(policy.on_mail(s))
            self.clock.advance(10)
        self.assertEqual(policy.on_mail(s), Verdict(reply=MESSAGE_RATE_REPLY))
        self.assertIsNone(policy.on_mail(session("192.0.2.8")))
        self.clock.advance(3600 - 30 - 1)  # an hour after the first MAIL, less a second
        self.assertTrue(policy.on_mail(s).refused)
        self.clock.advance(61)
        self.assertIsNone(policy.on_mail(s))

    def test_refused_messages_are_not_counted(self) -> None:
        """Refused MAIL commands do not count, so the client is free an hour after its last accepted one."""
        policy = RateLimits(limits(messages_per_hour_per_client=1), clock=self.clock)
        s = session()
        self.assertIsNone(policy.on_mail(s))
        for _ in range(50):
            self.clock.advance(60)
            self.assertTrue(policy.on_mail(s).refused)
        self.clock.advance(3600 - 50 * 60 + 60)
        self.assertIsNone(policy.on_mail(s))

    def test_messages_per_user(self) -> None:
        """An authenticated user is limited across client addresses; another user is not affected."""
        policy = RateLimits(limits(messages_per_hour_per_user=2), clock=self.clock)
        self.assertIsNone(policy.on_mail(session("192.0.2.1", user="alice@example.test")))
        self.assertIsNone(policy.on_mail(session("2001:db8::1", user="alice@example.test")))
        self.assertEqual(
            policy.on_mail(session("198.51.100.1", user="alice@example.test")),
            Verdict(reply=MESSAGE_RATE_REPLY),
        )
        self.assertIsNone(policy.on_mail(session("192.0.2.1", user="bob@example.test")))
        self.assertIsNone(policy.on_mail(session("192.0.2.1")))

    def test_recipients_per_client_boundary(self) -> None:
        """Accepted recipients count up to the limit, then 452 4.5.3; refused ones do not count."""
        policy = RateLimits(limits(recipients_per_hour_per_client=2), clock=self.clock)
        s = session()
        self.assertIsNone(policy.on_rcpt(s, rcpt("nobody@example.test", ok=False)))
        self.assertIsNone(policy.on_rcpt(s, rcpt()))
        self.assertIsNone(policy.on_rcpt(s, rcpt("bob@example.test")))
        self.assertEqual(policy.on_rcpt(s, rcpt("carol@example.test")), Verdict(reply=RECIPIENT_RATE_REPLY))
        self.assertIsNone(policy.on_rcpt(session("192.0.2.8"), rcpt()))
        self.clock.advance(3660)
        self.assertIsNone(policy.on_rcpt(s, rcpt("carol@example.test")))

    def test_recipients_per_user(self) -> None:
        """An authenticated user's recipients are counted across clients."""
        policy = RateLimits(limits(recipients_per_hour_per_user=1), clock=self.clock)
        self.assertIsNone(policy.on_rcpt(session("192.0.2.1", user="alice@example.test"), rcpt()))
        verdict = policy.on_rcpt(session("192.0.2.2", user="alice@example.test"), rcpt())
        self.assertEqual(verdict, Verdict(reply=RECIPIENT_RATE_REPLY))

    def test_unlimited(self) -> None:
        """0 means no rate limit."""
        policy = RateLimits(NO_LIMITS, clock=self.clock)
        s = session(user="alice@example.test")
        for _ in range(1000):
            self.assertIsNone(policy.on_mail(s))
            self.assertIsNone(policy.on_rcpt(s, rcpt()))

    def test_trusted_exempt(self) -> None:
        """Trusted clients are not rate limited."""
        policy = RateLimits(
            limits(messages_per_hour_per_client=1, recipients_per_hour_per_client=1), clock=self.clock
        )
        s = session(trusted=True)
        for _ in range(5):
            self.assertIsNone(policy.on_mail(s))
            self.assertIsNone(policy.on_rcpt(s, rcpt()))

    def test_tables_are_bounded(self) -> None:
        """A rate table keeps at most max_keys clients, and drops those idle for the whole window."""
        policy = RateLimits(limits(messages_per_hour_per_client=5), clock=self.clock, max_keys=3)
        for i in range(10):
            policy.on_mail(session(f"192.0.2.{i}"))
        self.assertEqual(len(policy._messages_client), 3)
        self.clock.advance(3660)
        policy.on_mail(session("198.51.100.1"))
        self.assertEqual(len(policy._messages_client), 1)


class HarvestingTests(SynchronousTestCase):
    """Refused recipients slow the connection down, then end it."""

    def test_tarpit_then_disconnect(self) -> None:
        """Past the tarpit count each RCPT reply waits; reaching the disconnect count gives 421 4.7.0."""
        policy = RateLimits(
            limits(rcpt_errors_before_tarpit=2, rcpt_errors_before_disconnect=4, tarpit_delay=3),
            clock=task.Clock(),
        )
        s = session()
        bad = rcpt("nobody@example.test", ok=False)
        self.assertIsNone(policy.on_rcpt(s, bad))
        self.assertIsNone(policy.on_rcpt(s, bad))
        self.assertEqual(policy.on_rcpt(s, bad), Verdict.tarpit(3))
        self.assertEqual(policy.on_rcpt(s, rcpt()), Verdict.tarpit(3))
        self.assertEqual(policy.on_rcpt(s, bad), Verdict(reply=TOO_MANY_ERRORS_REPLY, delay=3))
        # Another connection from the same client starts from nothing.
        self.assertIsNone(policy.on_rcpt(session(), bad))

    def test_disabled(self) -> None:
        """0 turns the tarpit and the disconnect off."""
        policy = RateLimits(NO_LIMITS, clock=task.Clock())
        s = session()
        for _ in range(100):
            self.assertIsNone(policy.on_rcpt(s, rcpt("nobody@example.test", ok=False)))

    def test_trusted_exempt(self) -> None:
        """Trusted clients are never tarpitted."""
        policy = RateLimits(Limits(), clock=task.Clock())
        s = session(trusted=True)
        for _ in range(20):
            self.assertIsNone(policy.on_rcpt(s, rcpt("nobody@example.test", ok=False)))


class AdapterTests(ServerTestCase):
    """The limits on the wire, through the real SMTP adapter."""

    def test_second_connection_refused_and_closed(self) -> None:
        """With one connection per client, a second gets 421 and is closed; after both close a third is let in."""
        policy = RateLimits(limits(max_connections_per_client=1), clock=self.clock)
        first, transport1 = self.connect(policies=[policy])
        self.assertEqual(transport1.value(), b"220 mx.example.test ESMTP txmail\r\n")
        second, transport2 = self.connect(policies=[policy])
        self.assertEqual(transport2.value(), b"421 4.7.0 Too many connections, try again later\r\n")
        self.assertTrue(transport2.disconnecting)
        second.connectionLost(None)
        self.assertEqual(policy.connections, 1)
        first.connectionLost(None)
        self.assertEqual(policy.connections, 0)
        _, transport3 = self.connect(policies=[policy])
        self.assertEqual(transport3.value(), b"220 mx.example.test ESMTP txmail\r\n")

    def test_harvesting_tarpit_and_drop(self) -> None:
        """Refused recipients get the router's reply, later ones after the tarpit delay, then 421 and a close."""
        policy = RateLimits(
            limits(rcpt_errors_before_tarpit=2, rcpt_errors_before_disconnect=4, tarpit_delay=5),
            clock=self.clock,
        )
        proto, transport = self.connect(policies=[policy])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\n")
        proto.dataReceived(b"RCPT TO:<a@elsewhere.test>\r\nRCPT TO:<b@elsewhere.test>\r\n")
        lines = self.take(transport)
        self.assertEqual(lines[-2:], [b"554 5.7.1 Relay access denied"] * 2)
        proto.dataReceived(b"RCPT TO:<c@elsewhere.test>\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.take(transport), [b"554 5.7.1 Relay access denied"])
        proto.dataReceived(b"RCPT TO:<alice@example.test>\r\n")
        self.clock.advance(5)
        self.assertEqual(self.take(transport), [b"250 2.1.5 Recipient OK"])
        proto.dataReceived(b"RCPT TO:<d@elsewhere.test>\r\nRCPT TO:<e@elsewhere.test>\r\n")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(5)
        self.assertEqual(self.take(transport), [b"421 4.7.0 Too many errors"])
        self.assertTrue(transport.disconnecting)
