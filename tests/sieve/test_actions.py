"""
The action extensions: fileinto, reject and ereject (RFC 5429), copy (RFC
3894), mailbox (RFC 5490), imap4flags (RFC 5232) and redirect, with their
conflicts.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Context, Discard, FileInto, Keep, Limits, Redirect, Reject, SieveError, parse

from ._support import sieve


class FileIntoTests(SynchronousTestCase):
    def test_fileinto(self) -> None:
        """RFC 5228 section 4.1's example."""
        script = (
            'require "fileinto";\nif header :contains ["from"] "coyote" {\n  fileinto "INBOX.harassment";\n}'
        )
        result = sieve(script)
        self.assertEqual(result.actions, (FileInto("INBOX.harassment"),))
        self.assertFalse(result.implicit_keep)

    def test_fileinto_inbox_is_keep(self) -> None:
        self.assertEqual(sieve('require "fileinto"; fileinto "inbox"; keep;').actions, (Keep(),))

    def test_empty_mailbox_is_runtime_error(self) -> None:
        result = sieve('require ["fileinto", "variables"]; fileinto "${nothing}";')
        self.assertIn("invalid mailbox name", result.errors[0])
        self.assertTrue(result.implicit_keep)


class RejectTests(SynchronousTestCase):
    def test_reject(self) -> None:
        """RFC 5429 section 2.1's example."""
        script = (
            'require ["reject"];\n'
            'if header :contains "from" "coyote@desert.example.org" {\n'
            "   reject text:\nI am not taking mail from you, and I don't\n"
            "want your birdseed, either.\n.\n;\n}"
        )
        result = sieve(script)
        self.assertEqual(
            result.actions,
            (Reject("I am not taking mail from you, and I don't\r\nwant your birdseed, either.\r\n"),),
        )
        self.assertFalse(result.implicit_keep)

    def test_ereject(self) -> None:
        result = sieve('require "ereject"; ereject "no thanks";')
        self.assertEqual(result.actions, (Reject("no thanks", ereject=True),))

    def test_ereject_needs_its_own_require(self) -> None:
        self.assertRaises(SieveError, parse, 'require "reject"; ereject "x";')

    def test_reject_conflicts(self) -> None:
        """RFC 5429: reject cannot go with keep, fileinto, redirect or another reject."""
        for other in ("keep;", 'fileinto "x";', 'redirect "a@b.org";', 'reject "again";'):
            for script in (f'reject "no"; {other}', f'{other} reject "no";'):
                result = sieve('require ["reject", "fileinto"]; ' + script)
                self.assertEqual(result.actions, (), script)
                self.assertTrue(result.implicit_keep)
                self.assertIn("reject cannot be combined", result.errors[0])

    def test_reject_with_discard(self) -> None:
        result = sieve('require "reject"; discard; reject "no";')
        self.assertEqual(result.actions, (Discard(), Reject("no")))


class CopyTests(SynchronousTestCase):
    def test_redirect_copy_keeps(self) -> None:
        """RFC 3894 section 3: with :copy the implicit keep is not cancelled."""
        result = sieve('require "copy"; redirect :copy "sent@example.com";')
        self.assertEqual(result.actions, (Redirect("sent@example.com", copy=True),))
        self.assertTrue(result.implicit_keep)

    def test_fileinto_copy(self) -> None:
        result = sieve('require ["copy", "fileinto"]; fileinto :copy "archive";')
        self.assertEqual(result.deliveries, (FileInto("archive", copy=True), Keep()))

    def test_copy_needs_require(self) -> None:
        e = self.assertRaises(SieveError, parse, 'redirect :copy "a@b.org";')
        self.assertIn('require "copy"', e.message)


class RedirectTests(SynchronousTestCase):
    def test_redirect_limit(self) -> None:
        """More redirects than allowed (Pigeonhole's sieve_max_redirects) is a runtime error."""
        script = "".join(f'redirect "u{i}@example.org";' for i in range(5))
        result = sieve(script, limits=Limits(max_redirects=4))
        self.assertEqual(result.actions, ())
        self.assertIn("too many redirects", result.errors[0])
        self.assertEqual(len(sieve(script, limits=Limits(max_redirects=5)).actions), 5)

    def test_action_limit(self) -> None:
        script = 'require "fileinto";' + "".join(f'fileinto "f{i}";' for i in range(4))
        result = sieve(script, limits=Limits(max_actions=3))
        self.assertIn("total number of actions exceeds policy limit", result.errors[0])


class MailboxTests(SynchronousTestCase):
    def test_mailboxexists(self) -> None:
        """RFC 5490 section 3.1's example."""
        script = (
            'require ["fileinto", "reject", "mailbox"];\n'
            'if mailboxexists "Partners" {\n   fileinto "Partners";\n} else {\n   reject "no";\n}'
        )
        partners = Context(mailbox_exists=lambda name: name == "Partners")
        self.assertEqual(sieve(script, context=partners).actions, (FileInto("Partners"),))
        nothing = Context(mailbox_exists=lambda name: False)
        self.assertEqual(sieve(script, context=nothing).actions, (Reject("no"),))

    def test_all_must_exist(self) -> None:
        script = 'require "mailbox"; if mailboxexists ["a", "b"] { discard; }'
        self.assertEqual(sieve(script, context=Context(mailbox_exists=lambda n: n == "a")).actions, ())
        self.assertEqual(sieve(script, context=Context(mailbox_exists=lambda n: True)).actions, (Discard(),))

    def test_no_checker_means_absent(self) -> None:
        self.assertEqual(sieve('require "mailbox"; if mailboxexists "a" { discard; }').actions, ())

    def test_fileinto_create(self) -> None:
        result = sieve('require ["fileinto", "mailbox"]; fileinto :create "New";')
        self.assertEqual(result.actions, (FileInto("New", create=True),))

    def test_create_needs_mailbox(self) -> None:
        self.assertRaises(SieveError, parse, 'require "fileinto"; fileinto :create "New";')


class FlagTests(SynchronousTestCase):
    def test_internal_variable(self) -> None:
        """RFC 5232 section 3: setflag, addflag and removeflag on the internal variable."""
        script = (
            'require ["imap4flags", "fileinto"];\n'
            'setflag "\\\\Seen";\naddflag ["\\\\Answered", "$Label1 \\\\seen"];\n'
            'removeflag "\\\\answered";\nfileinto "f";'
        )
        self.assertEqual(sieve(script).actions, (FileInto("f", ("\\Seen", "$Label1")),))

    def test_implicit_keep_takes_flags(self) -> None:
        """Section 5: the implicit keep uses the internal variable's value at the end."""
        result = sieve('require "imap4flags"; addflag "\\\\Flagged"; addflag "Junk";')
        self.assertTrue(result.implicit_keep)
        self.assertEqual(result.deliveries, (Keep(("\\Flagged", "Junk")),))

    def test_flags_tag(self) -> None:
        """Section 5's example: :flags replaces the internal variable for that action only."""
        script = (
            'require ["imap4flags", "fileinto"];\n'
            'addflag "\\\\Seen";\n'
            'if header :contains "from" "coyote" { fileinto :flags "\\\\Deleted" "trash"; }\n'
            "keep;"
        )
        self.assertEqual(sieve(script).actions, (FileInto("trash", ("\\Deleted",)), Keep(("\\Seen",))))

    def test_flag_variable(self) -> None:
        """Section 3's example with a variable."""
        script = (
            'require ["imap4flags", "fileinto", "variables"];\n'
            'if header :contains "from" "coyote@desert.example.org" {\n'
            '  setflag "flagvar" "\\\\Flagged";\n'
            '  fileinto :flags "${flagvar}" "INBOX.From Boss";\n}'
        )
        self.assertEqual(sieve(script).actions, (FileInto("INBOX.From Boss", ("\\Flagged",)),))

    def test_hasflag(self) -> None:
        """Section 4: hasflag compares each flag."""
        base = 'require ["imap4flags", "relational", "variables"]; addflag ["\\\\Seen", "Work"];'
        self.assertEqual(sieve(base + 'if hasflag "work" { discard; }').actions, (Discard(),))
        self.assertEqual(sieve(base + 'if hasflag :contains "ee" { discard; }').actions, (Discard(),))
        self.assertEqual(sieve(base + 'if hasflag "Seen" { discard; }').actions, ())
        self.assertEqual(sieve(base + 'if hasflag :count "eq" "2" { discard; }').actions, (Discard(),))
        var = base + 'addflag "mine" "a b"; if hasflag "mine" "b" { discard; }'
        self.assertEqual(sieve(var).actions, (Discard(),))
