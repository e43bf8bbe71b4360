"""
The outbound queue in PostgreSQL (``[queue] backend = "postgresql"``):
:class:`PostgresQueue`, the file queue's entries
(:class:`txmail.delivery.queue.SpoolQueue`) in the tables of
``migrations/0003_queue.sql``, shared by the queue runners of every node.

Implementation notes
--------------------
* Every query goes through :meth:`txmail.pg.db.Database.run` (a thread of
  the database's pool, one transaction).  :meth:`PostgresQueue.enqueue`
  writes the entry, its recipients and its message in one transaction and
  fires once it has committed: the SMTP server replies 250 after that.
* The message is stored in pieces of :data:`CHUNK_SIZE` octets
  (``queue_chunks``), read from the :class:`~txmail.model.MessageSource`
  a piece at a time and read back a piece at a time: a large message is
  never whole in memory.  :meth:`PostgresQueue.open_entry_message` copies
  the pieces to an anonymous temporary file (in the database's thread) and
  returns it, so that the caller reads local disk, never the database, from
  the reactor thread; :meth:`PostgresQueue.open_source` gives a source that
  does the same each time it is opened.
* Claims (:meth:`PostgresQueue.claim`) are ``SELECT ... FOR UPDATE SKIP
  LOCKED`` of the entries whose lease is free or has run out, then an
  ``UPDATE`` setting ``claimed_by`` (this queue object's node name) and
  ``lease_until``, both in one transaction: two runners claiming at once
  skip each other's rows, so an entry is never given to two.  Leases are
  measured with the database's clock, the one clock every node shares.
* ``durable=False`` updates are written at once like the others (a
  transaction is cheap next to an SMTP transaction).
* :meth:`PostgresQueue.add_listener` hears of the entries this object
  queued or released; a runner on another node finds them at its next poll
  (``[outbound] poll_interval``).
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict
from typing import Any, BinaryIO

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail.delivery.queue import recipient_state_from_json, recipient_state_to_json
from txmail.errors import QueueError
from txmail.interfaces import IQueue
from txmail.model import DeliveryState, Envelope, MessageSource, QueueEntry, RecipientState
from txmail.pg.db import Database
from txmail.pg.schema import require_current

__all__ = ["CHUNK_SIZE", "PostgresQueue"]

#: The size of the pieces a message is stored in (``queue_chunks.data``).
CHUNK_SIZE = 256 * 1024

#: The database's clock, in seconds since the epoch (leases are measured with it).
_DB_NOW = "extract(epoch FROM clock_timestamp())::double precision"


def _jsonb(value: Any) -> Any:
    from psycopg.types.json import Jsonb

    return Jsonb(value)


def _envelope_to_json(envelope: Envelope) -> dict[str, Any]:
    env = asdict(envelope)
    env["rcpt_to"] = list(env["rcpt_to"])
    env["rcpt_params"] = list(env["rcpt_params"])
    return env


def _envelope_from_json(env: dict[str, Any]) -> Envelope:
    env = dict(env)
    env["rcpt_to"] = tuple(env["rcpt_to"])
    env["rcpt_params"] = tuple(env["rcpt_params"])
    return Envelope(**env)


def _missing(queue_id: str) -> QueueError:
    return QueueError(f"no queue entry {queue_id}")


# -- queries: each runs in one transaction on a thread of the database ---------


def _insert(
    conn: Any,
    queue_id: str,
    envelope: dict[str, Any],
    message: MessageSource,
    recipients: list[str],
    fields: dict[str, Any],
    created: float,
) -> None:
    conn.execute(
        "INSERT INTO queue_entries (queue_id, envelope, size, created) VALUES (%s, %s, %s, %s)",
        (queue_id, _jsonb(envelope), message.size, created),
    )
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO queue_recipients (queue_id, position, address, fields) VALUES (%s, %s, %s, %s)",
            [(queue_id, n, rcpt, _jsonb(fields)) for n, rcpt in enumerate(recipients)],
        )
    position = 0
    with message.open() as f:
        while True:
            piece = f.read(CHUNK_SIZE)
            # A reader may give less than asked: fill the piece before storing it.
            while piece and len(piece) < CHUNK_SIZE:
                more = f.read(CHUNK_SIZE - len(piece))
                if not more:
                    break
                piece += more
            if not piece:
                break
            conn.execute(
                "INSERT INTO queue_chunks (queue_id, position, data) VALUES (%s, %s, %s)",
                (queue_id, position, piece),
            )
            position += 1


def _recipients(conn: Any, queue_ids: list[str]) -> dict[str, dict[str, RecipientState]]:
    found: dict[str, dict[str, RecipientState]] = {queue_id: {} for queue_id in queue_ids}
    rows = conn.execute(
        "SELECT queue_id, address, fields FROM queue_recipients"
        " WHERE queue_id = ANY(%s) ORDER BY queue_id, position",
        (queue_ids,),
    ).fetchall()
    for queue_id, address, fields in rows:
        found[queue_id][address] = recipient_state_from_json(fields)
    return found


def _entries(conn: Any, rows: list[Any]) -> list[QueueEntry]:
    """QueueEntry objects of ``(queue_id, seq, envelope, size, created)`` rows, in ``seq`` order."""
    rows = sorted(rows, key=lambda row: row[1])
    recipients = _recipients(conn, [row[0] for row in rows])
    return [
        QueueEntry(
            queue_id=queue_id,
            envelope=_envelope_from_json(envelope),
            recipients=recipients[queue_id],
            size=size,
            created=created,
        )
        for queue_id, _, envelope, size, created in rows
    ]


_COLUMNS = "queue_id, seq, envelope, size, created"


def _list(conn: Any) -> list[QueueEntry]:
    return _entries(conn, conn.execute(f"SELECT {_COLUMNS} FROM queue_entries ORDER BY seq").fetchall())


def _get(conn: Any, queue_id: str) -> QueueEntry:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM queue_entries WHERE queue_id = %s", (queue_id,)).fetchall()
    if not rows:
        raise _missing(queue_id)
    return _entries(conn, rows)[0]


def _claim(conn: Any, node: str, limit: int | None, lease_seconds: float) -> list[QueueEntry]:
    rows = conn.execute(
        f"""
        WITH free AS (
            SELECT queue_id FROM queue_entries
            WHERE lease_until IS NULL OR lease_until <= {_DB_NOW}
            ORDER BY seq
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE queue_entries AS e
        SET claimed_by = %(node)s, lease_until = {_DB_NOW} + %(lease)s
        FROM free WHERE e.queue_id = free.queue_id
        RETURNING e.queue_id, e.seq, e.envelope, e.size, e.created
        """,
        {"limit": None if limit is None else max(limit, 0), "node": node, "lease": float(lease_seconds)},
    ).fetchall()
    return _entries(conn, rows)


def _release_claim(conn: Any, node: str, queue_id: str) -> None:
    # Only this node's claim: once its lease ran out another node may hold the entry.
    conn.execute(
        "UPDATE queue_entries SET claimed_by = NULL, lease_until = NULL WHERE queue_id = %s AND claimed_by = %s",
        (queue_id, node),
    )


def _renew(conn: Any, node: str, queue_ids: list[str], lease_seconds: float) -> list[str]:
    rows = conn.execute(
        f"UPDATE queue_entries SET lease_until = {_DB_NOW} + %s"
        " WHERE queue_id = ANY(%s) AND claimed_by = %s AND lease_until IS NOT NULL"
        " RETURNING queue_id",
        (float(lease_seconds), queue_ids, node),
    ).fetchall()
    return [row[0] for row in rows]


def _update(conn: Any, queue_id: str, changes: dict[str, dict[str, Any]]) -> None:
    """Set the recipients' ``fields`` of *changes* (recipient -> its state as JSON)."""
    row = conn.execute("SELECT 1 FROM queue_entries WHERE queue_id = %s FOR UPDATE", (queue_id,)).fetchone()
    if row is None:
        raise _missing(queue_id)
    for rcpt, fields in changes.items():
        updated = conn.execute(
            "UPDATE queue_recipients SET fields = %s WHERE queue_id = %s AND address = %s",
            (_jsonb(fields), queue_id, rcpt),
        )
        if updated.rowcount == 0:
            conn.execute(
                "INSERT INTO queue_recipients (queue_id, position, address, fields)"
                " SELECT %s, coalesce(max(position) + 1, 0), %s, %s FROM queue_recipients"
                " WHERE queue_id = %s",
                (queue_id, rcpt, _jsonb(fields), queue_id),
            )


def _delete(conn: Any, queue_id: str) -> None:
    if conn.execute("DELETE FROM queue_entries WHERE queue_id = %s", (queue_id,)).rowcount == 0:
        raise _missing(queue_id)


def _copy_out(conn: Any, queue_id: str) -> BinaryIO:
    """The message copied, a piece at a time, to an anonymous temporary file positioned at its start."""
    if conn.execute("SELECT 1 FROM queue_entries WHERE queue_id = %s", (queue_id,)).fetchone() is None:
        raise _missing(queue_id)
    out = tempfile.TemporaryFile()  # noqa: SIM115 - returned open, the caller closes it
    try:
        position = 0
        while True:
            row = conn.execute(
                "SELECT data FROM queue_chunks WHERE queue_id = %s AND position = %s", (queue_id, position)
            ).fetchone()
            if row is None:
                break
            out.write(row[0])
            position += 1
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


def _size(conn: Any, queue_id: str) -> int:
    row = conn.execute("SELECT size FROM queue_entries WHERE queue_id = %s", (queue_id,)).fetchone()
    if row is None:
        raise _missing(queue_id)
    return int(row[0])


def _flush(conn: Any, now: float) -> int:
    return int(
        conn.execute(
            "UPDATE queue_recipients SET fields = fields || jsonb_build_object('next_attempt', %s::float8)"
            " WHERE fields->>'state' = 'deferred'",
            (now,),
        ).rowcount
    )


def _release(conn: Any, queue_id: str | None) -> list[str]:
    if queue_id is not None and (
        conn.execute("SELECT 1 FROM queue_entries WHERE queue_id = %s", (queue_id,)).fetchone() is None
    ):
        raise _missing(queue_id)
    rows = conn.execute(
        'UPDATE queue_recipients SET fields = fields || \'{"state": "pending", "next_attempt": null}\''
        " WHERE fields->>'state' = 'held' AND (%(id)s::text IS NULL OR queue_id = %(id)s::text)"
        " RETURNING queue_id",
        {"id": queue_id},
    ).fetchall()
    return [row[0] for row in rows]


@implementer(IQueue)
class PostgresQueue:
    """
    The outbound queue in a PostgreSQL database, shared by every node.

    Args:
        database: the shared :class:`~txmail.pg.db.Database`.
        node: this queue's name in its claims (``claimed_by``); by default
            the host name, the process id and a random part.
        now: a function giving the current time (entry times, flush).
    """

    log = Logger()

    def __init__(self, database: Database, *, node: str | None = None, now: Any = time.time) -> None:
        self.database = database
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._now = now
        self._listeners: list[Callable[[str], Any]] = []

    def check_schema(self) -> None:
        """
        Check the schema, blocking (at start-up).

        Raises:
            SchemaTooOld: the database needs ``txmail db upgrade``.
            DatabaseError: the database cannot be reached.
        """
        self.database.run_sync(require_current)

    def _tell(self, queue_ids: Iterable[str]) -> None:
        for queue_id in queue_ids:
            for listener in list(self._listeners):
                try:
                    listener(queue_id)
                except Exception:
                    self.log.failure("queue listener failed")

    def _new_id(self) -> str:
        return f"{int(self._now()):x}{secrets.token_hex(5)}".upper()

    # -- IQueue -----------------------------------------------------------------

    def add_listener(self, listener: Callable[[str], Any]) -> None:
        """See :meth:`txmail.interfaces.IQueue.add_listener`."""
        self._listeners.append(listener)

    def enqueue(
        self, envelope: Envelope, message: MessageSource, recipients: Iterable[str]
    ) -> defer.Deferred[str]:
        """See :meth:`txmail.interfaces.IQueue.enqueue`."""
        rcpts = list(dict.fromkeys(recipients))
        if not rcpts:
            return defer.fail(QueueError("no recipients to queue"))
        queue_id = self._new_id()
        state = DeliveryState.PENDING if envelope.hold is None else DeliveryState.HELD
        fields = recipient_state_to_json(RecipientState(state))
        d = self.database.run(
            _insert, queue_id, _envelope_to_json(envelope), message, rcpts, fields, self._now()
        )

        def done(_: None) -> str:
            self.log.info(
                "queued {queue_id} from <{sender}> for {count} recipient(s)",
                queue_id=queue_id,
                sender=envelope.mail_from,
                count=len(rcpts),
                message_id=envelope.message_id,
            )
            self._tell([queue_id])
            return queue_id

        return d.addCallback(done)

    def list_entries(self) -> defer.Deferred[list[QueueEntry]]:
        """See :meth:`txmail.interfaces.IQueue.list_entries`."""
        return self.database.run(_list)

    def get_entry(self, queue_id: str) -> defer.Deferred[QueueEntry]:
        """See :meth:`txmail.interfaces.IQueue.get_entry`."""
        return self.database.run(_get, queue_id)

    def update_recipients(
        self, queue_id: str, changes: Mapping[str, RecipientState], *, durable: bool = True
    ) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IQueue.update_recipients` (every update is durable here)."""
        for st in changes.values():
            if not isinstance(st.state, DeliveryState):
                return defer.fail(QueueError(f"invalid recipient state {st.state!r}"))
        fields = {rcpt: recipient_state_to_json(st) for rcpt, st in changes.items()}
        return self.database.run(_update, queue_id, fields)

    def open_entry_message(self, queue_id: str) -> defer.Deferred[BinaryIO]:
        """See :meth:`txmail.interfaces.IQueue.open_entry_message` (a local temporary copy)."""
        return self.database.run(_copy_out, queue_id)

    def open_source(self, queue_id: str) -> defer.Deferred[MessageSource]:
        """See :meth:`txmail.interfaces.IQueue.open_source`: each ``open()`` copies the pieces out (blocking)."""

        def source(size: int) -> MessageSource:
            return MessageSource(size, lambda: self.database.run_sync(_copy_out, queue_id))

        return self.database.run(_size, queue_id).addCallback(source)

    def delete_entry(self, queue_id: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IQueue.delete_entry`."""
        return self.database.run(_delete, queue_id)

    def claim(self, limit: int | None, lease_seconds: float) -> defer.Deferred[list[QueueEntry]]:
        """See :meth:`txmail.interfaces.IQueue.claim`."""
        return self.database.run(_claim, self.node, limit, lease_seconds)

    def release_claim(self, queue_id: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IQueue.release_claim`."""
        return self.database.run(_release_claim, self.node, queue_id)

    def renew_claims(self, queue_ids: Iterable[str], lease_seconds: float) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IQueue.renew_claims` (the claims of this object's node)."""
        return self.database.run(_renew, self.node, list(queue_ids), lease_seconds)

    def flush(self) -> defer.Deferred[int]:
        """See :meth:`txmail.interfaces.IQueue.flush`."""
        return self.database.run(_flush, self._now())

    def release(self, queue_id: str | None = None) -> defer.Deferred[int]:
        """See :meth:`txmail.interfaces.IQueue.release`."""

        def wake(released: list[str]) -> int:
            self._tell(dict.fromkeys(released if queue_id is None else [queue_id, *released]))
            return len(released)

        return self.database.run(_release, queue_id).addCallback(wake)
