"""
New Emails and the other mail methods of RFC 8621: ``Email/set`` create
(drafts), ``Email/import``, ``Email/parse``, ``Email/copy``,
``SearchSnippet/get`` and ``Identity/get`` (:mod:`txmail.jmap.compose`,
:mod:`txmail.jmap.email`, :mod:`txmail.jmap.submission`), over the memory
and Maildir stores.
"""

from __future__ import annotations

import email
import email.policy

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from tests.jmap._mail import ACCOUNT, MaildirMixin, MailMixin, make_message
from txmail.jmap.core import Limits
from txmail.jmap.submission import identity_id
from txmail.model import DRAFT, INBOX, SEEN, SpecialUse

__all__: list[str] = []


class FakeBlobs:
    """The upload store: blob id -> octets, per account."""

    def __init__(self) -> None:
        self.blobs: dict[tuple[str, str], bytes] = {}

    def add(self, blob_id: str, data: bytes) -> str:
        self.blobs[(ACCOUNT, blob_id)] = data
        return blob_id

    def get(self, account_id: str, blob_id: str) -> defer.Deferred[bytes | None]:
        return defer.succeed(self.blobs.get((account_id, blob_id)))


class ComposeTestsMixin(MailMixin):
    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        self.blobs = FakeBlobs()
        self.context.blobs = self.blobs
        self.successResultOf(self.store.create_mailbox("Drafts", SpecialUse.DRAFTS))
        self.drafts = self.box("Drafts").mailbox_id

    def stored(self, name: str = "Drafts") -> email.message.EmailMessage:
        (info,) = self.successResultOf(self.box(name).list_messages())
        data = self.successResultOf(self.box(name).read_message(info.uid))
        self.assertIn(b"\r\n", data)
        self.assertNotIn(b"\n", data.replace(b"\r\n", b""))
        return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]

    def test_create_draft_text_html_attachment(self) -> None:
        self.blobs.add("Gupload1", b"PNGDATA\x00\x01")
        got = self.call(
            "Email/set",
            {
                "create": {
                    "d1": {
                        "mailboxIds": {self.drafts: True},
                        "keywords": {"$draft": True, "$seen": True},
                        "from": [{"name": "Alice Ä", "email": "alice@example.test"}],
                        "to": [{"name": None, "email": "bob@example.test"}],
                        "subject": "Grüße",
                        "inReplyTo": ["orig@example.test"],
                        "header:X-Client": "webmail",
                        "textBody": [{"partId": "t", "type": "text/plain"}],
                        "htmlBody": [{"partId": "h", "type": "text/html"}],
                        "attachments": [{"blobId": "Gupload1", "type": "image/png", "name": "pic.png"}],
                        "bodyValues": {"t": {"value": "Hello\nthere"}, "h": {"value": "<p>Hello</p>"}},
                    }
                }
            },
        )
        created = got["created"]["d1"]
        self.assertEqual(self.context.created_ids["d1"], created["id"])
        self.assertEqual(set(created), {"id", "blobId", "threadId", "size"})
        (info,) = self.successResultOf(self.box("Drafts").list_messages())
        self.assertEqual((info.email_id, info.flags), (created["id"], {DRAFT, SEEN}))
        message = self.stored()
        self.assertEqual(message["Subject"], "Grüße")
        self.assertEqual(str(message["From"]), "Alice Ä <alice@example.test>")
        self.assertEqual(message["In-Reply-To"], "<orig@example.test>")
        self.assertEqual(message["X-Client"], "webmail")
        self.assertTrue(message["Message-ID"].endswith("@example.test>"))
        self.assertIsNotNone(message["Date"])
        self.assertEqual(message.get_content_type(), "multipart/mixed")
        alternative, attachment = message.iter_parts()
        self.assertEqual(alternative.get_content_type(), "multipart/alternative")
        plain, markup = alternative.iter_parts()
        self.assertEqual(plain.get_content().replace("\r\n", "\n"), "Hello\nthere\n")
        self.assertEqual(markup.get_content_type(), "text/html")
        self.assertEqual(
            (attachment.get_filename(), attachment.get_content()), ("pic.png", b"PNGDATA\x00\x01")
        )
        # What Email/get makes of it.
        (read,) = self.call(
            "Email/get",
            {
                "ids": [created["id"]],
                "properties": ["subject", "keywords", "attachments", "bodyValues"],
                "fetchTextBodyValues": True,
            },
        )["list"]
        self.assertEqual(read["subject"], "Grüße")
        self.assertEqual(read["keywords"], {"$draft": True, "$seen": True})
        self.assertEqual([a["name"] for a in read["attachments"]], ["pic.png"])
        self.assertEqual(next(iter(read["bodyValues"].values()))["value"], "Hello\nthere\n")

    def test_create_from_body_structure_and_sent_at(self) -> None:
        got = self.call(
            "Email/set",
            {
                "create": {
                    "d": {
                        "mailboxIds": {self.drafts: True, self.box().mailbox_id: True},
                        "sentAt": "2026-12-01T10:00:00+01:00",
                        "receivedAt": "2026-12-01T09:00:00Z",
                        "bodyStructure": {
                            "type": "multipart/alternative",
                            "subParts": [
                                {"partId": "1", "type": "text/plain"},
                                {"partId": "2", "type": "text/html"},
                            ],
                        },
                        "bodyValues": {"1": {"value": "plain"}, "2": {"value": "<b>rich</b>"}},
                    }
                }
            },
        )
        eid = got["created"]["d"]["id"]
        (read,) = self.call(
            "Email/get", {"ids": [eid], "properties": ["mailboxIds", "sentAt", "receivedAt", "preview"]}
        )["list"]
        self.assertEqual(len(read["mailboxIds"]), 2)
        self.assertEqual(read["sentAt"], "2026-12-01T10:00:00+01:00")
        self.assertEqual(read["receivedAt"], "2026-12-01T09:00:00Z")
        self.assertEqual(read["preview"], "plain")
        self.assertEqual(self.stored().get_content_type(), "multipart/alternative")

    def test_create_errors(self) -> None:
        got = self.call(
            "Email/set",
            {
                "create": {
                    "nobox": {"subject": "x"},
                    "badbox": {"mailboxIds": {"Fnope": True}},
                    "id": {"mailboxIds": {self.drafts: True}, "id": "Mx"},
                    "value": {"mailboxIds": {self.drafts: True}, "textBody": [{"partId": "missing"}]},
                    "blob": {"mailboxIds": {self.drafts: True}, "attachments": [{"blobId": "Gnope"}]},
                    "address": {"mailboxIds": {self.drafts: True}, "from": [{"email": "not an address"}]},
                    "keyword": {"mailboxIds": {self.drafts: True}, "keywords": {"a b": True}},
                    "crlf": {"mailboxIds": {self.drafts: True}, "subject": "a\r\nBcc: x@y"},
                }
            },
        )
        errors = got["notCreated"]
        self.assertEqual(
            set(errors), {"nobox", "badbox", "id", "value", "blob", "address", "keyword", "crlf"}
        )
        self.assertEqual({e["type"] for e in errors.values()}, {"invalidProperties"})
        self.assertEqual(errors["id"]["properties"], ["id"])
        self.assertEqual(errors["crlf"]["properties"], ["subject"])
        self.assertEqual(self.successResultOf(self.box("Drafts").list_messages()), [])

    def test_create_too_large(self) -> None:
        """A created Email larger than maxSizeUpload is refused with tooLarge (RFC 8621 section 4.6)."""
        self.blobs.add("Gbig", b"x" * 3000)
        self.context.limits = Limits(max_size_upload=2000)
        props = {"mailboxIds": {self.drafts: True}, "attachments": [{"blobId": "Gbig", "type": "text/plain"}]}
        got = self.call("Email/set", {"create": {"big": props}})
        self.assertEqual(got["notCreated"]["big"]["type"], "tooLarge")
        self.assertEqual(self.successResultOf(self.box("Drafts").list_messages()), [])
        self.context.limits = Limits(max_size_upload=20000)
        got = self.call("Email/set", {"create": {"big": props}})
        self.assertIn("big", got["created"])

    def test_import_and_parse(self) -> None:
        raw = make_message("Imported", body="from a file").replace(b"\r\n", b"\n")
        self.blobs.add("Graw", raw)
        inbox = self.box().mailbox_id
        got = self.call(
            "Email/import",
            {
                "emails": {
                    "i": {
                        "blobId": "Graw",
                        "mailboxIds": {inbox: True},
                        "keywords": {"$seen": True},
                        "receivedAt": "2020-01-02T03:04:05Z",
                    },
                    "j": {"blobId": "Gnope", "mailboxIds": {inbox: True}},
                }
            },
        )
        self.assertEqual(got["notCreated"]["j"]["type"], "blobNotFound")
        eid = got["created"]["i"]["id"]
        (info,) = self.successResultOf(self.box().list_messages())
        self.assertEqual((info.email_id, info.flags, info.internal_date), (eid, {SEEN}, 1577934245))
        self.assertEqual(self.successResultOf(self.box().read_message(info.uid)), raw.replace(b"\n", b"\r\n"))
        parsed = self.call(
            "Email/parse",
            {"blobIds": ["Graw", "Gnope"], "properties": ["subject", "preview", "id", "textBody"]},
        )
        self.assertEqual(parsed["notFound"], ["Gnope"])
        self.assertEqual(parsed["parsed"]["Graw"]["subject"], "Imported")
        self.assertEqual(parsed["parsed"]["Graw"]["preview"], "from a file")
        self.assertEqual(parsed["parsed"]["Graw"]["id"], None)
        self.assertEqual(self.error("Email/parse", {"blobIds": "Graw"}).type, "invalidArguments")
        self.assertEqual(
            self.error("Email/import", {"emails": [], "ifInState": "x"}).type, "invalidArguments"
        )

    def test_copy_is_within_one_account(self) -> None:
        error = self.error("Email/copy", {"fromAccountId": ACCOUNT, "create": {}})
        self.assertEqual((error.type, error.properties["arguments"]), ("invalidArguments", ["fromAccountId"]))
        self.assertEqual(
            self.error("Email/copy", {"fromAccountId": "someone", "create": {}}).type, "fromAccountNotFound"
        )

    def test_search_snippet(self) -> None:
        uid = self.deliver(
            message=make_message("Budget <draft>", body="The budget for next year is attached.")
        )
        eid = self.email_id(INBOX, uid)
        got = self.call("SearchSnippet/get", {"emailIds": [eid, "Mnope"], "filter": {"text": "budget"}})
        (snippet,) = got["list"]
        self.assertEqual(snippet["subject"], "<mark>Budget</mark> &lt;draft&gt;")
        self.assertEqual(snippet["preview"], "The <mark>budget</mark> for next year is attached.")
        self.assertEqual(got["notFound"], ["Mnope"])
        got = self.call("SearchSnippet/get", {"emailIds": [eid], "filter": {"subject": "year"}})
        self.assertEqual(got["list"], [{"emailId": eid, "subject": None, "preview": None}])

    def test_identity(self) -> None:
        got = self.call("Identity/get", {})
        (identity,) = got["list"]
        self.assertEqual(
            (identity["email"], identity["id"]), (self.context.user, identity_id(self.context.user))
        )
        self.assertEqual(self.call("Identity/get", {"ids": ["Inope"]})["notFound"], ["Inope"])
        self.assertEqual(self.call("Identity/changes", {"sinceState": got["state"]})["created"], [])

    def test_identity_set_changes_nothing(self) -> None:
        """RFC 8621 section 6.3: the one identity is fixed, so every operation is forbidden (another id notFound)."""
        own = identity_id(self.context.user)
        state = self.call("Identity/get", {})["state"]
        got = self.call(
            "Identity/set",
            {
                "ifInState": state,
                "create": {"k": {"email": self.context.user, "name": "Me"}},
                "update": {own: {"name": "Someone"}, "Inope": {"name": "x"}},
                "destroy": [own, "Inope"],
            },
        )
        self.assertEqual((got["oldState"], got["newState"]), (state, state))
        self.assertEqual((got["created"], got["updated"], got["destroyed"]), (None, None, None))
        self.assertEqual(got["notCreated"]["k"]["type"], "forbidden")
        self.assertEqual(
            {i: e["type"] for i, e in got["notUpdated"].items()}, {own: "forbidden", "Inope": "notFound"}
        )
        self.assertEqual(
            {i: e["type"] for i, e in got["notDestroyed"].items()}, {own: "forbidden", "Inope": "notFound"}
        )
        self.assertEqual(self.call("Identity/get", {})["list"][0]["name"], "")
        self.assertEqual(
            self.error("Identity/set", {"ifInState": "s9", "destroy": [own]}).type, "stateMismatch"
        )
        self.assertEqual(self.error("Identity/set", {"destroy": [own, 5]}).type, "invalidArguments")
        empty = self.call("Identity/set", {})
        self.assertEqual(
            (empty["notCreated"], empty["notUpdated"], empty["notDestroyed"]), (None, None, None)
        )

    def test_submission_query(self) -> None:
        """RFC 8621 sections 7.3 and 7.4: no submission is kept, so none matches; the arguments are still checked."""
        got = self.call(
            "EmailSubmission/query",
            {
                "filter": {
                    "operator": "OR",
                    "conditions": [
                        {"identityIds": [identity_id(self.context.user)], "undoStatus": "final"},
                        {"after": "2026-12-01T00:00:00Z", "before": "2026-12-08T00:00:00Z", "emailIds": []},
                    ],
                },
                "sort": [{"property": "sentAt", "isAscending": False}, {"property": "emailId"}],
                "calculateTotal": True,
                "limit": 10,
            },
        )
        self.assertEqual(
            {k: got[k] for k in ("ids", "position", "total", "canCalculateChanges")},
            {"ids": [], "position": 0, "total": 0, "canCalculateChanges": True},
        )
        changes = self.call(
            "EmailSubmission/queryChanges", {"sinceQueryState": got["queryState"], "calculateTotal": True}
        )
        self.assertEqual(
            (
                changes["oldQueryState"],
                changes["newQueryState"],
                changes["added"],
                changes["removed"],
                changes["total"],
            ),
            (got["queryState"], got["queryState"], [], [], 0),
        )
        for arguments, kind in [
            ({"filter": {"subject": "x"}}, "unsupportedFilter"),
            ({"filter": {"undoStatus": "sent"}}, "unsupportedFilter"),
            ({"filter": {"before": "yesterday"}}, "unsupportedFilter"),
            ({"filter": {"emailIds": "M1"}}, "unsupportedFilter"),
            ({"filter": {"operator": "XOR", "conditions": []}}, "unsupportedFilter"),
            ({"filter": []}, "unsupportedFilter"),
            ({"sort": [{"property": "subject"}]}, "unsupportedSort"),
            ({"sort": [{"property": "sentAt", "isAscending": "no"}]}, "unsupportedSort"),
            ({"sort": [[]]}, "unsupportedSort"),
            ({"sort": {}}, "invalidArguments"),
            ({"position": "1"}, "invalidArguments"),
            ({"limit": -1}, "invalidArguments"),
            ({"anchor": "S1"}, "anchorNotFound"),
            ({"calculateTotal": 1}, "invalidArguments"),
        ]:
            self.assertEqual(self.error("EmailSubmission/query", arguments).type, kind, arguments)
        for arguments, kind in [
            ({"sinceQueryState": "s9"}, "cannotCalculateChanges"),
            ({}, "invalidArguments"),
            ({"sinceQueryState": got["queryState"], "maxChanges": 0}, "invalidArguments"),
            ({"sinceQueryState": got["queryState"], "upToId": 3}, "invalidArguments"),
            ({"sinceQueryState": got["queryState"], "filter": {"x": 1}}, "unsupportedFilter"),
        ]:
            self.assertEqual(self.error("EmailSubmission/queryChanges", arguments).type, kind, arguments)


class MemoryComposeTests(ComposeTestsMixin, TestCase):
    """Over the memory store."""


class MaildirComposeTests(MaildirMixin, ComposeTestsMixin, TestCase):
    """Over the Maildir store."""
