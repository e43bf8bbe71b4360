"""Tests for txmail.smtp.grammar: known-answer tables for each ABNF rule."""

from __future__ import annotations

import contextlib
import random

from twisted.trial.unittest import SynchronousTestCase

from txmail.smtp import grammar
from txmail.smtp.grammar import GrammarError, Mailbox, ParamSyntaxError, PathSyntaxError


class DomainTests(SynchronousTestCase):
    def test_valid_domains(self) -> None:
        """Domains of letters, digits and inner hyphens parse to themselves."""
        for text in ["example.test", "a", "x-1.example", "123.example", "münchen.example", "EXAMPLE.Test"]:
            self.assertEqual(grammar.domain(text), text)

    def test_invalid_domains(self) -> None:
        """Empty labels, edge hyphens, trailing dots and odd characters are refused."""
        for text in ["", ".", "a..b", "-a.b", "a-.b", "a.b.", "a_b.c", "a b", "[1.2.3.4]", "a" * 64 + ".b"]:
            with self.assertRaises(GrammarError, msg=text):
                grammar.domain(text)


class AddressLiteralTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        """IPv4 and IPv6 literals parse; the IPv6 tag is spelled canonically."""
        table = [
            ("[192.0.2.1]", "[192.0.2.1]"),
            ("[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]"),
            ("[ipv6:::1]", "[IPv6:::1]"),
        ]
        for text, expected in table:
            self.assertEqual(grammar.address_literal(text), expected)

    def test_invalid(self) -> None:
        """Bad octets, missing brackets, scope ids and general literals are refused."""
        for text in [
            "[256.1.1.1]",
            "[1.2.3]",
            "1.2.3.4",
            "[1.2.3.4",
            "[IPv6:zz::1]",
            "[IPv6:fe80::1%eth0]",
            "[x400:foo]",
        ]:
            with self.assertRaises(GrammarError, msg=text):
                grammar.address_literal(text)


class LocalPartTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        """Dot-strings parse as given; quoted strings lose quotes and escapes (RFC 6531 UTF-8 allowed)."""
        table = [
            ("alice", "alice"),
            ("a.b+tag", "a.b+tag"),
            ('"a b"', "a b"),
            ('"a\\"b"', 'a"b'),
            ('"a\\\\b"', "a\\b"),
            ("jöran", "jöran"),
            ('"u@remote"', "u@remote"),
        ]
        for text, expected in table:
            self.assertEqual(grammar.local_part(text), expected)

    def test_invalid(self) -> None:
        """Empty atoms, unquoted specials and broken quoting are refused."""
        for text in ["", ".a", "a.", "a..b", "a b", "a@b", '"open', '"\\\x01"', '"a"b']:
            with self.assertRaises(GrammarError, msg=text):
                grammar.local_part(text)


class MailboxTests(SynchronousTestCase):
    def test_known_answers_round_trip(self) -> None:
        """Each mailbox parses to the expected value and prints back in canonical form."""
        table = [
            ("alice@example.test", Mailbox("alice", "example.test"), "alice@example.test"),
            ('"alice"@example.test', Mailbox("alice", "example.test"), "alice@example.test"),
            ('"a b"@example.test', Mailbox("a b", "example.test"), '"a b"@example.test'),
            ('"u@remote"@local.test', Mailbox("u@remote", "local.test"), '"u@remote"@local.test'),
            ("u@[192.0.2.1]", Mailbox("u", "[192.0.2.1]"), "u@[192.0.2.1]"),
            ("ü@ü.example", Mailbox("ü", "ü.example"), "ü@ü.example"),
        ]
        for text, expected, printed in table:
            box = grammar.mailbox(text)
            self.assertEqual(box, expected)
            self.assertEqual(str(box), printed)
            self.assertEqual(grammar.mailbox(printed), box)

    def test_is_sendable_mailbox(self) -> None:
        """A Mailbox within RFC 5321 section 4.5.3.1's lengths; nothing else, and never an error."""
        for text in (
            "a@example.test",
            '"a b"@example.test',
            "ü@ü.example",
            "u@[192.0.2.1]",
            "a" * 64 + "@x.test",
        ):
            self.assertTrue(grammar.is_sendable_mailbox(text), text)
        for text in (
            "a" * 65 + "@x.test",
            "a@" + "x." * 127 + "test",
            "a@x.test\r\nBcc: b@y.test",
            "<a@x.test>",
            "a@x.test SIZE=1",
            "Postmaster",
            "a\ud800@x.test",
            "",
        ):
            self.assertFalse(grammar.is_sendable_mailbox(text), text)

    def test_properties(self) -> None:
        """Routing characters, literals and non-ASCII are reported."""
        self.assertTrue(grammar.mailbox("u%remote@local.test").has_routing_characters())
        self.assertTrue(grammar.mailbox("remote!u@local.test").has_routing_characters())
        self.assertTrue(grammar.mailbox('"u@remote"@local.test').has_routing_characters())
        self.assertFalse(grammar.mailbox("u.v+w@local.test").has_routing_characters())
        self.assertTrue(grammar.mailbox("u@[192.0.2.1]").is_address_literal)
        self.assertFalse(grammar.mailbox("ü@x.test").is_ascii)
        self.assertTrue(grammar.mailbox("u@x.test").is_ascii)

    def test_invalid(self) -> None:
        """A mailbox needs a local part, an @ and a domain or literal."""
        for text in ["alice", "@example.test", "alice@", "a@b@c.test", "alice@example.test."]:
            with self.assertRaises(GrammarError, msg=text):
                grammar.mailbox(text)


class PathTests(SynchronousTestCase):
    def test_reverse_path(self) -> None:
        """The null path is None; source routes are dropped (RFC 5321 section 4.1.1.3)."""
        self.assertIsNone(grammar.reverse_path("<>"))
        self.assertEqual(grammar.reverse_path("<a@b.test>"), Mailbox("a", "b.test"))
        self.assertEqual(grammar.reverse_path("<@x.test,@y.test:a@b.test>"), Mailbox("a", "b.test"))

    def test_forward_path(self) -> None:
        """Forward paths parse; <Postmaster> is allowed without a domain."""
        self.assertEqual(grammar.forward_path("<u@d.test>"), Mailbox("u", "d.test"))
        self.assertEqual(grammar.forward_path("<@a.test,@b.test:u@d.test>"), Mailbox("u", "d.test"))
        self.assertEqual(grammar.forward_path("<postmaster>"), Mailbox("Postmaster", ""))
        self.assertEqual(str(grammar.forward_path("<Postmaster>")), "Postmaster")
        self.assertEqual(grammar.forward_path('<"a>b"@d.test>'), Mailbox("a>b", "d.test"))

    def test_invalid_paths(self) -> None:
        """Missing brackets, the null forward-path and malformed routes are refused."""
        for text in ["u@d.test", "<u@d.test", "<>", "<@a.test u@d.test>", "<@:u@d.test>", "<u@d.test>x"]:
            with self.assertRaises(PathSyntaxError, msg=text):
                grammar.forward_path(text)

    def test_path_length_limit(self) -> None:
        """A path over 256 octets is refused (RFC 5321 section 4.5.3.1.3)."""
        long_local = "a" * 250
        with self.assertRaises(PathSyntaxError):
            grammar.forward_path(f"<{long_local}@d.test>")
        grammar.forward_path(f"<{'a' * 200}@d.test>")


class ParamTests(SynchronousTestCase):
    def test_known_answers(self) -> None:
        """Keywords are upper-cased; a keyword without a value maps to None."""
        self.assertEqual(grammar.esmtp_params(""), {})
        self.assertEqual(
            grammar.esmtp_params("size=100 BODY=8BITMIME smtputf8"),
            {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None},
        )
        self.assertEqual(grammar.esmtp_params("ORCPT=rfc822;a+2Bb@x.test"), {"ORCPT": "rfc822;a+2Bb@x.test"})

    def test_invalid(self) -> None:
        """Bad keywords, empty or '='-holding values and repeats are refused."""
        for text in ["-X=1", "X_Y=1", "SIZE=", "A=b=c", "SIZE=1 size=2", "A=\x01"]:
            with self.assertRaises(ParamSyntaxError, msg=text):
                grammar.esmtp_params(text)


class CommandArgumentTests(SynchronousTestCase):
    def test_mail_from(self) -> None:
        """MAIL arguments give the reverse-path and parameters; a space after the colon is tolerated."""
        self.assertEqual(grammar.mail_from_argument("FROM:<a@b.test>"), (Mailbox("a", "b.test"), {}))
        self.assertEqual(grammar.mail_from_argument("from: <>  SIZE=10"), (None, {"SIZE": "10"}))

    def test_mail_from_errors(self) -> None:
        """Path errors and parameter errors are told apart."""
        with self.assertRaises(PathSyntaxError):
            grammar.mail_from_argument("FROM:a@b.test")
        with self.assertRaises(PathSyntaxError):
            grammar.mail_from_argument("TO:<a@b.test>")
        with self.assertRaises(ParamSyntaxError):
            grammar.mail_from_argument("FROM:<a@b.test> =x")

    def test_rcpt_to(self) -> None:
        """RCPT arguments give the forward-path and parameters."""
        self.assertEqual(
            grammar.rcpt_to_argument("TO:<u@d.test> NOTIFY=NEVER"),
            (Mailbox("u", "d.test"), {"NOTIFY": "NEVER"}),
        )

    def test_helo_name(self) -> None:
        """Any one word of visible ASCII is a HELO name; spaces and controls are not."""
        self.assertEqual(grammar.helo_name("my_pc"), "my_pc")
        self.assertEqual(grammar.helo_name("[192.0.2.1]"), "[192.0.2.1]")
        for text in ["", "a b", "a\tb", "ü"]:
            with self.assertRaises(GrammarError, msg=text):
                grammar.helo_name(text)

    def test_bdat_argument(self) -> None:
        """BDAT takes a size and an optional LAST (RFC 3030 section 2)."""
        self.assertEqual(grammar.bdat_argument("100"), (100, False))
        self.assertEqual(grammar.bdat_argument("0 last"), (0, True))
        for text in ["", "x", "-1", "1 FIRST", "1 LAST x", " 1"]:
            with self.assertRaises(GrammarError, msg=text):
                grammar.bdat_argument(text)


class FuzzTests(SynchronousTestCase):
    def test_random_text_parses_or_raises_grammar_error(self) -> None:
        """Random argument text either parses or raises GrammarError, never anything else."""
        rng = random.Random(5321)
        alphabet = '<>@:,."\\[]%! =abcdefIPv6:0123456789-\x00\x7fü'
        parsers = [
            grammar.mail_from_argument,
            grammar.rcpt_to_argument,
            grammar.mailbox,
            grammar.domain,
            grammar.esmtp_params,
            grammar.bdat_argument,
            grammar.helo_name,
        ]
        for _ in range(3000):
            body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
            text = rng.choice(["", "FROM:", "TO:", "FROM:<", "TO:<"]) + body
            for parse in parsers:
                with contextlib.suppress(GrammarError):
                    parse(text)


class XtextTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        """RFC 3461 section 4: "+", "=", controls, space and non-ASCII are +XX; decoding reverses it."""
        from txmail.smtp.grammar import xtext_decode, xtext_encode

        encoded = xtext_encode("a+b=c d\x01é")
        self.assertEqual(encoded, "a+2Bb+3Dc+20d+01+C3+A9")
        self.assertEqual(xtext_decode(encoded), "a+b=c d\x01é")
        self.assertEqual(xtext_decode("plain"), "plain")
        self.assertEqual(xtext_decode(""), "")

    def test_not_xtext(self) -> None:
        """Lower-case hex, a lone "+", "=", space and non-ASCII are not xtext."""
        from txmail.smtp.grammar import xtext_decode

        for bad in ("a+2b", "a+", "a+2", "a=b", "a b", "é"):
            self.assertIsNone(xtext_decode(bad), bad)
