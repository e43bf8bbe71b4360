"""
The user directory in PostgreSQL (``[directory] backend = "postgresql"``):
:class:`PostgresDirectory`, the same users, passwords and aliases as
``users.json`` (:class:`txmail.directory.FileDirectory`) in the tables of
``migrations/0001_directory.sql``, shared by every node of a cluster.

Implementation notes
--------------------
* The lookups of :class:`txmail.interfaces.IDirectory` that return
  Deferreds (``resolve_recipient``, ``get_credentials``,
  ``canonical_user``, ``owns_address``) ask the database every time,
  through :meth:`txmail.pg.db.Database.run` (a thread, one transaction), so
  a change made on any node counts at once everywhere.  Alias expansion is
  the file directory's own code (``_DirectoryBase._expand``: recursion,
  loop guard, plus-addressing, catch-alls) reading the rows it needs as it
  goes (:class:`_Rows`), so the two directories cannot answer differently.
* ``resolve_recipient`` answers (a user, an alias's targets, or no such
  recipient) are remembered for ``recipient_ttl`` seconds (2 by default,
  like the domain list below; 0: every lookup asks the database): the SMTP
  server resolves each recipient at RCPT and the delivery router again
  after DATA, moments apart, and the second is then answered from memory.
  Any change made through this instance forgets them at once; a change
  made on another node counts here within that time.
* ``is_local_domain`` is synchronous (the SMTP server and the queue runner
  ask it inline), so it answers from memory: the configured domains plus
  the ``domains`` table, read when the server is built, after every change
  made through this instance, and every ``refresh_interval`` seconds while
  the server runs (a domain another node adds is local here within that
  time).
* Changes (:meth:`PostgresDirectory.add_user` and the rest, used by the
  ``txmail`` command and by embedders) return Deferreds; they take a
  transaction-scoped advisory lock, so two writers cannot both create the
  same address as a user and as an alias.  Passwords are stored as
  ``users.json`` stores them: the SCRAM-SHA-256 verifier of
  :mod:`txmail.auth.passwords` as JSON.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import defer, task
from zope.interface import implementer

from txmail.auth.passwords import ScramCredentials, make_credentials
from txmail.directory import _DirectoryBase, _domain_of, _normalize_alias, _Snapshot, normalize_address
from txmail.errors import NoSuchUser, UserExists
from txmail.interfaces import IDirectory
from txmail.pg.db import Database
from txmail.pg.schema import require_current

__all__ = ["PostgresDirectory"]

#: The advisory lock key of directory changes ("users" in ASCII).
CHANGE_LOCK = 0x7573657273
#: The resolve_recipient answers remembered at most (all forgotten beyond).
RECIPIENTS_KEPT = 10_000


class _Rows:
    """
    A read-only mapping over one table, fetched a key at a time and
    remembered for the rest of one lookup (``in`` and ``get``, what
    ``_DirectoryBase._expand`` uses of a snapshot's tables).
    """

    def __init__(self, fetch: Callable[[str], Any]) -> None:
        self._fetch = fetch
        self._memo: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self._memo:
            self._memo[key] = self._fetch(key)
        value = self._memo[key]
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None


class _DatabaseSnapshot:
    """The directory's tables as a ``_Snapshot`` whose rows are read on demand over *conn*."""

    def __init__(self, conn: Any) -> None:
        self.users = _Rows(lambda address: _one(conn, "SELECT true FROM users WHERE address = %s", address))
        self.aliases = _Rows(lambda alias: _targets(conn, alias))
        self.domains = _Rows(lambda name: _one(conn, "SELECT true FROM domains WHERE name = %s", name))


def _one(conn: Any, query: str, *params: Any) -> Any:
    """The first column of the first row, or ``None``."""
    row = conn.execute(query, params).fetchone()
    return None if row is None else row[0]


def _targets(conn: Any, alias: str) -> tuple[str, ...] | None:
    rows = conn.execute("SELECT target FROM alias_targets WHERE alias = %s ORDER BY position", (alias,))
    return tuple(r[0] for r in rows) or None


def _domains(conn: Any) -> frozenset[str]:
    return frozenset(r[0] for r in conn.execute("SELECT name FROM domains"))


def _lock(conn: Any) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (CHANGE_LOCK,))


def _add_domain(conn: Any, domain: str) -> None:
    conn.execute("INSERT INTO domains (name) VALUES (%s) ON CONFLICT DO NOTHING", (domain,))


def _drop_domain_if_unused(conn: Any, domain: str) -> None:
    conn.execute(
        "DELETE FROM domains WHERE name = %s"
        " AND NOT EXISTS (SELECT 1 FROM users WHERE domain = %s)"
        " AND NOT EXISTS (SELECT 1 FROM aliases WHERE domain = %s)",
        (domain, domain, domain),
    )


def _jsonb(value: dict[str, Any]) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value)


# -- changes: each runs in one transaction and returns (result, domains) --


def _add_user(conn: Any, canonical: str, password: str) -> tuple[str, frozenset[str]]:
    creds = make_credentials(password)
    _lock(conn)
    if _one(conn, "SELECT true FROM users WHERE address = %s", canonical):
        raise UserExists(f"user {canonical} exists")
    if _one(conn, "SELECT true FROM aliases WHERE alias = %s", canonical):
        raise UserExists(f"an alias {canonical} exists")
    domain = _domain_of(canonical)
    _add_domain(conn, domain)
    conn.execute(
        "INSERT INTO users (address, domain, scram) VALUES (%s, %s, %s)",
        (canonical, domain, _jsonb(creds.to_dict())),
    )
    return canonical, _domains(conn)


def _set_password(conn: Any, canonical: str, password: str) -> tuple[str, frozenset[str]]:
    creds = make_credentials(password)
    cursor = conn.execute(
        "UPDATE users SET scram = %s WHERE address = %s", (_jsonb(creds.to_dict()), canonical)
    )
    if cursor.rowcount == 0:
        raise NoSuchUser(f"no user {canonical}")
    return canonical, _domains(conn)


def _delete_user(conn: Any, canonical: str) -> tuple[str, frozenset[str]]:
    _lock(conn)
    cursor = conn.execute("DELETE FROM users WHERE address = %s", (canonical,))
    if cursor.rowcount == 0:
        raise NoSuchUser(f"no user {canonical}")
    _drop_domain_if_unused(conn, _domain_of(canonical))
    return canonical, _domains(conn)


def _add_alias(conn: Any, key: str, targets: list[str]) -> tuple[str, frozenset[str]]:
    _lock(conn)
    if _one(conn, "SELECT true FROM aliases WHERE alias = %s", key):
        raise UserExists(f"alias {key} exists")
    if _one(conn, "SELECT true FROM users WHERE address = %s", key):
        raise UserExists(f"a user {key} exists")
    domain = _domain_of(key)
    _add_domain(conn, domain)
    conn.execute("INSERT INTO aliases (alias, domain) VALUES (%s, %s)", (key, domain))
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO alias_targets (alias, position, target) VALUES (%s, %s, %s)",
            [(key, position, target) for position, target in enumerate(targets)],
        )
    return key, _domains(conn)


def _delete_alias(conn: Any, key: str) -> tuple[str, frozenset[str]]:
    _lock(conn)
    cursor = conn.execute("DELETE FROM aliases WHERE alias = %s", (key,))
    if cursor.rowcount == 0:
        raise NoSuchUser(f"no alias {key}")
    _drop_domain_if_unused(conn, _domain_of(key))
    return key, _domains(conn)


def _list_users(conn: Any) -> list[str]:
    return sorted(r[0] for r in conn.execute("SELECT address FROM users"))


def _list_aliases(conn: Any) -> dict[str, list[str]]:
    aliases: dict[str, list[str]] = {}
    for alias, target in conn.execute("SELECT alias, target FROM alias_targets ORDER BY alias, position"):
        aliases.setdefault(alias, []).append(target)
    return {key: aliases[key] for key in sorted(aliases)}


def _startup(conn: Any) -> frozenset[str]:
    require_current(conn)
    return _domains(conn)


@implementer(IDirectory)
class PostgresDirectory(_DirectoryBase):
    """
    The user directory in PostgreSQL (see the module notes).

    Args:
        database: the :class:`txmail.pg.db.Database` to use (started by the
            server's :class:`txmail.pg.db.DatabaseService`; unstarted, its
            queries run inline, as the ``txmail`` command wants).
        local_domains: the configured local domains.
        primary_domain: the domain of login names without ``@``; default the
            first of *local_domains*.
        refresh_interval: seconds between re-reads of the domain list while
            started (:meth:`start`).
        recipient_ttl: seconds a :meth:`resolve_recipient` answer is
            remembered (0: never).
        clock: what times those re-reads; default the database's reactor.

    Usage::

        directory = PostgresDirectory(database, local_domains=["example.com"])
        directory.check_schema()             # blocking: at start-up only
        yield directory.add_user("alice@example.com", "secret")
    """

    def __init__(
        self,
        database: Database,
        *,
        local_domains: Iterable[str],
        primary_domain: str | None = None,
        refresh_interval: float = 2.0,
        recipient_ttl: float = 2.0,
        clock: Any = None,
    ) -> None:
        self.db = database
        self.clock = clock if clock is not None else database.reactor
        self.recipient_ttl = recipient_ttl
        #: address -> (when the answer expires, the targets; empty: no such recipient)
        self._recipients: dict[str, tuple[float, list[str]]] = {}
        self._set_domains(local_domains, primary_domain)
        self.refresh_interval = refresh_interval
        self._domains: frozenset[str] = frozenset()
        self._refresher: task.LoopingCall | None = None

    # -- the domain list (is_local_domain) --

    def _current(self) -> _Snapshot:
        """The domains known in memory (the lookups that return Deferreds ask the database)."""
        return _Snapshot(domains=self._domains)

    def check_schema(self) -> None:
        """
        Check the schema and read the domain list, blocking (at start-up).

        Raises:
            SchemaTooOld: the database needs ``txmail db upgrade``.
            DatabaseError: the database cannot be reached.
        """
        self._domains = self.db.run_sync(_startup)

    def refresh(self) -> defer.Deferred[None]:
        """Re-read the domain list."""
        return self.db.run(_domains).addCallback(self._set_known_domains)

    def reload(self) -> defer.Deferred[None]:
        """Forget the recipients kept in memory and re-read the domain list (a server reload)."""
        self._recipients.clear()
        return self.refresh()

    def _set_known_domains(self, domains: frozenset[str]) -> None:
        self._domains = domains

    def start(self) -> None:
        """Re-read the domain list every :attr:`refresh_interval` seconds (the database is started)."""
        if self._refresher is None and self.refresh_interval > 0:
            self._refresher = task.LoopingCall(self._refresh_logged)
            self._refresher.clock = self.clock
            self._refresher.start(self.refresh_interval, now=False)

    def stop(self) -> None:
        refresher, self._refresher = self._refresher, None
        if refresher is not None and refresher.running:
            refresher.stop()

    def _refresh_logged(self) -> defer.Deferred[None]:
        d = self.refresh()
        d.addErrback(lambda f: self.log.failure("cannot re-read the domains from PostgreSQL", f))
        return d

    # -- lookups --

    def resolve_recipient(self, address: str) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IDirectory.resolve_recipient`."""

        def resolved(found: list[str]) -> list[str]:
            if not found:
                raise NoSuchUser(address)
            return list(found)

        now = self.clock.seconds()
        kept = self._recipients.get(address)
        if kept is not None and kept[0] > now:
            return defer.maybeDeferred(resolved, kept[1])

        def remember(found: list[str]) -> list[str]:
            if self.recipient_ttl > 0:
                if len(self._recipients) >= RECIPIENTS_KEPT:
                    self._recipients.clear()
                self._recipients[address] = (now + self.recipient_ttl, list(found))
            return found

        return self.db.run(self._resolve_in, address, True).addCallback(remember).addCallback(resolved)

    def _resolve_in(self, conn: Any, address: str, catch_all: bool) -> list[str]:
        return self._resolve(address, catch_all=catch_all, snapshot=_DatabaseSnapshot(conn))  # type: ignore[arg-type]  # a _DatabaseSnapshot reads the same tables as the in-memory snapshot

    def get_credentials(self, username: str) -> defer.Deferred[ScramCredentials | None]:
        """See :meth:`txmail.interfaces.IDirectory.get_credentials`."""
        name = self._login_name(username)
        if name is None:
            return defer.succeed(None)
        return self.db.run(self._credentials_in, name)

    def _credentials_in(self, conn: Any, name: str) -> ScramCredentials | None:
        row = conn.execute("SELECT scram FROM users WHERE address = %s", (name,)).fetchone()
        if row is None or row[0] is None:
            return None
        try:
            return ScramCredentials.from_dict(row[0])
        except (ValueError, KeyError, TypeError):
            # The user exists (mail is delivered) but cannot log in.
            self.log.error("users table: invalid credentials for {user}", user=name)
            return None

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        """See :meth:`txmail.interfaces.IDirectory.canonical_user`."""
        name = self._login_name(username)
        if name is None:
            return defer.succeed(None)
        return self.db.run(_one, "SELECT address FROM users WHERE address = %s", name)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        """See :meth:`txmail.interfaces.IDirectory.owns_address`."""
        name = self._login_name(user)
        if name is None:
            return defer.succeed(False)
        return self.db.run(self._owns_in, name, address)

    def _owns_in(self, conn: Any, name: str, address: str) -> bool:
        if not _one(conn, "SELECT true FROM users WHERE address = %s", name):
            return False
        return name in self._resolve_in(conn, address, False)

    # -- changes (Deferreds; errors as FileDirectory's) --

    def _change(
        self, prepare: Callable[[], tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> defer.Deferred[Any]:
        """Run the change *prepare* returns (a function and its arguments); keep the domains it reports."""

        def changed(outcome: tuple[Any, frozenset[str]]) -> Any:
            result, domains = outcome
            self._domains = domains
            self._recipients.clear()
            return result

        def run() -> defer.Deferred[Any]:
            fn, args = prepare()
            return self.db.run(fn, *args)

        return defer.maybeDeferred(run).addCallback(changed)

    def add_user(self, address: str, password: str) -> defer.Deferred[str]:
        """
        Add a user with *password*; a Deferred of the canonical address.

        Fails with InvalidAddress, ValueError (the password) or UserExists,
        as :meth:`txmail.directory.FileDirectory.add_user` raises them.
        """
        return self._change(lambda: (_add_user, (self._user_address(address), password)))

    def set_password(self, address: str, password: str) -> defer.Deferred[str]:
        """Replace the password of a user; a Deferred of the canonical address (NoSuchUser)."""
        return self._change(lambda: (_set_password, (self._user_address(address), password)))

    def delete_user(self, address: str) -> defer.Deferred[str]:
        """Remove a user; a Deferred of the canonical address (NoSuchUser)."""
        return self._change(lambda: (_delete_user, (self._user_address(address),)))

    def add_alias(self, alias: str, targets: Iterable[str]) -> defer.Deferred[str]:
        """
        Add an alias (``@domain`` for a catch-all) delivering to *targets*;
        a Deferred of the canonical alias (InvalidAddress, ValueError,
        UserExists).
        """

        def prepare() -> tuple[Callable[..., Any], tuple[Any, ...]]:
            key = _normalize_alias(alias)
            values = list(dict.fromkeys(normalize_address(t) for t in targets))
            if not values:
                raise ValueError("an alias needs at least one target")
            if key in values:
                raise ValueError(f"alias {key} cannot deliver to itself")
            return _add_alias, (key, values)

        return self._change(prepare)

    def delete_alias(self, alias: str) -> defer.Deferred[str]:
        """Remove an alias; a Deferred of the canonical alias (NoSuchUser)."""
        return self._change(lambda: (_delete_alias, (_normalize_alias(alias),)))

    def list_users(self) -> defer.Deferred[list[str]]:
        """A Deferred of the canonical addresses of all users, sorted."""
        return self.db.run(_list_users)

    def list_aliases(self) -> defer.Deferred[dict[str, list[str]]]:
        """A Deferred of every alias (sorted) with its targets."""
        return self.db.run(_list_aliases)
