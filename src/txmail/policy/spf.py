"""
SPF, the Sender Policy Framework (RFC 7208): may this IP address send mail
for this domain?

Theory of operation
-------------------
:func:`check_host` is RFC 7208 section 4's ``check_host()`` written as a
sans-IO check (see :mod:`txmail.dnsdata`): a generator that yields
:class:`~txmail.dnsdata.Question` and is sent the
:class:`~txmail.dnsdata.Answer`, and returns an :class:`SPFOutcome`::

    outcome = yield from check_mail_from(ip, mail_from, helo)   # in a check
    outcome = await drive(check_mail_from(ip, mail_from, helo), resolver)
    outcome = run_sync(check_mail_from(ip, mail_from, helo), DictAnswers(table))

One evaluation, in order:

1. the domain must be a multi-label domain name with valid label lengths
   and a valid top label, else ``none`` (section 4.3);
2. its TXT records are fetched; exactly one may start with ``v=spf1``
   (case-insensitively, then a space or the end), several are
   ``permerror``, none is ``none`` (section 4.5);
3. the whole record is parsed before anything is evaluated, so a syntax
   error anywhere in it is ``permerror`` (section 4.6);
4. the mechanisms are tried left to right; the first that matches gives its
   qualifier's result; when none matches, ``redirect=`` (if any) is
   followed, else the result is ``neutral`` (section 4.7);
5. on ``fail``, the ``exp=`` explanation of the record that failed is
   fetched and expanded (section 6.2); problems with it only drop it.

Records are parsed once per distinct text and kept (an LRU cache of the
parsed, immutable form): the same few hundred records answer most mail, so
the evaluator in the reactor thread does no repeated parsing.  Macro
strings are compiled to tokens at parse time; expanding one is a single
pass.

Invariants and policies
-----------------------
* Limits (section 4.6.4): the ``include``, ``a``, ``mx``, ``ptr`` and
  ``exists`` mechanisms and the ``redirect`` modifier each count one DNS
  lookup when evaluated; the 11th is ``permerror`` (``max_lookups``).
  "void lookups" (NODATA or NXDOMAIN) of the ``a``, ``mx`` and ``exists``
  mechanisms count too; the 3rd is ``permerror`` (``max_void_lookups``).
  An ``mx`` with more than 10 MX records is ``permerror``; the ``ptr``
  mechanism and the ``%{p}`` macro look at the first 10 PTR names only.
  The ``exp=`` lookup counts against neither limit.
* DNS errors (``ERROR`` answers) are ``temperror``, except in ``ptr`` and
  ``%{p}`` (section 5.5: the name is skipped) and in ``exp=`` (ignored).
  The elapsed-time limit of section 4.6.4 is the resolver's: its
  timeouts turn into ``ERROR`` answers.
* An IPv4-mapped IPv6 client (``::ffff:192.0.2.1``) is an IPv4 client
  (section 5): it matches ``ip4`` and A records, never ``ip6``.
* The explanation is for the SMTP client; control characters in it are
  replaced by ``?`` so that a macro cannot inject reply lines.

Deviations and choices where RFC 7208 leaves room
-------------------------------------------------
* A target name that cannot be a DNS name after macro expansion (an empty
  label, a label over 63 octets) is not looked up: it answers like
  NXDOMAIN (so the mechanism does not match, and it is a void lookup).
  Section 4.8 leaves this undefined; the test suite allows ``fail`` or
  ``permerror``.
* The PTR lookup of ``ptr`` and the address lookups that validate PTR names
  do not count as void lookups: the domain owner does not control the
  client's reverse zone.  Neither do the address lookups of MX hosts (the
  MX lookup itself does).
* ``%{p}`` does not count against the 10 DNS lookups (it is not a
  mechanism); its lookups are made once per evaluation and shared with
  ``ptr``.
* ``%{i}`` of an IPv6 client is lower-case nibbles, as in section 7.4's
  example (the openspf test suite's one IPv6 explanation expects
  upper case, pyspf's output; DNS names are case-insensitive).
* ``%{t}`` is the ``now`` given by the caller (this module reads no
  clock), ``0`` when none was given.  ``%{r}`` is ``unknown`` when no
  ``receiver`` is given.
* An MX exchange of ``""`` or ``.`` (null MX, RFC 7505) is skipped without
  an address lookup.
* ``exp=`` with an empty domain-spec is ``permerror`` (the erratum chosen
  for section 6.2, as in the test suite); problems found while fetching or
  expanding the explanation only drop it.
* A domain given to :func:`check_host` in Unicode (SMTPUTF8) is converted
  to A-labels (IDNA 2003, Python's ``idna`` codec) before anything else;
  one that cannot be converted is not a valid domain (``none``).

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

from txmail.dnsdata import Answer, DNSStatus, Question, Resolving, reverse_name

__all__ = [
    "MAX_DNS_LOOKUPS",
    "MAX_MX_NAMES",
    "MAX_PTR_NAMES",
    "MAX_VOID_LOOKUPS",
    "SPFOutcome",
    "SPFResult",
    "check_helo",
    "check_host",
    "check_mail_from",
    "format_comment",
]

#: RFC 7208 section 4.6.4: "SPF implementations MUST limit the total number of
#: those terms to 10 during SPF evaluation".
MAX_DNS_LOOKUPS = 10
#: RFC 7208 section 4.6.4: "SPF implementations SHOULD limit "void lookups" to
#: two."
MAX_VOID_LOOKUPS = 2
#: MX records one ``mx`` mechanism may use; more is ``permerror``.
MAX_MX_NAMES = 10
#: PTR names one ``ptr`` mechanism or ``%{p}`` looks at; the rest are ignored.
MAX_PTR_NAMES = 10

_MAX_NAME = 253
_MAX_LABEL = 63
_MAX_REASON_TERM = 80


class SPFResult(enum.Enum):
    """An SPF result (RFC 7208 section 2.6); values as Authentication-Results writes them."""

    NONE = "none"
    NEUTRAL = "neutral"
    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    TEMPERROR = "temperror"
    PERMERROR = "permerror"


@dataclass(frozen=True, slots=True)
class SPFOutcome:
    """
    What one SPF check found.

    Attributes:
        result: the :class:`SPFResult`.
        domain: the domain whose policy was checked (the one asked about,
            not an ``include`` or ``redirect`` target).
        mechanism: the directive that decided the result, as written in its
            record (``"-all"``, ``"include:_spf.example.com"``), or ``""``
            when none did (``neutral`` by default, ``none``, errors).
        reason: one line for logs and for the Authentication-Results
            ``reason`` or the Received-SPF comment (printable ASCII).
        explanation: for ``fail`` only, the ``exp=`` text expanded (RFC 7208
            section 6.2), when the record has one and it could be fetched;
            else ``None`` (the caller uses its default text).
        lookups: DNS-querying terms evaluated (section 4.6.4, at most 10).
        void_lookups: of their lookups, those answered NODATA or NXDOMAIN.
    """

    result: SPFResult
    domain: str
    mechanism: str = ""
    reason: str = ""
    explanation: str | None = None
    lookups: int = 0
    void_lookups: int = 0


def format_comment(outcome: SPFOutcome) -> str:
    """One line describing *outcome*, for logs (``spf=pass domain=example.com (...)``)."""
    return (
        f"spf={outcome.result.value} domain={outcome.domain} ({outcome.reason}; "
        f"{outcome.lookups} DNS lookups, {outcome.void_lookups} void)"
    )


# --- parsing -----------------------------------------------------------------


class _SyntaxError(ValueError):
    """A record, domain-spec or macro-string that does not parse (-> permerror)."""


@dataclass(frozen=True, slots=True)
class _Macro:
    """One ``%{...}`` macro-expand, compiled."""

    letter: str  # lower case
    escape: bool  # the letter was upper case: URL-escape the value (section 7.3)
    keep: int  # rightmost parts kept; 0 for all
    reverse: bool
    splitter: re.Pattern[str] | None  # None: split on "." only


@dataclass(frozen=True, slots=True)
class _MacroString:
    """A macro-string compiled to literal text and :class:`_Macro` tokens."""

    tokens: tuple[str | _Macro, ...]
    uses_ptr: bool  # has %{p}: needs the validated names first


_DELIMITERS = ".-+,/_="
#: macro-expand / macro-literal / SP (explain-string only) / anything else.
_MACRO_TOKEN = re.compile(
    r"%\{([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)\}|%([%_-])|([\x21-\x24\x26-\x7e]+)|( +)|(.)", re.S
)
_ESCAPES = {"%": "%", "_": " ", "-": "%20"}
_LETTERS = frozenset("slodipvh")
_EXPLAIN_LETTERS = _LETTERS | frozenset("crt")


def _macro_string(text: str, *, explain: bool = False) -> tuple[_MacroString, bool]:
    """
    Compile a macro-string (RFC 7208 section 7.1); also say whether it ends
    in a macro-expand (what ``domain-end`` needs).

    .. code-block:: abnf

        macro-string   = *( macro-expand / macro-literal )
        macro-expand   = ( "%{" macro-letter transformers *delimiter "}" )
                         / "%%" / "%_" / "%-"
        macro-literal  = %x21-24 / %x26-7E
        macro-letter   = "s" / "l" / "o" / "d" / "i" / "p" / "h" /
                         "c" / "r" / "t" / "v"
        transformers   = *DIGIT [ "r" ]
        delimiter      = "." / "-" / "+" / "," / "/" / "_" / "="
        explain-string = *( macro-string / SP )

    With *explain*, it is an explain-string: spaces are allowed, and so are
    the letters ``c``, ``r`` and ``t`` ("allowed only in "exp" text").

    Raises:
        _SyntaxError: it is not one.
    """
    letters = _EXPLAIN_LETTERS if explain else _LETTERS
    tokens: list[str | _Macro] = []
    ends_in_macro = False
    uses_ptr = False
    for m in _MACRO_TOKEN.finditer(text):
        letter, digits, reverse, delimiters, escape, literal, spaces, bad = m.groups()
        if bad is not None or (spaces is not None and not explain):
            if bad == "%":
                raise _SyntaxError(f"'%' not followed by '{{', '%', '_' or '-' in {_show(text)}")
            raise _SyntaxError(f"invalid character {_show(bad or spaces)} in {_show(text)}")
        if literal is not None or spaces is not None:
            value = literal if literal is not None else spaces
            if tokens and isinstance(tokens[-1], str):
                tokens[-1] += value
            else:
                tokens.append(value)
            ends_in_macro = False
            continue
        ends_in_macro = True
        if escape is not None:
            value = _ESCAPES[escape]
            if tokens and isinstance(tokens[-1], str):
                tokens[-1] += value
            else:
                tokens.append(value)
            continue
        lower = letter.lower()
        if lower not in letters:
            raise _SyntaxError(f"macro letter {letter!r} not allowed here: {_show(text)}")
        keep = 0
        if digits:
            # "If a DIGIT is specified, the value MUST be nonzero." (section 7.3)
            if not digits.strip("0"):
                raise _SyntaxError(f"macro transformer 0 in {_show(text)}")
            keep = int(digits) if len(digits) < 10 else 1_000_000_000
        splitter = None
        if delimiters and delimiters != ".":
            splitter = re.compile("[" + re.escape("".join(sorted(set(delimiters)))) + "]")
        uses_ptr = uses_ptr or lower == "p"
        tokens.append(_Macro(lower, letter != lower, keep, bool(reverse), splitter))
    return _MacroString(tuple(tokens), uses_ptr), ends_in_macro


def _is_toplabel(label: str) -> bool:
    """
    RFC 7208 section 7.1's toplabel.

    .. code-block:: abnf

        toplabel = ( *alphanum ALPHA *alphanum ) /
                   ( 1*alphanum "-" *( alphanum / "-" ) alphanum )
    """
    return (
        label.isascii()
        and label.replace("-", "").isalnum()
        and label[0] != "-"
        and label[-1] != "-"
        and ("-" in label or not label.isdigit())
    )


def _domain_spec(text: str) -> _MacroString:
    """
    Compile a domain-spec (RFC 7208 section 7.1).

    .. code-block:: abnf

        domain-spec = macro-string domain-end
        domain-end  = ( "." toplabel [ "." ] ) / macro-expand

    Raises:
        _SyntaxError: it is not one (an empty one neither).
    """
    spec, ends_in_macro = _macro_string(text)
    if ends_in_macro:
        return spec
    tail = spec.tokens[-1] if spec.tokens else ""
    assert isinstance(tail, str)
    if tail.endswith("."):
        tail = tail[:-1]
    _, dot, toplabel = tail.rpartition(".")
    if not dot or not toplabel or not _is_toplabel(toplabel):
        raise _SyntaxError(f"not a domain-spec: {_show(text)}")
    return spec


def _cidr(digits: str, maximum: int) -> int:
    """
    A CIDR length: no leading zeros, at most *maximum*.

    .. code-block:: abnf

        ip4-cidr-length = "/" ("0" / %x31-39 0*1DIGIT) ; value range 0-32
        ip6-cidr-length = "/" ("0" / %x31-39 0*2DIGIT) ; value range 0-128
    """
    if (digits[0] == "0" and digits != "0") or len(digits) > 3 or int(digits) > maximum:
        raise _SyntaxError(f"invalid CIDR length /{digits}")
    return int(digits)


@dataclass(frozen=True, slots=True)
class _Directive:
    """One directive of a record, parsed."""

    text: str  # as written, for the outcome
    result: SPFResult  # its qualifier's
    kind: str  # the mechanism's name, lower case
    target: _MacroString | None = None  # domain-spec, None for the current domain
    network: tuple[int, int, int] | None = None  # ip4/ip6: (version, address, prefix)
    cidr4: int = 32
    cidr6: int = 128


@dataclass(frozen=True, slots=True)
class _Record:
    """An SPF record, parsed."""

    directives: tuple[_Directive, ...]
    redirect: _MacroString | None
    explanation: _MacroString | None


_QUALIFIERS = {
    "": SPFResult.PASS,
    "+": SPFResult.PASS,
    "-": SPFResult.FAIL,
    "~": SPFResult.SOFTFAIL,
    "?": SPFResult.NEUTRAL,
}
#: [ qualifier ] name rest: a mechanism when *rest* does not start with "=".
_TERM = re.compile(r"([+\-?~]?)([A-Za-z][A-Za-z0-9_.\-]*)(.*)", re.S)
_DUAL_CIDR = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IP4 = re.compile(rf":({_QNUM}(?:\.{_QNUM}){{3}})(?:/([0-9]+))?")
_IP6 = re.compile(r":([0-9A-Fa-f:.]+)(?:/([0-9]+))?")


def _parse_all(rest: str) -> dict[str, object]:
    """``all = "all"``"""
    if rest:
        raise _SyntaxError("'all' takes no argument")
    return {}


def _parse_domain_required(rest: str) -> dict[str, object]:
    """``include = "include" ":" domain-spec``, ``exists = "exists" ":" domain-spec``"""
    if not rest.startswith(":"):
        raise _SyntaxError("a domain-spec is required")
    return {"target": _domain_spec(rest[1:])}


def _parse_ptr(rest: str) -> dict[str, object]:
    """``PTR = "ptr" [ ":" domain-spec ]``"""
    if not rest:
        return {}
    if not rest.startswith(":"):
        raise _SyntaxError("'ptr' takes only a domain-spec")
    return {"target": _domain_spec(rest[1:])}


def _parse_a_mx(rest: str) -> dict[str, object]:
    """
    ``a`` and ``mx``.

    .. code-block:: abnf

        A                = "a"  [ ":" domain-spec ] [ dual-cidr-length ]
        MX               = "mx" [ ":" domain-spec ] [ dual-cidr-length ]
        dual-cidr-length = [ ip4-cidr-length ] [ "/" ip6-cidr-length ]
    """
    m = _DUAL_CIDR.search(rest)
    assert m is not None  # it matches the empty string at the end
    fields: dict[str, object] = {}
    if m.group(1) is not None:
        fields["cidr4"] = _cidr(m.group(1), 32)
    if m.group(2) is not None:
        fields["cidr6"] = _cidr(m.group(2), 128)
    spec = rest[: m.start()]
    if spec:
        if not spec.startswith(":"):
            raise _SyntaxError("expected ':' domain-spec or a CIDR length")
        fields["target"] = _domain_spec(spec[1:])
    return fields


def _parse_ip4(rest: str) -> dict[str, object]:
    """
    ``IP4 = "ip4" ":" ip4-network [ ip4-cidr-length ]``

    .. code-block:: abnf

        ip4-network = qnum "." qnum "." qnum "." qnum
    """
    m = _IP4.fullmatch(rest)
    if m is None:
        raise _SyntaxError("not an IPv4 network")
    prefix = _cidr(m.group(2), 32) if m.group(2) is not None else 32
    return {"network": (4, int(ipaddress.IPv4Address(m.group(1))), prefix)}


def _parse_ip6(rest: str) -> dict[str, object]:
    """``IP6 = "ip6" ":" ip6-network [ ip6-cidr-length ]`` (ip6-network: RFC 4291 section 2.2)"""
    m = _IP6.fullmatch(rest)
    if m is None:
        raise _SyntaxError("not an IPv6 network")
    try:
        address = ipaddress.IPv6Address(m.group(1))
    except ValueError:
        raise _SyntaxError("not an IPv6 network") from None
    prefix = _cidr(m.group(2), 128) if m.group(2) is not None else 128
    return {"network": (6, int(address), prefix)}


#: Mechanism name -> parser of what follows the name (section 5).
_MECHANISM_PARSERS: dict[str, Callable[[str], dict[str, object]]] = {
    "all": _parse_all,
    "include": _parse_domain_required,
    "a": _parse_a_mx,
    "mx": _parse_a_mx,
    "ptr": _parse_ptr,
    "ip4": _parse_ip4,
    "ip6": _parse_ip6,
    "exists": _parse_domain_required,
}


def _directive(qualifier: str, name: str, rest: str, text: str) -> _Directive:
    """``directive = [ qualifier ] mechanism``"""
    kind = name.lower()
    parse = _MECHANISM_PARSERS.get(kind)
    if parse is None:
        raise _SyntaxError(f"unknown mechanism {_show(text)}")
    try:
        fields = parse(rest)
    except _SyntaxError as e:
        raise _SyntaxError(f"{e} in {_show(text)}") from None
    return _Directive(text, _QUALIFIERS[qualifier], kind, **fields)  # type: ignore[arg-type]  # the fields parsed for this kind are the dataclass's


@functools.lru_cache(maxsize=4096)
def _parse_record(text: str) -> _Record | str:
    """
    Parse a whole SPF record (section 4.6), or say what is wrong with it.

    .. code-block:: abnf

        record    = version terms *SP
        version   = "v=spf1"
        terms     = *( 1*SP ( directive / modifier ) )
        modifier  = redirect / explanation / unknown-modifier
        redirect  = "redirect" "=" domain-spec
        explanation = "exp" "=" domain-spec
        unknown-modifier = name "=" macro-string
        name      = ALPHA *( ALPHA / DIGIT / "-" / "_" / "." )

    *text* starts with the version (checked by the caller).  The result is
    cached: records repeat from message to message.  A syntax error is
    returned as its description rather than raised, so that it is cached too.
    """
    directives: list[_Directive] = []
    modifiers: dict[str, _MacroString] = {}
    try:
        for term in text[6:].split(" "):
            if not term:
                continue
            m = _TERM.fullmatch(term)
            if m is None:
                raise _SyntaxError(f"invalid term {_show(term)}")
            qualifier, name, rest = m.groups()
            if not rest.startswith("="):
                directives.append(_directive(qualifier, name, rest, term))
                continue
            if qualifier:
                raise _SyntaxError(f"a modifier takes no qualifier: {_show(term)}")
            key = name.lower()
            if key in ("redirect", "exp"):
                # Section 6: "These two modifiers MUST NOT appear in a record more
                # than once each. If they do, then check_host() exits with a
                # result of "permerror"."
                if key in modifiers:
                    raise _SyntaxError(f"more than one {key}= modifier")
                modifiers[key] = _domain_spec(rest[1:])
            else:
                # Unknown modifiers are ignored once checked; any macro letter
                # is syntax (the ABNF's macro-string), as they are never expanded.
                _macro_string(rest[1:], explain=True)
    except _SyntaxError as e:
        return str(e)
    return _Record(tuple(directives), modifiers.get("redirect"), modifiers.get("exp"))


@functools.lru_cache(maxsize=1024)
def _explain_string(text: str) -> _MacroString | None:
    """An explain-string compiled, or ``None`` if it has a syntax error."""
    try:
        return _macro_string(text, explain=True)[0]
    except _SyntaxError:
        return None


def _is_spf_record(record: bytes) -> bool:
    """Section 4.5: starts with "v=spf1" (any case), then a space or the end."""
    return record[:6].lower() == b"v=spf1" and (len(record) == 6 or record[6:7] == b" ")


# --- names -------------------------------------------------------------------


def _show(text: str) -> str:
    """*text* quoted, escaped to printable ASCII and shortened, for reasons."""
    shown = ascii(text)
    if len(shown) > _MAX_REASON_TERM:
        shown = shown[: _MAX_REASON_TERM - 4] + "...'"
    return shown


def _printable(text: str) -> str:
    """*text* with control characters replaced by ``?``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _checked_domain(domain: str) -> str | None:
    """
    *domain* without its final dot, or ``None`` when it is not a valid FQDN:
    RFC 7208 section 4.3, "If the <domain> is malformed (e.g., label longer
    than 63 characters, zero-length label not at the end, etc.) or is not a
    multi-label domain name, [...] check_host() immediately returns the
    result "none"."
    """
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if domain.endswith("."):
        domain = domain[:-1]
    if not domain or len(domain) > _MAX_NAME:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(0 < len(label) <= _MAX_LABEL for label in labels):
        return None
    if not _is_toplabel(labels[-1]):
        return None
    return domain


def _query_name(name: str) -> str:
    """
    An expanded domain-spec as a name to look up: section 7.3, "if the
    expanded domain name exceeds 253 characters [...], the left side is
    truncated to fit, by removing successive domain labels (and their
    following dots) until the total length does not exceed 253 characters";
    and without its final dot.
    """
    if name.endswith("."):
        name = name[:-1]
    while len(name) > _MAX_NAME:
        name = name.partition(".")[2]
    return name


def _can_exist(name: str) -> bool:
    """Whether *name* can be asked at all (labels of 1 to 63 characters)."""
    return 0 < len(name) <= _MAX_NAME and all(0 < len(label) <= _MAX_LABEL for label in name.split("."))


# --- evaluation --------------------------------------------------------------


class _Abort(Exception):
    """Ends the whole evaluation with *result* (temperror, permerror)."""

    def __init__(self, result: SPFResult, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


class _Verdict(NamedTuple):
    result: SPFResult
    mechanism: str
    reason: str
    explanation: str | None = None


_NXDOMAIN = Answer(DNSStatus.NXDOMAIN)


class _Evaluation:
    """One :func:`check_host` run: the client, the macro values, the counters."""

    def __init__(
        self,
        ip: str,
        sender: str,
        helo: str,
        receiver: str,
        now: float | None,
        max_lookups: int,
        max_void_lookups: int,
    ) -> None:
        client = ipaddress.ip_address(ip.strip())
        if isinstance(client, ipaddress.IPv6Address) and client.ipv4_mapped is not None:
            # Section 5: "an IPv4-mapped IPv6 address [...] MUST still be
            # considered an IPv4 address".
            client = client.ipv4_mapped
        self.client = client
        self.version = client.version
        self.bits = client.max_prefixlen
        self.client_int = int(client)
        self.address_type = "A" if client.version == 4 else "AAAA"
        local, at, sender_domain = sender.rpartition("@")
        if not at:
            sender_domain = sender
        # Section 4.3: "If the <sender> has no local-part, substitute the
        # string "postmaster" for the local-part."
        local = local or "postmaster"
        # %{i}: "For IPv6 addresses, the "i" macro expands to a dot-format
        # address" (section 7.3), nibbles from the left as in section 7.4.
        dotted = str(client) if client.version == 4 else ".".join(client.exploded.replace(":", ""))
        #: Macro values that do not depend on the domain (section 7.3).
        self.values = {
            "s": f"{local}@{sender_domain}",
            "l": local,
            "o": sender_domain,
            "i": dotted,
            "v": "in-addr" if client.version == 4 else "ip6",
            "h": helo,
            "c": str(client),
            "r": receiver or "unknown",
            "t": str(int(now)) if now is not None else "0",
        }
        self.max_lookups = max_lookups
        self.max_void_lookups = max_void_lookups
        self.lookups = 0
        self.void_lookups = 0
        self._ptr_names: tuple[str, ...] | None = None
        self._validated: dict[str, bool] = {}

    def run(self, domain: str) -> Resolving[SPFOutcome]:
        """The whole check, as an :class:`SPFOutcome`."""
        try:
            verdict = yield from self._check(domain, explain=True)
        except _Abort as abort:
            verdict = _Verdict(abort.result, "", abort.reason)
        explanation = verdict.explanation
        return SPFOutcome(
            verdict.result,
            domain,
            verdict.mechanism,
            _printable(verdict.reason),
            _printable(explanation) if explanation is not None else None,
            self.lookups,
            self.void_lookups,
        )

    # check_host() itself, for the domain asked about and for include/redirect.

    def _check(self, domain: str, *, explain: bool) -> Resolving[_Verdict]:
        checked = _checked_domain(domain)
        if checked is None:
            return _Verdict(SPFResult.NONE, "", f"{_show(domain)} is not a valid domain name")
        domain = checked
        answer = yield Question(domain, "TXT")
        if answer.failed:
            raise _Abort(SPFResult.TEMPERROR, f"DNS error looking up the SPF record of {domain}")
        records = [r for r in answer.records if _is_spf_record(r)] if answer.ok else []
        if not records:
            return _Verdict(SPFResult.NONE, "", f"no SPF record for {domain}")
        if len(records) > 1:
            # Section 4.5: "If the resultant record set includes more than one
            # record, check_host() produces the "permerror" result."
            raise _Abort(SPFResult.PERMERROR, f"more than one SPF record for {domain}")
        try:
            text = records[0].decode("ascii")
        except UnicodeDecodeError:
            raise _Abort(SPFResult.PERMERROR, f"the SPF record of {domain} is not ASCII") from None
        record = _parse_record(text)
        if isinstance(record, str):
            raise _Abort(SPFResult.PERMERROR, f"syntax error in the SPF record of {domain}: {record}")

        for directive in record.directives:
            if directive.kind == "all":
                matched = True
            elif directive.network is not None:
                matched = self._in_network(directive.network)
            else:
                self._count_lookup()
                matched = yield from _DNS_MECHANISMS[directive.kind](self, directive, domain)
            if matched:
                result = directive.result
                explanation = None
                if result is SPFResult.FAIL and explain and record.explanation is not None:
                    explanation = yield from self._explain(record.explanation, domain)
                return _Verdict(result, directive.text, f"matched {directive.text} in {domain}", explanation)

        if record.redirect is not None:
            self._count_lookup()
            target = yield from self._name(record.redirect, domain)
            verdict = yield from self._check(target, explain=explain)
            if verdict.result is SPFResult.NONE:
                # Section 6.1: "if no SPF record is found, or if the
                # <target-name> is malformed, the result is a "permerror"".
                raise _Abort(SPFResult.PERMERROR, f"redirect from {domain}: {verdict.reason}")
            return verdict
        return _Verdict(SPFResult.NEUTRAL, "", f"no mechanism matched in {domain}")

    # Counters (section 4.6.4).

    def _count_lookup(self) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise _Abort(SPFResult.PERMERROR, f"more than {self.max_lookups} DNS lookups")

    def _count_void(self) -> None:
        self.void_lookups += 1
        if self.void_lookups > self.max_void_lookups:
            raise _Abort(SPFResult.PERMERROR, f"more than {self.max_void_lookups} void DNS lookups")

    # DNS.

    def _query(self, name: str, rdtype: str) -> Resolving[Answer]:
        """Ask; a name that cannot exist answers NXDOMAIN without asking."""
        if not _can_exist(name):
            return _NXDOMAIN
        return (yield Question(name, rdtype))

    def _required(self, name: str, rdtype: str, *, void_counts: bool) -> Resolving[tuple[Any, ...]]:
        """The records, ``()`` when void; an ``ERROR`` answer is ``temperror``."""
        answer = yield from self._query(name, rdtype)
        if answer.failed:
            raise _Abort(SPFResult.TEMPERROR, f"DNS error looking up {name} {rdtype}")
        if not answer.ok:
            if void_counts:
                self._count_void()
            return ()
        return answer.records

    # Matching addresses.

    def _in_network(self, network: tuple[int, int, int]) -> bool:
        version, address, prefix = network
        if version != self.version:
            return False
        return (self.client_int ^ address) >> (self.bits - prefix) == 0

    def _any_in(self, records: tuple[Any, ...], prefix: int) -> bool:
        """Whether the client is in ``record/prefix`` for one of the address *records*."""
        shift = self.bits - prefix
        for record in records:
            try:
                address = ipaddress.ip_address(record)
            except ValueError:
                continue
            if address.version == self.version and (self.client_int ^ int(address)) >> shift == 0:
                return True
        return False

    # Mechanisms that ask the DNS (section 5); each returns whether it matched.

    def _target(self, directive: _Directive, domain: str) -> Resolving[str]:
        if directive.target is None:
            return domain
        return (yield from self._name(directive.target, domain))

    def _include(self, directive: _Directive, domain: str) -> Resolving[bool]:
        target = yield from self._target(directive, domain)
        verdict = yield from self._check(target, explain=False)
        # Section 5.2's table: pass matches; fail, softfail and neutral do
        # not; temperror and permerror propagate (raised); none is permerror.
        if verdict.result is SPFResult.NONE:
            raise _Abort(SPFResult.PERMERROR, f"{directive.text} in {domain}: {verdict.reason}")
        return verdict.result is SPFResult.PASS

    def _a(self, directive: _Directive, domain: str) -> Resolving[bool]:
        target = yield from self._target(directive, domain)
        records = yield from self._required(target, self.address_type, void_counts=True)
        return self._any_in(records, directive.cidr4 if self.version == 4 else directive.cidr6)

    def _mx(self, directive: _Directive, domain: str) -> Resolving[bool]:
        target = yield from self._target(directive, domain)
        records = yield from self._required(target, "MX", void_counts=True)
        if len(records) > MAX_MX_NAMES:
            raise _Abort(SPFResult.PERMERROR, f"more than {MAX_MX_NAMES} MX records for {target}")
        prefix = directive.cidr4 if self.version == 4 else directive.cidr6
        for _, exchange in records:
            if exchange in ("", "."):  # null MX (RFC 7505)
                continue
            addresses = yield from self._required(exchange, self.address_type, void_counts=False)
            if self._any_in(addresses, prefix):
                return True
        return False

    def _ptr(self, directive: _Directive, domain: str) -> Resolving[bool]:
        # Section 5.5: only validated names that are <target-name> or end in
        # "." <target-name> match; a name is validated when one of its
        # addresses is the client's.  Names are filtered before validation,
        # which asks fewer questions for the same result.
        target = (yield from self._target(directive, domain)).lower()
        suffix = "." + target
        for name in (yield from self._ptr_names_of_client()):
            lower = name.lower()
            if (lower == target or lower.endswith(suffix)) and (yield from self._is_validated(name)):
                return True
        return False

    def _exists(self, directive: _Directive, domain: str) -> Resolving[bool]:
        target = yield from self._target(directive, domain)
        # Section 5.7: an A lookup "even when the connection type is IP version 6".
        records = yield from self._required(target, "A", void_counts=True)
        return bool(records)

    # Validated names (section 5.5, shared by ptr and %{p}).

    def _ptr_names_of_client(self) -> Resolving[tuple[str, ...]]:
        if self._ptr_names is None:
            answer = yield Question(reverse_name(str(self.client)), "PTR")
            # "If a DNS error occurs while doing the PTR RR lookup, then this
            # mechanism fails to match."  Only the first 10 names are used.
            names = answer.records[:MAX_PTR_NAMES] if answer.ok else ()
            self._ptr_names = tuple(str(n).rstrip(".") for n in names)
        return self._ptr_names

    def _is_validated(self, name: str) -> Resolving[bool]:
        key = name.lower()
        known = self._validated.get(key)
        if known is None:
            answer = yield from self._query(name, self.address_type)
            # "If a DNS error occurs while doing an A RR lookup, then that
            # domain name is skipped and the search continues."
            known = answer.ok and self._any_in(answer.records, self.bits)
            self._validated[key] = known
        return known

    def _validated_name(self, domain: str) -> Resolving[str]:
        """``%{p}``: *domain* if validated, else a validated subdomain of it, else any; or "unknown"."""
        names = yield from self._ptr_names_of_client()
        domain = domain.lower()
        suffix = "." + domain

        def preference(name: str) -> int:
            lower = name.lower()
            return 0 if lower == domain else 1 if lower.endswith(suffix) else 2

        for name in sorted(names, key=preference):
            if (yield from self._is_validated(name)):
                return name
        return "unknown"

    # Macros (section 7).

    def _expand(self, spec: _MacroString, domain: str) -> Resolving[str]:
        ptr = (yield from self._validated_name(domain)) if spec.uses_ptr else ""
        values = self.values
        parts: list[str] = []
        for token in spec.tokens:
            if isinstance(token, str):
                parts.append(token)
                continue
            letter = token.letter
            value = domain if letter == "d" else ptr if letter == "p" else values[letter]
            if token.keep or token.reverse or token.splitter is not None:
                labels = value.split(".") if token.splitter is None else token.splitter.split(value)
                if token.reverse:
                    labels.reverse()
                if token.keep:
                    labels = labels[-token.keep :]
                value = ".".join(labels)
            if token.escape:
                # Section 7.3: "Uppercase macros expand exactly as their
                # lowercase equivalents, and are then URL escaped."  A
                # string UTF-8 cannot carry (a lone surrogate an embedder
                # passed) escapes its unencodable characters as "?".
                value = quote(value, safe="", errors="replace")
            parts.append(value)
        return "".join(parts)

    def _name(self, spec: _MacroString, domain: str) -> Resolving[str]:
        """A domain-spec expanded into a name to look up."""
        return _query_name((yield from self._expand(spec, domain)))

    def _explain(self, spec: _MacroString, domain: str) -> Resolving[str | None]:
        """
        Section 6.2: "If there are any DNS processing errors (any RCODE other
        than 0), or if no records are returned, or if more than one record is
        returned, or if there are syntax errors in the explanation string,
        then proceed as if no "exp" modifier was given."
        """
        name = yield from self._name(spec, domain)
        answer = yield from self._query(name, "TXT")
        if not answer.ok or len(answer.records) != 1:
            return None
        try:
            text = answer.records[0].decode("ascii")
        except (UnicodeDecodeError, AttributeError):
            return None
        compiled = _explain_string(text)
        if compiled is None:
            return None
        return (yield from self._expand(compiled, domain))


#: The mechanisms that ask the DNS, by name; each counts one lookup.
_DNS_MECHANISMS: dict[str, Callable[[_Evaluation, _Directive, str], Resolving[bool]]] = {
    "include": _Evaluation._include,
    "a": _Evaluation._a,
    "mx": _Evaluation._mx,
    "ptr": _Evaluation._ptr,
    "exists": _Evaluation._exists,
}


# --- public entry points -----------------------------------------------------


def check_host(
    ip: str,
    domain: str,
    sender: str,
    *,
    helo: str = "",
    receiver: str = "",
    now: float | None = None,
    max_lookups: int = MAX_DNS_LOOKUPS,
    max_void_lookups: int = MAX_VOID_LOOKUPS,
) -> Resolving[SPFOutcome]:
    """
    RFC 7208 section 4's ``check_host()``: the SPF result for *ip* sending
    as *sender* on behalf of *domain* (see the module notes).

    Args:
        ip: the SMTP client's address (IPv4, IPv6, or IPv4-mapped IPv6, which
            counts as IPv4).
        domain: the domain whose policy is checked (the "MAIL FROM" domain, or
            the HELO name).
        sender: the "MAIL FROM" or "HELO" identity (``local@domain``; a
            missing local-part is ``postmaster``).
        helo: the HELO/EHLO name, for ``%{h}``.
        receiver: this host's name, for ``%{r}`` in explanations.
        now: the current time (seconds since the epoch), for ``%{t}``.
        max_lookups: DNS-querying terms allowed (section 4.6.4).
        max_void_lookups: void lookups allowed (section 4.6.4).

    Returns:
        A sans-IO check (a generator of :class:`~txmail.dnsdata.Question`)
        whose value is the :class:`SPFOutcome`; run it with
        :func:`txmail.dnsdata.run_sync` or :func:`txmail.resolver.drive`.

    Raises:
        ValueError: *ip* is not an IP address (raised at once, not when the
            check runs).
    """
    evaluation = _Evaluation(ip, sender, helo, receiver, now, max_lookups, max_void_lookups)
    return evaluation.run(domain)


def check_helo(
    ip: str,
    helo: str,
    *,
    receiver: str = "",
    now: float | None = None,
    max_lookups: int = MAX_DNS_LOOKUPS,
    max_void_lookups: int = MAX_VOID_LOOKUPS,
) -> Resolving[SPFOutcome]:
    """
    The SPF check of the "HELO" identity (RFC 7208 section 2.3): *helo*'s
    policy, with ``postmaster@helo`` as the sender.  A HELO name that is not
    a domain (an address literal, a single label) gives ``none``.

    Raises:
        ValueError: *ip* is not an IP address.
    """
    return check_host(
        ip,
        helo,
        f"postmaster@{helo}",
        helo=helo,
        receiver=receiver,
        now=now,
        max_lookups=max_lookups,
        max_void_lookups=max_void_lookups,
    )


def check_mail_from(
    ip: str,
    mail_from: str,
    helo: str,
    *,
    receiver: str = "",
    now: float | None = None,
    max_lookups: int = MAX_DNS_LOOKUPS,
    max_void_lookups: int = MAX_VOID_LOOKUPS,
) -> Resolving[SPFOutcome]:
    """
    The SPF check of the "MAIL FROM" identity (RFC 7208 section 2.4): the
    policy of *mail_from*'s domain.  For the null reverse-path (``""`` or
    ``"<>"``), "the mailbox composed of the local-part "postmaster" and the
    "HELO" identity" is checked instead, as :func:`check_helo` does.

    Args:
        mail_from: the reverse-path's mailbox (``local@domain``; angle
            brackets are allowed); a missing local-part is ``postmaster``.
        helo: the HELO/EHLO name.

    Raises:
        ValueError: *ip* is not an IP address.
    """
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    if not mail_from:
        return check_helo(
            ip, helo, receiver=receiver, now=now, max_lookups=max_lookups, max_void_lookups=max_void_lookups
        )
    domain = mail_from.rpartition("@")[2]
    return check_host(
        ip,
        domain,
        mail_from,
        helo=helo,
        receiver=receiver,
        now=now,
        max_lookups=max_lookups,
        max_void_lookups=max_void_lookups,
    )
