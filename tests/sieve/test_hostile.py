"""
Hostile scripts: each is refused at parse time or bounded at run time,
quickly, and nothing escapes :func:`txmail.sieve.run` (the issue's "never
lose mail").
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Discard, Limits, ScriptNotFound, SieveError, parse
from txmail.sieve.matching import glob_match

from ._support import sieve

#: Seconds any one hostile case may take on a slow, shared machine.
_FAST = 5.0


class HostileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.started = time.monotonic()

    def tearDown(self) -> None:
        self.assertLess(time.monotonic() - self.started, _FAST)

    def test_body_in_hostile_charsets(self) -> None:
        """The body test reads text whose charset no codec decodes with replacement (idna), or that gives lone surrogates (utf-7)."""
        script = 'require "body"; if body :content "text" :contains "half" { discard; }'
        for charset, text in ((b"idna", b"xn--\xff- half"), (b"utf-7", b"lone +2AA- half")):
            message = (
                b"From: a@b.example\r\nContent-Type: text/plain; charset="
                + charset
                + b"\r\n\r\n"
                + text
                + b"\r\n"
            )
            self.assertEqual(sieve(script, message).actions, (Discard(),), charset)

    def test_deep_block_nesting(self) -> None:
        script = "if true {" * 10_000 + "}" * 10_000
        e = self.assertRaises(SieveError, parse, script)
        self.assertIn("nesting deeper than 32", e.message)

    def test_deep_test_nesting(self) -> None:
        e = self.assertRaises(SieveError, parse, "if " + "not " * 10_000 + "true { keep; }")
        self.assertIn("nesting deeper", e.message)
        e = self.assertRaises(SieveError, parse, "if " + "anyof(" * 10_000 + "true" + ")" * 10_000 + " {}")
        self.assertIn("nesting deeper", e.message)

    def test_huge_string(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "reject"; reject "' + "x" * 200_000 + '";')
        self.assertIn("string longer than", e.message)

    def test_huge_script(self) -> None:
        e = self.assertRaises(SieveError, parse, "keep;" * 300_000)
        self.assertIn("script larger than", e.message)

    def test_redirect_storm(self) -> None:
        """10,000 redirects: a runtime limit, the message kept."""
        script = "".join(f'redirect "user{i}@example.org";\n' for i in range(10_000))
        result = sieve(script)
        self.assertEqual(result.actions, ())
        self.assertTrue(result.implicit_keep)
        self.assertIn("too many redirects", result.errors[0])

    def test_same_redirect_repeated(self) -> None:
        """Collapsed into one (RFC 5228 section 2.10.3), then the step budget ends a long run."""
        result = sieve('redirect "a@example.org";' * 10_000, limits=Limits(max_steps=5_000))
        self.assertIn("too many steps", result.errors[0])
        self.assertEqual(len(sieve('redirect "a@example.org";' * 1_000).actions), 1)

    def test_step_limit(self) -> None:
        script = 'if header :contains "subject" "x" {}\n' * 5_000
        result = sieve(script, limits=Limits(max_steps=2_000))
        self.assertIn("too many steps", result.errors[0])
        self.assertTrue(result.implicit_keep)

    def test_include_loop(self) -> None:
        def loader(name: str, location: str) -> str:
            return f'require "include"; include "{name}x"; include "{name}";'

        e = self.assertRaises(SieveError, parse, 'require "include"; include "a";', loader=loader)
        self.assertIn("include", e.message)

    def test_include_fan_out(self) -> None:
        """Every script including two new ones: the count and depth limits stop it."""

        def loader(name: str, location: str) -> str:
            if len(name) > 40:
                raise ScriptNotFound(name)
            return f'require "include"; include "{name}a"; include "{name}b";'

        self.assertRaises(SieveError, parse, 'require "include"; include "s";', loader=loader)

    def test_include_diamonds(self) -> None:
        """Scripts each including the next one many times: each is read and explored once."""
        calls: list[str] = []

        def loader(name: str, location: str) -> str:
            calls.append(name)
            level = int(name[1:])
            if level == 9:
                return "keep;"
            return 'require "include";' + f'include "s{level + 1}";' * 200

        script = parse('require "include"; include "s0";', loader=loader)
        self.assertEqual(len(calls), 10)
        self.assertEqual(len(script.includes), 10)

    def test_exponential_matches_pattern(self) -> None:
        """A pattern that makes a backtracking matcher take exponential time is linear here."""
        value = "a" * 30_000
        pattern = "*a" * 40 + "*b"
        script = f'require "fileinto"; if header :matches "x-long" "{pattern}" {{ fileinto "no"; }}'
        result = sieve(script, f"X-Long: {value}\r\n\r\n".encode())
        self.assertEqual(result.errors, ())
        self.assertEqual(result.actions, ())
        self.assertIsNone(glob_match("i;octet", value, pattern, 10**9)[0])

    def test_question_mark_pattern_is_bounded(self) -> None:
        """A '?' segment searched across a long value costs steps: the budget stops it."""
        value = "a" * 60_000
        pattern = ("*" + "?" * 200 + "b") * 3 + "*"
        script = f'if header :matches "x-long" "{pattern}" {{ discard; }}'
        result = sieve(script, f"X-Long: {value}\r\n\r\n".encode(), limits=Limits(max_steps=20_000))
        self.assertTrue(result.implicit_keep)
        self.assertIn("too many steps", result.errors[0])

    def test_question_mark_pattern_default_limits(self) -> None:
        """The same kind of pattern with the default limits: answered (no match) within the time."""
        value = "a" * 60_000
        pattern = ("*" + "?" * 200 + "b") * 3 + "*"
        script = f'if header :matches ["x-long", "x-long", "x-long"] "{pattern}" {{ discard; }}'
        result = sieve(script, f"X-Long: {value}\r\n\r\n".encode())
        self.assertEqual(result.actions, ())
        self.assertTrue(result.implicit_keep)

    def test_variable_growth(self) -> None:
        """Doubling a variable is capped by the variable size limit."""
        script = 'require ["variables"]; set "a" "xxxxxxxxxxxxxxxx";\n' + 'set "a" "${a}${a}";\n' * 200
        result = sieve(script)
        self.assertEqual(result.errors, ())

    def test_string_growth(self) -> None:
        """A string of many references to a big variable is refused when it grows too long."""
        refs = "${a}" * 10_000
        script = (
            'require ["variables", "fileinto"]; set "a" "' + "x" * 4000 + '";\n'
            f'if header :contains "subject" "{refs}" {{ discard; }}'
        )
        result = sieve(script)
        self.assertIn("grew longer", result.errors[0])

    def test_many_tests_in_a_list(self) -> None:
        script = "if anyof(" + ", ".join(["false"] * 10_000) + ") { discard; }"
        result = sieve(script, limits=Limits(max_steps=1_000))
        self.assertIn("too many steps", result.errors[0])

    def test_nothing_escapes_run(self) -> None:
        """Even a bug in a tracker (an exception from outside) becomes an error and the implicit keep."""
        from txmail.sieve import Context

        class Broken:
            def seen(self, *args: object) -> bool:
                raise RuntimeError("database down")

        result = sieve('require "duplicate"; discard; if duplicate {}', context=Context(duplicates=Broken()))  # type: ignore[arg-type]
        self.assertEqual(result.actions, ())
        self.assertTrue(result.implicit_keep)
        self.assertIn("database down", result.errors[0])
