"""
The sans-IO IMAP4rev1 server session (RFC 3501 with the extensions of
issue 4).

Theory of operation
-------------------
The shape is the one every txmail session has (h11/h2)::

    transport.write(session.data_to_send())          # the greeting
    session.receive_data(bytes_from_network)
    while (event := session.next_event()) is not None:
        ...                                           # answer paused events
    transport.write(session.data_to_send())

Input goes through :class:`txmail.imap.fragment.CommandFramer` (lines and
literals, size limits before reading) and :func:`txmail.imap.parser.parse_command`.
The session owns what needs no store:

* the state machine of RFC 3501 section 3 (not authenticated,
  authenticated, selected, logout): a command not valid in the current
  state gets ``BAD`` and the session goes on;
* the commands that change the connection: LOGOUT, STARTTLS, IDLE (RFC
  2177), and the LOGIN and AUTHENTICATE exchanges (RFC 4959 SASL-IR, the
  shared SASL layer and plaintext policy of :mod:`txmail.auth.sasl`);
* the commands of the table (:data:`txmail.imap.commands.COMMANDS`) with
  an ``answer`` handler, which need no store (CAPABILITY, ID, ENABLE,
  NAMESPACE, NOOP while nothing is selected): answered at once;
* literal continuations: ``+`` for a synchronizing literal within the
  limits, ``BAD``/``NO [TOOBIG]`` before any octet of one that is not
  (RFC 7888 section 4, RFC 7889);
* the selected mailbox's :class:`txmail.imap.view.SelectedView` and when
  its untagged updates may be sent: at the end of each command (EXPUNGE
  not after FETCH, STORE or SEARCH, RFC 3501 section 7.4.1), and at once
  during IDLE; after them, the ``ADDTO``/``REMOVEFROM`` of the updating
  searches (RFC 5267 section 4.3, :attr:`IMAPSession.contexts`), which
  end with the selection.

The table also says in which states a command is valid and which
capabilities to advertise.  Every other command is an
:class:`txmail.imap.events.Execute` event: the session pauses until the
application has run its ``run`` handler, written its untagged responses
(:meth:`IMAPSession.send`) and called :meth:`IMAPSession.finish`.  So
pipelined commands are answered one at a time, in order.

STARTTLS: nothing after the command is parsed; bytes the client pipelined
behind it are kept in :attr:`IMAPSession.trailing_data` for the adapter to
log, and dropped (RFC 3501 section 6.2.1, RFC 2595 section 3.1;
CVE-2011-0411).

Replies never include exception text or echo much input.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from txmail._session import SessionCore
from txmail.auth import sasl
from txmail.auth.exchange import Ask, Cancelled, Done, Outcome, Refused, SASLExchange, Send, encode_challenge
from txmail.imap import serialize
from txmail.imap.commands import COMMANDS, State, allowed
from txmail.imap.commands import capabilities as table_capabilities
from txmail.imap.commands.imap4rev2 import IMAP4REV2, utf8_names
from txmail.imap.commands.utf8 import UTF8_ACCEPT
from txmail.imap.contexts import ResultContexts
from txmail.imap.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    Event,
    Execute,
    IdleDone,
    IdleStarted,
    PasswordCheck,
    StartTLS,
)
from txmail.imap.fragment import (
    DEFAULT_MAX_LINE,
    DEFAULT_MAX_LITERAL,
    CommandFragments,
    CommandFramer,
    FramingError,
    LineFragment,
    LiteralAnnounced,
)
from txmail.imap.parser import ParseError, parse_command
from txmail.imap.types import Authenticate, Command, Login
from txmail.imap.view import SelectedView

__all__ = ["IMAPLimits", "IMAPSession", "State", "TaggedReply"]

#: A tagged response: status (``"OK"``, ``"NO"``, ``"BAD"``), text, response code or ``None``.
TaggedReply = tuple[str, str, str | None]


@dataclass(frozen=True, slots=True)
class IMAPLimits:
    """
    Limits of one IMAP session (and its METADATA settings).

    Attributes:
        max_line: octets of one command line, CRLF included.
        max_literal: octets of one literal; also the APPENDLIMIT (RFC 7889).
        max_bad_commands: protocol errors tolerated before ``BYE``.
        metadata_max_size: octets of one METADATA entry value (RFC 5464
            section 4.3: ``NO [METADATA MAXSIZE n]`` beyond).
        metadata_max_entries: METADATA entries one user may keep (``NO
            [METADATA TOOMANY]`` beyond).
        metadata_admin: the server entry ``/shared/admin`` (a URI), or ``None``.
        metadata_comment: the server entry ``/shared/comment``, or ``None``.
    """

    max_line: int = DEFAULT_MAX_LINE
    max_literal: int = DEFAULT_MAX_LITERAL
    max_bad_commands: int = 30
    metadata_max_size: int = 16384
    metadata_max_entries: int = 256
    metadata_admin: str | None = None
    metadata_comment: str | None = None


#: Octets a literal may hold before login (see IMAPSession._set_literal_limits).
PREAUTH_MAX_LITERAL = 8192


class IMAPSession(SessionCore[Event]):
    """
    One IMAP connection's protocol state, fed bytes and answering with bytes
    and events (see the module docstring).

    Args:
        tls_available: STARTTLS can be offered.
        tls_active: the connection already runs TLS (port 993).
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``.
        loopback: the client is on the loopback interface.
        limits: the session's :class:`IMAPLimits`.
        sasl_factory: makes the SASL server of an AUTHENTICATE exchange.
        version: the version reported by ID.
        withheld: capabilities of the table not to advertise: those the
            user's store does not back (OBJECTID without store ids,
            :func:`txmail.imap.commands.objectid.withheld`; METADATA
            without IMetadataStore, set again at login).

    Attributes:
        state: a :class:`State`.
        user: the canonical user once authenticated.
        view: the selected mailbox's :class:`SelectedView`, or ``None``.
        tls: the connection runs TLS.
        bad_commands: protocol errors so far.
    """

    CLOSED_STATE = State.LOGOUT

    def __init__(
        self,
        *,
        tls_available: bool = False,
        tls_active: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        loopback: bool = False,
        limits: IMAPLimits | None = None,
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
        version: str = "",
        withheld: Iterable[str] = (),
    ) -> None:
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        self.limits = limits or IMAPLimits()
        self.tls = tls_active
        self.tls_available = tls_available and not tls_active
        self.plaintext_auth = plaintext_auth
        self.loopback = loopback
        self.version = version
        #: Capabilities of the table not to advertise (see *withheld*).
        self.withheld = frozenset(withheld)
        self._sasl_factory = sasl_factory
        SessionCore.__init__(self)
        self.state = State.NOT_AUTHENTICATED
        self.user: str | None = None
        self.view: SelectedView | None = None
        #: The updating searches on the selected mailbox (RFC 5267 section 4.3).
        self.contexts = ResultContexts()
        #: The extensions ENABLEd (RFC 5161), explicitly or by using them (RFC 7162 CONDSTORE).
        self.enabled: set[str] = set()
        #: NOTIFY (RFC 5465 section 6.1): ``"SELECTED"`` or ``"SELECTED-DELAYED"``
        #: when the selected mailbox's changes are pushed between commands.
        self.notify_selected: str | None = None
        #: NOTIFY's MessageNew fetch attributes for the selected mailbox when
        #: they are ``UID`` and ``FLAGS`` only (told from the view, after EXISTS).
        self.notify_fetch: frozenset[str] = frozenset()
        #: True when they need the store: the UIDs of the new messages told
        #: by EXISTS are kept for the adapter (:meth:`take_new_messages`).
        self.notify_fetch_later = False
        #: NOTIFY's FlagChange for the selected mailbox: flag changes are told with UID (section 5.1).
        self.notify_flag_uid = False
        self._new_messages: list[int] = []
        self.bad_commands = 0
        self._framer = self._new_framer()
        self._tag: str | None = None  # of the command being answered
        self._command: Command | None = None
        self._sasl: SASLExchange | None = None
        self._idling = False
        self._write(
            b"* OK [CAPABILITY " + self._capability_text().encode("ascii") + b"] txmail IMAP4rev1 ready\r\n"
        )

    def _new_framer(self) -> CommandFramer:
        framer = CommandFramer(max_line=self.limits.max_line)
        self._set_literal_limits(framer)
        return framer

    def _set_literal_limits(self, framer: CommandFramer) -> None:
        """
        Before login a literal may hold :data:`PREAUTH_MAX_LITERAL` octets
        (a user name or password needs no more; RFC 7888's LITERAL- caps
        non-synchronizing literals at 4096 for the same reason); after it,
        ``max_literal`` (the APPENDLIMIT).
        """
        size = self.limits.max_literal if self.user is not None else PREAUTH_MAX_LITERAL
        framer.max_literal = size
        framer.max_command = size + 64 * 1024

    # -- public API ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Add bytes received from the client."""
        if self.state is State.LOGOUT:
            return
        if isinstance(self._pending, StartTLS):
            self._trailing += data
            return
        self._framer.receive_data(data)

    def next_event(self) -> Event | None:
        """Parse what was received; the next event, or ``None`` when input or an answer is needed."""
        while not self._events and self._pending is None and self.state is not State.LOGOUT:
            frame = self._framer.next_event()
            if frame is None:
                break
            self._frame(frame)
        return self._events.popleft() if self._events else None

    def take_buffered_input(self) -> bytes:
        """
        Take the octets received but not yet framed.  After COMPRESS (RFC
        4978 section 3) they are compressed: the adapter inflates them and
        gives them back with :meth:`receive_data`.
        """
        return self._framer_leftovers()

    @property
    def buffered_input(self) -> int:
        """Octets received and not yet framed."""
        return self._framer.buffered

    @property
    def idling(self) -> bool:
        """An IDLE command is in progress (RFC 2177)."""
        return self._idling

    @property
    def pending_command(self) -> Command | None:
        """The command of the pending :class:`Execute` event."""
        return self._command if isinstance(self._pending, Execute) else None

    def capabilities(self) -> tuple[str, ...]:
        """The capabilities to advertise now (RFC 3501 section 7.2.1)."""
        caps = [c for c in table_capabilities() if c not in self.withheld]
        caps.append(f"APPENDLIMIT={self.limits.max_literal}")
        if self.state is State.NOT_AUTHENTICATED:
            if self.tls_available:
                caps.append("STARTTLS")
            mechanisms = sasl.available_mechanisms(
                tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
            )
            caps.extend("AUTH=" + m for m in mechanisms)
            if not self._password_allowed():
                caps.append("LOGINDISABLED")
        return tuple(caps)

    def send(self, *data: bytes) -> None:
        """Queue untagged responses (complete lines, possibly in several pieces) of the command being executed."""
        for piece in data:
            self._write(piece)

    def finish(self, status: str, text: str, code: str | None = None) -> None:
        """
        End the pending :class:`Execute` with ``tag status [code] text``,
        after the mailbox updates the client may be told now.
        """
        event = self._take_pending()
        if not isinstance(event, Execute):
            raise RuntimeError("finish() answers an Execute event")
        command = event.command
        self._command = None
        # RFC 5465 section 5.3: with NOTIFY SELECTED, expunges are not held back.
        immediate = self.notify_selected == "SELECTED"
        self._flush_updates(allow_expunge=immediate or not COMMANDS[command.name].withholds_expunge)
        self._complete(command.tag, status, text, code)

    def select(self, view: SelectedView) -> None:
        """The pending SELECT/EXAMINE opened *view* (call before :meth:`finish`)."""
        self.view = view
        self._new_messages = []
        self.state = State.SELECTED
        self.contexts.clear()

    def unselect(self) -> None:
        """Leave the selected state (CLOSE, UNSELECT, a failed SELECT)."""
        self.view = None
        self._new_messages = []
        self.contexts.clear()  # RFC 5267 section 4.3: updates cease
        if self.state is State.SELECTED:
            self.state = State.AUTHENTICATED

    def mailbox_changed(self) -> None:
        """
        The view has new changes queued: while idling, tell the client now;
        with NOTIFY SELECTED or SELECTED-DELAYED (RFC 5465 section 6.1) also
        when no command is in progress (EXPUNGE only with SELECTED: RFC
        3501 section 7.4.1 holds it back otherwise); else they go out when
        the next command completes.
        """
        if self._idling:
            self._flush_updates(allow_expunge=True)
        elif self.notify_selected is not None and self.between_commands:
            self._flush_updates(allow_expunge=self.notify_selected == "SELECTED")

    def take_new_messages(self) -> list[int]:
        """
        The UIDs of the messages told by EXISTS since the last call, when
        NOTIFY's MessageNew asks for fetch attributes the adapter must read
        from the store (:attr:`notify_fetch_later`).
        """
        uids, self._new_messages = self._new_messages, []
        return uids

    def push_updates(self) -> None:
        """
        Tell the selected mailbox's changes now, as the running command's
        completion would (its EXPUNGE rule): the adapter then fetches
        NOTIFY's MessageNew attributes before the tagged response.
        """
        command = self.pending_command
        withholds = command is not None and COMMANDS[command.name].withholds_expunge
        self._flush_updates(allow_expunge=self.notify_selected == "SELECTED" or not withholds)

    @property
    def between_commands(self) -> bool:
        """Logged in, and no command is in progress: unsolicited responses may go out (RFC 5465)."""
        return self._pending is None and self.state in (State.AUTHENTICATED, State.SELECTED)

    def unsolicited(self, *data: bytes) -> None:
        """
        Write untagged responses that belong to no command (NOTIFY's STATUS
        and LIST, RFC 5465): the adapter calls it while idling, between
        commands, or while a command runs (before its tagged response).
        """
        for piece in data:
            self._write(piece)

    def accept(self, value: object = None) -> None:
        """Answer the pending PasswordCheck, AuthStep or StartTLS (see :mod:`txmail.imap.events`)."""
        event = self._take_pending()
        if isinstance(event, PasswordCheck):
            assert isinstance(value, str) and self._tag is not None
            self._logged_in(self._tag, value, "LOGIN")
        elif isinstance(event, AuthStep):
            self._authenticator_result(value)
        elif isinstance(event, StartTLS):
            assert self._tag is not None
            self._complete(self._tag, "OK", "Begin TLS negotiation now")
            self._trailing.clear()
            self._framer = self._new_framer()
            self.tls = True
            self.tls_available = False
        else:
            raise RuntimeError(f"accept() does not answer {type(event).__name__}; use finish()")

    def reject(self, reply: TaggedReply | None = None) -> None:
        """
        Answer the pending event with a tagged failure: *reply* is
        ``(status, text, code)``; ``None`` means the LOGIN's ``NO
        [AUTHENTICATIONFAILED] Authentication failed``.
        """
        event = self._take_pending()
        status, text, code = reply or ("NO", "Authentication failed", None)
        if isinstance(event, PasswordCheck):
            code = code or "AUTHENTICATIONFAILED"
            self._auth_failure()
        elif isinstance(event, AuthStep):
            self._sasl = None
        elif isinstance(event, StartTLS):
            self._trailing.clear()
        elif isinstance(event, Execute):
            self._command = None
        tag = self._tag or "*"
        self._complete(tag, status, text, code)

    def timeout(self) -> None:
        """The client was idle too long (RFC 3501 section 5.4): ``BYE`` and close."""
        if self.state is State.LOGOUT:
            return
        self._pending = None
        self._close(b"* BYE Autologout; idle for too long\r\n", "timeout")

    def shutdown(self, text: str = "Server shutting down") -> None:
        """The server stops: ``BYE`` and close."""
        if self.state is not State.LOGOUT:
            self._pending = None
            self._close(b"* BYE " + _text(text) + b"\r\n", "shutdown")

    def connection_lost(self) -> None:
        """The transport is gone."""
        self.state = State.LOGOUT
        self._idling = False
        self._pending = None

    # -- internals -------------------------------------------------------------------

    def _complete(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        self._write(serialize.tagged(tag, status, text, code))

    def _flush_updates(self, *, allow_expunge: bool) -> None:
        view = self.view
        if view is None:
            return
        view.flags_with_uid = self.notify_flag_uid
        if not self.notify_fetch and not self.notify_fetch_later:
            self._write(view.updates(allow_expunge=allow_expunge))
        else:
            # RFC 5465 section 5.2: MessageNew's FETCH follows the EXISTS.
            known = view.max_uid
            self._write(view.updates(allow_expunge=allow_expunge))
            start = bisect.bisect_right(view.uids, known)
            if self.notify_fetch_later:
                self._new_messages.extend(view.uids[start:])
            else:
                with_uid = "UID" in self.notify_fetch
                for i in range(start, len(view.uids)):
                    uid = view.uids[i]
                    if "FLAGS" in self.notify_fetch:
                        self._write(view.fetch_flags(i + 1, uid, with_uid=with_uid))
                    else:
                        self._write(serialize.fetch_uid(i + 1, uid))
        if self.contexts:
            # RFC 5267 section 4.3.3: ADDTO after the EXISTS and FETCH.
            self.send(*serialize.render_all(self.contexts.updates(view)))

    def _close(self, line: bytes, reason: str) -> None:
        self._sasl = None
        self._idling = False
        self._write(line)
        self.state = State.LOGOUT
        self._emit(ConnectionClosing(reason))

    def _bad(self, tag: str | None, text: str, code: str | None = None, status: str = "BAD") -> None:
        """A client error: answer it, counting; too many end the session."""
        self.bad_commands += 1
        if self.bad_commands > self.limits.max_bad_commands:
            self._close(b"* BYE Too many invalid commands\r\n", "errors")
            return
        if tag is None:
            self._write(b"* BAD " + _text(text) + b"\r\n")
        else:
            self._complete(tag, status, text, code)

    def _password_allowed(self) -> bool:
        return sasl.password_auth_allowed(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )

    def _capability_text(self) -> str:
        return " ".join(self.capabilities())

    # -- framing ---------------------------------------------------------------------

    def _frame(self, frame: object) -> None:
        if isinstance(frame, LiteralAnnounced):
            # Within the limits (the framer checked): ask for the octets.
            self._write(b"+ Ready for literal data\r\n")
            self._framer.accept_literal()
        elif isinstance(frame, FramingError):
            if self._sasl is not None:
                # A SASL response over the line limit: end the exchange with
                # the AUTHENTICATE command's tagged BAD, so that the next
                # line is read as a command, not as a response.
                self._sasl.abort()
                self._sasl = None
                limit = self.limits.max_line
                self._bad(
                    self._tag or "*", f"Authentication cancelled: the response is longer than {limit} octets"
                )
            elif frame.code == "TOOBIG":
                # RFC 7889 section 4 / RFC 4469: an APPEND over the limit is a NO [TOOBIG].
                self._bad(frame.tag, frame.text, "TOOBIG", status="NO" if frame.tag else "BAD")
            else:
                self._bad(frame.tag, frame.text)
        elif isinstance(frame, CommandFragments):
            if self._sasl is not None:
                self._auth_response(frame)
            elif self._idling:
                self._idle_line(frame)
            else:
                self._command_frame(frame)

    def _command_frame(self, frame: CommandFragments) -> None:
        try:
            command = parse_command(
                frame.fragments, utf8=UTF8_ACCEPT in self.enabled, utf8_names=IMAP4REV2 in self.enabled
            )
        except ParseError as e:
            self._bad(e.tag, e.text)
            return
        name = command.name
        if self.command_observer is not None:
            self.command_observer(name)
        if name not in allowed(self.state):
            self._bad(command.tag, f"{name} is not allowed now")
            return
        spec = COMMANDS[name]
        self._tag = command.tag
        if command.invalid_name and spec.invalid_name is not None:
            # SELECT and EXAMINE (None) go to their handler, which
            # deselects first (RFC 3501 section 6.3.1: a failed SELECT
            # leaves no mailbox selected).
            self._invalid_name(command, spec.invalid_name)
            return
        if spec.connection:
            _CONNECTION_COMMANDS[name](self, command)
            return
        if spec.answer is not None and (spec.run is None or self.view is None):
            for response in spec.answer(self, command):
                self._write(b"".join(serialize.render(response, utf8_names=utf8_names(self.enabled))))
            self._complete(command.tag, "OK", f"{name} completed")
            return
        if self.view is not None and self.view.deleted and spec.on_messages:
            self._complete(command.tag, "NO", "The selected mailbox was deleted")
            return
        self._command = command
        self._emit(Execute(command))

    def _invalid_name(self, command: Command, code: str) -> None:
        """
        A mailbox name that is an astring but not modified UTF-7 names no
        mailbox: LIST and LSUB find nothing (*code* ``""``), STATUS and the
        others answer NO [*code*] (RFC 3501 sections 5.1.3 and 6.3.10), not BAD.
        """
        if not code:
            self._complete(command.tag, "OK", f"{command.name} completed")
        else:
            self._complete(command.tag, "NO", "Mailbox name is not valid modified UTF-7", code)

    # -- the connection commands (connection=True in the table) -------------------------

    def _cmd_logout(self, command: Command) -> None:
        self._write(b"* BYE Logging out\r\n")
        self._complete(command.tag, "OK", "LOGOUT completed")
        self._close(b"", "logout")

    def _cmd_starttls(self, command: Command) -> None:
        if not self.tls_available:
            self._bad(command.tag, "TLS is not available" if not self.tls else "TLS is already active")
            return
        self._emit(StartTLS())
        # What the client pipelined behind STARTTLS is never a command.
        self._trailing[:] = self._framer_leftovers()

    def _framer_leftovers(self) -> bytes:
        leftover = self._framer.drain()
        self._framer = self._new_framer()
        return leftover

    def _cmd_idle(self, command: Command) -> None:
        self._idling = True
        self._write(b"+ idling\r\n")
        self._emit(IdleStarted())
        self._flush_updates(allow_expunge=True)

    def _idle_line(self, frame: CommandFragments) -> None:
        self._idling = False
        line = b"".join(f.data for f in frame.fragments if isinstance(f, LineFragment))
        tag = self._tag or "*"
        self._emit(IdleDone())
        if len(frame.fragments) == 1 and line.strip().upper() == b"DONE":
            self._flush_updates(allow_expunge=True)
            self._complete(tag, "OK", "IDLE terminated")
        else:
            # RFC 2177 section 3: only DONE ends IDLE.
            self._bad(tag, "Expected DONE")

    def _cmd_login(self, command: Command) -> None:
        assert isinstance(command.args, Login)
        if not self._password_allowed():
            # RFC 3501 section 6.2.3 (LOGINDISABLED), RFC 5530 PRIVACYREQUIRED.
            self._complete(
                command.tag, "NO", "Plaintext login is disabled; use STARTTLS first", "PRIVACYREQUIRED"
            )
            return
        self._emit(PasswordCheck(command.args.userid, command.args.password))

    def _cmd_authenticate(self, command: Command) -> None:
        args = command.args
        assert isinstance(args, Authenticate)
        mechanism = args.mechanism.upper()
        offered = sasl.available_mechanisms(
            tls=self.tls, plaintext_policy=self.plaintext_auth, loopback=self.loopback
        )
        if mechanism not in offered:
            self._complete(command.tag, "NO", "Unsupported authentication mechanism", "CANNOT")
            return
        self._sasl = SASLExchange(self._sasl_factory(mechanism))
        self._sasl_outcome(command.tag, self._sasl.start(args.initial_response))

    # -- SASL --------------------------------------------------------------------------

    def _auth_response(self, frame: CommandFragments) -> None:
        assert self._sasl is not None
        tag = self._tag or "*"
        if len(frame.fragments) != 1:
            # A literal is no SASL response.
            self._sasl.abort()
            self._sasl = None
            self._bad(tag, "Invalid SASL response")
            return
        self._sasl_outcome(tag, self._sasl.respond(frame.fragments[0].data))

    def _authenticator_result(self, event: object) -> None:
        if self._sasl is None:
            raise RuntimeError("no SASL exchange is waiting for the authenticator")
        self._sasl_outcome(self._tag or "*", self._sasl.resolved(event))

    def _sasl_outcome(self, tag: str, outcome: Outcome) -> None:
        """Do what the exchange says (:mod:`txmail.auth.exchange`), in IMAP's words."""
        if isinstance(outcome, Send):
            self._write(b"+ " + encode_challenge(outcome.data) + b"\r\n")
            return
        if isinstance(outcome, Ask):
            self._emit(outcome.step)
            return
        self._sasl = None
        if isinstance(outcome, Done):
            self._logged_in(tag, outcome.user, outcome.mechanism)
        elif isinstance(outcome, Refused):
            self._auth_failure()
            self._complete(tag, "NO", "Authentication failed", "AUTHENTICATIONFAILED")
        elif isinstance(outcome, Cancelled):
            # RFC 3501 section 6.2.2: "*" cancels; the server answers BAD.
            self._complete(tag, "BAD", "Authentication cancelled")
        else:
            self._bad(
                tag,
                f"Invalid base64 in the {'SASL response' if outcome.what == 'response' else outcome.what}",
            )

    def _auth_failure(self) -> None:
        self.bad_commands += 1

    def _logged_in(self, tag: str, user: str, mechanism: str) -> None:
        self.user = user
        self.state = State.AUTHENTICATED
        self._set_literal_limits(self._framer)
        # RFC 3501 section 6.2.2/6.2.3: capabilities may change after login; say so.
        self._complete(tag, "OK", "Logged in", "CAPABILITY " + self._capability_text())
        self._emit(Authenticated(user, mechanism))


#: The commands that change the connection, answered here (``connection=True`` in the table).
_CONNECTION_COMMANDS: dict[str, Callable[[IMAPSession, Command], None]] = {
    "LOGOUT": IMAPSession._cmd_logout,
    "STARTTLS": IMAPSession._cmd_starttls,
    "IDLE": IMAPSession._cmd_idle,
    "LOGIN": IMAPSession._cmd_login,
    "AUTHENTICATE": IMAPSession._cmd_authenticate,
}


def _text(text: str) -> bytes:
    return text.replace("\r", " ").replace("\n", " ").encode("utf-8")
