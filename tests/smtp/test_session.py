"""
Tests for the sans-IO SMTP server session: bytes in, events and bytes out.

Every exchange is run twice, with the input whole and one byte at a time,
and both runs must give the same events and the same output (h11's idea).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txmail.auth import sasl
from txmail.auth.passwords import make_credentials
from txmail.smtp import codes
from txmail.smtp.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    DataAborted,
    DataChunk,
    DataComplete,
    DataStart,
    Event,
    Greeted,
    MailFrom,
    RcptTo,
    StartTLS,
)
from txmail.smtp.session import MAX_AUTH_LINE, SENDER_NOT_OWNED, ServerSession, SMTPLimits, State

from .test_dotstuff import SMUGGLED, SMUGGLING_SEQUENCES

HOST = "mx.example.test"
PASSWORD = "secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")

Decide = Callable[[ServerSession, Event], None]


def fake_authenticator(server: sasl.SASLServer, request: Any) -> sasl.SASLEvent:
    """What txmail.auth.authenticator.Authenticator does, synchronously, for alice only."""
    if isinstance(request, sasl.NeedPasswordCheck):
        ok = request.username == "alice@example.test" and request.password.reveal() == PASSWORD
        return server.password_checked(ok)
    if isinstance(request, sasl.NeedCredentials):
        return server.provide_credentials(CREDENTIALS if request.username == "alice@example.test" else None)
    return request  # Succeeded (already canonical here) and Failed


def accept_all(session: ServerSession, event: Event) -> None:
    """The default decision: accept, resolving AUTH with the fake authenticator."""
    if isinstance(event, AuthStep):
        session.accept(fake_authenticator(event.server, event.request))
    else:
        session.accept()


def merge_chunks(events: list[Event]) -> list[Any]:
    """
    Normalise events so runs split differently compare equal: consecutive
    DataChunks are joined, chunks right before a DataAborted are dropped (a
    byte-by-byte run hands over content before it sees the problem; the
    application discards it either way), and AuthStep (which holds a live
    SASL server) becomes a comparable tuple.
    """
    out: list[Any] = []
    for event in events:
        if isinstance(event, AuthStep):
            out.append(("AuthStep", event.mechanism, event.request))
        elif isinstance(event, DataAborted):
            while out and isinstance(out[-1], DataChunk):
                out.pop()
            out.append(event)
        elif isinstance(event, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + event.data)
        else:
            out.append(event)
    return out


def run(
    data: bytes, *, bytewise: bool, decide: Decide = accept_all, **kwargs: Any
) -> tuple[ServerSession, list[Event], bytes]:
    """Feed *data* to a fresh session (after its greeting); return it, its events and its output."""
    session = ServerSession(HOST, **kwargs)
    session.data_to_send()
    events: list[Event] = []
    out = bytearray()
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        session.receive_data(piece)
        while (event := session.next_event()) is not None:
            events.append(event)
            if event.needs_decision:
                decide(session, event)
        out += session.data_to_send()
    return session, merge_chunks(events), bytes(out)


def replies(out: bytes) -> list[str]:
    """The final lines of each reply, decoded."""
    return [line for line in out.decode("utf-8").split("\r\n") if line and line[3:4] != "-"]


def codes_of(out: bytes) -> list[int]:
    return [int(line[:3]) for line in replies(out)]


def pump(session: ServerSession, data: bytes, decide: Decide = accept_all) -> bytes:
    """Feed *data*, answer decisions, return the output."""
    session.receive_data(data)
    while (event := session.next_event()) is not None:
        if event.needs_decision:
            decide(session, event)
    return session.data_to_send()


class SessionTestCase(SynchronousTestCase):
    def exchange(
        self, data: bytes, decide: Decide = accept_all, **kwargs: Any
    ) -> tuple[ServerSession, list[Event], bytes]:
        """Run *data* whole and byte by byte; both must agree.  Returns the whole run."""
        whole = run(data, bytewise=False, decide=decide, **kwargs)
        bytewise = run(data, bytewise=True, decide=decide, **kwargs)
        self.assertEqual(whole[1], bytewise[1], "events differ between whole and bytewise input")
        self.assertEqual(whole[2], bytewise[2], "output differs between whole and bytewise input")
        self.assertEqual(whole[0].state, bytewise[0].state)
        return whole


EHLO = b"EHLO client.test\r\n"
TRANSACTION = b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"


class GreetingTests(SessionTestCase):
    def test_greeting(self) -> None:
        """The session greets with 220 <hostname> ESMTP txmail at once."""
        session = ServerSession(HOST)
        self.assertEqual(session.data_to_send(), b"220 mx.example.test ESMTP txmail\r\n")
        self.assertEqual(session.data_to_send(), b"")

    def test_ehlo_keywords(self) -> None:
        """EHLO lists the extensions, SIZE with the limit, DSN (RFC 3461); no STARTTLS or AUTH by default."""
        session, events, out = self.exchange(EHLO, limits=SMTPLimits(max_message_size=1234))
        self.assertEqual(
            out,
            b"250-mx.example.test\r\n250-PIPELINING\r\n250-SIZE 1234\r\n250-8BITMIME\r\n"
            b"250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n250 DSN\r\n",
        )
        self.assertEqual(events, [Greeted("client.test", True)])
        self.assertEqual(session.state, State.GREETED)

    def test_ehlo_starttls_and_auth(self) -> None:
        """STARTTLS is offered when available; AUTH only when policy allows it without TLS."""
        _, _, out = self.exchange(EHLO, tls_available=True, auth_enabled=True)
        self.assertIn(b"STARTTLS\r\n", out)
        self.assertNotIn(b"AUTH", out)
        _, _, out = self.exchange(EHLO, auth_enabled=True, plaintext_auth="always")
        self.assertIn(b"250 AUTH SCRAM-SHA-256 PLAIN LOGIN\r\n", out)
        _, _, out = self.exchange(EHLO, auth_enabled=True, plaintext_auth="loopback", loopback=True)
        self.assertIn(b"AUTH", out)
        _, _, out = self.exchange(EHLO, auth_enabled=True, plaintext_auth="loopback", loopback=False)
        self.assertNotIn(b"AUTH", out)

    def test_implicit_tls(self) -> None:
        """With implicit TLS, AUTH is offered and STARTTLS is not."""
        session, _, out = self.exchange(EHLO, tls_active=True, tls_available=True, auth_enabled=True)
        self.assertNotIn(b"STARTTLS", out)
        self.assertIn(b"AUTH", out)
        self.assertEqual(session.protocol, "ESMTPS")

    def test_helo(self) -> None:
        """HELO gets a plain 250 with our name; the protocol is SMTP."""
        session, events, out = self.exchange(b"HELO client.test\r\n")
        self.assertEqual(out, b"250 mx.example.test\r\n")
        self.assertEqual(events, [Greeted("client.test", False)])
        self.assertEqual(session.protocol, "SMTP")

    def test_ehlo_needs_a_name(self) -> None:
        """EHLO without a name is a 501 syntax error."""
        _, _, out = self.exchange(b"EHLO\r\nEHLO a b\r\n")
        self.assertEqual(codes_of(out), [501, 501])


class TransactionTests(SessionTestCase):
    def test_rfc5321_d1_typical_transaction(self) -> None:
        """RFC 5321 appendix D.1: one refused recipient, the message to the others, QUIT."""
        script = (
            b"EHLO bar.com\r\nMAIL FROM:<Smith@bar.com>\r\nRCPT TO:<Jones@foo.com>\r\n"
            b"RCPT TO:<Green@foo.com>\r\nRCPT TO:<Brown@foo.com>\r\nDATA\r\n"
            b"Blah blah blah...\r\n...etc. etc. etc.\r\n.\r\nQUIT\r\n"
        )

        def decide(session: ServerSession, event: Event) -> None:
            if isinstance(event, RcptTo) and event.address == "Green@foo.com":
                session.reject(codes.Reply(550, "5.1.1", "No such user here"))
            elif isinstance(event, DataComplete):
                self.assertEqual(session.transaction.rcpt_to, ["Jones@foo.com", "Brown@foo.com"])  # type: ignore[union-attr]
                session.accept(codes.OK.with_text("OK: queued as X1"))
            else:
                session.accept()

        session, events, out = self.exchange(script, decide)
        self.assertEqual(
            events,
            [
                Greeted("bar.com", True),
                MailFrom("Smith@bar.com", {}),
                RcptTo("Jones@foo.com", {}),
                RcptTo("Green@foo.com", {}),
                RcptTo("Brown@foo.com", {}),
                DataStart(chunking=False),
                DataChunk(b"Blah blah blah...\r\n..etc. etc. etc.\r\n"),
                DataComplete(37),
                ConnectionClosing("quit"),
            ],
        )
        self.assertTrue(
            out.endswith(
                b"250 DSN\r\n250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 No such user here\r\n"
                b"250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
                b"250 2.0.0 OK: queued as X1\r\n221 2.0.0 Bye\r\n"
            )
        )
        self.assertTrue(session.closed)

    def test_paused_session_parses_nothing(self) -> None:
        """While MAIL awaits a decision, pipelined commands are neither parsed nor answered."""
        session = ServerSession(HOST)
        session.data_to_send()
        session.receive_data(EHLO + TRANSACTION + b"NOOP\r\n")
        self.assertEqual(session.next_event(), Greeted("client.test", True))
        self.assertEqual(session.next_event(), MailFrom("a@remote.test", {}))
        self.assertIsNone(session.next_event())
        self.assertTrue(session.paused)
        self.assertEqual(codes_of(session.data_to_send()), [250])  # EHLO only
        session.accept()
        self.assertEqual(session.next_event(), RcptTo("bob@example.test", {}))
        self.assertEqual(codes_of(session.data_to_send()), [250])  # MAIL
        session.reject(codes.Reply(550, "5.1.1", "No such user here"))
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"550 5.1.1 No such user here\r\n250 2.0.0 OK\r\n")

    def test_pipelined_replies_in_order(self) -> None:
        """A whole pipelined transaction gets every reply in command order (RFC 2920)."""
        script = EHLO + TRANSACTION + b"RCPT TO:<nobody@example.test>\r\nDATA\r\nx\r\n.\r\nQUIT\r\n"

        def decide(session: ServerSession, event: Event) -> None:
            if isinstance(event, RcptTo) and event.address.startswith("nobody"):
                session.reject(codes.Reply(550, "5.1.1", "No such user here"))
            else:
                session.accept()

        _, _, out = self.exchange(script, decide)
        self.assertEqual(codes_of(out), [250, 250, 250, 550, 354, 250, 221])

    def test_rset_noop_help_vrfy_expn(self) -> None:
        """RSET drops the transaction; NOOP, HELP, VRFY (252, no enumeration) and EXPN answer."""
        session, _, out = self.exchange(
            EHLO + TRANSACTION + b"RSET\r\nRCPT TO:<x@example.test>\r\nNOOP\r\nHELP\r\n"
            b"VRFY bob\r\nVRFY\r\nEXPN list\r\n"
        )
        self.assertEqual(codes_of(out)[1:], [250, 250, 250, 503, 250, 214, 252, 501, 502])
        self.assertIn("252 2.5.0", replies(out)[-3])
        self.assertIsNone(session.transaction)

    def test_mail_without_greeting(self) -> None:
        """MAIL before EHLO/HELO is tolerated on a fresh connection (the protocol is then SMTP)."""
        session, events, out = self.exchange(TRANSACTION + b"DATA\r\nx\r\n.\r\n")
        self.assertEqual(codes_of(out), [250, 250, 354, 250])
        self.assertEqual(events[0], MailFrom("a@remote.test", {}))
        self.assertIsNone(session.helo)

    def test_ehlo_resets_transaction(self) -> None:
        """EHLO inside a transaction acts as RSET (RFC 5321 section 4.1.4)."""
        session, _, out = self.exchange(EHLO + TRANSACTION + EHLO + b"DATA\r\n")
        self.assertEqual(codes_of(out)[-1], 503)
        self.assertIsNone(session.transaction)

    def test_sequence_errors(self) -> None:
        """Commands out of order get 503 5.5.1 (554 for DATA without recipients)."""
        table = [
            (b"RCPT TO:<a@b.test>\r\n", "503 5.5.1 Bad sequence of commands"),
            (b"STARTTLS\r\n", "503 5.5.1 Send EHLO or HELO first"),
            (EHLO + b"RCPT TO:<a@b.test>\r\n", "503 5.5.1 Bad sequence of commands"),
            (EHLO + b"DATA\r\n", "503 5.5.1 Bad sequence of commands"),
            (EHLO + b"MAIL FROM:<a@b.test>\r\nDATA\r\n", "554 5.5.1 No valid recipients"),
            (
                EHLO + b"MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n",
                "503 5.5.1 Sender already specified",
            ),
            (EHLO + TRANSACTION + b"AUTH PLAIN\r\n", "503 5.5.1 Bad sequence of commands"),
            (EHLO + TRANSACTION + b"STARTTLS\r\n", "503 5.5.1 Bad sequence of commands"),
        ]
        for script, expected in table:
            _, _, out = self.exchange(script, tls_available=True, auth_enabled=True, plaintext_auth="always")
            self.assertEqual(replies(out)[-1], expected, script)

    def test_quit_ends_session(self) -> None:
        """QUIT answers 221 2.0.0 Bye; later input is ignored."""
        session, events, out = self.exchange(b"QUIT\r\nNOOP\r\n")
        self.assertEqual(out, b"221 2.0.0 Bye\r\n")
        self.assertEqual(events, [ConnectionClosing("quit")])
        session.receive_data(b"NOOP\r\n")
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"")


class ParameterTests(SessionTestCase):
    def mail(self, params: str, **kwargs: Any) -> tuple[list[Event], str]:
        _, events, out = self.exchange(EHLO + f"MAIL FROM:<a@remote.test>{params}\r\n".encode(), **kwargs)
        return events[1:], replies(out)[-1]

    def test_mail_parameters(self) -> None:
        """Known MAIL parameters are kept, DSN's (RFC 3461) among them."""
        events, reply = self.mail(" SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc AUTH=<>")
        self.assertEqual(reply, "250 2.1.0 Sender OK")
        self.assertEqual(
            events,
            [
                MailFrom(
                    "a@remote.test",
                    {"SIZE": "100", "BODY": "8BITMIME", "RET": "HDRS", "ENVID": "abc", "AUTH": "<>"},
                )
            ],
        )

    def test_mail_parameter_refusals(self) -> None:
        """Over-size, bad values, BINARYMIME and unknown parameters are refused without an event."""
        table = [
            (" SIZE=1000", "552 5.3.4"),
            (" SIZE=x", "501 5.5.4"),
            (" BODY=BINARYMIME", "555 5.5.4"),
            (" BODY=9BIT", "501 5.5.4"),
            (" FOO=bar", "555 5.5.4"),
            (" SMTPUTF8=yes", "501 5.5.4"),
            (" RET=ALL", "501 5.5.4"),
            (" =x", "501 5.5.4"),
        ]
        for params, expected in table:
            events, reply = self.mail(params, limits=SMTPLimits(max_message_size=999))
            self.assertEqual(events, [], params)
            self.assertTrue(reply.startswith(expected), (params, reply))

    def test_null_sender(self) -> None:
        """MAIL FROM:<> gives an empty address, a mailbox its canonical text."""
        events, _ = self.mail("")
        self.assertEqual(events, [MailFrom("a@remote.test", {})])
        _, events, _ = self.exchange(EHLO + b"MAIL FROM:<>\r\n")
        self.assertEqual(events[1], MailFrom("", {}))

    def test_bad_sender_syntax(self) -> None:
        """A malformed reverse-path is 501 5.1.7; a malformed forward-path 501 5.1.3."""
        _, _, out = self.exchange(EHLO + b"MAIL FROM:a@b\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<a b>\r\n")
        self.assertEqual([r[:9] for r in replies(out)[1:]], ["501 5.1.7", "250 2.1.0", "501 5.1.3"])

    def test_rcpt_parameters(self) -> None:
        """NOTIFY and ORCPT are kept on the recipient; others get 555."""
        session, events, out = self.exchange(
            EHLO
            + b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test> NOTIFY=NEVER ORCPT=rfc822;b@example.test\r\n"
            b"RCPT TO:<c@example.test> FOO=1\r\n"
        )
        self.assertEqual(
            events[-1], RcptTo("b@example.test", {"NOTIFY": "NEVER", "ORCPT": "rfc822;b@example.test"})
        )
        self.assertEqual(
            session.transaction.rcpt_params, [{"NOTIFY": "NEVER", "ORCPT": "rfc822;b@example.test"}]
        )  # type: ignore[union-attr]
        self.assertTrue(replies(out)[-1].startswith("555 5.5.4"))

    def test_dsn_mail_parameters_normalised(self) -> None:
        """RFC 3461: RET is upper-cased, ENVID kept as given (xtext undecoded), BODY upper-cased."""
        envid = "x" * 97 + "+2B"  # 100 characters, the limit
        session, events, out = self.exchange(
            EHLO + f"MAIL FROM:<a@remote.test> ret=full ENVID={envid} body=8bitmime\r\n".encode()
        )
        self.assertEqual(replies(out)[-1], "250 2.1.0 Sender OK")
        self.assertEqual(
            events[-1], MailFrom("a@remote.test", {"RET": "FULL", "ENVID": envid, "BODY": "8BITMIME"})
        )
        self.assertEqual(session.transaction.mail_params, {"RET": "FULL", "ENVID": envid, "BODY": "8BITMIME"})  # type: ignore[union-attr]

    def test_dsn_mail_parameter_refusals(self) -> None:
        """Bad RET/ENVID values and repeated parameters get 501 5.5.4 naming the parameter, and no event."""
        table = [
            (" RET=ALL", "501 5.5.4 Bad RET parameter: expected RET=FULL or RET=HDRS"),
            (" RET", "501 5.5.4 Bad RET parameter"),
            (" ENVID", "501 5.5.4 Bad ENVID parameter: expected xtext of at most 100 characters"),
            (" ENVID=" + "x" * 101, "501 5.5.4 Bad ENVID parameter"),
            (" ENVID=a+2b", "501 5.5.4 Bad ENVID parameter"),  # hexchar digits must be upper case
            (" ENVID=a+2", "501 5.5.4 Bad ENVID parameter"),
            (" ENVID=a+0D+0Ab", "501 5.5.4 Bad ENVID parameter"),  # decodes to CR LF
            (" ENVID=é", "501 5.5.4 Bad ENVID parameter"),
            (" RET=FULL ret=HDRS", "501 5.5.4 Duplicate RET parameter"),
            (" ENVID=a ENVID=a", "501 5.5.4 Duplicate ENVID parameter"),
        ]
        for params, expected in table:
            events, reply = self.mail(params)
            self.assertEqual(events, [], params)
            self.assertTrue(reply.startswith(expected), (params, reply))

    def test_dsn_rcpt_parameters_normalised(self) -> None:
        """NOTIFY is upper-cased without repeats in the client's order; ORCPT is kept as given."""
        session, events, out = self.exchange(
            EHLO
            + b"MAIL FROM:<a@remote.test>\r\n"
            + b"RCPT TO:<b@example.test> notify=delay,success,Delay ORCPT=RFC822;B+2Bx+40example.test\r\n"
            + b"RCPT TO:<c@example.test> NOTIFY=never\r\n"
            + b"RCPT TO:<d@example.test> ORCPT=utf-8;d\\x{E9}@example.test\r\n"
        )
        self.assertEqual(codes_of(out)[-3:], [250, 250, 250])
        expected = [
            {"NOTIFY": "DELAY,SUCCESS", "ORCPT": "RFC822;B+2Bx+40example.test"},
            {"NOTIFY": "NEVER"},
            {"ORCPT": "utf-8;d\\x{E9}@example.test"},
        ]
        self.assertEqual([e.params for e in events if isinstance(e, RcptTo)], expected)
        self.assertEqual(session.transaction.rcpt_params, expected)  # type: ignore[union-attr]

    def test_dsn_rcpt_parameter_refusals(self) -> None:
        """Bad NOTIFY/ORCPT values and repeats get 501 5.5.4 naming the parameter; the transaction goes on."""
        notify = "501 5.5.4 Bad NOTIFY parameter: expected NEVER or a list of SUCCESS, FAILURE, DELAY"
        orcpt = "501 5.5.4 Bad ORCPT parameter: expected addr-type;xtext"
        table = [
            ("NOTIFY", notify),
            ("NOTIFY=NEVER,SUCCESS", notify),
            ("NOTIFY=SUCCESS,", notify),
            ("NOTIFY=ALWAYS", notify),
            ("NOTIFY=SUCCESS,,DELAY", notify),
            ("ORCPT", orcpt),
            ("ORCPT=b@example.test", orcpt),
            ("ORCPT=;b@example.test", orcpt),
            ("ORCPT=rfc(822);b@example.test", orcpt),
            ("ORCPT=rfc822;", orcpt),
            ("ORCPT=rfc822;b+3dx@example.test", orcpt),
            ("ORCPT=rfc822;b+0Ax@example.test", orcpt),
            ("NOTIFY=NEVER NOTIFY=NEVER", "501 5.5.4 Duplicate NOTIFY parameter"),
        ]
        for params, expected in table:
            session, events, out = self.exchange(
                EHLO + f"MAIL FROM:<a@remote.test>\r\nRCPT TO:<b@example.test> {params}\r\n".encode()
            )
            self.assertEqual([e for e in events if isinstance(e, RcptTo)], [], params)
            self.assertEqual(replies(out)[-1], expected, params)
            self.assertEqual(session.state, State.MAIL, params)
            self.assertEqual(session.bad_commands, 1, params)

    def test_smtputf8(self) -> None:
        """Non-ASCII addresses need SMTPUTF8 on MAIL (553 5.6.7); with it the protocol is UTF8SMTP."""
        _, events, out = self.exchange(EHLO + "MAIL FROM:<jöran@remote.test>\r\n".encode())
        self.assertTrue(replies(out)[-1].startswith("553 5.6.7"))
        self.assertEqual(len(events), 1)
        _, _, out = self.exchange(EHLO + "MAIL FROM:<a@remote.test>\r\nRCPT TO:<ü@example.test>\r\n".encode())
        self.assertTrue(replies(out)[-1].startswith("553 5.6.7"))
        session, events, out = self.exchange(
            EHLO + "MAIL FROM:<jöran@remote.test> SMTPUTF8\r\nRCPT TO:<ü@example.test>\r\n".encode()
        )
        self.assertEqual(codes_of(out)[-2:], [250, 250])
        self.assertEqual(events[-1], RcptTo("ü@example.test", {}))
        self.assertEqual(session.protocol, "UTF8SMTP")

    def test_invalid_utf8_command(self) -> None:
        """A command line that is not UTF-8 is a 500 syntax error."""
        _, _, out = self.exchange(EHLO + b"MAIL FROM:<\xff@x.test>\r\n")
        self.assertTrue(replies(out)[-1].startswith("500 5.5.2"))


class AddressTrickTests(SessionTestCase):
    #: (forward-path, expected RcptTo address or None when the session refuses it itself)
    TRICKS = [
        ("<victim@remote.test>", "victim@remote.test"),
        ("<@example.test:victim@remote.test>", "victim@remote.test"),
        ("<@example.test,@other.test:victim@remote.test>", "victim@remote.test"),
        ("<victim%remote.test@example.test>", None),
        ("<remote.test!victim@example.test>", None),
        ('<"victim@remote.test"@example.test>', None),
        ('<"victim%remote.test"@example.test>', None),
        ("<victim@[127.0.0.1]>", None),
        ("<victim@[IPv6:::1]>", None),
        ('<"victim"@example.test>', "victim@example.test"),
    ]

    def test_unauthenticated_tricks(self) -> None:
        """Routing tricks are refused with 553 5.7.1; source routes are stripped so the router sees the real domain."""
        for path, expected in self.TRICKS:
            _, events, out = self.exchange(EHLO + f"MAIL FROM:<a@remote.test>\r\nRCPT TO:{path}\r\n".encode())
            rcpts = [e for e in events if isinstance(e, RcptTo)]
            if expected is None:
                self.assertEqual(rcpts, [], path)
                self.assertTrue(replies(out)[-1].startswith("553 5.7.1"), path)
            else:
                self.assertEqual(rcpts, [RcptTo(expected, {})], path)

    def test_authenticated_users_may_use_them(self) -> None:
        """After AUTH the session leaves such addresses to the router."""
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode())
        _, events, _out = self.exchange(
            EHLO
            + b"AUTH PLAIN "
            + plain
            + b"\r\nMAIL FROM:<alice@example.test>\r\nRCPT TO:<a%b@remote.test>\r\n",
            tls_active=True,
            auth_enabled=True,
        )
        self.assertEqual(events[-1], RcptTo("a%b@remote.test", {}))


class LimitTests(SessionTestCase):
    def test_max_recipients(self) -> None:
        """Recipients beyond the limit get 452 4.5.3 and no event; the others stay."""
        _session, events, out = self.exchange(
            EHLO + b"MAIL FROM:<a@remote.test>\r\n" + b"RCPT TO:<b@example.test>\r\n" * 3 + b"DATA\r\n",
            limits=SMTPLimits(max_recipients=2),
        )
        self.assertEqual(codes_of(out)[1:], [250, 250, 250, 452, 354])
        self.assertIn("452 4.5.3", replies(out)[-2])
        self.assertEqual(len([e for e in events if isinstance(e, RcptTo)]), 2)

    def test_line_length_boundary(self) -> None:
        """A 1000-octet command line (with CRLF) is fine; 1001 gets 500 5.5.2 and the session goes on."""
        ok = b"NOOP " + b"a" * (1000 - 7) + b"\r\n"
        too_long = b"NOOP " + b"a" * (1001 - 7) + b"\r\n"
        self.assertEqual(len(ok), 1000)
        session, _, out = self.exchange(ok + too_long + b"NOOP\r\n")
        self.assertEqual(replies(out), ["250 2.0.0 OK", "500 5.5.2 Line too long", "250 2.0.0 OK"])
        self.assertEqual(session.bad_commands, 1)

    def test_endless_line_is_bounded(self) -> None:
        """A line with no CRLF never grows the buffer past the AUTH line limit; its CRLF ends it with 500."""
        session = ServerSession(HOST)
        session.data_to_send()
        for _ in range(100):
            session.receive_data(b"x" * 1000)
            self.assertIsNone(session.next_event())
            self.assertLessEqual(len(session._inbuf), MAX_AUTH_LINE + 1000)
        session.receive_data(b"\r\nNOOP\r\n")
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n")

    def test_bare_lf_in_command(self) -> None:
        """Only CRLF ends a command line; bare LF or CR inside one is a syntax error."""
        _, events, out = self.exchange(EHLO + b"MAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\r\nNOOP\rX\r\n")
        self.assertEqual(codes_of(out)[1:], [500, 500])
        self.assertEqual(len(events), 1)

    def test_too_many_errors(self) -> None:
        """Past max_bad_commands the session answers 421 4.7.0 and closes."""
        session, events, out = self.exchange(
            b"BOGUS\r\n" * 5 + b"NOOP\r\n", limits=SMTPLimits(max_bad_commands=3)
        )
        self.assertEqual(codes_of(out), [500, 500, 500, 421])
        self.assertIn("421 4.7.0", replies(out)[-1])
        self.assertEqual(events, [ConnectionClosing("errors")])
        self.assertTrue(session.closed)

    def test_timeout(self) -> None:
        """timeout() answers 421 4.4.2 and closes; content in progress is aborted."""
        session, _events, _ = self.exchange(EHLO + TRANSACTION + b"DATA\r\npartial")
        session.timeout()
        self.assertEqual(session.next_event(), DataAborted(codes.TIMEOUT))
        self.assertEqual(session.next_event(), ConnectionClosing("timeout"))
        self.assertEqual(session.data_to_send(), b"421 4.4.2 Timeout, closing connection\r\n")
        self.assertTrue(session.closed)


class DataTests(SessionTestCase):
    def test_size_limit_while_streaming(self) -> None:
        """Content over the limit is aborted at once, read to the dot, then refused with 552 5.3.4."""
        body = b"x" * 150 + b"\r\n"
        session, events, out = self.exchange(
            EHLO + TRANSACTION + b"DATA\r\n" + body + b".\r\nNOOP\r\n",
            limits=SMTPLimits(max_message_size=100),
        )
        self.assertIn(DataAborted(codes.MESSAGE_TOO_BIG), events)
        self.assertFalse(any(isinstance(e, DataComplete) for e in events))
        self.assertEqual(sum(len(e.data) for e in events if isinstance(e, DataChunk)), 0)
        self.assertEqual(codes_of(out)[-2:], [552, 250])
        self.assertEqual(session.state, State.GREETED)

    def test_size_limit_exact(self) -> None:
        """Content of exactly the limit is accepted."""
        body = b"x" * 98 + b"\r\n"
        _, events, _ = self.exchange(
            EHLO + TRANSACTION + b"DATA\r\n" + body + b".\r\n", limits=SMTPLimits(max_message_size=100)
        )
        self.assertEqual(events[-1], DataComplete(100))

    def test_long_data_lines_accepted(self) -> None:
        """Text lines longer than 1000 octets in DATA are accepted (documented policy)."""
        line = b"y" * 4000 + b"\r\n"
        _, events, out = self.exchange(EHLO + TRANSACTION + b"DATA\r\n" + line + b".\r\n")
        self.assertEqual(events[-2:], [DataChunk(line), DataComplete(len(line))])
        self.assertEqual(codes_of(out)[-1], 250)

    def test_bare_lf_message_refused(self) -> None:
        """A message with a bare LF is read to CRLF.CRLF and refused with 550 5.6.0; the session goes on."""
        _session, events, out = self.exchange(
            EHLO + TRANSACTION + b"DATA\r\nline one\nline two\r\n.\r\nNOOP\r\n"
        )
        self.assertIn(DataAborted(codes.BARE_LINE_ENDING), events)
        self.assertFalse(any(isinstance(e, DataComplete) for e in events))
        self.assertEqual(
            replies(out)[-2:], [codes.BARE_LINE_ENDING.to_bytes().decode().strip(), "250 2.0.0 OK"]
        )

    def test_data_start_rejected(self) -> None:
        """When the application refuses DataStart, the client gets its reply and no 354."""

        def decide(session: ServerSession, event: Event) -> None:
            if isinstance(event, DataStart):
                session.reject(codes.LOCAL_ERROR)
            else:
                session.accept()

        session, _, out = self.exchange(EHLO + TRANSACTION + b"DATA\r\n", decide)
        self.assertEqual(codes_of(out)[-1], 451)
        self.assertEqual(session.state, State.RCPT)

    def test_data_complete_rejected(self) -> None:
        """A refused DataComplete ends the transaction with the application's reply."""

        def decide(session: ServerSession, event: Event) -> None:
            if isinstance(event, DataComplete):
                session.reject(codes.LOCAL_ERROR)
            else:
                session.accept()

        session, _, out = self.exchange(EHLO + TRANSACTION + b"DATA\r\nx\r\n.\r\n", decide)
        self.assertEqual(codes_of(out)[-1], 451)
        self.assertIsNone(session.transaction)

    def test_data_with_argument(self) -> None:
        """DATA takes no argument."""
        _, _, out = self.exchange(EHLO + TRANSACTION + b"DATA now\r\n")
        self.assertEqual(codes_of(out)[-1], 501)


class SmugglingTests(SessionTestCase):
    def test_smuggled_transaction_never_runs(self) -> None:
        """For every smuggling end mark, the smuggled MAIL/RCPT never become events; one message, one reply."""
        for seq in SMUGGLING_SEQUENCES:
            script = (
                EHLO + TRANSACTION + b"DATA\r\nSubject: a\r\n\r\nbody" + seq + SMUGGLED + b"\r\n.\r\nQUIT\r\n"
            )
            _, events, out = self.exchange(script)
            self.assertEqual(len([e for e in events if isinstance(e, MailFrom)]), 1, seq)
            self.assertEqual(
                [e for e in events if isinstance(e, RcptTo)], [RcptTo("bob@example.test", {})], seq
            )
            self.assertEqual(
                codes_of(out)[-3:-1],
                [
                    354,
                    550 if b"\n" in seq.replace(b"\r\n", b"") or b"\r" in seq.replace(b"\r\n", b"") else 250,
                ],
                seq,
            )
            self.assertEqual(events[-1], ConnectionClosing("quit"))


class BDATTests(SessionTestCase):
    def test_chunks(self) -> None:
        """BDAT chunks stream as DataChunks; a non-last chunk gets 250 with the running size, LAST completes."""

        def decide(session: ServerSession, event: Event) -> None:
            session.accept(codes.OK.with_text("queued") if isinstance(event, DataComplete) else None)

        _, events, out = self.exchange(
            EHLO + TRANSACTION + b"BDAT 7\r\nhello\r\nBDAT 4 LAST\r\nab\r\nNOOP\r\n", decide
        )
        self.assertEqual(
            events[-3:], [DataStart(chunking=True), DataChunk(b"hello\r\nab\r\n"), DataComplete(11)]
        )
        self.assertEqual(
            replies(out)[-3:], ["250 2.0.0 7 octets received", "250 2.0.0 queued", "250 2.0.0 OK"]
        )

    def test_bdat_zero_last(self) -> None:
        """BDAT 0 LAST completes the message with what came before (here nothing)."""
        _, events, _ = self.exchange(EHLO + TRANSACTION + b"BDAT 0 LAST\r\n")
        self.assertEqual(events[-2:], [DataStart(chunking=True), DataComplete(0)])

    def test_chunk_content_is_never_a_command(self) -> None:
        """Octets inside a chunk that look like commands stay content."""
        chunk = b"MAIL FROM:<evil@x.test>\r\nQUIT\r\n"
        _, events, _out = self.exchange(EHLO + TRANSACTION + b"BDAT %d LAST\r\n" % len(chunk) + chunk)
        self.assertEqual(len([e for e in events if isinstance(e, MailFrom)]), 1)
        self.assertEqual(events[-2:], [DataChunk(chunk), DataComplete(len(chunk))])

    def test_bdat_out_of_sequence_consumes_chunk(self) -> None:
        """BDAT without a transaction is refused after its chunk is read, so the chunk is not executed."""
        _, events, out = self.exchange(EHLO + b"BDAT 6\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(codes_of(out)[1:], [503, 250])
        self.assertEqual(events, [Greeted("client.test", True)])
        _, _, out = self.exchange(EHLO + b"MAIL FROM:<a@b.test>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n")
        self.assertEqual(codes_of(out)[1:], [250, 554, 250])

    def test_failed_chunk_refuses_the_rest(self) -> None:
        """After an over-size chunk, later chunks are read and refused; LAST ends the transaction."""
        script = (
            EHLO
            + TRANSACTION
            + b"BDAT 3\r\nabcBDAT 200\r\n"
            + b"z" * 200
            + b"BDAT 3\r\ndefBDAT 2 LAST\r\ngh"
            + b"NOOP\r\n"
        )
        session, events, out = self.exchange(script, limits=SMTPLimits(max_message_size=100))
        self.assertEqual(codes_of(out)[3:], [250, 552, 552, 552, 250])
        self.assertIn(DataAborted(codes.MESSAGE_TOO_BIG), events)
        self.assertFalse(any(isinstance(e, DataComplete) for e in events))
        self.assertIsNone(session.transaction)

    def test_data_after_bdat(self) -> None:
        """DATA cannot follow BDAT in one transaction (RFC 3030 section 2)."""
        _, _, out = self.exchange(EHLO + TRANSACTION + b"BDAT 1\r\nxDATA\r\n")
        self.assertEqual(codes_of(out)[-1], 503)

    def test_malformed_bdat_closes(self) -> None:
        """A BDAT whose size cannot be read loses the framing: 421 and close."""
        session, events, out = self.exchange(EHLO + TRANSACTION + b"BDAT x\r\nNOOP\r\n")
        self.assertEqual(codes_of(out)[-1], 421)
        self.assertEqual(events[-1], ConnectionClosing("protocol"))
        self.assertTrue(session.closed)

    def test_rset_between_chunks(self) -> None:
        """RSET between chunks aborts the content the application holds."""
        session, events, _out = self.exchange(EHLO + TRANSACTION + b"BDAT 2\r\nabRSET\r\n")
        self.assertEqual(events[-1], DataAborted(codes.OK))
        self.assertIsNone(session.transaction)

    def test_bdat_start_rejected(self) -> None:
        """A refused DataStart for BDAT still reads the chunk, then answers the refusal."""

        def decide(session: ServerSession, event: Event) -> None:
            if isinstance(event, DataStart):
                session.reject(codes.LOCAL_ERROR)
            else:
                session.accept()

        _, events, out = self.exchange(EHLO + TRANSACTION + b"BDAT 6 LAST\r\nQUIT\r\nNOOP\r\n", decide)
        self.assertEqual(codes_of(out)[-2:], [451, 250])
        self.assertFalse(any(isinstance(e, DataChunk | ConnectionClosing) for e in events))

    def test_bare_lf_in_chunks(self) -> None:
        """A bare LF in a chunk fails it with 550 5.6.0; the rest is refused."""
        _, events, out = self.exchange(EHLO + TRANSACTION + b"BDAT 3\r\na\nbBDAT 1 LAST\r\nc")
        self.assertIn(DataAborted(codes.BARE_LINE_ENDING), events)
        self.assertEqual(codes_of(out)[-2:], [550, 550])


class StartTLSTests(SessionTestCase):
    def test_not_available(self) -> None:
        """Without TLS, STARTTLS is not implemented."""
        _, _, out = self.exchange(EHLO + b"STARTTLS\r\n")
        self.assertEqual(codes_of(out)[-1], 502)

    def test_injection_discarded(self) -> None:
        """Commands pipelined after STARTTLS are trailing data, never parsed, and dropped on accept."""
        session = ServerSession(HOST, tls_available=True, auth_enabled=True)
        session.data_to_send()
        session.receive_data(EHLO + b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        self.assertEqual(session.next_event(), Greeted("client.test", True))
        self.assertEqual(session.next_event(), StartTLS())
        self.assertIsNone(session.next_event())
        session.receive_data(b"RCPT TO:<victim@example.test>\r\n")
        self.assertEqual(
            session.trailing_data, b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@example.test>\r\n"
        )
        session.data_to_send()
        session.accept()
        self.assertEqual(session.data_to_send(), b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(session.trailing_data, b"")
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"")
        self.assertTrue(session.tls)
        self.assertEqual(session.state, State.CONNECTED)
        # After TLS the client must EHLO again; STARTTLS is no longer offered.
        session.receive_data(b"MAIL FROM:<a@b.test>\r\n" + EHLO)
        while session.next_event() is not None:
            pass
        out = session.data_to_send()
        self.assertTrue(out.startswith(b"503 5.5.1"))
        self.assertNotIn(b"STARTTLS", out)

    def test_tls_forgets_authentication(self) -> None:
        """STARTTLS drops an earlier authentication and the helo name (RFC 3207 section 4.2)."""
        plain = base64.b64encode(b"\0alice@example.test\0" + PASSWORD.encode())
        session, _, _ = self.exchange(
            EHLO + b"AUTH PLAIN " + plain + b"\r\nSTARTTLS\r\n",
            tls_available=True,
            auth_enabled=True,
            plaintext_auth="always",
        )
        self.assertIsNone(session.authenticated_user)
        self.assertIsNone(session.helo)
        self.assertTrue(session.tls)

    def test_starttls_errors(self) -> None:
        """STARTTLS takes no argument, and not twice."""
        _, _, out = self.exchange(EHLO + b"STARTTLS now\r\n", tls_available=True)
        self.assertEqual(codes_of(out)[-1], 501)
        session = ServerSession(HOST, tls_available=True)
        pump(session, EHLO + b"STARTTLS\r\n")
        session.data_to_send()
        self.assertEqual(codes_of(pump(session, EHLO + b"STARTTLS\r\n")), [250, 503])

    def test_reject(self) -> None:
        """If the adapter cannot start TLS, the client gets its reply; pipelined bytes stay dropped."""

        def decide(session: ServerSession, event: Event) -> None:
            session.reject(codes.TLS_NOT_AVAILABLE) if isinstance(event, StartTLS) else session.accept()

        session = ServerSession(HOST, tls_available=True)
        session.data_to_send()
        out = pump(session, EHLO + b"STARTTLS\r\nNOOP\r\n", decide)
        self.assertEqual(codes_of(out), [250, 454])
        self.assertFalse(session.tls)
        self.assertEqual(codes_of(pump(session, b"NOOP\r\n")), [250])


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


class AuthTests(SessionTestCase):
    AUTH_ON = {"tls_active": True, "auth_enabled": True}

    def test_plain_initial_response(self) -> None:
        """AUTH PLAIN with an initial response authenticates: 235 2.7.0, protocol ESMTPSA."""
        session, events, out = self.exchange(
            EHLO + b"AUTH PLAIN " + plain("alice@example.test", PASSWORD) + b"\r\n", **self.AUTH_ON
        )
        self.assertEqual(replies(out)[-1], "235 2.7.0 Authentication successful")
        self.assertEqual(events[1][:2], ("AuthStep", "PLAIN"))
        self.assertEqual(events[-1], Authenticated("alice@example.test", "PLAIN"))
        self.assertEqual(session.authenticated_user, "alice@example.test")
        self.assertEqual(session.protocol, "ESMTPSA")
        self.assertNotIn(PASSWORD.encode(), repr(events).encode())

    def test_plain_with_challenge(self) -> None:
        """AUTH PLAIN without initial response gets an empty 334 challenge first."""
        _, _, out = self.exchange(
            EHLO + b"AUTH PLAIN\r\n" + plain("alice@example.test", PASSWORD) + b"\r\n", **self.AUTH_ON
        )
        self.assertEqual(replies(out)[-2:], ["334 ", "235 2.7.0 Authentication successful"])

    def test_login(self) -> None:
        """AUTH LOGIN asks for user name and password in base64 challenges."""
        script = (
            EHLO
            + b"AUTH LOGIN\r\n"
            + base64.b64encode(b"alice@example.test")
            + b"\r\n"
            + base64.b64encode(PASSWORD.encode())
            + b"\r\n"
        )
        _, _, out = self.exchange(script, **self.AUTH_ON)
        self.assertEqual(
            replies(out)[-3:], ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"]
        )

    def test_scram_sha_256(self) -> None:
        """A full SCRAM-SHA-256 exchange (RFC 7677) authenticates through the AuthStep events."""
        session = ServerSession(HOST, **self.AUTH_ON)  # type: ignore[arg-type]
        session.data_to_send()

        def pump(data: bytes) -> bytes:
            session.receive_data(data)
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    accept_all(session, event)
            return session.data_to_send()

        pump(EHLO)
        client_first_bare = b"n=alice@example.test,r=clientnonce"
        out = pump(b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,," + client_first_bare) + b"\r\n")
        self.assertTrue(out.startswith(b"334 "))
        server_first = base64.b64decode(out[4:].strip())
        fields = dict(f.split(b"=", 1) for f in server_first.split(b","))
        salted = hashlib.pbkdf2_hmac(
            "sha256", PASSWORD.encode(), base64.b64decode(fields[b"s"]), int(fields[b"i"])
        )
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = b"c=" + base64.b64encode(b"n,,") + b",r=" + fields[b"r"]
        auth_message = client_first_bare + b"," + server_first + b"," + without_proof
        signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        out = pump(base64.b64encode(without_proof + b",p=" + base64.b64encode(proof)) + b"\r\n")
        self.assertTrue(out.startswith(b"334 "))
        self.assertTrue(base64.b64decode(out[4:].strip()).startswith(b"v="))
        self.assertEqual(pump(b"\r\n"), b"235 2.7.0 Authentication successful\r\n")
        self.assertEqual(session.authenticated_user, "alice@example.test")

    def test_failures(self) -> None:
        """Wrong password 535 5.7.8, cancel 501 5.0.0, bad base64 501 5.5.2, unknown mechanism 504 5.5.4."""
        table = [
            (b"AUTH PLAIN " + plain("alice@example.test", "wrong") + b"\r\n", "535 5.7.8"),
            (b"AUTH PLAIN\r\n*\r\n", "501 5.0.0"),
            (b"AUTH PLAIN *\r\n", "501 5.0.0"),
            (b"AUTH PLAIN\r\n!!!\r\n", "501 5.5.2"),
            (b"AUTH PLAIN !!!\r\n", "501 5.5.2"),
            (b"AUTH PLAIN =\r\n", "535 5.7.8"),
            (b"AUTH CRAM-MD5\r\n", "504 5.5.4"),
            (b"AUTH\r\n", "501 5.5.4"),
        ]
        for command, expected in table:
            session, _, out = self.exchange(EHLO + command + b"NOOP\r\n", **self.AUTH_ON)
            self.assertTrue(replies(out)[-2].startswith(expected), (command, replies(out)))
            self.assertEqual(replies(out)[-1], "250 2.0.0 OK")
            self.assertIsNone(session.authenticated_user)

    def test_failed_auth_counts_as_error(self) -> None:
        """Failed AUTH attempts count toward the bad-command limit."""
        attempt = b"AUTH PLAIN " + plain("alice@example.test", "wrong") + b"\r\n"
        session, _, out = self.exchange(
            EHLO + attempt * 3, limits=SMTPLimits(max_bad_commands=2), **self.AUTH_ON
        )
        self.assertEqual(codes_of(out)[1:], [535, 535, 421])
        self.assertTrue(session.closed)

    def test_policy(self) -> None:
        """Without TLS and with plaintext auth off, AUTH gets 538 5.7.11; AUTH disabled gets 502."""
        _, _, out = self.exchange(EHLO + b"AUTH PLAIN\r\n", auth_enabled=True)
        self.assertTrue(replies(out)[-1].startswith("538 5.7.11"))
        _, _, out = self.exchange(EHLO + b"AUTH PLAIN\r\n")
        self.assertEqual(codes_of(out)[-1], 502)

    def test_already_authenticated(self) -> None:
        """A second AUTH gets 503 and AUTH is no longer advertised."""
        auth = b"AUTH PLAIN " + plain("alice@example.test", PASSWORD) + b"\r\n"
        _, _, out = self.exchange(EHLO + auth + auth + EHLO, **self.AUTH_ON)
        self.assertEqual(codes_of(out)[-2], 503)
        self.assertNotIn(b"AUTH", out.split(b"503")[1])

    def test_authenticator_error(self) -> None:
        """reject() on AuthStep ends the exchange with the given reply."""

        def decide(session: ServerSession, event: Event) -> None:
            session.reject(codes.AUTH_TEMPORARY_FAILURE) if isinstance(event, AuthStep) else session.accept()

        session, _, out = self.exchange(
            EHLO + b"AUTH PLAIN " + plain("a@b.test", "x") + b"\r\nNOOP\r\n", decide, **self.AUTH_ON
        )
        self.assertEqual(codes_of(out)[-2:], [454, 250])
        self.assertEqual(session.state, State.GREETED)

    def test_submission_requires_auth(self) -> None:
        """On the submission role MAIL needs AUTH first (530 5.7.0), and works after it."""
        _, _, out = self.exchange(
            EHLO + b"MAIL FROM:<alice@example.test>\r\n", role="submission", **self.AUTH_ON
        )
        self.assertTrue(replies(out)[-1].startswith("530 5.7.0"))
        _, _, out = self.exchange(
            EHLO
            + b"AUTH PLAIN "
            + plain("alice@example.test", PASSWORD)
            + b"\r\nMAIL FROM:<alice@example.test>\r\n",
            role="submission",
            **self.AUTH_ON,
        )
        self.assertEqual(codes_of(out)[-2:], [235, 250])

    def test_sender_login_check(self) -> None:
        """Only submission with an authenticated user and a non-null sender needs the ownership check."""
        auth = EHLO + b"AUTH PLAIN " + plain("alice@example.test", PASSWORD) + b"\r\n"
        session, _, _ = self.exchange(auth, role="submission", **self.AUTH_ON)
        self.assertEqual(session.sender_login_check("bob@example.test"), "alice@example.test")
        self.assertIsNone(session.sender_login_check(""))
        session, _, _ = self.exchange(auth, role="mta", **self.AUTH_ON)
        self.assertIsNone(session.sender_login_check("bob@example.test"))
        session, _, _ = self.exchange(EHLO, role="submission", **self.AUTH_ON)
        self.assertIsNone(session.sender_login_check("bob@example.test"))

    def test_sender_not_owned_rejected(self) -> None:
        """An application refusing MailFrom with SENDER_NOT_OWNED: 553 5.7.1, no transaction, RCPT out of sequence."""

        def decide(session: ServerSession, event: Event) -> None:
            owner = session.sender_login_check(event.address) if isinstance(event, MailFrom) else None
            if owner is not None and event.address != owner:  # type: ignore[attr-defined]
                session.reject(SENDER_NOT_OWNED)
            else:
                accept_all(session, event)

        session, _, out = self.exchange(
            EHLO
            + b"AUTH PLAIN "
            + plain("alice@example.test", PASSWORD)
            + b"\r\nMAIL FROM:<bob@example.test>\r\nRCPT TO:<x@remote.test>\r\n"
            + b"MAIL FROM:<alice@example.test>\r\n",
            decide,
            role="submission",
            **self.AUTH_ON,
        )
        self.assertEqual(
            replies(out)[-3:],
            [
                "553 5.7.1 Sender address rejected: not owned by user",
                "503 5.5.1 Bad sequence of commands",
                "250 2.1.0 Sender OK",
            ],
        )
        self.assertEqual(session.transaction.mail_from, "alice@example.test")  # type: ignore[union-attr]

    def test_long_auth_line(self) -> None:
        """AUTH lines may exceed 1000 octets (RFC 4954: 12288), but not the AUTH limit."""
        _, _, out = self.exchange(EHLO + b"AUTH PLAIN\r\n" + b"A" * 2000 + b"\r\nNOOP\r\n", **self.AUTH_ON)
        self.assertEqual(codes_of(out)[-2:], [535, 250])
        _, _, out = self.exchange(EHLO + b"AUTH PLAIN\r\n" + b"A" * 13000 + b"\r\nNOOP\r\n", **self.AUTH_ON)
        self.assertEqual(replies(out)[-2:], ["500 5.5.2 Line too long", "250 2.0.0 OK"])


class APITests(SynchronousTestCase):
    def test_misuse_raises(self) -> None:
        """accept/reject without a pending event, or reject with a positive reply, raise."""
        session = ServerSession(HOST)
        self.assertRaises(RuntimeError, session.accept)
        self.assertRaises(RuntimeError, session.reject, codes.LOCAL_ERROR)
        session.receive_data(EHLO + b"MAIL FROM:<a@b.test>\r\n")
        session.next_event()
        session.next_event()
        self.assertRaises(ValueError, session.reject, codes.OK)

    def test_bad_constructor_arguments(self) -> None:
        """Unknown roles and plaintext policies are refused."""
        self.assertRaises(ValueError, ServerSession, HOST, role="relay")
        self.assertRaises(ValueError, ServerSession, HOST, plaintext_auth="sometimes")


class FuzzTests(SynchronousTestCase):
    def test_random_input_never_raises(self) -> None:
        """Random mixes of command fragments and bytes never raise; every output line is a reply."""
        rng = random.Random(2920)
        tokens = [
            b"EHLO x\r\n",
            b"MAIL FROM:<a@b.test>\r\n",
            b"RCPT TO:<c@d.test>\r\n",
            b"DATA\r\n",
            b"BDAT 3\r\n",
            b"BDAT 2 LAST\r\n",
            b"RSET\r\n",
            b"AUTH PLAIN\r\n",
            b"AUTH LOGIN\r\n",
            b"STARTTLS\r\n",
            b".\r\n",
            b"\r\n",
            b"\n",
            b"\r",
            b".",
            b"abc",
            b"*\r\n",
            b"\xff",
            b"QUIT\r\n",
            b"BDAT 0 LAST\r\n",
            b"x" * 1500,
        ]
        for _ in range(300):
            session = ServerSession(
                HOST,
                tls_available=True,
                auth_enabled=True,
                plaintext_auth="always",
                limits=SMTPLimits(max_message_size=50),
            )
            for _ in range(rng.randint(1, 40)):
                session.receive_data(
                    rng.choice(tokens) if rng.random() < 0.8 else bytes(rng.randrange(256) for _ in range(5))
                )
                while (event := session.next_event()) is not None:
                    if event.needs_decision:
                        if rng.random() < 0.3 and not isinstance(event, DataComplete):
                            session.reject(codes.LOCAL_ERROR)
                        else:
                            accept_all(session, event)
            for line in session.data_to_send().split(b"\r\n")[:-1]:
                self.assertRegex(line, rb"^[2-5][0-9][0-9][ -]")


class RequireTLSTests(SessionTestCase):
    """REQUIRETLS (RFC 8689) on the server side."""

    def test_offered_only_over_tls(self) -> None:
        """EHLO lists REQUIRETLS once TLS is on, never before."""
        _, _, out = self.exchange(EHLO, tls_available=True)
        self.assertNotIn(b"REQUIRETLS", out)
        _, _, out = self.exchange(EHLO, tls_active=True, tls_available=True)
        self.assertIn(b"\r\n250 REQUIRETLS\r\n", out)

    def test_mail_parameter(self) -> None:
        """Over TLS the keyword reaches the MailFrom event; without TLS 530 5.7.10; a value is a syntax error."""
        _, events, _ = self.exchange(EHLO + b"MAIL FROM:<a@remote.test> REQUIRETLS\r\n", tls_active=True)
        self.assertEqual(events[-1], MailFrom("a@remote.test", {"REQUIRETLS": None}))
        _, events, out = self.exchange(EHLO + b"MAIL FROM:<a@remote.test> REQUIRETLS\r\n")
        self.assertTrue(out.endswith(b"530 5.7.10 REQUIRETLS needs a TLS connection: use STARTTLS first\r\n"))
        self.assertFalse(any(isinstance(e, MailFrom) for e in events))
        _, _, out = self.exchange(EHLO + b"MAIL FROM:<a@remote.test> REQUIRETLS=yes\r\n", tls_active=True)
        self.assertTrue(out.splitlines()[-1].startswith(b"501 5.5.4"), out)
