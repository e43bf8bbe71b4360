"""
The Twisted side of authentication: answers the questions the sans-IO
:class:`txmail.auth.sasl.SASLServer` asks, from an
:class:`txmail.interfaces.IDirectory`, and slows down password guessing.

Every protocol adapter (SMTP AUTH, POP3 USER/PASS and AUTH, IMAP LOGIN and
AUTHENTICATE) uses one shared :class:`Authenticator`:

* ``step(sasl, event)`` takes the event the SASL server just returned and
  resolves :class:`NeedCredentials` and :class:`NeedPasswordCheck` until the
  event is one the protocol acts on: :class:`Challenge`, :class:`Succeeded`
  or :class:`Failed`.
* ``check_password(user, password)`` serves the protocols' own
  user-and-password commands.

Implementation notes
--------------------
* PBKDF2 costs milliseconds of CPU, so password checks go through
  ``run_blocking`` (the server's bounded thread pool); an unknown user costs
  the same work, so timing does not tell whether a user exists.
* Failures are answered late: each failure from a peer (keyed by host, the
  port stripped) doubles that peer's delay, from ``failure_delay`` up to
  ``max_failure_delay`` seconds; a success resets it, and a peer not seen
  failing for ``forget_after`` seconds starts over.  A client cancelling
  (``*``) is not a guess and is answered at once.  The table of peers is
  bounded; the oldest entries are dropped first.
* Failures are also counted per account, whatever the peer (the name
  before its last ``@``, case-folded, so that ``Alice`` and
  ``alice@example.org`` count together), against an attack spread over many
  addresses.  Once an account has ``account_threshold`` failures not
  forgotten (``forget_after``), its password checks are spaced out: each
  attempt takes the account's next slot, ``failure_delay`` after the one
  before and doubling with every further failure up to
  ``max_failure_delay``, and waits for it (at most ``max_account_wait``
  seconds), so that many connections guess no faster than one.  It slows,
  it never refuses: a right password is still accepted after the wait,
  and a peer the account logged in from before (``max_peers`` such pairs
  remembered) does not wait at all.  A success resets the account's count.
* Logs name the user and peer, never the password: passwords travel as
  :class:`txmail.auth.passwords.Secret`, whose ``repr`` is redacted.

:class:`ScramPasswordChecker` offers the same verification as a
``twisted.cred`` checker, for embedders who build a ``Portal``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from txmail.auth.passwords import ScramCredentials, Secret, make_credentials, verify_password
from txmail.auth.sasl import (
    Challenge,
    Failed,
    NeedCredentials,
    NeedPasswordCheck,
    SASLEvent,
    SASLServer,
    Succeeded,
)
from txmail.interfaces import IDirectory

__all__ = ["Authenticator", "ScramPasswordChecker", "account_key", "peer_host"]

RunBlocking = Callable[..., "defer.Deferred[Any]"]


def _run_inline(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
    # run_blocking runs plain functions (PBKDF2): their value or exception becomes the Deferred.
    return defer.maybeDeferred(fn, *args)


@functools.cache
def _dummy_credentials() -> ScramCredentials:
    """Credentials no password matches in practice; checked for unknown users."""
    return make_credentials("txmail-dummy-password", salt=b"txmail-dummy-salt")


def _check(creds: ScramCredentials | None, password: str) -> bool:
    """Verify *password*; for an unknown user do the same work and fail."""
    if creds is None:
        verify_password(_dummy_credentials(), password)
        return False
    return verify_password(creds, password)


def peer_host(peer: str) -> str:
    """
    The host part of a peer description, the key of the failure delay:
    ``"192.0.2.1:4321"`` -> ``"192.0.2.1"``, ``"[2001:db8::1]:4321"`` ->
    ``"2001:db8::1"``; anything else is kept as it is.
    """
    if peer.startswith("["):
        host, sep, _ = peer[1:].partition("]")
        return host if sep else peer
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


class Authenticator:
    """
    Resolves SASL exchanges and password logins against a directory.

    Args:
        directory: the user directory.
        clock: the reactor's clock, for the failure delay.
        run_blocking: ``run_blocking(fn, *args) -> Deferred`` for CPU work
            (PBKDF2); default: run inline.
        failure_delay: the delay after a peer's first failure (seconds).
        max_failure_delay: the longest delay.
        forget_after: seconds after a peer's (or an account's) last failure
            at which its delay starts over.
        max_peers: how many peers' and accounts' failure counts, and how
            many (account, peer) pairs of past logins, are remembered.
        account_threshold: an account's failures after which its password
            checks are spaced out.
        max_account_wait: the longest wait for an account's slot.
    """

    log = Logger()

    def __init__(
        self,
        directory: IDirectory,
        *,
        clock: IReactorTime,
        run_blocking: RunBlocking | None = None,
        failure_delay: float = 1.0,
        max_failure_delay: float = 8.0,
        forget_after: float = 900.0,
        max_peers: int = 10_000,
        account_threshold: int = 10,
        max_account_wait: float = 30.0,
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.run_blocking: RunBlocking = run_blocking if run_blocking is not None else _run_inline
        self.failure_delay = failure_delay
        self.max_failure_delay = max_failure_delay
        self.forget_after = forget_after
        self.max_peers = max_peers
        self.account_threshold = account_threshold
        self.max_account_wait = max_account_wait
        # peer host -> (consecutive failures, time of the last one)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        # account key -> (failures, time of the last one, its next free slot)
        self._accounts: OrderedDict[str, tuple[int, float, float]] = OrderedDict()
        # (account key, peer host) of past logins: they skip the account's wait
        self._known: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- public API --

    def step(self, sasl: SASLServer, event: SASLEvent, *, peer: str = "") -> defer.Deferred[SASLEvent]:
        """
        Resolve *event* (just returned by *sasl*) until it is a
        :class:`Challenge`, :class:`Succeeded` or :class:`Failed`.

        ``Succeeded.username`` is the canonical user address.  ``Failed`` is
        delayed by the peer's failure delay (not for ``"cancelled"``).  The
        Deferred never fails: a directory error is logged and becomes
        ``Failed("invalid")``.
        """
        return defer.ensureDeferred(self._step(sasl, event, peer))

    def check_password(
        self, username: str, password: str | Secret[str], *, peer: str = ""
    ) -> defer.Deferred[str | None]:
        """
        Check a user name and password (POP3 USER/PASS, IMAP LOGIN).

        Returns:
            ``Deferred[str | None]``: the canonical user, or ``None`` (after
            the failure delay) when the name or password is wrong.
        """
        secret = password if isinstance(password, Secret) else Secret(password)
        return defer.ensureDeferred(self._check_password(username, secret, peer, "password"))

    def failure_count(self, peer: str) -> int:
        """How many consecutive failures are counted against *peer*."""
        entry = self._failures.get(peer_host(peer))
        return entry[0] if entry else 0

    def account_failure_count(self, username: str) -> int:
        """How many failures are counted against *username*'s account."""
        entry = self._accounts.get(account_key(username))
        return entry[0] if entry else 0

    # -- internals --

    async def _step(self, sasl: SASLServer, event: SASLEvent, peer: str) -> SASLEvent:
        mechanism = sasl.mechanism
        while True:
            if isinstance(event, NeedCredentials):
                await self._account_wait(event.username, peer)
                try:
                    creds = await self.directory.get_credentials(event.username)
                except Exception:
                    self.log.failure(
                        "directory lookup failed for {user} from {peer}", user=event.username, peer=peer
                    )
                    creds = None
                event = sasl.provide_credentials(creds)
            elif isinstance(event, NeedPasswordCheck):
                user = await self._check_password(event.username, event.password, peer, mechanism)
                if user is None:
                    # _check_password has logged and delayed already.
                    return sasl.password_checked(False)
                result = sasl.password_checked(True)
                if isinstance(result, Succeeded):
                    return Succeeded(user, user if result.authzid else "")
                return result
            elif isinstance(event, Succeeded):
                try:
                    user = await self.directory.canonical_user(event.username)
                except Exception:
                    self.log.failure(
                        "directory lookup failed for {user} from {peer}", user=event.username, peer=peer
                    )
                    user = None
                if user is None:
                    # Deleted while authenticating.
                    return await self._failed(Failed("invalid"), event.username, peer, mechanism)
                self._succeeded(user, peer, mechanism, event.username)
                return Succeeded(user, user if event.authzid else "")
            elif isinstance(event, Failed):
                return await self._failed(event, sasl.username, peer, mechanism)
            else:
                assert isinstance(event, Challenge)
                return event

    async def _check_password(
        self, username: str, password: Secret[str], peer: str, mechanism: str
    ) -> str | None:
        user: str | None = None
        await self._account_wait(username, peer)
        try:
            creds = await self.directory.get_credentials(username)
            ok = await self.run_blocking(_check, creds, password.reveal())
            if ok:
                user = await self.directory.canonical_user(username)
        except Exception:
            self.log.failure("password check failed for {user} from {peer}", user=username, peer=peer)
            user = None
        if user is None:
            await self._failed(Failed("invalid"), username, peer, mechanism)
            return None
        self._succeeded(user, peer, mechanism, username)
        return user

    def _succeeded(self, user: str, peer: str, mechanism: str, username: str = "") -> None:
        host = peer_host(peer)
        self._failures.pop(host, None)
        for key in {account_key(user), account_key(username or user)}:
            self._accounts.pop(key, None)
            self._known.pop((key, host), None)
            self._known[(key, host)] = None
        while len(self._known) > self.max_peers:
            self._known.popitem(last=False)
        self.log.info(
            "authentication succeeded for {user} from {peer} ({mechanism})",
            user=user,
            peer=peer,
            mechanism=mechanism,
        )

    async def _failed(self, event: Failed, username: str, peer: str, mechanism: str) -> Failed:
        self.log.warn(
            "authentication failed for {user} from {peer} ({mechanism}): {reason}",
            user=username,
            peer=peer,
            mechanism=mechanism,
            reason=event.reason,
        )
        if event.reason == "cancelled":
            return event
        self._register_account_failure(username)
        delay = self._register_failure(peer)
        if delay > 0:
            await task.deferLater(self.clock, delay)
        return event

    def _register_failure(self, peer: str) -> float:
        """Count a failure against *peer*; return the delay to apply (seconds)."""
        key = peer_host(peer)
        now = self.clock.seconds()
        count, last = self._failures.pop(key, (0, now))
        if now - last > self.forget_after:
            count = 0
        count += 1
        self._failures[key] = (count, now)
        while len(self._failures) > self.max_peers:
            self._failures.popitem(last=False)
        delay: float = min(self.failure_delay * 2 ** min(count - 1, 32), self.max_failure_delay)
        return delay

    def _register_account_failure(self, username: str) -> None:
        """Count a failure against *username*'s account (kept until ``forget_after``)."""
        key = account_key(username)
        now = self.clock.seconds()
        count, last, slot = self._accounts.pop(key, (0, now, now))
        if now - last > self.forget_after:
            count, slot = 0, now
        self._accounts[key] = (count + 1, now, slot)
        while len(self._accounts) > self.max_peers:
            self._accounts.popitem(last=False)

    async def _account_wait(self, username: str, peer: str) -> None:
        """
        Wait for the account's next slot while it is under a guessing attack
        (see the module's notes); return at once otherwise.
        """
        key = account_key(username)
        entry = self._accounts.get(key)
        if entry is None:
            return
        count, last, slot = entry
        now = self.clock.seconds()
        if now - last > self.forget_after:
            del self._accounts[key]
            return
        if count < self.account_threshold or (key, peer_host(peer)) in self._known:
            return
        spacing = min(
            self.failure_delay * 2 ** min(count - self.account_threshold, 32), self.max_failure_delay
        )
        start = max(now, slot)
        self._accounts[key] = (count, last, start + spacing)
        wait = min(start - now, self.max_account_wait)
        if wait > 0:
            await task.deferLater(self.clock, wait)


def account_key(username: str) -> str:
    """The name failures of an account are counted under: the part before the last ``@``, case-folded."""
    return username.rpartition("@")[0].casefold() if "@" in username else username.casefold()


@implementer(ICredentialsChecker)
class ScramPasswordChecker:
    """
    A ``twisted.cred`` checker of user names and passwords against the
    SCRAM verifiers of an :class:`IDirectory`.  The avatar id is the
    canonical user address (``str``).

    Args:
        directory: the user directory.
        run_blocking: ``run_blocking(fn, *args) -> Deferred`` for PBKDF2;
            default: run inline.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, directory: IDirectory, *, run_blocking: RunBlocking | None = None) -> None:
        self.directory = directory
        self.run_blocking: RunBlocking = run_blocking if run_blocking is not None else _run_inline

    def requestAvatarId(self, credentials: Any) -> defer.Deferred[str]:  # type: ignore[override]  # cred's stub says bytes; txmail's avatar ids are canonical addresses
        """Fire with the canonical user, or fail with ``UnauthorizedLogin``."""
        return defer.ensureDeferred(self._request(credentials))

    async def _request(self, credentials: Any) -> str:
        try:
            username = _text(credentials.username)
            password = _text(credentials.password)
        except (UnicodeDecodeError, AttributeError):
            raise UnauthorizedLogin() from None
        creds = await self.directory.get_credentials(username)
        ok = await self.run_blocking(_check, creds, password)
        if not ok:
            raise UnauthorizedLogin()
        user = await self.directory.canonical_user(username)
        if user is None:
            raise UnauthorizedLogin()
        return str(user)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
