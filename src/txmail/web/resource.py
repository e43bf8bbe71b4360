"""
The JMAP endpoint on twisted.web (RFC 8620): resources, authentication,
and the ``Site`` a ``[web] listen`` listener serves.

Resources (under the listener's root)::

    GET  /.well-known/jmap                  307 to /jmap/session (section 2.2)
    GET  /jmap/session                      the session object (section 2)
    POST /jmap/api                          API requests (section 3)
    POST /jmap/upload/{accountId}/          uploads (section 6.1)
    GET  /jmap/download/{accountId}/{blobId}/{name}?accept={type}   (section 6.2)
    GET  /jmap/eventsource?types=&closeafter=&ping=                 push (section 7.3)
    POST /jmap/login                        {"username", "password"} -> {"accessToken", "expiresIn"}
    POST /jmap/logout                       revokes the bearer token it is sent with

Authentication (every resource but the well-known redirect and login):
``Authorization: Basic`` with a user's password, checked by the server's
:class:`txmail.auth.authenticator.Authenticator` (the users, the failure
delay and the peer table of IMAP and POP3), or ``Authorization: Bearer``
with a token from ``/jmap/login`` (:mod:`txmail.web.tokens`), valid while
the user exists with the password they logged in with.  Credentials
travel without TLS only where ``[server] plaintext_auth`` allows it, as for
IMAP and POP3; a connection from a ``[server] proxy_trusted`` address (or
over a UNIX socket) counts as TLS when ``[web] tls_proxy`` says a
TLS-terminating proxy sits in front, and its last ``X-Forwarded-For``
address is the peer.  Anything else
is answered 401 with ``WWW-Authenticate: Basic``.

Every response is private: ``Cache-Control: no-store`` and
``X-Content-Type-Options: nosniff``; errors are RFC 7807 problem details.
Another user's account or blob is a 404, the same answer as a blob that
does not exist.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from txmail._protocol import format_peer, is_loopback
from txmail.auth.authenticator import Authenticator
from txmail.auth.sasl import PlaintextPolicy, password_auth_allowed
from txmail.interfaces import IMailStoreProvider
from txmail.jmap.core import CallContext, Capability, Limits, Registry
from txmail.metrics import NULL_PROTOCOL_METRICS
from txmail.mime import without_lone_surrogates
from txmail.service import MailServer
from txmail.web import api
from txmail.web._base import Resource
from txmail.web.blobs import BlobStore, UploadStorageFull
from txmail.web.push import EventStream, parse_push_query
from txmail.web.tokens import TokenStore
from txmail.webmail.resource import mount_endpoint
from txmail.webmail.session import cookie_authorization

# Authenticator and MailServer are imported at run time, not only for type checking: the API
# documentation evaluates the signatures' annotations (else a short name such as
# Limits is ambiguous).

__all__ = ["JMAPEndpoint", "JMAPSite", "build_site", "read_body"]

#: Octets of a login request body.
MAX_LOGIN_BODY = 16_384
# Blanks are spaces and tabs only (RFC 9110 OWS): ``\s`` would let CR, LF and
# non-ASCII spaces (U+0085, U+00A0) into a Content-Type header.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
    r"(?:[ \t]*;[ \t]*[A-Za-z0-9!#$&^_.+-]{1,64}=[A-Za-z0-9!#$&^_.+-]{1,64})*"
)
_HOST = re.compile(r"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")


class Unauthorized(api.RequestError):
    """No valid credentials: 401 with a ``WWW-Authenticate`` challenge."""

    def __init__(self, detail: str = "Authentication is required.") -> None:
        super().__init__("about:blank", 401, detail)


def _problem(status: int, detail: str) -> api.RequestError:
    return api.RequestError("about:blank", status, detail)


@dataclass(frozen=True, slots=True)
class Client:
    """Where a request comes from: the peer (for logs and the failure delay), TLS, loopback."""

    peer: str
    secure: bool
    loopback: bool


def _in_networks(host: str, networks: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in networks)


class JMAPEndpoint:
    """
    What the JMAP resources share: the registry, authentication, limits,
    the upload store, the tokens, the counters of requests and streams.

    Args:
        registry: the capabilities served (:func:`txmail.web.capabilities`).
        limits: the core limits.
        authenticator: checks passwords (``check_password(user, password,
            peer=...) -> Deferred[str | None]``).
        stores: the :class:`txmail.interfaces.IMailStoreProvider`.
        blobs: the :class:`txmail.web.blobs.BlobStore`.
        tokens: the :class:`txmail.web.tokens.TokenStore`.
        clock: the reactor.
        server: the :class:`txmail.service.MailServer` methods see as
            ``context.server`` (``None`` in tests).
        plaintext_auth: ``[server] plaintext_auth``.
        tls_proxy: a TLS-terminating proxy from *proxy_trusted* sits in front.
        proxy_trusted: the proxies' networks (``[server] proxy_trusted``).
        max_event_streams: open event streams one user may hold.
        realm: the realm of the Basic challenge.
    """

    log = Logger()
    #: Counts password checks (:mod:`txmail.metrics`; the no-op counters unless metrics are on).
    metrics: Any = NULL_PROTOCOL_METRICS

    def __init__(
        self,
        *,
        registry: Registry,
        limits: Limits,
        authenticator: Authenticator,
        stores: IMailStoreProvider,
        blobs: BlobStore,
        tokens: TokenStore,
        clock: IReactorTime,
        server: MailServer | None = None,
        plaintext_auth: PlaintextPolicy = "loopback",
        tls_proxy: bool = False,
        proxy_trusted: Sequence[str] = (),
        max_event_streams: int = 8,
        realm: str = "txmail",
    ) -> None:
        self.registry = registry
        self.limits = limits
        self.authenticator = authenticator
        self.stores = stores
        self.blobs = blobs
        self.tokens = tokens
        self.clock = clock
        self.server = server
        self.plaintext_auth = plaintext_auth
        self.tls_proxy = tls_proxy
        self.proxy_trusted = [ipaddress.ip_network(n, strict=False) for n in proxy_trusted]
        self.max_event_streams = max_event_streams
        self.realm = realm.replace('"', "")
        self.requests = api.RequestCounter(limits.max_concurrent_requests)
        self.uploads = api.RequestCounter(limits.max_concurrent_upload)
        self.streams = api.RequestCounter(max_event_streams)

    @property
    def capabilities(self) -> list[Capability]:
        return list(self.registry.capabilities.values())

    # -- who is asking --

    def client(self, request: Any) -> Client:
        """The :class:`Client` of *request*."""
        address = request.getClientAddress()
        host = str(getattr(address, "host", "") or "")
        port = getattr(address, "port", "")
        secure = bool(request.isSecure())
        # A UNIX socket's peer is on this machine: a proxy's, as the PROXY listeners trust it.
        on_socket = not hasattr(address, "host")
        if self.tls_proxy and (on_socket or _in_networks(host, self.proxy_trusted)):
            secure = True
            forwarded = request.getHeader(b"x-forwarded-for")
            if forwarded:
                last = forwarded.decode("latin-1").split(",")[-1].strip()
                if _in_networks(last, [ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")]):
                    host, port = last, ""
        peer = format_peer(host, port) if port != "" else host
        return Client(peer, secure, is_loopback(host))

    async def authenticate(self, request: Any) -> str:
        """
        The canonical user *request* authenticates as.

        Raises:
            Unauthorized: no credentials, or wrong ones (after the
                authenticator's failure delay for a wrong password).
            RequestError: 403 when credentials may not travel without TLS here.
        """
        header = request.getHeader(b"authorization") or cookie_authorization(request)
        if not header:
            raise Unauthorized()
        client = self.client(request)
        if not password_auth_allowed(
            tls=client.secure, plaintext_policy=self.plaintext_auth, loopback=client.loopback
        ):
            raise _problem(403, "Credentials are accepted over TLS only.")
        scheme, _, value = header.decode("latin-1").strip().partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer":
            found = self.tokens.lookup(value)
            if found is None:
                raise Unauthorized("The access token is not valid (expired or revoked).")
            user, stamp = found
            if await self.credential_stamp(user) != stamp:
                # The password changed since the login, or the user is gone.
                self.tokens.revoke(value)
                raise Unauthorized("The access token is no longer valid; log in again.")
            return user
        if scheme != "basic":
            raise Unauthorized("Use Basic or Bearer authentication.")
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise Unauthorized("The Basic credentials are malformed.") from None
        username, sep, password = decoded.partition(":")
        if not sep or not username:
            raise Unauthorized("The Basic credentials are malformed.")
        checked = await self.authenticator.check_password(username, password, peer=client.peer)
        self.metrics.auth("BASIC", checked is not None)
        if checked is None:
            raise Unauthorized("The user name or password is wrong.")
        return checked

    async def credential_stamp(self, user: str) -> str | None:
        """
        A digest of *user*'s stored credentials (it changes with the
        password), or ``None`` when the user no longer exists.
        """
        try:
            credentials = await self.authenticator.directory.get_credentials(user)
        except Exception:
            self.log.failure("directory lookup failed for {user}", user=user)
            raise _problem(503, "The user directory is not available; try again later.") from None
        if credentials is None:
            return None
        digest = hashlib.sha256(credentials.salt + b"\0" + credentials.stored_key)
        return digest.hexdigest()[:32]

    async def context(self, user: str) -> CallContext:
        """The call context of *user* (their store opened)."""
        try:
            store = await self.stores.store_for(user)
        except Exception:
            self.log.failure("opening the mail store of {user} failed", user=user)
            raise _problem(503, "The mail store is not available; try again later.") from None
        return CallContext(
            user=user,
            account_id=api.account_id(user),
            store=store,
            server=self.server,
            blobs=self.blobs,
            limits=self.limits,
        )

    def base_url(self, request: Any) -> str:
        """``scheme://host[:port]/jmap`` as the client reached this server."""
        scheme = "https" if self.client(request).secure else "http"
        host = (request.getHeader(b"host") or b"").decode("latin-1")
        if not _HOST.fullmatch(host):
            address = request.getHost()
            host = format_peer(str(getattr(address, "host", "localhost")), getattr(address, "port", 80))
        return f"{scheme}://{host}/jmap"


# -- responses --


def _private(request: Any) -> None:
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")


def _alive(request: Any) -> bool:
    return not getattr(request, "_disconnected", False) and not getattr(request, "finished", False)


def send_json(request: Any, status: int, body: Any, content_type: bytes = b"application/json") -> None:
    """Answer *request* with *body* as JSON."""
    if not _alive(request):
        return
    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate some text of a message still decoded to (the
        # decoders replace those they know of): U+FFFD, not a failed answer.
        data = without_lone_surrogates(text).encode("utf-8")
    request.setResponseCode(status)
    _private(request)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"content-length", str(len(data)).encode())
    request.write(data)
    request.finish()


def send_problem(request: Any, error: api.RequestError, realm: str = "txmail") -> None:
    """Answer *request* with the problem details of *error*."""
    if isinstance(error, Unauthorized) and _alive(request):
        request.setHeader(b"www-authenticate", f'Basic realm="{realm}", charset="UTF-8"'.encode())
    send_json(request, error.status, error.to_json(), api.PROBLEM_TYPE.encode())


def read_body(request: Any, limit: int) -> bytes | None:
    """The request body, or ``None`` when it is longer than *limit* octets."""
    if getattr(request, "body_too_large", False):
        return None
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    return None if len(data) > limit else bytes(data)


class _Handler(Resource):
    """A JMAP resource: one coroutine a request, problems for errors."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET",)

    def __init__(self, endpoint: JMAPEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render(self, request: Any) -> Any:
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            send_problem(request, _problem(405, f"Use {', '.join(m.decode() for m in self.methods)}."))
            return server.NOT_DONE_YET
        d = defer.ensureDeferred(self.handle(request))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def handle(self, request: Any) -> None:
        raise NotImplementedError

    def _failed(self, failure: Failure, request: Any) -> None:
        error = failure.value
        if isinstance(error, api.RequestError):
            send_problem(request, error, self.endpoint.realm)
            return
        self.endpoint.log.failure("JMAP request {uri} failed", failure, uri=getattr(request, "uri", b""))
        send_problem(request, _problem(500, "The server failed."))


class WellKnown(Resource):
    """``/.well-known/jmap``: a redirect to the session resource (RFC 8620 section 2.2)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setResponseCode(307)
        request.setHeader(b"location", b"/jmap/session")
        _private(request)
        return b""


class SessionResource(_Handler):
    """``GET /jmap/session``: the session object (RFC 8620 section 2)."""

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        user = await endpoint.authenticate(request)
        urls = api.SessionURLs.under(endpoint.base_url(request))
        send_json(request, 200, api.session_object(endpoint.capabilities, user, urls))


class APIResource(_Handler):
    """``POST /jmap/api``: API requests (RFC 8620 section 3)."""

    methods = (b"POST",)

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        limits = endpoint.limits
        user = await endpoint.authenticate(request)
        api.check_content_type((request.getHeader(b"content-type") or b"").decode("latin-1"))
        body = read_body(request, limits.max_size_request)
        if body is None:
            raise api.limit_error(
                "maxSizeRequest", f"The request is larger than {limits.max_size_request} octets."
            )
        if not endpoint.requests.acquire(user):
            raise api.limit_error(
                "maxConcurrentRequests", f"At most {limits.max_concurrent_requests} requests at once."
            )
        try:
            parsed = api.parse_request(body, endpoint.registry, limits)
            context = await endpoint.context(user)
            session = api.session_object(endpoint.capabilities, user, api.SessionURLs.under(""))

            def failed(name: str) -> None:
                endpoint.log.failure("JMAP method {method} failed for {user}", method=name, user=user)

            response = await api.process(
                parsed, endpoint.registry, context, session_state=session["state"], on_failure=failed
            )
        finally:
            endpoint.requests.release(user)
        send_json(request, 200, response)


class UploadResource(_Handler):
    """``POST /jmap/upload/{accountId}/`` (RFC 8620 section 6.1)."""

    methods = (b"POST",)

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        limits = endpoint.limits
        user = await endpoint.authenticate(request)
        account = api.account_id(user)
        path = [p for p in request.postpath if p]
        if len(path) != 1 or path[0] != account.encode():
            raise _problem(404, "No such account.")
        body = read_body(request, limits.max_size_upload)
        if body is None:
            raise api.RequestError(
                "limit",
                413,
                f"The upload is larger than {limits.max_size_upload} octets.",
                limit="maxSizeUpload",
            )
        if not endpoint.uploads.acquire(user):
            raise api.limit_error(
                "maxConcurrentUpload", f"At most {limits.max_concurrent_upload} uploads at once."
            )
        try:
            media = (request.getHeader(b"content-type") or b"").decode("latin-1").strip()
            if not _MEDIA_TYPE.fullmatch(media):
                media = "application/octet-stream"
            try:
                response = await endpoint.blobs.put(account, body, media)
            except UploadStorageFull:
                raise _problem(413, "Too many uploads are waiting to be used; try again later.") from None
        finally:
            endpoint.uploads.release(user)
        send_json(request, 201, response)


def content_disposition(name: str) -> bytes:
    """
    ``attachment`` with *name* (RFC 6266): an ASCII fallback ``filename``
    (quotes, backslashes and control characters replaced) and the exact name
    as ``filename*`` (RFC 8187, UTF-8, percent-encoded).
    """
    fallback = (
        "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\' else "_" for c in name)[:200] or "download"
    )
    encoded = urllib.parse.quote(name, safe="!#$&+-.^_`|~")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode("ascii")


class DownloadResource(_Handler):
    """``GET /jmap/download/{accountId}/{blobId}/{name}?accept={type}`` (RFC 8620 section 6.2)."""

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        user = await endpoint.authenticate(request)
        account = api.account_id(user)
        path = request.postpath
        if len(path) != 3 or path[0] != account.encode() or not path[1] or not path[2]:
            raise _problem(404, "No such blob.")
        try:
            blob_id = path[1].decode("ascii")
            name = path[2].decode("utf-8")
        except UnicodeDecodeError:
            raise _problem(404, "No such blob.") from None
        if not api.ID_RE.fullmatch(blob_id):
            raise _problem(404, "No such blob.")
        data = await endpoint.blobs.get(account, blob_id)
        if data is None:
            context = await endpoint.context(user)
            for capability in endpoint.capabilities:
                if capability.blob is not None:
                    data = await capability.blob(context, blob_id)
                    if data is not None:
                        break
        if data is None:
            raise _problem(404, "No such blob.")
        accept = (request.args.get(b"accept") or [b""])[0].decode("latin-1").strip()
        media = accept if _MEDIA_TYPE.fullmatch(accept) else "application/octet-stream"
        if not _alive(request):
            return
        request.setResponseCode(200)
        _private(request)
        request.setHeader(b"content-type", media.encode("ascii"))
        request.setHeader(b"content-disposition", content_disposition(name))
        request.setHeader(b"content-security-policy", b"sandbox; default-src 'none'")
        request.setHeader(b"content-length", str(len(data)).encode())
        request.write(bytes(data))
        request.finish()


class EventSourceResource(_Handler):
    """``GET /jmap/eventsource?types=&closeafter=&ping=`` (RFC 8620 section 7.3)."""

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        user = await endpoint.authenticate(request)
        try:
            types, close_after_state, ping = parse_push_query(request.args)
        except ValueError as e:
            raise _problem(400, str(e)) from None
        if not endpoint.streams.acquire(user):
            raise _problem(429, f"At most {endpoint.max_event_streams} event streams a user.")
        try:
            context = await endpoint.context(user)
        except BaseException:
            endpoint.streams.release(user)
            raise
        if not _alive(request):
            endpoint.streams.release(user)
            return
        request.setHeader(b"x-content-type-options", b"nosniff")
        EventStream(
            request,
            context=context,
            capabilities=endpoint.capabilities,
            types=types,
            close_after_state=close_after_state,
            ping=ping,
            clock=endpoint.clock,
            on_close=lambda: endpoint.streams.release(user),
        ).start()


class LoginResource(_Handler):
    """``POST /jmap/login``: ``{"username", "password"}`` -> a bearer token."""

    methods = (b"POST",)

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        api.check_content_type((request.getHeader(b"content-type") or b"").decode("latin-1"))
        client = endpoint.client(request)
        if not password_auth_allowed(
            tls=client.secure, plaintext_policy=endpoint.plaintext_auth, loopback=client.loopback
        ):
            raise _problem(403, "Credentials are accepted over TLS only.")
        body = read_body(request, MAX_LOGIN_BODY)
        try:
            document = api.parse_json(body) if body is not None else None
        except ValueError:
            document = None
        if (
            not isinstance(document, dict)
            or not isinstance(document.get("username"), str)
            or not isinstance(document.get("password"), str)
            or not document["username"]
        ):
            raise _problem(400, 'Send {"username": ..., "password": ...}.')
        user = await endpoint.authenticator.check_password(
            document["username"], document["password"], peer=client.peer
        )
        endpoint.metrics.auth("PASSWORD", user is not None)
        if user is None:
            raise Unauthorized("The user name or password is wrong.")
        stamp = await endpoint.credential_stamp(str(user))
        if stamp is None:
            raise Unauthorized("The user name or password is wrong.")
        token = endpoint.tokens.issue(str(user), stamp)
        send_json(
            request,
            200,
            {"accessToken": token, "tokenType": "Bearer", "expiresIn": int(endpoint.tokens.idle_timeout)},
        )


class LogoutResource(_Handler):
    """``POST /jmap/logout``: revoke the bearer token of the request."""

    methods = (b"POST",)

    async def handle(self, request: Any) -> None:
        endpoint = self.endpoint
        header = (request.getHeader(b"authorization") or b"").decode("latin-1").strip()
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not endpoint.tokens.revoke(token.strip()):
            raise Unauthorized("Send the access token to revoke.")
        if _alive(request):
            request.setResponseCode(204)
            _private(request)
            request.finish()


class NotFound(Resource):
    """Anything else: 404 problem details."""

    isLeaf = True

    def render(self, request: Any) -> Any:
        send_problem(request, _problem(404, "No such resource."))
        return server.NOT_DONE_YET


class _Directory(Resource):
    """A path segment whose unknown children are 404 problems."""

    def getChild(self, path: bytes, request: Any) -> Resource:
        return NotFound()

    def render(self, request: Any) -> Any:
        return NotFound().render(request)


def root_resource(endpoint: JMAPEndpoint) -> Resource:
    """The resource tree of a JMAP listener."""
    root = _Directory()
    well_known = _Directory()
    well_known.putChild(b"jmap", WellKnown())
    root.putChild(b".well-known", well_known)
    jmap = _Directory()
    jmap.putChild(b"session", SessionResource(endpoint))
    jmap.putChild(b"api", APIResource(endpoint))
    jmap.putChild(b"upload", UploadResource(endpoint))
    jmap.putChild(b"download", DownloadResource(endpoint))
    jmap.putChild(b"eventsource", EventSourceResource(endpoint))
    jmap.putChild(b"login", LoginResource(endpoint))
    jmap.putChild(b"logout", LogoutResource(endpoint))
    root.putChild(b"jmap", jmap)
    mount_endpoint(root, endpoint)
    return root


class _Discard:
    """A request body beyond the bound: nothing kept."""

    def write(self, data: bytes) -> None:
        pass

    def seek(self, offset: int, whence: int = 0) -> None:
        pass

    def read(self, size: int = -1) -> bytes:
        return b""

    def tell(self) -> int:
        # twisted.web's Request.requestReceived asks the body's length.
        return 0

    def close(self) -> None:
        pass


class BoundedRequest(server.Request):
    """
    A request whose body is kept up to the site's ``max_body`` octets;
    beyond that it is discarded and ``body_too_large`` is set, for the
    resource to refuse (``maxSizeRequest``, ``maxSizeUpload``).
    """

    body_too_large = False
    _received = 0

    def _limit(self) -> int:
        return int(getattr(getattr(self.channel, "site", None), "max_body", 1 << 62))

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._limit():
            self.body_too_large = True
            self.content = _Discard()
            return
        super().gotLength(length)  # type: ignore[no-untyped-call]  # untyped in twisted.web

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self._limit():
            self.body_too_large = True
            if self.content is not None:
                self.content.close()
            self.content = _Discard()
            return
        super().handleContentChunk(data)  # type: ignore[no-untyped-call]  # untyped in twisted.web


class JMAPSite(server.Site):
    """The ``Site`` of a JMAP listener: bounded request bodies, no access log of its own."""

    requestFactory = BoundedRequest

    def __init__(self, endpoint: JMAPEndpoint, *, timeout: float = 60.0) -> None:
        """
        Serve the resources of *endpoint*; an idle keep-alive connection is
        closed after *timeout* seconds (never while a response, such as an
        event stream, is in progress).
        """
        # No parsing of POST bodies as forms (nothing here takes a form):
        # twisted.web reads their Content-Type with Python's e-mail header
        # parser, which raises on some (``text/plain; a*``, line breaks) out
        # of the connection's dataReceived, and takes seconds on others
        # (16 kB of quotes); a multipart upload would be parsed whole too.
        # (The option is Twisted 25.5's: setup.cfg asks for at least that.)
        super().__init__(  # type: ignore[no-untyped-call]  # twisted.web.server.Site is untyped
            root_resource(endpoint), timeout=timeout, parsePOSTFormSubmission=False
        )
        self.endpoint = endpoint
        limits = endpoint.limits
        self.max_body = max(limits.max_size_request, limits.max_size_upload, MAX_LOGIN_BODY)
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """No access log lines: the endpoint logs failures (and the authenticator logins)."""


def build_site(
    *,
    registry: Registry,
    limits: Limits,
    authenticator: Authenticator,
    stores: IMailStoreProvider,
    blob_dir: str,
    clock: Any,
    run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
    server: MailServer | None = None,
    token_idle_timeout: float = 3600.0,
    **options: Any,
) -> JMAPSite:
    """A :class:`JMAPSite` with its own upload store (under *blob_dir*) and token table."""
    blobs = BlobStore(blob_dir, now=clock.seconds, run_blocking=run_blocking)
    tokens = TokenStore(clock.seconds, idle_timeout=token_idle_timeout)
    endpoint = JMAPEndpoint(
        registry=registry,
        limits=limits,
        authenticator=authenticator,
        stores=stores,
        blobs=blobs,
        tokens=tokens,
        clock=clock,
        server=server,
        **options,
    )
    return JMAPSite(endpoint)
