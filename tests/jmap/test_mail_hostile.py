"""
Every JMAP mail method, given arguments of the wrong shapes, answers with a
method error or a response, never an exception of another kind, and leaves
the mail as it was.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.jmap._mail import ACCOUNT, REGISTRY, MailMixin
from txmail.jmap.core import MethodError

__all__: list[str] = []

_BAD_VALUES: tuple[Any, ...] = (
    None, 0, -1, 2**70, True, "x", "", [], [1], ["x"], {}, {"a": 1}, {"a": None}, [{}], [None], {"#x": True},
)  # fmt: skip
_NAMES = (
    "ids", "properties", "bodyProperties", "filter", "sort", "position", "anchor", "anchorOffset", "limit",
    "calculateTotal", "collapseThreads", "create", "update", "destroy", "sinceState", "sinceQueryState",
    "maxChanges", "emails", "blobIds", "emailIds", "ifInState", "onDestroyRemoveEmails", "fetchAllBodyValues",
    "maxBodyValueBytes", "onSuccessUpdateEmail", "onSuccessDestroyEmail", "fromAccountId", "sortAsTree",
)  # fmt: skip


class HostileArgumentsTests(MailMixin, TestCase):
    def test_every_method_every_bad_argument(self) -> None:
        uid = self.deliver()
        before = self.successResultOf(self.box().list_messages())
        names = sorted(m for c in REGISTRY.capabilities.values() for m in c.methods)
        calls = 0
        for name in names:
            method = REGISTRY.method(name)
            assert method is not None
            for argument in _NAMES:
                for value in _BAD_VALUES:
                    arguments = {"accountId": ACCOUNT, argument: value}
                    if name.endswith("/set") and argument != "destroy":
                        continue  # a set may succeed and change mail: see below
                    d = defer.ensureDeferred(method[1](self.context, arguments))
                    results: list[Any] = []
                    d.addBoth(results.append)
                    (result,) = results
                    calls += 1
                    if isinstance(result, dict):
                        continue
                    result.trap(MethodError)
        self.assertGreater(calls, 5000)
        self.assertEqual(self.successResultOf(self.box().list_messages()), before)
        # Patches of the wrong shapes.
        eid = self.email_id("INBOX", uid)
        box = self.box().mailbox_id
        for value in _BAD_VALUES:
            for patch in (
                {"keywords": value}, {"mailboxIds": value}, {"keywords/$seen": value}, {f"mailboxIds/{box}": value},
                {"mailboxIds/Fnope": value}, {"keywords/": value}, {"subject": value},
            ):  # fmt: skip
                got = self.call("Email/set", {"update": {eid: patch}})
                self.assertTrue(got["updated"] or got["notUpdated"])
                self.assertEqual(len(self.successResultOf(self.store.list_mailboxes())), 1)
            for create in (
                {"mailboxIds": value},
                {"mailboxIds": {box: True}, "bodyStructure": value},
                {"name": value},
            ):
                got = self.call("Email/set", {"create": {"c": create}})
                if got["created"]:
                    self.call("Email/set", {"destroy": [got["created"]["c"]["id"]]})
                got = self.call(
                    "Mailbox/set", {"create": {"c": {"name": value} if value != "x" else {"name": 1}}}
                )
                self.assertIsNone(got["created"])
        self.assertEqual([i.email_id for i in self.successResultOf(self.box().list_messages())], [eid])
        self.successResultOf(self.store.create_mailbox("Box"))
        target = self.mailbox_ids()["Box"]
        for value in _BAD_VALUES:
            if isinstance(value, str):
                continue
            for prop in ("name", "parentId", "role", "sortOrder", "isSubscribed", "totalEmails", "myRights"):
                got = self.call("Mailbox/set", {"update": {target: {prop: value}}})
                valid = (prop, value) in (("sortOrder", 0), ("isSubscribed", True))
                if value is not None and prop not in ("parentId", "role") and not valid:
                    self.assertEqual(got["notUpdated"][target]["type"], "invalidProperties")
        self.assertEqual(self.mailbox_ids()["Box"], target)
