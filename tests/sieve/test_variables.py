"""Variables (RFC 5229), with the RFC's own examples, and encoded-character (RFC 5228 section 2.4.2.4)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import Discard, FileInto, Limits, Reject, SieveError, parse

from ._support import sieve

_LIST = (
    b"List-ID: Acme users <acme-users@lists.example.com>\r\n"
    b"Subject: [acme-users] [fwd] version 1.0 is out\r\n"
    b"To: coyote@ACME.Example.COM\r\n"
    b"\r\nbody\r\n"
)


def _value(script: str, name: str = "b", data: bytes = _LIST) -> str:
    """The value of variable *name* after *script*, read back through a reject."""
    result = sieve(f'require ["variables", "reject"];\n{script}\nreject "${{{name}}}";', data)
    assert not result.errors, result.errors
    action = result.actions[0]
    assert isinstance(action, Reject)
    return action.reason


class SetTests(SynchronousTestCase):
    def test_section_3_example(self) -> None:
        """Names are case-insensitive; a multi-line value expands too."""
        script = (
            'set "honorific"  "Mr";\nset "first_name" "Wile";\nset "last_name"  "Coyote";\n'
            'set "vacation" text:\nDear ${HONORIFIC} ${last_name},\n'
            "I'm out, please leave a message after the meep.\n.\n;"
        )
        self.assertEqual(
            _value(script, "vacation"),
            "Dear Mr Coyote,\r\nI'm out, please leave a message after the meep.\r\n",
        )

    def test_modifiers(self) -> None:
        """Section 4.1's examples, modifiers applied by precedence."""
        base = 'set "a" "juMBlEd lETteRS";\n'
        self.assertEqual(_value(base + 'set :length "b" "${a}";'), "15")
        self.assertEqual(_value(base + 'set :lower "b" "${a}";'), "jumbled letters")
        self.assertEqual(_value(base + 'set :upperfirst "b" "${a}";'), "JuMBlEd lETteRS")
        self.assertEqual(_value(base + 'set :upperfirst :lower "b" "${a}";'), "Jumbled letters")
        self.assertEqual(_value('set :quotewildcard "b" "Rock*";'), "Rock\\*")
        self.assertEqual(_value('set :length :upper "b" "four";'), "4")

    def test_unknown_variable_is_empty(self) -> None:
        self.assertEqual(_value('set "b" "[${nothing}]";'), "[]")

    def test_non_references_stay(self) -> None:
        """Section 3: "${" without a valid name after it is not a reference."""
        self.assertEqual(_value('set "b" "${} ${ x } ${a-b} $x";'), "${} ${ x } ${a-b} $x")

    def test_no_expansion_without_require(self) -> None:
        result = sieve('require "reject"; reject "${x}";')
        self.assertEqual(result.actions, (Reject("${x}"),))

    def test_bad_name(self) -> None:
        e = self.assertRaises(SieveError, parse, 'require "variables"; set "1" "x";')
        self.assertIn("invalid variable name", e.message)

    def test_value_size_limit(self) -> None:
        """Values longer than the limit are truncated (Pigeonhole's sieve_variables_max_variable_size)."""
        result = sieve(
            'require ["variables", "reject"]; set "a" "0123456789"; set "a" "${a}${a}${a}"; reject "${a}";',
            limits=Limits(max_variable_size=16),
        )
        self.assertEqual(result.actions, (Reject("0123456789012345"),))

    def test_variable_count_limit(self) -> None:
        script = 'require "variables";\n' + "".join(f'set "v{i}" "x";\n' for i in range(6))
        result = sieve(script, limits=Limits(max_variables=5))
        self.assertEqual(len(result.errors), 1)
        self.assertIn("more than 5 variables", result.errors[0])
        self.assertTrue(result.implicit_keep)


class MatchVariableTests(SynchronousTestCase):
    def test_section_3_2_examples(self) -> None:
        script = (
            'require ["fileinto", "variables"];\n'
            'if header :matches "List-ID" "*<*@*" {\n'
            '    fileinto "INBOX.lists.${2}"; stop;\n}\n'
        )
        self.assertEqual(sieve(script, _LIST).actions, (FileInto("INBOX.lists.acme-users"),))
        script = (
            'require ["fileinto", "variables"];\n'
            'if header :matches "Subject" "[*] *" {\n'
            '    fileinto "INBOX.lists.${1}"; stop;\n}\n'
        )
        self.assertEqual(sieve(script, _LIST).actions, (FileInto("INBOX.lists.acme-users"),))
        self.assertEqual(
            _value('if header :matches "Subject" "[*] *" { set "b" "${2}"; }'), "[fwd] version 1.0 is out"
        )

    def test_address_matches(self) -> None:
        script = 'if address :matches ["To", "From"] "*@*.com" { set "b" "${0}|${1}|${2}"; }'
        self.assertEqual(_value(script), "coyote@ACME.Example.COM|coyote|ACME.Example")

    def test_question_marks_are_numbered(self) -> None:
        self.assertEqual(_value('if string :matches "abcde" "?b*?" { set "b" "${1}${2}${3}"; }'), "acde")

    def test_failed_match_keeps_old_values(self) -> None:
        script = 'if string :matches "abc" "a*" {} if string :matches "xyz" "q*" {} set "b" "${1}";'
        self.assertEqual(_value(script), "bc")


class StringTests(SynchronousTestCase):
    def test_string_test(self) -> None:
        """Section 5: the string test."""
        script = 'require "variables"; set "a" "hello"; if string :is "${a}" "HELLO" { discard; }'
        self.assertEqual(sieve(script).actions, (Discard(),))

    def test_string_count_skips_empty(self) -> None:
        script = (
            'require ["variables", "relational"];\nif string :count "eq" ["${x}", "a", "b"] "2" { discard; }'
        )
        self.assertEqual(sieve(script).actions, (Discard(),))


class EncodedCharacterTests(SynchronousTestCase):
    def test_rfc_example(self) -> None:
        """Section 2.4.2.4's example: "$${hex:24 24}{unicode:40}" is "$$$$" ... decoded once."""
        result = sieve(
            'require ["encoded-character", "reject"]; reject "${hex:40}${unicode:263A} ${HEX: 41 42}";'
        )
        self.assertEqual(result.actions, (Reject("@\u263a AB"),))

    def test_not_decoded_without_require(self) -> None:
        result = sieve('require "reject"; reject "${hex:40}";')
        self.assertEqual(result.actions, (Reject("${hex:40}"),))

    def test_malformed_left_alone(self) -> None:
        result = sieve('require ["encoded-character", "reject"]; reject "${hex:} ${hex:4G} ${unicode:}";')
        self.assertEqual(result.actions, (Reject("${hex:} ${hex:4G} ${unicode:}"),))

    def test_invalid_code_point(self) -> None:
        e = self.assertRaises(
            SieveError, parse, 'require ["encoded-character", "reject"];\nreject "${unicode:D800}";'
        )
        self.assertEqual(e.line, 2)
        self.assertIn("invalid Unicode", e.message)

    def test_in_multiline_string(self) -> None:
        result = sieve('require ["encoded-character", "reject"];\nreject text:\n${hex:41}\n.\n;')
        self.assertEqual(result.actions, (Reject("A\r\n"),))
