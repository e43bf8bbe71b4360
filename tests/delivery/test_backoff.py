"""Tests for the retry policy, txmail.delivery.backoff."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.delivery.backoff import RetrySchedule, parse_duration, parse_schedule

T0 = 1_700_000_000.0


class RetryScheduleTests(SynchronousTestCase):
    def test_defaults_then_every(self) -> None:
        """The default delays run 5, 10, 20, 40 minutes, then hourly."""
        s = RetrySchedule()
        now = T0
        waits = []
        for attempts in range(1, 8):
            nxt = s.next_attempt(T0, attempts, now)
            assert nxt is not None
            waits.append(nxt - now)
            now = nxt
        self.assertEqual(waits, [300, 600, 1200, 2400, 3600, 3600, 3600])

    def test_relative_to_now(self) -> None:
        """The wait counts from the failure (now), not from the first attempt."""
        s = RetrySchedule(delays=(10,), then_every=100)
        self.assertEqual(s.next_attempt(T0, 1, T0 + 7), T0 + 17)
        self.assertEqual(s.next_attempt(T0, 2, T0 + 50), T0 + 150)

    def test_no_attempt_yet_is_now(self) -> None:
        """With no failed attempt the message is due at once."""
        self.assertEqual(RetrySchedule().next_attempt(T0, 0, T0 + 5), T0 + 5)

    def test_expiry(self) -> None:
        """At or after give_up_after the answer is None; just before, the retry is capped at expiry."""
        s = RetrySchedule(delays=(), then_every=3600, give_up_after=86400)
        self.assertIsNone(s.next_attempt(T0, 30, T0 + 86400))
        self.assertIsNone(s.next_attempt(T0, 30, T0 + 90000))
        self.assertEqual(s.next_attempt(T0, 23, T0 + 86000), T0 + 86400)
        self.assertEqual(s.next_attempt(T0, 1, T0 + 3600), T0 + 7200)
        self.assertEqual(s.expires_at(T0), T0 + 86400)

    def test_delay_notice(self) -> None:
        """A delay notice is due once, after delay_notice_after, and not for an expired message."""
        s = RetrySchedule(delay_notice_after=3600, give_up_after=7200)
        self.assertFalse(s.should_send_delay_notice(T0, T0 + 3599, False))
        self.assertTrue(s.should_send_delay_notice(T0, T0 + 3600, False))
        self.assertFalse(s.should_send_delay_notice(T0, T0 + 3600, True))
        self.assertFalse(s.should_send_delay_notice(T0, T0 + 7200, False))
        never = RetrySchedule(delay_notice_after=None)
        self.assertFalse(never.should_send_delay_notice(T0, T0 + 86400, False))

    def test_validation(self) -> None:
        """Intervals must be positive and finite."""
        for bad in (
            {"delays": (0,)},
            {"delays": (-5,)},
            {"then_every": 0},
            {"give_up_after": float("inf")},
            {"delay_notice_after": -1},
        ):
            self.assertRaises(ValueError, RetrySchedule, **bad)


class ParseTests(SynchronousTestCase):
    def test_parse_schedule(self) -> None:
        """The last interval repeats; units s/m/h/d; blanks around items are allowed."""
        s = parse_schedule("5m, 10m,20m,40m,1h")
        self.assertEqual(s.delays, (300, 600, 1200, 2400))
        self.assertEqual(s.then_every, 3600)
        self.assertEqual(s, RetrySchedule())
        one = parse_schedule("30s")
        self.assertEqual((one.delays, one.then_every), ((), 30))
        self.assertEqual(parse_schedule("1d,2D").delays, (86400,))

    def test_parse_schedule_keeps_other_settings(self) -> None:
        """give_up_after and delay_notice_after pass through."""
        s = parse_schedule("1h", give_up_after=3 * 86400, delay_notice_after=None)
        self.assertEqual((s.give_up_after, s.delay_notice_after), (3 * 86400, None))

    def test_parse_duration(self) -> None:
        """A bare number is seconds; fractions are allowed."""
        self.assertEqual(parse_duration("90"), 90)
        self.assertEqual(parse_duration("1.5h"), 5400)
        self.assertEqual(parse_duration(" 2 m "), 120)

    def test_bad_input(self) -> None:
        """Empty lists, empty items, unknown units, zero and negatives are refused."""
        for bad in ("", " ", "5m,", ",5m", "5x", "m", "0s", "-5m", "5m,,1h", "1w", "1e3s"):
            self.assertRaises(ValueError, parse_schedule, bad)
