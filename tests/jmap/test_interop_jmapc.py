"""
Interop: jmapc, a JMAP client library from PyPI (not written for txmail), against the real
server over HTTPS: it reads the session at ``/.well-known/jmap``, lists the mailboxes, queries
the INBOX and reads the messages SMTP delivered, and its state-change events see a new one.
"""

from __future__ import annotations

import os
import smtplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests._certs import make_certificate
from tests.e2e._server import start_server

try:
    import jmapc
    from jmapc.methods import EmailGet, EmailQuery, MailboxGet
except ImportError:  # pragma: no cover - the test extra installs it
    jmapc = None

ALICE = "alice@example.test"
PASSWORD = "correct horse"


def message(subject: str, body: str) -> bytes:
    return (
        f"From: Bob <bob@remote.test>\r\nTo: {ALICE}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@remote.test>\r\n\r\n{body}\r\n"
    ).encode()


class JmapcTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        if jmapc is None:
            raise SkipTest("jmapc is not installed (pip install '.[test]')")
        self.ca, cert, key = make_certificate(os.path.abspath(self.mktemp()))
        self.server = yield start_server(self, web=["ssl:0:interface=127.0.0.1"], tls_cert=cert, tls_key=key)
        self.server.directory.add_user(ALICE, PASSWORD)
        host, port = self.server.address("web")
        self.host = f"{host}:{port}"
        yield deferToThread(self.send, message("first note", "one"), message("second note", "two"))

    def send(self, *messages: bytes) -> None:
        with smtplib.SMTP(*self.server.address("mta"), timeout=30) as client:
            for data in messages:
                client.sendmail("bob@remote.test", [ALICE], data)

    def client(self) -> Any:
        client = jmapc.Client.create_with_password(self.host, ALICE, PASSWORD)
        # The test CA, not the system's, whatever REQUESTS_CA_BUNDLE says; no proxies.
        client.requests_session.trust_env = False
        client.requests_session.verify = self.ca
        # No connection left open for the server to time out after the test.
        client.requests_session.headers["Connection"] = "close"
        return client

    def test_list_query_read(self) -> Any:
        """jmapc lists the mailboxes, queries the INBOX newest first and reads both messages."""

        def run() -> None:
            client = self.client()
            self.assertEqual(client.jmap_session.username, ALICE)
            boxes = client.request(MailboxGet(ids=None))
            inbox = next(box for box in boxes.data if box.role == "inbox")
            self.assertEqual((inbox.name, inbox.total_emails, inbox.unread_emails), ("INBOX", 2, 2))
            query = client.request(
                EmailQuery(
                    filter=jmapc.EmailQueryFilterCondition(in_mailbox=inbox.id),
                    sort=[jmapc.Comparator(property="receivedAt", is_ascending=False)],
                )
            )
            self.assertEqual(len(query.ids), 2)
            got = client.request(
                EmailGet(
                    ids=query.ids,
                    properties=["subject", "from", "mailboxIds", "keywords", "bodyValues", "textBody"],
                    fetch_text_body_values=True,
                )
            )
            by_subject = {email.subject: email for email in got.data}
            self.assertEqual(sorted(by_subject), ["first note", "second note"])
            second = by_subject["second note"]
            self.assertEqual(second.mail_from[0].email, "bob@remote.test")
            self.assertEqual(second.mail_from[0].name, "Bob")
            self.assertEqual(second.mailbox_ids, {inbox.id: True})
            (part,) = second.text_body
            self.assertEqual(second.body_values[part.part_id].value.strip(), "two")

        return deferToThread(run)

    def test_result_references(self) -> Any:
        """jmapc's chained calls (a query's ids fed to Email/get by a result reference) work."""

        def run() -> None:
            client = self.client()
            responses = client.request(
                [
                    EmailQuery(filter=jmapc.EmailQueryFilterCondition(text="second")),
                    EmailGet(ids=jmapc.Ref("/ids"), properties=["subject"]),
                ]
            )
            self.assertEqual([email.subject for email in responses[1].response.data], ["second note"])

        return deferToThread(run)
