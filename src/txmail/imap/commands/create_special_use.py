"""
CREATE-SPECIAL-USE (RFC 6154 section 3): ``CREATE name (USE (\\Junk))``
creates a mailbox with a special-use role (the capability is registered,
after SPECIAL-USE, and CREATE handled in
:mod:`txmail.imap.commands.mailboxes`; the roles are checked here).

* The store keeps one role per mailbox and one mailbox per role
  (:meth:`txmail.interfaces.IMailStore.create_mailbox` takes one
  :class:`txmail.model.SpecialUse`), so a role it does not know (``\\All``,
  ``\\Flagged``, an extension), more than one role, or a role another
  mailbox has already are refused with ``NO [USEATTR]`` (RFC 6154 section
  3: "the server MAY ... refuse").  An empty ``USE ()`` is a plain CREATE.
* The check for a taken role and the creation are two store calls: two
  sessions creating the same role at once could both succeed (the store
  has no compare-and-create).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.context import CommandContext, call, user_store
from txmail.imap.responses import No
from txmail.model import SpecialUse

__all__ = ["requested_role"]

_ROLES = {role.value.upper(): role for role in SpecialUse}


async def requested_role(ctx: CommandContext, attributes: tuple[str, ...]) -> SpecialUse | None:
    """
    The role *attributes* (CREATE's ``USE`` list) ask for, or ``None`` for
    none; ``NO [USEATTR]`` for a role that cannot be given (RFC 6154 section 3).
    """
    if not attributes:
        return None
    if len(set(a.upper() for a in attributes)) > 1:
        raise No("Only one special-use attribute per mailbox", "USEATTR")
    role = _ROLES.get(attributes[0].upper())
    if role is None:
        raise No(f"Unsupported special-use attribute {attributes[0]}", "USEATTR")
    if await call(user_store(ctx).special_use_mailbox, role) is not None:
        raise No(f"Another mailbox has the {role.value} role", "USEATTR")
    return role
