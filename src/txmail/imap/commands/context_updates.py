"""
CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): the CANCELUPDATE
command.  The searching commands' side (``RETURN (PARTIAL low:high)``,
``RETURN (UPDATE)``, the ``CONTEXT`` hint) is in the SEARCH and SORT
handlers; the updating searches are kept by :mod:`txmail.imap.contexts`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.context import CommandContext
from txmail.imap.commands.registry import SELECTED, command, extension
from txmail.imap.responses import Done, No
from txmail.imap.types import CancelUpdate, Command

__all__ = ["cancel_update"]


@command("CANCELUPDATE", states=SELECTED, capability="CONTEXT=SEARCH")
async def cancel_update(ctx: CommandContext, cmd: Command) -> Done:
    """
    RFC 5267 section 4.3.5: no more updates for the searching commands of
    the tags given.  A tag that is not an updating search's gets ``NO``
    and nothing is cancelled.
    """
    args = cmd.args
    assert isinstance(args, CancelUpdate)
    contexts = ctx.session.contexts
    contexts.drop_unopened()
    if any(tag not in contexts for tag in args.tags):
        raise No("Unknown update tag")
    contexts.cancel(args.tags)
    return Done("Updates cancelled")


# SORT RETURN (PARTIAL/UPDATE) with SORT and ESORT (section 4.1).
extension("CONTEXT=SORT")
