"""
Counting what a Maildir++ tree holds, for storage quotas (blocking; run in
the thread pool).

A message's size comes from its file name when it has one (``,W=`` is the
CRLF size Dovecot and txmail give a file with bare LFs, ``,S=`` the file
size), else from ``stat``.  Files in ``tmp/`` are not counted (not yet
delivered, or left over from a crash), nor entries that are not regular
files (symbolic links, FIFOs, directories...), which the store does not
serve either (:func:`txmail.store._maildir_io.scan_folder`).
"""

from __future__ import annotations

import os
import re

from txmail.quota import Usage

__all__ = ["folder_usage"]

_SIZE_FIELD = re.compile(r",([SW])=(\d+)")


def _message_size(entry: os.DirEntry[str]) -> int:
    base = entry.name.split(":", 1)[0]
    sizes = dict(_SIZE_FIELD.findall(base))
    if "W" in sizes:
        return int(sizes["W"])
    if "S" in sizes:
        return int(sizes["S"])
    try:
        return entry.stat(follow_symlinks=False).st_size
    except OSError:
        return 0  # renamed or expunged meanwhile


def folder_usage(path: str) -> Usage:
    """The messages (regular files) in ``new/`` and ``cur/`` of the Maildir at *path*."""
    octets = count = 0
    for sub in ("new", "cur"):
        try:
            entries = os.scandir(os.path.join(path, sub))
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                except OSError:
                    continue  # gone meanwhile
                octets += _message_size(entry)
                count += 1
    return Usage(octets, count)


def tree_usage(root: str, folders: dict[str, str]) -> dict[str, Usage]:
    """``{path: Usage}`` for each folder *path* of *folders* (``{name: path}``)."""
    return {path: folder_usage(path) for path in folders.values()}
