"""
The webmail's login session: a cookie holding a bearer token, and the
CSRF check of every state-changing request made with it.

The browser logs in at ``POST /webmail/login`` (:mod:`txmail.webmail.resource`);
the answer sets the cookie :data:`COOKIE_NAME` to a bearer token of the
JMAP endpoint's token store (``HttpOnly``, ``SameSite=Strict``, ``Path=/``,
``Secure`` over TLS, ``Max-Age`` the tokens' idle timeout) and carries, in
its JSON body, the session's CSRF token: an HMAC of the bearer token under
a key of this process (:func:`csrf_token`).  The page keeps the CSRF token
in memory (it never sees the bearer token) and sends it in the
``X-CSRF-Token`` header of every request that is not a ``GET`` or ``HEAD``.

:func:`cookie_bearer` is what the JMAP endpoint's authentication asks when
a request has no ``Authorization`` header: the bearer token of the cookie,
but for a state-changing method only when

* the ``X-CSRF-Token`` header matches the cookie's token (compared in
  constant time), and
* the ``Origin`` header, when sent, names the host the request was sent to,
  and ``Sec-Fetch-Site``, when sent, says ``same-origin``.

``SameSite=Strict`` already keeps the cookie off cross-site requests in
current browsers; the CSRF token is the check that does not depend on the
browser.  ``GET`` requests (the session resource, downloads, the
EventSource) change nothing and need no token, which an ``EventSource``
could not send anyway.

This module is sans-IO: it reads and writes request headers only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "COOKIE_NAME",
    "CSRF_HEADER",
    "SAFE_METHODS",
    "clear_cookie",
    "cookie_authorization",
    "cookie_bearer",
    "cookie_token",
    "csrf_ok",
    "csrf_token",
    "set_cookie",
]

COOKIE_NAME = b"txmail_session"
CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = frozenset({b"GET", b"HEAD"})

_TOKEN_CHARACTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# The key of the CSRF tokens: a restart changes it, as it drops the bearer
# tokens (they live in memory).
_KEY = secrets.token_bytes(32)


def csrf_token(bearer: str) -> str:
    """The CSRF token of the session whose cookie holds *bearer*."""
    return hmac.new(
        _KEY, b"txmail-webmail-csrf\0" + bearer.encode("utf-8", "surrogatepass"), hashlib.sha256
    ).hexdigest()


def _header(request: Any, name: bytes) -> str | None:
    value = request.getHeader(name)
    if value is None:
        return None
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def cookie_token(request: Any) -> str | None:
    """The bearer token the request's cookie holds, or ``None``."""
    token: bytes | None = None
    for header in request.requestHeaders.getRawHeaders(b"cookie", []):
        for pair in header.split(b";"):
            name, _, value = pair.strip().partition(b"=")
            if name == COOKIE_NAME:
                token = value.strip()
    if not token:
        return None
    # Tokens are URL-safe Base64: anything else is not one.
    if not all(c in _TOKEN_CHARACTERS for c in token):
        return None
    return token.decode("ascii")


def same_origin(request: Any) -> bool:
    """
    Whether the browser says the request comes from the page's own origin:
    ``Origin`` (when sent) names the request's ``Host``, and
    ``Sec-Fetch-Site`` (when sent) is ``same-origin``.
    """
    site = _header(request, b"sec-fetch-site")
    if site is not None and site.strip().lower() != "same-origin":
        return False
    origin = _header(request, b"origin")
    if origin is None:
        return True
    host = _header(request, b"host")
    if host is None or origin.strip() == "null":
        return False
    try:
        netloc = urlsplit(origin.strip()).netloc
    except ValueError:  # not a URL (a bracketed host that is not an address): another origin
        return False
    return netloc.lower() == host.strip().lower()


def csrf_ok(request: Any, bearer: str) -> bool:
    """Whether a state-changing *request* made with the cookie holding *bearer* passes the CSRF check."""
    sent = _header(request, CSRF_HEADER)
    if not sent or not same_origin(request):
        return False
    return hmac.compare_digest(sent.strip().encode("utf-8", "replace"), csrf_token(bearer).encode("ascii"))


def cookie_bearer(request: Any) -> str | None:
    """
    The bearer token to authenticate *request* with from the webmail's
    cookie: ``None`` when there is none, or when the method changes state
    and the CSRF check fails.  The caller checks the token itself (its
    token store), as it does a token of an ``Authorization`` header.
    """
    token = cookie_token(request)
    if token is None:
        return None
    if request.method not in SAFE_METHODS and not csrf_ok(request, token):
        return None
    return token


def _cookie(request: Any, value: str, max_age: int, secure: bool | None) -> None:
    attributes = [f"Max-Age={max_age}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if secure if secure is not None else request.isSecure():
        attributes.append("Secure")
    request.responseHeaders.addRawHeader(
        b"Set-Cookie", "; ".join([f"{COOKIE_NAME.decode('ascii')}={value}", *attributes]).encode("ascii")
    )


def set_cookie(request: Any, bearer: str, max_age: float, *, secure: bool | None = None) -> None:
    """
    Set the session cookie to *bearer*, for *max_age* seconds; ``Secure``
    when *secure* (default: when *request* came over TLS).
    """
    _cookie(request, bearer, max(1, int(max_age)), secure)


def clear_cookie(request: Any, *, secure: bool | None = None) -> None:
    """Remove the session cookie."""
    _cookie(request, "", 0, secure)


def cookie_authorization(request: Any) -> bytes | None:
    """
    The ``Authorization`` header value (``Bearer TOKEN``) the webmail's
    cookie stands for (:func:`cookie_bearer`), or ``None``: what the JMAP
    endpoint's authentication uses when a request has no such header.
    """
    token = cookie_bearer(request)
    return None if token is None else b"Bearer " + token.encode("ascii")
