"""
The table of IMAP commands: for each command name, a :class:`CommandSpec`
saying in which states it is valid (RFC 3501 section 3), which capability
it belongs to, and who answers it.

Three kinds of answer, one field each (exactly one of them is set, or
``run`` with ``answer``):

* ``run``: an ``async`` handler ``(ctx, command) -> Done`` that works on
  the mailbox contract (:class:`txmail.imap.commands.context.CommandContext`);
  the session pauses on an :class:`txmail.imap.events.Execute` event and
  the adapter runs it.
* ``answer``: a synchronous handler ``(session, command) -> responses``
  that needs no store; the session answers at once.  A command with both
  (NOOP) is answered by ``answer`` while no mailbox is selected.
* ``connection=True``: a command that changes the connection itself
  (LOGIN, AUTHENTICATE, STARTTLS, IDLE, LOGOUT), answered by
  :class:`txmail.imap.session.IMAPSession`'s own table.

Capabilities (RFC 3501 section 7.2.1) are listed in the order they were
registered: a command's ``capability`` when it is registered, and
:func:`extension` for a capability that changes existing commands
(UIDPLUS, LIST-EXTENDED...).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txmail.imap.commands.context import CommandContext
    from txmail.imap.responses import Done, Response
    from txmail.imap.types import Command

__all__ = [
    "ANY_STATE",
    "AUTHENTICATED",
    "CAPABILITIES",
    "COMMANDS",
    "ENABLEABLE",
    "NOT_AUTHENTICATED",
    "SELECTED",
    "CommandSpec",
    "State",
    "allowed",
    "capabilities",
    "command",
    "connection_command",
    "enableable",
    "extension",
]


class State(enum.Enum):
    """RFC 3501 section 3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
#: The authenticated state and the selected state (which allows all it allows).
AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})
ANY_STATE = NOT_AUTHENTICATED | AUTHENTICATED

#: ``async (ctx, command) -> Done``.
RunHandler = Callable[["CommandContext", "Command"], Awaitable["Done"]]
#: ``(session, command) -> untagged responses``.
AnswerHandler = Callable[[Any, "Command"], Sequence["Response"]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """
    One command of the table.

    Attributes:
        name: the command name as parsed (``"FETCH"`` covers ``UID FETCH``).
        states: the :class:`State` values it is valid in; elsewhere ``BAD``.
        capability: the capability it belongs to (advertised from the
            table), or ``None`` for IMAP4rev1's own commands.
        run: the handler run by the adapter against the store.
        answer: the handler the session runs itself (no store).
        connection: answered by the session's own code (see module docstring).
        streams: a long response (FETCH, SEARCH) that the adapter writes in
            batches under back-pressure.
        on_messages: acts on the selected mailbox's messages (refused with
            ``NO`` once that mailbox was deleted).
        withholds_expunge: no ``EXPUNGE`` may be sent while answering it
            (RFC 3501 section 7.4.1).
        invalid_name: what a mailbox name that is an astring but not
            modified UTF-7 gets: the response code of the ``NO``, ``""``
            for an ``OK`` with no results (LIST, LSUB), ``None`` when the
            handler decides (SELECT, EXAMINE).
    """

    name: str
    states: frozenset[State]
    capability: str | None = None
    run: RunHandler | None = None
    answer: AnswerHandler | None = None
    connection: bool = False
    streams: bool = False
    on_messages: bool = False
    withholds_expunge: bool = False
    invalid_name: str | None = "CANNOT"


#: Every command, by name.
COMMANDS: dict[str, CommandSpec] = {}
#: Every capability, in the order registered (commands' and :func:`extension`'s).
CAPABILITIES: dict[str, None] = {}


def extension(*names: str) -> None:
    """Register capabilities that change existing commands (UIDPLUS, CHILDREN...)."""
    for name in names:
        CAPABILITIES.setdefault(name)


#: Capabilities ENABLE can turn on (RFC 5161), with what enabling each
#: does: ``enable(session) -> responses`` (sent before ENABLED).
ENABLEABLE: dict[str, Callable[[Any], Any]] = {}


def enableable(name: str) -> Callable[[Any], Any]:
    """Decorate ``enable(session) -> responses``: ENABLE *name* calls it (once per session)."""

    def register(fn: Any) -> Any:
        ENABLEABLE[name] = fn
        return fn

    return register


def command(
    *names: str, states: Iterable[State], capability: str | None = None, **options: Any
) -> Callable[[Any], Any]:
    """
    Decorate the handler of *names*: ``run`` for an ``async`` function,
    ``answer`` for a plain one (``connection=True`` and no function:
    :func:`connection_command`).  The other keyword arguments are the
    :class:`CommandSpec` fields.
    """

    def register(handler: Any) -> Any:
        kind = "run" if _is_async(handler) else "answer"
        for name in names:
            existing = COMMANDS.get(name)
            fields = dict(options)
            if existing is not None:
                # NOOP: an answer and a run handler, registered one after the other.
                fields.update({k: getattr(existing, k) for k in ("run", "answer") if getattr(existing, k)})
            fields[kind] = handler
            _add(CommandSpec(name, frozenset(states), capability, **fields))
        return handler

    return register


def connection_command(name: str, *, states: Iterable[State], capability: str | None = None) -> None:
    """Register *name* as answered by the session's own code (LOGIN, IDLE...)."""
    _add(CommandSpec(name, frozenset(states), capability, connection=True, invalid_name="CANNOT"))


def _add(spec: CommandSpec) -> None:
    if spec.capability is not None:
        CAPABILITIES.setdefault(spec.capability)
    COMMANDS[spec.name] = spec
    _ALLOWED_CACHE.clear()


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn)


def allowed(state: State) -> frozenset[str]:
    """The names of the commands valid in *state*."""
    return _ALLOWED_CACHE.get(state) or _allowed(state)


_ALLOWED_CACHE: dict[State, frozenset[str]] = {}


def _allowed(state: State) -> frozenset[str]:
    names = frozenset(name for name, spec in COMMANDS.items() if state in spec.states)
    _ALLOWED_CACHE[state] = names
    return names


def capabilities() -> tuple[str, ...]:
    """The capabilities of the table, in the order registered."""
    return tuple(CAPABILITIES)
