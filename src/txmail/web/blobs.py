"""
The upload store (RFC 8620 section 6.1): what clients upload, kept on disk
for at least an hour, for the methods that refer to it by ``blobId``
(``Email/import``, attachments of ``Email/set``) and for downloads.

Layout: ``<root>/<accountId>/<blobId>``, one file a blob: a line of JSON
(``{"type": ..., "created": ...}``) and the octets.  Files are written under
a temporary name and renamed, so a reader never sees half a blob.

Bounds: a blob expires ``expire_after`` seconds (default one hour, the
least RFC 8620 allows) after its upload; an account holds at most
``max_blobs`` unexpired blobs of ``max_bytes`` octets in all, and an upload
beyond that is refused with :class:`UploadStorageFull`.  Expired blobs are
deleted at the next upload to their account and by :meth:`BlobStore.sweep`
(which the web service runs every few minutes).

The file work runs in the server's thread pool (``run_blocking``).
Account and blob ids are checked against the JMAP Id syntax (RFC 8620
section 1.2: letters, digits, ``-`` and ``_``) before they name a file, so
no id reaches outside the tree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["BlobStore", "UploadStorageFull"]

_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_TMP = ".tmp-"


class UploadStorageFull(Exception):
    """An account's uploads are at their bound (count or octets)."""


def _valid(*ids: str) -> bool:
    return all(isinstance(i, str) and _ID.fullmatch(i) is not None for i in ids)


class BlobStore:
    """
    Uploaded blobs on disk.

    Args:
        root: the directory (created when needed).
        now: the current time in seconds (the reactor's ``seconds``).
        run_blocking: ``run_blocking(fn, *args) -> Deferred``; default inline.
        expire_after: seconds a blob lives.
        max_blobs: unexpired blobs one account may hold.
        max_bytes: octets of unexpired blobs one account may hold.
    """

    def __init__(
        self,
        root: str,
        *,
        now: Callable[[], float],
        run_blocking: Callable[..., defer.Deferred[Any]] | None = None,
        expire_after: float = 3600.0,
        max_blobs: int = 1000,
        max_bytes: int = 200_000_000,
    ) -> None:
        self.root = root
        self.now = now
        # Inline by default: the file work's value or exception becomes the Deferred.
        self.run_blocking = run_blocking or (lambda fn, *args: defer.maybeDeferred(fn, *args))
        self.expire_after = expire_after
        self.max_blobs = max_blobs
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def put(self, account_id: str, data: bytes, type: str) -> defer.Deferred[dict[str, Any]]:
        """
        Store *data* for *account_id*.

        Returns:
            ``Deferred[dict]``: the upload response object (RFC 8620
            section 6.1: ``accountId``, ``blobId``, ``type``, ``size``); it
            fails with :class:`UploadStorageFull` at the account's bound,
            with ``ValueError`` for an invalid account id.
        """
        if not _valid(account_id):
            return defer.fail(ValueError(f"invalid account id {account_id!r}"))
        return self.run_blocking(self._put, account_id, bytes(data), type, self.now())

    def get(self, account_id: str, blob_id: str) -> defer.Deferred[bytes | None]:
        """The octets of an unexpired blob of *account_id*, or ``None``."""
        if not _valid(account_id, blob_id):
            return defer.succeed(None)
        return self.run_blocking(self._get, account_id, blob_id, self.now())

    def sweep(self) -> defer.Deferred[int]:
        """Delete every expired blob; fires with how many."""
        return self.run_blocking(self._sweep, self.now())

    # -- in the thread pool --

    def _path(self, account_id: str, blob_id: str = "") -> str:
        return (
            os.path.join(self.root, account_id, blob_id) if blob_id else os.path.join(self.root, account_id)
        )

    def _read_header(self, path: str) -> tuple[dict[str, Any], int] | None:
        """The header of the blob file at *path* and its length, or ``None``."""
        try:
            with open(path, "rb") as f:
                line = f.readline(4096)
        except OSError:
            return None
        try:
            header = json.loads(line)
        except ValueError:
            return None
        return (header, len(line)) if isinstance(header, dict) else None

    def _expired(self, header: dict[str, Any], now: float) -> bool:
        created = header.get("created")
        return not isinstance(created, int | float) or now - created >= self.expire_after

    def _put(self, account_id: str, data: bytes, type: str, now: float) -> dict[str, Any]:
        directory = self._path(account_id)
        with self._lock:
            os.makedirs(directory, exist_ok=True)
            count, size = self._clean(directory, now)
            if count + 1 > self.max_blobs or size + len(data) > self.max_bytes:
                raise UploadStorageFull(
                    f"account {account_id} holds {count} uploads of {size} octets (at most "
                    f"{self.max_blobs} of {self.max_bytes} octets)"
                )
            blob_id = "U" + secrets.token_urlsafe(18)
            header = json.dumps({"type": type, "created": now, "size": len(data)}).encode() + b"\n"
            temporary = os.path.join(directory, _TMP + blob_id)
            with open(temporary, "wb") as f:
                f.write(header)
                f.write(data)
            os.replace(temporary, os.path.join(directory, blob_id))
        return {"accountId": account_id, "blobId": blob_id, "type": type, "size": len(data)}

    def _get(self, account_id: str, blob_id: str, now: float) -> bytes | None:
        path = self._path(account_id, blob_id)
        found = self._read_header(path)
        if found is None or self._expired(found[0], now):
            return None
        try:
            with open(path, "rb") as f:
                f.seek(found[1])
                return f.read()
        except OSError:
            return None

    def _clean(self, directory: str, now: float) -> tuple[int, int]:
        """Delete the expired blobs of one account; the count and octets of the others."""
        count = size = 0
        try:
            names = os.listdir(directory)
        except OSError:
            return 0, 0
        for name in names:
            path = os.path.join(directory, name)
            found = None if name.startswith(_TMP) else self._read_header(path)
            if found is None or self._expired(found[0], now):
                if name.startswith(_TMP) and now - _mtime(path) < self.expire_after:
                    continue  # being written
                _unlink(path)
                continue
            count += 1
            size += int(found[0].get("size", 0))
        return count, size

    def _sweep(self, now: float) -> int:
        removed = 0
        try:
            accounts = os.listdir(self.root)
        except OSError:
            return 0
        for account in accounts:
            directory = os.path.join(self.root, account)
            if not os.path.isdir(directory):
                continue
            with self._lock:
                before = len(os.listdir(directory))
                count, _ = self._clean(directory, now)
                removed += before - count
                if count == 0:
                    with contextlib.suppress(OSError):
                        os.rmdir(directory)
        return removed


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
