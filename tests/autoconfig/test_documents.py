"""
The autoconfiguration documents of txmail.autoconfig, without a network:
what the settings offer, each document parsed back (xml.etree, plistlib)
and its fields checked, the Autodiscover request parser against hostile
bodies, the SRV and CNAME records of ``txmail dns-records``, and the
``[autoconfig]`` configuration table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import plistlib
import random
import tempfile
import xml.etree.ElementTree as ET
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests._certs import make_certificate
from tests.test_sansio_imports import twisted_imports
from txmail import autoconfig
from txmail.autoconfig import (
    AUTODISCOVER_REQUEST_SCHEMA,
    AUTODISCOVER_RESPONSE_SCHEMA,
    MAX_AUTODISCOVER_REQUEST,
    OUTLOOK_RESPONSE_SCHEMA,
    BadRequest,
    ClientOffer,
    MailService,
    NothingOffered,
    autodiscover_error,
    autodiscover_response,
    client_offer,
    endpoint_port,
    https_port,
    mobileconfig,
    parse_address,
    parse_autodiscover_request,
    srv_services,
    thunderbird_config,
)
from txmail.config import Settings, load_config
from txmail.dnsrecords import MailDomain, client_records, records_for, zone_text
from txmail.errors import ConfigError

HOST = "mail.example.test"
OUTLOOK = "{" + OUTLOOK_RESPONSE_SCHEMA + "}"
RESPONSE = "{" + AUTODISCOVER_RESPONSE_SCHEMA + "}"


@functools.cache
def certificate() -> tuple[str, str]:
    """A certificate and key for the whole run (the settings check the files exist)."""
    _, cert, key = make_certificate(tempfile.mkdtemp(prefix="txmail-autoconfig-"), HOST)
    return cert, key


def settings(tls: bool = True, **values: Any) -> Settings:
    base: dict[str, Any] = {
        "hostname": HOST,
        "domains": ["example.test"],
        "smtp": ["tcp:25"],
        "submission": ["tcp:587", "ssl:465"],
        "imap": ["tcp:143", "ssl:993"],
        "pop3": ["tcp:110", "ssl:995"],
        "lmtp": ["tcp:24:interface=127.0.0.1"],
    }
    if tls:
        base["tls_cert"], base["tls_key"] = certificate()
    base.update(values)
    return Settings.validated(**base)


#: Listeners without TLS (no ssl: endpoint can be configured without a certificate).
PLAIN: dict[str, Any] = {"submission": ["tcp:587"], "imap": ["tcp:143"], "pop3": ["tcp:110"]}


def full_offer() -> ClientOffer:
    return client_offer(settings())


def request_body(email: str = "alice@example.test", schema: str = OUTLOOK_RESPONSE_SCHEMA) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<Autodiscover xmlns="{AUTODISCOVER_REQUEST_SCHEMA}">\n'
        f"  <Request>\n    <EMailAddress>{email}</EMailAddress>\n"
        f"    <AcceptableResponseSchema>{schema}</AcceptableResponseSchema>\n"
        "  </Request>\n</Autodiscover>\n"
    ).encode()


class OfferTests(SynchronousTestCase):
    """client_offer: what the settings' listeners offer clients."""

    def test_every_client_listener_with_tls(self) -> None:
        """With a certificate every submission, IMAP and POP3 listener is offered, most preferred first."""
        offer = full_offer()
        self.assertEqual(offer.hostname, HOST)
        self.assertEqual(
            [(s.protocol, s.port, s.implicit_tls) for s in offer.incoming],
            [("imap", 993, True), ("imap", 143, False), ("pop3", 995, True), ("pop3", 110, False)],
        )
        self.assertEqual([(s.port, s.implicit_tls) for s in offer.outgoing], [(465, True), (587, False)])

    def test_mta_and_lmtp_not_offered(self) -> None:
        """Port 25 and LMTP are not for clients."""
        ports = {s.port for s in full_offer().services}
        self.assertNotIn(25, ports)
        self.assertNotIn(24, ports)

    def test_plaintext_only_never_offered(self) -> None:
        """Without a certificate a tcp: listener has no STARTTLS: it is not announced at all."""
        offer = client_offer(settings(tls=False, **PLAIN))
        self.assertEqual(offer.services, ())
        self.assertRaises(NothingOffered, thunderbird_config, offer, "example.test")
        self.assertRaises(NothingOffered, autodiscover_response, offer, "a@example.test")
        self.assertRaises(NothingOffered, mobileconfig, offer, "a@example.test")

    def test_bound_ports_win_over_the_endpoint(self) -> None:
        """A running server's bound ports replace port 0 and portless endpoints."""
        s = settings(submission=["tcp:0"], imap=["systemd:domain=INET:index=0"], pop3=[])
        self.assertEqual(client_offer(s).services, ())
        offer = client_offer(s, {("submission", 0): 40587, ("imap", 0): 40143})
        self.assertEqual(
            [(s.protocol, s.port, s.implicit_tls) for s in offer.services],
            [("imap", 40143, False), ("smtp", 40587, False)],
        )

    def test_public_ports_and_hostname_override(self) -> None:
        """[autoconfig.ports] gives the public port of a mapped listener, 0 hides one; the hostname can be set."""
        s = settings(
            imap=["tcp:10143", "ssl:10993"],
            pop3=["ssl:995"],
            autoconfig_hostname="Imap.Example.NET.",
            autoconfig_ports={"tcp:10143": 143, "ssl:10993": 993, "ssl:995": 0},
        )
        offer = client_offer(s, {("imap", 0): 10143, ("imap", 1): 10993})
        self.assertEqual(offer.hostname, "imap.example.net")
        self.assertEqual([(s.port, s.implicit_tls) for s in offer.incoming], [(993, True), (143, False)])

    def test_endpoint_port(self) -> None:
        """The port of tcp:, tcp6: and ssl: endpoints, positional or named; None otherwise."""
        for text, port in (
            ("tcp:587", 587),
            ("tcp:587:interface=127.0.0.1", 587),
            ("tcp6:port=993:interface=\\:\\:1", 993),
            ("ssl:465:privateKey=/a\\:b.pem", 465),
            ("ssl:port=465", 465),
            ("unix:/run/txmail/imap", None),
            ("systemd:domain=INET:index=0", None),
            ("tcp:http", None),
            ("tcp:99999", None),
        ):
            self.assertEqual(endpoint_port(text), port, text)

    def test_https_port(self) -> None:
        """Autoconfiguration's HTTPS port: an ssl: listener's, 443 behind a TLS proxy, 0 plain only, None off."""
        self.assertIsNone(https_port(settings()))
        self.assertEqual(https_port(settings(web=["ssl:8443"])), 8443)
        self.assertIsNone(https_port(settings(web=["ssl:8443"], autoconfig_enabled=False)))
        self.assertEqual(https_port(settings(web=["ssl:8443"], autoconfig_listen=["tcp:80"])), 8443)
        self.assertEqual(https_port(settings(autoconfig_listen=["tcp:80"])), 0)
        self.assertEqual(https_port(settings(web=["tcp:8080"], web_tls_proxy=True)), 443)

    def test_sans_io(self) -> None:
        """txmail.autoconfig imports nothing from Twisted."""
        with open(autoconfig.__file__, encoding="utf-8") as f:
            self.assertEqual(twisted_imports(f.read()), [])


class AddressTests(SynchronousTestCase):
    """parse_address: what a client may ask about."""

    def test_good(self) -> None:
        """The local part is kept as given, the domain lower-cased, IDNs as A-labels."""
        self.assertEqual(
            parse_address(" Alice.B+x@Example.TEST. "), ("Alice.B+x@example.test", "example.test")
        )
        self.assertEqual(
            parse_address("a@bücher.example"), ("a@xn--bcher-kva.example", "xn--bcher-kva.example")
        )

    def test_bad(self) -> None:
        """Empty, no @, bad local parts and domains, and overlong addresses are BadRequest."""
        for text in (
            "",
            "alice",
            "@example.test",
            "alice@",
            "a b@example.test",
            "a<b@example.test",
            '"a"@example.test',
            ".a@example.test",
            "a@exa mple.test",
            "a@1.2.3.4",
            "a@[127.0.0.1]",
            "a@-x.test",
            "a\x00@example.test",
            "a" * 65 + "@example.test",
            "a@" + "x" * 250 + ".test",
        ):
            self.assertRaises(BadRequest, parse_address, text)


class ThunderbirdTests(SynchronousTestCase):
    """thunderbird_config: Mozilla's clientConfig 1.1."""

    def test_fields(self) -> None:
        """One server element per service, most preferred first, password-cleartext, %EMAILADDRESS%."""
        data = thunderbird_config(full_offer(), "example.test")
        self.assertTrue(data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>'))
        root = ET.fromstring(data)
        self.assertEqual((root.tag, root.get("version")), ("clientConfig", "1.1"))
        provider = root.find("emailProvider")
        assert provider is not None
        self.assertEqual(provider.get("id"), "example.test")
        self.assertEqual(provider.findtext("domain"), "example.test")
        self.assertTrue(provider.findtext("displayName"))
        servers = [
            (
                e.tag,
                e.get("type"),
                e.findtext("hostname"),
                e.findtext("port"),
                e.findtext("socketType"),
                e.findtext("authentication"),
                e.findtext("username"),
            )
            for e in provider
            if e.tag.endswith("Server")
        ]
        common = ("password-cleartext", "%EMAILADDRESS%")
        self.assertEqual(
            servers,
            [
                ("incomingServer", "imap", HOST, "993", "SSL", *common),
                ("incomingServer", "imap", HOST, "143", "STARTTLS", *common),
                ("incomingServer", "pop3", HOST, "995", "SSL", *common),
                ("incomingServer", "pop3", HOST, "110", "STARTTLS", *common),
                ("outgoingServer", "smtp", HOST, "465", "SSL", *common),
                ("outgoingServer", "smtp", HOST, "587", "STARTTLS", *common),
            ],
        )

    def test_escaped(self) -> None:
        """Text is XML-escaped (a hostname cannot hold markup, but the generator never relies on it)."""
        offer = ClientOffer("a<b>&c", (MailService("imap", 993, True),))
        root = ET.fromstring(thunderbird_config(offer, "example.test"))
        self.assertEqual(root.findtext("emailProvider/incomingServer/hostname"), "a<b>&c")


class AutodiscoverTests(SynchronousTestCase):
    """The Outlook Autodiscover (POX) request parser and responses."""

    def test_response_fields(self) -> None:
        """An email account with one Protocol per service: server, port, login name, SSL and Encryption."""
        root = ET.fromstring(autodiscover_response(full_offer(), "alice@example.test"))
        self.assertEqual(root.tag, RESPONSE + "Autodiscover")
        account = root.find(f"{OUTLOOK}Response/{OUTLOOK}Account")
        assert account is not None
        self.assertEqual(account.findtext(f"{OUTLOOK}AccountType"), "email")
        self.assertEqual(account.findtext(f"{OUTLOOK}Action"), "settings")
        protocols = [
            tuple(
                p.findtext(OUTLOOK + name)
                for name in (
                    "Type",
                    "Server",
                    "Port",
                    "LoginName",
                    "SSL",
                    "Encryption",
                    "SPA",
                    "AuthRequired",
                )
            )
            for p in account.findall(f"{OUTLOOK}Protocol")
        ]
        login = "alice@example.test"
        self.assertEqual(
            protocols,
            [
                ("IMAP", HOST, "993", login, "on", "SSL", "off", "on"),
                ("IMAP", HOST, "143", login, "on", "TLS", "off", "on"),
                ("POP3", HOST, "995", login, "on", "SSL", "off", "on"),
                ("POP3", HOST, "110", login, "on", "TLS", "off", "on"),
                ("SMTP", HOST, "465", login, "on", "SSL", "off", "on"),
                ("SMTP", HOST, "587", login, "on", "TLS", "off", "on"),
            ],
        )

    def test_error(self) -> None:
        """An error response carries its code and message."""
        root = ET.fromstring(autodiscover_error(601, "no"))
        self.assertEqual(root.findtext(f"{RESPONSE}Response/{RESPONSE}Error/{RESPONSE}ErrorCode"), "601")
        self.assertEqual(root.findtext(f"{RESPONSE}Response/{RESPONSE}Error/{RESPONSE}Message"), "no")

    def test_parse_request(self) -> None:
        """The address and schema of a request, whatever namespace (or none) it is in."""
        parsed = parse_autodiscover_request(request_body())
        self.assertEqual((parsed.email, parsed.schema), ("alice@example.test", OUTLOOK_RESPONSE_SCHEMA))
        bare = (
            b"<Autodiscover><Request><EMailAddress> bob@example.test </EMailAddress></Request></Autodiscover>"
        )
        parsed = parse_autodiscover_request(bare)
        self.assertEqual((parsed.email, parsed.schema), ("bob@example.test", ""))
        mobile = request_body(
            schema="http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
        )
        self.assertIn("mobilesync", parse_autodiscover_request(mobile).schema)

    def test_refused_requests(self) -> None:
        """Oversized, malformed, DTD, entity, deep, wide and address-less bodies are BadRequest."""
        laughs = (
            b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<Autodiscover><Request><EMailAddress>&lol2;</EMailAddress></Request></Autodiscover>"
        )
        external = (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>"
        )
        parameter = (
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]>'
            b"<Autodiscover><Request><EMailAddress>a@example.test</EMailAddress></Request></Autodiscover>"
        )
        public_dtd = (
            b'<!DOCTYPE Autodiscover SYSTEM "http://127.0.0.1:1/a.dtd">' + request_body().split(b"?>", 1)[1]
        )
        undefined = b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>"
        deep = b"<Autodiscover><Request>" + b"<a>" * 20 + b"</a>" * 20 + b"</Request></Autodiscover>"
        wide = b"<Autodiscover><Request>" + b"<a/>" * 100 + b"</Request></Autodiscover>"
        huge = request_body().replace(b"<Request>", b"<Request>" + b" " * MAX_AUTODISCOVER_REQUEST)
        for body in (
            laughs,
            external,
            parameter,
            public_dtd,
            undefined,
            deep,
            wide,
            huge,
            b"",
            b"not xml",
            b"<Autodiscover><Request>",
            b"<Autodiscover><Request></Request></Autodiscover>",
            b"<Other><Request><EMailAddress>a@example.test</EMailAddress></Request></Other>",
            b"<Autodiscover><EMailAddress>a@example.test</EMailAddress></Autodiscover>",
            b"\xff\xfe<\x00",
        ):
            self.assertRaises(BadRequest, parse_autodiscover_request, body)

    def test_random_bytes(self) -> None:
        """Random and mutated bodies parse or raise BadRequest, never anything else."""
        rng = random.Random(6186)
        good = request_body()
        for _ in range(500):
            if rng.random() < 0.5:
                body = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
            else:
                body = bytearray(good)
                for _ in range(rng.randrange(1, 6)):
                    body[rng.randrange(len(body))] = rng.randrange(256)
                body = bytes(body)
            with contextlib.suppress(BadRequest):
                parse_autodiscover_request(body)

    @given(
        st.lists(
            st.sampled_from(
                [
                    b"<Autodiscover>",
                    b"</Autodiscover>",
                    b"<Request>",
                    b"</Request>",
                    b"<EMailAddress>",
                    b"</EMailAddress>",
                    b"<!DOCTYPE a>",
                    b'<!ENTITY e "x">',
                    b"&e;",
                    b"&amp;",
                    b"<![CDATA[",
                    b"]]>",
                    b"<?pi x?>",
                    b'<?xml version="1.0" encoding="latin-1"?>',
                    b"a@example.test",
                    b"\xff",
                    b"\x00",
                ]
            )
            | st.binary(max_size=20),
            max_size=30,
        )
    )
    @hypothesis_settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    def test_property(self, parts: list[bytes]) -> None:
        """Any body built from XML pieces parses to strings or raises BadRequest (hypothesis)."""
        try:
            parsed = parse_autodiscover_request(b"".join(parts))
        except BadRequest:
            return
        self.assertIsInstance(parsed.email, str)
        self.assertIsInstance(parsed.schema, str)


class MobileconfigTests(SynchronousTestCase):
    """mobileconfig: the Apple configuration profile."""

    def test_fields(self) -> None:
        """One com.apple.mail.managed payload: IMAP over implicit TLS, submission on 465, the full address."""
        profile = plistlib.loads(mobileconfig(full_offer(), "alice@example.test"))
        self.assertEqual((profile["PayloadType"], profile["PayloadVersion"]), ("Configuration", 1))
        [mail] = profile["PayloadContent"]
        self.assertEqual(mail["PayloadType"], "com.apple.mail.managed")
        expected = {
            "EmailAccountType": "EmailTypeIMAP",
            "EmailAddress": "alice@example.test",
            "IncomingMailServerHostName": HOST,
            "IncomingMailServerPortNumber": 993,
            "IncomingMailServerUseSSL": True,
            "IncomingMailServerUsername": "alice@example.test",
            "IncomingMailServerAuthentication": "EmailAuthPassword",
            "OutgoingMailServerHostName": HOST,
            "OutgoingMailServerPortNumber": 465,
            "OutgoingMailServerUseSSL": True,
            "OutgoingMailServerUsername": "alice@example.test",
            "OutgoingMailServerAuthentication": "EmailAuthPassword",
            "OutgoingPasswordSameAsIncomingPassword": True,
        }
        self.assertEqual({k: mail[k] for k in expected}, expected)
        self.assertNotIn("IncomingPassword", mail)
        self.assertTrue(mail["PayloadIdentifier"].startswith(profile["PayloadIdentifier"]))

    def test_stable_identifiers(self) -> None:
        """The same account gets the same UUIDs (a new download replaces the profile); another does not."""
        first = plistlib.loads(mobileconfig(full_offer(), "alice@example.test"))
        again = plistlib.loads(mobileconfig(full_offer(), "Alice@example.test"))
        other = plistlib.loads(mobileconfig(full_offer(), "bob@example.test"))
        self.assertEqual(first["PayloadUUID"], again["PayloadUUID"])
        self.assertNotEqual(first["PayloadUUID"], other["PayloadUUID"])
        self.assertNotEqual(first["PayloadUUID"], first["PayloadContent"][0]["PayloadUUID"])

    def test_pop3_and_starttls_only(self) -> None:
        """A server with only POP3 and STARTTLS ports gets a POP account on those ports."""
        offer = client_offer(settings(imap=[], pop3=["tcp:110"], submission=["tcp:587"]))
        [mail] = plistlib.loads(mobileconfig(offer, "a@example.test"))["PayloadContent"]
        self.assertEqual(mail["EmailAccountType"], "EmailTypePOP")
        self.assertEqual(
            (mail["IncomingMailServerPortNumber"], mail["OutgoingMailServerPortNumber"]), (110, 587)
        )

    def test_incomplete(self) -> None:
        """Without a submission listener there is no complete account: NothingOffered."""
        offer = client_offer(settings(submission=[]))
        self.assertRaises(NothingOffered, mobileconfig, offer, "a@example.test")


class RecordTests(SynchronousTestCase):
    """The SRV and CNAME records of ``txmail dns-records``."""

    def test_srv(self) -> None:
        """One SRV per service offered, implicit TLS and IMAP preferred; '.' for the others."""
        offer = client_offer(settings(pop3=[]))
        records = {(r.service, r.priority, r.weight, r.port, r.target) for r in srv_services(offer)}
        self.assertEqual(
            records,
            {
                ("_submissions", 0, 1, 465, HOST),
                ("_submission", 10, 1, 587, HOST),
                ("_imaps", 0, 1, 993, HOST),
                ("_imap", 10, 1, 143, HOST),
                ("_pop3s", 0, 0, 0, "."),
                ("_pop3", 0, 0, 0, "."),
            },
        )

    def test_zone_lines(self) -> None:
        """The zone text has the SRV lines, the autoconfig names and Outlook's SRV record."""
        s = settings(web=["ssl:443"])
        mail = MailDomain("example.test", HOST, clients=client_offer(s), autoconfig_port=https_port(s))
        text = zone_text(mail)
        for line in (
            f"_submissions._tcp.example.test. IN SRV 0 1 465 {HOST}.",
            f"_imap._tcp.example.test. IN SRV 10 1 143 {HOST}.",
            f"_pop3._tcp.example.test. IN SRV 30 1 110 {HOST}.",
            f"autoconfig.example.test. IN CNAME {HOST}.",
            f"autodiscover.example.test. IN CNAME {HOST}.",
            f"_autodiscover._tcp.example.test. IN SRV 0 0 443 {HOST}.",
        ):
            self.assertIn(line + "\n", text)
        kinds = [e.kind for e in records_for(mail)]
        self.assertEqual(kinds[-1], "ptr")
        self.assertEqual(kinds.count("srv"), 6)

    def test_nothing_offered(self) -> None:
        """A server with no TLS offers nothing: every SRV record says '.'; no autoconfig names when not served."""
        mail = MailDomain("example.test", HOST, clients=client_offer(settings(tls=False, **PLAIN)))
        lines = [f"{e.name}. IN {e.rdtype} {e.value}" for e in client_records(mail)]
        self.assertEqual(
            lines,
            [
                f"_{n}._tcp.example.test. IN SRV 0 0 0 ."
                for n in ("submissions", "submission", "imaps", "imap", "pop3s", "pop3")
            ],
        )
        self.assertEqual(client_records(MailDomain("example.test", HOST)), [])


class ConfigTests(SynchronousTestCase):
    """The [autoconfig] table."""

    def load(self, text: str) -> Settings:
        path = self.mktemp()
        cert, key = certificate()
        with open(path, "w", encoding="utf-8") as f:
            f.write(
                f'[tls]\ncert = "{cert}"\nkey = "{key}"\n[imap]\nlisten = ["tcp:10143", "ssl:993"]\n' + text
            )
        return load_config(path)

    def test_defaults(self) -> None:
        """Served on the web listeners, no listener of its own, the server's hostname, no port mapping."""
        s = Settings()
        self.assertEqual(
            (s.autoconfig_enabled, s.autoconfig_listen, s.autoconfig_hostname, s.autoconfig_ports),
            (True, (), None, ()),
        )

    def test_table(self) -> None:
        """Every key of the table is read."""
        s = self.load(
            '[autoconfig]\nenabled = false\nlisten = ["tcp:80", "ssl:443"]\nhostname = "Mail.Example.COM"\n'
            '[autoconfig.ports]\n"tcp:10143" = 143\n"ssl:993" = 0\n'
        )
        self.assertFalse(s.autoconfig_enabled)
        self.assertEqual(s.autoconfig_listen, ("tcp:80", "ssl:443"))
        self.assertEqual(s.autoconfig_hostname, "mail.example.com")
        self.assertEqual(dict(s.autoconfig_ports), {"tcp:10143": 143, "ssl:993": 0})

    def test_refused(self) -> None:
        """Bad values, and a port mapping for an endpoint that is no client listener, are ConfigErrors."""
        for text in (
            "[autoconfig]\nenabled = 1\n",
            "[autoconfig]\nlisten = 80\n",
            '[autoconfig]\nhostname = "not a host"\n',
            '[autoconfig]\nhostname = ""\n',
            '[autoconfig.ports]\n"tcp:10143" = 70000\n',
            '[autoconfig.ports]\n"tcp:10143" = "143"\n',
            '[autoconfig.ports]\n"tcp:25" = 25\n',
            "[autoconfig]\nports = 143\n",
            "[autoconfig]\nunknown = 1\n",
        ):
            self.assertRaises(ConfigError, self.load, text)

    def test_plugin_option(self) -> None:
        """twistd mailserver --autoconfig ENDPOINT (repeatable) adds autoconfiguration-only listeners."""
        from tests.test_plugin import _maker

        options = _maker().options()  # type: ignore[attr-defined]
        options.parseOptions(
            ["--data-dir", self.mktemp(), "--autoconfig", "tcp:80", "--autoconfig", "tcp:8081"]
        )
        self.assertEqual(options.settings.autoconfig_listen, ("tcp:80", "tcp:8081"))

    def test_ssl_listener_needs_certificate(self) -> None:
        """An ssl: autoconfig listener without [tls] is refused."""
        with self.assertRaises(ConfigError) as caught:
            Settings.validated(autoconfig_listen=["ssl:443"])
        self.assertIn("needs a TLS certificate", str(caught.exception))
        self.assertTrue(os.path.exists(certificate()[0]))
