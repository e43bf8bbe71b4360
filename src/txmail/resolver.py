"""
The DNS resolver of the policy checks: asks the configured name servers
without blocking the reactor, and keeps answers for their TTL.

Theory of operation
-------------------
:class:`Resolver` answers a :class:`txmail.dnsdata.Question` with a
Deferred :class:`txmail.dnsdata.Answer` that never fails: a server failure
or a timeout is an ``ERROR`` answer, which the checks report as a
temporary error.  The same name servers as the outbound MX lookups are
asked (the ``resolvers`` setting, ``--resolver``; else the system's
``/etc/resolv.conf``, read once with dnspython), so there is one DNS
configuration for the whole server.

The queries go through :mod:`twisted.names` (UDP, TCP when an answer is
truncated), in the reactor: a check that makes ten lookups (SPF) costs no
thread.  Answers are cached by ``(name, type)``:

* positive answers for the smallest TTL of their records, negative ones
  (NXDOMAIN, NODATA) for the zone's negative TTL (RFC 2308 section 5: the
  SOA's MINIMUM, at most its TTL) or :data:`DEFAULT_NEGATIVE_TTL`; both
  at least ``min_ttl`` and at most ``max_ttl`` seconds;
* ``ERROR`` answers for ``error_ttl`` seconds (a flood of mail from a
  domain with a broken server asks it once, not once a message);
* at most ``max_entries`` answers (the oldest are dropped first);
* a question already on the wire is not asked again: later callers wait
  for the same answer.

:func:`drive` runs a sans-IO check (a generator of questions,
:data:`txmail.dnsdata.Resolving`) on a resolver.  :class:`StaticResolver`
answers from a dictionary at once, for tests and embedders.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from twisted.names import client, dns, error
from twisted.python.failure import Failure

from txmail.dnsdata import Answer, DictAnswers, DNSStatus, Question, Resolving

__all__ = ["DEFAULT_NEGATIVE_TTL", "Resolver", "StaticResolver", "drive", "system_nameservers"]

T = TypeVar("T")

#: Seconds a negative answer is kept when the server gave no SOA.
DEFAULT_NEGATIVE_TTL = 300

_TYPES = {
    "A": dns.A,
    "AAAA": dns.AAAA,
    "PTR": dns.PTR,
    "CNAME": dns.CNAME,
    "NS": dns.NS,
    "MX": dns.MX,
    "TXT": dns.TXT,
}


def system_nameservers() -> list[tuple[str, int]]:
    """The name servers of ``/etc/resolv.conf`` (dnspython reads it), as ``(host, port)``."""
    import dns.resolver as dnspython_resolver

    try:
        resolver = dnspython_resolver.Resolver(configure=True)
    except Exception:
        return [("127.0.0.1", 53)]
    servers = []
    for ns in resolver.nameservers:
        host = getattr(ns, "address", ns)
        port = getattr(ns, "port", 53)
        servers.append((str(host), int(port)))
    return servers or [("127.0.0.1", 53)]


def _payload_value(rdtype: str, payload: Any) -> Any:
    if rdtype in ("A", "AAAA"):
        return payload.dottedQuad() if rdtype == "A" else _aaaa_text(payload)
    if rdtype == "MX":
        return (payload.preference, payload.name.name.decode("ascii", "replace").rstrip("."))
    if rdtype == "TXT":
        return b"".join(payload.data)
    return payload.name.name.decode("ascii", "replace").rstrip(".")


def _aaaa_text(payload: Any) -> str:
    import ipaddress

    return str(ipaddress.IPv6Address(payload.address))


def _negative_ttl(authority: Sequence[Any]) -> int:
    for rr in authority:
        if rr.type == dns.SOA:
            return int(min(rr.ttl, rr.payload.minimum))
    return DEFAULT_NEGATIVE_TTL


class Resolver:
    """
    A caching, non-blocking DNS resolver (see the module notes).

    Args:
        nameservers: ``[(host, port), ...]``; ``None`` for the system's.
        reactor: the reactor (network and time); the global one by default.
        clock: what tells the time for the cache; *reactor* by default.
        timeout: seconds to wait for each try, in order (the number of
            entries is the number of tries), as :mod:`twisted.names` takes it.
        min_ttl, max_ttl: bounds on how long an answer is kept.
        error_ttl: seconds an ``ERROR`` answer is kept.
        max_entries: answers kept at most.

    Attributes:
        queries: questions sent to the network so far (cache misses).
    """

    log = Logger()

    def __init__(
        self,
        nameservers: Sequence[tuple[str, int]] | None = None,
        *,
        reactor: Any = None,
        clock: Any = None,
        timeout: Sequence[int] = (1, 3, 5),
        min_ttl: int = 5,
        max_ttl: int = 86400,
        error_ttl: int = 5,
        max_entries: int = 100_000,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        servers = list(nameservers) if nameservers else system_nameservers()
        self.nameservers = servers
        self._clock = clock if clock is not None else reactor
        self._client = client.Resolver(servers=servers, timeout=tuple(timeout), reactor=reactor)
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self.error_ttl = error_ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, str], tuple[float, Answer]] = OrderedDict()
        self._in_flight: dict[tuple[str, str], list[defer.Deferred[Answer]]] = {}
        self.queries = 0

    def query(self, question: Question) -> defer.Deferred[Answer]:
        """The answer to *question*: from the cache, else from the name servers."""
        key = question.key
        now = self._clock.seconds()
        cached = self._cache.get(key)
        if cached is not None:
            expires, answer = cached
            if expires > now:
                return defer.succeed(answer)
            del self._cache[key]
        d: defer.Deferred[Answer] = defer.Deferred()
        waiting = self._in_flight.get(key)
        if waiting is not None:
            waiting.append(d)
            return d
        self._in_flight[key] = [d]
        self.queries += 1
        self._ask(key).addBoth(self._answered, key)
        return d

    def lookup(self, name: str, rdtype: str) -> defer.Deferred[Answer]:
        """``query(Question(name, rdtype))``."""
        return self.query(Question(name, rdtype))

    def cached(self, question: Question) -> Answer | None:
        """The answer to *question* if the cache holds a fresh one, else ``None`` (nothing is asked)."""
        entry = self._cache.get(question.key)
        if entry is not None and entry[0] > self._clock.seconds():
            return entry[1]
        return None

    def _ask(self, key: tuple[str, str]) -> defer.Deferred[Answer]:
        name, rdtype = key
        try:
            encoded = name.encode("idna") if not name.isascii() else name.encode("ascii")
        except UnicodeError:
            return defer.succeed(Answer(DNSStatus.NXDOMAIN, ttl=self.min_ttl))
        if (
            not name
            or len(encoded) > 253
            or any(not 0 < len(label) <= 63 for label in encoded.split(b"."))
            or any(c <= 0x20 or c == 0x7F for c in encoded)
        ):
            # Not a valid DNS name: RFC 7208 section 4.6.4 / 5 treat a name
            # that cannot exist like NXDOMAIN.
            return defer.succeed(Answer(DNSStatus.NXDOMAIN, ttl=self.min_ttl))
        d = self._client.query(dns.Query(encoded, _TYPES[rdtype], dns.IN))

        def answered(result: tuple[list[Any], list[Any], list[Any]]) -> Answer:
            answers, authority, _ = result
            wanted = _TYPES[rdtype]
            records = [rr for rr in answers if rr.type == wanted]
            if not records:
                return Answer(DNSStatus.NODATA, ttl=_negative_ttl(authority))
            ttl = min(int(rr.ttl) for rr in records)
            return Answer(DNSStatus.OK, tuple(_payload_value(rdtype, rr.payload) for rr in records), ttl)

        def failed(f: Failure) -> Answer:
            if f.check(error.DNSNameError):
                message = getattr(f.value, "args", [None])[0]
                authority = getattr(message, "authority", []) if message is not None else []
                return Answer(DNSStatus.NXDOMAIN, ttl=_negative_ttl(authority))
            return Answer(DNSStatus.ERROR, error=f"{rdtype} lookup for {name} failed: {f.getErrorMessage()}")

        answer: defer.Deferred[Answer] = d.addCallbacks(answered, failed)
        return answer

    def _answered(self, result: Answer | Failure, key: tuple[str, str]) -> None:
        if isinstance(result, Failure):  # a bug above; never let a caller hang
            self.log.failure(
                "DNS lookup of {name} {rdtype} failed", failure=result, name=key[0], rdtype=key[1]
            )
            result = Answer(DNSStatus.ERROR, error="internal error")
        if result.status is DNSStatus.ERROR:
            ttl = self.error_ttl
        else:
            ttl = max(self.min_ttl, min(self.max_ttl, result.ttl))
        if ttl > 0:
            self._cache[key] = (self._clock.seconds() + ttl, result)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        for d in self._in_flight.pop(key, []):
            d.callback(result)

    def clear(self) -> None:
        """Forget every cached answer."""
        self._cache.clear()


class StaticResolver:
    """
    A resolver that answers at once from a dictionary (see
    :class:`txmail.dnsdata.DictAnswers` for the form), for tests and for
    embedders with their own data.  ``questions`` records what was asked.
    """

    def __init__(self, records: Mapping[tuple[str, str], Any] | None = None) -> None:
        self.answers = DictAnswers(records)

    @property
    def questions(self) -> list[Question]:
        return self.answers.questions

    def add(self, name: str, rdtype: str, value: Any) -> None:
        """Publish *value* for ``(name, rdtype)``."""
        self.answers.add(name, rdtype, value)

    def query(self, question: Question) -> defer.Deferred[Answer]:
        return defer.succeed(self.answers.answer(question))

    def cached(self, question: Question) -> Answer:
        """Every answer is at hand."""
        return self.answers.answer(question)

    def lookup(self, name: str, rdtype: str) -> defer.Deferred[Answer]:
        return self.query(Question(name, rdtype))


def drive(check: Resolving[T], resolver: Any) -> defer.Deferred[T]:
    """
    Run a sans-IO check (a generator of :class:`~txmail.dnsdata.Question`)
    to its end, answering each question with *resolver* (anything with
    ``query(question) -> Deferred[Answer]``).  Fires with the check's result;
    fails if the check raises.

    While the resolver's cache answers (its ``cached(question)``, when it
    has one), the check runs straight through: a check whose records are
    all cached (most SPF and DMARC checks of a busy server) costs no
    Deferred per question.
    """
    cached = getattr(resolver, "cached", None)
    try:
        question = next(check)
        while cached is not None:
            answer = cached(question)
            if answer is None:
                break
            question = check.send(answer)
    except StopIteration as stop:
        return defer.succeed(stop.value)
    except Exception:
        return defer.fail()

    async def run(question: Question) -> T:
        try:
            while True:
                answer = await resolver.query(question)
                question = check.send(answer)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]  # the generator's return value, untyped

    return defer.Deferred.fromCoroutine(run(question))
