"""
Tests for the sans-IO ManageSieve session (RFC 5804): bytes in, events and
bytes out.  Every exchange runs twice, whole and one byte at a time, and
both runs must give the same output (h11's idea).
"""

from __future__ import annotations

import base64
import contextlib
import random
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.auth.test_sasl import scram_client_final
from txmail.auth import sasl
from txmail.auth.passwords import make_credentials
from txmail.managesieve.events import Authenticated, AuthStep, ConnectionClosing, ScriptRequest, StartTLS
from txmail.managesieve.grammar import FrameError, String, parse_command, quoted_or_literal
from txmail.managesieve.session import (
    ManageSieveSession,
    QuotaMaxScripts,
    ScriptInvalid,
    State,
    check_script,
)
from txmail.sieve import EXTENSIONS
from txmail.sieve.storage import ScriptTable

PASSWORD = "secret word"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
USER = "alice@example.test"
PLAIN = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()).decode()
LOGIN = f'AUTHENTICATE "PLAIN" "{PLAIN}"\r\n'.encode()


def fake_authenticator(server: sasl.SASLServer, request: Any) -> Any:
    """What the real Authenticator does, synchronously, for alice only."""
    if isinstance(request, sasl.NeedPasswordCheck):
        return server.password_checked(request.username == USER and request.password.reveal() == PASSWORD)
    if isinstance(request, sasl.NeedCredentials):
        return server.provide_credentials(CREDENTIALS if request.username == USER else None)
    return request


class FakeApplication:
    """What the adapter does, synchronously, on a ScriptTable: check scripts, count them, store."""

    def __init__(self, max_scripts: int = 3) -> None:
        self.table = ScriptTable()
        self.max_scripts = max_scripts
        self.events: list[Any] = []

    def __call__(self, session: ManageSieveSession, event: Any) -> None:
        self.events.append(event)
        if isinstance(event, AuthStep):
            session.accept(fake_authenticator(event.server, event.request))
        elif isinstance(event, StartTLS):
            session.accept()
            session.tls_started()
        elif isinstance(event, ScriptRequest):
            try:
                result = self.run(event.command, event.args)
            except Exception as e:
                self.assert_true(session.fail(e))
            else:
                session.accept(result)

    @staticmethod
    def assert_true(value: bool) -> None:
        assert value, "an error the session did not map"

    def count(self, name: Any) -> None:
        if name not in self.table.scripts and len(self.table.scripts) >= self.max_scripts:
            raise QuotaMaxScripts(name)

    def run(self, command: str, args: tuple[Any, ...]) -> Any:
        t = self.table
        if command == "LISTSCRIPTS":
            return t.list()
        if command == "GETSCRIPT":
            return t.get(args[0])
        if command == "CHECKSCRIPT":
            return check_script(args[0])
        if command == "PUTSCRIPT":
            check_script(args[1], args[0])
            self.count(args[0])
            return t.put(args[0], args[1])
        if command == "HAVESPACE":
            return self.count(args[0])
        if command == "SETACTIVE":
            return t.set_active(args[0])
        if command == "DELETESCRIPT":
            return t.delete(args[0])
        if command == "RENAMESCRIPT":
            return t.rename(args[0], args[1])
        raise AssertionError(command)


def run(
    data: bytes, *, byte_by_byte: bool = False, app: FakeApplication | None = None, **kwargs: Any
) -> tuple[ManageSieveSession, bytes, FakeApplication]:
    """Feed *data* to a new session (after its greeting), deciding with *app*; the output after the greeting."""
    app = app or FakeApplication()
    kwargs.setdefault("tls_available", True)
    session = ManageSieveSession(**kwargs)
    session.data_to_send()
    out = b""
    chunks = [data[i : i + 1] for i in range(len(data))] if byte_by_byte else [data]
    for chunk in chunks:
        session.receive_data(chunk)
        while (event := session.next_event()) is not None:
            app(session, event)
        out += session.data_to_send()
    return session, out, app


class SessionTestCase(SynchronousTestCase):
    def exchange(
        self, data: bytes, max_scripts: int = 3, **kwargs: Any
    ) -> tuple[ManageSieveSession, bytes, FakeApplication]:
        """Run *data* whole and byte by byte: the same output both ways."""
        whole = run(data, app=FakeApplication(max_scripts), **kwargs)
        single = run(data, byte_by_byte=True, app=FakeApplication(max_scripts), **kwargs)
        self.assertEqual(whole[1], single[1])
        return whole

    def logged_in(self, data: bytes, **kwargs: Any) -> tuple[ManageSieveSession, bytes, FakeApplication]:
        """*data* after a PLAIN login (allowed without TLS here); the output after the login's OK."""
        kwargs.setdefault("plaintext_auth", "always")
        session, out, app = self.exchange(LOGIN + data, **kwargs)
        _head, sep, rest = out.partition(b'OK "Logged in"\r\n')
        self.assertTrue(sep, out)
        return session, rest, app


class GreetingTests(SessionTestCase):
    def test_greeting_capabilities(self) -> None:
        """The greeting is the capability list (section 1.7) and OK; no SASL before TLS by default, STARTTLS offered."""
        session = ManageSieveSession(tls_available=True)
        sieve = " ".join(sorted(EXTENSIONS)).encode()
        self.assertEqual(
            session.data_to_send(),
            b'"IMPLEMENTATION" "txmail"\r\n"SASL" ""\r\n"SIEVE" "' + sieve + b'"\r\n"STARTTLS"\r\n'
            b'"MAXREDIRECTS" "4"\r\n"UNAUTHENTICATE"\r\n"VERSION" "1.0"\r\nOK "txmail ManageSieve ready"\r\n',
        )

    def test_sasl_offered_under_policy(self) -> None:
        """Mechanisms are listed when the plaintext policy allows them (here: loopback)."""
        session = ManageSieveSession(plaintext_auth="loopback", loopback=True)
        out = session.data_to_send()
        self.assertIn(b'"SASL" "SCRAM-SHA-256 PLAIN LOGIN"\r\n', out)
        self.assertNotIn(b"STARTTLS", out)

    def test_capability_after_login_has_owner(self) -> None:
        """After login CAPABILITY names the OWNER and no longer offers STARTTLS."""
        _, out, _ = self.logged_in(b"CAPABILITY\r\n")
        self.assertIn(b'"OWNER" "alice@example.test"\r\n', out)
        self.assertNotIn(b"STARTTLS", out)
        self.assertTrue(out.endswith(b'OK "Done"\r\n'))


class StartTLSTests(SessionTestCase):
    def test_starttls_discards_pipelined(self) -> None:
        """Bytes pipelined after STARTTLS are trailing data, never commands; after TLS the capabilities are resent."""
        session = ManageSieveSession(tls_available=True)
        session.data_to_send()
        session.receive_data(b"STARTTLS\r\n" + LOGIN + b"LISTSCRIPTS\r\n")
        self.assertEqual(session.next_event(), StartTLS())
        session.receive_data(b'DELETESCRIPT "x"\r\n')
        self.assertEqual(session.trailing_data, LOGIN + b'LISTSCRIPTS\r\nDELETESCRIPT "x"\r\n')
        self.assertIsNone(session.next_event())
        session.accept()
        self.assertEqual(session.data_to_send(), b'OK "Begin TLS negotiation now"\r\n')
        self.assertEqual(session.trailing_data, b"")
        session.tls_started()
        out = session.data_to_send()
        self.assertIn(b'"SASL" "SCRAM-SHA-256 PLAIN LOGIN"\r\n', out)
        self.assertNotIn(b"STARTTLS", out)
        self.assertIsNone(session.next_event())
        self.assertEqual(session.state, State.NOT_AUTHENTICATED)

    def test_starttls_unavailable(self) -> None:
        """Without TLS configured, or a second time, STARTTLS gets NO."""
        _, out, _ = self.exchange(b"STARTTLS\r\n", tls_available=False)
        self.assertEqual(out, b'NO "STARTTLS is not available"\r\n')
        _, out, _ = self.exchange(b"STARTTLS\r\n")
        self.assertTrue(out.endswith(b'"VERSION" "1.0"\r\nOK "txmail ManageSieve ready"\r\n'), out)
        session, _, _ = run(b"STARTTLS\r\n")
        session.receive_data(b"STARTTLS\r\n")
        self.assertIsNone(session.next_event())
        self.assertEqual(session.data_to_send(), b'NO "STARTTLS is not available"\r\n')


class AuthenticateTests(SessionTestCase):
    def test_plain_refused_before_tls(self) -> None:
        """PLAIN before TLS under the default policy: NO (ENCRYPT-NEEDED), no password checked."""
        _, out, app = self.exchange(LOGIN)
        self.assertEqual(out, b'NO (ENCRYPT-NEEDED) "Authentication requires TLS: use STARTTLS first"\r\n')
        self.assertEqual(app.events, [])

    def test_plain_initial_response(self) -> None:
        """AUTHENTICATE "PLAIN" with an initial response logs in: OK, Authenticated, state AUTHENTICATED."""
        session, out, app = self.exchange(LOGIN, plaintext_auth="always")
        self.assertEqual(out, b'OK "Logged in"\r\n')
        self.assertEqual(session.state, State.AUTHENTICATED)
        self.assertEqual(session.user, USER)
        self.assertIn(Authenticated(USER, "PLAIN"), app.events)

    def test_plain_in_literal_continuation(self) -> None:
        """An empty challenge is sent as "" and the client's response may be a literal."""
        data = b'AUTHENTICATE "PLAIN"\r\n{%d+}\r\n%s\r\n' % (len(PLAIN), PLAIN.encode())
        session, out, _ = self.exchange(data, plaintext_auth="always")
        self.assertEqual(out, b'""\r\nOK "Logged in"\r\n')
        self.assertEqual(session.state, State.AUTHENTICATED)

    def test_wrong_password(self) -> None:
        """A wrong password: NO, counted, still not authenticated."""
        bad = base64.b64encode(f"\0{USER}\0nope".encode())
        session, out, _ = self.exchange(b'AUTHENTICATE "PLAIN" "' + bad + b'"\r\n', plaintext_auth="always")
        self.assertEqual(out, b'NO "Authentication failed"\r\n')
        self.assertEqual((session.state, session.bad_commands), (State.NOT_AUTHENTICATED, 1))

    def test_cancel(self) -> None:
        """The client cancels with "*": NO."""
        session, out, _ = self.exchange(b'AUTHENTICATE "PLAIN"\r\n"*"\r\n', plaintext_auth="always")
        self.assertEqual(out, b'""\r\nNO "Authentication cancelled"\r\n')
        self.assertEqual(session.state, State.NOT_AUTHENTICATED)

    def test_scram(self) -> None:
        """SCRAM-SHA-256 runs with challenges and responses as strings; the server's final message, "", then OK."""
        session = ManageSieveSession(
            plaintext_auth="always", sasl_factory=lambda m: sasl.SASLServer(m, server_nonce="srvnonce")
        )
        session.data_to_send()
        app = FakeApplication()

        def send(data: bytes) -> bytes:
            session.receive_data(data)
            while (e := session.next_event()) is not None:
                app(session, e)
            return session.data_to_send()

        bare = b"n=" + USER.encode() + b",r=clientnonce"
        challenge = send(b'AUTHENTICATE "SCRAM-SHA-256" "' + base64.b64encode(b"n,," + bare) + b'"\r\n')
        self.assertTrue(challenge.startswith(b'"') and challenge.endswith(b'"\r\n'), challenge)
        server_first = base64.b64decode(challenge[1:-3])
        self.assertIn(b"r=clientnoncesrvnonce", server_first)
        final, expected = scram_client_final(PASSWORD, bare, server_first)
        out = send(b"{%d+}\r\n" % len(base64.b64encode(final)) + base64.b64encode(final) + b"\r\n")
        self.assertEqual(out, b'"' + base64.b64encode(expected) + b'"\r\n')
        self.assertEqual(send(b'""\r\n'), b'OK "Logged in"\r\n')
        self.assertEqual(session.state, State.AUTHENTICATED)

    def test_unknown_mechanism(self) -> None:
        """An unknown mechanism: NO."""
        _, out, _ = self.exchange(b'AUTHENTICATE "X-FOO"\r\n', plaintext_auth="always")
        self.assertEqual(out, b'NO "Unsupported authentication mechanism"\r\n')

    def test_commands_need_login(self) -> None:
        """Script commands before login: NO; AUTHENTICATE after login: NO."""
        _, out, app = self.exchange(b'LISTSCRIPTS\r\nGETSCRIPT "a"\r\n')
        self.assertEqual(out, b'NO "Authenticate first"\r\n' * 2)
        self.assertEqual(app.events, [])
        _, out, _ = self.logged_in(LOGIN)
        self.assertEqual(out, b'NO "Already authenticated"\r\n')

    def test_unauthenticate(self) -> None:
        """UNAUTHENTICATE goes back to the non-authenticated state (section 2.14)."""
        session, out, _ = self.logged_in(b"UNAUTHENTICATE\r\nLISTSCRIPTS\r\n")
        self.assertEqual(out, b'OK "Unauthenticated"\r\nNO "Authenticate first"\r\n')
        self.assertIsNone(session.user)


SCRIPT = b'require "fileinto";\r\nif header :contains "List-Id" "txmail" { fileinto "Lists"; }\r\n'


class ScriptCommandTests(SessionTestCase):
    def test_put_list_get_activate_delete(self) -> None:
        """The life of a script: PUTSCRIPT, LISTSCRIPTS, SETACTIVE, GETSCRIPT, DELETESCRIPT (NO ACTIVE), SETACTIVE ""."""
        data = (
            b'PUTSCRIPT "lists" {%d+}\r\n' % len(SCRIPT) + SCRIPT + b"\r\n"
            b'PUTSCRIPT "other" "keep;"\r\n'
            b'SETACTIVE "lists"\r\n'
            b"LISTSCRIPTS\r\n"
            b'GETSCRIPT "lists"\r\n'
            b'DELETESCRIPT "lists"\r\n'
            b'SETACTIVE ""\r\n'
            b'DELETESCRIPT "lists"\r\n'
            b'GETSCRIPT "lists"\r\n'
            b"LISTSCRIPTS\r\n"
        )
        _, out, _ = self.logged_in(data)
        self.assertEqual(
            out,
            b'OK "Putscript completed"\r\n'
            b'OK "Putscript completed"\r\n'
            b'OK "Setactive completed"\r\n'
            b'"lists" ACTIVE\r\n"other"\r\nOK "Listscripts completed"\r\n'
            b"{%d}\r\n" % len(SCRIPT) + SCRIPT + b'\r\nOK "Getscript completed"\r\n'
            b'NO (ACTIVE) "You may not delete the active script"\r\n'
            b'OK "Setactive completed"\r\n'
            b'OK "Deletescript completed"\r\n'
            b'NO (NONEXISTENT) "There is no script of that name"\r\n'
            b'"other"\r\nOK "Listscripts completed"\r\n',
        )

    def test_bad_script_refused_with_position(self) -> None:
        """A script that does not compile gets NO with the engine's line and column, and is not stored."""
        bad = b'require "fileinto";\r\nfileinto "x"\r\nkeep;\r\n'
        _, out, app = self.logged_in(
            b'PUTSCRIPT "bad" {%d+}\r\n' % len(bad)
            + bad
            + b"\r\nCHECKSCRIPT {%d+}\r\n" % len(bad)
            + bad
            + b"\r\n"
        )
        first, _, second = out.partition(b"\r\n")
        self.assertTrue(first.startswith(b'NO "line 3, column 1: '), first)
        self.assertEqual(second, first + b"\r\n")
        self.assertEqual(app.table.scripts, {})

    def test_checkscript_ok(self) -> None:
        """CHECKSCRIPT of a good script: OK, nothing stored."""
        _, out, app = self.logged_in(b"CHECKSCRIPT {%d+}\r\n" % len(SCRIPT) + SCRIPT + b"\r\n")
        self.assertEqual(out, b'OK "Script is valid"\r\n')
        self.assertEqual(app.table.scripts, {})

    def test_not_utf8(self) -> None:
        """A script that is not UTF-8 is refused."""
        _, out, _ = self.logged_in(b'PUTSCRIPT "x" {6+}\r\nkeep\xff;\r\n')
        self.assertEqual(out, b'NO "the script is not UTF-8 (octet 4)"\r\n')

    def test_rename(self) -> None:
        """RENAMESCRIPT: ALREADYEXISTS and NONEXISTENT codes; the active script stays active."""
        data = (
            b'PUTSCRIPT "a" "keep;"\r\nPUTSCRIPT "b" "keep;"\r\nSETACTIVE "a"\r\n'
            b'RENAMESCRIPT "a" "b"\r\nRENAMESCRIPT "zz" "c"\r\nRENAMESCRIPT "a" "c"\r\nLISTSCRIPTS\r\n'
        )
        _, out, _ = self.logged_in(data)
        self.assertTrue(
            out.endswith(
                b'NO (ALREADYEXISTS) "A script of that name exists already"\r\n'
                b'NO (NONEXISTENT) "There is no script of that name"\r\n'
                b'OK "Renamescript completed"\r\n'
                b'"b"\r\n"c" ACTIVE\r\nOK "Listscripts completed"\r\n'
            ),
            out,
        )

    def test_quota_maxscripts_and_havespace(self) -> None:
        """Past max_scripts a new name gets NO (QUOTA/MAXSCRIPTS), a replacement does not; HAVESPACE says so first."""
        data = (
            b'PUTSCRIPT "a" "keep;"\r\nPUTSCRIPT "b" "keep;"\r\n'
            b'HAVESPACE "c" 10\r\nPUTSCRIPT "c" "keep;"\r\nHAVESPACE "a" 10\r\nPUTSCRIPT "a" "stop;"\r\n'
        )
        _, out, _ = self.logged_in(data, max_scripts=2)
        self.assertEqual(
            out,
            b'OK "Putscript completed"\r\n' * 2
            + b'NO (QUOTA/MAXSCRIPTS) "Too many scripts"\r\n' * 2
            + b'OK "Putscript would succeed"\r\nOK "Putscript completed"\r\n',
        )

    def test_quota_maxsize(self) -> None:
        """A script above max_script_size: NO (QUOTA/MAXSIZE), its literal dropped unread; HAVESPACE too."""
        big = b"#" * 200 + b"\r\nkeep;"
        data = (
            b'HAVESPACE "x" 5000\r\nPUTSCRIPT "x" {%d+}\r\n' % len(big)
            + big
            + b'\r\nPUTSCRIPT "y" "keep;"\r\n'
        )
        session, out, app = self.logged_in(data, max_script_size=100)
        self.assertEqual(
            out,
            b'NO (QUOTA/MAXSIZE) "The script is too large (at most 100 octets)"\r\n' * 2
            + b'OK "Putscript completed"\r\n',
        )
        self.assertEqual(list(app.table.scripts), ["y"])
        self.assertEqual(session.bad_commands, 0)

    def test_invalid_names(self) -> None:
        """Names with a control character, a slash or not UTF-8 get NO."""
        _, out, app = self.logged_in(b'PUTSCRIPT "a/b" "keep;"\r\nGETSCRIPT "\xff"\r\nSETACTIVE ".x"\r\n')
        self.assertEqual(out, b'NO "Invalid script name"\r\n' * 3)
        self.assertEqual([e for e in app.events if isinstance(e, ScriptRequest)], [])

    def test_names_quoted_with_escapes(self) -> None:
        """Names with quotes and backslashes travel escaped, both ways; names may come as literals."""
        _, out, _ = self.logged_in(
            b'PUTSCRIPT {5+}\r\na"b\\c "keep;"\r\nLISTSCRIPTS\r\nGETSCRIPT "a\\"b\\\\c"\r\n'
        )
        self.assertEqual(
            out,
            b'OK "Putscript completed"\r\n"a\\"b\\\\c"\r\nOK "Listscripts completed"\r\n'
            b'{5}\r\nkeep;\r\nOK "Getscript completed"\r\n',
        )

    def test_synchronizing_literal_accepted(self) -> None:
        """A literal without "+" is taken the same (no continuation in ManageSieve)."""
        _, out, _ = self.logged_in(b'PUTSCRIPT "a" {5}\r\nkeep;\r\n')
        self.assertEqual(out, b'OK "Putscript completed"\r\n')

    def test_noop_tag_and_logout(self) -> None:
        """NOOP echoes its tag (section 2.13); LOGOUT answers OK and closes."""
        session, out, app = self.exchange(b'NOOP "t1"\r\nNOOP\r\nLOGOUT\r\nNOOP\r\n')
        self.assertEqual(out, b'OK (TAG "t1") "Done"\r\nOK "Done"\r\nOK "Logout completed"\r\n')
        self.assertTrue(session.closed)
        self.assertEqual(app.events, [ConnectionClosing("logout")])


class LimitTests(SessionTestCase):
    def test_syntax_errors(self) -> None:
        """Unknown commands, bad arguments and bad strings get NO and are counted; the session goes on."""
        data = b'FOO\r\nGETSCRIPT\r\nGETSCRIPT 12\r\nNOOP "a\\x"\r\nNOOP "unterminated\r\nNOOP "ok"\r\n'
        session, out, _ = self.exchange(data)
        self.assertEqual(
            out,
            b'NO "Unknown command"\r\nNO "Authenticate first"\r\nNO "Authenticate first"\r\n'
            b'NO "Bad escape in a quoted string"\r\nNO "Unterminated quoted string"\r\nOK (TAG "ok") "Done"\r\n',
        )
        self.assertEqual(session.bad_commands, 5)

    def test_too_many_errors(self) -> None:
        """Past max_bad_commands: BYE and close."""
        session, out, _ = self.exchange(b"FOO\r\n" * 4, max_bad_commands=2)
        self.assertEqual(out, b'NO "Unknown command"\r\n' * 2 + b'BYE "Too many errors"\r\n')
        self.assertTrue(session.closed)

    def test_line_too_long(self) -> None:
        """A command longer than max_line_length outside literals: BYE (the framing is lost)."""
        session, out, _ = self.exchange(b"NOOP " + b"a" * 300 + b"\r\n", max_line_length=100)
        self.assertEqual(out, b'BYE "Line too long"\r\n')
        self.assertTrue(session.closed)

    def test_long_quoted_string(self) -> None:
        """A quoted string above 1024 octets is an error up to the end of its line."""
        _session, out, _ = self.exchange(b'NOOP "' + b"a" * 1100 + b'"\r\nNOOP\r\n')
        self.assertEqual(out, b'NO "Quoted string too long (use a literal)"\r\nOK "Done"\r\n')

    def test_big_literal_before_login(self) -> None:
        """Before login literals are small (SASL): a large one is dropped and refused."""
        session, out, _ = self.exchange(b"NOOP {20000+}\r\n" + b"x" * 20000 + b"\r\nNOOP\r\n")
        self.assertEqual(out, b'NO "Literal too large"\r\nOK "Done"\r\n')
        self.assertEqual(session.buffered_input, 0)

    def test_timeout(self) -> None:
        """The adapter's timer: BYE and close."""
        session = ManageSieveSession()
        session.data_to_send()
        session.timeout()
        self.assertEqual(session.data_to_send(), b'BYE (TRYLATER) "Disconnected for inactivity"\r\n')
        self.assertEqual(session.next_event(), ConnectionClosing("timeout"))


class GrammarTests(SynchronousTestCase):
    def test_known_strings(self) -> None:
        """Strings are quoted with escapes when they can be, literals otherwise; parsed back the same."""
        for value in (
            b"",
            b"plain",
            b'a "quoted" \\ one',
            "caf\u00e9".encode(),
            b"line\r\nbreak",
            b"x" * 1025,
        ):
            encoded = quoted_or_literal(value)
            command = parse_command(b"NOOP " + encoded + b"\r\n", max_line=10000, max_literal=10000)
            assert command is not None
            self.assertEqual(command.args, (String(value, literal=encoded.startswith(b"{")),))

    def test_fuzz_only_our_errors(self) -> None:
        """Random input parses, needs more, or raises FrameError/LiteralTooLarge; never anything else."""
        from txmail.managesieve.grammar import LiteralTooLarge

        rng = random.Random(5804)
        alphabet = b'AZaz09 "\\{}+\r\n\x00\xff'
        for _ in range(3000):
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 40)))
            with contextlib.suppress(FrameError, LiteralTooLarge):
                parse_command(data, max_line=30, max_literal=10)

    def test_session_fuzz(self) -> None:
        """Random input to a logged-in session never raises and never buffers past the limits."""
        rng = random.Random(4190)
        alphabet = b'PUTSCRIPT GETSCRIPT "\\{}+5\r\nkeep;'
        for _ in range(300):
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 200)))
            session, _, _ = run(LOGIN + data, plaintext_auth="always", max_line_length=64)
            self.assertLessEqual(session.buffered_input, 64 + 20)


class CheckScriptTests(SynchronousTestCase):
    def test_check_script(self) -> None:
        """check_script accepts what the engine compiles and says where a bad script fails."""
        check_script(SCRIPT)
        error = self.assertRaises(ScriptInvalid, check_script, b"if true {\r\n  keep;\r\n")
        self.assertIn("line", error.message)


class LinearParsingTests(SynchronousTestCase):
    def count_parses(self, chunks: list[bytes]) -> int:
        from txmail.managesieve import session as module

        calls = []
        original = module.parse_command

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return original(*args, **kwargs)

        self.patch(module, "parse_command", counting)
        s, _, _ = run(LOGIN, plaintext_auth="always")
        for chunk in chunks:
            s.receive_data(chunk)
            while s.next_event() is not None:
                pass
        return len(calls)

    def test_byte_by_byte_line_parsed_once(self) -> None:
        """A command arriving one octet at a time is parsed once its CRLF is there, not once per octet."""
        counts = []
        for size in (10, 1000):
            line = b'NOOP "' + b"x" * size + b'"\r\n'
            counts.append(self.count_parses([line[i : i + 1] for i in range(len(line))]))
        self.assertEqual(counts[0], counts[1])
        self.assertLessEqual(counts[1], 6)

    def test_byte_by_byte_literal_parsed_twice(self) -> None:
        """A literal arriving one octet at a time is not parsed again until all of it is there."""
        script = b"#" * 5000 + b"\r\nkeep;\r\n"
        data = b'PUTSCRIPT "a" {%d+}\r\n' % len(script) + script + b"\r\n"
        self.assertLessEqual(self.count_parses([data[i : i + 1] for i in range(len(data))]), 8)

    def test_many_literals_refused_early(self) -> None:
        """A command of many tiny literals is refused at its fourth token, not parsed again for each one."""
        data = b"NOOP" + b" {1+}\r\na" * 500 + b"\r\n"
        _, out, _ = run(data, byte_by_byte=True, max_bad_commands=1000)
        self.assertTrue(out.startswith(b'NO "Too many arguments"\r\n'), out[:100])
        self.assertLessEqual(self.count_parses([data[i : i + 1] for i in range(len(data))]), 2500)
