"""
The ``[[milter]]`` entries of the configuration file, checked
(:func:`parse_milters`), and what one entry says (:class:`MilterSettings`).

This module is sans-IO: it imports nothing from Twisted, so that
:mod:`txmail.config` can read the entries; :mod:`txmail.milter.client`
makes policies of them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from txmail.errors import ConfigError
from txmail.smtp.session import SESSION_ROLES, SessionRole

__all__ = ["DEFAULT_ACTIONS", "ROLES", "DefaultAction", "MilterSettings", "check_address", "parse_milters"]

#: What a broken or unreachable milter means (``default_action``).
DefaultAction = Literal["tempfail", "accept", "reject"]
#: What ``default_action`` may be.
DEFAULT_ACTIONS: tuple[DefaultAction, ...] = get_args(DefaultAction)
#: The listener roles a milter may apply to.
ROLES: tuple[SessionRole, ...] = SESSION_ROLES

_KEYS = {
    "address",
    "name",
    "listeners",
    "default_action",
    "connect_timeout",
    "command_timeout",
    "content_timeout",
}


@dataclass(frozen=True)
class MilterSettings:
    """
    One ``[[milter]]`` entry.

    Attributes:
        address: ``inet:host:port`` or ``unix:/path`` (Postfix's syntax), or
            a Twisted client endpoint string (``tcp:host=...:port=...``).
        name: for the logs (default: the address).
        listeners: the listener roles it applies to.
        default_action: what a broken or unreachable milter means
            (:data:`DEFAULT_ACTIONS`).
        connect_timeout, command_timeout, content_timeout: seconds
            (Postfix's ``milter_connect_timeout``, ``milter_command_timeout``
            and ``milter_content_timeout``).
    """

    address: str
    name: str = ""
    listeners: tuple[SessionRole, ...] = ("mta", "submission")
    default_action: DefaultAction = "tempfail"
    connect_timeout: float = 30.0
    command_timeout: float = 30.0
    content_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.address)


def check_address(address: str) -> None:
    """Raise ValueError unless *address* is a milter address we can connect to."""
    kind, sep, rest = address.partition(":")
    if not sep or not rest:
        raise ValueError("needs inet:host:port, unix:/path or a Twisted endpoint string")
    if kind == "inet":
        host, sep, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("inet: needs host:port (port 1 to 65535)")
    elif kind == "unix" and not rest.startswith("path="):
        if not rest.startswith("/"):
            raise ValueError("unix: needs an absolute path")
    elif kind not in ("tcp", "unix", "tls", "ssl"):
        raise ValueError(f"unknown transport {kind!r}")


def _timeout(entry: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = entry.get(key, default)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigError(f"{where}: {key} must be a positive number of seconds, not {value!r}")
    return float(value)


def parse_milters(entries: Sequence[Mapping[str, Any]]) -> list[MilterSettings]:
    """
    The ``[[milter]]`` entries of the configuration, checked, in order
    (entries that are :class:`MilterSettings` already are kept as they are).

    Raises:
        ConfigError: an unknown key or a bad value (the message names the
            entry and the key).
    """
    if not isinstance(entries, list | tuple):
        raise ConfigError("[[milter]] must be a list of tables")
    result = []
    for number, entry in enumerate(entries, 1):
        where = f"[[milter]] entry {number}"
        if isinstance(entry, MilterSettings):
            result.append(entry)  # built in code (Settings.validated)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{where}: must be a table")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_KEYS))})"
            )
        address = entry.get("address")
        if not isinstance(address, str) or not address.strip():
            raise ConfigError(f"{where}: address is required (inet:host:port or unix:/path)")
        address = address.strip()
        try:
            check_address(address)
        except ValueError as e:
            raise ConfigError(f"{where}: bad address {address!r}: {e}") from None
        where = f"[[milter]] {address}"
        name = entry.get("name", "")
        if not isinstance(name, str):
            raise ConfigError(f"{where}: name must be a string")
        listeners = entry.get("listeners", ["mta", "submission"])
        if (
            not isinstance(listeners, list | tuple)
            or not listeners
            or not all(isinstance(role, str) and role in ROLES for role in listeners)
        ):
            raise ConfigError(
                f"{where}: listeners must be a non-empty list of {', '.join(ROLES)}, not {listeners!r}"
            )
        action = entry.get("default_action", "tempfail")
        if action not in DEFAULT_ACTIONS:
            raise ConfigError(
                f"{where}: default_action must be one of {', '.join(DEFAULT_ACTIONS)}, not {action!r}"
            )
        result.append(
            MilterSettings(
                address=address,
                name=name,
                listeners=tuple(dict.fromkeys(listeners)),
                default_action=action,
                connect_timeout=_timeout(entry, "connect_timeout", 30.0, where),
                command_timeout=_timeout(entry, "command_timeout", 30.0, where),
                content_timeout=_timeout(entry, "content_timeout", 300.0, where),
            )
        )
    return result
