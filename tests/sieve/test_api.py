"""The shape of the engine's API as delivery and ManageSieve will use it."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txmail.sieve import (
    EXTENSIONS,
    Context,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Limits,
    SieveError,
    SieveMessage,
    parse,
    run,
)

from ._support import MESSAGE, sieve


class ApiTests(SynchronousTestCase):
    def test_extensions(self) -> None:
        """Every extension of issue 16 is offered."""
        for name in [
            "fileinto",
            "reject",
            "ereject",
            "envelope",
            "encoded-character",
            "variables",
            "body",
            "relational",
            "subaddress",
            "copy",
            "imap4flags",
            "vacation",
            "vacation-seconds",
            "date",
            "index",
            "mailbox",
            "include",
            "duplicate",
            "editheader",
        ]:
            self.assertIn(name, EXTENSIONS)

    def test_error_text(self) -> None:
        """What a CHECKSCRIPT answer would carry."""
        e = self.assertRaises(SieveError, parse, 'require "fileinto";\n\nfileinto "a"\nkeep;')
        self.assertEqual((e.line, e.column), (4, 1))
        self.assertEqual(str(e), "line 4, column 1: missing ';' after the fileinto command")

    def test_message(self) -> None:
        data = b"Subject: =?utf-8?q?caf=C3=A9?=\r\n  more\r\nX: 1\r\n\r\nbody\r\n"
        message = SieveMessage.from_bytes(data)
        self.assertEqual(message.raw_headers("subject"), ["=?utf-8?q?caf=C3=A9?=\r\n  more"])
        # Unfolding keeps the white space (RFC 5322 section 2.2.3).
        self.assertEqual(message.headers("SUBJECT"), ["café  more"])
        self.assertEqual(message.body_raw(), "body\r\n")
        self.assertEqual(message.size, len(data))

    def test_envelope_parts(self) -> None:
        script = parse(
            'require "envelope"; if envelope :is ["orig_to", "auth"] "alias@example.org" { discard; }'
        )
        message = SieveMessage.from_bytes(MESSAGE)
        plain = run(script, message, Envelope("a@b.org", "user@example.org"), context=Context())
        self.assertEqual(plain.actions, ())
        aliased = Envelope("a@b.org", "user@example.org", orig_to="alias@example.org")
        self.assertEqual(run(script, message, aliased, context=Context()).actions, (Discard(),))

    def test_runtime_limits_from_context(self) -> None:
        """The context's limits override the script's at run time."""
        script = parse('redirect "a@example.org"; redirect "b@example.org";')
        message = SieveMessage.from_bytes(MESSAGE)
        env = Envelope("x@y.org", "u@example.org")
        self.assertEqual(run(script, message, env, context=Context()).errors, ())
        limited = run(script, message, env, context=Context(limits=Limits(max_redirects=1)))
        self.assertIn("too many redirects", limited.errors[0])

    def test_deliveries(self) -> None:
        result = sieve('require ["fileinto", "copy", "imap4flags"]; addflag "$x"; fileinto :copy "a";')
        self.assertEqual(result.deliveries, (FileInto("a", ("$x",), copy=True), Keep(("$x",))))

    def test_return_in_main_script_stops(self) -> None:
        result = sieve('require "include"; discard; return; keep;')
        self.assertEqual(result.deliveries, (Discard(),))

    def test_global_namespace(self) -> None:
        result = sieve(
            'require ["include", "variables", "fileinto"]; set "global.box" "g"; fileinto "${global.box}";'
        )
        self.assertEqual(result.actions, (FileInto("g"),))
