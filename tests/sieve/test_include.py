"""include, return and global (RFC 6609): resolution at parse time, loops and limits."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Discard, FileInto, Keep, Limits, ScriptNotFound, SieveError, parse

from ._support import sieve


def _loader(scripts: dict[tuple[str, str], str], calls: list[tuple[str, str]] | None = None):  # type: ignore[no-untyped-def]
    def load(name: str, location: str) -> str:
        if calls is not None:
            calls.append((name, location))
        try:
            return scripts[(location, name)]
        except KeyError:
            raise ScriptNotFound(name) from None

    return load


class IncludeTests(SynchronousTestCase):
    def test_rfc_example(self) -> None:
        """Section 3.2's example: personal and global scripts, each included once at parse time."""
        scripts = {
            ("personal", "always_allow"): 'if address :is "from" "boss@example.com" { keep; }',
            (
                "global",
                "spam_tests",
            ): 'require "fileinto"; if header :contains "subject" "$$$" { fileinto "spam"; }',
            (
                "personal",
                "spam_tests",
            ): 'require "reject"; if header :contains "subject" "viagra" { reject "no"; }',
            ("personal", "mailing_lists"): 'require "fileinto"; if exists "list-id" { fileinto "lists"; }',
        }
        script = (
            'require ["include"];\n'
            'include :personal "always_allow";\n'
            'include :global "spam_tests";\n'
            'include :personal "spam_tests";\n'
            'include :personal "mailing_lists";\n'
        )
        calls: list[tuple[str, str]] = []
        parsed = parse(script, loader=_loader(scripts, calls))
        self.assertEqual(len(calls), 4)
        self.assertEqual(sorted(parsed.includes), sorted(scripts))
        data = b"From: boss@example.com\r\nSubject: $$$ offer\r\nList-Id: <x>\r\n\r\n"
        result = sieve(script, data, loader=_loader(scripts))
        self.assertEqual(result.actions, (Keep(), FileInto("spam"), FileInto("lists")))

    def test_included_script_has_its_own_require(self) -> None:
        scripts = {("personal", "sub"): 'fileinto "x";'}
        e = self.assertRaises(SieveError, parse, 'require "include"; include "sub";', loader=_loader(scripts))
        self.assertEqual(e.script, "sub")
        self.assertIn("require", e.message)
        self.assertIn("script 'sub', line 1", str(e))

    def test_globals_are_shared(self) -> None:
        """Section 3.3's idea: global variables cross scripts, local ones do not."""
        scripts = {
            ("personal", "sub"): (
                'require ["include", "variables", "fileinto"];\n'
                'global "box";\nfileinto "${box}-${local}";\nset "box" "changed";'
            )
        }
        script = (
            'require ["include", "variables", "fileinto"];\n'
            'global "box";\nset "box" "shared";\nset "local" "mine";\n'
            'include "sub";\nfileinto "${box}";\nfileinto "${global.box}";'
        )
        result = sieve(script, loader=_loader(scripts))
        self.assertEqual(result.actions, (FileInto("shared-"), FileInto("changed")))

    def test_return(self) -> None:
        scripts = {("personal", "sub"): 'require ["include"]; if true { return; } discard;'}
        result = sieve('require "include"; include "sub"; redirect "a@b.org";', loader=_loader(scripts))
        self.assertNotIn(Discard(), result.actions)
        self.assertEqual(len(result.actions), 1)

    def test_stop_in_included_script_stops_all(self) -> None:
        scripts = {("personal", "sub"): "stop;"}
        result = sieve('require "include"; include "sub"; discard;', loader=_loader(scripts))
        self.assertEqual(result.actions, ())

    def test_once(self) -> None:
        scripts = {("personal", "sub"): 'require "reject"; reject "x";'}
        result = sieve(
            'require "include"; include :once "sub"; include :once "sub";', loader=_loader(scripts)
        )
        self.assertEqual(result.errors, ())
        twice = sieve('require "include"; include "sub"; include "sub";', loader=_loader(scripts))
        self.assertIn("reject cannot be combined", twice.errors[0])

    def test_missing_script(self) -> None:
        """A missing script is an error when the include runs, not at upload (unless :optional)."""
        parsed = parse('require "include"; if false { include "nope"; }', loader=_loader({}))
        self.assertEqual(parsed.includes, {("personal", "nope"): None})
        result = sieve('require "include"; discard; include "nope";', loader=_loader({}))
        self.assertEqual(result.actions, ())
        self.assertIn("does not exist", result.errors[0])
        optional = sieve('require "include"; include :optional "nope"; discard;', loader=_loader({}))
        self.assertEqual(optional.actions, (Discard(),))

    def test_no_loader(self) -> None:
        result = sieve('require "include"; include "sub";')
        self.assertIn("does not exist", result.errors[0])

    def test_loop(self) -> None:
        """Section 3.2: a script including itself, directly or not, is refused at parse time."""
        scripts = {
            ("personal", "a"): 'require "include"; include "b";',
            ("personal", "b"): 'require "include"; include "a";',
        }
        e = self.assertRaises(SieveError, parse, 'require "include"; include "a";', loader=_loader(scripts))
        self.assertIn("include loop: a -> b -> a", e.message)
        self_loop = {("personal", "me"): 'require "include"; include "me";'}
        self.assertRaises(SieveError, parse, 'require "include"; include "me";', loader=_loader(self_loop))

    def test_named_main_script_cannot_include_itself(self) -> None:
        scripts = {("personal", "main"): 'require "include"; include "main";'}
        e = self.assertRaises(
            SieveError, parse, 'require "include"; include "main";', loader=_loader(scripts), name="main"
        )
        self.assertIn("include loop", e.message)

    def test_same_script_twice_is_not_a_loop(self) -> None:
        scripts = {
            ("personal", "a"): 'require "include"; include "c";',
            ("personal", "b"): 'require "include"; include "c";',
            ("personal", "c"): "keep;",
        }
        parsed = parse('require "include"; include "a"; include "b";', loader=_loader(scripts))
        self.assertEqual(len(parsed.includes), 3)

    def test_depth_limit(self) -> None:
        scripts = {("personal", f"s{i}"): f'require "include"; include "s{i + 1}";' for i in range(20)}
        e = self.assertRaises(
            SieveError,
            parse,
            'require "include"; include "s0";',
            loader=_loader(scripts),
            limits=Limits(max_include_depth=5),
        )
        self.assertIn("deeper than 5", e.message)

    def test_count_limit(self) -> None:
        scripts = {("personal", f"s{i}"): "keep;" for i in range(10)}
        script = 'require "include";' + "".join(f'include "s{i}";' for i in range(10))
        e = self.assertRaises(
            SieveError, parse, script, loader=_loader(scripts), limits=Limits(max_includes=5)
        )
        self.assertIn("more than 5 included scripts", e.message)

    def test_global_needs_variables(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "include"; global "x";')
        self.assertIn('require "variables"', e.message)

    def test_include_name_is_constant(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require ["include", "variables"]; include "${x}";')
        self.assertIn("invalid script name", e.message)
