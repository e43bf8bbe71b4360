"""
What a command handler sees: :class:`CommandContext`, the contract the
adapter (:class:`txmail.imap.server.IMAPServerProtocol`) fulfils, and the
helpers every handler module shares.

Handlers are coroutines.  Store calls may return Deferreds (or plain
values, or raise at once): :func:`call` awaits whatever comes back.  A
Deferred is awaitable, and the adapter runs handlers with
``Deferred.fromCoroutine``, so no handler imports Twisted; a unit test can
drive a handler whose store answers at once with ``coro.send(None)``
(:func:`run_now`).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from txmail.errors import InvalidMailboxName, MailboxExists, MailboxNotEmpty, NoSuchMailbox, StoreError
from txmail.imap._awaiting import call
from txmail.imap.responses import No, Response
from txmail.imap.view import SelectedView
from txmail.model import INBOX, SpecialUse

if TYPE_CHECKING:
    from txmail.interfaces import IMailbox, IMailStore

__all__ = [
    "SPECIAL_FOLDERS",
    "CommandContext",
    "call",
    "ensure_special_folders",
    "run_now",
    "selected_mailbox",
    "store_op",
    "target_mailbox",
    "user_store",
]

_T = TypeVar("_T")

#: RFC 6154 mailboxes made for a new user.
SPECIAL_FOLDERS = (
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Junk", SpecialUse.JUNK),
    ("Archive", SpecialUse.ARCHIVE),
)


class CommandContext(Protocol):
    """
    The connection as a handler sees it.

    Attributes:
        session: the :class:`txmail.imap.session.IMAPSession` (``user``,
            ``view``, ``limits``, ``select``/``unselect``...).
        store: the user's :class:`txmail.interfaces.IMailStore`.
        mailbox: the selected :class:`txmail.interfaces.IMailbox`, or ``None``.
        quotas: the :class:`txmail.quota.Quotas` to enforce, or ``None``.
        server_names: the host names (lower-cased) by which an IMAP URL
            names this server (RFC 4469 CATENATE); optional.
    """

    session: Any

    @property
    def store(self) -> IMailStore | None: ...

    @property
    def mailbox(self) -> IMailbox | None: ...

    @property
    def quotas(self) -> Any: ...

    @property
    def server_names(self) -> frozenset[str]: ...

    async def user_store(self, user: str) -> IMailStore | None:
        """
        The store of another user, by canonical name, or ``None`` (optional:
        URLAUTH, RFC 4467, reads what that user signed).
        """

    def emit(self, *responses: Response) -> None:
        """Queue untagged responses of the running command (rendered by :mod:`txmail.imap.serialize`)."""

    async def drain(self) -> None:
        """Write what was emitted once the transport took the batch before (back-pressure)."""

    async def take_turn(self) -> None:
        """Let other connections run between two batches of a long response."""

    def listen(self, mailbox: IMailbox) -> None:
        """
        *mailbox* is being selected: make it ``ctx.mailbox`` and listen to
        its changes (those made before :meth:`selected` are kept for the view).
        """

    def selected(self, view: SelectedView) -> None:
        """The listing is done: select *view* in the session and queue the changes heard meanwhile."""

    def deselect(self) -> None:
        """Stop listening to the selected mailbox and leave the selected state."""

    def copied(self, target: IMailbox, pairs: list[tuple[int, int]], *, moved: bool) -> None:
        """COPY/MOVE put messages into *target* (``(source uid, target uid)``): tell the copy listeners."""

    def watch(self, state: Any) -> None:
        """
        NOTIFY (RFC 5465): replace the session's
        :class:`~txmail.imap.commands.notify.NotifyState` (``None`` for
        NOTIFY NONE) and listen to the store's changes while it wants some.
        """


def user_store(ctx: CommandContext) -> IMailStore:
    """The logged-in user's store (the command table runs store commands only once logged in)."""
    store = ctx.store
    if store is None:
        raise RuntimeError("a store command ran before login")
    return store


def selected_mailbox(ctx: CommandContext) -> IMailbox:
    """The selected mailbox (the command table runs these commands only in the selected state)."""
    mailbox = ctx.mailbox
    if mailbox is None:
        raise RuntimeError("a selected-state command ran with no mailbox selected")
    return mailbox


#: How store errors answer a command (RFC 5530 response codes).
_STORE_ERRORS: tuple[tuple[type[StoreError], str, str], ...] = (
    (NoSuchMailbox, "No such mailbox", "NONEXISTENT"),
    (MailboxExists, "Mailbox already exists", "ALREADYEXISTS"),
    (MailboxNotEmpty, "Mailbox has children and is not selectable", "CANNOT"),
    (InvalidMailboxName, "Invalid mailbox name", "CANNOT"),
)


async def store_op(fn: Callable[..., Awaitable[_T]], *args: Any) -> _T:
    """Call a store method; its errors become the tagged NO of :data:`_STORE_ERRORS`."""
    try:
        return await call(fn, *args)
    except StoreError as e:
        for cls, text, code in _STORE_ERRORS:
            if isinstance(e, cls):
                raise No(text, code) from None
        raise


async def target_mailbox(store: IMailStore, name: str) -> IMailbox:
    """
    The mailbox APPEND, COPY or MOVE write into; ``NO [TRYCREATE]`` when
    there is none (RFC 3501 sections 6.3.11 and 6.4.7).
    """
    try:
        mailbox: IMailbox = await call(store.get_mailbox, name)
    except (NoSuchMailbox, InvalidMailboxName):
        raise No("No such mailbox", "TRYCREATE") from None
    return mailbox


async def ensure_special_folders(store: IMailStore) -> None:
    """
    Give a new user the RFC 6154 special-use mailboxes: when the store holds
    only INBOX, create and subscribe Sent, Drafts, Trash, Junk and Archive.
    """
    folders = await call(store.list_mailboxes, "*")
    if any(f.name != INBOX for f in folders):
        return
    for name, role in SPECIAL_FOLDERS:
        with contextlib.suppress(MailboxExists):
            await call(store.create_mailbox, name, role)
        await call(store.subscribe, name)
    await call(store.subscribe, INBOX)


def run_now(coro: Coroutine[Any, Any, _T]) -> _T:
    """
    The result of *coro* when nothing it awaits is pending (a store that
    answers at once: tests, embedding); ``RuntimeError`` otherwise.
    """
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value  # type: ignore[no-any-return]  # the coroutine's value, untyped
    coro.close()
    raise RuntimeError("the coroutine waits for something that has not happened")
