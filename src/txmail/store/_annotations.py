"""
RFC 5464 annotations (IMAP METADATA entries) as the stores keep them
(:class:`txmail.interfaces.IMetadataStore`): applying a SETMETADATA's
changes, the listeners, and the Maildir store's files.

A Maildir folder keeps its annotations in ``txmail-annotations.json``
beside its index (INBOX: in the user's directory), so RENAME moves them
with the folder's directory and DELETE removes them with it; the server
entries of a user are in ``txmail-server-annotations.json`` in the user's
directory.  A file is JSON, ``{"version": 1, "entries": {name: value}}``,
a value being a string when the octets are UTF-8 and ``{"base64": ...}``
otherwise; it is replaced whole (temporary file, fsync, rename, directory
fsync) at each change.

This module imports nothing from Twisted: the Maildir store runs the file
functions through its ``run_blocking``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from txmail._fs import write_file_durably
from txmail.errors import NoSuchMailbox

__all__ = [
    "FILE",
    "SERVER_FILE",
    "AnnotationListeners",
    "apply_changes",
    "decode",
    "encode",
    "read_annotations",
    "write_annotations",
]

#: A folder's annotations, beside its index.
FILE = "txmail-annotations.json"
#: The user's server annotations (mailbox ``""``), in the user's directory.
SERVER_FILE = "txmail-server-annotations.json"

_VERSION = 1


def apply_changes(
    entries: Mapping[str, bytes], changes: Mapping[str, bytes | None]
) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """
    *entries* with *changes* applied (``None`` removes an entry), and the
    names whose value changed, sorted.
    """
    new = dict(entries)
    changed = []
    for name, value in changes.items():
        if value is None:
            if new.pop(name, None) is not None:
                changed.append(name)
        elif new.get(name) != value:
            new[name] = bytes(value)
            changed.append(name)
    return new, tuple(sorted(changed))


def encode(entries: Mapping[str, bytes]) -> bytes:
    """The file form of *entries* (see the module docstring)."""
    out: dict[str, Any] = {}
    for name, value in sorted(entries.items()):
        try:
            out[name] = value.decode("utf-8")
        except UnicodeDecodeError:
            out[name] = {"base64": base64.b64encode(value).decode("ascii")}
    return json.dumps({"version": _VERSION, "entries": out}, indent=1).encode("utf-8")


def decode(data: bytes) -> dict[str, bytes]:
    """
    The entries of a file made by :func:`encode`.

    Raises:
        ValueError: the file is damaged.
    """
    try:
        doc = json.loads(data)
        raw = doc["entries"]
        entries = {}
        for name, value in raw.items():
            if isinstance(value, str):
                entries[str(name)] = value.encode("utf-8")
            else:
                entries[str(name)] = base64.b64decode(value["base64"], validate=True)
        return entries
    except (KeyError, TypeError, AttributeError, binascii.Error, UnicodeError) as e:
        raise ValueError(f"damaged annotations file: {e}") from None


def _folder_file(path: str, *, server: bool) -> str:
    if server:
        return os.path.join(path, SERVER_FILE)
    if not os.path.isdir(os.path.join(path, "cur")):
        raise NoSuchMailbox(path)
    return os.path.join(path, FILE)


def read_annotations(path: str, server: bool = False) -> tuple[dict[str, bytes], bool]:
    """
    The annotations of the folder at *path* (*server*: the user's server
    entries, *path* being the user's directory), and whether the file was
    damaged (it is then renamed to ``<file>.damaged`` and read as empty,
    so the next write does not lose it).

    Raises:
        NoSuchMailbox: *path* is not a Maildir folder.
    """
    file = _folder_file(path, server=server)
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}, False
    try:
        return decode(data), False
    except ValueError:
        os.replace(file, file + ".damaged")
        return {}, True


def write_annotations(path: str, entries: Mapping[str, bytes], server: bool = False) -> None:
    """
    Replace the annotations of the folder at *path* with *entries*
    (temporary file, fsync, rename, directory fsync); no entries removes
    the file.

    Raises:
        NoSuchMailbox: *path* is not a Maildir folder.
    """
    file = _folder_file(path, server=server)
    if entries:
        write_file_durably(file, encode(entries))
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(file)


class AnnotationListeners:
    """The annotation listeners of one store (:meth:`IMetadataStore.add_annotation_listener`)."""

    def __init__(self) -> None:
        self._listeners: list[Callable[[Any], object]] = []

    def add(self, listener: Callable[[Any], object]) -> Callable[[], None]:
        """Add *listener*; returns the function that removes it (once)."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def notify(self, change: Any) -> None:
        """Call each listener with *change*."""
        for listener in list(self._listeners):
            listener(change)
