"""
A Sieve engine (RFC 5228) free of Twisted and of I/O.

:func:`parse` checks a script and gives a :class:`Script` (or raises
:class:`SieveError` with a line, a column and a message, what ManageSieve's
PUTSCRIPT and CHECKSCRIPT answer); :func:`run` runs it on a
:class:`SieveMessage` for one recipient's :class:`Envelope` and gives a
:class:`Result`: the actions in order and whether the implicit keep
applies.  A run never raises: a runtime error or a resource limit
(:class:`Limits`) means the implicit keep, with the error in
:attr:`Result.errors`.

Extensions: fileinto, reject and ereject (RFC 5429), envelope,
encoded-character, variables (RFC 5229), body (RFC 5173), relational (RFC
5231), subaddress (RFC 5233), copy (RFC 3894), imap4flags (RFC 5232),
vacation (RFC 5230) and vacation-seconds (RFC 6131), date and index (RFC
5260), mailbox (RFC 5490, ``mailboxexists`` and ``fileinto :create``),
include (RFC 6609), duplicate (RFC 7352), editheader (RFC 5293), and the
comparators ``i;octet``, ``i;ascii-casemap`` and ``i;ascii-numeric``.

Included scripts (RFC 6609) are read at parse time through the *loader*
(``loader(name, location)`` with *location* ``"personal"`` or
``"global"``, raising :class:`ScriptNotFound` for a script that does not
exist) and checked with the includer: a loop, nesting deeper than
:attr:`Limits.max_include_depth` or more than :attr:`Limits.max_includes`
scripts is a parse error.  A missing script is a runtime error when the
``include`` runs (unless ``:optional``), so a script may be uploaded before
the scripts it includes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from txmail.sieve.actions import (
    Action,
    Discard,
    DuplicateMark,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
    rebuild_message,
)
from txmail.sieve.commands import EXTENSIONS, Node, validate
from txmail.sieve.errors import LimitExceeded, ScriptNotFound, SieveError, SieveRuntimeError
from txmail.sieve.grammar import parse_syntax
from txmail.sieve.interpreter import Context, DuplicateTracker, VacationTracker, run
from txmail.sieve.limits import Limits
from txmail.sieve.message import Envelope, SieveMessage

__all__ = [
    "EXTENSIONS",
    "Action",
    "Context",
    "Discard",
    "DuplicateMark",
    "DuplicateTracker",
    "Envelope",
    "FileInto",
    "Keep",
    "LimitExceeded",
    "Limits",
    "Loader",
    "Redirect",
    "Reject",
    "Result",
    "Script",
    "ScriptNotFound",
    "SieveError",
    "SieveMessage",
    "SieveRuntimeError",
    "Vacation",
    "VacationTracker",
    "parse",
    "rebuild_message",
    "run",
]

#: ``loader(name, location) -> text``; *location* is ``"personal"`` or ``"global"``.
Loader = Callable[[str, str], str]


@dataclasses.dataclass(frozen=True)
class Script:
    """
    A checked script: its *commands*, the *extensions* it requires, and (in
    the script :func:`parse` returns) every script it includes at any
    depth, by ``(location, name)``; ``None`` for one the loader did not find.
    """

    commands: tuple[Node, ...]
    extensions: frozenset[str]
    limits: Limits
    name: str | None = None
    includes: dict[tuple[str, str], Script | None] = dataclasses.field(default_factory=dict)


def _include_nodes(nodes: Any) -> Iterator[Node]:
    for node in nodes:
        if node.name == "include":
            yield node
        for block in (node.block, node.orelse, *(e.block for e in node.elifs)):
            if block:
                yield from _include_nodes(block)


class _Includes:
    """The scripts included by one parse, checked for loops, depth and count."""

    def __init__(self, extensions: frozenset[str], limits: Limits, loader: Loader | None) -> None:
        self.extensions = extensions
        self.limits = limits
        self.loader = loader
        self.found: dict[tuple[str, str], Script | None] = {}
        self.heights: dict[tuple[str, str], int] = {}

    def resolve(self, script: Script, stack: tuple[tuple[str, str], ...], level: int) -> int:
        """
        Load what *script* (at include *level*) includes, checking loops,
        depth and count: the depth of the includes below it.  Each script is
        explored once; a script explored without a loop below it can close no
        loop later, so only its height is remembered.
        """
        height = 0
        for node in _include_nodes(script.commands):
            key = (node.tag("location", ":personal")[1:], node.args[0])
            if key in stack:
                chain = " -> ".join(name for _, name in (*stack, key))
                raise SieveError(f"include loop: {chain}", node.line, node.column, script.name)
            below = self.heights.get(key)
            if below is None:
                if key not in self.found:
                    if len(self.found) >= self.limits.max_includes:
                        raise SieveError(
                            f"more than {self.limits.max_includes} included scripts",
                            node.line,
                            node.column,
                            script.name,
                        )
                    self.found[key] = self.load(key)
                included = self.found[key]
                below = 0 if included is None else self.resolve(included, (*stack, key), level + 1)
                self.heights[key] = below
            if level + 1 + below > self.limits.max_include_depth:
                raise SieveError(
                    f"include nested deeper than {self.limits.max_include_depth} levels",
                    node.line,
                    node.column,
                    script.name,
                )
            height = max(height, 1 + below)
        return height

    def load(self, key: tuple[str, str]) -> Script | None:
        location, name = key
        if self.loader is None:
            return None
        try:
            text = self.loader(name, location)
        except ScriptNotFound:
            return None
        try:
            return _compile(text, self.extensions, self.limits, name)
        except SieveError as e:
            raise SieveError(e.message, e.line, e.column, e.script or name) from None


def _compile(text: str, extensions: frozenset[str], limits: Limits, name: str | None) -> Script:
    nodes, required = validate(parse_syntax(text, limits), extensions)
    return Script(tuple(nodes), required, limits, name)


def parse(
    text: str,
    *,
    extensions: frozenset[str] | set[str] = EXTENSIONS,
    limits: Limits | None = None,
    loader: Loader | None = None,
    name: str | None = None,
) -> Script:
    """
    Check the Sieve script *text*, allowing the *extensions* given (all by
    default) within *limits*, and read the scripts it includes through
    *loader*.  Raises :class:`SieveError`.
    """
    limits = limits or Limits()
    available = frozenset(extensions) & EXTENSIONS
    script = _compile(text, available, limits, name)
    includes = _Includes(available, limits, loader)
    includes.resolve(script, (("personal", name),) if name is not None else (), 0)
    return dataclasses.replace(script, includes=includes.found)
