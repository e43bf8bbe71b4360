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


#: Messages a stranger can send, each naming a charset or a date that Python's
#: codecs and date functions refuse in their own ways.
_HOSTILE_MESSAGES = {
    "idna": b"Subject: a\r\nContent-Type: text/plain; charset=idna\r\n\r\nxn--\xff-\r\n",
    "punycode": b"Subject: b\r\nContent-Type: text/plain; charset=punycode\r\n\r\n\xff\xfe-\r\n",
    "utf-7": b"Subject: c\r\nContent-Type: text/plain; charset=utf-7\r\n\r\nlone +2AA- half\r\n",
    "unicode-escape": b"Subject: d\r\nContent-Type: text/plain; charset=unicode-escape\r\n\r\nx \\ud800 y\r\n",
    "filename": (
        b"Subject: e\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
        b"hi\r\n--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=idna''%ff%fe\r\n\r\nxx\r\n--b--\r\n"
    ),
    "date": b"Subject: f\r\nDate: Mon, 1 Jan 99999999999 00:00:00 +0000\r\nContent-Type: text/plain\r\n\r\nx\r\n",
    # Encoded words (RFC 2047) in such charsets, and a written "\ud800" next to one.
    "subject-words": b"Subject: =?unicode_escape?b?XHVkODAw?= =?idna?q?xn--=FF?=\r\n\r\nx\r\n",
    "from-utf-7": b"From: =?utf-7?q?+2D8-?= <a@b.example>\r\nSubject: g\r\n\r\nx\r\n",
    "escape": b"Subject: =?utf-8?q?x?= \\ud800\r\n\r\nx\r\n",
}


class HostileContentTests(MailMixin, TestCase):
    def test_hostile_messages_are_read(self) -> None:
        """
        A message whose charset is no text encoding Python decodes with
        replacement (idna, punycode), decodes to lone surrogates (utf-7,
        unicode-escape), or whose Date is beyond any year is read by
        Email/get, Email/query and SearchSnippet/get: the octets replaced
        and flagged, never a serverFail, and the answer is valid JSON.
        """
        import json

        for name, message in _HOSTILE_MESSAGES.items():
            eid = self.email_id("INBOX", self.deliver(message=message))
            got = self.call(
                "Email/get",
                {
                    "ids": [eid],
                    "properties": [
                        "subject",
                        "from",
                        "sentAt",
                        "receivedAt",
                        "bodyValues",
                        "textBody",
                        "attachments",
                    ],
                    "fetchAllBodyValues": True,
                },
            )
            (email,) = got["list"]
            json.dumps(got, ensure_ascii=False).encode("utf-8")  # no lone surrogate anywhere
            values = list(email["bodyValues"].values())
            self.assertTrue(values, name)
            if name in ("idna", "punycode", "utf-7", "unicode-escape"):
                self.assertTrue(values[0]["isEncodingProblem"], name)
            if name == "utf-7":
                self.assertEqual(values[0]["value"], "lone \ufffd half\n")
            if name == "filename":
                self.assertEqual(email["attachments"][0]["name"], "\ufffd\ufffd")
            if name == "date":
                self.assertIsNone(email["sentAt"])
            found = self.call("Email/query", {"filter": {"text": "half"}, "sort": [{"property": "sentAt"}]})
            self.assertIsInstance(found["ids"], list)
            snippets = self.call("SearchSnippet/get", {"emailIds": [eid], "filter": {"text": "x"}})
            json.dumps(snippets, ensure_ascii=False).encode("utf-8")
            parsed = self.call("Email/parse", {"blobIds": [email["textBody"][0]["blobId"]]})
            json.dumps(parsed, ensure_ascii=False).encode("utf-8")

    def test_made_up_states_and_arguments(self) -> None:
        """
        State strings a client made up (entries of other shapes: infinity,
        text for numbers) are cannotCalculateChanges; a sort property or an
        onSuccessDestroyEmail id of another JSON type is a method error.
        """
        from txmail.jmap.state import encode_state

        box = self.box().mailbox_id
        self.deliver()
        for entries in (
            [[box, float("inf"), 1, 1, 1]],
            [[box, 1, "9", 1, 1]],
            [[box, 1, 2, 3]],
            [[box, True, 1, 1, 1]],
            [[1, 1, 1, 1, 1]],
        ):
            state = encode_state("e", entries)
            for method, argument in (
                ("Email/changes", "sinceState"),
                ("Thread/changes", "sinceState"),
                ("Email/queryChanges", "sinceQueryState"),
            ):
                self.assertEqual(
                    self.error(method, {argument: state}).type, "cannotCalculateChanges", entries
                )
        for prop in ([], {}, 1, None):
            self.assertEqual(
                self.error("Email/query", {"sort": [{"property": prop}]}).type, "unsupportedSort"
            )
        error = self.error("EmailSubmission/set", {"onSuccessDestroyEmail": [[]]})
        self.assertEqual(error.type, "invalidArguments")

    def test_creations_the_message_library_refuses(self) -> None:
        """
        An Email/set create the standard library's message refuses as it is
        built (line ends in values, a header given twice, values of other
        JSON types) is notCreated with invalidProperties, and stores nothing.
        """
        box = self.box().mailbox_id
        blob = self.call(
            "Email/get", {"ids": [self.email_id("INBOX", self.deliver())], "properties": ["blobId"]}
        )
        blob_id = blob["list"][0]["blobId"]
        before = self.successResultOf(self.box().list_messages())
        attachment = {"blobId": blob_id, "type": "application/pdf"}
        for extra in (
            {"headers": [{"name": "X-A", "value": "a\r\nb"}]},
            {"subject": "a", "headers": [{"name": "Subject", "value": "b"}]},
            {"headers": [{"name": "Date", "value": "x"}, {"name": "Date", "value": "y"}]},
            {"to": [{"email": "a@b.example"}], "header:To:asAddresses": [{"email": "c@d.example"}]},
            {"header:X-A:asAddresses": [{"email": "a@b.example"}]},
            {"header:X-A:asMessageIds": 5},
            {"header:X-A:asURLs": ["a\r\nb"]},
            {"header:Content-Type": "text/plain"},
            {"messageId": ["x\r\ny@z"]},
            {"sentAt": "2020-01-01T00:00:00z"},
            {"attachments": [{**attachment, "name": "a\r\nb"}]},
            {"attachments": [{**attachment, "disposition": "x\r\ny"}]},
            {"attachments": [{**attachment, "type": "text/plain", "charset": 5}]},
            {"bodyStructure": {"type": "multipart/x\r\ny", "subParts": [{"partId": "1"}]}, "bodyValues": {"1": {"value": "x"}}},
        ):  # fmt: skip
            got = self.call("Email/set", {"create": {"c": {"mailboxIds": {box: True}, **extra}}})
            if got["created"]:  # taken as valid (a value the library writes some other way)
                self.call("Email/set", {"destroy": [got["created"]["c"]["id"]]})
                continue
            self.assertEqual(got["notCreated"]["c"]["type"], "invalidProperties", extra)
        self.assertEqual(self.successResultOf(self.box().list_messages()), before)
