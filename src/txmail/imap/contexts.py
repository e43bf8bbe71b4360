"""
Updating searches (RFC 5267 section 4.3, CONTEXT=SEARCH and CONTEXT=SORT):
the results of a ``SEARCH``/``SORT RETURN (UPDATE)`` kept by the session,
and the ``* ESEARCH (TAG "t") REMOVEFROM (...) ADDTO (...)`` responses
that keep the client's copy in step as messages arrive, are expunged or
change flags (by this session or any other).

Theory of operation
===================

* A :class:`ResultContext` holds, for one searching command, its search
  program with its message numbers made the UIDs they named when the
  command ran (:func:`freeze`; section 4.3: "message sequence numbers used
  in the search program are evaluated at the time the command is
  received"), and the results the client was told, as UIDs in the requested order (UID
  order for SEARCH; the sort keys then UID order for SORT, as the SORT
  command orders them).  Numbers are made message sequence numbers when a
  response is written, from the session's
  :class:`~txmail.imap.view.SelectedView`.
* :class:`ResultContexts` are the contexts of one session, at most
  :attr:`ResultContexts.limit` of them (beyond, the command gets ``* NO
  [NOUPDATE "tag"]``, section 4.3.1); they end with CANCELUPDATE and
  whenever the session leaves the mailbox (SELECT, EXAMINE, CLOSE,
  UNSELECT, the mailbox deleted).
* Every change the selected mailbox's listener hears goes to
  :meth:`ResultContexts.heard`.  An expunge is told at once: results that
  are gone leave with ``REMOVEFROM``, while their message numbers are
  still the client's (section 4.3.4: before the ``EXPUNGE``).  New
  messages and flag changes mark the UIDs to look at again;
  :meth:`ResultContexts.refresh` (a coroutine the adapter runs, awaiting
  the store) reads their listing, and the metadata or the message when the
  search or sort needs them, and decides whether each matches now (and
  its sort keys).  :meth:`ResultContexts.updates` then gives the
  ``REMOVEFROM``/``ADDTO`` of what changed, for the messages the client
  knows of: the session writes them after the mailbox updates (``EXISTS``
  and ``FETCH`` first, section 4.3.3), at the end of each command and
  during IDLE.
* A SEARCH context's changes are at context position 0, in mailbox order;
  a SORT context's at their position in the sort order, one after the
  other (section 4.3.3 and 4.3.4), adjacent ones in one set.
* While its command runs the context is *opening*: changes heard are kept
  (the search may or may not have seen them) and looked at once the
  results are known (:meth:`ResultContext.open`); results expunged
  meanwhile leave with a ``REMOVEFROM`` right after the command's
  ``ESEARCH``.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from txmail.errors import NoSuchMessage, StoreError
from txmail.imap._awaiting import call
from txmail.imap.responses import Bad, ContextUpdate, NoUpdate
from txmail.imap.search import SearchContext, matches, search_needs
from txmail.imap.types import SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr, SequenceSet
from txmail.imap.view import SelectedView
from txmail.interfaces import IMailbox
from txmail.model import (
    FlagsChanged,
    MailboxChange,
    MailboxDeleted,
    MessageInfo,
    MessagesAdded,
    MessagesExpunged,
)

__all__ = ["MAX_CONTEXTS", "ResultContext", "ResultContexts", "Reverse", "begin", "freeze", "opened"]


#: Updating searches one session may keep (RFC 5267 section 4.3.1: at least one).
MAX_CONTEXTS = 10
#: Messages read from the store at a time by :meth:`ResultContexts.refresh`.
_READ_BATCH = 1024

#: A message's place in a context's order: its sort keys (none for SEARCH), then its UID.
OrderKey = tuple[Any, ...]


class Reverse:
    """A sort key in reverse order (``REVERSE`` of RFC 5256 section 4)."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reverse) and self.key == other.key

    def __lt__(self, other: Reverse) -> bool:
        return bool(other.key < self.key)

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Reverse({self.key!r})"


def freeze(key: SearchNode, view: SelectedView) -> SearchNode:
    """
    *key* with each message sequence set made the UIDs it names now (RFC
    5267 section 4.3: "any message sequence numbers used in the search
    program are evaluated at the time the command is received").  A UID
    set keeps its ``*``, the largest UID when a message is judged, as a
    new searching command would.
    """
    if isinstance(key, SearchKey):
        if key.name == "SEQUENCE":
            uids = [view.uids[n - 1] for n in key.args[0].expand(view.exists)]  # type: ignore[union-attr]  # a SEQUENCE key's argument is a SequenceSet
            return SearchKey("UID", (_uid_set(uids),))
        return key
    if isinstance(key, SearchAnd):
        return SearchAnd(tuple(freeze(k, view) for k in key.keys))
    if isinstance(key, SearchOr):
        return SearchOr(freeze(key.left, view), freeze(key.right, view))
    if isinstance(key, SearchNot):
        return SearchNot(freeze(key.key, view))
    raise TypeError(f"not a search key: {key!r}")


def _uid_set(uids: list[int]) -> SequenceSet:
    """Ascending *uids* as a set of ranges (UID 0, which no message has, for none)."""
    ranges: list[tuple[int | None, int | None]] = []
    for uid in uids:
        if ranges and ranges[-1][1] == uid - 1:
            ranges[-1] = (ranges[-1][0], uid)
        else:
            ranges.append((uid, uid))
    return SequenceSet(tuple(ranges) or ((0, 0),))


class ResultContext:
    """
    One updating search (see the module docstring).

    Args:
        tag: the searching command's tag (the correlator of its updates).
        uid: UID SEARCH or UID SORT: updates carry UIDs, else message numbers.
        key: the search program, frozen (:func:`freeze`).
        order: ``(info, metadata) -> sort keys`` of a message for a SORT
            (each key wrapped in :class:`Reverse` where reversed); ``None``
            for a SEARCH (mailbox order).
        metadata: *order* or the search reads the message's metadata.
    """

    def __init__(
        self,
        tag: str,
        uid: bool,
        key: SearchNode,
        order: Callable[[MessageInfo, Any], tuple[Any, ...]] | None = None,
        *,
        metadata: bool = False,
    ) -> None:
        self.tag = tag
        self.uid = uid
        self.key = key
        self.order = order
        needs = search_needs(key)
        self.needs_metadata = metadata or needs.metadata
        self.needs_message = needs.message
        #: The results the client has, in order, and each one's order key.
        self._order: list[OrderKey] = []
        self._keys: dict[int, OrderKey] = {}
        #: UIDs to look at again, and what was found: an order key, or ``None`` (no match).
        self.pending: set[int] = set()
        self.ready: dict[int, OrderKey | None] = {}
        self.opening = True
        self._gone: set[int] = set()

    @property
    def sorted(self) -> bool:
        """A SORT context: changes carry positions in the sort order."""
        return self.order is not None

    def __len__(self) -> int:
        return len(self._order)

    def results(self) -> list[int]:
        """The UIDs the client was told match, in the requested order."""
        return [k[-1] for k in self._order]

    def order_key(self, info: MessageInfo, metadata: Any) -> OrderKey:
        """Where a message goes in this context's order."""
        if self.order is None:
            return (info.uid,)
        return (*self.order(info, metadata), info.uid)

    def open(self, results: Iterable[OrderKey], view: SelectedView) -> ContextUpdate | None:
        """
        The command found *results* (order keys) and told the client: the
        context is live.  Results expunged while it ran leave at once (the
        ``REMOVEFROM`` returned).
        """
        self._order = sorted(results)
        self._keys = {k[-1]: k for k in self._order}
        self.opening = False
        gone = sorted(u for u in self._gone if u in self._keys)
        self._gone.clear()
        return self._update(self._remove(gone, view), ())

    # -- changes ------------------------------------------------------------------------

    def expunged(self, uids: Iterable[int], view: SelectedView) -> ContextUpdate | None:
        """*uids* are gone: the ``REMOVEFROM`` of those among the results."""
        uids = list(uids)
        for u in uids:
            self.pending.discard(u)
            self.ready.pop(u, None)
        if self.opening:
            self._gone.update(uids)
            return None
        return self._update(self._remove(sorted(u for u in uids if u in self._keys), view), ())

    def changed(self, uids: Iterable[int]) -> None:
        """*uids* arrived or changed flags: look at them again."""
        for u in uids:
            self.pending.add(u)
            self.ready.pop(u, None)

    def updates(self, view: SelectedView) -> ContextUpdate | None:
        """What was looked at again and differs from what the client has, for the messages it knows of."""
        if self.opening or not self.ready:
            return None
        gone: list[int] = []
        new: list[OrderKey] = []
        for uid in sorted(self.ready):
            if view.seq_of(uid) is None:
                continue  # not told EXISTS yet (section 4.3.3)
            found = self.ready.pop(uid)
            if found is None and uid in self._keys:
                gone.append(uid)
            elif found is not None and uid not in self._keys:
                new.append(found)
        return self._update(self._remove(gone, view), self._add(new, view))

    # -- positions ----------------------------------------------------------------------

    def _number(self, uid: int, view: SelectedView) -> int:
        return uid if self.uid else view.seq_of(uid) or 0

    def _remove(self, uids: list[int], view: SelectedView) -> list[tuple[int, list[int]]]:
        """
        Take *uids* out of the results: the ``(position, numbers)`` pairs
        saying so, one after the other.  The ``j``-th one (in the
        requested order) is at its place in the list before, less the
        ``j`` taken out ahead of it: positions are found by bisection and
        the list is rebuilt once, so a change to many messages costs the
        size of the list, not that times the changes.
        """
        if not uids:
            return []
        keys = sorted(self._keys.pop(u) for u in uids)
        order = self._order
        places = [bisect.bisect_left(order, key) for key in keys]
        if len(keys) < 16:
            for i in reversed(places):
                del order[i]
        else:
            gone = set(keys)
            self._order = [key for key in order if key not in gone]
        return self._pairs(keys, [i - j for j, i in enumerate(places)], view, same=True)

    def _add(self, keys: list[OrderKey], view: SelectedView) -> list[tuple[int, list[int]]]:
        """
        Put the messages of *keys* into the results: the ``(position,
        numbers)`` pairs saying so, one after the other (the ``j``-th at
        its place in the list before, plus the ``j`` put in ahead of it).
        """
        if not keys:
            return []
        keys = sorted(keys)
        order = self._order
        places = [bisect.bisect_left(order, key) + j for j, key in enumerate(keys)]
        if len(keys) < 16:
            for i, key in zip(places, keys, strict=True):
                order.insert(i, key)
        else:
            self._order = list(heapq.merge(order, keys))
        for key in keys:
            self._keys[key[-1]] = key
        return self._pairs(keys, places, view, same=False)

    def _pairs(
        self, keys: list[OrderKey], places: list[int], view: SelectedView, *, same: bool
    ) -> list[tuple[int, list[int]]]:
        """
        The ``(position, numbers)`` pairs of changes at *places* (0-based,
        in the order applied): position 0 for a SEARCH; for a SORT,
        adjacent changes in one set (removals at the same place, additions
        each right after the one before).
        """
        numbers = [self._number(key[-1], view) for key in keys]
        if not self.sorted:
            return [(0, numbers)]
        pairs: list[tuple[int, list[int]]] = []
        for i, n in zip(places, numbers, strict=True):
            if pairs and pairs[-1][0] + (0 if same else len(pairs[-1][1])) == i + 1:
                pairs[-1][1].append(n)
            else:
                pairs.append((i + 1, [n]))
        return pairs

    def _update(
        self, removed: Sequence[tuple[int, list[int]]], added: Sequence[tuple[int, list[int]]]
    ) -> ContextUpdate | None:
        if not removed and not added:
            return None

        def form(pairs: Sequence[tuple[int, list[int]]]) -> tuple[tuple[int, tuple[int, ...]], ...]:
            # Position 0: any order will do; mailbox order is the shortest set.
            return tuple((p, tuple(sorted(ns) if p == 0 else ns)) for p, ns in pairs)

        return ContextUpdate(self.tag, self.uid, form(removed), form(added))


class ResultContexts:
    """The updating searches of one session (see the module docstring)."""

    def __init__(self, limit: int = MAX_CONTEXTS) -> None:
        self.limit = limit
        self._contexts: dict[str, ResultContext] = {}
        self._generation = 0
        #: While :meth:`refresh` runs: the UIDs expunged since it began.
        self._vanished: set[int] | None = None

    def __len__(self) -> int:
        return len(self._contexts)

    def __contains__(self, tag: object) -> bool:
        return tag in self._contexts

    def get(self, tag: str) -> ResultContext | None:
        """The context of the command tagged *tag*, or ``None``."""
        return self._contexts.get(tag)

    @property
    def full(self) -> bool:
        """No room for another context (``NOUPDATE``, RFC 5267 section 4.3.1)."""
        return len(self._contexts) >= self.limit

    def add(self, context: ResultContext) -> None:
        """Keep *context* (the caller checked :attr:`full` and the tag)."""
        self._contexts[context.tag] = context

    def drop_unopened(self) -> None:
        """
        Forget the contexts whose command never told its results (it
        failed): commands run one at a time, so a new searching command
        finds none opening but those.
        """
        for tag in [t for t, c in self._contexts.items() if c.opening]:
            del self._contexts[tag]

    def discard(self, context: ResultContext) -> None:
        """Forget *context* if it is still kept (its command failed)."""
        if self._contexts.get(context.tag) is context:
            del self._contexts[context.tag]

    def cancel(self, tags: Iterable[str]) -> None:
        """CANCELUPDATE (RFC 5267 section 4.3.5): forget the contexts of *tags*."""
        for tag in tags:
            self._contexts.pop(tag, None)

    def clear(self) -> None:
        """The session left its mailbox: every context ends (RFC 5267 section 4.3)."""
        self._contexts.clear()
        self._generation += 1

    @property
    def pending(self) -> bool:
        """Some messages wait for :meth:`refresh`."""
        return any(c.pending for c in self._contexts.values())

    def heard(self, change: MailboxChange, view: SelectedView) -> list[ContextUpdate]:
        """
        The selected mailbox changed (before *view* applies it): the
        ``REMOVEFROM`` of expunged results, to send now; new messages and
        flag changes wait for :meth:`refresh`.
        """
        out: list[ContextUpdate] = []
        if isinstance(change, MessagesExpunged):
            if self._vanished is not None:
                self._vanished.update(change.uids)  # refresh() may have read them already
            for context in self._contexts.values():
                update = context.expunged(change.uids, view)
                if update is not None:
                    out.append(update)
        elif isinstance(change, MessagesAdded | FlagsChanged):
            uids = [info.uid for info in change.messages]
            for context in self._contexts.values():
                context.changed(uids)
        elif isinstance(change, MailboxDeleted):
            self.clear()  # no longer selected, in effect (section 4.3)
        return out

    async def refresh(self, mailbox: IMailbox, view: SelectedView) -> None:
        """
        Look at the messages marked by :meth:`heard` again: whether each
        matches each context now, and where it sorts.  Reads the listing,
        and the metadata or the messages when a context needs them.
        """
        generation = self._generation
        self._vanished = set()
        try:
            while generation == self._generation:
                work = [(c, c.pending) for c in self._contexts.values() if c.pending]
                if not work:
                    return
                for context, _ in work:
                    context.pending = set()
                uids = sorted(set().union(*(todo for _, todo in work)))
                for start in range(0, len(uids), _READ_BATCH):
                    batch = uids[start : start + _READ_BATCH]
                    try:
                        await self._judge(mailbox, view, batch, work, generation)
                    except StoreError:
                        return  # the mailbox is gone: MailboxDeleted ends the contexts
        finally:
            self._vanished = None

    async def _judge(
        self,
        mailbox: IMailbox,
        view: SelectedView,
        batch: list[int],
        work: list[tuple[ResultContext, set[int]]],
        generation: int,
    ) -> None:
        infos = {i.uid: i for i in await call(mailbox.list_messages, batch)}
        wanted = [(c, [u for u in batch if u in todo and u in infos]) for c, todo in work]
        meta_uids = sorted({u for c, us in wanted if c.needs_metadata for u in us})
        metadata = await call(mailbox.get_metadata, meta_uids) if meta_uids else {}
        messages: dict[int, bytes | None] = {}
        for uid in sorted({u for c, us in wanted if c.needs_message for u in us}):
            messages[uid] = await _read(mailbox, uid)
        if generation != self._generation:
            return
        vanished = self._vanished or ()
        # "*" of a UID set: the largest UID, a new message's before the view holds it.
        top = max(view.max_uid, max(infos, default=0))
        sctx = SearchContext(max_seq=view.exists, max_uid=top, recent_uids=frozenset(view.recent))
        for context, uids in wanted:
            if self._contexts.get(context.tag) is not context:
                continue  # cancelled meanwhile
            for uid in uids:
                if uid in context.pending or uid in vanished:
                    continue  # changed again or expunged while the store was read
                info = infos[uid]
                message = messages.get(uid) if context.needs_message else None
                if context.needs_message and message is None:
                    continue  # gone meanwhile; its expunge is heard
                md = metadata.get(uid)
                hit = matches(context.key, sctx, 0, info, md, message)
                context.ready[uid] = context.order_key(info, md) if hit else None

    def updates(self, view: SelectedView) -> list[ContextUpdate]:
        """The ``REMOVEFROM``/``ADDTO`` of each context, for after the mailbox updates of *view*."""
        out = []
        for context in self._contexts.values():
            update = context.updates(view)
            if update is not None:
                out.append(update)
        return out


async def _read(mailbox: IMailbox, uid: int) -> bytes | None:
    try:
        data: bytes = await call(mailbox.read_message, uid)
    except NoSuchMessage:
        return None
    return data


# -- the searching commands' side ------------------------------------------------------------


def begin(
    ctx: Any,
    tag: str,
    uid: bool,
    key: SearchNode,
    options: Iterable[str] | None,
    order: Callable[[MessageInfo, Any], tuple[Any, ...]] | None = None,
    *,
    metadata: bool = False,
) -> ResultContext | None:
    """
    A searching command starts (SEARCH, UID SEARCH, SORT, UID SORT): with
    ``RETURN (UPDATE)`` in *options*, its context, opening, kept by the
    session (:attr:`CommandContext.session`'s ``contexts``).  ``BAD`` when
    *tag* is already an updating search's (RFC 5267 section 4.3); ``* NO
    [NOUPDATE "tag"]`` and ``None`` when the session keeps as many as it
    may (section 4.3.1: the other return options are still honoured).
    """
    if not options or "UPDATE" not in options:
        return None
    contexts: ResultContexts = ctx.session.contexts
    contexts.drop_unopened()
    if tag in contexts:
        raise Bad("Tag reuse")
    if contexts.full:
        ctx.emit(NoUpdate(tag))
        return None
    context = ResultContext(tag, uid, freeze(key, ctx.session.view), order, metadata=metadata)
    contexts.add(context)
    return context


def opened(ctx: Any, context: ResultContext, results: Iterable[OrderKey]) -> None:
    """
    The searching command told its results (order keys, see
    :meth:`ResultContext.order_key`): *context* goes live, and results
    expunged while the command ran leave now.
    """
    update = context.open(results, ctx.session.view)
    if update is not None:
        ctx.emit(update)
