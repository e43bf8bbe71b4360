"""
Bearer tokens for the web client (``POST /jmap/login``), sans-IO.

A token is 32 random octets (URL-safe Base64), given to the client once;
the server keeps only its SHA-256, with the user, the time of its last use
and a *stamp* of the user's credentials when it was issued (the endpoint
refuses a token whose user's password has changed since, or who is gone).  A token not used for ``idle_timeout`` seconds expires; logging out
revokes it.  Tokens live in memory: a restart logs every web client out.
The table is bounded: each user keeps at most ``max_per_user`` tokens (a
new login drops that user's least recently used one) and the server at
most ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["TokenStore"]


@dataclass(slots=True)
class _Entry:
    user: str
    last_used: float
    stamp: str = ""


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """
    The bearer tokens in force.

    Args:
        now: the current time in seconds (the reactor's ``seconds``).
        idle_timeout: seconds of disuse after which a token expires.
        max_per_user: tokens one user may hold.
        max_tokens: tokens in all.
    """

    def __init__(
        self,
        now: Callable[[], float],
        *,
        idle_timeout: float = 3600.0,
        max_per_user: int = 50,
        max_tokens: int = 100_000,
    ) -> None:
        self.now = now
        self.idle_timeout = idle_timeout
        self.max_per_user = max_per_user
        self.max_tokens = max_tokens
        # digest -> entry, least recently used first
        self._tokens: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tokens)

    def issue(self, user: str, stamp: str = "") -> str:
        """A new token for *user*, whose credentials have the *stamp* now."""
        self._expire()
        mine = [digest for digest, entry in self._tokens.items() if entry.user == user]
        for digest in mine[: max(0, len(mine) - self.max_per_user + 1)]:
            del self._tokens[digest]
        while len(self._tokens) >= self.max_tokens:
            self._tokens.popitem(last=False)
        token = secrets.token_urlsafe(32)
        self._tokens[_digest(token)] = _Entry(user, self.now(), stamp)
        return token

    def user_for(self, token: str) -> str | None:
        """The user of *token* (its idle time starts over), or ``None`` when unknown or expired."""
        found = self.lookup(token)
        return None if found is None else found[0]

    def lookup(self, token: str) -> tuple[str, str] | None:
        """
        The user and credential stamp of *token* (its idle time starts
        over), or ``None`` when unknown or expired.
        """
        digest = _digest(token)
        entry = self._tokens.get(digest)
        if entry is None:
            return None
        now = self.now()
        if now - entry.last_used >= self.idle_timeout:
            del self._tokens[digest]
            return None
        entry.last_used = now
        self._tokens.move_to_end(digest)
        return entry.user, entry.stamp

    def revoke(self, token: str) -> bool:
        """Revoke *token*; whether it was in force."""
        return self.user_for(token) is not None and self._tokens.pop(_digest(token), None) is not None

    def _expire(self) -> None:
        """Drop the expired tokens (the least recently used come first)."""
        now = self.now()
        while self._tokens:
            digest, entry = next(iter(self._tokens.items()))
            if now - entry.last_used < self.idle_timeout:
                break
            del self._tokens[digest]
