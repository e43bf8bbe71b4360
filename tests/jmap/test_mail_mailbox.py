"""
The Mailbox methods of RFC 8621 section 2 (:mod:`txmail.jmap.mailbox`)
over the memory and Maildir stores: get, changes (also of changes made
through the store, as IMAP and POP3 make them), query and set.
"""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from tests.jmap._mail import MaildirMixin, MailMixin, make_message
from txmail.jmap.core import Limits
from txmail.model import SEEN, FlagMode, SpecialUse

__all__: list[str] = []


class MailboxTestsMixin(MailMixin):
    def test_get_inbox(self) -> None:
        got = self.call("Mailbox/get", {"ids": None})
        (inbox,) = got["list"]
        self.assertEqual(inbox["name"], "INBOX")
        self.assertEqual(inbox["role"], "inbox")
        self.assertEqual(inbox["parentId"], None)
        self.assertEqual(inbox["totalEmails"], 0)
        self.assertEqual(inbox["myRights"]["mayDelete"], False)
        self.assertEqual(inbox["myRights"]["mayAddItems"], True)
        self.assertEqual(inbox["id"], self.box().mailbox_id)
        self.assertEqual(got["notFound"], [])

    def test_get_counts_and_roles(self) -> None:
        self.successResultOf(self.store.create_mailbox("Sent", SpecialUse.SENT))
        self.successResultOf(self.store.create_mailbox("Work/Projects"))
        first = make_message("Plan", message_id="<root@x>")
        self.deliver(message=first)
        self.deliver(message=make_message("Re: Plan", references="<root@x>"), flags=(SEEN,))
        self.deliver(message=make_message("Other"))
        ids = self.mailbox_ids()
        got = self.call("Mailbox/get", {"ids": [ids["INBOX"], ids["Sent"], ids["Work/Projects"], "nope"]})
        inbox, sent, projects = got["list"]
        self.assertEqual(
            (inbox["totalEmails"], inbox["unreadEmails"], inbox["totalThreads"], inbox["unreadThreads"]),
            (3, 2, 2, 2),
        )
        self.assertEqual(sent["role"], "sent")
        self.assertEqual(projects["parentId"], ids["Work"])
        self.assertEqual(projects["name"], "Projects")
        self.assertEqual(got["notFound"], ["nope"])

    def test_get_properties(self) -> None:
        got = self.call("Mailbox/get", {"properties": ["name"]})
        self.assertEqual(set(got["list"][0]), {"id", "name"})
        error = self.error("Mailbox/get", {"properties": ["name", "colour"]})
        self.assertEqual((error.type, error.properties["arguments"]), ("invalidArguments", ["properties"]))

    def test_get_too_many_ids(self) -> None:
        self.context.limits = Limits(max_objects_in_get=2)
        self.assertEqual(self.error("Mailbox/get", {"ids": ["a", "b", "c"]}).type, "requestTooLarge")

    def test_wrong_account(self) -> None:
        self.assertEqual(self.error("Mailbox/get", {"accountId": "other"}).type, "accountNotFound")

    def test_changes_counts_only(self) -> None:
        uid = self.deliver()
        state = self.call("Mailbox/get", {})["state"]
        self.successResultOf(self.box().set_flags([uid], [SEEN], FlagMode.ADD))  # as IMAP STORE does
        changes = self.call("Mailbox/changes", {"sinceState": state})
        self.assertEqual(changes["updated"], [self.box().mailbox_id])
        self.assertEqual(
            changes["updatedProperties"], ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]
        )
        self.assertEqual(
            (changes["created"], changes["destroyed"], changes["hasMoreChanges"]), ([], [], False)
        )
        again = self.call("Mailbox/changes", {"sinceState": changes["newState"]})
        self.assertEqual((again["created"], again["updated"], again["destroyed"]), ([], [], []))

    def test_changes_created_renamed_destroyed(self) -> None:
        self.successResultOf(self.store.create_mailbox("Old"))
        self.successResultOf(self.store.create_mailbox("Gone"))
        ids = self.mailbox_ids()
        state = self.call("Mailbox/get", {})["state"]
        self.successResultOf(self.store.rename_mailbox("Old", "New"))  # as IMAP RENAME
        self.successResultOf(self.store.delete_mailbox("Gone"))
        self.successResultOf(self.store.create_mailbox("Fresh"))
        changes = self.call("Mailbox/changes", {"sinceState": state})
        self.assertEqual(changes["created"], [self.mailbox_ids()["Fresh"]])
        self.assertEqual(changes["updated"], [ids["Old"]])
        self.assertEqual(changes["destroyed"], [ids["Gone"]])
        self.assertEqual(changes["updatedProperties"], None)

    def test_changes_max_changes(self) -> None:
        state = self.call("Mailbox/get", {})["state"]
        for name in ("A", "B", "C"):
            self.successResultOf(self.store.create_mailbox(name))
        seen: list[str] = []
        more = True
        while more:
            changes = self.call("Mailbox/changes", {"sinceState": state, "maxChanges": 2})
            self.assertLessEqual(len(changes["created"]), 2)
            seen += changes["created"]
            more, state = changes["hasMoreChanges"], changes["newState"]
        self.assertEqual(sorted(seen), sorted(v for k, v in self.mailbox_ids().items() if k != "INBOX"))

    def test_changes_bad_state(self) -> None:
        self.assertEqual(
            self.error("Mailbox/changes", {"sinceState": "garbage"}).type, "cannotCalculateChanges"
        )
        error = self.error("Mailbox/changes", {"sinceState": 3})
        self.assertEqual((error.type, error.properties["arguments"]), ("invalidArguments", ["sinceState"]))
        self.assertEqual(
            self.error("Mailbox/changes", {"sinceState": "x", "maxChanges": 0}).type, "invalidArguments"
        )

    def test_query_filters_and_sorts(self) -> None:
        self.successResultOf(self.store.create_mailbox("Trash", SpecialUse.TRASH))
        self.successResultOf(self.store.create_mailbox("Archive/2024"))
        self.successResultOf(self.store.create_mailbox("Archive/2023"))
        self.successResultOf(self.store.subscribe("Trash"))
        ids = self.mailbox_ids()
        names = {v: k for k, v in ids.items()}

        def query(**arguments: object) -> list[str]:
            return [names[i] for i in self.call("Mailbox/query", arguments)["ids"]]

        self.assertEqual(
            query(filter={"parentId": ids["Archive"]}, sort=[{"property": "name"}]),
            ["Archive/2023", "Archive/2024"],
        )
        self.assertEqual(
            query(filter={"parentId": None}, sort=[{"property": "name", "isAscending": False}]),
            ["Trash", "INBOX", "Archive"],
        )
        self.assertEqual(query(filter={"hasAnyRole": True}, sort=[{"property": "name"}]), ["INBOX", "Trash"])
        self.assertEqual(query(filter={"role": "trash"}), ["Trash"])
        self.assertEqual(query(filter={"isSubscribed": True}), ["Trash"])
        self.assertEqual(
            query(filter={"name": "202"}, sort=[{"property": "name"}]), ["Archive/2023", "Archive/2024"]
        )
        self.assertEqual(
            query(
                filter={"operator": "NOT", "conditions": [{"hasAnyRole": True}]}, sort=[{"property": "name"}]
            ),
            ["Archive/2023", "Archive/2024", "Archive"],
        )
        self.assertEqual(
            query(sortAsTree=True, sort=[{"property": "name"}]),
            ["Archive", "Archive/2023", "Archive/2024", "INBOX", "Trash"],
        )
        self.assertEqual(query(filter={"name": "202"}, filterAsTree=True), [])
        got = self.call(
            "Mailbox/query",
            {"sort": [{"property": "name"}], "position": 1, "limit": 2, "calculateTotal": True},
        )
        self.assertEqual((got["position"], len(got["ids"]), got["total"]), (1, 2, 5))
        got = self.call(
            "Mailbox/query", {"sort": [{"property": "name"}], "anchor": ids["INBOX"], "anchorOffset": -1}
        )
        self.assertEqual([names[i] for i in got["ids"]], ["Archive", "INBOX", "Trash"])

    def test_query_errors(self) -> None:
        self.assertEqual(self.error("Mailbox/query", {"filter": {"colour": "red"}}).type, "unsupportedFilter")
        self.assertEqual(
            self.error("Mailbox/query", {"sort": [{"property": "totalEmails"}]}).type, "unsupportedSort"
        )
        self.assertEqual(self.error("Mailbox/query", {"anchor": "nope"}).type, "anchorNotFound")
        self.assertEqual(self.error("Mailbox/query", {"limit": -1}).type, "invalidArguments")

    def test_set_create_update_destroy(self) -> None:
        inbox = self.box().mailbox_id
        got = self.call(
            "Mailbox/set",
            {
                "create": {
                    "p": {"name": "Projects", "parentId": None},
                    "c": {"name": "Alpha", "parentId": "#p", "isSubscribed": False},
                    "bad": {"name": "a/b"},
                    "role": {"name": "Bin", "role": "trash"},
                    "dup": {"name": "Projects"},
                }
            },
        )
        self.assertEqual(set(got["created"]), {"p", "c", "role"})
        self.assertEqual(got["notCreated"]["bad"]["type"], "invalidProperties")
        self.assertEqual(got["notCreated"]["dup"]["properties"], ["name"])
        self.assertEqual(self.context.created_ids["p"], got["created"]["p"]["id"])
        ids = self.mailbox_ids()
        self.assertEqual(ids["Projects/Alpha"], got["created"]["c"]["id"])
        self.assertEqual(self.successResultOf(self.store.special_use_mailbox(SpecialUse.TRASH)), "Bin")
        self.assertIn("Projects", self.successResultOf(self.store.subscriptions()))
        # Rename and reparent keep the id (the store's MAILBOXID).
        alpha = ids["Projects/Alpha"]
        got = self.call(
            "Mailbox/set",
            {"update": {alpha: {"name": "Beta", "parentId": inbox}, ids["Projects"]: {"role": "junk"}}},
        )
        self.assertEqual(got["updated"], {alpha: None})
        self.assertEqual(got["notUpdated"][ids["Projects"]]["type"], "invalidProperties")
        self.assertEqual(self.mailbox_ids()["INBOX/Beta"], alpha)
        got = self.call(
            "Mailbox/set", {"update": {ids["Projects"]: {"parentId": alpha}, inbox: {"name": "x"}}}
        )
        self.assertEqual(got["notUpdated"][inbox]["type"], "forbidden")
        self.assertEqual(self.mailbox_ids()["INBOX/Beta/Projects"], ids["Projects"])
        got = self.call("Mailbox/set", {"update": {alpha: {"parentId": ids["Projects"]}}})
        self.assertEqual(got["notUpdated"][alpha]["properties"], ["parentId"])
        # Destroy: children first; messages only with onDestroyRemoveEmails.
        self.deliver("INBOX/Beta/Projects")
        got = self.call("Mailbox/set", {"destroy": [alpha, ids["Projects"], inbox, "nope"]})
        self.assertEqual(got["notDestroyed"][alpha]["type"], "mailboxHasChild")
        self.assertEqual(got["notDestroyed"][ids["Projects"]]["type"], "mailboxHasEmail")
        self.assertEqual(got["notDestroyed"][inbox]["type"], "forbidden")
        self.assertEqual(got["notDestroyed"]["nope"]["type"], "notFound")
        got = self.call("Mailbox/set", {"destroy": [ids["Projects"], alpha], "onDestroyRemoveEmails": True})
        self.assertEqual(got["destroyed"], [ids["Projects"], alpha])
        self.assertNotIn("INBOX/Beta", self.mailbox_ids())

    def test_set_depth(self) -> None:
        self.successResultOf(self.store.create_mailbox("/".join(f"L{i}" for i in range(1, 10))))
        ids = self.mailbox_ids()
        deepest = ids["/".join(f"L{i}" for i in range(1, 10))]
        got = self.call("Mailbox/set", {"create": {"ok": {"name": "L10", "parentId": deepest}}})
        self.assertEqual(list(got["created"]), ["ok"])
        got = self.call(
            "Mailbox/set", {"create": {"deep": {"name": "L11", "parentId": got["created"]["ok"]["id"]}}}
        )
        self.assertEqual(got["notCreated"]["deep"]["properties"], ["parentId"])
        self.successResultOf(self.store.create_mailbox("Top"))
        got = self.call("Mailbox/set", {"update": {ids["L1"]: {"parentId": self.mailbox_ids()["Top"]}}})
        self.assertEqual(got["notUpdated"][ids["L1"]]["properties"], ["parentId"])
        account = self.call("Mailbox/get", {"ids": []})
        self.assertEqual(account["list"], [])

    def test_set_subscribe(self) -> None:
        self.successResultOf(self.store.create_mailbox("News"))
        news = self.mailbox_ids()["News"]
        self.call("Mailbox/set", {"update": {news: {"isSubscribed": True}}})
        self.assertEqual(self.successResultOf(self.store.subscriptions()), ["News"])
        state = self.call("Mailbox/get", {})["state"]
        self.call("Mailbox/set", {"update": {news: {"isSubscribed": False}}})
        self.assertEqual(self.successResultOf(self.store.subscriptions()), [])
        changes = self.call("Mailbox/changes", {"sinceState": state})
        self.assertEqual((changes["updated"], changes["updatedProperties"]), ([news], None))

    def test_set_if_in_state(self) -> None:
        self.assertEqual(
            self.error("Mailbox/set", {"ifInState": "mNope", "create": {}}).type, "stateMismatch"
        )

    def test_set_too_large(self) -> None:
        self.context.limits = Limits(max_objects_in_set=1)
        self.assertEqual(self.error("Mailbox/set", {"destroy": ["a", "b"]}).type, "requestTooLarge")

    def test_destroyed_with_emails_changes(self) -> None:
        self.successResultOf(self.store.create_mailbox("Box"))
        uid = self.deliver("Box")
        eid = self.email_id("Box", uid)
        self.successResultOf(self.box("Box").copy([uid], self.box()))
        lone = self.email_id("Box", self.deliver("Box"))
        state = self.call("Email/get", {"ids": []})["state"]
        got = self.call(
            "Mailbox/set", {"destroy": [self.mailbox_ids()["Box"]], "onDestroyRemoveEmails": True}
        )
        self.assertEqual(len(got["destroyed"]), 1)
        changes = self.call("Email/changes", {"sinceState": state})
        self.assertEqual((changes["updated"], changes["destroyed"]), ([eid], [lone]))


class MemoryMailboxTests(MailboxTestsMixin, TestCase):
    """Over the memory store."""


class MaildirMailboxTests(MaildirMixin, MailboxTestsMixin, TestCase):
    """Over the Maildir store."""
