"""
CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 section 4): the syntax, the
ESEARCH forms, the updating searches of :mod:`txmail.imap.contexts` on
their own and driven by the SEARCH handler without Twisted, and the whole
exchange through the adapter (the setup of tests/imap/test_server.py: the
memory store, INBOX holding "one" from bob, UID 1, and "two", UID 2).
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet import defer
from twisted.trial.unittest import SynchronousTestCase

from tests.imap.test_commands import FakeContext, command
from tests.imap.test_server import ServerTestCase
from txmail.imap import serialize
from txmail.imap.commands import COMMANDS, State, allowed, capabilities
from txmail.imap.commands.context import run_now
from txmail.imap.commands.selected import search
from txmail.imap.contexts import MAX_CONTEXTS, ResultContext, ResultContexts, Reverse, freeze
from txmail.imap.parser import ParseError
from txmail.imap.responses import Bad, ContextUpdate, ESearchData, ESortData, NoUpdate
from txmail.imap.types import CancelUpdate, SearchAnd, SearchKey, SequenceSet
from txmail.imap.view import SelectedView
from txmail.mime import parse_metadata
from txmail.model import (
    DELETED,
    SEEN,
    FlagMode,
    FlagsChanged,
    MailboxDeleted,
    MessageInfo,
    MessagesAdded,
    MessagesExpunged,
)
from txmail.store.memory import MemoryProvider

__all__: list[str] = []


def parse(line: bytes) -> Any:
    return command(line + b"\r\n")


def render(response: Any) -> bytes:
    return b"".join(serialize.render(response))


def info(uid: int, flags: tuple[str, ...] = ()) -> MessageInfo:
    return MessageInfo(uid, frozenset(flags), 100, 1_600_000_000.0, uid)


class ParserTests(SynchronousTestCase):
    """RFC 5267 section 5."""

    def test_partial(self) -> None:
        """modifier-partial = "PARTIAL" SP partial-range; 500:400 is 400:500."""
        args = parse(b"a SEARCH RETURN (PARTIAL 500:400 COUNT) ALL").args
        self.assertEqual((args.return_options, args.partial), (("PARTIAL", "COUNT"), (400, 500)))
        args = parse(b"a UID SORT RETURN (partial 1:10) (ARRIVAL) UTF-8 ALL").args
        self.assertEqual((args.return_options, args.partial, args.uid), (("PARTIAL",), (1, 10), True))
        self.assertIsNone(parse(b"a SEARCH RETURN (MIN) ALL").args.partial)

    def test_update_and_context(self) -> None:
        """modifier-update and modifier-context are return options of SEARCH and SORT."""
        args = parse(b"a SEARCH RETURN (CONTEXT UPDATE COUNT) UNSEEN").args
        self.assertEqual(args.return_options, ("CONTEXT", "UPDATE", "COUNT"))
        args = parse(b"a SORT RETURN (UPDATE) (DATE) UTF-8 ALL").args
        self.assertEqual(args.return_options, ("UPDATE",))

    def test_bad_return_options(self) -> None:
        """Section 4.4: PARTIAL with ALL; nz-number, no "*"; one PARTIAL and one UPDATE."""
        for line in (
            b"a SEARCH RETURN (PARTIAL 1:10 ALL) ALL",
            b"a SEARCH RETURN (ALL PARTIAL 1:10) ALL",
            b"a SORT RETURN (PARTIAL 1:10 ALL) (DATE) UTF-8 ALL",
            b"a SEARCH RETURN (PARTIAL 0:10) ALL",
            b"a SEARCH RETURN (PARTIAL 1:*) ALL",
            b"a SEARCH RETURN (PARTIAL 5) ALL",
            b"a SEARCH RETURN (PARTIAL) ALL",
            b"a SEARCH RETURN (PARTIAL -1:-10) ALL",  # RFC 9394's, not offered
            b"a SEARCH RETURN (PARTIAL 1:2 PARTIAL 3:4) ALL",
            b"a SEARCH RETURN (UPDATE UPDATE) ALL",
            b"a SEARCH RETURN (PARTIAL 1:99999999999) ALL",
            b"a SORT RETURN (SAVE) (DATE) UTF-8 ALL",  # SAVE is SEARCH's (RFC 5182)
            b"a SEARCH RETURN (FOO) ALL",
        ):
            self.assertRaises(ParseError, parse, line)

    def test_cancelupdate(self) -> None:
        """command-select =/ "CANCELUPDATE" 1*(SP quoted)."""
        self.assertEqual(parse(b'a CANCELUPDATE "B01"').args, CancelUpdate(("B01",)))
        self.assertEqual(parse(b'a CANCELUPDATE "x" "y\\\\z"').args, CancelUpdate(("x", "y\\z")))
        for line in (
            b"a CANCELUPDATE",
            b"a CANCELUPDATE B01",
            b'a CANCELUPDATE "B01" ',
            b'a UID CANCELUPDATE "x"',
        ):
            self.assertRaises(ParseError, parse, line)

    def test_table(self) -> None:
        """CANCELUPDATE is a command of the selected state; both capabilities are advertised."""
        self.assertIn("CANCELUPDATE", allowed(State.SELECTED))
        self.assertNotIn("CANCELUPDATE", allowed(State.AUTHENTICATED))
        self.assertEqual(COMMANDS["CANCELUPDATE"].capability, "CONTEXT=SEARCH")
        caps = capabilities()
        for cap in ("ESEARCH", "SORT", "ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT"):
            self.assertIn(cap, caps)


class SerializeTests(SynchronousTestCase):
    """The ESEARCH forms of RFC 5267 section 5."""

    def test_partial_search(self) -> None:
        """ret-data-partial: the requested range, then the results in it or NIL (section 4.4)."""
        found = [2, 3, 5, 7, 11]
        self.assertEqual(
            render(ESearchData("A02", True, found, ("PARTIAL", "COUNT"), partial=(2, 3))),
            b'* ESEARCH (TAG "A02") UID PARTIAL (2:3 3,5) COUNT 5\r\n',
        )
        self.assertEqual(
            render(ESearchData("A03", False, found, ("PARTIAL",), partial=(4, 10))),
            b'* ESEARCH (TAG "A03") PARTIAL (4:10 7,11)\r\n',
        )
        self.assertEqual(
            render(ESearchData("A04", True, found, ("PARTIAL",), partial=(6, 9))),
            b'* ESEARCH (TAG "A04") UID PARTIAL (6:9 NIL)\r\n',
        )
        self.assertEqual(
            render(ESearchData("A05", True, [], ("MIN", "PARTIAL"), partial=(1, 5))),
            b'* ESEARCH (TAG "A05") UID PARTIAL (1:5 NIL)\r\n',
        )

    def test_update_and_context_ask_nothing(self) -> None:
        """UPDATE and CONTEXT are no result options: alone, the answer is ALL (RFC 4731 section 3.1)."""
        self.assertEqual(
            render(ESearchData("u", False, [1, 2], ("UPDATE", "CONTEXT"))), b'* ESEARCH (TAG "u") ALL 1:2\r\n'
        )
        self.assertEqual(
            render(ESearchData("u", False, [1, 2], ("UPDATE", "COUNT"))), b'* ESEARCH (TAG "u") COUNT 2\r\n'
        )

    def test_partial_sort(self) -> None:
        """Section 4.4 for SORT: a window of the sort order."""
        self.assertEqual(
            render(ESortData("s", True, [9, 3, 4, 5, 1], ("PARTIAL", "MIN"), partial=(2, 4))),
            b'* ESEARCH (TAG "s") UID MIN 9 PARTIAL (2:4 3:5)\r\n',
        )
        self.assertEqual(
            render(ESortData("s", False, [9, 3], ("PARTIAL",), partial=(3, 3))),
            b'* ESEARCH (TAG "s") PARTIAL (3:3 NIL)\r\n',
        )

    def test_context_update(self) -> None:
        """ret-data-removefrom, then ret-data-addto; each set keeps its order."""
        update = ContextUpdate("B01", True, ((0, (32768,)),), ((0, (32768, 32769)),))
        self.assertEqual(
            render(update), b'* ESEARCH (TAG "B01") UID REMOVEFROM (0 32768) ADDTO (0 32768:32769)\r\n'
        )
        update = ContextUpdate("C01", False, (), ((1, (2731, 2732, 2733)), (5, (9, 7))))
        self.assertEqual(render(update), b'* ESEARCH (TAG "C01") ADDTO (1 2731:2733 5 9,7)\r\n')
        self.assertEqual(render(ContextUpdate("C01", False)), b"")

    def test_noupdate(self) -> None:
        """resp-text-code =/ "NOUPDATE" SP quoted (section 4.3.1)."""
        self.assertEqual(render(NoUpdate("B02")), b'* NO [NOUPDATE "B02"] Too many updating searches\r\n')


class ContextTests(SynchronousTestCase):
    """:class:`ResultContext` and :class:`ResultContexts` on a view of UIDs 10, 20, 30, 40, 50."""

    def setUp(self) -> None:
        self.view = SelectedView("INBOX", 1, [info(u) for u in (10, 20, 30, 40, 50)])

    def test_reverse(self) -> None:
        """REVERSE keys sort the other way; ties fall to the next key."""
        keys = [(Reverse(b"a"), 1), (Reverse(b"b"), 2), (Reverse(b"a"), 0)]
        self.assertEqual(sorted(keys), [(Reverse(b"b"), 2), (Reverse(b"a"), 0), (Reverse(b"a"), 1)])

    def test_freeze(self) -> None:
        """Section 4.3: message numbers are the UIDs they named; a UID set keeps its "*"."""
        key = SearchAnd((SearchKey("SEQUENCE", (SequenceSet(((2, 3), (5, None))),)), SearchKey("SEEN")))
        frozen = freeze(key, self.view)
        assert isinstance(frozen, SearchAnd)
        uid_key = frozen.keys[0]
        assert isinstance(uid_key, SearchKey)
        self.assertEqual(uid_key.name, "UID")
        self.assertEqual(uid_key.args[0].ranges, ((20, 20), (30, 30), (50, 50)))  # type: ignore[union-attr]
        star = SearchKey("UID", (SequenceSet(((40, None),)),))
        self.assertIs(freeze(star, self.view), star)

    def sorted_context(self, uid: bool = True) -> ResultContext:
        """A SORT context whose order is the reverse of the UIDs."""
        context = ResultContext("s", uid, SearchKey("ALL"), lambda i, md: (Reverse(i.uid),))
        self.assertIsNone(context.open([(Reverse(u), u) for u in (10, 20, 30, 40, 50)], self.view))
        return context

    def test_sort_positions(self) -> None:
        """Sections 4.3.3 and 4.3.4: positions in the sort order; adjacent changes in one set."""
        context = self.sorted_context()
        self.assertEqual(context.results(), [50, 40, 30, 20, 10])
        update = context.expunged([40, 30, 10], self.view)
        self.assertEqual(update, ContextUpdate("s", True, ((2, (40, 30)), (3, (10,))), ()))
        self.assertEqual(context.results(), [50, 20])
        context.changed([10, 30, 60])
        context.ready = {10: (Reverse(10), 10), 30: (Reverse(30), 30), 60: (Reverse(60), 60)}
        # 60 is not in the view yet: it waits (section 4.3.3, after EXISTS).
        update = context.updates(self.view)
        self.assertEqual(update, ContextUpdate("s", True, (), ((2, (30,)), (4, (10,)))))
        self.assertEqual(context.results(), [50, 30, 20, 10])
        self.assertEqual(set(context.ready), {60})

    def test_client_follows(self) -> None:
        """A client applying each update in order (sections 4.3.3, 4.3.4) ends with the context's list."""
        rng = random.Random(5267)
        view = SelectedView("INBOX", 1, [info(u) for u in range(1, 201)])
        for size in (3, 15, 16, 60):
            context = ResultContext("s", True, SearchKey("ALL"), lambda i, md: (i.uid % 7,))
            shown = rng.sample(range(1, 201), 80)
            context.open([(u % 7, u) for u in shown], view)
            client = context.results()
            for _ in range(5):
                gone = rng.sample(context.results(), min(size, len(context)))
                new = rng.sample([u for u in range(1, 201) if u not in context.results()], size)
                context.ready = {**dict.fromkeys(gone), **{u: (u % 7, u) for u in new}}
                update = context.updates(view)
                assert update is not None
                for position, numbers in update.removed:
                    for n in numbers:
                        self.assertEqual(client.pop(position - 1), n)
                for position, numbers in update.added:
                    for k, n in enumerate(numbers):
                        client.insert(position - 1 + k, n)
                self.assertEqual(client, context.results())
                self.assertEqual(client, sorted(client, key=lambda u: (u % 7, u)))

    def test_sort_by_message_number(self) -> None:
        """A SORT context of message numbers: the numbers the client has now."""
        context = self.sorted_context(uid=False)
        update = context.expunged([20, 30], self.view)
        self.assertEqual(update, ContextUpdate("s", False, ((3, (3, 2)),), ()))

    def test_search_positions(self) -> None:
        """A SEARCH context's changes are at position 0, in mailbox order."""
        context = ResultContext("a", False, SearchKey("UNSEEN"))
        context.open([(30,), (10,)], self.view)
        context.ready = {50: (50,), 20: (20,), 30: None, 40: None}
        update = context.updates(self.view)
        self.assertEqual(update, ContextUpdate("a", False, ((0, (3,)),), ((0, (2, 5)),)))
        self.assertEqual(context.results(), [10, 20, 50])
        self.assertIsNone(context.updates(self.view))

    def test_opening(self) -> None:
        """While its command runs, expunges are kept and told once it has told its results."""
        context = ResultContext("a", True, SearchKey("ALL"))
        self.assertIsNone(context.expunged([20, 40], self.view))
        context.changed([30])
        update = context.open([(10,), (20,), (30,)], self.view)
        self.assertEqual(update, ContextUpdate("a", True, ((0, (20,)),), ()))
        self.assertEqual(context.pending, {30})

    def test_expunged_while_reading(self) -> None:
        """A message expunged while its metadata is read is not judged (no ADDTO of a gone message)."""
        metadata: defer.Deferred[dict[int, Any]] = defer.Deferred()

        class Mailbox:
            def list_messages(self, uids: Any) -> list[MessageInfo]:
                return [info(u) for u in uids]

            def get_metadata(self, uids: Any) -> defer.Deferred[dict[int, Any]]:
                return metadata

        contexts = ResultContexts()
        context = ResultContext("a", True, SearchKey("FROM", ("bob",)))
        contexts.add(context)
        context.open([], self.view)
        contexts.heard(MessagesAdded((info(20), info(30))), self.view)
        done = defer.Deferred.fromCoroutine(contexts.refresh(Mailbox(), self.view))
        self.assertNoResult(done)
        contexts.heard(MessagesExpunged((20,)), self.view)
        md = parse_metadata(b"From: bob@x.test\r\n\r\nx\r\n")
        metadata.callback({20: md, 30: md})
        self.successResultOf(done)
        self.assertEqual(context.ready, {30: (30,)})

    def test_contexts(self) -> None:
        """The session's contexts: heard changes, the limit, CANCELUPDATE, the end."""
        contexts = ResultContexts(limit=2)
        a = ResultContext("a", True, SearchKey("ALL"))
        contexts.add(a)
        a.open([(10,), (20,)], self.view)
        contexts.add(ResultContext("b", True, SearchKey("ALL")))  # never opened: its command failed
        self.assertTrue(contexts.full)
        contexts.drop_unopened()
        self.assertEqual((len(contexts), "a" in contexts, "b" in contexts), (1, True, False))
        self.assertEqual(
            contexts.heard(MessagesExpunged((20, 30)), self.view),
            [ContextUpdate("a", True, ((0, (20,)),), ())],
        )
        self.assertEqual(contexts.heard(FlagsChanged((info(10, (SEEN,)),)), self.view), [])
        self.assertEqual(contexts.heard(MessagesAdded((info(60),)), self.view), [])
        self.assertEqual(a.pending, {10, 60})
        self.assertTrue(contexts.pending)
        contexts.cancel(["a"])
        self.assertEqual(len(contexts), 0)
        contexts.add(a)
        contexts.clear()
        self.assertEqual(len(contexts), 0)
        contexts.add(a)
        self.assertEqual(contexts.heard(MailboxDeleted(), self.view), [])
        self.assertEqual(len(contexts), 0)


class HandlerTests(SynchronousTestCase):
    """The SEARCH handler and the contexts, driven without Twisted (memory store)."""

    def setUp(self) -> None:
        self.store = self.successResultOf(MemoryProvider().store_for("alice@example.test"))
        self.mailbox = run_now(self.get())
        for n in range(3):
            self.mailbox.append(
                b"Subject: %d\r\nFrom: bob@x.test\r\n\r\nbody %d\r\n" % (n, n), (), 1_600_000_000
            )
        self.ctx = FakeContext()
        self.ctx.mailbox = self.mailbox
        infos = self.mailbox.list_messages().result
        self.ctx.session.view = SelectedView("INBOX", self.mailbox.uidvalidity, infos)

    async def get(self) -> Any:
        return await self.store.get_mailbox("INBOX")

    def test_update_cycle(self) -> None:
        """RETURN (UPDATE COUNT): COUNT now; flag changes and arrivals judged by refresh, told by updates."""
        ctx, view, contexts = self.ctx, self.ctx.session.view, self.ctx.session.contexts
        run_now(search(ctx, parse(b"u1 SEARCH RETURN (UPDATE COUNT) UNSEEN FROM bob")))
        self.assertEqual(ctx.emitted, [ESearchData("u1", False, [1, 2, 3], ("UPDATE", "COUNT"))])
        changed = self.mailbox.set_flags([2], [SEEN], FlagMode.ADD).result
        self.assertEqual(contexts.heard(FlagsChanged(tuple(changed)), view), [])
        run_now(contexts.refresh(self.mailbox, view))
        self.assertEqual(contexts.updates(view), [ContextUpdate("u1", False, ((0, (2,)),), ())])
        uid = self.mailbox.append(b"From: Bob <BOB@x.test>\r\n\r\nnew\r\n").result
        new = self.mailbox.list_messages([uid]).result
        contexts.heard(MessagesAdded(tuple(new)), view)
        run_now(contexts.refresh(self.mailbox, view))
        self.assertEqual(contexts.updates(view), [])  # not in the view yet
        view.queue(MessagesAdded(tuple(new)))
        view.updates()
        self.assertEqual(contexts.updates(view), [ContextUpdate("u1", False, (), ((0, (4,)),))])
        self.assertEqual(contexts.get("u1").results(), [1, 3, 4])  # type: ignore[union-attr]

    def test_mailbox_gone(self) -> None:
        """A store error while judging changes ends the refresh quietly (the mailbox is being deleted)."""
        ctx, view, contexts = self.ctx, self.ctx.session.view, self.ctx.session.contexts
        run_now(search(ctx, parse(b"u1 SEARCH RETURN (UPDATE) UNSEEN")))
        contexts.heard(FlagsChanged((info(1, (SEEN,)),)), view)
        self.mailbox._mark_deleted()  # what deleting it does; no listener here to tell
        run_now(contexts.refresh(self.mailbox, view))
        self.assertEqual(contexts.updates(view), [])
        self.assertFalse(contexts.pending)

    def test_tag_reuse_and_noupdate(self) -> None:
        """Section 4.3: a live tag is BAD; section 4.3.1: beyond the limit, NOUPDATE and the results."""
        ctx = self.ctx
        for n in range(MAX_CONTEXTS):
            run_now(search(ctx, parse(b"t%d SEARCH RETURN (UPDATE) ALL" % n)))
        e = self.assertRaises(Bad, run_now, search(ctx, parse(b"t0 UID SEARCH RETURN (UPDATE) ALL")))
        self.assertEqual(e.text, "Tag reuse")
        ctx.emitted.clear()
        run_now(search(ctx, parse(b"x SEARCH RETURN (UPDATE MIN) ALL")))
        self.assertEqual(ctx.emitted, [NoUpdate("x"), ESearchData("x", False, [1, 2, 3], ("UPDATE", "MIN"))])
        self.assertNotIn("x", ctx.session.contexts)
        # Without UPDATE a used tag is no concern.
        run_now(search(ctx, parse(b"t0 SEARCH RETURN (COUNT) ALL")))


class AdapterTests(ServerTestCase):
    """The whole exchange through the adapter."""

    def run_lines(self, proto: Any, transport: Any, line: bytes) -> bytes:
        return self.send(proto, transport, line + b"\r\n")

    def add(self, body: bytes = b"Subject: three\r\nFrom: bob@example.test\r\n\r\nx\r\n") -> int:
        return self.successResultOf(self.mailbox.append(body))  # type: ignore[no-any-return]

    def test_partial(self) -> None:
        """Section 4.4 through SEARCH, UID SEARCH, SORT."""
        self.add()
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"p1 SEARCH RETURN (PARTIAL 2:5 COUNT) ALL")
        self.assertEqual(out, b'* ESEARCH (TAG "p1") PARTIAL (2:5 2:3) COUNT 3\r\np1 OK SEARCH completed\r\n')
        out = self.run_lines(proto, transport, b"p2 UID SEARCH RETURN (PARTIAL 4:9) ALL")
        self.assertEqual(out, b'* ESEARCH (TAG "p2") UID PARTIAL (4:9 NIL)\r\np2 OK SEARCH completed\r\n')
        out = self.run_lines(proto, transport, b"p3 SORT RETURN (PARTIAL 1:2) (REVERSE SUBJECT) UTF-8 ALL")
        self.assertTrue(out.startswith(b'* ESEARCH (TAG "p3") PARTIAL (1:2 2:3)\r\n'), out)
        out = self.run_lines(proto, transport, b"p4 SEARCH RETURN (PARTIAL 1:2 ALL) ALL")
        self.assertTrue(out.startswith(b"p4 BAD "), out)

    def test_own_changes(self) -> None:
        """This session's STORE and EXPUNGE: REMOVEFROM with the FETCH, and before the EXPUNGE."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE) UNSEEN")
        self.assertEqual(out, b'* ESEARCH (TAG "u1") ALL 1:2\r\nu1 OK SEARCH completed\r\n')
        out = self.run_lines(proto, transport, b"s2 STORE 1 +FLAGS (\\Seen)")
        self.assertEqual(
            out,
            b"* 1 FETCH (FLAGS (\\Seen \\Recent))\r\n"
            b'* ESEARCH (TAG "u1") REMOVEFROM (0 1)\r\n'
            b"s2 OK STORE completed\r\n",
        )
        out = self.run_lines(proto, transport, b"s3 STORE 1:2 FLAGS (\\Deleted)")
        self.assertIn(b'* ESEARCH (TAG "u1") ADDTO (0 1)\r\ns3 OK', out)
        out = self.run_lines(proto, transport, b"x1 EXPUNGE")
        self.assertEqual(
            out,
            b'* ESEARCH (TAG "u1") REMOVEFROM (0 1:2)\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nx1 OK EXPUNGE completed\r\n',
        )

    def test_other_sessions(self) -> None:
        """Another session's changes: ADDTO after EXISTS, REMOVEFROM before EXPUNGE (sections 4.3.3, 4.3.4)."""
        proto, transport = self.login()
        other, other_transport = self.login()
        self.run_lines(proto, transport, b"u1 UID SEARCH RETURN (UPDATE COUNT) UNDELETED")
        self.run_lines(other, other_transport, b"o1 STORE 2 +FLAGS (\\Deleted)")
        uid = self.add()
        out = self.run_lines(proto, transport, b"n1 NOOP")
        self.assertEqual(
            out,
            b"* 3 EXISTS\r\n* 3 RECENT\r\n"
            b"* 2 FETCH (FLAGS (\\Deleted \\Recent))\r\n"
            b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 2) ADDTO (0 %d)\r\n'
            b"n1 OK NOOP completed\r\n" % uid,
        )
        self.run_lines(other, other_transport, b"o2 STORE 1 +FLAGS (\\Deleted)")
        self.run_lines(other, other_transport, b"o3 EXPUNGE")
        out = self.run_lines(proto, transport, b"n2 NOOP")
        self.assertEqual(
            out,
            b'* ESEARCH (TAG "u1") UID REMOVEFROM (0 1)\r\n* 1 EXPUNGE\r\n* 1 EXPUNGE\r\nn2 OK NOOP completed\r\n',
        )

    def test_idle(self) -> None:
        """Section 4.3.2: the updates reach an idling client at once."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE MIN) SUBJECT three")
        self.run_lines(proto, transport, b"i1 IDLE")
        transport.clear()
        self.add()
        self.assertEqual(
            transport.value(), b'* 3 EXISTS\r\n* 3 RECENT\r\n* ESEARCH (TAG "u1") ADDTO (0 3)\r\n'
        )

    def test_sort_context(self) -> None:
        """CONTEXT=SORT: changes at their position in the sort order."""
        proto, transport = self.login()
        out = self.run_lines(proto, transport, b"s1 UID SORT RETURN (UPDATE) (REVERSE SUBJECT) UTF-8 UNSEEN")
        self.assertEqual(out, b'* ESEARCH (TAG "s1") UID ALL 2,1\r\ns1 OK UID SORT completed\r\n')
        self.add(b"Subject: three\r\n\r\nx\r\n")
        self.add(b"Subject: alpha\r\n\r\nx\r\n")
        out = self.run_lines(proto, transport, b"n1 NOOP")
        # two, three, one, alpha: "three" goes second, "alpha" last.
        self.assertIn(b'* 4 EXISTS\r\n* 4 RECENT\r\n* ESEARCH (TAG "s1") UID ADDTO (2 3 4 4)\r\n', out)
        out = self.run_lines(proto, transport, b"t1 UID STORE 2,3 +FLAGS (\\Seen)")
        self.assertIn(b'* ESEARCH (TAG "s1") UID REMOVEFROM (1 2:3)\r\n', out)
        out = self.run_lines(proto, transport, b"t2 STORE 2 -FLAGS (\\Seen)")
        self.assertIn(b'* ESEARCH (TAG "s1") UID ADDTO (1 2)\r\n', out)
        out = self.run_lines(proto, transport, b"s2 SORT RETURN (UPDATE COUNT) (DATE) UTF-8 FROM bob")
        self.assertEqual(out, b'* ESEARCH (TAG "s2") COUNT 1\r\ns2 OK SORT completed\r\n')

    def test_message_numbers_fixed(self) -> None:
        """Section 4.3: a message number set is the messages it named; a UID "*" is the largest UID."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE) 2:*")
        self.run_lines(proto, transport, b"u2 UID SEARCH RETURN (UPDATE) UID 2:*")
        uid = self.add()
        out = self.run_lines(proto, transport, b"n1 NOOP")
        self.assertNotIn(b'"u1"', out)
        self.assertIn(b'* ESEARCH (TAG "u2") UID ADDTO (0 %d)\r\n' % uid, out)

    def test_cancelupdate(self) -> None:
        """Section 4.3.5: no more updates; an unknown tag is NO and cancels nothing."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE) ALL")
        self.run_lines(proto, transport, b"u2 SEARCH RETURN (UPDATE) ALL")
        out = self.run_lines(proto, transport, b'c1 CANCELUPDATE "u1" "zz"')
        self.assertEqual(out, b"c1 NO Unknown update tag\r\n")
        out = self.run_lines(proto, transport, b'c2 CANCELUPDATE "u1"')
        self.assertEqual(out, b"c2 OK Updates cancelled\r\n")
        out = self.run_lines(proto, transport, b"c3 CANCELUPDATE u2")
        self.assertTrue(out.startswith(b"c3 BAD "), out)
        self.add()
        out = self.run_lines(proto, transport, b"n1 NOOP")
        self.assertNotIn(b'"u1"', out)
        self.assertIn(b'(TAG "u2") ADDTO', out)
        # The tag of a cancelled context may be used again.
        out = self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE COUNT) ALL")
        self.assertEqual(out, b'* ESEARCH (TAG "u1") COUNT 3\r\nu1 OK SEARCH completed\r\n')

    def test_limit(self) -> None:
        """Section 4.3.1: beyond the limit, NO [NOUPDATE] and the other return options."""
        proto, transport = self.login()
        for n in range(MAX_CONTEXTS):
            self.run_lines(proto, transport, b"u%d SEARCH RETURN (UPDATE) ALL" % n)
        out = self.run_lines(proto, transport, b"s1 SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL")
        self.assertEqual(
            out,
            b'* NO [NOUPDATE "s1"] Too many updating searches\r\n'
            b'* ESEARCH (TAG "s1") COUNT 2\r\n'
            b"s1 OK SORT completed\r\n",
        )
        self.run_lines(proto, transport, b'c1 CANCELUPDATE "u0"')
        out = self.run_lines(proto, transport, b"s2 SORT RETURN (UPDATE COUNT) (DATE) UTF-8 ALL")
        self.assertNotIn(b"NOUPDATE", out)
        out = self.run_lines(proto, transport, b"u1 SORT RETURN (UPDATE) (DATE) UTF-8 ALL")
        self.assertEqual(out, b"u1 BAD Tag reuse\r\n")

    def test_contexts_end_with_the_selection(self) -> None:
        """Section 4.3: updates cease when the mailbox is no longer selected."""
        proto, transport = self.login()
        for leave in (b"UNSELECT", b"CLOSE", b"SELECT INBOX", b"EXAMINE INBOX"):
            self.run_lines(proto, transport, b"s0 SELECT INBOX")
            self.run_lines(proto, transport, b"u1 SEARCH RETURN (UPDATE) ALL")
            self.run_lines(proto, transport, b"l1 " + leave)
            self.assertEqual(len(proto.session.contexts), 0, leave)
            self.run_lines(proto, transport, b"s0 SELECT INBOX")
            self.add()
            out = self.run_lines(proto, transport, b"n1 NOOP")
            self.assertNotIn(b"ESEARCH", out)
        out = self.run_lines(proto, transport, b"l2 UNSELECT")
        out = self.run_lines(proto, transport, b'c1 CANCELUPDATE "u1"')
        self.assertTrue(out.startswith(b"c1 BAD "), out)

    def test_body_search(self) -> None:
        """A search that reads the message: a new message is read to judge it."""
        proto, transport = self.login()
        self.run_lines(proto, transport, b"u1 UID SEARCH RETURN (UPDATE) BODY needle")
        self.add(b"Subject: hay\r\n\r\nno\r\n")
        uid = self.add(b"Subject: hay\r\n\r\na needle\r\n")
        out = self.run_lines(proto, transport, b"n1 NOOP")
        self.assertIn(b'* ESEARCH (TAG "u1") UID ADDTO (0 %d)\r\n' % uid, out)
        self.successResultOf(self.mailbox.set_flags([uid], [DELETED], FlagMode.ADD))
        out = self.run_lines(proto, transport, b"n2 NOOP")
        self.assertNotIn(b"ESEARCH", out)
