"""
Reverse DNS, forward-confirmed ("iprev", RFC 8601 section 3): the client's
address must have a PTR name whose own A/AAAA records contain the address.

* The PTR names are looked up; at most :data:`MAX_NAMES` of them are checked
  (RFC 7208 section 4.6.4 sets the same bound for SPF's ``ptr``).
* For each name, the records of the address's family (A for IPv4, AAAA for
  IPv6) are looked up; the first name that lists the address is the
  client's confirmed name: ``pass``.
* RFC 8601 section 2.7.3: ``fail`` when every lookup answered and no name
  matched; ``temperror`` when a lookup failed (SERVFAIL, timeout) and
  nothing matched; ``permerror`` when the address has no PTR at all (its
  reverse name does not exist or holds no PTR).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from txmail.dnsdata import Question, Resolving, reverse_name

__all__ = ["MAX_NAMES", "IprevResult", "check_iprev"]

#: PTR names checked at most.
MAX_NAMES = 10


@dataclass(frozen=True, slots=True)
class IprevResult:
    """
    Attributes:
        result: ``pass``, ``fail``, ``temperror`` or ``permerror``.
        name: the confirmed name (``pass`` only), without the final dot.
        names: the PTR names found.
    """

    result: str
    name: str | None = None
    names: tuple[str, ...] = ()


def check_iprev(address: str) -> Resolving[IprevResult]:
    """The iprev result of the client at *address* (see the module notes)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return IprevResult("permerror")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    ptr = yield Question(reverse_name(str(ip)), "PTR")
    if ptr.failed:
        return IprevResult("temperror")
    if not ptr.ok:
        return IprevResult("permerror")
    names = tuple(dict.fromkeys(str(n).lower() for n in ptr.records))[:MAX_NAMES]
    rdtype = "A" if ip.version == 4 else "AAAA"
    errors = False
    for name in names:
        forward = yield Question(name, rdtype)
        if forward.failed:
            errors = True
            continue
        for record in forward.records:
            try:
                if ipaddress.ip_address(record) == ip:
                    return IprevResult("pass", name, names)
            except ValueError:
                continue
    return IprevResult("temperror" if errors else "fail", None, names)
