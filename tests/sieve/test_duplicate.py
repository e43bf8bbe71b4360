"""The duplicate test (RFC 7352)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Context, Discard, DuplicateMark, Keep, Limits, SieveError, parse

from ._support import FakeDuplicates, sieve

_ALERT = b"Message-ID: <a1@example.org>\r\nSubject: ALERT: disk full\r\n\r\n"


class DuplicateTests(SynchronousTestCase):
    def test_first_delivery_then_duplicate(self) -> None:
        """Section 3's first example: discard a message seen before (by Message-ID)."""
        tracker = FakeDuplicates()
        script = 'require "duplicate"; if duplicate { discard; }'
        first = sieve(script, _ALERT, context=Context(duplicates=tracker))
        self.assertEqual(first.actions, ())
        self.assertEqual(first.duplicates, (DuplicateMark("<a1@example.org>", "", 7 * 86400, False),))
        self.assertEqual(tracker.marked, {}, "the run itself records nothing")
        for mark in first.duplicates:
            tracker.mark(mark.id, mark.handle, mark.seconds, mark.last)
        second = sieve(script, _ALERT, context=Context(duplicates=tracker))
        self.assertEqual(second.actions, (Discard(),))
        self.assertEqual(second.duplicates, ())

    def test_uniqueid_example(self) -> None:
        """Section 3's second example: one alert per subject within 60 seconds."""
        script = (
            'require ["duplicate", "variables", "imap4flags"];\n'
            'if header :matches "subject" "ALERT: *" {\n'
            '  if duplicate :seconds 60 :uniqueid "${1}" {\n'
            '    setflag "\\\\seen";\n  }\n}'
        )
        tracker = FakeDuplicates()
        tracker.marked[("disk full", "")] = 60
        result = sieve(script, _ALERT, context=Context(duplicates=tracker))
        self.assertEqual(result.deliveries, (Keep(("\\seen",)),))
        self.assertEqual(tracker.asked, [("disk full", "", 60)])

    def test_header_and_handle(self) -> None:
        tracker = FakeDuplicates()
        script = 'require "duplicate"; if duplicate :header "subject" :handle "alerts" { discard; }'
        result = sieve(script, _ALERT, context=Context(duplicates=tracker))
        self.assertEqual(result.duplicates, (DuplicateMark("ALERT: disk full", "alerts", 7 * 86400, False),))

    def test_no_message_id_is_not_a_duplicate(self) -> None:
        tracker = FakeDuplicates()
        result = sieve(
            'require "duplicate"; if duplicate { discard; }',
            b"Subject: x\r\n\r\n",
            context=Context(duplicates=tracker),
        )
        self.assertEqual((result.actions, result.duplicates, tracker.asked), ((), (), []))

    def test_last_refreshes(self) -> None:
        """Section 3.4: with :last the period restarts even for a duplicate."""
        tracker = FakeDuplicates()
        tracker.marked[("<a1@example.org>", "")] = 10
        result = sieve(
            'require "duplicate"; if duplicate :last { discard; }',
            _ALERT,
            context=Context(duplicates=tracker),
        )
        self.assertEqual(result.actions, (Discard(),))
        self.assertEqual(result.duplicates, (DuplicateMark("<a1@example.org>", "", 7 * 86400, True),))

    def test_same_run_sees_its_own_mark(self) -> None:
        script = 'require "duplicate"; if duplicate {} if duplicate { discard; }'
        self.assertEqual(sieve(script, _ALERT).actions, (Discard(),))

    def test_seconds_capped(self) -> None:
        tracker = FakeDuplicates()
        sieve(
            'require "duplicate"; if duplicate :seconds 999999999 {}',
            _ALERT,
            context=Context(duplicates=tracker, limits=Limits(duplicate_max_seconds=100)),
        )
        self.assertEqual(tracker.asked[0][2], 100)

    def test_header_and_uniqueid_conflict(self) -> None:
        e = self.assertRaises(
            SieveError, parse, 'require "duplicate"; if duplicate :header "a" :uniqueid "b" {}'
        )
        self.assertIn("conflicts", e.message)
