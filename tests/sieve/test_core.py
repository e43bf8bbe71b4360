"""
The core language (RFC 5228): tests, match types, comparators, actions, the
implicit keep and runtime errors.  The examples are those of the RFC where
it has them (sections 2.7, 4, 5 and 9).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import (
    Context,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    SieveError,
    SieveMessage,
    parse,
    run,
)

from ._support import sieve

_SPAM = (
    b"From: Sales <sales@example.com>\r\n"
    b"To: Ken <ken@example.org>, undisclosed-recipients:;\r\n"
    b'Cc: "Friend" <FRIEND@Example.NET>\r\n'
    b"Subject: =?utf-8?q?Caf=C3=A9_offer?= MAKE MONEY FAST\r\n"
    b"X-Spam-Score: 17\r\n"
    b"Received: from a\r\n"
    b"Received: from b\r\n"
    b"\r\nbody\r\n"
)


class TestCommandsTests(SynchronousTestCase):
    def test_header_is_case_insensitive_by_default(self) -> None:
        """Section 2.7.3: i;ascii-casemap is the default comparator."""
        self.assertFalse(
            sieve('if header :is "Subject" "i HAVE a present for you" { discard; }').implicit_keep
        )
        self.assertTrue(
            sieve(
                'if header :comparator "i;octet" :is "Subject" "i HAVE a present for you" { discard; }'
            ).implicit_keep
        )

    def test_header_contains(self) -> None:
        self.assertEqual(sieve('if header :contains "x-caffeine" "" { discard; }').actions, (Discard(),))
        self.assertEqual(sieve('if header :contains "x-caffeine" "C8H10" { discard; }').actions, (Discard(),))
        self.assertEqual(sieve('if header :contains "x-caffeine" "c9" { discard; }').actions, ())

    def test_header_absent_never_matches(self) -> None:
        """Section 5.7: a missing header matches nothing, not even the empty string."""
        self.assertTrue(sieve('if header :contains "x-missing" "" { discard; }').implicit_keep)

    def test_header_decodes_rfc2047(self) -> None:
        """Section 2.7.2: encoded-words are decoded before comparison."""
        result = sieve('if header :contains "subject" "Café offer" { discard; }', _SPAM)
        self.assertEqual(result.actions, (Discard(),))

    def test_header_list_of_names_and_keys(self) -> None:
        result = sieve('if header :contains ["x-spam", "subject"] ["nope", "MONEY"] { discard; }', _SPAM)
        self.assertEqual(result.actions, (Discard(),))

    def test_matches_wildcards(self) -> None:
        """Section 2.7.1: * any sequence, ? one character, backslash escapes."""
        cases = [
            ('"*present*"', True),
            ('"I have a ??????? for you"', True),
            ('"I have a ?????? for you"', False),
            ('"i*"', True),
            ('"*you"', True),
            ('"*me"', False),
            ('"I have \\\\*"', False),  # a literal star
        ]
        for pattern, expected in cases:
            result = sieve(f'if header :matches "subject" {pattern} {{ discard; }}')
            self.assertEqual(result.actions == (Discard(),), expected, pattern)

    def test_matches_escaped_star(self) -> None:
        data = b"Subject: 5*3 stars\r\n\r\n"
        self.assertEqual(
            sieve('if header :matches "subject" "5\\\\*3*" { discard; }', data).actions, (Discard(),)
        )
        self.assertEqual(sieve('if header :matches "subject" "5\\\\*4*" { discard; }', data).actions, ())

    def test_address_parts(self) -> None:
        """Section 2.7.4: :all, :localpart and :domain."""
        self.assertFalse(
            sieve('if address :is :all "from" "coyote@desert.example.org" { discard; }').implicit_keep
        )
        self.assertFalse(sieve('if address :localpart "from" "COYOTE" { discard; }').implicit_keep)
        self.assertFalse(sieve('if address :domain "from" "desert.example.org" { discard; }').implicit_keep)
        self.assertTrue(sieve('if address :domain "from" "example.org" { discard; }').implicit_keep)

    def test_address_skips_display_names_and_groups(self) -> None:
        result = sieve('if address :is "to" "ken@example.org" { discard; }', _SPAM)
        self.assertEqual(result.actions, (Discard(),))
        result = sieve('if address :contains "to" "undisclosed" { discard; }', _SPAM)
        self.assertEqual(result.actions, ())
        result = sieve('if address :domain :is "cc" "example.net" { discard; }', _SPAM)
        self.assertEqual(result.actions, (Discard(),))

    def test_address_with_encoded_comma_in_name(self) -> None:
        """Addresses are read from the raw field: a decoded display name's comma splits nothing."""
        data = b"From: =?utf-8?q?Doe=2C_John?= <john@example.org>\r\n\r\n"
        result = sieve('if address :all :is "from" "Doe" { discard; }', data)
        self.assertEqual(result.actions, ())
        result = sieve('if address :all :is "from" "john@example.org" { discard; }', data)
        self.assertEqual(result.actions, (Discard(),))

    def test_exists(self) -> None:
        """Section 5.5: every named header must exist."""
        self.assertFalse(sieve('if exists ["From", "Date"] { discard; }').implicit_keep)
        self.assertTrue(sieve('if exists ["From", "X-Nope"] { discard; }').implicit_keep)

    def test_size(self) -> None:
        size = SieveMessage.from_bytes(_SPAM).size
        self.assertFalse(sieve(f"if size :over {size - 1} {{ discard; }}", _SPAM).implicit_keep)
        self.assertTrue(sieve(f"if size :over {size} {{ discard; }}", _SPAM).implicit_keep)
        self.assertFalse(sieve(f"if size :under {size + 1} {{ discard; }}", _SPAM).implicit_keep)
        self.assertTrue(sieve(f"if size :under {size} {{ discard; }}", _SPAM).implicit_keep)

    def test_not_anyof_allof(self) -> None:
        self.assertFalse(sieve("if not false { discard; }").implicit_keep)
        self.assertFalse(sieve("if anyof (false, true) { discard; }").implicit_keep)
        self.assertTrue(sieve("if anyof (false, false) { discard; }").implicit_keep)
        self.assertTrue(sieve("if allof (true, false) { discard; }").implicit_keep)
        self.assertFalse(sieve("if allof (true, not false) { discard; }").implicit_keep)

    def test_elsif_chain(self) -> None:
        script = (
            'require "fileinto";\n'
            'if header :is "x-caffeine" "tea" { fileinto "tea"; }\n'
            'elsif header :is "x-caffeine" "c8h10n4o2" { fileinto "coffee"; }\n'
            'else { fileinto "other"; }'
        )
        self.assertEqual(sieve(script).actions, (FileInto("coffee"),))

    def test_envelope(self) -> None:
        """Section 5.4, with the null sender."""
        script = 'require "envelope"; if envelope :all :is "from" "tim@example.com" { discard; }'
        self.assertEqual(sieve(script, mail_from="tim@example.com").actions, (Discard(),))
        self.assertEqual(sieve(script, mail_from="tom@example.com").actions, ())
        null = 'require "envelope"; if envelope :is "from" "" { discard; }'
        self.assertEqual(sieve(null, mail_from="").actions, (Discard(),))
        to = 'require "envelope"; if envelope :domain :is "to" "ACME.example.com" { discard; }'
        self.assertEqual(sieve(to).actions, (Discard(),))

    def test_envelope_needs_require(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if envelope "from" "x" { keep; }')
        self.assertIn('require "envelope"', e.message)


class ComparatorTests(SynchronousTestCase):
    def test_ascii_numeric(self) -> None:
        """RFC 4790 section 9.1: leading digits compared as numbers."""
        script = (
            'require "comparator-i;ascii-numeric";\n'
            'if header :is :comparator "i;ascii-numeric" "x-spam-score" "0017abc" { discard; }'
        )
        self.assertEqual(sieve(script, _SPAM).actions, (Discard(),))

    def test_ascii_numeric_non_digits_are_equal_to_each_other(self) -> None:
        script = (
            'require "comparator-i;ascii-numeric";\n'
            'if header :is :comparator "i;ascii-numeric" "subject" "abc" { discard; }'
        )
        self.assertEqual(sieve(script, _SPAM).actions, (Discard(),))


class ActionTests(SynchronousTestCase):
    def test_implicit_keep(self) -> None:
        """Section 2.10.2: no action taken, the message is kept."""
        result = sieve("if false { discard; }")
        self.assertTrue(result.implicit_keep)
        self.assertEqual(result.deliveries, (Keep(),))

    def test_discard_cancels_implicit_keep(self) -> None:
        result = sieve("discard;")
        self.assertFalse(result.implicit_keep)
        self.assertEqual(result.deliveries, (Discard(),))

    def test_keep_after_discard(self) -> None:
        """Section 4.4: discard then keep keeps."""
        result = sieve("discard; keep;")
        self.assertEqual(result.actions, (Discard(), Keep()))

    def test_redirect_cancels_implicit_keep(self) -> None:
        result = sieve('redirect "bart@example.com";')
        self.assertEqual(result.actions, (Redirect("bart@example.com"),))
        self.assertFalse(result.implicit_keep)

    def test_redirect_and_keep(self) -> None:
        """Section 4.2's example: keep a copy and redirect."""
        result = sieve('redirect "bart@example.com"; keep;')
        self.assertEqual(result.deliveries, (Redirect("bart@example.com"), Keep()))

    def test_duplicate_actions_collapse(self) -> None:
        """Section 2.10.3: the same action twice is done once."""
        script = 'require "fileinto"; keep; keep; fileinto "a"; fileinto "a"; fileinto "INBOX"; redirect "x@y.org"; redirect "X@Y.org";'
        result = sieve(script)
        self.assertEqual(result.actions, (Keep(), FileInto("a"), Redirect("x@y.org")))

    def test_stop(self) -> None:
        """Section 3.3: stop ends the script; the implicit keep still applies."""
        result = sieve('require "fileinto"; if true { stop; } fileinto "never";')
        self.assertEqual(result.actions, ())
        self.assertTrue(result.implicit_keep)

    def test_stop_after_action(self) -> None:
        result = sieve("discard; stop; keep;")
        self.assertEqual(result.deliveries, (Discard(),))

    def test_rfc5228_section_9_example(self) -> None:
        """Section 9's complete example, on a message from coyote."""
        script = """
require ["fileinto"];
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
            fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
            keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
            fileinto "spam";   # move to "spam" mailbox
        }
else
        {
            # Move all other (non-company) mail to "personal"
            # mailbox.
            fileinto "personal";
        }
"""
        self.assertEqual(sieve(script).actions, (FileInto("spam"),))
        mine = b"From: boss@example.com\r\nTo: me@example.com\r\n\r\n"
        self.assertEqual(sieve(script, mine).actions, (Keep(),))
        other = (
            b"From: friend@example.net\r\nTo: club@example.net\r\nCc: me@example.com\r\nSubject: hi\r\n\r\n"
        )
        self.assertEqual(sieve(script, other).actions, (FileInto("personal"),))
        listed = b"Sender: owner-ietf-mta-filters@imc.org\r\n\r\n"
        self.assertEqual(sieve(script, listed).actions, (FileInto("filter"),))


class RunTests(SynchronousTestCase):
    def test_script_runs_many_times(self) -> None:
        """A parsed script is reusable: nothing of one run leaks into the next."""
        script = parse(
            'require "variables"; if header :matches "subject" "*" { set "s" "${1}"; } '
            'if string :is "${s}" "" { discard; }'
        )
        env = Envelope("a@b.org", "c@d.org")
        first = run(script, SieveMessage.from_bytes(b"Subject: x\r\n\r\n"), env, context=Context())
        second = run(script, SieveMessage.from_bytes(b"To: y@z.org\r\n\r\n"), env, context=Context())
        self.assertEqual((first.actions, second.actions), ((), (Discard(),)))

    def test_runtime_error_keeps(self) -> None:
        """Section 2.10.6: a runtime error drops the actions and keeps the message."""
        script = 'require "variables"; discard; set "a" "not an address"; redirect "${a}";'
        result = sieve(script)
        self.assertEqual(result.actions, ())
        self.assertTrue(result.implicit_keep)
        self.assertEqual(len(result.errors), 1)
        self.assertIn("invalid address", result.errors[0])
        self.assertIn("line 1", result.errors[0])

    def test_broken_message(self) -> None:
        """Any octets make a message the tests can look at."""
        data = b"\xff\xfe garbage\r\nSubject\r\n: \r\n\xc3\r\n"
        result = sieve('require "body"; if anyof (exists "subject", body :contains "x") { discard; }', data)
        self.assertEqual(result.errors, ())
        self.assertTrue(result.implicit_keep)
