"""
Sieve at delivery, end to end: a real ``smtplib`` client sends to the
in-process server (:class:`txmail.testing.TestServer`), the recipient's
active script (stored through ``ISieveScripts``) decides, and ``imaplib``,
the store and the fake remote MX show what happened: filed into a folder,
flagged, discarded, rejected (``550`` in the transaction or a rejection
message to the sender), redirected to another domain (SRS envelope),
answered by vacation once and then not again, not answered for list mail or
the null sender, a broken script falling back to the INBOX, and hostile
scripts bounded while another user's mail goes through.
"""

from __future__ import annotations

import email
import imaplib
import os
import smtplib
import socket
import time
from typing import Any

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from txmail.testing import TestServer

from .test_lmtp import lmtp_session

ALICE = "alice@example.test"
CAROL = "carol@example.test"
DAVE = "dave@example.test"
PASSWORD = "correct horse"
SENDER = "bob@remote.test"


def message(
    subject: str = "hello",
    *,
    to: str = ALICE,
    sender: str = SENDER,
    extra: str = "",
    message_id: str | None = None,
    body: str = "Hello there.",
) -> bytes:
    mid = message_id or f"<{subject.replace(' ', '.')}.{time.monotonic_ns()}@remote.test>"
    return (
        f"From: Bob <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n{extra}\r\n{body}\r\n"
    ).encode()


def header(data: bytes, name: str) -> list[str]:
    return email.message_from_bytes(data).get_all(name) or []


class SieveDeliveryTests(TestCase):
    timeout = 60
    settings: dict[str, Any] = {"policy": {"srs": {"secrets": ["sieve test secret"]}}}

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.data_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.data_dir)
        self.server = yield self.start_server()
        self.addCleanup(lambda: self.server.stop())

    @defer.inlineCallbacks
    def start_server(self) -> Any:
        server = TestServer(data_dir=self.data_dir, settings=self.settings)
        yield server.start()
        for user in (ALICE, CAROL, DAVE):
            server.add_user(user, PASSWORD)
        return server

    @defer.inlineCallbacks
    def activate(self, user: str, script: str | bytes, name: str = "main", **others: str) -> Any:
        store = yield self.server.stores.store_for(user)
        for other, text in others.items():
            yield store.put_script(other, text.encode())
        yield store.put_script(name, script if isinstance(script, bytes) else script.encode())
        yield store.set_active(name)

    def send(self, rcpts: list[str], data: bytes, sender: str = SENDER) -> defer.Deferred[Any]:
        address = self.server.smtp_address

        def run() -> Any:
            with smtplib.SMTP(*address, timeout=30) as client:
                return client.sendmail(sender, rcpts, data)

        return deferToThread(run)

    def send_status(self, rcpts: list[str], data: bytes, sender: str = SENDER) -> defer.Deferred[Any]:
        """The DATA reply (code, text) of one transaction."""
        address = self.server.smtp_address

        def run() -> tuple[int, bytes]:
            with smtplib.SMTP(*address, timeout=30) as client:
                client.ehlo("client.test")
                client.mail(sender)
                for rcpt in rcpts:
                    client.rcpt(rcpt)
                return client.data(data)

        return deferToThread(run)

    def imap(self, user: str, mailbox: str) -> defer.Deferred[list[tuple[bytes, bytes]]]:
        """(flags, message) of each message in *mailbox*, over IMAP."""
        address = self.server.imap_address

        def run() -> list[tuple[bytes, bytes]]:
            client = imaplib.IMAP4(*address, timeout=30)
            try:
                client.login(user, PASSWORD)
                status, _ = client.select(f'"{mailbox}"', readonly=True)
                if status != "OK":
                    raise AssertionError(f"cannot select {mailbox}")
                _, data = client.fetch("1:*", "(FLAGS BODY.PEEK[])")
                out = []
                for item in data:
                    if isinstance(item, tuple):
                        out.append((item[0], item[1]))
                return out
            finally:
                client.logout()

        return deferToThread(run)

    def sleep(self, seconds: float) -> defer.Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    # -- keep, fileinto, flags, discard, editheader --------------------------------

    @defer.inlineCallbacks
    def test_fileinto_folder_with_flags(self) -> Any:
        """List mail is filed into a folder created on the way, flagged, seen over IMAP; other mail stays in the INBOX."""
        yield self.activate(
            ALICE,
            'require ["fileinto", "mailbox", "imap4flags"];\n'
            'if header :contains "List-Id" "dev.lists.example" {\n'
            '  fileinto :create :flags ["\\\\Flagged", "$Work"] "Lists/dev";\n'
            "}\n",
        )
        yield self.send([ALICE], message("list post", extra="List-Id: Dev <dev.lists.example>\r\n"))
        yield self.send([ALICE], message("personal"))
        filed = yield self.imap(ALICE, "Lists/dev")
        self.assertEqual(len(filed), 1)
        flags, data = filed[0]
        self.assertIn(b"\\Flagged", flags)
        self.assertIn(b"$Work", flags)
        self.assertEqual(header(data, "Subject"), ["list post"])
        inbox = yield self.imap(ALICE, "INBOX")
        self.assertEqual([header(d, "Subject") for _, d in inbox], [["personal"]])

    @defer.inlineCallbacks
    def test_flagged_in_inbox(self) -> Any:
        """addflag and the implicit keep: the INBOX copy carries the flag."""
        yield self.activate(
            ALICE,
            'require "imap4flags";\nif address :domain "from" "remote.test" { addflag "\\\\Flagged"; }\n',
        )
        yield self.send([ALICE], message("important"))
        [(flags, _data)] = yield self.imap(ALICE, "INBOX")
        self.assertIn(b"\\Flagged", flags)

    @defer.inlineCallbacks
    def test_discard(self) -> Any:
        """discard: the client gets 250 and nothing is stored."""
        yield self.activate(ALICE, 'if header :contains "subject" "spam" { discard; }\n')
        code, _ = yield self.send_status([ALICE], message("buy spam now"))
        self.assertEqual(code, 250)
        yield self.send([ALICE], message("ham"))
        inbox = yield self.server.messages_for(ALICE)
        self.assertEqual([header(d, "Subject") for d in inbox], [["ham"]])

    @defer.inlineCallbacks
    def test_editheader_changes_the_stored_copy(self) -> Any:
        """editheader (RFC 5293): the stored copy has the field added and the one deleted."""
        yield self.activate(
            ALICE,
            'require "editheader";\naddheader "X-Filtered" "by sieve";\ndeleteheader "X-Tracking";\n',
        )
        yield self.send([ALICE], message("edited", extra="X-Tracking: 12345\r\n"))
        [data] = yield self.server.messages_for(ALICE)
        self.assertEqual(header(data, "X-Filtered"), ["by sieve"])
        self.assertEqual(header(data, "X-Tracking"), [])

    @defer.inlineCallbacks
    def test_duplicate(self) -> Any:
        """duplicate (RFC 7352): the second message with one Message-ID is discarded."""
        yield self.activate(ALICE, 'require "duplicate";\nif duplicate { discard; stop; }\n')
        yield self.send([ALICE], message("first", message_id="<same@remote.test>"))
        yield self.send([ALICE], message("again", message_id="<same@remote.test>"))
        yield self.send([ALICE], message("other"))
        inbox = yield self.server.messages_for(ALICE)
        self.assertEqual([header(d, "Subject") for d in inbox], [["first"], ["other"]])

    # -- reject and ereject ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_ereject_is_550_in_the_transaction(self) -> Any:
        """ereject for the only recipient: the DATA reply is 550 5.7.1 with the reason; nothing stored or sent."""
        yield self.activate(ALICE, 'require "ereject";\nereject "I do not want\r\nyour mail";\n')
        code, text = yield self.send_status([ALICE], message("unwanted"))
        self.assertEqual(code, 550)
        self.assertEqual(text, b"5.7.1 I do not want your mail")
        self.assertEqual((yield self.server.messages_for(ALICE)), [])
        yield self.sleep(0.2)
        self.assertEqual(self.server.capture.attempts, [])

    @defer.inlineCallbacks
    def test_reject_sends_a_rejection_to_the_sender(self) -> Any:
        """reject with another recipient accepting: 250, Carol gets it, and the sender gets an MDN from <>."""
        yield self.activate(ALICE, 'require "reject";\nreject "Not here, sorry.";\n')
        code, _ = yield self.send_status([ALICE, CAROL], message("two of us", to=f"{ALICE}, {CAROL}"))
        self.assertEqual(code, 250)
        self.assertEqual(len((yield self.server.messages_for(CAROL))), 1)
        self.assertEqual((yield self.server.messages_for(ALICE)), [])
        [notice] = yield self.server.capture.wait_for(1)
        self.assertEqual(notice.mail_from, "")
        self.assertEqual(notice.recipients, (SENDER,))
        parsed = email.message_from_bytes(notice.message)
        self.assertEqual(parsed.get_content_type(), "multipart/report")
        self.assertEqual(parsed.get_param("report-type"), "disposition-notification")
        self.assertEqual(parsed["Subject"], "Rejected: two of us")
        self.assertTrue(parsed["Auto-Submitted"].startswith("auto-replied"))
        parts = list(parsed.walk())
        self.assertIn("Not here, sorry.", parts[1].get_payload(decode=True).decode())
        self.assertIn(b"deleted", notice.message)

    @defer.inlineCallbacks
    def test_ereject_with_another_recipient_becomes_a_rejection_message(self) -> Any:
        """ereject when another recipient takes the message: 250, and the rejection goes to the sender (RFC 5429 section 2.1.2)."""
        yield self.activate(ALICE, 'require "ereject";\nereject "go away";\n')
        code, _ = yield self.send_status([ALICE, CAROL], message("mixed"))
        self.assertEqual(code, 250)
        [notice] = yield self.server.capture.wait_for(1)
        self.assertEqual((notice.mail_from, notice.recipients), ("", (SENDER,)))

    @defer.inlineCallbacks
    def test_ereject_over_lmtp_is_per_recipient(self) -> Any:
        """Over LMTP Alice's ereject is her own 550 5.7.1 after the data; Carol's 250 stands."""
        server = TestServer(settings={"lmtp": ["tcp:0:interface=127.0.0.1"], "smtp": [], "submission": []})
        yield server.start()
        self.addCleanup(server.stop)
        server.add_user(ALICE, PASSWORD)
        server.add_user(CAROL, PASSWORD)
        store = yield server.stores.store_for(ALICE)
        yield store.put_script("main", b'require "ereject";\nereject "not over LMTP either";\n')
        yield store.set_active("main")
        out = yield deferToThread(
            lmtp_session, server.service.address("lmtp"), socket.AF_INET, [ALICE, CAROL], message("lmtp")
        )
        (code_a, lines_a), (code_c, _) = out["results"]
        self.assertEqual((code_a, code_c), (550, 250))
        self.assertEqual(lines_a[0], b"550 5.7.1 <alice@example.test> not over LMTP either")
        self.assertEqual((yield server.messages_for(ALICE)), [])
        self.assertEqual(len((yield server.messages_for(CAROL))), 1)

    # -- redirect ----------------------------------------------------------------------

    @defer.inlineCallbacks
    def test_redirect_to_a_remote_domain_with_srs(self) -> Any:
        """redirect: the copy leaves through the queue with an SRS envelope sender and the loop mark; no local copy."""
        yield self.activate(ALICE, 'redirect "alice@elsewhere.test";\n')
        yield self.send([ALICE], message("forward me"))
        [out] = yield self.server.capture.wait_for(1)
        self.assertEqual(out.recipients, ("alice@elsewhere.test",))
        self.assertTrue(out.mail_from.startswith("SRS0="), out.mail_from)
        self.assertTrue(out.mail_from.endswith("@example.test"), out.mail_from)
        self.assertEqual(header(out.message, "X-Sieve-Redirected-From"), [f"<{ALICE}>"])
        self.assertEqual(header(out.message, "Return-Path"), [])
        self.assertEqual(header(out.message, "Subject"), ["forward me"])
        self.assertEqual((yield self.server.messages_for(ALICE)), [])

    @defer.inlineCallbacks
    def test_redirect_copy_keeps_a_copy(self) -> Any:
        """redirect :copy (RFC 3894): sent on and kept in the INBOX."""
        yield self.activate(ALICE, 'require "copy";\nredirect :copy "alice@elsewhere.test";\n')
        yield self.send([ALICE], message("copy me"))
        yield self.server.capture.wait_for(1)
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 1)

    @defer.inlineCallbacks
    def test_redirect_loop_between_two_users(self) -> Any:
        """Alice redirects to Carol and Carol to Alice: Carol keeps it (already redirected by us), once."""
        yield self.activate(ALICE, f'redirect "{CAROL}";\n')
        yield self.activate(CAROL, f'redirect "{ALICE}";\n')
        yield self.send([ALICE], message("ping pong"))
        [data] = yield self.server.wait_for_messages(CAROL, 1)
        self.assertEqual(header(data, "X-Sieve-Redirected-From"), [f"<{ALICE}>"])
        yield self.sleep(0.5)
        self.assertEqual((yield self.server.messages_for(ALICE)), [])
        self.assertEqual(len((yield self.server.messages_for(CAROL))), 1)
        self.assertEqual(self.server.capture.attempts, [])

    @defer.inlineCallbacks
    def test_redirect_storm_is_bounded(self) -> Any:
        """More redirects than [sieve] max_redirects: the limit, the implicit keep, nothing sent."""
        yield self.activate(ALICE, "".join(f'redirect "u{i}@elsewhere.test";\n' for i in range(50)))
        yield self.send([ALICE], message("storm"))
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 1)
        yield self.sleep(0.3)
        self.assertEqual(self.server.capture.attempts, [])

    # -- vacation ------------------------------------------------------------------------

    VACATION = (
        'require "vacation";\n'
        'vacation :days 7 :subject "Away" :addresses ["alice@example.test"] "I am away until Monday.";\n'
    )

    @defer.inlineCallbacks
    def test_vacation_once_then_not_again(self) -> Any:
        """The first message gets one auto-reply (RFC 3834 fields, from <>); a second within :days gets none, even after a restart."""
        yield self.activate(ALICE, self.VACATION)
        first = message("are you there", message_id="<q1@remote.test>")
        yield self.send([ALICE], first)
        [reply] = yield self.server.capture.wait_for(1)
        self.assertEqual((reply.mail_from, reply.recipients), ("", (SENDER,)))
        self.assertEqual(header(reply.message, "Auto-Submitted"), ["auto-replied"])
        self.assertEqual(header(reply.message, "In-Reply-To"), ["<q1@remote.test>"])
        self.assertEqual(header(reply.message, "Subject"), ["Away"])
        self.assertEqual(header(reply.message, "To"), [SENDER])
        self.assertIn(b"I am away until Monday.", reply.message)
        yield self.send([ALICE], message("still there?"))
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 2)
        # A restart: the state is on disk, so still no second reply.
        yield self.server.stop()
        self.server = yield self.start_server()
        yield self.activate(ALICE, self.VACATION)
        yield self.send([ALICE], message("after the restart"))
        # Another sender is answered: the control that replies do go out.
        yield self.send([ALICE], message("hi", sender="eve@remote.test"), sender="eve@remote.test")
        [other] = yield self.server.capture.wait_for(1)
        self.assertEqual(other.recipients, ("eve@remote.test",))
        yield self.sleep(0.3)
        self.assertEqual(len(self.server.capture.messages), 1)

    @defer.inlineCallbacks
    def test_no_vacation_for_lists_null_sender_or_bcc_mail(self) -> Any:
        """No reply to list mail, bulk mail, auto-submitted mail, the null sender or mail not addressed to the user."""
        yield self.activate(ALICE, self.VACATION)
        yield self.send([ALICE], message("list", extra="List-Id: <dev.lists.example>\r\n"))
        yield self.send([ALICE], message("bulk", extra="Precedence: bulk\r\n"))
        yield self.send([ALICE], message("auto", extra="Auto-Submitted: auto-generated\r\n"))
        yield self.send([ALICE], message("bounce", sender="MAILER-DAEMON@remote.test"), sender="")
        yield self.send([ALICE], message("not to me", to="someone@remote.test"))
        yield self.send(
            [ALICE], message("owner", sender="owner-dev@remote.test"), sender="owner-dev@remote.test"
        )
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 6)
        # The control: a plain message is answered, and it is the only reply.
        yield self.send([ALICE], message("plain"))
        [reply] = yield self.server.capture.wait_for(1)
        self.assertEqual(reply.recipients, (SENDER,))
        yield self.sleep(0.3)
        self.assertEqual(len(self.server.capture.messages), 1)

    # -- never lose mail -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_broken_script_falls_back_to_inbox(self) -> Any:
        """A stored script that does not compile, and one failing at run time: the message lands in the INBOX."""
        yield self.activate(ALICE, b'require "fileinto";\nfileinto "Unclosed;\n')
        yield self.send([ALICE], message("broken"))
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 1)
        yield self.activate(
            CAROL,
            'require ["variables", "reject", "fileinto"];\nset "a" "x";\nfileinto "Folder";\nreject "${a}";\n',
        )
        yield self.send([CAROL], message("runtime"))
        self.assertEqual(len((yield self.server.messages_for(CAROL))), 1)

    @defer.inlineCallbacks
    def test_fileinto_missing_folder_without_create_keeps(self) -> Any:
        """fileinto a folder that does not exist (no :create): the message is kept in the INBOX."""
        yield self.activate(ALICE, 'require "fileinto";\nfileinto "Nowhere";\n')
        yield self.send([ALICE], message("lost?"))
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 1)

    @defer.inlineCallbacks
    def test_deep_includes_and_include_loops_fall_back(self) -> Any:
        """Includes nested past the limit, and an include loop: compile errors, so the INBOX."""
        chain = {f"s{i}": f'require "include";\ninclude "s{i + 1}";\n' for i in range(1, 15)}
        chain["s15"] = "keep;\n"
        yield self.activate(ALICE, 'require "include";\ninclude "s1";\n', **chain)
        yield self.activate(
            CAROL,
            'require "include";\ninclude "b";\n',
            b='require "include";\ninclude "main";\n',
        )
        yield self.send([ALICE, CAROL], message("includes"))
        self.assertEqual(len((yield self.server.messages_for(ALICE))), 1)
        self.assertEqual(len((yield self.server.messages_for(CAROL))), 1)


class HostileScriptTests(TestCase):
    """A script that runs into a large step limit does not hold up another user's delivery."""

    timeout = 300

    @defer.inlineCallbacks
    def test_step_hog_does_not_delay_others(self) -> Any:
        """Dave's script runs for seconds to its step limit (in the pool); Carol's mail is delivered meanwhile; Dave's lands in the INBOX."""
        server = TestServer(settings={"sieve_max_steps": 2_000_000})
        yield server.start()
        self.addCleanup(server.stop)
        server.add_user(DAVE, PASSWORD)
        server.add_user(CAROL, PASSWORD)
        keys = "[" + ",".join(f'"k{i}"' for i in range(1000)) + "]"
        names = "[" + ",".join('"subject"' for _ in range(100)) + "]"
        hog = f"if header :contains {names} {keys} {{ keep; }}\n" * 40
        store = yield server.stores.store_for(DAVE)
        yield store.put_script("hog", hog.encode())
        yield store.set_active("hog")
        address = server.smtp_address
        finished: dict[str, float] = {}

        def send(rcpt: str) -> None:
            with smtplib.SMTP(*address, timeout=60) as client:
                client.sendmail(SENDER, [rcpt], message(f"to {rcpt}", to=rcpt))
            finished[rcpt] = time.monotonic()

        started = time.monotonic()
        slow = deferToThread(send, DAVE)
        yield task.deferLater(reactor, 0.3, lambda: None)
        begun = time.monotonic()
        yield deferToThread(send, CAROL)
        quick = finished[CAROL] - begun
        yield slow
        hog = finished[DAVE] - started
        # Carol's message does not wait for Dave's script: it is done first,
        # in a fraction of the time Dave's run takes (relative, so that a
        # loaded machine slows both alike).
        self.assertLess(finished[CAROL], finished[DAVE])
        self.assertLess(quick, hog / 2)
        self.assertEqual(len((yield server.messages_for(DAVE))), 1)
        self.assertEqual(len((yield server.messages_for(CAROL))), 1)
