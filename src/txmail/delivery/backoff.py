"""
When to retry a deferred delivery, when to warn the sender, when to give up.

Theory of operation
===================

RFC 5321 section 4.5.4.1 asks a sender to retry a temporarily failed
message, with a retry interval of "at least 30 minutes" (though more
frequent early retries are common and harmless for a site's own queue) and
to give up only after "at least 4-5 days".  RFC 3461/3464 let it send a
"delayed" DSN meanwhile.  :class:`RetrySchedule` encodes such a policy:

* after the *n*-th failed attempt the next one is ``delays[n-1]`` seconds
  later; once ``delays`` is used up, every ``then_every`` seconds;
* a message expires ``give_up_after`` seconds after its first attempt.  The
  retry that would fall after that moment is moved to it, so the last
  attempt happens at expiry; a failure at or after expiry gives ``None``
  (bounce with a "failed" DSN);
* a delay notice is due once the message has waited ``delay_notice_after``
  seconds (``None`` disables them), once per message, and never for an
  expired one (it gets a failure DSN instead).

All times are seconds since the epoch (``time.time()``); the schedule holds
no state: the queue stores ``first_attempt`` (or the entry's ``created``),
``attempts`` and whether a delay notice went out.

:func:`parse_schedule` reads the configuration form ``"5m,10m,20m,40m,1h"``:
the last interval repeats.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["RetrySchedule", "parse_duration", "parse_schedule"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RetrySchedule:
    """
    A retry policy.  See the module documentation.

    Attributes:
        delays: seconds to wait after the 1st, 2nd... failed attempt.
        then_every: seconds between attempts once ``delays`` is used up.
        give_up_after: seconds after the first attempt when the message
            expires and bounces.
        delay_notice_after: seconds of waiting after which the sender gets a
            "delayed" DSN, or ``None`` for never.
    """

    delays: tuple[float, ...] = (300, 600, 1200, 2400)
    then_every: float = 3600
    give_up_after: float = 5 * 86400
    delay_notice_after: float | None = 4 * 3600

    def __post_init__(self) -> None:
        for value in (*self.delays, self.then_every, self.give_up_after):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"retry intervals must be positive numbers, not {value!r}")
        if self.delay_notice_after is not None and not (
            math.isfinite(self.delay_notice_after) and self.delay_notice_after >= 0
        ):
            raise ValueError(f"invalid delay_notice_after {self.delay_notice_after!r}")

    def expires_at(self, first_attempt: float) -> float:
        """When a message first tried at *first_attempt* expires (the DSN's Will-Retry-Until)."""
        return first_attempt + self.give_up_after

    def delay(self, attempts: int) -> float:
        """The wait after *attempts* failed attempts (0 for none yet)."""
        if attempts <= 0:
            return 0.0
        if attempts <= len(self.delays):
            return float(self.delays[attempts - 1])
        return float(self.then_every)

    def next_attempt(self, first_attempt: float, attempts: int, now: float) -> float | None:
        """
        When to try next after *attempts* failed attempts, the last one
        failing at *now*; ``None`` when the message has expired
        (``now - first_attempt >= give_up_after``).  Never later than the
        expiry time, so the last attempt happens at expiry.
        """
        expiry = self.expires_at(first_attempt)
        if now >= expiry:
            return None
        return min(now + self.delay(attempts), expiry)

    def should_send_delay_notice(self, first_attempt: float, now: float, already_sent: bool) -> bool:
        """Whether a "delayed" DSN is due now (RFC 3464 action ``delayed``)."""
        if already_sent or self.delay_notice_after is None:
            return False
        waited = now - first_attempt
        return self.delay_notice_after <= waited < self.give_up_after


def parse_duration(text: str) -> float:
    """
    Seconds in a duration such as ``"90"``, ``"30s"``, ``"5m"``, ``"1.5h"``,
    ``"5d"`` (no unit means seconds).

    Raises:
        ValueError: not a duration, or not positive.
    """
    m = _DURATION_RE.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r} (use a number with unit s, m, h or d)")
    seconds = float(m.group(1)) * _UNITS[(m.group(2) or "s").lower()]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def parse_schedule(
    text: str,
    *,
    give_up_after: float = RetrySchedule.give_up_after,
    delay_notice_after: float | None = RetrySchedule.delay_notice_after,
) -> RetrySchedule:
    """
    Read the configuration form of the retry intervals: a comma-separated
    list of durations, the last of which repeats (``"5m,10m,20m,40m,1h"``).

    Raises:
        ValueError: empty, or an item is not a positive duration.
    """
    items = text.split(",")
    if not text.strip():
        raise ValueError("empty retry schedule")
    seconds = [parse_duration(item) for item in items]
    return RetrySchedule(
        delays=tuple(seconds[:-1]),
        then_every=seconds[-1],
        give_up_after=give_up_after,
        delay_notice_after=delay_notice_after,
    )
