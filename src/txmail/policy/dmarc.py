"""
DMARC (RFC 7489), with the ``np`` tag of RFC 9091: which domain a message
claims to come from, what that domain asks receivers to do with mail that
fails authentication, and whether this message fails.

Theory of operation
===================

A DMARC check is four steps, one function each, so that a caller can log,
cache or short-cut any of them:

1. :func:`from_domain` reads the author domain from the header section
   (RFC 7489 section 6.6.1): the domain of the one address of the one
   ``From`` field.  Anything else raises a :class:`FromDomainError`; the
   caller records ``dmarc=permerror`` and, by default, rejects the message
   (see :func:`bad_from_verdict`).
2. :func:`fetch_policy` looks the policy record up in the DNS (RFC 7489
   section 6.6.3): ``_dmarc.<author domain>``, then
   ``_dmarc.<organizational domain>``.  It is a sans-IO check (a
   generator of :class:`txmail.dnsdata.Question`), run with
   :func:`txmail.dnsdata.run_sync` in tests and
   :func:`txmail.resolver.drive` in the server.
3. The caller runs SPF and DKIM (elsewhere) and passes their results.
4. :func:`evaluate` combines them: identifier alignment (RFC 7489 section
   3.1), the policy that applies (``p``, ``sp`` or ``np``), ``pct``
   sampling (section 6.6.4), and gives a :class:`DMARCVerdict` with the
   result for Authentication-Results and the disposition.

The organizational domain (RFC 7489 section 3.2) comes from the Public
Suffix List shipped by the ``publicsuffixlist`` package (the ``policy``
extra), private section included, as RFC 7489 uses the whole list.

Choices where the RFCs leave room
=================================

* Tag syntax follows RFC 7489 section 6.3: "Syntax errors in the
  remainder of the record SHOULD be discarded in favor of default values
  (if any) or ignored outright" -- a bad ``pct``, ``adkim``, ``fo``, ``np``
  ... is replaced by its default and named in
  :attr:`DMARCRecord.ignored`.  A tag given twice makes the whole record
  invalid, as in DKIM's tag lists that DMARC's syntax comes from (RFC 6376
  section 3.2: "if a tag name does occur more than once, the entire
  tag-list is invalid").  ``p`` may come anywhere after ``v``: section
  6.3 asks only that "the "v" and "p" tags MUST be present and MUST appear
  in that order", though section 6.4's ABNF puts ``p`` second.
* A record without a valid ``p`` (or with an invalid ``sp``) but with a
  valid ``rua`` is read as ``p=none`` (section 6.6.3 step 6); one without
  either is malformed: the result is ``permerror`` (section 11.2: "such as
  encountering a syntactically incorrect DMARC record") and no policy is
  applied.
* Several DMARC records: no policy (section 6.6.3 step 5), result
  ``none``.
* A DNS failure (``ERROR`` answer) gives ``temperror``; the caller may
  defer the message (RFC 7489 leaves DNS errors to the receiver).
* A ``From`` field with addresses in different domains is an error
  (``permerror``, see :func:`bad_from_verdict`), where section 6.6.1 says
  to evaluate each domain and apply the strictest failing policy: a
  deliberate departure, since such mail is rare and rejecting it is at
  least as strict.  Several addresses in one domain are that domain: the
  per-domain evaluation would give the same answer.  Messages without
  exactly one ``From`` field are "outside the scope" of section 6.6.1;
  they are errors too.
* ``np`` (RFC 9091 section 3.2) applies only when the caller knows the
  author domain does not exist (``from_domain_exists=False``, see
  :func:`domain_exists`), for a subdomain whose record came from the
  organizational domain; without ``np``, ``sp`` then ``p`` apply.
* The organizational domain of a domain that is itself a public suffix is
  the domain itself.

TODO(RFC 9989): DMARCbis obsoletes RFC 7489: policy discovery by a DNS
tree walk instead of the Public Suffix List, ``psd=`` and ``t=`` tags,
``pct`` made historic.  This module implements RFC 7489 with RFC 9091's
``np``.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from txmail.dnsdata import Answer, DNSStatus, Question, Resolving
from txmail.errors import TxMailError
from txmail.mime import field_addresses
from txmail.policy.authres import AuthResult

__all__ = [
    "Alignment",
    "DMARCRecord",
    "DMARCResult",
    "DMARCVerdict",
    "FromDomainError",
    "LookupStatus",
    "MalformedRecord",
    "MissingFrom",
    "MultipleAuthors",
    "MultipleFrom",
    "NoAuthorDomain",
    "Policy",
    "PolicyLookup",
    "bad_from_verdict",
    "domain_exists",
    "evaluate",
    "fetch_policy",
    "from_domain",
    "is_dmarc_record",
    "organizational_domain",
    "parse_record",
]


class Policy(enum.StrEnum):
    """A requested policy (``p``, ``sp``, ``np``; RFC 7489 section 6.3), and a disposition."""

    NONE = "none"
    QUARANTINE = "quarantine"
    REJECT = "reject"


class Alignment(enum.StrEnum):
    """Identifier alignment mode (``adkim``, ``aspf``; RFC 7489 section 3.1)."""

    RELAXED = "r"
    STRICT = "s"


class DMARCResult(enum.StrEnum):
    """The DMARC result, as written in Authentication-Results (RFC 7489 section 11.2)."""

    PASS = "pass"
    FAIL = "fail"
    NONE = "none"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


class LookupStatus(enum.Enum):
    """What policy discovery (RFC 7489 section 6.6.3) found."""

    #: One DMARC record.
    FOUND = "found"
    #: No DMARC record at the author domain nor at its organizational domain.
    NONE = "none"
    #: Several DMARC records at the same name (step 5: no DMARC processing).
    MULTIPLE = "multiple"
    #: One record starting with ``v=DMARC1`` that is not valid.
    MALFORMED = "malformed"
    #: The DNS gave no usable answer.
    TEMPERROR = "temperror"


class MalformedRecord(TxMailError, ValueError):
    """A TXT record is not a valid DMARC record (RFC 7489 section 6.4)."""


class FromDomainError(TxMailError, ValueError):
    """
    The header section has no single author domain (RFC 7489 section
    6.6.1): the caller records ``dmarc=permerror`` (see
    :func:`bad_from_verdict`).
    """


class MissingFrom(FromDomainError):
    """The header section has no ``From`` field."""


class MultipleFrom(FromDomainError):
    """The header section has more than one ``From`` field (RFC 5322 section 3.6 allows one)."""


class MultipleAuthors(FromDomainError):
    """The ``From`` field holds addresses in more than one domain."""


class NoAuthorDomain(FromDomainError):
    """The ``From`` field holds no address, or its address has no usable domain name."""


# ---------------------------------------------------------------------------
# Organizational domain (RFC 7489 section 3.2)


@functools.cache
def _psl() -> Any:
    """The one shared PublicSuffixList, built on first use (parsing the list takes a moment)."""
    try:
        from publicsuffixlist import PublicSuffixList
    except ImportError as e:
        raise ImportError("DMARC needs the publicsuffixlist package: install txmail[policy]") from e
    # The whole list, private section included (RFC 7489 section 3.2 uses
    # the list as published); an unknown TLD is a public suffix (the "*"
    # default rule).
    return PublicSuffixList(accept_unknown=True, only_icann=False)


def _normal(domain: str) -> str:
    return domain.lower().rstrip(".")


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """
    The organizational domain of *domain* (RFC 7489 section 3.2).

    The longest matching Public Suffix List entry (wildcards and exceptions
    included, private section included) is the public suffix; the
    organizational domain is it plus one label: ``example.co.uk`` for
    ``www.example.co.uk``, ``bar.github.io`` for ``foo.bar.github.io``.  A
    domain that is itself a public suffix is its own organizational
    domain.  Case does not matter and a final dot is ignored; the answer is
    lower case.

    Raises:
        ImportError: the ``publicsuffixlist`` package is not installed
            (install ``txmail[policy]``).
    """
    name = _normal(domain)
    private = _psl().privatesuffix(name)
    return private if private is not None else name


# ---------------------------------------------------------------------------
# The record (RFC 7489 section 6.3, 6.4)


@dataclass(frozen=True)
class DMARCRecord:
    """
    A parsed DMARC record (RFC 7489 section 6.3, RFC 9091 section 3.2).

    Attributes:
        policy: ``p``, the requested policy for the domain.
        subdomain_policy: ``sp``, for subdomains (``None``: ``p`` applies).
        nonexistent_policy: ``np``, for non-existent subdomains (``None``:
            ``sp``, else ``p``, applies).
        adkim: DKIM alignment mode (default relaxed).
        aspf: SPF alignment mode (default relaxed).
        pct: percentage of failing mail the policy is applied to (0-100).
        rua: aggregate report URIs, as written.
        ruf: failure report URIs, as written.
        fo: failure reporting options (``"0"``, ``"1"``, ``"d"``, ``"s"``).
        rf: failure report formats.
        ri: aggregate report interval, seconds.
        policy_assumed: ``p`` was missing or invalid (or ``sp`` invalid)
            and the record is read as ``p=none`` because it has a valid
            ``rua`` (section 6.6.3 step 6).
        ignored: tags whose values were invalid and were replaced by
            their defaults (section 6.3).
    """

    policy: Policy
    subdomain_policy: Policy | None = None
    nonexistent_policy: Policy | None = None
    adkim: Alignment = Alignment.RELAXED
    aspf: Alignment = Alignment.RELAXED
    pct: int = 100
    rua: tuple[str, ...] = ()
    ruf: tuple[str, ...] = ()
    fo: tuple[str, ...] = ("0",)
    rf: tuple[str, ...] = ("afrf",)
    ri: int = 86400
    policy_assumed: bool = False
    ignored: tuple[str, ...] = ()


_VERSION_RE = re.compile(rb"^[ \t\r\n]*[vV][ \t\r\n]*=[ \t\r\n]*DMARC1[ \t\r\n]*(;|$)")
_TAG_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
# RFC 7489 section 6.4: dmarc-uri = URI [ "!" 1*DIGIT [ "k" / "m" / "g" / "t" ] ]
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!]+(?:![0-9]+[kmgtKMGT]?)?")
_FO_RE = re.compile(r"[01ds](?:[ \t]*:[ \t]*[01ds])*")
_WSP_RE = re.compile(r"[ \t\r\n]+")
_INVALID = object()  # a tag value that does not follow its grammar


def is_dmarc_record(txt: bytes) -> bool:
    """Whether a TXT record starts with ``v=DMARC1`` (RFC 7489 section 6.6.3 step 2)."""
    return _VERSION_RE.match(txt) is not None


def _uris(value: str) -> tuple[tuple[str, ...], bool]:
    """The URIs of ``rua``/``ruf``, and whether every one is syntactically valid."""
    uris = tuple(u.strip() for u in value.split(",") if u.strip())
    return uris, bool(uris) and all(_URI_RE.fullmatch(u) for u in uris)


def parse_record(txt: bytes) -> DMARCRecord:
    """
    Parse a DMARC TXT record (RFC 7489 section 6.4; ``np`` from RFC 9091).

    The record is a DKIM-style tag list (``tag=value`` separated by ``;``).
    It must start with ``v=DMARC1``.  ``p`` is required; a record without a
    valid ``p``, or with an invalid ``sp``, is read as ``p=none`` when its
    ``rua`` holds a valid URI (section 6.6.3 step 6), else it is malformed.
    Other tags with invalid values take their defaults and are named in
    :attr:`DMARCRecord.ignored` (section 6.3); unknown tags are ignored.
    Tag names and the policy and alignment keywords are case-insensitive
    (ABNF strings); ``DMARC1`` is case-sensitive (``%x`` in section 6.4).

    Args:
        txt: one TXT record, its character-strings concatenated.

    Raises:
        MalformedRecord: not ``v=DMARC1`` first, a tag given twice, or
            neither a valid ``p`` nor a valid ``rua``.
    """
    if not is_dmarc_record(txt):
        raise MalformedRecord("the record does not start with v=DMARC1")
    text = txt.decode("latin-1")
    tags: dict[str, str] = {}
    ignored: list[str] = []
    for n, spec in enumerate(text.split(";")):
        if not spec.strip(" \t\r\n"):
            continue  # an empty tag-spec, or the final ";"
        name, eq, value = spec.partition("=")
        name = name.strip(" \t\r\n").lower()
        if not eq or not _TAG_NAME_RE.fullmatch(name):
            ignored.append(name or spec.strip())
            continue
        if name in tags:
            raise MalformedRecord(f"tag {name!r} occurs twice")
        if n == 0:
            name = "v"  # checked by is_dmarc_record
        tags[name] = _WSP_RE.sub(" ", value.strip(" \t\r\n"))

    def keyword(tag: str, kind: type[enum.StrEnum]) -> Any:
        """The tag's value as a *kind*, ``None`` when absent, ``_INVALID`` when not valid."""
        value = tags.get(tag)
        if value is None:
            return None
        try:
            return kind(value.lower())
        except ValueError:
            return _INVALID

    policy = keyword("p", Policy)
    sp = keyword("sp", Policy)
    np = keyword("np", Policy)
    rua, rua_valid = _uris(tags.get("rua", ""))
    assumed = False
    if policy is None or policy is _INVALID or sp is _INVALID:
        if not rua_valid:
            raise MalformedRecord("no valid p= tag and no valid rua= tag")
        # RFC 7489 section 6.6.3 step 6: "act as if a record containing a
        # valid "v" tag and "p=none" was retrieved".
        policy, sp, np, assumed = Policy.NONE, None, None, True
    elif np is _INVALID:
        ignored.append("np")
        np = None

    def alignment(tag: str) -> Alignment:
        value = keyword(tag, Alignment)
        if value is _INVALID:
            ignored.append(tag)
            return Alignment.RELAXED
        return value or Alignment.RELAXED

    pct = 100
    if "pct" in tags:
        if re.fullmatch(r"[0-9]{1,3}", tags["pct"]) and int(tags["pct"]) <= 100:
            pct = int(tags["pct"])
        else:
            ignored.append("pct")
    ri = 86400
    if "ri" in tags:
        if re.fullmatch(r"[0-9]{1,10}", tags["ri"]):
            ri = int(tags["ri"])
        else:
            ignored.append("ri")
    fo: tuple[str, ...] = ("0",)
    if "fo" in tags:
        if _FO_RE.fullmatch(tags["fo"]):
            fo = tuple(o.strip() for o in tags["fo"].split(":"))
        else:
            ignored.append("fo")
    rf: tuple[str, ...] = ("afrf",)
    if "rf" in tags:
        formats = tuple(f.strip().lower() for f in tags["rf"].split(":"))
        if all(_TAG_NAME_RE.fullmatch(f) for f in formats):
            rf = formats
        else:
            ignored.append("rf")
    if "rua" in tags and not rua_valid:
        ignored.append("rua")
    ruf, ruf_valid = _uris(tags.get("ruf", ""))
    if "ruf" in tags and not ruf_valid:
        ignored.append("ruf")
    return DMARCRecord(
        policy=policy,
        subdomain_policy=sp,
        nonexistent_policy=np,
        adkim=alignment("adkim"),
        aspf=alignment("aspf"),
        pct=pct,
        rua=rua,
        ruf=ruf,
        fo=fo,
        rf=rf,
        ri=ri,
        policy_assumed=assumed,
        ignored=tuple(ignored),
    )


# ---------------------------------------------------------------------------
# Policy discovery (RFC 7489 section 6.6.3)


@dataclass(frozen=True)
class PolicyLookup:
    """
    The outcome of :func:`fetch_policy`.

    Attributes:
        status: what was found.
        from_domain: the author domain looked up (lower case).
        org_domain: its organizational domain.
        record: the record (``FOUND`` only).
        domain: the domain whose ``_dmarc`` name held the record(s), for
            ``FOUND``, ``MULTIPLE`` and ``MALFORMED``; else ``None``.
        at_org_domain: the record came from the organizational domain, not
            the author domain: ``sp`` and ``np`` may apply.
        error: for ``MALFORMED`` and ``TEMPERROR``, what went wrong (for
            logs).
    """

    status: LookupStatus
    from_domain: str
    org_domain: str
    record: DMARCRecord | None = None
    domain: str | None = None
    at_org_domain: bool = False
    error: str = ""


def _records_at(domain: str) -> Resolving[Answer | list[bytes]]:
    """The TXT records at ``_dmarc.<domain>`` starting with ``v=DMARC1``, or the failed answer."""
    answer = yield Question(f"_dmarc.{domain}", "TXT")
    if answer.failed:
        return answer
    return [r for r in answer.records if isinstance(r, bytes) and is_dmarc_record(r)]


def fetch_policy(from_domain: str) -> Resolving[PolicyLookup]:
    """
    Find the DMARC policy of an author domain (RFC 7489 section 6.6.3).

    Asks ``_dmarc.<from_domain>`` for TXT records and keeps those starting
    with ``v=DMARC1``; if none is left, asks ``_dmarc.<organizational
    domain>`` (when it is a different name).  More than one record at the
    name where records were found means no policy (step 5).  A DNS failure
    at either name is ``TEMPERROR``.

    Args:
        from_domain: the author domain, as :func:`from_domain` gives it.

    Returns:
        a sans-IO check (yields :class:`txmail.dnsdata.Question`) whose
        result is a :class:`PolicyLookup`.
    """
    author = _normal(from_domain)
    org = organizational_domain(author)
    candidates = [(author, False)] + ([(org, True)] if org != author else [])
    for domain, at_org in candidates:
        found = yield from _records_at(domain)
        if isinstance(found, Answer):
            return PolicyLookup(
                LookupStatus.TEMPERROR, author, org, domain=domain, at_org_domain=at_org, error=found.error
            )
        if not found:
            continue
        if len(found) > 1:
            return PolicyLookup(LookupStatus.MULTIPLE, author, org, domain=domain, at_org_domain=at_org)
        try:
            record = parse_record(found[0])
        except MalformedRecord as e:
            return PolicyLookup(
                LookupStatus.MALFORMED, author, org, domain=domain, at_org_domain=at_org, error=str(e)
            )
        return PolicyLookup(LookupStatus.FOUND, author, org, record, domain, at_org)
    return PolicyLookup(LookupStatus.NONE, author, org)


def domain_exists(domain: str) -> Resolving[bool | None]:
    """
    Whether *domain* exists in RFC 9091's sense, for ``np``.

    RFC 9091 section 2: a non-existent domain is one "for which there is
    an NXDOMAIN or NODATA response for A, AAAA, and MX records".  Asks the
    three types; stops at the first record found.

    Returns:
        a sans-IO check whose result is ``True`` (a record of one of the
        types exists), ``False`` (all three are NXDOMAIN or NODATA) or
        ``None`` (a DNS failure left the answer unknown).
    """
    unknown = False
    for rdtype in ("A", "AAAA", "MX"):
        answer = yield Question(domain, rdtype)
        if answer.status is DNSStatus.OK:
            return True
        unknown = unknown or answer.failed
    return None if unknown else False


# ---------------------------------------------------------------------------
# The author domain (RFC 7489 section 6.6.1)

_LDH_LABEL_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _domain_name(host: str) -> str | None:
    """*host* (latin-1-decoded octets) as a lower-case A-label domain name, or ``None``."""
    try:
        name = host.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return None
    name = name.strip().rstrip(".").lower()
    # Too long for a domain name whatever it encodes to (an A-label is never
    # shorter than its U-label): refused before IDNA's costly nameprep.
    if not name or name.startswith("[") or len(name) > 253:
        return None
    if not name.isascii():
        # RFC 7489 section 6.6.1: "If the domain is a U-label, the domain
        # name MUST be converted to an A-label".
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    labels = name.split(".")
    if len(name) > 253 or not all(_LDH_LABEL_RE.fullmatch(label) for label in labels):
        return None
    return name


def from_domain(header_section: bytes) -> str:
    """
    The author domain of a message (RFC 7489 section 6.6.1): the domain of
    the address in its one ``From`` field, lower case, as an A-label.

    Header fields are read with :func:`txmail.mime.field_addresses` (the
    project's forgiving RFC 5322 parser: comments, quoted display names,
    groups, obsolete routes).  Several addresses are accepted only when they
    share one domain (see the module notes).

    Args:
        header_section: the message's header fields (the body may follow).

    Raises:
        MissingFrom: no ``From`` field.
        MultipleFrom: more than one ``From`` field.
        MultipleAuthors: addresses in more than one domain.
        NoAuthorDomain: no address, or an address without a domain name (no
            ``@``, a domain literal, not a valid name).
    """
    fields = field_addresses(header_section, "from")
    if not fields:
        raise MissingFrom("no From field")
    if len(fields) > 1:
        raise MultipleFrom(f"{len(fields)} From fields")
    # The addresses of the one From field as (name, adl, mailbox, host);
    # group markers have host None.
    addresses = fields[0]
    hosts = [a[3] for a in addresses if a[2] is not None and a[3] is not None]
    if not hosts:
        raise NoAuthorDomain("the From field holds no address")
    domains = set()
    for host in hosts:
        name = _domain_name(host)
        if name is None:
            raise NoAuthorDomain("an address of the From field has no domain name")
        domains.add(name)
    if len(domains) > 1:
        raise MultipleAuthors(f"the From field names {len(domains)} domains")
    return domains.pop()


# ---------------------------------------------------------------------------
# Evaluation (RFC 7489 sections 3.1, 6.6.2, 6.6.4)


@dataclass(frozen=True)
class DMARCVerdict:
    """
    The outcome of a DMARC check.

    Attributes:
        result: for Authentication-Results (RFC 7489 section 11.2).
        disposition: what to do with the message: ``none`` (deliver),
            ``quarantine`` (junk folder) or ``reject``.
        from_domain: the author domain, when there was one.
        policy: the requested policy that applied (``p``, ``sp`` or
            ``np``), before ``pct`` sampling; ``None`` without a record.
        record: the policy record, when one was found.
        record_domain: where the record was found.
        spf_aligned: an SPF pass was aligned with the author domain.
        dkim_aligned: a DKIM pass was aligned with the author domain.
        sampled_out: the message failed, but the ``pct`` roll lowered the
            policy one step (section 6.6.4).
        reason: why there is no pass (for logs and ``reason=``), else ``""``.
    """

    result: DMARCResult
    disposition: Policy
    from_domain: str | None = None
    policy: Policy | None = None
    record: DMARCRecord | None = None
    record_domain: str | None = None
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False
    reason: str = ""

    @property
    def properties(self) -> tuple[tuple[str, str, str], ...]:
        """
        Authentication-Results properties: ``header.from`` (RFC 7489
        section 11.2) and ``policy.dmarc`` (the requested policy that
        applied), where known.
        """
        props = []
        if self.from_domain is not None:
            props.append(("header", "from", self.from_domain))
        if self.policy is not None:
            props.append(("policy", "dmarc", str(self.policy)))
        return tuple(props)

    @property
    def comment(self) -> str | None:
        """``p=... sp=... dis=...`` for an Authentication-Results comment, when there was a record."""
        if self.record is None:
            return None
        sp = self.record.subdomain_policy or self.record.policy
        return f"p={self.record.policy} sp={sp} dis={self.disposition}"

    def auth_result(self) -> AuthResult:
        """This verdict as one Authentication-Results ``resinfo``."""
        return AuthResult("dmarc", str(self.result), properties=self.properties, comment=self.comment)


def _aligned(mode: Alignment, author: str, author_org: str, identifier: str) -> bool:
    """RFC 7489 section 3.1: strict is an exact match, relaxed the same organizational domain."""
    ident = _normal(identifier)
    if not ident:
        return False
    if mode is Alignment.STRICT:
        return ident == author
    return ident == author or organizational_domain(ident) == author_org


def _lower(policy: Policy) -> Policy:
    """The policy one step weaker, for mail outside the ``pct`` sample (RFC 7489 section 6.6.4)."""
    return Policy.QUARANTINE if policy is Policy.REJECT else Policy.NONE


def evaluate(
    from_domain: str,
    lookup: PolicyLookup,
    *,
    spf: tuple[str, str] | None,
    dkim: Sequence[tuple[str, str]],
    pct_roll: int,
    from_domain_exists: bool | None = None,
) -> DMARCVerdict:
    """
    The DMARC verdict on a message (RFC 7489 sections 3.1, 6.6.2, 6.6.4).

    DMARC passes when SPF passed for a domain aligned with the author
    domain, or any DKIM signature passed for an aligned ``d=`` domain
    (section 4.2).  Alignment (section 3.1) is strict (the same name) or
    relaxed (the same organizational domain), per ``aspf`` and ``adkim``.

    On failure the requested policy is ``p``; for a subdomain of the
    organizational domain whose record was found there, ``sp`` (section
    6.3), or ``np`` when the author domain is known not to exist (RFC 9091
    section 3.2); each defaults to the one before.  With ``pct`` below 100
    the policy is enacted only when ``pct_roll < pct``; otherwise
    ``reject`` becomes ``quarantine`` and ``quarantine`` becomes ``none``
    (section 6.6.4).

    Without a usable record the result is ``none`` (no record, several
    records), ``temperror`` (DNS failure) or ``permerror`` (malformed
    record), with disposition ``none``.

    Args:
        from_domain: the author domain (:func:`from_domain`).
        lookup: what :func:`fetch_policy` found for it.
        spf: ``(result, domain)`` of the SPF check (the MAIL FROM domain,
            or the HELO name for a null sender, RFC 7489 section 3.1.2), or
            ``None`` if SPF was not checked.
        dkim: ``(result, d= domain)`` of each DKIM signature checked.
        pct_roll: a random integer in ``[0, 100)`` (``random.randrange(100)``),
            compared with ``pct``.
        from_domain_exists: whether the author domain exists (RFC 9091
            section 2, :func:`domain_exists`); ``None`` when unknown, and
            then ``np`` is not applied.

    Raises:
        ValueError: *pct_roll* is outside ``[0, 100)``.
    """
    if not 0 <= pct_roll < 100:
        raise ValueError(f"pct_roll must be in [0, 100), not {pct_roll!r}")
    author = _normal(from_domain)
    if lookup.status is LookupStatus.TEMPERROR:
        return DMARCVerdict(
            DMARCResult.TEMPERROR, Policy.NONE, author, reason="DNS failure looking up the DMARC record"
        )
    if lookup.status is LookupStatus.MALFORMED:
        return DMARCVerdict(
            DMARCResult.PERMERROR,
            Policy.NONE,
            author,
            record_domain=lookup.domain,
            reason=f"malformed DMARC record: {lookup.error}",
        )
    if lookup.status is LookupStatus.MULTIPLE:
        return DMARCVerdict(
            DMARCResult.NONE, Policy.NONE, author, record_domain=lookup.domain, reason="several DMARC records"
        )
    record = lookup.record
    if lookup.status is not LookupStatus.FOUND or record is None:
        return DMARCVerdict(DMARCResult.NONE, Policy.NONE, author, reason="no DMARC record")

    author_org = organizational_domain(author)
    spf_aligned = (
        spf is not None and spf[0].lower() == "pass" and _aligned(record.aspf, author, author_org, spf[1])
    )
    dkim_aligned = any(
        result.lower() == "pass" and _aligned(record.adkim, author, author_org, domain)
        for result, domain in dkim
    )

    policy = record.policy
    if lookup.at_org_domain:
        policy = record.subdomain_policy or record.policy
        if from_domain_exists is False and record.nonexistent_policy is not None:
            policy = record.nonexistent_policy
    common: dict[str, Any] = {
        "from_domain": author,
        "policy": policy,
        "record": record,
        "record_domain": lookup.domain,
        "spf_aligned": spf_aligned,
        "dkim_aligned": dkim_aligned,
    }
    if spf_aligned or dkim_aligned:
        return DMARCVerdict(DMARCResult.PASS, Policy.NONE, **common)
    disposition = policy
    sampled_out = False
    if policy is not Policy.NONE and pct_roll >= record.pct:
        disposition, sampled_out = _lower(policy), True
    return DMARCVerdict(
        DMARCResult.FAIL,
        disposition,
        sampled_out=sampled_out,
        reason="no aligned SPF or DKIM pass",
        **common,
    )


def bad_from_verdict(error: FromDomainError, *, disposition: Policy = Policy.REJECT) -> DMARCVerdict:
    """
    The verdict for a message whose author domain could not be found
    (:func:`from_domain` raised *error*): ``permerror``.

    RFC 7489 section 6.6.1 leaves the handling of messages without exactly
    one author domain to the receiver.  Such messages are how a sender
    shows a reader one address and DMARC another, so the default
    disposition is ``reject``; pass ``disposition=Policy.NONE`` to only
    record the error.
    """
    return DMARCVerdict(DMARCResult.PERMERROR, disposition, reason=str(error))
