"""
NOTIFY (RFC 5465): the grammar, the handler and its queue without Twisted,
the adapter on StringTransport (two sessions of one user on the memory
store), and imaplib against the real service on Maildir.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from tests.e2e.test_imap import IMAPTestCase, RawClient, message, ok
from tests.imap.test_commands import command
from tests.imap.test_server import ServerTestCase
from tests.imap.test_session import feed, info, selected
from txmail.imap import serialize
from txmail.imap.commands import capabilities, notify
from txmail.imap.commands.context import call, run_now
from txmail.imap.commands.notify import MAX_MAILBOXES, MAX_PENDING, NotifyState, check
from txmail.imap.parser import ParseError
from txmail.imap.responses import Bad, Done, ListData, No, StatusData, UntaggedOk
from txmail.imap.session import IMAPSession
from txmail.imap.types import FetchAttribute, Notify, NotifyGroup
from txmail.imap.view import SelectedView
from txmail.model import (
    FlagsChanged,
    FolderCreated,
    FolderDeleted,
    FolderRenamed,
    MailboxStatus,
    MessageInfo,
    MessagesAdded,
    MessagesChanged,
    MessagesExpunged,
    SubscriptionChanged,
)
from txmail.store.memory import MemoryProvider

__all__: list[str] = []

USER = "alice@example.test"
SUPPORTED = (
    "BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange"
    " MailboxMetadataChange ServerMetadataChange)"
)


def notify_args(line: bytes) -> Notify:
    args = command(line).args
    assert isinstance(args, Notify)
    return args


class ParserTests(SynchronousTestCase):
    def test_set(self) -> None:
        """RFC 5465 section 8: filters, events, MessageNew's fetch attributes, STATUS, NONE."""
        args = notify_args(
            b"a NOTIFY SET STATUS (selected (MessageNew (uid flags) MessageExpunge)) "
            b'(subtree (Lists "a b") (MessageNew MessageExpunge FlagChange)) '
            b"(mailboxes inbox (MessageNew MessageExpunge)) (personal (MailboxName SubscriptionChange)) "
            b"(inboxes NONE)\r\n"
        )
        self.assertTrue(args.status)
        self.assertEqual(
            args.groups,
            (
                NotifyGroup(
                    "SELECTED",
                    (),
                    ("MessageNew", "MessageExpunge"),
                    (FetchAttribute("UID"), FetchAttribute("FLAGS")),
                ),
                NotifyGroup("SUBTREE", ("Lists", "a b"), ("MessageNew", "MessageExpunge", "FlagChange")),
                NotifyGroup("MAILBOXES", ("INBOX",), ("MessageNew", "MessageExpunge")),
                NotifyGroup("PERSONAL", (), ("MailboxName", "SubscriptionChange")),
                NotifyGroup("INBOXES"),
            ),
        )

    def test_none(self) -> None:
        self.assertEqual(notify_args(b"a NOTIFY NONE\r\n"), Notify(None))
        self.assertEqual(
            notify_args(b"a notify set (selected-delayed none)\r\n").groups,
            (NotifyGroup("SELECTED-DELAYED"),),
        )

    def test_unknown_event_parses(self) -> None:
        """event-ext = atom: an unknown event is the handler's NO [BADEVENT], not BAD."""
        self.assertEqual(
            notify_args(b"a NOTIFY SET (personal (Frobnicate))\r\n").groups[0].events, ("FROBNICATE",)
        )  # type: ignore[index]

    def test_bad_syntax(self) -> None:
        for line in (
            b"a NOTIFY\r\n",
            b"a NOTIFY SET\r\n",
            b"a NOTIFY FOO\r\n",
            b"a NOTIFY SET (elsewhere (MessageNew MessageExpunge))\r\n",
            b"a NOTIFY SET (subtree (MessageNew MessageExpunge))\r\n",
            b"a NOTIFY SET (mailboxes () (MessageNew MessageExpunge))\r\n",
            b"a NOTIFY SET (personal ())\r\n",
            b"a NOTIFY SET (personal (MessageNew MessageExpunge)\r\n",
            b"a NOTIFY SET (personal (MessageNew (BOGUS) MessageExpunge))\r\n",
            b"a NOTIFY SET (personal all)\r\n",
            b"a NOTIFY NONE extra\r\n",
        ):
            self.assertRaises(ParseError, command, line)


class CheckTests(SynchronousTestCase):
    def test_rules_are_bad(self) -> None:
        """Sections 5 and 6.1: what the client must not ask is BAD."""
        for line in (
            b"a NOTIFY SET (personal (MessageNew))\r\n",
            b"a NOTIFY SET (personal (MessageExpunge))\r\n",
            b"a NOTIFY SET (personal (FlagChange))\r\n",
            b"a NOTIFY SET (personal (MessageExpunge FlagChange))\r\n",
            b"a NOTIFY SET (selected (MailboxName))\r\n",
            b"a NOTIFY SET (selected (MessageNew MessageExpunge)) (selected-delayed NONE)\r\n",
            b"a NOTIFY SET (personal (MailboxName MailboxName))\r\n",
        ):
            self.assertRaises(Bad, check, notify_args(line))

    def test_badevent(self) -> None:
        """Section 3.1: NO [BADEVENT] lists every supported event (ANNOTATE's is not)."""
        for event in (b"AnnotationChange", b"Frob"):
            extra = b" MessageNew MessageExpunge" if event == b"AnnotationChange" else b""
            e = self.assertRaises(
                No, check, notify_args(b"a NOTIFY SET (personal (" + event + extra + b"))\r\n")
            )
            self.assertEqual(e.code, SUPPORTED)

    def test_fetch_attributes(self) -> None:
        """MessageNew takes any fetch attributes (section 5.2); the selected filter says which need the store."""
        args = notify_args(b"a NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge))\r\n")
        check(args)
        self.assertFalse(NotifyState(args).fetch_from_store)
        args = notify_args(b"a NOTIFY SET (selected (MessageNew (UID ENVELOPE) MessageExpunge))\r\n")
        check(args)
        self.assertTrue(NotifyState(args).fetch_from_store)

    def test_too_many_mailboxes(self) -> None:
        names = b" ".join(b"m%d" % i for i in range(MAX_MAILBOXES + 1))
        e = self.assertRaises(
            No,
            check,
            notify_args(b"a NOTIFY SET (mailboxes (" + names + b") (MessageNew MessageExpunge))\r\n"),
        )
        self.assertEqual(e.code, "NOTIFICATIONOVERFLOW")

    def test_advertised(self) -> None:
        self.assertIn("NOTIFY", capabilities())


class FakeMailbox:
    def __init__(self, status: MailboxStatus | None = None) -> None:
        self.value = status or MailboxStatus(
            messages=3, recent=0, unseen=2, uidnext=9, uidvalidity=7, highest_modseq=40, size=10
        )

    def status(self) -> Any:
        if self.value is None:
            from txmail.errors import NoSuchMailbox

            raise NoSuchMailbox("gone")
        return self.value


def added(name: str, mailbox: Any = None) -> MessagesChanged:
    info = MessageInfo(8, frozenset(), 10, 0.0, 40)
    return MessagesChanged(name, MessagesAdded((info,)), mailbox or FakeMailbox())


def responses(state: NotifyState, session: Any = None) -> list[Any]:
    return run_now(state.responses(session or IMAPSession()))


class StateTests(SynchronousTestCase):
    def state(self, line: bytes, subscribed: tuple[str, ...] = ()) -> NotifyState:
        args = notify_args(line)
        check(args)
        return NotifyState(args, subscribed)

    def test_filters(self) -> None:
        """Section 6: PERSONAL and INBOXES cover all, SUBTREE a name and below, MAILBOXES exact names."""
        state = self.state(
            b"a NOTIFY SET (subtree Lists (MessageNew MessageExpunge)) (mailboxes Work (MailboxName))\r\n"
        )
        self.assertTrue(state.wants("Lists", "MessageNew"))
        self.assertTrue(state.wants("Lists/a/b", "MessageExpunge"))
        self.assertFalse(state.wants("Listsx", "MessageNew"))
        self.assertFalse(state.wants("Work", "MessageNew"))
        self.assertTrue(state.wants("Work", "MailboxName"))
        self.assertFalse(state.wants("Work/x", "MailboxName"))
        for kind in (b"personal", b"inboxes"):
            state = self.state(b"a NOTIFY SET (" + kind + b" (MessageNew MessageExpunge))\r\n")
            self.assertTrue(state.wants("Any/thing", "MessageNew"))
            self.assertFalse(state.wants("Any/thing", "FlagChange"))

    def test_subscribed_follows_subscriptions(self) -> None:
        """Section 6.4: SUBSCRIBED is the subscriptions as they are when the event happens."""
        state = self.state(b"a NOTIFY SET (subscribed (MessageNew MessageExpunge))\r\n", ("Sent",))
        self.assertTrue(state.wants("Sent", "MessageNew"))
        self.assertFalse(state.heard(SubscriptionChanged("Sent", False)))
        self.assertFalse(state.wants("Sent", "MessageNew"))
        state.heard(SubscriptionChanged("Work", True))
        self.assertTrue(state.heard(added("Work")))

    def test_status_coalesced(self) -> None:
        """One STATUS per mailbox, with the counters when sent; HIGHESTMODSEQ once CONDSTORE is enabled."""
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))\r\n")
        box = FakeMailbox()
        self.assertTrue(state.heard(added("Work", box)))
        self.assertTrue(state.heard(MessagesChanged("Work", MessagesExpunged((8,), 41), box)))
        self.assertTrue(state.heard(MessagesChanged("Work", FlagsChanged(()), box)))
        self.assertTrue(state.pending)
        items = (("MESSAGES", 3), ("UIDNEXT", 9), ("UIDVALIDITY", 7), ("UNSEEN", 2))
        self.assertEqual(responses(state), [StatusData("Work", items)])
        self.assertFalse(state.pending)
        self.assertEqual(responses(state), [])
        session = IMAPSession()
        session.enabled.add("CONDSTORE")
        state.heard(added("Work", box))
        self.assertEqual(responses(state, session), [StatusData("Work", (*items, ("HIGHESTMODSEQ", 40)))])

    def test_flag_change_only_when_asked(self) -> None:
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge))\r\n")
        self.assertFalse(state.heard(MessagesChanged("Work", FlagsChanged(()), FakeMailbox())))

    def test_selected_and_own_are_not_told(self) -> None:
        """The selected mailbox's changes go through the view; the session's own changes are not told back."""
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))\r\n")
        self.assertFalse(state.heard(added("INBOX"), selected="INBOX"))
        self.assertFalse(state.heard(added("Sent"), own=frozenset({"Sent"})))
        self.assertFalse(state.heard(FolderCreated("New"), own=frozenset({"New"})))
        self.assertFalse(state.pending)

    def test_gone_mailbox_is_left_out(self) -> None:
        state = self.state(b"a NOTIFY SET (personal (MessageNew MessageExpunge))\r\n")
        gone = FakeMailbox()
        gone.value = None  # type: ignore[assignment]
        state.heard(added("Old", gone))
        self.assertEqual(responses(state), [])

    def test_mailbox_events(self) -> None:
        """Sections 5.4 and 5.5: LIST responses, \\NonExistent, OLDNAME, \\Subscribed."""
        state = self.state(b"a NOTIFY SET (personal (MailboxName SubscriptionChange))\r\n", ("Work",))
        for change in (
            FolderCreated("New"),
            FolderDeleted("Old"),
            FolderDeleted("Parent", parent=True),
            FolderRenamed("Work", "Job"),
            SubscriptionChanged("Job", True),
            SubscriptionChanged("Job", False),
        ):
            self.assertTrue(state.heard(change), change)
        self.assertFalse(state.heard(added("New")))  # no message events asked
        got = responses(state)
        self.assertEqual(
            got,
            [
                ListData("New", ()),
                ListData("Old", ("\\NonExistent",)),
                ListData("Parent", ("\\Noselect", "\\HasChildren")),
                ListData("Job", (), oldname="Work"),
                ListData("Job", ("\\Subscribed",)),
                ListData("Job", ()),
            ],
        )
        self.assertEqual(
            b"".join(serialize.render_all(got[3:4])), b'* LIST () "/" Job ("OLDNAME" (Work))\r\n'
        )

    def test_subscription_change_in_subscribed(self) -> None:
        """SUBSCRIBED with SubscriptionChange tells an unsubscription too."""
        state = self.state(b"a NOTIFY SET (subscribed (SubscriptionChange))\r\n", ("Work",))
        self.assertTrue(state.heard(SubscriptionChanged("Work", False)))
        self.assertEqual(responses(state), [ListData("Work", ())])

    def test_overflow(self) -> None:
        """Section 5.8: past MAX_PENDING, OK [NOTIFICATIONOVERFLOW] once, then nothing (as NOTIFY NONE)."""
        state = self.state(
            b"a NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MessageNew MessageExpunge))\r\n"
        )
        for i in range(MAX_PENDING + 1):
            state.heard(added(f"box{i}"))
        self.assertTrue(state.overflowed)
        self.assertIsNone(state.selected)
        got = responses(state)
        self.assertEqual(len(got), 1)
        self.assertIsInstance(got[0], UntaggedOk)
        self.assertEqual(got[0].code, "NOTIFICATIONOVERFLOW")
        self.assertFalse(state.pending)
        self.assertFalse(state.heard(added("more")))
        self.assertEqual(responses(state), [])


class NewMessageFetchTests(SynchronousTestCase):
    def test_fetches_with_sequence_numbers(self) -> None:
        """Section 5.2: MessageNew's attributes for the new messages, numbered as the view numbers them."""
        store = self.successResultOf(MemoryProvider().store_for(USER))
        inbox = self.successResultOf(store.get_mailbox("INBOX"))
        for subject in (b"a", b"b"):
            self.successResultOf(inbox.append(b"Subject: " + subject + b"\r\n\r\nx\r\n"))
        view = SelectedView("INBOX", inbox.uidvalidity, self.successResultOf(inbox.list_messages()))
        items = (FetchAttribute("UID"), FetchAttribute("RFC822.SIZE"))
        got = run_now(notify.new_message_fetches(view, inbox, [2, 9], items))
        self.assertEqual([(r.seq, r.info.uid) for r in got], [(2, 2)])
        self.assertEqual(b"".join(serialize.render_all(got)), b"* 2 FETCH (UID 2 RFC822.SIZE 17)\r\n")

    def test_deleted_mailbox(self) -> None:
        store = self.successResultOf(MemoryProvider().store_for(USER))
        self.successResultOf(store.create_mailbox("Gone"))
        box = self.successResultOf(store.get_mailbox("Gone"))
        self.successResultOf(box.append(b"Subject: a\r\n\r\nx\r\n"))
        view = SelectedView("Gone", box.uidvalidity, self.successResultOf(box.list_messages()))
        self.successResultOf(store.delete_mailbox("Gone"))
        self.assertEqual(
            run_now(notify.new_message_fetches(view, box, [1], (FetchAttribute("ENVELOPE"),))), []
        )


class SessionTests(SynchronousTestCase):
    """The sans-IO session: when the selected mailbox's changes go out under NOTIFY (section 6.1)."""

    def test_pushed_between_commands(self) -> None:
        session, view = selected()
        view.queue(MessagesAdded((info(4),)))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"")  # no NOTIFY: wait for a command
        session.notify_selected = "SELECTED"
        session.notify_fetch = frozenset({"UID"})
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"* 4 EXISTS\r\n* 4 FETCH (UID 4)\r\n")
        view.queue(MessagesExpunged((1,)))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"* 1 EXPUNGE\r\n")

    def test_delayed_holds_expunge(self) -> None:
        session, view = selected()
        session.notify_selected = "SELECTED-DELAYED"
        view.queue(MessagesExpunged((1,)))
        view.queue(MessagesAdded((info(4),)))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"* 4 EXISTS\r\n")
        feed(session, b"f FETCH 1 (UID)\r\n")
        session.finish("OK", "FETCH completed")
        self.assertEqual(session.data_to_send(), b"f OK FETCH completed\r\n")
        feed(session, b"n NOOP\r\n")
        session.finish("OK", "NOOP completed")
        self.assertEqual(session.data_to_send(), b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n")

    def test_selected_expunge_after_fetch(self) -> None:
        session, view = selected()
        session.notify_selected = "SELECTED"
        feed(session, b"f FETCH 1 (UID)\r\n")
        self.assertFalse(session.between_commands)
        view.queue(MessagesExpunged((2,)))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"")  # not in the middle of a command
        session.finish("OK", "FETCH completed")
        self.assertEqual(session.data_to_send(), b"* 2 EXPUNGE\r\nf OK FETCH completed\r\n")
        self.assertTrue(session.between_commands)

    def test_new_messages_kept_for_the_adapter(self) -> None:
        session, view = selected()
        session.notify_selected = "SELECTED"
        session.notify_fetch_later = True
        view.queue(MessagesAdded((info(4), info(5))))
        session.mailbox_changed()
        self.assertEqual(session.data_to_send(), b"* 5 EXISTS\r\n")
        self.assertEqual(session.take_new_messages(), [4, 5])
        self.assertEqual(session.take_new_messages(), [])

    def test_not_before_login(self) -> None:
        session = IMAPSession()
        self.assertFalse(session.between_commands)
        session.unsolicited(b"* STATUS x (MESSAGES 1)\r\n")
        self.assertTrue(session.data_to_send().endswith(b"* STATUS x (MESSAGES 1)\r\n"))


class FakeContext:
    """A CommandContext on the memory store."""

    def __init__(self) -> None:
        self.session = IMAPSession()
        self.store = run_now(call(MemoryProvider().store_for, USER))
        self.mailbox: Any = None
        self.quotas = None
        self.emitted: list[Any] = []
        self.watched: list[Any] = []

    def emit(self, *responses: Any) -> None:
        self.emitted.extend(responses)

    async def drain(self) -> None:
        pass

    async def take_turn(self) -> None:
        pass

    def watch(self, state: Any) -> None:
        self.watched.append(state)


class HandlerTests(SynchronousTestCase):
    def run_notify(self, ctx: FakeContext, line: bytes) -> Done:
        return run_now(notify.notify(ctx, command(line)))  # type: ignore[arg-type]

    def test_set_status(self) -> None:
        """Section 3.1: NOTIFY SET STATUS sends the STATUS of each watched mailbox before the OK."""
        ctx = FakeContext()
        for name in ("Work", "Lists/a", "Other"):
            self.successResultOf(ctx.store.create_mailbox(name))
        self.assertEqual(
            self.run_notify(
                ctx,
                b"a NOTIFY SET STATUS (subtree (Lists) (MessageNew MessageExpunge)) (mailboxes Work (MessageNew MessageExpunge))\r\n",
            ),
            Done("NOTIFY completed"),
        )
        self.assertEqual(
            [r.name for r in ctx.emitted], ["Lists", "Lists/a", "Work"]
        )  # CREATE made the parent
        self.assertEqual(
            [i for i, _ in ctx.emitted[0].items], ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN"]
        )
        (state,) = ctx.watched
        self.assertTrue(state.watches_other_mailboxes)

    def test_set_without_status(self) -> None:
        ctx = FakeContext()
        self.run_notify(ctx, b"a NOTIFY SET (personal (MessageNew MessageExpunge))\r\n")
        self.assertEqual(ctx.emitted, [])

    def test_none(self) -> None:
        ctx = FakeContext()
        self.run_notify(ctx, b"a NOTIFY NONE\r\n")
        self.assertEqual(ctx.watched, [None])

    def test_refused(self) -> None:
        ctx = FakeContext()
        self.assertRaises(Bad, self.run_notify, ctx, b"a NOTIFY SET (personal (MessageNew))\r\n")
        self.assertRaises(No, self.run_notify, ctx, b"a NOTIFY SET (personal (Frob))\r\n")
        self.assertEqual(ctx.watched, [])

    def test_store_without_changes(self) -> None:
        """A store that cannot tell other mailboxes' changes: NO [CANNOT] for them; SELECTED alone is fine."""
        ctx = FakeContext()
        ctx.store = object.__new__(type("Plain", (), {"subscriptions": lambda self: []}))
        e = self.assertRaises(
            No, self.run_notify, ctx, b"a NOTIFY SET (personal (MessageNew MessageExpunge))\r\n"
        )
        self.assertEqual(e.code, "CANNOT")
        self.run_notify(ctx, b"a NOTIFY SET (selected (MessageNew MessageExpunge))\r\n")
        self.assertEqual(ctx.watched[0].selected, "SELECTED")


class AdapterTests(ServerTestCase):
    """Two sessions of alice on the memory store: one NOTIFYs, the other changes things."""

    def pair(self, notify_line: bytes, select: str | None = "INBOX") -> tuple[Any, Any, Any, Any]:
        p1, t1 = self.login(select)
        p2, t2 = self.login(None)
        out = self.send(p1, t1, notify_line)
        self.assertTrue(out.endswith(b" OK NOTIFY completed\r\n"), out)
        return p1, t1, p2, t2

    def told(self, transport: Any) -> bytes:
        out = transport.value()
        transport.clear()
        return out

    def test_other_mailbox_status_between_commands(self) -> None:
        """A change in another mailbox is told at once when no command is in progress (section 1)."""
        _p1, t1, p2, t2 = self.pair(b"n NOTIFY SET (personal (MessageNew MessageExpunge MailboxName))\r\n")
        self.send(p2, t2, b"c1 CREATE Work\r\n")
        self.assertEqual(self.told(t1), b'* LIST () "/" Work\r\n')
        self.send(p2, t2, b"c2 APPEND Work {5}\r\nhello\r\n")
        work = self.successResultOf(self.store.get_mailbox("Work"))
        self.assertEqual(
            self.told(t1),
            b"* STATUS Work (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n" % work.uidvalidity,
        )
        self.send(p2, t2, b"c3 RENAME Work Job\r\n")
        self.assertEqual(self.told(t1), b'* LIST () "/" Job ("OLDNAME" (Work))\r\n')
        self.send(p2, t2, b"c4 DELETE Job\r\n")
        self.assertEqual(self.told(t1), b'* LIST (\\NonExistent) "/" Job\r\n')

    def test_delivery_while_idle(self) -> None:
        """During IDLE the STATUS of another mailbox goes out at once (section 4)."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (mailboxes Sent (MessageNew MessageExpunge))\r\n")
        self.assertEqual(self.send(p1, t1, b"i IDLE\r\n"), b"+ idling\r\n")
        sent = self.successResultOf(self.store.get_mailbox("Sent"))
        self.successResultOf(sent.append(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(
            self.told(t1),
            b"* STATUS Sent (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n" % sent.uidvalidity,
        )
        self.assertEqual(self.send(p1, t1, b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_client_not_reading(self) -> None:
        """While the client's replies back up, notifications wait, coalesced, until it reads again."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (mailboxes Sent (MessageNew MessageExpunge))\r\n")
        sent = self.successResultOf(self.store.get_mailbox("Sent"))
        p1._reply_gate.pauseProducing()
        for _ in range(3):
            self.successResultOf(sent.append(b"Subject: x\r\n\r\nx\r\n"))
        self.assertEqual(self.told(t1), b"")
        p1._reply_gate.resumeProducing()
        self.assertEqual(
            self.told(t1),
            b"* STATUS Sent (MESSAGES 3 UIDNEXT 4 UIDVALIDITY %d UNSEEN 3)\r\n" % sent.uidvalidity,
        )

    def test_told_before_tagged_while_a_command_runs(self) -> None:
        """A change heard while one of the session's commands runs goes out before that command's OK."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (mailboxes Junk (MessageNew MessageExpunge))\r\n")
        junk = self.successResultOf(self.store.get_mailbox("Junk"))
        original = self.mailbox.status

        def status_and_deliver() -> Any:
            # A delivery to Junk lands while p1's STATUS INBOX runs.
            self.successResultOf(junk.append(b"Subject: spam\r\n\r\nx\r\n"))
            return original()

        self.patch(self.mailbox, "status", status_and_deliver)
        out = self.send(p1, t1, b"s STATUS INBOX (MESSAGES)\r\n")
        self.assertEqual(
            out,
            b"* STATUS INBOX (MESSAGES 2)\r\n"
            b"* STATUS Junk (MESSAGES 1 UIDNEXT 2 UIDVALIDITY %d UNSEEN 1)\r\n"
            b"s OK STATUS completed\r\n" % junk.uidvalidity,
        )

    def test_own_changes_not_told(self) -> None:
        """Section 5: the session's own APPEND, CREATE, SUBSCRIBE are not told back to it."""
        p1, t1, _, _ = self.pair(
            b"n NOTIFY SET (personal (MessageNew MessageExpunge MailboxName SubscriptionChange))\r\n"
        )
        out = self.send(p1, t1, b"a APPEND Sent {5}\r\nhello\r\n")
        self.assertNotIn(b"STATUS", out)
        out = self.send(p1, t1, b"b CREATE Mine\r\n") + self.send(p1, t1, b"c SUBSCRIBE Mine\r\n")
        self.assertRegex(out, rb"\Ab OK (\[MAILBOXID \(F[0-9a-f]{24}\)\] )?CREATE completed\r\nc OK SUBSCRIBE completed\r\n\Z")

    def test_selected_pushed_between_commands(self) -> None:
        """SELECTED: EXISTS, EXPUNGE and MessageNew's FETCH go out as they happen (sections 5.2, 5.3)."""
        _p1, t1, _p2, _t2 = self.pair(
            b"n NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge FlagChange))\r\n"
        )
        self.successResultOf(self.mailbox.append(b"Subject: 3\r\n\r\nx\r\n"))
        self.assertEqual(self.told(t1), b"* 3 EXISTS\r\n* 3 RECENT\r\n* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n")
        self.successResultOf(self.mailbox.set_flags([self.uids[0]], {"\\Deleted"}, "add"))
        self.assertEqual(self.told(t1), b"* 1 FETCH (UID 1 FLAGS (\\Deleted \\Recent))\r\n")
        self.successResultOf(self.mailbox.expunge())
        self.assertEqual(self.told(t1), b"* 1 EXPUNGE\r\n")

    def test_selected_delayed_holds_expunge(self) -> None:
        """SELECTED-DELAYED: EXPUNGE waits for a command that allows it (section 6.1.2); FETCH does not."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (selected-delayed (MessageNew (UID) MessageExpunge))\r\n")
        self.successResultOf(self.mailbox.append(b"Subject: 3\r\n\r\nx\r\n"))
        self.assertEqual(self.told(t1), b"* 3 EXISTS\r\n* 3 RECENT\r\n* 3 FETCH (UID 3)\r\n")
        self.successResultOf(self.mailbox.set_flags([self.uids[0]], {"\\Deleted"}, "add"))
        # No FlagChange asked: told as without NOTIFY, without the UID (section 5.1 is for FlagChange).
        self.assertEqual(self.told(t1), b"* 1 FETCH (FLAGS (\\Deleted \\Recent))\r\n")
        self.successResultOf(self.mailbox.expunge())
        self.assertEqual(self.told(t1), b"")
        out = self.send(p1, t1, b"f FETCH 2 (UID)\r\n")
        self.assertEqual(out, b"* 2 FETCH (UID %d)\r\nf OK FETCH completed\r\n" % self.uids[1])
        out = self.send(p1, t1, b"n NOOP\r\n")
        self.assertEqual(out, b"* 1 EXPUNGE\r\nn OK NOOP completed\r\n")

    def test_selected_expunge_not_held_after_fetch(self) -> None:
        """SELECTED: EXPUNGE is not held back after FETCH (the client uses UIDs, section 5.3)."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (selected (MessageNew MessageExpunge))\r\n")
        original = self.mailbox.list_messages

        def list_and_expunge(uids: Any = None) -> Any:
            d = original(uids)
            if self.mailbox._infos.get(self.uids[0]) is not None:
                self.mailbox.set_flags([self.uids[0]], {"\\Deleted"}, "add")
                self.mailbox.expunge()
            return d

        self.patch(self.mailbox, "list_messages", list_and_expunge)
        out = self.send(p1, t1, b"f UID FETCH 1:* (UID)\r\n")
        self.assertTrue(out.endswith(b"* 1 EXPUNGE\r\nf OK UID FETCH completed\r\n"), out)

    def test_fetch_from_store_between_commands(self) -> None:
        """MessageNew (UID ENVELOPE BODY.PEEK[...]): the FETCH read from the store follows the EXISTS."""
        p1, t1, _, _ = self.pair(
            b"n NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge))\r\n"
        )
        self.successResultOf(self.mailbox.append(b"Subject: three\r\n\r\nx\r\n"))
        self.assertEqual(
            self.told(t1),
            b"* 3 EXISTS\r\n* 3 RECENT\r\n"
            b"* 3 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: three\r\n\r\n)\r\n",
        )
        self.assertNotIn("\\Seen", self.flags(3))
        self.assertEqual(self.send(p1, t1, b"n2 NOOP\r\n"), b"n2 OK NOOP completed\r\n")

    def test_fetch_from_store_before_tagged(self) -> None:
        """A message arriving while a command runs: EXISTS and its FETCH before the tagged OK."""
        p1, t1, _, _ = self.pair(
            b"n NOTIFY SET (selected-delayed (MessageNew (RFC822.SIZE) MessageExpunge))\r\n"
        )
        original = self.mailbox.status
        message = b"Subject: during\r\n\r\nx\r\n"

        def status_and_deliver() -> Any:
            self.successResultOf(self.mailbox.append(message))
            return original()

        self.patch(self.mailbox, "status", status_and_deliver)
        out = self.send(p1, t1, b"s STATUS INBOX (MESSAGES)\r\n")
        self.assertEqual(
            out,
            b"* STATUS INBOX (MESSAGES 3)\r\n* 3 EXISTS\r\n* 3 RECENT\r\n"
            b"* 3 FETCH (RFC822.SIZE %d)\r\ns OK STATUS completed\r\n" % len(message),
        )

    def test_fetch_from_store_while_idle(self) -> None:
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (selected (MessageNew (ENVELOPE) MessageExpunge))\r\n")
        self.assertEqual(self.send(p1, t1, b"i IDLE\r\n"), b"+ idling\r\n")
        self.successResultOf(self.mailbox.append(b"Subject: idle\r\n\r\nx\r\n"))
        out = self.told(t1)
        self.assertTrue(out.startswith(b'* 3 EXISTS\r\n* 3 RECENT\r\n* 3 FETCH (ENVELOPE (NIL "idle" '), out)
        self.assertEqual(self.send(p1, t1, b"DONE\r\n"), b"i OK IDLE terminated\r\n")

    def test_without_selected_filter(self) -> None:
        """Without SELECTED, the selected mailbox is told at the end of commands only, as without NOTIFY."""
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (personal (MessageNew MessageExpunge))\r\n")
        self.successResultOf(self.mailbox.append(b"Subject: 3\r\n\r\nx\r\n"))
        self.assertEqual(self.told(t1), b"")
        self.assertEqual(
            self.send(p1, t1, b"n NOOP\r\n"), b"* 3 EXISTS\r\n* 3 RECENT\r\nn OK NOOP completed\r\n"
        )

    def test_none_stops(self) -> None:
        p1, t1, p2, t2 = self.pair(b"n NOTIFY SET (personal (MailboxName))\r\n")
        self.send(p1, t1, b"n2 NOTIFY NONE\r\n")
        self.assertEqual(self.store._store_listeners, {})
        self.send(p2, t2, b"c CREATE Quiet\r\n")
        self.assertEqual(self.told(t1), b"")

    def test_logout_removes_listener(self) -> None:
        p1, t1, _, _ = self.pair(b"n NOTIFY SET (personal (MailboxName))\r\n")
        self.assertEqual(len(self.store._store_listeners), 1)
        self.send(p1, t1, b"z LOGOUT\r\n")
        p1.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.store._store_listeners, {})

    def test_overflow_turns_notify_off(self) -> None:
        """A client that does not read while a command runs: OK [NOTIFICATIONOVERFLOW], then as NOTIFY NONE."""
        p1, t1, _, _ = self.pair(
            b"n NOTIFY SET (selected (MessageNew MessageExpunge)) (personal (MailboxName))\r\n"
        )
        original = self.mailbox.status

        def many_creates() -> Any:
            for i in range(MAX_PENDING + 1):
                self.successResultOf(self.store.create_mailbox(f"f{i}"))
            return original()

        self.patch(self.mailbox, "status", many_creates)
        out = self.send(p1, t1, b"s STATUS INBOX (MESSAGES)\r\n")
        self.assertIn(b"* OK [NOTIFICATIONOVERFLOW] ", out)
        self.assertNotIn(b"* LIST", out)
        self.assertEqual(self.store._store_listeners, {})
        self.assertIsNone(p1.session.notify_selected)
        self.successResultOf(self.mailbox.append(b"Subject: 3\r\n\r\nx\r\n"))
        self.assertEqual(self.told(t1), b"")

    def test_not_before_login(self) -> None:
        proto, transport = self.connect()
        self.assertEqual(self.send(proto, transport, b"n NOTIFY NONE\r\n")[:6], b"n BAD ")


class EndToEndTests(IMAPTestCase):
    """imaplib against the real service (Maildir, a thread pool): NOTIFY over a socket."""

    @defer.inlineCallbacks
    def test_status_and_list_reach_idle_and_noop(self) -> Any:
        """
        One client NOTIFYs on INBOXES and PERSONAL and idles; SMTP delivers
        to INBOX, a second imaplib session creates a folder and appends to
        it: the first sees the STATUS and LIST responses as they happen.
        """
        raw = yield deferToThread(RawClient, self.server.address("imap"))
        self.addCleanup(raw.close)

        def start() -> list[bytes]:
            raw.command(b"a1", b'LOGIN "alice@example.test" "correct horse"')
            out = raw.command(
                b"a2",
                b"NOTIFY SET STATUS (inboxes (MessageNew MessageExpunge)) (personal (MailboxName SubscriptionChange))",
            )
            raw.send(b"a3 IDLE\r\n")
            raw.until(b"+ ")
            return out

        out = yield deferToThread(start)
        self.assertIn(b"* STATUS INBOX (MESSAGES 0 UIDNEXT 1 ", out[0])
        self.assertEqual(out[-1], b"a2 OK NOTIFY completed\r\n")
        yield self.send(message("pushed"))
        line = yield deferToThread(raw.readline)
        self.assertTrue(line.startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 "), line)

        def other() -> None:
            c = self.login()
            ok(c.create("Projects"))
            ok(c.append("Projects", "", None, message("filed")))  # type: ignore[arg-type]
            ok(c.subscribe("Projects"))
            c.logout()

        yield deferToThread(other)
        lines = yield deferToThread(lambda: [raw.readline() for _ in range(3)])
        self.assertEqual(lines[0], b'* LIST () "/" Projects\r\n')
        self.assertTrue(lines[1].startswith(b"* STATUS Projects (MESSAGES 1 UIDNEXT 2 "), lines[1])
        self.assertEqual(lines[2], b'* LIST (\\Subscribed) "/" Projects\r\n')
        done = yield deferToThread(lambda: (raw.send(b"DONE\r\n"), raw.until(b"a3 "))[1])
        self.assertEqual(done, [b"a3 OK IDLE terminated\r\n"])

    @defer.inlineCallbacks
    def test_selected_message_new_fetch(self) -> Any:
        """SELECTED MessageNew with fetch attributes read from the Maildir store (in threads) during IDLE."""
        raw = yield deferToThread(RawClient, self.server.address("imap"))
        self.addCleanup(raw.close)

        def start() -> None:
            raw.command(b"a1", b'LOGIN "alice@example.test" "correct horse"')
            raw.command(b"a2", b"SELECT INBOX")
            raw.command(
                b"a3",
                b"NOTIFY SET (selected (MessageNew (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)]) MessageExpunge))",
            )
            raw.send(b"a4 IDLE\r\n")
            raw.until(b"+ ")

        yield deferToThread(start)
        yield self.send(message("fetched at once"))
        lines = yield deferToThread(lambda: [raw.readline() for _ in range(5)])
        self.assertEqual(lines[:2], [b"* 1 EXISTS\r\n", b"* 1 RECENT\r\n"])
        self.assertEqual(lines[2], b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {28}\r\n")
        self.assertEqual(lines[3:], [b"Subject: fetched at once\r\n", b"\r\n"])
        done = yield deferToThread(lambda: (raw.send(b"DONE\r\n"), raw.until(b"a4 "))[1])
        self.assertEqual(done, [b")\r\n", b"a4 OK IDLE terminated\r\n"])

    @defer.inlineCallbacks
    def test_imaplib_notify_between_commands(self) -> Any:
        """imaplib's NOOP collects the STATUS another session caused (untagged_responses)."""

        def run() -> Any:
            first = self.login()
            typ, data = first._simple_command("NOTIFY", "SET", "(personal (MessageNew MessageExpunge))")
            assert typ == "OK", (typ, data)
            second = self.login()
            ok(second.append("Drafts", "", None, message("draft")))  # type: ignore[arg-type]
            second.logout()
            # The STATUS went out between commands; NOOP reads it.
            ok(first.noop())
            return first.untagged_responses.get("STATUS")

        import imaplib

        if "NOTIFY" not in imaplib.Commands:
            imaplib.Commands["NOTIFY"] = ("AUTH", "SELECTED")
            self.addCleanup(imaplib.Commands.pop, "NOTIFY")
        status = yield deferToThread(run)
        self.assertEqual(len(status), 1)
        self.assertTrue(status[0].startswith(b"Drafts (MESSAGES 1 UIDNEXT 2 "), status)


del socket
