"""
Tests for txmail.imap.session: the sans-IO IMAP4rev1 server session.

Theory of operation
-------------------
Each test builds an :class:`IMAPSession`, feeds it bytes (whole, and for a
few commands split at every byte position, h11's idea), drains its events
and compares what it has to send with exact bytes.  Events that pause the
session (PasswordCheck, AuthStep, Execute, StartTLS) are answered the way
the Twisted adapter answers them.  No Twisted reactor is involved: the
module under test is sans-IO.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from txmail.auth import sasl
from txmail.imap.commands import capabilities
from txmail.imap.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    Event,
    Execute,
    IdleDone,
    IdleStarted,
    PasswordCheck,
    StartTLS,
)
from txmail.imap.session import IMAPLimits, IMAPSession, State
from txmail.imap.view import SelectedView
from txmail.model import FlagsChanged, MailboxDeleted, MessageInfo, MessagesAdded, MessagesExpunged

__all__ = ["drain", "feed", "logged_in", "selected"]

# Built from the command table (every extension adds to it); the table's
# own order is checked by test_capability_order.
BASE_CAPS = " ".join((*capabilities(), "APPENDLIMIT=52428800")).encode("ascii")
AUTH_CAPS = b"AUTH=SCRAM-SHA-256 AUTH=PLAIN AUTH=LOGIN"
USER = "alice@example.test"


def drain(session: IMAPSession) -> list[Event]:
    """All events the session has now."""
    events: list[Event] = []
    while (event := session.next_event()) is not None:
        events.append(event)
    return events


def feed(session: IMAPSession, data: bytes) -> tuple[list[Event], bytes]:
    """Feed *data* whole; return the events and the output."""
    session.receive_data(data)
    return drain(session), session.data_to_send()


def feed_chunks(session: IMAPSession, chunks: Iterable[bytes]) -> tuple[list[Event], bytes]:
    events: list[Event] = []
    out = b""
    for chunk in chunks:
        session.receive_data(chunk)
        events += drain(session)
        out += session.data_to_send()
    return events, out


def info(uid: int, *flags: str) -> MessageInfo:
    return MessageInfo(uid, frozenset(flags), 100, 0.0, uid)


def logged_in(**kwargs: object) -> IMAPSession:
    """A session in the authenticated state (LOGIN accepted), output cleared."""
    kwargs.setdefault("plaintext_auth", "always")
    session = IMAPSession(**kwargs)  # type: ignore[arg-type]
    session.data_to_send()
    events, _ = feed(session, b"l1 LOGIN alice secret\r\n")
    assert isinstance(events[-1], PasswordCheck)
    session.accept(USER)
    drain(session)
    session.data_to_send()
    return session


def selected(uids: Iterable[int] = (1, 2, 3)) -> tuple[IMAPSession, SelectedView]:
    """A session in the selected state with a view of *uids*."""
    session = logged_in()
    (event,), _ = feed(session, b"s1 SELECT INBOX\r\n")
    assert isinstance(event, Execute)
    view = SelectedView("INBOX", 42, [info(u) for u in uids])
    session.select(view)
    session.finish("OK", "SELECT completed", "READ-WRITE")
    session.data_to_send()
    return session, view


def all_splits(data: bytes) -> Iterable[list[bytes]]:
    """*data* whole, byte by byte, and split in two at every position."""
    yield [data]
    yield [bytes([b]) for b in data]
    for i in range(1, len(data)):
        yield [data[:i], data[i:]]


class GreetingAndCapabilityTests(SynchronousTestCase):
    def test_capability_order(self) -> None:
        """
        RFC 3501 section 7.2.1: IMAP4rev1 first, then the table's
        capabilities in registration order (these ones at least, in this order).
        """
        caps = capabilities()
        self.assertEqual(caps[:3], ("IMAP4rev1", "LITERAL+", "SASL-IR"))
        expected = ["IDLE", "NAMESPACE", "CHILDREN", "SPECIAL-USE", "LIST-EXTENDED", "QUOTA", "MOVE"]
        self.assertEqual([c for c in caps if c in expected], expected)
        self.assertEqual(len(set(caps)), len(caps))

    def test_greeting(self) -> None:
        """RFC 3501 section 7.1.1: the greeting is an untagged OK carrying the CAPABILITY code."""
        session = IMAPSession(plaintext_auth="always")
        self.assertEqual(
            session.data_to_send(),
            b"* OK [CAPABILITY " + BASE_CAPS + b" " + AUTH_CAPS + b"] txmail IMAP4rev1 ready\r\n",
        )
        self.assertIs(session.state, State.NOT_AUTHENTICATED)
        self.assertIsNone(session.next_event())

    def test_capability_policy_never(self) -> None:
        """
        RFC 3501 sections 6.2.3 and 7.2.1: without TLS and with plaintext
        policy "never", LOGINDISABLED and no AUTH= mechanisms; STARTTLS offered.
        """
        session = IMAPSession(tls_available=True, plaintext_auth="never")
        session.data_to_send()
        events, out = feed(session, b"c1 CAPABILITY\r\n")
        self.assertEqual(events, [])
        self.assertEqual(
            out, b"* CAPABILITY " + BASE_CAPS + b" STARTTLS LOGINDISABLED\r\nc1 OK CAPABILITY completed\r\n"
        )

    def test_capability_policy_loopback(self) -> None:
        """Policy "loopback": AUTH= offered on loopback only, LOGINDISABLED elsewhere."""
        local = IMAPSession(plaintext_auth="loopback", loopback=True)
        remote = IMAPSession(plaintext_auth="loopback", loopback=False)
        self.assertIn("AUTH=PLAIN", local.capabilities())
        self.assertNotIn("LOGINDISABLED", local.capabilities())
        self.assertNotIn("AUTH=PLAIN", remote.capabilities())
        self.assertIn("LOGINDISABLED", remote.capabilities())

    def test_capability_policy_always(self) -> None:
        """Policy "always": AUTH= mechanisms and no LOGINDISABLED, even remote without TLS."""
        session = IMAPSession(plaintext_auth="always")
        session.data_to_send()
        _, out = feed(session, b"c1 CAPABILITY\r\n")
        self.assertEqual(
            out, b"* CAPABILITY " + BASE_CAPS + b" " + AUTH_CAPS + b"\r\nc1 OK CAPABILITY completed\r\n"
        )

    def test_capability_after_starttls(self) -> None:
        """
        RFC 3501 section 6.2.1: after STARTTLS the client must re-fetch
        capabilities; STARTTLS and LOGINDISABLED are gone, AUTH= appears.
        """
        session = IMAPSession(tls_available=True, plaintext_auth="never")
        session.data_to_send()
        events, out = feed(session, b"t1 STARTTLS\r\n")
        self.assertEqual(events, [StartTLS()])
        self.assertEqual(out, b"")
        session.accept()
        self.assertEqual(session.data_to_send(), b"t1 OK Begin TLS negotiation now\r\n")
        self.assertTrue(session.tls)
        _, out = feed(session, b"c1 CAPABILITY\r\n")
        self.assertEqual(
            out, b"* CAPABILITY " + BASE_CAPS + b" " + AUTH_CAPS + b"\r\nc1 OK CAPABILITY completed\r\n"
        )
        _, out = feed(session, b"t2 STARTTLS\r\n")
        self.assertEqual(out, b"t2 BAD TLS is already active\r\n")

    def test_implicit_tls(self) -> None:
        """Port 993: TLS from the start, no STARTTLS, AUTH= offered even with policy "never"."""
        session = IMAPSession(tls_available=True, tls_active=True, plaintext_auth="never")
        caps = session.capabilities()
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertIn("AUTH=PLAIN", caps)

    def test_capability_after_login(self) -> None:
        """After login the tagged OK carries the new capabilities (no AUTH=, RFC 3501 section 6.2.3)."""
        session = IMAPSession(plaintext_auth="always")
        session.data_to_send()
        events, _ = feed(session, b"l1 LOGIN alice secret\r\n")
        self.assertEqual(events, [PasswordCheck("alice", "secret")])
        session.accept(USER)
        self.assertEqual(session.data_to_send(), b"l1 OK [CAPABILITY " + BASE_CAPS + b"] Logged in\r\n")
        self.assertEqual(drain(session), [Authenticated(USER, "LOGIN")])
        _, out = feed(session, b"c1 CAPABILITY\r\n")
        self.assertEqual(out, b"* CAPABILITY " + BASE_CAPS + b"\r\nc1 OK CAPABILITY completed\r\n")

    def test_unknown_policy(self) -> None:
        self.assertRaises(ValueError, IMAPSession, plaintext_auth="sometimes")


class StateTests(SynchronousTestCase):
    def test_select_before_login(self) -> None:
        """RFC 3501 section 3: SELECT is not valid in the not-authenticated state -> BAD."""
        session = IMAPSession(plaintext_auth="always")
        session.data_to_send()
        events, out = feed(session, b"a1 SELECT INBOX\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 BAD SELECT is not allowed now\r\n")
        self.assertEqual(session.bad_commands, 1)
        self.assertFalse(session.closed)

    def test_fetch_in_authenticated_state(self) -> None:
        """RFC 3501 section 6.4: FETCH needs a selected mailbox -> BAD, session goes on."""
        session = logged_in()
        events, out = feed(session, b"a1 FETCH 1 FLAGS\r\na2 NOOP\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 BAD FETCH is not allowed now\r\na2 OK NOOP completed\r\n")

    def test_login_after_login(self) -> None:
        """LOGIN is only valid in the not-authenticated state."""
        session = logged_in()
        _, out = feed(session, b"a1 LOGIN bob pw\r\n")
        self.assertEqual(out, b"a1 BAD LOGIN is not allowed now\r\n")

    def test_starttls_after_login(self) -> None:
        """RFC 3501 section 6.2.1: STARTTLS only before authentication."""
        session = logged_in(tls_available=True)
        _, out = feed(session, b"a1 STARTTLS\r\n")
        self.assertEqual(out, b"a1 BAD STARTTLS is not allowed now\r\n")

    def test_unknown_command_and_garbage(self) -> None:
        session = IMAPSession()
        session.data_to_send()
        _, out = feed(session, b"a1 FOO\r\nx\r\n")
        self.assertEqual(out, b"a1 BAD Unknown command\r\nx BAD Expected a space\r\n")
        self.assertEqual(session.bad_commands, 2)

    def test_select_execute_then_selected(self) -> None:
        """SELECT is an Execute; select() + finish() enter the selected state."""
        session, view = selected()
        self.assertIs(session.state, State.SELECTED)
        self.assertIs(session.view, view)
        session.unselect()
        self.assertIs(session.state, State.AUTHENTICATED)
        self.assertIsNone(session.view)


class LoginTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.session = IMAPSession(plaintext_auth="always")
        self.session.data_to_send()

    def test_login_split_everywhere(self) -> None:
        """LOGIN split at every byte position gives one PasswordCheck, nothing written."""
        data = b'a1 LOGIN "alice" secret\r\n'
        for chunks in all_splits(data):
            session = IMAPSession(plaintext_auth="always")
            session.data_to_send()
            events, out = feed_chunks(session, chunks)
            self.assertEqual(events, [PasswordCheck("alice", "secret")], chunks)
            self.assertEqual(out, b"")
            self.assertTrue(session.paused)

    def test_login_accepted(self) -> None:
        events, _ = feed(self.session, b"a1 LOGIN alice secret\r\na2 NOOP\r\n")
        self.assertEqual(events, [PasswordCheck("alice", "secret")])
        # Paused: the pipelined NOOP waits for the answer.
        self.assertIsNone(self.session.next_event())
        self.assertEqual(self.session.data_to_send(), b"")
        self.session.accept(USER)
        self.assertEqual(drain(self.session), [Authenticated(USER, "LOGIN")])
        self.assertEqual(
            self.session.data_to_send(),
            b"a1 OK [CAPABILITY " + BASE_CAPS + b"] Logged in\r\na2 OK NOOP completed\r\n",
        )
        self.assertIs(self.session.state, State.AUTHENTICATED)
        self.assertEqual(self.session.user, USER)

    def test_login_rejected(self) -> None:
        """RFC 5530: a wrong password is NO [AUTHENTICATIONFAILED]; the session stays unauthenticated."""
        feed(self.session, b"a1 LOGIN alice wrong\r\n")
        self.session.reject()
        self.assertEqual(
            self.session.data_to_send(), b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        )
        self.assertIs(self.session.state, State.NOT_AUTHENTICATED)
        self.assertIsNone(self.session.user)
        self.assertEqual(drain(self.session), [])

    def test_login_disabled(self) -> None:
        """RFC 3501 section 6.2.3: with LOGINDISABLED, LOGIN is refused without asking anyone."""
        session = IMAPSession(plaintext_auth="never")
        session.data_to_send()
        events, out = feed(session, b"a1 LOGIN alice secret\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 NO [PRIVACYREQUIRED] Plaintext login is disabled; use STARTTLS first\r\n")

    def test_login_with_literals(self) -> None:
        """RFC 3501 section 7.5: a synchronizing literal gets "+"; LITERAL+ (RFC 7888) gets none."""
        events, out = feed(self.session, b"a1 LOGIN {5}\r\n")
        self.assertEqual((events, out), ([], b"+ Ready for literal data\r\n"))
        events, out = feed(self.session, b"alice {6+}\r\nsecret\r\n")
        self.assertEqual(events, [PasswordCheck("alice", "secret")])
        self.assertEqual(out, b"")

    def test_literal_split_everywhere(self) -> None:
        """A LITERAL+ command split anywhere parses the same and writes no continuation."""
        data = b"a1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"
        for chunks in all_splits(data):
            session = IMAPSession(plaintext_auth="always")
            session.data_to_send()
            events, out = feed_chunks(session, chunks)
            self.assertEqual(events, [PasswordCheck("alice", "secret")], chunks)
            self.assertEqual(out, b"", chunks)

    def test_sync_literal_split_everywhere(self) -> None:
        """A synchronizing literal: exactly one "+" continuation, whatever the split."""
        data = b"a1 LOGIN {5}\r\nalice secret\r\n"
        for chunks in all_splits(data):
            session = IMAPSession(plaintext_auth="always")
            session.data_to_send()
            events, out = feed_chunks(session, chunks)
            self.assertEqual(events, [PasswordCheck("alice", "secret")], chunks)
            self.assertEqual(out, b"+ Ready for literal data\r\n", chunks)


class LiteralLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.session = logged_in(limits=IMAPLimits(max_literal=10))

    def test_oversized_sync_literal(self) -> None:
        """
        RFC 7889 section 4 / RFC 4469: a literal over the limit is refused
        with [TOOBIG] before any octet is asked for (no "+").
        """
        events, out = feed(self.session, b"a1 APPEND INBOX {11}\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 NO [TOOBIG] Literal too large\r\n")
        # The client did not send the octets; the next line is a command.
        _, out = feed(self.session, b"a2 NOOP\r\n")
        self.assertEqual(out, b"a2 OK NOOP completed\r\n")

    def test_oversized_nonsync_literal(self) -> None:
        """RFC 7888 section 4: a too-large LITERAL+ is refused and its octets are not run as commands."""
        events, out = feed(self.session, b"a1 APPEND INBOX {11+}\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 NO [TOOBIG] Literal too large\r\n")
        events, out = feed(self.session, b"a9 LOGOUT\r\n\r\na2 NOOP\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a2 OK NOOP completed\r\n")
        self.assertFalse(self.session.closed)

    def test_literal_at_limit(self) -> None:
        events, out = feed(self.session, b"a1 APPEND INBOX {10}\r\n")
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        events, out = feed(self.session, b"0123456789\r\n")
        (event,) = events
        assert isinstance(event, Execute)
        self.assertEqual(event.command.name, "APPEND")
        self.assertEqual(event.command.args.literal, b"0123456789")  # type: ignore[union-attr]


class AuthenticateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.session = IMAPSession(plaintext_auth="always")
        self.session.data_to_send()
        self.plain = base64.b64encode(b"\x00alice\x00secret")

    def check_plain_step(self, events: list[Event]) -> AuthStep:
        (event,) = events
        assert isinstance(event, AuthStep)
        self.assertEqual(event.mechanism, "PLAIN")
        assert isinstance(event.request, sasl.NeedPasswordCheck)
        self.assertEqual(event.request.username, "alice")
        return event

    def test_sasl_ir(self) -> None:
        """RFC 4959: the initial response on the command line, no continuation."""
        events, out = feed(self.session, b"a1 AUTHENTICATE PLAIN " + self.plain + b"\r\n")
        self.assertEqual(out, b"")
        self.check_plain_step(events)
        self.session.accept(sasl.Succeeded(USER, ""))
        self.assertEqual(self.session.data_to_send(), b"a1 OK [CAPABILITY " + BASE_CAPS + b"] Logged in\r\n")
        self.assertEqual(drain(self.session), [Authenticated(USER, "PLAIN")])
        self.assertIs(self.session.state, State.AUTHENTICATED)

    def test_sasl_ir_split_everywhere(self) -> None:
        data = b"a1 AUTHENTICATE PLAIN " + self.plain + b"\r\n"
        for chunks in all_splits(data):
            session = IMAPSession(plaintext_auth="always")
            session.data_to_send()
            events, out = feed_chunks(session, chunks)
            self.check_plain_step(events)
            self.assertEqual(out, b"")

    def test_continuation(self) -> None:
        """RFC 3501 section 6.2.2: an empty "+ " challenge, then the response line."""
        events, out = feed(self.session, b"a1 AUTHENTICATE PLAIN\r\n")
        self.assertEqual((events, out), ([], b"+ \r\n"))
        events, out = feed(self.session, self.plain + b"\r\n")
        self.assertEqual(out, b"")
        self.check_plain_step(events)
        self.session.accept(sasl.Failed("invalid"))
        self.assertEqual(
            self.session.data_to_send(), b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
        )
        self.assertIs(self.session.state, State.NOT_AUTHENTICATED)
        _, out = feed(self.session, b"a2 NOOP\r\n")
        self.assertEqual(out, b"a2 OK NOOP completed\r\n")

    def test_cancel(self) -> None:
        """RFC 3501 section 6.2.2: "*" cancels the exchange; the server answers BAD."""
        feed(self.session, b"a1 AUTHENTICATE PLAIN\r\n")
        events, out = feed(self.session, b"*\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 BAD Authentication cancelled\r\n")
        _, out = feed(self.session, b"a2 NOOP\r\n")
        self.assertEqual(out, b"a2 OK NOOP completed\r\n")

    def test_bad_base64(self) -> None:
        feed(self.session, b"a1 AUTHENTICATE PLAIN\r\n")
        _, out = feed(self.session, b"!!!\r\n")
        self.assertEqual(out, b"a1 BAD Invalid base64 in the SASL response\r\n")

    def test_response_over_line_limit(self) -> None:
        """
        A SASL response longer than the line limit ends the exchange with a
        tagged BAD (RFC 3501 section 6.2.2: the server answers the
        AUTHENTICATE command), so that the next line is a command again and
        not read as a SASL response (a NOOP here would otherwise be
        "Invalid base64").
        """
        session = IMAPSession(plaintext_auth="always", limits=IMAPLimits(max_line=64))
        session.data_to_send()
        feed(session, b"a1 AUTHENTICATE PLAIN\r\n")
        events, out = feed(session, b"A" * 100 + b"\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 BAD Authentication cancelled: the response is longer than 64 octets\r\n")
        self.assertIs(session.state, State.NOT_AUTHENTICATED)
        _, out = feed(session, b"a2 NOOP\r\n")
        self.assertEqual(out, b"a2 OK NOOP completed\r\n")

    def test_response_over_line_limit_in_pieces(self) -> None:
        """The same when the long response arrives in pieces, the end of line last."""
        session = IMAPSession(plaintext_auth="always", limits=IMAPLimits(max_line=64))
        session.data_to_send()
        feed(session, b"a1 AUTHENTICATE PLAIN\r\n")
        out = b""
        for _ in range(5):
            out += feed(session, b"QUFB" * 10)[1]
        out += feed(session, b"\r\na2 NOOP\r\n")[1]
        self.assertEqual(
            out,
            b"a1 BAD Authentication cancelled: the response is longer than 64 octets\r\n"
            b"a2 OK NOOP completed\r\n",
        )

    def test_unsupported_mechanism(self) -> None:
        _, out = feed(self.session, b"a1 AUTHENTICATE GSSAPI\r\n")
        self.assertEqual(out, b"a1 NO [CANNOT] Unsupported authentication mechanism\r\n")

    def test_not_offered_without_tls(self) -> None:
        """Policy "never" without TLS: no mechanism is offered, AUTHENTICATE PLAIN is refused."""
        session = IMAPSession(plaintext_auth="never")
        session.data_to_send()
        _, out = feed(session, b"a1 AUTHENTICATE PLAIN " + self.plain + b"\r\n")
        self.assertEqual(out, b"a1 NO [CANNOT] Unsupported authentication mechanism\r\n")


class IdleTests(SynchronousTestCase):
    def test_idle_done(self) -> None:
        """RFC 2177 section 3: "+ idling", then DONE ends IDLE with a tagged OK."""
        session = logged_in()
        events, out = feed(session, b"i1 IDLE\r\n")
        self.assertEqual(events, [IdleStarted()])
        self.assertEqual(out, b"+ idling\r\n")
        self.assertTrue(session.idling)
        events, out = feed(session, b"DONE\r\n")
        self.assertEqual(events, [IdleDone()])
        self.assertEqual(out, b"i1 OK IDLE terminated\r\n")
        self.assertFalse(session.idling)

    def test_idle_done_split_everywhere(self) -> None:
        for chunks in all_splits(b"i1 IDLE\r\nDONE\r\n"):
            session = logged_in()
            events, out = feed_chunks(session, chunks)
            self.assertEqual(events, [IdleStarted(), IdleDone()], chunks)
            self.assertEqual(out, b"+ idling\r\ni1 OK IDLE terminated\r\n", chunks)

    def test_idle_other_input(self) -> None:
        """RFC 2177 section 3: anything but DONE ends IDLE with BAD."""
        session = logged_in()
        feed(session, b"i1 IDLE\r\n")
        events, out = feed(session, b"a2 NOOP\r\n")
        self.assertEqual(events, [IdleDone()])
        self.assertEqual(out, b"i1 BAD Expected DONE\r\n")
        self.assertFalse(session.idling)
        _, out = feed(session, b"a3 NOOP\r\n")
        self.assertEqual(out, b"a3 OK NOOP completed\r\n")

    def test_idle_pushes_updates(self) -> None:
        """RFC 2177: while idling, mailbox changes are sent at once, EXPUNGE included."""
        session, view = selected()
        feed(session, b"i1 IDLE\r\n")
        view.queue(MessagesExpunged((2,)))
        view.queue(MessagesAdded((info(4),)))
        self.assertEqual(session.data_to_send(), b"")
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"* 2 EXPUNGE\r\n* 3 EXISTS\r\n")
        _, out = feed(session, b"DONE\r\n")
        self.assertEqual(out, b"i1 OK IDLE terminated\r\n")

    def test_changes_not_pushed_outside_idle(self) -> None:
        session, view = selected()
        view.queue(MessagesAdded((info(4),)))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"")
        (event,), _ = feed(session, b"n1 NOOP\r\n")
        assert isinstance(event, Execute)
        session.finish("OK", "NOOP completed")
        self.assertEqual(session.data_to_send(), b"* 4 EXISTS\r\nn1 OK NOOP completed\r\n")


class StartTLSTests(SynchronousTestCase):
    def test_pipelined_bytes_are_not_parsed(self) -> None:
        """
        RFC 3501 section 6.2.1, RFC 2595 section 3.1 (CVE-2011-0411): what
        follows STARTTLS in the same read is kept aside, never parsed, and
        dropped on accept().
        """
        session = IMAPSession(tls_available=True, plaintext_auth="never")
        session.data_to_send()
        events, out = feed(session, b"t1 STARTTLS\r\na2 LOGIN alice secret\r\n")
        self.assertEqual(events, [StartTLS()])
        self.assertEqual(out, b"")
        self.assertEqual(session.trailing_data, b"a2 LOGIN alice secret\r\n")
        events, _ = feed(session, b"a3 CAPABILITY\r\n")
        self.assertEqual(events, [])
        self.assertEqual(session.trailing_data, b"a2 LOGIN alice secret\r\na3 CAPABILITY\r\n")
        session.accept()
        self.assertEqual(session.data_to_send(), b"t1 OK Begin TLS negotiation now\r\n")
        self.assertEqual(session.trailing_data, b"")
        self.assertEqual(drain(session), [])
        _, out = feed(session, b"a4 NOOP\r\n")
        self.assertEqual(out, b"a4 OK NOOP completed\r\n")

    def test_pipelined_split_everywhere(self) -> None:
        data = b"t1 STARTTLS\r\na2 NOOP\r\n"
        for chunks in all_splits(data):
            session = IMAPSession(tls_available=True)
            session.data_to_send()
            events, out = feed_chunks(session, chunks)
            self.assertEqual(events, [StartTLS()], chunks)
            self.assertEqual(out, b"")
            self.assertEqual(session.trailing_data, b"a2 NOOP\r\n", chunks)

    def test_not_available(self) -> None:
        session = IMAPSession()
        session.data_to_send()
        _, out = feed(session, b"t1 STARTTLS\r\n")
        self.assertEqual(out, b"t1 BAD TLS is not available\r\n")

    def test_rejected(self) -> None:
        """The adapter could not start TLS: a tagged failure, still in the clear."""
        session = IMAPSession(tls_available=True)
        session.data_to_send()
        feed(session, b"t1 STARTTLS\r\nx\r\n")
        session.reject(("NO", "TLS unavailable", None))
        self.assertEqual(session.data_to_send(), b"t1 NO TLS unavailable\r\n")
        self.assertFalse(session.tls)
        self.assertEqual(session.trailing_data, b"")


class EndingTests(SynchronousTestCase):
    def test_too_many_bad_commands(self) -> None:
        """Protocol errors past max_bad_commands end the session with BYE."""
        session = IMAPSession(limits=IMAPLimits(max_bad_commands=2))
        session.data_to_send()
        events, out = feed(session, b"a1 FOO\r\na2 FOO\r\na3 FOO\r\na4 NOOP\r\n")
        self.assertEqual(events, [ConnectionClosing("errors")])
        self.assertEqual(
            out, b"a1 BAD Unknown command\r\na2 BAD Unknown command\r\n* BYE Too many invalid commands\r\n"
        )
        self.assertTrue(session.closed)
        self.assertEqual(feed(session, b"a5 NOOP\r\n"), ([], b""))

    def test_timeout(self) -> None:
        """RFC 3501 section 5.4: autologout with an untagged BYE."""
        session = logged_in()
        session.timeout()
        self.assertEqual(session.data_to_send(), b"* BYE Autologout; idle for too long\r\n")
        self.assertEqual(drain(session), [ConnectionClosing("timeout")])
        self.assertTrue(session.closed)
        session.timeout()
        self.assertEqual(session.data_to_send(), b"")

    def test_timeout_while_paused(self) -> None:
        session = IMAPSession(plaintext_auth="always")
        session.data_to_send()
        feed(session, b"a1 LOGIN alice secret\r\n")
        session.timeout()
        self.assertEqual(session.data_to_send(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(session.closed)

    def test_logout(self) -> None:
        """RFC 3501 section 6.1.3: untagged BYE, tagged OK, then the connection closes."""
        session = logged_in()
        events, out = feed(session, b"a1 LOGOUT\r\na2 NOOP\r\n")
        self.assertEqual(events, [ConnectionClosing("logout")])
        self.assertEqual(out, b"* BYE Logging out\r\na1 OK LOGOUT completed\r\n")
        self.assertTrue(session.closed)
        self.assertIs(session.state, State.LOGOUT)

    def test_logout_before_login(self) -> None:
        session = IMAPSession()
        session.data_to_send()
        _, out = feed(session, b"a1 LOGOUT\r\n")
        self.assertEqual(out, b"* BYE Logging out\r\na1 OK LOGOUT completed\r\n")
        self.assertTrue(session.closed)

    def test_shutdown(self) -> None:
        session = logged_in()
        session.shutdown()
        self.assertEqual(session.data_to_send(), b"* BYE Server shutting down\r\n")
        self.assertEqual(drain(session), [ConnectionClosing("shutdown")])


class SimpleCommandTests(SynchronousTestCase):
    def test_id(self) -> None:
        """RFC 2971 section 3.1: ID is valid in any state and answers with our name."""
        session = IMAPSession(version="1.2")
        session.data_to_send()
        _, out = feed(session, b'a1 ID ("name" "client")\r\n')
        self.assertEqual(out, b'* ID ("name" "txmail" "version" "1.2")\r\na1 OK ID completed\r\n')
        _, out = feed(session, b"a2 ID NIL\r\n")
        self.assertEqual(out, b'* ID ("name" "txmail" "version" "1.2")\r\na2 OK ID completed\r\n')

    def test_id_without_version(self) -> None:
        session = IMAPSession()
        session.data_to_send()
        _, out = feed(session, b"a1 ID NIL\r\n")
        self.assertEqual(out, b'* ID ("name" "txmail")\r\na1 OK ID completed\r\n')

    def test_enable(self) -> None:
        """RFC 5161 section 3.1: ENABLED lists only what got enabled (nothing here)."""
        session = logged_in()
        _, out = feed(session, b"a1 ENABLE X-UNKNOWN\r\n")
        self.assertEqual(out, b"* ENABLED\r\na1 OK ENABLE completed\r\n")

    def test_enable_before_login(self) -> None:
        """RFC 5161 section 3.1: ENABLE is valid only in the authenticated state."""
        session = IMAPSession()
        session.data_to_send()
        _, out = feed(session, b"a1 ENABLE CONDSTORE\r\n")
        self.assertEqual(out, b"a1 BAD ENABLE is not allowed now\r\n")

    def test_namespace(self) -> None:
        """RFC 2342 section 5: one personal namespace with "/" as the delimiter."""
        session = logged_in()
        _, out = feed(session, b"a1 NAMESPACE\r\n")
        self.assertEqual(out, b'* NAMESPACE (("" "/")) NIL NIL\r\na1 OK NAMESPACE completed\r\n')

    def test_noop_unselected(self) -> None:
        """NOOP with nothing selected is answered by the session at once (nothing to look at)."""
        session = logged_in()
        events, out = feed(session, b"a1 NOOP\r\n")
        self.assertEqual((events, out), ([], b"a1 OK NOOP completed\r\n"))

    def test_noop_check_selected(self) -> None:
        """NOOP and CHECK with a mailbox selected go to the command layer (it looks for changes)."""
        session, _ = selected()
        (event,), out = feed(session, b"a1 NOOP\r\na2 CHECK\r\n")
        self.assertEqual((event, out), (Execute(event.command), b""))
        assert isinstance(event, Execute)
        self.assertEqual(event.command.name, "NOOP")
        session.finish("OK", "NOOP completed")
        (event,) = drain(session)
        assert isinstance(event, Execute)
        self.assertEqual(event.command.name, "CHECK")
        session.finish("OK", "CHECK completed")
        self.assertEqual(session.data_to_send(), b"a1 OK NOOP completed\r\na2 OK CHECK completed\r\n")


class ExecuteTests(SynchronousTestCase):
    def test_execute_and_finish(self) -> None:
        """Commands the store runs pause the session until finish(); pipelined ones follow in order."""
        session = logged_in()
        events, out = feed(session, b"a1 CREATE foo\r\na2 NOOP\r\n")
        (event,) = events
        assert isinstance(event, Execute)
        self.assertEqual(event.command.tag, "a1")
        self.assertEqual(event.command.name, "CREATE")
        self.assertIs(session.pending_command, event.command)
        self.assertTrue(session.paused)
        self.assertEqual(out, b"")
        session.send(b"* untagged\r\n")
        session.finish("NO", "Mailbox already exists", "ALREADYEXISTS")
        self.assertEqual(drain(session), [])
        self.assertEqual(
            session.data_to_send(),
            b"* untagged\r\na1 NO [ALREADYEXISTS] Mailbox already exists\r\na2 OK NOOP completed\r\n",
        )
        self.assertIsNone(session.pending_command)

    def test_finish_without_execute(self) -> None:
        session = logged_in()
        self.assertRaises(RuntimeError, session.finish, "OK", "done")
        feed(session, b"a1 LOGOUT\r\n")

    def test_finish_before_next_event(self) -> None:
        """The event must have been taken with next_event() before it is answered."""
        session = logged_in()
        session.receive_data(b"a1 CREATE foo\r\n")
        self.assertRaises(RuntimeError, session.finish, "OK", "done")

    def test_accept_execute_is_an_error(self) -> None:
        session = logged_in()
        feed(session, b"a1 CREATE foo\r\n")
        self.assertRaises(RuntimeError, session.accept)

    def test_reject_execute(self) -> None:
        """reject() answers an Execute too (the adapter's answer to an internal error)."""
        session = logged_in()
        feed(session, b"a1 CREATE foo\r\n")
        session.reject(("NO", "Internal server error; try again later", "SERVERBUG"))
        self.assertEqual(
            session.data_to_send(), b"a1 NO [SERVERBUG] Internal server error; try again later\r\n"
        )
        self.assertFalse(session.paused)

    def test_updates_flushed_before_tagged_ok(self) -> None:
        """RFC 3501 section 7: pending untagged updates go out before the tagged OK of any command."""
        session, view = selected()
        (event,), _ = feed(session, b"a1 STATUS Sent (MESSAGES)\r\n")
        assert isinstance(event, Execute)
        view.queue(MessagesExpunged((1,)))
        view.queue(MessagesAdded((info(4),)))
        view.queue(FlagsChanged((info(3, "\\Seen"),)))
        session.send(b"* STATUS Sent (MESSAGES 0)\r\n")
        session.finish("OK", "STATUS completed")
        self.assertEqual(
            session.data_to_send(),
            b"* STATUS Sent (MESSAGES 0)\r\n"
            b"* 1 EXPUNGE\r\n* 3 EXISTS\r\n* 2 FETCH (FLAGS (\\Seen))\r\n"
            b"a1 OK STATUS completed\r\n",
        )

    def test_expunge_withheld_after_fetch_store_search(self) -> None:
        """
        RFC 3501 section 7.4.1: no EXPUNGE while responding to FETCH, STORE
        or SEARCH; other updates still go out, EXPUNGE at the next NOOP.
        """
        for command in (b"FETCH 1 FLAGS", b"STORE 1 +FLAGS (\\Seen)", b"SEARCH ALL", b"UID FETCH 1 FLAGS"):
            session, view = selected()
            (event,), _ = feed(session, b"a1 " + command + b"\r\n")
            assert isinstance(event, Execute)
            view.queue(MessagesExpunged((1,)))
            view.queue(MessagesAdded((info(4),)))
            session.finish("OK", "done")
            self.assertEqual(session.data_to_send(), b"* 4 EXISTS\r\na1 OK done\r\n", command)
            # Sequence numbers stay stable: message 1 is still there.
            self.assertEqual(list(view.uids), [1, 2, 3, 4])
            (event,), _ = feed(session, b"a2 NOOP\r\n")
            assert isinstance(event, Execute)
            session.finish("OK", "NOOP completed")
            self.assertEqual(session.data_to_send(), b"* 1 EXPUNGE\r\na2 OK NOOP completed\r\n", command)
            self.assertEqual(list(view.uids), [2, 3, 4])

    def test_deleted_mailbox(self) -> None:
        """A mailbox deleted while selected: commands needing it get NO."""
        session, view = selected()
        view.queue(MailboxDeleted())
        events, out = feed(session, b"a1 FETCH 1 FLAGS\r\n")
        self.assertEqual(events, [])
        self.assertEqual(out, b"a1 NO The selected mailbox was deleted\r\n")

    def test_connection_lost(self) -> None:
        session = logged_in()
        feed(session, b"a1 CREATE foo\r\n")
        session.connection_lost()
        self.assertTrue(session.closed)
        self.assertFalse(session.paused)
        self.assertEqual(feed(session, b"a2 NOOP\r\n"), ([], b""))
