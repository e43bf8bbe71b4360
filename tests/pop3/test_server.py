"""
Tests for the Twisted POP3 adapter on StringTransport with a task.Clock, the
memory store and the real Authenticator: login, streaming RETR/TOP with a
pull producer, UPDATE on QUIT only, exclusive access, STLS discard, the idle
timeout and logging.
"""

from __future__ import annotations

import base64
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPullProducer, ITLSTransport
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txmail.auth.authenticator import Authenticator
from txmail.auth.passwords import make_credentials
from txmail.model import FlagMode, MessagesExpunged
from txmail.pop3.server import MaildropLocks, POP3Factory, POP3ServerProtocol
from txmail.store.memory import MemoryProvider

USER = "alice@example.test"
PASSWORD = "pop secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
PEER = IPv4Address("TCP", "127.0.0.1", 4321)
REMOTE_PEER = IPv4Address("TCP", "192.0.2.7", 4321)
MESSAGES = [
    b"Subject: one\r\n\r\nfirst\r\n.dotted\r\n",
    b"Subject: two\r\nX: y\r\n\r\nl1\r\nl2\r\nl3\r\n",
]


class FakeDirectory:
    """Just enough of IDirectory for the Authenticator: one user, alice."""

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == USER else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed(USER if username == USER else None)


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    """A StringTransport that records startTLS calls and what was written before."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tls_contexts: list[Any] = []
        self.written_before_tls = b""

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:  # noqa: N803 (Twisted API)
        self.tls_contexts.append(contextFactory)
        self.written_before_tls = self.value()


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.stores = MemoryProvider()
        self.mailbox = self.successResultOf(
            self.successResultOf(self.stores.store_for(USER)).get_mailbox("INBOX")
        )
        self.uids = [self.successResultOf(self.mailbox.append(m)) for m in MESSAGES]
        self.changes: list[Any] = []
        self.mailbox.add_listener(self.changes.append)
        self.locks = MaildropLocks()
        self.authenticator = Authenticator(FakeDirectory(), clock=self.clock)  # type: ignore[arg-type]

    def connect(
        self, transport: StringTransport | None = None, **kwargs: Any
    ) -> tuple[POP3ServerProtocol, StringTransport]:
        options: dict[str, Any] = {
            "authenticator": self.authenticator,
            "stores": self.stores,
            "locks": self.locks,
            "clock": self.clock,
            "plaintext_auth": "loopback",
        }
        options.update(kwargs)
        proto = POP3Factory(**options).buildProtocol(None)
        transport = transport if transport is not None else StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def take(self, transport: StringTransport) -> bytes:
        """Pump any registered pull producer (a message streaming), then return and clear the output."""
        while transport.producer is not None and not transport.streaming:
            transport.producer.resumeProducing()
        out = transport.value()
        transport.clear()
        return out

    def login(self, proto: POP3ServerProtocol, transport: StringTransport) -> bytes:
        self.take(transport)
        proto.dataReceived(f"USER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        return self.take(transport)

    def flags(self) -> dict[int, frozenset[str]]:
        return {i.uid: i.flags for i in self.successResultOf(self.mailbox.list_messages())}


class LoginTests(ServerTestCase):
    def test_user_pass_login(self) -> None:
        """USER/PASS through the Authenticator opens the INBOX snapshot."""
        proto, transport = self.connect()
        self.assertEqual(self.take(transport), b"+OK txmail POP3 server ready\r\n")
        proto.dataReceived(f"USER {USER}\r\nPASS {PASSWORD}\r\nSTAT\r\n".encode())
        sizes = sum(len(m) for m in MESSAGES)
        self.assertEqual(
            self.take(transport),
            f"+OK Send your password\r\n+OK Logged in, 2 messages ({sizes} octets)\r\n+OK 2 {sizes}\r\n".encode(),
        )
        self.assertTrue(self.locks.held(USER))

    def test_failed_login_is_delayed(self) -> None:
        """A wrong password is answered -ERR [AUTH] only after the Authenticator's delay."""
        proto, transport = self.connect()
        self.take(transport)
        proto.dataReceived(f"USER {USER}\r\nPASS wrong\r\nNOOP\r\n".encode())
        self.assertEqual(self.take(transport), b"+OK Send your password\r\n")
        self.clock.advance(1.0)
        self.assertEqual(
            self.take(transport),
            b"-ERR [AUTH] Authentication failed\r\n-ERR Command not valid in this state\r\n",
        )
        self.assertFalse(self.locks.held(USER))

    def test_auth_plain(self) -> None:
        """AUTH PLAIN with an initial response logs in through the shared SASL layer."""
        proto, transport = self.connect()
        self.take(transport)
        response = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        proto.dataReceived(b"AUTH PLAIN " + response + b"\r\n")
        self.assertTrue(self.take(transport).startswith(b"+OK Logged in, 2 messages"))

    def test_plaintext_refused_remotely(self) -> None:
        """From a non-loopback peer without TLS, USER gets -ERR [AUTH] under policy loopback."""
        proto, transport = self.connect(StringTransport(peerAddress=REMOTE_PEER))
        self.take(transport)
        proto.dataReceived(b"USER alice\r\n")
        self.assertTrue(self.take(transport).startswith(b"-ERR [AUTH] Plaintext"))

    def test_in_use(self) -> None:
        """A second session for the same user gets -ERR [IN-USE]; QUIT and connection loss release the lock."""
        proto1, transport1 = self.connect()
        self.login(proto1, transport1)
        proto2, transport2 = self.connect()
        self.assertEqual(
            self.login(proto2, transport2),
            b"+OK Send your password\r\n-ERR [IN-USE] Maildrop is locked by another session\r\n",
        )
        proto1.dataReceived(b"QUIT\r\n")
        self.assertEqual(self.take(transport1), b"+OK Bye\r\n")
        self.assertTrue(transport1.disconnecting)
        self.assertFalse(self.locks.held(USER))
        self.assertTrue(
            self.login(proto2, transport2).endswith(
                b"+OK Logged in, 2 messages (%d octets)\r\n" % sum(map(len, MESSAGES))
            )
        )
        proto2.connectionLost()
        self.assertFalse(self.locks.held(USER))

    def test_logs_have_no_password(self) -> None:
        """Login logs name the user and peer in fields, never the password."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"PASS x\r\n")
        events = list(observer)
        self.assertTrue(any(e.get("user") == USER and "session_id" in e for e in events))
        self.assertFalse(any(PASSWORD in repr(e) for e in events))


class RetrieveTests(ServerTestCase):
    def test_retr_streams_with_producer(self) -> None:
        """RETR writes +OK, then the dot-stuffed message via a registered pull producer, then '.'."""
        proto, transport = self.connect(chunk_size=7)
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\nNOOP\r\n")
        self.assertTrue(IPullProducer.providedBy(transport.producer))
        self.assertFalse(transport.streaming)
        self.assertEqual(
            self.take(transport),
            b"+OK %d octets\r\nSubject: one\r\n\r\nfirst\r\n..dotted\r\n.\r\n+OK\r\n" % len(MESSAGES[0]),
        )
        # The message's producer is gone; the connection's reply gate is back.
        self.assertTrue(transport.streaming)
        self.assertFalse(IPullProducer.providedBy(transport.producer))

    def test_top(self) -> None:
        """TOP n m sends the header and m body lines."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"TOP 2 1\r\n")
        self.assertEqual(
            self.take(transport), b"+OK Top of message follows\r\nSubject: two\r\nX: y\r\n\r\nl1\r\n.\r\n"
        )

    def test_snapshot_and_expunged_message(self) -> None:
        """Mail added during the session is not listed; a message expunged elsewhere gets -ERR."""
        proto, transport = self.connect()
        self.login(proto, transport)
        self.successResultOf(self.mailbox.append(b"Subject: late\r\n\r\nx\r\n"))
        self.successResultOf(self.mailbox.set_flags([self.uids[1]], {"\\Deleted"}, FlagMode.ADD))
        self.successResultOf(self.mailbox.expunge())
        proto.dataReceived(b"STAT\r\nRETR 2\r\nLIST\r\n")
        out = self.take(transport)
        self.assertTrue(out.startswith(b"+OK 2 "))
        self.assertIn(b"-ERR No such message\r\n", out)
        self.assertTrue(out.endswith(b"2 %d\r\n.\r\n" % len(MESSAGES[1])))

    def test_connection_lost_while_streaming(self) -> None:
        """Losing the connection mid-message stops the producer and releases the lock."""
        proto, transport = self.connect(chunk_size=4)
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\n")
        producer = transport.producer
        producer.resumeProducing()
        proto.connectionLost()
        self.assertTrue(producer.finished)
        self.assertTrue(producer.file.closed)
        self.assertFalse(self.locks.held(USER))


class ReadAheadTests(ServerTestCase):
    """After a RETR the next message is read and encoded ahead, once the replies are written."""

    def setUp(self) -> None:
        super().setUp()
        self.uids.append(self.successResultOf(self.mailbox.append(b"Subject: three\r\n\r\n.x\r\n")))
        self.reads: list[int] = []
        read_message = self.mailbox.read_message

        def counting(uid: int) -> Any:
            self.reads.append(uid)
            return read_message(uid)

        self.mailbox.read_message = counting  # type: ignore[method-assign]

    def test_next_message_read_after_the_reply(self) -> None:
        """RETR 1 reads 1 then 2; RETR 2 is answered from the read-ahead, which then reads 3."""
        proto, transport = self.connect()
        self.login(proto, transport)
        written_at_read: list[bytes] = []
        self.mailbox.read_message = (  # type: ignore[method-assign]
            lambda uid, inner=self.mailbox.read_message: (
                written_at_read.append(transport.value()) or inner(uid)
            )
        )
        proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(self.reads, [self.uids[0], self.uids[1]])
        # Message 2 was read only after RETR 1's answer was written.
        self.assertEqual(written_at_read[0], b"")
        self.assertTrue(written_at_read[1].endswith(b"..dotted\r\n.\r\n"))
        self.take(transport)
        proto.dataReceived(b"RETR 2\r\n")
        self.assertEqual(
            self.take(transport), b"+OK %d octets\r\n" % len(MESSAGES[1]) + MESSAGES[1] + b".\r\n"
        )
        self.assertEqual(self.reads, [self.uids[0], self.uids[1], self.uids[2]])
        proto.dataReceived(b"RETR 3\r\n")
        self.assertEqual(self.take(transport), b"+OK 22 octets\r\nSubject: three\r\n\r\n..x\r\n.\r\n")
        self.assertEqual(len(self.reads), 3)  # nothing after the last message

    def test_other_commands_do_not_use_it(self) -> None:
        """TOP of the read-ahead message and RETR of another one read the store as before."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\n")
        self.take(transport)
        proto.dataReceived(b"TOP 2 0\r\nRETR 3\r\n")
        self.assertEqual(
            self.take(transport),
            b"+OK Top of message follows\r\nSubject: two\r\nX: y\r\n\r\n.\r\n"
            b"+OK 22 octets\r\nSubject: three\r\n\r\n..x\r\n.\r\n",
        )
        self.assertEqual(self.reads, [self.uids[0], self.uids[1], self.uids[1], self.uids[2]])

    def test_only_while_the_client_goes_in_order(self) -> None:
        """A RETR that does not follow the previous one reads nothing ahead; the next in-order one does."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"RETR 2\r\n")
        self.assertEqual(self.reads, [self.uids[1]])
        proto.dataReceived(b"RETR 1\r\n")
        self.assertEqual(self.reads, [self.uids[1], self.uids[0]])
        proto.dataReceived(b"RETR 2\r\n")
        self.assertEqual(self.reads, [self.uids[1], self.uids[0], self.uids[1], self.uids[2]])

    def test_deleted_large_and_streamed_messages_are_not_read_ahead(self) -> None:
        """A message marked deleted, or bigger than a chunk, is not read ahead."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"DELE 2\r\nRETR 1\r\n")
        self.take(transport)
        self.assertEqual(self.reads, [self.uids[0]])
        proto, transport = self.connect(chunk_size=len(MESSAGES[0]))
        self.locks.release(USER)
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\n")
        self.assertTrue(self.take(transport).endswith(b"..dotted\r\n.\r\n"))
        self.assertEqual(self.reads, [self.uids[0], self.uids[0]])  # message 2 is bigger

    def test_expunged_elsewhere_after_the_read_ahead(self) -> None:
        """A message read ahead, then expunged by another session, gets -ERR like any expunged one."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\n")
        self.take(transport)
        self.successResultOf(self.mailbox.set_flags([self.uids[1]], {"\\Deleted"}, FlagMode.ADD))
        self.successResultOf(self.mailbox.expunge())
        proto.dataReceived(b"RETR 2\r\n")
        self.assertEqual(self.take(transport), b"-ERR No such message\r\n")

    def test_listener_removed_when_the_session_ends(self) -> None:
        """The session's INBOX listener goes with the connection, QUIT or not."""
        for end in (b"QUIT\r\n", None):
            proto, transport = self.connect()
            self.login(proto, transport)
            proto.dataReceived(b"RETR 1\r\n")
            self.assertIsNotNone(proto._remove_listener)
            if end is not None:
                proto.dataReceived(end)
            proto.connectionLost()
            self.assertIsNone(proto._remove_listener)
            self.assertIsNone(proto._ahead)
        self.assertEqual(len(self.mailbox._listeners), 1)  # the test's own


class UpdateTests(ServerTestCase):
    def test_quit_deletes_and_notifies(self) -> None:
        """DELE + QUIT expunges from the store; listeners get MessagesExpunged; RETR'd ones get \\Seen."""
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"RETR 2\r\nDELE 1\r\nQUIT\r\n")
        self.assertTrue(self.take(transport).endswith(b"+OK Message 1 deleted\r\n+OK Bye\r\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(list(self.flags()), [self.uids[1]])
        self.assertIn("\\Seen", self.flags()[self.uids[1]])
        expunged = [c for c in self.changes if isinstance(c, MessagesExpunged)]
        self.assertEqual([c.uids for c in expunged], [(self.uids[0],)])

    def test_dropped_connection_deletes_nothing(self) -> None:
        """DELE then a lost connection leaves every message and flag untouched."""
        before = self.flags()
        proto, transport = self.connect()
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\nDELE 1\r\nDELE 2\r\n")
        self.take(transport)
        proto.connectionLost()
        self.assertEqual(self.flags(), before)
        self.assertEqual(self.changes, [])


class TransportTests(ServerTestCase):
    def test_stls_discards_pipelined_bytes(self) -> None:
        """Commands pipelined after STLS are discarded (logged by size) before the handshake."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        context = object()
        proto, transport = self.connect(TLSStringTransport(peerAddress=REMOTE_PEER), tls_context=context)
        self.take(transport)
        proto.dataReceived(b"CAPA\r\n")
        self.assertIn(b"\r\nSTLS\r\n", self.take(transport))
        proto.dataReceived(f"STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n".encode())
        assert isinstance(transport, TLSStringTransport)
        self.assertEqual(transport.tls_contexts, [context])
        self.assertEqual(transport.written_before_tls, b"+OK Begin TLS negotiation\r\n")
        self.assertEqual(self.take(transport), b"+OK Begin TLS negotiation\r\n")
        self.assertTrue(any(e.get("count") == len(f"USER {USER}\r\nPASS {PASSWORD}\r\n") for e in observer))
        proto.dataReceived(b"CAPA\r\n")
        out = self.take(transport)
        self.assertNotIn(b"STLS", out)
        self.assertIn(b"\r\nUSER\r\n", out)  # passwords are allowed under TLS

    def test_idle_timeout(self) -> None:
        """After idle_timeout seconds of silence the server says -ERR and closes; activity resets it."""
        proto, transport = self.connect(idle_timeout=30)
        self.login(proto, transport)
        self.clock.advance(29)
        proto.dataReceived(b"DELE 1\r\n")
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.take(transport)
        self.clock.advance(1)
        self.assertEqual(self.take(transport), b"-ERR Disconnected for inactivity\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertFalse(self.locks.held(USER))
        self.assertEqual(len(self.flags()), 2)

    def test_default_idle_timeout(self) -> None:
        """The default idle timeout is RFC 1939's ten minutes."""
        _proto, transport = self.connect()
        self.clock.advance(599)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(transport.disconnecting)

    def test_timeout_while_client_does_not_read(self) -> None:
        """A client that stops reading a message is disconnected after the idle timeout."""
        proto, transport = self.connect(idle_timeout=30, chunk_size=4)
        self.login(proto, transport)
        proto.dataReceived(b"RETR 1\r\n")
        producer = transport.producer
        producer.resumeProducing()
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(transport.producer)
        self.assertTrue(producer.file.closed)
        self.assertFalse(self.locks.held(USER))
