"""
The PROXY protocol header (HAProxy's ``proxy-protocol.txt``, versions 1 and
2), sans-IO: what a TCP load balancer sends before the client's own bytes,
so that the server behind it learns the client's address.

:class:`ProxyParser` is fed the first bytes of a connection, in pieces as
they arrive, and answers with the :class:`ProxyHeader` once it is complete
plus the bytes that followed it (the start of the real protocol: a
pipelined ``EHLO``, a TLS ClientHello...).  Anything that is not a valid
header raises :class:`ProxyHeaderError` as soon as it is known to be invalid
-- the caller closes the connection; nothing is guessed.

Version 1 is one text line of at most 107 octets::

    PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\\r\\n
    PROXY TCP6 2001:db8::7 2001:db8::1 56324 25\\r\\n
    PROXY UNKNOWN\\r\\n

with single spaces, addresses in their usual text form (no leading zeros in
IPv4, no IPv6 zone), ports as decimal numbers 0-65535 without leading zeros.
After ``UNKNOWN`` anything up to the CRLF is ignored.

Version 2 is binary: the 12-octet signature, a version (2) and command
octet (``LOCAL`` or ``PROXY``), a family and transport octet, a 16-bit
length, then the address block and optional TLVs (type, 16-bit length,
value), which are checked for well-formedness and kept in
:attr:`ProxyHeader.tlvs`.  Families: ``AF_INET`` and ``AF_INET6`` over
``STREAM`` give addresses; ``AF_UNSPEC`` and ``AF_UNIX`` give none ("unknown":
the connection's own addresses stand); datagram transports, which cannot be
what a stream listener carries, and unassigned values are rejected.
``LOCAL`` (the balancer's own health check) gives no addresses whatever
follows.

Nothing here does I/O; :mod:`txmail.proxywrap` puts it in front of
listeners.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyAddress",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyParser",
]

#: The longest version 1 header, CRLF included (``proxy-protocol.txt`` section 2.1).
V1_MAX_LENGTH = 107
#: The first 12 octets of every version 2 header.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V1_PREFIX = b"PROXY "
_V2_FIXED = 16  # signature, version/command, family/transport, length
_LOCAL, _PROXY = 0x0, 0x1
# family/transport octet -> (address block size, address family): the ones that name addresses.
_V2_INET = {0x11: (12, 4), 0x21: (36, 6)}
# Families accepted with no usable address: AF_UNSPEC, UNIX stream.
_V2_UNIX_STREAM = 0x31
_V2_UNIX_SIZE = 216
_IPV6_CHARS = frozenset("0123456789abcdefABCDEF:.")


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header; the message says why."""


@dataclass(frozen=True, slots=True)
class ProxyAddress:
    """
    One end of the proxied connection.

    Attributes:
        host: the IP address in its normal text form (IPv6 compressed).
        port: the TCP port.
        version: 4 or 6.
    """

    host: str
    port: int
    version: int


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """
    A parsed header.

    Attributes:
        version: 1 or 2.
        local: a version 2 ``LOCAL`` command (the proxy's own connection,
            a health check).
        source: the client's address, or ``None`` when the header gives
            none (``UNKNOWN``, ``LOCAL``, ``AF_UNSPEC``, ``AF_UNIX``): the
            connection's own addresses stand.
        destination: the address the client connected to, or ``None`` likewise.
        tlvs: the version 2 TLVs as ``(type, value)``, in order.
    """

    version: int
    local: bool = False
    source: ProxyAddress | None = None
    destination: ProxyAddress | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    @property
    def known(self) -> bool:
        """Whether the header names the client's address."""
        return self.source is not None


class ProxyParser:
    """
    Reads one PROXY header from the first bytes of a connection.

    Feed it what arrives (:meth:`feed`) until it answers with the header and
    the bytes after it.  It holds at most one header's bytes: 107 for
    version 1, 16 plus the announced length for version 2.
    """

    def __init__(self) -> None:
        # A bytearray, appended to in place: a version 2 header (up to
        # 65551 octets) arriving in small pieces would otherwise be copied
        # whole at each one, in time quadratic in its length.
        self._buffer = bytearray()
        self._done = False

    def feed(self, data: bytes) -> tuple[ProxyHeader, bytes] | None:
        """
        Take the next bytes of the connection.

        Returns:
            ``None`` while the header is incomplete; then ``(header, rest)``,
            *rest* being the bytes received after the header.

        Raises:
            ProxyHeaderError: the bytes cannot begin, or do not make, a valid header.
            RuntimeError: the header was already complete.
        """
        if self._done:
            raise RuntimeError("the PROXY header was already read")
        self._buffer += data
        buffer = self._buffer
        if not buffer:
            return None
        if buffer[:1] == _V1_PREFIX[:1]:
            result = _feed_v1(buffer)
        elif buffer[:1] == V2_SIGNATURE[:1]:
            result = _feed_v2(buffer)
        else:
            raise ProxyHeaderError("no PROXY header (neither version 1 nor 2)")
        if result is not None:
            self._done = True
            self._buffer = bytearray()
        return result


# -- version 1 -----------------------------------------------------------------


def _feed_v1(buffer: bytearray) -> tuple[ProxyHeader, bytes] | None:
    """A version 1 header from *buffer* (which starts with ``P``), if complete."""
    head = buffer[: len(_V1_PREFIX)]
    if not _V1_PREFIX.startswith(head):
        raise ProxyHeaderError("not a PROXY version 1 header")
    end = buffer.find(b"\r\n", 0, V1_MAX_LENGTH)
    if end < 0:
        window = buffer[:V1_MAX_LENGTH]
        if len(buffer) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"PROXY version 1 header longer than {V1_MAX_LENGTH} octets")
        if b"\n" in window or b"\r" in window[:-1]:
            raise ProxyHeaderError("PROXY version 1 header not ended by CRLF")
        return None
    return _parse_v1_line(bytes(buffer[:end])), bytes(buffer[end + 2 :])


def _parse_v1_line(line: bytes) -> ProxyHeader:
    """The header of one version 1 line (without its CRLF)."""
    if b"\r" in line or b"\n" in line:
        raise ProxyHeaderError("PROXY version 1 header not ended by CRLF")
    if line == b"PROXY UNKNOWN" or line.startswith(b"PROXY UNKNOWN "):
        return ProxyHeader(version=1)  # the rest of the line is ignored (section 2.1)
    parts = line.split(b" ")
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("PROXY version 1 header must be PROXY TCP4|TCP6|UNKNOWN SRC DST SPORT DPORT")
    version = 4 if parts[1] == b"TCP4" else 6
    source = ProxyAddress(_v1_address(parts[2], version), _v1_port(parts[4]), version)
    destination = ProxyAddress(_v1_address(parts[3], version), _v1_port(parts[5]), version)
    return ProxyHeader(version=1, source=source, destination=destination)


def _v1_address(field: bytes, version: int) -> str:
    """The IP address of a version 1 field, in its normal text form."""
    try:
        text = field.decode("ascii")
        if version == 4:
            if not text or not all(c.isdigit() or c == "." for c in text):
                raise ValueError(text)
            return str(ipaddress.IPv4Address(text))
        if not text or not set(text) <= _IPV6_CHARS:
            raise ValueError(text)
        return ipaddress.IPv6Address(text).compressed
    except (UnicodeDecodeError, ValueError):
        raise ProxyHeaderError(f"invalid IPv{version} address in PROXY header: {field[:45]!r}") from None


def _v1_port(field: bytes) -> int:
    """A version 1 port: decimal, 0-65535, no leading zero."""
    if (
        not field
        or len(field) > 5
        or not field.isdigit()
        or (field[:1] == b"0" and len(field) > 1)
        or int(field) > 65535
    ):
        raise ProxyHeaderError(f"invalid port in PROXY header: {field[:8]!r}")
    return int(field)


# -- version 2 -----------------------------------------------------------------


def _feed_v2(buffer: bytearray) -> tuple[ProxyHeader, bytes] | None:
    """A version 2 header from *buffer* (which starts with CR), if complete."""
    signature = buffer[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("bad PROXY version 2 signature")
    if len(buffer) > 12:
        version, command = buffer[12] >> 4, buffer[12] & 0x0F
        if version != 2:
            raise ProxyHeaderError(f"unknown PROXY protocol version {version}")
        if command not in (_LOCAL, _PROXY):
            raise ProxyHeaderError(f"unknown PROXY version 2 command {command:#x}")
    if len(buffer) < _V2_FIXED:
        return None
    (length,) = struct.unpack_from("!H", buffer, 14)
    end = _V2_FIXED + length
    if len(buffer) < end:
        return None
    header = _parse_v2(buffer[12] & 0x0F, buffer[13], bytes(buffer[_V2_FIXED:end]))
    return header, bytes(buffer[end:])


def _parse_v2(command: int, family: int, block: bytes) -> ProxyHeader:
    """The header of a version 2 *command* with *family* (the 14th octet) and its *block*."""
    if command == _LOCAL:
        # The proxy's own connection: the block, family included, is ignored (section 2.2).
        return ProxyHeader(version=2, local=True)
    if family == 0x00:
        return ProxyHeader(version=2)
    if family == _V2_UNIX_STREAM:
        _need(block, _V2_UNIX_SIZE, "AF_UNIX")
        return ProxyHeader(version=2, tlvs=_tlvs(block[_V2_UNIX_SIZE:]))
    if family not in _V2_INET:
        raise ProxyHeaderError(f"unsupported PROXY version 2 family/transport {family:#04x}")
    size, version = _V2_INET[family]
    _need(block, size, f"AF_INET{'6' if version == 6 else ''}")
    width = 4 if version == 4 else 16
    src = ipaddress.ip_address(block[:width])
    dst = ipaddress.ip_address(block[width : 2 * width])
    sport, dport = struct.unpack_from("!HH", block, 2 * width)
    return ProxyHeader(
        version=2,
        source=ProxyAddress(src.compressed, sport, version),
        destination=ProxyAddress(dst.compressed, dport, version),
        tlvs=_tlvs(block[size:]),
    )


def _need(block: bytes, size: int, family: str) -> None:
    if len(block) < size:
        raise ProxyHeaderError(f"PROXY version 2 {family} address block of {len(block)} octets, needs {size}")


def _tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    """The TLVs after the address block; one that runs past the end is an error."""
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError("truncated TLV in PROXY version 2 header")
        kind = data[offset]
        (length,) = struct.unpack_from("!H", data, offset + 1)
        start = offset + 3
        if start + length > len(data):
            raise ProxyHeaderError("TLV longer than the PROXY version 2 header")
        found.append((kind, data[start : start + length]))
        offset = start + length
    return tuple(found)
