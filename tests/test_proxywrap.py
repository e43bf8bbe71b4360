"""
The PROXY listener wrapper (txmail.proxywrap) over StringTransport and a
Clock, its endpoint wrapping over a MemoryReactor, and the ``[server]
proxy_*`` settings.
"""

from __future__ import annotations

import io
import socket
import ssl
import struct
import sys
from typing import Any

from twisted.internet import defer, reactor, tcp
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, serverFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.internet.threads import deferToThread
from twisted.logger import Logger, formatEvent
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests._certs import make_certificate
from txmail import cli
from txmail.config import Settings, load_config
from txmail.errors import ConfigError
from txmail.proxywrap import ProxyProtocolFactory, ProxyProtocolWrapper, ProxySettings, listen_proxied

BALANCER = IPv4Address("TCP", "10.0.0.5", 40000)
LOCAL = IPv4Address("TCP", "10.0.0.9", 25)
V1 = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\n"
V2_INET = (
    b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
    + bytes([192, 0, 2, 7, 198, 51, 100, 1])
    + struct.pack("!HH", 56324, 25)
)


class Recorder(Protocol):
    """Remembers what the wrapper hands it."""

    def __init__(self, addr: Any) -> None:
        self.built_for = addr
        self.peer_at_connect: Any = None
        self.host_at_connect: Any = None
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.peer_at_connect = self.transport.getPeer()
        self.host_at_connect = self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class RecordingFactory(Factory):
    def __init__(self, refuse: bool = False) -> None:
        self.built: list[Recorder] = []
        self.refuse = refuse

    def buildProtocol(self, addr: Any) -> Recorder | None:  # type: ignore[override]
        if self.refuse:
            return None
        protocol = Recorder(addr)
        protocol.factory = self
        self.built.append(protocol)
        return protocol


class WrapperTests(SynchronousTestCase):
    def connect(
        self,
        peer: Any = BALANCER,
        settings: ProxySettings | None = None,
        refuse: bool = False,
    ) -> tuple[ProxyProtocolWrapper, StringTransport, RecordingFactory]:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        inner = RecordingFactory(refuse)
        factory = ProxyProtocolFactory(
            inner, settings or ProxySettings.from_strings(["10.0.0.0/8"], 10.0), self.clock
        )
        wrapper = factory.buildProtocol(peer)
        wrapper.log = Logger(observer=self.events.append)
        transport = StringTransport(hostAddress=LOCAL, peerAddress=peer)
        wrapper.makeConnection(transport)
        return wrapper, transport, inner

    def logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"].name == "warn"]

    def test_protocol_built_after_the_header(self) -> None:
        """No protocol before the header; then one built for, and connected with, the header's addresses."""
        wrapper, transport, inner = self.connect()
        wrapper.dataReceived(V1[:10])
        self.assertEqual(inner.built, [])
        wrapper.dataReceived(V1[10:])
        [protocol] = inner.built
        self.assertEqual(protocol.built_for, IPv4Address("TCP", "192.0.2.7", 56324))
        self.assertEqual(protocol.peer_at_connect, IPv4Address("TCP", "192.0.2.7", 56324))
        self.assertEqual(protocol.host_at_connect, IPv4Address("TCP", "198.51.100.1", 25))
        self.assertIs(protocol.transport, wrapper)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.logged(), [])

    def test_bytes_after_the_header_are_delivered(self) -> None:
        """The bytes in the header's last piece go to the protocol, then everything that follows."""
        wrapper, transport, inner = self.connect()
        wrapper.dataReceived(V2_INET + b"EHLO client.test\r\n")
        [protocol] = inner.built
        self.assertEqual(protocol.data, b"EHLO client.test\r\n")
        wrapper.dataReceived(b"MAIL FROM:<>\r\n")
        self.assertEqual(protocol.data, b"EHLO client.test\r\nMAIL FROM:<>\r\n")
        protocol.transport.write(b"250 ok\r\n")
        self.assertEqual(transport.value(), b"250 ok\r\n")
        self.assertEqual(wrapper.header.version, 2)  # type: ignore[union-attr]

    def test_one_octet_at_a_time(self) -> None:
        """A header arriving one octet at a time is read; the protocol starts after its last octet."""
        wrapper, _, inner = self.connect()
        for i in range(len(V2_INET)):
            self.assertEqual(inner.built, [])
            wrapper.dataReceived(V2_INET[i : i + 1])
        [protocol] = inner.built
        self.assertEqual(protocol.peer_at_connect, IPv4Address("TCP", "192.0.2.7", 56324))
        self.assertEqual(protocol.data, b"")

    def test_ipv6_addresses(self) -> None:
        """A TCP6 header gives IPv6 addresses."""
        wrapper, _, inner = self.connect()
        wrapper.dataReceived(b"PROXY TCP6 2001:db8::7 2001:db8::1 1234 993\r\n")
        self.assertEqual(wrapper.getPeer(), IPv6Address("TCP", "2001:db8::7", 1234))
        self.assertEqual(wrapper.getHost(), IPv6Address("TCP", "2001:db8::1", 993))
        self.assertEqual(inner.built[0].peer_at_connect, IPv6Address("TCP", "2001:db8::7", 1234))

    def test_ipv4_mapped_addresses_are_ipv4(self) -> None:
        """An IPv4-mapped IPv6 address (a dual-stack balancer's IPv4 client) is an IPv4 address."""
        wrapper, _, _ = self.connect()
        wrapper.dataReceived(b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 1234 25\r\n")
        self.assertEqual(wrapper.getPeer(), IPv4Address("TCP", "192.0.2.7", 1234))
        self.assertEqual(wrapper.getHost(), IPv4Address("TCP", "198.51.100.1", 25))

    def test_unknown_and_local_keep_the_real_addresses(self) -> None:
        """UNKNOWN and LOCAL headers: the connection's own addresses stand."""
        local_v2 = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
        for header in (b"PROXY UNKNOWN\r\n", local_v2):
            wrapper, transport, inner = self.connect()
            wrapper.dataReceived(header + b"NOOP\r\n")
            [protocol] = inner.built
            self.assertEqual(protocol.built_for, BALANCER)
            self.assertEqual(protocol.peer_at_connect, BALANCER)
            self.assertEqual(protocol.host_at_connect, LOCAL)
            self.assertEqual(protocol.data, b"NOOP\r\n")
            self.assertFalse(transport.disconnecting)

    def test_timeout_closes(self) -> None:
        """No complete header within the timeout: closed and logged, no protocol built."""
        wrapper, transport, inner = self.connect(settings=ProxySettings.from_strings(["10.0.0.0/8"], 7.0))
        wrapper.dataReceived(V1[:20])
        self.clock.advance(6.9)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(inner.built, [])
        [line] = self.logged()
        self.assertIn("10.0.0.5:40000", line)
        self.assertIn("no PROXY header within 7.0 seconds", line)
        wrapper.dataReceived(V1[20:] + b"EHLO x\r\n")  # too late: dropped
        self.assertEqual(inner.built, [])

    def test_header_cancels_the_timeout(self) -> None:
        """Once the header is read, the timer is gone: the protocol's own timeouts rule."""
        wrapper, transport, _ = self.connect()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        wrapper.dataReceived(V1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(3600)
        self.assertFalse(transport.disconnecting)

    def test_untrusted_peer_closed_unread(self) -> None:
        """A connection from outside proxy_trusted is closed at once and logged; its header is not read."""
        stranger = IPv4Address("TCP", "203.0.113.9", 5555)
        wrapper, transport, inner = self.connect(peer=stranger)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        wrapper.dataReceived(V1 + b"EHLO x\r\n")
        self.assertEqual(inner.built, [])
        self.assertEqual(wrapper.getPeer(), stranger)
        [line] = self.logged()
        self.assertIn("203.0.113.9:5555", line)
        self.assertIn("not a trusted PROXY sender", line)

    def test_bad_header_closes(self) -> None:
        """A malformed header closes the connection with a log line; neither it nor what follows reaches a protocol."""
        for data in (b"EHLO client.test\r\n", b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 25\r\nEHLO x\r\n"):
            wrapper, transport, inner = self.connect()
            wrapper.dataReceived(data)
            self.assertTrue(transport.disconnecting)
            wrapper.dataReceived(b"MAIL FROM:<>\r\n")
            self.assertEqual(inner.built, [])
            self.assertEqual(transport.value(), b"")
            self.assertEqual(self.clock.getDelayedCalls(), [])
            [line] = self.logged()
            self.assertIn("closing connection from 10.0.0.5:40000", line)

    def test_factory_refusing_closes(self) -> None:
        """A factory that builds no protocol for the client: the connection is closed."""
        wrapper, transport, _ = self.connect(refuse=True)
        wrapper.dataReceived(V1)
        self.assertTrue(transport.disconnecting)

    def test_connection_lost_before_the_header(self) -> None:
        """Lost while waiting for the header: the timer is cancelled, there is no protocol to tell."""
        wrapper, _, inner = self.connect()
        wrapper.dataReceived(V1[:5])
        wrapper.connectionLost(Failure(Exception("gone")))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(inner.built, [])
        self.assertEqual(wrapper.factory.protocols, {})

    def test_connection_lost_after_the_header(self) -> None:
        """Lost after the header: the protocol is told, the wrapper unregistered."""
        wrapper, _, inner = self.connect()
        wrapper.dataReceived(V1)
        self.assertEqual(list(wrapper.factory.protocols), [wrapper])
        reason = Failure(Exception("gone"))
        wrapper.connectionLost(reason)
        self.assertIs(inner.built[0].lost, reason)
        self.assertEqual(wrapper.factory.protocols, {})

    def test_unix_peer_trusted(self) -> None:
        """A connection over a UNIX socket comes from this machine: its header is read."""
        wrapper, transport, inner = self.connect(
            peer=UNIXAddress(None), settings=ProxySettings.from_strings([], 10)
        )
        wrapper.dataReceived(V1)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(inner.built[0].peer_at_connect, IPv4Address("TCP", "192.0.2.7", 56324))


class TrustTests(SynchronousTestCase):
    def test_networks(self) -> None:
        """Peers inside the networks are trusted, others not; IPv4 on a dual-stack socket counts as IPv4."""
        settings = ProxySettings.from_strings(["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"], 10)
        for host, trusted in (
            ("10.1.2.3", True),
            ("11.0.0.1", False),
            ("192.0.2.1", True),
            ("192.0.2.2", False),
            ("2001:db8::5", True),
            ("2001:db9::5", False),
            ("::ffff:10.9.9.9", True),
            ("::ffff:11.9.9.9", False),
        ):
            cls = IPv6Address if ":" in host else IPv4Address
            self.assertEqual(settings.trusts(cls("TCP", host, 1)), trusted, host)

    def test_defaults_trust_loopback_only(self) -> None:
        """By default only this machine may send the header."""
        settings = ProxySettings()
        self.assertTrue(settings.trusts(IPv4Address("TCP", "127.0.0.1", 1)))
        self.assertTrue(settings.trusts(IPv6Address("TCP", "::1", 1)))
        self.assertFalse(settings.trusts(IPv4Address("TCP", "10.0.0.1", 1)))
        self.assertEqual(settings.timeout, 10.0)


class FakePort:
    def __init__(self) -> None:
        self.stopped = False

    def stopListening(self) -> None:
        self.stopped = True


class ListenTests(SynchronousTestCase):
    settings = ProxySettings()

    def test_tcp(self) -> None:
        """A tcp: endpoint listens with the PROXY factory around the mail factory."""
        reactor = MemoryReactor()
        inner = RecordingFactory()
        d = listen_proxied(
            reactor, lambda r: serverFromString(r, "tcp:2525:interface=127.0.0.1"), inner, self.settings
        )
        self.successResultOf(d)
        [(port, factory, _, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (2525, "127.0.0.1"))
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIs(factory.wrappedFactory, inner)
        self.assertIs(factory.clock, reactor)
        self.assertIs(factory.settings, self.settings)

    def test_ssl_reads_the_header_before_tls(self) -> None:
        """An ssl: endpoint listens on TCP: PROXY reader outside, TLS inside it, the mail factory in TLS."""
        _, cert, key = make_certificate(self.mktemp())
        reactor = MemoryReactor()
        inner = RecordingFactory()
        d = listen_proxied(
            reactor,
            lambda r: serverFromString(r, f"ssl:465:privateKey={key}:certKey={cert}"),
            inner,
            self.settings,
        )
        self.successResultOf(d)
        self.assertEqual(reactor.sslServers, [])
        [(port, factory, _, _)] = reactor.tcpServers
        self.assertEqual(port, 465)
        self.assertIsInstance(factory, ProxyProtocolFactory)
        self.assertIsInstance(factory.wrappedFactory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory.wrappedFactory, inner)

    def test_unix(self) -> None:
        """A unix: endpoint listens with the PROXY factory."""
        reactor = MemoryReactor()
        inner = RecordingFactory()
        self.successResultOf(
            listen_proxied(reactor, lambda r: serverFromString(r, "unix:/tmp/x.sock"), inner, self.settings)
        )
        [(address, factory, _, _, _)] = reactor.unixServers
        self.assertEqual(address, "/tmp/x.sock")
        self.assertIs(factory.wrappedFactory, inner)

    def test_endpoint_that_bypasses_the_reactor_is_refused(self) -> None:
        """An endpoint that listened without the wrapped reactor methods is stopped: a ConfigError."""
        port = FakePort()

        class Bypassing:
            def __init__(self, reactor: Any) -> None:
                pass

            def listen(self, factory: Any) -> FakePort:
                return port

        f = self.failureResultOf(
            listen_proxied(MemoryReactor(), Bypassing, RecordingFactory(), self.settings)
        )
        f.trap(ConfigError)
        self.assertIn("cannot take the PROXY protocol", str(f.value))
        self.assertTrue(port.stopped)


class Sender(Protocol):
    """A client that sends *data* once connected and keeps what it receives."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.closed: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed.callback(None)


class Echo(Recorder):
    """Answers each chunk with its peer's and its own address."""

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.transport.write(f"{peer.host}:{peer.port} -> {host.host}:{host.port}\n".encode())
        self.transport.loseConnection()


class EchoFactory(RecordingFactory):
    def buildProtocol(self, addr: Any) -> Recorder | None:  # type: ignore[override]
        protocol = Echo(addr)
        protocol.factory = self
        self.built.append(protocol)
        return protocol


class LoopbackTests(TestCase):
    """Real connections on loopback: the wrapper hands the connection itself to the protocol."""

    timeout = 30

    @defer.inlineCallbacks
    def serve(self, description: str) -> Any:
        self.inner = EchoFactory()
        port = yield listen_proxied(
            reactor, lambda r: serverFromString(r, description), self.inner, ProxySettings()
        )
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_tcp_connection_spliced(self) -> Any:
        """After the header the protocol's transport is the TCP connection itself, telling the header's addresses."""
        port = yield self.serve("tcp:0:interface=127.0.0.1")
        client = Sender(V1 + b"hello\r\n")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.closed
        self.assertEqual(client.received, b"192.0.2.7:56324 -> 198.51.100.1:25\n")
        [protocol] = self.inner.built
        self.assertIs(type(protocol.transport), tcp.Server)
        self.assertEqual(protocol.built_for, IPv4Address("TCP", "192.0.2.7", 56324))
        self.assertEqual(protocol.data, b"hello\r\n")

    @defer.inlineCallbacks
    def test_unknown_header_spliced_with_real_addresses(self) -> Any:
        """PROXY UNKNOWN: the connection is handed over with its own addresses."""
        port = yield self.serve("tcp:0:interface=127.0.0.1")
        client = Sender(b"PROXY UNKNOWN\r\nx")
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        yield client.closed
        self.assertTrue(client.received.startswith(b"127.0.0.1:"), client.received)
        self.assertTrue(client.received.endswith(f" -> 127.0.0.1:{port}\n".encode()), client.received)

    @defer.inlineCallbacks
    def test_tls_after_the_header(self) -> Any:
        """ssl: endpoint: the header in the clear, then a TLS session whose transport tells the header's addresses."""
        ca, cert, key = make_certificate(self.mktemp())
        port = yield self.serve(f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")

        def run() -> bytes:
            context = ssl.create_default_context(cafile=ca)
            context.check_hostname = False
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
                raw.sendall(V2_INET)
                with context.wrap_socket(raw) as tls:
                    tls.sendall(b"hello\r\n")
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = tls.recv(1024)
                        if not chunk:
                            break
                        data += chunk
                    return data

        received = yield deferToThread(run)
        self.assertEqual(received, b"192.0.2.7:56324 -> 198.51.100.1:25\n")
        [protocol] = self.inner.built
        self.assertIsInstance(protocol.transport, TLSMemoryBIOProtocol)
        self.assertIs(type(protocol.transport.transport), tcp.Server)
        self.assertEqual(protocol.data, b"hello\r\n")


class ProxyConfigTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """No listener expects a header; loopback may send one; 10 seconds to send it."""
        settings = Settings.validated()
        self.assertEqual(settings.proxy_protocol, ())
        self.assertEqual(settings.proxy_trusted, ("127.0.0.0/8", "::1/128"))
        self.assertEqual(settings.proxy_timeout, 10.0)

    def test_file(self) -> None:
        """The [server] keys are read from the file."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(
                "[server]\n"
                'proxy_protocol = ["tcp:25"]\n'
                'proxy_trusted = ["10.0.0.0/8", "2001:db8::1"]\n'
                'proxy_timeout = "30s"\n'
                "[smtp]\n"
                'listen = ["tcp:25"]\n'
            )
        settings = load_config(path)
        self.assertEqual(settings.proxy_protocol, ("tcp:25",))
        self.assertEqual(settings.proxy_trusted, ("10.0.0.0/8", "2001:db8::1"))
        self.assertEqual(settings.proxy_timeout, 30.0)

    def test_endpoint_must_be_a_listener(self) -> None:
        """A proxy_protocol endpoint that no listen list names is an error (a typo would leave it open)."""
        with self.assertRaises(ConfigError) as e:
            Settings.validated(smtp=["tcp:25"], proxy_protocol=["tcp:2525"])
        self.assertIn("'tcp:2525' is not a listener", str(e.exception))
        settings = Settings.validated(imap=["tcp:143"], proxy_protocol=["tcp:143"])
        self.assertEqual(settings.proxy_protocol, ("tcp:143",))

    def test_bad_values(self) -> None:
        """Networks must parse, the timeout must be a positive duration, the lists lists of strings."""
        for values in (
            {"proxy_trusted": ["10.0.0.0/33"]},
            {"proxy_trusted": ["balancer.example"]},
            {"proxy_trusted": [10]},
            {"proxy_timeout": 0},
            {"proxy_timeout": "soon"},
            {"proxy_protocol": [25]},
        ):
            self.assertRaises(ConfigError, Settings.validated, **values)

    def test_check_config_names_the_proxy_listeners(self) -> None:
        """txmail check-config lists the PROXY listeners and who may send the header; nothing without them."""
        data_dir = self.mktemp()
        for extra, expected in (
            (
                'proxy_protocol = ["tcp:25"]\nproxy_trusted = ["10.0.0.0/8"]\n',
                "  PROXY protocol: tcp:25 (from 10.0.0.0/8)\n",
            ),
            ("", None),
        ):
            path = self.mktemp()
            with open(path, "w") as f:
                f.write(f'[server]\ndata_dir = "{data_dir}"\n{extra}[smtp]\nlisten = ["tcp:25"]\n')
            out = io.StringIO()
            self.patch(sys, "stdout", out)
            self.assertEqual(cli.main(["check-config", "--config", path]), 0)
            if expected is None:
                self.assertNotIn("PROXY", out.getvalue())
            else:
                self.assertIn(expected, out.getvalue())
