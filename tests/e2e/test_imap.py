"""
End to end: the real service on loopback, driven by the stdlib's imaplib
(and raw sockets where imaplib cannot express the exchange): mail delivered
by SMTP is read over IMAP; folders, flags, search, partial fetches, UIDPLUS,
MOVE, IDLE push, two sessions on one mailbox, STARTTLS, and POP3's
deletions seen as EXPUNGE.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import smtplib
import socket
import ssl
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests._certs import make_certificate
from tests.e2e._server import start_server
from txmail.errors import UserExists

USER = "alice@example.test"
PASSWORD = "correct horse"
ENDPOINT = "tcp:0:interface=127.0.0.1"


def message(subject: str, body: str = "Hello\r\n", sender: str = "bob@remote.test") -> bytes:
    return (f"From: Bob <{sender}>\r\nTo: {USER}\r\nSubject: {subject}\r\n\r\n{body}").encode()


class IMAPTestCase(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield self.start()

    @defer.inlineCallbacks
    def start(self, **overrides: Any) -> Any:
        values: dict[str, Any] = {"imap": [ENDPOINT]}
        values.update(overrides)
        server = yield start_server(self, **values)
        with contextlib.suppress(UserExists):
            server.directory.add_user(USER, PASSWORD)
        return server

    def imap(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4(*self.server.address("imap"), timeout=20)
        self.addCleanup(_close, client)
        return client

    def login(self) -> imaplib.IMAP4:
        client = self.imap()
        client.login(USER, PASSWORD)
        return client

    def send(self, *bodies: bytes) -> defer.Deferred[None]:
        def run() -> None:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                for body in bodies:
                    s.sendmail("bob@remote.test", [USER], body)

        return deferToThread(run)


def _close(client: imaplib.IMAP4) -> None:
    with contextlib.suppress(Exception):
        client.shutdown()


def ok(result: tuple[str, Any]) -> Any:
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


class RawClient:
    """A line-level IMAP client on a plain socket, for IDLE and pipelining."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=20)
        self.file = self.sock.makefile("rb")
        self.greeting = self.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def readline(self) -> bytes:
        line = self.file.readline()
        if not line:
            raise EOFError("connection closed")
        return line

    def until(self, prefix: bytes) -> list[bytes]:
        """Lines up to and including the first that starts with *prefix*."""
        lines = []
        while True:
            line = self.readline()
            lines.append(line)
            if line.startswith(prefix):
                return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag + b" ")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ReadTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_smtp_mail_is_read_over_imap(self) -> Any:
        """SMTP delivers; SELECT, FETCH of envelope, structure, body and a partial section read it back."""
        yield self.send(message("first", "Line one\r\nLine two\r\n"), message("second"))

        def run() -> dict[str, Any]:
            c = self.login()
            out = {"select": ok(c.select("INBOX"))}
            out["envelope"] = ok(c.fetch("1", "(UID FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE)"))
            out["text"] = ok(c.fetch("1", "(BODY.PEEK[TEXT])"))
            out["partial"] = ok(c.fetch("1", "(BODY.PEEK[TEXT]<5.3>)"))
            out["fields"] = ok(c.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
            out["flags_before"] = ok(c.fetch("1", "(FLAGS)"))
            out["body"] = ok(c.fetch("1", "(BODY[])"))
            out["flags_after"] = ok(c.fetch("1", "(FLAGS)"))
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertEqual(out["select"], [b"2"])
        envelope = out["envelope"][0]
        self.assertIn(b'"first"', envelope)
        self.assertIn(b'(("Bob" NIL "bob" "remote.test"))', envelope)
        self.assertIn(b'BODYSTRUCTURE ("TEXT" "PLAIN"', envelope)
        self.assertEqual(out["text"][0][1], b"Line one\r\nLine two\r\n")
        self.assertIn(b"BODY[TEXT]<5>", out["partial"][0][0])
        self.assertEqual(out["partial"][0][1], b"one")
        self.assertEqual(out["fields"][0][1], b"Subject: second\r\n\r\n")
        self.assertNotIn(b"\\Seen", out["flags_before"][0])
        self.assertTrue(out["body"][0][1].endswith(b"Line one\r\nLine two\r\n"))
        self.assertIn(b"\\Seen", out["flags_after"][0])

    @defer.inlineCallbacks
    def test_search_store_expunge(self) -> Any:
        """SEARCH by subject and flags, STORE, EXPUNGE with renumbering, UID SEARCH, ESEARCH."""
        yield self.send(message("apple"), message("banana"), message("apple pie"))

        def run() -> dict[str, Any]:
            c = self.login()
            ok(c.select("INBOX"))
            out = {"subject": ok(c.search(None, "SUBJECT", "apple"))}
            out["store"] = ok(c.store("1", "+FLAGS", "(\\Deleted \\Flagged)"))
            out["deleted"] = ok(c.search(None, "DELETED"))
            out["or"] = ok(c.search(None, "OR", "FLAGGED", "SUBJECT", "banana"))
            out["expunge"] = ok(c.expunge())
            out["after"] = ok(c.search(None, "ALL"))
            out["uids"] = ok(c.uid("SEARCH", "SUBJECT", "apple"))
            c._simple_command("SEARCH", "RETURN", "(MIN COUNT)", "ALL")
            out["esearch"] = c.untagged_responses.pop("ESEARCH", None)
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertEqual(out["subject"], [b"1 3"])
        self.assertEqual(out["store"], [b"1 (FLAGS (\\Deleted \\Flagged \\Recent))"])
        self.assertEqual(out["deleted"], [b"1"])
        self.assertEqual(out["or"], [b"1 2"])
        self.assertEqual(out["expunge"], [b"1"])
        self.assertEqual(out["after"], [b"1 2"])
        self.assertEqual(out["uids"], [b"3"])
        self.assertEqual(out["esearch"], [b'(TAG "' + out["esearch"][0].split(b'"')[1] + b'") MIN 1 COUNT 2'])

    @defer.inlineCallbacks
    def test_bad_input_keeps_session(self) -> Any:
        """Bad syntax, unknown commands and wrong-state commands get BAD; the session goes on."""

        def run() -> list[list[bytes]]:
            raw = RawClient(self.server.address("imap"))
            try:
                answers = [
                    raw.command(b"a1", b"FROB"),
                    raw.command(b"a2", b"SELECT INBOX"),
                    raw.command(b"a3", b'LOGIN "alice@example.test" "wrong"'),
                    raw.command(b"a4", b'LOGIN "alice@example.test" "correct horse"'),
                    raw.command(b"a5", b"FETCH 1 (FLAGS)"),
                    raw.command(b"a6", b"SELECT INBOX"),
                    raw.command(b"a7", b"FETCH 5 (FLAGS)"),
                    raw.command(b"a8", b"FETCH 1:* (FLAGS"),
                    raw.command(b"a9", b"NOOP"),
                ]
            finally:
                raw.close()
            return answers

        answers = yield deferToThread(run)
        self.assertTrue(answers[0][-1].startswith(b"a1 BAD"))
        self.assertTrue(answers[1][-1].startswith(b"a2 BAD"))
        self.assertTrue(answers[2][-1].startswith(b"a3 NO [AUTHENTICATIONFAILED]"))
        self.assertTrue(answers[3][-1].startswith(b"a4 OK"))
        self.assertTrue(answers[4][-1].startswith(b"a5 BAD"))
        self.assertTrue(answers[5][-1].startswith(b"a6 OK [READ-WRITE]"))
        self.assertTrue(answers[6][-1].startswith(b"a7 BAD"))
        self.assertTrue(answers[7][-1].startswith(b"a8 BAD"))
        self.assertEqual(answers[8], [b"a9 OK NOOP completed\r\n"])


class QuotaE2ETests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_quota_reported_and_enforced(self) -> Any:
        """imaplib's GETQUOTAROOT sees [quota] storage; an APPEND past it gets NO [OVERQUOTA]; delivery past it 452."""
        self.server = yield self.start(quota_storage=4096)
        yield self.send(b"Subject: one\r\n\r\n" + b"x" * 1000 + b"\r\n")

        def run() -> tuple[Any, Any, Any]:
            client = self.login()
            typ, data = client.getquotaroot("INBOX")
            assert typ == "OK", data
            over = client.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"y" * 4000 + b"\r\n")
            return data, over, client.capabilities

        data, over, capabilities = yield deferToThread(run)
        self.assertIn("QUOTA", capabilities)
        self.assertEqual(data[0], [b'INBOX ""'])
        self.assertRegex(data[1][0], rb'^"" \(STORAGE [12] 4\)$')
        self.assertEqual(over[0], "NO")
        self.assertIn(b"[OVERQUOTA]", over[1][0])

        def deliver() -> Any:
            with smtplib.SMTP(*self.server.address("mta")) as s:
                return s.sendmail("bob@remote.test", [USER], b"Subject: two\r\n\r\n" + b"z" * 3500 + b"\r\n")

        with self.assertRaises(smtplib.SMTPDataError) as cm:
            yield deferToThread(deliver)
        self.assertEqual(cm.exception.smtp_code, 452)


class IDTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_maximal_id_command(self) -> Any:
        """RFC 2971 section 3.3: 30 pairs with 1,024-octet values (~32 KB) fit the default line limit; 70 KB do not."""

        def run() -> tuple[list[bytes], list[bytes], list[bytes]]:
            raw = RawClient(self.server.address("imap"))
            try:
                pairs = b" ".join(b'"field%02d" "%s"' % (i, b"v" * 1024) for i in range(30))
                big = raw.command(b"i1", b"ID (" + pairs + b")")
                huge = raw.command(b"i2", b"ID (" + pairs * 2 + b")")
                after = raw.command(b"i3", b"NOOP")
            finally:
                raw.close()
            return big, huge, after

        big, huge, after = yield deferToThread(run)
        self.assertTrue(big[0].startswith(b"* ID ("), big)
        self.assertEqual(big[-1], b"i1 OK ID completed\r\n")
        self.assertTrue(huge[-1].startswith(b"i2 BAD"), huge)
        self.assertEqual(after, [b"i3 OK NOOP completed\r\n"])


class FolderTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_special_use_folders_and_management(self) -> Any:
        """A new user gets the RFC 6154 folders; CREATE, RENAME, DELETE, SUBSCRIBE, LSUB, LIST-EXTENDED, STATUS."""

        def run() -> dict[str, Any]:
            c = self.login()
            out = {"list": ok(c.list())}
            ok(c.create("Projects/2026"))
            out["children"] = ok(c.list(pattern="Projects*"))
            ok(c.rename("Projects", "Work"))
            out["renamed"] = ok(c.list(pattern="*"))
            ok(c.subscribe("Work/2026"))
            out["lsub"] = ok(c.lsub(pattern="Work/*"))
            ok(c.delete("Work/2026"))
            out["deleted"] = ok(c.list(pattern="Work*"))
            out["exists"] = c.create("INBOX")[0]
            ok(c._simple_command("LIST", "(SPECIAL-USE)", '""', "*"))
            out["special"] = c.untagged_responses.pop("LIST")
            c._simple_command("LIST", '""', "%", "RETURN", "(STATUS (MESSAGES UIDNEXT))")
            out["list_status"] = c.untagged_responses.pop("STATUS", [])
            c.untagged_responses.pop("LIST", None)
            out["unicode"] = ok(c.create("&AMk-t&AOk-"))
            out["utf7_list"] = ok(c.list(pattern="&AMk-*"))
            out["escape"] = c.create("../other")[0]
            c.logout()
            return out

        out = yield deferToThread(run)
        names = [re.search(rb'"/" (.*)$', line).group(1) for line in out["list"]]
        self.assertEqual(names, [b"INBOX", b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"])
        self.assertIn(b"(\\HasNoChildren \\Sent)", b" ".join(out["list"]))
        self.assertEqual(
            out["children"],
            [b'(\\HasChildren) "/" Projects', b'(\\HasNoChildren) "/" Projects/2026'],
        )
        self.assertIn(b'(\\HasNoChildren) "/" Work/2026', out["renamed"])
        self.assertEqual(out["lsub"], [b'() "/" Work/2026'])
        self.assertEqual(out["deleted"], [b'(\\HasNoChildren) "/" Work'])
        self.assertEqual(out["exists"], "NO")
        self.assertEqual(len(out["special"]), 5)
        self.assertIn(b"INBOX (MESSAGES 0 UIDNEXT 1)", out["list_status"])
        self.assertEqual(out["utf7_list"], [b'(\\HasNoChildren) "/" &AMk-t&AOk-'])
        self.assertEqual(out["escape"], "NO")

    @defer.inlineCallbacks
    def test_append_copy_move_uidplus(self) -> Any:
        """APPEND gives APPENDUID, COPY gives COPYUID, MOVE expunges from the source; TRYCREATE for a missing target."""
        yield self.send(message("one"), message("two"), message("three"))

        def run() -> dict[str, Any]:
            c = self.login()
            out = {"append": ok(c.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nbody\r\n"))}
            ok(c.select("INBOX"))
            out["copy"] = ok(c.copy("1:2", "Archive"))
            out["trycreate"] = c.copy("1", "Nowhere")
            typ, data = c._simple_command("MOVE", "2:3", "Trash")
            out["move"] = (typ, data, c.untagged_responses.pop("EXPUNGE", None))
            out["left"] = ok(c.fetch("1:*", "(UID)"))
            out["archive"] = ok(c.status("Archive", "(MESSAGES)"))
            out["trash"] = ok(c.status("Trash", "(MESSAGES)"))
            ok(c.select("Drafts", readonly=True))
            out["draft"] = ok(c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
            out["readonly_store"] = c.store("1", "+FLAGS", "(\\Seen)")[0]
            c.logout()
            return out

        out = yield deferToThread(run)
        self.assertRegex(out["append"][0], rb"^\[APPENDUID \d+ 1\] APPEND completed$")
        self.assertRegex(out["copy"][0], rb"^\[COPYUID \d+ 1:2 1:2\] COPY completed$")
        self.assertEqual(out["trycreate"][0], "NO")
        self.assertIn(b"[TRYCREATE]", out["trycreate"][1][0])
        self.assertEqual(out["move"][0], "OK")
        self.assertEqual(out["move"][2], [b"2", b"2"])
        self.assertEqual(out["left"], [b"1 (UID 1)"])
        self.assertEqual(out["archive"], [b"Archive (MESSAGES 2)"])
        self.assertEqual(out["trash"], [b"Trash (MESSAGES 2)"])
        self.assertIn(b"\\Draft", out["draft"][0][0])
        self.assertEqual(out["draft"][0][1], b"Subject: draft\r\n\r\n")
        self.assertEqual(out["readonly_store"], "NO")


class LimitTests(IMAPTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.server = yield self.start(imap_max_literal=1000)

    @defer.inlineCallbacks
    def test_oversized_append_refused_before_its_octets(self) -> Any:
        """APPENDLIMIT is advertised; a larger synchronizing literal gets NO [TOOBIG] and no continuation."""

        def run() -> tuple[bytes, list[bytes], list[bytes]]:
            raw = RawClient(self.server.address("imap"))
            try:
                raw.command(b"l1", b'LOGIN "alice@example.test" "correct horse"')
                caps = raw.command(b"l2", b"CAPABILITY")[0]
                refused = raw.command(b"l3", b"APPEND INBOX {5000}")
                raw.send(b"l4 APPEND INBOX {12}\r\n")
                cont = raw.readline()
                raw.send(b"Subject: x\r\n\r\n")
                accepted = [cont, *raw.until(b"l4 ")]
            finally:
                raw.close()
            return caps, refused, accepted

        caps, refused, accepted = yield deferToThread(run)
        self.assertIn(b"APPENDLIMIT=1000", caps)
        self.assertEqual(len(refused), 1)
        self.assertTrue(refused[0].startswith(b"l3 NO [TOOBIG]"), refused)
        self.assertTrue(accepted[0].startswith(b"+ "))
        self.assertTrue(accepted[-1].startswith(b"l4 OK [APPENDUID "), accepted)

    @defer.inlineCallbacks
    def test_rename_inbox_moves_messages(self) -> Any:
        """RENAME INBOX moves its messages to the new mailbox and leaves INBOX empty (RFC 3501 section 6.3.5)."""
        yield self.send(message("one"), message("two"))

        def run() -> tuple[Any, Any]:
            c = self.login()
            ok(c.rename("INBOX", "Old"))
            return ok(c.status("INBOX", "(MESSAGES)")), ok(c.status("Old", "(MESSAGES)"))

        inbox, old = yield deferToThread(run)
        self.assertEqual(inbox, [b"INBOX (MESSAGES 0)"])
        self.assertEqual(old, [b"Old (MESSAGES 2)"])


class ConcurrencyTests(IMAPTestCase):
    @defer.inlineCallbacks
    def test_idle_sees_delivery_flags_and_expunge(self) -> Any:
        """
        Two sessions on INBOX, one in IDLE: SMTP delivery, the other session's
        STORE and its EXPUNGE all reach the idling session at once.
        """
        yield self.send(message("existing"))
        raw = yield deferToThread(RawClient, self.server.address("imap"))
        self.addCleanup(raw.close)

        def start_idle() -> list[bytes]:
            raw.command(b"i1", b'LOGIN "alice@example.test" "correct horse"')
            raw.command(b"i2", b"SELECT INBOX")
            raw.send(b"i3 IDLE\r\n")
            return raw.until(b"+ ")

        yield deferToThread(start_idle)
        yield self.send(message("new one"))
        line = yield deferToThread(raw.readline)
        self.assertEqual(line, b"* 2 EXISTS\r\n")
        line = yield deferToThread(raw.readline)
        # The SELECT claimed the first message as \\Recent; the new one joins it.
        self.assertEqual(line, b"* 2 RECENT\r\n")

        def other_session() -> None:
            c = self.login()
            ok(c.select("INBOX"))
            ok(c.store("1", "+FLAGS", "(\\Flagged)"))

        yield deferToThread(other_session)
        line = yield deferToThread(raw.readline)
        self.assertEqual(line, b"* 1 FETCH (FLAGS (\\Flagged \\Recent))\r\n")

        def expunge() -> None:
            c = self.login()
            ok(c.select("INBOX"))
            ok(c.store("1", "+FLAGS", "(\\Deleted)"))
            ok(c.expunge())

        yield deferToThread(expunge)
        lines = yield deferToThread(lambda: [raw.readline(), raw.readline()])
        self.assertEqual(lines, [b"* 1 FETCH (FLAGS (\\Deleted \\Flagged \\Recent))\r\n", b"* 1 EXPUNGE\r\n"])
        done = yield deferToThread(lambda: (raw.send(b"DONE\r\n"), raw.until(b"i3 "))[1])
        self.assertEqual(done, [b"i3 OK IDLE terminated\r\n"])
        after = yield deferToThread(raw.command, b"i4", b"FETCH 1:* (UID)")
        self.assertEqual(after, [b"* 1 FETCH (UID 2)\r\n", b"i4 OK FETCH completed\r\n"])

    @defer.inlineCallbacks
    def test_recent_goes_to_one_session(self) -> Any:
        """\\Recent is given to exactly one session (RFC 3501 section 2.3.2)."""
        yield self.send(message("fresh"))

        def run() -> tuple[Any, Any]:
            a = self.login()
            b = self.login()
            ra = ok(a.select("INBOX"))
            rb = ok(b.select("INBOX"))
            return (a.untagged_responses.get("RECENT"), b.untagged_responses.get("RECENT"), ra, rb)

        recent_a, recent_b, _, _ = yield deferToThread(run)
        self.assertEqual(recent_a, [b"1"])
        self.assertEqual(recent_b, [b"0"])

    @defer.inlineCallbacks
    def test_no_expunge_during_fetch(self) -> Any:
        """An EXPUNGE by another session is held back during FETCH and sent after NOOP (RFC 3501 section 7.4.1)."""
        yield self.send(message("a"), message("b"))

        def run() -> tuple[list[bytes], list[bytes]]:
            raw = RawClient(self.server.address("imap"))
            try:
                raw.command(b"r1", b'LOGIN "alice@example.test" "correct horse"')
                raw.command(b"r2", b"SELECT INBOX")
                c = self.login()
                ok(c.select("INBOX"))
                ok(c.store("1", "+FLAGS", "(\\Deleted)"))
                ok(c.expunge())
                fetch = raw.command(b"r3", b"FETCH 2 (UID)")
                noop = raw.command(b"r4", b"NOOP")
            finally:
                raw.close()
            return fetch, noop

        fetch, noop = yield deferToThread(run)
        self.assertNotIn(b"EXPUNGE", b"".join(fetch))
        self.assertIn(b"* 2 FETCH (UID 2)\r\n", fetch)
        self.assertIn(b"* 1 EXPUNGE\r\n", noop)

    @defer.inlineCallbacks
    def test_pop3_deletion_is_expunge_for_imap(self) -> Any:
        """A POP3 DELE + QUIT shows up in an IMAP session on INBOX as EXPUNGE."""
        self.server = yield self.start(pop3=[ENDPOINT])
        yield self.send(message("for pop"))

        def run() -> list[bytes]:
            raw = RawClient(self.server.address("imap"))
            try:
                raw.command(b"p1", b'LOGIN "alice@example.test" "correct horse"')
                raw.command(b"p2", b"SELECT INBOX")
                pop = poplib.POP3(*self.server.address("pop3"), timeout=20)
                pop.user(USER)
                pop.pass_(PASSWORD)
                pop.dele(1)
                pop.quit()
                return raw.command(b"p3", b"NOOP")
            finally:
                raw.close()

        lines = yield deferToThread(run)
        self.assertIn(b"* 1 EXPUNGE\r\n", lines)


class TLSTests(IMAPTestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Any:
        directory = self.mktemp()
        self.ca, cert, key = make_certificate(directory, "mx.example.test")
        self.server = yield self.start(tls_cert=cert, tls_key=key, plaintext_auth="never")

    @defer.inlineCallbacks
    def test_starttls_discards_pipelined_commands(self) -> Any:
        """LOGINDISABLED before TLS; commands pipelined after STARTTLS are never answered (CVE-2011-0411)."""

        def run() -> dict[str, Any]:
            raw = RawClient(self.server.address("imap"))
            out: dict[str, Any] = {"greeting": raw.greeting}
            out["login"] = raw.command(b"t1", b'LOGIN "alice@example.test" "correct horse"')
            raw.send(b"t2 STARTTLS\r\nt3 CAPABILITY\r\n")
            out["starttls"] = raw.until(b"t2 ")
            context = ssl.create_default_context(cafile=self.ca)
            tls = context.wrap_socket(raw.sock, server_hostname="mx.example.test")
            f = tls.makefile("rb")
            tls.sendall(b"t4 CAPABILITY\r\n")
            lines = []
            while True:
                line = f.readline()
                lines.append(line)
                if line.startswith(b"t4 ") or not line:
                    break
            out["after"] = lines
            tls.sendall(b't5 LOGIN "alice@example.test" "correct horse"\r\n')
            out["login_tls"] = f.readline()
            tls.close()
            return out

        out = yield deferToThread(run)
        self.assertIn(b"LOGINDISABLED", out["greeting"])
        self.assertIn(b"STARTTLS", out["greeting"])
        self.assertTrue(out["login"][-1].startswith(b"t1 NO [PRIVACYREQUIRED]"))
        self.assertEqual(out["starttls"], [b"t2 OK Begin TLS negotiation now\r\n"])
        self.assertTrue(out["after"][0].startswith(b"* CAPABILITY"))
        self.assertNotIn(b"STARTTLS", out["after"][0])
        self.assertNotIn(b"LOGINDISABLED", out["after"][0])
        self.assertFalse(any(line.startswith(b"t3") for line in out["after"]))
        self.assertTrue(out["login_tls"].startswith(b"t5 OK"))

    @defer.inlineCallbacks
    def test_implicit_tls_and_authenticate_plain(self) -> Any:
        """imaplib over IMAPS (port 993 style) with AUTHENTICATE PLAIN."""
        self.server = yield self.start(
            imap=["ssl:0:interface=127.0.0.1"],
            tls_cert=self.server.settings.tls_cert,
            tls_key=self.server.settings.tls_key,
        )

        def run() -> Any:
            context = ssl.create_default_context(cafile=self.ca)
            host, port = self.server.address("imap")
            c = imaplib.IMAP4_SSL(
                "localhost" if host == "127.0.0.1" else host, port, ssl_context=_no_hostname(context)
            )
            try:
                typ, _ = c.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
                return typ, ok(c.select("INBOX"))
            finally:
                _close(c)

        typ, selected = yield deferToThread(run)
        self.assertEqual(typ, "OK")
        self.assertEqual(selected, [b"0"])


def _no_hostname(context: ssl.SSLContext) -> ssl.SSLContext:
    context.check_hostname = False
    return context
