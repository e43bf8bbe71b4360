"""
The sans-IO POP3 server session (RFC 1939), with RFC 2449 CAPA and response
codes, RFC 2595 STLS and RFC 5034 SASL AUTH; and :class:`MessageEncoder`,
which frames a stored message for RETR and TOP.

Theory of operation
-------------------
The session has the h11/h2 shape of :mod:`txmail.smtp.session`::

    session = POP3Session()
    transport.write(session.data_to_send())          # the +OK greeting
    session.receive_data(bytes_from_network)
    while (event := session.next_event()) is not None:
        ...                                           # maybe session.accept(...)
    transport.write(session.data_to_send())

* The session answers what it can by itself (syntax, state, STAT, LIST,
  UIDL, DELE, RSET, NOOP, CAPA) into an output buffer.
* Events that need the application (:mod:`txmail.pop3.events`) **pause**
  the session: nothing more is parsed until ``accept``/``reject``.  So
  pipelined commands (RFC 2449 PIPELINING) are answered in order.
* States (RFC 1939 section 3) are :class:`State`; which command is allowed
  where is the data :data:`ALLOWED_STATES`.  A command in another state gets
  ``-ERR`` and the session goes on.

Invariants and policies
-----------------------
* Message numbers are fixed for the session (RFC 1939 section 5): they index
  the :class:`~txmail.pop3.events.Maildrop` snapshot taken at login.  Mail
  that arrives later is not seen until the next session.
* DELE only marks; deleted messages are hidden from STAT, LIST and UIDL and
  refused by RETR, TOP, DELE and LIST/UIDL *n*.  RSET unmarks.  Nothing is
  changed in the store before QUIT in TRANSACTION state
  (:class:`~txmail.pop3.events.Update`): a dropped connection changes
  nothing.
* ``\\Seen``: a message retrieved whole with RETR is flagged ``\\Seen`` at
  QUIT (as Dovecot does unless ``pop3_no_flag_updates``); TOP does not set
  it.  Like deletions, this happens only in the UPDATE state, so a dropped
  connection leaves every flag as it was.
* UIDL values (RFC 1939 section 7) are :func:`uidl`: the UID and the
  UIDVALIDITY as 8 upper-case hex digits each (Dovecot's
  ``pop3_uidl_format = %08Xu%08Xv``): stable across sessions and restarts,
  unique per maildrop, and 16 characters of the allowed ``0x21-0x7E``.
* Lines: a command line may hold ``max_line_length`` octets including CRLF
  (RFC 2449 section 4: 255).  The AUTH command and SASL responses may hold
  :data:`MAX_AUTH_LINE` octets.  A longer line is discarded up to its CRLF
  and answered ``-ERR``.
* USER/PASS and AUTH follow the same plaintext policy as SMTP AUTH
  (:func:`txmail.auth.sasl.password_auth_allowed`): when it forbids them they
  are answered ``-ERR [AUTH]`` and CAPA lists neither USER nor SASL.
* APOP is not supported (it needs the clear-text password stored).
* STLS (RFC 2595 section 4): after the command nothing more is parsed;
  bytes the client pipelined behind it are kept in :attr:`trailing_data`
  and dropped by ``accept`` (the command injection of CVE-2011-0411).
  After TLS any USER given before is forgotten.
* Protocol errors are counted; past ``max_bad_commands`` the session answers
  ``-ERR`` and closes.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from txmail._session import MAX_AUTH_LINE, LineSession
from txmail.auth import sasl
from txmail.auth.passwords import Secret
from txmail.pop3.events import (
    AuthStep,
    ConnectionClosing,
    Event,
    Login,
    Maildrop,
    PasswordCheck,
    Retrieve,
    StartTLS,
    Update,
)

__all__ = [
    "ALLOWED_STATES",
    "AUTH_FAILED",
    "IN_USE",
    "MAX_AUTH_LINE",
    "MAX_LINE_LENGTH",
    "NO_SUCH_MESSAGE",
    "SYS_TEMP",
    "MessageEncoder",
    "POP3Session",
    "Response",
    "State",
    "uidl",
]

#: RFC 2449 section 4: command lines are at most 255 octets including CRLF.
MAX_LINE_LENGTH = 255


@dataclass(frozen=True)
class Response:
    """
    A one-line status response: ``+OK text`` or ``-ERR [CODE] text``.

    Attributes:
        ok: ``+OK`` or ``-ERR``.
        text: the human-readable text.
        code: an RFC 2449 section 8 response code (``"IN-USE"``, ``"AUTH"``,
            ``"SYS/TEMP"``) or ``None``.
    """

    ok: bool
    text: str
    code: str | None = None

    def to_bytes(self) -> bytes:
        """The response line with its CRLF."""
        status = "+OK" if self.ok else "-ERR"
        code = f" [{self.code}]" if self.code else ""
        text = f" {self.text}" if self.text else ""
        return f"{status}{code}{text}\r\n".encode()


def _err(text: str, code: str | None = None) -> Response:
    return Response(False, text, code)


#: The password or SASL exchange failed (RFC 3206 section 4, AUTH-RESP-CODE).
AUTH_FAILED = _err("Authentication failed", "AUTH")
#: Another session holds the maildrop (RFC 2449 section 8.1.1).
IN_USE = _err("Maildrop is locked by another session", "IN-USE")
#: A temporary server-side failure (RFC 3206 section 5).
SYS_TEMP = _err("Temporary server failure, try again later", "SYS/TEMP")
#: The message does not exist (anymore).
NO_SUCH_MESSAGE = _err("No such message")

_PLAINTEXT_DISALLOWED = _err("Plaintext authentication disallowed on non-secure connections", "AUTH")
_UNKNOWN_COMMAND = _err("Unknown command")
_WRONG_STATE = _err("Command not valid in this state")
_SYNTAX = _err("Syntax error in arguments")
_LINE_TOO_LONG = _err("Line too long")
_TOO_MANY_ERRORS = _err("Too many errors, closing connection")
_TIMEOUT = _err("Disconnected for inactivity")
_SHUTDOWN = _err("Server shutting down")
_DELETED = _err("Message is deleted")
_BAD_BASE64 = _err("Invalid base64 data")
_CANCELLED = _err("Authentication cancelled")
_UNKNOWN_MECHANISM = _err("Unsupported authentication mechanism")
_NO_USER = _err("No user name given: use USER first")
_TLS_ACTIVE = _err("TLS is already active")
_TLS_UNAVAILABLE = _err("TLS is not available")
_APOP = _err("APOP is not supported")


def uidl(uidvalidity: int, uid: int) -> str:
    """
    The UIDL unique-id of a message (RFC 1939 section 7): its UID then the
    mailbox's UIDVALIDITY, each as 8 upper-case hex digits, like Dovecot's
    ``pop3_uidl_format = %08Xu%08Xv``.
    """
    return f"{uid:08X}{uidvalidity:08X}"


class State(enum.Enum):
    """Where the session is (RFC 1939 section 3)."""

    AUTHORIZATION = "authorization"
    #: Inside an AUTH exchange: lines are SASL responses (RFC 5034 section 4).
    AUTH = "auth"
    TRANSACTION = "transaction"
    #: QUIT in TRANSACTION: the application is applying the deletions.
    UPDATE = "update"
    CLOSED = "closed"


_AUTHZ = frozenset({State.AUTHORIZATION})
_TRANS = frozenset({State.TRANSACTION})
_BOTH = frozenset({State.AUTHORIZATION, State.TRANSACTION})

#: The state table: where each command is allowed (RFC 1939 sections 4-7,
#: RFC 2449 section 5, RFC 2595 section 4, RFC 5034 section 4).
ALLOWED_STATES: dict[str, frozenset[State]] = {
    "USER": _AUTHZ,
    "PASS": _AUTHZ,
    "APOP": _AUTHZ,
    "AUTH": _AUTHZ,
    "STLS": _AUTHZ,
    "CAPA": _BOTH,
    "QUIT": _BOTH,
    "NOOP": _TRANS,
    "STAT": _TRANS,
    "LIST": _TRANS,
    "RETR": _TRANS,
    "DELE": _TRANS,
    "RSET": _TRANS,
    "TOP": _TRANS,
    "UIDL": _TRANS,
}


class POP3Session(LineSession[Event, Response]):
    """
    One POP3 server connection, without I/O.  The line, event and SASL
    plumbing is :class:`txmail._session.LineSession`'s.

    Args:
        tls_available: STLS can be offered (a TLS context exists and the
            transport can start TLS).
        tls_active: the connection already runs TLS (implicit TLS, port 995).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``: whether
            passwords may be sent without TLS.
        loopback: the client is on the loopback interface.
        max_line_length: octets of a command line including CRLF.
        max_bad_commands: protocol errors tolerated before closing.
        sasl_factory: makes the :class:`txmail.auth.sasl.SASLServer` of an
            AUTH exchange (tests inject a fixed nonce).

    Attributes:
        state: the :class:`State`.
        tls: the connection runs TLS.
        user: the canonical user once logged in, else ``None``.
        bad_commands: protocol errors so far.
    """

    CLOSED_STATE = State.CLOSED
    AUTH_STATE = State.AUTH
    AUTH_DONE_STATE = State.AUTHORIZATION
    STARTTLS_EVENT = StartTLS
    CLOSING_EVENT = ConnectionClosing
    LINE_TOO_LONG_REPLY = _LINE_TOO_LONG
    TOO_MANY_ERRORS_REPLY = _TOO_MANY_ERRORS
    TIMEOUT_REPLY = _TIMEOUT
    SHUTDOWN_REPLY = _SHUTDOWN
    UNKNOWN_COMMAND_REPLY = _UNKNOWN_COMMAND
    AUTH_BAD_BASE64_REPLY = _BAD_BASE64
    AUTH_CANCELLED_REPLY = _CANCELLED
    AUTH_FAILED_REPLY = AUTH_FAILED

    def __init__(
        self,
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        loopback: bool = False,
        max_line_length: int = MAX_LINE_LENGTH,
        max_bad_commands: int = 20,
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
    ) -> None:
        super().__init__(
            tls_available=tls_available,
            tls_active=tls_active,
            plaintext_auth=plaintext_auth,
            loopback=loopback,
            sasl_factory=sasl_factory,
        )
        self.max_line_length = max_line_length
        self.max_bad_commands = max_bad_commands

        self.state = State.AUTHORIZATION
        self.user: str | None = None
        self._username: str | None = None  # from USER, awaiting PASS
        self._maildrop: Maildrop | None = None
        self._deleted: set[int] = set()  # message numbers
        self._seen: set[int] = set()  # message numbers retrieved whole

        self._send(Response(True, "txmail POP3 server ready"))

    # -- public API ------------------------------------------------------------

    @property
    def maildrop(self) -> Maildrop | None:
        """The snapshot taken at login, or ``None`` before."""
        return self._maildrop

    def message(self, number: int) -> tuple[int, int] | None:
        """
        The UID and size of message *number* of the snapshot, or ``None``
        when there is none such (not logged in, out of range, or marked
        deleted) -- what RETR *number* would retrieve.
        """
        messages = self._maildrop.messages if self._maildrop is not None else ()
        if self.state is not State.TRANSACTION or not 1 <= number <= len(messages) or number in self._deleted:
            return None
        return messages[number - 1]

    def password_allowed(self) -> bool:
        """USER/PASS and AUTH may run on this connection (the plaintext policy)."""
        return sasl.password_auth_allowed(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered right now."""
        return sasl.available_mechanisms(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )

    def capabilities(self) -> list[str]:
        """The CAPA lines (RFC 2449 section 6) for the current state."""
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state is State.AUTHORIZATION:
            if self.password_allowed():
                caps.append("USER")
            mechanisms = self.mechanisms()
            if mechanisms:
                caps.append("SASL " + " ".join(mechanisms))
            if self.tls_available and not self.tls:
                caps.append("STLS")
        caps.append("IMPLEMENTATION txmail")
        return caps

    def accept(self, result: Any = None) -> None:
        """
        Answer the pending event positively.

        Args:
            result: for ``PasswordCheck``, the canonical user; for
                ``AuthStep``, the authenticator's Challenge, Succeeded or
                Failed; for ``Login``, the :class:`Maildrop`; for
                ``Retrieve``, optionally the whole encoded message
                (:class:`MessageEncoder` output, terminator included) to
                queue right after the ``+OK`` line, when the application
                has it at hand (else it streams the message itself);
                unused otherwise.

        Raises:
            RuntimeError: no event is pending (the caller's mistake).
            TypeError: *result* has the wrong type for the event.
        """
        event = self._take_pending()
        if isinstance(event, PasswordCheck):
            if not isinstance(result, str):
                raise TypeError("PasswordCheck must be accepted with the canonical user")
            self._emit(Login(result, "USER"))
        elif isinstance(event, AuthStep):
            self._authenticator_result(result)
        elif isinstance(event, Login):
            if not isinstance(result, Maildrop):
                raise TypeError("Login must be accepted with a Maildrop")
            self._maildrop = result
            self.user = event.user
            self.state = State.TRANSACTION
            count, size = self._totals()
            self._send(Response(True, f"Logged in, {count} messages ({size} octets)"))
        elif isinstance(event, Retrieve):
            if event.body_lines is None:
                self._seen.add(event.number)
                self._send(Response(True, f"{event.size} octets"))
            else:
                self._send(Response(True, "Top of message follows"))
            if isinstance(result, bytes):
                # Pipelined RETRs then leave in one write (RFC 2449 PIPELINING).
                self._write(result)
        elif isinstance(event, StartTLS):
            self._send(Response(True, "Begin TLS negotiation"))
            self._tls_accepted()
            self._username = None
        elif isinstance(event, Update):
            self._close(Response(True, "Bye"), "quit")
        else:  # pragma: no cover - every pausing event is handled above
            raise RuntimeError(f"cannot accept {event!r}")

    def reject(self, response: Response) -> None:
        """
        Answer the pending event with *response* (an ``-ERR``).

        Raises:
            RuntimeError: no event is pending.
            ValueError: *response* is ``+OK``.
        """
        if response.ok:
            raise ValueError("reject() needs an -ERR response")
        event = self._take_pending()
        if isinstance(event, PasswordCheck | Login):
            self._username = None
            if response.code == "AUTH":
                self._protocol_error(response)  # a failed guess counts as an error
            else:
                self._send(response)
        elif isinstance(event, AuthStep):
            self._end_auth()
            self._send(response)
        elif isinstance(event, Retrieve | StartTLS):
            self._trailing.clear()
            self._send(response)
        elif isinstance(event, Update):
            # RFC 1939 section 6: -ERR when some deleted messages were not removed.
            self._close(response, "quit")
        else:  # pragma: no cover
            raise RuntimeError(f"cannot reject {event!r}")

    def connection_lost(self) -> None:
        """The connection went away: the session ends without entering UPDATE."""
        self._pending = None
        self._sasl = None
        self.state = State.CLOSED

    # -- output and events -----------------------------------------------------

    def _send(self, response: Response) -> None:
        self._write(response.to_bytes())

    def _send_multiline(self, first: Response, lines: list[str]) -> None:
        self._write(first.to_bytes())
        for line in lines:
            if line.startswith("."):
                line = "." + line
            self._write(line.encode() + b"\r\n")
        self._write(b".\r\n")

    def _challenge(self, data: bytes) -> None:
        # RFC 5034 section 4: "+" SP base64 (an empty challenge is "+ ").
        self._write(b"+ " + sasl.encode_challenge(data) + b"\r\n")

    def _max_line_length(self) -> int:
        return self.max_line_length

    def _max_bad_commands(self) -> int:
        return self.max_bad_commands

    # -- parsing ---------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        split = self._split_command(line)
        if split is None:
            return
        verb, arg = split
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._protocol_error(_UNKNOWN_COMMAND)
            return
        if self.state not in ALLOWED_STATES[verb]:
            self._protocol_error(_WRONG_STATE)
            return
        # RFC 1939 section 7 lets PASS arguments contain spaces: keep them.
        handler(self, arg if verb == "PASS" else arg.strip(" "))

    # -- maildrop helpers --------------------------------------------------------

    def _messages(self) -> tuple[tuple[int, int], ...]:
        assert self._maildrop is not None
        return self._maildrop.messages

    def _totals(self) -> tuple[int, int]:
        count = size = 0
        for number, (_, msg_size) in enumerate(self._messages(), 1):
            if number not in self._deleted:
                count += 1
                size += msg_size
        return count, size

    def _message_number(self, arg: str) -> int | None:
        """
        Parse a message number (RFC 1939 section 3: ``msg``) and check it
        names a message that is not deleted; answer ``-ERR`` otherwise.
        """
        if not arg or not arg.isascii() or not arg.isdigit() or len(arg) > 10:
            self._protocol_error(_SYNTAX)
            return None
        number = int(arg)
        if not 1 <= number <= len(self._messages()):
            self._send(NO_SUCH_MESSAGE)
            return None
        if number in self._deleted:
            self._send(_DELETED)
            return None
        return number

    def _listing(self, arg: str, what: Callable[[int, int, int], str]) -> None:
        if arg:
            number = self._message_number(arg)
            if number is not None:
                uid, size = self._messages()[number - 1]
                self._send(Response(True, what(number, uid, size)))
            return
        lines = [
            what(number, uid, size)
            for number, (uid, size) in enumerate(self._messages(), 1)
            if number not in self._deleted
        ]
        count, size = self._totals()
        self._send_multiline(Response(True, f"{count} messages ({size} octets)"), lines)

    # -- commands ----------------------------------------------------------------

    def _do_user(self, arg: str) -> None:
        if not self.password_allowed():
            self._protocol_error(_PLAINTEXT_DISALLOWED)
            return
        if not arg:
            self._protocol_error(_SYNTAX)
            return
        self._username = arg
        self._send(Response(True, "Send your password"))

    def _do_pass(self, arg: str) -> None:
        if not self.password_allowed():
            self._protocol_error(_PLAINTEXT_DISALLOWED)
            return
        username, self._username = self._username, None
        if username is None:
            self._protocol_error(_NO_USER)
            return
        self._emit(PasswordCheck(username, Secret(arg)))

    def _do_apop(self, arg: str) -> None:
        self._protocol_error(_APOP)

    def _do_auth(self, arg: str) -> None:
        words = arg.split(" ") if arg else []
        if not words:
            # Not in RFC 5034, but common (Dovecot, Outlook): list the mechanisms.
            self._send_multiline(Response(True, "Mechanisms follow"), list(self.mechanisms()))
            return
        if len(words) > 2 or not words[0]:
            self._protocol_error(_SYNTAX)
            return
        if not self.password_allowed():
            self._protocol_error(_PLAINTEXT_DISALLOWED)
            return
        mechanism = words[0].upper()
        if mechanism not in self.mechanisms():
            self._protocol_error(_UNKNOWN_MECHANISM)
            return
        self._username = None
        self._start_sasl(mechanism, words[1] if len(words) == 2 else None)

    def _auth_succeeded(self, username: str, mechanism: str) -> None:
        self._emit(Login(username, mechanism))

    def _do_stls(self, arg: str) -> None:
        if arg:
            self._protocol_error(_SYNTAX)
            return
        if self.tls:
            self._protocol_error(_TLS_ACTIVE)
            return
        if not self.tls_available:
            self._protocol_error(_TLS_UNAVAILABLE)
            return
        self._start_tls()

    def _do_capa(self, arg: str) -> None:
        self._send_multiline(Response(True, "Capability list follows"), self.capabilities())

    def _do_quit(self, arg: str) -> None:
        if self.state is State.TRANSACTION:
            # RFC 1939 section 6: the UPDATE state.
            messages = self._messages()
            deleted = tuple(messages[n - 1][0] for n in sorted(self._deleted))
            seen = tuple(messages[n - 1][0] for n in sorted(self._seen - self._deleted))
            self.state = State.UPDATE
            self._emit(Update(deleted, seen))
            return
        self._close(Response(True, "Bye"), "quit")

    def _do_noop(self, arg: str) -> None:
        self._send(Response(True, ""))

    def _do_stat(self, arg: str) -> None:
        if arg:
            self._protocol_error(_SYNTAX)
            return
        count, size = self._totals()
        # RFC 1939 section 5: "+OK nn mm", nothing else before the text.
        self._send(Response(True, f"{count} {size}"))

    def _do_list(self, arg: str) -> None:
        self._listing(arg, lambda number, uid, size: f"{number} {size}")

    def _do_uidl(self, arg: str) -> None:
        uidvalidity = self._maildrop.uidvalidity if self._maildrop is not None else 0
        self._listing(arg, lambda number, uid, size: f"{number} {uidl(uidvalidity, uid)}")

    def _do_retr(self, arg: str) -> None:
        number = self._message_number(arg)
        if number is not None:
            uid, size = self._messages()[number - 1]
            self._emit(Retrieve(number, uid, size))

    def _do_top(self, arg: str) -> None:
        words = arg.split(" ")
        if len(words) != 2 or not words[1].isascii() or not words[1].isdigit() or len(words[1]) > 10:
            self._protocol_error(_SYNTAX)
            return
        number = self._message_number(words[0])
        if number is not None:
            uid, size = self._messages()[number - 1]
            self._emit(Retrieve(number, uid, size, int(words[1])))

    def _do_dele(self, arg: str) -> None:
        number = self._message_number(arg)
        if number is not None:
            self._deleted.add(number)
            self._send(Response(True, f"Message {number} deleted"))

    def _do_rset(self, arg: str) -> None:
        self._deleted.clear()
        count, size = self._totals()
        self._send(Response(True, f"{count} messages ({size} octets)"))


_HANDLERS: dict[str, Callable[[POP3Session, str], None]] = {
    "USER": POP3Session._do_user,
    "PASS": POP3Session._do_pass,
    "APOP": POP3Session._do_apop,
    "AUTH": POP3Session._do_auth,
    "STLS": POP3Session._do_stls,
    "CAPA": POP3Session._do_capa,
    "QUIT": POP3Session._do_quit,
    "NOOP": POP3Session._do_noop,
    "STAT": POP3Session._do_stat,
    "LIST": POP3Session._do_list,
    "RETR": POP3Session._do_retr,
    "DELE": POP3Session._do_dele,
    "RSET": POP3Session._do_rset,
    "TOP": POP3Session._do_top,
    "UIDL": POP3Session._do_uidl,
}

_LF_DOT = re.compile(rb"\n\.")
# A LF not preceded by CR: the search runs from each LF and looks back,
# several times faster than a pattern that starts with the look-behind.  At
# the start of a chunk a LF counts as bare (the caller knows better).
_BARE_LF = re.compile(rb"\n(?<!\r\n)")


class MessageEncoder:
    """
    Frames a stored message as a multi-line response body (RFC 1939 section
    3), chunk by chunk, holding nothing but a few flags between chunks.

    * bare LF becomes CRLF (a CR before a LF in the previous chunk counts);
    * a line starting with ``.`` gets another ``.`` (byte-stuffing), also
      when the line starts in a new chunk;
    * for TOP (``body_lines`` given) the header, the blank line and the first
      ``body_lines`` lines of the body are sent, then :attr:`done` is set
      (RFC 1939 section 7: all of it when the body is shorter);
    * :meth:`finish` ends the last line with CRLF if needed and adds the
      ``.`` CRLF terminator.

    Args:
        body_lines: TOP's line count, or ``None`` for RETR.
    """

    def __init__(self, body_lines: int | None = None) -> None:
        self.body_lines = body_lines
        #: No more content is wanted (TOP reached its last line).
        self.done = False
        self._prev_cr = False
        self._line_start = True
        self._in_header = True
        self._line_len = 0  # octets of the current line so far (after normalising)
        self._left = body_lines if body_lines is not None else 0

    def feed(self, data: bytes) -> bytes:
        """Encode the next chunk of the stored message."""
        if self.done or not data:
            return b""
        # Each step is one scan in C (measured on 10 KB with CRLF line ends:
        # 12 us, was 30 with bytes.count and bytes.replace, whose two-byte
        # search is slow): a file without CR (LF line ends, as most Maildir
        # writers store mail) takes a one-byte replace; otherwise bare LFs are
        # looked for from each LF backwards; a line starting with a dot gets
        # another by a regular-expression substitution.
        if b"\r" not in data:
            normalized = data.replace(b"\n", b"\r\n")
        elif _BARE_LF.search(data) is not None:
            normalized = _BARE_LF.sub(b"\r\n", data)
        else:
            normalized = data
        if self._prev_cr and data[0:1] == b"\n":
            normalized = normalized[1:]  # its CR came in the previous chunk
        self._prev_cr = data.endswith(b"\r")
        if self.body_lines is not None:
            normalized = self._cut(normalized)
        if not normalized:
            return b""
        out = _LF_DOT.sub(b"\n..", normalized)
        if self._line_start and out[0:1] == b".":
            out = b"." + out
        self._line_start = out.endswith(b"\n")
        return out

    def finish(self) -> bytes:
        """The end of the response: a CRLF if the last line lacks one, then ``.`` CRLF."""
        self.done = True
        if self._line_start:
            return b".\r\n"
        return (b"\n" if self._prev_cr else b"\r\n") + b".\r\n"

    def _cut(self, data: bytes) -> bytes:
        """Keep the part of *data* TOP sends; set :attr:`done` at its end."""
        pos = 0
        while True:
            nl = data.find(b"\n", pos)
            if nl < 0:
                self._line_len += len(data) - pos
                return data
            length = self._line_len + nl - pos  # including the CR
            self._line_len = 0
            pos = nl + 1
            if self._in_header:
                if length <= 1:  # the empty line that ends the header
                    self._in_header = False
                    if self._left == 0:
                        self.done = True
                        return data[:pos]
            else:
                self._left -= 1
                if self._left <= 0:
                    self.done = True
                    return data[:pos]
