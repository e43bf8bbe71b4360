"""
The POP3 maildrop lock shared by every node on one PostgreSQL database
(RFC 1939 section 8: "the POP3 server then acquires an exclusive-access
lock on the maildrop"): :class:`PostgresMaildropLocks`, offered by
:class:`txmail.pg.store.PostgresProvider` as
:class:`txmail.interfaces.IMaildropLocks`.

A lease table (``src/txmail/pg/migrations/0004_maildrop_locks.sql``)
-------------------------------------------------------------------
``maildrop_locks`` has one row per maildrop held: the address, the
session's random token, the node and when the lease ends (``expires``, on
the database's clock, so the nodes' clocks need not agree).

* Acquire: ``INSERT ... ON CONFLICT (address) DO UPDATE ... WHERE
  maildrop_locks.expires < now() RETURNING token``.  A row comes back when
  the maildrop was free or its lease had ended (the holder's node died:
  the lock is taken over); none when another session holds it, which the
  POP3 server answers ``-ERR [IN-USE]``.  One statement, so two nodes
  racing for one maildrop cannot both win.
* Renew: the holder moves ``expires`` on every third of the lease (a
  ``LoopingCall`` on the provider's clock) for as long as its session
  lasts.  A renewal that fails (the database is unreachable) is logged and
  the session goes on: if the database stays away longer than the rest of
  the lease, the lease lapses and another node's session may take the
  maildrop meanwhile (its UPDATE state then finds the messages it deletes
  already gone, which expunging by UID tolerates).  A renewal that finds
  its row taken over logs that and stops.
* Release: the holder deletes its own row (``WHERE token = ...``), at QUIT
  or when the connection is lost.  A node killed outright stops renewing,
  and its locks are free again once their leases end
  (:data:`DEFAULT_LEASE`).

Why not advisory locks
----------------------
``pg_advisory_lock`` belongs to a database session: each POP3 session
would hold one pooled connection for as long as it lasts (minutes, for a
slow client), and a few dozen sessions would take the whole pool from
everything else.  A lease row costs one short query to take, one every
third of the lease, and one to give back.
"""

from __future__ import annotations

import uuid
from typing import Any

from twisted.internet import defer
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txmail.interfaces import IMaildropLock, IMaildropLocks
from txmail.pg.db import Database

__all__ = ["DEFAULT_LEASE", "PostgresMaildropLock", "PostgresMaildropLocks"]

#: Seconds a maildrop lock lasts without being renewed: how long a maildrop
#: stays locked after its node died.
DEFAULT_LEASE = 120.0

_ACQUIRE = """
INSERT INTO maildrop_locks (address, token, node, expires)
VALUES (%s, %s, %s, now() + make_interval(secs => %s))
ON CONFLICT (address) DO UPDATE
    SET token = EXCLUDED.token, node = EXCLUDED.node, acquired = now(), expires = EXCLUDED.expires
    WHERE maildrop_locks.expires < now()
RETURNING token
"""

_RENEW = """
UPDATE maildrop_locks SET expires = now() + make_interval(secs => %s)
WHERE address = %s AND token = %s
RETURNING token
"""

_RELEASE = "DELETE FROM maildrop_locks WHERE address = %s AND token = %s"


@implementer(IMaildropLocks)
class PostgresMaildropLocks:
    """
    The maildrop locks of one node (see the module notes).

    Args:
        database: the :class:`txmail.pg.db.Database` every query runs on.
        node: this node's name in the table (for the administrator).
        lease: seconds a lock lasts unless renewed (renewed every third).
        clock: the ``IReactorTime`` that schedules renewals; the
            database's reactor by default.
    """

    log = Logger()

    def __init__(
        self, database: Database, node: str, *, lease: float = DEFAULT_LEASE, clock: Any = None
    ) -> None:
        if lease <= 0:
            raise ValueError("the maildrop lock lease must be longer than 0 seconds")
        self.database = database
        self.node = node
        self.lease = lease
        self.clock = clock if clock is not None else database.reactor
        #: The locks this node holds (their renewals run).
        self.held: set[PostgresMaildropLock] = set()

    def lock_maildrop(self, user: str) -> defer.Deferred[IMaildropLock | None]:
        """See :meth:`txmail.interfaces.IMaildropLocks.lock_maildrop`."""
        token = uuid.uuid4().hex

        def acquire(conn: Any) -> bool:
            return conn.execute(_ACQUIRE, (user, token, self.node, self.lease)).fetchone() is not None

        def acquired(won: bool) -> PostgresMaildropLock | None:
            if not won:
                return None
            lock = PostgresMaildropLock(self, user, token)
            self.held.add(lock)
            lock.start_renewing()
            return lock

        return self.database.run(acquire).addCallback(acquired)

    def stop(self) -> None:
        """The node stops: no more renewals (the rows go at release, or when their leases end)."""
        for lock in list(self.held):
            lock.stop_renewing()


@implementer(IMaildropLock)
class PostgresMaildropLock:
    """One session's row in ``maildrop_locks``; renewed until released."""

    log = Logger()

    def __init__(self, locks: PostgresMaildropLocks, user: str, token: str) -> None:
        self.locks = locks
        self.user = user
        self.token = token
        self.released = False
        self._renewal: LoopingCall | None = None

    def start_renewing(self) -> None:
        """Renew the lease every third of it, from one third from now."""
        loop = self._renewal = LoopingCall(self.renew)
        loop.clock = self.locks.clock
        loop.start(self.locks.lease / 3, now=False)

    def stop_renewing(self) -> None:
        """Stop renewing (without releasing): what a node that dies does."""
        loop, self._renewal = self._renewal, None
        if loop is not None and loop.running:
            loop.stop()

    def renew(self) -> defer.Deferred[None]:
        """
        Move the lease's end to a full lease from now.  A failure is logged
        (the session goes on; the lease may lapse); a row taken over by
        another session stops the renewals.
        """
        locks = self.locks

        def update(conn: Any) -> bool:
            return conn.execute(_RENEW, (locks.lease, self.user, self.token)).fetchone() is not None

        def renewed(still_ours: bool) -> None:
            if not still_ours and not self.released:
                self.log.warn(
                    "the POP3 maildrop lock of {user} was lost (its lease ran out and it was taken over)",
                    user=self.user,
                )
                self.stop_renewing()

        def failed(failure: Any) -> None:
            self.log.failure(
                "renewing the POP3 maildrop lock of {user} failed; it lapses unless renewed in time",
                failure,
                user=self.user,
            )

        return locks.database.run(update).addCallbacks(renewed, failed)

    def release(self) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMaildropLock.release`: delete our row (by token)."""
        if self.released:
            return defer.succeed(None)
        self.released = True
        self.stop_renewing()
        self.locks.held.discard(self)

        def delete(conn: Any) -> None:
            conn.execute(_RELEASE, (self.user, self.token))

        return self.locks.database.run(delete)
