"""
CONDSTORE (RFC 7162 section 3.1): mod-sequences in IMAP.

Every store of txmail keeps a mod-sequence per message and a HIGHESTMODSEQ
per mailbox (:class:`txmail.model.MessageInfo` ``modseq``,
:class:`txmail.model.MailboxStatus` ``highest_modseq``; the Maildir store
keeps them in its index across restarts), and
:meth:`txmail.interfaces.IMailbox.set_flags` takes ``unchanged_since``.
This module turns them into the protocol:

* ``ENABLE CONDSTORE``, and the implicit enabling of section 3.1 by any
  CONDSTORE enabling command: ``SELECT``/``EXAMINE (CONDSTORE)``, ``FETCH
  MODSEQ`` or ``(CHANGEDSINCE n)``, ``STORE (UNCHANGEDSINCE n)``, ``SEARCH
  MODSEQ``, ``STATUS (HIGHESTMODSEQ)``.  Enabled while a mailbox is
  selected, ``* OK [HIGHESTMODSEQ n]`` tells its current value.
* Once enabled, SELECT and EXAMINE send ``* OK [HIGHESTMODSEQ n]`` (or
  ``[NOMODSEQ]`` for a store without mod-sequences, section 3.1.2.2), and
  every flag change told with an untagged FETCH carries ``MODSEQ``
  (:attr:`txmail.imap.view.SelectedView.condstore`).
* ``STORE (UNCHANGEDSINCE n)``: the store changes only messages whose
  mod-sequence is at most *n*; the others end in the tagged ``OK
  [MODIFIED set]`` (section 3.1.3), and ``.SILENT`` still gets ``* n FETCH
  (UID u MODSEQ (m))`` for each message changed.
* ``SEARCH MODSEQ``: the response ends with ``(MODSEQ n)``, the highest
  mod-sequence of the messages found (section 3.1.6); in ESEARCH, ``MODSEQ
  n`` (section 3.1.10).

The handlers of FETCH, STORE, SEARCH, SELECT and STATUS
(:mod:`txmail.imap.commands.selected`, :mod:`txmail.imap.commands.mailboxes`)
call the functions here.  QRESYNC (section 3.2), built on this, is
:mod:`txmail.imap.commands.qresync`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from txmail.imap import serialize
from txmail.imap.commands.context import CommandContext, call, selected_mailbox
from txmail.imap.commands.registry import enableable, extension
from txmail.imap.responses import FetchFlags, Response, UntaggedOk
from txmail.imap.search import leaves
from txmail.imap.types import FetchAttribute, SearchNode
from txmail.imap.view import SelectedView
from txmail.model import MailboxStatus

__all__ = [
    "CONDSTORE",
    "enable",
    "enabled",
    "fetch_items",
    "highest_modseq_ok",
    "search_uses_modseq",
    "select_responses",
    "store_responses",
]

CONDSTORE = "CONDSTORE"
_MODSEQ_ITEM = FetchAttribute("MODSEQ")

extension(CONDSTORE)


def highest_modseq_ok(modseq: int) -> UntaggedOk:
    """``* OK [HIGHESTMODSEQ n]``, or ``[NOMODSEQ]`` without mod-sequences (RFC 7162 section 3.1.2)."""
    if modseq <= 0:
        return UntaggedOk("Sorry, this mailbox format doesn't support modsequences", "NOMODSEQ")
    return UntaggedOk("Highest", f"HIGHESTMODSEQ {modseq}")


def enabled(session: Any) -> bool:
    """Whether CONDSTORE is enabled on *session*."""
    return CONDSTORE in session.enabled


@enableable(CONDSTORE)
def enable(session: Any) -> Sequence[Response]:
    """
    Enable CONDSTORE on *session* (ENABLE, or a CONDSTORE enabling command,
    RFC 7162 section 3.1).  The first time, with a mailbox selected, the
    responses tell its HIGHESTMODSEQ; else none.
    """
    if enabled(session):
        return ()
    session.enabled.add(CONDSTORE)
    view = session.view
    if view is None:
        return ()
    view.condstore = True
    return (highest_modseq_ok(view.highest_modseq),)


def enable_implicitly(ctx: CommandContext) -> None:
    """A CONDSTORE enabling command: :func:`enable`, its responses emitted."""
    responses = enable(ctx.session)
    if responses:
        ctx.emit(*responses)


def select_responses(
    ctx: CommandContext, view: SelectedView, status: MailboxStatus, param: bool
) -> Sequence[Response]:
    """
    SELECT/EXAMINE: note the mailbox's HIGHESTMODSEQ in *view*; with the
    ``(CONDSTORE)`` parameter *param* CONDSTORE is enabled (RFC 7162 section
    3.1.8).  The HIGHESTMODSEQ response (section 3.1.2.1), or NOMODSEQ.
    """
    view.set_highest_modseq(status.highest_modseq)
    if param:
        ctx.session.enabled.add(CONDSTORE)
    if enabled(ctx.session):
        view.condstore = True
    # Section 3.1.2.1: a server that keeps mod-sequences sends HIGHESTMODSEQ
    # with every successful SELECT and EXAMINE (as Dovecot does), enabled or not.
    return (highest_modseq_ok(status.highest_modseq),)


def fetch_items(
    ctx: CommandContext, items: tuple[FetchAttribute, ...], changed_since: int | None, sets_seen: bool
) -> tuple[FetchAttribute, ...]:
    """
    The FETCH items with ``MODSEQ`` added where RFC 7162 wants it:
    CHANGEDSINCE implies it (section 3.1.4.1), and once CONDSTORE is
    enabled a FETCH that sets ``\\Seen`` shows the new MODSEQ with the
    flags (section 3.1).  ``MODSEQ`` or CHANGEDSINCE enables CONDSTORE.
    """
    asked = any(item.name == "MODSEQ" for item in items)
    if asked or changed_since is not None:
        enable_implicitly(ctx)
    if not asked and (changed_since is not None or (sets_seen and enabled(ctx.session))):
        return (*items, _MODSEQ_ITEM)
    return items


def search_uses_modseq(key: SearchNode) -> bool:
    """Whether a search key tree holds ``MODSEQ`` (RFC 7162 section 3.1.5)."""
    return any(leaf.name == "MODSEQ" for leaf in leaves(key))


async def store_responses(
    ctx: CommandContext,
    view: SelectedView,
    targets: list[tuple[int, int]],
    changed: Sequence[Any],
    *,
    uid: bool,
    silent: bool,
    unchanged_since: int | None,
) -> tuple[list[Response], str | None]:
    """
    STORE with CONDSTORE enabled (RFC 7162 section 3.1.3): the untagged
    FETCH responses (with MODSEQ; with ``.SILENT`` only for the messages
    changed, without FLAGS) and the ``MODIFIED`` response code for the
    messages that failed the UNCHANGEDSINCE test (sequence numbers, or
    UIDs for UID STORE), ``None`` when none did.
    """
    changed_uids = {info.uid for info in changed}
    current = {
        info.uid: info for info in await call(selected_mailbox(ctx).list_messages, [u for _, u in targets])
    }
    failed: list[int] = []
    out: list[Response] = []
    for seq, u in targets:
        info = current.get(u)
        if info is None or u not in view.flags:
            continue  # expunged meanwhile
        if unchanged_since is not None and u not in changed_uids and info.modseq > unchanged_since:
            failed.append(u if uid else seq)
            continue
        if silent:
            if u in changed_uids:
                out.append(FetchFlags(seq, None, u, info.modseq))
        else:
            out.append(view.flags_fetched(seq, u, with_uid=uid, modseq=info.modseq))
    code = None
    if failed:
        code = "MODIFIED " + serialize.number_set(sorted(failed)).decode("ascii")
    return out, code
