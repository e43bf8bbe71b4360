"""
ARC, the Authenticated Received Chain (RFC 8617): validating a message's
chain and sealing a message with a new ARC set, on dkimpy's primitives.

This module is sans-IO: it imports nothing from Twisted.  As with DKIM
(:mod:`txmail.policy.dkim`), validation is two steps, so that the server
can fetch the keys asynchronously in between: :func:`arc_key_queries`
gives the TXT names, :func:`arc_verify` checks the chain with their
answers.

Validation (RFC 8617 section 5.2)
---------------------------------
1. No ARC header field: ``none``.  More than 50 sets: ``fail``.
2. The newest ARC-Seal says ``cv=fail``: ``fail`` (the chain already
   failed upstream).
3. The structure: instances 1..N without gaps, exactly one ARC-Seal,
   ARC-Message-Signature and ARC-Authentication-Results each; ``cv=none``
   on instance 1 and ``cv=pass`` above; no ``h=`` in an ARC-Seal.
4. The newest ARC-Message-Signature must verify.
5. The older ones are checked, newest first, down to the first that fails:
   :attr:`ARCResult.oldest_pass` (``header.oldest-pass``: 0 when all
   verify).  This never changes the result.
6. Every ARC-Seal, newest first, must verify.

Anything else is ``pass``.  "All errors, including DNS failures, become
unrecoverable and are considered permanent" (RFC 8617 section 5.2.1): a
key lookup that failed makes the chain ``fail``, the reason says why.

Trusted sealers
---------------
RFC 8617 section 7.2.1 lets a DMARC processor accept the authentication
results recorded by intermediaries it trusts (mailing lists, forwarding
services), as Gmail and Microsoft 365 ("trusted ARC sealers") do.
:meth:`ARCResult.newest_trusted` gives the newest set sealed by one of a
list of domains, if the chain passes; its :attr:`ARCSet.results` hold the
``spf``/``dkim``/``dmarc`` results that sealer saw when the message reached
it, and :attr:`ARCSet.payload` the whole ARC-Authentication-Results
payload.  A stricter policy also requires the newest set (``sets[-1]``, the
hop that handed the message over) to be trusted.

Implementation notes and limits
-------------------------------
* dkimpy's ``ARC.sign`` is not used: it needs the ``authres`` package,
  builds the ARC-Authentication-Results from the message's own
  Authentication-Results fields, and signs with RSA only; here the caller
  gives the results and the chain validation status.  dkimpy's
  ``ARC.verify`` is not used either: it reads the clock, looks keys up
  itself and re-parses the message per set.  Both are rebuilt from the
  same dkimpy pieces as :mod:`txmail.policy.dkim` (tag lists, relaxed
  canonicalization, header hashing, RSA), with one parse of the message and
  one body hash shared by every ARC-Message-Signature.
* Only ``rsa-sha256`` is used for ARC, to seal and to validate.  RFC 8617
  takes ``a=`` from DKIM, but neither dkimpy (``ARC_HASH_ALGORITHMS``) nor
  Mail::DKIM (``ARC::Signer``: "add ed25519 sometime") seals or validates
  ARC with Ed25519, so an Ed25519 seal would fail everywhere.  A
  :class:`~txmail.policy.dkim.SigningKey` for ``ed25519-sha256`` is refused
  by :func:`arc_seal`.  TODO(RFC 8617 section 4.2.1 [ARC-MULTI]): several
  algorithms per instance are not supported.
* An ARC-Message-Signature without ``c=`` is read as relaxed/relaxed, as
  dkimpy does (sealers always write it).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dkim.util import InvalidTagValueList, parse_tag_value

from txmail.dnsdata import Answer
from txmail.policy.authres import AuthResError, AuthResult, format_header, parse_results
from txmail.policy.dkim import (
    _RELAXED,
    DEFAULT_SIGNED_HEADERS,
    OVERSIGNED_HEADERS,
    SigningKey,
    _answer_for,
    _answers,
    _ascii_domain,
    _b64,
    _check_key,
    _check_signature,
    _check_times,
    _hash_headers,
    _key_name,
    _Message,
    _now,
    _Outcome,
    _public_key,
    _PublicKey,
    _signed_field,
    _signed_names,
    _text,
    _verify_hash,
)

__all__ = [
    "ARC_ALGORITHMS",
    "MAX_INSTANCE",
    "ARCResult",
    "ARCSet",
    "arc_key_queries",
    "arc_seal",
    "arc_verify",
]

#: Algorithms ARC seals and validates with (see the module notes).
ARC_ALGORITHMS = ("rsa-sha256",)

#: "Instance tag values can range from 1-50 (inclusive)" (RFC 8617 section 4.2.1).
MAX_INSTANCE = 50

_AAR = b"arc-authentication-results"
_AMS = b"arc-message-signature"
_AS = b"arc-seal"
_KINDS = (_AAR, _AMS, _AS)
# At most three digits, as the instances of the other two (MAX_INSTANCE is 50):
# a longer one is no valid instance (and int() refuses over 4,300 digits).
_AAR_INSTANCE = re.compile(rb"\s*i\s*=\s*(\d{1,3})\s*;", re.ASCII)
_CV = ("none", "pass", "fail")


# --- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ARCSet:
    """
    One ARC set (RFC 8617 section 4.2) of a well-formed chain.

    Attributes:
        instance: ``i=``, 1 for the oldest.
        domain: the sealing domain, ARC-Seal ``d=`` (``as[N].d``, RFC 8617
            section 7.2.2).
        selector: ARC-Seal ``s=``.
        chain_validation: ARC-Seal ``cv=``: what the sealer found.
        ams_domain: ARC-Message-Signature ``d=``.
        authserv_id: the authserv-id of the ARC-Authentication-Results.
        payload: the ARC-Authentication-Results after ``i=N;``, unfolded:
            ``authserv-id; method=result ...; ...`` (RFC 8601 section 2.2's
            authres-payload).
        results: the results of *payload*, in order
            (:func:`txmail.policy.authres.parse_results`); ``()`` when the
            payload does not parse (its syntax does not affect the chain,
            RFC 8617 section 3.4).
        ams_valid: whether the ARC-Message-Signature verified; ``None`` when
            it was not checked (older than the first that failed).
        seal_valid: whether the ARC-Seal verified; ``None`` when not checked.
    """

    instance: int
    domain: str
    selector: str
    chain_validation: str
    ams_domain: str
    authserv_id: str
    payload: str
    results: tuple[AuthResult, ...] = ()
    ams_valid: bool | None = None
    seal_valid: bool | None = None

    def find(self, method: str) -> AuthResult | None:
        """The first result recorded for *method* (``"dmarc"``, ``"spf"``...), or ``None``."""
        method = method.lower()
        for result in self.results:
            if result.method == method:
                return result
        return None

    def result_of(self, method: str) -> str | None:
        """The first result keyword recorded for *method* (``"pass"``...), or ``None``."""
        found = self.find(method)
        return found.result if found is not None else None


@dataclass(frozen=True, slots=True)
class ARCResult:
    """
    The chain validation status of a message (RFC 8617 section 4.4).

    Attributes:
        result: ``none``, ``pass`` or ``fail`` (the ``arc=`` result of
            Authentication-Results, RFC 8617 section 6, and the ``cv=`` to
            seal with).
        reason: why it failed (or ``""``).
        count: the number of ARC sets (the highest instance found).
        sets: the sets, oldest first, when the chain is well formed
            (``()`` otherwise).
        oldest_pass: the oldest instance whose ARC-Message-Signature and
            all newer ones verify, 0 if all do (``header.oldest-pass``,
            RFC 8617 section 6); ``None`` when the chain does not pass.
    """

    result: str
    reason: str = ""
    count: int = 0
    sets: tuple[ARCSet, ...] = field(default=())
    oldest_pass: int | None = None

    @property
    def sealers(self) -> tuple[str, ...]:
        """The sealing domains, oldest first."""
        return tuple(s.domain for s in self.sets)

    def newest_trusted(self, sealers: Iterable[str]) -> ARCSet | None:
        """
        The newest set sealed (ARC-Seal ``d=``, compared case-insensitively
        and exactly, no subdomains) by one of *sealers*, if the chain
        passes; else ``None`` (RFC 8617 section 7.2.1: "a DMARC processor
        MAY choose to accept the authentication assessments provided by an
        Authenticated Received Chain").
        """
        if self.result != "pass":
            return None
        trusted = {s.lower().rstrip(".") for s in sealers}
        for arc_set in reversed(self.sets):
            if arc_set.domain.lower().rstrip(".") in trusted:
                return arc_set
        return None


# --- the chain ----------------------------------------------------------------


@dataclass(slots=True)
class _RawSet:
    aar: list[tuple[bytes, bytes]] = field(default_factory=list)
    ams: list[tuple[bytes, bytes]] = field(default_factory=list)
    seal: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class _Chain:
    """The ARC fields of a message by instance, and what is wrong with them."""

    sets: dict[int, _RawSet]
    count: int = 0
    #: Why the chain is malformed (RFC 8617 section 5.2 step 3), or "".
    error: str = ""
    #: The newest ARC-Seal says cv=fail (step 2).
    failed: bool = False
    seal_tags: dict[int, dict[bytes, bytes]] = field(default_factory=dict)
    ams_tags: dict[int, dict[bytes, bytes]] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.count > 0 and not self.error and not self.failed


def _unfold(value: bytes) -> bytes:
    return value.replace(b"\r\n", b"").replace(b"\n", b"")


def _instance_of(kind: bytes, value: bytes) -> tuple[int | None, dict[bytes, bytes] | None]:
    if kind == _AAR:
        match = _AAR_INSTANCE.match(_unfold(value))
        return (int(match.group(1)) if match else None), None
    try:
        tags = dict(parse_tag_value(value))
    except InvalidTagValueList:
        return None, None
    instance = tags.get(b"i", b"")
    return (int(instance) if instance.isdigit() and len(instance) <= 3 else None), tags


def _chain(message: _Message) -> _Chain:
    """Collect the ARC sets and check the structure (RFC 8617 section 5.2 steps 1-3)."""
    chain = _Chain(sets={})
    for name, value in message.headers:
        kind = name.lower()
        if kind not in _KINDS:
            continue
        instance, tags = _instance_of(kind, value)
        if instance is None or not 1 <= instance <= MAX_INSTANCE:
            chain.count = max(chain.count, instance or 0)
            chain.error = chain.error or f"{_text(name)} without a valid instance (i=1 to {MAX_INSTANCE})"
            continue
        chain.count = max(chain.count, instance)
        raw = chain.sets.setdefault(instance, _RawSet())
        if kind == _AAR:
            raw.aar.append((name, value))
        elif kind == _AMS:
            raw.ams.append((name, value))
            chain.ams_tags[instance] = tags or {}
        else:
            raw.seal.append((name, value))
            chain.seal_tags[instance] = tags or {}
    if chain.count == 0:
        return chain
    if chain.count > MAX_INSTANCE:
        chain.error = f"more than {MAX_INSTANCE} ARC sets"
        return chain
    newest = chain.seal_tags.get(chain.count, {})
    if newest.get(b"cv", b"").lower() == b"fail":
        chain.failed = True
        return chain
    if chain.error:
        return chain
    for instance in range(1, chain.count + 1):
        raw = chain.sets.get(instance, _RawSet())
        if not (len(raw.aar) == len(raw.ams) == len(raw.seal) == 1):
            chain.error = f"ARC set {instance} does not have exactly one of each ARC header field"
            return chain
        seal = chain.seal_tags[instance]
        expected = b"none" if instance == 1 else b"pass"
        if seal.get(b"cv", b"").lower() != expected:
            chain.error = f"ARC-Seal i={instance} has cv={_text(seal.get(b'cv', b''))}, not {_text(expected)}"
            return chain
        if b"h" in seal:
            chain.error = f"ARC-Seal i={instance} has an h= tag (RFC 8617 section 4.1.3)"
            return chain
    return chain


def arc_key_queries(message: bytes) -> list[str]:
    """
    The TXT names of the keys :func:`arc_verify` needs for *message* (the
    ARC-Seal and ARC-Message-Signature keys of every set), each once, newest
    set first; ``[]`` when the chain has no set, is malformed or already
    failed (it is ``none`` or ``fail`` without any key).  Cheap: the header
    section is scanned, nothing is hashed.
    """
    parsed = _Message(message, headers_only=True)
    chain = _chain(parsed)
    if not chain.usable or parsed.error:
        return []
    names: dict[str, None] = {}
    for instance in range(chain.count, 0, -1):
        for tags in (chain.ams_tags[instance], chain.seal_tags[instance]):
            name = _key_name(tags)
            if name is not None:
                names[name] = None
    return list(names)


# --- ARC-Authentication-Results payloads ---------------------------------------


def _split_payload(payload: str) -> list[str]:
    """
    *payload* split at the semicolons outside quoted strings and comments
    (RFC 8601 section 2.2), each part stripped, comments kept.
    """
    parts: list[str] = []
    buf: list[str] = []
    depth = 0
    quoted = escaped = False
    for ch in payload:
        buf.append(ch)
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif depth:
            depth -= ch == ")"
        elif ch == '"':
            quoted = True
        elif ch == ";":
            parts.append("".join(buf[:-1]).strip())
            buf = []
    parts.append("".join(buf).strip())
    return parts


def _aar_payload(value: bytes) -> str:
    unfolded = _unfold(value)
    match = _AAR_INSTANCE.match(unfolded)
    rest = unfolded[match.end() :] if match else unfolded
    return " ".join(rest.decode("utf-8", "replace").split())


# --- validation ---------------------------------------------------------------


def _check_arc_tags(tags: Mapping[bytes, bytes], required: tuple[bytes, ...], now: int) -> None:
    for tag in required:
        if not tags.get(tag):
            raise _Outcome("fail", f"no {_text(tag)}= tag")
    if _text(tags[b"a"].lower()) not in ARC_ALGORITHMS:
        raise _Outcome("fail", f"unsupported algorithm a={_text(tags[b'a'])}")
    _b64(tags[b"b"], "b")
    _check_times(tags, now)


def _arc_key(tags: Mapping[bytes, bytes], answers: Mapping[str, Answer]) -> _PublicKey:
    name = _key_name(tags)
    assert name is not None  # required tags were checked
    key = _public_key(_answer_for(answers, name))
    _check_key(key, tags[b"a"].lower(), tags)
    return key


def _check_ams(
    message: _Message, chain: _Chain, instance: int, answers: Mapping[str, Answer], now: int
) -> None:
    """An ARC-Message-Signature (RFC 8617 section 4.1.2), or an ``_Outcome``."""
    tags = chain.ams_tags[instance]
    _check_arc_tags(tags, (b"a", b"b", b"bh", b"d", b"h", b"s"), now)
    include = [n.strip().lower() for n in tags[b"h"].split(b":")]
    if any(n in _KINDS for n in include):
        # "ARC-related header fields ... MUST NOT be included" (section 4.1.2).
        raise _Outcome("fail", "signs ARC header fields")
    key = _arc_key(tags, answers)
    _check_signature(message, tags, include, chain.sets[instance].ams[0], key, default_c=b"relaxed/relaxed")


def _seal_input(
    chain_sets: Iterable[tuple[tuple[bytes, bytes], tuple[bytes, bytes], tuple[bytes, bytes] | None]],
) -> list[tuple[bytes, bytes]]:
    """
    The relaxed-canonical fields an ARC-Seal covers before itself: AAR,
    AMS and AS of each set in increasing instance order, then the AAR and
    AMS of its own set (RFC 8617 section 5.1.1).
    """
    fields: list[tuple[bytes, bytes]] = []
    for aar, ams, seal in chain_sets:
        fields.extend([aar, ams] if seal is None else [aar, ams, seal])
    return list(_RELAXED.canonicalize_headers(fields))


def _check_seal(chain: _Chain, instance: int, answers: Mapping[str, Answer], now: int) -> None:
    """An ARC-Seal (RFC 8617 sections 4.1.3 and 5.1.1), or an ``_Outcome``."""
    tags = chain.seal_tags[instance]
    _check_arc_tags(tags, (b"a", b"b", b"cv", b"d", b"s"), now)
    key = _arc_key(tags, answers)
    sets = chain.sets
    covered = _seal_input(
        (sets[i].aar[0], sets[i].ams[0], sets[i].seal[0] if i < instance else None)
        for i in range(1, instance + 1)
    )
    hasher = hashlib.sha256()
    for name, value in covered:
        hasher.update(name + b":" + value)
    _hash_headers(hasher, _RELAXED, [], [], sets[instance].seal[0])
    if not _verify_hash(key, hasher, _b64(tags[b"b"], "b")):
        raise _Outcome("fail", "signature did not verify")


def _sets(chain: _Chain, ams: Mapping[int, bool], seals: Mapping[int, bool]) -> tuple[ARCSet, ...]:
    out = []
    for instance in range(1, chain.count + 1):
        seal = chain.seal_tags[instance]
        value = chain.sets[instance].aar[0][1]
        try:
            authserv_id, results = parse_results(value)
        except AuthResError:
            authserv_id, results = "", []
        out.append(
            ARCSet(
                instance=instance,
                domain=_text(seal.get(b"d", b"")),
                selector=_text(seal.get(b"s", b"")),
                chain_validation=_text(seal.get(b"cv", b"")).lower(),
                ams_domain=_text(chain.ams_tags[instance].get(b"d", b"")),
                authserv_id=authserv_id,
                payload=_aar_payload(value),
                results=tuple(results),
                ams_valid=ams.get(instance),
                seal_valid=seals.get(instance),
            )
        )
    return tuple(out)


def arc_verify(message: bytes, keys: Mapping[str, Answer], *, now: float | None = None) -> ARCResult:
    """
    Validate the Authenticated Received Chain of *message* (RFC 8617
    section 5.2; see the module notes).

    Args:
        message: the message as received (CRLF line ends).
        keys: the answer to each TXT name :func:`arc_key_queries` gave.
        now: the time (seconds since the epoch) for ``t=``/``x=``; the
            clock when ``None``.

    Raises:
        ValueError: a name :func:`arc_key_queries` gave has no answer in
            *keys*.
    """
    parsed = _Message(message)
    chain = _chain(parsed)
    if chain.count == 0:
        return ARCResult("none")
    if chain.failed:
        return ARCResult("fail", f"ARC-Seal i={chain.count} reports cv=fail", chain.count)
    if chain.error:
        return ARCResult("fail", chain.error, chain.count)
    if parsed.error:
        return ARCResult("fail", f"malformed header section: {parsed.error}", chain.count)
    clock = _now(now)
    answers = _answers(keys)
    ams: dict[int, bool] = {}
    seals: dict[int, bool] = {}

    def failed(reason: str) -> ARCResult:
        return ARCResult("fail", reason, chain.count, _sets(chain, ams, seals))

    newest = chain.count
    try:
        _check_ams(parsed, chain, newest, answers, clock)
    except _Outcome as outcome:
        ams[newest] = False
        return failed(f"ARC-Message-Signature i={newest}: {outcome.reason}")
    ams[newest] = True
    oldest_pass = 0
    for instance in range(newest - 1, 0, -1):
        try:
            _check_ams(parsed, chain, instance, answers, clock)
        except _Outcome:
            ams[instance] = False
            oldest_pass = instance + 1
            break
        ams[instance] = True
    for instance in range(newest, 0, -1):
        try:
            _check_seal(chain, instance, answers, clock)
        except _Outcome as outcome:
            seals[instance] = False
            return failed(f"ARC-Seal i={instance}: {outcome.reason}")
        seals[instance] = True
    return ARCResult("pass", "", chain.count, _sets(chain, ams, seals), oldest_pass)


# --- sealing --------------------------------------------------------------------


def _aar_field(
    instance: int, authserv_id: str, auth_results: str | Sequence[AuthResult], chain_validation: str
) -> bytes:
    """The ARC-Authentication-Results field (RFC 8617 section 4.1.1), CRLF-ended."""
    prefix = f"ARC-Authentication-Results: i={instance};".encode("ascii")
    if not isinstance(auth_results, str):
        results = list(auth_results)
        if not any(r.method == "arc" for r in results):
            results.append(AuthResult("arc", chain_validation))
        # format_header quotes what needs quoting; only the field name changes.
        return prefix + format_header(authserv_id, results).split(b":", 1)[1]
    if not authserv_id or any(c.isspace() or c in ';()"\\' for c in authserv_id):
        raise ValueError(f"not an authserv-id: {authserv_id!r}")
    text = auth_results.replace("\r\n", "").strip().lstrip(";").strip()
    if "\r" in text or "\n" in text:
        raise ValueError("auth_results holds a bare CR or LF")
    resinfo = [p for p in _split_payload(text) if p]
    if resinfo == ["none"]:
        resinfo = []
    # RFC 8601 section 2.2's grammar (raises AuthResError, a ValueError).
    _, results = parse_results("; ".join([authserv_id, *resinfo]))
    if not any(r.method == "arc" for r in results):
        # RFC 8617 section 6: the chain validation status is recorded with
        # the "arc" method.
        resinfo.append(f"arc={chain_validation}")
    lines = [f" {authserv_id}", *resinfo]
    return prefix + ";\r\n\t".join(lines).encode("utf-8") + b"\r\n"


def _split_field(data: bytes) -> tuple[bytes, bytes]:
    name, value = data.split(b":", 1)
    return name, value


def arc_seal(
    message: bytes,
    key: SigningKey,
    *,
    authserv_id: str,
    auth_results: str | Sequence[AuthResult],
    chain_validation: str,
    now: float | None = None,
) -> bytes:
    """
    The ARC set to prepend to *message* (RFC 8617 section 5.1): ARC-Seal,
    ARC-Message-Signature and ARC-Authentication-Results, in that order,
    each CRLF-ended, with instance ``i=N+1``.

    Args:
        message: the message as it will leave, every other change made
            ("All message modifications (including adding a DKIM-Signature
            header field(s)) MUST be performed before sealing", section 5.1).
        key: an ``rsa-sha256`` :class:`~txmail.policy.dkim.SigningKey`.
        authserv_id: this server's authserv-id (RFC 8601 section 2.5).
        auth_results: the results this server found: the resinfo list
            after the authserv-id, as text written as is (``"spf=pass
            smtp.mailfrom=example.org; dkim=pass header.d=example.org;
            dmarc=pass header.from=example.org"``, checked against RFC 8601
            section 2.2), or :class:`~txmail.policy.authres.AuthResult`
            values (written by :func:`~txmail.policy.authres.format_header`).
            ``arc=<chain_validation>`` is added unless an ``arc`` result is
            there.
        chain_validation: ``none`` (no chain on the message), ``pass`` or
            ``fail``: :attr:`ARCResult.result` of :func:`arc_verify`.
        now: the time for ``t=`` (seconds since the epoch); the clock when
            ``None``.

    Returns:
        The three fields, or ``b""`` when no set may be added: the newest
        ARC-Seal already says ``cv=fail`` (section 5.1 step 2), or the chain
        has :data:`MAX_INSTANCE` sets.

    Raises:
        ValueError: an Ed25519 key, a *chain_validation* that contradicts
            the message (``none`` with a chain, ``pass`` without one or with
            a malformed one), *auth_results* text that is not RFC 8601
            resinfo, or a malformed header section.
    """
    if key.algorithm not in ARC_ALGORITHMS:
        raise ValueError(
            f"ARC seals with {', '.join(ARC_ALGORITHMS)} only, not {key.algorithm} (see the module notes)"
        )
    if chain_validation not in _CV:
        raise ValueError(f"chain_validation is one of {_CV}, not {chain_validation!r}")
    parsed = _Message(message)
    if parsed.error:
        raise ValueError(f"cannot seal: {parsed.error}")
    chain = _chain(parsed)
    if chain.failed or chain.count >= MAX_INSTANCE:
        return b""
    if chain.count == 0 and chain_validation != "none":
        raise ValueError(f"the message has no ARC set: chain_validation is 'none', not {chain_validation!r}")
    if chain.count and chain_validation == "none":
        raise ValueError("the message has an ARC chain: chain_validation is 'pass' or 'fail'")
    if chain_validation == "pass" and chain.error:
        raise ValueError(f"the ARC chain is malformed ({chain.error}): seal with chain_validation='fail'")
    instance = chain.count + 1
    number = str(instance).encode("ascii")
    timestamp = str(_now(now)).encode("ascii")
    domain = _ascii_domain(key.domain)
    selector = key.selector.encode("ascii")
    aar = _aar_field(instance, authserv_id, auth_results, chain_validation)
    include = _signed_names(parsed, (*DEFAULT_SIGNED_HEADERS, "dkim-signature"), OVERSIGNED_HEADERS)
    ams_tags = [
        (b"i", number),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", domain),
        (b"s", selector),
        (b"t", timestamp),
        (b"h", b":".join(include)),
        (b"bh", base64.b64encode(parsed.body_hash(_RELAXED, "sha256"))),
    ]
    ams = _signed_field(b"ARC-Message-Signature", ams_tags, key, parsed, include)
    # RFC 8617 section 5.1.2: sealing a failed chain covers the new set only.
    previous = [] if chain_validation == "fail" else range(1, instance)
    covered = _seal_input(
        [(chain.sets[i].aar[0], chain.sets[i].ams[0], chain.sets[i].seal[0]) for i in previous]
        + [(_split_field(aar), _split_field(ams), None)]
    )
    seal_tags = [
        (b"i", number),
        (b"a", b"rsa-sha256"),
        (b"cv", chain_validation.encode("ascii")),
        (b"d", domain),
        (b"s", selector),
        (b"t", timestamp),
    ]
    seal = _signed_field(b"ARC-Seal", seal_tags, key, parsed, [], prefix_fields=covered)
    return seal + ams + aar
