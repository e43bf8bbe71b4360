"""
Hostile inputs: what a remote client (or the sender of a delivered message)
can send must cost the server work linear in its size, never block the
reactor for long, never crash the connection and never hang.

Theory of operation
-------------------
* No timing assertions: each hostile case is sized so that a linear
  implementation finishes in milliseconds while a quadratic one takes tens
  of seconds or more.  A case that hangs on the current code is skipped with
  a reason naming the finding (``_SKIP_*`` below); remove the ``skip`` once
  ``src/`` is fixed and the test must then pass quickly.
* The cases that pass today pin down the inputs that were checked and found
  linear, so a later change cannot make them super-linear unnoticed (they
  would then hang the suite, which is noticed).
* POP3 and SMTP sessions are fuzzed with hypothesis the way
  ``tests/imap/test_server_fuzz.py`` fuzzes IMAP: any sequence of one-line
  commands gets exactly one final reply per command until the session
  closes, never an exception, and the session still answers NOOP.
* Back-pressure: ``_FullPipeTransport`` plays a client that pipelines
  commands and never reads, with the producer contract of Twisted's
  ``FileDescriptor``; the test acts as the reactor (no more reads once the
  protocol paused the transport) and bounds the replies held in memory.
  These fail today (they do not hang).
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_server import PEER as IMAP_PEER
from tests.imap.test_server import ServerTestCase
from tests.pop3.test_server import ServerTestCase as POP3ServerTestCase
from tests.pop3.test_session import accept_all as pop3_accept_all
from tests.smtp.test_server import PEER as PEER_SMTP
from tests.smtp.test_server import ServerTestCase as SMTPServerTestCase
from tests.smtp.test_session import accept_all as smtp_accept_all
from txmail import mime
from txmail.imap.server import IMAPFactory
from txmail.imap.types import SequenceSet
from txmail.pop3.session import POP3Session
from txmail.smtp.session import ServerSession

__all__: list[str] = []

# -- findings that hang today (un-skip after the fix) --------------------------


def _body(header: bytes, body: bytes = b"body\r\n") -> bytes:
    return header + b"\r\n" + body


# -- MIME metadata (run on every delivered message) ----------------------------


class MetadataHostileTests(SynchronousTestCase):
    """
    ``parse_metadata`` runs on every delivered message, inline in the
    reactor for messages up to ``router.INLINE_PARSE_LIMIT`` (256 KB), so an
    unauthenticated SMTP sender controls its input.
    """

    def test_angle_addresses_with_unfinished_routes(self) -> None:
        """
        ``To: <@a,<@a,...`` (RFC 5322 section 4.4 obs-route never closed by
        ':'): one address per ``<``, in linear time.
        """
        k = 16_000  # 64 KB header: ~26 s today, milliseconds when linear
        md = mime.parse_metadata(_body(b"To: " + b"<@a," * k + b"\r\n"))
        to = md.envelope[5]
        self.assertEqual(len(to), k)
        self.assertEqual(to[0], (None, None, "", "a"))

    def test_angle_addresses_with_unfinished_routes_small(self) -> None:
        """The same input at a size that passes today: the parse result itself is right."""
        md = mime.parse_metadata(_body(b"To: " + b"<@a," * 50 + b"\r\n"))
        self.assertEqual(len(md.envelope[5]), 50)

    def test_long_header_lines(self) -> None:
        """A 512 KB header line and a 512 KB field name without a colon are parsed linearly."""
        md = mime.parse_metadata(
            _body(b"Subject: " + b"a" * (1 << 19) + b"\r\nX-" + b"b" * (1 << 19) + b"\r\n")
        )
        self.assertEqual(len(md.envelope[1]), 1 << 19)

    def test_unterminated_comment_and_quotes(self) -> None:
        """RFC 5322 comments and quoted strings left open (with escapes) in address fields."""
        k = 100_000
        md = mime.parse_metadata(_body(b"From: " + b"(" * k + b"\r\nTo: " + b'"' + b'\\"' * k + b"\r\n"))
        self.assertIsNone(md.envelope[2])  # a comment alone is no address
        self.assertEqual(md.envelope[5], ((None, None, '"' + '\\"' * k, ""),))

    def test_group_and_angle_storms(self) -> None:
        """``a:a:...``, ``<<<...`` and ``<@<@...`` address lists."""
        for value in (b"a:" * 100_000, b"<" * 100_000, b"<@" * 100_000, b"a," * 100_000):
            mime.parse_metadata(_body(b"To: " + value + b"\r\n"))

    def test_many_parameters_and_continuations(self) -> None:
        """100 000 RFC 2231 continuations (``n*0`` ... ``n*99999``: only 4 digits are one) and parameters."""
        k = 100_000
        params = b"".join(b";n*%d=v" % i for i in range(k)) + b"".join(b";p%d=v" % i for i in range(1000))
        md = mime.parse_metadata(_body(b"Content-Type: text/plain" + params + b"\r\n"))
        self.assertEqual(md.body_structure[0], "TEXT")

    def test_continuation_name_regex(self) -> None:
        """A parameter name of many ``*1`` pieces does not make the RFC 2231 regex backtrack."""
        name = b"a" + b"*1" * 50_000 + b"x"
        mime.parse_metadata(_body(b"Content-Type: text/plain; " + name + b"=v\r\n"))

    def test_many_parts(self) -> None:
        """100 000 empty parts: counted up to MAX_PARTS, linear after it."""
        msg = _body(b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b\r\n\r\n" * 100_000 + b"--b--\r\n")
        md = mime.parse_metadata(msg)
        self.assertEqual(md.body_structure[-5], "MIXED")

    def test_deep_nesting_with_near_miss_lines(self) -> None:
        """200 nested multiparts (MAX_DEPTH applies) and 20 000 lines that almost are delimiters."""
        head = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(200)
        )
        mime.parse_metadata(head + b"x\r\n" + b"--b0x\r\n" * 20_000)

    def test_long_boundary_near_misses(self) -> None:
        """A 60 KB boundary and body lines that match all of it but the last octet."""
        b = b"q" * 60_000
        body = (b"--" + b[:-1] + b"z\r\n") * 50 + b"--" + b + b"--\r\n"
        mime.parse_metadata(_body(b"Content-Type: multipart/mixed; boundary=" + b + b"\r\n", body))

    def test_deep_section_spec(self) -> None:
        """FETCH BODY[1.1.1....] with 4 000 part numbers (an 8 KB command line) answers b""."""
        msg = _body(b"Subject: x\r\n")
        self.assertEqual(mime.extract_section(msg, ".".join(["1"] * 4000) + ".TEXT"), b"")
        self.assertEqual(mime.extract_section(msg, ".".join(["1"] * 4000)), b"body\r\n")


# -- IMAP ----------------------------------------------------------------------


class SequenceSetHostileTests(SynchronousTestCase):
    def test_huge_ranges_cost_per_message(self) -> None:
        """``1:4294967295`` expands to the messages in use, not to 4 billion numbers (RFC 3501 section 9)."""
        s = SequenceSet(((1, 4294967295), (4294967295, 1), (None, 7)))
        self.assertEqual(s.expand(3), [1, 2, 3])
        self.assertTrue(s.contains(3, 3))

    def test_many_overlapping_ranges(self) -> None:
        """100 000 overlapping ranges merge once into one span."""
        s = SequenceSet(tuple((i, 4294967295 - i) for i in range(1, 100_001)))
        self.assertEqual(s.spans(10), ((1, 4294967294),))
        self.assertEqual(s.expand(10), list(range(1, 11)))


class IMAPHostileTests(ServerTestCase):
    def answer(self, out: bytes, tag: bytes) -> bytes:
        (line,) = [ln for ln in out.split(b"\r\n") if ln.startswith(tag + b" ")]
        self.assertNotIn(b"SERVERBUG", out)
        return line

    def test_huge_uid_and_sequence_ranges(self) -> None:
        """UID FETCH / FETCH / SEARCH with ``1:4294967295`` answer at once (per message, not per number)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"u1 UID FETCH 1:4294967295 (FLAGS)\r\n")
        self.assertTrue(self.answer(out, b"u1").startswith(b"u1 OK"), out)
        out = self.send(proto, transport, b"u2 UID SEARCH UID 1:4294967295,4294967295:2\r\n")
        self.assertTrue(self.answer(out, b"u2").startswith(b"u2 OK"), out)
        out = self.send(proto, transport, b"u3 FETCH 1:4294967295 (FLAGS)\r\n")
        self.assertTrue(self.answer(out, b"u3").startswith((b"u3 BAD", b"u3 NO")), out)
        out = self.send(proto, transport, b"u4 SEARCH 1:4294967295\r\n")
        self.assertNotIn(b"SERVERBUG", out)

    def test_deep_or_chain_is_refused_not_recursed(self) -> None:
        """``OR OR OR ...`` past the parser's nesting limit gets BAD, and the session goes on."""
        proto, transport = self.login()
        key = b"OR " * 2000 + b"SEEN " * 2001
        out = self.send(proto, transport, b"o1 SEARCH " + key.strip() + b"\r\n")
        self.assertTrue(self.answer(out, b"o1").startswith(b"o1 BAD"), out)
        out = self.send(proto, transport, b"o2 NOOP\r\n")
        self.assertTrue(self.answer(out, b"o2").startswith(b"o2 OK"), out)

    def test_deep_section_and_huge_partial(self) -> None:
        """FETCH BODY[1.1.1...] (2 000 levels) and ``<4294967295.4294967295>`` partials."""
        proto, transport = self.login()
        section = b".".join([b"1"] * 2000)
        out = self.send(proto, transport, b"f1 FETCH 1 (BODY.PEEK[" + section + b"])\r\n")
        self.assertTrue(self.answer(out, b"f1").startswith(b"f1 OK"), out)
        out = self.send(proto, transport, b"f2 FETCH 1 (BODY.PEEK[]<4294967295.4294967295>)\r\n")
        self.assertTrue(self.answer(out, b"f2").startswith((b"f2 OK", b"f2 BAD")), out)

    def test_fetch_many_section_items_on_many_parts(self) -> None:
        """
        Authenticated, on a message anyone can deliver (10 000 parts, 130 KB):
        one 8 KB FETCH of 400 ``BODY.PEEK[1]<n.1>`` items (RFC 3501 section
        6.4.5 partials) must not parse the message 400 times.
        """
        msg = _body(
            b"Content-Type: multipart/mixed; boundary=b\r\n", b"--b\r\n\r\nx\r\n" * 10_000 + b"--b--\r\n"
        )
        self.successResultOf(self.mailbox.append(msg, (), 1_600_000_000))
        proto, transport = self.login()
        items = b" ".join(b"BODY.PEEK[1]<%d.1>" % i for i in range(400))
        out = self.send(proto, transport, b"f1 FETCH * (" + items + b")\r\n")
        self.assertTrue(self.answer(out, b"f1").startswith(b"f1 OK"), out)
        self.assertIn(b"BODY[1]<0> {1}\r\nx", out)

    def _search_body(self, message: bytes) -> None:
        self.successResultOf(self.mailbox.append(message, (), 1_600_000_000))
        proto, transport = self.login()
        out = self.send(proto, transport, b"s2 SEARCH BODY needle\r\n")
        self.assertTrue(self.answer(out, b"s2").startswith(b"s2 OK"), out)

    def test_search_body_folded_content_type(self) -> None:
        """A Content-Type folded over 16 000 lines (64 KB) in a delivered message; SEARCH BODY."""
        self._search_body(_body(b"Content-Type: text/plain;" + b"\r\n ;" * 16_000 + b"\r\n", b"needle\r\n"))

    def test_search_body_many_parameters(self) -> None:
        """A Content-Type with 50 000 parameters (250 KB); SEARCH BODY."""
        self._search_body(_body(b"Content-Type: text/plain; " + b"a=b; " * 50_000 + b"\r\n", b"needle\r\n"))

    def test_search_body_deep_nesting(self) -> None:
        """900 nested multiparts then 200 000 short lines (~1.2 MB); SEARCH BODY."""
        head = b"".join(
            b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(900)
        )
        self._search_body(head + b"Content-Type: text/plain\r\n\r\nneedle\r\n" + b"l\r\n" * 200_000)

    def test_search_body_hostile_but_linear(self) -> None:
        """Inputs checked and found linear in SEARCH BODY: unterminated encoded-words, open comments."""
        self._search_body(
            _body(
                b"Subject: "
                + b"=?a?q?" * 16_000
                + b"\r\nContent-Type: text/plain; name="
                + b"(" * 16_000
                + b"\r\n"
            )
        )


# -- POP3 and SMTP sessions: one reply per command -----------------------------

_POP3_COMMANDS = st.sampled_from(
    [
        "USER alice@example.test",
        "USER bob",
        "PASS secret word",
        "PASS wrong",
        "STAT",
        "LIST",
        "LIST 1",
        "LIST 4294967296",
        "LIST -1",
        "UIDL",
        "UIDL 2",
        "RETR 1",
        "RETR 99999999999999999999",
        "TOP 1 4294967295",
        "TOP 2 -1",
        "DELE 1",
        "DELE 1",
        "RSET",
        "NOOP",
        "CAPA",
        "APOP alice@example.test 0123456789abcdef0123456789abcdef",
        "AUTH",
        "STLS",
        "UTF8",
        "FROB",
        "",
        "LIST " + "9" * 200,
        "x" * 400,
    ]
)


def _pop3_statuses(out: bytes) -> int:
    return sum(1 for line in out.split(b"\r\n") if line.startswith((b"+OK", b"-ERR")))


class POP3FuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_POP3_COMMANDS, min_size=1, max_size=15))
    def test_every_command_answered_once(self, commands: list[str]) -> None:
        """RFC 1939 section 3: each command gets one status line until the session closes."""
        session = POP3Session(plaintext_auth="always")
        session.data_to_send()
        for text in commands:
            if session.closed:
                break
            session.receive_data(text.encode() + b"\r\n")
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    pop3_accept_all(session, event)
            out = session.data_to_send()
            self.assertEqual(_pop3_statuses(out), 1, (text, out))
        if not session.closed:
            session.receive_data(b"NOOP\r\n")
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    pop3_accept_all(session, event)
            self.assertEqual(_pop3_statuses(session.data_to_send()), 1)


_SMTP_COMMANDS = st.sampled_from(
    [
        "EHLO client.test",
        "HELO client.test",
        "EHLO",
        "MAIL FROM:<a@remote.test>",
        "MAIL FROM:<a@remote.test> SIZE=99999999999999999999",
        "MAIL FROM:<a@remote.test> ENVID=" + "+41" * 40,
        "MAIL FROM:<" + "a" * 300 + "@x.test>",
        "MAIL FROM:<@a,@b,@c:x@y.test>",
        "MAIL FROM:<" + '"' + "\\" * 200 + ">",
        "RCPT TO:<bob@example.test>",
        "RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;" + "+2B" * 30,
        "RCPT TO:<" + "(" * 200 + ">",
        "RSET",
        "NOOP",
        "NOOP " + "x" * 900,
        "HELP",
        "VRFY bob",
        "EXPN list",
        "STARTTLS",
        "AUTH PLAIN AGFsaWNlAHNlY3JldA==",
        "FROB",
        "",
        "x" * 2000,
    ]
)


def _smtp_finals(out: bytes) -> int:
    return sum(
        1 for line in out.split(b"\r\n") if len(line) >= 3 and line[:3].isdigit() and line[3:4] != b"-"
    )


class SMTPFuzzTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_SMTP_COMMANDS, min_size=1, max_size=15))
    def test_every_command_answered_once(self, commands: list[str]) -> None:
        """RFC 5321 section 4.2: each command line gets one (possibly multi-line) reply until 421."""
        session = ServerSession("mx.example.test")
        session.data_to_send()
        for text in commands:
            if session.closed:
                break
            session.receive_data(text.encode() + b"\r\n")
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    smtp_accept_all(session, event)
            out = session.data_to_send()
            self.assertEqual(_smtp_finals(out), 1, (text, out))
            self.assertFalse(out.startswith(b"5") and b"internal" in out.lower(), out)
        if not session.closed:
            session.receive_data(b"NOOP\r\n")
            while (event := session.next_event()) is not None:
                if event.needs_decision:
                    smtp_accept_all(session, event)
            self.assertEqual(session.data_to_send()[:3], b"250")

    def test_pipelined_flood_is_linear(self) -> None:
        """100 000 pipelined NOOPs in one read: each line is taken off the buffer front in O(1)."""
        session = ServerSession("mx.example.test")
        session.data_to_send()
        session.receive_data(b"EHLO c.test\r\n" + b"NOOP\r\n" * 100_000)
        while (event := session.next_event()) is not None:
            if event.needs_decision:
                smtp_accept_all(session, event)
        self.assertEqual(_smtp_finals(session.data_to_send()), 100_001)


# -- output back-pressure: a client that sends but never reads -----------------


class _FullPipeTransport(StringTransport):
    """
    A transport whose client never reads, with the producer contract of
    ``twisted.internet.abstract.FileDescriptor.write``: once more than
    ``bufferSize`` octets wait, a registered streaming producer is paused.
    ``producerState`` is ``"paused"`` while the protocol asked the transport
    to stop reading (``pauseProducing``), as ``tcp.Server.stopReading`` would.
    """

    bufferSize = 64 * 1024

    def write(self, data: bytes) -> None:
        super().write(data)
        producer = self.producer
        if producer is not None and self.streaming and self.io.tell() > self.bufferSize:
            producer.pauseProducing()


#: What the simulated client offers, in reads of _CHUNK octets.
_OFFERED = 1024 * 1024
_CHUNK = 64 * 1024
#: Unsent output a server may hold for one connection (today: 17-26x the input).
_OUTPUT_BOUND = 4 * 1024 * 1024


def _flood(test: SynchronousTestCase, proto: Protocol, transport: _FullPipeTransport, line: bytes) -> None:
    """
    Act as the reactor for a client that pipelines *line* without reading:
    hand the protocol a read of ``_CHUNK`` octets unless it asked the
    transport to stop reading; the unsent output must stay bounded.
    """
    chunk = line * (_CHUNK // len(line))
    offered = 0
    while offered < _OFFERED and transport.producerState != "paused" and not transport.disconnecting:
        proto.dataReceived(chunk)
        offered += len(chunk)
    test.assertLess(
        len(transport.value()),
        _OUTPUT_BOUND,
        f"{offered} octets of {line!r} read from a client that never reads: "
        f"{len(transport.value())} octets of replies held in memory",
    )


class SMTPBackPressureTests(SMTPServerTestCase):
    def test_ehlo_flood_without_reading(self) -> None:
        """
        Unauthenticated: pipelined ``EHLO`` (RFC 2920 allows pipelining) from
        a client that never reads.  Today every read is answered whatever the
        write buffer holds: measured on a real socket, 20 MB of EHLO left
        612 MB of replies in the server's write buffer.
        """
        proto, transport = self.connect(transport=_FullPipeTransport(peerAddress=PEER_SMTP))
        _flood(self, proto, transport, b"EHLO x\r\n")


class POP3BackPressureTests(POP3ServerTestCase):
    def test_capa_flood_without_reading(self) -> None:
        """Unauthenticated: pipelined ``CAPA`` (RFC 2449) from a client that never reads."""
        proto, transport = self.connect(transport=_FullPipeTransport(peerAddress=IMAP_PEER))
        _flood(self, proto, transport, b"CAPA\r\n")


class IMAPBackPressureTests(ServerTestCase):
    def test_capability_flood_without_reading(self) -> None:
        """Unauthenticated: pipelined ``CAPABILITY`` (RFC 3501 section 5.5) from a client that never reads."""
        options: dict[str, Any] = {
            "authenticator": self.authenticator,
            "stores": self.stores,
            "clock": self.clock,
            "plaintext_auth": "loopback",
        }
        proto = IMAPFactory(**options).buildProtocol(None)
        transport = _FullPipeTransport(peerAddress=IMAP_PEER)
        proto.makeConnection(transport)
        _flood(self, proto, transport, b"a CAPABILITY\r\n")


class TLSBackPressureTests(ServerTestCase):
    def test_capability_flood_over_implicit_tls(self) -> None:
        """
        Over TLS reading goes on while replies back up (the TLS layer pauses
        the connection during its handshake), but only until a bounded amount
        of input waits unparsed; then reading stops too.
        """
        options: dict[str, Any] = {
            "authenticator": self.authenticator,
            "stores": self.stores,
            "clock": self.clock,
            "plaintext_auth": "loopback",
            "implicit_tls": True,
        }
        proto = IMAPFactory(**options).buildProtocol(None)
        transport = _FullPipeTransport(peerAddress=IMAP_PEER)
        proto.makeConnection(transport)
        _flood(self, proto, transport, b"a CAPABILITY\r\n")
        self.assertEqual(transport.producerState, "paused")  # reading stopped
        self.assertLess(proto.session.buffered_input, 1024 * 1024)


class IMAPPreAuthLiteralTests(ServerTestCase):
    def test_preauth_literal_is_not_accepted_at_full_size(self) -> None:
        """
        Before authentication a client may announce a literal of up to
        ``max_literal`` (50 MB, the APPENDLIMIT meant for APPEND) in LOGIN, and
        the server answers ``+`` and holds it all (twice, while it is turned
        into ``bytes``): 50-100 MB per unauthenticated connection.  No command
        allowed in the not-authenticated state needs more than a few KB
        (RFC 7888, LITERAL-, caps non-synchronizing literals at 4096
        octets for the same reason).
        """
        proto, transport = self.connect()
        out = self.send(proto, transport, b"a LOGIN {10000000}\r\n")
        self.assertFalse(out.startswith(b"+"), out)


class SectionSpecHostileTests(SynchronousTestCase):
    def test_unclosed_quotes_in_a_header_list(self) -> None:
        """extract_section with 20,000 escaped quotes and no closing one: linear, answered."""
        from txmail import mime

        spec = "HEADER.FIELDS (" + '"\\"' * 20_000 + ")"
        self.assertEqual(mime.extract_section(b"Subject: x\r\n\r\nbody\r\n", spec), b"\r\n")

    def test_many_part_numbers(self) -> None:
        """A section of 4,000 part numbers is parsed in linear time (no list.pop(0))."""
        from txmail import mime

        # A single-part message's part 1 is its body, and so on down (as Dovecot answers).
        self.assertEqual(
            mime.extract_section(b"Subject: x\r\n\r\nbody\r\n", ".".join(["1"] * 4000)), b"body\r\n"
        )
