"""
QRESYNC (RFC 7162 section 3.2) through the IMAP adapter on StringTransport
(the setup of tests/imap/test_server.py: the memory store, two messages in
INBOX, UIDs 1 and 2), the parser's new syntax, and an end-to-end check with
imaplib against the real service on Maildir, restarted in between.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_condstore import parse
from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities
from txmail.imap.parser import ParseError
from txmail.imap.types import Examine, QresyncParam, Select
from txmail.model import DELETED, SEEN, FlagMode

__all__: list[str] = []


class ParserTests(SynchronousTestCase):
    """The syntax of RFC 7162 section 7."""

    def test_select_qresync(self) -> None:
        """select-param =/ "QRESYNC" SP "(" uidvalidity SP mod-sequence-value [SP known-uids] [SP seq-match-data] ")"."""
        args = parse(b"a SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211))").args
        assert isinstance(args, Select)
        assert args.qresync is not None
        self.assertEqual((args.qresync.uidvalidity, args.qresync.modseq), (67890007, 20050715194045000))
        self.assertEqual(args.qresync.known_uids.ranges, ((41, 41), (43, 211)))  # type: ignore[union-attr]
        self.assertIsNone(args.qresync.seq_match)
        args = parse(b"a EXAMINE INBOX (QRESYNC (1 2 1:9 (1:3 4:6)) CONDSTORE)").args
        assert isinstance(args, Examine) and args.qresync is not None
        self.assertTrue(args.condstore)
        self.assertEqual(args.qresync.seq_match[1].ranges, ((4, 6),))  # type: ignore[index]
        args = parse(b"a SELECT INBOX (QRESYNC (1 2 (1 4)))").args
        assert isinstance(args, Select)
        self.assertEqual(args.qresync, QresyncParam(1, 2, None, args.qresync.seq_match))  # type: ignore[union-attr]
        for bad in (
            b"a SELECT INBOX (QRESYNC)",
            b"a SELECT INBOX (QRESYNC (1))",
            b"a SELECT INBOX (QRESYNC (0 1))",
            b"a SELECT INBOX (QRESYNC (1 0))",
            b"a SELECT INBOX (QRESYNC (1 2) QRESYNC (1 2))",
        ):
            self.assertRaises(ParseError, parse, bad)

    def test_fetch_vanished(self) -> None:
        """fetch-modifier =/ "VANISHED": UID FETCH only, with CHANGEDSINCE (section 3.2.6)."""
        args = parse(b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)").args
        self.assertEqual((args.changed_since, args.vanished), (5, True))  # type: ignore[union-attr]
        args = parse(b"a UID FETCH 1:* (FLAGS) (VANISHED CHANGEDSINCE 5)").args
        self.assertTrue(args.vanished)  # type: ignore[union-attr]
        for bad in (
            b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED)",
            b"a UID FETCH 1:* (FLAGS) (VANISHED)",
            b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 5 VANISHED VANISHED)",
        ):
            self.assertRaises(ParseError, parse, bad)

    def test_advertised(self) -> None:
        """Section 3.2: QRESYNC is advertised, after CONDSTORE."""
        caps = list(capabilities())
        self.assertIn("QRESYNC", caps)
        self.assertLess(caps.index("CONDSTORE"), caps.index("QRESYNC"))


class QresyncServerTests(ServerTestCase):
    """QRESYNC through the adapter."""

    def run_lines(self, proto: Any, transport: Any, line: bytes) -> bytes:
        return self.send(proto, transport, line + b"\r\n")

    def history(self) -> int:
        """Five messages (UIDs 1-5); the modseq after the 5th; then 2 gets \\Seen, 3 and 4 are expunged."""
        for n in range(3):
            self.successResultOf(self.mailbox.append(b"Subject: more %d\r\n\r\nx\r\n" % n))
        modseq = self.successResultOf(self.mailbox.status()).highest_modseq
        self.successResultOf(self.mailbox.set_flags([2], [SEEN], FlagMode.ADD))
        self.successResultOf(self.mailbox.set_flags([3, 4], [DELETED], FlagMode.ADD))
        self.successResultOf(self.mailbox.expunge())
        return modseq

    def enabled(self) -> tuple[Any, Any]:
        proto, transport = self.login(select=None)
        out = self.run_lines(proto, transport, b"e1 ENABLE QRESYNC")
        self.assertEqual(out, b"* ENABLED QRESYNC\r\ne1 OK ENABLE completed\r\n")
        return proto, transport

    def test_enable_implies_condstore(self) -> None:
        """Section 3.2.3: ENABLE QRESYNC also enables CONDSTORE (MODSEQ in flag changes)."""
        proto, transport = self.enabled()
        self.assertEqual(proto.session.enabled, {"QRESYNC", "CONDSTORE"})
        out = self.run_lines(proto, transport, b"s1 SELECT INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ ", out)
        out = self.run_lines(proto, transport, b"t1 STORE 1 +FLAGS (\\Flagged)")
        self.assertIn(b"MODSEQ (", out)

    def test_select_qresync_needs_enable(self) -> None:
        """Section 3.2.5: the QRESYNC parameter without ENABLE QRESYNC is BAD."""
        proto, transport = self.login(select=None)
        out = self.run_lines(proto, transport, b"s1 SELECT INBOX (QRESYNC (1 1))")
        self.assertTrue(out.startswith(b"s1 BAD "), out)

    def test_select_resync(self) -> None:
        """Section 3.2.5: VANISHED (EARLIER) of the known UIDs expunged since, then FETCH of what changed."""
        since = self.history()
        validity = self.mailbox.uidvalidity
        proto, transport = self.enabled()
        out = self.run_lines(proto, transport, b"s1 SELECT INBOX (QRESYNC (%d %d 1:5))" % (validity, since))
        self.assertIn(b"* OK [HIGHESTMODSEQ ", out)
        tail = out[out.index(b"* OK [HIGHESTMODSEQ ") :].split(b"\r\n", 1)[1]
        (info,) = self.successResultOf(self.mailbox.list_messages([2]))
        self.assertEqual(
            tail,
            b"* VANISHED (EARLIER) 3:4\r\n"
            b"* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))\r\n"
            b"s1 OK [READ-WRITE] SELECT completed\r\n" % info.modseq,
        )
        # Only the known UIDs: 1:3 knows 3, not 4.
        out = self.run_lines(
            proto, transport, b"s2 EXAMINE INBOX (QRESYNC (%d %d 1:3 (1:3 1:3)))" % (validity, since)
        )
        self.assertTrue(out.startswith(b"* OK [CLOSED] "), out)  # section 3.2.11
        self.assertIn(b"* VANISHED (EARLIER) 3\r\n", out)
        # Without known-uids: every UID.
        out = self.run_lines(proto, transport, b"s3 EXAMINE INBOX (QRESYNC (%d %d))" % (validity, since))
        self.assertIn(b"* VANISHED (EARLIER) 3:4\r\n", out)
        # Another UIDVALIDITY: the client must resynchronise fully; nothing more is told.
        out = self.run_lines(proto, transport, b"s4 EXAMINE INBOX (QRESYNC (%d %d))" % (validity + 1, since))
        self.assertNotIn(b"VANISHED", out)
        self.assertNotIn(b"FETCH", out)
        # Up to date: nothing.
        top = self.successResultOf(self.mailbox.status()).highest_modseq
        out = self.run_lines(proto, transport, b"s5 SELECT INBOX (QRESYNC (%d %d 1:5))" % (validity, top))
        self.assertNotIn(b"VANISHED", out)
        self.assertNotIn(b" FETCH ", out)

    def test_uid_fetch_vanished(self) -> None:
        """Section 3.2.6: UID FETCH (CHANGEDSINCE n VANISHED) sends VANISHED (EARLIER) first."""
        since = self.history()
        proto, transport = self.enabled()
        self.run_lines(proto, transport, b"s1 SELECT INBOX")
        out = self.run_lines(proto, transport, b"f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d VANISHED)" % since)
        self.assertTrue(out.startswith(b"* VANISHED (EARLIER) 3:4\r\n* 2 FETCH (UID 2 FLAGS ("), out)
        self.assertTrue(out.endswith(b"f1 OK UID FETCH completed\r\n"), out)
        out = self.run_lines(proto, transport, b"f2 UID FETCH 4:5 (FLAGS) (CHANGEDSINCE %d VANISHED)" % since)
        self.assertTrue(out.startswith(b"* VANISHED (EARLIER) 4\r\n"), out)

    def test_uid_fetch_vanished_needs_enable(self) -> None:
        """Section 3.2.6: the VANISHED modifier without ENABLE QRESYNC is BAD."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        self.assertTrue(out.startswith(b"f1 BAD "), out)

    def test_expunge_told_as_vanished(self) -> None:
        """Section 3.2.10: once QRESYNC is enabled, EXPUNGE, MOVE and others' expunges are told as VANISHED."""
        for n in range(3):
            self.successResultOf(self.mailbox.append(b"Subject: more %d\r\n\r\nx\r\n" % n))
        self.successResultOf(self.store.create_mailbox("Archive"))
        proto, transport = self.enabled()
        self.run_lines(proto, transport, b"s1 SELECT INBOX")
        out = self.run_lines(proto, transport, b"t1 STORE 1 +FLAGS.SILENT (\\Deleted)")
        out = self.run_lines(proto, transport, b"x1 EXPUNGE")
        self.assertEqual(out, b"* VANISHED 1\r\nx1 OK EXPUNGE completed\r\n")
        out = self.run_lines(proto, transport, b"m1 UID MOVE 2 Archive")
        self.assertIn(b"* VANISHED 2\r\n", out)
        self.assertNotIn(b"EXPUNGE", out)
        # Another session's expunge.
        self.successResultOf(self.mailbox.set_flags([4], [DELETED], FlagMode.ADD))
        self.successResultOf(self.mailbox.expunge())
        out = self.run_lines(proto, transport, b"n1 NOOP")
        self.assertIn(b"* VANISHED 4\r\n", out)
        self.assertNotIn(b"EXPUNGE", out)

    def test_without_qresync_unchanged(self) -> None:
        """Without ENABLE QRESYNC, expunges are still told with EXPUNGE (RFC 3501 section 7.4.1)."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"t1 STORE 1 +FLAGS.SILENT (\\Deleted)")
        out = self.run_lines(proto, transport, b"x1 EXPUNGE")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nx1 OK EXPUNGE completed\r\n")

    def test_closed(self) -> None:
        """Section 3.2.11: SELECT while a mailbox is selected sends CLOSED first; not when none is."""
        proto, transport = self.login(select=None)
        out = self.run_lines(proto, transport, b"s1 SELECT INBOX")
        self.assertNotIn(b"CLOSED", out)
        out = self.run_lines(proto, transport, b"s2 EXAMINE INBOX")
        self.assertTrue(out.startswith(b"* OK [CLOSED] Previous mailbox closed\r\n* FLAGS "), out)


USER = "alice@example.test"
PASSWORD = "qresync secret"


class EndToEndTests(IMAPRestartCase):
    """imaplib against the real service on Maildir: expunge, restart, SELECT (QRESYNC ...)."""

    user = USER
    password = PASSWORD

    @defer.inlineCallbacks
    def test_vanished_earlier_across_restart(self) -> Any:
        """Section 3.2.5: after a restart, SELECT (QRESYNC ...) tells what was expunged and changed."""
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def first() -> dict[str, Any]:
            c = self.client(server)
            try:
                caps = c.capabilities
                for n in range(6):
                    c.append("INBOX", "", None, b"Subject: m%d\r\n\r\nbody\r\n" % n)
                c.enable("QRESYNC")
                c.select("INBOX")
                validity = int(c.response("UIDVALIDITY")[1][0])
                status = c.status("INBOX", "(HIGHESTMODSEQ)")[1][0]
                modseq = int(status.split(b"HIGHESTMODSEQ ")[1].rstrip(b")"))
                c.uid("STORE", "2,3,5", "+FLAGS.SILENT", "(\\Deleted)")
                c.expunge()
                vanished = c.response("VANISHED")
                c.uid("STORE", "6", "+FLAGS.SILENT", "(\\Flagged)")
                return {"caps": caps, "validity": validity, "modseq": modseq, "vanished": vanished}
            finally:
                c.logout()

        one = yield deferToThread(first)
        self.assertIn("QRESYNC", one["caps"])
        self.assertEqual(one["vanished"][1], [b"2:3,5"])

        yield server.stopService()
        server2 = yield self.start(data_dir)

        def second() -> dict[str, Any]:
            c = self.client(server2)
            try:
                c.enable("QRESYNC")
                typ, _ = c._simple_command(
                    "SELECT", f"INBOX (QRESYNC ({one['validity']} {one['modseq']} 1:6))"
                )
                vanished = c.response("VANISHED")
                fetched = c.response("FETCH")
                return {"typ": typ, "vanished": vanished, "fetched": fetched}
            finally:
                c.logout()

        two = yield deferToThread(second)
        self.assertEqual(two["typ"], "OK")
        self.assertEqual(two["vanished"][1], [b"(EARLIER) 2:3,5"])
        (fetched,) = two["fetched"][1]
        self.assertIn(b"UID 6 FLAGS (\\Flagged)", fetched)
        self.assertIn(b"MODSEQ (", fetched)
