"""
Tests for the sans-IO SMTP client session: the server's bytes in, our
commands and events out.
"""

from __future__ import annotations

import base64
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txmail.smtp.client import (
    MAX_REPLY_LINE,
    ClientEvent,
    ClientSession,
    DotStuffer,
    ReadyForData,
    RelayRequest,
    StartTLS,
    TransactionDone,
    TransactionResult,
    xtext,
)
from txmail.smtp.codes import Reply
from txmail.smtp.dotstuff import DataDecoder, dot_stuff

GREETING = b"220 mx.remote.test ESMTP\r\n"
EHLO_FULL = (
    b"250-mx.remote.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
    b"250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
)
EHLO_BASIC = b"250-mx.remote.test\r\n250 ENHANCEDSTATUSCODES\r\n"
MESSAGE = b"Subject: hi\r\n\r\nHello\r\n.dot\r\n"


def make(recipients: Any = ("bob@remote.test",), **kwargs: Any) -> ClientSession:
    kwargs.setdefault("message", MESSAGE)
    kwargs.setdefault("tls_policy", "none")
    return ClientSession("mta.example.test", "alice@example.test", list(recipients), **kwargs)


def step(session: ClientSession, data: bytes = b"") -> tuple[bytes, list[ClientEvent]]:
    """Feed *data*, drain the events, and return (what the client sends, the events)."""
    session.receive_data(data)
    events = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return session.data_to_send(), events


def done(events: list[ClientEvent]) -> TransactionResult:
    """The result of the TransactionDone event that must end *events*."""
    assert events and isinstance(events[-1], TransactionDone), events
    return events[-1].result


class ReplyParsingTests(SynchronousTestCase):
    def test_multiline_reply_and_enhanced_code(self) -> None:
        """RFC 5321 4.2.1 continuation lines join into one reply; the enhanced code is split off each line."""
        s = make(["a@remote.test", "b@remote.test"])
        step(s, GREETING)
        step(s, EHLO_BASIC)
        step(s, b"250 2.1.0 ok\r\n")
        step(s, b"550-5.1.1 no such\r\n550-5.1.1 user\r\n550 5.1.1 here\r\n")
        out, events = step(s, b"250 2.1.5 ok\r\n")
        self.assertEqual(out, b"DATA\r\n")
        self.assertEqual(s.result, None)
        step(s, b"354 go\r\n")
        out, events = step(s, b"250 2.0.0 queued\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        self.assertEqual(events, [])
        out, events = step(s, b"221 2.0.0 bye\r\n")
        result = done(events)
        self.assertEqual(result.per_recipient["a@remote.test"], Reply(550, "5.1.1", "no such\nuser\nhere"))
        self.assertEqual(result.greeting_reply, Reply(220, "", "mx.remote.test ESMTP"))
        self.assertEqual(result.status("a@remote.test"), "permanent")
        self.assertEqual(result.status("b@remote.test"), "delivered")
        self.assertEqual(result.delivered, ["b@remote.test"])
        self.assertIsNone(result.error)
        self.assertTrue(s.closed)

    def test_byte_at_a_time(self) -> None:
        """Replies split anywhere give the same commands as whole ones; a bare code line is a reply."""
        s = make()
        sent = b""
        for data in (GREETING, EHLO_BASIC, b"250\r\n", b"250 ok\r\n", b"354\r\n", b"250 ok\r\n", b"221\r\n"):
            for i in range(len(data)):
                out, events = step(s, data[i : i + 1])
                sent += out
        self.assertEqual(
            sent,
            b"EHLO mta.example.test\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@remote.test>\r\nDATA\r\n"
            + dot_stuff(MESSAGE)
            + b"QUIT\r\n",
        )
        self.assertEqual(done(events).status("bob@remote.test"), "delivered")

    def test_garbage_reply_is_temporary_failure(self) -> None:
        """A line that is no reply ends the session with a temporary failure, no exception, no QUIT."""
        for garbage in (
            b"hello there\r\n",
            b"2x0 ok\r\n",
            b"600 what\r\n",
            b"250-a\r\n251 b\r\n",
            b"\xff\xfe\r\n",
        ):
            s = make()
            step(s, GREETING)
            out, events = step(s, garbage)
            result = done(events)
            self.assertTrue(result.temporary, garbage)
            self.assertIn("protocol error", result.error or "")
            self.assertEqual(out, b"")
            self.assertTrue(s.closed)
            self.assertEqual(step(s, b"250 ok\r\n"), (b"", []))

    def test_overlong_reply_line(self) -> None:
        """A reply line over MAX_REPLY_LINE octets (with or without its line end) is a protocol error."""
        s = make()
        _out, events = step(s, b"220 " + b"x" * MAX_REPLY_LINE)
        self.assertIn("too long", done(events).error or "")
        s = make()
        step(s, b"220 " + b"x" * 600 + b"\r\n")  # 512 octets must work (RFC 5321 4.5.3.1.5)
        self.assertFalse(s.closed)

    def test_unexpected_reply(self) -> None:
        """A reply that cannot answer the command is a protocol error; what follows the end is ignored."""
        s = make()
        _, events = step(
            s, GREETING + EHLO_BASIC + b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n250 x\r\n"
        )
        self.assertIsNone(done(events).error)
        s = make()
        step(s, GREETING)
        _out, events = step(s, EHLO_BASIC + b"250 ok\r\n250 extra\r\n250 extra\r\n")
        # MAIL 250, RCPT 250, then "250 extra" answers DATA: not 354, not 4xx/5xx.
        self.assertIn("protocol error", done(events).error or "")

    def test_control_characters_in_text(self) -> None:
        """Control characters in reply text are replaced, so Reply never refuses the text."""
        s = make()
        step(s, GREETING)
        step(s, EHLO_BASIC)
        out, _events = step(s, b"550 5.7.1 bad\x00\rguy\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        step(s, b"221 bye\r\n")
        self.assertEqual(s.result.error, "sender refused: 550 5.7.1 bad??guy")  # type: ignore[union-attr]


class GreetingTests(SynchronousTestCase):
    def test_ehlo_falls_back_to_helo(self) -> None:
        """RFC 5321 4.1.4: a 5xx to EHLO makes the client try HELO, then no extension is used."""
        s = make(needs_8bit=False)
        out, _ = step(s, GREETING)
        self.assertEqual(out, b"EHLO mta.example.test\r\n")
        out, _ = step(s, b"502 5.5.1 what\r\n")
        self.assertEqual(out, b"HELO mta.example.test\r\n")
        out, _ = step(s, b"250 mx.remote.test\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")
        self.assertEqual(s.extensions, {})

    def test_helo_refused(self) -> None:
        """When HELO fails too, the transaction fails with its reply."""
        s = make()
        step(s, GREETING)
        step(s, b"500 no\r\n")
        out, _ = step(s, b"550 go away\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertFalse(result.temporary)
        self.assertEqual(result.status("bob@remote.test"), "permanent")

    def test_greeting_refused(self) -> None:
        """A 554 greeting fails permanently (after QUIT, RFC 5321 3.1); a 4xx one temporarily."""
        for greeting, temporary in ((b"554 5.7.1 no service\r\n", False), (b"450 busy\r\n", True)):
            s = make()
            out, events = step(s, greeting)
            self.assertEqual(out, b"QUIT\r\n")
            out, events = step(s, b"221 bye\r\n")
            result = done(events)
            self.assertEqual(result.temporary, temporary)
            self.assertEqual(result.greeting_reply.code, int(greeting[:3]))  # type: ignore[union-attr]
            self.assertEqual(result.status("bob@remote.test"), "temporary" if temporary else "permanent")

    def test_unexpected_greeting(self) -> None:
        """A 250 greeting is a protocol error."""
        s = make()
        _out, events = step(s, b"250 hi\r\n")
        self.assertTrue(done(events).temporary)

    def test_extensions_parsed(self) -> None:
        """EHLO keywords are upper-cased with their parameters."""
        s = make(tls_policy="none")
        step(s, GREETING)
        step(s, b"250-mx\r\n250-size 100\r\n250-AUTH PLAIN LOGIN\r\n250 pipelining\r\n")
        self.assertEqual(s.extensions, {"SIZE": "100", "AUTH": "PLAIN LOGIN", "PIPELINING": ""})


class Reply421Tests(SynchronousTestCase):
    def test_421_at_every_point(self) -> None:
        """A 421 wherever a reply is due ends the session at once, temporary, without QUIT (RFC 5321 3.8)."""
        script = [GREETING, EHLO_BASIC, b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"]
        for n in range(len(script) + 1):
            s = make()
            for data in script[:n]:
                step(s, data)
            out, events = step(s, b"421 4.3.2 shutting down\r\n")
            result = done(events)
            self.assertEqual(out, b"", n)
            self.assertTrue(result.temporary, n)
            self.assertIn("421 4.3.2 shutting down", result.error or "")
            self.assertEqual(result.status("bob@remote.test"), "temporary")

    def test_421_to_quit_keeps_success(self) -> None:
        """Once the message was accepted, a 421 to QUIT changes nothing."""
        s = make()
        step(s, GREETING + EHLO_BASIC + b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
        _out, events = step(s, b"421 bye\r\n")
        self.assertEqual(done(events).status("bob@remote.test"), "delivered")

    def test_421_to_pipelined_rcpt(self) -> None:
        """A 421 in the middle of pipelined replies records it for that recipient and closes."""
        s = make(["a@remote.test", "b@remote.test"])
        step(s, GREETING)
        step(s, b"250-mx\r\n250 PIPELINING\r\n")
        _out, events = step(s, b"250 ok\r\n250 ok\r\n421 4.7.0 bye\r\n")
        result = done(events)
        self.assertEqual(result.per_recipient["b@remote.test"].code, 421)
        self.assertEqual(result.status("a@remote.test"), "temporary")
        self.assertEqual(result.status("b@remote.test"), "temporary")


class TransactionTests(SynchronousTestCase):
    def pipelined(self, recipients: Any = ("bob@remote.test",), **kwargs: Any) -> tuple[ClientSession, bytes]:
        s = make(recipients, **kwargs)
        step(s, GREETING)
        out, _ = step(s, EHLO_FULL)
        return s, out

    def test_pipelining_sends_one_group(self) -> None:
        """RFC 2920: MAIL, every RCPT and DATA in one write; replies matched in order."""
        s, out = self.pipelined(["a@remote.test", "b@remote.test", "c@remote.test"])
        self.assertEqual(
            out,
            b"MAIL FROM:<alice@example.test> SIZE=28\r\nRCPT TO:<a@remote.test>\r\n"
            b"RCPT TO:<b@remote.test>\r\nRCPT TO:<c@remote.test>\r\nDATA\r\n",
        )
        out, _ = step(s, b"250 ok\r\n250 a ok\r\n450 4.2.0 b later\r\n550 5.1.1 c no\r\n354 go\r\n")
        self.assertEqual(out, dot_stuff(MESSAGE))
        out, _ = step(s, b"250 2.0.0 queued\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertEqual(result.per_recipient["a@remote.test"].text, "a ok")
        self.assertEqual(
            [result.status(r) for r in ("a@remote.test", "b@remote.test", "c@remote.test")],
            ["delivered", "temporary", "permanent"],
        )
        self.assertEqual(result.reply_for("b@remote.test"), Reply(450, "4.2.0", "b later"))
        self.assertEqual(result.reply_for("a@remote.test"), Reply(250, "2.0.0", "queued"))
        self.assertTrue(result.dsn)  # EHLO_FULL advertises DSN

    def test_without_pipelining_one_command_at_a_time(self) -> None:
        """Without PIPELINING each command waits for the previous reply; refused RCPTs don't stop the others."""
        s = make(["a@remote.test", "b@remote.test"])
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")
        out, _ = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"RCPT TO:<a@remote.test>\r\n")
        out, _ = step(s, b"550 no\r\n")
        self.assertEqual(out, b"RCPT TO:<b@remote.test>\r\n")
        out, _ = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"DATA\r\n")

    def test_all_recipients_refused_no_data(self) -> None:
        """Without pipelining, no DATA when every RCPT was refused; QUIT instead."""
        s = make(["a@remote.test", "b@remote.test"])
        step(s, GREETING + EHLO_BASIC + b"250 ok\r\n550 no\r\n")
        out, _ = step(s, b"451 later\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertEqual(result.error, "all recipients were refused")
        self.assertTrue(result.temporary)
        self.assertEqual(result.status("a@remote.test"), "permanent")
        self.assertEqual(result.status("b@remote.test"), "temporary")
        self.assertIsNone(result.message_reply)

    def test_all_recipients_refused_pipelined(self) -> None:
        """Pipelined: DATA refused after all RCPTs failed; no content is sent."""
        s, _ = self.pipelined(["a@remote.test"])
        out, _ = step(s, b"250 ok\r\n550 no\r\n554 5.5.1 no valid recipients\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertEqual(result.status("a@remote.test"), "permanent")
        self.assertIsNone(result.message_reply)

    def test_pipelined_data_accepted_without_recipients(self) -> None:
        """RFC 2920 3.1: if DATA gets 354 though no RCPT worked, a single dot ends the empty message."""
        s, _ = self.pipelined(["a@remote.test"])
        out, _ = step(s, b"250 ok\r\n550 no\r\n354 go\r\n")
        self.assertEqual(out, b".\r\nQUIT\r\n")
        out, events = step(s, b"554 no recipients\r\n221 bye\r\n")
        self.assertEqual(done(events).status("a@remote.test"), "permanent")

    def test_pipelined_mail_refused(self) -> None:
        """A refused MAIL decides every recipient; the 503s to the pipelined RCPTs are not theirs."""
        s, _ = self.pipelined(["a@remote.test"])
        out, _ = step(s, b"451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n503 5.5.1 no MAIL\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertEqual(result.per_recipient, {})
        self.assertTrue(result.temporary)
        self.assertEqual(result.status("a@remote.test"), "temporary")
        self.assertIn("sender refused: 451 4.3.0 try later", result.error or "")

    def test_message_refused(self) -> None:
        """The reply after the dot applies to every accepted recipient."""
        s, _ = self.pipelined(["a@remote.test", "b@remote.test"])
        step(s, b"250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n")
        out, _ = step(s, b"554 5.7.1 spam\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertEqual(result.message_reply, Reply(554, "5.7.1", "spam"))
        self.assertFalse(result.temporary)
        self.assertEqual(result.delivered, [])
        self.assertEqual(result.status("b@remote.test"), "permanent")

    def test_data_refused(self) -> None:
        """A 4xx to DATA is the message reply for the accepted recipients."""
        s, _ = self.pipelined()
        _out, _ = step(s, b"250 ok\r\n250 ok\r\n451 4.3.0 not now\r\n221 bye\r\n")
        self.assertEqual(s.result.status("bob@remote.test"), "temporary")  # type: ignore[union-attr]
        self.assertEqual(s.result.message_reply.code, 451)  # type: ignore[union-attr]

    def test_size_refused_before_mail(self) -> None:
        """RFC 1870 6: a message over the advertised SIZE fails permanently before MAIL."""
        s = make(size=20000)
        step(s, GREETING)
        out, _ = step(s, EHLO_FULL)
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        result = done(events)
        self.assertFalse(result.temporary)
        self.assertIn("5.3.4", result.error or "")
        self.assertIn("10000", result.error or "")
        self.assertEqual(result.status("bob@remote.test"), "permanent")

    def test_size_zero_is_no_limit(self) -> None:
        """RFC 1870 4: SIZE 0 (or without a number) sets no limit; SIZE= still goes on MAIL."""
        s = make(size=20000)
        step(s, GREETING)
        out, _ = step(s, b"250-mx\r\n250 SIZE 0\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test> SIZE=20000\r\n")

    def test_8bitmime(self) -> None:
        """RFC 6152: BODY=8BITMIME when needed and offered; a permanent failure when not offered."""
        s, out = self.pipelined(needs_8bit=True)
        self.assertTrue(out.startswith(b"MAIL FROM:<alice@example.test> SIZE=28 BODY=8BITMIME\r\n"))
        s = make(needs_8bit=True)
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertFalse(result.temporary)
        self.assertIn("remote server does not support 8BITMIME", result.error or "")

    def test_smtputf8(self) -> None:
        """RFC 6531: SMTPUTF8 on MAIL when needed (a non-ASCII address is enough); failure when not offered."""
        s, out = self.pipelined(["jörg@remote.test"])
        self.assertTrue(out.startswith(b"MAIL FROM:<alice@example.test> SIZE=28 SMTPUTF8\r\n"))
        self.assertIn("RCPT TO:<jörg@remote.test>\r\n".encode(), out)
        s = make(needs_smtputf8=True)
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertFalse(result.temporary)
        self.assertIn("remote server does not support SMTPUTF8", result.error or "")

    def test_dsn_params_only_when_advertised(self) -> None:
        """RFC 3461: RET/ENVID and NOTIFY/ORCPT go out only to a server offering DSN."""
        recipients = [
            ("bob@remote.test", {"NOTIFY": "FAILURE,DELAY", "ORCPT": "rfc822;" + xtext("bob@remote.test")})
        ]
        params = {"RET": "HDRS", "ENVID": xtext("id 1+2")}
        s, out = self.pipelined(recipients, mail_params=params)
        self.assertEqual(
            out,
            b"MAIL FROM:<alice@example.test> SIZE=28 RET=HDRS ENVID=id+201+2B2\r\n"
            b"RCPT TO:<bob@remote.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;bob@remote.test\r\nDATA\r\n",
        )
        s = make(recipients, mail_params=params)
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")
        out, _ = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"RCPT TO:<bob@remote.test>\r\n")

    def test_null_sender_and_duplicates(self) -> None:
        """The null reverse-path is <>; a recipient listed twice gets one RCPT."""
        s = ClientSession("me.test", "", ["a@remote.test", "a@remote.test"], message=b"x", tls_policy="none")
        out, _ = step(s, GREETING + EHLO_BASIC)
        self.assertEqual(out, b"EHLO me.test\r\nMAIL FROM:<>\r\n")
        out, _ = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"RCPT TO:<a@remote.test>\r\n")
        out, _ = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"DATA\r\n")

    def test_caller_mistakes_raise(self) -> None:
        """Bad arguments are ValueErrors at construction, so nothing can inject a command."""
        bad: list[dict[str, Any]] = [
            {"recipients": ["a@b>\r\nRSET"]},
            {"recipients": []},
            {"recipients": [("a@b", {"FOO": "x"})]},
            {"recipients": [("a@b", {"NOTIFY": "x y"})]},
            {"mail_params": {"ENVID": "a=b"}},
            {"tls_policy": "sometimes"},
        ]
        for kwargs in bad:
            kwargs.setdefault("recipients", ["a@b"])
            self.assertRaises(ValueError, make, **kwargs)
        self.assertRaises(ValueError, ClientSession, "my host", "a@b", ["c@d"])

    def test_streamed_message(self) -> None:
        """Without message bytes, ReadyForData lets the adapter stream chunks; the stuffing spans chunks."""
        s = make(message=None, size=100)
        step(s, GREETING + EHLO_FULL)
        self.assertRaises(RuntimeError, s.send_data, b"early")
        out, events = step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(events, [ReadyForData()])
        self.assertEqual(s.waiting_for, "data")
        s.send_data(b"Subject: x\r\n\r\nline\r")
        s.send_data(b"\n.")
        s.send_data(b"dot\r\n.\r")
        s.end_data()
        self.assertEqual(s.data_to_send(), b"Subject: x\r\n\r\nline\r\n..dot\r\n..\r\n.\r\n")
        self.assertEqual(s.waiting_for, "end of data")
        out, events = step(s, b"250 ok\r\n")
        self.assertEqual(out, b"QUIT\r\n")

    def test_timeout_and_connection_lost(self) -> None:
        """The adapter's timer and a lost connection give temporary failures naming the step."""
        s = make()
        step(s, GREETING)
        self.assertEqual(s.waiting_for, "EHLO")
        s.timeout()
        result = done(step(s)[1])
        self.assertEqual(result.error, "timeout waiting for EHLO")
        self.assertTrue(result.temporary)
        s = make()
        s.connection_lost()
        self.assertEqual(done(step(s)[1]).error, "connection lost while waiting for greeting")

    def test_connection_lost_after_message_accepted(self) -> None:
        """Losing the connection while waiting for QUIT's reply keeps the delivery."""
        s = make()
        step(s, GREETING + EHLO_BASIC + b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
        self.assertEqual(s.waiting_for, "QUIT")
        s.connection_lost("gone")
        result = done(step(s)[1])
        self.assertIsNone(result.error)
        self.assertEqual(result.delivered, ["bob@remote.test"])


class ReuseTests(SynchronousTestCase):
    """keep_open: several transactions on one connection (RSET between them)."""

    def open_session(self, ehlo: bytes = EHLO_FULL, **kwargs: Any) -> ClientSession:
        s = make(keep_open=True, **kwargs)
        step(s, GREETING)
        step(s, ehlo)
        return s

    def test_two_transactions_one_connection(self) -> None:
        """After 250 the session goes idle (no QUIT); the next transaction starts with RSET."""
        s = self.open_session()
        out, events = step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        self.assertEqual(out, dot_stuff(MESSAGE))
        out, events = step(s, b"250 2.0.0 first queued\r\n")
        self.assertEqual(out, b"")  # no QUIT
        first = done(events)
        self.assertEqual(first.delivered, ["bob@remote.test"])
        self.assertTrue(s.idle)
        self.assertFalse(s.closed)
        self.assertIsNone(s.waiting_for)
        s.next_transaction("carol@example.test", ["dave@remote.test"], message=b"Subject: 2\r\n\r\nx\r\n")
        out, events = step(s)
        self.assertEqual((out, events), (b"RSET\r\n", []))
        self.assertEqual(s.waiting_for, "RSET")
        out, _ = step(s, b"250 2.0.0 reset\r\n")
        self.assertEqual(
            out, b"MAIL FROM:<carol@example.test> SIZE=17\r\nRCPT TO:<dave@remote.test>\r\nDATA\r\n"
        )
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        out, events = step(s, b"250 2.0.0 second queued\r\n")
        second = done(events)
        self.assertEqual(second.delivered, ["dave@remote.test"])
        self.assertEqual(second.message_reply, Reply(250, "2.0.0", "second queued"))
        self.assertNotIn("bob@remote.test", second.per_recipient)
        self.assertEqual(first.message_reply, Reply(250, "2.0.0", "first queued"))
        self.assertEqual(s.transactions, 2)
        s.quit()
        out, events = step(s)
        self.assertEqual(out, b"QUIT\r\n")
        out, events = step(s, b"221 bye\r\n")
        self.assertEqual(events, [])  # no transaction ended with the QUIT
        self.assertTrue(s.closed)
        self.assertIs(s.result, second)

    def test_refused_transactions_leave_it_usable(self) -> None:
        """MAIL, RCPT, DATA and content refusals and a SIZE check end the transaction, not the connection."""
        s = self.open_session(ehlo=EHLO_BASIC)
        out, events = step(s, b"550 5.7.1 sender refused\r\n")
        self.assertEqual((out, done(events).status("bob@remote.test"), s.idle), (b"", "permanent", True))
        cases = [
            ([b"250 ok\r\n", b"550 5.1.1 no such user\r\n"], "permanent"),
            ([b"250 ok\r\n", b"250 ok\r\n", b"451 4.3.0 DATA later\r\n"], "temporary"),
            ([b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n", b"554 5.6.0 content refused\r\n"], "permanent"),
        ]
        for replies, status in cases:
            s.next_transaction("alice@example.test", ["bob@remote.test"], message=MESSAGE)
            step(s)
            events = step(s, b"250 reset\r\n")[1]
            for reply in replies:
                events = step(s, reply)[1]
            self.assertEqual(done(events).status("bob@remote.test"), status, replies)
            self.assertTrue(s.idle)
        s.next_transaction("alice@example.test", ["bob@remote.test"], message=b"x" * 50, needs_8bit=True)
        step(s)
        out, events = step(s, b"250 reset\r\n")
        self.assertEqual(out, b"")  # 8BITMIME not offered: failed before MAIL
        self.assertIn("8BITMIME", done(events).error or "")
        self.assertTrue(s.idle)

    def test_pipelined_refusal_waits_for_the_last_reply(self) -> None:
        """DATA accepted with no recipient: the lone dot's reply comes before the session is idle."""
        s = self.open_session()
        out, events = step(s, b"250 ok\r\n550 5.1.1 no\r\n354 go\r\n")
        self.assertEqual((out, events), (b".\r\n", []))
        self.assertFalse(s.idle)
        out, events = step(s, b"554 no valid recipients\r\n")
        self.assertEqual(done(events).status("bob@remote.test"), "permanent")
        self.assertTrue(s.idle)

    def test_session_failures_still_quit(self) -> None:
        """A failure of the session itself (TLS required, AUTH) is not kept open."""
        s = make(keep_open=True, tls_policy="verify")
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"QUIT\r\n")
        self.assertFalse(s.idle)

    def test_stale_connection(self) -> None:
        """A reused connection that dies, says 421 or refuses RSET is stale; a later failure is not."""
        for death in ("lost", "421", "timeout", "500"):
            s = self.open_session()
            step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
            done(step(s, b"250 queued\r\n")[1])
            s.next_transaction("alice@example.test", ["bob@remote.test"], message=MESSAGE)
            step(s)
            if death == "lost":
                s.connection_lost()
                events = step(s)[1]
            elif death == "421":
                events = step(s, b"421 4.4.2 idle too long\r\n")[1]
            elif death == "500":
                out, events = step(s, b"500 5.5.1 what?\r\n")  # a server without RSET
                self.assertEqual(out, b"QUIT\r\n")
                events += step(s, b"221 bye\r\n")[1]
            else:
                s.timeout()
                events = step(s)[1]
            result = done(events)
            self.assertTrue(s.stale, death)
            self.assertTrue(result.temporary)
            self.assertEqual(result.per_recipient, {})
            self.assertTrue(s.closed)
        s = self.open_session()
        s.connection_lost()  # during the first transaction: not a reused connection
        self.assertFalse(s.stale)
        s = self.open_session()
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        done(step(s, b"250 queued\r\n")[1])
        s.next_transaction("alice@example.test", ["bob@remote.test"], message=MESSAGE)
        step(s)
        step(s, b"250 reset\r\n")
        s.connection_lost()  # after the RSET reply: the server may have seen MAIL
        self.assertFalse(s.stale)

    def test_lost_while_idle(self) -> None:
        """The server closing an idle connection ends the session without another TransactionDone."""
        s = self.open_session()
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        first = done(step(s, b"250 queued\r\n")[1])
        s.connection_lost()
        self.assertEqual(step(s), (b"", []))
        self.assertTrue(s.closed)
        self.assertIs(s.result, first)

    def test_misuse(self) -> None:
        """next_transaction and quit only on an idle session."""
        s = self.open_session()
        self.assertRaises(RuntimeError, s.next_transaction, "a@example.test", ["b@remote.test"])
        self.assertRaises(RuntimeError, s.quit)
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        done(step(s, b"250 queued\r\n")[1])
        self.assertRaises(ValueError, s.next_transaction, "a@example.test", [])
        self.assertTrue(s.idle)  # a refused call changes nothing

    def test_without_keep_open_unchanged(self) -> None:
        """Without keep_open a delivered message is still followed by QUIT and the session closes."""
        s = make()
        step(s, GREETING)
        step(s, EHLO_FULL)
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        out, events = step(s, b"250 queued\r\n")
        self.assertEqual((out, events), (b"QUIT\r\n", []))
        self.assertFalse(s.idle)


_SERVER_SAYS = st.sampled_from(
    [
        b"220 mx ESMTP\r\n",
        EHLO_FULL,
        EHLO_BASIC,
        *[b"250 2.0.0 ok\r\n"] * 8,  # mostly a server that goes along: transactions complete
        *[b"354 go\r\n"] * 2,
        *["next"] * 5,
        *["deliver"] * 3,  # next transaction (when idle) and a server accepting all of it
        b"421 4.4.2 closing\r\n",
        b"450 4.2.0 later\r\n",
        b"500 5.5.1 what\r\n",
        b"550 5.1.1 no\r\n",
        b"221 bye\r\n",
        b"garbage\r\n",
        b"25",
        b"0 split\r\n",
        "lost",
        "timeout",
        "quit",
    ]
)


class ReuseFuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.booleans(), st.lists(_SERVER_SAYS, max_size=40))
    def test_one_result_per_transaction(self, pipelining: bool, script: list[Any]) -> None:
        """
        Whatever a server says after a first delivered message, a keep_open
        session never raises, ends each transaction it started with exactly
        one TransactionDone (none for a QUIT or a loss while idle), and is
        idle only with nothing in flight.
        """
        s = make(keep_open=True, tls_policy="none", message=MESSAGE)
        step(s, GREETING)
        step(s, EHLO_FULL if pipelining else EHLO_BASIC)
        for reply in (b"250 ok\r\n", b"250 ok\r\n", b"354 go\r\n"):
            step(s, reply)
        results = len(step(s, b"250 queued\r\n")[1])
        self.assertTrue(s.idle)
        for item in script:
            if s.closed:
                break
            if item in ("next", "deliver") and s.idle:
                s.next_transaction("a@example.test", ["b@remote.test"], message=MESSAGE)
            if item == "next":
                continue
            if item == "quit":
                if s.idle:
                    s.quit()
                continue
            if item == "lost":
                s.connection_lost()
            elif item == "timeout":
                s.timeout()
            elif item == "deliver":
                s.receive_data(b"250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n250 queued\r\n")
            else:
                s.receive_data(item)
            _, events = step(s)
            done_events = [e for e in events if isinstance(e, TransactionDone)]
            results += len(done_events)
            for event in events:
                self.assertIsInstance(event, (TransactionDone, ReadyForData, StartTLS))
                if isinstance(event, ReadyForData):
                    s.end_data()
            if s.idle:
                self.assertIsNone(s.waiting_for)
                self.assertIsNotNone(s.result)
            self.assertLessEqual(results, s.transactions)
            self.assertGreaterEqual(results, s.transactions - 1)  # at most the current one is open
        if s.closed or s.idle:
            self.assertEqual(results, s.transactions)


class TLSTests(SynchronousTestCase):
    def test_starttls_then_ehlo_again(self) -> None:
        """RFC 3207: STARTTLS, 220, StartTLS event, then EHLO again with the old extensions forgotten."""
        s = make(tls_policy="opportunistic")
        step(s, GREETING)
        out, _ = step(s, EHLO_FULL)
        self.assertEqual(out, b"STARTTLS\r\n")
        out, events = step(s, b"220 2.0.0 go ahead\r\n250 injected\r\n")
        self.assertEqual((out, events), (b"", [StartTLS()]))
        self.assertEqual(s.waiting_for, "TLS")
        step(s, b"250 also injected\r\n")  # before the handshake: dropped
        s.tls_started()
        self.assertTrue(s.tls)
        self.assertEqual(s.extensions, {})
        out, events = step(s)
        self.assertEqual(out, b"EHLO mta.example.test\r\n")
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")
        result = done(step(s, b"250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n221 bye\r\n")[1])
        self.assertTrue(result.tls)
        self.assertEqual(result.delivered, ["bob@remote.test"])

    def test_tls_started_without_event(self) -> None:
        """tls_started() out of turn is the adapter's bug."""
        self.assertRaises(RuntimeError, make().tls_started)

    def test_opportunistic_without_starttls(self) -> None:
        """Opportunistic TLS goes on in the clear when STARTTLS is not offered or refused."""
        s = make(tls_policy="opportunistic")
        out, _ = step(s, GREETING + EHLO_BASIC)
        self.assertEqual(out, b"EHLO mta.example.test\r\nMAIL FROM:<alice@example.test>\r\n")
        s = make(tls_policy="opportunistic")
        step(s, GREETING + EHLO_FULL)
        out, _ = step(s, b"454 4.7.0 TLS not available\r\n")
        self.assertTrue(out.startswith(b"MAIL FROM:"))
        self.assertFalse(s.tls)

    def test_policy_none_ignores_starttls(self) -> None:
        """Policy "none" never sends STARTTLS."""
        s = make(tls_policy="none")
        out, _ = step(s, GREETING + EHLO_FULL)
        self.assertTrue(out.endswith(b"DATA\r\n"))
        self.assertNotIn(b"STARTTLS", out)

    def test_verify_requires_tls(self) -> None:
        """With "verify", no STARTTLS offered or a refused STARTTLS fails temporarily: TLS required."""
        s = make(tls_policy="verify")
        step(s, GREETING)
        out, _ = step(s, EHLO_BASIC)
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertTrue(result.temporary)
        self.assertIn("TLS required", result.error or "")
        s = make(tls_policy="verify")
        step(s, GREETING + EHLO_FULL)
        out, _ = step(s, b"454 4.7.0 no\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertIn("TLS required", result.error or "")
        self.assertEqual(result.status("bob@remote.test"), "temporary")

    def test_verify_after_helo_fallback(self) -> None:
        """HELO has no STARTTLS: "verify" fails, "opportunistic" goes on."""
        s = make(tls_policy="verify")
        step(s, GREETING + b"500 no EHLO\r\n")
        out, _ = step(s, b"250 hi\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        s = make(tls_policy="opportunistic")
        step(s, GREETING + b"500 no EHLO\r\n")
        out, _ = step(s, b"250 hi\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")

    def test_implicit_tls_satisfies_verify(self) -> None:
        """An implicit-TLS connection (port 465) needs no STARTTLS, even with "verify"."""
        s = make(tls_policy="verify", tls_active=True)
        out, _ = step(s, GREETING + EHLO_FULL)
        self.assertEqual(
            out.split(b"\r\n")[:2], [b"EHLO mta.example.test", b"MAIL FROM:<alice@example.test> SIZE=28"]
        )


class AuthTests(SynchronousTestCase):
    EHLO_AUTH = b"250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n"

    def tls_session(self, ehlo: bytes = EHLO_AUTH, **kwargs: Any) -> tuple[ClientSession, bytes]:
        s = make(tls_policy="opportunistic", auth=("alice", "s3cret"), **kwargs)
        step(s, GREETING + ehlo + b"220 go\r\n")
        s.tls_started()
        step(s)
        out, _ = step(s, ehlo)
        return s, out

    def test_kept_connection_stays_authenticated(self) -> None:
        """RFC 4954 section 4: AUTH once per session; a reused connection's next transaction starts with RSET, MAIL."""
        s, out = self.tls_session(keep_open=True)
        self.assertTrue(out.startswith(b"AUTH PLAIN "))
        out, _ = step(s, b"235 2.7.0 ok\r\n")
        self.assertTrue(out.startswith(b"MAIL FROM:"))
        step(s, b"250 ok\r\n250 ok\r\n354 go\r\n")
        done(step(s, b"250 queued\r\n")[1])
        s.next_transaction("alice@example.test", ["carol@remote.test"], message=MESSAGE)
        self.assertEqual(step(s)[0], b"RSET\r\n")
        out, _ = step(s, b"250 reset\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")
        self.assertTrue(s.tls)

    def test_auth_plain(self) -> None:
        """AUTH PLAIN with an initial response (RFC 4616), then the transaction."""
        s, out = self.tls_session()
        self.assertEqual(out, b"AUTH PLAIN " + base64.b64encode(b"\0alice\0s3cret") + b"\r\n")
        out, _ = step(s, b"235 2.7.0 ok\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")

    def test_auth_login(self) -> None:
        """AUTH LOGIN when PLAIN is not offered."""
        s, out = self.tls_session(b"250-mx\r\n250-AUTH LOGIN\r\n250 STARTTLS\r\n")
        self.assertEqual(out, b"AUTH LOGIN\r\n")
        out, _ = step(s, b"334 VXNlcm5hbWU6\r\n")
        self.assertEqual(out, base64.b64encode(b"alice") + b"\r\n")
        out, _ = step(s, b"334 UGFzc3dvcmQ6\r\n")
        self.assertEqual(out, base64.b64encode(b"s3cret") + b"\r\n")
        out, _ = step(s, b"235 ok\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test>\r\n")

    def test_auth_failure_is_temporary(self) -> None:
        """535 fails the transaction (temporarily: a configuration problem must not bounce mail)."""
        s, _ = self.tls_session()
        out, _ = step(s, b"535 5.7.8 bad credentials\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertTrue(result.temporary)
        self.assertIn("authentication failed: 535 5.7.8", result.error or "")
        self.assertNotIn("s3cret", result.error or "")

    def test_no_auth_in_clear(self) -> None:
        """Without TLS, credentials are not sent unless allow_plaintext_auth."""
        s = make(tls_policy="opportunistic", auth=("alice", "s3cret"))
        out, _ = step(s, GREETING + b"250-mx\r\n250 AUTH PLAIN\r\n")
        self.assertEqual(out, b"EHLO mta.example.test\r\nQUIT\r\n")
        self.assertIn("requires TLS", done(step(s, b"221 bye\r\n")[1]).error or "")
        s = make(tls_policy="none", auth=("alice", "s3cret"), allow_plaintext_auth=True)
        out, _ = step(s, GREETING + b"250-mx\r\n250 AUTH PLAIN\r\n")
        self.assertIn(b"AUTH PLAIN ", out)

    def test_auth_not_offered(self) -> None:
        """No AUTH, or no mechanism we speak: fail (QUIT) rather than send unauthenticated."""
        _, out = self.tls_session(b"250-mx\r\n250 STARTTLS\r\n")
        self.assertEqual(out, b"QUIT\r\n")
        _, out = self.tls_session(b"250-mx\r\n250-AUTH CRAM-MD5\r\n250 STARTTLS\r\n")
        self.assertEqual(out, b"QUIT\r\n")

    def test_unexpected_challenge_cancelled(self) -> None:
        """A 334 to AUTH PLAIN with an initial response is answered "*" (cancel), then QUIT."""
        s, _ = self.tls_session()
        out, _ = step(s, b"334 \r\n")
        self.assertEqual(out, b"*\r\nQUIT\r\n")
        result = done(step(s, b"501 cancelled\r\n221 bye\r\n")[1])
        self.assertIn("authentication failed", result.error or "")


class DotStufferTests(SynchronousTestCase):
    def encode(self, chunks: list[bytes]) -> bytes:
        d = DotStuffer()
        return b"".join(d.feed(c) for c in chunks) + d.finish()

    def test_matches_dot_stuff_for_crlf_messages(self) -> None:
        """For CRLF messages the encoder is dot_stuff, however the message is cut."""
        for message in (b"", b".", b".\r\n", b"a\r\n.\r\n.b\r\n", b"..x\r\n..", MESSAGE, b"no newline"):
            for cut in range(len(message) + 1):
                self.assertEqual(
                    self.encode([message[:cut], message[cut:]]), dot_stuff(message), (message, cut)
                )

    def test_bare_line_ends_normalised(self) -> None:
        """RFC 5321 2.3.8: bare LF and bare CR leave as CRLF, so <LF>.<LF> cannot smuggle."""
        self.assertEqual(self.encode([b"a\n.\nb"]), b"a\r\n..\r\nb\r\n.\r\n")
        self.assertEqual(self.encode([b"a\r.\r", b"b\r"]), b"a\r\n..\r\nb\r\n.\r\n")
        self.assertEqual(self.encode([b"a\r\r\n.x"]), b"a\r\n\r\n..x\r\n.\r\n")

    def test_round_trip_through_server_decoder(self) -> None:
        """What we send decodes (by the server's DataDecoder) to the message with CRLF line ends."""
        message = b"Subject: t\r\n\r\n.\r\n..\r\nx\r\n.\r\n.end"
        encoded = self.encode([message[i : i + 3] for i in range(0, len(message), 3)])
        decoder = DataDecoder()
        content, rest = decoder.feed(encoded)
        self.assertEqual(content, message + b"\r\n")
        self.assertEqual(rest, b"")
        self.assertFalse(decoder.bare_line_ending)

    def test_xtext(self) -> None:
        """RFC 3461 4: "+", "=", space, controls and non-ASCII are +XX."""
        self.assertEqual(xtext("a+b=c d\x01é"), "a+2Bb+3Dc+20d+01+C3+A9")


class RelayRequestTests(SynchronousTestCase):
    def test_frozen_with_defaults(self) -> None:
        """A request is immutable; replace() gives a changed copy; the defaults are the runner's."""
        request = RelayRequest(
            host="192.0.2.1", hostname="mx.test", mail_from="a@b.test", recipients=["c@d.test"], message=b"x"
        )
        self.assertEqual((request.port, request.tls_policy, request.timeout), (25, "opportunistic", 300.0))
        with self.assertRaises(AttributeError):
            request.port = 26  # type: ignore[misc]
        other = request.replace(port=587, tls_policy="verify")
        self.assertEqual((other.port, other.tls_policy, other.host), (587, "verify", "192.0.2.1"))
        self.assertEqual(request.port, 25)

    def test_repr_hides_the_password(self) -> None:
        """Logging a request never shows the smarthost password nor the message."""
        request = RelayRequest(
            host="smarthost.test", hostname="mx.test", mail_from="a@b.test", recipients=["c@d.test"],
            message=b"secret content", auth=("user", "hunter2"),
        )  # fmt: skip
        text = repr(request)
        self.assertIn("'user'", text)
        self.assertNotIn("hunter2", text)
        self.assertNotIn("secret content", text)


class RequireTLSTests(SynchronousTestCase):
    """REQUIRETLS (RFC 8689 section 4.2.1) on the client side."""

    def after_tls(self, ehlo: bytes) -> tuple[ClientSession, bytes, list[ClientEvent]]:
        s = make(tls_policy="opportunistic", require_tls=True)
        step(s, GREETING)
        step(s, EHLO_FULL)
        step(s, b"220 2.0.0 go ahead\r\n")
        s.tls_started()
        step(s)
        out, events = step(s, ehlo)
        return s, out, events

    def test_mail_carries_requiretls(self) -> None:
        """With the next hop's REQUIRETLS keyword after STARTTLS, MAIL says REQUIRETLS."""
        _, out, _ = self.after_tls(b"250-mx.remote.test\r\n250 REQUIRETLS\r\n")
        self.assertEqual(out, b"MAIL FROM:<alice@example.test> REQUIRETLS\r\n")

    def test_hop_without_requiretls_fails_permanently(self) -> None:
        """Without the keyword nothing is sent; the failure is permanent, 5.7.30 (RFC 8689 section 5)."""
        s, out, _ = self.after_tls(EHLO_BASIC)
        self.assertEqual(out, b"QUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertFalse(result.temporary)
        self.assertIn("5.7.30", result.error or "")
        self.assertEqual(result.status("bob@remote.test"), "permanent")

    def test_no_starttls_is_temporary(self) -> None:
        """A hop without STARTTLS: TLS required, temporary, even with an opportunistic policy."""
        s = make(tls_policy="opportunistic", require_tls=True)
        out, _ = step(s, GREETING + b"250-mx.remote.test\r\n250 REQUIRETLS\r\n")
        self.assertEqual(out, b"EHLO mta.example.test\r\nQUIT\r\n")
        result = done(step(s, b"221 bye\r\n")[1])
        self.assertTrue(result.temporary)
        self.assertIn("TLS required", result.error or "")
