"""
A user directory (:class:`txmail.interfaces.IDirectory`) kept in one JSON
file, ``<data-dir>/users.json``, shared by the server and the ``txmail``
command-line tool.

The file::

    {
      "version": 1,
      "users": {"alice@example.com": {"scram": {"salt": "...", "iterations": 4096,
                                                  "stored_key": "...", "server_key": "..."}}},
      "aliases": {"postmaster@example.com": ["alice@example.com"],
                  "@example.com": ["alice@example.com"]}
    }

Implementation notes
--------------------
* Only SCRAM-SHA-256 verifiers are stored (:mod:`txmail.auth.passwords`);
  nothing in the file gives a password back.  The file is written with mode
  0600 all the same.
* Writers (the CLI, :meth:`FileDirectory.add_user` in a running server)
  take an exclusive ``fcntl.flock`` on ``users.json.lock``, read the file
  afresh, change it and replace it atomically (temporary file, fsync,
  rename, fsync of the directory).  Readers need no lock: they see the old
  file or the new one, never half of one.
* The server re-reads the file whenever its identity changes (inode, size,
  mtime), checked with one ``stat`` per lookup, so users the CLI adds work
  without a restart.  A file that cannot be parsed at start-up is an error
  (the server refuses to start); a bad file later is logged and the last
  good contents stay in use.
* Addresses: the domain is lower-cased, and the local part too (RFC 5321
  section 2.4 lets the local part be case-sensitive; we choose not to,
  like most servers).  ``user+tag@domain`` reaches ``user@domain`` when no
  user or alias has the full address (subaddressing, RFC 5233 style).
* Aliases may name local users, other aliases (expanded recursively, with
  a loop guard and a depth limit) or remote addresses (returned as they
  are, for the router to relay).  ``@domain`` is a catch-all alias: it gets
  mail for unknown addresses of the domain; catch-alls are not consulted
  for alias targets, and do not let their owner send as any address.
  A target in a local domain that resolves to nobody is logged and left
  out.
* The local domains are the configured ones plus the domains of existing
  users and aliases.
* :class:`MemoryDirectory` is the same directory without the file (tests,
  embedders): both subclass ``_DirectoryBase``, which holds the lookups and
  the changes (expressed as edits of a document in the file's format), so
  their semantics cannot drift apart.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail._fs import fsync_dir
from txmail.auth.passwords import ScramCredentials, make_credentials
from txmail.errors import DirectoryError, NoSuchUser, UserExists
from txmail.interfaces import IDirectory

__all__ = [
    "FILE_VERSION",
    "FileDirectory",
    "InvalidAddress",
    "MemoryDirectory",
    "normalize_address",
    "normalize_domain",
]

FILE_VERSION = 1
_MAX_ALIAS_DEPTH = 20
_T = TypeVar("_T")

# atext of RFC 5322 section 3.2.3 without "/" (it would be a path separator
# in a Maildir), plus any non-ASCII character (RFC 6531 UTF8-non-ascii).
_LOCAL_ATOM_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~\-\u0080-\U0010ffff]+$")
_LABEL_RE = re.compile(r"^[a-z0-9\u0080-\U0010ffff]([a-z0-9\-\u0080-\U0010ffff]*[a-z0-9\u0080-\U0010ffff])?$")


class InvalidAddress(DirectoryError, ValueError):
    """The text is not an address we can store (syntax, length or characters)."""


def normalize_domain(domain: str) -> str:
    """
    Return *domain* lower-cased without a trailing dot.

    Raises:
        InvalidAddress: it is not a domain name (RFC 1035 section 2.3.4
            lengths; letters, digits, hyphens and non-ASCII letters).
    """
    domain = domain.strip().lower().rstrip(".")
    if not domain or len(domain) > 253:
        raise InvalidAddress(f"invalid domain {domain!r}")
    for label in domain.split("."):
        if len(label) > 63 or not _LABEL_RE.match(label) or any(c.isspace() for c in label):
            raise InvalidAddress(f"invalid domain {domain!r}")
    return domain


def normalize_address(address: str) -> str:
    """
    Return the canonical form of *address*: ``local@domain``, both lower-case.

    The local part must be a dot-atom (RFC 5322 section 3.4.1) of at most 64
    octets (RFC 5321 section 4.5.3.1.1) without ``/``.

    Raises:
        InvalidAddress: the address is not valid.
    """
    if not isinstance(address, str):
        raise InvalidAddress("address must be text")
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        raise InvalidAddress(f"invalid address {address!r}: expected local-part@domain")
    if len(local.encode("utf-8")) > 64:
        raise InvalidAddress(f"invalid address {address!r}: local part longer than 64 octets")
    atoms = local.split(".")
    if not all(a and _LOCAL_ATOM_RE.match(a) and not any(c.isspace() for c in a) for a in atoms):
        raise InvalidAddress(f"invalid address {address!r}: bad local part")
    try:
        domain = normalize_domain(domain)
    except InvalidAddress:
        raise InvalidAddress(f"invalid address {address!r}: bad domain") from None
    return f"{local.lower()}@{domain}"


def _normalize_alias(alias: str) -> str:
    """An alias address, or ``@domain`` for a catch-all."""
    alias = alias.strip()
    if alias.startswith("@"):
        return "@" + normalize_domain(alias[1:])
    return normalize_address(alias)


def _strip_plus(address: str) -> str:
    """``user+tag@d`` -> ``user@d``; other addresses unchanged."""
    local, _, domain = address.rpartition("@")
    base, plus, _ = local.partition("+")
    if plus and base:
        return f"{base}@{domain}"
    return address


def _domain_of(address: str) -> str:
    return address.rpartition("@")[2]


@dataclass
class _Snapshot:
    """The parsed contents of the file at one moment."""

    users: dict[str, ScramCredentials | None] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    domains: frozenset[str] = frozenset()


def _empty_document() -> dict[str, Any]:
    return {"version": FILE_VERSION, "users": {}, "aliases": {}}


class _DirectoryBase(ABC):
    """
    What every directory here shares (:class:`FileDirectory`,
    :class:`MemoryDirectory`, :class:`txmail.pg.directory.PostgresDirectory`):
    the lookups of :class:`txmail.interfaces.IDirectory` over a
    :class:`_Snapshot`.

    Subclasses set :attr:`configured_domains` and :attr:`primary_domain`
    (:meth:`_set_domains`) and provide :meth:`_current` (the snapshot to
    answer from).
    """

    log = Logger()
    configured_domains: tuple[str, ...]
    primary_domain: str | None

    def _set_domains(self, local_domains: Iterable[str], primary_domain: str | None) -> None:
        self.configured_domains = tuple(dict.fromkeys(normalize_domain(d) for d in local_domains))
        if primary_domain is not None:
            self.primary_domain = normalize_domain(primary_domain)
        else:
            self.primary_domain = self.configured_domains[0] if self.configured_domains else None

    @abstractmethod
    def _current(self) -> _Snapshot:
        """The snapshot to answer lookups from."""

    def _parse(self, document: dict[str, Any]) -> _Snapshot:
        snapshot = _Snapshot()
        for address, entry in document["users"].items():
            try:
                canonical = normalize_address(address)
            except InvalidAddress:
                self.log.error("users file: skipping invalid user address {address!r}", address=address)
                continue
            creds: ScramCredentials | None = None
            try:
                creds = ScramCredentials.from_dict(entry["scram"])
            except (ValueError, KeyError, TypeError):
                # The user exists (mail is delivered) but cannot log in.
                self.log.error("users file: invalid credentials for {user}", user=canonical)
            snapshot.users[canonical] = creds
        for alias, targets in document["aliases"].items():
            try:
                key = _normalize_alias(alias)
                if isinstance(targets, str):
                    targets = [targets]
                values = tuple(normalize_address(t) for t in targets)
            except (InvalidAddress, TypeError):
                self.log.error("users file: skipping invalid alias {alias!r}", alias=alias)
                continue
            if values:
                snapshot.aliases[key] = values
        snapshot.domains = frozenset(
            {_domain_of(u) for u in snapshot.users} | {_domain_of(a) for a in snapshot.aliases}
        )
        return snapshot

    # -- lookups --

    def _is_local(self, domain: str, snapshot: _Snapshot) -> bool:
        domain = domain.lower().rstrip(".")
        return domain in self.configured_domains or domain in snapshot.domains

    def _login_name(self, username: str) -> str | None:
        """The canonical form of a login name, or ``None`` if it cannot be one."""
        if not isinstance(username, str):
            return None
        username = username.strip()
        if "@" not in username:
            if self.primary_domain is None:
                return None
            username = f"{username}@{self.primary_domain}"
        try:
            return normalize_address(username)
        except InvalidAddress:
            return None

    def _expand(
        self, snapshot: _Snapshot, address: str, out: list[str], seen: set[str], depth: int, catch_all: bool
    ) -> bool:
        """
        Add the final targets of *address* to *out*; return whether anything
        answers to *address* (a user, an alias, or a catch-all).
        """
        if depth > _MAX_ALIAS_DEPTH:
            self.log.error("alias expansion of {address} too deep; stopping", address=address)
            return True
        if address in seen:
            # A loop: this address is being expanded already.
            return True
        seen.add(address)
        if address in snapshot.users:
            out.append(address)
            return True
        targets = snapshot.aliases.get(address)
        if targets is None:
            base = _strip_plus(address)
            if base != address:
                return self._expand(snapshot, base, out, seen, depth, catch_all)
            if not catch_all:
                return False
            targets = snapshot.aliases.get("@" + _domain_of(address))
            if targets is None:
                return False
        for target in targets:
            if not self._is_local(_domain_of(target), snapshot):
                out.append(target)
            elif not self._expand(snapshot, target, out, seen, depth + 1, catch_all=False):
                self.log.warn(
                    "alias {alias} names {target}, which is no local user or alias; skipping it",
                    alias=address,
                    target=target,
                )
        return True

    def _resolve(
        self, address: str, *, catch_all: bool = True, snapshot: _Snapshot | None = None
    ) -> list[str]:
        """The expansion of *address* in *snapshot* (default :meth:`_current`; anything with
        ``users``, ``aliases`` and ``domains`` answering ``in`` and ``aliases.get``)."""
        if snapshot is None:
            snapshot = self._current()
        try:
            canonical = normalize_address(address)
        except InvalidAddress:
            return []
        if not self._is_local(_domain_of(canonical), snapshot):
            return []
        out: list[str] = []
        self._expand(snapshot, canonical, out, set(), 0, catch_all)
        return list(dict.fromkeys(out))

    def is_local_domain(self, domain: str) -> bool:
        """See :meth:`txmail.interfaces.IDirectory.is_local_domain`."""
        if not isinstance(domain, str) or not domain:
            return False
        return self._is_local(domain, self._current())

    def resolve_recipient(self, address: str) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IDirectory.resolve_recipient`."""
        resolved = self._resolve(address)
        if not resolved:
            return defer.fail(NoSuchUser(address))
        return defer.succeed(resolved)

    def get_credentials(self, username: str) -> defer.Deferred[ScramCredentials | None]:
        """See :meth:`txmail.interfaces.IDirectory.get_credentials`."""
        name = self._login_name(username)
        snapshot = self._current()
        return defer.succeed(snapshot.users.get(name) if name is not None else None)

    def canonical_user(self, username: str) -> defer.Deferred[str | None]:
        """See :meth:`txmail.interfaces.IDirectory.canonical_user`."""
        name = self._login_name(username)
        snapshot = self._current()
        return defer.succeed(name if name is not None and name in snapshot.users else None)

    def owns_address(self, user: str, address: str) -> defer.Deferred[bool]:
        """See :meth:`txmail.interfaces.IDirectory.owns_address`."""
        name = self._login_name(user)
        if name is None or name not in self._current().users:
            return defer.succeed(False)
        return defer.succeed(name in self._resolve(address, catch_all=False))

    # -- changes --

    def _user_address(self, address: str) -> str:
        name = address.strip()
        if "@" not in name and self.primary_domain is not None:
            name = f"{name}@{self.primary_domain}"
        return normalize_address(name)


class _DocumentDirectory(_DirectoryBase):
    """
    What :class:`FileDirectory` and :class:`MemoryDirectory` share beyond
    the lookups: the changes (users, passwords, aliases) as edits of a
    document in the ``users.json`` format, made at once.

    Subclasses also provide :meth:`_mutate` (apply a change to the
    document, keep it, and re-parse).
    """

    @abstractmethod
    def _mutate(self, change: Callable[[dict[str, Any]], _T]) -> _T:
        """Apply *change* to the document, keep it, re-parse; return what *change* returned."""

    @staticmethod
    def _find_key(table: dict[str, Any], canonical: str, normalize: Callable[[str], str]) -> str | None:
        """The key of *table* that normalises to *canonical* (files may be hand-edited)."""
        if canonical in table:
            return canonical
        for key in table:
            try:
                if normalize(key) == canonical:
                    return key
            except InvalidAddress:
                continue
        return None

    def add_user(self, address: str, password: str) -> str:
        """
        Add a user with *password*; return the canonical address.

        Raises:
            InvalidAddress: the address is not valid.
            ValueError: the password is empty or has prohibited characters.
            UserExists: a user or alias has that address.
        """
        canonical = self._user_address(address)
        creds = make_credentials(password)

        def change(document: dict[str, Any]) -> str:
            if self._find_key(document["users"], canonical, normalize_address) is not None:
                raise UserExists(f"user {canonical} exists")
            if self._find_key(document["aliases"], canonical, _normalize_alias) is not None:
                raise UserExists(f"an alias {canonical} exists")
            document["users"][canonical] = {"scram": creds.to_dict()}
            return canonical

        return self._mutate(change)

    def set_password(self, address: str, password: str) -> str:
        """
        Replace the password of a user; return the canonical address.

        Raises:
            NoSuchUser: there is no such user.
            ValueError: the password is empty or has prohibited characters.
        """
        canonical = self._user_address(address)
        creds = make_credentials(password)

        def change(document: dict[str, Any]) -> str:
            key = self._find_key(document["users"], canonical, normalize_address)
            if key is None:
                raise NoSuchUser(f"no user {canonical}")
            entry = document["users"].pop(key)
            entry = entry if isinstance(entry, dict) else {}
            entry["scram"] = creds.to_dict()
            document["users"][canonical] = entry
            return canonical

        return self._mutate(change)

    def delete_user(self, address: str) -> str:
        """
        Remove a user (their mail stays on disk); return the canonical address.

        Raises:
            NoSuchUser: there is no such user.
        """
        canonical = self._user_address(address)

        def change(document: dict[str, Any]) -> str:
            key = self._find_key(document["users"], canonical, normalize_address)
            if key is None:
                raise NoSuchUser(f"no user {canonical}")
            del document["users"][key]
            return canonical

        return self._mutate(change)

    def list_users(self) -> list[str]:
        """The canonical addresses of all users, sorted."""
        return sorted(self._current().users)

    def add_alias(self, alias: str, targets: Iterable[str]) -> str:
        """
        Add an alias (``@domain`` for a catch-all) delivering to *targets*;
        return the canonical alias.

        Raises:
            InvalidAddress: the alias or a target is not valid.
            ValueError: no targets, or the alias names itself.
            UserExists: a user or alias has that address.
        """
        key = _normalize_alias(alias)
        values = list(dict.fromkeys(normalize_address(t) for t in targets))
        if not values:
            raise ValueError("an alias needs at least one target")
        if key in values:
            raise ValueError(f"alias {key} cannot deliver to itself")

        def change(document: dict[str, Any]) -> str:
            if self._find_key(document["aliases"], key, _normalize_alias) is not None:
                raise UserExists(f"alias {key} exists")
            if self._find_key(document["users"], key, normalize_address) is not None:
                raise UserExists(f"a user {key} exists")
            document["aliases"][key] = values
            return key

        return self._mutate(change)

    def delete_alias(self, alias: str) -> str:
        """
        Remove an alias; return the canonical alias.

        Raises:
            NoSuchUser: there is no such alias.
        """
        key = _normalize_alias(alias)

        def change(document: dict[str, Any]) -> str:
            found = self._find_key(document["aliases"], key, _normalize_alias)
            if found is None:
                raise NoSuchUser(f"no alias {key}")
            del document["aliases"][found]
            return key

        return self._mutate(change)

    def list_aliases(self) -> dict[str, list[str]]:
        """Every alias (sorted) with its targets."""
        aliases = self._current().aliases
        return {key: list(aliases[key]) for key in sorted(aliases)}


@implementer(IDirectory)
class FileDirectory(_DocumentDirectory):
    """
    The JSON-file user directory.

    Args:
        path: the JSON file (``<data-dir>/users.json``); it need not exist.
        local_domains: the configured local domains.
        primary_domain: the domain of login names without ``@``; default the
            first of *local_domains*.
        recheck_interval: seconds between checks of the file for changes
            made by another process (a ``stat`` per lookup is measurable on
            the delivery hot path; the server uses 1 second).  Changes made
            through this instance are seen at once whatever the interval.
        monotonic: the clock for *recheck_interval* (tests pass a fake).

    Raises:
        DirectoryError: the file exists but cannot be read or parsed.
    """

    def __init__(
        self,
        path: str,
        *,
        local_domains: Iterable[str],
        primary_domain: str | None = None,
        recheck_interval: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.recheck_interval = recheck_interval
        self._monotonic = monotonic
        self._next_check = 0.0
        self.path = path
        self.lock_path = path + ".lock"
        self._set_domains(local_domains, primary_domain)
        self._signature: tuple[int, int, int] | None = None
        self._bad_signature: tuple[int, int, int] | None = None
        self._snapshot = _Snapshot()
        self._reload(strict=True)

    # -- reading --

    def _stat_signature(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def _read_document(self) -> tuple[dict[str, Any], tuple[int, int, int] | None]:
        """Read and check the file: (document, signature of what was read)."""
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                raw = f.read()
        except FileNotFoundError:
            return _empty_document(), None
        except OSError as e:
            raise DirectoryError(f"cannot read users file {self.path!r}: {e.strerror}") from None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise DirectoryError(f"users file {self.path!r} is not valid JSON: {e}") from None
        if (
            not isinstance(document, dict)
            or not isinstance(document.setdefault("users", {}), dict)
            or not isinstance(document.setdefault("aliases", {}), dict)
        ):
            raise DirectoryError(f"users file {self.path!r}: expected an object with 'users' and 'aliases'")
        if document.setdefault("version", FILE_VERSION) != FILE_VERSION:
            raise DirectoryError(f"users file {self.path!r}: unsupported version {document['version']!r}")
        return document, signature

    def _reload(self, *, strict: bool = False) -> None:
        try:
            document, signature = self._read_document()
            snapshot = self._parse(document)
        except DirectoryError:
            if strict:
                raise
            self._bad_signature = self._stat_signature()
            self.log.failure("cannot reload {path}; keeping the previous users", path=self.path)
            return
        self._snapshot = snapshot
        self._signature = signature
        self._bad_signature = None

    def reload(self) -> None:
        """
        Read the file again now (a server reload, ``SIGHUP``), instead of
        at the next check after :attr:`recheck_interval`.

        Raises:
            DirectoryError: the file cannot be read or parsed; the users
                read before stay.
        """
        self._reload(strict=True)
        self._next_check = self._monotonic() + self.recheck_interval

    def _current(self) -> _Snapshot:
        """The contents, re-read first if the file changed."""
        if self.recheck_interval > 0:
            now = self._monotonic()
            if now < self._next_check:
                return self._snapshot
            self._next_check = now + self.recheck_interval
        signature = self._stat_signature()
        if signature != self._signature and (signature is None or signature != self._bad_signature):
            self._reload()
        return self._snapshot

    # -- changes (synchronous; the CLI and tests use them; see _DirectoryBase) --

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write_document(self, document: dict[str, Any]) -> None:
        data = (json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")
        directory = os.path.dirname(self.path) or "."
        tmp = f"{self.path}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(directory)

    def _mutate(self, change: Callable[[dict[str, Any]], _T]) -> _T:
        """Run *change* on the freshly read document under the lock, then save it."""
        with self._locked():
            document, _ = self._read_document()
            result = change(document)
            self._write_document(document)
            self._reload(strict=True)
        return result


@implementer(IDirectory)
class MemoryDirectory(_DocumentDirectory):
    """
    A user directory kept in memory, for tests and for embedding txmail.

    It answers exactly like :class:`FileDirectory` (the same lookups and
    change methods: :meth:`add_user`, :meth:`set_password`,
    :meth:`delete_user`, :meth:`add_alias` with ``@domain`` catch-alls,
    :meth:`delete_alias`, :meth:`list_users`, :meth:`list_aliases`;
    plus-addressing and alias expansion are the same code), but keeps
    nothing across restarts and touches no file.

    Args:
        local_domains: the configured local domains.
        primary_domain: the domain of login names without ``@``; default the
            first of *local_domains*.

    Usage::

        directory = MemoryDirectory(local_domains=["example.test"])
        directory.add_user("alice@example.test", "secret")
        directory.add_alias("@example.test", ["alice@example.test"])

    Changes are meant to be made from the reactor thread; lookups see each
    change at once (the snapshot they read is replaced as a whole).
    """

    def __init__(self, *, local_domains: Iterable[str] = (), primary_domain: str | None = None) -> None:
        self._set_domains(local_domains, primary_domain)
        self._document = _empty_document()
        self._snapshot = _Snapshot()

    def _current(self) -> _Snapshot:
        return self._snapshot

    def _mutate(self, change: Callable[[dict[str, Any]], _T]) -> _T:
        """Run *change* on a copy of the document; keep it only if *change* succeeds."""
        document = copy.deepcopy(self._document)
        result = change(document)
        self._snapshot = self._parse(document)
        self._document = document
        return result
