"""
The sans-IO milter client (:mod:`txmail.milter.protocol`) and the header
edits (:mod:`txmail.milter.edits`), with bytes: every command and reply,
the negotiation masks, garbled and oversized packets.
"""

from __future__ import annotations

import contextlib
import struct

from twisted.trial.unittest import SynchronousTestCase

from txmail.milter import protocol as p
from txmail.milter.edits import apply_header_edits, milter_field
from txmail.milter.protocol import (
    AddHeader,
    ChangeHeader,
    Decision,
    InsertHeader,
    MilterClient,
    MilterProtocolError,
    Negotiated,
    PacketReader,
    Progress,
    Quarantine,
    ReplaceBody,
    encode_packet,
)


def packet(command: bytes, data: bytes = b"") -> bytes:
    return struct.pack("!I", len(data) + 1) + command + data


def optneg(
    version: int = 6, actions: int = p.ACTIONS_OFFERED, protocol: int = 0, extra: bytes = b""
) -> bytes:
    return packet(b"O", struct.pack("!III", version, actions, protocol) + extra)


def negotiated(
    protocol: int = 0, actions: int = p.ACTIONS_OFFERED, version: int = 6, extra: bytes = b""
) -> MilterClient:
    client = MilterClient()
    client.negotiate()
    client.data_to_send()
    client.receive_data(optneg(version, actions, protocol, extra))
    event = client.next_event()
    assert isinstance(event, Negotiated)
    return client


def packets(data: bytes) -> list[tuple[bytes, bytes]]:
    return PacketReader().feed(data)


class PacketTests(SynchronousTestCase):
    def test_encode(self) -> None:
        """Length (4 octets, big-endian, counting the command octet), command, data."""
        self.assertEqual(encode_packet(b"A"), b"\x00\x00\x00\x01A")
        self.assertEqual(encode_packet(b"H", b"x\x00"), b"\x00\x00\x00\x03Hx\x00")
        self.assertRaises(ValueError, encode_packet, b"AB")

    def test_reader_splits_and_joins(self) -> None:
        """Packets split anywhere, and several in one read, come out whole and in order."""
        stream = packet(b"c") + packet(b"y", b"550 5.7.1 no\x00") + packet(b"p")
        reader = PacketReader()
        got = []
        for i in range(len(stream)):
            got.extend(reader.feed(stream[i : i + 1]))
        self.assertEqual(got, [(b"c", b""), (b"y", b"550 5.7.1 no\x00"), (b"p", b"")])
        self.assertEqual(reader.pending, 0)
        self.assertEqual(PacketReader().feed(stream), got)

    def test_zero_length(self) -> None:
        """A zero length (no command octet) is a protocol error, and the reader stays broken."""
        reader = PacketReader()
        self.assertRaises(MilterProtocolError, reader.feed, b"\x00\x00\x00\x00")
        self.assertRaises(MilterProtocolError, reader.feed, packet(b"c"))

    def test_oversized(self) -> None:
        """A length over the cap is refused from the header alone (nothing is buffered)."""
        reader = PacketReader(max_packet=1000)
        self.assertRaises(MilterProtocolError, reader.feed, struct.pack("!I", 1001) + b"b")
        self.assertRaises(MilterProtocolError, PacketReader().feed, b"\xff\xff\xff\xffb")
        self.assertEqual(PacketReader(max_packet=1000).feed(packet(b"b", b"x" * 999)), [(b"b", b"x" * 999)])


class NegotiationTests(SynchronousTestCase):
    def test_optneg_sent(self) -> None:
        """SMFIC_OPTNEG: version 6, the actions and protocol offered; no envelope changes offered."""
        client = MilterClient()
        self.assertTrue(client.negotiate())
        [(command, data)] = packets(client.data_to_send())
        self.assertEqual(command, b"O")
        version, actions, protocol = struct.unpack("!III", data)
        self.assertEqual(version, 6)
        self.assertEqual(actions, p.ACTIONS_OFFERED)
        for bit in (p.SMFIF_ADDRCPT, p.SMFIF_DELRCPT, p.SMFIF_CHGFROM, p.SMFIF_ADDRCPT_PAR):
            self.assertFalse(actions & bit)
        for bit in (
            p.SMFIF_ADDHDRS,
            p.SMFIF_CHGHDRS,
            p.SMFIF_CHGBODY,
            p.SMFIF_QUARANTINE,
            p.SMFIF_SETSYMLIST,
        ):
            self.assertTrue(actions & bit)
        self.assertEqual(protocol, p.PROTOCOL_OFFERED)
        self.assertTrue(
            protocol & p.SMFIP_SKIP and protocol & p.SMFIP_HDR_LEADSPC and protocol & p.SMFIP_NR_BODY
        )
        self.assertFalse(protocol & p.SMFIP_RCPT_REJ)
        self.assertEqual(client.awaiting, b"O")

    def test_answer(self) -> None:
        """The milter's answer is an event and sets what is in force."""
        client = negotiated(p.SMFIP_NOHELO | p.SMFIP_NR_RCPT, p.SMFIF_ADDHDRS)
        self.assertEqual(client.protocol, p.SMFIP_NOHELO | p.SMFIP_NR_RCPT)
        self.assertEqual(client.actions, p.SMFIF_ADDHDRS)
        self.assertIsNone(client.awaiting)

    def test_symlists(self) -> None:
        """Macro lists after the masks (SMFIF_SETSYMLIST) are read; unknown stages ignored."""
        extra = struct.pack("!I", 2) + b"{auth_authen} i\x00" + struct.pack("!I", 99) + b"x\x00"
        answer = p.parse_negotiation(struct.pack("!III", 6, 0x101, 0) + extra)
        self.assertEqual(answer.macros, {2: ("{auth_authen}", "i")})

    def test_bad_answers(self) -> None:
        """Another reply, a version out of 2..6, actions not offered, short or garbled data."""
        for answer in (
            packet(b"c"),
            optneg(version=7),
            optneg(version=1),
            packet(b"O", b"\x00\x00\x00\x06\x00\x00"),
            optneg(extra=struct.pack("!I", 2) + b"no terminator"),
        ):
            client = MilterClient()
            client.negotiate()
            self.assertRaises(MilterProtocolError, client.receive_data, answer)

    def test_unoffered_actions_dropped(self) -> None:
        """Actions we did not offer (rspamd asks for ADDRCPT/DELRCPT) are dropped, and refused if used."""
        client = negotiated(actions=p.SMFIF_ADDHDRS | p.SMFIF_ADDRCPT | p.SMFIF_DELRCPT)
        self.assertEqual(client.actions, p.SMFIF_ADDHDRS)
        client.end_of_message()
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"+", b"<x@example>\x00"))

    def test_unoffered_bits_ignored(self) -> None:
        """Protocol bits we did not offer (SMFIP_RCPT_REJ, max data size) are ignored, as Postfix does."""
        client = negotiated(p.SMFIP_RCPT_REJ | 0x10000000 | p.SMFIP_NOHELO)
        self.assertEqual(client.protocol, p.SMFIP_NOHELO)

    def test_old_version(self) -> None:
        """A version 2 milter gets no DATA and no version 6 steps (no-reply bits are cleared)."""
        client = negotiated(p.SMFIP_NR_CONN, version=2)
        self.assertFalse(client.protocol & p.SMFIP_NR_CONN)
        self.assertFalse(client.wants(p.SMFIC_DATA))
        self.assertTrue(client.connect("h", "4", 25, "192.0.2.1"))

    def test_commands_need_negotiation(self) -> None:
        client = MilterClient()
        self.assertRaises(RuntimeError, client.helo, "x")
        client.negotiate()
        self.assertRaises(RuntimeError, client.negotiate)


class CommandTests(SynchronousTestCase):
    def test_connect(self) -> None:
        """SMFIC_CONNECT: hostname NUL, family, port (16 bits), address NUL; 'U' has neither."""
        client = negotiated()
        self.assertTrue(client.connect("mail.example", "4", 2525, "192.0.2.1"))
        self.assertEqual(packets(client.data_to_send()), [(b"C", b"mail.example\x004\x09\xdd192.0.2.1\x00")])
        client.receive_data(packet(b"c"))
        self.assertEqual(client.next_event(), Decision(b"C", "continue"))
        client.connect("[2001:db8::1]", "6", 1, "2001:db8::1")
        self.assertEqual(packets(client.data_to_send())[0][1], b"[2001:db8::1]\x006\x00\x012001:db8::1\x00")
        client.receive_data(packet(b"c"))
        client.connect("localhost", "U")
        self.assertEqual(packets(client.data_to_send())[0][1], b"localhost\x00U")
        self.assertRaises(ValueError, client.connect, "x", "Z")

    def test_macros(self) -> None:
        """SMFIC_MACRO before the command: the command octet, then name NUL value NUL pairs."""
        client = negotiated()
        client.connect(
            "h", "4", 1, "192.0.2.1", {"j": "mx.example", "daemon_name": "mta", "{client_addr}": "192.0.2.1"}
        )
        macro, connect = packets(client.data_to_send())
        self.assertEqual(
            macro, (b"D", b"Cj\x00mx.example\x00{daemon_name}\x00mta\x00{client_addr}\x00192.0.2.1\x00")
        )
        self.assertEqual(connect[0], b"C")

    def test_macros_sent_for_skipped_step(self) -> None:
        """As Postfix: a step the milter left out still gets its macros; no reply is awaited."""
        client = negotiated(p.SMFIP_NOMAIL)
        self.assertFalse(client.mail(["<a@example>"], {"{auth_authen}": "a"}))
        self.assertEqual(packets(client.data_to_send()), [(b"D", b"M{auth_authen}\x00a\x00")])
        self.assertIsNone(client.awaiting)

    def test_symlist_filters(self) -> None:
        """With lists, a stage gets only the macros named for it; stages without a list get none."""
        extra = struct.pack("!I", p.SMFIM_ENVFROM) + b"{auth_authen}\x00"
        client = negotiated(extra=extra)
        client.mail(["<a@example>"], {"{auth_authen}": "a", "{auth_type}": "PLAIN"})
        self.assertEqual(packets(client.data_to_send())[0], (b"D", b"M{auth_authen}\x00a\x00"))
        client.receive_data(packet(b"c"))
        client.rcpt(["<b@example>"], {"{rcpt_addr}": "b@example"})
        self.assertEqual([c for c, _ in packets(client.data_to_send())], [b"R"])

    def test_envelope_commands(self) -> None:
        """HELO, MAIL and RCPT (arguments as NUL-terminated strings), DATA, HEADER, EOH, BODY, EOB."""
        client = negotiated()
        expected = [
            (lambda: client.helo("client.example"), (b"H", b"client.example\x00")),
            (lambda: client.mail(["<a@example>", "SIZE=10"]), (b"M", b"<a@example>\x00SIZE=10\x00")),
            (lambda: client.rcpt(["<b@example>"]), (b"R", b"<b@example>\x00")),
            (lambda: client.data(), (b"T", b"")),
            (lambda: client.header(b"Subject", b"hi"), (b"L", b"Subject\x00hi\x00")),
            (lambda: client.end_of_headers(), (b"N", b"")),
            (lambda: client.body(b"line\r\n"), (b"B", b"line\r\n")),
            (lambda: client.end_of_message(), (b"E", b"")),
        ]
        for send, sent in expected:
            self.assertTrue(send())
            self.assertEqual(packets(client.data_to_send()), [sent])
            client.receive_data(packet(b"c"))
            self.assertEqual(client.next_event(), Decision(sent[0], "continue"))

    def test_abort_and_quit(self) -> None:
        """SMFIC_ABORT and SMFIC_QUIT are never answered."""
        client = negotiated()
        client.abort()
        client.quit()
        self.assertEqual(packets(client.data_to_send()), [(b"A", b""), (b"Q", b"")])
        self.assertIsNone(client.awaiting)

    def test_body_chunk_limit(self) -> None:
        client = negotiated()
        self.assertRaises(ValueError, client.body, b"x" * 65536)
        self.assertEqual(list(p.body_chunks(b"x" * 65536 * 2)), [b"x" * 65535, b"x" * 65535, b"xx"])
        self.assertEqual(list(p.body_chunks(b"")), [])

    def test_nul_refused(self) -> None:
        client = negotiated()
        self.assertRaises(ValueError, client.helo, "a\x00b")

    def test_one_command_at_a_time(self) -> None:
        client = negotiated()
        client.helo("x")
        self.assertRaises(RuntimeError, client.mail, ["<>"])

    def test_skip_and_no_reply_steps(self) -> None:
        """SMFIP_NO* steps are not sent; SMFIP_NR_* steps are sent but not awaited."""
        client = negotiated(p.SMFIP_NOHDRS | p.SMFIP_NR_EOH | p.SMFIP_NOCONNECT | p.SMFIP_NR_HELO)
        self.assertFalse(client.connect("h", "U"))
        self.assertFalse(client.header(b"A", b"b"))
        self.assertEqual(client.data_to_send(), b"")
        self.assertFalse(client.helo("x"))
        self.assertFalse(client.end_of_headers())
        self.assertEqual([c for c, _ in packets(client.data_to_send())], [b"H", b"N"])
        self.assertFalse(client.wants(p.SMFIC_HEADER))
        self.assertTrue(client.wants(p.SMFIC_BODY))


class ReplyTests(SynchronousTestCase):
    def eob(self, *replies: bytes, protocol: int = 0, actions: int = p.ACTIONS_OFFERED) -> Decision:
        client = negotiated(protocol, actions)
        client.end_of_message()
        client.data_to_send()
        client.receive_data(b"".join(replies))
        events = []
        while (event := client.next_event()) is not None:
            events.append(event)
        decision = events[-1]
        assert isinstance(decision, Decision)
        return decision

    def test_final_replies(self) -> None:
        for command, action in (
            (b"a", "accept"),
            (b"c", "continue"),
            (b"r", "reject"),
            (b"t", "tempfail"),
            (b"d", "discard"),
            (b"4", "shutdown"),
            (b"f", "connfail"),
        ):
            self.assertEqual(self.eob(packet(command)), Decision(b"E", action))

    def test_replycode(self) -> None:
        self.assertEqual(
            self.eob(packet(b"y", b"554 5.7.1 Gtube pattern\x00")),
            Decision(b"E", "replycode", "554 5.7.1 Gtube pattern"),
        )

    def test_modifications(self) -> None:
        """Header edits, body chunks and quarantine come before the final reply, in order."""
        decision = self.eob(
            packet(b"h", b"X-A\x00one\x00"),
            packet(b"i", struct.pack("!I", 0) + b"DKIM-Signature\x00v=1\x00"),
            packet(b"m", struct.pack("!I", 2) + b"Subject\x00\x00"),
            packet(b"b", b"new "),
            packet(b"b", b"body\r\n"),
            packet(b"q", b"suspicious\x00"),
            packet(b"p"),
            packet(b"a"),
        )
        self.assertEqual(decision.action, "accept")
        self.assertEqual(
            decision.modifications,
            (
                AddHeader(b"X-A", b"one"),
                InsertHeader(0, b"DKIM-Signature", b"v=1"),
                ChangeHeader(2, b"Subject", b""),
                ReplaceBody(b"new "),
                ReplaceBody(b"body\r\n"),
                Quarantine("suspicious"),
            ),
        )

    def test_progress(self) -> None:
        client = negotiated()
        client.helo("x")
        client.receive_data(packet(b"p") + packet(b"p"))
        self.assertEqual(client.next_event(), Progress())
        self.assertEqual(client.next_event(), Progress())
        self.assertEqual(client.awaiting, b"H")
        client.receive_data(packet(b"c"))
        self.assertEqual(client.next_event(), Decision(b"H", "continue"))

    def test_skip(self) -> None:
        """SMFIR_SKIP after a body chunk: later chunks are not sent; not allowed elsewhere."""
        client = negotiated(p.SMFIP_SKIP)
        client.body(b"a")
        client.receive_data(packet(b"s"))
        self.assertEqual(client.next_event(), Decision(b"B", "skip"))
        client.data_to_send()
        self.assertFalse(client.body(b"b"))
        self.assertEqual(client.data_to_send(), b"")
        self.assertTrue(client.end_of_message())
        client2 = negotiated(p.SMFIP_SKIP)
        client2.helo("x")
        self.assertRaises(MilterProtocolError, client2.receive_data, packet(b"s"))
        client3 = negotiated()  # SKIP not negotiated
        client3.body(b"a")
        self.assertRaises(MilterProtocolError, client3.receive_data, packet(b"s"))

    def test_refused_replies(self) -> None:
        """Envelope changes, modifications outside EOB or not negotiated, discard at connect, unknown replies."""
        cases = [
            (lambda c: c.end_of_message(), packet(b"+", b"<x@example>\x00")),
            (lambda c: c.end_of_message(), packet(b"-", b"<x@example>\x00")),
            (lambda c: c.end_of_message(), packet(b"e", b"<x@example>\x00")),
            (lambda c: c.end_of_message(), packet(b"2", b"<x@example>\x00")),
            (lambda c: c.helo("x"), packet(b"h", b"X\x00y\x00")),
            (lambda c: c.connect("h", "U"), packet(b"d")),
            (lambda c: c.helo("x"), packet(b"d")),
            (lambda c: c.helo("x"), packet(b"Z")),
            (lambda c: c.helo("x"), packet(b"c", b"junk")),
            (lambda c: c.helo("x"), packet(b"y", b"550 no terminator")),
            (lambda c: c.helo("x"), packet(b"y", b"550 x\x00extra")),
            (lambda c: c.end_of_message(), packet(b"h", b"Bad Name\x00y\x00")),
            (lambda c: c.end_of_message(), packet(b"h", b"X\x00no terminator")),
            (lambda c: c.end_of_message(), packet(b"i", b"\x00\x00")),
            (lambda c: c.end_of_message(), packet(b"h", b"\x00y\x00")),
        ]
        for send, reply in cases:
            client = negotiated()
            send(client)
            self.assertRaises(MilterProtocolError, client.receive_data, reply)

    def test_modifications_bounded_in_octets(self) -> None:
        """
        A milter that keeps sending body chunks after the end of the message
        is cut off once they pass the limit for one message, instead of
        growing the process without end (each packet is bounded, not their
        number); empty chunks count too.  The count starts again with the
        next message.
        """
        client = MilterClient(max_modifications=1000)
        client.negotiate()
        client.receive_data(optneg())
        client.end_of_message()
        client.receive_data(packet(b"b", b"x" * 500))
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"b", b"x" * 500))
        client = MilterClient(max_modifications=1000)
        client.negotiate()
        client.receive_data(optneg())
        client.end_of_message()
        client.receive_data(packet(b"b") * 7)
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"b") * 7)
        client = MilterClient(max_modifications=1000)
        client.negotiate()
        client.receive_data(optneg())
        self.assertIsInstance(client.next_event(), Negotiated)
        for _ in range(3):
            client.end_of_message()
            client.receive_data(packet(b"b", b"x" * 500) + packet(b"a"))
            self.assertEqual(client.next_event(), Decision(b"E", "accept", "", (ReplaceBody(b"x" * 500),)))
        self.assertEqual(p.MAX_MODIFICATIONS, 64 * 1024 * 1024)

    def test_header_edits_bounded(self) -> None:
        """
        At most MAX_HEADER_EDITS header field edits for one message: applying
        them takes time quadratic in their number (20,000 changes, 320 KB
        from the milter, took 40 seconds to apply).
        """
        edits = b"".join(
            packet(b"m", struct.pack("!I", 1) + b"X-%d\x00v\x00" % i) for i in range(p.MAX_HEADER_EDITS)
        )
        decision = self.eob(edits, packet(b"a"))
        self.assertEqual(len(decision.modifications), p.MAX_HEADER_EDITS)
        client = negotiated()
        client.end_of_message()
        client.receive_data(edits + packet(b"b", b"body") + packet(b"q", b"why\x00"))
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"h", b"X\x00y\x00"))

    def test_modification_not_negotiated(self) -> None:
        client = negotiated(actions=p.SMFIF_ADDHDRS)
        client.end_of_message()
        client.receive_data(packet(b"h", b"X\x00y\x00"))
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"b", b"body"))

    def test_unsolicited(self) -> None:
        """A reply when none is awaited (or a second final reply) is a protocol error."""
        client = negotiated()
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"c"))
        client = negotiated()
        client.helo("x")
        self.assertRaises(MilterProtocolError, client.receive_data, packet(b"c") + packet(b"c"))

    def test_garbage(self) -> None:
        """Random bytes never raise anything but MilterProtocolError."""
        import random

        rng = random.Random(19)
        for _ in range(300):
            client = negotiated()
            client.end_of_message()
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            if rng.random() < 0.5:
                blob = packet(bytes([rng.choice(b"abcdefhimpqrsty+-24lOZ")]), blob)
            with contextlib.suppress(MilterProtocolError):
                client.receive_data(blob)


class HeaderFieldsTests(SynchronousTestCase):
    SECTION = b"From: a@example\r\nSubject: one\r\n two\r\nX-Tab:\tv\r\nTo:b@example\r\n"

    def test_fields(self) -> None:
        """Folds become LF; one space after the colon is left out unless HDR_LEADSPC."""
        self.assertEqual(
            p.header_fields(self.SECTION),
            [(b"From", b"a@example"), (b"Subject", b"one\n two"), (b"X-Tab", b"\tv"), (b"To", b"b@example")],
        )
        self.assertEqual(p.header_fields(self.SECTION, leading_space=True)[0], (b"From", b" a@example"))


class EditTests(SynchronousTestCase):
    SECTION = b"Received: x\r\nSubject: one\r\nX-A: 1\r\nx-a: 2\r\n"

    def test_add_appends(self) -> None:
        self.assertEqual(
            apply_header_edits(self.SECTION, [AddHeader(b"X-New", b"v")]), self.SECTION + b"X-New: v\r\n"
        )

    def test_insert(self) -> None:
        """Index 0 is the top; past the end appends."""
        self.assertTrue(
            apply_header_edits(self.SECTION, [InsertHeader(0, b"DKIM-Signature", b"v=1")]).startswith(
                b"DKIM-Signature: v=1\r\nReceived"
            )
        )
        out = apply_header_edits(self.SECTION, [InsertHeader(2, b"X-I", b"i")])
        self.assertEqual(out.split(b"\r\n")[2], b"X-I: i")
        self.assertTrue(
            apply_header_edits(self.SECTION, [InsertHeader(99, b"X-I", b"i")]).endswith(b"X-I: i\r\n")
        )

    def test_change_and_delete(self) -> None:
        """The index counts fields of that name (any case), 1-based; 0 counts as 1; empty deletes."""
        out = apply_header_edits(self.SECTION, [ChangeHeader(2, b"X-A", b"changed")])
        self.assertEqual(out, b"Received: x\r\nSubject: one\r\nX-A: 1\r\nX-A: changed\r\n")
        out = apply_header_edits(self.SECTION, [ChangeHeader(1, b"x-a", b"")])
        self.assertEqual(out, b"Received: x\r\nSubject: one\r\nx-a: 2\r\n")
        out = apply_header_edits(self.SECTION, [ChangeHeader(0, b"Subject", b"new")])
        self.assertIn(b"Subject: new\r\n", out)
        self.assertEqual(apply_header_edits(self.SECTION, [ChangeHeader(3, b"X-A", b"")]), self.SECTION)
        self.assertTrue(
            apply_header_edits(self.SECTION, [ChangeHeader(5, b"X-B", b"v")]).endswith(b"X-B: v\r\n")
        )

    def test_folded_field_changed_whole(self) -> None:
        section = b"Subject: one\r\n two\r\nTo: x\r\n"
        self.assertEqual(apply_header_edits(section, [ChangeHeader(1, b"Subject", b"")]), b"To: x\r\n")

    def test_in_order(self) -> None:
        out = apply_header_edits(
            b"A: 1\r\n", [InsertHeader(0, b"B", b"2"), ChangeHeader(1, b"A", b""), AddHeader(b"C", b"3")]
        )
        self.assertEqual(out, b"B: 2\r\nC: 3\r\n")

    def test_values(self) -> None:
        """LF folds become CRLF; HDR_LEADSPC takes the value as is; bad values are refused."""
        self.assertEqual(
            milter_field(b"DKIM-Signature", b"v=1;\n\tb=x"), b"DKIM-Signature: v=1;\r\n\tb=x\r\n"
        )
        self.assertEqual(milter_field(b"X", b" v", leading_space=True), b"X: v\r\n")
        self.assertEqual(milter_field(b"X", b"\tv", leading_space=True), b"X:\tv\r\n")
        self.assertEqual(milter_field(b"X", b"v", leading_space=True), b"X:v\r\n")
        for bad in (b"a\r\nInjected: yes", b"a\n\r\nbody", b"a\x00b", b"a\nInjected: yes"):
            self.assertRaises(ValueError, milter_field, b"X", bad)
            self.assertRaises(ValueError, milter_field, b"X", bad, leading_space=True)
