"""The webmail's resources (txmail.webmail.resource): headers, files, the session endpoints, the reading frame."""

from __future__ import annotations

import configparser
import fnmatch
import json
import os
import re
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from tests.webmail._requests import Request, render
from txmail.webmail import resource as webmail
from txmail.webmail import sanitize
from txmail.webmail.session import csrf_token

HOST = b"mail.example.test"
MESSAGE = (
    b"From: a@example.test\r\nSubject: s\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
    b'<p>hello</p><script>document.title="owned"</script><img src="http://127.0.0.1:9/t.png">\r\n'
)


class FakeTokens:
    """The part of the JMAP endpoint's token store the webmail uses."""

    idle_timeout = 1800.0

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def issue(self, user: str) -> str:
        token = f"tok{len(self.tokens)}"
        self.tokens[token] = user
        return token

    def user_for(self, token: str) -> str | None:
        return self.tokens.get(token)

    def revoke(self, token: str) -> bool:
        return self.tokens.pop(token, None) is not None


def _policy(value: str | None) -> dict[str, str]:
    assert value is not None
    return {d.split()[0]: " ".join(d.split()[1:]) for d in (p.strip() for p in value.split(";")) if d}


class ResourceTestCase(TestCase):
    def setUp(self) -> None:
        self.tokens = FakeTokens()
        self.checked: list[tuple[str, str, str]] = []
        self.blobs: dict[tuple[str, str, str], bytes] = {("alice@example.test", "A1", "B1"): MESSAGE}
        self.root = Resource()
        self.app = webmail.mount(
            self.root, tokens=self.tokens, check_password=self.check_password, fetch_blob=self.fetch_blob
        )

    def check_password(self, request: Any, username: str, password: str) -> defer.Deferred[str | None]:
        self.checked.append((username, password, request.method.decode()))
        return defer.succeed("alice@example.test" if (username, password) == ("alice", "secret") else None)

    async def fetch_blob(self, user: str, account_id: str, blob_id: str) -> bytes | None:
        return self.blobs.get((user, account_id, blob_id))

    def get(self, path: bytes, **kwargs: Any) -> defer.Deferred[Request]:
        kwargs.setdefault("headers", {b"host": HOST})
        return render(self.root, Request(path, **kwargs))

    def post(self, path: bytes, body: Any = None, **kwargs: Any) -> defer.Deferred[Request]:
        headers = {b"host": HOST, b"content-type": b"application/json"}
        headers.update(kwargs.pop("headers", {}))
        return render(
            self.root, Request(path, b"POST", body=json.dumps(body).encode(), headers=headers, **kwargs)
        )

    def assertSecure(self, request: Request, *, frame: bool = False) -> None:
        self.assertEqual(request.header(b"x-content-type-options"), "nosniff")
        self.assertEqual(request.header(b"referrer-policy"), "no-referrer")
        self.assertEqual(request.header(b"x-frame-options"), "SAMEORIGIN" if frame else "DENY")
        policy = request.header(b"content-security-policy")
        assert policy is not None
        self.assertNotIn("unsafe-eval", policy)
        if not frame:
            self.assertNotIn("unsafe-inline", policy)
            self.assertEqual(_policy(policy)["frame-ancestors"], "'none'")


class StaticTests(ResourceTestCase):
    @defer.inlineCallbacks
    def test_page_at_root(self) -> Any:
        request = yield self.get(b"/")
        self.assertSecure(request)
        self.assertEqual(request.header(b"content-type"), "text/html; charset=utf-8")
        self.assertIn(b'<script type="module" src="/webmail/static/js/app.js">', request.body())
        policy = _policy(request.header(b"content-security-policy"))
        self.assertEqual(policy["default-src"], "'self'")
        self.assertEqual(policy["script-src"], "'self'")
        self.assertEqual(policy["frame-src"], "'self'")
        self.assertEqual(policy["img-src"], "'self'")
        self.assertEqual(policy["object-src"], "'none'")

    @defer.inlineCallbacks
    def test_files(self) -> Any:
        for path, ctype in (
            (b"/webmail/static/js/app.js", "text/javascript; charset=utf-8"),
            (b"/webmail/static/style.css", "text/css; charset=utf-8"),
        ):
            request = yield self.get(path)
            self.assertSecure(request)
            self.assertEqual(request.header(b"content-type"), ctype)
            self.assertTrue(request.body())

    @defer.inlineCallbacks
    def test_unknown_files(self) -> Any:
        for path in (b"/webmail/static/nope.js", b"/webmail/static/../resource.py", b"/webmail/other"):
            request = yield self.get(path)
            self.assertEqual(request.responseCode, 404, path)
            self.assertSecure(request)

    def test_page_needs_nothing_inline(self) -> None:
        """The page works under its policy: no inline script, style or handler; no HTML parsing of data in JS."""
        files = self.app.files
        index = files["index.html"][0].decode()
        for tag in re.findall(r"<script\b[^>]*>", index):
            self.assertIn("src=", tag)
        self.assertNotIn("<style", index)
        self.assertIsNone(re.search(r"\s(on\w+|style)=", index))
        referenced = re.findall(r'(?:src|href)="/webmail/static/([^"]+)"', index)
        self.assertEqual(sorted(set(referenced) - set(files)), [])
        imports = set()
        for name, (body, _) in files.items():
            if name.endswith(".js"):
                text = body.decode()
                for bad in (
                    "innerHTML",
                    "outerHTML",
                    "insertAdjacentHTML",
                    "document.write",
                    "eval(",
                    "new Function",
                ):
                    self.assertNotIn(bad, text, name)
                imports.update("js/" + m for m in re.findall(r'from "\./([\w.]+)"', text))
        self.assertEqual(sorted(imports - set(files)), [])

    def test_files_are_package_data(self) -> None:
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        config = configparser.ConfigParser()
        config.read(os.path.join(root, "setup.cfg"))
        patterns = config["options.package_data"]["txmail.webmail"].split()
        self.assertEqual(
            [f for f in self.app.files if not any(fnmatch.fnmatch("static/" + f, p) for p in patterns)], []
        )
        self.assertIn("txmail.webmail", config["options"]["packages"].split())


class MethodTests(ResourceTestCase):
    @defer.inlineCallbacks
    def test_method_not_allowed(self) -> Any:
        """A method a resource does not serve, HEAD of one without GET too: 405 with Allow and the usual headers."""
        for path, method, allow in (
            (b"/webmail/login", b"HEAD", "POST"),
            (b"/webmail/logout", b"HEAD", "POST"),
            (b"/webmail", b"HEAD", ""),
            (b"/webmail/static", b"HEAD", ""),
            (b"/webmail/session", b"PUT", "GET, HEAD"),
            (b"/", b"POST", "GET, HEAD"),
        ):
            request = yield self.get(path, method=method)
            self.assertEqual(request.responseCode, 405, (path, method))
            self.assertEqual(request.header(b"allow"), allow, (path, method))
            self.assertSecure(request)


class LoginTests(ResourceTestCase):
    @defer.inlineCallbacks
    def test_login(self) -> Any:
        request = yield self.post(b"/webmail/login", {"username": "alice", "password": "secret"})
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.header(b"cache-control"), "no-store")
        [token] = self.tokens.tokens
        answer = request.json()
        self.assertEqual(answer["username"], "alice@example.test")
        self.assertEqual(answer["csrfToken"], csrf_token(token))
        self.assertEqual(answer["html"], sanitize.AVAILABLE)
        self.assertEqual(answer["expiresIn"], 1800)
        self.assertNotIn(token, request.body().decode())
        [cookie] = request.cookies()
        self.assertEqual(cookie, f"txmail_session={token}; Max-Age=1800; Path=/; HttpOnly; SameSite=Strict")

    @defer.inlineCallbacks
    def test_login_over_tls(self) -> Any:
        request = yield self.post(b"/webmail/login", {"username": "alice", "password": "secret"}, secure=True)
        [cookie] = request.cookies()
        self.assertTrue(cookie.endswith("; Secure"))

    @defer.inlineCallbacks
    def test_wrong_password(self) -> Any:
        request = yield self.post(b"/webmail/login", {"username": "alice", "password": "nope"})
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.cookies(), [])
        self.assertEqual(self.tokens.tokens, {})

    @defer.inlineCallbacks
    def test_form_post_refused(self) -> Any:
        """A cross-site form can post only form encodings: refused before the password is checked."""
        request = yield self.post(
            b"/webmail/login",
            {"username": "alice", "password": "secret"},
            headers={b"content-type": b"application/x-www-form-urlencoded"},
        )
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(self.checked, [])

    @defer.inlineCallbacks
    def test_cross_origin_refused(self) -> Any:
        request = yield self.post(
            b"/webmail/login",
            {"username": "alice", "password": "secret"},
            headers={b"origin": b"https://evil.test"},
        )
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(self.checked, [])

    @defer.inlineCallbacks
    def test_bad_bodies(self) -> Any:
        for body in (
            {"username": "alice"},
            {"username": 1, "password": "x"},
            ["alice", "secret"],
            "x" * 20000,
        ):
            request = yield self.post(b"/webmail/login", body)
            self.assertEqual(request.responseCode, 400, body)
        self.assertEqual(self.checked, [])

    @defer.inlineCallbacks
    def test_unparsable_bodies(self) -> Any:
        """JSON nested too deeply, or a lone surrogate in a field: 400, not a failure."""
        for body in (b"[" * 100_000, b'{"username": "\\ud800", "password": "x"}'):
            request = yield render(
                self.root,
                Request(
                    b"/webmail/login",
                    b"POST",
                    body=body,
                    headers={b"host": HOST, b"content-type": b"application/json"},
                ),
            )
            self.assertEqual(request.responseCode, 400, body[:20])
        self.assertEqual(self.checked, [])


class SessionTests(ResourceTestCase):
    @defer.inlineCallbacks
    def test_session(self) -> Any:
        token = self.tokens.issue("alice@example.test")
        request = yield self.get(b"/webmail/session", cookie=token)
        self.assertEqual(request.responseCode, 200)
        self.assertEqual(request.json()["csrfToken"], csrf_token(token))
        self.assertEqual(request.json()["username"], "alice@example.test")
        # The cookie lasts another idle timeout.
        self.assertIn("Max-Age=1800", request.cookies()[0])

    @defer.inlineCallbacks
    def test_no_session(self) -> Any:
        request = yield self.get(b"/webmail/session")
        self.assertEqual(request.responseCode, 401)
        self.assertEqual(request.cookies(), [])

    @defer.inlineCallbacks
    def test_expired_session(self) -> Any:
        request = yield self.get(b"/webmail/session", cookie="gone")
        self.assertEqual(request.responseCode, 401)
        [cookie] = request.cookies()
        self.assertIn("Max-Age=0", cookie)

    @defer.inlineCallbacks
    def test_logout(self) -> Any:
        token = self.tokens.issue("alice@example.test")
        request = yield self.post(
            b"/webmail/logout", {}, cookie=token, headers={b"x-csrf-token": csrf_token(token).encode()}
        )
        self.assertEqual(request.responseCode, 200)
        self.assertIsNone(self.tokens.user_for(token))
        self.assertIn("Max-Age=0", request.cookies()[0])

    @defer.inlineCallbacks
    def test_logout_needs_csrf_token(self) -> Any:
        token = self.tokens.issue("alice@example.test")
        request = yield self.post(b"/webmail/logout", {}, cookie=token)
        self.assertEqual(request.responseCode, 403)
        self.assertEqual(self.tokens.user_for(token), "alice@example.test")
        self.assertEqual(request.cookies(), [])


class RenderTests(ResourceTestCase):
    def setUp(self) -> None:
        super().setUp()
        if not sanitize.AVAILABLE:
            raise self.skipTest("nh3 is not installed")
        self.token = self.tokens.issue("alice@example.test")

    @defer.inlineCallbacks
    def test_render(self) -> Any:
        request = yield self.get(b"/webmail/render/A1/B1", cookie=self.token)
        self.assertEqual(request.responseCode or 200, 200)
        self.assertSecure(request, frame=True)
        self.assertEqual(request.header(b"content-security-policy"), sanitize.frame_policy(False))
        self.assertEqual(request.header(b"cache-control"), "private, no-store")
        body = request.body().decode()
        self.assertIn("<p>hello</p>", body)
        self.assertNotIn("owned", body)
        self.assertNotIn("127.0.0.1", body)

    @defer.inlineCallbacks
    def test_render_with_images(self) -> Any:
        request = yield self.get(b"/webmail/render/A1/B1?images=1", cookie=self.token)
        self.assertEqual(request.header(b"content-security-policy"), sanitize.frame_policy(True))
        self.assertIn('src="http://127.0.0.1:9/t.png"', request.body().decode())

    @defer.inlineCallbacks
    def test_render_needs_session(self) -> Any:
        for cookie in (None, "gone"):
            request = yield self.get(b"/webmail/render/A1/B1", cookie=cookie)
            self.assertEqual(request.responseCode, 401)
            self.assertNotIn(b"hello", request.body())

    @defer.inlineCallbacks
    def test_render_other_users_blob(self) -> Any:
        bob = self.tokens.issue("bob@example.test")
        request = yield self.get(b"/webmail/render/A1/B1", cookie=bob)
        self.assertEqual(request.responseCode, 404)

    @defer.inlineCallbacks
    def test_render_unknown(self) -> Any:
        for path in (b"/webmail/render/A1/B2", b"/webmail/render/A1", b"/webmail/render/A1/B1/x"):
            request = yield self.get(path, cookie=self.token)
            self.assertEqual(request.responseCode, 404, path)


class WithoutNh3Tests(ResourceTestCase):
    """Without nh3 the page is told to show text parts only, and the frame shows nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.patch(sanitize, "AVAILABLE", False)
        self.token = self.tokens.issue("alice@example.test")

    @defer.inlineCallbacks
    def test_session_says_no_html(self) -> Any:
        request = yield self.get(b"/webmail/session", cookie=self.token)
        self.assertIs(request.json()["html"], False)

    @defer.inlineCallbacks
    def test_no_render(self) -> Any:
        request = yield self.get(b"/webmail/render/A1/B1", cookie=self.token)
        self.assertEqual(request.responseCode, 404)
        self.assertNotIn(b"hello", request.body())
