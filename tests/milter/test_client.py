"""
:class:`txmail.milter.client.MilterPolicy` against a fake milter on a
loopback port: every stage, every action, the timeouts (on a Clock),
unreachable milters with each default action, and the ``[[milter]]``
configuration entries.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.milter._fake import FakeMilter, packet, start_fake_milter
from txmail.errors import ConfigError
from txmail.milter import protocol as p
from txmail.milter.client import (
    MilterPolicy,
    MilterSettings,
    build_milter_policies,
    milter_endpoint,
    milter_reply,
    parse_milters,
)
from txmail.model import MessageSource, RecipientResult
from txmail.policy.hooks import MessageInfo, RecipientInfo, SessionInfo, TransactionInfo, Verdict
from txmail.smtp.codes import Reply

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: hello\r\n"
    b" folded\r\n"
    b"X-Spam: no\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)
TRACE = b"Return-Path: <alice@example.test>\r\nReceived: from client by mx\r\n"


def session(role: str = "mta", **kw: Any) -> SessionInfo:
    values: dict[str, Any] = {
        "session_id": "s1",
        "hostname": "mx.example.test",
        "client_address": "192.0.2.1",
        "client_port": 4321,
        "client_name": "client.example.net",
    }
    values.update(kw)
    return SessionInfo(role=role, **values)


def message_info(message: bytes = MESSAGE) -> MessageInfo:
    data = TRACE + message
    return MessageInfo(
        MessageSource.from_file("/nonexistent", len(data), data=data), len(message), len(TRACE)
    )


def rcpt(address: str = "bob@example.test", ok: bool = True) -> RecipientInfo:
    return RecipientInfo(address, {}, RecipientResult(address, ok, reply="250 ok" if ok else "550 5.1.1 no"))


def apply_edits(verdict: Verdict, section: bytes) -> bytes:
    for edit in verdict.edits:
        section = edit(section)
    return section


class MilterTestCase(TestCase):
    timeout = 20

    def policy(self, milter: FakeMilter | None, **kw: Any) -> MilterPolicy:
        settings_kw = {k: kw.pop(k) for k in list(kw) if k in MilterSettings.__dataclass_fields__}
        address = settings_kw.pop("address", None) or (milter.address if milter else "inet:127.0.0.1:1")
        settings = MilterSettings(address=address, **settings_kw)
        return MilterPolicy(settings, reactor=reactor, **kw)

    def start(self, script: dict[bytes, Any] | None = None, **kw: Any) -> FakeMilter:
        return start_fake_milter(self, FakeMilter(script, **kw))

    @defer.inlineCallbacks
    def close(self, policy: MilterPolicy, info: SessionInfo, milter: FakeMilter) -> Any:
        policy.on_close(info)
        yield milter.wait_for(lambda: milter.closed == len(milter.connections))

    @defer.inlineCallbacks
    def transaction(
        self,
        policy: MilterPolicy,
        info: SessionInfo,
        message: bytes = MESSAGE,
        mail_from: str = "alice@example.test",
    ) -> Any:
        """connect, HELO, MAIL, RCPT, data: the verdict of each stage."""
        verdicts = [(yield policy.on_connect(info))]
        verdicts.append((yield policy.on_helo(info, "client.example.net")))
        info.helo = "client.example.net"
        info.transaction = TransactionInfo(mail_from, {"SIZE": "100", "BODY": "8BITMIME"})
        verdicts.append((yield policy.on_mail(info)))
        info.transaction.recipients.append("bob@example.test")
        verdicts.append((yield policy.on_rcpt(info, rcpt())))
        info.transaction.message_id = "QID123"
        verdicts.append((yield policy.on_data(info, message_info(message))))
        return verdicts


class StageTests(MilterTestCase):
    @defer.inlineCallbacks
    def test_whole_session(self) -> None:
        """Every stage is sent in order with its arguments; all continue: no verdicts."""
        milter = self.start()
        policy = self.policy(milter)
        info = session()
        verdicts = yield self.transaction(policy, info)
        self.assertEqual(verdicts, [None] * 5)
        yield self.close(policy, info, milter)
        self.assertEqual(
            milter.names(),
            [b"O", b"C", b"H", b"M", b"R", b"T", b"L", b"L", b"L", b"L", b"N", b"B", b"E", b"Q"],
        )
        commands = [(c, d) for c, d in milter.commands if c != b"D"]
        self.assertEqual(commands[1][1], b"client.example.net\x004\x10\xe1192.0.2.1\x00")
        self.assertEqual(commands[2][1], b"client.example.net\x00")
        self.assertEqual(commands[3][1], b"<alice@example.test>\x00SIZE=100\x00BODY=8BITMIME\x00")
        self.assertEqual(commands[4][1], b"<bob@example.test>\x00")
        headers = [d for c, d in commands if c == b"L"]
        self.assertEqual(
            headers,
            [
                b"From\x00Alice <alice@example.test>\x00",
                b"To\x00bob@example.test\x00",
                b"Subject\x00hello\n folded\x00",
                b"X-Spam\x00no\x00",
            ],
        )
        self.assertEqual([d for c, d in commands if c == b"B"], [b"Hello Bob.\r\n"])

    @defer.inlineCallbacks
    def test_macros(self) -> None:
        """Postfix's macros at each stage; {auth_*} only for an authenticated client."""
        milter = self.start()
        policy = self.policy(milter)
        info = session(role="submission", authenticated_user="alice@example.test", auth_mechanism="PLAIN")
        yield self.transaction(policy, info)
        yield self.close(policy, info, milter)
        macros = milter.macros()
        self.assertEqual(
            macros[b"C"],
            {
                b"j": b"mx.example.test",
                b"{daemon_name}": b"submission",
                b"v": macros[b"C"][b"v"],
                b"{client_addr}": b"192.0.2.1",
                b"{client_name}": b"client.example.net",
                b"{client_port}": b"4321",
                b"_": b"client.example.net [192.0.2.1]",
            },
        )
        self.assertEqual(
            macros[b"M"],
            {
                b"{auth_type}": b"PLAIN",
                b"{auth_authen}": b"alice@example.test",
                b"{mail_addr}": b"alice@example.test",
            },
        )
        self.assertEqual(macros[b"R"], {b"{rcpt_addr}": b"bob@example.test"})
        self.assertEqual(macros[b"T"], {b"i": b"QID123"})
        self.assertEqual(macros[b"N"], {b"i": b"QID123"})
        self.assertEqual(macros[b"E"], {b"i": b"QID123"})

    @defer.inlineCallbacks
    def test_unauthenticated_has_no_auth_macros(self) -> None:
        milter = self.start()
        policy = self.policy(milter)
        info = session()
        yield self.transaction(policy, info)
        yield self.close(policy, info, milter)
        self.assertNotIn(b"{auth_authen}", milter.macros()[b"M"])

    @defer.inlineCallbacks
    def test_ipv6_and_unknown_family(self) -> None:
        milter = self.start()
        policy = self.policy(milter)
        info = session(client_address="2001:db8::1", client_name=None, client_port=1)
        yield policy.on_connect(info)
        info2 = session(client_address="", client_name=None, client_port=0)
        yield policy.on_connect(info2)
        policy.on_close(info2)
        yield self.close(policy, info, milter)
        connects = [d for c, d in milter.commands if c == b"C"]
        self.assertEqual(connects[0], b"[2001:db8::1]\x006\x00\x012001:db8::1\x00")
        self.assertEqual(connects[1], b"localhost\x00U")

    @defer.inlineCallbacks
    def test_rejected_recipients_not_sent(self) -> None:
        """Only recipients the router accepted reach the milter."""
        milter = self.start()
        policy = self.policy(milter)
        info = session()
        yield policy.on_connect(info)
        info.transaction = TransactionInfo("a@example.test")
        yield policy.on_mail(info)
        self.assertIsNone(policy.on_rcpt(info, rcpt("nobody@example.test", ok=False)))
        yield self.close(policy, info, milter)
        self.assertNotIn(b"R", milter.names())

    @defer.inlineCallbacks
    def test_second_transaction_aborts_first(self) -> None:
        """A new MAIL after an unfinished message sends SMFIC_ABORT first; after a finished one it does not."""
        milter = self.start()
        policy = self.policy(milter)
        info = session()
        yield policy.on_connect(info)
        info.transaction = TransactionInfo("a@example.test")
        yield policy.on_mail(info)
        info.transaction = TransactionInfo("b@example.test")
        yield policy.on_mail(info)
        info.transaction.recipients.append("bob@example.test")
        yield policy.on_rcpt(info, rcpt())
        yield policy.on_data(info, message_info())
        info.transaction = TransactionInfo("c@example.test")
        yield policy.on_mail(info)
        yield self.close(policy, info, milter)
        self.assertEqual(
            milter.names(),
            [b"O", b"C", b"M", b"A", b"M", b"R", b"T", b"L", b"L", b"L", b"L", b"N", b"B", b"E", b"M", b"Q"],
        )

    @defer.inlineCallbacks
    def test_large_body_in_chunks(self) -> None:
        milter = self.start()
        policy = self.policy(milter)
        info = session()
        body = b"x" * 998 + b"\r\n"
        message = b"Subject: big\r\n\r\n" + body * 150
        yield self.transaction(policy, info, message)
        yield self.close(policy, info, milter)
        chunks = [d for c, d in milter.commands if c == b"B"]
        self.assertEqual([len(c) for c in chunks], [65535, 65535, 150000 - 2 * 65535])
        self.assertEqual(b"".join(chunks), body * 150)

    @defer.inlineCallbacks
    def test_steps_left_out_and_unanswered(self) -> None:
        """SMFIP_NO* steps are not sent; SMFIP_NR_* are sent without waiting (the milter never answers them)."""
        never = None
        milter = self.start(
            {b"H": never, b"L": never},
            protocol=p.SMFIP_NOCONNECT | p.SMFIP_NR_HELO | p.SMFIP_NR_HDR | p.SMFIP_NOBODY | p.SMFIP_NODATA,
        )
        policy = self.policy(milter)
        info = session()
        verdicts = yield self.transaction(policy, info)
        self.assertEqual(verdicts, [None] * 5)
        yield self.close(policy, info, milter)
        self.assertEqual(milter.names(), [b"O", b"H", b"M", b"R", b"L", b"L", b"L", b"L", b"N", b"E", b"Q"])

    @defer.inlineCallbacks
    def test_leading_space(self) -> None:
        """SMFIP_HDR_LEADSPC: values keep their leading space, and the milter's are taken as is."""
        eob = packet(b"h", b"X-Added\x00 with space\x00") + packet(b"a")
        milter = self.start({b"E": eob}, protocol=p.SMFIP_HDR_LEADSPC)
        policy = self.policy(milter)
        info = session()
        verdicts = yield self.transaction(policy, info)
        yield self.close(policy, info, milter)
        self.assertIn(
            b"From\x00 Alice <alice@example.test>\x00", [d for c, d in milter.commands if c == b"L"]
        )
        self.assertEqual(apply_edits(verdicts[-1], b"A: b\r\n"), b"A: b\r\nX-Added: with space\r\n")

    @defer.inlineCallbacks
    def test_skip(self) -> None:
        """SMFIR_SKIP after a body chunk: the rest of the body is not sent, EOB is."""
        milter = self.start({b"B": packet(b"s")}, protocol=p.SMFIP_SKIP)
        policy = self.policy(milter)
        info = session()
        message = b"Subject: big\r\n\r\n" + b"y" * 200000
        verdicts = yield self.transaction(policy, info, message)
        yield self.close(policy, info, milter)
        self.assertEqual(verdicts[-1], None)
        self.assertEqual(milter.names().count(b"B"), 1)
        self.assertIn(b"E", milter.names())

    @defer.inlineCallbacks
    def test_symlist(self) -> None:
        """A milter's macro lists (SETSYMLIST) choose what it gets."""
        symlists = struct.pack("!I", p.SMFIM_ENVFROM) + b"{auth_authen}\x00"
        milter = self.start(symlists=symlists)
        policy = self.policy(milter)
        info = session(authenticated_user="alice@example.test", auth_mechanism="LOGIN")
        yield self.transaction(policy, info)
        yield self.close(policy, info, milter)
        self.assertEqual(milter.macros(), {b"M": {b"{auth_authen}": b"alice@example.test"}})


class ActionTests(MilterTestCase):
    @defer.inlineCallbacks
    def run_with(self, command: bytes, reply: bytes, **kw: Any) -> Any:
        milter = self.start({command: reply}, **kw)
        policy = self.policy(milter)
        info = session()
        verdicts = yield self.transaction(policy, info)
        yield self.close(policy, info, milter)
        return milter, verdicts

    @defer.inlineCallbacks
    def test_reject_at_each_stage(self) -> None:
        """SMFIR_REJECT: 550 5.7.1 Command rejected (554 as the greeting at connect)."""
        for command, index in ((b"H", 1), (b"M", 2), (b"R", 3), (b"L", 4), (b"N", 4), (b"B", 4), (b"E", 4)):
            _, verdicts = yield self.run_with(command, packet(b"r"))
            self.assertEqual(verdicts[index].reply, Reply(550, "5.7.1", "Command rejected"), command)
            self.assertEqual(verdicts[:index], [None] * index)
        _, verdicts = yield self.run_with(b"C", packet(b"r"))
        self.assertEqual(verdicts[0].reply, Reply(554, "5.7.1", "Command rejected"))

    @defer.inlineCallbacks
    def test_reject_at_helo_refuses_the_rest(self) -> None:
        """A refusal at connect or HELO ends the milter's session: every later stage gets it."""
        milter, verdicts = yield self.run_with(b"H", packet(b"t"))
        expected = Reply(451, "4.7.1", "Service unavailable - try again later")
        self.assertEqual([v.reply for v in verdicts[1:]], [expected] * 4)
        self.assertNotIn(b"M", milter.names())

    @defer.inlineCallbacks
    def test_tempfail(self) -> None:
        _, verdicts = yield self.run_with(b"R", packet(b"t"))
        self.assertEqual(verdicts[3].reply, Reply(451, "4.7.1", "Service unavailable - try again later"))
        self.assertIsNone(verdicts[4])
        _, verdicts = yield self.run_with(b"C", packet(b"t"))
        self.assertEqual(verdicts[0].reply, Reply(421, "4.7.1", "Service unavailable - try again later"))

    @defer.inlineCallbacks
    def test_replycode(self) -> None:
        """The milter's own reply; a bad one gives the default reply."""
        _, verdicts = yield self.run_with(b"E", packet(b"y", b"554 5.7.1 Gtube pattern\x00"))
        self.assertEqual(verdicts[4].reply, Reply(554, "5.7.1", "Gtube pattern"))
        _, verdicts = yield self.run_with(b"M", packet(b"y", b"250 2.0.0 fine\x00"))
        self.assertEqual(verdicts[2].reply, Reply(550, "5.7.1", "Command rejected"))
        _, verdicts = yield self.run_with(b"M", packet(b"y", b"452 whatever\x00"))
        self.assertEqual(verdicts[2].reply, Reply(452, "", "whatever"))

    @defer.inlineCallbacks
    def test_accept_message(self) -> None:
        """SMFIR_ACCEPT at RCPT: nothing more for this message (no DATA), the next one is asked again."""
        milter, verdicts = yield self.run_with(b"R", packet(b"a"))
        self.assertEqual(verdicts, [None] * 5)
        self.assertNotIn(b"T", milter.names())

    @defer.inlineCallbacks
    def test_accept_connection(self) -> None:
        """SMFIR_ACCEPT at connect: the milter is done with the session."""
        milter, verdicts = yield self.run_with(b"C", packet(b"a"))
        self.assertEqual(verdicts, [None] * 5)
        self.assertEqual(milter.names(), [b"O", b"C", b"Q"])

    @defer.inlineCallbacks
    def test_discard(self) -> None:
        """SMFIR_DISCARD at RCPT or at the end: the message is accepted and delivered to no one."""
        milter, verdicts = yield self.run_with(b"R", packet(b"d"))
        self.assertTrue(verdicts[4].discard)
        self.assertIsNone(verdicts[3])
        self.assertNotIn(b"T", milter.names())
        _, verdicts = yield self.run_with(b"E", packet(b"d"))
        self.assertTrue(verdicts[4].discard)
        self.assertFalse(verdicts[4].refused)

    @defer.inlineCallbacks
    def test_quarantine(self) -> None:
        _, verdicts = yield self.run_with(b"E", packet(b"q", b"looks like  phishing\x00") + packet(b"c"))
        self.assertEqual(verdicts[4].hold, "looks like phishing")
        self.assertFalse(verdicts[4].refused)

    @defer.inlineCallbacks
    def test_header_edits(self) -> None:
        """addheader appends, insheader inserts at its index, chgheader changes or deletes (index per name)."""
        eob = (
            packet(b"h", b"X-Scanned\x00yes\x00")
            + packet(b"i", struct.pack("!I", 0) + b"DKIM-Signature\x00v=1; a=rsa-sha256;\n\tb=abc\x00")
            + packet(b"m", struct.pack("!I", 1) + b"X-Spam\x00\x00")
            + packet(b"m", struct.pack("!I", 1) + b"Subject\x00changed\x00")
            + packet(b"a")
        )
        _, verdicts = yield self.run_with(b"E", eob)
        verdict = verdicts[4]
        section = MESSAGE.split(b"\r\n\r\n")[0] + b"\r\n"
        self.assertEqual(
            apply_edits(verdict, section),
            b"DKIM-Signature: v=1; a=rsa-sha256;\r\n\tb=abc\r\n"
            b"From: Alice <alice@example.test>\r\n"
            b"To: bob@example.test\r\n"
            b"Subject: changed\r\n"
            b"X-Scanned: yes\r\n",
        )

    @defer.inlineCallbacks
    def test_replace_body(self) -> None:
        """SMFIR_REPLBODY in several packets: the chunks make the new body."""
        eob = packet(b"b", b"new body, ") + packet(b"b", b"in two parts\r\n") + packet(b"c")
        _, verdicts = yield self.run_with(b"E", eob)
        self.assertEqual(verdicts[4].body, b"new body, in two parts\r\n")

    @defer.inlineCallbacks
    def test_bad_header_from_milter(self) -> None:
        """A field that would end the header section is a protocol error: the default action."""
        eob = packet(b"h", b"X-Evil\x00a\r\n\r\nbody\x00") + packet(b"a")
        _, verdicts = yield self.run_with(b"E", eob)
        self.assertEqual(verdicts[4].reply, Reply(451, "4.7.1", "Service unavailable - try again later"))

    @defer.inlineCallbacks
    def test_envelope_change_refused(self) -> None:
        """SMFIR_ADDRCPT was never negotiated: a protocol error, the default action."""
        _, verdicts = yield self.run_with(b"E", packet(b"+", b"<evil@example.net>\x00") + packet(b"a"))
        self.assertEqual(verdicts[4].reply, Reply(451, "4.7.1", "Service unavailable - try again later"))

    @defer.inlineCallbacks
    def test_shutdown(self) -> None:
        _, verdicts = yield self.run_with(b"M", packet(b"4"))
        self.assertEqual(verdicts[2].reply, Reply(421, "4.7.0", "Server closing connection"))


class FailureTests(MilterTestCase):
    @defer.inlineCallbacks
    def test_timeout_on_clock(self) -> None:
        """No reply within command_timeout: the default action (tempfail), for this and later stages."""
        clock = task.Clock()
        milter = self.start({b"H": None})
        policy = self.policy(milter, clock=clock, command_timeout=30.0)
        info = session()
        self.assertIsNone((yield policy.on_connect(info)))
        d = policy.on_helo(info, "x")
        yield milter.wait_for_command(b"H")
        clock.advance(29)
        self.assertNoResult(d)
        clock.advance(2)
        verdict = self.successResultOf(d)
        self.assertEqual(verdict.reply, Reply(451, "4.7.1", "Service unavailable - try again later"))
        info.transaction = TransactionInfo("a@example.test")
        self.assertEqual((yield policy.on_mail(info)).reply, verdict.reply)
        yield milter.wait_for(lambda: milter.closed == 1)
        policy.on_close(info)

    @defer.inlineCallbacks
    def test_progress_resets_timeout(self) -> None:
        """SMFIR_PROGRESS restarts the wait (content_timeout at the end of the message)."""
        clock = task.Clock()
        milter = self.start({b"E": None})
        policy = self.policy(milter, clock=clock, content_timeout=300.0)
        info = session()
        yield policy.on_connect(info)
        info.transaction = TransactionInfo("a@example.test")
        yield policy.on_mail(info)
        d = policy.on_data(info, message_info())
        yield milter.wait_for_command(b"E")
        [conn] = milter.connections
        clock.advance(250)
        conn.transport.write(packet(b"p"))
        yield task.deferLater(reactor, 0.1, lambda: None)  # the client reads SMFIR_PROGRESS
        clock.advance(250)
        self.assertNoResult(d)
        conn.transport.write(packet(b"h", b"X-Done\x00yes\x00") + packet(b"a"))
        verdict = yield d
        self.assertEqual(apply_edits(verdict, b""), b"X-Done: yes\r\n")
        yield self.close(policy, info, milter)

    @defer.inlineCallbacks
    def test_connect_timeout(self) -> None:
        """A connection that never completes: connect_timeout on the clock, then the default action."""
        clock = task.Clock()

        class Never:
            def connect(self, factory: Any) -> defer.Deferred[Any]:
                return defer.Deferred()

        settings = MilterSettings(address="inet:192.0.2.9:1", connect_timeout=5.0)
        policy = MilterPolicy(settings, reactor=reactor, clock=clock, endpoint=Never())
        info = session()
        d = policy.on_connect(info)
        clock.advance(4.9)
        self.assertNoResult(d)
        clock.advance(0.2)
        self.assertEqual(
            self.successResultOf(d).reply, Reply(421, "4.7.1", "Service unavailable - try again later")
        )
        yield None

    @defer.inlineCallbacks
    def test_unreachable_default_actions(self) -> None:
        """Nothing listens: tempfail (421 at connect, then 451), reject (554, then 550), accept (skipped)."""
        port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        address = f"inet:127.0.0.1:{port.getHost().port}"
        yield port.stopListening()
        expected = {
            "tempfail": (
                Reply(421, "4.7.1", "Service unavailable - try again later"),
                Reply(451, "4.7.1", "Service unavailable - try again later"),
            ),
            "reject": (
                Reply(554, "5.5.0", "Service unavailable"),
                Reply(550, "5.5.0", "Service unavailable"),
            ),
            "accept": (None, None),
        }
        for action, (at_connect, later) in expected.items():
            policy = self.policy(None, address=address, default_action=action)
            info = session()
            verdict = yield policy.on_connect(info)
            self.assertEqual(verdict.reply if verdict else None, at_connect, action)
            verdict = yield policy.on_helo(info, "x")
            self.assertEqual(verdict.reply if verdict else None, later, action)
            info.transaction = TransactionInfo("a@example.test")
            verdict = yield policy.on_data(info, message_info())
            self.assertEqual(verdict.reply if verdict else None, later, action)
            policy.on_close(info)

    @defer.inlineCallbacks
    def test_milter_closes(self) -> None:
        """The milter closes mid-session: the default action."""
        milter = self.start()
        policy = self.policy(milter, default_action="accept")
        info = session()
        yield policy.on_connect(info)
        milter.connections[0].transport.loseConnection()
        yield milter.wait_for(lambda: milter.closed == 1)
        self.assertIsNone((yield policy.on_helo(info, "x")))
        info.transaction = TransactionInfo("a@example.test")
        self.assertIsNone((yield policy.on_mail(info)))
        policy.on_close(info)

    @defer.inlineCallbacks
    def test_garbled_reply(self) -> None:
        """A garbled packet (oversized length) is a protocol error: the connection is dropped."""
        milter = self.start(
            {b"H": b"\x7f\xff\xff\xffc"},
        )
        policy = self.policy(milter, default_action="reject")
        info = session()
        yield policy.on_connect(info)
        verdict = yield policy.on_helo(info, "x")
        self.assertEqual(verdict.reply, Reply(550, "5.5.0", "Service unavailable"))
        yield milter.wait_for(lambda: milter.closed == 1)
        policy.on_close(info)

    @defer.inlineCallbacks
    def test_unix_socket(self) -> None:
        """unix:/path (Postfix's syntax) reaches a milter on a UNIX socket."""
        from tests.milter._fake import _Connection

        milter = FakeMilter()
        path = os.path.abspath(self.mktemp())
        port = reactor.listenUNIX(path, Factory.forProtocol(lambda: _Connection(milter)))
        self.addCleanup(port.stopListening)
        policy = self.policy(None, address=f"unix:{path}")
        info = session()
        self.assertIsNone((yield policy.on_connect(info)))
        policy.on_close(info)
        yield milter.wait_for(lambda: milter.closed == 1)
        self.assertEqual(milter.names(), [b"O", b"C", b"Q"])


class ConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        [settings] = parse_milters([{"address": "inet:127.0.0.1:8891"}])
        self.assertEqual(
            settings,
            MilterSettings(
                address="inet:127.0.0.1:8891",
                name="inet:127.0.0.1:8891",
                listeners=("mta", "submission"),
                default_action="tempfail",
                connect_timeout=30.0,
                command_timeout=30.0,
                content_timeout=300.0,
            ),
        )

    def test_all_keys(self) -> None:
        [a, b] = parse_milters(
            [
                {
                    "address": "unix:/run/opendkim/opendkim.sock",
                    "name": "opendkim",
                    "listeners": ["submission"],
                    "default_action": "accept",
                    "connect_timeout": 5,
                    "command_timeout": 10.5,
                    "content_timeout": 60,
                },
                {"address": "tcp:host=127.0.0.1:port=11332", "listeners": ["mta", "lmtp"]},
            ]
        )
        self.assertEqual(
            (a.name, a.listeners, a.default_action, a.connect_timeout),
            ("opendkim", ("submission",), "accept", 5.0),
        )
        self.assertEqual(b.listeners, ("mta", "lmtp"))

    def test_errors(self) -> None:
        """Unknown keys and bad values name the entry and the key."""
        cases = [
            ({"address": "inet:127.0.0.1:1", "timeout": 3}, "unknown key(s) timeout"),
            ({}, "address is required"),
            ({"address": "inet:127.0.0.1"}, "bad address"),
            ({"address": "inet:host:99999"}, "bad address"),
            ({"address": "unix:relative/path"}, "bad address"),
            ({"address": "smtp:x"}, "bad address"),
            ({"address": "inet:h:1", "listeners": ["pop3"]}, "listeners"),
            ({"address": "inet:h:1", "listeners": []}, "listeners"),
            ({"address": "inet:h:1", "listeners": "mta"}, "listeners"),
            ({"address": "inet:h:1", "default_action": "discard"}, "default_action"),
            ({"address": "inet:h:1", "command_timeout": 0}, "command_timeout"),
            ({"address": "inet:h:1", "content_timeout": True}, "content_timeout"),
            ({"address": "inet:h:1", "connect_timeout": "30"}, "connect_timeout"),
            ({"address": "inet:h:1", "name": 3}, "name"),
        ]
        for entry, words in cases:
            with self.assertRaises(ConfigError, msg=repr(entry)) as caught:
                parse_milters([entry])
            self.assertIn(words, str(caught.exception))
        self.assertRaises(ConfigError, parse_milters, ["inet:h:1"])
        built = MilterSettings("inet:h:1")
        self.assertEqual(parse_milters([built]), [built])
        self.assertRaises(ConfigError, parse_milters, {"address": "inet:h:1"})

    def test_endpoints(self) -> None:
        from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, UNIXClientEndpoint

        self.assertIsInstance(milter_endpoint(reactor, "inet:localhost:8891"), HostnameEndpoint)
        self.assertIsInstance(milter_endpoint(reactor, "inet:[::1]:8891"), HostnameEndpoint)
        self.assertIsInstance(milter_endpoint(reactor, "unix:/run/x.sock"), UNIXClientEndpoint)
        self.assertIsInstance(milter_endpoint(reactor, "tcp:host=127.0.0.1:port=1"), TCP4ClientEndpoint)
        self.assertIsInstance(milter_endpoint(reactor, "unix:path=/run/x.sock"), UNIXClientEndpoint)

    def test_build(self) -> None:
        policies = build_milter_policies(
            parse_milters(
                [{"address": "inet:127.0.0.1:1", "listeners": ["lmtp"]}, {"address": "inet:127.0.0.1:2"}]
            ),
            reactor=reactor,
        )
        self.assertEqual([sorted(p.roles) for p in policies], [["lmtp"], ["mta", "submission"]])
        self.assertEqual(policies[0].name, "milter inet:127.0.0.1:1")

    def test_milter_reply(self) -> None:
        fallback = Reply(550, "5.7.1", "Command rejected")
        self.assertEqual(milter_reply("554 5.7.1 Spam", fallback), Reply(554, "5.7.1", "Spam"))
        self.assertEqual(
            milter_reply("550-5.7.1 one\r\n550 5.7.1 two", fallback), Reply(550, "5.7.1", "one two")
        )
        self.assertEqual(milter_reply("550 5.7.1 100%% spam", fallback), Reply(550, "5.7.1", "100% spam"))
        self.assertEqual(milter_reply("550 4.7.1 mismatch", fallback), Reply(550, "", "mismatch"))
        for bad in ("250 ok", "hello", "", "550-a\r\n451 b", "55 x", "550 5.7.1 a\x01b", "650 x"):
            self.assertEqual(milter_reply(bad, fallback), fallback, bad)
