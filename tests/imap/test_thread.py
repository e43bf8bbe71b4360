"""
Tests for txmail.imap.thread: the base subject and sent date of RFC 5256
section 2, and the ORDEREDSUBJECT and REFERENCES algorithms of section 3.
"""

from __future__ import annotations

import datetime
import email.utils
import random
import re

from twisted.trial.unittest import SynchronousTestCase

from txmail.imap import thread
from txmail.imap.serialize import thread_response
from txmail.imap.thread import (
    ThreadMessage,
    base_subject,
    casemap,
    message_ids,
    ordered_subject,
    references,
    sent_date,
)

__all__: list[str] = []


class BaseSubjectTests(SynchronousTestCase):
    """RFC 5256 section 2.1."""

    def check(self, raw: str | None, base: str, reply: bool) -> None:
        self.assertEqual(base_subject(raw), (base, reply), raw)

    def test_plain(self) -> None:
        self.check("hello world", "hello world", False)
        self.check(None, "", False)
        self.check("", "", False)

    def test_step1_whitespace(self) -> None:
        """(1) tabs and continuations become a space, runs of spaces one space."""
        self.check("a\r\n\tb  \t c", "a b c", False)

    def test_stored_value_line_end(self) -> None:
        """A stored value's final CRLF or LF (not a fold) takes the plain path, same result."""
        self.check(" Re: hello  world \r\n", "hello world", True)
        self.check(" hello\n", "hello", False)
        self.check(" a\r\n\tb \r\n", "a b", False)
        self.check(" caf\xc3\xa9\r\n", "café", False)  # UTF-8 octets: decoded

    def test_step1_encoded_words(self) -> None:
        """(1) RFC 2047 encoded-words are decoded before anything else."""
        self.check("=?utf-8?q?Re=3A_R=C3=A9sum=C3=A9?=", "Résumé", True)
        self.check("=?iso-8859-1?b?UmU6IGNhZuk=?=", "café", True)

    def test_step2_trailers(self) -> None:
        """(2) trailing "(fwd)" and spaces, repeatedly; "(fwd)" marks a forward."""
        self.check("hello (fwd) (FWD)  ", "hello", True)
        self.check("hello   ", "hello", False)
        self.check("hello(fwd)x", "hello(fwd)x", False)

    def test_step3_leaders(self) -> None:
        """(3) re:, fw:, fwd: with blobs before and one after, and leading spaces."""
        self.check("Re: hello", "hello", True)
        self.check("RE:hello", "hello", True)
        self.check("re : hello", "hello", True)
        self.check("Fw: hello", "hello", True)
        self.check("FWD: hello", "hello", True)
        self.check("Re[2]: hello", "hello", True)
        self.check("[list] Re: hello", "hello", True)
        self.check("[a][b] Re [c]: Re: Fwd: hello", "hello", True)
        self.check("   hello", "hello", False)

    def test_not_leaders(self) -> None:
        """Words that only start like a leader stay."""
        self.check("Reply hello", "Reply hello", False)
        self.check("Fwdx: hello", "Fwdx: hello", False)
        self.check("re hello", "re hello", False)
        self.check("Re[a][b]: hello", "Re[a][b]: hello", False)

    def test_step4_blob(self) -> None:
        """(4) a leading blob goes only when something is left after it."""
        self.check("[PATCH] fix it", "fix it", False)
        self.check("[PATCH 1/2] [RFC] fix it", "fix it", False)
        self.check("[only a blob]", "[only a blob]", False)
        self.check("[a] [b]", "[b]", False)

    def test_step5_repeat(self) -> None:
        """(5) steps 3 and 4 until neither applies."""
        self.check("[x] Re: [y] Re: [z] hello", "hello", True)

    def test_step6_fwd_wrapper(self) -> None:
        """(6) "[fwd: ...]" is unwrapped, then again from step 2."""
        self.check("[Fwd: Re: hello (fwd)]", "hello", True)
        self.check("[fwd: [fwd: hello]]", "hello", True)
        self.check("[fwd: hello", "[fwd: hello", False)  # no closing bracket: no wrapper, no blob

    def test_only_leaders(self) -> None:
        self.check("Re: ", "", True)
        self.check("Re: (fwd)", "", True)

    def test_casemap(self) -> None:
        """i;ascii-casemap: ASCII letters fold, other characters do not."""
        self.assertEqual(casemap("Hello"), casemap("hELLO"))
        self.assertNotEqual(casemap("é"), casemap("É"))
        self.assertLess(casemap("apple"), casemap("Banana"))
        # Octet order of UTF-8: any non-ASCII character sorts after ASCII.
        self.assertLess(casemap("z"), casemap("é"))


class SentDateTests(SynchronousTestCase):
    """RFC 5256 section 2.2: the Date: field in UTC, None when unusable."""

    def test_usual(self) -> None:
        self.assertEqual(sent_date("Mon, 7 Feb 1994 21:52:25 -0800"), 760686745.0)
        self.assertEqual(sent_date("Tue, 8 Feb 1994 05:52:25 +0000 (UTC)"), 760686745.0)
        self.assertEqual(sent_date(" 8 Feb 1994 05:52 +0000"), 760686720.0)

    def test_obsolete_forms(self) -> None:
        """Named zones and two-digit years go through email.utils."""
        self.assertEqual(sent_date("Mon, 7 Feb 94 21:52:25 PST"), 760686745.0)

    def test_invalid(self) -> None:
        for raw in (None, "", "garbage", "32 Foo 2020 10:00:00 +0000", "Mon, 31 Feb 2020 10:00:00 +0000"):
            self.assertIsNone(sent_date(raw), raw)

    def test_same_as_reference(self) -> None:
        """The fast path (each day's date computed once) answers as the parser it replaced, on generated and odd dates."""
        dates = _generated_dates(3000) + _ODD_DATES
        self.patch(thread, "_DAYS", {})
        for raw in dates:
            self.assertEqual(sent_date(raw), _reference_sent_date(raw), raw)
        # Again, the days known.
        for raw in dates:
            self.assertEqual(sent_date(raw), _reference_sent_date(raw), raw)
        # A small cache, cleared when full.
        self.patch(thread, "_DAYS", {})
        self.patch(thread, "_DAYS_LIMIT", 8)
        for raw in dates:
            self.assertEqual(sent_date(raw), _reference_sent_date(raw), raw)
        self.assertLessEqual(len(thread._DAYS), 8)

    def test_same_as_general_path(self) -> None:
        """Usual dates: the fast path gives email.utils's answer (so a wrong day, zone or second would fail)."""
        for raw in _generated_dates(2000, seed=11):
            parsed = email.utils.parsedate_tz(" ".join(raw.split()))
            if parsed is None:
                continue
            try:
                datetime.datetime(*parsed[:6])
            except ValueError:
                continue
            self.assertEqual(sent_date(raw), float(email.utils.mktime_tz(parsed)), raw)

    def test_cached_day_used(self) -> None:
        """A day's date is computed once (a wrong cached value would show)."""
        self.patch(thread, "_DAYS", {})
        self.assertEqual(sent_date("Tue, 1 Dec 2026 10:00:00 +0000"), 1796119200.0)
        self.assertIn("1 Dec 2026", thread._DAYS)
        thread._DAYS["1 Dec 2026"] += 1
        self.assertEqual(sent_date("1 Dec 2026 10:00:00 +0000"), 1796119200.0 + 86400)


_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun", "mon", "XYZ")
_MONTH_NAMES = (
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
    "DEC",
    "feb",
    "Foo",
)
_ZONES = (
    "+0000",
    "-0000",
    "+0100",
    "-0800",
    "+0530",
    "-1200",
    "+1400",
    "+9959",
    "GMT",
    "UT",
    "EST",
    "PDT",
    "Z",
    "",
)

#: Odd forms: folded, comments, obsolete zones and years, no seconds, leap seconds and days, bad values, non-ASCII.
_ODD_DATES = [
    "Tue, 1 Dec 2026 10:00:00 +0000",
    "Tue,1 Dec 2026 10:00:00 +0000",
    "Tue , 1 Dec 2026 10:00:00 +0000",
    "1 Dec 2026 10:00 +0000",
    "01 Dec 2026 10:00:00 +0000 (UTC)",
    "01 Dec 2026 10:00:00 +0000(UTC)",
    " Tue, 1 Dec 2026\r\n 10:00:00 +0000\r\n",
    "Tue, 1\tDec\t2026 10:00:00\t-0000",
    "Tue, 1 Dec 2026 10:00:00 +0000 trailing",
    "Tue, 1 Dec 2026 10:00:00 +00000",
    "Tue, 1 Dec 2026 10:00:00 +000",
    "Tue, 1 Dec 26 10:00:00 +0000",
    "Tue, 1 Dec 0000 10:00:00 +0000",
    "Tue, 1 Dec 9999 23:59:59 -1200",
    "Tue, 29 Feb 2024 10:00:00 +0000",
    "Tue, 29 Feb 2023 10:00:00 +0000",
    "Tue, 29 Feb 1900 10:00:00 +0000",
    "Tue, 29 Feb 2000 10:00:00 +0000",
    "Tue, 0 Dec 2026 10:00:00 +0000",
    "Tue, 32 Dec 2026 10:00:00 +0000",
    "Tue, 1 Dec 2026 24:00:00 +0000",
    "Tue, 1 Dec 2026 23:60:00 +0000",
    "Tue, 1 Dec 2026 23:59:60 +0000",
    "Tue, 1 Dec 2026 23:59:61 +0000",
    "Tue, 1 Dec 2026 9:05:07 +0000",
    "Tue, 1 Dec 2026 10:00:00 EST",
    "Tue, 1 Dec 2026 10:00:00 GMT",
    "Tue, 1 Dec 2026 10:00:00",
    "Tue, 1 Dec 2026",
    "Tuesday, 1 December 2026 10:00:00 +0000",
    "Tue, \u0661 Dec 2026 10:00:00 +0000",
    "Tue, 1 Dec \u0662\u0660\u0662\u0666 10:00:00 +0000",
    "Tue, 1\u00a0Dec\u00a02026 10:00:00 +0000",
    "Tue, 1\x1cDec 2026 10:00:00 +0000",
    "Tue, 1 D\u00e9c 2026 10:00:00 +0000",
    "2026-12-01T10:00:00Z",
    "",
    " ",
]


def _generated_dates(count: int, seed: int = 5) -> list[str]:
    """*count* ``Date:`` values, mostly usual, some with odd parts (see :data:`_ODD_DATES`)."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        day = str(rng.randint(0, 32)).zfill(rng.choice((1, 2)))
        year = str(rng.choice((rng.randint(1900, 2100), rng.randint(0, 99), 2024, 2023)))
        hms = f"{rng.randint(0, 24)}:{rng.randint(0, 60):02}" + rng.choice(("", f":{rng.randint(0, 61):02}"))
        parts = [day, rng.choice(_MONTH_NAMES), year, hms, rng.choice(_ZONES)]
        if rng.random() < 0.7:
            parts.insert(0, rng.choice(_DAY_NAMES) + ",")
        raw = rng.choice((" ", "  ", "\t", "\r\n ")).join(parts) + rng.choice(
            ("", "", " (UTC)", "\r\n", " x")
        )
        out.append(rng.choice(("", " ")) + raw)
    return out


# The parser of the usual form that the one caching each day's date replaced.
_REFERENCE_DATE_RE = re.compile(
    r"\s*(?:[A-Za-z]{3}\s*,\s*)?(\d{1,2})\s+([A-Za-z]{3})\s+(\d{4})\s+(\d{1,2}):(\d{2})(?::(\d{2}))?\s+([+-])(\d{2})(\d{2})(?:\s|\(|$)"
)


def _reference_sent_date(raw: str | None) -> float | None:
    if raw is None:
        return None
    m = _REFERENCE_DATE_RE.match(raw)
    if m is not None:
        day, mon, year, hh, mm, ss, sign, oh, om = m.groups()
        month = thread._MONTHS.get(mon.upper())
        h, mi, sec = int(hh), int(mm), int(ss or 0)
        if month is not None and h < 24 and mi < 60 and sec <= 60:
            try:
                days = datetime.date(int(year), month, int(day)).toordinal() - thread._EPOCH_DAY
            except ValueError:
                days = None
            if days is not None:
                offset = (int(oh) * 60 + int(om)) * 60
                when = days * 86400 + h * 3600 + mi * 60 + sec
                return float(when - offset if sign == "+" else when + offset)
    try:
        parsed = email.utils.parsedate_tz(" ".join(raw.split()))
        if parsed is None:
            return None
        datetime.datetime(*parsed[:6])
        return float(email.utils.mktime_tz(parsed))
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


class MessageIdTests(SynchronousTestCase):
    def test_ids(self) -> None:
        self.assertEqual(message_ids("<a@b>"), ["a@b"])
        self.assertEqual(message_ids("<a@b>\r\n\t<c@d> (comment) < e @ f >"), ["a@b", "c@d", "e@f"])

    def test_invalid(self) -> None:
        """No "@" or nothing on one side of it: not a msg-id; old In-Reply-To phrases skipped."""
        self.assertEqual(message_ids("<a> <@b> <c@> foo@bar"), [])
        self.assertEqual(message_ids('"Your message of Monday" <x@y>'), ["x@y"])
        self.assertEqual(message_ids(None), [])

    def test_usual_and_general_forms_agree(self) -> None:
        """The fast path (every "<" opens a plain id) and the general loop give the same ids."""
        self.assertEqual(message_ids("<a@b@c> <d@e>"), ["a@b@c", "d@e"])
        self.assertEqual(message_ids("<<a@b>>"), ["a@b"])
        self.assertEqual(message_ids("<a@b> <c d@e>"), ["a@b", "cd@e"])
        self.assertEqual(message_ids("<a@b> <c@> <d@e>"), ["a@b", "d@e"])
        self.assertEqual(message_ids("x <a@b> y"), ["a@b"])


def msg(
    n: int, subject: str = "", date: float | None = None, mid: str | None = None, *parents: str
) -> ThreadMessage:
    """Message *n* (mailbox order n), dated *n* unless told."""
    base, reply = base_subject(subject)
    return ThreadMessage(n, n, float(n if date is None else date), casemap(base), reply, mid, parents)


def render(threads: list) -> bytes:  # type: ignore[type-arg]
    return thread_response(threads)


class OrderedSubjectTests(SynchronousTestCase):
    """RFC 5256 section 3, ORDEREDSUBJECT."""

    def test_groups(self) -> None:
        """Grouped by base subject, sorted by date within; threads by their first message's date."""
        messages = [
            msg(1, "b", 50),
            msg(2, "Re: a", 20),
            msg(3, "a", 10),
            msg(4, "re: b", 40),
            msg(5, "c", 30),
            msg(6, "Fwd: a", 60),
        ]
        self.assertEqual(render(ordered_subject(messages)), b"* THREAD (3 (2)(6))(5)(4 1)\r\n")

    def test_ties_by_mailbox_order(self) -> None:
        self.assertEqual(render(ordered_subject([msg(2, "x", 5), msg(1, "x", 5)])), b"* THREAD (1 2)\r\n")

    def test_empty(self) -> None:
        self.assertEqual(render(ordered_subject([])), b"* THREAD\r\n")


class ReferencesTests(SynchronousTestCase):
    """RFC 5256 section 3, REFERENCES."""

    def test_chain_and_branches(self) -> None:
        messages = [
            msg(1, "a", None, "<1>"),
            msg(2, "Re: a", None, "2@x", "1@x"),
            msg(3, "Re: a", None, "3@x", "1@x", "2@x"),
            msg(4, "Re: a", None, "4@x", "1@x"),
            msg(5, "other", None, "5@x"),
        ]
        # Message 1's "<1>" is not a valid msg-id: messages 2-4 hang from
        # a dummy "1@x" with two children (2, 4), kept at the root (4B);
        # message 1 has its subject and joins the dummy (5C).
        self.assertEqual(render(references(messages)), b"* THREAD ((1)(2 3)(4))(5)\r\n")

    def test_missing_parent_pruned(self) -> None:
        """(4B) a dummy inside a thread is replaced by its children."""
        messages = [
            msg(1, "a", None, "1@x"),
            msg(2, "Re: a", None, "3@x", "1@x", "2@x"),
        ]
        self.assertEqual(render(references(messages)), b"* THREAD (1 2)\r\n")

    def test_root_dummy_with_one_child_promoted(self) -> None:
        """(4B) at the root, a dummy with one child is replaced by it; (4A) childless dummies go."""
        messages = [msg(1, "x", None, "1@x", "gone@x"), msg(2, "y", None, "2@x", "gone2@x", "gone3@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (1)(2)\r\n")

    def test_root_dummy_with_two_children_kept(self) -> None:
        messages = [msg(1, "x", None, "1@x", "gone@x"), msg(2, "y", None, "2@x", "gone@x")]
        self.assertEqual(render(references(messages)), b"* THREAD ((1)(2))\r\n")

    def test_loops(self) -> None:
        """(1A, 1B) no link that makes a loop: each message references the other."""
        messages = [msg(1, "a", None, "1@x", "2@x"), msg(2, "b", None, "2@x", "1@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (2 1)\r\n")
        self_ref = [msg(1, "a", None, "1@x", "1@x")]
        self.assertEqual(render(references(self_ref)), b"* THREAD (1)\r\n")

    def test_references_loop_inside(self) -> None:
        """A References field that repeats ids does not loop either."""
        messages = [msg(1, "a", None, "1@x", "a@x", "b@x", "a@x", "b@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (1)\r\n")

    def test_existing_parent_kept_in_1a(self) -> None:
        """(1A) a container that has a parent keeps it; (1B) the message's own parent is its last reference."""
        messages = [
            msg(1, "a", None, "1@x"),
            msg(2, "b", None, "2@x"),
            msg(3, "Re: a", None, "3@x", "1@x", "4@x"),
            msg(4, "Re: a", None, "4@x", "2@x"),
        ]
        # 4 is first a child of 1 (from 3's References), then moved under 2 by its own (1B).
        self.assertEqual(render(references(messages)), b"* THREAD (1)(2 4 3)\r\n")

    def test_duplicate_message_ids(self) -> None:
        """A second message with the same Message-ID gets a container of its own."""
        messages = [msg(1, "a", None, "1@x"), msg(2, "b", None, "1@x"), msg(3, "c", None, "3@x", "1@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (1 3)(2)\r\n")

    def test_no_message_id(self) -> None:
        messages = [msg(1, "a"), msg(2, "b")]
        self.assertEqual(render(references(messages)), b"* THREAD (1)(2)\r\n")

    def test_subject_grouping_reply(self) -> None:
        """(5C) a reply with the subject of another root becomes its child."""
        messages = [msg(1, "hello", None, "1@x"), msg(2, "Re: hello", None, "2@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (1 2)\r\n")

    def test_subject_grouping_reply_first(self) -> None:
        """(5B) the non-reply takes the table even when the reply comes first."""
        messages = [msg(1, "Re: hello", None, "1@x"), msg(2, "hello", None, "2@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (2 1)\r\n")

    def test_subject_grouping_siblings(self) -> None:
        """(5C) two non-replies with one subject: a dummy holds both."""
        messages = [msg(1, "hello", None, "1@x"), msg(3, "other"), msg(2, "HELLO", None, "2@x")]
        self.assertEqual(render(references(messages)), b"* THREAD ((1)(2))(3)\r\n")

    def test_subject_grouping_dummies_merge(self) -> None:
        """(5C) two dummies with one subject: the children of the second join the first."""
        messages = [
            msg(1, "s", None, "1@x", "p@x"),
            msg(2, "Re: s", None, "2@x", "p@x"),
            msg(3, "Re: s", None, "3@x", "q@x"),
            msg(4, "s", None, "4@x", "q@x"),
        ]
        self.assertEqual(render(references(messages)), b"* THREAD ((1)(2)(3)(4))\r\n")

    def test_subject_grouping_into_dummy(self) -> None:
        """(5C) a message with the subject of a dummy root becomes its child."""
        messages = [
            msg(1, "s", None, "1@x", "p@x"),
            msg(2, "Re: s", None, "2@x", "p@x"),
            msg(3, "s", None, "3@x"),
        ]
        self.assertEqual(render(references(messages)), b"* THREAD ((1)(2)(3))\r\n")

    def test_empty_subjects_not_grouped(self) -> None:
        messages = [msg(1, "", None, "1@x"), msg(2, "Re:", None, "2@x")]
        self.assertEqual(render(references(messages)), b"* THREAD (1)(2)\r\n")

    def test_siblings_sorted_by_date(self) -> None:
        """(6) children by sent date, ties by mailbox order; a dummy by its first child."""
        messages = [
            msg(1, "a", 100, "1@x"),
            msg(2, "b", 30, "2@x", "1@x"),
            msg(3, "c", 20, "3@x", "1@x"),
            msg(4, "d", 20, "4@x", "1@x"),
            msg(5, "e", 90, "5@x", "gone@x"),
            msg(6, "f", 10, "6@x", "gone@x"),
        ]
        self.assertEqual(render(references(messages)), b"* THREAD ((6)(5))(1 (3)(4)(2))\r\n")

    def test_deep_chain(self) -> None:
        """A chain of 5,000 replies needs no recursion."""
        n = 5000
        messages = [msg(1, "a", None, "1@x")]
        messages += [msg(i, "Re: a", None, f"{i}@x", f"{i - 1}@x") for i in range(2, n + 1)]
        threads = references(messages)
        expected = b"* THREAD (" + b" ".join(b"%d" % i for i in range(1, n + 1)) + b")\r\n"
        self.assertEqual(render(threads), expected)

    def test_deep_branching(self) -> None:
        """Two children at every level, 3,000 levels deep: rendered without recursion."""
        messages = [msg(1, "a", None, "m1@x")]
        for i in range(1, 3000):
            messages.append(msg(2 * i, "a", 2 * i, f"m{2 * i}@x", f"m{2 * i - 1}@x"))
            messages.append(msg(2 * i + 1, "a", 2 * i + 1, f"m{2 * i + 1}@x", f"m{2 * i - 1}@x"))
        out = render(references(messages))
        self.assertTrue(out.startswith(b"* THREAD (1 (2)(3 (4)(5 "), out[:40])
        self.assertEqual(out.count(b"("), out.count(b")"))
