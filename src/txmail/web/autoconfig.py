"""
Client autoconfiguration over HTTP: the twisted.web side of
:mod:`txmail.autoconfig`.

Resources (under the listener's root)::

    GET  /.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=ADDR   Thunderbird
    GET  /mail/config-v1.1.xml?emailaddress=ADDR        Thunderbird, on the autoconfig.<domain> host
    POST /autodiscover/autodiscover.xml                 Outlook (POX); GET with ?emailaddress=ADDR too
    GET  /mail/apple.mobileconfig?emailaddress=ADDR     an Apple configuration profile (unsigned)

They are served by the ``[web] listen`` listeners beside JMAP (unless
``[autoconfig] enabled = false``) and by the ``[autoconfig] listen``
listeners, which serve nothing else and may be plain HTTP on any
interface: the documents hold no secret, only what any client learns by
connecting (Thunderbird asks ``http://autoconfig.<domain>/`` when HTTPS
fails).

Every document says what the running server offers
(:func:`txmail.autoconfig.client_offer` with the ports the listeners are
bound to), and is only made for an address in a local domain (the
directory's ``is_local_domain``): another domain is a 404, a missing or
malformed address a 400.  Thunderbird may leave the address out on the
``autoconfig.<domain>`` host: the domain is then taken from the ``Host``
header.  Whether the address is a user's is not looked at (that would tell
anyone which addresses exist).

An Autodiscover request body is read up to
:data:`txmail.autoconfig.MAX_AUTODISCOVER_REQUEST` octets and parsed
without document type declarations (see :mod:`txmail.autoconfig`); a
refused request is a 400 with an Autodiscover error 600, an unsupported
``AcceptableResponseSchema`` (ActiveSync's mobilesync) a 200 with error 601,
as Exchange answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import server

from txmail.autoconfig import (
    INVALID_REQUEST,
    MAX_AUTODISCOVER_REQUEST,
    MOBILECONFIG_TYPE,
    OUTLOOK_RESPONSE_SCHEMA,
    ROLES,
    SCHEMA_NOT_SUPPORTED,
    BadRequest,
    ClientOffer,
    NothingOffered,
    autodiscover_error,
    autodiscover_response,
    client_offer,
    mobileconfig,
    parse_address,
    parse_autodiscover_request,
    thunderbird_config,
)
from txmail.web._base import Resource
from txmail.web.resource import BoundedRequest, read_body

if TYPE_CHECKING:
    from txmail.service import MailServer

__all__ = ["AutoconfigEndpoint", "AutoconfigSite", "autoconfig_site", "mount_autoconfig", "running_offer"]

_XML = b"application/xml; charset=utf-8"


class NotLocal(Exception):
    """The address is not in a domain served here: 404."""


def running_offer(server: MailServer) -> ClientOffer:
    """
    What the running *server* (a :class:`txmail.service.MailServer`) offers
    clients: :func:`txmail.autoconfig.client_offer` with the port each
    submission, IMAP and POP3 listener is bound to.
    """
    settings = server.settings
    bound: dict[tuple[str, int], int] = {}
    for role in ROLES:
        listeners = server.listeners_for(role)
        if len(listeners) != len(getattr(settings, role)):
            continue  # not the listeners of these settings: the configured ports
        for index, listener in enumerate(listeners):
            port = getattr(listener.port.getHost(), "port", None) if listener.port is not None else None
            if isinstance(port, int) and port:
                bound[(role, index)] = port
    return client_offer(settings, bound)


class AutoconfigEndpoint:
    """
    What the autoconfiguration resources share.

    Args:
        offer: returns the current :class:`txmail.autoconfig.ClientOffer`.
        is_local_domain: whether a domain is served here (``bool`` or a
            Deferred of one).
    """

    log = Logger()

    def __init__(self, *, offer: Callable[[], ClientOffer], is_local_domain: Callable[[str], Any]) -> None:
        self.offer = offer
        self.is_local_domain = is_local_domain

    @classmethod
    def for_server(cls, server: MailServer) -> AutoconfigEndpoint:
        """The endpoint of a running :class:`txmail.service.MailServer`."""
        # Both read the server at each request: a reloaded configuration or directory is followed.
        return cls(
            offer=lambda: running_offer(server),
            is_local_domain=lambda domain: server.directory.is_local_domain(domain),
        )

    async def check_local(self, domain: str) -> None:
        """
        Raises:
            NotLocal: *domain* is not served here.
        """
        # The embedder's callable: a bool (IDirectory.is_local_domain) or a Deferred of one.
        local = await defer.maybeDeferred(self.is_local_domain, domain)
        if not local:
            raise NotLocal(domain)

    async def address(self, text: str) -> tuple[str, str]:
        """``(address, domain)`` for the address a client asks about, in a local domain."""
        address, domain = parse_address(text)
        await self.check_local(domain)
        return address, domain


# -- responses --


def _alive(request: Any) -> bool:
    return not getattr(request, "_disconnected", False) and not getattr(request, "finished", False)


def send(request: Any, status: int, body: bytes, content_type: bytes, **headers: bytes) -> None:
    """Answer *request* (if still open) with *body*, not to be cached nor sniffed."""
    if not _alive(request):
        return
    request.setResponseCode(status)
    request.setHeader(b"content-type", content_type)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    for name, value in headers.items():
        request.setHeader(name.replace("_", "-").encode("ascii"), value)
    request.setHeader(b"content-length", str(len(body)).encode("ascii"))
    request.write(body)
    request.finish()


def _text(request: Any, status: int, message: str) -> None:
    send(request, status, message.encode("utf-8") + b"\n", b"text/plain; charset=utf-8")


def _query(request: Any, name: bytes) -> str | None:
    values = request.args.get(name)
    if not values:
        return None
    try:
        return str(values[0].decode("utf-8"))
    except UnicodeDecodeError:
        return ""


class _Handler(Resource):
    """One autoconfiguration document: a coroutine a request, 400/404 for bad or foreign addresses."""

    isLeaf = True
    methods: tuple[bytes, ...] = (b"GET", b"HEAD")

    def __init__(self, endpoint: AutoconfigEndpoint) -> None:
        super().__init__()
        self.endpoint = endpoint

    def render(self, request: Any) -> Any:
        if request.postpath not in ([], [b""]):
            _text(request, 404, "No such resource.")
            return server.NOT_DONE_YET
        if request.method not in self.methods:
            request.setHeader(b"allow", b", ".join(self.methods))
            _text(request, 405, f"Use {', '.join(m.decode() for m in self.methods)}.")
            return server.NOT_DONE_YET
        d = defer.ensureDeferred(self.handle(request))
        d.addErrback(self._failed, request)
        return server.NOT_DONE_YET

    async def handle(self, request: Any) -> None:
        raise NotImplementedError

    def bad_request(self, request: Any, message: str) -> None:
        _text(request, 400, message)

    def not_local(self, request: Any) -> None:
        _text(request, 404, "No mail service for this domain here.")

    def _failed(self, failure: Failure, request: Any) -> None:
        if failure.check(BadRequest):
            self.bad_request(request, str(failure.value))
            return
        if failure.check(NotLocal):
            self.not_local(request)
            return
        if failure.check(NothingOffered):
            _text(request, 404, "This server offers no mail service over TLS to configure.")
            return
        self.endpoint.log.failure("autoconfiguration {uri} failed", failure, uri=getattr(request, "uri", b""))
        _text(request, 500, "The server failed.")


def _host_domain(request: Any) -> str | None:
    """The domain of an ``autoconfig.<domain>`` ``Host`` header, or ``None``."""
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip().lower()
    if host.startswith("["):
        return None
    host = host.partition(":")[0].rstrip(".")
    if host.startswith("autoconfig.") and len(host) > len("autoconfig."):
        return host[len("autoconfig.") :]
    return None


class ThunderbirdResource(_Handler):
    """``GET config-v1.1.xml?emailaddress=ADDR``: Mozilla's clientConfig (Thunderbird, K-9/Thunderbird for Android, Evolution)."""

    async def handle(self, request: Any) -> None:
        text = _query(request, b"emailaddress")
        if text is None:
            domain = _host_domain(request)
            if domain is None:
                raise BadRequest("Give the address: ?emailaddress=you@example.com")
            _address, domain = parse_address(f"postmaster@{domain}")
            await self.endpoint.check_local(domain)
        else:
            _address, domain = await self.endpoint.address(text)
        send(request, 200, thunderbird_config(self.endpoint.offer(), domain), _XML)


class AutodiscoverResource(_Handler):
    """
    ``POST /autodiscover/autodiscover.xml``: Outlook's Autodiscover (POX).
    ``GET`` with ``?emailaddress=ADDR`` answers the same for clients and
    admins checking it from a browser.
    """

    methods = (b"POST", b"GET", b"HEAD")

    async def handle(self, request: Any) -> None:
        if request.method == b"POST":
            body = read_body(request, MAX_AUTODISCOVER_REQUEST)
            if body is None:
                raise BadRequest(f"The request is larger than {MAX_AUTODISCOVER_REQUEST} octets.")
            parsed = parse_autodiscover_request(body)
            if parsed.schema != OUTLOOK_RESPONSE_SCHEMA:
                send(
                    request,
                    200,
                    autodiscover_error(SCHEMA_NOT_SUPPORTED, "The requested schema is not supported."),
                    _XML,
                )
                return
            text = parsed.email
        else:
            given = _query(request, b"emailaddress")
            if given is None:
                raise BadRequest("POST an Autodiscover request, or GET with ?emailaddress=you@example.com")
            text = given
        address, _domain = await self.endpoint.address(text)
        send(request, 200, autodiscover_response(self.endpoint.offer(), address), _XML)

    def bad_request(self, request: Any, message: str) -> None:
        send(request, 400, autodiscover_error(INVALID_REQUEST, message), _XML)

    def not_local(self, request: Any) -> None:
        send(request, 404, autodiscover_error(INVALID_REQUEST, "No mail service for this domain here."), _XML)


class MobileconfigResource(_Handler):
    """``GET /mail/apple.mobileconfig?emailaddress=ADDR``: an Apple configuration profile (unsigned)."""

    async def handle(self, request: Any) -> None:
        text = _query(request, b"emailaddress")
        if text is None:
            raise BadRequest("Give the address: ?emailaddress=you@example.com")
        address, domain = await self.endpoint.address(text)
        profile = mobileconfig(self.endpoint.offer(), address)
        send(
            request,
            200,
            profile,
            MOBILECONFIG_TYPE.encode("ascii"),
            content_disposition=f'attachment; filename="{domain}.mobileconfig"'.encode("ascii"),
        )


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Any) -> Any:
        _text(request, 404, "No such resource.")
        return server.NOT_DONE_YET


class _Folder(Resource):
    """A path segment with children looked up without regard to case (Outlook varies it)."""

    def __init__(self, children: dict[bytes, Resource] | None = None) -> None:
        super().__init__()
        for name, child in (children or {}).items():
            self.putChild(name.lower(), child)

    def getChild(self, path: bytes, request: Any) -> Resource:
        return self.children.get(path.lower()) or _NotFound()

    def render(self, request: Any) -> Any:
        return _NotFound().render(request)


def mount_autoconfig(root: Resource, endpoint: AutoconfigEndpoint) -> None:
    """Add the autoconfiguration resources (see the module notes) to the resource tree under *root*."""
    mail = _Folder(
        {
            b"config-v1.1.xml": ThunderbirdResource(endpoint),
            b"apple.mobileconfig": MobileconfigResource(endpoint),
        }
    )
    root.putChild(b"mail", mail)
    well_known = root.children.get(b".well-known")
    if well_known is None:
        well_known = _Folder()
        root.putChild(b".well-known", well_known)
    well_known.putChild(
        b"autoconfig", _Folder({b"mail": _Folder({b"config-v1.1.xml": ThunderbirdResource(endpoint)})})
    )
    autodiscover = _Folder({b"autodiscover.xml": AutodiscoverResource(endpoint)})
    for spelling in (b"autodiscover", b"Autodiscover", b"AutoDiscover", b"AUTODISCOVER"):
        root.putChild(spelling, autodiscover)


class AutoconfigSite(server.Site):
    """
    The ``Site`` of an ``[autoconfig] listen`` listener: only the
    autoconfiguration resources, request bodies bounded, idle connections
    closed after *timeout* seconds, no access log.
    """

    requestFactory = BoundedRequest
    max_body = MAX_AUTODISCOVER_REQUEST

    def __init__(self, endpoint: AutoconfigEndpoint, *, timeout: float = 30.0) -> None:
        """Serve the resources of *endpoint* (:func:`mount_autoconfig`)."""
        root = _Folder()
        mount_autoconfig(root, endpoint)
        # Bodies are read as they are (Autodiscover's XML), never as forms:
        # see JMAPSite for what twisted.web's form parsing does with a
        # hostile Content-Type.
        super().__init__(  # type: ignore[no-untyped-call]  # twisted.web.server.Site is untyped
            root, timeout=timeout, parsePOSTFormSubmission=False
        )
        self.endpoint = endpoint
        self.displayTracebacks = False

    def log(self, request: Any) -> None:
        """No access log lines (failures are logged by the resources)."""


def autoconfig_site(server: MailServer) -> AutoconfigSite:
    """The site of *server*'s ``[autoconfig] listen`` listeners."""
    return AutoconfigSite(AutoconfigEndpoint.for_server(server))
