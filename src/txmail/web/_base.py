"""
twisted.web's :class:`~twisted.web.resource.Resource` with a typed
constructor, the base of txmail's resources (Twisted's ``__init__`` is
untyped, which ``mypy --strict`` refuses to call from typed code).
"""

from __future__ import annotations

from twisted.web import resource

__all__ = ["Resource"]


class Resource(resource.Resource):
    """A :class:`twisted.web.resource.Resource`, typed."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # twisted.web.resource.Resource.__init__ is untyped
