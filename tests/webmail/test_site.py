"""
The webmail in the JMAP endpoint's site, over real HTTP (http.client in a
thread): the page at ``/``, the cookie login, and the endpoint accepting the
cookie with the CSRF token and refusing it without.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from txmail.testing import TestServer
from txmail.webmail import sanitize

ALICE = "alice@example.test"
USING = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]


class Response:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self) -> Any:
        return json.loads(self.body)


class SiteTests(TestCase):
    timeout = 60

    async def asyncSetUp(self) -> None:
        self.server = TestServer(web=True)
        await self.server.start()
        self.addCleanup(self.server.stop)
        self.server.add_user(ALICE, "secret")
        self.host, self.port = self.server.web_address

    def setUp(self) -> Any:
        from twisted.internet import defer

        return defer.Deferred.fromCoroutine(self.asyncSetUp())

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        def run() -> Response:
            connection = http.client.HTTPConnection(self.host, self.port, timeout=10)
            try:
                data = None if body is None else json.dumps(body).encode()
                sent = {"Content-Type": "application/json"} if body is not None else {}
                sent.update(headers or {})
                connection.request(method, path, data, sent)
                return Response(connection.getresponse())
            finally:
                connection.close()

        return threads.deferToThread(run)

    async def login(self) -> tuple[str, str]:
        response = await self.request("POST", "/webmail/login", {"username": ALICE, "password": "secret"})
        self.assertEqual(response.status, 200)
        cookie = response.headers["Set-Cookie"].split(";")[0]
        return cookie, response.json()["csrfToken"]

    async def test_page(self) -> None:
        response = await self.request("GET", "/")
        self.assertEqual(response.status, 200)
        self.assertIn(b"/webmail/static/js/app.js", response.body)
        self.assertIn("frame-ancestors 'none'", response.headers["Content-Security-Policy"])
        self.assertEqual(response.headers["X-Frame-Options"], "DENY")
        script = await self.request("GET", "/webmail/static/js/jmap.js")
        self.assertEqual(script.status, 200)
        self.assertEqual(script.headers["Content-Type"], "text/javascript; charset=utf-8")

    async def test_cookie_authenticates_the_endpoint(self) -> None:
        cookie, csrf = await self.login()
        session = await self.request("GET", "/jmap/session", headers={"Cookie": cookie})
        self.assertEqual(session.status, 200)
        self.assertEqual(session.json()["username"], ALICE)
        account = session.json()["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        call = {"using": USING, "methodCalls": [["Mailbox/get", {"accountId": account, "ids": None}, "0"]]}
        good = await self.request("POST", "/jmap/api", call, {"Cookie": cookie, "X-CSRF-Token": csrf})
        self.assertEqual(good.status, 200)
        self.assertEqual(good.json()["methodResponses"][0][0], "Mailbox/get")
        same_origin = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": f"http://{self.host}:{self.port}"}
        self.assertEqual((await self.request("POST", "/jmap/api", call, same_origin)).status, 200)
        # Without the CSRF token, with a wrong one or from another origin: not authenticated.
        for headers in (
            {"Cookie": cookie},
            {"Cookie": cookie, "X-CSRF-Token": csrf[:-1] + ("0" if csrf[-1] != "0" else "1")},
            {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.test"},
            {"Cookie": cookie, "X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"},
        ):
            refused = await self.request("POST", "/jmap/api", call, headers)
            self.assertEqual(refused.status, 401, headers)
            upload = await self.request("POST", f"/jmap/upload/{account}/", "x", headers)
            self.assertEqual(upload.status, 401, headers)

    async def test_logout_revokes(self) -> None:
        cookie, csrf = await self.login()
        out = await self.request("POST", "/webmail/logout", {}, {"Cookie": cookie, "X-CSRF-Token": csrf})
        self.assertEqual(out.status, 200)
        self.assertIn("Max-Age=0", out.headers["Set-Cookie"])
        self.assertEqual((await self.request("GET", "/jmap/session", headers={"Cookie": cookie})).status, 401)
        self.assertEqual(
            (await self.request("GET", "/webmail/session", headers={"Cookie": cookie})).status, 401
        )

    async def test_password_change_ends_the_session(self) -> None:
        """The cookie's token is checked as the endpoint checks a bearer token: a new password ends it."""
        cookie, _ = await self.login()
        self.assertEqual(
            (await self.request("GET", "/webmail/session", headers={"Cookie": cookie})).status, 200
        )
        self.server.directory.set_password(ALICE, "changed")
        session = await self.request("GET", "/webmail/session", headers={"Cookie": cookie})
        self.assertEqual(session.status, 401)
        self.assertIn("Max-Age=0", session.headers["Set-Cookie"])
        self.assertEqual((await self.request("GET", "/jmap/session", headers={"Cookie": cookie})).status, 401)

    async def test_wrong_password(self) -> None:
        response = await self.request("POST", "/webmail/login", {"username": ALICE, "password": "nope"})
        self.assertEqual(response.status, 401)
        self.assertIsNone(response.headers["Set-Cookie"])

    async def test_render_a_delivered_message(self) -> None:
        if not sanitize.AVAILABLE:
            raise self.skipTest("nh3 is not installed")
        import smtplib

        message = (
            b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: html\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html\r\n\r\n<p>hi</p><script>alert(1)</script>\r\n"
        )

        def send() -> None:
            with smtplib.SMTP(*self.server.smtp_address, timeout=10) as client:
                client.sendmail("bob@example.test", [ALICE], message)

        await threads.deferToThread(send)
        cookie, csrf = await self.login()
        session = (await self.request("GET", "/jmap/session", headers={"Cookie": cookie})).json()
        account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        call = {
            "using": USING,
            "methodCalls": [
                ["Email/query", {"accountId": account}, "0"],
                [
                    "Email/get",
                    {
                        "accountId": account,
                        "#ids": {"resultOf": "0", "name": "Email/query", "path": "/ids"},
                        "properties": ["blobId"],
                    },
                    "1",
                ],
            ],
        }
        answer = await self.request("POST", "/jmap/api", call, {"Cookie": cookie, "X-CSRF-Token": csrf})
        [email] = answer.json()["methodResponses"][1][1]["list"]
        path = f"/webmail/render/{account}/{email['blobId']}"
        frame = await self.request("GET", path, headers={"Cookie": cookie})
        self.assertEqual(frame.status, 200)
        self.assertIn(b"<p>hi</p>", frame.body)
        self.assertNotIn(b"alert", frame.body)
        self.assertEqual(frame.headers["Content-Security-Policy"], sanitize.frame_policy(False))
        # Another account's id, or no cookie: nothing.
        self.assertEqual(
            (
                await self.request("GET", path.replace(account, "a" + "0" * 24), headers={"Cookie": cookie})
            ).status,
            404,
        )
        self.assertEqual((await self.request("GET", path)).status, 401)
