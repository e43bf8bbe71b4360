"""
Events the ManageSieve session hands to its application (the adapter).

The shared ones (:class:`AuthStep`, :class:`StartTLS`,
:class:`Authenticated`, :class:`ConnectionClosing`) come from
:mod:`txmail._events`; :class:`ScriptRequest` is ManageSieve's own.  Events
whose ``needs_decision`` is true pause the session until the application
answers with ``accept(...)`` or ``fail(...)``/``reject(...)``.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from txmail._events import Authenticated, AuthStep, ConnectionClosing, Event, StartTLS

__all__ = [
    "AuthStep",
    "Authenticated",
    "ConnectionClosing",
    "Event",
    "ScriptRequest",
    "StartTLS",
    "Unauthenticated",
]


@dataclass(frozen=True, slots=True)
class ScriptRequest(Event):
    """
    A command on the user's scripts, to run against their
    :class:`txmail.interfaces.ISieveScripts` store: the application answers
    with ``accept(result)`` or ``fail(exception)``.

    ========================  =========================  ===================================
    *command*                 *args*                     ``accept`` with
    ========================  =========================  ===================================
    ``LISTSCRIPTS``           ``()``                     ``list_scripts()``'s list
    ``GETSCRIPT``             ``(name,)``                the script's octets
    ``PUTSCRIPT``             ``(name, content)``        ``None`` (after checking and storing)
    ``CHECKSCRIPT``           ``(content,)``             ``None`` (after checking)
    ``SETACTIVE``             ``(name or None,)``        ``None``
    ``DELETESCRIPT``          ``(name,)``                ``None``
    ``RENAMESCRIPT``          ``(old, new)``             ``None``
    ``HAVESPACE``             ``(name, size)``           ``None`` (the count fits)
    ========================  =========================  ===================================

    Sizes are checked by the session already (``QUOTA/MAXSIZE``); the
    application checks the script (:func:`txmail.managesieve.session.check_script`)
    and the number of scripts (``QUOTA/MAXSCRIPTS``).
    """

    needs_decision: ClassVar[bool] = True
    command: str
    args: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Unauthenticated(Event):
    """The client ended its login with UNAUTHENTICATE (RFC 5804 section 2.14): forget the user's store."""

    user: str
