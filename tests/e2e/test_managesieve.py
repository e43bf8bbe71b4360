"""
End to end: ManageSieve (RFC 5804) on the real service, on 127.0.0.1 port 0.

* A raw socket client checks the greeting, STARTTLS with commands pipelined
  behind it (dropped, never run), and a store without Sieve scripts.
* PyPI's ``sievelib`` and Debian's ``sieve-connect`` (clients nobody here
  wrote) upload, list, activate, fetch and delete scripts over STARTTLS
  with the test certificate; the Maildir store keeps them where Dovecot
  does (``sieve/NAME.sieve``, ``.dovecot.sieve`` a link to the active one).
* The in-process :class:`txmail.testing.TestServer` serves ManageSieve too.
"""

from __future__ import annotations

import base64
import imaplib
import os
import shutil
import smtplib
import socket
import ssl
import subprocess
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase
from zope.interface import implementer

from tests._certs import make_certificate
from tests._dns import start_dns_server
from tests.e2e._server import maildir_files, start_server
from tests.e2e.test_outbound import wait_for
from txmail.interfaces import IMailStoreProvider
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"
PASSWORD = "sieve secret"
LOOPBACK = "tcp:0:interface=127.0.0.1"
SCRIPT = (
    'require ["fileinto", "vacation"];\r\n'
    'if header :contains "List-Id" "txmail" {\r\n  fileinto "Lists";\r\n}\r\n'
    'vacation :days 7 "I am away.";\r\n'
)
BAD_SCRIPT = 'require "fileinto";\r\nfileinto "x"\r\nkeep;\r\n'


class RawClient:
    """A blocking line reader over a socket, for exact exchanges (run in a thread)."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.buffer = b""

    def read_until_ok(self) -> bytes:
        """Read up to and including a line starting with OK, NO or BYE."""
        out = b""
        while True:
            line = self.readline()
            out += line
            if line.startswith((b"OK", b"NO", b"BYE")):
                return out

    def readline(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buffer)
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line + b"\r\n"

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


class ManageSieveServerTests(TestCase):
    """The listener's own behaviour, checked byte by byte with a raw client."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(self.mktemp())
        self.server = yield start_server(
            self, managesieve=[LOOPBACK], tls_cert=cert, tls_key=key, plaintext_auth="never"
        )
        self.server.directory.add_user(USER, PASSWORD)
        self.address = self.server.address("managesieve")

    @defer.inlineCallbacks
    def test_starttls_drops_pipelined_commands(self) -> Any:
        """Commands pipelined after STARTTLS are never run; the capabilities come again under TLS."""
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())

        def exchange() -> tuple[bytes, bytes, bytes]:
            client = RawClient(self.address)
            greeting = client.read_until_ok()
            # Injected in the clear after STARTTLS (CVE-2011-0411): must be dropped.
            client.send(
                b'STARTTLS\r\nAUTHENTICATE "PLAIN" "' + plain + b'"\r\nPUTSCRIPT "evil" "discard;"\r\n'
            )
            answer = client.readline()
            context = ssl.create_default_context(cafile=self.ca)
            tls = context.wrap_socket(client.sock, server_hostname="localhost")
            client.sock, client.buffer = tls, b""
            capabilities = client.read_until_ok()
            client.send(b"LISTSCRIPTS\r\n")
            listed = client.read_until_ok()
            client.send(b"LOGOUT\r\n")
            client.read_until_ok()
            client.close()
            return greeting + answer, capabilities, listed

        greeting, capabilities, listed = yield deferToThread(exchange)
        self.assertIn(b'"SASL" ""\r\n"SIEVE" "', greeting)
        self.assertIn(b'"STARTTLS"\r\n', greeting)
        self.assertTrue(greeting.endswith(b'OK "Begin TLS negotiation now"\r\n'))
        self.assertIn(b'"SASL" "SCRAM-SHA-256 PLAIN LOGIN"\r\n', capabilities)
        self.assertNotIn(b"STARTTLS", capabilities)
        self.assertEqual(listed, b'NO "Authenticate first"\r\n')
        store = yield self.server.stores.store_for(USER)
        self.assertEqual((yield store.list_scripts()), [])

    @defer.inlineCallbacks
    def test_plain_refused_before_tls(self) -> Any:
        """Under plaintext_auth = never, AUTHENTICATE before STARTTLS is NO (ENCRYPT-NEEDED)."""
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())

        def exchange() -> bytes:
            client = RawClient(self.address)
            client.read_until_ok()
            client.send(b'AUTHENTICATE "PLAIN" "' + plain + b'"\r\n')
            answer = client.read_until_ok()
            client.close()
            return answer

        answer = yield deferToThread(exchange)
        self.assertEqual(answer, b'NO (ENCRYPT-NEEDED) "Authentication requires TLS: use STARTTLS first"\r\n')


@implementer(IMailStoreProvider)
class _NoScriptsProvider:
    """A provider whose stores keep mail but no Sieve scripts."""

    def __init__(self) -> None:
        self.inner = MemoryProvider()

    def store_for(self, user: str) -> Any:
        return self.inner.store_for(user).addCallback(_Bare)


class _Bare:
    def __init__(self, store: Any) -> None:
        self.store = store


class NoScriptsTests(TestCase):
    """A store without ISieveScripts: the login itself answers NO."""

    @defer.inlineCallbacks
    def test_login_refused(self) -> Any:
        from twisted.internet import reactor

        from txmail.config import load_config
        from txmail.service import build_service

        settings = load_config(
            None,
            {
                "data_dir": os.path.abspath(self.mktemp()),
                "domains": ["example.test"],
                "smtp": [LOOPBACK],
                "submission": [],
                "managesieve": [LOOPBACK],
                "plaintext_auth": "loopback",
                "outbound_enabled": False,
            },
        )
        server = build_service(settings, reactor=reactor, stores=_NoScriptsProvider())
        server.startService()
        self.addCleanup(server.stopService)
        yield server.when_listening()
        server.directory.add_user(USER, PASSWORD)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())

        def exchange() -> bytes:
            client = RawClient(server.address("managesieve"))
            client.read_until_ok()
            client.send(b'AUTHENTICATE "PLAIN" "' + plain + b'"\r\nLISTSCRIPTS\r\n')
            answer = client.read_until_ok() + client.read_until_ok()
            client.close()
            return answer

        answer = yield deferToThread(exchange)
        self.assertEqual(
            answer, b'NO "Sieve scripts are not available for this account"\r\nNO "Authenticate first"\r\n'
        )


class ClientTestCase(TestCase):
    """The service with ManageSieve over STARTTLS (plaintext never) and a Maildir store."""

    timeout = 90

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.ca, cert, key = make_certificate(self.mktemp())
        self.server = yield start_server(
            self, managesieve=[LOOPBACK], tls_cert=cert, tls_key=key, plaintext_auth="never"
        )
        self.server.directory.add_user(USER, PASSWORD)
        self.address = self.server.address("managesieve")
        self.user_dir = os.path.join(self.server.settings.data_dir, "mail", "example.test", "alice")

    def assert_dovecot_layout(self, active: str | None, names: list[str]) -> None:
        """The scripts are where Dovecot keeps them."""
        sieve = os.path.join(self.user_dir, "sieve")
        self.assertEqual(
            sorted(n for n in os.listdir(sieve) if n.endswith(".sieve")), [n + ".sieve" for n in names]
        )
        link = os.path.join(self.user_dir, ".dovecot.sieve")
        if active is None:
            self.assertFalse(os.path.lexists(link))
        else:
            self.assertEqual(os.readlink(link), f"sieve/{active}.sieve")


class SievelibTests(ClientTestCase):
    """PyPI's sievelib client against the server."""

    def client(self) -> Any:
        try:
            from sievelib import managesieve
        except ImportError:
            raise SkipTest("sievelib is not installed (pip install sievelib)") from None
        ca = self.ca
        original = managesieve.ssllib.create_default_context
        self.patch(managesieve.ssllib, "create_default_context", lambda: original(cafile=ca))
        return managesieve.Client(*self.address, srvhostname="localhost")

    @defer.inlineCallbacks
    def test_upload_list_activate_fetch_delete(self) -> Any:
        """sievelib over STARTTLS: putscript (a bad one refused), listscripts, setactive, getscript, deletescript."""
        client = self.client()

        def session() -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["connected"] = client.connect(USER, PASSWORD, starttls=True, authmech="PLAIN")
            out["implementation"] = client.get_implementation()
            out["extensions"] = client.get_sieve_capabilities()
            out["bad"] = client.putscript("bad", BAD_SCRIPT)
            out["bad_error"] = client.errmsg
            out["check"] = client.checkscript(SCRIPT)
            out["space"] = client.havespace("filters", len(SCRIPT))
            out["put"] = client.putscript("filters", SCRIPT)
            out["put2"] = client.putscript("other", "keep;\r\n")
            out["active"] = client.setactive("filters")
            out["listed"] = client.listscripts()
            out["fetched"] = client.getscript("filters")
            out["delete_active"] = client.deletescript("filters")
            out["delete_active_code"] = client.errcode
            out["rename"] = client.renamescript("other", "renamed")
            out["deactivate"] = client.setactive("")
            out["deleted"] = client.deletescript("filters")
            out["listed_after"] = client.listscripts()
            client.logout()
            return out

        out = yield deferToThread(session)
        self.assertTrue(out["connected"])
        self.assertEqual(out["implementation"], "txmail")
        self.assertIn("vacation", out["extensions"])
        self.assertFalse(out["bad"])
        self.assertIn(b"line 3, column 1", out["bad_error"])
        self.assertTrue(out["check"])
        self.assertTrue(out["space"])
        self.assertTrue(out["put"] and out["put2"] and out["active"])
        self.assertEqual(out["listed"], ("filters", ["other"]))
        # sievelib gives the script's lines joined with LF.
        self.assertEqual(out["fetched"], SCRIPT.replace("\r\n", "\n").rstrip("\n"))
        self.assertFalse(out["delete_active"])
        self.assertEqual(out["delete_active_code"], b"ACTIVE")
        self.assertTrue(out["rename"] and out["deactivate"] and out["deleted"])
        self.assertEqual(out["listed_after"], (None, ["renamed"]))
        self.assert_dovecot_layout(None, ["renamed"])

    @defer.inlineCallbacks
    def test_active_script_on_disk(self) -> Any:
        """What sievelib activates is the file .dovecot.sieve points to, byte for byte."""
        client = self.client()

        def session() -> None:
            assert client.connect(USER, PASSWORD, starttls=True, authmech="PLAIN")
            assert client.putscript("main", SCRIPT)
            assert client.setactive("main")
            client.logout()

        yield deferToThread(session)
        self.assert_dovecot_layout("main", ["main"])
        with open(os.path.join(self.user_dir, ".dovecot.sieve"), "rb") as f:
            self.assertEqual(f.read(), SCRIPT.encode())


class SieveConnectTests(ClientTestCase):
    """Debian's sieve-connect (Perl) against the server."""

    def setUp(self) -> Any:
        self.binary = shutil.which("sieve-connect")
        if self.binary is None:
            raise SkipTest("sieve-connect is not installed: apt-get install sieve-connect")
        return super().setUp()

    def run_client(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run sieve-connect with the password on a pipe, over STARTTLS verified with the test CA."""
        read, write = os.pipe()
        os.write(write, PASSWORD.encode() + b"\n")
        os.close(write)
        try:
            return subprocess.run(
                [
                    self.binary,
                    "--server",
                    "localhost",
                    "--port",
                    str(self.address[1]),
                    "--user",
                    USER,
                    "--passwordfd",
                    str(read),
                    "--tlscafile",
                    self.ca,
                    "--authmech",
                    "PLAIN",
                    *args,
                ],
                pass_fds=(read,),
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        finally:
            os.close(read)

    @defer.inlineCallbacks
    def test_upload_list_activate_fetch_delete(self) -> Any:
        """sieve-connect uploads (a bad script refused), lists, activates, downloads and deletes."""
        local = self.mktemp()
        with open(local, "w") as f:
            f.write(SCRIPT)
        bad = self.mktemp()
        with open(bad, "w") as f:
            f.write(BAD_SCRIPT)
        fetched = self.mktemp()

        def session() -> dict[str, subprocess.CompletedProcess[str]]:
            return {
                "bad": self.run_client("--upload", "--localsieve", bad, "--remotesieve", "bad"),
                "upload": self.run_client("--upload", "--localsieve", local, "--remotesieve", "filters"),
                "activate": self.run_client("--activate", "--remotesieve", "filters"),
                "list": self.run_client("--list"),
                "download": self.run_client(
                    "--download", "--remotesieve", "filters", "--localsieve", fetched
                ),
                "delete_active": self.run_client("--delete", "--remotesieve", "filters"),
                "deactivate": self.run_client("--deactivate"),
                "delete": self.run_client("--delete", "--remotesieve", "filters"),
                "list_after": self.run_client("--list"),
            }

        out = yield deferToThread(session)
        for step in ("upload", "activate", "list", "download", "deactivate", "delete", "list_after"):
            self.assertEqual(out[step].returncode, 0, (step, out[step].stdout, out[step].stderr))
        self.assertNotEqual(out["bad"].returncode, 0)
        self.assertIn("line 3, column 1", out["bad"].stderr + out["bad"].stdout)
        self.assertIn("filters", out["list"].stdout)
        self.assertIn("ACTIVE", out["list"].stdout.upper())
        with open(fetched, "rb") as f:
            self.assertEqual(f.read().replace(b"\r\n", b"\n"), SCRIPT.encode().replace(b"\r\n", b"\n"))
        self.assertNotEqual(out["delete_active"].returncode, 0)
        self.assertNotIn("filters", out["list_after"].stdout)
        self.assert_dovecot_layout(None, [])


class TestServerTests(TestCase):
    """txmail.testing.TestServer serves ManageSieve on request (memory store)."""

    @defer.inlineCallbacks
    def test_testserver_managesieve(self) -> Any:
        """managesieve=True starts a listener; a script PUT over it lands in the memory store."""
        from txmail.testing import TestServer

        server = TestServer(managesieve=True)
        yield server.start()
        self.addCleanup(server.stop)
        server.add_user(USER, PASSWORD)
        plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())

        def exchange() -> bytes:
            client = RawClient(server.managesieve_address)
            client.read_until_ok()
            # plaintext_auth = loopback in the TestServer: PLAIN works without TLS on 127.0.0.1.
            client.send(
                b'AUTHENTICATE "PLAIN" "' + plain + b'"\r\nPUTSCRIPT "s" {5+}\r\nkeep;\r\nSETACTIVE "s"\r\n'
            )
            answer = client.read_until_ok() + client.read_until_ok() + client.read_until_ok()
            client.close()
            return answer

        answer = yield deferToThread(exchange)
        self.assertEqual(
            answer, b'OK "Logged in"\r\nOK "Putscript completed"\r\nOK "Setactive completed"\r\n'
        )
        store = yield server.stores.store_for(USER)
        self.assertEqual((yield store.active_script()), ("s", b"keep;"))


FILTERS = (
    'require ["copy", "fileinto", "imap4flags", "mailbox", "reject", "vacation"];\r\n'
    'if header :contains "subject" "invoice" {\r\n'
    '    redirect :copy "accounts@remote.test";\r\n'
    '    addflag "\\\\Flagged";\r\n'
    '    fileinto :create "Invoices";\r\n'
    "    stop;\r\n"
    "}\r\n"
    'if header :contains "subject" "offer" {\r\n'
    '    reject "No offers, thank you.";\r\n'
    "    stop;\r\n"
    "}\r\n"
    'vacation :days 1 :subject "Away" :addresses ["alice@example.test"] "I am away until Monday.";\r\n'
)


class UploadThenDeliverTests(TestCase):
    """
    The whole path of issue 16: a script uploaded with PyPI's sievelib over
    ManageSieve (STARTTLS), then mail delivered over SMTP is filed and flagged,
    redirected to a remote MX (a second txmail), rejected and answered as the
    script says, checked over IMAP and on the remote MX.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_upload_with_sievelib_then_deliver(self) -> Any:
        try:
            from sievelib import managesieve
        except ImportError:
            raise SkipTest("sievelib is not installed (pip install sievelib)") from None
        ca, cert, key = make_certificate(self.mktemp())
        # The remote MX the redirect goes to: a second txmail, found through a fake DNS server.
        remote = yield start_server(self, hostname="mx.remote.test", domains=["remote.test"])
        remote.directory.add_user("accounts@remote.test", PASSWORD)
        dns_host, dns_port = start_dns_server(
            self, {("remote.test", "MX"): [(10, "mx.remote.test")], ("mx.remote.test", "A"): ["127.0.0.1"]}
        )
        server = yield start_server(
            self,
            managesieve=[LOOPBACK],
            imap=[LOOPBACK],
            tls_cert=cert,
            tls_key=key,
            plaintext_auth="never",
            outbound_enabled=True,
            resolvers=[f"{dns_host}:{dns_port}"],
            relay_port=remote.address("mta")[1],
        )
        server.directory.add_user(USER, PASSWORD)
        server.directory.add_user("bob@example.test", PASSWORD)
        original = managesieve.ssllib.create_default_context
        self.patch(managesieve.ssllib, "create_default_context", lambda: original(cafile=ca))
        sieve_host, sieve_port = server.address("managesieve")
        smtp_address = server.address("mta")
        imap_address = server.address("imap")

        def upload() -> None:
            client = managesieve.Client(sieve_host, sieve_port, srvhostname="localhost")
            assert client.connect(USER, PASSWORD, starttls=True, authmech="PLAIN")
            assert client.putscript("filters", FILTERS), client.errmsg
            assert client.setactive("filters")
            client.logout()

        def send(subject: str) -> None:
            message = (
                f"From: Bob <bob@example.test>\r\nTo: Alice <{USER}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject.replace(' ', '.')}@example.test>\r\n\r\nHello.\r\n"
            )
            with smtplib.SMTP(*smtp_address, timeout=30) as s:
                s.sendmail("bob@example.test", [USER], message.encode())

        def mailbox(user: str, name: str) -> list[tuple[bytes, bytes]]:
            context = original(cafile=ca)  # ssl.create_default_context, patched for sievelib above
            imap = imaplib.IMAP4(*imap_address, timeout=30)
            imap.starttls(context)
            imap.login(user, PASSWORD)
            imap.select(f'"{name}"', readonly=True)
            _, data = imap.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT AUTO-SUBMITTED)])")
            imap.logout()
            return [(item[0], item[1]) for item in data if isinstance(item, tuple)]

        yield deferToThread(upload)
        for subject in ("invoice 42", "special offer", "lunch?"):
            yield deferToThread(send, subject)

        def delivered() -> bool:
            return len(maildir_files(server, "bob@example.test")) >= 2

        yield wait_for(delivered)
        yield wait_for(lambda: maildir_files(remote, "accounts@remote.test") != [])
        [path] = maildir_files(remote, "accounts@remote.test")
        with open(path, "rb") as f:
            redirected = f.read()
        self.assertIn(b"Subject: invoice 42", redirected)
        self.assertIn(b"X-Sieve-Redirected-From:", redirected)  # marked, so never redirected again
        invoices = yield deferToThread(mailbox, USER, "Invoices")
        self.assertEqual(len(invoices), 1)
        self.assertIn(b"\\Flagged", invoices[0][0])
        self.assertIn(b"invoice 42", invoices[0][1])
        inbox = yield deferToThread(mailbox, USER, "INBOX")
        self.assertEqual([b"lunch?" in header for _, header in inbox], [True])  # the offer was rejected
        bob = yield deferToThread(mailbox, "bob@example.test", "INBOX")
        headers = [header for _, header in bob]
        self.assertEqual(
            len(headers), 2
        )  # the rejection and one vacation reply (the invoice was filed first)
        [away] = [h for h in headers if b"Subject: Away" in h]
        self.assertIn(b"Auto-Submitted: auto-replied", away)
        [rejected] = [h for h in headers if h is not away]
        self.assertIn(b"Subject: Rejected: special offer", rejected)  # the RFC 5429 rejection (an MDN)
        self.assertIn(b"Auto-Submitted: auto-replied (rejected)", rejected)
