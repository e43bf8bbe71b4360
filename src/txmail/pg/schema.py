"""
The PostgreSQL schema: numbered SQL migrations shipped in the package
(``txmail/pg/migrations/NNNN_name.sql``) and the ``schema_version`` table
that records which ones a database has.

* :func:`upgrade` (``txmail db upgrade``) applies the missing migrations in
  order, all in one transaction under an advisory lock: two nodes upgrading
  at once take turns, and the second finds nothing left to do.  Running it
  again is harmless.
* :func:`current_version` (``txmail db status``) is the highest version
  applied, 0 for an empty database.
* :func:`require_current` is what the server checks before it starts: a
  database older than the code is refused with a message that says to run
  ``txmail db upgrade``; a newer one (a node not yet upgraded, during a
  rolling upgrade) is accepted, as migrations only add.

Every function takes a psycopg connection (:meth:`txmail.pg.db.Database.run`
passes one) and runs inside the caller's transaction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from txmail.errors import SchemaTooOld

__all__ = ["LATEST_VERSION", "Migration", "current_version", "migrations", "require_current", "upgrade"]

#: The advisory lock key of schema upgrades (any constant; "txmail" in ASCII).
UPGRADE_LOCK = 0x74786D61696C

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """
    The package's migrations, in version order.  Numbers may have gaps (a
    branch may ship 0007 before 0006 is merged): :func:`upgrade` applies
    every migration a database has not recorded, whatever its highest.
    """
    found = []
    for entry in resources.files("txmail.pg").joinpath("migrations").iterdir():
        match = _NAME_RE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if not versions or versions[0] != 1 or len(set(versions)) != len(versions):
        raise RuntimeError(f"txmail's migrations must start at 1, each number once: {versions}")
    return tuple(found)


def latest_version() -> int:
    """The version of the schema this code expects (its highest migration)."""
    return migrations()[-1].version


LATEST_VERSION = latest_version()


def _applied(conn: Any) -> set[int]:
    """The versions recorded in ``schema_version`` (none before the first upgrade)."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return set()
    return {int(r[0]) for r in conn.execute("SELECT version FROM schema_version").fetchall()}


def current_version(conn: Any) -> int:
    """The database's schema version: the highest migration applied, 0 if none."""
    row = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    return int(row[0])


def upgrade(conn: Any) -> tuple[int, int]:
    """
    Bring the schema to :data:`LATEST_VERSION`; return ``(before, after)``.

    Takes the transaction-scoped advisory lock :data:`UPGRADE_LOCK` first,
    so concurrent upgrades run one after the other.
    """
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK,))
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version integer PRIMARY KEY,"
        " name text NOT NULL,"
        " applied timestamptz NOT NULL DEFAULT now())"
    )
    before = current_version(conn)
    applied = _applied(conn)
    for migration in migrations():
        if migration.version in applied:
            continue
        conn.execute(migration.sql.encode("utf-8"))
        conn.execute(
            "INSERT INTO schema_version (version, name) VALUES (%s, %s)", (migration.version, migration.name)
        )
    return before, max(before, LATEST_VERSION)


def require_current(conn: Any) -> int:
    """
    The database's schema version, if the code can work with it.

    Raises:
        SchemaTooOld: the schema is older than :data:`LATEST_VERSION`.
    """
    version = current_version(conn)
    applied = _applied(conn)
    if version < LATEST_VERSION or any(m.version not in applied for m in migrations()):
        raise SchemaTooOld(
            f"the PostgreSQL schema is at version {version}, this txmail needs {LATEST_VERSION}: "
            "run `txmail db upgrade` (with the same --config)"
        )
    return version
