"""
The durable outbound spool (:class:`txmail.interfaces.IQueue`).

Implementation notes:

* Layout: ``<dir>/<id>.msg`` holds the message (a hard link of the received
  spool file where possible), ``<id>.json`` the envelope and per-recipient
  states.  The JSON file is written last (temp file, fsync, rename, directory
  fsync), so an entry exists exactly when its ``.json`` does; a ``.msg``
  without one is a half-made entry and is removed at start-up.
* :meth:`SpoolQueue.enqueue` fires only once both files are durable: the SMTP
  server replies 250 after that.
* Recipient states: ``pending`` (never tried), ``deferred`` (tried, will be
  retried at ``next_attempt``), ``delivered``, ``failed``.  The relay that
  works the queue (outbound delivery) updates them with
  :meth:`SpoolQueue.update_recipients`.
* Index and state live in the reactor thread; only file work goes through
  ``run_blocking``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail._fs import RunBlocking, fsync_dir, link_or_copy, run_inline, write_file_durably
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import Envelope, MessageFile, QueueEntry

__all__ = ["RECIPIENT_STATES", "SpoolQueue"]

RECIPIENT_STATES = ("pending", "deferred", "delivered", "failed")


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
            elif ext == "msg" and f"{base}.json" not in names:
                # Written but never acknowledged: the client was not told 250.
                os.unlink(os.path.join(self.directory, name))
            elif ".tmp" in name:
                os.unlink(os.path.join(self.directory, name))

    def _new_id(self) -> str:
        return f"{int(self._now()):x}{secrets.token_hex(5)}".upper()

    def enqueue(
        self, envelope: Envelope, message: MessageFile, recipients: Iterable[str]
    ) -> defer.Deferred[str]:
        """See :meth:`txmail.interfaces.IQueue.enqueue`."""
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            return defer.fail(QueueError("no recipients to queue"))
        queue_id = self._new_id()
        entry = QueueEntry(
            queue_id=queue_id,
            envelope=envelope,
            recipients={
                r: {"state": "pending", "attempts": 0, "next_attempt": None, "last_error": None}
                for r in rcpts
            },
            size=message.size,
            created=self._now(),
        )
        data = _entry_to_json(entry)

        def write() -> None:
            link_or_copy(message.path, self._path(queue_id, "msg"), src_fsynced=message.fsynced)
            write_file_durably(self._path(queue_id, "json"), data)  # fsyncs the directory too

        def done(_: None) -> str:
            self._entries[queue_id] = entry
            self.log.info(
                "queued {queue_id} from <{sender}> for {count} recipient(s)",
                queue_id=queue_id,
                sender=envelope.mail_from,
                count=len(rcpts),
                message_id=envelope.message_id,
            )
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

        def remove() -> None:
            for ext in ("json", "msg"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._path(queue_id, ext))
            fsync_dir(self.directory)

        return self._run(remove)

    def update_recipients(self, queue_id: str, changes: dict[str, dict[str, Any]]) -> defer.Deferred[None]:
        """
        Merge *changes* (recipient -> fields) into an entry's recipient states
        and write the entry durably.
        """
        entry = self._entries.get(queue_id)
        if entry is None:
            return defer.fail(QueueError(f"no queue entry {queue_id}"))
        for rcpt, fields in changes.items():
            state = fields.get("state")
            if state is not None and state not in RECIPIENT_STATES:
                return defer.fail(QueueError(f"invalid recipient state {state!r}"))
            entry.recipients.setdefault(rcpt, {}).update(fields)
        data = _entry_to_json(entry)
        return self._run(write_file_durably, self._path(queue_id, "json"), data)
