"""
Storage quotas: how many octets of mail each user may keep, over all of
their mailboxes.

* The limit is per user: ``[quota] storage`` is everyone's, ``[quota.users]``
  gives some users their own (``"none"`` for no limit).  ``None`` means
  unlimited; that is the default, so a server without ``[quota]`` behaves as
  before.
* Delivery checks it (:class:`txmail.delivery.router.DeliveryRouter`): a
  recipient whose mailbox is already full is refused at RCPT with ``452
  4.2.2``; a message that would take the user past the limit is refused
  with ``452 4.2.2`` (``552 5.2.2`` when the message alone is larger than
  the limit, since waiting will never help), as Dovecot's LMTP does.  IMAP
  APPEND, COPY and MOVE get ``NO [OVERQUOTA]`` (RFC 9208 section 4.3).  Reading
  and deleting always work, so a user over quota can make room.
* Usage comes from the store (:class:`txmail.interfaces.IStorageUsage`);
  a store that does not provide it has no quota.

This module is sans-IO: it imports nothing from Twisted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from txmail.errors import ConfigError
from txmail.smtp.codes import Reply

__all__ = ["QuotaExceeded", "Quotas", "Usage", "parse_size"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(value: object, name: str = "size") -> int | None:
    """
    A size in octets: an integer, or a string with a binary unit (``"500M"``,
    ``"1.5G"``, ``"2GiB"``).  ``"none"``, ``"unlimited"`` and ``0`` give
    ``None``, no limit.

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, bool):
        raise ConfigError(f'{name} must be a size such as 1073741824, "500M" or "1G"')
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{name} must not be negative")
        return value or None
    if isinstance(value, str):
        if value.strip().lower() in ("none", "unlimited", "0"):
            return None
        m = _SIZE.match(value)
        if m:
            octets = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
            return octets or None
    raise ConfigError(f'{name} must be a size such as 1073741824, "500M" or "1G", or "none"')


@dataclass(frozen=True, slots=True)
class Usage:
    """What a user's mail takes: octets (the sizes IMAP reports) and messages."""

    octets: int = 0
    messages: int = 0


class QuotaExceeded(Exception):
    """
    A message does not fit in its user's quota.

    Attributes:
        user: whose quota.
        limit: the limit in octets.
        permanent: the message alone is larger than the limit.
    """

    def __init__(self, user: str, limit: int, permanent: bool) -> None:
        super().__init__(f"{user} is over quota ({limit} octets)")
        self.user = user
        self.limit = limit
        self.permanent = permanent

    @property
    def reply(self) -> Reply:
        """The SMTP reply (RFC 3463 X.2.2, mailbox full)."""
        if self.permanent:
            return Reply(552, "5.2.2", "Message is larger than the mailbox quota")
        return FULL_REPLY


#: The reply to RCPT for a user whose mailbox is full already.
FULL_REPLY = Reply(452, "4.2.2", "Mailbox full")


@dataclass(frozen=True)
class Quotas:
    """
    The storage limits: *storage* for everyone, *users* for some (addresses
    in lower case, ``None`` for no limit).
    """

    storage: int | None = None
    users: Mapping[str, int | None] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, storage: int | None, users: Iterable[tuple[str, int | None]]) -> Quotas:
        return cls(storage, {user.lower(): limit for user, limit in users})

    @property
    def enabled(self) -> bool:
        return self.storage is not None or any(v is not None for v in self.users.values())

    def limit_for(self, user: str) -> int | None:
        """*user*'s limit in octets, or ``None``."""
        key = user.lower()
        if key in self.users:
            return self.users[key]
        return self.storage

    def check(self, user: str, usage: Usage, size: int) -> None:
        """
        Raise :class:`QuotaExceeded` unless *size* more octets fit in
        *user*'s quota beside *usage*.
        """
        limit = self.limit_for(user)
        if limit is None:
            return
        if size > limit:
            raise QuotaExceeded(user, limit, permanent=True)
        if usage.octets + size > limit:
            raise QuotaExceeded(user, limit, permanent=False)

    def full(self, user: str, usage: Usage) -> bool:
        """*user* has reached the limit: no message fits any more."""
        limit = self.limit_for(user)
        return limit is not None and usage.octets >= limit
