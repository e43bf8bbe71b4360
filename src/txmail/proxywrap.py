"""
Listeners behind a TCP load balancer: the PROXY protocol header
(:mod:`txmail.proxyproto`) is read before the connection is handed to the
mail protocol, whose transport then tells the client's address from the
header (``getPeer()``) and the address it connected to (``getHost()``).
The SMTP ``Received:`` field, the policy checks (SPF, DNSBL, iprev, limits,
trusted networks), the loopback-only plaintext authentication, the
authentication failure delays and the logs all read them there.

* Only the balancers listed as trusted may send the header: a connection
  from another address is closed at once, unread, with a log line (anyone
  could otherwise claim any address).  A connection over a UNIX socket
  comes from this machine, behind the socket's permissions, and is trusted.
* A connection that does not send a complete, valid header within the
  timeout, or sends anything else, is closed with a log line; its bytes
  never reach the mail protocol.
* The mail protocol is built (``buildProtocol(address)``) and connected
  only once the header is read, so that it sees the client's address from
  its first moment; the bytes after the header are its first bytes.
* With implicit TLS (``ssl:`` endpoints) the header comes before the TLS
  handshake: the TLS layer is put above the PROXY reader, not below it
  (:func:`listen_proxied`).
* Once the header is read, a plain TCP or UNIX connection of Twisted's
  reactors is handed to the mail protocol (or to the TLS layer) itself,
  the header's addresses set as its ``getPeer``/``getHost``: nothing more
  passes through the wrapper, and the direct writes of
  :class:`txmail._protocol.SessionProtocol` work as without a balancer.
  Other transports keep the wrapper between them and the protocol.

Twisted's own ``twisted.protocols.haproxy`` (``proxyEndpoint``) does not fit:
it connects the wrapped protocol before the header is read (a greeting's
logs and checks would see the balancer), closes the connection when the
header arrives in pieces shorter than 16 octets, accepts addresses such as
``hello`` and ports such as 99999, lets a malformed port raise out of
``dataReceived``, has no header timeout nor trusted senders, and would put
the header after the TLS handshake on an ``ssl:`` endpoint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, tcp, unix
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocolFactory
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from txmail.config import DEFAULT_PROXY_TRUSTED
from txmail.errors import ConfigError
from txmail.proxyproto import ProxyAddress, ProxyHeader, ProxyHeaderError, ProxyParser

__all__ = [
    "ProxyProtocolFactory",
    "ProxyProtocolWrapper",
    "ProxySettings",
    "listen_proxied",
]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: The transports a wrapper hands over to the protocol once the header is read (see ``_splice``).
_SPLICEABLE = (tcp.Server, unix.Server)


@dataclass(frozen=True)
class ProxySettings:
    """
    How a PROXY listener reads its header.

    Attributes:
        trusted: the networks of the balancers allowed to send it.
        timeout: seconds a connection has to send the complete header.
    """

    trusted: tuple[Network, ...] = tuple(ipaddress.ip_network(n) for n in DEFAULT_PROXY_TRUSTED)
    timeout: float = 10.0

    @classmethod
    def from_strings(cls, trusted: Iterable[str], timeout: float) -> ProxySettings:
        """Settings from network texts (``"10.0.0.0/8"``); a ValueError names a bad one."""
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in trusted), timeout)

    def trusts(self, peer: IAddress) -> bool:
        """Whether *peer* (the connection's own address) may send a PROXY header."""
        if isinstance(peer, UNIXAddress):
            return True
        host = getattr(peer, "host", None)
        if not isinstance(peer, IPv4Address | IPv6Address) or not isinstance(host, str):
            return False
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 balancer on a dual-stack socket
        return any(ip.version == n.version and ip in n for n in self.trusted)


def twisted_address(address: ProxyAddress) -> IPv4Address | IPv6Address:
    """The Twisted address of a header's address; an IPv4-mapped IPv6 one as IPv4."""
    if address.version == 6:
        mapped = ipaddress.IPv6Address(address.host).ipv4_mapped
        if mapped is None:
            return IPv6Address("TCP", address.host, address.port)
        return IPv4Address("TCP", str(mapped), address.port)
    return IPv4Address("TCP", address.host, address.port)


def _describe(address: IAddress) -> str:
    host = getattr(address, "host", None)
    if host is None:
        return str(getattr(address, "name", "") or "unix socket")
    port = getattr(address, "port", "")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProxyProtocolWrapper(ProtocolWrapper):
    """
    One connection of a PROXY listener: reads the header, then builds the
    wrapped factory's protocol and hands it the connection (see
    ``_splice``), or else relays between it and the transport (it is then
    the protocol's transport).  Before the header is read,
    ``wrappedProtocol`` is ``None``.
    """

    log = Logger()

    factory: ProxyProtocolFactory
    #: The connection (a TCP/UNIX/TLS transport: more than ``ITransport`` says), ``None`` once spliced.
    transport: Any
    wrappedProtocol: Any

    def __init__(self, factory: ProxyProtocolFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]  # built once the header is read
        self.header: ProxyHeader | None = None
        self._parser: ProxyParser | None = ProxyParser()
        self._source: IAddress | None = None
        self._destination: IAddress | None = None
        self._timer: Any = None

    def logPrefix(self) -> str:
        if self.wrappedProtocol is None:
            return "PROXY"
        return str(super().logPrefix())  # type: ignore[no-untyped-call]  # Twisted's logPrefix is untyped

    def makeConnection(self, transport: Any) -> None:
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        self.factory.registerProtocol(self)  # type: ignore[no-untyped-call]  # untyped in Twisted
        peer = self.transport.getPeer()
        if not self.factory.settings.trusts(peer):
            self.log.warn("closing connection from {peer}: not a trusted PROXY sender", peer=_describe(peer))
            self._refuse()
            return
        self._timer = self.factory.clock.callLater(self.factory.settings.timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        if self.wrappedProtocol is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        parser = self._parser
        if parser is None:
            return  # refused: nothing more is read
        try:
            result = parser.feed(data)
        except ProxyHeaderError as e:
            self.log.warn(
                "closing connection from {peer}: {reason}",
                peer=_describe(self.transport.getPeer()),
                reason=str(e),
            )
            self._refuse()
            return
        if result is not None:
            self._open(*result)

    def _open(self, header: ProxyHeader, rest: bytes) -> None:
        """The header is read: connect the wrapped protocol and give it *rest*."""
        self._parser = None
        self._cancel_timer()
        self.header = header
        if header.source is not None and header.destination is not None:
            self._source = twisted_address(header.source)
            self._destination = twisted_address(header.destination)
        self.log.debug(
            "PROXY v{version} header from {proxy}: client {client}",
            version=header.version,
            proxy=_describe(self.transport.getPeer()),
            client=_describe(self.getPeer()) if header.known else "unknown",
        )
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self._refuse()
            return
        transport = self.transport
        if self._splice(protocol):
            protocol.makeConnection(transport)
            if rest and not transport.disconnecting:
                protocol.dataReceived(rest)
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest and not self.disconnecting and not getattr(transport, "disconnecting", False):
            protocol.dataReceived(rest)

    def _splice(self, protocol: Any) -> bool:
        """
        Step out of the way of a plain TCP or UNIX connection of Twisted's
        reactors: *protocol* becomes the connection's protocol, and the
        header's addresses its ``getPeer``/``getHost`` (instance
        attributes, as ``startTLS`` sets ``getHandle``).  The protocol then
        has the real transport, with its fast paths
        (:meth:`txmail._protocol.SessionProtocol._write_out`), and no call
        goes through the wrapper.  Other transports (TLS already started,
        other reactors, tests' ``StringTransport``) keep the wrapper.
        """
        transport = self.transport
        if type(transport) not in _SPLICEABLE or transport.TLS or transport.protocol is not self:
            return False
        if self._source is not None and self._destination is not None:
            source, destination = self._source, self._destination
            transport.getPeer = lambda: source
            transport.getHost = lambda: destination
        self.factory.unregisterProtocol(self)
        transport.protocol = protocol
        self.transport = None
        self.connected = 0
        return True

    def _timed_out(self) -> None:
        self._timer = None
        self.log.warn(
            "closing connection from {peer}: no PROXY header within {timeout} seconds",
            peer=_describe(self.transport.getPeer()),
            timeout=self.factory.settings.timeout,
        )
        self._refuse()

    def _refuse(self) -> None:
        """Close the connection; what it still sends is dropped."""
        self._parser = None
        self._cancel_timer()
        self.transport.loseConnection()

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def getPeer(self) -> IAddress:
        """The client: the header's source address, else the connection's peer."""
        return self._source if self._source is not None else self.transport.getPeer()

    def getHost(self) -> IAddress:
        """The address the client connected to: the header's, else the connection's own."""
        return self._destination if self._destination is not None else self.transport.getHost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self._parser = None
        self.factory.unregisterProtocol(self)  # type: ignore[no-untyped-call]  # untyped in Twisted
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class ProxyProtocolFactory(WrappingFactory):
    """
    Wraps a server factory: its connections start with a PROXY header
    (:class:`ProxyProtocolWrapper`).

    Args:
        wrapped: the mail protocol's factory (``wrappedFactory``).
        settings: the trusted balancers and the header timeout.
        clock: an ``IReactorTime`` for the timeout.
    """

    protocol = ProxyProtocolWrapper

    def __init__(self, wrapped: IProtocolFactory, settings: ProxySettings, clock: Any) -> None:
        super().__init__(wrapped)  # type: ignore[no-untyped-call]  # WrappingFactory is untyped
        self.settings = settings
        self.clock = clock

    def buildProtocol(self, addr: IAddress | None) -> ProxyProtocolWrapper:
        return ProxyProtocolWrapper(self)

    def logPrefix(self) -> str:
        return f"{super().logPrefix()} (PROXY)"  # type: ignore[no-untyped-call]  # untyped in Twisted


class _ProxyingReactor:
    """
    The reactor an endpoint listens through: each factory it is given is
    wrapped by *wrap* -- under the TLS layer for ``listenSSL`` -- and every
    other attribute is the real reactor's.  ``wrapped`` tells whether it was.
    """

    def __init__(self, reactor: Any, wrap: Callable[[IProtocolFactory], IProtocolFactory]) -> None:
        self._reactor = reactor
        self._wrap = wrap
        self.wrapped = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _wrapping(self, factory: IProtocolFactory) -> IProtocolFactory:
        self.wrapped = True
        return self._wrap(factory)

    def listenTCP(self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = "") -> Any:
        return self._reactor.listenTCP(port, self._wrapping(factory), backlog, interface)

    def listenSSL(
        self,
        port: int,
        factory: IProtocolFactory,
        contextFactory: Any,  # noqa: N803 -- IReactorSSL's name, passed by keyword
        backlog: int = 50,
        interface: str = "",
    ) -> Any:
        # The header comes before the handshake: TLS above the PROXY reader.
        tls = TLSMemoryBIOFactory(contextFactory, False, factory)
        return self._reactor.listenTCP(port, self._wrapping(tls), backlog, interface)

    def listenUNIX(self, address: str, factory: IProtocolFactory, *args: Any, **kwargs: Any) -> Any:
        return self._reactor.listenUNIX(address, self._wrapping(factory), *args, **kwargs)

    def adoptStreamPort(self, fd: int, family: Any, factory: IProtocolFactory) -> Any:
        return self._reactor.adoptStreamPort(fd, family, self._wrapping(factory))


def listen_proxied(
    reactor: Any,
    endpoint: Callable[[Any], Any],
    factory: IProtocolFactory,
    settings: ProxySettings,
) -> defer.Deferred[IListeningPort]:
    """
    Listen with *factory* behind PROXY headers.

    Args:
        reactor: the real reactor (also the header timeout's clock).
        endpoint: builds the endpoint from a reactor, e.g.
            ``lambda r: serverFromString(r, "ssl:465")``; it is given one
            that wraps each factory it listens with, so that ``tcp:``,
            ``tcp6:``, ``unix:`` and ``ssl:`` endpoints (the PROXY reader
            under TLS) and systemd's adopted sockets all work.
        factory: the mail protocol's factory.
        settings: trusted balancers and timeout.

    Returns:
        A Deferred of the listening port; it fails with a ConfigError (and
        stops listening) for an endpoint type that listened without going
        through the reactor methods above, which would have served without
        reading the header.
    """
    proxying = _ProxyingReactor(reactor, lambda f: ProxyProtocolFactory(f, settings, reactor))
    d = defer.maybeDeferred(endpoint(proxying).listen, factory)

    def check(port: IListeningPort) -> Any:
        if proxying.wrapped:
            return port
        stopped = defer.maybeDeferred(port.stopListening)
        error = ConfigError(
            "this endpoint type cannot take the PROXY protocol (use tcp:, tcp6:, ssl: or unix:)"
        )
        return stopped.addBoth(lambda _: Failure(error))

    return d.addCallback(check)
