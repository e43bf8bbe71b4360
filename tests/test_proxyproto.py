"""The sans-IO PROXY protocol parser (txmail.proxyproto): versions 1 and 2, whole and in pieces, and every malformed header."""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from txmail.proxyproto import (
    V1_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyAddress,
    ProxyHeader,
    ProxyHeaderError,
    ProxyParser,
)

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(block: bytes, *, ver_cmd: int = 0x21, family: int = 0x11, length: int | None = None) -> bytes:
    """A version 2 header with *block* after its 16 fixed octets (its length announced, or *length*)."""
    announced = len(block) if length is None else length
    return SIG + bytes([ver_cmd, family]) + struct.pack("!H", announced) + block


INET_BLOCK = bytes([192, 0, 2, 7]) + bytes([198, 51, 100, 1]) + struct.pack("!HH", 56324, 25)
INET6_BLOCK = (
    bytes.fromhex("20010db8000000000000000000000007")
    + bytes.fromhex("20010db8000000000000000000000001")
    + struct.pack("!HH", 40000, 993)
)


def parse(data: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed *data* whole; the header must be complete."""
    result = ProxyParser().feed(data)
    assert result is not None, "header incomplete"
    return result


def parse_octets(data: bytes) -> tuple[ProxyHeader, bytes]:
    """Feed *data* one octet at a time; the header must complete on the last octet of the header."""
    parser = ProxyParser()
    for i in range(len(data)):
        result = parser.feed(data[i : i + 1])
        if result is not None:
            header, rest = result
            return header, rest + data[i + 1 :]
    raise AssertionError("header incomplete")


class VersionOneTests(SynchronousTestCase):
    def test_tcp4(self) -> None:
        """A TCP4 line gives both addresses and ports; the bytes after the CRLF are the rest."""
        header, rest = parse(b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO client.test\r\n")
        self.assertEqual(header.version, 1)
        self.assertFalse(header.local)
        self.assertTrue(header.known)
        self.assertEqual(header.source, ProxyAddress("192.0.2.7", 56324, 4))
        self.assertEqual(header.destination, ProxyAddress("198.51.100.1", 25, 4))
        self.assertEqual(rest, b"EHLO client.test\r\n")

    def test_tcp6(self) -> None:
        """A TCP6 line gives IPv6 addresses in their compressed form."""
        header, rest = parse(b"PROXY TCP6 2001:db8:0:0::7 2001:DB8::1 65535 0\r\n")
        self.assertEqual(header.source, ProxyAddress("2001:db8::7", 65535, 6))
        self.assertEqual(header.destination, ProxyAddress("2001:db8::1", 0, 6))
        self.assertEqual(rest, b"")

    def test_tcp6_with_embedded_ipv4(self) -> None:
        """An IPv4-mapped IPv6 address in dotted form is an IPv6 address."""
        header, _ = parse(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n")
        self.assertEqual(header.source, ProxyAddress("::ffff:c000:207", 1, 6))

    def test_unknown(self) -> None:
        """UNKNOWN alone, or followed by anything before the CRLF, gives no addresses."""
        for line in (b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n"):
            header, rest = parse(line + b"A1 CAPABILITY\r\n")
            self.assertEqual(header, ProxyHeader(version=1))
            self.assertFalse(header.known)
            self.assertIsNone(header.destination)
            self.assertEqual(rest, b"A1 CAPABILITY\r\n")

    def test_longest_lines(self) -> None:
        """The longest TCP6 line is accepted, and so is any UNKNOWN line of 107 octets."""
        full = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        header, _ = parse(b"PROXY TCP6 " + full + b" " + full + b" 65535 65535\r\n")
        self.assertEqual(header.source, ProxyAddress(full.decode(), 65535, 6))
        line = b"PROXY UNKNOWN " + full + b" " + full + b" 65535 65535\r\n"
        self.assertEqual(len(line), V1_MAX_LENGTH)
        self.assertEqual(parse_octets(line + b"x"), (ProxyHeader(version=1), b"x"))

    def test_one_octet_at_a_time(self) -> None:
        """Fed one octet at a time, the header completes at its CRLF and the rest follows."""
        data = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 25\r\nEHLO x\r\n"
        parser = ProxyParser()
        end = data.index(b"\r\n") + 2
        for i in range(end - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]))
        result = parser.feed(data[end - 1 :])
        assert result is not None
        self.assertEqual(result[0].source, ProxyAddress("192.0.2.7", 56324, 4))
        self.assertEqual(result[1], b"EHLO x\r\n")

    def test_feeding_after_the_header_is_an_error(self) -> None:
        """The parser reads one header: feeding it more raises RuntimeError."""
        parser = ProxyParser()
        self.assertIsNotNone(parser.feed(b"PROXY UNKNOWN\r\n"))
        self.assertRaises(RuntimeError, parser.feed, b"more")

    def test_empty_feed(self) -> None:
        """Nothing fed, nothing known: no header yet, no error."""
        self.assertIsNone(ProxyParser().feed(b""))

    def assertMalformed(self, data: bytes) -> None:
        """*data* is refused, whole and one octet at a time."""
        self.assertRaises(ProxyHeaderError, ProxyParser().feed, data)
        parser = ProxyParser()
        with self.assertRaises(ProxyHeaderError):
            for i in range(len(data)):
                parser.feed(data[i : i + 1])

    def test_not_a_header(self) -> None:
        """Client bytes that are no header at all are refused from their first octet."""
        for data in (b"EHLO client.test\r\n", b"\x16\x03\x01\x02\x00", b"A1 LOGIN a b\r\n"):
            with self.assertRaises(ProxyHeaderError):
                ProxyParser().feed(data[:1])

    def test_bad_prefix(self) -> None:
        """``PROXY`` must be upper case and followed by one space."""
        for data in (
            b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
            b"PROXYTCP4\r\n",
            b"PRXY TCP4\r\n",
            b"POST / HTTP/1.0\r\n",
        ):
            self.assertMalformed(data)

    def test_too_long(self) -> None:
        """No CRLF within 107 octets: refused at the 107th, without waiting for more."""
        data = b"PROXY UNKNOWN " + b"x" * 200
        parser = ProxyParser()
        self.assertIsNone(parser.feed(data[:106]))
        self.assertRaises(ProxyHeaderError, parser.feed, data[106:107])
        self.assertMalformed(b"PROXY UNKNOWN " + b"x" * 93 + b"\r\n")  # CRLF at octets 108-109

    def test_bare_cr_or_lf(self) -> None:
        """The line ends with CRLF: a bare LF or CR is refused as soon as it is seen."""
        parser = ProxyParser()
        self.assertRaises(ProxyHeaderError, parser.feed, b"PROXY UNKNOWN\n")
        self.assertMalformed(b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n")
        self.assertMalformed(b"PROXY UNKNOWN\rx\r\n")
        self.assertMalformed(b"PROXY TCP4 1.2.3.4\r 1.2.3.4 1 2\r\n")

    def test_bad_protocol(self) -> None:
        """The protocol is TCP4, TCP6 or UNKNOWN, in upper case."""
        for proto in (b"UDP4", b"tcp4", b"TCP", b"TCP5", b"UNKNOWNX", b""):
            self.assertMalformed(b"PROXY " + proto + b" 192.0.2.7 198.51.100.1 1 2\r\n")

    def test_bad_spacing(self) -> None:
        """Exactly one space between fields, none at the end, no missing or extra field."""
        for line in (
            b"PROXY  TCP4 192.0.2.7 198.51.100.1 1 2",
            b"PROXY TCP4 192.0.2.7  198.51.100.1 1 2",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 ",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 1 2 3",
            b"PROXY TCP4 192.0.2.7\t198.51.100.1 1 2",
            b"PROXY TCP4",
            b"PROXY ",
        ):
            self.assertMalformed(line + b"\r\n")

    def test_bad_addresses(self) -> None:
        """Each address is valid for its family, in its plain text form."""
        for proto, src in (
            (b"TCP4", b"192.0.2.256"),
            (b"TCP4", b"192.0.2"),
            (b"TCP4", b"192.000.2.7"),
            (b"TCP4", b"hello"),
            (b"TCP4", b"::1"),
            (b"TCP4", b" 192.0.2.7"),
            (b"TCP4", b"\xd9\xa1.0.2.7"),
            (b"TCP6", b"192.0.2.7"),
            (b"TCP6", b"2001:db8::7::1"),
            (b"TCP6", b"fe80::1%eth0"),
            (b"TCP6", b"[2001:db8::7]"),
            (b"TCP6", b"gggg::1"),
        ):
            dst = b"198.51.100.1" if proto == b"TCP4" else b"2001:db8::1"
            self.assertMalformed(b"PROXY " + proto + b" " + src + b" " + dst + b" 1 2\r\n")
            self.assertMalformed(b"PROXY " + proto + b" " + dst + b" " + src + b" 1 2\r\n")

    def test_bad_ports(self) -> None:
        """Ports are decimal 0-65535, without sign, spaces or leading zeros."""
        for port in (b"65536", b"99999", b"-1", b"+1", b"025", b"00", b"1x", b"0x19", b"123456", b"\xd9\xa1"):
            self.assertMalformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 " + port + b" 25\r\n")
            self.assertMalformed(b"PROXY TCP4 192.0.2.7 198.51.100.1 25 " + port + b"\r\n")


class VersionTwoTests(SynchronousTestCase):
    def test_inet(self) -> None:
        """PROXY over TCP/IPv4 gives both addresses and ports; the bytes after the block are the rest."""
        header, rest = parse(v2(INET_BLOCK) + b"EHLO x\r\n")
        self.assertEqual(header.version, 2)
        self.assertFalse(header.local)
        self.assertEqual(header.source, ProxyAddress("192.0.2.7", 56324, 4))
        self.assertEqual(header.destination, ProxyAddress("198.51.100.1", 25, 4))
        self.assertEqual(header.tlvs, ())
        self.assertEqual(rest, b"EHLO x\r\n")

    def test_inet6(self) -> None:
        """PROXY over TCP/IPv6 gives compressed IPv6 addresses."""
        header, rest = parse(v2(INET6_BLOCK, family=0x21) + b"\x16\x03\x01")
        self.assertEqual(header.source, ProxyAddress("2001:db8::7", 40000, 6))
        self.assertEqual(header.destination, ProxyAddress("2001:db8::1", 993, 6))
        self.assertEqual(rest, b"\x16\x03\x01")

    def test_signature_constant(self) -> None:
        """The module's signature is the specification's 12 octets."""
        self.assertEqual(V2_SIGNATURE, SIG)

    def test_tlvs_are_kept_and_skipped(self) -> None:
        """TLVs after the addresses (ALPN, authority, an empty NOOP) are kept in order and not in the rest."""
        tlvs = b"\x01\x00\x02h2" + b"\x02\x00\x0bexample.com" + b"\x04\x00\x00"
        header, rest = parse(v2(INET_BLOCK + tlvs) + b"QUIT\r\n")
        self.assertEqual(header.source, ProxyAddress("192.0.2.7", 56324, 4))
        self.assertEqual(header.tlvs, ((1, b"h2"), (2, b"example.com"), (4, b"")))
        self.assertEqual(rest, b"QUIT\r\n")

    def test_local(self) -> None:
        """LOCAL (a health check): no addresses, whatever family and block follow."""
        for family, block in ((0x00, b""), (0x11, INET_BLOCK), (0x21, b"junk")):
            header, rest = parse(v2(block, ver_cmd=0x20, family=family) + b"NOOP\r\n")
            self.assertEqual(header, ProxyHeader(version=2, local=True))
            self.assertFalse(header.known)
            self.assertEqual(rest, b"NOOP\r\n")

    def test_unspec_and_unix_are_unknown(self) -> None:
        """PROXY with AF_UNSPEC or a UNIX stream: the addresses are unknown."""
        header, rest = parse(v2(b"", family=0x00) + b"x")
        self.assertEqual(header, ProxyHeader(version=2))
        self.assertEqual(rest, b"x")
        unix = b"/run/client.sock".ljust(108, b"\x00") + b"/run/txmail.sock".ljust(108, b"\x00")
        header, rest = parse(v2(unix, family=0x31) + b"y")
        self.assertFalse(header.known)
        self.assertFalse(header.local)
        self.assertEqual(rest, b"y")

    def test_one_octet_at_a_time(self) -> None:
        """Fed one octet at a time (with TLVs), the header completes on its last octet."""
        data = v2(INET6_BLOCK + b"\x04\x00\x03abc", family=0x21)
        parser = ProxyParser()
        for i in range(len(data) - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]))
        result = parser.feed(data[-1:] + b"rest")
        assert result is not None
        self.assertEqual(result[0].source, ProxyAddress("2001:db8::7", 40000, 6))
        self.assertEqual(result[0].tlvs, ((4, b"abc"),))
        self.assertEqual(result[1], b"rest")

    def test_longest_header_in_octets_is_not_copied_each_time(self) -> None:
        """
        The longest header (65535 octets after the fixed 16) fed one octet
        at a time is appended to one buffer in place: copying the whole
        buffer at each octet took time quadratic in its length (about 2 GB
        copied).  The buffer is the parser's own, looked at directly because
        a time limit would be flaky on a loaded machine.
        """
        tlv = b"\x04" + struct.pack("!H", 65535 - len(INET_BLOCK) - 3)
        data = v2(INET_BLOCK + tlv + bytes(65535 - len(INET_BLOCK) - 3))
        parser = ProxyParser()
        self.assertIsNone(parser.feed(data[:16]))
        buffer = parser._buffer
        for i in range(16, len(data) - 1):
            self.assertIsNone(parser.feed(data[i : i + 1]))
        self.assertIs(parser._buffer, buffer)
        self.assertEqual(len(buffer), len(data) - 1)
        result = parser.feed(data[-1:] + b"rest")
        assert result is not None
        self.assertEqual(result[0].source, ProxyAddress("192.0.2.7", 56324, 4))
        self.assertEqual(len(result[0].tlvs[0][1]), 65535 - len(INET_BLOCK) - 3)
        self.assertEqual(result[1], b"rest")
        self.assertIs(type(result[1]), bytes)

    def test_pieces(self) -> None:
        """Split anywhere in two, the same header and rest come out."""
        data = v2(INET_BLOCK + b"\x04\x00\x01z") + b"EHLO x\r\n"
        whole = parse(data)
        for cut in range(1, len(data)):
            parser = ProxyParser()
            first = parser.feed(data[:cut])
            if first is not None:
                self.assertEqual((first[0], first[1] + data[cut:]), whole)
            else:
                self.assertEqual(parser.feed(data[cut:]), whole, cut)

    def assertMalformed(self, data: bytes) -> None:
        self.assertRaises(ProxyHeaderError, ProxyParser().feed, data)
        with self.assertRaises(ProxyHeaderError):
            parse_octets(data)

    def test_bad_signature(self) -> None:
        """A signature that differs anywhere is refused as soon as it differs."""
        for i in range(12):
            bad = bytearray(v2(INET_BLOCK))
            bad[i] ^= 0x40
            self.assertMalformed(bytes(bad))
        parser = ProxyParser()
        self.assertIsNone(parser.feed(SIG[:5]))
        self.assertRaises(ProxyHeaderError, parser.feed, b"X")

    def test_unknown_version(self) -> None:
        """Versions other than 2 in the 13th octet are refused, before the length is read."""
        for ver_cmd in (0x01, 0x11, 0x31, 0xF1):
            self.assertMalformed(v2(INET_BLOCK, ver_cmd=ver_cmd))
            self.assertRaises(ProxyHeaderError, ProxyParser().feed, SIG + bytes([ver_cmd]))

    def test_unknown_command(self) -> None:
        """Commands other than LOCAL and PROXY are refused."""
        for ver_cmd in (0x22, 0x2F):
            self.assertMalformed(v2(INET_BLOCK, ver_cmd=ver_cmd))

    def test_unsupported_family_or_transport(self) -> None:
        """Datagram transports, unassigned families and transports are refused."""
        for family in (0x12, 0x22, 0x32, 0x10, 0x20, 0x30, 0x13, 0x41, 0x01, 0xFF):
            self.assertMalformed(v2(INET6_BLOCK + b"\x00" * 200, family=family))

    def test_address_block_too_short(self) -> None:
        """A length shorter than the family's address block is refused."""
        self.assertMalformed(v2(INET_BLOCK[:11]))
        self.assertMalformed(v2(INET6_BLOCK[:35], family=0x21))
        self.assertMalformed(v2(INET_BLOCK, family=0x21))  # an IPv4 block announced as IPv6
        self.assertMalformed(v2(b"\x00" * 215, family=0x31))

    def test_truncated_tlv(self) -> None:
        """A TLV that runs past the announced length is refused."""
        self.assertMalformed(v2(INET_BLOCK + b"\x01"))
        self.assertMalformed(v2(INET_BLOCK + b"\x01\x00"))
        self.assertMalformed(v2(INET_BLOCK + b"\x01\x00\x05abc"))

    def test_waits_for_the_announced_length(self) -> None:
        """A header whose length announces more than has arrived is incomplete, not an error."""
        parser = ProxyParser()
        self.assertIsNone(parser.feed(v2(INET_BLOCK, length=20)))
        result = parser.feed(b"\x04\x00\x05" + b"hello" + b"after")
        assert result is not None
        self.assertEqual(result[0].tlvs, ((4, b"hello"),))
        self.assertEqual(result[1], b"after")
