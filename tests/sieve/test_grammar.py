"""
The Sieve grammar (RFC 5228 section 8) and the parse-time checks (sections
2 and 3): comments, strings, numbers, tags, lists, blocks, require, and
errors with their line and column.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import FileInto, Keep, Limits, Reject, SieveError, parse

from ._support import sieve


class LexicalTests(SynchronousTestCase):
    def test_comments(self) -> None:
        """Hash comments run to the line end, bracket comments may span lines (section 2.3)."""
        script = parse(
            'require ["fileinto"]; # a comment\r\n'
            "/* a bracketed\r\n comment */ if size :over 100K { # this is a comment\r\n"
            '  fileinto "big"; /* and another */\r\n}\r\n'
        )
        self.assertEqual([n.name for n in script.commands], ["if"])
        self.assertEqual(script.extensions, frozenset({"fileinto"}))

    def test_hash_in_string_is_not_a_comment(self) -> None:
        result = sieve('require "fileinto"; fileinto "a#b /* c */";')
        self.assertEqual(result.actions, (FileInto("a#b /* c */"),))

    def test_unterminated_bracket_comment(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;\n  /* never ends")
        self.assertEqual((e.line, e.column), (2, 3))
        self.assertIn("comment", e.message)

    def test_quoted_string_escapes(self) -> None:
        """Backslash escapes a quote and a backslash; before anything else it is dropped (section 2.4.2)."""
        result = sieve('require "fileinto"; fileinto "a\\"b\\\\c\\d";')
        self.assertEqual(result.actions[0].mailbox, 'a"b\\cd')

    def test_quoted_string_spans_lines(self) -> None:
        result = sieve('require "reject"; reject "two\r\nlines";')
        self.assertEqual(result.actions, (Reject("two\r\nlines"),))

    def test_multiline_string_dot_stuffing(self) -> None:
        """text: ends at a lone dot; a leading '..' loses one dot (section 8.1)."""
        result = sieve('require "reject";\nreject text: # why\n..a line with a dot\nsecond\n.\n;\n')
        self.assertEqual(result.actions, (Reject(".a line with a dot\r\nsecond\r\n"),))

    def test_multiline_string_needs_line_end(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "reject";\nreject text: "x"\n.\n;')
        self.assertEqual(e.line, 2)
        self.assertIn("text:", e.message)

    def test_unterminated_multiline(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "reject";\nreject text:\nno end\n')
        self.assertIn("multi-line", e.message)

    def test_numbers_with_quantifiers(self) -> None:
        """K, M and G are powers of 1024 (section 2.4.1)."""
        for text, value in [("1", 1), ("10K", 10240), ("2M", 2 * 1024**2), ("1G", 1024**3), ("3k", 3072)]:
            script = parse(f"if size :over {text} {{ discard; }}")
            self.assertEqual(script.commands[0].tests[0].args, [value])

    def test_bad_number(self) -> None:
        e = self.assertRaises(SieveError, parse, "if size :over 10X { discard; }")
        self.assertEqual((e.line, e.column), (1, 15))

    def test_identifiers_are_case_insensitive(self) -> None:
        result = sieve('REQUIRE "fileinto"; If HEADER :Contains "subject" "PRESENT" { FileInto "x"; }')
        self.assertEqual(result.actions, (FileInto("x"),))

    def test_unexpected_character(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;\nkeep @;")
        self.assertEqual((e.line, e.column), (2, 6))


class SyntaxTests(SynchronousTestCase):
    def test_missing_semicolon(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep\ndiscard;")
        self.assertEqual((e.line, e.column), (2, 1))
        self.assertIn("missing ';'", e.message)

    def test_missing_closing_brace(self) -> None:
        e = self.assertRaises(SieveError, parse, "if true {\n keep;\n")
        self.assertIn("'}'", e.message)

    def test_stray_closing_brace(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;\n}")
        self.assertEqual((e.line, e.column), (2, 1))

    def test_unterminated_string(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "fileinto";\nfileinto "abc;\n')
        self.assertEqual((e.line, e.column), (2, 10))

    def test_string_list(self) -> None:
        script = parse('if header :is ["From", "To"] ["a", "b", "c"] { keep; }')
        self.assertEqual(script.commands[0].tests[0].args, [["From", "To"], ["a", "b", "c"]])

    def test_bad_string_list(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :is ["From" "To"] "a" { keep; }')
        self.assertEqual((e.line, e.column), (1, 23))
        self.assertIn("','", e.message)

    def test_test_list(self) -> None:
        script = parse('if anyof (true, false, not exists "x") { keep; }')
        self.assertEqual([t.name for t in script.commands[0].tests[0].tests], ["true", "false", "not"])

    def test_elsif_else(self) -> None:
        script = parse("if false { discard; } elsif true { keep; } else { stop; }")
        node = script.commands[0]
        self.assertEqual(len(node.elifs), 1)
        self.assertEqual([n.name for n in node.orelse or []], ["stop"])

    def test_else_without_if(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;\nelse { keep; }")
        self.assertEqual((e.line, e.column), (2, 1))
        self.assertIn("without a preceding if", e.message)

    def test_empty_script_keeps(self) -> None:
        result = sieve("# nothing\n")
        self.assertTrue(result.implicit_keep)
        self.assertEqual(result.actions, ())


class CheckTests(SynchronousTestCase):
    """Errors found before any message arrives (what CHECKSCRIPT answers)."""

    def test_unknown_command(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;\n  frobnicate;")
        self.assertEqual((e.line, e.column, e.message), (2, 3, "unknown command 'frobnicate'"))

    def test_unknown_test(self) -> None:
        e = self.assertRaises(SieveError, parse, "if frob { keep; }")
        self.assertEqual((e.line, e.column), (1, 4))
        self.assertIn("unknown test", e.message)

    def test_extension_needs_require(self) -> None:
        """Section 3.2: an extension used without require is an error."""
        e = self.assertRaises(SieveError, parse, 'fileinto "x";')
        self.assertEqual(e.message, 'the fileinto command needs require "fileinto"')

    def test_tag_needs_require(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :count "ge" "to" "2" { keep; }')
        self.assertIn('require "relational"', e.message)
        self.assertEqual(e.column, 11)

    def test_unknown_extension(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require ["fileinto", "x-unknown"];')
        self.assertIn("unknown extension 'x-unknown'", e.message)

    def test_extension_not_offered(self) -> None:
        """Only the extensions the caller allows may be required."""
        self.assertRaises(SieveError, parse, 'require "vacation";', extensions={"fileinto"})
        parse('require "fileinto";', extensions={"fileinto"})

    def test_require_after_command(self) -> None:
        e = self.assertRaises(SieveError, parse, 'keep;\nrequire "fileinto";')
        self.assertEqual(e.line, 2)
        self.assertIn("before every other command", e.message)

    def test_require_in_block(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if true { require "fileinto"; }')
        self.assertIn("top of the script", e.message)

    def test_wrong_argument_count(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header "subject" { keep; }')
        self.assertIn("takes 2 positional arguments, found 1", e.message)

    def test_list_where_string_expected(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "fileinto"; fileinto ["a", "b"];')
        self.assertIn("single string", e.message)

    def test_conflicting_match_types(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :is :contains "a" "b" { keep; }')
        self.assertEqual(e.message, ":contains conflicts with :is")
        self.assertEqual(e.column, 15)

    def test_repeated_tag(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :is :is "a" "b" { keep; }')
        self.assertEqual(e.message, ":is given twice")

    def test_unknown_tag(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :foo "a" "b" { keep; }')
        self.assertIn("unknown tagged argument :foo", e.message)

    def test_tag_after_positional(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header "a" :is "b" { keep; }')
        self.assertIn("after a positional argument", e.message)

    def test_unknown_comparator(self) -> None:
        e = self.assertRaises(SieveError, parse, 'if header :comparator "i;nope" "a" "b" { keep; }')
        self.assertIn("unknown comparator", e.message)

    def test_numeric_comparator_needs_require(self) -> None:
        self.assertRaises(SieveError, parse, 'if header :comparator "i;ascii-numeric" "a" "1" { keep; }')
        parse(
            'require "comparator-i;ascii-numeric"; if header :comparator "i;ascii-numeric" "a" "1" { keep; }'
        )

    def test_numeric_comparator_cannot_contain(self) -> None:
        e = self.assertRaises(
            SieveError,
            parse,
            'require "comparator-i;ascii-numeric";\nif header :contains :comparator "i;ascii-numeric" "a" "1" {keep;}',
        )
        self.assertIn("cannot do :contains", e.message)

    def test_size_needs_over_or_under(self) -> None:
        e = self.assertRaises(SieveError, parse, "if size 10 { keep; }")
        self.assertIn(":over or :under", e.message)

    def test_redirect_bad_address(self) -> None:
        """Section 4.2: a syntactically invalid address is an error."""
        e = self.assertRaises(SieveError, parse, 'redirect "not an address";')
        self.assertIn("invalid address", e.message)

    def test_if_needs_block(self) -> None:
        self.assertRaises(SieveError, parse, "if true keep;")

    def test_action_used_as_test(self) -> None:
        e = self.assertRaises(SieveError, parse, "if keep { stop; }")
        self.assertIn("not a test", e.message)

    def test_test_used_as_command(self) -> None:
        e = self.assertRaises(SieveError, parse, 'exists "x";')
        self.assertIn("not a command", e.message)

    def test_stop_takes_no_test(self) -> None:
        self.assertRaises(SieveError, parse, "stop true;")


class LimitsAtParseTests(SynchronousTestCase):
    def test_script_size(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;" * 100, limits=Limits(max_script_size=50))
        self.assertIn("larger than 50", e.message)

    def test_string_length(self) -> None:
        e = self.assertRaises(
            SieveError,
            parse,
            'require "reject"; reject "' + "x" * 101 + '";',
            limits=Limits(max_string_length=100),
        )
        self.assertIn("longer than 100", e.message)

    def test_multiline_string_length(self) -> None:
        text = 'require "reject";\nreject text:\n' + ("y" * 40 + "\n") * 5 + ".\n;"
        self.assertRaises(SieveError, parse, text, limits=Limits(max_string_length=100))

    def test_keep_parses_to_keep(self) -> None:
        self.assertEqual(sieve("keep;").actions, (Keep(),))
