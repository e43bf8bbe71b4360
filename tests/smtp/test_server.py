"""
Tests for the Twisted SMTP adapter on StringTransport with a task.Clock and
a recording fake router: delivery, spool files, replies after Deferreds,
timeouts, STARTTLS discard, AUTH through the real Authenticator.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import EventLoggingObserver, StringTransport
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txmail.auth.authenticator import Authenticator
from txmail.auth.passwords import make_credentials
from txmail.delivery import spool as spool_module
from txmail.interfaces import IDeliveryRouter, ISpool, ISpooledMessage
from txmail.model import DeliveryReport, Envelope, MessageSource, RecipientResult
from txmail.smtp.codes import Reply
from txmail.smtp.server import SMTPFactory, SMTPLimits, SMTPServerProtocol, received_header, reply_for_report

PASSWORD = "secret"
CREDENTIALS = make_credentials(PASSWORD, iterations=4096, salt=b"0123456789abcdef")
PEER = IPv4Address("TCP", "192.0.2.7", 4321)


@implementer(IDeliveryRouter)
class FakeRouter:
    """
    Accepts recipients in example.test (or anywhere for authenticated users)
    and records every question and delivery.  With ``manual`` set, the
    Deferreds of check_recipient and deliver wait for the test.
    """

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.checked: list[tuple[str, str | None]] = []
        self.delivered: list[tuple[Envelope, bytes, MessageSource]] = []
        self.pending: list[tuple[defer.Deferred[Any], Any]] = []
        self.report: DeliveryReport | None = None
        self.error: Exception | None = None

    def _answer(self, value: Any) -> defer.Deferred[Any]:
        if self.manual:
            d: defer.Deferred[Any] = defer.Deferred()
            self.pending.append((d, value))
            return d
        return defer.succeed(value)

    def fire(self) -> None:
        """Fire the oldest waiting Deferred."""
        d, value = self.pending.pop(0)
        d.callback(value)

    def check_recipient(self, address: str, authenticated_user: str | None = None) -> defer.Deferred[Any]:
        self.checked.append((address, authenticated_user))
        domain = address.rpartition("@")[2].lower()
        if domain == "example.test" or authenticated_user is not None:
            result = RecipientResult(address, ok=True)
        else:
            result = RecipientResult(address, ok=False, reply="554 5.7.1 Relay access denied")
        return self._answer(result)

    def deliver(self, envelope: Envelope, message: MessageSource) -> defer.Deferred[Any]:
        with message.open() as f:
            self.delivered.append((envelope, f.read(), message))
        if self.error is not None:
            return defer.fail(self.error)
        report = self.report or DeliveryReport(tuple(RecipientResult(r, ok=True) for r in envelope.rcpt_to))
        return self._answer(report)


class FakeDirectory:
    """
    Just enough of IDirectory for the Authenticator and the sender check: one
    user, alice, who owns her address and the alias team@example.test.  With
    ``manual`` set, owns_address waits for the test; ``error`` makes it fail.
    """

    OWNED = {"alice@example.test": {"alice@example.test", "team@example.test"}}

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []
        self.manual = False
        self.pending: list[tuple[defer.Deferred[bool], bool]] = []
        self.error: Exception | None = None

    def get_credentials(self, username: str) -> defer.Deferred[Any]:
        return defer.succeed(CREDENTIALS if username == "alice@example.test" else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        return defer.succeed("alice@example.test" if username == "alice@example.test" else None)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        self.asked.append((user, address))
        if self.error is not None:
            return defer.fail(self.error)
        owned = address.lower() in self.OWNED.get(user, set())
        if self.manual:
            d: defer.Deferred[bool] = defer.Deferred()
            self.pending.append((d, owned))
            return d
        return defer.succeed(owned)


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


def plain(user: str, password: str) -> bytes:
    return base64.b64encode(f"\0{user}\0{password}".encode())


class ServerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.spool = os.path.abspath(self.mktemp())
        os.makedirs(self.spool)
        self.router = FakeRouter()

    def connect(
        self, transport: StringTransport | None = None, **kwargs: Any
    ) -> tuple[SMTPServerProtocol, StringTransport]:
        options: dict[str, Any] = {
            "hostname": "mx.example.test",
            "router": self.router,
            "spool_dir": self.spool,
            "clock": self.clock,
        }
        options.update(kwargs)
        factory = SMTPFactory(**options)
        if not hasattr(self, "factories"):
            self.factories: list[SMTPFactory] = []
        self.factories.append(factory)
        proto = factory.buildProtocol(PEER)
        transport = transport if transport is not None else StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def take(self, transport: StringTransport) -> list[bytes]:
        """The reply lines written since the last call."""
        data = transport.value()
        transport.clear()
        return data.split(b"\r\n")[:-1]

    def final_codes(self, lines: list[bytes]) -> list[bytes]:
        return [line[:3] for line in lines if line[3:4] != b"-"]

    def spool_files(self) -> list[str]:
        """Files in the spool directory, less the empty ones made ahead of need."""
        reserved = set()
        for factory in getattr(self, "factories", []):
            reserved |= factory.spool.reserved()
        return [n for n in os.listdir(self.spool) if os.path.join(self.spool, n) not in reserved]


SEND = (
    b"EHLO client.test\r\nMAIL FROM:<sender@remote.test> SIZE=40\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n"
)
BODY = b"Subject: hi\r\n\r\nHello\r\n..dot line\r\n.\r\n"


class DeliveryTests(ServerTestCase):
    def test_greeting(self) -> None:
        """On connect the server greets with 220 <hostname> ESMTP txmail."""
        _, transport = self.connect()
        self.assertEqual(transport.value(), b"220 mx.example.test ESMTP txmail\r\n")

    def test_delivery(self) -> None:
        """The router gets the envelope and a spool file with Return-Path, Received and the unstuffed body."""
        proto, transport = self.connect()
        proto.dataReceived(SEND)
        proto.dataReceived(BODY)
        self.assertEqual(len(self.router.delivered), 1)
        envelope, data, message = self.router.delivered[0]
        self.assertEqual(envelope.mail_from, "sender@remote.test")
        self.assertEqual(envelope.rcpt_to, ("alice@example.test",))
        self.assertEqual(envelope.mail_params, {"SIZE": "40"})
        self.assertEqual(envelope.helo, "client.test")
        self.assertEqual(envelope.peer, "192.0.2.7:4321")
        self.assertEqual(envelope.protocol, "ESMTP")
        self.assertEqual(envelope.received_at, 1_700_000_000)
        self.assertFalse(envelope.tls)
        self.assertIsNone(envelope.authenticated_user)
        # Handed over complete but unsynced: each destination syncs what it keeps.
        self.assertFalse(message.fsynced)
        # A small message also travels in memory, equal to the file.
        self.assertEqual(message.data, data)
        self.assertEqual(message.size, len(data))
        header = (
            b"Return-Path: <sender@remote.test>\r\n"
            b"Received: from client.test ([192.0.2.7])\r\n"
            b"\tby mx.example.test (txmail) with ESMTP id " + envelope.message_id.encode() + b"\r\n"
            b"\tfor <alice@example.test>; Tue, 14 Nov 2023 22:13:20 +0000\r\n"
        )
        self.assertEqual(data, header + b"Subject: hi\r\n\r\nHello\r\n.dot line\r\n")
        last = self.take(transport)[-1]
        self.assertEqual(last, b"250 2.0.0 OK: queued as " + envelope.message_id.encode())
        self.assertEqual(self.spool_files(), [])

    def test_nul_octets_kept(self) -> None:
        """
        NUL octets in DATA are accepted and kept as they came, as Postfix
        does by default (its ``message_reject_characters`` and
        ``message_strip_characters`` are empty): the message reaches the
        router octet for octet, and the client gets 250.
        """
        proto, transport = self.connect()
        proto.dataReceived(SEND)
        proto.dataReceived(b"Subject: n\x00l\r\n\r\nbinary \x00\x00 junk\r\n\x00\r\n.\r\n")
        (delivered,) = self.router.delivered
        _, data, _ = delivered
        self.assertTrue(data.endswith(b"Subject: n\x00l\r\n\r\nbinary \x00\x00 junk\r\n\x00\r\n"))
        self.assertTrue(self.take(transport)[-1].startswith(b"250 2.0.0 OK: queued as "))

    def test_dsn_parameters_reach_the_envelope(self) -> None:
        """RFC 3461 parameters arrive in the Envelope normalised: RET/NOTIFY upper-cased, ENVID/ORCPT as given."""
        proto, transport = self.connect()
        proto.dataReceived(
            b"EHLO c\r\nMAIL FROM:<a@remote.test> ret=hdrs ENVID=Q+2Bid\r\n"
            b"RCPT TO:<alice@example.test> notify=delay,Failure ORCPT=rfc822;Alice+40example.test\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\n" + BODY
        )
        envelope = self.router.delivered[0][0]
        self.assertEqual(envelope.mail_params, {"RET": "HDRS", "ENVID": "Q+2Bid"})
        self.assertEqual(
            envelope.rcpt_params,
            ({"NOTIFY": "DELAY,FAILURE", "ORCPT": "rfc822;Alice+40example.test"}, {}),
        )
        self.assertEqual(self.take(transport)[-1][:3], b"250")

    def test_reply_only_after_router(self) -> None:
        """The 250 after the final dot is sent only once the router's Deferred fired; reading pauses meanwhile."""
        self.router.manual = True
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"220", b"250", b"250"])
        self.assertEqual(transport.producerState, "paused")
        self.router.fire()
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(b"DATA\r\n" + BODY + b"NOOP\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"250", b"354"])
        self.assertEqual(len(self.router.delivered), 1)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(self.spool_files()), 1)
        self.router.fire()
        self.assertEqual(self.final_codes(self.take(transport)), [b"250", b"250"])
        self.assertEqual(self.spool_files(), [])

    def test_large_message_not_kept_in_memory(self) -> None:
        """Past KEEP_IN_MEMORY the message exists only in the spool file."""
        proto, _transport = self.connect()
        proto.dataReceived(SEND)
        line = b"z" * 998 + b"\r\n"
        for _ in range(spool_module.KEEP_IN_MEMORY // len(line) + 2):
            proto.dataReceived(line)
        proto.dataReceived(b".\r\n")
        (_envelope, data, message) = self.router.delivered[0]
        self.assertIsNone(message.data)
        self.assertGreater(len(data), spool_module.KEEP_IN_MEMORY)

    def test_spool_files_made_ahead_in_run_blocking(self) -> None:
        """Spool files are created ahead of need through run_blocking, not on the reactor thread per message."""
        calls: list[Any] = []

        def run_blocking(fn: Any, *args: Any) -> defer.Deferred[Any]:
            calls.append(fn)
            return defer.maybeDeferred(fn, *args)

        proto, _transport = self.connect(run_blocking=run_blocking)
        for _ in range(3):
            proto.dataReceived(
                SEND + BODY
                if _ == 0
                else b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n" + BODY
            )
        self.assertEqual(len(self.router.delivered), 3)
        self.assertEqual(calls, [spool_module._create_spool_files])
        self.assertGreater(len(self.factories[-1].spool.reserved()), 0)

    def test_pipelined_session(self) -> None:
        """A whole pipelined session in one write gets all replies in order, router answers arriving later."""
        self.router.manual = True
        proto, transport = self.connect()
        proto.dataReceived(
            b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n"
            b"RCPT TO:<x@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        )
        for _ in range(3):
            self.router.fire()
        self.assertEqual(
            self.final_codes(self.take(transport)), [b"220", b"250", b"250", b"250", b"554", b"250", b"354"]
        )
        proto.dataReceived(b"x\r\n.\r\nQUIT\r\n")
        self.router.fire()
        self.assertEqual(self.final_codes(self.take(transport)), [b"250", b"221"])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.router.delivered[0][0].rcpt_to, ("alice@example.test", "bob@example.test"))

    def test_report_policy(self) -> None:
        """A temporary failure for any recipient gives 451 4.3.0; only permanent ones give 554."""
        for results, expected in [
            ((RecipientResult("a", ok=True), RecipientResult("b", ok=False, temporary=True)), b"451 4.3.0"),
            ((RecipientResult("a", ok=False), RecipientResult("b", ok=False, temporary=False)), b"554 5.0.0"),
        ]:
            self.router.report = DeliveryReport(results)
            proto, transport = self.connect()
            proto.dataReceived(SEND + BODY)
            self.assertTrue(self.take(transport)[-1].startswith(expected))
            self.assertEqual(self.spool_files(), [])

    def test_router_exception(self) -> None:
        """An exception in the router is logged and answered 451 4.3.0, without its text."""
        self.router.error = ValueError("secret internals")
        proto, transport = self.connect()
        proto.dataReceived(SEND + BODY + b"NOOP\r\n")
        lines = self.take(transport)
        self.assertEqual(lines[-2], b"451 4.3.0 Requested action aborted: local error in processing")
        self.assertEqual(lines[-1], b"250 2.0.0 OK")
        self.assertNotIn(b"secret", b"".join(lines))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.spool_files(), [])

    def test_check_recipient_exception(self) -> None:
        """A failing recipient check (a failed Deferred) is answered 451 4.3.0 and the session goes on."""

        def broken(address: str, authenticated_user: str | None = None) -> Any:
            return defer.fail(RuntimeError("boom"))

        self.router.check_recipient = broken  # type: ignore[method-assign]
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nNOOP\r\n")
        self.assertEqual(self.final_codes(self.take(transport))[-2:], [b"451", b"250"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_size_limit(self) -> None:
        """Content over the limit gets 552 at the dot; nothing is delivered and the spool is empty."""
        proto, transport = self.connect(limits=SMTPLimits(max_message_size=100))
        proto.dataReceived(SEND)
        proto.dataReceived(b"Subject: big\r\n\r\n" + b"y" * 200 + b"\r\n")
        self.assertEqual(self.spool_files(), [])
        proto.dataReceived(b".\r\n")
        self.assertTrue(self.take(transport)[-1].startswith(b"552 5.3.4"))
        self.assertEqual(self.router.delivered, [])

    def test_bdat_delivery(self) -> None:
        """A message sent with BDAT is delivered byte-exact (no dot-unstuffing) after the trace fields."""
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        proto.dataReceived(b"BDAT 9\r\nSubject: BDAT 6 LAST\r\nx\r\n.\r\n")
        _envelope, data, _ = self.router.delivered[0]
        self.assertTrue(data.endswith(b"; Tue, 14 Nov 2023 22:13:20 +0000\r\nSubject: x\r\n.\r\n"))
        self.assertTrue(data.startswith(b"Return-Path: <a@remote.test>\r\nReceived: "))
        self.assertEqual(self.final_codes(self.take(transport))[-2:], [b"250", b"250"])

    def test_missing_spool_dir(self) -> None:
        """If the spool file cannot be created, DATA gets 451 and the error is logged."""
        proto, transport = self.connect(spool_dir=os.path.join(self.spool, "missing"))
        proto.dataReceived(SEND)
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"451")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_connection_lost_mid_data(self) -> None:
        """When the client goes away during DATA the spool file is removed."""
        proto, _transport = self.connect()
        proto.dataReceived(SEND + b"Subject: partial\r\n")
        self.assertEqual(len(self.spool_files()), 1)
        proto.connectionLost(None)  # type: ignore[arg-type]
        self.assertEqual(self.spool_files(), [])
        self.assertEqual(self.router.delivered, [])

    def test_logs_structured_fields(self) -> None:
        """Accepted messages are logged with peer, session_id and message_id fields."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, _ = self.connect()
        proto.dataReceived(SEND + BODY)
        events = [e for e in observer if "message_id" in e and e.get("code") == 250]
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["peer"], "192.0.2.7:4321")
        self.assertEqual(events[0]["session_id"], proto.session_id)
        self.assertEqual(events[0]["message_id"], self.router.delivered[0][0].message_id)


@implementer(ISpooledMessage)
class MemorySpooled:
    """A spooled message kept in memory: no file, no directory."""

    def __init__(self, spool: MemorySpool) -> None:
        self.spool = spool
        self.chunks: list[bytes] = []
        self.size = 0
        self.failed = False
        self.discarded = False

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)

    def finish(self, fsync: bool = False) -> defer.Deferred[MessageSource]:
        self.spool.finished.append(fsync)
        if self.spool.finish_error is not None:
            return defer.fail(self.spool.finish_error)
        return defer.succeed(MessageSource.from_bytes(b"".join(self.chunks)))

    def discard(self) -> None:
        self.discarded = True


@implementer(ISpool)
class MemorySpool:
    """An ISpool that keeps messages in memory (what the SMTP server must cope with: no paths)."""

    def __init__(self) -> None:
        self.taken: list[MemorySpooled] = []
        self.finished: list[bool] = []
        self.finish_error: Exception | None = None

    def take(self) -> MemorySpooled:
        spooled = MemorySpooled(self)
        self.taken.append(spooled)
        return spooled

    def close(self) -> None:
        pass


class SpoolInterfaceTests(ServerTestCase):
    """The server uses its ISpool only: any implementation will do."""

    def test_spool_without_files(self) -> None:
        """A spool without files: the router gets a source without a path; the message is discarded after."""
        spool = MemorySpool()
        proto, transport = self.connect(spool=spool, spool_dir=None)
        proto.dataReceived(SEND + BODY)
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"250")
        ((_envelope, data, message),) = self.router.delivered
        self.assertIsNone(message.local_path)
        self.assertTrue(data.startswith(b"Return-Path: <sender@remote.test>\r\nReceived: "))
        self.assertTrue(data.endswith(b"\r\n\r\nHello\r\n.dot line\r\n"))
        self.assertEqual(spool.finished, [False])  # not fsynced: the destinations sync what they keep
        (spooled,) = spool.taken
        self.assertTrue(spooled.discarded)
        self.assertEqual(os.listdir(self.spool), [])

    def test_finish_failure(self) -> None:
        """A spool that cannot finish the message: 451, logged, discarded, nothing delivered."""
        spool = MemorySpool()
        spool.finish_error = OSError(28, "No space left on device")
        proto, transport = self.connect(spool=spool, spool_dir=None)
        proto.dataReceived(SEND + BODY)
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"451")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.assertEqual(self.router.delivered, [])
        self.assertTrue(spool.taken[0].discarded)

    def test_take_failure(self) -> None:
        """A spool that cannot start a message: DATA gets 451 and the error is logged."""
        spool = MemorySpool()

        def take() -> Any:
            raise OSError(13, "Permission denied")

        spool.take = take  # type: ignore[method-assign]
        proto, transport = self.connect(spool=spool, spool_dir=None)
        proto.dataReceived(SEND)
        self.assertEqual(self.final_codes(self.take(transport))[-1], b"451")
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_one_spool_needed(self) -> None:
        """A factory takes exactly one of spool and spool_dir."""
        with self.assertRaises(ValueError):
            SMTPFactory(hostname="h", router=FakeRouter(), clock=task.Clock())
        with self.assertRaises(ValueError):
            SMTPFactory(
                hostname="h",
                router=FakeRouter(),
                spool=MemorySpool(),
                spool_dir=self.spool,
                clock=task.Clock(),
            )


class AddressTrickTests(ServerTestCase):
    TRICKS = [
        "victim@remote.test",
        "@example.test:victim@remote.test",
        "victim%remote.test@example.test",
        "remote.test!victim@example.test",
        '"victim@remote.test"@example.test',
        "victim@[127.0.0.1]",
        "victim@[192.0.2.1]",
        "@example.test,@example.test:victim@remote.test",
    ]

    def test_no_trick_relays(self) -> None:
        """No address trick gets a recipient accepted on the MTA; the router is only asked about real domains."""
        proto, transport = self.connect()
        proto.dataReceived(b"EHLO c\r\n")
        for rcpt in self.TRICKS:
            self.take(transport)
            proto.dataReceived(f"MAIL FROM:<a@remote.test>\r\nRCPT TO:<{rcpt}>\r\nRSET\r\n".encode())
            codes = self.final_codes(self.take(transport))
            self.assertEqual(codes[0], b"250", rcpt)
            self.assertGreaterEqual(int(codes[1]), 500, rcpt)
        asked = [address for address, _ in self.router.checked]
        self.assertEqual(asked, ["victim@remote.test", "victim@remote.test", "victim@remote.test"])


class TimeoutTests(ServerTestCase):
    def test_command_timeout(self) -> None:
        """An idle client gets 421 4.4.2 after the command timeout and is disconnected."""
        proto, transport = self.connect(limits=SMTPLimits(command_timeout=10))
        self.take(transport)
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        proto.dataReceived(b"NOOP\r\n")
        self.clock.advance(9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(1)
        self.assertEqual(self.take(transport)[-1], b"421 4.4.2 Timeout, closing connection")
        self.assertTrue(transport.disconnecting)

    def test_data_timeout(self) -> None:
        """While reading content the data timeout applies; expiry removes the spool file."""
        proto, transport = self.connect(limits=SMTPLimits(command_timeout=10, data_timeout=60))
        proto.dataReceived(SEND + b"Subject: slow\r\n")
        self.clock.advance(30)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(30)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(self.take(transport)[-1].startswith(b"421 4.4.2"))
        self.assertEqual(self.spool_files(), [])

    def test_no_timeout_while_waiting_for_router(self) -> None:
        """The idle timer does not run while the server itself waits for the router."""
        self.router.manual = True
        proto, transport = self.connect(limits=SMTPLimits(command_timeout=10))
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.clock.advance(100)
        self.assertFalse(transport.disconnecting)
        self.router.fire()
        self.clock.advance(10)
        self.assertTrue(transport.disconnecting)


class StartTLSTests(ServerTestCase):
    def test_starttls_discards_injection(self) -> None:
        """220 is written before the handshake starts; pipelined commands after STARTTLS are never run."""
        context = object()
        transport = TLSStringTransport(peerAddress=PEER)
        proto, _ = self.connect(transport, tls_context=context)
        proto.dataReceived(b"EHLO c\r\n")
        self.assertIn(b"250 STARTTLS\r\n", transport.value())
        self.take(transport)
        proto.dataReceived(b"STARTTLS\r\nMAIL FROM:<evil@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        self.assertEqual(transport.tls_contexts, [context])
        self.assertEqual(transport.written_before_tls, b"220 2.0.0 Ready to start TLS\r\n")
        self.assertEqual(self.take(transport), [b"220 2.0.0 Ready to start TLS"])
        self.assertEqual(self.router.checked, [])
        # Inside TLS: the session starts over.
        proto.dataReceived(b"MAIL FROM:<a@remote.test>\r\nEHLO c\r\n")
        lines = self.take(transport)
        self.assertTrue(lines[0].startswith(b"503"))
        self.assertNotIn(b"STARTTLS", b"\r\n".join(lines))
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_no_starttls_without_tls_transport(self) -> None:
        """STARTTLS is not offered when the transport cannot start TLS or with implicit TLS."""
        proto, transport = self.connect(tls_context=object())
        proto.dataReceived(b"EHLO c\r\n")
        self.assertNotIn(b"STARTTLS", transport.value())
        proto, transport = self.connect(
            TLSStringTransport(peerAddress=PEER), tls_context=object(), implicit_tls=True
        )
        proto.dataReceived(SEND + BODY)
        self.assertNotIn(b"STARTTLS", transport.value())
        self.assertEqual(self.router.delivered[0][0].protocol, "ESMTPS")
        self.assertTrue(self.router.delivered[0][0].tls)


class AuthTests(ServerTestCase):
    def make_authenticator(self) -> Authenticator:
        self.directory = FakeDirectory()
        return Authenticator(self.directory, clock=self.clock)  # type: ignore[arg-type]

    def submit(self, **kwargs: Any) -> tuple[SMTPServerProtocol, StringTransport]:
        """A submission connection where alice has authenticated (replies so far taken)."""
        options: dict[str, Any] = {"role": "submission", "implicit_tls": True}
        options.update(kwargs)
        if "authenticator" not in options:
            options["authenticator"] = self.make_authenticator()
        proto, transport = self.connect(**options)
        proto.dataReceived(b"EHLO c\r\nAUTH PLAIN " + plain("alice@example.test", PASSWORD) + b"\r\n")
        self.assertEqual(self.take(transport)[-1], b"235 2.7.0 Authentication successful")
        return proto, transport

    def test_sender_must_be_owned(self) -> None:
        """Submission: her own address and her alias are accepted; someone else's is 553 5.7.1 and starts nothing."""
        proto, transport = self.submit()
        proto.dataReceived(
            b"MAIL FROM:<bob@example.test>\r\nRCPT TO:<friend@remote.test>\r\n"
            b"MAIL FROM:<Team@example.test>\r\nRSET\r\nMAIL FROM:<alice@example.test>\r\n"
        )
        self.assertEqual(
            self.take(transport),
            [
                b"553 5.7.1 Sender address rejected: not owned by user",
                b"503 5.5.1 Bad sequence of commands",
                b"250 2.1.0 Sender OK",
                b"250 2.0.0 OK",
                b"250 2.1.0 Sender OK",
            ],
        )
        self.assertEqual(
            self.directory.asked,
            [
                ("alice@example.test", "bob@example.test"),
                ("alice@example.test", "Team@example.test"),
                ("alice@example.test", "alice@example.test"),
            ],
        )
        self.assertEqual(self.router.checked, [])

    def test_null_sender_not_checked(self) -> None:
        """MAIL FROM:<> from an authenticated user is accepted without asking the directory (as Postfix does)."""
        proto, transport = self.submit()
        proto.dataReceived(b"MAIL FROM:<>\r\nRCPT TO:<friend@remote.test>\r\nDATA\r\n" + BODY)
        self.assertEqual(self.final_codes(self.take(transport)), [b"250", b"250", b"354", b"250"])
        self.assertEqual(self.directory.asked, [])
        self.assertEqual(self.router.delivered[0][0].mail_from, "")

    def test_mta_role_not_checked(self) -> None:
        """On port 25 even an authenticated client's sender is not checked."""
        proto, transport = self.submit(role="mta")
        proto.dataReceived(b"MAIL FROM:<bob@example.test>\r\n")
        self.assertEqual(self.take(transport), [b"250 2.1.0 Sender OK"])
        self.assertEqual(self.directory.asked, [])

    def test_sender_check_pauses_pipelined_commands(self) -> None:
        """While owns_address is pending nothing is answered; then the replies go out in order."""
        proto, transport = self.submit()
        self.directory.manual = True
        proto.dataReceived(b"MAIL FROM:<bob@example.test>\r\nNOOP\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertTrue(proto.session.paused)  # type: ignore[union-attr]
        d, owned = self.directory.pending.pop(0)
        d.callback(owned)
        self.assertEqual(self.final_codes(self.take(transport)), [b"553", b"250"])

    def test_sender_check_failure(self) -> None:
        """A failing directory lookup is answered 451 4.3.0 and logged; no transaction starts."""
        proto, transport = self.submit()
        self.directory.error = RuntimeError("directory down")
        proto.dataReceived(b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<friend@remote.test>\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"451", b"503"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_directory_argument_and_fallbacks(self) -> None:
        """The directory is the argument, else the router's; submission with AUTH and none is refused."""
        explicit = FakeDirectory()
        proto, transport = self.submit(directory=explicit)
        proto.dataReceived(b"MAIL FROM:<team@example.test>\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"250"])
        self.assertEqual(explicit.asked, [("alice@example.test", "team@example.test")])
        self.assertEqual(self.directory.asked, [])

        routers_directory = FakeDirectory()
        self.router.directory = routers_directory  # type: ignore[attr-defined]
        proto, transport = self.submit()
        proto.dataReceived(b"MAIL FROM:<bob@example.test>\r\n")
        self.assertEqual(self.final_codes(self.take(transport)), [b"553"])
        self.assertEqual(routers_directory.asked, [("alice@example.test", "bob@example.test")])

        with self.assertRaises(ValueError):
            SMTPFactory(
                role="submission",
                hostname="h",
                router=FakeRouter(),
                authenticator=object(),
                spool_dir=self.spool,
                clock=self.clock,
            )

    def test_submission_auth_and_relay(self) -> None:
        """On submission, AUTH PLAIN then a remote recipient: the router is asked with the user, ESMTPSA is recorded."""
        proto, transport = self.connect(
            role="submission", authenticator=self.make_authenticator(), implicit_tls=True
        )
        proto.dataReceived(b"EHLO c\r\nMAIL FROM:<alice@example.test>\r\n")
        self.assertTrue(self.take(transport)[-1].startswith(b"530 5.7.0"))
        proto.dataReceived(b"AUTH PLAIN " + plain("alice@example.test", PASSWORD) + b"\r\n")
        self.assertEqual(self.take(transport), [b"235 2.7.0 Authentication successful"])
        proto.dataReceived(
            b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<friend@remote.test>\r\nDATA\r\n" + BODY
        )
        self.assertEqual(self.router.checked, [("friend@remote.test", "alice@example.test")])
        envelope = self.router.delivered[0][0]
        self.assertEqual(envelope.authenticated_user, "alice@example.test")
        self.assertEqual(envelope.protocol, "ESMTPSA")
        self.assertIn(b"with ESMTPSA", self.router.delivered[0][1])

    def test_wrong_password_is_delayed(self) -> None:
        """A wrong password is answered 535 5.7.8 only after the authenticator's failure delay."""
        observer = EventLoggingObserver.createWithCleanup(self, globalLogPublisher)
        proto, transport = self.connect(authenticator=self.make_authenticator(), implicit_tls=True)
        proto.dataReceived(b"EHLO c\r\n")
        self.take(transport)
        proto.dataReceived(b"AUTH PLAIN " + plain("alice@example.test", "wrong-pass") + b"\r\nNOOP\r\n")
        self.assertEqual(transport.value(), b"")
        self.clock.advance(1)
        self.assertEqual(self.final_codes(self.take(transport)), [b"535", b"250"])
        self.assertFalse(any("wrong-pass" in repr(e) for e in observer))

    def test_plaintext_policy(self) -> None:
        """Without TLS, AUTH is offered only to loopback clients under the loopback policy."""
        proto, transport = self.connect(authenticator=self.make_authenticator(), plaintext_auth="loopback")
        proto.dataReceived(b"EHLO c\r\n")
        self.assertNotIn(b"AUTH", transport.value())
        loop = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 1))
        proto, transport = self.connect(
            loop, authenticator=self.make_authenticator(), plaintext_auth="loopback"
        )
        proto.dataReceived(b"EHLO c\r\n")
        self.assertIn(b"AUTH SCRAM-SHA-256 PLAIN LOGIN", transport.value())


class HelperTests(SynchronousTestCase):
    def test_received_header_ipv6_many_recipients(self) -> None:
        """IPv6 peers get an IPv6: literal; with several recipients no 'for' clause is written."""
        header = received_header(
            helo="c.test",
            peer_ip="2001:db8::1",
            hostname="mx.example.test",
            protocol="ESMTPS",
            message_id="ID1",
            recipients=["a@x.test", "b@x.test"],
            when=0,
        )
        self.assertEqual(
            header,
            b"Received: from c.test ([IPv6:2001:db8::1])\r\n\tby mx.example.test (txmail) with ESMTPS id ID1;\r\n"
            b"\tThu, 01 Jan 1970 00:00:00 +0000\r\n",
        )

    def test_reply_for_report(self) -> None:
        """All ok gives 250 with the id; any temporary failure 451; only permanent ones 554."""
        ok = RecipientResult("a", ok=True)
        temp = RecipientResult("b", ok=False, temporary=True)
        perm = RecipientResult("c", ok=False)
        self.assertEqual(
            reply_for_report(DeliveryReport((ok,)), "X").to_bytes(), b"250 2.0.0 OK: queued as X\r\n"
        )
        self.assertEqual(reply_for_report(DeliveryReport((ok, temp, perm)), "X").code, 451)
        self.assertEqual(reply_for_report(DeliveryReport((perm,)), "X").code, 554)

    def test_reply_for_report_typed(self) -> None:
        """Every recipient failing with one Reply of the right class gets it, multi-line as it is; else the default."""
        multi = Reply(550, "5.7.1", "Rejected\nsee https://example.test/why")
        same = DeliveryReport(
            (RecipientResult("a", ok=False, reply=multi), RecipientResult("b", ok=False, reply=multi))
        )
        self.assertEqual(
            reply_for_report(same, "X").to_bytes(),
            b"550-5.7.1 Rejected\r\n550 5.7.1 see https://example.test/why\r\n",
        )
        wrong_class = DeliveryReport((RecipientResult("a", ok=False, temporary=True, reply=multi),))
        self.assertEqual(reply_for_report(wrong_class, "X").to_bytes()[:10], b"451 4.3.0 ")
        two = DeliveryReport(
            (
                RecipientResult("a", ok=False, reply=multi),
                RecipientResult("b", ok=False, reply=multi.with_text("x")),
            )
        )
        self.assertEqual(reply_for_report(two, "X").to_bytes()[:10], b"554 5.0.0 ")

    def test_ipv6_peer(self) -> None:
        """An IPv6 peer is written [addr]:port in the envelope."""
        router = FakeRouter()
        factory = SMTPFactory(
            hostname="h", router=router, spool_dir=os.path.abspath(self.mktemp()), clock=task.Clock()
        )
        proto = factory.buildProtocol(None)
        proto.makeConnection(StringTransport(peerAddress=IPv6Address("TCP", "::1", 25)))
        self.assertEqual(proto.peer, "[::1]:25")

    def test_factory_validates(self) -> None:
        """Unknown roles and plaintext policies are refused at construction."""
        for bad in ({"role": "relay"}, {"plaintext_auth": "maybe"}):
            with self.assertRaises(ValueError):
                SMTPFactory(
                    hostname="h", router=FakeRouter(), spool_dir="/nonexistent", clock=task.Clock(), **bad
                )
