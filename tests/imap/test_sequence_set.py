"""Tests for ``SequenceSet`` (RFC 3501 section 9 ``sequence-set``): spans, membership, expansion."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txmail.imap.types import SequenceSet
from txmail.imap.view import SelectedView
from txmail.model import MessageInfo

_NUMBER = st.one_of(st.none(), st.integers(min_value=1, max_value=40))


class SequenceSetTests(SynchronousTestCase):
    def test_spans_merge_and_order(self) -> None:
        """Overlapping, adjacent, reversed and repeated ranges become sorted disjoint spans."""
        s = SequenceSet(((7, 9), (4, 2), (3, 5), (10, 10), (20, None), (3, 3), (6, 6)))
        self.assertEqual(s.spans(25), ((2, 10), (20, 25)))
        self.assertEqual(s.spans(15), ((2, 10), (15, 20)))  # "20:*" with * = 15 is 15:20
        self.assertEqual(SequenceSet(((1, 2), (4, 5))).spans(9), ((1, 2), (4, 5)))

    @given(
        st.lists(st.tuples(_NUMBER, _NUMBER), min_size=1, max_size=8), st.integers(min_value=0, max_value=45)
    )
    def test_same_as_the_definition(self, ranges: list[tuple[int | None, int | None]], top: int) -> None:
        """expand and contains agree with the plain definition of a sequence set."""
        s = SequenceSet(tuple(ranges))
        members = set()
        for first, last in ranges:
            a = top if first is None else first
            b = top if last is None else last
            members.update(range(min(a, b), max(a, b) + 1))
        self.assertEqual(s.expand(top), sorted(n for n in members if 1 <= n <= top))
        for n in range(1, 50):
            self.assertEqual(s.contains(n, top), n in members, n)

    def test_many_ranges_against_a_big_mailbox(self) -> None:
        """
        Thousands of ranges over 100,000 UIDs resolve by bisection per span
        (a client can send ~2,000 ranges in one command line).
        """
        view = SelectedView("INBOX", 1, [MessageInfo(u, frozenset(), 10, 0.0, 1) for u in range(1, 100_001)])
        odd = SequenceSet(tuple((n, n) for n in range(1, 4000, 2)))
        self.assertEqual([u for _, u in view.resolve(odd, uid=True)], list(range(1, 4000, 2)))
        overlapping = SequenceSet(tuple((1, 100_000) for _ in range(2000)))
        self.assertEqual(len(overlapping.expand(100_000)), 100_000)
        self.assertEqual(len(view.resolve(overlapping, uid=True)), 100_000)
