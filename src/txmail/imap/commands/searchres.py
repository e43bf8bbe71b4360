"""
SEARCHRES (RFC 5182, part of IMAP4rev2: RFC 9051 section 6.4.4.1):
``SEARCH RETURN (SAVE)`` keeps the result, and ``$`` names it.

* The result is kept as UIDs on the selected mailbox's view
  (:attr:`txmail.imap.view.SelectedView.saved`), so it starts empty at
  each SELECT or EXAMINE and is gone after CLOSE and UNSELECT (section
  2.1), and an expunged message drops out of it.
* ``$`` is a sequence set (section 4) of FETCH, STORE, COPY, MOVE, UID
  EXPUNGE and of the SEARCH keys (``$``, ``UID $``), in UID commands
  and the others alike (section 2.1): the parser gives
  :data:`txmail.imap.parser.SAVED_RESULT` and
  :meth:`txmail.imap.view.SelectedView.resolve` answers it.
* With SAVE alone no ESEARCH is sent; with MIN and/or MAX only, those are
  saved; otherwise every match (section 2.1).  A SEARCH with SAVE that
  fails with NO empties ``$`` (section 2.1).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Sequence

from txmail.imap.commands.registry import extension
from txmail.imap.types import SearchAnd, SearchKey, SearchNode, SearchNot, SearchOr, SequenceSet
from txmail.imap.view import SelectedView

__all__ = ["SAVE", "forget", "replace_saved", "save", "shown_options"]

SAVE = "SAVE"

# RFC 5182 section 3.
extension("SEARCHRES")


def forget(view: SelectedView, options: Sequence[str] | None) -> None:
    """
    A SEARCH with SAVE starts by emptying ``$``: if it fails, ``$`` stays
    empty (RFC 5182 section 2.1); ``$`` in its own keys was resolved before.
    """
    if options is not None and SAVE in options:
        view.saved = frozenset()


def save(view: SelectedView, options: Sequence[str] | None, uids: Sequence[int]) -> None:
    """
    Keep what a SEARCH with SAVE found (*uids*, ascending): only the MIN
    and MAX messages when those are all it returns, else all (RFC 5182
    section 2.1).
    """
    if options is None or SAVE not in options or not uids:
        return
    wanted = set(options) - {SAVE}
    if wanted and wanted <= {"MIN", "MAX"}:
        kept = {uids[0]} if "MIN" in wanted else set()
        if "MAX" in wanted:
            kept.add(uids[-1])
        view.saved = frozenset(kept)
    else:
        view.saved = frozenset(uids)


def shown_options(options: tuple[str, ...] | None) -> tuple[str, ...] | None:
    """
    The ESEARCH options to answer with, SAVE left out; ``None`` when
    there is no ESEARCH to send (no RETURN, or SAVE alone: RFC 5182
    section 2.1).
    """
    if options is None:
        return None
    shown = tuple(o for o in options if o != SAVE)
    if not shown and SAVE in options:
        return None
    return shown


def replace_saved(node: SearchNode, view: SelectedView) -> SearchNode:
    """*node* with ``$`` and ``UID $`` made ``UID`` of the saved UIDs (RFC 5182 section 2.1)."""
    if isinstance(node, SearchKey):
        if node.name in ("SEQUENCE", "UID") and node.args and getattr(node.args[0], "saved", False):
            return SearchKey("UID", (SequenceSet(tuple((u, u) for u in sorted(view.saved))),))
        return node
    if isinstance(node, SearchNot):
        return SearchNot(replace_saved(node.key, view))
    if isinstance(node, SearchOr):
        return SearchOr(replace_saved(node.left, view), replace_saved(node.right, view))
    return SearchAnd(tuple(replace_saved(k, view) for k in node.keys))
