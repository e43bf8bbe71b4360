"""
Connection and rate limits, and the address-harvesting tarpit: the
``[policy.limits]`` table (:class:`txmail.policy.config.Limits`) as a
policy hook.

Theory of operation
-------------------
:class:`RateLimits` is asked in both roles (a compromised submission
account is limited like a busy client).  Clients in the trusted networks
(``session.trusted``) are neither limited nor counted, as Postfix exempts
``mynetworks``.  Every limit is off at 0.

* **Concurrent connections** (Postfix's ``smtpd_client_connection_count_limit``
  and ``anvil``; ``process_limit`` for the total): at connect, a client
  past ``max_connections_per_client`` open connections, or any client once
  ``max_connections`` are open, gets ``421 4.7.0`` and is disconnected
  (RFC 5321 section 3.8: 421 "Service not available, closing transmission
  channel"; RFC 3463 4.7.0 "other or undefined security status").  Only the
  connections this policy accepted are counted, marked in
  ``session.notes``, so :meth:`RateLimits.on_close` (told of every
  connection, refused or not) gives back exactly what was taken.
* **Messages per hour** per client and per authenticated user (Postfix's
  ``smtpd_client_message_rate_limit``, which anvil counts at MAIL): a MAIL
  over the limit gets ``451 4.7.1`` (RFC 5321 section 4.2.2 "451 Requested
  action aborted: local error in processing"; the client retries later).
  Only the MAIL commands let through are counted, so a client that keeps
  trying while refused does not push its own limit further away.
* **Recipients per hour** per client and per authenticated user (Postfix's
  ``smtpd_client_recipient_rate_limit``): an accepted recipient over the
  limit gets ``452 4.5.3`` (RFC 5321 section 4.5.3.1.10: "too many
  recipients" is 452, and the client sends the rest in a later
  transaction; RFC 3463 4.5.3 "too many recipients").  Only recipients the
  router accepted are counted (also when a later policy, greylisting say,
  refuses them: the limit is on what the client asks for).
* **Address harvesting** (Postfix's ``smtpd_soft_error_limit``,
  ``smtpd_error_sleep_time`` and ``smtpd_hard_error_limit``, counted over
  refused recipients only): every recipient the router refused in this
  connection counts as an error.  Once there are more than
  ``rcpt_errors_before_tarpit`` errors, every later RCPT reply of the
  connection (accepted or refused, as Postfix delays every reply) waits
  ``tarpit_delay`` seconds; the refusal that brings the count to
  ``rcpt_errors_before_disconnect`` is answered ``421 4.7.0 Too many
  errors`` instead of the router's reply, and the connection closes.

Implementation notes
--------------------
* A client is an IPv4 address, or the /64 of an IPv6 address (one
  customer's allocation, RFC 6177 section 3: a host can pick any address
  in it); an IPv4-mapped IPv6 address counts as its IPv4 address.  See
  :func:`client_network`.
* Hourly rates are kept in one-minute slots per key (at most 61 numbers a
  key, whatever the limit): an event counts for at least one hour and at
  most one hour and one minute after it happened, so a limit is never
  exceeded over any rolling hour, and a client is free again at most a
  minute late.
* The tables are bounded: a key idle for the whole window is dropped, and
  each table keeps at most ``max_keys`` keys, dropping the least recently
  counted first.  The connection counters hold only open connections.
* The policy keeps no timer: expiry happens as keys are counted.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from txmail.policy.config import Limits
from txmail.policy.hooks import Policy, RecipientInfo, SessionInfo, Verdict
from txmail.smtp.codes import Reply

__all__ = [
    "MESSAGE_RATE_REPLY",
    "RECIPIENT_RATE_REPLY",
    "TOO_MANY_CONNECTIONS_REPLY",
    "TOO_MANY_ERRORS_REPLY",
    "RateLimits",
    "client_network",
]

#: At connect, past the total or per-client connection limit.
TOO_MANY_CONNECTIONS_REPLY = Reply(421, "4.7.0", "Too many connections, try again later")
#: At MAIL, past the hourly message rate.
MESSAGE_RATE_REPLY = Reply(451, "4.7.1", "Message rate limit exceeded, try again later")
#: At RCPT, past the hourly recipient rate.
RECIPIENT_RATE_REPLY = Reply(452, "4.5.3", "Too many recipients, rate limit exceeded, try again later")
#: At RCPT, when refused recipients reach ``rcpt_errors_before_disconnect``.
TOO_MANY_ERRORS_REPLY = Reply(421, "4.7.0", "Too many errors")

#: Slots of a rolling window (one minute each for an hour).
_SLOTS = 60


def client_network(address: str, *, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """
    The network *address* is counted in, as text: ``"192.0.2.7"`` (IPv4,
    the default /32), ``"2001:db8:1:2::/64"`` (IPv6, the default /64).  An
    IPv4-mapped IPv6 address counts as IPv4; text that is not an address is
    returned as it is.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = ipv4_prefix if ip.version == 4 else ipv6_prefix
    if prefix == ip.max_prefixlen:
        return str(ip)
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class _RollingCounter:
    """
    Events per key over a rolling window, in ``_SLOTS`` slots (see the
    module notes); at most *max_keys* keys.
    """

    def __init__(self, window: float, max_keys: int) -> None:
        self.window = window
        self.width = window / _SLOTS
        self.max_keys = max_keys
        # key -> deque of [slot, count], oldest slot first; keys least recently counted first.
        self._keys: OrderedDict[str, deque[list[int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def _slot(self, now: float) -> int:
        return int(now // self.width)

    def _expire(self, now: float) -> None:
        # The first key is the least recently counted: once its newest slot
        # is in the window, every other key's is too.
        oldest = self._slot(now) - _SLOTS
        while self._keys:
            slots = next(iter(self._keys.values()))
            if slots and slots[-1][0] >= oldest:
                break
            self._keys.popitem(last=False)

    def count(self, key: str, now: float) -> int:
        """Events of *key* in the window ending at *now*."""
        self._expire(now)
        slots = self._keys.get(key)
        if not slots:
            return 0
        oldest = self._slot(now) - _SLOTS
        while slots and slots[0][0] < oldest:
            slots.popleft()
        return sum(n for _, n in slots)

    def add(self, key: str, now: float) -> None:
        """Count one event of *key* at *now*."""
        slot = self._slot(now)
        slots = self._keys.get(key)
        if slots is None:
            slots = self._keys[key] = deque()
        else:
            self._keys.move_to_end(key)
        if slots and slots[-1][0] == slot:
            slots[-1][1] += 1
        else:
            slots.append([slot, 1])
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)


@dataclass
class _Connection:
    """What one :class:`RateLimits` knows of one connection (in ``session.notes``)."""

    #: The client key counted at connect, or ``None`` when not counted.
    counted: str | None = None
    #: Recipients the router refused so far.
    rcpt_errors: int = 0
    #: on_close was called (a late on_connect must not count it any more).
    closed: bool = False


class RateLimits(Policy):
    """
    The limits of ``[policy.limits]`` (see the module notes).

    Args:
        limits: the :class:`~txmail.policy.config.Limits`.
        clock: an ``IReactorTime`` telling the time.
        window: seconds of the rolling window of the hourly rates.
        max_keys: clients (and users) each rate table remembers at most.

    Attributes:
        connections: connections counted now.
    """

    log = Logger()
    roles = frozenset({"mta", "submission"})

    def __init__(
        self, limits: Limits, *, clock: IReactorTime, window: float = 3600.0, max_keys: int = 100_000
    ) -> None:
        if window <= 0 or max_keys < 1:
            raise ValueError("window and max_keys must be positive")
        self.limits = limits
        self.clock = clock
        self.connections = 0
        self._per_client: dict[str, int] = {}
        self._messages_client = _RollingCounter(window, max_keys)
        self._messages_user = _RollingCounter(window, max_keys)
        self._recipients_client = _RollingCounter(window, max_keys)
        self._recipients_user = _RollingCounter(window, max_keys)
        # One note per instance, so that two RateLimits never share one.
        self._note = f"rate_limits.{id(self):x}"

    def _state(self, session: SessionInfo) -> _Connection:
        state = session.notes.get(self._note)
        if state is None:
            state = session.notes[self._note] = _Connection()
        return state

    def connections_from(self, address: str) -> int:
        """Connections counted now for the client of *address*."""
        return self._per_client.get(client_network(address), 0)

    def _refuse(self, session: SessionInfo, reply: Reply, limit: str, value: int, **fields: Any) -> Verdict:
        self.log.warn(
            "{peer} refused: {limit} ({value}) reached",
            peer=session.client_address,
            limit=limit,
            value=value,
            session_id=session.session_id,
            **fields,
        )
        return Verdict(reply=reply)

    # -- connections --

    def on_connect(self, session: SessionInfo) -> Verdict | None:
        if session.trusted:
            return None
        state = self._state(session)
        if state.closed or state.counted is not None:
            return None
        limits = self.limits
        key = client_network(session.client_address)
        if limits.max_connections and self.connections >= limits.max_connections:
            return self._refuse(
                session, TOO_MANY_CONNECTIONS_REPLY, "max_connections", limits.max_connections
            )
        per_client = limits.max_connections_per_client
        if per_client and self._per_client.get(key, 0) >= per_client:
            return self._refuse(
                session, TOO_MANY_CONNECTIONS_REPLY, "max_connections_per_client", per_client, client=key
            )
        self.connections += 1
        self._per_client[key] = self._per_client.get(key, 0) + 1
        state.counted = key
        return None

    def on_close(self, session: SessionInfo) -> None:
        state = session.notes.get(self._note)
        if state is None:
            # Never counted (trusted, or refused by an earlier policy); a
            # late on_connect must not count it either.
            if not session.trusted:
                session.notes[self._note] = _Connection(closed=True)
            return
        state.closed = True
        key, state.counted = state.counted, None
        if key is None:
            return
        self.connections -= 1
        left = self._per_client.get(key, 0) - 1
        if left > 0:
            self._per_client[key] = left
        else:
            self._per_client.pop(key, None)

    # -- rates --

    def on_mail(self, session: SessionInfo) -> Verdict | None:
        if session.trusted:
            return None
        now = self.clock.seconds()
        limits = self.limits
        client = client_network(session.client_address)
        user = session.authenticated_user
        checks = [(self._messages_client, client, limits.messages_per_hour_per_client, "client")]
        if user is not None:
            checks.append((self._messages_user, user, limits.messages_per_hour_per_user, "user"))
        for counter, key, limit, what in checks:
            if limit and counter.count(key, now) >= limit:
                return self._refuse(
                    session,
                    MESSAGE_RATE_REPLY,
                    f"messages_per_hour_per_{what}",
                    limit,
                    client=client,
                    user=user,
                )
        for counter, key, limit, _ in checks:
            if limit:
                counter.add(key, now)
        return None

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Verdict | None:
        if session.trusted:
            return None
        limits = self.limits
        state = self._state(session)
        if not recipient.accepted:
            state.rcpt_errors += 1
        errors = state.rcpt_errors
        tarpit = (
            limits.tarpit_delay
            if limits.rcpt_errors_before_tarpit and errors > limits.rcpt_errors_before_tarpit
            else 0.0
        )
        if not recipient.accepted:
            disconnect = limits.rcpt_errors_before_disconnect
            if disconnect and errors >= disconnect:
                self.log.warn(
                    "{peer} disconnected after {errors} refused recipients",
                    peer=session.client_address,
                    errors=errors,
                    session_id=session.session_id,
                )
                return Verdict(reply=TOO_MANY_ERRORS_REPLY, delay=tarpit)
            if tarpit:
                self.log.info(
                    "{peer} tarpitted {delay}s after {errors} refused recipients",
                    peer=session.client_address,
                    delay=tarpit,
                    errors=errors,
                    session_id=session.session_id,
                )
            return Verdict.tarpit(tarpit) if tarpit else None
        now = self.clock.seconds()
        client = client_network(session.client_address)
        user = session.authenticated_user
        checks = [(self._recipients_client, client, limits.recipients_per_hour_per_client, "client")]
        if user is not None:
            checks.append((self._recipients_user, user, limits.recipients_per_hour_per_user, "user"))
        for counter, key, limit, what in checks:
            if limit and counter.count(key, now) >= limit:
                verdict = self._refuse(
                    session,
                    RECIPIENT_RATE_REPLY,
                    f"recipients_per_hour_per_{what}",
                    limit,
                    client=client,
                    user=user,
                )
                return Verdict(reply=verdict.reply, delay=tarpit)
        for counter, key, limit, _ in checks:
            if limit:
                counter.add(key, now)
        return Verdict.tarpit(tarpit) if tarpit else None
