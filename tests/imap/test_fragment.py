"""Tests for txmail.imap.fragment: framing commands, literals and limits."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.trial.unittest import SynchronousTestCase

from txmail.imap.fragment import (
    CommandFragments,
    CommandFramer,
    Event,
    FramingError,
    LineFragment,
    LiteralAnnounced,
    LiteralFragment,
)

__all__ = ["frame", "frame_all_ways"]


def frame(chunks: Iterable[bytes], accept: bool = True, framer: CommandFramer | None = None) -> list[Event]:
    """Feed *chunks* in order, answering every announced literal; return all events."""
    framer = framer or CommandFramer()
    events: list[Event] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        while (event := framer.next_event()) is not None:
            events.append(event)
            if isinstance(event, LiteralAnnounced):
                if accept:
                    framer.accept_literal()
                else:
                    framer.reject_literal()
    return events


def frame_all_ways(test: SynchronousTestCase, data: bytes, **limits: int) -> list[Event]:
    """
    Frame *data* whole, byte by byte and split at every position (h11's
    idea), assert all give the same events, and return them.
    """
    whole = frame([data], framer=CommandFramer(**limits))
    test.assertEqual(frame([bytes([b]) for b in data], framer=CommandFramer(**limits)), whole)
    for i in range(len(data) + 1):
        test.assertEqual(frame([data[:i], data[i:]], framer=CommandFramer(**limits)), whole, i)
    return whole


def commands(events: list[Event]) -> list[tuple[object, ...]]:
    return [e.fragments for e in events if isinstance(e, CommandFragments)]


class FramingTests(SynchronousTestCase):
    def test_simple_lines(self) -> None:
        """Each CRLF-terminated line without a literal is one command."""
        events = frame_all_ways(self, b"a1 NOOP\r\na2 CAPABILITY\r\n")
        self.assertEqual(
            commands(events),
            [(LineFragment(b"a1 NOOP"),), (LineFragment(b"a2 CAPABILITY"),)],
        )

    def test_bare_lf_ends_a_line(self) -> None:
        """A bare LF is accepted as a line end (documented deviation)."""
        self.assertEqual(commands(frame([b"a NOOP\n"])), [(LineFragment(b"a NOOP"),)])

    def test_incomplete_line_gives_nothing(self) -> None:
        """A line without its end yields no event yet."""
        framer = CommandFramer()
        framer.receive_data(b"a1 NOO")
        self.assertIsNone(framer.next_event())

    def test_synchronizing_literals(self) -> None:
        """RFC 3501 section 6.2.3's LOGIN with two literals frames into five fragments."""
        events = frame_all_ways(self, b"A001 LOGIN {11}\r\nFRED FOOBAR {7}\r\nfat man\r\n")
        self.assertEqual(
            events,
            [
                LiteralAnnounced("A001", 11),
                LiteralAnnounced("A001", 7),
                CommandFragments(
                    (
                        LineFragment(b"A001 LOGIN "),
                        LiteralFragment(b"FRED FOOBAR"),
                        LineFragment(b" "),
                        LiteralFragment(b"fat man"),
                        LineFragment(b""),
                    )
                ),
            ],
        )
        self.assertEqual(events[2].tag, "A001")

    def test_pause_until_decision(self) -> None:
        """After a synchronizing literal is announced nothing is framed until accept_literal."""
        framer = CommandFramer()
        framer.receive_data(b"a APPEND x {3}\r\nabc\r\nb NOOP\r\n")
        self.assertEqual(framer.next_event(), LiteralAnnounced("a", 3))
        self.assertTrue(framer.paused)
        self.assertIsNone(framer.next_event())
        framer.accept_literal()
        event = framer.next_event()
        assert isinstance(event, CommandFragments)
        self.assertEqual(event.fragments[1], LiteralFragment(b"abc"))
        self.assertEqual(framer.next_event(), CommandFragments((LineFragment(b"b NOOP"),)))

    def test_decision_without_literal_is_a_usage_error(self) -> None:
        """Calling accept_literal or reject_literal when nothing waits raises RuntimeError."""
        framer = CommandFramer()
        self.assertRaises(RuntimeError, framer.accept_literal)
        self.assertRaises(RuntimeError, framer.reject_literal)

    def test_rejected_literal_discards_the_command(self) -> None:
        """After reject_literal the partial command is forgotten and the next line is a new command."""
        events = frame([b"a APPEND x {3}\r\n", b"b NOOP\r\n"], accept=False)
        self.assertEqual(events, [LiteralAnnounced("a", 3), CommandFragments((LineFragment(b"b NOOP"),))])

    def test_literal_may_hold_crlf_and_braces(self) -> None:
        """Literal octets are taken by count: CRLF and {n} inside them mean nothing."""
        events = frame_all_ways(self, b"a X {7+}\r\n{2}\r\n\r\n\r\n")
        self.assertEqual(
            commands(events), [(LineFragment(b"a X "), LiteralFragment(b"{2}\r\n\r\n"), LineFragment(b""))]
        )

    def test_non_synchronizing_literal(self) -> None:
        """A {n+} literal (RFC 7888) is read at once, without an announcement."""
        events = frame_all_ways(self, b"a LOGIN {3+}\r\nbob {2+}\r\npw\r\n")
        self.assertEqual(
            events,
            [
                CommandFragments(
                    (
                        LineFragment(b"a LOGIN "),
                        LiteralFragment(b"bob"),
                        LineFragment(b" "),
                        LiteralFragment(b"pw"),
                        LineFragment(b""),
                    )
                )
            ],
        )

    def test_literal8(self) -> None:
        """A ~{n} literal (RFC 3516) is marked binary and may hold NUL."""
        events = frame_all_ways(self, b"a APPEND x ~{3}\r\na\x00b\r\n")
        self.assertEqual(events[0], LiteralAnnounced("a", 3, True, True))
        self.assertEqual(commands(events)[0][1], LiteralFragment(b"a\x00b", True))

    def test_zero_length_literal(self) -> None:
        """A {0} literal is announced and gives an empty fragment."""
        events = frame_all_ways(self, b"a LOGIN {0}\r\n {0+}\r\n\r\n")
        self.assertEqual(commands(events)[0][1], LiteralFragment(b""))
        self.assertEqual(commands(events)[0][3], LiteralFragment(b""))


class LimitTests(SynchronousTestCase):
    def test_oversized_synchronizing_literal_refused_before_reading(self) -> None:
        """A {n} over max_literal gives a tagged TOOBIG error at once; its octets are never awaited."""
        framer = CommandFramer(max_literal=10)
        framer.receive_data(b"a APPEND x {11}\r\n")
        self.assertEqual(framer.next_event(), FramingError("a", "Literal too large", "TOOBIG"))
        self.assertFalse(framer.paused)
        framer.receive_data(b"b NOOP\r\n")
        self.assertEqual(framer.next_event(), CommandFragments((LineFragment(b"b NOOP"),)))

    def test_huge_literal_size(self) -> None:
        """A literal size with absurdly many digits is refused like any oversized literal."""
        events = frame([b"a APPEND x {" + b"9" * 100 + b"}\r\nb NOOP\r\n"])
        self.assertEqual(
            events,
            [FramingError("a", "Literal too large", "TOOBIG"), CommandFragments((LineFragment(b"b NOOP"),))],
        )

    def test_oversized_non_synchronizing_literal_skipped(self) -> None:
        """A {n+} over the limit is reported and its octets and the rest of the command are skipped."""
        data = b"a APPEND x {20+}\r\n" + b"y" * 20 + b" {3+}\r\nabc\r\nb NOOP\r\n"
        events = frame_all_ways(self, data, max_literal=10)
        self.assertEqual(
            events,
            [FramingError("a", "Literal too large", "TOOBIG"), CommandFragments((LineFragment(b"b NOOP"),))],
        )

    def test_skipped_literal_is_not_buffered(self) -> None:
        """While an oversized {n+} literal is skipped the input buffer stays empty."""
        framer = CommandFramer(max_literal=10)
        framer.receive_data(b"a APPEND x {100000+}\r\n")
        framer.next_event()
        for _ in range(10):
            framer.receive_data(b"z" * 5000)
            self.assertIsNone(framer.next_event())
            self.assertEqual(framer.buffered, 0)

    def test_line_too_long(self) -> None:
        """A line over max_line is an error with its tag; the next command frames normally."""
        data = b"t1 LOGIN " + b"x" * 100 + b"\r\nt2 NOOP\r\n"
        events = frame_all_ways(self, data, max_line=50)
        self.assertEqual(
            events, [FramingError("t1", "Line too long"), CommandFragments((LineFragment(b"t2 NOOP"),))]
        )

    def test_long_skipped_line_keeps_literal_marker(self) -> None:
        """A too-long line ending in {n+} has its literal skipped too, however the input is split."""
        data = b"t1 X " + b"x" * 100 + b" {10+}\r\nt3 NOOP\r\n\r\nt2 NOOP\r\n"
        events = frame_all_ways(self, data, max_line=50)
        self.assertEqual(
            events, [FramingError("t1", "Line too long"), CommandFragments((LineFragment(b"t2 NOOP"),))]
        )

    def test_line_too_long_is_not_buffered(self) -> None:
        """An endless line never makes the buffer grow past max_line."""
        framer = CommandFramer(max_line=100)
        framer.receive_data(b"t " + b"x" * 99)
        self.assertIsInstance(framer.next_event(), FramingError)
        for _ in range(50):
            framer.receive_data(b"x" * 99)
            self.assertIsNone(framer.next_event())
            self.assertLess(framer.buffered, 100)
        framer.receive_data(b"\r\nu NOOP\r\n")
        self.assertEqual(framer.next_event(), CommandFragments((LineFragment(b"u NOOP"),)))

    def test_line_exactly_at_limit(self) -> None:
        """A line of exactly max_line octets including CRLF is accepted."""
        line = b"a NOOP" + b"x" * 4
        self.assertEqual(commands(frame_all_ways(self, line + b"\r\n", max_line=12)), [(LineFragment(line),)])

    def test_command_too_long(self) -> None:
        """Lines and literals adding up past max_command make a TOOBIG error; later commands frame."""
        data = b"a X {6+}\r\n123456 {6+}\r\n123456\r\nb NOOP\r\n"
        events = frame_all_ways(self, data, max_command=25)
        self.assertEqual(
            events,
            [FramingError("a", "Literal too large", "TOOBIG"), CommandFragments((LineFragment(b"b NOOP"),))],
        )

    def test_untagged_error(self) -> None:
        """An over-long line without a tag of at most 64 characters gives an error whose tag is None."""
        events = frame([b"+" * 60 + b"\r\n"], framer=CommandFramer(max_line=50))
        self.assertEqual(events, [FramingError(None, "Line too long")])
        events = frame([b"t" * 65 + b" " + b"x" * 60 + b"\r\n"], framer=CommandFramer(max_line=100))
        self.assertEqual(events, [FramingError(None, "Line too long")])
