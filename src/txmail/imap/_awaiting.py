"""
A store's answers, awaited: the mailbox contract's methods answer with a
Deferred, and the unit tests' plain stores with the value itself (or they
raise).  Shared by the command layer and the modules it calls.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

__all__ = ["awaited", "call"]

_T = TypeVar("_T")


async def awaited(result: Awaitable[_T]) -> _T:
    """A store's answer, awaited when it is a Deferred (a plain test store's value taken as it is)."""
    if hasattr(result, "__await__"):
        return await result
    return cast(_T, result)  # a plain store's value, not an awaitable


async def call(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """
    ``fn(*args)``, a contract method, awaited: its Deferred (one that has
    fired gives its result at once).  A plain store that answers with the
    value itself, or raises, is taken as it is (the unit tests' stores).
    """
    result = fn(*args)  # not through awaited(): one coroutine less a call
    if hasattr(result, "__await__"):
        return await result
    return cast(_T, result)  # a plain store's value, not an awaitable
