"""
IMAP4rev2 (RFC 9051) next to IMAP4rev1: both are advertised, and ``ENABLE
IMAP4rev2`` (section 6.3.1) switches the session to the rev2 rules, as
Dovecot does.  Without it nothing changes.

What ENABLE IMAP4rev2 changes (RFC 9051 appendix E):

* No ``\\Recent`` (section 2.3.2): no ``* n RECENT``, no ``\\Recent`` in
  FLAGS, and the session claims no message's ``\\Recent`` (other rev1
  sessions keep seeing it).  ``STATUS (RECENT)`` and the SEARCH keys NEW,
  OLD, RECENT and UNRECENT are not in rev2's grammar: BAD (sections 6.3.11
  and 6.4.4, section 9 ``status-att`` and ``search-key``).
* SELECT and EXAMINE (section 6.3.2) send no RECENT and no ``OK
  [UNSEEN n]``, and send the mailbox's ``* LIST`` response.
* DELETE of a mailbox that its children keep is ``NO [HASCHILDREN]``
  (sections 6.3.5 and 7.1), not ``NO [CANNOT]``.
* SEARCH is always answered with ``* ESEARCH (TAG ...)`` (section 6.4.4,
  section 7.3.4): no RETURN means ``RETURN (ALL)``.
* Mailbox names are UTF-8 both ways (section 5.1), not modified UTF-7:
  :func:`utf8_names` (SEARCH CHARSET stays valid, unlike UTF8=ACCEPT).

The rest of rev2 is the extensions advertised anyway (NAMESPACE,
UNSELECT, UIDPLUS, ESEARCH, SEARCHRES, ENABLE, IDLE, SASL-IR,
LIST-EXTENDED, LIST-STATUS, MOVE, LITERAL+ (a superset of LITERAL-),
BINARY, SPECIAL-USE, STATUS=SIZE, STATUS DELETED, the RFC 5530 response
codes).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from txmail.errors import MailboxNotEmpty
from txmail.imap.commands.context import CommandContext, call, user_store
from txmail.imap.commands.registry import enableable, extension
from txmail.imap.responses import Bad, ListData, No, Response
from txmail.imap.types import SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr
from txmail.interfaces import IMailStore

__all__ = [
    "IMAP4REV2",
    "check_search_keys",
    "check_status_items",
    "delete_mailbox",
    "enabled",
    "search_options",
    "select_list",
    "utf8_names",
]

IMAP4REV2 = "IMAP4rev2"

# RFC 9051 section 7.2.2 (IMAP4rev1 stays: commands/base.py).
extension(IMAP4REV2)

#: What makes mailbox names UTF-8: UTF8=ACCEPT (RFC 6855, commands/utf8.py) or IMAP4rev2.
_UTF8_NAMES = frozenset({"UTF8=ACCEPT", IMAP4REV2})

#: RFC 3501 search keys that RFC 9051 section 9 no longer has.
_RECENT_KEYS = frozenset({"NEW", "OLD", "RECENT", "UNRECENT"})


@enableable(IMAP4REV2)
def enable(session: Any) -> Sequence[Response]:
    """
    RFC 9051 section 6.3.1: ENABLE IMAP4rev2.  A mailbox selected now
    loses its ``\\Recent`` at once (section 2.3.2); nothing is sent
    besides ENABLED.
    """
    session.enabled.add(IMAP4REV2)
    if session.view is not None:
        session.view.forget_recent()
    return ()


def enabled(session: Any) -> bool:
    """The session follows the IMAP4rev2 rules."""
    return IMAP4REV2 in session.enabled


def utf8_names(enabled_extensions: Iterable[str]) -> bool:
    """Mailbox names are UTF-8: after UTF8=ACCEPT (RFC 6855) or IMAP4rev2 (RFC 9051 section 5.1)."""
    return not _UTF8_NAMES.isdisjoint(enabled_extensions)


def search_options(session: Any, options: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """
    The RETURN options SEARCH answers with: under rev2 an ESEARCH always
    (RFC 9051 section 6.4.4: no RETURN is ``RETURN (ALL)``); ``None``
    means the rev1 ``* SEARCH`` response.
    """
    if options is None and enabled(session):
        return ()
    return options


def check_search_keys(session: Any, key: SearchNode) -> None:
    """BAD for NEW, OLD, RECENT and UNRECENT under rev2 (RFC 9051 section 9, ``search-key``)."""
    if not enabled(session):
        return
    word = _recent_key(key)
    if word is not None:
        raise Bad(f"{word} is not an IMAP4rev2 search key")


def _recent_key(node: SearchNode) -> str | None:
    if isinstance(node, SearchKey):
        return node.name if node.name in _RECENT_KEYS else None
    if isinstance(node, SearchNot):
        return _recent_key(node.key)
    if isinstance(node, SearchOr):
        return _recent_key(node.left) or _recent_key(node.right)
    if isinstance(node, SearchAnd):
        return next((w for w in map(_recent_key, node.keys) if w is not None), None)
    return None


def check_status_items(session: Any, items: Iterable[str]) -> None:
    """BAD for ``RECENT`` under rev2 (RFC 9051 section 9, ``status-att``)."""
    if enabled(session) and "RECENT" in items:
        raise Bad("RECENT is not an IMAP4rev2 status item")


async def delete_mailbox(store: IMailStore, name: str, session: Any) -> None:
    """
    DELETE through :func:`~txmail.imap.commands.context.store_op`: a
    mailbox whose children keep it is ``NO [HASCHILDREN]`` under rev2
    (RFC 9051 sections 6.3.5 and 7.1), ``NO [CANNOT]`` (RFC 5530) under rev1.
    """
    try:
        await call(store.delete_mailbox, name)
    except MailboxNotEmpty:
        if enabled(session):
            raise No("Mailbox has children", "HASCHILDREN") from None
        raise


async def select_list(ctx: CommandContext, name: str) -> ListData:
    """
    RFC 9051 section 6.3.2: SELECT (and EXAMINE) send the mailbox's LIST
    response, its attributes as LIST gives them.
    """
    # Imported here: mailboxes imports this module.
    from txmail.imap.commands.mailboxes import _attributes

    folders = await call(user_store(ctx).list_mailboxes, name)
    folder = next((f for f in folders if f.name == name), None)
    return ListData(name, _attributes(folder, subscribed=False))
