"""
Tests for the sans-IO POP3 session and the RETR/TOP encoder: bytes in,
events and bytes out.

Every exchange is run twice, whole and one byte at a time, and both runs
must give the same events and the same output (h11's idea).
"""

from __future__ import annotations

import base64
import random
import re
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from txmail.auth import sasl
from txmail.auth.passwords import make_credentials
from txmail.pop3.events import (
    AuthStep,
    ConnectionClosing,
    Event,
    Login,
    Maildrop,
    PasswordCheck,
    Retrieve,
    StartTLS,
    Update,
)
from txmail.pop3.session import (
    AUTH_FAILED,
    IN_USE,
    SYS_TEMP,
    MessageEncoder,
    POP3Session,
    State,
    uidl,
)

PASSWORD = "secret word"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
USER = "alice@example.test"
MAILDROP = Maildrop(0x1234, ((3, 120), (5, 200)))

Decide = Callable[[POP3Session, Event], None]


def fake_authenticator(server: sasl.SASLServer, request: Any) -> sasl.SASLEvent:
    """What the real Authenticator does, synchronously, for alice only."""
    if isinstance(request, sasl.NeedPasswordCheck):
        return server.password_checked(request.username == USER and request.password.reveal() == PASSWORD)
    if isinstance(request, sasl.NeedCredentials):
        return server.provide_credentials(CREDENTIALS if request.username == USER else None)
    return request  # type: ignore[no-any-return]


def accept_all(session: POP3Session, event: Event) -> None:
    """Accept everything; passwords are checked like the real authenticator would."""
    if isinstance(event, PasswordCheck):
        if event.username == USER and event.password.reveal() == PASSWORD:
            session.accept(USER)
        else:
            session.reject(AUTH_FAILED)
    elif isinstance(event, AuthStep):
        session.accept(fake_authenticator(event.server, event.request))
    elif isinstance(event, Login):
        session.accept(MAILDROP)
    else:
        session.accept()


def comparable(events: list[Event]) -> list[Any]:
    """AuthStep holds a live SASL server, PasswordCheck a Secret: compare their parts."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, AuthStep):
            out.append(("AuthStep", event.mechanism, event.request))
        elif isinstance(event, PasswordCheck):
            out.append(("PasswordCheck", event.username, event.password.reveal()))
        else:
            out.append(event)
    return out


def drive(session: POP3Session, pieces: list[bytes], decide: Decide) -> tuple[list[Event], bytes]:
    events: list[Event] = []
    out = session.data_to_send()
    for piece in pieces:
        session.receive_data(piece)
        while (event := session.next_event()) is not None:
            events.append(event)
            if event.needs_decision:
                decide(session, event)
        out += session.data_to_send()
    return events, out


class SessionTestCase(SynchronousTestCase):
    def exchange(
        self, data: bytes, decide: Decide = accept_all, **kwargs: Any
    ) -> tuple[POP3Session, list[Event], bytes]:
        """Run *data* whole and byte by byte; both must agree. Return the whole run."""
        kwargs.setdefault("plaintext_auth", "always")
        whole = POP3Session(**kwargs)
        events, out = drive(whole, [data], decide)
        single = POP3Session(**kwargs)
        events2, out2 = drive(single, [data[i : i + 1] for i in range(len(data))], decide)
        self.assertEqual(comparable(events), comparable(events2))
        self.assertEqual(out, out2)
        return whole, events, out

    def login(self) -> bytes:
        return f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode()


class ExampleSessionTests(SessionTestCase):
    def test_rfc1939_example_session(self) -> None:
        """The example session of RFC 1939 section 10 (USER/PASS instead of APOP) gives its responses."""
        data = self.login() + b"STAT\r\nLIST\r\nRETR 1\r\nDELE 1\r\nRETR 2\r\nDELE 2\r\nQUIT\r\n"
        session, events, out = self.exchange(data)
        self.assertEqual(
            out,
            b"+OK txmail POP3 server ready\r\n"
            b"+OK Send your password\r\n"
            b"+OK Logged in, 2 messages (320 octets)\r\n"
            b"+OK 2 320\r\n"
            b"+OK 2 messages (320 octets)\r\n1 120\r\n2 200\r\n.\r\n"
            b"+OK 120 octets\r\n"
            b"+OK Message 1 deleted\r\n"
            b"+OK 200 octets\r\n"
            b"+OK Message 2 deleted\r\n"
            b"+OK Bye\r\n",
        )
        self.assertEqual(
            comparable(events),
            [
                ("PasswordCheck", USER, PASSWORD),
                Login(USER, "USER"),
                Retrieve(1, 3, 120),
                Retrieve(2, 5, 200),
                Update(deleted=(3, 5), seen=()),
                ConnectionClosing("quit"),
            ],
        )
        self.assertTrue(session.closed)

    def test_retr_marks_seen_at_quit_only(self) -> None:
        """RETR'd messages are reported as seen in Update; TOP'd and deleted ones are not."""
        _, events, _ = self.exchange(self.login() + b"RETR 1\r\nTOP 2 0\r\nQUIT\r\n")
        self.assertIn(Update(deleted=(), seen=(3,)), events)
        _, events, _ = self.exchange(self.login() + b"RETR 1\r\nDELE 1\r\nQUIT\r\n")
        self.assertIn(Update(deleted=(3,), seen=()), events)

    def test_retrieve_accepted_with_the_message(self) -> None:
        """accept(encoded) queues the message right after its +OK, before the next reply (pipelining)."""

        def decide(session: POP3Session, event: Event) -> None:
            if isinstance(event, Retrieve):
                session.accept(b"body of %d\r\n.\r\n" % event.uid)
            else:
                accept_all(session, event)

        _, _, out = self.exchange(self.login() + b"RETR 1\r\nRETR 2\r\nNOOP\r\n", decide)
        self.assertTrue(
            out.endswith(b"+OK 120 octets\r\nbody of 3\r\n.\r\n+OK 200 octets\r\nbody of 5\r\n.\r\n+OK\r\n"),
            out,
        )

    def test_quit_in_authorization_has_no_update(self) -> None:
        """QUIT before login closes at once, without an Update event."""
        _, events, out = self.exchange(b"QUIT\r\n")
        self.assertEqual(events, [ConnectionClosing("quit")])
        self.assertTrue(out.endswith(b"+OK Bye\r\n"))

    def test_update_failure(self) -> None:
        """When the deletions fail the client gets -ERR [SYS/TEMP] and the session closes."""

        def decide(session: POP3Session, event: Event) -> None:
            if isinstance(event, Update):
                session.reject(SYS_TEMP)
            else:
                accept_all(session, event)

        session, _, out = self.exchange(self.login() + b"DELE 1\r\nQUIT\r\n", decide)
        self.assertTrue(out.endswith(b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n"))
        self.assertTrue(session.closed)


class TransactionTests(SessionTestCase):
    def test_deleted_messages_hidden_and_refused(self) -> None:
        """After DELE a message leaves STAT/LIST/UIDL and RETR, TOP, DELE, LIST n refuse it."""
        data = (
            self.login()
            + b"DELE 1\r\nSTAT\r\nLIST\r\nUIDL\r\nRETR 1\r\nTOP 1 0\r\nDELE 1\r\nLIST 1\r\nUIDL 1\r\n"
        )
        _, events, out = self.exchange(data)
        tail = out.split(b"+OK Message 1 deleted\r\n", 1)[1]
        self.assertEqual(
            tail,
            b"+OK 1 200\r\n"
            b"+OK 1 messages (200 octets)\r\n2 200\r\n.\r\n"
            b"+OK 1 messages (200 octets)\r\n2 0000000500001234\r\n.\r\n"
            + b"-ERR Message is deleted\r\n"
            * 5,
        )
        self.assertFalse(any(isinstance(e, Retrieve) for e in events))

    def test_message_lookup(self) -> None:
        """message(n) is what RETR n would retrieve: nothing before login, out of range or deleted."""
        session = POP3Session(plaintext_auth="always")
        self.assertIsNone(session.message(1))
        drive(session, [self.login()], accept_all)
        assert session.maildrop is not None
        messages = session.maildrop.messages
        self.assertEqual([session.message(n) for n in range(len(messages) + 2)], [None, *messages, None])
        drive(session, [b"DELE 1\r\n"], accept_all)
        self.assertIsNone(session.message(1))
        self.assertEqual(session.message(2), messages[1])

    def test_rset_undeletes(self) -> None:
        """RSET unmarks every deleted message and QUIT then deletes nothing."""
        _, events, out = self.exchange(self.login() + b"DELE 1\r\nDELE 2\r\nRSET\r\nSTAT\r\nQUIT\r\n")
        self.assertIn(b"+OK 2 messages (320 octets)\r\n+OK 2 320\r\n", out)
        self.assertIn(Update(deleted=(), seen=()), events)

    def test_list_and_uidl_single(self) -> None:
        """LIST n and UIDL n answer on one line; UIDL is UID then UIDVALIDITY in hex."""
        _, _, out = self.exchange(self.login() + b"LIST 2\r\nUIDL 2\r\n")
        self.assertTrue(out.endswith(b"+OK 2 200\r\n+OK 2 0000000500001234\r\n"))
        self.assertEqual(uidl(0x1234, 5), "0000000500001234")
        self.assertEqual(uidl(0xFFFFFFFF, 0xFFFFFFFF), "FFFFFFFFFFFFFFFF")

    def test_bad_message_numbers(self) -> None:
        """Out-of-range numbers get -ERR No such message, non-numbers a syntax error; the session goes on."""
        data = self.login() + b"RETR 3\r\nRETR 0\r\nRETR x\r\nLIST -1\r\nDELE\r\nTOP 1\r\nTOP 1 x\r\nNOOP\r\n"
        _, _, out = self.exchange(data)
        tail = out.split(b"(320 octets)\r\n", 1)[1]
        self.assertEqual(
            tail,
            b"-ERR No such message\r\n" * 2 + b"-ERR Syntax error in arguments\r\n" * 5 + b"+OK\r\n",
        )

    def test_top(self) -> None:
        """TOP n m emits a Retrieve with the line count and answers +OK."""
        _, events, out = self.exchange(self.login() + b"TOP 2 10\r\n")
        self.assertIn(Retrieve(2, 5, 200, 10), events)
        self.assertTrue(out.endswith(b"+OK Top of message follows\r\n"))

    def test_retrieve_rejected(self) -> None:
        """A Retrieve the application cannot serve is answered with its -ERR."""

        def decide(session: POP3Session, event: Event) -> None:
            if isinstance(event, Retrieve):
                session.reject(SYS_TEMP)
            else:
                accept_all(session, event)

        _, _, out = self.exchange(self.login() + b"RETR 1\r\nNOOP\r\n", decide)
        self.assertTrue(out.endswith(b"-ERR [SYS/TEMP] Temporary server failure, try again later\r\n+OK\r\n"))

    def test_paused_session_parses_nothing(self) -> None:
        """While an event waits for a decision no pipelined command is answered."""
        session = POP3Session(plaintext_auth="always")
        session.data_to_send()
        session.receive_data(self.login() + b"STAT\r\nNOOP\r\n")
        event = session.next_event()
        self.assertIsInstance(event, PasswordCheck)
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"+OK Send your password\r\n")
        session.accept(USER)
        self.assertEqual(session.next_event(), Login(USER, "USER"))
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b"")
        session.accept(MAILDROP)
        self.assertIsNone(session.next_event())
        self.assertEqual(
            session.data_to_send(), b"+OK Logged in, 2 messages (320 octets)\r\n+OK 2 320\r\n+OK\r\n"
        )

    def test_accept_needs_pending_event(self) -> None:
        """accept() and reject() with nothing pending are the caller's mistake and raise."""
        session = POP3Session()
        self.assertRaises(RuntimeError, session.accept)
        self.assertRaises(RuntimeError, session.reject, SYS_TEMP)
        session.receive_data(b"USER a\r\n")
        self.assertRaises(ValueError, session.reject, SYS_TEMP.__class__(True, "x"))


class AuthorizationTests(SessionTestCase):
    def test_wrong_password(self) -> None:
        """A wrong password gets -ERR [AUTH], USER must be given again, and a retry works."""
        data = f"USER {USER}\r\nPASS wrong\r\nPASS {PASSWORD}\r\n".encode() + self.login()
        session, _, out = self.exchange(data)
        self.assertIn(
            b"-ERR [AUTH] Authentication failed\r\n-ERR No user name given: use USER first\r\n", out
        )
        self.assertIs(session.state, State.TRANSACTION)
        self.assertEqual(session.user, USER)

    def test_password_with_spaces(self) -> None:
        """PASS keeps spaces in its argument (RFC 1939 section 7)."""
        _, events, _ = self.exchange(b"USER bob\r\nPASS  a b \r\n", lambda s, e: s.reject(AUTH_FAILED))
        self.assertEqual(comparable(events), [("PasswordCheck", "bob", " a b ")])

    def test_password_not_in_repr(self) -> None:
        """The PasswordCheck event's repr does not show the password."""
        _, events, _ = self.exchange(self.login())
        self.assertNotIn(PASSWORD, repr(events[0]))

    def test_in_use(self) -> None:
        """A locked maildrop is answered -ERR [IN-USE] and the session stays in AUTHORIZATION."""

        def decide(session: POP3Session, event: Event) -> None:
            if isinstance(event, Login):
                session.reject(IN_USE)
            else:
                accept_all(session, event)

        session, _, out = self.exchange(self.login() + b"STAT\r\n", decide)
        self.assertIn(b"-ERR [IN-USE] Maildrop is locked by another session\r\n", out)
        self.assertTrue(out.endswith(b"-ERR Command not valid in this state\r\n"))
        self.assertIs(session.state, State.AUTHORIZATION)

    def test_wrong_state_commands(self) -> None:
        """Transaction commands before login and USER/PASS/STLS/AUTH after it get -ERR."""
        _, _, out = self.exchange(b"STAT\r\nLIST\r\nRETR 1\r\nNOOP\r\n")
        self.assertEqual(out.count(b"-ERR Command not valid in this state\r\n"), 4)
        _, _, out = self.exchange(self.login() + b"USER x\r\nPASS y\r\nAUTH PLAIN\r\nSTLS\r\nAPOP a b\r\n")
        self.assertEqual(out.count(b"-ERR Command not valid in this state\r\n"), 5)

    def test_unknown_command_and_apop(self) -> None:
        """Unknown commands and APOP get -ERR and the session goes on."""
        _, _, out = self.exchange(b"XYZZY\r\nAPOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n\r\nCAPA\r\n")
        self.assertIn(
            b"-ERR Unknown command\r\n-ERR APOP is not supported\r\n-ERR Unknown command\r\n+OK Cap", out
        )

    def test_plaintext_policy(self) -> None:
        """Without TLS under policy never, USER/PASS/AUTH get -ERR [AUTH] and CAPA lists neither."""
        _, events, out = self.exchange(
            b"CAPA\r\nUSER alice\r\nPASS x\r\nAUTH PLAIN AGFsaWNlAHg=\r\n",
            plaintext_auth="never",
            tls_available=True,
        )
        self.assertEqual(events, [])
        self.assertNotIn(b"\r\nUSER\r\n", out)
        self.assertNotIn(b"SASL", out)
        self.assertIn(b"\r\nSTLS\r\n", out)
        self.assertEqual(out.count(b"-ERR [AUTH] Plaintext authentication disallowed"), 3)

    def test_plaintext_policy_loopback(self) -> None:
        """Policy loopback allows passwords from the loopback interface only."""
        _, _, out = self.exchange(b"USER alice\r\n", plaintext_auth="loopback", loopback=True)
        self.assertTrue(out.endswith(b"+OK Send your password\r\n"))
        _, _, out = self.exchange(b"USER alice\r\n", plaintext_auth="loopback", loopback=False)
        self.assertTrue(
            out.endswith(b"-ERR [AUTH] Plaintext authentication disallowed on non-secure connections\r\n")
        )

    def test_capa(self) -> None:
        """CAPA lists the RFC 2449 capabilities; USER, SASL and STLS only before login."""
        _, _, out = self.exchange(b"CAPA\r\n", tls_available=True)
        self.assertEqual(
            out.split(b"\r\n", 1)[1],
            b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\n"
            b"USER\r\nSASL SCRAM-SHA-256 PLAIN LOGIN\r\nSTLS\r\nIMPLEMENTATION txmail\r\n.\r\n",
        )
        _, _, out = self.exchange(self.login() + b"CAPA\r\n", tls_available=True)
        self.assertTrue(
            out.endswith(
                b"+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
                b"PIPELINING\r\nIMPLEMENTATION txmail\r\n.\r\n"
            )
        )
        _, _, out = self.exchange(b"CAPA\r\n", tls_active=True, tls_available=True, plaintext_auth="never")
        self.assertIn(b"USER\r\n", out)
        self.assertNotIn(b"STLS", out)


class SASLTests(SessionTestCase):
    def plain(self, password: str = PASSWORD) -> str:
        return base64.b64encode(f"\0{USER}\0{password}".encode()).decode()

    def test_auth_plain_initial_response(self) -> None:
        """AUTH PLAIN with an initial response (RFC 5034 section 4) logs in."""
        _session, events, out = self.exchange(f"AUTH PLAIN {self.plain()}\r\nSTAT\r\n".encode())
        self.assertIn(Login(USER, "PLAIN"), events)
        self.assertTrue(out.endswith(b"+OK Logged in, 2 messages (320 octets)\r\n+OK 2 320\r\n"))

    def test_auth_plain_continuation(self) -> None:
        """AUTH PLAIN without initial response gets a '+ ' continuation, then logs in."""
        _, events, out = self.exchange(f"AUTH PLAIN\r\n{self.plain()}\r\n".encode())
        self.assertIn(b"\r\n+ \r\n+OK Logged in", out)
        self.assertIn(Login(USER, "PLAIN"), events)

    def test_auth_cancel_and_failure(self) -> None:
        """'*' cancels, a wrong password gets -ERR [AUTH], bad base64 -ERR; the session goes on."""
        data = f"AUTH PLAIN\r\n*\r\nAUTH PLAIN {self.plain('wrong')}\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN *\r\nNOOP\r\n"
        session, _, out = self.exchange(data.encode())
        self.assertEqual(
            out.split(b"\r\n", 1)[1],
            b"+ \r\n-ERR Authentication cancelled\r\n-ERR [AUTH] Authentication failed\r\n"
            b"+ \r\n-ERR Invalid base64 data\r\n-ERR Authentication cancelled\r\n"
            b"-ERR Command not valid in this state\r\n",
        )
        self.assertIs(session.state, State.AUTHORIZATION)

    def test_auth_login_mechanism(self) -> None:
        """AUTH LOGIN asks for user name and password with base64 challenges."""
        user = base64.b64encode(USER.encode()).decode()
        pw = base64.b64encode(PASSWORD.encode()).decode()
        _, events, out = self.exchange(f"AUTH LOGIN\r\n{user}\r\n{pw}\r\n".encode())
        self.assertIn(b"+ VXNlcm5hbWU6\r\n+ UGFzc3dvcmQ6\r\n+OK Logged in", out)
        self.assertIn(Login(USER, "LOGIN"), events)

    def test_auth_unknown_mechanism_and_list(self) -> None:
        """An unknown mechanism gets -ERR; bare AUTH lists the mechanisms."""
        _, _, out = self.exchange(b"AUTH CRAM-MD5\r\nAUTH\r\n")
        self.assertTrue(
            out.endswith(
                b"-ERR Unsupported authentication mechanism\r\n"
                b"+OK Mechanisms follow\r\nSCRAM-SHA-256\r\nPLAIN\r\nLOGIN\r\n.\r\n"
            )
        )

    def test_long_sasl_response_allowed(self) -> None:
        """SASL responses may exceed the 255-octet command limit (up to 12 KiB)."""
        blob = base64.b64encode(b"x" * 3000).decode()
        _, _, out = self.exchange(f"AUTH PLAIN\r\n{blob}\r\nNOOP\r\n".encode())
        self.assertNotIn(b"Line too long", out)
        self.assertIn(b"-ERR [AUTH] Authentication failed\r\n", out)


class STLSTests(SessionTestCase):
    def test_stls_discards_pipelined_commands(self) -> None:
        """Bytes pipelined after STLS are trailing data, never parsed, dropped by accept()."""
        session = POP3Session(tls_available=True)
        session.data_to_send()
        session.receive_data(b"STLS\r\nUSER evil\r\n")
        self.assertEqual(session.next_event(), StartTLS())
        session.receive_data(b"PASS evil\r\n")
        self.assertEqual(session.trailing_data, b"USER evil\r\nPASS evil\r\n")
        self.assertIsNone(session.next_event())
        session.accept()
        self.assertEqual(session.trailing_data, b"")
        self.assertEqual(session.data_to_send(), b"+OK Begin TLS negotiation\r\n")
        self.assertTrue(session.tls)
        session.receive_data(b"CAPA\r\n")
        self.assertIsNone(session.next_event())
        out = session.data_to_send()
        self.assertNotIn(b"STLS", out)
        self.assertNotIn(b"evil", out)

    def test_stls_refused(self) -> None:
        """STLS without TLS configured, with arguments, or under TLS gets -ERR."""
        _, _, out = self.exchange(b"STLS\r\nSTLS x\r\n")
        self.assertIn(b"-ERR TLS is not available\r\n-ERR Syntax error in arguments\r\n", out)
        _, _, out = self.exchange(b"STLS\r\n", tls_active=True)
        self.assertTrue(out.endswith(b"-ERR TLS is already active\r\n"))


class LimitTests(SessionTestCase):
    def test_long_line(self) -> None:
        """A command over 255 octets gets -ERR and the session goes on; so does a huge one."""
        data = b"NOOP " + b"x" * 260 + b"\r\n" + b"USER " + b"y" * 20000 + b"\r\nUSER ok\r\n"
        _session, _, out = self.exchange(data)
        self.assertEqual(
            out.split(b"\r\n", 1)[1], b"-ERR Line too long\r\n" * 2 + b"+OK Send your password\r\n"
        )

    def test_too_many_errors(self) -> None:
        """Past max_bad_commands errors the session closes."""
        session, events, out = self.exchange(b"BAD\r\n" * 4, max_bad_commands=2)
        self.assertTrue(session.closed)
        self.assertEqual(events, [ConnectionClosing("errors")])
        self.assertTrue(out.endswith(b"-ERR Too many errors, closing connection\r\n"))

    def test_timeout(self) -> None:
        """timeout() answers -ERR and closes without UPDATE."""
        session = POP3Session()
        session.timeout()
        self.assertTrue(session.closed)
        self.assertTrue(session.data_to_send().endswith(b"-ERR Disconnected for inactivity\r\n"))
        self.assertEqual(session.next_event(), ConnectionClosing("timeout"))

    def test_random_input_never_raises(self) -> None:
        """Random bytes give -ERR responses, never an exception (a seeded fuzz loop)."""
        rng = random.Random(1939)
        words = [
            b"USER",
            b"PASS",
            b"STAT",
            b"LIST",
            b"RETR",
            b"TOP",
            b"AUTH",
            b"\r\n",
            b" ",
            b"\r",
            b"\n",
            b".",
        ]
        for _ in range(200):
            data = b"".join(
                rng.choice(words) if rng.random() < 0.7 else bytes([rng.randrange(256)]) for _ in range(40)
            )
            session = POP3Session(plaintext_auth="always", max_bad_commands=1000)
            drive(session, [data + b"\r\n"], accept_all)


def encode(data: bytes, body_lines: int | None = None, chunk: int = 0) -> bytes:
    encoder = MessageEncoder(body_lines)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    out = b"".join(encoder.feed(p) for p in pieces if not encoder.done)
    return out + encoder.finish()


class MessageEncoderTests(SynchronousTestCase):
    def check(self, data: bytes, expected: bytes, body_lines: int | None = None) -> None:
        for chunk in (0, 1, 2, 3, 7):
            self.assertEqual(encode(data, body_lines, chunk), expected, f"chunk size {chunk}")

    def test_dot_stuffing(self) -> None:
        """Lines starting with '.' get another '.', also the first line; the terminator follows."""
        self.check(b".a\r\nb\r\n..c\r\n.\r\n", b"..a\r\nb\r\n...c\r\n..\r\n.\r\n")

    def test_missing_final_crlf(self) -> None:
        """A message not ending in CRLF gets one before the terminator."""
        self.check(b"a\r\nb", b"a\r\nb\r\n.\r\n")
        self.check(b"a\r\nb\r", b"a\r\nb\r\n.\r\n")
        self.check(b"", b".\r\n")

    def test_bare_lf(self) -> None:
        """Bare LF becomes CRLF, across chunk boundaries too."""
        self.check(b"a\nb\r\n.c\n\n", b"a\r\nb\r\n..c\r\n\r\n.\r\n")

    def test_top(self) -> None:
        """TOP sends the header, the blank line and the first n body lines."""
        message = b"A: 1\r\nB: 2\r\n\r\nl1\r\n.l2\r\nl3\r\n"
        self.check(message, b"A: 1\r\nB: 2\r\n\r\n.\r\n", 0)
        self.check(message, b"A: 1\r\nB: 2\r\n\r\nl1\r\n..l2\r\n.\r\n", 2)
        self.check(message, message.replace(b".l2", b"..l2") + b".\r\n", 10)
        self.check(b"A: 1\r\n", b"A: 1\r\n.\r\n", 0)

    def test_round_trip_random(self) -> None:
        """Unstuffing the encoding of random CRLF text gives the text back (poplib's view)."""
        rng = random.Random(5034)
        for _ in range(50):
            lines = [bytes(rng.choice(b".ab \t") for _ in range(rng.randrange(6))) for _ in range(20)]
            data = b"\r\n".join(lines) + b"\r\n"
            out = encode(data, chunk=rng.randrange(1, 9))
            self.assertTrue(out.endswith(b"\r\n.\r\n") or out == b".\r\n")
            got = [line[1:] if line.startswith(b"..") else line for line in out.split(b"\r\n")[:-2]]
            self.assertEqual(b"\r\n".join(got) + b"\r\n", data)

    def test_matches_reference_on_random_bytes(self) -> None:
        """
        Any mix of CR, LF, dots and text (LF-only files, CRLF files, bare CR
        and LF), cut into chunks anywhere, encodes like the whole message
        rewritten at once: every LF not after CR becomes CRLF, every line
        starting with a dot gets another, the last line is ended, then the
        terminator.
        """

        def reference(data: bytes) -> bytes:
            out = re.sub(rb"(?<!\r)\n", b"\r\n", data)
            out = re.sub(rb"(\A|\n)\.", rb"\1..", out)
            if out and not out.endswith(b"\n"):
                out += b"\n" if out.endswith(b"\r") else b"\r\n"
            return out + b".\r\n"

        rng = random.Random(1939)
        for alphabet in (b"\r\n.a", b"\n.ab", b"\r\n.\r\na"):
            for _ in range(300):
                data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(40)))
                chunk = rng.choice((0, 1, 2, 3, 5, 11))
                self.assertEqual(encode(data, chunk=chunk), reference(data), f"{data!r} in chunks of {chunk}")
