"""
JMAP request processing (RFC 8620 section 3), sans-IO.

:func:`parse_request` turns the octets of an API request into a
:class:`JMAPRequest`, or raises :class:`RequestError`: a request-level
error answered with an RFC 7807 problem details object (RFC 8620 section
3.6.1).  :func:`process` runs the method calls of a parsed request in order
through a :class:`txmail.jmap.core.Registry` and returns the Response object
(section 3.4): method errors (section 3.6.2), result references (section
3.7), ``createdIds`` (section 3.3) and ``#creationId`` references.

The session object (section 2), the core capability with ``Core/echo``
(section 4), account ids and the per-user concurrency counter live here
too: everything the twisted.web adapter (:mod:`txmail.web.resource`) needs
that does no I/O.

Implementation notes
--------------------
* A method may return a ``dict``, or anything awaitable (a Deferred, a
  coroutine) that gives one: :func:`process` is a coroutine that awaits it,
  so this module imports nothing from Twisted.
* ``#creationId`` references are resolved by the endpoint where RFC 8620
  section 5 puts ids in standard arguments: the ``ids`` of ``/get``, the
  keys of ``update`` and the ``destroy`` list of ``/set``.  Foreign keys
  inside created or updated objects (``mailboxIds``, ``parentId``) are the
  methods' to resolve, through :attr:`CallContext.created_ids`.  An unknown
  creation id is left as it is (``#x`` is no valid id: ``notFound``).
* JSON is parsed strictly (I-JSON, RFC 7493): UTF-8, no duplicate member
  names, no ``NaN``/``Infinity``; nesting deep enough to exhaust the parser
  is ``notJSON``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from txmail.jmap.core import CORE, CallContext, Capability, Limits, MethodError, Registry

__all__ = [
    "JMAPRequest",
    "RequestCounter",
    "RequestError",
    "account_id",
    "check_content_type",
    "core_capability",
    "evaluate_pointer",
    "parse_request",
    "process",
    "session_object",
]

ERROR_PREFIX = "urn:ietf:params:jmap:error:"
PROBLEM_TYPE = "application/problem+json"

#: Longest JSON Pointer (in reference tokens) a result reference may use.
MAX_POINTER_TOKENS = 64

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")

#: The characters of a JMAP Id (RFC 8620 section 1.2).
ID_RE = re.compile(r"[A-Za-z0-9_-]{1,255}")


class RequestError(Exception):
    """
    A request-level error (RFC 8620 section 3.6.1): the whole request is
    refused with an RFC 7807 problem details object.

    Args:
        type: the error type; a short JMAP name (``notJSON``) is prefixed
            with ``urn:ietf:params:jmap:error:``.
        status: the HTTP status code.
        detail: a human-readable explanation.
        extra: further members (``limit`` for the ``limit`` type).
    """

    def __init__(self, type: str, status: int = 400, detail: str = "", **extra: Any) -> None:
        super().__init__(detail or type)
        self.type = type if ":" in type else ERROR_PREFIX + type
        self.status = status
        self.detail = detail
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        """The problem details object (RFC 7807 section 3)."""
        out: dict[str, Any] = {"type": self.type, "status": self.status}
        if self.detail:
            out["detail"] = self.detail
        out.update(self.extra)
        return out


def limit_error(limit: str, detail: str) -> RequestError:
    """The ``limit`` error of the core capability's limit named *limit* (RFC 8620 section 3.6.1)."""
    return RequestError("limit", 400, detail, limit=limit)


@dataclass(frozen=True, slots=True)
class JMAPRequest:
    """
    A parsed Request object (RFC 8620 section 3.3).

    Attributes:
        using: the capability URNs the client uses.
        method_calls: ``(name, arguments, call id)`` of each call, in order.
        created_ids: the client's ``createdIds``, or ``None`` when it sent
            none (then the response has none either).
    """

    using: frozenset[str]
    method_calls: tuple[tuple[str, dict[str, Any], str], ...]
    created_ids: dict[str, str] | None = None


def check_content_type(value: str | None) -> None:
    """
    Refuse a request whose ``Content-Type`` is not ``application/json``
    (parameters such as ``charset=utf-8`` are allowed).

    Raises:
        RequestError: ``notJSON``.
    """
    media = (value or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise RequestError("notJSON", 400, "The content type of the request was not application/json.")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member name {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not I-JSON")


def _finite(text: str) -> float:
    # A number beyond the range of a double (1e400) parses as infinity, which
    # the response would then carry as ``Infinity``, no JSON at all.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is beyond the range of I-JSON numbers")
    return value


def parse_json(body: bytes) -> Any:
    """
    Parse *body* as I-JSON (RFC 7493).

    Raises:
        ValueError: not UTF-8, not JSON, duplicate names, NaN/Infinity (or a
            number that overflows to it), or nested too deeply.
    """
    try:
        text = body.decode("utf-8")
        document = json.loads(
            text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant, parse_float=_finite
        )
        if _SURROGATE_ESCAPE.search(text):
            # An escaped surrogate: only a pair is a character (RFC 7493 section 2.1).
            json.dumps(document, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeEncodeError:
        raise ValueError("a lone surrogate") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    return document


def parse_request(body: bytes, registry: Registry, limits: Limits) -> JMAPRequest:
    """
    Parse and check the body of an API request (RFC 8620 section 3.3).

    Checks, in order: ``maxSizeRequest``, I-JSON (``notJSON``), the Request
    type signature (``notRequest``), every URN of ``using`` is served
    (``unknownCapability``), ``maxCallsInRequest``.

    Raises:
        RequestError: the request-level error to answer with.
    """
    if len(body) > limits.max_size_request:
        raise limit_error("maxSizeRequest", f"The request is larger than {limits.max_size_request} octets.")
    try:
        document = parse_json(body)
    except ValueError as e:
        raise RequestError("notJSON", 400, f"The request did not parse as I-JSON: {e}.") from None
    if not isinstance(document, dict):
        raise RequestError("notRequest", 400, "The request is not a JSON object.")
    using = document.get("using")
    calls = document.get("methodCalls")
    created = document.get("createdIds")
    if not isinstance(using, list) or not all(isinstance(u, str) for u in using):
        raise RequestError("notRequest", 400, "using must be an array of strings.")
    if not isinstance(calls, list):
        raise RequestError("notRequest", 400, "methodCalls must be an array of invocations.")
    method_calls = []
    for call in calls:
        if (
            not isinstance(call, list)
            or len(call) != 3
            or not isinstance(call[0], str)
            or not isinstance(call[1], dict)
            or not isinstance(call[2], str)
        ):
            raise RequestError(
                "notRequest", 400, "Each invocation must be [name, arguments object, method call id]."
            )
        method_calls.append((call[0], call[1], call[2]))
    if created is not None and (
        not isinstance(created, dict) or not all(isinstance(v, str) for v in created.values())
    ):
        raise RequestError("notRequest", 400, "createdIds must map creation ids to ids.")
    unknown = [urn for urn in using if urn not in registry.capabilities]
    if unknown:
        raise RequestError(
            "unknownCapability", 400, f"The request uses unsupported capabilities: {', '.join(unknown)}."
        )
    if len(method_calls) > limits.max_calls_in_request:
        raise limit_error(
            "maxCallsInRequest", f"The request has more than {limits.max_calls_in_request} method calls."
        )
    return JMAPRequest(frozenset(using), tuple(method_calls), dict(created) if created is not None else None)


# -- result references (RFC 8620 section 3.7) --


class _PointerError(Exception):
    pass


def _pointer_tokens(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _PointerError(f"{path!r} is not a JSON Pointer")
    tokens = path[1:].split("/")
    if len(tokens) > MAX_POINTER_TOKENS:
        raise _PointerError("the path is too long")
    return [token.replace("~1", "/").replace("~0", "~") for token in tokens]


def _evaluate(value: Any, tokens: list[str], at: int) -> Any:
    while at < len(tokens):
        token = tokens[at]
        if isinstance(value, list):
            if token == "*":
                out: list[Any] = []
                for item in value:
                    result = _evaluate(item, tokens, at + 1)
                    if isinstance(result, list):
                        out.extend(result)
                    else:
                        out.append(result)
                return out
            if not (token == "0" or (token.isdigit() and token.isascii() and token[0] != "0")):
                raise _PointerError(f"{token!r} is not an array index")
            index = int(token)
            if index >= len(value):
                raise _PointerError(f"index {index} is past the end of the array")
            value = value[index]
        elif isinstance(value, dict):
            if token not in value:
                raise _PointerError(f"no member {token!r}")
            value = value[token]
        else:
            raise _PointerError(f"{token!r} goes into a value that is neither an object nor an array")
        at += 1
    return value


def evaluate_pointer(document: Any, path: str) -> Any:
    """
    Evaluate the JSON Pointer *path* (RFC 6901) on *document*, with RFC 8620
    section 3.7's extension: on an array, the token ``*`` applies the rest of
    the pointer to every item and gives the results in a new array, the
    items of results that are arrays themselves added one by one (flattened).

    Raises:
        ValueError: the path is malformed or names nothing.
    """
    try:
        return _evaluate(document, _pointer_tokens(path), 0)
    except _PointerError as e:
        raise ValueError(str(e)) from None


def resolve_references(arguments: dict[str, Any], responses: list[list[Any]]) -> dict[str, Any]:
    """
    Replace each ``#name`` argument (a ResultReference) by the value it
    names in the earlier *responses* (RFC 8620 section 3.7).

    Raises:
        MethodError: ``invalidArguments`` when both ``name`` and ``#name``
            are present; ``invalidResultReference`` when a reference is
            malformed or does not resolve.
    """
    if not any(key.startswith("#") for key in arguments):
        return arguments
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if not key.startswith("#"):
            out[key] = value
            continue
        name = key[1:]
        if name in arguments:
            raise MethodError("invalidArguments", f"both {name} and #{name} are given", arguments=[name])
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("resultOf"), str)
            or not isinstance(value.get("name"), str)
            or not isinstance(value.get("path"), str)
        ):
            raise MethodError("invalidResultReference", f"#{name} is not a ResultReference")
        response = next((r for r in responses if r[2] == value["resultOf"]), None)
        if response is None:
            raise MethodError(
                "invalidResultReference", f"no earlier response has the call id {value['resultOf']!r}"
            )
        if response[0] != value["name"]:
            raise MethodError(
                "invalidResultReference",
                f"the response of {value['resultOf']!r} is {response[0]}, not {value['name']}",
            )
        try:
            out[name] = evaluate_pointer(response[1], value["path"])
        except ValueError as e:
            raise MethodError("invalidResultReference", f"#{name}: {e}") from None
    return out


def _creation_id(value: Any, created_ids: Mapping[str, str]) -> Any:
    if isinstance(value, str) and value.startswith("#"):
        return created_ids.get(value[1:], value)
    return value


def resolve_creation_ids(arguments: dict[str, Any], created_ids: Mapping[str, str]) -> dict[str, Any]:
    """
    Replace ``#creationId`` references by the ids created earlier in the
    request (RFC 8620 sections 3.3 and 5.3) in ``ids``, ``destroy`` and the
    keys of ``update``; unknown ones are left as they are.
    """
    if not created_ids:
        return arguments
    out = dict(arguments)
    for name in ("ids", "destroy"):
        if isinstance(out.get(name), list):
            out[name] = [_creation_id(v, created_ids) for v in out[name]]
    if isinstance(out.get("update"), dict):
        out["update"] = {_creation_id(k, created_ids): v for k, v in out["update"].items()}
    return out


# -- processing --


def _error(error: MethodError, call_id: str) -> list[Any]:
    return ["error", error.to_json(), call_id]


async def process(
    request: JMAPRequest,
    registry: Registry,
    context: CallContext,
    *,
    session_state: str,
    on_failure: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """
    Run the calls of *request* in order (RFC 8620 section 3.3) and return
    the Response object (section 3.4).

    Args:
        request: the parsed request.
        registry: the capabilities served.
        context: the user's context; each call gets a copy sharing its
            ``created_ids`` (seeded with the request's ``createdIds``), with
            ``using`` set to the request's.
        session_state: the session resource's current ``state``.
        on_failure: called with the method name, inside the ``except``
            block, when a method raises something other than a
            :class:`MethodError` (the adapter logs the failure); the call is
            answered ``serverFail``.
    """
    created_ids: dict[str, str] = dict(request.created_ids or {})
    base = dataclasses.replace(context, using=request.using, created_ids=created_ids, extra_responses=[])
    responses: list[list[Any]] = []
    for name, arguments, call_id in request.method_calls:
        call = dataclasses.replace(base, extra_responses=[])
        entry = registry.method(name)
        if entry is None or entry[0] not in request.using:
            responses.append(_error(MethodError("unknownMethod", f"{name} is not a method here"), call_id))
            continue
        _, method = entry
        try:
            resolved = resolve_references(arguments, responses)
            resolved = resolve_creation_ids(resolved, created_ids)
            result = method(call, resolved)
            if inspect.isawaitable(result):
                result = await result
            if not isinstance(result, dict):
                raise TypeError(f"{name} returned {type(result).__name__}, not a dict")
        except MethodError as e:
            responses.append(_error(e, call_id))
            continue
        except Exception:
            if on_failure is not None:
                on_failure(name)
            responses.append(_error(MethodError("serverFail", "the method failed"), call_id))
            continue
        responses.append([name, result, call_id])
        for extra_name, extra_arguments in call.extra_responses:
            responses.append([extra_name, extra_arguments, call_id])
    out: dict[str, Any] = {"methodResponses": responses, "sessionState": session_state}
    if request.created_ids is not None:
        out["createdIds"] = created_ids
    return out


class RequestCounter:
    """
    Counts each user's requests in progress, to enforce a per-user limit
    (``maxConcurrentRequests``, ``maxConcurrentUpload``).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._counts: dict[str, int] = {}

    def acquire(self, user: str) -> bool:
        """Count one more request of *user*; ``False`` (and not counted) when at the limit."""
        count = self._counts.get(user, 0)
        if count >= self.limit:
            return False
        self._counts[user] = count + 1
        return True

    def release(self, user: str) -> None:
        """One request of *user* is done."""
        count = self._counts.get(user, 0) - 1
        if count > 0:
            self._counts[user] = count
        else:
            self._counts.pop(user, None)

    def count(self, user: str) -> int:
        """How many requests of *user* are in progress."""
        return self._counts.get(user, 0)


# -- the core capability (RFC 8620 section 4) --


def echo(context: CallContext, arguments: dict[str, Any]) -> dict[str, Any]:
    """``Core/echo`` (RFC 8620 section 4): the arguments, unchanged."""
    return arguments


def core_capability(limits: Limits) -> Capability:
    """The ``urn:ietf:params:jmap:core`` capability: its limits and ``Core/echo``."""
    return Capability(urn=CORE, session=limits.to_json(), methods={"Core/echo": echo})


# -- the session (RFC 8620 section 2) --


def account_id(user: str) -> str:
    """
    The JMAP account id of *user*: ``"a"`` and 24 hexadecimal digits of the
    SHA-256 of the canonical user name.  It is stable (across restarts and
    nodes) and says nothing about the user; knowing it gives nothing either,
    since every request is checked against the account of the authenticated
    user (another id is ``accountNotFound`` or 404).
    """
    digest = hashlib.sha256(b"txmail-jmap-account\0" + user.encode("utf-8")).hexdigest()
    return "a" + digest[:24]


@dataclass(frozen=True, slots=True)
class SessionURLs:
    """The URL templates of the session resource (RFC 8620 section 2)."""

    api: str
    download: str
    upload: str
    event_source: str

    @classmethod
    def under(cls, base: str) -> SessionURLs:
        """The URLs of the JMAP resources under *base* (``https://host/jmap``)."""
        base = base.rstrip("/")
        return cls(
            api=f"{base}/api",
            download=f"{base}/download/{{accountId}}/{{blobId}}/{{name}}?accept={{type}}",
            upload=f"{base}/upload/{{accountId}}/",
            event_source=f"{base}/eventsource?types={{types}}&closeafter={{closeafter}}&ping={{ping}}",
        )


def session_object(capabilities: Iterable[Capability], user: str, urls: SessionURLs) -> dict[str, Any]:
    """
    The session object of *user* (RFC 8620 section 2.1): one personal,
    writable account, named after the user, with the account capabilities
    of each capability that has one; ``state`` changes when anything else in
    it does.
    """
    capabilities = list(capabilities)
    account = account_id(user)
    account_capabilities = {c.urn: c.account(user) for c in capabilities if c.account is not None}
    session: dict[str, Any] = {
        "capabilities": {c.urn: c.session for c in capabilities},
        "accounts": {
            account: {
                "name": user,
                "isPersonal": True,
                "isReadOnly": False,
                "accountCapabilities": account_capabilities,
            }
        },
        "primaryAccounts": {urn: account for urn in account_capabilities if _primary(capabilities, urn)},
        "username": user,
        "apiUrl": urls.api,
        "downloadUrl": urls.download,
        "uploadUrl": urls.upload,
        "eventSourceUrl": urls.event_source,
    }
    session["state"] = session_state(session)
    return session


def _primary(capabilities: list[Capability], urn: str) -> bool:
    return any(c.urn == urn and c.primary for c in capabilities)


def session_state(session: Mapping[str, Any]) -> str:
    """The ``state`` of a session object: a digest of everything but the URLs and the state."""
    stable = {
        k: v for k, v in session.items() if k in ("capabilities", "accounts", "primaryAccounts", "username")
    }
    text = json.dumps(stable, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
