"""body (RFC 5173), relational (RFC 5231) and subaddress (RFC 5233), from the RFCs' examples."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Discard, FileInto, SieveError, parse
from txmail.sieve.matching import glob_match

from ._support import sieve

_MIME = (
    b"From: agent@example.org\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XX"\r\n'
    b"\r\n"
    b"preamble\r\n"
    b"--XX\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"The missile coordinates are caf=C3=A9 secret.\r\n"
    b"--XX\r\n"
    b"Content-Type: text/html\r\n"
    b"\r\n"
    b"<p>MAKE <b>MONEY</b> FAST</p>\r\n"
    b"--XX\r\n"
    b"Content-Type: audio/mp3\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"SUQzBAAAAAAAI1RTU0U=\r\n"
    b"--XX--\r\n"
)


class BodyTests(SynchronousTestCase):
    def test_raw(self) -> None:
        """Section 5.1: :raw sees the undecoded body, MIME structure and all."""
        base = 'require "body"; if body :raw :contains '
        self.assertEqual(sieve(base + '"caf=C3=A9" { discard; }', _MIME).actions, (Discard(),))
        self.assertEqual(sieve(base + '"--XX" { discard; }', _MIME).actions, (Discard(),))
        self.assertEqual(sieve(base + '"café" { discard; }', _MIME).actions, ())

    def test_content_example(self) -> None:
        """Section 5.2's examples: missiles to "secrets", audio/mp3 parts to "jukebox"."""
        script = (
            'require ["body", "fileinto"];\n'
            'if body :content "text" :contains ["missile", "coordinates"] {\n'
            '    fileinto "secrets";\n}\n'
            'if body :content "audio/mp3" :contains "" {\n'
            '    fileinto "jukebox";\n}'
        )
        self.assertEqual(sieve(script, _MIME).actions, (FileInto("secrets"), FileInto("jukebox")))
        self.assertEqual(sieve(script).actions, ())

    def test_content_is_decoded(self) -> None:
        script = 'require "body"; if body :content "text/plain" :contains "café" { discard; }'
        self.assertEqual(sieve(script, _MIME).actions, (Discard(),))

    def test_content_type_selects(self) -> None:
        script = 'require "body"; if body :content "text/plain" :contains "MONEY" { discard; }'
        self.assertEqual(sieve(script, _MIME).actions, ())

    def test_text(self) -> None:
        """Section 5.3: :text (the default) sees the text parts, HTML without its tags."""
        script = 'require "body"; if body :contains "MAKE MONEY FAST" { discard; }'
        self.assertEqual(sieve(script, _MIME).actions, (Discard(),))
        script = 'require "body"; if body :text :contains "SUQzBAAA" { discard; }'
        self.assertEqual(sieve(script, _MIME).actions, ())

    def test_plain_message(self) -> None:
        script = 'require "body"; if body :contains "birdseed" { discard; }'
        self.assertEqual(sieve(script).actions, (Discard(),))

    def test_transform_conflict(self) -> None:
        self.assertRaises(SieveError, parse, 'require "body"; if body :raw :text "x" { keep; }')


_REL = (
    b"Received: ...\r\n"
    b"Received: ...\r\n"
    b"Subject: example\r\n"
    b"To: foo@example.com, baz@example.com\r\n"
    b"CC: qux@example.com\r\n"
    b"X-Priority: 4\r\n"
    b"From: Mike <mike@example.com>\r\n"
    b"\r\nbody\r\n"
)


class RelationalTests(SynchronousTestCase):
    def check(self, test: str, expected: bool) -> None:
        script = f'require ["relational", "comparator-i;ascii-numeric"];\nif {test} {{ discard; }}'
        self.assertEqual(sieve(script, _REL).actions == (Discard(),), expected, test)

    def test_section_6_examples(self) -> None:
        """RFC 5231 section 6: each example test and its result on the example message."""
        self.check('address :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]', True)
        self.check(
            'anyof ( address :count "ge" :comparator "i;ascii-numeric" ["to"] ["3"],'
            ' address :count "ge" :comparator "i;ascii-numeric" ["cc"] ["3"] )',
            False,
        )
        self.check('header :count "ge" :comparator "i;ascii-numeric" ["received"] ["3"]', False)
        self.check('header :count "ge" :comparator "i;ascii-numeric" ["received", "subject"] ["3"]', True)
        self.check('header :count "ge" :comparator "i;ascii-numeric" ["to", "cc"] ["3"]', False)

    def test_value(self) -> None:
        self.check('header :value "gt" :comparator "i;ascii-numeric" "x-priority" "3"', True)
        self.check('header :value "lt" :comparator "i;ascii-numeric" "x-priority" "10"', True)
        self.check('header :value "lt" "x-priority" "10"', False)  # as text, "4" > "10"
        self.check('address :value "gt" :all :comparator "i;ascii-casemap" "from" "M"', True)
        self.check('address :value "ne" :localpart "from" "mike"', False)

    def test_count_zero(self) -> None:
        self.check('header :count "eq" :comparator "i;ascii-numeric" "x-missing" "0"', True)

    def test_unknown_relation(self) -> None:
        e = self.assertRaises(
            SieveError, parse, 'require "relational"; if header :value "gte" "a" "b" { keep; }'
        )
        self.assertIn("unknown relation 'gte'", e.message)


class SubaddressTests(SynchronousTestCase):
    _SCRIPT = (
        'require ["envelope", "subaddress", "fileinto"];\n'
        'if envelope :user "to" "postmaster" {\n  fileinto "inbox.postmaster";\n  stop;\n}\n'
        'if envelope :detail :is "to" "mta-filters" {\n  fileinto "inbox.ietf-mta-filters";\n  stop;\n}\n'
        'if envelope :detail :is "to" "" {\n  fileinto "inbox.empty-detail";\n}\n'
    )

    def test_rfc_example(self) -> None:
        """RFC 5233 section 4's example."""
        self.assertEqual(
            sieve(self._SCRIPT, rcpt_to="postmaster+x@example.org").actions, (FileInto("inbox.postmaster"),)
        )
        self.assertEqual(
            sieve(self._SCRIPT, rcpt_to="ken+mta-filters@example.org").actions,
            (FileInto("inbox.ietf-mta-filters"),),
        )
        self.assertEqual(
            sieve(self._SCRIPT, rcpt_to="ken+@example.org").actions, (FileInto("inbox.empty-detail"),)
        )

    def test_no_detail_matches_nothing(self) -> None:
        """Section 4: without a separator, :detail matches nothing, not even ""."""
        self.assertEqual(sieve(self._SCRIPT, rcpt_to="ken@example.org").actions, ())

    def test_address_user(self) -> None:
        data = b"To: ken+sieve@example.org\r\n\r\n"
        script = 'require "subaddress"; if address :user "to" "KEN" { discard; }'
        self.assertEqual(sieve(script, data).actions, (Discard(),))

    def test_needs_require(self) -> None:
        self.assertRaises(SieveError, parse, 'if address :user "to" "ken" { keep; }')


class GlobTests(SynchronousTestCase):
    def test_captures(self) -> None:
        self.assertEqual(glob_match("i;octet", "abcde", "a*c?e", 1000)[0], ["abcde", "b", "d"])
        self.assertEqual(glob_match("i;octet", "a.b.c", "*.*", 1000)[0], ["a.b.c", "a", "b.c"])
        self.assertIsNone(glob_match("i;octet", "ABC", "a*", 1000)[0])
        self.assertEqual(glob_match("i;ascii-casemap", "ABC", "a*", 1000)[0], ["ABC", "BC"])

    def test_anchoring(self) -> None:
        self.assertIsNone(glob_match("i;octet", "xabc", "abc*", 1000)[0])
        self.assertIsNone(glob_match("i;octet", "abcx", "*abc", 1000)[0])
        self.assertIsNone(glob_match("i;octet", "ab", "a*b*b", 1000)[0])
        self.assertEqual(glob_match("i;octet", "abb", "a*b*b", 1000)[0], ["abb", "", ""])
        self.assertEqual(glob_match("i;octet", "", "*", 1000)[0], ["", ""])
        self.assertIsNone(glob_match("i;octet", "", "?", 1000)[0])
