"""
Argument checks shared by the JMAP mail methods: the standard ``/get``,
``/changes`` and ``/set`` arguments of RFC 8620 section 5, checked the same
way everywhere, so that bad input is always a method error naming the
offending argument (``invalidArguments``) or a limit
(``requestTooLarge``), and never an exception.

This module is sans-IO.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from txmail.jmap.core import CallContext, MethodError

__all__ = [
    "SetRun",
    "check_filter",
    "check_if_in_state",
    "get_ids",
    "invalid",
    "max_changes",
    "optional_bool",
    "properties",
    "resolve_id",
    "set_arguments",
    "unsigned",
]


def invalid(argument: str, description: str) -> MethodError:
    """``invalidArguments`` naming *argument*."""
    return MethodError("invalidArguments", description, arguments=[argument])


def unsigned(arguments: dict[str, Any], name: str, default: int | None = None) -> int | None:
    """An ``UnsignedInt`` argument, or *default* when absent or ``null``."""
    value = arguments.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > 2**53 - 1:
        raise invalid(name, f"{name} must be an unsigned integer")
    return value


def optional_bool(arguments: dict[str, Any], name: str, default: bool = False) -> bool:
    value = arguments.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(name, f"{name} must be a boolean")
    return value


def resolve_id(context: CallContext, value: Any) -> Any:
    """An id, with a ``#creationId`` reference (RFC 8620 section 5.3) resolved; unknown ones stay as they are."""
    if isinstance(value, str) and value.startswith("#"):
        return context.created_ids.get(value[1:], value)
    return value


def get_ids(context: CallContext, arguments: dict[str, Any]) -> list[str] | None:
    """The ``ids`` of a ``/get`` (RFC 8620 section 5.1), ``None`` for all, within ``maxObjectsInGet``."""
    context.check_account(arguments)
    ids = arguments.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise invalid("ids", "ids must be a list of ids")
    if len(ids) > context.limits.max_objects_in_get:
        raise MethodError("requestTooLarge", f"more than {context.limits.max_objects_in_get} ids")
    out = []
    for i in ids:
        resolved = resolve_id(context, i)
        if resolved not in out:
            out.append(resolved)
    return out


def properties(arguments: dict[str, Any], known: Iterable[str], default: Iterable[str]) -> list[str]:
    """The ``properties`` of a ``/get``: *default* when absent; ``id`` always; unknown ones refused."""
    wanted = arguments.get("properties")
    if wanted is None:
        out = list(default)
    else:
        if not isinstance(wanted, list) or not all(isinstance(p, str) for p in wanted):
            raise invalid("properties", "properties must be a list of names")
        known = set(known)
        bad = [p for p in wanted if p not in known]
        if bad:
            raise invalid("properties", f"unknown properties: {', '.join(bad)}")
        out = list(dict.fromkeys(wanted))
    if "id" not in out:
        out.insert(0, "id")
    return out


def max_changes(arguments: dict[str, Any]) -> int | None:
    """``maxChanges`` of a ``/changes``: a positive integer or ``null`` (RFC 8620 section 5.2)."""
    value = unsigned(arguments, "maxChanges")
    if value == 0:
        raise invalid("maxChanges", "maxChanges must be greater than 0")
    return value


def set_arguments(
    context: CallContext, arguments: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The ``create``, ``update`` and ``destroy`` of a ``/set`` (RFC 8620 section 5.3), within ``maxObjectsInSet``."""
    context.check_account(arguments)
    create = arguments.get("create") or {}
    update = arguments.get("update") or {}
    destroy = arguments.get("destroy") or []
    if not isinstance(create, dict) or not all(isinstance(v, dict) for v in create.values()):
        raise invalid("create", "create must map creation ids to objects")
    if not isinstance(update, dict) or not all(isinstance(v, dict) for v in update.values()):
        raise invalid("update", "update must map ids to patch objects")
    if not isinstance(destroy, list) or not all(isinstance(v, str) for v in destroy):
        raise invalid("destroy", "destroy must be a list of ids")
    if len(create) + len(update) + len(destroy) > context.limits.max_objects_in_set:
        raise MethodError("requestTooLarge", f"more than {context.limits.max_objects_in_set} objects")
    destroy = [resolve_id(context, i) for i in destroy]
    update = {resolve_id(context, k): v for k, v in update.items()}
    return create, update, destroy


def check_filter(filter: Any, condition: Callable[[dict[str, Any]], Any], depth: int = 0) -> Any:
    """
    A ``/query`` filter (RFC 8620 section 5.5): ``None``, a FilterOperator
    of filters, or a FilterCondition, which *condition* checks (raising a
    method error) and answers as the query will use it; the operators are
    kept, each of their conditions checked in turn.  Anything else, or
    operators nested more than 50 deep, is ``unsupportedFilter``.
    """
    if filter is None:
        return None
    if not isinstance(filter, dict) or depth > 50:
        raise MethodError("unsupportedFilter", "a filter must be an object")
    if "operator" not in filter:
        return condition(filter)
    conditions = filter.get("conditions")
    if (
        filter["operator"] not in ("AND", "OR", "NOT")
        or not isinstance(conditions, list)
        or set(filter) - {"operator", "conditions"}
    ):
        raise MethodError("unsupportedFilter", "bad FilterOperator")
    return {
        "operator": filter["operator"],
        "conditions": [check_filter(c, condition, depth + 1) for c in conditions],
    }


def check_if_in_state(arguments: dict[str, Any], state: str) -> None:
    """A ``/set``'s ``ifInState`` other than the current *state* is ``stateMismatch`` (RFC 8620 section 5.3)."""
    if_in_state = arguments.get("ifInState")
    if if_in_state is not None and if_in_state != state:
        raise MethodError("stateMismatch")


class SetRun:
    """
    One ``/set``'s operations (RFC 8620 section 5.3), each in turn, with the
    account's view read again (*reload*) after each, and their outcomes
    gathered for the response: ``created``/``notCreated`` (creation ids
    recorded in the request's ``created_ids``), ``updated``/``notUpdated``,
    ``destroyed``/``notDestroyed``.
    """

    def __init__(self, context: CallContext, view: Any, reload: Callable[[], Awaitable[Any]]) -> None:
        self.context = context
        #: The account's view as the last operation left it.
        self.view = view
        self._reload = reload
        self.created: dict[str, Any] = {}
        self.not_created: dict[str, Any] = {}
        self.updated: dict[str, Any] = {}
        self.not_updated: dict[str, Any] = {}
        self.destroyed: list[str] = []
        self.not_destroyed: dict[str, Any] = {}

    async def create(
        self, items: dict[str, Any], make: Callable[[Any, Any], Awaitable[dict[str, Any]]]
    ) -> None:
        """``make(view, properties)`` for each creation: the new object, or a SetError (it has a ``type``)."""
        for creation_id, props in items.items():
            result = await make(self.view, props)
            if "type" in result:
                self.not_created[creation_id] = result
            else:
                self.created[creation_id] = result
                self.context.created_ids[creation_id] = result["id"]
            self.view = await self._reload()

    async def update(
        self, items: dict[str, Any], change: Callable[[Any, str, Any], Awaitable[dict[str, Any] | None]]
    ) -> None:
        """``change(view, id, patch)`` for each update: ``None``, or a SetError."""
        for object_id, patch in items.items():
            error = await change(self.view, object_id, patch)
            if error is None:
                self.updated[object_id] = None
            else:
                self.not_updated[object_id] = error
            self.view = await self._reload()

    async def destroy(
        self, ids: list[str], remove: Callable[[Any, str], Awaitable[dict[str, Any] | None]]
    ) -> None:
        """``remove(view, id)`` for each id: ``None``, or a SetError."""
        for object_id in ids:
            error = await remove(self.view, object_id)
            if error is None:
                self.destroyed.append(object_id)
            else:
                self.not_destroyed[object_id] = error
            self.view = await self._reload()

    def response(self, old_state: str, new_state: str) -> dict[str, Any]:
        """The ``/set`` response arguments."""
        return {
            "accountId": self.context.account_id,
            "oldState": old_state,
            "newState": new_state,
            "created": self.created or None,
            "updated": self.updated or None,
            "destroyed": self.destroyed or None,
            "notCreated": self.not_created or None,
            "notUpdated": self.not_updated or None,
            "notDestroyed": self.not_destroyed or None,
        }
