"""
The Sender Rewriting Scheme: forwarded mail keeps passing SPF, and its
bounces still find their way home.

Theory of operation
===================

A server that forwards mail (an alias to an outside mailbox) cannot send it
on with the original envelope sender: the sender's SPF record (RFC 7208)
does not list the forwarder.  SRS rewrites the sender into an address in
the forwarder's own domain that encodes the original one, signed so that
the forwarder does not become an open relay for bounces::

    user@orig.example
      -> SRS0=HHHH=TT=orig.example=user@forwarder.example

``HHHH`` is an HMAC of the rest (so only we can make such addresses) and
``TT`` the day it was made (so they expire).  A bounce to it is reversed
to the original address.  A second forwarder does not wrap the address
again; it rewrites it into an ``SRS1`` address that points back to the
first forwarder, whose own signature it keeps verbatim::

    SRS0=HHHH=TT=orig.example=user@forwarder.example
      -> SRS1=GGGG=forwarder.example==HHHH=TT=orig.example=user@second.example

and an ``SRS1`` address forwarded once more keeps pointing to the first
forwarder.  Reversing an ``SRS1`` address gives the ``SRS0`` address at
the first forwarder, which reverses it in turn.

Compatibility
=============

The format, the hash and the timestamp are those of libsrs2 (used by
postsrsd 1.x, whose 2.x keeps the format) and of Shevek's Mail::SRS, the
scheme's reference implementation:

* the hash is HMAC-SHA1, keyed with the secret, over the parts
  concatenated with nothing between them (``timestamp, host, local part``
  for SRS0; ``first forwarder, rest`` for SRS1), each part lower-cased
  (ASCII only) first; the digest in standard base64 (``A-Za-z0-9+/``) cut
  to ``hash_length`` characters;
* the timestamp is the day number (Unix time // 86400) modulo 1024 in two
  base32 characters (``A-Z2-7``, RFC 4648), most significant first;
* both are checked case-insensitively, as libsrs2 and Mail::SRS do,
  because MTAs may change the case of a local part.  It costs little:
  a case-folded base64 character carries about 5.2 bits instead of 6, so
  the default 4 characters still take about two million tries to guess;
* the separator after ``SRS0``/``SRS1`` may be ``=``, ``+`` or ``-`` on
  input; we write the configured one.  The separators between the other
  fields are always ``=``.

Where we differ:

* a timestamp one day in the future is accepted (clocks of the servers of
  a cluster differ); libsrs2 reads it as 1023 days old.  Further ahead it
  is indistinguishable (modulo 1024) from a very old one: expired;
* the local part is everything before the *last* ``@`` (libsrs2 takes the
  first), so that a quoted local part holding ``@`` survives.  It is
  otherwise taken as written: a quoted local part (``"a b"@x``) is hashed
  with its quotes and the SMTP layer quotes the SRS address if needed;
* an ``SRS1`` address we cannot parse is rewritten as any other address
  (SRS0), where libsrs2 refuses to forward it.

RFC 5321 section 4.5.3.1.1 limits a local part to 64 octets; SRS local
parts can be longer, as with every SRS implementation, and most MTAs accept
them.

This module is sans-IO: it imports nothing from Twisted.  The time is
passed in (``now``, seconds since the epoch).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

from txmail.errors import TxMailError

__all__ = [
    "SRS",
    "BadHash",
    "InvalidAddress",
    "MalformedSRS",
    "NotSRS",
    "SRSError",
    "TimestampExpired",
    "is_srs",
]

_DAY = 86400
_BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_SLOTS = 1024  # two base32 characters
_TAGS = ("srs0", "srs1")
_SEPARATORS = "=+-"
_SEP = "="  # between the fields after the first separator (libsrs2's SRSSEP)
_MAX_HASH = 27  # characters of the base64 of a SHA-1 digest, padding left out


class SRSError(TxMailError, ValueError):
    """An address could not be rewritten or reversed."""


class InvalidAddress(SRSError):
    """The address to forward has no ``@``."""


class NotSRS(SRSError):
    """The address to reverse is not an SRS address."""


class MalformedSRS(SRSError):
    """The address starts like an SRS address but lacks a field, or has a bad timestamp."""


class BadHash(SRSError):
    """The hash does not match: the address was not made with any of our secrets, or was altered."""


class TimestampExpired(SRSError):
    """The address is older than ``max_age_days`` (or dated more than a day in the future)."""


def _local_part(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _srs_tag(local: str) -> str | None:
    """``"srs0"`` or ``"srs1"`` when *local* starts with the tag and a separator, else ``None``."""
    tag = local[:4].lower()
    if tag in _TAGS and len(local) > 4 and local[4] in _SEPARATORS:
        return tag
    return None


def is_srs(address: str) -> bool:
    """
    Whether *address* (or a bare local part) is an SRS address: its local
    part starts with ``SRS0`` or ``SRS1`` (any case) and a separator
    (``=``, ``+`` or ``-``).  Says nothing of its hash.
    """
    return _srs_tag(_local_part(address)) is not None


def _timestamp(now: float) -> str:
    """The day of *now* modulo 1024 in two base32 characters (libsrs2 ``srs_timestamp_create``)."""
    day = int(now // _DAY)
    return _BASE32[(day >> 5) & 31] + _BASE32[day & 31]


class SRS:
    """
    Rewrites envelope senders for forwarding, and reverses them for bounces.

    Args:
        secrets: the HMAC keys.  The first signs new addresses; every one
            verifies, so a new secret can be put first while addresses
            signed with the old one (kept second) still reverse.
        domain: our domain, the one SRS addresses are made in.
        max_age_days: days an address stays valid (libsrs2's default 21).
        hash_length: base64 characters of hash written, and the fewest
            accepted (libsrs2's default 4).
        separator: written after ``SRS0``/``SRS1``: ``=`` (the default),
            ``+`` or ``-``.

    Raises:
        ValueError: no secret, or an argument out of range.
    """

    def __init__(
        self,
        secrets: Sequence[bytes],
        domain: str,
        *,
        max_age_days: int = 21,
        hash_length: int = 4,
        separator: str = "=",
    ) -> None:
        if not secrets or not all(isinstance(s, bytes) and s for s in secrets):
            raise ValueError("SRS needs at least one secret, as non-empty bytes")
        if not domain or "@" in domain:
            raise ValueError(f"not a domain: {domain!r}")
        if not 0 <= max_age_days < _SLOTS - 2:
            raise ValueError(f"max_age_days must be in [0, {_SLOTS - 2}), not {max_age_days!r}")
        if not 1 <= hash_length <= _MAX_HASH:
            raise ValueError(f"hash_length must be in [1, {_MAX_HASH}], not {hash_length!r}")
        if len(separator) != 1 or separator not in _SEPARATORS:
            raise ValueError(f"separator must be one of {_SEPARATORS!r}, not {separator!r}")
        self._secrets = tuple(secrets)
        self.domain = domain
        self.max_age_days = max_age_days
        self.hash_length = hash_length
        self.separator = separator

    def _digest(self, secret: bytes, parts: Sequence[str]) -> str:
        """The full base64 HMAC-SHA1 of *parts*, lower-cased (ASCII) and concatenated."""
        data = b"".join(p.encode("utf-8", errors="surrogateescape").lower() for p in parts)
        digest = hmac.new(secret, data, hashlib.sha1).digest()
        return base64.b64encode(digest).decode("ascii").rstrip("=")

    def _hash(self, *parts: str) -> str:
        return self._digest(self._secrets[0], parts)[: self.hash_length]

    def _verify(self, given: str, *parts: str) -> None:
        """Raise :class:`BadHash` unless *given* is the hash of *parts* under one of our secrets."""
        if not self.hash_length <= len(given) <= _MAX_HASH:
            raise BadHash(f"the hash has {len(given)} characters")
        wanted = given.lower().encode("ascii", errors="replace")
        ok = False
        for secret in self._secrets:
            expected = self._digest(secret, parts)[: len(given)].lower().encode("ascii")
            ok |= hmac.compare_digest(expected, wanted)
        if not ok:
            raise BadHash("the hash does not match")

    def _check_timestamp(self, stamp: str, now: float) -> None:
        """Raise unless *stamp* is within ``max_age_days`` before *now*, or one day after."""
        stamp = stamp.upper()  # ASCII alone is checked: "ß".upper() is two letters
        if len(stamp) != 2 or not all(c in _BASE32 for c in stamp):
            raise MalformedSRS("the timestamp is not two base32 characters")
        then = _BASE32.index(stamp[0]) * 32 + _BASE32.index(stamp[1])
        age = (int(now // _DAY) - then) % _SLOTS
        if age > self.max_age_days and age != _SLOTS - 1:
            raise TimestampExpired(f"the address is {age} days old (or from the future)")

    def forward(self, address: str, now: float) -> str:
        """
        The envelope sender to use when forwarding mail from *address*.

        * ``""`` (the null sender, RFC 5321 section 4.5.5) stays null;
        * an address in our domain (any case) is returned unchanged;
        * an ``SRS0`` address (from another forwarder) becomes an ``SRS1``
          address pointing to that forwarder;
        * an ``SRS1`` address becomes our ``SRS1`` address pointing to the
          same first forwarder;
        * any other address becomes ``SRS0=HASH=TT=host=local@domain``.

        Args:
            address: the envelope sender, without angle brackets.
            now: the time, seconds since the epoch.

        Raises:
            InvalidAddress: *address* has no ``@``.
        """
        if not address:
            return address
        local, at, host = address.rpartition("@")
        if not at or not local or not host:
            raise InvalidAddress("the address has no local part and domain")
        if host.lower().rstrip(".") == self.domain.lower().rstrip("."):
            return address
        tag = _srs_tag(local)
        if tag == "srs0":
            # libsrs2 srs_compile_guarded: the first forwarder is the host,
            # the rest is the SRS0 local part after "SRS0" (separator kept).
            rest = local[4:]
            return self._srs1(host, rest)
        if tag == "srs1":
            fields = local[5:].split(_SEP, 2)
            if len(fields) == 3 and all(fields[:2]) and fields[2]:
                _, first, rest = fields
                return self._srs1(first, rest)
        stamp = _timestamp(now)
        digest = self._hash(stamp, host, local)
        return f"SRS0{self.separator}{digest}{_SEP}{stamp}{_SEP}{host}{_SEP}{local}@{self.domain}"

    def _srs1(self, first: str, rest: str) -> str:
        digest = self._hash(first, rest)
        return f"SRS1{self.separator}{digest}{_SEP}{first}{_SEP}{rest}@{self.domain}"

    def reverse(self, address: str, now: float) -> str:
        """
        The address an SRS address of ours stands for.

        An ``SRS0`` address gives the original sender; an ``SRS1`` address
        gives the ``SRS0`` address at the first forwarder (which reverses
        it in turn).  The domain of *address* is not checked: the caller
        decides which domains are ours.

        Args:
            address: the recipient of a bounce, without angle brackets.
            now: the time, seconds since the epoch.

        Raises:
            NotSRS: not an SRS address.
            MalformedSRS: a field is missing, or the timestamp is not base32.
            BadHash: no secret of ours made this hash for these fields.
            TimestampExpired: an SRS0 address older than ``max_age_days``.
        """
        local = _local_part(address)
        tag = _srs_tag(local)
        if tag is None:
            raise NotSRS("not an SRS address")
        if tag == "srs1":
            fields = local[5:].split(_SEP, 2)
            if len(fields) != 3 or not all(fields):
                raise MalformedSRS("an SRS1 address needs a hash, a host and the rest")
            digest, first, rest = fields
            self._verify(digest, first, rest)
            return f"SRS0{rest}@{first}"
        fields = local[5:].split(_SEP, 3)
        if len(fields) != 4 or not all(fields):
            raise MalformedSRS("an SRS0 address needs a hash, a timestamp, a host and a local part")
        digest, stamp, host, user = fields
        self._verify(digest, stamp, host, user)
        self._check_timestamp(stamp, now)
        return f"{user}@{host}"
