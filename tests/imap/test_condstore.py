"""
CONDSTORE (RFC 7162 section 3.1) through the IMAP adapter on StringTransport
(the setup of tests/imap/test_server.py: the memory store, two messages in
INBOX with modseqs 2 and 3, HIGHESTMODSEQ 3), the parser's new syntax, the
Maildir store keeping modseqs across a restart, and an end-to-end check with
imapclient against the real service, restarted in between.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_fragment import frame
from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities, condstore
from txmail.imap.fragment import CommandFragments
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import Command, Examine, Fetch, SearchKey, Select, Status, Store
from txmail.model import FlagMode
from txmail.store.maildir import MaildirProvider

try:
    import imapclient
except ImportError:  # pragma: no cover - imapclient is in the test extra
    imapclient = None

__all__: list[str] = []


def parse(line: bytes) -> Command:
    (event,) = [e for e in frame([line + b"\r\n"]) if isinstance(e, CommandFragments)]
    return parse_command(event.fragments)


class ParserTests(SynchronousTestCase):
    """The syntax of RFC 7162 section 7."""

    def test_select_condstore(self) -> None:
        """select-param =/ condstore-param (section 3.1.8)."""
        self.assertEqual(parse(b"a SELECT INBOX (CONDSTORE)").args, Select("INBOX", True))
        self.assertEqual(parse(b"a EXAMINE INBOX (condstore)").args, Examine("INBOX", True))
        self.assertEqual(parse(b"a SELECT INBOX").args, Select("INBOX", False))
        for bad in (b"a SELECT INBOX ()", b"a SELECT INBOX (QRESYNC)", b"a SELECT INBOX (CONDSTORE"):
            self.assertRaises(ParseError, parse, bad)

    def test_fetch_changedsince(self) -> None:
        """fetch-modifier = "CHANGEDSINCE" SP mod-sequence-value (section 3.1.4.1), not 0."""
        args = parse(b"a UID FETCH 1:* (FLAGS MODSEQ) (CHANGEDSINCE 12345678901)").args
        assert isinstance(args, Fetch)
        self.assertEqual(args.changed_since, 12345678901)
        self.assertEqual([i.name for i in args.items], ["FLAGS", "MODSEQ"])
        self.assertIsNone(parse(b"a FETCH 1 FAST").args.changed_since)  # type: ignore[union-attr]
        for bad in (
            b"a FETCH 1 FLAGS (CHANGEDSINCE 0)",
            b"a FETCH 1 FLAGS (CHANGEDSINCE 9223372036854775808)",
            b"a FETCH 1 FLAGS (UNCHANGEDSINCE 1)",
            b"a FETCH 1 FLAGS (CHANGEDSINCE 1 CHANGEDSINCE 2)",
        ):
            self.assertRaises(ParseError, parse, bad)

    def test_store_unchangedsince(self) -> None:
        """store-modifier = "UNCHANGEDSINCE" SP mod-sequence-valzer (section 3.1.3), 0 allowed."""
        args = parse(b"a STORE 1 (UNCHANGEDSINCE 0) +FLAGS.SILENT (\\Seen)").args
        self.assertEqual(
            args,
            Store(
                parse(b"a STORE 1 +FLAGS.SILENT \\Seen").args.sequence_set, "+", True, ("\\Seen",), False, 0
            ),
        )  # type: ignore[union-attr]
        self.assertRaises(ParseError, parse, b"a STORE 1 (CHANGEDSINCE 1) FLAGS x")

    def test_search_modseq(self) -> None:
        """search-modsequence, with and without the entry name (section 3.1.5)."""
        self.assertEqual(parse(b"a SEARCH MODSEQ 0").args.key, SearchKey("MODSEQ", (0,)))  # type: ignore[union-attr]
        key = parse(b'a SEARCH MODSEQ "/flags/\\\\draft" all 620162338').args.key  # type: ignore[union-attr]
        self.assertEqual(key, SearchKey("MODSEQ", (620162338,)))
        self.assertRaises(ParseError, parse, b'a SEARCH MODSEQ "/flags/\\\\draft" other 5')

    def test_status_highestmodseq(self) -> None:
        """status-att =/ "HIGHESTMODSEQ" (section 3.1.7)."""
        self.assertEqual(parse(b"a STATUS INBOX (HIGHESTMODSEQ)").args, Status("INBOX", ("HIGHESTMODSEQ",)))

    def test_advertised(self) -> None:
        """Section 3.1.1: CONDSTORE is advertised (QRESYNC too: tests/imap/test_qresync.py)."""
        self.assertIn("CONDSTORE", capabilities())

    def test_nomodseq(self) -> None:
        """Section 3.1.2.2: a mailbox without mod-sequences gets NOMODSEQ."""
        self.assertEqual(condstore.highest_modseq_ok(0).code, "NOMODSEQ")
        self.assertEqual(condstore.highest_modseq_ok(7).code, "HIGHESTMODSEQ 7")


class CondstoreServerTests(ServerTestCase):
    """CONDSTORE through the adapter: the two messages have modseqs 2 and 3."""

    def run_lines(self, proto: Any, transport: Any, line: bytes) -> bytes:
        return self.send(proto, transport, line + b"\r\n")

    def test_enable(self) -> None:
        """RFC 5161 and section 3.1: ENABLE CONDSTORE lists it once; while selected, HIGHESTMODSEQ."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"e1 ENABLE CONDSTORE")
        self.assertEqual(
            out, b"* OK [HIGHESTMODSEQ 3] Highest\r\n* ENABLED CONDSTORE\r\ne1 OK ENABLE completed\r\n"
        )
        out = self.run_lines(proto, transport, b"e2 ENABLE CONDSTORE")
        self.assertEqual(out, b"* ENABLED\r\ne2 OK ENABLE completed\r\n")

    def test_select_condstore(self) -> None:
        """Sections 3.1.2.1 and 3.1.8: every SELECT/EXAMINE sends HIGHESTMODSEQ; (CONDSTORE) also enables CONDSTORE."""
        proto, transport = self.login(select=None)
        out = self.run_lines(proto, transport, b"s1 EXAMINE INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ 3] Highest\r\n", out)
        out = self.run_lines(proto, transport, b"f0 FETCH 1 (FLAGS)")
        self.assertNotIn(b"MODSEQ", out)  # not enabled yet
        out = self.run_lines(proto, transport, b"s2 EXAMINE INBOX (CONDSTORE)")
        self.assertIn(b"* OK [HIGHESTMODSEQ 3] Highest\r\n", out)
        self.assertTrue(out.endswith(b"s2 OK [READ-ONLY] EXAMINE completed\r\n"), out)
        # Enabled for the rest of the connection: plain SELECT now tells it too.
        out = self.run_lines(proto, transport, b"s3 SELECT INBOX")
        self.assertIn(b"* OK [HIGHESTMODSEQ 3] Highest\r\n", out)

    def test_fetch_modseq(self) -> None:
        """Section 3.1.4.2: FETCH MODSEQ, a CONDSTORE enabling command (HIGHESTMODSEQ first)."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"f1 FETCH 1:* (FLAGS MODSEQ)")
        self.assertEqual(
            out,
            b"* OK [HIGHESTMODSEQ 3] Highest\r\n"
            b"* 1 FETCH (FLAGS (\\Recent) MODSEQ (2))\r\n"
            b"* 2 FETCH (FLAGS (\\Recent) MODSEQ (3))\r\n"
            b"f1 OK FETCH completed\r\n",
        )

    def test_fetch_changedsince(self) -> None:
        """Section 3.1.4.1: only messages changed since, MODSEQ implied."""
        proto, transport = self.login()
        self.successResultOf(self.mailbox.set_flags([self.uids[0]], {"\\Flagged"}, FlagMode.ADD))  # modseq 4
        self.run_lines(proto, transport, b"n NOOP")
        out = self.run_lines(proto, transport, b"f1 UID FETCH 1:* (FLAGS) (CHANGEDSINCE 3)")
        self.assertEqual(
            out,
            b"* OK [HIGHESTMODSEQ 4] Highest\r\n"
            b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ (4))\r\n"
            b"f1 OK UID FETCH completed\r\n",
        )
        out = self.run_lines(proto, transport, b"f2 FETCH 1:* (UID) (CHANGEDSINCE 4)")
        self.assertEqual(out, b"f2 OK FETCH completed\r\n")

    def test_fetch_setting_seen_shows_modseq(self) -> None:
        """Section 3.1: once enabled, a FETCH that sets \\Seen shows the new MODSEQ with FLAGS."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"e ENABLE CONDSTORE")
        out = self.run_lines(proto, transport, b"f FETCH 2 (RFC822.SIZE BODY[TEXT])")
        self.assertEqual(
            out,
            b"* 2 FETCH (RFC822.SIZE 29 BODY[TEXT] {13}\r\nsecond body\r\n MODSEQ (4) FLAGS (\\Seen \\Recent))\r\n"
            b"f OK FETCH completed\r\n",
        )

    def test_store_unchangedsince(self) -> None:
        """Section 3.1.3: messages changed after UNCHANGEDSINCE fail, listed in MODIFIED."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"t1 STORE 1:2 (UNCHANGEDSINCE 2) +FLAGS (\\Seen)")
        self.assertEqual(
            out,
            b"* OK [HIGHESTMODSEQ 3] Highest\r\n"
            b"* 1 FETCH (FLAGS (\\Seen \\Recent) MODSEQ (4))\r\n"
            b"t1 OK [MODIFIED 2] STORE completed\r\n",
        )
        self.assertEqual(self.flags(self.uids[1]), frozenset())
        # UID STORE: UIDs in MODIFIED; .SILENT still reports the new MODSEQ.
        out = self.run_lines(
            proto, transport, b"t2 UID STORE 1:2 (UNCHANGEDSINCE 3) +FLAGS.SILENT (\\Deleted)"
        )
        self.assertEqual(
            out,
            b"* 2 FETCH (UID 2 MODSEQ (5))\r\nt2 OK [MODIFIED 1] STORE completed\r\n",
        )
        self.assertEqual(self.flags(self.uids[1]), frozenset({"\\Deleted"}))
        # UNCHANGEDSINCE 0 fails for every message.
        out = self.run_lines(proto, transport, b"t3 STORE 1:2 (UNCHANGEDSINCE 0) FLAGS ()")
        self.assertEqual(out, b"t3 OK [MODIFIED 1:2] STORE completed\r\n")

    def test_plain_store_after_enable(self) -> None:
        """Section 3.1: once enabled, STORE's untagged FETCH carries MODSEQ."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"e ENABLE CONDSTORE")
        out = self.run_lines(proto, transport, b"t UID STORE 2 +FLAGS (\\Answered)")
        self.assertEqual(
            out, b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent) MODSEQ (4))\r\nt OK STORE completed\r\n"
        )

    def test_other_sessions_changes(self) -> None:
        """Section 3.1: a flag change by someone else is told with UID and MODSEQ once enabled."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"e ENABLE CONDSTORE")
        self.successResultOf(self.mailbox.set_flags([self.uids[1]], {"\\Flagged"}, FlagMode.ADD))
        out = self.run_lines(proto, transport, b"n NOOP")
        self.assertEqual(
            out, b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (4))\r\nn OK NOOP completed\r\n"
        )

    def test_without_condstore_unchanged(self) -> None:
        """Not enabled: flag changes are told as in RFC 3501, without MODSEQ."""
        proto, transport = self.login()
        self.successResultOf(self.mailbox.set_flags([self.uids[1]], {"\\Flagged"}, FlagMode.ADD))
        out = self.run_lines(proto, transport, b"n NOOP")
        self.assertEqual(out, b"* 2 FETCH (FLAGS (\\Flagged \\Recent))\r\nn OK NOOP completed\r\n")

    def test_search_modseq(self) -> None:
        """Sections 3.1.5, 3.1.6 and 3.1.10: SEARCH MODSEQ ends with the highest modseq found."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"s1 SEARCH MODSEQ 3")
        self.assertEqual(
            out, b"* OK [HIGHESTMODSEQ 3] Highest\r\n* SEARCH 2 (MODSEQ 3)\r\ns1 OK SEARCH completed\r\n"
        )
        out = self.run_lines(proto, transport, b's2 UID SEARCH RETURN (ALL) MODSEQ "/flags/\\\\seen" all 1')
        self.assertEqual(out, b'* ESEARCH (TAG "s2") UID ALL 1:2 MODSEQ 3\r\ns2 OK SEARCH completed\r\n')
        # Nothing found: no MODSEQ (section 3.1.6).
        out = self.run_lines(proto, transport, b"s3 SEARCH MODSEQ 4")
        self.assertEqual(out, b"* SEARCH\r\ns3 OK SEARCH completed\r\n")
        out = self.run_lines(proto, transport, b"s4 SEARCH SEEN")
        self.assertEqual(out, b"* SEARCH\r\ns4 OK SEARCH completed\r\n")

    def test_status_highestmodseq(self) -> None:
        """Section 3.1.7: STATUS HIGHESTMODSEQ, a CONDSTORE enabling command."""
        proto, transport = self.login(select=None)
        out = self.run_lines(proto, transport, b"s STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        self.assertEqual(out, b"* STATUS INBOX (MESSAGES 2 HIGHESTMODSEQ 3)\r\ns OK STATUS completed\r\n")
        out = self.run_lines(proto, transport, b"e ENABLE CONDSTORE")
        self.assertEqual(out, b"* ENABLED\r\ne OK ENABLE completed\r\n")


class MaildirModseqTests(SynchronousTestCase):
    """The Maildir store keeps mod-sequences across a restart (issue 12: modseq survives restarts)."""

    def provider(self, root: str) -> MaildirProvider:
        return MaildirProvider(root, hostname="mx.test", watch="poll")

    def test_modseq_survives_reopen(self) -> None:
        root = self.mktemp()
        box = self.successResultOf(
            self.successResultOf(self.provider(root).store_for("alice@example.test")).get_mailbox("INBOX")
        )
        uids = [self.successResultOf(box.append(b"Subject: %d\r\n\r\nbody\r\n" % i)) for i in range(3)]
        self.successResultOf(box.set_flags(uids[:1], {"\\Seen"}, FlagMode.ADD))
        self.successResultOf(box.set_flags(uids[1:2], {"\\Deleted"}, FlagMode.ADD))
        self.successResultOf(box.expunge())
        before = {i.uid: i.modseq for i in self.successResultOf(box.list_messages())}
        highest = self.successResultOf(box.status()).highest_modseq
        self.assertGreater(highest, max(before.values()))  # the expunge counts too
        # A new provider on the same directory: a restart.
        box2 = self.successResultOf(
            self.successResultOf(self.provider(root).store_for("alice@example.test")).get_mailbox("INBOX")
        )
        self.assertEqual({i.uid: i.modseq for i in self.successResultOf(box2.list_messages())}, before)
        self.assertEqual(self.successResultOf(box2.status()).highest_modseq, highest)
        (changed,) = self.successResultOf(box2.set_flags(uids[2:], {"\\Flagged"}, FlagMode.ADD))
        self.assertEqual(changed.modseq, highest + 1)
        self.assertEqual(self.successResultOf(box2.status()).highest_modseq, highest + 1)
        # UNCHANGEDSINCE still works against the kept values.
        self.assertEqual(
            self.successResultOf(box2.set_flags(uids[:1], {"$x"}, FlagMode.ADD, before[uids[0]] - 1)), []
        )


USER = "alice@example.test"
PASSWORD = "condstore secret"


class EndToEndTests(IMAPRestartCase):
    """imapclient (PyPI) against the real service on Maildir, restarted in between."""

    user = USER
    password = PASSWORD

    def setUp(self) -> None:
        if imapclient is None:
            raise SkipTest("imapclient is not installed")

    def client(self, server: Any) -> Any:
        host, port = server.address("imap")
        c = imapclient.IMAPClient(host, port=port, ssl=False, timeout=20)
        c.login(self.user, self.password)
        return c

    @defer.inlineCallbacks
    def test_condstore_across_restart(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def first() -> dict[str, Any]:
            c = self.client(server)
            try:
                self.assertTrue(c.has_capability("CONDSTORE"))
                c.append("INBOX", b"Subject: one\r\n\r\nbody\r\n")
                c.append("INBOX", b"Subject: two\r\n\r\nbody\r\n")
                enabled = c.enable("CONDSTORE")
                selected = c.select_folder("INBOX")
                c.add_flags([1], [b"\\Flagged"])
                fetched = c.fetch([1, 2], ["FLAGS", "MODSEQ"])
                status = c.folder_status("INBOX", [b"HIGHESTMODSEQ"])
                # UNCHANGEDSINCE with a stale modseq: message 1 fails.
                stale = fetched[2][b"MODSEQ"][0]
                typ, data = c._imap._simple_command(
                    "UID", "STORE", "1:2", f"(UNCHANGEDSINCE {stale})", "+FLAGS.SILENT", "(\\Seen)"
                )
                return {
                    "enabled": enabled,
                    "selected": selected,
                    "fetched": fetched,
                    "status": status,
                    "store": (typ, data),
                    "changed": c.fetch([1, 2], ["FLAGS"], modifiers=[f"CHANGEDSINCE {stale}"]),
                }
            finally:
                c.logout()

        one = yield deferToThread(first)
        self.assertEqual(one["enabled"], [b"CONDSTORE"])
        self.assertIn(b"HIGHESTMODSEQ", one["selected"])
        modseqs = {uid: data[b"MODSEQ"][0] for uid, data in one["fetched"].items()}
        self.assertGreater(modseqs[1], modseqs[2])  # 1 was flagged after 2 arrived
        highest = one["status"][b"HIGHESTMODSEQ"]
        self.assertEqual(highest, modseqs[1])
        typ, data = one["store"]
        self.assertEqual(typ, "OK")
        self.assertIn(b"[MODIFIED 1]", data[-1])
        self.assertEqual(sorted(one["changed"]), [1, 2])

        yield server.stopService()
        server2 = yield self.start(data_dir)

        def second() -> dict[str, Any]:
            c = self.client(server2)
            try:
                status = c.folder_status("INBOX", [b"HIGHESTMODSEQ"])
                c.select_folder("INBOX")
                before = c.fetch([1, 2], ["MODSEQ"])
                c.add_flags([2], [b"\\Answered"])
                after = c.fetch([1, 2], ["MODSEQ"])
                return {"status": status, "before": before, "after": after}
            finally:
                c.logout()

        two = yield deferToThread(second)
        kept = two["status"][b"HIGHESTMODSEQ"]
        self.assertEqual(kept, highest + 1)  # the conditional STORE of message 2
        self.assertEqual(two["before"][1][b"MODSEQ"][0], modseqs[1])
        self.assertEqual(two["after"][2][b"MODSEQ"][0], kept + 1)
