"""Requests for the webmail's resources: twisted.web's DummyRequest with what the tests need."""

from __future__ import annotations

import json
from io import BytesIO
from typing import Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from txmail.webmail.session import COOKIE_NAME


class Request(DummyRequest):
    """A DummyRequest with a method, headers, a body and TLS or not."""

    def __init__(
        self,
        path: bytes = b"/",
        method: bytes = b"GET",
        *,
        headers: dict[bytes, bytes] | None = None,
        cookie: str | None = None,
        body: bytes = b"",
        secure: bool = False,
    ) -> None:
        parts = path.lstrip(b"/").split(b"?")[0].split(b"/")
        super().__init__(parts)
        self.method = method
        self.uri = path
        self.path = path.split(b"?")[0]
        self.content = BytesIO(body)
        self.secure = secure
        for name, value in (headers or {}).items():
            self.requestHeaders.addRawHeader(name, value)
        if cookie is not None:
            self.requestHeaders.addRawHeader(b"cookie", COOKIE_NAME + b"=" + cookie.encode("ascii"))
        if b"?" in path:
            for pair in path.split(b"?", 1)[1].split(b"&"):
                name, _, value = pair.partition(b"=")
                self.addArg(name, value)

    def isSecure(self) -> bool:
        return self.secure

    def header(self, name: bytes) -> str | None:
        """The response header *name* (the last value), decoded."""
        values = self.responseHeaders.getRawHeaders(name)
        return values[-1].decode("latin-1") if values else None

    def cookies(self) -> list[str]:
        """The Set-Cookie headers of the response."""
        return [v.decode("latin-1") for v in self.responseHeaders.getRawHeaders(b"set-cookie", [])]

    def body(self) -> bytes:
        return b"".join(self.written)

    def json(self) -> Any:
        return json.loads(self.body())


def render(resource: Any, request: Request) -> defer.Deferred[Request]:
    """Render *request* on *resource* (found from the site root by its path); fires once it has finished."""
    from twisted.web.resource import getChildForRequest

    target = getChildForRequest(resource, request)
    request.render(target)
    if request.finished:
        return defer.succeed(request)
    return request.notifyFinish().addCallback(lambda _: request)


def wire(test: Any, site: Any, data: bytes) -> bytes:
    """
    What *site* (a twisted.web ``Site``) answers the raw HTTP octets *data*
    on one connection from 127.0.0.1 (closed when *test* ends): the whole
    HTTP layer runs, twisted.web's request parsing included.
    """
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
        peerAddress=IPv4Address("TCP", "127.0.0.1", 40000),
    )
    protocol.makeConnection(transport)
    protocol.dataReceived(data)
    test.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
    return transport.value()  # type: ignore[no-any-return]
