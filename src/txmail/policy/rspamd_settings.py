"""
The ``[rspamd]`` table of the configuration, checked
(:func:`parse_rspamd_settings`), and what it says (:class:`RspamdSettings`).

This module is sans-IO: it imports nothing from Twisted, so that
:mod:`txmail.config` can read the table; :mod:`txmail.policy.rspamd` makes
the policy and the learner of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from txmail.errors import ConfigError
from txmail.policy.config import _bool, _count, _seconds

__all__ = [
    "DEFAULT_CONTROLLER_URL",
    "DEFAULT_MAX_SIZE",
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "FAIL_ACTIONS",
    "ROLES",
    "RspamdSettings",
    "parse_rspamd_settings",
]

DEFAULT_URL = "http://127.0.0.1:11333"
DEFAULT_CONTROLLER_URL = "http://127.0.0.1:11334"
#: Larger messages are not sent to rspamd (20 MiB).
DEFAULT_MAX_SIZE = 20 * 1024 * 1024
DEFAULT_TIMEOUT = 15.0
FAIL_ACTIONS = ("accept", "tempfail")
ROLES = ("mta", "submission", "lmtp")


@dataclass(frozen=True)
class RspamdSettings:
    """The ``[rspamd]`` table (see the module notes)."""

    url: str = DEFAULT_URL
    controller_url: str = DEFAULT_CONTROLLER_URL
    password: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    fail_action: str = "accept"
    listeners: tuple[str, ...] = ("mta",)
    max_size: int = DEFAULT_MAX_SIZE
    learn: bool = True


def _url(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"rspamd {name} must be a URL string")
    try:
        parts = urlsplit(value)
    except ValueError:  # a bracketed host that is not an address
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f'rspamd {name} must be an http:// URL such as "{DEFAULT_URL}", not {value!r}')
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"rspamd {name} has a bad port: {value!r}") from None
    return value.rstrip("/")


def parse_rspamd_settings(table: Mapping[str, Any]) -> RspamdSettings:
    """
    Validate the ``[rspamd]`` table of the configuration.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    if not isinstance(table, Mapping):
        raise ConfigError("[rspamd] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in ("url", "controller_url"):
            values[key] = _url(key, value)
        elif key == "password":
            if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
                raise ConfigError("rspamd password must be a one-line string")
            values[key] = value or None
        elif key == "timeout":
            seconds = _seconds("rspamd timeout", value)
            if seconds <= 0:
                raise ConfigError("rspamd timeout must be more than 0")
            values[key] = seconds
        elif key == "fail_action":
            if value not in FAIL_ACTIONS:
                raise ConfigError(f'rspamd fail_action must be "accept" or "tempfail", not {value!r}')
            values[key] = value
        elif key == "listeners":
            if not isinstance(value, list) or not value or any(r not in ROLES for r in value):
                raise ConfigError(f"rspamd listeners must be a non-empty list of {', '.join(ROLES)}")
            values[key] = tuple(dict.fromkeys(value))
        elif key == "max_size":
            size = _count("rspamd max_size", value)
            if size == 0:
                raise ConfigError("rspamd max_size must be more than 0")
            values[key] = size
        elif key == "learn":
            values[key] = _bool("rspamd learn", value)
        else:
            raise ConfigError(f"unknown key {key!r} in [rspamd]")
    return RspamdSettings(**values)
