"""
The durable outbound spool (:class:`txmail.interfaces.IQueue`).

Implementation notes:

* Layout: ``<dir>/<id>.msg`` holds the message (a hard link of the
  message source's local file where possible, else its octets streamed
  in), ``<id>.json`` the envelope and per-recipient
  states.  The JSON file is written last (temp file, fsync, rename, directory
  fsync), so an entry exists exactly when its ``.json`` does; a ``.msg``
  without one is a half-made entry and is removed at start-up.
* :meth:`SpoolQueue.enqueue` fires only once both files are durable: the SMTP
  server replies 250 after that.
* Recipient states: ``pending`` (never tried), ``deferred`` (tried, will be
  retried at ``next_attempt``), ``delivered``, ``failed``, and ``held``: a
  message whose envelope has a ``hold`` reason (a policy's or milter's
  quarantine) is queued with every recipient held; nothing tries them
  until :meth:`SpoolQueue.release` (``txmail queue release``) makes them
  ``pending``.  The relay that
  works the queue (outbound delivery) updates them with
  :meth:`SpoolQueue.update_recipients`.
* Index and state live in the reactor thread; only file work goes through
  ``run_blocking``.
* Per-recipient fields besides ``state``/``attempts``/``next_attempt``/
  ``last_error`` are the runner's (:mod:`txmail.delivery.runner`):
  ``last_attempt``, ``host`` (the remote MTA last tried), ``reply``,
  ``status`` (RFC 3463 code), ``dsn_sent`` and ``delay_notice_sent``.
* Other processes (``txmail queue flush|delete``) change the files while
  the server runs: :meth:`SpoolQueue.rescan` brings the index in line with
  the directory (new, changed and removed ``.json`` files, by modification
  time), and the runner calls it before each pass.  Writes are
  last-writer-wins; :meth:`SpoolQueue.update_recipients` never brings back
  an entry whose ``.json`` was deleted meanwhile.
* :meth:`SpoolQueue.add_listener` registers a callable told the id of every
  new entry, so the runner attempts new mail at once instead of at its next
  poll.
* Claims (:meth:`SpoolQueue.claim`) are leases held in this object's memory:
  one process works a spool directory.  A claim made while the queue holds
  no live claim (the start of a runner's pass) first :meth:`rescans
  <SpoolQueue.rescan>` the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmail._fs import RunBlocking, fsync_dir, run_inline, store_source, write_file_durably
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import Envelope, MessageSource, QueueEntry

__all__ = ["RECIPIENT_STATES", "QueueWriter", "SpoolQueue"]

RECIPIENT_STATES = ("pending", "deferred", "delivered", "failed", "held")
#: How many ids of deleted entries a queue remembers (see ``SpoolQueue._done``).
DONE_KEPT = 10_000


def _entry_to_json(entry: QueueEntry) -> bytes:
    env = asdict(entry.envelope)
    env["rcpt_to"] = list(env["rcpt_to"])
    env["rcpt_params"] = list(env["rcpt_params"])
    doc = {
        "version": 1,
        "queue_id": entry.queue_id,
        "envelope": env,
        "recipients": entry.recipients,
        "size": entry.size,
        "created": entry.created,
    }
    return json.dumps(doc, sort_keys=True).encode()


def _entry_from_json(data: bytes) -> QueueEntry:
    doc = json.loads(data)
    env = doc["envelope"]
    env["rcpt_to"] = tuple(env["rcpt_to"])
    env["rcpt_params"] = tuple(env["rcpt_params"])
    return QueueEntry(
        queue_id=doc["queue_id"],
        envelope=Envelope(**env),
        recipients=doc["recipients"],
        size=doc["size"],
        created=doc["created"],
    )


_QUEUE_ID_RE = re.compile(r"\A[0-9A-F]{8,32}\Z")


def _new_id(now: float) -> str:
    return f"{int(now):x}{secrets.token_hex(5)}".upper()


def _new_entry(
    envelope: Envelope, message: MessageSource, recipients: Iterable[str], now: float
) -> QueueEntry:
    """A new entry for *recipients* (every one pending, or held when the envelope is on hold)."""
    rcpts = list(dict.fromkeys(recipients))
    if not rcpts:
        raise QueueError("no recipients to queue")
    state = "pending" if envelope.hold is None else "held"
    return QueueEntry(
        queue_id=_new_id(now),
        envelope=envelope,
        recipients={
            r: {"state": state, "attempts": 0, "next_attempt": None, "last_error": None} for r in rcpts
        },
        size=message.size,
        created=now,
    )


def _write_entry(directory: str, entry: QueueEntry, data: bytes, message: MessageSource) -> int:
    """Write an entry's two files, the ``.json`` (*data*) last and durably (blocking); its mtime_ns."""
    store_source(message, os.path.join(directory, f"{entry.queue_id}.msg"))
    path = os.path.join(directory, f"{entry.queue_id}.json")
    write_file_durably(path, data)  # fsyncs the directory too
    return os.stat(path).st_mtime_ns


@dataclass(frozen=True)
class Written:
    """An entry :meth:`QueueWriter.write` wrote: it, its ``.json`` octets and their mtime_ns."""

    entry: QueueEntry
    data: bytes
    stamp: int


class QueueWriter:
    """
    Adds entries to a spool directory that a :class:`SpoolQueue` of another
    process works: what an SMTP worker process (:mod:`txmail.workers`)
    queues each message it accepts with.  The same files and the same
    fsyncs as :meth:`SpoolQueue.enqueue`; no index, no claims.

    Args:
        directory: the spool directory (it must exist).
        run_blocking: runs blocking file work, see :mod:`txmail._fs`.
        now: a function giving the current time (for tests).
    """

    log = Logger()

    def __init__(
        self, directory: str, *, run_blocking: RunBlocking | None = None, now: Any = time.time
    ) -> None:
        self.directory = directory
        self._run = run_blocking or run_inline
        self._now = now

    def write(
        self, envelope: Envelope, message: MessageSource, recipients: Iterable[str]
    ) -> defer.Deferred[Written]:
        """Write an entry durably; fires once both files are on disk."""
        try:
            entry = _new_entry(envelope, message, recipients, self._now())
        except QueueError as e:
            return defer.fail(e)
        data = _entry_to_json(entry)

        def done(stamp: int) -> Written:
            self.log.info(
                "queued {queue_id} from <{sender}> for {count} recipient(s)",
                queue_id=entry.queue_id,
                sender=entry.envelope.mail_from,
                count=len(entry.recipients),
                message_id=entry.envelope.message_id,
            )
            return Written(entry, data, stamp)

        return self._run(_write_entry, self.directory, entry, data, message).addCallback(done)

    def enqueue(
        self, envelope: Envelope, message: MessageSource, recipients: Iterable[str]
    ) -> defer.Deferred[str]:
        """:meth:`write`; fires with the queue id."""
        return self.write(envelope, message, recipients).addCallback(lambda written: written.entry.queue_id)


@implementer(IQueue)
class SpoolQueue:
    """
    A queue of messages in one directory.

    Args:
        directory: the spool directory (created if missing).
        run_blocking: runs blocking file work, see :mod:`txmail._fs`.
        now: a function giving the current time (for tests).
    """

    log = Logger()

    def __init__(
        self,
        directory: str,
        *,
        run_blocking: RunBlocking | None = None,
        now: Any = time.time,
        adopt_grace: float = 0.0,
    ) -> None:
        self.directory = directory
        self._run = run_blocking or run_inline
        self._now = now
        #: Seconds a new entry written by another process is left to it to
        #: hand over (:meth:`adopt`) before a :meth:`rescan` takes it in:
        #: the server sets it when it runs SMTP workers.
        self.adopt_grace = adopt_grace
        os.makedirs(directory, exist_ok=True)
        self._writer = QueueWriter(directory, run_blocking=self._run, now=self._now)
        self._entries: dict[str, QueueEntry] = {}
        self._stamps: dict[str, int] = {}  # queue id -> mtime_ns of its .json as last read/written
        self._listeners: list[Callable[[str], Any]] = []
        self._claims: dict[str, float] = {}  # queue id -> the end of its lease
        # The ids of the entries deleted lately: a directory read in flight
        # (a rescan, an adoption) may predate a deletion, and must not bring
        # the entry back.  Queue ids are never used again.
        self._done: OrderedDict[str, None] = OrderedDict()
        self._load()

    def _path(self, queue_id: str, ext: str) -> str:
        return os.path.join(self.directory, f"{queue_id}.{ext}")

    def _load(self) -> None:
        names = set(os.listdir(self.directory))
        for name in sorted(names):
            base, _, ext = name.rpartition(".")
            if ext == "json":
                try:
                    with open(os.path.join(self.directory, name), "rb") as f:
                        entry = _entry_from_json(f.read())
                except (OSError, ValueError, KeyError, TypeError) as e:
                    self.log.error("unreadable queue entry {name}: {error}", name=name, error=str(e))
                    continue
                if f"{base}.msg" not in names:
                    self.log.error("queue entry {queue_id} has lost its message", queue_id=base)
                    continue
                self._entries[entry.queue_id] = entry
                self._stamps[entry.queue_id] = self._mtime(entry.queue_id)
            elif ext == "msg" and f"{base}.json" not in names:
                # Written but never acknowledged: the client was not told 250.
                os.unlink(os.path.join(self.directory, name))
            elif ".tmp" in name:
                os.unlink(os.path.join(self.directory, name))

    def _mtime(self, queue_id: str) -> int:
        try:
            return os.stat(self._path(queue_id, "json")).st_mtime_ns
        except OSError:
            return 0

    def add_listener(self, listener: Callable[[str], Any]) -> None:
        """Call ``listener(queue_id)`` (in the reactor thread) after each new entry is durable."""
        self._listeners.append(listener)

    def message_path(self, queue_id: str) -> str:
        """The path of an entry's message file (for readers that need a path, not a file)."""
        return self._path(queue_id, "msg")

    def claim(self, limit: int | None, lease_seconds: float) -> defer.Deferred[list[QueueEntry]]:
        """See :meth:`txmail.interfaces.IQueue.claim`."""
        now = self._now()
        self._claims = {qid: until for qid, until in self._claims.items() if until > now}
        d = self.rescan() if not self._claims else defer.succeed(None)

        def take(_: None) -> list[QueueEntry]:
            now = self._now()
            free = sorted(
                (e for e in self._entries.values() if self._claims.get(e.queue_id, now) <= now),
                key=lambda e: (e.created, e.queue_id),
            )
            if limit is not None:
                free = free[: max(limit, 0)]
            for entry in free:
                self._claims[entry.queue_id] = now + lease_seconds
            return free

        return d.addCallback(take)

    def release_claim(self, queue_id: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IQueue.release_claim`."""
        self._claims.pop(queue_id, None)
        return defer.succeed(None)

    def renew_claims(self, queue_ids: Iterable[str], lease_seconds: float) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IQueue.renew_claims`."""
        now = self._now()
        renewed = []
        for queue_id in queue_ids:
            if queue_id in self._claims and queue_id in self._entries:
                self._claims[queue_id] = now + lease_seconds
                renewed.append(queue_id)
        return defer.succeed(renewed)

    def open_source(self, queue_id: str) -> defer.Deferred[MessageSource]:
        """See :meth:`txmail.interfaces.IQueue.open_source` (the message file, which stores may link)."""
        entry = self._entries.get(queue_id)
        if entry is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        return defer.succeed(MessageSource.from_file(self._path(queue_id, "msg"), entry.size, fsynced=True))

    def rescan(self) -> defer.Deferred[None]:
        """
        Bring the index in line with the directory: entries whose ``.json``
        appeared or changed (another process wrote it) are read again,
        entries whose ``.json`` is gone are forgotten.
        """
        known = dict(self._stamps)
        young = time.time() - self.adopt_grace

        def scan() -> tuple[dict[str, QueueEntry | None], set[str]]:
            changed: dict[str, QueueEntry | None] = {}
            present: set[str] = set()
            names = set(os.listdir(self.directory))
            for name in names:
                base, _, ext = name.rpartition(".")
                if ext != "json" or ".tmp" in name or f"{base}.msg" not in names:
                    continue
                present.add(base)
                stamp = self._mtime(base)
                if known.get(base) == stamp:
                    continue
                if base not in known and stamp / 1e9 > young:
                    continue  # just queued by a worker, which hands it over itself (adopt)
                try:
                    with open(os.path.join(self.directory, name), "rb") as f:
                        changed[base] = _entry_from_json(f.read())
                except FileNotFoundError:
                    present.discard(base)
                except (OSError, ValueError, KeyError, TypeError) as e:
                    self.log.error("unreadable queue entry {name}: {error}", name=name, error=str(e))
                    changed[base] = None
            return changed, present

        def apply(result: tuple[dict[str, QueueEntry | None], set[str]]) -> None:
            changed, present = result
            for queue_id in list(changed):
                if queue_id in self._done:
                    del changed[queue_id]
            for queue_id in list(self._entries):
                if queue_id not in present and queue_id in known:
                    del self._entries[queue_id]
                    self._stamps.pop(queue_id, None)
                    self._claims.pop(queue_id, None)
            for queue_id, entry in changed.items():
                if entry is not None and entry.queue_id == queue_id:
                    self._entries[queue_id] = entry
                    self._stamps[queue_id] = self._mtime(queue_id)

        return self._run(scan).addCallback(apply)

    def flush(self) -> defer.Deferred[int]:
        """
        Make every deferred recipient due now (``txmail queue flush``).
        Fires with the number of recipients changed.
        """
        now = self._now()
        ds = []
        count = 0
        for entry in list(self._entries.values()):
            changes = {
                rcpt: {"next_attempt": now}
                for rcpt, fields in entry.recipients.items()
                if fields.get("state") == "deferred"
            }
            if changes:
                count += len(changes)
                ds.append(self.update_recipients(entry.queue_id, changes))
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: count)

    def release(self, queue_id: str | None = None) -> defer.Deferred[int]:
        """
        Release held recipients (``txmail queue release``): those of
        *queue_id*, or of every entry when it is ``None``; they are tried at
        the next queue pass.  Fires with the number of recipients released.

        Raises (in the Deferred):
            QueueError: no entry *queue_id*.
        """
        if queue_id is not None and queue_id not in self._entries:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        ids = [queue_id] if queue_id is not None else list(self._entries)
        ds = []
        count = 0
        for qid in ids:
            entry = self._entries[qid]
            changes = {
                rcpt: {"state": "pending", "next_attempt": None}
                for rcpt, fields in entry.recipients.items()
                if fields.get("state") == "held"
            }
            if changes:
                count += len(changes)
                ds.append(self.update_recipients(qid, changes))
        d = defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: count)

        def wake(n: int) -> int:
            for qid in ids:
                self._tell(qid)
            return n

        return d.addCallback(wake)

    def enqueue(
        self, envelope: Envelope, message: MessageSource, recipients: Iterable[str]
    ) -> defer.Deferred[str]:
        """See :meth:`txmail.interfaces.IQueue.enqueue`."""

        def done(written: Written) -> str:
            queue_id = written.entry.queue_id
            self._entries[queue_id] = written.entry
            self._stamps[queue_id] = written.stamp
            self._tell(queue_id)
            return queue_id

        return self._writer.write(envelope, message, recipients).addCallback(done)

    def _tell(self, queue_id: str) -> None:
        for listener in list(self._listeners):
            try:
                listener(queue_id)
            except Exception:
                self.log.failure("queue listener failed")

    def adopt(self, queue_id: str, data: bytes | None = None, stamp: int = 0) -> defer.Deferred[bool]:
        """
        Take into the index an entry another process added to the directory
        (an SMTP worker's :class:`QueueWriter`), at once rather than at the
        next :meth:`rescan`.  Its listeners are not told (the caller works
        the entry).  Fires with ``False`` when this queue has already
        worked the entry to its end and deleted it (a pass found it first),
        else ``True``.  The writer may give the ``.json`` octets it wrote
        (*data*) and their mtime_ns (*stamp*): then nothing is read.

        Raises (in the Deferred):
            QueueError: no such entry, or it cannot be read.
        """
        if queue_id in self._entries:
            return defer.succeed(True)
        if queue_id in self._done:
            return defer.succeed(False)
        if not _QUEUE_ID_RE.match(queue_id):
            return defer.fail(QueueError(f"not a queue id: {queue_id!r}"))
        path = self._path(queue_id, "json")
        if data is not None:
            try:
                entry = _entry_from_json(data)
            except (ValueError, KeyError, TypeError) as e:
                return defer.fail(QueueError(f"unreadable queue entry {queue_id}: {e}"))
            if entry.queue_id != queue_id:
                return defer.fail(QueueError(f"queue entry {entry.queue_id} handed over as {queue_id}"))
            self._entries[queue_id] = entry
            self._stamps[queue_id] = stamp
            return defer.succeed(True)

        def read() -> tuple[QueueEntry, int]:
            try:
                with open(path, "rb") as f:
                    entry = _entry_from_json(f.read())
                    stamp = os.fstat(f.fileno()).st_mtime_ns
            except FileNotFoundError:
                raise QueueError(f"no queue entry {queue_id}") from None
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise QueueError(f"unreadable queue entry {queue_id}: {e}") from None
            return entry, stamp

        def add(result: tuple[QueueEntry, int]) -> bool:
            entry, stamp = result
            if queue_id in self._done:  # worked and deleted while it was read
                return False
            # Adopted meanwhile (a rescan): keep the index's object.
            self._entries.setdefault(queue_id, entry)
            self._stamps.setdefault(queue_id, stamp)
            return True

        def gone(f: Failure) -> Any:
            if queue_id in self._done:
                return False
            return f

        return self._run(read).addCallbacks(add, gone)

    def claim_entry(self, queue_id: str, lease_seconds: float) -> defer.Deferred[QueueEntry | None]:
        """
        Claim one entry by its id (the owner process working what a worker
        just queued): the entry, or ``None`` when it is gone or claimed.
        """
        now = self._now()
        entry = self._entries.get(queue_id)
        if entry is None or self._claims.get(queue_id, now) > now:
            return defer.succeed(None)
        self._claims[queue_id] = now + lease_seconds
        return defer.succeed(entry)

    def list_entries(self) -> defer.Deferred[list[QueueEntry]]:
        """See :meth:`txmail.interfaces.IQueue.list_entries`."""
        return defer.succeed(sorted(self._entries.values(), key=lambda e: (e.created, e.queue_id)))

    def get_entry(self, queue_id: str) -> defer.Deferred[QueueEntry]:
        """See :meth:`txmail.interfaces.IQueue.get_entry`."""
        entry = self._entries.get(queue_id)
        if entry is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        return defer.succeed(entry)

    def open_entry_message(self, queue_id: str) -> defer.Deferred[BinaryIO]:
        """See :meth:`txmail.interfaces.IQueue.open_entry_message`."""
        if queue_id not in self._entries:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        return self._run(open, self._path(queue_id, "msg"), "rb")

    def delete_entry(self, queue_id: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IQueue.delete_entry`."""
        if self._entries.pop(queue_id, None) is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        self._done[queue_id] = None
        while len(self._done) > DONE_KEPT:
            self._done.popitem(last=False)
        self._stamps.pop(queue_id, None)
        self._claims.pop(queue_id, None)

        def remove() -> None:
            for ext in ("json", "msg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(queue_id, ext))
            fsync_dir(self.directory)

        return self._run(remove)

    def update_recipients(
        self, queue_id: str, changes: dict[str, dict[str, Any]], *, durable: bool = True
    ) -> defer.Deferred[None]:
        """
        Merge *changes* (recipient -> fields) into an entry's recipient states
        and write the entry durably.  With *durable* false the changes are only
        merged in memory (the caller is about to delete the entry, or to write
        it with a later call): a crash before that loses them, which at worst
        sends a message again, never loses one.
        """
        entry = self._entries.get(queue_id)
        if entry is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        for fields in changes.values():
            state = fields.get("state")
            if state is not None and state not in RECIPIENT_STATES:
                return defer.fail(QueueError(f"invalid recipient state {state!r}"))
        for rcpt, fields in changes.items():
            entry.recipients.setdefault(rcpt, {}).update(fields)
        if not durable:
            return defer.succeed(None)
        data = _entry_to_json(entry)
        path = self._path(queue_id, "json")

        def write() -> int:
            if not os.path.exists(path):
                # Deleted by another process (txmail queue delete): do not revive it.
                raise QueueError(f"queue entry {queue_id} was deleted")
            write_file_durably(path, data)
            return self._mtime(queue_id)

        def written(stamp: int) -> None:
            self._stamps[queue_id] = stamp

        def gone(f: Any) -> Any:
            if f.check(QueueError) and self._entries.get(queue_id) is entry:
                del self._entries[queue_id]
                self._stamps.pop(queue_id, None)
            return f

        return self._run(write).addCallbacks(written, gone)
