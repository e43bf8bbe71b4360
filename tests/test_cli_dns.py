"""
``txmail dkim keygen`` and ``txmail dns-records`` (txmail.cli), and the
records they print and check (txmail.dnsrecords): pure tests with a
dictionary of answers, the command in-process with temporary directories,
``--check`` against the tests' DNS server on loopback, and one run of the
real command in a subprocess.
"""

from __future__ import annotations

import functools
import io
import os
import re
import stat
import sys
from typing import Any

from twisted.internet import defer, utils
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from tests._dns import SERVFAIL, start_dns_server
from tests.test_sansio_imports import twisted_imports
from txmail import cli, dnsrecords
from txmail.autoconfig import ClientOffer
from txmail.dnsdata import DictAnswers, DNSStatus, run_sync
from txmail.dnsrecords import (
    CheckStatus,
    DKIMPublication,
    Finding,
    MailDomain,
    check_domain,
    dmarc_value,
    format_finding,
    is_domain_name,
    records_for,
    spf_value,
    summary,
    txt_character_strings,
    zone_line,
    zone_text,
)
from txmail.policy.dkim import generate_key, load_signing_key, txt_record_for
from txmail.resolver import Resolver, StaticResolver

DOMAIN = "example.test"
HOST = "mail.example.test"
SRV_NAMES = ("submissions", "submission", "imaps", "imap", "pop3s", "pop3")


@functools.cache
def _key(algorithm: str, bits: int = 2048) -> tuple[bytes, str]:
    """One key pair per algorithm for the whole run (RSA generation is slow)."""
    return generate_key(algorithm, bits)


def rsa_record() -> str:
    return _key("rsa-sha256")[1]


def ed25519_record() -> str:
    return _key("ed25519-sha256")[1]


def other_rsa_record() -> str:
    return _key("rsa-sha256", 1024)[1]


def txt_value(line: str) -> str:
    """The TXT value of a zone-file line: its quoted character-strings joined."""
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', line.partition(" IN TXT ")[2]))


def good_zone() -> dict[tuple[str, str], Any]:
    """A zone where every record txmail wants is published and right."""
    return {
        (DOMAIN, "MX"): [(10, HOST)],
        (HOST, "A"): ["127.0.0.1"],
        (DOMAIN, "TXT"): ["v=spf1 mx -all", "google-site-verification=abc"],
        (f"s1._domainkey.{DOMAIN}", "TXT"): [rsa_record()],
        (f"s2._domainkey.{DOMAIN}", "TXT"): [ed25519_record()],
        (f"_dmarc.{DOMAIN}", "TXT"): [dmarc_value(DOMAIN)],
        ("1.0.0.127.in-addr.arpa", "PTR"): [HOST],
    }


def broken_zone() -> dict[tuple[str, str], Any]:
    """Missing DKIM s2, a different key at s1, two SPF records, no DMARC."""
    zone = good_zone()
    zone[(DOMAIN, "TXT")] = ["v=spf1 mx -all", "v=spf1 a -all"]
    zone[(f"s1._domainkey.{DOMAIN}", "TXT")] = [other_rsa_record()]
    del zone[(f"s2._domainkey.{DOMAIN}", "TXT")]
    del zone[(f"_dmarc.{DOMAIN}", "TXT")]
    return zone


def mail_domain(**changes: Any) -> MailDomain:
    values: dict[str, Any] = {
        "domain": DOMAIN,
        "hostname": HOST,
        "dkim": (
            DKIMPublication("s1", rsa_record()),
            DKIMPublication("s2", ed25519_record(), signing=False),
        ),
    }
    values.update(changes)
    return MailDomain(**values)


def by_what(findings: list[Finding]) -> dict[str, Finding]:
    return {f.what: f for f in findings}


class RecordTextTests(SynchronousTestCase):
    """The records txmail suggests, as zone-file text."""

    def test_long_txt_split_into_character_strings(self) -> None:
        """A TXT value over 255 octets is written as several quoted strings that join back to it."""
        record = rsa_record()
        self.assertGreater(len(record), 255)
        chunks = txt_character_strings(record)
        self.assertEqual([len(c) for c in chunks], [255, len(record) - 255])
        line = zone_line(f"s1._domainkey.{DOMAIN}", "TXT", record)
        self.assertTrue(line.startswith(f's1._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=rsa; p='))
        self.assertEqual(line.count('"'), 4)
        self.assertEqual(txt_value(line), record)

    def test_txt_quoting(self) -> None:
        """Quotes, backslashes and control characters are escaped as RFC 1035 section 5.1 says."""
        self.assertEqual(zone_line("a.test", "TXT", 'x"y\\z\x01'), r'a.test. IN TXT "x\"y\\z\001"')
        self.assertEqual(zone_line("a.test", "TXT", ""), 'a.test. IN TXT ""')

    def test_spf_choice(self) -> None:
        """SPF uses mx when the hostname is under the domain, and names the host when it is not."""
        self.assertEqual(spf_value(DOMAIN, HOST), "v=spf1 mx -all")
        self.assertEqual(spf_value(DOMAIN, DOMAIN), "v=spf1 mx -all")
        self.assertEqual(spf_value("other.test", HOST), f"v=spf1 a:{HOST} -all")
        self.assertEqual(spf_value("ample.test", "mail.example.test"), "v=spf1 a:mail.example.test -all")

    def test_records_for_two_keys(self) -> None:
        """Every record comes with a comment; the key not signing yet is marked so."""
        entries = records_for(mail_domain())
        self.assertEqual(
            [(e.kind, e.rdtype, e.placeholder) for e in entries],
            [
                ("mx", "MX", False),
                ("address", "A", True),
                ("address", "AAAA", True),
                ("spf", "TXT", False),
                ("dkim", "TXT", False),
                ("dkim", "TXT", False),
                ("dmarc", "TXT", False),
                ("ptr", "PTR", True),
            ],
        )
        text = zone_text(mail_domain())
        self.assertIn(f"{DOMAIN}. IN MX 10 {HOST}.\n", text)
        self.assertIn("must point at this server's public address", text)
        self.assertIn(f";   {HOST}. IN A <this server's public IPv4 address>\n", text)
        self.assertIn(f'{DOMAIN}. IN TXT "v=spf1 mx -all"\n', text)
        self.assertIn(f'_dmarc.{DOMAIN}. IN TXT "{dmarc_value(DOMAIN)}"\n', text)
        self.assertIn("key s1 (rsa), signs outgoing mail", text)
        self.assertIn("key s2 (ed25519), published, not signing yet", text)
        self.assertIn(f";   <reversed address>.in-addr.arpa. IN PTR {HOST}.\n", text)
        for line in text.splitlines():
            self.assertTrue(line == "" or line.startswith(";") or " IN " in line, line)

    def test_no_keys_and_smarthost(self) -> None:
        """Without keys the output says how to make one; with a smarthost, SPF says to add it."""
        text = zone_text(mail_domain(dkim=(), smarthost="smtp.provider.test:587"))
        self.assertIn(f"txmail dkim keygen {DOMAIN} --selector SELECTOR", text)
        self.assertIn("smarthost smtp.provider.test:587", text)
        self.assertNotIn("_domainkey", text.replace("._domainkey.", ""))

    def test_dmarc_suggestion(self) -> None:
        """The suggested DMARC record quarantines, reports to postmaster and aligns relaxed."""
        self.assertEqual(
            dmarc_value(DOMAIN),
            "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.test; adkim=r; aspf=r",
        )

    def test_domain_names(self) -> None:
        """Host names are LDH labels; addresses, spaces and empty labels are not names."""
        for good in ("example.com", "a-b.example", "localhost", "xn--bcher-kva.example"):
            self.assertTrue(is_domain_name(good), good)
        for bad in ("", "exa mple.com", "a..b", "-a.com", "a-.com", "1.2.3.4", "a_b.com", "x" * 64 + ".com"):
            self.assertFalse(is_domain_name(bad), bad)

    def test_sans_io(self) -> None:
        """txmail.dnsrecords imports nothing from Twisted."""
        with open(dnsrecords.__file__, encoding="utf-8") as f:
            self.assertEqual(twisted_imports(f.read()), [])


class CheckLogicTests(SynchronousTestCase):
    """check_domain against a dictionary of answers (no network)."""

    def check(self, zone: dict[tuple[str, str], Any], **changes: Any) -> dict[str, Finding]:
        return by_what(run_sync(check_domain(mail_domain(**changes)), DictAnswers(zone)))

    def test_good_zone(self) -> None:
        """Every record of a correct zone is OK, in the order they are printed."""
        findings = run_sync(check_domain(mail_domain()), DictAnswers(good_zone()))
        self.assertEqual(
            [(f.what, f.status) for f in findings],
            [
                ("MX", CheckStatus.OK),
                ("A/AAAA", CheckStatus.OK),
                ("SPF", CheckStatus.OK),
                ("DKIM s1", CheckStatus.OK),
                ("DKIM s2", CheckStatus.OK),
                ("DMARC", CheckStatus.OK),
                ("PTR 127.0.0.1", CheckStatus.OK),
            ],
        )
        self.assertEqual(by_what(findings)["DKIM s2"].note, "published, not signing yet")
        self.assertEqual(summary(findings), "all 7 records OK")

    def test_mx_problems(self) -> None:
        """No MX is missing; an MX elsewhere or a null MX is wrong."""
        zone = good_zone()
        del zone[(DOMAIN, "MX")]
        self.assertEqual(self.check(zone)["MX"].status, CheckStatus.MISSING)
        zone[(DOMAIN, "MX")] = [(10, "mx.elsewhere.test")]
        found = self.check(zone)["MX"]
        self.assertEqual((found.status, found.found), (CheckStatus.WRONG, ("10 mx.elsewhere.test",)))
        zone[(DOMAIN, "MX")] = [(0, "")]
        self.assertIn("null MX", self.check(zone)["MX"].detail)

    def test_hostname_problems(self) -> None:
        """A hostname without addresses is missing; one that is a CNAME is wrong."""
        zone = good_zone()
        del zone[(HOST, "A")]
        findings = self.check(zone)
        self.assertEqual(findings["A/AAAA"].status, CheckStatus.MISSING)
        self.assertNotIn("PTR 127.0.0.1", findings)
        self.assertIn("has no address", findings["SPF"].note)
        zone[(HOST, "CNAME")] = ["host.provider.test"]
        zone[("host.provider.test", "A")] = ["127.0.0.1"]
        self.assertIn("RFC 2181", self.check(zone)["A/AAAA"].detail)

    def test_spf_problems(self) -> None:
        """+all and ?all, a syntax error, and a record this server fails are wrong."""
        zone = good_zone()
        for record, expected in (
            ("v=spf1 +all", "every host"),
            ("v=spf1 mx ?all", "neutral"),
            ("v=spf1 mx -al", "syntax error"),
            ("v=spf1 ip4:192.0.2.0/24 -all", "127.0.0.1 gets spf=fail"),
        ):
            zone[(DOMAIN, "TXT")] = [record]
            found = self.check(zone)["SPF"]
            self.assertEqual(found.status, CheckStatus.WRONG, record)
            self.assertIn(expected, found.detail)
            self.assertIn(f'{DOMAIN}. IN TXT "v=spf1 mx -all"', found.expected)
        zone[(DOMAIN, "TXT")] = ["v=spf1 mx ~all"]
        self.assertEqual(self.check(zone)["SPF"].status, CheckStatus.OK)

    def test_dkim_revoked_and_duplicated(self) -> None:
        """An empty p= and two records at the selector are wrong; a TXT that is no key is missing."""
        zone = good_zone()
        zone[(f"s1._domainkey.{DOMAIN}", "TXT")] = ["v=DKIM1; k=rsa; p="]
        self.assertIn("revoked", self.check(zone)["DKIM s1"].detail)
        zone[(f"s1._domainkey.{DOMAIN}", "TXT")] = [rsa_record(), other_rsa_record()]
        self.assertIn("2 TXT records", self.check(zone)["DKIM s1"].detail)
        zone[(f"s1._domainkey.{DOMAIN}", "TXT")] = ["hello"]
        self.assertEqual(self.check(zone)["DKIM s1"].status, CheckStatus.MISSING)

    def test_dkim_folded_p(self) -> None:
        """Whitespace inside a published p= (folding) does not make it differ."""
        zone = good_zone()
        folded = ed25519_record().replace("p=", "p= ")[:-10] + " " + ed25519_record()[-10:]
        zone[(f"s2._domainkey.{DOMAIN}", "TXT")] = [folded]
        self.assertEqual(self.check(zone)["DKIM s2"].status, CheckStatus.OK)

    def test_unreadable_key_not_checked(self) -> None:
        """A key whose file could not be read is reported as not checked."""
        found = self.check(good_zone(), dkim=(DKIMPublication("s1", None, error="no such file"),))
        self.assertEqual(found["DKIM s1"].status, CheckStatus.UNCHECKED)

    def test_dmarc_notes(self) -> None:
        """p=none is OK but noted as monitoring only; a record without p= is wrong."""
        zone = good_zone()
        zone[(f"_dmarc.{DOMAIN}", "TXT")] = ["v=DMARC1; p=none; rua=mailto:postmaster@example.test"]
        found = self.check(zone)["DMARC"]
        self.assertEqual(found.status, CheckStatus.OK)
        self.assertIn("monitoring only", found.note)
        zone[(f"_dmarc.{DOMAIN}", "TXT")] = ["v=DMARC1; rua=mailto:postmaster@example.test"]
        self.assertEqual(self.check(zone)["DMARC"].status, CheckStatus.WRONG)
        zone[(f"_dmarc.{DOMAIN}", "TXT")] = ["v=DMARC1; sp=none"]
        self.assertIn("does not parse", self.check(zone)["DMARC"].detail)

    def test_dmarc_inherited(self) -> None:
        """A subdomain without its own DMARC record uses its organizational domain's."""
        zone = good_zone()
        zone[("sub.example.test", "MX")] = [(10, HOST)]
        found = self.check(zone, domain="sub.example.test", dkim=())["DMARC"]
        self.assertEqual(found.status, CheckStatus.OK)
        self.assertIn("inherited from _dmarc.example.test", found.note)

    def test_ptr_problems(self) -> None:
        """No PTR is missing; a PTR naming another host is wrong."""
        zone = good_zone()
        del zone[("1.0.0.127.in-addr.arpa", "PTR")]
        self.assertEqual(self.check(zone)["PTR 127.0.0.1"].status, CheckStatus.MISSING)
        zone[("1.0.0.127.in-addr.arpa", "PTR")] = ["localhost"]
        self.assertIn("names localhost", self.check(zone)["PTR 127.0.0.1"].detail)

    def test_dns_failure(self) -> None:
        """A failed lookup is 'could not check', never OK or MISSING."""
        zone = good_zone()
        zone[(DOMAIN, "TXT")] = DNSStatus.ERROR
        zone[(f"_dmarc.{DOMAIN}", "TXT")] = DNSStatus.ERROR
        findings = self.check(zone)
        self.assertEqual(findings["SPF"].status, CheckStatus.UNCHECKED)
        self.assertEqual(findings["DMARC"].status, CheckStatus.UNCHECKED)
        self.assertEqual(findings["MX"].status, CheckStatus.OK)

    def test_format(self) -> None:
        """A wrong record prints what was found and the line to publish."""
        finding = Finding("SPF", DOMAIN, CheckStatus.WRONG, "bad", ('"v=spf1 +all"',), "want-this", "a note")
        self.assertEqual(
            format_finding(finding),
            [
                "WRONG           SPF example.test: bad",
                '                found: "v=spf1 +all"',
                "                note:  a note",
                "                want:  want-this",
            ],
        )
        unchecked = Finding("MX", DOMAIN, CheckStatus.UNCHECKED, "DNS failure")
        self.assertEqual(format_finding(unchecked), ["COULD NOT CHECK MX example.test: DNS failure"])
        self.assertEqual(summary([finding, unchecked]), "1 wrong, 1 could not check")


class CommandTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = os.path.abspath(self.mktemp())
        os.makedirs(self.tmp)
        self.data_dir = os.path.join(self.tmp, "data")
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)

    def txmail(self, *argv: str) -> int:
        self.stdout.seek(0)
        self.stdout.truncate()
        self.stderr.seek(0)
        self.stderr.truncate()
        return cli.main(list(argv))

    def keygen(self, *argv: str) -> int:
        return self.txmail("dkim", "keygen", "--data-dir", self.data_dir, *argv)

    def printed_record(self) -> str:
        """The TXT value of the record line keygen printed."""
        (line,) = [line for line in self.stdout.getvalue().splitlines() if " IN TXT " in line]
        return txt_value(line)

    def error(self) -> str:
        lines = self.stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("txmail: error: "), lines[0])
        return lines[0]


class KeygenTests(CommandTestCase):
    """txmail dkim keygen."""

    def test_ed25519(self) -> None:
        """An Ed25519 key is written 0600 in a 0700 dkim directory, loads, and its record is printed."""
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s2", "--algorithm", "ed25519"), 0)
        path = os.path.join(self.data_dir, "dkim", f"{DOMAIN}.s2.key")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode), 0o700)
        key = load_signing_key(path, DOMAIN, "s2")
        self.assertEqual(key.algorithm, "ed25519-sha256")
        self.assertEqual(self.printed_record(), txt_record_for(key))
        out = self.stdout.getvalue()
        self.assertIn(f's2._domainkey.{DOMAIN}. IN TXT "v=DKIM1; k=ed25519; p=', out)
        self.assertIn(
            f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "s2"\nkey = "{path}"\nsign = true', out
        )
        self.assertIn("sign with an RSA key too", out)

    def test_rsa_default_2048(self) -> None:
        """An RSA key is 2048 bits by default and its record is split into 255-octet strings."""
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s1", "--algorithm", "rsa"), 0)
        path = os.path.join(self.data_dir, "dkim", f"{DOMAIN}.s1.key")
        key = load_signing_key(path, DOMAIN, "s1")
        self.assertEqual((key.algorithm, key.bits), ("rsa-sha256", 2048))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        (line,) = [line for line in self.stdout.getvalue().splitlines() if " IN TXT " in line]
        self.assertEqual(line.count('"'), 4)
        self.assertEqual(self.printed_record(), txt_record_for(key))

    def test_out_and_bits(self) -> None:
        """--out chooses the file and --bits the RSA size."""
        path = os.path.join(self.tmp, "k.pem")
        self.assertEqual(
            self.keygen(DOMAIN, "--selector", "a", "--algorithm", "rsa", "--bits", "1024", "--out", path), 0
        )
        self.assertEqual(load_signing_key(path, DOMAIN, "a").bits, 1024)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "dkim")))

    def test_refuses_short_and_long_rsa(self) -> None:
        """RSA keys under 1024 bits are refused citing RFC 8301, as are keys over 4096 bits."""
        self.assertEqual(self.keygen(DOMAIN, "--selector", "a", "--algorithm", "rsa", "--bits", "512"), 1)
        self.assertIn("at least 1024 bits: RFC 8301", self.error())
        self.assertEqual(self.keygen(DOMAIN, "--selector", "a", "--algorithm", "rsa", "--bits", "8192"), 1)
        self.assertIn("RFC 8301", self.error())
        self.assertEqual(
            self.keygen(DOMAIN, "--selector", "a", "--algorithm", "ed25519", "--bits", "2048"), 1
        )
        self.assertIn("--bits is for RSA keys", self.error())
        self.assertFalse(os.path.exists(os.path.join(self.data_dir, "dkim", f"{DOMAIN}.a.key")))

    def test_refuses_existing_file(self) -> None:
        """An existing key file is kept unless --force, which replaces it with a 0600 file."""
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519"), 0)
        path = os.path.join(self.data_dir, "dkim", f"{DOMAIN}.s.key")
        with open(path, "rb") as f:
            first = f.read()
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519"), 1)
        self.assertIn(f"{path} exists", self.error())
        self.assertIn("--force", self.error())
        with open(path, "rb") as f:
            self.assertEqual(f.read(), first)
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519", "--force"), 0)
        with open(path, "rb") as f:
            self.assertNotEqual(f.read(), first)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(os.listdir(os.path.dirname(path)), [f"{DOMAIN}.s.key"])

    def test_bad_domain_and_selector(self) -> None:
        """A domain or selector that is not a DNS name is a one-line error."""
        for domain in ("exa mple.com", "a..b", "1.2.3.4", "x-.test", "a_b.test"):
            self.assertEqual(self.keygen(domain, "--selector", "s", "--algorithm", "ed25519"), 1)
            self.assertIn("is not a domain name", self.error())
        for selector in ("s/1", "-s", "s 1", "."):
            self.assertEqual(self.keygen(DOMAIN, f"--selector={selector}", "--algorithm", "ed25519"), 1)
            self.assertIn("is not a DNS label", self.error())
        self.assertFalse(os.path.exists(self.data_dir))

    def test_unicode_domain(self) -> None:
        """A Unicode domain is written and published as its A-label form."""
        self.assertEqual(self.keygen("Bücher.Example", "--selector", "s", "--algorithm", "ed25519"), 0)
        self.assertTrue(os.path.exists(os.path.join(self.data_dir, "dkim", "xn--bcher-kva.example.s.key")))
        self.assertIn("s._domainkey.xn--bcher-kva.example. IN TXT", self.stdout.getvalue())

    def test_unwritable_places(self) -> None:
        """A data directory that cannot hold dkim/, or --out in no directory, is a one-line error."""
        with open(self.data_dir, "w") as f:
            f.write("not a directory")
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519"), 1)
        self.assertIn(f"cannot create {os.path.join(self.data_dir, 'dkim')}", self.error())
        out = os.path.join(self.tmp, "missing", "k.pem")
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519", "--out", out), 1)
        self.assertIn("is not a directory", self.error())

    def test_unwritable_directory(self) -> None:
        """A directory without write permission is refused before a key is made."""
        if os.getuid() == 0:
            raise SkipTest("root can write anywhere")
        locked = os.path.join(self.tmp, "locked")
        os.mkdir(locked, 0o500)
        self.addCleanup(os.chmod, locked, 0o700)
        out = os.path.join(locked, "k.pem")
        self.assertEqual(self.keygen(DOMAIN, "--selector", "s", "--algorithm", "ed25519", "--out", out), 1)
        self.assertIn("not writable", self.error())

    def test_help(self) -> None:
        """txmail dkim keygen --help documents every option, and txmail --help lists the commands."""
        self.assertEqual(self.txmail("dkim", "keygen", "--help"), 0)
        text = self.stdout.getvalue()
        for word in (
            "--selector",
            "--algorithm",
            "{ed25519,rsa}",
            "--bits",
            "--out",
            "--force",
            "0600",
            "TXT",
        ):
            self.assertIn(word, text)
        self.assertEqual(self.txmail("--help"), 0)
        self.assertIn("dkim", self.stdout.getvalue())
        self.assertIn("dns-records", self.stdout.getvalue())
        self.assertEqual(self.txmail("dns-records", "--help"), 0)
        self.assertIn("--check", self.stdout.getvalue())
        self.assertIn("--resolver", self.stdout.getvalue())


class DNSRecordsCommandTests(CommandTestCase):
    """txmail dns-records without --check."""

    def write_config(self, extra: str = "", domains: str = '["example.test"]') -> str:
        """A config with two keys for example.test: s1 (RSA, signing) and s2 (Ed25519, not yet)."""
        keys = os.path.join(self.tmp, "keys")
        os.makedirs(keys, exist_ok=True)
        for selector, algorithm in (("s1", "rsa-sha256"), ("s2", "ed25519-sha256")):
            path = os.path.join(keys, f"{selector}.key")
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(_key(algorithm)[0])
        path = os.path.join(self.tmp, "txmail.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f'[server]\nhostname = "{HOST}"\ndomains = {domains}\ndata_dir = "{self.data_dir}"\n'
                f'[[dkim.keys]]\ndomain = "example.test"\nselector = "s1"\nkey = "{keys}/s1.key"\n'
                f'[[dkim.keys]]\ndomain = "example.test"\nselector = "s2"\nkey = "{keys}/s2.key"\n'
                "sign = false\n"
                f'[[dkim.keys]]\ndomain = "other.test"\nselector = "s9"\nkey = "{keys}/none.key"\n' + extra
            )
        return path

    def test_mta_sts_records(self) -> None:
        """With [mta_sts], the _mta-sts TXT (its id from the served policy), the mta-sts host and _smtp._tls."""
        from txmail.delivery.mtasts import parse_txt, policy_id, policy_text

        config = self.write_config('[mta_sts]\nmode = "enforce"\nmx = ["mx.example.test"]\nmax_age = 86400\n')
        self.assertEqual(self.txmail("dns-records", "example.test.", "--config", config), 0)
        out = self.stdout.getvalue()
        [txt] = [line for line in out.splitlines() if line.startswith(f"_mta-sts.{DOMAIN}. ")]
        value = txt.split(" TXT ", 1)[1].strip('"')
        self.assertEqual(parse_txt([value]), policy_id(policy_text("enforce", ["mx.example.test"], 86400)))
        self.assertIn(f"mta-sts.{DOMAIN}. IN CNAME {HOST}.", out)
        self.assertIn(f'_smtp._tls.{DOMAIN}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{DOMAIN}"', out)

    def test_two_keys(self) -> None:
        """The output is zone-file lines for MX, SPF, both keys (from their files) and DMARC, with notes."""
        config = self.write_config()
        self.assertEqual(self.txmail("dns-records", "example.test.", "--config", config), 0)
        self.assertEqual(self.stderr.getvalue(), "")
        out = self.stdout.getvalue()
        # No listener has TLS here: the client SRV records all say "not offered".
        clients = ClientOffer(HOST)
        self.assertEqual(out, zone_text(mail_domain(clients=clients)))
        records = {
            tuple(line.split(" ", 3)[:3:2]): line
            for line in out.splitlines()
            if line and not line.startswith(";")
        }
        self.assertEqual(
            sorted(records),
            sorted(
                [
                    (f"{DOMAIN}.", "MX"),
                    (f"{DOMAIN}.", "TXT"),
                    (f"s1._domainkey.{DOMAIN}.", "TXT"),
                    (f"s2._domainkey.{DOMAIN}.", "TXT"),
                    (f"_dmarc.{DOMAIN}.", "TXT"),
                ]
                + [(f"_{name}._tcp.{DOMAIN}.", "SRV") for name in SRV_NAMES]
            ),
        )
        for name in SRV_NAMES:
            self.assertEqual(
                records[(f"_{name}._tcp.{DOMAIN}.", "SRV")], f"_{name}._tcp.{DOMAIN}. IN SRV 0 0 0 ."
            )
        self.assertEqual(records[(f"{DOMAIN}.", "MX")], f"{DOMAIN}. IN MX 10 {HOST}.")
        self.assertEqual(txt_value(records[(f"s1._domainkey.{DOMAIN}.", "TXT")]), rsa_record())
        self.assertEqual(txt_value(records[(f"s2._domainkey.{DOMAIN}.", "TXT")]), ed25519_record())
        self.assertIn("published, not signing yet", out)
        self.assertNotIn("other.test", out)
        self.assertIn("iprev", out)

    def test_client_records(self) -> None:
        """With TLS listeners the SRV records name their ports; autoconfiguration's names are printed."""
        from tests._certs import make_certificate

        _, cert, key = make_certificate(os.path.join(self.tmp, "tls"), HOST)
        config = self.write_config(
            f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
            '[smtp]\nsubmission = ["tcp:587", "ssl:465"]\n[imap]\nlisten = ["ssl:993"]\n'
            '[web]\nlisten = ["ssl:443"]\n[autoconfig]\nhostname = "imap.example.test"\n'
        )
        self.assertEqual(self.txmail("dns-records", DOMAIN, "--config", config), 0)
        lines = set(self.stdout.getvalue().splitlines())
        for line in (
            f"_submissions._tcp.{DOMAIN}. IN SRV 0 1 465 imap.example.test.",
            f"_submission._tcp.{DOMAIN}. IN SRV 10 1 587 imap.example.test.",
            f"_imaps._tcp.{DOMAIN}. IN SRV 0 1 993 imap.example.test.",
            f"_imap._tcp.{DOMAIN}. IN SRV 0 0 0 .",
            f"_pop3s._tcp.{DOMAIN}. IN SRV 0 0 0 .",
            f"_pop3._tcp.{DOMAIN}. IN SRV 0 0 0 .",
            f"autoconfig.{DOMAIN}. IN CNAME imap.example.test.",
            f"autodiscover.{DOMAIN}. IN CNAME imap.example.test.",
            f"_autodiscover._tcp.{DOMAIN}. IN SRV 0 0 443 imap.example.test.",
        ):
            self.assertIn(line, lines)

    def test_not_local_domain(self) -> None:
        """A domain the server does not receive for is printed anyway, with a note on stderr."""
        config = self.write_config(domains='["example.org"]')
        self.assertEqual(self.txmail("dns-records", DOMAIN, "--config", config), 0)
        self.assertIn(
            "example.test is not one of the configured domains (example.org)", self.stderr.getvalue()
        )
        self.assertIn(f"{DOMAIN}. IN MX 10 {HOST}.", self.stdout.getvalue())

    def test_hostname_elsewhere(self) -> None:
        """For a domain whose server is in another zone, SPF names the host."""
        config = self.write_config()
        self.assertEqual(self.txmail("dns-records", "second.test", "--config", config), 0)
        self.assertIn(f'second.test. IN TXT "v=spf1 a:{HOST} -all"', self.stdout.getvalue())
        self.assertIn("txmail dkim keygen second.test", self.stdout.getvalue())

    def test_unreadable_key(self) -> None:
        """A key file that cannot be read is an error (exit 1) but the other records are printed."""
        config = self.write_config()
        self.assertEqual(self.txmail("dns-records", "other.test", "--config", config), 1)
        note, error = self.stderr.getvalue().splitlines()
        self.assertIn("other.test is not one of the configured domains", note)
        self.assertIn("txmail: error: DKIM key s9 of other.test: cannot read", error)
        self.assertIn("No such file or directory", error)
        self.assertIn("other.test. IN MX", self.stdout.getvalue())

    def test_bad_arguments(self) -> None:
        """A bad domain or --resolver is a one-line error."""
        config = self.write_config()
        self.assertEqual(self.txmail("dns-records", "no domain", "--config", config), 1)
        self.assertIn("is not a domain name", self.error())
        self.assertEqual(
            self.txmail("dns-records", DOMAIN, "--check", "--resolver", "x:y", "--config", config), 1
        )
        self.assertIn("--resolver", self.error())

    def test_check_uses_resolvers(self) -> None:
        """--check asks the configured resolvers, --resolver overrides them, and the status is the check's."""
        config = self.write_config(extra='[outbound]\nresolvers = ["192.0.2.53:5353"]\n')
        used: list[Any] = []

        class FakeResolver(StaticResolver):
            def __init__(self, nameservers: Any, **options: Any) -> None:
                super().__init__(good_zone())
                used.append(nameservers)

        import txmail.resolver

        self.patch(txmail.resolver, "Resolver", FakeResolver)
        self.patch(cli, "_react", lambda main: self.successResultOf(main(None)))
        self.assertEqual(self.txmail("dns-records", DOMAIN, "--check", "--config", config), 0)
        self.assertIn("all 7 records OK", self.stdout.getvalue())
        argv = (
            "dns-records",
            DOMAIN,
            "--check",
            "--config",
            config,
            "--resolver",
            "127.0.0.1:53",
            "--resolver",
            "[::1]:5300",
        )
        self.assertEqual(self.txmail(*argv), 0)
        self.assertEqual(used, [[("192.0.2.53", 5353)], [("127.0.0.1", 53), ("::1", 5300)]])


class CheckOverDNSTests(TestCase):
    """--check through txmail's resolver against the tests' DNS server on loopback."""

    def setUp(self) -> None:
        self.stdout = io.StringIO()
        self.patch(sys, "stdout", self.stdout)

    def resolver(self, zone: dict[tuple[str, str], Any]) -> Resolver:
        host, port = start_dns_server(self, zone)
        return Resolver([(host, port)], timeout=(2,))

    def lines(self) -> dict[str, str]:
        """Each finding's first line, by what it checked."""
        found = {}
        for line in self.stdout.getvalue().splitlines():
            m = re.match(r"(OK|MISSING|WRONG|COULD NOT CHECK) +(\S+(?: s\d| \S+\d)?) ", line)
            if m:
                found[m.group(2)] = line
        return found

    @defer.inlineCallbacks
    def test_correct_zone(self) -> Any:
        """A correct zone is all OK and the status is 0."""
        status = yield cli.check_records(mail_domain(), self.resolver(good_zone()))
        self.assertEqual(status, 0, self.stdout.getvalue())
        lines = self.lines()
        self.assertEqual(
            sorted(lines), sorted(["MX", "A/AAAA", "SPF", "DKIM s1", "DKIM s2", "DMARC", "PTR 127.0.0.1"])
        )
        self.assertTrue(all(line.startswith("OK ") for line in lines.values()), lines)
        self.assertIn("note:  published, not signing yet", self.stdout.getvalue())
        self.assertTrue(self.stdout.getvalue().endswith("all 7 records OK\n"))

    @defer.inlineCallbacks
    def test_broken_zone(self) -> Any:
        """Missing DKIM, a wrong p=, two SPF records and no DMARC are each reported, and the status is 1."""
        status = yield cli.check_records(mail_domain(), self.resolver(broken_zone()))
        self.assertEqual(status, 1)
        lines = self.lines()
        out = self.stdout.getvalue()
        self.assertTrue(lines["MX"].startswith("OK "))
        self.assertTrue(lines["SPF"].startswith("WRONG "))
        self.assertIn("2 v=spf1 records", lines["SPF"])
        self.assertIn('found: "v=spf1 a -all"', out)
        self.assertTrue(lines["DKIM s1"].startswith("WRONG "))
        self.assertIn("a different public key", lines["DKIM s1"])
        self.assertTrue(lines["DKIM s2"].startswith("MISSING "))
        self.assertIn(f"want:  {zone_line(f's2._domainkey.{DOMAIN}', 'TXT', ed25519_record())}", out)
        self.assertTrue(lines["DMARC"].startswith("MISSING "))
        self.assertIn(f'want:  _dmarc.{DOMAIN}. IN TXT "v=DMARC1; p=quarantine;', out)
        self.assertTrue(out.endswith("3 OK, 2 missing, 2 wrong\n"), out)

    @defer.inlineCallbacks
    def test_servfail(self) -> Any:
        """A SERVFAIL is reported as could not check and the status is 1."""
        zone = good_zone()
        zone[(f"_dmarc.{DOMAIN}", "TXT")] = SERVFAIL
        status = yield cli.check_records(mail_domain(), self.resolver(zone))
        self.assertEqual(status, 1)
        self.assertTrue(self.lines()["DMARC"].startswith("COULD NOT CHECK "))
        self.assertTrue(self.stdout.getvalue().endswith("6 OK, 1 could not check\n"))

    @defer.inlineCallbacks
    def test_real_command(self) -> Any:
        """The installed command checks a zone over UDP in its own process and exits 1 on a broken zone."""
        host, port = start_dns_server(self, broken_zone())
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        keys = []
        for selector, algorithm in (("s1", "rsa-sha256"), ("s2", "ed25519-sha256")):
            path = os.path.join(tmp, f"{selector}.key")
            with open(path, "wb") as f:
                f.write(_key(algorithm)[0])
            keys.append(f'[[dkim.keys]]\ndomain = "{DOMAIN}"\nselector = "{selector}"\nkey = "{path}"\n')
        config = os.path.join(tmp, "txmail.toml")
        with open(config, "w", encoding="utf-8") as f:
            f.write(
                f'[server]\nhostname = "{HOST}"\ndomains = ["{DOMAIN}"]\ndata_dir = "{tmp}"\n' + "".join(keys)
            )
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            [
                "-m",
                "txmail.cli",
                "dns-records",
                DOMAIN,
                "--check",
                "--config",
                config,
                "--resolver",
                f"{host}:{port}",
            ],
            env=os.environ,
        )
        self.assertEqual((code, err), (1, b""), out)
        text = out.decode()
        self.assertIn("Checking the DNS records of example.test for mail.example.test:", text)
        self.assertRegex(text, r"WRONG +SPF example.test: 2 v=spf1 records")
        self.assertRegex(text, r"MISSING +DKIM s2 s2._domainkey.example.test: no TXT record")
        self.assertTrue(text.endswith("3 OK, 2 missing, 2 wrong\n"), text)


class MissingExtraTests(SynchronousTestCase):
    """Without the policy extra the DKIM commands fail with one clear line."""

    def test_keygen_without_dkimpy(self) -> None:
        """txmail dkim keygen without dkimpy exits 1 naming txmail[policy], without a traceback."""
        import io
        import sys

        from txmail import cli

        saved = {name: sys.modules.get(name) for name in ("txmail.policy.dkim", "dkim")}
        sys.modules["txmail.policy.dkim"] = None  # type: ignore[assignment]  # import fails
        sys.modules["dkim"] = None  # type: ignore[assignment]
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        try:
            status = cli.main(
                [
                    "dkim",
                    "keygen",
                    "example.org",
                    "--selector",
                    "s",
                    "--algorithm",
                    "ed25519",
                    "--data-dir",
                    self.mktemp(),
                ]
            )
        finally:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
        self.assertEqual(status, 1)
        self.assertTrue(stderr.getvalue().startswith("txmail: error: "), stderr.getvalue())
        self.assertNotIn("Traceback", stderr.getvalue())
