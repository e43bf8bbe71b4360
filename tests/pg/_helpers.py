"""What the PostgreSQL tests share: a started, upgraded database per test."""

from __future__ import annotations

from typing import Any

from tests._postgres import fresh_database


def upgraded_database(test: Any, *, start: bool = True, **options: Any) -> Any:
    """
    A :class:`txmail.pg.db.Database` on a fresh database with the current
    schema; started (threads and pool, stopped when the test ends) unless
    *start* is false.
    """
    from twisted.internet import reactor

    from txmail.pg.db import Database
    from txmail.pg.schema import upgrade

    database = Database(fresh_database(test), reactor=reactor, **options)
    database.run_sync(upgrade)
    if start:
        database.start()
        test.addCleanup(database.stop)
    return database
