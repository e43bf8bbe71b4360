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
* Recipient states are :class:`txmail.model.RecipientState` objects; the
  ``.json`` file keeps each as an object of its fields
  (:func:`recipient_state_to_json`): ``state``, ``attempts``,
  ``next_attempt`` and ``last_error`` always, the runner's other fields
  (:mod:`txmail.delivery.runner`) when they differ from their defaults.
  Files written before the states were typed load unchanged
  (:func:`recipient_state_from_json`); fields this version does not know are
  dropped.
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
import dataclasses
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail._fs import RunBlocking, fsync_dir, run_inline, store_source, write_file_durably
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import DeliveryState, Envelope, MessageSource, QueueEntry, RecipientState

__all__ = ["RECIPIENT_STATES", "SpoolQueue", "recipient_state_from_json", "recipient_state_to_json"]

RECIPIENT_STATES = tuple(DeliveryState)

#: The fields every stored recipient state names, even at their defaults.
_ALWAYS = ("state", "attempts", "next_attempt", "last_error")
_DEFAULT_STATE = RecipientState()
_STATE_FIELDS = tuple(f.name for f in dataclasses.fields(RecipientState))


def recipient_state_to_json(state: RecipientState) -> dict[str, Any]:
    """*state* as the JSON object the queues store (the file queue, PostgreSQL's ``fields``)."""
    doc: dict[str, Any] = {}
    for name in _STATE_FIELDS:
        value = getattr(state, name)
        if name in _ALWAYS or value != getattr(_DEFAULT_STATE, name):
            doc[name] = value.value if isinstance(value, DeliveryState) else value
    return doc


def recipient_state_from_json(doc: Mapping[str, Any]) -> RecipientState:
    """
    A stored recipient state (:func:`recipient_state_to_json`, or the dict
    of any earlier version) as a :class:`RecipientState`.

    Raises:
        ValueError: its ``state`` is not a :class:`DeliveryState`, or a
            field is not of its type.
    """
    state = DeliveryState(doc.get("state") or "pending")

    def number(name: str) -> float | None:
        value = doc.get(name)
        return None if value is None else float(value)

    def text(name: str) -> str | None:
        value = doc.get(name)
        return None if value is None else str(value)

    action = doc.get("success_action")
    sent = doc.get("success_sent")
    return RecipientState(
        state=state,
        attempts=int(doc.get("attempts") or 0),
        next_attempt=number("next_attempt"),
        last_error=text("last_error"),
        last_attempt=number("last_attempt"),
        host=text("host"),
        reply=text("reply"),
        status=text("status"),
        dsn_sent=bool(doc.get("dsn_sent")),
        delay_notice_sent=bool(doc.get("delay_notice_sent")),
        success_action=action if action in ("delivered", "relayed") else None,
        success_sent=None if sent is None else bool(sent),
    )


def _entry_to_json(entry: QueueEntry) -> bytes:
    env = asdict(entry.envelope)
    env["rcpt_to"] = list(env["rcpt_to"])
    env["rcpt_params"] = list(env["rcpt_params"])
    doc = {
        "version": 1,
        "queue_id": entry.queue_id,
        "envelope": env,
        "recipients": {rcpt: recipient_state_to_json(st) for rcpt, st in entry.recipients.items()},
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
        recipients={rcpt: recipient_state_from_json(st) for rcpt, st in doc["recipients"].items()},
        size=doc["size"],
        created=doc["created"],
    )


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
    ) -> None:
        self.directory = directory
        self._run = run_blocking or run_inline
        self._now = now
        os.makedirs(directory, exist_ok=True)
        self._entries: dict[str, QueueEntry] = {}
        self._stamps: dict[str, int] = {}  # queue id -> mtime_ns of its .json as last read/written
        self._listeners: list[Callable[[str], Any]] = []
        self._claims: dict[str, float] = {}  # queue id -> the end of its lease
        self._writes: dict[str, defer.DeferredLock] = {}  # queue id -> the lock of its writes, while any
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
                rcpt: dataclasses.replace(st, next_attempt=now)
                for rcpt, st in entry.recipients.items()
                if st.state is DeliveryState.DEFERRED
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
                rcpt: dataclasses.replace(st, state=DeliveryState.PENDING, next_attempt=None)
                for rcpt, st in entry.recipients.items()
                if st.state is DeliveryState.HELD
            }
            if changes:
                count += len(changes)
                ds.append(self.update_recipients(qid, changes))
        d = defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: count)

        def wake(n: int) -> int:
            for qid in ids:
                for listener in list(self._listeners):
                    try:
                        listener(qid)
                    except Exception:
                        self.log.failure("queue listener failed")
            return n

        return d.addCallback(wake)

    def _new_id(self) -> str:
        return f"{int(self._now()):x}{secrets.token_hex(5)}".upper()

    def enqueue(
        self, envelope: Envelope, message: MessageSource, recipients: Iterable[str]
    ) -> defer.Deferred[str]:
        """See :meth:`txmail.interfaces.IQueue.enqueue`."""
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            return defer.fail(QueueError("no recipients to queue"))
        queue_id = self._new_id()
        state = RecipientState(DeliveryState.PENDING if envelope.hold is None else DeliveryState.HELD)
        entry = QueueEntry(
            queue_id=queue_id,
            envelope=envelope,
            recipients=dict.fromkeys(rcpts, state),
            size=message.size,
            created=self._now(),
        )
        data = _entry_to_json(entry)

        def write() -> None:
            store_source(message, self._path(queue_id, "msg"))
            write_file_durably(self._path(queue_id, "json"), data)  # fsyncs the directory too

        def done(_: None) -> str:
            self._entries[queue_id] = entry
            self._stamps[queue_id] = self._mtime(queue_id)
            self.log.info(
                "queued {queue_id} from <{sender}> for {count} recipient(s)",
                queue_id=queue_id,
                sender=envelope.mail_from,
                count=len(rcpts),
                message_id=envelope.message_id,
                peer=envelope.peer,
            )
            for listener in list(self._listeners):
                try:
                    listener(queue_id)
                except Exception:
                    self.log.failure("queue listener failed")
            return queue_id

        return self._run(write).addCallback(done)

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
        self._stamps.pop(queue_id, None)
        self._claims.pop(queue_id, None)

        def remove() -> None:
            for ext in ("json", "msg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(queue_id, ext))
            fsync_dir(self.directory)

        return self._run(remove)

    def update_recipients(
        self, queue_id: str, changes: Mapping[str, RecipientState], *, durable: bool = True
    ) -> defer.Deferred[None]:
        """
        Set *changes* (recipient -> its new state) in an entry's recipient
        states and write the entry durably.  With *durable* false the changes are only
        merged in memory (the caller is about to delete the entry, or to write
        it with a later call): a crash before that loses them, which at worst
        sends a message again, never loses one.
        """
        entry = self._entries.get(queue_id)
        if entry is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        for st in changes.values():
            if not isinstance(st.state, DeliveryState):
                return defer.fail(QueueError(f"invalid recipient state {st.state!r}"))
        entry.recipients.update(changes)
        if not durable:
            return defer.succeed(None)
        path = self._path(queue_id, "json")

        def write(data: bytes) -> int:
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

        def start() -> defer.Deferred[None]:
            # The entry as it is now, with every change merged so far.
            return self._run(write, _entry_to_json(entry)).addCallbacks(written, gone)

        # One write of an entry at a time, in order: two at once in the
        # blocking pool could finish in either order and leave the earlier
        # state on disk.
        lock = self._writes.get(queue_id)
        if lock is None:
            lock = self._writes[queue_id] = defer.DeferredLock()

        def unlocked(result: Any) -> Any:
            if not lock.locked and not lock.waiting and self._writes.get(queue_id) is lock:
                del self._writes[queue_id]
            return result

        return lock.run(start).addBoth(unlocked)
