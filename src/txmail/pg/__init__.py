"""
PostgreSQL backends (``pip install 'txmail[postgresql]'``): the shared
connection pool (:mod:`txmail.pg.db`), the schema and its migrations
(:mod:`txmail.pg.schema`) and the user directory
(:mod:`txmail.pg.directory`).

psycopg (3) and psycopg_pool are imported by these modules only, never by
the embedded default (Maildir, ``users.json``): a configuration that asks
for PostgreSQL without them fails with :func:`require_psycopg`'s message,
which names the extra to install.
"""

from __future__ import annotations

from types import ModuleType

from txmail.errors import ConfigError

__all__ = ["EXTRA_HINT", "require_psycopg"]

#: What to install for the PostgreSQL backends.
EXTRA_HINT = (
    "install txmail's postgresql extra: pip install 'txmail[postgresql]' (psycopg 3 and psycopg-pool)"
)


def require_psycopg() -> tuple[ModuleType, ModuleType]:
    """
    Import and return ``(psycopg, psycopg_pool)``.

    Raises:
        ConfigError: either is missing; the message names the extra.
    """
    try:
        import psycopg
        import psycopg_pool
    except ImportError as e:
        raise ConfigError(
            f"PostgreSQL is configured but {e.name or 'psycopg'} is not installed: {EXTRA_HINT}"
        ) from None
    return psycopg, psycopg_pool
