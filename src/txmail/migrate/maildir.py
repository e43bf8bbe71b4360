"""
Maildir trees in Dovecot's layout in and out of a user's store.

The layout (https://cr.yp.to/proto/maildir.html, and Dovecot's Maildir++
``LAYOUT=maildir++``, its default): the root is the INBOX (``cur/``,
``new/``, ``tmp/``); every other folder is a directory ``.Name.Sub`` beside
them, its components in modified UTF-7 (:mod:`txmail.migrate._formats`),
with a ``maildirfolder`` file.  A message is a file: in ``new/`` not yet
seen by any client (no flags), in ``cur/`` with its flags after ``:2,`` —
``D`` \\Draft, ``F`` \\Flagged, ``R`` \\Answered, ``S`` \\Seen, ``T``
\\Deleted, and lower case letters for the keywords the folder's
``dovecot-keywords`` lists (``0 $Label1``: letter ``a``).  The file's
modification time is the internal date.  ``subscriptions`` in the root
lists the subscribed folders.

Import never writes into the tree: files are read, through a converting
reader when they hold bare LFs (as Dovecot's LDA, Postfix and procmail
write them), so that the store gets the CRLF line ends it expects
(:mod:`txmail.store._crlf`).  ``tmp/`` is left alone (messages being
written).  Export writes that layout, with the CRLF octets the store
serves, plus ``txmail-special-use.json`` with the folders' RFC 6154 roles
(Dovecot takes roles from its configuration; the import reads the file back,
and without it gives the usual names their roles, as Dovecot's default
configuration does).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import json
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from txmail.errors import InvalidMailboxName
from txmail.interfaces import IMailStore
from txmail.migrate._formats import (
    DEFAULT_ROLES,
    dir_name_for,
    folder_for_dir_name,
    format_subscriptions,
    parse_subscriptions,
    safe_flags,
)
from txmail.migrate._store import MigrationError, Summary, Target, copy_stream, empty_dir, wait
from txmail.model import INBOX, MessageSource, SpecialUse
from txmail.store._crlf import CRLFFile, count_file
from txmail.store._maildir_format import (
    KEYWORD_LETTERS,
    flags_from_letters,
    format_keywords,
    letters_for,
    parse_keywords,
    split_file_name,
)

__all__ = ["SPECIAL_USE_FILE", "export_maildir", "import_maildir", "maildir_folders"]

#: The file of folder roles an export writes (mailbox name -> RFC 6154 attribute).
SPECIAL_USE_FILE = "txmail-special-use.json"
_FIELD = re.compile(rb"^[!-9;-~]+[ \t]*:")


def _is_maildir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "cur")) or os.path.isdir(os.path.join(path, "new"))


def maildir_folders(root: str, summary: Summary | None = None) -> list[tuple[str, str]]:
    """
    The folders of the Maildir++ tree *root*: ``(name, directory)``, INBOX
    first, then the others in name order.  A directory whose name is not a
    valid mailbox name is left out (and counted in *summary*).
    """
    folders: list[tuple[str, str]] = []
    if _is_maildir(root):
        folders.append((INBOX, root))
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if not entry.startswith(".") or entry in (".", "..") or not os.path.isdir(path):
            continue
        if not _is_maildir(path):
            continue
        if os.path.islink(path) or any(os.path.islink(os.path.join(path, sub)) for sub in ("cur", "new")):
            if summary is not None:
                summary.skip(f"{path}: a symbolic link, not followed")
            continue
        name, _ = folder_for_dir_name(entry)
        if name is None:
            if summary is not None:
                summary.skip(f"{path}: {entry!r} does not name a valid folder")
            continue
        folders.append((name, path))
    return folders


def _roles(root: str, names: list[str]) -> dict[str, SpecialUse]:
    try:
        with open(os.path.join(root, SPECIAL_USE_FILE), encoding="utf-8") as f:
            recorded = json.load(f)
    except FileNotFoundError:
        return {n: DEFAULT_ROLES[n] for n in names if n in DEFAULT_ROLES}
    except (OSError, ValueError):
        return {}
    roles = {}
    if isinstance(recorded, dict):
        for name, attribute in recorded.items():
            with contextlib.suppress(ValueError, TypeError):
                roles[str(name)] = SpecialUse(attribute)
    return roles


def import_maildir(
    store: IMailStore, root: str, *, report: Callable[[str], Any] = lambda line: None
) -> Summary:
    """
    Import the Maildir++ tree *root* (Dovecot's layout) into *store*:
    every folder, created when missing (with its special-use role when the
    user has no folder with that role yet), every message with its flags,
    keywords and internal date, and the subscriptions.  The tree is only
    read.  A file that is not a message is skipped and counted.

    Raises:
        MigrationError: *root* is not a Maildir.
    """
    if not os.path.isdir(root):
        raise MigrationError(f"{root} is not a directory")
    summary = Summary()
    folders = maildir_folders(root, summary)
    if not folders:
        raise MigrationError(f"{root} is not a Maildir: no cur/ or new/ in it or in a .Folder below it")
    target = Target(store, summary)
    roles = _roles(root, [name for name, _ in folders])
    for name, path in folders:
        _import_folder(target, name, path, roles.get(name), report)
    try:
        with open(os.path.join(root, "subscriptions"), "rb") as f:
            target.subscribe(parse_subscriptions(f.read()))
    except FileNotFoundError:
        pass
    return summary


def _import_folder(
    target: Target, name: str, path: str, role: SpecialUse | None, report: Callable[[str], Any]
) -> None:
    summary = target.summary
    before = summary.messages, summary.bytes, summary.skipped
    try:
        with open(os.path.join(path, "dovecot-keywords"), "rb") as f:
            keywords = parse_keywords(f.read())
    except FileNotFoundError:
        keywords = {}
    try:
        box = target.folder(name, role)
    except (InvalidMailboxName, ValueError) as e:
        summary.skip(f"{path}: the folder {name!r} cannot be created here: {e}")
        return
    summary.folders += 1
    for sub in ("cur", "new"):
        directory = os.path.join(path, sub)
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.startswith("."):
                continue
            _, letters = split_file_name(entry)
            flags = flags_from_letters(letters, keywords) if sub == "cur" else frozenset()
            _import_file(target, box, os.path.join(directory, entry), safe_flags(flags))
    skipped = summary.skipped - before[2]
    report(
        f"{name}: {summary.messages - before[0]} messages, {summary.bytes - before[1]} bytes"
        + (f", {skipped} skipped" if skipped else "")
    )


def message_source(path: str) -> tuple[MessageSource, float] | str:
    """
    A source of the message file *path*, CRLF line ends (converted as read
    when the file holds bare LFs), and its internal date (the file's
    modification time); or the reason it is not a message.  The source has
    no ``local_path``: a store must not link a file of the tree it imports.
    """
    try:
        # Not through a symbolic link: a tree a user could write must not
        # bring in files from elsewhere (the command may run as root).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "a symbolic link, not a message file"
        return f"cannot read: {e.strerror or e}"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "not a regular file"
        head = os.read(fd, 4096)
        if not head:
            return "empty"
        if not _FIELD.match(head):
            return "not a message (it does not start with a header field)"
        os.lseek(fd, 0, os.SEEK_SET)
        raw, bare = count_file(fd, st.st_size)
    finally:
        os.close(fd)
    opener: Callable[[], BinaryIO]
    if bare:
        size = raw + bare

        def opener() -> BinaryIO:
            return CRLFFile(_open_file(path), size)  # type: ignore[return-value]  # a CRLFFile is a readable binary file

    else:
        size = raw
        opener = functools.partial(_open_file, path)
    return MessageSource(size, opener), st.st_mtime


def _open_file(path: str) -> BinaryIO:
    """*path* opened for reading, never through a symbolic link (nor blocking on a FIFO put in its place)."""
    return os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb")


def _import_file(target: Target, box: Any, path: str, flags: frozenset[str]) -> None:
    found = message_source(path)
    if isinstance(found, str):
        target.summary.skip(f"{path}: {found}")
        return
    source, date = found
    try:
        target.append(box, source, flags, date)
    except (ValueError, OSError, InvalidMailboxName) as e:
        target.summary.skip(f"{path}: not stored: {e}")


# -- export -----------------------------------------------------------------

_counter = itertools.count(1)


def _host() -> str:
    return (
        socket.gethostname().replace("/", r"\057").replace(":", r"\072").replace(",", r"\054") or "localhost"
    )


def _make_maildir(path: str, folder: bool) -> None:
    for sub in ("cur", "new", "tmp"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    if folder:
        with open(os.path.join(path, "maildirfolder"), "wb"):
            pass


def export_maildir(
    store: IMailStore, root: str, *, report: Callable[[str], Any] = lambda line: None
) -> Summary:
    """
    Write *store* as a Maildir++ tree in Dovecot's layout under *root*
    (created; it must be empty if it exists): every selectable folder, each
    message in ``cur/`` with its flag letters (keywords through the
    folder's ``dovecot-keywords``, at most 26 a folder: more are counted as
    problems) and its internal date as modification time; then
    ``subscriptions`` and ``txmail-special-use.json``.

    Raises:
        MigrationError: *root* is not an empty directory, or cannot be written.
    """
    empty_dir(root)
    summary = Summary()
    roles: dict[str, str] = {}
    host = _host()
    for info in wait(store.list_mailboxes("*")):
        if not info.selectable:
            continue
        path = root if info.name == INBOX else os.path.join(root, dir_name_for(info.name))
        _make_maildir(path, info.name != INBOX)
        if info.special_use is not None:
            roles[info.name] = info.special_use.value
        _export_folder(store, info.name, path, host, summary, report)
    with open(os.path.join(root, "subscriptions"), "wb") as f:
        f.write(format_subscriptions(wait(store.subscriptions())))
    with open(os.path.join(root, SPECIAL_USE_FILE), "w", encoding="utf-8") as f:
        json.dump(roles, f, indent=1, sort_keys=True)
    return summary


def _export_folder(
    store: IMailStore, name: str, path: str, host: str, summary: Summary, report: Callable[[str], Any]
) -> None:
    box = wait(store.get_mailbox(name))
    messages = wait(box.list_messages())
    letter_of: dict[str, str] = {}
    lost: set[str] = set()
    for message in messages:
        for flag in sorted(f for f in message.flags if not f.startswith("\\")):
            if flag in letter_of:
                continue
            if len(letter_of) < len(KEYWORD_LETTERS):
                letter_of[flag] = KEYWORD_LETTERS[len(letter_of)]
            else:
                lost.add(flag)
    if letter_of:
        with open(os.path.join(path, "dovecot-keywords"), "wb") as f:
            f.write(format_keywords({letter: kw for kw, letter in letter_of.items()}))
    if lost:
        summary.problems.append(
            f"{name}: keywords past the 26 of Maildir not written: {' '.join(sorted(lost))}"
        )
    before = summary.messages, summary.bytes
    for message in messages:
        try:
            f = wait(box.open_message(message.uid))
        except Exception as e:  # expunged meanwhile, unreadable: counted
            summary.skip(f"{name}: message {message.uid} not readable: {e}")
            continue
        now = time.time()
        unique = (
            f"{int(message.internal_date)}.M{int(now * 1e6) % 1000000}P{os.getpid()}Q{next(_counter)}.{host}"
        )
        tmp = os.path.join(path, "tmp", unique)
        with f, open(tmp, "wb") as out:
            size = copy_stream(f.read, out.write)
        # S= the file's size, W= its size with CRLF line ends: the same here (Dovecot reads both).
        final = os.path.join(
            path, "cur", f"{unique},S={size},W={size}:2,{letters_for(message.flags, letter_of)}"
        )
        os.rename(tmp, final)
        os.utime(final, (message.internal_date, message.internal_date))
        summary.messages += 1
        summary.bytes += size
    summary.folders += 1
    report(f"{name}: {summary.messages - before[0]} messages, {summary.bytes - before[1]} bytes to {path}")
