"""
A small authoritative DNS server for the benchmarks, run as a process of its own.

``benchmarks/policy_ingest.py`` starts it with the txmail venv's Python (it needs Twisted,
nothing from txmail) so that answering DNS does not count in the CPU time of the server under
test or of the load generator.  It answers from a JSON zone file with :mod:`twisted.names`,
on UDP **and** TCP of one loopback port (a 2048-bit RSA DKIM key record does not fit in a
512-octet UDP answer without EDNS; the client then retries over TCP, RFC 7766)::

    python _dns_server.py ZONE.json [--port 0] [--stats STATS.json]

``ZONE.json`` is ``{"ttl": 3600, "records": [[NAME, TYPE, VALUE], ...]}``.  Values by type:
``A``/``AAAA`` an address string, ``MX`` ``[preference, exchange]``, ``PTR``/``CNAME`` a
name, ``TXT`` a string (split into 255-octet character-strings).  Several entries with the
same name and type are several records.  A name present with other types only answers NODATA,
an unknown name NXDOMAIN (no SOA: the resolver's default negative TTL applies).

It prints ``LISTENING <port>`` on stdout once both sockets are open.  On SIGTERM or SIGINT it
writes ``{"queries": N, "by_question": {"NAME TYPE": n, ...}}`` to ``--stats`` (if given) and
exits 0.  Never imported by txmail or by the tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.error import CannotListenError
from twisted.names import dns, error, server

__all__ = ["ZoneAuthority", "main"]


def _payload(rtype: str, value: Any, ttl: int) -> Any:
    if rtype == "A":
        return dns.Record_A(value, ttl=ttl)
    if rtype == "AAAA":
        return dns.Record_AAAA(value, ttl=ttl)
    if rtype == "MX":
        preference, exchange = value
        return dns.Record_MX(int(preference), exchange.rstrip(".").encode(), ttl=ttl)
    if rtype == "PTR":
        return dns.Record_PTR(value.rstrip(".").encode(), ttl=ttl)
    if rtype == "CNAME":
        return dns.Record_CNAME(value.rstrip(".").encode(), ttl=ttl)
    if rtype == "TXT":
        data = value.encode() if isinstance(value, str) else bytes(value)
        return dns.Record_TXT(*[data[i : i + 255] for i in range(0, max(len(data), 1), 255)], ttl=ttl)
    raise ValueError(f"unsupported record type {rtype}")


class ZoneAuthority:
    """The ``query`` half of ``IResolver``: answers from a list of records, counting questions."""

    def __init__(self, records: list[list[Any]], ttl: int) -> None:
        self.records: dict[tuple[str, str], list[dns.RRHeader]] = {}
        for name, rtype, value in records:
            key = (name.lower().rstrip("."), rtype.upper())
            payload = _payload(key[1], value, ttl)
            self.records.setdefault(key, []).append(
                dns.RRHeader(name=key[0], type=payload.TYPE, payload=payload, ttl=ttl, auth=True)
            )
        self.names = {name for name, _ in self.records}
        self.asked: collections.Counter[str] = collections.Counter()

    def query(self, query: dns.Query, timeout: Any = None) -> defer.Deferred[Any]:
        name = query.name.name.decode("ascii", "replace").lower().rstrip(".")
        rtype = dns.QUERY_TYPES.get(query.type, str(query.type))
        self.asked[f"{name} {rtype}"] += 1
        answers = self.records.get((name, rtype))
        if answers is None and name not in self.names:
            return defer.fail(error.AuthoritativeDomainError(name))  # NXDOMAIN
        return defer.succeed((list(answers or ()), [], []))  # answers, or NODATA

    def stats(self) -> dict[str, Any]:
        return {"queries": sum(self.asked.values()), "by_question": dict(self.asked)}


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("zone", help="JSON zone file")
    p.add_argument("--port", type=int, default=0, help="UDP+TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--stats", default=None, help="write query counts here on exit")
    args = p.parse_args(argv)
    with open(args.zone) as fh:
        zone = json.load(fh)
    authority = ZoneAuthority(zone["records"], int(zone.get("ttl", 3600)))
    factory = server.DNSServerFactory(authorities=[authority])
    factory.noisy = False
    # The UDP port first (port 0 picks one), then TCP on the same number; a port whose TCP
    # half is taken is given back and another one tried.
    for _ in range(20):
        protocol = dns.DNSDatagramProtocol(controller=factory)
        protocol.noisy = False
        udp = reactor.listenUDP(args.port, protocol, interface="127.0.0.1")  # type: ignore[attr-defined]
        port = udp.getHost().port
        try:
            reactor.listenTCP(port, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
            break
        except CannotListenError:
            udp.stopListening()
            if args.port:
                raise
    else:
        raise SystemExit("no port free for both UDP and TCP")

    def write_stats() -> None:
        if args.stats:
            with open(args.stats, "w") as fh:
                json.dump(authority.stats(), fh, indent=1)

    reactor.addSystemEventTrigger("before", "shutdown", write_stats)  # type: ignore[attr-defined]
    print(f"LISTENING {port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]  # its signal handlers stop it on SIGTERM/SIGINT
    return 0


if __name__ == "__main__":
    sys.exit(main())
