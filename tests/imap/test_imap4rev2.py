"""
IMAP4rev2 (RFC 9051) next to IMAP4rev1, one test per rev2 rule: ENABLE
IMAP4rev2 (section 6.3.1) and what it changes; SEARCHRES (RFC 5182, part
of rev2: RFC 9051 section 6.4.4.1); the rev1 behaviour kept without
ENABLE.

Handler tests drive the command layer without Twisted (the fakes of
``tests/imap/test_commands.py``); adapter tests run on StringTransport
(:class:`tests.imap.test_server.ServerTestCase`: the memory store, two
messages in INBOX, UIDs 1 and 2); the end-to-end test runs imaplib
against the real service on 127.0.0.1 port 0.
"""

from __future__ import annotations

import imaplib
import os
from typing import Any

from twisted.internet import defer
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.e2e._server import start_server
from tests.imap.test_commands import FakeContext, command
from tests.imap.test_server import ServerTestCase
from txmail.imap.commands import capabilities, imap4rev2, searchres
from txmail.imap.commands.base import enable
from txmail.imap.commands.context import run_now
from txmail.imap.commands.mailboxes import status
from txmail.imap.fragment import CommandFragments, CommandFramer
from txmail.imap.parser import SAVED_RESULT, ParseError, parse_command
from txmail.imap.responses import Bad, Enabled
from txmail.imap.server import IMAPServerProtocol
from txmail.imap.types import Copy, Expunge, Fetch, Move, Search, SearchKey, SearchNot, SequenceSet, Store
from txmail.imap.view import SelectedView
from txmail.model import FlagMode, MessageInfo

__all__: list[str] = []

NAME = "Entwürfe"
UTF8 = NAME.encode("utf-8")
MUTF7 = b"Entw&APw-rfe"


def parse(line: bytes, **options: Any) -> Any:
    framer = CommandFramer()
    framer.receive_data(line)
    frame = framer.next_event()
    assert isinstance(frame, CommandFragments)
    return parse_command(frame.fragments, **options)


def infos(*uids: int) -> list[MessageInfo]:
    return [MessageInfo(u, frozenset(), 10, 1_600_000_000.0, 1) for u in uids]


class CapabilityTests(SynchronousTestCase):
    def test_both_versions_advertised(self) -> None:
        """RFC 9051 section 7.2.2 (and section 6.3.1): IMAP4rev1 and IMAP4rev2, with SEARCHRES."""
        caps = capabilities()
        self.assertEqual(caps[0], "IMAP4rev1")
        self.assertIn("IMAP4rev2", caps)
        for name in ("SEARCHRES", "ESEARCH", "ENABLE", "UNSELECT", "MOVE", "UIDPLUS", "NAMESPACE", "IDLE"):
            self.assertIn(name, caps)
        for name in ("SASL-IR", "LIST-EXTENDED", "LIST-STATUS", "BINARY", "SPECIAL-USE", "STATUS=SIZE"):
            self.assertIn(name, caps)
        self.assertIn("LITERAL+", caps)  # RFC 7888: a superset of LITERAL-

    def test_enable(self) -> None:
        """RFC 9051 section 6.3.1: ENABLE IMAP4rev2 is answered ENABLED IMAP4rev2, once."""
        ctx = FakeContext()
        out = enable(ctx.session, command(b"e1 ENABLE IMAP4rev2\r\n"))
        self.assertEqual(list(out), [Enabled(("IMAP4rev2",))])
        self.assertTrue(imap4rev2.enabled(ctx.session))
        self.assertEqual(list(enable(ctx.session, command(b"e2 ENABLE IMAP4rev2\r\n"))), [Enabled(())])

    def test_enable_while_selected_drops_recent(self) -> None:
        """RFC 9051 section 2.3.2: enabled with a mailbox selected, its \\Recent is gone at once."""
        ctx = FakeContext()
        ctx.session.view = view = SelectedView("INBOX", 7, infos(1, 2), recent=[2])
        enable(ctx.session, command(b"e1 ENABLE IMAP4rev2\r\n"))
        self.assertEqual(view.recent, set())
        self.assertEqual(view.display_flags(2, ()), ())
        view.claimed_recent([1])
        self.assertEqual(view.recent, set())
        self.assertEqual(view.updates(), b"")


class HandlerTests(SynchronousTestCase):
    def rev2(self) -> FakeContext:
        ctx = FakeContext()
        enable(ctx.session, command(b"e1 ENABLE IMAP4rev2\r\n"))
        return ctx

    def test_status_recent_is_bad(self) -> None:
        """RFC 9051 section 9: status-att has no RECENT; BAD under rev2, answered under rev1."""
        e = self.assertRaises(Bad, run_now, status(self.rev2(), command(b"a1 STATUS INBOX (RECENT)\r\n")))  # type: ignore[arg-type]
        self.assertEqual(e.status, "BAD")
        ctx = FakeContext()
        run_now(status(ctx, command(b"a1 STATUS INBOX (RECENT)\r\n")))  # type: ignore[arg-type]
        self.assertEqual(ctx.emitted[0].items, (("RECENT", 1),))  # type: ignore[attr-defined]

    def test_recent_search_keys_are_bad(self) -> None:
        """RFC 9051 section 9: search-key has no NEW, OLD, RECENT, UNRECENT (BAD under rev2 only)."""
        rev2 = self.rev2().session
        for key in ("NEW", "OLD", "RECENT", "UNRECENT"):
            node = SearchNot(SearchKey(key))
            self.assertRaises(Bad, imap4rev2.check_search_keys, rev2, node)
            imap4rev2.check_search_keys(FakeContext().session, node)
        imap4rev2.check_search_keys(rev2, SearchKey("SEEN"))

    def test_search_options(self) -> None:
        """RFC 9051 section 6.4.4: without RETURN, rev2 answers as RETURN (ALL); rev1 with SEARCH."""
        self.assertEqual(imap4rev2.search_options(self.rev2().session, None), ())
        self.assertEqual(imap4rev2.search_options(self.rev2().session, ("COUNT",)), ("COUNT",))
        self.assertIsNone(imap4rev2.search_options(FakeContext().session, None))

    def test_utf8_names(self) -> None:
        """RFC 9051 section 5.1: names are UTF-8 after IMAP4rev2 (or UTF8=ACCEPT)."""
        self.assertTrue(imap4rev2.utf8_names({"IMAP4rev2"}))
        self.assertTrue(imap4rev2.utf8_names({"UTF8=ACCEPT"}))
        self.assertFalse(imap4rev2.utf8_names({"CONDSTORE"}))


class ParserTests(SynchronousTestCase):
    """RFC 5182 section 4 (``$``, ``SAVE``) and RFC 9051 section 5.1 (UTF-8 names)."""

    def test_saved_sequence_set(self) -> None:
        """seq-last-command = "$" in FETCH, STORE, COPY, MOVE, UID EXPUNGE and SEARCH keys."""
        self.assertIs(parse(b"a FETCH $ (FLAGS)\r\n").args.sequence_set, SAVED_RESULT)
        for line, kind in (
            (b"a UID FETCH $ FLAGS\r\n", Fetch),
            (b"a STORE $ +FLAGS (\\Seen)\r\n", Store),
            (b"a COPY $ Trash\r\n", Copy),
            (b"a UID MOVE $ Trash\r\n", Move),
        ):
            args = parse(line).args
            self.assertIsInstance(args, kind)
            self.assertTrue(args.sequence_set.saved)
        expunge = parse(b"a UID EXPUNGE $\r\n").args
        assert isinstance(expunge, Expunge) and expunge.uid_set is not None
        self.assertTrue(expunge.uid_set.saved)
        search = parse(b"a SEARCH $ UID $\r\n").args
        assert isinstance(search, Search)
        self.assertEqual(str(search.key.keys[0].args[0]), "$")  # type: ignore[union-attr]
        self.assertTrue(search.key.keys[1].args[0].saved)  # type: ignore[union-attr]

    def test_saved_stands_alone(self) -> None:
        """``$`` is a whole sequence set: ``1,$`` and ``$:3`` are BAD."""
        for line in (b"a FETCH 1,$ FLAGS\r\n", b"a FETCH $:3 FLAGS\r\n", b"a SEARCH $,1\r\n"):
            self.assertRaises(ParseError, parse, line)

    def test_return_save(self) -> None:
        """RFC 5182 section 4: search-return-opt =/ "SAVE"."""
        args = parse(b"a UID SEARCH RETURN (SAVE MIN) SEEN\r\n").args
        self.assertEqual(args.return_options, ("SAVE", "MIN"))
        self.assertRaises(ParseError, parse, b"a SEARCH RETURN (KEEP) SEEN\r\n")

    def test_utf8_names_only(self) -> None:
        """RFC 9051 section 5.1: UTF-8 names, while SEARCH CHARSET stays valid (unlike UTF8=ACCEPT)."""
        self.assertEqual(parse(b'a SELECT "' + UTF8 + b'"\r\n', utf8_names=True).args.mailbox, NAME)
        self.assertEqual(parse(b"a SELECT A&B\r\n", utf8_names=True).args.mailbox, "A&B")
        self.assertEqual(parse(b"a SEARCH CHARSET UTF-8 ALL\r\n", utf8_names=True).args.charset, "UTF-8")
        self.assertEqual(parse(b"a SELECT " + MUTF7 + b"\r\n").args.mailbox, NAME)


class SearchResTests(SynchronousTestCase):
    """RFC 5182 section 2.1 on a view."""

    def test_resolve_saved(self) -> None:
        """``$`` names the saved messages still there, as UIDs or sequence numbers alike."""
        view = SelectedView("INBOX", 7, infos(3, 5, 8))
        self.assertEqual(view.resolve(SAVED_RESULT, uid=False), [])
        view.saved = frozenset({5, 8, 9})
        self.assertEqual(view.resolve(SAVED_RESULT, uid=True), [(2, 5), (3, 8)])
        self.assertEqual(view.resolve(SAVED_RESULT, uid=False), [(2, 5), (3, 8)])
        view.expunge([5])
        self.assertEqual(view.resolve(SAVED_RESULT, uid=False), [(2, 8)])

    def test_save_rules(self) -> None:
        """SAVE with MIN and/or MAX only keeps those; alone or with ALL/COUNT, every match."""
        view = SelectedView("INBOX", 7, infos(3, 5, 8))
        for options, kept in (
            (("SAVE",), {3, 5, 8}),
            (("SAVE", "MIN"), {3}),
            (("MAX", "SAVE"), {8}),
            (("SAVE", "MIN", "MAX"), {3, 8}),
            (("SAVE", "MIN", "COUNT"), {3, 5, 8}),
        ):
            searchres.save(view, options, [3, 5, 8])
            self.assertEqual(view.saved, kept, options)
        searchres.forget(view, ("SAVE",))
        self.assertEqual(view.saved, frozenset())

    def test_shown_options(self) -> None:
        """SAVE alone sends no ESEARCH; otherwise the other options are answered."""
        self.assertIsNone(searchres.shown_options(("SAVE",)))
        self.assertIsNone(searchres.shown_options(None))
        self.assertEqual(searchres.shown_options(("SAVE", "COUNT")), ("COUNT",))
        self.assertEqual(searchres.shown_options(()), ())

    def test_replace_saved(self) -> None:
        """``$`` and ``UID $`` in the keys become the saved UIDs."""
        view = SelectedView("INBOX", 7, infos(3, 5, 8))
        view.saved = frozenset({5})
        node = searchres.replace_saved(SearchNot(SearchKey("SEQUENCE", (SAVED_RESULT,))), view)
        self.assertEqual(node, SearchNot(SearchKey("UID", (SequenceSet(((5, 5),)),))))


class RevTwoServerTests(ServerTestCase):
    """Through the adapter, after ENABLE IMAP4rev2 (and without it: nothing changes)."""

    def enabled(self, select: str | None = "INBOX") -> tuple[IMAPServerProtocol, StringTransport]:
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"e1 ENABLE IMAP4rev2\r\n")
        self.assertEqual(out, b"* ENABLED IMAP4rev2\r\ne1 OK ENABLE completed\r\n")
        if select is not None:
            out = self.send(proto, transport, b"s1 SELECT " + select.encode() + b"\r\n")
            self.assertIn(b"s1 OK [READ-WRITE] ", out)
        return proto, transport

    def test_select_responses(self) -> None:
        """RFC 9051 section 6.3.2: no RECENT, no UNSEEN, and the mailbox's LIST response."""
        proto, transport = self.enabled(select=None)
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"* 2 EXISTS\r\n", out)
        self.assertNotIn(b"RECENT", out)
        self.assertNotIn(b"UNSEEN", out)
        self.assertIn(b"* OK [UIDNEXT 3] ", out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\ns1 OK [READ-WRITE] SELECT completed\r\n', out)
        out = self.send(proto, transport, b"s2 EXAMINE INBOX\r\n")
        self.assertNotIn(b"RECENT", out)
        self.assertIn(b'* LIST (\\HasNoChildren) "/" INBOX\r\ns2 OK [READ-ONLY] EXAMINE completed\r\n', out)

    def test_select_rev1_unchanged(self) -> None:
        """Without ENABLE: RECENT and UNSEEN as before, no LIST (RFC 3501 section 6.3.1)."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"s1 SELECT INBOX\r\n")
        self.assertIn(b"* 2 RECENT\r\n", out)
        self.assertIn(b"* OK [UNSEEN 1] ", out)
        self.assertNotIn(b"* LIST", out)

    def test_no_recent_flag(self) -> None:
        """RFC 9051 section 2.3.2: no \\Recent in FLAGS, nor claimed from rev1 sessions."""
        proto, transport = self.enabled()
        out = self.send(proto, transport, b"f1 FETCH 1:* (FLAGS)\r\n")
        self.assertEqual(out, b"* 1 FETCH (FLAGS ())\r\n* 2 FETCH (FLAGS ())\r\nf1 OK FETCH completed\r\n")
        # Not claimed: a rev1 session still sees them as \Recent.
        other, transport2 = self.login(select=None)
        out = self.send(other, transport2, b"s1 EXAMINE INBOX\r\n")
        self.assertIn(b"* 2 RECENT\r\n", out)

    def test_no_recent_response_on_new_mail(self) -> None:
        """RFC 9051 section 7.4.1 has no RECENT: new mail is told with EXISTS only."""
        proto, transport = self.enabled()
        self.successResultOf(self.mailbox.append(b"Subject: new\r\n\r\nx\r\n", (), 1_600_000_001))
        out = self.send(proto, transport, b"n1 NOOP\r\n")
        self.assertEqual(out, b"* 3 EXISTS\r\nn1 OK NOOP completed\r\n")
        out = self.send(proto, transport, b"f1 FETCH 3 (FLAGS)\r\n")
        self.assertEqual(out, b"* 3 FETCH (FLAGS ())\r\nf1 OK FETCH completed\r\n")

    def test_search_answers_esearch(self) -> None:
        """RFC 9051 section 6.4.4: SEARCH is answered with ESEARCH, with the TAG correlator (and UID)."""
        proto, transport = self.enabled()
        out = self.send(proto, transport, b"f1 SEARCH ALL\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f1") ALL 1:2\r\nf1 OK SEARCH completed\r\n')
        out = self.send(proto, transport, b"f2 UID SEARCH ALL\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f2") UID ALL 1:2\r\nf2 OK SEARCH completed\r\n')
        out = self.send(proto, transport, b"f3 SEARCH DELETED\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f3")\r\nf3 OK SEARCH completed\r\n')
        out = self.send(proto, transport, b"f4 SEARCH RETURN (COUNT) ALL\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f4") COUNT 2\r\nf4 OK SEARCH completed\r\n')

    def test_search_rev1_unchanged(self) -> None:
        """Without ENABLE, SEARCH is answered with ``* SEARCH`` (RFC 3501 section 7.2.5)."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 SEARCH ALL\r\n")
        self.assertEqual(out, b"* SEARCH 1 2\r\nf1 OK SEARCH completed\r\n")

    def test_search_recent_keys_bad(self) -> None:
        """RFC 9051 section 9: NEW/OLD/RECENT/UNRECENT are not rev2 search keys: BAD."""
        proto, transport = self.enabled()
        out = self.send(proto, transport, b"f1 SEARCH OR SEEN NEW\r\n")
        self.assertTrue(out.startswith(b"f1 BAD "), out)

    def test_status_items(self) -> None:
        """RFC 9051 section 6.3.11: STATUS SIZE and DELETED; RECENT is BAD (also in LIST-STATUS)."""
        proto, transport = self.enabled(select=None)
        out = self.send(proto, transport, b"t1 STATUS INBOX (MESSAGES SIZE DELETED)\r\n")
        self.assertRegex(out, rb"^\* STATUS INBOX \(MESSAGES 2 SIZE \d+ DELETED 0\)\r\nt1 OK ")
        out = self.send(proto, transport, b"t2 STATUS INBOX (RECENT)\r\n")
        self.assertTrue(out.startswith(b"t2 BAD "), out)
        out = self.send(proto, transport, b'l1 LIST "" INBOX RETURN (STATUS (RECENT))\r\n')
        self.assertTrue(out.startswith(b"l1 BAD "), out)

    def test_delete_has_children(self) -> None:
        """RFC 9051 sections 6.3.5 and 7.1: NO [HASCHILDREN] under rev2, NO [CANNOT] (RFC 5530) under rev1."""
        self.successResultOf(self.store.create_mailbox("Work/2024"))
        self.successResultOf(self.store.delete_mailbox("Work"))  # now kept only by its child
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"d1 DELETE Work\r\n")
        self.assertTrue(out.startswith(b"d1 NO [CANNOT] "), out)
        proto, transport = self.enabled(select=None)
        out = self.send(proto, transport, b"d2 DELETE Work\r\n")
        self.assertTrue(out.startswith(b"d2 NO [HASCHILDREN] "), out)
        out = self.send(proto, transport, b"d3 DELETE Nothing\r\n")
        self.assertTrue(out.startswith(b"d3 NO [NONEXISTENT] "), out)

    def test_utf8_names(self) -> None:
        """RFC 9051 section 5.1: mailbox names in UTF-8 both ways, not modified UTF-7."""
        proto, transport = self.enabled(select=None)
        out = self.send(proto, transport, b'c1 CREATE "' + UTF8 + b'"\r\n')
        self.assertRegex(out, rb"\Ac1 OK (\[MAILBOXID \(F[0-9a-f]{24}\)\] )?CREATE completed\r\n\Z")
        self.assertIn(NAME, [f.name for f in self.successResultOf(self.store.list_mailboxes())])
        out = self.send(proto, transport, b'l1 LIST "" "Entw*"\r\n')
        self.assertEqual(out, b'* LIST (\\HasNoChildren) "/" "' + UTF8 + b'"\r\nl1 OK LIST completed\r\n')
        out = self.send(proto, transport, b's1 SELECT "' + UTF8 + b'"\r\n')
        self.assertIn(b'* LIST (\\HasNoChildren) "/" "' + UTF8 + b'"\r\n', out)
        out = self.send(proto, transport, b"f2 SEARCH CHARSET UTF-8 ALL\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f2")\r\nf2 OK SEARCH completed\r\n')


class SearchResServerTests(ServerTestCase):
    """RFC 5182 (SEARCHRES) through the adapter, with or without IMAP4rev2."""

    def test_save_and_fetch(self) -> None:
        """Section 2.1: RETURN (SAVE) sends no ESEARCH; FETCH $ and UID FETCH $ name the saved messages."""
        proto, transport = self.login()
        self.successResultOf(self.mailbox.set_flags([2], {"\\Flagged"}, FlagMode.ADD))
        self.send(proto, transport, b"n1 NOOP\r\n")
        out = self.send(proto, transport, b"f1 SEARCH RETURN (SAVE) FLAGGED\r\n")
        self.assertEqual(out, b"f1 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"f2 FETCH $ (UID)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID 2)\r\nf2 OK FETCH completed\r\n")
        out = self.send(proto, transport, b"f3 UID SEARCH RETURN (ALL SAVE) NOT $\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f3") UID ALL 1\r\nf3 OK SEARCH completed\r\n')
        out = self.send(proto, transport, b"f4 UID FETCH $ (FLAGS)\r\n")
        self.assertEqual(out, b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\nf4 OK UID FETCH completed\r\n")

    def test_save_min_max(self) -> None:
        """Section 2.1: with MIN (or MAX) only, that message alone is saved."""
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 SEARCH RETURN (MAX SAVE) ALL\r\n")
        self.assertEqual(out, b'* ESEARCH (TAG "f1") MAX 2\r\nf1 OK SEARCH completed\r\n')
        out = self.send(proto, transport, b"f2 SEARCH $\r\n")
        self.assertEqual(out, b"* SEARCH 2\r\nf2 OK SEARCH completed\r\n")

    def test_store_copy_move_expunge(self) -> None:
        """Section 2.1: STORE, COPY, MOVE and UID EXPUNGE take $; an expunged message leaves it."""
        proto, transport = self.login()
        self.send(proto, transport, b"f1 UID SEARCH RETURN (SAVE) UID 1\r\n")
        out = self.send(proto, transport, b"t1 STORE $ +FLAGS.SILENT (\\Deleted)\r\n")
        self.assertEqual(out, b"t1 OK STORE completed\r\n")
        self.assertIn("\\Deleted", self.flags(1))
        out = self.send(proto, transport, b"c1 COPY $ Trash\r\n")
        self.assertIn(b"c1 OK [COPYUID ", out)
        out = self.send(proto, transport, b"x1 UID EXPUNGE $\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nx1 OK EXPUNGE completed\r\n")
        out = self.send(proto, transport, b"f2 FETCH $ (UID)\r\n")
        self.assertEqual(out, b"f2 OK FETCH completed\r\n")
        self.send(proto, transport, b"f3 SEARCH RETURN (SAVE) ALL\r\n")
        out = self.send(proto, transport, b"m1 MOVE $ Trash\r\n")
        self.assertIn(b"[COPYUID ", out)
        self.assertIn(b"* 1 EXPUNGE\r\n", out)
        trash = self.successResultOf(self.store.get_mailbox("Trash"))
        self.assertEqual(len(self.successResultOf(trash.list_messages())), 2)

    def test_reset_on_select(self) -> None:
        """Section 2.1: $ is empty after SELECT; a failed SEARCH with SAVE empties it."""
        proto, transport = self.login()
        self.send(proto, transport, b"f1 SEARCH RETURN (SAVE) ALL\r\n")
        self.send(proto, transport, b"s2 SELECT INBOX\r\n")
        out = self.send(proto, transport, b"f2 FETCH $ (UID)\r\n")
        self.assertEqual(out, b"f2 OK FETCH completed\r\n")
        self.send(proto, transport, b"f3 SEARCH RETURN (SAVE) ALL\r\n")
        out = self.send(proto, transport, b"f4 SEARCH RETURN (SAVE) CHARSET KOI8-R ALL\r\n")
        self.assertTrue(out.startswith(b"f4 NO [BADCHARSET"), out)
        out = self.send(proto, transport, b"f5 FETCH $ (UID)\r\n")
        self.assertEqual(out, b"f5 OK FETCH completed\r\n")

    def test_saved_in_sort(self) -> None:
        """$ in the search keys of SORT (RFC 5182 section 2.1: any command taking a search key)."""
        proto, transport = self.login()
        self.send(proto, transport, b"f1 SEARCH RETURN (SAVE) 2\r\n")
        out = self.send(proto, transport, b"o1 SORT (SUBJECT) UTF-8 $\r\n")
        self.assertEqual(out, b"* SORT 2\r\no1 OK SORT completed\r\n")


class EndToEndTests(TestCase):
    """imaplib against the real service: ENABLE IMAP4rev2, then SELECT, SEARCH, FETCH, STATUS, LIST."""

    timeout = 120

    @defer.inlineCallbacks
    def test_rev2_session(self) -> Any:
        data_dir = os.path.abspath(self.mktemp())
        server = yield start_server(self, imap=["tcp:0:interface=127.0.0.1"], data_dir=data_dir)
        server.directory.add_user("bob@example.test", "s3cret-pass")
        host, port = server.address("imap")

        def session() -> dict[str, Any]:
            c = imaplib.IMAP4(host, port, timeout=20)
            try:
                c.login("bob@example.test", "s3cret-pass")
                caps = c.capabilities
                for n in range(3):
                    c.append("INBOX", "", None, b"Subject: m%d\r\n\r\nbody\r\n" % n)
                enabled = (c.enable("IMAP4rev2")[0], c.response("ENABLED")[1])
                c.select("INBOX")
                got = {"caps": caps, "enabled": enabled, "recent": c.response("RECENT")}
                got["list"] = c.response("LIST")
                c.store("2", "+FLAGS", "(\\Flagged)")
                got["search"] = c._simple_command("SEARCH", "FLAGGED")
                got["esearch"] = c.response("ESEARCH")
                got["fetch"] = c.fetch("1:*", "(FLAGS)")
                got["status"] = c.status("INBOX", "(MESSAGES SIZE DELETED)")
                try:
                    got["status_recent"] = c._simple_command("STATUS", "INBOX", "(RECENT)")[0]
                except imaplib.IMAP4.error as e:
                    got["status_recent"] = str(e)
                got["listed"] = c.list('""', "INBOX")
                return got
            finally:
                c.logout()

        got = yield deferToThread(session)
        self.assertIn("IMAP4REV2", got["caps"])
        self.assertIn("IMAP4REV1", got["caps"])
        self.assertEqual(got["enabled"], ("OK", [b"IMAP4rev2"]))
        self.assertEqual(got["recent"], ("RECENT", [None]))
        self.assertEqual(got["list"][1][0], b'(\\HasNoChildren) "/" INBOX')
        self.assertEqual(got["search"][0], "OK")
        self.assertRegex(got["esearch"][1][0], rb'^\(TAG "\w+"\) ALL 2$')
        self.assertEqual(got["fetch"][1], [b"1 (FLAGS ())", b"2 (FLAGS (\\Flagged))", b"3 (FLAGS ())"])
        self.assertRegex(got["status"][1][0], rb"^INBOX \(MESSAGES 3 SIZE \d+ DELETED 0\)$")
        self.assertIn("BAD", got["status_recent"])
        self.assertEqual(got["listed"], ("OK", [b'(\\HasNoChildren) "/" INBOX']))
