"""
Sieve at delivery: the user's active script (RFC 5228), found through
:class:`txmail.interfaces.ISieveScripts` on their store, decides what
becomes of each message before it is stored.  The router
(:class:`txmail.delivery.router.DeliveryRouter`) asks :class:`SieveDelivery`
for an :class:`Evaluation` per local recipient and carries out its actions.

Theory of operation
===================

* **What runs when.**  After the delivery hooks and the recipient routing,
  for each local user whose store provides ``ISieveScripts`` and has an
  active script; before anything is stored for that user.  Users without a
  script take the ordinary path (one INBOX copy, batched).  The queue
  runner's retries of a failed local copy run the script again.
* **Compiled once.**  A script is compiled (:func:`txmail.sieve.parse`,
  in the thread pool) the first time its content is seen and kept in an
  LRU cache keyed by the SHA-256 of its octets, with the SHA-256 of each
  script it includes (RFC 6609 ``:personal``, read with
  ``ISieveScripts.get_script``): a hit is checked against the current
  contents of those, so an edited included script is picked up.  A script
  that does not compile is cached too, as its error.
* **Bounded, off the reactor when it is long.**  A run first goes on the
  calling thread with a small step budget (:data:`INLINE_STEPS`, well over
  what an ordinary 30-rule filter needs and a few milliseconds at most);
  a run that needs more starts again in the thread pool with the full
  :attr:`txmail.sieve.Limits.max_steps` (a run is pure: its side effects
  come out in the :class:`~txmail.sieve.Result`, so running it twice is
  safe), at most ``max_concurrent`` at a time, so hostile scripts cannot
  take every pool thread from the stores.  Messages larger than
  :data:`txmail.delivery.router.INLINE_PARSE_LIMIT` go to the pool at once.
* **Never lose mail.**  A script that does not compile, a runtime error, a
  resource limit (steps, actions, redirects, include depth) or a failure to
  read the script means the implicit keep (RFC 5228 section 2.10.6), and is
  logged with the user and the script's name.
* **Vacation and duplicate state** (RFC 5230 section 4.1, RFC 7352): who got
  which reply and which message ids were seen, per user, loaded before the
  run (only for scripts that use either extension) and saved after the
  actions.  A store that provides :class:`txmail.interfaces.ISieveState`
  keeps it; otherwise a small JSON file per user under the data directory
  (``sieve-state/``).  Entries are dropped once older than the longest
  period they can matter for, and at most :data:`MAX_STATE_ENTRIES` are
  kept per user.  Runs for one user that use the state are serialised, so
  two messages at once cannot both answer one sender.
* **Redirect loops.**  A redirected copy carries ``X-Sieve-Redirected-From:
  <user>`` (Pigeonhole's field).  A message that already has that field
  naming an address in one of our domains was redirected by us: its
  redirects are dropped (and the message kept, when nothing else stores
  it), so two users redirecting to each other cannot loop.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Generator, Iterable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from txmail._fs import RunBlocking, run_inline
from txmail.errors import InvalidScriptName
from txmail.interfaces import IDirectory, IMailStore, IMailStoreProvider, ISieveScripts, ISieveState
from txmail.sieve import (
    Context,
    Discard,
    Envelope,
    FileInto,
    Keep,
    Limits,
    Redirect,
    Reject,
    Result,
    Script,
    ScriptNotFound,
    SieveError,
    SieveMessage,
    parse,
    run,
)
from txmail.sieve.storage import check_script_name
from txmail.smtp.codes import Reply

__all__ = [
    "INLINE_SIZE",
    "INLINE_STEPS",
    "MAX_STATE_ENTRIES",
    "REDIRECT_MARK",
    "Evaluation",
    "ScriptCache",
    "SieveDelivery",
    "SieveRejected",
    "SieveState",
    "make_sieve",
    "redirected_copy",
    "reject_reply",
    "rejection_notice",
    "usable_flags",
]

#: The step budget of a run on the calling thread (see the module notes).
INLINE_STEPS = 5_000
#: Messages up to this size may be run on the calling thread (the router's inline parse limit).
INLINE_SIZE = 256 * 1024
#: The most vacation and duplicate entries kept per user (oldest dropped).
MAX_STATE_ENTRIES = 10_000
#: The field a redirected copy carries (Pigeonhole's), naming the user.
REDIRECT_MARK = "X-Sieve-Redirected-From"
#: Extensions whose runs need the user's vacation/duplicate state.
_STATEFUL = frozenset({"vacation", "vacation-seconds", "duplicate"})


# -- the vacation and duplicate state ------------------------------------------


class SieveState:
    """
    One user's vacation replies and duplicate ids (the trackers of
    :class:`txmail.sieve.Context`), as ``{key: epoch seconds}``; serialised
    as JSON by :meth:`to_bytes`.
    """

    def __init__(self, entries: dict[str, float] | None = None, *, now: float, limits: Limits) -> None:
        self.entries = dict(entries or {})
        self.now = now
        self.limits = limits
        self.changed = False

    @classmethod
    def from_bytes(cls, data: bytes | None, *, now: float, limits: Limits) -> SieveState:
        """The state saved as *data* (``None`` or damaged: empty)."""
        entries: dict[str, float] = {}
        if data:
            try:
                loaded = json.loads(data)
                raw = loaded.get("entries", {}) if isinstance(loaded, dict) else {}
                entries = {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}
            except (ValueError, TypeError, AttributeError):
                entries = {}
        return cls(entries, now=now, limits=limits)

    def to_bytes(self) -> bytes:
        """The state without expired entries, at most :data:`MAX_STATE_ENTRIES` of the newest."""
        keep_v = max(self.limits.vacation_max_seconds, self.limits.vacation_default_seconds)
        keep_d = max(self.limits.duplicate_max_seconds, self.limits.duplicate_default_seconds)
        live = {
            k: t for k, t in self.entries.items() if self.now - t < (keep_v if k.startswith("v:") else keep_d)
        }
        if len(live) > MAX_STATE_ENTRIES:
            live = dict(sorted(live.items(), key=lambda kv: kv[1])[-MAX_STATE_ENTRIES:])
        return json.dumps({"version": 1, "entries": live}, sort_keys=True).encode("utf-8")

    @staticmethod
    def _key(kind: str, *parts: str) -> str:
        return kind + ":" + hashlib.sha256("\0".join(parts).encode("utf-8", "replace")).hexdigest()[:40]

    # VacationTracker (txmail.sieve.interpreter)
    def already_replied(self, sender: str, handle: str, seconds: int) -> bool:
        """Whether *sender* got the reply *handle* less than *seconds* ago (RFC 5230 section 4.1)."""
        sent = self.entries.get(self._key("v", sender.lower(), handle))
        return sent is not None and self.now - sent < seconds

    def replied(self, sender: str, handle: str) -> None:
        """Record that *sender* got the reply *handle* now."""
        self.entries[self._key("v", sender.lower(), handle)] = self.now
        self.changed = True

    # DuplicateTracker (txmail.sieve.interpreter)
    def seen(self, id: str, handle: str, seconds: int) -> bool:
        """Whether *id* was recorded under *handle* less than *seconds* ago (RFC 7352 section 3)."""
        when = self.entries.get(self._key("d", id, handle))
        return when is not None and self.now - when < seconds

    def mark(self, id: str, handle: str, seconds: int, last: bool) -> None:
        """Record *id* under *handle* (with *last*, from now even when it is already there)."""
        key = self._key("d", id, handle)
        if last or not self.seen(id, handle, seconds):
            self.entries[key] = self.now
            self.changed = True


def _state_path(directory: str, user: str) -> str:
    name = urllib.parse.quote(user.lower(), safe="@.+-_")
    return os.path.join(directory, name[:200] + ".json")


def _read_state(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(4 * 1024 * 1024)
    except FileNotFoundError:
        return None


def _write_state(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- compiled scripts ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Compiled:
    """A cache entry: the script (or why it does not compile) and what it included."""

    script: Script | None
    error: str | None
    #: ``(location, name) -> sha256 of the content`` (``None``: not found) of each included script.
    includes: tuple[tuple[tuple[str, str], str | None], ...] = ()
    #: A script uses vacation or duplicate (the state is loaded for it).
    stateful: bool = False
    #: A script uses the ``mailboxexists`` test (the mailbox names are listed for it).
    uses_mailboxes: bool = False


def _digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


class ScriptCache:
    """Compiled scripts by the SHA-256 of their content, least recently used dropped past *size*."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.entries: collections.OrderedDict[str, _Compiled] = collections.OrderedDict()
        self.compiles = 0
        # content -> digest: a store that hands out the same bytes object
        # each time costs a dict look-up (bytes cache their hash), not a SHA-256.
        self.digests: dict[bytes, str] = {}

    def digest(self, content: bytes) -> str:
        found = self.digests.get(content)
        if found is None:
            found = _digest(content)
            if len(self.digests) >= self.size:
                self.digests.clear()
            self.digests[content] = found
        return found

    def get(self, digest: str) -> _Compiled | None:
        entry = self.entries.get(digest)
        if entry is not None:
            self.entries.move_to_end(digest)
        return entry

    def put(self, digest: str, entry: _Compiled) -> None:
        self.entries[digest] = entry
        self.entries.move_to_end(digest)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def _uses(nodes: Any, what: str) -> bool:
    """Whether a command or test named *what* is among *nodes*, at any depth."""
    for node in nodes:
        if node.name == what:
            return True
        for inner in (node.tests, node.block, node.orelse, node.elifs):
            if inner and _uses(inner, what):
                return True
    return False


def _entry(script: Script | None, error: str | None, used: dict[tuple[str, str], str | None]) -> _Compiled:
    if script is None:
        return _Compiled(None, error, tuple(sorted(used.items())))
    scripts = [script, *(s for s in script.includes.values() if s is not None)]
    return _Compiled(
        script,
        None,
        tuple(sorted(used.items())),
        stateful=any(s.extensions & _STATEFUL for s in scripts),
        uses_mailboxes=any("mailbox" in s.extensions and _uses(s.commands, "mailboxexists") for s in scripts),
    )


def read_global_script(global_dir: str | None, name: str) -> bytes | None:
    """
    The ``:global`` script *name* (RFC 6609 section 3.2): ``<global_dir>/<name>.sieve``,
    as Dovecot's ``sieve_global`` keeps them; ``None`` when there is no such
    file, no directory configured, or *name* is not a valid script name
    (so that it never reaches outside the directory).  Blocking.
    """
    if global_dir is None:
        return None
    try:
        check_script_name(name)
    except InvalidScriptName:
        return None
    try:
        with open(os.path.join(global_dir, name + ".sieve"), "rb") as f:
            return f.read(MAX_GLOBAL_SCRIPT + 1)[:MAX_GLOBAL_SCRIPT]
    except OSError:
        return None


#: The most octets of a ``:global`` script read.
MAX_GLOBAL_SCRIPT = 1 << 20


def _compile(
    content: bytes,
    name: str,
    limits: Limits,
    scripts: dict[str, bytes],
    global_dir: str | None = None,
) -> tuple[Script | None, str | None, dict[tuple[str, str], str | None]]:
    """
    Compile *content* (on a pool thread: ``:global`` includes are read from
    *global_dir* here); included ``:personal`` scripts come from *scripts*
    (name -> content).
    """
    used: dict[tuple[str, str], str | None] = {}

    def loader(included: str, location: str) -> str:
        data = scripts.get(included) if location == "personal" else read_global_script(global_dir, included)
        if data is None:
            used[(location, included)] = None
            raise ScriptNotFound(included)
        used[(location, included)] = _digest(data)
        return data.decode("utf-8", errors="replace")

    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, "the script is not valid UTF-8", used
    try:
        return parse(text, limits=limits, loader=loader, name=name), None, used
    except SieveError as e:
        return None, str(e), used
    except RecursionError:
        return None, "the script is nested too deeply", used


# -- one user's evaluation -------------------------------------------------------


@dataclasses.dataclass
class Evaluation:
    """
    What the script of *user* decided about one message.

    Attributes:
        user: the local user.
        script: the active script's name.
        result: the run's :class:`~txmail.sieve.Result` (an implicit keep
            when the script failed: *errors* says why).
        errors: why the implicit keep was forced (compile error, runtime
            error, limit), for the log.
        state: the user's vacation/duplicate state, when the script uses it.
        store: the user's store.
        loop: the message was already redirected by us (redirects dropped).
    """

    user: str
    script: str
    result: Result
    errors: tuple[str, ...] = ()
    state: SieveState | None = None
    store: IMailStore | None = None
    loop: bool = False
    release: Callable[[], None] | None = None

    @property
    def ereject(self) -> bool:
        """Whether the outcome is an ``ereject`` (RFC 5429) alone."""
        actions = self.result.actions
        return bool(actions) and all(type(a) is Reject and a.ereject for a in actions)

    def done(self) -> None:
        """Release the user's state lock (once)."""
        release, self.release = self.release, None
        if release is not None:
            release()


class SieveDelivery:
    """
    Runs users' active Sieve scripts at delivery (see the module notes).

    Args:
        limits: the limits scripts are compiled and run within.
        run_blocking: the thread pool (compiling, long runs, state files).
        state_dir: where users' vacation/duplicate state goes when their
            store has no :class:`~txmail.interfaces.ISieveState`.
        hostname: the domain of generated Message-IDs (vacation replies).
        clock: ``seconds()`` for the time of a run.
        is_local: ``is_local(domain)``: whether a domain is ours (redirect loops).
        max_concurrent: runs in the thread pool at once.
        inline_steps: the step budget of a run on the calling thread.
        separator: the subaddress separator (RFC 5233).
        global_dir: the directory of the ``:global`` scripts (RFC 6609),
            ``NAME.sieve`` each, or ``None`` for none.
    """

    log = Logger()

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        run_blocking: RunBlocking | None = None,
        state_dir: str | None = None,
        hostname: str = "localhost",
        clock: Any = None,
        is_local: Callable[[str], bool] = lambda domain: False,
        max_concurrent: int = 2,
        inline_steps: int = INLINE_STEPS,
        separator: str = "+",
        cache_size: int = 1024,
        global_dir: str | None = None,
    ) -> None:
        self.limits = limits or Limits()
        self.global_dir = global_dir
        self.run_blocking = run_blocking or run_inline
        self.state_dir = state_dir
        self.hostname = hostname
        self.clock = clock
        self.is_local = is_local
        self.inline_steps = inline_steps
        self.separator = separator
        self.cache = ScriptCache(cache_size)
        self.inline_limits = dataclasses.replace(
            self.limits, max_steps=min(inline_steps, self.limits.max_steps)
        )
        self.pool = defer.DeferredSemaphore(max(1, max_concurrent))
        self.locks: dict[str, defer.DeferredLock] = {}

    def now(self) -> float:
        return float(self.clock.seconds()) if self.clock is not None else time.time()

    # -- which users have a script --

    @defer.inlineCallbacks
    def active_scripts(
        self, stores: IMailStoreProvider, users: Iterable[str]
    ) -> Generator[Any, Any, dict[str, tuple[IMailStore, tuple[str, bytes]]]]:
        """
        ``{user: (store, (name, content))}`` for each of *users* whose store
        provides ``ISieveScripts`` and has an active script.  A store or a
        script that cannot be read is logged and left out (the user's mail
        goes to the INBOX unfiltered rather than not at all).
        """
        users = list(users)

        @defer.inlineCallbacks
        def one(user: str) -> Generator[Any, Any, tuple[IMailStore, tuple[str, bytes]] | None]:
            try:
                store: IMailStore = yield stores.store_for(user)
            except Exception:
                # A store that cannot be had at all fails the ordinary
                # delivery too, which logs and queues it: nothing to add here.
                return None
            if not ISieveScripts.providedBy(store):
                return None
            try:
                active: tuple[str, bytes] | None = yield store.active_script()
            except Exception:
                self.log.failure(
                    "sieve: cannot read the active script of {user}; delivering unfiltered", user=user
                )
                return None
            return None if active is None else (store, active)

        results = yield defer.gatherResults([one(u) for u in users])
        return {user: value for user, value in zip(users, results, strict=True) if value is not None}

    # -- compiling --

    def compiled(self, store: ISieveScripts, name: str, content: bytes) -> defer.Deferred[_Compiled]:
        """The :class:`_Compiled` form of the script *content* of *store*'s user (cached)."""
        digest = self.cache.digest(content)
        entry = self.cache.get(digest)
        if entry is not None and not entry.includes:
            return defer.succeed(entry)
        return self._compiled(store, name, content, digest, entry)

    @defer.inlineCallbacks
    def _compiled(
        self, store: ISieveScripts, name: str, content: bytes, digest: str, entry: _Compiled | None
    ) -> Generator[Any, Any, _Compiled]:
        if entry is not None and entry.includes:
            current = yield self._include_digests(store, [key for key, _ in entry.includes])
            if current != dict(entry.includes):
                entry = None
        if entry is not None:
            return entry
        scripts: dict[str, bytes] = {}
        if b"include" in content:
            scripts = yield self._all_scripts(store)
        script, error, used = yield self.run_blocking(
            functools.partial(_compile, content, name, self.limits, scripts, self.global_dir)
        )
        self.cache.compiles += 1
        entry = _entry(script, error, used)
        self.cache.put(digest, entry)
        return entry

    @defer.inlineCallbacks
    def _all_scripts(self, store: ISieveScripts) -> Generator[Any, Any, dict[str, bytes]]:
        """Every script of *store* (what ``include`` may read), by name."""
        out: dict[str, bytes] = {}
        listed: list[tuple[str, bool]] = yield store.list_scripts()
        for name, _active in listed[: self.limits.max_includes + 1]:
            try:
                out[name] = yield store.get_script(name)
            except Exception:
                continue
        return out

    @defer.inlineCallbacks
    def _include_digests(
        self, store: ISieveScripts, keys: list[tuple[str, str]]
    ) -> Generator[Any, Any, dict[tuple[str, str], str | None]]:
        out: dict[tuple[str, str], str | None] = {}
        for location, name in keys:
            digest = None
            if location == "personal":
                try:
                    digest = _digest((yield store.get_script(name)))
                except Exception:
                    digest = None
            else:
                data = yield self.run_blocking(read_global_script, self.global_dir, name)
                digest = None if data is None else _digest(data)
            out[(location, name)] = digest
        return out

    # -- running --

    def _lock(self, user: str) -> defer.DeferredLock:
        lock = self.locks.get(user)
        if lock is None:
            lock = self.locks[user] = defer.DeferredLock()
        return lock

    @defer.inlineCallbacks
    def evaluate(
        self,
        user: str,
        store: IMailStore,
        active: tuple[str, bytes],
        *,
        message: Callable[[], Any],
        size: int,
        mail_from: str,
        rcpt_to: str,
        authenticated_user: str | None = None,
        addresses: tuple[str, ...] = (),
    ) -> Any:
        """
        Run *user*'s active script (*active*: name and content) on the
        message; fires with an :class:`Evaluation`, never fails.
        *message* gives a Deferred of the :class:`~txmail.sieve.SieveMessage`
        (shared by the users of one delivery).  The caller must call
        :meth:`Evaluation.done` once the actions are carried out.  *store*
        provides ``ISieveScripts`` (:meth:`active_scripts` gave it).
        """
        name, content = active
        keep = Result()
        try:
            entry = yield self.compiled(ISieveScripts(store), name, content)
        except Exception as e:
            self.log.failure("sieve: compiling {script} of {user} failed", user=user, script=name)
            return Evaluation(user, name, keep, (f"internal error: {type(e).__name__}",), store=store)
        if entry.script is None:
            self.log.warn(
                "sieve: script {script} of {user} does not compile ({error}); implicit keep",
                user=user,
                script=name,
                error=entry.error,
            )
            return Evaluation(user, name, keep, (entry.error or "compile error",), store=store)
        release = None
        state = None
        try:
            if entry.stateful:
                lock = self._lock(user)
                yield lock.acquire()
                release = functools.partial(self._release, user, lock)
                state = yield self._load_state(store, user)
            mailboxes: set[str] | None = None
            if entry.uses_mailboxes:
                infos = yield store.list_mailboxes()
                mailboxes = {info.name for info in infos if getattr(info, "selectable", True)}
            sieve_message = yield message()
            loop = self._redirected_by_us(sieve_message)
            context = Context(
                mailbox_exists=None if mailboxes is None else mailboxes.__contains__,
                duplicates=state,
                vacation=state,
                addresses=addresses,
                now=self.now(),
                domain=self.hostname,
                separator=self.separator,
                limits=self.inline_limits if self._inline(size) else self.limits,
            )
            sieve_envelope = Envelope(
                mail_from, user, orig_to=rcpt_to if rcpt_to != user else None, auth=authenticated_user
            )
            result = yield self._run(entry.script, sieve_message, sieve_envelope, context, size)
        except Exception as e:
            if release is not None:
                release()
            self.log.failure(
                "sieve: running {script} of {user} failed; implicit keep", user=user, script=name
            )
            return Evaluation(user, name, keep, (f"internal error: {type(e).__name__}",), store=store)
        if result.errors:
            self.log.warn(
                "sieve: script {script} of {user} failed ({error}); implicit keep",
                user=user,
                script=name,
                error="; ".join(result.errors),
            )
        for line in result.log:
            self.log.info("sieve: {user}: {note}", user=user, note=line)
        if loop and any(type(a) is Redirect for a in result.actions):
            result = _without_redirects(result)
            self.log.info(
                "sieve: {user}: the message was already redirected by this server; not redirecting it again",
                user=user,
            )
        return Evaluation(user, name, result, result.errors, state, store, loop, release)

    def _release(self, user: str, lock: defer.DeferredLock) -> None:
        lock.release()
        if not lock.locked and not lock.waiting and self.locks.get(user) is lock:
            del self.locks[user]

    def _inline(self, size: int) -> bool:
        return size <= INLINE_SIZE and self.inline_steps > 0

    def _run(
        self, script: Script, message: SieveMessage, envelope: Envelope, context: Context, size: int
    ) -> defer.Deferred[Result]:
        """
        Run on this thread within the context's (inline) limits when the
        message is small, and again in the pool with the full limits when
        that was too few steps; large messages go to the pool at once.
        """
        if self._inline(size):
            quick = run(script, message, envelope, context=context)
            budget = self.inline_limits.max_steps
            if not (quick.errors and "too many steps" in quick.errors[0] and budget < self.limits.max_steps):
                return defer.succeed(quick)
        context = dataclasses.replace(context, limits=self.limits)
        return self.pool.run(
            self.run_blocking, functools.partial(run, script, message, envelope, context=context)
        )

    def _redirected_by_us(self, message: SieveMessage) -> bool:
        import email.utils

        for value in message.raw_headers(REDIRECT_MARK):
            for _, address in email.utils.getaddresses([value]):
                domain = address.rpartition("@")[2].lower().rstrip(".")
                if domain and self.is_local(domain):
                    return True
        return False

    # -- state --

    @defer.inlineCallbacks
    def _load_state(self, store: IMailStore, user: str) -> Generator[Any, Any, SieveState]:
        data: bytes | None
        if ISieveState.providedBy(store):
            data = yield store.get_sieve_state()
        elif self.state_dir is not None:
            data = yield self.run_blocking(_read_state, _state_path(self.state_dir, user))
        else:
            data = None
        return SieveState.from_bytes(data, now=self.now(), limits=self.limits)

    @defer.inlineCallbacks
    def save_state(self, evaluation: Evaluation) -> Generator[Any, Any, None]:
        """Save *evaluation*'s state when it changed (errors are logged: the mail is delivered)."""
        state = evaluation.state
        if state is None or not state.changed:
            return
        data = state.to_bytes()
        store = evaluation.store
        try:
            if store is not None and ISieveState.providedBy(store):
                yield store.put_sieve_state(data)
            elif self.state_dir is not None:
                yield self.run_blocking(_write_state, _state_path(self.state_dir, evaluation.user), data)
        except Exception:
            self.log.failure(
                "sieve: saving the vacation/duplicate state of {user} failed", user=evaluation.user
            )


def _without_redirects(result: Result) -> Result:
    """*result* without its redirects; the implicit keep when nothing else stores the message."""
    actions = tuple(a for a in result.actions if type(a) is not Redirect)
    stores = any(type(a) in (Keep, FileInto, Discard) for a in actions)
    return dataclasses.replace(result, actions=actions, implicit_keep=result.implicit_keep or not stores)


class SieveRejected(Exception):
    """A recipient refused in the SMTP/LMTP transaction by ``ereject`` (RFC 5429 section 2.1.1): *reply*."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.as_text())
        self.reply = reply


def reject_reply(reason: str) -> Reply:
    """The ``550 5.7.1`` reply of an ``ereject`` with *reason*, on one line of printable ASCII."""
    text = " ".join(reason.split())
    text = "".join(c if " " <= c <= "~" else "?" for c in text)[:400]
    return Reply(550, "5.7.1", text or "Message rejected")


def redirected_copy(data: bytes, user: str) -> bytes:
    """
    The message to send on for a redirect: *data* without the
    ``Return-Path`` fields final delivery wrote (RFC 5321 section 4.4), with
    :data:`REDIRECT_MARK` naming *user* on top.
    """
    from txmail.sieve.message import split_header_section

    fields, body = split_header_section(data)
    kept = [(n, v) for n, v in fields if n.lower() != "return-path"]
    head = "".join(f"{n}: {v}\r\n" for n, v in kept).encode("latin-1", errors="replace")
    return f"{REDIRECT_MARK}: <{user}>\r\n".encode("utf-8", "replace") + head + b"\r\n" + body


def rejection_notice(
    *,
    original: bytes,
    sender: str,
    recipient: str,
    reason: str,
    hostname: str,
    now: float,
) -> bytes:
    """
    The rejection message of a ``reject`` (RFC 5429 section 2.1.2): an MDN
    (RFC 8098, ``multipart/report; report-type=disposition-notification``)
    to *sender* saying *recipient*'s filter refused the message and why,
    with the original header section (``text/rfc822-headers``).
    """
    import email.utils
    import secrets

    from txmail.sieve.message import SieveMessage
    from txmail.sieve.vacation import _body, _encode

    message = SieveMessage.from_bytes(original)
    subject = next(iter(message.headers("subject")), "")
    original_id = next(iter(message.headers("message-id")), "").strip()
    boundary = "reject-" + secrets.token_hex(12)
    end = original.find(b"\r\n\r\n")
    header_section = original if end < 0 else original[: end + 2]
    text = (
        f"Your message to <{recipient}> was automatically rejected:\r\n\r\n"
        + reason.replace("\r\n", "\n").replace("\n", "\r\n").rstrip("\r\n")
        + "\r\n"
    )
    encoding, body = _body(text)
    head = [
        ("Date", email.utils.formatdate(now, localtime=False)),
        ("From", f"Mail Delivery Subsystem <MAILER-DAEMON@{hostname}>"),
        ("To", f"<{sender}>"),
        ("Subject", _encode(f"Rejected: {subject}" if subject else "Rejected: (no subject)")),
        ("Message-ID", email.utils.make_msgid(domain=hostname)),
        ("Auto-Submitted", "auto-replied (rejected)"),
        ("MIME-Version", "1.0"),
        (
            "Content-Type",
            f'multipart/report; report-type=disposition-notification;\r\n\tboundary="{boundary}"',
        ),
    ]
    if original_id:
        head.append(("In-Reply-To", original_id))
    report = [
        f"Reporting-UA: {hostname}; txmail",
        f"Final-Recipient: rfc822; {recipient}",
        *([f"Original-Message-ID: {original_id}"] if original_id else []),
        "Disposition: automatic-action/MDN-sent-automatically; deleted",
    ]
    parts = [
        f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n".encode()
        + body,
        f"--{boundary}\r\nContent-Type: message/disposition-notification\r\n\r\n".encode()
        + "".join(line + "\r\n" for line in report).encode("utf-8", "replace"),
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n".encode() + header_section,
    ]
    out = "".join(f"{n}: {v}\r\n" for n, v in head).encode("utf-8", "replace") + b"\r\n"
    out += b"\r\n".join(parts) + f"\r\n--{boundary}--\r\n".encode()
    return out


def usable_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """*flags* (RFC 5232) that a store can keep: system flags and valid keywords; others dropped."""
    from txmail.model import normalize_flags

    out: list[str] = []
    for flag in flags:
        try:
            out.extend(normalize_flags([flag]))
        except ValueError:
            continue
    return tuple(dict.fromkeys(out))


def make_sieve(
    settings: Any, directory: IDirectory, *, run_blocking: RunBlocking, reactor: Any
) -> SieveDelivery | None:
    """
    The :class:`SieveDelivery` of *settings* (``[sieve]``), or ``None``
    when ``enabled = false``: vacation/duplicate state files under
    ``<data_dir>/sieve-state``, at most half the thread pool for long runs.
    """
    if not settings.sieve_enabled:
        return None
    limits = Limits(
        max_steps=settings.sieve_max_steps,
        max_actions=settings.sieve_max_actions,
        max_redirects=settings.sieve_max_redirects,
    )
    return SieveDelivery(
        limits=limits,
        run_blocking=run_blocking,
        state_dir=settings.path("sieve-state"),
        hostname=settings.hostname,
        clock=reactor,
        is_local=lambda domain: bool(directory.is_local_domain(domain)),
        max_concurrent=max(1, settings.threads // 2),
        global_dir=settings.sieve_global_dir,
    )
