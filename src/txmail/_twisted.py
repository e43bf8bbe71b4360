"""
Typed bases for the Twisted classes txmail subclasses whose methods are
untyped in Twisted (``mypy --strict`` refuses to call an untyped method from
typed code, and its ``untyped_calls_exclude`` does not cover ``super()``
calls): :class:`Service` and :class:`MultiService` with typed
``startService``, ``stopService``, ``privilegedStartService`` and
``setServiceParent``.  Behaviour is Twisted's own.
"""

from __future__ import annotations

from typing import Any

from twisted.application import service

__all__ = ["MultiService", "Service"]


class Service(service.Service):
    """A :class:`twisted.application.service.Service`, typed."""

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def stopService(self) -> Any:
        return super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def setServiceParent(self, parent: Any) -> Any:
        return super().setServiceParent(parent)  # type: ignore[no-untyped-call]  # untyped in Twisted


class MultiService(service.MultiService):
    """A :class:`twisted.application.service.MultiService`, typed."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def stopService(self) -> Any:
        return super().stopService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def privilegedStartService(self) -> None:
        super().privilegedStartService()  # type: ignore[no-untyped-call]  # untyped in Twisted

    def setServiceParent(self, parent: Any) -> Any:
        return super().setServiceParent(parent)  # type: ignore[no-untyped-call]  # untyped in Twisted
