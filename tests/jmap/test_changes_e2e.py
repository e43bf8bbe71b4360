"""
End to end over the real server (Maildir store, build_service): JMAP ``/changes`` over HTTP
after deliveries over SMTP, flag changes and expunges made over IMAP, and deletions made over
POP3 (RFC 8620 section 5.2, RFC 8621 sections 2.2 and 4.3), and the same states after the
server is started again on the same data.
"""

from __future__ import annotations

import base64
import http.client
import imaplib
import json
import os
import poplib
import smtplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.e2e._server import start_server
from txmail.jmap.core import CORE, MAIL

ALICE = "alice@example.test"
PASSWORD = "alice secret"
LOOPBACK = "tcp:0:interface=127.0.0.1"


def message(n: int) -> bytes:
    return f"From: bob@remote.test\r\nSubject: note {n}\r\nMessage-ID: <n{n}@remote.test>\r\n\r\nbody {n}\r\n".encode()


class ChangesOverTheProtocolsTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.data_dir = os.path.abspath(self.mktemp())
        self.server = yield self.start()

    def start(self) -> Any:
        return start_server(self, data_dir=self.data_dir, web=[LOOPBACK], imap=[LOOPBACK], pop3=[LOOPBACK])

    # -- clients (blocking, run in threads) --

    def api(self, *calls: list[Any]) -> list[list[Any]]:
        host, port = self.server.address("web")
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
            body = json.dumps({"using": [CORE, MAIL], "methodCalls": list(calls)})
            connection.request(
                "POST",
                "/jmap/api",
                body=body,
                headers={"Authorization": "Basic " + auth, "Content-Type": "application/json"},
            )
            response = connection.getresponse()
            data = response.read()
            assert response.status == 200, (response.status, data)
            return json.loads(data)["methodResponses"]
        finally:
            connection.close()

    def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        account = self.account()
        [[answer, result, _]] = self.api([name, {"accountId": account, **arguments}, "c"])
        assert answer == name, (answer, result)
        return result

    def account(self) -> str:
        host, port = self.server.address("web")
        connection = http.client.HTTPConnection(host, port, timeout=30)
        try:
            auth = base64.b64encode(f"{ALICE}:{PASSWORD}".encode()).decode()
            connection.request("GET", "/jmap/session", headers={"Authorization": "Basic " + auth})
            session = json.loads(connection.getresponse().read())
            return session["primaryAccounts"][MAIL]
        finally:
            connection.close()

    def send(self, *numbers: int) -> None:
        with smtplib.SMTP(*self.server.address("mta"), timeout=30) as client:
            for n in numbers:
                client.sendmail("bob@remote.test", [ALICE], message(n))

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(*self.server.address("imap"))
        client.login(ALICE, PASSWORD)
        client.select("INBOX")
        return client

    def ids_by_subject(self) -> dict[str, str]:
        query = self.call("Email/query", {})
        got = self.call("Email/get", {"ids": query["ids"], "properties": ["subject"]})
        return {email["subject"]: email["id"] for email in got["list"]}

    def email_state(self) -> str:
        state: str = self.call("Email/get", {"ids": []})["state"]
        return state

    def changes(self, since: str) -> dict[str, Any]:
        return self.call("Email/changes", {"sinceState": since})

    # -- the test --

    def test_changes_from_smtp_imap_and_pop3(self) -> Any:
        """Each protocol's change is in the next Email/changes: created, updated, destroyed."""
        self.server.directory.add_user(ALICE, PASSWORD)

        def run() -> None:
            self.send(1, 2, 3)
            ids = self.ids_by_subject()
            self.assertEqual(sorted(ids), ["note 1", "note 2", "note 3"])
            state = self.email_state()
            mailbox_state = self.call("Mailbox/get", {"ids": None})["state"]

            # SMTP: a delivery is a creation.
            self.send(4)
            changes = self.changes(state)
            ids = self.ids_by_subject()
            self.assertEqual(
                (changes["created"], changes["updated"], changes["destroyed"]), ([ids["note 4"]], [], [])
            )
            self.assertEqual(changes["oldState"], state)
            state = changes["newState"]

            # IMAP STORE: a flag change is an update, and the keyword shows.
            client = self.imap()
            client.store(b"1", "+FLAGS", r"(\Flagged)")
            changes = self.changes(state)
            self.assertEqual(
                (changes["created"], changes["updated"], changes["destroyed"]), ([], [ids["note 1"]], [])
            )
            got = self.call("Email/get", {"ids": [ids["note 1"]], "properties": ["keywords"]})
            self.assertEqual(got["list"][0]["keywords"], {"$flagged": True})
            state = changes["newState"]

            # IMAP EXPUNGE: a destruction.
            client.store(b"2", "+FLAGS", r"(\Deleted)")
            client.expunge()
            client.logout()
            changes = self.changes(state)
            self.assertEqual(changes["destroyed"], [ids["note 2"]])
            self.assertEqual(changes["created"], [])
            state = changes["newState"]

            # POP3 DELE + QUIT: a destruction too (RETR marks the rest \Seen: updates).
            pop = poplib.POP3(*self.server.address("pop3"), timeout=30)
            pop.user(ALICE)
            pop.pass_(PASSWORD)
            count, _ = pop.stat()
            self.assertEqual(count, 3)
            listing = {}
            for n in range(1, count + 1):
                lines = pop.top(n, 0)[1]
                subject = next(line for line in lines if line.startswith(b"Subject:"))
                listing[subject.decode()[len("Subject: ") :]] = n
            pop.dele(listing["note 3"])
            pop.quit()
            changes = self.changes(state)
            self.assertEqual(changes["destroyed"], [ids["note 3"]])
            self.assertEqual(changes["created"], [])
            state = changes["newState"]

            # Nothing more: no changes, the same state.
            changes = self.changes(state)
            self.assertEqual((changes["created"], changes["updated"], changes["destroyed"]), ([], [], []))
            self.assertEqual(changes["newState"], state)

            # The INBOX's counts changed: Mailbox/changes names it.
            inbox = self.call("Mailbox/query", {"filter": {"role": "inbox"}})["ids"][0]
            mailbox_changes = self.call("Mailbox/changes", {"sinceState": mailbox_state})
            self.assertIn(inbox, mailbox_changes["updated"])
            self.final_state = state

        return deferToThread(run)

    @defer.inlineCallbacks
    def test_states_survive_a_restart(self) -> Any:
        """
        A state given before the server stops still works after it starts again on the same
        data: /changes since it names nothing at first, then the flag change and the expunge
        made over IMAP after the restart, and only them.
        """
        self.server.directory.add_user(ALICE, PASSWORD)
        yield deferToThread(self.send, 1, 2)
        ids = yield deferToThread(self.ids_by_subject)
        state = yield deferToThread(self.email_state)
        yield self.server.stopService()
        self.server = yield self.start()  # the same data directory: users, mail, indexes

        def run() -> None:
            unchanged = self.changes(state)
            self.assertEqual(
                (unchanged["created"], unchanged["updated"], unchanged["destroyed"]), ([], [], [])
            )
            client = self.imap()
            client.store(b"2", "+FLAGS", r"(\Seen)")
            client.logout()
            changes = self.changes(state)
            self.assertEqual(
                (changes["created"], changes["updated"], changes["destroyed"]), ([], [ids["note 2"]], [])
            )
            client = self.imap()
            client.store(b"1", "+FLAGS", r"(\Deleted)")
            client.expunge()
            client.logout()
            changes = self.changes(state)
            self.assertEqual((changes["updated"], changes["destroyed"]), ([ids["note 2"]], [ids["note 1"]]))

        yield deferToThread(run)

    @defer.inlineCallbacks
    def test_expunge_before_the_first_call_after_a_restart(self) -> Any:
        """
        A message expunged after a restart, before any JMAP call learnt its EMAILID, is named
        exactly: the Maildir index keeps the EMAILIDs of expunged messages (IExpungedEmailIds).
        """
        self.server.directory.add_user(ALICE, PASSWORD)
        yield deferToThread(self.send, 1, 2)
        ids = yield deferToThread(self.ids_by_subject)
        state = yield deferToThread(self.email_state)
        yield self.server.stopService()
        self.server = yield self.start()

        def run() -> None:
            client = self.imap()
            client.store(b"1", "+FLAGS", r"(\Deleted)")
            client.expunge()
            client.logout()
            changes = self.changes(state)
            self.assertEqual(
                (changes["created"], changes["updated"], changes["destroyed"]), ([], [], [ids["note 1"]])
            )

        yield deferToThread(run)
