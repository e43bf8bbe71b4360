"""
``docs/examples/policy_hook.py`` run for real on loopback: its policy
refuses a blocked sender domain at MAIL FROM, tarpits a client without
reverse DNS, adds a header field and files ``[SPAM]`` mail into Junk,
among the server's own policies (smtplib in, imaplib out, DNS from a
:class:`~txmail.resolver.StaticResolver`).

The module also checks that ``docs/reference/policy-config.rst`` documents
every key of the tables :mod:`txmail.policy.config` reads, with its
default (``tests/test_docs_reference.py`` does the same for the other
tables, from ``txmail.config._KEYS``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import imaplib
import importlib.util
import os
import re
import smtplib
import sys
import time
from types import ModuleType
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.test_docs_reference import default_spellings
from txmail.errors import ConfigError
from txmail.model import INBOX
from txmail.policy import config as policy_config
from txmail.policy.authentication import AuthenticationResultsHeader, InboundAuthentication
from txmail.policy.limits import RateLimits
from txmail.resolver import StaticResolver

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(_ROOT, "docs", "examples", "policy_hook.py")
REFERENCE = os.path.join(_ROOT, "docs", "reference", "policy-config.rst")
PASSWORD = "correct horse"
ALICE = "alice@example.test"
TARPIT = 0.3


def load_example() -> ModuleType:
    """Import the example by path, as its own module."""
    spec = importlib.util.spec_from_file_location("txmail_example_policy_hook", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def message(subject: str, body: bytes = b"Hello.\r\n") -> bytes:
    return (
        b"From: Carol <carol@remote.example>\r\n"
        b"To: Alice <alice@example.test>\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"\r\n" + body
    )


def header_section(data: bytes) -> bytes:
    """The header section of *data*, unfolded."""
    return data.split(b"\r\n\r\n", 1)[0].replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ")


class PolicyExampleTests(TestCase):
    """The example server, started on port 0 with the trial reactor."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.example = load_example()
        # 127.0.0.1 has forward-confirmed reverse DNS unless a test removes its PTR.
        self.dns = StaticResolver(
            {
                ("1.0.0.127.in-addr.arpa", "PTR"): ["client.remote.example"],
                ("client.remote.example", "A"): ["127.0.0.1"],
            }
        )
        self.server = yield self.start(trusted_networks=())
        (self.rules,) = [p for p in self.server.policies if isinstance(p, self.example.HouseRules)]

    @defer.inlineCallbacks
    def start(self, **options: Any) -> Any:
        server = self.example.make_service(
            0,
            0,
            users={ALICE: PASSWORD},
            blocked_domains=["spammer.example"],
            tarpit=TARPIT,
            data_dir=os.path.abspath(self.mktemp()),
            dns=self.dns,
            reactor=reactor,
            **options,
        )
        server.startService()
        self.addCleanup(server.stopService)
        yield server.when_listening()
        return server

    def send(self, sender: str, body: bytes, server: Any = None) -> defer.Deferred[Any]:
        address = (server or self.server).address("mta")

        def run() -> Any:
            with smtplib.SMTP(*address, local_hostname="client.remote.example", timeout=20) as s:
                return s.sendmail(sender, [ALICE], body)

        return deferToThread(run)

    def fetch_all(self, folder: str = INBOX, server: Any = None) -> defer.Deferred[list[bytes]]:
        address = (server or self.server).address("imap")

        def run() -> list[bytes]:
            client = imaplib.IMAP4(*address, timeout=20)
            try:
                client.login(ALICE, PASSWORD)
                typ, data = client.select(folder)
                if typ != "OK":  # the folder does not exist
                    return []
                typ, data = client.fetch("1:*", "(BODY.PEEK[])") if int(data[0]) else ("OK", [])
                assert typ == "OK", data
                return [item[1] for item in data if isinstance(item, tuple)]
            finally:
                with contextlib.suppress(Exception):
                    client.logout()

        return deferToThread(run)

    def test_policy_order(self) -> None:
        """The example's policy is asked after the server's own checks and before Authentication-Results is written."""
        kinds = [type(p) for p in self.server.policies]
        self.assertEqual(kinds[0], RateLimits)
        self.assertEqual(kinds[-1], AuthenticationResultsHeader)
        self.assertEqual(kinds[-2], self.example.HouseRules)
        self.assertLess(kinds.index(InboundAuthentication), kinds.index(self.example.HouseRules))

    @defer.inlineCallbacks
    def test_blocked_sender_domain_refused_at_mail(self) -> Any:
        """A sender in a blocked domain gets the policy's 550 5.7.1 to MAIL FROM, and nothing is stored."""
        with self.assertRaises(smtplib.SMTPSenderRefused) as caught:
            yield self.send("bulk@Spammer.Example", message("offer"))
        self.assertEqual(caught.exception.smtp_code, 550)
        self.assertEqual(caught.exception.smtp_error, b"5.7.1 Mail from this domain is not accepted here")
        self.assertEqual(self.rules.refused, ["bulk@Spammer.Example"])
        messages = yield self.fetch_all()
        self.assertEqual(messages, [])

    @defer.inlineCallbacks
    def test_header_added_beside_the_server_results(self) -> Any:
        """Accepted mail reaches the INBOX with the policy's X-House-Rules field and the server's Authentication-Results."""
        refused = yield self.send("carol@remote.example", message("hello"))
        self.assertEqual(refused, {})
        (stored,) = yield self.fetch_all()
        header = header_section(stored)
        self.assertIn(b"\r\nX-House-Rules: client=[127.0.0.1]; iprev=pass; tarpit=no\r\n", header)
        results = re.search(rb"\r\nAuthentication-Results: mx\.example\.test;[^\r]*", header)
        assert results is not None, header
        self.assertIn(b"iprev=pass", results.group())
        self.assertIn(b"spf=none", results.group())
        self.assertEqual(self.rules.tarpitted, [])

    @defer.inlineCallbacks
    def test_spam_subject_filed_into_junk(self) -> Any:
        """A message whose Subject holds [SPAM] is delivered into Junk, not the INBOX."""
        yield self.send("carol@remote.example", message("[SPAM] cheap watches"))
        inbox = yield self.fetch_all()
        self.assertEqual(inbox, [])
        (junk,) = yield self.fetch_all("Junk")
        self.assertIn(b"Subject: [SPAM] cheap watches\r\n", junk)
        self.assertIn(b"X-House-Rules: ", junk)

    @defer.inlineCallbacks
    def test_large_message_filed_by_subject(self) -> Any:
        """A message too large to be kept in memory is read from its file in the thread pool and filed by its Subject too."""
        body = b"x" * 998 + b"\r\n"
        yield self.send("carol@remote.example", message("[spam] big", body * 400))
        (junk,) = yield self.fetch_all("Junk")
        self.assertIn(b"Subject: [spam] big\r\n", junk)
        self.assertTrue(junk.endswith(body * 400))

    @defer.inlineCallbacks
    def test_client_without_reverse_dns_tarpitted(self) -> Any:
        """A client whose address has no PTR record waits at the greeting and at each RCPT, and its mail says so."""
        self.dns.add("1.0.0.127.in-addr.arpa", "PTR", [])  # NODATA: no reverse DNS
        started = time.monotonic()
        refused = yield self.send("carol@remote.example", message("slowly"))
        elapsed = time.monotonic() - started
        self.assertEqual(refused, {})
        self.assertGreaterEqual(elapsed, 2 * TARPIT)  # the greeting, then the one RCPT
        self.assertEqual(self.rules.tarpitted, ["127.0.0.1"])
        (stored,) = yield self.fetch_all()
        self.assertIn(b"X-House-Rules: client=[127.0.0.1]; iprev=permerror; tarpit=yes\r\n", stored)

    @defer.inlineCallbacks
    def test_trusted_client_exempt(self) -> Any:
        """A client in the trusted networks passes untouched: no reverse DNS, tarpit, refusal, header field or results."""
        self.dns.add("1.0.0.127.in-addr.arpa", "PTR", [])
        server = yield self.start(trusted_networks=["127.0.0.0/8"])
        (rules,) = [p for p in server.policies if isinstance(p, self.example.HouseRules)]
        refused = yield self.send("bulk@spammer.example", message("trusted"), server=server)
        self.assertEqual(refused, {})
        self.assertEqual((rules.refused, rules.tarpitted), ([], []))
        (stored,) = yield self.fetch_all(server=server)
        self.assertNotIn(b"X-House-Rules:", header_section(stored))
        self.assertNotIn(b"Authentication-Results:", header_section(stored))


# --- docs/reference/policy-config.rst --------------------------------------------


def policy_sections(text: str) -> dict[str, dict[str, str]]:
    """
    ``{table: {key: row text}}`` from the policy configuration reference: a
    section starts at a title ````[table]```` or ````[[table]]```` followed
    by a line of dashes, a row at ``   * - ``key````.
    """
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    key: str | None = None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        title = re.fullmatch(r"``(\[\[?[a-z0-9_.\"A-Z]+\]\]?)``", line)
        if title and i + 1 < len(lines) and set(lines[i + 1]) == {"-"}:
            current = sections.setdefault(title.group(1), {})
            key = None
            continue
        if current is None:
            continue
        row = re.match(r"   \* - ``([a-z0-9_]+)``\s*$", line)
        if row:
            key = row.group(1)
            current[key] = ""
        elif not line.startswith("     "):
            key = None
        if key is not None:
            current[key] += line + "\n"
    return sections


def _fields(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.init}


#: PolicyConfig fields that are not keys of ``[policy]``.
_NOT_POLICY_KEYS = {"defaults", "domains", "limits", "dkim_sign", "dkim_keys", "srs", "arc_seal"}


def policy_keys() -> dict[str, dict[str, Any]]:
    """``{table title: {key: default}}`` of every key txmail.policy.config reads."""
    policy = {k: v for k, v in _fields(policy_config.PolicyConfig).items() if k not in _NOT_POLICY_KEYS}
    domain = _fields(policy_config.DomainPolicy)
    policy.update(domain)
    return {
        "[policy]": policy,
        "[policy.limits]": _fields(policy_config.Limits),
        '[policy.domains."DOMAIN"]': {k: domain[k] for k in policy_config.DOMAIN_KEYS},
        "[dkim]": {"sign": policy_config.PolicyConfig.dkim_sign},
        "[[dkim.keys]]": _fields(policy_config.DKIMKeyConfig),
        "[srs]": _fields(policy_config.SRSConfig),
        "[arc]": _fields(policy_config.ARCConfig),
    }


def _document(title: str, key: str) -> dict[str, Any]:
    """A one-key configuration of table *title* (the value deliberately of no valid type)."""
    value = object()
    if title == "[[dkim.keys]]":
        return {"dkim": {"keys": [{"domain": "example.com", "selector": "s", "key": "k", key: value}]}}
    if title == '[policy.domains."DOMAIN"]':
        return {"policy": {"domains": {"example.com": {key: value}}}}
    path = title.strip("[]").split(".")
    table: dict[str, Any] = {key: value}
    for name in reversed(path[1:]):
        table = {name: table}
    return {path[0]: table}


class PolicyConfigReferenceTests(SynchronousTestCase):
    """docs/reference/policy-config.rst documents every key of the policy tables."""

    def setUp(self) -> None:
        with open(REFERENCE, encoding="utf-8") as f:
            self.sections = policy_sections(f.read())
        self.keys = policy_keys()

    def test_every_key_documented_with_its_default(self) -> None:
        """Each key of each table has a row in its section, and the row gives the key's default."""
        problems = []
        for title, keys in self.keys.items():
            for key, default in keys.items():
                row = self.sections.get(title, {}).get(key)
                if row is None:
                    problems.append(f"{title} {key}: not documented")
                elif default is not dataclasses.MISSING and not any(
                    spelling in row for spelling in default_spellings(default)
                ):
                    problems.append(f"{title} {key}: default {default!r} not given")
        self.assertEqual(problems, [])

    def test_documented_keys_exist(self) -> None:
        """Every documented key is read by txmail.policy.config (a renamed key leaves no stale row)."""
        self.assertEqual(set(self.sections), set(self.keys))
        stale = []
        for title, rows in self.sections.items():
            for key in rows:
                try:
                    policy_config.parse_policy_config(_document(title, key))
                except ConfigError as e:
                    if str(e).startswith("unknown key"):
                        stale.append(f"{title} {key}")
                else:
                    stale.append(f"{title} {key}: accepted any value")
        self.assertEqual(stale, [])

    def test_parser_sees_real_rows(self) -> None:
        """The row parser finds rows: a known key of a nested table is in its own section only."""
        self.assertIn("tarpit_delay", self.sections["[policy.limits]"])
        self.assertNotIn("tarpit_delay", self.sections["[policy]"])
        self.assertIn("selector", self.sections["[[dkim.keys]]"])
