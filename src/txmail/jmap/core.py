"""
The contract between the JMAP API endpoint and the methods it dispatches to.

A *capability* (:class:`Capability`) names its URN (RFC 8620 section 2),
what the session resource lists for it (server-wide and per account), its
methods and the data types whose states push reports.  The API endpoint
(:mod:`txmail.web`) checks a request's ``using`` against the registered
capabilities, resolves result references (RFC 8620 section 3.7) and calls
each method as ``method(context, arguments)``:

* *context* is a :class:`CallContext` for the authenticated user;
* *arguments* is the call's argument object with references resolved;
* the method returns its response arguments (a ``dict``), or a Deferred or
  coroutine of them, or raises :class:`MethodError` for a method-level error
  (RFC 8620 section 3.6.2).  Any other exception is logged and answered
  with ``serverFail``.

A method may add further responses (``Email/set`` implied by
``EmailSubmission/set``'s ``onSuccessUpdateEmail``, RFC 8621 section 7.5)
with :meth:`CallContext.add_response`; they follow its own response, with
the same call id.

This module is sans-IO: it imports nothing from Twisted but the type of a
Deferred.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from txmail.interfaces import IMailStore
    from txmail.service import MailServer

__all__ = [
    "CORE",
    "MAIL",
    "SUBMISSION",
    "CallContext",
    "Capability",
    "Limits",
    "Method",
    "MethodError",
    "Registry",
    "set_error",
]

CORE = "urn:ietf:params:jmap:core"
MAIL = "urn:ietf:params:jmap:mail"
SUBMISSION = "urn:ietf:params:jmap:submission"


class MethodError(Exception):
    """
    A method-level error (RFC 8620 section 3.6.2): answered as
    ``["error", {"type": type, ...}, callId]``.

    Args:
        type: the error type (``invalidArguments``, ``unknownMethod``,
            ``accountNotFound``, ``stateMismatch``, ``cannotCalculateChanges``,
            ``requestTooLarge``, ``anchorNotFound``, ``unsupportedFilter``,
            ``unsupportedSort``, ``serverFail``, ``forbidden``, ...).
        description: a human-readable explanation, if any.
        properties: further members of the error object (for example
            ``arguments`` of ``invalidArguments``).
    """

    def __init__(self, type: str, description: str | None = None, **properties: Any) -> None:
        super().__init__(description or type)
        self.type = type
        self.description = description
        self.properties = properties

    def to_json(self) -> dict[str, Any]:
        """The error object of the response."""
        out: dict[str, Any] = {"type": self.type}
        if self.description is not None:
            out["description"] = self.description
        out.update(self.properties)
        return out


def set_error(type: str, description: str | None = None, **properties: Any) -> dict[str, Any]:
    """
    A SetError object (RFC 8620 section 5.3): what ``notCreated``,
    ``notUpdated`` and ``notDestroyed`` hold for one id.
    """
    out: dict[str, Any] = {"type": type}
    if description is not None:
        out["description"] = description
    out.update(properties)
    return out


@dataclass(frozen=True, slots=True)
class Limits:
    """
    The core capability's limits (RFC 8620 section 2): advertised in the
    session resource and enforced by the endpoint (request size, calls,
    concurrency, uploads) and by the methods (``max_objects_in_get`` and
    ``max_objects_in_set``: a method asked for more raises
    ``MethodError("requestTooLarge")``).
    """

    max_size_upload: int = 50_000_000
    max_concurrent_upload: int = 4
    max_size_request: int = 10_000_000
    max_concurrent_requests: int = 4
    max_calls_in_request: int = 16
    max_objects_in_get: int = 500
    max_objects_in_set: int = 500
    collation_algorithms: tuple[str, ...] = ("i;ascii-casemap", "i;ascii-numeric", "i;octet")

    def to_json(self) -> dict[str, Any]:
        """The ``urn:ietf:params:jmap:core`` capability object."""
        return {
            "maxSizeUpload": self.max_size_upload,
            "maxConcurrentUpload": self.max_concurrent_upload,
            "maxSizeRequest": self.max_size_request,
            "maxConcurrentRequests": self.max_concurrent_requests,
            "maxCallsInRequest": self.max_calls_in_request,
            "maxObjectsInGet": self.max_objects_in_get,
            "maxObjectsInSet": self.max_objects_in_set,
            "collationAlgorithms": list(self.collation_algorithms),
        }


@dataclass(slots=True)
class CallContext:
    """
    What a method is called with: one authenticated user's account.

    Attributes:
        user: the canonical user name (what the directory and the store
            provider know).
        account_id: the JMAP account id of *user* (one account a user).
        store: the user's :class:`txmail.interfaces.IMailStore`, opened.
        server: the running :class:`txmail.service.MailServer` (its
            ``directory``, ``stores``, ``queue``, ``router``, ``settings``,
            ``run_blocking``), or ``None`` where a test calls a method without
            one.
        blobs: the upload store (``get(account_id, blob_id) ->
            Deferred[bytes | None]`` and ``put(account_id, data, type) ->
            Deferred[dict]``, the upload response object of RFC 8620 section
            6.1), or ``None``.
        using: the capability URNs the request named.
        limits: the core limits in force.
        created_ids: the request's creation id -> id map (RFC 8620
            section 3.3): a method that creates records adds to it, and the
            endpoint resolves ``#creationId`` references through it.
    """

    user: str
    account_id: str
    store: IMailStore
    server: MailServer | None = None
    blobs: Any = None
    using: frozenset[str] = frozenset({CORE})
    limits: Limits = field(default_factory=Limits)
    created_ids: dict[str, str] = field(default_factory=dict)
    extra_responses: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def add_response(self, name: str, arguments: dict[str, Any]) -> None:
        """Add a further response ``[name, arguments, callId]`` after the method's own."""
        self.extra_responses.append((name, arguments))

    def check_account(self, arguments: Mapping[str, Any]) -> None:
        """Raise ``accountNotFound`` unless ``arguments["accountId"]`` is this account."""
        if arguments.get("accountId") != self.account_id:
            raise MethodError("accountNotFound")


Method = Callable[[CallContext, dict[str, Any]], "dict[str, Any] | Awaitable[dict[str, Any]]"]
"""A method implementation: ``method(context, arguments) -> response arguments``."""


@dataclass(slots=True)
class Capability:
    """
    One JMAP capability.

    Attributes:
        urn: its URN (``urn:ietf:params:jmap:mail``).
        session: its member of the session resource's ``capabilities``.
        account: ``account(user) -> dict``: its member of the account's
            ``accountCapabilities``, or ``None`` when it has none.
        methods: method name (``Email/get``) -> implementation.
        states: ``states(context) -> Awaitable[dict[type, state]]``: the
            current state string of each data type it owns (``Email``,
            ``Mailbox``, ``Thread``, ...), what push reports in a
            StateChange (RFC 8620 section 7.1), or ``None``.
        blob: ``blob(context, blob_id) -> Awaitable[bytes | None]``: the
            octets of a blob id this capability gave out (a message's
            ``blobId``, a body part's), for the download endpoint (RFC 8620
            section 6.2), which asks it when the upload store does not know
            the id; ``None`` when it gives out none.
        primary: whether the account is the user's primary account for it
            (the session resource's ``primaryAccounts``).
    """

    urn: str
    session: dict[str, Any] = field(default_factory=dict)
    account: Callable[[str], dict[str, Any]] | None = None
    methods: dict[str, Method] = field(default_factory=dict)
    states: Callable[[CallContext], Awaitable[dict[str, str]]] | None = None
    blob: Callable[[CallContext, str], Awaitable[bytes | None]] | None = None
    primary: bool = True


class Registry:
    """The capabilities a JMAP endpoint serves, by URN, and their methods by name."""

    def __init__(self, capabilities: list[Capability] | tuple[Capability, ...] = ()) -> None:
        self.capabilities: dict[str, Capability] = {}
        self._methods: dict[str, tuple[str, Method]] = {}
        for capability in capabilities:
            self.add(capability)

    def add(self, capability: Capability) -> None:
        """Register *capability*; its method names must be new."""
        for name in capability.methods:
            if name in self._methods:
                raise ValueError(f"JMAP method {name} registered twice")
        self.capabilities[capability.urn] = capability
        for name, method in capability.methods.items():
            self._methods[name] = (capability.urn, method)

    def method(self, name: str) -> tuple[str, Method] | None:
        """The (capability URN, implementation) of method *name*, or ``None``."""
        return self._methods.get(name)
