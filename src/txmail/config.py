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

    [pop3]
    listen = ["tcp:110", "ssl:995"]      # POP3 listeners (none by default); ssl: = implicit TLS
    idle_timeout = 600                   # seconds (RFC 1939 section 3: at least 10 minutes)

    [imap]
    listen = ["tcp:143", "ssl:993"]      # IMAP listeners (none by default); ssl: = implicit TLS
    idle_timeout = 1800                  # seconds (RFC 3501 section 5.4: at least 30 minutes)
    max_line = 8192                      # octets of one command line
    max_literal = 52428800               # octets of one literal; the APPENDLIMIT (RFC 7889)

Nothing here does protocol work; :mod:`txmail.service` turns settings into
running services.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from txmail.errors import ConfigError

__all__ = ["DEFAULT_DATA_DIR", "PLAINTEXT_POLICIES", "Settings", "load_config"]

PLAINTEXT_POLICIES = ("never", "loopback", "always")
DEFAULT_DATA_DIR = "./txmail-data"


@dataclass(frozen=True)
class Settings:
    """
    Validated settings of one txmail server.  See the module docstring for
    the TOML keys; attribute names follow them.
    """

    hostname: str = field(default_factory=socket.gethostname)
    data_dir: str = DEFAULT_DATA_DIR
    domains: tuple[str, ...] = ("localhost",)
    plaintext_auth: str = "loopback"
    threads: int = 8
    tls_cert: str | None = None
    tls_key: str | None = None
    smtp: tuple[str, ...] = ("tcp:2525:interface=127.0.0.1",)
    submission: tuple[str, ...] = ("tcp:2587:interface=127.0.0.1",)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 100
    command_timeout: float = 300.0
    data_timeout: float = 600.0
    pop3: tuple[str, ...] = ()
    pop3_idle_timeout: float = 600.0
    imap: tuple[str, ...] = ()
    imap_idle_timeout: float = 1800.0
    imap_max_line: int = 8192
    imap_max_literal: int = 50 * 1024 * 1024

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
    ("tls", "cert"): "tls_cert",
    ("tls", "key"): "tls_key",
    ("smtp", "listen"): "smtp",
    ("smtp", "submission"): "submission",
    ("smtp", "max_message_size"): "max_message_size",
    ("smtp", "max_recipients"): "max_recipients",
    ("smtp", "command_timeout"): "command_timeout",
    ("smtp", "data_timeout"): "data_timeout",
    ("pop3", "listen"): "pop3",
    ("pop3", "idle_timeout"): "pop3_idle_timeout",
    ("imap", "listen"): "imap",
    ("imap", "idle_timeout"): "imap_idle_timeout",
    ("imap", "max_line"): "imap_max_line",
    ("imap", "max_literal"): "imap_max_literal",
}


def _flatten(document: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for table, content in document.items():
        if not isinstance(content, Mapping):
            raise ConfigError(f"top-level key {table!r} must be a table, like [{table}]")
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


def _validate(values: dict[str, Any]) -> Settings:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name not in values or values[f.name] is None:
            continue
        value = values[f.name]
        if f.name in ("smtp", "submission", "pop3", "imap"):
            out[f.name] = _str_list(f.name, value)
        elif f.name == "domains":
            domains = tuple(d.strip().lower().rstrip(".") for d in _str_list("domains", value))
            if not domains or not all(domains):
                raise ConfigError("domains must name at least one domain")
            out[f.name] = tuple(dict.fromkeys(domains))
        elif f.name in ("threads", "max_message_size", "max_recipients", "imap_max_line", "imap_max_literal"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{f.name} must be a positive integer")
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
    if settings.plaintext_auth not in PLAINTEXT_POLICIES:
        raise ConfigError(f"plaintext_auth must be one of {', '.join(PLAINTEXT_POLICIES)}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("tls cert and key must be given together")
    for name in ("tls_cert", "tls_key"):
        path = getattr(settings, name)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{name.replace('_', ' ')} file {path!r} does not exist")
    for endpoint in settings.smtp + settings.submission + settings.pop3 + settings.imap:
        if endpoint.startswith("ssl:") and settings.tls_cert is None and "privateKey=" not in endpoint:
            raise ConfigError(f"endpoint {endpoint!r} needs a TLS certificate: set [tls] cert and key")
    return settings


def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> Settings:
    """
    Read the TOML file at *path* (``None``: defaults only), apply
    *overrides* (``Settings`` attribute names; ``None`` values are ignored)
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
        if value is None or value == () or value == []:
            continue
        values[key] = value
    return _validate(values)
