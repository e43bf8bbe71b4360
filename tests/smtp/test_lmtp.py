"""
LMTP (RFC 2033) on the SMTP session and adapter: LHLO instead of EHLO/HELO,
the extensions offered, and one reply per recipient at the end of the data.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.smtp.test_policy_hooks import drain
from tests.smtp.test_server import ServerTestCase
from txmail.model import DeliveryReport, RecipientResult
from txmail.smtp import codes
from txmail.smtp.codes import Reply
from txmail.smtp.events import DataComplete, Greeted
from txmail.smtp.server import lmtp_replies
from txmail.smtp.session import ServerSession

TWO = b"LHLO mta.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"


def lines(session: ServerSession) -> list[bytes]:
    return session.data_to_send().split(b"\r\n")[:-1]


class LMTPSessionTests(SynchronousTestCase):
    """The sans-IO session in the lmtp role."""

    def session(self) -> ServerSession:
        session = ServerSession("mx.test", role="lmtp")
        session.data_to_send()
        return session

    def run_to_data(self, session: ServerSession, script: bytes = TWO) -> None:
        session.receive_data(script)
        while (event := session.next_event()) is not None:
            if event.needs_decision:
                session.accept()

    def test_greeting_and_lhlo(self) -> None:
        """The greeting says LMTP; LHLO lists the LMTP extensions (no DSN, no AUTH) and greets the client."""
        session = ServerSession("mx.test", role="lmtp")
        self.assertEqual(session.data_to_send(), b"220 mx.test LMTP txmail\r\n")
        session.receive_data(b"LHLO mta.test\r\n")
        self.assertEqual(drain(session), [Greeted("mta.test", True)])
        reply = lines(session)
        self.assertEqual(reply[0], b"250-mx.test")
        keywords = [line[4:].split(b" ")[0] for line in reply[1:]]
        self.assertEqual(
            sorted(keywords),
            [b"8BITMIME", b"CHUNKING", b"ENHANCEDSTATUSCODES", b"PIPELINING", b"SIZE", b"SMTPUTF8"],
        )
        self.assertEqual(session.protocol, "LMTP")

    def test_ehlo_and_helo_refused(self) -> None:
        """EHLO and HELO are not LMTP commands (RFC 2033 section 4.1); LHLO is not an SMTP one."""
        session = self.session()
        session.receive_data(b"EHLO a.test\r\nHELO a.test\r\n")
        drain(session)
        self.assertEqual(lines(session), [b"500 5.5.1 This is LMTP: use LHLO"] * 2)
        smtp = ServerSession("mx.test")
        smtp.data_to_send()
        smtp.receive_data(b"LHLO a.test\r\n")
        drain(smtp)
        self.assertEqual(lines(smtp), [b"500 5.5.2 Syntax error, command unrecognized"])

    def test_one_reply_per_recipient(self) -> None:
        """The end of the data is answered once per accepted recipient, in RCPT order (RFC 2033 section 4.2)."""
        session = self.session()
        self.run_to_data(session)
        session.data_to_send()
        session.receive_data(b"Subject: x\r\n\r\nhi\r\n.\r\n")
        self.assertIsInstance(drain(session)[-1], DataComplete)
        session.accept([Reply(250, "2.0.0", "<a@x.test> ok"), Reply(452, "4.2.2", "<b@x.test> over quota")])
        self.assertEqual(lines(session), [b"250 2.0.0 <a@x.test> ok", b"452 4.2.2 <b@x.test> over quota"])
        self.assertIsNone(session.transaction)

    def test_failure_repeated(self) -> None:
        """A refusal of the whole message (a policy, a local error) is given once per recipient."""
        session = self.session()
        self.run_to_data(session)
        session.data_to_send()
        session.receive_data(b"hi\r\n.\r\n")
        drain(session)
        session.reject(codes.LOCAL_ERROR)
        self.assertEqual(lines(session), [codes.LOCAL_ERROR.to_bytes().rstrip(b"\r\n")] * 2)

    def test_session_refusals_repeated(self) -> None:
        """A message over the size limit, found while reading, is refused once per recipient."""
        from txmail.smtp.session import SMTPLimits

        session = ServerSession("mx.test", role="lmtp", limits=SMTPLimits(max_message_size=10))
        session.data_to_send()
        self.run_to_data(session)
        session.data_to_send()
        session.receive_data(b"0123456789abcdef\r\n.\r\n")
        drain(session)
        self.assertEqual(lines(session), [codes.MESSAGE_TOO_BIG.to_bytes().rstrip(b"\r\n")] * 2)

    def test_bdat_last(self) -> None:
        """BDAT LAST (RFC 3030 with LMTP) is answered once per recipient too."""
        session = self.session()
        script = TWO.replace(b"DATA\r\n", b"BDAT 4 LAST\r\nhi\r\n")
        session.receive_data(script)
        for event in iter(session.next_event, None):
            if event.needs_decision and not isinstance(event, DataComplete):
                session.accept()
        session.data_to_send()
        session.accept(Reply(250, "2.0.0", "ok"))
        self.assertEqual(lines(session), [b"250 2.0.0 ok"] * 2)

    def test_wrong_number_of_replies(self) -> None:
        """Giving fewer replies than recipients is the caller's mistake."""
        session = self.session()
        self.run_to_data(session)
        session.receive_data(b"hi\r\n.\r\n")
        drain(session)
        self.assertRaises(ValueError, session.accept, [codes.OK])


class LMTPRepliesTests(SynchronousTestCase):
    def test_replies_from_report(self) -> None:
        """Each recipient gets its own reply from the delivery report; a duplicate RCPT gets it twice."""
        report = DeliveryReport(
            (
                RecipientResult("a@x.test", ok=True),
                RecipientResult("b@x.test", ok=False, temporary=True, reply="451 4.3.0 Delivery failed"),
                RecipientResult("c@x.test", ok=False, reply="550 5.1.1 No such user here"),
            )
        )
        replies = lmtp_replies(report, ["a@x.test", "b@x.test", "c@x.test", "a@x.test", "d@x.test"], "ID1")
        self.assertEqual(
            [r.to_bytes() for r in replies],
            [
                b"250 2.0.0 <a@x.test> delivered as ID1\r\n",
                b"451 4.3.0 <b@x.test> Delivery failed\r\n",
                b"550 5.1.1 <c@x.test> No such user here\r\n",
                b"250 2.0.0 <a@x.test> delivered as ID1\r\n",
                b"451 4.3.0 <d@x.test> Requested action aborted: local error in processing\r\n",
            ],
        )

    def test_typed_replies(self) -> None:
        """A Reply of the right class is the recipient's; a positive one or one of the wrong class is not."""
        report = DeliveryReport(
            (
                RecipientResult("a@x.test", ok=False, reply=Reply(552, "5.2.2", "Over quota")),
                RecipientResult("b@x.test", ok=False, temporary=True, reply=Reply(550, "5.1.1", "No")),
                RecipientResult("c@x.test", ok=False, reply=Reply(250, "2.0.0", "OK")),
            )
        )
        self.assertEqual(
            [r.to_bytes() for r in lmtp_replies(report, ["a@x.test", "b@x.test", "c@x.test"], "ID1")],
            [
                b"552 5.2.2 <a@x.test> Over quota\r\n",
                b"451 4.3.0 <b@x.test> Requested action aborted: local error in processing\r\n",
                b"554 5.0.0 <c@x.test> Transaction failed\r\n",
            ],
        )


class LMTPAdapterTests(ServerTestCase):
    """The adapter answers LMTP's data with the router's per-recipient results."""

    def test_per_recipient_results(self) -> None:
        """A router report with one failure gives one 250 and one 451, and no AUTH is offered."""
        self.router.report = DeliveryReport(
            (
                RecipientResult("alice@example.test", ok=True),
                RecipientResult(
                    "bob@example.test", ok=False, temporary=True, reply="451 4.3.0 Delivery failed"
                ),
            )
        )
        proto, transport = self.connect(role="lmtp")
        self.assertEqual(transport.value(), b"220 mx.example.test LMTP txmail\r\n")
        transport.clear()
        proto.dataReceived(
            b"LHLO mta.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"
        )
        out = self.take(transport)
        self.assertNotIn(b"AUTH", b"".join(out))
        self.assertEqual(out[-2][:4], b"250 ")
        self.assertEqual(out[-1], b"451 4.3.0 <bob@example.test> Delivery failed")
        envelope, data, _ = self.router.delivered[0]
        self.assertEqual(envelope.protocol, "LMTP")
        self.assertIn(b"with LMTP id", data)

    def test_no_relaying(self) -> None:
        """A recipient elsewhere is refused, as on port 25 (the router's relay rule)."""
        proto, transport = self.connect(role="lmtp")
        proto.dataReceived(b"LHLO mta.test\r\nMAIL FROM:<s@r.test>\r\nRCPT TO:<x@elsewhere.test>\r\n")
        self.assertEqual(self.take(transport)[-1], b"554 5.7.1 Relay access denied")
