"""
The IMAP command layer: what each command means, apart from the bytes.

Theory of operation
-------------------
::

    imap.server (Twisted: bytes, batching, back-pressure, timers)
        │ Execute(command)                       ▲ emit(response) / Done / No / Bad
        ▼                                        │
    imap.session ── COMMANDS[name] ──► handler(ctx, command) ──► IMailStore / IMailbox
        │ (states, answer at once)               │
        └──────────── typed responses ───────────┴──► imap.serialize.render ──► bytes

* :data:`COMMANDS` maps each command name to a
  :class:`~txmail.imap.commands.registry.CommandSpec`: the states it is
  valid in (the session answers ``BAD`` elsewhere), the capability it
  belongs to, and its handler.  The session's state table and the
  CAPABILITY list (:func:`capabilities`) are built from it.
* A ``run`` handler is a coroutine ``(ctx, command) -> Done`` working on
  the mailbox contract through
  :class:`~txmail.imap.commands.context.CommandContext`; it emits untagged
  responses (the dataclasses of :mod:`txmail.imap.responses`) and returns
  :class:`~txmail.imap.responses.Done` or raises
  :class:`~txmail.imap.responses.No` / :class:`~txmail.imap.responses.Bad`.
  An unexpected exception is logged by the adapter and answered ``NO
  [SERVERBUG]``.
* An ``answer`` handler ``(session, command) -> responses`` needs no store
  and is answered by the session at once (CAPABILITY, ID, NAMESPACE).
* Handlers never import Twisted (``tests/test_sansio_imports.py``): they
  await what the store returns (:func:`~txmail.imap.commands.context.call`).

Adding a command (an extension)
-------------------------------
1. Parse it: a dataclass for its arguments in :mod:`txmail.imap.types` and
   its ABNF rule in :mod:`txmail.imap.parser`.
2. Give its responses a dataclass in :mod:`txmail.imap.responses` and a
   renderer in :data:`txmail.imap.serialize._RENDERERS`.
3. Write the handler in a module of this package (one small module per
   extension, e.g. ``commands/quota.py``), decorated with
   ``@command("NAME", states=AUTHENTICATED, capability="NAME")``; a
   capability that only changes other commands is declared with
   ``extension("NAME")``.
4. Import the module below: its commands and capabilities are then in the
   table, and advertised.  Advertise only what is complete and tested.
5. Test the handler without Twisted (``tests/imap/test_commands.py``) and
   through the adapter (``tests/imap/test_server.py``).

This package is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

# The order of the imports is the order of the capabilities.
from txmail.imap.commands import (  # noqa: F401
    base,
    compress,
    context_updates,
    imap4rev2,
    mailboxes,
    metadata,
    notify,
    objectid,
    preview,
    quota,
    replace,
    savedate,
    searchres,
    selected,
    sort,
    utf8,
)
from txmail.imap.commands.registry import COMMANDS, CommandSpec, State, allowed, capabilities

__all__ = ["COMMANDS", "CommandSpec", "State", "allowed", "capabilities"]
