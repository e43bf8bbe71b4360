"""
Shared set-up of the JMAP mail method tests: a user's store (memory or
Maildir), a :class:`txmail.jmap.core.CallContext` over it, and calls that
run a method to its answer.
"""

from __future__ import annotations

import email.utils
import itertools
from typing import Any

from twisted.internet import defer, task

from txmail.jmap.core import MAIL, CallContext, Limits, MethodError, Registry
from txmail.jmap.mail import capabilities
from txmail.model import INBOX
from txmail.store.maildir import MaildirProvider
from txmail.store.memory import MemoryProvider

__all__ = ["ACCOUNT", "USER", "MailMixin", "make_message"]

USER = "alice@example.test"
ACCOUNT = "a1"
REGISTRY = Registry(capabilities())
_COUNTER = itertools.count(1)


def make_message(
    subject: str = "Hello",
    *,
    body: str = "Hi there.",
    sender: str = "Bob <bob@example.test>",
    to: str = "alice@example.test",
    message_id: str | None = None,
    references: str | None = None,
    in_reply_to: str | None = None,
    date: str = "Mon, 07 Dec 2026 08:00:00 +0100",
    extra: str = "",
) -> bytes:
    """A small message, CRLF line ends."""
    message_id = message_id or f"<m{next(_COUNTER)}@example.test>"
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Date: {date}",
        f"Message-ID: {message_id}",
    ]
    if references:
        lines.append(f"References: {references}")
    if in_reply_to:
        lines.append(f"In-Reply-To: {in_reply_to}")
    if extra:
        lines.append(extra)
    return ("\r\n".join(lines) + "\r\n\r\n" + body + "\r\n").encode("utf-8")


class MailMixin:
    """A store and calls of JMAP mail methods (mix into a trial ``TestCase`` with ``make_provider``)."""

    successResultOf: Any
    failureResultOf: Any
    mktemp: Any
    assertEqual: Any
    limits = Limits()

    def make_provider(self) -> Any:
        return MemoryProvider()

    def setUp(self) -> None:
        self.provider = self.make_provider()
        self.store = self.successResultOf(self.provider.store_for(USER))
        self.context = CallContext(USER, ACCOUNT, self.store, using=frozenset({MAIL}), limits=self.limits)

    def call(
        self, name: str, arguments: dict[str, Any], context: CallContext | None = None
    ) -> dict[str, Any]:
        """Run method *name* to its answer (``MethodError`` is raised)."""
        found = REGISTRY.method(name)
        assert found is not None, name
        arguments = {"accountId": ACCOUNT, **arguments}
        d = defer.ensureDeferred(found[1](context or self.context, arguments))
        return self.successResultOf(d)  # type: ignore[no-any-return]

    def error(self, name: str, arguments: dict[str, Any]) -> MethodError:
        """Run method *name*, which must fail with a method error; return it."""
        found = REGISTRY.method(name)
        assert found is not None, name
        d = defer.ensureDeferred(found[1](self.context, {"accountId": ACCOUNT, **arguments}))
        return self.failureResultOf(d, MethodError).value  # type: ignore[no-any-return]

    def box(self, name: str = INBOX) -> Any:
        return self.successResultOf(self.store.get_mailbox(name))

    def deliver(
        self,
        name: str = INBOX,
        message: bytes | None = None,
        flags: tuple[str, ...] = (),
        date: float | None = None,
    ) -> int:
        """Append a message (as delivery or IMAP APPEND would); its UID."""
        return self.successResultOf(self.box(name).append(message or make_message(), flags, date))  # type: ignore[no-any-return]

    def email_id(self, name: str, uid: int) -> str:
        (info,) = self.successResultOf(self.box(name).list_messages([uid]))
        return info.email_id  # type: ignore[no-any-return]

    def mailbox_ids(self) -> dict[str, str]:
        """Mailbox name -> id, from Mailbox/get."""
        got = self.call("Mailbox/get", {"properties": ["name", "parentId"]})
        by_id = {m["id"]: m for m in got["list"]}

        def full(m: dict[str, Any]) -> str:
            parent = by_id.get(m["parentId"]) if m["parentId"] else None
            return m["name"] if parent is None else full(parent) + "/" + m["name"]

        return {full(m): m["id"] for m in got["list"]}


class MaildirMixin:
    """The same tests over a Maildir store (files in a temporary directory)."""

    mktemp: Any

    def make_provider(self) -> Any:
        return MaildirProvider(self.mktemp(), hostname="mx.test", clock=task.Clock(), watch="off")


def rfc2822(timestamp: float) -> str:
    return email.utils.formatdate(timestamp)
