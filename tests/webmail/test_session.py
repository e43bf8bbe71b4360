"""The webmail's cookie and its CSRF check (txmail.webmail.session)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from tests.webmail._requests import Request
from txmail.webmail import session

TOKEN = "abcDEF012-_xyz"
HOST = b"mail.example.test:8080"


def post(**kwargs: object) -> Request:
    headers = {b"host": HOST}
    headers.update(kwargs.pop("headers", {}))  # type: ignore[arg-type]
    return Request(b"/jmap/api", b"POST", headers=headers, **kwargs)  # type: ignore[arg-type]


class CsrfTokenTests(SynchronousTestCase):
    def test_stable_per_token(self) -> None:
        self.assertEqual(session.csrf_token(TOKEN), session.csrf_token(TOKEN))
        self.assertNotEqual(session.csrf_token(TOKEN), session.csrf_token(TOKEN + "x"))
        self.assertNotIn(TOKEN, session.csrf_token(TOKEN))


class CookieBearerTests(SynchronousTestCase):
    def test_no_cookie(self) -> None:
        self.assertIsNone(session.cookie_bearer(Request(b"/jmap/session")))

    def test_other_cookies(self) -> None:
        request = Request(b"/jmap/session", headers={b"cookie": b"other=1; txmail_sessionx=2"})
        self.assertIsNone(session.cookie_bearer(request))

    def test_get_needs_no_csrf_token(self) -> None:
        request = Request(b"/jmap/session", cookie=TOKEN, headers={b"cookie": b"theme=dark"})
        self.assertEqual(session.cookie_bearer(request), TOKEN)
        self.assertEqual(session.cookie_bearer(Request(b"/x", b"HEAD", cookie=TOKEN)), TOKEN)

    def test_malformed_cookie(self) -> None:
        request = Request(b"/jmap/session", headers={b"cookie": b"txmail_session=a%20b;"})
        self.assertIsNone(session.cookie_bearer(request))

    def test_post_without_csrf_token(self) -> None:
        self.assertIsNone(session.cookie_bearer(post(cookie=TOKEN)))

    def test_post_with_wrong_csrf_token(self) -> None:
        wrong = session.csrf_token(TOKEN + "x")
        self.assertIsNone(
            session.cookie_bearer(post(cookie=TOKEN, headers={b"x-csrf-token": wrong.encode()}))
        )

    def test_post_with_csrf_token(self) -> None:
        good = session.csrf_token(TOKEN).encode()
        self.assertEqual(session.cookie_bearer(post(cookie=TOKEN, headers={b"x-csrf-token": good})), TOKEN)
        same = {
            b"x-csrf-token": good,
            b"origin": b"http://mail.example.test:8080",
            b"sec-fetch-site": b"same-origin",
        }
        self.assertEqual(session.cookie_bearer(post(cookie=TOKEN, headers=same)), TOKEN)
        for method in (b"PUT", b"DELETE", b"PATCH"):
            request = Request(b"/x", method, cookie=TOKEN, headers={b"host": HOST})
            self.assertIsNone(session.cookie_bearer(request))

    def test_cross_origin_refused_even_with_token(self) -> None:
        good = session.csrf_token(TOKEN).encode()
        for headers in (
            {b"origin": b"http://evil.test"},
            {b"origin": b"http://mail.example.test:9999"},
            {b"origin": b"null"},
            {b"origin": b"http://[mail.example.test:8080"},  # not a URL: no exception, refused
            {b"origin": b"http://[]mail.example.test:8080"},
            {b"sec-fetch-site": b"cross-site"},
            {b"sec-fetch-site": b"same-site"},
        ):
            headers[b"x-csrf-token"] = good
            self.assertIsNone(session.cookie_bearer(post(cookie=TOKEN, headers=headers)), headers)


class CookieTests(SynchronousTestCase):
    def attributes(self, cookie: str) -> tuple[str, set[str]]:
        first, *rest = (part.strip() for part in cookie.split(";"))
        return first, set(rest)

    def test_set_cookie(self) -> None:
        request = Request()
        session.set_cookie(request, TOKEN, 3600)
        [cookie] = request.cookies()
        value, attributes = self.attributes(cookie)
        self.assertEqual(value, f"txmail_session={TOKEN}")
        self.assertEqual(attributes, {"Max-Age=3600", "Path=/", "HttpOnly", "SameSite=Strict"})

    def test_secure_over_tls(self) -> None:
        request = Request(secure=True)
        session.set_cookie(request, TOKEN, 60)
        [cookie] = request.cookies()
        self.assertIn("Secure", self.attributes(cookie)[1])

    def test_clear_cookie(self) -> None:
        request = Request()
        session.clear_cookie(request)
        [cookie] = request.cookies()
        value, attributes = self.attributes(cookie)
        self.assertEqual(value, "txmail_session=")
        self.assertIn("Max-Age=0", attributes)
