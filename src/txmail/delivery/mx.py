"""
Find the hosts to deliver a domain's mail to (RFC 5321 section 5.1).

:class:`MXResolver` turns a recipient domain into an ordered list of
:class:`Destination` (host name, one IP address, MX preference) for the
outbound relay to try in turn.

Theory of operation
===================

* **Domain literals** (RFC 5321 section 4.1.3): ``[192.0.2.1]`` and
  ``[IPv6:2001:db8::1]`` route straight to that address; no DNS is asked.
  A malformed literal, or one with another tag, has no route (permanent).
* **MX lookup** (RFC 5321 section 5.1): the MX RRset of the domain is
  sorted by preference, lowest first; records of equal preference are
  shuffled ("the sender-SMTP MUST randomize them to spread the load"), with
  the resolver's ``rng`` so tests can seed it.
* **Null MX** (RFC 7505 section 3): a domain whose only MX has the root
  ``.`` as its exchange accepts no mail: :class:`NullMX` (permanent, enhanced
  status ``5.1.10``, RFC 7505 section 4.2).  A ``.`` among other MX records
  (which RFC 7505 forbids) is ignored.
* **Implicit MX** (RFC 5321 section 5.1): when the domain exists but has no
  MX records (NODATA), the domain itself is the one host, preference 0.
  Only NODATA leads there: a failed MX lookup is never read as "no MX",
  since mail would then go to a host the domain never meant to receive it.
* **Addresses**: for each host AAAA and A are both looked up; its IPv6
  addresses come first, then its IPv4 ones (both are tried, RFC 5321
  section 5.1 "multihomed hosts").  A host without addresses is skipped.
  An address already listed for a better host is not repeated.
* **Errors**: NXDOMAIN of the domain, or no host with an address when every
  lookup answered, is a permanent :class:`NoRoute`; a SERVFAIL, REFUSED or
  timeout anywhere that leaves nothing to try makes it temporary (RFC 5321
  section 4.5.4.1: the sender retries later).  The exception text names
  the failed lookup (for ``last_error`` and the DSN), and ``.status`` gives
  the RFC 3463 code to report (``5.1.10`` null MX, ``5.1.2`` no such
  domain, ``4.4.3`` lookup failure).

Implementation notes
====================

dnspython's stub resolver blocks, so every query runs through
``run_blocking`` (by default :func:`twisted.internet.threads.deferToThread`;
the service passes its thread pool).  The function that runs in the thread
classifies the outcome itself and returns plain data, so nothing but
tuples crosses threads.  Names are made absolute before querying, so the
resolver's search list never applies.  All host lookups of one domain run
in parallel once the MX answer is in.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dns.exception
import dns.flags
import dns.name
import dns.nameserver
import dns.resolver
from twisted.internet import defer, threads

from txmail.errors import DeliveryError

__all__ = ["Destination", "LookupResult", "MXResolver", "NoRoute", "NullMX", "parse_domain_literal"]


@dataclass(frozen=True, slots=True)
class Destination:
    """
    One address to try.

    Attributes:
        host: the MX exchange name (without the final dot), the domain itself
            for the implicit MX, or the domain literal as given
            (``[192.0.2.1]``) for a literal.
        address: one IP address (v6 or v4) to connect to.
        preference: the MX preference (0 for an implicit MX or a literal).
        mx_secure: the MX RRset (or the NODATA that made the domain its own
            MX) came with the AD bit from a validating resolver (only asked
            for with ``dnssec=True``; RFC 7672 section 2.2.1).
        secure: this host's address RRset came with the AD bit too (RFC
            7672 section 2.2.2: only then are its TLSA records looked up).
    """

    host: str
    address: str
    preference: int
    mx_secure: bool = field(default=False, compare=False)
    secure: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class LookupResult:
    """
    One answer of :meth:`MXResolver.lookup`: ``status`` is ``"ok"``,
    ``"nodata"``, ``"nxdomain"`` or ``"temp"`` (SERVFAIL, timeout: under
    DNSSEC also what a validating resolver makes of a bogus answer);
    ``records`` the rdata as dnspython objects; ``secure`` whether the
    answer carried the AD bit; ``error`` the failure text.
    """

    status: str
    records: tuple[Any, ...] = ()
    secure: bool = False
    error: str = ""


class NullMX(DeliveryError):
    """
    The domain publishes a null MX (``MX 0 .``, RFC 7505): it accepts no
    mail.  Always permanent; :attr:`status` is the enhanced status code RFC
    7505 section 4.2 assigns.
    """

    status = "5.1.10"

    def __init__(self, message: str) -> None:
        super().__init__(message, temporary=False)


class NoRoute(DeliveryError):
    """
    No address to deliver to.  :attr:`temporary` is ``True`` when a lookup
    failed (SERVFAIL, timeout) and a later attempt may find one, ``False``
    for NXDOMAIN or when the DNS answered that there is nothing.
    """

    @property
    def status(self) -> str:
        """
        The RFC 3463 code to report: ``4.4.3`` (directory server failure)
        when temporary, else ``5.1.2`` (bad destination system address).
        """
        return "4.4.3" if self.temporary else "5.1.2"


# Outcomes of one query, as the worker thread reports them.
_OK = "ok"
_NODATA = "nodata"
_NXDOMAIN = "nxdomain"
_TEMP = "temp"


def parse_domain_literal(domain: str) -> str | None:
    """
    The IP address of a domain literal, or ``None`` if *domain* is not one.

    ``[192.0.2.1]`` gives ``192.0.2.1``, ``[IPv6:2001:DB8::1]`` gives
    ``2001:db8::1`` (RFC 5321 section 4.1.3; the tag is matched without
    regard to case).

    Raises:
        ValueError: it is bracketed but not a valid IPv4 or IPv6 literal.
    """
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    try:
        if inner[:5].lower() == "ipv6:":
            return str(ipaddress.IPv6Address(inner[5:]))
        return str(ipaddress.IPv4Address(inner))
    except ValueError:
        raise ValueError(f"invalid address literal {domain!r}") from None


class MXResolver:
    """
    Resolve recipient domains to :class:`Destination` lists.

    Args:
        nameservers: ``[(address, port), ...]`` to ask, or ``None`` for the
            system's (``/etc/resolv.conf``).
        run_blocking: ``run_blocking(fn, *args) -> Deferred`` runs the
            blocking queries off the reactor thread; by default
            :func:`~twisted.internet.threads.deferToThread`.
        timeout: seconds one query may take in all (dnspython's lifetime).
        rng: shuffles MX records of equal preference.
        dnssec: ask for DNSSEC status: queries carry the AD and DO bits
            (RFC 6840 section 5.7, what Postfix sends with
            ``smtp_dns_support_level = dnssec``) and the AD bit of each
            answer is kept (:attr:`Destination.secure`).  The resolver
            itself must validate (unbound on 127.0.0.1): the AD bit from a
            resolver across a network proves nothing.
    """

    def __init__(
        self,
        nameservers: list[tuple[str, int]] | None = None,
        *,
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        timeout: float = 10.0,
        rng: random.Random | None = None,
        dnssec: bool = False,
    ) -> None:
        resolver = dns.resolver.Resolver(configure=nameservers is None)
        self.dnssec = dnssec
        if dnssec:
            resolver.flags = dns.flags.RD | dns.flags.AD
            resolver.use_edns(0, dns.flags.DO, 1232)
        if nameservers is not None:
            # dnspython 2.4+: per-nameserver ports through Nameserver objects.
            resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port) for host, port in nameservers]
        resolver.timeout = timeout
        resolver.lifetime = timeout
        resolver.use_search_by_default = False
        # Answers are kept for their TTL (dnspython's thread-safe cache):
        # a queue of mail for one domain asks once, not three times a message.
        resolver.cache = dns.resolver.Cache()
        self._resolver = resolver
        self._run = run_blocking or threads.deferToThread
        self._rng = rng or random.Random()

    # -- blocking part (runs in a worker thread) --------------------------

    def _query(self, name: dns.name.Name, rdtype: str) -> tuple[str, list[Any], str, bool]:
        """Ask one question; return ``(outcome, records, error text, AD bit)`` with plain values."""
        try:
            answer = self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN as e:
            return _NXDOMAIN, [], "", _ad(_response_of(e))
        except dns.resolver.NoAnswer as e:
            return _NODATA, [], "", _ad(_response_of(e))
        except Exception as e:
            # NoNameservers (SERVFAIL, REFUSED...), LifetimeTimeout, and
            # anything odd: unknown causes count as temporary.
            return _TEMP, [], f"{rdtype} lookup for {name.to_text(omit_final_dot=True)} failed: {e}", False
        secure = _ad(answer.response)
        if rdtype == "MX":
            return _OK, [(rr.preference, rr.exchange) for rr in answer], "", secure
        if rdtype in ("A", "AAAA"):
            return _OK, [rr.address for rr in answer], "", secure
        return _OK, list(answer), "", secure

    def lookup(self, name: str, rdtype: str) -> defer.Deferred[LookupResult]:
        """
        Ask for *name*'s *rdtype* records (``"TLSA"``, ``"TXT"``...), in the
        thread pool; never fails (a malformed name is NXDOMAIN).
        """
        try:
            qname = dns.name.from_text(name.rstrip("."))
        except (dns.exception.DNSException, UnicodeError, ValueError):
            return defer.succeed(LookupResult(_NXDOMAIN))

        def done(r: tuple[str, list[Any], str, bool]) -> LookupResult:
            return LookupResult(r[0], tuple(r[1]), r[3], r[2])

        return self._run(self._query, qname, rdtype).addCallback(done)

    # -- reactor part -------------------------------------------------------

    def resolve(self, domain: str) -> defer.Deferred[list[Destination]]:
        """
        The destinations for mail to *domain*, best first.

        Fails with :class:`NullMX` or :class:`NoRoute`.
        """
        return defer.Deferred.fromCoroutine(self._resolve(domain))

    async def _resolve(self, domain: str) -> list[Destination]:
        try:
            literal = parse_domain_literal(domain)
        except ValueError as e:
            raise NoRoute(str(e), temporary=False) from None
        if literal is not None:
            return [Destination(domain, literal, 0)]
        try:
            if not domain.rstrip("."):
                raise ValueError("empty")
            name = dns.name.from_text(domain.rstrip("."))  # absolute
        except (dns.exception.DNSException, UnicodeError, ValueError) as e:
            raise NoRoute(f"invalid domain {domain!r}: {e}", temporary=False) from None

        outcome, records, error, mx_secure = await self._run(self._query, name, "MX")
        if outcome == _NXDOMAIN:
            raise NoRoute(f"domain {domain} does not exist", temporary=False)
        if outcome == _TEMP:
            raise NoRoute(error, temporary=True)

        hosts: list[tuple[int, dns.name.Name]]
        if outcome == _NODATA:
            hosts = [(0, name)]  # implicit MX, RFC 5321 section 5.1
        else:
            real = [(pref, exch) for pref, exch in records if exch != dns.name.root]
            if not real:
                raise NullMX(f"{domain} accepts no mail (null MX, RFC 7505)")
            hosts = self._order(real)

        lookups = []
        for _, host in hosts:
            lookups.append(self._run(self._query, host, "AAAA"))
            lookups.append(self._run(self._query, host, "A"))
        try:
            results = await defer.gatherResults(lookups, consumeErrors=True)
        except defer.FirstError as e:  # run_blocking itself failed
            e.subFailure.raiseException()

        destinations: list[Destination] = []
        seen: set[str] = set()
        errors = []
        for i, (pref, host) in enumerate(hosts):
            host_text = host.to_text(omit_final_dot=True)
            for outcome, addresses, error, secure in results[2 * i : 2 * i + 2]:  # AAAA first, then A
                if outcome == _TEMP:
                    errors.append(error)
                for address in addresses:
                    if address not in seen:
                        seen.add(address)
                        destinations.append(Destination(host_text, address, pref, mx_secure, secure))
        if not destinations:
            if errors:
                raise NoRoute(f"no address for any mail exchanger of {domain}: {errors[0]}", temporary=True)
            raise NoRoute(f"no address for any mail exchanger of {domain}", temporary=False)
        return destinations

    def _order(self, records: list[tuple[int, dns.name.Name]]) -> list[tuple[int, dns.name.Name]]:
        """Sort by preference, shuffling equal preferences (RFC 5321 section 5.1)."""
        by_pref: dict[int, list[dns.name.Name]] = {}
        for pref, exchange in records:
            group = by_pref.setdefault(pref, [])
            if exchange not in group:
                group.append(exchange)
        ordered: list[Any] = []
        for pref in sorted(by_pref):
            group = sorted(by_pref[pref])  # a stable start, so a seeded rng is reproducible
            self._rng.shuffle(group)
            ordered.extend((pref, exchange) for exchange in group)
        return ordered


def _ad(response: Any) -> bool:
    """Whether a dnspython response message carries the AD bit (RFC 4035 section 3.2.3)."""
    return response is not None and bool(response.flags & dns.flags.AD)


def _response_of(error: Exception) -> Any:
    """The response message behind dnspython's NXDOMAIN or NoAnswer, if it kept one."""
    kwargs = getattr(error, "kwargs", None) or {}
    if "response" in kwargs:
        return kwargs["response"]
    responses = kwargs.get("responses") or {}
    return next(iter(responses.values()), None)
