"""
The webmail's twisted.web resources.

:func:`mount` puts them into the JMAP endpoint's site:

* ``/``: the page (``static/index.html``);
* ``/webmail/static/...``: its style sheet and JavaScript modules (package
  data of :mod:`txmail.webmail`, read once);
* ``POST /webmail/login``, ``GET /webmail/session``, ``POST /webmail/logout``:
  the cookie session (:mod:`txmail.webmail.session`);
* ``GET /webmail/render/ACCOUNT/BLOB[?images=1]``: the sanitized HTML body
  of a message, for the reading frame (:mod:`txmail.webmail.sanitize`).

Every answer carries strict headers (:func:`secure_headers`): the page's
Content-Security-Policy (:data:`PAGE_POLICY`) allows scripts, styles,
connections, images and frames from its own origin only, with no inline
script or style and no ``eval``; the reading frame's document has its own,
stricter one (:func:`txmail.webmail.sanitize.frame_policy`).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from txmail.web._base import Resource
from txmail.webmail import sanitize
from txmail.webmail.session import (
    clear_cookie,
    cookie_bearer,
    cookie_token,
    csrf_token,
    same_origin,
    set_cookie,
)

if TYPE_CHECKING:
    from txmail.web.resource import JMAPEndpoint

__all__ = [
    "PAGE_POLICY",
    "FetchBlob",
    "PasswordNotAllowed",
    "WebmailResource",
    "mount",
    "mount_endpoint",
    "secure_headers",
]

log = Logger()

#: The Content-Security-Policy of the page and its files.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; frame-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)

#: ``fetch_blob(user, account_id, blob_id) -> Awaitable[bytes | None]``: the
#: octets of a blob of *user*'s account, as the download endpoint gives them.
FetchBlob = Callable[[str, str, str], Awaitable["bytes | None"]]

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".svg": b"image/svg+xml",
}

_MAX_LOGIN_BODY = 16 * 1024


def secure_headers(
    request: Any, policy: str = PAGE_POLICY, *, frame_options: bytes = b"DENY", cache: bytes = b"no-cache"
) -> None:
    """Set the security headers every webmail answer carries."""
    headers = request.responseHeaders
    headers.setRawHeaders(b"Content-Security-Policy", [policy.encode("ascii")])
    headers.setRawHeaders(b"X-Content-Type-Options", [b"nosniff"])
    headers.setRawHeaders(b"Referrer-Policy", [b"no-referrer"])
    headers.setRawHeaders(b"X-Frame-Options", [frame_options])
    headers.setRawHeaders(b"Cross-Origin-Opener-Policy", [b"same-origin"])
    headers.setRawHeaders(b"Cross-Origin-Resource-Policy", [b"same-origin"])
    headers.setRawHeaders(b"Cache-Control", [cache])


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    """path under static/ -> (octets, content type) of every file the page uses."""
    files: dict[str, tuple[bytes, bytes]] = {}
    root = resources.files("txmail.webmail") / "static"

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            for suffix, ctype in _TYPES.items():
                if child.name.endswith(suffix):
                    files[name] = (child.read_bytes(), ctype)

    walk(root, "")
    return files


class _Resource(Resource):
    """A webmail resource: its 405 answer (:meth:`Resource.not_allowed`) carries the headers of every answer."""

    def not_allowed(self, request: Any) -> bytes:
        request.setHeader(b"allow", b", ".join(self.allowed_methods()))
        return _json(request, 405, {"error": "method not allowed"})


class _Static(_Resource):
    """One static file."""

    isLeaf = True

    def __init__(self, body: bytes, ctype: bytes) -> None:
        super().__init__()
        self.body = body
        self.ctype = ctype

    def render_GET(self, request: Any) -> bytes:
        secure_headers(request)
        request.setHeader(b"Content-Type", self.ctype)
        return self.body


class _StaticDirectory(_Resource):
    """``/webmail/static/``: the files by path; nothing else."""

    def __init__(self, files: dict[str, tuple[bytes, bytes]]) -> None:
        super().__init__()
        self.files = files

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        rest = [path, *request.postpath]
        name = b"/".join(rest).decode("utf-8", "replace")
        found = self.files.get(name)
        if found is None:
            return _NotFound()
        request.postpath = []
        return _Static(*found)


class _NotFound(Resource):
    """Anything the webmail does not serve: 404, with the headers of every answer."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        return _json(request, 404, {"error": "not found"})


def _json(request: Any, code: int, body: Any) -> bytes:
    secure_headers(request, cache=b"no-store")
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode("utf-8")


def _run(request: Any, work: Coroutine[Any, Any, bytes]) -> int:
    """Answer *request* with what the coroutine *work* returns."""
    finished = [False]
    request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))

    def done(body: bytes) -> None:
        if not finished[0]:
            request.write(body)
            request.finish()

    def failed(failure: Any) -> None:
        log.failure("webmail request {uri} failed", failure, uri=request.uri)
        if not finished[0]:
            request.write(_json(request, 500, {"error": "server error"}))
            request.finish()

    defer.ensureDeferred(work).addCallbacks(done, failed)
    return server.NOT_DONE_YET


class _Endpoint(_Resource):
    """A webmail endpoint of the JSON API: shares the session's parts."""

    isLeaf = True

    def __init__(self, app: WebmailResource) -> None:
        super().__init__()
        self.app = app

    async def user(self, request: Any, token: str | None) -> str | None:
        """The user the request's cookie (holding *token*) logs in, or ``None``."""
        return None if token is None else await self.app.token_user(request, token)

    def answer(self, request: Any, user: str, token: str) -> dict[str, Any]:
        # Sliding expiry: the cookie lasts as long as the token's idle timeout.
        set_cookie(request, token, self.app.tokens.idle_timeout, secure=self.app.secure(request))
        return {
            "username": user,
            "csrfToken": csrf_token(token),
            "html": sanitize.AVAILABLE,
            "expiresIn": int(self.app.tokens.idle_timeout),
        }


class _Login(_Endpoint):
    """``POST /webmail/login`` with ``{"username", "password"}`` (JSON)."""

    def render_POST(self, request: Any) -> Any:
        ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
        # A cross-site form cannot send JSON; a cross-site script cannot
        # send it without a preflight, which nothing here answers.
        if ctype != b"application/json" or not same_origin(request):
            return _json(request, 403, {"error": "forbidden"})
        body = request.content.read(_MAX_LOGIN_BODY + 1)
        try:
            if len(body) > _MAX_LOGIN_BODY:
                raise ValueError("too large")
            fields = json.loads(body)
            username, password = fields["username"], fields["password"]
            if not isinstance(username, str) or not isinstance(password, str) or not username:
                raise ValueError("not strings")
            # A lone surrogate (an escaped half of a pair) is no character:
            # UnicodeEncodeError, a ValueError, before the authenticator trips on it.
            username.encode("utf-8")
            password.encode("utf-8")
        except (ValueError, KeyError, TypeError, RecursionError):
            # RecursionError: JSON nested deeper than the parser goes.
            return _json(request, 400, {"error": "username and password expected"})
        return _run(request, self._login(request, username, password))

    async def _login(self, request: Any, username: str, password: str) -> bytes:
        try:
            user = await self.app.check_password(request, username, password)
        except PasswordNotAllowed:
            return _json(request, 403, {"error": "passwords are accepted over TLS only"})
        if user is None:
            return _json(request, 401, {"error": "wrong user name or password"})
        token = await self.app.issue_token(user)
        if token is None:  # the user went away meanwhile
            return _json(request, 401, {"error": "wrong user name or password"})
        return _json(request, 200, self.answer(request, user, token))


class _Session(_Endpoint):
    """``GET /webmail/session``: who the cookie logs in, and the CSRF token."""

    def render_GET(self, request: Any) -> Any:
        return _run(request, self._session(request))

    async def _session(self, request: Any) -> bytes:
        token = cookie_token(request)
        user = await self.user(request, token)
        if user is None or token is None:
            if token is not None:
                clear_cookie(request, secure=self.app.secure(request))
            return _json(request, 401, {"error": "not logged in"})
        return _json(request, 200, self.answer(request, user, token))


class _Logout(_Endpoint):
    """``POST /webmail/logout``: revoke the cookie's token (CSRF-checked)."""

    def render_POST(self, request: Any) -> bytes:
        if cookie_token(request) is None:
            return _json(request, 200, {"loggedOut": True})
        token = cookie_bearer(request)
        if token is None:
            return _json(request, 403, {"error": "CSRF check failed"})
        self.app.tokens.revoke(token)
        clear_cookie(request, secure=self.app.secure(request))
        return _json(request, 200, {"loggedOut": True})


class _Render(_Endpoint):
    """``GET /webmail/render/ACCOUNT/BLOB[?images=1]``: the reading frame's document."""

    def render_GET(self, request: Any) -> Any:
        return _run(request, self._render(request))

    async def _render(self, request: Any) -> bytes:
        user = await self.user(request, cookie_token(request))
        if user is None:
            return _json(request, 401, {"error": "not logged in"})
        if len(request.postpath) != 2 or not all(request.postpath):
            return _json(request, 404, {"error": "not found"})
        account_id, blob_id = (part.decode("utf-8", "replace") for part in request.postpath)
        images = request.args.get(b"images", [b"0"])[0] == b"1"
        if not sanitize.AVAILABLE:
            return _json(request, 404, {"error": "HTML mail is not shown: nh3 is not installed"})
        raw = await self.app.fetch_blob(user, account_id, blob_id)
        if raw is None:
            return _json(request, 404, {"error": "no such message"})
        rendered: sanitize.Rendered = await self.app.run_blocking(
            partial(sanitize.render_message, remote_images=images), raw
        )
        if rendered.html is None:
            return _json(request, 404, {"error": "the message has no HTML body"})
        secure_headers(
            request, sanitize.frame_policy(images), frame_options=b"SAMEORIGIN", cache=b"private, no-store"
        )
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return rendered.html.encode("utf-8")


class PasswordNotAllowed(Exception):
    """A password may not be sent here (``[server] plaintext_auth``): the login is refused with 403."""


def _inline(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    # run_blocking runs plain functions (the sanitizing): their value or exception becomes the Deferred.
    return defer.maybeDeferred(fn, *args)


class WebmailResource(_Resource):
    """
    ``/webmail``: the page's files and its session and rendering endpoints.

    Args:
        tokens: the JMAP endpoint's bearer token store (``issue(user)``,
            ``user_for(token)``, ``revoke(token)``, ``idle_timeout``).
        issue_token: ``issue_token(user) -> Awaitable[str | None]``: a new
            token for *user* (``None`` if the user is gone); default
            ``tokens.issue``.
        token_user: ``token_user(request, token) -> Awaitable[str | None]``:
            the user a cookie holding *token* logs in, or ``None``; default
            ``tokens.user_for``.
        check_password: ``check_password(request, username, password) ->
            Awaitable[str | None]``: the canonical user, or ``None`` when the
            password is wrong; raises :class:`PasswordNotAllowed` where
            passwords may not travel (no TLS).
        fetch_blob: the octets of a blob of a user's account (:data:`FetchBlob`).
        run_blocking: ``run_blocking(fn, *args) -> Deferred``
            for the sanitizing (the server's thread pool); default inline.
        secure: ``secure(request) -> bool``: whether the browser reached
            the server over TLS (the cookie is then ``Secure``); default
            ``request.isSecure()``.
    """

    def __init__(
        self,
        *,
        tokens: Any,
        check_password: Callable[..., Any],
        fetch_blob: FetchBlob,
        run_blocking: Callable[..., Any] | None = None,
        secure: Callable[[Any], bool] | None = None,
        issue_token: Callable[[str], Awaitable[str | None]] | None = None,
        token_user: Callable[[Any, str], Awaitable[str | None]] | None = None,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.check_password = check_password
        self.fetch_blob = fetch_blob
        self.run_blocking = run_blocking or _inline
        self.secure = secure or (lambda request: bool(request.isSecure()))
        self.issue_token = issue_token or self._issue_token
        self.token_user = token_user or self._token_user
        self.files = _load_static()
        self.index = _Static(*self.files["index.html"])
        self.putChild(b"static", _StaticDirectory(self.files))
        self.putChild(b"login", _Login(self))
        self.putChild(b"session", _Session(self))
        self.putChild(b"logout", _Logout(self))
        self.putChild(b"render", _Render(self))

    async def _issue_token(self, user: str) -> str | None:
        return str(self.tokens.issue(user))

    async def _token_user(self, request: Any, token: str) -> str | None:
        user = self.tokens.user_for(token)
        return None if user is None else str(user)

    def getChild(self, path: bytes, request: Any) -> resource.Resource:
        return _NotFound()


def mount(root: resource.Resource, **kwargs: Any) -> WebmailResource:
    """Serve the webmail in the site whose root resource is *root*: ``/`` and ``/webmail``."""
    app = WebmailResource(**kwargs)
    root.putChild(b"", app.index)
    root.putChild(b"webmail", app)
    return app


def mount_endpoint(root: resource.Resource, endpoint: JMAPEndpoint) -> WebmailResource:
    """
    Serve the webmail in the site of the JMAP endpoint *endpoint* (a
    :class:`txmail.web.resource.JMAPEndpoint`) whose root resource is
    *root*: its token store, its authenticator under its plaintext policy
    (as ``/jmap/login``), its notion of TLS (a TLS-terminating proxy counts)
    and its blobs.
    """
    from txmail.auth.sasl import password_auth_allowed
    from txmail.web.api import RequestError, account_id

    async def check_password(request: Any, username: str, password: str) -> str | None:
        client = endpoint.client(request)
        if not password_auth_allowed(
            tls=client.secure, plaintext_policy=endpoint.plaintext_auth, loopback=client.loopback
        ):
            raise PasswordNotAllowed()
        user = await endpoint.authenticator.check_password(username, password, peer=client.peer)
        endpoint.metrics.auth("PASSWORD", user is not None)
        return user

    async def fetch_blob(user: str, account: str, blob_id: str) -> bytes | None:
        if account != account_id(user):
            return None
        context = await endpoint.context(user)
        for capability in endpoint.capabilities:
            if capability.blob is not None:
                data = await capability.blob(context, blob_id)
                if data is not None:
                    return bytes(data)
        return None

    async def issue_token(user: str) -> str | None:
        # As /jmap/login: the token carries the stamp of the user's credentials.
        stamp = await endpoint.credential_stamp(user)
        return None if stamp is None else str(endpoint.tokens.issue(user, stamp))

    async def token_user(request: Any, token: str) -> str | None:
        # The endpoint's own check of the cookie's token (for a GET, which
        # needs no CSRF token): expiry, credentials changed, TLS policy.
        try:
            user = await endpoint.authenticate(request)
        except RequestError:
            return None
        # A request that also has an Authorization header is judged by it:
        # the cookie's token must still be the same user's.
        return user if endpoint.tokens.user_for(token) == user else None

    server = endpoint.server
    return mount(
        root,
        tokens=endpoint.tokens,
        check_password=check_password,
        fetch_blob=fetch_blob,
        run_blocking=getattr(server, "run_blocking", None),
        secure=lambda request: bool(endpoint.client(request).secure),
        issue_token=issue_token,
        token_user=token_user,
    )
