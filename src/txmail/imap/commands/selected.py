"""
Selecting a mailbox and working on its messages (RFC 3501 sections 6.3.1,
6.3.2 and 6.4): SELECT, EXAMINE, CLOSE, UNSELECT (RFC 3691), EXPUNGE (and
UID EXPUNGE, RFC 4315), STORE, COPY, MOVE (RFC 6851), FETCH and SEARCH
(with ESEARCH, RFC 4731, and RFC 5267 CONTEXT=SEARCH's PARTIAL and
UPDATE: :mod:`txmail.imap.contexts`).

Long responses (FETCH, SEARCH over a big mailbox) are produced in batches
of :data:`BATCH` messages: ``await ctx.take_turn()`` between two, and
``await ctx.drain()`` after each, so that the adapter can serve other
connections and apply back-pressure (``streams=True`` in the table).
SELECT and ``FETCH (UID FLAGS RFC822.SIZE)`` read only the store's index;
ENVELOPE and BODYSTRUCTURE come from the cached metadata; only body
sections read message files.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

from txmail.errors import NoSuchMessage
from txmail.imap import contexts, serialize
from txmail.imap.binary import binary_items
from txmail.imap.columns import (
    bulk_search,
    column_predicate,
    fetch_uses_lines,
    has_columns,
    ordered_values,
    read_column_values,
    read_lines,
    search_uses_columns,
    values_predicate,
)
from txmail.imap.commands import condstore, imap4rev2, objectid, qresync, searchres
from txmail.imap.commands.binary import require_decodable
from txmail.imap.commands.context import (
    CommandContext,
    call,
    selected_mailbox,
    store_op,
    target_mailbox,
    user_store,
)
from txmail.imap.commands.mailboxes import check_quota
from txmail.imap.commands.registry import AUTHENTICATED, SELECTED, command, extension
from txmail.imap.fetch import FetchRow, Structures, fetch_needs
from txmail.imap.responses import (
    Bad,
    Done,
    ESearchData,
    Exists,
    FetchBatch,
    FlagsData,
    No,
    Recent,
    SearchData,
    UntaggedOk,
)
from txmail.imap.search import SUPPORTED_CHARSETS, SearchContext, matches, search_needs
from txmail.imap.structures import (
    KEEP_EVERY,
    cached_structures,
    derive_structures,
    derived_structures,
    fetch_uses_structures,
    keep_structures,
    start_keeping,
)
from txmail.imap.types import Command, Copy, Examine, Expunge, Fetch, Move, Search, SearchNode, Select, Store
from txmail.imap.view import SelectedView, SequenceError
from txmail.interfaces import IMailbox
from txmail.model import FlagMode, MailboxStatus, MessageInfo, normalize_flags

__all__ = ["BATCH", "copyuid"]

#: Messages handled per step of FETCH and SEARCH.
BATCH = 256
#: A FETCH asks the store for the structures of this many batches at a time
#: (:func:`txmail.imap.structures.derive_structures`): fewer, longer turns of
#: the Maildir parse workers.
DERIVE_BATCHES = 4
_STORE_MODES = {"": FlagMode.REPLACE, "+": FlagMode.ADD, "-": FlagMode.REMOVE}

# RFC 4315 (APPENDUID, COPYUID, UID EXPUNGE); RFC 4731 (SEARCH RETURN).
extension("UIDPLUS")


def _view(ctx: CommandContext) -> SelectedView:
    view = ctx.session.view
    assert view is not None
    return view  # type: ignore[no-any-return]  # the session is duck-typed (Any)


def _targets(view: SelectedView, seqset: Any, uid: bool) -> list[tuple[int, int]]:
    try:
        return view.resolve(seqset, uid=uid)
    except SequenceError as e:
        raise Bad(str(e)) from None


def _writable(view: SelectedView) -> None:
    if view.read_only:
        raise No("Mailbox is read-only", "READ-ONLY")


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _read_message(mailbox: IMailbox, info: MessageInfo) -> bytes | None:
    """
    The whole message, or ``None`` when it is gone.  A store that has it at
    hand answers at once (the Maildir store reads small files inline; an
    awaited Deferred that has fired gives its result without a trip
    through the event loop).
    """
    try:
        data: bytes = await call(mailbox.read_message, info.uid)
    except NoSuchMessage:
        return None
    return data


#: Messages a FETCH of whole messages asks the store for ahead of the one it
#: writes (a store whose every read is a round trip, to a database, has them
#: under way together), and the octets those may hold at most (one always).
READ_AHEAD = 8
READ_AHEAD_OCTETS = 4 * 1024 * 1024


class _Raised:
    """An exception a read raised at once, raised again when its turn comes."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _abandon(result: Any) -> None:
    """A store call's result that will not be awaited: its failure is not reported, a coroutine closed."""
    if hasattr(result, "addErrback"):
        result.addErrback(lambda failure: None)
    elif hasattr(result, "close") and hasattr(result, "send"):
        result.close()  # a coroutine never awaited


class _ReadAhead:
    """
    The messages of *infos*, read in that order (:meth:`read`), each asked
    of the store up to :data:`READ_AHEAD` messages (and
    :data:`READ_AHEAD_OCTETS`) before its turn.  :meth:`close` forgets the
    reads not taken (their failures too).
    """

    def __init__(self, mailbox: IMailbox, infos: list[MessageInfo]) -> None:
        self._mailbox = mailbox
        self._waiting = list(reversed(infos))
        self._started: dict[int, tuple[Any, int]] = {}
        self._octets = 0
        self._fill()

    def _fill(self) -> None:
        waiting = self._waiting
        while waiting and (
            not self._started
            or (len(self._started) < READ_AHEAD and self._octets + waiting[-1].size <= READ_AHEAD_OCTETS)
        ):
            info = waiting.pop()
            result: object
            try:
                result = self._mailbox.read_message(info.uid)
            except Exception as e:
                result = _Raised(e)
            self._started[info.uid] = (result, info.size)
            self._octets += info.size

    async def read(self, info: MessageInfo) -> bytes | None:
        """The message *info* (the next of the list), or ``None`` when it is gone."""
        result, size = self._started.pop(info.uid)
        self._octets -= size
        self._fill()
        try:
            if isinstance(result, _Raised):
                raise result.error
            if hasattr(result, "__await__"):
                result = await result
            return result  # type: ignore[no-any-return]  # the store's answer is duck-typed (Any)
        except NoSuchMessage:
            return None

    def close(self) -> None:
        for result, _ in self._started.values():
            _abandon(result)
        self._started.clear()
        self._waiting.clear()


# -- selection ---------------------------------------------------------------------------


def _unclaimed(infos: list[MessageInfo], status: MailboxStatus) -> list[int]:
    """
    The UIDs of *infos* that no session has claimed as ``\\Recent``, from a
    *status* taken before the listing: the ``status.recent`` newest below
    its UIDNEXT, and every message that arrived since.
    """
    older = [info.uid for info in infos if info.uid < status.uidnext]
    newer = [info.uid for info in infos if info.uid >= status.uidnext]
    return older[max(0, len(older) - status.recent) :] + newer if status.recent else newer


@command("SELECT", "EXAMINE", states=AUTHENTICATED, invalid_name=None)
async def select(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 sections 6.3.1 (SELECT) and 6.3.2 (EXAMINE)."""
    args = cmd.args
    assert isinstance(args, Select | Examine)
    read_only = isinstance(args, Examine)
    if args.qresync is not None:
        qresync.require_enabled(ctx, "QRESYNC parameter")  # RFC 7162 section 3.2.5
    if ctx.session.view is not None:
        ctx.emit(qresync.closed())  # RFC 7162 section 3.2.11
    ctx.deselect()
    if cmd.invalid_name:
        # RFC 3501 section 6.3.1: a name that is not modified UTF-7 names
        # no mailbox; NO, and no mailbox is selected any more.
        raise No("Mailbox name is not valid modified UTF-7", "NONEXISTENT")
    mailbox = await store_op(user_store(ctx).get_mailbox, args.mailbox)
    # Changes made while we list are kept and applied to the new view.
    ctx.listen(mailbox)
    rev2 = imap4rev2.enabled(ctx.session)
    if rev2:
        # RFC 9051 section 2.3.2: no \Recent, none claimed.
        infos = await call(mailbox.list_messages)
        recent: list[int] = []
        status = await call(mailbox.status)
    elif read_only:
        # RFC 3501 section 6.3.2: EXAMINE must not take \Recent away.
        # The view shows the messages no session has claimed yet (the
        # newest ones: claims go in UID order) without claiming them.
        before = await call(mailbox.status)
        infos = await call(mailbox.list_messages)
        recent = _unclaimed(infos, before)
        status = await call(mailbox.status)
    else:
        infos = await call(mailbox.list_messages)
        recent = await call(mailbox.claim_recent)
        status = await call(mailbox.status)
    view = SelectedView(mailbox.name, mailbox.uidvalidity, infos, read_only=read_only, recent=recent)
    if rev2:
        view.forget_recent()
    ctx.selected(view)
    # RFC 3501 sections 6.3.1 and 7.2.6: with the keywords in use.
    ctx.emit(FlagsData(*view.flag_lists()), Exists(view.exists))
    if not rev2:
        # Neither is sent under IMAP4rev2 (RFC 9051 section 6.3.2).
        ctx.emit(Recent(len(view.recent)))
        first_unseen = next((i + 1 for i, info in enumerate(infos) if "\\Seen" not in info.flags), None)
        if first_unseen is not None:
            ctx.emit(UntaggedOk("First unseen", f"UNSEEN {first_unseen}"))
    ctx.emit(
        UntaggedOk("UIDs valid", f"UIDVALIDITY {mailbox.uidvalidity}"),
        UntaggedOk("Predicted next UID", f"UIDNEXT {status.uidnext}"),
        *objectid.select_response(mailbox),  # RFC 8474 section 4.2
        *condstore.select_responses(ctx, view, status, args.condstore),
    )
    qresync.select_responses(ctx, view, args.qresync)
    if args.qresync is not None:
        ctx.emit(*await qresync.resync(ctx, view, infos, status, args.qresync))
    if rev2:
        ctx.emit(await imap4rev2.select_list(ctx, mailbox.name))  # RFC 9051 section 6.3.2
    # Changes queued while listing that the listing does not hold yet
    # are told by the session before the tagged OK.
    return Done(code="READ-ONLY" if read_only else "READ-WRITE")


@command("CLOSE", states=SELECTED)
async def close(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.4.2: expunge silently, no EXPUNGE responses."""
    view = _view(ctx)
    if not view.read_only and not view.deleted and ctx.mailbox is not None:
        await call(ctx.mailbox.expunge)
    ctx.deselect()
    return Done()


@command("UNSELECT", states=SELECTED, capability="UNSELECT")
async def unselect(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3691: leave the mailbox without expunging."""
    ctx.deselect()
    return Done()


# -- messages ----------------------------------------------------------------------------


@command("EXPUNGE", states=SELECTED, on_messages=True)
async def expunge(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.4.3; UID EXPUNGE, RFC 4315 section 2.1."""
    args = cmd.args
    assert isinstance(args, Expunge)
    view = _view(ctx)
    _writable(view)
    uids = None
    if args.uid_set is not None:
        uids = [u for _, u in _targets(view, args.uid_set, True)]
    removed = await call(selected_mailbox(ctx).expunge, uids)
    ctx.emit(view.expunge_response(removed))  # EXPUNGE, or VANISHED with QRESYNC (RFC 7162 section 3.2.10)
    return Done()


@command("STORE", states=SELECTED, on_messages=True, withholds_expunge=True)
async def store(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.4.6."""
    args = cmd.args
    assert isinstance(args, Store)
    view = _view(ctx)
    _writable(view)
    targets = _targets(view, args.sequence_set, args.uid)
    try:
        flags = normalize_flags(args.flags)
    except ValueError:
        raise Bad("Invalid flag") from None
    uids = [u for _, u in targets]
    if args.unchanged_since is None:
        changed = await call(selected_mailbox(ctx).set_flags, uids, flags, _STORE_MODES[args.mode])
    else:
        # RFC 7162 section 3.1.3: a CONDSTORE enabling command.
        condstore.enable_implicitly(ctx)
        changed = await call(
            selected_mailbox(ctx).set_flags, uids, flags, _STORE_MODES[args.mode], args.unchanged_since
        )
    for info in changed:
        if info.uid in view.flags:
            view.flags[info.uid] = info.flags
    if changed and args.mode != "-" and not view.known_flags.issuperset(flags):
        # RFC 3501 section 7.2.6: a keyword new to the mailbox is told first.
        view.new_flags(flags)
        ctx.emit(FlagsData(*view.flag_lists()))
    if condstore.enabled(ctx.session):
        responses, modified = await condstore.store_responses(
            ctx,
            view,
            targets,
            changed,
            uid=args.uid,
            silent=args.silent,
            unchanged_since=args.unchanged_since,
        )
        ctx.emit(*responses)
        return Done(code=modified)
    if not args.silent:
        # RFC 3501 section 6.4.6: the new flags of each message.
        ctx.emit(
            *[view.flags_fetched(seq, uid, with_uid=args.uid) for seq, uid in targets if uid in view.flags]
        )
    return Done()


def copyuid(uidvalidity: int, pairs: list[tuple[int, int]]) -> str:
    """RFC 4315 section 3: ``COPYUID uidvalidity source-set dest-set`` in matching order."""
    src = ",".join(str(s) for s, _ in pairs)
    dst = ",".join(str(d) for _, d in pairs)
    if len(pairs) > 1:
        # Both sets ascending and contiguous where they can be written as ranges.
        src_compact = serialize.number_set(s for s, _ in pairs).decode("ascii")
        dst_compact = serialize.number_set(d for _, d in pairs).decode("ascii")
        if src_compact.count(",") == dst_compact.count(",") and _same_shape(pairs):
            src, dst = src_compact, dst_compact
    return f"COPYUID {uidvalidity} {src} {dst}"


def _same_shape(pairs: list[tuple[int, int]]) -> bool:
    """Runs of consecutive source UIDs map onto runs of consecutive target UIDs."""
    return all((b[0] - a[0] == 1) == (b[1] - a[1] == 1) for a, b in itertools.pairwise(pairs))


@command("COPY", states=SELECTED, on_messages=True)
async def copy(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.4.7, with RFC 4315 COPYUID."""
    args = cmd.args
    assert isinstance(args, Copy)
    targets = _targets(_view(ctx), args.sequence_set, args.uid)
    target = await target_mailbox(user_store(ctx), args.mailbox)
    uids = [u for _, u in targets]
    if ctx.quotas is not None:
        infos = await call(selected_mailbox(ctx).list_messages, uids)
        await check_quota(ctx, sum(info.size for info in infos))
    pairs = await call(selected_mailbox(ctx).copy, uids, target)
    if not pairs:
        return Done()
    ctx.copied(target, pairs, moved=False)
    return Done(code=copyuid(target.uidvalidity, pairs))


@command("MOVE", states=SELECTED, capability="MOVE", on_messages=True)
async def move(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 6851: COPY, then EXPUNGE of the sources."""
    args = cmd.args
    assert isinstance(args, Move)
    view = _view(ctx)
    _writable(view)
    targets = _targets(view, args.sequence_set, args.uid)
    target = await target_mailbox(user_store(ctx), args.mailbox)
    pairs = await call(selected_mailbox(ctx).move, [u for _, u in targets], target)
    if pairs:
        # RFC 6851 section 4.3: COPYUID in an untagged OK before the EXPUNGEs.
        ctx.emit(
            UntaggedOk("Moved", copyuid(target.uidvalidity, pairs)),
            view.expunge_response(sorted(src for src, _ in pairs)),
        )
        ctx.copied(target, pairs, moved=True)
    return Done()


@command("FETCH", states=SELECTED, on_messages=True, withholds_expunge=True, streams=True)
async def fetch(ctx: CommandContext, cmd: Command) -> Done:
    """RFC 3501 section 6.4.5; UID FETCH, section 6.4.8."""
    args = cmd.args
    assert isinstance(args, Fetch)
    view = _view(ctx)
    mailbox = selected_mailbox(ctx)
    targets = _targets(view, args.sequence_set, args.uid)
    needs = fetch_needs(args.items)
    mark_seen = needs.sets_seen and not view.read_only
    if args.vanished and args.changed_since is not None:
        await qresync.fetch_vanished(ctx, view, args.sequence_set, args.changed_since)
    items = condstore.fetch_items(ctx, args.items, args.changed_since, mark_seen)
    changed_since = args.changed_since
    shows_flags = any(item.name == "FLAGS" for item in args.items)
    wanted_binary = binary_items(args.items)
    # A first sync's header fields, from the store's header lines at once
    # (not for CHANGEDSINCE, which usually answers a few of the targets).
    lines: dict[int, Any] | None = None
    if needs.metadata and targets and changed_since is None and fetch_uses_lines(mailbox, args.items):
        lines = await read_lines(mailbox, [u for _, u in targets])
    # ENVELOPE, BODYSTRUCTURE and BODY of many messages: from what the store
    # keeps, those it lacks rendered from their metadata and kept at the end.
    kept: dict[int, Structures] | None = None
    rendered: dict[int, Structures] = {}
    uses_structures = fetch_uses_structures(mailbox, args.items, len(targets))
    if needs.metadata and lines is None and changed_since is None and uses_structures:
        kept = await cached_structures(mailbox, [u for _, u in targets])
    batches = list(_chunks(targets, BATCH))
    ahead = _Ahead()
    keeping: list[Any] = []  # the keeps asked of the store and not yet awaited
    try:
        for n, batch in enumerate(batches):
            if n:
                await ctx.take_turn()
            uids = [u for _, u in batch]
            infos = {i.uid: i for i in await call(mailbox.list_messages, uids)}
            seen_now: set[int] = set()
            if mark_seen:
                unseen = [u for u in uids if u in infos and "\\Seen" not in infos[u].flags]
                if unseen:
                    changed = await call(mailbox.set_flags, unseen, {"\\Seen"}, FlagMode.ADD)
                    for new in changed:
                        infos[new.uid] = new
                        seen_now.add(new.uid)
            if lines is not None:
                metadata = lines
            elif kept is not None:
                missing = [u for u in uids if u not in kept]
                if missing:
                    # Asked of the store for DERIVE_BATCHES batches at a time, this
                    # group and the next before this one is awaited: a store rendering
                    # them in other processes (the Maildir parse workers) starts on the
                    # next group the moment this one is done.
                    derive = functools.partial(derive_structures, mailbox)
                    group = n - n % DERIVE_BATCHES
                    asked = _missing(batches[group : group + DERIVE_BATCHES], kept)
                    ahead.ask(derive, asked)
                    ahead.ask(
                        derive, _missing(batches[group + DERIVE_BATCHES : group + 2 * DERIVE_BATCHES], kept)
                    )
                    records = await ahead.take(asked)
                    if records is None:
                        records = await call(derive, asked)
                    found = await derived_structures(mailbox, records)
                    for uid, structures in found.items():
                        kept[uid] = rendered[uid] = structures
                    if len(rendered) >= KEEP_EVERY:
                        # Kept as it goes (a client may leave mid-FETCH), while the
                        # FETCH goes on: the workers are asked for the next groups
                        # meanwhile; awaited at the end.
                        keeping.append(start_keeping(mailbox, rendered))
                        rendered = {}
                metadata = kept
            else:
                metadata = await call(mailbox.get_metadata, uids) if needs.metadata else {}
            rows: list[FetchRow] = []
            wanted = []
            for seq, uid in batch:
                info = infos.get(uid)
                if info is None:
                    continue  # expunged by someone else; told later
                if changed_since is not None and info.modseq <= changed_since:
                    continue  # RFC 7162 section 3.1.4.1: not changed since
                wanted.append((seq, info))
            reads = _ReadAhead(mailbox, [info for _, info in wanted]) if needs.message else None
            try:
                for seq, info in wanted:
                    uid = info.uid
                    message = None
                    if reads is not None:
                        message = await reads.read(info)
                        if message is None:
                            continue
                        if wanted_binary:
                            # RFC 3516 section 4.2: NO [UNKNOWN-CTE]
                            require_decodable(message, wanted_binary)
                    if shows_flags or uid in seen_now:
                        view.flags[uid] = info.flags
                    rows.append((seq, info, metadata.get(uid), message, uid in seen_now, uid in view.recent))
            finally:
                if reads is not None:
                    reads.close()
            ctx.emit(FetchBatch(items, args.uid, rows))
            await ctx.drain()
    except BaseException:
        for result in keeping:
            _abandon(result)  # a started keep goes on; its failure is not reported
        raise
    finally:
        ahead.forget()
    for result in keeping:
        if hasattr(result, "__await__"):
            await result
    if rendered:
        await keep_structures(mailbox, rendered)
    return Done("UID FETCH completed" if args.uid else "FETCH completed")


def _missing(batches: list[list[tuple[int, int]]], kept: dict[int, Any]) -> list[int]:
    """The UIDs of *batches* of (sequence number, UID) that *kept* lacks."""
    return [uid for batch in batches for _, uid in batch if uid not in kept]


class _Ahead:
    """What a FETCH asked the store for ahead (the next batch's while the current one is awaited)."""

    def __init__(self) -> None:
        self._asked: dict[tuple[int, ...], Any] = {}

    def ask(self, fn: Callable[[list[int]], Any], uids: list[int]) -> None:
        """``fn(uids)`` asked now, unless it was already; its answer taken later (:meth:`take`)."""
        key = tuple(uids)
        if uids and key not in self._asked:
            self._asked[key] = fn(uids)

    async def take(self, uids: list[int]) -> Any:
        """The answer (or error) of what was asked for *uids* (``None`` when nothing was)."""
        asked = self._asked.pop(tuple(uids), None)
        return (await asked) if hasattr(asked, "__await__") else asked

    def forget(self) -> None:
        """The FETCH ended without taking them: an error they may end with is not reported."""
        asked, self._asked = self._asked, {}
        for result in asked.values():
            _abandon(result)


def _bulk_hits(key: SearchNode, uids: Any, column_values: dict[int, tuple[str, ...]]) -> list[Any] | None:
    """
    The (sequence number, UID) of the messages of *uids* whose column
    tuples *key* (a key of the columns alone) matches, by
    :func:`txmail.imap.columns.bulk_search`; None when some message has no
    tuple or *key* is not answered in bulk (then each message is tested).
    """
    values = ordered_values(column_values, uids)
    if values is None:
        return None
    places = bulk_search(key, values)
    if places is None:
        return None
    return [(i + 1, uids[i]) for i in places]


@command(
    "SEARCH", states=SELECTED, capability="ESEARCH", on_messages=True, withholds_expunge=True, streams=True
)
async def search(ctx: CommandContext, cmd: Command) -> Done:
    """
    RFC 3501 section 6.4.4; RFC 4731 ESEARCH (SEARCH RETURN); RFC 5182
    SEARCHRES (``RETURN (SAVE)``, ``$``); IMAP4rev2 answers ESEARCH.
    """
    args = cmd.args
    assert isinstance(args, Search)
    view = _view(ctx)
    key = searchres.replace_saved(args.key, view)
    options = imap4rev2.search_options(ctx.session, args.return_options)
    searchres.forget(view, options)
    imap4rev2.check_search_keys(ctx.session, args.key)
    if args.charset is not None and args.charset.upper() not in SUPPORTED_CHARSETS:
        raise No("Unsupported charset", "BADCHARSET (" + " ".join(SUPPORTED_CHARSETS) + ")")
    mailbox = selected_mailbox(ctx)
    live = contexts.begin(ctx, cmd.tag, args.uid, key, options)  # RFC 5267 section 4.3
    needs = search_needs(key)
    with_modseq = condstore.search_uses_modseq(key)
    if with_modseq:
        condstore.enable_implicitly(ctx)  # RFC 7162 section 3.1.5
    top_modseq = 0
    sctx = SearchContext(max_seq=view.exists, max_uid=view.max_uid, recent_uids=frozenset(view.recent))
    found: list[int] = []
    # The header keys answered by the store's header columns: read at once,
    # and tested on the flat tuples by the key compiled once (columns.column_predicate).
    by_columns = needs.metadata and not needs.message and has_columns(mailbox) and search_uses_columns(key)
    column_values = await read_column_values(mailbox, view.uids) if by_columns else {}
    test = column_predicate(key, sctx) if by_columns else None
    on_values = values_predicate(key) if by_columns else None
    # A key of the columns alone, every message having them: the matches
    # found in bulk, one text a field (columns.bulk_search), and only they listed.
    hits = _bulk_hits(key, view.uids, column_values) if on_values is not None else None
    pairs = list(enumerate(view.uids, 1)) if hits is None else hits
    for n, batch in enumerate(_chunks(pairs, BATCH * 4)):
        if n:
            await ctx.take_turn()
        if hits is not None:
            # The listing tells which are left (expunged meanwhile: skipped) and their mod-sequences.
            infos = {i.uid: i for i in await call(mailbox.list_messages, [u for _, u in batch])}
            for seq, uid in batch:
                info = infos.get(uid)
                if info is not None:
                    found.append(uid if args.uid else seq)
                    top_modseq = max(top_modseq, info.modseq)
            continue
        if on_values is not None:
            # A key of the columns alone: every message tested on them, and
            # only those that match (or have none) listed, to skip any
            # expunged meanwhile and to learn their mod-sequences.
            get = column_values.get
            batch = [(seq, uid) for seq, uid in batch if (v := get(uid)) is None or on_values(v)]
            if not batch:
                continue
        uids = [u for _, u in batch]
        infos = {i.uid: i for i in await call(mailbox.list_messages, uids)}
        if test is not None:
            # The listing still tells which messages are left (expunged meanwhile: skipped).
            for seq, uid in batch:
                info = infos.get(uid)
                if info is None:
                    continue
                values = column_values.get(uid)
                if test(seq, info, values) if values is not None else matches(key, sctx, seq, info):
                    found.append(uid if args.uid else seq)
                    top_modseq = max(top_modseq, info.modseq)
            continue
        metadata = await call(mailbox.get_metadata, uids) if needs.metadata else {}
        for seq, uid in batch:
            info = infos.get(uid)
            if info is None:
                continue
            message = None
            if needs.message:
                message = await _read_message(mailbox, info)
                if message is None:
                    continue
            if matches(key, sctx, seq, info, metadata.get(uid), message):
                found.append(uid if args.uid else seq)
                top_modseq = max(top_modseq, info.modseq)
    # RFC 7162 sections 3.1.6 and 3.1.10: the highest mod-sequence found, when searched by MODSEQ.
    modseq = top_modseq if with_modseq and found else None
    searchres.save(view, options, found if args.uid else [view.uids[n - 1] for n in found])
    shown = searchres.shown_options(options)
    if shown is not None:
        ctx.emit(ESearchData(cmd.tag, args.uid, found, shown, modseq=modseq, partial=args.partial))
    elif options is None:
        ctx.emit(SearchData(found, modseq=modseq))
    if live is not None:
        contexts.opened(ctx, live, [(n if args.uid else view.uids[n - 1],) for n in found])
    return Done("SEARCH completed")
