"""
Configuration: a TOML file (or nothing) plus command-line overrides, validated
into one immutable :class:`Settings`.

Every key has a default that gives the embedded server: a Maildir store under
``./txmail-data``, SMTP on 127.0.0.1:2525, submission on 127.0.0.1:2587, local
domain ``localhost``, no external service.

The file format (every key optional)::

    [server]
    hostname = "mail.example.com"        # EHLO name, Received: headers
    data_dir = "/var/lib/txmail"         # mail/, users.json, queue/, spool/
    domains = ["example.com"]            # local domains; the first is the primary
    plaintext_auth = "loopback"          # never | loopback | always
    threads = 8                          # blocking-work thread pool size
    workers = 2                          # SMTP receiving processes (twistd: default the CPUs); 1: one process
    gc_threshold = [100000, 50, 100]     # twistd mailserver's gc.set_threshold; [] leaves Python's
    proxy_protocol = ["tcp:25"]          # listeners behind a load balancer: a PROXY header (v1/v2) first
    proxy_trusted = ["10.0.0.0/8"]       # who may send it (default loopback); others are closed
    proxy_timeout = 10                   # seconds to send the complete header
    shutdown_timeout = 30                # seconds open sessions get to finish when the server stops

    [store]
    backend = "maildir"                  # maildir (data_dir/mail) | memory (lost at exit) | postgresql
    parse_workers = 2                    # Maildir: processes parsing messages (default: the CPUs); 0 inline
    maildrop_lease = "2m"                # postgresql: how long a dead node's POP3 maildrop locks outlive it

    [directory]
    backend = "file"                     # file (data_dir/users.json) | postgresql ([postgresql] dsn)

    [queue]
    backend = "file"                     # file (data_dir/queue) | postgresql ([postgresql] dsn; shared by nodes)
    lease = "15m"                        # how long a queue runner's claim on an entry lasts (postgresql)

    [postgresql]                         # the database of the PostgreSQL backends (txmail[postgresql])
    dsn = "host=/run/postgresql dbname=txmail"  # libpq connection string; required by them
    min_connections = 1                  # connections the pool keeps open
    max_connections = 10                 # most connections (and query threads) of one process

    [tls]
    cert = "/etc/txmail/cert.pem"        # PEM certificate chain; with key enables STARTTLS
    key = "/etc/txmail/key.pem"

    [smtp]
    listen = ["tcp:25"]                  # Twisted endpoint strings (MTA role)
    submission = ["tcp:587", "ssl:465"]  # submission role; ssl: = implicit TLS
    max_message_size = 52428800
    max_recipients = 100
    command_timeout = 300
    data_timeout = 600

    [lmtp]
    listen = ["unix:/run/txmail/lmtp"]   # LMTP listeners (RFC 2033; none by default): TCP or UNIX socket

    [pop3]
    listen = ["tcp:110", "ssl:995"]      # POP3 listeners (none by default); ssl: = implicit TLS
    idle_timeout = 600                   # seconds (RFC 1939 section 3: at least 10 minutes)

    [imap]
    listen = ["tcp:143", "ssl:993"]      # IMAP listeners (none by default); ssl: = implicit TLS
    idle_timeout = 1800                  # seconds (RFC 3501 section 5.4: at least 30 minutes)
    max_line = 65536                     # octets of one command line (an RFC 2971 ID can be ~32 KB)
    max_literal = 52428800               # octets of one literal; the APPENDLIMIT (RFC 7889)
    admin = "mailto:postmaster@example.com"  # METADATA server entry /shared/admin (RFC 5464)
    comment = "Maintenance on Sunday"    # METADATA server entry /shared/comment
    metadata_max_size = 16384            # octets of one METADATA entry value
    metadata_max_entries = 256           # METADATA entries one user may keep

    [managesieve]
    listen = ["tcp:4190"]                # ManageSieve listeners (RFC 5804; none by default)
    idle_timeout = 1800                  # seconds a client may stay silent
    max_script_size = 1048576            # octets of one Sieve script (QUOTA/MAXSIZE beyond)
    max_scripts = 32                     # scripts one user may keep (QUOTA/MAXSCRIPTS beyond)
    max_line = 8192                      # octets of one command outside its literals

    [web]
    listen = ["ssl:443", "tcp:8080:interface=127.0.0.1"]  # JMAP listeners (none by default); see below
    tls_proxy = false                    # a TLS-terminating proxy in [server] proxy_trusted sits in front
    token_idle_timeout = "1h"            # web client bearer tokens expire after this long unused
    max_event_streams = 8                # open EventSource push streams one user may hold

    [autoconfig]                         # mail client autoconfiguration (txmail.autoconfig)
    enabled = true                       # serve it on the [web] listeners too
    listen = ["tcp:80"]                  # listeners serving only it (plain HTTP allowed; none by default)
    hostname = "mail.example.com"        # the host clients connect to (default [server] hostname)

    [autoconfig.ports]                   # the public port of a listener behind a port mapping; 0 hides it
    "tcp:10143" = 143
    [metrics]                            # Prometheus metrics and the health check (txmail[metrics])
    listen = ["tcp:9125:interface=127.0.0.1"]  # /metrics and /health over plain HTTP (none by default)
    on_web = false                       # also /metrics on the [web] listeners (/health is always there)

    [log]
    format = "text"                      # text (twistd's lines) | json (one object per line)
    file = "/var/log/txmail/txmail.json" # where JSON lines go (default standard output)

    [outbound]
    enabled = true                       # run the queue (deliver mail for other domains)
    resolvers = ["127.0.0.1:53"]         # DNS servers to ask (HOST:PORT); default the system's
    relay_port = 25                      # port to connect to on remote MX hosts
    smarthost = "smtp.example.net:587"   # send everything through this host (HOST:PORT)
    smarthost_user = "me"                # AUTH credentials for the smarthost
    smarthost_password = "secret"
    tls_policy = "opportunistic"         # none | opportunistic | verify (STARTTLS to remote hosts)
    ca_file = "/etc/txmail/ca.pem"       # CA certificates for "verify" (default the system's)
    retry_schedule = "5m,10m,20m,40m,1h" # waits after each failed attempt; the last repeats
    give_up_after = "5d"                 # bounce what is still undelivered after this
    delay_notice_after = "4h"            # "delayed" DSN after this ("0" or "never": none)
    poll_interval = 30                   # seconds between queue passes (txmail queue flush waits for one)
    timeout = 300                        # seconds per SMTP command (RFC 5321 section 4.5.3.2)

    mta_sts = true                       # enforce other domains' MTA-STS policies (RFC 8461)
    dane = false                         # DANE (RFC 7672): needs a validating resolver (unbound)
    tls_reports = false                  # send daily TLS-RPT reports (RFC 8460) to their rua

    [outbound.tls_policies]              # per-domain TLS policy, overrides tls_policy
    "bank.example" = "verify"

    [mta_sts]                            # serve our MTA-STS policy on the [web] listener
    mode = "testing"                     # testing | enforce | none (no table: nothing served)
    mx = ["mail.example.com"]            # MX patterns (default the hostname)
    max_age = 604800                     # seconds senders keep the policy

    [quota]
    storage = "1G"                       # each user's limit over all mailboxes (default none)

    [quota.users]                        # per-user limits, override storage
    "boss@example.com" = "10G"
    "archive@example.com" = "none"

    [sieve]                              # users' Sieve filters at delivery (RFC 5228)
    enabled = true                       # run each user's active script before storing
    max_steps = 200000                   # interpreter steps of one run (then the implicit keep)
    max_actions = 32                     # actions of one run
    max_redirects = 4                    # redirects of one message per user
    global_dir = "/etc/txmail/sieve"     # the scripts `include :global` reads, NAME.sieve (none by default)

    [[milter]]                           # milters, asked in order (none by default)
    address = "inet:127.0.0.1:8891"      # or "unix:/run/opendkim/opendkim.sock"
    listeners = ["submission"]           # mta | submission | lmtp (default mta and submission)
    default_action = "tempfail"          # unreachable or broken milter: tempfail | accept | reject

    [rspamd]                             # spam filtering with rspamd (off without this table)
    url = "http://127.0.0.1:11333"       # the normal worker (POST /checkv2)
    controller_url = "http://127.0.0.1:11334"  # learning when users move mail into/out of Junk
    password = "secret"                  # the controller's password
    fail_action = "accept"               # rspamd unreachable: accept (unscanned) | tempfail

A ``[web] listen`` endpoint serves JMAP (RFC 8620, :mod:`txmail.web`):
``ssl:`` with the ``[tls]`` certificate, or plain ``tcp:`` on a loopback
interface; a plain ``tcp:`` endpoint on another interface needs ``tls_proxy
= true`` (clients reach it through a proxy that terminates TLS).

The ``[web]`` listeners also serve client autoconfiguration (Thunderbird,
Outlook, Apple profiles; :mod:`txmail.web.autoconfig`) unless
``[autoconfig] enabled = false``; ``[autoconfig] listen`` endpoints serve
only that, and may be plain HTTP on any interface (the documents hold no
secret).

The ``[policy]``, ``[dkim]``, ``[srs]`` and ``[arc]`` tables (mail
authentication, blocklists, limits, signing) are described in
:mod:`txmail.policy.config`; they become ``Settings.policy``.  Every key of
``[[milter]]`` is described in :mod:`txmail.milter.settings` and of
``[rspamd]`` in :mod:`txmail.policy.rspamd_settings`.

Nothing here does protocol work; :mod:`txmail.service` turns settings into
running services.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txmail.auth.sasl import PLAINTEXT_POLICIES, PlaintextPolicy
from txmail.errors import ConfigError
from txmail.milter.settings import MilterSettings, parse_milters
from txmail.policy.config import PolicyConfig, parse_policy_config
from txmail.policy.rspamd_settings import RspamdSettings, parse_rspamd_settings
from txmail.quota import parse_size
from txmail.smtp.client import TLS_POLICIES, TLSPolicy

__all__ = [
    "DEFAULT_DATA_DIR",
    "DEFAULT_PROXY_TRUSTED",
    "DIRECTORY_BACKENDS",
    "PLAINTEXT_POLICIES",
    "STORE_BACKENDS",
    "TLS_POLICIES",
    "Settings",
    "load_config",
    "parse_host_port",
]

#: The mail store backends ``[store] backend`` may name.
STORE_BACKENDS = ("maildir", "memory", "postgresql")
#: Backends reserved for a later release: named, but refused with a clear error.
RESERVED_STORE_BACKENDS: tuple[str, ...] = ()
#: The user directory backends ``[directory] backend`` may name.
DIRECTORY_BACKENDS = ("file", "postgresql")
#: The outbound queue backends ``[queue] backend`` may name.
QUEUE_BACKENDS = ("file", "postgresql")
DEFAULT_DATA_DIR = "./txmail-data"
#: The balancers ``[server] proxy_trusted`` names by default: this machine.
DEFAULT_PROXY_TRUSTED = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True)
class Settings:
    """
    Validated settings of one txmail server.  See the module docstring for
    the TOML keys; attribute names follow them.
    """

    hostname: str = field(default_factory=socket.gethostname)
    data_dir: str = DEFAULT_DATA_DIR
    domains: tuple[str, ...] = ("localhost",)
    plaintext_auth: PlaintextPolicy = "loopback"
    threads: int = 8
    workers: int | None = None
    gc_threshold: tuple[int, ...] = (100_000, 50, 100)
    store_backend: str = "maildir"
    store_parse_workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    store_maildrop_lease: float = 120.0
    directory_backend: str = "file"
    queue_backend: str = "file"
    queue_lease: float = 900.0
    postgresql_dsn: str = field(default="", repr=False)
    postgresql_min_connections: int = 1
    postgresql_max_connections: int = 10
    tls_cert: str | None = None
    tls_key: str | None = None
    smtp: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    submission: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    lmtp: tuple[str, ...] = ()
    pop3: tuple[str, ...] = ()
    pop3_idle_timeout: float = 600.0
    imap: tuple[str, ...] = ()
    imap_idle_timeout: float = 1800.0
    imap_max_line: int = 65536
    imap_max_literal: int = 50 * 1024 * 1024
    imap_admin: str | None = None
    imap_comment: str | None = None
    imap_metadata_max_size: int = 16384
    imap_metadata_max_entries: int = 256
    managesieve: tuple[str, ...] = ()
    managesieve_idle_timeout: float = 1800.0
    managesieve_max_script_size: int = 1024 * 1024
    managesieve_max_scripts: int = 32
    managesieve_max_line: int = 8192
    web: tuple[str, ...] = ()
    web_tls_proxy: bool = False
    web_token_idle_timeout: float = 3600.0
    web_max_event_streams: int = 8
    web_max_size_request: int = 10_000_000
    web_max_size_upload: int = 50_000_000
    web_max_calls_in_request: int = 16
    web_max_objects_in_get: int = 500
    web_max_objects_in_set: int = 500
    web_max_concurrent_requests: int = 4
    web_max_concurrent_upload: int = 4
    autoconfig_enabled: bool = True
    autoconfig_listen: tuple[str, ...] = ()
    autoconfig_hostname: str | None = None
    autoconfig_ports: tuple[tuple[str, int], ...] = ()
    proxy_protocol: tuple[str, ...] = ()
    proxy_trusted: tuple[str, ...] = DEFAULT_PROXY_TRUSTED
    proxy_timeout: float = 10.0
    shutdown_timeout: float = 30.0
    outbound_enabled: bool = True
    resolvers: tuple[str, ...] = ()
    relay_port: int = 25
    smarthost: str | None = None
    smarthost_user: str | None = None
    smarthost_password: str | None = field(default=None, repr=False)
    outbound_tls_policy: TLSPolicy = "opportunistic"
    outbound_tls_policies: tuple[tuple[str, TLSPolicy], ...] = ()
    outbound_ca_file: str | None = None
    retry_schedule: str = "5m,10m,20m,40m,1h"
    give_up_after: float = 5 * 86400.0
    delay_notice_after: float | None = 4 * 3600.0
    queue_poll_interval: float = 30.0
    outbound_timeout: float = 300.0
    outbound_mta_sts: bool = True
    outbound_dane: bool = False
    outbound_tls_reports: bool = False
    mta_sts_mode: str | None = None
    mta_sts_mx: tuple[str, ...] = ()
    mta_sts_max_age: int = 604800
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    quota_storage: int | None = None
    quota_users: tuple[tuple[str, int | None], ...] = ()
    milters: tuple[MilterSettings, ...] = ()
    rspamd: RspamdSettings | None = None
    metrics_listen: tuple[str, ...] = ()
    metrics_on_web: bool = False
    log_format: str = "text"
    log_file: str | None = None
    sieve_enabled: bool = True
    sieve_max_steps: int = 200_000
    sieve_max_actions: int = 32
    sieve_max_redirects: int = 4
    sieve_global_dir: str | None = None

    @classmethod
    def validated(cls, **values: Any) -> Settings:
        """
        Build settings in code with the same checks and normalisation as
        :func:`load_config` (the documented way for embedders)::

            Settings.validated(domains=["example.com"], imap=["tcp:1143"], data_dir="/srv/mail")

        Keyword names are the attribute names; a value of ``None`` keeps the
        default, an empty list means none (``submission=[]``: no submission
        listener).  Calling ``Settings(...)`` directly skips every check.

        Raises:
            TypeError: an unknown keyword.
            ConfigError: a value is invalid.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(unknown)}")
        return _validate(dict(values))

    @property
    def primary_domain(self) -> str:
        return self.domains[0]

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    def path(self, *parts: str) -> str:
        """Return a path below the data directory."""
        return os.path.join(self.data_dir, *parts)


# TOML table/key -> Settings attribute
_KEYS: dict[tuple[str, str], str] = {
    ("server", "hostname"): "hostname",
    ("server", "data_dir"): "data_dir",
    ("server", "domains"): "domains",
    ("server", "plaintext_auth"): "plaintext_auth",
    ("server", "threads"): "threads",
    ("server", "workers"): "workers",
    ("server", "gc_threshold"): "gc_threshold",
    ("store", "backend"): "store_backend",
    ("store", "parse_workers"): "store_parse_workers",
    ("store", "maildrop_lease"): "store_maildrop_lease",
    ("directory", "backend"): "directory_backend",
    ("queue", "backend"): "queue_backend",
    ("queue", "lease"): "queue_lease",
    ("postgresql", "dsn"): "postgresql_dsn",
    ("postgresql", "min_connections"): "postgresql_min_connections",
    ("postgresql", "max_connections"): "postgresql_max_connections",
    ("tls", "cert"): "tls_cert",
    ("tls", "key"): "tls_key",
    ("smtp", "listen"): "smtp",
    ("smtp", "submission"): "submission",
    ("smtp", "max_message_size"): "max_message_size",
    ("smtp", "max_recipients"): "max_recipients",
    ("smtp", "command_timeout"): "command_timeout",
    ("smtp", "data_timeout"): "data_timeout",
    ("lmtp", "listen"): "lmtp",
    ("pop3", "listen"): "pop3",
    ("pop3", "idle_timeout"): "pop3_idle_timeout",
    ("imap", "listen"): "imap",
    ("imap", "idle_timeout"): "imap_idle_timeout",
    ("imap", "max_line"): "imap_max_line",
    ("imap", "max_literal"): "imap_max_literal",
    ("imap", "admin"): "imap_admin",
    ("imap", "comment"): "imap_comment",
    ("imap", "metadata_max_size"): "imap_metadata_max_size",
    ("imap", "metadata_max_entries"): "imap_metadata_max_entries",
    ("managesieve", "listen"): "managesieve",
    ("managesieve", "idle_timeout"): "managesieve_idle_timeout",
    ("managesieve", "max_script_size"): "managesieve_max_script_size",
    ("managesieve", "max_scripts"): "managesieve_max_scripts",
    ("managesieve", "max_line"): "managesieve_max_line",
    ("web", "listen"): "web",
    ("web", "tls_proxy"): "web_tls_proxy",
    ("web", "token_idle_timeout"): "web_token_idle_timeout",
    ("web", "max_event_streams"): "web_max_event_streams",
    ("web", "max_size_request"): "web_max_size_request",
    ("web", "max_size_upload"): "web_max_size_upload",
    ("web", "max_calls_in_request"): "web_max_calls_in_request",
    ("web", "max_objects_in_get"): "web_max_objects_in_get",
    ("web", "max_objects_in_set"): "web_max_objects_in_set",
    ("web", "max_concurrent_requests"): "web_max_concurrent_requests",
    ("web", "max_concurrent_upload"): "web_max_concurrent_upload",
    ("autoconfig", "enabled"): "autoconfig_enabled",
    ("autoconfig", "listen"): "autoconfig_listen",
    ("autoconfig", "hostname"): "autoconfig_hostname",
    ("autoconfig", "ports"): "autoconfig_ports",
    ("server", "proxy_protocol"): "proxy_protocol",
    ("server", "proxy_trusted"): "proxy_trusted",
    ("server", "proxy_timeout"): "proxy_timeout",
    ("server", "shutdown_timeout"): "shutdown_timeout",
    ("outbound", "enabled"): "outbound_enabled",
    ("outbound", "resolvers"): "resolvers",
    ("outbound", "relay_port"): "relay_port",
    ("outbound", "smarthost"): "smarthost",
    ("outbound", "smarthost_user"): "smarthost_user",
    ("outbound", "smarthost_password"): "smarthost_password",
    ("outbound", "tls_policy"): "outbound_tls_policy",
    ("outbound", "tls_policies"): "outbound_tls_policies",
    ("quota", "storage"): "quota_storage",
    ("quota", "users"): "quota_users",
    ("outbound", "ca_file"): "outbound_ca_file",
    ("outbound", "retry_schedule"): "retry_schedule",
    ("outbound", "give_up_after"): "give_up_after",
    ("outbound", "delay_notice_after"): "delay_notice_after",
    ("outbound", "poll_interval"): "queue_poll_interval",
    ("outbound", "timeout"): "outbound_timeout",
    ("metrics", "listen"): "metrics_listen",
    ("metrics", "on_web"): "metrics_on_web",
    ("log", "format"): "log_format",
    ("log", "file"): "log_file",
    ("outbound", "mta_sts"): "outbound_mta_sts",
    ("outbound", "dane"): "outbound_dane",
    ("outbound", "tls_reports"): "outbound_tls_reports",
    ("mta_sts", "mode"): "mta_sts_mode",
    ("mta_sts", "mx"): "mta_sts_mx",
    ("mta_sts", "max_age"): "mta_sts_max_age",
    ("sieve", "enabled"): "sieve_enabled",
    ("sieve", "max_steps"): "sieve_max_steps",
    ("sieve", "max_actions"): "sieve_max_actions",
    ("sieve", "max_redirects"): "sieve_max_redirects",
    ("sieve", "global_dir"): "sieve_global_dir",
}

#: The values of ``[log] format``.
LOG_FORMATS = ("text", "json")


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """
    ``"host:port"`` (``"[v6]:port"`` for IPv6) as ``(host, port)``.

    Raises:
        ConfigError: malformed, or the port is missing (without a default) or out of range.
    """
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not host or port_text is None:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    if not port_text:
        if default_port is None:
            raise ConfigError(f"{text!r} needs a port (HOST:PORT)")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"invalid port in {text!r}")
    return host, int(port_text)


def _duration(name: str, value: Any) -> float:
    from txmail.delivery.backoff import parse_duration

    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a duration")
    if isinstance(value, int | float):
        if value <= 0:
            raise ConfigError(f"{name} must be positive")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as e:
            raise ConfigError(f"{name}: {e}") from None
    raise ConfigError(f'{name} must be a duration such as 30, "5m" or "5d"')


#: Tables read whole by :func:`txmail.policy.config.parse_policy_config`.
POLICY_TABLES = ("policy", "dkim", "srs", "arc")


def _flatten(document: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for table, content in document.items():
        if table == "milter":
            values["milters"] = content  # [[milter]]: an array of tables
            continue
        if table == "rspamd":
            values["rspamd"] = content
            continue
        if not isinstance(content, Mapping):
            raise ConfigError(f"top-level key {table!r} must be a table, like [{table}]")
        if table in POLICY_TABLES:
            values.setdefault("policy", {})[table] = content
            continue
        for key, value in content.items():
            attr = _KEYS.get((table, key))
            if attr is None:
                raise ConfigError(f"unknown key {key!r} in [{table}]")
            values[attr] = value
    return values


def _str_list(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings")
    return tuple(value)


def _networks(name: str, value: Any) -> tuple[str, ...]:
    """A list of IP networks (``"10.0.0.0/8"``, ``"2001:db8::/32"``, a bare address)."""
    networks = _str_list(name, value)
    for network in networks:
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError:
            raise ConfigError(f"{name}: {network!r} is not a network such as 192.0.2.0/24") from None
    return networks


def _store_backend(value: Any) -> str:
    """A valid ``[store] backend``; a ConfigError naming the allowed values otherwise."""
    allowed = " or ".join(f'"{b}"' for b in STORE_BACKENDS)
    if value in RESERVED_STORE_BACKENDS:
        raise ConfigError(f'[store] backend "{value}" is not available yet; use {allowed}')
    if value not in STORE_BACKENDS:
        raise ConfigError(f"[store] backend must be {allowed}, not {value!r}")
    return str(value)


def _validate(values: dict[str, Any]) -> Settings:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name not in values or values[f.name] is None:
            continue
        value = values[f.name]
        if f.name in _TRANSPORT_SECURITY:
            out[f.name] = _transport_security_value(f.name, value)
        elif f.name == "policy":
            if isinstance(value, PolicyConfig):
                out[f.name] = value
            elif isinstance(value, Mapping):
                out[f.name] = parse_policy_config(value)
            else:
                raise ConfigError("policy must be a PolicyConfig or a mapping of its tables")
        elif f.name == "quota_storage":
            out[f.name] = parse_size(value, "quota storage")
        elif f.name == "quota_users":
            items = value.items() if isinstance(value, Mapping) else value
            try:
                out[f.name] = tuple(
                    (str(user).lower(), parse_size(limit, f"quota for {user}")) for user, limit in items
                )
            except (TypeError, ValueError):
                raise ConfigError('[quota.users] must be a table of "user" = size') from None
        elif f.name == "milters":
            out[f.name] = tuple(parse_milters(value))
        elif f.name == "rspamd":
            out[f.name] = value if isinstance(value, RspamdSettings) else parse_rspamd_settings(value)
        elif f.name.startswith("autoconfig_"):
            out[f.name] = _autoconfig_value(f.name, value)
        elif f.name.startswith("managesieve"):
            out[f.name] = _managesieve_value(f.name, value)
        elif f.name in ("smtp", "submission", "lmtp", "pop3", "imap", "web"):
            out[f.name] = _str_list(f.name, value)
        elif f.name == "metrics_listen":
            out[f.name] = _str_list("[metrics] listen", value)
        elif f.name == "metrics_on_web":
            if not isinstance(value, bool):
                raise ConfigError("[metrics] on_web must be true or false")
            out[f.name] = value
        elif f.name == "log_format":
            if value not in LOG_FORMATS:
                raise ConfigError(f"[log] format must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
            out[f.name] = value
        elif f.name == "proxy_protocol":
            out[f.name] = tuple(dict.fromkeys(_str_list(f.name, value)))
        elif f.name == "proxy_trusted":
            out[f.name] = _networks(f.name, value)
        elif f.name == "proxy_timeout":
            out[f.name] = _duration(f.name, value)
        elif f.name == "shutdown_timeout":
            out[f.name] = _duration("[server] shutdown_timeout", value)
        elif f.name == "resolvers":
            out[f.name] = _str_list(f.name, value)
            for item in out[f.name]:
                parse_host_port(item, 53)
        elif f.name == "smarthost":
            if not isinstance(value, str):
                raise ConfigError("smarthost must be HOST:PORT")
            parse_host_port(value, 25)
            out[f.name] = value
        elif f.name == "store_backend":
            out[f.name] = _store_backend(value)
        elif f.name == "workers":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 256:
                raise ConfigError("[server] workers must be an integer from 1 to 256")
            out[f.name] = value
        elif f.name == "store_parse_workers":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError("[store] parse_workers must be an integer of at least 0")
            out[f.name] = value
        elif f.name == "directory_backend":
            if value not in DIRECTORY_BACKENDS:
                allowed = " or ".join(f'"{b}"' for b in DIRECTORY_BACKENDS)
                raise ConfigError(f"[directory] backend must be {allowed}, not {value!r}")
            out[f.name] = value
        elif f.name == "queue_backend":
            if value not in QUEUE_BACKENDS:
                allowed = " or ".join(f'"{b}"' for b in QUEUE_BACKENDS)
                raise ConfigError(f"[queue] backend must be {allowed}, not {value!r}")
            out[f.name] = value
        elif f.name == "store_maildrop_lease":
            out[f.name] = _duration("[store] maildrop_lease", value)
            if out[f.name] <= 0:
                raise ConfigError("[store] maildrop_lease must be longer than 0 seconds")
        elif f.name == "queue_lease":
            out[f.name] = _duration("[queue] lease", value)
            if out[f.name] <= 0:
                raise ConfigError("[queue] lease must be longer than 0 seconds")
        elif f.name == "postgresql_dsn":
            if not isinstance(value, str):
                raise ConfigError("[postgresql] dsn must be a string (a libpq connection string)")
            out[f.name] = value
        elif f.name == "outbound_enabled":
            if not isinstance(value, bool):
                raise ConfigError("outbound enabled must be true or false")
            out[f.name] = value
        elif f.name == "sieve_enabled":
            if not isinstance(value, bool):
                raise ConfigError("[sieve] enabled must be true or false")
            out[f.name] = value
        elif f.name == "sieve_global_dir":
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError("[sieve] global_dir must be a directory path")
            out[f.name] = value
        elif f.name in ("sieve_max_steps", "sieve_max_actions", "sieve_max_redirects"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"[sieve] {f.name.removeprefix('sieve_')} must be a positive integer")
            out[f.name] = value
        elif f.name == "web_tls_proxy":
            if not isinstance(value, bool):
                raise ConfigError("[web] tls_proxy must be true or false")
            out[f.name] = value
        elif f.name == "web_token_idle_timeout":
            out[f.name] = _duration("[web] token_idle_timeout", value)
        elif f.name == "web_max_event_streams":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1000:
                raise ConfigError("[web] max_event_streams must be an integer from 1 to 1000")
            out[f.name] = value
        elif f.name == "relay_port":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 65536:
                raise ConfigError("relay_port must be a port number (1-65535)")
            out[f.name] = value
        elif f.name == "outbound_tls_policies":
            items = value.items() if isinstance(value, Mapping) else value
            try:
                pairs = tuple((str(d).lower().rstrip("."), p) for d, p in items)
            except (TypeError, ValueError):
                raise ConfigError("tls_policies must be a table of domain = policy") from None
            for domain, policy in pairs:
                if policy not in TLS_POLICIES:
                    raise ConfigError(
                        f"[outbound.tls_policies] {domain} must be one of {', '.join(TLS_POLICIES)}"
                    )
            out[f.name] = pairs
        elif f.name in ("give_up_after", "queue_poll_interval", "outbound_timeout"):
            out[f.name] = _duration(f.name, value)
        elif f.name == "delay_notice_after":
            if value in (0, "0", "never", "none", False):
                out[f.name] = None
            else:
                out[f.name] = _duration(f.name, value)
        elif f.name == "domains":
            domains = tuple(d.strip().lower().rstrip(".") for d in _str_list("domains", value))
            if not domains or not all(domains):
                raise ConfigError("domains must name at least one domain")
            out[f.name] = tuple(dict.fromkeys(domains))
        elif f.name == "gc_threshold":
            # gc.set_threshold(threshold0[, threshold1[, threshold2]]); [] keeps Python's.
            if (
                not isinstance(value, list | tuple)
                or len(value) > 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
            ):
                raise ConfigError("gc_threshold must be a list of at most three positive integers")
            out[f.name] = tuple(value)
        elif f.name in (
            "threads",
            "max_message_size",
            "max_recipients",
            "imap_max_line",
            "imap_max_literal",
            "postgresql_min_connections",
            "postgresql_max_connections",
            "web_max_size_request",
            "web_max_size_upload",
            "web_max_calls_in_request",
            "web_max_objects_in_get",
            "web_max_objects_in_set",
            "web_max_concurrent_requests",
            "web_max_concurrent_upload",
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{f.name} must be a positive integer")
            out[f.name] = value
        elif f.name in ("imap_metadata_max_size", "imap_metadata_max_entries"):
            # RFC 5464 section 4.1: at least 1024 octets and 10 entries.
            least = 1024 if f.name == "imap_metadata_max_size" else 10
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ConfigError(f"{f.name} must be an integer of at least {least}")
            out[f.name] = value
        elif f.name == "imap_admin":
            # RFC 5464 section 3.2.1.1: a URI (mailto:, tel:...).
            if not isinstance(value, str) or ":" not in value.strip(":"):
                raise ConfigError('imap admin must be a URI, e.g. "mailto:postmaster@example.com"')
            out[f.name] = value
        elif f.name in ("command_timeout", "data_timeout", "pop3_idle_timeout", "imap_idle_timeout"):
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{f.name} must be a positive number of seconds")
            out[f.name] = float(value)
        else:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{f.name} must be a non-empty string")
            out[f.name] = value
    settings = Settings(**out)
    if settings.imap_max_line < 1024:
        raise ConfigError("imap max_line must be at least 1024 octets (RFC 7162 section 4 asks for 8192)")
    if settings.outbound_tls_policy not in TLS_POLICIES:
        raise ConfigError(f"outbound tls_policy must be one of {', '.join(TLS_POLICIES)}")
    from txmail.delivery.backoff import parse_schedule

    try:
        parse_schedule(settings.retry_schedule)
    except ValueError as e:
        raise ConfigError(f"retry_schedule: {e}") from None
    if (settings.smarthost_user is None) != (settings.smarthost_password is None):
        raise ConfigError("smarthost_user and smarthost_password must be given together")
    if settings.outbound_ca_file is not None and not os.path.isfile(settings.outbound_ca_file):
        raise ConfigError(f"outbound ca_file {settings.outbound_ca_file!r} does not exist")
    if settings.directory_backend == "postgresql" and not settings.postgresql_dsn.strip():
        raise ConfigError(
            '[directory] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)'
        )
    if settings.queue_backend == "postgresql" and not settings.postgresql_dsn.strip():
        raise ConfigError(
            '[queue] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)'
        )
    if settings.store_backend == "postgresql" and not settings.postgresql_dsn.strip():
        raise ConfigError(
            '[store] backend = "postgresql" needs a [postgresql] dsn (a libpq connection string)'
        )
    if settings.postgresql_min_connections > settings.postgresql_max_connections:
        raise ConfigError("[postgresql] min_connections must not exceed max_connections")
    if settings.plaintext_auth not in PLAINTEXT_POLICIES:
        raise ConfigError(f"plaintext_auth must be one of {', '.join(PLAINTEXT_POLICIES)}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("tls cert and key must be given together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(settings, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name.replace('_', ' ')} file {path!r} does not exist")
    _check_proxy_listeners(settings)
    _check_web_listeners(settings)
    _check_autoconfig(settings)
    _check_managesieve_login(settings)
    _check_monitoring(settings)
    for endpoint in (
        settings.smtp
        + settings.submission
        + settings.lmtp
        + settings.pop3
        + settings.imap
        + settings.web
        + settings.managesieve
    ):
        if endpoint.startswith("ssl:") and settings.tls_cert is None and "privateKey=" not in endpoint:
            raise ConfigError(f"endpoint {endpoint!r} needs a TLS certificate: set [tls] cert and key")
    return settings


def _managesieve_value(name: str, value: Any) -> Any:
    """A ``[managesieve]`` value, checked (:mod:`txmail.managesieve`)."""
    key = name.removeprefix("managesieve_") if name != "managesieve" else "listen"
    if key == "listen":
        return _str_list("[managesieve] listen", value)
    if key == "idle_timeout":
        return _duration("[managesieve] idle_timeout", value)
    least = {"max_script_size": 1024, "max_scripts": 1, "max_line": 1024}[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ConfigError(f"[managesieve] {key} must be an integer of at least {least}")
    return value


def _check_managesieve_login(settings: Settings) -> None:
    """A ``tcp:`` ManageSieve listener with no TLS and no plaintext passwords could log nobody in."""
    if settings.tls_cert is None and settings.plaintext_auth == "never":
        for endpoint in settings.managesieve:
            if not endpoint.startswith("ssl:"):
                raise ConfigError(
                    f"[managesieve] listen endpoint {endpoint!r} could log nobody in: "
                    'set [tls] cert and key (STARTTLS), or [server] plaintext_auth = "loopback"'
                )


def _check_proxy_listeners(settings: Settings) -> None:
    """Every ``proxy_protocol`` endpoint is a listener's (a typo would leave a listener without it)."""
    listeners = (
        settings.smtp
        + settings.submission
        + settings.lmtp
        + settings.pop3
        + settings.imap
        + settings.web
        + settings.managesieve
    )
    for endpoint in settings.proxy_protocol:
        if endpoint not in listeners:
            raise ConfigError(
                f"proxy_protocol endpoint {endpoint!r} is not a listener; name it exactly as in a listen list"
            )


def _check_monitoring(settings: Settings) -> None:
    """``[metrics]``: the library is installed, ``on_web`` has a web listener, ``ssl:`` has a certificate."""
    if not settings.metrics_listen and not settings.metrics_on_web:
        return
    from txmail.metrics import metrics_available

    if not metrics_available():
        raise ConfigError(
            "[metrics] (--metrics) needs the prometheus_client library: pip install 'txmail[metrics]'"
        )
    if settings.metrics_on_web and not settings.web:
        raise ConfigError("[metrics] on_web = true needs a [web] listen endpoint")
    for endpoint in settings.metrics_listen:
        if endpoint.startswith("ssl:") and settings.tls_cert is None and "privateKey=" not in endpoint:
            raise ConfigError(f"endpoint {endpoint!r} needs a TLS certificate: set [tls] cert and key")


def _endpoint_interface(description: str) -> str | None:
    """
    The ``interface`` of a ``tcp:``/``tcp6:`` endpoint string (``""``: every
    interface), or ``None`` for another kind of endpoint.
    """
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6"):
        return None
    for part in parts[1:]:
        if part.startswith("interface="):
            return part[len("interface=") :].replace("\\:", ":")
    return ""


def _check_web_listeners(settings: Settings) -> None:
    """
    A plain ``tcp:`` JMAP listener carries passwords and mail in clear text:
    only on a loopback interface, unless ``[web] tls_proxy`` says a proxy
    terminates TLS in front of it.
    """
    for endpoint in settings.web:
        interface = _endpoint_interface(endpoint)
        if interface is None or settings.web_tls_proxy:
            continue
        try:
            loopback = ipaddress.ip_address(interface).is_loopback
        except ValueError:
            loopback = interface == "localhost"
        if not loopback:
            raise ConfigError(
                f"[web] listen endpoint {endpoint!r} is plain HTTP on a public interface: use ssl:, "
                "bind it to a loopback interface (interface=127.0.0.1), or set [web] tls_proxy = true "
                "when a TLS-terminating proxy sits in front"
            )


def _autoconfig_value(name: str, value: Any) -> Any:
    """A valid ``[autoconfig]`` value of the Settings attribute *name*."""
    if name == "autoconfig_enabled":
        if not isinstance(value, bool):
            raise ConfigError("[autoconfig] enabled must be true or false")
        return value
    if name == "autoconfig_listen":
        return _str_list("[autoconfig] listen", value)
    if name == "autoconfig_hostname":
        text = value.strip().rstrip(".").lower() if isinstance(value, str) else ""
        if not re.fullmatch(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?", text) or ".." in text:
            raise ConfigError("[autoconfig] hostname must be a host name such as mail.example.com")
        return text
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((str(endpoint), port) for endpoint, port in items)
    except (TypeError, ValueError):
        raise ConfigError('[autoconfig.ports] must be a table of "endpoint" = port') from None
    for endpoint, port in pairs:
        if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
            raise ConfigError(f"[autoconfig.ports] {endpoint!r}: the port must be 0 (hidden) to 65535")
    return pairs


def _check_autoconfig(settings: Settings) -> None:
    """
    Every ``[autoconfig.ports]`` endpoint is a client listener's (submission,
    IMAP or POP3), and an ``ssl:`` autoconfig listener has a certificate.
    """
    listeners = settings.submission + settings.imap + settings.pop3
    for endpoint, _port in settings.autoconfig_ports:
        if endpoint not in listeners:
            raise ConfigError(
                f"[autoconfig.ports] endpoint {endpoint!r} is not a submission, IMAP or POP3 listener; "
                "name it exactly as in a listen list"
            )
    for endpoint in settings.autoconfig_listen:
        if endpoint.startswith("ssl:") and settings.tls_cert is None and "privateKey=" not in endpoint:
            raise ConfigError(f"endpoint {endpoint!r} needs a TLS certificate: set [tls] cert and key")


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """
    Read the TOML file at *path* (``None``: defaults only), apply
    *overrides* (``Settings`` attribute names; ``None`` values are ignored,
    an empty list is one: ``{"submission": []}`` is no submission listener)
    and validate.

    Raises:
        ConfigError: the file cannot be read or parsed, a key is unknown, or
            a value is invalid; the message says which and why.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as f:
                document = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path!r} is not valid TOML: {e}") from None
        values.update(_flatten(document))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        values[key] = value
    return _validate(values)


#: Settings of outbound transport security (MTA-STS, DANE, TLS-RPT).
_TRANSPORT_SECURITY = frozenset(
    {
        "outbound_mta_sts",
        "outbound_dane",
        "outbound_tls_reports",
        "mta_sts_mode",
        "mta_sts_mx",
        "mta_sts_max_age",
    }
)


def _transport_security_value(name: str, value: Any) -> Any:
    """Validate one of :data:`_TRANSPORT_SECURITY`."""
    if name in ("outbound_mta_sts", "outbound_dane", "outbound_tls_reports"):
        if not isinstance(value, bool):
            raise ConfigError(f"[outbound] {name.removeprefix('outbound_')} must be true or false")
        return value
    if name == "mta_sts_mode":
        if value not in ("enforce", "testing", "none"):
            raise ConfigError('[mta_sts] mode must be "enforce", "testing" or "none"')
        return value
    if name == "mta_sts_mx":
        patterns = _str_list("[mta_sts] mx", value)
        for pattern in patterns:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", pattern):
                raise ConfigError(f"[mta_sts] mx: {pattern!r} is not a host name or *.domain pattern")
        return patterns
    # RFC 8461 section 3.2: max_age up to 31557600 seconds.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 31557600:
        raise ConfigError("[mta_sts] max_age must be a number of seconds from 0 to 31557600")
    return value
