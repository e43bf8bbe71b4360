"""
NOTIFY's METADATA events (RFC 5465 sections 5.6 and 5.7): when the
annotations (RFC 5464) of a watched mailbox, or of the server, change, the
client gets the unsolicited ``* METADATA mailbox entry ...`` of RFC 5464
section 4.4.2, the names of the entries that changed, never their values.

* ``MailboxMetadataChange`` is a mailbox event: the filters of RFC 5465
  section 6 say which mailboxes (also the selected one, whose
  non-message events are controlled by the other filters, section 3.1).
  ``ServerMetadataChange`` is about the server (``* METADATA ""``): any
  event group naming it asks for it, whatever its mailboxes.
* The client need not ``ENABLE METADATA`` (sections 5.6 and 5.7).
  Without NOTIFY no unsolicited METADATA is sent: ENABLE METADATA (RFC
  5464 section 4.1, a MAY) is not offered.
* Changes this session makes itself are not told back (RFC 5465 section
  5; RFC 5464 section 4.4 tells of changes "by a third party"): those
  heard while this session's SETMETADATA runs, for its mailbox
  (:func:`own_names`).  Only SETMETADATA changes annotations, so another
  command running does not hide another session's change.
* Removed entries are told like set ones (sections 5.6 and 5.7: MUST).
  Changes are coalesced: one response per mailbox however often its
  entries changed, each name once (at most :data:`CHUNK` names a
  response, RFC 5464 section 4.4 allows several).  The names waiting are
  bounded (:data:`MAX_ENTRIES`); past that NOTIFY overflows as for any
  other event (RFC 5465 section 5.8).
* A mailbox deleted before its METADATA went out is left out (its LIST
  says it is gone); one renamed has its pending names follow it, its
  annotations do (RFC 5464 section 4.1).

The queue is :class:`~txmail.imap.commands.notify.NotifyState`'s; the
events come from :meth:`txmail.interfaces.IMetadataStore.add_annotation_listener`
(the adapter listens while NOTIFY wants them).  The events are offered
(:func:`txmail.imap.commands.notify.support_event`) by
:mod:`txmail.imap.commands.metadata`, for stores that provide
:class:`~txmail.interfaces.IMetadataStore` only.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Iterable

from txmail.imap.responses import MetadataNames
from txmail.imap.types import Command

__all__ = ["CHUNK", "EVENTS", "MAILBOX_EVENT", "MAX_ENTRIES", "SERVER_EVENT", "MetadataQueue", "own_names"]

#: RFC 5465 section 5.6: a mailbox's annotations changed.
MAILBOX_EVENT = "MailboxMetadataChange"
#: RFC 5465 section 5.7: the server's annotations changed (mailbox ``""``).
SERVER_EVENT = "ServerMetadataChange"
#: Both, in the order NO [BADEVENT] lists them.
EVENTS = (MAILBOX_EVENT, SERVER_EVENT)
#: Entry names waiting for the client, over every mailbox (past that: overflow).
#: Twice what one SETMETADATA may name (the parser's bound).
MAX_ENTRIES = 2000
#: Entry names in one ``* METADATA`` response.
CHUNK = 100


def own_names(cmd: Command | None) -> frozenset[str]:
    """
    The mailbox whose annotation changes are the session's own: that of
    its running SETMETADATA (``""`` for the server), else none.
    """
    if cmd is None or cmd.name != "SETMETADATA":
        return frozenset()
    mailbox = getattr(cmd.args, "mailbox", None)
    return frozenset((mailbox,)) if isinstance(mailbox, str) else frozenset()


class MetadataQueue:
    """
    The METADATA notifications waiting: per mailbox (``""``: the server),
    the names of the entries that changed, in the order first heard.

    Attributes:
        entries: the names waiting, over every mailbox.
    """

    def __init__(self) -> None:
        self._names: dict[str, dict[str, None]] = {}
        self.entries = 0

    def __len__(self) -> int:
        """The mailboxes with names waiting."""
        return len(self._names)

    @property
    def full(self) -> bool:
        """More than :data:`MAX_ENTRIES` names wait."""
        return self.entries > MAX_ENTRIES

    def add(self, mailbox: str, names: Iterable[str]) -> None:
        """Queue *names* of *mailbox* (those already waiting are not added twice)."""
        waiting = self._names.setdefault(mailbox, {})
        before = len(waiting)
        waiting.update(dict.fromkeys(names))
        self.entries += len(waiting) - before

    def forget(self, mailbox: str) -> None:
        """*mailbox* was deleted: nothing to tell of it."""
        self.entries -= len(self._names.pop(mailbox, {}))

    def rename(self, old: str, new: str, wanted: bool) -> None:
        """*old* is now *new*: its names follow it when *new* is *wanted*, else they are dropped."""
        names = self._names.pop(old, None)
        if names is None:
            return
        self.entries -= len(names)
        if wanted:
            self.add(new, names)

    def clear(self) -> None:
        self._names.clear()
        self.entries = 0

    def take(self) -> list[MetadataNames]:
        """The responses for what waits (emptying the queue)."""
        out = []
        for mailbox, names in self._names.items():
            ordered = list(names)
            for i in range(0, len(ordered), CHUNK):
                out.append(MetadataNames(mailbox, tuple(ordered[i : i + CHUNK])))
        self.clear()
        return out
