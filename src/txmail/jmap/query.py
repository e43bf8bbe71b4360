"""
``Email/query`` and ``Email/queryChanges`` (RFC 8621 sections 4.4 and 4.5).

* Filters (section 4.4.1): ``inMailbox``, ``inMailboxOtherThan``,
  ``before``, ``after``, ``minSize``, ``maxSize`` and the keyword
  conditions read the listings (no message is read); ``from``, ``to``,
  ``cc``, ``bcc`` and ``subject`` the header columns
  (:class:`txmail.interfaces.IHeaderColumns`), ``header`` and
  ``hasAttachment`` the cached metadata; ``text`` and ``body`` read the
  messages the other conditions left.  Text is compared case-insensitively,
  as a substring, after RFC 2047 decoding.
* Sorts (section 4.4.2): ``receivedAt`` (the internal date), ``size``,
  ``from`` and ``to`` (the first address's name, else its address),
  ``subject`` (the base subject of RFC 5256 section 2.1), ``sentAt``
  (``Date:``, else the internal date), ``hasKeyword``,
  ``allInThreadHaveKeyword`` and ``someInThreadHaveKeyword``; ties are
  broken by the internal date then the id, newest first, so the order is
  total and stable.
* ``collapseThreads`` keeps the first Email of each Thread in that order.
* The ids of one query are kept per Email state, so paging through the
  results of an unchanged account costs no new sort.
* ``Email/queryChanges`` is computed from ``Email/changes``: every Email
  changed since the query state is removed (a superset, which section 5.6
  of RFC 8620 allows), with, when the query depends on a Thread's other
  Emails (``collapseThreads`` or the thread keyword conditions), every
  Email of their Threads; those that match now are added at their index.

This module is sans-IO apart from the Deferreds the store returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from txmail.imap.search import _decode_field
from txmail.imap.thread import base_subject
from txmail.jmap import body as bodies
from txmail.jmap.common import check_filter, invalid, max_changes, optional_bool, unsigned
from txmail.jmap.core import CallContext, MethodError
from txmail.jmap.email import has_attachment, keyword_to_flag
from txmail.jmap.mailbox import window
from txmail.jmap.state import MailView, email_changes, mail_view
from txmail.model import SEEN

__all__ = ["METHODS"]

_KEYWORD_CONDITIONS = (
    "allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword", "hasKeyword", "notKeyword",
)  # fmt: skip
_TEXT_CONDITIONS = ("from", "to", "cc", "bcc", "subject")
_CONDITIONS = frozenset(
    ("inMailbox", "inMailboxOtherThan", "before", "after", "minSize", "maxSize", "hasAttachment", "text",
     "body", "header", *_KEYWORD_CONDITIONS, *_TEXT_CONDITIONS)
)  # fmt: skip
_THREAD_SORTS = ("allInThreadHaveKeyword", "someInThreadHaveKeyword")
_SORTS = frozenset(("receivedAt", "size", "from", "to", "subject", "sentAt", "hasKeyword", *_THREAD_SORTS))
#: Most query result sets kept per account (each one a list of ids).
_KEPT = 16


def _unsupported(description: str) -> MethodError:
    return MethodError("unsupportedFilter", description)


def _check_filter(filter: Any) -> Any:
    """Check a filter (section 4.4.1), with keywords as IMAP flags and dates as epoch seconds."""
    return check_filter(filter, _check_condition)


def _check_condition(filter: dict[str, Any]) -> Any:
    unknown = set(filter) - _CONDITIONS
    if unknown:
        raise _unsupported(f"unknown conditions: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {}
    for key, value in filter.items():
        if key == "inMailbox":
            if not isinstance(value, str):
                raise _unsupported("inMailbox must be an id")
        elif key == "inMailboxOtherThan":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise _unsupported("inMailboxOtherThan must be a list of ids")
            value = frozenset(value)
        elif key in ("before", "after"):
            value = bodies.parse_utc_date(value)
            if value is None:
                raise _unsupported(f"{key} must be a UTCDate")
        elif key in ("minSize", "maxSize"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise _unsupported(f"{key} must be an unsigned integer")
        elif key in _KEYWORD_CONDITIONS:
            try:
                value = keyword_to_flag(value) if isinstance(value, str) else None
            except ValueError:
                value = None
            if value is None:
                raise _unsupported(f"{key} must be a keyword")
        elif key == "hasAttachment":
            if not isinstance(value, bool):
                raise _unsupported("hasAttachment must be a boolean")
        elif key == "header":
            if (
                not isinstance(value, list)
                or not 1 <= len(value) <= 2
                or not all(isinstance(v, str) for v in value)
                or not value[0]
            ):
                raise _unsupported("header must be [name] or [name, value]")
            value = (value[0].lower(), value[1].casefold() if len(value) == 2 else None)
        elif not isinstance(value, str):
            raise _unsupported(f"{key} must be a string")
        else:
            value = value.casefold()
        out[key] = value
    return out


def _check_sort(sort: Any) -> list[tuple[str, bool, str | None]]:
    if sort is None:
        return [("receivedAt", False, None)]
    if not isinstance(sort, list):
        raise invalid("sort", "sort must be a list of comparators")
    out = []
    for comparator in sort:
        prop = comparator.get("property") if isinstance(comparator, dict) else None
        if not isinstance(prop, str) or prop not in _SORTS:
            raise MethodError("unsupportedSort", "not a sort of RFC 8621 section 4.4.2")
        ascending = comparator.get("isAscending", True)
        if not isinstance(ascending, bool):
            raise invalid("sort", "isAscending must be a boolean")
        collation = comparator.get("collation")
        if collation is not None and collation not in ("i;ascii-casemap", "i;ascii-numeric", "i;octet"):
            raise MethodError("unsupportedSort", f"unknown collation {collation}")
        keyword = None
        if comparator["property"] in ("hasKeyword", *_THREAD_SORTS):
            try:
                keyword = keyword_to_flag(
                    comparator.get("keyword")
                )  # a non-str keyword raises ValueError, which is caught
            except (ValueError, AttributeError):
                raise MethodError("unsupportedSort", "a keyword sort needs a keyword") from None
        out.append((comparator["property"], ascending, keyword))
    return out


def _uses_threads(filter: Any) -> bool:
    if filter is None:
        return False
    if "operator" in filter:
        return any(_uses_threads(c) for c in filter["conditions"])
    return any(
        k in filter for k in ("allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword")
    )


def _wants(filter: Any, keys: tuple[str, ...]) -> bool:
    if filter is None:
        return False
    if "operator" in filter:
        return any(_wants(c, keys) for c in filter["conditions"])
    return any(k in filter for k in keys)


class _Facts:
    """What the conditions and sorts read, gathered once per query for the Emails they apply to."""

    def __init__(self, view: MailView) -> None:
        self.view = view
        self.threads: dict[str, str] = {}
        self.thread_members: dict[str, list[str]] = {}
        self.columns: dict[str, tuple[str, ...]] = {}
        self.metadata: dict[str, Any] = {}
        self.texts: dict[str, str] = {}

    def column(self, eid: str, name: str) -> str | None:
        cols = self.columns.get(eid, ())
        for i in range(0, len(cols) - 1, 2):
            if cols[i] == name:
                return cols[i + 1]
        return None

    def decoded(self, eid: str, name: str) -> str:
        cols = self.columns.get(eid, ())
        return " ".join(
            _decode_field(cols[i + 1]) for i in range(0, len(cols) - 1, 2) if cols[i] == name
        ).casefold()


def _in_thread(facts: _Facts, eid: str, flag: str) -> tuple[bool, bool]:
    """(all, some) Emails of *eid*'s Thread have *flag*."""
    members = facts.thread_members.get(facts.threads.get(eid, ""), [eid])
    has = [flag in facts.view.keywords(m) for m in members]
    return all(has), any(has)


def _match(facts: _Facts, eid: str, filter: Any) -> bool:
    if filter is None:
        return True
    if "operator" in filter:
        results = (_match(facts, eid, c) for c in filter["conditions"])
        if filter["operator"] == "AND":
            return all(results)
        if filter["operator"] == "OR":
            return any(results)
        return not any(results)
    view = facts.view
    copies = view.emails[eid]
    info = copies[0][1]
    for key, value in filter.items():
        if key == "inMailbox":
            if not any(box.id == value for box, _ in copies):
                return False
        elif key == "inMailboxOtherThan":
            if all(box.id in value for box, _ in copies):
                return False
        elif key == "before":
            if not info.internal_date < value:
                return False
        elif key == "after":
            if not info.internal_date >= value:
                return False
        elif key == "minSize":
            if info.size < value:
                return False
        elif key == "maxSize":
            if info.size >= value:
                return False
        elif key == "hasKeyword":
            if value not in view.keywords(eid):
                return False
        elif key == "notKeyword":
            if value in view.keywords(eid):
                return False
        elif key in ("allInThreadHaveKeyword", "someInThreadHaveKeyword", "noneInThreadHaveKeyword"):
            all_, some = _in_thread(facts, eid, value)
            if key == "allInThreadHaveKeyword" and not all_:
                return False
            if key == "someInThreadHaveKeyword" and not some:
                return False
            if key == "noneInThreadHaveKeyword" and some:
                return False
        elif key in _TEXT_CONDITIONS:
            if value not in facts.decoded(eid, key):
                return False
        elif key == "header":
            name, wanted = value
            md = facts.metadata.get(eid)
            found = [v for n, v in (md.headers if md else ()) if n.strip(" \t").lower() == name]
            if not found or (
                wanted is not None and not any(wanted in bodies.as_text(v).casefold() for v in found)
            ):
                return False
        elif key == "hasAttachment":
            if has_attachment(facts.metadata.get(eid)) != value:
                return False
        elif key == "body":
            if value not in facts.texts.get(eid, ""):
                return False
        elif key == "text":
            haystack = (
                " ".join(facts.decoded(eid, n) for n in _TEXT_CONDITIONS) + " " + facts.texts.get(eid, "")
            )
            if value not in haystack:
                return False
    return True


async def _gather(
    view: MailView, facts: _Facts, ids: list[str], filter: Any, sort: list[Any], collapse: bool
) -> None:
    if collapse or _uses_threads(filter) or any(s[0] in _THREAD_SORTS for s in sort):
        facts.threads = await view.thread_ids()
        for eid in reversed(view.by_date()):
            facts.thread_members.setdefault(facts.threads[eid], []).append(eid)
    if _wants(filter, ("text", *_TEXT_CONDITIONS)) or any(
        s[0] in ("from", "to", "subject", "sentAt") for s in sort
    ):
        facts.columns = await view.columns(ids)
    if _wants(filter, ("header", "hasAttachment")):
        from txmail.jmap.email import _metadata

        facts.metadata = await _metadata(view, ids)
    if _wants(filter, ("text", "body")):
        from txmail.jmap.email import read_email
        from txmail.mime import _decode_text, text_parts

        for eid in ids:
            message = await read_email(view, eid)
            pieces = []
            for kind, value in text_parts(message or b""):
                if kind == "text":
                    pieces.append(_decode_text(*value))
            facts.texts[eid] = " ".join(pieces).casefold()


def _sort_key(facts: _Facts, sort: list[tuple[str, bool, str | None]]) -> Callable[[str], Any]:
    view = facts.view

    def first_address(eid: str, name: str) -> str:
        raw = facts.column(eid, name)
        if raw is None:
            return ""
        addresses = bodies.as_addresses(raw)
        if not addresses:
            return ""
        return (addresses[0]["name"] or addresses[0]["email"] or "").casefold()

    def value(eid: str, prop: str, keyword: str | None) -> Any:
        info = view.emails[eid][0][1]
        if prop == "receivedAt":
            return info.internal_date
        if prop == "size":
            return info.size
        if prop in ("from", "to"):
            return first_address(eid, prop)
        if prop == "subject":
            return base_subject(facts.column(eid, "subject"))[0].casefold()
        if prop == "sentAt":
            sent = bodies.sent_timestamp(facts.column(eid, "date"))
            return info.internal_date if sent is None else sent
        if prop == "hasKeyword":
            return keyword in view.keywords(eid)
        all_, some = _in_thread(facts, eid, keyword or SEEN)
        return all_ if prop == "allInThreadHaveKeyword" else some

    def key(eid: str) -> tuple[Any, ...]:
        out: list[Any] = []
        for prop, ascending, keyword in sort:
            v = value(eid, prop, keyword)
            out.append(_Reverse(v) if not ascending else v)
        info = view.emails[eid][0][1]
        out.append(_Reverse((info.internal_date, eid)))
        return tuple(out)

    return key


class _Reverse:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reverse) -> bool:
        return other.value < self.value  # type: ignore[no-any-return]  # comparable values of one property

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reverse) and self.value == other.value

    def __hash__(self) -> int:  # pragma: no cover - not hashed
        return hash(self.value)


def _candidates(view: MailView, filter: Any) -> list[str]:
    """The Emails a top-level ``inMailbox`` condition leaves (every one otherwise), newest first."""
    if filter is not None and "operator" not in filter and "inMailbox" in filter:
        box = view.boxes.get(filter["inMailbox"])
        if box is None:
            return []
        members = {i.email_id for i in box.infos}
        return [e for e in view.by_date() if e in members]
    return view.by_date()


async def run_query(view: MailView, filter: Any, sort: list[Any], collapse: bool) -> list[str]:
    """Every id of a query's results, in order (kept per view)."""
    cache_key = json.dumps([filter, sort, collapse], default=sorted, sort_keys=True)
    kept = view.queries.get(cache_key)
    if kept is not None:
        return kept
    ids = _candidates(view, filter)
    facts = _Facts(view)
    simple = filter is None or (set(filter) == {"inMailbox"})
    await _gather(view, facts, ids, filter, sort, collapse)
    if not simple:
        ids = [e for e in ids if _match(facts, e, filter)]
    if sort != [("receivedAt", False, None)]:
        ids = sorted(ids, key=_sort_key(facts, sort))
    if collapse:
        seen: set[str] = set()
        out = []
        for eid in ids:
            tid = facts.threads[eid]
            if tid not in seen:
                seen.add(tid)
                out.append(eid)
        ids = out
    if len(view.queries) >= _KEPT:
        view.queries.pop(next(iter(view.queries)))
    view.queries[cache_key] = ids
    return ids


_NEWEST_FIRST = [("receivedAt", False, None)]


def _newest(view: MailView, filter: Any, collapse: bool, count: int) -> list[str]:
    """
    The first *count* results of a query sorted newest first whose filter
    is nothing or ``inMailbox``: the Emails walked from the newest, until
    *count* are found (a webmail's first page reads a few Emails, not all).
    """
    box_id = None if filter is None else filter["inMailbox"]
    threads = view.cache.threads
    emails = view.emails
    seen: set[str] = set()
    out: list[str] = []
    for _, eid in reversed(view.order):
        if len(out) >= count:
            break
        if box_id is not None and not any(c[0].id == box_id for c in emails[eid]):
            continue
        if collapse:
            tid = threads.get(eid, eid)
            if tid in seen:
                continue
            seen.add(tid)
        out.append(eid)
    return out


def _query_arguments(context: CallContext, arguments: dict[str, Any]) -> tuple[Any, list[Any], bool]:
    context.check_account(arguments)
    filter = _check_filter(arguments.get("filter"))
    sort = _check_sort(arguments.get("sort"))
    collapse = optional_bool(arguments, "collapseThreads")
    return filter, sort, collapse


async def email_query(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/query`` (RFC 8621 section 4.4)."""
    filter, sort, collapse = _query_arguments(context, arguments)
    calculate_total = optional_bool(arguments, "calculateTotal")
    view = await mail_view(context.store)
    limit = unsigned(arguments, "limit")
    max_limit = context.limits.max_objects_in_get
    bounded = {**arguments, "limit": min(limit, max_limit) if limit is not None else max_limit}
    start = arguments.get("position") or 0
    if (
        sort == _NEWEST_FIRST
        and (filter is None or set(filter) == {"inMailbox"})
        and not calculate_total
        and arguments.get("anchor") is None
        and isinstance(start, int)
        and not isinstance(start, bool)
        and start >= 0
    ):
        ids = _newest(view, filter, collapse, start + bounded["limit"])
    else:
        ids = await run_query(view, filter, sort, collapse)
    position, page = window(bounded, ids)
    out: dict[str, Any] = {
        "accountId": context.account_id,
        "queryState": view.email_state(),
        "canCalculateChanges": True,
        "position": position,
        "ids": page,
    }
    if limit is None or limit > max_limit:
        out["limit"] = max_limit
    if calculate_total:
        out["total"] = len(ids)
    return out


async def email_query_changes(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Email/queryChanges`` (RFC 8621 section 4.5; RFC 8620 section 5.6)."""
    filter, sort, collapse = _query_arguments(context, arguments)
    limit = max_changes(arguments)
    calculate_total = optional_bool(arguments, "calculateTotal")
    since = arguments.get("sinceQueryState")
    if not isinstance(since, str):
        raise invalid("sinceQueryState", "sinceQueryState must be a state string")
    view = await mail_view(context.store)
    changes = await email_changes(view, since, None)
    changed = set(changes.created) | set(changes.updated) | set(changes.destroyed)
    if collapse or _uses_threads(filter) or any(s[0] in _THREAD_SORTS for s in sort):
        tids = await view.thread_ids()
        known = view.cache.threads
        touched = {known[e] for e in changed if e in known}
        changed |= {e for e, t in tids.items() if t in touched}
    ids = await run_query(view, filter, sort, collapse)
    added = [{"id": e, "index": i} for i, e in enumerate(ids) if e in changed]
    removed = sorted(changed)
    if limit is not None and len(added) + len(removed) > limit:
        raise MethodError("tooManyChanges", f"more than {limit} changes")
    out: dict[str, Any] = {
        "accountId": context.account_id,
        "oldQueryState": since,
        "newQueryState": view.email_state(),
        "removed": removed,
        "added": added,
    }
    if calculate_total:
        out["total"] = len(ids)
    return out


METHODS = {"Email/query": email_query, "Email/queryChanges": email_query_changes}
