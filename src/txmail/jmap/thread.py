"""
The Thread methods of RFC 8621 section 3: ``Thread/get`` and
``Thread/changes``.  Thread ids and the Thread state are described in
:mod:`txmail.jmap.state`; a Thread's ``emailIds`` are in order of arrival
(internal date, then EMAILID), as section 3 asks ("sorted by the receivedAt
date of the Email, oldest first").

This module is sans-IO apart from the Deferreds the store returns.
"""

from __future__ import annotations

from typing import Any

from txmail.jmap.common import get_ids, max_changes, properties
from txmail.jmap.core import CallContext
from txmail.jmap.state import cannot_calculate, email_changes, mail_view

__all__ = ["METHODS"]


async def thread_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Thread/get`` (RFC 8621 section 3.1)."""
    ids = get_ids(context, arguments)
    wanted = properties(arguments, ("id", "emailIds"), ("id", "emailIds"))
    view = await mail_view(context.store)
    threads = await view.threads()
    if ids is None:
        ids = list(threads)
    found, not_found = [], []
    for tid in ids:
        emails = threads.get(tid)
        if emails is None:
            not_found.append(tid)
        else:
            found.append({p: v for p, v in (("id", tid), ("emailIds", list(emails))) if p in wanted})
    return {
        "accountId": context.account_id,
        "state": view.email_state(),
        "list": found,
        "notFound": not_found,
    }


async def thread_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """
    ``Thread/changes`` (RFC 8621 section 3.2): the Threads of the Emails
    created or destroyed since the state (a Thread's only property besides
    its id is its list of Emails).  A Thread is created when none of its
    Emails existed then, destroyed when none is left.
    """
    context.check_account(arguments)
    limit = max_changes(arguments)
    view = await mail_view(context.store)
    changes = await email_changes(view, arguments.get("sinceState"), limit)
    known = view.cache.threads
    await view.thread_ids()
    touched: set[str] = set()
    for eid in changes.created + changes.destroyed:
        tid = known.get(eid)
        if tid is None:
            raise cannot_calculate("the thread of a destroyed Email is not known")
        touched.add(tid)
    threads = await view.threads()
    created, updated, destroyed = [], [], []
    for tid in sorted(touched):
        members = threads.get(tid)
        if members is None:
            destroyed.append(tid)
        elif any(changes.existed(e) for e in members) or any(known.get(e) == tid for e in changes.destroyed):
            updated.append(tid)
        else:
            created.append(tid)
    return {
        "accountId": context.account_id,
        "oldState": arguments["sinceState"],
        "newState": changes.new_state,
        "hasMoreChanges": changes.has_more,
        "created": created,
        "updated": updated,
        "destroyed": destroyed,
    }


METHODS = {"Thread/get": thread_get, "Thread/changes": thread_changes}
