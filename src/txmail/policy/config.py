"""
The ``[policy]``, ``[dkim]``, ``[srs]`` and ``[arc]`` tables of the TOML
configuration, validated into one immutable :class:`PolicyConfig`.

::

    [policy]
    enabled = true                  # inbound checks on the MTA role (port 25)
    authserv_id = "mx.example.com"  # in Authentication-Results; default the hostname
    trusted_networks = ["127.0.0.0/8", "::1/128"]   # exempt from checks and limits
    spf = true                      # RFC 7208, MAIL FROM and HELO
    dkim = true                     # RFC 6376 / 8463 verification
    dkim_max_signatures = 5         # signatures checked per message at most
    arc = true                      # RFC 8617 verification
    arc_trusted_sealers = ["google.com"]  # their ARC results count for DMARC
    dmarc = true                    # RFC 7489
    iprev = true                    # reverse DNS, forward-confirmed
    spf_reject_fail = false         # 550 5.7.23 at RCPT on an SPF fail
    dmarc_enforce = true            # p=reject: 550 5.7.1; p=quarantine: Junk folder
    dmarc_quarantine_folder = "Junk"
    dnsbl = ["zen.spamhaus.org=127.0.0.[2..11]"]   # client address blocklists
    dnswl = ["list.dnswl.org=127.0.[0..255].[1..3]"]  # allowlists: skip the blocklists
    domain_blocklists = ["dbl.spamhaus.org=127.0.1.[2..99]"]  # sender domain
    greylisting = false             # RFC 6647
    greylist_delay = "5m"           # a retry is accepted after this...
    greylist_window = "4h"          # ...and before this
    greylist_expire = "36d"         # a passed triplet is remembered this long

    [policy.limits]                 # 0 means no limit
    max_connections = 1000          # at once, in total (421 4.7.0)
    max_connections_per_client = 50 # at once, per client address (421 4.7.0)
    messages_per_hour_per_client = 0    # 451 4.7.1
    recipients_per_hour_per_client = 0  # 452 4.5.3
    messages_per_hour_per_user = 0      # authenticated users (submission too)
    recipients_per_hour_per_user = 0
    rcpt_errors_before_tarpit = 3   # refused RCPTs before each reply is delayed
    rcpt_errors_before_disconnect = 10  # ... before 421 4.7.0 and close
    tarpit_delay = 1                # seconds per refused RCPT past the first limit

    [policy.domains."example.com"]  # per recipient domain, overriding [policy]
    spf_reject_fail = true
    dmarc_enforce = true
    greylisting = true

    [dkim]                          # outbound signing (RFC 6376, RFC 8463)
    sign = true
    [[dkim.keys]]                   # one entry per key; several per domain
    domain = "example.com"
    selector = "s2026e"
    key = "/etc/txmail/dkim/example.com.s2026e.pem"   # txmail dkim keygen writes it
    sign = true                     # false: published (dns-records) but not used yet

    [srs]                           # sender rewriting for forwarded mail
    domain = "example.com"          # default the primary domain
    secrets = ["a long random string"]  # the first signs; the others still verify
    max_age = "21d"

    [arc]                           # sealing of forwarded mail (RFC 8617)
    seal = true
    domain = "example.com"          # default: the first RSA key of [dkim]
    selector = "s2026r"
    key = "/etc/txmail/dkim/example.com.s2026r.pem"

DNS list entries are ``ZONE`` (any answer counts) or ``ZONE=PATTERN``
where PATTERN is Postfix's: an address whose octets may be ranges and
lists in brackets (``127.0.0.[2..11]``, ``127.0.[0..255].[1;3]``), or
several such patterns separated by commas.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txmail.errors import ConfigError

__all__ = [
    "ARCConfig",
    "DKIMKeyConfig",
    "DNSList",
    "DomainPolicy",
    "Limits",
    "PolicyConfig",
    "SRSConfig",
    "parse_dns_list",
    "parse_policy_config",
]

#: Settings that a ``[policy.domains."DOMAIN"]`` table may override.
DOMAIN_KEYS = ("spf_reject_fail", "dmarc_enforce", "greylisting")


@dataclass(frozen=True)
class DNSList:
    """
    One DNS list zone with the answers that count (Postfix syntax).

    Attributes:
        zone: the zone, without the final dot.
        patterns: per octet, the allowed values (``None``: any answer).
        text: the entry as configured (for messages).
    """

    zone: str
    patterns: tuple[tuple[frozenset[int], ...], ...] | None = None
    text: str = ""

    def matches(self, address: str) -> bool:
        """Whether an answer *address* (an A record) counts as a listing."""
        if self.patterns is None:
            return True
        try:
            octets = tuple(int(o) for o in str(ipaddress.IPv4Address(address)).split("."))
        except ValueError:
            return False
        return any(all(o in allowed for o, allowed in zip(octets, p, strict=True)) for p in self.patterns)


_OCTET = re.compile(r"^(\d{1,3})$|^\[([0-9.;]+)\]$")
_PATTERN_OCTET = r"(\d{1,3}|\[[0-9.;]+\])"
_PATTERN = re.compile(r"\.".join([_PATTERN_OCTET] * 4))


def _octet_values(text: str, entry: str) -> frozenset[int]:
    match = _OCTET.match(text)
    if not match:
        raise ConfigError(f"bad DNS list pattern in {entry!r}: {text!r}")
    if match.group(1) is not None:
        values = {int(match.group(1))}
    else:
        values = set()
        for part in match.group(2).split(";"):
            low, dots, high = part.partition("..")
            if not low.isdigit() or (dots and not high.isdigit()):
                raise ConfigError(f"bad DNS list pattern in {entry!r}: {text!r}")
            values.update(range(int(low), int(high if dots else low) + 1))
    if not values or any(v > 255 for v in values):
        raise ConfigError(f"bad DNS list pattern in {entry!r}: octets go from 0 to 255")
    return frozenset(values)


def parse_dns_list(entry: str) -> DNSList:
    """
    ``ZONE`` or ``ZONE=PATTERN[,PATTERN...]`` (see the module notes).

    Raises:
        ConfigError: a malformed entry.
    """
    if not isinstance(entry, str) or not entry.strip():
        raise ConfigError("a DNS list entry must be a non-empty string")
    zone, eq, patterns = entry.strip().partition("=")
    zone = zone.strip().lower().rstrip(".")
    if not zone or any(not label for label in zone.split(".")) or any(c.isspace() for c in zone):
        raise ConfigError(f"bad DNS list zone in {entry!r}")
    if not eq:
        return DNSList(zone, None, entry)
    parsed = []
    for pattern in patterns.split(","):
        match = _PATTERN.fullmatch(pattern.strip())
        if match is None:
            raise ConfigError(f"bad DNS list pattern in {entry!r}: {pattern!r} needs four octets")
        parsed.append(tuple(_octet_values(o, entry) for o in match.groups()))
    return DNSList(zone, tuple(parsed), entry)


@dataclass(frozen=True)
class DomainPolicy:
    """The settings that may differ per recipient domain (:data:`DOMAIN_KEYS`)."""

    spf_reject_fail: bool = False
    dmarc_enforce: bool = True
    greylisting: bool = False


@dataclass(frozen=True)
class Limits:
    """``[policy.limits]``; 0 means no limit (see the module notes)."""

    max_connections: int = 1000
    max_connections_per_client: int = 50
    messages_per_hour_per_client: int = 0
    recipients_per_hour_per_client: int = 0
    messages_per_hour_per_user: int = 0
    recipients_per_hour_per_user: int = 0
    rcpt_errors_before_tarpit: int = 3
    rcpt_errors_before_disconnect: int = 10
    tarpit_delay: float = 1.0


@dataclass(frozen=True)
class DKIMKeyConfig:
    """One ``[[dkim.keys]]`` entry."""

    domain: str
    selector: str
    key: str
    sign: bool = True


@dataclass(frozen=True)
class SRSConfig:
    """``[srs]``: no secrets means no SRS."""

    domain: str | None = None
    secrets: tuple[str, ...] = field(default=(), repr=False)
    max_age: float = 21 * 86400.0

    @property
    def enabled(self) -> bool:
        return bool(self.secrets)


@dataclass(frozen=True)
class ARCConfig:
    """``[arc]``: sealing of forwarded mail."""

    seal: bool = True
    domain: str | None = None
    selector: str | None = None
    key: str | None = None


@dataclass(frozen=True)
class PolicyConfig:
    """Everything the four tables say (see the module notes for the keys)."""

    enabled: bool = True
    authserv_id: str | None = None
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    spf: bool = True
    dkim: bool = True
    dkim_max_signatures: int = 5
    arc: bool = True
    arc_trusted_sealers: tuple[str, ...] = ()
    dmarc: bool = True
    iprev: bool = True
    dmarc_quarantine_folder: str = "Junk"
    defaults: DomainPolicy = field(default_factory=DomainPolicy)
    domains: tuple[tuple[str, DomainPolicy], ...] = ()
    dnsbl: tuple[DNSList, ...] = ()
    dnswl: tuple[DNSList, ...] = ()
    domain_blocklists: tuple[DNSList, ...] = ()
    greylist_delay: float = 300.0
    greylist_window: float = 4 * 3600.0
    greylist_expire: float = 36 * 86400.0
    limits: Limits = field(default_factory=Limits)
    dkim_sign: bool = True
    dkim_keys: tuple[DKIMKeyConfig, ...] = ()
    srs: SRSConfig = field(default_factory=SRSConfig)
    arc_seal: ARCConfig = field(default_factory=ARCConfig)

    def for_domain(self, domain: str) -> DomainPolicy:
        """The settings for mail to *domain* (its ``[policy.domains]`` table, else the defaults)."""
        domain = domain.lower().rstrip(".")
        for name, policy in self.domains:
            if name == domain:
                return policy
        return self.defaults

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n, strict=False) for n in self.trusted_networks)


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false")
    return value


def _count(name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{name} must be a whole number, 0 or more")
    return value


def _seconds(name: str, value: Any) -> float:
    from txmail.delivery.backoff import parse_duration

    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{name} must not be negative")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
    raise ConfigError(f'{name} must be a duration such as 30, "5m" or "4h"')


def _strings(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{name} must be a list of strings")
    return tuple(value)


def _domain(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip(". ") or any(c.isspace() for c in value):
        raise ConfigError(f"{name} must be a domain name")
    return value.strip().lower().rstrip(".")


def _table(name: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    return value


def _domain_policy(where: str, table: Mapping[str, Any], base: DomainPolicy) -> DomainPolicy:
    values = {}
    for key, value in table.items():
        if key not in DOMAIN_KEYS:
            raise ConfigError(f"unknown key {key!r} in [{where}] (allowed: {', '.join(DOMAIN_KEYS)})")
        values[key] = _bool(key, value)
    return dataclasses.replace(base, **values)


def _limits(table: Mapping[str, Any]) -> Limits:
    names = {f.name for f in dataclasses.fields(Limits)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise ConfigError(f"unknown key {key!r} in [policy.limits]")
        values[key] = _seconds(key, value) if key == "tarpit_delay" else _count(key, value)
    limits = Limits(**values)
    if 0 < limits.rcpt_errors_before_disconnect < limits.rcpt_errors_before_tarpit:
        raise ConfigError("rcpt_errors_before_disconnect must not be below rcpt_errors_before_tarpit")
    return limits


_POLICY_BOOLS = ("enabled", "spf", "dkim", "arc", "dmarc", "iprev")
_POLICY_LISTS = ("dnsbl", "dnswl", "domain_blocklists")
_POLICY_DURATIONS = ("greylist_delay", "greylist_window", "greylist_expire")


def _policy_table(table: Mapping[str, Any], out: dict[str, Any]) -> None:
    defaults: dict[str, Any] = {}
    for key, value in table.items():
        if key in _POLICY_BOOLS:
            out[key] = _bool(key, value)
        elif key in DOMAIN_KEYS:
            defaults[key] = value
        elif key in _POLICY_LISTS:
            out[key] = tuple(parse_dns_list(e) for e in _strings(key, value))
        elif key in _POLICY_DURATIONS:
            out[key] = _seconds(key, value)
        elif key == "authserv_id":
            out[key] = _domain(key, value)
        elif key == "trusted_networks":
            networks = _strings(key, value)
            for n in networks:
                try:
                    ipaddress.ip_network(n, strict=False)
                except ValueError:
                    raise ConfigError(
                        f"trusted_networks: {n!r} is not a network such as 192.0.2.0/24"
                    ) from None
            out[key] = networks
        elif key == "dkim_max_signatures":
            out[key] = _count(key, value)
        elif key == "arc_trusted_sealers":
            out[key] = tuple(_domain(key, v) for v in _strings(key, value))
        elif key == "dmarc_quarantine_folder":
            if not isinstance(value, str) or not value or any(c in value for c in "\r\n\x00"):
                raise ConfigError("dmarc_quarantine_folder must be a folder name")
            out[key] = value
        elif key == "limits":
            out["limits"] = _limits(_table("policy.limits", value))
        elif key == "domains":
            pass  # after the defaults
        else:
            raise ConfigError(f"unknown key {key!r} in [policy]")
    base = _domain_policy("policy", defaults, DomainPolicy())
    out["defaults"] = base
    domains = []
    for name, sub in _table("policy.domains", table.get("domains", {})).items():
        domain = _domain("policy.domains", name)
        domains.append(
            (
                domain,
                _domain_policy(f'policy.domains."{domain}"', _table(f"policy.domains.{name}", sub), base),
            )
        )
    out["domains"] = tuple(domains)
    if out.get("greylist_window", 4 * 3600.0) <= out.get("greylist_delay", 300.0):
        raise ConfigError("greylist_window must be longer than greylist_delay")


def _dkim_table(table: Mapping[str, Any], out: dict[str, Any]) -> None:
    keys = []
    for key, value in table.items():
        if key == "sign":
            out["dkim_sign"] = _bool("dkim sign", value)
        elif key == "keys":
            if not isinstance(value, list):
                raise ConfigError("[[dkim.keys]] must be an array of tables")
            for entry in value:
                entry = _table("dkim.keys", entry)
                unknown = set(entry) - {"domain", "selector", "key", "sign"}
                if unknown:
                    raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in [[dkim.keys]]")
                for required in ("domain", "selector", "key"):
                    if required not in entry:
                        raise ConfigError(f"[[dkim.keys]] needs {required}")
                selector = entry["selector"]
                if not isinstance(selector, str) or not re.fullmatch(
                    r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?", selector
                ):
                    raise ConfigError(f"dkim selector {selector!r} is not a DNS label")
                if not isinstance(entry["key"], str) or not entry["key"]:
                    raise ConfigError("dkim key must be a file path")
                keys.append(
                    DKIMKeyConfig(
                        _domain("dkim domain", entry["domain"]),
                        selector,
                        entry["key"],
                        _bool("dkim key sign", entry.get("sign", True)),
                    )
                )
        else:
            raise ConfigError(f"unknown key {key!r} in [dkim]")
    seen = set()
    for k in keys:
        if (k.domain, k.selector) in seen:
            raise ConfigError(f"dkim key {k.selector}._domainkey.{k.domain} is given twice")
        seen.add((k.domain, k.selector))
    out["dkim_keys"] = tuple(keys)


def _srs_table(table: Mapping[str, Any]) -> SRSConfig:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "domain":
            values[key] = _domain("srs domain", value)
        elif key == "secrets":
            secrets = _strings("srs secrets", value)
            if any(len(s) < 16 for s in secrets):
                raise ConfigError("srs secrets must be at least 16 characters long")
            values[key] = secrets
        elif key == "max_age":
            values[key] = _seconds("srs max_age", value)
            if values[key] < 86400:
                raise ConfigError("srs max_age must be at least one day")
        else:
            raise ConfigError(f"unknown key {key!r} in [srs]")
    return SRSConfig(**values)


def _arc_table(table: Mapping[str, Any]) -> ARCConfig:
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key == "seal":
            values[key] = _bool("arc seal", value)
        elif key == "domain":
            values[key] = _domain("arc domain", value)
        elif key in ("selector", "key"):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"arc {key} must be a non-empty string")
            values[key] = value
        else:
            raise ConfigError(f"unknown key {key!r} in [arc]")
    arc = ARCConfig(**values)
    given = [arc.domain is not None, arc.selector is not None, arc.key is not None]
    if any(given) and not all(given):
        raise ConfigError("[arc] domain, selector and key must be given together")
    return arc


def parse_policy_config(document: Mapping[str, Any]) -> PolicyConfig:
    """
    Validate the tables ``policy``, ``dkim``, ``srs`` and ``arc`` of a TOML
    document (a mapping of table name to its content; other names are
    refused).

    Raises:
        ConfigError: an unknown key or a bad value; the message names it.
    """
    out: dict[str, Any] = {}
    for name, table in document.items():
        table = _table(name, table)
        if name == "policy":
            _policy_table(table, out)
        elif name == "dkim":
            _dkim_table(table, out)
        elif name == "srs":
            out["srs"] = _srs_table(table)
        elif name == "arc":
            out["arc_seal"] = _arc_table(table)
        else:
            raise ConfigError(f"unknown table [{name}]")
    return PolicyConfig(**out)
