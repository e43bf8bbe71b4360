"""
One sans-IO SASL server layer (RFC 4422) shared by SMTP AUTH (RFC 4954),
POP3 AUTH (RFC 5034) and IMAP AUTHENTICATE (RFC 3501 section 6.2.2, with
SASL-IR, RFC 4959).

Theory of operation
-------------------
A protocol session creates one :class:`SASLServer` per authentication
exchange and feeds it the client's decoded responses.  Each call returns
one event:

* :class:`Challenge` -- send ``data`` to the client (the protocol base64s
  it with :func:`encode_challenge` and frames it as ``334``/``+``) and
  feed the next client line to :meth:`SASLServer.respond`.
* :class:`NeedCredentials` -- SCRAM needs the stored verifier of a user;
  answer with :meth:`SASLServer.provide_credentials` (``None`` for an
  unknown user).
* :class:`NeedPasswordCheck` -- PLAIN/LOGIN got a password; answer with
  :meth:`SASLServer.password_checked`.
* :class:`Succeeded` / :class:`Failed` -- the exchange is over.

:class:`txmail.auth.authenticator.Authenticator` answers the two ``Need``
events from the directory, so protocols only ever see Challenge, Succeeded
and Failed from it.

Rules kept here:

* Input from the peer never raises: anything malformed gives
  ``Failed("malformed")``.  Misusing the API (answering a question that was
  not asked, calling after the end) raises :class:`SASLStateError`.
* Every mechanism here exchanges a password (or a proof of one), so none is
  offered without TLS unless policy allows it (:func:`available_mechanisms`;
  RFC 4954 section 4 and RFC 4616 section 6 on PLAIN over clear text).
* SCRAM answers an unknown user with a plausible server-first message whose
  salt is stable per user name, then fails, so that the exchange does not
  tell which users exist (RFC 5802 section 9 on user enumeration).

This module imports nothing from Twisted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal, get_args

from txmail.auth.passwords import DEFAULT_ITERATIONS, ScramCredentials, Secret

__all__ = [
    "MECHANISMS",
    "PLAINTEXT_POLICIES",
    "Challenge",
    "Failed",
    "NeedCredentials",
    "NeedPasswordCheck",
    "PlaintextPolicy",
    "SASLDecodeError",
    "SASLEvent",
    "SASLServer",
    "SASLStateError",
    "Succeeded",
    "available_mechanisms",
    "decode_response",
    "encode_challenge",
    "password_auth_allowed",
]

#: Mechanisms offered, strongest first.
MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "PLAIN", "LOGIN")

#: Whether passwords may travel without TLS (the ``plaintext_auth`` setting):
#: never, from the loopback interface only, or always.
PlaintextPolicy = Literal["never", "loopback", "always"]
#: The values of :data:`PlaintextPolicy`.
PLAINTEXT_POLICIES: tuple[PlaintextPolicy, ...] = get_args(PlaintextPolicy)

#: Longest client response accepted by any mechanism here (octets).
MAX_RESPONSE = 4096


def password_auth_allowed(*, tls: bool, plaintext_policy: PlaintextPolicy, loopback: bool) -> bool:
    """
    Return whether password authentication may run on this connection.

    Under TLS it always may.  Without TLS it may only when
    *plaintext_policy* is ``"always"``, or ``"loopback"`` and the peer is on
    the loopback interface.

    Raises:
        ValueError: *plaintext_policy* is not one of :data:`PLAINTEXT_POLICIES`.
    """
    if plaintext_policy not in PLAINTEXT_POLICIES:
        raise ValueError(f"unknown plaintext policy {plaintext_policy!r}")
    if tls:
        return True
    return plaintext_policy == "always" or (plaintext_policy == "loopback" and loopback)


def available_mechanisms(*, tls: bool, plaintext_policy: PlaintextPolicy, loopback: bool) -> tuple[str, ...]:
    """
    Return the SASL mechanisms to advertise: all of :data:`MECHANISMS`
    when :func:`password_auth_allowed`, else ``()`` (advertise nothing).

    SCRAM does not send the password itself, but an eavesdropper can still
    run an offline dictionary attack on the exchange, so it follows the same
    rule as PLAIN and LOGIN.
    """
    if password_auth_allowed(tls=tls, plaintext_policy=plaintext_policy, loopback=loopback):
        return MECHANISMS
    return ()


# -- events ----------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """Send *data* to the client (the protocol base64-encodes it)."""

    data: bytes


@dataclass(frozen=True)
class NeedPasswordCheck:
    """
    The client sent a user name and password (PLAIN, LOGIN): check them and
    answer with :meth:`SASLServer.password_checked`.
    """

    username: str
    authzid: str
    password: Secret[str]


@dataclass(frozen=True)
class NeedCredentials:
    """
    SCRAM needs the stored verifier of *username*: answer with
    :meth:`SASLServer.provide_credentials`.
    """

    username: str
    authzid: str


@dataclass(frozen=True)
class Succeeded:
    """Authentication succeeded for *username* (acting as *authzid*, if not empty)."""

    username: str
    authzid: str


@dataclass(frozen=True)
class Failed:
    """
    Authentication failed.

    Attributes:
        reason: for logs; protocols map it to their reply.  One of
            ``"invalid"`` (wrong user or password), ``"malformed"`` (the
            client broke the mechanism's syntax), ``"cancelled"`` (the
            client sent ``*``), ``"unsupported"`` (a feature we do not
            offer, such as SCRAM channel binding) or ``"authzid"`` (the
            client asked to act as another user).
    """

    reason: str


SASLEvent = Challenge | NeedPasswordCheck | NeedCredentials | Succeeded | Failed


class SASLDecodeError(ValueError):
    """A client response line is not valid base64 (the protocol replies with a syntax error)."""


class SASLStateError(RuntimeError):
    """The caller used a :class:`SASLServer` out of turn (a programming error)."""


# -- base64 framing ----------------------------------------------------------


def decode_response(line: bytes) -> bytes | None:
    """
    Decode one client response line (without its CRLF).

    ``*`` cancels the exchange (RFC 4954 section 4, RFC 3501 section 6.2.2,
    RFC 5034 section 4): ``None`` is returned.  ``=`` is the empty initial
    response of RFC 4954 / RFC 4959, and an empty line an empty response:
    both give ``b""``.

    Raises:
        SASLDecodeError: the line is not valid base64.
    """
    line = line.strip(b" \t\r\n")
    if line == b"*":
        return None
    if line in (b"", b"="):
        return b""
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise SASLDecodeError("invalid base64 in SASL response") from None


def encode_challenge(data: bytes) -> bytes:
    """Base64-encode a challenge; ``b""`` stays ``b""`` (sent as ``334`` / ``+`` and a space)."""
    return base64.b64encode(data) if data else b""


# -- mechanisms -------------------------------------------------------------

_START, _WAIT_RESPONSE, _WAIT_CHECK, _WAIT_CREDS, _WAIT_FINAL_ACK, _DONE = range(6)

# printable = %x21-2B / %x2D-7E  (RFC 5802 section 7: any printable ASCII but ",").
# Used with fullmatch: "$" would also match before a final LF, letting
# "r=abc\n" through into the server-first message.
_PRINTABLE_RE = re.compile(rb"[\x21-\x2b\x2d-\x7e]+")
# Per-process key for the fake salts given to unknown users.
_FAKE_SALT_KEY = secrets.token_bytes(32)


def _utf8(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text:
        return None
    return text


def _same_identity(authzid: str, authcid: str) -> bool:
    """RFC 4616 section 2: we only let a user act as themselves."""
    return authzid == "" or authzid.lower() == authcid.lower()


def _saslname(value: bytes) -> str | None:
    """
    Decode ``saslname = 1*(value-safe-char / "=2C" / "=3D")`` (RFC 5802
    section 7); ``None`` when malformed.
    """
    text = _utf8(value)
    if not text or "," in text:
        return None
    out = []
    i = 0
    while i < len(text):
        if text[i] == "=":
            esc = text[i : i + 3]
            if esc == "=2C":
                out.append(",")
            elif esc == "=3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class SASLServer:
    """
    The server side of one SASL exchange for one mechanism.

    Args:
        mechanism: one of :data:`MECHANISMS` (case-insensitive).
        server_nonce: for tests only: the SCRAM server nonce part to use
            instead of a random one.

    Raises:
        ValueError: the mechanism is unknown.
    """

    def __init__(self, mechanism: str, *, server_nonce: str | None = None) -> None:
        mechanism = mechanism.upper()
        if mechanism not in MECHANISMS:
            raise ValueError(f"unknown SASL mechanism {mechanism!r}")
        self.mechanism = mechanism
        self._state = _START
        self._username = ""
        self._authzid = ""
        # SCRAM state
        self._server_nonce = server_nonce if server_nonce is not None else secrets.token_urlsafe(18)
        try:
            nonce_bytes = self._server_nonce.encode("ascii")
        except UnicodeEncodeError:
            nonce_bytes = b""
        if not _PRINTABLE_RE.fullmatch(nonce_bytes):
            raise ValueError("server nonce must be printable ASCII without ','")
        self._gs2_header = b""
        self._client_first_bare = b""
        self._nonce = b""
        self._server_first = b""
        self._creds: ScramCredentials | None = None

    @property
    def username(self) -> str:
        """The user name the client gave so far (``""`` before it did), for logs."""
        return self._username

    @property
    def done(self) -> bool:
        """Whether the exchange has ended (Succeeded or Failed was returned)."""
        return self._state == _DONE

    # -- public API --

    def start(self, initial_response: bytes | None) -> SASLEvent:
        """
        Begin the exchange.

        Args:
            initial_response: the decoded initial response (SASL-IR, ``AUTH
                PLAIN <b64>``), ``b""`` for an empty one, or ``None`` when the
                client sent none.

        Returns:
            The first event; a :class:`Challenge` when the client must
            send (first) data: ``b""`` for PLAIN and SCRAM, ``b"Username:"``
            for LOGIN.
        """
        self._expect(_START)
        if initial_response is None:
            self._state = _WAIT_RESPONSE
            if self.mechanism == "LOGIN":
                # draft-murchison-sasl-login section 2: the server asks "Username:".
                return Challenge(b"Username:")
            return Challenge(b"")
        self._state = _WAIT_RESPONSE
        return self._dispatch(initial_response)

    def respond(self, data: bytes) -> SASLEvent:
        """Feed the client's decoded response to the last :class:`Challenge`."""
        if self._state == _WAIT_FINAL_ACK:
            # RFC 5802 section 5: after server-final the client sends an
            # empty response (RFC 4422 section 3.6 "additional data").
            if data:
                return self._fail("malformed")
            self._state = _DONE
            return Succeeded(self._username, self._authzid)
        self._expect(_WAIT_RESPONSE)
        return self._dispatch(data)

    def cancel(self) -> Failed:
        """The client cancelled (sent ``*``); the exchange ends."""
        self._state = _DONE
        return Failed("cancelled")

    def password_checked(self, ok: bool) -> SASLEvent:
        """Answer a :class:`NeedPasswordCheck`: whether the password is right."""
        self._expect(_WAIT_CHECK)
        if not ok:
            return self._fail("invalid")
        self._state = _DONE
        return Succeeded(self._username, self._authzid)

    def provide_credentials(self, creds: ScramCredentials | None) -> SASLEvent:
        """
        Answer a :class:`NeedCredentials` with the user's stored verifier, or
        ``None`` for an unknown user (a fake challenge follows, then Failed).
        """
        self._expect(_WAIT_CREDS)
        self._creds = creds
        if creds is None:
            salt = hmac.digest(_FAKE_SALT_KEY, self._username.lower().encode("utf-8"), "sha256")[:16]
            iterations = DEFAULT_ITERATIONS
        else:
            salt, iterations = creds.salt, creds.iterations
        self._server_first = b"r=%s,s=%s,i=%d" % (self._nonce, base64.b64encode(salt), iterations)
        self._state = _WAIT_RESPONSE
        return Challenge(self._server_first)

    # -- internals --

    def _expect(self, state: int) -> None:
        if self._state != state:
            raise SASLStateError(f"SASL {self.mechanism} exchange is not waiting for that call")

    def _fail(self, reason: str) -> Failed:
        self._state = _DONE
        return Failed(reason)

    def _dispatch(self, data: bytes) -> SASLEvent:
        if len(data) > MAX_RESPONSE:
            return self._fail("malformed")
        if self.mechanism == "PLAIN":
            return self._plain(data)
        if self.mechanism == "LOGIN":
            return self._login(data)
        if self._server_first:
            return self._scram_client_final(data)
        return self._scram_client_first(data)

    def _need_check(self, password: str) -> NeedPasswordCheck:
        self._state = _WAIT_CHECK
        return NeedPasswordCheck(self._username, self._authzid, Secret(password))

    def _plain(self, data: bytes) -> SASLEvent:
        """
        ``message = [authzid] UTF8NUL authcid UTF8NUL passwd`` (RFC 4616 section 2).
        """
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return self._fail("malformed")
        authzid, authcid, passwd = (_utf8(p) for p in parts)
        if authzid is None or not authcid or not passwd:
            return self._fail("malformed")
        if not _same_identity(authzid, authcid):
            return self._fail("authzid")
        self._username, self._authzid = authcid, authzid
        return self._need_check(passwd)

    def _login(self, data: bytes) -> SASLEvent:
        """LOGIN (draft-murchison-sasl-login): the user name, then the password."""
        text = _utf8(data)
        if not text:
            return self._fail("malformed")
        if not self._username:
            self._username = text
            return Challenge(b"Password:")
        return self._need_check(text)

    def _scram_client_first(self, data: bytes) -> SASLEvent:
        """
        ``client-first-message = gs2-header client-first-message-bare`` with
        ``gs2-header = gs2-cbind-flag "," [ authzid ] ","`` and
        ``client-first-message-bare = [reserved-mext ","] username "," nonce
        ["," extensions]`` (RFC 5802 section 7).
        """
        fields = data.split(b",")
        if len(fields) < 4:
            return self._fail("malformed")
        cbind, authz = fields[0], fields[1]
        if cbind.startswith(b"p="):
            # Channel binding (SCRAM-SHA-256-PLUS) is not offered.
            # TODO(RFC 5802 section 6, RFC 9266): tls-exporter channel binding.
            return self._fail("unsupported")
        if cbind not in (b"n", b"y"):
            # "y": the client supports channel binding but thinks we do not,
            # which is true: fine as long as no -PLUS mechanism is offered.
            return self._fail("malformed")
        authzid = ""
        if authz:
            if not authz.startswith(b"a="):
                return self._fail("malformed")
            decoded = _saslname(authz[2:])
            if decoded is None:
                return self._fail("malformed")
            authzid = decoded
        bare = fields[2:]
        if bare[0].startswith(b"m="):
            # RFC 5802 section 5.1: an unknown mandatory extension MUST fail.
            return self._fail("unsupported")
        if not bare[0].startswith(b"n=") or not bare[1].startswith(b"r="):
            return self._fail("malformed")
        username = _saslname(bare[0][2:])
        client_nonce = bare[1][2:]
        if not username or not _PRINTABLE_RE.fullmatch(client_nonce):
            return self._fail("malformed")
        if not _same_identity(authzid, username):
            return self._fail("authzid")
        self._gs2_header = cbind + b"," + authz + b","
        self._client_first_bare = b",".join(bare)
        self._nonce = client_nonce + self._server_nonce.encode("ascii")
        self._username, self._authzid = username, authzid
        self._state = _WAIT_CREDS
        return NeedCredentials(username, authzid)

    def _scram_client_final(self, data: bytes) -> SASLEvent:
        """
        ``client-final-message = client-final-message-without-proof "," proof``
        with ``client-final-message-without-proof = channel-binding "," nonce
        ["," extensions]`` (RFC 5802 section 7); the proof is checked as in
        section 3.
        """
        without_proof, sep, proof_field = data.rpartition(b",")
        if not sep or not proof_field.startswith(b"p="):
            return self._fail("malformed")
        fields = without_proof.split(b",")
        if len(fields) < 2 or not fields[0].startswith(b"c=") or not fields[1].startswith(b"r="):
            return self._fail("malformed")
        try:
            cbind_input = base64.b64decode(fields[0][2:], validate=True)
            proof = base64.b64decode(proof_field[2:], validate=True)
        except (binascii.Error, ValueError):
            return self._fail("malformed")
        # Without channel binding, c= carries exactly the gs2-header the
        # client sent first (RFC 5802 section 6).
        if not hmac.compare_digest(cbind_input, self._gs2_header):
            return self._fail("malformed")
        if not hmac.compare_digest(fields[1][2:], self._nonce):
            return self._fail("malformed")
        if len(proof) != hashlib.sha256().digest_size:
            return self._fail("malformed")
        creds = self._creds
        if creds is None:
            # The unknown user's fake exchange ends here.
            return self._fail("invalid")
        auth_message = self._client_first_bare + b"," + self._server_first + b"," + without_proof
        client_signature = hmac.digest(creds.stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), creds.stored_key):
            return self._fail("invalid")
        server_signature = hmac.digest(creds.server_key, auth_message, "sha256")
        self._state = _WAIT_FINAL_ACK
        return Challenge(b"v=" + base64.b64encode(server_signature))
