"""
METADATA (RFC 5464): GETMETADATA and SETMETADATA read and write
annotations of the user's mailboxes and of the server (mailbox name
``""``).  METADATA covers what METADATA-SERVER would (server entries), so
only METADATA is advertised.

* The entries are kept by the store
  (:class:`txmail.interfaces.IMetadataStore`); a store without it gets
  METADATA not advertised (:func:`withheld_capabilities`) and the
  commands answer ``NO [CANNOT]``.
* Entry names are checked by the parser (RFC 5464 section 3.2: BAD) and
  lower-cased (they are case-insensitive).
* ``/private`` and ``/shared`` are both kept, per mailbox.  Each user
  sees only their own mailboxes, so a mailbox's ``/shared`` entries are
  seen by its owner alone.  Server entries: ``/private/...`` ones are the
  user's own; ``/shared/...`` ones are the administrator's,
  ``/shared/admin`` and ``/shared/comment`` from the configuration
  (``[imap] admin`` and ``comment``), read-only for users (SETMETADATA
  ``NO [PERMISSIONDENIED]``, section 3.3 allows the restriction;
  ``/shared/admin`` is ``NO [CANNOT]``: always read-only, section
  3.2.1.1).
* ``/private/specialuse`` (RFC 6154 section 4) is the mailbox's role,
  computed, read-only (``NO [CANNOT]``; CREATE-SPECIAL-USE sets it).
* GETMETADATA answers each entry asked with its value, ``NIL`` when it
  has none and DEPTH is 0 (as Dovecot and Cyrus), and with DEPTH 1 or
  infinity the entries below it (section 4.2.2), in one ``* METADATA``
  response.  MAXSIZE leaves out longer values and ends ``OK [METADATA
  LONGENTRIES n]``, *n* the longest left out (section 4.2.1).
* SETMETADATA is all or none (section 4.3): a value longer than the
  user's limit is ``NO [METADATA MAXSIZE n]``, more entries than the
  per-user limit ``NO [METADATA TOOMANY]`` (limits from
  :class:`txmail.imap.session.IMAPLimits`).  ``NO [METADATA NOPRIVATE]``
  is never needed: private entries are supported everywhere.
* Unsolicited METADATA responses (section 4.4.2) only through NOTIFY's
  ``MailboxMetadataChange`` and ``ServerMetadataChange`` (RFC 5465
  sections 5.6 and 5.7, which need no ENABLE METADATA;
  :mod:`txmail.imap.commands.notify_metadata`), offered here for stores
  with annotations.  ENABLE METADATA (section 4.1, a MAY) is not offered:
  without NOTIFY no unsolicited METADATA is sent.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from txmail.imap.commands import notify, notify_metadata
from txmail.imap.commands.context import CommandContext, call, store_op, user_store
from txmail.imap.commands.mailboxes import special_uses
from txmail.imap.commands.registry import AUTHENTICATED, command
from txmail.imap.responses import Done, MetadataData, No
from txmail.imap.types import Command, GetMetadata, SetMetadata
from txmail.interfaces import IMailStore, IMetadataStore

__all__ = ["CAPABILITIES", "select_entries", "withheld_capabilities"]

#: The capabilities of this module.  METADATA covers server and mailbox
#: entries; METADATA-SERVER would claim server entries only (RFC 5464
#: section 1), so it is not advertised beside it (as Dovecot and Cyrus).
CAPABILITIES = ("METADATA",)

# RFC 5465 sections 5.6 and 5.7: REQUIRED of a server with METADATA, for
# the stores that keep annotations (BADEVENT with the others).
for _event in notify_metadata.EVENTS:
    notify.support_event(_event, IMetadataStore.providedBy)

#: Computed entries (never stored).
SPECIALUSE = "/private/specialuse"
ADMIN = "/shared/admin"
COMMENT = "/shared/comment"


def withheld_capabilities(store: IMailStore | None) -> frozenset[str]:
    """The capabilities of this module that *store* does not back."""
    return frozenset() if IMetadataStore.providedBy(store) else frozenset(CAPABILITIES)


def _metadata_store(ctx: CommandContext) -> IMetadataStore:
    store = IMetadataStore(ctx.store, None)
    if store is None:
        raise No("METADATA is not available for this mailbox store", "CANNOT")
    return store


async def _computed(ctx: CommandContext, mailbox: str, names: Iterable[str]) -> dict[str, bytes]:
    """The read-only entries of *mailbox* (``""``: the server's) that *names* may ask for."""
    if mailbox == "":
        limits = ctx.session.limits
        out = {}
        if limits.metadata_admin:
            out[ADMIN] = limits.metadata_admin.encode("utf-8")
        if limits.metadata_comment:
            out[COMMENT] = limits.metadata_comment.encode("utf-8")
        return out
    if not any(n == SPECIALUSE or SPECIALUSE.startswith(n + "/") for n in names):
        return {}  # not asked: no listing
    role = (await special_uses(user_store(ctx), (mailbox,))).get(mailbox)
    return {} if role is None else {SPECIALUSE: role.value.encode("ascii")}


def _read_only(mailbox: str, name: str) -> str | None:
    """The response code refusing to set *name* on *mailbox*, or ``None`` when it may be set."""
    if mailbox == "":
        if name == ADMIN:
            return "CANNOT"
        return "PERMISSIONDENIED" if name.startswith("/shared/") else None
    return "CANNOT" if name == SPECIALUSE else None


def select_entries(
    entries: Mapping[str, bytes], names: Iterable[str], depth: int | None
) -> list[tuple[str, bytes | None]]:
    """
    RFC 5464 section 4.2.2: each of *names* with its value (``None`` when
    it has none and *depth* is 0), then with *depth* 1 the entries one
    level below it, with ``None`` (infinity) every entry below it; each
    entry once, in the order asked, those below a name sorted.
    """
    out: list[tuple[str, bytes | None]] = []
    seen: set[str] = set()
    ordered = sorted(entries) if depth != 0 else []
    for name in names:
        if (name in entries or depth == 0) and name not in seen:
            seen.add(name)
            out.append((name, entries.get(name)))
        if depth == 0:
            continue
        prefix = name + "/"
        for key in ordered:
            if key in seen or not key.startswith(prefix):
                continue
            if depth is None or "/" not in key[len(prefix) :]:
                seen.add(key)
                out.append((key, entries[key]))
    return out


@command("GETMETADATA", states=AUTHENTICATED, capability="METADATA", invalid_name="NONEXISTENT")
async def getmetadata(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 5464 section 4.2: the entries asked, in one METADATA response."""
    args = cmd.args
    assert isinstance(args, GetMetadata)
    store = _metadata_store(ctx)
    entries = dict(await store_op(store.get_annotations, args.mailbox))  # NO [NONEXISTENT]
    entries.update(await _computed(ctx, args.mailbox, args.entries))
    found = select_entries(entries, args.entries, args.depth)
    longest = 0
    if args.maxsize is not None:
        kept = []
        for name, value in found:
            if value is not None and len(value) > args.maxsize:
                longest = max(longest, len(value))  # section 4.2.1
            else:
                kept.append((name, value))
        found = kept
    if found:
        ctx.emit(MetadataData(args.mailbox, tuple(found)))
    return Done(code=f"METADATA LONGENTRIES {longest}" if longest else None)


@command("SETMETADATA", states=AUTHENTICATED, capability="METADATA")
async def setmetadata(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 5464 section 4.3: set or remove (NIL) entries, all or none."""
    args = cmd.args
    assert isinstance(args, SetMetadata)
    store = _metadata_store(ctx)
    limits = ctx.session.limits
    changes = dict(args.entries)  # a repeated entry: the last value
    for name in changes:
        code = _read_only(args.mailbox, name)
        if code is not None:
            raise No(f"{name} is read-only", code)
    if any(v is not None and len(v) > limits.metadata_max_size for v in changes.values()):
        raise No("Value too long", f"METADATA MAXSIZE {limits.metadata_max_size}")
    current = await store_op(store.get_annotations, args.mailbox)  # NO [NONEXISTENT]
    added = sum(1 for name, v in changes.items() if v is not None and name not in current)
    removed = sum(1 for name, v in changes.items() if v is None and name in current)
    if added > removed:
        total = await call(store.annotation_count)
        if total + added - removed > limits.metadata_max_entries:
            raise No("Too many entries", "METADATA TOOMANY")
    await store_op(store.set_annotations, args.mailbox, changes)
    return Done()
