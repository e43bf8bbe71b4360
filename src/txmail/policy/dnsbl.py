"""
DNS allowlists and blocklists (RFC 5782): the client's address at
connect, the sender's domain at MAIL.

Theory of operation
-------------------
:class:`DNSBL` is asked on port 25 only (``roles = {"mta"}``): submission
users connect from dynamic addresses that the lists name for what they are.
Clients in the trusted networks (``session.trusted``) are not looked up.

* **At connect** the client's address is looked up in every allowlist and
  blocklist zone at once, as an ``A`` query for its reversed octets (IPv4)
  or nibbles (IPv6) under the zone (RFC 5782 section 2.1 and section
  2.4, :func:`query_name`).

  - An allowlist that lists the client (Postfix's
    ``permit_dnswl_client``) wins over every blocklist: the connection goes
    on, and ``session.notes[ALLOWLISTED]`` names the zone, so the sender
    domain is not looked up either (nor greylisted, see
    :mod:`txmail.policy.greylist`).
  - Otherwise the first blocklist, in the configured order, that lists it
    refuses the connection with ``554 5.7.1 Service unavailable; client
    [ADDR] listed at ZONE`` instead of the greeting (Postfix's
    ``reject_rbl_client`` wording; RFC 5321 section 3.1: the server then
    answers every command but QUIT with 503).  The zone's ``TXT`` record
    for the client (RFC 5782 section 2.1, the reason for the listing) is
    fetched and logged, not sent.

* **At MAIL** the sender's domain (never for ``<>`` or an address
  literal) is looked up as ``DOMAIN.ZONE`` in the domain blocklists
  (RFC 5782 section 2.3, Postfix's ``reject_rhsbl_sender``): a listing
  refuses MAIL with ``554 5.7.1 Sender address rejected: domain DOMAIN
  listed at ZONE``.

What counts as a listing: an ``A`` answer in 127.0.0.0/8 (RFC 5782 section
2.1: "IPv4 DNSxL entries MUST have an A record", and the values are in
127.0.0.0/8) that matches the list's pattern (``zone=127.0.0.[2..11]``,
:meth:`txmail.policy.config.DNSList.matches`).  A list configured without
a pattern counts any such answer except 127.255.255.0/24, which the large
lists (Spamhaus) use for errors such as 127.255.255.254, "query through a
public resolver refused"; such answers are logged as warnings, since the
list is not working for us.  NXDOMAIN is "not listed"; a DNS error
(SERVFAIL, timeout) is logged and counts as not listed too (fail open, as
Postfix does): a list that is down must not stop mail.

Caching is the resolver's (:class:`txmail.resolver.Resolver` keeps answers
for their TTL): a second connection from the same address within the TTL
asks nothing on the network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmail.dnsdata import Answer, DNSStatus
from txmail.policy.config import DNSList
from txmail.policy.hooks import Policy, SessionInfo, Verdict

__all__ = ["ALLOWLISTED", "DNSBL", "listed", "query_name", "reversed_address"]

#: The ``session.notes`` key naming the allowlist zone that listed the client.
ALLOWLISTED = "dnsbl.allowlisted"

_LOOPBACK_NET = ipaddress.IPv4Network("127.0.0.0/8")
_ERROR_CODES = ipaddress.IPv4Network("127.255.255.0/24")


def reversed_address(address: str) -> str:
    """
    The labels of a DNS list query for *address*: its four octets reversed
    for IPv4 (``192.0.2.99`` -> ``99.2.0.192``), its 32 nibbles reversed for
    IPv6 (RFC 5782 section 2.4).  An IPv4-mapped IPv6 address is looked up
    as IPv4.

    Raises:
        ValueError: *address* is not an IP address.
    """
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return ".".join(reversed(str(ip).split(".")))
    return ".".join(reversed(ip.exploded.replace(":", "")))


def query_name(address: str, zone: str) -> str:
    """The name to look up *address* in the list *zone* (``99.2.0.192.zen.example``)."""
    return f"{reversed_address(address)}.{zone}"


def listed(dns_list: DNSList, answer: Answer) -> tuple[str, ...]:
    """
    The answers of *answer* (an ``A`` lookup in *dns_list*) that are a
    listing (see the module notes); empty when it is not one.
    """
    if not answer.ok:
        return ()
    hits = []
    for record in answer.records:
        try:
            ip = ipaddress.IPv4Address(record)
        except ValueError:
            continue
        if ip not in _LOOPBACK_NET:
            continue  # RFC 5782 section 2.1: list values are in 127.0.0.0/8
        if dns_list.patterns is None and ip in _ERROR_CODES:
            continue
        if dns_list.matches(str(ip)):
            hits.append(str(ip))
    return tuple(hits)


class DNSBL(Policy):
    """
    DNS list checks (see the module notes).

    Args:
        resolver: the server's DNS resolver (``lookup(name, rdtype) ->
            Deferred[Answer]``, :class:`txmail.resolver.Resolver`).
        blocklists: client address blocklists, in order.
        allowlists: client address allowlists.
        domain_blocklists: sender domain blocklists, in order.
    """

    log = Logger()
    roles = frozenset({"mta"})

    def __init__(
        self,
        *,
        resolver: Any,
        blocklists: Sequence[DNSList],
        allowlists: Sequence[DNSList] = (),
        domain_blocklists: Sequence[DNSList] = (),
    ) -> None:
        self.resolver = resolver
        self.blocklists = tuple(blocklists)
        self.allowlists = tuple(allowlists)
        self.domain_blocklists = tuple(domain_blocklists)

    def _lookup(self, name: str, rdtype: str) -> defer.Deferred[Answer]:
        """The resolver's answer; a failure (a resolver that raises) becomes an ``ERROR`` answer."""

        def failed(f: Failure) -> Answer:
            return Answer(DNSStatus.ERROR, error=f"{rdtype} lookup for {name} failed: {f.getErrorMessage()}")

        return defer.maybeDeferred(self.resolver.lookup, name, rdtype).addErrback(failed)

    async def _lookups(self, names: Sequence[str]) -> list[Answer]:
        results = await defer.DeferredList([self._lookup(name, "A") for name in names])
        return [answer for _, answer in results]

    def _judge(self, session: SessionInfo, dns_list: DNSList, name: str, answer: Answer) -> tuple[str, ...]:
        """The listing in *answer*, logging what is not one but should be looked at."""
        if answer.failed:
            self.log.warn(
                "DNS list {zone} lookup of {name} failed: {error}",
                zone=dns_list.zone,
                name=name,
                error=answer.error,
                peer=session.client_address,
                session_id=session.session_id,
            )
            return ()
        hits = listed(dns_list, answer)
        if answer.ok and not hits:
            errors = [r for r in answer.records if r.startswith("127.255.255.")]
            emit = self.log.warn if errors else self.log.info
            emit(
                "DNS list {zone} answered {answers} for {name}: not a listing",
                zone=dns_list.zone,
                name=name,
                answers=", ".join(answer.records),
                peer=session.client_address,
                session_id=session.session_id,
            )
        return hits

    # -- the client, at connect --

    def on_connect(self, session: SessionInfo) -> Any:
        if session.trusted or not (self.blocklists or self.allowlists):
            return None
        try:
            reversed_address(session.client_address)
        except ValueError:
            return None  # not an IP client (a UNIX socket, say): nothing to look up
        return defer.Deferred.fromCoroutine(self._check_client(session))

    async def _check_client(self, session: SessionInfo) -> Verdict | None:
        address = session.client_address
        lists = self.allowlists + self.blocklists
        names = [query_name(address, dns_list.zone) for dns_list in lists]
        answers = await self._lookups(names)
        judged = [
            (dns_list, name, self._judge(session, dns_list, name, answer))
            for dns_list, name, answer in zip(lists, names, answers, strict=True)
        ]
        allowed = judged[: len(self.allowlists)]
        blocked = judged[len(self.allowlists) :]
        for dns_list, _, hits in allowed:
            if hits:
                session.notes[ALLOWLISTED] = dns_list.zone
                self.log.info(
                    "{peer} allowlisted at {zone} ({answers})",
                    peer=address,
                    zone=dns_list.zone,
                    answers=", ".join(hits),
                    session_id=session.session_id,
                )
                return Verdict.accept()
        for dns_list, name, hits in blocked:
            if hits:
                reason = await self._reason(name)
                self.log.info(
                    "{peer} listed at {zone} ({answers}): {reason}",
                    peer=address,
                    zone=dns_list.zone,
                    answers=", ".join(hits),
                    reason=reason,
                    session_id=session.session_id,
                )
                return Verdict.reject(
                    f"554 5.7.1 Service unavailable; client [{address}] listed at {dns_list.zone}"
                )
        return None

    async def _reason(self, name: str) -> str:
        """The TXT record(s) of a listing, for the log (``""`` when there are none)."""
        answer = await self._lookup(name, "TXT")
        return " ".join(r.decode("utf-8", "replace") for r in answer.records)

    # -- the sender's domain, at MAIL --

    def on_mail(self, session: SessionInfo) -> Any:
        if session.trusted or not self.domain_blocklists or ALLOWLISTED in session.notes:
            return None
        assert session.transaction is not None
        domain = session.transaction.sender_domain
        if not domain or domain.startswith("["):
            return None  # <>, or an address literal: no domain to look up
        return defer.Deferred.fromCoroutine(self._check_domain(session, domain))

    async def _check_domain(self, session: SessionInfo, domain: str) -> Verdict | None:
        names = [f"{domain}.{dns_list.zone}" for dns_list in self.domain_blocklists]
        answers = await self._lookups(names)
        for dns_list, name, answer in zip(self.domain_blocklists, names, answers, strict=True):
            hits = self._judge(session, dns_list, name, answer)
            if hits:
                reason = await self._reason(name)
                self.log.info(
                    "sender domain {domain} of {peer} listed at {zone} ({answers}): {reason}",
                    domain=domain,
                    peer=session.client_address,
                    zone=dns_list.zone,
                    answers=", ".join(hits),
                    reason=reason,
                    session_id=session.session_id,
                )
                return Verdict.reject(
                    f"554 5.7.1 Sender address rejected: domain {domain} listed at {dns_list.zone}"
                )
        return None
