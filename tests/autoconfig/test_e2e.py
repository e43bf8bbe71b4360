"""
End to end: a real server (``build_service``) with submission, IMAP and
POP3 listeners (STARTTLS and implicit TLS, on 127.0.0.1 port 0), a JMAP
web listener and an autoconfiguration-only HTTPS listener.  Each document
is fetched over HTTP(S) with the standard library's client; the hosts,
ports and security it announces are checked against the listeners' bound
ports; then smtplib, imaplib and poplib connect as the document says
(STARTTLS or TLS, the certificate checked against the announced host name)
and log in with the announced user name.  Hostile requests get 400 or 404.
"""

from __future__ import annotations

import http.client
import imaplib
import plistlib
import poplib
import smtplib
import ssl
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import start_server
from txmail.autoconfig import (
    AUTODISCOVER_REQUEST_SCHEMA,
    AUTODISCOVER_RESPONSE_SCHEMA,
    OUTLOOK_RESPONSE_SCHEMA,
)

HOST = "mx.example.test"
ALICE = "alice@example.test"
PASSWORD = "alice secret"
LOOPBACK = "tcp:0:interface=127.0.0.1"
TLS_LOOPBACK = "ssl:0:interface=127.0.0.1"
OUTLOOK = "{" + OUTLOOK_RESPONSE_SCHEMA + "}"
RESPONSE = "{" + AUTODISCOVER_RESPONSE_SCHEMA + "}"


class PinnedContext(ssl.SSLContext):
    """A client context that checks the certificate for :attr:`hostname` whatever address is dialled."""

    hostname = ""

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["server_hostname"] = self.hostname
        return super().wrap_socket(sock, *args, **kwargs)


def client_context(ca: str, hostname: str) -> PinnedContext:
    context = PinnedContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.hostname = hostname
    return context


def autodiscover_body(email: str, schema: str = OUTLOOK_RESPONSE_SCHEMA) -> bytes:
    return (
        f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{AUTODISCOVER_REQUEST_SCHEMA}">'
        f"<Request><EMailAddress>{email}</EMailAddress>"
        f"<AcceptableResponseSchema>{schema}</AcceptableResponseSchema></Request></Autodiscover>"
    ).encode()


def log_in(protocol: str, host: str, port: int, implicit_tls: bool, user: str, context: PinnedContext) -> str:
    """
    Connect to *port* on 127.0.0.1 as announced (*implicit_tls* or
    STARTTLS, the certificate checked for *host*) and log in as *user*;
    the protocol's success line.  Blocking: run in a thread.
    """
    context.hostname = host
    if protocol == "imap":
        if implicit_tls:
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=context, timeout=20)
        else:
            imap = imaplib.IMAP4("127.0.0.1", port, timeout=20)
            imap.starttls(context)
        try:
            typ, data = imap.login(user, PASSWORD)
            return f"{typ} {data[0].decode()}"
        finally:
            imap.logout()
    if protocol == "pop3":
        if implicit_tls:
            pop: poplib.POP3 = poplib.POP3_SSL("127.0.0.1", port, context=context, timeout=20)
        else:
            pop = poplib.POP3("127.0.0.1", port, timeout=20)
            pop.stls(context)
        try:
            pop.user(user)
            return pop.pass_(PASSWORD).decode()
        finally:
            pop.quit()
    if implicit_tls:
        smtp: smtplib.SMTP = smtplib.SMTP_SSL("127.0.0.1", port, context=context, timeout=20)
    else:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=20)
        smtp.starttls(context=context)
    try:
        code, text = smtp.login(user, PASSWORD)
        return f"{code} {text.decode()}"
    finally:
        smtp.quit()


class AutoconfigEndToEndTests(TestCase):
    """Each document against the running listeners, then real logins with what it says."""

    timeout = 120

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(self.mktemp(), HOST)
        self.server = yield start_server(
            self,
            hostname=HOST,
            tls_cert=cert,
            tls_key=key,
            submission=[LOOPBACK, TLS_LOOPBACK],
            imap=[LOOPBACK, TLS_LOOPBACK],
            pop3=[LOOPBACK, TLS_LOOPBACK],
            web=[LOOPBACK],
            autoconfig_listen=[TLS_LOOPBACK],
        )
        self.server.directory.add_user(ALICE, PASSWORD)

    def running(self) -> set[tuple[str, int, bool]]:
        """(protocol, bound port, implicit TLS) of every submission, IMAP and POP3 listener."""
        out = set()
        for role, protocol in (("submission", "smtp"), ("imap", "imap"), ("pop3", "pop3")):
            for index, listener in enumerate(self.server.listeners_for(role)):
                out.add(
                    (protocol, self.server.address(role, index)[1], listener.description.startswith("ssl:"))
                )
        return out

    def fetch(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        role: str = "web",
        headers: dict[str, str] | None = None,
    ) -> defer.Deferred[tuple[int, dict[str, str], bytes]]:
        """A request to the *role* listener with http.client (HTTPS for the autoconfig listener)."""
        host, port = self.server.address(role)

        def run() -> tuple[int, dict[str, str], bytes]:
            if role == "autoconfig":
                context = ssl.create_default_context(cafile=self.ca)
                connection: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, context=context, timeout=20
                )
            else:
                connection = http.client.HTTPConnection(host, port, timeout=20)
            try:
                connection.request(method, path, body=body, headers=headers or {})
                response = connection.getresponse()
                data = response.read()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, data
            finally:
                connection.close()

        return deferToThread(run)

    async def logins(self, announced: list[tuple[str, str, int, bool, str]]) -> None:
        """Log in on every (protocol, host, port, implicit TLS, user) announced."""
        for protocol, host, port, implicit, user in announced:
            context = client_context(self.ca, host)
            line = await deferToThread(log_in, protocol, host, port, implicit, user, context)
            self.assertTrue(line.startswith(("OK", "+OK", "235")), (protocol, port, line))

    async def test_thunderbird(self) -> None:
        """The well-known clientConfig lists every running client listener, and each one logs in as it says."""
        query = urllib.parse.urlencode({"emailaddress": ALICE})
        status, headers, data = await self.fetch(f"/.well-known/autoconfig/mail/config-v1.1.xml?{query}")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/xml; charset=utf-8")
        provider = ET.fromstring(data).find("emailProvider")
        assert provider is not None
        self.assertEqual(provider.findtext("domain"), "example.test")
        servers = [e for e in provider if e.tag in ("incomingServer", "outgoingServer")]
        announced = {
            (e.get("type"), int(e.findtext("port") or 0), e.findtext("socketType") == "SSL") for e in servers
        }
        self.assertEqual(announced, self.running())
        self.assertEqual({e.findtext("hostname") for e in servers}, {HOST})
        self.assertEqual({e.findtext("socketType") for e in servers}, {"SSL", "STARTTLS"})
        self.assertEqual({e.findtext("authentication") for e in servers}, {"password-cleartext"})
        self.assertEqual({e.findtext("username") for e in servers}, {"%EMAILADDRESS%"})
        # The most preferred first: IMAP over implicit TLS, submission over implicit TLS.
        self.assertEqual(servers[0].findtext("socketType"), "SSL")
        self.assertEqual(servers[0].get("type"), "imap")
        await self.logins(
            [
                (
                    str(e.get("type")),
                    str(e.findtext("hostname")),
                    int(e.findtext("port") or 0),
                    e.findtext("socketType") == "SSL",
                    str(e.findtext("username")).replace("%EMAILADDRESS%", ALICE),
                )
                for e in servers
            ]
        )

    async def test_thunderbird_autoconfig_host(self) -> None:
        """On the autoconfig.<domain> host the address may be left out; another domain's host is a 404."""
        status, _, data = await self.fetch(
            "/mail/config-v1.1.xml", role="autoconfig", headers={"Host": "autoconfig.example.test"}
        )
        self.assertEqual(status, 200)
        self.assertEqual(ET.fromstring(data).findtext("emailProvider/domain"), "example.test")
        status, _, _ = await self.fetch(
            "/mail/config-v1.1.xml", role="autoconfig", headers={"Host": "autoconfig.other.test"}
        )
        self.assertEqual(status, 404)
        status, _, _ = await self.fetch("/mail/config-v1.1.xml", role="autoconfig")
        self.assertEqual(status, 400)

    async def test_autodiscover(self) -> None:
        """The POX response lists every running client listener; each logs in with its LoginName."""
        status, _headers, data = await self.fetch(
            "/autodiscover/autodiscover.xml",
            "POST",
            autodiscover_body(ALICE),
            headers={"Content-Type": "text/xml"},
        )
        self.assertEqual(status, 200, data)
        account = ET.fromstring(data).find(f"{OUTLOOK}Response/{OUTLOOK}Account")
        assert account is not None
        protocols = account.findall(f"{OUTLOOK}Protocol")
        types = {"IMAP": "imap", "POP3": "pop3", "SMTP": "smtp"}
        announced = [
            (
                types[p.findtext(f"{OUTLOOK}Type") or ""],
                str(p.findtext(f"{OUTLOOK}Server")),
                int(p.findtext(f"{OUTLOOK}Port") or 0),
                p.findtext(f"{OUTLOOK}Encryption") == "SSL",
                str(p.findtext(f"{OUTLOOK}LoginName")),
            )
            for p in protocols
        ]
        self.assertEqual({(a[0], a[2], a[3]) for a in announced}, self.running())
        self.assertEqual({p.findtext(f"{OUTLOOK}SSL") for p in protocols}, {"on"})
        self.assertEqual({a[4] for a in announced}, {ALICE})
        await self.logins(announced)

    async def test_autodiscover_spellings_and_get(self) -> None:
        """Outlook's capitalised path works; GET with the address answers the same; over HTTPS too."""
        status, _, data = await self.fetch(
            "/Autodiscover/Autodiscover.xml", "POST", autodiscover_body(ALICE), role="autoconfig"
        )
        self.assertEqual(status, 200)
        status, _, again = await self.fetch(
            f"/autodiscover/autodiscover.xml?emailaddress={urllib.parse.quote(ALICE)}", role="autoconfig"
        )
        self.assertEqual((status, again), (200, data))

    async def test_mobileconfig(self) -> None:
        """The Apple profile names the preferred running listeners; IMAP and SMTP log in with it."""
        query = urllib.parse.urlencode({"emailaddress": ALICE})
        status, headers, data = await self.fetch(f"/mail/apple.mobileconfig?{query}", role="autoconfig")
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-type"], "application/x-apple-aspen-config")
        self.assertIn('filename="example.test.mobileconfig"', headers["content-disposition"])
        [mail] = plistlib.loads(data)["PayloadContent"]
        self.assertEqual(mail["PayloadType"], "com.apple.mail.managed")
        self.assertEqual(mail["EmailAccountType"], "EmailTypeIMAP")
        running = self.running()
        incoming = ("imap", mail["IncomingMailServerPortNumber"], True)
        outgoing = ("smtp", mail["OutgoingMailServerPortNumber"], True)
        self.assertIn(incoming, running)
        self.assertIn(outgoing, running)
        await self.logins(
            [
                (
                    "imap",
                    mail["IncomingMailServerHostName"],
                    incoming[1],
                    True,
                    mail["IncomingMailServerUsername"],
                ),
                (
                    "smtp",
                    mail["OutgoingMailServerHostName"],
                    outgoing[1],
                    True,
                    mail["OutgoingMailServerUsername"],
                ),
            ]
        )

    async def test_listeners_keep_their_jobs(self) -> None:
        """The web listener still serves JMAP; the autoconfiguration listener serves nothing else."""
        status, _, _ = await self.fetch("/jmap/session")
        self.assertEqual(status, 401)
        status, _, _ = await self.fetch("/jmap/session", role="autoconfig")
        self.assertEqual(status, 404)
        status, _, _ = await self.fetch("/.well-known/jmap", role="autoconfig")
        self.assertEqual(status, 404)

    async def test_foreign_and_missing_addresses(self) -> None:
        """A domain not served here is a 404, a missing or malformed address a 400, on every document."""
        for path in (
            "/.well-known/autoconfig/mail/config-v1.1.xml",
            "/mail/apple.mobileconfig",
            "/autodiscover/autodiscover.xml",
        ):
            status, _, _ = await self.fetch(f"{path}?emailaddress=bob%40other.test")
            self.assertEqual(status, 404, path)
            status, _, _ = await self.fetch(path)
            self.assertEqual(status, 400, path)
            status, _, _ = await self.fetch(f"{path}?emailaddress=not-an-address")
            self.assertEqual(status, 400, path)
            status, _, _ = await self.fetch(f"{path}?emailaddress=%FF%FE")
            self.assertEqual(status, 400, path)
        status, _, data = await self.fetch(
            "/autodiscover/autodiscover.xml", "POST", autodiscover_body("bob@other.test")
        )
        self.assertEqual(status, 404)
        self.assertEqual(ET.fromstring(data).tag, RESPONSE + "Autodiscover")

    async def test_hostile_autodiscover(self) -> None:
        """Huge, malformed and DTD-carrying requests are 400 with error 600; mobilesync is error 601."""
        laughs = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
            b"<Autodiscover><Request><EMailAddress>&b;@example.test</EMailAddress></Request></Autodiscover>"
        )
        external = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/hostname">]>'
            b"<Autodiscover><Request><EMailAddress>&x;</EMailAddress></Request></Autodiscover>"
        )
        huge = autodiscover_body(ALICE).replace(b"<Request>", b"<Request>" + b" " * 1_000_000)
        for role in ("web", "autoconfig"):
            for body in (laughs, external, huge, b"<Autodiscover><Request>", b"\x00" * 100, b""):
                status, _, data = await self.fetch("/autodiscover/autodiscover.xml", "POST", body, role=role)
                self.assertEqual(status, 400, (role, body[:40]))
                error = ET.fromstring(data).find(f"{RESPONSE}Response/{RESPONSE}Error")
                assert error is not None
                self.assertEqual(error.findtext(f"{RESPONSE}ErrorCode"), "600")
                self.assertNotIn(b"root:", data)
        mobilesync = "http://schemas.microsoft.com/exchange/autodiscover/mobilesync/responseschema/2006"
        status, _, data = await self.fetch(
            "/autodiscover/autodiscover.xml", "POST", autodiscover_body(ALICE, mobilesync)
        )
        self.assertEqual(status, 200)
        self.assertIn(b"<ErrorCode>601</ErrorCode>", data)

    async def test_methods_and_paths(self) -> None:
        """Wrong methods are 405 with Allow; unknown paths under the documents are 404."""
        status, headers, _ = await self.fetch(
            "/mail/config-v1.1.xml?emailaddress=a%40example.test", "POST", b""
        )
        self.assertEqual(status, 405)
        self.assertEqual(headers["allow"], "GET, HEAD")
        status, _, _ = await self.fetch("/mail/config-v1.1.xml/more?emailaddress=a%40example.test")
        self.assertEqual(status, 404)
        status, _, _ = await self.fetch("/mail/other.xml", role="autoconfig")
        self.assertEqual(status, 404)
        status, _, _ = await self.fetch("/", role="autoconfig")
        self.assertEqual(status, 404)


class AutoconfigSettingsTests(TestCase):
    """What the [autoconfig] table changes in a running server."""

    timeout = 60

    async def test_public_ports(self) -> None:
        """[autoconfig.ports] announces the public port of a mapped listener and hides another."""
        _ca, cert, key = make_certificate(self.mktemp(), HOST)
        # Endpoints are named exactly as in the listen lists (each distinct).
        mapped, hidden = f"{LOOPBACK}:backlog=49", f"{TLS_LOOPBACK}:backlog=48"
        config = (
            f'[autoconfig]\nhostname = "imap.example.test"\n'
            f'[autoconfig.ports]\n"{mapped}" = 143\n"{hidden}" = 0\n'
        )
        server = await start_server(
            self,
            config=config,
            tls_cert=cert,
            tls_key=key,
            submission=[LOOPBACK],
            imap=[mapped, hidden],
            web=[LOOPBACK],
        )
        host, port = server.address("web")

        def run() -> bytes:
            connection = http.client.HTTPConnection(host, port, timeout=20)
            connection.request("GET", "/mail/config-v1.1.xml?emailaddress=a%40example.test")
            return connection.getresponse().read()

        root = ET.fromstring(await deferToThread(run))
        servers = [
            (e.get("type"), e.findtext("hostname"), e.findtext("port")) for e in root.iter() if e.get("type")
        ]
        submission = str(server.address("submission")[1])
        self.assertEqual(
            servers, [("imap", "imap.example.test", "143"), ("smtp", "imap.example.test", submission)]
        )

    async def test_disabled_on_web(self) -> None:
        """With [autoconfig] enabled = false the JMAP listener does not serve the documents."""
        server = await start_server(self, web=[LOOPBACK], autoconfig_enabled=False)
        host, port = server.address("web")

        def run() -> int:
            connection = http.client.HTTPConnection(host, port, timeout=20)
            connection.request("GET", "/mail/config-v1.1.xml?emailaddress=a%40example.test")
            return connection.getresponse().status

        self.assertEqual(await deferToThread(run), 404)

    async def test_nothing_over_tls(self) -> None:
        """A server without TLS announces nothing: the documents are 404, never a plaintext-only server."""
        server = await start_server(self, imap=[LOOPBACK], autoconfig_listen=[LOOPBACK])
        host, port = server.address("autoconfig")

        def run(path: str) -> int:
            connection = http.client.HTTPConnection(host, port, timeout=20)
            connection.request("GET", path)
            return connection.getresponse().status

        for path in (
            "/mail/config-v1.1.xml?emailaddress=a%40example.test",
            "/mail/apple.mobileconfig?emailaddress=a%40example.test",
            "/autodiscover/autodiscover.xml?emailaddress=a%40example.test",
        ):
            self.assertEqual(await deferToThread(run, path), 404, path)
