"""
The MTA-STS policy cache (:class:`txmail.delivery.mtasts.PolicyCache`'s
contract) in the ``[postgresql]`` database, so that every node of a
cluster shares the policies one of them fetched (table
``mta_sts_policies``, migration 6).

``get`` and ``put`` return Deferreds (queries run on the database's thread
pool); :class:`txmail.delivery.mtasts.MTASTS` waits for either kind.  A
stored text that no longer parses is treated as absent.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer

from txmail.delivery.mtasts import CachedPolicy, PolicyError, parse_policy
from txmail.pg.db import Database

__all__ = ["PostgresPolicyCache"]


class PostgresPolicyCache:
    """MTA-STS policies by domain, in PostgreSQL."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self, domain: str) -> defer.Deferred[CachedPolicy | None]:
        def query(conn: Any) -> tuple[str, float, str] | None:
            row = conn.execute(
                "SELECT policy_id, fetched_at, policy FROM mta_sts_policies WHERE domain = %s",
                (domain.lower(),),
            ).fetchone()
            return None if row is None else (str(row[0]), float(row[1]), str(row[2]))

        def parsed(row: tuple[str, float, str] | None) -> CachedPolicy | None:
            if row is None:
                return None
            try:
                return CachedPolicy(parse_policy(row[2]), row[0], row[1])
            except PolicyError:
                return None

        return self.database.run(query).addCallback(parsed)

    def put(self, domain: str, entry: CachedPolicy) -> defer.Deferred[None]:
        def upsert(conn: Any) -> None:
            conn.execute(
                "INSERT INTO mta_sts_policies (domain, policy_id, fetched_at, policy) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (domain) DO UPDATE SET policy_id = EXCLUDED.policy_id,"
                " fetched_at = EXCLUDED.fetched_at, policy = EXCLUDED.policy",
                (domain.lower(), entry.policy_id, entry.fetched_at, entry.policy.text),
            )

        return self.database.run(upsert)
