"""
Delivery hooks: embedder code that sees every message received over SMTP
before the router delivers it, and decides what becomes of it.

A hook is either a plain callable ``hook(envelope, message)`` or an object
providing :class:`txmail.interfaces.IDeliveryHook` (``before_delivery(envelope,
message)``).  It gets the :class:`txmail.model.Envelope` and the
:class:`txmail.model.MessageSource` (the message as received, trace headers
included: ``data`` or ``read()`` for a small one, ``open()`` to stream) and returns a :class:`HookResult`, ``None`` (the same as
:meth:`HookResult.accept`), or a ``Deferred`` of either.

Theory of operation
-------------------
:class:`txmail.delivery.router.DeliveryRouter` runs its hooks, in order, at
the start of :meth:`~txmail.delivery.router.DeliveryRouter.deliver`, after
the SMTP client sent the final dot and before any copy is made:

* ``accept``: go on with the next hook, then deliver as usual.
* ``reject(reply)``: deliver nothing; every recipient fails with *reply*
  (``"550 5.7.1 ..."``, or a ``4xx`` reply for a temporary refusal) and the
  SMTP client gets that reply to DATA.  RFC 5321 section 4.2.5 has one
  reply to the end of data for the whole transaction, so a rejection is for
  the whole message; a hook that wants one recipient not to get it rewrites
  the recipients instead.
* ``rewrite(recipients)``: replace the envelope's recipients (redirect to
  another user, add a BCC archive address).  Later hooks see the new list;
  the router then resolves and delivers to it as to any recipients (local
  users get a copy, other domains are queued: the hook is trusted code, so
  no relay check applies).  ESMTP parameters (RFC 3461 ``NOTIFY``...) stay
  with the addresses that were kept.
* ``consume(detail)``: the hook took the message itself ("delivered
  elsewhere"); every recipient counts as delivered, nothing is stored
  locally, the client gets ``250``.  The hook must have made the message
  durable before its result fires: the spool file is removed right after.

A hook that raises, or whose Deferred fails, or that returns anything else,
is logged and the message fails temporarily for every recipient
(``451 4.3.0``): the client keeps it and retries, so it is never lost, and
since hooks run before any copy is made it is never half-delivered.

Hooks run for mail received over SMTP only: the queue runner's local
redeliveries and the notices (DSNs) the server writes itself go through
:meth:`~txmail.delivery.router.DeliveryRouter.without_hooks`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from txmail.interfaces import IDeliveryHook
from txmail.smtp.codes import Reply

__all__ = ["DeliveryHook", "HookAction", "HookResult", "hook_callable", "hook_callables"]

#: What a hook may be: a callable ``(envelope, message) -> HookResult | None
#: | Deferred[HookResult | None]``, or an :class:`~txmail.interfaces.IDeliveryHook`.
DeliveryHook = Any


class HookAction(enum.Enum):
    """What a :class:`HookResult` asks the router to do."""

    ACCEPT = "accept"
    REJECT = "reject"
    REWRITE = "rewrite"
    CONSUME = "consume"


def _check_reply(text: str) -> Reply:
    reply = Reply.from_text(text)
    if reply is None or not 400 <= reply.code < 600:
        raise ValueError(f"a rejection needs a one-line 4xx or 5xx SMTP reply, not {text!r}")
    return reply


def _check_address(address: Any) -> str:
    if not isinstance(address, str) or not address or address != address.strip():
        raise ValueError(f"invalid recipient {address!r}")
    if any(c in address for c in "<> \t\r\n\x00") or "@" not in address:
        raise ValueError(f"invalid recipient {address!r}: give a bare local@domain address")
    return address


@dataclass(frozen=True, slots=True)
class HookResult:
    """
    A delivery hook's decision about one message.  Build it with the class
    methods; see the module notes for what each does.

    Attributes:
        action: the :class:`HookAction`.
        reply: for ``REJECT``, the SMTP reply (``"550 5.7.1 text"``).
        recipients: for ``REWRITE``, the new recipients, in order, without
            duplicates.
        detail: for ``CONSUME``, a note for the logs and the delivery report
            (where the message went).
        smtp_reply: for ``REJECT``, *reply* parsed (what the router reports),
            else ``None``.
    """

    action: HookAction
    reply: str = ""
    recipients: tuple[str, ...] = ()
    detail: str = ""
    smtp_reply: Reply | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        if self.action is HookAction.REJECT:
            reply = _check_reply(self.reply)
            object.__setattr__(self, "reply", reply.as_text())
            object.__setattr__(self, "smtp_reply", reply)
        if self.action is HookAction.REWRITE:
            recipients = tuple(dict.fromkeys(_check_address(a) for a in self.recipients))
            if not recipients:
                raise ValueError("a rewrite needs at least one recipient (use consume() to drop a message)")
            object.__setattr__(self, "recipients", recipients)
        if any(c in self.detail for c in "\r\n"):
            raise ValueError("detail must be one line")

    @property
    def temporary(self) -> bool:
        """Whether a rejection is temporary (a 4xx reply)."""
        return self.action is HookAction.REJECT and self.reply.startswith("4")

    @classmethod
    def accept(cls) -> HookResult:
        """Deliver the message unchanged (after the remaining hooks)."""
        return cls(HookAction.ACCEPT)

    @classmethod
    def reject(cls, reply: str = "550 5.7.1 Message rejected") -> HookResult:
        """
        Refuse the message for every recipient with *reply*, a one-line
        ``4xx``/``5xx`` SMTP reply with an RFC 3463 enhanced code such as
        ``"550 5.7.1 Delivery not authorized"``.

        Raises:
            ValueError: *reply* is not such a reply.
        """
        return cls(HookAction.REJECT, reply=reply)

    @classmethod
    def rewrite(cls, recipients: Iterable[str]) -> HookResult:
        """
        Replace the envelope's recipients with *recipients* (bare
        ``local@domain`` addresses; duplicates are dropped).

        Raises:
            ValueError: no recipient, or a malformed address.
        """
        return cls(HookAction.REWRITE, recipients=tuple(recipients))

    @classmethod
    def consume(cls, detail: str = "") -> HookResult:
        """The hook took the message (and made it durable); deliver nothing locally."""
        return cls(HookAction.CONSUME, detail=detail)


def hook_callable(hook: DeliveryHook) -> Callable[..., Any]:
    """
    The function to call for *hook*: its ``before_delivery`` when it
    provides :class:`~txmail.interfaces.IDeliveryHook`, else *hook* itself.

    Raises:
        TypeError: *hook* is neither.
    """
    if IDeliveryHook.providedBy(hook):
        return hook.before_delivery
    if callable(hook):
        return hook  # type: ignore[no-any-return]  # a plain callable hook, duck-typed
    raise TypeError(f"a delivery hook must be callable or provide IDeliveryHook, not {hook!r}")


def hook_callables(hooks: DeliveryHook | Sequence[DeliveryHook] | None) -> tuple[Callable[..., Any], ...]:
    """Normalise ``None``, one hook or a sequence of hooks to a tuple of functions."""
    if hooks is None:
        return ()
    if isinstance(hooks, list | tuple):
        return tuple(hook_callable(h) for h in hooks)
    return (hook_callable(hooks),)
