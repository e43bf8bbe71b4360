"""
Policy hooks at every SMTP stage (:mod:`txmail.policy.hooks`): the sans-IO
session's optional pause points, and the adapter asking policies in order
on StringTransport with a task.Clock.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.smtp.test_server import BODY, SEND, FakeDirectory, ServerTestCase, plain
from txmail.auth.authenticator import Authenticator
from txmail.delivery.spool import KEEP_IN_MEMORY
from txmail.policy.hooks import MessageInfo, Policy, RecipientInfo, SessionInfo, Verdict, header_field
from txmail.smtp.codes import Reply
from txmail.smtp.events import (
    AuthFinished,
    AuthStep,
    ClientConnected,
    ConnectionClosing,
    Greeted,
    HeloReceived,
)
from txmail.smtp.session import ServerSession


def drain(session: ServerSession) -> list[Any]:
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


class SessionCheckTests(SynchronousTestCase):
    """The session pauses at connect, HELO and AUTH only when asked to."""

    def test_no_checks_greets_at_once(self) -> None:
        """Without checks the 220 greeting is queued at construction and no event waits."""
        session = ServerSession("mx.test")
        self.assertEqual(session.data_to_send(), b"220 mx.test ESMTP txmail\r\n")
        self.assertEqual(drain(session), [])

    def test_connect_accepted(self) -> None:
        """With the connect check the greeting waits for accept()."""
        session = ServerSession("mx.test", checks=frozenset({"connect"}))
        self.assertEqual(session.data_to_send(), b"")
        self.assertEqual(drain(session), [ClientConnected()])
        session.receive_data(b"EHLO c.test\r\n")
        self.assertEqual(drain(session), [])  # paused: nothing parsed
        session.accept()
        self.assertEqual(session.data_to_send(), b"220 mx.test ESMTP txmail\r\n")
        self.assertIsInstance(drain(session)[0], Greeted)

    def test_connect_refused_554(self) -> None:
        """A 554 greeting leaves the session answering 503 to everything but QUIT (RFC 5321 section 3.1)."""
        session = ServerSession("mx.test", checks=frozenset({"connect"}))
        drain(session)
        session.reject(Reply(554, "5.7.1", "Go away"))
        session.receive_data(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nNOOP\r\nQUIT\r\n")
        events = drain(session)
        self.assertEqual(
            session.data_to_send(),
            b"554 5.7.1 Go away\r\n" + b"503 5.5.1 Bad sequence of commands\r\n" * 3 + b"221 2.0.0 Bye\r\n",
        )
        self.assertEqual(events, [ConnectionClosing("quit")])

    def test_connect_refused_421_closes(self) -> None:
        """A 421 at connect is sent and the session closes."""
        session = ServerSession("mx.test", checks=frozenset({"connect"}))
        drain(session)
        session.reject(Reply(421, "4.7.0", "Too many connections"))
        self.assertTrue(session.closed)
        self.assertEqual(session.data_to_send(), b"421 4.7.0 Too many connections\r\n")
        self.assertEqual(drain(session), [ConnectionClosing("policy")])

    def test_helo_refused_then_accepted(self) -> None:
        """A refused EHLO leaves the client ungreeted; a second one can be accepted."""
        session = ServerSession("mx.test", checks=frozenset({"helo"}))
        session.data_to_send()
        session.receive_data(b"EHLO bad.test\r\nEHLO good.test\r\n")
        self.assertEqual(drain(session), [HeloReceived("bad.test", True)])
        session.reject(Reply(550, "5.7.1", "No"))
        self.assertIsNone(session.helo)
        self.assertEqual(drain(session), [HeloReceived("good.test", True)])
        session.accept()
        self.assertEqual(drain(session), [Greeted("good.test", True)])
        self.assertEqual(session.helo, "good.test")
        out = session.data_to_send()
        self.assertTrue(out.startswith(b"550 5.7.1 No\r\n250-mx.test\r\n"), out)

    def _auth(self, session: ServerSession, user: str, good: bool) -> list[Any]:
        from txmail.auth import sasl

        session.receive_data(b"EHLO c.test\r\nAUTH PLAIN " + plain(user, "pw") + b"\r\n")
        events = drain(session)
        step = events[-1]
        self.assertIsInstance(step, AuthStep)
        session.accept(sasl.Succeeded(user, None) if good else sasl.Failed("invalid"))
        return drain(session)

    def test_auth_success_refused(self) -> None:
        """A refused successful AUTH is answered with the policy's reply and leaves the client unauthenticated."""
        session = ServerSession(
            "mx.test", auth_enabled=True, plaintext_auth="always", checks=frozenset({"auth"})
        )
        events = self._auth(session, "alice@x.test", True)
        self.assertEqual(events, [AuthFinished("PLAIN", "alice@x.test", True)])
        session.reject(Reply(535, "5.7.8", "Account locked"))
        self.assertIsNone(session.authenticated_user)
        self.assertTrue(session.data_to_send().endswith(b"535 5.7.8 Account locked\r\n"))

    def test_auth_success_accepted(self) -> None:
        """An accepted AUTH sends 235 and then Authenticated."""
        session = ServerSession(
            "mx.test", auth_enabled=True, plaintext_auth="always", checks=frozenset({"auth"})
        )
        self._auth(session, "alice@x.test", True)
        session.accept()
        self.assertEqual(session.authenticated_user, "alice@x.test")
        self.assertTrue(session.data_to_send().endswith(b"235 2.7.0 Authentication successful\r\n"))

    def test_auth_failure(self) -> None:
        """A failed exchange pauses too: accept() gives 535, a 421 rejection closes."""
        session = ServerSession(
            "mx.test", auth_enabled=True, plaintext_auth="always", checks=frozenset({"auth"})
        )
        events = self._auth(session, "alice@x.test", False)
        self.assertEqual(events, [AuthFinished("PLAIN", None, False)])
        session.accept()
        self.assertTrue(session.data_to_send().endswith(b"535 5.7.8 Authentication credentials invalid\r\n"))
        self.assertEqual(session.bad_commands, 1)
        self._auth(session, "alice@x.test", False)
        session.reject(Reply(421, "4.7.0", "Too many failures"))
        self.assertTrue(session.closed)

    def test_421_closes_at_any_stage(self) -> None:
        """A 421 refusal of MAIL or RCPT closes the session after the reply."""
        for command in (b"MAIL FROM:<a@b.test>\r\n", b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"):
            session = ServerSession("mx.test")
            session.receive_data(b"EHLO c.test\r\n" + command)
            drain(session)
            if command.count(b"\r\n") == 2:
                session.accept()
                drain(session)
            session.reject(Reply(421, "4.7.0", "Slow down"))
            self.assertTrue(session.closed)
            self.assertTrue(session.data_to_send().endswith(b"421 4.7.0 Slow down\r\n"))

    def test_unknown_check(self) -> None:
        """An unknown check name is refused."""
        self.assertRaises(ValueError, ServerSession, "mx.test", checks=frozenset({"data"}))


class VerdictTests(SynchronousTestCase):
    """Verdicts validate what they carry and combine in order."""

    def test_reject_needs_a_failure_reply(self) -> None:
        """reject() takes 4xx/5xx replies only, one line."""
        self.assertEqual(Verdict.reject("550 5.7.1 No").reply, Reply(550, "5.7.1", "No"))
        self.assertRaises(ValueError, Verdict.reject, "250 OK")
        self.assertRaises(ValueError, Verdict.reject, "nonsense")
        self.assertRaises(ValueError, Verdict.reject, "550 5.7.1 a\nb")

    def test_header_field_refuses_injection(self) -> None:
        """A header value may fold but never end the field or the header section."""
        self.assertEqual(header_field("X-A", "b"), b"X-A: b\r\n")
        self.assertEqual(header_field("X-A", "b\r\n\tc"), b"X-A: b\r\n\tc\r\n")
        for bad in ("b\r\nX-Evil: 1", "b\r\n\r\nbody", "b\rc", "b\x00"):
            self.assertRaises(ValueError, header_field, "X-A", bad)
        self.assertRaises(ValueError, header_field, "X A", "b")
        self.assertRaises(ValueError, header_field, "X:A", "b")

    def test_milter_verdicts_combine(self) -> None:
        """Body, discard and hold combine: the later body and hold win, a discard stays."""
        v = Verdict.replace_body(b"a").then(Verdict.hold_message("x")).then(Verdict.replace_body(b"b\r"))
        self.assertEqual((v.body, v.hold, v.discard), (b"b\r\n", "x", False))
        self.assertTrue(Verdict.discard_message().then(Verdict.add_header("X-A", "1")).discard)
        self.assertEqual(Verdict.replace_body(b"").body, b"")
        self.assertEqual(Verdict.hold_message("  ").hold, "held by policy")

    def test_then(self) -> None:
        """Delays add up, headers accumulate in order, the last folder wins."""
        v = (
            Verdict.tarpit(1)
            .then(Verdict.add_header("X-A", "1"))
            .then(Verdict.deliver_to("Junk"))
            .then(Verdict(delay=2, headers=(b"X-B: 2\r\n",), folder="Other"))
        )
        self.assertEqual((v.delay, v.headers, v.folder), (3, (b"X-A: 1\r\n", b"X-B: 2\r\n"), "Other"))
        self.assertFalse(v.refused)


class Recorder(Policy):
    """Records every call; answers from ``answers[stage]`` (a Verdict, a Deferred, or an exception)."""

    def __init__(self, name: str, log: list[Any], answers: dict[str, Any] | None = None) -> None:
        self.name = name
        self.log = log
        self.answers = answers or {}

    def _answer(self, stage: str, *details: Any) -> Any:
        self.log.append((self.name, stage, *details))
        answer = self.answers.get(stage)
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer()
        return answer

    def on_connect(self, session: SessionInfo) -> Any:
        return self._answer("connect", session.client_address)

    def on_helo(self, session: SessionInfo, name: str) -> Any:
        return self._answer("helo", name)

    def on_auth(self, session: SessionInfo, username: str | None, succeeded: bool) -> Any:
        return self._answer("auth", username, succeeded)

    def on_mail(self, session: SessionInfo) -> Any:
        assert session.transaction is not None
        return self._answer("mail", session.transaction.mail_from)

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Any:
        return self._answer("rcpt", recipient.address, recipient.accepted)

    def on_data(self, session: SessionInfo, message: MessageInfo) -> Any:
        return self._answer("data", message.size, message.read())

    def on_close(self, session: SessionInfo) -> None:
        self.log.append((self.name, "close"))


class AdapterPolicyTests(ServerTestCase):
    """The adapter asks its policies at every stage and applies their verdicts."""

    def setUp(self) -> None:
        super().setUp()
        self.calls: list[Any] = []

    def run_message(self, *policies: Policy, **kwargs: Any) -> tuple[Any, StringTransport]:
        proto, transport = self.connect(policies=list(policies), **kwargs)
        proto.dataReceived(SEND)
        proto.dataReceived(BODY)
        return proto, transport

    def test_every_stage_in_order(self) -> None:
        """Two policies are asked in order at connect, HELO, MAIL, RCPT and the end of data, and told of the close."""
        a = Recorder("a", self.calls)
        b = Recorder("b", self.calls)
        proto, transport = self.run_message(a, b)
        self.assertEqual(len(self.router.delivered), 1)
        proto.connectionLost(None)
        stages = [(name, stage) for name, stage, *_ in self.calls]
        expected = []
        for stage in ("connect", "helo", "mail", "rcpt", "data"):
            expected += [("a", stage), ("b", stage)]
        self.assertEqual(stages, [*expected, ("a", "close"), ("b", "close")])
        data_call = next(c for c in self.calls if c[1] == "data")
        self.assertEqual(data_call[2], len(b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n"))
        self.assertEqual(data_call[3], b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n")
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"250")

    def test_first_refusal_wins(self) -> None:
        """A refusal at MAIL is the reply; later policies are not asked and no transaction starts."""
        a = Recorder("a", self.calls, {"mail": Verdict.reject("550 5.7.1 Sender blocked")})
        b = Recorder("b", self.calls)
        proto, transport = self.connect(policies=[a, b])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<x@bad.test>\r\nRCPT TO:<alice@example.test>\r\n")
        lines = self.take(transport)
        self.assertIn(b"550 5.7.1 Sender blocked", lines)
        self.assertEqual(lines[-1], b"503 5.5.1 Bad sequence of commands")
        self.assertNotIn(("b", "mail", "x@bad.test"), self.calls)

    def test_final_accept_skips_the_rest(self) -> None:
        """final=True accepts the stage: later policies are not asked at that stage."""
        a = Recorder("a", self.calls, {"connect": Verdict.accept(final=True)})
        b = Recorder("b", self.calls, {"connect": Verdict.reject("554 5.7.1 Blocked")})
        _, transport = self.connect(policies=[a, b])
        self.assertEqual(transport.value(), b"220 mx.example.test ESMTP txmail\r\n")
        self.assertEqual([c[:2] for c in self.calls], [("a", "connect")])

    def test_always_asked_after_final(self) -> None:
        """A policy marked always is still asked after a final accept (not after a refusal)."""

        class Always(Recorder):
            always = True

        a = Recorder(
            "a", self.calls, {"connect": Verdict.accept(final=True), "mail": Verdict.reject("550 5.7.1 No")}
        )
        b = Recorder("b", self.calls)
        c = Always("c", self.calls, {"connect": Verdict.add_header("X-C", "1")})
        d = Recorder("d", self.calls)
        proto, _ = self.connect(policies=[a, b, c, d])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\n")
        self.assertEqual(
            [call[:2] for call in self.calls if call[1] in ("connect", "mail")],
            [("a", "connect"), ("c", "connect"), ("a", "mail")],
        )

    def test_forged_results_removed_after_final_accept(self) -> None:
        """An embedder's final accept at the end of data does not keep forged Authentication-Results."""
        from txmail.policy.authentication import AuthenticationResultsHeader

        a = Recorder("a", self.calls, {"data": Verdict.accept(final=True)})
        proto, _ = self.connect(policies=[a, AuthenticationResultsHeader("mx.example.test")])
        proto.dataReceived(SEND + b"Authentication-Results: mx.example.test; dkim=pass\r\n" + BODY)
        _, data, _ = self.router.delivered[0]
        self.assertNotIn(b"dkim=pass", data)

    def test_connect_refused(self) -> None:
        """A 554 at connect replaces the greeting and MAIL gets 503; a 421 closes."""
        a = Recorder("a", self.calls, {"connect": Verdict.reject("554 5.7.1 Listed")})
        proto, transport = self.connect(policies=[a])
        proto.dataReceived(b"EHLO c.test\r\n")
        self.assertEqual(self.take(transport), [b"554 5.7.1 Listed", b"503 5.5.1 Bad sequence of commands"])
        b = Recorder("b", self.calls, {"connect": Verdict.reject("421 4.7.0 Too many")})
        _, transport = self.connect(policies=[b])
        self.assertEqual(transport.value(), b"421 4.7.0 Too many\r\n")
        self.assertTrue(transport.disconnecting)

    def test_tarpit(self) -> None:
        """Delays of the policies add up and hold the reply back by that much on the clock."""
        a = Recorder("a", self.calls, {"rcpt": Verdict.tarpit(2)})
        b = Recorder("b", self.calls, {"rcpt": Verdict.tarpit(3)})
        proto, transport = self.connect(policies=[a, b])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"220", b"250", b"250"])
        self.clock.advance(4.9)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.take(transport), [b"250 2.1.5 Recipient OK"])

    def test_pending_policy_pauses_pipelined_commands(self) -> None:
        """While a policy's Deferred is pending, pipelined commands wait and replies keep their order."""
        waiting: list[defer.Deferred[Any]] = []

        def later() -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            waiting.append(d)
            return d

        a = Recorder("a", self.calls, {"rcpt": later})
        proto, transport = self.connect(policies=[a])
        proto.dataReceived(SEND)
        self.assertEqual(self.final_codes(self.take(transport)), [b"220", b"250", b"250"])
        self.assertTrue(transport.producerState == "paused")
        waiting[0].callback(Verdict.reject("450 4.7.1 Try later"))
        self.assertEqual(self.take(transport), [b"450 4.7.1 Try later", b"554 5.5.1 No valid recipients"])

    def test_rcpt_sees_router_refusals(self) -> None:
        """on_rcpt sees recipients the router refused; its own refusal replaces the router's reply."""
        a = Recorder("a", self.calls, {"rcpt": Verdict.reject("421 4.7.0 Too many bad recipients")})
        proto, transport = self.connect(policies=[a])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        self.assertIn(("a", "rcpt", "x@elsewhere.test", False), self.calls)
        self.assertEqual(self.take(transport)[-1], b"421 4.7.0 Too many bad recipients")
        self.assertTrue(transport.disconnecting)

    def test_router_refusal_stands(self) -> None:
        """A policy that accepts does not turn the router's refusal into an acceptance."""
        a = Recorder("a", self.calls)
        proto, transport = self.connect(policies=[a])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        self.assertEqual(self.take(transport)[-1], b"554 5.7.1 Relay access denied")

    def test_headers_from_every_stage(self) -> None:
        """Header fields of connect, MAIL, RCPT and data verdicts are added below Return-Path, in order."""
        a = Recorder(
            "a",
            self.calls,
            {
                "connect": Verdict.add_header("X-Connect", "1"),
                "mail": Verdict.add_header("X-Mail", "2"),
                "rcpt": Verdict.add_header("X-Rcpt", "3"),
                "data": Verdict.add_header("X-Data", "4\r\n\tfolded"),
            },
        )
        self.run_message(a)
        _, data, message = self.router.delivered[0]
        lines = data.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"Return-Path: <sender@remote.test>"))
        self.assertEqual(lines[1:6], [b"X-Connect: 1", b"X-Mail: 2", b"X-Rcpt: 3", b"X-Data: 4", b"\tfolded"])
        self.assertTrue(lines[6].startswith(b"Received: from client.test"))
        self.assertTrue(data.endswith(b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n"))
        self.assertEqual(message.size, len(data))
        self.assertEqual(message.data, data)
        self.assertEqual(self.spool_files(), [])

    def test_transaction_headers_do_not_leak(self) -> None:
        """Headers of one transaction's MAIL verdict are not added to the next message."""
        count = iter(range(10))
        a = Recorder("a", self.calls, {"mail": lambda: Verdict.add_header("X-N", str(next(count)))})
        proto, _ = self.run_message(a)
        proto.dataReceived(b"MAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + BODY)
        first, second = (d for _, d, _ in self.router.delivered)
        self.assertIn(b"X-N: 0\r\n", first)
        self.assertNotIn(b"X-N: 1\r\n", first)
        self.assertIn(b"X-N: 1\r\n", second)
        self.assertNotIn(b"X-N: 0\r\n", second)

    def test_edit_headers(self) -> None:
        """A data verdict edits the client's header section only, not our trace fields or the body."""
        a = Recorder(
            "a",
            self.calls,
            {
                "data": Verdict.edit_headers(
                    lambda section: section.replace(b"Subject: hi", b"Subject: [x] hi")
                )
            },
        )
        self.run_message(a)
        _, data, _ = self.router.delivered[0]
        self.assertIn(b"\r\nSubject: [x] hi\r\n\r\nHello\r\n", data)

    def test_large_message_rewritten_on_disk(self) -> None:
        """A message too large to keep in memory gets its header fields through the file copy."""
        a = Recorder(
            "a",
            self.calls,
            {
                "data": lambda: Verdict.add_header("X-Big", "yes").then(
                    Verdict.edit_headers(lambda s: s.replace(b"Subject: big", b"Subject: BIG"))
                )
            },
        )
        proto, _ = self.connect(policies=[a])
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (KEEP_IN_MEMORY // 1000 + 50)
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        proto.dataReceived(body + b".\r\n")
        _, data, message = self.router.delivered[0]
        self.assertIsNone(message.data)
        self.assertIn(b"\r\nX-Big: yes\r\nReceived: ", data)
        self.assertTrue(data.endswith(body.replace(b"Subject: big", b"Subject: BIG")))
        self.assertEqual(message.size, len(data))
        self.assertEqual(self.spool_files(), [])

    def test_folder(self) -> None:
        """A verdict's folder reaches the router in the envelope."""
        a = Recorder("a", self.calls, {"data": Verdict.deliver_to("Junk")})
        self.run_message(a)
        self.assertEqual(self.router.delivered[0][0].folder, "Junk")

    def test_replace_body(self) -> None:
        """A data verdict's body replaces the client's body; the header section and our trace fields stay."""
        a = Recorder("a", self.calls, {"data": Verdict.replace_body(b"new\nbody")})
        self.run_message(a)
        _, data, message = self.router.delivered[0]
        self.assertIn(b"\r\nSubject: hi\r\n\r\nnew\r\nbody\r\n", data)
        self.assertNotIn(b"Hello", data)
        self.assertTrue(data.startswith(b"Return-Path: "))
        self.assertEqual(message.size, len(data))

    def test_replace_body_of_large_message(self) -> None:
        """A large message's body is replaced through the file copy."""
        a = Recorder("a", self.calls, {"data": lambda: Verdict.replace_body(b"short\r\n")})
        proto, _ = self.connect(policies=[a])
        body = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * (KEEP_IN_MEMORY // 1000 + 50)
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        proto.dataReceived(body + b".\r\n")
        _, data, message = self.router.delivered[0]
        self.assertTrue(data.endswith(b"\r\nSubject: big\r\n\r\nshort\r\n"), data[-100:])
        self.assertEqual(message.size, len(data))
        self.assertEqual(self.spool_files(), [])

    def test_discard(self) -> None:
        """A discarded message gets 250 and reaches no one; the spool is empty."""
        a = Recorder("a", self.calls, {"data": Verdict.discard_message()})
        _, transport = self.run_message(a)
        self.assertTrue(self.take(transport)[-1].startswith(b"250 2.0.0 OK"))
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.spool_files(), [])

    def test_discard_at_rcpt_drops_the_message(self) -> None:
        """A discard given at RCPT (as a milter may) takes effect at the end of data."""
        a = Recorder("a", self.calls, {"rcpt": Verdict.discard_message()})
        _, transport = self.run_message(a)
        self.assertTrue(self.take(transport)[-1].startswith(b"250 "))
        self.assertEqual(self.router.delivered, [])

    def test_hold(self) -> None:
        """A held message reaches the router with its hold reason in the envelope."""
        a = Recorder("a", self.calls, {"data": Verdict.hold_message("milter: suspicious\r\n attachment")})
        self.run_message(a)
        self.assertEqual(self.router.delivered[0][0].hold, "milter: suspicious attachment")

    def test_data_refused(self) -> None:
        """A refusal at the end of data is the reply to the dot; nothing is delivered and the spool is empty."""
        a = Recorder("a", self.calls, {"data": Verdict.reject("550 5.7.1 Spam")})
        _, transport = self.run_message(a)
        self.assertEqual(self.take(transport)[-1], b"550 5.7.1 Spam")
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.spool_files(), [])

    def test_failing_policy(self) -> None:
        """A policy that raises fails its stage temporarily: 421 at connect, 451 elsewhere."""
        a = Recorder("a", self.calls, {"rcpt": RuntimeError("bug")})
        _, transport = self.run_message(a)
        self.assertIn(b"451 4.3.0 Requested action aborted: local error in processing", self.take(transport))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        b = Recorder("b", self.calls, {"connect": defer.fail(ValueError("bug"))})
        _, transport = self.connect(policies=[b])
        self.assertEqual(transport.value(), b"421 4.3.0 Service temporarily unavailable, try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_bad_return_value(self) -> None:
        """A policy that returns something other than a Verdict or None fails its stage temporarily."""
        a = Recorder("a", self.calls, {"mail": "yes"})
        proto, transport = self.connect(policies=[a])
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\n")
        self.assertEqual(
            self.take(transport)[-1], b"451 4.3.0 Requested action aborted: local error in processing"
        )
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    def test_lost_during_data_policy(self) -> None:
        """When the client goes away while the data policy runs, the spool file is removed and nothing delivered."""
        waiting: list[defer.Deferred[Any]] = []

        def later() -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            waiting.append(d)
            return d

        a = Recorder("a", self.calls, {"data": later})
        proto, _ = self.run_message(a)
        self.assertEqual(len(self.spool_files()), 1)
        proto.connectionLost(None)
        waiting[0].callback(None)
        self.assertEqual(self.router.delivered, [])
        self.assertEqual(self.spool_files(), [])

    def test_roles(self) -> None:
        """A policy limited to the mta role is not asked on submission."""

        class MTAOnly(Recorder):
            roles = frozenset({"mta"})

        a = MTAOnly("a", self.calls)
        self.connect(
            policies=[a], role="submission", authenticator=Authenticator(FakeDirectory(), clock=self.clock)
        )
        self.assertEqual(self.calls, [])
        self.connect(policies=[a])
        self.assertEqual(self.calls, [("a", "connect", "192.0.2.7")])

    def test_auth_stage(self) -> None:
        """on_auth hears of failures and successes; a refusal of a success leaves the client unauthenticated."""
        directory = FakeDirectory()
        a = Recorder("a", self.calls, {"auth": lambda: None})
        proto, transport = self.connect(
            policies=[a],
            role="submission",
            authenticator=Authenticator(directory, clock=self.clock),
            directory=directory,
            plaintext_auth="always",
        )
        proto.dataReceived(b"EHLO c.test\r\nAUTH PLAIN " + plain("alice@example.test", "wrong") + b"\r\n")
        self.clock.advance(5)  # the authenticator delays failures
        self.assertIn(("a", "auth", None, False), self.calls)
        self.assertEqual(self.take(transport)[-1], b"535 5.7.8 Authentication credentials invalid")
        a.answers["auth"] = Verdict.reject("535 5.7.8 Not from this network")
        proto.dataReceived(b"AUTH PLAIN " + plain("alice@example.test", "secret") + b"\r\n")
        self.clock.advance(5)
        self.assertIn(("a", "auth", "alice@example.test", True), self.calls)
        self.assertEqual(self.take(transport)[-1], b"535 5.7.8 Not from this network")
        self.assertIsNone(proto.session.authenticated_user)
        self.assertIsNone(proto.info.authenticated_user)

    def test_session_info(self) -> None:
        """Policies see the client, its HELO name and the transaction with its recipients."""
        seen: dict[str, Any] = {}

        class Look(Policy):
            def on_data(self, session: SessionInfo, message: MessageInfo) -> None:
                tx = session.transaction
                assert tx is not None
                seen.update(
                    address=session.client_address,
                    port=session.client_port,
                    helo=session.helo,
                    sender=tx.mail_from,
                    domain=tx.sender_domain,
                    rcpts=list(tx.recipients),
                    message_id=tx.message_id,
                    role=session.role,
                )

        self.run_message(Look())
        envelope = self.router.delivered[0][0]
        self.assertEqual(
            seen,
            {
                "address": "192.0.2.7",
                "port": 4321,
                "helo": "client.test",
                "sender": "sender@remote.test",
                "domain": "remote.test",
                "rcpts": ["alice@example.test"],
                "message_id": envelope.message_id,
                "role": "mta",
            },
        )

    def test_no_policies_no_pause(self) -> None:
        """A factory without policies has no engine and greets at once."""
        proto, transport = self.connect()
        self.assertIsNone(proto.factory.policy)
        self.assertEqual(transport.value(), b"220 mx.example.test ESMTP txmail\r\n")


class TrustAndReverseDNSTests(ServerTestCase):
    """The engine marks trusted clients and looks up the others' reverse DNS at connect."""

    def test_trusted_network(self) -> None:
        """A client in trusted_networks is trusted and its reverse DNS is not asked."""
        from txmail.resolver import StaticResolver

        resolver = StaticResolver()
        proto, _ = self.connect(policies=[Policy()], resolver=resolver, trusted_networks=["192.0.2.0/24"])
        self.assertTrue(proto.info.trusted)
        self.assertEqual(resolver.questions, [])
        self.assertIsNone(proto.info.iprev)

    def test_reverse_dns_at_connect(self) -> None:
        """An untrusted client's forward-confirmed name and iprev result are known to the connect policies."""
        from txmail.resolver import StaticResolver

        seen: list[Any] = []

        class Look(Policy):
            def on_connect(self, session: SessionInfo) -> None:
                seen.append((session.trusted, session.client_name, session.iprev))

        resolver = StaticResolver(
            {
                ("7.2.0.192.in-addr.arpa", "PTR"): ["mail.remote.test"],
                ("mail.remote.test", "A"): ["192.0.2.7"],
            }
        )
        proto, _ = self.connect(policies=[Look()], resolver=resolver, trusted_networks=["127.0.0.0/8"])
        self.assertEqual(seen, [(False, "mail.remote.test", "pass")])
        (result,) = proto.info.auth_results
        self.assertEqual((result.method, result.result), ("iprev", "pass"))


class EngineTimeoutTests(ServerTestCase):
    """A stage that takes too long fails temporarily."""

    def test_slow_policy(self) -> None:
        """A policy whose Deferred never fires gets the stage 451 after the engine's timeout; later ones are not asked."""
        from txmail.policy.engine import PolicyEngine

        calls: list[Any] = []
        never: defer.Deferred[Any] = defer.Deferred()
        slow = Recorder("slow", calls, {"mail": lambda: never})
        after = Recorder("after", calls)
        proto, transport = self.connect(policies=[slow, after])
        proto.policy_engine = PolicyEngine([slow, after], role="mta", clock=self.clock, timeout=30)
        proto.dataReceived(b"EHLO c.test\r\nMAIL FROM:<s@r.test>\r\n")
        self.take(transport)
        self.clock.advance(29)
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        self.assertEqual(
            self.take(transport), [b"451 4.3.0 Requested action aborted: local error in processing"]
        )
        self.assertNotIn(("after", "mail", "s@r.test"), calls)

    def test_policy_asks_for_a_longer_stage(self) -> None:
        """A policy's stage_timeout (a milter's content timeout) lengthens the engine's; a shorter one does not shorten it."""
        from txmail.policy.engine import PolicyEngine

        patient = Recorder("patient", [])
        patient.stage_timeout = 400.0  # type: ignore[attr-defined]
        brief = Recorder("brief", [])
        brief.stage_timeout = 5.0  # type: ignore[attr-defined]
        self.assertEqual(PolicyEngine([patient, brief], role="mta", clock=self.clock).timeout, 400.0)
        self.assertEqual(PolicyEngine([brief], role="mta", clock=self.clock).timeout, 120.0)
        patient.roles = frozenset({"submission"})
        self.assertEqual(PolicyEngine([patient], role="mta", clock=self.clock).timeout, 120.0)
