"""
OBJECTID (RFC 8474): persistent ids of mailboxes and messages.

The ids are the stores' (:class:`txmail.interfaces.IObjectIds`: a
``mailbox_id`` per mailbox, :attr:`txmail.model.MessageInfo.email_id` per
message, kept across restarts, renames, copies and moves); this module and
the FETCH and SEARCH code tell them:

* ``MAILBOXID`` (section 4): the response code of the tagged ``OK`` of
  CREATE (:func:`created_code`), an untagged ``* OK [MAILBOXID (id)]`` at
  SELECT and EXAMINE (:func:`select_response`), and a STATUS item (also
  in LIST-STATUS).
* ``FETCH EMAILID`` (section 5.1): the store's id of the message
  (:mod:`txmail.imap.fetch`); a copy or move keeps it.
* ``FETCH THREADID`` (section 5.2): computed from the cached header
  fields, not kept by the stores (:func:`txmail.imap.thread.thread_id`):
  the thread's root is the first ``References`` id, else the first
  ``In-Reply-To`` id, else the message's own ``Message-ID``, and the id is
  ``T`` and 96 bits of its hash, so every message naming the same first
  message shares it and it never changes; a message without these fields
  is a thread of its own (named after its EMAILID).  Not RFC 5256
  threading: no subject grouping, no repair of broken chains.
* ``SEARCH EMAILID id`` and ``SEARCH THREADID id`` compare exactly (ids
  are case-sensitive) (:mod:`txmail.imap.search`).

OBJECTID is advertised only when the store provider declares that its
mailboxes keep ids (:class:`~txmail.interfaces.IObjectIdProvider`,
:func:`withheld`).  Should a mailbox have none all the same (or a client
ask without the capability), it gets no ``MAILBOXID`` (left out of CREATE,
SELECT and STATUS) and ``EMAILID NIL``: never an error.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import re

from txmail.errors import StoreError
from txmail.imap.commands.context import CommandContext, call, user_store
from txmail.imap.commands.registry import extension
from txmail.imap.responses import UntaggedOk
from txmail.interfaces import IMailbox, IMailStoreProvider, IObjectIdProvider, IObjectIds

__all__ = ["OBJECTID", "created_code", "mailbox_id", "select_response", "withheld"]

OBJECTID = "OBJECTID"

#: objectid = 1*255(ALPHA / DIGIT / "_" / "-")  (RFC 8474 section 7)
_OBJECTID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")

# RFC 8474 section 3: the capability.
extension(OBJECTID)


def withheld(provider: IMailStoreProvider) -> frozenset[str]:
    """
    The capabilities not to advertise for the store *provider*: OBJECTID
    unless it provides :class:`~txmail.interfaces.IObjectIdProvider`.
    """
    return frozenset() if IObjectIdProvider.providedBy(provider) else frozenset({OBJECTID})


def mailbox_id(mailbox: IMailbox) -> str | None:
    """The MAILBOXID of *mailbox*, or ``None`` when its store keeps none (or a malformed one)."""
    if not IObjectIds.providedBy(mailbox):
        return None
    found = getattr(mailbox, "mailbox_id", None)
    if isinstance(found, str) and _OBJECTID_RE.fullmatch(found):
        return found
    return None


def code(mailbox: IMailbox) -> str | None:
    """The response code ``MAILBOXID (id)`` of *mailbox* (RFC 8474 section 7), or ``None``."""
    found = mailbox_id(mailbox)
    return None if found is None else f"MAILBOXID ({found})"


def select_response(mailbox: IMailbox) -> tuple[UntaggedOk, ...]:
    """RFC 8474 section 4.2: ``* OK [MAILBOXID (id)] Ok`` at SELECT and EXAMINE (none without an id)."""
    found = code(mailbox)
    return () if found is None else (UntaggedOk("Ok", found),)


async def created_code(ctx: CommandContext, name: str) -> str | None:
    """
    RFC 8474 section 4.1: the code of CREATE's tagged ``OK``, ``MAILBOXID
    (id)`` of the mailbox just created; ``None`` when it has none or cannot
    be opened (the CREATE succeeded all the same).
    """
    try:
        mailbox = await call(user_store(ctx).get_mailbox, name)
    except StoreError:
        return None
    return code(mailbox)
