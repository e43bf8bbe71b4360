"""
The JMAP resources (:mod:`txmail.web.resource`) driven with ``DummyRequest``
and a ``Clock``: session, API, uploads and downloads, authentication
(Basic, bearer tokens, the plaintext policy, the shared failure delay).
"""

from __future__ import annotations

import base64
import io
import json
import urllib.parse
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from tests.webmail._requests import wire
from txmail.auth.authenticator import Authenticator
from txmail.directory import MemoryDirectory
from txmail.jmap.core import CORE, CallContext, Capability, Limits, Registry
from txmail.store.memory import MemoryProvider
from txmail.web import api, capabilities
from txmail.web.blobs import BlobStore
from txmail.web.resource import BoundedRequest, JMAPEndpoint, JMAPSite, content_disposition, root_resource
from txmail.web.tokens import TokenStore

__all__ = ["ALICE", "BOB", "TEST", "Fixture", "Request", "basic"]

ALICE = "alice@example.test"
BOB = "bob@example.test"
TEST = "urn:example:test"


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


class Request(DummyRequest):
    """A DummyRequest with a body, a client address and TLS or not."""

    def __init__(
        self,
        path: str,
        *,
        method: bytes = b"GET",
        body: bytes = b"",
        headers: dict[bytes, bytes] | None = None,
        client: str = "127.0.0.1",
        secure: bool = False,
    ) -> None:
        path, _, query = path.partition("?")
        # As twisted.web.server.Request does: each segment percent-decoded.
        super().__init__([urllib.parse.unquote_to_bytes(p) for p in path.lstrip("/").encode().split(b"/")])
        self.method = method
        self.uri = path.encode()
        self.content = io.BytesIO(body)
        self.client = IPv4Address("TCP", client, 40000)
        self.secure = secure
        for key, value in (headers or {}).items():
            self.requestHeaders.setRawHeaders(key, [value])
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            self.args.setdefault(name.encode(), []).append(urllib.parse.unquote_to_bytes(value))

    def isSecure(self) -> bool:
        return self.secure

    @property
    def body(self) -> bytes:
        return b"".join(self.written)

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: bytes) -> str | None:
        values = self.responseHeaders.getRawHeaders(name)
        return values[0].decode() if values else None


class Fixture:
    """An endpoint over a memory directory and store, with a Clock."""

    def __init__(self, case: TestCase, limits: Limits | None = None, **options: Any) -> None:
        self.clock = Clock()
        self.directory = MemoryDirectory(local_domains=["example.test"])
        self.directory.add_user(ALICE, "alice-pw")
        self.directory.add_user(BOB, "bob-pw")
        self.stores = MemoryProvider()
        self.authenticator = Authenticator(self.directory, clock=self.clock)
        self.limits = limits or Limits()
        self.registry = Registry([api.core_capability(self.limits)])
        self.states: dict[str, dict[str, str]] = {ALICE: {"Thing": "1", "Other": "1"}, BOB: {"Thing": "9"}}
        self.calls: list[CallContext] = []
        self.registry.add(
            Capability(
                urn=TEST,
                account=lambda user: {},
                methods={"Test/wait": self.wait, "Test/blobs": self.use_blob},
                states=self.get_states,
                blob=self.blob,
            )
        )
        self.waiting: list[defer.Deferred[dict[str, Any]]] = []
        self.blobs = BlobStore(case.mktemp(), now=self.clock.seconds)
        self.tokens = TokenStore(self.clock.seconds, idle_timeout=600)
        self.endpoint = JMAPEndpoint(
            registry=self.registry,
            limits=self.limits,
            authenticator=self.authenticator,
            stores=self.stores,
            blobs=self.blobs,
            tokens=self.tokens,
            clock=self.clock,
            **options,
        )
        self.root = root_resource(self.endpoint)

    def wait(self, context: CallContext, arguments: dict[str, Any]) -> defer.Deferred[dict[str, Any]]:
        d: defer.Deferred[dict[str, Any]] = defer.Deferred()
        self.waiting.append(d)
        return d

    async def use_blob(self, context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
        data = await context.blobs.get(context.account_id, arguments["blobId"])
        return {"data": None if data is None else data.decode()}

    async def get_states(self, context: CallContext) -> dict[str, str]:
        self.calls.append(context)
        return dict(self.states[context.user])

    async def blob(self, context: CallContext, blob_id: str) -> bytes | None:
        # A blob the capability gave out: only its owner's.
        return b"message of " + context.user.encode() if blob_id == "M1" else None

    def render(self, request: Request) -> Request:
        """Render *request* through the resource tree (the reactor stays the Clock)."""
        resource = getChildForRequest(self.root, request)
        result = resource.render(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
        return request

    def login(self, user: str = ALICE, password: str = "alice-pw") -> bytes:
        """Log in at /jmap/login; the ``Authorization`` value of the token."""
        request = self.render(
            Request(
                "/jmap/login",
                method=b"POST",
                body=json.dumps({"username": user, "password": password}).encode(),
                headers={b"content-type": b"application/json"},
            )
        )
        return b"Bearer " + request.json()["accessToken"].encode()

    def api(self, body: Any, auth: bytes | None = None, **kwargs: Any) -> Request:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {b"content-type": b"application/json"}
        if auth is not None:
            headers[b"authorization"] = auth
        headers.update(kwargs.pop("headers", {}))
        return self.render(Request("/jmap/api", method=b"POST", body=data, headers=headers, **kwargs))


ECHO = {"using": [CORE], "methodCalls": [["Core/echo", {"hello": True}, "c1"]]}


class SessionTests(TestCase):
    def setUp(self) -> None:
        self.web = Fixture(self)

    def test_well_known_redirects(self) -> None:
        request = self.web.render(Request("/.well-known/jmap"))
        self.assertEqual(request.responseCode, 307)
        self.assertEqual(request.header(b"location"), "/jmap/session")

    def test_session(self) -> None:
        request = Request(
            "/jmap/session",
            headers={b"authorization": basic(ALICE, "alice-pw"), b"host": b"mail.example.test:8080"},
        )
        self.web.render(request)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.header(b"cache-control"), "no-store")
        self.assertEqual(request.header(b"content-type"), "application/json")
        session = request.json()
        account = api.account_id(ALICE)
        self.assertEqual(session["username"], ALICE)
        self.assertEqual(list(session["accounts"]), [account])
        self.assertEqual(session["primaryAccounts"], {TEST: account})
        self.assertEqual(session["capabilities"][CORE], Limits().to_json())
        self.assertEqual(session["apiUrl"], "http://mail.example.test:8080/jmap/api")
        self.assertEqual(session["uploadUrl"], "http://mail.example.test:8080/jmap/upload/{accountId}/")
        self.assertTrue(session["state"])

    def test_session_https_and_bad_host(self) -> None:
        request = Request(
            "/jmap/session",
            headers={b"authorization": basic(ALICE, "alice-pw"), b"host": b"evil\r\nx"},
            secure=True,
        )
        self.web.render(request)
        self.assertEqual(request.json()["apiUrl"], "https://127.0.0.1:80/jmap/api")

    def test_unknown_resource(self) -> None:
        for path in ("/nope", "/jmap/nope", "/jmap", "/.well-known/other"):
            request = self.web.render(Request(path))
            self.assertEqual(request.responseCode, 404, path)
            self.assertEqual(request.header(b"content-type"), "application/problem+json")

    def test_wrong_method(self) -> None:
        request = self.web.render(Request("/jmap/api", headers={b"authorization": basic(ALICE, "alice-pw")}))
        self.assertEqual(request.responseCode, 405)
        self.assertEqual(request.header(b"allow"), "POST")


class AuthenticationTests(TestCase):
    def setUp(self) -> None:
        self.web = Fixture(self)

    def test_no_credentials(self) -> None:
        request = self.web.render(Request("/jmap/session"))
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.header(b"www-authenticate"), 'Basic realm="txmail", charset="UTF-8"')
        self.assertEqual(request.json()["status"], 401)

    def test_wrong_password_is_delayed_and_counted(self) -> None:
        request = self.web.render(Request("/jmap/session", headers={b"authorization": basic(ALICE, "wrong")}))
        # The authenticator's failure delay: no answer yet.
        self.assertEqual(request.finished, 0)
        self.assertEqual(self.web.authenticator.failure_count("127.0.0.1:1"), 1)
        self.web.clock.advance(self.web.authenticator.failure_delay)
        self.assertEqual(request.responseCode, 401)
        # A second failure from the same host waits longer (the IMAP/POP3 table).
        request = self.web.render(Request("/jmap/session", headers={b"authorization": basic(ALICE, "wrong")}))
        self.web.clock.advance(self.web.authenticator.failure_delay)
        self.assertEqual(request.finished, 0)
        self.web.clock.advance(self.web.authenticator.failure_delay)
        self.assertEqual(request.responseCode, 401)

    def test_malformed_basic(self) -> None:
        for value in (
            b"Basic !!!",
            b"Basic " + base64.b64encode(b"no-colon"),
            b"Basic " + base64.b64encode(b"\xff:x"),
            b"Digest x",
            b"Basic",
        ):
            request = self.web.render(Request("/jmap/session", headers={b"authorization": value}))
            self.assertEqual(request.responseCode, 401, value)

    def test_plaintext_policy(self) -> None:
        # plaintext_auth = "loopback": a remote client without TLS may not send credentials.
        request = self.web.render(
            Request("/jmap/session", headers={b"authorization": basic(ALICE, "alice-pw")}, client="192.0.2.7")
        )
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(self.web.authenticator.failure_count("192.0.2.7"), 0)
        request = self.web.render(
            Request(
                "/jmap/session",
                headers={b"authorization": basic(ALICE, "alice-pw")},
                client="192.0.2.7",
                secure=True,
            )
        )
        self.assertEqual(request.responseCode, 200)

    def test_plaintext_never(self) -> None:
        web = Fixture(self, plaintext_auth="never")
        request = web.render(Request("/jmap/session", headers={b"authorization": basic(ALICE, "alice-pw")}))
        self.assertEqual(request.responseCode, 403)
        request = web.render(
            Request("/jmap/login", method=b"POST", body=b"{}", headers={b"content-type": b"application/json"})
        )
        self.assertEqual(request.responseCode, 403)

    def test_tls_proxy(self) -> None:
        web = Fixture(self, tls_proxy=True, proxy_trusted=["10.0.0.0/8"])
        headers = {b"authorization": basic(ALICE, "wrong"), b"x-forwarded-for": b"203.0.113.1, 198.51.100.9"}
        request = web.render(Request("/jmap/session", headers=headers, client="10.1.2.3"))
        web.clock.advance(10)
        self.assertEqual(request.responseCode, 401)
        # The client the proxy names is the peer of the failure delay, not the proxy.
        self.assertEqual(web.authenticator.failure_count("198.51.100.9"), 1)
        self.assertEqual(web.authenticator.failure_count("10.1.2.3"), 0)
        headers[b"authorization"] = basic(ALICE, "alice-pw")
        request = web.render(Request("/jmap/session", headers=headers, client="10.1.2.3"))
        self.assertEqual(request.responseCode, 200)
        self.assertTrue(request.json()["apiUrl"].startswith("https://"))
        # An untrusted address is no proxy: its X-Forwarded-For is ignored, and it has no TLS.
        request = web.render(Request("/jmap/session", headers=headers, client="192.0.2.7"))
        self.assertEqual(request.responseCode, 403)
        # A proxy on a UNIX socket is on this machine: trusted.
        request = Request("/jmap/session", headers=headers)
        request.client = UNIXAddress(b"/run/txmail/jmap")
        web.render(request)
        self.assertEqual(request.responseCode, 200)
        # Without tls_proxy a UNIX socket gets no such trust (as for IMAP, it is not loopback).
        request = Request("/jmap/session", headers=headers)
        request.client = UNIXAddress(b"/run/txmail/jmap")
        self.web.render(request)
        self.assertEqual(request.responseCode, 403)

    def test_login_token_logout(self) -> None:
        web = self.web
        login = web.render(
            Request(
                "/jmap/login",
                method=b"POST",
                body=json.dumps({"username": ALICE, "password": "alice-pw"}).encode(),
                headers={b"content-type": b"application/json"},
            )
        )
        self.assertEqual(login.responseCode, 200)
        answer = login.json()
        self.assertEqual(answer["expiresIn"], 600)
        token = answer["accessToken"]
        self.assertGreaterEqual(len(token), 40)
        bearer = b"Bearer " + token.encode()
        response = web.api(ECHO, bearer)
        self.assertEqual(response.json()["methodResponses"], [["Core/echo", {"hello": True}, "c1"]])
        # The token is kept hashed.
        self.assertNotIn(token, repr(web.tokens._tokens))
        logout = web.render(Request("/jmap/logout", method=b"POST", headers={b"authorization": bearer}))
        self.assertEqual(logout.responseCode, 204)
        self.assertEqual(web.api(ECHO, bearer).responseCode, 401)
        logout = web.render(Request("/jmap/logout", method=b"POST", headers={b"authorization": bearer}))
        self.assertEqual(logout.responseCode, 401)

    def test_token_expires_when_idle(self) -> None:
        bearer = self.web.login()
        self.web.clock.advance(599)
        self.assertEqual(self.web.api(ECHO, bearer).responseCode, 200)
        self.web.clock.advance(599)  # used 599 s ago: still valid
        self.assertEqual(self.web.api(ECHO, bearer).responseCode, 200)
        self.web.clock.advance(600)
        self.assertEqual(self.web.api(ECHO, bearer).responseCode, 401)
        self.assertEqual(self.web.api(ECHO, b"Bearer made-up").responseCode, 401)

    def test_token_ends_with_password_change_or_user(self) -> None:
        bearer = self.web.login()
        bob = self.web.login(BOB, "bob-pw")
        self.assertEqual(self.web.api(ECHO, bearer).responseCode, 200)
        self.web.directory.set_password(ALICE, "new-pw")
        response = self.web.api(ECHO, bearer)
        self.assertEqual(response.responseCode, 401)
        self.assertIn("log in again", response.json()["detail"])
        # Revoked for good, even were the old password set again.
        self.assertEqual(len(self.web.tokens), 1)
        self.assertEqual(self.web.api(ECHO, bob).responseCode, 200)
        self.web.directory.delete_user(BOB)
        self.assertEqual(self.web.api(ECHO, bob).responseCode, 401)
        self.assertEqual(len(self.web.tokens), 0)
        # A new login with the new password works.
        self.assertEqual(self.web.api(ECHO, self.web.login(ALICE, "new-pw")).responseCode, 200)

    def test_login_refused(self) -> None:
        web = self.web
        for body in (b"{", b"[]", b'{"username": "x"}', b'{"username": 1, "password": "p"}'):
            request = web.render(
                Request(
                    "/jmap/login", method=b"POST", body=body, headers={b"content-type": b"application/json"}
                )
            )
            self.assertEqual(request.responseCode, 400, body)
        request = web.render(
            Request(
                "/jmap/login",
                method=b"POST",
                body=json.dumps({"username": ALICE, "password": "nope"}).encode(),
                headers={b"content-type": b"application/json"},
            )
        )
        web.clock.advance(10)
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(len(web.tokens), 0)
        self.assertEqual(web.authenticator.failure_count("127.0.0.1"), 1)


class APITests(TestCase):
    def setUp(self) -> None:
        self.web = Fixture(
            self, limits=Limits(max_size_request=500, max_concurrent_requests=2, max_calls_in_request=4)
        )
        self.auth = basic(ALICE, "alice-pw")

    def test_echo(self) -> None:
        request = self.web.api(ECHO, self.auth)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.header(b"cache-control"), "no-store")
        body = request.json()
        self.assertEqual(body["methodResponses"], [["Core/echo", {"hello": True}, "c1"]])
        session = self.web.render(Request("/jmap/session", headers={b"authorization": self.auth})).json()
        self.assertEqual(body["sessionState"], session["state"])

    def test_request_errors(self) -> None:
        cases = [
            (b"nope", {}, "notJSON"),
            (json.dumps(ECHO).encode(), {b"content-type": b"text/plain"}, "notJSON"),
            (b'{"using": []}', {}, "notRequest"),
            (json.dumps({"using": ["urn:x"], "methodCalls": []}).encode(), {}, "unknownCapability"),
            (
                json.dumps(
                    {"using": [CORE], "methodCalls": [["Core/echo", {}, str(i)] for i in range(5)]}
                ).encode(),
                {},
                "limit",
            ),
            (
                json.dumps({"using": [CORE], "methodCalls": [["Core/echo", {"x": "y" * 600}, "c"]]}).encode(),
                {},
                "limit",
            ),
        ]
        for body, headers, kind in cases:
            request = self.web.api(body, self.auth, headers=headers)
            self.assertEqual(request.responseCode, 400, body[:40])
            self.assertEqual(request.header(b"content-type"), "application/problem+json")
            self.assertEqual(request.json()["type"], "urn:ietf:params:jmap:error:" + kind)
        self.assertEqual(request.json()["limit"], "maxSizeRequest")

    def test_body_discarded_beyond_bound(self) -> None:
        request = Request(
            "/jmap/api",
            method=b"POST",
            headers={b"content-type": b"application/json", b"authorization": self.auth},
        )
        request.body_too_large = True
        self.web.render(request)
        self.assertEqual(request.json()["limit"], "maxSizeRequest")

    def test_max_concurrent_requests(self) -> None:
        wait = {"using": [TEST], "methodCalls": [["Test/wait", {}, "w"]]}
        first = self.web.api(wait, self.auth)
        second = self.web.api(wait, self.auth)
        third = self.web.api(ECHO, self.auth)
        self.assertEqual(third.responseCode, 400)
        self.assertEqual(third.json()["limit"], "maxConcurrentRequests")
        # Another user has their own count.
        self.assertEqual(self.web.api(ECHO, basic(BOB, "bob-pw")).responseCode, 200)
        self.web.waiting[0].callback({"done": 1})
        self.assertEqual(first.json()["methodResponses"], [["Test/wait", {"done": 1}, "w"]])
        self.assertEqual(self.web.api(ECHO, self.auth).responseCode, 200)
        self.web.waiting[1].errback(RuntimeError("boom"))
        self.assertEqual(second.json()["methodResponses"][0][1]["type"], "serverFail")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.web.endpoint.requests.count(ALICE), 0)


class BlobTests(TestCase):
    def setUp(self) -> None:
        self.web = Fixture(self, limits=Limits(max_size_upload=100, max_concurrent_upload=1))
        self.alice = basic(ALICE, "alice-pw")
        self.bob = basic(BOB, "bob-pw")
        self.account = api.account_id(ALICE)

    def upload(
        self, data: bytes, auth: bytes, account: str | None = None, media: bytes = b"text/plain"
    ) -> Request:
        return self.web.render(
            Request(
                f"/jmap/upload/{account or self.account}/",
                method=b"POST",
                body=data,
                headers={b"authorization": auth, b"content-type": media},
            )
        )

    def download(
        self,
        blob_id: str,
        auth: bytes,
        account: str | None = None,
        name: str = "a.txt",
        accept: str = "text/plain",
    ) -> Request:
        return self.web.render(
            Request(
                f"/jmap/download/{account or self.account}/{blob_id}/{name}?accept={accept}",
                headers={b"authorization": auth},
            )
        )

    def test_upload_then_download(self) -> None:
        request = self.upload(b"hello blob", self.alice)
        self.assertEqual(request.responseCode, 201)
        answer = request.json()
        self.assertEqual(
            {k: answer[k] for k in ("accountId", "type", "size")},
            {"accountId": self.account, "type": "text/plain", "size": 10},
        )
        download = self.download(answer["blobId"], self.alice)
        self.assertEqual(download.responseCode, 200)
        self.assertEqual(download.body, b"hello blob")
        self.assertEqual(download.header(b"content-type"), "text/plain")
        self.assertEqual(
            download.header(b"content-disposition"), "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"
        )
        self.assertEqual(download.header(b"x-content-type-options"), "nosniff")
        self.assertIn("sandbox", download.header(b"content-security-policy"))
        self.assertEqual(download.header(b"cache-control"), "no-store")
        # Methods reach the upload through context.blobs.
        response = self.web.api(
            {"using": [TEST], "methodCalls": [["Test/blobs", {"blobId": answer["blobId"]}, "b"]]}, self.alice
        )
        self.assertEqual(response.json()["methodResponses"][0][1], {"data": "hello blob"})

    def test_media_types_with_odd_blanks(self) -> None:
        """
        An ``accept`` or upload type whose blanks are not spaces or tabs
        (CR, LF, U+0085, U+00A0) is no media type: ``application/octet-stream``,
        not a failed answer or a header with them.
        """
        blob_id = self.upload(b"hello blob", self.alice).json()["blobId"]
        for accept in (
            "text/plain%A0%3Ba=b",
            "text/plain%85%3Ba=b",
            "text/plain%0D%0A%3Ba=b",
            "a/b%0B%3Bc=d",
        ):
            download = self.download(blob_id, self.alice, accept=accept)
            self.assertEqual(download.responseCode, 200, accept)
            self.assertEqual(download.header(b"content-type"), "application/octet-stream", accept)
        upload = self.upload(b"x", self.alice, media=b"text/plain\x85; a=b")
        self.assertEqual(upload.json()["type"], "application/octet-stream")
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_other_users_blob_is_not_found(self) -> None:
        blob_id = self.upload(b"alice's secret", self.alice).json()["blobId"]
        bob_account = api.account_id(BOB)
        # Bob asks in Alice's account: 404, as for a blob that does not exist.
        self.assertEqual(self.download(blob_id, self.bob).responseCode, 404)
        # Bob asks in his own account for Alice's blob id: not there either.
        self.assertEqual(self.download(blob_id, self.bob, account=bob_account).responseCode, 404)
        # Bob cannot upload into Alice's account.
        self.assertEqual(self.upload(b"x", self.bob).responseCode, 404)
        # Nor do methods see it.
        response = self.web.api(
            {"using": [TEST], "methodCalls": [["Test/blobs", {"blobId": blob_id}, "b"]]}, self.bob
        )
        self.assertEqual(response.json()["methodResponses"][0][1], {"data": None})

    def test_capability_blob(self) -> None:
        download = self.download("M1", self.alice, name="mail.eml", accept="message/rfc822")
        self.assertEqual(download.body, b"message of " + ALICE.encode())
        self.assertEqual(download.header(b"content-type"), "message/rfc822")
        self.assertEqual(
            self.download("M1", self.bob, account=api.account_id(BOB)).body, b"message of " + BOB.encode()
        )
        self.assertEqual(self.download("M2", self.alice).responseCode, 404)

    def test_bad_blob_ids_and_names(self) -> None:
        for blob_id in ("..", "a.b", "%2e%2e"):
            self.assertEqual(self.download(blob_id, self.alice).responseCode, 404, blob_id)
        request = self.web.render(
            Request(f"/jmap/download/{self.account}/M1", headers={b"authorization": self.alice})
        )
        self.assertEqual(request.responseCode, 404)
        download = self.download(
            "M1", self.alice, name="r%C3%A9sum%C3%A9%22%0d.pdf", accept="text/html%0d%0aX: y"
        )
        self.assertEqual(
            download.header(b"content-disposition"),
            "attachment; filename=\"r_sum___.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%22%0D.pdf",
        )
        self.assertEqual(download.header(b"content-type"), "application/octet-stream")

    def test_upload_limits(self) -> None:
        request = self.upload(b"x" * 101, self.alice)
        self.assertEqual(request.responseCode, 413)
        self.assertEqual(request.json()["limit"], "maxSizeUpload")
        request = self.upload(b"x" * 100, self.alice, media=b"bogus")
        self.assertEqual(request.responseCode, 201)
        self.assertEqual(request.json()["type"], "application/octet-stream")

    def test_max_concurrent_upload(self) -> None:
        slow: list[defer.Deferred[Any]] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            slow.append(d)
            return d.addCallback(lambda _: fn(*args))

        self.web.blobs.run_blocking = run_blocking
        first = self.upload(b"one", self.alice)
        second = self.upload(b"two", self.alice)
        self.assertEqual(second.responseCode, 400)
        self.assertEqual(second.json()["limit"], "maxConcurrentUpload")
        slow[0].callback(None)
        self.assertEqual(first.responseCode, 201)
        self.assertEqual(self.web.endpoint.uploads.count(ALICE), 0)

    def test_content_disposition(self) -> None:
        self.assertEqual(
            content_disposition("a b.txt"), b"attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"
        )
        self.assertEqual(
            content_disposition('x"\\y'), b"attachment; filename=\"x__y\"; filename*=UTF-8''x%22%5Cy"
        )


class SiteTests(TestCase):
    def wire(self, site: JMAPSite, data: bytes) -> bytes:
        """What *site* answers the raw HTTP request *data* (one connection)."""
        return wire(self, site, data)

    def test_method_not_allowed(self) -> None:
        """
        A method a resource has no ``render_*`` for is 405 with ``Allow``,
        also for a URI that is not ASCII (twisted.web's own 405 page fails
        on it) and ``HEAD`` of a resource without ``GET``.
        """
        site = JMAPSite(Fixture(self).endpoint)
        for data, allow in (
            (b"POST /.well-known/jmap?\xa0 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", b"GET, HEAD"),
            (b"POST /?\x85 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n", b"GET, HEAD"),
            (b"HEAD /webmail/login HTTP/1.1\r\nHost: h\r\n\r\n", b"POST"),
            (b"HEAD /webmail HTTP/1.1\r\nHost: h\r\n\r\n", b""),
        ):
            answer = self.wire(site, data)
            self.assertTrue(answer.startswith(b"HTTP/1.1 405 "), (data, answer[:100]))
            self.assertIn(b"\r\nAllow: " + allow + b"\r\n", answer)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_post_content_type_not_parsed(self) -> None:
        """
        A POST body is not parsed as a form: its Content-Type reaches the
        resource, even one Python's e-mail parser raises on or is slow with.
        """
        site = JMAPSite(Fixture(self).endpoint)
        auth = basic(ALICE, "alice-pw")
        for ctype in (b"text/plain; a*", b"application/json\x0b; a=b", b"a/b; a=" + b'"' * 16_000):
            answer = self.wire(
                site,
                b"POST /jmap/api HTTP/1.1\r\nHost: h\r\nAuthorization: "
                + auth
                + b"\r\nContent-Type: "
                + ctype
                + b"\r\nContent-Length: 2\r\n\r\n{}",
            )
            self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), (ctype[:30], answer[:100]))
            self.assertIn(b"urn:ietf:params:jmap:error:not", answer)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_bounded_request(self) -> None:
        web = Fixture(self, limits=Limits(max_size_request=10, max_size_upload=20))
        site = JMAPSite(web.endpoint)
        site.max_body = 20
        channel = DummyChannel()
        channel.site = site
        # A declared length beyond the bound: nothing is kept.
        request = BoundedRequest(channel)
        request.gotLength(21)
        request.handleContentChunk(b"x" * 21)
        self.assertTrue(request.body_too_large)
        self.assertEqual(request.content.read(), b"")
        # Chunked (no length): kept up to the bound, then dropped.
        request = BoundedRequest(channel)
        request.gotLength(None)
        request.handleContentChunk(b"x" * 15)
        self.assertFalse(request.body_too_large)
        request.handleContentChunk(b"x" * 6)
        self.assertTrue(request.body_too_large)
        request = BoundedRequest(channel)
        request.gotLength(20)
        request.handleContentChunk(b"y" * 20)
        self.assertFalse(request.body_too_large)
        request.content.seek(0)
        self.assertEqual(request.content.read(), b"y" * 20)

    def test_body_bound(self) -> None:
        web = Fixture(self, limits=Limits(max_size_request=1000, max_size_upload=2000))
        site = JMAPSite(web.endpoint)
        self.assertEqual(site.max_body, 16_384)
        self.assertEqual(site.displayTracebacks, False)

    def test_capabilities_function(self) -> None:
        self.assertEqual(
            [c.urn for c in capabilities(None)],
            [CORE, "urn:ietf:params:jmap:mail", "urn:ietf:params:jmap:submission"],
        )


class SendJSONTests(TestCase):
    def test_lone_surrogate_replaced(self) -> None:
        """A lone surrogate left in an answer is sent as U+FFFD (pairs as their character), not a failed answer."""
        from txmail.web.resource import send_json

        request = DummyRequest([b""])
        send_json(request, 200, {"subject": "a\ud800b", "pair": "\ud83d\ude00"})
        body = b"".join(request.written)
        self.assertEqual(json.loads(body), {"subject": "a\ufffdb", "pair": "\U0001f600"})
        self.assertEqual(request.responseCode, 200)
