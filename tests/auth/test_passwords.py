"""Tests for txmail.auth.passwords: SCRAM verifiers, SASLprep and Secret."""

from __future__ import annotations

import base64
import io
import json
import pickle
import traceback

from twisted.logger import Logger, eventAsText, formatEvent
from twisted.trial.unittest import SynchronousTestCase

from txmail.auth.passwords import (
    ScramCredentials,
    Secret,
    make_credentials,
    saslprep,
    verify_password,
)

# RFC 7677 section 3: password "pencil", salt, 4096 iterations.
RFC7677_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")


class ScramCredentialsTests(SynchronousTestCase):
    def test_derivation_matches_rfc7677_vector(self) -> None:
        """The verifier for "pencil" with the RFC 7677 salt yields the RFC's server signature."""
        import hmac

        creds = make_credentials("pencil", 4096, RFC7677_SALT)
        auth_message = (
            b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
        )
        signature = hmac.digest(creds.server_key, auth_message, "sha256")
        self.assertEqual(base64.b64encode(signature), b"6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")

    def test_verify_password(self) -> None:
        """verify_password accepts the right password and refuses others."""
        creds = make_credentials("correct horse", iterations=1000)
        self.assertTrue(verify_password(creds, "correct horse"))
        self.assertFalse(verify_password(creds, "correct horsE"))
        self.assertFalse(verify_password(creds, ""))
        self.assertFalse(verify_password(creds, "bad\x07char"))

    def test_random_salt(self) -> None:
        """Two verifiers of one password differ (random salt) and both verify."""
        a = make_credentials("same", iterations=1000)
        b = make_credentials("same", iterations=1000)
        self.assertNotEqual(a.salt, b.salt)
        self.assertNotEqual(a.stored_key, b.stored_key)
        self.assertTrue(verify_password(a, "same") and verify_password(b, "same"))

    def test_saslprep_applied_to_password(self) -> None:
        """A password is SASLprep'd: a soft hyphen vanishes and a roman numeral normalises."""
        creds = make_credentials("I\u00adX", iterations=1000)
        self.assertTrue(verify_password(creds, "IX"))
        creds = make_credentials("\u2168", iterations=1000)
        self.assertTrue(verify_password(creds, "IX"))

    def test_rejects_prohibited_and_empty(self) -> None:
        """make_credentials refuses prohibited characters and empty passwords with ValueError."""
        for bad in ["\x07", "a\u0000b", "", "\u00ad", "\ufffe"]:
            self.assertRaises(ValueError, make_credentials, bad, 1000)

    def test_dict_round_trip_json(self) -> None:
        """to_dict is JSON text that from_dict restores exactly, holding no password."""
        creds = make_credentials("pencil", 1000)
        text = json.dumps(creds.to_dict())
        self.assertNotIn("pencil", text)
        self.assertEqual(ScramCredentials.from_dict(json.loads(text)), creds)

    def test_from_dict_rejects_bad_data(self) -> None:
        """from_dict raises ValueError on missing keys, bad base64 and bad iteration counts."""
        good = make_credentials("pencil", 1000).to_dict()
        cases = [
            {},
            {**good, "salt": "!!"},
            {**good, "iterations": 0},
            {**good, "iterations": True},
            {**good, "iterations": "4096"},
            {**good, "stored_key": base64.b64encode(b"short").decode()},
            {**good, "server_key": 5},
        ]
        for case in cases:
            self.assertRaises(ValueError, ScramCredentials.from_dict, case)

    def test_repr_hides_keys(self) -> None:
        """The repr of credentials shows no key material."""
        creds = make_credentials("pencil", 1000)
        text = repr(creds)
        self.assertNotIn(repr(creds.stored_key), text)
        self.assertNotIn(repr(creds.server_key), text)


class SASLprepTests(SynchronousTestCase):
    def test_rfc4013_examples(self) -> None:
        """The examples of RFC 4013 section 3 give their documented results."""
        self.assertEqual(saslprep("I\u00adX"), "IX")
        self.assertEqual(saslprep("user"), "user")
        self.assertEqual(saslprep("USER"), "USER")
        self.assertEqual(saslprep("\u00aa"), "a")
        self.assertEqual(saslprep("\u2168"), "IX")
        self.assertRaises(ValueError, saslprep, "\u0007")
        self.assertRaises(ValueError, saslprep, "\u0627\u0031")

    def test_non_ascii_space_mapped(self) -> None:
        """A no-break space becomes an ordinary space (RFC 4013 section 2.1)."""
        self.assertEqual(saslprep("a\u00a0b"), "a b")

    def test_bidi_rules(self) -> None:
        """A right-to-left string is fine; mixing RandALCat with LCat is refused."""
        self.assertEqual(saslprep("\u0627\u0628"), "\u0627\u0628")
        self.assertRaises(ValueError, saslprep, "\u0627a\u0628")

    def test_unassigned_only_in_queries(self) -> None:
        """Unassigned code points are refused for stored strings and allowed for queries."""
        unassigned = "\u0221"  # unassigned in Unicode 3.2
        self.assertRaises(ValueError, saslprep, unassigned)
        self.assertEqual(saslprep(unassigned, allow_unassigned=True), unassigned)


class SecretTests(SynchronousTestCase):
    def test_repr_and_str_redacted(self) -> None:
        """repr, str and format of a Secret never show the value."""
        secret = Secret("hunter2")
        self.assertEqual(repr(secret), "Secret(***)")
        self.assertEqual(str(secret), "Secret(***)")
        self.assertEqual(f"{secret}", "Secret(***)")
        self.assertEqual(secret.reveal(), "hunter2")
        self.assertEqual(Secret(b"x").reveal(), b"x")

    def test_redacted_in_exception_and_traceback(self) -> None:
        """An exception built from a Secret, and its traceback, do not contain the value."""
        secret = Secret("hunter2")
        try:
            raise ValueError(f"login failed with {secret}", secret)
        except ValueError:
            text = traceback.format_exc()
        self.assertIn("Secret(***)", text)
        self.assertNotIn("hunter2", text)

    def test_redacted_in_log(self) -> None:
        """A Secret logged as a field formats redacted."""
        events: list[dict[str, object]] = []
        log = Logger(observer=events.append)
        log.info("password is {password}", password=Secret("hunter2"))
        self.assertEqual(formatEvent(events[0]), "password is Secret(***)")
        self.assertNotIn("hunter2", eventAsText(events[0]))

    def test_equality_and_no_pickle(self) -> None:
        """Secrets compare by value and refuse to be pickled."""
        self.assertEqual(Secret("a"), Secret("a"))
        self.assertNotEqual(Secret("a"), Secret("b"))
        self.assertNotEqual(Secret("a"), "a")
        self.assertRaises(TypeError, pickle.dump, Secret("a"), io.BytesIO())
