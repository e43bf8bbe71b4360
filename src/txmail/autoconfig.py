"""
Client autoconfiguration: what this server offers mail clients, and the
documents that tell them.

Theory of operation
-------------------
One :class:`ClientOffer` says what a client needs to reach the server: the
host name clients connect to (``[autoconfig] hostname``, else ``[server]
hostname``) and one :class:`MailService` per listener a client may use:

================  ============  ==============  ========================
role              endpoint      security        RFC 6186 / 8314 SRV name
================  ============  ==============  ========================
``imap``          ``ssl:``      implicit TLS    ``_imaps._tcp``
``imap``          ``tcp:``...   STARTTLS        ``_imap._tcp``
``pop3``          ``ssl:``      implicit TLS    ``_pop3s._tcp``
``pop3``          ``tcp:``...   STARTTLS        ``_pop3._tcp``
``submission``    ``ssl:``      implicit TLS    ``_submissions._tcp``
``submission``    ``tcp:``...   STARTTLS        ``_submission._tcp``
================  ============  ==============  ========================

:func:`client_offer` builds it from the settings and, in a running server,
the ports the listeners are actually bound to.  The rules:

* a listener without TLS (a ``tcp:`` endpoint and no ``[tls]``
  certificate) is never announced: a client told to use it would send its
  password in clear text;
* the port is the ``[autoconfig.ports]`` entry of the listener's endpoint
  when there is one (the public port of a listener behind a port mapping;
  ``0`` hides the listener), else the port the listener is bound to, else
  the one its endpoint string names; a listener with no port (a UNIX
  socket) is announced only through ``[autoconfig.ports]``;
* the MTA (port 25) and LMTP listeners are not for clients.

Every document names the user by their full address, which is what
:class:`txmail.auth.authenticator.Authenticator` takes (a name without
``@`` is only taken in the primary domain), and asks for the password in
clear text inside TLS (the PLAIN and LOGIN SASL mechanisms, IMAP LOGIN,
POP3 USER/PASS), which every listener announced offers once TLS is up.

The documents:

* :func:`thunderbird_config`: Mozilla's ``clientConfig`` version 1.1
  (Thunderbird's "Autoconfiguration in Thunderbird" page; ``emailProvider``
  with ``incomingServer`` and ``outgoingServer`` elements, most preferred
  first, the user name as the ``%EMAILADDRESS%`` placeholder);
* :func:`parse_autodiscover_request` and :func:`autodiscover_response`:
  Microsoft's "Plain Old XML" Autodiscover for Outlook (MS-OXDSCLI; the
  request schema ``.../outlook/requestschema/2006``, the response schema
  ``.../outlook/responseschema/2006a``), with :func:`autodiscover_error`;
* :func:`mobileconfig`: an Apple configuration profile with one
  ``com.apple.mail.managed`` payload (Apple's "Configuration Profile
  Reference"), unsigned: a device shows it as "Not Verified" (signing it
  needs the certificate's key and the CMS signature of
  ``security cms -S``/``openssl smime -sign``, not done here);
* :func:`srv_services`: the RFC 6186 SRV records, with RFC 8314's
  ``_submissions._tcp`` (printed by ``txmail dns-records``).

Preference, most preferred first: implicit TLS before STARTTLS (RFC 8314
section 3), IMAP before POP3.

Parsing the Autodiscover request
--------------------------------
The request body comes from anyone on the network, so
:func:`parse_autodiscover_request` takes at most
:data:`MAX_AUTODISCOVER_REQUEST` octets, refuses any document type
declaration (no entities, internal or external: "billion laughs" and
external entity attacks cannot start), and bounds the nesting depth and
the number of elements, using expat directly with parameter entities off.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from xml.parsers import expat

__all__ = [
    "AUTODISCOVER_REQUEST_SCHEMA",
    "AUTODISCOVER_RESPONSE_SCHEMA",
    "MAX_AUTODISCOVER_REQUEST",
    "MOBILECONFIG_TYPE",
    "OUTLOOK_RESPONSE_SCHEMA",
    "AutodiscoverRequest",
    "BadRequest",
    "ClientOffer",
    "MailService",
    "NothingOffered",
    "SRVService",
    "autodiscover_error",
    "autodiscover_response",
    "client_offer",
    "endpoint_port",
    "https_port",
    "mobileconfig",
    "parse_address",
    "parse_autodiscover_request",
    "srv_services",
    "thunderbird_config",
]

#: The Autodiscover request namespace of Outlook (MS-OXDSCLI section 2.2.3).
AUTODISCOVER_REQUEST_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
#: The namespace of the ``Autodiscover`` element of every response.
AUTODISCOVER_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
#: The Outlook response schema, the only ``AcceptableResponseSchema`` served.
OUTLOOK_RESPONSE_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
#: The media type of an Apple configuration profile.
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"
#: Octets of an Autodiscover request body (a real one is about 400).
MAX_AUTODISCOVER_REQUEST = 16_384
#: Elements of an Autodiscover request, and their nesting depth.
MAX_AUTODISCOVER_ELEMENTS = 64
MAX_AUTODISCOVER_DEPTH = 8

#: The placeholder Thunderbird replaces with the address being set up.
EMAILADDRESS = "%EMAILADDRESS%"

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# An RFC 5322 dot-atom local part (RFC 6531 allows UTF-8 in it): no quoted strings.
_LOCAL_PART = re.compile(r"[^\s\x00-\x1f\x7f()<>\[\]:;@\\,\"]{1,64}")


class BadRequest(ValueError):
    """A request the documents cannot be made for (the message says why; safe to show)."""


class NothingOffered(Exception):
    """The server offers no service the document needs over TLS (no listener, or none with TLS)."""


# --- what is offered -------------------------------------------------------------


@dataclass(frozen=True)
class MailService:
    """
    One listener a client may use.

    Attributes:
        protocol: ``"imap"``, ``"pop3"`` or ``"smtp"`` (submission).
        port: the port clients connect to.
        implicit_tls: TLS from the first octet (``ssl:``); ``False``: STARTTLS.
        endpoint: the listener's endpoint string, as configured.
    """

    protocol: str
    port: int
    implicit_tls: bool
    endpoint: str = ""

    @property
    def srv_name(self) -> str:
        """The service label of its SRV record: ``_imaps``, ``_submission``..."""
        base = {"imap": "imap", "pop3": "pop3", "smtp": "submission"}[self.protocol]
        return f"_{base}{'s' if self.implicit_tls else ''}"

    @property
    def thunderbird_socket_type(self) -> str:
        """``SSL`` (implicit TLS) or ``STARTTLS`` (clientConfig ``socketType``)."""
        return "SSL" if self.implicit_tls else "STARTTLS"

    @property
    def preference(self) -> int:
        """Lower is preferred: implicit TLS first (RFC 8314 section 3), then IMAP before POP3."""
        return (0 if self.protocol != "pop3" else 20) + (0 if self.implicit_tls else 10)


@dataclass(frozen=True)
class ClientOffer:
    """
    What clients are told: the host name and the services, most preferred first.

    Attributes:
        hostname: the name clients connect to (the TLS certificate's name).
        services: the :class:`MailService` list.
    """

    hostname: str
    services: tuple[MailService, ...] = ()

    @property
    def incoming(self) -> list[MailService]:
        """The IMAP and POP3 services, most preferred first."""
        return sorted((s for s in self.services if s.protocol != "smtp"), key=lambda s: s.preference)

    @property
    def outgoing(self) -> list[MailService]:
        """The submission services, implicit TLS first."""
        return sorted((s for s in self.services if s.protocol == "smtp"), key=lambda s: s.preference)


def endpoint_port(description: str) -> int | None:
    """
    The port a ``tcp:``, ``tcp6:`` or ``ssl:`` endpoint string listens on
    (its first positional argument, or ``port=``), or ``None`` for another
    kind of endpoint or a malformed port.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6", "ssl"):
        return None
    positional = [p for p in parts[1:] if "=" not in p]
    named = dict(p.split("=", 1) for p in parts[1:] if "=" in p)
    text = positional[0] if positional else named.get("port", "")
    if not text.isdigit() or not 0 <= int(text) < 65536:
        return None
    return int(text)


#: Listener role (``MailServer.listeners_for``) -> protocol.
ROLES: dict[Literal["imap", "pop3", "submission"], str] = {
    "imap": "imap",
    "pop3": "pop3",
    "submission": "smtp",
}


def client_offer(
    settings: Any,
    bound: Mapping[tuple[str, int], int] | None = None,
) -> ClientOffer:
    """
    What *settings* (a :class:`txmail.config.Settings`) offer clients (see
    the module notes).

    Args:
        settings: the server's settings.
        bound: the port each listener is bound to, by (role, index in its
            settings list), for a running server whose endpoints say port 0
            or name no port (``systemd:``).
    """
    bound = bound or {}
    overrides = dict(settings.autoconfig_ports)
    services: list[MailService] = []
    for role, protocol in ROLES.items():
        for index, description in enumerate(getattr(settings, role)):
            implicit = description.startswith("ssl:")
            if not implicit and not settings.tls_enabled:
                continue  # plaintext only: never announced
            port = overrides.get(description)
            if port is None:
                port = bound.get((role, index)) or endpoint_port(description)
            if not port:
                continue
            services.append(MailService(protocol, port, implicit, description))
    hostname = settings.autoconfig_hostname or settings.hostname
    services.sort(key=lambda s: s.preference)
    return ClientOffer(hostname.strip().rstrip(".").lower(), tuple(services))


def https_port(settings: Any) -> int | None:
    """
    The HTTPS port autoconfiguration is served on by *settings*: the port
    of the first ``ssl:`` ``[autoconfig] listen`` or (when enabled there)
    ``[web] listen`` endpoint, 443 behind a TLS-terminating proxy (``[web]
    tls_proxy``); ``0`` when it is only served over plain HTTP; ``None``
    when it is not served.
    """
    web = settings.web if settings.autoconfig_enabled else ()
    endpoints = (*settings.autoconfig_listen, *web)
    if not endpoints:
        return None
    for endpoint in endpoints:
        port = endpoint_port(endpoint) if endpoint.startswith("ssl:") else None
        if port:
            return port
    return 443 if web and settings.web_tls_proxy else 0


# --- addresses ---------------------------------------------------------------------


def parse_address(text: str) -> tuple[str, str]:
    """
    An address a client asks about, as ``(address, domain)``: the local
    part as given, the domain in lower case (A-labels for an
    internationalized name).

    Raises:
        BadRequest: not an address (too long, no ``@``, a bad domain).
    """
    text = text.strip()
    if not text:
        raise BadRequest("no email address given")
    if len(text) > 254:
        raise BadRequest("the email address is too long")
    local, at, domain = text.rpartition("@")
    if not at or not _LOCAL_PART.fullmatch(local) or local.startswith(".") or local.endswith("."):
        raise BadRequest("not an email address")
    domain = domain.rstrip(".").lower()
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise BadRequest("not an email address") from None
    labels = domain.split(".")
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise BadRequest("not an email address")
    return f"{local}@{domain}", domain


# --- Thunderbird ---------------------------------------------------------------------


def _xml(root: ET.Element) -> bytes:
    ET.indent(root)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode").encode("utf-8")


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    child = ET.SubElement(parent, tag)
    child.text = text
    return child


def thunderbird_config(offer: ClientOffer, domain: str) -> bytes:
    """
    The ``clientConfig`` version 1.1 document for *domain* (Thunderbird's
    autoconfig): an ``incomingServer`` per IMAP and POP3 service and an
    ``outgoingServer`` per submission service, most preferred first, each
    with ``password-cleartext`` authentication and the full address as the
    user name (the ``%EMAILADDRESS%`` placeholder, which Thunderbird
    replaces).

    Raises:
        NothingOffered: no service is offered.
    """
    if not offer.services:
        raise NothingOffered()
    root = ET.Element("clientConfig", version="1.1")
    provider = ET.SubElement(root, "emailProvider", id=domain)
    _text(provider, "domain", domain)
    _text(provider, "displayName", f"{domain} mail")
    _text(provider, "displayShortName", domain)
    for element, services in (("incomingServer", offer.incoming), ("outgoingServer", offer.outgoing)):
        for service in services:
            server = ET.SubElement(provider, element, type=service.protocol)
            _text(server, "hostname", offer.hostname)
            _text(server, "port", str(service.port))
            _text(server, "socketType", service.thunderbird_socket_type)
            _text(server, "authentication", "password-cleartext")
            _text(server, "username", EMAILADDRESS)
    return _xml(root)


# --- Autodiscover ----------------------------------------------------------------------


@dataclass(frozen=True)
class AutodiscoverRequest:
    """The fields of an Outlook Autodiscover request (MS-OXDSCLI section 2.2.3)."""

    email: str
    schema: str


def parse_autodiscover_request(data: bytes) -> AutodiscoverRequest:
    """
    The ``EMailAddress`` and ``AcceptableResponseSchema`` of an Outlook
    Autodiscover request::

        <Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
          <Request>
            <EMailAddress>user@example.com</EMailAddress>
            <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a</AcceptableResponseSchema>
          </Request>
        </Autodiscover>

    Elements are matched by local name under ``Autodiscover/Request``
    (clients differ in the namespace they send: Outlook's request schema,
    the mobile sync one, none).  Parsed safely (see the module notes).

    Raises:
        BadRequest: too large, not well-formed XML, a document type
            declaration, too deep or too many elements, or not an
            Autodiscover request.
    """
    if len(data) > MAX_AUTODISCOVER_REQUEST:
        raise BadRequest(f"the request is larger than {MAX_AUTODISCOVER_REQUEST} octets")
    # UTF-8 whatever the document declares (Outlook sends UTF-8): no codec is looked up by name.
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    # No external DTD subset or parameter entities are ever read.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    path: list[str] = []
    fields: dict[str, list[str]] = {}
    count = 0

    def refuse(*args: Any) -> None:
        raise BadRequest("document type declarations and entities are not accepted")

    def start(name: str, attributes: Any) -> None:
        nonlocal count
        count += 1
        if count > MAX_AUTODISCOVER_ELEMENTS or len(path) >= MAX_AUTODISCOVER_DEPTH:
            raise BadRequest("the request has too many elements")
        path.append(name.rpartition(" ")[2])
        if len(path) == 3 and path[:2] == ["Autodiscover", "Request"]:
            fields.setdefault(path[2], [])

    def end(name: str) -> None:
        path.pop()

    def characters(text: str) -> None:
        if len(path) == 3 and path[:2] == ["Autodiscover", "Request"]:
            fields[path[2]].append(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]  # expat's stub types the handler's return value
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, LookupError, UnicodeError):
        raise BadRequest("the request is not well-formed XML") from None
    if "EMailAddress" not in fields:
        raise BadRequest("the request has no Autodiscover/Request/EMailAddress")
    email = "".join(fields["EMailAddress"]).strip()
    schema = "".join(fields.get("AcceptableResponseSchema", [])).strip()
    return AutodiscoverRequest(email, schema)


def _autodiscover_root() -> ET.Element:
    return ET.Element("Autodiscover", xmlns=AUTODISCOVER_RESPONSE_SCHEMA)


def autodiscover_response(offer: ClientOffer, address: str) -> bytes:
    """
    The Outlook Autodiscover response (MS-OXDSCLI section 2.2.4, the
    ``.../outlook/responseschema/2006a`` schema) for *address*: an
    ``email`` account with a ``Protocol`` per service (``IMAP``, ``POP3``,
    ``SMTP``), most preferred first.  ``SSL`` is ``on`` for all (TLS is
    always required); ``Encryption`` says which kind, ``SSL`` (implicit)
    or ``TLS`` (STARTTLS), and overrides ``SSL`` for clients that know it.
    ``LoginName`` is the full address; ``SPA`` (NTLM) is off.

    Raises:
        NothingOffered: no service is offered.
    """
    if not offer.services:
        raise NothingOffered()
    root = _autodiscover_root()
    response = ET.SubElement(root, "Response", xmlns=OUTLOOK_RESPONSE_SCHEMA)
    account = ET.SubElement(response, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for service in [*offer.incoming, *offer.outgoing]:
        protocol = ET.SubElement(account, "Protocol")
        _text(protocol, "Type", {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}[service.protocol])
        _text(protocol, "Server", offer.hostname)
        _text(protocol, "Port", str(service.port))
        _text(protocol, "LoginName", address)
        _text(protocol, "DomainRequired", "off")
        _text(protocol, "SPA", "off")
        _text(protocol, "SSL", "on")
        _text(protocol, "Encryption", "SSL" if service.implicit_tls else "TLS")
        _text(protocol, "AuthRequired", "on")
        if service.protocol == "smtp":
            _text(protocol, "UsePOPAuth", "off")
            _text(protocol, "SMTPLast", "off")
    return _xml(root)


#: Autodiscover error codes (MS-OXDSCLI section 2.2.4.1.1.1.2).
INVALID_REQUEST = 600
SCHEMA_NOT_SUPPORTED = 601


def autodiscover_error(code: int, message: str) -> bytes:
    """An Autodiscover error response: *code* 600 (invalid request) or 601 (schema not supported)."""
    root = _autodiscover_root()
    response = ET.SubElement(root, "Response")
    error = ET.SubElement(response, "Error", Id="0", Time="00:00:00.0000000")
    _text(error, "ErrorCode", str(code))
    _text(error, "Message", message)
    ET.SubElement(error, "DebugData")
    return _xml(root)


# --- Apple -------------------------------------------------------------------------------


def _reverse_dns(hostname: str) -> str:
    return ".".join(reversed(hostname.split(".")))


def mobileconfig(offer: ClientOffer, address: str) -> bytes:
    """
    An Apple configuration profile (an XML property list) that adds the
    mail account of *address*: one ``com.apple.mail.managed`` payload with
    the most preferred incoming service (IMAP before POP3, implicit TLS
    first) and submission service, SSL on (Apple's clients use STARTTLS on
    a STARTTLS port), password authentication, the full address as the
    user name.  The password is not in the profile: the device asks for it.

    The identifiers and UUIDs are derived from the host name and the
    address, so installing a new download replaces the profile rather than
    adding a second account.  The profile is not signed (see the module
    notes).

    Raises:
        NothingOffered: the server offers no incoming or no outgoing service.
    """
    if not offer.incoming or not offer.outgoing:
        raise NothingOffered()
    incoming, outgoing = offer.incoming[0], offer.outgoing[0]
    base = f"{_reverse_dns(offer.hostname)}.mail"
    key = f"{offer.hostname}/{address.lower()}"
    profile_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"txmail-profile:{key}")).upper()
    payload_uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"txmail-mail:{key}")).upper()
    identifier = f"{base}.{profile_uuid}"
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.account",
        "PayloadUUID": payload_uuid,
        "PayloadDisplayName": address,
        "PayloadDescription": f"The mail account {address}",
        "EmailAccountDescription": address,
        "EmailAccountType": "EmailTypeIMAP" if incoming.protocol == "imap" else "EmailTypePOP",
        "EmailAddress": address,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": offer.hostname,
        "IncomingMailServerPortNumber": incoming.port,
        "IncomingMailServerUseSSL": True,
        "IncomingMailServerUsername": address,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": offer.hostname,
        "OutgoingMailServerPortNumber": outgoing.port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": address,
        "OutgoingPasswordSameAsIncomingPassword": True,
        "PreventAppSheet": False,
        "PreventMove": False,
        "SMIMEEnabled": False,
        "allowMailDrop": False,
        "disableMailRecentsSyncing": False,
    }
    profile = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": profile_uuid,
        "PayloadDisplayName": f"Mail: {address}",
        "PayloadDescription": f"Sets up the mail account {address} on {offer.hostname}.",
        "PayloadOrganization": address.rpartition("@")[2],
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


# --- SRV (RFC 6186, RFC 8314) ---------------------------------------------------------------


@dataclass(frozen=True)
class SRVService:
    """
    One SRV record: ``<service>._tcp.<domain> SRV priority weight port target``.

    ``target`` is ``"."`` (with priority, weight and port 0) for a service
    not offered: RFC 6186 section 4, "the service is decidedly not
    available at this domain".
    """

    service: str
    priority: int
    weight: int
    port: int
    target: str

    @property
    def offered(self) -> bool:
        return self.target != "."


#: Every SRV service a mail client may look up (RFC 6186 section 3, RFC 8314 section 5.1).
SRV_SERVICES = ("_submissions", "_submission", "_imaps", "_imap", "_pop3s", "_pop3")


def srv_services(offer: ClientOffer) -> list[SRVService]:
    """
    The SRV records of *offer*: one per service offered (a lower priority
    for implicit TLS, as RFC 8314 section 5.1 asks, and for IMAP over
    POP3), and a ``"."`` record for each service of :data:`SRV_SERVICES`
    not offered, so clients do not guess.
    """
    records: list[SRVService] = []
    for name in SRV_SERVICES:
        offered = [s for s in offer.services if s.srv_name == name]
        if not offered:
            records.append(SRVService(name, 0, 0, 0, "."))
            continue
        for service in _unique_ports(offered):
            records.append(SRVService(name, service.preference, 1, service.port, offer.hostname))
    return records


def _unique_ports(services: Iterable[MailService]) -> Sequence[MailService]:
    seen: dict[int, MailService] = {}
    for service in services:
        seen.setdefault(service.port, service)
    return list(seen.values())
