"""
Tests for the Twisted IMAP adapter (txmail.imap.server) on StringTransport
with a task.Clock, the memory store and the real Authenticator.

Theory of operation
-------------------
The setup is the one of tests/pop3/test_server.py: a fake directory with
one user, :class:`txmail.store.memory.MemoryProvider` holding two messages
in INBOX, an :class:`IMAPFactory` on a ``task.Clock``.  Every store call of
the memory store returns an already-fired Deferred, so one
``proto.dataReceived(...)`` runs a command to completion and
``transport.value()`` holds the whole answer.  Tests compare exact bytes
where they are stable (UIDVALIDITY comes from the store and is read from
the mailbox).
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from txmail.auth.authenticator import Authenticator
from txmail.auth.passwords import make_credentials
from txmail.imap.server import DEFAULT_IDLE_TIMEOUT, PREAUTH_TIMEOUT, IMAPFactory, IMAPServerProtocol
from txmail.model import FlagMode
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

USER = "alice@example.test"
PASSWORD = "imap secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
PEER = IPv4Address("TCP", "127.0.0.1", 4321)
MESSAGES = [
    b"Subject: one\r\nFrom: bob@example.test\r\n\r\nfirst body\r\n",
    b"Subject: two\r\n\r\nsecond body\r\n",
]
LOGIN = f'a1 LOGIN {USER} "{PASSWORD}"\r\n'.encode()


class FakeDirectory:
    """Just enough of IDirectory for the Authenticator: one user, alice."""

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == USER else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(USER if username == USER else None)


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.stores = MemoryProvider()
        self.store = self.successResultOf(self.stores.store_for(USER))
        self.mailbox = self.successResultOf(self.store.get_mailbox("INBOX"))
        self.uids = [self.successResultOf(self.mailbox.append(m, (), 1_600_000_000)) for m in MESSAGES]
        self.authenticator = Authenticator(FakeDirectory(), clock=self.clock)  # type: ignore[arg-type]

    def connect(self, **kwargs: Any) -> tuple[IMAPServerProtocol, StringTransport]:
        options: dict[str, Any] = {
            "authenticator": self.authenticator,
            "stores": self.stores,
            "clock": self.clock,
            "plaintext_auth": "loopback",
        }
        options.update(kwargs)
        proto = IMAPFactory(**options).buildProtocol(None)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def send(self, proto: IMAPServerProtocol, transport: StringTransport, data: bytes) -> bytes:
        """Clear the output, feed *data*, return what was written."""
        transport.clear()
        proto.dataReceived(data)
        out = transport.value()
        transport.clear()
        return out

    def login(self, select: str | None = "INBOX") -> tuple[IMAPServerProtocol, StringTransport]:
        proto, transport = self.connect()
        out = self.send(proto, transport, LOGIN)
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY "), out)
        if select is not None:
            out = self.send(proto, transport, b"s1 SELECT " + select.encode() + b"\r\n")
            self.assertTrue(out.endswith(b"s1 OK [READ-WRITE] SELECT completed\r\n"), out)
        return proto, transport

    def flags(self, uid: int) -> frozenset[str]:
        (info,) = self.successResultOf(self.mailbox.list_messages([uid]))
        return info.flags


class SampleSessionTests(ServerTestCase):
    def test_rfc3501_sample(self) -> None:
        """RFC 3501 section 8: the sample session, adapted to our data."""
        proto, transport = self.connect()
        greeting = transport.value()
        self.assertTrue(greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "), greeting)
        self.assertTrue(greeting.endswith(b"] txmail IMAP4rev1 ready\r\n"))
        self.assertIn(b" AUTH=PLAIN", greeting)  # loopback and policy "loopback"
        self.assertNotIn(b"LOGINDISABLED", greeting)

        out = self.send(proto, transport, LOGIN)
        self.assertTrue(out.startswith(b"a1 OK [CAPABILITY IMAP4rev1 "), out)
        self.assertTrue(out.endswith(b"] Logged in\r\n"))
        self.assertNotIn(b"AUTH=", out)

        out = self.send(proto, transport, b"a2 SELECT INBOX\r\n")
        self.assertEqual(
            out,
            b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
            b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
            b"* 2 EXISTS\r\n"
            b"* 2 RECENT\r\n"
            b"* OK [UNSEEN 1] First unseen\r\n"
            b"* OK [UIDVALIDITY %d] UIDs valid\r\n"
            b"* OK [UIDNEXT 3] Predicted next UID\r\n"
            b"* OK [MAILBOXID (%s)] Ok\r\n"
            b"* OK [HIGHESTMODSEQ 3] Highest\r\n"
            b"a2 OK [READ-WRITE] SELECT completed\r\n"
            % (self.mailbox.uidvalidity, self.mailbox.mailbox_id.encode()),
        )

        out = self.send(proto, transport, b"a3 FETCH 1 FLAGS\r\n")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Recent))\r\na3 OK FETCH completed\r\n")

        out = self.send(proto, transport, b"a4 FETCH 2 (BODY[HEADER])\r\n")
        header = b"Subject: two\r\n\r\n"
        self.assertEqual(
            out,
            b"* 2 FETCH (BODY[HEADER] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\na4 OK FETCH completed\r\n"
            % (len(header), header),
        )
        self.assertEqual(self.flags(self.uids[1]), frozenset({"\\Seen"}))

        out = self.send(proto, transport, b"a5 STORE 1 +FLAGS (\\Deleted)\r\n")
        self.assertEqual(out, b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\na5 OK STORE completed\r\n")
        self.assertEqual(self.flags(self.uids[0]), frozenset({"\\Deleted"}))

        out = self.send(proto, transport, b"a6 EXPUNGE\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\na6 OK EXPUNGE completed\r\n")
        self.assertEqual([i.uid for i in self.successResultOf(self.mailbox.list_messages())], [self.uids[1]])

        out = self.send(proto, transport, b"a7 LOGOUT\r\n")
        self.assertEqual(out, b"* BYE Logging out\r\na7 OK LOGOUT completed\r\n")
        self.assertTrue(transport.disconnecting)

    def test_wrong_password(self) -> None:
        proto, transport = self.connect()
        transport.clear()
        proto.dataReceived(f"a1 LOGIN {USER} wrong\r\n".encode())
        self.clock.advance(10)  # the Authenticator delays failures
        self.assertEqual(transport.value(), b"a1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n")
        self.assertFalse(transport.disconnecting)

    def test_special_folders_created(self) -> None:
        """First login of a user with only INBOX: RFC 6154 mailboxes are created and subscribed."""
        self.login(select=None)
        names = {f.name for f in self.successResultOf(self.store.list_mailboxes("*"))}
        self.assertEqual(names, {"INBOX", "Sent", "Drafts", "Trash", "Junk", "Archive"})


class TimeoutTests(ServerTestCase):
    def test_idle_timeout_after_login(self) -> None:
        """RFC 3501 section 5.4: autologout after 30 minutes of silence (BYE, then close)."""
        _proto, transport = self.login()
        self.assertEqual(DEFAULT_IDLE_TIMEOUT, 1800)
        self.clock.advance(DEFAULT_IDLE_TIMEOUT - 1)
        self.assertEqual(transport.value(), b"")
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(transport.disconnecting)

    def test_activity_resets_timer(self) -> None:
        proto, transport = self.login()
        self.clock.advance(DEFAULT_IDLE_TIMEOUT - 10)
        self.send(proto, transport, b"n1 NOOP\r\n")
        self.clock.advance(DEFAULT_IDLE_TIMEOUT - 10)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)

    def test_idle_timeout_while_idling(self) -> None:
        """RFC 2177 section 3 / RFC 3501 section 5.4: IDLE does not stop the 30-minute timer."""
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"i1 IDLE\r\n"), b"+ idling\r\n")
        self.clock.advance(DEFAULT_IDLE_TIMEOUT)
        self.assertEqual(transport.value(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(transport.disconnecting)

    def test_preauth_timeout(self) -> None:
        """Before login the client gets PREAUTH_TIMEOUT (180 s)."""
        _proto, transport = self.connect()
        transport.clear()
        self.assertEqual(PREAUTH_TIMEOUT, 180)
        self.clock.advance(179)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(transport.value(), b"* BYE Autologout; idle for too long\r\n")
        self.assertTrue(transport.disconnecting)


class IdleTests(ServerTestCase):
    def test_idle_push_of_append(self) -> None:
        """RFC 2177: a message appended to the mailbox is pushed at once while idling."""
        proto, transport = self.login()
        self.assertEqual(self.send(proto, transport, b"i1 IDLE\r\n"), b"+ idling\r\n")
        uid = self.successResultOf(self.mailbox.append(b"Subject: three\r\n\r\nthird\r\n"))
        self.assertEqual(uid, 3)
        self.assertEqual(transport.value(), b"* 3 EXISTS\r\n* 3 RECENT\r\n")
        transport.clear()
        self.assertEqual(self.send(proto, transport, b"DONE\r\n"), b"i1 OK IDLE terminated\r\n")
        out = self.send(proto, transport, b"f1 FETCH 3 (UID FLAGS)\r\n")
        self.assertEqual(out, b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\nf1 OK FETCH completed\r\n")

    def test_idle_push_of_expunge(self) -> None:
        proto, transport = self.login()
        self.send(proto, transport, b"i1 IDLE\r\n")
        self.successResultOf(self.mailbox.set_flags([self.uids[0]], {"\\Deleted"}, FlagMode.ADD))
        self.assertEqual(transport.value(), b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n")
        transport.clear()
        self.successResultOf(self.mailbox.expunge())
        self.assertEqual(transport.value(), b"* 1 EXPUNGE\r\n")


class TwoSessionTests(ServerTestCase):
    def test_store_seen_by_other_session(self) -> None:
        """A STORE in one session shows up as FETCH FLAGS in the other at its next NOOP (RFC 3501 section 7.4.2)."""
        proto1, transport1 = self.login()
        proto2, transport2 = self.login()
        out = self.send(proto1, transport1, b"a2 STORE 2 +FLAGS (\\Flagged)\r\n")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\na2 OK STORE completed\r\n")
        self.assertEqual(transport2.value(), b"")
        out = self.send(proto2, transport2, b"n1 NOOP\r\n")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged))\r\nn1 OK NOOP completed\r\n")
        # Nothing new for the first session, which did the STORE itself.
        self.assertEqual(self.send(proto1, transport1, b"n2 NOOP\r\n"), b"n2 OK NOOP completed\r\n")

    def test_expunge_seen_by_other_session(self) -> None:
        proto1, transport1 = self.login()
        proto2, transport2 = self.login()
        self.send(proto1, transport1, b"a2 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(
            self.send(proto1, transport1, b"a3 EXPUNGE\r\n"), b"* 1 EXPUNGE\r\na3 OK EXPUNGE completed\r\n"
        )
        # RFC 3501 section 7.4.1: no EXPUNGE during FETCH; the message keeps its number.
        out = self.send(proto2, transport2, b"f1 FETCH 2 (UID)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2)\r\nf1 OK FETCH completed\r\n")
        out = self.send(proto2, transport2, b"n1 NOOP\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nn1 OK NOOP completed\r\n")


class AppendTests(ServerTestCase):
    def test_append_literal_then_fetch(self) -> None:
        """RFC 3501 section 6.3.11 with RFC 4315 APPENDUID; the new message is then fetchable."""
        proto, transport = self.login()
        message = b"Subject: appended\r\n\r\nhello\r\n"
        out = self.send(proto, transport, b"p1 APPEND INBOX (\\Seen) {%d}\r\n" % len(message))
        self.assertEqual(out, b"+ Ready for literal data\r\n")
        out = self.send(proto, transport, message + b"\r\n")
        self.assertEqual(
            out,
            b"* 3 EXISTS\r\n* 3 RECENT\r\np1 OK [APPENDUID %d 3] APPEND completed\r\n"
            % self.mailbox.uidvalidity,
        )
        out = self.send(proto, transport, b"f1 UID FETCH 3 (FLAGS BODY.PEEK[])\r\n")
        self.assertEqual(
            out,
            b"* 3 FETCH (UID 3 FLAGS (\\Seen \\Recent) BODY[] {%d}\r\n%s)\r\nf1 OK UID FETCH completed\r\n"
            % (len(message), message),
        )

    def test_append_literal_plus_to_missing_mailbox(self) -> None:
        """RFC 3501 section 6.3.11: APPEND to a mailbox that does not exist -> NO [TRYCREATE]."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"p1 APPEND Nowhere {4+}\r\nabcd\r\n")
        self.assertEqual(out, b"p1 NO [TRYCREATE] No such mailbox\r\n")


class QuotaTests(ServerTestCase):
    """RFC 9208 section 4.3: APPEND and COPY that do not fit get NO [OVERQUOTA]; reading, MOVE and EXPUNGE work."""

    def login_with_quota(self, extra: int) -> tuple[IMAPServerProtocol, StringTransport]:
        from txmail.quota import Quotas

        used = self.successResultOf(self.store.usage()).octets
        proto, transport = self.connect(quotas=Quotas(used + extra))
        self.assertTrue(self.send(proto, transport, LOGIN).startswith(b"a1 OK"))
        self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        return proto, transport

    def test_getquotaroot_and_getquota(self) -> None:
        """RFC 9208 sections 4.2.1-4.2.2: one root "" with STORAGE in KiB (usage rounded up); unknown roots and mailboxes are NO."""
        used = self.successResultOf(self.store.usage()).octets
        proto, transport = self.login_with_quota(10 * 1024)
        limit_kib = (used + 10 * 1024) // 1024
        out = self.send(proto, transport, b"q1 GETQUOTAROOT INBOX\r\n")
        self.assertEqual(
            out,
            b'* QUOTAROOT INBOX ""\r\n* QUOTA "" (STORAGE %d %d)\r\nq1 OK GETQUOTAROOT completed\r\n'
            % (-(-used // 1024), limit_kib),
        )
        out = self.send(proto, transport, b'q2 GETQUOTA ""\r\n')
        self.assertEqual(out, b'* QUOTA "" (STORAGE 1 %d)\r\nq2 OK GETQUOTA completed\r\n' % limit_kib)
        self.assertEqual(
            self.send(proto, transport, b"q3 GETQUOTA other\r\n"),
            b"q3 NO [NONEXISTENT] No such quota root\r\n",
        )
        self.assertTrue(self.send(proto, transport, b"q4 GETQUOTAROOT Nowhere\r\n").startswith(b"q4 NO "))

    def test_no_limit_no_root(self) -> None:
        """A user without a limit has no quota root (RFC 9208 section 4.2.2)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b'q1 GETQUOTAROOT INBOX\r\nq2 GETQUOTA ""\r\n')
        self.assertEqual(
            out,
            b"* QUOTAROOT INBOX\r\nq1 OK GETQUOTAROOT completed\r\nq2 NO [NONEXISTENT] No such quota root\r\n",
        )

    def test_status_deleted(self) -> None:
        """RFC 9208 section 4.3: STATUS DELETED and DELETED-STORAGE count the messages flagged \\Deleted."""
        proto, transport = self.login_with_quota(0)
        self.send(proto, transport, b"d1 STORE 2 +FLAGS (\\Deleted)\r\n")
        out = self.send(proto, transport, b"s2 STATUS INBOX (MESSAGES DELETED DELETED-STORAGE)\r\n")
        self.assertEqual(
            out, b"* STATUS INBOX (MESSAGES 2 DELETED 1 DELETED-STORAGE 1)\r\ns2 OK STATUS completed\r\n"
        )

    def test_append_over_quota(self) -> None:
        proto, transport = self.login_with_quota(10)
        out = self.send(proto, transport, b"p1 APPEND INBOX {11+}\r\n0123456789A\r\n")
        self.assertEqual(out, b"p1 NO [OVERQUOTA] Quota exceeded\r\n")
        out = self.send(proto, transport, b"p2 APPEND INBOX {10+}\r\n0123456789\r\n")
        self.assertIn(b"p2 OK [APPENDUID ", out)
        out = self.send(proto, transport, b"p3 APPEND INBOX {1+}\r\nx\r\n")
        self.assertEqual(out, b"p3 NO [OVERQUOTA] Quota exceeded\r\n")
        out = self.send(proto, transport, b"f1 FETCH 1 (RFC822.SIZE)\r\n")
        self.assertTrue(out.endswith(b"f1 OK FETCH completed\r\n"), out)

    def test_copy_over_quota_move_allowed(self) -> None:
        self.successResultOf(self.store.create_mailbox("Archive"))
        proto, transport = self.login_with_quota(0)
        out = self.send(proto, transport, b"c1 COPY 1 Archive\r\n")
        self.assertEqual(out, b"c1 NO [OVERQUOTA] Quota exceeded\r\n")
        out = self.send(proto, transport, b"m1 MOVE 1 Archive\r\n")
        self.assertTrue(out.endswith(b"m1 OK MOVE completed\r\n"), out)
        # Room made (the larger message expunged from Archive): a copy of the other fits.
        out = self.send(
            proto, transport, b"s2 SELECT Archive\r\nd1 STORE 1 +FLAGS (\\Deleted)\r\nx1 EXPUNGE\r\n"
        )
        self.assertTrue(out.endswith(b"x1 OK EXPUNGE completed\r\n"), out)
        out = self.send(proto, transport, b"s3 SELECT INBOX\r\nc2 COPY 1 Archive\r\n")
        self.assertIn(b"c2 OK [COPYUID ", out)


class SearchTests(ServerTestCase):
    def test_search_charset_utf8(self) -> None:
        """RFC 3501 section 6.4.4: CHARSET UTF-8 is supported."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"s2 SEARCH CHARSET UTF-8 SUBJECT two\r\n")
        self.assertEqual(out, b"* SEARCH 2\r\ns2 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"s3 UID SEARCH ALL\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\ns3 OK SEARCH completed\r\n")

    def test_search_bad_charset(self) -> None:
        """RFC 3501 sections 6.4.4 and 7.1: an unsupported charset -> NO [BADCHARSET (...)]."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"s2 SEARCH CHARSET KOI8-R SUBJECT two\r\n")
        self.assertTrue(out.startswith(b"s2 NO [BADCHARSET ("), out)
        self.assertIn(b"UTF-8", out)
        self.assertTrue(out.endswith(b")] Unsupported charset\r\n"), out)


class CopyTests(ServerTestCase):
    def test_copy_to_missing_mailbox(self) -> None:
        """RFC 3501 section 6.4.7: COPY to a mailbox that does not exist -> NO [TRYCREATE]."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"c1 COPY 1:2 Nowhere\r\n")
        self.assertEqual(out, b"c1 NO [TRYCREATE] No such mailbox\r\n")

    def test_copy(self) -> None:
        """RFC 4315 section 3: COPYUID."""
        proto, transport = self.login()
        self.successResultOf(self.store.create_mailbox("Saved"))
        target = self.successResultOf(self.store.get_mailbox("Saved"))
        out = self.send(proto, transport, b"c1 COPY 1:2 Saved\r\n")
        self.assertEqual(out, b"c1 OK [COPYUID %d 1:2 1:2] COPY completed\r\n" % target.uidvalidity)


class ExamineTests(ServerTestCase):
    def test_examine_read_only(self) -> None:
        """RFC 3501 section 6.3.2: EXAMINE is read-only; STORE fails, FETCH BODY[] does not set \\Seen."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"e1 EXAMINE INBOX\r\n")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Flags permitted\r\n", out)
        self.assertTrue(out.endswith(b"e1 OK [READ-ONLY] EXAMINE completed\r\n"), out)
        out = self.send(proto, transport, b"e2 STORE 1 +FLAGS (\\Seen)\r\n")
        self.assertEqual(out, b"e2 NO [READ-ONLY] Mailbox is read-only\r\n")
        out = self.send(proto, transport, b"e3 FETCH 1 BODY[]\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[] {%d}\r\n%s)\r\ne3 OK FETCH completed\r\n" % (len(MESSAGES[0]), MESSAGES[0]),
        )
        self.assertEqual(self.flags(self.uids[0]), frozenset())
        out = self.send(proto, transport, b"e4 EXPUNGE\r\n")
        self.assertEqual(out, b"e4 NO [READ-ONLY] Mailbox is read-only\r\n")


class StoreFailureTests(ServerTestCase):
    def test_failing_store_call(self) -> None:
        """A store call that fails: tagged NO [SERVERBUG], no exception text, and the session goes on."""
        proto, transport = self.login()

        def broken(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(RuntimeError("disk on fire"))

        self.mailbox.set_flags = broken  # type: ignore[method-assign]
        out = self.send(proto, transport, b"a2 STORE 1 +FLAGS (\\Seen)\r\n")
        self.assertEqual(out, b"a2 NO [SERVERBUG] Internal server error; try again later\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(transport.disconnecting)
        out = self.send(proto, transport, b"a3 FETCH 1 (UID)\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 1)\r\na3 OK FETCH completed\r\n")

    def test_failing_list(self) -> None:
        proto, transport = self.login(select=None)

        def broken(*args: Any, **kwargs: Any) -> defer.Deferred[Any]:
            return defer.fail(RuntimeError("index lost"))

        self.store.list_mailboxes = broken  # type: ignore[method-assign]
        out = self.send(proto, transport, b'l2 LIST "" *\r\n')
        self.assertEqual(out, b"l2 NO [SERVERBUG] Internal server error; try again later\r\n")
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual(self.send(proto, transport, b"n1 NOOP\r\n"), b"n1 OK NOOP completed\r\n")


class SelectRaceTests(ServerTestCase):
    def test_arrival_during_select_listing(self) -> None:
        """
        A message delivered after SELECT listed the mailbox but before the
        view took over (a slow store) must still be told: RFC 3501 section
        7.3.1 -- the client learns of every new message by EXISTS.
        """
        proto, transport = self.login(select=None)
        original = self.mailbox.list_messages

        def list_then_deliver(*args: Any) -> defer.Deferred[Any]:
            d = original(*args)
            if not args:
                # A delivery lands right after the listing was taken.
                self.mailbox.list_messages = original  # type: ignore[method-assign]
                self.successResultOf(self.mailbox.append(b"Subject: late\r\n\r\nlate\r\n"))
            return d

        self.mailbox.list_messages = list_then_deliver  # type: ignore[method-assign]
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertTrue(out.endswith(b"s1 OK [READ-WRITE] SELECT completed\r\n"), out)
        told = b"* 3 EXISTS\r\n" in out
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        told = told or b"* 3 EXISTS\r\n" in out
        self.assertTrue(told, "the late message was never announced")


class SelectedStateTests(ServerTestCase):
    def test_failed_select_leaves_selected_state(self) -> None:
        """RFC 3501 section 6.3.1: a failed SELECT closes the previously selected mailbox."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"s2 SELECT Nowhere\r\n")
        # RFC 7162 section 3.2.11: CLOSED, the mailbox selected before is closed.
        self.assertEqual(
            out, b"* OK [CLOSED] Previous mailbox closed\r\ns2 NO [NONEXISTENT] No such mailbox\r\n"
        )
        out = self.send(proto, transport, b"f1 FETCH 1 FLAGS\r\n")
        self.assertEqual(out, b"f1 BAD FETCH is not allowed now\r\n")

    def test_sequence_out_of_range(self) -> None:
        """RFC 3501 section 9: a message number not in use -> BAD; the session goes on."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 3 FLAGS\r\n")
        self.assertEqual(out, b"f1 BAD Invalid message sequence number\r\n")
        out = self.send(proto, transport, b"f2 UID FETCH 3:* (FLAGS)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\nf2 OK UID FETCH completed\r\n")

    def test_close_expunges_silently(self) -> None:
        """RFC 3501 section 6.4.2: CLOSE removes \\Deleted messages without EXPUNGE responses."""
        proto, transport = self.login()
        self.send(proto, transport, b"a1 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(self.send(proto, transport, b"c1 CLOSE\r\n"), b"c1 OK CLOSE completed\r\n")
        self.assertEqual([i.uid for i in self.successResultOf(self.mailbox.list_messages())], [self.uids[1]])


class TakingTurnsTests(ServerTestCase):
    def test_long_fetch_lets_other_connections_in(self) -> None:
        """
        A FETCH over more than one batch gives the reactor a turn between
        batches: another connection is answered before the FETCH ends.
        """
        from txmail.imap.server import BATCH

        for n in range(BATCH * 2):
            self.successResultOf(self.mailbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n))
        proto, transport = self.login()
        other, other_transport = self.connect()
        out = self.send(proto, transport, b"f1 FETCH 1:* (UID)\r\n")
        self.assertEqual(out.count(b" FETCH (UID "), BATCH)
        self.assertNotIn(b"f1 OK", out)
        # The other client is served while the FETCH waits for its turn.
        self.assertEqual(self.send(other, other_transport, b"c1 NOOP\r\n"), b"c1 OK NOOP completed\r\n")
        transport.clear()
        for _ in range(10):
            if b"f1 OK" in transport.value():
                break
            self.clock.advance(0)
        total = BATCH * 2 + len(self.uids)
        self.assertEqual(out.count(b" FETCH (UID ") + transport.value().count(b" FETCH (UID "), total)
        self.assertTrue(transport.value().endswith(b"f1 OK FETCH completed\r\n"))


class BackPressureTests(ServerTestCase):
    def test_fetch_waits_while_the_transport_is_full(self) -> None:
        """
        During a long FETCH the transport's producer is the write gate: when
        the transport pauses it, no further batch is written until it
        resumes; afterwards no producer is left registered.
        """
        from txmail.imap.server import BATCH

        for n in range(BATCH * 3):
            self.successResultOf(self.mailbox.append(b"Subject: %d\r\n\r\nbody\r\n" % n))
        proto, transport = self.login()
        reply_gate = transport.producer  # the connection's, between commands
        out = self.send(proto, transport, b"f1 FETCH 1:* (UID)\r\n")
        self.assertEqual(out.count(b" FETCH (UID "), BATCH)
        self.assertIsNot(transport.producer, reply_gate)  # the FETCH's own write gate
        transport.producer.pauseProducing()  # the transport's buffer is full
        transport.clear()
        for _ in range(5):
            self.clock.advance(0)
        self.assertEqual(transport.value(), b"")  # the next batch waits
        transport.producer.resumeProducing()  # drained
        for _ in range(10):
            if b"f1 OK" in transport.value():
                break
            self.clock.advance(0)
        self.assertTrue(transport.value().endswith(b"f1 OK FETCH completed\r\n"))
        self.assertIs(transport.producer, reply_gate)
