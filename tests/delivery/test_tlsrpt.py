"""Tests for :mod:`txmail.delivery.tlsrpt`: counting, the report JSON, sending, the daily timer."""

from __future__ import annotations

import email
import gzip
import json
from typing import Any

from twisted.internet import defer, task
from twisted.trial.unittest import SynchronousTestCase

from txmail.delivery.tlsrpt import TLSReports, mailto_address, parse_tlsrpt_record
from txmail.tlsverify import TLSFailure

#: 2026-12-07 10:00:00 UTC
NOON = 1796637600.0


class RecordTests(SynchronousTestCase):
    def test_rua(self) -> None:
        """RFC 8460 section 3: one v=TLSRPTv1 record; mailto: and https: URIs of rua."""
        self.assertEqual(
            parse_tlsrpt_record([b"v=TLSRPTv1; rua=mailto:a@example.test, https://r.example.test/x"]),
            ["mailto:a@example.test", "https://r.example.test/x"],
        )
        self.assertEqual(parse_tlsrpt_record([b"v=TLSRPTv1;rua=ftp://x"]), [])
        self.assertEqual(
            parse_tlsrpt_record([b"v=TLSRPTv1; rua=mailto:a@x", b"v=TLSRPTv1; rua=mailto:b@x"]), []
        )
        self.assertEqual(parse_tlsrpt_record([b"v=spf1 -all"]), [])

    def test_mailto_addresses(self) -> None:
        """
        A mailto: rua is one address SMTP can send to, percent-decoded
        (RFC 6068 section 2), header fields after "?" dropped; any other is
        left out, as the domain publishing the record writes it.
        """
        self.assertEqual(mailto_address("mailto:tls%2Breports@example.test"), "tls+reports@example.test")
        self.assertEqual(mailto_address("MAILTO:a@example.test?subject=x"), "a@example.test")
        self.assertEqual(mailto_address("mailto:%C3%A9t%C3%A9@example.test"), "\u00e9t\u00e9@example.test")
        for uri in (
            "mailto:a@example.test%0D%0ABcc:%20x@evil.test",  # a header field of its own
            "mailto:a@example.test\r\nBcc: x@evil.test",
            "mailto:a@example.test SIZE=1",  # an RCPT TO parameter
            "mailto:<a@example.test>",
            "mailto:a@b@example.test",
            "mailto:%FF@example.test",  # not UTF-8
            "mailto:" + "a" * 65 + "@example.test",  # RFC 5321 section 4.5.3.1.1
            "mailto:example.test",
            "mailto:",
            "https://a@example.test",
        ):
            self.assertIsNone(mailto_address(uri), uri)
        record = (
            "v=TLSRPTv1; rua=mailto:a@example.test%0D%0ABcc:x@evil.test,mailto:b@x SIZE=1,"
            "mailto:ok@example.test"
        )
        self.assertEqual(parse_tlsrpt_record([record.encode()]), ["mailto:ok@example.test"])


class ReportsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(NOON)
        self.txt: dict[str, Any] = {"_smtp._tls.remote.test": [b"v=TLSRPTv1; rua=mailto:tls@remote.test"]}
        self.mails: list[tuple[str, bytes]] = []
        self.posts: list[tuple[str, bytes, str]] = []
        self.path = self.mktemp()
        self.reports = self.make()

    def make(self) -> TLSReports:
        def send_mail(rcpt: str, data: bytes, report_id: str) -> defer.Deferred[bool]:
            self.mails.append((rcpt, data))
            return defer.succeed(True)

        def post(url: str, body: bytes, ctype: str) -> defer.Deferred[int]:
            self.posts.append((url, body, ctype))
            return defer.succeed(200)

        return TLSReports(
            self.path,
            clock=self.clock,
            hostname="mx.example.test",
            organization="Example",
            contact="postmaster@example.test",
            lookup_txt=lambda name: defer.succeed(self.txt.get(name)),
            send_mail=send_mail,
            post=post,
        )

    def count(self, failure: TLSFailure | None = None, domain: str = "remote.test") -> None:
        self.reports.record(
            domain,
            "sts",
            ["version: STSv1", "mode: enforce"],
            None,
            failure,
            receiving_mx="mx.remote.test",
            address="192.0.2.1",
            now=self.clock.seconds(),
        )

    def test_counts_and_report(self) -> None:
        """Successes and failures per policy; the section 4.4 JSON with the UTC day's range."""
        self.count()
        self.count()
        self.count(TLSFailure("starttls-not-supported", "no STARTTLS"))
        self.assertEqual(self.reports.counts("2026-12-07", "remote.test"), (2, 1))
        report = self.reports.report("2026-12-07", "remote.test")
        self.assertEqual(
            report["date-range"],
            {"start-datetime": "2026-12-07T00:00:00Z", "end-datetime": "2026-12-07T23:59:59Z"},
        )
        self.assertEqual(report["organization-name"], "Example")
        self.assertEqual(report["contact-info"], "postmaster@example.test")
        [policy] = report["policies"]
        self.assertEqual(
            policy["policy"],
            {
                "policy-type": "sts",
                "policy-string": ["version: STSv1", "mode: enforce"],
                "policy-domain": "remote.test",
            },
        )
        self.assertEqual(
            policy["summary"], {"total-successful-session-count": 2, "total-failure-session-count": 1}
        )
        self.assertEqual(
            policy["failure-details"],
            [
                {
                    "result-type": "starttls-not-supported",
                    "failed-session-count": 1,
                    "receiving-mx-hostname": "mx.remote.test",
                    "receiving-ip": "192.0.2.1",
                    "failure-reason-code": "no STARTTLS",
                }
            ],
        )

    def test_counts_survive_restart(self) -> None:
        """The counts are written (after the flush interval) and read back."""
        self.count()
        self.clock.advance(60)
        self.assertEqual(self.make().counts("2026-12-07", "remote.test"), (1, 0))

    def test_send_finished_days_only(self) -> None:
        """Today's counts wait; yesterday's are mailed (gzip attachment) and dropped."""
        self.count()
        self.assertEqual(self.successResultOf(self.reports.send_reports()), [])
        self.clock.advance(86400)
        sent = self.successResultOf(self.reports.send_reports())
        self.assertEqual(sent, [("remote.test", "mailto:tls@remote.test", True)])
        self.assertEqual(self.reports.days, {})
        [(rcpt, data)] = self.mails
        self.assertEqual(rcpt, "tls@remote.test")
        msg = email.message_from_bytes(data)
        self.assertEqual(msg.get_content_type(), "multipart/report")
        self.assertEqual(msg["TLS-Report-Domain"], "remote.test")
        [part] = [p for p in msg.walk() if p.get_content_type() == "application/tlsrpt+gzip"]
        report = json.loads(gzip.decompress(part.get_payload(decode=True)))
        self.assertEqual(report["policies"][0]["summary"]["total-successful-session-count"], 1)
        self.assertIn(b"\r\n", data)
        self.assertNotIn(b"\r\r", data)

    def test_mailto_rua_decoded(self) -> None:
        """The report goes to the decoded address of the mailto: URI; a broken one gets nothing."""
        self.txt["_smtp._tls.remote.test"] = [b"v=TLSRPTv1; rua=mailto:tls%2Bin@remote.test?subject=r"]
        self.count()
        sent = self.successResultOf(self.reports.send_reports(include_today=True))
        self.assertEqual(sent, [("remote.test", "mailto:tls%2Bin@remote.test?subject=r", True)])
        [(rcpt, data)] = self.mails
        self.assertEqual(rcpt, "tls+in@remote.test")
        self.assertEqual(email.message_from_bytes(data)["To"], "tls+in@remote.test")

    def test_https_rua(self) -> None:
        """An https: rua gets the gzipped JSON POSTed as application/tlsrpt+gzip."""
        self.txt["_smtp._tls.remote.test"] = [b"v=TLSRPTv1; rua=https://reports.remote.test/tlsrpt"]
        self.count()
        self.successResultOf(self.reports.send_reports(include_today=True))
        [(url, body, ctype)] = self.posts
        self.assertEqual((url, ctype), ("https://reports.remote.test/tlsrpt", "application/tlsrpt+gzip"))
        self.assertEqual(
            json.loads(gzip.decompress(body))["policies"][0]["policy"]["policy-domain"], "remote.test"
        )

    def test_no_record_nothing_sent(self) -> None:
        """A domain without a _smtp._tls record gets nothing; its counts are dropped."""
        self.count(domain="quiet.test")
        self.assertEqual(self.successResultOf(self.reports.send_reports(include_today=True)), [])
        self.assertEqual((self.mails, self.reports.days), ([], {}))

    def test_daily_timer(self) -> None:
        """start(): reports go out five minutes after midnight UTC, every day; stop() cancels."""
        self.count()
        self.reports.start()
        self.clock.advance(14 * 3600)  # 00:00
        self.assertEqual(self.mails, [])
        self.clock.advance(301)
        self.assertEqual(len(self.mails), 1)
        self.count()
        self.clock.advance(86400)
        self.assertEqual(len(self.mails), 2)
        self.reports.stop()
        self.assertEqual([c for c in self.clock.getDelayedCalls() if c.active()], [])

    def test_old_days_forgotten(self) -> None:
        """Counts older than keep_days are dropped when a new day starts (reports off: no growth)."""
        self.count()
        self.clock.advance(3 * 86400)
        self.count()
        self.assertEqual(sorted(self.reports.days), ["2026-12-07", "2026-12-10"])
        self.clock.advance(5 * 86400)
        self.count()
        self.assertEqual(sorted(self.reports.days), ["2026-12-10", "2026-12-15"])
