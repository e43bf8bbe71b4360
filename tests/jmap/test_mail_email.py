"""
The Email and Thread methods of RFC 8621 (:mod:`txmail.jmap.email`,
:mod:`txmail.jmap.query`, :mod:`txmail.jmap.thread`) over the memory and
Maildir stores, with changes made through the store as IMAP and POP3 make
them (flags, expunge, copy, move, delivery).
"""

from __future__ import annotations

import base64
import json

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.jmap._mail import USER, MaildirMixin, MailMixin, make_message
from txmail.jmap import mail
from txmail.model import ANSWERED, DELETED, FLAGGED, INBOX, SEEN, FlagMode, SpecialUse

__all__: list[str] = []

MULTIPART = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.test>\r\n"
    b'To: alice@example.test, "Carol C." <carol@example.test>\r\n'
    b"Cc: Team: dave@example.test, erin@example.test;\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= and a file\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0100\r\n"
    b"Message-ID: <multi@example.test>\r\n"
    b"List-Unsubscribe: <mailto:leave@example.test>, <https://example.test/leave>\r\n"
    b"X-Custom: one\r\n"
    b"X-Custom: two\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hallo Welt, sch=C3=B6n.\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Hallo <b>Welt</b></p>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/pdf; name="report.pdf"\r\n'
    b"Content-Disposition: attachment; filename=report.pdf\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n" + base64.encodebytes(b"%PDF-1.4 fake").replace(b"\n", b"\r\n") + b"--outer--\r\n"
)


class EmailTestsMixin(MailMixin):
    def get(self, ids: list[str], **arguments: object) -> list[dict[str, object]]:
        return self.call("Email/get", {"ids": ids, **arguments})["list"]  # type: ignore[no-any-return]

    def state(self) -> str:
        return self.call("Email/get", {"ids": []})["state"]  # type: ignore[no-any-return]

    # -- Email/get ---------------------------------------------------------

    def test_get_default_properties(self) -> None:
        uid = self.deliver(
            message=MULTIPART, flags=(SEEN, FLAGGED, "$Forwarded", DELETED), date=1_700_000_000
        )
        eid = self.email_id(INBOX, uid)
        (got,) = self.get([eid])
        inbox = self.box().mailbox_id
        self.assertEqual(got["id"], eid)
        self.assertEqual(got["mailboxIds"], {inbox: True})
        self.assertEqual(got["keywords"], {"$seen": True, "$flagged": True, "$forwarded": True})
        self.assertEqual(got["receivedAt"], "2023-11-14T22:13:20Z")
        self.assertEqual(got["size"], len(MULTIPART))
        self.assertEqual(got["subject"], "Grüße and a file")
        self.assertEqual(got["from"], [{"name": "Jürgen", "email": "jurgen@example.test"}])
        self.assertEqual(
            got["to"],
            [
                {"name": None, "email": "alice@example.test"},
                {"name": "Carol C.", "email": "carol@example.test"},
            ],
        )
        self.assertEqual(len(got["cc"]), 2)
        self.assertEqual(got["messageId"], ["multi@example.test"])
        self.assertEqual(got["inReplyTo"], None)
        self.assertEqual(got["sentAt"], "2026-12-01T10:00:00+01:00")
        self.assertEqual(got["hasAttachment"], True)
        self.assertEqual(got["preview"], "Hallo Welt, schön.")
        self.assertEqual([p["type"] for p in got["textBody"]], ["text/plain"])
        self.assertEqual([p["type"] for p in got["htmlBody"]], ["text/html"])
        (attachment,) = got["attachments"]
        self.assertEqual(
            (attachment["name"], attachment["type"], attachment["size"]),
            ("report.pdf", "application/pdf", 13),
        )
        self.assertEqual(got["bodyValues"], {})
        blob = self.successResultOf(
            defer.ensureDeferred(mail.capabilities()[0].blob(self.context, attachment["blobId"]))
        )
        self.assertEqual(blob, b"%PDF-1.4 fake")
        whole = self.successResultOf(
            defer.ensureDeferred(mail.capabilities()[0].blob(self.context, got["blobId"]))
        )
        self.assertEqual(whole, MULTIPART)

    def test_get_header_forms(self) -> None:
        eid = self.email_id(INBOX, self.deliver(message=MULTIPART))
        (got,) = self.get(
            [eid],
            properties=[
                "header:X-Custom", "header:x-custom:all", "header:Subject:asText", "header:Subject",
                "header:Cc:asGroupedAddresses", "header:List-Unsubscribe:asURLs", "header:Date:asDate",
                "header:Message-ID:asMessageIds", "header:X-Missing", "header:X-Missing:all", "headers",
            ],
        )  # fmt: skip
        self.assertEqual(got["header:X-Custom"], " two")
        self.assertEqual(got["header:x-custom:all"], [" one", " two"])
        self.assertEqual(got["header:Subject:asText"], "Grüße and a file")
        self.assertEqual(got["header:Subject"], " =?utf-8?q?Gr=C3=BC=C3=9Fe?= and a file")
        self.assertEqual(
            got["header:Cc:asGroupedAddresses"],
            [
                {
                    "name": "Team",
                    "addresses": [
                        {"name": None, "email": "dave@example.test"},
                        {"name": None, "email": "erin@example.test"},
                    ],
                }
            ],
        )
        self.assertEqual(
            got["header:List-Unsubscribe:asURLs"], ["mailto:leave@example.test", "https://example.test/leave"]
        )
        self.assertEqual(got["header:Date:asDate"], "2026-12-01T10:00:00+01:00")
        self.assertEqual(got["header:Message-ID:asMessageIds"], ["multi@example.test"])
        self.assertEqual((got["header:X-Missing"], got["header:X-Missing:all"]), (None, []))
        self.assertEqual(
            got["headers"][0], {"name": "From", "value": " =?utf-8?q?J=C3=BCrgen?= <jurgen@example.test>"}
        )
        self.assertNotIn("subject", got)
        # A form the field does not take is refused.
        error = self.error("Email/get", {"ids": [eid], "properties": ["header:Subject:asAddresses"]})
        self.assertEqual((error.type, error.properties["arguments"]), ("invalidArguments", ["properties"]))
        self.assertEqual(
            self.error("Email/get", {"ids": [eid], "properties": ["colour"]}).type, "invalidArguments"
        )

    def test_get_body_values(self) -> None:
        eid = self.email_id(INBOX, self.deliver(message=MULTIPART))
        (got,) = self.get(
            [eid], properties=["bodyValues"], fetchTextBodyValues=True, fetchHTMLBodyValues=True
        )
        self.assertEqual(
            got["bodyValues"]["1.1"],
            {"value": "Hallo Welt, schön.", "isEncodingProblem": False, "isTruncated": False},
        )
        self.assertEqual(got["bodyValues"]["1.2"]["value"], "<p>Hallo <b>Welt</b></p>")
        (got,) = self.get([eid], properties=["bodyValues"], fetchAllBodyValues=True, maxBodyValueBytes=12)
        self.assertEqual(
            got["bodyValues"]["1.1"],
            {"value": "Hallo Welt, ", "isEncodingProblem": False, "isTruncated": True},
        )
        (got,) = self.get([eid], properties=["bodyStructure"], bodyProperties=["partId", "type", "subParts"])
        structure = got["bodyStructure"]
        self.assertEqual(structure["type"], "multipart/mixed")
        self.assertEqual(
            [p["type"] for p in structure["subParts"]], ["multipart/alternative", "application/pdf"]
        )
        self.assertEqual(structure["subParts"][0]["subParts"][1], {"partId": "1.2", "type": "text/html"})

    def test_get_not_found_and_all(self) -> None:
        eid = self.email_id(INBOX, self.deliver())
        got = self.call("Email/get", {"ids": [eid, "Mnope"], "properties": ["subject"]})
        self.assertEqual((got["list"], got["notFound"]), ([{"id": eid, "subject": "Hello"}], ["Mnope"]))
        got = self.call("Email/get", {"ids": None, "properties": ["id"]})
        self.assertEqual(got["list"], [{"id": eid}])

    def test_one_email_in_two_mailboxes(self) -> None:
        self.successResultOf(self.store.create_mailbox("Keep"))
        uid = self.deliver(flags=(SEEN,))
        eid = self.email_id(INBOX, uid)
        self.successResultOf(self.box().copy([uid], self.box("Keep")))  # as IMAP COPY (keeps the EMAILID)
        (got,) = self.get([eid], properties=["mailboxIds", "keywords"])
        self.assertEqual(got["mailboxIds"], {self.box().mailbox_id: True, self.box("Keep").mailbox_id: True})
        self.assertEqual(self.call("Email/query", {"calculateTotal": True})["total"], 1)

    # -- Email/query --------------------------------------------------------

    def test_query_sorts_filters_and_threads(self) -> None:
        self.successResultOf(self.store.create_mailbox("Other"))
        a = self.email_id(
            INBOX,
            self.deliver(message=make_message("Plan", message_id="<a@x>", sender="Zed <z@x>"), date=1000),
        )
        b = self.email_id(
            INBOX,
            self.deliver(
                message=make_message("Re: Plan", references="<a@x>", sender="amy@x"), date=2000, flags=(SEEN,)
            ),
        )
        c = self.email_id(
            INBOX,
            self.deliver(
                message=make_message("Budget", body="numbers inside", sender="Bea <b@x>"), date=3000
            ),
        )
        d = self.email_id(
            "Other",
            self.deliver("Other", make_message("Zebra", extra="X-Tag: blue"), date=4000, flags=(FLAGGED,)),
        )
        inbox = self.box().mailbox_id

        def query(**arguments: object) -> list[str]:
            return self.call("Email/query", arguments)["ids"]  # type: ignore[no-any-return]

        self.assertEqual(query(), [d, c, b, a])
        self.assertEqual(query(filter={"inMailbox": inbox}), [c, b, a])
        self.assertEqual(query(filter={"inMailbox": inbox}, collapseThreads=True), [c, b])
        self.assertEqual(query(filter={"inMailboxOtherThan": [inbox]}), [d])
        self.assertEqual(query(sort=[{"property": "receivedAt", "isAscending": True}]), [a, b, c, d])
        self.assertEqual(query(sort=[{"property": "subject"}]), [c, b, a, d])
        self.assertEqual(query(sort=[{"property": "from"}], filter={"inMailbox": inbox}), [b, c, a])
        self.assertEqual(query(filter={"hasKeyword": "$seen"}), [b])
        self.assertEqual(query(filter={"notKeyword": "$seen"}), [d, c, a])
        self.assertEqual(query(filter={"someInThreadHaveKeyword": "$seen"}), [b, a])
        self.assertEqual(query(filter={"allInThreadHaveKeyword": "$seen"}), [])
        self.assertEqual(query(filter={"allInThreadHaveKeyword": "$flagged"}), [d])
        self.assertEqual(query(filter={"noneInThreadHaveKeyword": "$seen"}), [d, c])
        self.assertEqual(
            query(filter={"after": "1970-01-01T00:33:20Z", "before": "1970-01-01T01:06:40Z"}), [c, b]
        )
        self.assertEqual(query(filter={"subject": "plan"}), [b, a])
        self.assertEqual(query(filter={"from": "BEA"}), [c])
        self.assertEqual(query(filter={"body": "NUMBERS"}), [c])
        self.assertEqual(query(filter={"text": "zed"}), [a])
        self.assertEqual(query(filter={"header": ["X-Tag", "Blue"]}), [d])
        self.assertEqual(query(filter={"header": ["X-Tag"]}), [d])
        self.assertEqual(query(filter={"hasAttachment": True}), [])
        self.assertEqual(
            query(filter={"operator": "OR", "conditions": [{"from": "bea"}, {"hasKeyword": "$flagged"}]}),
            [d, c],
        )
        self.assertEqual(
            query(sort=[{"property": "hasKeyword", "keyword": "$flagged"}, {"property": "receivedAt"}]),
            [a, b, c, d],
        )
        got = self.call("Email/query", {"position": 1, "limit": 2, "calculateTotal": True})
        self.assertEqual((got["ids"], got["position"], got["total"]), ([c, b], 1, 4))
        got = self.call("Email/query", {"anchor": b, "anchorOffset": -1, "limit": 2})
        self.assertEqual((got["ids"], got["position"]), ([c, b], 1))
        self.assertEqual(query(position=-1), [a])

    def test_query_errors(self) -> None:
        self.assertEqual(self.error("Email/query", {"filter": {"colour": "red"}}).type, "unsupportedFilter")
        self.assertEqual(
            self.error("Email/query", {"filter": {"before": "yesterday"}}).type, "unsupportedFilter"
        )
        self.assertEqual(
            self.error("Email/query", {"sort": [{"property": "colour"}]}).type, "unsupportedSort"
        )
        self.assertEqual(
            self.error("Email/query", {"sort": [{"property": "hasKeyword"}]}).type, "unsupportedSort"
        )
        self.assertEqual(self.error("Email/query", {"anchor": "Mnope"}).type, "anchorNotFound")
        self.assertEqual(self.error("Email/query", {"limit": "ten"}).type, "invalidArguments")

    def test_query_changes(self) -> None:
        a = self.email_id(INBOX, self.deliver(date=1000))
        b = self.email_id(INBOX, self.deliver(date=2000))
        arguments = {"filter": {"notKeyword": "$seen"}}
        state = self.call("Email/query", arguments)["queryState"]
        self.successResultOf(self.box().set_flags([1], [SEEN], FlagMode.ADD))
        c = self.email_id(INBOX, self.deliver(date=3000))
        got = self.call("Email/queryChanges", {**arguments, "sinceQueryState": state, "calculateTotal": True})
        self.assertEqual(sorted(got["removed"]), sorted([a, c]))
        self.assertEqual((got["added"], got["total"]), ([{"id": c, "index": 0}], 2))
        self.assertNotIn(b, got["removed"])
        self.assertEqual(self.call("Email/query", arguments)["ids"], [c, b])
        self.assertEqual(
            self.error("Email/queryChanges", {"sinceQueryState": state, "maxChanges": 1}).type,
            "tooManyChanges",
        )

    # -- Email/changes, Thread ---------------------------------------------

    def test_changes_of_imap_and_delivery(self) -> None:
        self.successResultOf(self.store.create_mailbox("Archive"))
        one = self.deliver()
        two = self.deliver()
        three = self.deliver()
        e1, e2, e3 = (self.email_id(INBOX, u) for u in (one, two, three))
        state = self.state()
        self.successResultOf(self.box().set_flags([one], [ANSWERED], FlagMode.ADD))  # IMAP STORE
        self.successResultOf(self.box().set_flags([two], [DELETED], FlagMode.ADD))
        self.successResultOf(self.box().expunge())  # IMAP EXPUNGE or POP3 DELE+QUIT
        self.successResultOf(self.box().move([three], self.box("Archive")))  # IMAP MOVE
        e4 = self.email_id(INBOX, self.deliver())  # an SMTP delivery
        changes = self.call("Email/changes", {"sinceState": state})
        self.assertEqual(changes["created"], [e4])
        self.assertEqual(sorted(changes["updated"]), sorted([e1, e3]))
        self.assertEqual(changes["destroyed"], [e2])
        self.assertEqual(changes["hasMoreChanges"], False)
        self.assertEqual(changes["newState"], self.state())
        nothing = self.call("Email/changes", {"sinceState": changes["newState"]})
        self.assertEqual((nothing["created"], nothing["updated"], nothing["destroyed"]), ([], [], []))

    def test_changes_created_and_destroyed_in_between(self) -> None:
        state = self.state()
        uid = self.deliver()
        self.email_id(INBOX, uid)
        self.state()  # a client saw it
        self.successResultOf(self.box().set_flags([uid], [DELETED], FlagMode.ADD))
        self.successResultOf(self.box().expunge())
        changes = self.call("Email/changes", {"sinceState": state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([], [], []))

    def test_changes_max_changes(self) -> None:
        self.successResultOf(self.store.create_mailbox("B"))
        state = self.state()
        ids = {self.email_id(INBOX, self.deliver()) for _ in range(5)}
        ids |= {self.email_id("B", self.deliver("B")) for _ in range(2)}
        found: set[str] = set()
        rounds = 0
        more = True
        while more:
            changes = self.call("Email/changes", {"sinceState": state, "maxChanges": 3})
            self.assertLessEqual(len(changes["created"]) + len(changes["updated"]), 3)
            found |= set(changes["created"])
            more, state = changes["hasMoreChanges"], changes["newState"]
            rounds += 1
            self.assertLess(rounds, 10)
        self.assertEqual(found, ids)
        self.assertEqual(state, self.state())

    def test_changes_bad_state(self) -> None:
        self.assertEqual(self.error("Email/changes", {"sinceState": "eAAAA"}).type, "cannotCalculateChanges")
        self.assertEqual(self.error("Email/changes", {"sinceState": None}).type, "invalidArguments")

    def test_state_inflating_too_far(self) -> None:
        """
        A client's state string that inflates past STATE_INFLATED_MAX (a
        "zip bomb": 1 MB of it inflates to about 1 GB) is refused unread;
        this server's own states, and one cut short, are told apart.
        """
        from txmail.jmap import state as state_module

        big = state_module.encode_state("e", [[" " * state_module.STATE_INFLATED_MAX]])
        self.assertLess(len(big), 100_000)
        self.assertIsNone(state_module.decode_state("e", big))
        self.deliver()
        real = self.state()
        entries = state_module.decode_state("e", real)
        self.assertIsNotNone(entries)
        inflated = len(json.dumps(entries, separators=(",", ":")))
        self.patch(state_module, "STATE_INFLATED_MAX", inflated)
        self.assertEqual(state_module.decode_state("e", real), entries)  # just fits
        bomb = state_module.encode_state("e", [[" " * inflated]])
        self.assertLess(len(bomb), 100)
        self.assertIsNone(state_module.decode_state("e", bomb))
        self.assertEqual(self.error("Email/changes", {"sinceState": bomb}).type, "cannotCalculateChanges")
        self.assertIsNone(state_module.decode_state("e", real[:-8]))  # cut short

    def test_changes_after_restart_from_the_store(self) -> None:
        """
        An expunge that this process never listed the message of is named from the EMAILIDs the
        store remembers (IExpungedEmailIds); a store that does not remember them gets
        ``cannotCalculateChanges``, never a wrong list (RFC 8620 section 5.2).
        """
        uid = self.deliver()
        kept = self.deliver()
        gone_id = self.email_id(INBOX, uid)
        state = self.state()
        # A fresh process: the UID -> EMAILID map is gone.
        from txmail.jmap import state as state_module

        state_module._CACHES.clear()
        self.successResultOf(self.box().set_flags([uid], [DELETED], FlagMode.ADD))
        self.successResultOf(self.box().expunge())
        changes = self.call("Email/changes", {"sinceState": state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([], [], [gone_id]))
        state = changes["newState"]
        state_module._CACHES.clear()
        box = self.box()
        box.expunged_email_ids = lambda uids: defer.succeed({})  # a store that forgot them
        self.successResultOf(box.set_flags([kept], [DELETED], FlagMode.ADD))
        self.successResultOf(box.expunge())
        self.assertEqual(self.error("Email/changes", {"sinceState": state}).type, "cannotCalculateChanges")

    def test_threads(self) -> None:
        a = self.email_id(INBOX, self.deliver(message=make_message("Plan", message_id="<a@x>"), date=1000))
        state = self.state()
        b = self.email_id(
            INBOX, self.deliver(message=make_message("Re: Plan", references="<a@x>"), date=2000)
        )
        c = self.email_id(INBOX, self.deliver(message=make_message("Alone"), date=3000))
        got = self.get([a, b, c], properties=["threadId"])
        ta, tb, tc = (g["threadId"] for g in got)
        self.assertEqual(ta, tb)
        self.assertNotEqual(ta, tc)
        threads = self.call("Thread/get", {"ids": [ta, tc, "Tnope"]})
        self.assertEqual(threads["list"], [{"id": ta, "emailIds": [a, b]}, {"id": tc, "emailIds": [c]}])
        self.assertEqual(threads["notFound"], ["Tnope"])
        changes = self.call("Thread/changes", {"sinceState": state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([tc], [ta], []))
        state = changes["newState"]
        self.successResultOf(self.box().set_flags([3], [DELETED], FlagMode.ADD))
        self.successResultOf(self.box().expunge())
        changes = self.call("Thread/changes", {"sinceState": state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([], [], [tc]))

    # -- Email/set ------------------------------------------------------------

    def test_set_keywords(self) -> None:
        uid = self.deliver(flags=(DELETED, "Work"))
        eid = self.email_id(INBOX, uid)
        got = self.call(
            "Email/set", {"update": {eid: {"keywords": {"$seen": True, "work": True, "$junk": True}}}}
        )
        self.assertEqual(got["updated"], {eid: None})
        (info,) = self.successResultOf(self.box().list_messages())
        self.assertEqual(info.flags, {SEEN, DELETED, "Work", "$junk"})
        self.call("Email/set", {"update": {eid: {"keywords/$seen": None, "keywords/$flagged": True}}})
        (info,) = self.successResultOf(self.box().list_messages())
        self.assertEqual(info.flags, {FLAGGED, DELETED, "Work", "$junk"})
        got = self.call(
            "Email/set", {"update": {eid: {"keywords": {"bad keyword": True}}, "Mnope": {"keywords": {}}}}
        )
        self.assertEqual(got["notUpdated"][eid]["type"], "invalidProperties")
        self.assertEqual(got["notUpdated"]["Mnope"]["type"], "notFound")
        got = self.call("Email/set", {"update": {eid: {"subject": "x"}}})
        self.assertEqual(got["notUpdated"][eid]["properties"], ["subject"])

    def test_set_mailboxes(self) -> None:
        for name in ("A", "B"):
            self.successResultOf(self.store.create_mailbox(name))
        uid = self.deliver(flags=(SEEN,))
        eid = self.email_id(INBOX, uid)
        ids = self.mailbox_ids()
        # Move (INBOX -> A), then copy to B: the EMAILID stays.
        got = self.call("Email/set", {"update": {eid: {"mailboxIds": {ids["A"]: True, ids["B"]: True}}}})
        self.assertEqual(got["updated"], {eid: None})
        self.assertEqual(self.successResultOf(self.box().list_messages()), [])
        for name in ("A", "B"):
            (info,) = self.successResultOf(self.box(name).list_messages())
            self.assertEqual((info.email_id, info.flags), (eid, {SEEN}))
        self.call("Email/set", {"update": {eid: {f"mailboxIds/{ids['A']}": None}}})
        self.assertEqual(self.successResultOf(self.box("A").list_messages()), [])
        got = self.call("Email/set", {"update": {eid: {"mailboxIds": {}}}})
        self.assertEqual(got["notUpdated"][eid]["type"], "invalidProperties")
        got = self.call("Email/set", {"update": {eid: {"mailboxIds": {"Fnope": True}}}})
        self.assertEqual(got["notUpdated"][eid]["properties"], ["mailboxIds"])
        # Destroy: every copy expunged, other messages' \\Deleted left alone.
        other = self.deliver("B", flags=(DELETED,))
        state = self.state()
        got = self.call("Email/set", {"destroy": [eid, "Mnope"]})
        self.assertEqual((got["destroyed"], got["notDestroyed"]["Mnope"]["type"]), ([eid], "notFound"))
        self.assertEqual([i.uid for i in self.successResultOf(self.box("B").list_messages())], [other])
        self.assertEqual(self.call("Email/changes", {"sinceState": state})["destroyed"], [eid])

    def test_set_if_in_state(self) -> None:
        self.assertEqual(self.error("Email/set", {"ifInState": "eNope"}).type, "stateMismatch")

    def test_unread_counts_follow_keywords(self) -> None:
        self.successResultOf(self.store.create_mailbox("Trash", SpecialUse.TRASH))
        eid = self.email_id(INBOX, self.deliver())
        (inbox,) = [m for m in self.call("Mailbox/get", {})["list"] if m["role"] == "inbox"]
        self.assertEqual(inbox["unreadEmails"], 1)
        self.call("Email/set", {"update": {eid: {"keywords/$seen": True}}})
        (inbox,) = [m for m in self.call("Mailbox/get", {})["list"] if m["role"] == "inbox"]
        self.assertEqual((inbox["unreadEmails"], inbox["unreadThreads"]), (0, 0))


class MemoryEmailTests(EmailTestsMixin, TestCase):
    """Over the memory store."""


class MaildirEmailTests(MaildirMixin, EmailTestsMixin, TestCase):
    """Over the Maildir store."""


class IncrementalViewMixin(MailMixin):
    """The view patched with each mailbox's changes is the view built anew (:meth:`MailView.updated`)."""

    def test_patched_view_equals_fresh_view(self) -> None:
        import random

        from txmail.jmap import state

        rng = random.Random(14)
        self.successResultOf(self.store.create_mailbox("Other"))
        self.successResultOf(self.store.create_mailbox("Trash", SpecialUse.TRASH))
        names = [INBOX, "Other", "Trash"]
        for step in range(160):
            box = self.box(rng.choice(names))
            infos = self.successResultOf(box.list_messages())
            action = rng.randrange(9)
            movable = [n for n in names if n not in (INBOX, "Trash")]
            if action == 5:
                names.append(f"Box{step}")
                self.successResultOf(self.store.create_mailbox(names[-1]))
            elif action == 6 and len(movable) > 1:
                name = rng.choice(movable)
                names.remove(name)
                self.successResultOf(self.store.delete_mailbox(name))  # as IMAP DELETE, messages and all
            elif action == 7:
                name = rng.choice(names)
                if name in self.successResultOf(self.store.subscriptions()):
                    self.successResultOf(self.store.unsubscribe(name))
                else:
                    self.successResultOf(self.store.subscribe(name))
            elif action == 8 and movable:
                name = rng.choice(movable)
                names[names.index(name)] = f"Renamed{step}"
                self.successResultOf(self.store.rename_mailbox(name, f"Renamed{step}"))
            elif action in (0, 5, 6, 7, 8) or not infos:
                references = f"<t{rng.randrange(5)}@x>" if rng.randrange(3) else None
                box.append(make_message(f"m{step}", references=references), (), 1000 + rng.randrange(100))
            elif action == 1:
                uid = rng.choice(infos).uid
                self.successResultOf(
                    box.set_flags([uid], [SEEN], rng.choice([FlagMode.ADD, FlagMode.REMOVE]))
                )
            elif action == 2:
                uid = rng.choice(infos).uid
                self.successResultOf(box.set_flags([uid], [DELETED], FlagMode.ADD))
                self.successResultOf(box.expunge([uid]))
            elif action == 3:
                other = self.box(rng.choice([n for n in names if n != box.name]))
                self.successResultOf(box.copy([rng.choice(infos).uid], other))
            else:
                other = self.box(rng.choice([n for n in names if n != box.name]))
                self.successResultOf(box.move([rng.choice(infos).uid], other))
            view = self.successResultOf(defer.ensureDeferred(state.mail_view(self.store)))
            fresh = state.MailView(self.store, view.cache, list(view.boxes.values()))
            self.assertEqual(view.order, fresh.order)
            self.assertEqual(
                {e: [(b.id, i) for b, i in c] for e, c in view.emails.items()},
                {e: [(b.id, i) for b, i in c] for e, c in fresh.emails.items()},
            )
            counts = self.successResultOf(defer.ensureDeferred(view.mailbox_counts()))
            self.assertEqual(counts, self.successResultOf(defer.ensureDeferred(fresh.mailbox_counts())))
            fast = self.call(
                "Email/query", {"filter": {"inMailbox": self.box().mailbox_id}, "collapseThreads": True}
            )
            full = self.call(
                "Email/query",
                {
                    "filter": {"inMailbox": self.box().mailbox_id},
                    "collapseThreads": True,
                    "calculateTotal": True,
                },
            )
            self.assertEqual(fast["ids"], full["ids"])


class MemoryIncrementalViewTests(IncrementalViewMixin, TestCase):
    """Over the memory store."""


class MaildirIncrementalViewTests(MaildirMixin, IncrementalViewMixin, TestCase):
    """Over the Maildir store."""


class MaildirRestartTests(MaildirMixin, MailMixin, TestCase):
    """``/changes`` after a restart: the state is the store's modseqs, which the Maildir store keeps."""

    def test_changes_exact_after_restart(self) -> None:
        from twisted.internet import task

        from txmail.store.maildir import MaildirProvider

        root = self.mktemp()
        self.provider = MaildirProvider(root, hostname="mx.test", clock=task.Clock(), watch="off")
        self.store = self.successResultOf(self.provider.store_for(USER))
        self.context.store = self.store
        one = self.deliver()
        self.deliver()
        e1 = self.email_id(INBOX, one)
        email_state = self.call("Email/get", {"ids": []})["state"]
        mailbox_state = self.call("Mailbox/get", {})["state"]
        # A new process over the same files.
        self.provider = MaildirProvider(root, hostname="mx.test", clock=task.Clock(), watch="off")
        self.store = self.successResultOf(self.provider.store_for(USER))
        self.context.store = self.store
        self.successResultOf(self.box().set_flags([one], [SEEN], FlagMode.ADD))
        e3 = self.email_id(INBOX, self.deliver())
        changes = self.call("Email/changes", {"sinceState": email_state})
        self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([e3], [e1], []))
        changes = self.call("Mailbox/changes", {"sinceState": mailbox_state})
        self.assertEqual(
            (changes["updated"], changes["updatedProperties"]),
            ([self.box().mailbox_id], ["totalEmails", "unreadEmails", "totalThreads", "unreadThreads"]),
        )


class _HeldStore:
    """A store whose ``get_mailbox`` of the names in :attr:`held` waits until :meth:`release`."""

    def __init__(self, store: object) -> None:
        self.store = store
        self.held: set[str] = set()
        self.waiting: list[defer.Deferred[object]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    def get_mailbox(self, name: str) -> defer.Deferred[object]:
        d = self.store.get_mailbox(name)  # type: ignore[attr-defined]
        if name not in self.held:
            return d  # type: ignore[no-any-return]
        waiting: defer.Deferred[object] = defer.Deferred()
        self.waiting.append(waiting)
        return waiting.addCallback(lambda _: d)

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)


class OvertakenViewTests(MailMixin, TestCase):
    """A view computed while another call overtakes it is still the store's (no change lost)."""

    def same_as_fresh(self, view: object) -> None:
        from txmail.jmap import state

        fresh = state.MailView(view.store, view.cache, list(view.boxes.values()))  # type: ignore[attr-defined]
        self.assertEqual(
            {e: [(b.id, i) for b, i in c] for e, c in view.emails.items()},  # type: ignore[attr-defined]
            {e: [(b.id, i) for b, i in c] for e, c in fresh.emails.items()},
        )

    def test_overtaken(self) -> None:
        from txmail.jmap import state

        self.successResultOf(self.store.create_mailbox("Other"))
        first = self.deliver()
        self.deliver("Other")
        held = _HeldStore(self.store)
        self.successResultOf(defer.ensureDeferred(state.mail_view(held)))
        self.successResultOf(self.box().set_flags([first], [SEEN], FlagMode.ADD))
        # The slow call lists INBOX, then waits for Other.
        held.held = {"Other"}
        slow = defer.ensureDeferred(state.mail_view(held))
        self.assertNoResult(slow)
        held.held = set()
        fast = self.successResultOf(defer.ensureDeferred(state.mail_view(held)))
        self.same_as_fresh(fast)
        self.successResultOf(self.box().set_flags([first], [FLAGGED], FlagMode.ADD))
        held.release()
        self.same_as_fresh(self.successResultOf(slow))
        now = self.successResultOf(defer.ensureDeferred(state.mail_view(held)))
        self.same_as_fresh(now)
        self.assertIn(
            frozenset({SEEN, FLAGGED}), {i.flags for copies in now.emails.values() for _, i in copies}
        )
