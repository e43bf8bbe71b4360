"""
QUOTA (RFC 9208): GETQUOTAROOT and GETQUOTA report the user's storage
quota (:mod:`txmail.quota`), and STATUS gains DELETED and DELETED-STORAGE.

* One quota root per user, named ``""`` (as Dovecot's default), covering
  every mailbox of the user; its one resource is ``STORAGE``, in units of
  1,024 octets, usage rounded up (RFC 9208 section 5.1.1).  A user without
  a limit has no quota root: ``* QUOTAROOT INBOX`` names none, and
  ``GETQUOTA ""`` answers ``NO [NONEXISTENT]``.
* The limits are the administrator's (``[quota]`` in the configuration):
  there is no SETQUOTA, so ``QUOTASET`` is not advertised.
* APPEND, COPY and MOVE enforce the limit with ``NO [OVERQUOTA]``
  (:func:`txmail.imap.commands.mailboxes.check_quota`).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.context import CommandContext, call, store_op, user_store
from txmail.imap.commands.registry import AUTHENTICATED, command, extension
from txmail.imap.responses import Done, No, QuotaData, QuotaRootData
from txmail.imap.types import Command, GetQuota, GetQuotaRoot
from txmail.interfaces import IStorageUsage

__all__ = ["ROOT", "quota_data"]

#: The name of the (only) quota root.
ROOT = ""


async def quota_data(ctx: CommandContext) -> QuotaData | None:
    """The user's quota root with its STORAGE usage and limit, or ``None`` without a limit."""
    quotas = ctx.quotas
    store = ctx.store
    limit = None if quotas is None else quotas.limit_for(ctx.session.user or "")
    if limit is None or not IStorageUsage.providedBy(store):
        return None
    usage = await call(store.usage)
    return QuotaData(ROOT, (("STORAGE", -(-usage.octets // 1024), limit // 1024),))


@command("GETQUOTAROOT", states=AUTHENTICATED, capability="QUOTA", invalid_name="NONEXISTENT")
async def getquotaroot(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 9208 section 4.2.2: the mailbox's quota roots, then each root's QUOTA."""
    args = cmd.args
    assert isinstance(args, GetQuotaRoot)
    await store_op(user_store(ctx).get_mailbox, args.mailbox)  # NO [NONEXISTENT] for a missing one
    data = await quota_data(ctx)
    ctx.emit(QuotaRootData(args.mailbox, () if data is None else (ROOT,)))
    if data is not None:
        ctx.emit(data)
    return Done()


@command("GETQUOTA", states=AUTHENTICATED, capability="QUOTA")
async def getquota(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 9208 section 4.2.1: one root's resources; an unknown root is NO."""
    args = cmd.args
    assert isinstance(args, GetQuota)
    data = await quota_data(ctx) if args.root == ROOT else None
    if data is None:
        raise No("No such quota root", "NONEXISTENT")
    ctx.emit(data)
    return Done()


# After QUOTA (the commands' capability) in the CAPABILITY list.
extension("QUOTA=RES-STORAGE")
