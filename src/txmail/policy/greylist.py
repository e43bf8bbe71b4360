"""
Greylisting (RFC 6647): a temporary refusal of mail from a client not
seen before, which a real mail server retries and most spam software does
not.

Theory of operation
-------------------
:class:`Greylisting` is asked on port 25 only (``roles = {"mta"}``), at
RCPT, for recipients the router accepted whose domain has greylisting on
(``greylisting`` in ``[policy]`` or in the domain's
``[policy.domains."DOMAIN"]``, :meth:`txmail.policy.config.PolicyConfig.for_domain`).
Trusted clients (``session.trusted``) and clients a DNS allowlist listed
(``session.notes[txmail.policy.dnsbl.ALLOWLISTED]``) are not greylisted.

Each recipient is judged by its triplet, the usual key of greylisting
at RCPT (RFC 6647 section 2.1): the client's network (its IPv4 /24 or IPv6
/64, so that a sender's pool of outgoing servers retrying from a
neighbouring address passes, as postgrey does), the reverse-path and the
recipient, both lower-cased.

* First sight: ``451 4.7.1 Greylisted, please try again later`` (RFC 6647
  section 2.1 and section 4.2: a 4xx reply, so that the client keeps the
  message and retries; RFC 3463 4.7.1 "delivery not authorized").
* A retry before ``greylist_delay`` has passed since the first sight gets
  the same reply; the first-sight time stays.
* A retry after ``greylist_delay`` and before ``greylist_window`` passes:
  the triplet is remembered as passed for ``greylist_expire`` seconds,
  counted again from each later pass, so a regular correspondent is never
  delayed again.
* A retry after ``greylist_window`` starts over as a first sight.
* Automatic allowlisting (RFC 6647 section 4.3, optional; on by
  default, ``auto_allowlist``): a client network that passed for any
  triplet in the last ``greylist_expire`` seconds passes for new triplets
  at once, and each such message keeps it allowlisted.  A server that has
  shown once that it retries is not delayed again for each new sender or
  recipient (postgrey's ``--auto-whitelist-clients``, which waits for five
  passes; one is enough here, since spam software does not retry at all).

The null reverse-path (``MAIL FROM:<>``: delivery status notifications,
and the sender-verification probes other servers make) is greylisted like
any other sender, with ``""`` in its triplet.  A bounce is retried like
any message, so a real one gets through after the delay, while a flood of
forged bounces does not; a probe (which stops after RCPT and never comes
back) just sees a temporary failure, which the prober treats as "cannot
verify now", and the same probe repeated after the delay passes (RFC 6647
section 4.2).  We chose this over exempting ``<>``, which would let any
spammer bypass greylisting by sending with a null sender.

Implementation notes
--------------------
* State is kept in three tables, each bounded by ``max_entries`` (the
  oldest dropped first): triplets seen and not yet passed (dropped after
  ``greylist_window``), triplets that passed (dropped ``greylist_expire``
  after their last pass) and the allowlisted networks (likewise).  A flood of new
  triplets therefore never pushes out the ones that passed.  Expired
  entries are dropped as new ones come, oldest first, at no extra cost.
* With a *path*, the tables are saved to a JSON file so that a restart
  does not greylist every correspondent again: loaded at construction (a
  missing or unreadable file is logged and ignored), saved at most every
  ``save_interval`` seconds after a change (``clock.callLater``) and by
  :meth:`Greylisting.stop`, which the service calls at shutdown.  Saving
  runs on the reactor thread; expired entries are dropped first to keep
  the file small, and it is written to a temporary file that replaces the
  old one (``os.replace``), so a crash leaves the old file or the new one,
  never half of one.  It is not fsynced: after a power failure the file
  may be old or empty (an empty file is ignored like a corrupt one), which
  only greylists some correspondents once more.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import OrderedDict
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from txmail.policy.config import PolicyConfig
from txmail.policy.dnsbl import ALLOWLISTED
from txmail.policy.hooks import Policy, RecipientInfo, SessionInfo, Verdict
from txmail.policy.limits import client_network
from txmail.smtp.codes import Reply

__all__ = ["GREYLISTED_REPLY", "Greylisting", "triplet"]

#: The reply to a triplet not seen before, or retried too early.
GREYLISTED_REPLY = Reply(451, "4.7.1", "Greylisted, please try again later")

#: The version of the saved file's format.
_FORMAT = 1

Triplet = tuple[str, str, str]


def triplet(client_address: str, sender: str, recipient: str) -> Triplet:
    """
    ``(network, sender, recipient)``: the client's IPv4 /24 or IPv6 /64 (see
    the module notes), and both addresses lower-cased.
    """
    network = client_network(client_address, ipv4_prefix=24, ipv6_prefix=64)
    return network, sender.lower(), recipient.lower()


def _expire(table: OrderedDict[Any, float], before: float) -> None:
    """Drop the entries of *table* (oldest first) whose time is before *before*."""
    while table:
        value = next(iter(table.values()))
        if value >= before:
            break
        table.popitem(last=False)


class Greylisting(Policy):
    """
    Greylisting at RCPT (see the module notes).

    Args:
        config: the :class:`~txmail.policy.config.PolicyConfig`
            (``greylist_delay``, ``greylist_window``, ``greylist_expire``,
            and ``greylisting`` per recipient domain).
        clock: an ``IReactorTime`` for the time and the saving timer.
        path: the JSON file the tables are kept in, or ``None`` to keep
            them in memory only.
        auto_allowlist: let a network that passed once pass for any triplet.
        max_entries: entries each table keeps at most.
        save_interval: seconds between two saves at most.
    """

    log = Logger()
    roles = frozenset({"mta"})

    def __init__(
        self,
        config: PolicyConfig,
        *,
        clock: IReactorTime,
        path: str | None = None,
        auto_allowlist: bool = True,
        max_entries: int = 100_000,
        save_interval: float = 60.0,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.config = config
        self.clock = clock
        self.path = path
        self.auto_allowlist = auto_allowlist
        self.max_entries = max_entries
        self.save_interval = save_interval
        #: Triplets seen and not passed yet -> first sight; oldest first.
        self.pending: OrderedDict[Triplet, float] = OrderedDict()
        #: Triplets that passed -> last pass; least recently passed first.
        self.passed: OrderedDict[Triplet, float] = OrderedDict()
        #: Networks that passed (auto-allowlist) -> last pass.
        self.networks: OrderedDict[str, float] = OrderedDict()
        self._save_call: IDelayedCall | None = None
        self._dirty = False
        self._stopped = False
        if path is not None:
            self._load(path)

    # -- the check --

    def on_rcpt(self, session: SessionInfo, recipient: RecipientInfo) -> Verdict | None:
        if session.trusted or not recipient.accepted or ALLOWLISTED in session.notes:
            return None
        if not self.config.for_domain(recipient.domain).greylisting:
            return None
        assert session.transaction is not None
        key = triplet(session.client_address, session.transaction.mail_from, recipient.address)
        if self.check(key):
            return None
        return Verdict(reply=GREYLISTED_REPLY)

    def check(self, key: Triplet) -> bool:
        """Whether the triplet *key* passes now (recording what that means; see the module notes)."""
        now = self.clock.seconds()
        self._expire(now)
        network, sender, recipient = key
        passed = self.passed.get(key)
        allowlisted = self.auto_allowlist and network in self.networks
        if passed is not None or allowlisted:
            if passed is not None:
                self._passed(key, now)
            else:
                # Only the network is refreshed: the triplets of an
                # allowlisted network would fill the table for nothing.
                self._allowlist(network, now)
            self.log.debug(
                "greylisting passes {network} {sender} -> {recipient} ({why})",
                network=network,
                sender=sender,
                recipient=recipient,
                why="known triplet" if passed is not None else "allowlisted network",
            )
            return True
        first = self.pending.get(key)
        if first is not None and now - first >= self.config.greylist_delay:
            del self.pending[key]
            self._passed(key, now)
            self.log.info(
                "greylisting passes {network} {sender} -> {recipient}, retried after {delay:.0f}s",
                network=network,
                sender=sender,
                recipient=recipient,
                delay=now - first,
            )
            return True
        if first is None:
            self.pending[key] = now
            self._add(self.pending)
            self._changed()
        self.log.info(
            "greylisted {network} {sender} -> {recipient} ({what})",
            network=network,
            sender=sender,
            recipient=recipient,
            what="first sight" if first is None else "retried too early",
        )
        return False

    def _passed(self, key: Triplet, now: float) -> None:
        self.passed[key] = now
        self.passed.move_to_end(key)
        self._add(self.passed)
        self._allowlist(key[0], now)

    def _allowlist(self, network: str, now: float) -> None:
        if self.auto_allowlist:
            self.networks[network] = now
            self.networks.move_to_end(network)
            self._add(self.networks)
        self._changed()

    def _add(self, table: OrderedDict[Any, float]) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)

    def _expire(self, now: float) -> None:
        # A pending triplet older than the window starts over: dropping it
        # makes its next sight a first sight.
        _expire(self.pending, now - self.config.greylist_window)
        _expire(self.passed, now - self.config.greylist_expire)
        _expire(self.networks, now - self.config.greylist_expire)

    # -- persistence --

    def _changed(self) -> None:
        self._dirty = True
        if self.path is not None and self._save_call is None and not self._stopped:
            self._save_call = self.clock.callLater(self.save_interval, self._timer)

    def _timer(self) -> None:
        self._save_call = None
        self.save()

    def stop(self) -> None:
        """Save the tables now (when changed) and stop the timer; the service calls it at shutdown."""
        self._stopped = True
        if self._save_call is not None:
            if self._save_call.active():
                self._save_call.cancel()
            self._save_call = None
        self.save()

    def save(self) -> None:
        """Write the tables to *path* when they changed (see the module notes); errors are logged."""
        if self.path is None or not self._dirty:
            return
        self._expire(self.clock.seconds())
        document = {
            "version": _FORMAT,
            "pending": [[*key, t] for key, t in self.pending.items()],
            "passed": [[*key, t] for key, t in self.passed.items()],
            "networks": [[network, t] for network, t in self.networks.items()],
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            fd, temporary = tempfile.mkstemp(prefix=".greylist-", suffix=".tmp", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(document, f, separators=(",", ":"))
                os.replace(temporary, self.path)
            except BaseException:
                os.unlink(temporary)
                raise
        except OSError as e:
            self.log.error(
                "cannot save the greylisting table to {path}: {error}", path=self.path, error=str(e)
            )
            self._changed()  # try again later
            return
        self._dirty = False
        self.log.debug(
            "greylisting table saved to {path}: {pending} pending, {passed} passed",
            path=self.path,
            pending=len(self.pending),
            passed=len(self.passed),
        )

    def _load(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
        except FileNotFoundError:
            self.log.info("no greylisting table at {path} yet", path=path)
            return
        except (OSError, ValueError) as e:
            self.log.warn("greylisting table {path} ignored: {error}", path=path, error=str(e))
            return
        try:
            pending = _entries(document, "pending", 4)
            passed = _entries(document, "passed", 4)
            networks = _entries(document, "networks", 2)
        except ValueError as e:
            self.log.warn("greylisting table {path} ignored: {error}", path=path, error=str(e))
            return
        tables: tuple[tuple[OrderedDict[Any, float], list[Any]], ...] = (
            (self.pending, pending),
            (self.passed, passed),
            (self.networks, networks),
        )
        for table, entries in tables:
            for *key, t in sorted(entries, key=lambda entry: entry[-1]):
                table[tuple(key) if len(key) > 1 else key[0]] = t
            self._add(table)
        self._expire(self.clock.seconds())
        self.log.info(
            "greylisting table loaded from {path}: {pending} pending, {passed} passed",
            path=path,
            pending=len(self.pending),
            passed=len(self.passed),
        )


def _entries(document: Any, name: str, size: int) -> list[list[Any]]:
    """The entries *name* of a saved table: lists of *size* - 1 strings and a time."""
    if not isinstance(document, dict) or document.get("version") != _FORMAT:
        raise ValueError("not a greylisting table of a known version")
    entries = document.get(name, [])
    if not isinstance(entries, list):
        raise ValueError(f"{name} is not a list")
    for entry in entries:
        if (
            not isinstance(entry, list)
            or len(entry) != size
            or not all(isinstance(v, str) for v in entry[:-1])
            or isinstance(entry[-1], bool)
            or not isinstance(entry[-1], int | float)
        ):
            raise ValueError(f"bad entry in {name}: {entry!r}"[:200])
    return entries
