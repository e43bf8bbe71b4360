"""
``EmailSubmission/set`` (RFC 8621 section 7.5) against a real server
(:class:`txmail.testing.TestServer`): the submission path of SMTP (sender
ownership, recipient checks, the router: local mailboxes, the queue), and
the implied ``Email/set`` of ``onSuccessUpdateEmail``/``onSuccessDestroyEmail``.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import TestCase

from txmail.jmap.core import MAIL, SUBMISSION, CallContext, MethodError, Registry
from txmail.jmap.mail import capabilities
from txmail.jmap.submission import identity_id
from txmail.model import SpecialUse
from txmail.testing import TestServer

__all__: list[str] = []

ALICE = "alice@example.test"
BOB = "bob@example.test"
REGISTRY = Registry(capabilities())


class SubmissionTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = TestServer()
        yield self.server.start()
        self.addCleanup(self.server.stop)
        self.server.add_user(ALICE, "secret")
        self.server.add_user(BOB, "secret")
        self.server.add_alias("sales@example.test", ALICE)
        self.store = yield self.server.stores.store_for(ALICE)
        yield self.store.create_mailbox("Drafts", SpecialUse.DRAFTS)
        yield self.store.create_mailbox("Sent", SpecialUse.SENT)
        self.context = CallContext(
            ALICE, "a", self.store, server=self.server.service, using=frozenset({MAIL, SUBMISSION})
        )

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        found = REGISTRY.method(name)
        assert found is not None
        return await found[1](self.context, {"accountId": "a", **arguments})  # type: ignore[no-any-return,misc]

    async def boxes(self) -> dict[str, str]:
        got = await self.call("Mailbox/get", {"properties": ["role"]})
        return {m["role"]: m["id"] for m in got["list"] if m["role"]}

    async def draft(self, sender: str, to: list[str], bcc: list[str] = ()) -> str:  # type: ignore[assignment]
        roles = await self.boxes()
        got = await self.call(
            "Email/set",
            {
                "create": {
                    "d": {
                        "mailboxIds": {roles["drafts"]: True},
                        "keywords": {"$draft": True, "$seen": True},
                        "from": [{"name": "Alice", "email": sender}],
                        "to": [{"email": t} for t in to],
                        "bcc": [{"email": b} for b in bcc] or None,
                        "subject": "Lunch?",
                        "textBody": [{"partId": "1"}],
                        "bodyValues": {"1": {"value": "At noon."}},
                    }
                }
            },
        )
        return got["created"]["d"]["id"]  # type: ignore[no-any-return]

    def test_local_delivery_and_sent_copy(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._local())

    async def _local(self) -> None:
        roles = await self.boxes()
        eid = await self.draft(ALICE, [BOB], bcc=["sales@example.test"])
        got = await self.call(
            "EmailSubmission/set",
            {
                "create": {"s": {"identityId": identity_id(ALICE), "emailId": eid}},
                "onSuccessUpdateEmail": {
                    "#s": {
                        f"mailboxIds/{roles['drafts']}": None,
                        f"mailboxIds/{roles['sent']}": True,
                        "keywords/$draft": None,
                    }
                },
            },
        )
        self.assertEqual(got["created"]["s"]["undoStatus"], "final")
        self.assertEqual(got["created"]["s"]["deliveryStatus"][BOB]["delivered"], "yes")
        self.assertIsNone(got["notCreated"])
        (received,) = await self.server.wait_for_messages(BOB, 1)
        self.assertIn(b"Subject: Lunch?", received)
        self.assertIn(b"At noon.", received)
        self.assertNotIn(b"Bcc:", received)
        self.assertIn(b"Received: from jmap", received)
        # The Bcc recipient (an alias of Alice's) got it too.
        self.assertEqual(len(await self.server.wait_for_messages(ALICE, 1)), 1)
        ((name, implied),) = self.context.extra_responses
        self.assertEqual((name, implied["updated"]), ("Email/set", {eid: None}))
        (email,) = (await self.call("Email/get", {"ids": [eid], "properties": ["mailboxIds", "keywords"]}))[
            "list"
        ]
        self.assertEqual(email["mailboxIds"], {roles["sent"]: True})
        self.assertEqual(email["keywords"], {"$seen": True})

    def test_forged_sender_refused(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._forged())

    async def _forged(self) -> None:
        eid = await self.draft(BOB, [BOB])
        got = await self.call(
            "EmailSubmission/set",
            {
                "create": {"s": {"identityId": identity_id(ALICE), "emailId": eid}},
                "onSuccessDestroyEmail": ["#s"],
            },
        )
        self.assertEqual(got["notCreated"]["s"]["type"], "forbiddenFrom")
        eid = await self.draft(ALICE, [BOB])
        envelope = {"mailFrom": {"email": BOB}, "rcptTo": [{"email": BOB}]}
        got = await self.call(
            "EmailSubmission/set",
            {"create": {"s": {"identityId": identity_id(ALICE), "emailId": eid, "envelope": envelope}}},
        )
        self.assertEqual(got["notCreated"]["s"]["type"], "forbiddenFrom")
        self.assertEqual(await self.server.messages_for(BOB), [])
        self.assertEqual(self.context.extra_responses, [])

    def test_alias_sender_and_remote_recipient(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._remote())

    async def _remote(self) -> None:
        eid = await self.draft("sales@example.test", ("carol@remote.test",))
        got = await self.call(
            "EmailSubmission/set",
            {
                "create": {"s": {"identityId": identity_id(ALICE), "emailId": eid}},
                "onSuccessDestroyEmail": ["#s"],
            },
        )
        self.assertIsNone(got["notCreated"])
        self.assertEqual(got["created"]["s"]["deliveryStatus"]["carol@remote.test"]["delivered"], "queued")
        (captured,) = await self.server.capture.wait_for(1)
        self.assertEqual(
            (captured.mail_from, captured.recipients), ("sales@example.test", ("carol@remote.test",))
        )
        ((_, implied),) = self.context.extra_responses
        self.assertEqual(implied["destroyed"], [eid])

    def test_bad_input(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._bad())

    async def _bad(self) -> None:
        eid = await self.draft(ALICE, [BOB])
        got = await self.call(
            "EmailSubmission/set",
            {
                "create": {
                    "identity": {"identityId": "Inope", "emailId": eid},
                    "email": {"identityId": identity_id(ALICE), "emailId": "Mnope"},
                    "unknown": {"identityId": identity_id(ALICE), "emailId": eid, "sendAt": "now"},
                    "rcpt": {
                        "identityId": identity_id(ALICE),
                        "emailId": eid,
                        "envelope": {
                            "mailFrom": {"email": ALICE},
                            "rcptTo": [{"email": "nobody@example.test"}],
                        },
                    },
                }
            },
        )
        errors = got["notCreated"]
        self.assertEqual(errors["identity"]["properties"], ["identityId"])
        self.assertEqual(errors["email"]["properties"], ["emailId"])
        self.assertEqual(errors["unknown"]["properties"], ["sendAt"])
        self.assertEqual(errors["rcpt"]["type"], "invalidRecipients")
        self.assertEqual(errors["rcpt"]["invalidRecipients"], ["nobody@example.test"])
        with self.assertRaises(MethodError):
            await self.call("EmailSubmission/set", {"onSuccessDestroyEmail": "x"})
        # Envelope addresses SMTP cannot carry (a line end would start a
        # field of its own in the Received field): refused, nothing sent.
        bad = ["x@remote.test\r\nBcc: injected@evil.test", "<x@remote.test>", "a@b@remote.test",
               "x@remote.test SIZE=1", "x\x00@remote.test", "a" * 65 + "@remote.test"]  # fmt: skip
        envelope = {"mailFrom": {"email": ALICE}, "rcptTo": [{"email": b} for b in [BOB, *bad]]}
        create = {"s": {"identityId": identity_id(ALICE), "emailId": eid, "envelope": envelope}}
        got = await self.call("EmailSubmission/set", {"create": create})
        self.assertEqual(got["notCreated"]["s"]["type"], "invalidRecipients")
        self.assertEqual(got["notCreated"]["s"]["invalidRecipients"], bad)
        envelope = {"mailFrom": {"email": ALICE + "\r\nX: y"}, "rcptTo": [{"email": BOB}]}
        create = {"s": {"identityId": identity_id(ALICE), "emailId": eid, "envelope": envelope}}
        got = await self.call("EmailSubmission/set", {"create": create})
        self.assertEqual(got["notCreated"]["s"]["properties"], ["envelope"])
        # Patches checked before anything is sent (a client told of an error would send again).
        create = {"s": {"identityId": identity_id(ALICE), "emailId": eid}}
        with self.assertRaises(MethodError):
            await self.call("EmailSubmission/set", {"create": create, "onSuccessUpdateEmail": {"#s": 5}})
        self.assertEqual(self.server.capture.messages, [])
        self.assertEqual(await self.server.messages_for(BOB), [])

    def test_dkim_signed_where_configured(self) -> defer.Deferred[None]:
        return defer.ensureDeferred(self._signed())

    async def _signed(self) -> None:
        from twisted.internet import reactor

        from tests._dkim import load_key
        from txmail._fs import run_inline
        from txmail.policy import dkim
        from txmail.policy.authentication import DKIMSigner

        private, _record = dkim.generate_key("ed25519-sha256")
        signer = DKIMSigner(
            [load_key("example.test", "jmap", private)], run_blocking=run_inline, clock=reactor
        )
        service = self.server.service
        assert service is not None
        service.policies = [*service.policies, signer]
        eid = await self.draft(ALICE, [BOB])
        got = await self.call(
            "EmailSubmission/set", {"create": {"s": {"identityId": identity_id(ALICE), "emailId": eid}}}
        )
        self.assertIsNone(got["notCreated"])
        (received,) = await self.server.wait_for_messages(BOB, 1)
        self.assertIn(b"DKIM-Signature:", received)
        self.assertIn(b"d=example.test", received)
        self.assertIn(b"s=jmap", received)
