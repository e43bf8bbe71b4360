"""Tests for delivery status notifications, txmail.delivery.bounce (RFC 3464, RFC 3461)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message
from email.utils import parsedate_to_datetime

from twisted.trial.unittest import SynchronousTestCase

from txmail.delivery.bounce import (
    RecipientStatus,
    format_date,
    make_dsn,
    notify_wants,
    should_bounce,
)

NOW = 1_700_000_000.0
ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: Lunch\r\n"
    b"Message-ID: <orig@example.test>\r\n"
    b"\r\n"
    b"Shall we have lunch?\r\n"
    b"SECRET-BODY-LINE\r\n"
)

FAILED = RecipientStatus(
    recipient="bob@remote.test",
    action="failed",
    status="5.1.1",
    diagnostic="smtp; 550 5.1.1 <bob@remote.test>: no such user",
    remote_mta="dns; mx.remote.test",
    original_recipient="rfc822;Bob@Remote.test",
    last_attempt=NOW - 60,
)
DELAYED = RecipientStatus(
    recipient="carol@slow.test",
    action="delayed",
    status="4.4.1",
    diagnostic="connection timed out",
    last_attempt=NOW - 30,
    will_retry_until=NOW + 86400,
)


def parse(data: bytes) -> Message:
    return email.message_from_bytes(data, policy=email.policy.compat32)


def status_blocks(msg: Message) -> list[Message]:
    """The message/delivery-status part as [per-message, per-recipient...] header blocks."""
    part = msg.get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return part.get_payload()


class MakeDSNTests(SynchronousTestCase):
    def dsn(self, **kw: object) -> bytes:
        args: dict[str, object] = {
            "reporting_mta": "mail.example.test",
            "sender": "alice@example.test",
            "recipients": [FAILED],
            "original": ORIGINAL,
            "now": NOW,
        }
        args.update(kw)
        return make_dsn(**args)  # type: ignore[arg-type]

    def test_top_level_headers(self) -> None:
        """From MAILER-DAEMON, To the sender, Date, Message-ID, Auto-Submitted, multipart/report."""
        msg = parse(self.dsn())
        self.assertEqual(msg["From"], "Mail Delivery System <MAILER-DAEMON@mail.example.test>")
        self.assertEqual(msg["To"], "<alice@example.test>")
        self.assertIn("Failure", msg["Subject"])
        self.assertEqual(parsedate_to_datetime(msg["Date"]).timestamp(), NOW)
        self.assertTrue(msg["Date"].endswith("+0000"))
        self.assertRegex(msg["Message-ID"], r"^<[^<>@\s]+@mail\.example\.test>$")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["MIME-Version"], "1.0")
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(
            [p.get_content_type() for p in msg.get_payload()],
            ["text/plain", "message/delivery-status", "text/rfc822-headers"],
        )
        self.assertFalse(msg.defects)

    def test_message_ids_differ(self) -> None:
        """Two reports get different Message-IDs and boundaries."""
        a, b = parse(self.dsn()), parse(self.dsn())
        self.assertNotEqual(a["Message-ID"], b["Message-ID"])
        self.assertNotEqual(a.get_boundary(), b.get_boundary())

    def test_delivery_status_fields(self) -> None:
        """Per-message and per-recipient fields carry the given values, in RFC 3464 form."""
        msg = parse(self.dsn(envid="QQ314159", arrival=NOW - 3600, recipients=[FAILED, DELAYED]))
        blocks = status_blocks(msg)
        self.assertEqual(len(blocks), 3)
        per_message, first, second = blocks
        self.assertEqual(per_message["Reporting-MTA"], "dns; mail.example.test")
        self.assertEqual(per_message["Original-Envelope-Id"], "QQ314159")
        self.assertEqual(per_message["Arrival-Date"], format_date(NOW - 3600))
        self.assertEqual(first["Original-Recipient"], "rfc822;Bob@Remote.test")
        self.assertEqual(first["Final-Recipient"], "rfc822;bob@remote.test")
        self.assertEqual(first["Action"], "failed")
        self.assertEqual(first["Status"], "5.1.1")
        self.assertEqual(first["Remote-MTA"], "dns; mx.remote.test")
        self.assertEqual(first["Diagnostic-Code"], "smtp; 550 5.1.1 <bob@remote.test>: no such user")
        self.assertEqual(parsedate_to_datetime(first["Last-Attempt-Date"]).timestamp(), NOW - 60)
        self.assertIsNone(first["Will-Retry-Until"])
        self.assertEqual(second["Final-Recipient"], "rfc822;carol@slow.test")
        self.assertEqual(second["Action"], "delayed")
        self.assertEqual(second["Status"], "4.4.1")
        self.assertIsNone(second["Original-Recipient"])
        self.assertIsNone(second["Remote-MTA"])
        self.assertEqual(second["Diagnostic-Code"], "X-txmail; connection timed out")
        self.assertEqual(parsedate_to_datetime(second["Will-Retry-Until"]).timestamp(), NOW + 86400)
        # Failure wins the subject over delay.
        self.assertIn("Failure", msg["Subject"])

    def test_optional_per_message_fields_absent(self) -> None:
        """Without envid and arrival, only Reporting-MTA is there."""
        per_message = status_blocks(parse(self.dsn()))[0]
        self.assertEqual(per_message.keys(), ["Reporting-MTA"])

    def test_bare_values_get_types(self) -> None:
        """A bare remote MTA gets 'dns;', a bare SMTP reply 'smtp;', a typed address keeps its type."""
        rs = RecipientStatus(
            "rfc822;dave@remote.test", "failed", "5.0.0", diagnostic="554 no", remote_mta="mx.remote.test"
        )
        block = status_blocks(parse(self.dsn(recipients=[rs])))[1]
        self.assertEqual(block["Final-Recipient"], "rfc822;dave@remote.test")
        self.assertEqual(block["Remote-MTA"], "dns; mx.remote.test")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 554 no")

    def test_human_readable_part(self) -> None:
        """The text part names each recipient with its reason."""
        msg = parse(self.dsn(recipients=[FAILED, DELAYED], postmaster="postmaster@example.test"))
        text = msg.get_payload()[0].get_payload(decode=True).decode().replace("\r\n    ", " ")
        self.assertIn("<bob@remote.test>: 550 5.1.1 <bob@remote.test>: no such user", text)
        self.assertIn("mx.remote.test", text)
        self.assertIn("<carol@slow.test>: connection timed out", text)
        self.assertIn(format_date(NOW + 86400), text)
        self.assertIn("could not be delivered", text.replace("\r\n", " "))
        self.assertIn("delayed", text)
        self.assertIn("postmaster@example.test", text)

    def test_reason_from_status_without_diagnostic(self) -> None:
        """Without a diagnostic the text explains the status code."""
        rs = RecipientStatus("erin@nullmx.test", "failed", "5.1.10")
        text = parse(self.dsn(recipients=[rs])).get_payload()[0].get_payload(decode=True).decode()
        text = text.replace("\r\n    ", " ")
        self.assertIn("<erin@nullmx.test>: 5.1.10", text)
        self.assertIn("null MX", text)
        self.assertIsNone(status_blocks(parse(self.dsn(recipients=[rs])))[1]["Diagnostic-Code"])

    def test_headers_only_by_default(self) -> None:
        """By default the third part holds the original's header section, not its body."""
        data = self.dsn()
        third = parse(data).get_payload()[2]
        self.assertEqual(third.get_content_type(), "text/rfc822-headers")
        payload = third.get_payload(decode=True)
        self.assertIn(b"Subject: Lunch\r\n", payload)
        self.assertIn(b"Message-ID: <orig@example.test>", payload)
        self.assertNotIn(b"SECRET-BODY-LINE", data)
        self.assertNotIn(b"lunch?", data)

    def test_return_full(self) -> None:
        """With return_full the whole original is a message/rfc822 part (RET=FULL)."""
        data = self.dsn(return_full=True)
        third = parse(data).get_payload()[2]
        self.assertEqual(third.get_content_type(), "message/rfc822")
        inner = third.get_payload()[0]
        self.assertEqual(inner["Subject"], "Lunch")
        self.assertEqual(inner.get_payload(), "Shall we have lunch?\r\nSECRET-BODY-LINE\r\n")
        self.assertIn(ORIGINAL, data)

    def test_return_full_with_overlong_lines_returns_headers(self) -> None:
        """An original with lines over 998 octets is returned as headers only."""
        original = b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n"
        data = self.dsn(return_full=True, original=original)
        self.assertEqual(parse(data).get_payload()[2].get_content_type(), "text/rfc822-headers")
        self.assertNotIn(b"x" * 100, data)

    def test_crlf_everywhere(self) -> None:
        """Every line ends in CRLF, even when the original used bare LF."""
        lf_original = ORIGINAL.replace(b"\r\n", b"\n")
        for kw in ({}, {"return_full": True}):
            data = self.dsn(original=lf_original, recipients=[FAILED, DELAYED], envid="X", **kw)
            self.assertTrue(data.endswith(b"\r\n"))
            self.assertNotRegex(data, re.compile(rb"(?<!\r)\n"))
            self.assertNotRegex(data, re.compile(rb"\r(?!\n)"))
        # And the returned original is now CRLF.
        self.assertIn(ORIGINAL, self.dsn(original=lf_original, return_full=True))

    def test_long_diagnostic_folded(self) -> None:
        """A long diagnostic is folded; no line reaches 998 octets, even for a run without spaces."""
        words = " ".join(f"word{i}" for i in range(400))
        run = "y" * 3000
        rs = RecipientStatus("bob@remote.test", "failed", "5.0.0", diagnostic=f"smtp; 550 {words} {run}")
        data = self.dsn(recipients=[rs])
        for line in data.split(b"\r\n"):
            self.assertLess(len(line), 998)
        lines = data.split(b"\r\n")
        start = next(i for i, line in enumerate(lines) if line.startswith(b"Diagnostic-Code:"))
        self.assertLessEqual(len(lines[start]), 78)
        self.assertTrue(lines[start + 1].startswith(b" "))
        diag = status_blocks(parse(data))[1]["Diagnostic-Code"]
        unfolded = re.sub(r"\r?\n[ \t]", " ", diag)
        self.assertTrue(unfolded.startswith(f"smtp; 550 {words} y"))
        self.assertEqual(unfolded.count("y"), 3000)

    def test_multiline_reply_cannot_inject_fields(self) -> None:
        """CR/LF in a diagnostic (a multi-line reply) becomes a space: no new field appears."""
        rs = RecipientStatus(
            "bob@remote.test",
            "failed",
            "5.1.1",
            diagnostic="smtp; 550-5.1.1 first\r\n550 5.1.1 second\r\nStatus: 2.0.0",
        )
        block = status_blocks(parse(self.dsn(recipients=[rs])))[1]
        self.assertEqual(block.get_all("Status"), ["5.1.1"])
        self.assertEqual(block["Diagnostic-Code"], "smtp; 550-5.1.1 first 550 5.1.1 second Status: 2.0.0")

    def test_8bit_original_headers_survive(self) -> None:
        """8-bit octets in the original's header section are returned unchanged, declared 8bit."""
        original = "Subject: Grüße aus Köln\r\nFrom: José <jose@example.test>\r\n\r\nbody\r\n".encode()
        data = self.dsn(original=original)
        self.assertIn("Subject: Grüße aus Köln\r\nFrom: José <jose@example.test>\r\n".encode(), data)
        third = parse(data).get_payload()[2]
        self.assertEqual(third["Content-Transfer-Encoding"], "8bit")
        self.assertEqual(parse(data)["Content-Transfer-Encoding"], "8bit")
        # Latin-1 garbage (not UTF-8) survives too.
        raw = b"Subject: caf\xe9\r\n\r\nx\r\n"
        self.assertIn(b"Subject: caf\xe9\r\n", self.dsn(original=raw))

    def test_non_ascii_recipient(self) -> None:
        """An SMTPUTF8 address uses the utf-8 type with RFC 6533 escapes; the status part stays 7-bit."""
        rs = RecipientStatus("jösé+x@bücher.test", "failed", "5.1.1", diagnostic="smtp; 550 nö")
        data = self.dsn(recipients=[rs])
        msg = parse(data)
        status = msg.get_payload()[1].as_bytes()
        self.assertTrue(status.isascii())
        block = status_blocks(msg)[1]
        self.assertEqual(block["Final-Recipient"], "utf-8;j\\x{F6}s\\x{E9}\\x{2B}x@b\\x{FC}cher.test")
        self.assertEqual(block["Diagnostic-Code"], "smtp; 550 n\\x{F6}")
        text = msg.get_payload()[0].get_payload(decode=True).decode()
        self.assertIn("<jösé+x@bücher.test>", text)

    def test_subjects(self) -> None:
        """The subject names delay when nothing failed, success when all went well."""
        self.assertIn("Delay", parse(self.dsn(recipients=[DELAYED]))["Subject"])
        ok = RecipientStatus("bob@remote.test", "delivered", "2.0.0")
        relayed = RecipientStatus("carol@remote.test", "relayed", "2.0.0")
        msg = parse(self.dsn(recipients=[ok, relayed]))
        self.assertIn("Success", msg["Subject"])
        self.assertEqual([b["Action"] for b in status_blocks(msg)[1:]], ["delivered", "relayed"])

    def test_sender_in_angle_brackets(self) -> None:
        """A sender given as <addr> is not double-bracketed."""
        self.assertEqual(parse(self.dsn(sender="<alice@example.test>"))["To"], "<alice@example.test>")

    def test_refuses_bad_input(self) -> None:
        """Null sender, no recipients, bad action/status, bad reporting MTA: ValueError."""
        self.assertRaises(ValueError, self.dsn, sender="")
        self.assertRaises(ValueError, self.dsn, sender="<>")
        self.assertRaises(ValueError, self.dsn, recipients=[])
        self.assertRaises(ValueError, self.dsn, recipients=[RecipientStatus("a@b", "bounced", "5.0.0")])
        self.assertRaises(ValueError, self.dsn, recipients=[RecipientStatus("a@b", "failed", "550")])
        self.assertRaises(ValueError, self.dsn, reporting_mta="mail.test\r\nBcc: x@y")


class DecisionTests(SynchronousTestCase):
    def test_should_bounce(self) -> None:
        """Never a DSN to the null sender."""
        self.assertFalse(should_bounce(""))
        self.assertFalse(should_bounce("<>"))
        self.assertFalse(should_bounce(" <> "))
        self.assertTrue(should_bounce("alice@example.test"))

    def test_notify_default(self) -> None:
        """No NOTIFY: failure and delay are reported, success is not."""
        self.assertTrue(notify_wants(None, "failed"))
        self.assertTrue(notify_wants(None, "delayed"))
        for action in ("delivered", "relayed", "expanded"):
            self.assertFalse(notify_wants(None, action))

    def test_notify_never(self) -> None:
        """NEVER: nothing, even combined with others."""
        for action in ("failed", "delayed", "delivered"):
            self.assertFalse(notify_wants("NEVER", action))
            self.assertFalse(notify_wants("never,FAILURE", action))

    def test_notify_list(self) -> None:
        """A comma list asks for exactly its events, in any case."""
        self.assertTrue(notify_wants("SUCCESS,FAILURE", "failed"))
        self.assertFalse(notify_wants("SUCCESS,FAILURE", "delayed"))
        self.assertTrue(notify_wants("success", "delivered"))
        self.assertTrue(notify_wants("SUCCESS", "relayed"))
        self.assertTrue(notify_wants("SUCCESS", "expanded"))
        self.assertTrue(notify_wants("DELAY", "delayed"))
        self.assertFalse(notify_wants("DELAY", "failed"))
        self.assertFalse(notify_wants("FAILURE", "delivered"))
        self.assertRaises(ValueError, notify_wants, None, "bounced")

    def test_format_date(self) -> None:
        """RFC 5322 date in UTC."""
        self.assertEqual(format_date(0), "Thu, 01 Jan 1970 00:00:00 +0000")
