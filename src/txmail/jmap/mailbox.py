"""
The Mailbox methods of RFC 8621 section 2 over :class:`txmail.interfaces.IMailStore`:
``Mailbox/get``, ``Mailbox/changes``, ``Mailbox/query``,
``Mailbox/queryChanges`` and ``Mailbox/set``.

* ``name`` is the last component of the store's name (``/`` is the
  hierarchy delimiter and so may not appear in a JMAP name), ``parentId``
  the mailbox of the name's parent.
* ``role`` comes from the special-use attribute (RFC 6154): ``inbox`` for
  INBOX, ``sent``, ``drafts``, ``trash``, ``junk``, ``archive``.  A role is
  given when a mailbox is created; the store has no way to move one later,
  so an update of ``role`` is refused (``invalidProperties``).
* ``sortOrder`` is always 0 (the store keeps none): a create or update
  asking for another is refused.
* ``myRights``: the user owns every mailbox; INBOX may be neither renamed
  nor deleted, and a name that only exists as a parent (no mailbox of its
  own) holds no Emails.
* The state (see :mod:`txmail.jmap.state`) holds each mailbox's counts, so
  ``Mailbox/changes`` tells a mailbox whose counts alone changed with
  ``updatedProperties`` naming the four counts.

This module is sans-IO apart from the Deferreds the store returns.
"""

from __future__ import annotations

import contextlib
import functools
import re
from typing import Any

from txmail.errors import InvalidMailboxName, MailboxExists, MailboxNotEmpty, NoSuchMailbox
from txmail.jmap.common import (
    SetRun,
    check_filter,
    check_if_in_state,
    get_ids,
    invalid,
    max_changes,
    optional_bool,
    properties,
    resolve_id,
    set_arguments,
    unsigned,
)
from txmail.jmap.core import CallContext, MethodError, set_error
from txmail.jmap.state import ROLES, BoxView, MailView, decode_state, encode_state, mail_view
from txmail.model import DELIMITER, INBOX, SpecialUse

__all__ = ["MAX_MAILBOX_DEPTH", "METHODS"]

PROPERTIES = (
    "id", "name", "parentId", "role", "sortOrder", "totalEmails", "unreadEmails",
    "totalThreads", "unreadThreads", "myRights", "isSubscribed",
)  # fmt: skip
COUNTS = ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
#: ``maxMailboxDepth`` (RFC 8621 section 1.3.1): a mailbox and its parents, at most.
MAX_MAILBOX_DEPTH = 10
_ROLE_USES = {role: use for use, role in ROLES.items()}
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/]")


def _rights(box: BoxView) -> dict[str, bool]:
    """``myRights`` (RFC 8621 section 2): the owner's."""
    items = box.status is not None
    inbox = box.name == INBOX
    return {
        "mayReadItems": items,
        "mayAddItems": items,
        "mayRemoveItems": items,
        "maySetSeen": items,
        "maySetKeywords": items,
        "mayCreateChild": True,
        "mayRename": not inbox,
        "mayDelete": not inbox,
        "maySubmit": items,
    }


async def _object(view: MailView, box: BoxView, wanted: list[str]) -> dict[str, Any]:
    counts = (await view.mailbox_counts())[box.id]
    values = {
        "id": box.id,
        "name": box.name.rpartition(DELIMITER)[2],
        "parentId": view.parent_id(box),
        "role": box.role,
        "sortOrder": 0,
        "totalEmails": counts[0],
        "unreadEmails": counts[1],
        "totalThreads": counts[2],
        "unreadThreads": counts[3],
        "myRights": _rights(box),
        "isSubscribed": box.folder.subscribed,
    }
    return {p: values[p] for p in wanted}


async def mailbox_get(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Mailbox/get`` (RFC 8621 section 2.1)."""
    ids = get_ids(context, arguments)
    wanted = properties(arguments, PROPERTIES, PROPERTIES)
    view = await mail_view(context.store)
    found, not_found = [], []
    for box_id in view.boxes if ids is None else ids:
        box = view.boxes.get(box_id)
        if box is None:
            not_found.append(box_id)
        else:
            found.append(await _object(view, box, wanted))
    return {
        "accountId": context.account_id,
        "state": await view.mailbox_state(),
        "list": found,
        "notFound": not_found,
    }


async def mailbox_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Mailbox/changes`` (RFC 8621 section 2.2; RFC 8620 section 5.2)."""
    context.check_account(arguments)
    limit = max_changes(arguments)
    since = arguments.get("sinceState")
    if not isinstance(since, str):
        raise invalid("sinceState", "sinceState must be a state string")
    entries = decode_state("m", since)
    if entries is None or not all(len(e) == 6 and isinstance(e[0], str) for e in entries):
        raise MethodError("cannotCalculateChanges", "the state is not one this server gave")
    view = await mail_view(context.store)
    counts = await view.mailbox_counts()
    current = {b.id: [b.id, b.props_hash(view.parent_id(b)), *counts[b.id]] for b in view.boxes.values()}
    old = {e[0]: e for e in entries}
    changes: list[tuple[str, str]] = []  # (id, created | updated | counts | destroyed)
    for box_id in sorted(set(old) | set(current)):
        before, now = old.get(box_id), current.get(box_id)
        if before == now:
            continue
        if before is None:
            changes.append((box_id, "created"))
        elif now is None:
            changes.append((box_id, "destroyed"))
        else:
            changes.append((box_id, "counts" if before[1] == now[1] else "updated"))
    has_more = limit is not None and len(changes) > limit
    if has_more:
        changes = changes[:limit]
        after = dict(old)
        for box_id, _kind in changes:
            if box_id in current:
                after[box_id] = current[box_id]
            else:
                after.pop(box_id, None)
        new_state = encode_state("m", list(after.values()))
    else:
        new_state = await view.mailbox_state()
    kinds = {kind for _, kind in changes}
    return {
        "accountId": context.account_id,
        "oldState": since,
        "newState": new_state,
        "hasMoreChanges": has_more,
        "created": [i for i, k in changes if k == "created"],
        "updated": [i for i, k in changes if k in ("updated", "counts")],
        "destroyed": [i for i, k in changes if k == "destroyed"],
        "updatedProperties": COUNTS if kinds and "updated" not in kinds and "counts" in kinds else None,
    }


# -- Mailbox/query (RFC 8621 section 2.3) ---------------------------------------------------

_CONDITIONS = {"parentId", "name", "role", "hasAnyRole", "isSubscribed"}


def _check_filter(filter: Any, context: CallContext) -> Any:
    """The filter with creation ids resolved; ``unsupportedFilter`` for anything not of section 2.3."""
    return check_filter(filter, functools.partial(_check_condition, context))


def _check_condition(context: CallContext, filter: dict[str, Any]) -> Any:
    unknown = set(filter) - _CONDITIONS
    if unknown:
        raise MethodError("unsupportedFilter", f"unknown conditions: {', '.join(sorted(unknown))}")
    out = dict(filter)
    if "parentId" in out:
        if out["parentId"] is not None and not isinstance(out["parentId"], str):
            raise MethodError("unsupportedFilter", "parentId must be an id or null")
        out["parentId"] = resolve_id(context, out["parentId"])
    if "name" in out and not isinstance(out["name"], str):
        raise MethodError("unsupportedFilter", "name must be a string")
    if "role" in out and out["role"] is not None and not isinstance(out["role"], str):
        raise MethodError("unsupportedFilter", "role must be a string or null")
    for key in ("hasAnyRole", "isSubscribed"):
        if key in out and not isinstance(out[key], bool):
            raise MethodError("unsupportedFilter", f"{key} must be a boolean")
    return out


def _matches(view: MailView, box: BoxView, filter: Any) -> bool:
    if filter is None:
        return True
    if "operator" in filter:
        results = (_matches(view, box, c) for c in filter["conditions"])
        if filter["operator"] == "AND":
            return all(results)
        if filter["operator"] == "OR":
            return any(results)
        return not any(results)
    if "parentId" in filter and view.parent_id(box) != filter["parentId"]:
        return False
    if "name" in filter and filter["name"].casefold() not in box.name.rpartition(DELIMITER)[2].casefold():
        return False
    if "role" in filter and box.role != filter["role"]:
        return False
    if "hasAnyRole" in filter and (box.role is not None) != filter["hasAnyRole"]:
        return False
    return not ("isSubscribed" in filter and box.folder.subscribed != filter["isSubscribed"])


def _sort_key(arguments: dict[str, Any]) -> Any:
    sort = arguments.get("sort") or []
    if not isinstance(sort, list):
        raise invalid("sort", "sort must be a list of comparators")
    keys = []
    for comparator in sort:
        if not isinstance(comparator, dict) or comparator.get("property") not in ("sortOrder", "name"):
            raise MethodError("unsupportedSort", "Mailbox/query sorts by sortOrder or name")
        keys.append((comparator["property"], comparator.get("isAscending", True) is not False))

    def key(box: BoxView) -> list[Any]:
        out: list[Any] = []
        for prop, ascending in keys:
            value = box.name.rpartition(DELIMITER)[2].casefold() if prop == "name" else 0
            out.append(_Ordered(value, ascending))
        out.append(box.name)
        return out

    return key


class _Ordered:
    """A sort key item, reversed for a descending comparator."""

    __slots__ = ("ascending", "value")

    def __init__(self, value: Any, ascending: bool) -> None:
        self.value = value
        self.ascending = ascending

    def __lt__(self, other: _Ordered) -> bool:
        return bool(self.value < other.value if self.ascending else other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ordered) and self.value == other.value

    def __hash__(self) -> int:  # pragma: no cover - not hashed
        return hash(self.value)


def window(
    arguments: dict[str, Any], ids: list[str], default_limit: int | None = None
) -> tuple[int, list[str]]:
    """
    The ``position``/``anchor``/``anchorOffset``/``limit`` window of a
    query's results (RFC 8620 section 5.5): ``(position, ids)``.
    """
    limit = unsigned(arguments, "limit", default_limit)
    anchor = arguments.get("anchor")
    if anchor is not None:
        if not isinstance(anchor, str):
            raise invalid("anchor", "anchor must be an id")
        offset = arguments.get("anchorOffset") or 0
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise invalid("anchorOffset", "anchorOffset must be an integer")
        try:
            index = ids.index(anchor)
        except ValueError:
            raise MethodError("anchorNotFound") from None
        position = max(0, index + offset)
    else:
        position = arguments.get("position") or 0
        if not isinstance(position, int) or isinstance(position, bool):
            raise invalid("position", "position must be an integer")
        if position < 0:
            position = max(0, len(ids) + position)
    end = None if limit is None else position + limit
    return position, ids[position:end]


async def mailbox_query(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Mailbox/query`` (RFC 8621 section 2.3), with ``sortAsTree`` and ``filterAsTree``."""
    context.check_account(arguments)
    filter = _check_filter(arguments.get("filter"), context)
    key = _sort_key(arguments)
    as_tree = optional_bool(arguments, "sortAsTree")
    filter_tree = optional_bool(arguments, "filterAsTree")
    calculate_total = optional_bool(arguments, "calculateTotal")
    view = await mail_view(context.store)
    boxes = sorted(view.boxes.values(), key=key)
    matching = {b.id for b in boxes if _matches(view, b, filter)}
    if filter_tree:
        # A mailbox matches only when its parents all do (section 2.3).
        matching = {i for i in matching if all(p in matching for p in _ancestors(view, view.boxes[i]))}
    if as_tree:
        ordered: list[BoxView] = []
        children: dict[str | None, list[BoxView]] = {}
        for box in boxes:
            parent = view.parent_id(box)
            children.setdefault(parent if parent in view.boxes else None, []).append(box)
        stack = list(reversed(children.get(None, [])))
        while stack:
            box = stack.pop()
            ordered.append(box)
            stack.extend(reversed(children.get(box.id, [])))
        boxes = ordered
    ids = [b.id for b in boxes if b.id in matching]
    position, page = window(arguments, ids)
    out: dict[str, Any] = {
        "accountId": context.account_id,
        "queryState": await view.mailbox_state(),
        "canCalculateChanges": False,
        "position": position,
        "ids": page,
    }
    if calculate_total:
        out["total"] = len(ids)
    return out


def _ancestors(view: MailView, box: BoxView) -> list[str]:
    out = []
    parent = view.parent_id(box)
    while parent is not None and parent in view.boxes:
        out.append(parent)
        parent = view.parent_id(view.boxes[parent])
    return out


async def mailbox_query_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Mailbox/queryChanges``: not calculated (``canCalculateChanges`` is false)."""
    context.check_account(arguments)
    raise MethodError("cannotCalculateChanges", "Mailbox/query results are not tracked")


# -- Mailbox/set (RFC 8621 section 2.5) ----------------------------------------------------

_SETTABLE = {"name", "parentId", "role", "sortOrder", "isSubscribed"}


def _bad(properties: list[str], description: str) -> dict[str, Any]:
    return set_error("invalidProperties", description, properties=properties)


def _check_name(name: Any) -> str | None:
    if not isinstance(name, str) or not name or _BAD_NAME.search(name) or len(name.encode()) > 255:
        return None
    if name in (".", "..") or name.startswith("~") or name.strip() != name:
        return None
    return name


async def _create_one(context: CallContext, view: MailView, props: dict[str, Any]) -> dict[str, Any]:
    """Create one mailbox: its server-set properties, or a SetError (a dict with ``type``)."""
    unknown = sorted(set(props) - _SETTABLE)
    if unknown:
        return _bad(unknown, "not settable")
    name = _check_name(props.get("name"))
    if name is None:
        return _bad(["name"], "a name is 1 to 255 octets without '/' or control characters")
    parent_id = resolve_id(context, props.get("parentId"))
    parent = None
    if parent_id is not None:
        parent = view.boxes.get(parent_id) if isinstance(parent_id, str) else None
        if parent is None:
            return _bad(["parentId"], "no such mailbox")
    role = props.get("role")
    use = None
    if role is not None:
        use = _ROLE_USES.get(role) if isinstance(role, str) else None
        if use is None:
            return _bad(["role"], "not a role this server gives a new mailbox")
        if any(b.role == role for b in view.boxes.values()):
            return _bad(["role"], "another mailbox has this role")
    if props.get("sortOrder", 0) != 0:
        return _bad(["sortOrder"], "the sort order is always 0")
    subscribe = props.get("isSubscribed", True)
    if not isinstance(subscribe, bool):
        return _bad(["isSubscribed"], "must be a boolean")
    full = name if parent is None else parent.name + DELIMITER + name
    if full.count(DELIMITER) >= MAX_MAILBOX_DEPTH:
        return _bad(["parentId"], f"mailboxes nest at most {MAX_MAILBOX_DEPTH} deep")
    try:
        await context.store.create_mailbox(full, SpecialUse(use) if use is not None else None)
    except MailboxExists:
        return _bad(["name"], "a mailbox of this name exists")
    except InvalidMailboxName as e:
        return _bad(["name"], str(e))
    if subscribe:
        await context.store.subscribe(full)
    view = await mail_view(context.store)
    box = view.by_name[full]
    return await _object(view, box, ["id", "sortOrder", *COUNTS, "myRights", "isSubscribed"])


async def _update_one(
    context: CallContext, view: MailView, box: BoxView, patch: dict[str, Any]
) -> dict[str, Any] | None:
    """Update one mailbox: ``None``, or a SetError."""
    unknown = sorted(set(patch) - _SETTABLE)
    if unknown:
        return _bad(unknown, "not settable")
    if "role" in patch and patch["role"] != box.role:
        return _bad(["role"], "a mailbox's role cannot be changed")
    if patch.get("sortOrder", 0) != 0:
        return _bad(["sortOrder"], "the sort order is always 0")
    if "isSubscribed" in patch and not isinstance(patch["isSubscribed"], bool):
        return _bad(["isSubscribed"], "must be a boolean")
    new_name = box.name
    if "name" in patch or "parentId" in patch:
        leaf = _check_name(patch.get("name", box.name.rpartition(DELIMITER)[2]))
        if leaf is None:
            return _bad(["name"], "a name is 1 to 255 octets without '/' or control characters")
        parent_id = resolve_id(context, patch["parentId"]) if "parentId" in patch else view.parent_id(box)
        if parent_id is None:
            new_name = leaf
        else:
            parent = view.boxes.get(parent_id) if isinstance(parent_id, str) else None
            if parent is None:
                return _bad(["parentId"], "no such mailbox")
            if parent.id == box.id or parent.name.startswith(box.name + DELIMITER):
                return _bad(["parentId"], "a mailbox cannot be below itself")
            new_name = parent.name + DELIMITER + leaf
    if new_name != box.name:
        deepest = max(
            (b.name.count(DELIMITER) for b in view.boxes.values() if b.name.startswith(box.name + DELIMITER)),
            default=box.name.count(DELIMITER),
        )
        if new_name.count(DELIMITER) + deepest - box.name.count(DELIMITER) >= MAX_MAILBOX_DEPTH:
            return _bad(["parentId"], f"mailboxes nest at most {MAX_MAILBOX_DEPTH} deep")
        if box.name == INBOX:
            return set_error("forbidden", "INBOX cannot be renamed")
        try:
            await context.store.rename_mailbox(box.name, new_name)
        except MailboxExists:
            return _bad(["name"], "a mailbox of this name exists")
        except (InvalidMailboxName, NoSuchMailbox) as e:
            return _bad(["name"], str(e))
    if "isSubscribed" in patch and patch["isSubscribed"] != box.folder.subscribed:
        if patch["isSubscribed"]:
            await context.store.subscribe(new_name)
        else:
            with contextlib.suppress(NoSuchMailbox):
                await context.store.unsubscribe(new_name)
    if new_name != box.name and box.folder.subscribed and "isSubscribed" not in patch:
        # Subscriptions are by name: the renamed mailbox stays subscribed.
        await context.store.subscribe(new_name)
        with contextlib.suppress(NoSuchMailbox):
            await context.store.unsubscribe(box.name)
    return None


async def _destroy_one(
    context: CallContext, view: MailView, box: BoxView, remove_emails: bool
) -> dict[str, Any] | None:
    if box.name == INBOX:
        return set_error("forbidden", "INBOX cannot be destroyed")
    if any(b.name.startswith(box.name + DELIMITER) for b in view.boxes.values()):
        return set_error("mailboxHasChild", "the mailbox has child mailboxes")
    if box.infos and not remove_emails:
        return set_error("mailboxHasEmail", "the mailbox holds Emails (see onDestroyRemoveEmails)")
    try:
        await context.store.delete_mailbox(box.name)
    except MailboxNotEmpty:
        return set_error("mailboxHasChild", "the mailbox has child mailboxes")
    except NoSuchMailbox:
        return set_error("notFound")
    if box.folder.subscribed:
        with contextlib.suppress(NoSuchMailbox):
            await context.store.unsubscribe(box.name)
    return None


async def mailbox_set(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Mailbox/set`` (RFC 8621 section 2.5)."""
    create, update, destroy = set_arguments(context, arguments)
    remove_emails = optional_bool(arguments, "onDestroyRemoveEmails")
    view = await mail_view(context.store)
    old_state = await view.mailbox_state()
    check_if_in_state(arguments, old_state)

    async def change(view: Any, box_id: str, patch: Any) -> dict[str, Any] | None:
        box = view.boxes.get(box_id)
        return set_error("notFound") if box is None else await _update_one(context, view, box, patch)

    async def remove(view: Any, box_id: str) -> dict[str, Any] | None:
        box = view.boxes.get(box_id)
        return set_error("notFound") if box is None else await _destroy_one(context, view, box, remove_emails)

    run = SetRun(context, view, lambda: mail_view(context.store))
    await run.create(create, lambda view, props: _create_one(context, view, props))
    await run.update(update, change)
    await run.destroy(destroy, remove)
    return run.response(old_state, await run.view.mailbox_state())


METHODS = {
    "Mailbox/get": mailbox_get,
    "Mailbox/changes": mailbox_changes,
    "Mailbox/query": mailbox_query,
    "Mailbox/queryChanges": mailbox_query_changes,
    "Mailbox/set": mailbox_set,
}
