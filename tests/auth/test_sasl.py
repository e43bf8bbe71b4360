"""Tests for txmail.auth.sasl: the sans-IO SASL server (PLAIN, LOGIN, SCRAM-SHA-256)."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import inspect
import random

from twisted.trial.unittest import SynchronousTestCase

from txmail.auth import passwords, sasl
from txmail.auth.passwords import Secret, make_credentials
from txmail.auth.sasl import (
    MECHANISMS,
    Challenge,
    Failed,
    NeedCredentials,
    NeedPasswordCheck,
    SASLDecodeError,
    SASLServer,
    SASLStateError,
    Succeeded,
    available_mechanisms,
    decode_response,
    encode_challenge,
    password_auth_allowed,
)

RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def scram_client_final(
    password: str, client_first_bare: bytes, server_first: bytes, gs2: bytes = b"n,,"
) -> tuple[bytes, bytes]:
    """Compute (client-final-message, expected server-final) as a SCRAM client would (RFC 5802 section 3)."""
    attrs = dict(item.split(b"=", 1) for item in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs[b"s"]), int(attrs[b"i"]))
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + attrs[b"r"]
    auth_message = client_first_bare + b"," + server_first + b"," + without_proof
    signature = hmac.digest(stored_key, auth_message, "sha256")
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    server_final = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, "sha256"))
    return without_proof + b",p=" + base64.b64encode(proof), server_final


class PolicyTests(SynchronousTestCase):
    def test_policy_matrix(self) -> None:
        """Password auth is allowed under TLS always, and without TLS only as the policy says."""
        expected = {
            # (tls, policy, loopback): allowed
            (True, "never", False): True,
            (True, "never", True): True,
            (True, "loopback", False): True,
            (True, "always", False): True,
            (False, "never", False): False,
            (False, "never", True): False,
            (False, "loopback", False): False,
            (False, "loopback", True): True,
            (False, "always", False): True,
            (False, "always", True): True,
        }
        for (tls, policy, loopback), allowed in expected.items():
            self.assertEqual(
                password_auth_allowed(tls=tls, plaintext_policy=policy, loopback=loopback),
                allowed,
                (tls, policy, loopback),
            )
            self.assertEqual(
                available_mechanisms(tls=tls, plaintext_policy=policy, loopback=loopback),
                MECHANISMS if allowed else (),
            )

    def test_unknown_policy(self) -> None:
        """An unknown policy name is a ValueError, not a silent default."""
        self.assertRaises(
            ValueError, password_auth_allowed, tls=True, plaintext_policy="sometimes", loopback=False
        )

    def test_mechanism_order(self) -> None:
        """SCRAM-SHA-256 is offered first, then PLAIN and LOGIN."""
        self.assertEqual(MECHANISMS, ("SCRAM-SHA-256", "PLAIN", "LOGIN"))


class Base64Tests(SynchronousTestCase):
    def test_decode_response(self) -> None:
        """Client lines decode from base64; "*" cancels; "=" and "" are empty."""
        self.assertEqual(decode_response(b"AGFsaWNlAHB3"), b"\x00alice\x00pw")
        self.assertEqual(decode_response(b"AGFsaWNlAHB3\r\n"), b"\x00alice\x00pw")
        self.assertIsNone(decode_response(b"*"))
        self.assertEqual(decode_response(b"="), b"")
        self.assertEqual(decode_response(b""), b"")

    def test_decode_malformed(self) -> None:
        """Invalid base64 raises SASLDecodeError (a ValueError), never binascii.Error."""
        for bad in [b"!!!!", b"abc", b"YWJj=ZA==", b"\xff\xfe", b"a b c d"]:
            self.assertRaises(SASLDecodeError, decode_response, bad)
        self.assertTrue(issubclass(SASLDecodeError, ValueError))

    def test_encode_challenge(self) -> None:
        """Challenges are base64; an empty challenge stays empty."""
        self.assertEqual(encode_challenge(b""), b"")
        self.assertEqual(encode_challenge(b"Username:"), b"VXNlcm5hbWU6")


class PlainTests(SynchronousTestCase):
    def test_initial_response_success(self) -> None:
        """PLAIN with an initial response asks for a password check, then succeeds."""
        server = SASLServer("PLAIN")
        event = server.start(b"\x00alice@example.test\x00secret")
        self.assertEqual(event, NeedPasswordCheck("alice@example.test", "", Secret("secret")))
        self.assertEqual(server.password_checked(True), Succeeded("alice@example.test", ""))
        self.assertTrue(server.done)

    def test_without_initial_response(self) -> None:
        """PLAIN without an initial response sends an empty challenge first."""
        server = SASLServer("plain")
        self.assertEqual(server.start(None), Challenge(b""))
        event = server.respond(b"\x00bob\x00pw")
        self.assertIsInstance(event, NeedPasswordCheck)
        self.assertEqual(server.password_checked(False), Failed("invalid"))

    def test_authzid(self) -> None:
        """An authzid equal to the authcid is allowed; another one fails with "authzid"."""
        server = SASLServer("PLAIN")
        event = server.start(b"Alice@example.test\x00alice@example.test\x00pw")
        self.assertEqual(event, NeedPasswordCheck("alice@example.test", "Alice@example.test", Secret("pw")))
        server = SASLServer("PLAIN")
        self.assertEqual(server.start(b"admin@example.test\x00alice@example.test\x00pw"), Failed("authzid"))

    def test_malformed(self) -> None:
        """Wrong NUL counts, empty fields and bad UTF-8 fail as "malformed" without raising."""
        for bad in [
            b"",
            b"alice",
            b"\x00alice",
            b"\x00\x00pw",
            b"\x00alice\x00",
            b"a\x00b\x00c\x00d",
            b"\x00\xff\x00pw",
        ]:
            self.assertEqual(SASLServer("PLAIN").start(bad), Failed("malformed"), bad)

    def test_cancel(self) -> None:
        """Cancelling after the challenge ends the exchange with "cancelled"."""
        server = SASLServer("PLAIN")
        server.start(None)
        self.assertEqual(server.cancel(), Failed("cancelled"))
        self.assertTrue(server.done)
        self.assertRaises(SASLStateError, server.respond, b"\x00a\x00b")

    def test_password_not_in_repr(self) -> None:
        """The NeedPasswordCheck event does not show the password in its repr."""
        event = SASLServer("PLAIN").start(b"\x00alice\x00hunter2")
        self.assertNotIn("hunter2", repr(event))
        self.assertIsInstance(event, NeedPasswordCheck)
        assert isinstance(event, NeedPasswordCheck)
        self.assertEqual(event.password.reveal(), "hunter2")


class LoginTests(SynchronousTestCase):
    def test_flow(self) -> None:
        """LOGIN asks "Username:" then "Password:", then for a password check."""
        server = SASLServer("LOGIN")
        self.assertEqual(server.start(None), Challenge(b"Username:"))
        self.assertEqual(server.respond(b"alice"), Challenge(b"Password:"))
        self.assertEqual(server.respond(b"pw"), NeedPasswordCheck("alice", "", Secret("pw")))
        self.assertEqual(server.password_checked(True), Succeeded("alice", ""))

    def test_initial_response_is_username(self) -> None:
        """An initial response to LOGIN is the user name; the server asks for the password."""
        server = SASLServer("LOGIN")
        self.assertEqual(server.start(b"alice"), Challenge(b"Password:"))
        self.assertEqual(server.username, "alice")

    def test_malformed_and_cancel(self) -> None:
        """Empty or non-UTF-8 answers fail as "malformed"; "*" cancels."""
        server = SASLServer("LOGIN")
        server.start(None)
        self.assertEqual(server.respond(b""), Failed("malformed"))
        server = SASLServer("LOGIN")
        server.start(None)
        server.respond(b"alice")
        self.assertEqual(server.respond(b"\xff"), Failed("malformed"))
        server = SASLServer("LOGIN")
        server.start(None)
        server.respond(b"alice")
        self.assertEqual(server.cancel(), Failed("cancelled"))


class ScramTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.creds = make_credentials("pencil", 4096, RFC7677_SALT)

    def test_rfc7677_vector(self) -> None:
        """The server reproduces the RFC 7677 section 3 exchange byte for byte."""
        server = SASLServer("SCRAM-SHA-256", server_nonce=RFC7677_SERVER_NONCE)
        self.assertEqual(server.start(RFC7677_CLIENT_FIRST), NeedCredentials("user", ""))
        self.assertEqual(server.provide_credentials(self.creds), Challenge(RFC7677_SERVER_FIRST))
        self.assertEqual(server.respond(RFC7677_CLIENT_FINAL), Challenge(RFC7677_SERVER_FINAL))
        self.assertFalse(server.done)
        self.assertEqual(server.respond(b""), Succeeded("user", ""))
        self.assertTrue(server.done)

    def test_without_initial_response(self) -> None:
        """Without an initial response SCRAM starts with an empty challenge."""
        server = SASLServer("SCRAM-SHA-256", server_nonce=RFC7677_SERVER_NONCE)
        self.assertEqual(server.start(None), Challenge(b""))
        self.assertEqual(server.respond(RFC7677_CLIENT_FIRST), NeedCredentials("user", ""))

    def test_random_nonce_full_exchange(self) -> None:
        """With a random server nonce a correct client proof succeeds and the server signature matches."""
        server = SASLServer("SCRAM-SHA-256")
        server.start(b"y,,n=alice@example.test,r=abcdef")
        first = server.provide_credentials(make_credentials("s3cret", 4096))
        assert isinstance(first, Challenge)
        self.assertTrue(first.data.startswith(b"r=abcdef"))
        self.assertGreater(len(first.data.split(b",")[0]), len(b"r=abcdef") + 16)
        final, expected = scram_client_final("s3cret", b"n=alice@example.test,r=abcdef", first.data, b"y,,")
        self.assertEqual(server.respond(final), Challenge(expected))
        self.assertEqual(server.respond(b""), Succeeded("alice@example.test", ""))

    def test_wrong_password(self) -> None:
        """A proof made with a wrong password fails with "invalid"."""
        server = SASLServer("SCRAM-SHA-256")
        server.start(b"n,,n=user,r=abc")
        first = server.provide_credentials(self.creds)
        assert isinstance(first, Challenge)
        final, _ = scram_client_final("wrong", b"n=user,r=abc", first.data)
        self.assertEqual(server.respond(final), Failed("invalid"))

    def test_unknown_user_gets_fake_challenge(self) -> None:
        """An unknown user gets a well-formed server-first with a stable salt, then fails."""
        firsts = []
        for _ in range(2):
            server = SASLServer("SCRAM-SHA-256", server_nonce="xyz")
            self.assertEqual(server.start(b"n,,n=ghost,r=abc"), NeedCredentials("ghost", ""))
            first = server.provide_credentials(None)
            assert isinstance(first, Challenge)
            firsts.append(first.data)
            self.assertRegex(first.data, rb"^r=abcxyz,s=[A-Za-z0-9+/]{22}==,i=4096$")
            final, _ = scram_client_final("anything", b"n=ghost,r=abc", first.data)
            self.assertEqual(server.respond(final), Failed("invalid"))
        self.assertEqual(firsts[0], firsts[1])
        other = SASLServer("SCRAM-SHA-256", server_nonce="xyz")
        other.start(b"n,,n=phantom,r=abc")
        self.assertNotEqual(other.provide_credentials(None), Challenge(firsts[0]))

    def test_channel_binding_refused(self) -> None:
        """A client asking for channel binding ("p=") fails with "unsupported"."""
        server = SASLServer("SCRAM-SHA-256")
        self.assertEqual(server.start(b"p=tls-exporter,,n=user,r=abc"), Failed("unsupported"))

    def test_mandatory_extension_refused(self) -> None:
        """The reserved "m=" extension fails the exchange (RFC 5802 section 5.1)."""
        self.assertEqual(SASLServer("SCRAM-SHA-256").start(b"n,,m=ext,n=user,r=abc"), Failed("unsupported"))

    def test_saslname_escapes_and_authzid(self) -> None:
        """=2C and =3D decode in names; an authzid naming another user fails with "authzid"."""
        server = SASLServer("SCRAM-SHA-256")
        self.assertEqual(server.start(b"n,a=a=3Db,n=a=3Db,r=abc"), NeedCredentials("a=b", "a=b"))
        self.assertEqual(SASLServer("SCRAM-SHA-256").start(b"n,a=admin,n=user,r=abc"), Failed("authzid"))
        self.assertEqual(SASLServer("SCRAM-SHA-256").start(b"n,,n=a=2Cb,r=abc"), NeedCredentials("a,b", ""))
        self.assertEqual(SASLServer("SCRAM-SHA-256").start(b"n,,n=a=XXb,r=abc"), Failed("malformed"))

    def test_client_final_checks(self) -> None:
        """A changed nonce, a wrong channel-binding header or a bad proof is "malformed"."""
        good_prefix = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p="
        cases = [
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO-other,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            b"c=eSws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            good_prefix + b"AAAA",
            good_prefix + b"!!!",
            b"r=x",
            b"",
            b"c=biws,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        ]
        for case in cases:
            server = SASLServer("SCRAM-SHA-256", server_nonce=RFC7677_SERVER_NONCE)
            server.start(RFC7677_CLIENT_FIRST)
            server.provide_credentials(self.creds)
            self.assertEqual(server.respond(case), Failed("malformed"), case)

    def test_non_empty_final_ack(self) -> None:
        """After server-final, a non-empty client response is "malformed", not success."""
        server = SASLServer("SCRAM-SHA-256", server_nonce=RFC7677_SERVER_NONCE)
        server.start(RFC7677_CLIENT_FIRST)
        server.provide_credentials(self.creds)
        server.respond(RFC7677_CLIENT_FINAL)
        self.assertEqual(server.respond(b"junk"), Failed("malformed"))

    def test_client_first_malformed(self) -> None:
        """Broken client-first messages fail as "malformed"."""
        cases = [
            b"",
            b"n,,",
            b"x,,n=user,r=abc",
            b"n,,n=,r=abc",
            b"n,,n=user,r=",
            b"n,,r=abc,n=user",
            b"n,b,n=user,r=abc",
            b"n,,n=user,r=a\x00c",
            b"n,,n=\xff,r=abc",
        ]
        for case in cases:
            self.assertEqual(SASLServer("SCRAM-SHA-256").start(case), Failed("malformed"), case)

    def test_nonce_with_final_line_feed_refused(self) -> None:
        """
        A nonce is printable ASCII to its last octet: a final LF (which a
        ``$`` in the check let through) is "malformed" from the client, and
        a ValueError for the server's own nonce.  It used to be echoed in
        the middle of the server-first message.
        """
        for nonce in (b"abc\n", b"abc\r\n", b"abc\r", b"abc\t"):
            self.assertEqual(
                SASLServer("SCRAM-SHA-256").start(b"n,,n=user,r=" + nonce), Failed("malformed"), nonce
            )
        self.assertRaises(ValueError, SASLServer, "SCRAM-SHA-256", server_nonce="abc\n")

    def test_cancel_mid_exchange(self) -> None:
        """Cancelling after server-first ends the exchange."""
        server = SASLServer("SCRAM-SHA-256")
        server.start(RFC7677_CLIENT_FIRST)
        server.provide_credentials(self.creds)
        self.assertEqual(server.cancel(), Failed("cancelled"))


class StateTests(SynchronousTestCase):
    def test_unknown_mechanism(self) -> None:
        """An unknown mechanism name is a ValueError."""
        self.assertRaises(ValueError, SASLServer, "CRAM-MD5")

    def test_out_of_turn_calls_raise(self) -> None:
        """Answering a question that was not asked raises SASLStateError."""
        server = SASLServer("PLAIN")
        self.assertRaises(SASLStateError, server.respond, b"x")
        server.start(None)
        self.assertRaises(SASLStateError, server.password_checked, True)
        self.assertRaises(SASLStateError, server.provide_credentials, None)
        self.assertRaises(SASLStateError, server.start, None)

    def test_oversized_response(self) -> None:
        """A response above the size cap fails as "malformed"."""
        self.assertEqual(SASLServer("PLAIN").start(b"\x00a\x00" + b"p" * 10000), Failed("malformed"))

    def test_fuzz_never_raises(self) -> None:
        """Random client input gives an event for every mechanism and never raises."""
        rng = random.Random(4954)
        alphabet = b"nyp=,ar\x00cvs=2C3D" + bytes(range(256))
        creds = make_credentials("pw", 1000)
        for _ in range(300):
            for mechanism in MECHANISMS:
                server = SASLServer(mechanism)
                data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
                event = server.start(data)
                if isinstance(event, NeedCredentials):
                    event = server.provide_credentials(creds)
                if isinstance(event, Challenge) and not server.done:
                    event = server.respond(bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))))
                self.assertIsInstance(
                    event, Challenge | NeedPasswordCheck | NeedCredentials | Succeeded | Failed
                )


class SansIOTests(SynchronousTestCase):
    def test_no_twisted_import(self) -> None:
        """The sans-IO modules import nothing from twisted."""
        for module in (sasl, passwords):
            tree = ast.parse(inspect.getsource(module))
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or ""]
                for name in names:
                    self.assertFalse(name.split(".")[0] == "twisted", f"{module.__name__} imports {name}")
