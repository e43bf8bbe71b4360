"""
The ManageSieve server session (RFC 5804), without I/O.

Theory of operation
-------------------
* Input is cut into commands by :func:`txmail.managesieve.grammar.parse_command`
  with caps before anything is parsed: at most ``max_line_length`` octets
  outside literals per command, each literal at most ``max_literal``
  octets.  A line too long ends the session with ``BYE`` (the framing is
  lost); a literal too long is discarded as it arrives (never buffered),
  with the rest of its line, and answered ``NO (QUOTA/MAXSIZE)`` for a
  script, ``NO`` otherwise.  Other syntax errors are answered ``NO``
  (ManageSieve has no ``BAD``) and counted; past ``max_bad_commands`` the
  session says ``BYE`` and closes.
* States are data (:data:`_ALLOWED`): a command not allowed in the current
  state is answered ``NO``.  Section 1.6's state diagram: non-authenticated
  -> (AUTHENTICATE) authenticated -> (UNAUTHENTICATE) non-authenticated;
  LOGOUT anywhere.
* One command at a time: an event that needs a decision (a SASL step, the
  user's store, STARTTLS) pauses the parsing of pipelined commands until
  the application answers, so responses go out in command order.
* STARTTLS (section 2.2): after ``OK`` nothing more is parsed; bytes the
  client pipelined behind the command are kept in :attr:`trailing_data`,
  which the adapter logs and drops (CVE-2011-0411).  Once the handshake is
  under way the adapter calls :meth:`tls_started`, and the capabilities
  are sent again, as the RFC requires ("the server MUST re-issue the
  capability results").
* AUTHENTICATE (section 2.1) runs the shared SASL layer
  (:class:`txmail.auth.exchange.SASLExchange`) with ManageSieve's framing:
  challenges are strings (quoted, or a literal when long), the client's
  responses are strings too, ``"*"`` cancels.  Password mechanisms are
  offered and accepted only under TLS unless the plaintext policy allows
  them (``ENCRYPT-NEEDED`` otherwise).  Failures are delayed by the
  authenticator and counted as bad commands.
* Script sizes are checked here (``QUOTA/MAXSIZE``); checking a script
  (:func:`check_script`, run by the adapter in its thread pool), the number
  of scripts (``QUOTA/MAXSCRIPTS``) and the store are the application's,
  answered through :meth:`accept` or :meth:`fail`.  Store errors map to
  response codes in one place, :func:`error_response`.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from txmail._session import SessionCore
from txmail.auth import sasl
from txmail.auth.exchange import Ask, Cancelled, Done, Outcome, Refused, SASLExchange, Send
from txmail.errors import InvalidScriptName, NoSuchScript, ScriptActive, ScriptExists
from txmail.managesieve.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    Event,
    ScriptRequest,
    StartTLS,
    Unauthenticated,
)
from txmail.managesieve.grammar import (
    Command,
    FrameError,
    LiteralTooLarge,
    Number,
    String,
    parse_command,
    quoted_or_literal,
    response,
)
from txmail.sieve import EXTENSIONS, Limits, SieveError, parse
from txmail.sieve.storage import check_script_name

__all__ = [
    "DEFAULT_MAX_SCRIPTS",
    "DEFAULT_MAX_SCRIPT_SIZE",
    "ManageSieveSession",
    "QuotaMaxScripts",
    "ScriptInvalid",
    "State",
    "check_script",
    "error_response",
]

#: Octets of one script (Pigeonhole's ``sieve_max_script_size`` is 1 MiB too).
DEFAULT_MAX_SCRIPT_SIZE = 1024 * 1024
#: Scripts one user may keep (Pigeonhole: ``sieve_quota_max_scripts``, unlimited by default).
DEFAULT_MAX_SCRIPTS = 32
#: Octets of a command outside its literals (Dovecot: ``managesieve_max_line_length``, 64 KiB).
MAX_LINE_LENGTH = 8192
#: Octets of a SASL response literal.
MAX_SASL_LITERAL = 12288


class State(enum.Enum):
    """RFC 5804 section 1.6's states (and two of ours: in a SASL exchange, closed)."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATING = "authenticating"
    AUTHENTICATED = "authenticated"
    CLOSED = "closed"


class QuotaMaxScripts(Exception):
    """The user has as many scripts as allowed (``NO (QUOTA/MAXSCRIPTS)``)."""


class ScriptInvalid(Exception):
    """A script is not valid: *message* says where and why (the answer's text)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def check_script(content: bytes, name: str | None = None, limits: Limits | None = None) -> None:
    """
    Check *content* is a Sieve script the engine runs (RFC 5804 section
    2.6: "the server MUST check the script for syntax errors"): UTF-8, and
    :func:`txmail.sieve.parse` accepts it (included scripts are checked
    when they run: one may be uploaded after the script including it).
    CPU work: the adapter runs it in its thread pool.

    Raises:
        ScriptInvalid: with the engine's "line L, column C: ..." text.
    """
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScriptInvalid(f"the script is not UTF-8 (octet {e.start})") from None
    try:
        parse(text, limits=limits, name=name)
    except SieveError as e:
        raise ScriptInvalid(str(e)) from None


def error_response(error: BaseException) -> bytes | None:
    """
    The ``NO`` response a script command failing with *error* gets (RFC 5804
    section 1.3's response codes), or ``None`` for an error that is not
    the client's (the adapter logs it; the client gets ``NO (TRYLATER)``).
    """
    if isinstance(error, NoSuchScript):
        return response("NO", "NONEXISTENT", "There is no script of that name")
    if isinstance(error, ScriptActive):
        return response("NO", "ACTIVE", "You may not delete the active script")
    if isinstance(error, ScriptExists):
        return response("NO", "ALREADYEXISTS", "A script of that name exists already")
    if isinstance(error, InvalidScriptName):
        return response("NO", None, "Invalid script name")
    if isinstance(error, QuotaMaxScripts):
        return response("NO", "QUOTA/MAXSCRIPTS", "Too many scripts")
    if isinstance(error, ScriptInvalid):
        return response("NO", None, error.message)
    return None


_TRY_LATER = response("NO", "TRYLATER", "Temporary server failure, try again later")

#: The commands each state allows (RFC 5804 section 2); anything else is answered NO.
_ANY = frozenset({"CAPABILITY", "LOGOUT", "NOOP"})
_ALLOWED: dict[State, frozenset[str]] = {
    State.NOT_AUTHENTICATED: _ANY | {"AUTHENTICATE", "STARTTLS"},
    State.AUTHENTICATED: _ANY
    | {
        "HAVESPACE",
        "PUTSCRIPT",
        "LISTSCRIPTS",
        "SETACTIVE",
        "GETSCRIPT",
        "DELETESCRIPT",
        "RENAMESCRIPT",
        "CHECKSCRIPT",
        "UNAUTHENTICATE",
    },
}
_KNOWN = _ALLOWED[State.NOT_AUTHENTICATED] | _ALLOWED[State.AUTHENTICATED]

#: Argument shapes: "s" a string, "n" a number, "?" the rest optional.
_ARGS: dict[str, str] = {
    "CAPABILITY": "",
    "LOGOUT": "",
    "NOOP": "?s",
    "AUTHENTICATE": "s?s",
    "STARTTLS": "",
    "HAVESPACE": "sn",
    "PUTSCRIPT": "ss",
    "LISTSCRIPTS": "",
    "SETACTIVE": "s",
    "GETSCRIPT": "s",
    "DELETESCRIPT": "s",
    "RENAMESCRIPT": "ss",
    "CHECKSCRIPT": "s",
    "UNAUTHENTICATE": "",
}


class _BadArguments(Exception):
    pass


def _arguments(shape: str, args: tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    optional = False
    i = 0
    for kind in shape:
        if kind == "?":
            optional = True
            continue
        if i >= len(args):
            if optional:
                break
            raise _BadArguments("Missing argument")
        arg = args[i]
        i += 1
        if (kind == "s" and isinstance(arg, String)) or (kind == "n" and isinstance(arg, Number)):
            out.append(arg.value)
        else:
            raise _BadArguments("Wrong argument type")
    if i != len(args):
        raise _BadArguments("Too many arguments")
    return out


def _name(value: bytes) -> str:
    """A script name from the wire (UTF-8, checked, NFC)."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidScriptName("not UTF-8") from None
    return check_script_name(text)


class ManageSieveSession(SessionCore[Event]):
    """
    One ManageSieve server connection, without I/O.

    Args:
        tls_available: STARTTLS can be offered.
        tls_active: the connection already runs TLS.
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``: whether
            SASL may run without TLS (:func:`txmail.auth.sasl.password_auth_allowed`).
        loopback: the client is on the loopback interface.
        max_script_size: octets of one script (``QUOTA/MAXSIZE`` beyond).
        max_line_length: octets of one command outside its literals.
        max_bad_commands: protocol errors and failed logins before ``BYE``.
        max_redirects: advertised as ``MAXREDIRECTS`` (the engine's limit).
        implementation: the ``IMPLEMENTATION`` capability.
        sasl_factory: makes the SASL server of an exchange (tests inject a nonce).

    Attributes:
        state: the :class:`State`.
        user: the canonical user once authenticated.
        tls: the connection runs TLS.
    """

    CLOSED_STATE = State.CLOSED

    def __init__(
        self,
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        loopback: bool = False,
        max_script_size: int = DEFAULT_MAX_SCRIPT_SIZE,
        max_line_length: int = MAX_LINE_LENGTH,
        max_bad_commands: int = 10,
        max_redirects: int = Limits.max_redirects,
        implementation: str = "txmail",
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
    ) -> None:
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        super().__init__()
        self.tls = tls_active
        self.tls_available = tls_available and not tls_active
        self.plaintext_auth = plaintext_auth
        self.loopback = loopback
        self.max_script_size = max_script_size
        self.max_line_length = max_line_length
        self.max_bad_commands = max_bad_commands
        self.max_redirects = max_redirects
        self.implementation = implementation
        self._sasl_factory = sasl_factory
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.bad_commands = 0
        self._inbuf = bytearray()
        self._discard = 0  # octets of an over-long literal still to drop
        self._discard_line = False  # then drop up to the next CRLF
        self._parsed_len = 0  # the buffer's length when a parse last needed more
        self._need = 0  # the length a literal needs before parsing again
        self._after_discard: tuple[str | None, str] = (None, "")  # the answer once the line is dropped
        self._sasl: SASLExchange | None = None
        self._request: ScriptRequest | None = None
        # Section 1.7: the server sends its capabilities on connecting.
        self._write(self._capability_response())

    # -- public API ---------------------------------------------------------------

    @property
    def buffered_input(self) -> int:
        return len(self._inbuf)

    def mechanisms(self) -> tuple[str, ...]:
        """The SASL mechanisms offered now (none without TLS unless the policy allows)."""
        return sasl.available_mechanisms(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )

    def capabilities(self) -> list[tuple[str, str | None]]:
        """The capability lines (RFC 5804 section 1.7) for the current state."""
        caps: list[tuple[str, str | None]] = [
            ("IMPLEMENTATION", self.implementation),
            ("SASL", " ".join(self.mechanisms())),
            ("SIEVE", " ".join(sorted(EXTENSIONS))),
        ]
        if self.tls_available and not self.tls and self.state is not State.AUTHENTICATED:
            caps.append(("STARTTLS", None))
        caps.append(("MAXREDIRECTS", str(self.max_redirects)))
        if self.user is not None:
            caps.append(("OWNER", self.user))
        caps.append(("UNAUTHENTICATE", None))
        caps.append(("VERSION", "1.0"))
        return caps

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client (parsed by :meth:`next_event`)."""
        if self.state is State.CLOSED:
            return
        if isinstance(self._pending, StartTLS):
            # RFC 5804 section 2.2 / CVE-2011-0411: never a command.
            self._trailing += data
            return
        if self._discard:
            take = min(self._discard, len(data))
            self._discard -= take
            data = data[take:]
            if self._discard or not data:
                return
        self._inbuf += data

    def next_event(self) -> Event | None:
        """Parse what was received; the next event, or ``None`` when more input or a decision is needed."""
        while not self._events and self._pending is None and self.state is not State.CLOSED:
            if not self._step():
                break
        if not self._events:
            return None
        return self._events.popleft()

    def accept(self, result: Any = None) -> None:
        """
        Answer the pending event positively: ``StartTLS`` (nothing),
        ``AuthStep`` (the authenticator's Challenge, Succeeded or Failed),
        ``ScriptRequest`` (see :class:`~txmail.managesieve.events.ScriptRequest`).

        Raises:
            RuntimeError: no event is pending.
        """
        event = self._take_pending()
        if isinstance(event, StartTLS):
            self._trailing.clear()
            self._inbuf.clear()
            self._parsed_len = self._need = 0
            self.tls = True
            self.tls_available = False
            self._write(response("OK", None, "Begin TLS negotiation now"))
        elif isinstance(event, AuthStep):
            assert self._sasl is not None
            self._sasl_outcome(self._sasl.resolved(result))
        elif isinstance(event, ScriptRequest):
            self._request = None
            self._script_done(event, result)
        else:  # pragma: no cover - every pausing event is handled above
            raise RuntimeError(f"cannot accept {event!r}")

    def reject(self, reply: bytes) -> None:
        """Answer the pending event with the response *reply* (a ``NO`` line: a login the store refused...)."""
        event = self._take_pending()
        if isinstance(event, AuthStep):
            self._end_sasl()
        self._request = None
        self._write(reply)

    def fail(self, error: BaseException) -> bool:
        """
        Answer the pending ``ScriptRequest`` with the ``NO`` *error* maps to
        (:func:`error_response`); ``NO (TRYLATER)`` for an error that is not
        the client's, and then ``False`` (the caller logs it).
        """
        self._take_pending()
        self._request = None
        reply = error_response(error)
        self._write(reply if reply is not None else _TRY_LATER)
        return reply is not None

    def tls_started(self) -> None:
        """The TLS handshake is under way: send the capabilities again (section 2.2)."""
        self._write(self._capability_response())

    def timeout(self) -> None:
        """The client was silent too long: ``BYE`` and close."""
        if self.state is State.CLOSED:
            return
        self._pending = None
        self._close(response("BYE", "TRYLATER", "Disconnected for inactivity"), "timeout")

    def connection_lost(self) -> None:
        """The connection went away: forget everything."""
        self._end_sasl()
        if self.state is not State.CLOSED:
            self.state = State.CLOSED
            self._pending = None
            self._inbuf.clear()
            self._parsed_len = self._need = 0
            self._emit(ConnectionClosing("lost"))

    # -- output -------------------------------------------------------------------

    def _capability_response(self) -> bytes:
        out = b""
        for name, value in self.capabilities():
            out += quoted_or_literal(name)
            if value is not None:
                out += b" " + quoted_or_literal(value)
            out += b"\r\n"
        return out + response("OK", None, "txmail ManageSieve ready" if self.user is None else "Done")

    def _close(self, reply: bytes, reason: str) -> None:
        self._end_sasl()
        self._write(reply)
        self.state = State.CLOSED
        self._inbuf.clear()
        self._parsed_len = self._need = 0
        self._emit(ConnectionClosing(reason))

    def _error(self, text: str, code: str | None = None) -> None:
        """A client error: ``NO``, counted; ``BYE`` past the limit."""
        self.bad_commands += 1
        if self.bad_commands > self.max_bad_commands:
            self._close(response("BYE", None, "Too many errors"), "errors")
        else:
            self._write(response("NO", code, text))

    # -- parsing ------------------------------------------------------------------

    def _may_complete(self) -> bool:
        """
        Whether parsing the buffer again may give more than last time: a
        command ends with CRLF, so only once a LF arrived since (the end of
        a line, or a bare LF, refused at once), or once a literal's octets
        are all there, or the buffer grew by more than a line (to catch a
        line too long).  Parsing stays linear in the input however it is
        cut into packets.
        """
        buf = self._inbuf
        if len(buf) < self._need:
            return False
        seen = self._parsed_len
        if not seen or self._need:
            return True
        return len(buf) > seen + self.max_line_length or buf.find(b"\n", seen) >= 0

    def _max_literal(self) -> int:
        if self.state is State.AUTHENTICATED:
            return self.max_script_size
        return MAX_SASL_LITERAL

    def _step(self) -> bool:
        """Handle one command (or one framing error); ``False`` when more input is needed."""
        if self._discard_line:
            idx = self._inbuf.find(b"\r\n")
            if idx < 0:
                keep = 1 if self._inbuf.endswith(b"\r") else 0
                del self._inbuf[: len(self._inbuf) - keep]
                self._parsed_len = self._need = 0
                return False
            del self._inbuf[: idx + 2]
            self._parsed_len = self._need = 0
            self._discard_line = False
            code, text = self._after_discard
            if code == "QUOTA/MAXSIZE":
                self._write(response("NO", code, text))  # not a protocol error: the client may retry smaller
            else:
                self._framing_error(text)
            return True
        if not self._may_complete():
            return False
        need = [0]
        try:
            command = parse_command(
                self._inbuf,
                max_line=self.max_line_length,
                max_literal=self._max_literal(),
                sasl=self.state is State.AUTHENTICATING,
                need=need,
            )
        except FrameError as e:
            if e.fatal:
                self._close(response("BYE", None, e.message), "protocol")
                return False
            if e.size < 0:
                # The rest of the line has not arrived: drop it as it does
                # (keeping a final CR: it may begin the CRLF).
                del self._inbuf[: len(self._inbuf) - (1 if self._inbuf.endswith(b"\r") else 0)]
                self._parsed_len = self._need = 0
                self._discard_line = True
                self._after_discard = (None, e.message)
            else:
                del self._inbuf[: e.size]
                self._parsed_len = self._need = 0
                self._framing_error(e.message)
            return True
        except LiteralTooLarge as e:
            if e.name in ("PUTSCRIPT", "CHECKSCRIPT"):
                self._after_discard = (
                    "QUOTA/MAXSIZE",
                    f"The script is too large (at most {self.max_script_size} octets)",
                )
            else:
                self._after_discard = (None, "Literal too large")
            have = len(self._inbuf) - e.start
            if have >= e.length:
                del self._inbuf[: e.start + e.length]
                self._parsed_len = self._need = 0
            else:
                self._discard = e.length - have
                self._inbuf.clear()
                self._parsed_len = self._need = 0
            self._discard_line = True
            return not self._discard
        if command is None:
            self._parsed_len = len(self._inbuf)
            self._need = need[0]
            return False
        del self._inbuf[: command.size]
        self._parsed_len = self._need = 0
        if self.state is State.AUTHENTICATING:
            self._sasl_response(command)
        else:
            self._command(command)
        return True

    def _framing_error(self, message: str) -> None:
        if self.state is State.AUTHENTICATING:
            self._end_sasl()
        self._error(message)

    def _command(self, command: Command) -> None:
        name = command.name
        if name not in _KNOWN:
            self._error("Unknown command")
            return
        if name not in _ALLOWED[self.state]:
            if name in ("AUTHENTICATE", "STARTTLS") and self.state is State.AUTHENTICATED:
                self._error("Already authenticated")
            else:
                self._error("Authenticate first")
            return
        try:
            args = _arguments(_ARGS[name], command.args)
        except _BadArguments as e:
            self._error(f"{name}: {e}")
            return
        _HANDLERS[name](self, args)

    # -- commands -----------------------------------------------------------------

    def _cmd_capability(self, args: list[Any]) -> None:
        self._write(self._capability_response())

    def _cmd_logout(self, args: list[Any]) -> None:
        # Section 2.3: "The server MUST reply with an OK response" and close.
        self._close(response("OK", None, "Logout completed"), "logout")

    def _cmd_noop(self, args: list[Any]) -> None:
        # Section 2.13: an argument comes back as the TAG response code.
        if args:
            self._write(
                response("OK", "TAG " + quoted_or_literal(args[0]).decode("utf-8", "replace"), "Done")
            )
        else:
            self._write(response("OK", None, "Done"))

    def _cmd_starttls(self, args: list[Any]) -> None:
        if not self.tls_available or self.tls:
            self._error("STARTTLS is not available")
            return
        # Section 2.2: what was pipelined behind the command is never run.
        self._trailing[:] = self._inbuf
        self._inbuf.clear()
        self._parsed_len = self._need = 0
        self._emit(StartTLS())

    def _cmd_authenticate(self, args: list[Any]) -> None:
        try:
            mechanism = args[0].decode("ascii").upper()
        except UnicodeDecodeError:
            mechanism = ""
        if not self.mechanisms() and mechanism in sasl.MECHANISMS:
            # RFC 5804 section 1.3: ENCRYPT-NEEDED.
            self._error("Authentication requires TLS: use STARTTLS first", "ENCRYPT-NEEDED")
            return
        if mechanism not in self.mechanisms():
            self._error("Unsupported authentication mechanism")
            return
        self._sasl = SASLExchange(self._sasl_factory(mechanism))
        self.state = State.AUTHENTICATING
        initial: str | None = None
        if len(args) > 1:
            try:
                initial = args[1].decode("ascii")
            except UnicodeDecodeError:
                initial = "\0"  # not base64: the exchange answers Malformed
            if initial == "":
                initial = "="  # an empty initial response
        self._sasl_outcome(self._sasl.start(initial))

    def _script_name(self, value: bytes) -> str | None:
        try:
            return _name(value)
        except InvalidScriptName:
            self._write(response("NO", None, "Invalid script name"))
            return None

    def _request_store(self, command: str, *args: object) -> None:
        self._request = ScriptRequest(command, args)
        self._emit(self._request)

    def _too_large(self, size: int) -> bool:
        if size > self.max_script_size:
            self._write(
                response(
                    "NO", "QUOTA/MAXSIZE", f"The script is too large (at most {self.max_script_size} octets)"
                )
            )
            return True
        return False

    def _cmd_havespace(self, args: list[Any]) -> None:
        name = self._script_name(args[0])
        if name is not None and not self._too_large(args[1]):
            self._request_store("HAVESPACE", name, args[1])

    def _cmd_putscript(self, args: list[Any]) -> None:
        name = self._script_name(args[0])
        if name is not None and not self._too_large(len(args[1])):
            self._request_store("PUTSCRIPT", name, args[1])

    def _cmd_checkscript(self, args: list[Any]) -> None:
        if not self._too_large(len(args[0])):
            self._request_store("CHECKSCRIPT", args[0])

    def _cmd_listscripts(self, args: list[Any]) -> None:
        self._request_store("LISTSCRIPTS")

    def _cmd_setactive(self, args: list[Any]) -> None:
        # Section 2.8: the empty name deactivates.
        if args[0] == b"":
            self._request_store("SETACTIVE", None)
            return
        name = self._script_name(args[0])
        if name is not None:
            self._request_store("SETACTIVE", name)

    def _cmd_getscript(self, args: list[Any]) -> None:
        name = self._script_name(args[0])
        if name is not None:
            self._request_store("GETSCRIPT", name)

    def _cmd_deletescript(self, args: list[Any]) -> None:
        name = self._script_name(args[0])
        if name is not None:
            self._request_store("DELETESCRIPT", name)

    def _cmd_renamescript(self, args: list[Any]) -> None:
        old = self._script_name(args[0])
        if old is None:
            return
        new = self._script_name(args[1])
        if new is not None:
            self._request_store("RENAMESCRIPT", old, new)

    def _cmd_unauthenticate(self, args: list[Any]) -> None:
        # Section 2.14: back to the non-authenticated state.
        user = self.user
        self.user = None
        self.state = State.NOT_AUTHENTICATED
        self._write(response("OK", None, "Unauthenticated"))
        if user is not None:
            self._emit(Unauthenticated(user))

    def _script_done(self, event: ScriptRequest, result: Any) -> None:
        """The store answered *event* with *result*: the response."""
        command = event.command
        if command == "LISTSCRIPTS":
            # Section 2.7: one line per script, the active one marked.
            out = b""
            for name, active in result:
                out += quoted_or_literal(name) + (b" ACTIVE" if active else b"") + b"\r\n"
            self._write(out + response("OK", None, "Listscripts completed"))
        elif command == "GETSCRIPT":
            # Section 2.9: the script as a literal, then OK.
            self._write(
                b"{%d}\r\n" % len(result)
                + bytes(result)
                + b"\r\n"
                + response("OK", None, "Getscript completed")
            )
        else:
            self._write(response("OK", None, _DONE_TEXT[command]))

    # -- SASL (section 2.1) ---------------------------------------------------------

    def _sasl_response(self, command: Command) -> None:
        """A line inside a SASL exchange: one string, the client's response."""
        assert self._sasl is not None
        args = command.args
        if len(args) != 1 or not isinstance(args[0], String):
            self._end_sasl()
            self._error("Expected a SASL response string")
            return
        self._sasl_outcome(self._sasl.respond(args[0].value))

    def _sasl_outcome(self, outcome: Outcome) -> None:
        if isinstance(outcome, Send):
            self._write(quoted_or_literal(sasl.encode_challenge(outcome.data)) + b"\r\n")
            return
        if isinstance(outcome, Ask):
            self._emit(outcome.step)
            return
        self._end_sasl()
        if isinstance(outcome, Done):
            self.user = outcome.user
            self.state = State.AUTHENTICATED
            self._write(response("OK", None, "Logged in"))
            self._emit(Authenticated(outcome.user, outcome.mechanism))
        elif isinstance(outcome, Refused):
            self._error("Authentication failed")
        elif isinstance(outcome, Cancelled):
            self._write(response("NO", None, "Authentication cancelled"))
        else:
            self._error("Invalid base64 in the SASL " + outcome.what)

    def _end_sasl(self) -> None:
        if self._sasl is not None:
            self._sasl.abort()
        self._sasl = None
        if self.state is State.AUTHENTICATING:
            self.state = State.NOT_AUTHENTICATED


_DONE_TEXT = {
    "PUTSCRIPT": "Putscript completed",
    "CHECKSCRIPT": "Script is valid",
    "SETACTIVE": "Setactive completed",
    "DELETESCRIPT": "Deletescript completed",
    "RENAMESCRIPT": "Renamescript completed",
    "HAVESPACE": "Putscript would succeed",
}

_HANDLERS: dict[str, Callable[[ManageSieveSession, list[Any]], None]] = {
    "CAPABILITY": ManageSieveSession._cmd_capability,
    "LOGOUT": ManageSieveSession._cmd_logout,
    "NOOP": ManageSieveSession._cmd_noop,
    "STARTTLS": ManageSieveSession._cmd_starttls,
    "AUTHENTICATE": ManageSieveSession._cmd_authenticate,
    "HAVESPACE": ManageSieveSession._cmd_havespace,
    "PUTSCRIPT": ManageSieveSession._cmd_putscript,
    "CHECKSCRIPT": ManageSieveSession._cmd_checkscript,
    "LISTSCRIPTS": ManageSieveSession._cmd_listscripts,
    "SETACTIVE": ManageSieveSession._cmd_setactive,
    "GETSCRIPT": ManageSieveSession._cmd_getscript,
    "DELETESCRIPT": ManageSieveSession._cmd_deletescript,
    "RENAMESCRIPT": ManageSieveSession._cmd_renamescript,
    "UNAUTHENTICATE": ManageSieveSession._cmd_unauthenticate,
}
