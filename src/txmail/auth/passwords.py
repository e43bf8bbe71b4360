"""
Password storage: salted SCRAM-SHA-256 verifiers, SASLprep, and a redacted
:class:`Secret` wrapper.

Implementation notes
--------------------
* What is stored is the SCRAM-SHA-256 verifier of RFC 5802 section 3 with
  the hash of RFC 7677: a random salt, an iteration count, ``StoredKey =
  H(HMAC(SaltedPassword, "Client Key"))`` and ``ServerKey =
  HMAC(SaltedPassword, "Server Key")``.  Neither key gives the password
  back; the same verifier serves SCRAM (the client proves knowledge of the
  password) and PLAIN/LOGIN (:func:`verify_password` derives the keys again
  and compares).
* Passwords are prepared with SASLprep (RFC 4013) before hashing, as RFC
  5802 section 2.2 asks: non-ASCII spaces become SPACE, "commonly mapped to
  nothing" characters go, the result is NFKC-normalised and prohibited
  characters are refused.  The tables are the stdlib :mod:`stringprep`
  ones (Unicode 3.2, as RFC 3454 specifies), and normalisation uses
  ``unicodedata.ucd_3_2_0`` to match.
* PBKDF2 is CPU work (milliseconds at 4096 iterations); callers on the
  reactor thread run :func:`verify_password` and :func:`make_credentials`
  through their ``run_blocking`` thread pool.

This module is pure: no Twisted import, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import stringprep
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, AnyStr, Generic

__all__ = [
    "DEFAULT_ITERATIONS",
    "ScramCredentials",
    "Secret",
    "make_credentials",
    "salted_password",
    "saslprep",
    "scram_keys",
    "verify_password",
]

#: The iteration count RFC 7677 section 4 asks for at least.
DEFAULT_ITERATIONS = 4096

_SALT_SIZE = 16
_MAX_ITERATIONS = 10_000_000


@dataclass(frozen=True)
class ScramCredentials:
    """
    A stored SCRAM-SHA-256 verifier (RFC 5802 section 3, RFC 7677).

    The keys are left out of ``repr``: they are not the password, but the
    ``ServerKey`` lets its holder impersonate the server to a client.

    Attributes:
        salt: the random salt given to PBKDF2.
        iterations: the PBKDF2 iteration count.
        stored_key: ``H(ClientKey)``.
        server_key: ``HMAC(SaltedPassword, "Server Key")``.
    """

    salt: bytes
    iterations: int
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (byte values as base64 text)."""
        return {
            "salt": base64.b64encode(self.salt).decode("ascii"),
            "iterations": self.iterations,
            "stored_key": base64.b64encode(self.stored_key).decode("ascii"),
            "server_key": base64.b64encode(self.server_key).decode("ascii"),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ScramCredentials:
        """
        Build credentials from :meth:`to_dict` output.

        Raises:
            ValueError: a key is missing or a value is invalid.
        """
        try:
            iterations = data["iterations"]
            salt = _b64(data["salt"])
            stored_key = _b64(data["stored_key"])
            server_key = _b64(data["server_key"])
        except (KeyError, TypeError) as e:
            raise ValueError(f"invalid SCRAM credentials: missing or bad {e}") from None
        if (
            not isinstance(iterations, int)
            or isinstance(iterations, bool)
            or not 1 <= iterations <= _MAX_ITERATIONS
        ):
            raise ValueError("invalid SCRAM credentials: bad iteration count")
        if not salt or len(stored_key) != 32 or len(server_key) != 32:
            raise ValueError("invalid SCRAM credentials: bad salt or key length")
        return cls(salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key)


def _b64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise ValueError("invalid SCRAM credentials: base64 text expected")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("invalid SCRAM credentials: bad base64") from None


class Secret(Generic[AnyStr]):
    """
    A secret value (a password) whose ``repr`` and ``str`` are redacted.

    Wrapping passwords keeps them out of logs, tracebacks and exception
    messages by accident; the value is only reachable through
    :meth:`reveal`.  Equality is a constant-time comparison.
    """

    __slots__ = ("_value",)

    def __init__(self, value: AnyStr) -> None:
        self._value: AnyStr = value

    def reveal(self) -> AnyStr:
        """Return the wrapped value."""
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret) or type(other._value) is not type(self._value):
            return NotImplemented
        a, b = self._value, other._value
        if isinstance(a, str):
            return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
        return hmac.compare_digest(a, b)

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        # Pickling would copy the secret somewhere we do not control.
        raise TypeError("Secret values cannot be pickled")


def _in_prohibited(ch: str) -> bool:
    """The prohibited output of RFC 4013 section 2.3 (RFC 3454 tables C.*)."""
    return (
        stringprep.in_table_c12(ch)
        or stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
    )


def saslprep(value: str, *, allow_unassigned: bool = False) -> str:
    """
    Prepare *value* with the SASLprep profile of stringprep (RFC 4013).

    Args:
        value: the string to prepare.
        allow_unassigned: ``True`` for a "query" (a string compared to a
            stored one), ``False`` for a "stored string" (RFC 3454 section 7):
            unassigned code points (table A.1) are then refused.

    Returns:
        The prepared string.

    Raises:
        ValueError: *value* contains a prohibited character (RFC 4013
            section 2.3), violates the bidi rule (section 2.4, RFC 3454
            section 6) or, for a stored string, an unassigned code point.
    """
    # RFC 4013 section 2.1: map non-ASCII space (C.1.2) to SPACE, and
    # "commonly mapped to nothing" (B.1) to nothing.
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else ch for ch in value if not stringprep.in_table_b1(ch)
    )
    # Section 2.2: Unicode normalisation form KC, of Unicode 3.2.
    normalized = unicodedata.ucd_3_2_0.normalize("NFKC", mapped)
    if not normalized:
        return normalized
    for ch in normalized:
        if _in_prohibited(ch):
            raise ValueError(f"prohibited character U+{ord(ch):04X}")
        if not allow_unassigned and stringprep.in_table_a1(ch):
            raise ValueError(f"unassigned code point U+{ord(ch):04X}")
    # Section 2.4 / RFC 3454 section 6: bidirectional characters.
    rand_al = [stringprep.in_table_d1(ch) for ch in normalized]
    if any(rand_al):
        if any(stringprep.in_table_d2(ch) for ch in normalized):
            raise ValueError("string mixes left-to-right and right-to-left characters")
        if not (rand_al[0] and rand_al[-1]):
            raise ValueError("right-to-left string must start and end with a right-to-left character")
    return normalized


def salted_password(password: str, salt: bytes, iterations: int, *, allow_unassigned: bool = True) -> bytes:
    """
    ``SaltedPassword := Hi(Normalize(password), salt, i)`` (RFC 5802 section 3),
    with ``Hi`` = PBKDF2-HMAC-SHA-256.

    Raises:
        ValueError: SASLprep refuses the password.
    """
    prepared = saslprep(password, allow_unassigned=allow_unassigned)
    return hashlib.pbkdf2_hmac("sha256", prepared.encode("utf-8"), salt, iterations)


def scram_keys(salted: bytes) -> tuple[bytes, bytes]:
    """Return ``(StoredKey, ServerKey)`` for a SaltedPassword (RFC 5802 section 3)."""
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return stored_key, server_key


def make_credentials(
    password: str, iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
) -> ScramCredentials:
    """
    Derive the stored SCRAM-SHA-256 verifier for *password*.

    Args:
        password: the password; SASLprep'd as a stored string.
        iterations: the PBKDF2 iteration count (RFC 7677 asks for >= 4096).
        salt: a salt to use (for test vectors); default 16 random bytes.

    Raises:
        ValueError: the password is empty, or SASLprep refuses it.
    """
    if not isinstance(password, str):
        raise TypeError("password must be str")
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ValueError("iterations out of range")
    if salt is None:
        salt = secrets.token_bytes(_SALT_SIZE)
    if not salt:
        raise ValueError("salt must not be empty")
    if not saslprep(password):
        raise ValueError("password is empty")
    salted = salted_password(password, salt, iterations, allow_unassigned=False)
    stored_key, server_key = scram_keys(salted)
    return ScramCredentials(salt=salt, iterations=iterations, stored_key=stored_key, server_key=server_key)


def verify_password(creds: ScramCredentials, password: str) -> bool:
    """
    Return whether *password* matches the stored verifier *creds* (for PLAIN,
    LOGIN, POP3 PASS and IMAP LOGIN).

    The comparison is constant-time.  A password SASLprep refuses never
    matches (it could not have been stored).
    """
    try:
        salted = salted_password(password, creds.salt, creds.iterations, allow_unassigned=True)
    except (ValueError, TypeError):
        return False
    stored_key, _ = scram_keys(salted)
    return hmac.compare_digest(stored_key, creds.stored_key)
