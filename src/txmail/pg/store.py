"""
The mail store on PostgreSQL: every user's mailboxes in one database that
several txmail processes (nodes) share.

Usage::

    provider = PostgresProvider(database)      # a txmail.pg.db.Database
    provider.check_schema()                    # blocking: at start-up only
    provider.start()                           # LISTEN for other nodes' changes
    store = yield provider.store_for("alice@example.test")

What is where (``src/txmail/pg/migrations/0002_store.sql``)
------------------------------------------------------------
* ``mailboxes``: per user and name, with UIDVALIDITY, UIDNEXT,
  HIGHESTMODSEQ, the \\Recent watermark, the special-use role and the
  MAILBOXID (RFC 8474); ``subscriptions``; ``mail_users`` (the last
  UIDVALIDITY given).
* ``messages``: per mailbox and UID, the flags and keywords, internal and
  save dates (RFC 8514), size, modseq (RFC 7162), EMAILID, the parsed
  metadata (:func:`txmail.mime.encode_metadata`, parsed once at delivery)
  and the id of the body; ``expunged``: the UIDs expunged with their
  modseq (QRESYNC, :class:`~txmail.interfaces.IExpungeHistory`), those of
  the last :data:`EXPUNGE_HISTORY` modseqs of each mailbox, and under UID
  0 the horizon after which the history is complete (:func:`_prune_expunged`).
* the octets, in :class:`txmail.pg.bodies.BodyStore` (chunks of 256 KiB),
  shared by every copy of a message.
* ``maildrop_locks`` (``0004_maildrop_locks.sql``): the POP3 maildrop
  lock every node respects (:meth:`PostgresProvider.lock_maildrop`, a lease
  row: :mod:`txmail.pg.maildrop`).

How UIDs and modseqs are allocated
----------------------------------
Every change of a mailbox runs in one transaction that first updates (and
so locks) the mailbox's row: ``UPDATE mailboxes SET uidnext = uidnext + n,
highest_modseq = highest_modseq + n ... RETURNING``.  Two nodes appending
to one mailbox take turns on that row lock and never get the same UID; the
changes commit in modseq order, so a node that has seen modseq *m* has seen
everything before it.

What a node keeps
-----------------
A process keeps each open mailbox's message list (UID, flags, size, dates,
modseq; not the octets or metadata) as the memory store does, and brings
it up to date after each of its own changes, at :meth:`PostgresMailbox.refresh`,
at :meth:`PostgresStore.get_mailbox`, and when another node NOTIFYs a
change (below), reading only what changed since the highest modseq it has
seen.  One mailbox object per mailbox and process is handed out while it is
in use, so every session of the process hears every change.

Changes across processes
------------------------
Each transaction that changes a mailbox sends ``NOTIFY txmail_store`` (on
commit) with a JSON payload: the node, the user, the mailbox's row id and
what changed (``added``, ``flags``, ``expunged``; ``mailboxes`` for a
folder created, deleted or renamed, ``subscriptions`` for a subscription,
both without a mailbox).  No name or UID is sent: a payload stays far
below PostgreSQL's 8000 bytes whatever the names, and who needs more reads
it.  :meth:`PostgresProvider.start` opens one dedicated
listening connection per process (a thread waiting on psycopg's
``notifies()``); a notification for a mailbox the process has open
refreshes it, which tells its listeners (MessagesAdded, FlagsChanged,
MessagesExpunged, MailboxDeleted for a mailbox deleted or renamed
elsewhere).  After the listening connection (re)connects, every open
mailbox is refreshed, for the notifications it may have missed.

Store listeners (IMAP NOTIFY)
-----------------------------
:class:`PostgresStore` provides :class:`~txmail.interfaces.IStoreChanges`:
its store listeners hear the changes of every mailbox of the user, made
by this process or any other node, open here or not, and every folder
and subscription change.  A store with a listener keeps a
:class:`_StoreWatch`: the folder tree and subscriptions as last read, and
per mailbox only ``(UIDNEXT, HIGHESTMODSEQ)`` of what its listeners were
told.  A mailbox open here tells its changes as it hears them; a
notification for another one reads, off the reactor, what changed after
that mark (the messages above its UIDNEXT were added, the others with a
higher modseq flagged, the ``expunged`` rows after it expunged), and a
``mailboxes`` or ``subscriptions`` notification reads the tree again and
tells the difference (:func:`_folder_changes`).  Such a mailbox's
:class:`~txmail.model.MessagesChanged` carries a handle whose ``status()``
sums its counters in the database, without loading its messages.  Changes
made through this process are told before the call that made them
fires, as the memory store does.  A store without store listeners keeps
and reads nothing for them: a notification for a mailbox it does not
have open costs it nothing.

\\Recent is kept in the database (a watermark per mailbox), so exactly one
session of any node claims each new message.

Sieve scripts (:class:`~txmail.interfaces.ISieveScripts`) are rows of
``sieve_scripts`` (``0007_sieve.sql``); a change of one user's scripts
takes the transaction-scoped advisory lock ``(SIEVE_LOCK, hashtext(user))``
first, so changes from several nodes take turns and at most one script is
active (also a partial unique index).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeGuard

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from txmail import mime
from txmail.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxNotEmpty,
    NoSuchMailbox,
    NoSuchMessage,
    NoSuchScript,
    ScriptActive,
    ScriptExists,
)
from txmail.interfaces import (
    IExpungedEmailIds,
    IExpungeHistory,
    IHeaderColumns,
    IHeaderLines,
    IInboxDelivery,
    IMailbox,
    IMaildropLock,
    IMaildropLocks,
    IMailStore,
    IMailStoreProvider,
    IMetadataStore,
    IObjectIdProvider,
    IObjectIds,
    ISaveDates,
    ISieveScripts,
    IStorageUsage,
    IStoreChanges,
    IURLAuthKeys,
)
from txmail.model import (
    DELIMITER,
    INBOX,
    SEEN,
    AnnotationsChanged,
    FlagMode,
    FlagsChanged,
    FolderChange,
    FolderCreated,
    FolderDeleted,
    FolderInfo,
    FolderRenamed,
    MailboxChange,
    MailboxStatus,
    MessageInfo,
    MessageMetadata,
    MessagesAdded,
    MessagesChanged,
    MessagesExpunged,
    MessageSource,
    SpecialUse,
    SubscriptionChanged,
    normalize_flags,
)
from txmail.pg.bodies import SPOOL_MEMORY, BodyStore
from txmail.pg.db import Database
from txmail.pg.maildrop import DEFAULT_LEASE, PostgresMaildropLocks
from txmail.pg.schema import require_current
from txmail.quota import Usage
from txmail.sieve.storage import check_script_name
from txmail.store._annotations import AnnotationListeners, apply_changes
from txmail.store._base import (
    URLAUTH_KEY_SIZE,
    MailboxState,
    StoreListeners,
    check_name,
    columns_from_metadata,
    folder_infos,
    generic_copy,
    lines_from_metadata,
    next_uidvalidity,
    select_uids,
)
from txmail.store._crlf import bare_lf_count, to_crlf
from txmail.store._ids import new_email_id, new_mailbox_id

__all__ = ["CHANNEL", "PostgresMailbox", "PostgresProvider", "PostgresStore"]

#: The LISTEN/NOTIFY channel of mailbox changes.
CHANNEL = "txmail_store"
#: Octets of a message source read at a time while storing it.
READ_CHUNK = 256 * 1024
#: Seconds the listening thread waits for a notification before checking whether to stop.
LISTEN_POLL = 0.25
#: Seconds between attempts to reconnect the listening connection.
RECONNECT_DELAY = 1.0
#: Seconds :meth:`_Listener.stop` allows beyond the polling interval (a connection being made).
CONNECT_GRACE = 10.0

#: Modseqs of expunge history (QRESYNC) kept per mailbox: an expunge
#: deletes the ``expunged`` rows older than that many modseqs before it.
EXPUNGE_HISTORY = 100_000

_MESSAGE_COLUMNS = "uid, flags, size, internal_date, modseq, save_date, email_id"


def _info(row: tuple[Any, ...]) -> MessageInfo:
    uid, flags, size, internal_date, modseq, save_date, email_id = row
    return MessageInfo(
        int(uid), frozenset(flags), int(size), float(internal_date), int(modseq), float(save_date), email_id
    )


@dataclass(frozen=True)
class _Changes:
    """A mailbox as the database has it, from a modseq on (read on a database thread)."""

    name: str
    uidnext: int
    highest_modseq: int
    recent_uid: int
    #: Messages added or changed after the modseq, ascending UID.
    messages: tuple[MessageInfo, ...]
    #: UIDs expunged after the modseq.
    expunged: tuple[int, ...]
    #: When the expunge history no longer reaches back to the modseq
    #: (pruned, :func:`_prune_expunged`): every UID present, ascending
    #: (what is not among them is gone), and ``expunged`` is empty.
    present: tuple[int, ...] | None = None


# -- database work (on the database's threads) ------------------------------


def _read_changes(conn: Any, box_id: int, since: int, lock: bool = True) -> _Changes | None:
    """
    The mailbox's counters and what changed after modseq *since*; ``None``
    when the mailbox is gone.  The row is read ``FOR SHARE`` first: no
    change can commit in between, so the reads after it agree (without
    *lock*, the caller's transaction is one snapshot: :func:`_snapshot`).
    """
    row = conn.execute(
        "SELECT name, uidnext, highest_modseq, recent_uid FROM mailboxes WHERE id = %s"
        + (" FOR SHARE" if lock else ""),
        (box_id,),
    ).fetchone()
    if row is None:
        return None
    messages = conn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE mailbox = %s AND modseq > %s ORDER BY uid",
        (box_id, since),
    ).fetchall()
    expunged: list[Any] = []
    present = None
    if since > 0:
        expunged = conn.execute(
            "SELECT uid FROM expunged WHERE mailbox = %s AND modseq > %s ORDER BY uid", (box_id, since)
        ).fetchall()
        if expunged and expunged[0][0] == 0:  # the horizon is after *since*: history pruned
            expunged = []
            rows = conn.execute("SELECT uid FROM messages WHERE mailbox = %s ORDER BY uid", (box_id,))
            present = tuple(int(r[0]) for r in rows)
    return _Changes(
        row[0],
        int(row[1]),
        int(row[2]),
        int(row[3]),
        tuple(_info(r) for r in messages),
        tuple(int(r[0]) for r in expunged),
        present,
    )


def _snapshot(conn: Any) -> None:
    """
    Make the transaction one snapshot (``REPEATABLE READ``, read only),
    first thing in it: its reads agree without locking a mailbox row, so
    reading several mailboxes never waits for, nor holds up, a change.
    The changes of a mailbox commit in modseq order (its row lock), so a
    snapshot that holds one holds those before it.
    """
    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


def _read_unlocked(conn: Any, box_id: int, since: int) -> _Changes | None:
    """:func:`_read_changes` in a snapshot of its own."""
    _snapshot(conn)
    return _read_changes(conn, box_id, since, lock=False)


def _read_tree(conn: Any, owner: str) -> tuple[dict[int, tuple[str, int, int]], frozenset[str]]:
    """The user's mailboxes (row id: ``(name, UIDNEXT, HIGHESTMODSEQ)``) and subscriptions."""
    rows = conn.execute(
        "SELECT id, name, uidnext, highest_modseq FROM mailboxes WHERE owner = %s", (owner,)
    ).fetchall()
    subscribed = conn.execute("SELECT name FROM subscriptions WHERE owner = %s", (owner,)).fetchall()
    return (
        {int(box_id): (name, int(uidnext), int(modseq)) for box_id, name, uidnext, modseq in rows},
        frozenset(r[0] for r in subscribed),
    )


def _read_status(conn: Any, box_id: int, name: str) -> MailboxStatus:
    """
    The counters of mailbox *box_id* summed by the database, as a
    :class:`PostgresMailbox` loaded now would give them.

    Raises:
        NoSuchMailbox: the mailbox is gone.
    """
    row = conn.execute(
        "SELECT count(m.uid), count(m.uid) FILTER (WHERE m.uid > b.recent_uid),"
        " count(m.uid) FILTER (WHERE NOT %s = ANY(m.flags)), b.uidnext, b.uidvalidity, b.highest_modseq,"
        " coalesce(sum(m.size), 0) FROM mailboxes b LEFT JOIN messages m ON m.mailbox = b.id"
        " WHERE b.id = %s GROUP BY b.id",
        (SEEN, box_id),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox(name)
    return MailboxStatus(*(int(value) for value in row))


def _folder_changes(
    old: dict[int, str], new: dict[int, str], old_subscribed: frozenset[str], new_subscribed: frozenset[str]
) -> list[FolderChange]:
    """
    What changed between two readings of a user's folder tree (row id:
    name) and subscriptions: a row gone is a mailbox deleted (a parent
    still when its children stay, RFC 3501 section 6.3.4), a row kept
    under another name one renamed, a new row one created.  Deletions
    come first and a name a rename frees is created after the rename, so
    a client that applies the events in order ends with the new tree.
    """
    names = set(new.values())
    deleted = sorted(name for box_id, name in old.items() if box_id not in new)
    renamed = sorted(
        (name, new[box_id]) for box_id, name in old.items() if box_id in new and new[box_id] != name
    )
    freed = {old_name for old_name, _ in renamed}
    created = sorted(name for box_id, name in new.items() if box_id not in old)
    out: list[FolderChange] = [
        FolderDeleted(name, parent=any(n.startswith(name + DELIMITER) for n in names)) for name in deleted
    ]
    out.extend(FolderCreated(name) for name in created if name not in freed)
    out.extend(FolderRenamed(old_name, new_name) for old_name, new_name in renamed)
    out.extend(FolderCreated(name) for name in created if name in freed)
    out.extend(
        SubscriptionChanged(name, name in new_subscribed)
        for name in sorted(old_subscribed.symmetric_difference(new_subscribed))
    )
    return out


def _notify(conn: Any, node: str, user: str, box_id: int | None, kind: str) -> None:
    """Queue a notification of a change, sent when the transaction commits."""
    payload = json.dumps({"node": node, "user": user, "mailbox": box_id, "kind": kind})
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def _allocate(conn: Any, box_id: int, uids: int, modseqs: int) -> tuple[int, int]:
    """
    Take *uids* UIDs and *modseqs* modseqs of the mailbox (locking its row
    until the transaction ends): ``(first UID, first modseq)``.

    Raises:
        NoSuchMailbox: the mailbox is gone.
    """
    row = conn.execute(
        "UPDATE mailboxes SET uidnext = uidnext + %s, highest_modseq = highest_modseq + %s"
        " WHERE id = %s RETURNING uidnext - %s, highest_modseq - %s + 1",
        (uids, modseqs, box_id, uids, modseqs),
    ).fetchone()
    if row is None:
        raise NoSuchMailbox(str(box_id))
    return int(row[0]), int(row[1])


def _spool(message: bytes | MessageSource) -> tuple[BinaryIO, int, MessageMetadata]:
    """
    The message's octets with every bare LF made CRLF (as the memory and
    Maildir stores serve them, RFC 3501 section 2.3.4) in a spooled
    temporary file at its start, their size and their metadata: the
    source's own when it has some and nothing was converted, else parsed
    from the file.  Read one chunk at a time.
    """
    if isinstance(message, bytes | bytearray | memoryview):
        message = MessageSource.from_bytes(bytes(message))
    out = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - returned
    bare = 0
    try:
        with contextlib.closing(message.open()) as f:
            after_cr = False
            while chunk := f.read(READ_CHUNK):
                count = bare_lf_count(chunk, after_cr)
                if count:
                    bare += count
                    if after_cr and chunk[:1] == b"\n":
                        out.write(b"\n")
                        out.write(to_crlf(chunk[1:]))
                    else:
                        out.write(to_crlf(chunk))
                else:
                    out.write(chunk)
                after_cr = chunk[-1:] == b"\r"
        size = out.tell()
        metadata = None if bare else message.metadata
        if metadata is None:
            out.seek(0)
            metadata = mime.parse_metadata(out)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out, size, metadata  # type: ignore[return-value]  # a SpooledTemporaryFile is a binary file object


class _MissingInboxes(Exception):
    """Users without an INBOX yet, met by :func:`_deliver_inboxes` (its transaction is rolled back)."""

    def __init__(self, users: list[str]) -> None:
        super().__init__(users)
        self.users = users


def _make_inboxes(conn: Any, users: list[str]) -> None:
    """Make sure each of *users* has a row and an INBOX (in the order of the addresses)."""
    for user in sorted(users):
        _lock_user(conn, user)


def _store_body(conn: Any, bodies: BodyStore, message: bytes | MessageSource) -> tuple[int, int, bytes]:
    """The message's body stored (bare LFs made CRLF): ``(body id, size, encoded metadata)``."""
    spooled, size, metadata = _spool(message)
    with spooled:
        body_id, size = bodies.put(conn, spooled, size)
    return body_id, size, mime.encode_metadata(metadata)


def _add_copies(
    conn: Any,
    node: str,
    copies: list[tuple[str, int]],
    body: tuple[int, int, bytes],
    flags: list[str],
    date: float,
) -> dict[int, int]:
    """
    One statement adding a message of *body* (from :func:`_store_body`)
    to each mailbox of *copies* (``(owner, mailbox id)``, no mailbox
    twice): each takes its mailbox's next UID and modseq (the caller holds
    the rows' locks when there are several, taken in the order of their
    ids) and queues a notification.  ``{mailbox id: UID}`` of the copies
    made: a mailbox that is gone is left out.
    """
    body_id, size, metadata = body
    rows = conn.execute(
        "WITH taken AS ("
        "  UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1"
        "  WHERE id = ANY(%(ids)s) RETURNING id, uidnext - 1 AS uid, highest_modseq AS modseq"
        "), copies AS ("
        "  SELECT taken.*, c.owner, c.email_id FROM taken"
        "  JOIN unnest(%(ids)s::bigint[], %(owners)s::text[], %(email_ids)s::text[]) AS c (box, owner, email_id)"
        "  ON c.box = taken.id"
        "), added AS ("
        "  INSERT INTO messages (mailbox, uid, modseq, flags, internal_date, save_date, size, email_id,"
        "  body_id, metadata) SELECT id, uid, modseq, %(flags)s::text[], %(date)s, %(saved)s, %(size)s,"
        "  email_id, %(body)s, %(metadata)s FROM copies RETURNING mailbox"
        ") SELECT copies.id, copies.uid, pg_notify(%(channel)s, json_build_object("
        "  'node', %(node)s::text, 'user', copies.owner, 'mailbox', copies.id, 'kind', 'added')::text)"
        " FROM copies JOIN added ON added.mailbox = copies.id",
        {
            "ids": [box_id for _, box_id in copies],
            "owners": [owner for owner, _ in copies],
            "email_ids": [new_email_id() for _ in copies],
            "flags": flags,
            "date": date,
            "saved": time.time(),
            "size": size,
            "body": body_id,
            "metadata": metadata,
            "channel": CHANNEL,
            "node": node,
        },
    ).fetchall()
    return {int(box_id): int(uid) for box_id, uid, _ in rows}


def _deliver_inboxes(
    conn: Any, bodies: BodyStore, node: str, users: list[str], message: bytes | MessageSource, date: float
) -> dict[str, tuple[int, int]]:
    """
    One message into the INBOX of each of *users*, in the caller's
    transaction: the body stored once (every copy refers to it), each
    INBOX row locked in the order of their ids (so that two such
    deliveries, on any nodes, never wait for each other in a cycle; a user
    without an INBOX yet raises :class:`_MissingInboxes`), then the copies
    added in one statement (:func:`_add_copies`).  ``{user: (INBOX id,
    UID)}``.
    """
    body = _store_body(conn, bodies, message)
    boxes = dict(
        conn.execute(
            "SELECT owner, id FROM mailboxes WHERE owner = ANY(%s) AND name = %s ORDER BY id FOR UPDATE",
            (users, INBOX),
        ).fetchall()
    )
    missing = [u for u in users if u not in boxes]
    if missing:
        # Made in a transaction of their own (_make_inboxes), which takes
        # the users' rows: never while INBOX rows are held here.
        raise _MissingInboxes(missing)
    uids = _add_copies(conn, node, [(u, boxes[u]) for u in users], body, [], date)
    return {user: (boxes[user], uids[boxes[user]]) for user in users}


def _mailbox_rows(conn: Any, owner: str) -> list[tuple[str, str | None]]:
    rows: list[tuple[str, str | None]] = conn.execute(
        "SELECT name, special_use FROM mailboxes WHERE owner = %s", (owner,)
    ).fetchall()
    return rows


def _lock_user(conn: Any, owner: str) -> int:
    """Make sure the user has a row and INBOX; lock the row (folder changes take turns); the last UIDVALIDITY."""
    conn.execute("INSERT INTO mail_users (address) VALUES (%s) ON CONFLICT DO NOTHING", (owner,))
    (last,) = conn.execute(
        "SELECT last_uidvalidity FROM mail_users WHERE address = %s FOR UPDATE", (owner,)
    ).fetchone()
    last = int(last)
    if (
        conn.execute("SELECT 1 FROM mailboxes WHERE owner = %s AND name = %s", (owner, INBOX)).fetchone()
        is None
    ):
        last = _insert_mailbox(conn, owner, INBOX, last)
    return last


def _insert_mailbox(conn: Any, owner: str, name: str, last_uidvalidity: int) -> int:
    """Create the mailbox *name* with a fresh UIDVALIDITY and MAILBOXID; the UIDVALIDITY given."""
    uidvalidity = next_uidvalidity(last_uidvalidity)
    conn.execute(
        "INSERT INTO mailboxes (owner, name, mailbox_id, uidvalidity) VALUES (%s, %s, %s, %s)",
        (owner, name, new_mailbox_id(), uidvalidity),
    )
    conn.execute("UPDATE mail_users SET last_uidvalidity = %s WHERE address = %s", (uidvalidity, owner))
    return uidvalidity


def _create_parents(conn: Any, owner: str, name: str, last: int) -> int:
    """Create the missing parents of *name*; the last UIDVALIDITY given."""
    parts = name.split(DELIMITER)
    for i in range(1, len(parts)):
        parent = DELIMITER.join(parts[:i])
        found = conn.execute(
            "SELECT 1 FROM mailboxes WHERE owner = %s AND name = %s", (owner, parent)
        ).fetchone()
        if found is None:
            last = _insert_mailbox(conn, owner, parent, last)
    return last


def _has_children(conn: Any, owner: str, name: str) -> bool:
    prefix = name + DELIMITER
    row = conn.execute(
        "SELECT 1 FROM mailboxes WHERE owner = %s AND left(name, %s) = %s LIMIT 1",
        (owner, len(prefix), prefix),
    ).fetchone()
    return row is not None


def _move_rows(
    conn: Any, bodies: BodyStore, source: int, uids: list[int], target: int
) -> list[tuple[int, int]]:
    """
    Copy the messages *uids* of mailbox *source* into *target* with new
    UIDs and modseqs, sharing their bodies; ``(source UID, target UID)``
    pairs of those found, ascending.

    The target's row is locked first, then the source messages ``FOR
    SHARE``: an expunge of them elsewhere waits for this transaction (and
    then finds their bodies still used), or went first and they are not
    copied.  No transaction holds a source message's lock while it waits
    for a mailbox row, so the order cannot deadlock.

    Raises:
        NoSuchMailbox: the target is gone.
    """
    if conn.execute("SELECT 1 FROM mailboxes WHERE id = %s FOR UPDATE", (target,)).fetchone() is None:
        raise NoSuchMailbox(str(target))
    rows = conn.execute(
        "SELECT uid, flags, internal_date, size, email_id, body_id, metadata FROM messages"
        " WHERE mailbox = %s AND uid = ANY(%s) ORDER BY uid FOR SHARE",
        (source, uids),
    ).fetchall()
    if not rows:
        return []
    first_uid, first_modseq = _allocate(conn, target, len(rows), len(rows))
    now = time.time()
    pairs = []
    with conn.cursor() as cur:
        for i, (uid, flags, internal_date, size, email_id, body_id, metadata) in enumerate(rows):
            cur.execute(
                "INSERT INTO messages (mailbox, uid, modseq, flags, internal_date, save_date, size,"
                " email_id, body_id, metadata) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    target,
                    first_uid + i,
                    first_modseq + i,
                    flags,
                    internal_date,
                    now,
                    size,
                    email_id,
                    body_id,
                    metadata,
                ),
            )
            pairs.append((int(uid), first_uid + i))
    return pairs


def _expunge_rows(
    conn: Any, bodies: BodyStore, box_id: int, uids: list[int], history: int = EXPUNGE_HISTORY
) -> list[int]:
    """
    Remove the messages *uids* (all found), record them expunged at one
    new modseq, keeping *history* modseqs of history
    (:func:`_prune_expunged`); those removed.
    """
    if not uids:
        return []
    _, modseq = _allocate(conn, box_id, 0, 1)
    rows = conn.execute(
        "DELETE FROM messages WHERE mailbox = %s AND uid = ANY(%s) RETURNING uid, body_id, email_id",
        (box_id, uids),
    ).fetchall()
    removed = sorted(int(r[0]) for r in rows)
    if removed:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO expunged (mailbox, uid, modseq, email_id) VALUES (%s, %s, %s, %s)"
                " ON CONFLICT (mailbox, uid) DO UPDATE SET modseq = excluded.modseq, email_id = excluded.email_id",
                [(box_id, int(r[0]), modseq, r[2]) for r in rows],
            )
        bodies.delete_unused(conn, (r[1] for r in rows))
        _prune_expunged(conn, box_id, modseq - history)
    return removed


def _prune_expunged(conn: Any, box_id: int, horizon: int) -> None:
    """
    Forget the expunges at or before modseq *horizon* (RFC 7162 section
    3.2.6 lets a server answer with a superset past what it remembers): the
    rows go, and the row of UID 0 (no message has it) holds the horizon,
    the modseq after which the history is complete.  One index range probe
    when there is nothing to forget.
    """
    if horizon <= 0:
        return
    cur = conn.execute(
        "DELETE FROM expunged WHERE mailbox = %s AND uid > 0 AND modseq <= %s", (box_id, horizon)
    )
    if cur.rowcount:
        conn.execute(
            "INSERT INTO expunged (mailbox, uid, modseq) VALUES (%s, 0, %s) ON CONFLICT (mailbox, uid)"
            " DO UPDATE SET modseq = greatest(expunged.modseq, excluded.modseq)",
            (box_id, horizon),
        )


def _flag_rows(
    conn: Any,
    box_id: int,
    uids: list[int],
    wanted: frozenset[str],
    mode: FlagMode,
    unchanged_since: int | None,
) -> list[int]:
    """Set flags in the database (STORE, RFC 3501 section 6.4.6; UNCHANGEDSINCE, RFC 7162 section 3.1.3); the UIDs changed."""
    conn.execute("SELECT 1 FROM mailboxes WHERE id = %s FOR UPDATE", (box_id,))
    rows = conn.execute(
        "SELECT uid, flags, modseq FROM messages WHERE mailbox = %s AND uid = ANY(%s) ORDER BY uid",
        (box_id, uids),
    ).fetchall()
    changes = []
    for uid, flags, modseq in rows:
        old = frozenset(flags)
        if unchanged_since is not None and modseq > unchanged_since:
            continue
        if mode is FlagMode.REPLACE:
            new = wanted
        elif mode is FlagMode.ADD:
            new = old | wanted
        else:
            new = old - wanted
        if new != old:
            changes.append((int(uid), sorted(new)))
    if not changes:
        return []
    _, first = _allocate(conn, box_id, 0, len(changes))
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE messages SET flags = %s, modseq = %s WHERE mailbox = %s AND uid = %s",
            [(flags, first + i, box_id, uid) for i, (uid, flags) in enumerate(changes)],
        )
    return [uid for uid, _ in changes]


@implementer(
    IMailbox, IExpungeHistory, IExpungedEmailIds, ISaveDates, IObjectIds, IHeaderColumns, IHeaderLines
)
class PostgresMailbox(MailboxState):
    """
    One mailbox of a :class:`PostgresStore`: the message list in memory
    (:class:`~txmail.store._base.MailboxState`), every change made in the
    database first.  The changes of one process to one mailbox run one
    after the other (a ``DeferredLock``), and each ends by reading what
    changed since this process last looked, which is what the listeners
    are told.
    """

    def __init__(
        self, store: PostgresStore, box_id: int, name: str, uidvalidity: int, mailbox_id: str
    ) -> None:
        self.store = store
        self.box_id = box_id
        self.name = name
        self.uidvalidity = uidvalidity
        #: RFC 8474 section 4: kept by a rename.
        self.mailbox_id = mailbox_id
        self._init_state()
        self._lock = defer.DeferredLock()
        self._refresh_waiting = False

    @property
    def _database(self) -> Database:
        return self.store.provider.database

    @property
    def _node(self) -> str:
        return self.store.provider.node

    # -- applying what the database says ------------------------------------

    def _apply(self, changes: _Changes | None) -> defer.Deferred[None] | None:
        """
        Bring the message list up to *changes* and tell the listeners
        (reactor thread); the store's listeners, if it has some, through
        its :class:`_StoreWatch`: the Deferred that fires once they are
        told (never fails), or ``None``.
        """
        if changes is None or changes.name != self.name:
            # Deleted, or renamed (by another node): this object is done.
            self.store._forget(self)
            self._mark_deleted()
            return None
        before = (self._uidnext, self._modseq)
        added = []
        changed = []
        for info in changes.messages:
            old = self._infos.get(info.uid)
            if old is None:
                added.append(info)
            elif info.modseq > old.modseq:
                changed.append(info)
                self._count(old, -1)
                self._infos[info.uid] = info
                self._count(info, 1)
        if added:
            unordered = bool(self._infos) and added[0].uid < next(reversed(self._infos))
            for info in added:
                self._insert(info)
            if unordered:  # pragma: no cover - UIDs commit in order; kept ascending regardless
                self._infos = dict(sorted(self._infos.items()))
        if changes.present is None:
            removed = [uid for uid in changes.expunged if uid in self._infos]
        else:  # the expunge history no longer reaches back to this list
            present = set(changes.present)
            removed = [uid for uid in self._infos if uid not in present]
        for uid in removed:
            self._count(self._infos.pop(uid), -1)
        self._uidnext = max(self._uidnext, changes.uidnext)
        self._modseq = max([self._modseq, changes.highest_modseq, *(i.modseq for i in changed)])
        self._recent = max(self._recent, changes.recent_uid)
        events: list[MailboxChange] = []
        if added:
            events.append(MessagesAdded(tuple(added)))
        if changed:
            events.append(FlagsChanged(tuple(changed)))
        if removed:
            events.append(MessagesExpunged(tuple(removed), self._modseq))
        for event in events:
            self._notify(event)
        after = (self._uidnext, self._modseq)
        watch = self.store._watch
        if watch is None or (not events and after == before):
            return None
        return watch.mailbox_told(self, before, after, events)

    def _tell_store_listeners(self, change: MailboxChange) -> None:
        """The store's listeners are told by its :class:`_StoreWatch` (:meth:`_apply`), not here."""

    def _change(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """
        Run ``fn(conn, *args)`` and then read the changes since this
        process's modseq, in one transaction, one change of this mailbox at
        a time; apply the changes and fire with ``fn``'s result.
        """

        def work(conn: Any, since: int) -> tuple[Any, _Changes | None]:
            result = fn(conn, *args)
            return result, _read_changes(conn, self.box_id, since)

        def locked() -> defer.Deferred[Any]:
            failed = self._alive_or_fail()
            if failed is not None:
                return failed
            return self._database.run(work, self._modseq).addCallback(applied)

        def applied(outcome: tuple[Any, _Changes | None]) -> Any:
            result, changes = outcome
            told = self._apply(changes)
            # The store's listeners hear the change before the caller does
            # (a session's own change is known as its own while its command runs).
            return result if told is None else told.addCallback(lambda _: result)

        return self._lock.run(locked)

    def _notified(self) -> defer.Deferred[None] | None:
        """
        Another node changed the mailbox: refresh it, unless a refresh is
        already waiting for its turn (a burst of notifications costs one
        read, which sees all of them).  ``None`` when one was waiting.
        """
        if self._refresh_waiting:
            return None
        self._refresh_waiting = True

        def started() -> defer.Deferred[None]:
            self._refresh_waiting = False
            return self.refresh()

        # Refreshes queue behind the changes under way: started when its turn comes.
        d: defer.Deferred[None] = defer.Deferred()
        self._lock.acquire().addCallback(lambda lock: lock.release()).addCallback(
            lambda _: started()
        ).chainDeferred(d)
        return d

    # -- reading -------------------------------------------------------------

    def expunged_since(self, modseq: int, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IExpungeHistory.expunged_since`: from the ``expunged`` table."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        wanted = None if uids is None else sorted({int(u) for u in uids})

        def query(conn: Any) -> list[int]:
            _snapshot(conn)
            horizon = conn.execute(
                "SELECT modseq FROM expunged WHERE mailbox = %s AND uid = 0", (self.box_id,)
            ).fetchone()
            if horizon is not None and modseq < horizon[0]:
                return self._gone_below_uidnext(conn, wanted)
            if wanted is None:
                rows = conn.execute(
                    "SELECT uid FROM expunged WHERE mailbox = %s AND modseq > %s AND uid > 0 ORDER BY uid",
                    (self.box_id, modseq),
                ).fetchall()
            else:
                rows = conn.execute(
                    "SELECT uid FROM expunged WHERE mailbox = %s AND modseq > %s AND uid = ANY(%s) AND uid > 0"
                    " ORDER BY uid",
                    (self.box_id, modseq, wanted),
                ).fetchall()
            return [int(r[0]) for r in rows]

        if wanted == []:
            return defer.succeed([])
        return self._database.run(query)

    def expunged_email_ids(self, uids: Iterable[int]) -> defer.Deferred[dict[int, str]]:
        """See :meth:`txmail.interfaces.IExpungedEmailIds.expunged_email_ids`: from the ``expunged`` table."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        wanted = sorted({int(u) for u in uids})
        if not wanted:
            return defer.succeed({})

        def query(conn: Any) -> dict[int, str]:
            rows = conn.execute(
                "SELECT uid, email_id FROM expunged WHERE mailbox = %s AND uid = ANY(%s) AND uid > 0"
                " AND email_id IS NOT NULL",
                (self.box_id, wanted),
            ).fetchall()
            return {int(r[0]): r[1] for r in rows}

        return self._database.run(query)

    def _gone_below_uidnext(self, conn: Any, wanted: list[int] | None) -> list[int]:
        """
        Past the history's horizon: every UID below UIDNEXT that is not
        present (of *wanted*, when given), as the memory store answers
        past its own (a superset, RFC 7162 section 3.2.6).
        """
        row = conn.execute("SELECT uidnext FROM mailboxes WHERE id = %s", (self.box_id,)).fetchone()
        if row is None:
            raise NoSuchMailbox(self.name)
        uidnext = int(row[0])
        present = {
            int(r[0]) for r in conn.execute("SELECT uid FROM messages WHERE mailbox = %s", (self.box_id,))
        }
        candidates: Iterable[int] = range(1, uidnext) if wanted is None else wanted
        return [uid for uid in candidates if 0 < uid < uidnext and uid not in present]

    def _body(self, conn: Any, uid: int) -> BinaryIO:
        row = conn.execute(
            "SELECT body_id FROM messages WHERE mailbox = %s AND uid = %s", (self.box_id, uid)
        ).fetchone()
        if row is None:
            raise NoSuchMessage(f"{self.name} uid {uid}")
        return self.store.provider.bodies.open(conn, row[0])

    def open_message(self, uid: int) -> defer.Deferred[BinaryIO]:
        """
        See :meth:`txmail.interfaces.IMailbox.open_message`: the body is
        copied chunk by chunk into a spooled temporary file (in memory up
        to 1 MiB), which stays readable if the message is expunged.
        """
        return self._alive_or_fail() or self._database.run(self._body, uid)

    def read_message(self, uid: int) -> defer.Deferred[bytes]:
        """See :meth:`txmail.interfaces.IMailbox.read_message`."""

        def read(conn: Any) -> bytes:
            with self._body(conn, uid) as f:
                return f.read()

        return self._alive_or_fail() or self._database.run(read)

    def get_metadata(self, uids: Iterable[int]) -> defer.Deferred[dict[int, MessageMetadata]]:
        """See :meth:`txmail.interfaces.IMailbox.get_metadata`: decoded from what delivery stored."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        selected = select_uids(uids, self._infos)

        def query(conn: Any) -> dict[int, MessageMetadata]:
            rows = conn.execute(
                "SELECT uid, metadata FROM messages WHERE mailbox = %s AND uid = ANY(%s)",
                (self.box_id, selected),
            ).fetchall()
            return {int(uid): mime.decode_metadata(bytes(data)) for uid, data in rows}

        if not selected:
            return defer.succeed({})
        return self._database.run(query)

    def header_columns(self, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, ...]]]:
        """See :meth:`txmail.interfaces.IHeaderColumns.header_columns`: computed from :meth:`get_metadata`."""
        return columns_from_metadata(self, uids)

    def header_lines(self, uids: Iterable[int]) -> defer.Deferred[dict[int, tuple[str, str]]]:
        """See :meth:`txmail.interfaces.IHeaderLines.header_lines`: made from :meth:`get_metadata`."""
        return lines_from_metadata(self, uids)

    # -- changing -----------------------------------------------------------

    def append(
        self, message: bytes | MessageSource, flags: Iterable[str] = (), internal_date: float | None = None
    ) -> defer.Deferred[int]:
        """
        See :meth:`txmail.interfaces.IMailbox.append`: one transaction
        reads the source in chunks (bare LFs made CRLF) into a spooled
        file, parses its metadata unless it has some, stores the body and
        adds the message with the mailbox's next UID and modseq (its row
        locked only for that last statement); then the mailbox is
        refreshed, in its turn, so the message is listed (and the
        listeners told) when the Deferred fires.  A large message does not
        hold up the mailbox's other changes while its body is written, and
        a failure leaves nothing behind.
        """
        try:
            normalized = sorted(normalize_flags(flags))
        except ValueError:
            return defer.fail()
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        date = time.time() if internal_date is None else float(internal_date)
        bodies = self.store.provider.bodies
        box_id, owner, node = self.box_id, self.store.user, self._node

        def add(conn: Any) -> int:
            body = _store_body(conn, bodies, message)
            uids = _add_copies(conn, node, [(owner, box_id)], body, normalized, date)
            if box_id not in uids:
                raise NoSuchMailbox(self.name)  # deleted by another node: rolled back, body and all
            return uids[box_id]

        def added(uid: int) -> defer.Deferred[int]:
            return self.refresh().addCallback(lambda _: uid)

        def gone(failure: Any) -> Any:
            failure.trap(NoSuchMailbox)
            # Learn it now (its listeners told), as a change of this node would.
            return self.refresh().addBoth(lambda _: failure)

        return self._database.run(add).addCallbacks(added, gone)

    def set_flags(
        self, uids: Iterable[int], flags: Iterable[str], mode: FlagMode, unchanged_since: int | None = None
    ) -> defer.Deferred[list[MessageInfo]]:
        """See :meth:`txmail.interfaces.IMailbox.set_flags`: computed and set in one transaction."""
        try:
            wanted = normalize_flags(flags)
            mode = FlagMode(mode)
        except ValueError:
            return defer.fail()
        selected = select_uids(uids, self._infos)

        def store(conn: Any) -> list[int]:
            changed = _flag_rows(conn, self.box_id, selected, wanted, mode, unchanged_since)
            if changed:
                _notify(conn, self._node, self.store.user, self.box_id, "flags")
            return changed

        def infos(changed: list[int]) -> list[MessageInfo]:
            return [self._infos[uid] for uid in changed if uid in self._infos]

        if not selected:
            return self._alive_or_fail() or defer.succeed([])
        return self._change(store).addCallback(infos)

    def _same_database(self, target: IMailbox) -> TypeGuard[PostgresMailbox]:
        return isinstance(target, PostgresMailbox) and target._database is self._database

    def copy(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """
        See :meth:`txmail.interfaces.IMailbox.copy`: within the database the
        copies share the bodies and keep the EMAILIDs (RFC 8474 section
        5.1); into another backend, through :func:`generic_copy`.
        """
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        selected = select_uids(uids, self._infos)
        if not self._same_database(target):
            return generic_copy(self, selected, target)
        if target._deleted:
            return defer.fail(NoSuchMailbox(target.name))
        bodies = self.store.provider.bodies

        def store(conn: Any) -> list[tuple[int, int]]:
            pairs = _move_rows(conn, bodies, self.box_id, selected, target.box_id)
            if pairs:
                _notify(conn, self._node, target.store.user, target.box_id, "added")
            return pairs

        return self._database.run(store).addCallback(
            lambda pairs: target.refresh().addCallback(lambda _: pairs)
        )

    def move(self, uids: Iterable[int], target: IMailbox) -> defer.Deferred[list[tuple[int, int]]]:
        """See :meth:`txmail.interfaces.IMailbox.move`: copy and expunge in one transaction."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        selected = select_uids(uids, self._infos)
        history = self.store.provider.expunge_history
        if not self._same_database(target):

            def copied(pairs: list[tuple[int, int]]) -> defer.Deferred[list[tuple[int, int]]]:
                def drop(conn: Any) -> list[tuple[int, int]]:
                    _expunge_rows(
                        conn, self.store.provider.bodies, self.box_id, [s for s, _ in pairs], history
                    )
                    _notify(conn, self._node, self.store.user, self.box_id, "expunged")
                    return pairs

                return self._change(drop)

            return generic_copy(self, selected, target).addCallback(copied)
        if target._deleted:
            return defer.fail(NoSuchMailbox(target.name))
        bodies = self.store.provider.bodies

        def store(conn: Any) -> list[tuple[int, int]]:
            # Lock both rows in id order: two moves in opposite directions take turns.
            conn.execute(
                "SELECT 1 FROM mailboxes WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
                ([self.box_id, target.box_id],),
            )
            pairs = _move_rows(conn, bodies, self.box_id, selected, target.box_id)
            if pairs:
                _expunge_rows(conn, bodies, self.box_id, [s for s, _ in pairs], history)
                _notify(conn, self._node, target.store.user, target.box_id, "added")
                _notify(conn, self._node, self.store.user, self.box_id, "expunged")
            return pairs

        return self._change(store).addCallback(lambda pairs: target.refresh().addCallback(lambda _: pairs))

    def expunge(self, uids: Iterable[int] | None = None) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IMailbox.expunge`: the \\Deleted ones of the messages this process knows."""
        failed = self._alive_or_fail()
        if failed is not None:
            return failed
        known = select_uids(uids, self._infos)

        def store(conn: Any) -> list[int]:
            conn.execute("SELECT 1 FROM mailboxes WHERE id = %s FOR UPDATE", (self.box_id,))
            rows = conn.execute(
                "SELECT uid FROM messages WHERE mailbox = %s AND uid = ANY(%s) AND %s = ANY(flags)",
                (self.box_id, known, "\\Deleted"),
            ).fetchall()
            removed = _expunge_rows(
                conn,
                self.store.provider.bodies,
                self.box_id,
                sorted(int(r[0]) for r in rows),
                self.store.provider.expunge_history,
            )
            if removed:
                _notify(conn, self._node, self.store.user, self.box_id, "expunged")
            return removed

        if not known:
            return defer.succeed([])
        return self._change(store)

    def claim_recent(self) -> defer.Deferred[list[int]]:
        """See :meth:`txmail.interfaces.IMailbox.claim_recent`: the watermark is the mailbox row's ``recent_uid``."""

        def claim(conn: Any) -> list[int]:
            (recent,) = conn.execute(
                "SELECT recent_uid FROM mailboxes WHERE id = %s FOR UPDATE", (self.box_id,)
            ).fetchone() or (None,)
            if recent is None:
                raise NoSuchMailbox(self.name)
            rows = conn.execute(
                "SELECT uid FROM messages WHERE mailbox = %s AND uid > %s ORDER BY uid", (self.box_id, recent)
            ).fetchall()
            claimed = [int(r[0]) for r in rows]
            if claimed:
                conn.execute("UPDATE mailboxes SET recent_uid = %s WHERE id = %s", (claimed[-1], self.box_id))
            return claimed

        return self._change(claim)

    def refresh(self) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailbox.refresh`: read what changed since the highest modseq seen."""
        return self._change(lambda conn: None)


#: What a store's listeners were last told of a mailbox: ``(UIDNEXT, HIGHESTMODSEQ)``.
Mark = tuple[int, int]
#: The mark of a mailbox created since the last reading: nothing in it told
#: yet (the schema's first UIDNEXT and HIGHESTMODSEQ).
NEW_MARK: Mark = (1, 1)


class _Unopened:
    """
    A mailbox this process does not have open, as a store listener's
    :class:`~txmail.model.MessagesChanged` names it: :meth:`status` gives
    its counters (the open object's when it has been opened since, else
    summed by the database in one query) without loading its messages.
    """

    def __init__(self, store: PostgresStore, box_id: int, name: str) -> None:
        self.store = store
        self.box_id = box_id
        self.name = name

    def status(self) -> defer.Deferred[MailboxStatus]:
        """See :meth:`txmail.interfaces.IMailbox.status`."""
        box = self.store._boxes.get(self.box_id)
        if box is not None and not box._deleted:
            return box.status()
        return self.store._run(_read_status, self.box_id, self.name)


class _StoreWatch:
    """
    What a :class:`PostgresStore` keeps while it has store listeners
    (:class:`~txmail.interfaces.IStoreChanges`), to tell them every change
    of the user's mailboxes, made by this process or another node.

    * The folder tree (row id: name) and the subscriptions as last read:
      a folder or subscription change, here or elsewhere (a ``mailboxes``
      or ``subscriptions`` notification), reads them again and tells the
      difference (:func:`_folder_changes`).
    * A *mark* per mailbox, ``(UIDNEXT, HIGHESTMODSEQ)`` of what the
      listeners were told.  A mailbox this process has open tells its
      changes as its own listeners hear them, when its mark is where its
      message list was; any other change is read from the database
      relative to the mark (:func:`_read_changes`): messages at or above
      the mark's UIDNEXT were added, the others with a higher modseq had
      their flags changed, and the ``expunged`` rows after its modseq
      (below its UIDNEXT) were expunged.  Nothing else is kept: no
      message list for the mailboxes nobody has open.

    Every reading and telling runs in turn (one ``DeferredLock``), so the
    readings are applied in the order they were made; requests that wait
    for their turn are merged (a burst of notifications costs one read).
    A reading is one snapshot (:func:`_snapshot`) and locks no row.
    The first reading (started with the watch) only takes the marks;
    changes committed before it are not told.  The Deferreds given out
    never fail: a failed reading is logged.
    """

    log = Logger()

    def __init__(self, store: PostgresStore) -> None:
        self.store = store
        self._lock = defer.DeferredLock()
        #: The folder tree last read; ``None`` before the first reading.
        self._names: dict[int, str] | None = None
        self._subscribed: frozenset[str] = frozenset()
        # The mailboxes open now: from where their lists are (what they tell next is new).
        self._marks: dict[int, Mark] = {
            box_id: (box._uidnext, box._modseq)
            for box_id, box in list(store._boxes.items())
            if not box._deleted
        }
        self._all_waiting: list[defer.Deferred[None]] | None = None
        self._box_waiting: dict[int, list[defer.Deferred[None]]] = {}
        self._first = self.sync_all()

    def ready(self) -> defer.Deferred[None]:
        """Fires once the first reading is done (or failed)."""
        d: defer.Deferred[None] = defer.Deferred()

        def done(result: Any) -> Any:
            d.callback(None)
            return result

        self._first.addBoth(done)
        return d

    # -- requests -------------------------------------------------------------

    def sync_all(self) -> defer.Deferred[None]:
        """Read the folder tree and subscriptions, and every mailbox not open here that changed; tell it."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._all_waiting is not None:
            self._all_waiting.append(d)
            return d
        waiting = self._all_waiting = [d]

        def start() -> defer.Deferred[None]:
            self._all_waiting = None  # a request from now on needs a reading of its own
            return self._read_all()

        self._lock.run(start).addErrback(self._failed).addCallback(self._fire, waiting)
        return d

    def sync_box(self, box_id: int) -> defer.Deferred[None]:
        """Read what changed in the mailbox *box_id* (not open here) and tell it."""
        d: defer.Deferred[None] = defer.Deferred()
        if self._all_waiting is not None:  # that reading will see it
            self._all_waiting.append(d)
            return d
        waiting = self._box_waiting.get(box_id)
        if waiting is not None:
            waiting.append(d)
            return d
        waiting = self._box_waiting[box_id] = [d]

        def start() -> defer.Deferred[None] | None:
            self._box_waiting.pop(box_id, None)
            box = self.store._boxes.get(box_id)
            if box is not None and not box._deleted:
                return None  # opened meanwhile: it tells its own changes
            return self._read_box(box_id)

        self._lock.run(start).addErrback(self._failed).addCallback(self._fire, waiting)
        return d

    def mailbox_told(
        self, box: PostgresMailbox, before: Mark, after: Mark, events: list[MailboxChange]
    ) -> defer.Deferred[None]:
        """The open *box* went from *before* to *after* telling its listeners *events*: tell the store's."""
        told: defer.Deferred[Any] = self._lock.run(self._box_told, box, before, after, events)
        return told.addErrback(self._failed)

    # -- in turn ----------------------------------------------------------------

    def _box_told(
        self, box: PostgresMailbox, before: Mark, after: Mark, events: list[MailboxChange]
    ) -> defer.Deferred[None] | None:
        if self._names is None:
            return None  # the first reading failed: nothing to tell changes from
        mark = self._marks.get(box.box_id, NEW_MARK)
        if mark == before:
            self._marks[box.box_id] = after
            self._tell_messages(box.name, events, box)
            return None
        if after[1] <= mark[1]:
            return None  # told already (read while the mailbox was not open)
        return self._read_box(box.box_id)

    def _read_all(self) -> defer.Deferred[None]:
        store = self.store
        first = self._names is None
        marks = dict(self._marks)
        in_use = frozenset(box_id for box_id, box in list(store._boxes.items()) if not box._deleted)

        def read(conn: Any) -> tuple[dict[int, tuple[str, int, int]], frozenset[str], dict[int, Any]]:
            _snapshot(conn)
            tree, subscribed = _read_tree(conn, store.user)
            deltas = {}
            if not first:
                for box_id, (_, uidnext, modseq) in tree.items():
                    mark = marks.get(box_id, NEW_MARK)
                    if box_id not in in_use and (uidnext, modseq) != mark:
                        deltas[box_id] = (mark, _read_changes(conn, box_id, mark[1], lock=False))
            return tree, subscribed, deltas

        return store._run(read).addCallback(self._read_all_done)

    def _read_all_done(
        self, result: tuple[dict[int, tuple[str, int, int]], frozenset[str], dict[int, Any]]
    ) -> None:
        tree, subscribed, deltas = result
        names = {box_id: name for box_id, (name, _, _) in tree.items()}
        old, self._names = self._names, names
        old_subscribed, self._subscribed = self._subscribed, subscribed
        if old is None:
            for box_id, (_, uidnext, modseq) in tree.items():
                self._marks.setdefault(box_id, (uidnext, modseq))
            return
        for box_id in old.keys() - names.keys():
            self._marks.pop(box_id, None)
        self._tell(*_folder_changes(old, names, old_subscribed, subscribed))
        for box_id in sorted(deltas):
            mark, changes = deltas[box_id]
            self._told_delta(box_id, mark, changes)

    def _read_box(self, box_id: int) -> defer.Deferred[None] | None:
        if self._names is None:
            return None
        mark = self._marks.get(box_id, NEW_MARK)
        return self.store._run(_read_unlocked, box_id, mark[1]).addCallback(
            lambda changes: self._told_delta(box_id, mark, changes)
        )

    def _told_delta(self, box_id: int, mark: Mark, changes: _Changes | None) -> None:
        """Tell what *changes* (read after *mark*'s modseq) holds that the listeners were not told."""
        if changes is None:
            self._marks.pop(box_id, None)  # deleted: the folder reading tells it
            return
        self._marks[box_id] = (changes.uidnext, changes.highest_modseq)
        uidnext = mark[0]
        added = tuple(info for info in changes.messages if info.uid >= uidnext)
        changed = tuple(info for info in changes.messages if info.uid < uidnext)
        if changes.present is None:
            removed = tuple(uid for uid in changes.expunged if uid < uidnext)
        else:  # the history is pruned past the mark: every UID gone below it (a superset)
            present = set(changes.present)
            removed = tuple(uid for uid in range(1, uidnext) if uid not in present)
        events: list[MailboxChange] = []
        if added:
            events.append(MessagesAdded(added))
        if changed:
            events.append(FlagsChanged(changed))
        if removed:
            events.append(MessagesExpunged(removed, changes.highest_modseq))
        if events:
            box = self.store._boxes.get(box_id)
            mailbox: Any = box if box is not None and not box._deleted else None
            if mailbox is None:
                mailbox = _Unopened(self.store, box_id, changes.name)
            self._tell_messages(changes.name, events, mailbox)

    def _tell_messages(self, name: str, events: list[MailboxChange], mailbox: Any) -> None:
        self._tell(*(MessagesChanged(name, event, mailbox) for event in events))

    def _tell(self, *changes: FolderChange) -> None:
        if changes and self.store._watch is self:  # not a watch the store has given up
            self.store._tell_store(*changes)

    @staticmethod
    def _fire(_: Any, waiting: list[defer.Deferred[None]]) -> None:
        for d in waiting:
            d.callback(None)

    def _failed(self, failure: Any) -> None:
        self.log.failure(
            "reading the changes for the store listeners of {user} failed", failure, user=self.store.user
        )


#: The class of the advisory locks taken by changes of a user's Sieve scripts ("SV").
SIEVE_LOCK = 0x5356


def _lock_scripts(conn: Any, user: str) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (SIEVE_LOCK, user))


def _script_exists(conn: Any, user: str, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sieve_scripts WHERE owner = %s AND name = %s", (user, name)).fetchone()
    return row is not None


@implementer(IMailStore, IStorageUsage, IStoreChanges, IMetadataStore, IURLAuthKeys, ISieveScripts)
class PostgresStore(StoreListeners):
    """
    One user's mailboxes in the database.  Created by :class:`PostgresProvider`.

    Its store listeners (:class:`~txmail.interfaces.IStoreChanges`) hear
    the changes of every mailbox of the user, made by this process or
    another node (:class:`_StoreWatch`, kept only while there is one).
    """

    log = Logger()

    def __init__(self, provider: PostgresProvider, user: str) -> None:
        self.provider = provider
        self.user = user
        #: The mailbox objects in use, by row id.
        self._boxes: weakref.WeakValueDictionary[int, PostgresMailbox] = weakref.WeakValueDictionary()
        self._annotation_listeners = AnnotationListeners()
        self._init_store_listeners()
        self._watch: _StoreWatch | None = None

    @property
    def _database(self) -> Database:
        return self.provider.database

    def _run(self, fn: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        return self._database.run(fn, *args)

    def _forget(self, box: PostgresMailbox) -> None:
        if self._boxes.get(box.box_id) is box:
            del self._boxes[box.box_id]

    def _gone(self, box_ids: Iterable[int]) -> None:
        """The mailboxes *box_ids* were deleted or renamed here: their objects are done."""
        for box_id in box_ids:
            box = self._boxes.pop(box_id, None)
            if box is not None:
                box._mark_deleted()

    def refresh_open(self) -> defer.Deferred[None]:
        """Refresh every mailbox in use (after a folder change elsewhere, or missed notifications)."""
        ds = []
        for box in list(self._boxes.values()):
            ds.append(box.refresh().addErrback(lambda f: f.trap(NoSuchMailbox)))
        return defer.gatherResults(ds, consumeErrors=True).addCallback(lambda _: None)

    # -- IStoreChanges ------------------------------------------------------------

    def add_store_listener(self, listener: Callable[[FolderChange], object]) -> Callable[[], None]:
        """
        See :meth:`txmail.interfaces.IStoreChanges.add_store_listener`:
        the first listener starts a :class:`_StoreWatch` (one reading of
        the folder tree), the last one removed ends it.  Changes committed
        before that first reading is done (:meth:`listeners_ready`) may
        not be told.
        """
        remove = super().add_store_listener(listener)
        if self._watch is None:
            self._watch = _StoreWatch(self)

        def removed() -> None:
            remove()
            if not self._store_listeners:
                self._watch = None

        return removed

    def listeners_ready(self) -> defer.Deferred[None]:
        """Fires once the store listeners' first reading is done (at once without listeners)."""
        if self._watch is None:
            return defer.succeed(None)
        return self._watch.ready()

    def _folders_told(self, run: Callable[[], defer.Deferred[Any]]) -> defer.Deferred[Any]:
        """
        Start a folder or subscription change (*run*); with store
        listeners, after their first reading, and telling them what
        changed (read back) before the result fires.
        """

        def told(result: Any) -> Any:
            watch = self._watch
            if watch is None:
                return result
            return watch.sync_all().addCallback(lambda _: result)

        watch = self._watch
        started = watch.ready() if watch is not None else defer.succeed(None)
        return started.addCallback(lambda _: run()).addCallback(told)

    def _folder_change(
        self, fn: Callable[..., Any], *args: Any, then: Callable[[Any], Any] | None = None
    ) -> defer.Deferred[Any]:
        """
        Run a folder change under the user's row lock; NOTIFY the other
        nodes; ``then(result)`` before the store listeners are told.
        """

        def work(conn: Any) -> Any:
            last = _lock_user(conn, self.user)
            result = fn(conn, last, *args)
            _notify(conn, self.provider.node, self.user, None, "mailboxes")
            return result

        def run() -> defer.Deferred[Any]:
            d = self._run(work)
            return d if then is None else d.addCallback(then)

        return self._folders_told(run)

    # -- IStorageUsage --------------------------------------------------------

    def usage(self) -> defer.Deferred[Usage]:
        """See :meth:`txmail.interfaces.IStorageUsage.usage`: summed by the database."""

        def query(conn: Any) -> Usage:
            size, count = conn.execute(
                "SELECT coalesce(sum(m.size), 0), count(*) FROM messages m"
                " JOIN mailboxes b ON b.id = m.mailbox WHERE b.owner = %s",
                (self.user,),
            ).fetchone()
            return Usage(int(size), int(count))

        return self._run(query)

    # -- IMailStore -----------------------------------------------------------

    def list_mailboxes(self, pattern: str = "*") -> defer.Deferred[list[FolderInfo]]:
        """See :meth:`txmail.interfaces.IMailStore.list_mailboxes`."""

        def query(conn: Any) -> list[FolderInfo]:
            rows = _mailbox_rows(conn, self.user)
            subscribed = {
                r[0] for r in conn.execute("SELECT name FROM subscriptions WHERE owner = %s", (self.user,))
            }
            roles = {name: SpecialUse(role) for name, role in rows if role is not None}
            return folder_infos([name for name, _ in rows], pattern, subscribed, roles)

        return self._run(query)

    def get_mailbox(self, name: str) -> defer.Deferred[IMailbox]:
        """
        See :meth:`txmail.interfaces.IMailStore.get_mailbox`: the object in
        use for the mailbox, refreshed, or a new one loaded from the database.
        """
        try:
            name = check_name(name)
        except InvalidMailboxName:
            return defer.fail()

        # The ids of the objects in use, taken here: the thread does not touch the weak dictionary.
        in_use = frozenset(box_id for box_id, box in list(self._boxes.items()) if not box._deleted)

        def query(conn: Any) -> tuple[Any, _Changes | None] | None:
            row = conn.execute(
                "SELECT id, uidvalidity, mailbox_id FROM mailboxes WHERE owner = %s AND name = %s",
                (self.user, name),
            ).fetchone()
            if row is None:
                return None
            if row[0] in in_use:
                return row, None
            return row, _read_changes(conn, row[0], 0)

        def found(result: tuple[Any, _Changes | None] | None) -> Any:
            if result is None:
                raise NoSuchMailbox(name)
            (box_id, uidvalidity, mailbox_id), changes = result
            box = self._boxes.get(box_id)
            if box is not None and not box._deleted:
                return box.refresh().addCallback(lambda _: box)
            box = PostgresMailbox(self, box_id, name, int(uidvalidity), mailbox_id)
            if changes is None:
                return box.refresh().addCallback(lambda _: self._keep(box))
            box._apply(changes)
            return self._keep(box)

        return self._run(query).addCallback(found)

    def _keep(self, box: PostgresMailbox) -> PostgresMailbox:
        """Hand out *box*, or the object another call loaded for the same mailbox meanwhile."""
        if box._deleted:
            raise NoSuchMailbox(box.name)
        kept = self._boxes.get(box.box_id)
        if kept is not None and not kept._deleted:
            return kept
        self._boxes[box.box_id] = box
        return box

    def create_mailbox(self, name: str, special_use: SpecialUse | None = None) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailStore.create_mailbox`."""
        try:
            name = check_name(name)
            role = None if special_use is None else SpecialUse(special_use)
        except (InvalidMailboxName, ValueError):
            return defer.fail()

        def create(conn: Any, last: int) -> None:
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE owner = %s AND name = %s", (self.user, name)
            ).fetchone():
                raise MailboxExists(name)
            last = _create_parents(conn, self.user, name, last)
            _insert_mailbox(conn, self.user, name, last)
            if role is not None:
                conn.execute(
                    "UPDATE mailboxes SET special_use = NULL WHERE owner = %s AND special_use = %s",
                    (self.user, role.value),
                )
                conn.execute(
                    "UPDATE mailboxes SET special_use = %s WHERE owner = %s AND name = %s",
                    (role.value, self.user, name),
                )

        return self._folder_change(create)

    def delete_mailbox(self, name: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailStore.delete_mailbox`: with its messages and unshared bodies."""
        try:
            name = check_name(name)
        except InvalidMailboxName:
            return defer.fail()
        if name == INBOX:
            return defer.fail(InvalidMailboxName("INBOX cannot be deleted"))

        def delete(conn: Any, last: int) -> int:
            row = conn.execute(
                "SELECT id FROM mailboxes WHERE owner = %s AND name = %s", (self.user, name)
            ).fetchone()
            if row is None:
                if _has_children(conn, self.user, name):
                    raise MailboxNotEmpty(name)
                raise NoSuchMailbox(name)
            body_ids = [
                r[0] for r in conn.execute("SELECT DISTINCT body_id FROM messages WHERE mailbox = %s", row)
            ]
            conn.execute("DELETE FROM mailboxes WHERE id = %s", row)
            self.provider.bodies.delete_unused(conn, body_ids)
            return int(row[0])

        return self._folder_change(delete, then=lambda box_id: self._gone([box_id]))

    def rename_mailbox(self, old: str, new: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailStore.rename_mailbox` (RFC 3501 section 6.3.5)."""
        try:
            old = check_name(old)
            new = check_name(new)
        except InvalidMailboxName:
            return defer.fail()
        if new == old:
            return defer.fail(MailboxExists(new))
        if new.startswith(old + DELIMITER):
            return defer.fail(InvalidMailboxName("cannot rename a mailbox below itself"))
        if old == INBOX:
            return self._folder_change(self._rename_inbox, new).addCallback(lambda _: self.refresh_open())

        def rename(conn: Any, last: int) -> list[int]:
            prefix = old + DELIMITER
            rows = conn.execute(
                "SELECT id, name FROM mailboxes WHERE owner = %s AND (name = %s OR left(name, %s) = %s)",
                (self.user, old, len(prefix), prefix),
            ).fetchall()
            if not rows:
                raise NoSuchMailbox(old)
            targets = [new + n[len(old) :] for _, n in rows]
            if conn.execute(
                "SELECT 1 FROM mailboxes WHERE owner = %s AND name = ANY(%s)", (self.user, [new, *targets])
            ).fetchone():
                raise MailboxExists(new)
            # Out of the way first (under a name check_name refuses), so no two rows ever hold one name.
            with conn.cursor() as cur:
                cur.executemany(
                    "UPDATE mailboxes SET name = %s WHERE id = %s",
                    [(f"~renaming~{box_id}", box_id) for box_id, _ in rows],
                )
                cur.executemany(
                    "UPDATE mailboxes SET name = %s WHERE id = %s",
                    [(target, box_id) for (box_id, _), target in zip(rows, targets, strict=True)],
                )
            _create_parents(conn, self.user, new, last)
            return [int(box_id) for box_id, _ in rows]

        return self._folder_change(rename, then=self._gone)

    def _rename_inbox(self, conn: Any, last: int, new: str) -> None:
        """RFC 3501 section 6.3.5: INBOX's messages move to a new mailbox *new*; INBOX stays, empty, with its children."""
        if conn.execute(
            "SELECT 1 FROM mailboxes WHERE owner = %s AND name = %s", (self.user, new)
        ).fetchone():
            raise MailboxExists(new)
        last = _create_parents(conn, self.user, new, last)
        _insert_mailbox(conn, self.user, new, last)
        (inbox,) = conn.execute(
            "SELECT id FROM mailboxes WHERE owner = %s AND name = %s", (self.user, INBOX)
        ).fetchone()
        (target,) = conn.execute(
            "SELECT id FROM mailboxes WHERE owner = %s AND name = %s", (self.user, new)
        ).fetchone()
        uids = [
            int(r[0])
            for r in conn.execute("SELECT uid FROM messages WHERE mailbox = %s ORDER BY uid", (inbox,))
        ]
        pairs = _move_rows(conn, self.provider.bodies, inbox, uids, target)
        _expunge_rows(conn, self.provider.bodies, inbox, [s for s, _ in pairs], self.provider.expunge_history)
        # RFC 5464 section 4.1: the new mailbox gets a copy of INBOX's annotations.
        conn.execute(
            "INSERT INTO annotations (owner, mailbox, name, value)"
            " SELECT owner, %s, name, value FROM annotations WHERE mailbox = %s",
            (target, inbox),
        )
        _notify(conn, self.provider.node, self.user, inbox, "expunged")

    # -- IMetadataStore (RFC 5464) -------------------------------------------------

    def _annotated(self, conn: Any, mailbox: str) -> int | None:
        """The row id of *mailbox* (``None``: the server's entries, ``""``)."""
        if mailbox == "":
            return None
        name = check_name(mailbox)
        row = conn.execute(
            "SELECT id FROM mailboxes WHERE owner = %s AND name = %s", (self.user, name)
        ).fetchone()
        if row is None:
            raise NoSuchMailbox(name)
        return int(row[0])

    def _entries(self, conn: Any, box_id: int | None) -> dict[str, bytes]:
        rows = conn.execute(
            "SELECT name, value FROM annotations WHERE owner = %s AND coalesce(mailbox, 0) = %s",
            (self.user, box_id or 0),
        ).fetchall()
        return {name: bytes(value) for name, value in rows}

    def get_annotations(self, mailbox: str) -> defer.Deferred[dict[str, bytes]]:
        """See :meth:`txmail.interfaces.IMetadataStore.get_annotations`."""
        return self._run(lambda conn: self._entries(conn, self._annotated(conn, mailbox)))

    def set_annotations(self, mailbox: str, changes: Mapping[str, bytes | None]) -> defer.Deferred[None]:
        """
        See :meth:`txmail.interfaces.IMetadataStore.set_annotations`: one
        transaction, the mailbox's row locked so that two nodes' changes
        take turns.
        """

        def change(conn: Any) -> tuple[str, ...]:
            box_id = self._annotated(conn, mailbox)
            if box_id is None:
                conn.execute("SELECT 1 FROM mail_users WHERE address = %s FOR UPDATE", (self.user,))
            else:
                conn.execute("SELECT 1 FROM mailboxes WHERE id = %s FOR UPDATE", (box_id,))
            _, changed = apply_changes(self._entries(conn, box_id), changes)
            for name in changed:
                conn.execute(
                    "DELETE FROM annotations WHERE owner = %s AND coalesce(mailbox, 0) = %s AND name = %s",
                    (self.user, box_id or 0, name),
                )
                value = changes[name]
                if value is not None:
                    conn.execute(
                        "INSERT INTO annotations (owner, mailbox, name, value) VALUES (%s, %s, %s, %s)",
                        (self.user, box_id, name, bytes(value)),
                    )
            return changed

        def told(changed: tuple[str, ...]) -> None:
            if changed:
                name = "" if mailbox == "" else check_name(mailbox)
                self._annotation_listeners.notify(AnnotationsChanged(name, changed))

        return self._run(change).addCallback(told)

    def annotation_count(self) -> defer.Deferred[int]:
        """See :meth:`txmail.interfaces.IMetadataStore.annotation_count`."""

        def query(conn: Any) -> int:
            (n,) = conn.execute("SELECT count(*) FROM annotations WHERE owner = %s", (self.user,)).fetchone()
            return int(n)

        return self._run(query)

    def add_annotation_listener(self, listener: Callable[[Any], object]) -> Callable[[], None]:
        """See :meth:`txmail.interfaces.IMetadataStore.add_annotation_listener` (changes made by this process)."""
        return self._annotation_listeners.add(listener)

    # -- ISieveScripts (RFC 5228, RFC 5804) -------------------------------------------

    def list_scripts(self) -> defer.Deferred[list[tuple[str, bool]]]:
        """See :meth:`txmail.interfaces.ISieveScripts.list_scripts`."""

        def read(conn: Any) -> list[tuple[str, bool]]:
            rows = conn.execute("SELECT name, active FROM sieve_scripts WHERE owner = %s", (self.user,))
            return sorted((str(n), bool(a)) for n, a in rows.fetchall())  # code point order, not collation

        return self._run(read)

    def get_script(self, name: str) -> defer.Deferred[bytes]:
        """See :meth:`txmail.interfaces.ISieveScripts.get_script`."""

        def read(conn: Any) -> bytes:
            checked = check_script_name(name)
            row = conn.execute(
                "SELECT content FROM sieve_scripts WHERE owner = %s AND name = %s", (self.user, checked)
            ).fetchone()
            if row is None:
                raise NoSuchScript(checked)
            return bytes(row[0])

        return self._run(read)

    def put_script(self, name: str, content: bytes) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.put_script`."""

        def put(conn: Any) -> None:
            checked = check_script_name(name)
            _lock_scripts(conn, self.user)
            conn.execute(
                "INSERT INTO sieve_scripts (owner, name, content) VALUES (%s, %s, %s)"
                " ON CONFLICT (owner, name) DO UPDATE SET content = excluded.content, updated = now()",
                (self.user, checked, bytes(content)),
            )

        return self._run(put)

    def delete_script(self, name: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.delete_script`."""

        def delete(conn: Any) -> None:
            checked = check_script_name(name)
            _lock_scripts(conn, self.user)
            row = conn.execute(
                "SELECT active FROM sieve_scripts WHERE owner = %s AND name = %s", (self.user, checked)
            ).fetchone()
            if row is None:
                raise NoSuchScript(checked)
            if row[0]:
                raise ScriptActive(checked)
            conn.execute("DELETE FROM sieve_scripts WHERE owner = %s AND name = %s", (self.user, checked))

        return self._run(delete)

    def rename_script(self, old: str, new: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.rename_script`."""

        def rename(conn: Any) -> None:
            old_name, new_name = check_script_name(old), check_script_name(new)
            _lock_scripts(conn, self.user)
            if not _script_exists(conn, self.user, old_name):
                raise NoSuchScript(old_name)
            if _script_exists(conn, self.user, new_name):
                raise ScriptExists(new_name)
            conn.execute(
                "UPDATE sieve_scripts SET name = %s, updated = now() WHERE owner = %s AND name = %s",
                (new_name, self.user, old_name),
            )

        return self._run(rename)

    def set_active(self, name: str | None) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.ISieveScripts.set_active`."""

        def activate(conn: Any) -> None:
            checked = None if name is None else check_script_name(name)
            _lock_scripts(conn, self.user)
            if checked is not None and not _script_exists(conn, self.user, checked):
                raise NoSuchScript(checked)
            # Two statements: the partial unique index is checked row by row.
            conn.execute(
                "UPDATE sieve_scripts SET active = false WHERE owner = %s AND active AND name IS DISTINCT FROM %s",
                (self.user, checked),
            )
            if checked is not None:
                conn.execute(
                    "UPDATE sieve_scripts SET active = true WHERE owner = %s AND name = %s AND NOT active",
                    (self.user, checked),
                )

        return self._run(activate)

    def active_script(self) -> defer.Deferred[tuple[str, bytes] | None]:
        """See :meth:`txmail.interfaces.ISieveScripts.active_script`."""

        def read(conn: Any) -> tuple[str, bytes] | None:
            row = conn.execute(
                "SELECT name, content FROM sieve_scripts WHERE owner = %s AND active", (self.user,)
            ).fetchone()
            return None if row is None else (str(row[0]), bytes(row[1]))

        return self._run(read)

    # -- IURLAuthKeys (RFC 4467) -------------------------------------------------------

    def urlauth_key(
        self, mailbox: str, uidvalidity: int, create: bool = False
    ) -> defer.Deferred[bytes | None]:
        """
        See :meth:`txmail.interfaces.IURLAuthKeys.urlauth_key`: one key per
        mailbox row (gone with the mailbox), for the UIDVALIDITY it was made for.
        """

        def get(conn: Any) -> bytes | None:
            try:
                name = check_name(mailbox)
            except InvalidMailboxName:
                return None
            row = conn.execute(
                "SELECT b.id, k.uidvalidity, k.key FROM mailboxes b LEFT JOIN urlauth_keys k ON k.mailbox = b.id"
                " WHERE b.owner = %s AND b.name = %s FOR UPDATE OF b",
                (self.user, name),
            ).fetchone()
            if row is None:
                return None
            box_id, kept_validity, key = row
            if key is not None and int(kept_validity) == uidvalidity:
                return bytes(key)
            if not create:
                return None
            key = os.urandom(URLAUTH_KEY_SIZE)
            conn.execute(
                "INSERT INTO urlauth_keys (mailbox, uidvalidity, key) VALUES (%s, %s, %s)"
                " ON CONFLICT (mailbox) DO UPDATE SET uidvalidity = excluded.uidvalidity, key = excluded.key",
                (box_id, uidvalidity, key),
            )
            return key

        return self._run(get)

    def reset_urlauth_keys(self, mailbox: str | None = None) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IURLAuthKeys.reset_urlauth_keys`."""

        def reset(conn: Any) -> None:
            if mailbox is None:
                conn.execute(
                    "DELETE FROM urlauth_keys WHERE mailbox IN (SELECT id FROM mailboxes WHERE owner = %s)",
                    (self.user,),
                )
                return
            try:
                name = check_name(mailbox)
            except InvalidMailboxName:
                return
            conn.execute(
                "DELETE FROM urlauth_keys WHERE mailbox IN"
                " (SELECT id FROM mailboxes WHERE owner = %s AND name = %s)",
                (self.user, name),
            )

        return self._run(reset)

    def subscribe(self, name: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailStore.subscribe`."""
        try:
            name = check_name(name)
        except InvalidMailboxName:
            return defer.fail()

        def add(conn: Any) -> None:
            conn.execute("INSERT INTO mail_users (address) VALUES (%s) ON CONFLICT DO NOTHING", (self.user,))
            cur = conn.execute(
                "INSERT INTO subscriptions (owner, name) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (self.user, name),
            )
            if cur.rowcount:
                _notify(conn, self.provider.node, self.user, None, "subscriptions")

        return self._folders_told(lambda: self._run(add))

    def unsubscribe(self, name: str) -> defer.Deferred[None]:
        """See :meth:`txmail.interfaces.IMailStore.unsubscribe`."""
        try:
            name = check_name(name)
        except InvalidMailboxName:
            return defer.fail()

        def remove(conn: Any) -> None:
            cur = conn.execute("DELETE FROM subscriptions WHERE owner = %s AND name = %s", (self.user, name))
            if not cur.rowcount:
                raise NoSuchMailbox(name)
            _notify(conn, self.provider.node, self.user, None, "subscriptions")

        return self._folders_told(lambda: self._run(remove))

    def subscriptions(self) -> defer.Deferred[list[str]]:
        """See :meth:`txmail.interfaces.IMailStore.subscriptions`."""

        def query(conn: Any) -> list[str]:
            rows = conn.execute("SELECT name FROM subscriptions WHERE owner = %s", (self.user,)).fetchall()
            return sorted(r[0] for r in rows)

        return self._run(query)

    def special_use_mailbox(self, role: SpecialUse | str) -> defer.Deferred[str | None]:
        """See :meth:`txmail.interfaces.IMailStore.special_use_mailbox`."""
        try:
            role = SpecialUse(role)
        except ValueError:
            return defer.fail()

        def query(conn: Any) -> str | None:
            row = conn.execute(
                "SELECT name FROM mailboxes WHERE owner = %s AND special_use = %s ORDER BY name LIMIT 1",
                (self.user, role.value),
            ).fetchone()
            return None if row is None else row[0]

        return self._run(query)


@implementer(IMailStoreProvider, IObjectIdProvider, IMaildropLocks, IInboxDelivery)
class PostgresProvider:
    """
    Gives each user a :class:`PostgresStore` on *database* (a
    :class:`txmail.pg.db.Database`); the same user gets the same store
    while it is in use.  :meth:`start` and :meth:`stop` (the
    :class:`txmail.pg.db.DatabaseService` calls them) run the listening
    connection that hears the other nodes' changes.

    The POP3 maildrop lock is shared by every node too
    (:meth:`lock_maildrop`, a lease row: :mod:`txmail.pg.maildrop`);
    *lock_lease* is how long a dead node's locks outlive it, renewals run
    on *clock* (the database's reactor by default).  *expunge_history* is
    how many modseqs of each mailbox's expunge history (QRESYNC) are kept
    (:func:`_prune_expunged`).
    """

    log = Logger()

    def __init__(
        self,
        database: Database,
        *,
        bodies: BodyStore | None = None,
        lock_lease: float = DEFAULT_LEASE,
        clock: Any = None,
        expunge_history: int = EXPUNGE_HISTORY,
    ) -> None:
        self.database = database
        self.expunge_history = expunge_history
        self.bodies = bodies if bodies is not None else BodyStore()
        #: This process's name in the notifications: its own are not read back.
        self.node = uuid.uuid4().hex
        self.maildrop_locks = PostgresMaildropLocks(database, self.node, lease=lock_lease, clock=clock)
        self._stores: weakref.WeakValueDictionary[str, PostgresStore] = weakref.WeakValueDictionary()
        self._listener: _Listener | None = None

    def check_schema(self) -> None:
        """
        Refuse a database whose schema is too old (blocking: at start-up).

        Raises:
            SchemaTooOld: run ``txmail db upgrade``.
            DatabaseError: the database cannot be reached.
        """
        self.database.run_sync(require_current)

    def store_for(self, user: str) -> defer.Deferred[IMailStore]:
        """See :meth:`txmail.interfaces.IMailStoreProvider.store_for`: the user's INBOX is made the first time."""
        store = self._stores.get(user)
        if store is not None:
            return defer.succeed(store)

        def made(_: Any) -> PostgresStore:
            store = self._stores.get(user)
            if store is None:
                store = self._stores[user] = PostgresStore(self, user)
            return store

        def ensure(conn: Any) -> None:
            exists = conn.execute(
                "SELECT 1 FROM mailboxes WHERE owner = %s AND name = %s", (user, INBOX)
            ).fetchone()
            if exists is None:
                _lock_user(conn, user)

        return self.database.run(ensure).addCallback(made)

    def lock_maildrop(self, user: str) -> defer.Deferred[IMaildropLock | None]:
        """See :meth:`txmail.interfaces.IMaildropLocks.lock_maildrop`: held against every node."""
        return self.maildrop_locks.lock_maildrop(user)

    def deliver_to_inboxes(
        self, users: Iterable[str], message: bytes | MessageSource, internal_date: float | None = None
    ) -> defer.Deferred[dict[str, int]]:
        """
        See :meth:`txmail.interfaces.IInboxDelivery.deliver_to_inboxes`:
        one transaction and one body for every copy
        (:func:`_deliver_inboxes`).  The INBOXes this process has in use
        are refreshed (their listeners told) before the result fires; a
        refresh that fails is logged, the copies are made all the same.
        """
        wanted = list(dict.fromkeys(users))
        if not wanted:
            return defer.succeed({})
        date = time.time() if internal_date is None else float(internal_date)

        def delivered(made: dict[str, tuple[int, int]]) -> defer.Deferred[dict[str, int]]:
            refreshes = []
            for user, (box_id, _) in made.items():
                store = self._stores.get(user)
                box = store._boxes.get(box_id) if store is not None else None
                if box is not None and not box._deleted:
                    refreshes.append(
                        box.refresh()
                        .addErrback(lambda f: f.trap(NoSuchMailbox))
                        .addErrback(self._refresh_failed)
                    )
                elif store is not None and store._watch is not None:
                    refreshes.append(store._watch.sync_box(box_id))
            done = defer.gatherResults(refreshes, consumeErrors=True)
            return done.addCallback(lambda _: {user: uid for user, (_, uid) in made.items()})

        def deliver() -> defer.Deferred[dict[str, tuple[int, int]]]:
            return self.database.run(_deliver_inboxes, self.bodies, self.node, wanted, message, date)

        def first_delivery(failure: Any) -> Any:
            # Some user's first message: their INBOX made, then once more.
            failure.trap(_MissingInboxes)
            return self.database.run(_make_inboxes, failure.value.users).addCallback(lambda _: deliver())

        return deliver().addErrback(first_delivery).addCallback(delivered)

    # -- notifications ---------------------------------------------------------

    def start(self) -> None:
        """Start listening for the other nodes' changes (a thread with its own connection)."""
        if self._listener is None:
            self._listener = _Listener(self.database, self._notified, self._reconnected)
            self._listener.start()

    def stop(self) -> None:
        """
        Stop listening (waits for the listening thread, at most about a
        second) and renewing maildrop locks.
        """
        self.maildrop_locks.stop()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.stop()

    def listening(self) -> defer.Deferred[None]:
        """Fires once the listening connection has run LISTEN (after :meth:`start`)."""
        if self._listener is None:
            return defer.fail(RuntimeError("the provider is not started"))
        return self._listener.when_listening()

    def _notified(self, payload: str) -> None:
        """A notification from the database (reactor thread): refresh what it names."""
        try:
            note = json.loads(payload)
            node, user, box_id, kind = note["node"], note["user"], note["mailbox"], note["kind"]
        except (ValueError, KeyError, TypeError):
            self.log.warn("ignoring a malformed store notification: {payload!r}", payload=payload)
            return
        if node == self.node:
            return
        store = self._stores.get(user)
        if store is None:
            return
        watch = store._watch
        if kind in ("mailboxes", "subscriptions"):
            if kind == "mailboxes":
                store.refresh_open().addErrback(self._refresh_failed)
            if watch is not None:
                watch.sync_all()
            return
        box = store._boxes.get(box_id)
        if box is not None:
            d = box._notified()
            if d is not None:
                d.addErrback(lambda f: f.trap(NoSuchMailbox)).addErrback(self._refresh_failed)
        elif watch is not None and isinstance(box_id, int):
            watch.sync_box(box_id)

    def _reconnected(self) -> None:
        """The listening connection is (back) up: what was missed while it was down is read now."""
        for store in list(self._stores.values()):
            store.refresh_open().addErrback(self._refresh_failed)
            if store._watch is not None:
                store._watch.sync_all()

    def _refresh_failed(self, failure: Any) -> None:
        self.log.failure("refreshing a mailbox after a notification failed", failure)


class _Listener:
    """
    One connection of its own (autocommit) that runs ``LISTEN
    txmail_store`` and waits for notifications in a thread, handing each
    payload to the reactor; reconnects after a failure.
    """

    log = Logger()

    def __init__(self, database: Any, deliver: Callable[[str], None], connected: Callable[[], None]) -> None:
        self.database = database
        self.reactor = database.reactor
        self.deliver = deliver
        self.connected = connected
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listening = False
        self._waiting: list[defer.Deferred[None]] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="txmail-store-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10 * LISTEN_POLL + CONNECT_GRACE)
            self._thread = None

    def when_listening(self) -> defer.Deferred[None]:
        if self._listening:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def _up(self) -> None:
        self._listening = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        self.connected()

    def _run(self) -> None:
        psycopg = self.database._psycopg
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.database.dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.reactor.callFromThread(self._up)
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=LISTEN_POLL):
                            self.reactor.callFromThread(self.deliver, note.payload)
            except Exception as e:
                if self._stopping.is_set():
                    return
                self._listening = False
                self.log.warn(
                    "store notifications: {error}; reconnecting", error=str(e).strip() or type(e).__name__
                )
                self._stopping.wait(RECONNECT_DELAY)
