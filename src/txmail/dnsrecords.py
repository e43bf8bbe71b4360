"""
The DNS records a mail domain needs, as zone-file lines, and the check of
what is published against them (``txmail dns-records``).

Theory of operation
-------------------
A :class:`MailDomain` says what we know: the domain, the name of this
server (``[server] hostname``), the DKIM keys configured for the domain
(their TXT values, read from the key files by the caller) and whether mail
leaves through a smarthost.  From it:

* :func:`records_for` gives the :class:`Entry` list, one per record, with a
  short comment each, and :func:`zone_text` writes them as zone-file lines;
* :func:`check_domain` is a sans-IO check (a generator of
  :class:`txmail.dnsdata.Question`, see :mod:`txmail.dnsdata`) that asks
  for each record and gives one :class:`Finding` per record: ``OK``,
  ``MISSING``, ``WRONG`` or "could not check" (a DNS failure).  The caller
  runs it with :func:`txmail.resolver.drive` on txmail's own resolver, or
  :func:`txmail.dnsdata.run_sync` in tests.

What is checked, and what counts as right:

=========  ================================================================
MX         at least one MX of the domain names the hostname (RFC 5321
           section 5.1); a null MX (RFC 7505) is wrong.
address    the hostname has an A or AAAA record and is not a CNAME (an MX
           target must not be an alias, RFC 2181 section 10.3).
SPF        exactly one ``v=spf1`` TXT record (RFC 7208 section 4.5), that
           ``check_host()`` evaluates to ``pass`` for each address of the
           hostname (which also finds syntax errors), and that does not end
           in ``+all`` or ``?all``.
DKIM       for each configured key, the TXT record at
           ``<selector>._domainkey.<domain>`` has our public key as ``p=``
           (RFC 6376 section 3.6.1); one record only.
DMARC      exactly one ``v=DMARC1`` record at ``_dmarc.<domain>``, or at
           the organizational domain's (RFC 7489 section 6.6.3), that
           parses; ``p=none`` is noted as monitoring only.
PTR        each address of the hostname has a PTR naming the hostname
           (forward-confirmed, since the address came from the hostname):
           receivers' ``iprev`` check (RFC 8601 section 3).
=========  ================================================================

Choices
-------
* SPF: ``v=spf1 mx -all`` when the hostname is the domain or under it (the
  MX host is this server, and ``mx`` follows the MX record); ``v=spf1
  a:HOSTNAME -all`` when it is in another zone (one server for several
  domains): naming the host keeps SPF right if the MX is later moved to a
  filtering service.  ``-all`` because this server is the only sender we
  know of; the comment says when to use ``~all``.
* DMARC: ``p=quarantine`` with reports to ``postmaster@DOMAIN`` and
  relaxed alignment: mail that fails goes to the spam folder rather than
  being lost, and the reports show what still fails before ``p=reject``.
* The server's public address cannot be known from here (NAT, several
  interfaces): the A/AAAA and PTR records are printed as comments.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass

from txmail.autoconfig import ClientOffer, srv_services
from txmail.dnsdata import Answer, Question, Resolving, reverse_name
from txmail.policy.dmarc import MalformedRecord, Policy, is_dmarc_record, organizational_domain, parse_record
from txmail.policy.spf import SPFResult, check_host

__all__ = [
    "CheckStatus",
    "DKIMPublication",
    "Entry",
    "Finding",
    "MailDomain",
    "check_domain",
    "client_records",
    "dkim_tags",
    "dmarc_value",
    "first_questions",
    "format_finding",
    "hostname_under",
    "is_domain_name",
    "records_for",
    "spf_value",
    "summary",
    "txt_character_strings",
    "zone_line",
    "zone_text",
]

#: A documentation address (RFC 5737) that no real server has: SPF is
#: evaluated for it when the hostname has no address, to find syntax errors.
PROBE_ADDRESS = "192.0.2.1"

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_MAX_SHOWN = 100


def is_domain_name(name: str) -> bool:
    """
    Whether *name* (lower case, no final dot, A-labels) is a host name
    that mail can use: LDH labels of 1 to 63 octets, 253 octets at most
    (RFC 1035 section 2.3.1, RFC 5321 section 2.3.5), and not all digits
    at the top (that would be an address).
    """
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return not labels[-1].isdigit()


def hostname_under(hostname: str, domain: str) -> bool:
    """Whether *hostname* is *domain* or a name under it."""
    return hostname == domain or hostname.endswith("." + domain)


@dataclass(frozen=True)
class DKIMPublication:
    """
    One configured DKIM key of the domain.

    Attributes:
        selector: the selector (``s=``).
        record: the TXT value to publish (``txmail.policy.dkim.txt_record_for``),
            ``None`` when the key file could not be read.
        signing: the key signs outgoing mail (``sign = true`` and ``[dkim]
            sign`` not false); ``False``: published ahead of use.
        error: why the key file could not be read, when ``record`` is ``None``.
    """

    selector: str
    record: str | None
    signing: bool = True
    error: str = ""


@dataclass(frozen=True)
class MailDomain:
    """
    What the records of one domain are made from.

    Attributes:
        domain: the mail domain (lower case, no final dot).
        hostname: this server's name (the MX target, the EHLO name).
        dkim: the DKIM keys configured for *domain*.
        smarthost: ``HOST:PORT`` when outgoing mail leaves through a smarthost.
        clients: what mail clients are offered (:func:`txmail.autoconfig.client_offer`):
            its RFC 6186 SRV records are printed; ``None``: none are.
        autoconfig_port: the HTTPS port autoconfiguration is served on
            (``0``: only plain HTTP; ``None``: not served): the
            ``autoconfig.`` and ``autodiscover.`` names are printed.
        mta_sts: the MTA-STS policy text we serve (``[mta_sts]``), or ``None``.
    """

    domain: str
    hostname: str
    dkim: tuple[DKIMPublication, ...] = ()
    smarthost: str | None = None
    clients: ClientOffer | None = None
    autoconfig_port: int | None = None
    mta_sts: str | None = None

    def dkim_name(self, selector: str) -> str:
        """``<selector>._domainkey.<domain>`` (RFC 6376 section 3.6.2.1)."""
        return f"{selector}._domainkey.{self.domain}"

    @property
    def dmarc_name(self) -> str:
        """``_dmarc.<domain>`` (RFC 7489 section 6.1)."""
        return f"_dmarc.{self.domain}"


# --- the records ---------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """
    One record the domain needs.

    Attributes:
        kind: ``"mx"``, ``"address"``, ``"spf"``, ``"dkim"``, ``"dmarc"``,
            ``"srv"``, ``"autoconfig"``, ``"mta-sts"``, ``"tls-rpt"`` or ``"ptr"``.
        name: the owner name, without the final dot.
        rdtype: the record type.
        value: the record data as a zone file writes it, TXT values without
            quotes (:func:`zone_line` quotes and splits them).
        comment: lines explaining the record.
        placeholder: a record we cannot write for the user (the server's
            address, its reverse name): printed as a comment.
    """

    kind: str
    name: str
    rdtype: str
    value: str
    comment: tuple[str, ...] = ()
    placeholder: bool = False


def spf_value(domain: str, hostname: str) -> str:
    """The SPF record we suggest (see the module notes)."""
    if hostname_under(hostname, domain):
        return "v=spf1 mx -all"
    return f"v=spf1 a:{hostname} -all"


def dmarc_value(domain: str) -> str:
    """The DMARC record we suggest (see the module notes)."""
    return f"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}; adkim=r; aspf=r"


def txt_character_strings(value: str) -> list[bytes]:
    """
    A TXT value as the character-strings of one record: at most 255 octets
    each (RFC 1035 section 3.3); receivers join them with nothing between
    (RFC 7208 section 3.3, RFC 6376 section 3.6.2.2).
    """
    data = value.encode("utf-8")
    return [data[i : i + 255] for i in range(0, max(len(data), 1), 255)]


def _quoted(chunk: bytes) -> str:
    """A character-string in zone-file syntax (RFC 1035 section 5.1)."""
    out = []
    for byte in chunk:
        if byte in (0x22, 0x5C):
            out.append("\\" + chr(byte))
        elif 0x20 <= byte < 0x7F:
            out.append(chr(byte))
        else:
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def zone_line(name: str, rdtype: str, value: str) -> str:
    """One record as a zone-file line, the owner name absolute (final dot)."""
    if rdtype != "TXT":
        return f"{name}. IN {rdtype} {value}"
    return f"{name}. IN TXT " + " ".join(_quoted(chunk) for chunk in txt_character_strings(value))


def records_for(mail: MailDomain) -> list[Entry]:
    """Every record *mail* needs, in the order a zone file would list them."""
    domain, host = mail.domain, mail.hostname
    entries = [
        Entry(
            "mx",
            domain,
            "MX",
            f"10 {host}.",
            (f"MX: mail for {domain} is delivered to this server, {host} (RFC 5321 section 5.1).",),
        ),
        Entry(
            "address",
            host,
            "A",
            "<this server's public IPv4 address>",
            (
                f"{host} must point at this server's public address (we cannot know it from here):",
                "an A record, and an AAAA record if the server has IPv6. Not a CNAME: an MX",
                "target must not be an alias (RFC 2181 section 10.3).",
            ),
            placeholder=True,
        ),
        Entry("address", host, "AAAA", "<this server's public IPv6 address>", placeholder=True),
    ]
    if hostname_under(host, domain):
        spf_comment = [
            f"SPF (RFC 7208): the hosts named by the MX record ({host}, this server) may send",
            f'mail as {domain}; "-all": mail from any other host fails SPF. Use "~all" while',
            "other services (a newsletter tool, your provider) still send as this domain.",
        ]
    else:
        spf_comment = [
            f"SPF (RFC 7208): this server ({host}) may send mail as {domain}; it is named",
            f"with a: because {host} is in another zone, so SPF stays right if the MX moves.",
            '"-all": mail from any other host fails SPF ("~all" while other services still send).',
        ]
    if mail.smarthost:
        spf_comment.append(
            f"Outgoing mail leaves through the smarthost {mail.smarthost}: add its provider's SPF"
        )
        spf_comment.append('mechanism (often "include:...", see its documentation) before "-all".')
    entries.append(Entry("spf", domain, "TXT", spf_value(domain, host), tuple(spf_comment)))
    if not mail.dkim:
        entries.append(
            Entry(
                "dkim",
                mail.dkim_name("SELECTOR"),
                "TXT",
                "",
                (
                    f"DKIM (RFC 6376): no [[dkim.keys]] entry for {domain}; make a key with",
                    f"  txmail dkim keygen {domain} --selector SELECTOR --algorithm rsa",
                ),
                placeholder=True,
            )
        )
    for key in mail.dkim:
        name = mail.dkim_name(key.selector)
        if key.record is None:
            entries.append(
                Entry(
                    "dkim",
                    name,
                    "TXT",
                    "",
                    (f"DKIM key {key.selector}: cannot read the key file ({key.error}).",),
                    placeholder=True,
                )
            )
            continue
        algorithm = dkim_tags(key.record).get("k", "rsa")
        state = "signs outgoing mail" if key.signing else "published, not signing yet"
        entries.append(
            Entry(
                "dkim",
                name,
                "TXT",
                key.record,
                (
                    f"DKIM (RFC 6376) key {key.selector} ({algorithm}), {state}: receivers",
                    f"check the DKIM-Signature of mail from {domain} with this public key.",
                ),
            )
        )
    entries.append(
        Entry(
            "dmarc",
            mail.dmarc_name,
            "TXT",
            dmarc_value(domain),
            (
                f"DMARC (RFC 7489): what receivers do with mail claiming to be from {domain}",
                "that passes neither SPF nor DKIM for it. p=quarantine (the spam folder) is a",
                f"safe start; the daily reports go to postmaster@{domain}. Move to p=reject once",
                "they show only forged mail failing. adkim=r, aspf=r: subdomains align too.",
            ),
        )
    )
    entries.extend(client_records(mail))
    if mail.mta_sts is not None:
        entries.extend(_mta_sts_entries(mail, mail.mta_sts))
    entries.append(
        Entry(
            "ptr",
            "<reversed address>.in-addr.arpa",
            "PTR",
            f"{host}.",
            (
                f"Reverse DNS: the PTR record of this server's address must name {host},",
                "which must resolve back to that address (forward-confirmed), for receivers'",
                "iprev checks. It is set by whoever runs the address (your hosting provider),",
                "not in this zone; for IPv6 the name is under ip6.arpa.",
            ),
            placeholder=True,
        )
    )
    return entries


def client_records(mail: MailDomain) -> list[Entry]:
    """
    The records mail clients look up: the RFC 6186 SRV records (RFC 8314
    section 5.1 for ``_submissions``), a ``"."`` target for each service
    not offered; and, when autoconfiguration is served, the
    ``autoconfig.<domain>`` (Thunderbird) and ``autodiscover.<domain>``
    (Outlook) names, with Outlook's ``_autodiscover._tcp`` SRV record.
    """
    if mail.clients is None:
        return []
    domain, host = mail.domain, mail.clients.hostname
    entries: list[Entry] = []
    comment: tuple[str, ...] = (
        "Mail clients (RFC 6186): where to read mail (IMAP, POP3) and submit it. A lower",
        "priority is preferred: implicit TLS first (RFC 8314 section 5.1), IMAP before POP3.",
        'A target of "." says the service is not offered here, so clients do not guess.',
    )
    for record in srv_services(mail.clients):
        target = "." if not record.offered else f"{record.target}."
        value = f"{record.priority} {record.weight} {record.port} {target}"
        entries.append(Entry("srv", f"{record.service}._tcp.{domain}", "SRV", value, comment))
        comment = ()
    if mail.autoconfig_port is None:
        return entries
    entries.append(
        Entry(
            "autoconfig",
            f"autoconfig.{domain}",
            "CNAME",
            f"{host}.",
            (
                f"Autoconfiguration: Thunderbird asks https://autoconfig.{domain}/ (then http://),",
                f"Outlook https://autodiscover.{domain}/; both names lead to this server's web",
                "listener ([web] or [autoconfig] listen). For HTTPS its certificate must name them;",
                "Thunderbird's plain-HTTP fallback needs an [autoconfig] listen on port 80.",
            ),
        )
    )
    entries.append(Entry("autoconfig", f"autodiscover.{domain}", "CNAME", f"{host}."))
    if mail.autoconfig_port:
        entries.append(
            Entry(
                "autoconfig",
                f"_autodiscover._tcp.{domain}",
                "SRV",
                f"0 0 {mail.autoconfig_port} {host}.",
                (f"Outlook's fallback when https://autodiscover.{domain}/ fails: HTTPS on {host}.",),
            )
        )
    return entries


def _mta_sts_entries(mail: MailDomain, policy: str) -> list[Entry]:
    """The MTA-STS (RFC 8461 section 3.1) and TLS-RPT (RFC 8460 section 3) records of *mail*."""
    from txmail.delivery.mtasts import policy_id

    domain, host = mail.domain, mail.hostname
    return [
        Entry(
            "mta-sts",
            f"_mta-sts.{domain}",
            "TXT",
            f"v=STSv1; id={policy_id(policy)}",
            (
                f"MTA-STS (RFC 8461): senders fetch the policy of {domain} from",
                f"https://mta-sts.{domain}/.well-known/mta-sts.txt, which the [web] listener serves",
                "([mta_sts] settings); the id changes whenever the policy does (publish the new",
                "record after the new policy is served).",
            ),
        ),
        Entry(
            "mta-sts",
            f"mta-sts.{domain}",
            "CNAME",
            f"{host}.",
            (
                f"mta-sts.{domain} must reach the [web] listener on port 443, with a certificate",
                f"valid for mta-sts.{domain} (add the name to the [tls] certificate).",
            ),
        ),
        Entry(
            "tls-rpt",
            f"_smtp._tls.{domain}",
            "TXT",
            f"v=TLSRPTv1; rua=mailto:postmaster@{domain}",
            (f"TLS-RPT (RFC 8460): senders mail their daily TLS reports for {domain} here.",),
        ),
    ]


def zone_text(mail: MailDomain) -> str:
    """The records of *mail* as zone-file lines with comments (``;``)."""
    lines = [
        f"; DNS records for mail to and from {mail.domain}, served by {mail.hostname}.",
        f"; Names are absolute (final dot); put them in the {mail.domain} zone.",
    ]
    for entry in records_for(mail):
        if entry.comment:
            lines.append("")
            lines.extend(f"; {text}" for text in entry.comment)
        if entry.placeholder and not entry.value:
            continue
        line = zone_line(entry.name, entry.rdtype, entry.value)
        lines.append(f";   {line}" if entry.placeholder else line)
    return "\n".join(lines) + "\n"


# --- the check -----------------------------------------------------------------


class CheckStatus(enum.Enum):
    """What the DNS holds compared to what is needed."""

    OK = "OK"
    MISSING = "MISSING"
    WRONG = "WRONG"
    #: A DNS failure (SERVFAIL, timeout): the record may be right.
    UNCHECKED = "could not check"


@dataclass(frozen=True)
class Finding:
    """
    The check of one record.

    Attributes:
        what: the record's role (``"MX"``, ``"SPF"``, ``"DKIM s1"``, ...).
        name: the name asked about.
        status: the :class:`CheckStatus`.
        detail: one line: what was found, or what is wrong.
        found: the records found, as text, when they matter to the reader.
        expected: the zone-file line to publish, when one is missing or wrong.
        note: a remark that does not make the record wrong.
    """

    what: str
    name: str
    status: CheckStatus
    detail: str
    found: tuple[str, ...] = ()
    expected: str = ""
    note: str = ""


def _shown(text: str) -> str:
    """*text* quoted and shortened for one line of output."""
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 20] + "..." + text[-17:]
    return '"' + text + '"'


def _txt_text(record: bytes) -> str:
    return record.decode("utf-8", "replace")


def dkim_tags(record: str) -> dict[str, str]:
    """
    The tags of a DKIM key record (RFC 6376 section 3.2 tag-list), names
    lower case, values without whitespace (FWS may fold ``p=`` anywhere).
    A tag given twice keeps its first value.
    """
    tags: dict[str, str] = {}
    for spec in record.split(";"):
        name, eq, value = spec.partition("=")
        name = name.strip().lower()
        if eq and name and name not in tags:
            tags[name] = "".join(value.split())
    return tags


def _is_spf(record: bytes) -> bool:
    """RFC 7208 section 4.5: starts with "v=spf1" (any case), then a space or the end."""
    return record[:6].lower() == b"v=spf1" and (len(record) == 6 or record[6:7] == b" ")


def _unchecked(what: str, name: str, rdtype: str) -> Finding:
    return Finding(
        what,
        name,
        CheckStatus.UNCHECKED,
        f"the {rdtype} lookup failed (SERVFAIL, REFUSED or no answer in time)",
    )


def _check_mx(mail: MailDomain) -> Resolving[Finding]:
    expected = zone_line(mail.domain, "MX", f"10 {mail.hostname}.")
    answer = yield Question(mail.domain, "MX")
    if answer.failed:
        return _unchecked("MX", mail.domain, "MX")
    if not answer.ok:
        return Finding("MX", mail.domain, CheckStatus.MISSING, "no MX record", expected=expected)
    found = tuple(f"{preference} {exchange or '.'}" for preference, exchange in sorted(answer.records))
    hosts = [exchange.lower() for _, exchange in answer.records]
    if any(h in ("", ".") for h in hosts):
        return Finding(
            "MX",
            mail.domain,
            CheckStatus.WRONG,
            f"a null MX (RFC 7505): {mail.domain} says it accepts no mail",
            found,
            expected,
        )
    if mail.hostname not in hosts:
        return Finding(
            "MX",
            mail.domain,
            CheckStatus.WRONG,
            f"no MX names {mail.hostname} (right only if those hosts pass the mail on to it)",
            found,
            expected,
        )
    return Finding("MX", mail.domain, CheckStatus.OK, ", ".join(found))


def _check_address(mail: MailDomain) -> Resolving[tuple[Finding, list[str]]]:
    host = mail.hostname
    placeholder = f"{zone_line(host, 'A', '<public IPv4 address>')} (and/or AAAA)"
    cname = yield Question(host, "CNAME")
    addresses: list[str] = []
    failures: list[str] = []
    for rdtype in ("A", "AAAA"):
        answer = yield Question(host, rdtype)
        if answer.ok:
            addresses.extend(str(a) for a in answer.records)
        elif answer.failed:
            failures.append(rdtype)
    if cname.ok:
        return (
            Finding(
                "A/AAAA",
                host,
                CheckStatus.WRONG,
                f"{host} is an alias of {cname.records[0]}: an MX target must not be a CNAME "
                "(RFC 2181 section 10.3); give it its own A/AAAA records",
                tuple(addresses),
                placeholder,
            ),
            addresses,
        )
    if addresses:
        return Finding("A/AAAA", host, CheckStatus.OK, ", ".join(addresses)), addresses
    if failures:
        return _unchecked("A/AAAA", host, "/".join(failures)), addresses
    return (
        Finding(
            "A/AAAA",
            host,
            CheckStatus.MISSING,
            f"{host} has no A or AAAA record: it must point at this server's public address",
            expected=placeholder,
        ),
        addresses,
    )


def _all_term(text: str) -> str | None:
    """The ``all`` mechanism of an SPF record as written (``"-all"``), if any."""
    for term in text.split(" ")[1:]:
        if term.lower().lstrip("+-~?") == "all":
            return term
    return None


def _check_spf(mail: MailDomain, addresses: Sequence[str]) -> Resolving[Finding]:
    domain = mail.domain
    expected = zone_line(domain, "TXT", spf_value(domain, mail.hostname))
    answer = yield Question(domain, "TXT")
    if answer.failed:
        return _unchecked("SPF", domain, "TXT")
    records = [r for r in answer.records if isinstance(r, bytes) and _is_spf(r)] if answer.ok else []
    found = tuple(_shown(_txt_text(r)) for r in records)
    if not records:
        return Finding("SPF", domain, CheckStatus.MISSING, "no v=spf1 TXT record", expected=expected)
    if len(records) > 1:
        return Finding(
            "SPF",
            domain,
            CheckStatus.WRONG,
            f"{len(records)} v=spf1 records: receivers see permerror (RFC 7208 section 4.5); keep one",
            found,
            expected,
        )
    text = _txt_text(records[0])
    term = _all_term(text)
    if term is not None and term.lower() in ("all", "+all"):
        return Finding(
            "SPF",
            domain,
            CheckStatus.WRONG,
            f"{term}: every host on the Internet passes SPF for {domain}",
            found,
            expected,
        )
    if term is not None and term.lower() == "?all":
        return Finding(
            "SPF",
            domain,
            CheckStatus.WRONG,
            f"?all: hosts not listed get neutral, which protects {domain} from nothing",
            found,
            expected,
        )
    problems: list[str] = []
    for address in addresses or [PROBE_ADDRESS]:
        outcome = yield from check_host(address, domain, f"postmaster@{domain}", helo=mail.hostname)
        if outcome.result is SPFResult.TEMPERROR:
            return Finding("SPF", domain, CheckStatus.UNCHECKED, f"DNS failure: {outcome.reason}", found)
        if outcome.result is SPFResult.PERMERROR:
            return Finding("SPF", domain, CheckStatus.WRONG, outcome.reason, found, expected)
        if addresses and outcome.result is not SPFResult.PASS:
            problems.append(f"{address} gets spf={outcome.result.value} ({outcome.reason})")
    if problems:
        return Finding(
            "SPF",
            domain,
            CheckStatus.WRONG,
            f"this server ({mail.hostname}) does not pass: " + "; ".join(problems),
            found,
            expected,
        )
    if addresses:
        detail = f"{_shown(text)}, passes for {', '.join(addresses)}"
        note = ""
    else:
        detail = f"{_shown(text)} parses"
        note = f"not evaluated for this server: {mail.hostname} has no address"
    return Finding("SPF", domain, CheckStatus.OK, detail, note=note)


def _check_dkim(mail: MailDomain, key: DKIMPublication) -> Resolving[Finding]:
    what = f"DKIM {key.selector}"
    name = mail.dkim_name(key.selector)
    note = "" if key.signing else "published, not signing yet"
    if key.record is None:
        return Finding(what, name, CheckStatus.UNCHECKED, f"cannot read the key file: {key.error}")
    expected = zone_line(name, "TXT", key.record)
    ours = dkim_tags(key.record).get("p", "")
    answer = yield Question(name, "TXT")
    if answer.failed:
        return _unchecked(what, name, "TXT")
    texts = [_txt_text(r) for r in answer.records if isinstance(r, bytes)] if answer.ok else []
    keys = [t for t in texts if "p" in dkim_tags(t) and dkim_tags(t).get("v", "DKIM1") == "DKIM1"]
    found = tuple(_shown(t) for t in texts)
    if not keys:
        detail = (
            "no TXT record" if not texts else "no DKIM key record (v=DKIM1; ...; p=...) among the TXT records"
        )
        return Finding(what, name, CheckStatus.MISSING, detail, found, expected, note)
    if len(texts) > 1:
        return Finding(
            what,
            name,
            CheckStatus.WRONG,
            f"{len(texts)} TXT records: verifiers may pick any one (RFC 6376 section 3.6.2.2); keep ours only",
            found,
            expected,
            note,
        )
    published = dkim_tags(keys[0]).get("p", "")
    if published != ours:
        reason = "an empty p= (a revoked key)" if not published else "a different public key"
        return Finding(what, name, CheckStatus.WRONG, f"p= is {reason}, not ours", found, expected, note)
    return Finding(what, name, CheckStatus.OK, "p= is our public key", note=note)


def _dmarc_records(domain: str) -> Resolving[Answer | list[bytes]]:
    answer = yield Question(f"_dmarc.{domain}", "TXT")
    if answer.failed:
        return answer
    return [r for r in answer.records if isinstance(r, bytes) and is_dmarc_record(r)] if answer.ok else []


def _check_dmarc(mail: MailDomain) -> Resolving[Finding]:
    name = mail.dmarc_name
    expected = zone_line(name, "TXT", dmarc_value(mail.domain))
    records = yield from _dmarc_records(mail.domain)
    inherited = ""
    if isinstance(records, list) and not records:
        # RFC 7489 section 6.6.3: the organizational domain's record applies
        # to its subdomains.
        org = organizational_domain(mail.domain)
        if org != mail.domain:
            records = yield from _dmarc_records(org)
            inherited = org
    if isinstance(records, Answer):
        return _unchecked("DMARC", name, "TXT")
    if not records:
        return Finding("DMARC", name, CheckStatus.MISSING, "no v=DMARC1 TXT record", expected=expected)
    found = tuple(_shown(_txt_text(r)) for r in records)
    if len(records) > 1:
        return Finding(
            "DMARC",
            name,
            CheckStatus.WRONG,
            f"{len(records)} v=DMARC1 records: receivers apply no policy (RFC 7489 section 6.6.3); keep one",
            found,
            expected,
        )
    try:
        record = parse_record(records[0])
    except MalformedRecord as e:
        return Finding("DMARC", name, CheckStatus.WRONG, f"does not parse: {e}", found, expected)
    if record.policy_assumed:
        return Finding(
            "DMARC",
            name,
            CheckStatus.WRONG,
            "no valid p= tag (read as p=none, RFC 7489 section 6.6.3)",
            found,
            expected,
        )
    notes = []
    if inherited:
        sp = record.subdomain_policy or record.policy
        notes.append(f"inherited from _dmarc.{inherited} (sp={sp.value})")
    effective = (record.subdomain_policy or record.policy) if inherited else record.policy
    if effective is Policy.NONE:
        notes.append(
            "p=none: monitoring only, receivers act on nothing; p=quarantine when the reports look right"
        )
    if record.pct < 100:
        notes.append(f"pct={record.pct}: the policy applies to {record.pct}% of failing mail")
    if record.ignored:
        notes.append(f"invalid tags ignored: {', '.join(record.ignored)}")
    detail = f"{_shown(_txt_text(records[0]))}, p={record.policy.value}"
    return Finding("DMARC", name, CheckStatus.OK, detail, note="; ".join(notes))


def _check_ptr(mail: MailDomain, address: str) -> Resolving[Finding]:
    what = f"PTR {address}"
    name = reverse_name(address)
    expected = zone_line(name, "PTR", f"{mail.hostname}.") + " (set by whoever runs the address)"
    answer = yield Question(name, "PTR")
    if answer.failed:
        return _unchecked(what, name, "PTR")
    if not answer.ok:
        return Finding(
            what, name, CheckStatus.MISSING, "no reverse DNS: receivers' iprev checks fail", expected=expected
        )
    names = [str(n).lower() for n in answer.records]
    if mail.hostname not in names:
        return Finding(
            what,
            name,
            CheckStatus.WRONG,
            f"names {', '.join(names)}, not {mail.hostname} (the name this server gives in EHLO)",
            tuple(names),
            expected,
        )
    return Finding(what, name, CheckStatus.OK, f"{mail.hostname}, forward-confirmed")


def first_questions(mail: MailDomain) -> list[Question]:
    """
    The questions :func:`check_domain` asks whatever the answers, for a
    caller that wants to ask them all at once first (a resolver that caches
    then answers the check without waiting on each in turn).
    """
    questions = [
        Question(mail.domain, "MX"),
        Question(mail.hostname, "CNAME"),
        Question(mail.hostname, "A"),
        Question(mail.hostname, "AAAA"),
        Question(mail.domain, "TXT"),
    ]
    questions.extend(Question(mail.dkim_name(k.selector), "TXT") for k in mail.dkim if k.record is not None)
    questions.append(Question(mail.dmarc_name, "TXT"))
    return questions


def check_domain(mail: MailDomain) -> Resolving[list[Finding]]:
    """
    Check the published records of *mail* (see the module notes for what
    counts as right).

    Returns:
        a sans-IO check (yields :class:`txmail.dnsdata.Question`) whose
        result is one :class:`Finding` per record, in the order of
        :func:`records_for`, then one PTR finding per address of the hostname.
    """
    findings = [(yield from _check_mx(mail))]
    address, addresses = yield from _check_address(mail)
    findings.append(address)
    findings.append((yield from _check_spf(mail, addresses)))
    for key in mail.dkim:
        findings.append((yield from _check_dkim(mail, key)))
    findings.append((yield from _check_dmarc(mail)))
    for a in addresses:
        findings.append((yield from _check_ptr(mail, a)))
    return findings


def format_finding(finding: Finding) -> list[str]:
    """The lines ``txmail dns-records --check`` prints for *finding*."""
    pad = " " * 16
    lines = [f"{finding.status.value.upper():<15} {finding.what} {finding.name}: {finding.detail}"]
    lines.extend(f"{pad}found: {f}" for f in finding.found)
    if finding.note:
        lines.append(f"{pad}note:  {finding.note}")
    if finding.expected and finding.status in (CheckStatus.MISSING, CheckStatus.WRONG):
        lines.append(f"{pad}want:  {finding.expected}")
    return lines


def summary(findings: Sequence[Finding]) -> str:
    """One line counting the findings by status."""
    counts = {status: 0 for status in CheckStatus}
    for finding in findings:
        counts[finding.status] += 1
    if counts[CheckStatus.OK] == len(findings):
        return f"all {len(findings)} records OK"
    return ", ".join(
        f"{n} {status.value if status is CheckStatus.OK else status.value.lower()}"
        for status, n in counts.items()
        if n
    )
