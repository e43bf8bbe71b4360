"""
OBJECTID (RFC 8474): the parser's new syntax, the handlers without
Twisted, the adapter on StringTransport (the setup of
tests/imap/test_server.py: the memory store, two messages in INBOX), and
an end-to-end check with imaplib against the real service on Maildir,
restarted in between.
"""

from __future__ import annotations

import os
import re
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import alsoProvides

from tests.e2e._server import IMAPRestartCase
from tests.imap.test_commands import FakeContext, FakeMailbox, command
from tests.imap.test_condstore import parse
from tests.imap.test_server import LOGIN, PASSWORD, USER, ServerTestCase
from txmail.imap import fetch, search, serialize
from txmail.imap.commands import capabilities, objectid
from txmail.imap.commands.context import run_now
from txmail.imap.commands.mailboxes import create, status
from txmail.imap.parser import ParseError
from txmail.imap.responses import Done, StatusData, UntaggedOk
from txmail.imap.session import IMAPSession
from txmail.imap.thread import thread_id
from txmail.imap.types import Fetch, FetchAttribute, Search, SearchKey, Status
from txmail.interfaces import IObjectIds
from txmail.mime import parse_metadata
from txmail.model import MessageInfo
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

INFO = MessageInfo(4, frozenset(), 10, 1_600_000_000.0, 5, 1_600_000_100.0, "Mabc-_9")
ROOT = b"Message-ID: <root@example.test>\r\nSubject: hello\r\n\r\nbody\r\n"
REPLY = (
    b"Message-ID: <reply2@example.test>\r\nIn-Reply-To: <reply1@example.test>\r\n"
    b"References: <root@example.test>\r\n <reply1@example.test>\r\nSubject: Re: hello\r\n\r\nbody\r\n"
)
EMAILID_RE = re.compile(rb"EMAILID \((M[0-9a-f]{24})\)")


class ParserTests(SynchronousTestCase):
    """The syntax of RFC 8474 section 7."""

    def test_fetch_items(self) -> None:
        """fetch-att =/ "EMAILID" / "THREADID"."""
        args = parse(b"a FETCH 1:* (EMAILID THREADID)").args
        assert isinstance(args, Fetch)
        self.assertEqual(args.items, (FetchAttribute("EMAILID"), FetchAttribute("THREADID")))

    def test_search_keys(self) -> None:
        """search-key =/ "EMAILID" SP objectid / "THREADID" SP objectid; ids are case-sensitive."""
        args = parse(b"a SEARCH EMAILID Mab-c_D THREADID T1").args
        assert isinstance(args, Search)
        self.assertEqual(args.key.keys, (SearchKey("EMAILID", ("Mab-c_D",)), SearchKey("THREADID", ("T1",))))  # type: ignore[union-attr]
        parse(b"a SEARCH EMAILID " + b"x" * 255)
        for bad in (
            b"a SEARCH EMAILID",
            b"a SEARCH EMAILID ",
            b'a SEARCH EMAILID "M1"',
            b"a SEARCH EMAILID M.1",
            b"a SEARCH THREADID (T1)",
            b"a SEARCH EMAILID " + b"x" * 256,
        ):
            self.assertRaises(ParseError, parse, bad)

    def test_status_item(self) -> None:
        """status-att =/ "MAILBOXID"."""
        args = parse(b"a STATUS INBOX (MAILBOXID MESSAGES)").args
        assert isinstance(args, Status)
        self.assertEqual(args.items, ("MAILBOXID", "MESSAGES"))


class RenderTests(SynchronousTestCase):
    """FETCH and SEARCH on MessageInfo's email_id (txmail.imap.fetch, txmail.imap.search)."""

    def test_fetch(self) -> None:
        """RFC 8474 sections 5.1 and 5.2: EMAILID (id) and THREADID (id); NIL without ids."""
        items = (FetchAttribute("EMAILID"), FetchAttribute("THREADID"))
        self.assertTrue(fetch.fetch_needs(items).metadata)
        self.assertFalse(fetch.fetch_needs(items[:1]).metadata)
        md = parse_metadata(REPLY)
        self.assertEqual(
            fetch.render_fetch(1, items, INFO, metadata=md),
            b"* 1 FETCH (EMAILID (Mabc-_9) THREADID (%s))\r\n" % thread_id(md.headers).encode(),  # type: ignore[union-attr]
        )
        bare = MessageInfo(4, frozenset(), 10, 1.0, 5)  # a store without ids, a message without message ids
        self.assertEqual(
            fetch.render_fetch(1, items, bare, metadata=parse_metadata(b"Subject: x\r\n\r\n")),
            b"* 1 FETCH (EMAILID NIL THREADID NIL)\r\n",
        )

    def test_thread_id(self) -> None:
        """
        RFC 8474 section 5.2: the thread's root is the first References id,
        else the first In-Reply-To id, else the Message-ID; without any, the
        message's own thread, named after its EMAILID.
        """
        root = thread_id(parse_metadata(ROOT).headers)
        assert root is not None
        self.assertRegex(root, r"^T[0-9a-f]{24}$")
        self.assertEqual(thread_id(parse_metadata(REPLY).headers), root)
        self.assertEqual(thread_id(parse_metadata(b"In-Reply-To: <root@example.test>\r\n\r\n").headers), root)
        other = thread_id(parse_metadata(b"Message-ID: <other@example.test>\r\n\r\n").headers)
        self.assertNotEqual(other, root)
        alone = parse_metadata(b"Subject: no ids\r\n\r\n").headers
        self.assertIsNone(thread_id(alone))
        self.assertRegex(thread_id(alone, "M1") or "", r"^T[0-9a-f]{24}$")
        self.assertNotEqual(thread_id(alone, "M1"), thread_id(alone, "M2"))

    def test_search(self) -> None:
        """RFC 8474 section 6: EMAILID and THREADID match exactly."""
        ctx = search.SearchContext(max_seq=1, max_uid=4)
        md = parse_metadata(REPLY)

        def hits(key: bytes, info: MessageInfo = INFO) -> bool:
            args = parse(b"a SEARCH " + key).args
            assert isinstance(args, Search)
            return search.matches(args.key, ctx, 1, info, md)

        self.assertTrue(hits(b"EMAILID Mabc-_9"))
        self.assertFalse(hits(b"EMAILID MABC-_9"))
        self.assertFalse(hits(b"EMAILID Mabc"))
        self.assertTrue(hits(b"THREADID " + (thread_id(md.headers) or "").encode()))
        self.assertFalse(hits(b"THREADID " + (thread_id(md.headers) or "").upper().encode()))
        self.assertTrue(hits(b"NOT THREADID Mabc-_9"))
        self.assertFalse(hits(b"EMAILID Mabc-_9", MessageInfo(4, frozenset(), 10, 1.0, 5)))
        self.assertFalse(search.search_needs(parse(b"a SEARCH EMAILID M1").args.key).metadata)  # type: ignore[union-attr]
        self.assertTrue(search.search_needs(parse(b"a SEARCH THREADID T1").args.key).metadata)  # type: ignore[union-attr]


class IdMailbox(FakeMailbox):
    mailbox_id = "Fbox-1"


class HandlerTests(SynchronousTestCase):
    """The handlers without Twisted (tests/imap/test_commands.py's fakes)."""

    def context(self) -> Any:
        ctx = FakeContext()
        ctx.store.mailboxes["INBOX"] = box = IdMailbox()
        alsoProvides(box, IObjectIds)
        return ctx

    def test_status_mailboxid(self) -> None:
        """RFC 8474 section 4.3: STATUS MAILBOXID, written (id)."""
        ctx = self.context()
        run_now(status(ctx, command(b"a1 STATUS INBOX (MESSAGES MAILBOXID)\r\n")))
        self.assertEqual(ctx.emitted, [StatusData("INBOX", (("MESSAGES", 3), ("MAILBOXID", "Fbox-1")))])
        self.assertEqual(
            b"".join(serialize.render(ctx.emitted[0])), b"* STATUS INBOX (MESSAGES 3 MAILBOXID (Fbox-1))\r\n"
        )

    def test_status_without_ids(self) -> None:
        """A store without IObjectIds: MAILBOXID is left out of STATUS, no error."""
        ctx = FakeContext()
        run_now(status(ctx, command(b"a1 STATUS INBOX (MAILBOXID MESSAGES)\r\n")))
        self.assertEqual(ctx.emitted, [StatusData("INBOX", (("MESSAGES", 3),))])

    def test_create_code(self) -> None:
        """RFC 8474 section 4.1: CREATE's tagged OK carries [MAILBOXID (id)]; none from a store without ids."""
        ctx = FakeContext()
        self.assertEqual(run_now(create(ctx, command(b"a1 CREATE Work\r\n"))), Done())
        alsoProvides(ctx.store.mailboxes["Work"], IObjectIds)
        ctx.store.mailboxes["Work"].mailbox_id = "Fwork"  # type: ignore[attr-defined]
        orig = ctx.store.create_mailbox
        ctx.store.create_mailbox = lambda name: None  # type: ignore[method-assign,assignment]
        self.assertEqual(run_now(create(ctx, command(b"a2 CREATE Work\r\n"))), Done(code="MAILBOXID (Fwork)"))
        ctx.store.create_mailbox = orig  # type: ignore[method-assign]
        # A malformed id from a third-party store is never sent.
        ctx.store.mailboxes["Work"].mailbox_id = "F work"  # type: ignore[attr-defined]
        ctx.store.create_mailbox = lambda name: None  # type: ignore[method-assign,assignment]
        self.assertEqual(run_now(create(ctx, command(b"a3 CREATE Work\r\n"))), Done())


class ObjectIdServerTests(ServerTestCase):
    """Through the adapter, on the memory store."""

    def email_ids(self, out: bytes) -> list[bytes]:
        return EMAILID_RE.findall(out)

    def test_advertised(self) -> None:
        """RFC 8474 section 3: the OBJECTID capability."""
        self.assertIn("OBJECTID", capabilities())

    def test_select_and_examine(self) -> None:
        """RFC 8474 section 4.2: * OK [MAILBOXID (id)] at SELECT and EXAMINE."""
        proto, transport = self.login(select=None)
        line = b"* OK [MAILBOXID (%s)] Ok\r\n" % self.mailbox.mailbox_id.encode()
        self.assertIn(line, self.send(proto, transport, b"s1 SELECT INBOX\r\n"))
        self.assertIn(line, self.send(proto, transport, b"s2 EXAMINE INBOX\r\n"))

    def test_create_status_rename_delete(self) -> None:
        """RFC 8474 section 4: CREATE tells the id, STATUS repeats it, RENAME keeps it, re-creation changes it."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b"c1 CREATE Work\r\n")
        match = re.fullmatch(rb"c1 OK \[MAILBOXID \((F[0-9a-f]{24})\)\] CREATE completed\r\n", out)
        assert match is not None, out
        work = match.group(1)
        self.assertEqual(self.successResultOf(self.store.get_mailbox("Work")).mailbox_id.encode(), work)
        out = self.send(proto, transport, b"c2 STATUS Work (MAILBOXID)\r\n")
        self.assertEqual(out, b"* STATUS Work (MAILBOXID (%s))\r\nc2 OK STATUS completed\r\n" % work)
        self.send(proto, transport, b"c3 RENAME Work Job\r\n")
        out = self.send(proto, transport, b"c4 STATUS Job (MAILBOXID MESSAGES)\r\n")
        self.assertIn(b"(MAILBOXID (%s) MESSAGES 0)" % work, out)
        self.send(proto, transport, b"c5 DELETE Job\r\n")
        out = self.send(proto, transport, b"c6 CREATE Job\r\n")
        self.assertTrue(out.startswith(b"c6 OK [MAILBOXID (F"), out)
        self.assertNotIn(work, out)

    def test_list_status(self) -> None:
        """RFC 5819 LIST-STATUS carries MAILBOXID as STATUS does."""
        proto, transport = self.login(select=None)
        out = self.send(proto, transport, b'l1 LIST "" INBOX RETURN (STATUS (MAILBOXID))\r\n')
        self.assertIn(b"* STATUS INBOX (MAILBOXID (%s))\r\n" % self.mailbox.mailbox_id.encode(), out)

    def test_fetch_and_search(self) -> None:
        """RFC 8474 sections 5 and 6: FETCH EMAILID/THREADID; SEARCH EMAILID and THREADID find the messages."""
        self.successResultOf(self.mailbox.append(ROOT))
        self.successResultOf(self.mailbox.append(REPLY))
        proto, transport = self.login()
        out = self.send(proto, transport, b"f1 FETCH 1:* (EMAILID THREADID)\r\n")
        infos = self.successResultOf(self.mailbox.list_messages())
        root = (thread_id(parse_metadata(ROOT).headers) or "").encode()
        own = [
            (thread_id((), i.email_id) or "").encode() for i in infos[:2]
        ]  # no message ids: threads of their own
        self.assertEqual(
            out,
            b"* 1 FETCH (EMAILID (%s) THREADID (%s))\r\n* 2 FETCH (EMAILID (%s) THREADID (%s))\r\n"
            b"* 3 FETCH (EMAILID (%s) THREADID (%s))\r\n* 4 FETCH (EMAILID (%s) THREADID (%s))\r\n"
            b"f1 OK FETCH completed\r\n"
            % (
                infos[0].email_id.encode(),
                own[0],
                infos[1].email_id.encode(),
                own[1],
                infos[2].email_id.encode(),
                root,
                infos[3].email_id.encode(),
                root,
            ),
        )
        out = self.send(proto, transport, b"f2 UID SEARCH EMAILID %s\r\n" % infos[1].email_id.encode())
        self.assertEqual(out, b"* SEARCH %d\r\nf2 OK SEARCH completed\r\n" % infos[1].uid)
        out = self.send(proto, transport, b"f3 SEARCH THREADID %s\r\n" % root)
        self.assertEqual(out, b"* SEARCH 3 4\r\nf3 OK SEARCH completed\r\n")
        out = self.send(proto, transport, b"f4 SEARCH EMAILID\r\n")
        self.assertTrue(out.startswith(b"f4 BAD "), out)
        out = self.send(proto, transport, b"f5 FETCH 1 (EMAILID\r\n")
        self.assertTrue(out.startswith(b"f5 BAD "), out)

    def test_copy_and_move_keep_email_id(self) -> None:
        """RFC 8474 section 5.1: the message COPYUID pairs with has the source's EMAILID, after COPY and MOVE."""
        self.successResultOf(self.store.create_mailbox("Archive"))
        proto, transport = self.login()
        source = self.email_ids(self.send(proto, transport, b"f1 FETCH 1:2 (EMAILID)\r\n"))
        self.send(proto, transport, b"c1 COPY 1 Archive\r\n")
        self.send(proto, transport, b"m1 MOVE 2 Archive\r\n")
        self.send(proto, transport, b"s1 SELECT Archive\r\n")
        copied = self.email_ids(self.send(proto, transport, b"f2 FETCH 1:* (EMAILID)\r\n"))
        self.assertEqual(copied, source)


class ThirdPartyProvider:
    """A provider of memory stores that does not declare IObjectIdProvider (a third-party backend)."""

    def __init__(self) -> None:
        self.inner = MemoryProvider()

    def store_for(self, user: str) -> Any:
        return self.inner.store_for(user)


class WithheldTests(ServerTestCase):
    """OBJECTID is advertised only for a store provider that declares object ids."""

    def test_withheld(self) -> None:
        """The greeting, CAPABILITY and LOGIN's OK leave OBJECTID out; the rest of the table stays."""
        self.assertEqual(objectid.withheld(self.stores), frozenset())
        provider = ThirdPartyProvider()
        self.assertEqual(objectid.withheld(provider), frozenset({"OBJECTID"}))
        proto, transport = self.connect(stores=provider)
        greeting = transport.value()
        self.assertNotIn(b"OBJECTID", greeting)
        self.assertIn(b" SAVEDATE", greeting)
        out = self.send(proto, transport, LOGIN)
        self.assertNotIn(b"OBJECTID", out)
        out = self.send(proto, transport, b"c1 CAPABILITY\r\n")
        self.assertNotIn(b"OBJECTID", out)
        self.assertIn(b" SAVEDATE", out)
        proto, transport = self.connect()
        self.assertIn(b" OBJECTID", transport.value())

    def test_session(self) -> None:
        """IMAPSession(withheld=...) filters the table's capabilities."""
        self.assertIn("OBJECTID", IMAPSession().capabilities())
        self.assertNotIn("OBJECTID", IMAPSession(withheld={"OBJECTID"}).capabilities())

    def test_mailbox_without_ids(self) -> None:
        """A mailbox without IObjectIds (or with a malformed id) gets no MAILBOXID at SELECT."""
        self.assertEqual(objectid.select_response(FakeMailbox()), ())
        box = IdMailbox()
        alsoProvides(box, IObjectIds)
        self.assertEqual(objectid.select_response(box), (UntaggedOk("Ok", "MAILBOXID (Fbox-1)"),))
        box.mailbox_id = "F" * 256
        self.assertEqual(objectid.select_response(box), ())


class EndToEndTests(IMAPRestartCase):
    """imaplib against the real service on Maildir: the ids before and after a restart."""

    user = USER
    password = PASSWORD

    @defer.inlineCallbacks
    def test_ids_across_restart(self) -> Any:
        """MAILBOXID, EMAILID of a copy and of the original, the same after a restart; SEARCH EMAILID finds it."""
        data_dir = os.path.abspath(self.mktemp())
        server = yield self.start(data_dir)

        def first() -> dict[str, Any]:
            c = self.client(server)
            try:
                caps = c.capabilities
                created = c.create("Work")[1][0]
                c.append("INBOX", "", None, b"Subject: hello\r\n\r\nbody\r\n")
                c.select("INBOX")
                fetched = c.fetch("1", "(EMAILID THREADID)")[1][0]
                c.copy("1", "Work")
                status = c.status("Work", "(MAILBOXID)")[1][0]
                c.select("Work")
                copied = c.fetch("1", "(EMAILID)")[1][0]
                return {
                    "caps": caps,
                    "created": created,
                    "fetched": fetched,
                    "status": status,
                    "copied": copied,
                }
            finally:
                c.logout()

        one = yield deferToThread(first)
        self.assertIn("OBJECTID", one["caps"])
        mailbox_id = re.match(rb"\[MAILBOXID \((F[0-9a-f]{24})\)\]", one["created"])
        assert mailbox_id is not None, one["created"]
        self.assertEqual(one["status"], b"Work (MAILBOXID (%s))" % mailbox_id.group(1))
        (email_id,) = EMAILID_RE.findall(one["fetched"])
        self.assertRegex(one["fetched"], rb"THREADID \(T[0-9a-f]{24}\)")
        self.assertEqual(EMAILID_RE.findall(one["copied"]), [email_id])

        yield server.stopService()
        server2 = yield self.start(data_dir)

        def second() -> dict[str, Any]:
            c = self.client(server2)
            try:
                status = c.status("Work", "(MAILBOXID)")[1][0]
                c.select("Work")
                selected = c.response("MAILBOXID")
                found = c.uid("SEARCH", "EMAILID", email_id.decode())[1][0]
                fetched = c.fetch("1", "(EMAILID)")[1][0]
                return {"status": status, "selected": selected, "found": found, "fetched": fetched}
            finally:
                c.logout()

        two = yield deferToThread(second)
        self.assertEqual(two["status"], one["status"])
        self.assertEqual(two["selected"][1], [b"(%s)" % mailbox_id.group(1)])
        self.assertEqual(two["found"], b"1")
        self.assertEqual(EMAILID_RE.findall(two["fetched"]), [email_id])
