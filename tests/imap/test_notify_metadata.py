"""
NOTIFY's METADATA events (RFC 5465 sections 5.6 and 5.7, RFC 5464 section
4.4.2): the queue and the filters without Twisted, the adapter on
StringTransport (two sessions of one user on the memory store), and a raw
client and imaplib against the real service on Maildir.
"""

from __future__ import annotations

import imaplib
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.test_imap import IMAPTestCase, RawClient, ok
from tests.imap.test_commands import command
from tests.imap.test_metadata import PlainProvider
from tests.imap.test_notify import FakeContext, FakeMailbox, added, notify_args, responses
from tests.imap.test_server import LOGIN, ServerTestCase
from txmail.imap import serialize
from txmail.imap.commands import notify
from txmail.imap.commands.context import run_now
from txmail.imap.commands.notify import MAX_PENDING, NotifyState, check, supported_events
from txmail.imap.commands.notify_metadata import CHUNK, EVENTS, MAX_ENTRIES, MetadataQueue, own_names
from txmail.imap.responses import Done, ListData, MetadataNames, No, StatusData, UntaggedOk
from txmail.model import AnnotationsChanged, FolderCreated, FolderDeleted, FolderRenamed, SubscriptionChanged
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

USER = "alice@example.test"
BASE_EVENTS = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange"


def changed(mailbox: str, *entries: str) -> AnnotationsChanged:
    return AnnotationsChanged(mailbox, entries)


class QueueTests(SynchronousTestCase):
    def test_coalesced(self) -> None:
        """One response per mailbox, each name once, in the order first heard (RFC 5464 section 4.4)."""
        queue = MetadataQueue()
        queue.add("INBOX", ("/private/b", "/private/a"))
        queue.add("", ("/private/x",))
        queue.add("INBOX", ("/private/a", "/shared/c"))
        self.assertEqual((len(queue), queue.entries), (2, 4))
        self.assertEqual(
            queue.take(),
            [
                MetadataNames("INBOX", ("/private/b", "/private/a", "/shared/c")),
                MetadataNames("", ("/private/x",)),
            ],
        )
        self.assertEqual((len(queue), queue.entries, queue.take()), (0, 0, []))

    def test_chunks(self) -> None:
        """Many names: several responses of at most CHUNK names (section 4.4 allows it)."""
        queue = MetadataQueue()
        names = [f"/private/n{i}" for i in range(CHUNK * 2 + 1)]
        queue.add("INBOX", names)
        got = queue.take()
        self.assertEqual([len(r.entries) for r in got], [CHUNK, CHUNK, 1])
        self.assertEqual([n for r in got for n in r.entries], names)

    def test_forget_and_rename(self) -> None:
        """A deleted mailbox's names are dropped; a renamed one's follow it (RFC 5464 section 4.1) when wanted."""
        queue = MetadataQueue()
        queue.add("Old", ("/private/a",))
        queue.add("Work", ("/private/b",))
        queue.add("Keep", ("/private/c",))
        queue.forget("Old")
        queue.forget("Never")
        queue.rename("Work", "Job", True)
        queue.rename("Keep", "Elsewhere", False)
        queue.rename("Missing", "Other", True)
        self.assertEqual(queue.entries, 1)
        self.assertEqual(queue.take(), [MetadataNames("Job", ("/private/b",))])

    def test_full(self) -> None:
        queue = MetadataQueue()
        queue.add("a", [f"/private/{i}" for i in range(MAX_ENTRIES)])
        self.assertFalse(queue.full)
        queue.add("b", ("/private/one-more",))
        self.assertTrue(queue.full)
        queue.clear()
        self.assertEqual((queue.entries, len(queue)), (0, 0))

    def test_own_names(self) -> None:
        """RFC 5465 section 5: only the running SETMETADATA's own mailbox is the session's own change."""
        self.assertEqual(own_names(command(b'a SETMETADATA INBOX (/private/a "x")\r\n')), {"INBOX"})
        self.assertEqual(own_names(command(b'a SETMETADATA "" (/private/a NIL)\r\n')), {""})
        self.assertEqual(own_names(command(b"a GETMETADATA INBOX /private/a\r\n")), frozenset())
        self.assertEqual(own_names(command(b"a RENAME INBOX Old\r\n")), frozenset())
        self.assertEqual(own_names(None), frozenset())


class CheckTests(SynchronousTestCase):
    def test_offered_with_metadata_store(self) -> None:
        """Sections 5.6 and 5.7: REQUIRED with METADATA; listed in BADEVENT after the others."""
        store = self.successResultOf(MemoryProvider().store_for(USER))
        self.assertEqual(supported_events(store), (*BASE_EVENTS.split(), *EVENTS))
        args = notify_args(b"a NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))\r\n")
        check(args, supported_events(store))
        check(args)  # every event offered somewhere

    def test_badevent_without_metadata_store(self) -> None:
        """A store without IMetadataStore: NO [BADEVENT] listing only the other events."""
        plain = self.successResultOf(PlainProvider(MemoryProvider()).store_for(USER))
        self.assertEqual(supported_events(plain), tuple(BASE_EVENTS.split()))
        for event in EVENTS:
            args = notify_args(b"a NOTIFY SET (personal (" + event.encode() + b"))\r\n")
            e = self.assertRaises(No, check, args, supported_events(plain))
            self.assertEqual(e.code, f"BADEVENT ({BASE_EVENTS})")

    def test_annotation_change_stays_unsupported(self) -> None:
        """AnnotationChange (RFC 5257 message annotations) is still BADEVENT, with the METADATA events listed."""
        store = self.successResultOf(MemoryProvider().store_for(USER))
        args = notify_args(b"a NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))\r\n")
        e = self.assertRaises(No, check, args, supported_events(store))
        self.assertEqual(e.code, f"BADEVENT ({BASE_EVENTS} {' '.join(EVENTS)})")

    def test_not_for_selected(self) -> None:
        """Section 6.1: the METADATA events are not message events: BAD with SELECTED."""
        from txmail.imap.responses import Bad

        for event in EVENTS:
            line = b"a NOTIFY SET (selected (" + event.encode() + b"))\r\n"
            self.assertRaises(Bad, check, notify_args(line))


class StateTests(SynchronousTestCase):
    def state(self, line: bytes, subscribed: tuple[str, ...] = ()) -> NotifyState:
        args = notify_args(line)
        check(args)
        return NotifyState(args, subscribed)

    def test_mailbox_filters(self) -> None:
        """Section 5.6 per the filters of section 6: MAILBOXES exact, SUBTREE below, SUBSCRIBED as it is now."""
        state = self.state(
            b"a NOTIFY SET (mailboxes Work (MailboxMetadataChange)) (subtree Lists (MailboxMetadataChange))"
            b" (subscribed (MailboxMetadataChange))\r\n",
            ("Sent",),
        )
        self.assertTrue(state.watches_metadata)
        self.assertFalse(state.heard(changed("INBOX", "/private/a")))
        self.assertFalse(state.heard(changed("Work/sub", "/private/a")))
        self.assertFalse(state.heard(changed("", "/private/a")))  # ServerMetadataChange not asked
        for name in ("Work", "Lists", "Lists/a/b", "Sent"):
            self.assertTrue(state.heard(changed(name, "/private/a")), name)
        state.heard(SubscriptionChanged("Sent", False))
        state.heard(SubscriptionChanged("Drafts", True))
        self.assertTrue(state.heard(changed("Drafts", "/private/z")))
        got = responses(state)
        self.assertEqual(
            [r.mailbox for r in got if isinstance(r, MetadataNames)],
            ["Work", "Lists", "Lists/a/b", "Sent", "Drafts"],
        )

    def test_server_event_whatever_the_mailboxes(self) -> None:
        """Section 5.7: ServerMetadataChange is a user event; the group's mailboxes do not matter."""
        state = self.state(b"a NOTIFY SET (mailboxes Nowhere (ServerMetadataChange))\r\n")
        self.assertTrue(state.watches_metadata)
        self.assertFalse(state.heard(changed("Nowhere", "/private/a")))  # MailboxMetadataChange not asked
        self.assertTrue(state.heard(changed("", "/shared/comment", "/private/gone")))
        self.assertEqual(responses(state), [MetadataNames("", ("/shared/comment", "/private/gone"))])

    def test_not_watching(self) -> None:
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))\r\n")
        self.assertFalse(state.watches_metadata)
        self.assertFalse(state.heard(changed("INBOX", "/private/a")))
        self.assertFalse(state.heard(changed("", "/private/a")))
        self.assertFalse(state.pending)

    def test_selected_mailbox_told(self) -> None:
        """Section 3.1: non-message events of the selected mailbox follow the other filters."""
        state = self.state(
            b"a NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MailboxMetadataChange))\r\n"
        )
        self.assertTrue(state.heard(changed("INBOX", "/private/a"), selected="INBOX"))

    def test_own_and_empty_not_told(self) -> None:
        """Section 5: the session's own SETMETADATA is not told back; a change of nothing is nothing."""
        state = self.state(b"a NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))\r\n")
        self.assertFalse(state.heard(changed("INBOX", "/private/a"), own=frozenset({"INBOX"})))
        self.assertFalse(state.heard(changed("", "/private/a"), own=frozenset({""})))
        self.assertFalse(state.heard(changed("INBOX")))
        self.assertFalse(state.pending)
        self.assertTrue(state.heard(changed("INBOX", "/private/a"), own=frozenset({""})))

    def test_order_with_other_events(self) -> None:
        """LIST first (a new mailbox before its METADATA), then METADATA, then STATUS."""
        state = self.state(
            b"a NOTIFY SET (personal (MessageNew MessageExpunge MailboxName MailboxMetadataChange))\r\n"
        )
        state.heard(added("Work", FakeMailbox()))
        state.heard(FolderCreated("New"))
        state.heard(changed("New", "/private/comment"))
        got = responses(state)
        self.assertEqual([type(r) for r in got], [ListData, MetadataNames, StatusData])
        self.assertEqual(got[1], MetadataNames("New", ("/private/comment",)))

    def test_deleted_and_renamed(self) -> None:
        """A mailbox deleted before its METADATA went out is left out; a renamed one is told by its new name."""
        state = self.state(b"a NOTIFY SET (personal (MailboxName MailboxMetadataChange))\r\n")
        state.heard(changed("Gone", "/private/a"))
        state.heard(changed("Work", "/private/b"))
        state.heard(FolderDeleted("Gone"))
        state.heard(FolderRenamed("Work", "Job"))
        self.assertEqual(
            responses(state),
            [
                ListData("Gone", ("\\NonExistent",)),
                ListData("Job", (), oldname="Work"),
                MetadataNames("Job", ("/private/b",)),
            ],
        )
        # Renamed out of the filter: dropped.
        state = self.state(b"a NOTIFY SET (subtree Lists (MailboxMetadataChange))\r\n")
        state.heard(changed("Lists/a", "/private/b"))
        state.heard(FolderRenamed("Lists/a", "Other"))
        self.assertEqual(responses(state), [])

    def test_overflow_on_names(self) -> None:
        """Section 5.8: too many entry names waiting: OK [NOTIFICATIONOVERFLOW] once, then nothing."""
        state = self.state(b"a NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))\r\n")
        for i in range(MAX_ENTRIES // 500):
            self.assertTrue(state.heard(changed("INBOX", *(f"/private/{i}/{j}" for j in range(500)))))
        self.assertFalse(state.overflowed)
        state.heard(changed("", "/private/last"))
        self.assertTrue(state.overflowed)
        self.assertFalse(state.watches_metadata)
        got = responses(state)
        self.assertEqual(len(got), 1)
        self.assertIsInstance(got[0], UntaggedOk)
        self.assertEqual(got[0].code, "NOTIFICATIONOVERFLOW")
        self.assertFalse(state.heard(changed("INBOX", "/private/more")))
        self.assertEqual(responses(state), [])

    def test_overflow_on_mailboxes(self) -> None:
        """METADATA responses count with STATUS and LIST toward MAX_PENDING."""
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge MailboxMetadataChange))\r\n")
        for i in range(MAX_PENDING // 2):
            state.heard(added(f"s{i}"))
            state.heard(changed(f"m{i}", "/private/a"))
        self.assertFalse(state.overflowed)
        state.heard(changed("one-more", "/private/a"))
        self.assertTrue(state.overflowed)

    def test_rendered(self) -> None:
        """RFC 5464 section 4.4.2: names only; the server as ""; mailbox names in modified UTF-7."""
        out = serialize.render_all(
            [MetadataNames("", ("/shared/comment",)), MetadataNames("Büro", ("/private/a", "/private/b"))]
        )
        self.assertEqual(
            out, [b'* METADATA "" /shared/comment\r\n', b"* METADATA B&APw-ro /private/a /private/b\r\n"]
        )


class HandlerTests(SynchronousTestCase):
    def run_notify(self, ctx: FakeContext, line: bytes) -> Done:
        return run_now(notify.notify(ctx, command(line)))  # type: ignore[arg-type]

    def test_set(self) -> None:
        ctx = FakeContext()
        self.assertEqual(
            self.run_notify(
                ctx, b"a NOTIFY SET STATUS (personal (MailboxMetadataChange ServerMetadataChange))\r\n"
            ),
            Done("NOTIFY completed"),
        )
        self.assertEqual(ctx.emitted, [])  # section 3.1: STATUS is for message events only
        (state,) = ctx.watched
        self.assertTrue(state.watches_metadata)

    def test_store_without_metadata(self) -> None:
        ctx = FakeContext()
        ctx.store = self.successResultOf(PlainProvider(MemoryProvider()).store_for(USER))
        e = self.assertRaises(
            No, self.run_notify, ctx, b"a NOTIFY SET (personal (MailboxMetadataChange))\r\n"
        )
        self.assertEqual(e.code, f"BADEVENT ({BASE_EVENTS})")
        self.assertEqual(ctx.watched, [])


class AdapterTests(ServerTestCase):
    """Two sessions of alice on the memory store: one NOTIFYs, the other sets annotations."""

    ALL = b"n NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))\r\n"

    def pair(self, notify_line: bytes = ALL, select: str | None = None) -> tuple[Any, Any, Any, Any]:
        p1, t1 = self.login(select)
        p2, t2 = self.login(None)
        out = self.send(p1, t1, notify_line)
        self.assertEqual(out, b"n OK NOTIFY completed\r\n")
        return p1, t1, p2, t2

    def told(self, transport: Any) -> bytes:
        out = transport.value()
        transport.clear()
        return out

    def listeners(self) -> list[Any]:
        return self.store._annotation_listeners._listeners  # type: ignore[no-any-return]

    def test_told_between_commands(self) -> None:
        """Sections 5.6 and 5.7: another session's SETMETADATA is told at once, names only, removals too."""
        _p1, t1, p2, t2 = self.pair()
        out = self.send(p2, t2, b'm1 SETMETADATA INBOX (/private/comment "mine" /shared/comment "ours")\r\n')
        self.assertEqual(out, b"m1 OK SETMETADATA completed\r\n")
        self.assertEqual(self.told(t1), b"* METADATA INBOX /private/comment /shared/comment\r\n")
        self.send(p2, t2, b'm2 SETMETADATA "" (/private/vendor/acme/theme "dark")\r\n')
        self.assertEqual(self.told(t1), b'* METADATA "" /private/vendor/acme/theme\r\n')
        self.send(p2, t2, b"m3 SETMETADATA INBOX (/private/comment NIL)\r\n")
        self.assertEqual(self.told(t1), b"* METADATA INBOX /private/comment\r\n")
        # Setting the same value again changes nothing: nothing to tell.
        self.send(p2, t2, b'm4 SETMETADATA INBOX (/shared/comment "ours")\r\n')
        self.assertEqual(self.told(t1), b"")

    def test_own_changes_not_told(self) -> None:
        """RFC 5465 section 5, RFC 5464 section 4.3: the session's own SETMETADATA is not echoed."""
        p1, t1, p2, t2 = self.pair()
        self.send(p2, t2, self.ALL)
        out = self.send(p1, t1, b'm1 SETMETADATA INBOX (/private/comment "mine")\r\n')
        self.assertEqual(out, b"m1 OK SETMETADATA completed\r\n")
        self.assertEqual(self.told(t2), b"* METADATA INBOX /private/comment\r\n")
        out = self.send(p1, t1, b'm2 SETMETADATA "" (/private/x "1")\r\n')
        self.assertEqual(out, b"m2 OK SETMETADATA completed\r\n")
        self.assertEqual(self.told(t2), b'* METADATA "" /private/x\r\n')

    def test_filters(self) -> None:
        """MAILBOXES Work: INBOX's changes and the server's are not told; Work's are."""
        self.successResultOf(self.store.create_mailbox("Work"))
        _p1, t1, p2, t2 = self.pair(b"n NOTIFY SET (mailboxes Work (MailboxMetadataChange))\r\n")
        self.send(p2, t2, b'm1 SETMETADATA INBOX (/private/comment "x")\r\n')
        self.send(p2, t2, b'm2 SETMETADATA "" (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"")
        self.send(p2, t2, b'm3 SETMETADATA Work (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"* METADATA Work /private/comment\r\n")

    def test_selected_mailbox(self) -> None:
        """The selected mailbox's annotations are told through PERSONAL (section 3.1)."""
        _p1, t1, p2, t2 = self.pair(
            b"n NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MailboxMetadataChange))\r\n",
            select="INBOX",
        )
        self.send(p2, t2, b'm1 SETMETADATA INBOX (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"* METADATA INBOX /private/comment\r\n")

    def test_while_idle(self) -> None:
        """Section 4: during IDLE the METADATA goes out at once."""
        p1, t1, p2, t2 = self.pair()
        self.assertEqual(self.send(p1, t1, b"i IDLE\r\n"), b"+ idling\r\n")
        self.send(p2, t2, b'm1 SETMETADATA "" (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b'* METADATA "" /private/comment\r\n')
        self.assertEqual(self.send(p1, t1, b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_client_not_reading(self) -> None:
        """While the client's replies back up, the names wait, coalesced into one response per mailbox."""
        p1, t1, p2, t2 = self.pair()
        p1._reply_gate.pauseProducing()
        for entry in (b"/private/a", b"/private/b", b"/private/a"):
            self.send(p2, t2, b"m SETMETADATA INBOX (" + entry + b' "' + entry + b'")\r\n')
        self.send(p2, t2, b"m SETMETADATA INBOX (/private/a NIL)\r\n")
        self.assertEqual(self.told(t1), b"")
        p1._reply_gate.resumeProducing()
        self.assertEqual(self.told(t1), b"* METADATA INBOX /private/a /private/b\r\n")

    def test_told_before_tagged_while_a_command_runs(self) -> None:
        """Another session's change while this one's GETMETADATA of the same mailbox runs: told before its OK."""
        p1, t1, _p2, _t2 = self.pair()
        original = self.store.get_annotations

        def get_and_change(mailbox: str) -> Any:
            self.store.set_annotations("INBOX", {"/private/other": b"theirs"})
            return original(mailbox)

        self.patch(self.store, "get_annotations", get_and_change)
        out = self.send(p1, t1, b"g GETMETADATA INBOX /private/other\r\n")
        self.assertEqual(
            out,
            b'* METADATA INBOX (/private/other "theirs")\r\n'
            b"* METADATA INBOX /private/other\r\n"
            b"g OK GETMETADATA completed\r\n",
        )

    def test_modified_utf7_name(self) -> None:
        self.successResultOf(self.store.create_mailbox("Büro"))
        _p1, t1, p2, t2 = self.pair()
        self.send(p2, t2, b'm1 SETMETADATA B&APw-ro (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"* METADATA B&APw-ro /private/comment\r\n")

    def test_store_without_metadata(self) -> None:
        """A store without IMetadataStore keeps answering NO [BADEVENT] for them."""
        proto, transport = self.connect(stores=PlainProvider(self.stores))
        self.send(proto, transport, LOGIN)
        out = self.send(proto, transport, b"n NOTIFY SET (personal (ServerMetadataChange))\r\n")
        self.assertEqual(out, b"n NO [BADEVENT (" + BASE_EVENTS.encode() + b")] Event not supported\r\n")

    def test_annotation_change_badevent(self) -> None:
        p1, t1 = self.login(None)
        out = self.send(p1, t1, b"n NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))\r\n")
        self.assertTrue(out.startswith(b"n NO [BADEVENT (" + BASE_EVENTS.encode() + b" "), out)

    def test_listener_removed(self) -> None:
        """NOTIFY NONE, a NOTIFY without the METADATA events, and the connection's end remove the listener."""
        p1, t1, p2, t2 = self.pair()
        self.assertEqual(len(self.listeners()), 1)
        self.send(p1, t1, b"n2 NOTIFY SET (personal (MailboxName))\r\n")
        self.assertEqual(self.listeners(), [])
        self.send(p2, t2, b'm1 SETMETADATA INBOX (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"")
        self.send(p1, t1, self.ALL)
        self.send(p1, t1, b"n3 NOTIFY NONE\r\n")
        self.assertEqual(self.listeners(), [])
        self.send(p1, t1, self.ALL)
        self.assertEqual(len(self.listeners()), 1)
        self.send(p1, t1, b"z LOGOUT\r\n")
        p1.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.listeners(), [])
        self.assertEqual(self.store._store_listeners, {})

    def test_overflow_turns_notify_off(self) -> None:
        """Too many names while a command runs: OK [NOTIFICATIONOVERFLOW], then as NOTIFY NONE (section 5.8)."""
        p1, t1, p2, t2 = self.pair()
        original = self.store.get_annotations

        def get_and_change(mailbox: str) -> Any:
            for i in range(MAX_ENTRIES // 100 + 1):
                self.store.set_annotations("", {f"/private/{i}/{j}": b"x" for j in range(100)})
            return original(mailbox)

        self.patch(self.store, "get_annotations", get_and_change)
        out = self.send(p1, t1, b"g GETMETADATA INBOX /private/none\r\n")
        self.assertIn(b"* OK [NOTIFICATIONOVERFLOW] ", out)
        self.assertNotIn(b'* METADATA ""', out)
        self.assertEqual(self.listeners(), [])
        self.send(p2, t2, b'm1 SETMETADATA INBOX (/private/comment "x")\r\n')
        self.assertEqual(self.told(t1), b"")


class EndToEndTests(IMAPTestCase):
    """The real service on Maildir: a second connection's SETMETADATA reaches the first."""

    @defer.inlineCallbacks
    def test_metadata_reaches_idle(self) -> Any:
        """
        One client NOTIFYs MailboxMetadataChange and ServerMetadataChange
        and idles; a second, imaplib, sets a mailbox entry and a server
        entry and removes one: the first sees each ``* METADATA`` at once.
        """
        raw = yield deferToThread(RawClient, self.server.address("imap"))
        self.addCleanup(raw.close)

        def start() -> list[bytes]:
            raw.command(b"a1", b'LOGIN "alice@example.test" "correct horse"')
            out = raw.command(b"a2", b"NOTIFY SET (personal (MailboxMetadataChange ServerMetadataChange))")
            raw.send(b"a3 IDLE\r\n")
            raw.until(b"+ ")
            return out

        out = yield deferToThread(start)
        self.assertEqual(out, [b"a2 OK NOTIFY completed\r\n"])

        def other() -> list[str]:
            c = self.login()
            typs = [
                c._simple_command("SETMETADATA", 'INBOX (/private/comment "from elsewhere")')[0],
                c._simple_command("SETMETADATA", '"" (/private/vendor/acme/theme "dark")')[0],
                c._simple_command("SETMETADATA", "INBOX (/private/comment NIL)")[0],
            ]
            c.logout()
            return typs

        typs = yield deferToThread(other)
        self.assertEqual(typs, ["OK", "OK", "OK"])
        lines = yield deferToThread(lambda: [raw.readline() for _ in range(3)])
        self.assertEqual(
            lines,
            [
                b"* METADATA INBOX /private/comment\r\n",
                b'* METADATA "" /private/vendor/acme/theme\r\n',
                b"* METADATA INBOX /private/comment\r\n",
            ],
        )
        done = yield deferToThread(lambda: (raw.send(b"DONE\r\n"), raw.until(b"a3 "))[1])
        self.assertEqual(done, [b"a3 OK IDLE terminated\r\n"])

    @defer.inlineCallbacks
    def test_imaplib_notify_between_commands(self) -> Any:
        """imaplib's NOOP collects the METADATA another connection caused; its own SETMETADATA is not echoed."""

        def run() -> Any:
            first = self.login()
            typ, data = first._simple_command(
                "NOTIFY", "SET", "(personal (MailboxMetadataChange ServerMetadataChange))"
            )
            assert typ == "OK", (typ, data)
            ok(first._simple_command("SETMETADATA", 'INBOX (/private/mine "x")'))
            second = self.login()
            ok(second._simple_command("SETMETADATA", 'Sent (/shared/comment "filed")'))
            second.logout()
            ok(first.noop())
            return first.untagged_responses.get("METADATA")

        for name in ("NOTIFY", "SETMETADATA"):
            if name not in imaplib.Commands:
                imaplib.Commands[name] = ("AUTH", "SELECTED")
                self.addCleanup(imaplib.Commands.pop, name)
        told = yield deferToThread(run)
        self.assertEqual(told, [b"Sent /shared/comment"])
