"""date and currentdate (RFC 5260 sections 4 and 5), index (section 6), from the RFC's examples."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Context, Discard, FileInto, Reject, SieveError, Vacation, parse

from ._support import sieve

#: 2001-09-09T01:46:40Z, a Sunday.
_NOW = 1_000_000_000.0
_BOSS = (
    b"Received: from a by b; Sat, 10 Jun 2006 10:00:00 +0000\r\n"
    b"Received: from c by d; Fri, 9 Jun 2006 23:00:00 -0200\r\n"
    b"From: boss@example.com\r\n"
    b"Date: Tue, 1 Apr 1997 09:06:31 -0800 (PST)\r\n"
    b"\r\nbody\r\n"
)


def _part(test_args: str, data: bytes = _BOSS, zone: int = 0) -> str:
    """The value a date test sees, read back through a :matches match variable."""
    script = f'require ["date", "index", "variables", "reject"];\nif {test_args} "*" {{ reject "${{1}}"; }}'
    result = sieve(script, data, context=Context(now=_NOW, zone=zone))
    assert not result.errors, result.errors
    if not result.actions:
        return "<no match>"
    action = result.actions[0]
    assert isinstance(action, Reject)
    return action.reason


class DateTests(SynchronousTestCase):
    def test_working_hours_example(self) -> None:
        """Section 4's example: mail from the boss in his working hours is urgent."""
        script = (
            'require ["date", "relational", "fileinto"];\n'
            'if allof(header :is "from" "boss@example.com",\n'
            '         date :value "ge" :originalzone "date" "hour" "09",\n'
            '         date :value "lt" :originalzone "date" "hour" "17")\n'
            '{ fileinto "urgent"; }'
        )
        self.assertEqual(sieve(script, _BOSS).actions, (FileInto("urgent"),))
        late = _BOSS.replace(b"09:06:31", b"18:06:31")
        self.assertEqual(sieve(script, late).actions, ())

    def test_weekend_example(self) -> None:
        """Section 4's example: the received date, after the last semicolon."""
        script = (
            'require ["date", "relational", "fileinto"];\n'
            'if anyof(date :is "received" "weekday" "0",\n'
            '         date :is "received" "weekday" "6")\n'
            '{ fileinto "weekend"; }'
        )
        self.assertEqual(sieve(script, _BOSS).actions, (FileInto("weekend"),))

    def test_parts(self) -> None:
        """Section 4.2's date parts, converted to the local zone (UTC here)."""
        expected = {
            "year": "1997",
            "month": "04",
            "day": "01",
            "date": "1997-04-01",
            "julian": "50539",
            "hour": "17",
            "minute": "06",
            "second": "31",
            "time": "17:06:31",
            "iso8601": "1997-04-01T17:06:31+00:00",
            "std11": "Tue, 1 Apr 1997 17:06:31 +0000",
            "zone": "+0000",
            "weekday": "2",
        }
        for part, value in expected.items():
            self.assertEqual(_part(f'date :matches "date" "{part}"'), value, part)

    def test_zones(self) -> None:
        self.assertEqual(_part('date :originalzone :matches "date" "iso8601"'), "1997-04-01T09:06:31-08:00")
        self.assertEqual(_part('date :zone "+0530" :matches "date" "time"'), "22:36:31")
        self.assertEqual(_part('date :matches "date" "zone"', zone=-300), "-0500")

    def test_unparsable_date_matches_nothing(self) -> None:
        self.assertEqual(_part('date :matches "from" "year"'), "<no match>")

    def test_bad_part_and_zone(self) -> None:
        self.assertRaises(SieveError, parse, 'require "date"; if date :is "date" "fortnight" "1" { keep; }')
        e = self.assertRaises(
            SieveError, parse, 'require "date"; if date :zone "EST" :is "date" "year" "1" { keep; }'
        )
        self.assertIn(":zone", e.message)


class CurrentDateTests(SynchronousTestCase):
    def test_month_year_folder_example(self) -> None:
        """Section 5's example: file by the current month and year."""
        script = (
            'require ["date", "variables", "fileinto"];\n'
            'if currentdate :matches "month" "*" { set "month" "${1}"; }\n'
            'if currentdate :matches "year"  "*" { set "year" "${1}"; }\n'
            'fileinto "${month}-${year}";'
        )
        self.assertEqual(sieve(script, context=Context(now=_NOW)).actions, (FileInto("09-2001"),))

    def test_vacation_window_example(self) -> None:
        script = (
            'require ["date", "relational", "vacation"];\n'
            'if allof(currentdate :value "ge" "date" "2001-09-01",\n'
            '         currentdate :value "le" "date" "2001-09-15")\n'
            '{ vacation :days 7  "I\'m away during the first half of September."; }'
        )
        result = sieve(script, context=Context(now=_NOW))
        self.assertEqual([type(a) for a in result.actions], [Vacation])
        self.assertEqual(sieve(script, context=Context(now=_NOW + 30 * 86400)).actions, ())

    def test_parts(self) -> None:
        script = (
            'require ["date", "reject", "variables"]; if currentdate :matches "{}" "*" {{ reject "${{1}}"; }}'
        )
        for part, value in [("julian", "52161"), ("weekday", "0"), ("iso8601", "2001-09-09T01:46:40+00:00")]:
            result = sieve(
                script.replace("{}", part).replace("{{", "{").replace("}}", "}"), context=Context(now=_NOW)
            )
            self.assertEqual(result.actions, (Reject(value),), part)
        zoned = 'require ["date"]; if currentdate :zone "-0200" :is "hour" "23" { discard; }'
        self.assertEqual(sieve(zoned, context=Context(now=_NOW)).actions, (Discard(),))


class IndexTests(SynchronousTestCase):
    def test_header_index(self) -> None:
        """Section 6: :index picks one occurrence, counted from the end with :last."""
        base = 'require "index"; if header :index {} :contains "received" "{}" {{ discard; }}'
        for index, key, expected in [
            ("1", "from a", True),
            ("2", "from a", False),
            ("1 :last", "from c", True),
        ]:
            script = base.replace("{}", index, 1).replace("{}", key, 1).replace("{{", "{").replace("}}", "}")
            self.assertEqual(sieve(script, _BOSS).actions == (Discard(),), expected, index)

    def test_date_index(self) -> None:
        self.assertEqual(_part('date :index 2 :originalzone :matches "received" "hour"'), "23")
        self.assertEqual(_part('date :index 1 :last :zone "+0000" :matches "received" "date"'), "2006-06-10")

    def test_address_index(self) -> None:
        data = b"To: a@one.example\r\nTo: b@two.example, c@two.example\r\n\r\n"
        script = 'require "index"; if address :index 2 :domain :is "to" "one.example" { discard; }'
        self.assertEqual(sieve(script, data).actions, ())
        script = 'require "index"; if address :index 2 :localpart :is "to" "c" { discard; }'
        self.assertEqual(sieve(script, data).actions, (Discard(),))

    def test_last_needs_index(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "index"; if header :last "a" "b" { keep; }')
        self.assertIn(":last needs :index", e.message)

    def test_index_needs_require(self) -> None:
        self.assertRaises(SieveError, parse, 'if header :index 1 "a" "b" { keep; }')
