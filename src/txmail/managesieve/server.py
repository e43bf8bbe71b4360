"""
The Twisted adapter of the ManageSieve server (RFC 5804): moves bytes and
time between a transport and a
:class:`txmail.managesieve.session.ManageSieveSession`, and turns the
session's events into authenticator and store calls.

Implementation notes
--------------------
* The plumbing (pausing on a Deferred, back-pressure, the idle timer,
  STARTTLS dropping pipelined bytes) is :class:`txmail._protocol.SessionProtocol`'s.
* A SASL exchange that succeeds opens the user's store before the session
  answers ``OK``: a store that does not provide
  :class:`txmail.interfaces.ISieveScripts` (no place for scripts) or that
  cannot be opened fails the login with ``NO``, so a client never sees an
  authenticated state it cannot use.
* PUTSCRIPT and CHECKSCRIPT check the script with the Sieve engine
  (:func:`txmail.managesieve.session.check_script`) in ``run_blocking`` (the
  server's thread pool): a 1 MiB script costs milliseconds of CPU.  A bad
  script gets ``NO`` with the engine's "line L, column C: ..." text and is
  not stored.  PUTSCRIPT of a new name and HAVESPACE count the user's
  scripts against ``max_scripts`` (``NO (QUOTA/MAXSCRIPTS)``).
* Store errors become response codes in one place
  (:func:`txmail.managesieve.session.error_response`); any other failure is
  logged and answered ``NO (TRYLATER)``, the connection kept.
* After STARTTLS the capabilities are sent again once the handshake is
  started (they go out encrypted; RFC 5804 section 2.2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmail._fs import run_inline
from txmail._protocol import SessionProtocol, is_loopback, make_id
from txmail.auth import sasl
from txmail.auth.authenticator import Authenticator
from txmail.interfaces import IMailStore, IMailStoreProvider, ISieveScripts
from txmail.managesieve.events import (
    Authenticated,
    AuthStep,
    ConnectionClosing,
    Event,
    ScriptRequest,
    StartTLS,
    Unauthenticated,
)
from txmail.managesieve.grammar import response
from txmail.managesieve.session import (
    DEFAULT_MAX_SCRIPT_SIZE,
    DEFAULT_MAX_SCRIPTS,
    MAX_LINE_LENGTH,
    ManageSieveSession,
    QuotaMaxScripts,
    check_script,
)
from txmail.sieve import Limits

# Authenticator is imported at run time, not only for type checking: the API
# documentation evaluates the signatures' annotations (else a short name such as
# Limits is ambiguous).

__all__ = ["DEFAULT_IDLE_TIMEOUT", "ManageSieveFactory", "ManageSieveServerProtocol"]

#: Seconds a client may stay silent (Dovecot disconnects idle ManageSieve clients after 30 minutes too).
DEFAULT_IDLE_TIMEOUT = 1800.0

_T = TypeVar("_T")

_TRY_LATER = response("NO", "TRYLATER", "Temporary server failure, try again later")
_NO_SCRIPTS = response("NO", None, "Sieve scripts are not available for this account")


class ManageSieveServerProtocol(SessionProtocol):
    """One ManageSieve connection; see the module notes."""

    log = Logger()

    PROTOCOL_NAME = "ManageSieve"
    STARTTLS_COMMAND = "STARTTLS"
    INTERNAL_ERROR_REPLY = _TRY_LATER

    session: ManageSieveSession | None

    def __init__(self, factory: ManageSieveFactory) -> None:
        super().__init__(factory)
        self.factory: ManageSieveFactory = factory
        self.user: str | None = None
        self.scripts: ISieveScripts | None = None  # the user's store once logged in

    def _open_session(self, host: str) -> ManageSieveSession:
        factory = self.factory
        session = ManageSieveSession(
            tls_available=self._tls_available(),
            tls_active=factory.implicit_tls,
            plaintext_auth=factory.plaintext_auth,
            loopback=is_loopback(host) if host else False,
            max_script_size=factory.max_script_size,
            max_line_length=factory.max_line_length,
            max_redirects=factory.limits.max_redirects,
            sasl_factory=factory.sasl_factory,
        )
        self.log.info("ManageSieve connection from {peer}", peer=self.peer, session_id=self.session_id)
        return session

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.log.info("ManageSieve connection from {peer} closed", peer=self.peer, session_id=self.session_id)

    def _timer_delay(self) -> float:
        return self.factory.idle_timeout

    def _handle(self, event: Event) -> None:
        if isinstance(event, AuthStep):
            self._auth_step(event)
        elif isinstance(event, StartTLS):
            self._start_tls()
        elif isinstance(event, ScriptRequest):
            self._script_request(event)
        elif isinstance(event, Authenticated):
            self.log.info(
                "ManageSieve login of {user} from {peer} ({mechanism})",
                user=event.user,
                peer=self.peer,
                mechanism=event.mechanism,
                session_id=self.session_id,
            )
        elif isinstance(event, Unauthenticated):
            self.user = None
            self.scripts = None
        elif isinstance(event, ConnectionClosing):
            self.log.debug(
                "ManageSieve session of {peer} ends: {reason}",
                peer=self.peer,
                reason=event.reason,
                session_id=self.session_id,
            )

    # -- login --

    def _logging_in(self, user: str, accept: Callable[[], None]) -> None:
        """The SASL exchange succeeded: open the user's store, which must keep scripts."""
        session = self.session
        assert session is not None
        d = self.factory.stores.store_for(user)

        def opened(store: IMailStore) -> None:
            scripts = ISieveScripts(store, None)
            if scripts is None:
                self.log.info(
                    "ManageSieve login of {user} refused: the store keeps no Sieve scripts",
                    user=user,
                    session_id=self.session_id,
                )
                session.reject(_NO_SCRIPTS)
                return
            self.user = user
            self.scripts = scripts
            accept()

        self._answer(d, opened, _TRY_LATER, "opening the store")

    # -- STARTTLS --

    def _start_tls(self) -> None:
        super()._start_tls()
        session = self.session
        if session is not None and not self._lost:
            # RFC 5804 section 2.2: the capabilities again, under TLS.
            session.tls_started()
            self._flush()

    # -- scripts --

    def _script_request(self, event: ScriptRequest) -> None:
        session = self.session
        assert session is not None
        d = defer.ensureDeferred(self._run_request(event))

        def done(result: Any) -> None:
            if not self._lost:
                session.accept(result)

        def failed(f: Failure) -> None:
            if self._lost or not session.paused:
                return
            if not session.fail(f.value if f.value is not None else RuntimeError("no error")):
                self.log.failure(
                    "ManageSieve {command} failed for {user}",
                    failure=f,
                    command=event.command,
                    user=self.user,
                    session_id=self.session_id,
                )

        d.addCallbacks(done, failed)
        d.addErrback(self._internal_error)
        self._wait(d)

    async def _run_request(self, event: ScriptRequest) -> Any:
        store = self.scripts
        assert store is not None  # the session asks only once logged in
        factory = self.factory
        command, args = event.command, event.args
        if command == "LISTSCRIPTS":
            return await store.list_scripts()
        if command == "GETSCRIPT":
            return await store.get_script(_arg(args[0], str))
        if command == "CHECKSCRIPT":
            await factory.run_blocking(check_script, args[0], None, factory.limits)
            return None
        if command == "PUTSCRIPT":
            name, content = args
            await factory.run_blocking(check_script, content, name, factory.limits)
            name, content = _arg(name, str), _arg(content, bytes)
            await self._check_count(name)
            await store.put_script(name, content)
            self.log.info(
                "ManageSieve: {user} stored the script {name} ({size} octets)",
                user=self.user,
                name=name,
                size=len(content),
                session_id=self.session_id,
            )
            return None
        if command == "HAVESPACE":
            await self._check_count(str(args[0]))
            return None
        if command == "SETACTIVE":
            return await store.set_active(None if args[0] is None else _arg(args[0], str))
        if command == "DELETESCRIPT":
            return await store.delete_script(_arg(args[0], str))
        if command == "RENAMESCRIPT":
            return await store.rename_script(_arg(args[0], str), _arg(args[1], str))
        raise RuntimeError(f"unknown script request {command}")

    async def _check_count(self, name: str) -> None:
        """Storing *name* would not take the user past ``max_scripts`` (a replacement never does)."""
        assert self.scripts is not None
        listed = await self.scripts.list_scripts()
        names = {n for n, _ in listed}
        if name not in names and len(names) >= self.factory.max_scripts:
            raise QuotaMaxScripts(name)


def _arg(arg: object, kind: type[_T]) -> _T:
    """An argument of a :class:`ScriptRequest` as the session gives it (a name ``str``, a script ``bytes``)."""
    if isinstance(arg, kind):
        return arg
    raise TypeError(f"a script request argument is {kind.__name__}, not {type(arg).__name__}")


class ManageSieveFactory(Factory[ManageSieveServerProtocol]):
    """
    Builds :class:`ManageSieveServerProtocol` connections.

    Args:
        authenticator: the shared :class:`txmail.auth.authenticator.Authenticator`.
        stores: the :class:`txmail.interfaces.IMailStoreProvider`; each
            user's store must provide :class:`txmail.interfaces.ISieveScripts`.
        tls_context: a context factory for STARTTLS, or ``None`` for none.
        implicit_tls: the endpoint already runs TLS.
        plaintext_auth: ``"never"``, ``"loopback"`` or ``"always"``.
        idle_timeout: seconds of client silence before ``BYE``.
        max_script_size: octets of one script.
        max_scripts: scripts one user may keep.
        max_line_length: octets of a command outside its literals.
        limits: the Sieve engine's limits scripts are checked within.
        run_blocking: runs the script checks (the server's thread pool);
            inline by default.
        clock: the ``IReactorTime`` for timeouts; the global reactor by default.
        sasl_factory: makes SASL servers (tests inject a nonce).
    """

    protocol = ManageSieveServerProtocol

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        stores: IMailStoreProvider,
        tls_context: Any = None,
        implicit_tls: bool = False,
        plaintext_auth: sasl.PlaintextPolicy = "never",
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_script_size: int = DEFAULT_MAX_SCRIPT_SIZE,
        max_scripts: int = DEFAULT_MAX_SCRIPTS,
        max_line_length: int = MAX_LINE_LENGTH,
        limits: Limits | None = None,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        clock: IReactorTime | None = None,
        sasl_factory: Callable[[str], sasl.SASLServer] = sasl.SASLServer,
    ) -> None:
        if plaintext_auth not in sasl.PLAINTEXT_POLICIES:
            raise ValueError(f"unknown plaintext_auth policy {plaintext_auth!r}")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.authenticator = authenticator
        self.stores = stores
        self.tls_context = tls_context
        self.implicit_tls = implicit_tls
        self.plaintext_auth = plaintext_auth
        self.idle_timeout = idle_timeout
        self.max_script_size = max_script_size
        self.max_scripts = max_scripts
        self.max_line_length = max_line_length
        self.limits = limits or Limits(max_script_size=max_script_size)
        self.run_blocking = run_blocking or run_inline
        self.clock: Any = clock
        self.sasl_factory = sasl_factory

    def make_id(self) -> str:
        """A new session id: time-ordered, then random."""
        return make_id(self.clock)

    def buildProtocol(self, addr: Any) -> ManageSieveServerProtocol:
        return ManageSieveServerProtocol(self)
