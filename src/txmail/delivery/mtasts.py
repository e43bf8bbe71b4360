"""
MTA-STS (RFC 8461): the policies of the domains we send to (fetched,
cached, refreshed), and our own policy, served over HTTPS.

Theory of operation
===================

Sending (:class:`MTASTS`, asked by the queue runner once per domain and
delivery attempt):

1. The ``_mta-sts.<domain>`` TXT record (RFC 8461 section 3.1): exactly one
   record starting ``v=STSv1``, with an ``id`` of 1 to 32 letters and
   digits.  Several such records, or none, is "no record".
2. With a record whose ``id`` is the cached policy's, the cached policy is
   used while it is fresh; past half its ``max_age`` it is fetched again
   (RFC 8461 section 5.1 lets senders refresh early, so that a policy in
   use never expires); a failed refresh keeps the cached one.
3. Otherwise the policy is fetched from
   ``https://mta-sts.<domain>/.well-known/mta-sts.txt`` (section 3.3):
   the certificate must be valid for ``mta-sts.<domain>`` (the system's
   CA, or the configured one), redirects are not followed (any status but
   200 is a failure), the body may hold at most :data:`MAX_POLICY_SIZE`
   octets, and the whole fetch has a timeout.  The host is resolved through
   the same DNS as everything else (*resolve_host*), and the TLS check names
   the host, not the address.
4. Without a TXT record, or when the fetch fails, a cached policy that
   has not expired is still used (section 5.1: a policy stays in force for
   its ``max_age`` whatever the DNS says, which is what defeats an attacker
   who strips the TXT record); without one the domain has no policy
   (section 5: deliver as if the domain had none) and the failure is
   reported (TLS-RPT ``sts-policy-fetch-error``/``sts-policy-invalid``).

Policies are kept in a JSON file (``<data_dir>/mta-sts.json``), written
atomically, so they survive restarts (section 5.1 asks for a persistent
cache); with the PostgreSQL queue, in the database
(:class:`txmail.pg.mtasts.PostgresPolicyCache`), shared by the nodes.

The policy file (section 3.2): ``key: value`` lines (CRLF or LF);
``version: STSv1``, ``mode`` (``enforce``, ``testing``, ``none``),
``max_age`` (0 to 31557600 seconds), ``mx`` patterns (one per line; a
leading ``*.`` stands for exactly one label, section 4.1); unknown keys
are ignored.  Enforcement is the runner's (with
:class:`txmail.tlsverify.CheckedTLS`).

Serving (:class:`PolicyResource`): ``/.well-known/mta-sts.txt`` on the web
listener, for requests whose ``Host`` is ``mta-sts.<one of our domains>``,
from the ``[mta_sts]`` settings; :func:`policy_id` gives the ``id`` of the
TXT record (:mod:`txmail.dnsrecords` prints it), which changes whenever the
policy text does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from zope.interface import implementer

__all__ = [
    "MAX_POLICY_SIZE",
    "MTASTS",
    "CachedPolicy",
    "Policy",
    "PolicyCache",
    "PolicyError",
    "PolicyFetcher",
    "PolicyResource",
    "mx_matches",
    "parse_policy",
    "parse_txt",
    "policy_id",
    "policy_text",
]

#: Octets a policy may hold (RFC 8461 section 3.3 suggests 64 KiB).
MAX_POLICY_SIZE = 64 * 1024
#: The largest ``max_age`` (RFC 8461 section 3.2: about one year).
MAX_AGE_LIMIT = 31557600

_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")
_MODES = ("enforce", "testing", "none")


class PolicyError(Exception):
    """
    A policy that could not be had: *kind* is the RFC 8460 result type,
    ``sts-policy-invalid`` (it does not follow RFC 8461) or
    ``sts-policy-fetch-error`` (HTTP status, size, timeout...).
    """

    def __init__(self, message: str, kind: str = "sts-policy-invalid") -> None:
        super().__init__(message)
        self.kind = kind


def parse_txt(records: Sequence[bytes | str]) -> str | None:
    """
    The policy ``id`` of the ``_mta-sts`` TXT records (RFC 8461 section 3.1),
    or ``None`` when there is no single valid ``v=STSv1`` record.
    """
    found = []
    for record in records:
        text = record.decode("utf-8", "replace") if isinstance(record, bytes) else record
        if text.startswith("v=STSv1"):
            found.append(text)
    if len(found) != 1:
        return None
    fields = {}
    for part in found[0].split(";"):
        key, sep, value = part.strip().partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    if fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    return ident if _ID_RE.fullmatch(ident) else None


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed policy (RFC 8461 section 3.2)."""

    mode: str
    mx: tuple[str, ...]
    max_age: int
    text: str = ""

    def matches(self, host: str) -> bool:
        """Whether MX host *host* is allowed by the policy (section 4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """
    RFC 8461 section 4.1: ``mail.example.com`` matches itself,
    ``*.example.com`` matches ``mail.example.com`` but neither
    ``example.com`` nor ``a.b.example.com``; without regard to case.
    """
    pattern = pattern.lower().rstrip(".")
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return pattern == host


def parse_policy(text: str) -> Policy:
    """
    Parse a policy file.

    Raises:
        PolicyError: wrong version, mode or max_age, or no ``mx`` in a mode
            that needs one.
    """
    fields: dict[str, str] = {}
    mx: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise PolicyError(f"not a key: value line: {line[:60]!r}")
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value)
        elif key not in fields:
            fields[key] = value
    if fields.get("version") != "STSv1":
        raise PolicyError("version is not STSv1")
    mode = fields.get("mode")
    if mode not in _MODES:
        raise PolicyError(f"bad mode {mode!r}")
    age = fields.get("max_age", "")
    if not age.isdigit() or len(age) > 10 or int(age) > MAX_AGE_LIMIT:
        raise PolicyError(f"bad max_age {age!r}")
    if mode != "none" and not mx:
        raise PolicyError("no mx pattern")
    return Policy(mode, tuple(mx), int(age), text)


def policy_text(mode: str, mx: Sequence[str], max_age: int) -> str:
    """Our own policy file, as served (RFC 8461 section 3.2, CRLF lines)."""
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "".join(line + "\r\n" for line in lines)


def policy_id(text: str) -> str:
    """The TXT record ``id`` for a policy text: changes whenever the text does."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# -- the cache -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    """A policy as cached: its TXT ``id``, when it was fetched, and its text."""

    policy: Policy
    policy_id: str
    fetched_at: float

    @property
    def expires_at(self) -> float:
        return self.fetched_at + self.policy.max_age


class PolicyCache:
    """
    Policies by domain, in a JSON file (*path*; ``None`` keeps them in
    memory only).  Every change rewrites the file atomically (a temporary
    file renamed over it).  At most *max_entries* domains are kept (the
    oldest fetches go first).
    """

    log = Logger()

    def __init__(self, path: str | None, *, max_entries: int = 10000) -> None:
        self.path = path
        self.max_entries = max_entries
        self._entries: dict[str, CachedPolicy] = {}
        if path is not None and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                for domain, item in data.items():
                    self._entries[domain] = CachedPolicy(
                        parse_policy(item["text"]), str(item["id"]), float(item["fetched_at"])
                    )
            except (OSError, ValueError, KeyError, TypeError, PolicyError) as e:
                self.log.warn(
                    "MTA-STS policy cache {path} unreadable, starting empty: {error}", path=path, error=e
                )
                self._entries = {}

    def get(self, domain: str) -> CachedPolicy | None:
        return self._entries.get(domain.lower())

    def put(self, domain: str, entry: CachedPolicy) -> None:
        self._entries[domain.lower()] = entry
        while len(self._entries) > self.max_entries:
            oldest = min(self._entries, key=lambda d: self._entries[d].fetched_at)
            del self._entries[oldest]
        self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            d: {"id": e.policy_id, "fetched_at": e.fetched_at, "text": e.policy.text}
            for d, e in self._entries.items()
        }
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            self.log.warn("cannot write the MTA-STS policy cache {path}: {error}", path=self.path, error=e)


# -- fetching --------------------------------------------------------------------


class _BodyReader(protocol.Protocol):
    """Collects a response body up to a limit; more is an error (and the transfer is stopped)."""

    def __init__(self, finished: defer.Deferred[bytes], limit: int) -> None:
        self.finished = finished
        self.limit = limit
        self.data = bytearray()

    def dataReceived(self, data: bytes) -> None:
        if self.finished.called:
            return
        self.data += data
        if len(self.data) > self.limit:
            self.finished.errback(
                PolicyError(f"policy larger than {self.limit} octets", "sts-policy-fetch-error")
            )
            self.transport.stopProducing()  # type: ignore[union-attr]  # connected: the transport is set while data arrives

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.finished.called:
            return
        from twisted.web.client import ResponseDone

        if reason.check(ResponseDone):
            self.finished.callback(bytes(self.data))
        else:
            self.finished.errback(
                PolicyError(f"policy transfer failed: {reason.getErrorMessage()}", "sts-policy-fetch-error")
            )


@implementer(IStreamClientEndpoint)
class _ResolvingEndpoint:
    """Resolves the host with *resolve_host*, then connects to the address."""

    def __init__(
        self, reactor: Any, resolve_host: Callable[[str], Any], host: str, port: int, timeout: float
    ):
        self.reactor = reactor
        self.resolve_host = resolve_host
        self.host = host
        self.port = port
        self.timeout = timeout

    def connect(self, factory: Any) -> defer.Deferred[Any]:
        from txmail.smtp.relay import client_endpoint

        async def go() -> Any:
            address = await self.resolve_host(self.host)
            if not address:
                raise PolicyError(f"{self.host} has no address", "sts-policy-fetch-error")
            return await client_endpoint(self.reactor, address, self.port, self.timeout).connect(factory)

        return defer.Deferred.fromCoroutine(go())


class PolicyFetcher:
    """
    Fetches policy files with :class:`twisted.web.client.Agent` (see the
    module notes).

    Args:
        reactor: network and time.
        resolve_host: ``resolve_host(name) -> Deferred[address or None]``.
        trust_roots: ``OpenSSL.crypto.X509`` CA certificates instead of the
            platform's.
        port: the HTTPS port (443; tests use another).
        timeout: seconds for the whole fetch.
    """

    def __init__(
        self,
        reactor: Any,
        resolve_host: Callable[[str], Any],
        *,
        trust_roots: Sequence[Any] | None = None,
        port: int = 443,
        timeout: float = 60.0,
        max_size: int = MAX_POLICY_SIZE,
    ) -> None:
        self.reactor = reactor
        self.resolve_host = resolve_host
        self.trust_roots = trust_roots
        self.port = port
        self.timeout = timeout
        self.max_size = max_size

    def _endpoint_factory(self) -> Any:
        from twisted.internet import ssl
        from twisted.internet.endpoints import wrapClientTLS
        from twisted.web.iweb import IAgentEndpointFactory

        fetcher = self

        @implementer(IAgentEndpointFactory)
        class Factory:
            def endpointForURI(self, uri: Any) -> Any:
                host = uri.host.decode("ascii")
                trust = (
                    ssl.trustRootFromCertificates([ssl.Certificate(c) for c in fetcher.trust_roots])
                    if fetcher.trust_roots is not None
                    else None
                )
                creator = ssl.optionsForClientTLS(host, trustRoot=trust)
                inner = _ResolvingEndpoint(
                    fetcher.reactor, fetcher.resolve_host, host, fetcher.port, fetcher.timeout
                )
                return wrapClientTLS(creator, inner)

        return Factory()

    def fetch(self, domain: str) -> defer.Deferred[str]:
        """The policy text of *domain*; fails with :class:`PolicyError` (or a TLS/network error)."""
        from twisted.web.client import Agent
        from twisted.web.http_headers import Headers

        agent = Agent.usingEndpointFactory(self.reactor, self._endpoint_factory())
        url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt".encode("idna")

        async def go() -> str:
            response = await agent.request(b"GET", url, Headers({b"User-Agent": [b"txmail MTA-STS"]}))
            if response.code != 200:
                # RFC 8461 section 3.3: "HTTP 3xx redirects MUST NOT be followed".
                discarded: defer.Deferred[bytes] = defer.Deferred()
                discarded.addErrback(lambda f: None)  # the body of a refusal is not read
                response.deliverBody(_BodyReader(discarded, 0))
                raise PolicyError(f"HTTP status {response.code}", "sts-policy-fetch-error")
            ctype = (response.headers.getRawHeaders(b"content-type") or [b""])[0].decode("latin-1")
            if not ctype.lower().startswith("text/plain"):
                discarded = defer.Deferred()
                discarded.addErrback(lambda f: None)
                response.deliverBody(_BodyReader(discarded, 0))
                raise PolicyError(f"content type {ctype!r} is not text/plain", "sts-policy-fetch-error")
            body: defer.Deferred[bytes] = defer.Deferred()
            response.deliverBody(_BodyReader(body, self.max_size))
            data = await body
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                raise PolicyError("policy is not UTF-8") from None

        d = defer.Deferred.fromCoroutine(go())
        timed_out = []

        def expire() -> None:
            timed_out.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.timeout, expire)

        def finished(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure):
                raise PolicyError(f"no policy within {self.timeout:g} seconds", "sts-policy-fetch-error")
            return result

        return d.addBoth(finished)


# -- the sender's view -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lookup:
    """
    What :meth:`MTASTS.policy_for` found: the *policy* in force (or
    ``None``), and when something went wrong on the way, the RFC 8460
    result type (``sts-policy-fetch-error``, ``sts-policy-invalid``,
    ``sts-webpki-invalid``) and a description.
    """

    policy: Policy | None
    failure: str | None = None
    detail: str = ""


class MTASTS:
    """
    The MTA-STS policies of the domains we send to (see the module notes).

    Args:
        lookup_txt: ``lookup_txt(name) -> Deferred[list of TXT strings or
            None]`` (``None``: the lookup failed).
        fetcher: a :class:`PolicyFetcher` (anything with ``fetch(domain)``).
        cache: a :class:`PolicyCache`, or anything with the same ``get`` and
            ``put`` (they may return Deferreds:
            :class:`txmail.pg.mtasts.PostgresPolicyCache`).
        clock: tells the time.
    """

    log = Logger()

    def __init__(
        self, lookup_txt: Callable[[str], Any], fetcher: Any, cache: PolicyCache, clock: Any
    ) -> None:
        self.lookup_txt = lookup_txt
        self.fetcher = fetcher
        self.cache = cache
        self.clock = clock
        self._in_flight: dict[str, list[defer.Deferred[Lookup]]] = {}

    def policy_for(self, domain: str) -> defer.Deferred[Lookup]:
        """The policy of *domain*; never fails.  Concurrent askers share one lookup."""
        domain = domain.lower().rstrip(".")
        d: defer.Deferred[Lookup] = defer.Deferred()
        waiting = self._in_flight.get(domain)
        if waiting is not None:
            waiting.append(d)
            return d
        self._in_flight[domain] = [d]

        def done(result: Lookup | Failure) -> None:
            if isinstance(result, Failure):
                self.log.failure("MTA-STS lookup of {domain} failed", failure=result, domain=domain)
                result = Lookup(None)
            for waiter in self._in_flight.pop(domain, []):
                waiter.callback(result)

        defer.Deferred.fromCoroutine(self._policy_for(domain)).addBoth(done)
        return d

    async def _policy_for(self, domain: str) -> Lookup:
        now = self.clock.seconds()
        cached = await defer.maybeDeferred(self.cache.get, domain)
        if cached is not None and cached.expires_at <= now:
            cached = None
        records = await self.lookup_txt(f"_mta-sts.{domain}")
        ident = parse_txt(records) if records else None
        if ident is None:
            # No (valid) record: a cached policy stays in force (section 5.1).
            return Lookup(cached.policy if cached else None)
        if (
            cached is not None
            and cached.policy_id == ident
            and now < cached.fetched_at + cached.policy.max_age / 2
        ):
            return Lookup(cached.policy)
        try:
            text = await self.fetcher.fetch(domain)
            policy = parse_policy(text)
        except PolicyError as e:
            return self._failed(domain, cached, e.kind, str(e))
        except Exception as e:
            kind = "sts-webpki-invalid" if _is_tls_error(e) else "sts-policy-fetch-error"
            return self._failed(domain, cached, kind, str(e) or type(e).__name__)
        try:
            await defer.maybeDeferred(self.cache.put, domain, CachedPolicy(policy, ident, now))
        except Exception:
            self.log.failure("caching the MTA-STS policy of {domain} failed", domain=domain)
        self.log.info(
            "MTA-STS policy of {domain} (id {id}): mode {mode}, mx {mx}",
            domain=domain,
            id=ident,
            mode=policy.mode,
            mx=", ".join(policy.mx),
        )
        return Lookup(policy)

    def _failed(self, domain: str, cached: CachedPolicy | None, failure: str, detail: str) -> Lookup:
        self.log.info(
            "MTA-STS policy of {domain} could not be fetched ({failure}: {detail}){kept}",
            domain=domain,
            failure=failure,
            detail=detail,
            kept="; the cached one stays in force" if cached else "",
        )
        return Lookup(cached.policy if cached else None, failure, detail)


def _is_tls_error(error: Exception) -> bool:
    from OpenSSL import SSL

    seen: list[Any] = [error]
    for reason in getattr(error, "reasons", []) or []:
        seen.append(getattr(reason, "value", reason))
    return any(isinstance(e, SSL.Error) or type(e).__name__ == "VerificationError" for e in seen)


# -- serving ---------------------------------------------------------------------------


class PolicyResource(Resource):
    """
    ``/.well-known/mta-sts.txt``: our policy (*text*) as ``text/plain``,
    for a ``Host`` of ``mta-sts.<domain>`` with *domain* one of *domains*;
    404 for other hosts.
    """

    isLeaf = True

    def __init__(self, text: str, domains: Sequence[str]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]  # untyped in Twisted
        self.text = text.encode()
        self.hosts = {f"mta-sts.{d.lower()}" for d in domains}

    def render_GET(self, request: Any) -> bytes:
        host = (request.getHeader(b"host") or b"").decode("latin-1").lower()
        host = host.partition(":")[0]  # no port; a policy host is never an address literal
        if host.rstrip(".") not in self.hosts:
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"no MTA-STS policy for this host\n"
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"max-age=300")
        return self.text


def mount(site: Any, settings: Any) -> None:
    """Serve the ``[mta_sts]`` policy on *site* (a JMAP site whose root has ``.well-known``)."""
    if not getattr(settings, "mta_sts_mode", None):
        return
    text = policy_text(
        settings.mta_sts_mode, settings.mta_sts_mx or (settings.hostname,), settings.mta_sts_max_age
    )
    well_known = site.resource.children[b".well-known"]
    well_known.putChild(b"mta-sts.txt", PolicyResource(text, settings.domains))
