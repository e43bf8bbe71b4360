"""
Tests for the Twisted ManageSieve adapter on StringTransport with a
task.Clock, the memory store and the real Authenticator: login (and a store
without scripts), scripts checked before they are stored, the script count
limit, STARTTLS dropping pipelined bytes, the idle timeout, a store error.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from tests.pop3.test_server import TLSStringTransport
from txmail.auth.authenticator import Authenticator
from txmail.auth.passwords import make_credentials
from txmail.managesieve.server import ManageSieveFactory, ManageSieveServerProtocol
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"
PASSWORD = "sieve secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
PEER = IPv4Address("TCP", "127.0.0.1", 4321)
REMOTE_PEER = IPv4Address("TCP", "192.0.2.7", 4321)
LOGIN = b'AUTHENTICATE "PLAIN" "' + base64.b64encode(f"\0{USER}\0{PASSWORD}".encode()) + b'"\r\n'


class FakeDirectory:
    """Just enough of IDirectory for the Authenticator: one user, alice."""

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == USER else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(USER if username == USER else None)


class _Bare:
    """A store without ISieveScripts."""


class _BareProvider:
    def store_for(self, user: str) -> defer.Deferred[Any]:
        return defer.succeed(_Bare())


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.stores = MemoryProvider()
        self.authenticator = Authenticator(FakeDirectory(), clock=self.clock)  # type: ignore[arg-type]

    def connect(self, transport: StringTransport | None = None, **kwargs: Any) -> tuple[Any, StringTransport]:
        options: dict[str, Any] = {
            "authenticator": self.authenticator,
            "stores": self.stores,
            "clock": self.clock,
            "plaintext_auth": "loopback",
        }
        options.update(kwargs)
        proto = ManageSieveFactory(**options).buildProtocol(None)
        transport = transport if transport is not None else StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def take(self, transport: StringTransport) -> bytes:
        out = transport.value()
        transport.clear()
        return out

    def logged_in(self, **kwargs: Any) -> tuple[ManageSieveServerProtocol, StringTransport]:
        proto, transport = self.connect(**kwargs)
        self.take(transport)
        proto.dataReceived(LOGIN)
        self.assertEqual(self.take(transport), b'OK "Logged in"\r\n')
        return proto, transport

    def scripts(self) -> Any:
        return self.successResultOf(self.stores.store_for(USER))


class LoginTests(ServerTestCase):
    def test_login_and_put(self) -> None:
        """A PLAIN login on loopback, then PUTSCRIPT and SETACTIVE reach the user's store."""
        proto, transport = self.logged_in()
        proto.dataReceived(b'PUTSCRIPT "s" {5+}\r\nkeep;\r\nSETACTIVE "s"\r\n')
        self.assertEqual(self.take(transport), b'OK "Putscript completed"\r\nOK "Setactive completed"\r\n')
        self.assertEqual(self.successResultOf(self.scripts().active_script()), ("s", b"keep;"))

    def test_store_without_scripts(self) -> None:
        """A store that does not provide ISieveScripts: the login answers NO, the session stays unauthenticated."""
        proto, transport = self.connect(stores=_BareProvider())
        self.take(transport)
        proto.dataReceived(LOGIN + b"LISTSCRIPTS\r\n")
        self.assertEqual(
            self.take(transport),
            b'NO "Sieve scripts are not available for this account"\r\nNO "Authenticate first"\r\n',
        )
        self.assertIsNone(proto.user)

    def test_failed_login_delayed(self) -> None:
        """A wrong password is answered only after the authenticator's delay."""
        proto, transport = self.connect()
        self.take(transport)
        bad = base64.b64encode(f"\0{USER}\0wrong".encode())
        proto.dataReceived(b'AUTHENTICATE "PLAIN" "' + bad + b'"\r\n')
        self.assertEqual(self.take(transport), b"")
        self.clock.advance(60)
        self.assertEqual(self.take(transport), b'NO "Authentication failed"\r\n')

    def test_plain_refused_remote_without_tls(self) -> None:
        """From a remote peer without TLS (policy loopback) AUTHENTICATE is NO (ENCRYPT-NEEDED)."""
        proto, transport = self.connect(StringTransport(peerAddress=REMOTE_PEER))
        self.assertIn(b'"SASL" ""\r\n', self.take(transport))
        proto.dataReceived(LOGIN)
        self.assertEqual(
            self.take(transport), b'NO (ENCRYPT-NEEDED) "Authentication requires TLS: use STARTTLS first"\r\n'
        )


class ScriptTests(ServerTestCase):
    def test_bad_script_not_stored(self) -> None:
        """A script the engine refuses gets NO with its line and column; nothing is stored."""
        proto, transport = self.logged_in()
        proto.dataReceived(b'PUTSCRIPT "s" {11+}\r\nif true {\r\n\r\n')
        out = self.take(transport)
        self.assertTrue(out.startswith(b'NO "line '), out)
        self.assertEqual(self.successResultOf(self.scripts().list_scripts()), [])

    def test_max_scripts(self) -> None:
        """Past max_scripts a new name is NO (QUOTA/MAXSCRIPTS); replacing one is fine."""
        proto, transport = self.logged_in(max_scripts=1)
        proto.dataReceived(b'PUTSCRIPT "a" "keep;"\r\nPUTSCRIPT "b" "keep;"\r\nPUTSCRIPT "a" "stop;"\r\n')
        self.assertEqual(
            self.take(transport),
            b'OK "Putscript completed"\r\nNO (QUOTA/MAXSCRIPTS) "Too many scripts"\r\nOK "Putscript completed"\r\n',
        )

    def test_checks_run_blocking(self) -> None:
        """The script check runs through run_blocking; the session waits for it and reads nothing meanwhile."""
        calls: list[Any] = []
        pending: list[defer.Deferred[Any]] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(fn.__name__)
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append(d)
            d.addCallback(lambda _: fn(*args))
            return d

        proto, transport = self.logged_in(run_blocking=run_blocking)
        proto.dataReceived(b'CHECKSCRIPT "keep;"\r\nNOOP\r\n')
        self.assertEqual((calls, self.take(transport)), (["check_script"], b""))
        self.assertTrue(transport.producerState == "paused")
        pending[0].callback(None)
        self.assertEqual(self.take(transport), b'OK "Script is valid"\r\nOK "Done"\r\n')

    def test_store_error_is_trylater(self) -> None:
        """An unexpected store failure is logged and answered NO (TRYLATER); the session goes on."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.logged_in()
        self.patch(self.scripts(), "list_scripts", lambda: defer.fail(OSError("disk on fire")))
        proto.dataReceived(b"LISTSCRIPTS\r\nNOOP\r\n")
        self.assertEqual(
            self.take(transport),
            b'NO (TRYLATER) "Temporary server failure, try again later"\r\nOK "Done"\r\n',
        )
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertTrue(any(e.get("command") == "LISTSCRIPTS" and "log_failure" in e for e in observer))


class TransportTests(ServerTestCase):
    def test_starttls_discards_pipelined_bytes(self) -> None:
        """Commands pipelined after STARTTLS are discarded (logged by size); the capabilities follow under TLS."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        context = object()
        proto, transport = self.connect(TLSStringTransport(peerAddress=REMOTE_PEER), tls_context=context)
        self.assertIn(b'"STARTTLS"\r\n', self.take(transport))
        pipelined = LOGIN + b'PUTSCRIPT "evil" "discard;"\r\n'
        proto.dataReceived(b"STARTTLS\r\n" + pipelined)
        assert isinstance(transport, TLSStringTransport)
        self.assertEqual(transport.tls_contexts, [context])
        self.assertEqual(transport.written_before_tls, b'OK "Begin TLS negotiation now"\r\n')
        after = self.take(transport)[len(transport.written_before_tls) :]
        self.assertIn(b'"SASL" "SCRAM-SHA-256 PLAIN LOGIN"\r\n', after)
        self.assertNotIn(b"STARTTLS", after)
        self.assertTrue(any(e.get("count") == len(pipelined) for e in observer))
        self.assertEqual(self.successResultOf(self.scripts().list_scripts()), [])
        self.assertIsNone(proto.user)

    def test_idle_timeout(self) -> None:
        """After idle_timeout seconds of silence: BYE and close; activity resets the timer."""
        proto, transport = self.connect(idle_timeout=30)
        self.take(transport)
        self.clock.advance(20)
        proto.dataReceived(b"NOOP\r\n")
        self.clock.advance(20)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(11)
        self.assertEqual(
            self.take(transport), b'OK "Done"\r\nBYE (TRYLATER) "Disconnected for inactivity"\r\n'
        )
        self.assertTrue(transport.disconnecting)

    def test_logout_closes(self) -> None:
        """LOGOUT: OK, then the connection closes."""
        proto, transport = self.connect()
        self.take(transport)
        proto.dataReceived(b"LOGOUT\r\n")
        self.assertEqual(self.take(transport), b'OK "Logout completed"\r\n')
        self.assertTrue(transport.disconnecting)
