"""
Tests for txmail.imap.view: one session's picture of its selected mailbox.

Theory of operation
-------------------
A :class:`SelectedView` is built from a listing of
:class:`txmail.model.MessageInfo`; tests resolve sequence and UID sets
against it, queue :mod:`txmail.model` change events and compare the exact
untagged responses :meth:`SelectedView.updates` returns, and the view's
``uids``/``flags`` afterwards (sequence number ``n`` is ``uids[n-1]``).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.imap.types import SequenceSet
from txmail.imap.view import SelectedView, SequenceError
from txmail.model import FlagsChanged, MailboxDeleted, MessageInfo, MessagesAdded, MessagesExpunged

__all__: list[str] = []


def info(uid: int, *flags: str) -> MessageInfo:
    return MessageInfo(uid, frozenset(flags), 100, 0.0, uid)


def seqset(*ranges: tuple[int | None, int | None]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


def view_of(*uids: int, recent: tuple[int, ...] = ()) -> SelectedView:
    return SelectedView("INBOX", 7, [info(u) for u in uids], recent=recent)


class ResolveSequenceTests(SynchronousTestCase):
    """Message sequence numbers (RFC 3501 sections 2.3.1.2 and 9)."""

    def setUp(self) -> None:
        self.view = view_of(3, 5, 8, 13)

    def test_single_and_range(self) -> None:
        self.assertEqual(self.view.resolve(seqset((2, 2)), uid=False), [(2, 5)])
        self.assertEqual(self.view.resolve(seqset((2, 3)), uid=False), [(2, 5), (3, 8)])

    def test_reversed_range(self) -> None:
        """RFC 3501 section 9: "4:2" is the same as "2:4"."""
        self.assertEqual(self.view.resolve(seqset((4, 2)), uid=False), [(2, 5), (3, 8), (4, 13)])

    def test_star(self) -> None:
        """ "*" is the largest number in use."""
        self.assertEqual(self.view.resolve(seqset((None, None)), uid=False), [(4, 13)])
        self.assertEqual(self.view.resolve(seqset((3, None)), uid=False), [(3, 8), (4, 13)])
        self.assertEqual(self.view.resolve(seqset((1, None)), uid=False), [(1, 3), (2, 5), (3, 8), (4, 13)])

    def test_several_ranges_sorted_without_repeats(self) -> None:
        result = self.view.resolve(seqset((4, 4), (1, 2), (2, 2)), uid=False)
        self.assertEqual(result, [(1, 3), (2, 5), (4, 13)])

    def test_out_of_range(self) -> None:
        """RFC 3501 section 9: a seq-number not in use is an error (the server answers BAD)."""
        self.assertRaises(SequenceError, self.view.resolve, seqset((5, 5)), uid=False)
        self.assertRaises(SequenceError, self.view.resolve, seqset((2, 5)), uid=False)
        self.assertRaises(SequenceError, self.view.resolve, seqset((1, 1), (9, None)), uid=False)

    def test_sequence_error_is_value_error(self) -> None:
        self.assertTrue(issubclass(SequenceError, ValueError))

    def test_empty_mailbox(self) -> None:
        """RFC 3501 section 6.4.5: in an empty mailbox "*" and "1:*" name no message -> error."""
        view = view_of()
        self.assertRaises(SequenceError, view.resolve, seqset((None, None)), uid=False)
        self.assertRaises(SequenceError, view.resolve, seqset((1, None)), uid=False)
        self.assertRaises(SequenceError, view.resolve, seqset((1, 1)), uid=False)


class ResolveUIDTests(SynchronousTestCase):
    """UID sets (RFC 3501 section 6.4.8): unknown UIDs are ignored, never an error."""

    def setUp(self) -> None:
        self.view = view_of(3, 5, 8, 13)

    def test_single_and_range(self) -> None:
        self.assertEqual(self.view.resolve(seqset((5, 5)), uid=True), [(2, 5)])
        self.assertEqual(self.view.resolve(seqset((4, 9)), uid=True), [(2, 5), (3, 8)])
        self.assertEqual(self.view.resolve(seqset((9, 4)), uid=True), [(2, 5), (3, 8)])

    def test_unknown_uids_left_out(self) -> None:
        self.assertEqual(self.view.resolve(seqset((4, 4)), uid=True), [])
        self.assertEqual(self.view.resolve(seqset((100, 200)), uid=True), [])
        self.assertEqual(self.view.resolve(seqset((1, 1), (4, 4), (8, 8)), uid=True), [(3, 8)])

    def test_star(self) -> None:
        """ "*" is the largest UID in use."""
        self.assertEqual(self.view.resolve(seqset((None, None)), uid=True), [(4, 13)])
        self.assertEqual(self.view.resolve(seqset((6, None)), uid=True), [(3, 8), (4, 13)])

    def test_n_star_above_max(self) -> None:
        """
        RFC 3501 section 6.4.8: "n:*" with n above the largest UID still
        names the last message ("*" is the largest UID, and "a:b" = "b:a").
        """
        self.assertEqual(self.view.resolve(seqset((20, None)), uid=True), [(4, 13)])
        self.assertEqual(self.view.resolve(seqset((20, None), (3, 3)), uid=True), [(1, 3), (4, 13)])

    def test_several_ranges(self) -> None:
        result = self.view.resolve(seqset((13, 13), (1, 5), (5, 5)), uid=True)
        self.assertEqual(result, [(1, 3), (2, 5), (4, 13)])

    def test_empty_mailbox(self) -> None:
        """An empty mailbox: every UID set names nothing, with no error."""
        view = view_of()
        self.assertEqual(view.resolve(seqset((1, None)), uid=True), [])
        self.assertEqual(view.resolve(seqset((None, None)), uid=True), [])
        self.assertEqual(view.max_uid, 0)

    def test_numbers(self) -> None:
        self.assertEqual(self.view.exists, 4)
        self.assertEqual(self.view.max_uid, 13)
        self.assertEqual(self.view.seq_of(8), 3)
        self.assertIsNone(self.view.seq_of(7))
        self.assertIsNone(self.view.seq_of(99))


class UpdatesTests(SynchronousTestCase):
    def test_nothing_queued(self) -> None:
        view = view_of(1, 2)
        self.assertFalse(view.has_updates)
        self.assertEqual(view.updates(), b"")

    def test_order(self) -> None:
        """
        RFC 3501 section 7.4.1 / 7.3: EXPUNGE first (numbers counted after
        the removals before), then EXISTS, RECENT, then FETCH FLAGS with the
        new sequence numbers.
        """
        view = view_of(1, 2, 3, 4, recent=(4,))
        view.queue(FlagsChanged((info(4, "\\Seen"),)))
        view.queue(MessagesAdded((info(5), info(6))))
        view.queue(MessagesExpunged((2, 3)))
        view.claimed_recent([5, 6])
        self.assertTrue(view.has_updates)
        self.assertEqual(
            view.updates(),
            b"* 2 EXPUNGE\r\n* 2 EXPUNGE\r\n* 4 EXISTS\r\n* 3 RECENT\r\n* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n",
        )
        self.assertEqual(list(view.uids), [1, 4, 5, 6])
        self.assertEqual(view.flags[4], frozenset({"\\Seen"}))
        self.assertFalse(view.has_updates)
        self.assertEqual(view.updates(), b"")

    def test_recent_only(self) -> None:
        view = view_of(1, 2)
        view.claimed_recent([2])
        self.assertTrue(view.has_updates)
        self.assertEqual(view.updates(), b"* 1 RECENT\r\n")

    def test_recent_of_unknown_uid_waits(self) -> None:
        """A UID claimed as \\Recent before its arrival is told: counted once it is in the view."""
        view = view_of(1)
        view.claimed_recent([2])
        self.assertEqual(view.updates(), b"")
        view.queue(MessagesAdded((info(2),)))
        self.assertEqual(view.updates(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")

    def test_allow_expunge_false_holds_expunges(self) -> None:
        """
        RFC 3501 section 7.4.1: no EXPUNGE while responding to FETCH, STORE or
        SEARCH; the expunged message keeps its number, others still go out.
        """
        view = view_of(1, 2, 3)
        view.queue(MessagesExpunged((1,)))
        view.queue(MessagesAdded((info(4),)))
        view.queue(FlagsChanged((info(3, "\\Flagged"),)))
        self.assertEqual(
            view.updates(allow_expunge=False), b"* 4 EXISTS\r\n* 3 FETCH (FLAGS (\\Flagged))\r\n"
        )
        self.assertEqual(list(view.uids), [1, 2, 3, 4])
        self.assertEqual(view.resolve(seqset((1, 1)), uid=False), [(1, 1)])
        self.assertTrue(view.has_updates)
        self.assertEqual(view.updates(allow_expunge=False), b"")
        self.assertEqual(view.updates(), b"* 1 EXPUNGE\r\n")
        self.assertEqual(list(view.uids), [2, 3, 4])
        self.assertFalse(view.has_updates)

    def test_flags_of_held_expunge_dropped(self) -> None:
        """Flag changes of a message expunged meanwhile are never told."""
        view = view_of(1, 2)
        view.queue(FlagsChanged((info(1, "\\Deleted"),)))
        view.queue(MessagesExpunged((1,)))
        self.assertEqual(view.updates(allow_expunge=False), b"")
        self.assertEqual(view.updates(), b"* 1 EXPUNGE\r\n")

    def test_flags_show_recent(self) -> None:
        view = view_of(1, recent=(1,))
        view.queue(FlagsChanged((info(1, "\\Answered"),)))
        self.assertEqual(view.updates(), b"* 1 FETCH (FLAGS (\\Answered \\Recent))\r\n")


class DuplicateTests(SynchronousTestCase):
    """The picture is compared, not replayed (module docstring)."""

    def test_add_of_known_uid(self) -> None:
        """A listing that already holds a message whose arrival is also queued: no EXISTS."""
        view = view_of(1, 2)
        view.queue(MessagesAdded((info(2),)))
        self.assertFalse(view.has_updates)
        self.assertEqual(view.updates(), b"")
        self.assertEqual(list(view.uids), [1, 2])

    def test_add_twice(self) -> None:
        view = view_of(1)
        view.queue(MessagesAdded((info(2),)))
        view.queue(MessagesAdded((info(2),)))
        self.assertEqual(view.updates(), b"* 2 EXISTS\r\n")
        view.queue(MessagesAdded((info(2),)))
        self.assertEqual(view.updates(), b"")

    def test_add_then_expunge_before_flush(self) -> None:
        """A message that came and went before the client could be told: nothing at all."""
        view = view_of(1)
        view.queue(MessagesAdded((info(2),)))
        view.queue(MessagesExpunged((2,)))
        self.assertFalse(view.has_updates)
        self.assertEqual(view.updates(), b"")
        self.assertEqual(list(view.uids), [1])

    def test_add_then_flags_before_flush(self) -> None:
        """Flags changed before the arrival is told: the arrival carries them, no FETCH."""
        view = view_of(1)
        view.queue(MessagesAdded((info(2),)))
        view.queue(FlagsChanged((info(2, "\\Seen"),)))
        self.assertEqual(view.updates(), b"* 2 EXISTS\r\n")
        self.assertEqual(view.flags[2], frozenset({"\\Seen"}))

    def test_own_store_already_reflected(self) -> None:
        """This session's STORE updated the view directly; the store's FlagsChanged gives no FETCH."""
        view = view_of(1, 2)
        view.flags[2] = frozenset({"\\Deleted"})  # what the adapter does after its STORE
        view.queue(FlagsChanged((info(2, "\\Deleted"),)))
        self.assertEqual(view.updates(), b"")

    def test_flags_changed_back(self) -> None:
        """A change and its reversal before the flush: the client already holds the result."""
        view = view_of(1)
        view.queue(FlagsChanged((info(1, "\\Seen"),)))
        view.queue(FlagsChanged((info(1),)))
        self.assertEqual(view.updates(), b"")

    def test_expunge_twice(self) -> None:
        view = view_of(1, 2)
        view.queue(MessagesExpunged((1,)))
        view.queue(MessagesExpunged((1,)))
        self.assertEqual(view.updates(), b"* 1 EXPUNGE\r\n")
        view.queue(MessagesExpunged((1,)))
        self.assertEqual(view.updates(), b"")

    def test_own_expunge_then_notification(self) -> None:
        """This session's EXPUNGE told the client (expunged()); the store's event adds nothing."""
        view = view_of(1, 2, 3)
        self.assertEqual(list(view.expunged([2])), [b"* 2 EXPUNGE\r\n"])
        view.queue(MessagesExpunged((2,)))
        self.assertEqual(view.updates(), b"")
        self.assertEqual(list(view.uids), [1, 3])

    def test_has_updates_after_own_expunge(self) -> None:
        """has_updates is "something is queued that the client has not been told": not an expunge it was told."""
        view = view_of(1, 2, 3)
        list(view.expunged([2]))
        view.queue(MessagesExpunged((2,)))
        self.assertFalse(view.has_updates)

    def test_flags_of_unknown_uid(self) -> None:
        view = view_of(1)
        view.queue(FlagsChanged((info(9, "\\Seen"),)))
        self.assertEqual(view.updates(), b"")


class ExpungedTests(SynchronousTestCase):
    def test_renumbering(self) -> None:
        """RFC 3501 section 7.4.1: each EXPUNGE number counts the removals before it."""
        view = view_of(10, 20, 30, 40, 50)
        self.assertEqual(
            list(view.expunged([20, 30, 50])), [b"* 2 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 3 EXPUNGE\r\n"]
        )
        self.assertEqual(list(view.uids), [10, 40])
        self.assertEqual(view.seq_of(40), 2)
        self.assertNotIn(20, view.flags)
        self.assertEqual(view.exists, 2)
        # The client counted the removals: no EXISTS follows.
        self.assertEqual(view.updates(), b"")

    def test_unknown_uids_ignored(self) -> None:
        view = view_of(1, 2)
        self.assertEqual(list(view.expunged([5, 2])), [b"* 2 EXPUNGE\r\n"])

    def test_expunged_recent(self) -> None:
        view = view_of(1, 2, recent=(2,))
        self.assertEqual(list(view.expunged([2])), [b"* 2 EXPUNGE\r\n"])
        self.assertEqual(view.recent, set())
        self.assertEqual(view.updates(), b"")

    def test_clears_queued_expunge(self) -> None:
        view = view_of(1, 2)
        view.queue(MessagesExpunged((1,)))
        self.assertEqual(list(view.expunged([1])), [b"* 1 EXPUNGE\r\n"])
        self.assertEqual(view.updates(), b"")


class MiscTests(SynchronousTestCase):
    def test_mailbox_deleted(self) -> None:
        view = view_of(1)
        self.assertFalse(view.deleted)
        view.queue(MailboxDeleted())
        self.assertTrue(view.deleted)

    def test_recent_limited_to_listing(self) -> None:
        view = view_of(1, 2, recent=(2, 9))
        self.assertEqual(view.recent, {2})

    def test_fetch_flags(self) -> None:
        view = SelectedView("INBOX", 7, [info(4, "\\Seen", "$Label")], recent=(4,))
        self.assertEqual(view.fetch_flags(1, 4), b"* 1 FETCH (FLAGS ($Label \\Seen \\Recent))\r\n")
        self.assertEqual(
            view.fetch_flags(1, 4, with_uid=True), b"* 1 FETCH (UID 4 FLAGS ($Label \\Seen \\Recent))\r\n"
        )
        self.assertEqual(view.display_flags(4, ["\\Seen"]), ("\\Seen", "\\Recent"))

    def test_attributes(self) -> None:
        view = SelectedView("Sent", 99, [], read_only=True)
        self.assertEqual((view.name, view.uidvalidity, view.read_only, view.exists), ("Sent", 99, True, 0))


class SharedStateTests(SynchronousTestCase):
    """
    Views of the same mailbox state share one snapshot (issue 12 section 4),
    and each copies what it changes: one client's picture never moves while
    another's is told of changes (RFC 3501 section 7.4.1).
    """

    def test_same_listing_shared(self) -> None:
        a, b = view_of(1, 2, 3), view_of(1, 2, 3)
        self.assertIs(a.uids, b.uids)
        self.assertIs(a.flags._base, b.flags._base)

    def test_different_listing_not_shared(self) -> None:
        a = view_of(1, 2, 3)
        b = view_of(1, 2, 4)
        c = SelectedView("INBOX", 7, [info(1), info(2, "\\Seen"), info(3)])
        d = SelectedView("INBOX", 8, [info(1), info(2), info(3)])
        self.assertIsNot(a.uids, b.uids)
        self.assertIsNot(a.uids, c.uids)
        self.assertEqual(c.flags[2], frozenset({"\\Seen"}))
        self.assertEqual(a.flags[2], frozenset())
        self.assertIsNot(a.uids, d.uids)

    def test_expunge_copies(self) -> None:
        a, b = view_of(1, 2, 3), view_of(1, 2, 3)
        a.queue(MessagesExpunged((2,), 0))
        b.queue(MessagesExpunged((2,), 0))
        self.assertEqual(a.updates(), b"* 2 EXPUNGE\r\n")
        self.assertEqual(list(a.uids), [1, 3])
        self.assertNotIn(2, a.flags)
        # The other client has not been told yet: its numbers stay.
        self.assertEqual(list(b.uids), [1, 2, 3])
        self.assertIn(2, b.flags)
        self.assertEqual(b.updates(allow_expunge=False), b"")
        self.assertEqual(b.seq_of(3), 3)
        self.assertEqual(b.updates(), b"* 2 EXPUNGE\r\n")
        self.assertEqual(list(b.uids), [1, 3])

    def test_arrival_copies(self) -> None:
        a, b = view_of(1, 2), view_of(1, 2)
        a.queue(MessagesAdded((info(3),)))
        self.assertEqual(a.updates(), b"* 3 EXISTS\r\n")
        self.assertEqual(list(a.uids), [1, 2, 3])
        self.assertEqual(list(b.uids), [1, 2])
        self.assertEqual(len(a.flags), 3)
        self.assertEqual(len(b.flags), 2)
        self.assertNotIn(3, b.flags)

    def test_flags_copied(self) -> None:
        a, b = view_of(1, 2), view_of(1, 2)
        a.flags[2] = frozenset({"\\Deleted"})  # what the adapter does after its STORE
        self.assertEqual(b.flags[2], frozenset())
        self.assertIs(a.uids, b.uids)  # numbers unchanged: still shared
        self.assertEqual(dict(a.flags), {1: frozenset(), 2: frozenset({"\\Deleted"})})
        self.assertEqual(dict(b.flags), {1: frozenset(), 2: frozenset()})

    def test_flags_mapping(self) -> None:
        view = view_of(*range(1, 201))
        flags = view.flags
        self.assertEqual(len(flags), 200)
        self.assertIsNone(flags.get(500))
        self.assertEqual(flags.get(500, "x"), "x")
        with self.assertRaises(KeyError):
            flags[500]
        del flags[10]
        with self.assertRaises(KeyError):
            del flags[10]
        with self.assertRaises(KeyError):
            flags[10]
        self.assertIsNone(flags.get(10))
        flags[300] = frozenset({"$Label"})
        self.assertEqual(len(flags), 200)
        self.assertEqual(list(flags), [u for u in range(1, 201) if u != 10] + [300])
        # Writing the flags a UID has keeps it the snapshot's.
        flags[5] = frozenset()
        self.assertNotIn(5, flags._own)
        flags[5] = frozenset({"\\Seen"})
        flags[5] = frozenset()
        self.assertNotIn(5, flags._own)
        del flags[300]
        self.assertNotIn(300, flags._own)
        flags[10] = frozenset()
        self.assertEqual(len(flags), 200)
        self.assertNotIn(10, flags._own)
        flags[300] = frozenset({"$Label"})
        del flags[10]
        # Many changes fold the overlay into a private table; same contents.
        for u in range(20, 120):
            flags[u] = frozenset({"\\Seen"})
        self.assertEqual(flags._own, {})
        self.assertTrue(flags._private)
        self.assertEqual(len(flags), 200)
        flags[400] = frozenset()
        del flags[400]
        self.assertEqual(len(flags), 200)
        self.assertEqual(flags[50], frozenset({"\\Seen"}))
        self.assertNotIn(10, flags)
        self.assertEqual(flags[300], frozenset({"$Label"}))
        self.assertEqual(view_of(*range(1, 201)).flags[50], frozenset())

    def test_snapshot_released(self) -> None:
        from txmail.imap import view as module

        a = SelectedView("Shared-test", 3, [info(1)])
        self.assertIn(("Shared-test", 3), module._SNAPSHOTS)
        del a
        import gc

        gc.collect()
        self.assertNotIn(("Shared-test", 3), module._SNAPSHOTS)
