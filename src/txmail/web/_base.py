"""
twisted.web's :class:`~twisted.web.resource.Resource` with a typed
constructor, the base of txmail's resources (Twisted's ``__init__`` is
untyped, which ``mypy --strict`` refuses to call from typed code), and a
405 answer of its own for a method it does not serve.
"""

from __future__ import annotations

from typing import Any

from twisted.web import resource

__all__ = ["Resource"]


class Resource(resource.Resource):
    """A :class:`twisted.web.resource.Resource`, typed."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource.Resource.__init__ is untyped

    def render(self, request: Any) -> Any:
        """
        As twisted.web's, but a method the resource has no ``render_*`` for
        is answered 405 here (:meth:`not_allowed`): twisted.web's own 405
        page fails on a request URI that is not ASCII, and its ``HEAD``
        calls ``render_GET`` whether or not there is one (a 500 and a
        logged traceback both).
        """
        handler = getattr(self, "render_" + request.method.decode("latin-1"), None)
        if handler is None or (request.method == b"HEAD" and not hasattr(self, "render_GET")):
            return self.not_allowed(request)
        return handler(request)

    def allowed_methods(self) -> list[bytes]:
        """The methods this resource has a ``render_*`` for (``HEAD`` only with ``GET``)."""
        methods = {name[len("render_") :] for name in dir(self) if name.startswith("render_")}
        if "GET" not in methods:
            methods.discard("HEAD")
        return sorted(m.encode("latin-1") for m in methods)

    def not_allowed(self, request: Any) -> bytes:
        """The 405 answer to a method this resource does not serve, with ``Allow``."""
        request.setResponseCode(405)
        request.setHeader(b"allow", b", ".join(self.allowed_methods()))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return b"Method not allowed.\n"
