"""Tests for txmail.auth.exchange: the SASL exchange SMTP, POP3 and IMAP share."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from txmail._events import AuthStep
from txmail.auth import sasl
from txmail.auth.exchange import Ask, Cancelled, Done, Malformed, Refused, SASLExchange, Send
from txmail.auth.passwords import Secret


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\x00{user}\x00{password}".encode()).decode("ascii")


class SASLExchangeTests(SynchronousTestCase):
    def exchange(self, mechanism: str = "PLAIN") -> SASLExchange:
        return SASLExchange(sasl.SASLServer(mechanism))

    def test_initial_response_asks_the_authenticator(self) -> None:
        """PLAIN with an initial response (RFC 4954, RFC 4959): an AuthStep with the password check."""
        exchange = self.exchange()
        outcome = exchange.start(plain("alice", "pw"))
        assert isinstance(outcome, Ask)
        self.assertIsInstance(outcome.step, AuthStep)
        self.assertEqual(outcome.step.mechanism, "PLAIN")
        self.assertIs(outcome.step.server, exchange.server)
        self.assertEqual(outcome.step.request, sasl.NeedPasswordCheck("alice", "", Secret("pw")))
        self.assertFalse(exchange.over)

    def test_no_initial_response_challenges(self) -> None:
        """Without an initial response the server sends an empty challenge, then reads a line."""
        exchange = self.exchange()
        self.assertEqual(exchange.start(None), Send(b""))
        outcome = exchange.respond(plain("alice", "pw").encode())
        self.assertIsInstance(outcome, Ask)

    def test_equals_is_an_empty_initial_response(self) -> None:
        """
        "=" is the empty initial response (RFC 4954 section 4, RFC 4959
        section 3), and so is "" (what IMAP's parser makes of "="): PLAIN
        gets an empty message, which it cannot take (a failure for the
        authenticator to delay), rather than asking for one (no initial
        response).
        """
        for text in ("=", ""):
            outcome = self.exchange().start(text)
            assert isinstance(outcome, Ask)
            self.assertIsInstance(outcome.step.request, sasl.Failed)
        self.assertEqual(self.exchange().start(None), Send(b""))

    def test_login_challenges(self) -> None:
        """LOGIN's Username: and Password: challenges, then the password check."""
        exchange = self.exchange("LOGIN")
        self.assertEqual(exchange.start(None), Send(b"Username:"))
        self.assertEqual(exchange.respond(base64.b64encode(b"alice")), Send(b"Password:"))
        self.assertIsInstance(exchange.respond(base64.b64encode(b"pw")), Ask)

    def test_cancel(self) -> None:
        """ "*" cancels, as an initial response or as a line; the exchange is over."""
        exchange = self.exchange()
        self.assertEqual(exchange.start("*"), Cancelled())
        self.assertTrue(exchange.over)
        exchange = self.exchange()
        exchange.start(None)
        self.assertEqual(exchange.respond(b"*"), Cancelled())
        self.assertTrue(exchange.over)

    def test_malformed(self) -> None:
        """Bad base64, or an initial response that is not ASCII, is Malformed and ends the exchange."""
        exchange = self.exchange()
        self.assertEqual(exchange.start("!!"), Malformed("initial response"))
        self.assertTrue(exchange.over)
        self.assertEqual(self.exchange().start("é"), Malformed("initial response"))
        exchange = self.exchange()
        exchange.start(None)
        self.assertEqual(exchange.respond(b"not base64!"), Malformed("response"))
        self.assertTrue(exchange.over)

    def test_authenticator_answers(self) -> None:
        """The authenticator's Succeeded, Failed and cancelled Failed end the exchange as Done, Refused, Cancelled."""
        exchange = self.exchange()
        exchange.start(plain("alice", "pw"))
        self.assertEqual(
            exchange.resolved(sasl.Succeeded("alice@example.test", "")), Done("alice@example.test", "PLAIN")
        )
        self.assertTrue(exchange.over)
        exchange = self.exchange()
        exchange.start(plain("alice", "wrong"))
        self.assertEqual(exchange.resolved(sasl.Failed("invalid")), Refused("PLAIN"))
        exchange = self.exchange()
        exchange.start(plain("alice", "pw"))
        self.assertEqual(exchange.resolved(sasl.Failed("cancelled")), Cancelled())
        exchange = self.exchange("SCRAM-SHA-256")
        exchange.start(None)
        self.assertEqual(exchange.resolved(sasl.Challenge(b"r=abc")), Send(b"r=abc"))
        self.assertFalse(exchange.over)

    def test_wrong_answer_is_a_bug(self) -> None:
        """Anything but Challenge, Succeeded or Failed from the application raises TypeError."""
        exchange = self.exchange()
        exchange.start(plain("alice", "pw"))
        self.assertRaises(TypeError, exchange.resolved, "alice")

    def test_abort(self) -> None:
        """abort() ends the exchange from the session's side, once."""
        exchange = self.exchange("LOGIN")
        exchange.start(None)
        exchange.abort()
        self.assertTrue(exchange.over)
        exchange.abort()
        self.assertTrue(exchange.over)
