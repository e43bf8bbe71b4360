"""
Message bodies on PostgreSQL: the octets of each stored message, behind a
small interface (:class:`BodyStore`) that an object store could replace.

A body is a row of ``bodies`` (its id and size) and its octets in
``body_chunks``, pieces of at most :data:`CHUNK_SIZE` octets in order of
``seq``: a large message is written and read one piece at a time, never
whole in memory.  Messages refer to a body by id, so a copy (IMAP COPY,
MOVE between mailboxes) shares its source's body instead of writing it
again; a body goes when the last message referring to it does
(:meth:`BodyStore.delete_unused`).  A new message's body is written in
the transaction that adds the message (every copy of a delivery, or an
IMAP APPEND), so a process that dies in between leaves nothing behind.

Every method takes a psycopg connection and runs in the caller's
transaction (:meth:`txmail.pg.db.Database.run` passes one): on the
database's threads, never the reactor's.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable
from typing import Any, BinaryIO

__all__ = ["CHUNK_SIZE", "SPOOL_MEMORY", "BodyStore"]

#: Octets per row of ``body_chunks`` (256 KiB).
CHUNK_SIZE = 256 * 1024
#: A body read back is kept in memory up to this size, in a temporary file above.
SPOOL_MEMORY = 1024 * 1024


class BodyStore:
    """Bodies in the ``bodies`` and ``body_chunks`` tables."""

    chunk_size = CHUNK_SIZE

    def put(self, conn: Any, stream: BinaryIO, size: int | None = None) -> tuple[int, int]:
        """
        Store the octets *stream* reads (to its end) as a new body, one
        chunk at a time; ``(body id, size)``.  *size*, when the caller
        knows it, saves a statement; a stream that reads another number of
        octets is refused (``ValueError``, the transaction is rolled back).
        """
        known = size
        (body_id,) = conn.execute(
            "INSERT INTO bodies (size) VALUES (%s) RETURNING id", (known or 0,)
        ).fetchone()
        size = 0
        seq = 0
        with conn.cursor() as cur:
            while True:
                chunk = _read_full(stream, self.chunk_size)
                if not chunk:
                    break
                cur.execute(
                    "INSERT INTO body_chunks (body_id, seq, data) VALUES (%s, %s, %s)", (body_id, seq, chunk)
                )
                size += len(chunk)
                seq += 1
        if known is None:
            conn.execute("UPDATE bodies SET size = %s WHERE id = %s", (size, body_id))
        elif size != known:
            raise ValueError(f"the body is {size} octets, not the {known} announced")
        return body_id, size

    def open(self, conn: Any, body_id: int) -> BinaryIO:
        """
        A file positioned at the start of the body's octets, readable when
        the message is expunged meanwhile.  A body of one chunk (most
        messages) comes with its size in one statement and is read from
        memory; a larger one is copied into a spooled temporary file (in
        memory up to :data:`SPOOL_MEMORY`, on disk above), chunk by chunk
        through a server-side cursor.

        Raises:
            KeyError: no such body.
        """
        row = conn.execute(
            "SELECT b.size, c.data FROM bodies b"
            " LEFT JOIN body_chunks c ON c.body_id = b.id AND c.seq = 0 WHERE b.id = %s",
            (body_id,),
        ).fetchone()
        if row is None:
            raise KeyError(body_id)
        size, first = int(row[0]), bytes(row[1] or b"")
        if len(first) >= size:
            return io.BytesIO(first)
        out = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - handed to the caller
        try:
            out.write(first)
            with conn.cursor(name=f"txmail_body_{body_id}") as cur:
                cur.itersize = 4
                cur.execute(
                    "SELECT data FROM body_chunks WHERE body_id = %s AND seq > 0 ORDER BY seq", (body_id,)
                )
                for (data,) in cur:
                    out.write(data)
            out.seek(0)
        except BaseException:
            out.close()
            raise
        return out  # type: ignore[return-value]  # a SpooledTemporaryFile is a binary file object

    def delete_unused(self, conn: Any, body_ids: Iterable[int]) -> int:
        """Delete those of *body_ids* no message refers to any more; how many went."""
        ids = sorted(set(body_ids))
        if not ids:
            return 0
        cur = conn.execute(
            "DELETE FROM bodies b WHERE b.id = ANY(%s)"
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.body_id = b.id)",
            (ids,),
        )
        return int(cur.rowcount)


def _read_full(stream: BinaryIO, size: int) -> bytes:
    """Up to *size* octets of *stream*, fewer only at its end (a stream may read short)."""
    parts = []
    want = size
    while want > 0:
        piece = stream.read(want)
        if not piece:
            break
        parts.append(piece)
        want -= len(piece)
    return b"".join(parts)
