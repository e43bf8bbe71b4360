"""
End to end: the JMAP endpoint of a real server (``build_service`` through
``txmail.testing.TestServer(web=True)`` and the e2e helper) over real HTTP
on 127.0.0.1: the session resource, ``Core/echo``, upload then download,
tokens, the failure delay shared with IMAP, and push of an SMTP delivery.
"""

from __future__ import annotations

import base64
import imaplib
import io
import json
import smtplib
import time
from typing import Any

from twisted.internet import defer, protocol, reactor
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from tests.e2e._server import start_server
from txmail.jmap.core import CORE, Capability, Registry
from txmail.testing import TestServer
from txmail.web import api

ALICE = "alice@example.test"
BOB = "bob@example.test"
PASSWORD = "alice secret"
STATES = "urn:example:states"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class HTTP:
    """A small HTTP client over ``Agent`` with a persistent pool closed at the end of the test."""

    def __init__(self, test: TestCase, host: str, port: int) -> None:
        self.base = f"http://{host}:{port}"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)
        test.addCleanup(self.pool.closeCachedConnections)

    async def request(
        self, method: str, path: str, body: bytes | None = None, **headers: str
    ) -> tuple[int, Headers, bytes]:
        url = path if path.startswith("http") else self.base + path
        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        raw = Headers({k.replace("_", "-").encode(): [v.encode()] for k, v in headers.items()})
        response = await self.agent.request(method.encode(), url.encode(), raw, producer)
        data = await readBody(response)
        return response.code, response.headers, data

    async def json(self, method: str, path: str, document: Any = None, **headers: str) -> tuple[int, Any]:
        body = None if document is None else json.dumps(document).encode()
        if body is not None:
            headers.setdefault("content_type", "application/json")
        code, _, data = await self.request(method, path, body, **headers)
        return code, json.loads(data) if data else None


class EventCollector(protocol.Protocol):
    """Reads an event stream; :meth:`next_event` fires with each ``state`` event's data."""

    def __init__(self) -> None:
        self.buffer = b""
        self.events: list[Any] = []
        self.waiting: list[defer.Deferred[Any]] = []
        self.lost: defer.Deferred[None] = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\n\n" in self.buffer:
            block, self.buffer = self.buffer.split(b"\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in block.decode().splitlines() if not line.startswith(":")
            )
            if fields.get("event") == "state":
                self.events.append(json.loads(fields["data"]))
                if self.waiting:
                    self.waiting.pop(0).callback(self.events[-1])

    def next_event(self, timeout: float) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.waiting.append(d)
        return d.addTimeout(timeout, reactor)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


async def open_stream(http: HTTP, url: str, auth: str) -> EventCollector:
    response = await http.agent.request(b"GET", url.encode(), Headers({b"authorization": [auth.encode()]}))
    collector = EventCollector()
    if response.code != 200:
        raise AssertionError(f"event source answered {response.code}")
    response.deliverBody(collector)
    return collector


class TestServerWebTests(TestCase):
    """``TestServer(web=True)``: what a test author gets."""

    timeout = 30

    async def asyncSetUp(self) -> None:
        self.server = TestServer(web=True)
        await self.server.start()
        self.addCleanup(self.server.stop)
        self.server.add_user(ALICE, PASSWORD)
        self.server.add_user(BOB, "bob secret")
        self.http = HTTP(self, *self.server.web_address)

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.asyncSetUp())

    async def test_session_echo_upload_download(self) -> None:
        http = self.http
        auth = basic(ALICE, PASSWORD)
        code, headers, _ = await http.request("GET", "/.well-known/jmap")
        self.assertEqual(code, 307)
        self.assertEqual(headers.getRawHeaders(b"location"), [b"/jmap/session"])

        code, session = await http.json("GET", "/jmap/session", authorization=auth)
        self.assertEqual(code, 200)
        host, port = self.server.web_address
        self.assertEqual(session["apiUrl"], f"http://{host}:{port}/jmap/api")
        self.assertEqual(session["username"], ALICE)
        account = api.account_id(ALICE)
        self.assertEqual(list(session["accounts"]), [account])
        self.assertIn(CORE, session["capabilities"])

        request = {"using": [CORE], "methodCalls": [["Core/echo", {"hello": True, "high": 5}, "b3ff"]]}
        code, response = await http.json("POST", session["apiUrl"], request, authorization=auth)
        self.assertEqual(code, 200)
        self.assertEqual(response["methodResponses"], [["Core/echo", {"hello": True, "high": 5}, "b3ff"]])
        self.assertEqual(response["sessionState"], session["state"])

        upload_url = session["uploadUrl"].replace("{accountId}", account)
        code, _, data = await http.request(
            "POST", upload_url, b"%PDF-1.4 not really\r\n", authorization=auth, content_type="application/pdf"
        )
        self.assertEqual(code, 201)
        blob = json.loads(data)
        self.assertEqual((blob["accountId"], blob["type"], blob["size"]), (account, "application/pdf", 21))

        download_url = (
            session["downloadUrl"]
            .replace("{accountId}", account)
            .replace("{blobId}", blob["blobId"])
            .replace("{name}", "r%C3%A9sum%C3%A9.pdf")
            .replace("{type}", "application/pdf")
        )
        code, headers, data = await http.request("GET", download_url, authorization=auth)
        self.assertEqual(code, 200)
        self.assertEqual(data, b"%PDF-1.4 not really\r\n")
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/pdf"])
        self.assertEqual(
            headers.getRawHeaders(b"content-disposition"),
            [b"attachment; filename=\"r_sum_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"],
        )
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])

        # Bob gets a 404, in Alice's account or his own.
        code, _, _ = await http.request("GET", download_url, authorization=basic(BOB, "bob secret"))
        self.assertEqual(code, 404)
        bob_url = download_url.replace(account, api.account_id(BOB))
        code, _, _ = await http.request("GET", bob_url, authorization=basic(BOB, "bob secret"))
        self.assertEqual(code, 404)

    async def test_token_login(self) -> None:
        http = self.http
        code, answer = await http.json("POST", "/jmap/login", {"username": ALICE, "password": PASSWORD})
        self.assertEqual(code, 200)
        bearer = "Bearer " + answer["accessToken"]
        code, session = await http.json("GET", "/jmap/session", authorization=bearer)
        self.assertEqual((code, session["username"]), (200, ALICE))
        code, _, _ = await http.request("POST", "/jmap/logout", authorization=bearer)
        self.assertEqual(code, 204)
        code, _, _ = await http.request("GET", "/jmap/session", authorization=bearer)
        self.assertEqual(code, 401)

    async def test_failure_delay_shared_with_imap(self) -> None:
        service = self.server.service
        assert service is not None
        authenticator = service.authenticator
        authenticator.failure_delay = 0.01
        self.assertIs(service.listeners_for("imap")[0].factory.authenticator, authenticator)
        code, headers, _ = await self.http.request(
            "GET", "/jmap/session", authorization=basic(ALICE, "wrong")
        )
        self.assertEqual(code, 401)
        self.assertEqual(
            headers.getRawHeaders(b"www-authenticate"), [b'Basic realm="mx.example.test", charset="UTF-8"']
        )
        # The HTTP failure counts against the peer in the table IMAP's LOGIN uses.
        self.assertEqual(authenticator.failure_count("127.0.0.1"), 1)
        authenticator.failure_delay = 0.2

        def imap_login() -> float:
            client = imaplib.IMAP4(*self.server.imap_address, timeout=10)
            try:
                started = time.monotonic()
                with self.assertRaises(imaplib.IMAP4.error):
                    client.login(ALICE, "wrong again")
                return time.monotonic() - started
            finally:
                client.logout()

        # The next IMAP failure from the same address is the second: twice the delay.
        elapsed = await deferToThread(imap_login)
        self.assertGreaterEqual(elapsed, 0.35)
        self.assertEqual(authenticator.failure_count("127.0.0.1"), 2)
        # A success over HTTP starts the count over for IMAP too.
        code, _, _ = await self.http.request("GET", "/jmap/session", authorization=basic(ALICE, PASSWORD))
        self.assertEqual(code, 200)
        self.assertEqual(authenticator.failure_count("127.0.0.1"), 0)


class PushTests(TestCase):
    """A delivery over SMTP reaches a connected EventSource client (Maildir store, build_service)."""

    timeout = 30

    async def asyncSetUp(self) -> None:
        self.server = await start_server(self, web=["tcp:0:interface=127.0.0.1"])
        self.server.directory.add_user(ALICE, PASSWORD)
        site = self.server.listeners_for("web")[0].factory
        registry: Registry = site.endpoint.registry

        async def states(context: Any) -> dict[str, str]:
            box = await context.store.get_mailbox("INBOX")
            status = await box.status()
            return {"Email": str(status.highest_modseq), "Mailbox": "constant"}

        registry.add(Capability(urn=STATES, states=states))
        self.http = HTTP(self, *self.server.address("web"))

    def setUp(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self.asyncSetUp())

    def send(self) -> None:
        with smtplib.SMTP(*self.server.address("mta"), timeout=10) as client:
            client.sendmail("bob@remote.test", [ALICE], b"Subject: push\r\n\r\nhello\r\n")

    async def test_delivery_is_pushed(self) -> None:
        auth = basic(ALICE, PASSWORD)
        code, session = await self.http.json("GET", "/jmap/session", authorization=auth)
        self.assertEqual(code, 200)
        url = (
            session["eventSourceUrl"]
            .replace("{types}", "Email")
            .replace("{closeafter}", "no")
            .replace("{ping}", "60")
        )
        stream = await open_stream(self.http, url, auth)
        account = api.account_id(ALICE)
        first = await stream.next_event(5)
        self.assertEqual(list(first["changed"]), [account])
        before = first["changed"][account]["Email"]
        pushed = stream.next_event(5)
        await deferToThread(self.send)
        sent = time.monotonic()
        event = await pushed
        self.assertLess(time.monotonic() - sent, 1.0)
        self.assertEqual(event["@type"], "StateChange")
        # Only the type that changed, only the type asked for.
        self.assertEqual(list(event["changed"][account]), ["Email"])
        self.assertNotEqual(event["changed"][account]["Email"], before)
        stream.transport.stopProducing()
        await stream.lost
