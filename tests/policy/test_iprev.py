"""Forward-confirmed reverse DNS (iprev, RFC 8601 section 3) with dictionary answers."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.dnsdata import DictAnswers, DNSStatus, run_sync
from txmail.policy.iprev import MAX_NAMES, IprevResult, check_iprev

V6_REVERSE = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


class IprevTests(SynchronousTestCase):
    def check(self, address: str, table: dict) -> IprevResult:
        return run_sync(check_iprev(address), DictAnswers(table))

    def test_pass(self) -> None:
        """A PTR name whose A records hold the address passes, with that name."""
        result = self.check(
            "192.0.2.1",
            {
                ("1.2.0.192.in-addr.arpa", "PTR"): ["mail.example.test"],
                ("mail.example.test", "A"): ["192.0.2.1"],
            },
        )
        self.assertEqual((result.result, result.name), ("pass", "mail.example.test"))

    def test_ipv6_and_mapped(self) -> None:
        """IPv6 uses ip6.arpa and AAAA; an IPv4-mapped address is checked as IPv4."""
        result = self.check(
            "2001:db8::1",
            {(V6_REVERSE, "PTR"): ["h.example.test"], ("h.example.test", "AAAA"): ["2001:db8::1"]},
        )
        self.assertEqual(result.result, "pass")
        mapped = self.check(
            "::ffff:192.0.2.1",
            {("1.2.0.192.in-addr.arpa", "PTR"): ["m.example.test"], ("m.example.test", "A"): ["192.0.2.1"]},
        )
        self.assertEqual(mapped.result, "pass")

    def test_second_name_matches(self) -> None:
        """Any of the PTR names may confirm the address."""
        result = self.check(
            "192.0.2.1",
            {
                ("1.2.0.192.in-addr.arpa", "PTR"): ["a.example.test", "b.example.test"],
                ("a.example.test", "A"): ["192.0.2.99"],
                ("b.example.test", "A"): ["192.0.2.1"],
            },
        )
        self.assertEqual((result.result, result.name), ("pass", "b.example.test"))

    def test_fail_and_errors(self) -> None:
        """No match is fail; no PTR is permerror; a failed lookup without a match is temperror."""
        ptr = ("1.2.0.192.in-addr.arpa", "PTR")
        self.assertEqual(
            self.check("192.0.2.1", {ptr: ["a.example.test"], ("a.example.test", "A"): ["192.0.2.2"]}).result,
            "fail",
        )
        self.assertEqual(self.check("192.0.2.1", {}).result, "permerror")
        self.assertEqual(self.check("192.0.2.1", {ptr: DNSStatus.ERROR}).result, "temperror")
        self.assertEqual(
            self.check(
                "192.0.2.1", {ptr: ["a.example.test"], ("a.example.test", "A"): DNSStatus.ERROR}
            ).result,
            "temperror",
        )
        self.assertEqual(self.check("not-an-address", {}).result, "permerror")

    def test_names_bounded(self) -> None:
        """At most MAX_NAMES PTR names are looked up."""
        answers = DictAnswers({("1.2.0.192.in-addr.arpa", "PTR"): [f"n{i}.example.test" for i in range(20)]})
        result = run_sync(check_iprev("192.0.2.1"), answers)
        self.assertEqual(result.result, "fail")
        self.assertEqual(len(answers.questions), 1 + MAX_NAMES)
