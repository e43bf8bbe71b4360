"""
A tiny authoritative DNS server on 127.0.0.1 (UDP, port 0) for tests.

It answers from a dict with :mod:`twisted.names`, in the reactor of the
running test, so the code under test must query from another thread (as
:class:`txmail.delivery.mx.MXResolver` does with ``deferToThread``)::

    host, port = start_dns_server(self, {
        ("example.test", "MX"): [(10, "mx1.example.test")],
        ("mx1.example.test", "A"): ["127.0.0.1"],
        ("mx1.example.test", "AAAA"): ["::1"],
        ("broken.test", "MX"): SERVFAIL,
    })

Values by type: ``MX`` ``(preference, exchange)`` (exchange ``"."`` or ``""``
for a null MX), ``A``/``AAAA`` address strings, ``CNAME`` and ``PTR`` target
names, ``TXT`` one ``str``/``bytes`` per record (split into 255-octet
character-strings) or a list of character-strings, ``TLSA``
``(usage, selector, matching type, hex data)`` (RFC 6698 section 2.1).  A
name that appears in some key but not with the asked type answers NODATA
(NOERROR, empty answer); a name that appears in no key answers NXDOMAIN.
The value :data:`SERVFAIL` answers SERVFAIL.

DNSSEC: the server signs nothing, but it plays a validating resolver's
part for the names in *secure* (``start_dns_server(..., secure={...})``,
or ``secure=True`` for every name): their answers carry the AD bit
(authenticated data, RFC 4035 section 3.2.3), which is all a stub resolver
that trusts its resolver (Postfix's ``smtp_dns_support_level = dnssec``,
our DANE) looks at.  A bogus answer is what a validating resolver turns
into SERVFAIL: use :data:`SERVFAIL`.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, reactor
from twisted.names import dns, error, server
from twisted.trial.unittest import TestCase

__all__ = ["SERVFAIL", "start_dns_server"]

#: A record value that makes the server answer SERVFAIL.
SERVFAIL = "SERVFAIL"
#: The TLSA RR type (RFC 6698 section 7.1), which twisted.names does not name.
_TLSA = 52


class _ServerFailure(Exception):
    """Raised by the fake authority to produce a SERVFAIL answer."""


def _payload(rtype: str, value: Any) -> Any:
    if rtype == "MX":
        preference, exchange = value
        return dns.Record_MX(preference, exchange.rstrip(".").encode(), ttl=60)
    if rtype == "A":
        return dns.Record_A(value, ttl=60)
    if rtype == "AAAA":
        return dns.Record_AAAA(value, ttl=60)
    if rtype == "CNAME":
        return dns.Record_CNAME(value.rstrip(".").encode(), ttl=60)
    if rtype == "PTR":
        return dns.Record_PTR(value.rstrip(".").encode(), ttl=60)
    if rtype == "TLSA":
        # RFC 6698 section 2.1: usage, selector, matching type, association data.
        usage, selector, mtype, data = value
        return dns.UnknownRecord(bytes([usage, selector, mtype]) + bytes.fromhex(data), ttl=60)
    if rtype == "TXT":
        # One record: a str/bytes (split into 255-octet character-strings) or a list of them.
        parts = value if isinstance(value, list | tuple) else [value]
        data = [p.encode() if isinstance(p, str) else p for p in parts]
        chunks = [d[i : i + 255] for d in data for i in range(0, max(len(d), 1), 255)]
        return dns.Record_TXT(*chunks, ttl=60)
    raise ValueError(f"unsupported record type {rtype}")


class _DictAuthority:
    """The ``query`` half of IResolver, answering from a dict."""

    def __init__(self, records: dict[tuple[str, str], Any]) -> None:
        self.records = {(name.lower().rstrip("."), rtype.upper()): v for (name, rtype), v in records.items()}
        self.names = {name for name, _ in self.records}
        self.queries: list[tuple[str, str]] = []

    @staticmethod
    def _rr(name: str, rtype: str, value: Any) -> dns.RRHeader:
        payload = _payload(rtype, value)
        rrtype = _TLSA if rtype == "TLSA" else payload.TYPE
        return dns.RRHeader(name=name, type=rrtype, payload=payload, ttl=60, auth=True)

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        name = query.name.name.decode("ascii").lower().rstrip(".")
        rtype = "TLSA" if query.type == _TLSA else dns.QUERY_TYPES.get(query.type, str(query.type))
        self.queries.append((name, rtype))
        answers = []
        for _ in range(8):  # follow CNAMEs, as a recursive server would
            value = self.records.get((name, rtype))
            if value == SERVFAIL:
                return defer.fail(_ServerFailure(name))
            if value is not None:
                answers.extend(self._rr(name, rtype, v) for v in value)
                break
            cname = self.records.get((name, "CNAME"))
            if cname is None or rtype == "CNAME":
                if answers or name in self.names:
                    break  # NODATA (possibly after a CNAME)
                return defer.fail(error.AuthoritativeDomainError(name))  # NXDOMAIN
            answers.extend(self._rr(name, "CNAME", v) for v in cname)
            name = cname[0].lower().rstrip(".")
        return defer.succeed((answers, [], []))


class _Factory(server.DNSServerFactory):
    secure: Any = frozenset()

    def sendReply(self, protocol: Any, message: Any, address: Any) -> None:
        if message.queries and message.rCode == dns.OK:
            name = message.queries[0].name.name.decode("ascii").lower().rstrip(".")
            message.authenticData = self.secure is True or name in self.secure
        super().sendReply(protocol, message, address)

    def gotResolverError(self, failure: Any, protocol: Any, message: Any, address: Any) -> None:
        if failure.check(_ServerFailure):
            # The base class would log the failure, which trial counts as an error.
            response = self._responseFromMessage(message=message, rCode=dns.ESERVER)
            self.sendReply(protocol, response, address)
            return
        super().gotResolverError(failure, protocol, message, address)


def start_dns_server(
    test_case: TestCase, records: dict[tuple[str, str], Any], *, secure: Any = frozenset()
) -> tuple[str, int]:
    """
    Listen on 127.0.0.1, a free UDP port, answering from *records*; stop when
    the test ends.  Returns ``(host, port)``.  The authority object (with its
    ``queries`` log) is ``test_case.dns_authority``.  Answers for the names
    in *secure* (``True``: all) carry the AD bit.
    """
    authority = _DictAuthority(records)
    factory = _Factory(authorities=[authority])
    factory.secure = secure if secure is True else {n.lower().rstrip(".") for n in secure}
    factory.noisy = False
    protocol = dns.DNSDatagramProtocol(controller=factory)
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
    test_case.addCleanup(port.stopListening)
    test_case.dns_authority = authority  # type: ignore[attr-defined]
    return "127.0.0.1", port.getHost().port
