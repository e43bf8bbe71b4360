"""
QRESYNC (RFC 7162 section 3.2): quick mailbox resynchronisation.

Built on CONDSTORE (:mod:`txmail.imap.commands.condstore`) and on the
stores' expunge history (:class:`txmail.interfaces.IExpungeHistory`,
``expunged_since``):

* ``ENABLE QRESYNC`` (section 3.2.3) also enables CONDSTORE.
* ``SELECT``/``EXAMINE mailbox (QRESYNC (uidvalidity modseq [known-uids
  [seq-match-data]]))`` (section 3.2.5), only once QRESYNC is enabled (else
  ``BAD``): when *uidvalidity* is the mailbox's, after the usual responses,
  ``* VANISHED (EARLIER) uids`` for the known UIDs expunged since *modseq*
  and ``* n FETCH (UID u FLAGS (...) MODSEQ (m))`` for each message changed
  since.  The message sequence match data is checked for syntax only: the
  store's history is exact, so it would not narrow the answer.
* ``UID FETCH set items (CHANGEDSINCE n VANISHED)`` (section 3.2.6): first
  ``* VANISHED (EARLIER) uids`` for the UIDs of *set* expunged since *n*.
* Once enabled, every expunge is told as ``* VANISHED uids`` (section
  3.2.10; :attr:`txmail.imap.view.SelectedView.qresync`).
* ``* OK [CLOSED]`` when SELECT or EXAMINE closes a selected mailbox
  (section 3.2.11; sent by the SELECT handler whenever a mailbox was
  selected, as the capability is advertised).

A mailbox without ``expunged_since`` is answered from the known UIDs that
are no longer there: a superset, which section 3.2.6 allows.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from txmail.imap.commands import condstore
from txmail.imap.commands.context import CommandContext, call, selected_mailbox
from txmail.imap.commands.registry import enableable, extension
from txmail.imap.responses import Bad, Response, UntaggedOk, Vanished
from txmail.imap.types import QresyncParam, SequenceSet
from txmail.imap.view import SelectedView
from txmail.interfaces import IExpungeHistory, IMailbox
from txmail.model import MailboxStatus, MessageInfo

__all__ = ["QRESYNC", "closed", "enable", "enabled", "fetch_vanished", "require_enabled", "select_responses"]

QRESYNC = "QRESYNC"

extension(QRESYNC)


def enabled(session: Any) -> bool:
    """Whether QRESYNC is enabled on *session*."""
    return QRESYNC in session.enabled


@enableable(QRESYNC)
def enable(session: Any) -> Sequence[Response]:
    """``ENABLE QRESYNC``: CONDSTORE too (RFC 7162 section 3.2.3), and the selected view tells VANISHED."""
    responses: Sequence[Response] = condstore.enable(session)
    session.enabled.add(QRESYNC)
    if session.view is not None:
        session.view.qresync = True
    return responses


def require_enabled(ctx: CommandContext, what: str) -> None:
    """``BAD`` unless QRESYNC is enabled (RFC 7162 sections 3.2.5 and 3.2.6)."""
    if not enabled(ctx.session):
        raise Bad(f"{what} needs ENABLE QRESYNC first")


def closed() -> UntaggedOk:
    """``* OK [CLOSED]``: the selected mailbox was closed by SELECT/EXAMINE (RFC 7162 section 3.2.11)."""
    return UntaggedOk("Previous mailbox closed", "CLOSED")


def _within(uids: Iterable[int], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The ascending *uids* that fall in the sorted, disjoint *spans*."""
    out: list[int] = []
    i = 0
    for u in uids:
        while i < len(spans) and spans[i][1] < u:
            i += 1
        if i == len(spans):
            break
        if spans[i][0] <= u:
            out.append(u)
    return out


async def _expunged_since(
    mailbox: IMailbox, view: SelectedView, modseq: int, uid_set: SequenceSet | None, top: int
) -> list[int]:
    """
    The UIDs of *uid_set* (every UID when ``None``; ``*`` is *top*)
    expunged since *modseq* and not in *view* (the view tells those
    itself, as VANISHED, when it may).
    """
    history = IExpungeHistory(mailbox, None)
    if history is not None:
        gone = await call(history.expunged_since, modseq)
    else:
        # No history: every UID below UIDNEXT no longer there (a superset).
        present = {info.uid for info in await call(mailbox.list_messages)}
        gone = [u for u in range(1, top + 1) if u not in present]
    if uid_set is not None:
        gone = _within(gone, uid_set.spans(top))
    return [u for u in gone if u not in view.flags]


def select_responses(ctx: CommandContext, view: SelectedView, param: QresyncParam | None) -> None:
    """SELECT/EXAMINE: with QRESYNC enabled, the new view tells expunges as VANISHED."""
    if enabled(ctx.session):
        view.condstore = True
        view.qresync = True


async def resync(
    ctx: CommandContext,
    view: SelectedView,
    infos: Sequence[MessageInfo],
    status: MailboxStatus,
    param: QresyncParam,
) -> list[Response]:
    """
    The responses of ``SELECT (QRESYNC ...)`` after the usual ones (RFC
    7162 section 3.2.5): nothing unless the UIDVALIDITY matches; else
    ``VANISHED (EARLIER)`` of the known UIDs expunged since the client's
    mod-sequence, then ``FETCH (UID FLAGS MODSEQ)`` of each message changed
    since.
    """
    if param.uidvalidity != view.uidvalidity or status.highest_modseq <= 0:
        return []
    top = max(status.uidnext - 1, view.max_uid)
    gone = await _expunged_since(selected_mailbox(ctx), view, param.modseq, param.known_uids, top)
    out: list[Response] = [Vanished(tuple(gone), earlier=True)] if gone else []
    since = param.modseq
    for seq, info in enumerate(infos, 1):
        if info.modseq > since and info.uid in view.flags:
            out.append(view.flags_fetched(seq, info.uid, with_uid=True, modseq=info.modseq))
    return out


async def fetch_vanished(
    ctx: CommandContext, view: SelectedView, uid_set: SequenceSet, changed_since: int
) -> None:
    """``UID FETCH ... (CHANGEDSINCE n VANISHED)``: emit ``VANISHED (EARLIER)`` first (RFC 7162 section 3.2.6)."""
    require_enabled(ctx, "VANISHED")
    status = await call(selected_mailbox(ctx).status)
    top = max(status.uidnext - 1, view.max_uid)
    gone = await _expunged_since(selected_mailbox(ctx), view, changed_since, uid_set, top)
    if gone:
        ctx.emit(Vanished(tuple(gone), earlier=True))
