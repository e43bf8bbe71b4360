"""Tests for txmail.auth.authenticator: SASL resolution, failure delays, logging, twisted.cred."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer, task
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import eventAsText
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.auth.test_sasl import scram_client_final
from txmail.auth.authenticator import Authenticator, ScramPasswordChecker, peer_host
from txmail.auth.passwords import ScramCredentials, make_credentials
from txmail.auth.sasl import Challenge, Failed, SASLEvent, SASLServer, Succeeded
from txmail.interfaces import IDirectory

PEER = "192.0.2.7:40000"


@implementer(IDirectory)
class MemoryDirectory:
    """Users in a dict; login names without '@' are in example.test."""

    def __init__(self, users: dict[str, str]) -> None:
        self.creds: dict[str, ScramCredentials] = {
            user: make_credentials(password, iterations=1000) for user, password in users.items()
        }
        self.fail_lookups = False

    def _name(self, username: str) -> str:
        username = username.lower()
        return username if "@" in username else username + "@example.test"

    def is_local_domain(self, domain: str) -> bool:
        return domain == "example.test"

    def resolve_recipient(self, address: str) -> defer.Deferred[list[str]]:
        return defer.succeed([self._name(address)])

    def get_credentials(self, username: str) -> defer.Deferred[ScramCredentials | None]:
        if self.fail_lookups:
            return defer.fail(OSError("directory on fire"))
        return defer.succeed(self.creds.get(self._name(username)))

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        name = self._name(username)
        return defer.succeed(name if name in self.creds else None)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        return defer.succeed(user == address)


class AuthenticatorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.directory = MemoryDirectory({"alice@example.test": "wonderland"})
        self.blocking_calls: list[Callable[..., Any]] = []

        def run_blocking(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            self.blocking_calls.append(fn)
            return defer.maybeDeferred(fn, *args)

        self.auth = Authenticator(self.directory, clock=self.clock, run_blocking=run_blocking)
        self.logs = EventLoggingObserver.createWithCleanup(self, Authenticator.log.observer)

    def plain(self, user: str, password: str, peer: str = PEER) -> defer.Deferred[SASLEvent]:
        sasl = SASLServer("PLAIN")
        return self.auth.step(sasl, sasl.start(f"\x00{user}\x00{password}".encode()), peer=peer)

    def assert_failed_after(self, d: defer.Deferred[Any], delay: float, expected: Any) -> None:
        """*d* has no result until *delay* seconds pass, then fires with *expected*."""
        self.clock.advance(delay - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.assertEqual(self.successResultOf(d), expected)

    def test_plain_success_canonical_user(self) -> None:
        """A right PLAIN password succeeds at once with the canonical address, checked off-thread."""
        d = self.plain("ALICE", "wonderland")
        self.assertEqual(self.successResultOf(d), Succeeded("alice@example.test", ""))
        self.assertEqual(len(self.blocking_calls), 1)

    def test_authzid_is_canonicalised(self) -> None:
        """A PLAIN authzid equal to the user comes back as the canonical address."""
        sasl = SASLServer("PLAIN")
        d = self.auth.step(sasl, sasl.start(b"alice\x00alice\x00wonderland"), peer=PEER)
        self.assertEqual(self.successResultOf(d), Succeeded("alice@example.test", "alice@example.test"))

    def test_failure_delay_grows_and_caps(self) -> None:
        """Each failure from one peer doubles the delay (1, 2, 4, 8) up to the maximum (8)."""
        for delay in (1.0, 2.0, 4.0, 8.0, 8.0):
            d = self.plain("alice", "wrong")
            self.assert_failed_after(d, delay, Failed("invalid"))
        self.assertEqual(self.auth.failure_count(PEER), 5)

    def test_success_resets_delay(self) -> None:
        """A success resets the peer's delay to the first step."""
        self.assert_failed_after(self.plain("alice", "wrong"), 1.0, Failed("invalid"))
        self.assert_failed_after(self.plain("alice", "wrong"), 2.0, Failed("invalid"))
        self.successResultOf(self.plain("alice", "wonderland"))
        self.assertEqual(self.auth.failure_count(PEER), 0)
        self.assert_failed_after(self.plain("alice", "wrong"), 1.0, Failed("invalid"))

    def test_delay_is_per_host(self) -> None:
        """Another port of the same host shares the delay; another host does not."""
        self.assert_failed_after(self.plain("alice", "wrong"), 1.0, Failed("invalid"))
        self.assert_failed_after(self.plain("alice", "wrong", "192.0.2.7:40001"), 2.0, Failed("invalid"))
        self.assert_failed_after(self.plain("alice", "wrong", "198.51.100.1:5"), 1.0, Failed("invalid"))

    def test_delay_forgotten_after_a_while(self) -> None:
        """A peer that stops failing for forget_after seconds starts again at the first step."""
        self.assert_failed_after(self.plain("alice", "wrong"), 1.0, Failed("invalid"))
        self.clock.advance(self.auth.forget_after + 1)
        self.assert_failed_after(self.plain("alice", "wrong"), 1.0, Failed("invalid"))

    def test_unknown_user_same_work_and_delay(self) -> None:
        """An unknown user costs a password derivation too and fails with the same delay."""
        d = self.plain("mallory", "x")
        self.assertEqual(len(self.blocking_calls), 1)
        self.assert_failed_after(d, 1.0, Failed("invalid"))

    def test_cancel_not_delayed(self) -> None:
        """A cancelled exchange is answered at once and not counted."""
        sasl = SASLServer("LOGIN")
        sasl.start(None)
        d = self.auth.step(sasl, sasl.cancel(), peer=PEER)
        self.assertEqual(self.successResultOf(d), Failed("cancelled"))
        self.assertEqual(self.auth.failure_count(PEER), 0)

    def test_malformed_is_delayed(self) -> None:
        """A malformed response counts as a failure and is delayed."""
        sasl = SASLServer("PLAIN")
        self.assert_failed_after(
            self.auth.step(sasl, sasl.start(b"junk"), peer=PEER), 1.0, Failed("malformed")
        )

    def test_login_challenges_pass_through(self) -> None:
        """Challenges come back at once; LOGIN then succeeds through step."""
        sasl = SASLServer("LOGIN")
        self.assertEqual(
            self.successResultOf(self.auth.step(sasl, sasl.start(None))), Challenge(b"Username:")
        )
        self.assertEqual(
            self.successResultOf(self.auth.step(sasl, sasl.respond(b"alice"))), Challenge(b"Password:")
        )
        d = self.auth.step(sasl, sasl.respond(b"wonderland"))
        self.assertEqual(self.successResultOf(d), Succeeded("alice@example.test", ""))

    def test_scram_through_step(self) -> None:
        """SCRAM resolves credentials from the directory and succeeds with the canonical user."""
        sasl = SASLServer("SCRAM-SHA-256")
        first = self.successResultOf(self.auth.step(sasl, sasl.start(b"n,,n=Alice,r=nonce"), peer=PEER))
        assert isinstance(first, Challenge)
        final, expected = scram_client_final("wonderland", b"n=Alice,r=nonce", first.data)
        self.assertEqual(
            self.successResultOf(self.auth.step(sasl, sasl.respond(final), peer=PEER)), Challenge(expected)
        )
        d = self.auth.step(sasl, sasl.respond(b""), peer=PEER)
        self.assertEqual(self.successResultOf(d), Succeeded("alice@example.test", ""))

    def test_scram_unknown_user_fake_then_delayed_failure(self) -> None:
        """An unknown SCRAM user gets a challenge like anyone else, then a delayed failure."""
        sasl = SASLServer("SCRAM-SHA-256")
        first = self.successResultOf(self.auth.step(sasl, sasl.start(b"n,,n=ghost,r=nonce"), peer=PEER))
        assert isinstance(first, Challenge)
        self.assertIn(b",s=", first.data)
        final, _ = scram_client_final("guess", b"n=ghost,r=nonce", first.data)
        self.assert_failed_after(self.auth.step(sasl, sasl.respond(final), peer=PEER), 1.0, Failed("invalid"))

    def test_user_deleted_during_exchange(self) -> None:
        """A user removed before the SCRAM exchange ends is refused."""
        sasl = SASLServer("SCRAM-SHA-256")
        first = self.successResultOf(self.auth.step(sasl, sasl.start(b"n,,n=alice,r=nonce"), peer=PEER))
        assert isinstance(first, Challenge)
        final, _ = scram_client_final("wonderland", b"n=alice,r=nonce", first.data)
        self.successResultOf(self.auth.step(sasl, sasl.respond(final), peer=PEER))
        del self.directory.creds["alice@example.test"]
        self.assert_failed_after(self.auth.step(sasl, sasl.respond(b""), peer=PEER), 1.0, Failed("invalid"))

    def test_directory_error_becomes_failure(self) -> None:
        """A failing directory lookup is logged and becomes Failed, never an errback."""
        self.directory.fail_lookups = True
        sasl = SASLServer("SCRAM-SHA-256")
        d = self.auth.step(sasl, sasl.start(b"n,,n=alice,r=nonce"), peer=PEER)
        self.assertIsInstance(self.successResultOf(d), Challenge)
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        d = self.plain("alice", "wonderland")
        self.clock.advance(10)
        self.assertEqual(self.successResultOf(d), Failed("invalid"))
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_check_password(self) -> None:
        """check_password gives the canonical user, or None after the delay."""
        self.assertEqual(
            self.successResultOf(self.auth.check_password("alice", "wonderland", peer=PEER)),
            "alice@example.test",
        )
        d = self.auth.check_password("alice", "nope", peer=PEER)
        self.assert_failed_after(d, 1.0, None)
        d = self.auth.check_password("nobody", "nope", peer=PEER)
        self.assert_failed_after(d, 2.0, None)

    def test_logs_user_and_peer_never_password(self) -> None:
        """Success and failure are logged with user and peer fields; no event contains the password."""
        self.successResultOf(self.plain("alice", "wonderland"))
        d = self.plain("alice", "hunter2-wrong")
        self.clock.advance(1)
        self.successResultOf(d)
        d = self.auth.check_password("alice", "hunter3-wrong", peer=PEER)
        self.clock.advance(2)
        self.successResultOf(d)
        self.assertEqual(len(self.logs), 3)
        ok, bad, bad2 = list(self.logs)
        self.assertEqual((ok["user"], ok["peer"], ok["mechanism"]), ("alice@example.test", PEER, "PLAIN"))
        self.assertEqual((bad["user"], bad["peer"], bad["reason"]), ("alice", PEER, "invalid"))
        self.assertEqual(bad2["user"], "alice")
        for event in self.logs:
            text = eventAsText(event) + repr(event)
            self.assertNotIn("wonderland", text)
            self.assertNotIn("hunter", text)


def peer(n: int) -> str:
    """The *n*-th of many attacking hosts."""
    return f"198.51.100.{n}:{1000 + n}"


class AccountLimitTests(SynchronousTestCase):
    """Failures counted per account, whatever the peer: checks spaced out, never refused."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.directory = MemoryDirectory({"alice@example.test": "wonderland"})
        self.checks: list[float] = []

        def run_blocking(fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
            self.checks.append(self.clock.seconds())
            return defer.maybeDeferred(fn, *args)

        self.auth = Authenticator(
            self.directory, clock=self.clock, run_blocking=run_blocking, account_threshold=3
        )

    def fail_from_many(self, count: int, user: str = "alice") -> None:
        """
        *count* wrong passwords for *user*, each from a host of its own, a
        minute apart (each run to its end, its slot long past).
        """
        for n in range(count):
            d = self.auth.check_password(user, "wrong", peer=peer(100 + n))
            self.clock.advance(60)
            self.assertIsNone(self.successResultOf(d))

    def test_counted_across_peers_and_spellings(self) -> None:
        """Failures from different hosts, and for Alice and alice@example.test, count for one account."""
        self.fail_from_many(1, "Alice")
        self.fail_from_many(1, "alice@EXAMPLE.test")
        self.fail_from_many(1, "bob")
        self.assertEqual(self.auth.account_failure_count("alice"), 2)
        self.assertEqual(self.auth.account_failure_count("bob@example.test"), 1)

    def test_below_threshold_no_wait(self) -> None:
        """Below the threshold, a check from a new host starts at once."""
        self.fail_from_many(2)
        start = self.clock.seconds()
        self.auth.check_password("alice", "wrong", peer=peer(1))
        self.assertEqual(self.checks[-1], start)

    def test_parallel_guesses_spaced_out(self) -> None:
        """
        Past the threshold, guesses made at once from many hosts are checked
        one slot after another, so many connections guess no faster than
        one.  The slots are 1 s apart at the threshold and twice as far with
        each failure: the first guess, checked at once, fails at once (four
        failures: 2 s).
        """
        self.fail_from_many(3)
        start = self.clock.seconds()
        before = len(self.checks)
        pending = [self.auth.check_password("alice", "wrong", peer=peer(n)) for n in range(4)]
        # The first takes the account's slot at once; the others wait theirs.
        self.assertEqual(self.checks[before:], [start])
        self.clock.pump([0.5] * 20)
        self.assertEqual([t - start for t in self.checks[before:]], [0.0, 1.0, 3.0, 5.0])
        for d in pending:
            self.assertIsNone(self.successResultOf(d))
        # Seven failures now: the next guess's slot is 2 ** (7 - 3) = 16 s after the last
        # one taken, capped by max_failure_delay (8 s).
        self.clock.advance(10)
        self.auth.check_password("alice", "wrong", peer=peer(50))
        second = self.auth.check_password("alice", "wrong", peer=peer(51))
        now = self.clock.seconds()
        self.clock.advance(7.9)
        self.assertEqual(self.checks[-1], now)
        self.assertNoResult(second)
        self.clock.advance(0.1)
        self.assertEqual(self.checks[-1], now + 8)

    def test_right_password_still_accepted(self) -> None:
        """It slows, it never refuses: the right password, after its wait, logs in and resets the count."""
        self.fail_from_many(5)
        blocker = self.auth.check_password("alice", "wrong", peer=peer(1))
        d = self.auth.check_password("alice", "wonderland", peer=peer(2))
        self.assertNoResult(d)
        self.clock.advance(4)  # 2 ** (5 - 3)
        self.assertEqual(self.successResultOf(d), "alice@example.test")
        self.assertEqual(self.auth.account_failure_count("alice"), 0)
        self.clock.advance(10)
        self.assertIsNone(self.successResultOf(blocker))

    def test_wait_capped(self) -> None:
        """However many guesses queue up, none waits longer than max_account_wait."""
        self.fail_from_many(8)
        start = self.clock.seconds()
        before = len(self.checks)
        for n in range(10):
            self.auth.check_password("alice", "wrong", peer=peer(n))
        self.clock.pump([1.0] * 40)
        waits = [t - start for t in self.checks[before:]]
        self.assertEqual(waits, [0.0, 8.0, 16.0, 24.0] + [30.0] * 6)

    def test_known_host_does_not_wait(self) -> None:
        """A host the account logged in from before is not held back by others' guesses."""
        home = "203.0.113.9:5555"
        self.assertEqual(
            self.successResultOf(self.auth.check_password("alice", "wonderland", peer=home)),
            "alice@example.test",
        )
        self.fail_from_many(6)
        self.auth.check_password("alice", "wrong", peer=peer(1))  # takes the slot
        d = self.auth.check_password("alice", "wonderland", peer=home)
        self.assertEqual(self.successResultOf(d), "alice@example.test")

    def test_sasl_exchanges_wait_too(self) -> None:
        """PLAIN (a password check) and SCRAM (credentials looked up) wait for the account's slot."""
        self.fail_from_many(3)
        self.auth.check_password("alice", "wrong", peer=peer(1))  # takes the slot
        sasl = SASLServer("PLAIN")
        d = self.auth.step(sasl, sasl.start(b"\x00alice\x00wonderland"), peer=peer(2))
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertEqual(self.successResultOf(d), Succeeded("alice@example.test", ""))
        self.fail_from_many(3)
        self.auth.check_password("alice", "wrong", peer=peer(3))  # takes the slot
        scram = SASLServer("SCRAM-SHA-256")
        d = self.auth.step(scram, scram.start(b"n,,n=alice,r=abcdefghijklmnop"), peer=peer(4))
        self.assertNoResult(d)
        self.clock.advance(1)
        self.assertIsInstance(self.successResultOf(d), Challenge)

    def test_forgotten_after_a_while(self) -> None:
        """An account that stops failing for forget_after seconds is not held back any more."""
        self.fail_from_many(5)
        self.clock.advance(self.auth.forget_after + 1)
        start = self.clock.seconds()
        self.auth.check_password("alice", "wrong", peer=peer(1))
        self.auth.check_password("alice", "wrong", peer=peer(2))
        self.assertEqual(self.checks[-2:], [start, start])


class PeerHostTests(SynchronousTestCase):
    def test_peer_host(self) -> None:
        """The port is stripped from IPv4 and bracketed IPv6 peers; other strings stay."""
        self.assertEqual(peer_host("192.0.2.1:25"), "192.0.2.1")
        self.assertEqual(peer_host("[2001:db8::1]:25"), "2001:db8::1")
        self.assertEqual(peer_host("2001:db8::1"), "2001:db8::1")
        self.assertEqual(peer_host(""), "")


class ScramPasswordCheckerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.checker = ScramPasswordChecker(MemoryDirectory({"alice@example.test": "wonderland"}))

    def test_provides_interface(self) -> None:
        """The checker provides ICredentialsChecker for IUsernamePassword."""
        verifyObject(ICredentialsChecker, self.checker)

    def test_avatar_id_is_canonical_user(self) -> None:
        """Right credentials (bytes or str) give the canonical user as avatar id."""
        d = self.checker.requestAvatarId(UsernamePassword(b"Alice", b"wonderland"))
        self.assertEqual(self.successResultOf(d), "alice@example.test")
        d = self.checker.requestAvatarId(UsernamePassword("alice@example.test", "wonderland"))  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(d), "alice@example.test")

    def test_wrong_password_unauthorized(self) -> None:
        """A wrong password, unknown user or undecodable name fails with UnauthorizedLogin."""
        for creds in [
            UsernamePassword(b"alice", b"nope"),
            UsernamePassword(b"bob", b"wonderland"),
            UsernamePassword(b"\xff", base64.b64encode(b"x")),
        ]:
            self.failureResultOf(self.checker.requestAvatarId(creds), UnauthorizedLogin)
