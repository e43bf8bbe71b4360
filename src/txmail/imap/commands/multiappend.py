"""
MULTIAPPEND (RFC 3502): one APPEND carries several messages, appended all
or none.

* Everything that can be checked before writing is checked first: the
  flags of every message, the target mailbox, and the quota for the sum
  of the sizes (RFC 9208 section 4.3).
* The messages are then appended one after the other.  If one fails, the
  ones already appended are taken back: flagged ``\\Deleted`` and
  expunged by UID (:meth:`txmail.interfaces.IMailbox.expunge`), which is
  as close to "all or none" as the mailbox contract allows: another
  session with the mailbox selected may see them arrive and go (EXISTS,
  then EXPUNGE), and if the undo itself fails they stay (logged by the
  adapter with the original error, answered ``NO [SERVERBUG]``).
* The tagged OK carries ``APPENDUID uidvalidity uid-set`` (RFC 4315
  section 3), the UIDs in the order of the messages.
* The command's total size is bounded by the framer (``max_command``:
  one maximal literal and 64 KiB), so a MULTIAPPEND is about as large as
  the APPENDLIMIT; each literal may be LITERAL+ (RFC 7888).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from txmail.imap import serialize
from txmail.imap.commands.context import CommandContext, call
from txmail.imap.commands.registry import extension
from txmail.imap.responses import Bad
from txmail.imap.types import AppendMessage
from txmail.interfaces import IMailbox
from txmail.model import FlagMode, MessageSource, normalize_flags

__all__ = ["append_messages", "appenduid", "take_back"]


async def append_messages(
    ctx: CommandContext, mailbox: IMailbox, messages: Sequence[AppendMessage]
) -> list[int]:
    """
    Append *messages* to *mailbox*, all or none: the new UIDs in order.
    ``BAD`` for an invalid flag (before anything is written); a store
    error after some were appended takes those back and is raised again.
    """
    try:
        prepared = [
            (
                MessageSource.from_bytes(m.literal),
                normalize_flags(m.flags),
                m.date.timestamp() if m.date is not None else None,
            )
            for m in messages
        ]
    except ValueError:
        raise Bad("Invalid flag") from None
    uids: list[int] = []
    try:
        for source, flags, when in prepared:
            uids.append(await call(mailbox.append, source, flags, when))
    except BaseException:
        if uids:
            await take_back(mailbox, uids)
        raise
    return uids


async def take_back(mailbox: IMailbox, uids: list[int]) -> None:
    """Remove the messages *uids* just appended: ``\\Deleted``, then UID EXPUNGE of them only."""
    await call(mailbox.set_flags, uids, ("\\Deleted",), FlagMode.ADD)
    await call(mailbox.expunge, uids)


def appenduid(mailbox: IMailbox, uids: Sequence[int]) -> str:
    """RFC 4315 section 3 (RFC 3502): ``APPENDUID uidvalidity uid-set``."""
    return f"APPENDUID {mailbox.uidvalidity} {serialize.number_set(uids).decode('ascii')}"


extension("MULTIAPPEND")
