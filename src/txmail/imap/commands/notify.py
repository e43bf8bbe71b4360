"""
NOTIFY (RFC 5465): the client says once which events it wants, for which
mailboxes, and the server tells it as they happen, without polling and
for mailboxes other than the selected one.

What is supported
-----------------
* ``NOTIFY NONE`` and ``NOTIFY SET [STATUS]`` with every mailbox filter
  of section 6: ``SELECTED``, ``SELECTED-DELAYED``, ``INBOXES`` (the same
  as ``PERSONAL``, which section 6.3 allows: delivery rules may file mail
  into any folder), ``PERSONAL``, ``SUBSCRIBED`` (the subscriptions as
  they are when an event happens, section 6.4), ``SUBTREE`` and
  ``MAILBOXES`` (exact names, no wildcards, section 6.6; names that do not
  exist are ignored).
* Events (section 5): ``MessageNew``, ``MessageExpunge`` and
  ``FlagChange``; ``MailboxName`` and ``SubscriptionChange``;
  ``MailboxMetadataChange`` and ``ServerMetadataChange`` when the store
  keeps METADATA (:mod:`txmail.imap.commands.notify_metadata`).
  ``AnnotationChange`` (no ANNOTATE here), the METADATA events on a store
  without :class:`~txmail.interfaces.IMetadataStore`, and unknown events
  get ``NO [BADEVENT (the supported events)]`` (section 3.1).
  :func:`support_event` is the hook an extension that can report one of
  them (METADATA) calls to be offered.
* The rules of sections 5 and 6.1 are ``BAD``: ``MessageNew`` without
  ``MessageExpunge`` (or the other way round), ``FlagChange`` without both,
  two selected-mailbox filters, other events with ``SELECTED``.
* Mailboxes other than the selected one: new, expunged and (with
  ``FlagChange``) flag-changed messages are told with ``* STATUS name
  (MESSAGES n UIDNEXT n UIDVALIDITY n UNSEEN n)``, plus ``HIGHESTMODSEQ``
  once CONDSTORE (or QRESYNC) is enabled (sections 5.1 to 5.3); one STATUS
  per mailbox however many changes happened since the last was sent.
  ``NOTIFY SET STATUS`` sends that STATUS for every such mailbox before
  the tagged OK (section 3.1).
* ``MailboxName`` (section 5.4): ``* LIST () "/" name`` for a new
  mailbox, ``* LIST (\\NonExistent) "/" name`` for a deleted one
  (``(\\Noselect \\HasChildren)`` when it stays as a parent), ``* LIST ()
  "/" new ("OLDNAME" (old))`` for each renamed one.
  ``SubscriptionChange`` (section 5.5): ``* LIST (\\Subscribed) "/" name``
  or ``* LIST () "/" name``.  No ``\\HasChildren``/``\\HasNoChildren``
  (a SHOULD): the store's event does not say, and asking would cost a
  listing per event.
* The selected mailbox: with ``SELECTED`` the usual EXISTS, EXPUNGE and
  FETCH responses (with ``UID`` when ``FlagChange`` is asked, section 5.1;
  flag changes are told without it too, as without NOTIFY) go out as soon
  as nothing is in progress, EXPUNGE
  included (the client uses UIDs, section 5.3), and also after FETCH,
  STORE and SEARCH; with ``SELECTED-DELAYED`` EXPUNGE waits for a command
  that allows it, as without NOTIFY (section 6.1.2).  ``MessageNew``'s
  fetch attributes are sent in a FETCH after the EXISTS (section 5.2):
  ``UID`` and ``FLAGS`` from the view at once, others
  (:func:`new_message_fetches`) read from the store before the next
  response, as peeks (``\\Seen`` is never set).  Without a selected
  filter (``SELECTED NONE``) nothing is pushed for the selected mailbox:
  it is told at the end of commands as without NOTIFY (txmail does not
  freeze the view).
* Changes this session makes itself are not told back (section 5: SHOULD):
  those heard while one of its commands runs, for the mailboxes that
  command names.
* Costs are bounded: at most :data:`MAX_MAILBOXES` names in one NOTIFY
  (else ``NO [NOTIFICATIONOVERFLOW]``), and at most :data:`MAX_PENDING`
  notifications waiting for the client (a client that does not read),
  and :data:`~txmail.imap.commands.notify_metadata.MAX_ENTRIES` METADATA
  entry names; past that the session sends ``* OK [NOTIFICATIONOVERFLOW]`` and behaves
  as after NOTIFY NONE (section 5.8).  A store event costs a session a
  few set lookups; the STATUS counters are read when they are sent.

The events come from the store (:class:`txmail.interfaces.IStoreChanges`):
changes made through it in this process, by any session of the user or a
delivery (the PostgreSQL store: on any node).  A store without it gets no
events for other mailboxes.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Container, Iterable
from typing import Any

from txmail.errors import StoreError
from txmail.imap.binary import binary_items
from txmail.imap.commands import condstore, qresync
from txmail.imap.commands.binary import require_decodable
from txmail.imap.commands.context import CommandContext, call, user_store
from txmail.imap.commands.notify_metadata import MAILBOX_EVENT, SERVER_EVENT, MetadataQueue
from txmail.imap.commands.registry import AUTHENTICATED, command
from txmail.imap.fetch import fetch_needs
from txmail.imap.responses import (
    Bad,
    CommandFailed,
    Done,
    FetchData,
    ListData,
    No,
    Response,
    StatusData,
    UntaggedOk,
)
from txmail.imap.types import Command, Notify, NotifyGroup
from txmail.imap.view import SelectedView
from txmail.interfaces import IMailbox, IMailStore, IStoreChanges
from txmail.model import (
    DELIMITER,
    AnnotationsChanged,
    FlagsChanged,
    FolderChange,
    FolderCreated,
    FolderDeleted,
    FolderRenamed,
    MailboxStatus,
    MessagesAdded,
    MessagesChanged,
    MessagesExpunged,
    SubscriptionChanged,
)

__all__ = [
    "MAX_MAILBOXES",
    "MAX_PENDING",
    "MESSAGE_EVENTS",
    "SUPPORTED_EVENTS",
    "NotifyState",
    "check",
    "support_event",
    "supported_events",
]

#: The events this server reports (RFC 5465 section 5), in the order BADEVENT lists
#: them: each with the test a store must pass for it (``None``: any store).
SUPPORTED_EVENTS: dict[str, Callable[[Any], bool] | None] = dict.fromkeys(
    ("MessageNew", "MessageExpunge", "FlagChange", "MailboxName", "SubscriptionChange")
)
#: The events about messages: the only ones a selected-mailbox filter takes (section 6.1).
MESSAGE_EVENTS = frozenset({"MessageNew", "MessageExpunge", "FlagChange", "AnnotationChange"})
#: Mailbox names one NOTIFY may name (SUBTREE and MAILBOXES together).
MAX_MAILBOXES = 1000
#: Notifications (STATUS of distinct mailboxes, LIST responses) waiting for the client.
MAX_PENDING = 1000
#: MessageNew's fetch attributes told from the view, without reading the store.
VIEW_ATTRIBUTES = frozenset({"UID", "FLAGS"})

_SELECTED = ("SELECTED", "SELECTED-DELAYED")


def support_event(name: str, available: Callable[[Any], bool] | None = None) -> None:
    """
    Offer the event *name* (RFC 5465 spelling, e.g. ``MailboxMetadataChange``):
    the hook for the extension that reports it (METADATA), for the stores
    that pass *available* (all when ``None``).  It must then also tell
    :meth:`NotifyState.heard` (or queue its own responses).
    """
    SUPPORTED_EVENTS.setdefault(name, available)


def supported_events(store: IMailStore | None) -> tuple[str, ...]:
    """The events offered with *store* (RFC 5465 section 3.1: what BADEVENT lists)."""
    return tuple(
        name for name, available in SUPPORTED_EVENTS.items() if available is None or available(store)
    )


def check(args: Notify, supported: Collection[str] | None = None) -> None:
    """
    The rules of RFC 5465 sections 3.1, 5 and 6.1 for one NOTIFY SET:
    ``Bad`` for what the client must not send, ``No [BADEVENT]`` for an
    event not offered (*supported*: :func:`supported_events`; every event
    offered when ``None``), ``No [NOTIFICATIONOVERFLOW]`` for too many names.
    """
    groups = args.groups or ()
    if sum(1 for g in groups if g.filter in _SELECTED) > 1:
        raise Bad("Only one of SELECTED and SELECTED-DELAYED may be given")
    for group in groups:
        events = set(group.events)
        if group.filter in _SELECTED and events - MESSAGE_EVENTS:
            raise Bad("Only message events may be given for the selected mailbox")
        if ("MessageNew" in events) != ("MessageExpunge" in events):
            raise Bad("MessageNew and MessageExpunge must be given together")
        if events & {"FlagChange", "AnnotationChange"} and "MessageNew" not in events:
            raise Bad("FlagChange requires MessageNew and MessageExpunge")
        if len(events) != len(group.events):
            raise Bad("An event is given twice")
    offered = tuple(SUPPORTED_EVENTS) if supported is None else tuple(supported)
    if any(e not in offered for g in groups for e in g.events):
        raise No("Event not supported", "BADEVENT (" + " ".join(offered) + ")")
    if sum(len(g.mailboxes) for g in groups) > MAX_MAILBOXES:
        raise No("Too many mailboxes to watch", "NOTIFICATIONOVERFLOW")


class _Filter:
    """The mailboxes of one event group (section 6), matched by set lookups."""

    def __init__(self, group: NotifyGroup) -> None:
        self.kind = group.filter
        self.names = frozenset(group.mailboxes)
        self.events = frozenset(group.events)

    def covers(self, name: str, subscribed: Container[str]) -> bool:
        kind = self.kind
        if kind in ("PERSONAL", "INBOXES"):
            return True
        if kind == "SUBSCRIBED":
            return name in subscribed
        if name in self.names:
            return True
        if kind == "SUBTREE":
            head = name
            while DELIMITER in head:
                head = head.rpartition(DELIMITER)[0]
                if head in self.names:
                    return True
        return False


class NotifyState:
    """
    One session's NOTIFY SET (sans-IO): which events it wants
    (:meth:`wants`), and the notifications waiting for the client
    (:meth:`heard` queues, :meth:`responses` takes).

    Attributes:
        selected: ``"SELECTED"``, ``"SELECTED-DELAYED"`` or ``None``.
        selected_fetch: the fetch attributes of the selected filter's MessageNew.
        subscribed: the user's subscriptions, kept up to date from the events.
        overflowed: :data:`MAX_PENDING` was passed: the session must send
            ``* OK [NOTIFICATIONOVERFLOW]`` and stop (section 5.8).
    """

    def __init__(self, args: Notify, subscribed: Iterable[str] = ()) -> None:
        groups = args.groups or ()
        selected = [g for g in groups if g.filter in _SELECTED and g.events]
        self.selected: str | None = selected[0].filter if selected else None
        self.selected_fetch = selected[0].fetch if selected else ()
        #: FlagChange for the selected mailbox: its FETCHes carry the UID (section 5.1).
        self.selected_flags = bool(selected) and "FlagChange" in selected[0].events
        #: The selected filter's fetch attributes need the store (not only UID and FLAGS).
        self.fetch_from_store = (
            bool(self.selected_fetch) and not {a.name for a in self.selected_fetch} <= VIEW_ATTRIBUTES
        )
        self._filters = [_Filter(g) for g in groups if g.filter not in _SELECTED and g.events]
        self.subscribed = set(subscribed)
        self.overflowed = False
        self._overflow_told = False
        self._status: dict[str, Any] = {}  # name -> IMailbox, in order heard
        self._lists: list[ListData] = []
        self._metadata = MetadataQueue()  # RFC 5465 sections 5.6 and 5.7

    @property
    def watches_other_mailboxes(self) -> bool:
        """Some event of a mailbox other than the selected one is wanted."""
        return bool(self._filters)

    @property
    def watches_metadata(self) -> bool:
        """MailboxMetadataChange or ServerMetadataChange is wanted (sections 5.6 and 5.7)."""
        return any(MAILBOX_EVENT in f.events or SERVER_EVENT in f.events for f in self._filters)

    def wants(self, name: str, event: str) -> bool:
        """Whether *event* of mailbox *name* is to be told (not the selected mailbox's)."""
        subscribed = self.subscribed
        return any(event in f.events and f.covers(name, subscribed) for f in self._filters)

    def status_names(self, names: Iterable[str]) -> list[str]:
        """Those of *names* that NOTIFY SET STATUS reports (a message event is wanted)."""
        return [n for n in names if self.wants(n, "MessageNew")]

    @property
    def pending(self) -> bool:
        """Notifications wait for the client."""
        return bool(
            self._status or self._lists or self._metadata or (self.overflowed and not self._overflow_told)
        )

    def heard(
        self,
        change: FolderChange | AnnotationsChanged,
        *,
        selected: str | None = None,
        own: Container[str] = (),
    ) -> bool:
        """
        Queue what *change* tells the client, if it wants it: *selected* is
        the selected mailbox's name (told by the view instead), *own* the
        names the session's running command acts on (not told back).
        Returns whether something was queued.
        """
        if isinstance(change, SubscriptionChanged):
            if change.subscribed:
                self.subscribed.add(change.name)
            else:
                self.subscribed.discard(change.name)
        if self.overflowed:
            return False
        if isinstance(change, MessagesChanged):
            return self._message_event(change, selected, own)
        if isinstance(change, AnnotationsChanged):
            return self._metadata_event(change, own)
        return self._mailbox_event(change, own)

    def _message_event(self, change: MessagesChanged, selected: str | None, own: Container[str]) -> bool:
        name = change.name
        if name == selected or name in own:
            return False
        inner = change.change
        if isinstance(inner, MessagesAdded):
            event = "MessageNew"
        elif isinstance(inner, MessagesExpunged):
            event = "MessageExpunge"
        elif isinstance(inner, FlagsChanged):
            event = "FlagChange"
        else:
            return False
        if not self.wants(name, event):
            return False
        self._status.pop(name, None)
        self._status[name] = change.mailbox
        return self._bound()

    def _metadata_event(self, change: AnnotationsChanged, own: Container[str]) -> bool:
        """Sections 5.6 and 5.7: the entry names, for the METADATA response."""
        name = change.mailbox
        if name in own or not change.entries:
            return False
        if name == "":  # a user event: the group's mailboxes do not matter
            wanted = any(SERVER_EVENT in f.events for f in self._filters)
        else:
            wanted = self._wants_name(name, MAILBOX_EVENT)
        if not wanted:
            return False
        self._metadata.add(name, change.entries)
        return self._bound()

    def _mailbox_event(self, change: FolderChange, own: Container[str]) -> bool:
        responses: list[ListData] = []
        if isinstance(change, SubscriptionChanged):
            if change.name not in own and self._wants_name(change.name, "SubscriptionChange", True):
                flags: tuple[str, ...] = ("\\Subscribed",) if change.subscribed else ()
                responses.append(ListData(change.name, flags))
        elif isinstance(change, FolderCreated):
            if change.name not in own and self._wants_name(change.name, "MailboxName"):
                responses.append(ListData(change.name, self._subscribed_flag(change.name)))
        elif isinstance(change, FolderDeleted):
            if change.name not in own and self._wants_name(change.name, "MailboxName"):
                flags = ("\\Noselect", "\\HasChildren") if change.parent else ("\\NonExistent",)
                responses.append(ListData(change.name, flags + self._subscribed_flag(change.name)))
            self._status.pop(change.name, None)
            self._metadata.forget(change.name)
        elif isinstance(change, FolderRenamed):
            if (
                change.old not in own
                and change.new not in own
                and (
                    self._wants_name(change.old, "MailboxName") or self._wants_name(change.new, "MailboxName")
                )
            ):
                flags = self._subscribed_flag(change.new)
                responses.append(ListData(change.new, flags, oldname=change.old))
            self._status.pop(change.old, None)
            self._metadata.rename(change.old, change.new, self._wants_name(change.new, MAILBOX_EVENT))
        if not responses:
            return False
        self._lists.extend(responses)
        return self._bound()

    def _wants_name(self, name: str, event: str, either: bool = False) -> bool:
        # SUBSCRIBED covers a name being unsubscribed too (*either*).
        subscribed: Container[str] = _Everything() if either else self.subscribed
        return any(event in f.events and f.covers(name, subscribed) for f in self._filters)

    def _subscribed_flag(self, name: str) -> tuple[str, ...]:
        return ("\\Subscribed",) if name in self.subscribed else ()

    def _bound(self) -> bool:
        if len(self._status) + len(self._lists) + len(self._metadata) > MAX_PENDING or self._metadata.full:
            self.overflow()
        return True

    def overflow(self) -> None:
        """Too much waits (section 5.8): drop it; :meth:`responses` says so, then nothing more."""
        self.overflowed = True
        self._status.clear()
        self._lists.clear()
        self._metadata.clear()
        self._filters = []
        self.selected = None
        self.selected_fetch = ()
        self.selected_flags = False
        self.fetch_from_store = False

    async def responses(self, session: Any) -> list[Response]:
        """
        Take what waits: the LIST responses in order, the METADATA ones,
        then one STATUS per mailbox (its counters now; a mailbox gone
        meanwhile is left out), or the ``OK [NOTIFICATIONOVERFLOW]`` once.
        """
        if self.overflowed:
            if self._overflow_told:
                return []
            self._overflow_told = True
            return [UntaggedOk("Too many notifications; NOTIFY is off", "NOTIFICATIONOVERFLOW")]
        out: list[Response] = list(self._lists)
        self._lists.clear()
        out.extend(self._metadata.take())
        boxes, self._status = self._status, {}
        items = status_items(session)
        for name, mailbox in boxes.items():
            try:
                status = await call(mailbox.status)
            except StoreError:  # deleted or renamed meanwhile: nothing to tell
                continue
            out.append(status_data(name, status, items))
        return out


class _Everything:
    def __contains__(self, item: object) -> bool:
        return True


def status_items(session: Any) -> tuple[str, ...]:
    """The STATUS items of a notification (sections 5.1 to 5.3)."""
    items: tuple[str, ...] = ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")
    if condstore.enabled(session) or qresync.enabled(session):
        items += ("HIGHESTMODSEQ",)
    return items


def status_data(name: str, status: MailboxStatus, items: tuple[str, ...]) -> StatusData:
    """``* STATUS name (...)`` from a :class:`txmail.model.MailboxStatus`."""
    values = {
        "MESSAGES": status.messages,
        "UIDNEXT": status.uidnext,
        "UIDVALIDITY": status.uidvalidity,
        "UNSEEN": status.unseen,
        "HIGHESTMODSEQ": status.highest_modseq,
    }
    return StatusData(name, tuple((item, values[item]) for item in items))


async def new_message_fetches(
    view: SelectedView, mailbox: IMailbox, uids: list[int], items: Any
) -> list[FetchData]:
    """
    MessageNew's FETCH responses (section 5.2) for the new messages *uids*
    of the selected mailbox, with the sequence numbers the client knows
    when it returns (the caller writes them at once).  Read as BODY.PEEK would: \\Seen is never set here (the client
    SHOULD NOT ask for attributes that set it).  A message gone meanwhile,
    or whose part cannot be decoded, is left out.
    """
    needs = fetch_needs(items)
    wanted_binary = binary_items(items)
    try:
        infos = await call(mailbox.list_messages, uids)
        metadata = await call(mailbox.get_metadata, [i.uid for i in infos]) if needs.metadata else {}
    except StoreError:  # the mailbox was deleted meanwhile
        return []
    found = []
    for info in infos:
        message = None
        if needs.message:
            try:
                message = await call(mailbox.read_message, info.uid)
                if wanted_binary:
                    require_decodable(message, wanted_binary)
            except (StoreError, CommandFailed):
                continue
        found.append((info, message))
    # The sequence numbers after the last await: an EXPUNGE told meanwhile counts.
    out = []
    for info, message in found:
        seq = view.seq_of(info.uid)
        if seq is not None:
            out.append(
                FetchData(seq, items, info, metadata.get(info.uid), message, recent=info.uid in view.recent)
            )
    return out


def command_names(cmd: Command | None) -> frozenset[str]:
    """The mailbox names *cmd* acts on (its own changes there are not told back)."""
    if cmd is None:
        return frozenset()
    args = cmd.args
    return frozenset(
        v for v in (getattr(args, a, None) for a in ("mailbox", "old", "new")) if isinstance(v, str)
    )


@command("NOTIFY", states=AUTHENTICATED, capability="NOTIFY", invalid_name=None)
async def notify(ctx: CommandContext, cmd: Command) -> Done:
    """
    RFC 5465 section 3.1: replace the session's NOTIFY; with STATUS, the
    STATUS of each watched mailbox first.  The selected mailbox's pending
    changes go out before the tagged OK (an implicit NOOP).
    """
    args = cmd.args
    assert isinstance(args, Notify)
    if args.groups is None:
        ctx.watch(None)
        return Done("NOTIFY completed")
    store = user_store(ctx)
    check(args, supported_events(store))
    state = NotifyState(args, await call(store.subscriptions))
    if state.watches_other_mailboxes and not IStoreChanges.providedBy(store):
        raise No("This store cannot report changes of other mailboxes", "CANNOT")
    if args.status and state.watches_other_mailboxes:
        view = ctx.session.view
        selected = view.name if view is not None else None
        folders = await call(store.list_mailboxes, "*")
        names = state.status_names(f.name for f in folders if f.selectable and f.name != selected)
        items = status_items(ctx.session)
        for i, name in enumerate(names):
            try:
                mailbox = await call(store.get_mailbox, name)
                status = await call(mailbox.status)
            except StoreError:  # gone meanwhile
                continue
            ctx.emit(status_data(name, status, items))
            if i % 100 == 99:
                await ctx.drain()
                await ctx.take_turn()
    ctx.watch(state)
    return Done("NOTIFY completed")
