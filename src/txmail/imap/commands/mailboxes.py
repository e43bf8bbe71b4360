"""
The commands of the authenticated state that manage mailboxes (RFC 3501
sections 6.3.3 to 6.3.11): CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE, LIST (with LIST-EXTENDED, RFC 5258, and LIST-STATUS, RFC
5819), LSUB, STATUS and APPEND, and the RFC 6154 special-use roles.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from txmail.imap.commands import catenate, condstore, imap4rev2, objectid
from txmail.imap.commands.context import CommandContext, call, store_op, target_mailbox, user_store
from txmail.imap.commands.create_special_use import requested_role
from txmail.imap.commands.multiappend import append_messages, appenduid
from txmail.imap.commands.registry import AUTHENTICATED, command, extension
from txmail.imap.responses import Bad, Done, ListData, No, StatusData
from txmail.imap.types import (
    Append,
    Command,
    Create,
    Delete,
    List,
    Lsub,
    Rename,
    Status,
    Subscribe,
    Unsubscribe,
)
from txmail.interfaces import IMailStore, IStorageUsage
from txmail.model import INBOX, FolderInfo, SpecialUse, match_mailbox_pattern, normalize_flags
from txmail.quota import QuotaExceeded

__all__ = ["check_quota", "special_uses", "status_response"]

# RFC 3348 (\HasChildren), RFC 6154 (roles in LIST; CREATE-SPECIAL-USE:
# :mod:`txmail.imap.commands.create_special_use`), RFC 5258, RFC 5819.
extension("CHILDREN", "SPECIAL-USE", "CREATE-SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS")


@command("CREATE", states=AUTHENTICATED)
async def create(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.3, with RFC 6154 section 3 CREATE-SPECIAL-USE."""
    args = cmd.args
    assert isinstance(args, Create)
    role = await requested_role(ctx, args.special_use)
    await store_op(user_store(ctx).create_mailbox, args.mailbox, *(() if role is None else (role,)))
    return Done(code=await objectid.created_code(ctx, args.mailbox))  # RFC 8474 section 4.1


@command("DELETE", states=AUTHENTICATED, invalid_name="NONEXISTENT")
async def delete(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.4."""
    args = cmd.args
    assert isinstance(args, Delete)
    if args.mailbox == INBOX:
        raise No("INBOX cannot be deleted", "CANNOT")
    await store_op(imap4rev2.delete_mailbox, ctx.store, args.mailbox, ctx.session)
    return Done()


@command("RENAME", states=AUTHENTICATED)
async def rename(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.5."""
    args = cmd.args
    assert isinstance(args, Rename)
    await store_op(user_store(ctx).rename_mailbox, args.old, args.new)
    return Done()


@command("SUBSCRIBE", states=AUTHENTICATED)
async def subscribe(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.6."""
    args = cmd.args
    assert isinstance(args, Subscribe)
    await store_op(user_store(ctx).subscribe, args.mailbox)
    return Done()


@command("UNSUBSCRIBE", states=AUTHENTICATED, invalid_name="NONEXISTENT")
async def unsubscribe(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.7."""
    args = cmd.args
    assert isinstance(args, Unsubscribe)
    await store_op(user_store(ctx).unsubscribe, args.mailbox)
    return Done()


def _join(reference: str, pattern: str) -> str:
    """RFC 3501 section 6.3.8: the reference name and the pattern, with one delimiter between."""
    if not reference:
        return pattern
    if pattern.startswith("/"):
        return pattern.lstrip("/")
    return reference.rstrip("/") + "/" + pattern


def _mailbox_order(name: str) -> tuple[bool, str]:
    return (name != INBOX, name)


def _attributes(folder: FolderInfo | None, subscribed: bool) -> tuple[str, ...]:
    """The LIST attributes of a mailbox (RFC 3501 section 7.2.2, RFC 3348, RFC 5258, RFC 6154)."""
    attrs: list[str] = []
    if folder is None:
        attrs.append("\\NonExistent")
    else:
        if not folder.selectable:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if folder.has_children else "\\HasNoChildren")
        if folder.special_use is not None:
            attrs.append(folder.special_use.value)
    if subscribed:
        attrs.append("\\Subscribed")
    return tuple(attrs)


@command("LIST", states=AUTHENTICATED, invalid_name="")
async def list_(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.8, RFC 5258 (LIST-EXTENDED), RFC 5819 (LIST-STATUS)."""
    args = cmd.args
    assert isinstance(args, List)
    imap4rev2.check_status_items(ctx.session, args.status_items or ())
    if args.patterns == ("",) and not args.selection_options and not args.return_options:
        # RFC 3501 section 6.3.8: the delimiter and the root.
        ctx.emit(ListData("", ("\\Noselect",)))
        return Done()
    store = user_store(ctx)
    folders: list[FolderInfo] = await call(store.list_mailboxes, "*")
    subscribed = set(await call(store.subscriptions))
    sel = set(args.selection_options)
    ret = set(args.return_options)
    patterns = [_join(args.reference, p) for p in args.patterns if p != ""]
    by_name = {f.name: f for f in folders}
    show_subscribed = "SUBSCRIBED" in sel or "SUBSCRIBED" in ret
    # The selection criteria (RFC 5258 section 3.1); RECURSIVEMATCH and
    # REMOTE select nothing themselves.
    criteria = tuple(dict.fromkeys(o for o in args.selection_options if o in ("SUBSCRIBED", "SPECIAL-USE")))

    def selected(name: str) -> bool:
        if "SUBSCRIBED" in sel and name not in subscribed:
            return False
        if "SPECIAL-USE" in sel:
            folder = by_name.get(name)
            return folder is not None and folder.special_use is not None
        return True

    def matched(name: str) -> bool:
        return any(match_mailbox_pattern(p, name) for p in patterns)

    names = sorted(subscribed, key=_mailbox_order) if "SUBSCRIBED" in sel else [f.name for f in folders]
    chosen = [name for name in names if selected(name)]
    # Returned mailboxes, in order, with whether each gets CHILDINFO.
    entries = {name: False for name in chosen if matched(name)}
    if "RECURSIVEMATCH" in sel:
        # RFC 5258 section 3.5: a parent that matches the pattern gets
        # CHILDINFO (and is returned for it) when a descendant meets
        # the criteria but is not itself returned.
        for name in chosen:
            if name in entries:
                continue
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = "/".join(parts[:i])
                if matched(parent):
                    entries[parent] = True
        entries = dict(sorted(entries.items(), key=lambda item: _mailbox_order(item[0])))
    for name, childinfo in entries.items():
        folder = by_name.get(name)
        attributes = _attributes(folder, name in subscribed and show_subscribed)
        ctx.emit(ListData(name, attributes, childinfo=criteria if childinfo else ()))
        if args.status_items is not None and folder is not None and folder.selectable:
            ctx.emit(await status_response(ctx, name, args.status_items))
    return Done()


@command("LSUB", states=AUTHENTICATED, invalid_name="")
async def lsub(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.9."""
    args = cmd.args
    assert isinstance(args, Lsub)
    pattern = _join(args.reference, args.pattern)
    folders: list[FolderInfo] = await call(user_store(ctx).list_mailboxes, "*")
    by_name = {f.name: f for f in folders}
    subscribed = set(await call(user_store(ctx).subscriptions))
    found: dict[str, bool] = {}  # name -> selectable
    for name in subscribed:
        if match_mailbox_pattern(pattern, name):
            folder = by_name.get(name)
            found[name] = folder is not None and folder.selectable
            continue
        # RFC 3501 section 6.3.9: with "%", the parent of a subscribed
        # mailbox is returned, flagged \Noselect when it is not
        # subscribed itself.
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in subscribed and match_mailbox_pattern(pattern, parent):
                found[parent] = False
    for name in sorted(found, key=_mailbox_order):
        ctx.emit(ListData(name, () if found[name] else ("\\Noselect",), verb="LSUB"))
    return Done()


async def status_response(ctx: CommandContext, name: str, items: tuple[str, ...]) -> StatusData:
    """The STATUS response of mailbox *name* (RFC 3501 section 7.2.4, RFC 8438 SIZE, RFC 7889 APPENDLIMIT)."""
    mailbox = await store_op(user_store(ctx).get_mailbox, name)
    status = await call(mailbox.status)
    values: dict[str, int | str] = {
        "MESSAGES": status.messages,
        "RECENT": status.recent,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "SIZE": status.size,
        "APPENDLIMIT": ctx.session.limits.max_literal,
        "HIGHESTMODSEQ": status.highest_modseq,  # RFC 7162 section 3.1.7
    }
    if "MAILBOXID" in items:
        found = objectid.mailbox_id(mailbox)  # RFC 8474 section 4.3; left out without one
        if found is not None:
            values["MAILBOXID"] = found
    if "HIGHESTMODSEQ" in items:
        condstore.enable_implicitly(ctx)  # a CONDSTORE enabling command (section 3.1)
    if "DELETED" in items or "DELETED-STORAGE" in items:
        # RFC 9208 section 4.3: the messages flagged \Deleted, and their size.
        deleted = [info for info in await call(mailbox.list_messages) if "\\Deleted" in info.flags]
        values["DELETED"] = len(deleted)
        values["DELETED-STORAGE"] = -(-sum(info.size for info in deleted) // 1024)
    return StatusData(name, tuple((item, values[item]) for item in items if item in values))


# RFC 8438: STATUS (and LIST-STATUS) SIZE, the sum of the messages' RFC822.SIZE.
extension("STATUS=SIZE")


@command("STATUS", states=AUTHENTICATED, invalid_name="NONEXISTENT")
async def status(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.3.10."""
    args = cmd.args
    assert isinstance(args, Status)
    imap4rev2.check_status_items(ctx.session, args.items)
    ctx.emit(await status_response(ctx, args.mailbox, args.items))
    return Done()


async def check_quota(ctx: CommandContext, size: int) -> None:
    """``NO [OVERQUOTA]`` unless *size* more octets fit in the user's quota (RFC 9208 section 4.3)."""
    quotas = ctx.quotas
    store = ctx.store
    if quotas is None or not IStorageUsage.providedBy(store):
        return
    try:
        quotas.check(ctx.session.user or "", await call(store.usage), size)
    except QuotaExceeded:
        raise No("Quota exceeded", "OVERQUOTA") from None


@command("APPEND", states=AUTHENTICATED)
async def append(ctx: CommandContext, cmd: Command) -> Done:
    """
    RFC 3501 section 6.3.11, with RFC 4315 APPENDUID, RFC 3502
    MULTIAPPEND (:mod:`txmail.imap.commands.multiappend`) and RFC 4469
    CATENATE (:mod:`txmail.imap.commands.catenate`).
    """
    args = cmd.args
    assert isinstance(args, Append)
    messages = args.messages
    try:
        for m in messages:
            normalize_flags(m.flags)
    except ValueError:
        raise Bad("Invalid flag") from None
    mailbox = await target_mailbox(user_store(ctx), args.mailbox)
    messages = await catenate.build_messages(ctx, messages)
    await check_quota(ctx, sum(len(m.literal) for m in messages))
    uids = await append_messages(ctx, mailbox, messages)
    return Done(code=appenduid(mailbox, uids))


async def special_uses(store: IMailStore, names: tuple[str, ...]) -> dict[str, SpecialUse]:
    """The RFC 6154 role of each mailbox of *names* that has one."""
    roles: dict[str, SpecialUse] = {}
    for name in set(names):
        if "*" in name or "%" in name:
            continue  # a LIST pattern would match others
        for folder in await call(store.list_mailboxes, name):
            if folder.name == name and folder.special_use is not None:
                roles[name] = folder.special_use
    return roles
