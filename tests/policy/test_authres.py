"""Tests for the Authentication-Results header field, txmail.policy.authres."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.policy.authres import (
    AuthResError,
    AuthResult,
    authserv_id_of,
    format_header,
    parse_results,
    remove_forged,
)

SPF = AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "sender@example.net"),))
DKIM = AuthResult(
    "dkim",
    "pass",
    properties=(("header", "d", "example.net"), ("header", "i", "@example.net"), ("header", "b", "abcdEFGH")),
)
IPREV = AuthResult("iprev", "pass", properties=(("policy", "iprev", "192.0.2.1"),))
AUTH = AuthResult("auth", "pass", properties=(("smtp", "auth", "user@example.org"),))
DMARC = AuthResult(
    "dmarc", "fail", comment="p=reject sp=none dis=reject", properties=(("header", "from", "example.net"),)
)


def value_of(field: bytes) -> bytes:
    """The value of a formatted field: what follows the colon."""
    name, _, value = field.partition(b":")
    assert name == b"Authentication-Results"
    return value


class FormatTests(SynchronousTestCase):
    def test_simple(self) -> None:
        """One short result is written on one line, authserv-id first, CRLF-ended."""
        spf = AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "a@example.net"),))
        self.assertEqual(
            format_header("mx.example.org", [spf]),
            b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=a@example.net\r\n",
        )

    def test_none(self) -> None:
        """With no result the field says none (RFC 8601 section 2.2 no-result)."""
        self.assertEqual(
            format_header("mx.example.org", []), b"Authentication-Results: mx.example.org; none\r\n"
        )

    def test_folding(self) -> None:
        """Lines are folded between words to stay within 78 columns, and unfold to one value."""
        field = format_header("mx.example.org", [SPF, DKIM, IPREV, AUTH, DMARC])
        lines = field.split(b"\r\n")
        self.assertEqual(lines[-1], b"")
        self.assertGreater(len(lines), 3)
        for line in lines[:-1]:
            self.assertLessEqual(len(line), 78, line)
        for line in lines[1:-1]:
            self.assertIn(line[:1], (b" ", b"\t"))
        self.assertEqual(parse_results(value_of(field)), ("mx.example.org", [SPF, DKIM, IPREV, AUTH, DMARC]))

    def test_long_word_not_split(self) -> None:
        """A value longer than a line stays whole on its own line."""
        long_value = "x" * 120 + "@example.net"
        result = AuthResult("spf", "pass", properties=(("smtp", "mailfrom", long_value),))
        field = format_header("mx.example.org", [result])
        self.assertIn(b"\r\n    smtp.mailfrom=" + long_value.encode() + b"\r\n", field)
        self.assertEqual(parse_results(value_of(field))[1], [result])

    def test_tokens_and_addresses_unquoted(self) -> None:
        """Tokens, addresses and @domain identities are written as they are."""
        field = format_header("mx.example.org", [DKIM, SPF])
        self.assertIn(b"header.i=@example.net", field)
        self.assertIn(b"smtp.mailfrom=sender@example.net", field)
        self.assertIn(b"header.b=abcdEFGH", field)

    def test_quoting(self) -> None:
        """Values that are not tokens or addresses are quoted, quotes and backslashes escaped."""
        cases = {
            "john doe@example.net": b'"john doe@example.net"',
            '"quoted local"@example.net': b'"\\"quoted local\\"@example.net"',
            "a;b@example.net": b'"a;b@example.net"',
            "back\\slash": b'"back\\\\slash"',
            "(paren)": b'"(paren)"',
            "": b'""',
        }
        for value, written in cases.items():
            result = AuthResult("spf", "pass", properties=(("smtp", "mailfrom", value),))
            field = format_header("mx.example.org", [result])
            self.assertIn(b"smtp.mailfrom=" + written, field)
            self.assertEqual(parse_results(value_of(field))[1], [result])

    def test_hostile_values_cannot_inject(self) -> None:
        """CR, LF, semicolons, quotes and parentheses from the network stay inside one value."""
        hostile = [
            'evil\r\nX-Injected: yes; dkim=pass "(',
            "a@b; dmarc=pass header.from=bank.example",
            '") spf=pass (',
            "x\\",
            "\x00nul\x7f",
        ]
        for value in hostile:
            result = AuthResult(
                "spf",
                "fail",
                reason=value,
                comment=value,
                properties=(("smtp", "mailfrom", value), ("smtp", "helo", value)),
            )
            field = format_header("mx.example.org", [result])
            # No line break except folding, no control character.
            self.assertTrue(field.endswith(b"\r\n"))
            body = field[:-2]
            for line in body.split(b"\r\n")[1:]:
                self.assertIn(line[:1], (b" ", b"\t"))
            self.assertNotIn(b"\n", body.replace(b"\r\n", b""))
            self.assertNotIn(b"\r", body.replace(b"\r\n", b""))
            self.assertFalse(any(c < 0x20 or c == 0x7F for c in body.replace(b"\r\n", b"")))
            # It reads back as one spf result, controls shown as "?".
            ident, results = parse_results(value_of(field))
            self.assertEqual(ident, "mx.example.org")
            cleaned = "".join("?" if ord(c) < 0x20 or c == "\x7f" else c for c in value)
            self.assertEqual(len(results), 1)
            self.assertEqual(results[0].method, "spf")
            self.assertEqual(results[0].reason, cleaned)
            self.assertEqual(
                results[0].properties, (("smtp", "mailfrom", cleaned), ("smtp", "helo", cleaned))
            )

    def test_hostile_authserv_id(self) -> None:
        """An authserv-id that is not a token is quoted and read back."""
        field = format_header("mx example;org", [SPF])
        self.assertTrue(field.startswith(b'Authentication-Results: "mx example;org";'))
        self.assertEqual(authserv_id_of(value_of(field)), "mx example;org")

    def test_utf8_values(self) -> None:
        """Non-ASCII values (SMTPUTF8) are quoted and written as UTF-8."""
        result = AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "jöran@bücher.example"),))
        field = format_header("mx.example.org", [result])
        self.assertIn('smtp.mailfrom="jöran@bücher.example"'.encode(), field)
        self.assertEqual(parse_results(value_of(field))[1], [result])

    def test_keywords_checked(self) -> None:
        """Methods, results, ptypes and properties must be keywords: our code writes them."""
        for bad in (
            AuthResult("sp f", "pass"),
            AuthResult("spf", "pass;"),
            AuthResult("spf", "pass", properties=(("smtp.x", "mailfrom", "a"),)),
            AuthResult("spf", "pass", properties=(("smtp", "", "a"),)),
        ):
            self.assertRaises(ValueError, format_header, "mx.example.org", [bad])

    def test_case_of_keywords(self) -> None:
        """Keywords are written in lower case."""
        field = format_header(
            "mx.example.org", [AuthResult("DKIM", "Pass", properties=(("Header", "D", "x"),))]
        )
        self.assertIn(b"dkim=pass header.d=x", field)


class ParseTests(SynchronousTestCase):
    """The examples of RFC 8601 appendix B, and the grammar's corners."""

    def test_b2_nearly_trivial(self) -> None:
        """B.2: a version number and no result."""
        self.assertEqual(parse_results(" example.org 1; none"), ("example.org", []))

    def test_b3_spf(self) -> None:
        """B.3: one SPF result with its property."""
        self.assertEqual(
            parse_results(" example.com;\r\n          spf=pass smtp.mailfrom=example.net"),
            ("example.com", [AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "example.net"),))]),
        )

    def test_b4_several(self) -> None:
        """B.4: SMTP AUTH with a comment, SPF, and iprev in a second field."""
        self.assertEqual(
            parse_results(
                " example.com;\r\n          auth=pass (cram-md5) smtp.auth=sender@example.net;\r\n"
                "          spf=pass smtp.mailfrom=example.net"
            ),
            (
                "example.com",
                [
                    AuthResult(
                        "auth",
                        "pass",
                        properties=(("smtp", "auth", "sender@example.net"),),
                        comment="cram-md5",
                    ),
                    AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "example.net"),)),
                ],
            ),
        )
        self.assertEqual(
            parse_results(b" example.com; iprev=pass\r\n          policy.iprev=192.0.2.200"),
            ("example.com", [AuthResult("iprev", "pass", properties=(("policy", "iprev", "192.0.2.200"),))]),
        )

    def test_b5_different_mtas(self) -> None:
        """B.5: a DKIM result with a comment."""
        self.assertEqual(
            parse_results(" example.com;\r\n          dkim=pass (good signature) header.d=example.com"),
            (
                "example.com",
                [
                    AuthResult(
                        "dkim", "pass", properties=(("header", "d", "example.com"),), comment="good signature"
                    )
                ],
            ),
        )

    def test_b6_multi_tiered(self) -> None:
        """B.6: quoted reasons and @domain identities."""
        self.assertEqual(
            parse_results(
                ' example.com;\r\n      dkim=pass reason="good signature"\r\n'
                "        header.i=@mail-router.example.net;\r\n"
                '      dkim=fail reason="bad signature"\r\n        header.i=@newyork.example.com'
            ),
            (
                "example.com",
                [
                    AuthResult(
                        "dkim", "pass", "good signature", (("header", "i", "@mail-router.example.net"),)
                    ),
                    AuthResult("dkim", "fail", "bad signature", (("header", "i", "@newyork.example.com"),)),
                ],
            ),
        )

    def test_b7_comment_heavy(self) -> None:
        """B.7: comments between every element, and a method version."""
        value = (
            " foo.example.net (foobar) 1 (baz);\r\n"
            "    dkim (Because I like it) / 1 (One yay) = (wait for it) fail\r\n"
            "      policy (A dot can go here) . (like that) expired\r\n"
            "      (this surprised me) = (as I wasn't expecting it) 1362471462"
        )
        self.assertEqual(
            parse_results(value),
            (
                "foo.example.net",
                [AuthResult("dkim", "fail", properties=(("policy", "expired", "1362471462"),))],
            ),
        )

    def test_arc_authentication_results(self) -> None:
        """An ARC-Authentication-Results value is read after its instance tag."""
        ident, results = parse_results(
            " i=2; lists.example.org;\r\n dkim=pass header.d=example.net header.s=sel;\r\n"
            " spf=pass smtp.mailfrom=example.net;\r\n dmarc=pass (p=REJECT sp=REJECT dis=NONE)"
            " header.from=example.net"
        )
        self.assertEqual(ident, "lists.example.org")
        self.assertEqual(
            [(r.method, r.result) for r in results], [("dkim", "pass"), ("spf", "pass"), ("dmarc", "pass")]
        )
        self.assertEqual(results[2].comment, "p=REJECT sp=REJECT dis=NONE")
        self.assertEqual(results[0].properties, (("header", "d", "example.net"), ("header", "s", "sel")))

    def test_case_folded(self) -> None:
        """Methods, results, ptypes and properties are case-insensitive and read in lower case."""
        self.assertEqual(
            parse_results("MX.Example.org; SPF=Pass SMTP.MailFrom=A@Example.net")[1],
            [AuthResult("spf", "pass", properties=(("smtp", "mailfrom", "A@Example.net"),))],
        )

    def test_quoted_values(self) -> None:
        """Quoted authserv-ids and property values are unquoted, escapes resolved."""
        self.assertEqual(
            parse_results('"mx.google.com"; dkim=pass header.b="URn9MW+F" (comment) header.s="a\\"b"'),
            (
                "mx.google.com",
                [
                    AuthResult(
                        "dkim", "pass", properties=(("header", "b", "URn9MW+F"), ("header", "s", 'a"b'))
                    )
                ],
            ),
        )

    def test_quoted_local_part(self) -> None:
        """A quoted local part followed by @domain is kept whole, quotes included."""
        self.assertEqual(
            parse_results('mx; spf=pass smtp.mailfrom="john doe"@example.net')[1][0].properties,
            (("smtp", "mailfrom", '"john doe"@example.net'),),
        )

    def test_tolerated(self) -> None:
        """A final semicolon, and none next to results, are tolerated."""
        self.assertEqual(parse_results("mx; spf=pass;")[1], [AuthResult("spf", "pass")])
        self.assertEqual(parse_results("mx; none; spf=fail")[1], [AuthResult("spf", "fail")])
        self.assertEqual(parse_results("mx; nonexistent=pass")[1], [AuthResult("nonexistent", "pass")])

    def test_errors(self) -> None:
        """Values that do not follow the grammar raise AuthResError."""
        for bad in (
            "",
            " ; ",
            "(unterminated; spf=pass",
            "mx; spf",
            "mx; spf=",
            "mx; spf=pass smtp",
            "mx; spf=pass smtp.mailfrom",
            "mx; =pass",
            'mx; spf=pass reason="unterminated',
            "mx spf=pass",
        ):
            self.assertRaises(AuthResError, parse_results, bad)


class AuthservIdTests(SynchronousTestCase):
    def test_plain(self) -> None:
        """The first word of the value is the authserv-id."""
        self.assertEqual(authserv_id_of(b" mx.example.org; spf=pass"), "mx.example.org")
        self.assertEqual(authserv_id_of("mx.example.org"), "mx.example.org")
        self.assertEqual(authserv_id_of("mx.example.org 1; none"), "mx.example.org")

    def test_comments_skipped(self) -> None:
        """Comments (nested, with escapes) and folding before the authserv-id are skipped."""
        self.assertEqual(
            authserv_id_of(b" (a (nested \\) comment))\r\n\t mx.example.org; none"), "mx.example.org"
        )
        self.assertEqual(authserv_id_of("mx.example.org(comment); none"), "mx.example.org")

    def test_quoted(self) -> None:
        """A quoted authserv-id is unquoted."""
        self.assertEqual(authserv_id_of('"mx.exa\\mple.org"; none'), "mx.example.org")

    def test_arc(self) -> None:
        """ARC-Authentication-Results: the authserv-id after i=N;."""
        self.assertEqual(authserv_id_of(" i=1; lists.example.org; arc=none"), "lists.example.org")
        self.assertEqual(
            authserv_id_of(" i (c) = (c) 12 (c) ; (c) lists.example.org; none"), "lists.example.org"
        )

    def test_unparseable(self) -> None:
        """No authserv-id can be read from an empty value, garbage or an unterminated comment."""
        for bad in ("", "   ", "(unterminated", "; spf=pass", "x@mx.example.org; spf=pass", '"open'):
            self.assertIsNone(authserv_id_of(bad), bad)


HEADER = (
    b"Received: from a.example by mx.example.org;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
    b"Authentication-Results: mx.example.org; spf=pass\r\n"
    b"authentication-results : MX.EXAMPLE.ORG.;\r\n  dkim=pass header.d=bank.example\r\n"
    b"Authentication-Results: (comment)\r\n mx.example.org; dmarc=pass\r\n"
    b"Authentication-Results: other.example; spf=fail\r\n"
    b'Authentication-Results: "mx.example.org"; arc=pass\r\n'
    b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n"
    b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
    b"Subject: Authentication-Results: mx.example.org\r\n"
    b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n"
    b"From: a@example.net\r\n"
)


class RemoveForgedTests(SynchronousTestCase):
    def test_removes_ours_keeps_others(self) -> None:
        """Fields claiming our authserv-id go (any case, folded, after comments, quoted); the rest stays."""
        self.assertEqual(
            remove_forged(HEADER, "mx.example.org"),
            b"Received: from a.example by mx.example.org;\r\n\tMon, 1 Jan 2024 00:00:00 +0000\r\n"
            b"Authentication-Results: other.example; spf=fail\r\n"
            b"ARC-Authentication-Results: i=1; mx.example.org; spf=pass\r\n"
            b"X-Authentication-Results: mx.example.org; spf=pass\r\n"
            b"Subject: Authentication-Results: mx.example.org\r\n"
            b"Authentication-Results: mx.example.org.evil.example; spf=pass\r\n"
            b"From: a@example.net\r\n",
        )

    def test_our_id_case_insensitive(self) -> None:
        """Our own authserv-id is compared case-insensitively too."""
        self.assertEqual(
            remove_forged(b"Authentication-Results: mx.example.org; spf=pass\r\n", "MX.Example.Org"), b""
        )

    def test_nothing_to_remove(self) -> None:
        """A header section without forged fields comes back byte for byte, body included."""
        message = (
            b"From: a@example.net\n"
            b"Authentication-Results: other.example;\n\tspf=pass\n"
            b"not a field line\n"
            b" \tcontinued\n"
            b"\n"
            b"Authentication-Results: mx.example.org; body text\n"
        )
        self.assertEqual(remove_forged(message, "mx.example.org"), message)

    def test_body_untouched(self) -> None:
        """Only the header section is looked at: the body after the blank line is kept."""
        message = (
            b"Authentication-Results: mx.example.org; spf=pass\r\n"
            b"Subject: hi\r\n\r\n"
            b"Authentication-Results: mx.example.org; spf=pass\r\n"
        )
        self.assertEqual(
            remove_forged(message, "mx.example.org"),
            b"Subject: hi\r\n\r\nAuthentication-Results: mx.example.org; spf=pass\r\n",
        )

    def test_whole_folded_field_removed(self) -> None:
        """Every continuation line of a removed field goes with it, whitespace-only ones included."""
        header = b"Authentication-Results:\r\n  mx.example.org;\r\n \r\n\tspf=pass\r\nTo: b@example.org\r\n"
        self.assertEqual(remove_forged(header, "mx.example.org"), b"To: b@example.org\r\n")

    def test_unparseable_fields(self) -> None:
        """Unreadable fields mentioning our id are removed; unreadable ones that do not are kept."""
        header = (
            b"Authentication-Results: (unterminated mx.example.org; spf=pass\r\n"
            b"Authentication-Results: x@MX.example.org; spf=pass\r\n"
            b"Authentication-Results: ; mx.example.org; spf=pass\r\n"
            b"Authentication-Results: (unterminated other.example\r\n"
            b"Authentication-Results:\r\n"
        )
        self.assertEqual(
            remove_forged(header, "mx.example.org"),
            b"Authentication-Results: (unterminated other.example\r\nAuthentication-Results:\r\n",
        )

    def test_split_id_is_foreign(self) -> None:
        """An id broken by folding unfolds to another word ("mx.example .org"): the field is kept."""
        header = b"Authentication-Results: mx.example\r\n .org; spf=pass\r\nTo: b@example.org\r\n"
        self.assertEqual(remove_forged(header, "mx.example.org"), header)

    def test_non_utf8_bytes(self) -> None:
        """Octets that are not UTF-8 do not stop the removal, and are kept as they are elsewhere."""
        header = (
            b"Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=\xff@x\r\n"
            b"Authentication-Results: \xfe.example; spf=pass\r\n"
        )
        self.assertEqual(
            remove_forged(header, "mx.example.org"), b"Authentication-Results: \xfe.example; spf=pass\r\n"
        )

    def test_what_we_write_we_remove(self) -> None:
        """A field written by format_header is recognised as ours."""
        field = format_header("mx.example.org", [SPF, DKIM, IPREV, AUTH, DMARC])
        self.assertEqual(remove_forged(field + b"Subject: x\r\n", "mx.example.org"), b"Subject: x\r\n")
        self.assertEqual(remove_forged(field, "other.example"), field)
