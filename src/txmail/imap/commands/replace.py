"""
REPLACE (RFC 8508): REPLACE and UID REPLACE put a new message into a
mailbox (often the selected one: an edited draft) and expunge the old one,
as one command.

* Checked first: the selected mailbox is writable (``NO [READ-ONLY]``:
  the old message must be expunged), the message exists (a sequence
  number out of range is ``BAD``, as for other commands; an unknown UID
  is ``NO [NONEXISTENT]``), the flags, the target (``NO [TRYCREATE]``)
  and the quota for the new message's size.
* Then the new message is appended; the untagged ``OK [APPENDUID
  uidvalidity uid]`` comes before the ``EXPUNGE`` (RFC 8508 section 3.3);
  the old message is flagged ``\\Deleted`` and expunged by UID.
* Atomic as far as the mailbox contract allows: if the append fails,
  nothing changed (the old message stays); if flagging or expunging the
  old message fails, the new one is taken back
  (:func:`txmail.imap.commands.multiappend.take_back`), the old one's
  ``\\Deleted`` removed again if this command set it, and the command
  fails, so the client still has one copy, the old one.  Other sessions
  may see the new message before the old one goes.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands.catenate import build_message
from txmail.imap.commands.context import CommandContext, call, selected_mailbox, target_mailbox, user_store
from txmail.imap.commands.mailboxes import check_quota
from txmail.imap.commands.multiappend import append_messages, appenduid, take_back
from txmail.imap.commands.registry import SELECTED, command
from txmail.imap.responses import Bad, Done, Expunged, No, UntaggedOk
from txmail.imap.types import Command, Replace, SequenceSet
from txmail.imap.view import SequenceError
from txmail.model import FlagMode

__all__: list[str] = []


@command("REPLACE", states=SELECTED, capability="REPLACE", on_messages=True)
async def replace(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 8508 section 3: append to the target, then expunge the replaced message."""
    args = cmd.args
    assert isinstance(args, Replace)
    view = ctx.session.view
    if view.read_only:
        raise No("Mailbox is read-only", "READ-ONLY")
    try:
        found = view.resolve(SequenceSet(((args.number, args.number),)), uid=args.uid)
    except SequenceError as e:
        raise Bad(str(e)) from None
    if not found:
        raise No("No such message", "NONEXISTENT")
    ((_, old_uid),) = found
    target = await target_mailbox(user_store(ctx), args.mailbox)
    message = await build_message(ctx, args.message)  # RFC 4469 CATENATE
    await check_quota(ctx, len(message.literal))
    (new_uid,) = await append_messages(ctx, target, [message])
    mailbox = selected_mailbox(ctx)
    flagged = False
    try:
        changed = await call(mailbox.set_flags, [old_uid], ("\\Deleted",), FlagMode.ADD)
        flagged = any(info.uid == old_uid for info in changed)
        removed = await call(mailbox.expunge, [old_uid])
    except BaseException:
        if flagged:
            await call(mailbox.set_flags, [old_uid], ("\\Deleted",), FlagMode.REMOVE)
        await take_back(target, [new_uid])
        raise
    # RFC 8508 section 3.3: APPENDUID in an untagged OK, before the EXPUNGE.
    ctx.emit(UntaggedOk("Replacement message ready", appenduid(target, [new_uid])))
    ctx.emit(Expunged(tuple(view.expunge(removed))))
    return Done("UID REPLACE completed" if args.uid else "REPLACE completed")
