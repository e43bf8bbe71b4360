"""
IMAP4rev1's commands valid in any state, the connection commands the
session answers itself, and the small extensions that need no store: ID
(RFC 2971), ENABLE (RFC 5161), NAMESPACE (RFC 2342).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from txmail.errors import StoreError
from txmail.imap.commands.context import CommandContext, call
from txmail.imap.commands.registry import (
    ANY_STATE,
    AUTHENTICATED,
    ENABLEABLE,
    NOT_AUTHENTICATED,
    SELECTED,
    command,
    connection_command,
    extension,
)
from txmail.imap.responses import CapabilityData, Done, Enabled, IdData, NamespaceData, Response
from txmail.imap.types import Command, Enable, Id

__all__ = ["IMPLEMENTATION"]

#: The name ID gives (RFC 2971 section 3.3).
IMPLEMENTATION = "txmail"

# RFC 3501 itself, and the syntax extensions of the parser and session:
# RFC 7888 non-synchronizing literals, RFC 4959 initial responses.
extension("IMAP4rev1", "LITERAL+", "SASL-IR")

# Changing the connection: IMAPSession's own code (framing, SASL, TLS).
connection_command("LOGIN", states=NOT_AUTHENTICATED)
connection_command("AUTHENTICATE", states=NOT_AUTHENTICATED)
connection_command("STARTTLS", states=NOT_AUTHENTICATED)
connection_command("LOGOUT", states=ANY_STATE)


@command("CAPABILITY", states=ANY_STATE)
def capability(session: Any, cmd: Command) -> Sequence[Response]:
    """RFC 3501 section 6.1.1: what the session offers now."""
    return (CapabilityData(session.capabilities()),)


@command("ID", states=ANY_STATE, capability="ID")
def id_(session: Any, cmd: Command) -> Sequence[Response]:
    """RFC 2971 section 3.1: our name (and version), whatever the client says."""
    assert isinstance(cmd.args, Id)
    fields = ["name", IMPLEMENTATION]
    if session.version:
        fields += ["version", session.version]
    return (IdData(tuple(fields)),)


@command("ENABLE", states=AUTHENTICATED, capability="ENABLE")
def enable(session: Any, cmd: Command) -> Sequence[Response]:
    """
    RFC 5161 section 3.1: only capabilities that can be enabled
    (:data:`~txmail.imap.commands.registry.ENABLEABLE`, e.g. CONDSTORE)
    and were not enabled before are listed in ENABLED.
    """
    assert isinstance(cmd.args, Enable)
    # Capability names are case-insensitive (IMAP4rev2 is offered mixed-case).
    offered = {c.upper(): c for c in session.capabilities()}
    out: list[Response] = []
    done: list[str] = []
    for requested in dict.fromkeys(cmd.args.capabilities):
        name = offered.get(requested, "")
        turn_on = ENABLEABLE.get(name)
        if turn_on is None or name in session.enabled:
            continue
        out.extend(turn_on(session))
        session.enabled.add(name)
        done.append(name)
    return (*out, Enabled(tuple(done)))


connection_command("IDLE", states=AUTHENTICATED, capability="IDLE")


@command("NAMESPACE", states=AUTHENTICATED, capability="NAMESPACE")
def namespace(session: Any, cmd: Command) -> Sequence[Response]:
    """RFC 2342: one personal namespace, no prefix, "/" as the delimiter."""
    return (NamespaceData(personal=(("", "/"),)),)


@command("NOOP", states=ANY_STATE)
def noop_unselected(session: Any, cmd: Command) -> Sequence[Response]:
    """NOOP with no mailbox selected: nothing to look at (RFC 3501 section 6.1.2)."""
    return ()


@command("NOOP", states=ANY_STATE)
async def noop(ctx: CommandContext, cmd: Command) -> Done:
    """
    NOOP and CHECK with a mailbox selected (RFC 3501 sections 6.1.2 and
    6.4.1): look for changes made behind the store's back (another
    program's file in a Maildir; ``refresh_if_changed`` is a cheap check
    where the store has it), then the session tells the client what
    changed before the tagged OK.
    """
    view = ctx.session.view
    refresh = getattr(ctx.mailbox, "refresh_if_changed", None)
    if refresh is not None and view is not None and not view.deleted:
        with contextlib.suppress(StoreError):
            # Gone behind our back: the store tells the listeners.
            await call(refresh)
    return Done()


command("CHECK", states=SELECTED, on_messages=True)(noop)
